package router

import (
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// classify parses and analyses sql without the cache.
func classify(sql string) (*Statement, error) {
	st := &Statement{SQL: sql}
	if strings.IndexByte(sql, 0) >= 0 {
		st.Kind = KindUnknown
		st.MustPrimary = true
		st.PrimaryReason = "invalid SQL text"
		st.ParseError = errorf(ErrInvalidSQL, "SQL text contains a NUL byte")
		return st, st.ParseError
	}
	st.Hints, st.HintError = scanHints(sql)

	tree, err := pg_query.Parse(sql)
	if err != nil {
		st.Kind = KindUnknown
		st.MustPrimary = true
		st.PrimaryReason = "unparseable statement"
		st.ParseError = err
		return st, nil
	}
	st.NumStatements = len(tree.Stmts)
	if len(tree.Stmts) == 0 {
		st.Kind = KindUtility // empty query: EmptyQueryResponse, any backend
		st.Cacheable = false
		return st, nil
	}
	a := &analyzer{sql: sql, st: st}
	cacheable := true
	overall := KindUnknown
	allTx := true
	hasWrite := false
	for i, raw := range tree.Stmts {
		a.kind, a.command, a.primary, a.noCache, a.broadcast, a.explain = KindUnknown, "", "", false, false, false
		a.top(raw, stmtText(sql, raw))
		if i == 0 {
			st.Command = a.command
		}
		if a.kind != KindTxControl {
			allTx = false
			if overall == KindUnknown || a.kind.strength() > overall.strength() {
				overall = a.kind
			}
		}
		if a.primary != "" && !st.MustPrimary {
			st.MustPrimary = true
			st.PrimaryReason = a.primary
		}
		if a.noCache || a.kind != KindRead {
			cacheable = false
		}
		if a.broadcast {
			st.broadcast = true
		}
		if a.kind == KindWrite && !a.broadcast {
			hasWrite = true
		}
		if a.explain {
			st.explain = true
		}
	}
	if allTx {
		overall = KindTxControl
	}
	if len(tree.Stmts) > 1 {
		st.Tx = nil // transaction control inside a multi-statement string is forwarded as is
		for _, raw := range tree.Stmts {
			if _, ok := raw.Stmt.GetNode().(*pg_query.Node_TransactionStmt); ok {
				st.hasTxControl = true
			}
		}
		if st.hasTxControl && !st.MustPrimary {
			st.MustPrimary = true
			st.PrimaryReason = "transaction control in a multi-statement string"
		}
	}
	if len(a.copyIns) == 1 && len(tree.Stmts) == 1 {
		st.CopyIn = &a.copyIns[0]
	}
	if len(a.copyOuts) == 1 && len(tree.Stmts) == 1 {
		st.CopyOut = &a.copyOuts[0]
	}
	switch {
	case len(a.listens) == 1 && len(tree.Stmts) == 1:
		st.Listen = &a.listens[0]
	case len(a.listens) > 0:
		st.listenInMulti = true
	}
	st.Kind = overall
	switch st.Kind {
	case KindWrite, KindDDL:
		if !st.MustPrimary {
			st.MustPrimary = true
			st.PrimaryReason = st.Kind.String()
		}
	}
	st.Cacheable = cacheable && !st.Hints.NoCache && st.Kind == KindRead && len(tree.Stmts) == 1
	st.mixedBroadcast = st.broadcast && hasWrite
	setScopes(st, a.scopes)
	if len(tree.Stmts) == 1 && st.Kind == KindRead && !st.explain {
		if sel := tree.Stmts[0].Stmt.GetSelectStmt(); sel != nil || st.CopyOut != nil && st.CopyOut.Query {
			st.scatter = &lazyScatter{sql: sql}
		}
	}
	return st, nil
}

// stmtText returns the text of one statement of a multi-statement string.
func stmtText(sql string, raw *pg_query.RawStmt) string {
	start := int(raw.StmtLocation)
	end := len(sql)
	if raw.StmtLen > 0 {
		end = start + int(raw.StmtLen)
	}
	if start < 0 || start > len(sql) || end > len(sql) || end < start {
		return strings.TrimSpace(sql)
	}
	return strings.TrimRight(strings.TrimSpace(sql[start:end]), "; \t\r\n")
}

// top analyses one top-level statement.
func (a *analyzer) top(raw *pg_query.RawStmt, text string) {
	n := raw.Stmt
	switch x := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		a.kind, a.command = KindRead, "SELECT"
		a.topSelect = x.SelectStmt
		a.selectStmt(x.SelectStmt, -1)
	case *pg_query.Node_InsertStmt:
		a.kind, a.command = KindWrite, "INSERT"
		a.insertStmt(x.InsertStmt, -1)
	case *pg_query.Node_UpdateStmt:
		a.kind, a.command = KindWrite, "UPDATE"
		a.updateStmt(x.UpdateStmt, -1)
	case *pg_query.Node_DeleteStmt:
		a.kind, a.command = KindWrite, "DELETE"
		a.deleteStmt(x.DeleteStmt, -1)
	case *pg_query.Node_MergeStmt:
		a.kind, a.command = KindWrite, "MERGE"
		a.mergeStmt(x.MergeStmt, -1)
	case *pg_query.Node_TransactionStmt:
		a.kind = KindTxControl
		a.txStmt(x.TransactionStmt)
	case *pg_query.Node_VariableSetStmt:
		a.setStmt(x.VariableSetStmt, text)
	case *pg_query.Node_VariableShowStmt:
		a.kind, a.command = KindRead, "SHOW"
		a.noCache = true
	case *pg_query.Node_DiscardStmt:
		a.kind, a.command = KindSession, "DISCARD"
		op := map[pg_query.DiscardMode]SetOp{
			pg_query.DiscardMode_DISCARD_ALL: SetDiscardAll, pg_query.DiscardMode_DISCARD_PLANS: SetDiscardPlans,
			pg_query.DiscardMode_DISCARD_SEQUENCES: SetDiscardSequences, pg_query.DiscardMode_DISCARD_TEMP: SetDiscardTemp,
		}[x.DiscardStmt.Target]
		a.st.Sets = append(a.st.Sets, SetInfo{Op: op, SQL: text})
	case *pg_query.Node_ExplainStmt:
		a.explainStmt(x.ExplainStmt)
	case *pg_query.Node_PrepareStmt:
		a.kind, a.command = KindUtility, "PREPARE"
		p := x.PrepareStmt
		a.st.PrepareName = p.Name
		inner := &Statement{SQL: text}
		sub := &analyzer{sql: a.sql, st: inner}
		sub.top(&pg_query.RawStmt{Stmt: p.Query}, text)
		finishSub(sub, inner)
		a.st.Prepared = inner
	case *pg_query.Node_ExecuteStmt:
		a.kind, a.command = KindUtility, "EXECUTE"
		a.st.ExecuteName = x.ExecuteStmt.Name
		for _, p := range x.ExecuteStmt.Params {
			v, ok := keyValue(p)
			if !ok || v.Param != 0 {
				v = KeyValue{Param: -1}
			}
			a.st.ExecuteArgs = append(a.st.ExecuteArgs, v)
			a.walkNode(p, -1)
		}
	case *pg_query.Node_DeallocateStmt:
		a.kind, a.command = KindUtility, "DEALLOCATE"
		a.st.DeallocName, a.st.DeallocAll = x.DeallocateStmt.Name, x.DeallocateStmt.Isall || x.DeallocateStmt.Name == ""
	case *pg_query.Node_ListenStmt:
		a.kind, a.command = KindUtility, "LISTEN"
		a.mustPrimary("LISTEN is bound to a session on the primary")
		a.listens = append(a.listens, ListenInfo{Op: ListenAdd, Channel: x.ListenStmt.Conditionname})
	case *pg_query.Node_UnlistenStmt:
		a.kind, a.command = KindUtility, "UNLISTEN"
		a.mustPrimary("UNLISTEN is bound to a session on the primary")
		li := ListenInfo{Op: ListenRemove, Channel: x.UnlistenStmt.Conditionname}
		if li.Channel == "" {
			li.Op = ListenRemoveAll
		}
		a.listens = append(a.listens, li)
	case *pg_query.Node_NotifyStmt:
		a.kind, a.command = KindWrite, "NOTIFY"
		a.mustPrimary("NOTIFY cannot run on a standby")
	case *pg_query.Node_LockStmt:
		a.kind, a.command = KindWrite, "LOCK"
		a.mustPrimary("LOCK TABLE")
		for _, r := range x.LockStmt.Relations {
			a.addRef(r.GetRangeVar(), a.newScope(-1), AccessWrite)
		}
	case *pg_query.Node_CallStmt:
		a.kind, a.command = KindWrite, "CALL"
		a.mustPrimary("CALL runs a procedure")
		a.walkNode(n, -1)
	case *pg_query.Node_DoStmt:
		a.kind, a.command = KindWrite, "DO"
		a.mustPrimary("DO runs an anonymous code block")
	case *pg_query.Node_CopyStmt:
		a.copyStmt(x.CopyStmt)
	case *pg_query.Node_TruncateStmt:
		a.kind, a.command = KindWrite, "TRUNCATE"
		a.mustPrimary("TRUNCATE")
		a.broadcast = true
		for _, r := range x.TruncateStmt.Relations {
			a.addRef(r.GetRangeVar(), a.newScope(-1), AccessWrite)
		}
	case *pg_query.Node_VacuumStmt:
		a.kind, a.command = KindUtility, "VACUUM"
		if !x.VacuumStmt.IsVacuumcmd {
			a.command = "ANALYZE"
		}
		a.mustPrimary(a.command + " maintains tables on the primary")
		a.broadcast = true
		a.walkNode(n, a.newScope(-1))
	case *pg_query.Node_CheckPointStmt:
		a.kind, a.command = KindUtility, "CHECKPOINT"
		a.mustPrimary("CHECKPOINT")
		a.broadcast = true
	case *pg_query.Node_DeclareCursorStmt:
		a.kind, a.command = KindRead, "DECLARE CURSOR"
		a.noCache = true
		a.st.HoldCursor = x.DeclareCursorStmt.Options&cursorOptHold != 0
		if a.st.HoldCursor {
			a.mustPrimary("a cursor WITH HOLD outlives its transaction on the backend that declared it")
		}
		a.stmt(x.DeclareCursorStmt.Query, -1)
	case *pg_query.Node_FetchStmt:
		a.kind, a.command = KindUtility, "FETCH"
		if x.FetchStmt.Ismove {
			a.command = "MOVE"
		}
	case *pg_query.Node_ClosePortalStmt:
		a.kind, a.command = KindUtility, "CLOSE"
	case *pg_query.Node_ConstraintsSetStmt:
		a.kind, a.command = KindUtility, "SET CONSTRAINTS"
	case *pg_query.Node_LoadStmt:
		a.kind, a.command = KindUtility, "LOAD"
		a.mustPrimary("LOAD changes session state")
	case *pg_query.Node_CreateStmt:
		a.command = "CREATE TABLE"
		if x.CreateStmt.Relation.GetRelpersistence() == "t" {
			a.kind = KindUtility
			a.mustPrimary("temporary table is bound to a session")
			a.st.CreatesTemp = append(a.st.CreatesTemp, x.CreateStmt.Relation.GetRelname())
			a.st.TempKept = a.st.TempKept || x.CreateStmt.Oncommit != pg_query.OnCommitAction_ONCOMMIT_DROP
			a.addRef(x.CreateStmt.Relation, a.newScope(-1), AccessDDL)
			return
		}
		a.ddl(n)
	case *pg_query.Node_CreateTableAsStmt:
		a.command = "CREATE TABLE AS"
		if x.CreateTableAsStmt.Objtype == pg_query.ObjectType_OBJECT_MATVIEW {
			a.command = "CREATE MATERIALIZED VIEW"
		}
		if x.CreateTableAsStmt.Into.GetRel().GetRelpersistence() == "t" {
			a.kind = KindUtility
			a.mustPrimary("temporary table is bound to a session")
			a.st.CreatesTemp = append(a.st.CreatesTemp, x.CreateTableAsStmt.Into.GetRel().GetRelname())
			a.st.TempKept = a.st.TempKept || x.CreateTableAsStmt.Into.GetOnCommit() != pg_query.OnCommitAction_ONCOMMIT_DROP
			a.stmt(x.CreateTableAsStmt.Query, -1)
			return
		}
		a.kind = KindDDL
		a.broadcast = true
		a.addRef(x.CreateTableAsStmt.Into.GetRel(), a.newScope(-1), AccessDDL)
		a.stmt(x.CreateTableAsStmt.Query, -1)
	default:
		a.ddl(n)
	}
}

