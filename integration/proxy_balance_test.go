package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/jackc/pgx/v5"
)

// TestProxyHashBalance: with the hash balancing policy, a read with the
// same text and parameter values is always served by the same standby,
// in the simple and the extended protocol, and different values spread
// over the standbys.
func TestProxyHashBalance(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := pgcluster.StartT(t, pgcluster.Options{Name: "proxybal", Standbys: 2})
	if err := c.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateDatabase(ctx, "app", "app", "app"); err != nil {
		t.Fatal(err)
	}
	clusters := []*pgcluster.Cluster{c}
	env := startProxyEnvWith(t, ctx, clusters, func(rc *replica.Config) { rc.Policy = replica.Hash }, nil)
	standbys := map[int]string{}
	for _, n := range c.Standbys() {
		standbys[n.Port] = n.Name
	}

	setup, err := pgx.Connect(ctx, env.url(""))
	if err != nil {
		t.Fatal(err)
	}
	defer setup.Close(ctx)
	const keys = 32
	if _, err := setup.Exec(ctx, `CREATE TABLE items (id bigint PRIMARY KEY, name text)`); err != nil {
		t.Fatal(err)
	}
	if _, err := setup.Exec(ctx, `INSERT INTO items SELECT g, 'u' || g FROM generate_series(0, $1::int - 1) g`, keys); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}

	for _, mode := range []string{"simple_protocol", "cache_statement"} {
		t.Run(mode, func(t *testing.T) {
			conn, err := pgx.Connect(ctx, env.url("&default_query_exec_mode="+mode))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			byKey := map[int]int{}
			used := map[string]int{}
			for round := 0; round < 3; round++ {
				for k := 0; k < keys; k++ {
					var port int
					var name string
					if err := conn.QueryRow(ctx, "SELECT inet_server_port(), name FROM items WHERE id = $1", k).Scan(&port, &name); err != nil {
						t.Fatal(err)
					}
					if name != fmt.Sprintf("u%d", k) {
						t.Fatalf("key %d: name %q", k, name)
					}
					sb, ok := standbys[port]
					if !ok {
						t.Fatalf("key %d: read served by port %d, not a standby", k, port)
					}
					if prev, seen := byKey[k]; seen && prev != port {
						t.Fatalf("key %d: read from %s, then from %s", k, standbys[prev], sb)
					}
					byKey[k] = port
					used[sb]++
				}
			}
			if len(used) != len(standbys) {
				t.Fatalf("reads of %d keys used %v of the standbys %v", keys, used, standbys)
			}
		})
	}
}
