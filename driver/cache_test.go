package driver

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/dbproxy/dbproxy/cache"
	"github.com/dbproxy/dbproxy/router"
)

func TestCachedResultRoundTrip(t *testing.T) {
	m := pgtype.NewMap()
	var e resultEncoder
	e.columns([]pgconn.FieldDescription{
		{Name: "id", DataTypeOID: pgtype.Int8OID},
		{Name: "name", DataTypeOID: pgtype.TextOID},
		{Name: "blob", DataTypeOID: pgtype.ByteaOID},
		{Name: "", DataTypeOID: pgtype.BoolOID},
	})
	e.row([][]byte{[]byte("1"), []byte("alpha"), []byte(`\x0102`), []byte("t")})
	e.row([][]byte{[]byte("-2"), nil, []byte(`\x`), nil})
	e.row([][]byte{[]byte("3"), []byte(""), nil, []byte("f")})
	enc := e.finish("SELECT 3")
	orig := append([]byte(nil), enc...)

	r, err := decodeResult(m, enc)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Columns(); !reflect.DeepEqual(got, []string{"id", "name", "blob", ""}) {
		t.Fatalf("columns %q", got)
	}
	if string(r.tagBytes) != "SELECT 3" || r.ColumnTypeDatabaseTypeName(0) != "INT8" || r.ColumnTypeScanType(3) != reflect.TypeFor[bool]() {
		t.Fatalf("tag %q type %s", r.tagBytes, r.ColumnTypeDatabaseTypeName(0))
	}
	want := [][]driver.Value{
		{int64(1), "alpha", []byte{1, 2}, true},
		{int64(-2), nil, []byte{}, nil},
		{int64(3), "", nil, false},
	}
	dest := make([]driver.Value, 4)
	for i, w := range want {
		if err := r.Next(dest); err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
		if !reflect.DeepEqual(dest, w) {
			t.Fatalf("row %d: %#v want %#v", i, dest, w)
		}
		if b, ok := dest[2].([]byte); ok && len(b) > 0 {
			b[0] = 0xff // must not reach the shared bytes
		}
	}
	if err := r.Next(dest); err != io.EOF {
		t.Fatalf("after last row: %v", err)
	}
	if !reflect.DeepEqual(enc, orig) {
		t.Fatal("decoding modified the shared cached bytes")
	}

	// A result without a row description (cannot come from a cacheable
	// read, but must not break).
	var empty resultEncoder
	r, err = decodeResult(m, empty.finish(""))
	if err != nil || len(r.Columns()) != 0 || r.Next(nil) != io.EOF {
		t.Fatalf("empty: %v %v", r, err)
	}
}

// TestCacheMemo: a connection reuses the column decoders of an identical
// header, never hands out its memoized column names, and decodes results
// of another shape afresh.
func TestCacheMemo(t *testing.T) {
	m := pgtype.NewMap()
	enc := func(name string, oid uint32, vals ...string) []byte {
		var e resultEncoder
		e.columns([]pgconn.FieldDescription{{Name: name, DataTypeOID: oid}})
		for _, v := range vals {
			e.row([][]byte{[]byte(v)})
		}
		return e.finish("SELECT")
	}
	var memo cacheMemo
	read := func(b []byte) ([]string, []driver.Value) {
		t.Helper()
		r, err := memo.decode(m, b)
		if err != nil {
			t.Fatal(err)
		}
		var out []driver.Value
		dest := make([]driver.Value, 1)
		for r.Next(dest) == nil {
			out = append(out, dest[0])
		}
		return r.Columns(), out
	}
	cols, vals := read(enc("n", pgtype.Int4OID, "1", "2"))
	cols[0] = "clobbered"
	cols2, vals2 := read(enc("n", pgtype.Int4OID, "3"))
	if !reflect.DeepEqual(cols2, []string{"n"}) || !reflect.DeepEqual(vals, []driver.Value{int64(1), int64(2)}) || !reflect.DeepEqual(vals2, []driver.Value{int64(3)}) {
		t.Fatalf("memoized: %q %v %v", cols2, vals, vals2)
	}
	cols3, vals3 := read(enc("n", pgtype.TextOID, "3"))
	if !reflect.DeepEqual(cols3, []string{"n"}) || !reflect.DeepEqual(vals3, []driver.Value{"3"}) {
		t.Fatalf("new header: %q %v", cols3, vals3)
	}
	if _, err := memo.decode(m, []byte{1, 5}); !errors.Is(err, errCorruptResult) {
		t.Fatalf("corrupt header: %v", err)
	}
}

func TestCachedResultCorrupt(t *testing.T) {
	m := pgtype.NewMap()
	var e resultEncoder
	e.columns([]pgconn.FieldDescription{{Name: "v", DataTypeOID: pgtype.TextOID}})
	e.row([][]byte{[]byte("hello")})
	e.row([][]byte{[]byte("world")})
	enc := e.finish("SELECT 2")
	// Every truncation either fails to decode or fails at Next: never a
	// panic, never a wrong row count read past the end.
	var memo cacheMemo
	if _, err := memo.decode(m, enc); err != nil {
		t.Fatal(err)
	}
	for n := 0; n < len(enc); n++ {
		decode := decodeResult
		if n%2 == 1 {
			decode = memo.decode // same header (when long enough): the memo path
		}
		r, err := decode(m, enc[:n])
		if err != nil {
			if !errors.Is(err, errCorruptResult) {
				t.Fatalf("len %d: %v", n, err)
			}
			continue
		}
		dest := make([]driver.Value, 1)
		var rerr error
		for rerr == nil {
			rerr = r.Next(dest)
		}
		if !errors.Is(rerr, errCorruptResult) {
			t.Fatalf("len %d: truncated result read to %v", n, rerr)
		}
	}
	bad := append([]byte{9}, enc[1:]...)
	if _, err := decodeResult(m, bad); !errors.Is(err, errCorruptResult) {
		t.Fatalf("wrong version: %v", err)
	}
}

