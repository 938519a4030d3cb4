package replica

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dbproxy/dbproxy/internal/pgdial"
	"github.com/dbproxy/dbproxy/internal/sockio"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
)

// ewmaAlpha is the weight of a new latency sample.
const ewmaAlpha = 0.3

// idleCheckAfter: an idle pooled connection older than this is checked
// with a ping (one round trip) before it is handed out.
const idleCheckAfter = time.Second

// Node is one PostgreSQL server of a Set: its bounded pool, probes' view of
// it, and its breaker. Nodes are created by NewSet and live until the Set is
// closed. All methods are safe for concurrent use.
type Node struct {
	set      *Set
	cfg      NodeConfig
	weight   int
	hashSeed uint64
	connCfg  *pgconn.Config // pooled connections of the default identity
	probeCfg *pgconn.Config // probe connections
	defKey   string         // identityKey of connCfg's user and database

	// Pool: slots counts the leases in use (and being connected) against
	// the pool bound.
	slots   *slots
	mu      sync.Mutex
	idle    []idleConn                // oldest first
	idCfgs  map[string]*pgconn.Config // connect configs of other identities, by identityKey
	dying   []*pgconn.PgConn          // destroyed conns whose async cleanup may still run
	inUse   atomic.Int64
	waiting atomic.Int64

	// Probe state.
	healthy   atomic.Bool
	observed  atomic.Uint32 // Role
	mismatch  atomic.Bool
	lag       atomic.Pointer[lagSample]
	lagFailed atomic.Bool // the last lag probe failed: not fresh until one succeeds
	// probeFailed is closed (and replaced) when a health or lag probe
	// fails: connections being opened to the node give up then.
	probeFailed atomic.Pointer[chan struct{}]
	lastErr     atomic.Pointer[probeError]
	kick        chan struct{}
	br          *breaker
	ewma        atomic.Int64 // nanoseconds
	wrrCurrent  int          // smooth WRR state, guarded by Set.policyMu
	picks       atomic.Uint64
	fallbacks   atomic.Uint64
	failures    atomic.Uint64
	acqTimeouts atomic.Uint64
	opened      atomic.Uint64 // pooled connections opened
	expired     [expiryReasons]atomic.Uint64
}

type idleConn struct {
	conn  *pgconn.PgConn
	key   string // identityKey
	since int64  // idle since (Set clock)
	born  int64  // opened at (Set clock)
}

// Identity is who a pooled connection logs in as, and to which database.
// Connections of different identities share the node's pool bound: an idle
// connection of one identity is closed to make room for another's.
type Identity struct {
	User, Password, Database string
}

func identityKey(user, database string) string { return user + "\x00" + database }

// lagSample is one successful lag/role probe result (immutable once stored).
type lagSample struct {
	at         int64 // monotonic ns since the Set's epoch
	inRecovery bool
	lsn        LSN // standby: pg_last_wal_replay_lsn(); primary: pg_current_wal_lsn()
	receive    LSN // standby: pg_last_wal_receive_lsn() (0 if NULL)
	lagBytes   uint64
	lagTime    time.Duration // math.MaxInt64 when unknown
}

func newNode(s *Set, nc NodeConfig) (*Node, error) {
	if nc.Weight == 0 {
		nc.Weight = 1
	}
	if nc.PoolSize == 0 {
		nc.PoolSize = s.cfg.PoolSize
	}
	connCfg, err := pgconn.ParseConfig(nc.ConnString)
	if err != nil {
		return nil, fmt.Errorf("replica: node %s: %w", nc.Name, err)
	}
	// A cancelled query context sends a real CancelRequest first, so the
	// pooled connection survives cancellation.
	connCfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: s.cfg.ProbeTimeout}
	}
	dial := connCfg.DialFunc
	connCfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return sockio.Wrap(c), nil
	}
	// Probes keep pgconn's default: a timed-out probe closes its connection.
	probeCfg, err := pgconn.ParseConfig(nc.ConnString)
	if err != nil {
		return nil, fmt.Errorf("replica: node %s: %w", nc.Name, err)
	}
	probeCfg.RuntimeParams["application_name"] = "dbproxy-replica-probe"
	h := fnv.New64a()
	h.Write([]byte(nc.Name))
	n := &Node{
		set:      s,
		cfg:      nc,
		weight:   nc.Weight,
		hashSeed: h.Sum64(),
		connCfg:  connCfg,
		probeCfg: probeCfg,
		defKey:   identityKey(connCfg.User, connCfg.Database),
		idCfgs:   map[string]*pgconn.Config{},
		slots:    newSlots(nc.PoolSize),
		kick:     make(chan struct{}, 1),
		br:       newBreaker(s.cfg.Breaker),
	}
	n.probeFailed.Store(new(make(chan struct{})))
	return n, nil
}

