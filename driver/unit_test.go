package driver

import (
	"context"
	"database/sql/driver"
	"errors"
	"math"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgtype"
)

type valuer struct{ s string }

func (v valuer) Value() (driver.Value, error) { return v.s, nil }

type nilValuer struct{}

func (nilValuer) Value() (driver.Value, error) { return "never", nil }

func TestCheckNamedValue(t *testing.T) {
	m := pgtype.NewMap()
	var nv *nilValuer
	when := time.Date(2024, 1, 2, 3, 4, 5, 6000, time.UTC)
	cases := []struct {
		in   any
		want any
	}{
		{nil, nil},
		{int64(5), int64(5)},
		{int(7), int64(7)},
		{int32(-3), int64(-3)},
		{uint16(9), int64(9)},
		{float32(1.5), float64(1.5)},
		{3.25, 3.25},
		{true, true},
		{"x", "x"},
		{[]byte("b"), []byte("b")},
		{when, when},
		{valuer{"v"}, "v"},
		{nv, nil},
		{[]int64{1, 2}, []int64{1, 2}}, // kept: pgx encodes it as int8[]
		{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.1")}, // kept: inet
	}
	for _, c := range cases {
		v := driver.NamedValue{Ordinal: 1, Value: c.in}
		if err := checkNamedValue(m, &v); err != nil {
			t.Errorf("%T: %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(v.Value, c.want) {
			t.Errorf("%T %v -> %T %v, want %v", c.in, c.in, v.Value, v.Value, c.want)
		}
	}
	v := driver.NamedValue{Name: "x", Ordinal: 1, Value: 1}
	if err := checkNamedValue(m, &v); !errors.Is(err, ErrNamedArgs) {
		t.Errorf("named: %v", err)
	}
	v = driver.NamedValue{Ordinal: 1, Value: make(chan int)}
	if err := checkNamedValue(m, &v); err == nil {
		t.Error("chan accepted")
	}
	v = driver.NamedValue{Ordinal: 1, Value: uint64(math.MaxUint64)}
	if err := checkNamedValue(m, &v); err != nil {
		t.Errorf("big uint64: %v", err) // pgx encodes it as numeric
	}
}

func TestEncodeArgs(t *testing.T) {
	m := pgtype.NewMap()
	when := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	args := []driver.NamedValue{
		{Ordinal: 1, Value: int64(-42)},
		{Ordinal: 2, Value: 0.5},
		{Ordinal: 3, Value: math.Inf(-1)},
		{Ordinal: 4, Value: true},
		{Ordinal: 5, Value: "héllo"},
		{Ordinal: 6, Value: []byte{0, 1}},
		{Ordinal: 7, Value: when},
		{Ordinal: 8, Value: nil},
		{Ordinal: 9, Value: []int64{1, 2}},
		{Ordinal: 10, Value: math.NaN()},
	}
	var e encodedArgs
	if err := encodeArgs(m, args, &e); err != nil {
		t.Fatal(err)
	}
	wantVals := []string{"-42", "0.5", "-Infinity", "true", "héllo", "\x00\x01", "2024-01-02 03:04:05Z", "", "{1,2}", "NaN"}
	for i, w := range wantVals {
		if string(e.values[i]) != w {
			t.Errorf("$%d = %q, want %q", i+1, e.values[i], w)
		}
	}
	if e.values[7] != nil || e.params[7].Value != nil {
		t.Error("NULL not encoded as nil")
	}
	if e.oids[0] != 0 || e.oids[5] != pgtype.ByteaOID || e.formats[5] != 1 || e.oids[6] != pgtype.TimestamptzOID || e.oids[8] != pgtype.Int8ArrayOID {
		t.Errorf("oids %v formats %v", e.oids, e.formats)
	}
	if len(e.params) != len(args) || string(e.params[0].Value) != "-42" || e.params[5].Format != 1 {
		t.Errorf("router params %+v", e.params)
	}
	if err := encodeArgs(m, []driver.NamedValue{{Ordinal: 1, Name: "n", Value: 1}}, &e); !errors.Is(err, ErrNamedArgs) {
		t.Errorf("named: %v", err)
	}
}

func TestValueFuncs(t *testing.T) {
	m := pgtype.NewMap()
	cases := []struct {
		oid  uint32
		text string
		want driver.Value
	}{
		{pgtype.Int4OID, "12", int64(12)},
		{pgtype.Int8OID, "-9", int64(-9)},
		{pgtype.Float8OID, "2.5", 2.5},
		{pgtype.BoolOID, "t", true},
		{pgtype.TextOID, "abc", "abc"},
		{pgtype.NumericOID, "1.50", "1.50"},
		{pgtype.ByteaOID, `\x0102`, []byte{1, 2}},
		{pgtype.TimestamptzOID, "2024-01-02 03:04:05+00", time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)},
		{pgtype.DateOID, "2024-01-02", time.Date(2024, 1, 2, 0, 0, 0, 0, time.UTC)},
	}
	for _, c := range cases {
		got, err := valueFuncFor(m, c.oid, pgtype.TextFormatCode)([]byte(c.text))
		if err != nil {
			t.Errorf("oid %d %q: %v", c.oid, c.text, err)
			continue
		}
		if tm, ok := got.(time.Time); ok {
			if !tm.Equal(c.want.(time.Time)) {
				t.Errorf("oid %d: %v want %v", c.oid, tm, c.want)
			}
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("oid %d %q: %#v want %#v", c.oid, c.text, got, c.want)
		}
	}
}

func TestMergeResults(t *testing.T) {
	int8s := []uint32{pgtype.Int8OID, pgtype.TextOID}
	parts := []shardResult{
		{columns: []string{"id", "name"}, oids: int8s, rows: [][]driver.Value{{int64(1), "a"}, {int64(4), nil}, {int64(6), "f"}}},
		{columns: []string{"id", "name"}, oids: int8s, rows: [][]driver.Value{{int64(2), "b"}, {int64(5), "e"}}},
		{columns: []string{"id", "name"}, oids: int8s},
	}
	out, err := mergeResults(&router.MergePlan{Sort: []router.SortKey{{Column: 0, Desc: true, NullsFirst: true}}, Limit: 3, Offset: 1}, parts)
	if err != nil {
		t.Fatal(err)
	}
	if got := rowsString(out.rows); got != "[[5 e] [4 <nil>] [2 b]]" {
		t.Fatalf("desc/limit/offset: %s", got)
	}
	// NULLS LAST on text ascending
	out, _ = mergeResults(&router.MergePlan{Sort: []router.SortKey{{Column: 1}}, Limit: -1}, parts)
	if got := rowsString(out.rows); got != "[[1 a] [2 b] [5 e] [6 f] [4 <nil>]]" {
		t.Fatalf("text asc nulls last: %s", got)
	}
	// hidden sort column
	hid := []shardResult{
		{columns: []string{"name", "k"}, oids: []uint32{pgtype.TextOID, pgtype.NumericOID}, rows: [][]driver.Value{{"x", "10.5"}, {"y", "9"}}},
		{columns: []string{"name", "k"}, oids: []uint32{pgtype.TextOID, pgtype.NumericOID}, rows: [][]driver.Value{{"z", "10.25"}}},
	}
	out, _ = mergeResults(&router.MergePlan{Sort: []router.SortKey{{Column: -1}}, Limit: -1, HiddenColumns: 1}, hid)
	if got := rowsString(out.rows); got != "[[y] [z] [x]]" || len(out.columns) != 1 {
		t.Fatalf("numeric sort with hidden column: %s %v", got, out.columns)
	}
}

func TestMergeAggregates(t *testing.T) {
	// SELECT cat, count(*), sum(i4), sum(i8), min(name), max(f), avg(i4) [sent as sum + hidden count]
	oids := []uint32{pgtype.TextOID, pgtype.Int8OID, pgtype.Int8OID, pgtype.NumericOID, pgtype.TextOID, pgtype.Float8OID, pgtype.Int8OID, pgtype.Int8OID}
	cols := []string{"cat", "count", "sum", "sum", "min", "max", "sum", "count"}
	plan := &router.MergePlan{
		Aggregates: []router.AggColumn{
			{Column: 0, Func: router.AggGroupKey}, {Column: 1, Func: router.AggCount}, {Column: 2, Func: router.AggSum},
			{Column: 3, Func: router.AggSum}, {Column: 4, Func: router.AggMin}, {Column: 5, Func: router.AggMax},
			{Column: 6, Func: router.AggAvg, CountColumn: -1},
		},
		Sort:          []router.SortKey{{Column: 0}},
		Limit:         -1,
		HiddenColumns: 1,
	}
	parts := []shardResult{
		{columns: cols, oids: oids, rows: [][]driver.Value{
			{"b", int64(2), int64(3), "10.50", "m", 1.5, int64(3), int64(2)},
			{"a", int64(1), int64(1), "1", "q", 9.0, int64(1), int64(1)},
		}},
		{columns: cols, oids: oids, rows: [][]driver.Value{
			{"b", int64(1), nil, "0.25", "c", nil, nil, int64(0)},
		}},
	}
	out, err := mergeResults(plan, parts)
	if err != nil {
		t.Fatal(err)
	}
	want := "[[a 1 1 1 q 9 1.00000000000000000000] [b 3 3 10.75 c 1.5 1.5000000000000000]]"
	if got := rowsString(out.rows); got != want {
		t.Fatalf("aggregates:\n got %s\nwant %s", got, want)
	}
	if out.columns[6] != "avg" || out.oids[6] != pgtype.NumericOID || len(out.columns) != 7 {
		t.Fatalf("columns %v oids %v", out.columns, out.oids)
	}
}

func TestDivScale(t *testing.T) {
	// PostgreSQL: avg of integers
	for _, c := range []struct {
		sum   string
		scale int
		n     int64
		want  string
	}{
		{"120", 0, 40, "3.0000000000000000"},
		{"3", 0, 2, "1.5000000000000000"},
		{"1", 0, 3, "0.33333333333333333333"},
		{"-7", 0, 2, "-3.5000000000000000"},
		{"123456789", 0, 1, "123456789.000000000000"},
		{"1000", 0, 7, "142.8571428571428571"},
		{"10.75", 2, 3, "3.5833333333333333"},
	} {
		s := &sumAcc{}
		if c.scale == 0 {
			var x int64
			for _, ch := range c.sum {
				if ch == '-' {
					continue
				}
				x = x*10 + int64(ch-'0')
			}
			if c.sum[0] == '-' {
				x = -x
			}
			_ = s.add(x)
		} else {
			_ = s.add(c.sum)
		}
		got, _ := s.avg(c.n)
		if got != c.want {
			t.Errorf("avg(%s / %d) = %v, want %s", c.sum, c.n, got, c.want)
		}
	}
}

func rowsString(rows [][]driver.Value) string {
	out := "["
	for i, r := range rows {
		if i > 0 {
			out += " "
		}
		out += "["
		for j, v := range r {
			if j > 0 {
				out += " "
			}
			switch x := v.(type) {
			case nil:
				out += "<nil>"
			case string:
				out += x
			default:
				out += fmtValue(x)
			}
		}
		out += "]"
	}
	return out + "]"
}

func fmtValue(v any) string {
	switch x := v.(type) {
	case int64:
		return itoa(x)
	case float64:
		return ftoa(x)
	}
	return "?"
}

func TestContextOptions(t *testing.T) {
	ctx := context.Background()
	if o := optionsFrom(ctx); o.primary || o.hasStaleness || o.tracker != nil || o.tokenErr != nil {
		t.Fatalf("zero options %+v", o)
	}
	ctx2, tr := WithCausalTracking(ctx)
	tr.add("s1", 0x20)
	tr.add("s0", 0x10)
	tr.add("s1", 0x18) // lower: ignored
	if CausalToken(ctx2) != "s0:0/10,s1:0/20" || tr.Token() != "s0:0/10,s1:0/20" {
		t.Fatalf("token %q", CausalToken(ctx2))
	}
	if CausalToken(ctx) != "" {
		t.Fatal("token without tracker")
	}
	rctx := WithCausalToken(ctx, "s0:0/10,s1:0/20")
	rctx = WithCausalToken(rctx, "s1:0/30")
	if got := router.CausalTokenFromContext(rctx).String(); got != "s0:0/10,s1:0/30" {
		t.Fatalf("merged context token %q", got)
	}
	if WithCausalToken(ctx, "") != ctx {
		t.Fatal("empty token changed the context")
	}
	if o := optionsFrom(WithCausalToken(ctx, "garbage")); !errors.Is(o.tokenErr, router.ErrBadCausalToken) {
		t.Fatalf("bad token: %v", o.tokenErr)
	}
	if o := optionsFrom(WithMaxStaleness(ctx, time.Second)); !o.hasStaleness || o.staleness != time.Second || o.primary {
		t.Fatalf("staleness %+v", o)
	}
	if o := optionsFrom(WithMaxStaleness(ctx, 0)); !o.primary {
		t.Fatal("zero staleness is not primary-only")
	}
	if o := optionsFrom(WithPrimary(ctx)); !o.primary {
		t.Fatal("WithPrimary")
	}
}

// TestConnectorLifecycle builds the runtime against an unreachable node
// (probes mark it down; nothing fails), closes it, and checks that every
// goroutine stopped (goleak in TestMain) and that use after Close fails.
func TestConnectorLifecycle(t *testing.T) {
	cfg, err := mustDSN(t, "shards=s0:127.0.0.1:1|127.0.0.1:2,s1:127.0.0.1:3;user=app;password=app;database=app;probe_timeout=200ms;health_interval=50ms;lag_interval=20ms;acquire_timeout=300ms").Config()
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cn, err := c.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Stats()) != 2 {
		t.Fatalf("stats %v", c.Stats())
	}
	// Nothing answers: a statement fails with a connection error, not a panic.
	_, err = cn.(driver.QueryerContext).QueryContext(ctx, "SELECT 1", nil)
	if err == nil {
		t.Fatal("query against unreachable nodes succeeded")
	}
	if !cn.(driver.Validator).IsValid() {
		t.Fatal("conn invalid before Close")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if cn.(driver.Validator).IsValid() {
		t.Fatal("conn valid after Connector.Close")
	}
	if _, err := c.Connect(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Connect after Close: %v", err)
	}
	if _, err := cn.(driver.ExecerContext).ExecContext(ctx, "SELECT 1", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Exec after Close: %v", err)
	}
	if err := cn.Close(); err != nil {
		t.Fatal(err)
	}
}

func itoa(v int64) string   { return strconvFormatInt(v) }
func ftoa(v float64) string { return strconvFormatFloat(v) }
