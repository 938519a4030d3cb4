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
	cfg       BreakerConfig
	state     atomic.Uint32 // BreakerState
	openUntil atomic.Int64
	trials    atomic.Int32 // trial leases in flight while half-open

	mu          sync.Mutex
	consecutive int
	halfOpenOK  int
	bucketWidth int64
	buckets     [breakerBuckets]struct {
		start    int64
		ok, fail int
	}
}

type transition struct {
	from, to BreakerState
}

func (t transition) changed() bool { return t.from != t.to }

func newBreaker(cfg BreakerConfig) *breaker {
	b := &breaker{cfg: cfg}
	if cfg.Window > 0 {
		b.bucketWidth = max(int64(cfg.Window)/breakerBuckets, 1)
	}
	return b
}

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
		return int(b.trials.Load()) < b.cfg.HalfOpenRequests, tr
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
		if b.halfOpenOK >= b.cfg.HalfOpenRequests {
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
	if b.consecutive >= b.cfg.ConsecutiveFailures || b.rateExceededLocked(now) {
		b.openLocked(now)
		return transition{from, BreakerOpen}
	}
	return transition{from, BreakerClosed}
}

func (b *breaker) bucketLocked(now int64) *struct {
	start    int64
	ok, fail int
} {
	if b.bucketWidth == 0 || b.cfg.FailureRate <= 0 {
		return nil
	}
	start := now - now%b.bucketWidth
	i := (now / b.bucketWidth) % breakerBuckets
	bk := &b.buckets[i]
	if bk.start != start {
		bk.start, bk.ok, bk.fail = start, 0, 0
	}
	return bk
}

func (b *breaker) rateExceededLocked(now int64) bool {
	if b.bucketWidth == 0 || b.cfg.FailureRate <= 0 {
		return false
	}
	oldest := now - int64(b.cfg.Window)
	var ok, fail int
	for i := range b.buckets {
		bk := &b.buckets[i]
		if bk.start > oldest {
			ok += bk.ok
			fail += bk.fail
		}
	}
	total := ok + fail
	return total >= b.cfg.MinRequests && float64(fail) >= b.cfg.FailureRate*float64(total)
}

func (b *breaker) openLocked(now int64) {
	b.resetLocked()
	b.openUntil.Store(now + int64(b.cfg.OpenFor))
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
