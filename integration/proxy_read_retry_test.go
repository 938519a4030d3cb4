package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/shard"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestProxyReadsSurviveStandbyFailure checks that reads outside a
// transaction do not fail when their standby does, on one shard of a
// primary and two streaming standbys, over the simple protocol (with
// literals, which the proxy sends parameterized, and without) and the
// extended protocol (the unnamed statement, and a named prepared one):
//
//   - the backends of both standbys the reads used are terminated
//     (pg_terminate_backend, FATAL 57P01) while the proxy holds them idle
//     in its pools: the next reads, sent on those dead connections, are
//     answered from elsewhere;
//   - both standbys crash (SIGKILL of every server process), one after the
//     other, under a continuous read load from 8 clients: no client sees
//     an error, and once both are down the primary answers;
//   - then the primary's backends are terminated: the reads that land on
//     it run again on new connections.
func TestProxyReadsSurviveStandbyFailure(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cl, env := startReadShard(t, ctx, pgcluster.Options{Name: "readretry", Standbys: 2}, "rr")

	const clients = 8
	conns := make([]*pgconn.PgConn, clients)
	for i := range conns {
		conns[i] = connectProxy(t, env)
		if i >= 6 {
			if _, err := conns[i].Prepare(ctx, "rr_get", "SELECT v FROM rr WHERE id = $1", nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	// read runs one read on client i and checks its answer: clients 0-3
	// over the simple protocol, 4-5 the unnamed statement, 6-7 rr_get.
	read := func(i, n int) error {
		id := n%100 + 1
		sql := fmt.Sprintf("SELECT v FROM rr WHERE id = %d", id)
		want := fmt.Sprintf("v%d", id)
		var rows [][][]byte
		var err error
		switch {
		case i < 4 && n%3 == 0:
			sql, want = "SELECT count(*) FROM rr WHERE id > 0", "100" // sent as is (no parameter)
			fallthrough
		case i < 4:
			var res []*pgconn.Result
			if res, err = conns[i].Exec(ctx, sql).ReadAll(); err == nil && len(res) == 1 {
				rows = res[0].Rows
			}
		case i < 6:
			sql = "SELECT v FROM rr WHERE id = $1"
			r := conns[i].ExecParams(ctx, sql, [][]byte{fmt.Appendf(nil, "%d", id)}, nil, nil, nil).Read()
			rows, err = r.Rows, r.Err
		default:
			sql = "EXECUTE rr_get"
			r := conns[i].ExecPrepared(ctx, "rr_get", [][]byte{fmt.Appendf(nil, "%d", id)}, nil, nil).Read()
			rows, err = r.Rows, r.Err
		}
		if err != nil {
			return fmt.Errorf("%s (id %d): %w", sql, id, err)
		}
		if len(rows) != 1 || string(rows[0][0]) != want {
			return fmt.Errorf("%s (id %d): got %q, want %s", sql, id, rows, want)
		}
		return nil
	}
	readAll := func(round int) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, clients)
		for i := range clients {
			wg.Go(func() {
				for n := range 20 {
					if err := read(i, round*100+n); err != nil {
						errs[i] = err
						return
					}
				}
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("client %d: %v", i, err)
			}
		}
	}
	retries := func() uint64 { return env.srv.Stats().ReadRetries }

	// Warm the standbys' pools, then terminate every app backend on them.
	readAll(0)
	if n := poolIdle(env, "standby"); n == 0 {
		t.Fatal("no idle standby connection pooled after the warm-up")
	}
	before := retries()
	for _, sb := range cl.Standbys() {
		terminateApp(t, ctx, sb)
	}
	readAll(1)
	if retries() == before {
		t.Fatal("reads on terminated backends: Stats().ReadRetries did not move")
	}
	t.Logf("terminated backends: %d reads sent again", retries()-before)

	// Crash the standbys one after the other under load.
	before = retries()
	load := startReadLoad(clients, read)
	defer load.halt()
	waitProgress := func(what string) { t.Helper(); load.waitProgress(t, what, 30*time.Second) }
	waitProgress("before the crashes")
	primaryReads := primaryFallbacks(env)
	for _, sb := range cl.Standbys() {
		if err := sb.Kill(); err != nil {
			t.Fatal(err)
		}
		waitProgress("after " + sb.Name + " crashed")
	}
	waitProgress("with both standbys down")
	if err := load.halt(); err != nil {
		t.Fatal(err)
	}
	if retries() == before {
		t.Fatal("standby crashes under load: Stats().ReadRetries did not move")
	}
	if primaryFallbacks(env) == primaryReads {
		t.Fatal("both standbys down, yet the primary answered no read")
	}
	t.Logf("crashes: %d reads sent again, %v reads per client", retries()-before, load.progress())

	// The reads now land on the primary: terminate its app backends too.
	before = retries()
	terminateApp(t, ctx, cl.Primary())
	readAll(2)
	if retries() == before {
		t.Fatal("reads on the primary's terminated backends: Stats().ReadRetries did not move")
	}
}

// terminateApp ends the backends of user app on node n that read table
// rr last, i.e. the proxy's pooled connections the clients' reads used,
// and not its probes' (pg_terminate_backend: FATAL 57P01 to each): the
// proxy finds them dead only by using them.
func terminateApp(t *testing.T, ctx context.Context, n *pgcluster.Node) {
	t.Helper()
	conn, err := n.Connect(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var killed int
	if err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE usename = 'app' AND backend_type = 'client backend' AND query LIKE '%FROM rr%'`).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed == 0 {
		t.Fatalf("%s: no app backend to terminate", n.Name)
	}
}

// poolIdle sums the idle pooled connections of env's nodes whose name
// contains role.
func poolIdle(env *proxyEnv, role string) int {
	n := 0
	for _, ns := range env.sets[shard.ID(0)].Stats() {
		if strings.Contains(ns.Name, role) {
			n += ns.Pool.Idle
		}
	}
	return n
}

// primaryFallbacks is the number of reads shard 0's primary took because
// no standby qualified.
func primaryFallbacks(env *proxyEnv) uint64 {
	for _, ns := range env.sets[shard.ID(0)].Stats() {
		if strings.Contains(ns.Name, "primary") {
			return ns.Fallbacks
		}
	}
	return 0
}

// TestProxyReadRetriedAfterRecoveryConflict: a read the standby cancels
// for a conflict with recovery (max_standby_streaming_delay = 0 and an
// ACCESS EXCLUSIVE lock taken on the primary while it runs) is answered
// through the proxy, simple and extended protocol alike.
func TestProxyReadRetriedAfterRecoveryConflict(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cl, env := startOneShardProxy(t, ctx, conflictClusterOptions("conflict"))
	setup := connectProxy(t, env)
	simple(t, setup, "CREATE TABLE cf (id int)")
	simple(t, setup, "INSERT INTO cf SELECT generate_series(1, 10)")
	for _, proto := range []string{"simple", "extended"} {
		t.Run(proto, func(t *testing.T) {
			pc := connectProxy(t, env)
			beforeRetries := env.srv.Stats().ReadRetries
			runConflictScenario(t, ctx, cl, func() (string, error) {
				var rs [][][]byte
				if proto == "simple" {
					res, err := pc.Exec(ctx, "SELECT count(*) FROM cf, generate_series(1, 8000000) g").ReadAll()
					if err != nil {
						return "", err
					}
					rs = res[0].Rows
				} else {
					r := pc.ExecParams(ctx, "SELECT count(*) FROM cf, generate_series(1, $1) g", [][]byte{[]byte("8000000")}, nil, nil, nil).Read()
					if r.Err != nil {
						return "", r.Err
					}
					rs = r.Rows
				}
				if len(rs) != 1 {
					return "", fmt.Errorf("%d rows", len(rs))
				}
				return string(rs[0][0]), nil
			})
			if env.srv.Stats().ReadRetries == beforeRetries {
				t.Fatal("Stats().ReadRetries did not move")
			}
		})
	}
}

// TestDriverReadRetriedAfterRecoveryConflict is the same through the
// database/sql driver: the conflict cancels the read before its row
// reaches the caller, and the driver runs it again.
func TestDriverReadRetriedAfterRecoveryConflict(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cl := pgcluster.StartT(t, conflictClusterOptions("dconflict"))
	if err := cl.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cl.CreateDatabase(ctx, "app", "app", "app"); err != nil {
		t.Fatal(err)
	}
	env := openDriverEnv(t, []*pgcluster.Cluster{cl}, driverConfig(t, []*pgcluster.Cluster{cl}, "", nil))
	if _, err := env.db.ExecContext(ctx, "CREATE TABLE cf (id int)"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.db.ExecContext(ctx, "INSERT INTO cf SELECT generate_series(1, 10)"); err != nil {
		t.Fatal(err)
	}
	for _, how := range []string{"literal", "parameter"} {
		t.Run(how, func(t *testing.T) {
			runConflictScenario(t, ctx, cl, func() (string, error) {
				var n string
				var err error
				if how == "literal" {
					err = env.db.QueryRowContext(ctx, "SELECT count(*) FROM cf, generate_series(1, 8000000) g").Scan(&n)
				} else {
					err = env.db.QueryRowContext(ctx, "SELECT count(*) FROM cf, generate_series(1, $1::int) g", 8000000).Scan(&n)
				}
				return n, err
			})
		})
	}
}

// conflictClusterOptions: one standby that cancels conflicting queries at
// once.
func conflictClusterOptions(name string) pgcluster.Options {
	return pgcluster.Options{Name: name, Standbys: 1,
		Settings: map[string]string{"max_standby_streaming_delay": "0", "hot_standby_feedback": "off"}}
}

// runConflictScenario runs read (a count over table cf, 10 rows, joined
// with 8,000,000: a few seconds) while the primary takes an ACCESS
// EXCLUSIVE lock on cf, which the standby replays by cancelling the read;
// read must still return the right count, and the standby must have
// cancelled a query (pg_stat_database_conflicts.confl_lock).
func runConflictScenario(t *testing.T, ctx context.Context, cl *pgcluster.Cluster, read func() (string, error)) {
	t.Helper()
	sb := cl.Standbys()[0]
	standby, err := sb.Connect(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	defer standby.Close(ctx)
	waitFor(t, 30*time.Second, "the standby replaying cf", func() bool {
		var n int
		return standby.QueryRow(ctx, "SELECT count(*) FROM cf").Scan(&n) == nil && n == 10
	})
	primary, err := cl.Primary().Connect(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	defer primary.Close(ctx)
	conflicts := func() int64 {
		var n int64
		if err := standby.QueryRow(ctx, "SELECT confl_lock FROM pg_stat_database_conflicts WHERE datname = 'app'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := conflicts()
	type answer struct {
		count string
		err   error
	}
	got := make(chan answer, 1)
	start := time.Now()
	go func() {
		n, err := read()
		got <- answer{n, err}
	}()
	// Once the read runs on the standby, take the lock on the primary.
	waitFor(t, 30*time.Second, "the read running on the standby", func() bool {
		var n int
		err := standby.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT count(*) FROM cf%'").Scan(&n)
		return err == nil && n > 0
	})
	if _, err := primary.Exec(ctx, "BEGIN; LOCK TABLE cf IN ACCESS EXCLUSIVE MODE; COMMIT"); err != nil {
		t.Fatal(err)
	}
	a := <-got
	if a.err != nil {
		t.Fatalf("read: %v", a.err)
	}
	if want := fmt.Sprint(10 * 8_000_000); a.count != want {
		t.Fatalf("count %s, want %s", a.count, want)
	}
	if conflicts() == before {
		t.Fatalf("the standby cancelled no query (confl_lock unchanged): the read ended before the lock was replayed (%v)", time.Since(start))
	}
	t.Logf("answered after a recovery conflict in %v", time.Since(start))
}

// startOneShardProxy starts a cluster as opts says, with database app
// owned by user app, streaming to its standbys, and a proxy over it as
// the only shard.
func startOneShardProxy(t *testing.T, ctx context.Context, opts pgcluster.Options) (*pgcluster.Cluster, *proxyEnv) {
	t.Helper()
	cl := pgcluster.StartT(t, opts)
	if err := cl.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cl.CreateDatabase(ctx, "app", "app", "app"); err != nil {
		t.Fatal(err)
	}
	return cl, startProxyEnv(t, ctx, []*pgcluster.Cluster{cl}, nil)
}

// startReadShard is startOneShardProxy with a table (id int PRIMARY KEY,
// v text) holding rows 1-100 (v = 'v' || id), replayed on every standby.
func startReadShard(t *testing.T, ctx context.Context, opts pgcluster.Options, table string) (*pgcluster.Cluster, *proxyEnv) {
	t.Helper()
	cl, env := startOneShardProxy(t, ctx, opts)
	setup := connectProxy(t, env)
	simple(t, setup, "CREATE TABLE "+table+" (id int PRIMARY KEY, v text)")
	simple(t, setup, "INSERT INTO "+table+" SELECT i, 'v' || i FROM generate_series(1, 100) i")
	for _, sb := range cl.Standbys() {
		conn, err := sb.Connect(ctx, "app")
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, sb.Name+" replaying the rows", func() bool {
			var n int
			return conn.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n) == nil && n == 100
		})
		_ = conn.Close(ctx)
	}
	return cl, env
}

// readLoad runs reads from several clients at once until halted and
// counts each client's reads.
type readLoad struct {
	stop atomic.Bool
	wg   sync.WaitGroup
	done []atomic.Int64
	mu   sync.Mutex
	errs []error
}

// startReadLoad starts one goroutine per client, each calling read(i, n)
// for n = 0, 1, ... until halt or its first error.
func startReadLoad(clients int, read func(i, n int) error) *readLoad {
	l := &readLoad{done: make([]atomic.Int64, clients), errs: make([]error, clients)}
	for i := range clients {
		l.wg.Go(func() {
			for n := 0; !l.stop.Load(); n++ {
				if err := read(i, n); err != nil {
					l.mu.Lock()
					l.errs[i] = err
					l.mu.Unlock()
					return
				}
				l.done[i].Add(1)
			}
		})
	}
	return l
}

// halt stops the clients, waits for them and returns the first error one
// of them met. Calling it again only returns that error.
func (l *readLoad) halt() error {
	l.stop.Store(true)
	l.wg.Wait()
	return l.err()
}

func (l *readLoad) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, err := range l.errs {
		if err != nil {
			return fmt.Errorf("client %d: %w", i, err)
		}
	}
	return nil
}

// progress returns each client's count of reads.
func (l *readLoad) progress() []int64 {
	out := make([]int64, len(l.done))
	for i := range out {
		out[i] = l.done[i].Load()
	}
	return out
}

// waitProgress fails t unless every client makes 20 more reads within the
// given time, none of them meeting an error. The caller halts the load
// (a read stuck on a server that does not answer holds halt until it
// ends).
func (l *readLoad) waitProgress(t *testing.T, what string, within time.Duration) {
	t.Helper()
	from := l.progress()
	deadline := time.Now().Add(within)
	for {
		if err := l.err(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		now, ok := l.progress(), true
		for i := range now {
			if now[i] < from[i]+20 {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: clients stalled at %v (from %v) for %v", what, now, from, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
