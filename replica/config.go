package replica

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// NodeConfig describes one PostgreSQL server of a replica set.
type NodeConfig struct {
	// Name identifies the node in errors, stats, hooks and logs. Unique within a Set.
	Name string
	// ConnString is a libpq-style connection string or URL, including user,
	// password and dbname. It is used for pooled connections and probes.
	ConnString string
	// Role is the configured role: exactly one node of a Set is RolePrimary.
	Role Role
	// Weight is the relative share for the weighted policies. 0 means 1.
	Weight int
	// PoolSize bounds the number of backend connections to this node
	// (leases in use plus idle). 0 means Config.PoolSize.
	PoolSize int
}

// BreakerConfig configures the per-node circuit breaker. Only connection
// level failures (network errors, timeouts, SQLSTATE classes 08 and 53,
// 57P01-57P03) count as failures; other server errors count as successes.
type BreakerConfig struct {
	// ConsecutiveFailures opens the breaker after this many failures in a row.
	ConsecutiveFailures int
	// FailureRate (0 < r <= 1) opens the breaker when the share of failures
	// within Window reaches it, once at least MinRequests outcomes were seen.
	// 0 disables the rate rule.
	FailureRate float64
	// Window is the sliding window of the rate rule.
	Window time.Duration
	// MinRequests is the minimum number of outcomes in Window before the rate rule applies.
	MinRequests int
	// OpenFor is how long the breaker stays open before it lets trials through.
	OpenFor time.Duration
	// HalfOpenRequests is the number of concurrent trial leases allowed while
	// half-open, and the number of consecutive successes that close the breaker.
	HalfOpenRequests int
}

// Hooks are optional callbacks for metrics and logs. They run synchronously
// on the goroutine that observed the change (a probe or a request path),
// possibly concurrently with each other: they must be safe for concurrent
// use, fast, must not block, and must not call Close.
type Hooks struct {
	// OnHealthChange is called when a node's health flips. err is the probe
	// failure that made it unhealthy (nil when it became healthy).
	OnHealthChange func(node string, healthy bool, err error)
	// OnRoleMismatch is called when a probe first observes a role other than
	// the configured one (and again after it was resolved and recurs).
	OnRoleMismatch func(node string, configured, observed Role)
	// OnBreakerChange is called on every breaker state transition.
	OnBreakerChange func(node string, from, to BreakerState)
}

// Config configures a Set. NewSet copies it; start from DefaultConfig.
type Config struct {
	// Nodes lists the primary and its standbys.
	Nodes []NodeConfig
	// Policy balances reads over eligible standbys.
	Policy Policy
	// PoolSize is the default per-node pool bound.
	PoolSize int
	// HealthInterval is the period of the health probe (fresh connection + trivial query).
	HealthInterval time.Duration
	// LagInterval is the period of the lag/role probe on a kept-open probe connection.
	LagInterval time.Duration
	// LagMaxAge: a standby whose last successful lag measurement is older
	// than this is not fresh (the lag probe itself is failing or stuck).
	// 0 means 5 × LagInterval + ProbeTimeout.
	LagMaxAge time.Duration
	// ProbeTimeout bounds every probe (connect + query).
	ProbeTimeout time.Duration
	// ConnectTimeout bounds establishing a pooled connection (in addition to the caller's ctx).
	ConnectTimeout time.Duration
	// MaxStaleness is the default staleness bound for reads (PickRequest.MaxStaleness == 0).
	MaxStaleness time.Duration
	// CatchUpWait is how long Pick waits for a standby to become fresh enough
	// before falling back to the primary. 0 disables waiting.
	CatchUpWait time.Duration
	// AcquireTimeout is how long Acquire waits for a free slot in an
	// exhausted pool before failing with ErrPoolExhausted (SQLSTATE 53300).
	AcquireTimeout time.Duration
	// MaxConnLifetime closes a pooled connection this long after it was
	// opened (less up to a tenth, per connection, so that connections
	// opened together are not all replaced at once): when it is given
	// back, or while it waits idle. A lease in use is never interrupted.
	// 0 keeps connections for as long as they work.
	MaxConnLifetime time.Duration
	// MaxConnIdleTime closes a pooled connection that has waited idle this
	// long, shrinking the pool after a burst. 0 keeps idle connections.
	MaxConnIdleTime time.Duration
	// Breaker configures the per-node circuit breakers.
	Breaker BreakerConfig
	// Logger receives state changes (health, role mismatch, breaker). nil discards.
	Logger *slog.Logger
	// Hooks are optional callbacks for the same events.
	Hooks Hooks
}

// DefaultConfig returns the defaults; callers fill in Nodes.
func DefaultConfig() Config {
	return Config{
		Policy:          RoundRobin,
		PoolSize:        10,
		HealthInterval:  time.Second,
		LagInterval:     100 * time.Millisecond,
		ProbeTimeout:    time.Second,
		ConnectTimeout:  5 * time.Second,
		MaxStaleness:    time.Second,
		CatchUpWait:     50 * time.Millisecond,
		AcquireTimeout:  time.Second,
		MaxConnLifetime: time.Hour,
		MaxConnIdleTime: 10 * time.Minute,
		Breaker: BreakerConfig{
			ConsecutiveFailures: 5,
			FailureRate:         0.5,
			Window:              10 * time.Second,
			MinRequests:         20,
			OpenFor:             5 * time.Second,
			HalfOpenRequests:    3,
		},
	}
}

