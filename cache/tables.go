package cache

import "strings"

// tableKey is the name under which invalidations of a table are tracked:
// the bare relation name (schema dropped), lower-cased. Two tables that
// differ only by schema or case share a key, so a write to one also
// invalidates reads of the other: over-invalidation is safe, a missed
// invalidation would not be, and callers name tables less precisely than
// the change stream does (unqualified names resolved by search_path).
func tableKey(table string) string {
	if i := strings.LastIndexByte(table, '.'); i >= 0 {
		table = table[i+1:]
	}
	table = strings.Trim(table, `"`)
	for i := 0; i < len(table); i++ {
		if c := table[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(table)
		}
	}
	return table
}

// tableFilter decides which tables' reads may be cached.
type tableFilter struct {
	include, exclude []string // lower-cased patterns
}

func newTableFilter(include, exclude []string) tableFilter {
	low := func(in []string) []string {
		out := make([]string, len(in))
		for i, p := range in {
			out[i] = strings.ToLower(p)
		}
		return out
	}
	return tableFilter{include: low(include), exclude: low(exclude)}
}

// allowed reports whether every table is included and none excluded.
// Include patterns match strictly and exclude patterns liberally, so an
// ambiguous (unqualified) name errs towards not caching.
func (f tableFilter) allowed(tables []string) bool {
	for _, t := range tables {
		t = strings.ToLower(strings.Trim(t, `"`))
		if !matchAny(f.include, t, false) || matchAny(f.exclude, t, true) {
			return false
		}
	}
	return true
}

func matchAny(patterns []string, table string, liberal bool) bool {
	for _, p := range patterns {
		if match(p, table, liberal) {
			return true
		}
	}
	return false
}

// match matches a lower-case table name ("t" or "s.t") against a pattern
// ("*", "t", "s.t", "s.*"). An unqualified pattern matches the name in any
// schema. A qualified pattern matches an unqualified table only when
// liberal, or when the pattern's schema is public.
func match(p, table string, liberal bool) bool {
	if p == "*" {
		return true
	}
	tSchema, tName, tQual := strings.Cut(table, ".")
	if !tQual {
		tName, tSchema = tSchema, ""
	}
	pSchema, pName, pQual := strings.Cut(p, ".")
	if !pQual {
		return pSchema == tName
	}
	if pName != "*" && pName != tName {
		return false
	}
	if !tQual {
		return liberal || pSchema == "public"
	}
	return pSchema == tSchema
}
