package integration

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/driver"
	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/shard"
	_ "github.com/jackc/pgx/v5/stdlib" // "pgx" for direct connections
)

// driverEnv is a set of clusters (one per shard) with database "app"
// owned by app/app, and a *sql.DB over the dbproxy driver.
type driverEnv struct {
	clusters []*pgcluster.Cluster
	cfg      *config.Config
	conn     *driver.Connector
	db       *sql.DB
}

// startDriverClusters starts shards clusters of one primary and standbys
// standbys each, streaming, with database app owned by app/app.
func startDriverClusters(t testing.TB, ctx context.Context, name string, shards, standbys int) []*pgcluster.Cluster {
	t.Helper()
	out := make([]*pgcluster.Cluster, shards)
	errs := make(chan error, shards)
	for i := range shards {
		go func() {
			c, err := pgcluster.Start(ctx, pgcluster.Options{Name: fmt.Sprintf("%s%d", name, i), Standbys: standbys,
				Settings: map[string]string{"max_connections": "200"}})
			if err == nil {
				out[i] = c
				err = c.WaitStreaming(ctx)
			}
			if err == nil {
				err = c.CreateDatabase(ctx, "app", "app", "app")
			}
			errs <- err
		}()
	}
	var first error
	for range shards {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	for _, c := range out {
		if c != nil {
			t.Cleanup(func() {
				sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				_ = c.Stop(sctx)
			})
		}
	}
	if first != nil {
		t.Fatal(first)
	}
	return out
}

// driverConfig is the dbproxy configuration of clusters: shard s<i> per
// cluster, user app/app, database app, and the given sharded tables
// ("users(id:int)"). The first shard's primary is reached on its Unix
// socket, every other node over TCP.
func driverConfig(t testing.TB, clusters []*pgcluster.Cluster, tables string, mut func(*config.Config)) *config.Config {
	t.Helper()
	var shards []string
	for i, c := range clusters {
		var nodes []string
		for j, n := range c.Nodes() {
			host := n.Host
			if i == 0 && j == 0 {
				if n.SocketDir == "" {
					t.Fatalf("%s has no Unix socket", n.Name)
				}
				host = n.SocketDir
			}
			nodes = append(nodes, fmt.Sprintf("%s@%s:%d", n.Name, host, n.Port))
		}
		shards = append(shards, fmt.Sprintf("s%d:%s", i, strings.Join(nodes, "|")))
	}
	dsn := "shards=" + strings.Join(shards, ",") + ";user=app;password=app;database=app;lag_interval=20ms;catch_up_wait=50ms;max_staleness=5s"
	if tables != "" {
		dsn += ";tables=" + tables
	}
	d, err := driver.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := d.Config()
	if err != nil {
		t.Fatal(err)
	}
	if mut != nil {
		mut(cfg)
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	return cfg
}

// openDriverEnv opens a *sql.DB over cfg through driver.NewConnector.
func openDriverEnv(t testing.TB, clusters []*pgcluster.Cluster, cfg *config.Config) *driverEnv {
	t.Helper()
	c, err := driver.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("db.Close: %v", err)
		}
	})
	return &driverEnv{clusters: clusters, cfg: cfg, conn: c, db: db}
}

// standbyReads sums the Picks of standbys across shards.
func (e *driverEnv) picks() (standby, primary uint64) {
	for _, nodes := range e.conn.Stats() {
		for _, n := range nodes {
			if n.ConfiguredRole.String() == "standby" {
				standby += n.Picks
			} else {
				primary += n.Picks
			}
		}
	}
	return
}

// directDB opens pgx's stdlib straight to a node as app/app.
func directDB(t testing.TB, n *pgcluster.Node) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", fmt.Sprintf("host=%s port=%d user=app password=app dbname=app sslmode=disable", n.Host, n.Port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func keyOf(v int64) shard.Key { return shard.KeyFromInt(v) }
