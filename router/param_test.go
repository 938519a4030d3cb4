package router

import (
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// paramCase is a statement and what Parameterize must make of it (ok is
// false when text is "").
type paramCase struct {
	sql  string
	text string
	args []string
}

func a(v ...string) []string { return v }

var paramCases = []paramCase{
	// pgbench -S and TPC-B
	{"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;", a("12345")},
	{"UPDATE pgbench_accounts SET abalance = abalance + -4711 WHERE aid = 5;", "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;", a("-4711", "5")},
	{"UPDATE pgbench_tellers SET tbalance = tbalance + 100 WHERE tid = 3;", "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;", a("100", "3")},
	{"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 5, -4711, CURRENT_TIMESTAMP);",
		"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);", a("3", "1", "5", "-4711")},
	{"SELECT abs(-3), f(1,-2), x = -4, x < -5, x * -6, x / -7", "SELECT abs($1), f($2,$3), x = $4, x < $5, x * $6, x / $7", a("-3", "1", "-2", "-4", "-5", "-6", "-7")},
	{"SELECT x /* c */ -5, x-6, x =-7, 1e-8, -9", "SELECT x /* c */ -$1, x-$2, x =-$3, 1e-8, $4", a("5", "6", "7", "-9")},
	// type modifiers stay
	{"SELECT 5::numeric(10,2)", "SELECT $1::numeric(10,2)", a("5")},
	{"SELECT CAST(n AS numeric(12, 3)) FROM t WHERE id = 5", "SELECT CAST(n AS numeric(12, 3)) FROM t WHERE id = $1", a("5")},
	{"SELECT v::varchar(20) FROM t WHERE id = 5", "SELECT v::varchar(20) FROM t WHERE id = $1", a("5")},
	{"SELECT CAST(d AS timestamp(3)) FROM t WHERE id = 5", "SELECT CAST(d AS timestamp(3)) FROM t WHERE id = $1", a("5")},
	{"SELECT 5::bit(3), 6::bit varying(8)", "SELECT $1::bit(3), $2::bit varying(8)", a("5", "6")},
	{"SELECT 1::float(24), 2::float(53)", "SELECT $1::float(24), $2::float(53)", a("1", "2")},
	{"SELECT '1.5'::interval second(3), 7", "SELECT '1.5'::interval second(3), $1", a("7")},
	{"SELECT current_timestamp(3) > d, 4 FROM t", "SELECT current_timestamp(3) > d, $1 FROM t", a("4")},
	{"SELECT numeric(10,2) '5.5', 7", "SELECT numeric(10,2) '5.5', $1", a("7")},
	{`SELECT "é", v::varchar(20) FROM t WHERE id = 5`, `SELECT "é", v::varchar(20) FROM t WHERE id = $1`, a("5")},
	{"SELECT ARRAY[1, 2]::numeric(5)[]", "SELECT ARRAY[$1, $2]::numeric(5)[]", a("1", "2")},
	// positions and expressions matched by equality stay
	{"SELECT a, b FROM t WHERE c = 3 ORDER BY 1", "SELECT a, b FROM t WHERE c = $1 ORDER BY 1", a("3")},
	{"SELECT a, b FROM t WHERE c = 3 ORDER BY (2) DESC, -1", "SELECT a, b FROM t WHERE c = $1 ORDER BY (2) DESC, -1", a("3")},
	{"SELECT a, count(*) FROM t WHERE c > 3 GROUP BY 1", "SELECT a, count(*) FROM t WHERE c > $1 GROUP BY 1", a("3")},
	{"SELECT a, count(*) FROM t WHERE c > 3 GROUP BY ROLLUP (1, (2, 1))", "SELECT a, count(*) FROM t WHERE c > $1 GROUP BY ROLLUP (1, (2, 1))", a("3")},
	{"SELECT DISTINCT ON (1) a, b FROM t WHERE c = 3 ORDER BY 1, 2", "SELECT DISTINCT ON (1) a, b FROM t WHERE c = $1 ORDER BY 1, 2", a("3")},
	{"SELECT a + 1, count(*) FROM t WHERE b = 2 GROUP BY a + 1 HAVING count(*) > 3 LIMIT 4",
		"SELECT a + 1, count(*) FROM t WHERE b = $1 GROUP BY a + 1 HAVING count(*) > 3 LIMIT $2", a("2", "4")},
	{"SELECT DISTINCT a + 1 FROM t WHERE b = 2 ORDER BY a + 1 LIMIT 4", "SELECT DISTINCT a + 1 FROM t WHERE b = $1 ORDER BY a + 1 LIMIT $2", a("2", "4")},
	{"SELECT a, row_number() OVER (PARTITION BY 1 ORDER BY 2) FROM t WHERE c = 3", "SELECT a, row_number() OVER (PARTITION BY 1 ORDER BY 2) FROM t WHERE c = $1", a("3")},
	{"SELECT sum(a) OVER w FROM t WHERE c = 3 WINDOW w AS (ORDER BY 1 ROWS BETWEEN 1 PRECEDING AND 2 FOLLOWING)",
		"SELECT sum(a) OVER w FROM t WHERE c = $1 WINDOW w AS (ORDER BY 1 ROWS BETWEEN $2 PRECEDING AND $3 FOLLOWING)", a("3", "1", "2")},
	{"SELECT a FROM t WHERE c = 1 UNION SELECT b FROM u WHERE d = 2 ORDER BY 1 LIMIT 5", "SELECT a FROM t WHERE c = $1 UNION SELECT b FROM u WHERE d = $2 ORDER BY 1 LIMIT $3", a("1", "2", "5")},
	{"SELECT * FROM t WHERE id IN (SELECT a FROM u WHERE b = 1 ORDER BY 1 LIMIT 2)", "SELECT * FROM t WHERE id IN (SELECT a FROM u WHERE b = $1 ORDER BY 1 LIMIT $2)", a("1", "2")},
	{"SELECT array_agg(DISTINCT a + 1 ORDER BY a + 1), array_agg(a ORDER BY 1) FROM t WHERE b = 2",
		"SELECT array_agg(DISTINCT a + 1 ORDER BY a + 1), array_agg(a ORDER BY 1) FROM t WHERE b = $1", a("2")},
	{"INSERT INTO t (id, b) VALUES (1, 2) ON CONFLICT (id) WHERE b > 0 DO UPDATE SET b = t.b + 1",
		"INSERT INTO t (id, b) VALUES ($1, $2) ON CONFLICT (id) WHERE b > 0 DO UPDATE SET b = t.b + $3", a("1", "2", "1")},
	// values
	{"SELECT * FROM t ORDER BY a LIMIT 10 OFFSET 20", "SELECT * FROM t ORDER BY a LIMIT $1 OFFSET $2", a("10", "20")},
	{"SELECT * FROM t ORDER BY a OFFSET 2 ROWS FETCH FIRST 3 ROWS ONLY", "SELECT * FROM t ORDER BY a OFFSET $1 ROWS FETCH FIRST $2 ROWS ONLY", a("2", "3")},
	{"SELECT * FROM t WHERE id IN (1, 2, 3)", "SELECT * FROM t WHERE id IN ($1, $2, $3)", a("1", "2", "3")},
	{"SELECT arr[1], arr[2:3] FROM t WHERE id = 4", "SELECT arr[$1], arr[$2:$3] FROM t WHERE id = $4", a("1", "2", "3", "4")},
	{"SELECT -5, - 6, +7, 8-9", "SELECT -$1, - $2, +$3, $4-$5", a("5", "6", "7", "8", "9")},
	{"SELECT 1.5, 1e5, 2147483648, 0x10, 3", "SELECT 1.5, 1e5, 2147483648, 0x10, $1", a("3")},
	{"SELECT * FROM t WHERE s = 'it''s' AND id = 7 AND v <> ''", "SELECT * FROM t WHERE s = 'it''s' AND id = $1 AND v <> ''", a("7")},
	{"SELECT 'a''''b''', 1, '''', 2", "SELECT 'a''''b''', $1, '''', $2", a("1", "2")},
	{"/* dbproxy: shard=1 */ SELECT * FROM t WHERE id = 7 -- 8 $1 'x\n", "/* dbproxy: shard=1 */ SELECT * FROM t WHERE id = $1 -- 8 $1 'x\n", a("7")},
	{`SELECT "a$1", "x""$2" FROM t /* $3 /* 4 */ */ WHERE id = 3`, `SELECT "a$1", "x""$2" FROM t /* $3 /* 4 */ */ WHERE id = $1`, a("3")},
	{"INSERT INTO t (id, s) VALUES (1, 'a'), (2, 'b') RETURNING id + 1", "INSERT INTO t (id, s) VALUES ($1, 'a'), ($2, 'b') RETURNING id + $3", a("1", "2", "1")},
	{"WITH x AS (SELECT id FROM t WHERE id > 5) SELECT * FROM x LIMIT 3", "WITH x AS (SELECT id FROM t WHERE id > $1) SELECT * FROM x LIMIT $2", a("5", "3")},
	{"WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) INSERT INTO u SELECT id, 2 FROM d", "WITH d AS (DELETE FROM t WHERE id = $1 RETURNING *) INSERT INTO u SELECT id, $2 FROM d", a("1", "2")},
	{"VALUES (1), (2)", "VALUES ($1), ($2)", a("1", "2")},
	{"SELECT pg_typeof(1), 1/2, round(5), CASE WHEN 1=1 THEN 'y' END, ROW(1,2)", "SELECT pg_typeof($1), $2/$3, round($4), CASE WHEN $5=$6 THEN 'y' END, ROW($7,$8)", a("1", "1", "2", "5", "1", "1", "1", "2")},
	{"DELETE FROM t WHERE id = 3", "DELETE FROM t WHERE id = $1", a("3")},
	{"UPDATE t SET arr[2] = 5 WHERE id BETWEEN 1 AND 5", "UPDATE t SET arr[$1] = $2 WHERE id BETWEEN $3 AND $4", a("2", "5", "1", "5")},
	{"SELECT * FROM t WHERE id = 1 FOR UPDATE", "SELECT * FROM t WHERE id = $1 FOR UPDATE", a("1")},
	{"SELECT 1 FROM t FETCH FIRST -1 ROWS ONLY", "SELECT $1 FROM t FETCH FIRST -1 ROWS ONLY", a("1")}, // only a literal may follow -
	{"SELECT * FROM generate_series(1, 3) g", "SELECT * FROM generate_series($1, $2) g", a("1", "3")},
	// refused
	{"SELECT a FROM t ORDER BY 1", "", nil},           // only syntax
	{"SELECT a FROM t WHERE s = 'x'", "", nil},        // no integer
	{"SELECT a FROM t", "", nil},                      // no literal
	{"SELECT 1; SELECT 2", "", nil},                   // two statements
	{"EXPLAIN SELECT * FROM t WHERE id = 1", "", nil}, //
	{"SET statement_timeout = 5", "", nil},            //
	{"PREPARE p AS SELECT * FROM t WHERE id = 1", "", nil},
	{"EXECUTE p(1)", "", nil},
	{"SELECT 1 INTO newt", "", nil},
	{"CREATE TABLE x (a numeric(10,2) DEFAULT 5)", "", nil},
	{"COPY t FROM '/tmp/x'", "", nil},
	{"MERGE INTO t USING u ON t.id = u.a WHEN MATCHED THEN UPDATE SET b = 1", "", nil},
	{"DO 'begin perform 1; end'", "", nil},
	{"SELECT * FROM t WHERE id = $1", "", nil}, // already has parameters
	{"SELECT E'a', 1", "", nil},                // prefixed string
	{"SELECT 'a\\b', 1", "", nil},              // backslash
	{"SELECT FROM WHERE 1", "", nil},           // parse error
	{"/* dbproxy: bogus */ SELECT 1", "", nil}, // hint error
	{"SELECT 1 FROM t LIMIT 1, 2", "", nil},    // LIMIT #,# is refused by the parser
}

func TestParameterize(t *testing.T) {
	c := NewClassifier(1024)
	for _, tc := range paramCases {
		// The first text of a shape is classified in full, later ones
		// through the template: both must parameterize alike.
		for round := 0; round < 2; round++ {
			st, _ := c.Classify(tc.sql)
			text, args, ok := st.Parameterize()
			if ok != (tc.text != "") || text != tc.text || !reflect.DeepEqual(args, tc.args) {
				t.Errorf("Parameterize(%q) = %q, %q, %v; want %q, %q", tc.sql, text, args, ok, tc.text, tc.args)
				break
			}
			if ok {
				if back := substituteParams(text, args); back != tc.sql {
					t.Errorf("Parameterize(%q): args put back give %q", tc.sql, back)
				}
			}
		}
	}
	var nilSt *Statement
	if _, _, ok := nilSt.Parameterize(); ok {
		t.Error("nil statement parameterized")
	}
}

// TestParameterizeVariants checks that texts of one shape share the
// parameterized text (strings apart) and get their own values.
func TestParameterizeVariants(t *testing.T) {
	c := NewClassifier(1024)
	for i := 0; i < 20; i++ {
		id := strconv.Itoa(i * 7919)
		st, _ := c.Classify("SELECT a, b FROM t WHERE id = " + id + " AND s = 'k''" + id + "' ORDER BY 2 LIMIT 3")
		text, args, ok := st.Parameterize()
		want := "SELECT a, b FROM t WHERE id = $1 AND s = 'k''" + id + "' ORDER BY 2 LIMIT $2"
		if !ok || text != want || !reflect.DeepEqual(args, a(id, "3")) {
			t.Fatalf("variant %d: %q, %q, %v", i, text, args, ok)
		}
	}
}

// TestParameterizeConcurrent builds and reads plans from many goroutines
// (run with -race).
func TestParameterizeConcurrent(t *testing.T) {
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				tc := paramCases[(i+g)%len(paramCases)]
				st, _ := Classify(tc.sql)
				text, args, ok := st.Parameterize()
				if ok != (tc.text != "") || text != tc.text || !reflect.DeepEqual(args, tc.args) {
					t.Errorf("Parameterize(%q) = %q, %q, %v", tc.sql, text, args, ok)
					return
				}
			}
		}(g)
	}
	wg.Wait()
}

