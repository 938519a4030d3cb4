package router

import (
	"hash/maphash"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
)

// Statements that differ only in their literal values (simple-protocol
// clients send "... WHERE id = 1", "... WHERE id = 2", ...) share one
// classification: the text with its plain literals replaced by $1..$n
// (its shape) is classified once as a template, and each text of that
// shape gets the template with the literal values put back into its key
// candidates.
//
// A template is used only after checking, on the first text of its shape,
// that instantiating it yields exactly (reflect.DeepEqual) the
// Statement a full parse of that text gives. Texts of one shape parse to
// trees that differ only in the values of integer and string constants
// (the lexer decides the token kinds, and only canonical int32 integers
// and plain '...' strings are replaced), and classification reads those
// values only as key-candidate texts, which instantiation fills in, and
// for multi-shard merge plans, which are planned lazily from the
// original text. Shapes whose template does not match (a SET value, a
// negative number, an EXECUTE argument, ...) are remembered as such and
// always take the full parse.

// normalizeLiterals returns sql with its integer literals (canonical,
// within int32) and plain string literals replaced by $1..$n, and the
// values (strings unquoted). ok is false when sql has no such literal or
// holds anything the scanner below does not fully understand ($ signs,
// prefixed strings such as E'x', B'1', X'1f', U&'x', backslashes, string
// continuation, unterminated quotes or comments, NUL bytes): those texts
// are classified in full.
func normalizeLiterals(sql string) (norm string, lits []string, ok bool) {
	norm, lits, _, ok = normalizeLiteralKinds(sql)
	return norm, lits, ok
}

// normalizeLiteralKinds is normalizeLiterals that also returns the kind
// of each literal replaced ('i' integer, 's' string).
func normalizeLiteralKinds(sql string) (norm string, lits []string, kinds []byte, ok bool) {
	var buf [512]byte
	b, lits, kinds, ok := appendShape(buf[:0], sql, nil, nil)
	if !ok {
		return "", nil, nil, false
	}
	return string(b), lits, kinds, true
}

// appendShape appends the shape of sql (normalizeLiterals) to b, its
// literal values to lits and their kinds to kinds. Callers pass buffers
// on their stack so that a shape lookup allocates nothing.
func appendShape(b []byte, sql string, lits []string, kinds []byte) ([]byte, []string, []byte, bool) {
	n := len(sql)
	for i := 0; i < n; {
		ch := sql[i]
		switch {
		case ch == '$' || ch == 0 || ch == '\\':
			return b, lits, kinds, false
		case ch == '-' && i+1 < n && sql[i+1] == '-':
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				j = n - i
			}
			b = append(b, sql[i:i+j]...)
			i += j
		case ch == '/' && i+1 < n && sql[i+1] == '*':
			depth, j := 1, i+2
			for j < n && depth > 0 {
				switch {
				case sql[j] == '/' && j+1 < n && sql[j+1] == '*':
					depth++
					j += 2
				case sql[j] == '*' && j+1 < n && sql[j+1] == '/':
					depth--
					j += 2
				default:
					j++
				}
			}
			if depth > 0 {
				return b, lits, kinds, false
			}
			b = append(b, sql[i:j]...)
			i = j
		case ch == '"':
			j := i + 1
			for {
				k := strings.IndexByte(sql[j:], '"')
				if k < 0 {
					return b, lits, kinds, false
				}
				j += k + 1
				if j < n && sql[j] == '"' {
					j++
					continue
				}
				break
			}
			b = append(b, sql[i:j]...)
			i = j
		case ch == '\'':
			if i > 0 && (isIdentByte(sql[i-1]) || sql[i-1] == '&') {
				return b, lits, kinds, false // E'', B'', X'', N'', U&''
			}
			j := i + 1
			for {
				k := strings.IndexByte(sql[j:], '\'')
				if k < 0 {
					return b, lits, kinds, false
				}
				j += k + 1
				if j < n && sql[j] == '\'' {
					j++
					continue
				}
				break
			}
			// A string followed (after white space) by another is one
			// literal in SQL: leave such texts alone.
			k := j
			for k < n && (sql[k] == ' ' || sql[k] == '\t' || sql[k] == '\n' || sql[k] == '\r' || sql[k] == '\f') {
				k++
			}
			if k < n && sql[k] == '\'' {
				return b, lits, kinds, false
			}
			if strings.IndexByte(sql[i+1:j-1], '\\') >= 0 {
				return b, lits, kinds, false // meaning depends on standard_conforming_strings
			}
			lits = append(lits, strings.ReplaceAll(sql[i+1:j-1], "''", "'"))
			kinds = append(kinds, 's')
			b = append(b, '$')
			b = strconv.AppendInt(b, int64(len(lits)), 10)
			i = j
		case ch == '-' && i+1 < n && sql[i+1] >= '0' && sql[i+1] <= '9' && unaryMinusAt(sql, i):
			// A negative integer ("abalance + -1234"): PostgreSQL's
			// grammar folds the sign into the constant, so it is one
			// literal.
			j := i + 1
			for j < n && sql[j] >= '0' && sql[j] <= '9' {
				j++
			}
			if (j == n || !isIdentByte(sql[j]) && sql[j] != '.') && canonicalInt32(sql[i+1:j]) {
				lits = append(lits, sql[i:j])
				kinds = append(kinds, 'i')
				b = append(b, '$')
				b = strconv.AppendInt(b, int64(len(lits)), 10)
				i = j
			} else {
				b = append(b, '-')
				i++
			}
		case ch >= '0' && ch <= '9':
			j := i
			for j < n && sql[j] >= '0' && sql[j] <= '9' {
				j++
			}
			digits := sql[i:j]
			prevOK := i == 0 || !isIdentByte(sql[i-1]) && sql[i-1] != '.'
			if i >= 2 && (sql[i-1] == '-' || sql[i-1] == '+') && (sql[i-2] == 'e' || sql[i-2] == 'E') {
				prevOK = false // the exponent of 1e-5
			}
			nextOK := j == n || !isIdentByte(sql[j]) && sql[j] != '.'
			if prevOK && nextOK && canonicalInt32(digits) {
				lits = append(lits, digits)
				kinds = append(kinds, 'i')
				b = append(b, '$')
				b = strconv.AppendInt(b, int64(len(lits)), 10)
			} else {
				b = append(b, digits...)
			}
			i = j
		case isIdentByte(ch):
			j := i
			for j < n && isIdentByte(sql[j]) {
				j++
			}
			b = append(b, sql[i:j]...)
			i = j
		default:
			b = append(b, ch)
			i++
		}
	}
	return b, lits, kinds, len(lits) > 0
}

