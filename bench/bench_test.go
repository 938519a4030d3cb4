package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestQuickEndToEnd runs the quick benchmark for real: two clusters,
// pgbench, dbproxy as a separate process, PgBouncer and both Pgpool-II
// instances (installed with apt-get when missing; failing to install or
// start any of them fails the test). It checks the outputs: report.md, both
// charts and results.jsonl with a row for every (workload, target),
// including the not-supported ones, p99 added over direct, the RSS figures
// of 200 idle connections, and that nothing it started is left running.
func TestQuickEndToEnd(t *testing.T) {
	cfg := QuickConfig()
	cfg.Out = t.TempDir()
	cfg.Progress = testWriter{t}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	began := time.Now()
	sum, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("quick run took %s", time.Since(began).Round(time.Second))

	for _, name := range []string{ReportFile, ResultsFile, ChartRatio, ChartLat} {
		st, err := os.Stat(filepath.Join(cfg.Out, name))
		if err != nil {
			t.Fatalf("output %s: %v", name, err)
		}
		if st.Size() == 0 {
			t.Fatalf("output %s is empty", name)
		}
	}
	png, _ := os.ReadFile(filepath.Join(cfg.Out, ChartRatio))
	if !strings.HasPrefix(string(png), "\x89PNG") {
		t.Fatalf("%s is not a PNG", ChartRatio)
	}

	// results.jsonl: one line per run, a row for every pair.
	f, err := os.Open(filepath.Join(cfg.Out, ResultsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[[2]string]Result{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("bad JSONL line %q: %v", sc.Text(), err)
		}
		seen[[2]string{r.Workload, r.Target}] = r
	}
	if len(sum.Results) != len(seen) {
		t.Errorf("Summary has %d results, results.jsonl %d distinct pairs (one round)", len(sum.Results), len(seen))
	}
	report, _ := os.ReadFile(filepath.Join(cfg.Out, ReportFile))
	for _, w := range cfg.Workloads {
		for _, tg := range Targets {
			r, ok := seen[[2]string{w.Name(), tg}]
			if !ok {
				t.Errorf("no row for %s → %s", w.Name(), tg)
				continue
			}
			if r.Status != StatusOK && r.Reason == "" {
				t.Errorf("%s → %s: status %s without a reason", w.Name(), tg, r.Status)
			}
			if !strings.Contains(string(report), "| "+w.Name()+" | "+tg+" |") {
				t.Errorf("report.md has no row for %s → %s", w.Name(), tg)
			}
		}
	}

	// What must work: direct on every Go workload and select-only, the
	// poolers on select-only simple (with proxy CPU and RSS measured); the
	// pairs that cannot run are rows saying so. dbproxy's own results are
	// what the harness measures, not what this test asserts: a failing
	// dbproxy run is a row with its reason (checked above).
	mustOK := [][2]string{
		{"select-only/simple/c8", TargetDirect},
		{"select-only/simple/c8", TargetPgBouncer}, {"select-only/simple/c8", TargetPgpool},
		{"select-only/simple/c8", TargetPgpoolCache},
		{"select-go/c8", TargetDirect}, {"read-after-write/c8", TargetDirect}, {"shard-writes/c8", TargetDirect},
		{"conn-storm/c8", TargetDirect},
	}
	for _, k := range mustOK {
		r := seen[k]
		if r.Status != StatusOK || r.TPS <= 0 || r.LatP99Ms <= 0 {
			t.Errorf("%s → %s: status %s, %v tps, p99 %v ms (%s); want ok with figures", k[0], k[1], r.Status, r.TPS, r.LatP99Ms, r.Reason)
		}
		if k[1] != TargetDirect && (r.RatioDirect == nil || r.ProxyCPUus == nil || r.ProxyPeakRSSKB == 0) {
			t.Errorf("%s → %s: missing ratio, proxy CPU or RSS: %+v", k[0], k[1], r)
		}
	}
	if r := seen[[2]string{"read-after-write/c8", TargetDirect}]; r.Reads == 0 || r.StaleReads != 0 {
		t.Errorf("read-after-write direct: %d reads, %d stale; want reads and no stale ones", r.Reads, r.StaleReads)
	}
	for _, tg := range []string{TargetPgBouncer, TargetPgpool, TargetPgpoolCache} {
		if r := seen[[2]string{"shard-writes/c8", tg}]; r.Status != StatusUnsupported {
			t.Errorf("shard-writes → %s: status %s, want %s", tg, r.Status, StatusUnsupported)
		}
	}
	if r := seen[[2]string{"select-go/c8", TargetDbproxy}]; r.Status == StatusOK && (r.ProxyCPUus == nil || r.ProxyPeakRSSKB == 0) {
		t.Errorf("select-go → dbproxy: proxy CPU or RSS of the dbproxy process not measured: %+v", r)
	}
	for _, k := range mustOK {
		if r := seen[k]; k[1] != TargetDirect && r.Status == StatusOK && r.P99AddedMs == nil {
			t.Errorf("%s → %s: no p99 added over direct: %+v", k[0], k[1], r)
		}
	}
	if !strings.Contains(string(report), "| p99 added ms |") {
		t.Errorf("report.md has no p99 added column")
	}

	// idle-conns: PgBouncer (and dbproxy, when its run is ok) held every
	// connection with RSS figures; direct, Pgpool-II (fewer children than
	// connections) and the driver are rows saying why not.
	idle := Workload{Kind: KindIdleConns, Clients: 64}.Name()
	for _, tg := range []string{TargetPgBouncer, TargetDbproxy} {
		r := seen[[2]string{idle, tg}]
		if tg == TargetDbproxy && r.Status != StatusOK {
			continue
		}
		if r.Status != StatusOK || r.IdleWanted != cfg.IdleConnections || r.IdleHeld != int64(cfg.IdleConnections) ||
			r.RSSBeforeKB <= 0 || r.RSSHeldKB <= 0 || r.RSSPerConnKB == nil || r.ProxyPeakRSSKB <= 0 {
			t.Errorf("%s → %s: want ok, %d connections held and RSS figures: %+v", idle, tg, cfg.IdleConnections, r)
		}
	}
	for _, tg := range []string{TargetDirect, TargetPgpool, TargetPgpoolCache, TargetDriver} {
		if r := seen[[2]string{idle, tg}]; r.Status != StatusUnsupported || r.Reason == "" {
			t.Errorf("%s → %s: status %s (%s), want %s with a reason", idle, tg, r.Status, r.Reason, StatusUnsupported)
		}
	}
	for _, want := range []string{"## Idle connections: memory of the proxy", "RSS ≤ 100 MB holding 5000 idle client connections",
		"| " + idle + " | pgbouncer | ok | 200 of 200 |", "| " + idle + " | direct | not applicable |"} {
		if !strings.Contains(string(report), want) {
			t.Errorf("report.md has no %q", want)
		}
	}

	if r := seen[[2]string{"select-only/simple/c8", TargetDriver}]; r.Status != StatusUnsupported {
		t.Errorf("select-only → driver: status %s, want %s (pgbench cannot load the driver)", r.Status, StatusUnsupported)
	}

	// Everything started is stopped: the proxies and poolers (by pid, so a
	// benchmark running beside this test does not matter) and the clusters'
	// servers (pgcluster stops them; checked by its own tests).
	if len(sum.PIDs) != 4 {
		t.Errorf("started processes %v, want dbproxy, pgbouncer, pgpool, pgpool_cache", sum.PIDs)
	}
	for name, pid := range sum.PIDs {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
			if f, ok := statFields(pid); ok && f[0] != "Z" {
				t.Errorf("%s (pid %d) still running after Run", name, pid)
			}
		}
	}
}

