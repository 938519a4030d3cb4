package bench

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// stat is a median with its min and max over rounds.
type stat struct {
	med, lo, hi float64
	n           int
}

func statOf(vs []float64) stat {
	m, lo, hi := median(vs)
	return stat{m, lo, hi, len(vs)}
}

// cell is the aggregate of one (workload, target) over the rounds.
type cell struct {
	workload Workload
	target   string
	status   string // ok, failed (in every round), partial (failed in some), unsupported
	reasons  []string
	okRounds int
	rounds   int

	tps, ratioDirect, ratioBouncer, latAvg, p50, p99, proxyCPU, dbCPU stat
	p99Added                                                          stat
	peakRSSKB                                                         int64
	errors, reads, stale, misrouted                                   int64

	// idle-conns
	idleWanted                               int
	idleHeld, rssBefore, rssHeld, rssPerConn stat
}

// aggregation is every cell, by workload in plan order, targets in run order.
type aggregation struct {
	workloads []Workload
	targets   []string
	cells     map[string]map[string]*cell // workload name -> target -> cell
}

// statusText is the cell's status, with how many rounds went well when
// not all did.
func (c *cell) statusText() string {
	if c.status == StatusOK {
		return c.status
	}
	return fmt.Sprintf("%s (%d/%d ok)", c.status, c.okRounds, c.rounds)
}

func (a *aggregation) get(w, t string) *cell {
	if m := a.cells[w]; m != nil {
		return m[t]
	}
	return nil
}

