package gctune

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mb = 1 << 20
	for _, c := range []struct {
		live, min uint64
		want      int
	}{
		{0, 32 * mb, maxPercent},
		{1 * mb, 32 * mb, 2000},  // 3100 capped
		{4 * mb, 32 * mb, 700},   // goal 4 * 8 = 32
		{10 * mb, 32 * mb, 220},  // goal 32
		{16 * mb, 32 * mb, 100},  // the default reaches 32
		{100 * mb, 32 * mb, 100}, // large heaps: the default
	} {
		got := Percent(c.live, c.min)
		if got != c.want {
			t.Errorf("Percent(%d MB, %d MB) = %d, want %d", c.live/mb, c.min/mb, got, c.want)
		}
		if got > 100 && c.live > 0 {
			if goal := c.live + c.live*uint64(got)/100; goal < c.min*99/100 && got < maxPercent {
				t.Errorf("live %d MB: goal %d MB below the floor", c.live/mb, goal/mb)
			}
		}
	}
}

// gogc reads GOGC as the runtime has it.
func gogc() int64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64())
}

// runFor runs Run (every millisecond) with a floor far above this test's
// heap until cond holds or d passes, then stops it.
func runFor(t *testing.T, d time.Duration, cond func() bool) bool {
	t.Helper()
	runtime.GC() // a live heap measurement to start from
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, 1<<30, time.Millisecond)
	}()
	defer func() {
		cancel()
		<-done
	}()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cond() {
			return true
		}
	}
	return false
}

// TestRun: with a small live heap Run raises GOGC, and restores the
// setting it found when its context ends.
func TestRun(t *testing.T) {
	t.Setenv("GOGC", "")
	os.Unsetenv("GOGC") // t.Setenv restores it after the test
	old := debug.SetGCPercent(150)
	defer debug.SetGCPercent(old)
	if !runFor(t, 5*time.Second, func() bool { return gogc() == maxPercent }) {
		t.Fatalf("GOGC stayed %d", gogc())
	}
	if p := gogc(); p != 150 {
		t.Fatalf("GOGC after Run: %d, want the 150 it found", p)
	}
}

// TestRunKeepsEnv: with GOGC in the environment Run changes nothing.
func TestRunKeepsEnv(t *testing.T) {
	t.Setenv("GOGC", "150")
	old := debug.SetGCPercent(150)
	defer debug.SetGCPercent(old)
	if runFor(t, 200*time.Millisecond, func() bool { return gogc() != 150 }) {
		t.Fatalf("GOGC changed to %d", gogc())
	}
}
