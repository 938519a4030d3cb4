package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/config"
	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func TestUsageAndUnknownCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), nil, &out, &errb); code != 2 {
		t.Fatalf("no args: exit %d, want 2", code)
	}
	for _, c := range []string{"up", "serve", "status", "version"} {
		if !strings.Contains(out.String(), c) {
			t.Errorf("usage does not list %q:\n%s", c, out.String())
		}
	}
	out.Reset()
	if code := run(context.Background(), []string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), `unknown command "frobnicate"`) {
		t.Fatalf("unknown command: exit %d, stderr %q", code, errb.String())
	}
}

func TestEveryCommandHasHelp(t *testing.T) {
	for name := range commands {
		var out, errb bytes.Buffer
		if code := run(context.Background(), []string{name, "--help"}, &out, &errb); code != 0 {
			t.Errorf("%s --help: exit %d", name, code)
		}
		if !strings.Contains(errb.String(), "usage: dbproxy "+name) {
			t.Errorf("%s --help printed %q", name, errb.String())
		}
	}
}

func TestBadFlagsAndConfig(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"up", "--shards", "0"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "--shards must be between 1 and 16") {
		t.Errorf("up --shards 0: exit %d, stderr %q", code, errb.String())
	}
	errb.Reset()
	if code := run(context.Background(), []string{"serve"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--config is required") {
		t.Errorf("serve without --config: exit %d, stderr %q", code, errb.String())
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[server]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	errb.Reset()
	if code := run(context.Background(), []string{"serve", "--config", bad}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "bogus") {
		t.Errorf("serve with an unknown key: exit %d, stderr %q", code, errb.String())
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var listenRE = regexp.MustCompile(`proxy listening on (\S+)`)

// startUp runs `dbproxy up` in dir until the returned stop is called, and
// returns the proxy address it printed.
func startUp(t *testing.T, dir string, extra ...string) (addr string, output, stop func() string) {
	t.Helper()
	return startCommandOut(t, append([]string{"up", "--data-dir", dir, "--shards", "2", "--standbys", "1",
		"--listen", "127.0.0.1:0", "--status-listen", "127.0.0.1:0"}, extra...), func(out string) string {
		if m := listenRE.FindStringSubmatch(out); m != nil && strings.Contains(out, "ready in") {
			return m[1]
		}
		return ""
	})
}

// startCommand runs `dbproxy args...` until the returned stop is called
// (which checks it exits 0 and returns its output). It waits, at most 3
// minutes, until ready finds the address to return in the output so far.
func startCommand(t *testing.T, args []string, ready func(out string) string) (addr string, stop func() string) {
	t.Helper()
	addr, _, stop = startCommandOut(t, args, ready)
	return addr, stop
}

// startCommandOut is startCommand that also returns the command's output
// so far, while it runs.
func startCommandOut(t *testing.T, args []string, ready func(out string) string) (addr string, output func() string, stop func() string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := new(syncBuffer)
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, out, out) }()
	deadline := time.After(3 * time.Minute)
	for {
		if addr = ready(out.String()); addr != "" {
			break
		}
		select {
		case code := <-done:
			cancel()
			t.Fatalf("dbproxy %s exited %d before it was ready:\n%s", args[0], code, out.String())
		case <-deadline:
			cancel()
			<-done
			t.Fatalf("dbproxy %s not ready after 3 minutes:\n%s", args[0], out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return addr, out.String, func() string {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("dbproxy %s exited %d after Ctrl-C:\n%s", args[0], code, out.String())
			}
		case <-time.After(2 * time.Minute):
			t.Errorf("dbproxy %s did not stop within 2 minutes", args[0])
		}
		return out.String()
	}
}

// TestUpServesAndReuses runs the embedded default twice on one directory:
// the first run creates real clusters and serves SQL through the proxy, the
// second reuses the data (the row written by the first run is there).
func TestUpServesAndReuses(t *testing.T) {
	dir, err := os.MkdirTemp("", "dbproxy-up-test-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })

	addr, output, stop := startUp(t, dir)
	cfg, err := config.Load(filepath.Join(dir, "dbproxy.toml"))
	if err != nil {
		t.Fatalf("generated config does not load: %v", err)
	}
	if len(cfg.Shards) != 2 || len(cfg.Shards[0].Nodes) != 2 || !cfg.TLSEnabled() || !cfg.Cache.Enabled {
		t.Errorf("generated config: %d shards, %d nodes in s0, tls %v, cache %v", len(cfg.Shards), len(cfg.Shards[0].Nodes), cfg.TLSEnabled(), cfg.Cache.Enabled)
	}
	// The proxy reaches the local nodes on their Unix sockets.
	for _, sh := range cfg.Shards {
		for _, n := range sh.Nodes {
			if want := filepath.Join(dir, sh.Name, n.Name); n.Host != want {
				t.Errorf("node %s: host %q, want its socket directory %s", n.Name, n.Host, want)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, "postgres://app:app@"+addr+"/app?sslmode=require")
	if err != nil {
		t.Fatalf("connect through the proxy with TLS: %v", err)
	}
	for _, q := range []string{
		"CREATE TABLE IF NOT EXISTS up_reuse (id int PRIMARY KEY, v text)",
		"INSERT INTO up_reuse VALUES (1, 'kept') ON CONFLICT (id) DO UPDATE SET v = excluded.v",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for _, q := range []string{"SELECT inet_server_addr() IS NULL", "SELECT inet_server_addr() IS NULL /* dbproxy: primary */"} {
		var overSocket bool
		if err := conn.QueryRow(ctx, q).Scan(&overSocket); err != nil || !overSocket {
			t.Errorf("%s: %v, %v (want true: the backend connection is on a Unix socket)", q, overSocket, err)
		}
	}
	conn.Close(ctx)

	var status bytes.Buffer
	if code := run(ctx, []string{"status", "--config", filepath.Join(dir, "dbproxy.toml")}, &status, io.Discard); code != 0 {
		t.Fatalf("status: exit %d", code)
	}
	if !strings.Contains(status.String(), "source: proxy") || strings.Count(status.String(), "s0-") != 2 {
		t.Errorf("status output:\n%s", status.String())
	}
	checkMetrics(t, ctx, cfg.Server.StatusListen)
	// SIGHUP reloads the config up wrote (nothing changed) and up keeps
	// serving: a terminal hangup does not leave the servers running.
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(output(), "dbproxy up: config reloaded"); {
		if time.Now().After(deadline) {
			t.Fatalf("no reload 30s after SIGHUP:\n%s", output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if conn, err := pgx.Connect(ctx, "postgres://app:app@"+addr+"/app"); err != nil {
		t.Errorf("connect after SIGHUP: %v", err)
	} else {
		conn.Close(ctx)
	}
	// A standby's server killed while up runs is restarted, still a standby.
	sb := cfg.Shards[0].Nodes[1]
	pidFile := filepath.Join(dir, "s0", sb.Name, "data", "postmaster.pid")
	killPostmaster(t, pidFile)
	for deadline := time.Now().Add(60 * time.Second); !strings.Contains(output(), "dbproxy up: "+sb.Name+" restarted"); {
		if time.Now().After(deadline) {
			t.Fatalf("%s not restarted 60s after it was killed:\n%s", sb.Name, output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	direct, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=app password=app dbname=app sslmode=disable", sb.Host, sb.Port))
	if err != nil {
		t.Fatalf("connect to the restarted %s: %v", sb.Name, err)
	}
	var inRecovery bool
	if err := direct.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || !inRecovery {
		t.Errorf("restarted %s: in recovery %v, %v (want a standby again)", sb.Name, inRecovery, err)
	}
	direct.Close(ctx)
	if out := stop(); !strings.Contains(out, "stopping") {
		t.Errorf("up output lacks the stop message:\n%s", out)
	}

	addr, output, stop = startUp(t, dir, "--no-restart")
	defer stop()
	conn, err = pgx.Connect(ctx, "postgres://app:app@"+addr+"/app")
	if err != nil {
		t.Fatalf("connect after restart: %v", err)
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, "SELECT v FROM up_reuse WHERE id = 1 /* dbproxy: primary */").Scan(&v); err != nil || v != "kept" {
		t.Fatalf("row from the first run: %q, %v", v, err)
	}
	// With --no-restart a killed server stays down.
	killPostmaster(t, pidFile)
	time.Sleep(3 * superviseInterval)
	if out := output(); strings.Contains(out, "restart") {
		t.Errorf("--no-restart, yet:\n%s", out)
	}
	if direct, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=app password=app dbname=app sslmode=disable", sb.Host, sb.Port)); err == nil {
		direct.Close(ctx)
		t.Errorf("%s answers %v after it was killed under --no-restart", sb.Name, 3*superviseInterval)
	}
}

// checkMetrics scrapes the proxy's /metrics on statusAddr (the up's two
// shards of one primary and one standby, cache on, after one client session)
// until every node reports up, and checks the proxy's families and the Go
// runtime's and process's own.
func checkMetrics(t *testing.T, ctx context.Context, statusAddr string) {
	t.Helper()
	var fams map[string]*dto.MetricFamily
	for deadline := time.Now().Add(15 * time.Second); ; {
		fams = scrapeMetrics(t, ctx, statusAddr)
		up := 0
		for _, m := range fams["dbproxy_node_up"].GetMetric() {
			if m.GetGauge().GetValue() == 1 {
				up++
			}
		}
		if up == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dbproxy_node_up: %d of 4 nodes up after 15 s: %v", up, fams["dbproxy_node_up"])
		}
		time.Sleep(200 * time.Millisecond)
	}
	roles := map[string]string{}
	for _, m := range fams["dbproxy_node_up"].GetMetric() {
		l := labels(m)
		roles[l["shard"]+"/"+l["node"]] = l["role"]
	}
	want := map[string]string{"s0/s0-primary": "primary", "s0/s0-standby1": "standby", "s1/s1-primary": "primary", "s1/s1-standby1": "standby"}
	if fmt.Sprint(roles) != fmt.Sprint(want) {
		t.Errorf("dbproxy_node_up series: %v, want %v", roles, want)
	}
	value := func(name string) float64 {
		t.Helper()
		f := fams[name]
		if f == nil || len(f.GetMetric()) == 0 {
			t.Errorf("/metrics lacks %s", name)
			return 0
		}
		m := f.GetMetric()[0]
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue()
		}
		return m.GetUntyped().GetValue()
	}
	if v := value("dbproxy_clients_accepted_total"); v < 1 {
		t.Errorf("dbproxy_clients_accepted_total = %v after a client session", v)
	}
	for _, m := range fams["dbproxy_cache_stream_up"].GetMetric() {
		if m.GetGauge().GetValue() != 1 {
			t.Errorf("dbproxy_cache_stream_up%v = %v", labels(m), m.GetGauge().GetValue())
		}
	}
	if n := len(fams["dbproxy_cache_stream_up"].GetMetric()); n != 2 {
		t.Errorf("dbproxy_cache_stream_up: %d series, want one per shard (2)", n)
	}
	if len(fams["dbproxy_node_pool_connections"].GetMetric()) != 4*3 {
		t.Errorf("dbproxy_node_pool_connections: %d series, want 4 nodes x 3 states", len(fams["dbproxy_node_pool_connections"].GetMetric()))
	}
	// The client session opened at least one pooled connection.
	opened := 0.0
	for _, m := range fams["dbproxy_node_pool_opened_total"].GetMetric() {
		opened += m.GetCounter().GetValue()
	}
	if opened < 1 {
		t.Errorf("dbproxy_node_pool_opened_total sums to %v after a client session", opened)
	}
	if n := len(fams["dbproxy_node_pool_expired_total"].GetMetric()); n != 4*2 {
		t.Errorf("dbproxy_node_pool_expired_total: %d series, want 4 nodes x 2 reasons", n)
	}
	if n := len(fams["dbproxy_node_acquire_timeouts_total"].GetMetric()); n != 4 {
		t.Errorf("dbproxy_node_acquire_timeouts_total: %d series, want 4", n)
	}
	if v := value("go_goroutines"); v < 1 {
		t.Errorf("go_goroutines = %v", v)
	}
	if v := value("process_resident_memory_bytes"); v < 1<<20 {
		t.Errorf("process_resident_memory_bytes = %v", v)
	}
	if v := value("process_open_fds"); v < 4 {
		t.Errorf("process_open_fds = %v", v)
	}
}

func scrapeMetrics(t *testing.T, ctx context.Context, statusAddr string) map[string]*dto.MetricFamily {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+statusAddr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse as the Prometheus text format: %v", err)
	}
	return fams
}

func labels(m *dto.Metric) map[string]string {
	l := map[string]string{}
	for _, lp := range m.GetLabel() {
		l[lp.GetName()] = lp.GetValue()
	}
	return l
}

// TestPrintStatusProxyCounters checks the lines under the node table:
// clients by state, LISTEN channels and reads sent again, each printed
// only when it has something to say.
func TestPrintStatusProxyCounters(t *testing.T) {
	rep := &statusReport{Source: "proxy", Time: time.Unix(0, 0).UTC(), Clients: map[string]int{"idle": 2}, DeepIdle: 1, ListenChannels: 3, ReadRetries: 4, ClientsGoneMidQuery: 5}
	var out bytes.Buffer
	printStatus(&out, rep)
	for _, want := range []string{"clients by state: map[idle:2] (deep idle: 1)", "LISTEN channels: 3", "reads sent again after their node failed: 4", "queries cancelled because their client disconnected: 5"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("missing %q in:\n%s", want, out.String())
		}
	}
	// A node's last probe error is shown with its age.
	at := rep.Time.Add(-95 * time.Second)
	rep.Shards = []shardStatus{{Name: "s0", Nodes: []nodeStatus{{Name: "n1", Role: "standby", ObservedRole: "standby", Healthy: true,
		LastError: "lag probe: connection refused", LastErrorAt: &at}}}}
	out.Reset()
	printStatus(&out, rep)
	if !strings.Contains(out.String(), "1m35s ago: lag probe: connection refused") {
		t.Errorf("last error without its age:\n%s", out.String())
	}
	out.Reset()
	printStatus(&out, &statusReport{Source: "probe"})
	if strings.Contains(out.String(), "clients") || strings.Contains(out.String(), "LISTEN") || strings.Contains(out.String(), "sent again") {
		t.Errorf("counters printed for a report without them:\n%s", out.String())
	}
}

// killPostmaster sends SIGKILL to the postmaster whose pid is the first
// line of pidFile and waits until it is gone.
func killPostmaster(t *testing.T, pidFile string) {
	t.Helper()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		t.Fatalf("%s: %v", pidFile, err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	alive := func() bool {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		return err == nil && !strings.Contains(string(st), ") Z ") // a zombie is gone
	}
	for deadline := time.Now().Add(30 * time.Second); alive(); {
		if time.Now().After(deadline) {
			t.Fatalf("postmaster %d still alive 30s after SIGKILL", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