func aggregate(results []Result, cfg Config) *aggregation {
	a := &aggregation{workloads: cfg.Workloads, targets: cfg.orderedTargets(), cells: map[string]map[string]*cell{}}
	vals := map[*cell]map[string][]float64{}
	for _, r := range results {
		m := a.cells[r.Workload]
		if m == nil {
			m = map[string]*cell{}
			a.cells[r.Workload] = m
		}
		c := m[r.Target]
		if c == nil {
			c = &cell{workload: Workload{Kind: r.Kind, Mode: r.Mode, Clients: r.Clients}, target: r.Target}
			m[r.Target] = c
			vals[c] = map[string][]float64{}
		}
		if r.Status == StatusUnsupported {
			c.status = StatusUnsupported
			c.reasons = []string{r.Reason}
			continue
		}
		c.rounds++
		c.errors += r.Errors
		c.reads += r.Reads
		c.stale += r.StaleReads
		c.misrouted += r.Misrouted
		c.peakRSSKB = max(c.peakRSSKB, r.ProxyPeakRSSKB)
		c.idleWanted = max(c.idleWanted, r.IdleWanted)
		if r.Reason != "" && !contains(c.reasons, r.Reason) {
			c.reasons = append(c.reasons, r.Reason)
		}
		if r.Status != StatusOK {
			continue
		}
		c.okRounds++
		v := vals[c]
		add := func(k string, x float64) { v[k] = append(v[k], x) }
		add("tps", r.TPS)
		add("lat", r.LatAvgMs)
		add("p50", r.LatP50Ms)
		add("p99", r.LatP99Ms)
		if r.RatioDirect != nil {
			add("rd", *r.RatioDirect)
		}
		if r.RatioPgBouncer != nil {
			add("rb", *r.RatioPgBouncer)
		}
		if r.ProxyCPUus != nil {
			add("pcpu", *r.ProxyCPUus)
		}
		if r.DBCPUus != nil {
			add("dcpu", *r.DBCPUus)
		}
		if r.P99AddedMs != nil {
			add("p99add", *r.P99AddedMs)
		}
		if r.Kind.memory() {
			add("held", float64(r.IdleHeld))
			add("rssb", float64(r.RSSBeforeKB))
			add("rssh", float64(r.RSSHeldKB))
			if r.RSSPerConnKB != nil {
				add("rssc", *r.RSSPerConnKB)
			}
		}
	}
	for c, v := range vals {
		if c.status == StatusUnsupported {
			continue
		}
		switch {
		case c.okRounds == c.rounds:
			c.status = StatusOK
		case c.okRounds == 0:
			c.status = StatusFailed
		default:
			c.status = "partial"
		}
		c.tps, c.latAvg, c.p50, c.p99 = statOf(v["tps"]), statOf(v["lat"]), statOf(v["p50"]), statOf(v["p99"])
		c.ratioDirect, c.ratioBouncer = statOf(v["rd"]), statOf(v["rb"])
		c.proxyCPU, c.dbCPU = statOf(v["pcpu"]), statOf(v["dcpu"])
		c.p99Added = statOf(v["p99add"])
		c.idleHeld, c.rssBefore, c.rssHeld, c.rssPerConn = statOf(v["held"]), statOf(v["rssb"]), statOf(v["rssh"]), statOf(v["rssc"])
	}
	return a
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// fmtStat renders a median with its range ("1.23 (1.10–1.30)"), or "—".
func fmtStat(s stat, prec int) string {
	if s.n == 0 {
		return "—"
	}
	f := "%." + fmt.Sprint(prec) + "f"
	if s.n == 1 || s.lo == s.hi {
		return fmt.Sprintf(f, s.med)
	}
	return fmt.Sprintf(f+" ("+f+"–"+f+")", s.med, s.lo, s.hi)
}

// fmtScaled is fmtStat of s with every value divided by div.
func fmtScaled(s stat, div float64, prec int) string {
	return fmtStat(stat{s.med / div, s.lo / div, s.hi / div, s.n}, prec)
}

// fmtSigned is fmtStat with an explicit sign ("+0.120 (-0.050–+0.300)").
func fmtSigned(s stat, prec int) string {
	if s.n == 0 {
		return "—"
	}
	f := "%+." + fmt.Sprint(prec) + "f"
	if s.n == 1 || s.lo == s.hi {
		return fmt.Sprintf(f, s.med)
	}
	return fmt.Sprintf(f+" ("+f+"–"+f+")", s.med, s.lo, s.hi)
}

func fmtMed(s stat, prec int) string {
	if s.n == 0 {
		return "—"
	}
	return fmt.Sprintf("%."+fmt.Sprint(prec)+"f", s.med)
}

// renderReport writes report.md.
func renderReport(a *aggregation, e *env, cfg Config, elapsed time.Duration) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	mode := "full"
	if cfg.Quick {
		mode = "quick (smoke run: short runs, one round; figures are not comparable to a full run)"
	}
	if cfg.UnixClients {
		mode += ", clients on Unix sockets"
	}
	p("# dbproxy benchmark: direct, dbproxy, PgBouncer, Pgpool-II side by side\n\n")
	p("Generated %s by `dbproxy bench` in %s. Mode: %s.\n\n", time.Now().UTC().Format(time.RFC3339), elapsed.Round(time.Second), mode)
	p("%d interleaved round(s) (in each round every workload runs through every target back to back: %s), %s per run, pgbench scale %d, ",
		cfg.Rounds, strings.Join(a.targets, ", "), cfg.Duration, cfg.Scale)
	p("connection storm of %d connections, %d idle connections. Figures are medians over rounds with min–max in parentheses; ", cfg.StormConnections, cfg.IdleConnections)
	p("ratios compare TPS with the direct (×direct) and PgBouncer (×PgBouncer) runs of the same workload in the same round; ")
	p("p99 added is a target's p99 latency minus direct's in the same round.\n\n")
	renderTargets(p, a)

	p("## Machine and versions\n\n| | |\n|---|---|\n")
	for _, k := range slices.Sorted(maps.Keys(e.machine)) {
		p("| %s | %s |\n", k, e.machine[k])
	}
	for _, k := range slices.Sorted(maps.Keys(e.versions)) {
		p("| %s | %s |\n", k, e.versions[k])
	}
	p("\nClusters: `bmain` = 1 primary + 2 streaming standbys (PostgreSQL settings: %s); `bshard` = 1 primary, second shard of the sharded writes. ",
		settingsText())
	p("dbproxy: `dbproxy serve` as a separate process, shards s0 = bmain (reads of unsharded tables go to its standbys), s1 = bshard, table %s sharded by id, pool 20 per node. ", shardedTable)
	p("PgBouncer: transaction pooling, pool 20, to the bmain primary. Pgpool-II: streaming-replication mode, load balancing over the 3 bmain nodes (weight 1 each), %d children; pgpool_cache adds the shmem query cache (256 MB). ", cfg.PgpoolChildren)
	clients := "over loopback TCP"
	if cfg.UnixClients {
		clients = "on its Unix socket (--unix-clients)"
	}
	if e.main != nil && e.main.Primary().SocketDir != "" {
		p("The proxies and poolers reach PostgreSQL on the nodes' Unix sockets; pgbench and the Go workloads connect to every target, direct included, %s.\n\n", clients)
	} else {
		p("The proxies and poolers reach PostgreSQL over loopback TCP; pgbench and the Go workloads connect to every target %s.\n\n", clients)
	}

	renderLoad(p, a)
	renderIdle(p, a, cfg)

	p("## Not supported and failed\n\n")
	any := false
	for _, w := range a.workloads {
		for _, t := range a.targets {
			c := a.get(w.Name(), t)
			if c == nil || len(c.reasons) == 0 {
				continue
			}
			any = true
			label := c.status
			if c.status == StatusUnsupported {
				label = "not supported"
				if w.Kind.memory() {
					label = "not applicable"
				}
			}
			p("- **%s → %s** (%s): %s\n", w.Name(), t, label, strings.Join(c.reasons, "; "))
		}
	}
	if !any {
		p("Nothing.\n")
	}
	if len(e.restarts) > 0 {
		p("\nRestarted after failing the post-run sanity check:")
		for _, t := range a.targets {
			if n := e.restarts[t]; n > 0 {
				p(" %s ×%d", t, n)
			}
		}
		p(".\n")
	}
	if slices.ContainsFunc(a.workloads, func(w Workload) bool { return !w.Kind.memory() }) {
		p("\n## Charts\n\n![TPS ratio to direct](%s)\n\n![p99 latency](%s)\n", ChartRatio, ChartLat)
	}
	p("\n")

	p("## Workloads and measures\n\n")
	p("- select-only: `pgbench -S`; tpcb: pgbench's built-in TPC-B-like script; hot-set: `pgbench -f` with `\\set aid random(1, 1000)` / `SELECT abalance FROM pgbench_accounts WHERE aid = :aid;`; range-scan: `pgbench -f` with `\\set aid random(...)` / `SELECT * FROM pgbench_accounts WHERE aid BETWEEN :aid AND :aid + 9999;` (10,000 rows, about 1 MB per transaction). ")
	p("All `-n -j 2 -T <duration>` with `-M` as named and `-c` = the cN of the name; pgbench runs as a separate process; TPS and average latency are pgbench's, p50/p99 come from its per-transaction log (`-l`, sampling rate %.2g).\n", samplingRate)
	p("- select-go: Go, database/sql (pgx's adapter with the simple protocol for wire targets; the `dbproxy` driver for the driver target), point select of a random account per operation.\n")
	p("- read-after-write: Go, each client on one session updates one of its own keys of `raw_kv` to a new value and reads it back at once; a read that does not return the new value is stale. One operation = write + read.\n")
	p("- shard-writes: Go, upserts of random ids into `%s`, sharded over s0/s1; direct computes the shard with package shard from the same topology and writes to that shard's primary. After each run every row is checked to be on the shard its id maps to.\n", shardedTable)
	p("- conn-storm: Go, %d connections (cN = concurrent workers): connect with SCRAM authentication, `SELECT 1`, close; TPS = connections/s, latency = per connection.\n", cfg.StormConnections)
	p("- idle-conns: Go, %d connections held open at once through the target (cN = connections being opened at a time): connect with SCRAM authentication (sslmode=disable), `SELECT 1`, then idle; ", cfg.IdleConnections)
	p("VmRSS of the target's process (/proc/<pid>/status; Pgpool-II summed over its processes) is read before opening them and %s after the last one opened, then all are closed. ", idleSettle)
	p("Growth per connection = (RSS with all open − RSS before) / connections held. No TPS or latency.\n")
	p("- p99 added: a target's p99 latency minus the direct run's p99 of the same workload in the same round, median over rounds (negative when the target was faster at the tail).\n")
	p("- After every run through a proxy or pooler, a sanity check opens 4 fresh connections through it and runs `SELECT <nonce>::bigint AS nonce, k FROM raw_kv WHERE k = 100`; a wrong answer (e.g. results of an earlier statement, from a pooled backend that lost protocol sync) fails the run and the process is restarted before the next run.\n")
	p("- proxy CPU µs/tx: CPU time (user+system, /proc/<pid>/stat, children included) of the proxy process during the run divided by the transactions; Pgpool-II sums its processes. DB CPU: the same over every PostgreSQL process of both clusters. ")
	p("Proxy peak RSS: VmHWM (Pgpool-II: summed over its processes, so shared memory is counted once per process).\n")
	return b.String()
}

