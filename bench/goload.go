package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	// The in-process driver target: registers database/sql driver "dbproxy".
	_ "github.com/dbproxy/dbproxy/driver"
	"github.com/dbproxy/dbproxy/shard"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// driverAvailable reports why the database/sql driver "dbproxy" cannot be
// used (nil when it is registered).
func driverAvailable() error {
	if slices.Contains(sql.Drivers(), "dbproxy") {
		return nil
	}
	return errors.New(`database/sql driver "dbproxy" is not registered in this build (package driver has no implementation yet)`)
}

// goOutput is what a Go workload measured.
type goOutput struct {
	ops        int64
	errors     int64
	firstErr   error
	reads      int64
	stale      int64
	misrouted  int64
	elapsed    time.Duration
	samples    []time.Duration
	notStarted error // the workload could not start (e.g. open failed)
}

// opener opens a *sql.DB for target t (wire targets through pgx's
// database/sql adapter with the simple protocol; the driver target through
// the "dbproxy" driver on the generated config).
func (e *env) openDB(t string) (*sql.DB, error) {
	if t == TargetDriver {
		return sql.Open("dbproxy", fmt.Sprintf("file=%s;user=%s;database=%s", e.dbproxyCfg, benchUser, benchDB))
	}
	ep, ok := e.endpoints[t]
	if !ok {
		return nil, fmt.Errorf("target %s is not running", t)
	}
	return openEndpoint(ep)
}

func openEndpoint(ep endpoint) (*sql.DB, error) {
	cc, err := pgx.ParseConfig(ep.connString())
	if err != nil {
		return nil, err
	}
	return stdlib.OpenDB(*cc), nil
}

// clientLoop runs n clients for d, each calling op in a loop with its own
// state; op returns the number of completed operations' latency samples via
// its return (ok=false: the op failed with err).
type clientStats struct {
	ops, errs, reads, stale int64
	samples                 []time.Duration
	firstErr                error
}

// record counts one finished operation: an error, or a success and its
// latency sample.
func (st *clientStats) record(err error, took time.Duration) {
	if err != nil {
		st.errs++
		if st.firstErr == nil {
			st.firstErr = err
		}
		return
	}
	st.ops++
	st.samples = append(st.samples, took)
}

func runClients(ctx context.Context, n int, d time.Duration, setup func(ctx context.Context, client int) (op func(ctx context.Context, st *clientStats) error, done func(), err error)) goOutput {
	rctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	stats := make([]clientStats, n)
	var wg sync.WaitGroup
	var setupErr atomic.Pointer[error]
	var ready sync.WaitGroup
	ready.Add(n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			op, done, err := setup(ctx, i)
			ready.Done()
			if err != nil {
				setupErr.CompareAndSwap(nil, &err)
				return
			}
			defer done()
			<-start
			st := &stats[i]
			for rctx.Err() == nil {
				t0 := time.Now()
				err := op(rctx, st)
				if rctx.Err() != nil {
					break // the run ended mid-operation: not counted
				}
				st.record(err, time.Since(t0))
			}
		}()
	}
	ready.Wait()
	began := time.Now()
	close(start)
	wg.Wait()
	out := goOutput{elapsed: min(time.Since(began), d)}
	if p := setupErr.Load(); p != nil {
		out.notStarted = *p
		return out
	}
	for _, st := range stats {
		out.ops += st.ops
		out.errors += st.errs
		out.reads += st.reads
		out.stale += st.stale
		out.samples = append(out.samples, st.samples...)
		if out.firstErr == nil {
			out.firstErr = st.firstErr
		}
	}
	return out
}

// runPointSelect: each client reads the balance of a random account
// (pgbench -S's query) through database/sql; a read-only statement outside
// a transaction, which dbproxy and the driver may send to a standby.
func (e *env) runPointSelect(ctx context.Context, t string, w Workload, d time.Duration) goOutput {
	db, err := e.openDB(t)
	if err != nil {
		return goOutput{notStarted: err}
	}
	defer db.Close()
	db.SetMaxOpenConns(w.Clients)
	db.SetMaxIdleConns(w.Clients)
	accounts := int64(e.cfg.Scale) * 100000
	return runClients(ctx, w.Clients, d, func(ctx context.Context, client int) (func(context.Context, *clientStats) error, func(), error) {
		rng := rand.New(rand.NewPCG(uint64(client), uint64(time.Now().UnixNano())))
		op := func(ctx context.Context, st *clientStats) error {
			var bal int64
			return db.QueryRowContext(ctx, "SELECT abalance FROM pgbench_accounts WHERE aid = $1", rng.Int64N(accounts)+1).Scan(&bal)
		}
		return op, func() {}, nil
	})
}

