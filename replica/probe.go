package replica

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/dbproxy/dbproxy/internal/pgdial"
	"github.com/jackc/pgx/v5/pgconn"
)

// One query serves both roles: the LSN column is the replay LSN in
// recovery and the current insert LSN otherwise.
const lagQuery = `SELECT pg_is_in_recovery(),
  CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
  pg_last_wal_receive_lsn(),
  extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())`

const healthQuery = `SELECT pg_is_in_recovery()`

// probeConn is the kept-open connection of a lag probe loop.
type probeConn struct{ c *pgconn.PgConn }

func (p *probeConn) close(n *Node) {
	if p.c != nil {
		n.destroy(p.c)
		p.c = nil
	}
}

// healthLoop runs the health probe every HealthInterval until Close.
func (n *Node) healthLoop() {
	defer n.set.wg.Done()
	t := time.NewTicker(n.set.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-n.set.done:
			return
		case <-t.C:
			n.healthProbe(n.set.life)
			n.reap()
		}
	}
}

// lagLoop runs the lag/role probe every LagInterval, or at once when kicked
// by a waiting Pick, until Close.
func (n *Node) lagLoop() {
	defer n.set.wg.Done()
	var pc probeConn
	defer pc.close(n)
	t := time.NewTicker(n.set.cfg.LagInterval)
	defer t.Stop()
	for {
		select {
		case <-n.set.done:
			return
		case <-t.C:
		case <-n.kick:
		}
		n.lagProbe(n.set.life, &pc)
	}
}

// healthProbe opens a fresh connection and runs a trivial query, bounded by
// ProbeTimeout. The outcome sets health, the observed role and feeds the breaker.
func (n *Node) healthProbe(ctx context.Context) {
	s := n.set
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
	defer cancel()
	err := func() error {
		c, err := pgdial.Connect(ctx, n.probeCfg)
		if err != nil {
			return err
		}
		defer n.destroy(c)
		row, err := queryOneRow(ctx, c, healthQuery)
		if err != nil {
			return err
		}
		inRec, err := parseBool(row[0])
		if err != nil {
			return err
		}
		n.setObservedRole(inRec)
		return nil
	}()
	if s.life.Err() != nil {
		return // shutting down: not the node's fault
	}
	n.setHealth(err)
	n.recordProbe(err, false)
}

// lagProbe measures LSNs and lag on the kept-open probe connection pc,
// reconnecting when needed, bounded by ProbeTimeout.
func (n *Node) lagProbe(ctx context.Context, pc *probeConn) {
	s := n.set
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
	defer cancel()
	err := func() error {
		if pc.c == nil || pc.c.IsClosed() {
			pc.close(n)
			c, err := pgdial.Connect(ctx, n.probeCfg)
			if err != nil {
				return err
			}
			pc.c = c
		}
		row, err := queryOneRow(ctx, pc.c, lagQuery)
		if err != nil {
			return err
		}
		return n.storeLag(row)
	}()
	if err != nil {
		pc.close(n)
		if s.life.Err() != nil {
			return
		}
		n.lagFailed.Store(true)
		n.signalProbeFailure()
		n.setLastErr(fmt.Errorf("lag probe: %w", err))
		n.recordProbe(err, true)
		return
	}
	n.lagFailed.Store(false)
	n.recordProbe(nil, true)
}

// recordProbe feeds a probe outcome to the breaker. Unlike request
// outcomes, any probe error counts as a failure (the probe query cannot
// fail for SQL reasons).
func (n *Node) recordProbe(err error, fromLag bool) {
	failure := err != nil
	if failure {
		n.failures.Add(1)
		// The lag probe must not kick itself: it would retry in a tight loop.
		n.suspect(!fromLag)
	}
	tr := n.br.record(n.set.now(), failure)
	n.set.breakerChanged(n, tr)
}

func (n *Node) storeLag(row [][]byte) error {
	s := n.set
	if len(row) != 4 {
		return fmt.Errorf("lag probe: %d columns", len(row))
	}
	inRec, err := parseBool(row[0])
	if err != nil {
		return err
	}
	ls := &lagSample{at: s.now(), inRecovery: inRec, lagTime: 0}
	if row[1] != nil {
		if ls.lsn, err = ParseLSN(string(row[1])); err != nil {
			return err
		}
	}
	if row[2] != nil {
		if ls.receive, err = ParseLSN(string(row[2])); err != nil {
			return err
		}
	}
	n.setObservedRole(inRec)
	if !inRec {
		if n.cfg.Role == RolePrimary {
			// Monotonic max: samples from concurrent probes may arrive out of order.
			for {
				old := s.primaryLSN.Load()
				if uint64(ls.lsn) <= old || s.primaryLSN.CompareAndSwap(old, uint64(ls.lsn)) {
					break
				}
			}
		}
		n.lag.Store(ls)
		if n.cfg.Role == RoleStandby {
			s.notifyLag()
		}
		return nil
	}
	primary := LSN(s.primaryLSN.Load())
	if primary > ls.lsn {
		ls.lagBytes = uint64(primary - ls.lsn)
	}
	if ref := max(primary, ls.receive); ref > ls.lsn {
		// Behind: lag is the age of the last replayed transaction.
		ls.lagTime = time.Duration(math.MaxInt64)
		if row[3] != nil {
			secs, err := strconv.ParseFloat(string(row[3]), 64)
			if err != nil {
				return fmt.Errorf("lag probe: replay age %q: %w", row[3], err)
			}
			ls.lagTime = time.Duration(max(secs, 0) * float64(time.Second))
		}
	}
	n.lag.Store(ls)
	s.notifyLag()
	return nil
}

func (n *Node) setObservedRole(inRecovery bool) {
	obs := RolePrimary
	if inRecovery {
		obs = RoleStandby
	}
	n.observed.Store(uint32(obs))
	mismatch := obs != n.cfg.Role
	if n.mismatch.Swap(mismatch) == mismatch {
		return
	}
	s := n.set
	if mismatch {
		what := "configured standby is not in recovery (promoted?): no reads are sent to it"
		if n.cfg.Role == RolePrimary {
			what = "configured primary is in recovery: writes are refused"
		}
		s.log.Error("replica: node role mismatch", "node", n.cfg.Name, "configured", n.cfg.Role.String(), "observed", obs.String(), "effect", what)
		if f := s.cfg.Hooks.OnRoleMismatch; f != nil {
			f(n.cfg.Name, n.cfg.Role, obs)
		}
	} else {
		s.log.Info("replica: node role matches configuration again", "node", n.cfg.Name, "role", obs.String())
	}
}

func (n *Node) setHealth(err error) {
	healthy := err == nil
	if err != nil {
		n.signalProbeFailure()
		n.setLastErr(fmt.Errorf("health probe: %w", err))
	}
	if n.healthy.Swap(healthy) == healthy {
		return
	}
	s := n.set
	if healthy {
		s.log.Info("replica: node healthy", "node", n.cfg.Name)
	} else {
		s.log.Warn("replica: node unhealthy", "node", n.cfg.Name, "err", err)
	}
	if f := s.cfg.Hooks.OnHealthChange; f != nil {
		f(n.cfg.Name, healthy, err)
	}
}

// probeError is a node's last probe failure and its time.
type probeError struct {
	msg string
	at  time.Time
}

func (n *Node) setLastErr(err error) {
	n.lastErr.Store(&probeError{msg: err.Error(), at: time.Now()})
}

func parseBool(b []byte) (bool, error) {
	switch string(b) {
	case "t":
		return true, nil
	case "f":
		return false, nil
	}
	return false, errors.New("probe: unexpected boolean " + strconv.Quote(string(b)))
}
