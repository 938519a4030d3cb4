package replica

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

var (
	errSlotTimeout = errors.New("replica: no pool slot within the acquire timeout")
	errSlotClosed  = errors.New("replica: set closed")
)

// slots is a node's pool bound: a counting semaphore whose limit can change
// while leases are held (Set.Reconfigure). Waiters are served in arrival
// order. used and limit change only under mu; they are atomics so that
// free, a hint for the balancing policies, reads them without the lock.
type slots struct {
	mu      sync.Mutex
	used    atomic.Int64
	limit   atomic.Int64
	waiters []*slotWaiter // FIFO
}

type slotWaiter struct {
	ch      chan struct{} // closed when granted
	granted bool          // under slots.mu
}

func newSlots(limit int) *slots {
	s := &slots{}
	s.limit.Store(int64(limit))
	return s
}

// tryAcquire takes a slot if one is free and nobody is waiting.
func (s *slots) tryAcquire() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.takeLocked()
}

// takeLocked is tryAcquire with s.mu held.
func (s *slots) takeLocked() bool {
	if len(s.waiters) > 0 || s.used.Load() >= s.limit.Load() {
		return false
	}
	s.used.Add(1)
	return true
}

// acquire takes a slot, waiting at most timeout. It returns
// errSlotTimeout, ctx.Err() or errSlotClosed (done closed) without a slot.
func (s *slots) acquire(ctx context.Context, timeout time.Duration, done <-chan struct{}) error {
	s.mu.Lock()
	if s.takeLocked() {
		s.mu.Unlock()
		return nil
	}
	w := &slotWaiter{ch: make(chan struct{})}
	s.waiters = append(s.waiters, w)
	s.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	var err error
	select {
	case <-w.ch:
		return nil
	case <-t.C:
		err = errSlotTimeout
	case <-ctx.Done():
		err = ctx.Err()
	case <-done:
		err = errSlotClosed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.granted {
		// Granted as the wait ended: the slot is ours after all.
		return nil
	}
	for i, x := range s.waiters {
		if x == w {
			s.waiters = append(s.waiters[:i], s.waiters[i+1:]...)
			break
		}
	}
	return err
}

// release gives a slot back, handing it to the first waiter if the limit
// allows.
func (s *slots) release() {
	s.mu.Lock()
	s.used.Add(-1)
	s.grantLocked()
	s.mu.Unlock()
}

// setLimit changes the bound. Leases beyond a lowered bound stay valid;
// no new one is granted until the count is under it.
func (s *slots) setLimit(n int) {
	s.mu.Lock()
	s.limit.Store(int64(n))
	s.grantLocked()
	s.mu.Unlock()
}

func (s *slots) grantLocked() {
	for len(s.waiters) > 0 && s.used.Load() < s.limit.Load() {
		w := s.waiters[0]
		s.waiters[0] = nil
		s.waiters = s.waiters[1:]
		s.used.Add(1)
		w.granted = true
		close(w.ch)
	}
}

// free is how many slots are free now (a hint: it may change at once).
func (s *slots) free() int { return max(int(s.limit.Load()-s.used.Load()), 0) }

// inUse is the number of slots held.
func (s *slots) inUse() int { return int(s.used.Load()) }

// bound is the current limit.
func (s *slots) bound() int { return int(s.limit.Load()) }
