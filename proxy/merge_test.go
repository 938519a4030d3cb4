package proxy

import (
	"fmt"
	"testing"

	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
)

func fields(oids ...uint32) []pgproto3.FieldDescription {
	out := make([]pgproto3.FieldDescription, len(oids))
	for i, o := range oids {
		out[i] = pgproto3.FieldDescription{Name: []byte(fmt.Sprint("c", i)), DataTypeOID: o}
	}
	return out
}

func rowsOf(vals ...[]any) [][][]byte {
	var out [][][]byte
	for _, r := range vals {
		var row [][]byte
		for _, v := range r {
			if v == nil {
				row = append(row, nil)
			} else {
				row = append(row, []byte(fmt.Sprint(v)))
			}
		}
		out = append(out, row)
	}
	return out
}

func render(rows [][][]byte) string {
	s := ""
	for _, r := range rows {
		s += "("
		for i, v := range r {
			if i > 0 {
				s += ","
			}
			if v == nil {
				s += "NULL"
			} else {
				s += string(v)
			}
		}
		s += ")"
	}
	return s
}

func TestMergeSortLimit(t *testing.T) {
	f := fields(pgtype.Int4OID, pgtype.TextOID)
	rows := rowsOf([]any{10, "a"}, []any{2, "b"}, []any{nil, "n"}, []any{33, "c"}, []any{2, "d"}, []any{-5, "e"})
	for _, tc := range []struct {
		plan router.MergePlan
		want string
	}{
		{router.MergePlan{Sort: []router.SortKey{{Column: 0}}, Limit: -1}, "(-5,e)(2,b)(2,d)(10,a)(33,c)(NULL,n)"},
		{router.MergePlan{Sort: []router.SortKey{{Column: 0, Desc: true, NullsFirst: true}}, Limit: -1}, "(NULL,n)(33,c)(10,a)(2,b)(2,d)(-5,e)"},
		{router.MergePlan{Sort: []router.SortKey{{Column: 0, Desc: true}}, Limit: 2, Offset: 1}, "(10,a)(2,b)"},
		{router.MergePlan{Sort: []router.SortKey{{Column: -1, Desc: true}}, Limit: 3}, "(NULL,n)(-5,e)(2,d)"},
		{router.MergePlan{Limit: 0}, ""},
		{router.MergePlan{Limit: -1, Offset: 10}, ""},
	} {
		in := make([][][]byte, len(rows))
		copy(in, rows)
		got, err := mergeRows(&tc.plan, f, in)
		if err != nil {
			t.Fatal(err)
		}
		if render(got) != tc.want {
			t.Errorf("%+v: got %s want %s", tc.plan, render(got), tc.want)
		}
	}
}

func TestMergeAggregates(t *testing.T) {
	// per shard: group, count(x), sum(x), min(x), max(x), sum(x) for avg, count(x) for avg (hidden)
	f := fields(pgtype.TextOID, pgtype.Int8OID, pgtype.NumericOID, pgtype.Int4OID, pgtype.Int4OID, pgtype.NumericOID, pgtype.Int8OID)
	rows := rowsOf(
		[]any{"a", 2, "3.5", 1, 9, 10, 2},
		[]any{"b", 1, nil, nil, nil, nil, 0},
		[]any{"a", 3, "1.25", -4, 7, 5, 3},
		[]any{nil, 1, "2", 2, 2, 2, 1},
	)
	plan := router.MergePlan{Limit: -1, Sort: []router.SortKey{{Column: 0}}, Aggregates: []router.AggColumn{
		{Column: 0, Func: router.AggGroupKey}, {Column: 1, Func: router.AggCount}, {Column: 2, Func: router.AggSum},
		{Column: 3, Func: router.AggMin}, {Column: 4, Func: router.AggMax}, {Column: 5, Func: router.AggAvg, CountColumn: -1},
	}, HiddenColumns: 1}
	got, err := mergeRows(&plan, f, rows)
	if err != nil {
		t.Fatal(err)
	}
	want := "(a,5,4.75,-4,9,3.0000000000000000,5)(b,1,NULL,NULL,NULL,NULL,0)(NULL,1,2,2,2,2.0000000000000000,1)"
	if render(got) != want {
		t.Errorf("got  %s\nwant %s", render(got), want)
	}
	// No GROUP BY and no rows anywhere: no row (count(*) of empty
	// shards is still one row per shard, so this only happens for
	// grouped-away input).
	got, err = mergeRows(&router.MergePlan{Limit: -1, Aggregates: []router.AggColumn{{Column: 0, Func: router.AggCount}}}, fields(pgtype.Int8OID), nil)
	if err != nil || len(got) != 0 {
		t.Fatalf("%v %v", got, err)
	}
	// Float sums and averages stay floats.
	got, err = mergeRows(&router.MergePlan{Limit: -1, Aggregates: []router.AggColumn{{Column: 0, Func: router.AggSum}, {Column: 1, Func: router.AggAvg, CountColumn: 2}}},
		fields(pgtype.Float8OID, pgtype.Float8OID, pgtype.Int8OID), rowsOf([]any{"0.5", "1.5", 1}, []any{"0.25", "3", 2}))
	if err != nil || render(got) != "(0.75,1.5,3)" {
		t.Fatalf("floats: %s %v", render(got), err)
	}
}

func TestCompareValues(t *testing.T) {
	for _, tc := range []struct {
		oid  uint32
		a, b string
		want int
	}{
		{pgtype.Int8OID, "9", "10", -1},
		{pgtype.NumericOID, "10.50", "10.5", 0},
		{pgtype.NumericOID, "NaN", "1e9", 1},
		{pgtype.Float8OID, "NaN", "Infinity", 1},
		{pgtype.Float8OID, "-Infinity", "-1e308", -1},
		{pgtype.TextOID, "b", "a", 1},
		{pgtype.BoolOID, "f", "t", -1},
	} {
		got, err := compareValues(tc.oid, []byte(tc.a), []byte(tc.b), false)
		if err != nil || got != tc.want {
			t.Errorf("%d %s %s: %d %v", tc.oid, tc.a, tc.b, got, err)
		}
	}
}

func TestApplyResultFormats(t *testing.T) {
	res := &localResult{fields: fields(pgtype.Int4OID, pgtype.TextOID, pgtype.NumericOID), rows: rowsOf([]any{7, "x", "1.5"}, []any{nil, "y", nil})}
	if err := applyResultFormats(res, []int16{1, 0, 1}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(res.rows[0][0]) != fmt.Sprint([]byte{0, 0, 0, 7}) || string(res.rows[0][1]) != "x" || res.rows[1][0] != nil || res.fields[0].Format != 1 || res.fields[1].Format != 0 {
		t.Fatalf("%v %+v", res.rows, res.fields)
	}
}
