package cache

import (
	"sort"
	"time"
)

// Stats is a snapshot of the cache's counters, for metrics and
// `dbproxy status`. Counters are totals since New.
type Stats struct {
	Hits   uint64 // Get/GetOrFill served from the cache
	Misses uint64 // Get/GetOrFill not served from the cache
	Fills  uint64 // fill functions run
	// FillErrors counts fills that returned an error.
	FillErrors uint64
	// Shared counts callers that got the result of another caller's fill.
	Shared uint64
	// Stored counts fill results handed to the store (it may still reject
	// them under its admission policy).
	Stored uint64
	// NotAdmitted counts misses not filled because the key had not missed
	// before (Config.FillAfterMisses).
	NotAdmitted uint64
	// Bypassed counts reads of tables that are not cacheable.
	Bypassed uint64
	// TooLarge counts fill results over MaxEntryBytes.
	TooLarge uint64
	// Raced counts fill results not stored because the stream went down or
	// a table was invalidated while the fill ran.
	Raced uint64
	// Stale counts entries found invalid on Get and dropped.
	Stale uint64
	// Evictions counts entries evicted for space or TTL.
	Evictions uint64
	// Invalidations counts table invalidations applied (one per table per
	// commit or Invalidate argument).
	Invalidations uint64
	// Bytes is the cost currently held by the store.
	Bytes int64
	// MaxBytes is the configured bound.
	MaxBytes int64
	// InvalidationLag is the time from a primary's commit timestamp to the
	// invalidation being applied, over every shard.
	InvalidationLag LagStats
	// Streams has one element per shard with a change stream, by name.
	Streams []StreamStats
}

// LagStats summarises invalidation lag.
type LagStats struct {
	Last, Max, EWMA time.Duration
}

// StreamStats describes one shard's change stream.
type StreamStats struct {
	Shard string
	Up    bool
	// AppliedLSN is the position up to which every commit is applied.
	AppliedLSN uint64
	// Since is when the stream last went up or down.
	Since time.Time
	// Breaks counts how often the stream broke (not counting stops).
	Breaks uint64
	// Commits counts committed transactions applied.
	Commits   uint64
	Slot      string
	LastError string
	Lag       LagStats
}

// Stats returns a snapshot. Safe for concurrent use; does not block on I/O.
func (c *Cache) Stats() Stats {
	st := Stats{
		Hits:          c.hits.Load(),
		Misses:        c.misses.Load(),
		Fills:         c.fills.Load(),
		FillErrors:    c.fillErrors.Load(),
		Shared:        c.shared.Load(),
		Stored:        c.stored.Load(),
		Bypassed:      c.bypass.Load(),
		NotAdmitted:   c.notAdmitted.Load(),
		TooLarge:      c.tooLarge.Load(),
		Raced:         c.raced.Load(),
		Stale:         c.stale.Load(),
		Evictions:     c.evictions.Load(),
		Invalidations: c.inval.Load(),
		MaxBytes:      c.cfg.MaxBytes,
	}
	if !c.closed.Load() {
		st.Bytes = c.store.MaxCost() - c.store.RemainingCost()
	}
	c.lagMu.Lock()
	st.InvalidationLag = LagStats{Last: c.lag.Last, Max: c.lag.Max, EWMA: c.lag.EWMA}
	c.lagMu.Unlock()
	c.mu.Lock()
	shards := make([]*shardState, 0, len(c.streams))
	for name := range c.streams {
		shards = append(shards, c.shards[name])
	}
	c.mu.Unlock()
	for _, sh := range shards {
		sh.statsMu.Lock()
		st.Streams = append(st.Streams, StreamStats{
			Shard:      sh.name,
			Up:         sh.up(),
			AppliedLSN: sh.applied.Load(),
			Since:      sh.since,
			Breaks:     sh.breaks,
			Commits:    sh.commits,
			Slot:       sh.slot,
			LastError:  sh.lastErr,
			Lag:        LagStats{Last: sh.lag.Last, Max: sh.lag.Max, EWMA: sh.lag.EWMA},
		})
		sh.statsMu.Unlock()
	}
	sort.Slice(st.Streams, func(i, j int) bool { return st.Streams[i].Shard < st.Streams[j].Shard })
	return st
}
