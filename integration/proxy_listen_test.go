package integration

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/proxy"
	"github.com/jackc/pgx/v5/pgconn"
)

// listeningBackends selects the proxy's listening backends in
// pg_stat_activity (their last query is a LISTEN or UNLISTEN).
const listeningBackends = "FROM pg_stat_activity WHERE datname = 'app' AND query ~ '^(UN)?LISTEN ' AND pid <> pg_backend_pid()"

// notes is a client connection through the proxy with the notifications
// it received.
type notes struct {
	pc *pgconn.PgConn
	ch chan *pgconn.Notification
}

func connectListener(t *testing.T, env *proxyEnv) *notes {
	t.Helper()
	cfg, err := pgconn.ParseConfig(env.dsn(""))
	if err != nil {
		t.Fatal(err)
	}
	n := &notes{ch: make(chan *pgconn.Notification, 1000)}
	cfg.OnNotification = func(_ *pgconn.PgConn, m *pgconn.Notification) { n.ch <- m }
	n.pc, err = pgconn.ConnectConfig(env.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.pc.Close(context.Background()) })
	return n
}

// next returns the next notification, waiting up to 10 s for it.
func (n *notes) next(t *testing.T) *pgconn.Notification {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		select {
		case m := <-n.ch:
			return m
		default:
		}
		if err := n.pc.WaitForNotification(ctx); err != nil {
			select {
			case m := <-n.ch:
				return m
			default:
			}
			t.Fatalf("no notification: %v", err)
		}
	}
}

// expect checks that the next notification is channel/payload.
func (n *notes) expect(t *testing.T, channel, payload string) {
	t.Helper()
	m := n.next(t)
	if m.Channel != channel || m.Payload != payload {
		t.Fatalf("notification %s %q, want %s %q", m.Channel, m.Payload, channel, payload)
	}
}

// none checks that nothing arrived (the caller made sure anything sent
// would have arrived, with a marker notification).
func (n *notes) none(t *testing.T) {
	t.Helper()
	select {
	case m := <-n.ch:
		t.Fatalf("unexpected notification %s %q", m.Channel, m.Payload)
	default:
	}
}