func TestParamPlanCacheBound(t *testing.T) {
	c := newParamPlanCache(32)
	for i := 0; i < 300; i++ {
		norm := "SELECT " + strings.Repeat("x,", i) + "$1"
		if p := c.get(norm, []byte{'i'}); !p.ok || p.parts[0].text != norm {
			t.Fatalf("plan of %q: %+v", norm, p)
		}
	}
	n := 0
	for i := range c.shards {
		n += len(c.shards[i].m)
	}
	if n > 32 {
		t.Fatalf("plan cache holds %d > 32 shapes", n)
	}
}

// substituteParams puts args back for the $n of text, outside comments,
// quoted identifiers and strings.
func substituteParams(text string, args []string) string {
	quoted := quotedBytes(text)
	var b strings.Builder
	for i := 0; i < len(text); {
		if text[i] != '$' || quoted[i] {
			b.WriteByte(text[i])
			i++
			continue
		}
		j := i + 1
		for j < len(text) && text[j] >= '0' && text[j] <= '9' {
			j++
		}
		if n, err := strconv.Atoi(text[i+1 : j]); err == nil && n >= 1 && n <= len(args) {
			b.WriteString(args[n-1])
		} else {
			b.WriteString(text[i:j])
		}
		i = j
	}
	return b.String()
}

