package replica

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestSlotsWaitersInOrder(t *testing.T) {
	s := newSlots(1)
	if !s.tryAcquire() || s.tryAcquire() {
		t.Fatal("a bound of 1 must give exactly one slot")
	}
	done := make(chan struct{})
	order := make(chan int, 3)
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.acquire(context.Background(), time.Minute, done); err != nil {
				t.Error(err)
				return
			}
			order <- i
		}()
		// Queue them in a known order.
		waitUntil(t, func() bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.waiters) == i+1 })
	}
	for want := range 3 {
		s.release()
		if got := <-order; got != want {
			t.Fatalf("slot went to waiter %d, want %d (first come, first served)", got, want)
		}
	}
	wg.Wait()
	if s.inUse() != 1 {
		t.Fatalf("in use %d, want 1", s.inUse())
	}
}

func TestSlotsSetLimit(t *testing.T) {
	s := newSlots(2)
	s.tryAcquire()
	s.tryAcquire()
	done := make(chan struct{})
	got := make(chan error, 2)
	for range 2 {
		go func() { got <- s.acquire(context.Background(), time.Minute, done) }()
	}
	waitUntil(t, func() bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.waiters) == 2 })
	// A raised bound serves the waiters at once.
	s.setLimit(4)
	for range 2 {
		if err := <-got; err != nil {
			t.Fatal(err)
		}
	}
	if s.inUse() != 4 || s.free() != 0 {
		t.Fatalf("in use %d free %d, want 4 and 0", s.inUse(), s.free())
	}
	// A lowered bound keeps the slots held and grants none until the
	// count is under it.
	s.setLimit(2)
	if s.free() != 0 || s.tryAcquire() {
		t.Fatal("a slot was granted over the lowered bound")
	}
	s.release()
	s.release()
	if s.tryAcquire() {
		t.Fatal("granted at the bound")
	}
	s.release()
	if !s.tryAcquire() {
		t.Fatal("no slot under the bound")
	}
}

func TestSlotsWaitEnds(t *testing.T) {
	s := newSlots(1)
	s.tryAcquire()
	done := make(chan struct{})
	if err := s.acquire(context.Background(), 20*time.Millisecond, done); err != errSlotTimeout {
		t.Fatalf("timeout: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.acquire(ctx, time.Minute, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
	close(done)
	if err := s.acquire(context.Background(), time.Minute, done); err != errSlotClosed {
		t.Fatalf("closed: %v", err)
	}
	s.mu.Lock()
	n := len(s.waiters)
	s.mu.Unlock()
	if n != 0 || s.inUse() != 1 {
		t.Fatalf("%d waiters left, %d in use; want 0 and 1", n, s.inUse())
	}
}

// TestSlotsConcurrentResize: leases never exceed the largest bound set
// while they were taken, every acquire ends, and the count returns to 0.
func TestSlotsConcurrentResize(t *testing.T) {
	s := newSlots(3)
	done := make(chan struct{})
	var held, peak atomic.Int64
	var maxBound atomic.Int64
	maxBound.Store(3)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 300 {
				if err := s.acquire(context.Background(), time.Millisecond, done); err != nil {
					continue
				}
				h := held.Add(1)
				for p := peak.Load(); h > p && !peak.CompareAndSwap(p, h); p = peak.Load() {
				}
				held.Add(-1)
				s.release()
			}
		}()
	}
	stop := make(chan struct{})
	var rw sync.WaitGroup
	rw.Add(1)
	go func() {
		defer rw.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			n := 1 + rand.IntN(5)
			if int64(n) > maxBound.Load() {
				maxBound.Store(int64(n))
			}
			s.setLimit(n)
			time.Sleep(50 * time.Microsecond)
		}
	}()
	wg.Wait()
	close(stop)
	rw.Wait()
	if peak.Load() > maxBound.Load() {
		t.Fatalf("%d slots held at once, bound never above %d", peak.Load(), maxBound.Load())
	}
	if s.inUse() != 0 {
		t.Fatalf("%d slots still in use", s.inUse())
	}
}