// runReadAfterWrite: each client, on one session (a pinned connection),
// writes a new value to one of its own keys of raw_kv and reads the key back
// at once; a read that does not return the value just written is stale.
// One operation = the write and the read.
func (e *env) runReadAfterWrite(ctx context.Context, t string, w Workload, d time.Duration) goOutput {
	db, err := e.openDB(t)
	if err != nil {
		return goOutput{notStarted: err}
	}
	defer db.Close()
	db.SetMaxOpenConns(w.Clients)
	db.SetMaxIdleConns(w.Clients)
	return runClients(ctx, w.Clients, d, func(ctx context.Context, client int) (func(context.Context, *clientStats) error, func(), error) {
		conn, err := db.Conn(ctx)
		if err != nil {
			return nil, nil, err
		}
		base := int64((client + 1) * rawKeysPerClient)
		var seq int64 = time.Now().UnixNano() // distinct from every earlier run's values
		op := func(ctx context.Context, st *clientStats) error {
			seq++
			key := base + seq%rawKeysPerClient
			if _, err := conn.ExecContext(ctx, "UPDATE raw_kv SET v = $1 WHERE k = $2", seq, key); err != nil {
				return err
			}
			var got int64
			if err := conn.QueryRowContext(ctx, "SELECT v FROM raw_kv WHERE k = $1", key).Scan(&got); err != nil {
				return err
			}
			st.reads++
			if got != seq {
				st.stale++
			}
			return nil
		}
		return op, func() { conn.Close() }, nil
	})
}

// runShardWrites: each client upserts random ids of kv_sharded. Through
// dbproxy and the driver the statement is routed by its key; direct, the
// client computes the shard with package shard (the same topology) and
// writes to that shard's primary.
func (e *env) runShardWrites(ctx context.Context, t string, w Workload, d time.Duration) goOutput {
	const upsert = "INSERT INTO " + shardedTable + " (id, v) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v"
	var dbs []*sql.DB // one per shard (direct), or one for all
	closeAll := func() {
		for _, db := range dbs {
			db.Close()
		}
	}
	defer closeAll()
	if t == TargetDirect {
		for _, si := range e.topo.Shards() {
			db, err := openEndpoint(e.shardPrimary(si.ID))
			if err != nil {
				return goOutput{notStarted: err}
			}
			db.SetMaxIdleConns(w.Clients)
			dbs = append(dbs, db)
		}
	} else {
		db, err := e.openDB(t)
		if err != nil {
			return goOutput{notStarted: err}
		}
		db.SetMaxIdleConns(w.Clients)
		dbs = append(dbs, db)
	}
	out := runClients(ctx, w.Clients, d, func(ctx context.Context, client int) (func(context.Context, *clientStats) error, func(), error) {
		rng := rand.New(rand.NewPCG(uint64(client), uint64(time.Now().UnixNano())))
		op := func(ctx context.Context, st *clientStats) error {
			id := rng.Int64N(shardKeySpace) + 1
			db := dbs[0]
			if t == TargetDirect {
				sid, err := e.topo.Locate(shardedTable, shard.KeyFromInt(id))
				if err != nil {
					return err
				}
				db = dbs[sid]
			}
			_, err := db.ExecContext(ctx, upsert, id, rng.Int64())
			return err
		}
		return op, func() {}, nil
	})
	if out.notStarted == nil {
		out.misrouted, out.notStarted = e.countMisrouted(ctx)
	}
	return out
}

// countMisrouted counts rows of kv_sharded stored on a shard the topology
// does not map their id to, then empties the table on every shard for the
// next run.
func (e *env) countMisrouted(ctx context.Context) (int64, error) {
	var bad int64
	for _, si := range e.topo.Shards() {
		conn, err := pgx.Connect(ctx, e.shardPrimary(si.ID).connString())
		if err != nil {
			return 0, err
		}
		rows, err := conn.Query(ctx, "SELECT id FROM "+shardedTable)
		if err != nil {
			conn.Close(ctx)
			return 0, err
		}
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				conn.Close(ctx)
				return 0, err
			}
			if got, _ := e.topo.Locate(shardedTable, shard.KeyFromInt(id)); got != si.ID {
				bad++
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			conn.Close(ctx)
			return 0, err
		}
		_, err = conn.Exec(ctx, "TRUNCATE "+shardedTable)
		conn.Close(ctx)
		if err != nil {
			return 0, err
		}
	}
	return bad, nil
}

// runConnStorm opens total short-lived connections with w.Clients workers:
// connect (full authentication), SELECT 1, close. One operation = one
// connection. Runs until total connections were made (not for a duration).
func (e *env) runConnStorm(ctx context.Context, t string, w Workload, total int) goOutput {
	ep, ok := e.endpoints[t]
	if !ok {
		return goOutput{notStarted: fmt.Errorf("target %s is not running", t)}
	}
	cs := ep.wireConnString()
	var next atomic.Int64
	stats := make([]clientStats, w.Clients)
	var wg sync.WaitGroup
	began := time.Now()
	for i := range w.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := &stats[i]
			for next.Add(1) <= int64(total) && ctx.Err() == nil {
				t0 := time.Now()
				st.record(oneConnection(ctx, cs), time.Since(t0))
			}
		}()
	}
	wg.Wait()
	out := goOutput{elapsed: time.Since(began)}
	for _, st := range stats {
		out.ops += st.ops
		out.errors += st.errs
		out.samples = append(out.samples, st.samples...)
		if out.firstErr == nil {
			out.firstErr = st.firstErr
		}
	}
	return out
}

func oneConnection(ctx context.Context, connString string) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := pgconn.Connect(cctx, connString)
	if err != nil {
		return err
	}
	_, err = c.Exec(cctx, "SELECT 1").ReadAll()
	if cerr := c.Close(cctx); err == nil {
		err = cerr
	}
	return err
}
