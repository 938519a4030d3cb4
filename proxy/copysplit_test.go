package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/dbproxy/dbproxy/router"
	"github.com/dbproxy/dbproxy/shard"
)

func TestCopyTextFields(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{`plain`, "plain"},
		{`a\tb\nc\\d`, "a\tb\nc\\d"},
		{`\101\x41\x4a\q`, "AAJq"},
		{`end\`, `end\`},
	} {
		if got := unescapeText([]byte(tc.raw)); got != tc.want {
			t.Errorf("unescapeText(%q) = %q, want %q", tc.raw, got, tc.want)
		}
	}
	line := []byte("1\tx\\\ty\tz")
	raw, _, next := nextField(line, 0, false, '\t', 0, 0)
	raw2, _, next2 := nextField(line, next, false, '\t', 0, 0)
	if string(raw) != "1" || string(raw2) != "x\\\ty" || next2 != 7 {
		t.Fatalf("text fields %q %q next %d", raw, raw2, next2)
	}
}

func TestCopyCSVFields(t *testing.T) {
	if got := lineEnd([]byte("\"a\nb\",1\nnext"), true, '"', '"'); got != 7 {
		t.Fatalf("lineEnd across a quoted newline = %d, want 7", got)
	}
	if got := lineEnd([]byte(`"a\"",1`+"\n"), true, '"', '\\'); got != 7 {
		t.Fatalf("lineEnd with an escaped quote = %d, want 7", got)
	}
	line := []byte(`"x, ""y""",42,`)
	raw, quoted, next := nextField(line, 0, true, ',', '"', '"')
	if !quoted || unquoteCSV(raw, '"', '"') != `x, "y"` {
		t.Fatalf("quoted field %q (quoted %v)", raw, quoted)
	}
	raw, quoted, next = nextField(line, next, true, ',', '"', '"')
	if quoted || string(raw) != "42" {
		t.Fatalf("second field %q", raw)
	}
	if raw, _, _ = nextField(line, next, true, ',', '"', '"'); len(raw) != 0 {
		t.Fatalf("empty last field %q", raw)
	}
	if got := unquoteCSV([]byte(`"a\"b\\c"`), '"', '\\'); got != `a"b\c` {
		t.Fatalf("unquoteCSV with escape = %q", got)
	}
}

// splitFixture is a splitter over three shards whose rows are gathered in
// memory, and what each shard should get.
type splitFixture struct {
	topo  *shard.Topology
	ci    *router.CopyInfo
	outs  map[shard.ID]*bytes.Buffer
	want  map[shard.ID]*bytes.Buffer
	input []byte
}

