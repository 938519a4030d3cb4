package shard

import (
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
)

func testSpec() TopologySpec {
	return TopologySpec{
		Version: 7,
		Shards: []ShardSpec{
			{Name: "s0", Nodes: []NodeSpec{
				{Name: "s0-primary", Host: "10.0.0.1", Port: 5432, Role: RolePrimary},
				{Name: "s0-standby1", Host: "10.0.0.2", Port: 5432, Role: "standby", Weight: 2},
			}},
			{Name: "s1", Weight: 1, Nodes: []NodeSpec{{Name: "s1-primary", Host: "10.0.1.1", Port: 5432, Role: RolePrimary}}},
			{Name: "s2", Nodes: []NodeSpec{{Name: "s2-primary", Host: "10.0.2.1", Port: 5433, Role: RolePrimary}}},
		},
		Tables: []TableSpec{
			{Name: "users", Columns: []string{"id"}, Types: []KeyType{KeyInt}},
			{Name: "public.orders", Columns: []string{"tenant_id", "order_id"}, Types: []KeyType{KeyInt, KeyUUID}},
			{Name: "app.events", Columns: []string{"name"}, Types: []KeyType{KeyText}},
		},
		DefaultShard: "s1",
	}
}

func mustTopology(t testing.TB, spec TopologySpec) *Topology {
	t.Helper()
	top, err := NewTopology(spec)
	if err != nil {
		t.Fatal(err)
	}
	return top
}

func TestTopologyValidation(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*TopologySpec)
		want   error
	}{
		{"no shards", func(s *TopologySpec) { s.Shards = nil }, ErrInvalidTopology},
		{"empty shard name", func(s *TopologySpec) { s.Shards[1].Name = "" }, ErrInvalidTopology},
		{"duplicate shard", func(s *TopologySpec) { s.Shards[1].Name = "s0" }, ErrInvalidTopology},
		{"negative weight", func(s *TopologySpec) { s.Shards[0].Weight = -1 }, ErrInvalidTopology},
		{"empty node name", func(s *TopologySpec) { s.Shards[0].Nodes[1].Name = "" }, ErrInvalidTopology},
		{"duplicate node", func(s *TopologySpec) { s.Shards[0].Nodes[1].Name = "s0-primary" }, ErrInvalidTopology},
		{"bad role", func(s *TopologySpec) { s.Shards[0].Nodes[1].Role = "replica" }, ErrInvalidTopology},
		{"empty role", func(s *TopologySpec) { s.Shards[0].Nodes[1].Role = "" }, ErrInvalidTopology},
		{"two primaries", func(s *TopologySpec) { s.Shards[0].Nodes[1].Role = RolePrimary }, ErrInvalidTopology},
		{"bad port", func(s *TopologySpec) { s.Shards[0].Nodes[1].Port = 70000 }, ErrInvalidTopology},
		{"negative node weight", func(s *TopologySpec) { s.Shards[0].Nodes[1].Weight = -2 }, ErrInvalidTopology},
		{"empty table", func(s *TopologySpec) { s.Tables[0].Name = "" }, ErrInvalidTopology},
		{"duplicate table via public", func(s *TopologySpec) { s.Tables[0].Name = "public.users"; s.Tables[1].Name = "users" }, ErrInvalidTopology},
		{"no columns", func(s *TopologySpec) { s.Tables[0].Columns = nil; s.Tables[0].Types = nil }, ErrInvalidTopology},
		{"types mismatch", func(s *TopologySpec) { s.Tables[1].Types = s.Tables[1].Types[:1] }, ErrInvalidTopology},
		{"bad type", func(s *TopologySpec) { s.Tables[0].Types[0] = 0 }, ErrInvalidTopology},
		{"empty column", func(s *TopologySpec) { s.Tables[0].Columns[0] = "" }, ErrInvalidTopology},
		{"duplicate column", func(s *TopologySpec) { s.Tables[1].Columns[1] = "tenant_id" }, ErrInvalidTopology},
		{"unknown default", func(s *TopologySpec) { s.DefaultShard = "nope" }, ErrUnknownShard},
		{"negative vnodes", func(s *TopologySpec) { s.VirtualNodes = -1 }, ErrInvalidTopology},
	}
	for _, c := range cases {
		s := testSpec()
		c.mutate(&s)
		_, err := NewTopology(s)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
	// A shard without nodes is allowed (ring-only topologies).
	if _, err := NewTopology(TopologySpec{Shards: []ShardSpec{{Name: "only"}}}); err != nil {
		t.Errorf("node-less shard: %v", err)
	}
}

