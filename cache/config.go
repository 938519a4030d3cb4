package cache

import (
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Config configures a Cache. Start from DefaultConfig; New copies it.
type Config struct {
	// MaxBytes bounds the total cost of stored entries (value, key and
	// bookkeeping bytes). Ristretto evicts by sampled LFU beyond it.
	MaxBytes int64
	// MaxEntryBytes is the largest value stored; larger fills are returned
	// to their caller but not kept.
	MaxEntryBytes int64
	// TTL is how long an entry may be served after its fill. It bounds the
	// staleness of what the change stream cannot see (DDL, writes to
	// unlogged or temporary tables; see doc.go). Must be > 0.
	TTL time.Duration
	// NumCounters is ristretto's admission counter count; 0 derives it
	// from MaxBytes (ten counters per expected 1 KiB entry, at least 1e4).
	NumCounters int64
	// IncludeTables lists the tables whose reads may be cached: "*",
	// "name" (any schema), "schema.name" or "schema.*". Default ["*"].
	IncludeTables []string
	// ExcludeTables lists tables never cached, same patterns. A read is
	// cacheable only if every table it reads is included and none excluded.
	ExcludeTables []string
	// FillAfterMisses is how many misses of a key, close enough together,
	// it takes to fill it: 0 or 1 fills on the first miss; 2 fills on the
	// second, so that keys read once (a random scan over a large table)
	// never pay for a fill and never crowd hot keys out of the store
	// (GetOrFill returns ErrNotAdmitted for the first miss). Misses are
	// remembered in a direct-mapped table of 65,536 key hashes.
	FillAfterMisses int
	// Logger receives stream state changes and errors; nil discards.
	Logger *slog.Logger
	// Hooks are optional callbacks for metrics and tracing.
	Hooks Hooks
}

// Hooks are optional event callbacks. They run synchronously on the
// goroutine that caused the event (a change stream's goroutine) and must not
// block or call back into the Cache's Watch/Unwatch/Close.
type Hooks struct {
	// OnInvalidate runs after a committed transaction's tables were
	// invalidated (Lag is zero for explicit Invalidate calls).
	OnInvalidate func(InvalidateEvent)
	// OnStreamState runs when a shard's change stream goes up or down;
	// err is the reason it went down (nil when up or stopped).
	OnStreamState func(shard string, up bool, err error)
}

// InvalidateEvent describes one applied invalidation.
type InvalidateEvent struct {
	Shard  string   // "" for an explicit Invalidate (all shards)
	Tables []string // bare, lower-case table names; do not modify
	LSN    uint64   // end LSN of the commit (0 for an explicit Invalidate)
	// Lag is the time from the primary's commit timestamp to the
	// invalidation being applied here.
	Lag time.Duration
}

// DefaultConfig returns a Config with 64 MiB of entries, 1 MiB per entry,
// a 60 s TTL and every table cacheable.
func DefaultConfig() Config {
	return Config{
		MaxBytes:      64 << 20,
		MaxEntryBytes: 1 << 20,
		TTL:           60 * time.Second,
		IncludeTables: []string{"*"},
	}
}

// Validate reports a configuration error wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	switch {
	case c.MaxBytes <= 0:
		return fmt.Errorf("%w: MaxBytes must be > 0, got %d", ErrInvalidConfig, c.MaxBytes)
	case c.MaxEntryBytes <= 0:
		return fmt.Errorf("%w: MaxEntryBytes must be > 0, got %d", ErrInvalidConfig, c.MaxEntryBytes)
	case c.MaxEntryBytes > c.MaxBytes:
		return fmt.Errorf("%w: MaxEntryBytes (%d) exceeds MaxBytes (%d)", ErrInvalidConfig, c.MaxEntryBytes, c.MaxBytes)
	case c.TTL <= 0:
		return fmt.Errorf("%w: TTL must be > 0, got %s", ErrInvalidConfig, c.TTL)
	case c.NumCounters < 0:
		return fmt.Errorf("%w: NumCounters must be >= 0, got %d", ErrInvalidConfig, c.NumCounters)
	case c.FillAfterMisses < 0 || c.FillAfterMisses > 2:
		return fmt.Errorf("%w: FillAfterMisses must be 0, 1 or 2, got %d", ErrInvalidConfig, c.FillAfterMisses)
	}
	for _, list := range [][]string{c.IncludeTables, c.ExcludeTables} {
		for _, p := range list {
			if err := validatePattern(p); err != nil {
				return err
			}
		}
	}
	return nil
}