// Name returns the configured node name.
func (n *Node) Name() string { return n.cfg.Name }

// Role returns the configured role.
func (n *Node) Role() Role { return n.cfg.Role }

// ObservedRole returns the role seen by the last successful probe
// (RoleUnknown before the first one).
func (n *Node) ObservedRole() Role { return Role(n.observed.Load()) }

// Weight returns the balancing weight (>= 1).
func (n *Node) Weight() int { return n.weight }

// ReplayLSN returns the last known WAL position of the node: for a standby
// the last pg_last_wal_replay_lsn() seen by its lag probe, for the primary
// the last pg_current_wal_lsn(). 0 if never measured. It does not block.
func (n *Node) ReplayLSN() LSN {
	if s := n.lag.Load(); s != nil {
		return s.lsn
	}
	return 0
}

// Failing reports whether the node's last health probe or its last lag
// probe failed: it did not accept a connection and answer a trivial
// query within ProbeTimeout. Pick does not choose a failing standby.
func (n *Node) Failing() bool { return !n.healthy.Load() || n.lagFailed.Load() }

// signalProbeFailure wakes the connects to n in progress (connect).
func (n *Node) signalProbeFailure() {
	close(*n.probeFailed.Swap(new(make(chan struct{}))))
}

// connect opens a pooled connection, bounded by ctx and ConnectTimeout,
// and given up as soon as a probe of the node fails meanwhile: a node that
// hangs (a frozen host, a partition without resets) does not hold every
// caller for the whole ConnectTimeout.
func (n *Node) connect(ctx context.Context, cfg *pgconn.Config) (*pgconn.PgConn, error) {
	failed := *n.probeFailed.Load()
	pctx, giveUp := context.WithCancelCause(ctx)
	defer giveUp(nil)
	cctx, cancel := context.WithTimeout(pctx, n.set.cfg.ConnectTimeout)
	defer cancel()
	go func() {
		select {
		case <-failed:
			giveUp(errProbeFailed)
		case <-cctx.Done():
		}
	}()
	conn, err := pgdial.Connect(cctx, cfg)
	if err != nil && context.Cause(cctx) == errProbeFailed {
		// Not wrapped: the caller did not cancel.
		err = fmt.Errorf("gave up: a probe of the node failed meanwhile (%v)", err)
	}
	return conn, err
}

var errProbeFailed = errors.New("a probe of the node failed")

// Healthy reports the result of the last health probe.
func (n *Node) Healthy() bool { return n.healthy.Load() }

// Breaker returns the current breaker state.
func (n *Node) Breaker() BreakerState {
	st, tr := n.br.check(n.set.now())
	n.set.breakerChanged(n, tr)
	return st
}

// Observe feeds one latency sample (for example a query's duration measured
// by the caller) into the node's EWMA used by the LeastLatency policy.
func (n *Node) Observe(latency time.Duration) {
	if latency < 0 {
		return
	}
	x := int64(latency)
	for {
		old := n.ewma.Load()
		nv := x
		if old != 0 {
			nv = old + int64(ewmaAlpha*float64(x-old))
			if nv <= 0 {
				nv = 1
			}
		}
		if n.ewma.CompareAndSwap(old, nv) {
			return
		}
	}
}

// Latency returns the EWMA of observed latency (0 before any sample).
func (n *Node) Latency() time.Duration { return time.Duration(n.ewma.Load()) }

// InUse returns the number of leases currently held on this node.
func (n *Node) InUse() int { return int(n.inUse.Load()) }

