// Package pgcluster starts and stops real local PostgreSQL clusters (one
// primary plus N hot standbys with streaming replication) from the installed
// PostgreSQL server binaries, for tests, benchmarks and `dbproxy up`.
//
// # Binaries
//
// The binaries are found once per process (BinDir): `pg_config --bindir`
// when that directory holds postgres, initdb, pg_ctl and pg_basebackup, else
// the newest /usr/lib/postgresql/<version>/bin that does. When none is found
// every call that needs them returns an error wrapping ErrNoBinaries that
// names what was searched; tests must treat that as a failure (StartT
// calls t.Fatal), never as a skip.
//
// # Layout
//
// A cluster lives in one directory: a fresh temporary one under os.TempDir()
// (Options.Dir == ""; Stop removes it) or Options.Dir (kept). Inside it,
// "<name>.pgcluster.json" records the nodes and their ports, and each node
// has "<node>/data" (the data directory, Node.Dir) and "<node>/postgres.log".
// Node names are "<name>-primary", "<name>-standby1", ... Each standby is
// made with `pg_basebackup -R -S <slot> -X stream` through its own physical
// replication slot and streams with application_name = its node name. When
// Options.Dir already holds a cluster of the same Name, Start reuses it: it
// only starts the nodes again, on the recorded ports (asking for more
// standbys than recorded adds them; fewer is an ErrLayout error). Settings
// are rewritten into "pgcluster.conf" in each data directory on every start.
//
// Every node listens on 127.0.0.1 only, on a free loopback port (found by
// listening on port 0; a bind clash at first start moves the node to another
// port), and on a Unix socket in its node directory (Node.SocketDir; none
// when that path would not fit in a socket address, or with
// Options.TLS.Only). Node.ConnString and Connect use TCP. pg_hba.conf
// trusts user postgres and replication connections from 127.0.0.1 and on
// the socket; every other user authenticates with scram-sha-256 (over TLS
// only with Options.TLS.Only; Options.TLS makes every node serve TLS with
// the given certificate, written into its data directory). Both files are
// rewritten on every start. Every node gets DefaultSettings (sized for a
// small shared machine: shared_buffers 128MB, max_connections 200,
// wal_level logical, hot_standby_feedback on, wal_receiver_status_interval
// 1s, logging to postgres.log at warning) plus Options.Settings.
//
// A temporary cluster records its owning process in an "owner" file; the
// first Start in a process stops and removes temporary clusters whose owner
// has died without calling Stop (for example a test binary killed by
// `go test -timeout`). Clusters in a caller-given Dir are never swept.
//
// A fresh primary is a copy of an initdb template kept under os.TempDir()
// ("pgcluster-template-<uid>-<hash>", built once per machine, binaries and
// recipe; see template.go), so clusters created from it share a database
// system identifier. If the template cannot be built or copied, plain initdb
// is used.
//
// # Crashes and failover
//
// Node.Kill simulates a crash of the node: SIGKILL to the postmaster and to
// every server process it started (so no orphaned backend keeps the port or
// shared memory), then it waits for them to exit. Node.Start then runs crash
// recovery. Start on a node (or a reused cluster) whose server is already
// running leaves it alone.
//
// Primary() is always the node created as primary. Node.Promote makes a
// standby the cluster's Leader(); Node.Follow repoints a standby at another
// node (creating its slot there). WaitStreaming, WaitCaughtUp and
// CreateDatabase follow these changes within one Cluster value; the layout
// file does not record them, so reusing a directory after a failover is not
// supported.
//
// # Users
//
// PostgreSQL refuses to run as root. When the process runs as root, every
// program (initdb, pg_ctl, postgres, pg_basebackup) runs as the unprivileged
// OS user ServerUser ("dbproxy"), created with useradd if missing; if that
// fails, an existing unprivileged user such as nobody is used. The switch
// uses syscall.SysProcAttr.Credential (no sudo). Cluster directories are
// chowned to that user and every ancestor directory is made traversable
// (o+x is added where missing, and logged). Options.Dir under
// testing.T.TempDir() works, but that directory is private to root and gets
// opened up (o+x); prefer os.MkdirTemp("", ...) or the default temporary
// directory. When not root, everything runs as the current user.
//
// # Blocking, errors, concurrency
//
// Every call that waits on a server or a program takes a context and returns
// when it is done (Kill, which only signals and waits for processes to exit,
// bounds itself at 30 s). WaitStreaming and WaitCaughtUp poll until their
// condition holds or ctx ends; give them a deadline. Errors name the cluster
// or node and wrap ErrInvalidOptions, ErrNoBinaries, ErrLayout, ErrStopped,
// ErrNotRunning, ErrBadLSN, a context error, or the underlying pgx/OS error
// (a failed server start includes the tail of its log).
//
// Options.Logf may be called from several goroutines at once (StartT uses
// t.Logf, which is safe). Cluster and Node methods are safe for concurrent
// use; lifecycle calls on one node (Start, Stop, Restart, Kill) are
// serialized. Several clusters can run at once, in one process or several:
// each has its own directory and ports. Stop is idempotent and always stops
// the servers, escalating from pg_ctl stop to SIGKILL of the postmaster and
// its children: a kept directory gets a fast (clean) shutdown first, a
// temporary cluster, deleted next, an immediate one. The package starts no
// background goroutines that outlive a call.
package pgcluster
