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

// Moves places every key of keys on old's and new's rings and counts the
// keys whose shard (compared by name, since IDs may differ between
// topologies) changes. It is meant for planning a rebalance; it does not
// block beyond consuming keys.
func Moves(old, new *Topology, keys iter.Seq[Key]) MoveStats {
	st := MoveStats{ByPair: map[Move]int{}}
	for k := range keys {
		st.Total++
		from := old.shards[old.ring.Locate(k)].Name
		to := new.shards[new.ring.Locate(k)].Name
		if from != to {
			st.Moved++
			st.ByPair[Move{From: from, To: to}]++
		}
	}
	return st
}