func settingsText() string {
	s := clusterSettings()
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s)) {
		parts = append(parts, k+"="+s[k])
	}
	return strings.Join(parts, ", ")
}

// The project's targets the report checks dbproxy against.
const (
	targetP99AddedMs = 1.0  // p99 latency added ...
	targetClients    = 16   // ... at 16 clients
	targetIdleConns  = 5000 // idle client connections held ...
	targetRSSMB      = 100  // ... within this RSS
)

func metOrMissed(ok bool) string {
	if ok {
		return "met"
	}
	return "missed"
}

// renderTargets writes the section comparing dbproxy with the project's
// targets: p99 added at 16 clients, RSS holding 5,000 idle connections.
func renderTargets(p func(string, ...any), a *aggregation) {
	p("## Targets\n\n")
	p("- p99 latency added by dbproxy ≤ %g ms at %d clients (dbproxy's p99 minus direct's):", targetP99AddedMs, targetClients)
	n := 0
	for _, w := range a.workloads {
		c := a.get(w.Name(), TargetDbproxy)
		if w.Clients != targetClients || w.Kind.memory() || c == nil || c.p99Added.n == 0 {
			continue
		}
		n++
		p("\n  - %s: %s ms, %s", w.Name(), fmtSigned(c.p99Added, 3), metOrMissed(c.p99Added.med <= targetP99AddedMs))
	}
	if n == 0 {
		p(" not measured in this run (no %d-client workload ran ok through both dbproxy and direct).", targetClients)
	}
	p("\n- dbproxy RSS ≤ %d MB holding %d idle client connections: ", targetRSSMB, targetIdleConns)
	var c *cell
	planned := false
	for _, w := range a.workloads {
		if w.Kind == KindIdleConns {
			planned = true
			if x := a.get(w.Name(), TargetDbproxy); x != nil && x.rssHeld.n > 0 {
				c = x
			}
		}
	}
	switch {
	case c == nil && !planned:
		p("not measured in this run (idle-conns was not among its workloads).\n\n")
	case c == nil:
		p("not measured in this run (idle-conns did not run ok through dbproxy).\n\n")
	default:
		p("%s MB with %s connections open (%s MB before, %s kB per connection)", fmtScaled(c.rssHeld, 1024, 1), fmtMed(c.idleHeld, 0),
			fmtScaled(c.rssBefore, 1024, 1), fmtStat(c.rssPerConn, 1))
		if c.idleWanted >= targetIdleConns {
			p(", %s.\n\n", metOrMissed(c.idleHeld.med >= targetIdleConns && c.rssHeld.med/1024 <= targetRSSMB))
		} else {
			p("; at %d connections an estimated %.1f MB (RSS before + growth per connection × %d), %s.\n\n", targetIdleConns,
				idleEstimateMB(c), targetIdleConns, metOrMissed(idleEstimateMB(c) <= targetRSSMB))
		}
	}
}

