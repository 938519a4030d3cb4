package cache

import (
	"sync"
	"sync/atomic"
	"time"
)

// shardState is what the cache knows about one shard's change stream.
//
// state packs a generation counter and the "stream is up" bit
// (gen<<1 | up). Every transition bumps the generation, so an entry that
// recorded the state word at fill start is served only while the stream that
// was up then is still up: a stream that went down and came back (and so
// may have missed writes) drops everything filled before.
//
// Invalidation of a commit at LSN L runs, in this order:
// pending = L; bump the epochs of the tables; applied = L.
// Readers load applied before epochs (Get) and epochs before pending
// (fill start), so a Get that sees applied >= L also sees the bumps, and a
// fill whose epoch snapshot includes a bump knows a position >= L.
type shardState struct {
	name    string
	state   atomic.Uint64
	pending atomic.Uint64 // LSN of the commit being (or last) applied, or higher (InvalidateAfter)
	applied atomic.Uint64 // LSN up to which every commit is applied

	mu     sync.Mutex
	epochs map[string]*atomic.Uint64 // tableKey -> epoch; entries never removed

	nudge atomic.Pointer[stream] // stream to nudge for a keepalive, if watched

	// Stream facts for Stats; guarded by statsMu.
	statsMu sync.Mutex
	since   time.Time
	lastErr string
	breaks  uint64
	lag     lagStats
	commits uint64
	slot    string
	upWait  chan struct{} // closed when the stream comes up
}

// upWaiter returns a channel closed when the stream next comes up.
func (s *shardState) upWaiter() <-chan struct{} {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	if s.upWait == nil {
		s.upWait = make(chan struct{})
	}
	return s.upWait
}

func newShardState(name string) *shardState {
	return &shardState{name: name, epochs: make(map[string]*atomic.Uint64)}
}

func (s *shardState) up() bool { return s.state.Load()&1 == 1 }

// epoch returns the counter of a table key, creating it.
func (s *shardState) epoch(key string) *atomic.Uint64 {
	s.mu.Lock()
	e := s.epochs[key]
	if e == nil {
		e = new(atomic.Uint64)
		s.epochs[key] = e
	}
	s.mu.Unlock()
	return e
}

// bump advances the epochs of tables (already table keys) that have a
// counter. A table without a counter was never read by a fill snapshot, so
// any later snapshot already sees the write being invalidated.
func (s *shardState) bump(keys []string) {
	s.mu.Lock()
	for _, k := range keys {
		if e := s.epochs[k]; e != nil {
			e.Add(1)
		}
	}
	s.mu.Unlock()
}

// transition sets the up bit and bumps the generation. It returns false if
// the bit already had that value (no change).
func (s *shardState) transition(up bool) bool {
	for {
		old := s.state.Load()
		if (old&1 == 1) == up {
			return false
		}
		next := (old>>1 + 1) << 1
		if up {
			next |= 1
		}
		if s.state.CompareAndSwap(old, next) {
			return true
		}
	}
}

// flush drops every entry of the shard while keeping the stream state (used
// when the stream reports a change it cannot attribute to a table).
func (s *shardState) flush() {
	for {
		old := s.state.Load()
		if s.state.CompareAndSwap(old, (old>>1+1)<<1|old&1) {
			return
		}
	}
}

// advance raises applied (and pending) to lsn if lsn is larger.
func (s *shardState) advance(lsn uint64) {
	storeMax(&s.pending, lsn)
	storeMax(&s.applied, lsn)
}

func storeMax(a *atomic.Uint64, v uint64) {
	for {
		old := a.Load()
		if v <= old || a.CompareAndSwap(old, v) {
			return
		}
	}
}

// lagStats tracks invalidation lag: last, max and an EWMA (alpha 1/8).
type lagStats struct {
	Last, Max, EWMA time.Duration
	n               uint64
}

func (l *lagStats) observe(d time.Duration) {
	if d < 0 {
		d = 0
	}
	l.Last = d
	l.Max = max(l.Max, d)
	if l.n == 0 {
		l.EWMA = d
	} else {
		l.EWMA += (d - l.EWMA) / 8
	}
	l.n++
}