// Validate reports every problem with c in one error (SQLSTATE-free: this is
// an operator error, not a client one). It parses each ConnString.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("replica config: "+format, args...)) }
	if len(c.Nodes) == 0 {
		bad("no nodes")
	}
	primaries := 0
	names := make(map[string]bool, len(c.Nodes))
	nodeNames := make([]string, 0, len(c.Nodes))
	for i, n := range c.Nodes {
		nodeNames = append(nodeNames, n.Name)
		switch {
		case n.Name == "":
			bad("node %d: empty name", i)
		case names[n.Name]:
			bad("node %q: duplicate name", n.Name)
		}
		names[n.Name] = true
		switch n.Role {
		case RolePrimary:
			primaries++
		case RoleStandby:
		default:
			bad("node %q: role must be primary or standby, got %s", n.Name, n.Role)
		}
		if n.Weight < 0 {
			bad("node %q: negative weight %d", n.Name, n.Weight)
		}
		if _, err := pgconn.ParseConfig(n.ConnString); err != nil {
			bad("node %q: connection string: %v", n.Name, err)
		}
	}
	if len(c.Nodes) > 0 && primaries != 1 {
		bad("want exactly one primary, got %d", primaries)
	}
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"HealthInterval", c.HealthInterval}, {"LagInterval", c.LagInterval},
		{"ProbeTimeout", c.ProbeTimeout}, {"ConnectTimeout", c.ConnectTimeout},
	}
	for _, p := range positive {
		if p.d <= 0 {
			bad("%s must be > 0, got %v", p.name, p.d)
		}
	}
	if c.LagMaxAge < 0 {
		bad("LagMaxAge must be >= 0, got %v", c.LagMaxAge)
	}
	errs = append(errs, c.Tuning().validate(nodeNames)...)
	return errors.Join(errs...)
}

// Tuning is the part of a Set's Config that Set.Reconfigure changes while
// the Set is in use; the fields mean what Config's of the same names mean.
type Tuning struct {
	Policy   Policy
	PoolSize int
	// NodePoolSizes bounds the pools of the nodes it names (by
	// NodeConfig.Name); 0 or absent means PoolSize.
	NodePoolSizes   map[string]int
	MaxStaleness    time.Duration
	CatchUpWait     time.Duration
	AcquireTimeout  time.Duration
	MaxConnLifetime time.Duration
	MaxConnIdleTime time.Duration
	Breaker         BreakerConfig
}

// Tuning returns c's Tuning (NodePoolSizes from the nodes' PoolSize).
func (c Config) Tuning() Tuning {
	t := Tuning{
		Policy: c.Policy, PoolSize: c.PoolSize, NodePoolSizes: make(map[string]int, len(c.Nodes)),
		MaxStaleness: c.MaxStaleness, CatchUpWait: c.CatchUpWait, AcquireTimeout: c.AcquireTimeout,
		MaxConnLifetime: c.MaxConnLifetime, MaxConnIdleTime: c.MaxConnIdleTime, Breaker: c.Breaker,
	}
	for _, n := range c.Nodes {
		if n.PoolSize != 0 {
			t.NodePoolSizes[n.Name] = n.PoolSize
		}
	}
	return t
}

// poolSize is the bound of node's pool under t.
func (t Tuning) poolSize(node string) int {
	if n := t.NodePoolSizes[node]; n != 0 {
		return n
	}
	return t.PoolSize
}

// validate reports every problem of t for a Set of the named nodes: each
// needs a positive pool bound, and NodePoolSizes may name no other node.
func (t Tuning) validate(nodes []string) []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("replica config: "+format, args...)) }
	if int(t.Policy) >= len(policyNames) {
		bad("unknown policy %d", t.Policy)
	}
	for _, name := range nodes {
		switch n := t.NodePoolSizes[name]; {
		case n < 0:
			bad("node %q: negative pool size %d", name, n)
		case n == 0 && t.PoolSize <= 0:
			bad("node %q: pool size 0 and no default PoolSize", name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(t.NodePoolSizes)) {
		if !slices.Contains(nodes, name) {
			bad("NodePoolSizes: no node %q", name)
		}
	}
	if t.PoolSize < 0 {
		bad("negative PoolSize %d", t.PoolSize)
	}
	for _, p := range []struct {
		name string
		d    time.Duration
	}{{"MaxStaleness", t.MaxStaleness}, {"AcquireTimeout", t.AcquireTimeout}, {"Breaker.OpenFor", t.Breaker.OpenFor}} {
		if p.d <= 0 {
			bad("%s must be > 0, got %v", p.name, p.d)
		}
	}
	for _, p := range []struct {
		name string
		d    time.Duration
	}{{"CatchUpWait", t.CatchUpWait}, {"MaxConnLifetime", t.MaxConnLifetime}, {"MaxConnIdleTime", t.MaxConnIdleTime}} {
		if p.d < 0 {
			bad("%s must be >= 0, got %v", p.name, p.d)
		}
	}
	b := t.Breaker
	if b.ConsecutiveFailures <= 0 {
		bad("Breaker.ConsecutiveFailures must be > 0, got %d", b.ConsecutiveFailures)
	}
	if b.FailureRate < 0 || b.FailureRate > 1 {
		bad("Breaker.FailureRate must be within [0, 1], got %v", b.FailureRate)
	}
	if b.FailureRate > 0 && (b.Window <= 0 || b.MinRequests <= 0) {
		bad("Breaker.Window and Breaker.MinRequests must be > 0 when FailureRate is set")
	}
	if b.HalfOpenRequests <= 0 {
		bad("Breaker.HalfOpenRequests must be > 0, got %d", b.HalfOpenRequests)
	}
	return errs
}

func (c Config) lagMaxAge() time.Duration {
	if c.LagMaxAge > 0 {
		return c.LagMaxAge
	}
	return 5*c.LagInterval + c.ProbeTimeout
}
