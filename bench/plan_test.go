package bench

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func names(ws []Workload) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.Name())
	}
	return out
}

func TestSplitList(t *testing.T) {
	for in, want := range map[string][]string{
		"":                        nil,
		" , ,":                    nil,
		"tpcb":                    {"tpcb"},
		"a, b ,,c":                {"a", "b", "c"},
		"select-only/simple/c16,": {"select-only/simple/c16"},
	} {
		if got := SplitList(in); !slices.Equal(got, want) {
			t.Errorf("SplitList(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSelectWorkloads(t *testing.T) {
	for _, tc := range []struct {
		list []string
		want []string
	}{
		{[]string{"idle-conns"}, []string{"idle-conns/c64"}},
		{[]string{"select-only/simple/c16"}, []string{"select-only/simple/c16"}},
		// A kind selects every workload of it; a kind and mode every
		// client count; the order is the plan's, duplicates collapse.
		{[]string{"idle-conns", "tpcb", "select-only/simple/c16"}, []string{
			"select-only/simple/c16",
			"tpcb/simple/c16", "tpcb/extended/c16", "tpcb/prepared/c16", "tpcb/simple/c64", "tpcb/extended/c64", "tpcb/prepared/c64",
			"idle-conns/c64"}},
		{[]string{"select-only/prepared", "select-only/prepared/c64"}, []string{"select-only/prepared/c16", "select-only/prepared/c64"}},
		{[]string{"conn-storm/c16", "select-go"}, []string{"select-go/c16", "conn-storm/c16"}},
	} {
		cfg := DefaultConfig()
		if err := cfg.SelectWorkloads(tc.list); err != nil {
			t.Errorf("SelectWorkloads(%q): %v", tc.list, err)
			continue
		}
		if got := names(cfg.Workloads); !slices.Equal(got, tc.want) {
			t.Errorf("SelectWorkloads(%q) kept %q, want %q", tc.list, got, tc.want)
		}
		cfg.Out = t.TempDir()
		if err := cfg.Validate(); err != nil {
			t.Errorf("SelectWorkloads(%q): config no longer valid: %v", tc.list, err)
		}
	}

	// Unknown items: an error naming them and listing what is valid; the
	// config is unchanged.
	for _, list := range [][]string{
		{"bogus"},
		{"tpcb", "select-only/simple/c8"}, // c8 is in the quick plan only
		{"select-only/simple/c1"},         // not a prefix match of c16
		{"tpcb/"},
		nil,
	} {
		cfg := DefaultConfig()
		before := names(cfg.Workloads)
		err := cfg.SelectWorkloads(list)
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("SelectWorkloads(%q) = %v, want ErrInvalidConfig", list, err)
			continue
		}
		for _, s := range append(slices.Clone(before), "idle-conns", "tpcb") {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("SelectWorkloads(%q): error does not list %q: %v", list, s, err)
			}
		}
		for _, item := range list {
			if item != "tpcb" && !strings.Contains(err.Error(), `"`+item+`"`) {
				t.Errorf("SelectWorkloads(%q): error does not name %q: %v", list, item, err)
			}
		}
		if got := names(cfg.Workloads); !slices.Equal(got, before) {
			t.Errorf("SelectWorkloads(%q) failed but changed the workloads to %q", list, got)
		}
	}
}

func TestConfigIdleConns(t *testing.T) {
	def, quick := DefaultConfig(), QuickConfig()
	if def.IdleConnections != 5000 || quick.IdleConnections != 200 {
		t.Errorf("IdleConnections: default %d, quick %d; want 5000, 200", def.IdleConnections, quick.IdleConnections)
	}
	for _, c := range []Config{def, quick} {
		if !c.idleConns() {
			t.Errorf("quick=%v: no idle-conns workload", c.Quick)
		}
	}
	c := QuickConfig()
	c.Out = t.TempDir()
	c.IdleConnections = 0
	if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("IdleConnections 0 with idle-conns: %v, want ErrInvalidConfig", err)
	}
	if err := c.SelectWorkloads([]string{"tpcb"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("IdleConnections 0 without idle-conns: %v", err)
	}
}

// TestP99AddedAndIdleReport fills the derived figures of made-up results
// and renders the report: p99 added per round against direct, the idle
// connections table and the targets section.
func TestP99AddedAndIdleReport(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Rounds = 2
	cfg.Targets = []string{TargetDirect, TargetDbproxy, TargetPgBouncer}
	if err := cfg.SelectWorkloads([]string{"select-only/simple/c16", "idle-conns"}); err != nil {
		t.Fatal(err)
	}
	sel := Workload{Kind: KindSelectOnly, Mode: "simple", Clients: 16}
	idle := Workload{Kind: KindIdleConns, Clients: 64}
	run := func(round int, w Workload, target string, p99 float64) Result {
		return Result{Round: round, Workload: w.Name(), Kind: w.Kind, Mode: w.Mode, Clients: w.Clients, Target: target, Status: StatusOK,
			TPS: 1000, LatP99Ms: p99, LatSamples: 100, Start: time.Now()}
	}
	idleRun := func(round int, target string, before, held int64) Result {
		r := Result{Round: round, Workload: idle.Name(), Kind: idle.Kind, Clients: idle.Clients, Target: target, Status: StatusOK,
			IdleWanted: 5000, IdleHeld: 5000, Transactions: 5000, RSSBeforeKB: before, RSSHeldKB: held, Start: time.Now()}
		r.RSSPerConnKB = ptr(float64(held-before) / 5000)
		return r
	}
	results := []Result{
		run(1, sel, TargetDirect, 1.0), run(1, sel, TargetDbproxy, 1.5), run(1, sel, TargetPgBouncer, 0.8),
		run(2, sel, TargetDirect, 2.0), run(2, sel, TargetDbproxy, 2.25), run(2, sel, TargetPgBouncer, 2.5),
		{Round: 1, Workload: idle.Name(), Kind: idle.Kind, Clients: idle.Clients, Target: TargetDirect, Status: StatusUnsupported, Reason: "no proxy process to measure"},
		idleRun(1, TargetDbproxy, 20*1024, 70*1024), idleRun(1, TargetPgBouncer, 2*1024, 12*1024),
		idleRun(2, TargetDbproxy, 20*1024, 130*1024), idleRun(2, TargetPgBouncer, 2*1024, 12*1024),
	}
	fillRatios(results)
	for _, r := range results {
		got := -99.0
		if r.P99AddedMs != nil {
			got = *r.P99AddedMs
		}
		want := -99.0
		switch {
		case r.Kind == KindSelectOnly && r.Target == TargetDbproxy && r.Round == 1:
			want = 0.5
		case r.Kind == KindSelectOnly && r.Target == TargetDbproxy && r.Round == 2:
			want = 0.25
		case r.Kind == KindSelectOnly && r.Target == TargetPgBouncer && r.Round == 1:
			want = -0.2
		case r.Kind == KindSelectOnly && r.Target == TargetPgBouncer && r.Round == 2:
			want = 0.5
		}
		if diff := got - want; diff > 1e-9 || diff < -1e-9 {
			t.Errorf("round %d %s → %s: p99 added %v, want %v (-99 = none)", r.Round, r.Workload, r.Target, got, want)
		}
	}

	e := &env{machine: map[string]string{"nproc": "2"}, versions: map[string]string{}, restarts: map[string]int{}}
	report := renderReport(aggregate(results, cfg), e, cfg, time.Minute)
	for _, want := range []string{
		"| p99 added ms |",
		"| select-only/simple/c16 | dbproxy | ok |",
		"+0.375 (+0.250–+0.500)", // dbproxy: median of 0.5 and 0.25
		"+0.150 (-0.200–+0.500)", // pgbouncer
		"## Idle connections: memory of the proxy",
		"| idle-conns/c64 | direct | not applicable |",
		// dbproxy: RSS before 20 MB, with 5,000 open 70 and 130 MB (median 100).
		"| idle-conns/c64 | dbproxy | ok | 5000 of 5000 | 20.0 | 100.0 (70.0–130.0) | 16.4 (10.2–22.5) |",
		"| idle-conns/c64 | pgbouncer | ok | 5000 of 5000 | 2.0 | 12.0 | 2.0 |",
		"- **idle-conns/c64 → direct** (not applicable): no proxy process to measure",
		"RSS ≤ 100 MB holding 5000 idle client connections: 100.0 (70.0–130.0) MB with 5000 connections open",
		"select-only/simple/c16: +0.375 (+0.250–+0.500) ms, met",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report has no %q:\n%s", want, report)
		}
	}
	if strings.Contains(report, "| idle-conns/c64 | dbproxy | ok | 0") {
		t.Errorf("idle-conns in the throughput tables:\n%s", report)
	}
}
