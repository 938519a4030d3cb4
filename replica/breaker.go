package replica

import (
	"sync"
	"sync/atomic"
	"time"
)

const breakerBuckets = 10

// breaker is a per-node circuit breaker. The state is readable without the
// lock (Pick's hot path); transitions happen under mu. Times are monotonic
// nanoseconds since the Set's epoch.
type breaker struct {
	params    atomic.Pointer[breakerParams] // replaced by Set.Reconfigure
	state     atomic.Uint32                 // BreakerState
	openUntil atomic.Int64
	trials    atomic.Int32 // trial leases in flight while half-open

	mu          sync.Mutex
	consecutive int
	halfOpenOK  int
	buckets     [breakerBuckets]struct {
		start    int64
		ok, fail int
	}
}

type transition struct {
	from, to BreakerState
}

func (t transition) changed() bool { return t.from != t.to }

// breakerParams is a BreakerConfig with what is derived from it.
type breakerParams struct {
	BreakerConfig
	bucketWidth int64
}

func newBreaker(cfg BreakerConfig) *breaker {
	b := &breaker{}
	b.setConfig(cfg)
	return b
}

// setConfig replaces the configuration. A changed Window restarts the
// rate rule's window; the state and its counters are kept.
func (b *breaker) setConfig(cfg BreakerConfig) {
	p := &breakerParams{BreakerConfig: cfg}
	if cfg.Window > 0 {
		p.bucketWidth = max(int64(cfg.Window)/breakerBuckets, 1)
	}
	b.mu.Lock()
	if old := b.params.Load(); old != nil && old.bucketWidth != p.bucketWidth {
		clear(b.buckets[:])
	}
	b.params.Store(p)
	b.mu.Unlock()
}

func (b *breaker) cfg() *breakerParams { return b.params.Load() }

// State returns the current state without side effects.
func (b *breaker) State() BreakerState { return BreakerState(b.state.Load()) }

// check returns the effective state at now, moving an open breaker whose
// OpenFor elapsed to half-open.
func (b *breaker) check(now int64) (BreakerState, transition) {
	st := BreakerState(b.state.Load())
	if st != BreakerOpen || now < b.openUntil.Load() {
		return st, transition{st, st}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.maybeHalfOpenLocked(now)
}

func (b *breaker) maybeHalfOpenLocked(now int64) (BreakerState, transition) {
	st := BreakerState(b.state.Load())
	if st == BreakerOpen && now >= b.openUntil.Load() {
		b.halfOpenOK = 0
		b.state.Store(uint32(BreakerHalfOpen))
		return BreakerHalfOpen, transition{BreakerOpen, BreakerHalfOpen}
	}
	return st, transition{st, st}
}

// allowsPick reports whether a new request may be routed to the node at now.
func (b *breaker) allowsPick(now int64) (bool, transition) {
	st, tr := b.check(now)
	switch st {
	case BreakerClosed:
		return true, tr
	case BreakerHalfOpen:
		return int(b.trials.Load()) < b.cfg().HalfOpenRequests, tr
	default:
		return false, tr
	}
}

// record feeds one outcome. It returns the (possibly first of two) transition.
func (b *breaker) record(now int64, failure bool) transition {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, tr := b.maybeHalfOpenLocked(now)
	from := tr.from
	switch st {
	case BreakerOpen:
		// Late outcomes of requests started before the breaker opened.
		return tr
	case BreakerHalfOpen:
		if failure {
			b.openLocked(now)
			return transition{from, BreakerOpen}
		}
		b.halfOpenOK++
		if b.halfOpenOK >= b.cfg().HalfOpenRequests {
			b.resetLocked()
			b.state.Store(uint32(BreakerClosed))
			return transition{from, BreakerClosed}
		}
		return transition{from, BreakerHalfOpen}
	}
	// Closed.
	bk := b.bucketLocked(now)
	if !failure {
		b.consecutive = 0
		if bk != nil {
			bk.ok++
		}
		return transition{from, BreakerClosed}
	}
	b.consecutive++
	if bk != nil {
		bk.fail++
	}
	if b.consecutive >= b.cfg().ConsecutiveFailures || b.rateExceededLocked(now) {
		b.openLocked(now)
		return transition{from, BreakerOpen}
	}
	return transition{from, BreakerClosed}
}

func (b *breaker) bucketLocked(now int64) *struct {
	start    int64
	ok, fail int
} {
	p := b.cfg()
	if p.bucketWidth == 0 || p.FailureRate <= 0 {
		return nil
	}
	start := now - now%p.bucketWidth
	i := (now / p.bucketWidth) % breakerBuckets
	bk := &b.buckets[i]
	if bk.start != start {
		bk.start, bk.ok, bk.fail = start, 0, 0
	}
	return bk
}

func (b *breaker) rateExceededLocked(now int64) bool {
	p := b.cfg()
	if p.bucketWidth == 0 || p.FailureRate <= 0 {
		return false
	}
	oldest := now - int64(p.Window)
	var ok, fail int
	for i := range b.buckets {
		bk := &b.buckets[i]
		if bk.start > oldest {
			ok += bk.ok
			fail += bk.fail
		}
	}
	total := ok + fail
	return total >= p.MinRequests && float64(fail) >= p.FailureRate*float64(total)
}

func (b *breaker) openLocked(now int64) {
	b.resetLocked()
	b.openUntil.Store(now + int64(b.cfg().OpenFor))
	b.state.Store(uint32(BreakerOpen))
}

func (b *breaker) resetLocked() {
	b.consecutive = 0
	b.halfOpenOK = 0
	for i := range b.buckets {
		b.buckets[i].start, b.buckets[i].ok, b.buckets[i].fail = 0, 0, 0
	}
}

// monoNow returns monotonic nanoseconds since epoch.
func monoNow(epoch time.Time) int64 { return int64(time.Since(epoch)) }
