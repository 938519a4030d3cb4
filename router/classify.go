package router

import (
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// maxAlternatives bounds the number of OR-alternatives kept for a scope's
// key predicate; beyond it the predicate is treated as unknown (a safe
// superset: every shard).
const maxAlternatives = 256

// scopeInfo is one query level (a SELECT block or a DML statement).
type scopeInfo struct {
	parent int   // enclosing scope, -1 for a top level
	branch bool  // a branch of the top-level set operation (UNION ALL)
	refs   []int // indexes into Statement.Tables
	alts   []conj
}

// colRef names a column of a table reference. ref < 0 means an
// unqualified column in a scope with several tables: it may belong to any
// reference of scope.
type colRef struct {
	ref   int
	scope int
	col   string
}

type atom struct {
	c colRef
	v KeyValue
}

// conj is one alternative: AND-ed column = value and column = column.
type conj struct {
	vals []atom
	eqs  [][2]colRef
}

var unknownAlts = []conj{{}}

// analyzer walks one parse tree and fills a Statement.
type analyzer struct {
	sql string
	st  *Statement

	ctes      map[string]bool
	scopes    []scopeInfo
	topSelect *pg_query.SelectStmt // the top-level SELECT (set-operation branches are marked)
	listens   []ListenInfo         // LISTEN/UNLISTEN statements of the text
	copyIns   []CopyInfo           // COPY ... FROM STDIN statements of the text
	copyOuts  []CopyInfo           // COPY table TO STDOUT and COPY (SELECT ...) TO STDOUT statements of the text

	// per top-level statement
	kind      Kind
	command   string
	primary   string // first MustPrimary reason
	noCache   bool
	broadcast bool
	explain   bool
}

func (a *analyzer) mustPrimary(why string) {
	if a.primary == "" {
		a.primary = why
	}
	a.noCache = true
}

func (a *analyzer) setKind(k Kind) {
	if k.strength() > a.kind.strength() || a.kind == KindUnknown && k != KindUnknown {
		a.kind = k
	}
}

func (a *analyzer) newScope(parent int) int {
	a.scopes = append(a.scopes, scopeInfo{parent: parent})
	return len(a.scopes) - 1
}

// addRef records a table reference; CTE names are not tables.
func (a *analyzer) addRef(rv *pg_query.RangeVar, sc int, acc Access) int {
	if rv == nil || rv.Relname == "" {
		return -1
	}
	if rv.Schemaname == "" && a.ctes[rv.Relname] {
		return -1
	}
	ref := TableRef{Schema: rv.Schemaname, Name: rv.Relname, Access: acc, Scope: sc}
	if rv.Alias != nil {
		ref.Alias = rv.Alias.Aliasname
	}
	if rv.Schemaname == "pg_temp" || strings.HasPrefix(rv.Schemaname, "pg_temp_") || rv.Relpersistence == "t" {
		a.mustPrimary("temporary table " + ref.QualifiedName())
	}
	if rv.Schemaname == "pg_catalog" || rv.Schemaname == "information_schema" || strings.HasPrefix(rv.Relname, "pg_") {
		a.noCache = true // system catalogs and statistics views change under us
	}
	a.st.Tables = append(a.st.Tables, ref)
	i := len(a.st.Tables) - 1
	if sc >= 0 {
		a.scopes[sc].refs = append(a.scopes[sc].refs, i)
	}
	return i
}

// stmt analyses a statement node that appears nested (CTE body, subquery,
// EXPLAIN/PREPARE target) or at top level.
func (a *analyzer) stmt(n *pg_query.Node, parent int) {
	if n == nil {
		return
	}
	switch x := n.Node.(type) {
	case *pg_query.Node_SelectStmt:
		a.selectStmt(x.SelectStmt, parent)
	case *pg_query.Node_InsertStmt:
		a.insertStmt(x.InsertStmt, parent)
	case *pg_query.Node_UpdateStmt:
		a.updateStmt(x.UpdateStmt, parent)
	case *pg_query.Node_DeleteStmt:
		a.deleteStmt(x.DeleteStmt, parent)
	case *pg_query.Node_MergeStmt:
		a.mergeStmt(x.MergeStmt, parent)
	default:
		a.walk(n.ProtoReflect(), parent)
	}
}

func (a *analyzer) withClause(w *pg_query.WithClause, parent int) {
	if w == nil {
		return
	}
	if a.ctes == nil {
		a.ctes = map[string]bool{}
	}
	for _, c := range w.Ctes {
		cte := c.GetCommonTableExpr()
		if cte == nil {
			continue
		}
		a.ctes[cte.Ctename] = true
	}
	for _, c := range w.Ctes {
		cte := c.GetCommonTableExpr()
		if cte == nil || cte.Ctequery == nil {
			continue
		}
		switch cte.Ctequery.Node.(type) {
		case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt:
			a.setKind(KindWrite)
			a.mustPrimary("writable CTE " + strconv.Quote(cte.Ctename))
		}
		a.stmt(cte.Ctequery, parent)
	}
}

func (a *analyzer) selectStmt(s *pg_query.SelectStmt, parent int) int {
	if s == nil {
		return -1
	}
	a.withClause(s.WithClause, parent)
	if s.Op != pg_query.SetOperation_SETOP_NONE && s.Op != pg_query.SetOperation_SET_OPERATION_UNDEFINED {
		for _, b := range []*pg_query.SelectStmt{s.Larg, s.Rarg} {
			first := len(a.scopes)
			a.selectStmt(b, parent)
			if s == a.topSelect && first < len(a.scopes) && b.Op == pg_query.SetOperation_SETOP_NONE {
				a.scopes[first].branch = true
			} else if s == a.topSelect && b.Op != pg_query.SetOperation_SETOP_NONE {
				a.topSelect = b // nested set operations of the top level
			}
		}
		for _, n := range s.SortClause {
			a.walkNode(n, parent)
		}
		a.walkNode(s.LimitCount, parent)
		a.walkNode(s.LimitOffset, parent)
		a.locking(s.LockingClause)
		return -1
	}
	sc := a.newScope(parent)
	if s.IntoClause != nil {
		a.setKind(KindWrite)
		a.mustPrimary("SELECT INTO creates a table")
		a.addRef(s.IntoClause.Rel, sc, AccessWrite)
		if s.IntoClause.Rel.GetRelpersistence() == "t" && s.IntoClause.OnCommit != pg_query.OnCommitAction_ONCOMMIT_DROP {
			a.st.TempKept = true
		}
	}
	var conds, eqOnly []*pg_query.Node
	var usingEqs [][2]colRef
	for _, f := range s.FromClause {
		a.fromItem(f, sc, true, &conds, &eqOnly, &usingEqs)
	}
	if s.WhereClause != nil {
		conds = append(conds, s.WhereClause)
	}
	for _, list := range [][]*pg_query.Node{s.TargetList, s.GroupClause, s.WindowClause, s.SortClause, s.DistinctClause, s.ValuesLists} {
		for _, n := range list {
			a.walkNode(n, sc)
		}
	}
	a.walkNode(s.WhereClause, sc)
	a.walkNode(s.HavingClause, sc)
	a.walkNode(s.LimitCount, sc)
	a.walkNode(s.LimitOffset, sc)
	a.locking(s.LockingClause)
	a.scopes[sc].alts = a.predicate(conds, eqOnly, usingEqs, sc)
	return sc
}

var lockNames = map[pg_query.LockClauseStrength]string{
	pg_query.LockClauseStrength_LCS_FORKEYSHARE:    "SELECT ... FOR KEY SHARE",
	pg_query.LockClauseStrength_LCS_FORSHARE:       "SELECT ... FOR SHARE",
	pg_query.LockClauseStrength_LCS_FORNOKEYUPDATE: "SELECT ... FOR NO KEY UPDATE",
	pg_query.LockClauseStrength_LCS_FORUPDATE:      "SELECT ... FOR UPDATE",
}

func (a *analyzer) locking(lcs []*pg_query.Node) {
	for _, n := range lcs {
		if lc := n.GetLockingClause(); lc != nil {
			name := lockNames[lc.Strength]
			if name == "" {
				name = "SELECT ... FOR UPDATE/SHARE"
			}
			a.mustPrimary(name + " locks rows")
		}
	}
}

// fromItem adds the tables of one FROM item to scope sc. inner is false
// below the nullable side of an outer join: there only column = column
// equalities are kept (they still prove co-location), never constants.
func (a *analyzer) fromItem(n *pg_query.Node, sc int, inner bool, conds, eqOnly *[]*pg_query.Node, usingEqs *[][2]colRef) {
	if n == nil {
		return
	}
	switch x := n.Node.(type) {
	case *pg_query.Node_RangeVar:
		a.addRef(x.RangeVar, sc, AccessRead)
	case *pg_query.Node_JoinExpr:
		j := x.JoinExpr
		isInner := inner && j.Jointype == pg_query.JoinType_JOIN_INNER
		a.fromItem(j.Larg, sc, inner && (j.Jointype == pg_query.JoinType_JOIN_INNER || j.Jointype == pg_query.JoinType_JOIN_LEFT), conds, eqOnly, usingEqs)
		a.fromItem(j.Rarg, sc, inner && (j.Jointype == pg_query.JoinType_JOIN_INNER || j.Jointype == pg_query.JoinType_JOIN_RIGHT), conds, eqOnly, usingEqs)
		if j.Quals != nil {
			if isInner {
				*conds = append(*conds, j.Quals)
			} else {
				*eqOnly = append(*eqOnly, j.Quals)
			}
			a.walkNode(j.Quals, sc)
		}
		if len(j.UsingClause) > 0 {
			l, r := j.Larg.GetRangeVar(), j.Rarg.GetRangeVar()
			if l != nil && r != nil {
				lr, rr := a.findRef(sc, l), a.findRef(sc, r)
				if lr >= 0 && rr >= 0 {
					for _, u := range j.UsingClause {
						col := u.GetString_().GetSval()
						*usingEqs = append(*usingEqs, [2]colRef{{ref: lr, scope: sc, col: col}, {ref: rr, scope: sc, col: col}})
					}
				}
			}
		}
	case *pg_query.Node_RangeSubselect:
		a.stmt(x.RangeSubselect.Subquery, sc)
	default:
		a.walk(n.ProtoReflect(), sc)
	}
}

// findRef finds the reference added for rv in scope sc.
func (a *analyzer) findRef(sc int, rv *pg_query.RangeVar) int {
	for _, i := range a.scopes[sc].refs {
		t := a.st.Tables[i]
		if t.Name == rv.Relname && t.Schema == rv.Schemaname && (rv.Alias == nil || rv.Alias.Aliasname == t.Alias) {
			return i
		}
	}
	return -1
}

func (a *analyzer) insertStmt(s *pg_query.InsertStmt, parent int) {
	a.withClause(s.WithClause, parent)
	sc := a.newScope(parent)
	target := a.addRef(s.Relation, sc, AccessWrite)
	var cols []string
	for _, c := range s.Cols {
		cols = append(cols, c.GetResTarget().GetName())
	}
	if sel := s.SelectStmt.GetSelectStmt(); sel != nil && len(sel.ValuesLists) > 0 && len(sel.FromClause) == 0 && sel.WithClause == nil {
		var alts []conj
		for _, row := range sel.ValuesLists {
			var c conj
			for i, item := range row.GetList().GetItems() {
				if i >= len(cols) {
					break
				}
				if v, ok := keyValue(item); ok && target >= 0 {
					c.vals = append(c.vals, atom{c: colRef{ref: target, scope: sc, col: cols[i]}, v: v})
				}
				a.walkNode(item, sc)
			}
			alts = append(alts, c)
		}
		if target < 0 || len(alts) > maxAlternatives {
			alts = nil
		}
		a.scopes[sc].alts = alts
	} else if s.SelectStmt != nil {
		a.stmt(s.SelectStmt, sc)
	}
	if oc := s.OnConflictClause; oc != nil {
		for _, t := range oc.TargetList {
			a.st.UpdatesKeys = appendUnique(a.st.UpdatesKeys, t.GetResTarget().GetName())
			a.walkNode(t, sc)
		}
		a.walkNode(oc.WhereClause, sc)
	}
	for _, n := range s.ReturningList {
		a.walkNode(n, sc)
	}
}

func (a *analyzer) updateStmt(s *pg_query.UpdateStmt, parent int) {
	a.withClause(s.WithClause, parent)
	sc := a.newScope(parent)
	a.addRef(s.Relation, sc, AccessWrite)
	var conds, eqOnly []*pg_query.Node
	var usingEqs [][2]colRef
	for _, f := range s.FromClause {
		a.fromItem(f, sc, true, &conds, &eqOnly, &usingEqs)
	}
	if s.WhereClause != nil {
		conds = append(conds, s.WhereClause)
	}
	for _, t := range s.TargetList {
		if rt := t.GetResTarget(); rt != nil {
			a.st.UpdatesKeys = appendUnique(a.st.UpdatesKeys, rt.Name)
		}
		a.walkNode(t, sc)
	}
	a.walkNode(s.WhereClause, sc)
	for _, n := range s.ReturningList {
		a.walkNode(n, sc)
	}
	a.scopes[sc].alts = a.predicate(conds, eqOnly, usingEqs, sc)
}

func (a *analyzer) deleteStmt(s *pg_query.DeleteStmt, parent int) {
	a.withClause(s.WithClause, parent)
	sc := a.newScope(parent)
	a.addRef(s.Relation, sc, AccessWrite)
	var conds, eqOnly []*pg_query.Node
	var usingEqs [][2]colRef
	for _, f := range s.UsingClause {
		a.fromItem(f, sc, true, &conds, &eqOnly, &usingEqs)
	}
	if s.WhereClause != nil {
		conds = append(conds, s.WhereClause)
	}
	a.walkNode(s.WhereClause, sc)
	for _, n := range s.ReturningList {
		a.walkNode(n, sc)
	}
	a.scopes[sc].alts = a.predicate(conds, eqOnly, usingEqs, sc)
}

func (a *analyzer) mergeStmt(s *pg_query.MergeStmt, parent int) {
	a.withClause(s.WithClause, parent)
	sc := a.newScope(parent)
	a.addRef(s.Relation, sc, AccessWrite)
	var conds, eqOnly []*pg_query.Node
	var usingEqs [][2]colRef
	a.fromItem(s.SourceRelation, sc, false, &conds, &eqOnly, &usingEqs)
	// The join condition selects matched rows, but WHEN NOT MATCHED
	// inserts rows keyed by the source: keep only column equalities.
	if s.JoinCondition != nil {
		eqOnly = append(eqOnly, s.JoinCondition)
	}
	a.walkNode(s.JoinCondition, sc)
	for _, n := range s.MergeWhenClauses {
		a.walkNode(n, sc)
	}
	for _, n := range s.ReturningList {
		a.walkNode(n, sc)
	}
	a.scopes[sc].alts = a.predicate(conds, eqOnly, usingEqs, sc)
}

func appendUnique(l []string, s string) []string {
	for _, x := range l {
		if x == s {
			return l
		}
	}
	return append(l, s)
}

// walkNode walks an expression (or any node) for function calls,
// sub-queries and table references.
func (a *analyzer) walkNode(n *pg_query.Node, sc int) {
	if n == nil {
		return
	}
	a.walk(n.ProtoReflect(), sc)
}

// walk is a generic traversal of any parse-tree message. Statements found
// inside open their own scope; RangeVars become table references; function
// calls are classified.
func (a *analyzer) walk(m protoreflect.Message, sc int) {
	if !m.IsValid() {
		return
	}
	switch x := m.Interface().(type) {
	case *pg_query.SelectStmt:
		a.selectStmt(x, sc)
		return
	case *pg_query.InsertStmt:
		a.insertStmt(x, sc)
		return
	case *pg_query.UpdateStmt:
		a.updateStmt(x, sc)
		return
	case *pg_query.DeleteStmt:
		a.deleteStmt(x, sc)
		return
	case *pg_query.MergeStmt:
		a.mergeStmt(x, sc)
		return
	case *pg_query.RangeVar:
		acc := AccessRead
		if a.kind == KindDDL {
			acc = AccessDDL
		}
		a.addRef(x, sc, acc)
		return
	case *pg_query.FuncCall:
		a.funcCall(x)
	case *pg_query.SQLValueFunction:
		a.noCache = true // CURRENT_TIMESTAMP, CURRENT_USER, ...
	case *pg_query.TypeName:
		return // type names are not functions or tables
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				a.walk(l.Get(i).Message(), sc)
			}
		} else if !fd.IsMap() {
			a.walk(v.Message(), sc)
		}
		return true
	})
}

