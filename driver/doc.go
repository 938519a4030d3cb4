// Package driver is a database/sql driver that routes in-process with the
// same core as the proxy: router.Classify and router.Route decide (statement
// classification, shard keys taken from the query's arguments, read/write
// split, freshness bounds, causal positions, transactions, multi-shard merge
// plans); replica.Set executes (balancing, fallback to the primary, breakers,
// bounded per-node pools). The driver holds no routing logic of its own: it
// executes Decisions.
//
// # Opening
//
// Importing the package registers the driver name "dbproxy":
//
//	import _ "github.com/dbproxy/dbproxy/driver"
//	db, err := sql.Open("dbproxy", "file=/etc/dbproxy.toml;user=app;database=app")
//	db, err := sql.Open("dbproxy", "shards=s0:127.0.0.1:5432|127.0.0.1:5433,s1:127.0.0.1:5442;user=app;password=app;database=app;tables=users(id:int)")
//
// See DSN for both forms (config file, or shards, nodes and sharded tables
// inline) and every key; ParseDSN/DSN.String round-trip. For a
// *config.Config built in code use NewConnector(cfg, opts...) with
// sql.OpenDB; WithUser and WithDatabase choose the [[users]] entry and the
// database (default: the first of each).
//
// # Architecture
//
// A Connector is the shared runtime of one configuration: the router and one
// replica.Set per shard, built by the first Connect and stopped by Close
// (DB.Close calls it: probes stop, idle backends close). Prefer one *sql.DB
// per configuration and process.
//
// Each driver connection is a router.Session plus backend leases: outside a
// transaction a statement leases a backend for its own duration only
// (transaction pooling in-process); a transaction keeps the backend of its
// first statement until the backend reports ReadyForQuery 'I'. BEGIN is
// deferred by the router to that first statement, which fixes the shard;
// a statement of the transaction needing another shard fails with
// router.ErrCrossShardTransaction. Read-only transactions
// (sql.TxOptions{ReadOnly: true}) may run on a fresh standby, except
// SERIALIZABLE ones, which PostgreSQL refuses on standbys.
//
// Statements run with pgconn in the extended protocol with text-format
// parameters encoded by pgx's codecs (pgtype), through statements prepared
// once per backend connection; results are decoded as pgx's stdlib does
// (int64, float64, bool, string, []byte, time.Time). A statement without
// arguments given to Exec runs in the simple protocol, so multi-statement
// strings work. Session settings (SET, SQL PREPARE) are replayed on each
// backend a session lands on, and reset on a backend when the next session
// using it has different ones.
//
// Prepared statements (db.Prepare) hold the SQL text and its classification
// and are routed at every execution, never pinned to a node.
//
// Multi-shard reads run on every shard concurrently and are merged in the
// driver by the router's MergePlan: union, ORDER BY (text in byte order,
// PostgreSQL's "C" collation), LIMIT/OFFSET, count/sum/min/max and avg (with
// PostgreSQL's numeric division scale). DDL and other broadcast statements
// run on each shard's primary in turn.
//
// # Result cache
//
// With [cache] enabled = true in the config (or cache=on in the DSN) the
// Connector's first Connect builds a cache.Cache from the [cache] table and
// starts one logical-decoding change stream per shard primary, logged in as
// the connector's user, which needs the REPLICATION attribute; the FOR ALL
// TABLES publication dbproxy_cache must exist or the user must be allowed
// to create it (dbproxy up creates it). A read the router marks cacheable
// (Decision.Cacheable: a deterministic single read outside a read-write
// transaction, without a nocache hint) that runs on one shard through
// QueryContext, without WithPrimary, is looked up under a key of the shard,
// the session's replayed settings (search_path, TimeZone, ...), the SQL
// text, the parameter values and types. A hit is decoded from the cached
// bytes without leasing a backend; a miss runs the read on a backend picked
// with MinLSN = max(the session's causal position, cache.FillMinLSN), so a
// fill never reads older than what the change stream has invalidated, and
// stores the complete result (columns, type OIDs, values, command tag).
// Causal tokens apply: an entry is served only when the stream has applied
// the token's position for the shard. Every committed write through the
// driver also calls Cache.Invalidate for the tables it wrote; writes made
// anywhere else are invalidated by the stream (see package cache for the
// invalidation lag and what the stream cannot see). While a shard's stream
// is down its reads go to the backends. Connector.CacheStats reports the
// counters and Connector.Cache returns the cache (WaitUp, Invalidate).
//
// # Causal consistency
//
// After a write commits on a shard (an autocommit write, or the COMMIT of a
// transaction that wrote), the driver reads pg_current_wal_lsn() on the same
// backend and advances the session's position for that shard, so the
// connection reads its own writes. Across connections, goroutines, processes
// and the proxy, positions travel as tokens in the context:
//
//	ctx, tr := driver.WithCausalTracking(ctx) // before the write (BeginTx's ctx for a transaction)
//	db.ExecContext(ctx, "UPDATE ...")
//	tok := tr.Token()                         // also driver.CausalToken(ctx)
//	db.QueryRowContext(driver.WithCausalToken(ctx2, tok), "SELECT ...")
//
// A token's text form is router.CausalToken's ("s0:0/16B3748,s1:0/1A2B3C"),
// the same as the proxy's ParameterStatus dbproxy.causal_token and SET
// dbproxy.causal_token, so tokens move between driver and proxy clients in
// both directions. WithMaxStaleness(ctx, d) bounds the lag of standbys a
// read may use; WithPrimary(ctx) sends statements to primaries.
//
// # Errors
//
// Errors from PostgreSQL are *pgconn.PgError. Errors of the routing core
// carry SQLState() (router: 0A000 for a missing shard key, an unsupported
// multi-shard statement or a cross-shard transaction, 22023 for a bad causal
// token; replica: 53300 pool exhausted, 08006 node unavailable, 57P01
// closed); branch with errors.Is on their sentinels. ErrBadDSN wraps DSN
// problems, ErrNamedArgs rejects sql.Named arguments, ErrTxRolledBack is
// Commit's answer for a failed transaction, ErrClosed follows Connector.Close.
// driver.ErrBadConn (joined with the cause) is returned only when nothing
// reached a server (pgconn.SafeToRetry) and the connection holds no session
// state or transaction, so database/sql may retry safely. Reads outside a
// transaction that fail on a broken standby connection are retried on
// another node inside the driver (up to 3 attempts), and so are reads a
// standby cancels for a conflict with recovery (40001, 40P01) before any
// of their rows reached the caller: an error at Query, or at the first
// Rows.Next. Once a row was delivered the error is returned.
//
// # Concurrency and blocking
//
// Connector and Tracker are safe for concurrent use. Driver connections
// follow database/sql's contract (one goroutine at a time). Every statement
// blocks on its context: leasing (at most the pool's acquire timeout), a
// standby's catch-up wait (catch_up_wait), and the query; cancelling the
// context sends a PostgreSQL CancelRequest for the running query. The only
// goroutines the package starts are the replica sets' probes and, with the
// cache on, the cache's change streams and ristretto's workers (all owned
// by the Connector, stopped by Close), one per shard during a multi-shard
// read (waited for before the read returns), and the cache's shared fill of
// a missed read (waited for before the read returns).
//
// # Limits
//
// LastInsertId is unsupported (use RETURNING). Results of multi-shard reads
// and multi-statement queries are buffered in memory, and so are results of
// cacheable reads when the cache is on (a result over cache.max_entry_bytes
// is returned but not stored). Reads of a prepared statement run with SQL
// EXECUTE are cached under the EXECUTE text, and SQL EXECUTE of a write does
// not invalidate its tables early (the change stream does). LISTEN and
// UNLISTEN fail with 0A000 (database/sql cannot deliver notifications), and
// so do COPY of a sharded table, session-level advisory locks, temporary
// tables without ON COMMIT DROP and cursors WITH HOLD (backends are leased
// per transaction).
//
// # Imports
//
// driver imports router, replica, shard and config, never proxy or failover
// (checked by internal/lint).
package driver
