package integration

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/dbproxy/dbproxy/internal/pgcluster"
)

// testProxyClientDiesMidQuery: a client that disconnects (no Terminate)
// while its query runs has the query cancelled on the backend within
// about server.client_check_interval, rather than left to run to its end
// (60 s here), and a row it locked is free again at once.
func testProxyClientDiesMidQuery(t *testing.T, env *proxyEnv) {
	ctx := env.ctx
	waitRunning := func(app string, want int, within time.Duration) {
		t.Helper()
		waitActive(t, ctx, env.clusters, app, want, within)
	}
	// start2 connects as app, sends msgs and waits until the query runs
	// on n backends.
	start2 := func(app string, n int, msgs ...pgproto3.FrontendMessage) *pgconn.PgConn {
		t.Helper()
		pc, err := pgconn.Connect(ctx, env.dsn("application_name="+app))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			pc.Frontend().Send(m)
		}
		if err := pc.Frontend().Flush(); err != nil {
			t.Fatal(err)
		}
		waitRunning(app, n, 10*time.Second)
		return pc
	}
	start := func(app string, msgs ...pgproto3.FrontendMessage) *pgconn.PgConn {
		t.Helper()
		return start2(app, 1, msgs...)
	}
	before := env.srv.Stats().ClientsGoneMidQuery

	// A read outside a transaction (a standby), simple protocol: the
	// client's socket is closed under it.
	pc := start("dead-read", &pgproto3.Query{String: "select pg_sleep(60)"})
	pc.Conn().Close()
	waitRunning("dead-read", 0, 10*time.Second)

	// Inside a transaction on the primary, holding a row lock, extended
	// protocol.
	setup := pxConnect(t, env, "")
	pxExec(t, setup, "create table dead_client (id int primary key, v text)")
	pxExec(t, setup, "insert into dead_client values (7, 'before')")
	pc = start("dead-tx",
		&pgproto3.Query{String: "begin; update dead_client set v = 'dead' where id = 7"},
		&pgproto3.Parse{Query: "select pg_sleep($1)"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("60")}},
		&pgproto3.Execute{}, &pgproto3.Sync{})
	pc.Conn().Close()
	waitRunning("dead-tx", 0, 10*time.Second)
	other := pxConnect(t, env, "")
	pxExec(t, other, "set lock_timeout = '5s'")
	pxExec(t, other, "update dead_client set v = 'after' where id = 7")
	var v string
	if err := other.QueryRow(ctx, "select v from dead_client where id = 7").Scan(&v); err != nil || v != "after" {
		t.Fatalf("row 7: %q %v (the dead client's transaction must be rolled back)", v, err)
	}
	// A read of every shard (users is sharded; Sharding put rows on both),
	// run by the proxy on backends of its own.
	pc = start2("dead-multi", 2, &pgproto3.Query{String: "select id, pg_sleep(60) from users order by id"})
	pc.Conn().Close()
	waitRunning("dead-multi", 0, 10*time.Second)
	if got := env.srv.Stats().ClientsGoneMidQuery - before; got != 3 {
		t.Errorf("Stats.ClientsGoneMidQuery went up by %d, want 3", got)
	}

	// A reply pumped while the reader reads the client (Flush, no Sync):
	// the reader sees the end of the stream itself and the query is
	// cancelled as it gives the backend up.
	pc = start("dead-flush", &pgproto3.Parse{Query: "select pg_sleep(60)"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
	pc.Conn().Close()
	waitRunning("dead-flush", 0, 10*time.Second)
}

// waitActive waits until exactly want backends, over every node of
// clusters, run a query for the client connected with application_name
// app, and fails t if that is not so within the given time.
func waitActive(t *testing.T, ctx context.Context, clusters []*pgcluster.Cluster, app string, want int, within time.Duration) {
	t.Helper()
	var admins []*pgx.Conn
	for _, c := range clusters {
		for _, n := range append(c.Standbys(), c.Primary()) {
			conn, err := pgx.Connect(ctx, appConnString(n))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			admins = append(admins, conn)
		}
	}
	deadline := time.Now().Add(within)
	for {
		total := 0
		for _, a := range admins {
			var n int
			if err := a.QueryRow(ctx, "select count(*) from pg_stat_activity where application_name = $1 and state = 'active'", app).Scan(&n); err != nil {
				t.Fatal(err)
			}
			total += n
		}
		if total == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d backends running its query after %v, want %d", app, total, within, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
