package shard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// sqlState extracts the SQLSTATE of err the way the proxy edge does.
func sqlState(err error) string {
	var s interface{ SQLState() string }
	if errors.As(err, &s) {
		return s.SQLState()
	}
	return ""
}

func mustParse(t testing.TB, typ KeyType, s string) Key {
	t.Helper()
	k, err := ParseKey(typ, s)
	if err != nil {
		t.Fatalf("ParseKey(%v, %q): %v", typ, s, err)
	}
	return k
}

func be16(v int16) []byte { return binary.BigEndian.AppendUint16(nil, uint16(v)) }
func be32(v int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }
func be64(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }

func TestIntKeyEquivalence(t *testing.T) {
	cases := []struct {
		v     int64
		texts []string
	}{
		{42, []string{"42", " 42", "42 ", "\t\n42\r\f\v", "+42", "0042", "0x2A", "0X2a", "0o52", "0b101010", "4_2", "0x2_A"}},
		{-42, []string{"-42", " -42 ", "-0x2a", "-0o52", "-0b10_1010"}},
		{0, []string{"0", "-0", "+0", "000", "0x0"}},
		{32767, []string{"32767"}},
		{-32768, []string{"-32768"}},
		{2147483647, []string{"2147483647"}},
		{-2147483648, []string{"-2147483648"}},
		{9223372036854775807, []string{"9223372036854775807", "0x7FFFFFFFFFFFFFFF", "9_223_372_036_854_775_807"}},
		{-9223372036854775808, []string{"-9223372036854775808", "-0x8000000000000000"}},
	}
	for _, c := range cases {
		want := KeyFromInt(c.v)
		if len(want) != 9 || want[0] != 0x01 || !bytes.Equal(want[1:], be64(c.v)) {
			t.Fatalf("KeyFromInt(%d) = %x", c.v, want)
		}
		for _, s := range c.texts {
			if got := mustParse(t, KeyInt, s); !bytes.Equal(got, want) {
				t.Errorf("ParseKey(int, %q) = %x, want %x", s, got, want)
			}
		}
		bins := [][]byte{be64(c.v)}
		if int64(int32(c.v)) == c.v {
			bins = append(bins, be32(int32(c.v)))
		}
		if int64(int16(c.v)) == c.v {
			bins = append(bins, be16(int16(c.v)))
		}
		for _, b := range bins {
			got, err := DecodeBinaryKey(KeyInt, b)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("DecodeBinaryKey(int, %x) = %x, %v; want %x", b, got, err, want)
			}
		}
	}
}

func TestIntKeyErrors(t *testing.T) {
	cases := []struct {
		in, code string
	}{
		{"", "22P02"}, {" ", "22P02"}, {"-", "22P02"}, {"+", "22P02"}, {"4 2", "22P02"},
		{"42x", "22P02"}, {"x42", "22P02"}, {"1__2", "22P02"}, {"_1", "22P02"}, {"1_", "22P02"},
		{"0x", "22P02"}, {"0x_1", "22P02"}, {"0b2", "22P02"}, {"0o8", "22P02"}, {"--1", "22P02"},
		{"+-1", "22P02"}, {"1.0", "22P02"}, {"1e3", "22P02"}, {"４２", "22P02"}, {"42\x00", "22P02"},
		{"9223372036854775808", "22003"}, {"-9223372036854775809", "22003"},
		{"0x8000000000000000", "22003"}, {"99999999999999999999999999", "22003"},
	}
	for _, c := range cases {
		k, err := ParseKey(KeyInt, c.in)
		if err == nil {
			t.Errorf("ParseKey(int, %q) = %x, want error", c.in, k)
			continue
		}
		if !errors.Is(err, ErrBadKey) {
			t.Errorf("ParseKey(int, %q) error %v does not wrap ErrBadKey", c.in, err)
		}
		if got := sqlState(err); got != c.code {
			t.Errorf("ParseKey(int, %q) SQLSTATE %q, want %q (%v)", c.in, got, c.code, err)
		}
	}
	for _, b := range [][]byte{nil, {1}, {1, 2, 3}, make([]byte, 5), make([]byte, 16)} {
		_, err := DecodeBinaryKey(KeyInt, b)
		if !errors.Is(err, ErrBadKey) || sqlState(err) != "08P01" {
			t.Errorf("DecodeBinaryKey(int, %x) = %v, want ErrBadKey/08P01", b, err)
		}
	}
}

