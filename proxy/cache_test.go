package proxy

import (
	"bytes"
	"context"
	"testing"

	"github.com/dbproxy/dbproxy/cache"
	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgproto3"
)

// encodeResult builds a cached value the way recordResult does.
func encodeResult(t testing.TB, head pgproto3.BackendMessage, rows [][][]byte, tag string) []byte {
	t.Helper()
	b, err := head.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		b = appendDataRow(b, r)
	}
	b, err = (&pgproto3.CommandComplete{CommandTag: []byte(tag)}).Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testRowDesc() *pgproto3.RowDescription {
	return &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
		{Name: []byte("id"), TableOID: 16384, TableAttributeNumber: 1, DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1},
		{Name: []byte("name"), TableOID: 16384, TableAttributeNumber: 2, DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1, Format: 1},
	}}
}

func TestAppendDataRowMatchesPgproto3(t *testing.T) {
	for _, values := range [][][]byte{
		nil,
		{nil},
		{[]byte{}},
		{[]byte("1"), nil, []byte("hello"), {}, bytes.Repeat([]byte{0xff}, 300)},
	} {
		got := appendDataRow([]byte("prefix"), values)
		want, err := (&pgproto3.DataRow{Values: values}).Encode([]byte("prefix"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("appendDataRow(%q) = %x, pgproto3 encodes %x", values, got, want)
		}
	}
}

func TestSplitResult(t *testing.T) {
	rows := [][][]byte{{[]byte("1"), []byte("a")}, {[]byte("2"), nil}, {[]byte("3"), []byte("c")}}
	v := encodeResult(t, testRowDesc(), rows, "SELECT 3")
	head, body, ok := splitResult(v)
	if !ok {
		t.Fatal("valid result rejected")
	}
	wantHead, _ := testRowDesc().Encode(nil)
	if !bytes.Equal(head, wantHead) || !bytes.Equal(append(append([]byte{}, head...), body...), v) {
		t.Fatal("split does not partition the value at the RowDescription")
	}
	r, tag := splitTag(body)
	if want, _ := (&pgproto3.CommandComplete{CommandTag: []byte("SELECT 3")}).Encode(nil); !bytes.Equal(tag, want) {
		t.Fatalf("tag %q", tag)
	}
	n, first, rest := takeRows(r, 2)
	if n != 2 {
		t.Fatalf("takeRows(2) took %d", n)
	}
	if n2, last, none := takeRows(rest, 0); n2 != 1 || len(none) != 0 || !bytes.Equal(append(append([]byte{}, first...), last...), r) {
		t.Fatalf("takeRows(0) of the rest took %d, left %d bytes", n2, len(none))
	}
	if n, all, _ := takeRows(r, 10); n != 3 || !bytes.Equal(all, r) {
		t.Fatalf("takeRows(10) took %d", n)
	}
	if n, none, rest := takeRows(nil, 5); n != 0 || none != nil && len(none) != 0 || len(rest) != 0 {
		t.Fatal("takeRows of no rows")
	}

	// NoData and no rows.
	if _, _, ok := splitResult(encodeResult(t, &pgproto3.NoData{}, nil, "SELECT 0")); !ok {
		t.Fatal("NoData result rejected")
	}

	// Every truncation and a few corruptions are rejected, never panic.
	for i := 0; i < len(v); i++ {
		if _, _, ok := splitResult(v[:i]); ok {
			t.Fatalf("truncated value (%d of %d bytes) accepted", i, len(v))
		}
	}
	bad := [][]byte{
		nil,
		append([]byte{'D'}, v[1:]...), // does not start with RowDescription
		append(append([]byte{}, v...), 'C', 0, 0, 0),                                                    // trailing garbage
		append(append([]byte{}, v...), v...),                                                            // two results
		func() []byte { b := append([]byte{}, v...); b[1] = 0x7f; return b }(),                          // huge length
		func() []byte { b := append([]byte{}, v...); b[4] = 2; b[1], b[2], b[3] = 0, 0, 0; return b }(), // length < 4
		encodeResult(t, testRowDesc(), nil, "SELECT 0")[:len(wantHead)],                                 // no CommandComplete
	}
	rd, _ := testRowDesc().Encode(nil)
	withErr, err := (&pgproto3.ErrorResponse{Severity: "ERROR", Code: "22012", Message: "x"}).Encode(rd)
	if err != nil {
		t.Fatal(err)
	}
	bad = append(bad, withErr) // an error instead of a CommandComplete
	for i, b := range bad {
		if _, _, ok := splitResult(b); ok {
			t.Fatalf("bad value %d accepted: %x", i, b)
		}
	}
}

func FuzzSplitResult(f *testing.F) {
	f.Add(encodeResult(f, testRowDesc(), [][][]byte{{[]byte("1"), nil}}, "SELECT 1"))
	f.Add(encodeResult(f, &pgproto3.NoData{}, nil, "SELECT 0"))
	f.Fuzz(func(t *testing.T, v []byte) {
		head, body, ok := splitResult(v)
		if !ok {
			return
		}
		rows, tag := splitTag(body)
		if len(head)+len(rows)+len(tag) != len(v) || len(tag) == 0 || tag[0] != 'C' {
			t.Fatalf("split of an accepted value does not add up")
		}
		for rest := rows; len(rest) > 0; {
			n, _, r := takeRows(rest, 1)
			if n != 1 {
				t.Fatal("rows of an accepted value do not parse")
			}
			rest = r
		}
	})
}

func TestCacheTables(t *testing.T) {
	st, err := router.Classify(`SELECT * FROM a JOIN s.b ON true JOIN a a2 ON true WHERE x IN (SELECT y FROM c)`)
	if err != nil {
		t.Fatal(err)
	}
	got := cacheTables(st)
	want := map[string]bool{"a": true, "s.b": true, "c": true}
	if len(got) != len(want) {
		t.Fatalf("tables %v, want %v", got, want)
	}
	for _, n := range got {
		if !want[n] {
			t.Fatalf("tables %v, want %v", got, want)
		}
	}
}

func TestNoteCacheWriteWithoutCache(t *testing.T) {
	// Without a cache nothing is recorded (and nothing is invalidated).
	c := &clientConn{srv: &Server{}}
	st, err := router.Classify(`UPDATE t SET v = 1 WHERE id = 2`)
	if err != nil {
		t.Fatal(err)
	}
	c.noteCacheWrite(st)
	c.invalidateCacheWrites()
	if len(c.cacheState.written) != 0 {
		t.Fatal("written tables recorded without a cache")
	}
}

func TestNoteCacheWriteInvalidates(t *testing.T) {
	cc, err := cache.New(cache.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close(context.Background())
	rt := testRouter(t)
	srv := &Server{}
	srv.cache.Store(cc)
	c := &clientConn{srv: srv, sess: &session{rs: rt.NewSession()}}
	prep, err := router.Classify(`PREPARE w(int) AS DELETE FROM pw WHERE id = $1`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Route(context.Background(), c.sess.rs, prep, nil); err != nil {
		t.Fatal(err)
	}
	c.sess.rs.Observe('I')
	for _, q := range []string{
		`UPDATE t SET v = (SELECT max(v) FROM r) WHERE id = 2`,
		`INSERT INTO s.u SELECT * FROM t`,
		`EXECUTE w(1)`,
	} {
		st, err := router.Classify(q)
		if err != nil {
			t.Fatal(err)
		}
		c.noteCacheWrite(st)
	}
	if got := c.cacheState.written; len(got) != 3 || got[0] != "t" || got[1] != "s.u" || got[2] != "pw" {
		t.Fatalf("written tables %v, want [t s.u pw]", got)
	}
	c.invalidateCacheWrites()
	if n := cc.Stats().Invalidations; n != 3 {
		t.Fatalf("%d invalidations, want 3", n)
	}
	if len(c.cacheState.written) != 0 {
		t.Fatal("written tables kept after invalidation")
	}
}

func TestRememberTooLargeBounded(t *testing.T) {
	var cs cacheConnState
	r := &cacheRead{params: [][]byte{[]byte("1"), nil}, pformats: []int16{0}}
	h1 := largeHash("s0", "ns", "SELECT 1", r)
	if h2 := largeHash("s0", "ns", "SELECT 1", &cacheRead{params: [][]byte{[]byte("1"), {}}, pformats: []int16{0}}); h1 == h2 {
		t.Fatal("NULL and empty parameters hash alike")
	}
	for i := 0; i < 3*tooLargeEntries; i++ {
		cs.rememberTooLarge(uint64(i))
		if len(cs.tooLarge) > tooLargeEntries {
			t.Fatalf("%d entries remembered, bound %d", len(cs.tooLarge), tooLargeEntries)
		}
	}
	if _, ok := cs.tooLarge[uint64(3*tooLargeEntries-1)]; !ok {
		t.Fatal("the latest entry was not kept")
	}
}
