package shard

import (
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// ID is the index of a shard in its topology (or ring), 0..N-1.
type ID int

// DefaultVirtualNodes is the number of ring points per unit of shard weight
// used when 0 is given. Chosen by measurement (see TestBalance and the
// Balance benchmark): with 1024 points per shard, 1M sequential int keys
// spread over 2..8 equal shards with max/mean ≤ 1.05.
const DefaultVirtualNodes = 1024

// MaxRingPoints bounds the total number of points (sum of weight × vnodes)
// of one ring, to keep memory bounded (12 bytes per point).
const MaxRingPoints = 1 << 22

// Ring is a consistent-hash ring. A key is placed at xxhash64(key) and
// belongs to the shard owning the first point at or after that position,
// wrapping around past the largest point. Shard s with name n and weight w
// owns the w×vnodes points xxhash64(n + "#" + decimal(i)), i = 0..w×vnodes-1.
// Points depend only on the shard's name, never on its index, so adding a
// shard moves only keys to the new shard, and reordering shards changes
// nothing. Two points at the same position (never observed with 64-bit
// hashes, but defined) go to the shard whose name sorts first.
//
// A Ring is immutable and safe for concurrent use.
type Ring struct {
	points []uint64 // sorted ascending
	owners []int32  // owners[i] owns points[i]
	names  []string
	n      int
	vnodes int
}

// NewRing returns a ring of len(weights) shards named "s0", "s1", ... (the
// names used by the pinned test vectors), equivalent to
// NewNamedRing(names, weights, vnodes). vnodes 0 means DefaultVirtualNodes.
// Errors wrap ErrInvalidTopology.
func NewRing(weights []int, vnodes int) (*Ring, error) {
	names := make([]string, len(weights))
	for i := range names {
		names[i] = "s" + strconv.Itoa(i)
	}
	return NewNamedRing(names, weights, vnodes)
}

// NewNamedRing returns a ring over the named shards; shard i has name
// names[i] and weight weights[i] (nil weights means all 1). Names must be
// non-empty and unique, weights ≥ 1, vnodes ≥ 0 (0 means
// DefaultVirtualNodes), and the total number of points at most
// MaxRingPoints. Errors wrap ErrInvalidTopology.
func NewNamedRing(names []string, weights []int, vnodes int) (*Ring, error) {
	return newRing(names, weights, vnodes, xxhash.Sum64)
}

// newRing builds a ring with the given point hash (xxhash.Sum64 except in
// tests that force collisions).
func newRing(names []string, weights []int, vnodes int, hash func([]byte) uint64) (*Ring, error) {
	if len(names) == 0 {
		return nil, invalidf("ring needs at least one shard")
	}
	if weights != nil && len(weights) != len(names) {
		return nil, invalidf("%d shard names but %d weights", len(names), len(weights))
	}
	if vnodes < 0 {
		return nil, invalidf("virtual nodes %d < 0", vnodes)
	}
	if vnodes == 0 {
		vnodes = DefaultVirtualNodes
	}
	if len(names) > 1<<20 {
		return nil, invalidf("too many shards (%d)", len(names))
	}
	total := 0
	seen := make(map[string]bool, len(names))
	for i, name := range names {
		if name == "" {
			return nil, invalidf("shard %d has an empty name", i)
		}
		if seen[name] {
			return nil, invalidf("duplicate shard name %q", name)
		}
		seen[name] = true
		w := 1
		if weights != nil {
			w = weights[i]
		}
		if w < 1 {
			return nil, invalidf("shard %q has weight %d (want ≥ 1)", name, w)
		}
		if w > MaxRingPoints/vnodes || total+w*vnodes > MaxRingPoints {
			return nil, invalidf("ring would have more than %d points (weights × virtual nodes %d)", MaxRingPoints, vnodes)
		}
		total += w * vnodes
	}

	type pt struct {
		pos   uint64
		owner int32
	}
	pts := make([]pt, 0, total)
	buf := make([]byte, 0, 64)
	for i, name := range names {
		w := 1
		if weights != nil {
			w = weights[i]
		}
		buf = append(buf[:0], name...)
		buf = append(buf, '#')
		prefix := len(buf)
		for v := 0; v < w*vnodes; v++ {
			buf = strconv.AppendInt(buf[:prefix], int64(v), 10)
			pts = append(pts, pt{pos: hash(buf), owner: int32(i)})
		}
	}
	slices.SortFunc(pts, func(a, b pt) int {
		if a.pos != b.pos {
			if a.pos < b.pos {
				return -1
			}
			return 1
		}
		// Tie: the shard whose name sorts first wins; keep it first.
		switch na, nb := names[a.owner], names[b.owner]; {
		case na < nb:
			return -1
		case na > nb:
			return 1
		}
		return 0
	})
	// Drop duplicated positions (keeping the first, i.e. the lowest name)
	// so binary search sees each position once.
	r := &Ring{
		points: make([]uint64, 0, len(pts)),
		owners: make([]int32, 0, len(pts)),
		names:  slices.Clone(names),
		n:      len(names),
		vnodes: vnodes,
	}
	for i, p := range pts {
		if i > 0 && p.pos == pts[i-1].pos {
			continue
		}
		r.points = append(r.points, p.pos)
		r.owners = append(r.owners, p.owner)
	}
	return r, nil
}

// Locate returns the shard owning k. It is total (every key, including nil
// and malformed keys, maps to a shard in 0..NumShards()-1), deterministic
// across processes and versions, and does not allocate.
func (r *Ring) Locate(k Key) ID {
	return r.LocateHash(xxhash.Sum64(k))
}

// LocateHash returns the shard owning ring position h (h = Key.Hash()).
func (r *Ring) LocateHash(h uint64) ID {
	pts := r.points
	lo, hi := 0, len(pts)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if pts[m] < h {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == len(pts) {
		lo = 0
	}
	return ID(r.owners[lo])
}

// NumShards returns the number of shards of r.
func (r *Ring) NumShards() int { return r.n }

// VirtualNodes returns the points per unit of weight used to build r.
func (r *Ring) VirtualNodes() int { return r.vnodes }

// Name returns the name of shard id ("" when out of range).
func (r *Ring) Name(id ID) string {
	if id < 0 || int(id) >= r.n {
		return ""
	}
	return r.names[id]
}