func TestReconfigure(t *testing.T) {
	s := newSyntheticSet(t, RoundRobin, 1, 1)
	// Round robin alternates; Hash keeps a key on one standby.
	if got := pickN(t, s, 10, PickRequest{HashKey: 7}); got["s1"] != 5 || got["s2"] != 5 {
		t.Fatalf("round robin: %v", got)
	}
	tun := s.Tuning()
	tun.Policy = Hash
	tun.PoolSize = 4
	tun.NodePoolSizes = map[string]int{"s2": 7}
	tun.AcquireTimeout = 10 * time.Millisecond
	tun.Breaker.ConsecutiveFailures = 1
	if err := s.Reconfigure(tun); err != nil {
		t.Fatal(err)
	}
	if got := pickN(t, s, 10, PickRequest{HashKey: 7}); len(got) != 1 {
		t.Fatalf("hash after Reconfigure: %v (want one standby)", got)
	}
	for name, want := range map[string]int{"p": 4, "s1": 4, "s2": 7} {
		if got := s.Node(name).slots.bound(); got != want {
			t.Errorf("%s: pool bound %d, want %d", name, got, want)
		}
	}
	if st := s.Stats(); st[2].Pool.Max != 7 {
		t.Errorf("Stats Pool.Max %d, want 7", st[2].Pool.Max)
	}
	// The new acquire timeout: a full pool fails fast with 53300.
	p := s.Primary()
	fill(p)
	start := time.Now()
	_, err := p.Acquire(context.Background())
	if !errors.Is(err, ErrPoolExhausted) || time.Since(start) > 5*time.Second {
		t.Fatalf("full pool: %v after %v", err, time.Since(start))
	}
	if !strings.Contains(err.Error(), "all 4 connections in use for 10ms") {
		t.Errorf("error names the bound and timeout: %v", err)
	}
	// The breaker's new threshold: one failure opens it.
	s1 := s.Node("s1")
	s1.br.record(s.now(), true)
	if s1.Breaker() != BreakerOpen {
		t.Fatalf("breaker %v after one failure with ConsecutiveFailures 1", s1.Breaker())
	}

	// Invalid tunings change nothing and name every problem.
	bad := s.Tuning()
	bad.PoolSize = 0
	bad.NodePoolSizes = map[string]int{"nope": 3}
	bad.MaxConnLifetime = -time.Second
	err = s.Reconfigure(bad)
	for _, want := range []string{`node "p": pool size 0`, `no node "nope"`, "MaxConnLifetime must be >= 0"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("invalid tuning: %v; want it to say %q", err, want)
		}
	}
	if got := s.Tuning(); got.PoolSize != 4 || got.Policy != Hash || got.MaxConnLifetime != tun.MaxConnLifetime {
		t.Errorf("a refused Reconfigure changed the tuning: %+v", got)
	}
}

func TestIdleConnExpiry(t *testing.T) {
	tun := &Tuning{MaxConnLifetime: time.Hour}
	lt := int64(time.Hour)
	spread := map[int64]bool{}
	for born := int64(0); born < 1000; born++ {
		j := lifetimeJitter(born*int64(time.Millisecond), lt)
		if j < 0 || j >= lt/10 {
			t.Fatalf("jitter %v outside [0, lifetime/10)", time.Duration(j))
		}
		spread[j/int64(time.Minute)] = true
		ic := idleConn{born: born * int64(time.Millisecond), since: born * int64(time.Millisecond)}
		if _, ok := ic.expiry(tun, ic.born+lt-lt/10-1); ok {
			t.Fatal("expired before nine tenths of its lifetime")
		}
		if r, ok := ic.expiry(tun, ic.born+lt); !ok || r != expiredLifetime {
			t.Fatal("not expired after its lifetime")
		}
	}
	// Connections opened within one second are spread over the last tenth.
	if len(spread) < 5 {
		t.Errorf("jitter of connections opened together falls in %d distinct minutes of 6", len(spread))
	}
	tun = &Tuning{MaxConnIdleTime: 10 * time.Minute}
	ic := idleConn{born: 0, since: int64(time.Minute)}
	if _, ok := ic.expiry(tun, int64(time.Minute)+int64(10*time.Minute)-1); ok {
		t.Error("idle time limit: expired early")
	}
	if r, ok := ic.expiry(tun, int64(11*time.Minute)); !ok || r != expiredIdle {
		t.Error("idle time limit")
	}
	if _, ok := ic.expiry(&Tuning{}, int64(1000*time.Hour)); ok {
		t.Error("0 limits must keep connections")
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}
