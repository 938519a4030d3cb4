// Package shard places rows on shards: canonical shard keys, a
// consistent-hash ring, and an immutable Topology snapshot.
//
// # Overview
//
// A shard key value (an int, text or uuid column, or several of them) is
// turned into a Key, its canonical bytes. The Key's 64-bit xxhash
// (github.com/cespare/xxhash/v2, XXH64 seed 0) is its position on a Ring
// of virtual nodes; the shard owning the first point at or after that
// position (wrapping around) owns the key. A Topology binds the ring to
// shard names and nodes, the sharded tables with their key columns, a
// default shard for unsharded tables, and a version (an etcd revision used
// as a fencing token).
//
// # Canonical encoding (pinned contract — never change)
//
// Every Key starts with a one-byte type tag:
//
//	int       0x01 ‖ int64 big-endian two's complement (8 bytes)
//	          smallint, integer and bigint widen to int64 first, so
//	          42, '42'::bigint, '+42', '0x2A' (PostgreSQL 16+) and a Bind
//	          parameter 42 in text format or binary int2/int4/int8 all
//	          give 01 00 00 00 00 00 00 00 2A.
//	text      0x02 ‖ the UTF-8 bytes of the value (no terminator; the
//	          empty string is the single byte 02)
//	uuid      0x03 ‖ the 16 bytes of the uuid (textual input parsed as
//	          PostgreSQL's uuid_in: any case, optional braces, optional
//	          hyphen after any group of four hex digits)
//	composite 0x04 ‖ for each part in column order:
//	          uint32 big-endian length of the part ‖ the part's own
//	          canonical bytes (tag included). Composite of exactly one
//	          part is that part unchanged; of two or more, as above.
//
// The pinned vectors in testdata/vectors.json and the literal bytes and
// hashes in vectors_test.go check this encoding, the hash and the ring on
// every test run. Regenerating them is a compatibility break: existing
// data would be on the wrong shards.
//
// # Ring
//
// A shard named n with weight w owns w×V points, V being the virtual
// nodes per unit of weight (DefaultVirtualNodes = 1024 unless configured);
// point i is at xxhash64(n + "#" + decimal(i)), i = 0..w×V-1. Points depend
// on the shard's name, never its index: adding a shard moves only keys to
// that shard (about 1/(N+1) of them for equal weights) and reordering the
// shard list moves nothing. Equal positions (never seen in practice) go to
// the shard whose name sorts first. Lookup is a binary search over the
// sorted points: total (every key, even nil or malformed, maps to a valid
// shard), deterministic in every process and version, and allocation-free.
//
// # Tables
//
// Table names are "table" or "schema.table" with identifiers already
// folded the way PostgreSQL folds them (unquoted → lower case, quoted kept
// verbatim); this package compares names exactly, except that "t" and
// "public.t" are the same table. Tables not listed are unsharded and live
// on the default shard.
//
// # Errors
//
// Sentinels to branch on with errors.Is, each with an SQLSTATE via
// SQLState(): ErrUnknownShardKey (0A000; the key of a sharded table is
// missing or incomplete — callers wrap it with the table and key columns),
// ErrBadKey (22P02, 22003, 22021 or 08P01 from ParseKey/DecodeBinaryKey;
// or a key of the wrong type for its table), ErrUnknownShard (unknown
// shard name or ID) and ErrInvalidTopology (spec validation).
//
// # Concurrency
//
// Ring and Topology are immutable after construction and safe for
// concurrent use; accessors return copies. Nothing in this package blocks
// or starts goroutines. A Key is a byte slice that this package never
// modifies.
package shard
