package router

import (
	"hash/maphash"
	"sync"
)

const (
	cacheShards = 16
	// DefaultCacheSize is the number of statements the package-level
	// Classify cache keeps.
	DefaultCacheSize = 16384
	// MaxCachedSQL is the longest SQL text (bytes) the cache keeps; longer
	// texts are classified every time.
	MaxCachedSQL = 16 << 10
)

// Classifier classifies SQL text and caches the results by text. The zero
// value is not usable; use NewClassifier. A Classifier is safe for
// concurrent use.
type Classifier struct {
	seed   maphash.Seed
	perCap int
	shards [cacheShards]cacheShard
	shapes [cacheShards]shapeShard // templates by literal-free shape (shape.go)
}

type shapeShard struct {
	mu sync.RWMutex
	m  map[string]*shapeEntry
}

func hashString(seed maphash.Seed, s string) uint64 { return maphash.String(seed, s) }

type cacheShard struct {
	mu sync.RWMutex
	m  map[string]*Statement
}

// NewClassifier returns a Classifier whose cache holds about size
// statements (at least 16). When a cache shard is full, an arbitrary entry
// is evicted (Go map iteration order), which is cheap and good enough for
// a working set of repeated statements.
func NewClassifier(size int) *Classifier {
	if size < cacheShards {
		size = cacheShards
	}
	c := &Classifier{seed: maphash.MakeSeed(), perCap: size / cacheShards}
	for i := range c.shards {
		c.shards[i].m = make(map[string]*Statement)
		c.shapes[i].m = make(map[string]*shapeEntry)
	}
	return c
}

var defaultClassifier = NewClassifier(DefaultCacheSize)

// Classify parses sql with the PostgreSQL parser and classifies it (see
// Statement). Results are cached by text in a package-level bounded
// cache, so a repeated statement costs one map lookup and no allocation.
//
// The returned *Statement is never nil. It is shared with every other
// caller classifying the same text and must be treated as immutable.
//
// Unparseable SQL is not an error: the Statement has Kind KindUnknown,
// MustPrimary set and ParseError recording the parser's message, so that
// the front end forwards it to a primary and PostgreSQL reports the error
// itself. The only error returned wraps ErrInvalidSQL (text containing a
// NUL byte, which the wire protocol cannot carry); the Statement is
// still usable then. Classify never panics, does not block, and is safe
// for concurrent use.
func Classify(sql string) (*Statement, error) { return defaultClassifier.Classify(sql) }

// Classify is like the package-level Classify, with c's cache.
func (c *Classifier) Classify(sql string) (*Statement, error) {
	sh := &c.shards[maphash.String(c.seed, sql)%cacheShards]
	sh.mu.RLock()
	st, ok := sh.m[sql]
	sh.mu.RUnlock()
	if ok {
		return st, nil
	}
	if len(sql) > MaxCachedSQL {
		return classifySafe(sql)
	}
	// Texts with literals share their shape's classification (shape.go).
	st, ok = c.classifyShape(sql)
	if ok && st.shape != nil {
		// From the template: cheap to make again, and a text with
		// literals is rarely sent twice, so it is not cached by text.
		return st, nil
	}
	if !ok {
		var err error
		st, err = classifySafe(sql)
		if err != nil {
			return st, err
		}
	}
	sh.mu.Lock()
	if len(sh.m) >= c.perCap {
		for k := range sh.m {
			delete(sh.m, k)
			break
		}
	}
	sh.m[sql] = st
	sh.mu.Unlock()
	return st, nil
}

// Len returns the number of cached statements.
func (c *Classifier) Len() int {
	n := 0
	for i := range c.shards {
		c.shards[i].mu.RLock()
		n += len(c.shards[i].m)
		c.shards[i].mu.RUnlock()
	}
	return n
}

// classifySafe runs classify and turns an internal panic (a bug in this
// package, or in the parser bindings) into an unparseable-statement
// result routed to the primary: input must never crash the proxy.
func classifySafe(sql string) (st *Statement, err error) {
	defer func() {
		if r := recover(); r != nil {
			st = &Statement{SQL: sql, Kind: KindUnknown, MustPrimary: true, PrimaryReason: "internal classification error"}
			st.ParseError = errorf(ErrUnsupported, "internal error classifying statement: %v", r)
			err = nil
		}
	}()
	return classify(sql)
}
