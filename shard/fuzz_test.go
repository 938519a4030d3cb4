package shard

import (
	"bytes"
	"errors"
	"strconv"
	"testing"
)

// locateLinear is a reference implementation of Ring.LocateHash.
func locateLinear(r *Ring, h uint64) ID {
	best, bestPos := -1, uint64(0)
	for i, p := range r.points {
		if p >= h && (best < 0 || p < bestPos) {
			best, bestPos = i, p
		}
	}
	if best < 0 { // wrap around to the smallest point
		for i, p := range r.points {
			if best < 0 || p < bestPos {
				best, bestPos = i, p
			}
		}
	}
	return ID(r.owners[best])
}

// FuzzLocate: ring lookup is total, deterministic and agrees with a linear
// scan, for rings of 1..8 shards with various weights and virtual nodes.
func FuzzLocate(f *testing.F) {
	f.Add([]byte{}, uint8(0), uint8(0), uint8(0))
	f.Add([]byte(KeyFromInt(42)), uint8(3), uint8(7), uint8(1))
	f.Add([]byte(KeyFromText("日本語")), uint8(7), uint8(63), uint8(5))
	f.Add([]byte(Composite(KeyFromInt(1), KeyFromText("a"))), uint8(1), uint8(0), uint8(2))
	f.Add([]byte{0xff, 0x00}, uint8(255), uint8(255), uint8(255))
	defaults := make([]*Ring, 8)
	for i := range defaults {
		defaults[i] = mustRing(f, i+1)
	}
	f.Fuzz(func(t *testing.T, data []byte, n, vnodes, weightSeed uint8) {
		shards := 1 + int(n%8)
		weights := make([]int, shards)
		for i := range weights {
			weights[i] = 1 + int((weightSeed>>(i%8))&1)
		}
		r, err := NewRing(weights, 1+int(vnodes%64))
		if err != nil {
			t.Fatal(err)
		}
		k := Key(data)
		for _, ring := range []*Ring{r, defaults[shards-1]} {
			id := ring.Locate(k)
			if id < 0 || int(id) >= shards {
				t.Fatalf("Locate = %d with %d shards", id, shards)
			}
			if again := ring.Locate(Key(bytes.Clone(data))); again != id {
				t.Fatalf("Locate not deterministic: %d then %d", id, again)
			}
			if ref := locateLinear(ring, k.Hash()); ref != id {
				t.Fatalf("Locate = %d, linear scan says %d", id, ref)
			}
		}
	})
}

// FuzzParseKey: ParseKey never panics; errors wrap ErrBadKey with an
// SQLSTATE; accepted values are well-formed and round-trip; decimal
// integers agree with strconv.
func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"42", " -42 ", "0x2A", "1_000", "9223372036854775808", "", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
		"{a0eebc999c0b4ef8bb6d6bb9bd380a11}", "日本語", "\xff", "a\x00"} {
		for typ := range uint8(4) {
			f.Add(typ, s)
		}
	}
	f.Fuzz(func(t *testing.T, typ uint8, s string) {
		kt := KeyType(typ)
		k, err := ParseKey(kt, s)
		if err != nil {
			if !errors.Is(err, ErrBadKey) || sqlState(err) == "" {
				t.Fatalf("ParseKey(%v, %q) error %v: not ErrBadKey with SQLSTATE", kt, s, err)
			}
			_ = err.Error()
		} else {
			if k.Type() != kt {
				t.Fatalf("ParseKey(%v, %q) = %x of type %v", kt, s, []byte(k), k.Type())
			}
			_ = k.String()
			switch kt {
			case KeyInt, KeyUUID:
				back, err := ParseKey(kt, k.String())
				if err != nil || !bytes.Equal(back, k) {
					t.Fatalf("round trip of %q via %q: %x, %v", s, k.String(), []byte(back), err)
				}
			case KeyText:
				if !bytes.Equal(k, KeyFromText(s)) {
					t.Fatalf("text key of %q is %x", s, []byte(k))
				}
			}
		}
		if kt == KeyInt {
			if v, perr := strconv.ParseInt(s, 10, 64); perr == nil {
				if err != nil || !bytes.Equal(k, KeyFromInt(v)) {
					t.Fatalf("strconv accepts %q as %d but ParseKey gives %x, %v", s, v, []byte(k), err)
				}
			}
		}
	})
}

// FuzzDecodeBinaryKey: never panics; lengths accepted exactly as documented.
func FuzzDecodeBinaryKey(f *testing.F) {
	for _, b := range [][]byte{nil, {0, 42}, {0xff, 0xff, 0xff, 0xd6}, be64(-42), make([]byte, 16), {0xe6, 0x97, 0xa5}, {0xff}} {
		for typ := range uint8(4) {
			f.Add(typ, b)
		}
	}
	f.Fuzz(func(t *testing.T, typ uint8, b []byte) {
		kt := KeyType(typ)
		k, err := DecodeBinaryKey(kt, b)
		if err != nil {
			if !errors.Is(err, ErrBadKey) || sqlState(err) == "" {
				t.Fatalf("DecodeBinaryKey(%v, %x) error %v: not ErrBadKey with SQLSTATE", kt, b, err)
			}
			_ = err.Error()
			if kt == KeyInt && (len(b) == 2 || len(b) == 4 || len(b) == 8) || kt == KeyUUID && len(b) == 16 {
				t.Fatalf("DecodeBinaryKey(%v, %x) rejected a valid length: %v", kt, b, err)
			}
			return
		}
		if k.Type() != kt {
			t.Fatalf("DecodeBinaryKey(%v, %x) = %x of type %v", kt, b, []byte(k), k.Type())
		}
		if kt == KeyUUID && !bytes.Equal(k[1:], b) {
			t.Fatalf("uuid bytes changed: %x → %x", b, []byte(k))
		}
		// Text format of the decoded value parses to the same key.
		if kt != KeyText {
			if back, err := ParseKey(kt, k.String()); err != nil || !bytes.Equal(back, k) {
				t.Fatalf("binary %x and text %q disagree: %x, %v", b, k.String(), []byte(back), err)
			}
		}
	})
}

// FuzzKeyParts: arbitrary bytes never make Key methods panic, and a
// well-formed composite rebuilds to the same bytes.
func FuzzKeyParts(f *testing.F) {
	f.Add([]byte(Composite(KeyFromInt(1), KeyFromText("ab"))))
	f.Add([]byte{0x04, 0, 0, 0, 1})
	f.Add([]byte{0x04, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{0x02})
	f.Fuzz(func(t *testing.T, b []byte) {
		k := Key(b)
		_ = k.String()
		_ = k.Type()
		_ = k.matches([]KeyType{KeyInt, KeyText})
		_ = k.matches([]KeyType{KeyUUID})
		parts, ok := k.Parts()
		if ok && len(parts) >= 2 {
			if !bytes.Equal(Composite(parts...), k) {
				t.Fatalf("Composite(Parts(%x)) = %x", b, []byte(Composite(parts...)))
			}
		}
	})
}
