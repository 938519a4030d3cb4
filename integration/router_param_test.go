package integration

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/router"
)

// paramCorpus is every statement TestRouterParameterize runs, and whether
// router.Statement.Parameterize must turn it into a prepared statement.
var paramCorpus = []struct {
	sql string
	ok  bool
}{
	// pgbench -S and TPC-B
	{"SELECT abalance FROM pgbench_accounts WHERE aid = 42;", true},
	{"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;", true},
	{"UPDATE pgbench_accounts SET abalance = abalance + -4711 WHERE aid = 5;", true},
	{"SELECT abalance FROM pgbench_accounts WHERE aid = 5;", true},
	{"UPDATE pgbench_tellers SET tbalance = tbalance + -4711 WHERE tid = 3;", true},
	{"UPDATE pgbench_branches SET bbalance = bbalance + -4711 WHERE bid = 1;", true},
	{"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 5, -4711, CURRENT_TIMESTAMP);", true},
	// constants: types, names, errors
	{"SELECT pg_typeof(1), pg_typeof(-1), pg_typeof(2147483647)", true},
	{"SELECT 1/2, 7 % 3, -7 / 2, 2 ^ 3", true},
	{"SELECT 2147483647 + 1", true},
	// negative integers: one literal each, the sign included
	{"SELECT abs(-3), f.x * -2, -7 / 2, (-7) % 3, 5 - -2147483647 FROM (VALUES (1), (-2)) f(x) WHERE f.x = -2 OR f.x > -5", true},
	{"SELECT pg_typeof(-2147483647), -2147483647 - 1, x /* c */ -5 FROM (VALUES (1)) v(x)", true},
	{"SELECT 1/0", true},
	{"SELECT -2147483648", false}, // 2147483648 is not an int4 literal
	{"SELECT round(5), round(5, 1), abs(-3)", true},
	{"SELECT * FROM generate_series(1,3)", true},
	{"SELECT CASE WHEN 1=1 THEN 'yes' ELSE 'no' END, CASE 2 WHEN 2 THEN 20 END", true},
	{"SELECT ROW(1,2), (3, 4)", true},
	{"SELECT COALESCE(NULL, 5), NULLIF(5, 5), GREATEST(1, 2.5), 1.5 + 1", true},
	{"SELECT '5' + 1, 1 + '5', 's' || 1", true},
	{"SELECT 1 UNION SELECT '2' ORDER BY 1", true},
	{"VALUES (1),(2)", true},
	{"VALUES (1, 'a'), (2, 'b') ORDER BY 1 DESC", true},
	{`SELECT '{"a":[1,2]}'::jsonb -> 'a' -> 1`, true},
	// type modifiers
	{"SELECT 5::numeric(10,2), 5::numeric(3), 6::bit(3)", true},
	{"SELECT 1::float(24), 1::float(53)", true},
	{"SELECT '1.5'::interval second(0), 7", true},
	{"SELECT 'abcdef'::varchar(2), 3, numeric(6,3) '1.5'", true},
	{"SELECT CAST(s AS varchar(2)), CAST(n AS numeric(4,0)), d::timestamp(0) FROM t WHERE id = 3", true},
	{"SELECT current_timestamp(3) IS NOT NULL, 4", true},
	// positions
	{"SELECT id, s FROM t WHERE id < 5 ORDER BY 1 DESC", true},
	{"SELECT id, s FROM t WHERE id < 5 ORDER BY 2", true},
	{"SELECT id FROM t WHERE id < 5 ORDER BY 3", true},
	{"SELECT id FROM t WHERE id < 5 ORDER BY -1", true},
	{"SELECT id FROM t ORDER BY 1", false},
	{"SELECT v, count(*) FROM t WHERE id > 2 GROUP BY 1 ORDER BY 1", true},
	{"SELECT v, count(*) FROM t WHERE id > 2 GROUP BY ROLLUP (1) ORDER BY 1 NULLS FIRST", true},
	{"SELECT DISTINCT ON (1) v, id FROM t WHERE id > 2 ORDER BY 1, 2", true},
	{"SELECT id % 3 + 1, count(*) FROM t WHERE id > 1 GROUP BY id % 3 + 1 ORDER BY 1", true},
	{"SELECT DISTINCT id % 3 + 1 FROM t WHERE id > 1 ORDER BY id % 3 + 1", true},
	{"SELECT id, row_number() OVER (PARTITION BY 1 ORDER BY 1), sum(id) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) FROM t WHERE id < 6 ORDER BY id", true},
	{"SELECT ntile(3) OVER (ORDER BY id), lag(id, 2) OVER w FROM t WHERE id < 8 WINDOW w AS (ORDER BY id) ORDER BY id", true},
	{"SELECT id FROM t WHERE id < 3 UNION SELECT b FROM u WHERE b > 28 ORDER BY 1", true},
	{"SELECT id FROM t WHERE id < 3 UNION ALL SELECT 100 ORDER BY 1 LIMIT 2 OFFSET 1", true},
	{"SELECT array_agg(DISTINCT id % 3 ORDER BY id % 3) FROM t WHERE id < 10", true},
	{"SELECT string_agg(s, ',' ORDER BY 1) FROM t WHERE id < 4", true},
	{"SELECT count(*) FROM t HAVING count(*) > 1", true},
	{"SELECT rank(3) WITHIN GROUP (ORDER BY id), percentile_disc(0.5) WITHIN GROUP (ORDER BY id % 4) FROM t WHERE id > 1", true},
	{"SELECT id % 2, sum(id) OVER (PARTITION BY id % 2), count(*) FROM t WHERE id < 9 GROUP BY id ORDER BY id", true},
	{"SELECT id FROM t ORDER BY id % 3 FETCH FIRST 2 ROWS WITH TIES", true},
	{"SELECT count(*) FROM t TABLESAMPLE SYSTEM (100) REPEATABLE (1) WHERE id > 2", true},
	// values in clauses
	{"SELECT id FROM t WHERE id BETWEEN 1 AND 5 ORDER BY id", true},
	{"SELECT * FROM t ORDER BY id LIMIT 0", true},
	{"SELECT id FROM t WHERE id < 5 ORDER BY id FETCH FIRST 2 ROWS ONLY", true},
	{"SELECT id FROM t ORDER BY id OFFSET 18 ROWS", true},
	{"SELECT 1 FROM t WHERE id = 1 LIMIT -1", true},
	{"SELECT * FROM t WHERE id IN (1, 3, 5) ORDER BY id", true},
	{"SELECT * FROM t WHERE id = ANY(ARRAY[1, 2]) ORDER BY id", true},
	{"SELECT arr[1], arr[2:3], arr[-1] FROM t WHERE id = 4", true},
	{"SELECT -5, - 6, -id FROM t WHERE id = -(-3)", true},
	{"SELECT b + 1, n * 2, sm + 1, f + 1, d + 1, d - 7 FROM t WHERE id = 2", true},
	{"SELECT id FROM t WHERE b = 3000000000 OR id = 1", true},
	{"SELECT sm FROM t WHERE sm = 3", true},
	{"SELECT s || 1, 1 || s FROM t WHERE id = 1", true},
	{"SELECT id, s FROM t WHERE (id, sm) = (2, 2)", true},
	{"SELECT (SELECT max(a) FROM u WHERE u.b = t.id + 1) FROM t WHERE id < 4 ORDER BY id", true},
	{"SELECT x FROM generate_series(1, 10) x WHERE x % 2 = 0 LIMIT 3", true},
	{"SELECT id FROM t WHERE s LIKE 's1%' AND id > 10 ORDER BY id", true},
	{"SELECT id FROM t WHERE id = 1 FOR UPDATE", true},
	// strings and comments
	{"SELECT s FROM t WHERE s = 's1''x' OR id = 2", true},
	{"SELECT 'it''s', 1, ''", true},
	{"/* dbproxy: shard=0 */ SELECT id FROM t WHERE id = 7 -- 8 $1", true},
	{"/* é */ SELECT 'é'::varchar(1), \"id\" FROM t WHERE id = 2", true},
	// writes
	{"INSERT INTO t (id, s, arr) VALUES (50, 'a', ARRAY[1,2]), (51, 'b', '{3}') RETURNING id, arr, sm", true},
	{"INSERT INTO u SELECT a + 1, b FROM u WHERE b < 5", true},
	{"INSERT INTO t (id, s) VALUES (3, 'x') ON CONFLICT (id) DO UPDATE SET s = EXCLUDED.s || 1, sm = t.sm + 1 RETURNING id, s, sm", true},
	{"INSERT INTO t (id, s) VALUES (100, 's5') ON CONFLICT (s) WHERE id > 0 DO UPDATE SET b = 7 RETURNING id, b", true},
	{"INSERT INTO t (id) VALUES (1) ON CONFLICT DO NOTHING", true},
	{"INSERT INTO u VALUES (1, 1) ON CONFLICT ((a + 1000 * b)) DO UPDATE SET a = 9 RETURNING a, b", true},
	{"INSERT INTO t (id, arr[2]) VALUES (60, 5) RETURNING arr", true},
	{"UPDATE t SET sm = 70000 WHERE id = 1", true},
	{"UPDATE t SET arr[2] = 9 WHERE id = 2 RETURNING arr", true},
	{"DELETE FROM t WHERE id = 3 RETURNING id, s", true},
	{"WITH x AS (SELECT id FROM t WHERE id > 15) SELECT * FROM x ORDER BY id LIMIT 3", true},
	{"WITH d AS (DELETE FROM u WHERE b = 1 RETURNING *) INSERT INTO u SELECT a, b + 100 FROM d RETURNING a, b", true},
	// refused
	{"SELECT 1; SELECT 2", false},
	{"EXPLAIN SELECT * FROM t WHERE id = 1", false},
	{"SET statement_timeout = 5000", false},
	{"SELECT 1 INTO TEMP newt", false},
	{"SELECT 1 FROM t LIMIT 1, 2", false},
}

