package router

import (
	"context"
	"slices"
	"strings"

	"github.com/dbproxy/dbproxy/replica"
)

// ShardLSN is one entry of a causal token: the WAL position a read on the
// named shard must have replayed.
type ShardLSN struct {
	Shard string // shard NAME (stable across processes), not its ID
	LSN   replica.LSN
}

// CausalToken carries read-your-writes positions between sessions,
// proxies and services. Its text form, shared by the proxy (ParameterStatus
// and SET dbproxy.causal_token) and the driver, is a comma-separated list
// of shard:lsn entries sorted by shard name, e.g.
//
//	s0:0/16B3748,s1:0/1A2B3C
//
// The zero value is the empty token ("") and requires nothing. A
// CausalToken is a value: methods never modify their receiver's entries.
type CausalToken struct {
	entries []ShardLSN // sorted by Shard, unique, LSN > 0
}

// ParseCausalToken parses the text form. The empty string is the zero
// token. Errors wrap ErrBadCausalToken (SQLSTATE 22023). Shard names must
// be non-empty and contain no ',' or white space; a name repeated keeps
// the highest LSN.
func ParseCausalToken(s string) (CausalToken, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return CausalToken{}, nil
	}
	var t CausalToken
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		i := strings.LastIndexByte(part, ':')
		if i <= 0 || i == len(part)-1 {
			return CausalToken{}, errorf(ErrBadCausalToken, "entry %q: want shard:LSN (e.g. s0:0/16B3748)", part)
		}
		name := part[:i]
		if strings.ContainsAny(name, " \t\r\n,") {
			return CausalToken{}, errorf(ErrBadCausalToken, "entry %q: bad shard name", part)
		}
		lsn, err := replica.ParseLSN(part[i+1:])
		if err != nil {
			return CausalToken{}, errorf(ErrBadCausalToken, "entry %q: %v", part, err)
		}
		t = t.With(name, lsn)
	}
	return t, nil
}

// String returns the text form ("" for the zero token).
func (t CausalToken) String() string {
	var b strings.Builder
	for i, e := range t.entries {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(e.Shard)
		b.WriteByte(':')
		b.WriteString(e.LSN.String())
	}
	return b.String()
}

// MarshalText implements encoding.TextMarshaler.
func (t CausalToken) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler (ParseCausalToken).
func (t *CausalToken) UnmarshalText(b []byte) error {
	v, err := ParseCausalToken(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// IsZero reports whether the token requires nothing.
func (t CausalToken) IsZero() bool { return len(t.entries) == 0 }

// Entries returns a copy of the entries, sorted by shard name.
func (t CausalToken) Entries() []ShardLSN { return slices.Clone(t.entries) }

// LSN returns the position required on the named shard (0 if none).
func (t CausalToken) LSN(shard string) replica.LSN {
	for _, e := range t.entries {
		if e.Shard == shard {
			return e.LSN
		}
	}
	return 0
}

// With returns a token that also requires lsn on shard (keeping the
// higher of the two positions). A zero lsn changes nothing.
func (t CausalToken) With(shard string, lsn replica.LSN) CausalToken {
	if lsn == 0 {
		return t
	}
	i, found := slices.BinarySearchFunc(t.entries, shard, func(e ShardLSN, s string) int { return strings.Compare(e.Shard, s) })
	if found {
		if t.entries[i].LSN >= lsn {
			return t
		}
		out := slices.Clone(t.entries)
		out[i].LSN = lsn
		return CausalToken{entries: out}
	}
	out := make([]ShardLSN, 0, len(t.entries)+1)
	out = append(out, t.entries[:i]...)
	out = append(out, ShardLSN{Shard: shard, LSN: lsn})
	out = append(out, t.entries[i:]...)
	return CausalToken{entries: out}
}

// Merge returns the per-shard maximum of t and o.
func (t CausalToken) Merge(o CausalToken) CausalToken {
	for _, e := range o.entries {
		t = t.With(e.Shard, e.LSN)
	}
	return t
}

type causalKey struct{}

// WithCausalToken returns a context carrying tok (merged with a token the
// context already carries). The driver uses it to carry read-your-writes
// positions across calls; Route honours it.
func WithCausalToken(ctx context.Context, tok CausalToken) context.Context {
	if prev, ok := ctx.Value(causalKey{}).(CausalToken); ok {
		tok = prev.Merge(tok)
	}
	return context.WithValue(ctx, causalKey{}, tok)
}

// CausalTokenFromContext returns the token carried by ctx (zero if none).
func CausalTokenFromContext(ctx context.Context) CausalToken {
	tok, _ := ctx.Value(causalKey{}).(CausalToken)
	return tok
}
