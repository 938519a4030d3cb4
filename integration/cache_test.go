package integration

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbproxy/dbproxy/cache"
	"github.com/dbproxy/dbproxy/internal/pgcluster"
)

// TestCacheInvalidation runs the result cache against a real primary: every
// write made straight to PostgreSQL (bypassing dbproxy) must invalidate the
// entries that read the table, through the logical-decoding change stream.
func TestCacheInvalidation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cl := pgcluster.StartT(t, pgcluster.Options{Name: "cache"})
	primary := cl.Primary()

	t.Run("Delay", func(t *testing.T) { testCacheDelay(t, ctx, primary) })
	t.Run("CausalReaders", func(t *testing.T) { testCacheCausal(t, ctx, primary) })
	t.Run("StreamInterrupted", func(t *testing.T) { testCacheStreamBreak(t, ctx, primary) })
}

// cacheSetup creates table (k int primary key, v int) holding (1, 0) and a
// Cache watching the primary with application_name appName.
func cacheSetup(t *testing.T, ctx context.Context, n *pgcluster.Node, table, appName string, mod func(*cache.StreamConfig)) *cache.Cache {
	t.Helper()
	conn := cacheConnect(t, ctx, n)
	if _, err := conn.Exec(ctx, fmt.Sprintf("DROP TABLE IF EXISTS %[1]s; CREATE TABLE %[1]s (k int PRIMARY KEY, v bigint NOT NULL); INSERT INTO %[1]s VALUES (1, 0)", table)); err != nil {
		t.Fatal(err)
	}
	cfg := cache.DefaultConfig()
	cfg.TTL = 10 * time.Minute // invalidation, not expiry, must drop entries here
	c, err := cache.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Close(cctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	sc := cache.DefaultStreamConfig()
	sc.Shard = "s0"
	sc.ConnString = n.ConnString("postgres") + " application_name=" + appName
	if mod != nil {
		mod(&sc)
	}
	if err := c.Watch(ctx, sc); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel()
	if err := c.WaitUp(wctx, "s0"); err != nil {
		t.Fatalf("change stream did not come up: %v\n%s", err, n.LogTail(20))
	}
	return c
}

func cacheConnect(t *testing.T, ctx context.Context, n *pgcluster.Node) *pgx.Conn {
	t.Helper()
	conn, err := n.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// cacheFill returns a fill that reads v of row 1 over conn, as decimal text.
func cacheFill(conn *pgx.Conn, table string) cache.FillFunc {
	q := "SELECT v FROM " + table + " WHERE k = 1"
	return func(ctx context.Context) ([]byte, error) {
		var v int64
		if err := conn.QueryRow(ctx, q).Scan(&v); err != nil {
			return nil, err
		}
		return strconv.AppendInt(nil, v, 10), nil
	}
}

func cacheKey(table string) cache.Key {
	return cache.NewKey(cache.KeyParts{Shard: "s0", Namespace: "it", SQL: "SELECT v FROM " + table + " WHERE k = 1"})
}

func cacheValue(t *testing.T, b []byte) int64 {
	t.Helper()
	v, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		t.Fatalf("bad cached value %q", b)
	}
	return v
}

// cacheWaitEntry waits until key is served from the cache (ristretto's Set
// is buffered) and returns its value.
func cacheWaitEntry(t *testing.T, c *cache.Cache, key cache.Key, minLSN uint64) int64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if e, ok := c.Get(key, minLSN); ok {
			return cacheValue(t, e.Value)
		}
		if time.Now().After(deadline) {
			t.Fatalf("entry never became servable; stats %+v", c.Stats())
		}
		time.Sleep(200 * time.Microsecond)
	}
}

