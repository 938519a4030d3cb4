package config

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Load reads the TOML file at path and returns Parse's result. Every
// *FieldError in the returned error carries File = path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		for _, fe := range FieldErrors(err) {
			fe.File = path
		}
		return nil, err
	}
	return c, nil
}

// Parse decodes a TOML configuration onto Default(), applies
// ApplyDefaults and runs Validate. It returns either a valid *Config and
// nil, or nil and an error joining one *FieldError per problem (sorted by
// line), each wrapping ErrSyntax, ErrUnknownKey, ErrType or ErrInvalid.
// A syntax error stops parsing (only that error is returned); all other
// problems are collected. Unknown keys are errors, never ignored.
func Parse(data []byte) (*Config, error) {
	var tree map[string]any
	if _, err := toml.Decode(string(data), &tree); err != nil {
		return nil, syntaxError(err)
	}
	pos := scanPositions(data)

	// Check keys and value types against the schema first, so every
	// problem is reported with its indexed key path and line (the decoder
	// stops at the first one and cannot tell array elements apart).
	el := &errorList{pos: pos}
	checkTree(reflect.TypeFor[Config](), tree, "", el)
	if err := el.err(); err != nil {
		return nil, err
	}

	c := Default()
	md, err := toml.Decode(string(data), c)
	if err != nil {
		return nil, syntaxError(err)
	}
	// checkTree already rejects unknown keys; this is a second line of
	// defence in case the decoder accepts something checkTree did not see.
	for _, k := range topUndecoded(md.Undecoded()) {
		el.add(k.String(), ErrUnknownKey, "not a dbproxy configuration key")
	}
	if err := el.err(); err != nil {
		return nil, err
	}
	c.pos = pos
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func syntaxError(err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		msg := pe.Message
		if pe.Usage != "" {
			msg += " (" + strings.TrimSpace(strings.SplitN(pe.Usage, "\n", 2)[0]) + ")"
		}
		return errors.Join(&FieldError{Line: pe.Position.Line, Key: pe.LastKey, Err: fmt.Errorf("%w: %s", ErrSyntax, msg)})
	}
	return errors.Join(&FieldError{Err: fmt.Errorf("%w: %v", ErrSyntax, err)})
}

// topUndecoded drops keys whose parent table is itself undecoded, so an
// unknown table is reported once rather than once per key in it.
func topUndecoded(keys []toml.Key) []toml.Key {
	seen := map[string]bool{}
	var out []toml.Key
	for _, k := range keys {
		top := true
		for i := 1; i < len(k); i++ {
			if seen[k[:i].String()] {
				top = false
				break
			}
		}
		seen[k.String()] = true
		if top {
			out = append(out, k)
		}
	}
	return out
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// checkTree checks the generic decoded TOML value v against the Go type t
// (following `toml` struct tags): unknown keys, wrong value types, and
// values that a field's UnmarshalText rejects (enums, durations).
func checkTree(t reflect.Type, v any, path string, el *errorList) {
	if reflect.PointerTo(t).Implements(textUnmarshaler) {
		s, ok := v.(string)
		if !ok {
			el.add(path, ErrType, "must be a string, got %s", tomlTypeName(v))
			return
		}
		if err := reflect.New(t).Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
			el.addErr(path, err)
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			el.add(path, ErrType, "must be a table, got %s", tomlTypeName(v))
			return
		}
		fields := tomlFields(t)
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			kp := joinKey(path, k)
			f, ok := fields[k]
			if !ok {
				el.add(kp, ErrUnknownKey, "not a dbproxy configuration key%s", suggest(k, fields))
				continue
			}
			checkTree(f.Type, m[k], kp, el)
		}
	case reflect.Slice:
		rv := reflect.ValueOf(v)
		if !rv.IsValid() || rv.Kind() != reflect.Slice {
			if t.Elem().Kind() == reflect.Struct {
				el.add(path, ErrType, "must be an array of tables ([[%s]]), got %s", stripIndexes(path), tomlTypeName(v))
			} else {
				el.add(path, ErrType, "must be an array, got %s", tomlTypeName(v))
			}
			return
		}
		for i := 0; i < rv.Len(); i++ {
			checkTree(t.Elem(), rv.Index(i).Interface(), indexKey(path, i), el)
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			el.add(path, ErrType, "must be a string, got %s", tomlTypeName(v))
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			el.add(path, ErrType, "must be true or false, got %s", tomlTypeName(v))
		}
	case reflect.Int, reflect.Int64:
		if _, ok := v.(int64); !ok {
			el.add(path, ErrType, "must be an integer, got %s", tomlTypeName(v))
		}
	case reflect.Float64:
		switch v.(type) {
		case int64, float64:
		default:
			el.add(path, ErrType, "must be a number, got %s", tomlTypeName(v))
		}
	default:
		el.add(path, ErrType, "unsupported field type %s", t)
	}
}

// tomlFields maps toml tag names to the fields of struct type t.
func tomlFields(t reflect.Type) map[string]reflect.StructField {
	m := make(map[string]reflect.StructField, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" {
			continue
		}
		m[name] = f
	}
	return m
}

func tomlTypeName(v any) string {
	switch x := v.(type) {
	case nil:
		return "nothing"
	case string:
		return fmt.Sprintf("string %q", x)
	case int64:
		return fmt.Sprintf("integer %d", x)
	case float64:
		return fmt.Sprintf("float %v", x)
	case bool:
		return fmt.Sprintf("boolean %v", x)
	case map[string]any:
		return "a table"
	case time.Time:
		return "a date/time"
	}
	if reflect.TypeOf(v).Kind() == reflect.Slice {
		return "an array"
	}
	return fmt.Sprintf("%T", v)
}

// suggest returns ` (did you mean "x"?)` for a key close to a known one.
func suggest(k string, fields map[string]reflect.StructField) string {
	best, bestD := "", 3
	lk := strings.ToLower(k)
	for name := range fields {
		d := editDistance(lk, name)
		if len(name) >= 4 && len(lk) >= 4 && (strings.HasPrefix(lk, name) || strings.HasPrefix(name, lk)) {
			d = min(d, 2)
		}
		if d < bestD || d == bestD && name < best {
			best, bestD = name, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Encode writes c as TOML that Parse reads back to an equal Config (for a
// valid c). It does not validate c. Errors come from w or from enum fields
// that are unset or out of range.
func (c *Config) Encode(w io.Writer) error {
	var buf bytes.Buffer
	buf.WriteString("# dbproxy configuration (see dbproxy.example.toml for every key, annotated)\n\n")
	if err := toml.NewEncoder(&buf).Encode(c); err != nil {
		return fmt.Errorf("config: encode: %w", err)
	}
	_, err := w.Write(buf.Bytes())
	return err
}
