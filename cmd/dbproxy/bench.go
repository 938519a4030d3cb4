package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/dbproxy/dbproxy/bench"
)

// runBench runs the benchmark harness (package bench): dbproxy against
// direct connections, PgBouncer and Pgpool-II in interleaved rounds.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench [--quick] [--workloads LIST] [--targets LIST] --out DIR", `Benchmarks dbproxy against direct connections, PgBouncer and Pgpool-II on
this machine: starts two local PostgreSQL clusters (1 primary + 2 standbys,
and a second shard), PgBouncer, two Pgpool-II instances (the second with its
query cache) and this binary as 'dbproxy serve' in a separate process; runs
every workload through every target in interleaved rounds; writes
report.md, tps_ratio.png, latency_p99.png and results.jsonl into DIR; stops
everything it started, also on Ctrl-C. Installs the Debian packages
pgbouncer and pgpool2 with apt-get when they are missing (root only).
--quick is a smoke run (under 5 minutes): one short round, fewer workloads.
--workloads runs a subset: workload names (select-only/simple/c16), kinds
(tpcb: all of them) or kinds with a mode (select-only/prepared), e.g.
--workloads select-only/simple/c16,tpcb,idle-conns.`, stderr)
	out := fs.String("out", "", "output directory (required)")
	quick := fs.Bool("quick", false, "smoke run: one round of short runs over fewer workloads, every target once")
	rounds := fs.Int("rounds", 0, "interleaved rounds (0 = mode default: 3, quick 1)")
	duration := fs.Duration("duration", 0, "length of each run (0 = mode default: 20s, quick 3s)")
	scale := fs.Int("scale", 0, "pgbench scale factor (0 = mode default: 20, quick 1)")
	targets := fs.String("targets", "", "comma-separated subset of "+strings.Join(bench.Targets, ",")+" (default all)")
	workloads := fs.String("workloads", "", "comma-separated workload names or kinds to run (default all of the mode); kinds: "+kindList())
	idle := fs.Int("idle-conns", 0, "connections idle-conns holds open (0 = mode default: 5000, quick 200)")
	noInstall := fs.Bool("no-install", false, "never apt-get install missing pgbouncer/pgpool2")
	unixClients := fs.Bool("unix-clients", false, "clients connect to every target (direct included) on its Unix socket instead of loopback TCP")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *out == "" {
		fmt.Fprintln(stderr, "--out is required")
		fs.Usage()
		return errUsage
	}
	cfg := bench.DefaultConfig()
	if *quick {
		cfg = bench.QuickConfig()
	}
	cfg.Out = *out
	if *rounds != 0 {
		cfg.Rounds = *rounds
	}
	if *duration != 0 {
		cfg.Duration = *duration
	}
	if *scale != 0 {
		cfg.Scale = *scale
	}
	if *idle != 0 {
		cfg.IdleConnections = *idle
	}
	if *targets != "" {
		cfg.Targets = bench.SplitList(*targets)
	}
	if *workloads != "" {
		if err := cfg.SelectWorkloads(bench.SplitList(*workloads)); err != nil {
			return fmt.Errorf("--workloads: %w", err)
		}
	}
	cfg.Install = !*noInstall
	cfg.UnixClients = *unixClients
	cfg.Progress = stdout
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("locating this binary for 'dbproxy serve': %w", err)
	}
	cfg.DbproxyBin = bin
	if err := cfg.Validate(); err != nil {
		return err
	}
	sum, err := bench.Run(ctx, cfg)
	if sum != nil {
		for _, f := range sum.Files {
			fmt.Fprintf(stdout, "wrote %s\n", f)
		}
		fmt.Fprintf(stdout, "dbproxy bench: done in %s\n", sum.Elapsed.Round(time.Second))
	}
	return err
}

func kindList() string {
	var ks []string
	for _, k := range bench.Kinds {
		ks = append(ks, string(k))
	}
	return strings.Join(ks, ",")
}