// ddl handles every statement type not listed in top: schema changes are
// KindDDL (broadcast to every shard); anything else is KindUtility and
// runs on the primary of the default shard.
func (a *analyzer) ddl(n *pg_query.Node) {
	inner := n.ProtoReflect().WhichOneof(n.ProtoReflect().Descriptor().Oneofs().Get(0))
	typ := ""
	if inner != nil {
		typ = string(inner.Message().Name())
	}
	if a.command == "" {
		a.command = commandFromType(typ)
	}
	isDDL := false
	for _, p := range []string{"Create", "Alter", "Drop", "Grant", "Rename", "Comment", "SecLabel", "Define",
		"CompositeType", "Index", "View", "Rule", "Reassign", "ImportForeign", "RefreshMatView", "Reindex", "Cluster"} {
		if strings.HasPrefix(typ, p) {
			isDDL = true
			break
		}
	}
	if isDDL {
		a.kind = KindDDL
		a.broadcast = true
	} else {
		a.kind = KindUtility
		a.mustPrimary(a.command + " runs on the primary")
	}
	switch typ {
	case "CreateFunctionStmt", "AlterFunctionStmt", "CreateExtensionStmt", "AlterExtensionStmt",
		"AlterExtensionContentsStmt", "DropOwnedStmt", "CreateSchemaStmt":
		a.st.InvalidatesFunctions = true
	case "DropStmt":
		ds := n.GetDropStmt()
		switch ds.RemoveType {
		case pg_query.ObjectType_OBJECT_FUNCTION, pg_query.ObjectType_OBJECT_PROCEDURE, pg_query.ObjectType_OBJECT_ROUTINE,
			pg_query.ObjectType_OBJECT_SCHEMA, pg_query.ObjectType_OBJECT_EXTENSION, pg_query.ObjectType_OBJECT_AGGREGATE:
			a.st.InvalidatesFunctions = true
		case pg_query.ObjectType_OBJECT_TABLE:
			for _, o := range ds.Objects {
				var parts []string
				for _, it := range o.GetList().GetItems() {
					parts = append(parts, it.GetString_().GetSval())
				}
				if len(parts) == 0 {
					continue
				}
				rv := &pg_query.RangeVar{Relname: parts[len(parts)-1]}
				if len(parts) > 1 {
					rv.Schemaname = parts[len(parts)-2]
				}
				a.addRef(rv, a.newScope(-1), AccessDDL)
			}
		}
	case "RenameStmt", "AlterObjectSchemaStmt", "AlterOwnerStmt":
		a.st.InvalidatesFunctions = true
	}
	a.walkNode(n, a.newScope(-1))
}

