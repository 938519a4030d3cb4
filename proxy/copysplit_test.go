package proxy

import "testing"

func TestCopyTextFields(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{`plain`, "plain"},
		{`a\tb\nc\\d`, "a\tb\nc\\d"},
		{`\101\x41\x4a\q`, "AAJq"},
		{`end\`, `end\`},
	} {
		if got := unescapeText([]byte(tc.raw)); got != tc.want {
			t.Errorf("unescapeText(%q) = %q, want %q", tc.raw, got, tc.want)
		}
	}
	line := []byte("1\tx\\\ty\tz")
	raw, _, next := nextField(line, 0, false, '\t', 0, 0)
	raw2, _, next2 := nextField(line, next, false, '\t', 0, 0)
	if string(raw) != "1" || string(raw2) != "x\\\ty" || next2 != 7 {
		t.Fatalf("text fields %q %q next %d", raw, raw2, next2)
	}
}

func TestCopyCSVFields(t *testing.T) {
	if got := lineEnd([]byte("\"a\nb\",1\nnext"), true, '"', '"'); got != 7 {
		t.Fatalf("lineEnd across a quoted newline = %d, want 7", got)
	}
	if got := lineEnd([]byte(`"a\"",1`+"\n"), true, '"', '\\'); got != 7 {
		t.Fatalf("lineEnd with an escaped quote = %d, want 7", got)
	}
	line := []byte(`"x, ""y""",42,`)
	raw, quoted, next := nextField(line, 0, true, ',', '"', '"')
	if !quoted || unquoteCSV(raw, '"', '"') != `x, "y"` {
		t.Fatalf("quoted field %q (quoted %v)", raw, quoted)
	}
	raw, quoted, next = nextField(line, next, true, ',', '"', '"')
	if quoted || string(raw) != "42" {
		t.Fatalf("second field %q", raw)
	}
	if raw, _, _ = nextField(line, next, true, ',', '"', '"'); len(raw) != 0 {
		t.Fatalf("empty last field %q", raw)
	}
	if got := unquoteCSV([]byte(`"a\"b\\c"`), '"', '\\'); got != `a"b\c` {
		t.Fatalf("unquoteCSV with escape = %q", got)
	}
}
