package integration

import (
	"context"
	"database/sql"
	"fmt"
	"math/big"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/driver"
	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/proxy"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/dbproxy/dbproxy/shard"
	"github.com/jackc/pgx/v5/pgconn"
)

// startConfigProxy runs an in-process proxy over the shards of cfg (its
// own router and replica sets built from the same config as the driver's,
// logging in to database db) on 127.0.0.1:0 and returns its address.
// Everything stops at cleanup.
func startConfigProxy(t *testing.T, ctx context.Context, cfg *config.Config, db string) string {
	t.Helper()
	topo, err := cfg.Topology()
	if err != nil {
		t.Fatal(err)
	}
	rc := router.DefaultConfig()
	rc.Topology = router.NewStaticTopology(topo)
	rc.MaxStaleness = cfg.Routing.MaxStaleness.D()
	r, err := router.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	sets := map[shard.ID]*replica.Set{}
	for _, si := range topo.Shards() {
		rcfg, err := cfg.ReplicaConfig(si.Name, "app", db)
		if err != nil {
			t.Fatal(err)
		}
		set, err := replica.NewSet(ctx, rcfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = set.Close(context.Background()) })
		sets[si.ID] = set
	}
	pc := proxy.DefaultConfig()
	pc.Users = []proxy.User{{Name: "app", Password: "app"}}
	pc.Databases = []string{db}
	pc.ShutdownTimeout = 5 * time.Second
	pc.MaxStaleness = cfg.Routing.MaxStaleness.D()
	srv, err := proxy.New(pc, proxy.Deps{Router: r, Shards: sets})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := srv.Close(cctx); err != nil {
			t.Errorf("proxy Close: %v", err)
		}
		<-done
	})
	return ln.Addr().String()
}

