package integration

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/replica"
)

// TestReplica runs the replica package against one real cluster (a primary
// and two streaming standbys). Subtests share it and run in order; the
// destructive ones (kill) come last.
func TestReplica(t *testing.T) {
	c := pgcluster.StartT(t, pgcluster.Options{Name: "replica", Standbys: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := c.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
	rsExec(t, ctx, c.Primary(), `CREATE TABLE ryw (id int PRIMARY KEY, v bigint NOT NULL);
		CREATE TABLE ticks (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())`)
	if err := c.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	// Nothing started by the replica package may outlive Close.
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	t.Run("Policies", func(t *testing.T) { testReplicaPolicies(t, ctx, c) })
	t.Run("PoolAndLeases", func(t *testing.T) { testReplicaPool(t, ctx, c) })
	t.Run("RoleMismatch", func(t *testing.T) { testReplicaRoleMismatch(t, ctx, c) })
	t.Run("Staleness", func(t *testing.T) { testReplicaStaleness(t, ctx, c) })
	t.Run("ReadYourWrites", func(t *testing.T) { testReplicaReadYourWrites(t, ctx, c) })
	t.Run("Reconfigure", func(t *testing.T) { testReplicaReconfigure(t, ctx, c) })
	t.Run("KillStandby", func(t *testing.T) { testReplicaKill(t, ctx, c) })
}

// rsNewSet builds a Set over the cluster: "primary", "s1", "s2".
func rsNewSet(t *testing.T, ctx context.Context, c *pgcluster.Cluster, mut func(*replica.Config)) *replica.Set {
	t.Helper()
	cfg := replica.DefaultConfig()
	cfg.Nodes = []replica.NodeConfig{{Name: "primary", ConnString: c.Primary().ConnString("postgres"), Role: replica.RolePrimary}}
	for i, sb := range c.Standbys() {
		cfg.Nodes = append(cfg.Nodes, replica.NodeConfig{
			Name: fmt.Sprintf("s%d", i+1), ConnString: sb.ConnString("postgres"), Role: replica.RoleStandby,
		})
	}
	if mut != nil {
		mut(&cfg)
	}
	s, err := replica.NewSet(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func rsClose(t *testing.T, s *replica.Set) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s.Close(ctx); !errors.Is(err, replica.ErrClosed) {
		t.Errorf("second Close: %v, want ErrClosed", err)
	}
}

func rsExec(t *testing.T, ctx context.Context, n *pgcluster.Node, sql string) {
	t.Helper()
	conn, err := pgconn.Connect(ctx, n.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// rsQuery runs sql on a lease and returns the first column of the first row.
func rsQuery(ctx context.Context, l *replica.Lease, sql string) (string, error) {
	res, err := l.Conn().Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	if len(res) == 0 || len(res[0].Rows) == 0 {
		return "", nil
	}
	return string(res[0].Rows[0][0]), nil
}

// rsRead picks a node, leases a connection and runs sql. It returns the
// node used.
func rsRead(ctx context.Context, s *replica.Set, req replica.PickRequest, sql string) (*replica.Node, string, error) {
	n, err := s.Pick(ctx, req)
	if err != nil {
		return nil, "", err
	}
	l, err := n.Acquire(ctx)
	if err != nil {
		return n, "", err
	}
	v, err := rsQuery(ctx, l, sql)
	l.Release(err)
	return n, v, err
}

func rsPoll(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, seen := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %v; last seen: %s", what, d, seen)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func rsStats(s *replica.Set, name string) replica.NodeStats {
	for _, st := range s.Stats() {
		if st.Name == name {
			return st
		}
	}
	return replica.NodeStats{}
}

func testReplicaPolicies(t *testing.T, ctx context.Context, c *pgcluster.Cluster) {
	relaxed := func(cfg *replica.Config) {
		// These subtests measure the policies, not freshness: on a loaded
		// machine a late probe must not remove a standby.
		cfg.MaxStaleness = time.Minute
		cfg.LagMaxAge = time.Minute
	}
	t.Run("WeightedRoundRobin", func(t *testing.T) {
		s := rsNewSet(t, ctx, c, func(cfg *replica.Config) {
			relaxed(cfg)
			cfg.Policy = replica.WeightedRoundRobin
			cfg.Nodes[1].Weight, cfg.Nodes[2].Weight = 1, 3
		})
		defer rsClose(t, s)
		got := map[string]int{}
		for range 10000 {
			n, err := s.Pick(ctx, replica.PickRequest{})
			if err != nil {
				t.Fatal(err)
			}
			got[n.Name()]++
		}
		share := float64(got["s1"]) / 10000
		t.Logf("weighted round robin 1:3 over 10000 picks: %v (s1 %.2f%%, s2 %.2f%%)", got, 100*share, 100*float64(got["s2"])/10000)
		if math.Abs(share-0.25) > 0.03 || got["primary"] != 0 {
			t.Fatalf("distribution %v, want s1 25±3%%, s2 75±3%%", got)
		}
		// Real reads follow the picks.
		for range 20 {
			n, v, err := rsRead(ctx, s, replica.PickRequest{}, "SELECT pg_is_in_recovery()")
			if err != nil || v != "t" || n.Role() != replica.RoleStandby {
				t.Fatalf("read on %v: %q %v", n.Name(), v, err)
			}
		}
	})
	t.Run("RoundRobinAndHash", func(t *testing.T) {
		s := rsNewSet(t, ctx, c, func(cfg *replica.Config) { relaxed(cfg); cfg.Policy = replica.RoundRobin })
		defer rsClose(t, s)
		got := map[string]int{}
		for range 1000 {
			n, _ := s.Pick(ctx, replica.PickRequest{})
			got[n.Name()]++
		}
		if got["s1"] != 500 || got["s2"] != 500 {
			t.Fatalf("round robin: %v", got)
		}
		h := rsNewSet(t, ctx, c, func(cfg *replica.Config) { relaxed(cfg); cfg.Policy = replica.Hash })
		defer rsClose(t, h)
		per := map[string]int{}
		for k := range uint64(200) {
			first, _ := h.Pick(ctx, replica.PickRequest{HashKey: k * 0x9E3779B97F4A7C15})
			for range 20 {
				n, _ := h.Pick(ctx, replica.PickRequest{HashKey: k * 0x9E3779B97F4A7C15})
				if n != first {
					t.Fatalf("key %d moved from %s to %s", k, first.Name(), n.Name())
				}
			}
			per[first.Name()]++
		}
		t.Logf("hash: 200 keys -> %v", per)
		if per["s1"] < 60 || per["s2"] < 60 {
			t.Fatalf("hash spread %v", per)
		}
	})
	t.Run("LeastConnections", func(t *testing.T) {
		s := rsNewSet(t, ctx, c, func(cfg *replica.Config) { relaxed(cfg); cfg.Policy = replica.LeastConnections })
		defer rsClose(t, s)
		s1 := s.Node("s1")
		// Three long queries hold leases on s1.
		var held []*replica.Lease
		for range 3 {
			l, err := s1.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, l)
		}
		var wg sync.WaitGroup
		for _, l := range held {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := rsQuery(ctx, l, "SELECT pg_sleep(3)")
				l.Release(err)
			}()
		}
		got := map[string]int{}
		for range 100 {
			n, v, err := rsRead(ctx, s, replica.PickRequest{}, "SELECT 1")
			if err != nil || v != "1" {
				t.Fatal(err)
			}
			got[n.Name()]++
			if s1.InUse() < 3 {
				break // a long query ended: the premise no longer holds
			}
		}
		t.Logf("least connections with 3 long queries on s1: %v", got)
		if got["s1"] != 0 || got["s2"] == 0 {
			t.Fatalf("least connections sent reads to the busy node: %v", got)
		}
		wg.Wait()
		got = map[string]int{}
		for range 100 {
			n, _, err := rsRead(ctx, s, replica.PickRequest{}, "SELECT 1")
			if err != nil {
				t.Fatal(err)
			}
			got[n.Name()]++
		}
		if got["s1"] < 30 || got["s2"] < 30 {
			t.Fatalf("idle nodes not shared (ties should go round robin): %v", got)
		}
	})
	t.Run("LeastLatency", func(t *testing.T) {
		s := rsNewSet(t, ctx, c, func(cfg *replica.Config) { relaxed(cfg); cfg.Policy = replica.LeastLatency })
		defer rsClose(t, s)
		got := map[string]int{}
		for range 400 {
			n, err := s.Pick(ctx, replica.PickRequest{})
			if err != nil {
				t.Fatal(err)
			}
			l, err := n.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			sql := "SELECT 1"
			if n.Name() == "s1" {
				sql = "SELECT pg_sleep(0.02)" // s1 is slow
			}
			_, err = rsQuery(ctx, l, sql)
			l.Release(err) // the lease duration feeds the EWMA
			if err != nil {
				t.Fatal(err)
			}
			got[n.Name()]++
		}
		s1, s2 := rsStats(s, "s1"), rsStats(s, "s2")
		t.Logf("least latency, s1 +20ms per query: %v; EWMA s1=%v s2=%v", got, s1.Latency, s2.Latency)
		// Round robin would split 1:1. One pick in 16 explores, and on a
		// loaded machine a lag probe can briefly make the fast standby
		// ineligible, so the bound is a clear preference, not an exact share.
		if got["s2"] < 2*got["s1"] || got["s1"] == 0 || s1.Latency <= s2.Latency {
			t.Fatalf("least latency did not prefer the fast node: %v", got)
		}
	})
}

func testReplicaPool(t *testing.T, ctx context.Context, c *pgcluster.Cluster) {
	const wait = 2 * time.Second
	s := rsNewSet(t, ctx, c, func(cfg *replica.Config) {
		cfg.Nodes[1].PoolSize = 2
		cfg.AcquireTimeout = wait
		// The reads below check where Pick sends them, not freshness: on a
		// loaded machine a late probe must not remove a standby.
		cfg.MaxStaleness = time.Minute
		cfg.LagMaxAge = time.Minute
	})
	defer rsClose(t, s)
	s1, s2, p := s.Node("s1"), s.Node("s2"), s.Primary()

	// s1 becomes a slow node: both its connections run long queries.
	var slow []*replica.Lease
	for range 2 {
		l, err := s1.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		slow = append(slow, l)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, l := range slow {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := rsQuery(ctx, l, "SELECT pg_sleep(5)")
			l.Release(err)
		}()
	}
	// Reads do not queue on the full s1 while s2 has free connections:
	// round robin's turns of s1 go to s2, and every read runs at once
	// (before, every other read waited AcquireTimeout and failed with 53300).
	for i := range 10 {
		n, v, err := rsRead(ctx, s, replica.PickRequest{}, "SELECT pg_is_in_recovery()")
		if err != nil || n != s2 || v != "t" {
			name := "no node"
			if n != nil {
				name = n.Name()
			}
			t.Fatalf("read %d with s1's pool full: on %s: %q, %v; want s2", i, name, v, err)
		}
	}
	start := time.Now()
	_, err := s1.Acquire(ctx)
	elapsed := time.Since(start)
	var se interface{ SQLState() string }
	if !errors.Is(err, replica.ErrPoolExhausted) || !errors.As(err, &se) || se.SQLState() != "53300" || !strings.Contains(err.Error(), "s1") {
		t.Fatalf("exhausted pool: %v", err)
	}
	t.Logf("exhausted pool answered after %v (bound %v): %v", elapsed, wait, err)
	if elapsed < wait || elapsed > wait+10*time.Second {
		t.Fatalf("exhaustion error after %v, want about %v", elapsed, wait)
	}
	if st := rsStats(s, "s1"); st.Pool.InUse != 2 || st.Pool.Max != 2 || st.AcquireTimeouts != 1 {
		t.Fatalf("s1 pool stats %+v", st.Pool)
	}
	// A waiter on s1 does not block s2 or the primary.
	waiterErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err := s1.Acquire(ctx)
		waiterErr <- err
	}()
	rsPoll(t, 10*time.Second, "waiter registered", func() (bool, string) {
		st := rsStats(s, "s1").Pool
		return st.Waiting == 1, fmt.Sprintf("%+v", st)
	})
	for _, n := range []*replica.Node{s2, p} {
		l, err := n.Acquire(ctx)
		if err != nil {
			t.Fatalf("%s blocked by slow s1: %v", n.Name(), err)
		}
		if v, err := rsQuery(ctx, l, "SELECT 42"); err != nil || v != "42" {
			t.Fatal(v, err)
		}
		l.Release(nil)
	}
	if err := <-waiterErr; !errors.Is(err, replica.ErrPoolExhausted) {
		t.Fatalf("waiter: %v", err)
	}
	wg.Wait()

	// Release semantics on the primary's pool.
	pid := func(l *replica.Lease) uint32 { return l.Conn().PID() }
	l, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := pid(l)
	l.Release(nil)
	l.Release(nil) // second release is a no-op
	l, _ = p.Acquire(ctx)
	if pid(l) != first {
		t.Fatal("idle connection not reused")
	}
	// Server error: the connection is still in sync and goes back; the breaker does not count it.
	_, qerr := rsQuery(ctx, l, "SELECT 1/0")
	var pgErr *pgconn.PgError
	if !errors.As(qerr, &pgErr) || pgErr.Code != "22012" {
		t.Fatal(qerr)
	}
	failuresBefore := rsStats(s, "primary").Failures
	l.Release(qerr)
	l, _ = p.Acquire(ctx)
	if pid(l) != first || rsStats(s, "primary").Failures != failuresBefore {
		t.Fatal("server error destroyed the connection or counted as failure")
	}
	// Inside a transaction: not idle, so destroyed.
	if _, err := rsQuery(ctx, l, "BEGIN"); err != nil || l.Conn().TxStatus() != 'T' {
		t.Fatal(err)
	}
	l.Release(nil)
	l, _ = p.Acquire(ctx)
	if pid(l) == first || l.Conn().TxStatus() != 'I' {
		t.Fatal("connection in a transaction went back to the pool")
	}
	second := pid(l)
	l.Discard(nil)
	l, _ = p.Acquire(ctx)
	if pid(l) == second {
		t.Fatal("Discard pooled the connection")
	}
	// Cancelled query: pooled connections answer a cancelled ctx with a
	// CancelRequest, so the server reports 57014 and the connection stays in
	// sync and is pooled again; not a breaker failure.
	qctx, qcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, qerr = rsQuery(qctx, l, "SELECT pg_sleep(5)")
	qcancel()
	if !errors.As(qerr, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("cancelled query: %v", qerr)
	}
	third := pid(l)
	l.Release(qerr)
	l, _ = p.Acquire(ctx)
	if pid(l) != third {
		t.Fatal("connection of a cancelled (57014) query not reused")
	}
	if v, err := rsQuery(ctx, l, "SELECT 7"); err != nil || v != "7" {
		t.Fatalf("query after a cancelled one: %q %v", v, err)
	}
	// An error that is not the server's (state unknown): destroyed, and a
	// caller's cancellation is not a breaker failure.
	l.Release(context.Canceled)
	l, _ = p.Acquire(ctx)
	if pid(l) == third {
		t.Fatal("connection released with a non-server error was reused")
	}
	if rsStats(s, "primary").Failures != failuresBefore {
		t.Fatal("cancellation counted as a breaker failure")
	}
	// CurrentLSN on the lease and the node; a standby has none.
	lsn1, err := l.CurrentLSN(ctx)
	if err != nil || lsn1 == 0 {
		t.Fatal(lsn1, err)
	}
	if _, err := rsQuery(ctx, l, "INSERT INTO ticks DEFAULT VALUES"); err != nil {
		t.Fatal(err)
	}
	l.Release(nil)
	if _, err := l.CurrentLSN(ctx); err == nil {
		t.Fatal("CurrentLSN on a released lease")
	}
	lsn2, err := p.CurrentLSN(ctx)
	if err != nil || lsn2 <= lsn1 {
		t.Fatalf("CurrentLSN after a write: %v -> %v (%v)", lsn1, lsn2, err)
	}
	if _, err := s2.CurrentLSN(ctx); err == nil {
		t.Fatal("CurrentLSN on a standby succeeded")
	}
	st := rsStats(s, "primary")
	t.Logf("primary after lease tests: %+v", st)
	if st.Breaker != replica.BreakerClosed || st.Pool.InUse != 0 || st.Pool.Total != st.Pool.Idle {
		t.Fatalf("primary stats %+v", st)
	}
}

func testReplicaRoleMismatch(t *testing.T, ctx context.Context, c *pgcluster.Cluster) {
	// Misconfigured on purpose: standby1 is declared the primary and the
	// real primary is declared a standby.
	var mu sync.Mutex
	mismatches := map[string]string{}
	cfg := replica.DefaultConfig()
	cfg.Nodes = []replica.NodeConfig{
		{Name: "fake-primary", ConnString: c.Standbys()[0].ConnString("postgres"), Role: replica.RolePrimary},
		{Name: "fake-standby", ConnString: c.Primary().ConnString("postgres"), Role: replica.RoleStandby},
		{Name: "s2", ConnString: c.Standbys()[1].ConnString("postgres"), Role: replica.RoleStandby},
	}
	cfg.Hooks.OnRoleMismatch = func(node string, configured, observed replica.Role) {
		mu.Lock()
		mismatches[node] = configured.String() + "->" + observed.String()
		mu.Unlock()
	}
	s, err := replica.NewSet(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer rsClose(t, s)
	mu.Lock()
	got := fmt.Sprint(mismatches)
	mu.Unlock()
	if got != "map[fake-primary:primary->standby fake-standby:standby->primary]" {
		t.Fatalf("role mismatch hooks: %s", got)
	}
	for _, st := range s.Stats() {
		if st.RoleMismatch != (st.Name != "s2") {
			t.Fatalf("stats %+v", st)
		}
	}
	_, err = s.Primary().Acquire(ctx)
	var se interface{ SQLState() string }
	if !errors.Is(err, replica.ErrRoleMismatch) || !errors.As(err, &se) || se.SQLState() != "25006" {
		t.Fatalf("write on a primary in recovery: %v", err)
	}
	for range 200 {
		n, err := s.Pick(ctx, replica.PickRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if n.Name() == "fake-standby" {
			t.Fatal("a configured standby that is not in recovery got a read")
		}
	}
}

// rsTicker inserts a row on the primary every few ms until stopped, so that
// paused standbys fall behind.
func rsTicker(t *testing.T, s *replica.Set) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			l, err := s.Primary().Acquire(ctx)
			if err == nil {
				_, err = rsQuery(ctx, l, "INSERT INTO ticks DEFAULT VALUES")
				l.Release(err)
			}
			if err != nil && ctx.Err() == nil {
				t.Errorf("ticker: %v", err)
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return func() { cancel(); <-done }
}

func testReplicaStaleness(t *testing.T, ctx context.Context, c *pgcluster.Cluster) {
	const bound = 300 * time.Millisecond
	s := rsNewSet(t, ctx, c, func(cfg *replica.Config) { cfg.MaxStaleness = bound })
	defer rsClose(t, s)
	stop := rsTicker(t, s)
	defer stop()
	sb := c.Standbys()
	defer func() {
		for _, n := range sb {
			_ = n.ResumeReplay(ctx)
		}
	}()
	picks := func(k int) map[string]int {
		got := map[string]int{}
		for range k {
			n, v, err := rsRead(ctx, s, replica.PickRequest{}, "SELECT count(*) FROM ticks")
			if err != nil || v == "" {
				t.Fatal(err)
			}
			got[n.Name()]++
		}
		return got
	}
	if err := sb[0].PauseReplay(ctx); err != nil {
		t.Fatal(err)
	}
	rsPoll(t, 30*time.Second, "s1 lag beyond the bound", func() (bool, string) {
		st := rsStats(s, "s1")
		return st.LagTime > bound, fmt.Sprintf("%+v", st)
	})
	got := picks(200)
	st := rsStats(s, "s1")
	t.Logf("s1 paused (lag %v, %d bytes): reads %v", st.LagTime, st.LagBytes, got)
	if got["s1"] != 0 || got["s2"] < 150 {
		t.Fatalf("reads with s1 paused: %v", got)
	}
	if err := sb[1].PauseReplay(ctx); err != nil {
		t.Fatal(err)
	}
	rsPoll(t, 30*time.Second, "s2 lag beyond the bound", func() (bool, string) {
		st := rsStats(s, "s2")
		return st.LagTime > bound, fmt.Sprintf("%+v", st)
	})
	fallbacks := rsStats(s, "primary").Fallbacks
	got = picks(100)
	t.Logf("both paused: reads %v", got)
	if got["primary"] != 100 || rsStats(s, "primary").Fallbacks-fallbacks != 100 {
		t.Fatalf("reads with both standbys paused: %v", got)
	}
	for _, n := range sb {
		if err := n.ResumeReplay(ctx); err != nil {
			t.Fatal(err)
		}
	}
	rsPoll(t, 30*time.Second, "standbys serve reads again", func() (bool, string) {
		got := picks(20)
		return got["s1"] > 0 && got["s2"] > 0, fmt.Sprint(got)
	})
}

func testReplicaReadYourWrites(t *testing.T, ctx context.Context, c *pgcluster.Cluster) {
	const workers, pairsPerWorker = 8, 1250
	s := rsNewSet(t, ctx, c, func(cfg *replica.Config) { cfg.PoolSize = workers + 2 })
	defer rsClose(t, s)
	for w := range workers {
		rsExec(t, ctx, c.Primary(), fmt.Sprintf("INSERT INTO ryw VALUES (%d, 0) ON CONFLICT (id) DO UPDATE SET v = 0", w))
	}
	// Control: the check below does detect stale reads. With replay paused,
	// a read sent straight to the standby (no Pick, no token) sees the old row.
	if err := c.Standbys()[0].PauseReplay(ctx); err != nil {
		t.Fatal(err)
	}
	rsExec(t, ctx, c.Primary(), "UPDATE ryw SET v = -1 WHERE id = 0")
	l, err := s.Node("s1").Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, err := rsQuery(ctx, l, "SELECT v FROM ryw WHERE id = 0")
	l.Release(err)
	if err != nil || v != "0" {
		t.Fatalf("control read on paused s1: %q %v (want the pre-write value 0)", v, err)
	}
	if err := c.Standbys()[0].ResumeReplay(ctx); err != nil {
		t.Fatal(err)
	}

	// Chaos: pause and resume replay on random standbys at random.
	chaosCtx, stopChaos := context.WithCancel(ctx)
	var chaosWG sync.WaitGroup
	var toggles atomic.Int64
	sb := c.Standbys()
	chaosWG.Add(1)
	go func() {
		defer chaosWG.Done()
		paused := make([]bool, len(sb))
		defer func() {
			for _, n := range sb {
				_ = n.ResumeReplay(context.WithoutCancel(chaosCtx))
			}
		}()
		for {
			select {
			case <-chaosCtx.Done():
				return
			case <-time.After(time.Duration(20+rand.IntN(100)) * time.Millisecond):
			}
			i := rand.IntN(len(sb))
			var err error
			if paused[i] {
				err = sb[i].ResumeReplay(chaosCtx)
			} else if rand.IntN(3) > 0 { // paused about 40% of the time
				err = sb[i].PauseReplay(chaosCtx)
			} else {
				continue
			}
			if err != nil {
				if chaosCtx.Err() == nil {
					t.Errorf("chaos: %v", err)
				}
				return
			}
			paused[i] = !paused[i]
			toggles.Add(1)
		}
	}()

	var stale, pairs, byStandby, byPrimary atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 1; i <= pairsPerWorker; i++ {
				// Write on the primary, then read the commit's upper bound LSN.
				l, err := s.Primary().Acquire(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				_, err = rsQuery(ctx, l, fmt.Sprintf("UPDATE ryw SET v = %d WHERE id = %d", i, w))
				var token replica.LSN
				if err == nil {
					token, err = l.CurrentLSN(ctx)
				}
				l.Release(err)
				if err != nil {
					t.Error(err)
					return
				}
				// Read it back with the token.
				n, v, err := rsRead(ctx, s, replica.PickRequest{MinLSN: token}, fmt.Sprintf("SELECT v FROM ryw WHERE id = %d", w))
				if err != nil {
					t.Errorf("read: %v", err)
					return
				}
				got, _ := strconv.Atoi(v)
				if got != i {
					stale.Add(1)
					t.Errorf("worker %d pair %d: read %d from %s (token %v)", w, i, got, n.Name(), token)
				}
				if n.Role() == replica.RoleStandby {
					byStandby.Add(1)
				} else {
					byPrimary.Add(1)
				}
				pairs.Add(1)
			}
		}()
	}
	wg.Wait()
	stopChaos()
	chaosWG.Wait()
	total := pairs.Load()
	share := float64(byStandby.Load()) / float64(max(total, 1))
	t.Logf("read-your-writes: %d pairs in %v, %d replay pause/resume toggles, stale reads %d, standbys served %d (%.1f%%), primary %d; stats %+v",
		total, time.Since(start).Round(time.Millisecond), toggles.Load(), stale.Load(), byStandby.Load(), 100*share, byPrimary.Load(), s.Stats())
	if total != workers*pairsPerWorker {
		t.Fatalf("only %d pairs ran", total)
	}
	if stale.Load() != 0 {
		t.Fatalf("%d reads observed the pre-write state", stale.Load())
	}
	if toggles.Load() < 10 {
		t.Fatalf("chaos toggled replay only %d times", toggles.Load())
	}
	if share <= 0.20 {
		t.Fatalf("standbys served only %.1f%% of reads", 100*share)
	}
}

// testReplicaReconfigure changes a running Set's pool bounds and
// connection lifetimes and checks the server's side: the backends the pool
// holds (pg_stat_activity) and which backend a lease gets (pg_backend_pid).
func testReplicaReconfigure(t *testing.T, ctx context.Context, c *pgcluster.Cluster) {
	const app = "reconfigure-pool"
	s := rsNewSet(t, ctx, c, func(cfg *replica.Config) {
		cfg.Nodes[0].ConnString += " application_name=" + app
		cfg.PoolSize = 2
		cfg.AcquireTimeout = 300 * time.Millisecond
		cfg.HealthInterval = 100 * time.Millisecond // the idle reaper's period
	})
	defer rsClose(t, s)
	p := s.Primary()
	backends := func() int {
		conn, err := pgconn.Connect(ctx, c.Primary().ConnString("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		res, err := conn.Exec(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = '"+app+"'").ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(string(res[0].Rows[0][0]))
		return n
	}
	pid := func(l *replica.Lease) string {
		v, err := rsQuery(ctx, l, "SELECT pg_backend_pid()")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	acquire := func() *replica.Lease {
		l, err := p.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}

	// A saturated pool keeps its connections: 8 goroutines share 2
	// connections, handed from lease to lease, none closed and reopened.
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				l, err := p.Acquire(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				_, err = rsQuery(ctx, l, "SELECT 1")
				l.Release(err)
			}
		}()
	}
	wg.Wait()
	if st := rsStats(s, "primary").Pool; st.Opened != 2 || st.Idle != 2 {
		t.Fatalf("saturated pool of 2: %d connections opened, %d idle after 400 leases; want 2 and 2", st.Opened, st.Idle)
	}

	// Pool of 2, both in use: a third Acquire waits. Raising the bound
	// serves it at once.
	l1, l2 := acquire(), acquire()
	got := make(chan error, 1)
	var l3 *replica.Lease
	tun := s.Tuning()
	tun.AcquireTimeout = time.Minute
	if err := s.Reconfigure(tun); err != nil {
		t.Fatal(err)
	}
	go func() {
		var err error
		l3, err = p.Acquire(ctx)
		got <- err
	}()
	rsPoll(t, 10*time.Second, "third Acquire waits", func() (bool, string) {
		st := rsStats(s, "primary")
		return st.Pool.Waiting == 1, fmt.Sprintf("%+v", st.Pool)
	})
	tun.PoolSize = 3
	if err := s.Reconfigure(tun); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("raising the pool bound did not serve the waiting Acquire")
	}
	for _, l := range []*replica.Lease{l1, l2, l3} {
		pid(l)
		l.Release(nil)
	}
	if n := backends(); n != 3 {
		t.Fatalf("%d backends after three leases, want 3 pooled", n)
	}

	// Lowering the bound to 1 closes the idle connections over it; with
	// that one in use, another Acquire fails with 53300 after the (also
	// reloaded) acquire timeout.
	tun.PoolSize = 1
	tun.AcquireTimeout = 200 * time.Millisecond
	if err := s.Reconfigure(tun); err != nil {
		t.Fatal(err)
	}
	rsPoll(t, 10*time.Second, "idle connections over the lowered bound closed", func() (bool, string) {
		n := backends()
		return n == 1, fmt.Sprintf("%d backends, pool %+v", n, rsStats(s, "primary").Pool)
	})
	l1 = acquire()
	first := pid(l1)
	if _, err := p.Acquire(ctx); !errors.Is(err, replica.ErrPoolExhausted) {
		t.Fatalf("Acquire over the lowered bound: %v, want ErrPoolExhausted", err)
	}
	l1.Release(nil)
	l1 = acquire()
	if again := pid(l1); again != first {
		t.Fatalf("no lifetime limit: backend %s, then %s (want the pooled one again)", first, again)
	}

	// A lifetime: a connection past it is closed when its lease ends,
	// never interrupted while in use, and the next lease gets a new one.
	tun.MaxConnLifetime = 500 * time.Millisecond
	if err := s.Reconfigure(tun); err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond)
	if again := pid(l1); again != first {
		t.Fatalf("a lease in use changed backend (%s, %s)", first, again)
	}
	l1.Release(nil)
	if n := backends(); n != 0 {
		t.Fatalf("%d backends after the expired connection's lease ended, want 0", n)
	}
	l1 = acquire()
	second := pid(l1)
	l1.Release(nil)
	if second == first {
		t.Fatal("an expired connection was leased again")
	}
	// Idle in the pool past its lifetime: the reaper closes it.
	rsPoll(t, 10*time.Second, "expired idle connection closed", func() (bool, string) {
		n := backends()
		return n == 0 && rsStats(s, "primary").Pool.Idle == 0, fmt.Sprintf("%d backends", n)
	})

	// An idle timeout shrinks the pool after a burst.
	tun.MaxConnLifetime = 0
	tun.MaxConnIdleTime = 300 * time.Millisecond
	tun.PoolSize = 3
	if err := s.Reconfigure(tun); err != nil {
		t.Fatal(err)
	}
	l1, l2, l3 = acquire(), acquire(), acquire()
	for _, l := range []*replica.Lease{l1, l2, l3} {
		pid(l)
		l.Release(nil)
	}
	if n := backends(); n != 3 {
		t.Fatalf("%d backends after a burst of 3, want 3", n)
	}
	rsPoll(t, 10*time.Second, "idle connections closed after the idle timeout", func() (bool, string) {
		n := backends()
		return n == 0, fmt.Sprintf("%d backends", n)
	})
	// Counted: 3 + 1 + 3 opened (the first two, the third, the replacement
	// of the expired one, the burst), 2 closed for their lifetime (one when
	// its lease ended, one while idle), 3 for idling (those closed over the
	// lowered bound are neither).
	if st := rsStats(s, "primary").Pool; st.Opened != 7 || st.ClosedLifetime != 2 || st.ClosedIdle != 3 {
		t.Errorf("pool counters: opened %d, closed for lifetime %d, for idling %d; want 7, 2, 3", st.Opened, st.ClosedLifetime, st.ClosedIdle)
	}
}

func testReplicaKill(t *testing.T, ctx context.Context, c *pgcluster.Cluster) {
	var mu sync.Mutex
	var changes []string
	s := rsNewSet(t, ctx, c, func(cfg *replica.Config) {
		cfg.HealthInterval = 200 * time.Millisecond
		cfg.Breaker.OpenFor = time.Second
		cfg.Hooks.OnBreakerChange = func(node string, from, to replica.BreakerState) {
			if node == "s1" {
				mu.Lock()
				changes = append(changes, to.String())
				mu.Unlock()
			}
		}
	})
	defer rsClose(t, s)
	sb := c.Standbys()[0]
	// Warm both pools.
	for range 20 {
		if _, _, err := rsRead(ctx, s, replica.PickRequest{}, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	// A reader runs through the whole kill/restart cycle: only reads that
	// were on s1 when it died may fail.
	readerCtx, stopReader := context.WithCancel(ctx)
	var readerWG sync.WaitGroup
	var readsOK, readsFailedS1 atomic.Int64
	readerWG.Add(1)
	go func() {
		defer readerWG.Done()
		for readerCtx.Err() == nil {
			var n *replica.Node
			l, err := s.AcquireRead(readerCtx, replica.PickRequest{})
			if err == nil {
				n = l.Node()
				_, err = rsQuery(readerCtx, l, "SELECT 1")
				l.Release(err)
			}
			switch {
			case err == nil:
				readsOK.Add(1)
			case readerCtx.Err() != nil:
			case n != nil && n.Name() == "s1":
				readsFailedS1.Add(1)
			default:
				name := "(no node)"
				if n != nil {
					name = n.Name()
				}
				t.Errorf("read on %s failed: %v", name, err)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	defer func() { stopReader(); readerWG.Wait() }()
	if err := sb.Kill(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	defer func() {
		if !restarted {
			_ = sb.Start(ctx)
		}
	}()
	rsPoll(t, 30*time.Second, "s1 breaker open", func() (bool, string) {
		st := rsStats(s, "s1")
		return st.Breaker == replica.BreakerOpen, fmt.Sprintf("%+v", st)
	})
	got := map[string]int{}
	for range 300 {
		n, v, err := rsRead(ctx, s, replica.PickRequest{}, "SELECT 1")
		if err != nil || v != "1" {
			t.Fatalf("read with s1 down: %v", err)
		}
		got[n.Name()]++
	}
	t.Logf("s1 killed, breaker open: 300 reads all succeeded: %v", got)
	if got["s1"] != 0 || got["s2"] < 250 {
		t.Fatalf("reads with s1 down: %v", got)
	}
	if err := sb.Start(ctx); err != nil {
		t.Fatal(err)
	}
	restarted = true
	rsPoll(t, 60*time.Second, "s1 back in rotation", func() (bool, string) {
		got := map[string]int{}
		for range 20 {
			n, _, err := rsRead(ctx, s, replica.PickRequest{}, "SELECT 1")
			if err != nil {
				return false, err.Error()
			}
			got[n.Name()]++
		}
		st := rsStats(s, "s1")
		return got["s1"] > 0 && st.Breaker == replica.BreakerClosed, fmt.Sprintf("%v %+v", got, st)
	})
	mu.Lock()
	seq := strings.Join(changes, ",")
	mu.Unlock()
	stopReader()
	readerWG.Wait()
	t.Logf("s1 breaker transitions: %s; background reader: %d ok, %d failed on s1 (in flight when it died, or half-open trials)", seq, readsOK.Load(), readsFailedS1.Load())
	if !strings.Contains(seq, "open,half_open") || !strings.HasSuffix(seq, "half_open,closed") {
		t.Fatalf("breaker transitions %s, want open ... half_open, closed", seq)
	}
}
