package proxy

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"
	"weak"

	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/dbproxy/dbproxy/shard"
)

// TestRetryableReadsKeepNoBox checks that reads on a standby (which may
// run again elsewhere, so the proxy notes where the client's output
// stood) leave nothing holding the client's protocol box once the
// connection went deep idle: the box given back is collected, as it is
// after a read on the primary.
func TestRetryableReadsKeepNoBox(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl := pgcluster.StartT(t, pgcluster.Options{Name: "proxyretrybox", Standbys: 1})
	if err := cl.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cl.CreateDatabase(ctx, "app", "app", "app"); err != nil {
		t.Fatal(err)
	}
	set, rt := clusterShard(t, ctx, cl, nil)
	ts := newIdleServer(t, 50*time.Millisecond, map[shard.ID]*replica.Set{0: set}, rt, nil)
	c, err := connect(t, ts.addr, "app", "secret", "app", "sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)

	standby := cl.Standbys()[0]
	for _, run := range []struct {
		name string
		exec func() ([][]byte, error)
	}{
		{"simple", func() ([][]byte, error) {
			res, err := c.Exec(ctx, "SELECT inet_server_port()").ReadAll()
			if err != nil {
				return nil, err
			}
			return res[0].Rows[0], nil
		}},
		{"extended", func() ([][]byte, error) {
			r := c.ExecParams(ctx, "SELECT inet_server_port() + $1::int", [][]byte{[]byte("0")}, nil, nil, nil).Read()
			if r.Err != nil {
				return nil, r.Err
			}
			return r.Rows[0], nil
		}},
	} {
		t.Run(run.name, func(t *testing.T) {
			waitDeepIdle(t, ts.Server, c.PID())
			row, err := run.exec()
			if err != nil {
				t.Fatal(err)
			}
			if string(row[0]) != fmt.Sprint(standby.Port) {
				t.Fatalf("read ran on port %s, want the standby's %d", row[0], standby.Port)
			}
			conn := ts.Server.reg.lookup(c.PID())
			conn.wmu.Lock()
			box := weak.Make(conn.box)
			conn.wmu.Unlock()
			waitDeepIdle(t, ts.Server, c.PID())
			// The box goes to the server's pool, which drops what it
			// holds over two collections.
			for range 3 {
				runtime.GC()
			}
			if box.Value() != nil {
				t.Fatal("the box the connection gave back is still reachable")
			}
		})
	}
}

// clusterShard makes cl's nodes (database app, user app) shard s0: a
// replica set, adjusted by mut, closed at the end of the test, and a
// router over it.
func clusterShard(t *testing.T, ctx context.Context, cl *pgcluster.Cluster, mut func(*replica.Config)) (*replica.Set, *router.Router) {
	t.Helper()
	rc := replica.DefaultConfig()
	spec := shard.ShardSpec{Name: "s0"}
	for i, n := range cl.Nodes() {
		role, srole := replica.RoleStandby, shard.RoleStandby
		if i == 0 {
			role, srole = replica.RolePrimary, shard.RolePrimary
		}
		rc.Nodes = append(rc.Nodes, replica.NodeConfig{Name: n.Name, Role: role,
			ConnString: fmt.Sprintf("host=%s port=%d user=app password=app dbname=app sslmode=disable", n.Host, n.Port)})
		spec.Nodes = append(spec.Nodes, shard.NodeSpec{Name: n.Name, Host: n.Host, Port: n.Port, Role: srole})
	}
	if mut != nil {
		mut(&rc)
	}
	set, err := replica.NewSet(ctx, rc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = set.Close(context.Background()) })
	topo, err := shard.NewTopology(shard.TopologySpec{Shards: []shard.ShardSpec{spec}})
	if err != nil {
		t.Fatal(err)
	}
	rcfg := router.DefaultConfig()
	rcfg.Topology = router.NewStaticTopology(topo)
	rt, err := router.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	return set, rt
}