// unaryMinusAt reports whether the '-' at sql[i] is certainly a unary
// minus that the lexer keeps apart from what precedes it: right after '('
// or ',', or after white space that follows one of ( , = < > + * / (an
// operator the space ends; not the end of a comment).
func unaryMinusAt(sql string, i int) bool {
	k := i - 1
	if k < 0 {
		return false
	}
	if sql[k] == '(' || sql[k] == ',' {
		return true
	}
	space := false
	for k >= 0 && (sql[k] == ' ' || sql[k] == '\t' || sql[k] == '\n' || sql[k] == '\r') {
		k--
		space = true
	}
	if !space || k < 0 {
		return false
	}
	switch sql[k] {
	case '(', ',', '=', '<', '>', '+', '*':
		return true
	case '/':
		return k == 0 || sql[k-1] != '*'
	}
	return false
}

// isIdentByte reports whether b can be part of an identifier or keyword
// (letters, digits, underscore, any non-ASCII byte).
func isIdentByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b >= 0x80
}

// canonicalInt32 reports whether digits is an integer PostgreSQL's lexer
// makes an int32 constant and that prints back as itself.
func canonicalInt32(digits string) bool {
	if len(digits) == 0 || len(digits) > 10 || len(digits) > 1 && digits[0] == '0' {
		return false
	}
	v, err := strconv.ParseInt(digits, 10, 64)
	return err == nil && v <= 1<<31-1
}

// shapeEntry is a classified shape: tpl is nil when instantiating the
// template did not reproduce the full classification. Statements
// instantiated from it point to it (Statement.shape), so Parameterize
// finds the shape's plan without scanning the text again.
type shapeEntry struct {
	tpl   *Statement
	norm  string // the text with $1..$n for its literals
	kinds string // of each literal ('i' integer, 's' string)
	param atomic.Pointer[paramPlan]
}

// maxShapeLits bounds the literals a shape lookup collects without
// allocating (more just cost an allocation).
const maxShapeLits = 16

