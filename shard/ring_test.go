package shard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/cespare/xxhash/v2"
)

func equalWeights(n int) []int {
	w := make([]int, n)
	for i := range w {
		w[i] = 1
	}
	return w
}

func mustRing(t testing.TB, n int) *Ring {
	t.Helper()
	r, err := NewRing(equalWeights(n), 0)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// seqIntHashes returns the ring positions of the int keys 0..n-1, built
// without allocating a Key per value.
func seqIntHashes(n int) []uint64 {
	hs := make([]uint64, n)
	var k [9]byte
	k[0] = tagInt
	for i := range hs {
		binary.BigEndian.PutUint64(k[1:], uint64(i))
		hs[i] = xxhash.Sum64(k[:])
	}
	return hs
}

// balance returns max/mean keys per shard.
func balance(r *Ring, hs []uint64) (float64, []int) {
	cnt := make([]int, r.NumShards())
	for _, h := range hs {
		cnt[r.LocateHash(h)]++
	}
	return float64(slices.Max(cnt)) / (float64(len(hs)) / float64(r.NumShards())), cnt
}

// movedFraction returns the fraction of keys whose shard differs.
func movedFraction(a, b *Ring, hs []uint64) float64 {
	moved := 0
	for _, h := range hs {
		if a.Name(a.LocateHash(h)) != b.Name(b.LocateHash(h)) {
			moved++
		}
	}
	return float64(moved) / float64(len(hs))
}

func TestRingErrors(t *testing.T) {
	cases := []struct {
		name    string
		names   []string
		weights []int
		vnodes  int
	}{
		{"no shards", nil, nil, 0},
		{"empty name", []string{"a", ""}, nil, 0},
		{"duplicate", []string{"a", "a"}, nil, 0},
		{"weight 0", []string{"a"}, []int{0}, 0},
		{"negative weight", []string{"a"}, []int{-1}, 0},
		{"weights length", []string{"a", "b"}, []int{1}, 0},
		{"negative vnodes", []string{"a"}, nil, -1},
		{"too many points", []string{"a", "b"}, []int{MaxRingPoints, 1}, 1},
		{"overflow", []string{"a"}, []int{math.MaxInt}, math.MaxInt},
	}
	for _, c := range cases {
		if _, err := NewNamedRing(c.names, c.weights, c.vnodes); !errors.Is(err, ErrInvalidTopology) {
			t.Errorf("%s: err = %v, want ErrInvalidTopology", c.name, err)
		}
	}
	if _, err := NewRing(nil, 0); !errors.Is(err, ErrInvalidTopology) {
		t.Errorf("NewRing(nil) = %v", err)
	}
}

func TestRingBasics(t *testing.T) {
	r := mustRing(t, 3)
	if r.NumShards() != 3 || r.VirtualNodes() != DefaultVirtualNodes || r.Name(0) != "s0" || r.Name(2) != "s2" || r.Name(3) != "" || r.Name(-1) != "" {
		t.Fatalf("ring accessors: %d %d %q", r.NumShards(), r.VirtualNodes(), r.Name(0))
	}
	if len(r.points) != 3*DefaultVirtualNodes || !slices.IsSorted(r.points) {
		t.Fatalf("points: %d sorted=%v", len(r.points), slices.IsSorted(r.points))
	}
	// Total: extreme positions and odd keys all land on a valid shard.
	for _, h := range []uint64{0, 1, r.points[0], r.points[0] - 1, r.points[len(r.points)-1], r.points[len(r.points)-1] + 1, math.MaxUint64} {
		if id := r.LocateHash(h); id < 0 || int(id) >= 3 {
			t.Errorf("LocateHash(%x) = %d", h, id)
		}
	}
	// Wrap-around: past the last point is the owner of the first point.
	if last := r.points[len(r.points)-1]; last != math.MaxUint64 {
		if r.LocateHash(last+1) != ID(r.owners[0]) {
			t.Error("no wrap-around past the last point")
		}
	}
	// A position equal to a point belongs to that point's owner.
	for i := 0; i < len(r.points); i += 97 {
		if r.LocateHash(r.points[i]) != ID(r.owners[i]) {
			t.Fatalf("point %d not owned by its owner", i)
		}
	}
	for _, k := range []Key{nil, {}, {0xff}, KeyFromInt(1)} {
		if id := r.Locate(k); id < 0 || int(id) >= 3 || id != r.Locate(k) {
			t.Errorf("Locate(%x) = %d", []byte(k), id)
		}
	}
	// One shard: everything goes to it.
	r1 := mustRing(t, 1)
	for i := range 1000 {
		if r1.Locate(KeyFromInt(int64(i))) != 0 {
			t.Fatal("single-shard ring placed a key elsewhere")
		}
	}
}

// Points derive from names: reordering shards changes no key's shard name,
// renaming one shard moves only keys from its old name or to its new one.
func TestRingNameStability(t *testing.T) {
	hs := seqIntHashes(50000)
	a, _ := NewNamedRing([]string{"alpha", "beta", "gamma", "delta"}, nil, 0)
	b, _ := NewNamedRing([]string{"delta", "gamma", "alpha", "beta"}, nil, 0)
	if f := movedFraction(a, b, hs); f != 0 {
		t.Errorf("reordering shards moved %.4f of keys", f)
	}
	c, _ := NewNamedRing([]string{"alpha", "beta", "gamma", "epsilon"}, nil, 0)
	for _, h := range hs {
		na, nc := a.Name(a.LocateHash(h)), c.Name(c.LocateHash(h))
		if na != nc && na != "delta" && nc != "epsilon" {
			t.Fatalf("renaming delta to epsilon moved a key from %s to %s", na, nc)
		}
	}
	// Adding a shard at the end moves keys only to the new shard.
	d, _ := NewNamedRing([]string{"alpha", "beta", "gamma", "delta", "eta"}, nil, 0)
	for _, h := range hs {
		na, nd := a.Name(a.LocateHash(h)), d.Name(d.LocateHash(h))
		if na != nd && nd != "eta" {
			t.Fatalf("adding eta moved a key from %s to %s", na, nd)
		}
	}
}

func TestRingWeights(t *testing.T) {
	r, err := NewNamedRing([]string{"s0", "s1", "s2"}, []int{1, 2, 1}, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, cnt := balance(r, seqIntHashes(400000))
	share := float64(cnt[1]) / 400000
	if share < 0.475 || share > 0.525 {
		t.Errorf("weight-2 shard has share %.4f (counts %v), want ≈ 0.5", share, cnt)
	}
	// NewRing with nil-equivalent weights equals NewNamedRing(nil weights).
	x, _ := NewRing([]int{1, 1}, 64)
	y, _ := NewNamedRing([]string{"s0", "s1"}, nil, 64)
	if !slices.Equal(x.points, y.points) || !slices.Equal(x.owners, y.owners) {
		t.Error("NewRing differs from NewNamedRing with s0.. names")
	}
}

// The ring does not depend on the order of the shard list, and equal
// positions go to the shard whose name sorts first.
func TestRingTieBreak(t *testing.T) {
	a, _ := NewNamedRing([]string{"b", "a"}, nil, 8)
	b, _ := NewNamedRing([]string{"a", "b"}, nil, 8)
	for i := range a.points {
		if a.points[i] != b.points[i] || a.Name(ID(a.owners[i])) != b.Name(ID(b.owners[i])) {
			t.Fatal("ring depends on shard order")
		}
	}
	// Force collisions: a point hash that ignores the shard name.
	suffixHash := func(b []byte) uint64 {
		i := slices.Index(b, '#')
		return xxhash.Sum64(b[i:])
	}
	for _, names := range [][]string{{"zeta", "alpha", "mid"}, {"mid", "zeta", "alpha"}} {
		r, err := newRing(names, nil, 16, suffixHash)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.points) != 16 {
			t.Fatalf("%d points after dropping collisions, want 16", len(r.points))
		}
		for _, h := range seqIntHashes(1000) {
			if got := r.Name(r.LocateHash(h)); got != "alpha" {
				t.Fatalf("collided points owned by %q, want alpha", got)
			}
		}
	}
}

// Deterministic, not timing: the balance over 1M sequential int keys is a
// fixed number for a given encoding and vnodes default.
func TestBalance(t *testing.T) {
	hs := seqIntHashes(1_000_000)
	for _, n := range []int{2, 3, 4, 5, 6, 7, 8} {
		b, cnt := balance(mustRing(t, n), hs)
		t.Logf("%d shards: max/mean = %.4f counts=%v", n, b, cnt)
		if b > 1.05 {
			t.Errorf("%d shards: max/mean = %.4f > 1.05", n, b)
		}
	}
}

// Going from N to N+1 shards moves about 1/(N+1) of the keys (within 10%),
// against N/(N+1) for modulo hashing.
func TestMovedFraction(t *testing.T) {
	hs := seqIntHashes(1_000_000)
	prev := mustRing(t, 1)
	for n := 1; n <= 7; n++ {
		next := mustRing(t, n+1)
		f := movedFraction(prev, next, hs)
		ideal := 1 / float64(n+1)
		modulo := 0
		for _, h := range hs {
			if h%uint64(n) != h%uint64(n+1) {
				modulo++
			}
		}
		t.Logf("%d→%d shards: moved %.4f (ideal %.4f), modulo hashing would move %.4f", n, n+1, f, ideal, float64(modulo)/float64(len(hs)))
		if math.Abs(f-ideal) > 0.1*ideal {
			t.Errorf("%d→%d shards: moved %.4f, want within 10%% of %.4f", n, n+1, f, ideal)
		}
		prev = next
	}
}

func TestLocateAllocs(t *testing.T) {
	r := mustRing(t, 8)
	k := Composite(KeyFromInt(7), KeyFromText("x"))
	if a := testing.AllocsPerRun(1000, func() { r.Locate(k) }); a != 0 {
		t.Errorf("Ring.Locate allocates %.1f times", a)
	}
}

func ExampleRing_Locate() {
	r, _ := NewRing([]int{1, 1, 1, 1}, 0)
	k := Composite(KeyFromInt(42), KeyFromText("eu"))
	fmt.Println(r.Name(r.Locate(k)) == r.Name(r.Locate(Composite(mustKey(ParseKey(KeyInt, "0x2a")), KeyFromText("eu")))))
	// Output: true
}

func mustKey(k Key, err error) Key {
	if err != nil {
		panic(err)
	}
	return k
}
