package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbproxy/dbproxy/internal/pgcluster"
)

// clusterCtx bounds one test's cluster operations: generous, because the
// machine is small and shared.
func clusterCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond every 50 ms until it returns true or d passes, then
// fails the test with what was last seen.
func eventually(t *testing.T, ctx context.Context, d time.Duration, what string, cond func(ctx context.Context) (bool, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var last string
	for {
		ok, seen := cond(ctx)
		if ok {
			return
		}
		last = seen
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not true within %v; last seen: %s", what, d, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func mustExec(t *testing.T, ctx context.Context, n *pgcluster.Node, sql string, args ...any) {
	t.Helper()
	conn, err := n.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %s: %v", n.Name, sql, err)
	}
}

// queryInt runs a one-integer query on n.
func queryInt(ctx context.Context, n *pgcluster.Node, sql string, args ...any) (int64, error) {
	conn, err := n.Connect(ctx, "postgres")
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var v int64
	err = conn.QueryRow(ctx, sql, args...).Scan(&v)
	return v, err
}

// waitCount waits until `SELECT count(*) FROM table` on n returns want.
func waitCount(t *testing.T, ctx context.Context, n *pgcluster.Node, table string, want int64) {
	t.Helper()
	eventually(t, ctx, 60*time.Second, fmt.Sprintf("%s has %d rows in %s", n.Name, want, table), func(ctx context.Context) (bool, string) {
		got, err := queryInt(ctx, n, "SELECT count(*) FROM "+table)
		if err != nil {
			return false, err.Error()
		}
		return got == want, fmt.Sprintf("%d rows", got)
	})
}

func waitStreaming(t *testing.T, ctx context.Context, c *pgcluster.Cluster) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := c.WaitStreaming(wctx); err != nil {
		t.Fatal(err)
	}
}

