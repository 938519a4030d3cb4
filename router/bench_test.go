package router

import (
	"context"
	"strconv"
	"testing"
)

const benchSQL = "SELECT id, name, email FROM users WHERE id = $1"

// BenchmarkClassifyCold parses every time (distinct texts, no cache).
func BenchmarkClassifyCold(b *testing.B) {
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := classify(benchSQL + " AND " + strconv.Itoa(i) + " = " + strconv.Itoa(i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClassifyCached is a repeated point SELECT served by the cache.
func BenchmarkClassifyCached(b *testing.B) {
	c := NewClassifier(1024)
	c.Classify(benchSQL)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Classify(benchSQL); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClassifyCachedParallel measures cache contention.
func BenchmarkClassifyCachedParallel(b *testing.B) {
	c := NewClassifier(1024)
	c.Classify(benchSQL)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Classify(benchSQL)
		}
	})
}

// BenchmarkRoute routes a classified point SELECT with a text parameter.
func BenchmarkRoute(b *testing.B) {
	r := newTestRouter(b)
	s := r.NewSession()
	st, _ := Classify(benchSQL)
	params := []Param{{Value: []byte("42")}}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Route(ctx, s, st, params); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRouteScatter routes a multi-shard ORDER BY ... LIMIT.
func BenchmarkRouteScatter(b *testing.B) {
	r := newTestRouter(b)
	s := r.NewSession()
	st, _ := Classify("SELECT id, name FROM users ORDER BY name LIMIT 10 OFFSET 5")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Route(ctx, s, st, nil); err != nil {
			b.Fatal(err)
		}
	}
}
