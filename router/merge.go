package router

import (
	"fmt"
	"strconv"
	"strings"
	"sync"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// AggFunc is how one output column of a multi-shard aggregate is combined.
type AggFunc uint8

const (
	AggGroupKey AggFunc = iota // a GROUP BY column: part of the group key, copied
	AggCount                   // count(...): sum of the shards' counts (int8)
	AggSum                     // sum(...): sum of the shards' sums (NULL if all NULL)
	AggMin                     // min(...): minimum of the shards' minimums (NULLs ignored)
	AggMax                     // max(...): maximum of the shards' maximums (NULLs ignored)
	AggAvg                     // avg(x): sent as sum(x) here plus count(x) in CountColumn; result = sum/count
)

var aggNames = [...]string{AggGroupKey: "group_key", AggCount: "count", AggSum: "sum", AggMin: "min", AggMax: "max", AggAvg: "avg"}

// String returns the lower-case name of f.
func (f AggFunc) String() string {
	if int(f) < len(aggNames) {
		return aggNames[f]
	}
	return "AggFunc(" + strconv.Itoa(int(f)) + ")"
}

// SortKey is one ORDER BY key of a merge. Column is a 0-based position in
// the rows the shards return; a negative Column counts from the end (-1 is
// the last column), which is how hidden columns appended behind a "*" are
// addressed.
type SortKey struct {
	Column     int
	Desc       bool
	NullsFirst bool // PostgreSQL's default: NULLS LAST for ASC, NULLS FIRST for DESC
}

// AggColumn says how to combine one column across shards.
type AggColumn struct {
	Column      int     // position in the shard rows (as SortKey.Column)
	Func        AggFunc //
	CountColumn int     // AggAvg: position of the hidden count column (negative, from the end)
}

// MergePlan describes how to combine the results of one read run on
// several shards. The executor sends SQL (or, when SQL is "", the
// statement's own text) with the same parameters to every shard, then:
//
//  1. if Aggregates is non-empty: groups rows by the AggGroupKey columns
//     (all rows form one group when there are none; a shard with no rows
//     contributes nothing) and combines every other column by its Func;
//     an AggAvg column becomes sum/count (numeric for integer and numeric
//     inputs, float8 for float inputs — the shard's RowDescription shows
//     the type of sum(x) for that column);
//  2. sorts by Sort (stable; values compared by their PostgreSQL type) —
//     with no Sort, rows are a plain union in arrival order;
//  3. skips Offset rows and returns at most Limit rows (Limit < 0: all);
//  4. drops the last HiddenColumns columns of every row (and of the
//     RowDescription) before returning rows to the client.
//
// A MergePlan is immutable and may be shared.
type MergePlan struct {
	SQL           string
	Sort          []SortKey
	Aggregates    []AggColumn
	Limit         int64
	Offset        int64
	HiddenColumns int
}

// scatterPlan is the multi-shard plan Classify prepares for a single
// top-level SELECT, or why none exists.
type scatterPlan struct {
	plan        MergePlan
	limitParam  int // LIMIT $n (resolved by Route); 0 = none
	offsetParam int // OFFSET $n
	refuse      string
}

// parseVersion is the parse-tree version of pg_query_go v6 (PostgreSQL 17),
// which Deparse checks; TestDeparseVersion pins it against Parse.
const parseVersion int32 = 170007

func refuse(why string) *scatterPlan { return &scatterPlan{refuse: why} }

// concatenates reports whether the shards' rows, one shard after another,
// are the statement's result: nothing to sort, aggregate, limit or hide.
func (sp *scatterPlan) concatenates() bool {
	p := sp.plan
	return sp.refuse == "" && len(p.Sort) == 0 && len(p.Aggregates) == 0 && p.Limit < 0 && p.Offset == 0 &&
		p.HiddenColumns == 0 && sp.limitParam == 0 && sp.offsetParam == 0
}

// lazyScatter plans a single top-level SELECT for several shards on first
// use: planning clones and deparses the tree, which most statements (routed
// to one shard) never need. The text is parsed again then; Parse is
// deterministic, so the plan is the one the classified tree would give.
// Safe for concurrent use (Statements are shared through the cache).
type lazyScatter struct {
	sql  string
	once sync.Once
	plan *scatterPlan
}

func (l *lazyScatter) get() *scatterPlan {
	if l == nil {
		return nil
	}
	l.once.Do(func() {
		l.plan = planScatterSQL(l.sql)
	})
	return l.plan
}

// planScatterSQL parses sql (one SELECT statement) and plans it with
// planScatter, turning a parser surprise or an internal panic into a
// refusal rather than a crash.
func planScatterSQL(sql string) (sp *scatterPlan) {
	defer func() {
		if r := recover(); r != nil {
			sp = refuse(fmt.Sprintf("an internal planning error (%v)", r))
		}
	}()
	tree, err := pg_query.Parse(sql)
	if err != nil || len(tree.Stmts) != 1 {
		return refuse("a statement that could not be planned again")
	}
	sel := tree.Stmts[0].Stmt.GetSelectStmt()
	if cp := tree.Stmts[0].Stmt.GetCopyStmt(); cp != nil {
		sel = cp.GetQuery().GetSelectStmt() // COPY (SELECT ...) TO STDOUT
	}
	if sel == nil {
		return refuse("a statement that could not be planned again")
	}
	return planScatter(sel)
}

var mergeableAggs = map[string]AggFunc{"count": AggCount, "sum": AggSum, "min": AggMin, "max": AggMax, "avg": AggAvg}

// planScatter works out how sel could run on every shard and be merged.
func planScatter(sel *pg_query.SelectStmt) *scatterPlan {
	if sel.LimitOption == pg_query.LimitOption_LIMIT_OPTION_WITH_TIES {
		return refuse("FETCH ... WITH TIES across shards")
	}
	if sel.Op != pg_query.SetOperation_SETOP_NONE && sel.Op != pg_query.SetOperation_SET_OPERATION_UNDEFINED {
		return planSetOp(sel)
	}
	if len(sel.DistinctClause) > 0 {
		return refuse("DISTINCT across shards")
	}
	if sel.HavingClause != nil {
		return refuse("HAVING across shards")
	}
	if len(sel.WindowClause) > 0 {
		return refuse("window functions across shards")
	}
	for _, g := range sel.GroupClause {
		if g.GetGroupingSet() != nil {
			return refuse("GROUPING SETS / ROLLUP / CUBE across shards")
		}
	}
	out := proto.Clone(sel).(*pg_query.SelectStmt)
	sp := &scatterPlan{plan: MergePlan{Limit: -1}}
	rewrite := false

	star := false
	hasAgg := len(sel.GroupClause) > 0
	for _, t := range sel.TargetList {
		rt := t.GetResTarget()
		if cr := rt.GetVal().GetColumnRef(); cr != nil {
			for _, f := range cr.Fields {
				if f.GetAStar() != nil {
					star = true
				}
			}
		}
		if containsWindow(rt.GetVal()) {
			return refuse("window functions across shards")
		}
		if containsAgg(rt.GetVal()) {
			hasAgg = true
		}
	}
	var hidden []*pg_query.Node                                // expressions appended to the target list
	hiddenPos := func(j int) int { return -(len(hidden) - j) } // valid once hidden is final
	addHidden := func(expr *pg_query.Node) int {
		hidden = append(hidden, expr)
		return len(hidden) - 1
	}

	if hasAgg {
		if star {
			return refuse("SELECT * with aggregates across shards")
		}
		// group keys: every GROUP BY expression, located in the target
		// list or appended as a hidden column.
		groupPos := map[int]bool{}
		var groupHidden []int
		for _, g := range sel.GroupClause {
			if pos, ok := targetPos(sel.TargetList, g, false); ok {
				groupPos[pos] = true
				continue
			}
			if containsAgg(g) {
				return refuse("aggregate in GROUP BY")
			}
			groupHidden = append(groupHidden, addHidden(g))
		}
		for i, t := range out.TargetList {
			rt := t.GetResTarget()
			fc := rt.GetVal().GetFuncCall()
			if fc != nil && fc.Over == nil && isAggCall(fc) {
				schema, name := funcName(fc.Funcname)
				af, ok := mergeableAggs[name]
				if !ok || (schema != "" && schema != "pg_catalog") {
					return refuse("aggregate " + name + "() cannot be merged across shards")
				}
				if fc.AggDistinct {
					return refuse(name + "(DISTINCT ...) across shards")
				}
				if len(fc.AggOrder) > 0 || fc.AggWithinGroup {
					return refuse("ordered aggregate " + name + "() across shards")
				}
				col := AggColumn{Column: i, Func: af}
				if af == AggAvg {
					rewrite = true
					sum := proto.Clone(fc).(*pg_query.FuncCall)
					sum.Funcname = []*pg_query.Node{pg_query.MakeStrNode("sum")}
					cnt := proto.Clone(fc).(*pg_query.FuncCall)
					cnt.Funcname = []*pg_query.Node{pg_query.MakeStrNode("count")}
					rt.Val = &pg_query.Node{Node: &pg_query.Node_FuncCall{FuncCall: sum}}
					j := addHidden(&pg_query.Node{Node: &pg_query.Node_FuncCall{FuncCall: cnt}})
					_ = j
					sp.plan.Aggregates = append(sp.plan.Aggregates, col)
					continue
				}
				sp.plan.Aggregates = append(sp.plan.Aggregates, col)
				continue
			}
			if containsAgg(rt.GetVal()) {
				return refuse("expression over an aggregate across shards")
			}
			if !groupPos[i] {
				if _, ok := groupExprPos(sel.GroupClause, rt.GetVal()); !ok {
					return refuse("column " + strconv.Itoa(i+1) + " is neither aggregated nor grouped")
				}
			}
			sp.plan.Aggregates = append(sp.plan.Aggregates, AggColumn{Column: i, Func: AggGroupKey})
		}
		for range groupHidden {
			sp.plan.Aggregates = append(sp.plan.Aggregates, AggColumn{Func: AggGroupKey}) // Column set by resolveHidden
		}
	}

	for _, s := range sel.SortClause {
		sb := s.GetSortBy()
		if sb == nil || sb.SortbyDir == pg_query.SortByDir_SORTBY_USING {
			return refuse("ORDER BY ... USING across shards")
		}
		key := SortKey{Desc: sb.SortbyDir == pg_query.SortByDir_SORTBY_DESC}
		key.NullsFirst = key.Desc
		switch sb.SortbyNulls {
		case pg_query.SortByNulls_SORTBY_NULLS_FIRST:
			key.NullsFirst = true
		case pg_query.SortByNulls_SORTBY_NULLS_LAST:
			key.NullsFirst = false
		}
		pos, ok := targetPos(sel.TargetList, sb.Node, star)
		hiddenIdx := -1
		if !ok {
			if hasAgg {
				// must be a hidden group key
				for k, h := range hidden {
					if exprEqual(h, sb.Node) {
						hiddenIdx = k
					}
				}
				if hiddenIdx < 0 {
					return refuse("ORDER BY expression not in the select list of an aggregate query")
				}
			} else {
				hiddenIdx = addHidden(sb.Node)
			}
		}
		key.Column = pos // hidden columns: set by resolveHidden
		sp.plan.Sort = append(sp.plan.Sort, key)
	}

	// LIMIT / OFFSET
	lim, limParam, ok := limitValue(sel.LimitCount)
	if !ok {
		return refuse("LIMIT expression across shards")
	}
	off, offParam, ok := limitValue(sel.LimitOffset)
	if !ok {
		return refuse("OFFSET expression across shards")
	}
	sp.plan.Limit, sp.limitParam = lim, limParam
	if off < 0 {
		off = 0
	}
	sp.plan.Offset, sp.offsetParam = off, offParam
	hasLimit := lim >= 0 || limParam > 0
	hasOffset := off > 0 || offParam > 0
	if hasAgg {
		if hasLimit || hasOffset {
			out.LimitCount, out.LimitOffset = nil, nil
			out.LimitOption = pg_query.LimitOption_LIMIT_OPTION_DEFAULT
			rewrite = true
		}
	} else if hasOffset {
		out.LimitOffset = nil
		if hasLimit {
			out.LimitCount = addExpr(sel.LimitCount, sel.LimitOffset)
		}
		rewrite = true
	}

	if len(hidden) > 0 {
		rewrite = true
		for _, h := range hidden {
			out.TargetList = append(out.TargetList, &pg_query.Node{Node: &pg_query.Node_ResTarget{ResTarget: &pg_query.ResTarget{Val: h}}})
		}
	}
	sp.plan.HiddenColumns = len(hidden)
	resolveHidden(sp, sel, hidden, hiddenPos, star, hasAgg)

	if rewrite {
		sql, err := pg_query.Deparse(&pg_query.ParseResult{Version: parseVersion, Stmts: []*pg_query.RawStmt{{Stmt: &pg_query.Node{Node: &pg_query.Node_SelectStmt{SelectStmt: out}}}}})
		if err != nil {
			return refuse("cannot rewrite for shards: " + err.Error())
		}
		sp.plan.SQL = sql
	}
	return sp
}

// resolveHidden recomputes the positions of hidden columns referenced by
// the plan. It repeats the (cheap) matching done by planScatter so as not
// to rely on pointers into slices that may have grown.
func resolveHidden(sp *scatterPlan, sel *pg_query.SelectStmt, hidden []*pg_query.Node, hiddenPos func(int) int, star, hasAgg bool) {
	find := func(n *pg_query.Node) int {
		for k, h := range hidden {
			if exprEqual(h, n) {
				return k
			}
		}
		return -1
	}
	for i, s := range sel.SortClause {
		sb := s.GetSortBy()
		if _, ok := targetPos(sel.TargetList, sb.Node, star); !ok {
			if k := find(sb.Node); k >= 0 {
				sp.plan.Sort[i].Column = hiddenPos(k)
			}
		}
	}
	// avg count columns and hidden group keys, in the order they were added
	for i := range sp.plan.Aggregates {
		ag := &sp.plan.Aggregates[i]
		if ag.Func == AggAvg {
			fc := sel.TargetList[ag.Column].GetResTarget().GetVal().GetFuncCall()
			cnt := proto.Clone(fc).(*pg_query.FuncCall)
			cnt.Funcname = []*pg_query.Node{pg_query.MakeStrNode("count")}
			if k := find(&pg_query.Node{Node: &pg_query.Node_FuncCall{FuncCall: cnt}}); k >= 0 {
				ag.CountColumn = hiddenPos(k)
			}
		}
	}
	if hasAgg {
		n := 0
		for _, g := range sel.GroupClause {
			if _, ok := targetPos(sel.TargetList, g, false); ok {
				continue
			}
			if k := find(g); k >= 0 {
				// hidden group keys were appended after the target columns
				idx := len(sel.TargetList) + n
				if idx < len(sp.plan.Aggregates) {
					sp.plan.Aggregates[idx].Column = hiddenPos(k)
				}
				n++
			}
		}
	}
}

// planSetOp handles UNION ALL trees of plain SELECTs.
func planSetOp(sel *pg_query.SelectStmt) *scatterPlan {
	var branches []*pg_query.SelectStmt
	var flatten func(s *pg_query.SelectStmt) string
	flatten = func(s *pg_query.SelectStmt) string {
		switch s.Op {
		case pg_query.SetOperation_SETOP_NONE, pg_query.SetOperation_SET_OPERATION_UNDEFINED:
			branches = append(branches, s)
			return ""
		case pg_query.SetOperation_SETOP_UNION:
			if !s.All {
				return "UNION (without ALL) across shards"
			}
		default:
			return "INTERSECT/EXCEPT across shards"
		}
		if s != sel && (len(s.SortClause) > 0 || s.LimitCount != nil || s.LimitOffset != nil) {
			return "ORDER BY/LIMIT inside a UNION branch across shards"
		}
		if why := flatten(s.Larg); why != "" {
			return why
		}
		return flatten(s.Rarg)
	}
	if why := flatten(sel); why != "" {
		return refuse(why)
	}
	for _, b := range branches {
		if len(b.DistinctClause) > 0 || len(b.GroupClause) > 0 || b.HavingClause != nil || b.LimitCount != nil ||
			b.LimitOffset != nil || len(b.SortClause) > 0 || len(b.WindowClause) > 0 {
			return refuse("DISTINCT/GROUP BY/LIMIT inside a UNION branch across shards")
		}
		for _, t := range b.TargetList {
			if containsAgg(t.GetResTarget().GetVal()) || containsWindow(t.GetResTarget().GetVal()) {
				return refuse("aggregate inside a UNION branch across shards")
			}
		}
	}
	sp := &scatterPlan{plan: MergePlan{Limit: -1}}
	first := branches[0].TargetList
	for _, s := range sel.SortClause {
		sb := s.GetSortBy()
		if sb == nil || sb.SortbyDir == pg_query.SortByDir_SORTBY_USING {
			return refuse("ORDER BY ... USING across shards")
		}
		pos, ok := targetPos(first, sb.Node, true)
		if !ok {
			// by output column name
			if cr := sb.Node.GetColumnRef(); cr != nil && len(cr.Fields) == 1 {
				name := cr.Fields[0].GetString_().GetSval()
				for i, t := range first {
					if outputName(t.GetResTarget()) == name && !hasStarBefore(first, i) {
						pos, ok = i, true
						break
					}
				}
			}
		}
		if !ok {
			return refuse("ORDER BY of a UNION must name an output column")
		}
		key := SortKey{Column: pos, Desc: sb.SortbyDir == pg_query.SortByDir_SORTBY_DESC}
		key.NullsFirst = key.Desc
		switch sb.SortbyNulls {
		case pg_query.SortByNulls_SORTBY_NULLS_FIRST:
			key.NullsFirst = true
		case pg_query.SortByNulls_SORTBY_NULLS_LAST:
			key.NullsFirst = false
		}
		sp.plan.Sort = append(sp.plan.Sort, key)
	}
	lim, limParam, ok := limitValue(sel.LimitCount)
	if !ok {
		return refuse("LIMIT expression across shards")
	}
	off, offParam, ok := limitValue(sel.LimitOffset)
	if !ok {
		return refuse("OFFSET expression across shards")
	}
	if off < 0 {
		off = 0
	}
	sp.plan.Limit, sp.limitParam, sp.plan.Offset, sp.offsetParam = lim, limParam, off, offParam
	if off > 0 || offParam > 0 {
		out := proto.Clone(sel).(*pg_query.SelectStmt)
		out.LimitOffset = nil
		if lim >= 0 || limParam > 0 {
			out.LimitCount = addExpr(sel.LimitCount, sel.LimitOffset)
		}
		sql, err := pg_query.Deparse(&pg_query.ParseResult{Version: parseVersion, Stmts: []*pg_query.RawStmt{{Stmt: &pg_query.Node{Node: &pg_query.Node_SelectStmt{SelectStmt: out}}}}})
		if err != nil {
			return refuse("cannot rewrite for shards: " + err.Error())
		}
		sp.plan.SQL = sql
	}
	return sp
}

func outputName(rt *pg_query.ResTarget) string {
	if rt == nil {
		return ""
	}
	if rt.Name != "" {
		return rt.Name
	}
	if cr := rt.GetVal().GetColumnRef(); cr != nil && len(cr.Fields) > 0 {
		return cr.Fields[len(cr.Fields)-1].GetString_().GetSval()
	}
	if fc := rt.GetVal().GetFuncCall(); fc != nil {
		_, n := funcName(fc.Funcname)
		return n
	}
	return ""
}

func hasStarBefore(targets []*pg_query.Node, i int) bool {
	for _, t := range targets[:i+1] {
		if cr := t.GetResTarget().GetVal().GetColumnRef(); cr != nil {
			for _, f := range cr.Fields {
				if f.GetAStar() != nil {
					return true
				}
			}
		}
	}
	return false
}

// targetPos finds the 0-based output position an ORDER BY / GROUP BY item
// refers to: an integer position, an output column name, or an expression
// equal to a target. With star set, only integer positions are trusted
// (a "*" hides how many columns precede a target).
func targetPos(targets []*pg_query.Node, n *pg_query.Node, star bool) (int, bool) {
	if c := n.GetAConst(); c != nil {
		if iv, ok := c.Val.(*pg_query.A_Const_Ival); ok {
			k := int(iv.Ival.GetIval())
			if k >= 1 && k <= len(targets) && !star {
				return k - 1, true
			}
			if k >= 1 && star {
				return k - 1, true
			}
		}
		return 0, false
	}
	if star {
		return 0, false
	}
	if cr := n.GetColumnRef(); cr != nil && len(cr.Fields) == 1 {
		name := cr.Fields[0].GetString_().GetSval()
		for i, t := range targets {
			if rt := t.GetResTarget(); rt != nil && rt.Name == name {
				return i, true
			}
		}
	}
	for i, t := range targets {
		if rt := t.GetResTarget(); rt != nil && exprEqual(rt.Val, n) {
			return i, true
		}
	}
	return 0, false
}

func groupExprPos(groups []*pg_query.Node, n *pg_query.Node) (int, bool) {
	for i, g := range groups {
		if exprEqual(g, n) {
			return i, true
		}
	}
	return 0, false
}

// limitValue reads a LIMIT/OFFSET node: a constant (>= 0), $n, or absent
// / NULL / ALL (-1). ok is false for any other expression.
func limitValue(n *pg_query.Node) (v int64, param int, ok bool) {
	if n == nil {
		return -1, 0, true
	}
	if c := n.GetAConst(); c != nil {
		if c.Isnull {
			return -1, 0, true
		}
		switch x := c.Val.(type) {
		case *pg_query.A_Const_Ival:
			if x.Ival.GetIval() < 0 {
				return 0, 0, false
			}
			return int64(x.Ival.GetIval()), 0, true
		case *pg_query.A_Const_Fval:
			i, err := strconv.ParseInt(x.Fval.GetFval(), 10, 64)
			if err != nil || i < 0 {
				return 0, 0, false
			}
			return i, 0, true
		}
		return 0, 0, false
	}
	if p := n.GetParamRef(); p != nil && p.Number > 0 {
		return -1, int(p.Number), true
	}
	if tc := n.GetTypeCast(); tc != nil {
		return limitValue(tc.Arg)
	}
	return 0, 0, false
}

// addExpr builds "l + r" for the pushed-down LIMIT (limit + offset),
// folding two constants.
func addExpr(l, r *pg_query.Node) *pg_query.Node {
	lv, lp, _ := limitValue(l)
	rv, rp, _ := limitValue(r)
	if lp == 0 && rp == 0 && lv >= 0 && rv >= 0 {
		return pg_query.MakeAConstIntNode(lv+rv, -1)
	}
	return &pg_query.Node{Node: &pg_query.Node_AExpr{AExpr: &pg_query.A_Expr{
		Kind: pg_query.A_Expr_Kind_AEXPR_OP, Name: []*pg_query.Node{pg_query.MakeStrNode("+")},
		Lexpr: proto.Clone(l).(*pg_query.Node), Rexpr: proto.Clone(r).(*pg_query.Node), Location: -1,
	}}}
}

func isAggCall(fc *pg_query.FuncCall) bool {
	schema, name := funcName(fc.Funcname)
	return fc.AggStar || fc.AggDistinct || len(fc.AggOrder) > 0 || fc.AggFilter != nil || isAggregate(schema, name)
}

// containsAgg reports whether n contains an aggregate call outside of
// sub-queries.
func containsAgg(n *pg_query.Node) bool {
	found := false
	visitExpr(n.ProtoReflect(), func(m protoreflect.Message) bool {
		if fc, ok := m.Interface().(*pg_query.FuncCall); ok && fc.Over == nil && isAggCall(fc) {
			found = true
		}
		return !found
	})
	return found
}

func containsWindow(n *pg_query.Node) bool {
	found := false
	visitExpr(n.ProtoReflect(), func(m protoreflect.Message) bool {
		if fc, ok := m.Interface().(*pg_query.FuncCall); ok && fc.Over != nil {
			found = true
		}
		return !found
	})
	return found
}

// visitExpr calls f for every message under m, not descending into
// sub-queries. f returns false to stop descending.
func visitExpr(m protoreflect.Message, f func(protoreflect.Message) bool) {
	if !m.IsValid() {
		return
	}
	if _, ok := m.Interface().(*pg_query.SelectStmt); ok {
		return
	}
	if !f(m) {
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind || fd.IsMap() {
			return true
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				visitExpr(l.Get(i).Message(), f)
			}
		} else {
			visitExpr(v.Message(), f)
		}
		return true
	})
}

// exprEqual compares two expressions ignoring source locations.
func exprEqual(a, b *pg_query.Node) bool {
	if a == nil || b == nil {
		return a == b
	}
	return exprKey(a) == exprKey(b)
}

func exprKey(n *pg_query.Node) string {
	c := proto.Clone(n)
	clearLocations(c.ProtoReflect())
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		return ""
	}
	return string(b)
}

func clearLocations(m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Kind() == protoreflect.Int32Kind && strings.HasSuffix(string(fd.Name()), "location"):
			m.Clear(fd)
		case fd.Kind() == protoreflect.MessageKind && fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				clearLocations(l.Get(i).Message())
			}
		case fd.Kind() == protoreflect.MessageKind && !fd.IsMap():
			clearLocations(v.Message())
		}
		return true
	})
}
