package cache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// newUpCache returns a cache whose shard "s0" behaves as if its change
// stream were up at LSN 100 (the stream goroutine is exercised against real
// PostgreSQL in integration/cache_test.go).
func newUpCache(t testing.TB, mod func(*Config)) (*Cache, *shardState) {
	t.Helper()
	cfg := DefaultConfig()
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	sh := c.shard("s0")
	c.streamUp(sh, 100, "test")
	return c, sh
}

func testKey(sql string, params ...string) Key {
	p := KeyParts{Shard: "s0", Namespace: "test", SQL: sql}
	for _, v := range params {
		p.Params = append(p.Params, []byte(v))
	}
	return NewKey(p)
}

func constFill(v string, calls *atomic.Int64) FillFunc {
	return func(context.Context) ([]byte, error) {
		if calls != nil {
			calls.Add(1)
		}
		return []byte(v), nil
	}
}

// fillAndWait fills key and waits until ristretto's buffered Set landed.
func fillAndWait(t testing.TB, c *Cache, key Key, tables []string, v string) {
	t.Helper()
	got, _, err := c.GetOrFill(context.Background(), key, tables, 0, constFill(v, nil))
	if err != nil || string(got) != v {
		t.Fatalf("GetOrFill = %q, %v", got, err)
	}
	c.store.Wait()
}

