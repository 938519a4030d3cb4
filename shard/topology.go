package shard

import (
	"fmt"
	"slices"
	"strings"
)

// Role is the role of a node within its shard. It is a string type so that
// specs decoded from TOML/JSON/etcd and literals like "primary" work
// directly; Valid/UnmarshalText reject anything but the constants.
type Role string

// Node roles.
const (
	RolePrimary Role = "primary"
	RoleStandby Role = "standby"
)

// String returns the role name.
func (r Role) String() string { return string(r) }

// Valid reports whether r is RolePrimary or RoleStandby.
func (r Role) Valid() bool { return r == RolePrimary || r == RoleStandby }

// UnmarshalText implements encoding.TextUnmarshaler (case-insensitive).
func (r *Role) UnmarshalText(b []byte) error {
	v := Role(strings.ToLower(string(b)))
	if !v.Valid() {
		return fmt.Errorf("shard: invalid node role %q (want primary or standby)", b)
	}
	*r = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (r Role) MarshalText() ([]byte, error) {
	if !r.Valid() {
		return nil, fmt.Errorf("shard: invalid node role %q", string(r))
	}
	return []byte(r), nil
}

// NodeSpec describes one PostgreSQL server of a shard.
type NodeSpec struct {
	Name   string // unique within the shard, non-empty
	Host   string
	Port   int  // 0..65535
	Role   Role // RolePrimary or RoleStandby; at most one primary per shard
	Weight int  // load-balancing weight among standbys; 0 means 1
}

// ShardSpec describes one shard.
type ShardSpec struct {
	Name   string // stable identity: the ring points derive from it
	Weight int    // ring weight: Weight × VirtualNodes points; 0 means 1
	Nodes  []NodeSpec
}

// TableSpec names a sharded table and its shard key.
type TableSpec struct {
	// Name is "table" or "schema.table", identifiers already folded as
	// PostgreSQL folds them (unquoted → lower case; quoted kept verbatim).
	// "t" and "public.t" are the same table; other schemas match exactly.
	Name    string
	Columns []string  // shard-key columns, in key order (folded names)
	Types   []KeyType // Types[i] is the type of Columns[i]
}

// TopologySpec is the plain-data description of a Topology, as stored in
// configuration or etcd.
type TopologySpec struct {
	Version      uint64 // e.g. etcd revision; fencing token
	Shards       []ShardSpec
	Tables       []TableSpec
	DefaultShard string // shard of unsharded tables; "" means Shards[0]
	VirtualNodes int    // ring points per unit of weight; 0 means DefaultVirtualNodes
}

// ShardInfo is a copy of one shard's description in a Topology.
type ShardInfo struct {
	ID     ID
	Name   string
	Weight int // normalized: ≥ 1
	Nodes  []NodeSpec
}

// Topology is an immutable snapshot of the sharded cluster: shards and their
// nodes, the ring, the sharded tables and a version. A new topology is a
// new value (NewTopology, WithVersion, or Spec then NewTopology). All
// methods are safe for concurrent use; accessors return copies.
type Topology struct {
	version      uint64
	shards       []ShardInfo
	byName       map[string]ID
	tables       []TableSpec
	byTable      map[string]int // canonical table name → index in tables
	defaultShard ID
	ring         *Ring
	vnodes       int // as given in the spec (0 = default)
}

// canonicalTable maps "public.t" to "t"; other names are returned as is.
func canonicalTable(name string) string {
	if rest, ok := strings.CutPrefix(name, "public."); ok {
		return rest
	}
	return name
}

// NewTopology validates spec and builds a Topology from a deep copy of it.
// Errors wrap ErrInvalidTopology (or ErrUnknownShard for an unknown
// DefaultShard). Validation: at least one shard; shard names non-empty and
// unique; weights ≥ 0 (0 means 1); node names non-empty and unique within a
// shard, roles valid, ports in range, at most one primary per shard (a
// shard may have no nodes); table names non-empty and unique after
// "public." folding; each table has ≥ 1 column, unique non-empty column
// names and one valid type per column.
func NewTopology(spec TopologySpec) (*Topology, error) {
	if len(spec.Shards) == 0 {
		return nil, invalidf("no shards")
	}
	t := &Topology{
		version: spec.Version,
		byName:  make(map[string]ID, len(spec.Shards)),
		byTable: make(map[string]int, len(spec.Tables)),
		vnodes:  spec.VirtualNodes,
	}
	names := make([]string, len(spec.Shards))
	weights := make([]int, len(spec.Shards))
	for i, s := range spec.Shards {
		if s.Name == "" {
			return nil, invalidf("shard %d has no name", i)
		}
		if _, dup := t.byName[s.Name]; dup {
			return nil, invalidf("duplicate shard %q", s.Name)
		}
		w := s.Weight
		if w < 0 {
			return nil, invalidf("shard %q: weight %d < 0", s.Name, w)
		}
		if w == 0 {
			w = 1
		}
		primaries := 0
		nodeNames := make(map[string]bool, len(s.Nodes))
		for j, n := range s.Nodes {
			if n.Name == "" {
				return nil, invalidf("shard %q: node %d has no name", s.Name, j)
			}
			if nodeNames[n.Name] {
				return nil, invalidf("shard %q: duplicate node %q", s.Name, n.Name)
			}
			nodeNames[n.Name] = true
			if !n.Role.Valid() {
				return nil, invalidf("shard %q: node %q: invalid role %q (want primary or standby)", s.Name, n.Name, string(n.Role))
			}
			if n.Role == RolePrimary {
				primaries++
			}
			if n.Port < 0 || n.Port > 65535 {
				return nil, invalidf("shard %q: node %q: port %d out of range", s.Name, n.Name, n.Port)
			}
			if n.Weight < 0 {
				return nil, invalidf("shard %q: node %q: weight %d < 0", s.Name, n.Name, n.Weight)
			}
		}
		if primaries > 1 {
			return nil, invalidf("shard %q has %d primaries (want at most 1)", s.Name, primaries)
		}
		t.byName[s.Name] = ID(i)
		names[i] = s.Name
		weights[i] = w
		t.shards = append(t.shards, ShardInfo{ID: ID(i), Name: s.Name, Weight: w, Nodes: slices.Clone(s.Nodes)})
	}
	for i, tb := range spec.Tables {
		if tb.Name == "" || tb.Name == "public." {
			return nil, invalidf("table %d has no name", i)
		}
		c := canonicalTable(tb.Name)
		if _, dup := t.byTable[c]; dup {
			return nil, invalidf("duplicate table %q", tb.Name)
		}
		if len(tb.Columns) == 0 {
			return nil, invalidf("table %q has no shard-key columns", tb.Name)
		}
		if len(tb.Types) != len(tb.Columns) {
			return nil, invalidf("table %q: %d key columns but %d types", tb.Name, len(tb.Columns), len(tb.Types))
		}
		cols := make(map[string]bool, len(tb.Columns))
		for j, col := range tb.Columns {
			if col == "" {
				return nil, invalidf("table %q: key column %d has no name", tb.Name, j)
			}
			if cols[col] {
				return nil, invalidf("table %q: duplicate key column %q", tb.Name, col)
			}
			cols[col] = true
			if !tb.Types[j].Valid() {
				return nil, invalidf("table %q: column %q: invalid key type %d", tb.Name, col, uint8(tb.Types[j]))
			}
		}
		t.byTable[c] = len(t.tables)
		t.tables = append(t.tables, copyTable(tb))
	}
	if spec.DefaultShard != "" {
		id, ok := t.byName[spec.DefaultShard]
		if !ok {
			return nil, fmt.Errorf("%w: default shard %q", ErrUnknownShard, spec.DefaultShard)
		}
		t.defaultShard = id
	}
	ring, err := NewNamedRing(names, weights, spec.VirtualNodes)
	if err != nil {
		return nil, err
	}
	t.ring = ring
	return t, nil
}

func copyTable(tb TableSpec) TableSpec {
	return TableSpec{Name: tb.Name, Columns: slices.Clone(tb.Columns), Types: slices.Clone(tb.Types)}
}

func copyShard(s ShardInfo) ShardInfo {
	s.Nodes = slices.Clone(s.Nodes)
	return s
}

// Spec returns a deep copy of the spec t was built from (with weights
// normalized to ≥ 1 and DefaultShard spelled out), so that
// NewTopology(t.Spec()) is equivalent to t.
func (t *Topology) Spec() TopologySpec {
	s := TopologySpec{
		Version:      t.version,
		DefaultShard: t.shards[t.defaultShard].Name,
		VirtualNodes: t.vnodes,
	}
	for _, sh := range t.shards {
		s.Shards = append(s.Shards, ShardSpec{Name: sh.Name, Weight: sh.Weight, Nodes: slices.Clone(sh.Nodes)})
	}
	for _, tb := range t.tables {
		s.Tables = append(s.Tables, copyTable(tb))
	}
	return s
}

// WithVersion returns a copy of t with version v (sharing the immutable
// ring). t is unchanged.
func (t *Topology) WithVersion(v uint64) *Topology {
	c := *t
	c.version = v
	return &c
}

// Version returns the topology version (etcd revision / fencing token).
func (t *Topology) Version() uint64 { return t.version }

// NumShards returns the number of shards.
func (t *Topology) NumShards() int { return len(t.shards) }

// Shards returns a copy of every shard, indexed by ID.
func (t *Topology) Shards() []ShardInfo {
	out := make([]ShardInfo, len(t.shards))
	for i, s := range t.shards {
		out[i] = copyShard(s)
	}
	return out
}

// Shard returns a copy of shard id, or an error wrapping ErrUnknownShard.
func (t *Topology) Shard(id ID) (ShardInfo, error) {
	if id < 0 || int(id) >= len(t.shards) {
		return ShardInfo{}, fmt.Errorf("%w: id %d (topology has %d shards)", ErrUnknownShard, id, len(t.shards))
	}
	return copyShard(t.shards[id]), nil
}

// ShardByName returns the ID of the named shard, or an error wrapping
// ErrUnknownShard.
func (t *Topology) ShardByName(name string) (ID, error) {
	id, ok := t.byName[name]
	if !ok {
		return 0, fmt.Errorf("%w: %q", ErrUnknownShard, name)
	}
	return id, nil
}

// DefaultShard returns the shard of unsharded tables.
func (t *Topology) DefaultShard() ID { return t.defaultShard }

// Ring returns the topology's ring (immutable, shared).
func (t *Topology) Ring() *Ring { return t.ring }

// Tables returns a copy of every sharded table, in spec order.
func (t *Topology) Tables() []TableSpec {
	out := make([]TableSpec, len(t.tables))
	for i, tb := range t.tables {
		out[i] = copyTable(tb)
	}
	return out
}

// Table returns a copy of the sharded table called name ("t" and
// "public.t" are the same table; other schemas match exactly; names are
// compared as given, so callers pass identifiers already folded the way
// PostgreSQL folds them). ok is false for unsharded tables.
func (t *Topology) Table(name string) (TableSpec, bool) {
	i, ok := t.byTable[canonicalTable(name)]
	if !ok {
		return TableSpec{}, false
	}
	return copyTable(t.tables[i]), true
}

// IsSharded reports whether name is a sharded table (same matching as
// Table), without copying.
func (t *Topology) IsSharded(name string) bool {
	_, ok := t.byTable[canonicalTable(name)]
	return ok
}

// Locate returns the shard of a row of table with shard key key.
//
// Unsharded tables (not listed in the spec) live on DefaultShard: key is
// ignored and the error is nil. For a sharded table, an empty key returns
// an error wrapping ErrUnknownShardKey (naming the table and its key
// columns), and a key that does not match the table's key types (a scalar
// of the column's type for one column, a Composite of exactly the column
// types otherwise) returns an error wrapping ErrBadKey. It does not block
// and does not allocate on success.
func (t *Topology) Locate(table string, key Key) (ID, error) {
	i, ok := t.byTable[canonicalTable(table)]
	if !ok {
		return t.defaultShard, nil
	}
	tb := &t.tables[i]
	if len(key) == 0 {
		return 0, fmt.Errorf("%w: table %s needs a value for %s", ErrUnknownShardKey, tb.Name, strings.Join(tb.Columns, ", "))
	}
	if !key.matches(tb.Types) {
		return 0, fmt.Errorf("%w: key %s does not match the shard key (%s) of table %s", ErrBadKey, key, typeList(tb), tb.Name)
	}
	return t.ring.Locate(key), nil
}

func typeList(tb *TableSpec) string {
	parts := make([]string, len(tb.Columns))
	for i := range tb.Columns {
		parts[i] = tb.Columns[i] + " " + tb.Types[i].String()
	}
	return strings.Join(parts, ", ")
}

// LocateKey returns the shard of key on the ring, regardless of tables.
// Total, deterministic and allocation-free, like Ring.Locate.
func (t *Topology) LocateKey(key Key) ID { return t.ring.Locate(key) }