func testCacheDelay(t *testing.T, ctx context.Context, n *pgcluster.Node) {
	const table, trials = "kv_delay", 200
	c := cacheSetup(t, ctx, n, table, "cache_it_delay", nil)
	reader := cacheConnect(t, ctx, n)
	writer := cacheConnect(t, ctx, n) // direct to the primary: bypasses everything
	fill := cacheFill(reader, table)
	key := cacheKey(table)
	tables := []string{table}

	delays := make([]time.Duration, 0, trials)
	for i := range int64(trials) {
		v, _, err := c.GetOrFill(ctx, key, tables, 0, fill)
		if err != nil {
			t.Fatal(err)
		}
		if got := cacheValue(t, v); got != i {
			t.Fatalf("trial %d: GetOrFill = %d, want %d", i, got, i)
		}
		if got := cacheWaitEntry(t, c, key, 0); got != i {
			t.Fatalf("trial %d: cached %d, want %d", i, got, i)
		}
		if _, err := writer.Exec(ctx, "UPDATE "+table+" SET v = $1 WHERE k = 1", i+1); err != nil {
			t.Fatal(err)
		}
		committed := time.Now()
		// Poll until the entry is no longer served: the stream applied the
		// invalidation.
		for {
			if _, ok := c.Get(key, 0); !ok {
				break
			}
			if time.Since(committed) > 5*time.Second {
				t.Fatalf("trial %d: entry still served 5s after a direct UPDATE committed; stats %+v", i, c.Stats())
			}
			time.Sleep(50 * time.Microsecond)
		}
		delays = append(delays, time.Since(committed))
		// From now on no read may return the old value.
		for range 3 {
			v, _, err := c.GetOrFill(ctx, key, tables, 0, fill)
			if err != nil {
				t.Fatal(err)
			}
			if got := cacheValue(t, v); got != i+1 {
				t.Fatalf("trial %d: read %d after the invalidation was applied, want %d", i, got, i+1)
			}
		}
	}
	slices.Sort(delays)
	st := c.Stats()
	t.Logf("invalidation delay (direct UPDATE acked -> Get misses) over %d trials: median %s, p90 %s, worst %s",
		trials, delays[len(delays)/2], delays[len(delays)*9/10], delays[len(delays)-1])
	t.Logf("invalidation lag (primary commit timestamp -> applied): last %s, EWMA %s, max %s; hits %d misses %d fills %d",
		st.InvalidationLag.Last, st.InvalidationLag.EWMA, st.InvalidationLag.Max, st.Hits, st.Misses, st.Fills)
	if len(st.Streams) != 1 || !st.Streams[0].Up || st.Streams[0].Commits < trials {
		t.Fatalf("stream stats %+v", st.Streams)
	}
}

// knownWrite is the newest write some writer has finished: its value and
// the primary's WAL position read after its commit (the causal token).
type knownWrite struct {
	v   int64
	lsn uint64
}