func TestHitAfterFill(t *testing.T) {
	c, _ := newUpCache(t, nil)
	k := testKey("SELECT v FROM kv WHERE k=$1", "1")
	var calls atomic.Int64
	v, hit, err := c.GetOrFill(context.Background(), k, []string{"kv"}, 0, constFill("one", &calls))
	if err != nil || hit || string(v) != "one" {
		t.Fatalf("first GetOrFill = %q, %v, %v", v, hit, err)
	}
	c.store.Wait()
	v, hit, err = c.GetOrFill(context.Background(), k, []string{"kv"}, 0, constFill("two", &calls))
	if err != nil || !hit || string(v) != "one" {
		t.Fatalf("second GetOrFill = %q, %v, %v", v, hit, err)
	}
	e, ok := c.Get(k, 0)
	if !ok || string(e.Value) != "one" || e.Shard != "s0" || e.FilledAtLSN != 100 || len(e.Tables) != 1 {
		t.Fatalf("Get = %+v, %v", e, ok)
	}
	if _, ok := c.Get(testKey("SELECT v FROM kv WHERE k=$1", "2"), 0); ok {
		t.Fatal("other parameter hit")
	}
	if calls.Load() != 1 {
		t.Fatalf("fill ran %d times", calls.Load())
	}
	st := c.Stats()
	if st.Hits != 2 || st.Misses != 2 || st.Fills != 1 || st.Bytes <= 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestFillErrorNotStored(t *testing.T) {
	c, _ := newUpCache(t, nil)
	k := testKey("q")
	boom := errors.New("boom")
	_, _, err := c.GetOrFill(context.Background(), k, []string{"kv"}, 0, func(context.Context) ([]byte, error) { return nil, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	c.store.Wait()
	if _, ok := c.Get(k, 0); ok {
		t.Fatal("failed fill was stored")
	}
	if st := c.Stats(); st.FillErrors != 1 {
		t.Fatalf("FillErrors = %d", st.FillErrors)
	}
}

func TestSingleflight(t *testing.T) {
	c, _ := newUpCache(t, nil)
	k := testKey("SELECT v FROM kv WHERE k=$1", "1")
	const n = 32
	release := make(chan struct{})
	var calls atomic.Int64
	fill := func(ctx context.Context) ([]byte, error) {
		calls.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return []byte("v"), nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, _, err := c.GetOrFill(context.Background(), k, []string{"kv"}, 0, fill)
			if err == nil && string(v) != "v" {
				err = fmt.Errorf("value %q", v)
			}
			errs <- err
		}()
	}
	// Every caller has missed; give the last ones time to join the flight.
	waitFor(t, 10*time.Second, func() bool { return c.Stats().Misses == n })
	time.Sleep(100 * time.Millisecond)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("fill ran %d times for %d concurrent misses", calls.Load(), n)
	}
	if st := c.Stats(); st.Shared != n-1 {
		t.Fatalf("Shared = %d, want %d", st.Shared, n-1)
	}
}

func TestSharedFillLeaderCanceled(t *testing.T) {
	c, _ := newUpCache(t, nil)
	k := testKey("q")
	started := make(chan struct{})
	leaderCtx, cancel := context.WithCancel(context.Background())
	leaderDone := make(chan error, 1)
	go func() {
		_, _, err := c.GetOrFill(leaderCtx, k, []string{"kv"}, 0, func(ctx context.Context) ([]byte, error) {
			close(started)
			<-ctx.Done()
			return nil, ctx.Err()
		})
		leaderDone <- err
	}()
	<-started
	joined := make(chan struct{})
	var v []byte
	var err error
	go func() {
		defer close(joined)
		v, _, err = c.GetOrFill(context.Background(), k, []string{"kv"}, 0, constFill("mine", nil))
	}()
	waitFor(t, 10*time.Second, func() bool { return c.Stats().Misses == 2 })
	time.Sleep(50 * time.Millisecond)
	cancel()
	<-joined
	if e := <-leaderDone; !errors.Is(e, context.Canceled) {
		t.Fatalf("leader err = %v", e)
	}
	if err != nil || string(v) != "mine" {
		t.Fatalf("joiner got %q, %v; want its own fill after the leader was canceled", v, err)
	}
}

// TestGetOrFillWaitsForOwnFill: GetOrFill must not return while its own
// fill still runs (the fill uses the caller's backend connection), even
// when the caller's ctx ends first.
func TestGetOrFillWaitsForOwnFill(t *testing.T) {
	c, _ := newUpCache(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	var finished atomic.Bool
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, _, err := c.GetOrFill(ctx, testKey("q"), []string{"kv"}, 0, func(ctx context.Context) ([]byte, error) {
			close(started)
			<-ctx.Done()
			time.Sleep(50 * time.Millisecond) // a slow cancellation
			finished.Store(true)
			return nil, ctx.Err()
		})
		done <- err
	}()
	<-started
	cancel()
	err := <-done
	if !finished.Load() {
		t.Fatal("GetOrFill returned while its fill was still running")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
}

func TestTTLExpiry(t *testing.T) {
	c, _ := newUpCache(t, func(c *Config) { c.TTL = 100 * time.Millisecond })
	k := testKey("q")
	fillAndWait(t, c, k, []string{"kv"}, "v")
	start := time.Now()
	waitFor(t, 10*time.Second, func() bool { _, ok := c.Get(k, 0); return !ok })
	if el := time.Since(start); el < 50*time.Millisecond {
		// The entry was there right after the fill, so it must have lived
		// close to its TTL (the fill itself takes well under 50 ms).
		t.Logf("expired after %s", el)
	}
}

// TestSetTTL: entries filled after SetTTL get the new TTL; the old entry
// keeps its own; a TTL <= 0 is refused and changes nothing.
func TestSetTTL(t *testing.T) {
	c, _ := newUpCache(t, func(c *Config) { c.TTL = time.Hour })
	old := testKey("old")
	fillAndWait(t, c, old, []string{"kv"}, "v")
	if err := c.SetTTL(0); !errors.Is(err, ErrInvalidConfig) || c.TTL() != time.Hour {
		t.Fatalf("SetTTL(0) = %v, TTL %v", err, c.TTL())
	}
	if err := c.SetTTL(100 * time.Millisecond); err != nil || c.TTL() != 100*time.Millisecond {
		t.Fatalf("SetTTL = %v, TTL %v", err, c.TTL())
	}
	k := testKey("new")
	fillAndWait(t, c, k, []string{"kv"}, "v")
	waitFor(t, 10*time.Second, func() bool { _, ok := c.Get(k, 0); return !ok })
	if _, ok := c.Get(old, 0); !ok {
		t.Fatal("an entry filled before SetTTL expired with the new TTL")
	}
}

func TestMaxEntrySize(t *testing.T) {
	c, _ := newUpCache(t, func(c *Config) { c.MaxEntryBytes = 10 })
	big, small := testKey("big"), testKey("small")
	var calls atomic.Int64
	for range 2 {
		v, hit, err := c.GetOrFill(context.Background(), big, []string{"kv"}, 0, constFill("0123456789X", &calls))
		if err != nil || hit || string(v) != "0123456789X" {
			t.Fatalf("big = %q %v %v", v, hit, err)
		}
		c.store.Wait()
	}
	if calls.Load() != 2 {
		t.Fatalf("oversized value was cached (fill ran %d times)", calls.Load())
	}
	fillAndWait(t, c, small, []string{"kv"}, "0123456789")
	if _, ok := c.Get(small, 0); !ok {
		t.Fatal("value of exactly MaxEntryBytes not cached")
	}
	if st := c.Stats(); st.TooLarge != 2 {
		t.Fatalf("TooLarge = %d", st.TooLarge)
	}
}

func TestIncludeExclude(t *testing.T) {
	c, _ := newUpCache(t, func(c *Config) {
		c.IncludeTables = []string{"public.*", "app.kv"}
		c.ExcludeTables = []string{"audit"}
	})
	for _, tc := range []struct {
		tables []string
		cached bool
	}{
		{[]string{"kv"}, true},
		{[]string{"public.users", "app.kv"}, true},
		{[]string{"kv", "audit"}, false},
		{[]string{"other.kv"}, false},
		{[]string{"app.other"}, false},
	} {
		if c.Cacheable(tc.tables) != tc.cached {
			t.Errorf("Cacheable(%v) = %v", tc.tables, !tc.cached)
		}
		k := testKey(fmt.Sprint(tc.tables))
		fillAndWait(t, c, k, tc.tables, "v")
		if _, ok := c.Get(k, 0); ok != tc.cached {
			t.Errorf("tables %v: cached = %v, want %v", tc.tables, ok, tc.cached)
		}
	}
	if st := c.Stats(); st.Bypassed != 3 {
		t.Fatalf("Bypassed = %d", st.Bypassed)
	}
}

func TestInvalidateTables(t *testing.T) {
	c, sh := newUpCache(t, nil)
	kv, users, both := testKey("kv"), testKey("users"), testKey("join")
	fillAndWait(t, c, kv, []string{"public.kv"}, "kv")
	fillAndWait(t, c, users, []string{"users"}, "users")
	fillAndWait(t, c, both, []string{"kv", "users"}, "both")
	c.applyCommit(sh, []string{"kv"}, false, 200, time.Now())
	if _, ok := c.Get(kv, 0); ok {
		t.Error("kv entry served after kv invalidated")
	}
	if _, ok := c.Get(both, 0); ok {
		t.Error("join entry served after kv invalidated")
	}
	if _, ok := c.Get(users, 0); !ok {
		t.Error("users entry dropped by a kv invalidation")
	}
	c.Invalidate("PUBLIC.USERS")
	if _, ok := c.Get(users, 0); ok {
		t.Error("users entry served after Invalidate")
	}
	fillAndWait(t, c, kv, []string{"kv"}, "kv2")
	if e, ok := c.Get(kv, 0); !ok || string(e.Value) != "kv2" || e.FilledAtLSN != 200 {
		t.Errorf("refill: %+v %v", e, ok)
	}
	// A change to a relation the stream could not name flushes the shard.
	c.applyCommit(sh, nil, true, 300, time.Now())
	if _, ok := c.Get(kv, 0); ok {
		t.Error("entry served after an unattributed change")
	}
	if st := c.Stats(); st.Invalidations != 2 || st.InvalidationLag.Max <= 0 && st.InvalidationLag.Last < 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestFillRacingInvalidation checks the central safety property: once an
// invalidation of a write has been applied, no read returns a value older
// than that write, however fills and invalidations interleave.
func TestFillRacingInvalidation(t *testing.T) {
	c, sh := newUpCache(t, nil)
	k := testKey("SELECT v FROM kv WHERE k=1")
	var db atomic.Int64          // the "row": its version
	var invalidated atomic.Int64 // highest version whose invalidation was applied
	var lsn atomic.Uint64
	lsn.Store(100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fill := func(context.Context) ([]byte, error) {
		v := db.Load()
		for range int(v % 3) { // vary the fill duration
			time.Sleep(time.Microsecond)
		}
		return strconv.AppendInt(nil, v, 10), nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	const writes = 3000
	wg.Add(1)
	go func() { // writer: commit, then the stream applies the invalidation
		defer wg.Done()
		defer cancel()
		for range writes {
			v := db.Add(1)
			c.applyCommit(sh, []string{"kv"}, false, lsn.Add(10), time.Now())
			invalidated.Store(v)
			if v%64 == 0 {
				time.Sleep(100 * time.Microsecond)
			}
		}
	}()
	var reads atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				floor := invalidated.Load()
				b, _, err := c.GetOrFill(context.Background(), k, []string{"kv"}, 0, fill)
				if err != nil {
					errs <- err
					return
				}
				got, _ := strconv.ParseInt(string(b), 10, 64)
				if got < floor {
					errs <- fmt.Errorf("read version %d after the invalidation of version %d was applied", got, floor)
					return
				}
				if e, ok := c.Get(k, 0); ok {
					got, _ := strconv.ParseInt(string(e.Value), 10, 64)
					if got < floor {
						errs <- fmt.Errorf("Get returned version %d after the invalidation of %d", got, floor)
						return
					}
				}
				reads.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := c.Stats()
	t.Logf("reads=%d hits=%d fills=%d raced=%d stale=%d", reads.Load(), st.Hits, st.Fills, st.Raced, st.Stale)
	if st.Hits == 0 {
		t.Error("no read was ever served from the cache: the test exercised nothing")
	}
}

// TestJoinAfterInvalidation: a caller arriving after an invalidation must
// not join a fill that started before it.
func TestJoinAfterInvalidation(t *testing.T) {
	c, sh := newUpCache(t, nil)
	k := testKey("q")
	started, release := make(chan struct{}), make(chan struct{})
	oldDone := make(chan []byte, 1)
	go func() {
		v, _, _ := c.GetOrFill(context.Background(), k, []string{"kv"}, 0, func(context.Context) ([]byte, error) {
			close(started)
			<-release
			return []byte("old"), nil
		})
		oldDone <- v
	}()
	<-started
	c.applyCommit(sh, []string{"kv"}, false, 200, time.Now())
	v, _, err := c.GetOrFill(context.Background(), k, []string{"kv"}, 0, constFill("new", nil))
	if err != nil || string(v) != "new" {
		t.Fatalf("caller after the invalidation got %q, %v", v, err)
	}
	close(release)
	if v := <-oldDone; string(v) != "old" {
		t.Fatalf("leader got %q", v)
	}
	c.store.Wait()
	if e, ok := c.Get(k, 0); ok && string(e.Value) != "new" {
		t.Fatalf("Get = %q after the invalidation", e.Value)
	}
	if st := c.Stats(); st.Raced != 1 {
		t.Fatalf("Raced = %d, want 1 (the old fill must not be stored)", st.Raced)
	}
}

func TestStreamDownStopsServing(t *testing.T) {
	c, sh := newUpCache(t, nil)
	k := testKey("q")
	fillAndWait(t, c, k, []string{"kv"}, "v1")
	if _, ok := c.Get(k, 0); !ok {
		t.Fatal("no hit while up")
	}
	c.streamDown(sh, errors.New("connection lost"), false)
	if _, ok := c.Get(k, 0); ok {
		t.Fatal("served while the stream is down")
	}
	var calls atomic.Int64
	for range 2 {
		v, hit, err := c.GetOrFill(context.Background(), k, []string{"kv"}, 0, constFill("v2", &calls))
		if err != nil || hit || string(v) != "v2" {
			t.Fatalf("GetOrFill while down = %q %v %v", v, hit, err)
		}
		c.store.Wait()
	}
	if calls.Load() != 2 {
		t.Fatalf("fill result stored while the stream was down (%d fills)", calls.Load())
	}
	// A fill that started while down and ends after up is not stored.
	started, release := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _, _ = c.GetOrFill(context.Background(), k, []string{"kv"}, 0, func(context.Context) ([]byte, error) {
			close(started)
			<-release
			return []byte("straddle"), nil
		})
	}()
	<-started
	c.streamUp(sh, 500, "test2")
	close(release)
	<-done
	c.store.Wait()
	if e, ok := c.Get(k, 0); ok {
		t.Fatalf("served %q filled before the stream came back", e.Value)
	}
	fillAndWait(t, c, k, []string{"kv"}, "v3")
	if e, ok := c.Get(k, 0); !ok || string(e.Value) != "v3" {
		t.Fatalf("after recovery Get = %q %v", e.Value, ok)
	}
	// Down and up again: the entry of the previous stream is dropped.
	c.streamDown(sh, errors.New("slot dropped"), false)
	c.streamUp(sh, 600, "test3")
	if _, ok := c.Get(k, 0); ok {
		t.Fatal("entry from before a stream break served after reconnect")
	}
}

func TestCausalMinLSN(t *testing.T) {
	c, sh := newUpCache(t, nil)
	k := testKey("q")
	fillAndWait(t, c, k, []string{"kv"}, "v")
	if _, ok := c.Get(k, 100); !ok {
		t.Fatal("token at the applied position should hit")
	}
	if _, ok := c.Get(k, 150); ok {
		t.Fatal("served with a token the stream has not applied")
	}
	// A commit of another table moves the stream past the token.
	c.applyCommit(sh, []string{"other"}, false, 160, time.Now())
	if _, ok := c.Get(k, 150); !ok {
		t.Fatal("miss after the stream applied the token")
	}
	// A keepalive position also counts.
	sh.advance(300)
	if _, ok := c.Get(k, 300); !ok {
		t.Fatal("miss after keepalive advanced past the token")
	}
	// A token the stream has not reached forces a private fill (no shared
	// flight) whose result is fresh and may be stored.
	v, hit, err := c.GetOrFill(context.Background(), k, []string{"kv"}, 400, constFill("fresh", nil))
	if err != nil || hit || string(v) != "fresh" {
		t.Fatalf("GetOrFill with an unapplied token = %q %v %v", v, hit, err)
	}
}

func TestFillMinLSN(t *testing.T) {
	c, sh := newUpCache(t, nil)
	c.applyCommit(sh, []string{"kv"}, false, 777, time.Now())
	var seen uint64
	_, _, err := c.GetOrFill(context.Background(), testKey("q"), []string{"kv"}, 0, func(ctx context.Context) ([]byte, error) {
		seen = FillMinLSN(ctx)
		return []byte("x"), nil
	})
	if err != nil || seen != 777 {
		t.Fatalf("FillMinLSN = %d, %v; want 777", seen, err)
	}
	if FillMinLSN(context.Background()) != 0 {
		t.Fatal("FillMinLSN outside a fill")
	}
}

// TestInvalidateAfter: a front end's invalidation with its commit
// positions raises those shards' fill floor (never lowers it), so a fill
// started before the change stream applied the commit cannot read the old
// rows from a replica behind it; the entry filled before is dropped.
func TestInvalidateAfter(t *testing.T) {
	c, sh := newUpCache(t, nil)
	other := c.shard("s1")
	c.streamUp(other, 100, "test")
	k := testKey("q")
	fillAndWait(t, c, k, []string{"kv"}, "old")
	fillMin := func() uint64 {
		var seen uint64
		_, _, err := c.GetOrFill(context.Background(), testKey("q2"), []string{"kv"}, 0, func(ctx context.Context) ([]byte, error) {
			seen = FillMinLSN(ctx)
			return []byte("x"), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return seen
	}
	if got := fillMin(); got != 100 {
		t.Fatalf("FillMinLSN before = %d, want 100 (the stream's position)", got)
	}
	c.InvalidateAfter(func(shard string) uint64 {
		if shard == "s0" {
			return 5000
		}
		return 0
	}, "kv")
	if _, ok := c.Get(k, 0); ok {
		t.Error("entry served after InvalidateAfter")
	}
	if got := fillMin(); got != 5000 {
		t.Fatalf("FillMinLSN after = %d, want 5000 (the write's commit position)", got)
	}
	if got := other.pending.Load(); got != 100 {
		t.Fatalf("s1's fill position = %d, want 100 (no write there)", got)
	}
	c.InvalidateAfter(func(string) uint64 { return 4000 }, "kv")
	c.applyCommit(sh, []string{"kv"}, false, 4500, time.Now())
	if got := fillMin(); got != 5000 {
		t.Fatalf("FillMinLSN after older positions = %d, want 5000 (never lowered)", got)
	}
	if got := sh.applied.Load(); got != 4500 {
		t.Fatalf("applied = %d, want 4500 (InvalidateAfter does not claim the stream applied anything)", got)
	}
}

func TestCloseIdempotent(t *testing.T) {
	c, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	c.streamUp(c.shard("s0"), 1, "t")
	k := testKey("q")
	fillAndWait(t, c, k, nil, "v")
	for range 3 {
		if err := c.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := c.Get(k, 0); ok {
		t.Fatal("Get hit after Close")
	}
	_, _, err = c.GetOrFill(context.Background(), k, nil, 0, constFill("v", nil))
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("GetOrFill after Close = %v", err)
	}
	var s interface{ SQLState() string }
	if !errors.As(err, &s) || s.SQLState() != "57P01" {
		t.Fatalf("ErrClosed SQLState: %v", err)
	}
	if err := c.Watch(context.Background(), StreamConfig{}); err == nil {
		t.Fatal("Watch after Close with a bad config succeeded")
	}
	sc := DefaultStreamConfig()
	sc.Shard, sc.ConnString = "s0", "host=127.0.0.1 port=1"
	if err := c.Watch(context.Background(), sc); !errors.Is(err, ErrClosed) {
		t.Fatalf("Watch after Close = %v", err)
	}
	_ = c.Stats()
}

// TestWatchUnreachable runs the real stream goroutine against a port where
// nothing listens: it must stay down, report the error, retry, and stop on
// Close without leaking (goleak in TestMain).
func TestWatchUnreachable(t *testing.T) {
	var downs atomic.Int64
	cfg := DefaultConfig()
	cfg.Hooks.OnStreamState = func(shard string, up bool, err error) {
		if !up && err != nil {
			downs.Add(1)
		}
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sc := DefaultStreamConfig()
	sc.Shard, sc.ConnString = "s0", "host=127.0.0.1 port=1 user=postgres sslmode=disable"
	sc.MinBackoff, sc.MaxBackoff = 5*time.Millisecond, 20*time.Millisecond
	if err := c.Watch(context.Background(), StreamConfig{Shard: "x"}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("Watch(bad) = %v", err)
	}
	if err := c.Watch(context.Background(), sc); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { return downs.Load() >= 3 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.WaitUp(ctx, "s0"); !errors.Is(err, ErrStreamDown) {
		t.Fatalf("WaitUp = %v", err)
	}
	if err := c.WaitUp(ctx, "nope"); !errors.Is(err, ErrNotWatched) {
		t.Fatalf("WaitUp(unwatched) = %v", err)
	}
	st := c.Stats()
	if len(st.Streams) != 1 || st.Streams[0].Up || st.Streams[0].LastError == "" {
		t.Fatalf("stream stats %+v", st.Streams)
	}
	k := testKey("q")
	fillAndWait(t, c, k, []string{"kv"}, "v")
	if _, ok := c.Get(k, 0); ok {
		t.Fatal("served with no stream up")
	}
	// Replacing the stream stops the old goroutine.
	if err := c.Watch(context.Background(), sc); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t testing.TB, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func BenchmarkGetOrFillHit(b *testing.B) {
	c, _ := newUpCache(b, nil)
	k := testKey("SELECT v FROM kv WHERE k = $1", "42")
	tables := []string{"kv"}
	fillAndWait(b, c, k, tables, string(make([]byte, 256)))
	fill := constFill("unused", nil)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, hit, err := c.GetOrFill(ctx, k, tables, 0, fill); !hit || err != nil {
			b.Fatal("miss")
		}
	}
}

func BenchmarkGetOrFillHitParallel(b *testing.B) {
	c, _ := newUpCache(b, nil)
	k := testKey("SELECT v FROM kv WHERE k = $1", "42")
	tables := []string{"kv"}
	fillAndWait(b, c, k, tables, string(make([]byte, 256)))
	fill := constFill("unused", nil)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, hit, err := c.GetOrFill(context.Background(), k, tables, 0, fill); !hit || err != nil {
				b.Error("miss")
				return
			}
		}
	})
}

func TestFillAfterSecondMiss(t *testing.T) {
	c, _ := newUpCache(t, func(cfg *Config) { cfg.FillAfterMisses = 2 })
	ctx := context.Background()
	var calls atomic.Int64
	k := testKey("SELECT v FROM kv WHERE k=$1", "1")
	if _, _, err := c.GetOrFill(ctx, k, []string{"kv"}, 0, constFill("one", &calls)); !errors.Is(err, ErrNotAdmitted) || calls.Load() != 0 {
		t.Fatalf("first miss: %v, %d fills; want ErrNotAdmitted and no fill", err, calls.Load())
	}
	// Another key's first miss is not admitted either.
	if _, _, err := c.GetOrFill(ctx, testKey("SELECT v FROM kv WHERE k=$1", "2"), []string{"kv"}, 0, constFill("two", &calls)); !errors.Is(err, ErrNotAdmitted) {
		t.Fatalf("other key's first miss: %v", err)
	}
	v, hit, err := c.GetOrFill(ctx, k, []string{"kv"}, 0, constFill("one", &calls))
	if err != nil || hit || string(v) != "one" || calls.Load() != 1 {
		t.Fatalf("second miss = %q, %v, %v, %d fills; want a fill", v, hit, err, calls.Load())
	}
	c.store.Wait()
	if v, hit, err := c.GetOrFill(ctx, k, []string{"kv"}, 0, constFill("x", &calls)); err != nil || !hit || string(v) != "one" {
		t.Fatalf("after the fill = %q, %v, %v; want a hit", v, hit, err)
	}
	// Invalidated, the key is filled again at its next miss (still known).
	c.Invalidate("kv")
	if v, hit, err := c.GetOrFill(ctx, k, []string{"kv"}, 0, constFill("new", &calls)); err != nil || hit || string(v) != "new" {
		t.Fatalf("after an invalidation = %q, %v, %v; want a fill", v, hit, err)
	}
	if st := c.Stats(); st.NotAdmitted != 2 || st.Fills != 2 {
		t.Fatalf("stats: %d not admitted, %d fills; want 2, 2", st.NotAdmitted, st.Fills)
	}
	if err := (Config{MaxBytes: 1, MaxEntryBytes: 1, TTL: time.Second, FillAfterMisses: 3}).Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("FillAfterMisses 3: %v", err)
	}
}
