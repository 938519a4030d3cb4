package integration

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// testProxyLongResults streams results much longer than the proxy's
// client write buffer (32 KiB pieces) and single rows larger than its
// pooled buffers through the proxy, in the simple and the extended
// protocol, several results per request, inside a write transaction
// (whose commit position the proxy appends), in a pipeline, and with a
// result the client abandons half read. Every row must arrive, in order
// and intact, and the connection must stay usable.
func testProxyLongResults(t *testing.T, env *proxyEnv) {
	ctx := env.ctx
	conn := pxConnect(t, env, "")

	// Simple protocol, three results in one Query.
	res, err := conn.PgConn().Exec(ctx, `SELECT g, repeat('x', 200) FROM generate_series(1, 30000) g;
SELECT g FROM generate_series(1, 3) g;
SELECT 'tail'`).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 || len(res[0].Rows) != 30000 || len(res[1].Rows) != 3 || len(res[2].Rows) != 1 {
		t.Fatalf("simple: %d results", len(res))
	}
	for i, row := range res[0].Rows {
		if string(row[0]) != strconv.Itoa(i+1) || string(row[1]) != strings.Repeat("x", 200) {
			t.Fatalf("simple: row %d = %q", i, row)
		}
	}
	if string(res[1].Rows[2][0]) != "3" || string(res[2].Rows[0][0]) != "tail" {
		t.Fatalf("simple: short results %q %q", res[1].Rows, res[2].Rows)
	}

	// Extended protocol with a parameter.
	md5Rows(t, conn, 50000, "SELECT g, md5(g::text) FROM generate_series(1, $1::int) g", 50000)

	// A write transaction: its long read runs on the primary, and the
	// commit brings a causal token after which a standby read returns
	// every row.
	pxExec(t, conn, "CREATE TABLE IF NOT EXISTS long_rows (id int PRIMARY KEY, v text)")
	pxExec(t, conn, "TRUNCATE long_rows")
	before := conn.PgConn().ParameterStatus("dbproxy.causal_token")
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO long_rows SELECT g, md5(g::text) FROM generate_series(1, 20000) g"); err != nil {
		t.Fatal(err)
	}
	rows, err := tx.Query(ctx, "SELECT id, v FROM long_rows ORDER BY id")
	if n := countMD5Rows(t, rows, err); n != 20000 {
		t.Fatalf("in the transaction: %d rows", n)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if after := conn.PgConn().ParameterStatus("dbproxy.causal_token"); after == "" || after == before {
		t.Fatalf("causal token after the commit: %q (before %q)", after, before)
	}
	md5Rows(t, conn, 20000, "SELECT id, v FROM long_rows ORDER BY id")

	// A pipeline of long and short reads.
	b := &pgx.Batch{}
	b.Queue("SELECT g, md5(g::text) FROM generate_series(1, $1::int) g", 40000)
	b.Queue("SELECT 1")
	b.Queue("SELECT g, md5(g::text) FROM generate_series(1, $1::int) g", 25000)
	br := conn.SendBatch(ctx, b)
	for i, want := range []int{40000, 1, 25000} {
		rows, err := br.Query()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			n++
		}
		if err := rows.Err(); err != nil || n != want {
			t.Fatalf("batch result %d: %d rows, want %d (%v)", i, n, want, err)
		}
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}

	// Single rows larger than a pooled buffer.
	var big string
	if err := conn.QueryRow(ctx, "SELECT repeat('ab', $1::int)", 3<<20).Scan(&big); err != nil || big != strings.Repeat("ab", 3<<20) {
		t.Fatalf("one 6 MiB value: len %d, %v", len(big), err)
	}

	// A long result abandoned after a few rows: pgx reads the rest away,
	// and the next statements on the connection see their own results.
	rows, err = conn.Query(ctx, "SELECT g FROM generate_series(1, 200000) g")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5 && rows.Next(); i++ {
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	md5Rows(t, conn, 1000, "SELECT g, md5(g::text) FROM generate_series(1, $1::int) g", 1000)
}

// md5Rows runs query (its rows: 1, 2, ... with the md5 of each number's
// text) on conn and checks n rows came.
func md5Rows(t *testing.T, conn *pgx.Conn, n int, query string, args ...any) {
	t.Helper()
	rows, err := conn.Query(context.Background(), query, args...)
	if got := countMD5Rows(t, rows, err); got != n {
		t.Fatalf("%s: %d rows, want %d", query, got, n)
	}
}

// countMD5Rows reads rows of (i, md5(i::text)) for i = 1, 2, ..., checks
// each, and returns how many there were.
func countMD5Rows(t *testing.T, rows pgx.Rows, err error) int {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var id int
		var v string
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		n++
		sum := md5.Sum([]byte(strconv.Itoa(n)))
		if id != n || v != hex.EncodeToString(sum[:]) {
			t.Fatalf("row %d: %d %s", n, id, v)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}
