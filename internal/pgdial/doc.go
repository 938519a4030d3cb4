// Package pgdial connects to PostgreSQL with pgconn, negotiating
// sslmode=prefer (libpq's and pgconn's default) on one connection as libpq
// does.
//
// pgconn implements prefer as two attempts: a connection that must be TLS,
// and when the server declines (answers 'N' to SSLRequest) a second TCP
// connection without TLS. Against a server without TLS that is two
// connections, and two forked server processes, for every connection and
// every health probe. Connect instead asks for TLS on the connection it
// dials and goes on without it on that same connection when the server
// declines. The rest of prefer is kept: a TLS connection the server then
// refuses at startup (a hostnossl-only pg_hba.conf) is retried without TLS,
// and a CancelRequest for the connection (PgConn.CancelRequest) is sent over
// TLS when the connection is TLS.
//
// # Contract
//
// Connect(ctx, cfg) connects with a copy of cfg (cfg is not modified) and
// returns what pgconn.ConnectConfig returns: a *pgconn.PgConn or its
// connect error. It blocks until connected, failed, or ctx ends. Configs
// other than single-host sslmode=prefer with default sslnegotiation and
// sslcertmode (disable, require, verify-ca, verify-full, allow, several
// hosts, Unix sockets) connect exactly as pgconn.ConnectConfig does.
//
// # Concurrency
//
// Connect may be called concurrently with the same cfg. The returned
// connection has pgconn's rules; its CancelRequest may run concurrently with
// its queries, as in pgconn.
package pgdial
