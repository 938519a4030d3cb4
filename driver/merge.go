package driver

import (
	"bytes"
	"database/sql/driver"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgtype"
)

// shardResult is what one shard returned for a multi-shard read.
type shardResult struct {
	columns []string
	oids    []uint32
	rows    [][]driver.Value
}

// mergeResults combines the shards' rows as plan says (see
// router.MergePlan): aggregate by group, sort, offset and limit, then drop
// the hidden columns. Values are compared by their Go type (text in byte
// order, which is PostgreSQL's "C" collation; numeric exactly).
func mergeResults(plan *router.MergePlan, parts []shardResult) (shardResult, error) {
	var out shardResult
	for _, p := range parts {
		if p.columns != nil {
			out.columns, out.oids = p.columns, p.oids
			break
		}
	}
	for _, p := range parts {
		if p.columns != nil && len(p.columns) != len(out.columns) {
			return out, fmt.Errorf("dbproxy driver: shards returned %d and %d columns", len(out.columns), len(p.columns))
		}
		out.rows = append(out.rows, p.rows...)
	}
	ncol := len(out.columns)
	resolve := func(c int) (int, error) {
		if c < 0 {
			c += ncol
		}
		if c < 0 || c >= ncol {
			return 0, fmt.Errorf("dbproxy driver: merge plan refers to column %d of %d", c, ncol)
		}
		return c, nil
	}
	if len(plan.Aggregates) > 0 {
		rows, err := aggregate(plan.Aggregates, out.oids, out.rows, resolve)
		if err != nil {
			return out, err
		}
		out.rows = rows
		// avg(x) was sent as sum(x): restore its name and result type
		out.columns, out.oids = slices.Clone(out.columns), slices.Clone(out.oids)
		for _, a := range plan.Aggregates {
			if a.Func != router.AggAvg {
				continue
			}
			c, err := resolve(a.Column)
			if err != nil {
				return out, err
			}
			if out.columns[c] == "sum" {
				out.columns[c] = "avg"
			}
			if out.oids[c] == pgtype.Float4OID || out.oids[c] == pgtype.Float8OID {
				out.oids[c] = pgtype.Float8OID
			} else {
				out.oids[c] = pgtype.NumericOID
			}
		}
	}
	if len(plan.Sort) > 0 {
		type key struct {
			col        int
			desc       bool
			nullsFirst bool
		}
		keys := make([]key, len(plan.Sort))
		for i, k := range plan.Sort {
			c, err := resolve(k.Column)
			if err != nil {
				return out, err
			}
			keys[i] = key{c, k.Desc, k.NullsFirst}
		}
		slices.SortStableFunc(out.rows, func(a, b []driver.Value) int {
			for _, k := range keys {
				av, bv := a[k.col], b[k.col]
				var c int
				switch {
				case av == nil && bv == nil:
					c = 0
				case av == nil:
					c = 1
					if k.nullsFirst {
						c = -1
					}
				case bv == nil:
					c = -1
					if k.nullsFirst {
						c = 1
					}
				default:
					c = compareValues(av, bv, out.oids[k.col])
					if k.desc {
						c = -c
					}
				}
				if c != 0 {
					return c
				}
			}
			return 0
		})
	}
	if plan.Offset > 0 {
		if plan.Offset >= int64(len(out.rows)) {
			out.rows = out.rows[:0]
		} else {
			out.rows = out.rows[plan.Offset:]
		}
	}
	if plan.Limit >= 0 && plan.Limit < int64(len(out.rows)) {
		out.rows = out.rows[:plan.Limit]
	}
	if h := plan.HiddenColumns; h > 0 && h <= ncol {
		out.columns = out.columns[:ncol-h]
		out.oids = out.oids[:ncol-h]
		for i := range out.rows {
			out.rows[i] = out.rows[i][:ncol-h]
		}
	}
	return out, nil
}

