package integration

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestProxyBasic(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	env := startProxyEnv(t, ctx, startProxyClusters(t, ctx), nil)

	conn, err := pgx.Connect(ctx, env.url(""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "select 1+$1::int", 41).Scan(&n); err != nil || n != 42 {
		t.Fatalf("got %d, %v", n, err)
	}
	if _, err := conn.Exec(ctx, "create table if not exists t1 (id int primary key, v text)"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if _, err := conn.Exec(ctx, "insert into t1 values ($1, $2) on conflict (id) do update set v = excluded.v", i, "x"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, "set search_path = pg_catalog, public"); err != nil {
		t.Fatal(err)
	}
	var sp string
	for i := 0; i < 5; i++ {
		if err := conn.QueryRow(ctx, "show search_path").Scan(&sp); err != nil || sp != "pg_catalog, public" {
			t.Fatalf("search_path %q %v", sp, err)
		}
	}
	t.Logf("stats %+v", env.srv.Stats())
}
