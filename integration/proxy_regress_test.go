package integration

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestProxyMultiShardReadFirstShardEmpty reads through the proxy with an
// IN list whose keys fall on both shards while only the second shard holds
// a matching row. The proxy runs the read on both shards and merges; the
// first shard's empty result must not make it drop the second shard's rows
// (pgconn only reports a result's columns along with its first row, and an
// empty first result once passed for a command without a result set). Both
// the extended protocol (binary parameters, as database/sql with pgx sends
// them) and the simple protocol are checked.
func TestProxyMultiShardReadFirstShardEmpty(t *testing.T) {
	ctx, clusters, env := newProxyTest(t, nil)

	db, err := sql.Open("pgx", env.url(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx) // one session: reads see its own writes
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for id := 1; id <= 20; id++ {
		if _, err := conn.ExecContext(ctx, `INSERT INTO users (id, name) VALUES ($1, $2)`, id, fmt.Sprintf("u%d", id)); err != nil {
			t.Fatal(err)
		}
	}
	// Where did the rows go? Ask each shard's primary directly.
	onShard := make([][]int, len(clusters))
	for i, c := range clusters {
		pc, err := c.Primary().Connect(ctx, "app")
		if err != nil {
			t.Fatal(err)
		}
		rows, err := pc.Query(ctx, `SELECT id FROM users ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		_ = pc.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			onShard[i] = append(onShard[i], int(id))
		}
	}
	if len(onShard[0]) == 0 || len(onShard[1]) == 0 || len(onShard[0])+len(onShard[1]) != 20 {
		t.Fatalf("rows by shard: %v (want 20 rows over both shards)", onShard)
	}
	// A key of shard 0 without a row, and one of shard 1 with a row.
	gone, kept := onShard[0][0], onShard[1][0]
	if _, err := conn.ExecContext(ctx, `DELETE FROM users WHERE id = $1`, gone); err != nil {
		t.Fatal(err)
	}

	query := func(args ...any) string {
		t.Helper()
		rows, err := conn.QueryContext(ctx, `SELECT id, name FROM users WHERE id IN ($1, $2) ORDER BY id`, args...)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var id int
			var name string
			if err := rows.Scan(&id, &name); err != nil {
				t.Fatal(err)
			}
			out = append(out, fmt.Sprintf("%d:%s", id, name))
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return strings.Join(out, ",")
	}
	want := fmt.Sprintf("%d:u%d", kept, kept)
	for _, mode := range []struct {
		name string
		args []any
	}{
		{"extended", nil},
		{"simple", []any{pgx.QueryExecModeSimpleProtocol}},
	} {
		// Keys on both shards, the row on shard 1 only, in either order.
		for _, keys := range [][2]int{{gone, kept}, {kept, gone}} {
			args := append(append([]any{}, mode.args...), keys[0], keys[1])
			if got := query(args...); got != want {
				t.Errorf("%s protocol, IN (%d, %d): got rows %q, want %q (shard 0 holds %v, shard 1 holds %v)", mode.name, keys[0], keys[1], got, want, onShard[0][1:], onShard[1])
			}
		}
		// No matching row anywhere (1000 is past the ids written): no rows, no error.
		missing := 1000
		args := append(append([]any{}, mode.args...), gone, missing)
		if got := query(args...); got != "" {
			t.Errorf("%s protocol, IN (%d, %d): got rows %q, want none", mode.name, gone, missing, got)
		}
	}
}

// TestProxyMultiShardRowLimits checks Execute row limits on a merged
// multi-shard read: the proxy answers the same messages as PostgreSQL
// does for the same rows in one table (PortalSuspended at each limit
// reached, the completing Execute's own row count, nothing more after).
func TestProxyMultiShardRowLimits(t *testing.T) {
	ctx, clusters, env := newProxyTest(t, nil)
	pc := connectProxy(t, env)
	simple(t, pc, "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL)")
	direct, err := pgconn.Connect(ctx, appConnString(clusters[0].Primary()))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	simple(t, direct, "CREATE TABLE users_flat (id int PRIMARY KEY, name text NOT NULL)")
	for id := 1; id <= 20; id++ {
		simple(t, pc, fmt.Sprintf("INSERT INTO users (id, name) VALUES (%d, 'u%d')", id, id))
		simple(t, direct, fmt.Sprintf("INSERT INTO users_flat (id, name) VALUES (%d, 'u%d')", id, id))
	}
	if err := clusters[0].WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	if err := clusters[1].WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	exchange := func(table, from, to string, limits ...uint32) []pgproto3.FrontendMessage {
		msgs := []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "SELECT id, name FROM " + table + " WHERE id BETWEEN $1 AND $2 ORDER BY id"},
			&pgproto3.Bind{Parameters: [][]byte{[]byte(from), []byte(to)}},
		}
		for _, n := range limits {
			msgs = append(msgs, &pgproto3.Execute{MaxRows: n})
		}
		return append(msgs, &pgproto3.Sync{})
	}
	for _, tc := range []struct {
		from, to string
		limits   []uint32
	}{
		{"3", "12", []uint32{2, 3, 0, 0}},
		{"1", "20", []uint32{5, 5, 5, 5, 5}},
		{"4", "8", []uint32{5, 1}},
		{"4", "7", []uint32{10}},
		{"100", "200", []uint32{1, 1}},
	} {
		want := wireExchange(t, ctx, appConnString(clusters[0].Primary()), exchange("users_flat", tc.from, tc.to, tc.limits...), 1)
		got := wireExchange(t, ctx, env.dsn(""), exchange("users", tc.from, tc.to, tc.limits...), 1)
		if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
			t.Fatalf("ids %s..%s, limits %v:\nproxy:  %q\ndirect: %q", tc.from, tc.to, tc.limits, got, want)
		}
	}
}
