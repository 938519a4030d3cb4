package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

var tpsRE = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// BenchmarkProxyPgbench compares pgbench -S (16 clients, 5 s) through the
// proxy and directly against shard 0's primary, for each query mode,
// interleaved in one run. It reports tps as metrics; it asserts nothing
// about speed.
//
//	go test ./integration/ -run XXX -bench ProxyPgbench -benchtime 1x -v
func BenchmarkProxyPgbench(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	clusters := startProxyClusters(b, ctx)
	env := startProxyEnv(b, ctx, clusters, nil)
	pgbench := "/usr/lib/postgresql/15/bin/pgbench"
	run := func(dsnEnv []string, args ...string) float64 {
		cmd := exec.CommandContext(ctx, pgbench, args...)
		cmd.Env = dsnEnv
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("pgbench %v: %v\n%s", args, err, out)
		}
		m := tpsRE.FindSubmatch(out)
		if m == nil {
			b.Fatalf("no tps in:\n%s", out)
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return v
	}
	proxyEnv := clientEnv(env)
	p := clusters[0].Primary()
	directEnv := append(os.Environ(), "PGHOST="+p.Host, fmt.Sprintf("PGPORT=%d", p.Port), "PGUSER=app", "PGPASSWORD=app", "PGDATABASE=app", "PGSSLMODE=disable")
	cmd := exec.CommandContext(ctx, pgbench, "-i", "-s", "10", "-q")
	cmd.Env = proxyEnv
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, mode := range []string{"simple", "extended", "prepared"} {
			var direct, proxied float64
			for round := 0; round < 2; round++ {
				args := []string{"-n", "-S", "-c", "16", "-j", "4", "-T", "5", "-M", mode}
				direct += run(directEnv, args...)
				proxied += run(proxyEnv, args...)
			}
			b.ReportMetric(direct/2, "tps-direct-"+mode)
			b.ReportMetric(proxied/2, "tps-proxy-"+mode)
			b.Logf("%s: direct %.0f tps, proxy %.0f tps (%.0f%%)", mode, direct/2, proxied/2, 100*proxied/direct)
		}
	}
}

// BenchmarkProxyIdleConns opens 5,000 client connections through the
// in-process proxy (SCRAM login and one SELECT 1 each, 64 being opened at a
// time), holds them idle, and reports what they cost this process per
// connection: heap in use, goroutine stacks and VmRSS after a GC that
// returns freed memory to the OS (live memory, not garbage), and
// goroutines. Once a connection is established the client keeps only its
// net.Conn (pgconn.Hijack), so the figures are the proxy's per-client
// memory plus one client socket's few hundred bytes. It asserts nothing
// about the size.
//
//	go test ./integration/ -run XXX -bench ProxyIdleConns -benchtime 1x -v
func BenchmarkProxyIdleConns(b *testing.B) {
	const (
		conns   = 5000
		opening = 64
	)
	// Both ends of every connection are in this process.
	raiseNoFile(b, 2*conns+1024)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	clusters := startProxyClusters(b, ctx)
	env := startProxyEnv(b, ctx, clusters, nil)
	dsn := env.dsn("")

	// Warm up: backend pools filled, code paths run once.
	closeRaw(openIdleRaw(b, ctx, dsn, opening, opening))
	settle()
	var heap, stack, rss, gor float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		before := snapshot()
		held := openIdleRaw(b, ctx, dsn, conns, opening)
		after := snapshot()
		closeRaw(held)
		settle()
		heap += float64(after.heap-before.heap) / conns
		stack += float64(after.stack-before.stack) / conns
		rss += float64(after.rssKB-before.rssKB) / conns
		gor += float64(after.goroutines-before.goroutines) / conns
		b.Logf("%d idle connections: heap in use %.1f → %.1f MB, stacks %.1f → %.1f MB, VmRSS %.1f → %.1f MB, goroutines %d → %d",
			conns, mb(before.heap), mb(after.heap), mb(before.stack), mb(after.stack),
			float64(before.rssKB)/1024, float64(after.rssKB)/1024, before.goroutines, after.goroutines)
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(heap/n, "heap-B/conn")
	b.ReportMetric(stack/n, "stack-B/conn")
	b.ReportMetric(rss/n, "rss-KB/conn")
	b.ReportMetric(gor/n, "goroutines/conn")
}

func mb(bytes int64) float64 { return float64(bytes) / (1 << 20) }

// memSnapshot is this process's memory after a GC that returned freed
// memory to the OS.
type memSnapshot struct {
	heap, stack, rssKB int64
	goroutines         int
}

func snapshot() memSnapshot {
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSnapshot{heap: int64(ms.HeapInuse), stack: int64(ms.StackInuse), rssKB: selfRSSKB(), goroutines: runtime.NumGoroutine()}
}

// settle gives the proxy a moment to end the sessions of clients that
// just disconnected.
func settle() { time.Sleep(500 * time.Millisecond) }

// selfRSSKB is VmRSS of this process, kB (0 when unreadable).
func selfRSSKB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return kb
		}
	}
	return 0
}

// raiseNoFile makes this process's open-files limit at least need (as
// root the hard limit too), failing b when it cannot.
func raiseNoFile(b *testing.B, need uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	lim.Max = max(lim.Max, need)
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatalf("open-files limit: need %d (setrlimit: %v); raise it with ulimit -n or run as root", need, err)
	}
}

// openIdleRaw opens n connections to dsn, workers at a time: SCRAM login,
// SELECT 1, then pgconn.Hijack to keep only the socket.
func openIdleRaw(b *testing.B, ctx context.Context, dsn string, n, workers int) []net.Conn {
	out := make([]net.Conn, n)
	var next atomic.Int64
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				c, err := openOne(ctx, dsn)
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				out[i] = c
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		closeRaw(out)
		b.Fatal(err)
	}
	return out
}

func openOne(ctx context.Context, dsn string) (net.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := pgconn.Connect(cctx, dsn)
	if err != nil {
		return nil, err
	}
	if _, err := c.Exec(cctx, "SELECT 1").ReadAll(); err != nil {
		c.Close(cctx)
		return nil, err
	}
	hc, err := c.Hijack()
	if err != nil {
		c.Close(cctx)
		return nil, err
	}
	return hc.Conn, nil
}

// closeRaw sends Terminate on every non-nil conn and closes it.
func closeRaw(conns []net.Conn) {
	terminate := []byte{'X', 0, 0, 0, 4}
	for _, c := range conns {
		if c != nil {
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			c.Write(terminate)
			c.Close()
		}
	}
}
