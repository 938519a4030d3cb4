package router

import (
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestNormalizeLiterals(t *testing.T) {
	cases := []struct {
		sql, norm string
		lits      []string
	}{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = 123;", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;", []string{"123"}},
		{"SELECT * FROM t1 WHERE a = 'it''s' AND b = 0", "SELECT * FROM t1 WHERE a = $1 AND b = $2", []string{"it's", "0"}},
		{`SELECT "col 1", "a""b" FROM t WHERE x IN (1,2) -- 5 '`, `SELECT "col 1", "a""b" FROM t WHERE x IN ($1,$2) -- 5 '`, []string{"1", "2"}},
		{"/* dbproxy: shard=1 /* nested 3 */ */ SELECT 7", "/* dbproxy: shard=1 /* nested 3 */ */ SELECT $1", []string{"7"}},
		{"SELECT 1.5, .5, 1e5, 0x1F, 1_000, 007, 2147483648, 2147483647", "SELECT 1.5, .5, 1e5, 0x1F, 1_000, 007, 2147483648, $1", []string{"2147483647"}},
		{"SELECT a[1:2] FROM t LIMIT 10", "SELECT a[$1:$2] FROM t LIMIT $3", []string{"1", "2", "10"}},
		{"SELECT -5", "SELECT -$1", []string{"5"}},
		{"SELECT 1e-5, 2E+3, 1 - 5", "SELECT 1e-5, 2E+3, $1 - $2", []string{"1", "5"}},
		{"SELECT ''", "SELECT $1", []string{""}},
	}
	for _, c := range cases {
		norm, lits, ok := normalizeLiterals(c.sql)
		if !ok || norm != c.norm || !reflect.DeepEqual(lits, c.lits) {
			t.Errorf("normalizeLiterals(%q) = %q, %q, %v; want %q, %q", c.sql, norm, lits, ok, c.norm, c.lits)
		}
	}
	for _, sql := range []string{
		"SELECT x FROM t",                   // no literal
		"SELECT $1",                         // parameters
		"SELECT $$a$$, 1",                   // dollar quoting
		"SELECT E'a\\'b', 1",                // escape string
		"SELECT B'101', X'1f', N'x', U&'x'", // prefixed strings
		"SELECT 'a'\n'b'",                   // continuation
		"SELECT 'a\\b'",                     // backslash
		"SELECT 'unterminated",              //
		"SELECT \"unterminated",             //
		"SELECT 1 /* unterminated /* */",    //
		"SELECT 1\x00",                      // NUL
	} {
		if norm, lits, ok := normalizeLiterals(sql); ok {
			t.Errorf("normalizeLiterals(%q) = %q, %q, true; want not ok", sql, norm, lits)
		}
	}
}

// shapeCorpus is every golden-test statement plus statements whose
// literals matter in unusual ways.
func shapeCorpus(t *testing.T) []string {
	var out []string
	files, _ := filepath.Glob("testdata/*.golden")
	for _, f := range files {
		for _, c := range readGolden(t, f) {
			out = append(out, c.sql)
		}
	}
	return append(out,
		"SELECT * FROM users WHERE id = 1 OR id = 2 ORDER BY 1 LIMIT 3 OFFSET 1",
		"SELECT count(*) FROM users WHERE name = 'bob' GROUP BY 1",
		"INSERT INTO users (id, name) VALUES (1, 'a'), (2, 'b')",
		"UPDATE users SET name = 'x' WHERE id = 5",
		"DELETE FROM orders WHERE user_id = 9 AND id = 3",
		"SELECT * FROM users WHERE id = -5",
		"SELECT * FROM users WHERE id = '7'::bigint",
		"SET statement_timeout = 5",
		"SET search_path = 'public'",
		"BEGIN; SELECT * FROM users WHERE id = 1; COMMIT",
		"PREPARE p AS SELECT * FROM users WHERE id = 1",
		"EXECUTE p(1)",
		"SELECT set_config('a.b', 'c', false)",
		"SELECT pg_sleep(1)",
		"SELECT * FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = 3 AND o.id IN (1, 2)",
		"SELECT * FROM users WHERE id = 1 /* dbproxy: primary */",
		"SELECT 'dbproxy: shard=1', id FROM users WHERE id = 10",
		"EXPLAIN SELECT * FROM users WHERE id = 4",
		"SELECT * FROM users WHERE id IN (SELECT user_id FROM orders WHERE id = 3) LIMIT 1",
		"SELECT * FROM users WHERE id = 1 FOR UPDATE",
		"COPY users FROM '/tmp/x'",
		"SELECT INTERVAL '1 day', DATE '2020-01-01', 'x'::text",
	)
}

// variants returns texts of sql's shape with other literal values.
func variants(sql string) []string {
	norm, lits, ok := normalizeLiterals(sql)
	if !ok {
		return nil
	}
	ints := []string{"0", "7", "42", "123456", "2147483647", "1"}
	strs := []string{"", "x", "it''s", "42", "dbproxy: shard=0", "é"}
	var out []string
	for v := 0; v < len(ints); v++ {
		s := norm
		for i := len(lits); i >= 1; i-- {
			orig := lits[i-1]
			repl := strs[(v+i)%len(strs)]
			if canonicalInt32(orig) {
				repl = ints[(v+i)%len(ints)]
			}
			// A string literal stays a string literal.
			if !isIntLiteralAt(sql, orig) || !canonicalInt32(orig) {
				repl = "'" + repl + "'"
			}
			s = strings.ReplaceAll(s, "$"+strconv.Itoa(i), repl)
		}
		out = append(out, s)
	}
	return out
}

