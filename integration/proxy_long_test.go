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
	checkMD5Rows(t, conn, 50000)

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
	if n := countLongRows(t, rows, err); n != 20000 {
		t.Fatalf("in the transaction: %d rows", n)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if after := conn.PgConn().ParameterStatus("dbproxy.causal_token"); after == "" || after == before {
		t.Fatalf("causal token after the commit: %q (before %q)", after, before)
	}
	rows, err = conn.Query(ctx, "SELECT id, v FROM long_rows ORDER BY id")
	if n := countLongRows(t, rows, err); n != 20000 {
		t.Fatalf("after the commit: %d rows", n)
	}

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
	checkMD5Rows(t, conn, 1000)
}

// checkMD5Rows reads n rows of (g, md5(g)) and checks each.
func checkMD5Rows(t *testing.T, conn *pgx.Conn, n int) {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT g, md5(g::text) FROM generate_series(1, $1::int) g", n)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	i := 0
	for rows.Next() {
		var g int
		var h string
		if err := rows.Scan(&g, &h); err != nil {
			t.Fatal(err)
		}
		i++
		sum := md5.Sum([]byte(strconv.Itoa(i)))
		if g != i || h != hex.EncodeToString(sum[:]) {
			t.Fatalf("row %d: %d %s", i, g, h)
		}
	}
	if err := rows.Err(); err != nil || i != n {
		t.Fatalf("%d rows of %d: %v", i, n, err)
	}
}

// countLongRows reads long_rows' (id, md5(id)) rows in id order, checks
// each, and returns how many there were.
func countLongRows(t *testing.T, rows pgx.Rows, err error) int {
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
