package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/proxy"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/shard"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestProxyPreparesUnderPoolPressure: with every backend of the primary
// held by open transactions, a prepare-only request (Parse + Sync, as
// libpq's PQprepare sends) is answered at once instead of waiting for a
// backend (a client program blocked on it could be the one holding them),
// and the statement works on first use once a backend is free; a prepare
// that needs the server's answer (Parse + Describe + Sync) gets 53300 and
// its ReadyForQuery when the pool stays exhausted.
func TestProxyPreparesUnderPoolPressure(t *testing.T) {
	ctx, clusters, env := newProxyTest(t, func(c *proxy.Config) {})
	// A second set of replica sets with a pool of 2 and a short acquire
	// timeout, and a proxy over them.
	sets := map[shard.ID]*replica.Set{}
	for i, c := range clusters {
		rc := replica.DefaultConfig()
		rc.Nodes = []replica.NodeConfig{{Name: fmt.Sprintf("s%d-primary", i), ConnString: appConnString(c.Primary()), Role: replica.RolePrimary}}
		rc.PoolSize = 2
		rc.AcquireTimeout = 500 * time.Millisecond
		set, err := replica.NewSet(ctx, rc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = set.Close(context.Background()) })
		sets[shard.ID(i)] = set
	}
	small := startProxyEnv(t, ctx, clusters, nil, func(d *proxy.Deps) { d.Shards = sets })
	setup, err := pgconn.Connect(ctx, env.dsn(""))
	if err != nil {
		t.Fatal(err)
	}
	defer setup.Close(context.Background())
	for _, sql := range []string{`CREATE TABLE pp_t (id int PRIMARY KEY, v text)`, `INSERT INTO pp_t VALUES (1, 'one')`} {
		if _, err := setup.Exec(ctx, sql).ReadAll(); err != nil {
			t.Fatal(err)
		}
	}
	connect := func() *pgconn.PgConn {
		pc, err := pgconn.Connect(ctx, small.dsn(""))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = pc.Close(context.Background()) })
		return pc
	}
	// Two transactions hold both backends.
	var holders []*pgconn.PgConn
	for i := 0; i < 2; i++ {
		h := connect()
		if _, err := h.Exec(ctx, "BEGIN; SELECT txid_current()").ReadAll(); err != nil {
			t.Fatal(err)
		}
		holders = append(holders, h)
	}

	pc := connect()
	// Parse + Sync, as PQprepare sends.
	fr := pc.Frontend()
	fr.Send(&pgproto3.Parse{Name: "pp_get", Query: "SELECT v FROM pp_t WHERE id = $1", ParameterOIDs: []uint32{23}})
	fr.Send(&pgproto3.Sync{})
	if err := fr.Flush(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var got []string
	for {
		rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
		msg, err := pc.ReceiveMessage(rctx)
		rcancel()
		if err != nil {
			t.Fatalf("prepare under pool pressure: %v after %v (got %v)", err, time.Since(start), got)
		}
		got = append(got, fmt.Sprintf("%T", msg))
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if strings.Join(got, ",") != "*pgproto3.ParseComplete,*pgproto3.ReadyForQuery" {
		t.Fatalf("prepare answered %v", got)
	}

	// Parse + Describe + Sync needs the server: 53300 and ReadyForQuery.
	_, err = pc.Prepare(ctx, "pp_desc", "SELECT v FROM pp_t WHERE id = $1", nil)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" {
		t.Fatalf("prepare with describe while the pool is exhausted: %v", err)
	}

	// Free the backends: the statement prepared without a backend runs.
	for _, h := range holders {
		if _, err := h.Exec(ctx, "COMMIT").ReadAll(); err != nil {
			t.Fatal(err)
		}
	}
	res := pc.ExecPrepared(ctx, "pp_get", [][]byte{[]byte("1")}, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "one" {
		t.Fatalf("first use of the statement: %v %q", res.Err, res.Rows)
	}
	// With a backend free, a prepare gets the server's own answer.
	fr.Send(&pgproto3.Parse{Name: "pp_bad", Query: "SELECT v FROM pp_missing WHERE id = $1", ParameterOIDs: []uint32{23}})
	fr.Send(&pgproto3.Sync{})
	if err := fr.Flush(); err != nil {
		t.Fatal(err)
	}
	code := ""
	for {
		msg, err := pc.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			code = e.Code
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if code != "42P01" {
		t.Fatalf("prepare of an unknown table with a backend free: SQLSTATE %q, want 42P01 at once", code)
	}
}