func funcName(names []*pg_query.Node) (schema, name string) {
	switch len(names) {
	case 0:
		return "", ""
	case 1:
		return "", names[0].GetString_().GetSval()
	default:
		return names[len(names)-2].GetString_().GetSval(), names[len(names)-1].GetString_().GetSval()
	}
}

func (a *analyzer) funcCall(f *pg_query.FuncCall) {
	schema, name := funcName(f.Funcname)
	if name == "" {
		return
	}
	switch cls, why := classifyFunction(schema, name); cls {
	case funcNonCacheable:
		a.noCache = true
	case funcPrimary:
		a.mustPrimary(why)
		if sessionLockFunctions[name] && (schema == "" || schema == "pg_catalog") {
			a.st.SessionLock = true
		}
	case funcUser:
		// cacheability decided by Route through the FunctionCatalog
		ref := FuncRef{Schema: schema, Name: name}
		for _, r := range a.st.Functions {
			if r == ref {
				return
			}
		}
		a.st.Functions = append(a.st.Functions, ref)
	}
}

// predicate turns AND-ed conditions into OR-alternatives of equalities.
func (a *analyzer) predicate(conds, eqOnly []*pg_query.Node, usingEqs [][2]colRef, sc int) []conj {
	alts := []conj{{}}
	for _, c := range conds {
		alts = cross(alts, a.alts(c, sc))
		if alts == nil {
			return nil
		}
	}
	var eqs [][2]colRef
	eqs = append(eqs, usingEqs...)
	for _, c := range eqOnly {
		eqs = append(eqs, a.topEqs(c, sc)...)
	}
	if len(eqs) > 0 {
		for i := range alts {
			alts[i].eqs = append(append([][2]colRef(nil), alts[i].eqs...), eqs...)
		}
	}
	if len(alts) == 1 && len(alts[0].vals) == 0 && len(alts[0].eqs) == 0 {
		return nil
	}
	return alts
}