// Acquire leases a backend connection from the node's bounded pool,
// connecting a new one when no idle connection is available.
//
// It blocks while the pool is exhausted, for at most Config.AcquireTimeout,
// and returns an *Error wrapping:
//   - ErrPoolExhausted (53300) when no slot freed up within AcquireTimeout;
//   - ErrNodeUnavailable (08006) when the node is a standby whose breaker is
//     open, or connecting failed (the cause is wrapped too);
//   - ErrRoleMismatch (25006) when the node is the configured primary but was
//     observed in recovery: writes are refused instead of being sent;
//   - ErrClosed (57P01) after Set.Close.
//
// A cancelled ctx returns ctx.Err() (wrapped). The lease must be given back
// with Release or Discard; Lease.Conn is valid until then.
//
// Acquire does not check health, lag or freshness: choose read nodes with
// Set.Pick. The primary's breaker never blocks Acquire (the primary is the
// source of truth; a dead one fails at connect).
//
// The connection logs in as the node's ConnString says; AcquireAs chooses
// another identity.
func (n *Node) Acquire(ctx context.Context) (*Lease, error) {
	return n.AcquireAs(ctx, nil)
}

// AcquireAs is Acquire with a connection that logs in as id (nil: the
// ConnString's user, password and database). Idle connections are reused
// only for the same user and database; when the pool is full, an idle
// connection of another identity is closed to make room. A connection
// that fails to log in returns ErrNodeUnavailable wrapping the server's
// error (a wrong password is *pgconn.PgError 28P01, which does not count
// against the node's breaker; see IsConnFailure).
func (n *Node) AcquireAs(ctx context.Context, id *Identity) (*Lease, error) {
	s := n.set
	if s.closed.Load() {
		return nil, newError(ErrClosed, n.cfg.Name, codeAdminShutdown, "", nil)
	}
	if n.cfg.Role == RolePrimary && n.ObservedRole() == RoleStandby {
		return nil, newError(ErrRoleMismatch, n.cfg.Name, codeReadOnly,
			"configured as primary but in recovery (read-only); refusing to send", nil)
	}
	now := s.now()
	trial := false
	if n.cfg.Role == RoleStandby {
		st, tr := n.br.check(now)
		s.breakerChanged(n, tr)
		switch st {
		case BreakerOpen:
			return nil, newError(ErrNodeUnavailable, n.cfg.Name, codeConnectionFailure, "circuit breaker open", nil)
		case BreakerHalfOpen:
			trial = true
			n.br.trials.Add(1)
		}
	}
	ok := false
	defer func() {
		if !ok && trial {
			n.br.trials.Add(-1)
		}
	}()
	if err := n.acquireSlot(ctx); err != nil {
		return nil, err
	}
	l, err := n.leaseWithSlot(ctx, trial, id)
	if err != nil {
		return nil, err
	}
	ok = true
	return l, nil
}

// identity returns the pool key and connect config of id (nil: the
// default identity).
func (n *Node) identity(id *Identity) (string, *pgconn.Config) {
	if id == nil || id.User == n.connCfg.User && id.Database == n.connCfg.Database && id.Password == n.connCfg.Password {
		return n.defKey, n.connCfg
	}
	key := identityKey(id.User, id.Database)
	n.mu.Lock()
	defer n.mu.Unlock()
	cfg := n.idCfgs[key]
	if cfg == nil || cfg.Password != id.Password {
		cfg = n.connCfg.Copy()
		cfg.User, cfg.Password, cfg.Database = id.User, id.Password, id.Database
		n.idCfgs[key] = cfg
	}
	return key, cfg
}

func (n *Node) acquireSlot(ctx context.Context) error {
	if n.slots.tryAcquire() {
		return nil
	}
	s := n.set
	n.waiting.Add(1)
	defer n.waiting.Add(-1)
	timeout := s.tun.Load().AcquireTimeout
	switch err := n.slots.acquire(ctx, timeout, s.done); err {
	case nil:
		return nil
	case errSlotTimeout:
		n.acqTimeouts.Add(1)
		return newError(ErrPoolExhausted, n.cfg.Name, codeTooManyConns,
			fmt.Sprintf("all %d connections in use for %v", n.slots.bound(), timeout), nil)
	case errSlotClosed:
		return newError(ErrClosed, n.cfg.Name, codeAdminShutdown, "", nil)
	default:
		return fmt.Errorf("replica: node %s: acquire: %w", n.cfg.Name, err)
	}
}

