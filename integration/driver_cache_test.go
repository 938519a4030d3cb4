package integration

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbproxy/dbproxy/cache"
	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/driver"
	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
)

// TestDriverCache runs the driver with [cache] enabled against two shards
// of one primary and one streaming standby each: hits served without a
// backend, invalidation of writes made straight to PostgreSQL, causal
// readers among many writers, and a broken change stream.
func TestDriverCache(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	clusters := startDriverClusters(t, ctx, "drvcache", 2, 1)
	enableCacheStreams(t, ctx, clusters)
	cfg := driverConfig(t, clusters, "kv(k:int)", func(c *config.Config) {
		c.Cache.Enabled = true
		c.Cache.TTL = config.Duration(10 * time.Minute) // invalidation, not expiry, must drop entries here
	})
	env := openDriverEnv(t, clusters, cfg)
	env.db.SetMaxOpenConns(40)
	if _, err := env.db.ExecContext(ctx, `CREATE TABLE kv (k int PRIMARY KEY, v bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for k := 0; k < 100; k++ {
		if _, err := env.db.ExecContext(ctx, `INSERT INTO kv (k, v) VALUES ($1, 0)`, k); err != nil {
			t.Fatal(err)
		}
	}
	ce := newCacheEnv(t, ctx, env)
	t.Run("Hit", func(t *testing.T) { testDriverCacheHit(t, ctx, ce) })
	t.Run("DirectWriteDelay", func(t *testing.T) { testDriverCacheDelay(t, ctx, ce) })
	t.Run("CausalReaders", func(t *testing.T) { testDriverCacheCausal(t, ctx, ce) })
	t.Run("StreamInterrupted", func(t *testing.T) { testDriverCacheStreamBreak(t, ctx, ce) })
}

// enableCacheStreams lets user app open the cache's change streams on every
// primary (REPLICATION) and creates the FOR ALL TABLES publication, as
// dbproxy up does.
func enableCacheStreams(t testing.TB, ctx context.Context, clusters []*pgcluster.Cluster) {
	t.Helper()
	for _, c := range clusters {
		conn, err := c.Primary().Connect(ctx, "app")
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.Exec(ctx, `ALTER ROLE app REPLICATION`)
		if err == nil {
			_, err = conn.Exec(ctx, `CREATE PUBLICATION dbproxy_cache FOR ALL TABLES`)
		}
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
	}
}

// cacheEnv is a driverEnv with the cache on, and superuser connections to
// every primary for writes that bypass the driver.
type cacheEnv struct {
	*driverEnv
	cache   *cache.Cache
	direct  []*pgx.Conn // by shard ID
	directM []sync.Mutex
}

func newCacheEnv(t *testing.T, ctx context.Context, env *driverEnv) *cacheEnv {
	t.Helper()
	if err := env.db.PingContext(ctx); err != nil { // builds the runtime (and the cache)
		t.Fatal(err)
	}
	ce := &cacheEnv{driverEnv: env, cache: env.conn.Cache()}
	if ce.cache == nil {
		t.Fatal("cache enabled in the config but the connector has none")
	}
	for _, name := range []string{"s0", "s1"} {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := ce.cache.WaitUp(wctx, name)
		cancel()
		if err != nil {
			t.Fatalf("change stream of %s: %v", name, err)
		}
	}
	for _, c := range env.clusters {
		conn, err := c.Primary().Connect(ctx, "app")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		ce.direct = append(ce.direct, conn)
	}
	ce.directM = make([]sync.Mutex, len(ce.direct))
	return ce
}

// shardOf returns the shard ID and name holding key k of kv.
func (ce *cacheEnv) shardOf(t testing.TB, k int) (int, string) {
	t.Helper()
	id, err := ce.conn.Topology().Locate("kv", keyOf(int64(k)))
	if err != nil {
		t.Fatal(err)
	}
	return int(id), ce.conn.Topology().Shards()[id].Name
}

// directSet sets kv[k] = v on k's primary, bypassing dbproxy, and returns
// the primary's WAL position after the commit.
func (ce *cacheEnv) directSet(t testing.TB, ctx context.Context, k int, v int64) replica.LSN {
	t.Helper()
	id, _ := ce.shardOf(t, k)
	ce.directM[id].Lock()
	defer ce.directM[id].Unlock()
	if _, err := ce.direct[id].Exec(ctx, `UPDATE kv SET v = $2 WHERE k = $1`, k, v); err != nil {
		t.Fatal(err)
	}
	var s string
	if err := ce.direct[id].QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	lsn, err := replica.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// stream returns the stats of shard's change stream.
func (ce *cacheEnv) stream(shard string) cache.StreamStats {
	for _, s := range ce.cache.Stats().Streams {
		if s.Shard == shard {
			return s
		}
	}
	return cache.StreamStats{}
}

// read reads kv[k] through the driver.
func (ce *cacheEnv) read(ctx context.Context, k int) (int64, error) {
	var v int64
	err := ce.db.QueryRowContext(ctx, `SELECT v FROM kv WHERE k = $1`, k).Scan(&v)
	return v, err
}

// readUntilHit reads kv[k] until a read is served from the cache.
func (ce *cacheEnv) readUntilHit(t *testing.T, ctx context.Context, k int, want int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := ce.cache.Stats().Hits
		v, err := ce.read(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if v != want {
			t.Fatalf("kv[%d] = %d, want %d", k, v, want)
		}
		if ce.cache.Stats().Hits > before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no cache hit for kv[%d] within 10 s: %+v", k, ce.cache.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (ce *cacheEnv) nodeActivity() (picks uint64, inUse int) {
	for _, nodes := range ce.conn.Stats() {
		for _, n := range nodes {
			picks += n.Picks
			inUse += n.Pool.InUse
		}
	}
	return
}

func testDriverCacheHit(t *testing.T, ctx context.Context, ce *cacheEnv) {
	const k = 7
	ce.readUntilHit(t, ctx, k, 0)

	s0 := ce.cache.Stats()
	p0, _ := ce.nodeActivity()
	v, err := ce.read(ctx, k)
	if err != nil || v != 0 {
		t.Fatalf("read: %d %v", v, err)
	}
	s1 := ce.cache.Stats()
	p1, inUse := ce.nodeActivity()
	if s1.Hits != s0.Hits+1 || s1.Fills != s0.Fills || s1.Misses != s0.Misses {
		t.Fatalf("second read: hits %d->%d fills %d->%d misses %d->%d", s0.Hits, s1.Hits, s0.Fills, s1.Fills, s0.Misses, s1.Misses)
	}
	if p1 != p0 || inUse != 0 {
		t.Fatalf("a cache hit touched a backend: picks %d->%d, leases in use %d", p0, p1, inUse)
	}
	if st, ok := ce.conn.CacheStats(); !ok || st.Hits < s1.Hits {
		t.Fatalf("Connector.CacheStats %+v %v", st, ok)
	}

	// Column metadata survives the cache.
	rows, err := ce.db.QueryContext(ctx, `SELECT k, v, 'x'::text AS label FROM kv WHERE k = $1`, k)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // miss, then hit
		cols, _ := rows.Columns()
		types, _ := rows.ColumnTypes()
		if !slices.Equal(cols, []string{"k", "v", "label"}) || types[0].DatabaseTypeName() != "INT4" || types[2].DatabaseTypeName() != "TEXT" {
			t.Fatalf("columns %v %s %s", cols, types[0].DatabaseTypeName(), types[2].DatabaseTypeName())
		}
		var gk, gv int64
		var label string
		if !rows.Next() {
			t.Fatal("no row")
		}
		if err := rows.Scan(&gk, &gv, &label); err != nil || gk != k || gv != 0 || label != "x" || rows.Next() {
			t.Fatalf("row %d %d %q %v", gk, gv, label, err)
		}
		rows.Close()
		if i == 0 {
			if rows, err = ce.db.QueryContext(ctx, `SELECT k, v, 'x'::text AS label FROM kv WHERE k = $1`, k); err != nil {
				t.Fatal(err)
			}
		}
	}

	// nocache hint, WithPrimary and read-write transactions bypass it.
	s2 := ce.cache.Stats()
	var v2 int64
	if err := ce.db.QueryRowContext(ctx, `/* dbproxy:nocache */ SELECT v FROM kv WHERE k = $1`, k).Scan(&v2); err != nil {
		t.Fatal(err)
	}
	if err := ce.db.QueryRowContext(driver.WithPrimary(ctx), `SELECT v FROM kv WHERE k = $1`, k).Scan(&v2); err != nil {
		t.Fatal(err)
	}
	tx, err := ce.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRowContext(ctx, `SELECT v FROM kv WHERE k = $1`, k).Scan(&v2); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if s3 := ce.cache.Stats(); s3.Hits != s2.Hits || s3.Misses != s2.Misses {
		t.Fatalf("bypassing reads went through the cache: hits %d->%d misses %d->%d", s2.Hits, s3.Hits, s2.Misses, s3.Misses)
	}

	// A write through the driver: a read with its token shows it, and is
	// served from the cache again once the stream applied it.
	cctx, tr := driver.WithCausalTracking(ctx)
	if _, err := ce.db.ExecContext(cctx, `UPDATE kv SET v = 5 WHERE k = $1`, k); err != nil {
		t.Fatal(err)
	}
	tctx := driver.WithCausalToken(ctx, tr.Token())
	if v, err := ce.read(tctx, k); err != nil || v != 5 {
		t.Fatalf("read after own write: %d %v", v, err)
	}
	ce.readUntilHit(t, tctx, k, 5)
}

func testDriverCacheDelay(t *testing.T, ctx context.Context, ce *cacheEnv) {
	const trials = 100
	delays := make([]time.Duration, 0, trials)
	var staleAfterApplied int
	for i := 0; i < trials; i++ {
		k := 10 + i%20
		_, shard := ce.shardOf(t, k)
		cur, err := ce.read(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		ce.readUntilHit(t, ctx, k, cur)
		want := int64(1_000_000 + i)
		lsn := ce.directSet(t, ctx, k, want)
		start := time.Now()
		for {
			applied := ce.stream(shard).AppliedLSN
			v, err := ce.read(ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			if v == want {
				delays = append(delays, time.Since(start))
				break
			}
			if v != cur {
				t.Fatalf("trial %d: kv[%d] = %d, neither old %d nor new %d", i, k, v, cur, want)
			}
			if applied >= uint64(lsn) {
				staleAfterApplied++
				t.Errorf("trial %d: kv[%d] read the old value although the stream had applied %s >= %s before the read", i, k, replica.LSN(applied), lsn)
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("trial %d: kv[%d] still old 5 s after a direct write; stream %+v", i, k, ce.stream(shard))
			}
			time.Sleep(time.Millisecond)
		}
	}
	slices.Sort(delays)
	st := ce.cache.Stats()
	t.Logf("direct write -> new value through the driver, %d trials: median %v, p90 %v, worst %v; invalidation lag last %v ewma %v max %v; stale reads after the stream applied the write: %d",
		len(delays), delays[len(delays)/2], delays[len(delays)*9/10], delays[len(delays)-1],
		st.InvalidationLag.Last, st.InvalidationLag.EWMA, st.InvalidationLag.Max, staleAfterApplied)
}

// latest is the newest value of a key some writer committed, with the
// causal token of that write.
type latest struct {
	mu  sync.Mutex
	v   int64
	tok string
}

func (l *latest) set(v int64, tok string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if v > l.v {
		l.v, l.tok = v, tok
	}
}

func (l *latest) get() (int64, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.v, l.tok
}

func testDriverCacheCausal(t *testing.T, ctx context.Context, ce *cacheEnv) {
	const (
		keys          = 10
		base          = 40 // keys 40..49
		writers       = 6  // half through the driver, half direct
		writesEach    = 100
		readers       = 8
		readersPerKey = 2
	)
	known := make([]latest, keys)
	for i := range keys {
		if _, err := ce.db.ExecContext(ctx, `UPDATE kv SET v = 0 WHERE k = $1`, base+i); err != nil {
			t.Fatal(err)
		}
	}
	s0 := ce.cache.Stats()
	var (
		wg       sync.WaitGroup
		done     atomic.Bool
		reads    atomic.Int64
		stale    atomic.Int64
		errMu    sync.Mutex
		firstErr error
	)
	fail := func(err error) {
		errMu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		errMu.Unlock()
	}
	var writersWG sync.WaitGroup
	for w := range writers {
		writersWG.Add(1)
		go func() {
			defer writersWG.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			var conns []*pgx.Conn
			if w%2 == 1 { // direct writers: own connections to the primaries
				for _, c := range ce.clusters {
					conn, err := c.Primary().Connect(ctx, "app")
					if err != nil {
						fail(err)
						return
					}
					defer conn.Close(context.Background())
					conns = append(conns, conn)
				}
			}
			for range writesEach {
				i := rng.IntN(keys)
				k := base + i
				var v int64
				var tok string
				if conns == nil {
					wctx, tr := driver.WithCausalTracking(ctx)
					if err := ce.db.QueryRowContext(wctx, `UPDATE kv SET v = v + 1 WHERE k = $1 RETURNING v`, k).Scan(&v); err != nil {
						fail(fmt.Errorf("driver write: %w", err))
						return
					}
					tok = tr.Token()
				} else {
					id, err := ce.conn.Topology().Locate("kv", keyOf(int64(k)))
					if err != nil {
						fail(err)
						return
					}
					conn := conns[id]
					var s string
					if err := conn.QueryRow(ctx, `UPDATE kv SET v = v + 1 WHERE k = $1 RETURNING v`, k).Scan(&v); err != nil {
						fail(fmt.Errorf("direct write: %w", err))
						return
					}
					if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
						fail(err)
						return
					}
					lsn, err := replica.ParseLSN(s)
					if err != nil {
						fail(err)
						return
					}
					tok = router.CausalToken{}.With(ce.conn.Topology().Shards()[id].Name, lsn).String()
				}
				known[i].set(v, tok)
				time.Sleep(time.Duration(rng.IntN(4)) * time.Millisecond)
			}
		}()
	}
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 2))
			for !done.Load() {
				i := rng.IntN(keys)
				for range readersPerKey { // re-reads of a key are the hits
					want, tok := known[i].get()
					var v int64
					if err := ce.db.QueryRowContext(driver.WithCausalToken(ctx, tok), `SELECT v FROM kv WHERE k = $1`, base+i).Scan(&v); err != nil {
						fail(fmt.Errorf("read: %w", err))
						return
					}
					reads.Add(1)
					if v < want {
						stale.Add(1)
						fail(fmt.Errorf("kv[%d]: read %d with the token %q of a write that committed %d", base+i, v, tok, want))
					}
				}
			}
		}()
	}
	writersWG.Wait()
	done.Store(true)
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	s1 := ce.cache.Stats()
	hits, misses := s1.Hits-s0.Hits, s1.Misses-s0.Misses
	t.Logf("%d writers x %d writes, %d causal reads: %d hits, %d misses (%.0f%% hits), %d stored, %d raced fills, stale reads %d",
		writers, writesEach, reads.Load(), hits, misses, 100*float64(hits)/float64(max(hits+misses, 1)), s1.Stored-s0.Stored, s1.Raced-s0.Raced, stale.Load())
	if hits == 0 {
		t.Fatalf("no causal read was served from the cache (%d reads)", reads.Load())
	}
}

func testDriverCacheStreamBreak(t *testing.T, ctx context.Context, ce *cacheEnv) {
	const k = 60
	id, shard := ce.shardOf(t, k)
	cur, err := ce.read(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	ce.readUntilHit(t, ctx, k, cur)
	breaks := ce.stream(shard).Breaks

	admin, err := ce.clusters[id].Primary().Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	// Only the logical walsender (connected to a database): the standby's
	// physical one keeps streaming.
	var n int
	if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type = 'walsender' AND datname = 'app'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no logical walsender to terminate")
	}
	waitFor(t, 10*time.Second, "the change stream to notice the break", func() bool { return ce.stream(shard).Breaks > breaks })

	// Reads keep succeeding and are correct while the stream reconnects:
	// each carries the token of the direct write before it, so it must
	// show that write whether the stream is down (a miss: the backend
	// read waits for the token) or up again.
	downReads := 0
	var tctx context.Context
	for i := 0; i < 30; i++ {
		want := int64(2_000_000 + i)
		lsn := ce.directSet(t, ctx, k, want)
		tctx = driver.WithCausalToken(ctx, router.CausalToken{}.With(shard, lsn).String())
		for j := 0; j < 3; j++ {
			up := ce.stream(shard).Up
			v, err := ce.read(tctx, k)
			if err != nil {
				t.Fatalf("read during the stream break: %v", err)
			}
			if !up {
				downReads++
			}
			if v != want {
				t.Fatalf("round %d: read %d with the token of the write of %d (stream up: %v)", i, v, want, up)
			}
		}
		if i == 0 {
			if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'walsender' AND datname = 'app'`); err != nil {
				t.Fatal(err)
			}
		}
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := ce.cache.WaitUp(wctx, shard); err != nil {
		t.Fatalf("stream did not recover: %v", err)
	}
	ce.readUntilHit(t, tctx, k, 2_000_000+29)
	s := ce.stream(shard)
	t.Logf("stream of %s: %d breaks, up again since %v; %d correct reads while it was down", shard, s.Breaks, s.Since.Format(time.RFC3339Nano), downReads)
}