const paramSchema = `
CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88));
CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84));
CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
INSERT INTO pgbench_branches SELECT i, 0 FROM generate_series(1, 2) i;
INSERT INTO pgbench_tellers SELECT i, (i - 1) / 10 + 1, 0 FROM generate_series(1, 20) i;
INSERT INTO pgbench_accounts SELECT i, (i - 1) / 100 + 1, 0, '' FROM generate_series(1, 200) i;
CREATE TABLE t (id int PRIMARY KEY, b bigint, n numeric(10,2), s text, v varchar(10), d date, arr int[], sm smallint, f float8);
INSERT INTO t SELECT i, i * 1000000000::bigint, i * 1.25, 's' || i, 'v' || (i % 3), date '2024-01-01' + i, ARRAY[i, i + 1, i + 2], i, i / 3.0
  FROM generate_series(1, 20) i;
CREATE UNIQUE INDEX t_s_partial ON t (s) WHERE id > 0;
CREATE TABLE u (a int, b int);
INSERT INTO u SELECT i % 5, i FROM generate_series(1, 30) i;
CREATE UNIQUE INDEX u_expr ON u ((a + 1000 * b));
ANALYZE;
`

// paramResult is what a client sees of one statement.
type paramResult struct {
	Fields []pgconn.FieldDescription
	Rows   [][][]byte
	Tag    string
	Code   string // SQLSTATE of the error, "" for none
}