// TestDriverProxyCausalTokens moves causal tokens between the driver and
// the proxy in both directions while replay is paused on every standby: a
// read carrying the other side's token sees the write, where a read
// without it (and with a lax staleness bound) sees the stale standby.
func TestDriverProxyCausalTokens(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	clusters := startDriverClusters(t, ctx, "drvtok", 2, 1)
	cfg := driverConfig(t, clusters, "counters(id:int)", func(c *config.Config) {
		c.Routing.MaxStaleness = config.Duration(time.Hour) // only tokens keep reads fresh
	})
	env := openDriverEnv(t, clusters, cfg)
	addr := startConfigProxy(t, ctx, cfg, "app")
	proxyURL := fmt.Sprintf("postgres://app:app@%s/app?sslmode=disable", addr)

	if _, err := env.db.ExecContext(ctx, `CREATE TABLE counters (id int PRIMARY KEY, v bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for k := 0; k < 16; k++ {
		if _, err := env.db.ExecContext(ctx, `INSERT INTO counters (id, v) VALUES ($1, 0)`, k); err != nil {
			t.Fatal(err)
		}
	}
	var standbys []*pgcluster.Node
	for _, c := range clusters {
		if err := c.WaitStreaming(ctx); err != nil {
			t.Fatal(err)
		}
		standbys = append(standbys, c.Standbys()...)
	}
	// Let the standbys replay the inserts, then freeze them.
	waitFor(t, 30*time.Second, "standbys to replay the inserts", func() bool {
		var v int64
		err := env.db.QueryRowContext(ctx, `SELECT count(*) FROM counters`).Scan(&v)
		return err == nil && v == 16
	})
	for _, n := range standbys {
		if err := n.PauseReplay(ctx); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		for _, n := range standbys {
			_ = n.ResumeReplay(context.Background())
		}
	}()
	reader := openDriverEnv(t, clusters, cfg) // no session state shared with env

	t.Run("driver to proxy", func(t *testing.T) {
		wctx, tr := driver.WithCausalTracking(ctx)
		if _, err := env.db.ExecContext(wctx, `UPDATE counters SET v = 101 WHERE id = $1`, 3); err != nil {
			t.Fatal(err)
		}
		tok := tr.Token()
		if tok == "" {
			t.Fatal("no token")
		}
		// control: without the token the frozen standby answers
		var v int64
		if err := reader.db.QueryRowContext(ctx, `SELECT v FROM counters WHERE id = $1`, 3).Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v != 0 {
			t.Fatalf("control read saw %d: standbys are not frozen, the test proves nothing", v)
		}
		pc, err := pgconn.Connect(ctx, proxyURL)
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close(ctx)
		if _, err := pc.Exec(ctx, "SET dbproxy.causal_token = '"+tok+"'").ReadAll(); err != nil {
			t.Fatal(err)
		}
		res := pc.ExecParams(ctx, `SELECT v FROM counters WHERE id = $1`, [][]byte{[]byte("3")}, nil, nil, nil).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		if len(res.Rows) != 1 || string(res.Rows[0][0]) != "101" {
			t.Fatalf("proxy read with the driver's token %q saw %q", tok, res.Rows)
		}
	})

	t.Run("proxy to driver", func(t *testing.T) {
		pc, err := pgconn.Connect(ctx, proxyURL)
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close(ctx)
		if _, err := pc.ExecParams(ctx, `UPDATE counters SET v = 202 WHERE id = $1`, [][]byte{[]byte("9")}, nil, nil, nil).Close(); err != nil {
			t.Fatal(err)
		}
		tok := pc.ParameterStatus("dbproxy.causal_token")
		if tok == "" {
			t.Fatal("proxy sent no dbproxy.causal_token after a write")
		}
		var v int64
		if err := reader.db.QueryRowContext(ctx, `SELECT v FROM counters WHERE id = $1`, 9).Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v != 0 {
			t.Fatalf("control read saw %d: standbys are not frozen", v)
		}
		if err := reader.db.QueryRowContext(driver.WithCausalToken(ctx, tok), `SELECT v FROM counters WHERE id = $1`, 9).Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v != 202 {
			t.Fatalf("driver read with the proxy's token %q saw %d", tok, v)
		}
		// a malformed token is refused with 22023
		err = reader.db.QueryRowContext(driver.WithCausalToken(ctx, "garbage"), `SELECT v FROM counters WHERE id = $1`, 9).Scan(&v)
		var se interface{ SQLState() string }
		if err == nil || !asSQLState(err, &se) || se.SQLState() != "22023" {
			t.Fatalf("malformed token: %v", err)
		}
	})
}

func asSQLState(err error, target *interface{ SQLState() string }) bool {
	for e := err; e != nil; {
		if s, ok := e.(interface{ SQLState() string }); ok {
			*target = s
			return true
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		e = u.Unwrap()
	}
	return false
}

// TestDriverEquivalence runs one workload of writes, point reads,
// multi-shard reads (merges) and transactions against a single plain
// PostgreSQL holding every row (the oracle, through pgx's stdlib), through
// the driver over two shards, and through the proxy over the same shards,
// and requires identical results at every step.
func TestDriverEquivalence(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	clusters := startDriverClusters(t, ctx, "drveq", 2, 1)
	oracleCluster := startDriverClusters(t, ctx, "drveqoracle", 1, 0)[0]
	cfg := driverConfig(t, clusters, "items(id:int)", nil)
	env := openDriverEnv(t, clusters, cfg)
	// The proxy works on its own database of the same shards, so that the
	// driver's and the proxy's writes do not add up.
	for _, c := range clusters {
		if err := c.CreateDatabase(ctx, "app2", "app", "app"); err != nil {
			t.Fatal(err)
		}
	}
	addr := startConfigProxy(t, ctx, cfg, "app2")

	oracleDB := directDB(t, oracleCluster.Primary())
	proxyDB, err := sql.Open("pgx", fmt.Sprintf("postgres://app:app@%s/app2?sslmode=disable", addr))
	if err != nil {
		t.Fatal(err)
	}
	defer proxyDB.Close()

	const ddl = `CREATE TABLE items (id int PRIMARY KEY, cat text NOT NULL, qty int NOT NULL, price numeric(10,2))`
	for _, db := range []*sql.DB{oracleDB, env.db, proxyDB} {
		if _, err := db.ExecContext(ctx, ddl); err != nil {
			t.Fatal(err)
		}
	}
	// one session each, so that reads see the session's own writes
	conns := map[string]*sql.Conn{}
	for name, db := range map[string]*sql.DB{"oracle": oracleDB, "driver": env.db, "proxy": proxyDB} {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[name] = c
	}

	type step struct {
		query string
		args  []any
		read  bool
		tx    []step // a transaction of these steps (query is "COMMIT" or "ROLLBACK")
	}
	rng := rand.New(rand.NewPCG(7, 11))
	cats := []string{"red", "green", "blue", "grey"}
	id := func() int { return 1 + rng.IntN(120) }
	write := func() step {
		switch rng.IntN(4) {
		case 0, 1:
			return step{query: `INSERT INTO items (id, cat, qty, price) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET qty = excluded.qty, price = excluded.price`,
				args: []any{id(), cats[rng.IntN(len(cats))], rng.IntN(50), fmt.Sprintf("%d.%02d", rng.IntN(100), rng.IntN(100))}}
		case 2:
			return step{query: `UPDATE items SET qty = qty + $2 WHERE id = $1`, args: []any{id(), rng.IntN(10) - 5}}
		}
		return step{query: `DELETE FROM items WHERE id = $1`, args: []any{id()}}
	}
	reads := []func() step{
		func() step {
			return step{query: `SELECT id, cat, qty, price FROM items WHERE id = $1`, args: []any{id()}, read: true}
		},
		func() step {
			return step{query: `SELECT count(*), sum(qty), min(price), max(price), min(cat), max(cat) FROM items`, read: true}
		},
		func() step {
			return step{query: `SELECT cat, count(*), sum(qty), avg(qty), min(id), max(price) FROM items GROUP BY cat ORDER BY cat`, read: true}
		},
		func() step {
			return step{query: `SELECT id, qty FROM items ORDER BY qty DESC, id LIMIT 10 OFFSET 3`, read: true}
		},
		func() step {
			return step{query: `SELECT id, cat FROM items WHERE qty > $1 ORDER BY id`, args: []any{rng.IntN(40)}, read: true}
		},
		func() step {
			return step{query: `SELECT id, price FROM items WHERE id IN ($1, $2, $3) ORDER BY id`, args: []any{id(), id(), id()}, read: true}
		},
		func() step { return step{query: `SELECT avg(price), sum(price), count(price) FROM items`, read: true} },
		func() step {
			return step{query: `SELECT avg(id * 1000003), avg(qty::float8), sum(qty::int8), avg(price / 7) FROM items WHERE qty < $1`, args: []any{rng.IntN(60)}, read: true}
		},
	}
	var steps []step
	for i := 0; i < 600; i++ {
		switch r := rng.IntN(10); {
		case r < 4:
			steps = append(steps, write())
		case r < 9:
			steps = append(steps, reads[rng.IntN(len(reads))]())
		default:
			k := id()
			end := "COMMIT"
			if rng.IntN(3) == 0 {
				end = "ROLLBACK"
			}
			steps = append(steps, step{query: end, tx: []step{
				{query: `INSERT INTO items (id, cat, qty, price) VALUES ($1, 'tx', $2, 1.50) ON CONFLICT (id) DO UPDATE SET qty = excluded.qty`, args: []any{k, rng.IntN(50)}},
				{query: `UPDATE items SET qty = qty * 2 WHERE id = $1`, args: []any{k}},
				{query: `SELECT id, cat, qty FROM items WHERE id = $1`, args: []any{k}, read: true},
			}})
		}
	}

	run := func(c *sql.Conn, s step) string {
		if s.read {
			return queryString(ctx, c, s.query, s.args...)
		}
		r, err := c.ExecContext(ctx, s.query, s.args...)
		if err != nil {
			return "error: " + err.Error()
		}
		n, _ := r.RowsAffected()
		return fmt.Sprintf("affected %d", n)
	}
	runTx := func(c *sql.Conn, s step) string {
		tx, err := c.BeginTx(ctx, nil)
		if err != nil {
			return "begin error: " + err.Error()
		}
		var out []string
		for _, in := range s.tx {
			if in.read {
				out = append(out, queryString(ctx, tx, in.query, in.args...))
				continue
			}
			r, err := tx.ExecContext(ctx, in.query, in.args...)
			if err != nil {
				out = append(out, "error: "+err.Error())
				continue
			}
			n, _ := r.RowsAffected()
			out = append(out, fmt.Sprintf("affected %d", n))
		}
		if s.query == "COMMIT" {
			err = tx.Commit()
		} else {
			err = tx.Rollback()
		}
		return strings.Join(out, " | ") + fmt.Sprintf(" | %s %v", s.query, err)
	}
	// Lockstep: every step runs on the oracle, the driver and the proxy
	// before the next one; mismatches are collected per front end.
	mismatches := map[string][]string{}
	for i, s := range steps {
		got := map[string]string{}
		for _, name := range []string{"oracle", "driver", "proxy"} {
			if s.tx != nil {
				got[name] = runTx(conns[name], s)
			} else {
				got[name] = run(conns[name], s)
			}
		}
		for _, fe := range []string{"driver", "proxy"} {
			if comparable(fe, got[fe]) != comparable(fe, got["oracle"]) {
				mismatches[fe] = append(mismatches[fe], fmt.Sprintf("step %d %s %v:\n oracle: %s\n %s: %s", i, s.query, s.args, got["oracle"], fe, got[fe]))
			}
		}
	}
	// Final state: every row, through each front end.
	final := `SELECT id, cat, qty, price FROM items ORDER BY id`
	o := queryString(ctx, conns["oracle"], final)
	if !strings.Contains(o, "red") {
		t.Fatalf("workload left no rows: %s", o)
	}
	for _, fe := range []string{"driver", "proxy"} {
		t.Run(fe, func(t *testing.T) {
			for i, m := range mismatches[fe] {
				if i == 5 {
					t.Errorf("... and %d more mismatches", len(mismatches[fe])-5)
					break
				}
				t.Error(m)
			}
			if got := queryString(ctx, conns[fe], final); comparable(fe, got) != comparable(fe, o) {
				t.Errorf("final state differs:\n oracle: %s\n %s: %s", o, fe, got)
			}
		})
	}
}

// comparable picks what a front end must match: the driver returns the
// oracle's exact text (its own merges included); the proxy is compared on
// normalised numbers, as pgx's stdlib renders numeric its own way.
func comparable(frontEnd, rendered string) string {
	if frontEnd == "driver" {
		if i := strings.Index(rendered, " || "); i >= 0 {
			return rendered[:i]
		}
		return rendered
	}
	if i := strings.Index(rendered, " || "); i >= 0 {
		return rendered[i+4:]
	}
	return rendered
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// queryString renders a query's result as text: each value exactly as
// scanned into a string, then "||" and the same with numbers normalised
// (so that 2.50 and 2.5 compare equal: pgx's stdlib may drop trailing
// zeros of numeric values).
func queryString(ctx context.Context, q querier, query string, args ...any) string {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return "error: " + err.Error()
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var b, x strings.Builder
	b.WriteString(strings.Join(cols, ","))
	x.WriteString(strings.Join(cols, ","))
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return "scan error: " + err.Error()
		}
		b.WriteString(" [")
		x.WriteString(" [")
		for i, v := range vals {
			if i > 0 {
				b.WriteByte(' ')
				x.WriteByte(' ')
			}
			if v.Valid {
				x.WriteString(v.String)
			} else {
				x.WriteString("NULL")
			}
			switch {
			case !v.Valid:
				b.WriteString("NULL")
			default:
				if r, ok := new(big.Rat).SetString(v.String); ok && strings.ContainsAny(v.String, "0123456789") {
					b.WriteString(r.FloatString(10))
				} else {
					b.WriteString(v.String)
				}
			}
		}
		b.WriteByte(']')
		x.WriteByte(']')
	}
	if err := rows.Err(); err != nil {
		return "error: " + err.Error()
	}
	return x.String() + " || " + b.String()
}
