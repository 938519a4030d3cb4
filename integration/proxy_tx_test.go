package integration

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/proxy"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestProxyDeferredBegin checks transactions whose BEGIN the proxy
// answers itself and sends to the backend together with the first
// statement, on real PostgreSQL: the BEGIN's options hold, the
// transaction stays on one backend, and an error in the first statement
// aborts the transaction as PostgreSQL would — over the simple and the
// extended protocol.
func TestProxyDeferredBegin(t *testing.T) {
	ctx, _, env := newProxyTest(t, nil)
	setup := connectProxy(t, env)
	simple(t, setup, "CREATE TABLE dbt (id int PRIMARY KEY)")

	type run func(t *testing.T, pc *pgconn.PgConn, sql string) ([][]byte, error)
	protocols := map[string]run{
		"simple": func(t *testing.T, pc *pgconn.PgConn, sql string) ([][]byte, error) {
			res, err := pc.Exec(ctx, sql).ReadAll()
			if err != nil || len(res) == 0 || len(res[0].Rows) == 0 {
				return nil, err
			}
			return res[0].Rows[0], nil
		},
		"extended": func(t *testing.T, pc *pgconn.PgConn, sql string) ([][]byte, error) {
			r := pc.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
			if r.Err != nil || len(r.Rows) == 0 {
				return nil, r.Err
			}
			return r.Rows[0], nil
		},
	}
	code := errCode
	for name, exec := range protocols {
		t.Run(name, func(t *testing.T) {
			must := func(pc *pgconn.PgConn, sql string) [][]byte {
				t.Helper()
				row, err := exec(t, pc, sql)
				if err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
				return row
			}
			pc := connectProxy(t, env)

			// Options of the BEGIN apply; one backend for the transaction.
			must(pc, "BEGIN ISOLATION LEVEL REPEATABLE READ")
			row := must(pc, "SELECT current_setting('transaction_isolation'), pg_backend_pid()")
			if string(row[0]) != "repeatable read" {
				t.Fatalf("isolation %q", row[0])
			}
			pid := string(row[1])
			if row := must(pc, "SELECT pg_backend_pid()"); string(row[0]) != pid {
				t.Fatalf("transaction moved from backend %s to %s", pid, row[0])
			}
			must(pc, "COMMIT")

			// READ ONLY holds for a write as the first statement.
			must(pc, "BEGIN READ ONLY")
			if _, err := exec(t, pc, "INSERT INTO dbt VALUES (1)"); code(err) != "25006" {
				t.Fatalf("write in a read-only transaction: %v, want 25006", err)
			}
			must(pc, "ROLLBACK")

			// An error in the first statement aborts the transaction.
			must(pc, "BEGIN")
			if _, err := exec(t, pc, "SELECT 1/0"); code(err) != "22012" {
				t.Fatalf("1/0: %v, want 22012", err)
			}
			if _, err := exec(t, pc, "SELECT 1"); code(err) != "25P02" {
				t.Fatalf("after an error: %v, want 25P02", err)
			}
			must(pc, "ROLLBACK")
			if pc.TxStatus() != 'I' {
				t.Fatalf("status %c after ROLLBACK", pc.TxStatus())
			}

			// Writes of a committed transaction are there; a rolled-back
			// one's are not.
			must(pc, "BEGIN")
			must(pc, "INSERT INTO dbt VALUES (10) ON CONFLICT DO NOTHING")
			must(pc, "COMMIT")
			must(pc, "BEGIN")
			must(pc, "INSERT INTO dbt VALUES (11) ON CONFLICT DO NOTHING")
			must(pc, "ROLLBACK")
			row = must(pc, "/* dbproxy:primary */ SELECT count(*) FILTER (WHERE id = 10), count(*) FILTER (WHERE id = 11) FROM dbt")
			if string(row[0]) != "1" || string(row[1]) != "0" {
				t.Fatalf("rows 10/11: %s/%s, want 1/0", row[0], row[1])
			}
		})
	}
}

