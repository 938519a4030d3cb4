package integration

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/driver"
	"github.com/dbproxy/dbproxy/internal/pgcluster"
)

// TestDriverReplicas runs the replica scenarios through the driver on two
// shards of a primary and two standbys each: reads avoid standbys whose
// replay is paused (falling back to the primary), survive a killed
// standby, and read-your-writes holds for 10,000 write-then-read pairs
// carried by causal tokens while replay is paused and resumed at random.
func TestDriverReplicas(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	clusters := startDriverClusters(t, ctx, "drvrep", 2, 2)
	cfg := driverConfig(t, clusters, "counters(id:int)", nil)
	writer := openDriverEnv(t, clusters, cfg)
	reader := openDriverEnv(t, clusters, cfg) // another "service": shares nothing with writer but tokens

	if _, err := writer.db.ExecContext(ctx, `CREATE TABLE counters (id int PRIMARY KEY, v bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	const keys = 64
	for k := 0; k < keys; k++ {
		if _, err := writer.db.ExecContext(ctx, `INSERT INTO counters (id, v) VALUES ($1, 0)`, k); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range clusters {
		if err := c.WaitStreaming(ctx); err != nil {
			t.Fatal(err)
		}
	}
	allStandbys := func() []*pgcluster.Node {
		var out []*pgcluster.Node
		for _, c := range clusters {
			out = append(out, c.Standbys()...)
		}
		return out
	}
	resumeAll := func() {
		for _, n := range allStandbys() {
			if n.Running() {
				_ = n.ResumeReplay(context.Background())
			}
		}
	}
	defer resumeAll()

	t.Run("paused replay", func(t *testing.T) {
		// Pause every standby: a write is then invisible on all of them.
		for _, n := range allStandbys() {
			if err := n.PauseReplay(ctx); err != nil {
				t.Fatal(err)
			}
		}
		wctx, tr := driver.WithCausalTracking(ctx)
		if _, err := writer.db.ExecContext(wctx, `UPDATE counters SET v = 777 WHERE id = $1`, 5); err != nil {
			t.Fatal(err)
		}
		tok := tr.Token()
		if tok == "" || driver.CausalToken(wctx) != tok {
			t.Fatalf("no causal token after a write: %q / %q", tok, driver.CausalToken(wctx))
		}
		before := fallbacks(reader)
		for i := 0; i < 20; i++ {
			var v int64
			if err := reader.db.QueryRowContext(driver.WithCausalToken(ctx, tok), `SELECT v FROM counters WHERE id = $1`, 5).Scan(&v); err != nil {
				t.Fatal(err)
			}
			if v != 777 {
				t.Fatalf("read with token saw %d: a stale standby served it", v)
			}
		}
		if fallbacks(reader) < before+20 {
			t.Fatalf("reads with a token the paused standbys lack did not fall back to the primary (%d -> %d)", before, fallbacks(reader))
		}
		// Without a token but with a tight staleness bound, the paused
		// standbys (whose lag time grows) are avoided too.
		time.Sleep(300 * time.Millisecond)
		before = fallbacks(reader)
		for i := 0; i < 10; i++ {
			var v int64
			if err := reader.db.QueryRowContext(driver.WithMaxStaleness(ctx, 100*time.Millisecond), `SELECT v FROM counters WHERE id = $1`, 5).Scan(&v); err != nil {
				t.Fatal(err)
			}
			if v != 777 {
				t.Fatalf("read with max staleness 100ms saw %d", v)
			}
		}
		if fallbacks(reader) < before+10 {
			t.Fatalf("stale standbys served reads bounded to 100ms staleness")
		}
		resumeAll()
	})

	t.Run("read your writes under random pauses", func(t *testing.T) {
		const pairs = 10000
		const workers = 4
		stop := make(chan struct{})
		var pauser sync.WaitGroup
		pauser.Add(1)
		go func() {
			defer pauser.Done()
			rng := rand.New(rand.NewPCG(1, 2))
			sb := allStandbys()
			for {
				n := sb[rng.IntN(len(sb))]
				_ = n.PauseReplay(ctx)
				select {
				case <-stop:
					return
				case <-time.After(time.Duration(20+rng.IntN(200)) * time.Millisecond):
				}
				_ = n.ResumeReplay(ctx)
				select {
				case <-stop:
					return
				case <-time.After(time.Duration(rng.IntN(100)) * time.Millisecond):
				}
			}
		}()
		s0, p0 := reader.picks()
		var stale, done atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 1; i <= pairs/workers; i++ {
					id := w*(keys/workers) + i%(keys/workers)
					val := int64(w*1_000_000 + i)
					wctx, tr := driver.WithCausalTracking(ctx)
					if _, err := writer.db.ExecContext(wctx, `UPDATE counters SET v = $2 WHERE id = $1`, id, val); err != nil {
						errs <- err
						return
					}
					var v int64
					if err := reader.db.QueryRowContext(driver.WithCausalToken(ctx, tr.Token()), `SELECT v FROM counters WHERE id = $1`, id).Scan(&v); err != nil {
						errs <- err
						return
					}
					if v != val {
						stale.Add(1)
					}
					done.Add(1)
				}
			}()
		}
		wg.Wait()
		close(stop)
		pauser.Wait()
		resumeAll()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		s1, p1 := reader.picks()
		share := float64(s1-s0) / float64((s1-s0)+(p1-p0))
		t.Logf("%d write-then-read pairs, %d stale reads, %.1f%% of reads served by standbys", done.Load(), stale.Load(), 100*share)
		if done.Load() < pairs {
			t.Fatalf("only %d pairs ran", done.Load())
		}
		if stale.Load() != 0 {
			t.Fatalf("%d stale reads despite causal tokens", stale.Load())
		}
		if share <= 0.20 {
			t.Fatalf("standbys served only %.1f%% of reads", 100*share)
		}
	})

	t.Run("hash balancing", func(t *testing.T) {
		// balance = hash: a read with the same text and parameter values
		// always lands on the same standby; different values spread.
		hcfg := driverConfig(t, clusters, "counters(id:int)", func(c *config.Config) { c.Routing.Balance = config.Hash })
		hashed := openDriverEnv(t, clusters, hcfg)
		checkStickyReads(t, allStandbys(), keys, func(k int) (int, error) {
			var v int64
			var port int
			err := hashed.db.QueryRowContext(ctx, `SELECT v, inet_server_port() FROM counters WHERE id = $1`, k).Scan(&v, &port)
			return port, err
		})
	})

	t.Run("killed standby", func(t *testing.T) {
		victim := clusters[0].Standbys()[0]
		// warm the pools so that dead pooled connections are exercised
		for i := 0; i < 50; i++ {
			var v int64
			if err := reader.db.QueryRowContext(ctx, `SELECT v FROM counters WHERE id = $1`, i%keys).Scan(&v); err != nil {
				t.Fatal(err)
			}
		}
		if err := victim.Kill(); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 500; i++ {
			var v int64
			if err := reader.db.QueryRowContext(ctx, `SELECT v FROM counters WHERE id = $1`, i%keys).Scan(&v); err != nil {
				t.Fatalf("read %d after killing %s: %v", i, victim.Name, err)
			}
		}
		var standbyReads uint64
		for _, nodes := range reader.conn.Stats() {
			for _, n := range nodes {
				if n.Name == victim.Name && n.Healthy {
					t.Logf("%s still marked healthy (probe pending)", n.Name)
				}
				if n.ConfiguredRole.String() == "standby" && n.Name != victim.Name {
					standbyReads += n.Picks
				}
			}
		}
		if standbyReads == 0 {
			t.Fatal("no reads went to the surviving standbys")
		}
	})
}

// fallbacks sums the primaries' fallback counters of e.
func fallbacks(e *driverEnv) uint64 {
	var n uint64
	for _, nodes := range e.conn.Stats() {
		for _, s := range nodes {
			n += s.Fallbacks
		}
	}
	return n
}
