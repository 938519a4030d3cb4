package router

import (
	"errors"
	"hash/maphash"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// maxBindParams is the most parameters a Bind message can carry (its
// count is an int16 read as unsigned by PostgreSQL).
const maxBindParams = 65535

// maxPlanParses bounds the parses deciding one shape's parameters.
const maxPlanParses = 32

// Parameterize returns st's text with its integer constants turned into
// parameters $1..$n and their values, so that a front end can send a
// simple-protocol query as a server-side prepared statement (Parse once,
// then Bind/Execute) with every parameter declared int4 (OID 23) and its
// argument in text format:
//
//	SELECT abalance FROM pgbench_accounts WHERE aid = 12345;
//	→ "SELECT abalance FROM pgbench_accounts WHERE aid = $1;", ["12345"]
//
// PostgreSQL types a canonical integer literal within int32 as int4, so
// operator and function resolution, result types and type modifiers,
// column names, rows, command tags and error SQLSTATEs are those of the
// literal text. Everything else is kept verbatim: comments (and so
// dbproxy hints), white space, string literals (re-quoted exactly as
// written, so texts differing in a string have different parameterized
// texts), other numbers, and a minus sign ("-4711" becomes "-$1" with
// argument "4711"). Integers whose position is syntax rather than a value
// stay inline too: type modifiers (numeric(10,2), varchar(20), bit(3),
// timestamp(3), ...), positional references of ORDER BY / GROUP BY /
// DISTINCT ON and any bare integer item of an ORDER BY or window
// PARTITION BY, every integer of the target list, GROUP BY, HAVING,
// ORDER BY, DISTINCT and WINDOW clauses of a grouped or DISTINCT query
// level (PostgreSQL matches those expressions by equality, which two
// parameters never have), the arguments of DISTINCT aggregates, ON
// CONFLICT inference clauses, and positions the grammar accepts only as
// literals. Which integers become parameters is decided once per
// literal shape (the text with its literals replaced, see shape.go) from
// PostgreSQL's parse tree and cached, so a call costs one scan of the
// text and a map lookup.
//
// ok is false, and the text should be sent as is, unless st is a single
// SELECT (including VALUES and TABLE), INSERT, UPDATE or DELETE statement,
// possibly with WITH, that parsed, has no hint error, is not SELECT INTO,
// is at most MaxCachedSQL bytes long, has no text the literal scanner
// refuses ($ signs, backslashes, E'x' and other prefixed strings, ...),
// and has at least one integer that can become a parameter.
//
// Differences that remain: error positions (the P field of an
// ErrorResponse) refer to the parameterized text; and under a generic
// plan (which PostgreSQL may choose for a named prepared statement after
// five executions) constant subexpressions are not evaluated while
// planning, so an error the literal text raises while planning
// (2147483647 + 1) comes during execution, after the RowDescription,
// with the same SQLSTATE, and one in an expression never executed (1/0
// in a CASE branch not taken) does not occur.
//
// The returned args share memory with st.SQL. Parameterize is safe for
// concurrent use.
func (st *Statement) Parameterize() (text string, args []string, ok bool) {
	if st == nil || st.NumStatements != 1 || st.ParseError != nil || st.HintError != nil || st.explain || len(st.SQL) > MaxCachedSQL {
		return "", nil, false
	}
	switch st.Command {
	case "SELECT", "INSERT", "UPDATE", "DELETE":
	default:
		return "", nil, false
	}
	var p *paramPlan
	lits := st.lits
	if e := st.shape; e != nil {
		// Instantiated from a shape template: the shape and literals
		// are known; the plan is kept with the shape.
		if p = e.param.Load(); p == nil {
			p = paramPlans.get(e.norm, []byte(e.kinds))
			e.param.Store(p)
		}
	} else {
		norm, l, kinds, ok := normalizeLiteralKinds(st.SQL)
		if !ok {
			return "", nil, false
		}
		p, lits = paramPlans.get(norm, kinds), l
	}
	if !p.ok || len(lits) != p.nlits {
		return "", nil, false
	}
	args = make([]string, len(p.args))
	for i, l := range p.args {
		args[i] = lits[l]
	}
	if len(p.parts) == 1 {
		return p.parts[0].text, args, true
	}
	n := p.fixed
	for _, pt := range p.parts {
		if pt.lit >= 0 {
			n += len(lits[pt.lit])
			if pt.str {
				n += 2 + strings.Count(lits[pt.lit], "'")
			}
		}
	}
	var b strings.Builder
	b.Grow(n)
	for _, pt := range p.parts {
		b.WriteString(pt.text)
		if pt.lit < 0 {
			continue
		}
		v := lits[pt.lit]
		if !pt.str {
			b.WriteString(v)
			continue
		}
		b.WriteByte('\'')
		for {
			i := strings.IndexByte(v, '\'')
			if i < 0 {
				break
			}
			b.WriteString(v[:i+1])
			b.WriteByte('\'')
			v = v[i+1:]
		}
		b.WriteString(v)
		b.WriteByte('\'')
	}
	return b.String(), args, true
}

// paramPlan is how texts of one literal shape are parameterized: the
// parameterized text is parts' texts, each followed by its inlined
// literal.
type paramPlan struct {
	ok    bool
	nlits int         // literals of the shape
	parts []paramPart // a single part (lit -1) when no literal is inlined
	args  []int       // the literal index of each parameter $1..$n
	fixed int         // total length of the parts' texts
}

type paramPart struct {
	text string // text up to the next inlined literal, parameters already numbered
	lit  int    // index of the inlined literal after text, -1 for none
	str  bool   // the literal is a string: quote it
}

var notParameterizable = &paramPlan{}

// paramPlanCache holds the plans of the shapes seen, bounded like the
// Classifier's caches (an arbitrary entry is evicted from a full shard).
type paramPlanCache struct {
	seed   maphash.Seed
	perCap int
	shards [cacheShards]paramPlanShard
}

type paramPlanShard struct {
	mu sync.RWMutex
	m  map[string][]paramPlanEntry // by norm text; one entry per literal-kind string
}

type paramPlanEntry struct {
	kinds string
	plan  *paramPlan
}

var paramPlans = newParamPlanCache(DefaultCacheSize)

func newParamPlanCache(size int) *paramPlanCache {
	if size < cacheShards {
		size = cacheShards
	}
	c := &paramPlanCache{seed: maphash.MakeSeed(), perCap: size / cacheShards}
	for i := range c.shards {
		c.shards[i].m = make(map[string][]paramPlanEntry)
	}
	return c
}

// get returns the plan of the shape (norm, kinds), building it on first
// use.
func (c *paramPlanCache) get(norm string, kinds []byte) *paramPlan {
	sh := &c.shards[maphash.String(c.seed, norm)%cacheShards]
	sh.mu.RLock()
	for _, e := range sh.m[norm] {
		if e.kinds == string(kinds) {
			sh.mu.RUnlock()
			return e.plan
		}
	}
	sh.mu.RUnlock()
	p := buildParamPlan(norm, kinds)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	es, found := sh.m[norm]
	for _, e := range es {
		if e.kinds == string(kinds) {
			return e.plan // built concurrently
		}
	}
	if !found && len(sh.m) >= c.perCap {
		for k := range sh.m {
			delete(sh.m, k)
			break
		}
	}
	sh.m[norm] = append(es, paramPlanEntry{kinds: string(kinds), plan: p})
	return p
}

// buildParamPlan decides, for the shape norm (placeholders $1..$n of
// kinds), which integer literals become parameters. Strings always stay
// inline. The text to parse has strings as empty string literals,
// inlined integers as 1 and parameters as $k: a syntax error at a
// parameter (a position only a literal may take, such as varchar(20))
// inlines it and parses again; once the text parses, the parse tree says
// which parameters are syntax or must stay equal to each other, and those
// are inlined too, until a parse confirms every remaining parameter. A
// shape needing more than maxPlanParses parses is not parameterized.
func buildParamPlan(norm string, kinds []byte) (p *paramPlan) {
	defer func() {
		if recover() != nil {
			p = notParameterizable // parser bindings must never crash the proxy
		}
	}()
	segs, ok := splitPlaceholders(norm, len(kinds))
	if !ok {
		return notParameterizable
	}
	inline := make([]bool, len(kinds))
	for i, k := range kinds {
		inline[i] = k != 'i'
	}
	for parses := 0; ; parses++ {
		if parses == maxPlanParses {
			return notParameterizable
		}
		text, offs, nparams := renderParseText(segs, kinds, inline)
		if nparams == 0 || nparams > maxBindParams {
			return notParameterizable
		}
		tree, err := pg_query.Parse(text)
		if err != nil {
			var pe *parser.Error
			if !errors.As(err, &pe) || pe.Cursorpos <= 0 {
				return notParameterizable
			}
			at := byteOffset(text, pe.Cursorpos-1)
			i := indexOf(offs, at)
			if i < 0 {
				return notParameterizable // an error elsewhere: send the text as it is
			}
			inline[i] = true
			continue
		}
		if !parameterizableTree(tree) {
			return notParameterizable
		}
		w := paramWalker{forced: map[int32]bool{}, found: map[int32]paramRefInfo{}}
		w.walk(tree.Stmts[0].Stmt.ProtoReflect(), false)
		if len(w.found) != nparams {
			return notParameterizable // a parameter the text does not show
		}
		changed := false
		k := 0
		for i := range inline {
			if inline[i] {
				continue
			}
			k++
			ref, seen := w.found[int32(offs[i])]
			if !seen || ref.number != int32(k) {
				return notParameterizable
			}
			if ref.inline {
				inline[i] = true
				changed = true
			}
		}
		if !changed {
			break
		}
	}
	return assemblePlan(segs, kinds, inline)
}

// splitPlaceholders cuts norm at its placeholders $1..$n, which must occur
// once each and in order, outside comments and quoted identifiers (the
// only places normalizeLiteralKinds leaves other $ signs in).
func splitPlaceholders(norm string, n int) ([]string, bool) {
	segs := make([]string, 0, n+1)
	start := 0
	for i := 0; i < len(norm); {
		switch ch := norm[i]; {
		case ch == '-' && i+1 < len(norm) && norm[i+1] == '-':
			j := strings.IndexByte(norm[i:], '\n')
			if j < 0 {
				j = len(norm) - i
			}
			i += j
		case ch == '/' && i+1 < len(norm) && norm[i+1] == '*':
			depth, j := 1, i+2
			for j < len(norm) && depth > 0 {
				switch {
				case norm[j] == '/' && j+1 < len(norm) && norm[j+1] == '*':
					depth++
					j += 2
				case norm[j] == '*' && j+1 < len(norm) && norm[j+1] == '/':
					depth--
					j += 2
				default:
					j++
				}
			}
			i = j
		case ch == '"':
			j := i + 1
			for j < len(norm) {
				if norm[j] == '"' {
					if j+1 < len(norm) && norm[j+1] == '"' {
						j += 2
						continue
					}
					break
				}
				j++
			}
			i = j + 1
		case ch == '\'':
			return nil, false // strings were all replaced
		case ch == '$':
			j := i + 1
			for j < len(norm) && norm[j] >= '0' && norm[j] <= '9' {
				j++
			}
			num, err := strconv.Atoi(norm[i+1 : j])
			if err != nil || num != len(segs)+1 || num > n {
				return nil, false
			}
			segs = append(segs, norm[start:i])
			start = j
			i = j
		default:
			i++
		}
	}
	if len(segs) != n {
		return nil, false
	}
	return append(segs, norm[start:]), true
}

// renderParseText joins segs with the placeholders rendered for parsing:
// strings as empty string literals, inlined integers as 1 (the grammar
// sees the token kinds of the real text, and only the parameters'
// positions are examined; 1 passes the grammar's own checks such as
// float(p) needing p >= 1), parameters as $1..$k. offs[i] is the byte
// offset of placeholder i's $ (-1 if inlined); k is the number of
// parameters.
func renderParseText(segs []string, kinds []byte, inline []bool) (text string, offs []int, k int) {
	var b strings.Builder
	offs = make([]int, len(kinds))
	for i, s := range segs {
		b.WriteString(s)
		if i == len(kinds) {
			break
		}
		offs[i] = -1
		switch {
		case kinds[i] == 's':
			b.WriteString("''")
		case inline[i]:
			b.WriteByte('1')
		default:
			k++
			offs[i] = b.Len()
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(k))
		}
	}
	return b.String(), offs, k
}