// leaseWithSlot turns a held slot into a lease; the slot is given back on
// any error or panic.
func (n *Node) leaseWithSlot(ctx context.Context, trial bool, id *Identity) (l *Lease, err error) {
	s := n.set
	held := true
	defer func() {
		if held {
			n.slots.release()
		}
	}()
	key, cfg := n.identity(id)
	conn, born := n.popIdle(ctx, key)
	if conn == nil {
		born = s.now()
		n.makeRoom()
		conn, err = n.connect(ctx, cfg)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("replica: node %s: connect: %w", n.cfg.Name, ctx.Err())
			}
			n.recordOutcome(err)
			return nil, newError(ErrNodeUnavailable, n.cfg.Name, codeConnectionFailure, "connect", err)
		}
		n.opened.Add(1)
		if s.closed.Load() {
			n.destroy(conn)
			return nil, newError(ErrClosed, n.cfg.Name, codeAdminShutdown, "", nil)
		}
	}
	n.inUse.Add(1)
	held = false
	return &Lease{node: n, conn: conn, key: key, start: time.Now(), trial: trial, born: born}, nil
}

// makeRoom closes the oldest idle connections (of other identities: the
// caller found none of its own) that a new connection would push past
// the pool bound. The caller holds a slot: the slots in use count the
// leases in use and those being made, its own included.
func (n *Node) makeRoom() {
	n.mu.Lock()
	excess := n.slots.inUse() + len(n.idle) - n.slots.bound()
	if excess <= 0 {
		n.mu.Unlock()
		return
	}
	excess = min(excess, len(n.idle))
	victims := make([]*pgconn.PgConn, excess)
	for i := range victims {
		victims[i] = n.idle[i].conn
	}
	n.idle = slices.Delete(n.idle, 0, excess)
	n.mu.Unlock()
	for _, c := range victims {
		n.destroy(c)
	}
}

// popIdle takes the most recently idle connection of identity key, and
// when it was opened; nil if there is none.
func (n *Node) popIdle(ctx context.Context, key string) (*pgconn.PgConn, int64) {
	now := n.set.now()
	tun := n.set.tun.Load()
	for {
		n.mu.Lock()
		k := len(n.idle) - 1
		for k >= 0 && n.idle[k].key != key {
			k--
		}
		if k < 0 {
			n.mu.Unlock()
			return nil, 0
		}
		ic := n.idle[k]
		n.idle = slices.Delete(n.idle, k, k+1)
		n.mu.Unlock()
		if ic.conn.IsClosed() || n.expire(&ic, tun, now) {
			n.destroy(ic.conn)
			continue
		}
		if now-ic.since > int64(idleCheckAfter) {
			// A round trip catches connections the server closed while idle.
			pctx, cancel := context.WithTimeout(ctx, n.set.cfg.ProbeTimeout)
			err := ic.conn.Ping(pctx)
			cancel()
			if err != nil {
				n.destroy(ic.conn)
				if ctx.Err() != nil {
					return nil, 0
				}
				continue
			}
		}
		return ic.conn, ic.born
	}
}

// pushIdle pools c, a connection opened at born whose lease (still counted
// in inUse) ends. c is closed instead when the Set is closed, c is past
// MaxConnLifetime, or the node holds more connections than a lowered bound
// allows. Slots granted to acquirers that have no connection yet are not
// counted: they take idle ones (or make room for a new one, makeRoom).
func (n *Node) pushIdle(c *pgconn.PgConn, key string, born int64) {
	now := n.set.now()
	ic := idleConn{conn: c, key: key, since: now, born: born}
	n.mu.Lock()
	if n.set.closed.Load() || n.expire(&ic, n.set.tun.Load(), now) || n.connsLocked() > n.slots.bound() {
		n.mu.Unlock()
		n.destroy(c)
		return
	}
	n.idle = append(n.idle, ic)
	n.mu.Unlock()
}

