// Package bench measures dbproxy against direct connections, PgBouncer and
// Pgpool-II on the same machine, in the same run, with interleaved rounds,
// and reports ratios against the baseline measured in that run.
//
// # Status
//
// This package holds the contract only; the harness has not landed.
//
// # Contract
//
// The harness starts the clusters with internal/pgcluster, starts every
// target, runs each workload through each target in interleaved rounds and
// stops everything it started, also on cancellation or failure. A target that
// cannot run a workload gets a row saying so and why. Output: report.md,
// charts and raw JSONL in the given directory.
//
// bench is a test-only leaf: it may import any package of the module.
package bench
