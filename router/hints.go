package router

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// hintPrefix introduces a dbproxy directive comment.
const hintPrefix = "dbproxy:"

// scanHints finds /* dbproxy: ... */ and -- dbproxy: ... comments anywhere
// in sql. It uses PostgreSQL's own scanner so that comment-like text inside
// string literals, quoted identifiers and dollar quotes is ignored. It
// returns the zero Hints when the text cannot contain a hint (fast path, no
// scanning) or when the scanner rejects the text.
func scanHints(sql string) (Hints, error) {
	var h Hints
	if !containsFold(sql, "dbproxy") {
		return h, nil
	}
	res, err := pg_query.Scan(sql)
	if err != nil {
		return h, nil // unscannable text: the parser reports the error
	}
	var herr error
	for _, tok := range res.GetTokens() {
		var body string
		switch tok.GetToken() {
		case pg_query.Token_C_COMMENT:
			s, e := int(tok.GetStart()), int(tok.GetEnd())
			if s < 0 || e > len(sql) || e-s < 4 {
				continue
			}
			body = sql[s+2 : e-2]
		case pg_query.Token_SQL_COMMENT:
			s, e := int(tok.GetStart()), int(tok.GetEnd())
			if s < 0 || e > len(sql) || e-s < 2 {
				continue
			}
			body = sql[s+2 : e]
		default:
			continue
		}
		body = strings.TrimSpace(body)
		if len(body) < len(hintPrefix) || !strings.EqualFold(body[:len(hintPrefix)], hintPrefix) {
			continue
		}
		if err := parseHintBody(body[len(hintPrefix):], &h); err != nil && herr == nil {
			herr = err
		}
	}
	return h, herr
}

// parseHintBody parses the directives of one hint comment: items separated
// by commas and/or white space; each item is a flag ("primary", "nocache")
// or key=value ("shard=2", "max_staleness=200ms", "causal_token=...").
func parseHintBody(body string, h *Hints) error {
	items := strings.FieldsFunc(body, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == ';'
	})
	// A causal token itself contains commas ("s0:0/1,s1:0/2"): re-join the
	// pieces that follow causal_token= and look like shard:lsn entries.
	for i := 0; i < len(items); i++ {
		item := items[i]
		key, val, hasVal := strings.Cut(item, "=")
		key = strings.ToLower(strings.TrimSpace(key))
		val = strings.TrimSpace(val)
		switch key {
		case "primary":
			if hasVal {
				return fmt.Errorf("%w: hint %q takes no value", ErrBadHint, key)
			}
			h.Primary = true
		case "nocache", "no_cache":
			if hasVal {
				return fmt.Errorf("%w: hint %q takes no value", ErrBadHint, key)
			}
			h.NoCache = true
		case "shard":
			if val == "" {
				return fmt.Errorf("%w: hint shard needs a value (shard=N or shard=name)", ErrBadHint)
			}
			h.Shard = val
		case "max_staleness":
			d, err := parseStaleness(val)
			if err != nil {
				return fmt.Errorf("%w: max_staleness=%q: %v", ErrBadHint, val, err)
			}
			h.MaxStaleness = d
		case "causal_token":
			for i+1 < len(items) && !strings.Contains(items[i+1], "=") && strings.Contains(items[i+1], ":") && strings.Contains(items[i+1], "/") {
				val += "," + items[i+1]
				i++
			}
			if _, err := ParseCausalToken(val); err != nil {
				return fmt.Errorf("%w: %v", ErrBadHint, err)
			}
			h.CausalToken = val
		default:
			return fmt.Errorf("%w: unknown dbproxy hint %q (want shard=, primary, max_staleness=, causal_token=, nocache)", ErrBadHint, item)
		}
	}
	return nil
}

// parseStaleness accepts a Go duration ("200ms", "1.5s") or a bare number
// of milliseconds ("200"). Negative values are rejected.
func parseStaleness(s string) (time.Duration, error) {
	s = strings.Trim(strings.TrimSpace(s), "'\"")
	if s == "" {
		return 0, fmt.Errorf("empty duration")
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > int64(time.Hour/time.Millisecond)*24 {
			return 0, fmt.Errorf("out of range")
		}
		return time.Duration(n) * time.Millisecond, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d < 0 {
		return 0, fmt.Errorf("negative duration")
	}
	return d, nil
}

// containsFold reports whether s contains the lower-case ASCII word w,
// ignoring ASCII case, without allocating.
func containsFold(s, w string) bool {
	n := len(w)
	for i := 0; i+n <= len(s); i++ {
		j := 0
		for ; j < n; j++ {
			c := s[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != w[j] {
				break
			}
		}
		if j == n {
			return true
		}
	}
	return false
}
