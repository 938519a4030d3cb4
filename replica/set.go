package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// Set is a primary and its standbys with per-node pools, probes and
// breakers, and the read balancing policy. Create it with NewSet; all
// methods are safe for concurrent use.
type Set struct {
	cfg      Config
	log      *slog.Logger
	epoch    time.Time
	nodes    []*Node
	primary  *Node
	standbys []*Node
	lagMax   int64 // Config.lagMaxAge() in ns

	life       context.Context // owner lifetime ctx of the probes; cancelled by Close
	cancelLife context.CancelFunc
	done       chan struct{}
	closed     atomic.Bool
	wg         sync.WaitGroup

	bcast      atomic.Pointer[chan struct{}] // closed and replaced after each standby lag sample
	primaryLSN atomic.Uint64                 // last pg_current_wal_lsn() seen on the primary

	rr       atomic.Uint64
	policyMu sync.Mutex // smooth WRR state

	tun atomic.Pointer[Tuning] // what Reconfigure changes; never nil
}

// PickRequest describes a read that wants a standby.
type PickRequest struct {
	// MinLSN: the standby's last known replay LSN must be >= MinLSN
	// (read-your-writes / causal token). 0 means no constraint.
	MinLSN LSN
	// MaxStaleness bounds the standby's replication lag in time.
	// 0 means Config.MaxStaleness; a negative value means "primary only"
	// (Pick returns the primary at once, not counted as a fallback).
	MaxStaleness time.Duration
	// HashKey selects the standby under the Hash policy (the front ends
	// pass router.Decision.ReadKey, through Decision.Pick: the statement
	// text and its values).
	HashKey uint64
	// NoFallback makes Pick fail with ErrNoHealthyReplica instead of
	// returning the primary when no standby qualifies in time.
	NoFallback bool
}

// NewSet validates cfg, builds the nodes, runs one round of probes
// (bounded by ctx and ProbeTimeout; unreachable nodes are only marked
// unhealthy) and starts the probe goroutines, which run until Close.
// ctx bounds only this constructor; the probes use their own lifetime
// context that keeps ctx's values. Returns the Validate error, or ctx's
// error if ctx ended during the initial probes.
func NewSet(ctx context.Context, cfg Config) (*Set, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Nodes = append([]NodeConfig(nil), cfg.Nodes...)
	s := newSet(ctx, cfg)
	for _, nc := range cfg.Nodes {
		n, err := newNode(s, nc)
		if err != nil {
			s.cancelLife()
			return nil, err
		}
		s.nodes = append(s.nodes, n)
		if nc.Role == RolePrimary {
			s.primary = n
		} else {
			s.standbys = append(s.standbys, n)
		}
	}
	// Initial round: primary first so standby lag is measured against it.
	ictx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.primary.healthProbe(ictx)
	var pconn probeConn
	s.primary.lagProbe(ictx, &pconn)
	pconn.close(s.primary)
	var wg sync.WaitGroup
	for _, n := range s.standbys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.healthProbe(ictx)
			var c probeConn
			n.lagProbe(ictx, &c)
			c.close(n)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		s.closed.Store(true)
		close(s.done)
		s.cancelLife()
		return nil, fmt.Errorf("replica: initial probes: %w", err)
	}
	for _, n := range s.nodes {
		s.wg.Add(2)
		go n.healthLoop()
		go n.lagLoop()
	}
	return s, nil
}

// newSet returns a Set of cfg (valid) without nodes, whose lifetime
// context keeps ctx's values.
func newSet(ctx context.Context, cfg Config) *Set {
	s := &Set{cfg: cfg, log: cfg.Logger, epoch: time.Now(), done: make(chan struct{})}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.lagMax = int64(cfg.lagMaxAge())
	tun := cfg.Tuning()
	s.tun.Store(&tun)
	ch := make(chan struct{})
	s.bcast.Store(&ch)
	s.life, s.cancelLife = context.WithCancel(context.WithoutCancel(ctx))
	return s
}

// Primary returns the configured primary. It never returns nil.
func (s *Set) Primary() *Node { return s.primary }

// Standbys returns the configured standbys (do not modify the slice).
func (s *Set) Standbys() []*Node { return s.standbys }

// Nodes returns every node, in configuration order (do not modify the slice).
func (s *Set) Nodes() []*Node { return s.nodes }

