// Package integration holds tests that run dbproxy's packages against real
// PostgreSQL clusters with real streaming replication, started by the tests
// themselves through internal/pgcluster. A missing PostgreSQL binary fails
// the tests; nothing here skips.
//
// The package has no non-test code beyond this file; it may import any
// package of the module.
package integration