// TestProxyCancelMultiShard checks that a CancelRequest stops a statement
// running on several shards at once: each shard's backend cancels it, the
// client gets 57014, and the connection and the pooled backends stay
// usable.
func TestProxyCancelMultiShard(t *testing.T) {
	ctx, clusters, env := newProxyTest(t, nil)
	pc := connectProxy(t, env)
	simple(t, pc, "CREATE TABLE users (id int PRIMARY KEY)")
	simple(t, pc, "INSERT INTO users (id) VALUES (1)") // shard s0
	simple(t, pc, "INSERT INTO users (id) VALUES (5)") // shard s1

	// The read runs on a standby of each shard (or its primary).
	directs := make([][]*pgconn.PgConn, len(clusters))
	for i, c := range clusters {
		for _, n := range c.Nodes() {
			d, err := pgconn.Connect(ctx, appConnString(n))
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close(context.Background())
			directs[i] = append(directs[i], d)
		}
	}
	sleeping := func() bool {
		for _, nodes := range directs {
			if !anySleeping(t, [][]*pgconn.PgConn{nodes}) {
				return false
			}
		}
		return true
	}

	for _, proto := range []string{"simple", "extended"} {
		t.Run(proto, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				const q = "SELECT id, pg_sleep(30) FROM users ORDER BY id"
				if proto == "simple" {
					_, err := pc.Exec(ctx, q).ReadAll()
					done <- err
					return
				}
				done <- pc.ExecParams(ctx, q, nil, nil, nil, nil).Read().Err
			}()
			deadline := time.Now().Add(20 * time.Second)
			for !sleeping() {
				if time.Now().After(deadline) {
					t.Fatal("the statement does not run on both shards")
				}
				time.Sleep(20 * time.Millisecond)
			}
			start := time.Now()
			cancelRequest(t, ctx, pc, done)
			for anySleeping(t, directs) {
				if time.Since(start) > 20*time.Second {
					t.Fatal("a shard still runs the cancelled statement")
				}
				time.Sleep(20 * time.Millisecond)
			}
			res := simple(t, pc, "SELECT count(*) FROM users")
			if got := string(res[0].Rows[0][0]); got != "2" {
				t.Fatalf("count after cancel: %s", got)
			}
		})
	}
}

