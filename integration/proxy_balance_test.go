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
			checkStickyReads(t, c.Standbys(), keys, func(k int) (int, error) {
				var port int
				var name string
				err := conn.QueryRow(ctx, "SELECT inet_server_port(), name FROM items WHERE id = $1", k).Scan(&port, &name)
				if err == nil && name != fmt.Sprintf("u%d", k) {
					err = fmt.Errorf("key %d: name %q", k, name)
				}
				return port, err
			})
		})
	}
}

// checkStickyReads checks reads under the hash balancing policy: read(k)
// returns the port of the server that answered the read of key k; over
// three rounds each key must be answered by the same standby every time,
// and the keys must spread over all of standbys.
func checkStickyReads(t *testing.T, standbys []*pgcluster.Node, keys int, read func(k int) (port int, err error)) {
	t.Helper()
	names := map[int]string{}
	for _, n := range standbys {
		names[n.Port] = n.Name
	}
	byKey := map[int]int{}
	used := map[string]int{}
	for round := 0; round < 3; round++ {
		for k := 0; k < keys; k++ {
			port, err := read(k)
			if err != nil {
				t.Fatal(err)
			}
			name, ok := names[port]
			if !ok {
				t.Fatalf("key %d: read served by port %d, not a standby", k, port)
			}
			if prev, seen := byKey[k]; seen && prev != port {
				t.Fatalf("key %d: read from %s, then from %s", k, names[prev], name)
			}
			byKey[k] = port
			used[name]++
		}
	}
	if len(used) != len(names) {
		t.Fatalf("reads of %d keys used %v of the standbys %v", keys, used, names)
	}
}