// BenchmarkDriverHotSet reads 1,000 hot keys through the driver with the
// result cache on, with it off, and through pgx's stdlib straight to the
// same PostgreSQL (one shard, no standby).
//
//	go test ./integration/ -run XXX -bench DriverHotSet -benchmem
func BenchmarkDriverHotSet(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	clusters := startDriverClusters(b, ctx, "drvhot", 1, 0)
	enableCacheStreams(b, ctx, clusters)
	on := openDriverEnv(b, clusters, driverConfig(b, clusters, "hot(id:int)", func(c *config.Config) { c.Cache.Enabled = true }))
	off := openDriverEnv(b, clusters, driverConfig(b, clusters, "hot(id:int)", nil))
	direct := directDB(b, clusters[0].Primary())
	if _, err := direct.ExecContext(ctx, `CREATE TABLE hot (id int PRIMARY KEY, v text NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	if _, err := direct.ExecContext(ctx, `INSERT INTO hot SELECT i, 'value-' || i FROM generate_series(0, 999) i`); err != nil {
		b.Fatal(err)
	}
	if err := on.db.PingContext(ctx); err != nil {
		b.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if err := on.conn.Cache().WaitUp(wctx, "s0"); err != nil {
		b.Fatal(err)
	}
	read := func(b *testing.B, db *sql.DB) {
		b.ReportAllocs()
		var v string
		i := 0
		for b.Loop() {
			if err := db.QueryRowContext(ctx, `SELECT v FROM hot WHERE id = $1`, i%1000).Scan(&v); err != nil {
				b.Fatal(err)
			}
			i++
		}
	}
	b.Run("pgx-stdlib", func(b *testing.B) { read(b, direct) })
	b.Run("dbproxy-cache-off", func(b *testing.B) { read(b, off.db) })
	b.Run("dbproxy-cache-on", func(b *testing.B) {
		s0, _ := on.conn.CacheStats()
		read(b, on.db)
		s1, _ := on.conn.CacheStats()
		hits, misses := s1.Hits-s0.Hits, s1.Misses-s0.Misses
		b.ReportMetric(float64(hits)/float64(max(hits+misses, 1)), "hit-fraction")
	})
}
