package integration

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/proxy"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/dbproxy/dbproxy/shard"
)

// proxyEnv is two shards (two clusters: a primary and a standby each)
// with database "app" owned by user app/app, and a proxy in front of them
// on 127.0.0.1:0.
type proxyEnv struct {
	clusters []*pgcluster.Cluster
	sets     map[shard.ID]*replica.Set
	srv      *proxy.Server
	addr     string
	cfg      proxy.Config
	ctx      context.Context
}

func startProxyClusters(t testing.TB, ctx context.Context) []*pgcluster.Cluster {
	t.Helper()
	var out []*pgcluster.Cluster
	for i := 0; i < 2; i++ {
		c := pgcluster.StartT(t, pgcluster.Options{Name: fmt.Sprintf("proxy%d", i), Standbys: 1})
		if err := c.WaitStreaming(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.CreateDatabase(ctx, "app", "app", "app"); err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func appConnString(n *pgcluster.Node) string {
	return fmt.Sprintf("host=%s port=%d user=app password=app dbname=app sslmode=disable", n.Host, n.Port)
}

// startProxyEnv starts replica sets and a proxy over clusters. mut may
// adjust the proxy config, deps the proxy's Deps (a cache, for instance).
// Everything is stopped by t.Cleanup.
func startProxyEnv(t testing.TB, ctx context.Context, clusters []*pgcluster.Cluster, mut func(*proxy.Config), deps ...func(*proxy.Deps)) *proxyEnv {
	t.Helper()
	return startProxyEnvWith(t, ctx, clusters, nil, mut, deps...)
}

// startProxyEnvWith is startProxyEnv whose replica sets' config rmut may
// adjust (a balancing policy, for instance).
func startProxyEnvWith(t testing.TB, ctx context.Context, clusters []*pgcluster.Cluster, rmut func(*replica.Config), mut func(*proxy.Config), deps ...func(*proxy.Deps)) *proxyEnv {
	t.Helper()
	env := &proxyEnv{clusters: clusters, sets: map[shard.ID]*replica.Set{}, ctx: ctx}
	for i, c := range clusters {
		rc := replica.DefaultConfig()
		rc.Nodes = []replica.NodeConfig{{Name: fmt.Sprintf("s%d-primary", i), ConnString: appConnString(c.Primary()), Role: replica.RolePrimary}}
		for j, sb := range c.Standbys() {
			rc.Nodes = append(rc.Nodes, replica.NodeConfig{Name: fmt.Sprintf("s%d-standby%d", i, j+1), ConnString: appConnString(sb), Role: replica.RoleStandby})
		}
		rc.PoolSize = 20
		if rmut != nil {
			rmut(&rc)
		}
		set, err := replica.NewSet(ctx, rc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = set.Close(context.Background()) })
		env.sets[shard.ID(i)] = set
	}
	cfg := proxy.DefaultConfig()
	cfg.Users = []proxy.User{{Name: "app", Password: "app"}}
	cfg.Databases = []string{"app"}
	cfg.ShutdownTimeout = 5 * time.Second
	if mut != nil {
		mut(&cfg)
	}
	env.cfg = cfg
	d := proxy.Deps{Router: newProxyTestRouter(t, clusters, proxy.FunctionCatalog(env.sets[0])), Shards: env.sets}
	for _, f := range deps {
		f(&d)
	}
	srv, err := proxy.New(cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.srv, env.addr = srv, ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := srv.Close(cctx); err != nil {
			t.Errorf("proxy Close: %v", err)
		}
		<-done
	})
	return env
}

// dsn is a libpq keyword DSN for the proxy.
func (e *proxyEnv) dsn(extra string) string {
	host, port, _ := net.SplitHostPort(e.addr)
	return fmt.Sprintf("host=%s port=%s user=app password=app dbname=app sslmode=disable %s", host, port, extra)
}

func (e *proxyEnv) url(extra string) string {
	return e.urlAs("app", "app", "app") + extra
}

// urlAs is a URL for the proxy as user with password, to database db.
func (e *proxyEnv) urlAs(user, password, db string) string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", user, password, e.addr, db)
}

// newProxyTestRouter routes over shards s0 and s1 (one per cluster).
// Sharded tables: users(id int), events(user_id int), kv(k text).
// Everything else (pgbench's tables included) lives on s0. functions is
// the router's catalog of user-defined functions, as dbproxy serve sets it.
func newProxyTestRouter(t testing.TB, clusters []*pgcluster.Cluster, functions router.FunctionCatalog) *router.Router {
	t.Helper()
	spec := shard.TopologySpec{
		Tables: []shard.TableSpec{
			{Name: "users", Columns: []string{"id"}, Types: []shard.KeyType{shard.KeyInt}},
			{Name: "events", Columns: []string{"user_id"}, Types: []shard.KeyType{shard.KeyInt}},
			{Name: "kv", Columns: []string{"k"}, Types: []shard.KeyType{shard.KeyText}},
		},
	}
	for i, c := range clusters {
		ss := shard.ShardSpec{Name: fmt.Sprintf("s%d", i)}
		for j, n := range c.Nodes() {
			role := shard.RoleStandby
			if j == 0 {
				role = shard.RolePrimary
			}
			ss.Nodes = append(ss.Nodes, shard.NodeSpec{Name: n.Name, Host: n.Host, Port: n.Port, Role: role})
		}
		spec.Shards = append(spec.Shards, ss)
	}
	topo, err := shard.NewTopology(spec)
	if err != nil {
		t.Fatal(err)
	}
	cfg := router.DefaultConfig()
	cfg.Topology = router.NewStaticTopology(topo)
	cfg.Functions = functions
	r, err := router.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// newProxyTest starts two clusters and a proxy over them (mut adjusts the
// proxy config) for a test that takes at most five minutes; everything is
// stopped by t.Cleanup.
func newProxyTest(t *testing.T, mut func(*proxy.Config)) (context.Context, []*pgcluster.Cluster, *proxyEnv) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	clusters := startProxyClusters(t, ctx)
	return ctx, clusters, startProxyEnv(t, ctx, clusters, mut)
}