func (r paramResult) String() string {
	rows := make([]string, len(r.Rows))
	for i, row := range r.Rows {
		rows[i] = fmt.Sprintf("%q", row)
	}
	return fmt.Sprintf("fields=%+v rows=%v tag=%q code=%q", r.Fields, rows, r.Tag, r.Code)
}

func readParamResult(rr *pgconn.ResultReader) paramResult {
	var r paramResult
	for rr.NextRow() {
		row := make([][]byte, len(rr.Values()))
		for i, v := range rr.Values() {
			if v != nil {
				row[i] = append([]byte{}, v...)
			}
		}
		r.Rows = append(r.Rows, row)
	}
	if fds := rr.FieldDescriptions(); len(fds) > 0 {
		r.Fields = append([]pgconn.FieldDescription(nil), fds...)
	}
	tag, err := rr.Close()
	r.Tag = tag.String()
	if err != nil {
		r.Code = errCode(err)
	}
	return r
}

// errCode is err's SQLSTATE, "" for no error, or "client: " and the error
// for one that did not come from PostgreSQL or the proxy.
func errCode(err error) string {
	if err == nil {
		return ""
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return "client: " + err.Error()
}

// TestRouterParameterize runs each corpus statement on PostgreSQL as the
// literal simple-protocol query and as its parameterized text (int4
// parameters, text format): unnamed (ExecParams) and as a named prepared
// statement under both custom and generic plans. The client must see the
// same columns (name, table, type, size, modifier, format), rows and
// command tag, or the same error (and, but under a generic plan, the same
// columns and rows before it). Each run is rolled back, so writes start
// from the same data.
func TestRouterParameterize(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl := pgcluster.StartT(t, pgcluster.Options{Name: "rparam"})
	conn, err := cl.Primary().Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	pc := conn.PgConn()
	if _, err := pc.Exec(ctx, paramSchema).ReadAll(); err != nil {
		t.Fatal(err)
	}
	simple := func(sql string) error {
		_, err := pc.Exec(ctx, sql).ReadAll()
		return err
	}
	// inTx runs fn in a transaction that is rolled back.
	inTx := func(fn func() paramResult) paramResult {
		if err := simple("BEGIN"); err != nil {
			t.Fatal(err)
		}
		r := fn()
		if err := simple("ROLLBACK"); err != nil {
			t.Fatal(err)
		}
		return r
	}

	params, failing := 0, 0
	for i, c := range paramCorpus {
		st, err := router.Classify(c.sql)
		if err != nil {
			t.Fatalf("Classify(%q): %v", c.sql, err)
		}
		text, args, ok := st.Parameterize()
		if ok != c.ok {
			t.Errorf("Parameterize(%q) ok = %v, want %v (text %q)", c.sql, ok, c.ok, text)
			continue
		}
		if !ok {
			continue
		}
		params += len(args)
		values := make([][]byte, len(args))
		oids := make([]uint32, len(args))
		for j, a := range args {
			values[j] = []byte(a)
			oids[j] = 23 // int4
		}

		lit := inTx(func() paramResult {
			mrr := pc.Exec(ctx, c.sql)
			var r paramResult
			n := 0
			for mrr.NextResult() {
				r = readParamResult(mrr.ResultReader())
				n++
			}
			if err := mrr.Close(); err != nil && r.Code == "" {
				r.Code = errCode(err)
			}
			if n != 1 && r.Code == "" {
				t.Errorf("%q: %d results", c.sql, n)
			}
			return r
		})
		if lit.Code != "" {
			failing++
		}
		// A generic plan does not fold constant expressions, so an error
		// the literal query raises while planning (2147483647 + 1) comes
		// from execution, after the RowDescription: only the SQLSTATE
		// is compared then.
		check := func(how string, got paramResult) {
			t.Helper()
			if lit.Code != "" && got.Code == lit.Code && how == "ExecPrepared/force_generic_plan" {
				return
			}
			if !reflect.DeepEqual(got, lit) {
				t.Errorf("%s differs from the literal query\nliteral  %q\n  %v\n%s %q %q\n  %v", how, c.sql, lit, how, text, args, got)
			}
		}
		check("ExecParams", inTx(func() paramResult {
			return readParamResult(pc.ExecParams(ctx, text, values, oids, nil, nil))
		}))

		name := "rp" + strconv.Itoa(i)
		if _, err := pc.Prepare(ctx, name, text, oids); err != nil {
			// Parse analysis failed: the literal must fail with the same code.
			check("Prepare", paramResult{Code: errCode(err)})
			continue
		}
		for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
			if err := simple("SET plan_cache_mode = " + mode); err != nil {
				t.Fatal(err)
			}
			check("ExecPrepared/"+mode, inTx(func() paramResult {
				return readParamResult(pc.ExecPrepared(ctx, name, values, nil, nil))
			}))
		}
		if err := simple("RESET plan_cache_mode; DEALLOCATE " + name); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d statements (%d failing in PostgreSQL), %d integer parameters", len(paramCorpus), failing, params)
}
