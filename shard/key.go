package shard

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/cespare/xxhash/v2"
)

// KeyType is the type of one shard-key column. The zero value is invalid.
type KeyType uint8

// Key types. The numeric values are not part of the canonical encoding
// (see the tag constants in doc.go) but are kept stable anyway.
const (
	KeyInt  KeyType = 1 // smallint, integer, bigint (int2, int4, int8)
	KeyText KeyType = 2 // text, varchar
	KeyUUID KeyType = 3 // uuid
)

// Canonical-encoding type tags (first byte of every Key). Part of the
// pinned contract: never change them.
const (
	tagInt       byte = 0x01
	tagText      byte = 0x02
	tagUUID      byte = 0x03
	tagComposite byte = 0x04
)

// String returns "int", "text" or "uuid" (or "KeyType(n)").
func (t KeyType) String() string {
	switch t {
	case KeyInt:
		return "int"
	case KeyText:
		return "text"
	case KeyUUID:
		return "uuid"
	}
	return "KeyType(" + strconv.Itoa(int(t)) + ")"
}

// Valid reports whether t is one of KeyInt, KeyText, KeyUUID.
func (t KeyType) Valid() bool { return t >= KeyInt && t <= KeyUUID }

// MarshalText implements encoding.TextMarshaler.
func (t KeyType) MarshalText() ([]byte, error) {
	if !t.Valid() {
		return nil, fmt.Errorf("shard: invalid key type %d", uint8(t))
	}
	return []byte(t.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler; it accepts the names
// returned by String and the PostgreSQL type names of ParseKeyType.
func (t *KeyType) UnmarshalText(b []byte) error {
	v, err := ParseKeyType(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// ParseKeyType maps a type name to a KeyType, case-insensitively: "int",
// "int2", "int4", "int8", "smallint", "integer", "bigint", "smallserial",
// "serial", "bigserial", "serial2", "serial4", "serial8" → KeyInt; "text",
// "varchar", "character varying" → KeyText; "uuid" → KeyUUID. Other names
// (including char(n)/bpchar, whose padding semantics differ) are an error.
func ParseKeyType(s string) (KeyType, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "int", "int2", "int4", "int8", "smallint", "integer", "bigint",
		"smallserial", "serial", "bigserial", "serial2", "serial4", "serial8":
		return KeyInt, nil
	case "text", "varchar", "character varying":
		return KeyText, nil
	case "uuid":
		return KeyUUID, nil
	}
	return 0, fmt.Errorf("shard: unsupported shard key type %q (want int, text or uuid)", s)
}

// Key is the canonical byte encoding of a shard-key value (see doc.go).
// Build one with KeyFromInt, KeyFromText, KeyFromUUID, Composite, ParseKey
// or DecodeBinaryKey; never by hand. A Key is a value: the functions of this
// package never modify a Key they are given.
type Key []byte

// KeyFromInt returns the key of an integer (smallint, integer or bigint all
// widen to int64 first, so equal values give equal keys):
// 0x01 followed by the 8-byte big-endian two's complement of v.
func KeyFromInt(v int64) Key {
	k := make(Key, 9)
	k[0] = tagInt
	binary.BigEndian.PutUint64(k[1:], uint64(v))
	return k
}

// KeyFromText returns the key of a text value: 0x02 followed by the bytes
// of s (UTF-8; not validated here, see ParseKey).
func KeyFromText(s string) Key {
	k := make(Key, 1+len(s))
	k[0] = tagText
	copy(k[1:], s)
	return k
}

// KeyFromUUID returns the key of a uuid: 0x03 followed by its 16 bytes.
func KeyFromUUID(u [16]byte) Key {
	k := make(Key, 17)
	k[0] = tagUUID
	copy(k[1:], u[:])
	return k
}

// Composite returns the key of a multi-column shard key. With two or more
// parts it is 0x04 followed, for each part in order, by the part's length
// as a 4-byte big-endian uint32 and the part's own canonical bytes. With
// exactly one part it returns a copy of that part, so a single-column key
// locates identically whether or not the caller wraps it. With no parts it
// returns nil (which Topology.Locate reports as ErrUnknownShardKey).
func Composite(parts ...Key) Key {
	switch len(parts) {
	case 0:
		return nil
	case 1:
		return append(Key(nil), parts[0]...)
	}
	n := 1
	for _, p := range parts {
		n += 4 + len(p)
	}
	k := make(Key, 1, n)
	k[0] = tagComposite
	for _, p := range parts {
		k = binary.BigEndian.AppendUint32(k, uint32(len(p)))
		k = append(k, p...)
	}
	return k
}

// Hash returns the 64-bit xxhash of k's canonical bytes: the position of k
// on the ring. It can also serve as a stable hash for replica selection.
func (k Key) Hash() uint64 { return xxhash.Sum64(k) }

// Parts splits a composite key into its parts (sub-slices of k, not
// copies). A non-composite key is returned as its single part. ok is false
// when k is malformed.
func (k Key) Parts() (parts []Key, ok bool) {
	if len(k) == 0 {
		return nil, false
	}
	if k[0] != tagComposite {
		if !k.wellFormedScalar() {
			return nil, false
		}
		return []Key{k}, true
	}
	rest := k[1:]
	for len(rest) > 0 {
		p, r, ok := nextPart(rest)
		if !ok {
			return nil, false
		}
		parts = append(parts, p)
		rest = r
	}
	return parts, len(parts) >= 2
}

func nextPart(b []byte) (part Key, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, nil, false
	}
	n := binary.BigEndian.Uint32(b)
	b = b[4:]
	if uint64(n) > uint64(len(b)) {
		return nil, nil, false
	}
	return Key(b[:n]), b[n:], true
}

// wellFormedScalar reports whether k is a well-formed int, text or uuid key.
func (k Key) wellFormedScalar() bool {
	if len(k) == 0 {
		return false
	}
	switch k[0] {
	case tagInt:
		return len(k) == 9
	case tagText:
		return true
	case tagUUID:
		return len(k) == 17
	}
	return false
}

// Type returns the KeyType of a scalar key, or 0 for composite and
// malformed keys.
func (k Key) Type() KeyType {
	if !k.wellFormedScalar() {
		return 0
	}
	switch k[0] {
	case tagInt:
		return KeyInt
	case tagText:
		return KeyText
	}
	return KeyUUID
}

// matches reports whether k is a well-formed key for columns of the given
// types: a scalar of types[0] when len(types)==1, else a composite of
// exactly len(types) parts of those types. It does not allocate.
func (k Key) matches(types []KeyType) bool {
	if len(types) == 1 {
		return k.Type() == types[0]
	}
	if len(k) == 0 || k[0] != tagComposite {
		return false
	}
	rest := []byte(k[1:])
	for _, t := range types {
		p, r, ok := nextPart(rest)
		if !ok || p.Type() != t {
			return false
		}
		rest = r
	}
	return len(rest) == 0
}

// String renders k for logs and error messages: 42, 'text', a uuid in
// canonical form, (part, part) for composites; malformed keys as hex.
func (k Key) String() string {
	var sb strings.Builder
	k.format(&sb)
	return sb.String()
}

func (k Key) format(sb *strings.Builder) {
	switch {
	case k.wellFormedScalar():
		switch k[0] {
		case tagInt:
			sb.WriteString(strconv.FormatInt(int64(binary.BigEndian.Uint64(k[1:])), 10))
		case tagText:
			sb.WriteByte('\'')
			sb.WriteString(strings.ReplaceAll(string(k[1:]), "'", "''"))
			sb.WriteByte('\'')
		case tagUUID:
			var u [16]byte
			copy(u[:], k[1:])
			sb.WriteString(FormatUUID(u))
		}
		return
	case len(k) > 0 && k[0] == tagComposite:
		if parts, ok := k.Parts(); ok {
			sb.WriteByte('(')
			for i, p := range parts {
				if i > 0 {
					sb.WriteString(", ")
				}
				p.format(sb)
			}
			sb.WriteByte(')')
			return
		}
	}
	sb.WriteString("invalid-key:0x")
	sb.WriteString(hex.EncodeToString(k))
}

// ParseKey parses a shard-key value written as text — an SQL literal's
// value or a text-format Bind parameter — with PostgreSQL's input rules:
//
//   - KeyInt: int8in. Optional leading/trailing whitespace, optional sign,
//     decimal digits; also the PostgreSQL 16+ forms 0x/0o/0b prefixes and
//     single underscores between digits. Out of int64 range → 22003.
//     So 42, '42'::bigint, ' +42 ' and '0x2A' give the same key.
//   - KeyText: the string itself; it must be valid UTF-8 without NUL bytes.
//   - KeyUUID: uuid_in. Hex digits in any case, optionally in {braces},
//     with an optional hyphen after any group of four hex digits.
//
// Errors wrap ErrBadKey and carry an SQLSTATE. It never panics.
func ParseKey(t KeyType, text string) (Key, error) {
	switch t {
	case KeyInt:
		v, err := parseInt8(text)
		if err != nil {
			return nil, err
		}
		return KeyFromInt(v), nil
	case KeyText:
		if err := checkText(text); err != nil {
			return nil, err
		}
		return KeyFromText(text), nil
	case KeyUUID:
		u, err := ParseUUID(text)
		if err != nil {
			return nil, err
		}
		return KeyFromUUID(u), nil
	}
	return nil, badKey(t, text, "unsupported key type", "22P02")
}

// DecodeBinaryKey decodes a binary-format Bind parameter: KeyInt accepts
// the 2-, 4- and 8-byte big-endian forms of int2, int4 and int8 (all widen
// to the same key); KeyText the raw UTF-8 bytes; KeyUUID exactly 16 bytes.
// Errors wrap ErrBadKey (08P01 for a wrong length). It never panics.
func DecodeBinaryKey(t KeyType, b []byte) (Key, error) {
	switch t {
	case KeyInt:
		switch len(b) {
		case 2:
			return KeyFromInt(int64(int16(binary.BigEndian.Uint16(b)))), nil
		case 4:
			return KeyFromInt(int64(int32(binary.BigEndian.Uint32(b)))), nil
		case 8:
			return KeyFromInt(int64(binary.BigEndian.Uint64(b))), nil
		}
		return nil, badKey(t, hex.EncodeToString(b), fmt.Sprintf("binary integer of %d bytes (want 2, 4 or 8)", len(b)), "08P01")
	case KeyText:
		if err := checkText(string(b)); err != nil {
			return nil, err
		}
		return KeyFromText(string(b)), nil
	case KeyUUID:
		if len(b) != 16 {
			return nil, badKey(t, hex.EncodeToString(b), fmt.Sprintf("binary uuid of %d bytes (want 16)", len(b)), "08P01")
		}
		return KeyFromUUID([16]byte(b)), nil
	}
	return nil, badKey(t, hex.EncodeToString(b), "unsupported key type", "22P02")
}

func checkText(s string) error {
	if !utf8.ValidString(s) {
		return badKey(KeyText, s, "invalid UTF-8", "22021")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return badKey(KeyText, s, "NUL byte in text", "22021")
	}
	return nil
}

// isPGSpace matches PostgreSQL's scanner_isspace / isspace in the C locale.
func isPGSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// parseInt8 follows pg_strtoint64_safe (PostgreSQL 16+, a superset of 15).
func parseInt8(s string) (int64, error) {
	syntax := func() error { return badKey(KeyInt, s, "invalid input syntax for type bigint", "22P02") }
	i := 0
	for i < len(s) && isPGSpace(s[i]) {
		i++
	}
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	base := uint64(10)
	if i+1 < len(s) && s[i] == '0' {
		switch s[i+1] {
		case 'x', 'X':
			base = 16
		case 'o', 'O':
			base = 8
		case 'b', 'B':
			base = 2
		}
		if base != 10 {
			i += 2
		}
	}
	// Accumulate the magnitude as uint64; limit is 2^63 for negatives.
	limit := uint64(1) << 63
	if !neg {
		limit--
	}
	var mag uint64
	digits := 0
	overflow := false
	prevDigit := false
	for i < len(s) {
		c := s[i]
		d, ok := digitVal(c, base)
		if ok {
			if !overflow {
				if mag > (limit-d)/base {
					overflow = true
				} else {
					mag = mag*base + d
				}
			}
			digits++
			prevDigit = true
			i++
			continue
		}
		if c == '_' && prevDigit && i+1 < len(s) {
			if _, ok := digitVal(s[i+1], base); ok {
				prevDigit = false
				i++
				continue
			}
		}
		break
	}
	if digits == 0 {
		return 0, syntax()
	}
	for i < len(s) && isPGSpace(s[i]) {
		i++
	}
	if i != len(s) {
		return 0, syntax()
	}
	if overflow {
		return 0, badKey(KeyInt, s, "value is out of range for type bigint", "22003")
	}
	if neg {
		return int64(-mag), nil // -(2^63) wraps to MinInt64 as intended
	}
	return int64(mag), nil
}

func digitVal(c byte, base uint64) (uint64, bool) {
	var d uint64
	switch {
	case c >= '0' && c <= '9':
		d = uint64(c - '0')
	case c >= 'a' && c <= 'f':
		d = uint64(c-'a') + 10
	case c >= 'A' && c <= 'F':
		d = uint64(c-'A') + 10
	default:
		return 0, false
	}
	return d, d < base
}

// ParseUUID parses a uuid as PostgreSQL's uuid_in does: 32 hex digits in
// any case, optionally enclosed in {braces}, with an optional hyphen after
// any group of four hex digits (except the last). No whitespace. Errors
// wrap ErrBadKey (SQLSTATE 22P02).
func ParseUUID(s string) ([16]byte, error) {
	var u [16]byte
	src := s
	braces := false
	if len(src) > 0 && src[0] == '{' {
		src = src[1:]
		braces = true
	}
	for i := 0; i < 16; i++ {
		if len(src) < 2 {
			return u, badKey(KeyUUID, s, "invalid input syntax for type uuid", "22P02")
		}
		hi, ok1 := digitVal(src[0], 16)
		lo, ok2 := digitVal(src[1], 16)
		if !ok1 || !ok2 {
			return u, badKey(KeyUUID, s, "invalid input syntax for type uuid", "22P02")
		}
		u[i] = byte(hi<<4 | lo)
		src = src[2:]
		if len(src) > 0 && src[0] == '-' && i%2 == 1 && i < 15 {
			src = src[1:]
		}
	}
	if braces {
		if len(src) == 0 || src[0] != '}' {
			return u, badKey(KeyUUID, s, "invalid input syntax for type uuid", "22P02")
		}
		src = src[1:]
	}
	if len(src) != 0 {
		return u, badKey(KeyUUID, s, "invalid input syntax for type uuid", "22P02")
	}
	return u, nil
}

// FormatUUID renders u in PostgreSQL's output form (lower-case 8-4-4-4-12).
func FormatUUID(u [16]byte) string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:36], u[10:16])
	return string(b[:])
}