// Node returns the node with the given name, or nil.
func (s *Set) Node(name string) *Node {
	for _, n := range s.nodes {
		if n.cfg.Name == name {
			return n
		}
	}
	return nil
}

// Stats returns a snapshot of every node, in configuration order.
func (s *Set) Stats() []NodeStats {
	out := make([]NodeStats, len(s.nodes))
	for i, n := range s.nodes {
		out[i] = n.stats()
	}
	return out
}

// Close stops the probes and waits for them (bounded by ctx), closes idle
// connections and waits for their cleanup. Leases still held stay usable;
// their connections are closed when released. Later calls, and calls of
// Pick/Acquire after Close, return ErrClosed. If ctx ends first, Close
// returns its error after having signalled everything to stop.
func (s *Set) Close(ctx context.Context) error {
	if !s.closed.CompareAndSwap(false, true) {
		return newError(ErrClosed, "", codeAdminShutdown, "", nil)
	}
	close(s.done)
	s.cancelLife()
	waited := make(chan struct{})
	go func() { s.wg.Wait(); close(waited) }()
	var err error
	select {
	case <-waited:
	case <-ctx.Done():
		err = fmt.Errorf("replica: close: waiting for probes: %w", ctx.Err())
	}
	for _, n := range s.nodes {
		n.mu.Lock()
		idle := n.idle
		n.idle = nil
		n.mu.Unlock()
		for _, ic := range idle {
			n.destroy(ic.conn)
		}
	}
	for _, n := range s.nodes {
		n.mu.Lock()
		dying := n.dying
		n.dying = nil
		n.mu.Unlock()
		for _, c := range dying {
			select {
			case <-c.CleanupDone():
			case <-ctx.Done():
				err = errors.Join(err, fmt.Errorf("replica: close: connection cleanup: %w", ctx.Err()))
			}
		}
	}
	return err
}

// Reconfigure applies t while the Set is in use (a configuration reload).
// Picks and acquires that start afterwards see all of it. Pool bounds
// change at once: a raised bound hands slots to waiting Acquire calls; under
// a lowered one, leases in use stay valid, no new lease is granted until the
// count is under the bound, and idle connections over it are closed. The
// lifetimes apply to the connections already pooled too. It returns an error
// naming every invalid field, and changes nothing then.
func (s *Set) Reconfigure(t Tuning) error {
	names := make([]string, len(s.nodes))
	for i, n := range s.nodes {
		names[i] = n.cfg.Name
	}
	if err := errors.Join(t.validate(names)...); err != nil {
		return err
	}
	t.NodePoolSizes = maps.Clone(t.NodePoolSizes)
	s.tun.Store(&t)
	for _, n := range s.nodes {
		n.br.setConfig(t.Breaker)
		n.slots.setLimit(t.poolSize(n.cfg.Name))
		n.reap()
	}
	return nil
}

// Tuning returns the Tuning in effect.
func (s *Set) Tuning() Tuning {
	t := *s.tun.Load()
	t.NodePoolSizes = maps.Clone(t.NodePoolSizes)
	return t
}

func (s *Set) now() int64 { return monoNow(s.epoch) }

// notifyLag wakes Pick calls waiting for a standby to catch up.
func (s *Set) notifyLag() {
	ch := make(chan struct{})
	old := s.bcast.Swap(&ch)
	close(*old)
}

func (s *Set) breakerChanged(n *Node, tr transition) {
	if !tr.changed() {
		return
	}
	lvl := slog.LevelInfo
	if tr.to == BreakerOpen {
		lvl = slog.LevelWarn
	}
	s.log.Log(s.life, lvl, "replica: breaker state change", "node", n.cfg.Name, "from", tr.from.String(), "to", tr.to.String())
	if f := s.cfg.Hooks.OnBreakerChange; f != nil {
		f(n.cfg.Name, tr.from, tr.to)
	}
}

// eligibility of a standby for a read.
type eligibility uint8

const (
	eligible   eligibility = iota
	behind                 // only lag/LSN disqualifies it: worth waiting for
	ineligible             // down, breaker open, role mismatch, closed
)

// freshness classifies standby n for a read with the given bounds at now.
func (s *Set) freshness(n *Node, now int64, minLSN LSN, maxStale time.Duration) eligibility {
	if n.Failing() || Role(n.observed.Load()) != RoleStandby {
		return ineligible
	}
	ok, tr := n.br.allowsPick(now)
	if tr.changed() {
		s.breakerChanged(n, tr)
	}
	if !ok {
		return ineligible
	}
	ls := n.lag.Load()
	if ls == nil || !ls.inRecovery || now-ls.at > s.lagMax {
		// No recent measurement: the lag probe is failing or stuck.
		return behind
	}
	if ls.lagTime > maxStale || ls.lsn < minLSN {
		return behind
	}
	return eligible
}

