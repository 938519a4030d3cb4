package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/cache"
	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/proxy"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestProxyCache runs the proxy with a result cache over two shards of
// one primary and one streaming standby each: repeated reads are served
// from memory in every query mode, writes made straight to PostgreSQL
// reach readers within a bound, the proxy's own writes are read back by
// their session, and pgbench hot-set reads are mostly hits.
func TestProxyCache(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	clusters := startProxyClusters(t, ctx)
	enableCacheStreams(t, ctx, clusters)
	cc := startProxyCache(t, ctx, clusters)
	env := startProxyEnv(t, ctx, clusters, nil, func(d *proxy.Deps) { d.Cache = cc })

	setup, err := pgx.Connect(ctx, env.dsn(""))
	if err != nil {
		t.Fatal(err)
	}
	defer setup.Close(ctx)
	for _, q := range []string{
		`CREATE TABLE items (id int PRIMARY KEY, v bigint NOT NULL, name text, price numeric(10,2), at timestamptz, tags int[])`,
		`INSERT INTO items SELECT g, g * 10, 'item ' || g, g + 0.25, '2024-01-02 03:04:05+00'::timestamptz + g * interval '1 day', ARRAY[g, g+1] FROM generate_series(1, 200) g`,
	} {
		if _, err := setup.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// The setup's commits invalidate items when the change stream applies
	// them; wait for that so entries filled from now on stay valid.
	waitCacheApplied(t, ctx, cc, clusters)
	t.Run("Hit", func(t *testing.T) { testProxyCacheHit(t, ctx, env, cc, clusters) })
	t.Run("ReloadOffOn", func(t *testing.T) { testProxyCacheReload(t, ctx, env, cc) })
	t.Run("DDL", func(t *testing.T) { testProxyCacheDDL(t, ctx, env, cc) })
	t.Run("Settings", func(t *testing.T) { testProxyCacheSettings(t, ctx, env, cc) })
	t.Run("WireExact", func(t *testing.T) { testProxyCacheWire(t, ctx, env, cc, clusters) })
	t.Run("DirectWriteDelay", func(t *testing.T) { testProxyCacheDelay(t, ctx, env, cc, clusters) })
	t.Run("ProxyWrite", func(t *testing.T) { testProxyCacheProxyWrite(t, ctx, env, cc) })
	t.Run("SessionPooling", func(t *testing.T) {
		senv := startProxyEnv(t, ctx, clusters, func(c *proxy.Config) { c.PoolMode = proxy.PoolSession }, func(d *proxy.Deps) { d.Cache = cc })
		testProxyCacheSession(t, ctx, senv, cc)
	})
	t.Run("Pgbench", func(t *testing.T) { testProxyCachePgbench(t, ctx, env, cc) })
	t.Run("PerUser", func(t *testing.T) {
		uenv := startProxyEnv(t, ctx, clusters, func(c *proxy.Config) {
			c.Users = append(c.Users, proxy.User{Name: "cache_reader", Password: "cr"})
		}, func(d *proxy.Deps) { d.Cache = cc })
		testProxyCachePerUser(t, ctx, uenv, cc, clusters)
	})
	t.Run("OtherDatabase", func(t *testing.T) { testProxyCacheOtherDatabase(t, ctx, cc, clusters) })
}

// testProxyCacheOtherDatabase: clients of a second database read through
// the cache under that database's own change streams (proxy.CacheShard):
// their reads hit, a write made straight on the primary in that database
// (which only its stream sees) invalidates, and the same statement in the
// home database gets the home database's rows.
func testProxyCacheOtherDatabase(t *testing.T, ctx context.Context, cc *cache.Cache, clusters []*pgcluster.Cluster) {
	const db = "cache_other"
	var direct *pgx.Conn // superuser, s0's primary, database db
	for i, c := range clusters {
		if err := c.CreateDatabase(ctx, db, "app", "app"); err != nil {
			t.Fatal(err)
		}
		admin, err := c.Primary().Connect(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { admin.Close(context.Background()) })
		qs := []string{"CREATE PUBLICATION dbproxy_cache FOR ALL TABLES"}
		if i == 0 { // unsharded tables live on s0
			direct = admin
			qs = append(qs, "CREATE TABLE db_kv (k int PRIMARY KEY, v text)", "ALTER TABLE db_kv OWNER TO app", "INSERT INTO db_kv VALUES (1, 'other')")
		}
		for _, q := range qs {
			if _, err := admin.Exec(ctx, q); err != nil {
				t.Fatalf("%s: %s: %v", c.Name(), q, err)
			}
		}
		p := c.Primary()
		sc := cache.DefaultStreamConfig()
		sc.Shard = proxy.CacheShard(fmt.Sprintf("s%d", i), db, "app")
		sc.ConnString = fmt.Sprintf("host=%s port=%d user=app password=app dbname=%s sslmode=disable", p.Host, p.Port, db)
		sc.Publication = "dbproxy_cache"
		if err := cc.Watch(ctx, sc); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		err = cc.WaitUp(wctx, sc.Shard)
		cancel()
		if err != nil {
			t.Fatalf("stream %s: %v", sc.Shard, err)
		}
	}
	home, err := clusters[0].Primary().Connect(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	defer home.Close(ctx)
	for _, q := range []string{"CREATE TABLE db_kv (k int PRIMARY KEY, v text)", "ALTER TABLE db_kv OWNER TO app", "INSERT INTO db_kv VALUES (1, 'app')"} {
		if _, err := home.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if err := clusters[0].WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	env := startProxyEnvWith(t, ctx, clusters, nil, func(c *proxy.Config) { c.Databases = []string{"app", db} },
		func(d *proxy.Deps) { d.Cache = cc; d.HomeDatabase = "app" })
	connect := func(database string) *pgx.Conn {
		conn, err := pgx.Connect(ctx, env.urlAs("app", "app", database))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	other, app := connect(db), connect("app")
	read := func(conn *pgx.Conn) string {
		t.Helper()
		var v string
		if err := conn.QueryRow(ctx, "SELECT v FROM db_kv WHERE k = 1").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	hit := false
	for try := 0; try < 50 && !hit; try++ {
		s0, p0 := cc.Stats(), env.picks()
		if v := read(other); v != "other" {
			t.Fatalf("read %d in %s: %q", try, db, v)
		}
		s1, p1 := cc.Stats(), env.picks()
		hit = s1.Hits == s0.Hits+1 && p1 == p0
		if !hit {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !hit {
		t.Fatalf("no cache hit in database %s within 50 reads: %+v", db, cc.Stats())
	}
	if v := read(app); v != "app" {
		t.Errorf("the same read in database app: %q, want app's row", v)
	}
	// The cache's TTL is 10 minutes: only the stream of db can drop the
	// entry.
	if _, err := direct.Exec(ctx, "UPDATE db_kv SET v = 'other2' WHERE k = 1"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for v := read(other); v != "other2"; v = read(other) {
		if time.Now().After(deadline) {
			t.Fatalf("read in %s still %q 10 s after a direct UPDATE; stats %+v", db, v, cc.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Without db's stream on s0 its reads are not served from the cache,
	// though the home database's stream of s0 is up.
	if err := cc.Unwatch(ctx, proxy.CacheShard("s0", db, "app")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		s0, p0 := cc.Stats(), env.picks()
		if v := read(other); v != "other2" {
			t.Fatalf("read in %s after its stream stopped: %q", db, v)
		}
		if s1, p1 := cc.Stats(), env.picks(); s1.Hits != s0.Hits || p1 != p0+1 {
			t.Fatalf("read in %s served from the cache (hits %d -> %d, picks %d -> %d) while its stream is stopped", db, s0.Hits, s1.Hits, p0, p1)
		}
	}
	// A database left out of Deps.CacheDatabases (cache.databases) does
	// not go through the cache at all: no lookups, no fills.
	benv := startProxyEnvWith(t, ctx, clusters, nil, func(c *proxy.Config) { c.Databases = []string{"app", db} },
		func(d *proxy.Deps) { d.Cache = cc; d.HomeDatabase = "app"; d.CacheDatabases = []string{"app"} })
	bypass, err := pgx.Connect(ctx, benv.urlAs("app", "app", db))
	if err != nil {
		t.Fatal(err)
	}
	defer bypass.Close(ctx)
	s0 := cc.Stats()
	for i := 0; i < 3; i++ {
		if v := read(bypass); v != "other2" {
			t.Fatalf("read in %s through a proxy that does not cache it: %q", db, v)
		}
	}
	if s1 := cc.Stats(); s1.Hits+s1.Misses != s0.Hits+s0.Misses {
		t.Errorf("reads in %s, which is not among the cache's databases, looked the cache up: %+v -> %+v", db, s0, s1)
	}
}

// testProxyCachePerUser: a result cached for one user is not served to
// another, who runs the read under its own privileges.
func testProxyCachePerUser(t *testing.T, ctx context.Context, env *proxyEnv, cc *cache.Cache, clusters []*pgcluster.Cluster) {
	for _, c := range clusters {
		if err := c.CreateDatabase(ctx, "app", "cache_reader", "cr"); err != nil { // creates the role
			t.Fatal(err)
		}
		if err := c.WaitCaughtUp(ctx); err != nil {
			t.Fatal(err)
		}
	}
	app, err := pgx.Connect(ctx, env.dsn(""))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	reader, err := pgx.Connect(ctx, env.urlAs("cache_reader", "cr", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close(ctx)
	const id = 77
	hit := false
	for try := 0; try < 50 && !hit; try++ {
		s0 := cc.Stats()
		if _, err := readItem(ctx, app, id); err != nil {
			t.Fatal(err)
		}
		hit = cc.Stats().Hits == s0.Hits+1
	}
	if !hit {
		t.Fatalf("app's read of item %d is not served from the cache: %+v", id, cc.Stats())
	}
	s0 := cc.Stats()
	if _, err := readItem(ctx, reader, id); errCode(err) != "42501" {
		t.Errorf("a user without SELECT on items reads app's cached item: %v; want 42501", err)
	}
	if cc.Stats().Hits != s0.Hits {
		t.Errorf("the other user's read was a cache hit")
	}
	primary, err := clusters[0].Primary().Connect(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	defer primary.Close(ctx)
	if _, err := primary.Exec(ctx, "GRANT SELECT ON items TO cache_reader"); err != nil {
		t.Fatal(err)
	}
	if err := clusters[0].WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	s0 = cc.Stats()
	if r, err := readItem(ctx, reader, id); err != nil || r.id != id {
		t.Errorf("read after the grant: %+v, %v", r, err)
	}
	if cc.Stats().Hits != s0.Hits {
		t.Errorf("the other user's first read was a hit on app's entry")
	}
}

// testProxyCacheSession checks hits while the client keeps a parked
// backend (session pooling), and read-your-writes on that backend.
func testProxyCacheSession(t *testing.T, ctx context.Context, env *proxyEnv, cc *cache.Cache) {
	// Each mode's session starts from the last one's causal token, as an
	// application hands it on: a fresh session without it may read a
	// standby that has not replayed the last session's writes yet.
	token := ""
	for _, mode := range []string{"simple_protocol", "cache_statement"} {
		t.Run(mode, func(t *testing.T) {
			conn, err := pgx.Connect(ctx, env.dsn("default_query_exec_mode="+mode))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			defer func() { token = conn.PgConn().ParameterStatus("dbproxy.causal_token") }()
			if token != "" {
				if _, err := conn.Exec(ctx, "SET dbproxy.causal_token = '"+token+"'"); err != nil {
					t.Fatal(err)
				}
			}
			const id = 9
			// A statement that keeps a backend parked for the session.
			if _, err := conn.Exec(ctx, `SELECT 1`); err != nil {
				t.Fatal(err)
			}
			first, err := readItem(ctx, conn, id)
			if err != nil {
				t.Fatal(err)
			}
			hits := 0
			for n := 0; n < 30; n++ {
				s0 := cc.Stats()
				got, err := readItem(ctx, conn, id)
				if err != nil {
					t.Fatal(err)
				}
				if !sameItem(got, first) {
					t.Fatalf("read %d: %+v, want %+v", n, got, first)
				}
				if cc.Stats().Hits > s0.Hits {
					hits++
				}
				time.Sleep(2 * time.Millisecond)
			}
			if hits < 20 {
				t.Fatalf("%d hits in 30 repeated reads with a parked backend", hits)
			}
			for i := 0; i < 10; i++ {
				nv := first.v + int64(i) + 1
				if _, err := conn.Exec(ctx, `UPDATE items SET v = $1 WHERE id = $2`, nv, id); err != nil {
					t.Fatal(err)
				}
				got, err := readItem(ctx, conn, id)
				if err != nil {
					t.Fatal(err)
				}
				if got.v != nv {
					t.Fatalf("read %d after writing %d in the same session", got.v, nv)
				}
			}
			if _, err := conn.Exec(ctx, `UPDATE items SET v = $1 WHERE id = $2`, first.v, id); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// startProxyCache creates a cache with a change stream on every primary
// (shards s0, s1) and waits for the streams to be up.
func startProxyCache(t testing.TB, ctx context.Context, clusters []*pgcluster.Cluster) *cache.Cache {
	t.Helper()
	cfg := cache.DefaultConfig()
	cfg.TTL = 10 * time.Minute // invalidation, not expiry, must drop entries here
	cc, err := cache.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := cc.Close(cctx); err != nil {
			t.Errorf("cache Close: %v", err)
		}
	})
	for i, c := range clusters {
		sc := cache.DefaultStreamConfig()
		sc.Shard = fmt.Sprintf("s%d", i)
		sc.ConnString = appConnString(c.Primary())
		sc.Publication = "dbproxy_cache"
		if err := cc.Watch(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	for i := range clusters {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := cc.WaitUp(wctx, fmt.Sprintf("s%d", i))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	return cc
}

// waitCacheApplied waits until the change stream of every shard has
// applied every commit made on its primary so far.
func waitCacheApplied(t testing.TB, ctx context.Context, cc *cache.Cache, clusters []*pgcluster.Cluster) {
	t.Helper()
	for i, c := range clusters {
		lsns, err := c.Primary().LSNs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("s%d", i)
		deadline := time.Now().Add(time.Minute)
		for {
			applied := uint64(0)
			for _, s := range cc.Stats().Streams {
				if s.Shard == name {
					applied = s.AppliedLSN
				}
			}
			if applied >= lsns.CurrentLSN {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("change stream of %s applied %d, primary at %d", name, applied, lsns.CurrentLSN)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// picks is the number of replica picks over every shard.
func (e *proxyEnv) picks() uint64 {
	var n uint64
	for _, s := range e.sets {
		for _, ns := range s.Stats() {
			n += ns.Picks
		}
	}
	return n
}

type itemRow struct {
	id    int32
	v     int64
	name  string
	price string
	at    time.Time
	tags  []int32
	oids  []uint32
	names []string
}

const itemQuery = `SELECT id, v, name, price::text, at, tags FROM items WHERE id = $1`

func readItem(ctx context.Context, conn *pgx.Conn, id int) (itemRow, error) {
	var r itemRow
	rows, err := conn.Query(ctx, itemQuery, id)
	if err != nil {
		return r, err
	}
	defer rows.Close()
	if !rows.Next() {
		rows.Close()
		if err := rows.Err(); err != nil {
			return r, err
		}
		return r, pgx.ErrNoRows
	}
	if err := rows.Scan(&r.id, &r.v, &r.name, &r.price, &r.at, &r.tags); err != nil {
		return r, err
	}
	for _, f := range rows.FieldDescriptions() {
		r.oids = append(r.oids, f.DataTypeOID)
		r.names = append(r.names, f.Name)
	}
	if rows.Next() {
		return r, fmt.Errorf("more than one row for id %d", id)
	}
	rows.Close()
	return r, rows.Err()
}

func sameItem(a, b itemRow) bool {
	return a.id == b.id && a.v == b.v && a.name == b.name && a.price == b.price && a.at.Equal(b.at) &&
		slices.Equal(a.tags, b.tags) && slices.Equal(a.oids, b.oids) && slices.Equal(a.names, b.names)
}

// pollItem reads id until f accepts the row or the deadline passes.
func pollItem(t testing.TB, ctx context.Context, conn *pgx.Conn, id int, within time.Duration, f func(itemRow) bool) (itemRow, time.Duration) {
	t.Helper()
	start := time.Now()
	var last itemRow
	var lastErr error
	for time.Since(start) < within {
		r, err := readItem(ctx, conn, id)
		if err == nil && f(r) {
			return r, time.Since(start)
		}
		last, lastErr = r, err
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("item %d: condition not met within %v (last %+v, err %v)", id, within, last, lastErr)
	return itemRow{}, 0
}

// testProxyCacheReload turns serving from the cache off and on again with
// a reload (proxy.Reloadable.CacheOff): while off, reads of a cached item go
// to a standby; once on, the same reads are hits again.
func testProxyCacheReload(t *testing.T, ctx context.Context, env *proxyEnv, cc *cache.Cache) {
	conn, err := pgx.Connect(ctx, env.dsn(""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	const id = 10 // cached by Hit
	hitOnce := func() bool {
		s0, p0 := cc.Stats(), env.picks()
		if _, err := readItem(ctx, conn, id); err != nil {
			t.Fatal(err)
		}
		s1, p1 := cc.Stats(), env.picks()
		return s1.Hits == s0.Hits+1 && p1 == p0
	}
	eventuallyHit := func(what string) {
		for try := 0; try < 50; try++ {
			if hitOnce() {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("%s: no cache hit within 50 reads: %+v", what, cc.Stats())
	}
	eventuallyHit("before the reload")
	r := env.cfg.Reloadable()
	r.CacheOff = true
	if err := env.srv.Reload(r); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		s0, p0 := cc.Stats(), env.picks()
		if _, err := readItem(ctx, conn, id); err != nil {
			t.Fatal(err)
		}
		if s1, p1 := cc.Stats(), env.picks(); s1.Hits+s1.Misses != s0.Hits+s0.Misses || p1 != p0+1 {
			t.Fatalf("cache off: hits+misses %d -> %d, picks %d -> %d (want the cache untouched, one standby read)",
				s0.Hits+s0.Misses, s1.Hits+s1.Misses, p0, p1)
		}
	}
	r.CacheOff = false
	if err := env.srv.Reload(r); err != nil {
		t.Fatal(err)
	}
	eventuallyHit("cache on again")
}

func testProxyCacheHit(t *testing.T, ctx context.Context, env *proxyEnv, cc *cache.Cache, clusters []*pgcluster.Cluster) {
	direct, err := clusters[0].Primary().Connect(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	for i, mode := range []string{"simple_protocol", "exec", "describe_exec", "cache_describe", "cache_statement"} {
		t.Run(mode, func(t *testing.T) {
			conn, err := pgx.Connect(ctx, env.dsn("default_query_exec_mode="+mode))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			id := 10 + i
			want, err := readItem(ctx, direct, id)
			if err != nil {
				t.Fatal(err)
			}
			// The first reads fill the cache (the standby may still be
			// catching up with the inserts).
			first, _ := pollItem(t, ctx, conn, id, 30*time.Second, func(r itemRow) bool { return r.id == int32(id) })
			if !sameItem(first, want) {
				t.Fatalf("through the proxy %+v, directly %+v", first, want)
			}
			// Ristretto admits a stored entry asynchronously: within a few
			// reads the entry must be served.
			hit := false
			for try := 0; try < 50 && !hit; try++ {
				s0, p0 := cc.Stats(), env.picks()
				got, err := readItem(ctx, conn, id)
				if err != nil {
					t.Fatal(err)
				}
				s1, p1 := cc.Stats(), env.picks()
				if !sameItem(got, want) {
					t.Fatalf("read %d: %+v, want %+v", try, got, want)
				}
				hit = s1.Hits == s0.Hits+1 && p1 == p0
				if !hit {
					time.Sleep(10 * time.Millisecond)
				}
			}
			if !hit {
				t.Fatalf("no cache hit within 50 reads: %+v", cc.Stats())
			}
			// From then on every read is a hit and picks no replica.
			s0, p0 := cc.Stats(), env.picks()
			for n := 0; n < 20; n++ {
				got, err := readItem(ctx, conn, id)
				if err != nil {
					t.Fatal(err)
				}
				if !sameItem(got, want) {
					t.Fatalf("hit %d: %+v, want %+v", n, got, want)
				}
			}
			s1, p1 := cc.Stats(), env.picks()
			if s1.Hits != s0.Hits+20 || p1 != p0 || s1.Fills != s0.Fills {
				t.Fatalf("20 repeated reads: hits +%d, fills +%d, picks +%d; want 20 hits, no fill, no pick", s1.Hits-s0.Hits, s1.Fills-s0.Fills, p1-p0)
			}
			// A nocache hint bypasses the cache.
			var v int64
			if err := conn.QueryRow(ctx, `/* dbproxy: nocache */ SELECT v FROM items WHERE id = $1`, id).Scan(&v); err != nil || v != want.v {
				t.Fatalf("nocache read: %d, %v", v, err)
			}
			if s2 := cc.Stats(); s2.Hits != s1.Hits || s2.Misses != s1.Misses {
				t.Fatalf("nocache read went through the cache: %+v", s2)
			}
		})
	}
	// A pipelined batch (Bind/Execute pairs before one Sync) is answered
	// statement by statement, cached or not.
	t.Run("Batch", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, env.dsn(""))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		s0 := cc.Stats()
		for round := 0; round < 5; round++ {
			b := &pgx.Batch{}
			for id := 100; id < 105; id++ {
				b.Queue(`SELECT name FROM items WHERE id = $1`, id)
			}
			b.Queue(`/* dbproxy: nocache */ SELECT name FROM items WHERE id = $1`, 106)
			b.Queue(`SELECT name FROM items WHERE id = $1`, 107)
			res := conn.SendBatch(ctx, b)
			for _, id := range []int{100, 101, 102, 103, 104, 106, 107} {
				var name string
				if err := res.QueryRow().Scan(&name); err != nil || name != fmt.Sprintf("item %d", id) {
					t.Fatalf("round %d, id %d: %q %v", round, id, name, err)
				}
			}
			if err := res.Close(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if s1 := cc.Stats(); s1.Hits-s0.Hits < 12 {
			t.Fatalf("%d hits in 5 rounds of 6 cacheable reads", s1.Hits-s0.Hits)
		}
	})
	// A result larger than an entry may be is returned whole, not cached,
	// and the next identical read skips the fill.
	t.Run("LargeResult", func(t *testing.T) {
		for _, mode := range []string{"simple_protocol", "cache_statement"} {
			conn, err := pgx.Connect(ctx, env.dsn("default_query_exec_mode="+mode))
			if err != nil {
				t.Fatal(err)
			}
			for round := 0; round < 3; round++ {
				s0 := cc.Stats()
				rows, err := conn.Query(ctx, `SELECT id, repeat(name, 2000) FROM items WHERE id <= $1 ORDER BY id`, 200)
				if err != nil {
					t.Fatal(err)
				}
				n := 0
				for rows.Next() {
					var id int32
					var s string
					if err := rows.Scan(&id, &s); err != nil {
						t.Fatal(err)
					}
					n++
					if id != int32(n) || s != strings.Repeat(fmt.Sprintf("item %d", id), 2000) {
						t.Fatalf("%s round %d: row %d has id %d, %d bytes", mode, round, n, id, len(s))
					}
				}
				if rows.Err() != nil || n != 200 {
					t.Fatalf("%s round %d: %d rows, %v", mode, round, n, rows.Err())
				}
				s1 := cc.Stats()
				if s1.Stored != s0.Stored {
					t.Fatalf("%s round %d: a %d-row result of ~2.6 MB was stored", mode, round, n)
				}
				if round == 0 && s1.Fills != s0.Fills+1 {
					t.Fatalf("%s: the first read of the large result ran %d fills, want 1", mode, s1.Fills-s0.Fills)
				}
				if round > 0 && s1.Fills != s0.Fills {
					t.Fatalf("%s round %d: the too-large read ran a fill again", mode, round)
				}
			}
			conn.Close(ctx)
		}
	})
	// Multi-row and empty results, and server errors (row limits are in
	// WireExact).
	t.Run("MultiRowAndEmpty", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, env.dsn(""))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		q := `SELECT id, name FROM items WHERE id BETWEEN $1 AND $2 ORDER BY id`
		for round := 0; round < 5; round++ {
			rows, err := conn.Query(ctx, q, 50, 59)
			if err != nil {
				t.Fatal(err)
			}
			var ids []int32
			for rows.Next() {
				var id int32
				var name string
				if err := rows.Scan(&id, &name); err != nil {
					t.Fatal(err)
				}
				if name != fmt.Sprintf("item %d", id) {
					t.Fatalf("row %d: name %q", id, name)
				}
				ids = append(ids, id)
			}
			if rows.Err() != nil || len(ids) != 10 || ids[0] != 50 || ids[9] != 59 {
				t.Fatalf("round %d: ids %v, err %v", round, ids, rows.Err())
			}
			var n int
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM items WHERE id > $1`, 100000).Scan(&n); err != nil || n != 0 {
				t.Fatalf("count: %d %v", n, err)
			}
			rows, err = conn.Query(ctx, `SELECT id FROM items WHERE id = $1`, -1)
			if err != nil {
				t.Fatal(err)
			}
			if rows.Next() {
				t.Fatal("row for id -1")
			}
			rows.Close()
			if rows.Err() != nil || rows.CommandTag().String() != "SELECT 0" {
				t.Fatalf("empty result: tag %q, err %v", rows.CommandTag(), rows.Err())
			}
		}
		// A read that fails on the server fails the same way (the fill's
		// error is not cached; the request runs on a backend).
		for round := 0; round < 2; round++ {
			var x int
			err := conn.QueryRow(ctx, `SELECT v / (id - id) FROM items WHERE id = $1`, 3).Scan(&x)
			if err == nil || !strings.Contains(err.Error(), "22012") {
				t.Fatalf("division by zero: %v", err)
			}
			if err := conn.QueryRow(ctx, `SELECT 1`).Scan(&x); err != nil || x != 1 {
				t.Fatalf("after error: %v", err)
			}
		}
	})
}

func testProxyCacheDelay(t *testing.T, ctx context.Context, env *proxyEnv, cc *cache.Cache, clusters []*pgcluster.Cluster) {
	direct, err := clusters[0].Primary().Connect(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	for _, mode := range []string{"simple_protocol", "cache_statement"} {
		t.Run(mode, func(t *testing.T) {
			conn, err := pgx.Connect(ctx, env.dsn("default_query_exec_mode="+mode))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			const id = 7
			const trials = 100
			delays := make([]time.Duration, 0, trials)
			hitsBefore := 0
			for i := 0; i < trials; i++ {
				cur, err := readItem(ctx, conn, id)
				if err != nil {
					t.Fatal(err)
				}
				// Make sure the current value is cached before the write.
				for try := 0; try < 50; try++ {
					s0 := cc.Stats()
					if _, err := readItem(ctx, conn, id); err != nil {
						t.Fatal(err)
					}
					if cc.Stats().Hits > s0.Hits {
						hitsBefore++
						break
					}
					time.Sleep(2 * time.Millisecond)
				}
				nv := cur.v + 1
				if _, err := direct.Exec(ctx, `UPDATE items SET v = $1 WHERE id = $2`, nv, id); err != nil {
					t.Fatal(err)
				}
				_, d := pollItem(t, ctx, conn, id, 10*time.Second, func(r itemRow) bool { return r.v == nv })
				delays = append(delays, d)
			}
			slices.Sort(delays)
			t.Logf("%s: write straight to the primary -> new value through the cached proxy, %d trials (%d with the old value cached): median %v, p90 %v, worst %v; invalidation lag %+v",
				mode, trials, hitsBefore, delays[trials/2], delays[trials*9/10], delays[trials-1], cc.Stats().InvalidationLag)
			if hitsBefore < trials/2 {
				t.Fatalf("the old value was cached before only %d of %d writes", hitsBefore, trials)
			}
		})
	}
}

func testProxyCacheProxyWrite(t *testing.T, ctx context.Context, env *proxyEnv, cc *cache.Cache) {
	for _, mode := range []string{"simple_protocol", "cache_statement"} {
		t.Run(mode, func(t *testing.T) {
			conn, err := pgx.Connect(ctx, env.dsn("default_query_exec_mode="+mode))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			const id = 8
			for i := 0; i < 30; i++ {
				cur, err := readItem(ctx, conn, id)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := readItem(ctx, conn, id); err != nil { // likely a hit
					t.Fatal(err)
				}
				nv := cur.v + 1
				if _, err := conn.Exec(ctx, `UPDATE items SET v = $1 WHERE id = $2`, nv, id); err != nil {
					t.Fatal(err)
				}
				// Read-your-writes: the session's causal token keeps the
				// old entry from being served.
				got, err := readItem(ctx, conn, id)
				if err != nil {
					t.Fatal(err)
				}
				if got.v != nv {
					t.Fatalf("trial %d: read %d after writing %d in the same session", i, got.v, nv)
				}
			}
			if cc.Stats().Invalidations == 0 {
				t.Fatal("no invalidations recorded")
			}
		})
	}
}

var (
	pgbenchTxRE     = regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`)
	pgbenchFailedRE = regexp.MustCompile(`number of failed transactions: ([0-9]+)`)
)

const hotSetScript = "\\set aid random(1, 1000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"

func testProxyCachePgbench(t *testing.T, ctx context.Context, env *proxyEnv, cc *cache.Cache) {
	pgbench := pgBin(t, "pgbench")
	runClient(t, env, "", pgbench, "-i", "-s", "1", "-q")
	script := filepath.Join(t.TempDir(), "hot.sql")
	if err := os.WriteFile(script, []byte(hotSetScript), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"simple", "prepared", "extended"} {
		s0 := cc.Stats()
		out := runClient(t, env, "", pgbench, "-n", "-f", script, "-T", "5", "-c", "8", "-j", "2", "-M", mode)
		s1 := cc.Stats()
		m := pgbenchFailedRE.FindStringSubmatch(out)
		if m == nil || m[1] != "0" {
			t.Fatalf("pgbench -M %s:\n%s", mode, out)
		}
		hits, misses := s1.Hits-s0.Hits, s1.Misses-s0.Misses
		ratio := float64(hits) / float64(max(hits+misses, 1))
		tx := pgbenchTxRE.FindStringSubmatch(out)
		t.Logf("pgbench hot set -M %s: %s transactions, cache hits %d, misses %d, hit ratio %.3f", mode, tx[1], hits, misses, ratio)
		if ratio <= 0.9 {
			t.Errorf("-M %s: hit ratio %.3f, want > 0.9", mode, ratio)
		}
	}
}

// BenchmarkProxyCacheHotSet compares pgbench hot-set reads (1000 accounts,
// 16 clients, 10 s) through the proxy with the result cache and directly
// against shard 0's primary, for -M simple and -M prepared, interleaved
// in one run; it reports tps and the CPU time of the PostgreSQL
// processes (primary and standby) per transaction. It asserts nothing
// about speed.
//
//	go test ./integration/ -run XXX -bench ProxyCacheHotSet -benchtime 1x -v
func BenchmarkProxyCacheHotSet(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	clusters := startProxyClusters(b, ctx)
	enableCacheStreams(b, ctx, clusters)
	cc := startProxyCache(b, ctx, clusters)
	env := startProxyEnv(b, ctx, clusters, nil, func(d *proxy.Deps) { d.Cache = cc })
	pgbench := "/usr/lib/postgresql/15/bin/pgbench"
	script := filepath.Join(b.TempDir(), "hot.sql")
	if err := os.WriteFile(script, []byte(hotSetScript), 0o644); err != nil {
		b.Fatal(err)
	}
	proxyEnv := clientEnv(env)
	p := clusters[0].Primary()
	directEnv := append(os.Environ(), "PGHOST="+p.Host, fmt.Sprintf("PGPORT=%d", p.Port), "PGUSER=app", "PGPASSWORD=app", "PGDATABASE=app", "PGSSLMODE=disable")
	cmd := exec.CommandContext(ctx, pgbench, "-i", "-s", "1", "-q")
	cmd.Env = proxyEnv
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	// run returns tps and PostgreSQL CPU seconds per transaction.
	run := func(dsnEnv []string, mode string) (float64, float64) {
		cpu0 := postgresCPU(b, clusters[0])
		cmd := exec.CommandContext(ctx, pgbench, "-n", "-f", script, "-c", "16", "-j", "4", "-T", "10", "-M", mode)
		cmd.Env = dsnEnv
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("pgbench -M %s: %v\n%s", mode, err, out)
		}
		cpu := postgresCPU(b, clusters[0]) - cpu0
		m := tpsRE.FindSubmatch(out)
		n := pgbenchTxRE.FindSubmatch(out)
		if m == nil || n == nil {
			b.Fatalf("no tps in:\n%s", out)
		}
		tps, _ := strconv.ParseFloat(string(m[1]), 64)
		tx, _ := strconv.ParseFloat(string(n[1]), 64)
		return tps, cpu / max(tx, 1)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, mode := range []string{"simple", "prepared"} {
			var direct, proxied, directCPU, proxiedCPU float64
			s0 := cc.Stats()
			for round := 0; round < 2; round++ {
				tps, cpu := run(directEnv, mode)
				direct, directCPU = direct+tps, directCPU+cpu
				tps, cpu = run(proxyEnv, mode)
				proxied, proxiedCPU = proxied+tps, proxiedCPU+cpu
			}
			s1 := cc.Stats()
			hits, misses := s1.Hits-s0.Hits, s1.Misses-s0.Misses
			b.ReportMetric(direct/2, "tps-direct-"+mode)
			b.ReportMetric(proxied/2, "tps-proxy-cache-"+mode)
			b.Logf("%s: direct %.0f tps, proxy+cache %.0f tps (%.2fx); PostgreSQL CPU per transaction: direct %.1f µs, proxy+cache %.1f µs (%.1f%%); hit ratio %.4f",
				mode, direct/2, proxied/2, proxied/direct, 1e6*directCPU/2, 1e6*proxiedCPU/2, 100*proxiedCPU/directCPU,
				float64(hits)/float64(max(hits+misses, 1)))
		}
	}
}

// postgresCPU returns the CPU seconds (user + system) used so far by
// every node of c: each postmaster, its live children, and the children
// it has reaped (the postmaster's cutime and cstime), so backends of
// connections that ended between two samples are counted.
func postgresCPU(t testing.TB, c *pgcluster.Cluster) float64 {
	t.Helper()
	roots := map[int]bool{}
	for _, n := range c.Nodes() {
		b, err := os.ReadFile(filepath.Join(n.Dir, "postmaster.pid"))
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
		if err != nil {
			t.Fatal(err)
		}
		roots[pid] = true
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var ticks uint64
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, own, reaped, ok := procStat(pid)
		if ok && roots[pid] {
			ticks += own + reaped
		} else if ok && roots[ppid] {
			ticks += own
		}
	}
	return float64(ticks) / 100 // USER_HZ
}

// procStat reads from /proc/pid/stat the parent pid, the process's own
// CPU ticks (utime + stime) and those of its reaped children (cutime +
// cstime).
func procStat(pid int) (ppid int, own, reaped uint64, ok bool) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, false
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil && line == "" {
		return 0, 0, 0, false
	}
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	fields := strings.Fields(line[i+1:]) // fields[0] is state (field 3)
	if len(fields) < 15 {
		return 0, 0, 0, false
	}
	ppid, _ = strconv.Atoi(fields[1])
	var v [4]uint64
	for i := range v {
		v[i], _ = strconv.ParseUint(fields[11+i], 10, 64)
	}
	return ppid, v[0] + v[1], v[2] + v[3], true
}

// wireExchange sends msgs on a new connection made with connString and
// returns every message received up to the ReadyForQuery of the last of
// syncs Sync/Query messages, encoded.
func wireExchange(t *testing.T, ctx context.Context, connString string, msgs []pgproto3.FrontendMessage, syncs int) [][]byte {
	t.Helper()
	pc, err := pgconn.Connect(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	hj, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hj.Conn.Close()
	_ = hj.Conn.SetDeadline(time.Now().Add(30 * time.Second))
	fe := hj.Frontend
	for _, m := range msgs {
		fe.Send(m)
	}
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for syncs > 0 {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("after %d messages: %v", len(out), err)
		}
		switch m.(type) {
		case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse:
			continue
		case *pgproto3.ReadyForQuery:
			syncs--
		}
		b, err := m.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// testProxyCacheWire compares, message by message and byte by byte, what
// PostgreSQL answers directly with what the proxy answers for the same
// requests, on a fill and then on hits: simple Query, Parse/Bind/Describe
// portal/Execute with row limits (portal suspension), binary results
// without Describe, and a named prepared statement.
func testProxyCacheWire(t *testing.T, ctx context.Context, env *proxyEnv, cc *cache.Cache, clusters []*pgcluster.Cluster) {
	q := `SELECT id, name, price, tags FROM items WHERE id BETWEEN $1 AND $2 ORDER BY id`
	bind := func(stmt string, from, to string, formats ...int16) *pgproto3.Bind {
		return &pgproto3.Bind{PreparedStatement: stmt, Parameters: [][]byte{[]byte(from), []byte(to)}, ResultFormatCodes: formats}
	}
	cases := []struct {
		name  string
		msgs  []pgproto3.FrontendMessage
		syncs int
	}{
		{"Query", []pgproto3.FrontendMessage{&pgproto3.Query{String: `SELECT id, name, price, at FROM items WHERE id BETWEEN 20 AND 24 ORDER BY id`}}, 1},
		{"DescribeExecuteRowLimits", []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: q}, bind("", "30", "34"), &pgproto3.Describe{ObjectType: 'P'},
			&pgproto3.Execute{MaxRows: 2}, &pgproto3.Execute{MaxRows: 3}, &pgproto3.Execute{}, &pgproto3.Execute{}, &pgproto3.Sync{},
		}, 1},
		{"ExecuteRemainder", []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: q}, bind("", "40", "44"), &pgproto3.Execute{MaxRows: 4}, &pgproto3.Execute{}, &pgproto3.Sync{},
		}, 1},
		{"BinaryNoDescribe", []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: q}, bind("", "50", "52", 1), &pgproto3.Execute{}, &pgproto3.Sync{},
		}, 1},
		{"Empty", []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: q}, bind("", "900", "901"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
		}, 1},
		{"NamedStatement", []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "s1", Query: q}, &pgproto3.Sync{},
			bind("s1", "60", "63", 0, 1, 0, 1), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Close{ObjectType: 'P'}, &pgproto3.Sync{},
			bind("s1", "60", "63", 0, 1, 0, 1), &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{},
		}, 4},
	}
	direct := appConnString(clusters[0].Primary())
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := wireExchange(t, ctx, direct, tc.msgs, tc.syncs)
			s0 := cc.Stats()
			for run := 0; run < 5; run++ {
				got := wireExchange(t, ctx, env.dsn(""), tc.msgs, tc.syncs)
				if len(got) != len(want) {
					t.Fatalf("run %d: %d messages through the proxy, %d directly\nproxy:  %q\ndirect: %q", run, len(got), len(want), got, want)
				}
				for i := range want {
					if string(got[i]) != string(want[i]) {
						t.Fatalf("run %d: message %d through the proxy %q, directly %q", run, i, got[i], want[i])
					}
				}
				time.Sleep(20 * time.Millisecond) // let the store admit the fill
			}
			if s1 := cc.Stats(); s1.Hits < s0.Hits+3 {
				t.Fatalf("5 identical requests: %d hits, want at least 3", s1.Hits-s0.Hits)
			}
		})
	}
}

// testProxyCacheSettings checks that sessions whose settings change the
// bytes of a result (TimeZone here) never share entries, and that each
// still gets hits.
func testProxyCacheSettings(t *testing.T, ctx context.Context, env *proxyEnv, cc *cache.Cache) {
	raw := func(pc *pgconn.PgConn, sql string) string {
		res, err := pc.Exec(ctx, sql).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != 1 || len(res[0].Rows) != 1 {
			t.Fatalf("%s: %d results", sql, len(res))
		}
		return string(res[0].Rows[0][0])
	}
	zones := map[string]string{"UTC": "+00", "Asia/Tokyo": "+09", "America/St_Johns": "-03:30"}
	conns := map[string]*pgconn.PgConn{}
	for z := range zones {
		pc, err := pgconn.Connect(ctx, env.dsn(""))
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close(ctx)
		if _, err := pc.Exec(ctx, "SET TimeZone = '"+z+"'").ReadAll(); err != nil {
			t.Fatal(err)
		}
		conns[z] = pc
	}
	const q = `SELECT at FROM items WHERE id = 15`
	s0 := cc.Stats()
	for round := 0; round < 10; round++ {
		for z, pc := range conns {
			got := raw(pc, q)
			if !strings.HasSuffix(got, zones[z]) {
				t.Fatalf("TimeZone %s, round %d: %q", z, round, got)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s1 := cc.Stats(); s1.Hits-s0.Hits < 15 {
		t.Fatalf("%d hits in 10 rounds of 3 sessions", s1.Hits-s0.Hits)
	}
}

// testProxyCacheDDL checks that DDL run through the proxy (which the
// change streams do not decode) drops cached reads of its table.
func testProxyCacheDDL(t *testing.T, ctx context.Context, env *proxyEnv, cc *cache.Cache) {
	conn, err := pgx.Connect(ctx, env.dsn("default_query_exec_mode=simple_protocol"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE ddlt (id int PRIMARY KEY, a text)`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO ddlt VALUES (1, 'one')`); err != nil {
		t.Fatal(err)
	}
	cols := func() int {
		rows, err := conn.Query(ctx, `SELECT * FROM ddlt WHERE id = 1`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		if !rows.Next() {
			rows.Close()
			return -1 // not replayed on the standby yet
		}
		return len(rows.FieldDescriptions())
	}
	deadline := time.Now().Add(30 * time.Second)
	hit := false
	for !hit && time.Now().Before(deadline) {
		s0 := cc.Stats()
		if n := cols(); n == 2 {
			hit = cc.Stats().Hits > s0.Hits
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !hit {
		t.Fatal("SELECT * never served from the cache")
	}
	if _, err := conn.Exec(ctx, `ALTER TABLE ddlt ADD COLUMN b int DEFAULT 7`); err != nil {
		t.Fatal(err)
	}
	// The standby may take a moment to replay the ALTER; the old entry
	// must not be served meanwhile, and the new shape must appear.
	for time.Now().Before(deadline) {
		s0 := cc.Stats()
		n := cols()
		if n == 3 {
			return
		}
		if cc.Stats().Hits > s0.Hits {
			t.Fatalf("after ALTER TABLE ADD COLUMN the cache served the old %d-column result", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the new column never appeared")
}
