// Package cache is a read-through cache of query results, invalidated by
// every writer through a logical-decoding change stream from each shard
// primary.
//
// # Overview
//
// A front end (the proxy or the driver) builds a Key for a read the router
// marked cacheable (NewKey: shard, namespace, normalized SQL, parameters and
// their formats, result formats) and calls GetOrFill with the tables the read
// reads, the session's causal token for the shard and a FillFunc that runs
// the read and returns its result in the front end's own encoding (the proxy
// keeps RowDescription/DataRow/CommandComplete wire bytes). Values are opaque
// bytes; the cache never looks inside them. A read the client marked
// nocache, or any read the router did not mark cacheable, must not go
// through the cache at all.
//
// Entries are bounded by total bytes (ristretto MaxCost, sampled-LFU
// eviction with TinyLFU admission), by a per-entry TTL and by a maximum
// entry size. Config.IncludeTables and ExcludeTables choose which tables'
// reads may be cached. With Config.FillAfterMisses 2 (dbproxy's default)
// a key is filled only at its second miss while a doorkeeper (65,536 key
// hashes, direct-mapped) remembers the first: GetOrFill returns
// ErrNotAdmitted for the first, and the front end runs that read as if
// uncached, so reads of keys read once cost no fill and evict nothing.
//
// # Invalidation
//
// Cache.Watch starts, per shard, a change stream from the shard's primary:
// a replication=database connection, a FOR ALL TABLES publication (created
// if missing) and a TEMPORARY logical slot decoded with the built-in
// pgoutput plugin. The server drops a temporary slot when its connection
// ends, so a dead process leaves no slot behind to pin WAL. Every committed
// write is seen, whoever made it: this proxy, another proxy, the driver in
// another process, or a client connected straight to PostgreSQL. On each
// Commit message the tables the transaction inserted into, updated, deleted
// from or truncated are invalidated, in commit order, once the primary's
// pg_current_snapshot() (on a second, plain connection) shows the
// transaction finished. A commit is decoded as soon as its WAL is flushed,
// before the committing backend leaves the proc array (and, with
// synchronous replication, before the standby acknowledged it); a fill
// started in that window would still read the old row, so invalidating any
// earlier would let it store the old value under the new epochs. Logical decoding was chosen over
// statement triggers with NOTIFY because it needs no object in the user's
// schema (no triggers to install on every table, none to miss on new
// tables), it adds nothing to the writers' transactions, and it carries the
// commit LSN and timestamp, which causal tokens and the lag figure need.
//
// Invalidation is tracked with per-table epoch counters (per shard), not a
// table-to-keys index. A fill snapshots the epochs of its tables before it
// runs; the entry records that snapshot and Get serves it only if every
// epoch is unchanged. So a fill that raced with an invalidation can never
// serve its result, even though ristretto's buffered Set may land after the
// invalidation; GetOrFill also skips storing when the epochs moved during
// the fill. Concurrent misses share one fill (singleflight) only when they
// see the same epochs, so a caller arriving after an invalidation never
// receives the result of a fill that started before it.
//
// Tables are tracked by bare, lower-cased relation name: a write to s1.t
// also invalidates reads of s2.t. That over-invalidates, which is safe;
// callers often name tables unqualified (resolved by search_path), and
// matching by name cannot miss.
//
// # When the stream breaks
//
// While a shard's stream is not up (before the first connection, after the
// connection is lost, the slot is dropped, the walsender is terminated, or
// nothing was received for StallTimeout), every Get of that shard misses
// and no fill result is stored. The stream goroutine reconnects with
// jittered exponential backoff. A new stream starts from a new slot's
// consistent point, so writes made while it was down are never seen:
// coming up bumps the shard's generation, which makes every entry filled
// before unservable.
//
// # Causal tokens
//
// GetOrFill and Get take minLSN, the session's token for the shard: the
// commit LSN of its last write, or an upper bound such as
// pg_current_wal_lsn() read after the commit. An entry is served only if the
// stream has applied every commit up to minLSN. Then any write covered by
// the token that touched the entry's tables has already bumped their epochs,
// so an entry still valid was filled after that write was applied, and so
// read data that includes it. Otherwise the read misses (and asks the
// server for a keepalive, whose sent-position advances the stream past a
// token no commit of a published table would reach).
//
// The stream publishes a commit in the order pending LSN, epoch bumps,
// applied LSN. Get reads applied before the epochs; a fill reads the epochs
// before the pending LSN and exposes it as FillMinLSN(ctx). A fill must
// read from the primary or from a replica that has replayed at least
// FillMinLSN(ctx): a replica behind an invalidation the cache has already
// applied could return the old value, and the epoch snapshot would not
// catch it. Entry.FilledAtLSN records that position.
//
// Between a commit and the application of its invalidation (the
// invalidation lag, Stats().InvalidationLag) a read without a token may be
// served the previous value: the cache is eventually consistent, bounded by
// the lag, and read-your-writes through tokens. A front end may call
// Invalidate after its own writes to shorten that window; it should call
// InvalidateAfter with the writes' commit positions instead, which also
// raises the shards' FillMinLSN to them, or a fill racing with the
// invalidation could read the old rows from a replica behind the write
// and store them until the stream applies the commit.
//
// # What the stream cannot see
//
// DDL is not decoded; a changed relation is invalidated only when a later
// row change makes pgoutput describe it again. Writes to UNLOGGED and
// TEMPORARY tables are not decoded at all. pgoutput names the leaf
// partition a row went to, not the partitioned table, so reads naming the
// parent must list the partitions in tables, or be excluded. Reads of views
// must list the base tables, and reads calling functions that read tables
// must list those tables. A read listing no tables is dropped only by its
// TTL or a stream break. Exclude such tables (ExcludeTables), or call
// Invalidate; the TTL bounds what remains.
//
// # Concurrency
//
// Every method is safe for concurrent use. Get never blocks on I/O.
// GetOrFill blocks while its fill runs, or while it waits for a shared
// fill (until its ctx ends). It never returns while the fill it passed is
// still running, so the fill may use resources the caller releases after
// the call (a leased backend connection); a fill must honour its ctx. Values returned are shared and valid forever
// but must not be modified. Watch starts one goroutine per shard, owned by
// the Cache and stopped by Unwatch or Close; Close waits for them.
//
// # Errors
//
// ErrClosed (SQLState 57P01) after Close; ErrInvalidConfig wrapped by
// New, Watch and the Validate methods; ErrNotWatched and ErrStreamDown from
// WaitUp and Unwatch. GetOrFill returns the fill's error unchanged, or
// ctx.Err(). Stream errors are not returned to readers: they surface in
// Stats().Streams, the logger and Hooks.OnStreamState.
//
// # Configuration
//
// Config (DefaultConfig, Validate) sizes the cache; StreamConfig
// (DefaultStreamConfig, Validate) configures each shard's stream. The
// stream's user needs the REPLICATION attribute, and superuser (or
// database owner) if the publication does not exist yet; the server needs
// PostgreSQL 13 or later, wal_level=logical, and per process and shard a
// free replication slot, a WAL sender and one ordinary connection.
//
// Stats().Bytes counts entries until ristretto evicts or expires them,
// including entries already invalid (they are dropped when next read).
package cache