// aggregate groups rows by the AggGroupKey columns and combines the other
// aggregate columns. Groups keep the order of their first row.
func aggregate(aggs []router.AggColumn, oids []uint32, rows [][]driver.Value, resolve func(int) (int, error)) ([][]driver.Value, error) {
	type aggCol struct {
		col, count int
		fn         router.AggFunc
	}
	cols := make([]aggCol, len(aggs))
	for i, a := range aggs {
		c, err := resolve(a.Column)
		if err != nil {
			return nil, err
		}
		cols[i] = aggCol{col: c, fn: a.Func}
		if a.Func == router.AggAvg {
			cc, err := resolve(a.CountColumn)
			if err != nil {
				return nil, err
			}
			cols[i].count = cc
		}
	}
	type group struct {
		row  []driver.Value
		sums map[int]*sumAcc // by column: AggSum and AggAvg
		cnts map[int]int64   // AggAvg count totals by column
	}
	var order []*group
	groups := map[string]*group{}
	var kb strings.Builder
	for _, r := range rows {
		kb.Reset()
		for _, c := range cols {
			if c.fn == router.AggGroupKey {
				fmt.Fprintf(&kb, "%T\x00%v\x01", r[c.col], r[c.col])
			}
		}
		k := kb.String()
		g := groups[k]
		if g == nil {
			g = &group{row: slices.Clone(r), sums: map[int]*sumAcc{}, cnts: map[int]int64{}}
			groups[k] = g
			order = append(order, g)
			for _, c := range cols {
				switch c.fn {
				case router.AggSum, router.AggAvg:
					g.sums[c.col] = &sumAcc{oid: oids[c.col]}
					if err := g.sums[c.col].add(r[c.col]); err != nil {
						return nil, err
					}
					if c.fn == router.AggAvg {
						n, _ := r[c.count].(int64)
						g.cnts[c.col] = n
					}
				}
			}
			continue
		}
		for _, c := range cols {
			v := r[c.col]
			switch c.fn {
			case router.AggCount:
				a, _ := g.row[c.col].(int64)
				b, _ := v.(int64)
				g.row[c.col] = a + b
			case router.AggSum, router.AggAvg:
				if err := g.sums[c.col].add(v); err != nil {
					return nil, err
				}
				if c.fn == router.AggAvg {
					n, _ := r[c.count].(int64)
					g.cnts[c.col] += n
				}
			case router.AggMin, router.AggMax:
				cur := g.row[c.col]
				if v == nil {
					continue
				}
				if cur == nil {
					g.row[c.col] = v
					continue
				}
				cmp := compareValues(v, cur, oids[c.col])
				if c.fn == router.AggMin && cmp < 0 || c.fn == router.AggMax && cmp > 0 {
					g.row[c.col] = v
				}
			}
		}
	}
	out := make([][]driver.Value, 0, len(order))
	for _, g := range order {
		for _, c := range cols {
			switch c.fn {
			case router.AggSum:
				v, err := g.sums[c.col].value()
				if err != nil {
					return nil, err
				}
				g.row[c.col] = v
			case router.AggAvg:
				v, err := g.sums[c.col].avg(g.cnts[c.col])
				if err != nil {
					return nil, err
				}
				g.row[c.col] = v
			}
		}
		out = append(out, g.row)
	}
	return out, nil
}

// sumAcc adds the per-shard values of one sum() column: int64 (sum of
// int2/int4 is int8), float64, or numeric text (sum of int8/numeric).
type sumAcc struct {
	oid    uint32
	any    bool
	i      int64
	f      float64
	r      *big.Rat
	scale  int
	isInt  bool
	isFlt  bool
	isNum  bool
	nanNum bool
}

func (s *sumAcc) add(v driver.Value) error {
	switch x := v.(type) {
	case nil:
		return nil
	case int64:
		s.isInt = true
		if s.any && (x > 0 && s.i > math.MaxInt64-x || x < 0 && s.i < math.MinInt64-x) {
			return fmt.Errorf("dbproxy driver: bigint out of range while merging sum() across shards")
		}
		s.i += x
	case float64:
		s.isFlt = true
		s.f += x
	case string:
		s.isNum = true
		if strings.EqualFold(x, "NaN") {
			s.nanNum = true
			break
		}
		r, ok := new(big.Rat).SetString(x)
		if !ok {
			return fmt.Errorf("dbproxy driver: cannot merge sum() value %q across shards", x)
		}
		if s.r == nil {
			s.r = new(big.Rat)
		}
		s.r.Add(s.r, r)
		if _, frac, ok := strings.Cut(x, "."); ok {
			s.scale = max(s.scale, len(frac))
		}
	default:
		return fmt.Errorf("dbproxy driver: cannot merge sum() of %T across shards", v)
	}
	s.any = true
	return nil
}

func (s *sumAcc) value() (driver.Value, error) {
	switch {
	case !s.any:
		return nil, nil
	case s.isNum:
		if s.nanNum {
			return "NaN", nil
		}
		return s.r.FloatString(s.scale), nil
	case s.isFlt:
		return s.f, nil
	}
	return s.i, nil
}

// avg divides the sum by n the way PostgreSQL's avg() does: float8 for
// float inputs, numeric (with PostgreSQL's division scale) otherwise.
func (s *sumAcc) avg(n int64) (driver.Value, error) {
	if !s.any || n == 0 {
		return nil, nil
	}
	switch {
	case s.isFlt:
		return s.f / float64(n), nil
	case s.isNum && s.nanNum:
		return "NaN", nil
	}
	var sum *big.Rat
	sumText := ""
	scale := 0
	if s.isNum {
		sum, scale = s.r, s.scale
		sumText = s.r.FloatString(s.scale)
	} else {
		sum = new(big.Rat).SetInt64(s.i)
		sumText = fmt.Sprint(s.i)
	}
	cnt := fmt.Sprint(n)
	rscale := divScale(sumText, scale, cnt)
	q := new(big.Rat).Quo(sum, new(big.Rat).SetInt64(n))
	return roundRat(q, rscale), nil
}

