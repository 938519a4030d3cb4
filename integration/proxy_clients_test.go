package integration

import (
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	_ "github.com/lib/pq"

	"github.com/dbproxy/dbproxy/proxy"
	"github.com/dbproxy/dbproxy/replica"
)

// TestProxy runs the proxy in front of two real shards (each a primary
// and a streaming standby) and drives it with real clients. Subtests
// share the clusters and the proxy and run in order.
func TestProxy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	clusters := startProxyClusters(t, ctx)
	env := startProxyEnv(t, ctx, clusters, nil)

	t.Run("PgxBasics", func(t *testing.T) { testProxyPgxBasics(t, env) })
	t.Run("SessionReplay", func(t *testing.T) { testProxySessionReplay(t, env) })
	t.Run("Sharding", func(t *testing.T) { testProxySharding(t, env) })
	t.Run("PgxBatch", func(t *testing.T) { testProxyPgxBatch(t, env) })
	t.Run("ReadYourWrites", func(t *testing.T) { testProxyReadYourWrites(t, env) })
	t.Run("Cancel", func(t *testing.T) { testProxyCancel(t, env) })
	t.Run("ClientDiesMidTransaction", func(t *testing.T) { testProxyClientDies(t, env) })
	t.Run("ClientDiesMidQuery", func(t *testing.T) { testProxyClientDiesMidQuery(t, env) })
	t.Run("Copy", func(t *testing.T) { testProxyCopy(t, env) })
	t.Run("LongResults", func(t *testing.T) { testProxyLongResults(t, env) })
	t.Run("BadInput", func(t *testing.T) { testProxyBadInput(t, env) })
	t.Run("LibPQ", func(t *testing.T) { testProxyLibPQ(t, env) })
	t.Run("Psql", func(t *testing.T) { testProxyPsql(t, env) })
	t.Run("Psycopg2", func(t *testing.T) { testProxyPsycopg2(t, env) })
	t.Run("Pgbench", func(t *testing.T) { testProxyPgbench(t, env) })
	t.Run("Stats", func(t *testing.T) {
		st := env.srv.Stats()
		if st.Accepted == 0 || st.Rejected == 0 {
			t.Errorf("stats %+v", st)
		}
	})
}