func TestClusterReplicatesToEveryStandby(t *testing.T) {
	ctx := clusterCtx(t)
	t0 := time.Now()
	c := pgcluster.StartT(t, pgcluster.Options{Name: "repl", Standbys: 2})
	t.Logf("fresh 1+2 cluster started in %v", time.Since(t0))
	waitStreaming(t, ctx, c)
	t.Logf("streaming after %v", time.Since(t0))

	if got := len(c.Standbys()); got != 2 {
		t.Fatalf("Standbys() = %d nodes, want 2", got)
	}
	names := map[string]bool{}
	for _, n := range c.Nodes() {
		names[n.Name] = true
		if n.Host != "127.0.0.1" || n.Port <= 0 {
			t.Errorf("%s at %s:%d", n.Name, n.Host, n.Port)
		}
	}
	for _, want := range []string{"repl-primary", "repl-standby1", "repl-standby2"} {
		if !names[want] {
			t.Errorf("no node %s among %v", want, names)
		}
	}

	// The primary sees each standby by name, streaming through its own slot.
	conn, err := c.Primary().Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, `SELECT r.application_name, s.slot_name FROM pg_stat_replication r
		JOIN pg_replication_slots s ON s.active_pid = r.pid ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var app, slot string
		err := r.Scan(&app, &slot)
		return app + "/" + slot, err
	})
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[repl-standby1/repl_standby1 repl-standby2/repl_standby2]" {
		t.Fatalf("replication connections (app/slot) = %v", got)
	}

	mustExec(t, ctx, c.Primary(), "CREATE TABLE t (id int PRIMARY KEY, v text)")
	mustExec(t, ctx, c.Primary(), "INSERT INTO t VALUES (1, 'hello')")
	for _, s := range c.Standbys() {
		eventually(t, ctx, 60*time.Second, s.Name+" reads the row", func(ctx context.Context) (bool, string) {
			conn, err := s.Connect(ctx, "postgres")
			if err != nil {
				return false, err.Error()
			}
			defer conn.Close(ctx)
			var v string
			err = conn.QueryRow(ctx, "SELECT v FROM t WHERE id = 1").Scan(&v)
			if err != nil {
				return false, err.Error()
			}
			return v == "hello", v
		})
		// Standbys are read-only.
		conn, err := s.Connect(ctx, "postgres")
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.Exec(ctx, "INSERT INTO t VALUES (2, 'nope')")
		conn.Close(ctx)
		if err == nil {
			t.Fatalf("%s accepted a write", s.Name)
		}
	}

	// CreateDatabase: a scram-authenticated owner, visible on the standbys.
	if err := c.CreateDatabase(ctx, "app", "app_user", "s3cret'pw"); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes() {
		dsn := fmt.Sprintf("host=%s port=%d user=app_user password=%s dbname=app sslmode=disable", n.Host, n.Port, "'s3cret\\'pw'")
		uconn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatalf("%s: connect as app_user: %v", n.Name, err)
		}
		uconn.Close(ctx)
		bad, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=app_user password=wrong dbname=app sslmode=disable", n.Host, n.Port))
		if err == nil {
			bad.Close(ctx)
			t.Fatalf("%s: wrong password accepted", n.Name)
		}
	}
}

func TestClusterReplayLagBytesAndTime(t *testing.T) {
	ctx := clusterCtx(t)
	c := pgcluster.StartT(t, pgcluster.Options{Name: "lag", Standbys: 2})
	waitStreaming(t, ctx, c)
	p, paused, live := c.Primary(), c.Standbys()[0], c.Standbys()[1]

	mustExec(t, ctx, p, "CREATE TABLE lag (id serial PRIMARY KEY, at timestamptz DEFAULT now())")
	mustExec(t, ctx, p, "INSERT INTO lag DEFAULT VALUES")
	waitCount(t, ctx, paused, "lag", 1) // a transaction has been replayed: the replay timestamp is set

	if err := paused.PauseReplay(ctx); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		mustExec(t, ctx, p, "INSERT INTO lag DEFAULT VALUES")
	}
	pl, err := p.LSNs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pl.InRecovery || pl.CurrentLSN == 0 || pl.Current == "" {
		t.Fatalf("primary LSNs %+v", pl)
	}

	// Byte lag: the paused standby receives the WAL but does not replay it.
	var first pgcluster.LSNs
	eventually(t, ctx, 60*time.Second, "paused standby received the WAL but lags in replay", func(ctx context.Context) (bool, string) {
		l, err := paused.LSNs(ctx)
		if err != nil {
			return false, err.Error()
		}
		first = l
		return l.InRecovery && l.ReplayPaused && l.ReceiveLSN >= pl.CurrentLSN && pl.CurrentLSN > l.ReplayLSN && l.ReplayDelay() > 0,
			fmt.Sprintf("%+v", l)
	})
	if byteLag := pl.CurrentLSN - first.ReplayLSN; byteLag == 0 {
		t.Fatalf("byte lag 0")
	} else {
		t.Logf("byte lag %d (primary %s, replay %s), time lag %v", byteLag, pl.Current, first.Replay, first.ReplayDelay())
	}
	if got, err := queryInt(ctx, paused, "SELECT count(*) FROM lag"); err != nil || got != 1 {
		t.Fatalf("paused standby sees %d rows (err %v), want 1", got, err)
	}
	// The unpaused standby keeps up meanwhile.
	waitCount(t, ctx, live, "lag", 6)

	// Time lag grows while replay stays paused.
	eventually(t, ctx, 30*time.Second, "time lag grows", func(ctx context.Context) (bool, string) {
		l, err := paused.LSNs(ctx)
		if err != nil {
			return false, err.Error()
		}
		return l.ReplayLSN == first.ReplayLSN && l.ReplayDelay() > first.ReplayDelay(),
			fmt.Sprintf("delay %v (first %v), replay %s", l.ReplayDelay(), first.ReplayDelay(), l.Replay)
	})

	if err := paused.ResumeReplay(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, 60*time.Second, "lag gone after resume", func(ctx context.Context) (bool, string) {
		l, err := paused.LSNs(ctx)
		if err != nil {
			return false, err.Error()
		}
		return !l.ReplayPaused && l.ReplayLSN >= pl.CurrentLSN && l.ReplayDelay() == 0, fmt.Sprintf("%+v", l)
	})
	waitCount(t, ctx, paused, "lag", 6)
}

func TestClusterKilledStandbyRestartsAndCatchesUp(t *testing.T) {
	ctx := clusterCtx(t)
	c := pgcluster.StartT(t, pgcluster.Options{Name: "kills", Standbys: 1})
	waitStreaming(t, ctx, c)
	p, s := c.Primary(), c.Standbys()[0]
	mustExec(t, ctx, p, "CREATE TABLE k (id int)")
	// An open session on the standby must not survive the kill.
	held, err := s.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close(context.WithoutCancel(ctx))

	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if s.Running() {
		t.Fatal("standby still running after Kill")
	}
	if err := s.Kill(); !errors.Is(err, pgcluster.ErrNotRunning) {
		t.Fatalf("second Kill: %v, want ErrNotRunning", err)
	}
	if _, err := held.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a session on the killed standby still answers")
	}
	if conn, err := s.Connect(ctx, "postgres"); err == nil {
		conn.Close(ctx)
		t.Fatal("connected to a killed standby")
	}
	mustExec(t, ctx, p, "INSERT INTO k SELECT generate_series(1, 1000)")

	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitCount(t, ctx, s, "k", 1000)
	waitStreaming(t, ctx, c)

	// A restarted primary: the standby reconnects and replicates new writes.
	if err := p.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, p, "INSERT INTO k SELECT generate_series(1, 10)")
	waitStreaming(t, ctx, c)
	waitCount(t, ctx, s, "k", 1010)

	// Stop and Start of a standby (fast shutdown path).
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if s.Running() {
		t.Fatal("standby running after Stop")
	}
	if err := c.WaitStreaming(ctx); err != nil {
		t.Fatalf("WaitStreaming with the standby stopped: %v", err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitStreaming(t, ctx, c)
}

func TestClusterKilledPrimaryIsNoticedAndStandbyPromotes(t *testing.T) {
	ctx := clusterCtx(t)
	c := pgcluster.StartT(t, pgcluster.Options{Name: "failp", Standbys: 2})
	waitStreaming(t, ctx, c)
	p, s1, s2 := c.Primary(), c.Standbys()[0], c.Standbys()[1]
	mustExec(t, ctx, p, "CREATE TABLE f (id int)")
	mustExec(t, ctx, p, "INSERT INTO f VALUES (1)")
	if err := c.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	waitCount(t, ctx, s1, "f", 1)
	waitCount(t, ctx, s2, "f", 1)

	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, 30*time.Second, "primary refuses connections", func(ctx context.Context) (bool, string) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		conn, err := p.Connect(cctx, "postgres")
		if err == nil {
			conn.Close(ctx)
			return false, "connected"
		}
		return true, ""
	})
	for _, s := range []*pgcluster.Node{s1, s2} {
		eventually(t, ctx, 30*time.Second, s.Name+"'s WAL receiver stops streaming", func(ctx context.Context) (bool, string) {
			conn, err := s.Connect(ctx, "postgres")
			if err != nil {
				return false, err.Error()
			}
			defer conn.Close(ctx)
			var status *string
			err = conn.QueryRow(ctx, "SELECT status FROM pg_stat_wal_receiver").Scan(&status)
			if errors.Is(err, pgx.ErrNoRows) {
				return true, ""
			}
			if err != nil {
				return false, err.Error()
			}
			return status == nil || *status != "streaming", fmt.Sprint(*status)
		})
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := c.WaitStreaming(wctx)
	cancel()
	if err == nil {
		t.Fatal("WaitStreaming succeeded with the primary dead")
	}

	// Fail over: promote standby1, repoint standby2 at it.
	if err := s1.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Leader() != s1 || s1.Upstream() != nil {
		t.Fatalf("after Promote: leader %s, %s upstream %v", c.Leader().Name, s1.Name, s1.Upstream())
	}
	l, err := s1.LSNs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if l.InRecovery || l.CurrentLSN == 0 {
		t.Fatalf("promoted standby LSNs %+v", l)
	}
	mustExec(t, ctx, s1, "INSERT INTO f VALUES (2)")
	if err := s2.Follow(ctx, s1); err != nil {
		t.Fatal(err)
	}
	if err := s1.Follow(ctx, s2); err == nil {
		t.Fatal("a promoted node agreed to follow a standby")
	}
	waitStreaming(t, ctx, c)
	waitCount(t, ctx, s2, "f", 2)
	if err := c.CreateDatabase(ctx, "after_failover", "", ""); err != nil {
		t.Fatal(err)
	}
	if got, err := queryInt(ctx, s2, "SELECT count(*) FROM pg_database WHERE datname = 'after_failover'"); err != nil || got != 1 {
		t.Fatalf("database created on the new leader not on its standby: %d, %v", got, err)
	}
}

func TestClusterReuseDir(t *testing.T) {
	ctx := clusterCtx(t)
	// Not t.TempDir(): that is private to root and the servers run as another user.
	dir, err := os.MkdirTemp("", "pgcluster-reuse-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	opts := pgcluster.Options{Dir: dir, Name: "keep", Standbys: 1, Logf: t.Logf}

	t0 := time.Now()
	c1, err := pgcluster.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	fresh := time.Since(t0)
	if c1.Reused() {
		t.Fatal("first start reported reuse")
	}
	ports := portsOf(c1)
	waitStreaming(t, ctx, c1)
	mustExec(t, ctx, c1.Primary(), "CREATE TABLE kept (v text)")
	mustExec(t, ctx, c1.Primary(), "INSERT INTO kept VALUES ('survives')")
	waitCount(t, ctx, c1.Standbys()[0], "kept", 1)
	if err := c1.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range c1.Nodes() {
		if n.Running() {
			t.Fatalf("%s running after Stop", n.Name)
		}
	}
	if _, err := os.Stat(c1.Primary().Dir); err != nil {
		t.Fatalf("given dir not kept: %v", err)
	}

	// Asking for fewer standbys than the directory holds is refused, and
	// leaves nothing running.
	if _, err := pgcluster.Start(ctx, pgcluster.Options{Dir: dir, Name: "keep", Standbys: 0}); !errors.Is(err, pgcluster.ErrLayout) {
		t.Fatalf("shrinking start: %v, want ErrLayout", err)
	}

	t1 := time.Now()
	c2 := pgcluster.StartT(t, opts)
	again := time.Since(t1)
	t.Logf("fresh 1+1 start %v; restart from the existing dir %v", fresh, again)
	if !c2.Reused() {
		t.Fatal("second start did not reuse the dir")
	}
	if got := portsOf(c2); fmt.Sprint(got) != fmt.Sprint(ports) {
		t.Fatalf("ports changed: %v -> %v", ports, got)
	}
	waitStreaming(t, ctx, c2)
	for _, n := range c2.Nodes() {
		got, err := queryInt(ctx, n, "SELECT count(*) FROM kept WHERE v = 'survives'")
		if err != nil || got != 1 {
			t.Fatalf("%s: kept rows %d, err %v", n.Name, got, err)
		}
	}
	mustExec(t, ctx, c2.Primary(), "INSERT INTO kept VALUES ('after')")
	waitCount(t, ctx, c2.Standbys()[0], "kept", 2)
	if err := c2.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	// Growing: a third start with one more standby keeps the first two nodes
	// and adds a new standby from the primary.
	c3 := pgcluster.StartT(t, pgcluster.Options{Dir: dir, Name: "keep", Standbys: 2, Logf: t.Logf})
	if got := portsOf(c3); fmt.Sprint(got[:2]) != fmt.Sprint(ports) || len(got) != 3 {
		t.Fatalf("ports after growing: %v (was %v)", got, ports)
	}
	waitStreaming(t, ctx, c3)
	waitCount(t, ctx, c3.Standbys()[1], "kept", 2)
}

func portsOf(c *pgcluster.Cluster) []int {
	var ports []int
	for _, n := range c.Nodes() {
		ports = append(ports, n.Port)
	}
	return ports
}

func TestClusterTwoConcurrentClusters(t *testing.T) {
	ctx := clusterCtx(t)
	var (
		wg       sync.WaitGroup
		clusters [2]*pgcluster.Cluster
		errs     [2]error
	)
	for i := range clusters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			clusters[i], errs[i] = pgcluster.Start(ctx, pgcluster.Options{Name: fmt.Sprintf("shard%d", i), Standbys: 1, Logf: t.Logf})
		}()
	}
	wg.Wait()
	for i, c := range clusters {
		if c != nil {
			t.Cleanup(func() { _ = c.Stop(context.Background()) })
		}
		if errs[i] != nil {
			t.Fatalf("cluster %d: %v", i, errs[i])
		}
	}
	seen := map[int]string{}
	for _, c := range clusters {
		if c.Dir() == clusters[0].Dir() && c != clusters[0] {
			t.Fatal("clusters share a directory")
		}
		for _, n := range c.Nodes() {
			if other, dup := seen[n.Port]; dup {
				t.Fatalf("port %d used by %s and %s", n.Port, other, n.Name)
			}
			seen[n.Port] = n.Name
		}
		waitStreaming(t, ctx, c)
	}
	for i, c := range clusters {
		mustExec(t, ctx, c.Primary(), fmt.Sprintf("CREATE TABLE only_%d (id int)", i))
		mustExec(t, ctx, c.Primary(), fmt.Sprintf("INSERT INTO only_%d VALUES (%d)", i, i))
	}
	for i, c := range clusters {
		waitCount(t, ctx, c.Standbys()[0], fmt.Sprintf("only_%d", i), 1)
		other := 1 - i
		if _, err := queryInt(ctx, c.Primary(), fmt.Sprintf("SELECT count(*) FROM only_%d", other)); err == nil {
			t.Fatalf("cluster %d sees cluster %d's table", i, other)
		}
	}

	// Stop removes the temporary directory, leaves the ports free, and is idempotent.
	c := clusters[0]
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if _, err := os.Stat(c.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temp dir after Stop: %v", err)
	}
	for _, n := range c.Nodes() {
		if conn, err := n.Connect(ctx, "postgres"); err == nil {
			conn.Close(ctx)
			t.Fatalf("%s still accepts connections after Stop", n.Name)
		}
	}
	if err := c.Primary().Start(ctx); !errors.Is(err, pgcluster.ErrStopped) {
		t.Fatalf("Start after cluster Stop: %v, want ErrStopped", err)
	}
	// The other cluster is unaffected.
	if got, err := queryInt(ctx, clusters[1].Standbys()[0], "SELECT count(*) FROM only_1"); err != nil || got != 1 {
		t.Fatalf("second cluster after first stopped: %d, %v", got, err)
	}
}
