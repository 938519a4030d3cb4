package cache

import (
	"errors"
	"testing"
)

func TestNewKeyDistinguishes(t *testing.T) {
	base := KeyParts{Shard: "s0", Namespace: "pg", SQL: "SELECT v FROM kv WHERE k = $1", Params: [][]byte{[]byte("1")}}
	with := func(f func(*KeyParts)) Key {
		p := base
		f(&p)
		return NewKey(p)
	}
	k := NewKey(base)
	same := []Key{
		with(func(p *KeyParts) { p.ParamFormats = []int16{0} }),
		with(func(p *KeyParts) { p.ResultFormats = []int16{0} }),
		with(func(p *KeyParts) { p.ResultFormats = []int16{0, 0, 0} }),
		with(func(p *KeyParts) { p.Params = [][]byte{[]byte("1")} }),
	}
	for i, o := range same {
		if o != k {
			t.Errorf("same[%d]: key %s != %s", i, o, k)
		}
	}
	diff := []Key{
		with(func(p *KeyParts) { p.Shard = "s1" }),
		with(func(p *KeyParts) { p.Namespace = "drv" }),
		with(func(p *KeyParts) { p.SQL += " " }),
		with(func(p *KeyParts) { p.Params = [][]byte{[]byte("2")} }),
		with(func(p *KeyParts) { p.Params = [][]byte{nil} }),
		with(func(p *KeyParts) { p.Params = [][]byte{{}} }),
		with(func(p *KeyParts) { p.Params = nil }),
		with(func(p *KeyParts) { p.ParamFormats = []int16{1} }),
		with(func(p *KeyParts) { p.ResultFormats = []int16{1} }),
		with(func(p *KeyParts) { p.ResultFormats = []int16{0, 1} }),
		with(func(p *KeyParts) { p.Params = [][]byte{[]byte("1"), nil} }),
		// Field boundaries must not be ambiguous.
		with(func(p *KeyParts) { p.Shard, p.Namespace = "s0p", "g" }),
	}
	seen := map[Key]int{k: -1}
	for i, o := range diff {
		if j, dup := seen[o]; dup {
			t.Errorf("diff[%d] collides with %d: %s", i, j, o)
		}
		seen[o] = i
	}
	a := NewKey(KeyParts{Shard: "s", SQL: "q", Params: [][]byte{[]byte("ab"), []byte("c")}})
	b := NewKey(KeyParts{Shard: "s", SQL: "q", Params: [][]byte{[]byte("a"), []byte("bc")}})
	if a == b {
		t.Error("parameter boundaries are ambiguous")
	}
	if k.Shard() != "s0" || k.IsZero() || !(Key{}).IsZero() {
		t.Error("Shard/IsZero")
	}
}

func TestTableKeyAndFilter(t *testing.T) {
	for in, want := range map[string]string{"kv": "kv", "public.KV": "kv", `"Foo"`: "foo", `s."Foo"`: "foo", "a.b.c": "c"} {
		if got := tableKey(in); got != want {
			t.Errorf("tableKey(%q) = %q, want %q", in, got, want)
		}
	}
	cases := []struct {
		include, exclude []string
		tables           []string
		want             bool
	}{
		{[]string{"*"}, nil, []string{"kv", "public.x"}, true},
		{[]string{"*"}, []string{"audit"}, []string{"kv", "audit"}, false},
		{[]string{"*"}, []string{"audit"}, []string{"logs.audit"}, false},
		{[]string{"*"}, []string{"logs.*"}, []string{"logs.x"}, false},
		{[]string{"*"}, []string{"logs.*"}, []string{"other.x"}, true},
		{[]string{"*"}, []string{"logs.*"}, []string{"x"}, false}, // unqualified: exclude liberally
		{[]string{"public.kv"}, nil, []string{"kv"}, true},
		{[]string{"app.kv"}, nil, []string{"kv"}, false}, // unqualified: include strictly
		{[]string{"app.kv"}, nil, []string{"APP.KV"}, true},
		{[]string{"kv"}, nil, []string{"kv", "other"}, false},
		{nil, nil, []string{"kv"}, false},
		{[]string{"kv"}, nil, nil, true},
	}
	for i, tc := range cases {
		f := newTableFilter(tc.include, tc.exclude)
		if got := f.allowed(tc.tables); got != tc.want {
			t.Errorf("case %d: allowed(%v) with +%v -%v = %v, want %v", i, tc.tables, tc.include, tc.exclude, got, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []func(*Config){
		func(c *Config) { c.MaxBytes = 0 },
		func(c *Config) { c.MaxEntryBytes = 0 },
		func(c *Config) { c.MaxEntryBytes = c.MaxBytes + 1 },
		func(c *Config) { c.TTL = 0 },
		func(c *Config) { c.NumCounters = -1 },
		func(c *Config) { c.IncludeTables = []string{""} },
		func(c *Config) { c.IncludeTables = []string{"a.b.c"} },
		func(c *Config) { c.ExcludeTables = []string{".x"} },
		func(c *Config) { c.ExcludeTables = []string{"x."} },
		func(c *Config) { c.ExcludeTables = []string{"*.x"} },
	}
	for i, f := range bad {
		c := DefaultConfig()
		f(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("bad[%d]: Validate = %v, want ErrInvalidConfig", i, err)
		}
		if _, err := New(c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("bad[%d]: New = %v, want ErrInvalidConfig", i, err)
		}
	}
	sc := DefaultStreamConfig()
	sc.Shard, sc.ConnString = "s0", "host=127.0.0.1"
	if err := sc.Validate(); err != nil {
		t.Fatal(err)
	}
	badStream := []func(*StreamConfig){
		func(s *StreamConfig) { s.Shard = "" },
		func(s *StreamConfig) { s.ConnString = "" },
		func(s *StreamConfig) { s.Publication = "Bad-Name" },
		func(s *StreamConfig) { s.Publication = "x'; DROP TABLE t; --" },
		func(s *StreamConfig) { s.SlotPrefix = "1abc" },
		func(s *StreamConfig) { s.StatusInterval = 0 },
		func(s *StreamConfig) { s.StallTimeout = s.StatusInterval },
		func(s *StreamConfig) { s.MinBackoff = 0 },
		func(s *StreamConfig) { s.MaxBackoff = s.MinBackoff / 2 },
		func(s *StreamConfig) { s.ConnectTimeout = 0 },
	}
	for i, f := range badStream {
		s := sc
		f(&s)
		if err := s.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("badStream[%d]: Validate = %v, want ErrInvalidConfig", i, err)
		}
	}
}
