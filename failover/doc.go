// Package failover detects a dead primary, promotes the most caught-up hot
// standby, fences the old primary and publishes the new topology, with
// exactly one dbproxy instance deciding at a time.
//
// # Status
//
// This package holds the contract only; the implementation has not landed.
//
// # Contract
//
// Topology (shards, nodes, roles, ring, version) lives in a coordinator
// behind the consumer-side interface Coordinator: lease, campaign,
// compare-and-swap publish. An etcd implementation (client/v3 concurrency
// sessions and elections) and an in-memory one pass one conformance suite.
//
// A Controller acts only while it holds the election key. Every write it
// makes is a compare on its leader revision, and that revision is stamped
// into shard.Topology as a fencing token, so a deposed leader's write fails
// with ErrNotLeader. The steps are ordered and idempotent, so a restart at
// any step resumes: confirm the primary dead from several observations;
// fence it (stop routing; if reachable, make it refuse writes); promote the
// standby with the highest replay LSN; repoint the other standbys; publish
// the new topology.
//
// # Errors
//
// ErrNotLeader: the caller's leadership ended (its lease expired or another
// instance won). Coordinator errors are wrapped with the key involved.
//
// # Concurrency and blocking
//
// Every blocking call takes a context.Context. Controllers own their
// goroutines and stop them in Close(ctx), which waits for them.
//
// # Imports
//
// failover imports shard, replica and config from this module, never router,
// proxy or driver (checked by internal/lint).
package failover
