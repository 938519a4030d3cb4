// Package migrations applies versioned schema changes to every shard and
// records progress per shard, so an interrupted run resumes where it stopped.
//
// # Status
//
// This package holds the contract only; the implementation has not landed.
//
// # Contract
//
// A migration is a numbered SQL file (version, name, up statements). Apply
// runs, for each shard primary in turn, every migration whose version is not
// yet recorded in that shard's dbproxy_migrations table, each inside its own
// transaction together with the row that records it; a failure stops the run
// with an error naming the shard and version and leaves earlier shards and
// versions applied. Running Apply again resumes. Versions must be applied in
// order; a recorded version whose checksum differs from the file is an error.
//
// # Concurrency and blocking
//
// Apply takes a context.Context and holds a PostgreSQL advisory lock on each
// shard while it works, so two runs never interleave on one shard.
//
// # Imports
//
// migrations imports shard, replica and config from this module (checked by
// internal/lint).
package migrations