func TestUUIDKey(t *testing.T) {
	want := Key{0x03, 0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11}
	// The accepted spellings listed in the PostgreSQL manual (8.12 UUID Type).
	for _, s := range []string{
		"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
		"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
		"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
		"a0eebc999c0b4ef8bb6d6bb9bd380a11",
		"a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
		"{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
		"{A0eEbC999c0b4ef8bb6d6bb9bd380a11}",
	} {
		if got := mustParse(t, KeyUUID, s); !bytes.Equal(got, want) {
			t.Errorf("ParseKey(uuid, %q) = %x, want %x", s, got, want)
		}
	}
	got, err := DecodeBinaryKey(KeyUUID, want[1:])
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("DecodeBinaryKey(uuid) = %x, %v", got, err)
	}
	if s := FormatUUID([16]byte(want[1:])); s != "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" {
		t.Errorf("FormatUUID = %q", s)
	}
	for _, s := range []string{
		"", "{}", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
		"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-", "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
		"a0eeb-c99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
		"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
		" a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
		"{{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}}",
	} {
		_, err := ParseKey(KeyUUID, s)
		if !errors.Is(err, ErrBadKey) || sqlState(err) != "22P02" {
			t.Errorf("ParseKey(uuid, %q) = %v, want ErrBadKey/22P02", s, err)
		}
	}
	if _, err := DecodeBinaryKey(KeyUUID, make([]byte, 15)); !errors.Is(err, ErrBadKey) || sqlState(err) != "08P01" {
		t.Errorf("DecodeBinaryKey(uuid, 15 bytes) = %v", err)
	}
}

func TestTextKey(t *testing.T) {
	for _, s := range []string{"", "a", "42", "Ünïcödé", "日本語", "😀", "O'Reilly"} {
		want := append([]byte{0x02}, s...)
		if got := KeyFromText(s); !bytes.Equal(got, want) {
			t.Errorf("KeyFromText(%q) = %x", s, got)
		}
		if got := mustParse(t, KeyText, s); !bytes.Equal(got, want) {
			t.Errorf("ParseKey(text, %q) = %x", s, got)
		}
		if got, err := DecodeBinaryKey(KeyText, []byte(s)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("DecodeBinaryKey(text, %q) = %x, %v", s, got, err)
		}
	}
	// Text "42" and int 42 are different keys (type tag).
	if bytes.Equal(KeyFromText("42"), KeyFromInt(42)) {
		t.Fatal("text and int keys collide")
	}
	for _, s := range []string{"\xff", "a\x00b", "\xc3\x28"} {
		_, err := ParseKey(KeyText, s)
		if !errors.Is(err, ErrBadKey) || sqlState(err) != "22021" {
			t.Errorf("ParseKey(text, %q) = %v, want ErrBadKey/22021", s, err)
		}
		_, err = DecodeBinaryKey(KeyText, []byte(s))
		if !errors.Is(err, ErrBadKey) {
			t.Errorf("DecodeBinaryKey(text, %q) = %v, want ErrBadKey", s, err)
		}
	}
	for _, typ := range []KeyType{0, 4, 255} {
		if _, err := ParseKey(typ, "1"); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParseKey(%v) = %v, want ErrBadKey", typ, err)
		}
		if _, err := DecodeBinaryKey(typ, []byte{1}); !errors.Is(err, ErrBadKey) {
			t.Errorf("DecodeBinaryKey(%v) = %v, want ErrBadKey", typ, err)
		}
	}
}

