package shard

import (
	"fmt"
	"testing"
)

var sinkID ID

func BenchmarkLocate(b *testing.B) {
	keys := map[string]Key{
		"int":       KeyFromInt(123456789),
		"text":      KeyFromText("user@example.com"),
		"composite": Composite(KeyFromInt(42), KeyFromText("eu-west")),
	}
	for _, n := range []int{2, 8, 64} {
		r := mustRing(b, n)
		for _, name := range []string{"int", "text", "composite"} {
			k := keys[name]
			b.Run(fmt.Sprintf("shards=%d/%s", n, name), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					sinkID = r.Locate(k)
				}
			})
		}
	}
}

func BenchmarkTopologyLocate(b *testing.B) {
	top := mustTopology(b, testSpec())
	u, _ := ParseUUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
	k := Composite(KeyFromInt(1), KeyFromUUID(u))
	b.ReportAllocs()
	for b.Loop() {
		sinkID, _ = top.Locate("public.orders", k)
	}
}

var sinkKey Key

func BenchmarkParseKey(b *testing.B) {
	for _, c := range []struct {
		typ KeyType
		s   string
	}{{KeyInt, "-9223372036854775808"}, {KeyText, "user@example.com"}, {KeyUUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}} {
		b.Run(c.typ.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				sinkKey, _ = ParseKey(c.typ, c.s)
			}
		})
	}
}

func BenchmarkDecodeBinaryKey(b *testing.B) {
	v := be32(123456)
	b.ReportAllocs()
	for b.Loop() {
		sinkKey, _ = DecodeBinaryKey(KeyInt, v)
	}
}

func BenchmarkNewRing(b *testing.B) {
	for _, n := range []int{8, 64} {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			w := equalWeights(n)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := NewRing(w, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBalance reports max/mean keys per shard over 1M sequential int
// keys (target ≤ 1.05; asserted by TestBalance). ns/op is per 1M lookups.
func BenchmarkBalance(b *testing.B) {
	hs := seqIntHashes(1_000_000)
	for _, n := range []int{2, 3, 4, 5, 6, 7, 8} {
		r := mustRing(b, n)
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			var bal float64
			for b.Loop() {
				bal, _ = balance(r, hs)
			}
			b.ReportMetric(bal, "max/mean")
		})
	}
}

// BenchmarkMoves reports the fraction of 1M int keys that move from N to
// N+1 shards, next to the ideal 1/(N+1) and what modulo hashing would move
// (N/(N+1)). Asserted (within 10% of ideal) by TestMovedFraction.
func BenchmarkMoves(b *testing.B) {
	hs := seqIntHashes(1_000_000)
	for n := 1; n <= 7; n++ {
		from, to := mustRing(b, n), mustRing(b, n+1)
		b.Run(fmt.Sprintf("%d→%d", n, n+1), func(b *testing.B) {
			var f float64
			for b.Loop() {
				f = movedFraction(from, to, hs)
			}
			modulo := 0
			for _, h := range hs {
				if h%uint64(n) != h%uint64(n+1) {
					modulo++
				}
			}
			b.ReportMetric(f, "moved")
			b.ReportMetric(1/float64(n+1), "ideal")
			b.ReportMetric(float64(modulo)/float64(len(hs)), "modulo-moved")
		})
	}
}
