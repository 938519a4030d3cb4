package bench

import (
	"math"
	"slices"
	"time"
)

// Run statuses.
const (
	StatusOK          = "ok"
	StatusFailed      = "failed"      // the target ran it and failed (Reason says how)
	StatusUnsupported = "unsupported" // the target cannot run it (Reason says why); not attempted
)

// Result is one run of one workload through one target in one round: one
// line of results.jsonl.
type Result struct {
	Round    int    `json:"round"`
	Workload string `json:"workload"`
	Kind     Kind   `json:"kind"`
	Mode     string `json:"mode,omitempty"`
	Clients  int    `json:"clients"`
	Target   string `json:"target"`
	Status   string `json:"status"`
	Reason   string `json:"reason,omitempty"`

	Start        time.Time `json:"start"`
	Seconds      float64   `json:"seconds,omitempty"`      // measured run time
	Transactions int64     `json:"transactions,omitempty"` // completed transactions (connections for conn-storm)
	TPS          float64   `json:"tps,omitempty"`
	LatAvgMs     float64   `json:"lat_avg_ms,omitempty"`
	LatP50Ms     float64   `json:"lat_p50_ms,omitempty"`
	LatP99Ms     float64   `json:"lat_p99_ms,omitempty"`
	LatSamples   int       `json:"lat_samples,omitempty"` // transactions the percentiles are computed from
	// P99AddedMs is LatP99Ms minus that of the direct run of the same
	// workload in the same round (absent for direct, and when either side
	// did not run ok or has no latency).
	P99AddedMs *float64 `json:"p99_added_ms,omitempty"`

	// Ratios of TPS to the direct and PgBouncer runs of the same workload
	// in the same round (absent when either side did not run ok).
	RatioDirect    *float64 `json:"ratio_direct,omitempty"`
	RatioPgBouncer *float64 `json:"ratio_pgbouncer,omitempty"`

	// ProxyCPUus is the CPU time of the proxy process (tree) per
	// transaction, µs; DBCPUus that of every PostgreSQL process of the
	// clusters (primary and standbys) per transaction.
	ProxyCPUus *float64 `json:"proxy_cpu_us_per_tx,omitempty"`
	DBCPUus    *float64 `json:"db_cpu_us_per_tx,omitempty"`
	// ProxyPeakRSSKB is VmHWM of the proxy (pgpool: summed over its
	// processes) at the end of the run.
	ProxyPeakRSSKB int64 `json:"proxy_peak_rss_kb,omitempty"`

	Errors int64 `json:"errors"`
	// Reads and StaleReads (read-after-write): reads done, and reads that
	// did not see the value just written.
	Reads      int64 `json:"reads,omitempty"`
	StaleReads int64 `json:"stale_reads"`
	// Misrouted (shard-writes): rows found on a shard their key does not map to.
	Misrouted int64 `json:"misrouted,omitempty"`

	// Idle connections (idle-conns): the connections asked for
	// (Config.IdleConnections) and those held open at once (authenticated,
	// one SELECT 1 done, then idle); the target process's VmRSS (kB; Pgpool-II
	// summed over its processes) before opening them and with all of them
	// open; and the growth per connection held, kB. Errors counts the
	// connections that failed.
	IdleWanted   int      `json:"idle_wanted,omitempty"`
	IdleHeld     int64    `json:"idle_held,omitempty"`
	RSSBeforeKB  int64    `json:"rss_before_kb,omitempty"`
	RSSHeldKB    int64    `json:"rss_held_kb,omitempty"`
	RSSPerConnKB *float64 `json:"rss_per_conn_kb,omitempty"`
}

func ptr(v float64) *float64 { return &v }

// latencyStats returns average, p50 and p99 in milliseconds of samples
// (sorted in place).
func latencyStats(samples []time.Duration) (avg, p50, p99 float64) {
	if len(samples) == 0 {
		return 0, 0, 0
	}
	slices.Sort(samples)
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return ms(sum / time.Duration(len(samples))), ms(percentile(samples, 0.50)), ms(percentile(samples, 0.99))
}

// percentile returns the nearest-rank q-quantile of sorted samples.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// median returns the median of vs (mean of the middle two for an even
// count), and min and max.
func median(vs []float64) (med, lo, hi float64) {
	if len(vs) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		med = s[n/2]
	} else {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return med, s[0], s[n-1]
}

// fillRatios sets RatioDirect and RatioPgBouncer of every ok result from
// the ok direct and pgbouncer results of the same workload and round, and
// P99AddedMs from the direct one.
func fillRatios(results []Result) {
	type key struct {
		round    int
		workload string
		target   string
	}
	tps := map[key]float64{}
	p99 := map[key]float64{}
	for _, r := range results {
		if r.Status == StatusOK && r.TPS > 0 {
			tps[key{r.Round, r.Workload, r.Target}] = r.TPS
		}
		if r.Status == StatusOK && r.LatSamples > 0 {
			p99[key{r.Round, r.Workload, r.Target}] = r.LatP99Ms
		}
	}
	for i := range results {
		r := &results[i]
		r.P99AddedMs = nil
		if d, ok := p99[key{r.Round, r.Workload, TargetDirect}]; ok && r.Target != TargetDirect && r.Status == StatusOK && r.LatSamples > 0 {
			r.P99AddedMs = ptr(r.LatP99Ms - d)
		}
		if r.Status != StatusOK || r.TPS <= 0 {
			continue
		}
		if d, ok := tps[key{r.Round, r.Workload, TargetDirect}]; ok {
			r.RatioDirect = ptr(r.TPS / d)
		}
		if b, ok := tps[key{r.Round, r.Workload, TargetPgBouncer}]; ok {
			r.RatioPgBouncer = ptr(r.TPS / b)
		}
	}
}
