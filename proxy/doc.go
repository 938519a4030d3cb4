// Package proxy is dbproxy's PostgreSQL wire-protocol server: clients
// (psql, pgbench, pgx, lib/pq, psycopg2, JDBC, ...) connect to it as to
// PostgreSQL, and it runs their statements on the shards and replicas the
// router chooses, over pooled backend connections leased from replica.
//
// A client's backend connections log in as the client's own user (with
// User.BackendPassword, or its plain Password) to the database it named,
// so PostgreSQL's privileges apply to it; a user the proxy cannot log in
// as is refused at authentication (28000). Results are cached per user
// and database; a database other than Deps.HomeDatabase has its entries
// under its own Cache shard names (CacheShard), served only while a
// change stream of that database is up. LISTEN connections are per
// database: the home database's use the replica sets' own identity,
// another database's the identity of the client whose LISTEN started
// them.
//
// # Overview
//
// The client side speaks pgproto3 (protocol 3.0; a 3.2 request is
// negotiated down): SSLRequest (TLS when Config.TLS is set, else 'N';
// always 'N' on a Unix-socket listener, whose clients Config.RequireTLS
// does not concern), GSSENCRequest (always 'N'), CancelRequest,
// StartupMessage, then SCRAM-SHA-256 (with SCRAM-SHA-256-PLUS channel
// binding over TLS) or md5 authentication against Config.Users. After
// AuthenticationOk the client gets ParameterStatus values of the real
// servers, a BackendKeyData with a pid and secret issued by the proxy, and
// ReadyForQuery.
//
// Every request (a simple Query, or an extended-protocol batch up to its
// Sync) is classified by router.Classify and routed by
// (*router.Router).Route with the client's router.Session:
//
//   - local decisions (a deferred BEGIN, SET/RESET/SHOW dbproxy.*,
//     DEALLOCATE, COMMIT of an empty transaction, an empty query) are
//     answered by the proxy without a backend;
//   - single-shard decisions lease a backend (the shard's primary, or a
//     standby picked by replica.Set.Pick with the session's causal
//     position and staleness bound) and stream the messages both ways; a
//     deferred BEGIN is sent in the same flush as the transaction's first
//     statement (its replies dropped); a read the router lets run on a
//     standby, outside a transaction, whose node fails before its reply
//     is written to the client (connecting to it fails, or the connection
//     breaks or the server ends it with FATAL while the reply is still
//     buffered) runs on another standby or the primary instead, unseen by
//     the client, as does one a standby cancels for a conflict with
//     recovery (40001), and one waiting for the first reply of a node
//     whose probes fail meanwhile (replica.Node.Failing, looked at every
//     Config.ClientCheckInterval: a node that hangs without closing
//     anything) (at most maxReadRetries more tries; Stats.ReadRetries;
//     retry.go, clientcheck.go);
//   - multi-shard decisions run on every shard (one short lease each) and
//     the rows are merged as the router's MergePlan says (union, ORDER BY,
//     LIMIT/OFFSET, COUNT/SUM/MIN/MAX/AVG); broadcasts (DDL) return the
//     first shard's command tag;
//   - COPY FROM STDIN into a sharded table (a simple query outside a
//     transaction) is split: the proxy answers CopyInResponse, reads the
//     rows (text, CSV with quoted newlines, binary), finds each row's
//     shard from its key columns and streams it into the same COPY on
//     that shard's primary, each inside a transaction committed only when
//     every shard took its rows; any error (a bad or NULL key, a
//     constraint violation on one shard, CopyFail) rolls every shard back
//     (see copysplit.go); COPY table TO STDOUT of a sharded table (and
//     COPY (SELECT ...) TO STDOUT the router lets run on several shards)
//     runs on each shard in turn and is relayed as one COPY (one header, one
//     binary signature and trailer, the total row count).
//
// The Router should have FunctionCatalog as its router.Config.Functions
// (dbproxy serve does): reads calling immutable or stable user-defined
// functions then run on standbys; without it they go to the primary.
//
// # Pooling and session state
//
// With PoolTransaction (the default) a backend is leased for one
// transaction and given back when it reports ReadyForQuery 'I' with no
// Sync outstanding; with PoolSession it stays with the client while the
// statements keep routing to it. A backend given back in any other state,
// or whose protocol state is unknown (client gone mid-request, pump
// interrupted), is discarded, never pooled: a client that disconnects
// mid-transaction has its transaction rolled back by PostgreSQL.
//
// A backend discarded while a request is in flight on it (its client went
// away, or the session was ended by Close after the drain deadline) is
// sent a CancelRequest first, so the query stops rather than running on
// to its end. A client is noticed gone while its query runs, when nothing
// reads its socket, by a check every Config.ClientCheckInterval (poll
// with POLLRDHUP; Stats.ClientsGoneMidQuery counts these).
//
// Session-level advisory locks (pg_advisory_lock, pg_try_advisory_lock
// and their _shared forms) are refused with 0A000 under PoolTransaction:
// the lock would stay on a pooled backend after the transaction and the
// client's unlock would go elsewhere; transaction-level ones
// (pg_advisory_xact_lock) work. So are temporary tables that would outlive
// their transaction (no ON COMMIT DROP) and cursors WITH HOLD. Under
// PoolSession they work: FETCH, MOVE and CLOSE run on the backend the
// session holds, and a backend a client left such state on is closed when
// the client gives it up, never pooled for another client.
//
// State lives with the client and is replayed on whatever backend it
// lands on: the SET parameters (and startup parameters) tracked by the
// router session are replayed with RESET ALL + SET ... only when the
// backend's applied fingerprint (kept in the backend connection's
// pgconn.CustomData) differs; named and unnamed prepared statements are
// re-prepared transparently (a Parse, and a Close of a different statement
// of the same name, are injected before a Bind or Describe and their
// replies dropped), keyed by name and a hash of query and parameter types.
// A backend keeps at most Config.MaxBackendStatements client-named
// statements: when it is leased holding more, the least recently used
// (by Parse or Bind) are closed before the client's first message, outside
// any transaction, and prepared again if a client uses them later.
// Messages of one extended-protocol batch (up to Sync) stay on one
// backend. A pipelined batch whose later Bind needs another shard is
// failed on the backend itself (0A000) so PostgreSQL skips the rest of it.
//
// # Read-your-writes
//
// After a transaction that wrote on a primary commits, the proxy reads
// pg_current_wal_lsn() on the same backend (a safe upper bound of the
// commit position), records it in the router session and sends the
// client ParameterStatus dbproxy.causal_token (router.CausalToken text
// form, e.g. "s0:0/16B3748") just before the ReadyForQuery that ends the
// transaction. When the committing request is recognised as it is sent
// (a lone COMMIT/END, or a plain INSERT/UPDATE/DELETE/MERGE outside a
// transaction block) the position query goes in the same flush, so no
// round trip is added; otherwise it follows the ReadyForQuery from the
// backend. Stats counts both ways. SET dbproxy.causal_token = '...' or a
// /* dbproxy:causal_token=... */ comment makes later reads of any session,
// on any proxy, wait for or avoid standbys that have not replayed it;
// SET dbproxy.max_staleness = '200ms' bounds lag per session.
// SHOW dbproxy.causal_token and SHOW dbproxy.max_staleness work.
//
// # Result cache
//
// With Deps.Cache set, a read the router marks cacheable (one shard,
// outside a transaction, no nocache hint, not forced to the primary) is
// answered from the cache without leasing a backend: a simple Query gets
// RowDescription, DataRow*, CommandComplete, ReadyForQuery; an extended
// batch whose Bind follows only Parse messages gets ParseComplete,
// BindComplete, the RowDescription (or NoData) only for a Describe of the
// portal, the DataRows and CommandComplete for Execute (PortalSuspended at
// a row limit, as PostgreSQL), CloseComplete and ReadyForQuery. The value
// is the backend's own wire messages, keyed by shard, the session's
// replayed settings, SQL, parameter types, parameters and their formats,
// and result formats. A miss fills on its own lease (replica picked at
// max(causal position, cache.FillMinLSN)); a fill that fails, or whose
// result exceeds cache.DefaultConfig().MaxEntryBytes, runs the request
// again on the normal path so the client sees the backend's own answer.
// Tables written on a primary are invalidated (Cache.Invalidate) when the
// backend is idle again, before the client's ReadyForQuery; the cache's
// change streams (started by the caller) see every other write. See
// cache.go for the details and limits.
//
// # LISTEN and NOTIFY
//
// LISTEN and UNLISTEN are answered by the proxy, never run on a pooled
// backend (whose notifications would reach the next client to lease it).
// Per shard (and per database clients listen in), one goroutine holds a
// backend leased from the shard's primary and LISTENs there on every
// channel a client of that database listens on; each NotificationResponse
// it receives is written to every client listening on the channel, between
// messages, whatever the client is doing (also deep idle), by a short-lived
// goroutine per client so that a slow client delays no one. A session's
// first LISTEN first leases a backend as the client's own user (or finds
// one idle) on the default shard's primary, so a client PostgreSQL would not
// let into the database (no CONNECT, a pg_hba.conf refusal, a wrong backend
// password) gets the server's error instead of the database's
// notifications. A LISTEN is answered once every shard listens on the
// channel, so a NOTIFY (on any shard, also inside a transaction pinned to
// one) committed after the answer is delivered. LISTEN and UNLISTEN inside
// a transaction take effect at COMMIT, as in PostgreSQL; DISCARD ALL and
// UNLISTEN * end every subscription. A LISTEN inside a multi-statement
// string is refused (0A000). When a listening backend fails, the clients
// listening are ended with FATAL 08006 (notifications may have been lost; a
// client that reconnects and listens again knows to catch up); a client
// that leaves 16 MiB of notifications unread is closed. The listening
// backend is closed when the last listener leaves. The payload's pid is the
// notifying backend's, as PostgreSQL sends it.
//
// # Cancellation
//
// A CancelRequest carrying a (pid, secret) the proxy issued is turned into
// pgconn's CancelRequest on the backend currently leased by that client:
// the running query is cancelled, the client connection stays usable. A
// multi-shard statement is cancelled on every shard it runs on (the
// client gets 57014; a broadcast such as DDL stops where it was, the
// shards it completed on keep it). Unknown keys are ignored, as
// PostgreSQL does.
//
// # Connection states
//
// Each connection moves through startup, auth, idle, attached, copy and
// closing (see connState); the reader goroutine runs one small state
// function per state. A request that ends with exactly one ReadyForQuery
// (a Query, or a batch up to Sync) and fits in 32 KiB is answered by the
// reader itself: it writes the request and then streams the backend's
// reply to the client before it reads the client again, as PostgreSQL
// answers one request before reading the next. Where replies must flow
// while the client is read (pipelined batches, Flush, COPY FROM STDIN) a
// second goroutine (the pump) streams them. A pump is interrupted with a
// past read deadline on the backend (the connection's context reaches it
// through one context.AfterFunc per connection). States are counted in a
// registry: Stats is a cheap snapshot.
//
// # Statements prepared by the proxy
//
// With Config.AutoPrepare (on in dbproxy's config by default) PostgreSQL
// parses and plans a repeated statement once per backend connection:
//
//   - an unnamed extended-protocol statement is prepared on the backend
//     under a name derived from its text and parameter types ("dbproxy_"
//     and the hash); the client's Bind and Describe name it. The client's
//     Parse is answered by the backend (a named Parse, or a cheap Parse of
//     an empty unnamed statement when the backend holds it already) or,
//     when it opens its batch, by the proxy;
//   - a simple Query with integer literals outside the positions where
//     they are syntax is sent as Bind/Execute/Sync of a statement prepared
//     (and described) once per backend from router.Statement.Parameterize,
//     with int4 parameters; the proxy answers the RowDescription it
//     remembered and drops ParseComplete and BindComplete, so the client
//     sees the simple protocol's reply.
//
// At most 128 such statements are kept per backend (the oldest is closed
// first). A schema change sent through the proxy (DDL other than creating
// temporary tables) makes every backend close the statements the proxy
// prepared there before their next use, once when the DDL is sent and
// again when its transaction ends. When PostgreSQL still reports "cached
// plan must not change result type" (a table changed by DDL that did not
// go through this proxy), every statement the proxy prepared on that
// backend is closed; a parameterized simple query outside a transaction
// block is then sent again, so the client sees no error, while an unnamed
// extended statement fails that once. Differences
// from unprepared execution: error positions refer to the parameterized
// text, and PostgreSQL may choose a generic plan after five executions
// (plan_cache_mode governs it).
//
// A batch that only prepares statements (Parse and Close up to Sync, as
// libpq's PQprepare sends) waits at most 5 ms for a backend; if none is
// free the proxy answers it and the statement is prepared on the backend
// of its first Bind (a client program blocked on the prepare may be the
// one holding every backend).
//
// # Replies
//
// Replies to a client are encoded into its connection's buffer and
// written at flush points (ReadyForQuery, an error, a notice, the start
// of a COPY FROM STDIN, a Flush the client sent) and, within a long
// result, every 32 KiB: rows produced slowly reach the client in 32 KiB
// pieces or at the end of their result (PostgreSQL itself sends 8 KiB
// pieces). A long result is written from a 64 KiB buffer shared through
// a pool; an idle connection keeps at most a few KiB.
//
// # Idle connections
//
// A client connection that has been idle (no backend attached, waiting
// for its next request) for a second goes "deep idle": it gives its
// protocol Backend, whose 8 KiB read buffer and the write buffer kept
// with it are most of an idle connection's memory, back to a pool shared
// by the Server's connections, and waits for the client's next bytes
// with a 5-byte array; it takes a Backend from the pool (or a new one) when they
// arrive, as new connections do. One goroutine per Server (started by
// Serve, stopped by Close) finds such connections four times per second
// and interrupts their read with a past deadline. A Backend is only given
// back when it holds no bytes (the reader below it follows the message
// framing, so a message arriving slowly is read on), no pump can still
// write to the client, and no reply is waiting for a flush the client
// has not asked for. Connections inside a transaction, or holding a
// backend under session pooling, keep their Backend. A shutdown ends a
// deep-idle connection as any idle one (FATAL 57P01).
//
// With Config.IdleTransactionTimeout set, a client that holds a backend
// inside a transaction (or a failed one) and sends nothing for that long
// gets FATAL 25P03, PostgreSQL's idle-in-transaction error; its backend
// connection is closed (PostgreSQL rolls the transaction back) and its
// place in the node's pool freed. A transaction that has not yet run a
// statement holds no backend (BEGIN is sent with the first statement) and
// is not timed out, nor is a client waiting between transactions. The
// timeout is one timer per wait, armed only in that state.
//
// # Errors
//
// Errors sent to clients carry a SQLSTATE: PostgreSQL's own errors pass
// through unchanged; errors implementing SQLState() (router, replica,
// proxy) keep their code; one function (errorResponse) builds every
// ErrorResponse. Codes the proxy itself uses: 08P01 malformed or
// unexpected message (the connection is closed), 54000 message larger
// than Config.MaxMessageBytes (closed), 28P01 bad password or unknown
// user, 28000 TLS required, 3D000 database not allowed, 53300 too many
// clients, 57P01 shutdown, 25P03 idle in transaction past
// Config.IdleTransactionTimeout (closed), 57014 cancelled, 08006 backend
// lost (FATAL, the connection is closed, when it was lost mid-request and
// the request could not run elsewhere), 0A000 unsupported (e.g. cross-shard transactions, via the router). Malformed
// input never panics and never leaves a goroutine behind (fuzzed:
// FuzzStartup, FuzzMessages).
//
// # Concurrency and lifecycle
//
// New starts nothing. Serve accepts until Close (or its ctx ends); the
// Server owns one goroutine per connection, one pump per attached
// backend, the deep-idle sweeper, one listener per shard while clients
// LISTEN and one writer per client with notifications waiting. Close
// stops accepting, ends idle sessions at once with FATAL 57P01, lets open
// transactions finish until Config.ShutdownTimeout or ctx's deadline,
// then ends the rest and waits for every goroutine (the LISTEN fan-out's
// included); it is idempotent. Reload swaps users, databases, the
// default staleness bound, the client limit, the idle-in-transaction
// timeout and whether reads are served from Deps.Cache (CacheOff; writes
// invalidate it either way); the replica sets' own settings change with
// replica.Set.Reconfigure. The Deps (router, replica sets) belong to the caller and are
// not closed. All exported methods are safe for concurrent use.
//
// # Limits
//
// SQL-level PREPARE statements are replayed through the router session
// but their names share one namespace per backend. COPY and
// FunctionCall run on one backend. Multi-shard results are buffered in
// memory and sent in text or, converted with pgtype, in binary format;
// an Execute row limit suspends the portal as PostgreSQL does.
package proxy
