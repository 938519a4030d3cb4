package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestProxyCopySplit checks COPY FROM STDIN into a sharded table through
// the proxy: text, CSV (header, quoted fields holding delimiters,
// newlines and quotes, the key not first) and binary (pgx CopyFrom)
// rows land on their keys' shards, the counts add up, and a COPY that
// fails anywhere (a duplicate key on one shard, CopyFail, a NULL or
// malformed key, a key column left out) leaves no row on any shard.
func TestProxyCopySplit(t *testing.T) {
	ctx, clusters, env := newProxyTest(t, nil)
	pc := connectProxy(t, env)
	simple(t, pc, "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL)")

	want := map[int]string{}
	copyIn := func(sql, data string) (pgconn.CommandTag, error) {
		return pc.CopyFrom(ctx, strings.NewReader(data), sql)
	}
	code := errCode

	// Text: 1..1000, names with escapes.
	var text strings.Builder
	for id := 1; id <= 1000; id++ {
		name := fmt.Sprintf("user %d", id)
		esc := name
		if id%7 == 0 {
			name = fmt.Sprintf("tab\there %d \\ back", id)
			esc = fmt.Sprintf(`tab\there %d \\ back`, id)
		}
		want[id] = name
		fmt.Fprintf(&text, "%d\t%s\n", id, esc)
	}
	tag, err := copyIn("COPY users FROM STDIN", text.String())
	if err != nil || tag.String() != "COPY 1000" {
		t.Fatalf("text COPY: %v %v", tag, err)
	}

	// CSV: key second, header, tricky quoting; last line unterminated.
	csv := "name,id\n" +
		`"comma, inside",1001` + "\n" +
		`"line` + "\n" + `break",1002` + "\n" +
		`"say ""hi""",1003` + "\n" +
		`plain,"1004"`
	want[1001], want[1002], want[1003], want[1004] = "comma, inside", "line\nbreak", `say "hi"`, "plain"
	if tag, err := copyIn("COPY users (name, id) FROM STDIN WITH (FORMAT csv, HEADER true)", csv); err != nil || tag.String() != "COPY 4" {
		t.Fatalf("CSV COPY: %v %v", tag, err)
	}

	// Binary, through pgx.
	conn, err := pgx.Connect(ctx, env.url(""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var rows [][]any
	for id := 2001; id <= 2300; id++ {
		rows = append(rows, []any{int32(id), fmt.Sprintf("bin %d", id)})
		want[id] = fmt.Sprintf("bin %d", id)
	}
	if n, err := conn.CopyFrom(ctx, pgx.Identifier{"users"}, []string{"id", "name"}, pgx.CopyFromRows(rows)); err != nil || n != 300 {
		t.Fatalf("binary COPY: %d %v", n, err)
	}

	// psql's \copy from a file.
	dir := t.TempDir()
	var file strings.Builder
	for id := 3001; id <= 3200; id++ {
		fmt.Fprintf(&file, "%d,psql %d\n", id, id)
		want[id] = fmt.Sprintf("psql %d", id)
	}
	path := filepath.Join(dir, "in.csv")
	if err := os.WriteFile(path, []byte(file.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := runClient(t, env, fmt.Sprintf("\\copy users from '%s' csv\n", path), pgBin(t, "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-At")
	if !strings.Contains(out, "COPY 200") {
		t.Fatalf("psql \\copy: %q", out)
	}

	// Rows written by other sessions than the reader's are on the
	// standbys once they caught up.
	caughtUp := func(t *testing.T) {
		t.Helper()
		for _, c := range clusters {
			if err := c.WaitCaughtUp(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func(t *testing.T) {
		t.Helper()
		caughtUp(t)
		total := 0
		for i, c := range clusters {
			d, err := pgconn.Connect(ctx, appConnString(c.Primary()))
			if err != nil {
				t.Fatal(err)
			}
			res := simple(t, d, "SELECT count(*) FROM users")
			_ = d.Close(ctx)
			n := 0
			fmt.Sscan(string(res[0].Rows[0][0]), &n)
			if n == 0 {
				t.Fatalf("shard %d holds no row", i)
			}
			total += n
		}
		if total != len(want) {
			t.Fatalf("%d rows over the shards, want %d", total, len(want))
		}
		// Every row is where the router looks for it.
		for id, name := range want {
			var got string
			if err := conn.QueryRow(ctx, "SELECT name FROM users WHERE id = $1", id).Scan(&got); err != nil || got != name {
				t.Fatalf("id %d: %q %v, want %q", id, got, err, name)
			}
		}
	}
	check(t)

	t.Run("COPY TO STDOUT concatenates the shards", func(t *testing.T) {
		caughtUp(t)
		directLines := func(sql string) []string {
			var all []string
			for _, c := range clusters {
				d, err := pgconn.Connect(ctx, appConnString(c.Primary()))
				if err != nil {
					t.Fatal(err)
				}
				var buf bytes.Buffer
				_, err = d.CopyTo(ctx, &buf, sql)
				_ = d.Close(ctx)
				if err != nil {
					t.Fatal(err)
				}
				all = append(all, strings.SplitAfter(buf.String(), "\n")...)
			}
			return all
		}
		sortedRows := func(lines []string) []string {
			var out []string
			for _, l := range lines {
				if l != "" {
					out = append(out, l)
				}
			}
			slices.Sort(out)
			return out
		}
		for _, sql := range []string{"COPY users TO STDOUT", "COPY users (name, id) TO STDOUT WITH (FORMAT csv)"} {
			var buf bytes.Buffer
			tag, err := pc.CopyTo(ctx, &buf, sql)
			if err != nil || tag.RowsAffected() != int64(len(want)) {
				t.Fatalf("%s: %v %v", sql, tag, err)
			}
			got, wantLines := sortedRows(strings.SplitAfter(buf.String(), "\n")), sortedRows(directLines(sql))
			if !slices.Equal(got, wantLines) {
				t.Fatalf("%s: %d lines through the proxy, %d from the shards", sql, len(got), len(wantLines))
			}
		}
		var buf bytes.Buffer
		if _, err := pc.CopyTo(ctx, &buf, "COPY users TO STDOUT WITH (FORMAT csv, HEADER true)"); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
		if lines[0] != "id,name" || slices.Contains(lines[1:], "id,name") {
			t.Fatalf("CSV header: first line %q, %d lines", lines[0], len(lines))
		}
		// Binary: one signature, one trailer, every tuple.
		buf.Reset()
		if _, err := pc.CopyTo(ctx, &buf, "COPY users TO STDOUT WITH (FORMAT binary)"); err != nil {
			t.Fatal(err)
		}
		b := buf.Bytes()
		const sig = "PGCOPY\n\xff\r\n\x00"
		if !bytes.HasPrefix(b, []byte(sig)) || bytes.Count(b, []byte(sig)) != 1 {
			t.Fatal("binary COPY: not exactly one signature")
		}
		pos, tuples := len(sig)+8, 0
		for {
			n := int(int16(binary.BigEndian.Uint16(b[pos:])))
			pos += 2
			if n == -1 {
				break
			}
			for f := 0; f < n; f++ {
				l := int(int32(binary.BigEndian.Uint32(b[pos:])))
				pos += 4 + max(l, 0)
			}
			tuples++
		}
		if tuples != len(want) || pos != len(b) {
			t.Fatalf("binary COPY: %d tuples (want %d), trailer at %d of %d bytes", tuples, len(want), pos, len(b))
		}
		// COPY (SELECT ...) TO STDOUT over both shards: the query runs on
		// each and its rows are concatenated; with an ORDER BY, LIMIT or
		// an aggregate it would need merging and is refused.
		for _, tc := range []struct{ sql, where string }{
			{"COPY (SELECT id, upper(name) FROM users WHERE id % 3 = 0) TO STDOUT", "id % 3 = 0"},
			{"COPY (SELECT name, id FROM users WHERE name <> '') TO STDOUT WITH (FORMAT csv)", "name <> ''"},
		} {
			sql := tc.sql
			res, err := pc.Exec(ctx, "SELECT count(*) FROM users WHERE "+tc.where).ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			rows, err := strconv.ParseInt(string(res[0].Rows[0][0]), 10, 64)
			if err != nil || rows == 0 {
				t.Fatalf("count for %s: %d %v", sql, rows, err)
			}
			var buf bytes.Buffer
			tag, err := pc.CopyTo(ctx, &buf, sql)
			if err != nil || tag.RowsAffected() != rows {
				t.Fatalf("%s: %v %v, want COPY %d", sql, tag, err, rows)
			}
			got, wantLines := sortedRows(strings.SplitAfter(buf.String(), "\n")), sortedRows(directLines(sql))
			if !slices.Equal(got, wantLines) {
				t.Fatalf("%s: %d lines through the proxy, %d from the shards", sql, len(got), len(wantLines))
			}
		}
		buf.Reset()
		tag, err := pc.CopyTo(ctx, &buf, "COPY (SELECT id AS key, name FROM users) TO STDOUT WITH (FORMAT csv, HEADER)")
		if err != nil || tag.RowsAffected() != int64(len(want)) {
			t.Fatalf("COPY (query) with a CSV header: %v %v, want COPY %d", tag, err, len(want))
		}
		lines = strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
		if lines[0] != "key,name" || slices.Contains(lines[1:], "key,name") {
			t.Fatalf("COPY (query) CSV header: first line %q, %d lines", lines[0], len(lines))
		}
		for _, sql := range []string{
			"COPY (SELECT id FROM users ORDER BY id) TO STDOUT",
			"COPY (SELECT count(*) FROM users) TO STDOUT",
		} {
			_, err := pc.CopyTo(ctx, io.Discard, sql)
			if c := code(err); c != "0A000" {
				t.Fatalf("%s: %v (SQLSTATE %q), want 0A000", sql, err, c)
			}
		}
		// psql's \copy to a file.
		outPath := filepath.Join(dir, "out.txt")
		runClient(t, env, fmt.Sprintf("\\copy users to '%s'\n", outPath), pgBin(t, "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-At")
		data, err := os.ReadFile(outPath)
		if err != nil || strings.Count(string(data), "\n") != len(want) {
			t.Fatalf("psql \\copy to: %d lines, %v", strings.Count(string(data), "\n"), err)
		}
	})

	// Failures leave nothing behind.
	for _, tc := range []struct {
		name, sql, data, code string
	}{
		{"duplicate key on one shard", "COPY users FROM STDIN", "5000\tnew\n5001\tnew\n1\tdup\n5002\tnew\n", "23505"},
		{"NULL key", "COPY users FROM STDIN", "5003\tnew\n\\N\tnull\n", "23502"},
		{"malformed key", "COPY users FROM STDIN", "5004\tnew\nabc\tbad\n", "22P02"},
		{"key column left out", "COPY users (name) FROM STDIN", "x\n", "0A000"},
		{"missing key field", "COPY users (name, id) FROM STDIN", "onlyname\n", "22P04"},
	} {
		if _, err := copyIn(tc.sql, tc.data); code(err) != tc.code {
			t.Fatalf("%s: %v, want %s", tc.name, err, tc.code)
		}
	}
	r, w := io.Pipe()
	go func() {
		_, _ = w.Write([]byte("6000\tgone\n6001\tgone\n"))
		w.CloseWithError(errors.New("client gave up"))
	}()
	if _, err := pc.CopyFrom(ctx, r, "COPY users FROM STDIN"); code(err) != "57014" {
		t.Fatalf("CopyFail: %v, want 57014", err)
	}
	simple(t, pc, "BEGIN")
	if _, err := copyIn("COPY users FROM STDIN", "7000\tx\n"); code(err) != "0A000" {
		t.Fatalf("COPY into a sharded table inside a transaction: %v, want 0A000", err)
	}
	simple(t, pc, "ROLLBACK")
	check(t)
}