// idleEstimateMB extrapolates an idle-conns cell to targetIdleConns
// connections.
func idleEstimateMB(c *cell) float64 {
	return (c.rssBefore.med + c.rssPerConn.med*targetIdleConns) / 1024
}

// renderIdle writes the idle-connections table (nothing when no idle-conns
// workload ran).
func renderIdle(p func(string, ...any), a *aggregation, cfg Config) {
	var ws []Workload
	for _, w := range a.workloads {
		if w.Kind.memory() {
			ws = append(ws, w)
		}
	}
	if len(ws) == 0 {
		return
	}
	p("## Idle connections: memory of the proxy\n\n")
	p("%d client connections held open at once through each target (SCRAM login, one `SELECT 1` each, then idle); RSS is VmRSS of the target's process (Pgpool-II: summed over its processes). ", cfg.IdleConnections)
	p("Target for dbproxy: RSS ≤ %d MB holding %d idle client connections; below %d connections the last column extrapolates (RSS before + growth per connection × %d).\n\n",
		targetRSSMB, targetIdleConns, targetIdleConns, targetIdleConns)
	p("| workload | target | status | connections held | RSS before MB | RSS with all open MB | growth per connection kB | proxy CPU µs/connection | errors | ≤ %d MB at %d |\n", targetRSSMB, targetIdleConns)
	p("|---|---|---|---:|---:|---:|---:|---:|---:|---|\n")
	for _, w := range ws {
		for _, t := range a.targets {
			c := a.get(w.Name(), t)
			if c == nil {
				continue
			}
			if c.status == StatusUnsupported {
				p("| %s | %s | not applicable | | | | | | | |\n", w.Name(), t)
				continue
			}
			status := c.statusText()
			verdict := "—"
			switch {
			case c.rssHeld.n == 0:
			case c.idleWanted >= targetIdleConns:
				verdict = metOrMissed(c.idleHeld.med >= targetIdleConns && c.rssHeld.med/1024 <= targetRSSMB)
			case c.rssPerConn.n > 0:
				verdict = fmt.Sprintf("est. %.1f MB", idleEstimateMB(c))
			}
			p("| %s | %s | %s | %s of %d | %s | %s | %s | %s | %d | %s |\n", w.Name(), t, status,
				fmtStat(c.idleHeld, 0), c.idleWanted, fmtScaled(c.rssBefore, 1024, 1), fmtScaled(c.rssHeld, 1024, 1),
				fmtStat(c.rssPerConn, 1), fmtStat(c.proxyCPU, 0), c.errors, verdict)
		}
	}
	p("\nNot applicable and failed pairs are explained in the next section.\n\n")
}

