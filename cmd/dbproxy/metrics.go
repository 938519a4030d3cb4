package main

import (
	"math"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/prometheus/client_golang/prometheus"
)

// collector exposes the proxy's and replica sets' Stats snapshots as
// Prometheus metrics; it reads them at scrape time.
type collector struct{ rp *runningProxy }

var (
	descNodeUp       = prometheus.NewDesc("dbproxy_node_up", "1 when the node's last health probe succeeded.", []string{"shard", "node", "role"}, nil)
	descRoleMismatch = prometheus.NewDesc("dbproxy_node_role_mismatch", "1 when the observed role differs from the configured one.", []string{"shard", "node"}, nil)
	descLagBytes     = prometheus.NewDesc("dbproxy_node_lag_bytes", "Primary WAL position minus the standby's replay position.", []string{"shard", "node"}, nil)
	descLagSeconds   = prometheus.NewDesc("dbproxy_node_lag_seconds", "Replay lag in time (NaN when unknown).", []string{"shard", "node"}, nil)
	descBreaker      = prometheus.NewDesc("dbproxy_node_breaker_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open.", []string{"shard", "node"}, nil)
	descPool         = prometheus.NewDesc("dbproxy_node_pool_connections", "Backend connections by state.", []string{"shard", "node", "state"}, nil)
	descPicks        = prometheus.NewDesc("dbproxy_node_picks_total", "Reads routed to the node.", []string{"shard", "node"}, nil)
	descFallbacks    = prometheus.NewDesc("dbproxy_node_fallbacks_total", "Reads that fell back to the primary.", []string{"shard", "node"}, nil)
	descFailures     = prometheus.NewDesc("dbproxy_node_failures_total", "Connection-level failures.", []string{"shard", "node"}, nil)
	descPoolOpened   = prometheus.NewDesc("dbproxy_node_pool_opened_total", "Backend connections the node's pool opened.", []string{"shard", "node"}, nil)
	descPoolClosed   = prometheus.NewDesc("dbproxy_node_pool_expired_total", "Backend connections closed for pool.max_lifetime (reason lifetime) or pool.idle_timeout (reason idle).", []string{"shard", "node", "reason"}, nil)
	descAcqTimeouts  = prometheus.NewDesc("dbproxy_node_acquire_timeouts_total", "Requests refused with 53300: no backend connection freed up within pool.acquire_timeout.", []string{"shard", "node"}, nil)
	descClients      = prometheus.NewDesc("dbproxy_clients", "Client connections by state.", []string{"state"}, nil)
	descAccepted     = prometheus.NewDesc("dbproxy_clients_accepted_total", "Client connections accepted.", nil, nil)
	descRejected     = prometheus.NewDesc("dbproxy_clients_rejected_total", "Client connections refused before ReadyForQuery.", nil, nil)
	descIdleTxEnded  = prometheus.NewDesc("dbproxy_clients_idle_transaction_timeouts_total", "Client sessions ended (25P03) for idling inside a transaction longer than server.idle_transaction_timeout.", nil, nil)
	descDeepIdle     = prometheus.NewDesc("dbproxy_clients_deep_idle", "Idle client connections that gave their protocol buffers back.", nil, nil)
	descListen       = prometheus.NewDesc("dbproxy_listen_channels", "Channels clients LISTEN on through the proxy.", nil, nil)
	descReadRetries  = prometheus.NewDesc("dbproxy_read_retries_total", "Reads outside a transaction sent again to another node because theirs failed before answering.", nil, nil)
	descClientsGone  = prometheus.NewDesc("dbproxy_clients_gone_mid_query_total", "Client connections found closed while their query ran (server.client_check_interval); the query was cancelled on its backend.", nil, nil)
	descCommitLSN    = prometheus.NewDesc("dbproxy_commit_lsn_reads_total", "Commit positions read for causal tokens, by how (piggybacked: in the committing request's flush; query: a round trip of its own).", []string{"how"}, nil)
	descCacheOps     = prometheus.NewDesc("dbproxy_cache_operations_total", "Result cache operations by kind (hit, miss, fill, eviction, invalidation, raced, too_large, not_admitted).", []string{"op"}, nil)
	descCacheBytes   = prometheus.NewDesc("dbproxy_cache_bytes", "Bytes held by the result cache.", nil, nil)
	descCacheLag     = prometheus.NewDesc("dbproxy_cache_invalidation_lag_seconds", "Time from a primary's commit to the cache invalidation (EWMA).", nil, nil)
	descCacheStream  = prometheus.NewDesc("dbproxy_cache_stream_up", "1 while the shard's change stream is up (the cache serves the shard only then).", []string{"shard"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNodeUp, descRoleMismatch, descLagBytes, descLagSeconds, descBreaker,
		descPool, descPicks, descFallbacks, descFailures, descPoolOpened, descPoolClosed, descAcqTimeouts, descClients, descAccepted, descRejected, descIdleTxEnded, descDeepIdle, descListen, descReadRetries, descClientsGone, descCommitLSN,
		descCacheOps, descCacheBytes, descCacheLag, descCacheStream} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for _, si := range c.rp.topo.Shards() {
		set := c.rp.sets[si.ID]
		if set == nil {
			continue
		}
		for _, n := range set.Stats() {
			gauge(descNodeUp, b2f(n.Healthy), si.Name, n.Name, n.ConfiguredRole.String())
			gauge(descRoleMismatch, b2f(n.RoleMismatch), si.Name, n.Name)
			gauge(descLagBytes, float64(n.LagBytes), si.Name, n.Name)
			lag := n.LagTime.Seconds()
			if n.LagTime == math.MaxInt64 {
				lag = math.NaN()
			}
			gauge(descLagSeconds, lag, si.Name, n.Name)
			gauge(descBreaker, float64(breakerValue(n.Breaker)), si.Name, n.Name)
			gauge(descPool, float64(n.Pool.InUse), si.Name, n.Name, "in_use")
			gauge(descPool, float64(n.Pool.Idle), si.Name, n.Name, "idle")
			gauge(descPool, float64(n.Pool.Waiting), si.Name, n.Name, "waiting")
			counter(descPicks, n.Picks, si.Name, n.Name)
			counter(descFallbacks, n.Fallbacks, si.Name, n.Name)
			counter(descFailures, n.Failures, si.Name, n.Name)
			counter(descPoolOpened, n.Pool.Opened, si.Name, n.Name)
			counter(descPoolClosed, n.Pool.ClosedLifetime, si.Name, n.Name, "lifetime")
			counter(descPoolClosed, n.Pool.ClosedIdle, si.Name, n.Name, "idle")
			counter(descAcqTimeouts, n.AcquireTimeouts, si.Name, n.Name)
		}
	}
	st := c.rp.srv.Stats()
	for state, n := range st.ByState {
		gauge(descClients, float64(n), state)
	}
	counter(descAccepted, st.Accepted)
	counter(descRejected, st.Rejected)
	counter(descIdleTxEnded, st.IdleTransactionTimeouts)
	counter(descReadRetries, st.ReadRetries)
	counter(descClientsGone, st.ClientsGoneMidQuery)
	gauge(descDeepIdle, float64(st.DeepIdle))
	gauge(descListen, float64(st.ListenChannels))
	counter(descCommitLSN, st.CommitLSNPiggybacked, "piggybacked")
	counter(descCommitLSN, st.CommitLSNQueries, "query")
	cc := c.rp.cache.Load()
	if cc == nil {
		return
	}
	cs := cc.Stats()
	for op, v := range map[string]uint64{"hit": cs.Hits, "miss": cs.Misses, "fill": cs.Fills, "eviction": cs.Evictions,
		"invalidation": cs.Invalidations, "raced": cs.Raced, "too_large": cs.TooLarge, "not_admitted": cs.NotAdmitted} {
		counter(descCacheOps, v, op)
	}
	gauge(descCacheBytes, float64(cs.Bytes))
	gauge(descCacheLag, cs.InvalidationLag.EWMA.Seconds())
	for _, s := range cs.Streams {
		gauge(descCacheStream, b2f(s.Up), s.Shard)
	}
}

func breakerValue(s replica.BreakerState) int {
	switch s {
	case replica.BreakerOpen:
		return 1
	case replica.BreakerHalfOpen:
		return 2
	}
	return 0
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
