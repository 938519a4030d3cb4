// Package driver is a database/sql driver that routes in-process with the
// same core as the proxy: statement classification, shard keys taken from the
// query's arguments, read/write split, freshness bounds, fallback, breakers,
// balancing and bounded pools. No routing logic lives here; it calls router.
//
// # Status
//
// This package holds the contract only; the implementation has not landed.
//
// # Contract
//
// Importing the package registers the driver name "dbproxy". sql.Open takes
// a DSN naming a config file (file=/path/dbproxy.toml) or listing shards and
// nodes inline; NewConnector(cfg) serves sql.OpenDB. The connector implements
// io.Closer, so DB.Close stops probes and pools.
//
// Causal consistency travels in context.Context: CausalToken(ctx) after a
// write, WithCausalToken(ctx, tok) before a read, WithMaxStaleness(ctx, d)
// and WithPrimary(ctx). A token's text form is the proxy's
// dbproxy.causal_token, so tokens move between driver and proxy.
//
// # Errors
//
// Errors from PostgreSQL are *pgconn.PgError. driver.ErrBadConn is returned
// only when nothing reached a server.
//
// # Imports
//
// driver imports router and the layer-1 packages, never proxy or failover
// (checked by internal/lint).
package driver