func testCacheCausal(t *testing.T, ctx context.Context, n *pgcluster.Node) {
	const table = "kv_causal"
	const writers, readers = 2, 4
	const writesPerWriter = 150
	c := cacheSetup(t, ctx, n, table, "cache_it_causal", nil)
	key := cacheKey(table)
	tables := []string{table}

	var mu sync.Mutex
	known := knownWrite{}
	publish := func(w knownWrite) {
		mu.Lock()
		if w.v > known.v {
			known = w
		}
		mu.Unlock()
	}
	snapshot := func() knownWrite {
		mu.Lock()
		defer mu.Unlock()
		return known
	}

	wctx, stopReaders := context.WithCancel(ctx)
	defer stopReaders()
	var wg sync.WaitGroup
	errs := make(chan error, writers+readers)
	var writersLeft atomic.Int64
	writersLeft.Store(writers)
	for w := range writers {
		conn := cacheConnect(t, ctx, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if writersLeft.Add(-1) == 0 {
					stopReaders()
				}
			}()
			for i := range writesPerWriter {
				var v int64
				if err := conn.QueryRow(ctx, "UPDATE "+table+" SET v = v + 1 WHERE k = 1 RETURNING v").Scan(&v); err != nil {
					errs <- fmt.Errorf("writer %d: %w", w, err)
					return
				}
				var lsn string
				if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
					errs <- err
					return
				}
				pos, err := pgcluster.ParseLSN(lsn)
				if err != nil {
					errs <- err
					return
				}
				publish(knownWrite{v: v, lsn: pos})
				if i%4 == 0 { // pauses let the stream catch up, so reads hit
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	var reads, hits atomic.Int64
	for r := range readers {
		conn := cacheConnect(t, ctx, n)
		fill := cacheFill(conn, table)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for wctx.Err() == nil {
				k := snapshot()
				v, hit, err := c.GetOrFill(wctx, key, tables, k.lsn, fill)
				if err != nil {
					if wctx.Err() != nil {
						return
					}
					errs <- fmt.Errorf("reader %d: %w", r, err)
					return
				}
				if got := cacheValue(t, v); got < k.v {
					errs <- fmt.Errorf("reader %d: read %d (hit=%v) with a token of the write that set %d", r, got, hit, k.v)
					return
				}
				reads.Add(1)
				if hit {
					hits.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := c.Stats()
	t.Logf("%d causal reads (%d hits) during %d direct writes; fills %d shared %d raced %d stale %d; lag EWMA %s max %s",
		reads.Load(), hits.Load(), writers*writesPerWriter, st.Fills, st.Shared, st.Raced, st.Stale, st.InvalidationLag.EWMA, st.InvalidationLag.Max)
	if hits.Load() == 0 {
		t.Fatal("no causal read was served from the cache: the check exercised nothing")
	}
	if got := snapshot().v; got != writers*writesPerWriter {
		t.Fatalf("last write %d, want %d", got, writers*writesPerWriter)
	}
}

func testCacheStreamBreak(t *testing.T, ctx context.Context, n *pgcluster.Node) {
	const table, app = "kv_break", "cache_it_break"
	c := cacheSetup(t, ctx, n, table, app, func(sc *cache.StreamConfig) {
		// A long first backoff keeps the down window observable.
		sc.MinBackoff, sc.MaxBackoff = 2*time.Second, 4*time.Second
	})
	admin := cacheConnect(t, ctx, n)
	reader := cacheConnect(t, ctx, n)
	fill := cacheFill(reader, table)
	key := cacheKey(table)
	tables := []string{table}

	if _, _, err := c.GetOrFill(ctx, key, tables, 0, fill); err != nil {
		t.Fatal(err)
	}
	if got := cacheWaitEntry(t, c, key, 0); got != 0 {
		t.Fatalf("cached %d", got)
	}
	slot := c.Stats().Streams[0].Slot
	var killed int
	if err := admin.QueryRow(ctx, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication WHERE application_name = $1", app).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed != 1 {
		t.Fatalf("terminated %d walsenders named %s, want 1", killed, app)
	}
	// The stream notices, and the shard stops serving.
	deadline := time.Now().Add(10 * time.Second)
	for c.Stats().Streams[0].Breaks == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("stream break not detected; stats %+v", c.Stats().Streams)
		}
		time.Sleep(time.Millisecond)
	}
	// A write while the stream is down: the next stream starts after it and
	// never sees it, so the old entry must never be served again.
	if _, err := admin.Exec(ctx, "UPDATE "+table+" SET v = 1 WHERE k = 1"); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats().Streams[0]; !st.Up {
		if _, ok := c.Get(key, 0); ok {
			t.Fatal("served while the change stream is down")
		}
		v, hit, err := c.GetOrFill(ctx, key, tables, 0, fill)
		if err != nil || hit || cacheValue(t, v) != 1 {
			t.Fatalf("GetOrFill while down = %s, %v, %v", v, hit, err)
		}
		t.Logf("down after walsender termination: %s", st.LastError)
	} else {
		t.Fatalf("stream already up again despite a %s backoff", 2*time.Second)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := c.WaitUp(wctx, "s0"); err != nil {
		t.Fatal(err)
	}
	st := c.Stats().Streams[0]
	if st.Slot == slot {
		t.Fatalf("reconnected on the same slot %s", slot)
	}
	if e, ok := c.Get(key, 0); ok {
		t.Fatalf("served %s, an entry filled before the stream broke", e.Value)
	}
	v, _, err := c.GetOrFill(ctx, key, tables, 0, fill)
	if err != nil || cacheValue(t, v) != 1 {
		t.Fatalf("after reconnect GetOrFill = %s, %v", v, err)
	}
	if got := cacheWaitEntry(t, c, key, 0); got != 1 {
		t.Fatalf("after reconnect cached %d", got)
	}
	// The old temporary slot went with its connection.
	var slots int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&slots); err != nil {
		t.Fatal(err)
	}
	if slots != 0 {
		t.Fatalf("temporary slot %s still exists after its connection ended", slot)
	}
	// Serving again: invalidation still works on the new stream.
	if _, err := admin.Exec(ctx, "UPDATE "+table+" SET v = 2 WHERE k = 1"); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		if _, ok := c.Get(key, 0); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("write after reconnect never invalidated the entry")
		}
		time.Sleep(time.Millisecond)
	}
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	newSlot := st.Slot
	if err := c.Close(cctx); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", newSlot).Scan(&slots); err != nil {
			t.Fatal(err)
		}
		if slots == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("temporary slot %s left behind after Close", newSlot)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, _, err := c.GetOrFill(ctx, key, tables, 0, fill); !errors.Is(err, cache.ErrClosed) {
		t.Fatalf("GetOrFill after Close = %v", err)
	}
}
