package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/shard"
)

// TestProxyReadsLeaveFrozenStandby: a standby whose server stops
// answering without closing anything (every process SIGSTOPped, as a hung
// host or a partition that drops packets looks) under a read load from 8
// clients. Reads waiting on it when its probes fail are sent again to the
// other nodes, and new reads avoid it: every client keeps making progress
// and none sees an error, where before the reads in flight on it waited
// until it was resumed. Once resumed it is healthy again.
func TestProxyReadsLeaveFrozenStandby(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cl, env := startOneShardProxy(t, ctx, pgcluster.Options{Name: "frozen", Standbys: 2})
	setup := connectProxy(t, env)
	simple(t, setup, "CREATE TABLE fz (id int PRIMARY KEY, v text)")
	simple(t, setup, "INSERT INTO fz SELECT i, 'v' || i FROM generate_series(1, 100) i")
	for _, sb := range cl.Standbys() {
		conn, err := sb.Connect(ctx, "app")
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, sb.Name+" replaying the rows", func() bool {
			var n int
			return conn.QueryRow(ctx, "SELECT count(*) FROM fz").Scan(&n) == nil && n == 100
		})
		_ = conn.Close(ctx)
	}

	const clients = 8
	var stop atomic.Bool
	var done [clients]atomic.Int64
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for i := range clients {
		pc := connectProxy(t, env)
		wg.Go(func() {
			for n := 0; !stop.Load(); n++ {
				id := n%100 + 1
				// Bounded, so that a read stuck on the frozen node ends the
				// test with an error instead of hanging it.
				rctx, rcancel := context.WithTimeout(ctx, time.Minute)
				var rows [][][]byte
				var err error
				if i%2 == 0 {
					var res []*pgconn.Result
					if res, err = pc.Exec(rctx, fmt.Sprintf("SELECT v FROM fz WHERE id = %d", id)).ReadAll(); err == nil {
						rows = res[0].Rows
					}
				} else {
					r := pc.ExecParams(rctx, "SELECT v FROM fz WHERE id = $1", [][]byte{fmt.Appendf(nil, "%d", id)}, nil, nil, nil).Read()
					rows, err = r.Rows, r.Err
				}
				rcancel()
				if err == nil && (len(rows) != 1 || string(rows[0][0]) != fmt.Sprintf("v%d", id)) {
					err = fmt.Errorf("id %d: got %q", id, rows)
				}
				if err != nil {
					errs[i] = err
					return
				}
				done[i].Add(1)
			}
		})
	}
	defer func() { stop.Store(true); wg.Wait() }()
	// waitProgress waits until every client has made 20 more reads.
	waitProgress := func(what string, within time.Duration) {
		t.Helper()
		var from [clients]int64
		for i := range from {
			from[i] = done[i].Load()
		}
		deadline := time.Now().Add(within)
		for {
			ok := true
			for i := range from {
				if errs[i] != nil {
					t.Fatalf("%s: client %d: %v", what, i, errs[i])
				}
				if done[i].Load() < from[i]+20 {
					ok = false
				}
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				var now [clients]int64
				for i := range now {
					now[i] = done[i].Load()
				}
				t.Fatalf("%s: clients stalled at %v (from %v) for %v", what, now, from, within)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitProgress("before the freeze", 30*time.Second)
	frozen := cl.Standbys()[0]
	node := env.sets[shard.ID(0)].Node("s0-standby1")
	if node == nil || !strings.HasSuffix(frozen.Name, "standby1") {
		t.Fatalf("standby %s / node %v", frozen.Name, node)
	}
	if poolIdle(env, "standby1") == 0 {
		t.Fatal("no idle pooled connection to standby1 before the freeze")
	}
	retries := env.srv.Stats().ReadRetries
	thaw, err := frozen.Freeze()
	if err != nil {
		t.Fatal(err)
	}
	thawed := false
	defer func() {
		if !thawed {
			thaw()
		}
	}()
	start := time.Now()
	waitProgress("after the freeze", 20*time.Second)
	waitFor(t, 20*time.Second, "standby1 found failing", node.Failing)
	waitProgress("with standby1 frozen", 20*time.Second)
	if env.srv.Stats().ReadRetries == retries {
		t.Fatal("no read was sent again: none was waiting on the frozen standby")
	}
	t.Logf("every client progressing %v after the freeze; %d reads sent again", time.Since(start).Round(time.Millisecond), env.srv.Stats().ReadRetries-retries)

	thaw()
	thawed = true
	waitFor(t, 30*time.Second, "standby1 healthy again", func() bool { return !node.Failing() })
	waitProgress("after the thaw", 30*time.Second)
}
