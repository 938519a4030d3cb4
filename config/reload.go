package config

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
)

// Reloadable is the part of a Config that a running proxy may change on
// SIGHUP without a restart:
//
//	[[users]]                      (the whole list)
//	server.idle_transaction_timeout
//	[pool]                         (every key), shards[].nodes[].pool_size
//	routing.balance, routing.max_staleness, routing.catch_up_wait
//	[breaker]                      (every key)
//	cache.enabled, cache.ttl
//
// cache.enabled turns serving from the cache off and on again; turning
// it on in a proxy that started without it creates the cache and starts
// its change streams then (cache.max_bytes and the other sizes are read
// at that moment). cache.ttl applies to entries filled after the reload.
//
// Everything else (listen addresses, TLS, databases, the set of shards and
// nodes and their addresses, roles and weights, [[tables]], probes, the
// other cache sizes) needs a restart; CheckReload rejects changes to it.
type Reloadable struct {
	Users                  []User
	IdleTransactionTimeout Duration
	PoolSize               int
	AcquireTimeout         Duration
	MaxLifetime            Duration
	IdleTimeout            Duration
	// NodePoolSizes maps node name to its effective pool size (NodePoolSize).
	NodePoolSizes map[string]int
	Balance       BalancePolicy
	MaxStaleness  Duration
	CatchUpWait   Duration
	Breaker       Breaker
	CacheEnabled  bool
	CacheTTL      Duration
}

// Reloadable returns the reloadable subset of c (deep-copied).
func (c *Config) Reloadable() Reloadable {
	r := Reloadable{
		Users:                  slices.Clone(c.Users),
		IdleTransactionTimeout: c.Server.IdleTransactionTimeout,
		PoolSize:               c.Pool.Size,
		AcquireTimeout:         c.Pool.AcquireTimeout,
		MaxLifetime:            c.Pool.MaxLifetime,
		IdleTimeout:            c.Pool.IdleTimeout,
		NodePoolSizes:          map[string]int{},
		Balance:                c.Routing.Balance,
		MaxStaleness:           c.Routing.MaxStaleness,
		CatchUpWait:            c.Routing.CatchUpWait,
		Breaker:                c.Breaker,
		CacheEnabled:           c.Cache.Enabled,
		CacheTTL:               c.Cache.TTL,
	}
	for _, s := range c.Shards {
		for _, n := range s.Nodes {
			r.NodePoolSizes[n.Name] = c.NodePoolSize(n)
		}
	}
	return r
}

// reloadable reports whether a key path (indexes stripped) may change on reload.
func reloadable(key string) bool {
	switch key {
	case "server.idle_transaction_timeout", "pool.size", "pool.acquire_timeout", "pool.max_lifetime", "pool.idle_timeout", "shards.nodes.pool_size",
		"routing.balance", "routing.max_staleness", "routing.catch_up_wait",
		"cache.enabled", "cache.ttl":
		return true
	}
	return key == "users" || strings.HasPrefix(key, "users.") ||
		key == "breaker" || strings.HasPrefix(key, "breaker.")
}

// Diff returns the key paths (TOML names with indexes, e.g.
// "shards[0].nodes[1].port", or "shards" when the number of shards
// differs) whose values differ between old and new, in schema order.
func Diff(old, new *Config) []string {
	var out []string
	diffValue(reflect.ValueOf(*old), reflect.ValueOf(*new), "", &out)
	return out
}

func diffValue(a, b reflect.Value, path string, out *[]string) {
	switch a.Kind() {
	case reflect.Struct:
		t := a.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			diffValue(a.Field(i), b.Field(i), joinKey(path, name), out)
		}
	case reflect.Slice:
		if a.Len() != b.Len() {
			*out = append(*out, path)
			return
		}
		for i := 0; i < a.Len(); i++ {
			diffValue(a.Index(i), b.Index(i), indexKey(path, i), out)
		}
	default:
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, path)
		}
	}
}

// CheckReload reports whether new may replace old in a running proxy: nil
// if every difference is in a reloadable field (see Reloadable), else an
// error joining one *FieldError (wrapping ErrNotReloadable) per changed
// non-reloadable key, with its line in new when new came from Parse/Load.
// It does not validate new; Parse/Load already did.
func CheckReload(old, new *Config) error {
	el := &errorList{pos: new.pos}
	for _, k := range Diff(old, new) {
		if reloadable(stripIndexes(k)) {
			continue
		}
		el.add(k, ErrNotReloadable, "changed from %s to %s", describe(old, k), describe(new, k))
	}
	return el.err()
}

// describe renders the value at key path k of c for messages.
func describe(c *Config, k string) string {
	v, ok := lookup(reflect.ValueOf(*c), k)
	if !ok {
		return "(absent)"
	}
	if v.Kind() == reflect.Slice {
		if v.Len() == 1 {
			return "1 entry"
		}
		return fmt.Sprintf("%d entries", v.Len())
	}
	if s, ok := v.Interface().(fmt.Stringer); ok {
		return fmt.Sprintf("%q", s.String())
	}
	if v.Kind() == reflect.String {
		return fmt.Sprintf("%q", v.String())
	}
	return fmt.Sprintf("%v", v.Interface())
}

// lookup follows an indexed key path through struct fields (by toml tag)
// and slice indexes.
func lookup(v reflect.Value, k string) (reflect.Value, bool) {
	if k == "" {
		return v, true
	}
	parent := parentKey(k)
	pv, ok := lookup(v, parent)
	if !ok {
		return reflect.Value{}, false
	}
	last := strings.TrimPrefix(k[len(parent):], ".")
	if strings.HasPrefix(last, "[") {
		var i int
		if _, err := fmt.Sscanf(last, "[%d]", &i); err != nil || pv.Kind() != reflect.Slice || i < 0 || i >= pv.Len() {
			return reflect.Value{}, false
		}
		return pv.Index(i), true
	}
	if pv.Kind() != reflect.Struct {
		return reflect.Value{}, false
	}
	f, ok := tomlFields(pv.Type())[last]
	if !ok {
		return reflect.Value{}, false
	}
	return pv.FieldByIndex(f.Index), true
}
