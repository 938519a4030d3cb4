package gctune

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// MinHeap is the default floor under the heap goal.
const MinHeap = 32 << 20

// maxPercent bounds the GOGC Run sets (a near-empty heap would otherwise
// ask for an unbounded one).
const maxPercent = 2000

// Percent is the GOGC that makes the heap goal of a live heap of live
// bytes at least minHeap: 100 when the default reaches it, more below,
// at most maxPercent.
func Percent(live, minHeap uint64) int {
	if live == 0 {
		return maxPercent
	}
	if 2*live >= minHeap {
		return 100
	}
	p := minHeap*100/live - 100
	return int(min(p, maxPercent))
}

const liveMetric = "/gc/heap/live:bytes"

// Run adjusts GOGC to Percent(live heap, minHeap) every interval until ctx
// ends, then restores the setting it found.
func Run(ctx context.Context, minHeap uint64, interval time.Duration) {
	if _, set := os.LookupEnv("GOGC"); set {
		<-ctx.Done()
		return
	}
	sample := []metrics.Sample{{Name: liveMetric}}
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	cur := 100
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 {
			if p := Percent(sample[0].Value.Uint64(), minHeap); p != cur {
				debug.SetGCPercent(p)
				cur = p
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