// topEqs returns the column = column equalities AND-ed at the top of n.
func (a *analyzer) topEqs(n *pg_query.Node, sc int) [][2]colRef {
	if b := n.GetBoolExpr(); b != nil {
		if b.Boolop != pg_query.BoolExprType_AND_EXPR {
			return nil
		}
		var out [][2]colRef
		for _, arg := range b.Args {
			out = append(out, a.topEqs(arg, sc)...)
		}
		return out
	}
	if e := n.GetAExpr(); e != nil && e.Kind == pg_query.A_Expr_Kind_AEXPR_OP && opName(e.Name) == "=" {
		l, lok := a.colRef(e.Lexpr, sc)
		r, rok := a.colRef(e.Rexpr, sc)
		if lok && rok {
			return [][2]colRef{{l, r}}
		}
	}
	return nil
}

// cross ANDs two alternative lists; nil on overflow (unknown).
func cross(x, y []conj) []conj {
	if len(x)*len(y) > maxAlternatives {
		return nil
	}
	out := make([]conj, 0, len(x)*len(y))
	for _, p := range x {
		for _, q := range y {
			var c conj
			c.vals = append(append(c.vals, p.vals...), q.vals...)
			c.eqs = append(append(c.eqs, p.eqs...), q.eqs...)
			out = append(out, c)
		}
	}
	return out
}

