package config

import (
	"reflect"
	"testing"
)

func TestScanPositions(t *testing.T) {
	src := `# comment
top = 1
[server]   # trailing
listen = "a:1"
databases = [
  "x",   # inside
  "y",
]
"quoted key" = 'lit'
multi = """
not = a key
[not.a.table]
"""
[[shards]]
name = "s0"
  [[shards.nodes]]
  port = 1
  [[shards.nodes]]
  port = 2
[[shards]]
  [[shards.nodes]]
  port = 3
nodes2 = [{ name = "a", port = 4 },
          { name = "b", port = 5 }]
[shards.extra]
k = 1
[routing]
a.b = 2
`
	p := scanPositions([]byte(src))
	want := map[string]int{
		"top":                               2,
		"server":                            3,
		"server.listen":                     4,
		"server.databases":                  5,
		`server."quoted key"`:               9,
		"server.multi":                      10,
		"shards[0]":                         14,
		"shards[0].name":                    15,
		"shards[0].nodes[0]":                16,
		"shards[0].nodes[0].port":           17,
		"shards[0].nodes[1]":                18,
		"shards[0].nodes[1].port":           19,
		"shards[1]":                         20,
		"shards[1].nodes[0]":                21,
		"shards[1].nodes[0].port":           22,
		"shards[1].nodes[0].nodes2":         23,
		"shards[1].nodes[0].nodes2[0]":      23,
		"shards[1].nodes[0].nodes2[0].port": 23,
		"shards[1].nodes[0].nodes2[0].name": 23,
		"shards[1].nodes[0].nodes2[1]":      24,
		"shards[1].nodes[0].nodes2[1].port": 24,
		"shards[1].nodes[0].nodes2[1].name": 24,
		"shards[1].extra":                   25,
		"shards[1].extra.k":                 26,
		"routing":                           27,
		"routing.a.b":                       28,
	}
	for k, l := range want {
		if p[k] != l {
			t.Errorf("%s: line %d, want %d", k, p[k], l)
		}
	}
	for k := range p {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected key %s at line %d", k, p[k])
		}
	}
	// Fallback to the closest ancestor.
	if l := p.line("shards[0].nodes[1].role"); l != 18 {
		t.Errorf("fallback line = %d, want 18", l)
	}
	if l := p.line("server.databases[1]"); l != 5 {
		t.Errorf("array element fallback = %d, want 5", l)
	}
	if l := p.line("nothing.here"); l != 0 {
		t.Errorf("unknown = %d", l)
	}
	if l := positions(nil).line("server"); l != 0 {
		t.Errorf("nil positions = %d", l)
	}
}

func TestKeyPathHelpers(t *testing.T) {
	for in, want := range map[string]string{
		"shards[1].nodes[0].port": "shards[1].nodes[0]",
		"shards[1].nodes[0]":      "shards[1].nodes",
		"shards[1]":               "shards",
		"shards":                  "",
		`a."b.c"`:                 "a",
		`a."b.c".d`:               `a."b.c"`,
	} {
		if got := parentKey(in); got != want {
			t.Errorf("parentKey(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{
		"shards[1].nodes[0].port": "shards.nodes.port",
		`a."x[1]"[2]`:             `a."x[1]"`,
		"users":                   "users",
	} {
		if got := stripIndexes(in); got != want {
			t.Errorf("stripIndexes(%q) = %q, want %q", in, got, want)
		}
	}
	if got := joinKey("a", "b c"); got != `a."b c"` {
		t.Errorf("joinKey = %s", got)
	}
	if !reflect.DeepEqual(indexKey("a", 3), "a[3]") {
		t.Error("indexKey")
	}
}
