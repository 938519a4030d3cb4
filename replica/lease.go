package replica

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Lease is one backend connection leased from a node's pool. A Lease is
// used by one goroutine at a time; Release and Discard may be called from
// any goroutine, and only the first of them has an effect.
type Lease struct {
	node  *Node
	conn  *pgconn.PgConn
	key   string // identityKey of the connection's login
	start time.Time
	trial bool  // counted as a half-open breaker trial
	born  int64 // when the connection was opened (Set clock)
	done  atomic.Bool
}

// Conn returns the backend connection. It is valid until Release or
// Discard; callers may speak raw protocol over Conn().Frontend().
func (l *Lease) Conn() *pgconn.PgConn { return l.conn }

// PgConn is the same as Conn.
func (l *Lease) PgConn() *pgconn.PgConn { return l.conn }

// Node returns the node the connection belongs to.
func (l *Lease) Node() *Node { return l.node }

// Release ends the lease. err is the outcome of the work done on it:
//   - it feeds the breaker (IsConnFailure decides what is a failure) and,
//     when nil or a server error, the latency EWMA with the lease duration;
//   - the connection goes back to the pool only if err is nil or a
//     *pgconn.PgError, the connection is not closed nor busy, and its
//     transaction status is idle ('I'); otherwise it is closed.
//
// Release does not block on the network except to send Terminate to a
// connection being closed (bounded by ProbeTimeout). Calls after the first
// Release or Discard are no-ops.
func (l *Lease) Release(err error) {
	if !l.done.CompareAndSwap(false, true) {
		return
	}
	n := l.node
	if isServerError(err) {
		n.Observe(time.Since(l.start))
	}
	reuse := isServerError(err) && !l.conn.IsClosed() && !l.conn.IsBusy() && l.conn.TxStatus() == 'I'
	l.finish(err, reuse)
}

// Discard ends the lease and closes the connection whatever its state (use
// it when the protocol state is unknown). err feeds the breaker like Release.
func (l *Lease) Discard(err error) {
	if !l.done.CompareAndSwap(false, true) {
		return
	}
	l.finish(err, false)
}

func (l *Lease) finish(err error, reuse bool) {
	n := l.node
	// Give the slot back even if closing the connection panics.
	defer func() {
		n.inUse.Add(-1)
		if l.trial {
			n.br.trials.Add(-1)
		}
		n.slots.release()
	}()
	n.recordOutcome(err)
	if reuse {
		n.pushIdle(l.conn, l.key, l.born)
	} else {
		n.destroy(l.conn)
	}
}

// CurrentLSN runs SELECT pg_current_wal_lsn() on the leased connection,
// which must be idle (outside a transaction block, or inside one: the value
// is the server's current WAL insert position either way). Use it right
// after a commit to obtain a causal token covering that commit.
func (l *Lease) CurrentLSN(ctx context.Context) (LSN, error) {
	if l.done.Load() {
		return 0, errors.New("replica: CurrentLSN on a released lease")
	}
	v, err := queryOneRow(ctx, l.conn, "SELECT pg_current_wal_lsn()")
	if err != nil {
		return 0, fmt.Errorf("replica: node %s: pg_current_wal_lsn: %w", l.node.cfg.Name, err)
	}
	if len(v) != 1 || v[0] == nil {
		return 0, fmt.Errorf("replica: node %s: pg_current_wal_lsn returned no value", l.node.cfg.Name)
	}
	return ParseLSN(string(v[0]))
}

// queryOneRow runs sql (simple protocol) and returns the first row's text
// values (nil entries for NULL).
func queryOneRow(ctx context.Context, c *pgconn.PgConn, sql string) ([][]byte, error) {
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(res) == 0 || len(res[0].Rows) == 0 {
		return nil, errors.New("no rows")
	}
	if res[0].Err != nil {
		return nil, res[0].Err
	}
	return res[0].Rows[0], nil
}
