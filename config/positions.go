package config

import (
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// positions maps an indexed key path ("shards[1].nodes[0].port") to the
// 1-based line where it is written. It is built by scanPositions from TOML
// that BurntSushi/toml has already accepted, because toml.MetaData does not
// expose key positions (v1.6) and would not tell array elements apart.
// A nil positions knows nothing.
type positions map[string]int

// line returns the line of key, or of its closest written ancestor
// ("shards[1].nodes[0].role" falls back to the [[shards.nodes]] header), or 0.
func (p positions) line(key string) int {
	for key != "" {
		if l, ok := p[key]; ok {
			return l
		}
		key = parentKey(key)
	}
	return 0
}

// parentKey strips the last ".name" or "[i]" from an indexed key path.
func parentKey(key string) string {
	if strings.HasSuffix(key, "]") {
		if i := strings.LastIndexByte(key, '['); i >= 0 {
			return key[:i]
		}
	}
	// Find the last '.' outside quotes.
	inq := false
	last := -1
	for i := 0; i < len(key); i++ {
		switch key[i] {
		case '"':
			inq = !inq
		case '\\':
			if inq {
				i++
			}
		case '.':
			if !inq {
				last = i
			}
		}
	}
	if last < 0 {
		return ""
	}
	return key[:last]
}

// joinKey appends one TOML key segment to an indexed path, quoting it the
// way toml.Key.String does when it is not a bare key.
func joinKey(parent, seg string) string {
	s := toml.Key{seg}.String()
	if parent == "" {
		return s
	}
	return parent + "." + s
}

func indexKey(parent string, i int) string { return parent + "[" + strconv.Itoa(i) + "]" }

// stripIndexes turns "shards[1].nodes[0].port" into "shards.nodes.port".
func stripIndexes(key string) string {
	var b strings.Builder
	inq := false
	skip := false
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case skip:
			if c == ']' {
				skip = false
			}
			continue
		case c == '"':
			inq = !inq
		case c == '\\' && inq:
			b.WriteByte(c)
			i++
			if i < len(key) {
				b.WriteByte(key[i])
			}
			continue
		case c == '[' && !inq:
			skip = true
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// scanner is a small, forgiving TOML lexer that only tracks where tables
// and keys are. On anything it does not understand it skips to the next
// line; positions are a convenience for error messages, never semantics.
type scanner struct {
	s    string
	i    int
	line int

	table  string         // current table, indexed ("shards[1].nodes[0]")
	arrays map[string]int // indexed array-of-tables path -> element count
	pos    positions
}

func scanPositions(data []byte) positions {
	sc := &scanner{s: string(data), line: 1, arrays: map[string]int{}, pos: positions{}}
	sc.run()
	return sc.pos
}

func (sc *scanner) eof() bool { return sc.i >= len(sc.s) }

func (sc *scanner) peek() byte {
	if sc.eof() {
		return 0
	}
	return sc.s[sc.i]
}

func (sc *scanner) advance() {
	if sc.s[sc.i] == '\n' {
		sc.line++
	}
	sc.i++
}

func (sc *scanner) skipSpaces() {
	for !sc.eof() && (sc.peek() == ' ' || sc.peek() == '\t') {
		sc.i++
	}
}

func (sc *scanner) skipLine() {
	for !sc.eof() && sc.peek() != '\n' {
		sc.i++
	}
	if !sc.eof() {
		sc.advance()
	}
}

func (sc *scanner) run() {
	for !sc.eof() {
		sc.skipSpaces()
		switch c := sc.peek(); {
		case c == 0:
			return
		case c == '\n' || c == '\r':
			sc.advance()
		case c == '#':
			sc.skipLine()
		case c == '[':
			sc.header()
			sc.skipLine()
		default:
			sc.keyValue(sc.table)
			sc.skipLine()
		}
	}
}

// header handles "[a.b]" and "[[a.b]]".
func (sc *scanner) header() {
	line := sc.line
	sc.i++ // '['
	array := sc.peek() == '['
	if array {
		sc.i++
	}
	segs, ok := sc.key()
	if !ok || len(segs) == 0 {
		return
	}
	path := ""
	for n, seg := range segs {
		path = joinKey(path, seg)
		last := n == len(segs)-1
		if last && array {
			k := sc.arrays[path]
			sc.arrays[path] = k + 1
			path = indexKey(path, k)
			break
		}
		if c, ok := sc.arrays[path]; ok && c > 0 {
			path = indexKey(path, c-1)
		}
	}
	sc.table = path
	if _, seen := sc.pos[path]; !seen {
		sc.pos[path] = line
	}
}

// keyValue handles "a.b = value" (value possibly spanning lines) relative
// to table. Inline tables record their keys too.
func (sc *scanner) keyValue(table string) {
	line := sc.line
	segs, ok := sc.key()
	if !ok || len(segs) == 0 {
		return
	}
	sc.skipSpaces()
	if sc.peek() != '=' {
		return
	}
	sc.i++
	path := table
	for _, seg := range segs {
		path = joinKey(path, seg)
	}
	sc.pos[path] = line
	sc.skipSpaces()
	sc.value(path)
}

// key reads a dotted key of bare and quoted segments, leaving the cursor
// after it (and after any spaces).
func (sc *scanner) key() ([]string, bool) {
	var segs []string
	for {
		sc.skipSpaces()
		switch c := sc.peek(); {
		case c == '"':
			s, ok := sc.basicString()
			if !ok {
				return nil, false
			}
			segs = append(segs, s)
		case c == '\'':
			s, ok := sc.literalString()
			if !ok {
				return nil, false
			}
			segs = append(segs, s)
		case isBare(c):
			start := sc.i
			for !sc.eof() && isBare(sc.peek()) {
				sc.i++
			}
			segs = append(segs, sc.s[start:sc.i])
		default:
			return nil, false
		}
		sc.skipSpaces()
		if sc.peek() != '.' {
			return segs, true
		}
		sc.i++
	}
}

func isBare(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// basicString reads a one-line "..." string and returns its (roughly)
// unescaped contents.
func (sc *scanner) basicString() (string, bool) {
	sc.i++ // opening quote
	var b strings.Builder
	for !sc.eof() {
		c := sc.peek()
		switch c {
		case '"':
			sc.i++
			return b.String(), true
		case '\n':
			return "", false
		case '\\':
			sc.i++
			if sc.eof() {
				return "", false
			}
			e := sc.peek()
			sc.i++
			switch e {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'u', 'U':
				n := 4
				if e == 'U' {
					n = 8
				}
				if sc.i+n > len(sc.s) {
					return "", false
				}
				r, err := strconv.ParseUint(sc.s[sc.i:sc.i+n], 16, 32)
				if err != nil {
					return "", false
				}
				b.WriteRune(rune(r))
				sc.i += n
			default:
				b.WriteByte(e)
			}
		default:
			b.WriteByte(c)
			sc.i++
		}
	}
	return "", false
}

func (sc *scanner) literalString() (string, bool) {
	sc.i++
	start := sc.i
	for !sc.eof() {
		switch sc.peek() {
		case '\'':
			s := sc.s[start:sc.i]
			sc.i++
			return s, true
		case '\n':
			return "", false
		}
		sc.i++
	}
	return "", false
}

// value skips one TOML value, recording the keys of inline tables and the
// positions of array elements that are inline tables.
func (sc *scanner) value(path string) {
	switch sc.peek() {
	case '"', '\'':
		q := sc.peek()
		if strings.HasPrefix(sc.s[sc.i:], string([]byte{q, q, q})) {
			sc.multiline(q)
			return
		}
		if q == '"' {
			sc.basicString()
		} else {
			sc.literalString()
		}
	case '[':
		sc.i++
		for n := 0; ; n++ {
			sc.skipBlank()
			if sc.eof() {
				return
			}
			if sc.peek() == ']' {
				sc.i++
				return
			}
			elem := indexKey(path, n)
			if sc.peek() == '{' {
				sc.pos[elem] = sc.line
			}
			start := sc.i
			sc.value(elem)
			sc.skipBlank()
			if sc.peek() == ',' {
				sc.i++
			} else if sc.peek() != ']' || sc.i == start {
				return // confused; let run() resync at the next line
			}
		}
	case '{':
		sc.i++
		for {
			sc.skipSpaces()
			if sc.eof() || sc.peek() == '\n' {
				return
			}
			if sc.peek() == '}' {
				sc.i++
				return
			}
			start := sc.i
			sc.keyValue(path)
			sc.skipSpaces()
			if sc.peek() == ',' {
				sc.i++
			} else if sc.peek() != '}' || sc.i == start {
				return
			}
		}
	default:
		// Number, bool, date: up to a delimiter.
		for !sc.eof() {
			switch sc.peek() {
			case ',', ']', '}', '\n', '#', '\r':
				return
			}
			sc.i++
		}
	}
}

// skipBlank skips spaces, newlines and comments (inside arrays).
func (sc *scanner) skipBlank() {
	for !sc.eof() {
		switch sc.peek() {
		case ' ', '\t', '\r', '\n':
			sc.advance()
		case '#':
			for !sc.eof() && sc.peek() != '\n' {
				sc.i++
			}
		default:
			return
		}
	}
}

// multiline skips a """...""" or ”'...”' string.
func (sc *scanner) multiline(q byte) {
	delim := string([]byte{q, q, q})
	sc.i += 3
	for !sc.eof() {
		if q == '"' && sc.peek() == '\\' {
			sc.i++
			if !sc.eof() {
				sc.advance()
			}
			continue
		}
		if strings.HasPrefix(sc.s[sc.i:], delim) {
			sc.i += 3
			// Up to two more quotes may belong to the content.
			for n := 0; n < 2 && sc.peek() == q; n++ {
				sc.i++
			}
			return
		}
		sc.advance()
	}
}
