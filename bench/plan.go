package bench

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Target names, in the order each round runs them.
const (
	TargetDirect      = "direct"       // straight to the primary (Go sharded writes: to the right shard primary)
	TargetDbproxy     = "dbproxy"      // the proxy, a separate `dbproxy serve` process
	TargetDriver      = "driver"       // database/sql with the in-process "dbproxy" driver
	TargetPgBouncer   = "pgbouncer"    // PgBouncer, transaction pooling, pool 20
	TargetPgpool      = "pgpool"       // Pgpool-II, streaming replication mode, load balancing
	TargetPgpoolCache = "pgpool_cache" // the same with its in-memory query cache (shmem)
)

// Targets lists every target in run order.
var Targets = []string{TargetDirect, TargetDbproxy, TargetDriver, TargetPgBouncer, TargetPgpool, TargetPgpoolCache}

// Kind is what a workload runs.
type Kind string

// Workload kinds. The pgbench kinds run pgbench as a separate process; the
// go kinds run in the harness's process.
const (
	KindSelectOnly     Kind = "select-only"      // pgbench -S
	KindTPCB           Kind = "tpcb"             // pgbench built-in TPC-B-like
	KindHotSet         Kind = "hot-set"          // pgbench -f: one of 1,000 accounts
	KindRangeScan      Kind = "range-scan"       // pgbench -f: 10,000 consecutive accounts (a long result)
	KindPointSelect    Kind = "select-go"        // Go: database/sql point select of a random account (every target, the driver too)
	KindReadAfterWrite Kind = "read-after-write" // Go: write a key, read it back at once
	KindShardWrites    Kind = "shard-writes"     // Go: upserts over 2 shards by key
	KindConnStorm      Kind = "conn-storm"       // Go: connect, SELECT 1, close
	KindIdleConns      Kind = "idle-conns"       // Go: hold Config.IdleConnections connections open, read the target's RSS
)

// Kinds lists every workload kind.
var Kinds = []Kind{KindSelectOnly, KindTPCB, KindHotSet, KindRangeScan, KindPointSelect, KindReadAfterWrite, KindShardWrites, KindConnStorm, KindIdleConns}

func (k Kind) pgbench() bool {
	return k == KindSelectOnly || k == KindTPCB || k == KindHotSet || k == KindRangeScan
}

// memory reports whether the kind measures the target's memory rather than
// throughput and latency (it has no TPS and no latency).
func (k Kind) memory() bool { return k == KindIdleConns }

// Workload is one benchmark: a kind, a pgbench query mode (pgbench kinds)
// and a number of concurrent clients (conn-storm: workers opening
// connections; idle-conns: connections being opened at a time).
type Workload struct {
	Kind    Kind
	Mode    string // simple | extended | prepared (pgbench kinds), "" otherwise
	Clients int
}

// Name is the workload's stable identifier: "select-only/simple/c16".
func (w Workload) Name() string {
	if w.Mode == "" {
		return fmt.Sprintf("%s/c%d", w.Kind, w.Clients)
	}
	return fmt.Sprintf("%s/%s/c%d", w.Kind, w.Mode, w.Clients)
}

// Config says what to run and where to write the results. Build one with
// DefaultConfig or QuickConfig, then set Out.
type Config struct {
	// Out is the directory for report.md, the charts and results.jsonl
	// (created if missing). Required.
	Out string
	// Quick marks a smoke run (recorded in the report).
	Quick bool
	// Rounds of interleaved runs (>= 1).
	Rounds int
	// Duration of each pgbench and Go load run (>= 1s).
	Duration time.Duration
	// Scale is the pgbench scale factor (100,000 accounts each).
	Scale int
	// StormConnections is the number of connections of the connection storm.
	StormConnections int
	// IdleConnections is the number of client connections idle-conns holds
	// open at once through a target. Running it raises this process's
	// open-files limit (RLIMIT_NOFILE) to at least IdleConnections +
	// fdMargin before the targets start, so they inherit it; only root can
	// raise the hard limit.
	IdleConnections int
	// Workloads to run, in order, each through every target.
	Workloads []Workload
	// Targets to run, a subset of Targets in any order (run order is that of
	// Targets).
	Targets []string
	// PgpoolChildren is Pgpool-II's num_init_children.
	PgpoolChildren int
	// DbproxyBin is the dbproxy binary to run `serve` with; "" builds it
	// with `go build` from the module this package belongs to.
	DbproxyBin string
	// Progress receives one line per step; nil discards.
	Progress io.Writer
	// Install lets the harness apt-get install pgbouncer and pgpool2 when
	// they are missing (root only).
	Install bool
	// UnixClients makes pgbench and the Go workloads connect to every
	// target, direct included, on its Unix socket instead of loopback TCP
	// (a client on the database's machine).
	UnixClients bool
}