func validatePattern(p string) error {
	if p == "*" {
		return nil
	}
	schema, name, qualified := strings.Cut(p, ".")
	bad := p == "" || schema == "" || schema == "*"
	if qualified {
		bad = bad || name == "" || strings.Contains(name, ".")
	}
	if bad {
		return fmt.Errorf("%w: bad table pattern %q (want \"*\", \"name\", \"schema.name\" or \"schema.*\")", ErrInvalidConfig, p)
	}
	return nil
}

// StreamConfig configures the change stream of one shard primary.
type StreamConfig struct {
	// Shard is the shard name used in Keys (KeyParts.Shard).
	Shard string
	// ConnString addresses the shard's primary (libpq keyword/value or URL).
	// The stream opens two connections with it: one with
	// replication=database added, one plain (visibility checks). The user
	// needs the REPLICATION
	// attribute, and superuser (or database owner) when the publication
	// must be created.
	ConnString string
	// Publication is a FOR ALL TABLES publication, created if missing.
	Publication string
	// SlotPrefix starts the name of the TEMPORARY logical slot; the process
	// id and a random suffix make it unique. The server drops it when the
	// connection ends, so a dead process leaves nothing behind.
	SlotPrefix string
	// StatusInterval is how often the stream reports its position and asks
	// the server for a keepalive (a liveness probe).
	StatusInterval time.Duration
	// StallTimeout declares the stream broken when nothing arrived for this
	// long (a silent network partition); the shard stops serving.
	StallTimeout time.Duration
	// ConnectTimeout bounds connecting and setting up the slot.
	ConnectTimeout time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay (doubling).
	MinBackoff, MaxBackoff time.Duration
}

// DefaultStreamConfig returns the defaults for the fields other than Shard
// and ConnString.
func DefaultStreamConfig() StreamConfig {
	return StreamConfig{
		Publication:    "dbproxy_cache",
		SlotPrefix:     "dbproxy_cache",
		StatusInterval: time.Second,
		StallTimeout:   5 * time.Second,
		ConnectTimeout: 10 * time.Second,
		MinBackoff:     100 * time.Millisecond,
		MaxBackoff:     5 * time.Second,
	}
}

// Validate reports a configuration error wrapping ErrInvalidConfig.
func (s StreamConfig) Validate() error {
	switch {
	case s.Shard == "":
		return fmt.Errorf("%w: stream Shard is empty", ErrInvalidConfig)
	case s.ConnString == "":
		return fmt.Errorf("%w: stream ConnString is empty for shard %q", ErrInvalidConfig, s.Shard)
	case !isIdent(s.Publication):
		return fmt.Errorf("%w: Publication %q must match [a-z_][a-z0-9_]{0,62}", ErrInvalidConfig, s.Publication)
	case !isIdent(s.SlotPrefix) || len(s.SlotPrefix) > 32:
		return fmt.Errorf("%w: SlotPrefix %q must match [a-z_][a-z0-9_]{0,31}", ErrInvalidConfig, s.SlotPrefix)
	case s.StatusInterval <= 0:
		return fmt.Errorf("%w: StatusInterval must be > 0", ErrInvalidConfig)
	case s.StallTimeout <= s.StatusInterval:
		return fmt.Errorf("%w: StallTimeout (%s) must exceed StatusInterval (%s)", ErrInvalidConfig, s.StallTimeout, s.StatusInterval)
	case s.ConnectTimeout <= 0:
		return fmt.Errorf("%w: ConnectTimeout must be > 0", ErrInvalidConfig)
	case s.MinBackoff <= 0 || s.MaxBackoff < s.MinBackoff:
		return fmt.Errorf("%w: need 0 < MinBackoff <= MaxBackoff, got %s, %s", ErrInvalidConfig, s.MinBackoff, s.MaxBackoff)
	}
	return nil
}

// isIdent reports whether s is a plain lower-case SQL identifier that needs
// no quoting.
func isIdent(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_' || r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