// Pick chooses the node for a read: a standby that is healthy, breaker
// closed (or half-open with a free trial slot), observed in recovery, whose
// lag measurement is recent (LagMaxAge), whose lag time is within the
// staleness bound and whose last known replay LSN is >= req.MinLSN; the
// balancing policy chooses among those. When the chosen standby has every
// connection slot taken (its acquisition would wait) and another qualifying
// standby has a free one, Pick returns the one with the most free slots
// instead, except under the Hash policy, whose point is affinity. If none
// qualifies but some standby is only behind, Pick waits up to
// Config.CatchUpWait (asking those standbys' lag probes to measure again at
// once and waking on each new measurement). Then it falls back to the
// primary (counted in the primary's Stats().Fallbacks), or fails with
// ErrNoHealthyReplica if req.NoFallback.
// It never returns a standby that does not qualify.
//
// Errors: ErrClosed after Close; ctx's error if ctx ends while waiting.
// Pick does not reserve anything: the caller acquires a lease next.
func (s *Set) Pick(ctx context.Context, req PickRequest) (*Node, error) {
	if s.closed.Load() {
		return nil, newError(ErrClosed, "", codeAdminShutdown, "", nil)
	}
	tun := s.tun.Load()
	maxStale := req.MaxStaleness
	if maxStale == 0 {
		maxStale = tun.MaxStaleness
	}
	if maxStale < 0 {
		s.primary.picks.Add(1)
		return s.primary, nil
	}
	var buf [16]*Node
	var timer *time.Timer
	for {
		chp := s.bcast.Load()
		now := s.now()
		cands := buf[:0]
		var behindMask uint64 // standbys (first 64) worth kicking
		waitable := false
		for i, n := range s.standbys {
			switch s.freshness(n, now, req.MinLSN, maxStale) {
			case eligible:
				cands = append(cands, n)
			case behind:
				waitable = true
				behindMask |= 1 << (i & 63)
			}
		}
		if len(cands) > 0 {
			n := s.choose(tun.Policy, cands, req.HashKey)
			if tun.Policy != Hash && n.freeSlots() == 0 {
				n = spill(cands, n)
			}
			n.picks.Add(1)
			if timer != nil {
				timer.Stop()
			}
			return n, nil
		}
		if !waitable || tun.CatchUpWait <= 0 {
			break
		}
		if timer == nil {
			timer = time.NewTimer(tun.CatchUpWait)
		}
		for i, n := range s.standbys {
			if behindMask&(1<<(i&63)) != 0 {
				select {
				case n.kick <- struct{}{}:
				default:
				}
			}
		}
		expired := false
		select {
		case <-*chp:
		case <-timer.C:
			expired = true
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("replica: pick: %w", ctx.Err())
		case <-s.done:
			timer.Stop()
			return nil, newError(ErrClosed, "", codeAdminShutdown, "", nil)
		}
		if expired {
			break
		}
	}
	if timer != nil {
		timer.Stop()
	}
	if req.NoFallback {
		return nil, newError(ErrNoHealthyReplica, "", codeConnectionFailure, "no standby is fresh enough", nil)
	}
	s.primary.fallbacks.Add(1)
	s.primary.picks.Add(1)
	return s.primary, nil
}

// AcquireRead picks a node for a read (see Pick) and leases a connection
// from it. When the chosen standby turns out to be unavailable before
// anything was sent (breaker opened meanwhile, or connecting failed, which
// suspends the standby), it picks again, at most once per standby, ending
// on the primary. Other errors (ErrPoolExhausted included: the bulkhead is
// not bypassed) are returned as they are. Errors: those of Pick and
// Node.Acquire.
func (s *Set) AcquireRead(ctx context.Context, req PickRequest) (*Lease, error) {
	for attempt := 0; ; attempt++ {
		n, err := s.Pick(ctx, req)
		if err != nil {
			return nil, err
		}
		l, err := n.Acquire(ctx)
		if err == nil || n == s.primary || attempt >= len(s.standbys) || !errors.Is(err, ErrNodeUnavailable) {
			return l, err
		}
	}
}