// DefaultConfig is the full benchmark: every workload of benchmarks.md at
// 16 and 64 clients, 20 s runs, three rounds, scale 20, and 5,000 idle
// connections opened 64 at a time.
func DefaultConfig() Config {
	var ws []Workload
	for _, k := range []Kind{KindSelectOnly, KindTPCB} {
		for _, c := range []int{16, 64} {
			for _, m := range []string{"simple", "extended", "prepared"} {
				ws = append(ws, Workload{Kind: k, Mode: m, Clients: c})
			}
		}
	}
	ws = append(ws,
		Workload{Kind: KindHotSet, Mode: "simple", Clients: 16},
		Workload{Kind: KindHotSet, Mode: "prepared", Clients: 16},
		Workload{Kind: KindRangeScan, Mode: "simple", Clients: 8},
		Workload{Kind: KindRangeScan, Mode: "extended", Clients: 8},
		Workload{Kind: KindPointSelect, Clients: 16},
		Workload{Kind: KindReadAfterWrite, Clients: 16},
		Workload{Kind: KindShardWrites, Clients: 16},
		Workload{Kind: KindConnStorm, Clients: 16},
		Workload{Kind: KindIdleConns, Clients: 64},
	)
	return Config{
		Rounds:           3,
		Duration:         20 * time.Second,
		Scale:            20,
		StormConnections: 1000,
		IdleConnections:  5000,
		Workloads:        ws,
		Targets:          append([]string(nil), Targets...),
		PgpoolChildren:   80,
		Install:          true,
	}
}

// QuickConfig is the smoke run: one round of short runs over fewer
// workloads, every target at least once, well under 5 minutes.
func QuickConfig() Config {
	c := DefaultConfig()
	c.Quick = true
	c.Rounds = 1
	c.Duration = 3 * time.Second
	c.Scale = 1
	c.StormConnections = 100
	c.IdleConnections = 200
	c.PgpoolChildren = 20
	c.Workloads = []Workload{
		{Kind: KindSelectOnly, Mode: "simple", Clients: 8},
		{Kind: KindSelectOnly, Mode: "prepared", Clients: 8},
		{Kind: KindTPCB, Mode: "extended", Clients: 8},
		{Kind: KindHotSet, Mode: "simple", Clients: 8},
		{Kind: KindRangeScan, Mode: "extended", Clients: 4},
		{Kind: KindPointSelect, Clients: 8},
		{Kind: KindReadAfterWrite, Clients: 8},
		{Kind: KindShardWrites, Clients: 8},
		{Kind: KindConnStorm, Clients: 8},
		{Kind: KindIdleConns, Clients: 64},
	}
	return c
}

// ErrInvalidConfig is wrapped by Validate's errors.
var ErrInvalidConfig = errors.New("bench: invalid config")

