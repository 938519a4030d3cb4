package config

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dbproxy/dbproxy/cache"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/shard"
)

// TopologySpec returns the shard topology the config describes: shards and
// their nodes, the sharded tables with their key columns and types, the
// default shard and the ring's virtual nodes. The version is 0 (a static
// config has no coordinator revision). c must be valid.
func (c *Config) TopologySpec() (shard.TopologySpec, error) {
	spec := shard.TopologySpec{
		DefaultShard: c.Routing.DefaultShard,
		VirtualNodes: c.Routing.VirtualNodes,
	}
	for _, s := range c.Shards {
		ss := shard.ShardSpec{Name: s.Name, Weight: s.Weight}
		for _, n := range s.Nodes {
			role := shard.RoleStandby
			if n.Role == RolePrimary {
				role = shard.RolePrimary
			}
			ss.Nodes = append(ss.Nodes, shard.NodeSpec{Name: n.Name, Host: n.Host, Port: n.Port, Role: role, Weight: n.Weight})
		}
		spec.Shards = append(spec.Shards, ss)
	}
	for i, t := range c.Tables {
		ts := shard.TableSpec{Name: CanonicalTableName(t.Name), Columns: append([]string(nil), t.ShardKey...)}
		for _, kt := range t.KeyTypes {
			st, err := shard.ParseKeyType(kt.String())
			if err != nil {
				return shard.TopologySpec{}, fmt.Errorf("tables[%d].key_types: %w", i, err)
			}
			ts.Types = append(ts.Types, st)
		}
		spec.Tables = append(spec.Tables, ts)
	}
	return spec, nil
}

// Topology builds the immutable shard.Topology of TopologySpec.
func (c *Config) Topology() (*shard.Topology, error) {
	spec, err := c.TopologySpec()
	if err != nil {
		return nil, err
	}
	return shard.NewTopology(spec)
}

// ReplicaConfig returns the replica.Config of the shard named shardName, with
// backend connections logging in as user to database db (the user's backend
// password is taken from the config). c must be valid.
func (c *Config) ReplicaConfig(shardName, user, db string) (replica.Config, error) {
	s, ok := c.Shard(shardName)
	if !ok {
		return replica.Config{}, fmt.Errorf("config: unknown shard %q", shardName)
	}
	u, ok := c.User(user)
	if !ok {
		return replica.Config{}, fmt.Errorf("config: unknown user %q", user)
	}
	rc := replica.DefaultConfig()
	c.tune(&rc)
	rc.HealthInterval = time.Duration(c.Routing.HealthInterval)
	rc.LagInterval = time.Duration(c.Routing.LagInterval)
	rc.ProbeTimeout = time.Duration(c.Routing.ProbeTimeout)
	for _, n := range s.Nodes {
		role := replica.RoleStandby
		if n.Role == RolePrimary {
			role = replica.RolePrimary
		}
		rc.Nodes = append(rc.Nodes, replica.NodeConfig{
			Name:       n.Name,
			ConnString: c.ConnURL(n, u.Name, u.BackendPasswordOrPlain(), db),
			Role:       role,
			Weight:     n.Weight,
			PoolSize:   c.NodePoolSize(n),
		})
	}
	return rc, rc.Validate()
}

// ReplicaTuning returns the part of shard shardName's replica.Config that
// replica.Set.Reconfigure changes on a reload (the reloadable keys of
// [pool], [routing], [breaker] and the nodes' pool_size). c must be valid.
func (c *Config) ReplicaTuning(shardName string) (replica.Tuning, error) {
	s, ok := c.Shard(shardName)
	if !ok {
		return replica.Tuning{}, fmt.Errorf("config: unknown shard %q", shardName)
	}
	rc := replica.DefaultConfig()
	c.tune(&rc)
	t := rc.Tuning()
	for _, n := range s.Nodes {
		t.NodePoolSizes[n.Name] = c.NodePoolSize(n)
	}
	return t, nil
}

// tune sets rc's reloadable fields (replica.Tuning) from c.
func (c *Config) tune(rc *replica.Config) {
	rc.Policy = c.Routing.Balance.replicaPolicy()
	rc.PoolSize = c.Pool.Size
	rc.AcquireTimeout = time.Duration(c.Pool.AcquireTimeout)
	rc.MaxConnLifetime = time.Duration(c.Pool.MaxLifetime)
	rc.MaxConnIdleTime = time.Duration(c.Pool.IdleTimeout)
	rc.MaxStaleness = time.Duration(c.Routing.MaxStaleness)
	rc.CatchUpWait = time.Duration(c.Routing.CatchUpWait)
	rc.Breaker = replica.BreakerConfig{
		ConsecutiveFailures: c.Breaker.Failures,
		FailureRate:         c.Breaker.ErrorRate,
		Window:              time.Duration(c.Breaker.Window),
		MinRequests:         c.Breaker.MinRequests,
		OpenFor:             time.Duration(c.Breaker.OpenFor),
		HalfOpenRequests:    c.Breaker.HalfOpenTrials,
	}
}

