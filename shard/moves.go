package shard

import "iter"

// Move is a pair of shard names: keys that were on From and are on To.
type Move struct{ From, To string }

// MoveStats summarizes how keys move between two topologies.
type MoveStats struct {
	Total  int          // keys examined
	Moved  int          // keys whose shard name differs
	ByPair map[Move]int // moved keys per (old shard, new shard) pair
}

// Moves places every key of keys on the rings of before and after and
// counts the keys whose shard (compared by name, since IDs may differ
// between topologies) changes. It is meant for planning a rebalance. It
// does not block beyond consuming keys and is safe for concurrent use.
func Moves(before, after *Topology, keys iter.Seq[Key]) MoveStats {
	st := MoveStats{ByPair: map[Move]int{}}
	for k := range keys {
		st.Total++
		from := before.shards[before.ring.Locate(k)].Name
		to := after.shards[after.ring.Locate(k)].Name
		if from != to {
			st.Moved++
			st.ByPair[Move{From: from, To: to}]++
		}
	}
	return st
}