func opName(names []*pg_query.Node) string {
	if len(names) == 0 {
		return ""
	}
	return names[len(names)-1].GetString_().GetSval()
}

// alts converts one boolean expression into alternatives. Anything it does
// not understand is "unknown": a single empty alternative.
func (a *analyzer) alts(n *pg_query.Node, sc int) []conj {
	switch x := n.Node.(type) {
	case *pg_query.Node_BoolExpr:
		switch x.BoolExpr.Boolop {
		case pg_query.BoolExprType_AND_EXPR:
			res := []conj{{}}
			for _, arg := range x.BoolExpr.Args {
				res = cross(res, a.alts(arg, sc))
				if res == nil {
					return unknownAlts
				}
			}
			return res
		case pg_query.BoolExprType_OR_EXPR:
			var res []conj
			for _, arg := range x.BoolExpr.Args {
				res = append(res, a.alts(arg, sc)...)
				if len(res) > maxAlternatives {
					return unknownAlts
				}
			}
			return res
		}
	case *pg_query.Node_AExpr:
		e := x.AExpr
		if opName(e.Name) != "=" {
			return unknownAlts
		}
		switch e.Kind {
		case pg_query.A_Expr_Kind_AEXPR_OP:
			if c, ok := a.equality(e.Lexpr, e.Rexpr, sc); ok {
				return []conj{c}
			}
		case pg_query.A_Expr_Kind_AEXPR_IN:
			return a.inList(e.Lexpr, e.Rexpr.GetList().GetItems(), sc)
		case pg_query.A_Expr_Kind_AEXPR_OP_ANY:
			if arr := e.Rexpr.GetAArrayExpr(); arr != nil {
				return a.inList(e.Lexpr, arr.Elements, sc)
			}
		}
	}
	return unknownAlts
}

