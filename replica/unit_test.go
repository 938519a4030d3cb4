package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestLSN(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want LSN
	}{
		{"0/0", 0}, {"16/B374D848", 0x16_B374D848}, {"FFFFFFFF/FFFFFFFF", math.MaxUint64}, {"0/1", 1}, {"a/b", 0xa_0000000b},
	} {
		got, err := ParseLSN(tc.in)
		if err != nil || got != tc.want {
			t.Fatalf("ParseLSN(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if back, _ := ParseLSN(got.String()); back != got {
			t.Fatalf("round trip %q -> %s", tc.in, got)
		}
	}
	if LSN(0x16_B374D848).String() != "16/B374D848" {
		t.Fatal(LSN(0x16_B374D848).String())
	}
	for _, bad := range []string{"", "0", "/1", "1/", "g/1", "1/2/3", "123456789/0", "-1/0"} {
		if _, err := ParseLSN(bad); err == nil {
			t.Errorf("ParseLSN(%q) succeeded", bad)
		}
	}
	var l LSN
	if err := l.UnmarshalText([]byte("1/2")); err != nil || l != 1<<32|2 {
		t.Fatal(l, err)
	}
}

func TestEnumText(t *testing.T) {
	for p := RoundRobin; p <= Hash; p++ {
		var q Policy
		if err := q.UnmarshalText([]byte(p.String())); err != nil || q != p {
			t.Fatalf("policy %v round trip: %v %v", p, q, err)
		}
	}
	var p Policy
	if err := p.UnmarshalText([]byte("Least-Latency")); err != nil || p != LeastLatency {
		t.Fatal(p, err)
	}
	if err := p.UnmarshalText([]byte("random")); err == nil {
		t.Fatal("accepted unknown policy")
	}
	var r Role
	if err := r.UnmarshalText([]byte("Standby")); err != nil || r != RoleStandby {
		t.Fatal(r, err)
	}
	if err := r.UnmarshalText([]byte("unknown")); err == nil {
		t.Fatal("accepted role unknown")
	}
	if BreakerHalfOpen.String() != "half_open" || RolePrimary.String() != "primary" {
		t.Fatal("names")
	}
}

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	good.Nodes = []NodeConfig{
		{Name: "p", ConnString: "host=h user=u dbname=d", Role: RolePrimary},
		{Name: "s", ConnString: "postgres://u@h/d", Role: RoleStandby},
	}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(c *Config){
		"no nodes":        func(c *Config) { c.Nodes = nil },
		"two primaries":   func(c *Config) { c.Nodes[1].Role = RolePrimary },
		"no primary":      func(c *Config) { c.Nodes[0].Role = RoleStandby },
		"empty name":      func(c *Config) { c.Nodes[1].Name = "" },
		"duplicate name":  func(c *Config) { c.Nodes[1].Name = "p" },
		"role unknown":    func(c *Config) { c.Nodes[1].Role = RoleUnknown },
		"bad conn string": func(c *Config) { c.Nodes[1].ConnString = "host=h port=notaport" },
		"negative weight": func(c *Config) { c.Nodes[1].Weight = -1 },
		"negative pool":   func(c *Config) { c.Nodes[1].PoolSize = -1 },
		"zero pool":       func(c *Config) { c.PoolSize = 0 },
		"lag interval":    func(c *Config) { c.LagInterval = 0 },
		"acquire timeout": func(c *Config) { c.AcquireTimeout = -time.Second },
		"staleness":       func(c *Config) { c.MaxStaleness = 0 },
		"catch up":        func(c *Config) { c.CatchUpWait = -1 },
		"breaker n":       func(c *Config) { c.Breaker.ConsecutiveFailures = 0 },
		"breaker rate":    func(c *Config) { c.Breaker.FailureRate = 1.5 },
		"breaker window":  func(c *Config) { c.Breaker.Window = 0 },
		"half open":       func(c *Config) { c.Breaker.HalfOpenRequests = 0 },
		"policy":          func(c *Config) { c.Policy = Policy(99) },
	}
	for name, mut := range cases {
		c := good
		c.Nodes = append([]NodeConfig(nil), good.Nodes...)
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
	}
	if _, err := NewSet(context.Background(), Config{}); err == nil {
		t.Fatal("NewSet accepted an empty config")
	}
}

