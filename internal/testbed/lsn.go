package testbed

import "github.com/dbproxy/dbproxy/internal/pgcluster"

// LSNs is one observation of a node's WAL positions, the same value as
// internal/pgcluster's.
type LSNs = pgcluster.LSNs

// ErrBadLSN is returned by ParseLSN for text that is not "XXXXXXXX/XXXXXXXX".
var ErrBadLSN = pgcluster.ErrBadLSN

// ParseLSN parses PostgreSQL's text form of a pg_lsn ("16/B374D848").
func ParseLSN(s string) (uint64, error) { return pgcluster.ParseLSN(s) }

// FormatLSN renders an LSN the way PostgreSQL does ("16/B374D848").
func FormatLSN(v uint64) string { return pgcluster.FormatLSN(v) }