func newSplitFixture(t testing.TB, format string, header bool) *splitFixture {
	topo, err := shard.NewTopology(shard.TopologySpec{
		Shards: []shard.ShardSpec{{Name: "s0"}, {Name: "s1"}, {Name: "s2"}},
		Tables: []shard.TableSpec{{Name: "users", Columns: []string{"id"}, Types: []shard.KeyType{shard.KeyInt}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ci := &router.CopyInfo{Table: router.TableRef{Name: "users"}, Columns: []string{"name", "id"}, Format: format, Header: header, Delimiter: '\t', Null: `\N`}
	if format == "csv" {
		ci.Delimiter, ci.Quote, ci.Escape, ci.Null = ',', '"', '"', ""
	}
	f := &splitFixture{topo: topo, ci: ci, outs: map[shard.ID]*bytes.Buffer{}, want: map[shard.ID]*bytes.Buffer{}}
	for _, si := range topo.Shards() {
		f.outs[si.ID], f.want[si.ID] = &bytes.Buffer{}, &bytes.Buffer{}
	}
	return f
}

func (f *splitFixture) all(b []byte) {
	for _, w := range f.want {
		w.Write(b)
	}
	f.input = append(f.input, b...)
}

func (f *splitFixture) row(id int64, b []byte) {
	s, _ := f.topo.Locate("users", shard.KeyFromInt(id))
	f.want[s].Write(b)
	f.input = append(f.input, b...)
}

// run splits f.input, cut into pieces of the given sizes (cycled).
func (f *splitFixture) run(t testing.TB, sizes []int) error {
	for _, o := range f.outs {
		o.Reset()
	}
	sp, err := newCopySplitter(context.Background(), f.ci, &router.CopySplit{Table: f.topo.Tables()[0], Topology: f.topo}, nil)
	if err != nil {
		t.Fatal(err)
	}
	shards := map[shard.ID]*copyShard{}
	for id, o := range f.outs {
		shards[id] = &copyShard{w: o}
	}
	sp.route = func(id shard.ID) *copyShard { return shards[id] }
	in := f.input
	for i := 0; len(in) > 0; i++ {
		n := min(len(in), max(1, sizes[i%len(sizes)]))
		if err := sp.write(in[:n]); err != nil {
			return err
		}
		in = in[n:]
	}
	return sp.finish()
}

func (f *splitFixture) check(t *testing.T, sizes []int) {
	t.Helper()
	if err := f.run(t, sizes); err != nil {
		t.Fatalf("pieces %v: %v", sizes, err)
	}
	for id, w := range f.want {
		if got := f.outs[id].String(); got != w.String() {
			t.Fatalf("pieces %v: shard %d got %d bytes, want %d\ngot  %q\nwant %q", sizes, id, len(got), w.Len(), got, w.String())
		}
	}
}

var splitPieces = [][]int{{1 << 20}, {1}, {2, 3}, {7}, {64}, {5, 1, 13}}

func TestCopySplitText(t *testing.T) {
	f := newSplitFixture(t, "text", true)
	f.all([]byte("name\tid\n"))
	for id := int64(1); id <= 300; id++ {
		f.row(id, fmt.Appendf(nil, "tab\\there %d \\\\\t%d\n", id, id))
	}
	f.all([]byte("\\.\n"))
	for _, p := range splitPieces {
		f.check(t, p)
	}
}

func TestCopySplitCSV(t *testing.T) {
	f := newSplitFixture(t, "csv", false)
	for id := int64(1); id <= 300; id++ {
		f.row(id, fmt.Appendf(nil, "\"multi\nline, \"\"%d\"\"\",\"%d\"\n", id, id))
	}
	for _, p := range splitPieces {
		f.check(t, p)
	}
	// The last row may go without its newline.
	f.input = bytes.TrimSuffix(f.input, []byte("\n"))
	if err := f.run(t, []int{9}); err != nil {
		t.Fatal(err)
	}
	var got, want int
	for id := range f.want {
		got, want = got+f.outs[id].Len(), want+f.want[id].Len()
	}
	if got != want {
		t.Fatalf("unterminated last row: %d bytes out, want %d", got, want)
	}
}

func TestCopySplitBinary(t *testing.T) {
	f := newSplitFixture(t, "binary", false)
	f.all(append([]byte(binaryCopySignature), 0, 0, 0, 0, 0, 0, 0, 0))
	for id := int64(1); id <= 300; id++ {
		var b []byte
		b = binary.BigEndian.AppendUint16(b, 2)
		name := fmt.Sprintf("bin %d", id)
		b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
		b = append(b, name...)
		b = binary.BigEndian.AppendUint32(b, 8)
		b = binary.BigEndian.AppendUint64(b, uint64(id))
		f.row(id, b)
	}
	f.all([]byte{0xff, 0xff})
	for _, p := range splitPieces {
		f.check(t, p)
	}
	f.input = f.input[:len(f.input)-5] // cut inside the last tuple
	if err := f.run(t, []int{11}); err == nil {
		t.Fatal("a truncated binary stream was accepted")
	}
}

// FuzzCopySplit: whatever the bytes and however they are cut, the
// splitter returns (an error or not) without panicking.
func FuzzCopySplit(f *testing.F) {
	f.Add("text", []byte("a\t1\nb\t2\n"), 3)
	f.Add("csv", []byte("\"x\ny\",1\n"), 2)
	f.Add("binary", append([]byte(binaryCopySignature+"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02"), 0, 0, 0, 1, 'a', 0, 0, 0, 4, 0, 0, 0, 1), 5)
	f.Fuzz(func(t *testing.T, format string, data []byte, piece int) {
		if format != "text" && format != "csv" && format != "binary" {
			return
		}
		fx := newSplitFixture(t, format, false)
		fx.input = data
		_ = fx.run(t, []int{piece})
	})
}