// renderLoad writes the TPS-ratio table and the table of every run of the
// workloads with TPS and latency (nothing when only idle-conns ran).
func renderLoad(p func(string, ...any), a *aggregation) {
	if !slices.ContainsFunc(a.workloads, func(w Workload) bool { return !w.Kind.memory() }) {
		return
	}
	p("## TPS ratio to direct (median)\n\n")
	p("| workload |")
	for _, t := range a.targets {
		p(" %s |", t)
	}
	p("\n|---|")
	for range a.targets {
		p("---:|")
	}
	p("\n")
	for _, w := range a.workloads {
		if w.Kind.memory() {
			continue
		}
		p("| %s |", w.Name())
		for _, t := range a.targets {
			c := a.get(w.Name(), t)
			switch {
			case c == nil:
				p(" |")
			case c.status == StatusUnsupported:
				p(" n/s |")
			case c.status == StatusFailed:
				p(" failed |")
			case t == TargetDirect:
				p(" 1 (%s tps) |", fmtMed(c.tps, 0))
			default:
				s := fmtMed(c.ratioDirect, 2)
				if c.status == "partial" {
					s += " (partial)"
				}
				p(" %s |", s)
			}
		}
		p("\n")
	}
	p("\nn/s = not supported by that target, failed = ran and failed; both explained below.\n\n")

	p("## Every run, aggregated\n\n")
	p("| workload | target | status | TPS | ×direct | ×PgBouncer | lat avg ms | p50 ms | p99 ms | p99 added ms | proxy CPU µs/tx | DB CPU µs/tx | proxy peak RSS MB | errors | stale reads |\n")
	p("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, w := range a.workloads {
		if w.Kind.memory() {
			continue
		}
		for _, t := range a.targets {
			c := a.get(w.Name(), t)
			if c == nil {
				continue
			}
			if c.status == StatusUnsupported {
				p("| %s | %s | not supported | | | | | | | | | | | | |\n", w.Name(), t)
				continue
			}
			status := c.statusText()
			rss := "—"
			if c.peakRSSKB > 0 {
				rss = fmt.Sprintf("%.1f", float64(c.peakRSSKB)/1024)
			}
			stale := "—"
			if c.reads > 0 {
				stale = fmt.Sprintf("%d of %d", c.stale, c.reads)
			}
			p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %s |\n", w.Name(), t, status,
				fmtStat(c.tps, 0), fmtStat(c.ratioDirect, 2), fmtStat(c.ratioBouncer, 2),
				fmtStat(c.latAvg, 3), fmtStat(c.p50, 3), fmtStat(c.p99, 3), fmtSigned(c.p99Added, 3),
				fmtStat(c.proxyCPU, 1), fmtStat(c.dbCPU, 1), rss, c.errors, stale)
		}
	}
	p("\n")
}
