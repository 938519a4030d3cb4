// Package router decides where each SQL statement runs: Classify turns SQL
// text into a Statement (pure, cached); Route turns a Statement, a Session
// and Bind parameters into a Decision value (shards, primary or replica,
// minimum LSN, staleness bound, cacheability, multi-shard merge plan).
// Executing a Decision (leasing, sending, streaming, merging) is the front
// end's job (proxy, driver).
//
// # Classification
//
// Classify uses the PostgreSQL parser (pg_query_go). It reports the Kind
// (read, write, ddl, tx, session, utility, unknown), the tables touched
// (identifiers folded as PostgreSQL folds them), shard-key candidates per
// table reference (key = const, const = key, IN lists, = ANY(ARRAY[...]),
// row comparisons, $n parameters, INSERT VALUES rows, AND/OR
// combinations, values propagated through column = column joins),
// MustPrimary with a reason (writes, locks, writable CTEs, SELECT INTO,
// sequences, advisory locks, txid, NOTIFY/LISTEN, CALL, DO, COPY FROM,
// EXPLAIN ANALYZE of a write, volatile built-ins, temporary tables),
// Cacheable (a deterministic single read), transaction-control and
// session-statement details, and /* dbproxy: ... */ or -- dbproxy: ...
// hints (shard=N|name, primary, max_staleness=200ms, causal_token=...,
// nocache), found with PostgreSQL's scanner so that comment-like text in
// literals and dollar quotes is ignored. Unparseable SQL is Kind unknown,
// routed to the primary, with ParseError set; Classify never panics.
// Built-in function volatility comes from an embedded pg_proc listing
// (pg_catalog_functions.tsv) plus explicit primary-only and
// read-safe-volatile lists; other functions are looked up by Route
// through a FunctionCatalog (cached; the cache is dropped when DDL on
// functions, schemas or extensions passes through Route).
//
// Statements returned by Classify are shared through a bounded cache keyed
// by the SQL text and are immutable: never modify them. Texts that differ
// only in integer and plain string literals (simple-protocol queries with
// inlined values) also share a template classified once per shape and
// filled with each text's values; a shape's template is used only after it
// reproduced the full classification of the first text of that shape
// (shape.go). Multi-shard merge plans are made on the first route needing
// them.
//
// Statement.Parameterize turns a single SELECT, INSERT, UPDATE or DELETE
// with inlined integers into a text with int4 parameters $1..$n and their
// values, for a front end to run it as a server-side prepared statement
// with the results of the literal text. Integers that are syntax (type
// modifiers, ORDER BY / GROUP BY positions) or that PostgreSQL compares
// with other expressions (grouped and DISTINCT query levels, DISTINCT
// aggregates, ON CONFLICT inference) stay inline; the decision is made
// once per literal shape from the parse tree (param.go).
//
// # Routing
//
// Tables not listed in the topology are unsharded and live on the default
// shard; statements on no table go to the default shard (a replica for
// reads). A read whose shard key is not fixed runs on every shard when the
// results can be merged (plain union, ORDER BY, LIMIT/OFFSET pushed down
// as LIMIT limit+offset, count/sum/min/max, avg rewritten as sum and
// count, GROUP BY with those aggregates) — see MergePlan — and co-located
// joins on equal shard keys and top-level UNION ALL branches may scatter.
// Everything else on a sharded table without a fixed key is refused with
// ErrShardKeyRequired or ErrUnsupported (SQLSTATE 0A000) naming the table
// and its key: writes (a write must stay on one shard), DISTINCT, HAVING,
// window functions, other aggregates, joins of sharded tables not on their
// keys, sharded tables mixed with unsharded ones off the default shard,
// updates of a shard-key column. DDL, CHECKPOINT, and TRUNCATE/VACUUM of a
// sharded table go to every shard's primary. EXPLAIN of a multi-shard
// statement goes to one shard.
//
// Hints: shard= forces the shard, primary forces the primary,
// max_staleness overrides the session and router bounds, causal_token
// raises MinLSN. Read-your-writes positions come from the Session
// (AdvanceCausal, SET dbproxy.causal_token), the context
// (WithCausalToken) and hints; the highest wins per shard.
//
// # Sessions and transactions
//
// A Session belongs to one front-end connection and is not safe for
// concurrent use. BEGIN is deferred (ActionLocal) until the first
// statement, which pins the transaction to that statement's shard (primary,
// or a replica for READ ONLY transactions) and carries the deferred text in
// Decision.Preamble; later statements are Pinned. A statement needing
// another shard, or several, fails with ErrCrossShardTransaction. The
// front end reports each backend ReadyForQuery status with Observe and
// each ErrorResponse with ObserveError; SET/RESET/DISCARD, SQL PREPARE and
// DEALLOCATE take effect on Observe (SETs inside a transaction on COMMIT)
// and Replay lists what to run on a fresh backend. LISTEN and UNLISTEN
// (alone in their text, outside a failed transaction) are ActionLocal:
// the front end carries them out itself, and Listening reports the
// channels in effect (a LISTEN inside a transaction once it commits; a
// LISTEN the front end could not carry out is dropped by ObserveError).
// In a multi-statement string they are refused with ErrUnsupported.
// COPY FROM STDIN into a sharded table without a key filter routes to every
// shard with Decision.CopySplit (the table's key and the topology) and
// Statement.CopyIn (columns, format and options): the front end sends each
// row to its key's shard. COPY table TO STDOUT of a sharded table, and
// COPY (SELECT ...) TO STDOUT of a query over several shards whose rows
// need no merging (no ORDER BY, LIMIT/OFFSET, aggregates; ErrUnsupported
// otherwise), route to those shards with Decision.CopyConcat: the front
// end relays the shards' rows one after the other as one COPY. SET/RESET of
// dbproxy.causal_token and dbproxy.max_staleness are handled by the
// session and never sent to PostgreSQL.
//
// # Concurrency and blocking
//
// Classify, Classifier and Router are safe for concurrent use; Route sees
// topology swaps atomically (one snapshot per call). Nothing blocks except
// FunctionCatalog lookups of uncached user functions, bounded by ctx.
//
// # Errors
//
// Sentinels (compare with errors.Is): ErrCrossShardTransaction,
// ErrShardKeyRequired (wraps shard.ErrUnknownShardKey), ErrUnsupported,
// ErrBadHint, ErrBadCausalToken, ErrBadParameter, ErrInvalidSQL; key values
// of the wrong type wrap shard.ErrBadKey. Every error returned to a client
// implements SQLState() string.
package router