// quotedBytes marks the bytes of text inside comments, quoted
// identifiers and strings.
func quotedBytes(text string) []bool {
	m := make([]bool, len(text))
	for i := 0; i < len(text); {
		start := i
		switch {
		case strings.HasPrefix(text[i:], "--"):
			j := strings.IndexByte(text[i:], '\n')
			if j < 0 {
				j = len(text) - i
			}
			i += j
		case strings.HasPrefix(text[i:], "/*"):
			depth, j := 1, i+2
			for j < len(text) && depth > 0 {
				switch {
				case strings.HasPrefix(text[j:], "/*"):
					depth++
					j += 2
				case strings.HasPrefix(text[j:], "*/"):
					depth--
					j += 2
				default:
					j++
				}
			}
			i = j
		case text[i] == '"' || text[i] == '\'':
			q := text[i]
			j := i + 1
			for j < len(text) && (text[j] != q || j+1 < len(text) && text[j+1] == q) {
				if text[j] == q {
					j++
				}
				j++
			}
			i = min(j+1, len(text))
		default:
			i++
			continue
		}
		for k := start; k < i; k++ {
			m[k] = true
		}
	}
	return m
}

// FuzzParameterize: Parameterize never panics, and when it succeeds the
// arguments put back for $1..$n in order give the original text (so the
// same literal shape), every argument is a canonical int32 and the
// parameters are numbered in order of appearance.
func FuzzParameterize(f *testing.F) {
	for _, tc := range paramCases {
		f.Add(tc.sql)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		st, _ := classify(sql)
		text, args, ok := st.Parameterize()
		if !ok {
			return
		}
		if len(args) == 0 {
			t.Fatalf("Parameterize(%q) ok without arguments", sql)
		}
		for _, v := range args {
			if !canonicalInt32(v) {
				t.Fatalf("Parameterize(%q): argument %q is not an int4 literal", sql, v)
			}
		}
		back := substituteParams(text, args)
		if back != sql {
			t.Fatalf("Parameterize(%q) = %q, %q: put back %q", sql, text, args, back)
		}
		n1, _, k1, _ := normalizeLiteralKinds(sql)
		n2, _, k2, _ := normalizeLiteralKinds(back)
		if n1 != n2 || string(k1) != string(k2) {
			t.Fatalf("shape changed: %q vs %q", sql, back)
		}
		if _, _, _, ok := normalizeLiteralKinds(text); ok {
			// text holds $n: the scanner refuses it.
			t.Fatalf("parameterized text %q normalizes", text)
		}
		last := 0
		quoted := quotedBytes(text)
		for i := 0; i+1 < len(text); i++ {
			if text[i] == '$' && text[i+1] >= '1' && text[i+1] <= '9' && !quoted[i] {
				j := i + 1
				for j < len(text) && text[j] >= '0' && text[j] <= '9' {
					j++
				}
				n, _ := strconv.Atoi(text[i+1 : j])
				if n != last+1 {
					t.Fatalf("Parameterize(%q) = %q: $%d after $%d", sql, text, n, last)
				}
				last = n
			}
		}
		if last != len(args) {
			t.Fatalf("Parameterize(%q) = %q with %d args", sql, text, len(args))
		}
	})
}

