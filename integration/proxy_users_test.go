package integration

import (
	"context"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/proxy"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/jackc/pgx/v5"
)

// TestProxyUsersLogInAsThemselves: every client's statements run on
// backend connections logged in as the client's own user to the client's
// own database, so PostgreSQL's privileges apply to it and not to the
// proxy's first user; the per-node pool bound holds across users.
func TestProxyUsersLogInAsThemselves(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	clusters := startProxyClusters(t, ctx)
	// onPrimaries runs qs as the superuser in database app of every
	// cluster's primary.
	onPrimaries := func(qs ...string) {
		t.Helper()
		for _, c := range clusters {
			conn, err := c.Primary().Connect(ctx, "app")
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range qs {
				if _, err := conn.Exec(ctx, q); err != nil {
					t.Fatalf("%s: %s: %v", c.Name(), q, err)
				}
			}
			conn.Close(ctx)
		}
	}
	onPrimaries(
		"CREATE ROLE reader LOGIN PASSWORD 'rpw'",
		"CREATE ROLE reader2 LOGIN PASSWORD 'rpw2'",
		"CREATE ROLE mismatch LOGIN PASSWORD 'right'",
		"CREATE ROLE outsider LOGIN PASSWORD 'opw'",
		"CREATE TABLE open_rows (id int PRIMARY KEY, v text)",
		"CREATE TABLE closed_rows (id int PRIMARY KEY, v text)",
		"ALTER TABLE open_rows OWNER TO app",
		"ALTER TABLE closed_rows OWNER TO app",
		"INSERT INTO open_rows VALUES (1, 'open')",
		"INSERT INTO closed_rows VALUES (1, 'closed')",
		"GRANT SELECT ON open_rows TO reader, reader2",
	)
	for _, c := range clusters {
		for _, db := range []string{"other", "other2"} {
			if err := c.CreateDatabase(ctx, db, "app", "app"); err != nil {
				t.Fatal(err)
			}
		}
	}
	onPrimaries("REVOKE CONNECT ON DATABASE other FROM PUBLIC", "GRANT CONNECT ON DATABASE other TO app, reader")
	for _, c := range clusters {
		if err := c.WaitCaughtUp(ctx); err != nil {
			t.Fatal(err)
		}
	}
	const poolSize = 2
	env := startProxyEnvWith(t, ctx, clusters, func(rc *replica.Config) { rc.PoolSize = poolSize }, func(c *proxy.Config) {
		c.Users = append(c.Users,
			proxy.User{Name: "reader", Password: "rpw"},
			proxy.User{Name: "reader2", Password: "rpw2"},
			proxy.User{Name: "mismatch", Password: "x", BackendPassword: "wrong"})
		c.Databases = []string{"app", "other"}
	}, func(d *proxy.Deps) { d.HomeDatabase = "app" })
	connectTo := func(user, password, db string) *pgx.Conn {
		t.Helper()
		conn, err := pgx.Connect(ctx, env.urlAs(user, password, db))
		if err != nil {
			t.Fatalf("connect as %s: %v", user, err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	connect := func(user, password string) *pgx.Conn { t.Helper(); return connectTo(user, password, "app") }
	app, reader, reader2 := connect("app", "app"), connect("reader", "rpw"), connect("reader2", "rpw2")

	for _, tc := range []struct {
		conn *pgx.Conn
		want string
	}{{app, "app"}, {reader, "reader"}, {reader2, "reader2"}} {
		for _, q := range []string{"SELECT current_user, pg_is_in_recovery()", "SELECT current_user, pg_is_in_recovery() /* dbproxy: primary */"} {
			var user string
			var standby bool
			if err := tc.conn.QueryRow(ctx, q).Scan(&user, &standby); err != nil {
				t.Fatalf("%s: %s: %v", tc.want, q, err)
			}
			if user != tc.want {
				t.Errorf("%s: %s ran as %q (standby %v)", tc.want, q, user, standby)
			}
		}
	}
	var v string
	if err := reader.QueryRow(ctx, "SELECT v FROM open_rows WHERE id = 1").Scan(&v); err != nil || v != "open" {
		t.Errorf("reader reads the table granted to it: %q, %v", v, err)
	}
	if err := reader.QueryRow(ctx, "SELECT v FROM closed_rows WHERE id = 1").Scan(&v); errCode(err) != "42501" {
		t.Errorf("reader reads a table it has no privilege on: %q, %v; want 42501", v, err)
	}
	if _, err := reader.Exec(ctx, "INSERT INTO open_rows VALUES (2, 'written')"); errCode(err) != "42501" {
		t.Errorf("reader inserts without the privilege: %v; want 42501", err)
	}
	if err := app.QueryRow(ctx, "SELECT v FROM closed_rows WHERE id = 1").Scan(&v); err != nil || v != "closed" {
		t.Errorf("the owner reads its table: %q, %v", v, err)
	}
	mismatch := connect("mismatch", "x") // the proxy accepts it; the server refuses the backend password
	if _, err := mismatch.Exec(ctx, "SELECT 1"); errCode(err) != "28P01" {
		t.Errorf("statement of a user whose backend password is wrong: %v; want the server's 28P01", err)
	}

	// A client of the second database works in it, on primaries and
	// standbys, and its notifications are that database's.
	other := connectTo("app", "app", "other")
	for _, q := range []string{"SELECT current_database()", "SELECT current_database() /* dbproxy: primary */"} {
		var db string
		if err := other.QueryRow(ctx, q).Scan(&db); err != nil || db != "other" {
			t.Errorf("%s from a client of database other: %q, %v", q, db, err)
		}
	}
	// Three users take turns on s0's primary, whose pool holds two
	// connections: an idle connection of one user is closed to make room
	// for another's.
	for i := 0; i < 3; i++ {
		for _, conn := range []*pgx.Conn{app, reader, reader2} {
			var user string
			if err := conn.QueryRow(ctx, "SELECT current_user /* dbproxy: primary */").Scan(&user); err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
		}
	}
	check, err := clusters[0].Primary().Connect(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	defer check.Close(ctx)
	var n int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if err := check.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE usename IN ('app', 'reader', 'reader2') AND application_name <> 'dbproxy-replica-probe'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n <= poolSize || time.Now().After(deadline) {
			break
		}
	}
	if n > poolSize {
		t.Errorf("%d backend connections from the proxy on s0's primary, pool size %d", n, poolSize)
	}

	// Each listening connection holds a slot of its primary's pool: a
	// proxy with room for them.
	lenv := startProxyEnvWith(t, ctx, clusters, nil, func(c *proxy.Config) {
		c.Users = append(c.Users,
			proxy.User{Name: "reader", Password: "rpw"},
			proxy.User{Name: "outsider", Password: "opw"},
			proxy.User{Name: "mismatch", Password: "x", BackendPassword: "wrong"})
		c.Databases = []string{"app", "other", "other2"}
	}, func(d *proxy.Deps) { d.HomeDatabase = "app" })
	env = lenv // connect and connectTo now reach it
	app, other, reader = connect("app", "app"), connectTo("app", "app", "other"), connect("reader", "rpw")
	for _, c := range []*pgx.Conn{other, app} {
		if _, err := c.Exec(ctx, "LISTEN ch"); err != nil {
			t.Fatalf("LISTEN: %v", err)
		}
	}
	// The proxy's own connections listen; a client the server would not
	// let in gets the server's refusal, not the database's notifications.
	outsider := connectTo("outsider", "opw", "other") // no CONNECT on other
	if _, err := outsider.Exec(ctx, "LISTEN ch"); errCode(err) != "42501" {
		t.Errorf("LISTEN of a user without CONNECT on the database: %v; want the server's 42501", err)
	}
	mismatch = connect("mismatch", "x")
	if _, err := mismatch.Exec(ctx, "LISTEN ch"); errCode(err) != "28P01" {
		t.Errorf("LISTEN of a user whose backend password is wrong: %v; want the server's 28P01", err)
	}
	notifier := connectTo("reader", "rpw", "other")
	if _, err := notifier.Exec(ctx, "NOTIFY ch, 'in other'"); err != nil {
		t.Fatal(err)
	}
	wait := func(c *pgx.Conn, d time.Duration) (string, error) {
		wctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		n, err := c.WaitForNotification(wctx)
		if err != nil {
			return "", err
		}
		return n.Payload, nil
	}
	if p, err := wait(other, 10*time.Second); err != nil || p != "in other" {
		t.Errorf("listener in database other: %q, %v; want the notification sent there", p, err)
	}
	if p, err := wait(outsider, 500*time.Millisecond); err == nil {
		t.Errorf("a user without CONNECT on database other got its notification %q", p)
	}
	if _, err := reader.Exec(ctx, "NOTIFY ch, 'in app'"); err != nil {
		t.Fatal(err)
	}
	if p, err := wait(app, 10*time.Second); err != nil || p != "in app" {
		t.Errorf("listener in database app: %q, %v; want only app's notification", p, err)
	}
	if p, err := wait(other, 500*time.Millisecond); err == nil {
		t.Errorf("listener in database other got %q, sent in app", p)
	}
	if _, err := other.Exec(ctx, "SELECT 1"); err != nil { // the timed-out wait cancelled nothing the proxy holds
		t.Fatalf("after the wait: %v", err)
	}

	// Another database's listening connections log in as the client whose
	// LISTEN started them, not as whoever listened there first: reader
	// starts other2's, leaves, and can no longer log in (its password
	// changed on the servers, its sessions ended); app's LISTEN there
	// still works.
	baseline := lenv.srv.Stats().ListenerShards
	first := connectTo("reader", "rpw", "other2")
	if _, err := first.Exec(ctx, "LISTEN ch2"); err != nil {
		t.Fatalf("LISTEN in other2: %v", err)
	}
	first.Close(ctx)
	for deadline := time.Now().Add(10 * time.Second); lenv.srv.Stats().ListenerShards != baseline; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("other2's listeners still running 10 s after their only client left: %+v", lenv.srv.Stats())
		}
	}
	onPrimaries("ALTER ROLE reader PASSWORD 'changed'", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'reader'")
	second := connectTo("app", "app", "other2")
	if _, err := second.Exec(ctx, "LISTEN ch2"); err != nil {
		t.Fatalf("LISTEN in other2 after its first listener's role changed: %v", err)
	}
	sender := connectTo("app", "app", "other2")
	if _, err := sender.Exec(ctx, "NOTIFY ch2, 'in other2'"); err != nil {
		t.Fatal(err)
	}
	if p, err := wait(second, 10*time.Second); err != nil || p != "in other2" {
		t.Errorf("listener in other2: %q, %v", p, err)
	}

}
