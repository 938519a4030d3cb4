// Package testbed runs PostgreSQL clusters (a primary and streaming hot
// standbys) and etcd clusters in docker containers, each node with its own
// address on a docker network, for the faults a cluster of local processes
// cannot show: a host that dies (Kill), a frozen host (Pause), a network
// partition (Disconnect), a slow link (SetLatency) and a lossy one
// (SetLoss). It is a test helper: it imports nothing from this module.
//
// # Shape
//
//	net := testbed.NewNetworkT(t, testbed.NetworkOptions{Name: "fo"})   // optional: share one network
//	pg := testbed.StartT(t, testbed.Options{Network: net, Name: "pg", Standbys: 2})
//	et := testbed.StartEtcdT(t, testbed.EtcdOptions{Network: net, Members: 3})
//	pg.Primary().Pause(ctx); pg.Standbys()[0].Disconnect(ctx); et.Members()[0].Kill(ctx)
//
// Start/StartT, Cluster and Node follow internal/pgcluster (Primary,
// Standbys, Nodes, WaitStreaming, Stop, CreateDatabase; Node.Name, Host,
// Port, Dir, ConnString, Connect, LSNs, PauseReplay, ResumeReplay, Kill,
// Start, Stop, Restart, Promote), with these differences: Host is the
// node's own address on the docker network (port 5432 for every node);
// Kill and Start take a context (they call the engine); Kill kills the
// whole container (KillServer kills only the postmaster); Promote makes the
// node the cluster's Primary; Follow repoints a standby at a new primary;
// WaitReplay waits for an LSN; Psql runs SQL inside the container, which
// works while the node is partitioned; ServerLog returns the server log.
//
// Every Node and EtcdMember embeds a *Container, which carries the faults:
//
//   - Kill: SIGKILL to every process of the container (power loss). The data
//     directory is a docker volume and survives; Start brings the container
//     back at the same address (Node.Start also starts PostgreSQL). Link
//     settings (latency, loss) are lost with the network namespace.
//   - Pause/Unpause: cgroup freezer. The kernel still completes TCP
//     handshakes on listening sockets, so connects succeed, but no query is
//     ever answered: a health check (connect + SELECT 1 with a timeout)
//     times out.
//   - Disconnect/Reconnect: the container leaves the network and rejoins at
//     the same address. Nothing reaches it and it reaches nothing; open TCP
//     connections are not reset, their packets are lost.
//   - SetLatency(d): every packet the container sends (not loopback) is held
//     for d before it leaves, so a round trip to the node takes d longer.
//     The engine's kernel may lack sch_netem (this CI's does), so the delay
//     is an iptables NFQUEUE rule (--queue-bypass) inside the container and
//     a delayer in the test process that holds each queued packet in the
//     kernel until it is due. The delayer owns two goroutines, stopped by
//     SetLatency(0), Kill or Close. If the test process dies, queued
//     packets flow undelayed (bypass) and the container is reaped anyway.
//   - SetLoss(p): each packet the container sends is dropped with
//     probability p (iptables statistic match); p = 1 is a one-way partition.
//
// Containers get CAP_NET_ADMIN (for iptables) and docker-init as pid 1.
// PostgreSQL runs as the postgres user; pg_hba trusts the superuser and
// replication from the network's subnet and requires scram-sha-256 for
// every other user. Settings are small (shared_buffers 32MB,
// max_connections 50) and fsync is off: a killed container's writes are in
// the host's page cache, so Kill loses nothing fsync would have saved.
// Each standby is cloned with pg_basebackup -R from the primary's address
// and streams through its own physical slot (named after the node).
// etcd is Debian's etcd-server (3.4) as the container's main process;
// Endpoints gives the client URLs for go.etcd.io/etcd/client/v3.
//
// # Image
//
// No registry is needed. Image builds one node image (PostgreSQL 15, etcd,
// iproute2, iptables) with mmdebstrap from Debian bookworm packages and
// imports it with the engine's image import; it is tagged
// dbproxy-testbed:<hash of packages, mirror, suite, mmdebstrap version and
// recipe>, so later runs reuse it. A file lock in os.TempDir() keeps
// concurrent test processes from building it twice. The mirror defaults to
// DefaultMirror; DBPROXY_TESTBED_MIRROR overrides it. mmdebstrap must be
// installed (apt-get install -y mmdebstrap): without it every Start fails
// with ErrMissingTool and a message naming the package. A missing engine
// fails with ErrNoEngine. Nothing here skips.
//
// # Cleanup
//
// The package sets TESTCONTAINERS_RYUK_DISABLED=true in init (the reaper is
// an image from a registry). Every container and network carries the labels
// dbproxy.testbed=1, dbproxy.testbed.run (this process's RunID),
// dbproxy.testbed.pid and dbproxy.testbed.pidstart. Stop / Close (and the
// t.Cleanup registered by the T variants, which runs even when a test
// fails) remove the containers, their volumes and owned networks. On first
// contact with the engine, objects whose creating process has exited (a
// crashed run) are removed; those of live processes (a concurrent test
// package) are left alone.
//
// # Errors
//
// Errors wrap the sentinels ErrNoEngine, ErrMissingTool, ErrBadOptions,
// ErrClosed, ErrKilled (fault on a killed container), ErrPaused (link
// change on a paused container) and ErrBadLSN with %w, and name the node.
// PostgreSQL and etcd errors are wrapped unchanged.
//
// # Blocking and concurrency
//
// Every call that talks to the engine or a server takes a context and
// blocks until done: Start and StartEtcd until every node is up (standbys
// streaming, etcd members healthy). Fault methods are serialised per
// container and safe for concurrent use; Cluster, Etcd and Network methods
// are safe for concurrent use. Connect to a paused node blocks until its
// context ends.
package testbed
