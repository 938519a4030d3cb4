package config

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"testing"
)

// FuzzParse: Parse never panics; every error is a *FieldError wrapping a
// sentinel; a config that parses (and so validates) encodes, and the
// encoding parses back to an equal config.
func FuzzParse(f *testing.F) {
	if ex, err := os.ReadFile(exampleFile); err == nil {
		f.Add(ex)
	}
	f.Add([]byte(join(baseSections())))
	sentinels := []error{ErrSyntax, ErrUnknownKey, ErrType, ErrInvalid}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if c != nil {
				t.Fatal("Parse returned a config and an error")
			}
			fes := FieldErrors(err)
			if len(fes) == 0 {
				t.Fatalf("error without *FieldError: %v", err)
			}
			for _, fe := range fes {
				ok := false
				for _, s := range sentinels {
					ok = ok || errors.Is(fe, s)
				}
				if !ok {
					t.Fatalf("error wraps no sentinel: %v", fe)
				}
			}
			return
		}
		var buf bytes.Buffer
		if err := c.Encode(&buf); err != nil {
			t.Fatalf("Encode of a valid config: %v", err)
		}
		c2, err := Parse(buf.Bytes())
		if err != nil {
			t.Fatalf("re-parse of encoded config: %v\ninput:\n%s\nencoded:\n%s", err, data, buf.Bytes())
		}
		if !reflect.DeepEqual(stripped(c), stripped(c2)) {
			t.Fatalf("round trip differs at %v\ninput:\n%s\nencoded:\n%s", Diff(c, c2), data, buf.Bytes())
		}
	})
}