func TestIsConnFailure(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{&pgconn.PgError{Code: "23505"}, false},
		{&pgconn.PgError{Code: "57014"}, false}, // statement timeout / cancel: server is alive
		{&pgconn.PgError{Code: "42P01"}, false},
		{fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: "08006"}), true},
		{&pgconn.PgError{Code: "57P01"}, true},
		{&pgconn.PgError{Code: "57P03"}, true},
		{&pgconn.PgError{Code: "53300"}, true},
		{context.DeadlineExceeded, true},
		{context.Canceled, false},
		{io.EOF, true},
		{&net.OpError{Op: "dial", Err: errors.New("refused")}, true},
	}
	for _, c := range cases {
		if got := IsConnFailure(c.err); got != c.want {
			t.Errorf("IsConnFailure(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestErrorType(t *testing.T) {
	cause := io.EOF
	err := error(newError(ErrPoolExhausted, "s1", codeTooManyConns, "all 2 in use", cause))
	if !errors.Is(err, ErrPoolExhausted) || !errors.Is(err, io.EOF) || errors.Is(err, ErrClosed) {
		t.Fatal("errors.Is")
	}
	var st interface{ SQLState() string }
	if !errors.As(fmt.Errorf("x: %w", err), &st) || st.SQLState() != "53300" {
		t.Fatal("SQLState")
	}
	if !strings.Contains(err.Error(), "s1") || !strings.Contains(err.Error(), "exhausted") {
		t.Fatal(err)
	}
}

func TestBreakerConsecutive(t *testing.T) {
	cfg := DefaultConfig().Breaker
	cfg.ConsecutiveFailures = 3
	cfg.FailureRate = 0
	cfg.OpenFor = time.Second
	cfg.HalfOpenRequests = 2
	b := newBreaker(cfg)
	now := int64(time.Hour)
	b.record(now, true)
	b.record(now, true)
	b.record(now, false) // resets the run
	b.record(now, true)
	b.record(now, true)
	if b.State() != BreakerClosed {
		t.Fatal("opened early")
	}
	if tr := b.record(now, true); tr != (transition{BreakerClosed, BreakerOpen}) {
		t.Fatalf("third failure: %+v", tr)
	}
	if ok, _ := b.allowsPick(now + int64(time.Second) - 1); ok {
		t.Fatal("open breaker allows picks")
	}
	// Late outcomes while open change nothing.
	b.record(now+1, false)
	if b.State() != BreakerOpen {
		t.Fatal("success while open closed it")
	}
	later := now + int64(time.Second)
	ok, tr := b.allowsPick(later)
	if !ok || tr != (transition{BreakerOpen, BreakerHalfOpen}) {
		t.Fatalf("after OpenFor: %v %+v", ok, tr)
	}
	// Trial slots limit picks while half-open.
	b.trials.Add(2)
	if ok, _ := b.allowsPick(later); ok {
		t.Fatal("half-open allowed more than HalfOpenRequests trials")
	}
	b.trials.Add(-2)
	// A failure re-opens.
	if tr := b.record(later, true); tr.to != BreakerOpen {
		t.Fatalf("half-open failure: %+v", tr)
	}
	later += int64(time.Second)
	b.check(later)
	if b.State() != BreakerHalfOpen {
		t.Fatal(b.State())
	}
	if tr := b.record(later, false); tr.to != BreakerHalfOpen {
		t.Fatalf("%+v", tr)
	}
	if tr := b.record(later, false); tr != (transition{BreakerHalfOpen, BreakerClosed}) {
		t.Fatalf("%+v", tr)
	}
}

func TestBreakerRate(t *testing.T) {
	cfg := BreakerConfig{ConsecutiveFailures: 100, FailureRate: 0.5, Window: 10 * time.Second, MinRequests: 10, OpenFor: time.Second, HalfOpenRequests: 1}
	b := newBreaker(cfg)
	now := int64(time.Minute)
	// Alternate: 50% failures but never 100 in a row; opens once 10 outcomes are in.
	for i := range 9 {
		b.record(now, i%2 == 0)
	}
	if b.State() != BreakerClosed {
		t.Fatal("opened below MinRequests")
	}
	b.record(now, true)
	if b.State() != BreakerOpen {
		t.Fatal("did not open at 50% over 10 requests")
	}
	// Old outcomes age out of the window.
	b2 := newBreaker(cfg)
	for range 9 {
		b2.record(now, true)
		b2.record(now, false)
	}
	// 18 outcomes with 9 failures would trip; but we wait past the window.
	b3 := newBreaker(cfg)
	for range 6 {
		b3.record(now, true)
		b3.record(now, false)
		b3.record(now, false)
	}
	if b3.State() != BreakerClosed {
		t.Fatal("33% tripped a 50% breaker")
	}
	late := now + int64(11*time.Second)
	for range 4 {
		b3.record(late, true)
		b3.record(late, false)
	}
	if b3.State() != BreakerClosed {
		t.Fatal("outcomes older than the window were counted (8 recent < MinRequests)")
	}
	_ = b2
}

func pickN(t testing.TB, s *Set, n int, req PickRequest) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		nd, err := s.Pick(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		got[nd.Name()]++
	}
	return got
}

func TestRoundRobin(t *testing.T) {
	s := newSyntheticSet(t, RoundRobin, 1, 1, 1)
	got := pickN(t, s, 3000, PickRequest{})
	for _, name := range []string{"s1", "s2", "s3"} {
		if got[name] != 1000 {
			t.Fatalf("round robin not even: %v", got)
		}
	}
}

func TestWeightedRoundRobin(t *testing.T) {
	s := newSyntheticSet(t, WeightedRoundRobin, 1, 3)
	got := pickN(t, s, 10000, PickRequest{})
	share := float64(got["s1"]) / 10000
	t.Logf("weights 1:3 over 10000 picks: s1=%d (%.2f%%) s2=%d", got["s1"], share*100, got["s2"])
	if math.Abs(share-0.25) > 0.03 {
		t.Fatalf("s1 share %.3f, want 0.25±0.03", share)
	}
	// Smooth: never more than 3 picks of s2 in a row.
	run := 0
	for range 100 {
		n, _ := s.Pick(context.Background(), PickRequest{})
		if n.Name() == "s2" {
			run++
			if run > 3 {
				t.Fatal("not smooth")
			}
		} else {
			run = 0
		}
	}
}

func TestLeastConnections(t *testing.T) {
	s := newSyntheticSet(t, LeastConnections, 1, 1)
	s1, s2 := s.standbys[0], s.standbys[1]
	s1.inUse.Store(5)
	got := pickN(t, s, 100, PickRequest{})
	if got["s2"] != 100 {
		t.Fatalf("picked the busy node: %v", got)
	}
	s2.inUse.Store(5)
	got = pickN(t, s, 100, PickRequest{})
	if got["s1"] != 50 || got["s2"] != 50 {
		t.Fatalf("ties not round robin: %v", got)
	}
}

func TestWeightedLeastConnections(t *testing.T) {
	s := newSyntheticSet(t, WeightedLeastConnections, 1, 3)
	s1, s2 := s.standbys[0], s.standbys[1]
	s1.inUse.Store(2)
	s2.inUse.Store(4) // 2/1 > 4/3: s2 wins
	if got := pickN(t, s, 10, PickRequest{}); got["s2"] != 10 {
		t.Fatal(got)
	}
	s2.inUse.Store(7) // 7/3 > 2/1: s1 wins
	if got := pickN(t, s, 10, PickRequest{}); got["s1"] != 10 {
		t.Fatal(got)
	}
	s1.inUse.Store(0)
	s2.inUse.Store(0) // tie: smooth WRR by weight
	got := pickN(t, s, 4000, PickRequest{})
	if got["s1"] != 1000 || got["s2"] != 3000 {
		t.Fatalf("ties not weighted: %v", got)
	}
}

func TestLeastLatency(t *testing.T) {
	s := newSyntheticSet(t, LeastLatency, 1, 1)
	s1, s2 := s.standbys[0], s.standbys[1]
	for range 10 {
		s1.Observe(20 * time.Millisecond)
		s2.Observe(time.Millisecond)
	}
	got := pickN(t, s, 1600, PickRequest{})
	if got["s2"] < 1500 || got["s1"] == 0 {
		t.Fatalf("least latency: %v (want s2 nearly always, s1 explored sometimes)", got)
	}
	if s1.Latency() < 15*time.Millisecond || s2.Latency() > 2*time.Millisecond {
		t.Fatal(s1.Latency(), s2.Latency())
	}
}

// fill takes every connection slot of n, as leases in use do.
func fill(n *Node) {
	for n.slots.tryAcquire() {
	}
}

func TestPickSpillsFromFullStandby(t *testing.T) {
	for _, policy := range []Policy{RoundRobin, WeightedRoundRobin, LeastLatency} {
		t.Run(policy.String(), func(t *testing.T) {
			s := newSyntheticSet(t, policy, 1, 1, 1)
			s1, s2 := s.standbys[0], s.standbys[1]
			fill(s1)
			for range s2.slots.bound() - 1 {
				s2.slots.tryAcquire() // one slot left on s2, all of them on s3
			}
			// s1's turns go to s3 (the most free slots); s2 keeps its own.
			if got := pickN(t, s, 300, PickRequest{}); got["s1"] != 0 || got["s2"] != 100 || got["s3"] != 200 {
				t.Fatalf("picks with s1 full and s2 nearly so: %v; want s2 100, s3 200", got)
			}
			fill(s.standbys[2])
			if got := pickN(t, s, 300, PickRequest{}); got["s1"] != 0 || got["s2"] != 300 {
				t.Fatalf("picks with s1 and s3 full: %v; want all on s2", got)
			}
			fill(s2)
			got := pickN(t, s, 300, PickRequest{})
			if got["s1"]+got["s2"]+got["s3"] != 300 || got["s1"] == 0 || got["s2"] == 0 || got["s3"] == 0 {
				t.Fatalf("picks with every standby full: %v; want the policy's spread (the lease waits)", got)
			}
		})
	}
	t.Run("hash keeps affinity", func(t *testing.T) {
		s := newSyntheticSet(t, Hash, 1, 1)
		n, _ := s.Pick(context.Background(), PickRequest{HashKey: 42})
		fill(n)
		if got, _ := s.Pick(context.Background(), PickRequest{HashKey: 42}); got != n {
			t.Fatalf("hash pick moved from full %s to %s", n.Name(), got.Name())
		}
	})
}

func TestHashSticky(t *testing.T) {
	s := newSyntheticSet(t, Hash, 1, 1, 1)
	owner := map[uint64]string{}
	count := map[string]int{}
	for k := range uint64(3000) {
		n, _ := s.Pick(context.Background(), PickRequest{HashKey: k})
		owner[k] = n.Name()
		count[n.Name()]++
		if n2, _ := s.Pick(context.Background(), PickRequest{HashKey: k}); n2 != n {
			t.Fatal("not stable")
		}
	}
	for _, c := range count {
		if c < 800 {
			t.Fatalf("hash spread uneven: %v", count)
		}
	}
	// Take s2 out: keys of s1 and s3 stay where they were.
	s.standbys[1].healthy.Store(false)
	moved := 0
	for k := range uint64(3000) {
		n, _ := s.Pick(context.Background(), PickRequest{HashKey: k})
		if n.Name() == "s2" {
			t.Fatal("picked an unhealthy standby")
		}
		if owner[k] != "s2" && owner[k] != n.Name() {
			moved++
		}
	}
	if moved != 0 {
		t.Fatalf("%d keys of healthy standbys moved", moved)
	}
}

func TestPickFreshness(t *testing.T) {
	s := newSyntheticSet(t, RoundRobin, 1, 1)
	s.cfg.CatchUpWait = 0
	s1, s2 := s.standbys[0], s.standbys[1]
	ctx := context.Background()
	only := func(req PickRequest, want string) {
		t.Helper()
		for range 6 {
			n, err := s.Pick(ctx, req)
			if err != nil || n.Name() != want {
				t.Fatalf("Pick(%+v) = %v, %v; want %s", req, n.Name(), err, want)
			}
		}
	}
	setLag(s, s1, 1000, 2*time.Second) // beyond the 1 s default
	only(PickRequest{}, "s2")
	if a, b := pickEither(t, s, PickRequest{MaxStaleness: 3 * time.Second}), pickEither(t, s, PickRequest{MaxStaleness: 3 * time.Second}); a == b {
		t.Fatalf("3 s bound: both picks went to %s", a)
	}
	setLag(s, s1, 1000, 0)
	setLag(s, s2, 900, 0)
	only(PickRequest{MinLSN: 950}, "s1")
	only(PickRequest{MinLSN: 1001}, "p")
	only(PickRequest{MaxStaleness: -1}, "p")
	// Stale measurement: the lag probe stopped answering.
	s2.lag.Store(&lagSample{at: s.now() - s.lagMax - 1, inRecovery: true, lsn: 5000})
	only(PickRequest{MinLSN: 950}, "s1")
	// The lag probe's last attempt failed: not fresh at once, no waiting.
	setLag(s, s2, 5000, 0)
	s2.lagFailed.Store(true)
	s.cfg.CatchUpWait = time.Hour
	only(PickRequest{MinLSN: 950}, "s1")
	s1.healthy.Store(false)
	only(PickRequest{}, "p") // s1 down, s2's lag probe failing: fall back without waiting
	s1.healthy.Store(true)
	s.cfg.CatchUpWait = 0
	// Role mismatch: s1 was promoted.
	s1.observed.Store(uint32(RolePrimary))
	only(PickRequest{}, "p")
	s1.observed.Store(uint32(RoleStandby))
	// Unhealthy and breaker-open standbys get nothing.
	s1.healthy.Store(false)
	only(PickRequest{}, "p")
	s1.healthy.Store(true)
	for range s.cfg.Breaker.ConsecutiveFailures {
		s1.recordOutcome(io.EOF)
	}
	if s1.Breaker() != BreakerOpen {
		t.Fatal("breaker did not open")
	}
	only(PickRequest{}, "p")
	if _, err := s1.Acquire(ctx); !errors.Is(err, ErrNodeUnavailable) {
		t.Fatalf("Acquire on open standby: %v", err)
	}
	if _, err := s.Pick(ctx, PickRequest{NoFallback: true}); !errors.Is(err, ErrNoHealthyReplica) {
		t.Fatalf("NoFallback: %v", err)
	}
	st := s.Stats()
	if st[0].Fallbacks == 0 || st[0].Picks < st[0].Fallbacks || st[1].Breaker != BreakerOpen || st[1].Failures == 0 {
		t.Fatalf("stats: %+v", st)
	}
	if st[2].Fresh || st[1].Fresh {
		t.Fatalf("fresh flags: %+v", st)
	}
}

func pickEither(t *testing.T, s *Set, req PickRequest) string {
	n, err := s.Pick(context.Background(), req)
	if err != nil || (n.Name() != "s1" && n.Name() != "s2") {
		t.Fatalf("Pick with 3 s staleness: %v %v", n, err)
	}
	return n.Name()
}

func TestPickWaitsForCatchUp(t *testing.T) {
	s := newSyntheticSet(t, RoundRobin, 1)
	s.cfg.CatchUpWait = 10 * time.Second
	s1 := s.standbys[0]
	done := make(chan *Node, 1)
	go func() {
		n, err := s.Pick(context.Background(), PickRequest{MinLSN: 2000})
		if err != nil {
			t.Error(err)
		}
		done <- n
	}()
	// The waiting Pick kicks the lag probe.
	select {
	case <-s1.kick:
	case <-time.After(10 * time.Second):
		t.Fatal("no kick")
	}
	setLag(s, s1, 1500, 0) // not enough: keeps waiting
	select {
	case n := <-done:
		t.Fatalf("returned %v before catch-up", n.Name())
	case <-time.After(20 * time.Millisecond):
	}
	setLag(s, s1, 2000, 0)
	select {
	case n := <-done:
		if n != s1 {
			t.Fatalf("got %s", n.Name())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Pick not woken by the lag broadcast")
	}
	// Short wait then fallback.
	s.cfg.CatchUpWait = 5 * time.Millisecond
	if n, _ := s.Pick(context.Background(), PickRequest{MinLSN: 3000}); n != s.primary {
		t.Fatal("no fallback")
	}
	// Context ends during the wait.
	s.cfg.CatchUpWait = time.Hour
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := s.Pick(ctx, PickRequest{MinLSN: 3000}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
	// Close wakes waiters with ErrClosed.
	errc := make(chan error, 1)
	go func() {
		_, err := s.Pick(context.Background(), PickRequest{MinLSN: 3000})
		errc <- err
	}()
	<-s1.kick
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiter after Close: %v", err)
	}
	if err := s.Close(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Pick(context.Background(), PickRequest{}); !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
	if _, err := s.primary.Acquire(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
}

func TestPickConcurrent(t *testing.T) {
	for p := RoundRobin; p <= Hash; p++ {
		t.Run(p.String(), func(t *testing.T) {
			s := newSyntheticSet(t, p, 1, 2, 3)
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 2000 {
						n, err := s.Pick(context.Background(), PickRequest{HashKey: uint64(i * g)})
						if err != nil || n.Role() != RoleStandby {
							t.Error(n, err)
							return
						}
						n.inUse.Add(1)
						n.Observe(time.Duration(i) * time.Microsecond)
						n.inUse.Add(-1)
						if i%100 == 0 {
							setLag(s, n, LSN(1000+i), 0)
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}

// TestNewSetUnreachable runs real probes against nodes that refuse
// connections: NewSet succeeds, nodes are unhealthy, breakers open, Pick
// falls back to the primary, Acquire fails with 08006, Close stops everything.
func TestNewSetUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().(*net.TCPAddr)
	l.Close() // nothing listens there now
	cs := fmt.Sprintf("host=127.0.0.1 port=%d user=u dbname=d sslmode=disable connect_timeout=2", addr.Port)
	cfg := DefaultConfig()
	cfg.LagInterval = 10 * time.Millisecond
	cfg.HealthInterval = 20 * time.Millisecond
	cfg.Breaker.OpenFor = time.Hour
	var mu sync.Mutex
	var changes []string
	cfg.Hooks.OnBreakerChange = func(node string, from, to BreakerState) {
		mu.Lock()
		changes = append(changes, node+":"+to.String())
		mu.Unlock()
	}
	cfg.Nodes = []NodeConfig{{Name: "p", ConnString: cs, Role: RolePrimary}, {Name: "s", ConnString: cs, Role: RoleStandby}}
	s, err := NewSet(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for s.Node("s").Breaker() != BreakerOpen {
		if time.Now().After(deadline) {
			t.Fatalf("breaker never opened: %+v", s.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	n, err := s.Pick(context.Background(), PickRequest{})
	if err != nil || n != s.Primary() {
		t.Fatal(n, err)
	}
	_, err = s.Node("s").Acquire(context.Background())
	var se interface{ SQLState() string }
	if !errors.Is(err, ErrNodeUnavailable) || !errors.As(err, &se) || se.SQLState() != "08006" {
		t.Fatalf("Acquire on open standby: %v", err)
	}
	_, err = s.Primary().Acquire(context.Background())
	if !errors.Is(err, ErrNodeUnavailable) {
		t.Fatalf("Acquire on dead primary: %v", err)
	}
	if l, err := s.AcquireRead(context.Background(), PickRequest{}); l != nil || !errors.Is(err, ErrNodeUnavailable) {
		t.Fatalf("AcquireRead with every node down: %v", err)
	}
	st := s.Stats()
	if st[0].Healthy || st[1].Healthy || st[1].LastError == "" || st[1].Failures < 5 || st[1].Fresh {
		t.Fatalf("stats: %+v", st)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(strings.Join(changes, ","), "s:open") {
		t.Fatalf("hook not called: %v", changes)
	}
}

func BenchmarkPick(b *testing.B) {
	for p := RoundRobin; p <= Hash; p++ {
		b.Run(p.String(), func(b *testing.B) {
			s := newSyntheticSet(b, p, 1, 3)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			var k uint64
			for b.Loop() {
				k++
				if _, err := s.Pick(ctx, PickRequest{MinLSN: 500, HashKey: k}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("parallel_least_connections", func(b *testing.B) {
		s := newSyntheticSet(b, LeastConnections, 1, 1)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Pick(context.Background(), PickRequest{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

func TestConnFailureSuspendsStandby(t *testing.T) {
	s := newSyntheticSet(t, RoundRobin, 1, 1)
	s.cfg.CatchUpWait = 0
	s1 := s.standbys[0]
	s1.recordOutcome(&pgconn.PgError{Code: "23505"}) // SQL error: the node is fine
	if got := pickN(t, s, 10, PickRequest{}); got["s1"] != 5 {
		t.Fatalf("SQL error suspended the node: %v", got)
	}
	s1.recordOutcome(io.ErrUnexpectedEOF) // connection died
	select {
	case <-s1.kick:
	default:
		t.Fatal("lag probe not asked to re-check the node")
	}
	if got := pickN(t, s, 10, PickRequest{}); got["s1"] != 0 || s1.Breaker() != BreakerClosed {
		t.Fatalf("suspect node still picked: %v", got)
	}
	s1.lagFailed.Store(false) // what the next successful lag probe does
	if got := pickN(t, s, 10, PickRequest{}); got["s1"] != 5 {
		t.Fatalf("node not back after a good probe: %v", got)
	}
}

// TestConnectGivesUpOnProbeFailure: a connection being opened to a node
// that accepts but never answers (a hung server) is given up when a probe
// of the node fails, well before ConnectTimeout.
func TestConnectGivesUpOnProbeFailure(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // accepted, never answered
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	cs := fmt.Sprintf("host=127.0.0.1 port=%d user=u dbname=d sslmode=disable", l.Addr().(*net.TCPAddr).Port)
	cfg := DefaultConfig()
	cfg.ConnectTimeout = time.Minute
	cfg.ProbeTimeout = 200 * time.Millisecond
	cfg.LagInterval = 100 * time.Millisecond
	cfg.HealthInterval = 100 * time.Millisecond
	cfg.Nodes = []NodeConfig{{Name: "p", ConnString: cs, Role: RolePrimary}}
	s, err := NewSet(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	n := s.Primary()
	if !n.Failing() {
		t.Fatal("a node that never answers is not Failing after the first probes")
	}
	start := time.Now()
	_, err = n.connect(context.Background(), n.connCfg)
	if err == nil || !strings.Contains(err.Error(), "a probe of the node failed meanwhile") {
		t.Fatalf("connect to a hung server: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("connect gave up after %v (ConnectTimeout 1m, probes every 100ms)", d)
	}
	// The lease fails as the node's unavailability (the proxy sends the
	// read elsewhere), not as a cancellation by the caller.
	_, err = n.Acquire(context.Background())
	if !errors.Is(err, ErrNodeUnavailable) || errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire on a hung server: %v", err)
	}
}
