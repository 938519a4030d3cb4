package router

import (
	"context"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// FuzzClassify: classify never panics and is deterministic; Route never
// panics on what Classify returns.
func FuzzClassify(f *testing.F) {
	if data, err := os.ReadFile("testdata/classify.golden"); err == nil {
		for _, c := range strings.Split(string(data), "\n====\n") {
			if _, rest, ok := strings.Cut(c, "sql:\n"); ok {
				sql, _, _ := strings.Cut(rest, "\n----\n")
				f.Add(sql)
			}
		}
	}
	r := newTestRouter(f)
	f.Fuzz(func(t *testing.T, sql string) {
		a, errA := classify(sql)
		b, errB := classify(sql)
		if (errA == nil) != (errB == nil) {
			t.Fatalf("error not deterministic: %v vs %v", errA, errB)
		}
		if a == nil || b == nil {
			t.Fatal("nil statement")
		}
		if render(r, sql, nil) != render(r, sql, nil) {
			t.Fatalf("render not deterministic for %q", sql)
		}
		if a.Kind != b.Kind || a.MustPrimary != b.MustPrimary || a.Cacheable != b.Cacheable ||
			!reflect.DeepEqual(a.Tables, b.Tables) || !reflect.DeepEqual(a.Keys, b.Keys) {
			t.Fatalf("classification not deterministic for %q", sql)
		}
		s := r.NewSession()
		_, _ = r.Route(context.Background(), s, a, []Param{{Value: []byte("1")}, {Value: []byte{0, 0, 0, 1}, Format: 1}, {}})
	})
}

func TestClassifyCache(t *testing.T) {
	c := NewClassifier(32)
	a, _ := c.Classify("SELECT * FROM users WHERE id = 1")
	b, _ := c.Classify("SELECT * FROM users WHERE id = 1")
	if a != b {
		t.Fatal("second Classify did not come from the cache")
	}
	for i := 0; i < 200; i++ {
		c.Classify("SELECT " + strings.Repeat("1,", i) + "1")
	}
	if n := c.Len(); n > 32 {
		t.Fatalf("cache holds %d > 32 entries", n)
	}
	long := "SELECT '" + strings.Repeat("x", MaxCachedSQL) + "'"
	x, _ := c.Classify(long)
	y, _ := c.Classify(long)
	if x == y {
		t.Fatal("over-long SQL was cached")
	}
}

func TestDeparseVersion(t *testing.T) {
	st, _ := classify("SELECT avg(x) FROM users")
	if st.scatter == nil {
		t.Fatal("no scatter plan for a single SELECT")
	}
	if sp := st.scatter.get(); sp.refuse != "" || sp.plan.SQL == "" {
		t.Fatalf("avg rewrite failed: %+v", sp)
	}
}

// TestConcurrentClassifyRoute hammers Classify and Route from many
// goroutines (run with -race) while the topology is swapped.
func TestConcurrentClassifyRoute(t *testing.T) {
	src := NewStaticTopology(testTopology(t))
	r, err := New(Config{Topology: src, Functions: testCatalog{"my_stable": VolatilityStable}, Classifier: NewClassifier(64)})
	if err != nil {
		t.Fatal(err)
	}
	queries := []string{
		"SELECT * FROM users WHERE id = $1", "SELECT count(*) FROM users", "UPDATE users SET name = 'x' WHERE id = 3",
		"SELECT my_stable(1)", "SELECT * FROM orders ORDER BY total LIMIT 5 OFFSET 2", "BEGIN", "COMMIT",
		"SET search_path = a", "CREATE FUNCTION z() RETURNS int AS 'select 1' LANGUAGE sql", "SELECT avg(x) FROM users",
	}
	next := testTopology(t)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			s := r.NewSession()
			for i := 0; i < 300; i++ {
				q := queries[(i+g)%len(queries)]
				if i%7 == 0 {
					q += " -- " + string(rune('a'+i%26))
				}
				st, err := r.cfg.Classifier.Classify(q)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = r.Route(context.Background(), s, st, []Param{{Value: []byte("5")}})
				s.Observe('I')
				if g == 0 && i%50 == 0 {
					src.Store(next)
				}
			}
		}(g)
	}
	wg.Wait()
}
