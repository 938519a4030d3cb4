package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/dgraph-io/ristretto/v2"
	"golang.org/x/sync/singleflight"
)

// Entry is a cached result as a front end replays it.
type Entry struct {
	// Value is the opaque encoded result the fill returned. It is shared by
	// every reader of the entry: never modify it.
	Value []byte
	// Tables are the tables the read declared, as passed to GetOrFill.
	Tables []string
	// Shard is the shard of the key.
	Shard string
	// FilledAtLSN is the change-stream position known when the fill
	// started; the fill read data at least that new (see FillMinLSN).
	FilledAtLSN uint64
	// FilledAt is when the fill started.
	FilledAt time.Time
}

// FillFunc runs the read on a backend and returns its encoded result. The
// returned slice is kept and shared: the fill must not reuse it. It must
// read from the primary or from a node whose replay LSN is at least
// FillMinLSN(ctx).
type FillFunc func(ctx context.Context) ([]byte, error)

type epochRef struct {
	ctr *atomic.Uint64
	v   uint64
}

type entry struct {
	key    string
	shard  *shardState
	state  uint64 // shard state word at fill start
	epochs []epochRef
	e      Entry
}

type fillKey struct{}

// FillMinLSN returns, inside a FillFunc, the LSN the backend it reads from
// must have replayed for the result to be at least as new as every
// invalidation the cache has applied; 0 outside a fill. A front end passes
// it as the minimum LSN when it picks a replica (the primary always
// qualifies). Filling from an older replica could store a value that an
// already applied invalidation should have removed.
func FillMinLSN(ctx context.Context) uint64 {
	v, _ := ctx.Value(fillKey{}).(uint64)
	return v
}

// Cache is a read-through cache of query results, invalidated by the
// change streams of the shard primaries. Safe for concurrent use.
type Cache struct {
	cfg    Config
	ttl    atomic.Int64 // of new entries; cfg.TTL until SetTTL
	log    *slog.Logger
	filter tableFilter
	store  *ristretto.Cache[string, *entry]
	sf     singleflight.Group

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	mu      sync.Mutex
	shards  map[string]*shardState
	streams map[string]*stream
	wg      sync.WaitGroup // stream goroutines

	lagMu sync.Mutex
	lag   lagStats

	door *doorkeeper // nil: fill on the first miss

	hits, misses, fills, fillErrors, shared, stored  atomic.Uint64
	bypass, tooLarge, raced, stale, evictions, inval atomic.Uint64
	notAdmitted                                      atomic.Uint64
}

// doorkeeperSlots is the size of the doorkeeper's table (a power of 2).
const doorkeeperSlots = 1 << 16

// doorkeeper remembers the hashes of keys that missed, one per slot
// (direct-mapped: a newer key takes an older one's slot), so that a key
// is filled only on its second miss while still remembered.
type doorkeeper struct{ slots []atomic.Uint64 }

// admit reports whether the key with hash h missed before (and is still
// remembered); otherwise it remembers it.
func (d *doorkeeper) admit(h uint64) bool {
	h |= 1 // 0 marks an empty slot
	s := &d.slots[h&(doorkeeperSlots-1)]
	if s.Load() == h {
		return true
	}
	s.Store(h)
	return false
}

