package router

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/dbproxy/dbproxy/shard"
)

var update = flag.Bool("update", false, "rewrite router/testdata/*.golden from the current output")

// testTopology: 2 shards; users(id int), orders(user_id int),
// events(tenant text, id uuid) and app.accounts(id int) sharded; every
// other table unsharded on s0.
func testTopology(t testing.TB) *shard.Topology {
	t.Helper()
	topo, err := shard.NewTopology(shard.TopologySpec{
		Version: 7,
		Shards:  []shard.ShardSpec{{Name: "s0"}, {Name: "s1"}},
		Tables: []shard.TableSpec{
			{Name: "users", Columns: []string{"id"}, Types: []shard.KeyType{shard.KeyInt}},
			{Name: "orders", Columns: []string{"user_id"}, Types: []shard.KeyType{shard.KeyInt}},
			{Name: "events", Columns: []string{"tenant", "id"}, Types: []shard.KeyType{shard.KeyText, shard.KeyUUID}},
			{Name: "app.accounts", Columns: []string{"id"}, Types: []shard.KeyType{shard.KeyInt}},
			{Name: "Tenants", Columns: []string{"name"}, Types: []shard.KeyType{shard.KeyText}},
		},
		DefaultShard: "s0",
	})
	if err != nil {
		t.Fatal(err)
	}
	return topo
}

// testCatalog is a FunctionCatalog over a fixed map.
type testCatalog map[string]Volatility

func (c testCatalog) Volatility(_ context.Context, schema, name string) (Volatility, bool, error) {
	key := name
	if schema != "" {
		key = schema + "." + name
	}
	if key == "broken" {
		return 0, false, errors.New("catalog unavailable")
	}
	v, ok := c[key]
	return v, ok, nil
}