// byteOffset converts a 0-based character index into text into a byte
// offset (PostgreSQL reports error positions in characters).
func byteOffset(text string, chars int) int {
	off := 0
	for n := 0; n < chars && off < len(text); n++ {
		_, size := utf8.DecodeRuneInString(text[off:])
		off += size
	}
	return off
}

func indexOf(offs []int, at int) int {
	for i, o := range offs {
		if o == at && o >= 0 {
			return i
		}
	}
	return -1
}

// parameterizableTree reports whether tree is one SELECT (not SELECT
// INTO), INSERT, UPDATE or DELETE statement.
func parameterizableTree(tree *pg_query.ParseResult) bool {
	if len(tree.Stmts) != 1 || tree.Stmts[0].Stmt == nil {
		return false
	}
	switch x := tree.Stmts[0].Stmt.Node.(type) {
	case *pg_query.Node_SelectStmt:
		return x.SelectStmt.IntoClause == nil
	case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt:
		return true
	}
	return false
}

type paramRefInfo struct {
	number int32
	inline bool
}

// paramWalker finds the ParamRefs of a parse tree and whether each must
// stay a literal.
type paramWalker struct {
	forced map[int32]bool         // locations of bare items (ORDER BY 1, PARTITION BY 1, ORDER BY -1)
	found  map[int32]paramRefInfo // by location
}