// TestUnixClients runs pgbench and a Go workload through every wire
// target with Config.UnixClients: each is reached on its Unix socket, and
// the report says so.
func TestUnixClients(t *testing.T) {
	cfg := QuickConfig()
	cfg.Out = t.TempDir()
	cfg.Progress = testWriter{t}
	cfg.UnixClients = true
	cfg.Duration = 2 * time.Second
	cfg.Targets = []string{TargetDirect, TargetDbproxy, TargetPgBouncer, TargetPgpool}
	cfg.Workloads = []Workload{{Kind: KindSelectOnly, Mode: "simple", Clients: 8}, {Kind: KindPointSelect, Clients: 8}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	sum, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, r := range sum.Results {
		if r.Status != StatusOK || r.TPS <= 0 {
			t.Errorf("%s → %s: status %s, %v tps (%s)", r.Workload, r.Target, r.Status, r.TPS, r.Reason)
		}
	}
	if len(sum.Results) != 8 {
		t.Errorf("%d results, want 8", len(sum.Results))
	}
	for _, tg := range cfg.Targets {
		if h := sum.Hosts[tg]; !filepath.IsAbs(h) {
			t.Errorf("%s reached at %q, want a socket directory", tg, h)
		}
	}
	report, _ := os.ReadFile(filepath.Join(cfg.Out, ReportFile))
	if !strings.Contains(string(report), "connect to every target, direct included, on its Unix socket") {
		t.Errorf("report.md does not say the clients used Unix sockets")
	}
	if !strings.Contains(string(report), "not measured in this run (idle-conns was not among its workloads)") {
		t.Errorf("report.md does not say why the RSS target was not measured")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