// Validate reports whether c can run.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	switch {
	case c.Out == "":
		return bad("Out (the output directory) is required")
	case c.Rounds < 1:
		return bad("Rounds %d < 1", c.Rounds)
	case c.Duration < time.Second:
		return bad("Duration %s < 1s", c.Duration)
	case c.Scale < 1:
		return bad("Scale %d < 1", c.Scale)
	case c.StormConnections < 1:
		return bad("StormConnections %d < 1", c.StormConnections)
	case len(c.Workloads) == 0:
		return bad("no workloads")
	case len(c.Targets) == 0:
		return bad("no targets")
	case c.PgpoolChildren < 1:
		return bad("PgpoolChildren %d < 1", c.PgpoolChildren)
	}
	for _, w := range c.Workloads {
		if w.Clients < 1 || w.Clients > 200 {
			return bad("workload %s: clients must be 1..200", w.Name())
		}
		if w.Kind.pgbench() != (w.Mode != "") {
			return bad("workload %s: a mode is for pgbench workloads only, and they need one", w.Name())
		}
		if w.Mode != "" && w.Mode != "simple" && w.Mode != "extended" && w.Mode != "prepared" {
			return bad("workload %s: mode must be simple, extended or prepared", w.Name())
		}
		if !slices.Contains(Kinds, w.Kind) {
			return bad("workload %s: unknown kind", w.Name())
		}
		if w.Kind == KindIdleConns && c.IdleConnections < 1 {
			return bad("IdleConnections %d < 1 (workload %s)", c.IdleConnections, w.Name())
		}
	}
	for _, t := range c.Targets {
		known := false
		for _, k := range Targets {
			known = known || k == t
		}
		if !known {
			return bad("unknown target %q (known: %v)", t, Targets)
		}
	}
	return nil
}

// wants reports whether target t is selected.
func (c Config) wants(t string) bool {
	for _, x := range c.Targets {
		if x == t {
			return true
		}
	}
	return false
}

// orderedTargets returns the selected targets in run order.
func (c Config) orderedTargets() []string {
	var out []string
	for _, t := range Targets {
		if c.wants(t) {
			out = append(out, t)
		}
	}
	return out
}

// idleConns reports whether the plan holds idle connections (idle-conns).
func (c Config) idleConns() bool {
	return slices.ContainsFunc(c.Workloads, func(w Workload) bool { return w.Kind == KindIdleConns })
}

// SplitList splits a comma-separated flag value into its items, trimmed,
// without empty ones.
func SplitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// SelectWorkloads keeps the workloads of c.Workloads that an item of list
// names, in their order in c.Workloads. An item is a workload name
// ("select-only/simple/c16"), a kind ("tpcb": every workload of that kind)
// or a kind and mode ("select-only/prepared": every client count). An item
// that matches none of c.Workloads, or an empty list, is an error wrapping
// ErrInvalidConfig that lists the valid names and kinds; c is then
// unchanged.
func (c *Config) SelectWorkloads(list []string) error {
	matches := func(item string, w Workload) bool {
		name := w.Name()
		return item == name || item == string(w.Kind) || strings.HasPrefix(name, item+"/")
	}
	if len(list) == 0 {
		return fmt.Errorf("%w: no workloads selected (valid: %s)", ErrInvalidConfig, c.validWorkloads())
	}
	var unknown []string
	for _, item := range list {
		if !slices.ContainsFunc(c.Workloads, func(w Workload) bool { return matches(item, w) }) {
			unknown = append(unknown, fmt.Sprintf("%q", item))
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("%w: unknown workload %s (valid: %s)", ErrInvalidConfig, strings.Join(unknown, ", "), c.validWorkloads())
	}
	var keep []Workload
	for _, w := range c.Workloads {
		if slices.ContainsFunc(list, func(item string) bool { return matches(item, w) }) {
			keep = append(keep, w)
		}
	}
	c.Workloads = keep
	return nil
}

// validWorkloads lists the names of c.Workloads and their kinds, for
// SelectWorkloads' errors.
func (c Config) validWorkloads() string {
	var names, kinds []string
	for _, w := range c.Workloads {
		names = append(names, w.Name())
		if !slices.Contains(kinds, string(w.Kind)) {
			kinds = append(kinds, string(w.Kind))
		}
	}
	return fmt.Sprintf("the names %s, or the kinds %s", strings.Join(names, ", "), strings.Join(kinds, ", "))
}