// Why a pooled connection expired (PoolStats.Closed*).
const (
	expiredLifetime = iota
	expiredIdle
	expiryReasons
)

// expiry reports whether ic is past MaxConnLifetime (shortened by up to a
// tenth, by a per-connection amount) or has been idle MaxConnIdleTime, and
// which.
func (ic *idleConn) expiry(t *Tuning, now int64) (reason int, expired bool) {
	if lt := int64(t.MaxConnLifetime); lt > 0 && now-ic.born >= lt-lifetimeJitter(ic.born, lt) {
		return expiredLifetime, true
	}
	if it := int64(t.MaxConnIdleTime); it > 0 && now-ic.since >= it {
		return expiredIdle, true
	}
	return 0, false
}

// connsLocked is the number of connections the node holds: idle ones and
// leased ones. Called with n.mu held.
func (n *Node) connsLocked() int { return len(n.idle) + int(n.inUse.Load()) }

// expire reports whether ic expired, counting it if so.
func (n *Node) expire(ic *idleConn, t *Tuning, now int64) bool {
	r, ok := ic.expiry(t, now)
	if ok {
		n.expired[r].Add(1)
	}
	return ok
}

// lifetimeJitter is a connection's share (in [0, lifetime/10)) taken off
// its lifetime, derived from when it was opened: connections opened in one
// burst are replaced over a tenth of the lifetime, not all at once.
func lifetimeJitter(born, lifetime int64) int64 {
	span := lifetime / 10
	if span <= 0 {
		return 0
	}
	h := uint64(born) * 0x9E3779B97F4A7C15 // Fibonacci hashing spreads nearby times
	return int64(h>>1) % span
}

// reap closes the idle connections that expired (MaxConnLifetime,
// MaxConnIdleTime) or that a lowered pool bound no longer leaves room for
// (the longest idle first). The health loop calls it every HealthInterval.
func (n *Node) reap() {
	now := n.set.now()
	tun := n.set.tun.Load()
	var victims []*pgconn.PgConn
	n.mu.Lock()
	keep := n.idle[:0]
	for _, ic := range n.idle {
		if n.expire(&ic, tun, now) {
			victims = append(victims, ic.conn)
		} else {
			keep = append(keep, ic)
		}
	}
	clear(n.idle[len(keep):])
	n.idle = keep
	if over := n.connsLocked() - n.slots.bound(); over > 0 {
		over = min(over, len(n.idle))
		for _, ic := range n.idle[:over] {
			victims = append(victims, ic.conn)
		}
		n.idle = slices.Delete(n.idle, 0, over)
	}
	n.mu.Unlock()
	for _, c := range victims {
		n.destroy(c)
	}
}

// destroy closes c (sending Terminate, bounded by ProbeTimeout) and tracks
// its asynchronous cleanup so Close can wait for it.
func (n *Node) destroy(c *pgconn.PgConn) {
	// Not derived from a cancelled context: that would make the watcher
	// send a CancelRequest instead of just closing.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(n.set.life), n.set.cfg.ProbeTimeout)
	_ = c.Close(ctx)
	cancel()
	select {
	case <-c.CleanupDone():
		return
	default:
	}
	n.mu.Lock()
	live := n.dying[:0]
	for _, d := range n.dying {
		select {
		case <-d.CleanupDone():
		default:
			live = append(live, d)
		}
	}
	n.dying = append(live, c)
	n.mu.Unlock()
}

// recordOutcome feeds the breaker with the result of one use of the node.
func (n *Node) recordOutcome(err error) {
	failure := IsConnFailure(err)
	if err != nil && !failure && !isServerError(err) {
		return // caller cancelled: says nothing about the node
	}
	if failure {
		n.failures.Add(1)
		n.suspect(true)
	}
	tr := n.br.record(n.set.now(), failure)
	n.set.breakerChanged(n, tr)
}

// suspect reacts to a connection-level failure: the node gets no reads until
// its lag probe, asked to run at once, succeeds again, and its idle
// connections (likely broken the same way) are closed.
func (n *Node) suspect(kick bool) {
	if n.cfg.Role == RoleStandby {
		n.lagFailed.Store(true)
		if kick {
			select {
			case n.kick <- struct{}{}:
			default:
			}
		}
	}
	n.mu.Lock()
	idle := n.idle
	n.idle = nil
	n.mu.Unlock()
	for _, ic := range idle {
		n.destroy(ic.conn)
	}
}

