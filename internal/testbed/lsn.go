package testbed

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ErrBadLSN is returned by ParseLSN for text that is not "XXXXXXXX/XXXXXXXX".
var ErrBadLSN = errors.New("testbed: malformed LSN")

// ParseLSN parses PostgreSQL's text form of a pg_lsn ("16/B374D848").
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("%w: %q", ErrBadLSN, s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%w: %q", ErrBadLSN, s)
	}
	return h<<32 | l, nil
}

// FormatLSN renders an LSN the way PostgreSQL does ("16/B374D848").
func FormatLSN(v uint64) string { return fmt.Sprintf("%X/%X", v>>32, uint32(v)) }

// LSNs is one observation of a node's WAL positions (the same shape as
// internal/pgcluster's). String fields hold PostgreSQL's text ("" for NULL);
// the *LSN fields the parsed value (0 for NULL).
type LSNs struct {
	Node       string
	InRecovery bool // pg_is_in_recovery(): true on a standby

	Current    string // primary: pg_current_wal_lsn()
	CurrentLSN uint64

	Receive    string // standby: pg_last_wal_receive_lsn()
	ReceiveLSN uint64
	Replay     string // standby: pg_last_wal_replay_lsn()
	ReplayLSN  uint64

	LastReplay   time.Time // pg_last_xact_replay_timestamp() (zero when NULL)
	ServerNow    time.Time // now() on the node
	ReplayPaused bool      // pg_is_wal_replay_paused() (standby only)
}

// Position is CurrentLSN on a primary and ReplayLSN on a standby.
func (l LSNs) Position() uint64 {
	if l.InRecovery {
		return l.ReplayLSN
	}
	return l.CurrentLSN
}

// lsnQuery reads every position in one round trip; the CASE guards keep
// primary-only and standby-only functions from raising errors.
const lsnQuery = `SELECT pg_is_in_recovery(),
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
  pg_last_wal_receive_lsn()::text,
  pg_last_wal_replay_lsn()::text,
  pg_last_xact_replay_timestamp(),
  now(),
  CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END`

func parseOptLSN(s *string) (string, uint64, error) {
	if s == nil {
		return "", 0, nil
	}
	v, err := ParseLSN(*s)
	return *s, v, err
}