// WithFilesIn returns a copy of c whose relative file paths
// (server.tls_cert and tls_key; backend.sslrootcert, sslcert and sslkey)
// are taken relative to dir, the directory of the file the config was
// read from. sslrootcert = "system" is kept as it is.
func (c *Config) WithFilesIn(dir string) *Config {
	n := c.Clone()
	rel := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	rel(&n.Server.TLSCert)
	rel(&n.Server.TLSKey)
	b := &n.Backend
	rel(&b.SSLCert)
	rel(&b.SSLKey)
	if b.SSLRootCert != "system" {
		rel(&b.SSLRootCert)
	}
	return n
}

// ConnURL is the PostgreSQL URL the proxy uses to reach node n as user with
// password, to database db, with the [backend] TLS parameters (file paths
// as they are in c).
func (c *Config) ConnURL(n Node, user, password, db string) string {
	q := url.Values{}
	b := c.Backend
	for k, v := range map[string]string{"sslmode": b.SSLMode, "sslrootcert": b.SSLRootCert, "sslcert": b.SSLCert, "sslkey": b.SSLKey} {
		if v != "" {
			q.Set(k, v)
		}
	}
	u := url.URL{
		Scheme: "postgres",
		User:   url.UserPassword(user, password),
		Path:   "/" + db,
	}
	if n.IsSocket() {
		// A Unix-socket directory goes in the query, as libpq reads it.
		q.Set("host", n.Host)
		q.Set("port", strconv.Itoa(n.Port))
	} else {
		u.Host = joinHostPort(n.Host, n.Port)
	}
	// pgconn does not read '+' in a query value as a space: encode it as
	// %20 (a literal '+' is %2B).
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	return u.String()
}

func (p BalancePolicy) replicaPolicy() replica.Policy {
	switch p {
	case WeightedRoundRobin:
		return replica.WeightedRoundRobin
	case LeastConnections:
		return replica.LeastConnections
	case WeightedLeastConnections:
		return replica.WeightedLeastConnections
	case LeastLatency:
		return replica.LeastLatency
	case Hash:
		return replica.Hash
	default:
		return replica.RoundRobin
	}
}

// CacheConfig returns the cache.Config of the [cache] table.
func (c *Config) CacheConfig() cache.Config {
	cc := cache.DefaultConfig()
	cc.MaxBytes = c.Cache.MaxBytes
	cc.MaxEntryBytes = c.Cache.MaxEntryBytes
	cc.TTL = time.Duration(c.Cache.TTL)
	cc.IncludeTables = append([]string(nil), c.Cache.IncludeTables...)
	cc.ExcludeTables = append([]string(nil), c.Cache.ExcludeTables...)
	cc.FillAfterMisses = c.Cache.FillAfterMisses
	return cc
}

// CacheStreamConfig returns the change-stream config of the shard named
// shardName for the first database.
func (c *Config) CacheStreamConfig(shardName string) (cache.StreamConfig, error) {
	if len(c.Server.Databases) == 0 {
		return cache.StreamConfig{}, fmt.Errorf("config: no database for the cache stream")
	}
	return c.CacheStreamConfigFor(shardName, c.Server.Databases[0])
}

// CacheStreamConfigFor returns the config of a change stream decoding
// database on the primary of the shard named shardName, reached as the
// first user (who needs the REPLICATION attribute, and CONNECT on the
// database). Its Shard is shardName; a stream of a database other than the
// first is watched under another name (proxy.CacheShard).
func (c *Config) CacheStreamConfigFor(shardName, database string) (cache.StreamConfig, error) {
	p, ok := c.Primary(shardName)
	if !ok {
		return cache.StreamConfig{}, fmt.Errorf("config: shard %q has no primary", shardName)
	}
	if len(c.Users) == 0 {
		return cache.StreamConfig{}, fmt.Errorf("config: no user for the cache stream")
	}
	sc := cache.DefaultStreamConfig()
	sc.Shard = shardName
	sc.ConnString = c.ConnURL(p, c.Users[0].Name, c.Users[0].BackendPasswordOrPlain(), database)
	return sc, sc.Validate()
}
