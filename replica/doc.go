// Package replica manages one replica set — a primary and its hot
// standbys — for the query path: bounded per-node connection pools
// (bulkheads), health and lag probes, role detection, a circuit breaker
// per node, read balancing policies and freshness-aware read routing
// (staleness bounds and read-your-writes via LSN tokens).
//
// It imports nothing from this module. Constructors return concrete types
// (*Set, *Node, *Lease); consumers declare the interfaces they need.
//
// # Overview
//
// NewSet(ctx, cfg) validates the Config, probes every node once and starts
// two probe goroutines per node, owned by the Set and stopped (and waited
// for) by Close:
//
//   - the health probe (every HealthInterval, default 1 s) opens a fresh
//     connection and runs SELECT pg_is_in_recovery(); a failure marks the
//     node unhealthy and counts as a breaker failure;
//   - a failed health or lag probe also makes the connections being opened
//     to the node (Acquire) give up at once with ErrNodeUnavailable, rather
//     than wait out ConnectTimeout on a node that does not answer;
//     Node.Failing reports that the last health or lag probe failed;
//   - the lag probe (every LagInterval, default 100 ms, and at once when a
//     waiting Pick asks for it) uses a kept-open probe connection to read
//     pg_is_in_recovery(), pg_current_wal_lsn() on the primary, and
//     pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn() and
//     now() - pg_last_xact_replay_timestamp() on standbys.
//
// Both are bounded by ProbeTimeout and use dedicated connections, never the
// pools. Lag bytes = primary current LSN - standby replay LSN. Lag time =
// clock_timestamp() - pg_last_xact_replay_timestamp() when the standby's
// replay LSN is behind the primary's last known LSN or its own receive LSN,
// else 0 (unknown, hence infinitely stale, when the standby has replayed
// nothing yet). After a long idle period the first write makes a standby
// look stale until its next measurement; this errs on the safe side.
//
// # Roles
//
// The observed role (pg_is_in_recovery) is compared with the configured one.
// A mismatch is logged, reported through Hooks.OnRoleMismatch and
// NodeStats.RoleMismatch, and never trusted: a configured standby that is
// not in recovery (someone promoted it; it may have diverged) gets no reads;
// Acquire on a configured primary observed in recovery fails with
// ErrRoleMismatch (SQLSTATE 25006) instead of sending anything.
//
// # Reads: Pick
//
// Pick(ctx, PickRequest{MinLSN, MaxStaleness, HashKey}) returns a standby only
// if it is healthy, its breaker admits traffic, it is observed in recovery,
// its last lag probe succeeded and is younger than LagMaxAge (a failing or
// stuck lag probe makes a standby not fresh), its lag time is <= MaxStaleness and its last
// known replay LSN is >= MinLSN. MaxStaleness 0 means Config.MaxStaleness;
// a negative MaxStaleness means "primary only". If no standby qualifies but
// at least one is merely behind, Pick kicks those standbys' lag probes and
// waits up to CatchUpWait (default 50 ms), re-evaluating after each new
// measurement; then it returns the primary (a fallback, counted in the
// primary's NodeStats.Fallbacks) or, with NoFallback, ErrNoHealthyReplica.
// Pick never returns a standby that does not qualify. Read-your-writes:
// pass as MinLSN an LSN read after the write committed (Lease.CurrentLSN or
// Node.CurrentLSN on the primary); a standby whose replay LSN is past it has
// replayed the commit, so the read sees the write.
//
// Balancing (Config.Policy) among qualifying standbys: RoundRobin,
// WeightedRoundRobin (smooth, nginx style), LeastConnections (leases in use),
// WeightedLeastConnections (in use / weight, ties by smooth WRR),
// LeastLatency (EWMA of lease durations from Release and Node.Observe; one
// pick in 16 is round robin so slower nodes keep being measured), Hash
// (rendezvous hashing of PickRequest.HashKey: a key stays on its standby
// while that standby qualifies). Other ties break round robin. Except under
// Hash, a pick whose standby has every pool slot taken goes to the
// qualifying standby with the most free slots, when one has any, instead of
// leaving the read to wait on the full pool (a slow standby does not hold
// reads another could serve at once). Pick does not allocate with up to 16
// standbys.
//
// # Pools, leases and the breaker
//
// Each node has its own pool of at most PoolSize pgconn connections, so a
// slow node cannot take connections from the others. Node.Acquire(ctx)
// blocks while the pool is exhausted, at most AcquireTimeout, then fails
// with ErrPoolExhausted (SQLSTATE 53300, naming the node).
// Node.AcquireAs(ctx, id) leases a connection logged in as another user or
// to another database; the pool bound is shared by every identity: an idle
// connection of one is closed to make room for another's. A Lease exposes
// the *pgconn.PgConn; Lease.Release(err) pools it again only when err is nil
// or a *pgconn.PgError, the connection is open, not busy and idle ('I');
// otherwise it is closed. Lease.Discard(err) always closes it. Pooled
// connections answer a cancelled context with a real CancelRequest.
// Connections live at most MaxConnLifetime (less up to a tenth, spread per
// connection): one past it is closed when its lease ends, never while it is
// leased. One idle in the pool for MaxConnIdleTime is closed (the health
// loop checks every HealthInterval), so a pool shrinks after a burst.
//
// # Reconfiguring a running Set
//
// Set.Reconfigure(Tuning) changes the balancing policy, pool bounds
// (default and per node), MaxStaleness, CatchUpWait, AcquireTimeout, the
// lifetimes and the breaker settings of a Set in use; Pick and Acquire
// calls that start afterwards see the new values. A raised pool bound
// serves waiting Acquire calls at once; under a lowered one, leases in use
// stay valid, no lease is granted until the count is under the bound, and
// idle connections over it are closed. The breakers keep their state. An
// invalid Tuning is refused whole (every problem named) and changes
// nothing. Waiters are served first come, first served.
//
// The breaker of a node opens after ConsecutiveFailures failures in a row,
// or when failures reach FailureRate of at least MinRequests outcomes within
// Window. After OpenFor it is half-open: up to HalfOpenRequests concurrent
// trial leases (and the probes) are let through; HalfOpenRequests successes
// close it, one failure opens it again. Failures are connection-level only
// (see IsConnFailure): network errors, timeouts, SQLSTATE classes 08 and 53
// and 57P01-57P03; other server errors are successes. Outcomes come from
// Release/Discard, failed connects and the probes. Any connection-level
// failure also closes the node's idle connections and, on a standby,
// suspends its reads until its lag probe (asked to run at once) succeeds
// again, so a dead standby stops getting reads within one probe round trip
// rather than after ConsecutiveFailures errors. An open standby gets no
// new traffic (Acquire fails with ErrNodeUnavailable, SQLSTATE 08006). The
// primary's breaker is informational: the primary is never removed from
// reads or writes, but its failures and state show in Stats and Hooks.
//
// # Concurrency and blocking
//
// Every method of Set, Node and Lease is safe for concurrent use. Blocking
// calls take a ctx: Pick (at most CatchUpWait), Node.Acquire (AcquireTimeout
// plus ConnectTimeout), Node.CurrentLSN, Lease.CurrentLSN and Close. Stats,
// Primary, ReplayLSN, Observe, Release, Discard and Reconfigure do not
// block on anything but closing connections (Terminate, bounded by
// ProbeTimeout). Hooks run
// synchronously on probe or request goroutines and must be quick.
//
// # Errors
//
// Errors are *Error values wrapping a sentinel (ErrNoHealthyReplica,
// ErrPoolExhausted, ErrClosed, ErrNodeUnavailable, ErrRoleMismatch) and, if
// any, the cause; they name the node and carry SQLState(). Context errors
// are returned wrapped with %w. Config.Validate lists every problem.
//
// # Lifecycle
//
// Close(ctx) stops and waits for the probes, closes idle connections and
// waits for their cleanup; leases still held remain usable and are closed
// when released. A second Close, and Pick or Acquire after Close, return
// ErrClosed. A restarted standby that crashed after its last measurement
// could briefly serve reads older than that measurement until its next
// probe; the lag probe connection breaking on restart limits this window.
package replica