func (a *analyzer) inList(l *pg_query.Node, items []*pg_query.Node, sc int) []conj {
	if len(items) == 0 || len(items) > maxAlternatives {
		return unknownAlts
	}
	out := make([]conj, 0, len(items))
	for _, it := range items {
		c, ok := a.equality(l, it, sc)
		if !ok {
			return unknownAlts
		}
		out = append(out, c)
	}
	return out
}

// equality handles "l = r": column = value, value = column, column =
// column, and row constructors compared item by item.
func (a *analyzer) equality(l, r *pg_query.Node, sc int) (conj, bool) {
	var c conj
	if lr, rr := l.GetRowExpr(), r.GetRowExpr(); lr != nil && rr != nil {
		if len(lr.Args) != len(rr.Args) {
			return c, false
		}
		for i := range lr.Args {
			ci, ok := a.equality(lr.Args[i], rr.Args[i], sc)
			if ok {
				c.vals = append(c.vals, ci.vals...)
				c.eqs = append(c.eqs, ci.eqs...)
			}
		}
		return c, len(c.vals)+len(c.eqs) > 0
	}
	lc, lok := a.colRef(l, sc)
	rc, rok := a.colRef(r, sc)
	switch {
	case lok && rok:
		c.eqs = append(c.eqs, [2]colRef{lc, rc})
		return c, true
	case lok:
		if v, ok := keyValue(r); ok {
			c.vals = append(c.vals, atom{c: lc, v: v})
			return c, true
		}
	case rok:
		if v, ok := keyValue(l); ok {
			c.vals = append(c.vals, atom{c: rc, v: v})
			return c, true
		}
	}
	return c, false
}

