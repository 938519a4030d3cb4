package integration

import (
	"context"
	"fmt"
	"strings"
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
	cl, env := startReadShard(t, ctx, pgcluster.Options{Name: "frozen", Standbys: 2}, "fz")

	const clients = 8
	pcs := make([]*pgconn.PgConn, clients)
	for i := range pcs {
		pcs[i] = connectProxy(t, env)
	}
	load := startReadLoad(clients, func(i, n int) error {
		pc, id := pcs[i], n%100+1
		// Bounded, so that a read stuck on the frozen node ends the test
		// with an error instead of hanging it.
		rctx, rcancel := context.WithTimeout(ctx, time.Minute)
		defer rcancel()
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
		if err == nil && (len(rows) != 1 || string(rows[0][0]) != fmt.Sprintf("v%d", id)) {
			err = fmt.Errorf("id %d: got %q", id, rows)
		}
		return err
	})
	defer load.halt() // after the thaw below: a read stuck on the frozen node ends then
	waitProgress := func(what string, within time.Duration) { t.Helper(); load.waitProgress(t, what, within) }
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
	if err := load.halt(); err != nil {
		t.Fatal(err)
	}
}
