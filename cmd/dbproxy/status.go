package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/replica"
)

// statusReport is what `dbproxy status` prints and what a running proxy
// serves as JSON on /status.
type statusReport struct {
	// Source is "proxy" when read from a running proxy's /status, "probe"
	// when status probed the nodes itself.
	Source string        `json:"source"`
	Time   time.Time     `json:"time"`
	Shards []shardStatus `json:"shards"`
	// Clients counts proxy client connections by state (proxy source only).
	Clients map[string]int `json:"clients,omitempty"`
	// DeepIdle counts idle clients that gave their protocol buffers back
	// (included in Clients["idle"]).
	DeepIdle int `json:"deep_idle,omitempty"`
	// ListenChannels counts the channels clients LISTEN on through the
	// proxy (one listening backend per shard primary serves them all).
	ListenChannels int `json:"listen_channels,omitempty"`
	// ReadRetries counts reads sent again to another node because theirs
	// failed before answering (proxy.Stats.ReadRetries).
	ReadRetries uint64 `json:"read_retries,omitempty"`
	// ClientsGoneMidQuery counts client connections found closed while
	// their query ran; the query was cancelled on its backend
	// (proxy.Stats.ClientsGoneMidQuery).
	ClientsGoneMidQuery uint64 `json:"clients_gone_mid_query,omitempty"`
	// Cache holds the cache statistics (proxy source with the cache on).
	Cache any `json:"cache,omitempty"`
}

type shardStatus struct {
	Name  string       `json:"name"`
	Nodes []nodeStatus `json:"nodes"`
}

// nodeStatus is the JSON form of one node's replica.NodeStats.
type nodeStatus struct {
	Name         string `json:"name"`
	Role         string `json:"role"`
	ObservedRole string `json:"observed_role"`
	RoleMismatch bool   `json:"role_mismatch"`
	Healthy      bool   `json:"healthy"`
	LastError    string `json:"last_error,omitempty"`
	// LastErrorAt is when LastError happened (RFC 3339).
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
	LSN         string     `json:"lsn"`
	LagBytes    uint64     `json:"lag_bytes"`
	LagSeconds  float64    `json:"lag_seconds"` // -1 when unknown
	Fresh       bool       `json:"fresh"`
	Breaker     string     `json:"breaker"`
	PoolInUse   int        `json:"pool_in_use"`
	PoolIdle    int        `json:"pool_idle"`
	PoolMax     int        `json:"pool_max"`
	PoolWaiting int        `json:"pool_waiting"`
	// Connections the pool opened, and closed for pool.max_lifetime and
	// pool.idle_timeout.
	PoolOpened         uint64  `json:"pool_opened"`
	PoolClosedLifetime uint64  `json:"pool_closed_lifetime"`
	PoolClosedIdle     uint64  `json:"pool_closed_idle"`
	AcquireTimeouts    uint64  `json:"acquire_timeouts"`
	LatencySeconds     float64 `json:"latency_ewma_seconds"`
	Picks              uint64  `json:"picks"`
	Fallbacks          uint64  `json:"fallbacks"`
	Failures           uint64  `json:"failures"`
}