// TestProxyListenNotify checks LISTEN/NOTIFY through the proxy in
// transaction pooling on two shards: notifications reach the clients
// listening (also from a NOTIFY on the other shard, in a transaction, on
// a client gone deep idle, after the extended protocol's LISTEN), never a
// client that shares a pooled backend; a LISTEN or UNLISTEN inside a
// transaction takes effect at COMMIT and not at ROLLBACK; the listening
// backend goes away with the last listener; a failed listening backend
// ends the listening clients with 08006 and a new LISTEN works again.
func TestProxyListenNotify(t *testing.T) {
	ctx, clusters, env := newProxyTest(t, nil)
	b := connectProxy(t, env) // the notifying client
	simple(t, b, "CREATE TABLE users (id int PRIMARY KEY)")

	a := connectListener(t, env)
	simple(t, a.pc, "LISTEN jobs")
	simple(t, a.pc, `LISTEN "Marker"`)
	simple(t, b, "NOTIFY jobs, 'one'")
	a.expect(t, "jobs", "one")
	if st := env.srv.Stats(); st.ListenChannels != 2 || st.ListenerShards != 2 {
		t.Fatalf("stats: %d channels, %d listening shards; want 2, 2", st.ListenChannels, st.ListenerShards)
	}
	if a.pc.PID() == 0 {
		t.Fatal("no backend key data")
	}

	// Other clients share the pool: none of them listens or hears.
	other := connectListener(t, env)
	for i := 0; i < 30; i++ {
		res := simple(t, other.pc, "SELECT count(*) FROM pg_listening_channels()")
		if got := string(res[0].Rows[0][0]); got != "0" {
			t.Fatalf("a pooled backend listens on %s channels", got)
		}
	}

	t.Run("notify on the other shard inside a transaction", func(t *testing.T) {
		simple(t, b, "BEGIN")
		simple(t, b, "INSERT INTO users (id) VALUES (5)") // shard s1
		simple(t, b, "NOTIFY jobs, 'two'")
		b2 := connectProxy(t, env)
		simple(t, b2, `NOTIFY "Marker", 'm1'`)
		a.expect(t, "Marker", "m1") // 'two' is not committed yet
		simple(t, b, "COMMIT")
		a.expect(t, "jobs", "two")
		simple(t, b, "SELECT pg_notify('jobs', 'three')")
		a.expect(t, "jobs", "three")
	})

	t.Run("LISTEN and UNLISTEN inside transactions", func(t *testing.T) {
		c := connectListener(t, env)
		simple(t, c.pc, "LISTEN mk")
		simple(t, c.pc, "BEGIN")
		simple(t, c.pc, "LISTEN rb")
		simple(t, c.pc, "ROLLBACK")
		simple(t, c.pc, "BEGIN")
		simple(t, c.pc, "SELECT * FROM users WHERE id = 5")
		simple(t, c.pc, "LISTEN late")
		simple(t, b, "NOTIFY late, 'early'")
		simple(t, c.pc, "COMMIT")
		simple(t, b, "NOTIFY rb, 'x'; NOTIFY late, 'after'; NOTIFY mk, 'm2'")
		c.expect(t, "late", "after")
		c.expect(t, "mk", "m2")
		c.none(t)

		simple(t, c.pc, "BEGIN")
		simple(t, c.pc, "UNLISTEN late")
		simple(t, c.pc, "ROLLBACK")
		simple(t, b, "NOTIFY late, 'kept'")
		c.expect(t, "late", "kept")
		simple(t, c.pc, "BEGIN")
		simple(t, c.pc, "UNLISTEN late")
		simple(t, c.pc, "COMMIT")
		simple(t, b, "NOTIFY late, 'gone'; NOTIFY mk, 'm3'")
		c.expect(t, "mk", "m3")
		c.none(t)

		simple(t, c.pc, "UNLISTEN *")
		simple(t, c.pc, "LISTEN mk")
		simple(t, c.pc, "DISCARD ALL")
		simple(t, c.pc, "LISTEN mk2")
		simple(t, b, "NOTIFY mk, 'dropped'; NOTIFY mk2, 'm4'")
		c.expect(t, "mk2", "m4")
		c.none(t)
	})

	t.Run("fan-out, self-notification, extended protocol, deep idle", func(t *testing.T) {
		c := connectListener(t, env)
		d := connectListener(t, env)
		simple(t, c.pc, "LISTEN fan")
		if r := d.pc.ExecParams(ctx, "LISTEN fan", nil, nil, nil, nil).Read(); r.Err != nil {
			t.Fatalf("extended LISTEN: %v", r.Err)
		}
		simple(t, c.pc, "NOTIFY fan, 'self'")
		c.expect(t, "fan", "self")
		d.expect(t, "fan", "self")
		time.Sleep(1500 * time.Millisecond) // past the deep-idle threshold
		simple(t, b, "NOTIFY fan, 'idle'")
		c.expect(t, "fan", "idle")
		d.expect(t, "fan", "idle")
	})

	t.Run("session pooling", func(t *testing.T) {
		senv := startProxyEnv(t, ctx, clusters, func(c *proxy.Config) { c.PoolMode = proxy.PoolSession })
		s := connectListener(t, senv)
		simple(t, s.pc, "LISTEN sess")
		// The session's own backend does not listen: the proxy does.
		if res := simple(t, s.pc, "SELECT count(*) FROM pg_listening_channels()"); string(res[0].Rows[0][0]) != "0" {
			t.Fatalf("the session's backend listens on %s channels", res[0].Rows[0][0])
		}
		sb := connectProxy(t, senv)
		simple(t, sb, "NOTIFY sess, 'held'")
		s.expect(t, "sess", "held")
	})

	t.Run("errors", func(t *testing.T) {
		_, err := b.Exec(ctx, "LISTEN x; SELECT 1").ReadAll()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "0A000" {
			t.Fatalf("LISTEN in a multi-statement string: %v, want 0A000", err)
		}
		simple(t, b, "BEGIN")
		if _, err := b.Exec(ctx, "SELECT 1/0").ReadAll(); err == nil {
			t.Fatal("no division by zero")
		}
		_, err = b.Exec(ctx, "LISTEN x").ReadAll()
		if !errors.As(err, &pgErr) || pgErr.Code != "25P02" {
			t.Fatalf("LISTEN in a failed transaction: %v, want 25P02", err)
		}
		simple(t, b, "ROLLBACK")
	})

	direct, err := pgconn.Connect(ctx, appConnString(clusters[1].Primary()))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	listenerPID := func() string {
		t.Helper()
		res := simple(t, direct, "SELECT coalesce(string_agg(pid::text, ','), '') "+listeningBackends)
		return string(res[0].Rows[0][0])
	}

	t.Run("a failed listening backend ends the listeners", func(t *testing.T) {
		pid := listenerPID()
		if pid == "" {
			t.Fatal("no listening backend on shard s1")
		}
		simple(t, direct, "SELECT pg_terminate_backend(pid) "+listeningBackends)
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		err := a.pc.WaitForNotification(ctx)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "08006" || pgErr.Severity != "FATAL" {
			t.Fatalf("listener after its backend failed: %v, want FATAL 08006", err)
		}
		e := connectListener(t, env)
		simple(t, e.pc, "LISTEN again")
		simple(t, b, "NOTIFY again, 'back'")
		e.expect(t, "again", "back")
	})

	t.Run("the listening backend goes with the last listener", func(t *testing.T) {
		// The listeners of the subtests above are closed (a's connection
		// was ended by the proxy); a fresh one comes and goes.
		f := connectListener(t, env)
		simple(t, f.pc, "LISTEN last")
		if listenerPID() == "" {
			t.Fatal("no listening backend while a client listens")
		}
		_ = f.pc.Close(ctx)
		deadline := time.Now().Add(10 * time.Second)
		for pid := listenerPID(); pid != ""; pid = listenerPID() {
			if time.Now().After(deadline) {
				t.Fatalf("listening backend %s still there 10 s after the last listener left", pid)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}