func TestTopologyAccessors(t *testing.T) {
	top := mustTopology(t, testSpec())
	if top.Version() != 7 || top.NumShards() != 3 || top.DefaultShard() != 1 {
		t.Fatalf("version %d shards %d default %d", top.Version(), top.NumShards(), top.DefaultShard())
	}
	sh := top.Shards()
	if len(sh) != 3 || sh[0].Name != "s0" || sh[0].Weight != 1 || len(sh[0].Nodes) != 2 || sh[2].ID != 2 {
		t.Fatalf("Shards() = %+v", sh)
	}
	// Accessors return copies.
	sh[0].Nodes[0].Host = "mutated"
	sh[0].Name = "mutated"
	if s0, _ := top.Shard(0); s0.Nodes[0].Host != "10.0.0.1" || s0.Name != "s0" {
		t.Error("Shards() exposes internal state")
	}
	tb, ok := top.Table("users")
	if !ok {
		t.Fatal("users not found")
	}
	tb.Columns[0] = "mutated"
	tb.Types[0] = KeyText
	if tb2, _ := top.Table("users"); tb2.Columns[0] != "id" || tb2.Types[0] != KeyInt {
		t.Error("Table() exposes internal state")
	}
	tables := top.Tables()
	tables[0].Columns[0] = "mutated"
	if top.Tables()[0].Columns[0] != "id" {
		t.Error("Tables() exposes internal state")
	}
	// The spec given to NewTopology is copied too.
	spec := testSpec()
	top2 := mustTopology(t, spec)
	spec.Shards[0].Nodes[0].Host = "mutated"
	spec.Tables[0].Columns[0] = "mutated"
	if s0, _ := top2.Shard(0); s0.Nodes[0].Host != "10.0.0.1" {
		t.Error("NewTopology aliases spec nodes")
	}
	if tb, _ := top2.Table("users"); tb.Columns[0] != "id" {
		t.Error("NewTopology aliases spec tables")
	}

	if _, err := top.Shard(3); !errors.Is(err, ErrUnknownShard) {
		t.Errorf("Shard(3) = %v", err)
	}
	if _, err := top.Shard(-1); !errors.Is(err, ErrUnknownShard) {
		t.Errorf("Shard(-1) = %v", err)
	}
	if id, err := top.ShardByName("s2"); id != 2 || err != nil {
		t.Errorf("ShardByName(s2) = %d, %v", id, err)
	}
	if _, err := top.ShardByName("s9"); !errors.Is(err, ErrUnknownShard) {
		t.Errorf("ShardByName(s9) = %v", err)
	}
	if top.Ring().NumShards() != 3 {
		t.Error("Ring()")
	}
	// Default shard defaults to the first shard.
	s := testSpec()
	s.DefaultShard = ""
	if d := mustTopology(t, s).DefaultShard(); d != 0 {
		t.Errorf("default shard = %d, want 0", d)
	}
}

func TestTopologySpecRoundTrip(t *testing.T) {
	top := mustTopology(t, testSpec())
	spec := top.Spec()
	again := mustTopology(t, spec)
	if !reflect.DeepEqual(again.Spec(), spec) {
		t.Errorf("Spec round trip differs:\n%+v\n%+v", again.Spec(), spec)
	}
	spec.Shards[0].Nodes[0].Host = "mutated"
	if s0, _ := top.Shard(0); s0.Nodes[0].Host != "10.0.0.1" {
		t.Error("Spec() exposes internal state")
	}
	v := top.WithVersion(42)
	if v.Version() != 42 || top.Version() != 7 {
		t.Errorf("WithVersion: %d, original %d", v.Version(), top.Version())
	}
	for i := range 1000 {
		k := KeyFromInt(int64(i))
		if v.LocateKey(k) != top.LocateKey(k) || again.LocateKey(k) != top.LocateKey(k) {
			t.Fatal("derived topology places keys differently")
		}
	}
	// A topology over s0..sN-1 places keys exactly like NewRing.
	r := mustRing(t, 3)
	for i := range 1000 {
		k := KeyFromText(strings.Repeat("x", i%37) + string(rune('a'+i%26)))
		if r.Locate(k) != top.LocateKey(k) {
			t.Fatal("topology ring differs from NewRing")
		}
	}
}

