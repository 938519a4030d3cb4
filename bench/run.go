package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Output file names in Config.Out.
const (
	ReportFile  = "report.md"
	ResultsFile = "results.jsonl"
	ChartRatio  = "tps_ratio.png"
	ChartLat    = "latency_p99.png"
)

// Summary is what Run produced.
type Summary struct {
	Results []Result      // every run and every unsupported pair, ratios filled in
	Files   []string      // paths written in Config.Out
	Elapsed time.Duration // whole run, setup and teardown included
	// PIDs of the proxy and pooler processes Run started (all stopped when
	// Run returns), by target.
	PIDs map[string]int
	// Hosts the clients connected to at the end, by target: 127.0.0.1, or
	// a socket directory with Config.UnixClients.
	Hosts map[string]string
}

// Run starts the clusters and every selected target, runs every workload
// through every target in interleaved rounds (round, then workload, then
// target), writes report.md, the charts and results.jsonl into cfg.Out
// (rewritten after every round, so an interrupted run leaves what it
// measured), and stops everything it started — also when ctx is cancelled
// or a step fails. It blocks until then. It returns an error when setup
// fails (a target cannot be installed or started) or ctx ends; a workload
// that fails on a target is a row of the report, not an error.
func Run(ctx context.Context, cfg Config) (*Summary, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, fmt.Errorf("bench: output dir: %w", err)
	}
	began := time.Now()
	pw := cfg.Progress
	if pw == nil {
		pw = io.Discard
	}
	pw = &lockedWriter{w: pw}
	say := func(format string, args ...any) {
		fmt.Fprintf(pw, "[%s] %s\n", time.Since(began).Round(time.Second), fmt.Sprintf(format, args...))
	}
	e, err := setup(ctx, cfg, say)
	if err != nil {
		return nil, fmt.Errorf("bench: setup: %w", err)
	}
	defer e.close()

	r := &runner{e: e, cfg: cfg, say: say, began: began}
	runErr := r.all(ctx)
	files, werr := r.write()
	sum := &Summary{Results: r.results, Files: files, Elapsed: time.Since(began), PIDs: map[string]int{}, Hosts: map[string]string{}}
	for t, p := range e.procs {
		sum.PIDs[t] = p.pid()
	}
	for t, ep := range e.endpoints {
		sum.Hosts[t] = ep.host
	}
	if runErr != nil {
		return sum, runErr
	}
	return sum, werr
}

// runner executes the plan and collects results.
type runner struct {
	e       *env
	cfg     Config
	say     func(string, ...any)
	began   time.Time
	results []Result

	planned, done int
	runTime       time.Duration // wall time of the runs done so far
}

// unsupported returns why target t cannot run workload w ("" when it can).
func (e *env) unsupported(w Workload, t string) string {
	switch t {
	case TargetDriver:
		if e.driverErr != nil {
			return "not available: " + e.driverErr.Error()
		}
		if w.Kind.pgbench() {
			return "pgbench is a separate wire-protocol client; an in-process database/sql driver cannot be loaded into it (see select-go)"
		}
		if w.Kind == KindConnStorm || w.Kind == KindIdleConns {
			return "the driver is in-process: there are no client connections to open"
		}
	case TargetDirect:
		if w.Kind == KindIdleConns {
			why := "no proxy process to measure: PostgreSQL serves each connection with a backend process of its own"
			if mc, _ := strconv.Atoi(clusterSettings()["max_connections"]); e.cfg.IdleConnections > mc {
				why += fmt.Sprintf(", and max_connections = %d is below the %d connections", mc, e.cfg.IdleConnections)
			}
			return why
		}
	case TargetPgBouncer, TargetPgpool, TargetPgpoolCache:
		if w.Kind == KindShardWrites {
			return "no key-based sharding: it fronts one cluster"
		}
		if w.Kind == KindIdleConns && t != TargetPgBouncer && e.cfg.IdleConnections > e.cfg.PgpoolChildren {
			return fmt.Sprintf("Pgpool-II serves one client per child process and has num_init_children = %d, fewer than %d (the others would wait unserved)",
				e.cfg.PgpoolChildren, e.cfg.IdleConnections)
		}
	}
	return ""
}

