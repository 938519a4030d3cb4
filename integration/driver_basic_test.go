package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/driver"
	"github.com/dbproxy/dbproxy/router"
)

// TestDriverBasics runs the usual database/sql behaviour through the
// driver on two shards (primary + standby each): DDL broadcast, sharded
// writes and point reads, type scanning, multi-shard merges,
// transactions, prepared statements, context cancellation and pool
// limits.
func TestDriverBasics(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	clusters := startDriverClusters(t, ctx, "drvbasic", 2, 1)
	env := openDriverEnv(t, clusters, driverConfig(t, clusters, "users(id:int)", nil))
	db := env.db

	mustExec := func(q string, args ...any) sql.Result {
		t.Helper()
		r, err := db.ExecContext(ctx, q, args...)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return r
	}
	mustExec(`CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, score int, balance numeric(12,2), born timestamptz, avatar bytea, active bool, ratio float8)`)
	mustExec(`CREATE TABLE settings (k text PRIMARY KEY, v text)`)
	born := time.Date(1990, 5, 17, 10, 30, 0, 0, time.UTC)
	for i := 1; i <= 40; i++ {
		r := mustExec(`INSERT INTO users (id, name, score, balance, born, avatar, active, ratio) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			int64(i), fmt.Sprintf("user%02d", i), i%7, fmt.Sprintf("%d.%02d", i*10, i), born.Add(time.Duration(i)*time.Hour), []byte{byte(i), 0, 255}, i%2 == 0, float64(i)/4)
		if n, _ := r.RowsAffected(); n != 1 {
			t.Fatalf("insert %d affected %d", i, n)
		}
	}
	mustExec(`INSERT INTO settings VALUES ('a', '1'), ('b', NULL)`)
	// s0's primary (settings' shard) is configured by its socket directory.
	var overSocket string
	if err := db.QueryRowContext(ctx, `INSERT INTO settings VALUES ('socket', (inet_server_addr() IS NULL)::text) RETURNING v`).Scan(&overSocket); err != nil || overSocket != "true" {
		t.Fatalf("write to s0's primary over its Unix socket: %q, %v", overSocket, err)
	}

	// Rows really are spread over both shards.
	for i, c := range clusters {
		var n int
		if err := directDB(t, c.Primary()).QueryRowContext(ctx, "SELECT count(*) FROM users").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 || n == 40 {
			t.Fatalf("shard %d holds %d of 40 users: not sharded", i, n)
		}
	}

	t.Run("scan types", func(t *testing.T) {
		var (
			id      int64
			name    string
			score   int
			balance string
			b       time.Time
			avatar  []byte
			active  bool
			ratio   float64
		)
		err := db.QueryRowContext(ctx, `SELECT id, name, score, balance, born, avatar, active, ratio FROM users WHERE id = $1`, 7).
			Scan(&id, &name, &score, &balance, &b, &avatar, &active, &ratio)
		if err != nil {
			t.Fatal(err)
		}
		if id != 7 || name != "user07" || score != 0 || balance != "70.07" || !b.Equal(born.Add(7*time.Hour)) ||
			string(avatar) != string([]byte{7, 0, 255}) || active || ratio != 1.75 {
			t.Fatalf("got %v %q %v %q %v %v %v %v", id, name, score, balance, b, avatar, active, ratio)
		}
		var ns sql.NullString
		var ni sql.NullInt64
		var nf sql.NullFloat64
		var nb sql.NullBool
		var nt sql.NullTime
		if err := db.QueryRowContext(ctx, `SELECT v, NULL::int8, NULL::float8, NULL::bool, NULL::timestamptz FROM settings WHERE k = 'b'`).Scan(&ns, &ni, &nf, &nb, &nt); err != nil {
			t.Fatal(err)
		}
		if ns.Valid || ni.Valid || nf.Valid || nb.Valid || nt.Valid {
			t.Fatalf("NULLs scanned as valid: %v %v %v %v %v", ns, ni, nf, nb, nt)
		}
		if err := db.QueryRowContext(ctx, `SELECT v FROM settings WHERE k = $1`, "a").Scan(&ns); err != nil || !ns.Valid || ns.String != "1" {
			t.Fatalf("settings a: %v %v", ns, err)
		}
		if err := db.QueryRowContext(ctx, `SELECT id FROM users WHERE id = $1`, 4242).Scan(&id); !errors.Is(err, sql.ErrNoRows) {
			t.Fatalf("missing row: %v", err)
		}
	})

	t.Run("multi-shard merge", func(t *testing.T) {
		var n, sum int64
		var mn, mx string
		var avg string
		if err := db.QueryRowContext(ctx, `SELECT count(*), sum(score), min(name), max(name), avg(score) FROM users`).Scan(&n, &sum, &mn, &mx, &avg); err != nil {
			t.Fatal(err)
		}
		// oracle: 1..40, score = i%7
		var want int64
		for i := 1; i <= 40; i++ {
			want += int64(i % 7)
		}
		if n != 40 || sum != want || mn != "user01" || mx != "user40" || avg != "3.0000000000000000" {
			t.Fatalf("aggregates: %d %d %s %s %s (want sum %d)", n, sum, mn, mx, avg, want)
		}
		rows, err := db.QueryContext(ctx, `SELECT id, name FROM users ORDER BY id DESC LIMIT $1 OFFSET 2`, 5)
		if err != nil {
			t.Fatal(err)
		}
		var got []int64
		for rows.Next() {
			var id int64
			var name string
			if err := rows.Scan(&id, &name); err != nil {
				t.Fatal(err)
			}
			got = append(got, id)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != "[38 37 36 35 34]" {
			t.Fatalf("ORDER BY DESC LIMIT 5 OFFSET 2: %v", got)
		}
		rows, err = db.QueryContext(ctx, `SELECT score, count(*) FROM users GROUP BY score ORDER BY score`)
		if err != nil {
			t.Fatal(err)
		}
		var groups []string
		for rows.Next() {
			var s, c int64
			if err := rows.Scan(&s, &c); err != nil {
				t.Fatal(err)
			}
			groups = append(groups, fmt.Sprintf("%d:%d", s, c))
		}
		if fmt.Sprint(groups) != "[0:5 1:6 2:6 3:6 4:6 5:6 6:5]" {
			t.Fatalf("GROUP BY: %v", groups)
		}
		// A write without its shard key is refused with 0A000.
		_, err = db.ExecContext(ctx, `UPDATE users SET score = 0`)
		var se interface{ SQLState() string }
		if !errors.As(err, &se) || se.SQLState() != "0A000" || !errors.Is(err, router.ErrShardKeyRequired) {
			t.Fatalf("keyless UPDATE: %v", err)
		}
	})

	t.Run("transactions", func(t *testing.T) {
		tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead})
		if err != nil {
			t.Fatal(err)
		}
		var iso string
		if err := tx.QueryRowContext(ctx, `SELECT current_setting('transaction_isolation') FROM users WHERE id = $1`, 3).Scan(&iso); err != nil {
			t.Fatal(err)
		}
		if iso != "repeatable read" {
			t.Fatalf("isolation %q", iso)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE users SET name = 'renamed' WHERE id = $1`, 3); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		var name string
		if err := db.QueryRowContext(driver.WithPrimary(ctx), `SELECT name FROM users WHERE id = $1`, 3).Scan(&name); err != nil || name != "user03" {
			t.Fatalf("after rollback: %q %v", name, err)
		}
		tx, err = db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE users SET name = 'renamed' WHERE id = $1`, 3); err != nil {
			t.Fatal(err)
		}
		// another shard inside the same transaction is refused
		_, err = tx.ExecContext(ctx, `UPDATE users SET name = 'x' WHERE id = $1`, otherShardID(t, env, 3))
		if !errors.Is(err, router.ErrCrossShardTransaction) {
			t.Fatalf("cross-shard statement in a transaction: %v", err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRowContext(driver.WithPrimary(ctx), `SELECT name FROM users WHERE id = $1`, 3).Scan(&name); err != nil || name != "renamed" {
			t.Fatalf("after commit: %q %v", name, err)
		}
		// a failed statement makes COMMIT roll back
		tx, _ = db.BeginTx(ctx, nil)
		if _, err := tx.ExecContext(ctx, `UPDATE users SET name = 'bad' WHERE id = $1`, 3); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, `SELECT 1/0 FROM users WHERE id = $1`, 3); err == nil {
			t.Fatal("division by zero succeeded")
		}
		if err := tx.Commit(); !errors.Is(err, driver.ErrTxRolledBack) {
			t.Fatalf("commit of a failed transaction: %v", err)
		}
		// read-only transaction
		tx, err = db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		var ro string
		if err := tx.QueryRowContext(ctx, `SELECT current_setting('transaction_read_only') FROM users WHERE id = $1`, 5).Scan(&ro); err != nil || ro != "on" {
			t.Fatalf("read only tx: %q %v", ro, err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("prepared statements", func(t *testing.T) {
		st, err := db.PrepareContext(ctx, `SELECT name FROM users WHERE id = $1`)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		for i := 1; i <= 40; i++ {
			var name string
			if err := st.QueryRowContext(ctx, i).Scan(&name); err != nil {
				t.Fatal(err)
			}
			if i != 3 && name != fmt.Sprintf("user%02d", i) {
				t.Fatalf("id %d: %q", i, name)
			}
		}
		if _, err := db.ExecContext(ctx, `SELECT $1`, sql.Named("x", 1)); !errors.Is(err, driver.ErrNamedArgs) {
			t.Fatalf("named arg: %v", err)
		}
	})

	t.Run("cancellation", func(t *testing.T) {
		cctx, ccancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer ccancel()
		start := time.Now()
		_, err := db.ExecContext(cctx, `SELECT pg_sleep(30)`)
		if err == nil {
			t.Fatal("pg_sleep(30) was not cancelled")
		}
		if el := time.Since(start); el > 10*time.Second {
			t.Fatalf("cancellation took %v", el)
		}
		// the backend is not left running it
		waitFor(t, 20*time.Second, "pg_sleep gone from pg_stat_activity", func() bool {
			for _, c := range clusters {
				for _, n := range c.Nodes() {
					conn, err := n.Connect(ctx, "postgres")
					if err != nil {
						t.Fatal(err)
					}
					var k int
					err = conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'`).Scan(&k)
					conn.Close(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if k != 0 {
						return false
					}
				}
			}
			return true
		})
		// and the driver keeps working
		var one int
		if err := db.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil || one != 1 {
			t.Fatalf("after cancel: %v", err)
		}
	})

	t.Run("pool limits", func(t *testing.T) {
		db.SetMaxOpenConns(2)
		db.SetMaxIdleConns(1)
		db.SetConnMaxLifetime(time.Minute)
		defer db.SetMaxOpenConns(0)
		done := make(chan error, 8)
		for i := range 8 {
			go func() {
				var n int
				done <- db.QueryRowContext(ctx, `SELECT count(*) FROM users WHERE id = $1`, i+1).Scan(&n)
			}()
		}
		for range 8 {
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
		if s := db.Stats(); s.MaxOpenConnections != 2 || s.OpenConnections > 2 {
			t.Fatalf("stats %+v", s)
		}
		c1, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c2, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err = db.Conn(wctx)
		wcancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("third conn with MaxOpenConns=2: %v", err)
		}
		// session settings follow a *sql.Conn across backends
		if _, err := c1.ExecContext(ctx, `SET application_name = 'drv-test'`); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 5; i++ {
			var an string
			if err := c1.QueryRowContext(ctx, `SHOW application_name`).Scan(&an); err != nil || an != "drv-test" {
				t.Fatalf("application_name %q %v", an, err)
			}
			if err := c2.QueryRowContext(ctx, `SHOW application_name`).Scan(&an); err != nil || an == "drv-test" {
				t.Fatalf("c2 sees c1's setting: %q %v", an, err)
			}
		}
		c1.Close()
		c2.Close()
	})
}

// otherShardID returns a user id (1..40) on a different shard than id.
func otherShardID(t *testing.T, env *driverEnv, id int64) int64 {
	t.Helper()
	topo := env.conn.Topology()
	loc := func(v int64) int {
		s, err := topo.Locate("users", keyOf(v))
		if err != nil {
			t.Fatal(err)
		}
		return int(s)
	}
	for i := int64(1); i <= 40; i++ {
		if loc(i) != loc(id) {
			return i
		}
	}
	t.Fatal("all ids on one shard")
	return 0
}