func pxConnect(t *testing.T, env *proxyEnv, extra string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(env.ctx, env.url(extra))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func pxExec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// pxBegin opens a transaction on conn and runs sql in it.
func pxBegin(t *testing.T, conn *pgx.Conn, sql string, args ...any) pgx.Tx {
	t.Helper()
	tx, err := conn.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return tx
}

func testProxyPgxBasics(t *testing.T, env *proxyEnv) {
	ctx := env.ctx
	conn := pxConnect(t, env, "")
	var n int
	if err := conn.QueryRow(ctx, "select 1+$1::int", 41).Scan(&n); err != nil || n != 42 {
		t.Fatalf("got %d, %v", n, err)
	}
	if v := conn.PgConn().ParameterStatus("server_version"); !strings.HasPrefix(v, "15") {
		t.Errorf("server_version %q", v)
	}
	pxExec(t, conn, "create table if not exists things (id int primary key, v text)")
	// Many statements through pgx's statement cache, each its own
	// transaction: backends change, statements are re-prepared.
	for i := 0; i < 50; i++ {
		pxExec(t, conn, "insert into things values ($1, $2) on conflict (id) do update set v = excluded.v", i, fmt.Sprint("v", i))
	}
	var cnt int
	if err := conn.QueryRow(ctx, "select count(*) from things where id < $1", 1000).Scan(&cnt); err != nil || cnt != 50 {
		t.Fatalf("count %d %v", cnt, err)
	}
	// An explicit transaction with a rollback leaves nothing behind.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "delete from things"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "select count(*) from things").Scan(&cnt); err != nil || cnt != 50 {
		t.Fatalf("after rollback: count %d %v", cnt, err)
	}
	// An error inside a transaction: 'E' until ROLLBACK, then fine.
	tx, err = conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(ctx, "insert into things values (1, 'dup')")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := tx.Exec(ctx, "select 1"); err == nil || !strings.Contains(err.Error(), "25P02") {
		t.Fatalf("statement in failed tx: %v", err)
	}
	tx.Rollback(ctx)
	if err := conn.QueryRow(ctx, "select v from things where id = $1", 7).Scan(new(string)); err != nil {
		t.Fatal(err)
	}
	// Concurrency: many clients, each with pgx's statement cache.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := pgx.Connect(ctx, env.url(""))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(context.Background())
			for i := 0; i < 40; i++ {
				var v string
				if err := c.QueryRow(ctx, "select v from things where id = $1", (w*7+i)%50).Scan(&v); err != nil {
					errs <- err
					return
				}
				if want := fmt.Sprint("v", (w*7+i)%50); v != want {
					errs <- fmt.Errorf("got %q want %q", v, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testProxySessionReplay(t *testing.T, env *proxyEnv) {
	ctx := env.ctx
	// Same statement name, different SQL, in two sessions sharing the
	// backends (JDBC's S_1, S_2, ... collide like this): each session
	// always runs its own statement.
	a, err := pgconn.Connect(ctx, env.dsn(""))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	b, err := pgconn.Connect(ctx, env.dsn(""))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	if _, err := a.Prepare(ctx, "S_1", "select 'a' || $1::text", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Prepare(ctx, "S_1", "select 'b' || $1::text", nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		for _, c := range []struct {
			conn *pgconn.PgConn
			want string
		}{{a, "a"}, {b, "b"}} {
			r := c.conn.ExecPrepared(ctx, "S_1", [][]byte{[]byte(fmt.Sprint(i))}, nil, nil).Read()
			if r.Err != nil || string(r.Rows[0][0]) != fmt.Sprint(c.want, i) {
				t.Fatalf("statement S_1 of session %s: %v %v", c.want, r.Err, r.Rows)
			}
		}
	}
	// Deallocating and re-preparing under the same name works too.
	if err := a.Deallocate(ctx, "S_1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Prepare(ctx, "S_1", "select 'c' || $1::text", nil); err != nil {
		t.Fatal(err)
	}
	if r := a.ExecPrepared(ctx, "S_1", [][]byte{[]byte("x")}, nil, nil).Read(); r.Err != nil || string(r.Rows[0][0]) != "cx" {
		t.Fatalf("re-prepared S_1: %v %v", r.Err, r.Rows)
	}
	// Several sessions with different settings share the backends; each
	// must always see its own settings, and its prepared statements.
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := pgx.Connect(ctx, env.url(fmt.Sprintf("&application_name=client%d", w)))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(context.Background())
			if _, err := c.Exec(ctx, fmt.Sprintf("set statement_timeout = '%ds'", 100+w)); err != nil {
				errs <- err
				return
			}
			for i := 0; i < 30; i++ {
				var app, st string
				if err := c.QueryRow(ctx, "select current_setting('application_name'), current_setting('statement_timeout') where $1::int >= 0", i).Scan(&app, &st); err != nil {
					errs <- err
					return
				}
				if app != fmt.Sprintf("client%d", w) || st != fmt.Sprintf("%ds", 100+w) {
					errs <- fmt.Errorf("client %d sees application_name=%q statement_timeout=%q", w, app, st)
					return
				}
			}
			// A SET rolled back is not kept; one committed is.
			tx, _ := c.Begin(ctx)
			tx.Exec(ctx, "set statement_timeout = '1s'")
			tx.Rollback(ctx)
			tx, _ = c.Begin(ctx)
			tx.Exec(ctx, fmt.Sprintf("set statement_timeout = '%ds'", 200+w))
			tx.Commit(ctx)
			for i := 0; i < 10; i++ {
				var st string
				if err := c.QueryRow(ctx, "show statement_timeout").Scan(&st); err != nil {
					errs <- err
					return
				}
				if st != fmt.Sprintf("%ds", 200+w) {
					errs <- fmt.Errorf("client %d after commit: statement_timeout=%q", w, st)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testProxySharding(t *testing.T, env *proxyEnv) {
	ctx := env.ctx
	conn := pxConnect(t, env, "")
	pxExec(t, conn, "create table users (id int primary key, name text, score int)")
	for i := 1; i <= 100; i++ {
		pxExec(t, conn, "insert into users (id, name, score) values ($1, $2, $3)", i, fmt.Sprint("u", i), i%10)
	}
	// Literal keys (simple protocol) route too.
	pxExec(t, conn, "insert into users (id, name, score) values (101, 'u101', 1)")
	// Each shard holds a part; together all of them.
	total := 0
	for i, c := range env.clusters {
		pc, err := c.Primary().Connect(ctx, "app")
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := pc.QueryRow(ctx, "select count(*) from users").Scan(&n); err != nil {
			t.Fatal(err)
		}
		pc.Close(ctx)
		if n == 0 || n == 101 {
			t.Errorf("shard %d holds %d of 101 users", i, n)
		}
		total += n
	}
	if total != 101 {
		t.Fatalf("shards hold %d users", total)
	}
	var name string
	for _, id := range []int{1, 50, 99} {
		if err := conn.QueryRow(ctx, "select name from users where id = $1", id).Scan(&name); err != nil || name != fmt.Sprint("u", id) {
			t.Fatalf("user %d: %q %v", id, name, err)
		}
	}
	var cnt, sum, mn, mx int64
	if err := conn.QueryRow(ctx, "select count(*), sum(id), min(id), max(id) from users").Scan(&cnt, &sum, &mn, &mx); err != nil {
		t.Fatal(err)
	}
	if cnt != 101 || sum != 5050+101 || mn != 1 || mx != 101 {
		t.Fatalf("aggregates %d %d %d %d", cnt, sum, mn, mx)
	}
	// avg over shards equals PostgreSQL's own avg over all rows.
	var avgText string
	if err := conn.QueryRow(ctx, "select avg(score) from users", pgx.QueryExecModeSimpleProtocol).Scan(&avgText); err != nil {
		t.Fatal(err)
	}
	var want string
	if err := conn.QueryRow(ctx, "select avg(v)::text from (values "+valuesList(101)+") s(v)").Scan(&want); err != nil {
		t.Fatal(err)
	}
	if avgText != want {
		t.Errorf("avg across shards %q, PostgreSQL says %q", avgText, want)
	}
	// The same in binary (pgx asks for binary numeric in the extended protocol).
	var avgNum, wantNum pgtype.Numeric
	if err := conn.QueryRow(ctx, "select avg(score), count(score) from users").Scan(&avgNum, &cnt); err != nil || cnt != 101 {
		t.Fatalf("binary avg: %v %d", err, cnt)
	}
	if err := conn.QueryRow(ctx, "select $1::numeric", want).Scan(&wantNum); err != nil {
		t.Fatal(err)
	}
	if a, _ := avgNum.Float64Value(); a.Float64 != func() float64 { w, _ := wantNum.Float64Value(); return w.Float64 }() {
		t.Errorf("binary avg %v, want %v", a.Float64, want)
	}
	rows, err := conn.Query(ctx, "select id, name from users order by id desc limit 5 offset 2")
	if err != nil {
		t.Fatal(err)
	}
	var ids []int
	for rows.Next() {
		var id int
		var nm string
		if err := rows.Scan(&id, &nm); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if rows.Err() != nil || fmt.Sprint(ids) != "[99 98 97 96 95]" {
		t.Fatalf("ordered page %v %v", ids, rows.Err())
	}
	// Same through the simple protocol, with GROUP BY.
	rows, err = conn.Query(ctx, "select score, count(*) from users group by score order by score", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	groups := map[int]int{}
	for rows.Next() {
		var s, n int
		rows.Scan(&s, &n)
		groups[s] = n
	}
	if rows.Err() != nil || len(groups) != 10 || groups[1] != 11 || groups[0] != 10 {
		t.Fatalf("groups %v %v", groups, rows.Err())
	}
	// A write without the shard key is refused with 0A000.
	_, err = conn.Exec(ctx, "update users set score = 0")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "0A000" {
		t.Fatalf("keyless update: %v", err)
	}
	// A transaction stays on its shard; crossing shards is refused.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "update users set score = score + 1 where id = $1", 1); err != nil {
		t.Fatal(err)
	}
	var other int
	for id := 2; id <= 100 && other == 0; id++ {
		_, err := tx.Exec(ctx, "update users set score = score + 1 where id = $1", id)
		if err != nil {
			if !errors.As(err, &pgErr) || pgErr.Code != "0A000" {
				t.Fatalf("cross-shard in tx: %v", err)
			}
			other = id
		}
	}
	if other == 0 {
		t.Fatal("all ids on one shard")
	}
	// As in PostgreSQL, the error aborted the transaction.
	if _, err := tx.Exec(ctx, "select 1"); !errors.As(err, &pgErr) || pgErr.Code != "25P02" {
		t.Fatalf("after a cross-shard error the transaction is not aborted: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// Same with the simple protocol.
	pxExec(t, conn, "begin")
	pxExec(t, conn, "update users set score = score where id = 1")
	_, err = conn.Exec(ctx, fmt.Sprintf("update users set score = score where id = %d", other))
	if !errors.As(err, &pgErr) || pgErr.Code != "0A000" {
		t.Fatalf("cross-shard (simple): %v", err)
	}
	if _, err := conn.Exec(ctx, "select 1"); !errors.As(err, &pgErr) || pgErr.Code != "25P02" {
		t.Fatalf("after a cross-shard error (simple) the transaction is not aborted: %v", err)
	}
	pxExec(t, conn, "rollback")
}

// valuesList renders the scores of users 1..n ((id % 10), 101 → 1) as a VALUES list.
func valuesList(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		if i > 1 {
			b.WriteByte(',')
		}
		v := i % 10
		if i == 101 {
			v = 1
		}
		fmt.Fprintf(&b, "(%d)", v)
	}
	return b.String()
}

func testProxyPgxBatch(t *testing.T, env *proxyEnv) {
	ctx := env.ctx
	conn := pxConnect(t, env, "")
	b := &pgx.Batch{}
	for i := 0; i < 20; i++ {
		b.Queue("insert into things values ($1, $2) on conflict (id) do update set v = excluded.v", 1000+i, fmt.Sprint("b", i))
	}
	b.Queue("select count(*) from things where id >= 1000")
	br := conn.SendBatch(ctx, b)
	for i := 0; i < 20; i++ {
		if _, err := br.Exec(); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := br.QueryRow().Scan(&n); err != nil || n != 20 {
		t.Fatalf("batch count %d %v", n, err)
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}
	// Low-level pipeline with a Sync per query.
	p := conn.PgConn().StartPipeline(ctx)
	for i := 0; i < 10; i++ {
		p.SendQueryParams("select $1::int * 2", [][]byte{[]byte(fmt.Sprint(i))}, nil, nil, nil)
		p.SendPipelineSync()
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		res, err := p.GetResults()
		if err != nil {
			t.Fatal(err)
		}
		rr := res.(*pgconn.ResultReader).Read()
		if rr.Err != nil || string(rr.Rows[0][0]) != fmt.Sprint(i*2) {
			t.Fatalf("pipeline %d: %v %v", i, rr.Err, rr.Rows)
		}
		if _, err := p.GetResults(); err != nil { // the Sync
			t.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

func testProxyReadYourWrites(t *testing.T, env *proxyEnv) {
	ctx := env.ctx
	sb := env.clusters[0].Standbys()[0]
	if err := sb.PauseReplay(ctx); err != nil {
		t.Fatal(err)
	}
	defer sb.ResumeReplay(context.Background())
	writer := pxConnect(t, env, "")
	pxExec(t, writer, "insert into things values (5000, 'fresh')")
	token := writer.PgConn().ParameterStatus("dbproxy.causal_token")
	if !strings.HasPrefix(token, "s0:") {
		t.Fatalf("causal token %q", token)
	}
	var shown string
	if err := writer.QueryRow(ctx, "show dbproxy.causal_token", pgx.QueryExecModeSimpleProtocol).Scan(&shown); err != nil || shown != token {
		t.Fatalf("SHOW dbproxy.causal_token %q %v", shown, err)
	}
	// Another session, with the token: reads see the write although the
	// standby has not replayed it.
	reader := pxConnect(t, env, "")
	pxExec(t, reader, "set dbproxy.causal_token = '"+token+"'")
	for i := 0; i < 5; i++ {
		var v string
		if err := reader.QueryRow(ctx, "select v from things where id = $1", 5000).Scan(&v); err != nil || v != "fresh" {
			t.Fatalf("read with token: %q %v", v, err)
		}
	}
	// The same through a comment hint on a third session.
	third := pxConnect(t, env, "")
	var v string
	if err := third.QueryRow(ctx, "/* dbproxy:causal_token="+token+" */ select v from things where id = 5000", pgx.QueryExecModeSimpleProtocol).Scan(&v); err != nil || v != "fresh" {
		t.Fatalf("read with hint: %q %v", v, err)
	}
	// The writer itself reads its writes.
	if err := writer.QueryRow(ctx, "select v from things where id = $1", 5000).Scan(&v); err != nil || v != "fresh" {
		t.Fatalf("writer read: %q %v", v, err)
	}
}

func testProxyCancel(t *testing.T, env *proxyEnv) {
	ctx := env.ctx
	conn := pxConnect(t, env, "")
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err := conn.Exec(qctx, "select pg_sleep(30)")
	if err == nil {
		t.Fatal("pg_sleep(30) finished")
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("cancel took %v", d)
	}
	// pgx closes the connection on a context cancel; use pgconn with an
	// explicit CancelRequest to check the connection stays usable.
	pc, err := pgconn.Connect(ctx, env.dsn(""))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := pc.Exec(ctx, "select pg_sleep(30)").ReadAll()
		done <- err
	}()
	// Wait until the query runs on a backend, then cancel it.
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := env.srv.Stats()
		busy := false
		for _, c := range st.Conns {
			if c.PID == pc.PID() && c.Backend != "" {
				busy = true
			}
		}
		if busy || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancelRequest(t, ctx, pc, done)
	res, err := pc.Exec(ctx, "select 7").ReadAll()
	if err != nil || string(res[0].Rows[0][0]) != "7" {
		t.Fatalf("after cancel: %v %v", res, err)
	}
}

func testProxyClientDies(t *testing.T, env *proxyEnv) {
	ctx := env.ctx
	pc, err := pgconn.Connect(ctx, env.dsn(""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Exec(ctx, "begin; update things set v = 'locked' where id = 1").ReadAll(); err != nil {
		t.Fatal(err)
	}
	// Die without Terminate.
	pc.Conn().Close()
	other := pxConnect(t, env, "")
	pxExec(t, other, "set lock_timeout = '10s'")
	if _, err := other.Exec(ctx, "update things set v = 'v1' where id = 1"); err != nil {
		t.Fatalf("row still locked by the dead client's transaction: %v", err)
	}
	var v string
	if err := other.QueryRow(ctx, "select v from things where id = 1").Scan(&v); err != nil || v != "v1" {
		t.Fatalf("dead client's update visible: %q %v", v, err)
	}
}

func testProxyCopy(t *testing.T, env *proxyEnv) {
	ctx := env.ctx
	conn := pxConnect(t, env, "")
	pxExec(t, conn, "create table copied (id int, t text)")
	var rows [][]any
	for i := 0; i < 5000; i++ {
		rows = append(rows, []any{i, strings.Repeat("x", i%50)})
	}
	n, err := conn.CopyFrom(ctx, pgx.Identifier{"copied"}, []string{"id", "t"}, pgx.CopyFromRows(rows))
	if err != nil || n != 5000 {
		t.Fatalf("copy from: %d %v", n, err)
	}
	var buf strings.Builder
	tag, err := conn.PgConn().CopyTo(ctx, &buf, "copy (select * from copied order by id) to stdout")
	if err != nil || tag.RowsAffected() != 5000 || strings.Count(buf.String(), "\n") != 5000 {
		t.Fatalf("copy to: %v %v", tag, err)
	}
	// A failing COPY FROM leaves the connection usable.
	_, err = conn.PgConn().CopyFrom(ctx, strings.NewReader("1\tok\nnot-a-number\tbad\n"), "copy copied from stdin")
	if err == nil {
		t.Fatal("bad copy succeeded")
	}
	var c int
	if err := conn.QueryRow(ctx, "select count(*) from copied").Scan(&c); err != nil || c != 5000 {
		t.Fatalf("after failed copy: %d %v", c, err)
	}
}

func testProxyBadInput(t *testing.T, env *proxyEnv) {
	ctx := env.ctx
	host, port, _ := net.SplitHostPort(env.addr)
	try := func(dsn string) error {
		c, err := pgconn.Connect(ctx, dsn)
		if err == nil {
			c.Close(ctx)
		}
		return err
	}
	code := errCode
	base := "host=" + host + " port=" + port + " sslmode=disable "
	if err := try(base + "user=app password=wrong dbname=app"); code(err) != "28P01" {
		t.Errorf("wrong password: %v", err)
	}
	if err := try(base + "user=app password=app dbname=nosuchdb"); code(err) != "3D000" {
		t.Errorf("unknown database: %v", err)
	}
	if err := try(base + "user=ghost password=app dbname=app"); code(err) != "28P01" {
		t.Errorf("unknown user: %v", err)
	}
	if err := try("host=" + host + " port=" + port + " sslmode=require user=app password=app dbname=app"); err == nil || !strings.Contains(err.Error(), "refused TLS") {
		t.Errorf("sslmode=require without TLS: %v", err)
	}
	nc, err := net.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	nc.Write([]byte("\x00\x00\x00\x08garbage!garbage!"))
	b := make([]byte, 4096)
	n, _ := nc.Read(b)
	if !strings.Contains(string(b[:n]), "08P01") {
		t.Errorf("garbage answered with %q", b[:n])
	}
	if _, err := nc.Read(b); err == nil {
		t.Error("connection open after garbage")
	}
	nc.Close()
	if err := try(base + "user=app password=app dbname=app"); err != nil {
		t.Fatalf("server unwell after bad input: %v", err)
	}
}

func testProxyLibPQ(t *testing.T, env *proxyEnv) {
	db, err := sql.Open("postgres", env.dsn(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := env.ctx
	var v string
	for i := 0; i < 10; i++ {
		if err := db.QueryRowContext(ctx, "select v from things where id = $1", i+2).Scan(&v); err != nil || v != fmt.Sprint("v", i+2) {
			t.Fatalf("lib/pq query: %q %v", v, err)
		}
	}
	st, err := db.PrepareContext(ctx, "select name from users where id = $1")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, id := range []int{3, 60, 3, 77} {
		if err := st.QueryRowContext(ctx, id).Scan(&v); err != nil || v != fmt.Sprint("u", id) {
			t.Fatalf("lib/pq prepared: %q %v", v, err)
		}
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "update things set v = $1 where id = $2", "pq", 3); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRowContext(ctx, "select v from things where id = 3").Scan(&v); err != nil || v != "pq" {
		t.Fatalf("after commit: %q %v", v, err)
	}
	var cnt int
	if err := db.QueryRowContext(ctx, "select count(*) from users").Scan(&cnt); err != nil || cnt != 101 {
		t.Fatalf("lib/pq multi-shard count: %d %v", cnt, err)
	}
}

func pgBin(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join("/usr/lib/postgresql/15/bin", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s not found: %v", name, err)
	}
	return p
}

func clientEnv(env *proxyEnv) []string {
	host, port, _ := net.SplitHostPort(env.addr)
	return append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER=app", "PGPASSWORD=app", "PGDATABASE=app", "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10")
}

func runClient(t *testing.T, env *proxyEnv, stdin string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(env.ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = clientEnv(env)
	cmd.Dir = t.TempDir()
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", filepath.Base(name), args, err, out)
	}
	return string(out)
}

func testProxyPsql(t *testing.T, env *proxyEnv) {
	psql := pgBin(t, "psql")
	out := runClient(t, env, "", psql, "-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", "select name from users where id = 42")
	if strings.TrimSpace(out) != "u42" {
		t.Fatalf("psql -c: %q", out)
	}
	out = runClient(t, env, "", psql, "-X", "-v", "ON_ERROR_STOP=1", "-c", `\d things`)
	if !strings.Contains(out, "things") || !strings.Contains(out, "integer") {
		t.Fatalf(`\d: %s`, out)
	}
	dir := t.TempDir()
	csv := filepath.Join(dir, "in.csv")
	var b strings.Builder
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&b, "%d,row %d\n", 20000+i, i)
	}
	os.WriteFile(csv, []byte(b.String()), 0o644)
	outFile := filepath.Join(dir, "out.csv")
	script := fmt.Sprintf(`\copy things from '%s' csv
\copy (select * from things where id >= 20000 order by id) to '%s' csv
select count(*) from things where id >= 20000;
`, csv, outFile)
	out = runClient(t, env, script, psql, "-X", "-v", "ON_ERROR_STOP=1", "-At")
	if !strings.Contains(out, "1000") {
		t.Fatalf(`\copy: %s`, out)
	}
	got, _ := os.ReadFile(outFile)
	if string(got) != b.String() {
		t.Fatalf(`\copy to: %d bytes, want %d`, len(got), b.Len())
	}
}

func testProxyPsycopg2(t *testing.T, env *proxyEnv) {
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Fatalf("python3 missing: %v", err)
	}
	host, port, _ := net.SplitHostPort(env.addr)
	script := fmt.Sprintf(`
import psycopg2
conn = psycopg2.connect(host=%q, port=%s, user="app", password="app", dbname="app", sslmode="disable")
cur = conn.cursor()
cur.execute("select name from users where id = %%s", (17,))
assert cur.fetchone()[0] == "u17"
conn.commit()  # psycopg2 opened a transaction on u17's shard
cur.execute("insert into things values (%%s, %%s)", (30000, "py"))
cur.execute("select count(*) from things where id = %%s", (30000,))
assert cur.fetchone()[0] == 1
conn.commit()
cur.execute("select v from things where id = %%s", (30000,))
assert cur.fetchone()[0] == "py"
conn.rollback()
conn.autocommit = True
cur.execute("select count(*) from users")
assert cur.fetchone()[0] == 101
try:
    cur.execute("update users set score = 0")
    raise SystemExit("keyless update accepted")
except psycopg2.errors.FeatureNotSupported:
    pass
cur.execute("set application_name = 'py'")
cur.execute("show application_name")
assert cur.fetchone()[0] == "py"

# LISTEN/NOTIFY: autocommit, and psycopg2's default (LISTEN inside the
# transaction it opens, effective at commit).
import select, time
def wait_notify(c):
    deadline = time.time() + 10
    c.poll()
    while not c.notifies and time.time() < deadline:
        select.select([c], [], [], 1)
        c.poll()
    assert c.notifies, "no notification"
    return c.notifies.pop(0)
l1 = psycopg2.connect(host=%q, port=%s, user="app", password="app", dbname="app", sslmode="disable")
l1.autocommit = True
l1.cursor().execute("LISTEN py_chan")
l2 = psycopg2.connect(host=%q, port=%s, user="app", password="app", dbname="app", sslmode="disable")
l2.cursor().execute("LISTEN py_tx")
cur.execute("NOTIFY py_tx, 'before commit'")
l2.commit()
cur.execute("NOTIFY py_chan, 'hello'")
cur.execute("NOTIFY py_tx, 'after commit'")
n = wait_notify(l1)
assert (n.channel, n.payload) == ("py_chan", "hello"), n
n = wait_notify(l2)
assert (n.channel, n.payload) == ("py_tx", "after commit"), n
print("psycopg2 ok")
`, host, port, host, port, host, port)
	out := runClient(t, env, "", py, "-c", script)
	if !strings.Contains(out, "psycopg2 ok") {
		t.Fatalf("psycopg2: %s", out)
	}
}

func testProxyPgbench(t *testing.T, env *proxyEnv) {
	pgbench := pgBin(t, "pgbench")
	runClient(t, env, "", pgbench, "-i", "-s", "1", "-q")
	for _, args := range [][]string{
		{"-S", "-M", "simple"}, {"-S", "-M", "extended"}, {"-S", "-M", "prepared"},
		{"-M", "simple"}, {"-M", "extended"}, {"-M", "prepared"},
	} {
		out := runClient(t, env, "", pgbench, append([]string{"-n", "-c", "4", "-j", "2", "-T", "3"}, args...)...)
		if !strings.Contains(out, "number of failed transactions: 0") {
			t.Errorf("pgbench %v:\n%s", args, out)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "tps") || strings.Contains(l, "transactions actually processed") {
				t.Logf("pgbench %v: %s", args, l)
			}
		}
	}
}

var _ = proxy.DefaultConfig

// TestProxyLifecycle covers TLS, Reload and graceful shutdown, each on
// its own proxy over one pair of clusters.
func TestProxyLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	clusters := startProxyClusters(t, ctx)

	t.Run("TLS", func(t *testing.T) {
		certPEM, keyPEM, err := proxy.GenerateSelfSignedCert([]string{"127.0.0.1", "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		env := startProxyEnv(t, ctx, clusters, func(c *proxy.Config) {
			c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
			c.RequireTLS = true
		})
		psql := pgBin(t, "psql")
		cmd := exec.CommandContext(ctx, psql, "-X", "-At", "-c", "select ssl from pg_stat_ssl where pid = pg_backend_pid()", "-c", "select 41+1")
		cmd.Env = append(clientEnv(env), "PGSSLMODE=require")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "42") {
			t.Fatalf("psql over TLS: %v\n%s", err, out)
		}
		conn, err := pgx.Connect(ctx, strings.Replace(env.url(""), "sslmode=disable", "sslmode=require", 1))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var n int
		if err := conn.QueryRow(ctx, "select $1::int", 7).Scan(&n); err != nil || n != 7 {
			t.Fatalf("pgx over TLS: %d %v", n, err)
		}
		// Plain connections are refused with a clear error.
		_, err = pgconn.Connect(ctx, env.dsn(""))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
			t.Fatalf("plain connection to TLS-only proxy: %v", err)
		}
	})

	t.Run("SessionPooling", func(t *testing.T) {
		env := startProxyEnv(t, ctx, clusters, func(c *proxy.Config) { c.PoolMode = proxy.PoolSession })
		conn := pxConnect(t, env, "")
		pxExec(t, conn, "create table if not exists users (id int primary key, name text, score int)")
		pxExec(t, conn, "set application_name = 'sess'")
		for i := 0; i < 20; i++ {
			pxExec(t, conn, "insert into users (id, name, score) values ($1, 'x', 0) on conflict (id) do nothing", 500+i)
			var app string
			if err := conn.QueryRow(ctx, "select current_setting('application_name') where $1::int > 0", 500+i).Scan(&app); err != nil || app != "sess" {
				t.Fatalf("session pooling: %q %v", app, err)
			}
		}
		var n int
		if err := conn.QueryRow(ctx, "select count(*) from users where id >= 500 and id < 520").Scan(&n); err != nil || n != 20 {
			t.Fatalf("session pooling count: %d %v", n, err)
		}
		// The session keeps a backend between transactions.
		st := env.srv.Stats()
		if len(st.Conns) != 1 || st.Conns[0].PoolMode != "session" {
			t.Fatalf("stats %+v", st)
		}
	})

	t.Run("Reload", func(t *testing.T) {
		env := startProxyEnv(t, ctx, clusters, nil)
		c1 := pxConnect(t, env, "")
		r := env.cfg.Reloadable()
		r.Users = []proxy.User{{Name: "app", Password: "changed"}}
		if err := env.srv.Reload(r); err != nil {
			t.Fatal(err)
		}
		if _, err := pgconn.Connect(ctx, env.dsn("")); err == nil || !strings.Contains(err.Error(), "28P01") {
			t.Fatalf("old password after reload: %v", err)
		}
		host, port, _ := net.SplitHostPort(env.addr)
		c2, err := pgconn.Connect(ctx, "host="+host+" port="+port+" user=app password=changed dbname=app sslmode=disable")
		if err != nil {
			t.Fatal(err)
		}
		c2.Close(ctx)
		// Existing sessions are unaffected.
		pxExec(t, c1, "select 1")
	})

	t.Run("Shutdown", func(t *testing.T) {
		env := startProxyEnv(t, ctx, clusters, func(c *proxy.Config) { c.ShutdownTimeout = 20 * time.Second })
		setup := pxConnect(t, env, "")
		pxExec(t, setup, "create table if not exists drained (id int primary key)")
		inTx := pxConnect(t, env, "")
		idle := pxConnect(t, env, "")
		tx := pxBegin(t, inTx, "insert into drained values (1)")
		closed := make(chan error, 1)
		go func() { closed <- env.srv.Close(ctx) }()
		// The idle session is ended with 57P01.
		deadline := time.Now().Add(20 * time.Second)
		for {
			_, err := idle.Exec(ctx, "select 1")
			if err != nil {
				if !strings.Contains(err.Error(), "57P01") && !idle.IsClosed() {
					t.Fatalf("idle session during shutdown: %v", err)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("idle session still served during shutdown")
			}
			time.Sleep(20 * time.Millisecond)
		}
		// The open transaction may finish.
		if _, err := tx.Exec(ctx, "insert into drained values (2)"); err != nil {
			t.Fatalf("statement in draining transaction: %v", err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatalf("commit while draining: %v", err)
		}
		select {
		case err := <-closed:
			if err != nil {
				t.Fatalf("Close: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Close did not return after the last transaction ended")
		}
		pc, err := clusters[0].Primary().Connect(ctx, "app")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close(ctx)
		var n int
		if err := pc.QueryRow(ctx, "select count(*) from drained").Scan(&n); err != nil || n != 2 {
			t.Fatalf("drained transaction committed %d rows, %v", n, err)
		}
	})
	t.Run("ShutdownCancelsRunningQueries", func(t *testing.T) {
		// A query still running at the drain deadline is cancelled on its
		// backend when its session is ended, not left to run on.
		env := startProxyEnv(t, ctx, clusters, func(c *proxy.Config) { c.ShutdownTimeout = 500 * time.Millisecond })
		pc, err := pgconn.Connect(ctx, env.dsn("application_name=shutdown-sleep"))
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close(ctx)
		res := make(chan error, 1)
		go func() { _, err := pc.Exec(ctx, "select pg_sleep(60)").ReadAll(); res <- err }()
		waitActive(t, ctx, clusters, "shutdown-sleep", 1, 10*time.Second)
		if err := env.srv.Close(ctx); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := <-res; !strings.Contains(fmt.Sprint(err), "57P01") {
			t.Errorf("query ended by shutdown: %v, want 57P01", err)
		}
		waitActive(t, ctx, clusters, "shutdown-sleep", 0, 5*time.Second)
	})
}

// TestProxyIdleTransactionTimeout: a client idle inside a transaction
// past IdleTransactionTimeout gets FATAL 25P03, its transaction is rolled
// back and its backend freed for the next client (a pool of one backend
// per node here); a transaction that keeps working, a session idle
// outside a transaction and, after a reload that turns the timeout off,
// an idle transaction are left alone.
func TestProxyIdleTransactionTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	clusters := startProxyClusters(t, ctx)
	const timeout = 500 * time.Millisecond
	env := startProxyEnvWith(t, ctx, clusters,
		func(rc *replica.Config) { rc.PoolSize, rc.AcquireTimeout = 1, 30*time.Second },
		func(c *proxy.Config) { c.IdleTransactionTimeout = timeout })
	setup := pxConnect(t, env, "")
	pxExec(t, setup, "create table if not exists idle_tx (id int primary key)")
	pxExec(t, setup, "truncate idle_tx")

	// A takes the primary's only backend inside a transaction and idles.
	a := pxConnect(t, env, "")
	txA := pxBegin(t, a, "insert into idle_tx values (1)")
	start := time.Now()
	// B writes the same key: it waits for the backend, which A's timeout
	// frees, and succeeds because A's insert was rolled back.
	b := pxConnect(t, env, "")
	pxExec(t, b, "insert into idle_tx values (1)")
	if waited := time.Since(start); waited < timeout-50*time.Millisecond || waited > 15*time.Second {
		t.Fatalf("second client waited %v for the backend, want about %v", waited, timeout)
	}
	if _, err := txA.Exec(ctx, "select 1"); errCode(err) != "25P03" {
		t.Fatalf("statement after the idle-in-transaction timeout: %v, want 25P03", err)
	}
	if !a.IsClosed() {
		t.Fatal("the timed-out session is still open")
	}
	if n := env.srv.Stats().IdleTransactionTimeouts; n != 1 {
		t.Fatalf("Stats().IdleTransactionTimeouts = %d, want 1", n)
	}

	// A transaction whose statements come more often than the timeout
	// lasts longer than it; a session idle outside a transaction stays.
	txB, err := b.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= 5; i++ {
		if _, err := txB.Exec(ctx, "insert into idle_tx values ($1)", i); err != nil {
			t.Fatalf("statement %d of a working transaction: %v", i, err)
		}
		time.Sleep(timeout / 3)
	}
	if err := txB.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * timeout)
	pxExec(t, b, "select 1")

	// A failed transaction ('E') holds its backend too.
	txE, err := b.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := txE.Exec(ctx, "insert into idle_tx values (1)"); errCode(err) != "23505" {
		t.Fatalf("duplicate key: %v", err)
	}
	time.Sleep(2 * timeout)
	if _, err := b.Exec(ctx, "rollback"); errCode(err) != "25P03" {
		t.Fatalf("rollback after idling in a failed transaction: %v, want 25P03", err)
	}

	// Reloaded to 0: the timeout is off for waits that begin afterwards.
	r := env.cfg.Reloadable()
	r.IdleTransactionTimeout = 0
	if err := env.srv.Reload(r); err != nil {
		t.Fatal(err)
	}
	c := pxConnect(t, env, "")
	txC := pxBegin(t, c, "insert into idle_tx values (6)")
	time.Sleep(2 * timeout)
	if err := txC.Commit(ctx); err != nil {
		t.Fatalf("commit after idling with the timeout off: %v", err)
	}

	pc, err := clusters[0].Primary().Connect(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx)
	rows, err := pc.Query(ctx, "select id from idle_tx order by id")
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil || fmt.Sprint(ids) != "[1 2 3 4 5 6]" {
		t.Fatalf("rows %v (%v), want [1 2 3 4 5 6]: B's key 1 and the committed transactions, none of A's", ids, err)
	}
}

// cancelRequest sends pc's CancelRequest and checks that the statement
// running (its error comes on done) ends with 57014 within 20 s.
func cancelRequest(t *testing.T, ctx context.Context, pc *pgconn.PgConn, done <-chan error) {
	t.Helper()
	start := time.Now()
	if err := pc.CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
			t.Fatalf("cancelled statement: %v, want 57014", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("CancelRequest did not stop the statement within 20 s")
	}
	t.Logf("cancelled in %v", time.Since(start))
}
