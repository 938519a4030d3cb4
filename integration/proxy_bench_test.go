package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"
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
