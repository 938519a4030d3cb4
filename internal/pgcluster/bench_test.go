package pgcluster

import (
	"context"
	"os"
	"testing"
	"time"
)

// BenchmarkStartFresh1x2 measures Start of a new 1-primary-2-standby cluster
// in a temp dir until every standby streams (Stop is not timed).
func BenchmarkStartFresh1x2(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for range b.N {
		c, err := Start(ctx, Options{Name: "benchfresh", Standbys: 2})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.WaitStreaming(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := c.Stop(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkStartExisting1x2 measures Start of an existing 1+2 cluster from
// its directory until every standby streams (Stop is not timed).
func BenchmarkStartExisting1x2(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "pgcluster-bench-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	opts := Options{Dir: dir, Name: "benchreuse", Standbys: 2}
	c, err := Start(ctx, opts)
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Stop(ctx); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		c, err := Start(ctx, opts)
		if err != nil {
			b.Fatal(err)
		}
		if !c.Reused() {
			b.Fatal("not reused")
		}
		if err := c.WaitStreaming(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := c.Stop(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
