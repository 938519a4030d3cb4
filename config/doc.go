// Package config is dbproxy's typed configuration: one TOML file holding
// the listener, users, shards (a primary plus standbys each), sharded
// tables and their shard keys, routing and balancing, staleness bounds,
// pool sizes, breaker limits, cache settings and how the nodes are
// reached (TLS). dbproxy.example.toml at the repository root documents
// every key. ConnURL and WithFilesIn turn [backend] into the
// connection strings of the pools, probes and cache stream.
//
// # Building a Config
//
//   - Default returns every default filled in and no shards, users or
//     databases; fill those in code, call ApplyDefaults, then Validate.
//   - Parse (bytes) and Load (file) decode TOML onto Default(), then run
//     ApplyDefaults and Validate, and return either a valid *Config or an
//     error. Unknown keys are errors (never ignored), as are values of the
//     wrong TOML type and bad enum or duration strings.
//   - Encode writes a Config as TOML that Parse reads back to an equal
//     Config.
//
// # Errors
//
// Parse, Load, Validate and CheckReload collect every problem rather than
// stopping at the first, and return them joined with errors.Join, sorted by
// source line when known. Each is a *FieldError naming the key path with
// array indexes ("shards[1].nodes[0].port") and, when the Config came from
// Parse/Load, the line (of the key, or of the table holding it when the key
// is missing). Each wraps one sentinel: ErrSyntax (not TOML; parsing stops
// there), ErrUnknownKey, ErrType, ErrInvalid, ErrNotReloadable. Use
// errors.Is on the joined error, or FieldErrors to list them.
//
// Validate checks ranges, required keys, enums, that every shard has
// exactly one primary, that shard, node and user names and node host:port
// addresses are unique across the config, that [[tables]] entries are
// valid and unique SQL identifiers with a non-empty shard key of distinct
// columns and one key type per column, that default_shard names a shard,
// and that TLS and credentials are consistent. It does not check that
// tables exist: the proxy checks [[tables]] against the database at
// startup. Node addresses are compared as written (no DNS).
//
// # Reload
//
// Reloadable lists what SIGHUP may change (users, pool sizes, acquire
// timeout, connection lifetimes, balance, staleness, catch-up wait,
// breaker, cache enabled/ttl); ReplicaTuning(shard) is the part a running
// replica set takes (replica.Set.Reconfigure). CheckReload(old, new)
// rejects any other difference, naming each key.
//
// # SCRAM
//
// NewSCRAMVerifier, DeriveSCRAMVerifier and ParseSCRAMVerifier produce and
// read PostgreSQL-format SCRAM-SHA-256 verifiers; SCRAMVerifier has the
// server-side checks of an exchange (VerifyClientProof, ServerSignature).
//
// # Concurrency
//
// Nothing here blocks or starts goroutines. A *Config is a plain value:
// safe for concurrent reads, not for concurrent writes. Treat a Config
// handed to the rest of the proxy as immutable; reload builds a new one.
//
// Apart from build.go (conversion to shard and replica configs), the
// package depends on nothing else in dbproxy.
package config
