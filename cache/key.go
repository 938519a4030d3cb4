package cache

import (
	"encoding/binary"
	"strconv"
)

// KeyParts are the inputs of a cache key. Everything that can change the
// bytes of a result must be in it.
type KeyParts struct {
	// Shard names the shard the read runs on (the StreamConfig.Shard of
	// its change stream).
	Shard string
	// Namespace separates encodings and session settings that change a
	// result: the proxy's wire format vs the driver's encoding, and
	// settings such as search_path, TimeZone, DateStyle or the role.
	Namespace string
	// SQL is the normalized query text.
	SQL string
	// Params are the parameter values; nil is SQL NULL.
	Params [][]byte
	// ParamFormats and ResultFormats follow the Bind message: empty means
	// all text, one code applies to all, otherwise one code per item.
	ParamFormats, ResultFormats []int16
}

// Key identifies a cached read. The zero Key is invalid; build one with
// NewKey. A Key is an immutable value, safe to share between goroutines.
type Key struct {
	shard string
	enc   string // unambiguous encoding of every KeyParts field
}

// NewKey builds the key of a read. Equal parts give equal keys; different
// parts give different keys (the encoding is length-prefixed, not hashed,
// and the full encoding is compared on every hit).
func NewKey(p KeyParts) Key {
	n := 32 + len(p.Shard) + len(p.Namespace) + len(p.SQL) + 6*len(p.Params)
	for _, v := range p.Params {
		n += len(v)
	}
	b := make([]byte, 0, n)
	b = appendString(b, p.Shard)
	b = appendString(b, p.Namespace)
	b = appendString(b, p.SQL)
	b = binary.AppendUvarint(b, uint64(len(p.Params)))
	for i, v := range p.Params {
		b = binary.AppendVarint(b, int64(formatAt(p.ParamFormats, i)))
		if v == nil {
			b = append(b, 0)
			continue
		}
		b = append(b, 1)
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	b = appendResultFormats(b, p.ResultFormats)
	return Key{shard: p.Shard, enc: string(b)}
}

// Shard returns the shard named in the key.
func (k Key) Shard() string { return k.shard }

// IsZero reports whether k was not built by NewKey.
func (k Key) IsZero() bool { return k.enc == "" }

// String returns a printable form of the key for logs.
func (k Key) String() string { return strconv.Quote(k.enc) }

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// formatAt returns the format code of item i under Bind's rules.
func formatAt(formats []int16, i int) int16 {
	switch {
	case len(formats) == 0:
		return 0
	case len(formats) == 1:
		return formats[0]
	case i < len(formats):
		return formats[i]
	default:
		return -1 // malformed Bind: kept distinct from any valid encoding
	}
}

// appendResultFormats encodes result formats so that equivalent forms
// ([], [0], [0,0,...]; [1] and [1,1,...]) encode the same.
func appendResultFormats(b []byte, f []int16) []byte {
	uniform := true
	for _, v := range f {
		if v != f[0] {
			uniform = false
			break
		}
	}
	switch {
	case len(f) == 0 || uniform && f[0] == 0:
		return append(b, 'T')
	case uniform:
		b = append(b, 'U')
		return binary.AppendVarint(b, int64(f[0]))
	}
	b = append(b, 'L')
	b = binary.AppendUvarint(b, uint64(len(f)))
	for _, v := range f {
		b = binary.AppendVarint(b, int64(v))
	}
	return b
}
