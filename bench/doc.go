// Package bench measures dbproxy against direct connections, PgBouncer and
// Pgpool-II on the same machine, in the same run, with interleaved rounds,
// and reports ratios against the baselines measured in that run.
//
// # What Run does
//
// Run(ctx, cfg) (also `dbproxy bench [--quick] [--workloads LIST] --out DIR`):
//
//  1. Checks pgbench (from pgcluster.BinDir) and installs the Debian packages
//     pgbouncer and pgpool2 with apt-get when a selected target needs them
//     and they are missing (root only, Config.Install); failing that is an
//     error.
//  2. Starts two clusters with internal/pgcluster: "bmain" (1 primary + 2
//     streaming standbys) and "bshard" (1 primary), with shared_buffers 256MB,
//     max_connections 400, fsync and synchronous_commit on; creates database
//     and user bench/bench on both; loads pgbench data (Config.Scale) and the
//     tables of the Go workloads (raw_kv on bmain, kv_sharded on both).
//  3. When the plan holds idle connections (idle-conns), raises the
//     open-files limit (RLIMIT_NOFILE: soft to hard; as root the hard limit
//     too) to Config.IdleConnections plus a margin, so the processes it
//     starts next inherit it; a hard limit below that it cannot raise is an
//     error. Generates a dbproxy config (shard s0 = bmain, s1 = bshard,
//     kv_sharded sharded by id, pool 20, max_client_conns above
//     Config.IdleConnections) and runs `dbproxy serve --config` as a separate
//     process (Config.DbproxyBin, else a binary built with go build), so its
//     CPU and RSS can be read from /proc. Starts PgBouncer (transaction
//     pooling, pool 20, SCRAM, auth_file, max_client_conn above
//     Config.IdleConnections) and two Pgpool-II instances
//     (streaming-replication mode, load balancing over the three bmain nodes,
//     Config.PgpoolChildren children; the second with the shmem query cache).
//     The three poolers reach PostgreSQL on the nodes' Unix sockets (TCP
//     when a node has none); clients, direct runs included, connect over
//     loopback TCP, or with Config.UnixClients (`dbproxy bench
//     --unix-clients`) on each target's Unix socket. As root the poolers run as pgcluster.ServerUser
//     (PgBouncer refuses root). Every process runs in its own process group with a parent-death
//     signal.
//  4. Runs every workload through every target, interleaved: for each round,
//     for each workload, the targets in the order of Targets. pgbench runs as
//     a separate process; the Go workloads (select-go, read-after-write,
//     shard-writes, conn-storm) run in this process through database/sql
//     (pgx's adapter, simple protocol; the "dbproxy" driver for the driver
//     target). Per run: TPS, latency average/p50/p99, p99 added over the
//     direct run of the same round, proxy and database CPU µs per
//     transaction, proxy peak RSS, errors, stale reads, misrouted rows.
//     idle-conns (Go, pgconn) opens Config.IdleConnections connections
//     through a target, cN at a time (SCRAM login, one SELECT 1 each), holds
//     them idle and reads the target process's VmRSS before and with all of
//     them open, then closes them: RSS before, RSS held, growth per
//     connection, connections held, errors.
//  5. After every round rewrites, in Config.Out: results.jsonl (one Result
//     per line: every run, and one line per pair a target cannot run with
//     Status "unsupported" and the reason), report.md (medians with min–max
//     over rounds, ratios to direct and to PgBouncer in the same round, p99
//     added, the idle-connections RSS table, dbproxy against the project's
//     targets — p99 added <= 1 ms at 16 clients, RSS <= 100 MB holding 5,000
//     idle connections — machine and versions) and the charts tps_ratio.png
//     and latency_p99.png (workloads with TPS and latency only).
//  6. Stops everything it started: the proxies and poolers (SIGTERM to the
//     process group, SIGKILL after 15 s), then the clusters.
//
// A pair a target cannot run is a row with its reason, never a gap: the
// driver cannot be loaded into pgbench and has no connections to storm or
// hold; PgBouncer and Pgpool-II do not shard; idle-conns does not apply to
// direct (no proxy process; PostgreSQL's max_connections) nor to Pgpool-II
// with fewer children than connections. Config.SelectWorkloads (`dbproxy
// bench --workloads`) narrows the plan to named workloads or kinds. A run
// that fails (pgbench exits non-zero, failed transactions, more than 10% of
// Go operations or idle connections failing, rows on the wrong shard) is a
// "failed" row with the first error.
//
// # Errors, blocking, concurrency
//
// Run blocks until done. It returns ErrInvalidConfig (wrapped) for a bad
// Config, a setup error (tool missing, install failed, a target not
// accepting connections, with the tail of its log), or ctx.Err() when
// cancelled; in the last two cases it still stops everything and, once the
// runs began, writes what was measured, and returns the partial Summary.
// Run may be called again after it returns; two concurrent Runs do not share
// anything (separate clusters, free ports) but measure each other's load.
//
// bench is a test-only leaf: it may import any package of the module.
package bench