func (r *runner) all(ctx context.Context) error {
	targets := r.cfg.orderedTargets()
	for _, w := range r.cfg.Workloads {
		for _, t := range targets {
			if why := r.e.unsupported(w, t); why != "" {
				r.results = append(r.results, Result{Round: 1, Workload: w.Name(), Kind: w.Kind, Mode: w.Mode, Clients: w.Clients,
					Target: t, Status: StatusUnsupported, Reason: why, Start: time.Now()})
			} else {
				r.planned++
			}
		}
	}
	r.planned *= r.cfg.Rounds
	r.say("plan: %d rounds × %d workloads × %d targets = %d runs of %s (%d pairs not supported)",
		r.cfg.Rounds, len(r.cfg.Workloads), len(targets), r.planned, r.cfg.Duration, len(r.results))
	for round := 1; round <= r.cfg.Rounds; round++ {
		for _, w := range r.cfg.Workloads {
			for _, t := range targets {
				if r.e.unsupported(w, t) != "" {
					continue
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				res := r.one(ctx, round, w, t)
				if err := ctx.Err(); err != nil {
					return err
				}
				if err := r.check(ctx, &res); err != nil {
					return err
				}
				r.results = append(r.results, res)
				r.done++
				r.say("%s", r.progressLine(round, res))
			}
		}
		if _, err := r.write(); err != nil {
			return err
		}
	}
	return nil
}

// check runs the sanity check on the target of res after its run (wire
// proxies and poolers only). A target that answers wrongly has its run
// marked failed and is restarted, so the next workload measures a fresh
// process rather than a broken one. It returns an error only when the
// restart fails or ctx ends.
func (r *runner) check(ctx context.Context, res *Result) error {
	t := res.Target
	if r.e.procs[t] == nil {
		return nil
	}
	err := r.e.sanityCheck(ctx, t)
	if err == nil || ctx.Err() != nil {
		return ctx.Err()
	}
	why := fmt.Sprintf("after the run %s failed the sanity check (%v); restarted it", t, err)
	if res.Status == StatusOK {
		res.Status, res.Reason = StatusFailed, why
	} else {
		res.Reason += "; " + why
	}
	r.say("%s: %v; restarting it", t, err)
	if rerr := r.e.restart(ctx, t); rerr != nil {
		return fmt.Errorf("restarting %s: %w", t, rerr)
	}
	return nil
}

func (r *runner) progressLine(round int, res Result) string {
	left := ""
	if r.done > 0 {
		per := r.runTime / time.Duration(r.done)
		left = fmt.Sprintf(", ~%s left", (per * time.Duration(r.planned-r.done)).Round(time.Second))
	}
	what := fmt.Sprintf("%.0f tps, p99 %.2f ms", res.TPS, res.LatP99Ms)
	if res.Kind.memory() {
		what = fmt.Sprintf("%d of %d connections held, RSS %.1f MB before, %.1f MB with them open", res.IdleHeld, res.IdleWanted,
			float64(res.RSSBeforeKB)/1024, float64(res.RSSHeldKB)/1024)
		if res.RSSPerConnKB != nil {
			what += fmt.Sprintf(" (%.1f kB per connection)", *res.RSSPerConnKB)
		}
	}
	if res.Status != StatusOK {
		what = res.Status + ": " + res.Reason
	}
	if res.StaleReads > 0 {
		what += fmt.Sprintf(", %d stale reads", res.StaleReads)
	}
	return fmt.Sprintf("round %d/%d, run %d/%d: %s → %s: %s%s", round, r.cfg.Rounds, r.done, r.planned, res.Workload, res.Target, what, left)
}

// one runs workload w through target t and measures it.
func (r *runner) one(ctx context.Context, round int, w Workload, t string) Result {
	res := Result{Round: round, Workload: w.Name(), Kind: w.Kind, Mode: w.Mode, Clients: w.Clients, Target: t, Start: time.Now()}
	proc := r.e.procs[t]
	var proxyTicks0 int64
	if proc != nil {
		proxyTicks0 = cpuTicks(proc.pid())
	}
	dbTicks0 := r.e.dbCPUTicks()
	t0 := time.Now()
	defer func() { r.runTime += time.Since(t0) }()

	switch {
	case w.Kind == KindIdleConns:
		if proc == nil {
			res.Status, res.Reason = StatusFailed, fmt.Sprintf("no process of %s to measure", t)
			return res
		}
		tree := t == TargetPgpool || t == TargetPgpoolCache
		out := r.e.runIdleConns(ctx, t, w, r.cfg.IdleConnections, proc.pid(), tree)
		res.Seconds = time.Since(t0).Seconds()
		if out.notStarted != nil {
			res.Status, res.Reason = StatusFailed, out.notStarted.Error()
			return res
		}
		res.IdleWanted, res.IdleHeld, res.Transactions, res.Errors = r.cfg.IdleConnections, out.held, out.held, out.errors
		res.RSSBeforeKB, res.RSSHeldKB = out.rssBefore, out.rssHeld
		if out.held > 0 && out.rssHeld > 0 {
			res.RSSPerConnKB = ptr(float64(out.rssHeld-out.rssBefore) / float64(out.held))
		}
		switch {
		case out.held == 0:
			res.Status, res.Reason = StatusFailed, fmt.Sprintf("no connection opened: %v", out.firstErr)
		case out.rssHeld == 0:
			res.Status, res.Reason = StatusFailed, fmt.Sprintf("could not read the RSS of %s (pid %d)", t, proc.pid())
		case out.errors*10 > int64(r.cfg.IdleConnections):
			res.Status, res.Reason = StatusFailed, fmt.Sprintf("%d of %d connections failed: %v", out.errors, r.cfg.IdleConnections, out.firstErr)
		default:
			res.Status = StatusOK
			if out.errors > 0 {
				res.Reason = fmt.Sprintf("%d of %d connections failed, first: %v", out.errors, r.cfg.IdleConnections, out.firstErr)
			}
		}
	case w.Kind.pgbench():
		out, err := r.e.runPgbench(ctx, w, r.e.endpoints[t], r.cfg.Duration)
		if err != nil {
			res.Status, res.Reason = StatusFailed, err.Error()
			return res
		}
		res.Seconds = time.Since(t0).Seconds()
		res.TPS, res.LatAvgMs, res.Transactions, res.Errors = out.tps, out.latAvgMs, out.transactions, out.failed
		res.LatSamples = len(out.samples)
		_, res.LatP50Ms, res.LatP99Ms = latencyStats(out.samples)
		switch {
		case out.exitErr != nil:
			res.Status, res.Reason = StatusFailed, "pgbench: "+out.errLine
		case out.transactions == 0:
			res.Status, res.Reason = StatusFailed, "no transaction completed"
		case out.failed > 0:
			res.Status, res.Reason = StatusFailed, fmt.Sprintf("%d failed transactions: %s", out.failed, out.errLine)
		default:
			res.Status = StatusOK
		}
	default:
		var out goOutput
		switch w.Kind {
		case KindPointSelect:
			out = r.e.runPointSelect(ctx, t, w, r.cfg.Duration)
		case KindReadAfterWrite:
			out = r.e.runReadAfterWrite(ctx, t, w, r.cfg.Duration)
		case KindShardWrites:
			out = r.e.runShardWrites(ctx, t, w, r.cfg.Duration)
		case KindConnStorm:
			out = r.e.runConnStorm(ctx, t, w, r.cfg.StormConnections)
		}
		res.Seconds = time.Since(t0).Seconds()
		if out.notStarted != nil {
			res.Status, res.Reason = StatusFailed, out.notStarted.Error()
			return res
		}
		res.Transactions, res.Errors = out.ops, out.errors
		res.Reads, res.StaleReads, res.Misrouted = out.reads, out.stale, out.misrouted
		if out.elapsed > 0 {
			res.TPS = float64(out.ops) / out.elapsed.Seconds()
		}
		res.LatSamples = len(out.samples)
		res.LatAvgMs, res.LatP50Ms, res.LatP99Ms = latencyStats(out.samples)
		switch {
		case out.ops == 0:
			res.Status, res.Reason = StatusFailed, fmt.Sprintf("no operation completed: %v", out.firstErr)
		case out.errors*10 > out.ops+out.errors:
			res.Status, res.Reason = StatusFailed, fmt.Sprintf("%d of %d operations failed: %v", out.errors, out.ops+out.errors, out.firstErr)
		case out.misrouted > 0:
			res.Status, res.Reason = StatusFailed, fmt.Sprintf("%d rows landed on a shard their key does not map to", out.misrouted)
		default:
			res.Status = StatusOK
			if out.errors > 0 {
				res.Reason = fmt.Sprintf("%d errors, first: %v", out.errors, out.firstErr)
			}
		}
	}
	if res.Transactions > 0 {
		perTx := func(ticks int64) *float64 {
			return ptr(float64(ticks) / clockTicks * 1e6 / float64(res.Transactions))
		}
		if proc != nil {
			res.ProxyCPUus = perTx(cpuTicks(proc.pid()) - proxyTicks0)
		}
		res.DBCPUus = perTx(r.e.dbCPUTicks() - dbTicks0)
	}
	if proc != nil {
		res.ProxyPeakRSSKB = peakRSSKB(proc.pid(), t == TargetPgpool || t == TargetPgpoolCache)
	}
	return res
}

// write fills the ratios and (re)writes results.jsonl, the charts and
// report.md.
func (r *runner) write() ([]string, error) {
	fillRatios(r.results)
	var files []string
	jsonl := filepath.Join(r.cfg.Out, ResultsFile)
	f, err := os.Create(jsonl)
	if err != nil {
		return nil, err
	}
	enc := json.NewEncoder(f)
	for _, res := range r.results {
		if err := enc.Encode(res); err != nil {
			f.Close()
			return nil, err
		}
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	files = append(files, jsonl)
	agg := aggregate(r.results, r.cfg)
	charts, err := writeCharts(r.cfg.Out, agg, r.cfg)
	if err != nil {
		return files, fmt.Errorf("charts: %w", err)
	}
	files = append(files, charts...)
	rep := filepath.Join(r.cfg.Out, ReportFile)
	if err := os.WriteFile(rep, []byte(renderReport(agg, r.e, r.cfg, time.Since(r.began))), 0o644); err != nil {
		return files, err
	}
	return append(files, rep), nil
}
