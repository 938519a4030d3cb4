package replica

// freeSlots is how many leases n can hand out without waiting: connection
// slots neither in use nor being connected.
func (n *Node) freeSlots() int { return n.slots.free() }

// spill returns the candidate with the most free connection slots, n
// (the policy's saturated choice) when none has any. Ties keep the
// earlier candidate.
func spill(cands []*Node, n *Node) *Node {
	best, free := n, 0
	for _, c := range cands {
		if f := c.freeSlots(); f > free {
			best, free = c, f
		}
	}
	return best
}

// choose applies the balancing policy to the eligible candidates (len >= 1).
// It allocates nothing for up to 16 candidates.
func (s *Set) choose(p Policy, c []*Node, key uint64) *Node {
	if len(c) == 1 {
		return c[0]
	}
	switch p {
	case WeightedRoundRobin:
		s.policyMu.Lock()
		n := smoothWRR(c)
		s.policyMu.Unlock()
		return n
	case LeastConnections:
		return s.leastBy(c, func(a, b *Node) int {
			return cmpInt64(a.inUse.Load(), b.inUse.Load())
		})
	case WeightedLeastConnections:
		var buf [16]*Node
		tied := minSet(buf[:0], c, func(a, b *Node) int {
			// a.inUse/a.weight vs b.inUse/b.weight, cross-multiplied.
			return cmpInt64(a.inUse.Load()*int64(b.weight), b.inUse.Load()*int64(a.weight))
		})
		if len(tied) == 1 {
			return tied[0]
		}
		s.policyMu.Lock()
		n := smoothWRR(tied)
		s.policyMu.Unlock()
		return n
	case LeastLatency:
		if x := s.rr.Add(1); x%16 == 0 {
			return c[(x/16)%uint64(len(c))] // keep measuring the slower nodes
		}
		return s.leastBy(c, func(a, b *Node) int {
			return cmpInt64(a.ewma.Load(), b.ewma.Load())
		})
	case Hash:
		return rendezvous(c, key)
	default:
		return s.roundRobin(c)
	}
}

func (s *Set) roundRobin(c []*Node) *Node {
	return c[s.rr.Add(1)%uint64(len(c))]
}

// leastBy returns a minimal candidate by cmp, ties broken round robin.
func (s *Set) leastBy(c []*Node, cmp func(a, b *Node) int) *Node {
	var buf [16]*Node
	tied := minSet(buf[:0], c, cmp)
	if len(tied) == 1 {
		return tied[0]
	}
	return s.roundRobin(tied)
}

// minSet appends to dst every candidate that compares equal to the minimum.
func minSet(dst, c []*Node, cmp func(a, b *Node) int) []*Node {
	dst = append(dst, c[0])
	for _, n := range c[1:] {
		switch r := cmp(n, dst[0]); {
		case r < 0:
			dst = append(dst[:0], n)
		case r == 0:
			dst = append(dst, n)
		}
	}
	return dst
}

// smoothWRR is nginx's smooth weighted round robin; the caller holds policyMu.
func smoothWRR(c []*Node) *Node {
	total := 0
	var best *Node
	for _, n := range c {
		n.wrrCurrent += n.weight
		total += n.weight
		if best == nil || n.wrrCurrent > best.wrrCurrent {
			best = n
		}
	}
	best.wrrCurrent -= total
	return best
}

// rendezvous returns the candidate with the highest hash of (key, node):
// a key moves only when its node leaves the candidate set.
func rendezvous(c []*Node, key uint64) *Node {
	var best *Node
	var bestScore uint64
	for _, n := range c {
		score := mix64(key ^ n.hashSeed)
		if best == nil || score > bestScore {
			best, bestScore = n, score
		}
	}
	return best
}

// mix64 is the splitmix64 finalizer.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