// New builds a Cache. It starts ristretto's maintenance goroutines; Close
// stops them. Errors wrap ErrInvalidConfig.
func New(cfg Config) (*Cache, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.IncludeTables = append([]string(nil), cfg.IncludeTables...)
	cfg.ExcludeTables = append([]string(nil), cfg.ExcludeTables...)
	c := &Cache{
		cfg:     cfg,
		log:     cfg.Logger,
		filter:  newTableFilter(cfg.IncludeTables, cfg.ExcludeTables),
		shards:  make(map[string]*shardState),
		streams: make(map[string]*stream),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.ttl.Store(int64(cfg.TTL))
	if cfg.FillAfterMisses == 2 {
		c.door = &doorkeeper{slots: make([]atomic.Uint64, doorkeeperSlots)}
	}
	counters := cfg.NumCounters
	if counters == 0 {
		counters = max(cfg.MaxBytes/1024*10, 10_000)
	}
	store, err := ristretto.NewCache(&ristretto.Config[string, *entry]{
		NumCounters:        counters,
		MaxCost:            cfg.MaxBytes,
		BufferItems:        64,
		IgnoreInternalCost: true,
		OnEvict:            func(*ristretto.Item[*entry]) { c.evictions.Add(1) },
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	c.store = store
	return c, nil
}

// shard returns the state of a shard, creating it (down) if unknown.
func (c *Cache) shard(name string) *shardState {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.shards[name]
	if s == nil {
		s = newShardState(name)
		c.shards[name] = s
	}
	return s
}

// TTL returns the time to live of entries filled from now on.
func (c *Cache) TTL() time.Duration { return time.Duration(c.ttl.Load()) }

// SetTTL changes the time to live of entries filled from now on (a
// configuration reload); entries already cached keep theirs. ttl must be
// > 0 (else ErrInvalidConfig, and nothing changes).
func (c *Cache) SetTTL(ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("%w: TTL must be > 0, got %s", ErrInvalidConfig, ttl)
	}
	c.ttl.Store(int64(ttl))
	return nil
}

// Cacheable reports whether reads of tables may be cached under the
// include/exclude configuration. GetOrFill checks it too; a front end may
// call it first to skip building a Key.
func (c *Cache) Cacheable(tables []string) bool { return c.filter.allowed(tables) }

// Get returns the entry of key if it is valid: its shard's change stream
// has been up since the fill started, no table it read was invalidated
// since, its TTL has not passed, and the stream has applied every commit
// up to minLSN (a causal token; 0 for none). It never blocks on I/O and is
// safe for concurrent use. After Close it always misses.
func (c *Cache) Get(key Key, minLSN uint64) (Entry, bool) {
	e, ok := c.get(key, minLSN)
	if !ok {
		c.misses.Add(1)
		return Entry{}, false
	}
	c.hits.Add(1)
	return e.e, true
}

func (c *Cache) get(key Key, minLSN uint64) (*entry, bool) {
	if c.closed.Load() || key.enc == "" {
		return nil, false
	}
	e, ok := c.store.Get(key.enc)
	if !ok || e.key != key.enc {
		if minLSN > 0 {
			c.nudgeIfBehind(key.shard, minLSN)
		}
		return nil, false
	}
	sh := e.shard
	if sh.state.Load() != e.state {
		c.dropStale(key)
		return nil, false
	}
	if minLSN > 0 && sh.applied.Load() < minLSN {
		c.nudge(sh)
		return nil, false
	}
	for _, r := range e.epochs {
		if r.ctr.Load() != r.v {
			c.dropStale(key)
			return nil, false
		}
	}
	return e, true
}

func (c *Cache) dropStale(key Key) {
	c.stale.Add(1)
	c.store.Del(key.enc)
}

func (c *Cache) nudgeIfBehind(shard string, minLSN uint64) {
	c.mu.Lock()
	sh := c.shards[shard]
	c.mu.Unlock()
	if sh != nil && sh.applied.Load() < minLSN {
		c.nudge(sh)
	}
}

// nudge asks the shard's stream for a keepalive, which carries the
// server's sent position and so advances applied past a token that no
// commit of a published table will reach.
func (c *Cache) nudge(sh *shardState) {
	if s := sh.nudge.Load(); s != nil {
		s.requestKeepalive()
	}
}

// snapshot is the validity state captured when a fill starts.
type snapshot struct {
	sh      *shardState
	state   uint64
	pending uint64
	epochs  []epochRef
}

func (c *Cache) snapshot(sh *shardState, tables []string) snapshot {
	s := snapshot{sh: sh, state: sh.state.Load()}
	s.epochs = make([]epochRef, 0, len(tables))
	for _, t := range tables {
		ctr := sh.epoch(tableKey(t))
		dup := false
		for _, r := range s.epochs {
			dup = dup || r.ctr == ctr
		}
		if !dup {
			s.epochs = append(s.epochs, epochRef{ctr: ctr, v: ctr.Load()})
		}
	}
	s.pending = sh.pending.Load() // after the epochs: see shardState
	return s
}

// valid reports whether nothing the snapshot covers changed since.
func (s snapshot) valid() bool {
	if s.sh.state.Load() != s.state {
		return false
	}
	for _, r := range s.epochs {
		if r.ctr.Load() != r.v {
			return false
		}
	}
	return true
}

// flightKey names a shared fill: the key plus the validity state it started
// with. A caller joins a fill in flight only if nothing it covers was
// invalidated since that fill started, so no caller that arrives after an
// invalidation gets a result read before it.
func (s snapshot) flightKey(key Key) string {
	b := make([]byte, 0, len(key.enc)+24+8*len(s.epochs))
	b = append(b, key.enc...)
	b = strconv.AppendUint(b, s.state, 16)
	for _, r := range s.epochs {
		b = append(b, '/')
		b = strconv.AppendUint(b, r.v, 16)
	}
	return string(b)
}

type fillResult struct {
	value []byte
}

// GetOrFill returns the cached value of key, or runs fill and caches its
// result. hit reports whether the value came from the cache.
//
// tables are the tables the read reads (views resolved to base tables, see
// doc.go); minLSN is the session's causal token for the shard (0 if none).
// A read of a table that is not Cacheable runs fill without storing.
// Concurrent misses of one key share one fill when nothing they depend on
// was invalidated in between. A fill result is stored only if the shard's
// change stream was up for the whole fill and none of the tables was
// invalidated meanwhile, and it is at most MaxEntryBytes long.
//
// With Config.FillAfterMisses 2, the first miss of a key (while the
// doorkeeper remembers it) returns ErrNotAdmitted at once without running
// fill: the caller runs the read itself.
//
// It blocks while fill runs (or while waiting for a shared fill, until
// ctx ends). Errors: ErrClosed after Close; ErrNotAdmitted; ctx.Err();
// otherwise the fill's error, unchanged. Safe for concurrent use.
func (c *Cache) GetOrFill(ctx context.Context, key Key, tables []string, minLSN uint64, fill FillFunc) (value []byte, hit bool, err error) {
	if c.closed.Load() {
		return nil, false, ErrClosed
	}
	if key.enc == "" {
		return nil, false, fmt.Errorf("%w: zero Key", ErrInvalidConfig)
	}
	if e, ok := c.get(key, minLSN); ok {
		c.hits.Add(1)
		return e.e.Value, true, nil
	}
	c.misses.Add(1)
	if !c.filter.allowed(tables) {
		c.bypass.Add(1)
		v, err := fill(ctx)
		return v, false, err
	}
	if c.door != nil && !c.door.admit(xxhash.Sum64String(key.enc)) {
		c.notAdmitted.Add(1)
		return nil, false, ErrNotAdmitted
	}
	sh := c.shard(key.shard)
	snap := c.snapshot(sh, tables)
	if snap.state&1 == 0 || (minLSN > 0 && sh.applied.Load() < minLSN) {
		// Stream down (nothing may be stored: runFill's check fails), or
		// the stream has not applied the caller's token yet, so a fill in
		// flight may predate the caller's write: fill alone.
		v, err := c.runFill(ctx, key, tables, snap, fill)
		return v, false, err
	}
	// claim makes sure our fill never runs after we returned: the fill
	// uses the caller's resources (its backend connection). singleflight
	// runs it on its own goroutine, so if our ctx ends first we either
	// claim it as abandoned (it will not run) or, if it is running, wait
	// for it (it honours the same ctx, so that is short).
	var claim atomic.Int32 // 0 not started, 1 running (we lead), 2 abandoned
	ch := c.sf.DoChan(snap.flightKey(key), func() (any, error) {
		if !claim.CompareAndSwap(0, 1) {
			return nil, errAbandoned
		}
		v, err := c.runFill(ctx, key, tables, snap, fill)
		return fillResult{v}, err
	})
	var r singleflight.Result
	select {
	case r = <-ch:
	case <-ctx.Done():
		if claim.CompareAndSwap(0, 2) {
			return nil, false, ctx.Err()
		}
		r = <-ch // our own fill is running: wait for it
	}
	leader := claim.Load() == 1
	if !leader {
		c.shared.Add(1)
	}
	if r.Err != nil {
		if errors.Is(r.Err, errAbandoned) && ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		if !leader && ctx.Err() == nil && (errors.Is(r.Err, errAbandoned) ||
			errors.Is(r.Err, context.Canceled) || errors.Is(r.Err, context.DeadlineExceeded)) {
			// The leader gave up, not us: fill ourselves.
			v, err := c.runFill(ctx, key, tables, c.snapshot(sh, tables), fill)
			return v, false, err
		}
		return nil, false, r.Err
	}
	return r.Val.(fillResult).value, false, nil
}

// errAbandoned is the result of a shared fill whose leader gave up before
// it started; joiners fill themselves.
var errAbandoned = errors.New("cache: shared fill abandoned")

// runFill runs fill and stores its result if the snapshot is still valid.
func (c *Cache) runFill(ctx context.Context, key Key, tables []string, snap snapshot, fill FillFunc) ([]byte, error) {
	started := time.Now()
	c.fills.Add(1)
	v, err := fill(context.WithValue(ctx, fillKey{}, snap.pending))
	if err != nil {
		c.fillErrors.Add(1)
		return nil, err
	}
	if int64(len(v)) > c.cfg.MaxEntryBytes {
		c.tooLarge.Add(1)
		return v, nil
	}
	if snap.state&1 == 0 || !snap.valid() || c.closed.Load() {
		c.raced.Add(1)
		return v, nil
	}
	e := &entry{
		key:    key.enc,
		shard:  snap.sh,
		state:  snap.state,
		epochs: snap.epochs,
		e: Entry{
			Value:       v,
			Tables:      append([]string(nil), tables...),
			Shard:       key.shard,
			FilledAtLSN: snap.pending,
			FilledAt:    started,
		},
	}
	cost := int64(len(v)+2*len(key.enc)+24*len(snap.epochs)) + 160
	for _, t := range tables {
		cost += int64(len(t)) + 16
	}
	if c.store.SetWithTTL(key.enc, e, cost, c.TTL()) {
		c.stored.Add(1)
	}
	return v, nil
}

// Invalidate drops every entry that read one of tables, on every shard.
// Front ends call it after their own committed writes, to invalidate before
// the change stream delivers the commit. It does not block on I/O and is
// safe for concurrent use.
func (c *Cache) Invalidate(tables ...string) {
	c.InvalidateAfter(nil, tables...)
}

// InvalidateAfter is Invalidate for a front end that knows where its
// writes committed: committed returns, for a shard name, the position
// (LSN) its writes there committed at, 0 for none (a session's causal
// token). Before the entries are dropped, each shard's fill position
// (FillMinLSN) is raised to at least that position, so a fill that starts
// afterwards reads from a backend that has replayed the writes. Without
// it, until the change stream applied the commit, a read with no token
// could refill the old value from a replica behind the write and have it
// served. It does not block on I/O and is safe for concurrent use.
func (c *Cache) InvalidateAfter(committed func(shard string) uint64, tables ...string) {
	if len(tables) == 0 {
		return
	}
	keys := make([]string, len(tables))
	for i, t := range tables {
		keys[i] = tableKey(t)
	}
	c.mu.Lock()
	shards := make([]*shardState, 0, len(c.shards))
	for _, s := range c.shards {
		shards = append(shards, s)
	}
	c.mu.Unlock()
	if committed != nil {
		for _, s := range shards {
			// Before the bumps: a fill whose epoch snapshot includes them
			// reads pending afterwards (see shardState).
			storeMax(&s.pending, committed(s.name))
		}
	}
	for _, s := range shards {
		s.bump(keys)
	}
	c.inval.Add(uint64(len(keys)))
	if h := c.cfg.Hooks.OnInvalidate; h != nil {
		h(InvalidateEvent{Tables: keys})
	}
}

// Close stops every change stream and ristretto's goroutines, waiting for
// them until ctx ends (then it returns ctx.Err() and the streams finish in
// the background). After Close, Get misses and GetOrFill returns
// ErrClosed. Idempotent: later calls return the first call's result.
func (c *Cache) Close(ctx context.Context) error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.mu.Lock()
		streams := c.streams
		c.streams = map[string]*stream{}
		c.mu.Unlock()
		for _, s := range streams {
			s.cancel()
		}
		done := make(chan struct{})
		go func() {
			c.wg.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			c.closeErr = fmt.Errorf("cache: close: waiting for change streams: %w", ctx.Err())
		}
		c.store.Close()
	})
	return c.closeErr
}
