package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrBadLSN is returned by ParseLSN for text that is not "XXXXXXXX/XXXXXXXX".
var ErrBadLSN = errors.New("pgcluster: malformed LSN")

// ParseLSN parses PostgreSQL's textual pg_lsn ("16/B374D848") into a uint64.
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("%w: %q", ErrBadLSN, s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrBadLSN, s)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrBadLSN, s)
	}
	return h<<32 | l, nil
}

// FormatLSN renders a uint64 LSN the way PostgreSQL does ("16/B374D848").
func FormatLSN(v uint64) string { return fmt.Sprintf("%X/%X", v>>32, uint32(v)) }

// LSNs is one observation of a node's WAL positions. String fields hold
// PostgreSQL's text form ("" when the server returned NULL); the *LSN fields
// hold the parsed value (0 when NULL).
type LSNs struct {
	Node       string
	InRecovery bool // pg_is_in_recovery(): true on a standby

	Current    string // primary: pg_current_wal_lsn()
	CurrentLSN uint64

	Receive    string // standby: pg_last_wal_receive_lsn()
	ReceiveLSN uint64
	Replay     string // standby: pg_last_wal_replay_lsn()
	ReplayLSN  uint64

	// LastReplay is pg_last_xact_replay_timestamp() (zero when NULL: nothing
	// replayed since the standby started).
	LastReplay time.Time
	// ServerNow is now() on the node when the observation was taken.
	ServerNow time.Time
	// ReplayPaused is pg_is_wal_replay_paused() (standby only).
	ReplayPaused bool
}

// Position is the node's WAL position: CurrentLSN on a primary, ReplayLSN on
// a standby.
func (l LSNs) Position() uint64 {
	if l.InRecovery {
		return l.ReplayLSN
	}
	return l.CurrentLSN
}

// ReplayDelay is ServerNow - LastReplay on a standby whose receive and replay
// positions differ (the time lag), and 0 when they are equal, on a primary, or
// when nothing has been replayed yet.
func (l LSNs) ReplayDelay() time.Duration {
	if !l.InRecovery || l.LastReplay.IsZero() || l.ReceiveLSN == l.ReplayLSN {
		return 0
	}
	if d := l.ServerNow.Sub(l.LastReplay); d > 0 {
		return d
	}
	return 0
}

// lsnQuery reads every position in one round trip. The CASE guards keep
// primary-only and standby-only functions from raising errors.
const lsnQuery = `SELECT pg_is_in_recovery(),
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
  pg_last_wal_receive_lsn()::text,
  pg_last_wal_replay_lsn()::text,
  pg_last_xact_replay_timestamp(),
  now(),
  CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END`

// QueryLSNs reads the WAL positions of the server behind conn in one round
// trip; node names the observation. Used for local and container nodes alike.
func QueryLSNs(ctx context.Context, conn *pgx.Conn, node string) (LSNs, error) {
	l := LSNs{Node: node}
	var cur, recv, replay *string
	var last *time.Time
	if err := conn.QueryRow(ctx, lsnQuery).Scan(&l.InRecovery, &cur, &recv, &replay, &last, &l.ServerNow, &l.ReplayPaused); err != nil {
		return l, err
	}
	if last != nil {
		l.LastReplay = *last
	}
	var e1, e2, e3 error
	l.Current, l.CurrentLSN, e1 = parseOptLSN(cur)
	l.Receive, l.ReceiveLSN, e2 = parseOptLSN(recv)
	l.Replay, l.ReplayLSN, e3 = parseOptLSN(replay)
	return l, errors.Join(e1, e2, e3)
}

func parseOptLSN(s *string) (string, uint64, error) {
	if s == nil {
		return "", 0, nil
	}
	v, err := ParseLSN(*s)
	return *s, v, err
}
