package shard

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// -update regenerates testdata/vectors.json.
//
// DO NOT run it to make a failing test pass. The vectors pin where every
// key lives: if the canonical encoding, the hash or the ring changes, rows
// already stored on shards would be looked for on the wrong shard.
// Regenerating the file is a compatibility break that needs a data
// migration and a major version; it is only legitimate to ADD vectors,
// and a diff of the file must then show additions only.
var update = flag.Bool("update", false, "regenerate testdata/vectors.json (compatibility break: see vectors_test.go)")

const vectorsFile = "testdata/vectors.json"

// vectorRingSizes are the ring sizes pinned: shards "s0".."s{n-1}",
// weight 1, DefaultVirtualNodes.
var vectorRingSizes = []int{1, 2, 3, 4, 8}

// Literal canonical bytes and xxhash values, independent of the vectors
// file (in the manner of vitess go/vt/vtgate/vindexes/xxhash_test.go).
// Never edit an existing row.
var pinnedKeys = []struct {
	name      string
	key       Key
	canonical []byte
	hash      uint64
	shardOf4  string // shard on NewRing([1,1,1,1], 0)
}{
	{"int 42", KeyFromInt(42),
		[]byte{0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a}, 0x7e1480456b8f3aa6, "s0"},
	{"int -1", KeyFromInt(-1),
		[]byte{0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 0xe4a42358fe73e0b6, "s2"},
	{"int min", KeyFromInt(-9223372036854775808),
		[]byte{0x01, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, 0x781d72b3df4e5192, "s2"},
	{"text empty", KeyFromText(""),
		[]byte{0x02}, 0x4b79b8c95732b0e7, "s0"},
	{"text unicode", KeyFromText("日本"),
		[]byte{0x02, 0xe6, 0x97, 0xa5, 0xe6, 0x9c, 0xac}, 0xe310cbb2b55ffd45, "s1"},
	{"uuid", KeyFromUUID([16]byte{0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11}),
		[]byte{0x03, 0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11}, 0x29c68927d0a43a88, "s2"},
	{"composite (1, 'ab')", Composite(KeyFromInt(1), KeyFromText("ab")),
		[]byte{0x04, 0x00, 0x00, 0x00, 0x09, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x03, 0x02, 0x61, 0x62}, 0xdd93be7cc755ec42, "s1"},
}

func TestPinnedKeys(t *testing.T) {
	// The hash itself: XXH64 with seed 0 reference values, and one ring point.
	for s, want := range map[string]uint64{
		"": 0xef46db3751d8e999, "a": 0xd24ec4f1a98c6e5b, "abc": 0x44bc2cf5ad770999, "s0#0": 0x39964ce0dbf37b22,
	} {
		if got := xxhash.Sum64String(s); got != want {
			t.Errorf("xxhash64(%q) = %#x, want %#x", s, got, want)
		}
	}
	r4 := mustRing(t, 4)
	for _, p := range pinnedKeys {
		if !bytes.Equal(p.key, p.canonical) {
			t.Errorf("%s: canonical bytes %#v, pinned %#v", p.name, []byte(p.key), p.canonical)
		}
		if h := p.key.Hash(); h != p.hash {
			t.Errorf("%s: hash %#x, pinned %#x", p.name, h, p.hash)
		}
		if s := r4.Name(r4.Locate(p.key)); s != p.shardOf4 {
			t.Errorf("%s: on %s of 4 shards, pinned %s", p.name, s, p.shardOf4)
		}
	}
}

// vectorPart is one column value as written in SQL or a text Bind param.
type vectorPart struct {
	Type  string `json:"type"`  // "int", "text" or "uuid"
	Value string `json:"value"` // parsed with ParseKey
}

type vector struct {
	Key       []vectorPart `json:"key"`       // 1 part: scalar key; more: Composite
	Canonical string       `json:"canonical"` // hex of the Key bytes
	Hash      string       `json:"xxhash"`    // hex of Key.Hash()
	Shards    []string     `json:"shards"`    // shard for each ring size
}

type vectorFile struct {
	Comment      string   `json:"comment"`
	VirtualNodes int      `json:"virtual_nodes"`
	RingSizes    []int    `json:"ring_sizes"`
	Vectors      []vector `json:"vectors"`
}

func (v vector) build() (Key, error) {
	parts := make([]Key, len(v.Key))
	for i, p := range v.Key {
		var typ KeyType
		if err := typ.UnmarshalText([]byte(p.Type)); err != nil {
			return nil, err
		}
		k, err := ParseKey(typ, p.Value)
		if err != nil {
			return nil, err
		}
		parts[i] = k
	}
	return Composite(parts...), nil
}

// vectorInputs lists the keys pinned by -update (only used to generate).
func vectorInputs() [][]vectorPart {
	var in [][]vectorPart
	one := func(typ, v string) { in = append(in, []vectorPart{{typ, v}}) }
	for _, v := range []string{"0", "1", "-1", "42", "-42", "100", "-100", "1000", "12345", "-12345",
		"32767", "-32768", "2147483647", "-2147483648", "9223372036854775807", "-9223372036854775808",
		"1099511627776", "-1099511627776", "4294967296", "281474976710655"} {
		one("int", v)
	}
	for i := 2; i <= 64; i++ {
		if i != 42 && i != 100 {
			one("int", strconv.Itoa(i))
		}
	}
	for _, v := range []string{"", "a", "A", "42", "hello", "hello world", "Ünïcödé", "日本語", "😀", "O'Reilly",
		"tab\there", "Ω", strings.Repeat("x", 200), "user@example.com"} {
		one("text", v)
	}
	for i := 1; i <= 20; i++ {
		one("text", fmt.Sprintf("user-%d", i))
	}
	for _, v := range []string{"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff",
		"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12}",
		"123e4567e89b12d3a456426614174000", "550e8400-e29b-41d4-a716-446655440000",
		"6ba7b810-9dad-11d1-80b4-00c04fd430c8", "6ba7b811-9dad-11d1-80b4-00c04fd430c8",
		"f47ac10b-58cc-4372-a567-0e02b2c3d479", "0188e4a5-1b2c-7d3e-8f40-123456789abc"} {
		one("uuid", v)
	}
	in = append(in,
		[]vectorPart{{"int", "1"}, {"text", "a"}},
		[]vectorPart{{"text", "a"}, {"int", "1"}},
		[]vectorPart{{"int", "1"}, {"int", "2"}},
		[]vectorPart{{"int", "2"}, {"int", "1"}},
		[]vectorPart{{"text", ""}, {"text", ""}},
		[]vectorPart{{"text", "ab"}, {"text", "c"}},
		[]vectorPart{{"text", "a"}, {"text", "bc"}},
		[]vectorPart{{"uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}, {"int", "7"}},
		[]vectorPart{{"int", "42"}, {"text", "42"}, {"uuid", "00000000-0000-0000-0000-000000000000"}},
		[]vectorPart{{"int", "-9223372036854775808"}, {"int", "9223372036854775807"}},
	)
	for i := 1; i <= 10; i++ {
		in = append(in, []vectorPart{{"int", strconv.Itoa(i)}, {"int", "1"}})
	}
	return in
}

func vectorRings(t *testing.T) []*Ring {
	rings := make([]*Ring, len(vectorRingSizes))
	for i, n := range vectorRingSizes {
		rings[i] = mustRing(t, n)
	}
	return rings
}

func writeVectors(t *testing.T) {
	rings := vectorRings(t)
	f := vectorFile{
		Comment:      "Pinned shard placement. Never regenerate: see vectors_test.go. Shards are s0..s{n-1}, weight 1, default virtual nodes; shards[i] is for ring_sizes[i].",
		VirtualNodes: DefaultVirtualNodes,
		RingSizes:    vectorRingSizes,
	}
	for _, parts := range vectorInputs() {
		v := vector{Key: parts}
		k, err := v.build()
		if err != nil {
			t.Fatalf("%v: %v", parts, err)
		}
		v.Canonical = hex.EncodeToString(k)
		v.Hash = fmt.Sprintf("%016x", k.Hash())
		for _, r := range rings {
			v.Shards = append(v.Shards, r.Name(r.Locate(k)))
		}
		f.Vectors = append(f.Vectors, v)
	}
	// One vector per line, so that diffs are readable.
	var buf bytes.Buffer
	head, _ := json.Marshal(struct {
		Comment      string `json:"comment"`
		VirtualNodes int    `json:"virtual_nodes"`
		RingSizes    []int  `json:"ring_sizes"`
	}{f.Comment, f.VirtualNodes, f.RingSizes})
	buf.Write(head[:len(head)-1])
	buf.WriteString(`,"vectors":[` + "\n")
	for i, v := range f.Vectors {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b)
		if i < len(f.Vectors)-1 {
			buf.WriteByte(',')
		}
		buf.WriteByte('\n')
	}
	buf.WriteString("]}\n")
	if err := os.MkdirAll(filepath.Dir(vectorsFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vectorsFile, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d vectors to %s", len(f.Vectors), vectorsFile)
}

// TestVectors checks every pinned key → shard vector. A failure means a
// key would move shards between versions: fix the code, not the file.
func TestVectors(t *testing.T) {
	if *update {
		writeVectors(t)
	}
	data, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatalf("pinned vectors missing: %v", err)
	}
	var f vectorFile
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatalf("%s: %v", vectorsFile, err)
	}
	if f.VirtualNodes != DefaultVirtualNodes {
		t.Fatalf("vectors pinned with %d virtual nodes, DefaultVirtualNodes is %d: changing the default moves keys", f.VirtualNodes, DefaultVirtualNodes)
	}
	rings := make([]*Ring, len(f.RingSizes))
	for i, n := range f.RingSizes {
		rings[i] = mustRing(t, n)
	}
	types := map[string]int{}
	for i, v := range f.Vectors {
		k, err := v.build()
		if err != nil {
			t.Errorf("vector %d %v: %v", i, v.Key, err)
			continue
		}
		if len(v.Key) > 1 {
			types["composite"]++
		} else {
			types[v.Key[0].Type]++
		}
		if got := hex.EncodeToString(k); got != v.Canonical {
			t.Errorf("vector %d %v: canonical %s, pinned %s", i, v.Key, got, v.Canonical)
		}
		if got := fmt.Sprintf("%016x", k.Hash()); got != v.Hash {
			t.Errorf("vector %d %v: xxhash %s, pinned %s", i, v.Key, got, v.Hash)
		}
		if len(v.Shards) != len(rings) {
			t.Fatalf("vector %d: %d shards for %d ring sizes", i, len(v.Shards), len(rings))
		}
		for j, r := range rings {
			if got := r.Name(r.Locate(k)); got != v.Shards[j] {
				t.Errorf("vector %d %v on %d shards: %s, pinned %s", i, v.Key, f.RingSizes[j], got, v.Shards[j])
			}
		}
	}
	// Guard against a truncated or emptied file passing vacuously.
	for _, typ := range []string{"int", "text", "uuid", "composite"} {
		if types[typ] < 10 {
			t.Errorf("only %d %s vectors pinned (file truncated?)", types[typ], typ)
		}
	}
	if len(f.Vectors) < len(vectorInputs()) {
		t.Errorf("%d vectors pinned, generator has %d: vectors were removed", len(f.Vectors), len(vectorInputs()))
	}
	if !equalInts(f.RingSizes, vectorRingSizes) {
		t.Errorf("ring sizes %v, want %v", f.RingSizes, vectorRingSizes)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The same value reaching the router as a literal, a text Bind parameter
// or a binary Bind parameter of any integer width gives the same shard.
func TestBindFormsSameShard(t *testing.T) {
	r := mustRing(t, 8)
	for _, v := range []int64{0, 1, -1, 42, -42, 32767, -32768, 1 << 20, -(1 << 31)} {
		want := r.Locate(KeyFromInt(v))
		texts := []string{strconv.FormatInt(v, 10), " " + strconv.FormatInt(v, 10) + " "}
		for _, s := range texts {
			if got := r.Locate(mustParse(t, KeyInt, s)); got != want {
				t.Errorf("%d as text %q: shard %d, want %d", v, s, got, want)
			}
		}
		bins := [][]byte{be64(v)}
		if int64(int32(v)) == v {
			bins = append(bins, be32(int32(v)))
		}
		if int64(int16(v)) == v {
			bins = append(bins, be16(int16(v)))
		}
		for _, b := range bins {
			k, err := DecodeBinaryKey(KeyInt, b)
			if err != nil || r.Locate(k) != want {
				t.Errorf("%d as binary %x: shard %d, %v; want %d", v, b, r.Locate(k), err, want)
			}
		}
	}
}