func TestCompositeKey(t *testing.T) {
	a, b := KeyFromInt(1), KeyFromText("ab")
	got := Composite(a, b)
	want := []byte{0x04,
		0, 0, 0, 9, 0x01, 0, 0, 0, 0, 0, 0, 0, 1,
		0, 0, 0, 3, 0x02, 'a', 'b'}
	if !bytes.Equal(got, want) {
		t.Fatalf("Composite = %x, want %x", got, want)
	}
	if c := Composite(a); !bytes.Equal(c, a) {
		t.Errorf("Composite(one part) = %x, want the part %x", c, a)
	}
	if c := Composite(); c != nil {
		t.Errorf("Composite() = %x, want nil", c)
	}
	if bytes.Equal(Composite(a, b), Composite(b, a)) {
		t.Error("composite ignores part order")
	}
	if bytes.Equal(Composite(KeyFromText("ab"), KeyFromText("c")), Composite(KeyFromText("a"), KeyFromText("bc"))) {
		t.Error("composite is ambiguous")
	}
	parts, ok := got.Parts()
	if !ok || len(parts) != 2 || !bytes.Equal(parts[0], a) || !bytes.Equal(parts[1], b) {
		t.Errorf("Parts = %x, %v", parts, ok)
	}
	// Composite must not alias its inputs.
	in := KeyFromInt(7)
	c := Composite(in)
	c[1] = 0xff
	if in[1] != 0 {
		t.Error("Composite(one part) aliases its input")
	}
	for _, bad := range []Key{nil, {0x04}, {0x04, 0, 0, 0}, {0x04, 0, 0, 0, 9, 1}, {0x05}, {0x01, 1}, {0x03}} {
		if _, ok := bad.Parts(); ok {
			t.Errorf("Parts(%x) ok, want malformed", bad)
		}
	}
	if _, ok := Composite(a, b)[:5].Parts(); ok {
		t.Error("truncated composite parsed")
	}
}

func TestKeyString(t *testing.T) {
	u, _ := ParseUUID("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11")
	cases := []struct {
		k    Key
		want string
	}{
		{KeyFromInt(-42), "-42"},
		{KeyFromText("O'Reilly"), "'O''Reilly'"},
		{KeyFromUUID(u), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{Composite(KeyFromInt(1), KeyFromText("x")), "(1, 'x')"},
		{Key{0x09, 0x01}, "invalid-key:0x0901"},
		{nil, "invalid-key:0x"},
	}
	for _, c := range cases {
		if got := c.k.String(); got != c.want {
			t.Errorf("String(%x) = %q, want %q", []byte(c.k), got, c.want)
		}
	}
	if KeyFromInt(1).Type() != KeyInt || KeyFromText("").Type() != KeyText || KeyFromUUID(u).Type() != KeyUUID || Composite(KeyFromInt(1), KeyFromInt(2)).Type() != 0 {
		t.Error("Type() wrong")
	}
}

func TestKeyTypeText(t *testing.T) {
	for in, want := range map[string]KeyType{
		"int": KeyInt, "INT8": KeyInt, "bigint": KeyInt, "integer": KeyInt, "smallint": KeyInt, "int2": KeyInt, "serial": KeyInt,
		"text": KeyText, "varchar": KeyText, "Character Varying": KeyText, "uuid": KeyUUID,
	} {
		var k KeyType
		if err := k.UnmarshalText([]byte(in)); err != nil || k != want {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", in, k, err, want)
		}
	}
	for _, in := range []string{"", "numeric", "bpchar", "char(3)", "float8"} {
		var k KeyType
		if err := k.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("UnmarshalText(%q) = %v, want error", in, k)
		}
	}
	for _, k := range []KeyType{KeyInt, KeyText, KeyUUID} {
		b, err := k.MarshalText()
		var back KeyType
		if err != nil || back.UnmarshalText(b) != nil || back != k {
			t.Errorf("round trip of %v: %s %v", k, b, err)
		}
	}
	if _, err := KeyType(0).MarshalText(); err == nil {
		t.Error("MarshalText(0) succeeded")
	}
	if KeyType(9).String() != "KeyType(9)" {
		t.Error(KeyType(9).String())
	}
}