func nodeStatuses(stats []replica.NodeStats) []nodeStatus {
	out := make([]nodeStatus, 0, len(stats))
	for _, n := range stats {
		lag := n.LagTime.Seconds()
		if n.LagTime == math.MaxInt64 {
			lag = -1
		}
		out = append(out, nodeStatus{
			Name: n.Name, Role: n.ConfiguredRole.String(), ObservedRole: n.ObservedRole.String(),
			RoleMismatch: n.RoleMismatch, Healthy: n.Healthy, LastError: n.LastError, LastErrorAt: timeOrNil(n.LastErrorAt), LSN: n.LSN.String(),
			LagBytes: n.LagBytes, LagSeconds: lag, Fresh: n.Fresh, Breaker: n.Breaker.String(),
			PoolInUse: n.Pool.InUse, PoolIdle: n.Pool.Idle, PoolMax: n.Pool.Max, PoolWaiting: n.Pool.Waiting,
			PoolOpened: n.Pool.Opened, PoolClosedLifetime: n.Pool.ClosedLifetime, PoolClosedIdle: n.Pool.ClosedIdle, AcquireTimeouts: n.AcquireTimeouts,
			LatencySeconds: n.Latency.Seconds(), Picks: n.Picks, Fallbacks: n.Fallbacks, Failures: n.Failures,
		})
	}
	return out
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status --config FILE [flags]", `Shows every node of every shard: configured and observed role, health, lag
(WAL bytes and replay time), breaker state and pool use. Reads a running
proxy's view from its status address when it answers; otherwise probes the
nodes directly (pools and breakers are then those of the probe).`, stderr)
	cfgPath := fs.String("config", ".dbproxy/dbproxy.toml", "config file")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	rep, err := proxyStatus(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "no running proxy answered on its status address (%v); probing the nodes directly\n", err)
		rep, err = probeStatus(ctx, cfg.WithFilesIn(filepath.Dir(*cfgPath)))
		if err != nil {
			return err
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printStatus(stdout, rep)
	return nil
}

// proxyStatus reads /status from the proxy the config describes.
func proxyStatus(ctx context.Context, cfg *config.Config) (*statusReport, error) {
	if cfg.Server.StatusListen == "" {
		return nil, fmt.Errorf("no status address configured")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+cfg.Server.StatusListen+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status endpoint: %s", resp.Status)
	}
	var rep statusReport
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return nil, fmt.Errorf("status endpoint: %w", err)
	}
	return &rep, nil
}

// probeStatus builds a replica set per shard, lets it probe once, and
// reports what it saw.
func probeStatus(ctx context.Context, cfg *config.Config) (*statusReport, error) {
	if len(cfg.Users) == 0 || len(cfg.Server.Databases) == 0 {
		return nil, fmt.Errorf("config has no user or database to probe with")
	}
	rep := &statusReport{Source: "probe", Time: time.Now()}
	for _, s := range cfg.Shards {
		rc, err := cfg.ReplicaConfig(s.Name, cfg.Users[0].Name, cfg.Server.Databases[0])
		if err != nil {
			return nil, err
		}
		set, err := replica.NewSet(ctx, rc)
		if err != nil {
			return nil, fmt.Errorf("shard %s: %w", s.Name, err)
		}
		rep.Shards = append(rep.Shards, shardStatus{Name: s.Name, Nodes: nodeStatuses(set.Stats())})
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		err = set.Close(cctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("shard %s: %w", s.Name, err)
		}
	}
	return rep, nil
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// lastError is n's last probe error for the table, with how long before
// the report it happened (an old error of a node healthy since is history).
func lastError(n nodeStatus, now time.Time) string {
	if n.LastError == "" || n.LastErrorAt == nil {
		return n.LastError
	}
	return fmt.Sprintf("%s ago: %s", now.Sub(*n.LastErrorAt).Round(time.Second), n.LastError)
}

func printStatus(w io.Writer, rep *statusReport) {
	fmt.Fprintf(w, "source: %s at %s\n", rep.Source, rep.Time.Format(time.RFC3339))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tNODE\tROLE\tOBSERVED\tHEALTH\tLAG BYTES\tLAG TIME\tBREAKER\tPOOL IN-USE/IDLE/MAX\tPICKS\tLAST ERROR")
	for _, s := range rep.Shards {
		for _, n := range s.Nodes {
			health := "up"
			if !n.Healthy {
				health = "DOWN"
			}
			observed := n.ObservedRole
			if n.RoleMismatch {
				observed += " (MISMATCH)"
			}
			lagTime := "unknown"
			if n.LagSeconds >= 0 {
				lagTime = time.Duration(n.LagSeconds * float64(time.Second)).Round(time.Millisecond).String()
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d/%d/%d\t%d\t%s\n",
				s.Name, n.Name, n.Role, observed, health, n.LagBytes, lagTime, n.Breaker,
				n.PoolInUse, n.PoolIdle, n.PoolMax, n.Picks, lastError(n, rep.Time))
		}
	}
	tw.Flush()
	if len(rep.Clients) > 0 {
		fmt.Fprintf(w, "clients by state: %v (deep idle: %d)\n", rep.Clients, rep.DeepIdle)
	}
	if rep.ListenChannels > 0 {
		fmt.Fprintf(w, "LISTEN channels: %d\n", rep.ListenChannels)
	}
	if rep.ReadRetries > 0 {
		fmt.Fprintf(w, "reads sent again after their node failed: %d\n", rep.ReadRetries)
	}
	if rep.ClientsGoneMidQuery > 0 {
		fmt.Fprintf(w, "queries cancelled because their client disconnected: %d\n", rep.ClientsGoneMidQuery)
	}
}