// divScale is PostgreSQL's select_div_scale for numeric division of a
// (display scale ascale) by the integer b.
func divScale(a string, ascale int, b string) int {
	w1, f1 := numericWeight(a)
	w2, f2 := numericWeight(b)
	q := w1 - w2
	if f1 <= f2 {
		q--
	}
	r := 16 - q*4
	r = max(r, ascale, 0)
	return min(r, 1000)
}

// numericWeight returns the weight of the first non-zero base-10000 digit
// of the decimal text s, and that digit (0, 0 for zero).
func numericWeight(s string) (weight, first int) {
	s = strings.TrimLeft(s, "+-")
	ip, fp, _ := strings.Cut(s, ".")
	ip = strings.TrimLeft(ip, "0")
	if ip != "" {
		if pad := len(ip) % 4; pad != 0 {
			ip = strings.Repeat("0", 4-pad) + ip
		}
		d, _ := strconv.Atoi(ip[:4])
		return len(ip)/4 - 1, d
	}
	if pad := len(fp) % 4; pad != 0 {
		fp += strings.Repeat("0", 4-pad)
	}
	for i := 0; i+4 <= len(fp); i += 4 {
		d, _ := strconv.Atoi(fp[i : i+4])
		if d != 0 {
			return -(i/4 + 1), d
		}
	}
	return 0, 0
}

// roundRat formats q with scale decimals, rounding half away from zero.
func roundRat(q *big.Rat, scale int) string {
	m := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(scale)), nil)
	x := new(big.Rat).Mul(q, new(big.Rat).SetInt(m))
	num, den := x.Num(), x.Denom()
	quo, rem := new(big.Int).QuoRem(num, den, new(big.Int))
	twice := new(big.Int).Mul(new(big.Int).Abs(rem), big.NewInt(2))
	if twice.Cmp(den) >= 0 {
		if num.Sign() < 0 {
			quo.Sub(quo, big.NewInt(1))
		} else {
			quo.Add(quo, big.NewInt(1))
		}
	}
	neg := quo.Sign() < 0
	digits := new(big.Int).Abs(quo).String()
	if scale > 0 {
		if len(digits) <= scale {
			digits = strings.Repeat("0", scale-len(digits)+1) + digits
		}
		digits = digits[:len(digits)-scale] + "." + digits[len(digits)-scale:]
	}
	if neg {
		return "-" + digits
	}
	return digits
}

// compareValues orders two non-NULL values of one column.
func compareValues(a, b driver.Value, oid uint32) int {
	switch x := a.(type) {
	case int64:
		switch y := b.(type) {
		case int64:
			return cmpOrdered(x, y)
		case float64:
			return cmpFloat(float64(x), y)
		}
	case float64:
		switch y := b.(type) {
		case float64:
			return cmpFloat(x, y)
		case int64:
			return cmpFloat(x, float64(y))
		}
	case bool:
		if y, ok := b.(bool); ok {
			switch {
			case x == y:
				return 0
			case !x:
				return -1
			}
			return 1
		}
	case string:
		if y, ok := b.(string); ok {
			if oid == pgtype.NumericOID {
				if c, ok := cmpNumeric(x, y); ok {
					return c
				}
			}
			return strings.Compare(x, y)
		}
	case []byte:
		if y, ok := b.([]byte); ok {
			return bytes.Compare(x, y)
		}
	case time.Time:
		if y, ok := b.(time.Time); ok {
			return x.Compare(y)
		}
	}
	return strings.Compare(fmt.Sprint(a), fmt.Sprint(b))
}

func cmpOrdered[T int64 | string](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// cmpFloat orders floats as PostgreSQL does: NaN above everything.
func cmpFloat(a, b float64) int {
	an, bn := math.IsNaN(a), math.IsNaN(b)
	switch {
	case an && bn:
		return 0
	case an:
		return 1
	case bn:
		return -1
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// cmpNumeric compares numeric texts exactly (NaN above everything).
func cmpNumeric(a, b string) (int, bool) {
	an, bn := strings.EqualFold(a, "NaN"), strings.EqualFold(b, "NaN")
	switch {
	case an && bn:
		return 0, true
	case an:
		return 1, true
	case bn:
		return -1, true
	}
	x, ok1 := new(big.Rat).SetString(a)
	y, ok2 := new(big.Rat).SetString(b)
	if !ok1 || !ok2 {
		return 0, false
	}
	return x.Cmp(y), true
}