func FuzzDecodeCachedResult(f *testing.F) {
	var e resultEncoder
	e.columns([]pgconn.FieldDescription{{Name: "a", DataTypeOID: pgtype.Int4OID}, {Name: "b", DataTypeOID: pgtype.TextOID}})
	e.row([][]byte{[]byte("1"), []byte("x")})
	f.Add(e.finish("SELECT 1"))
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var memo cacheMemo
		m := pgtype.NewMap()
		for range 2 { // the second decode takes the memo path
			r, err := memo.decode(m, b)
			if err != nil {
				return
			}
			dest := make([]driver.Value, len(r.Columns()))
			for i := 0; i < 1000 && r.Next(dest) == nil; i++ {
			}
		}
	})
}

func TestCacheTables(t *testing.T) {
	st, err := router.Classify("UPDATE s1.accounts a SET v = b.v FROM balances b WHERE a.id = b.id")
	if err != nil {
		t.Fatal(err)
	}
	if got := writtenTables(nil, st); !reflect.DeepEqual(got, []string{"s1.accounts"}) {
		t.Fatalf("written %q", got)
	}
	if got := writtenTables([]string{"s1.accounts"}, st); len(got) != 1 {
		t.Fatalf("written twice: %q", got)
	}
	st, err = router.Classify("SELECT * FROM t JOIN u ON t.id = u.id JOIN t t2 ON true")
	if err != nil {
		t.Fatal(err)
	}
	if got := cacheTables(st); !reflect.DeepEqual(got, []string{"t", "u"}) {
		t.Fatalf("read tables %q", got)
	}
	if got := writtenTables(nil, st); len(got) != 0 {
		t.Fatalf("a read writes %q", got)
	}
}

func TestDSNCacheSwitch(t *testing.T) {
	for _, c := range []struct {
		dsn  string
		want bool
	}{
		{"shards=s0:127.0.0.1:5432;user=app;password=app;database=app", false},
		{"shards=s0:127.0.0.1:5432;user=app;password=app;database=app;cache=on", true},
		{"shards=s0:127.0.0.1:5432;user=app;password=app;database=app;cache=OFF", false},
	} {
		cfg, err := mustDSN(t, c.dsn).Config()
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Cache.Enabled != c.want {
			t.Errorf("%s: cache enabled %v", c.dsn, cfg.Cache.Enabled)
		}
	}
}

// TestConnectorCacheLifecycle: with the cache on and nothing answering,
// Connect still works (streams reconnect in the background), a cacheable
// read fails with the connection error (uncached, then in a fill), and Close stops
// the stream goroutines (goleak in TestMain).
func TestConnectorCacheLifecycle(t *testing.T) {
	cfg, err := mustDSN(t, "shards=s0:127.0.0.1:1;user=app;password=app;database=app;probe_timeout=200ms;acquire_timeout=300ms;cache=on").Config()
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConnector(cfg, WithoutFunctionCatalog())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.CacheStats(); ok || c.Cache() != nil {
		t.Fatal("cache exists before Connect")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cn, err := c.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The first miss runs uncached (fill_after_misses = 2), the second
	// through a fill.
	for i := 0; i < 2; i++ {
		if _, err := cn.(driver.QueryerContext).QueryContext(ctx, "SELECT v FROM kv WHERE k = $1", []driver.NamedValue{{Ordinal: 1, Value: int64(1)}}); err == nil {
			t.Fatal("query against an unreachable node succeeded")
		}
	}
	st, ok := c.CacheStats()
	if !ok || st.NotAdmitted != 1 || st.Fills != 1 || st.FillErrors != 1 || st.Hits != 0 || len(st.Streams) != 1 || st.Streams[0].Up {
		t.Fatalf("cache stats %+v ok=%v", st, ok)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Cache().GetOrFill(ctx, cache.NewKey(cache.KeyParts{Shard: "s0", SQL: "SELECT 1"}), nil, 0, nil); err == nil {
		t.Fatal("cache still open after Connector.Close")
	}
	_ = cn.Close()
}

// TestListenRefused: LISTEN/UNLISTEN, session-level advisory locks,
// temporary tables and WITH HOLD cursors are refused with 0A000 (no
// backend is needed to say so).
func TestListenRefused(t *testing.T) {
	cfg, err := mustDSN(t, "shards=s0:127.0.0.1:1;user=app;password=app;database=app;probe_timeout=200ms;acquire_timeout=300ms").Config()
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConnector(cfg, WithoutFunctionCatalog())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cn, err := c.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	for _, sql := range []string{"LISTEN jobs", "UNLISTEN *", "SELECT pg_advisory_lock(1)", "CREATE TEMP TABLE t (x int)", "DECLARE c CURSOR WITH HOLD FOR SELECT 1"} {
		_, err := cn.(driver.ExecerContext).ExecContext(ctx, sql, nil)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "0A000" {
			t.Fatalf("%s: %v, want 0A000", sql, err)
		}
	}
}