// CurrentLSN returns pg_current_wal_lsn() read now on the node over a
// pooled connection (for causal tokens after a commit). It blocks like
// Acquire plus one round trip, and fails on a node in recovery.
func (n *Node) CurrentLSN(ctx context.Context) (LSN, error) {
	l, err := n.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	lsn, err := l.CurrentLSN(ctx)
	l.Release(err)
	return lsn, err
}

func (n *Node) stats() NodeStats {
	s := n.set
	now := s.now()
	st := NodeStats{
		Name:            n.cfg.Name,
		ConfiguredRole:  n.cfg.Role,
		ObservedRole:    n.ObservedRole(),
		RoleMismatch:    n.mismatch.Load(),
		Healthy:         n.healthy.Load(),
		Breaker:         n.Breaker(),
		Latency:         n.Latency(),
		Weight:          n.weight,
		Picks:           n.picks.Load(),
		Fallbacks:       n.fallbacks.Load(),
		Failures:        n.failures.Load(),
		AcquireTimeouts: n.acqTimeouts.Load(),
		LagAge:          -1,
	}
	if e := n.lastErr.Load(); e != nil {
		st.LastError, st.LastErrorAt = e.msg, e.at
	}
	if ls := n.lag.Load(); ls != nil {
		st.LSN = ls.lsn
		st.LagBytes = ls.lagBytes
		st.LagTime = ls.lagTime
		st.LagAge = time.Duration(now - ls.at)
	}
	n.mu.Lock()
	idle := len(n.idle)
	n.mu.Unlock()
	inUse := int(n.inUse.Load())
	st.Pool = PoolStats{Max: n.slots.bound(), InUse: inUse, Idle: idle, Total: inUse + idle, Waiting: int(n.waiting.Load()),
		Opened: n.opened.Load(), ClosedLifetime: n.expired[expiredLifetime].Load(), ClosedIdle: n.expired[expiredIdle].Load()}
	if n.cfg.Role == RoleStandby {
		st.Fresh = s.freshness(n, now, 0, s.tun.Load().MaxStaleness) == eligible
	}
	return st
}

// NodeStats is a point-in-time snapshot of one node (see Set.Stats).
type NodeStats struct {
	Name           string
	ConfiguredRole Role
	ObservedRole   Role      // RoleUnknown before the first successful probe
	RoleMismatch   bool      // observed role differs from the configured one
	Healthy        bool      // last health probe succeeded
	LastError      string    // last probe error ("" if none yet)
	LastErrorAt    time.Time // when it happened (zero if none yet)
	// LSN is the last known replay LSN (standby) or current LSN (primary).
	LSN LSN
	// LagBytes is primary current LSN minus standby replay LSN (0 for the primary).
	LagBytes uint64
	// LagTime is now() - pg_last_xact_replay_timestamp() when the standby is
	// behind, else 0; math.MaxInt64 when unknown.
	LagTime time.Duration
	// LagAge is the age of the last successful lag measurement (-1: never).
	LagAge time.Duration
	// Fresh: a standby eligible for reads at the default staleness bound now.
	Fresh           bool
	Breaker         BreakerState
	Pool            PoolStats
	Latency         time.Duration // EWMA
	Weight          int
	Picks           uint64 // times Pick returned this node
	Fallbacks       uint64 // primary only: picks that fell back to it
	Failures        uint64 // connection-level failures (requests and probes)
	AcquireTimeouts uint64 // ErrPoolExhausted returned
}

// PoolStats describes a node's bounded pool.
type PoolStats struct {
	Max     int // PoolSize
	InUse   int // leases held
	Idle    int // open connections waiting in the pool
	Total   int // InUse + Idle
	Waiting int // Acquire calls blocked on an exhausted pool
	// Opened counts the connections the pool opened; ClosedLifetime and
	// ClosedIdle those it closed for MaxConnLifetime and MaxConnIdleTime.
	Opened, ClosedLifetime, ClosedIdle uint64
}