// BenchmarkParameterize is a pgbench -S statement already classified
// (its shape's plan cached).
func BenchmarkParameterize(b *testing.B) {
	st, _ := Classify("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;")
	st.Parameterize()
	b.ReportAllocs()
	for b.Loop() {
		if _, _, ok := st.Parameterize(); !ok {
			b.Fatal("not parameterized")
		}
	}
}

// BenchmarkParameterizeString has a string literal to re-quote and a
// positional ORDER BY kept inline.
func BenchmarkParameterizeString(b *testing.B) {
	st, _ := Classify("SELECT a, b FROM t WHERE id = 42 AND s = 'it''s' ORDER BY 1 LIMIT 10")
	st.Parameterize()
	b.ReportAllocs()
	for b.Loop() {
		if _, _, ok := st.Parameterize(); !ok {
			b.Fatal("not parameterized")
		}
	}
}

// BenchmarkClassifyParameterize is the router's share of a pgbench -S
// query through the proxy with auto_prepare: each text has a new literal.
func BenchmarkClassifyParameterize(b *testing.B) {
	c := NewClassifier(DefaultCacheSize)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		st, err := c.Classify("SELECT abalance FROM pgbench_accounts WHERE aid = " + strconv.Itoa(i%2000000+1) + ";")
		if err != nil {
			b.Fatal(err)
		}
		if _, _, ok := st.Parameterize(); !ok {
			b.Fatal("not parameterized")
		}
	}
}