// commandFromType turns "CreateFunctionStmt" into "CREATE FUNCTION".
func commandFromType(typ string) string {
	typ = strings.TrimSuffix(typ, "Stmt")
	var b strings.Builder
	for i, r := range typ {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte(' ')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

func (a *analyzer) txStmt(t *pg_query.TransactionStmt) {
	info := &TxInfo{Chain: t.Chain}
	switch t.Kind {
	case pg_query.TransactionStmtKind_TRANS_STMT_BEGIN, pg_query.TransactionStmtKind_TRANS_STMT_START:
		info.Kind, a.command = TxBegin, "BEGIN"
	case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT:
		info.Kind, a.command = TxCommit, "COMMIT"
	case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK:
		info.Kind, a.command = TxRollback, "ROLLBACK"
	case pg_query.TransactionStmtKind_TRANS_STMT_SAVEPOINT:
		info.Kind, a.command, info.Name = TxSavepoint, "SAVEPOINT", t.SavepointName
	case pg_query.TransactionStmtKind_TRANS_STMT_RELEASE:
		info.Kind, a.command, info.Name = TxRelease, "RELEASE", t.SavepointName
	case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:
		info.Kind, a.command, info.Name = TxRollbackTo, "ROLLBACK", t.SavepointName
	case pg_query.TransactionStmtKind_TRANS_STMT_PREPARE:
		info.Kind, a.command, info.Name = TxPrepare, "PREPARE TRANSACTION", t.Gid
	case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED:
		info.Kind, a.command, info.Name = TxCommitPrepared, "COMMIT PREPARED", t.Gid
		a.mustPrimary("COMMIT PREPARED")
	case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
		info.Kind, a.command, info.Name = TxRollbackPrepared, "ROLLBACK PREPARED", t.Gid
		a.mustPrimary("ROLLBACK PREPARED")
	}
	txOptions(info, t.Options)
	if a.st.Tx == nil {
		a.st.Tx = info
	}
}

// txOptions reads transaction_isolation / transaction_read_only /
// transaction_deferrable DefElems.
func txOptions(info *TxInfo, opts []*pg_query.Node) {
	for _, o := range opts {
		d := o.GetDefElem()
		if d == nil {
			continue
		}
		switch d.Defname {
		case "transaction_isolation":
			info.Isolation = d.Arg.GetAConst().GetSval().GetSval()
		case "transaction_read_only":
			if d.Arg.GetAConst().GetIval().GetIval() != 0 {
				info.Access = AccessReadOnly
			} else {
				info.Access = AccessReadWrite
			}
		case "transaction_deferrable":
			info.Deferrable = d.Arg.GetAConst().GetIval().GetIval() != 0
		}
	}
}

func (a *analyzer) setStmt(v *pg_query.VariableSetStmt, text string) {
	a.kind, a.command = KindSession, "SET"
	si := SetInfo{Name: v.Name, Local: v.IsLocal, SQL: text}
	switch v.Kind {
	case pg_query.VariableSetKind_VAR_SET_VALUE:
		si.Op = SetValue
		si.Value = setValue(v.Args)
	case pg_query.VariableSetKind_VAR_SET_DEFAULT:
		si.Op = SetDefault
	case pg_query.VariableSetKind_VAR_SET_CURRENT:
		si.Op = SetFromCurrent
	case pg_query.VariableSetKind_VAR_SET_MULTI:
		if v.Name == "TRANSACTION" {
			a.kind = KindTxControl
			info := &TxInfo{Kind: TxSetTransaction}
			txOptions(info, v.Args)
			if a.st.Tx == nil {
				a.st.Tx = info
			}
			return
		}
		si.Op = SetSessionCharacteristics
		si.Name = strings.ToLower(v.Name)
	case pg_query.VariableSetKind_VAR_RESET:
		a.command = "RESET"
		si.Op = SetReset
	case pg_query.VariableSetKind_VAR_RESET_ALL:
		a.command = "RESET"
		si.Op = SetResetAll
	}
	a.st.Sets = append(a.st.Sets, si)
}

// setValue renders SET arguments as text, list items joined by ", ".
func setValue(args []*pg_query.Node) string {
	var parts []string
	for _, arg := range args {
		if v, ok := keyValue(arg); ok && v.Param == 0 {
			parts = append(parts, v.Text)
			continue
		}
		if c := arg.GetAConst(); c != nil {
			if b := c.GetBoolval(); b != nil {
				parts = append(parts, strconv.FormatBool(b.Boolval))
				continue
			}
		}
		parts = append(parts, "?")
	}
	return strings.Join(parts, ", ")
}

func (a *analyzer) explainStmt(e *pg_query.ExplainStmt) {
	a.command = "EXPLAIN"
	analyze := false
	for _, o := range e.Options {
		d := o.GetDefElem()
		if d == nil || d.Defname != "analyze" {
			continue
		}
		analyze = d.Arg == nil || defBool(d.Arg)
	}
	before := len(a.st.Tables)
	a.kind = KindRead
	inner := KindRead
	switch e.Query.GetNode().(type) {
	case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt:
		inner = KindWrite
	case *pg_query.Node_SelectStmt:
		if e.Query.GetSelectStmt().IntoClause != nil {
			inner = KindWrite
		}
	case *pg_query.Node_CreateTableAsStmt:
		inner = KindDDL
	}
	a.stmt(e.Query, -1)
	if ct := e.Query.GetCreateTableAsStmt(); ct != nil {
		a.stmt(ct.Query, -1)
	}
	a.noCache = true
	a.explain = true
	if analyze {
		if inner != KindRead {
			a.kind = inner
			a.mustPrimary("EXPLAIN ANALYZE executes a write")
		}
		return
	}
	// EXPLAIN without ANALYZE plans but does not execute: a read.
	a.kind = KindRead
	a.primary = ""
	for i := before; i < len(a.st.Tables); i++ {
		a.st.Tables[i].Access = AccessRead
	}
}

func defBool(n *pg_query.Node) bool {
	if c := n.GetAConst(); c != nil {
		switch v := c.Val.(type) {
		case *pg_query.A_Const_Ival:
			return v.Ival.GetIval() != 0
		case *pg_query.A_Const_Boolval:
			return v.Boolval.GetBoolval()
		case *pg_query.A_Const_Sval:
			s := strings.ToLower(v.Sval.GetSval())
			return s == "true" || s == "on" || s == "1" || s == "yes"
		}
	}
	if s := n.GetString_(); s != nil {
		x := strings.ToLower(s.Sval)
		return x == "true" || x == "on" || x == "1" || x == "yes"
	}
	if b := n.GetBoolean(); b != nil {
		return b.Boolval
	}
	return true
}

func (a *analyzer) copyStmt(c *pg_query.CopyStmt) {
	a.command = "COPY"
	a.noCache = true
	sc := a.newScope(-1)
	if c.IsFrom {
		a.kind = KindWrite
		a.mustPrimary("COPY FROM writes")
		if i := a.addRef(c.Relation, sc, AccessWrite); i >= 0 && c.Filename == "" && !c.IsProgram {
			a.copyIns = append(a.copyIns, copyInfo(a.st.Tables[i], c))
		}
		a.walkNode(c.WhereClause, sc)
		return
	}
	a.kind = KindRead
	if c.Relation != nil {
		if i := a.addRef(c.Relation, sc, AccessRead); i >= 0 && c.Query == nil && c.Filename == "" && !c.IsProgram {
			a.copyOuts = append(a.copyOuts, copyInfo(a.st.Tables[i], c))
		}
	}
	if c.Query != nil {
		before := a.kind
		if sel := c.Query.GetSelectStmt(); sel != nil {
			a.topSelect = sel // its UNION ALL branches are top-level ones, as in a plain SELECT
		}
		a.stmt(c.Query, -1)
		switch c.Query.GetNode().(type) {
		case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt:
			a.kind = KindWrite
			a.mustPrimary("COPY (data-modifying statement) TO")
		case *pg_query.Node_SelectStmt:
			a.kind = before
			if c.Filename == "" && !c.IsProgram {
				ci := copyInfo(TableRef{}, c)
				ci.Query = true
				a.copyOuts = append(a.copyOuts, ci)
			}
		default:
			a.kind = before
		}
	}
}

// finishSub completes a sub-analysis (PREPARE's query) into st.
func finishSub(a *analyzer, st *Statement) {
	st.Kind = a.kind
	st.Command = a.command
	st.NumStatements = 1
	if a.primary != "" {
		st.MustPrimary, st.PrimaryReason = true, a.primary
	}
	if (st.Kind == KindWrite || st.Kind == KindDDL) && !st.MustPrimary {
		st.MustPrimary, st.PrimaryReason = true, st.Kind.String()
	}
	st.Cacheable = !a.noCache && st.Kind == KindRead
	st.broadcast = a.broadcast
	st.explain = a.explain
	setScopes(st, a.scopes)
}

// setScopes gives st the analysed scopes and the key candidates they
// resolve to (Statement.Keys), then forgets the scopes' column = value
// atoms: routing reads only their column equalities, so a statement
// instantiated from a shape template shares its template's scopes
// (nothing left in them depends on the literal values).
func setScopes(st *Statement, scopes []scopeInfo) {
	st.scopes = scopes
	st.Keys = resolveKeys(st)
	for i := range scopes {
		for j := range scopes[i].alts {
			// Only where set: scopes without known values share the
			// package-level unknownAlts, which must not be written.
			if scopes[i].alts[j].vals != nil {
				scopes[i].alts[j].vals = nil
			}
		}
	}
}

// resolveKeys projects each scope's alternatives onto its table
// references, propagating values through column = column equalities.
func resolveKeys(st *Statement) []TableKeys {
	var out []TableKeys
	for ri, ref := range st.Tables {
		sc := ref.Scope
		if sc < 0 || sc >= len(st.scopes) || st.scopes[sc].alts == nil {
			continue
		}
		var alts [][]ColumnValue
		any := false
		for _, c := range st.scopes[sc].alts {
			vals := altValues(c, ri, sc)
			if len(vals) > 0 {
				any = true
			}
			alts = append(alts, vals)
		}
		if any {
			out = append(out, TableKeys{Ref: ri, Alternatives: alts})
		}
	}
	return out
}

// matches reports whether column reference c may denote column col of
// table reference ref (in scope sc).
func (c colRef) matches(ref, sc int) bool {
	return c.ref == ref || c.ref < 0 && c.scope == sc
}

// altValues returns column = value pairs of table reference ref in one
// alternative, with values propagated through equalities (bounded
// fixed-point).
func altValues(c conj, ref, sc int) []ColumnValue {
	type known struct {
		c colRef
		v KeyValue
	}
	var ks []known
	for _, at := range c.vals {
		ks = append(ks, known{at.c, at.v})
	}
	lookup := func(x colRef) (KeyValue, bool) {
		for _, k := range ks {
			if k.c.col == x.col && (k.c.ref == x.ref && k.c.ref >= 0 || k.c.ref < 0 && x.ref < 0 && k.c.scope == x.scope ||
				k.c.ref < 0 && x.ref >= 0 && k.c.scope == x.scope || x.ref < 0 && k.c.ref >= 0 && x.scope == k.c.scope) {
				return k.v, true
			}
		}
		return KeyValue{}, false
	}
	for pass := 0; pass <= len(c.eqs); pass++ {
		changed := false
		for _, e := range c.eqs {
			lv, lok := lookup(e[0])
			rv, rok := lookup(e[1])
			switch {
			case lok && !rok:
				ks = append(ks, known{e[1], lv})
				changed = true
			case rok && !lok:
				ks = append(ks, known{e[0], rv})
				changed = true
			}
		}
		if !changed {
			break
		}
	}
	var out []ColumnValue
	for _, k := range ks {
		if !k.c.matches(ref, sc) {
			continue
		}
		dup := false
		for _, o := range out {
			if o.Column == k.c.col {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, ColumnValue{Column: k.c.col, Value: k.v})
		}
	}
	return out
}

// cursorOptHold is PostgreSQL's CURSOR_OPT_HOLD (DECLARE ... WITH HOLD).
const cursorOptHold = 0x0020

// copyInfo reads the options of COPY ... FROM STDIN or TO STDOUT (PostgreSQL's
// defaults for what is not written; values are validated by PostgreSQL).
func copyInfo(t TableRef, c *pg_query.CopyStmt) CopyInfo {
	ci := CopyInfo{Table: t, Format: "text"}
	for _, n := range c.Attlist {
		if s := n.GetString_(); s != nil {
			ci.Columns = append(ci.Columns, s.Sval)
		}
	}
	str := func(d *pg_query.DefElem) string {
		if s := d.Arg.GetString_(); s != nil {
			return s.Sval
		}
		return ""
	}
	var delim, quote, escape, null *string
	for _, o := range c.Options {
		d := o.GetDefElem()
		if d == nil {
			continue
		}
		v := str(d)
		switch d.Defname {
		case "format":
			ci.Format = strings.ToLower(v)
		case "delimiter":
			delim = &v
		case "quote":
			quote = &v
		case "escape":
			escape = &v
		case "null":
			null = &v
		case "header":
			ci.Header = d.Arg == nil || defBool(d.Arg) || strings.EqualFold(v, "match")
		}
	}
	first := func(p *string, def byte) byte {
		if p != nil && len(*p) > 0 {
			return (*p)[0]
		}
		return def
	}
	if ci.Format == "csv" {
		ci.Delimiter, ci.Quote = first(delim, ','), first(quote, '"')
		ci.Escape = first(escape, ci.Quote)
		ci.Null = ""
	} else {
		ci.Delimiter, ci.Null = first(delim, '\t'), `\N`
	}
	if null != nil {
		ci.Null = *null
	}
	return ci
}
