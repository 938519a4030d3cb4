package integration

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestProxyCommitPosition checks how the proxy learns a write
// transaction's commit position for the causal token, on real
// PostgreSQL with replay paused on the standby: a lone COMMIT (simple or
// extended protocol) or a write outside a transaction block has the
// position read in the same flush as the request (no round trip of its
// own), anything else with a query after the transaction; either way
// the token covers the commit, so another session holding it reads the
// write although the standby has not replayed it.
func TestProxyCommitPosition(t *testing.T) {
	ctx, clusters, env := newProxyTest(t, nil)
	setup, err := pgconn.Connect(ctx, env.dsn(""))
	if err != nil {
		t.Fatal(err)
	}
	defer setup.Close(context.Background())
	simple(t, setup, `CREATE TABLE clsn (id int PRIMARY KEY, v int NOT NULL, u int UNIQUE DEFERRABLE INITIALLY DEFERRED)`)
	simple(t, setup, `INSERT INTO clsn (id, v) SELECT g, 0 FROM generate_series(1, 10) g`)
	for _, c := range clusters {
		if err := c.WaitCaughtUp(ctx); err != nil {
			t.Fatal(err)
		}
	}
	primary := clusters[0].Primary() // clsn is unsharded: shard s0
	for _, sb := range clusters[0].Standbys() {
		if err := sb.PauseReplay(ctx); err != nil {
			t.Fatal(err)
		}
		defer sb.ResumeReplay(context.Background())
	}

	value := 0
	cases := []struct {
		name       string
		piggyback  bool // position read with the committing request
		run        func(t *testing.T, pc *pgconn.PgConn, v int)
		wantStatus byte
	}{
		{"simple BEGIN/UPDATE/COMMIT", true, func(t *testing.T, pc *pgconn.PgConn, v int) {
			simple(t, pc, "BEGIN")
			simple(t, pc, fmt.Sprintf("UPDATE clsn SET v = %d WHERE id = 1", v))
			simple(t, pc, "COMMIT")
		}, 'I'},
		{"simple END", true, func(t *testing.T, pc *pgconn.PgConn, v int) {
			simple(t, pc, "BEGIN")
			simple(t, pc, fmt.Sprintf("UPDATE clsn SET v = %d WHERE id = 1", v))
			simple(t, pc, "END")
		}, 'I'},
		{"extended BEGIN/UPDATE/COMMIT", true, func(t *testing.T, pc *pgconn.PgConn, v int) {
			extended(t, pc, "BEGIN")
			extended(t, pc, "UPDATE clsn SET v = $1 WHERE id = 1", fmt.Sprint(v))
			extended(t, pc, "COMMIT")
		}, 'I'},
		{"extended write outside a transaction", true, func(t *testing.T, pc *pgconn.PgConn, v int) {
			extended(t, pc, "UPDATE clsn SET v = $1 WHERE id = 1", fmt.Sprint(v))
		}, 'I'},
		{"simple write outside a transaction without literals", true, func(t *testing.T, pc *pgconn.PgConn, v int) {
			simple(t, pc, "SET application_name = 'clsn'")
			// The value travels as text: nothing to parameterize.
			simple(t, pc, fmt.Sprintf("UPDATE clsn SET v = '%d'::int WHERE id = '1'::int", v))
		}, 'I'},
		{"simple parameterized write outside a transaction (retryable)", false, func(t *testing.T, pc *pgconn.PgConn, v int) {
			simple(t, pc, fmt.Sprintf("UPDATE clsn SET v = %d WHERE id = 1", v))
		}, 'I'},
		{"COMMIT inside a multi-statement string", false, func(t *testing.T, pc *pgconn.PgConn, v int) {
			simple(t, pc, fmt.Sprintf("BEGIN; UPDATE clsn SET v = %d WHERE id = 1; COMMIT", v))
		}, 'I'},
		{"pipelined extended batch", true, func(t *testing.T, pc *pgconn.PgConn, v int) {
			b := &pgconn.Batch{}
			b.ExecParams("UPDATE clsn SET v = $1 WHERE id = 1", [][]byte{[]byte(fmt.Sprint(v))}, nil, nil, nil)
			b.ExecParams("SELECT v FROM clsn WHERE id = 1", nil, nil, nil, nil)
			res, err := pc.ExecBatch(ctx, b).ReadAll()
			if err != nil || len(res) != 2 || string(res[1].Rows[0][0]) != fmt.Sprint(v) {
				t.Fatalf("batch: %v %v", res, err)
			}
		}, 'I'},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pc := connectProxy(t, env)
			before := env.srv.Stats()
			value++
			tc.run(t, pc, value)
			after := env.srv.Stats()
			if pc.TxStatus() != tc.wantStatus {
				t.Fatalf("transaction status %c, want %c", pc.TxStatus(), tc.wantStatus)
			}
			piggy := after.CommitLSNPiggybacked - before.CommitLSNPiggybacked
			queries := after.CommitLSNQueries - before.CommitLSNQueries
			if tc.piggyback && (piggy != 1 || queries != 0) {
				t.Fatalf("position reads: %d piggybacked, %d by query; want 1, 0", piggy, queries)
			}
			if !tc.piggyback && (piggy != 0 || queries != 1) {
				t.Fatalf("position reads: %d piggybacked, %d by query; want 0, 1", piggy, queries)
			}
			tok := pc.ParameterStatus("dbproxy.causal_token")
			checkTokenCovers(t, ctx, primary.ConnString("app"), tok)
			readWithToken(t, ctx, env, tok, value)
		})
	}

	t.Run("COMMIT failing on a deferred constraint", func(t *testing.T) {
		pc := connectProxy(t, env)
		before := env.srv.Stats()
		simple(t, pc, "BEGIN")
		simple(t, pc, "UPDATE clsn SET u = 7 WHERE id IN (2, 3)")
		_, err := pc.Exec(ctx, "COMMIT").ReadAll()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
			t.Fatalf("COMMIT: %v, want SQLSTATE 23505", err)
		}
		if pc.TxStatus() != 'I' {
			t.Fatalf("status %c after the failed COMMIT", pc.TxStatus())
		}
		after := env.srv.Stats()
		if after.CommitLSNPiggybacked-before.CommitLSNPiggybacked != 1 {
			t.Fatalf("position not read with the COMMIT")
		}
		// The connection goes on normally, and nothing was committed.
		res := simple(t, pc, "SELECT count(*) FROM clsn WHERE u IS NOT NULL")
		if string(res[0].Rows[0][0]) != "0" {
			t.Fatalf("rows with u: %s", res[0].Rows[0][0])
		}
	})

	t.Run("ROLLBACK reads no position", func(t *testing.T) {
		pc := connectProxy(t, env)
		before := env.srv.Stats()
		simple(t, pc, "BEGIN")
		simple(t, pc, "UPDATE clsn SET v = -1 WHERE id = 1")
		simple(t, pc, "ROLLBACK")
		after := env.srv.Stats()
		// A rolled-back write still gets a (harmless) token through the
		// query path: the proxy does not know the transaction wrote
		// nothing durable.
		if p := after.CommitLSNPiggybacked - before.CommitLSNPiggybacked; p != 0 {
			t.Fatalf("%d positions piggybacked on a ROLLBACK", p)
		}
	})
}