// anySleeping reports whether a node of directs runs pg_sleep(30).
func anySleeping(t *testing.T, directs [][]*pgconn.PgConn) bool {
	for _, nodes := range directs {
		for _, d := range nodes {
			res := simple(t, d, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()")
			if string(res[0].Rows[0][0]) != "0" {
				return true
			}
		}
	}
	return false
}

// TestProxyUserFunctions checks that the proxy routes reads calling
// user-defined functions by their volatility in pg_proc: immutable and
// stable ones on a standby, volatile ones (and unknown names) on the
// primary, and a function redefined through the proxy is looked up again.
func TestProxyUserFunctions(t *testing.T) {
	ctx, clusters, env := newProxyTest(t, nil)
	pc := connectProxy(t, env)
	simple(t, pc, "CREATE FUNCTION twice(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1 * 2'")
	simple(t, pc, "CREATE FUNCTION today_utc() RETURNS date STABLE LANGUAGE sql AS $$SELECT (now() AT TIME ZONE 'UTC')::date$$")
	simple(t, pc, "CREATE FUNCTION bump() RETURNS int VOLATILE LANGUAGE sql AS 'SELECT 1'")
	if err := clusters[0].WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	onStandby := func(sql string) bool {
		t.Helper()
		res := simple(t, pc, sql)
		return string(res[0].Rows[0][len(res[0].Rows[0])-1]) == "t"
	}
	for _, c := range []struct {
		sql     string
		standby bool
	}{
		{"SELECT twice(21), pg_is_in_recovery()", true},
		{"SELECT today_utc() IS NOT NULL, pg_is_in_recovery()", true},
		{"SELECT bump(), pg_is_in_recovery()", false},
		{"SELECT public.twice(1), pg_is_in_recovery()", true},
	} {
		for i := 0; i < 3; i++ {
			if got := onStandby(c.sql); got != c.standby {
				t.Fatalf("%s: on a standby %v, want %v", c.sql, got, c.standby)
			}
		}
	}
	// Redefined as volatile: the cached answer is dropped by the DDL.
	simple(t, pc, "CREATE OR REPLACE FUNCTION twice(int) RETURNS int VOLATILE LANGUAGE sql AS 'SELECT $1 * 2'")
	if onStandby("SELECT twice(2), pg_is_in_recovery()") {
		t.Fatal("a function redefined VOLATILE still runs on a standby")
	}
}

// TestProxyAdvisoryLocks checks that transaction pooling refuses
// session-level advisory locks (0A000 with a hint, nothing left locked on
// the primary) and runs transaction-level ones, and that session pooling
// runs session-level ones.
func TestProxyAdvisoryLocks(t *testing.T) {
	ctx, clusters, env := newProxyTest(t, nil)
	pc := connectProxy(t, env)
	code := func(err error) string {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Hint != "" {
			return pgErr.Code
		}
		return fmt.Sprint(err)
	}
	for _, sql := range []string{"SELECT pg_advisory_lock(7)", "SELECT pg_try_advisory_lock(7)", "SELECT pg_advisory_lock_shared(7)"} {
		if _, err := pc.Exec(ctx, sql).ReadAll(); code(err) != "0A000" {
			t.Fatalf("%s: %v, want 0A000 with a hint", sql, err)
		}
	}
	simple(t, pc, "BEGIN")
	if _, err := pc.Exec(ctx, "SELECT pg_try_advisory_lock(7)").ReadAll(); code(err) != "0A000" {
		t.Fatalf("in a transaction: %v, want 0A000", err)
	}
	simple(t, pc, "ROLLBACK")
	simple(t, pc, "BEGIN")
	if res := simple(t, pc, "SELECT pg_try_advisory_xact_lock(7)"); string(res[0].Rows[0][0]) != "t" {
		t.Fatalf("pg_try_advisory_xact_lock: %q", res[0].Rows[0][0])
	}
	simple(t, pc, "COMMIT")
	direct, err := pgconn.Connect(ctx, appConnString(clusters[0].Primary()))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	if res := simple(t, direct, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"); string(res[0].Rows[0][0]) != "0" {
		t.Fatalf("%s advisory locks held after the transactions", res[0].Rows[0][0])
	}

	senv := startProxyEnv(t, ctx, clusters, func(c *proxy.Config) { c.PoolMode = proxy.PoolSession })
	sc := connectProxy(t, senv)
	if res := simple(t, sc, "SELECT pg_try_advisory_lock(8)"); string(res[0].Rows[0][0]) != "t" {
		t.Fatalf("session pooling: pg_try_advisory_lock: %q", res[0].Rows[0][0])
	}
	if res := simple(t, sc, "SELECT pg_advisory_unlock(8)"); string(res[0].Rows[0][0]) != "t" {
		t.Fatalf("session pooling: pg_advisory_unlock: %q", res[0].Rows[0][0])
	}
}

// TestProxyTempTables checks that transaction pooling refuses temporary
// tables that would outlive their transaction (0A000 with a hint) and runs
// ON COMMIT DROP ones, and that under session pooling a backend a client
// left a temporary table on is closed, never pooled for another client.
func TestProxyTempTables(t *testing.T) {
	ctx, clusters, env := newProxyTest(t, nil)
	pc := connectProxy(t, env)
	for _, sql := range []string{"CREATE TEMP TABLE tt (x int)", "CREATE TEMP TABLE tt AS SELECT 1 AS x", "SELECT 1 AS x INTO TEMP tt",
		"DECLARE c CURSOR WITH HOLD FOR SELECT 1"} {
		_, err := pc.Exec(ctx, sql).ReadAll()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "0A000" || pgErr.Hint == "" {
			t.Fatalf("%s: %v, want 0A000 with a hint", sql, err)
		}
	}
	simple(t, pc, "BEGIN")
	simple(t, pc, "CREATE TEMP TABLE tt (x int) ON COMMIT DROP")
	simple(t, pc, "INSERT INTO tt VALUES (1), (2)")
	if res := simple(t, pc, "SELECT count(*) FROM tt"); string(res[0].Rows[0][0]) != "2" {
		t.Fatalf("ON COMMIT DROP table: %q rows", res[0].Rows[0][0])
	}
	simple(t, pc, "DECLARE c CURSOR FOR SELECT generate_series(1, 3)")
	if res := simple(t, pc, "FETCH 2 FROM c"); len(res[0].Rows) != 2 {
		t.Fatalf("FETCH in the transaction: %d rows", len(res[0].Rows))
	}
	simple(t, pc, "COMMIT")

	senv := startProxyEnv(t, ctx, clusters, func(c *proxy.Config) { c.PoolMode = proxy.PoolSession })
	sc := connectProxy(t, senv)
	simple(t, sc, "DECLARE h CURSOR WITH HOLD FOR SELECT generate_series(1, 3)")
	if res := simple(t, sc, "FETCH 2 FROM h"); len(res[0].Rows) != 2 {
		t.Fatalf("session pooling: FETCH from a WITH HOLD cursor: %d rows", len(res[0].Rows))
	}
	simple(t, sc, "CREATE TEMP TABLE kept (x int)")
	simple(t, sc, "INSERT INTO kept VALUES (1)")
	res := simple(t, sc, "SELECT pg_backend_pid(), count(*) FROM kept")
	pid := string(res[0].Rows[0][0])
	if err := sc.Close(ctx); err != nil { // the session's backend goes
		t.Fatal(err)
	}
	direct, err := pgconn.Connect(ctx, appConnString(clusters[0].Primary()))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	deadline := time.Now().Add(10 * time.Second)
	for {
		res := simple(t, direct, "SELECT count(*) FROM pg_stat_activity WHERE pid = "+pid)
		if string(res[0].Rows[0][0]) == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %s with a temporary table still open: pooled for other clients", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