// isIntLiteralAt reports whether lit occurs unquoted in sql (an integer
// literal rather than the content of a string).
func isIntLiteralAt(sql, lit string) bool {
	return !strings.Contains(sql, "'"+strings.ReplaceAll(lit, "'", "''")+"'")
}

// TestShapeEquivalence checks that every statement classified through its
// shape's template equals its full classification.
func TestShapeEquivalence(t *testing.T) {
	c := NewClassifier(1024)
	used := 0
	for _, sql := range shapeCorpus(t) {
		texts := append([]string{sql}, variants(sql)...)
		for _, text := range texts {
			got, gerr := c.Classify(text)
			want, werr := classify(text)
			if (gerr == nil) != (werr == nil) || !sameClassification(got, want) {
				t.Errorf("Classify(%q) differs from the full classification:\n got %+v\nwant %+v", text, got, want)
			}
		}
		if norm, _, kinds, ok := normalizeLiteralKinds(sql); ok {
			key := norm + "\x00" + string(kinds)
			sh := &c.shapes[hashString(c.seed, key)%cacheShards]
			sh.mu.RLock()
			if sh.m[key].tpl != nil {
				used++
			}
			sh.mu.RUnlock()
		}
	}
	if used == 0 {
		t.Fatal("no statement of the corpus used a shape template")
	}
	t.Logf("%d corpus statements classified through templates", used)
}

func TestShapeTemplateRoutes(t *testing.T) {
	c := NewClassifier(64)
	// The same text with a string where an integer was is another shape.
	a, _ := c.Classify("SELECT * FROM users WHERE id = 5")
	b, _ := c.Classify("SELECT * FROM users WHERE id = '6'")
	if want, _ := classify("SELECT * FROM users WHERE id = '6'"); !sameClassification(b, want) || a.Keys[0].Alternatives[0][0].Value.Text != "5" {
		t.Fatalf("string after integer: %+v", b)
	}
	first, _ := c.Classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
	st, _ := c.Classify("SELECT abalance FROM pgbench_accounts WHERE aid = 99")
	if st == first || st.SQL != "SELECT abalance FROM pgbench_accounts WHERE aid = 99" {
		t.Fatalf("second text: %+v", st)
	}
	st, _ = c.Classify("SELECT * FROM users WHERE id = 1234")
	st, _ = c.Classify("SELECT * FROM users WHERE id = 5678")
	if len(st.Keys) != 1 || st.Keys[0].Alternatives[0][0].Value != (KeyValue{Text: "5678"}) {
		t.Fatalf("keys of the instantiated statement: %+v", st.Keys)
	}
}

func BenchmarkClassifyShape(b *testing.B) {
	c := NewClassifier(DefaultCacheSize)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := c.Classify("SELECT abalance FROM pgbench_accounts WHERE aid = " + strconv.Itoa(i) + ";"); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzShape checks, for any text and a variant of it with other literal
// values, that the variant classified through the shape template equals
// its full classification.
func FuzzShape(f *testing.F) {
	for _, sql := range []string{
		"SELECT * FROM users WHERE id = 1",
		"INSERT INTO users (id, name) VALUES (1, 'a')",
		"SELECT * FROM users WHERE id IN (1, 2) AND name = 'x' ORDER BY 1 LIMIT 2",
		"UPDATE orders SET id = 3 WHERE user_id = 4",
		"SET statement_timeout = 5",
	} {
		f.Add(sql, uint8(3))
	}
	f.Fuzz(func(t *testing.T, sql string, seed uint8) {
		norm, lits, kinds, ok := normalizeLiteralKinds(sql)
		if !ok {
			return
		}
		variant := norm
		for i := len(lits); i >= 1; i-- {
			v := strconv.Itoa(int(seed) + i)
			if kinds[i-1] == 's' {
				v = "'v" + v + "'"
			}
			variant = strings.ReplaceAll(variant, "$"+strconv.Itoa(i), v)
		}
		c := NewClassifier(64)
		c.Classify(sql)
		got, gerr := c.Classify(variant)
		want, werr := classify(variant)
		if (gerr == nil) != (werr == nil) || !sameClassification(got, want) {
			t.Fatalf("shape of %q: Classify(%q) = %+v, full classification %+v", sql, variant, got, want)
		}
	})
}

// sameClassification compares two classifications, leaving out what a
// statement instantiated from a shape template remembers of its shape.
func sameClassification(a, b *Statement) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := *a, *b
	x.shape, x.lits, y.shape, y.lits = nil, nil, nil, nil
	return reflect.DeepEqual(&x, &y)
}

// TestShapeNegativeLiteral checks that texts differing in the sign of an
// integer (pgbench's "abalance + -1234") share one template.
func TestShapeNegativeLiteral(t *testing.T) {
	c := NewClassifier(64)
	for i, sql := range []string{
		"UPDATE pgbench_accounts SET abalance = abalance + -17 WHERE aid = 5;",
		"UPDATE pgbench_accounts SET abalance = abalance + 4 WHERE aid = 6;",
		"UPDATE pgbench_accounts SET abalance = abalance + -2000 WHERE aid = 7;",
	} {
		st, err := c.Classify(sql)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := classify(sql)
		if !sameClassification(st, want) {
			t.Fatalf("%q: %+v, want %+v", sql, st, want)
		}
		if i > 0 && st.shape == nil {
			t.Fatalf("%q was not classified through the template", sql)
		}
	}
}