// groupedFields are the SelectStmt fields evaluated after grouping or
// DISTINCT, whose expressions PostgreSQL matches against each other by
// equality (ungrouped-column checks, DISTINCT ON against ORDER BY, ORDER
// BY of a DISTINCT query against the target list).
var groupedFields = map[protoreflect.Name]bool{
	"target_list": true, "group_clause": true, "having_clause": true,
	"sort_clause": true, "distinct_clause": true, "window_clause": true,
}

func (w *paramWalker) walk(m protoreflect.Message, inline bool) {
	if !m.IsValid() {
		return
	}
	grouped := false
	switch x := m.Interface().(type) {
	case *pg_query.ParamRef:
		w.found[x.Location] = paramRefInfo{number: x.Number, inline: inline || w.forced[x.Location]}
		return
	case *pg_query.TypeName:
		inline = true // type modifiers
	case *pg_query.SortBy:
		w.force(x.Node) // ORDER BY 1 is a column position
	case *pg_query.WindowDef:
		for _, n := range x.PartitionClause {
			w.force(n)
		}
	case *pg_query.InferClause:
		inline = true // matched against index expressions and predicates
	case *pg_query.FuncCall:
		if x.AggDistinct {
			inline = true // ORDER BY must match the arguments
		}
	case *pg_query.SelectStmt:
		grouped = len(x.GroupClause) > 0 || len(x.DistinctClause) > 0
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind || fd.IsMap() {
			return true
		}
		in := inline || grouped && groupedFields[fd.Name()]
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				w.walk(l.Get(i).Message(), in)
			}
		} else {
			w.walk(v.Message(), in)
		}
		return true
	})
}