func newTestRouter(t testing.TB) *Router {
	t.Helper()
	r, err := New(Config{
		Topology:     NewStaticTopology(testTopology(t)),
		Functions:    testCatalog{"my_immutable": VolatilityImmutable, "my_stable": VolatilityStable, "my_volatile": VolatilityVolatile, "util.f": VolatilityImmutable},
		MaxStaleness: 500e6,
		Classifier:   NewClassifier(1024),
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type goldenCase struct {
	params []Param
	sql    string
	want   string
}

// readGolden parses blocks of
//
//	[params: a|b|NULL]
//	sql:
//	<sql lines>
//	----
//	<expected lines>
//	====
func readGolden(t *testing.T, path string) []goldenCase {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cases []goldenCase
	for _, block := range strings.Split(string(data), "\n====\n") {
		block = strings.TrimLeft(block, "\n")
		if strings.TrimSpace(block) == "" {
			continue
		}
		var c goldenCase
		head, want, _ := strings.Cut(block, "\n----\n")
		c.want = strings.TrimRight(want, "\n")
		if p, rest, ok := strings.Cut(head, "\n"); ok && strings.HasPrefix(p, "params: ") {
			for _, v := range strings.Split(strings.TrimPrefix(p, "params: "), "|") {
				if v == "NULL" {
					c.params = append(c.params, Param{})
				} else {
					c.params = append(c.params, Param{Value: []byte(v)})
				}
			}
			head = rest
		}
		if !strings.HasPrefix(head, "sql:\n") {
			t.Fatalf("%s: block does not start with sql: %q", path, head)
		}
		c.sql = strings.TrimSuffix(strings.TrimPrefix(head, "sql:\n"), "\n----")
		cases = append(cases, c)
	}
	return cases
}

func writeGolden(path string, cases []goldenCase) error {
	var b strings.Builder
	for _, c := range cases {
		if len(c.params) > 0 {
			var ps []string
			for _, p := range c.params {
				if p.Value == nil {
					ps = append(ps, "NULL")
				} else {
					ps = append(ps, string(p.Value))
				}
			}
			b.WriteString("params: " + strings.Join(ps, "|") + "\n")
		}
		b.WriteString("sql:\n" + c.sql + "\n----\n" + c.want + "\n====\n\n")
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// render describes a classification and its route as stable text.
func render(r *Router, sql string, params []Param) string {
	var b strings.Builder
	st, err := classify(sql)
	if err != nil {
		fmt.Fprintf(&b, "classify error: %v\n", err)
	}
	fmt.Fprintf(&b, "kind: %s", st.Kind)
	if st.Command != "" {
		fmt.Fprintf(&b, " (%s)", st.Command)
	}
	if st.NumStatements != 1 {
		fmt.Fprintf(&b, " statements=%d", st.NumStatements)
	}
	fmt.Fprintf(&b, "\nprimary: %v", st.MustPrimary)
	if st.MustPrimary {
		fmt.Fprintf(&b, " (%s)", st.PrimaryReason)
	}
	fmt.Fprintf(&b, "\ncacheable: %v\n", st.Cacheable)
	if st.ParseError != nil {
		fmt.Fprintf(&b, "parse error: %v\n", st.ParseError)
	}
	if len(st.Tables) > 0 {
		var ts []string
		for _, t := range st.Tables {
			s := t.QualifiedName()
			if t.Alias != "" {
				s += " AS " + t.Alias
			}
			ts = append(ts, fmt.Sprintf("%s [%s@%d]", s, t.Access, t.Scope))
		}
		fmt.Fprintf(&b, "tables: %s\n", strings.Join(ts, ", "))
	}
	for _, k := range st.Keys {
		var alts []string
		for _, alt := range k.Alternatives {
			var cv []string
			for _, c := range alt {
				cv = append(cv, c.Column+"="+c.Value.String())
			}
			if len(cv) == 0 {
				cv = []string{"*"}
			}
			alts = append(alts, strings.Join(cv, " "))
		}
		fmt.Fprintf(&b, "keys %s: %s\n", st.Tables[k.Ref].QualifiedName(), strings.Join(alts, " | "))
	}
	if st.Tx != nil {
		fmt.Fprintf(&b, "tx: %s access=%s", st.Tx.Kind, st.Tx.Access)
		if st.Tx.Isolation != "" {
			fmt.Fprintf(&b, " isolation=%q", st.Tx.Isolation)
		}
		if st.Tx.Name != "" {
			fmt.Fprintf(&b, " name=%q", st.Tx.Name)
		}
		if st.Tx.Chain {
			b.WriteString(" chain")
		}
		if st.Tx.Deferrable {
			b.WriteString(" deferrable")
		}
		b.WriteString("\n")
	}
	for _, si := range st.Sets {
		fmt.Fprintf(&b, "set: %s name=%q value=%q local=%v sql=%q\n", si.Op, si.Name, si.Value, si.Local, si.SQL)
	}
	if len(st.Functions) > 0 {
		var fs []string
		for _, f := range st.Functions {
			fs = append(fs, f.String())
		}
		fmt.Fprintf(&b, "functions: %s\n", strings.Join(fs, ", "))
	}
	if len(st.UpdatesKeys) > 0 {
		fmt.Fprintf(&b, "assigns: %s\n", strings.Join(st.UpdatesKeys, ", "))
	}
	if st.PrepareName != "" {
		fmt.Fprintf(&b, "prepare: %s kind=%s primary=%v\n", st.PrepareName, st.Prepared.Kind, st.Prepared.MustPrimary)
	}
	if st.ExecuteName != "" {
		fmt.Fprintf(&b, "execute: %s args=%v\n", st.ExecuteName, st.ExecuteArgs)
	}
	if !st.Hints.IsZero() {
		fmt.Fprintf(&b, "hints: %+v\n", st.Hints)
	}
	if st.HintError != nil {
		fmt.Fprintf(&b, "hint error: %v\n", st.HintError)
	}
	b.WriteString(renderRoute(r, r.NewSession(), st, params))
	return strings.TrimRight(b.String(), "\n")
}

func renderRoute(r *Router, s *Session, st *Statement, params []Param) string {
	d, err := r.Route(context.Background(), s, st, params)
	if err != nil {
		code := ""
		var sq interface{ SQLState() string }
		if errors.As(err, &sq) {
			code = sq.SQLState()
		}
		return fmt.Sprintf("route: ERROR %s %v\n", code, err)
	}
	var b strings.Builder
	if d.Action == ActionLocal {
		fmt.Fprintf(&b, "route: local tag=%s\n", d.Tag)
		return b.String()
	}
	var sh []string
	for _, t := range d.Shards {
		s := t.Name
		if t.MinLSN != 0 {
			s += ">=" + t.MinLSN.String()
		}
		sh = append(sh, s)
	}
	fmt.Fprintf(&b, "route: shards=[%s] target=%s", strings.Join(sh, " "), d.Target)
	if d.Target == TargetReplica {
		fmt.Fprintf(&b, " max_staleness=%s", d.MaxStaleness)
	}
	fmt.Fprintf(&b, " cacheable=%v", d.Cacheable)
	if d.Reason != "" {
		fmt.Fprintf(&b, " reason=%q", d.Reason)
	}
	b.WriteString("\n")
	if d.Merge != nil {
		m := d.Merge
		fmt.Fprintf(&b, "merge: sort=%v aggs=%v limit=%d offset=%d hidden=%d\n", m.Sort, m.Aggregates, m.Limit, m.Offset, m.HiddenColumns)
		if m.SQL != "" {
			fmt.Fprintf(&b, "shard sql: %s\n", m.SQL)
		}
	}
	return b.String()
}

func TestGolden(t *testing.T) {
	r := newTestRouter(t)
	path := "testdata/classify.golden"
	cases := readGolden(t, path)
	if len(cases) < 200 && !*update {
		t.Errorf("only %d golden cases; want at least 200", len(cases))
	}
	for i := range cases {
		got := render(r, cases[i].sql, cases[i].params)
		if *update {
			cases[i].want = got
			continue
		}
		if got != cases[i].want {
			t.Errorf("case %d:\n%s\n--- got:\n%s\n--- want:\n%s", i, cases[i].sql, got, cases[i].want)
		}
	}
	if *update {
		if err := writeGolden(path, cases); err != nil {
			t.Fatal(err)
		}
	}
}