func simple(t *testing.T, pc *pgconn.PgConn, sql string) []*pgconn.Result {
	t.Helper()
	res, err := pc.Exec(context.Background(), sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return res
}

func extended(t *testing.T, pc *pgconn.PgConn, sql string, args ...string) {
	t.Helper()
	params := make([][]byte, len(args))
	for i, a := range args {
		params[i] = []byte(a)
	}
	if r := pc.ExecParams(context.Background(), sql, params, nil, nil, nil).Read(); r.Err != nil {
		t.Fatalf("%s: %v", sql, r.Err)
	}
}

// checkTokenCovers asserts that causal token tok names shard s0 at a
// position the primary has reached (never ahead of it).
func checkTokenCovers(t *testing.T, ctx context.Context, primaryDSN, tok string) {
	t.Helper()
	tk, err := router.ParseCausalToken(tok)
	if err != nil {
		t.Fatalf("token %q: %v", tok, err)
	}
	lsn := tk.LSN("s0")
	if lsn == 0 {
		t.Fatalf("token %q has no position for s0", tok)
	}
	pc, err := pgconn.Connect(ctx, primaryDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(context.Background())
	res, err := pc.Exec(ctx, "SELECT pg_current_wal_lsn()").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	cur, err := replica.ParseLSN(string(res[0].Rows[0][0]))
	if err != nil {
		t.Fatal(err)
	}
	if uint64(lsn) > uint64(cur) {
		t.Fatalf("token position %v is ahead of the primary's %v", lsn, cur)
	}
}

// readWithToken reads row 1 on a new session holding tok: it must see
// value v (the standby, replay paused, has not).
func readWithToken(t *testing.T, ctx context.Context, env *proxyEnv, tok string, v int) {
	t.Helper()
	pc := connectProxy(t, env)
	simple(t, pc, "SET dbproxy.causal_token = '"+tok+"'")
	r := pc.ExecParams(ctx, "SELECT v FROM clsn WHERE id = 1", nil, nil, nil, nil).Read()
	if r.Err != nil || len(r.Rows) != 1 || string(r.Rows[0][0]) != fmt.Sprint(v) {
		t.Fatalf("read with token %s: %q %v, want %d", tok, r.Rows, r.Err, v)
	}
}

// connectProxy opens a pgconn connection through env's proxy, closed when
// the test ends.
func connectProxy(t *testing.T, env *proxyEnv) *pgconn.PgConn {
	t.Helper()
	pc, err := pgconn.Connect(env.ctx, env.dsn(""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close(context.Background()) })
	return pc
}