func TestTopologyLocate(t *testing.T) {
	top := mustTopology(t, testSpec())
	u, _ := ParseUUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")

	// Sharded tables, with "t" == "public.t".
	k := KeyFromInt(42)
	for _, name := range []string{"users", "public.users"} {
		id, err := top.Locate(name, k)
		if err != nil || id != top.LocateKey(k) {
			t.Errorf("Locate(%s) = %d, %v", name, id, err)
		}
	}
	ck := Composite(KeyFromInt(1), KeyFromUUID(u))
	for _, name := range []string{"orders", "public.orders"} {
		if id, err := top.Locate(name, ck); err != nil || id != top.LocateKey(ck) {
			t.Errorf("Locate(%s) = %d, %v", name, id, err)
		}
	}
	if id, err := top.Locate("app.events", KeyFromText("signup")); err != nil || id != top.LocateKey(KeyFromText("signup")) {
		t.Errorf("Locate(app.events) = %d, %v", id, err)
	}

	// Unsharded tables (including other schemas) go to the default shard.
	for _, name := range []string{"events", "public.events", "other.users", "Users", "app.orders"} {
		if top.IsSharded(name) {
			t.Errorf("%s reported sharded", name)
		}
		if id, err := top.Locate(name, nil); id != 1 || err != nil {
			t.Errorf("Locate(%s) = %d, %v; want default shard 1", name, id, err)
		}
	}

	// Missing key.
	for _, key := range []Key{nil, {}} {
		_, err := top.Locate("orders", key)
		if !errors.Is(err, ErrUnknownShardKey) || sqlState(err) != "0A000" {
			t.Errorf("missing key: %v (SQLSTATE %q)", err, sqlState(err))
		}
		if err != nil && (!strings.Contains(err.Error(), "orders") || !strings.Contains(err.Error(), "tenant_id, order_id")) {
			t.Errorf("missing-key error does not name table and columns: %v", err)
		}
	}
	if _, err := top.Locate("orders", Composite()); !errors.Is(err, ErrUnknownShardKey) {
		t.Errorf("Composite() key: %v", err)
	}

	// Keys that do not match the table's key types.
	bad := []struct {
		table string
		key   Key
	}{
		{"users", KeyFromText("42")},
		{"users", KeyFromUUID(u)},
		{"users", Composite(KeyFromInt(1), KeyFromInt(2))},
		{"users", Key{0x01, 0, 0}},
		{"orders", KeyFromInt(1)},                                           // incomplete
		{"orders", Composite(KeyFromUUID(u), KeyFromInt(1))},                // wrong order
		{"orders", Composite(KeyFromInt(1), KeyFromUUID(u), KeyFromInt(3))}, // extra part
		{"orders", Composite(KeyFromInt(1), KeyFromUUID(u))[:20]},           // truncated
		{"app.events", KeyFromInt(1)},
	}
	for _, b := range bad {
		if _, err := top.Locate(b.table, b.key); !errors.Is(err, ErrBadKey) {
			t.Errorf("Locate(%s, %s) = %v, want ErrBadKey", b.table, b.key, err)
		}
	}

	if a := testing.AllocsPerRun(1000, func() { _, _ = top.Locate("public.orders", ck) }); a != 0 {
		t.Errorf("Topology.Locate allocates %.1f times", a)
	}
}

func TestRoleText(t *testing.T) {
	var r Role
	if err := r.UnmarshalText([]byte("PRIMARY")); err != nil || r != RolePrimary {
		t.Errorf("UnmarshalText(PRIMARY) = %q, %v", r, err)
	}
	if err := r.UnmarshalText([]byte("replica")); err == nil {
		t.Error("UnmarshalText(replica) succeeded")
	}
	if b, err := RoleStandby.MarshalText(); err != nil || string(b) != "standby" {
		t.Errorf("MarshalText = %s, %v", b, err)
	}
	if _, err := Role("x").MarshalText(); err == nil {
		t.Error("MarshalText(x) succeeded")
	}
}

func TestMoves(t *testing.T) {
	three := mustTopology(t, TopologySpec{Shards: []ShardSpec{{Name: "a"}, {Name: "b"}, {Name: "c"}}})
	four := mustTopology(t, TopologySpec{Shards: []ShardSpec{{Name: "c"}, {Name: "a"}, {Name: "d"}, {Name: "b"}}})
	keys := func(yield func(Key) bool) {
		for i := range 100000 {
			if !yield(KeyFromInt(int64(i))) {
				return
			}
		}
	}
	st := Moves(three, four, keys)
	if st.Total != 100000 {
		t.Fatalf("Total = %d", st.Total)
	}
	sum := 0
	for m, n := range st.ByPair {
		if m.To != "d" {
			t.Errorf("keys moved %s→%s; only moves to the new shard d expected", m.From, m.To)
		}
		sum += n
	}
	if sum != st.Moved || st.Moved < 22500 || st.Moved > 27500 {
		t.Errorf("Moved = %d (pairs sum %d), want ≈ 25000", st.Moved, sum)
	}
	if same := Moves(three, three.WithVersion(9), keys); same.Moved != 0 {
		t.Errorf("same ring moved %d keys", same.Moved)
	}
}

// Topologies are immutable values: concurrent readers need no locking.
func TestTopologyConcurrentUse(t *testing.T) {
	top := mustTopology(t, testSpec())
	want := make([]ID, 1000)
	for i := range want {
		want[i] = top.LocateKey(KeyFromInt(int64(i)))
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range want {
				id, err := top.Locate("users", KeyFromInt(int64(i)))
				if err != nil || id != want[i] {
					errs <- "mismatch"
					return
				}
				_ = top.Shards()
				_, _ = top.Table("public.orders")
				_ = top.WithVersion(uint64(g))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