// force marks a bare item: a parameter, possibly under unary + and -
// (the grammar folds -1 into a negative constant, a position too).
func (w *paramWalker) force(n *pg_query.Node) {
	for n != nil {
		if p := n.GetParamRef(); p != nil {
			w.forced[p.Location] = true
			return
		}
		e := n.GetAExpr()
		if e == nil || e.Kind != pg_query.A_Expr_Kind_AEXPR_OP || e.Lexpr != nil {
			return
		}
		n = e.Rexpr
	}
}

// assemblePlan builds the plan from the final decisions.
func assemblePlan(segs []string, kinds []byte, inline []bool) *paramPlan {
	p := &paramPlan{ok: true, nlits: len(kinds)}
	var cur strings.Builder
	for i, s := range segs {
		cur.WriteString(s)
		if i == len(kinds) {
			break
		}
		if inline[i] {
			p.parts = append(p.parts, paramPart{text: cur.String(), lit: i, str: kinds[i] == 's'})
			p.fixed += cur.Len()
			cur.Reset()
			continue
		}
		p.args = append(p.args, i)
		cur.WriteByte('$')
		cur.WriteString(strconv.Itoa(len(p.args)))
	}
	p.parts = append(p.parts, paramPart{text: cur.String(), lit: -1})
	p.fixed += cur.Len()
	return p
}