// colRef resolves a column reference against scope sc and its parents.
func (a *analyzer) colRef(n *pg_query.Node, sc int) (colRef, bool) {
	cr := n.GetColumnRef()
	if cr == nil || sc < 0 {
		return colRef{}, false
	}
	var parts []string
	for _, f := range cr.Fields {
		s := f.GetString_()
		if s == nil {
			return colRef{}, false // A_Star
		}
		parts = append(parts, s.Sval)
	}
	switch len(parts) {
	case 1:
		refs := a.scopes[sc].refs
		switch len(refs) {
		case 0:
			return colRef{}, false
		case 1:
			return colRef{ref: refs[0], scope: sc, col: parts[0]}, true
		}
		return colRef{ref: -1, scope: sc, col: parts[0]}, true
	case 2, 3:
		schema, table, col := "", parts[len(parts)-2], parts[len(parts)-1]
		if len(parts) == 3 {
			schema = parts[0]
		}
		for s := sc; s >= 0; s = a.scopes[s].parent {
			for _, i := range a.scopes[s].refs {
				t := a.st.Tables[i]
				if schema == "" && t.Alias == table || t.Alias == "" && t.Name == table && (schema == "" || schema == t.Schema) {
					return colRef{ref: i, scope: s, col: col}, true
				}
			}
		}
	}
	return colRef{}, false
}

// keyValue extracts a literal or parameter usable as a key value: a
// constant, $n, or either under a type cast ('42'::bigint, $1::uuid).
func keyValue(n *pg_query.Node) (KeyValue, bool) {
	switch x := n.GetNode().(type) {
	case *pg_query.Node_AConst:
		c := x.AConst
		if c.Isnull {
			return KeyValue{}, false
		}
		switch v := c.Val.(type) {
		case *pg_query.A_Const_Ival:
			return KeyValue{Text: strconv.FormatInt(int64(v.Ival.GetIval()), 10)}, true
		case *pg_query.A_Const_Sval:
			return KeyValue{Text: v.Sval.GetSval()}, true
		case *pg_query.A_Const_Fval:
			return KeyValue{Text: v.Fval.GetFval()}, true
		}
	case *pg_query.Node_ParamRef:
		if x.ParamRef.Number > 0 {
			return KeyValue{Param: int(x.ParamRef.Number)}, true
		}
	case *pg_query.Node_TypeCast:
		return keyValue(x.TypeCast.Arg)
	}
	return KeyValue{}, false
}
