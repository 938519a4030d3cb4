package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/dbproxy/dbproxy/proxy"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestProxyAutoPrepare checks server.auto_prepare on real PostgreSQL:
// simple queries with integer literals and unnamed extended-protocol
// statements run as statements prepared once per backend, give the
// answers the plain protocol gives, and survive a table changing under
// them ("cached plan must not change result type").
func TestProxyAutoPrepare(t *testing.T) {
	ctx, clusters, env := newProxyTest(t, nil)
	connect := func(t *testing.T) *pgconn.PgConn {
		t.Helper()
		pc, err := pgconn.Connect(ctx, env.dsn(""))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = pc.Close(context.Background()) })
		return pc
	}
	exec := func(t *testing.T, pc *pgconn.PgConn, sql string) []*pgconn.Result {
		t.Helper()
		res, err := pc.Exec(ctx, sql).ReadAll()
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return res
	}
	pc := connect(t)
	exec(t, pc, `CREATE TABLE ap_t (id int PRIMARY KEY, v text NOT NULL)`)
	exec(t, pc, `INSERT INTO ap_t SELECT g, 'v' || g FROM generate_series(1, 50) g`)
	// Later connections read from the standbys without this one's
	// causal token: let them replay the setup first.
	for _, c := range clusters {
		if err := c.WaitCaughtUp(ctx); err != nil {
			t.Fatal(err)
		}
	}

	// aliases lists the proxy's prepared statements on the backend of an
	// open transaction (pinned to the primary).
	aliases := func(t *testing.T, pc *pgconn.PgConn) map[string]string {
		t.Helper()
		res := exec(t, pc, `SELECT name, statement FROM pg_prepared_statements WHERE name LIKE 'dbproxy\_%'`)
		out := map[string]string{}
		for _, r := range res[0].Rows {
			out[string(r[0])] = string(r[1])
		}
		return out
	}

	t.Run("simple", func(t *testing.T) {
		pc := connect(t)
		exec(t, pc, "BEGIN")
		for id := 1; id <= 10; id++ {
			res := exec(t, pc, fmt.Sprintf("SELECT v, %d AS n FROM ap_t WHERE id = %d", id*2, id))
			r := res[0]
			if len(r.Rows) != 1 || string(r.Rows[0][0]) != "v"+strconv.Itoa(id) || string(r.Rows[0][1]) != strconv.Itoa(id*2) {
				t.Fatalf("id %d: rows %q", id, r.Rows)
			}
			if f := r.FieldDescriptions; len(f) != 2 || f[1].Name != "n" || f[1].DataTypeOID != 23 {
				t.Fatalf("fields %+v", f)
			}
		}
		found := ""
		for _, stmt := range aliases(t, pc) {
			if strings.Contains(stmt, "WHERE id = $2") {
				found = stmt
			}
		}
		if found == "" {
			t.Fatalf("no prepared statement for the parameterized query: %v", aliases(t, pc))
		}
		// ORDER BY 1 stays a positional reference.
		res := exec(t, pc, "SELECT id, v FROM ap_t WHERE id <= 3 ORDER BY 1 DESC")
		if got := string(res[0].Rows[0][0]); got != "3" {
			t.Fatalf("ORDER BY 1 DESC: first id %s", got)
		}
		exec(t, pc, "COMMIT")
	})

	t.Run("unnamed", func(t *testing.T) {
		pc := connect(t)
		exec(t, pc, "BEGIN")
		for id := 1; id <= 6; id++ {
			res := pc.ExecParams(ctx, "SELECT v FROM ap_t WHERE id = $1", [][]byte{[]byte(strconv.Itoa(id))}, nil, nil, nil).Read()
			if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "v"+strconv.Itoa(id) {
				t.Fatalf("id %d: %v %q", id, res.Err, res.Rows)
			}
		}
		n := 0
		for _, stmt := range aliases(t, pc) {
			if stmt == "SELECT v FROM ap_t WHERE id = $1" {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("want one alias of the unnamed statement, have %d: %v", n, aliases(t, pc))
		}
		exec(t, pc, "COMMIT")

		// Parse once, execute twice (pgconn.Prepare with the empty name).
		sd, err := pc.Prepare(ctx, "", "SELECT v FROM ap_t WHERE id = $1 AND $2::int > 0", nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(sd.ParamOIDs) != 2 || sd.ParamOIDs[1] != 23 {
			t.Fatalf("param OIDs %v", sd.ParamOIDs)
		}
		for i := 0; i < 2; i++ {
			res := pc.ExecPrepared(ctx, "", [][]byte{[]byte("7"), []byte("1")}, nil, nil).Read()
			if res.Err != nil || string(res.Rows[0][0]) != "v7" {
				t.Fatalf("execution %d: %v %q", i, res.Err, res.Rows)
			}
		}

		// A syntax error is the client's, and the session goes on.
		res := pc.ExecParams(ctx, "SELEC v FROM ap_t WHERE id = $1", [][]byte{[]byte("1")}, nil, nil, nil).Read()
		var pgErr *pgconn.PgError
		if !errors.As(res.Err, &pgErr) || pgErr.Code != "42601" {
			t.Fatalf("syntax error: %v", res.Err)
		}

		// More distinct statements than a backend keeps: the oldest are
		// closed, every answer is right.
		for i := 0; i < 300; i++ {
			sql := fmt.Sprintf("SELECT v, %d FROM ap_t WHERE id = $1", i)
			res := pc.ExecParams(ctx, sql, [][]byte{[]byte("3")}, nil, nil, nil).Read()
			if res.Err != nil || string(res.Rows[0][0]) != "v3" || string(res.Rows[0][1]) != strconv.Itoa(i) {
				t.Fatalf("statement %d: %v %q", i, res.Err, res.Rows)
			}
		}
		exec(t, pc, "BEGIN")
		if n := len(aliases(t, pc)); n > 128 {
			t.Fatalf("%d aliases on one backend, want at most 128", n)
		}
		exec(t, pc, "COMMIT")
	})

	t.Run("table changes", func(t *testing.T) {
		pc := connect(t)
		// Prepare SELECT * on the primary's backends (hint: primary).
		q := "/* dbproxy: primary */ SELECT * FROM ap_t WHERE id = 5"
		for i := 0; i < 40; i++ {
			if res := exec(t, pc, q); len(res[0].FieldDescriptions) != 2 {
				t.Fatalf("fields %d", len(res[0].FieldDescriptions))
			}
		}
		exec(t, pc, "ALTER TABLE ap_t ADD COLUMN extra int DEFAULT 7")
		// Simple queries are sent again transparently when their
		// statement is stale: no error reaches the client.
		for i := 0; i < 40; i++ {
			res := exec(t, pc, q)
			if len(res[0].FieldDescriptions) != 3 || string(res[0].Rows[0][2]) != "7" {
				t.Fatalf("after ALTER: fields %d rows %q", len(res[0].FieldDescriptions), res[0].Rows)
			}
		}
		// A renamed column: the RowDescription the proxy remembers for
		// the statement must not outlive it.
		exec(t, pc, "ALTER TABLE ap_t RENAME COLUMN extra TO renamed")
		for i := 0; i < 40; i++ {
			res := exec(t, pc, q)
			if f := res[0].FieldDescriptions; len(f) != 3 || f[2].Name != "renamed" {
				t.Fatalf("after RENAME: fields %+v", f)
			}
		}
	})

	t.Run("unnamed statements after a schema change", func(t *testing.T) {
		exec(t, connect(t), `CREATE TABLE ap_u (id int PRIMARY KEY, v text NOT NULL)`)
		exec(t, connect(t), `INSERT INTO ap_u VALUES (1, 'one')`)
		// Five clients each hold a primary backend in a transaction and
		// run an unnamed extended-protocol SELECT * there, so five
		// backends hold its alias.
		round := func(wantFields int) {
			t.Helper()
			var pcs []*pgconn.PgConn
			for i := 0; i < 5; i++ {
				pc := connect(t)
				exec(t, pc, "BEGIN")
				r := pc.ExecParams(ctx, "SELECT * FROM ap_u WHERE id = $1", [][]byte{[]byte("1")}, nil, nil, nil).Read()
				if r.Err != nil || len(r.FieldDescriptions) != wantFields || len(r.Rows) != 1 {
					t.Fatalf("client %d: fields %d rows %q err %v, want %d fields", i, len(r.FieldDescriptions), r.Rows, r.Err, wantFields)
				}
				pcs = append(pcs, pc)
			}
			for _, pc := range pcs {
				exec(t, pc, "COMMIT")
			}
		}
		round(2)
		// A column added through the proxy: no client gets "cached plan
		// must not change result type" from a backend's old alias.
		exec(t, connect(t), "ALTER TABLE ap_u ADD COLUMN extra int DEFAULT 7")
		round(3)
		exec(t, connect(t), "ALTER TABLE ap_u DROP COLUMN extra")
		round(2)
	})

	t.Run("schema change during a COPY", func(t *testing.T) {
		exec(t, connect(t), `CREATE TABLE ap_c (id int)`)
		exec(t, connect(t), `CREATE TABLE ap_d (id int)`)
		pc := connect(t)
		exec(t, pc, "BEGIN")
		// The transaction's backend holds an alias, which a schema change
		// makes stale: it must not be closed in the middle of the COPY.
		if r := pc.ExecParams(ctx, "SELECT * FROM ap_u WHERE id = $1", [][]byte{[]byte("1")}, nil, nil, nil).Read(); r.Err != nil {
			t.Fatal(r.Err)
		}
		started, ddlDone := make(chan struct{}), make(chan struct{})
		r := &stagedReader{parts: []string{"1\n2\n", "3\n"}, after: []chan struct{}{started, nil}, before: []chan struct{}{nil, ddlDone}}
		copied := make(chan error, 1)
		go func() {
			tag, err := pc.CopyFrom(ctx, r, "COPY ap_c FROM STDIN")
			if err == nil && tag.RowsAffected() != 3 {
				err = fmt.Errorf("COPY: %s", tag)
			}
			copied <- err
		}()
		<-started
		// (Another table: the transaction holds a lock on ap_u.)
		exec(t, connect(t), "ALTER TABLE ap_d ADD COLUMN during_copy int")
		close(ddlDone)
		if err := <-copied; err != nil {
			t.Fatalf("COPY across a schema change: %v", err)
		}
		exec(t, pc, "COMMIT")
		if res := exec(t, connect(t), "/* dbproxy: primary */ SELECT count(*) FROM ap_c"); string(res[0].Rows[0][0]) != "3" {
			t.Fatalf("rows copied: %s", res[0].Rows[0][0])
		}
	})

	t.Run("off", func(t *testing.T) {
		env := startProxyEnv(t, ctx, clusters, func(c *proxy.Config) { c.AutoPrepare = false })
		pc, err := pgconn.Connect(ctx, env.dsn(""))
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close(context.Background())
		exec(t, pc, "BEGIN")
		exec(t, pc, "DEALLOCATE ALL")
		exec(t, pc, "SELECT v FROM ap_t WHERE id = 1")
		if res := pc.ExecParams(ctx, "SELECT v FROM ap_t WHERE id = $1", [][]byte{[]byte("1")}, nil, nil, nil).Read(); res.Err != nil {
			t.Fatal(res.Err)
		}
		if a := aliases(t, pc); len(a) != 0 {
			t.Fatalf("auto_prepare off, yet %v", a)
		}
		exec(t, pc, "COMMIT")
	})

	t.Run("BoundedPerBackend", func(t *testing.T) {
		// One backend connection per shard (its primary), at most 4
		// client-named statements kept on it.
		env := startProxyEnvWith(t, ctx, clusters,
			func(rc *replica.Config) { rc.Nodes, rc.PoolSize = rc.Nodes[:1], 1 },
			func(c *proxy.Config) { c.MaxBackendStatements = 4 })
		pc, err := pgconn.Connect(ctx, env.dsn(""))
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close(context.Background())
		run := func(name string, n int) {
			t.Helper()
			res := pc.ExecPrepared(ctx, name, [][]byte{[]byte(strconv.Itoa(n))}, nil, nil).Read()
			if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != strconv.Itoa(n+len(name)) {
				t.Fatalf("%s(%d): %v %v", name, n, res.Rows, res.Err)
			}
		}
		prepare := func(name string) {
			t.Helper()
			// s1 adds 2, s22 adds 3, ...: each name its own text.
			if _, err := pc.Prepare(ctx, name, fmt.Sprintf("SELECT $1::int + %d", len(name)), nil); err != nil {
				t.Fatal(err)
			}
			run(name, 1)
		}
		onBackend := func() []string {
			t.Helper()
			res := exec(t, pc, "SELECT string_agg(name, ' ' ORDER BY name) FROM pg_prepared_statements WHERE name LIKE 'p%'")
			return strings.Fields(string(res[0].Rows[0][0]))
		}
		for _, name := range []string{"pa", "pbb", "pccc", "pdddd"} {
			prepare(name)
		}
		run("pa", 5) // pa is now the most recently used
		prepare("peeeee")
		prepare("pffffff")
		// Each lease begins by closing the least recently used beyond 4:
		// pbb at the lease that prepared pffffff, pccc at this query's.
		if got, want := strings.Join(onBackend(), " "), "pa pdddd peeeee pffffff"; got != want {
			t.Fatalf("statements on the backend: %q, want %q", got, want)
		}
		// The closed ones still work for the client: prepared again (and
		// pdddd, then pa, closed at the next two leases).
		run("pbb", 7)
		run("pccc", 8)
		if got, want := strings.Join(onBackend(), " "), "pbb pccc peeeee pffffff"; got != want {
			t.Fatalf("statements on the backend: %q, want %q", got, want)
		}
		run("pdddd", 9)
	})
}

// stagedReader hands out parts one Read at a time; before part i it waits
// for before[i] (if set), after handing it out it closes after[i] (if set).
type stagedReader struct {
	parts         []string
	before, after []chan struct{}
	i             int
}

func (r *stagedReader) Read(p []byte) (int, error) {
	if r.i > 0 && r.after[r.i-1] != nil {
		close(r.after[r.i-1])
		r.after[r.i-1] = nil
	}
	if r.i == len(r.parts) {
		return 0, io.EOF
	}
	if ch := r.before[r.i]; ch != nil {
		<-ch
	}
	n := copy(p, r.parts[r.i])
	r.i++
	return n, nil
}
