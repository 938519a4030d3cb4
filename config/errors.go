package config

import (
	"errors"
	"fmt"
	"sort"
)

// Sentinel errors. Every *FieldError wraps exactly one of them, so callers
// can branch with errors.Is on the joined error that Parse, Load, Validate
// and CheckReload return.
var (
	// ErrSyntax: the file is not valid TOML.
	ErrSyntax = errors.New("TOML syntax error")
	// ErrUnknownKey: a key the schema does not define (typo, misplaced key).
	ErrUnknownKey = errors.New("unknown key")
	// ErrType: a value has the wrong TOML type (string where an integer belongs, ...).
	ErrType = errors.New("wrong type")
	// ErrInvalid: a value is out of range, malformed, inconsistent or missing.
	ErrInvalid = errors.New("invalid value")
	// ErrNotReloadable: CheckReload found a change that needs a restart.
	ErrNotReloadable = errors.New("cannot be changed by reload (restart required)")
)

// FieldError is one problem with one key of the configuration.
type FieldError struct {
	// File is the file name when the config came from Load, else "".
	File string
	// Line is the 1-based line of the key (or of the table that holds it)
	// in the source, or 0 when unknown (configs built in code, keys not
	// written in the file).
	Line int
	// Key is the key path in TOML names with array indexes, e.g.
	// "shards[1].nodes[0].port". "" for errors about the whole file.
	Key string
	// Err describes the problem; it wraps one of the sentinel errors.
	Err error
}

func (e *FieldError) Error() string {
	var where string
	switch {
	case e.File != "" && e.Line > 0:
		where = fmt.Sprintf("%s:%d: ", e.File, e.Line)
	case e.File != "":
		where = e.File + ": "
	case e.Line > 0:
		where = fmt.Sprintf("config: line %d: ", e.Line)
	default:
		where = "config: "
	}
	if e.Key != "" {
		where += e.Key + ": "
	}
	return where + e.Err.Error()
}

func (e *FieldError) Unwrap() error { return e.Err }

// FieldErrors returns every *FieldError contained in err (which may be a
// joined error), in order. It returns nil if there are none.
func FieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if fe, ok := e.(*FieldError); ok {
			out = append(out, fe)
			return
		}
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	return out
}

// errorList collects FieldErrors and resolves their lines from the source
// positions (if any).
type errorList struct {
	pos  positions
	errs []*FieldError
}

func (l *errorList) add(key string, sentinel error, format string, args ...any) {
	l.errs = append(l.errs, &FieldError{
		Key:  key,
		Line: l.pos.line(key),
		Err:  fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...)),
	})
}

// addErr records err (which should already wrap a sentinel) against key.
func (l *errorList) addErr(key string, err error) {
	l.errs = append(l.errs, &FieldError{Key: key, Line: l.pos.line(key), Err: err})
}

// invalid is add(key, ErrInvalid, ...).
func (l *errorList) invalid(key, format string, args ...any) {
	l.add(key, ErrInvalid, format, args...)
}

// err returns the collected errors sorted by line (errors with a known line
// first, in line order; then the others in the order found), joined with
// errors.Join, or nil.
func (l *errorList) err() error {
	if len(l.errs) == 0 {
		return nil
	}
	sort.SliceStable(l.errs, func(i, j int) bool {
		a, b := l.errs[i].Line, l.errs[j].Line
		if a == 0 || b == 0 {
			return a != 0 && b == 0
		}
		return a < b
	})
	errs := make([]error, len(l.errs))
	for i, e := range l.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}