// classifyShape classifies sql through its shape's template. ok is false
// when sql has no usable shape (classify it in full).
func (c *Classifier) classifyShape(sql string) (*Statement, bool) {
	var keyBuf [512]byte
	var litBuf [maxShapeLits]string
	var kindBuf [maxShapeLits]byte
	key, lits, kinds, ok := appendShape(keyBuf[:0], sql, litBuf[:0], kindBuf[:0])
	if !ok {
		return nil, false
	}
	// Integer and string constants are different nodes in the tree: the
	// kinds are part of the shape.
	normLen := len(key)
	key = append(key, 0)
	key = append(key, kinds...)
	sh := &c.shapes[maphash.Bytes(c.seed, key)%cacheShards]
	sh.mu.RLock()
	e := sh.m[string(key)] // no allocation
	sh.mu.RUnlock()
	if e != nil {
		if e.tpl == nil {
			return nil, false
		}
		return instantiate(e.tpl, sql, lits, e)
	}
	// First text of this shape: classify it in full and check the
	// template against it.
	full, err := classifySafe(sql)
	if err != nil {
		return nil, false
	}
	k := string(key)
	e = &shapeEntry{norm: k[:normLen], kinds: k[normLen+1:]}
	if tpl, terr := classifySafe(e.norm); terr == nil && tpl.ParseError == nil && tpl.HintError == nil {
		if inst, ok := instantiate(tpl, sql, lits, nil); ok && reflect.DeepEqual(inst, full) {
			e.tpl = tpl
		}
	}
	sh.mu.Lock()
	if len(sh.m) >= c.perCap {
		for k := range sh.m {
			delete(sh.m, k)
			break
		}
	}
	sh.m[k] = e
	sh.mu.Unlock()
	return full, true
}

// instantiate copies tpl for sql, replacing the parameters $1..$n of its
// key candidates with lits. ok is false if a parameter is out of range.
// tpl itself (shared) is never modified. With shape, the copy remembers
// its shape and literals (for Parameterize).
func instantiate(tpl *Statement, sql string, lits []string, shape *shapeEntry) (*Statement, bool) {
	in := new(instance)
	st := &in.st
	*st = *tpl
	st.SQL = sql
	if shape != nil {
		st.shape = shape
		st.lits = boxed(in.lits[:], len(lits))
		copy(st.lits, lits)
	}
	if tpl.scatter != nil {
		in.scatter.sql = sql
		st.scatter = &in.scatter
	}
	sub := func(v KeyValue) (KeyValue, bool) {
		if v.Param <= 0 {
			return v, true
		}
		if v.Param > len(lits) {
			return v, false
		}
		return KeyValue{Text: lits[v.Param-1]}, true
	}
	if tpl.Keys != nil {
		// One backing array for every alternative and one for every
		// column value, whatever the number of tables.
		nAlts, nVals := 0, 0
		for _, tk := range tpl.Keys {
			nAlts += len(tk.Alternatives)
			for _, alt := range tk.Alternatives {
				nVals += len(alt)
			}
		}
		st.Keys = boxed(in.keys[:], len(tpl.Keys))
		alts := boxed(in.alts[:], nAlts)
		vals := boxed(in.vals[:], nVals)
		for i, tk := range tpl.Keys {
			nk := TableKeys{Ref: tk.Ref}
			if tk.Alternatives != nil {
				nk.Alternatives = alts[:len(tk.Alternatives):len(tk.Alternatives)]
				alts = alts[len(tk.Alternatives):]
				for j, alt := range tk.Alternatives {
					if alt == nil {
						continue
					}
					na := vals[:len(alt):len(alt)]
					vals = vals[len(alt):]
					for k, cv := range alt {
						v, ok := sub(cv.Value)
						if !ok {
							return nil, false
						}
						na[k] = ColumnValue{Column: cv.Column, Value: v}
					}
					nk.Alternatives[j] = na
				}
			}
			st.Keys[i] = nk
		}
	}
	// The scopes hold no values once classified (setScopes): the
	// template's are shared.
	return st, true
}

// instance is an instantiated Statement allocated together with the
// small arrays most instances need (one table, one key alternative of
// up to two columns, up to four literals); larger ones get their own.
type instance struct {
	st      Statement
	scatter lazyScatter
	keys    [1]TableKeys
	alts    [1][]ColumnValue
	vals    [2]ColumnValue
	lits    [4]string
}

// boxed returns n elements of arr when they fit (capacity n, so that an
// append never writes into the rest of arr), else a new slice.
func boxed[T any](arr []T, n int) []T {
	if n <= len(arr) {
		return arr[:n:n]
	}
	return make([]T, n)
}
