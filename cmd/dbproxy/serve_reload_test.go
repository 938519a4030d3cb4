package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestServeReload changes the [pool] table of a running `dbproxy serve`
// with SIGHUP and checks that the proxy acts on it: the pool bound and
// acquire timeout (a client over the bound gets 53300, then, after the
// bound is raised, its query runs), the backend connections' lifetime (a
// client's transactions move to new backends), the result cache turned on
// (its change streams start then), and a bad value is refused with a
// message naming the key.
func TestServeReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := pgcluster.StartT(t, pgcluster.Options{Name: "servereload", Standbys: 1})
	if err := c.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateDatabase(ctx, "app", "app", "app"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	cfg := config.Default()
	cfg.Server.Listen = addr
	sl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Server.StatusListen = sl.Addr().String()
	sl.Close()
	cfg.Server.Databases = []string{"app"}
	cfg.Users = []config.User{{Name: "app", Password: "app"}}
	p, s := c.Primary(), c.Standbys()[0]
	cfg.Shards = []config.Shard{{Name: "s0", Nodes: []config.Node{
		{Name: p.Name, Host: p.Host, Port: p.Port, Role: config.RolePrimary},
		{Name: s.Name, Host: s.Host, Port: s.Port, Role: config.RoleStandby},
	}}}
	cfg.Backend.SSLMode = "disable"
	cfg.Pool.Size = 2
	cfg.Pool.AcquireTimeout = config.Duration(300 * time.Millisecond)
	cfg.ApplyDefaults()
	path := filepath.Join(dir, "dbproxy.toml")
	write := func() { writeTestConfig(t, path, cfg) }
	write()
	_, output, stop := startCommandOut(t, []string{"serve", "--config", path}, func(out string) string {
		if m := regexp.MustCompile(`serve: listening on (\S+)`).FindStringSubmatch(out); m != nil {
			return m[1]
		}
		return ""
	})
	defer stop()
	reloads := 0
	// reload rewrites the file, sends SIGHUP and waits for the outcome.
	reload := func(want string) {
		t.Helper()
		write()
		reloads++
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			out := output()
			if n := strings.Count(out, "config reloaded") + strings.Count(out, "reload refused"); n >= reloads {
				if !strings.Contains(out, want) {
					t.Fatalf("after SIGHUP, want %q in the output:\n%s", want, out)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no reload outcome 30s after SIGHUP:\n%s", out)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	dsn := "postgres://app:app@" + addr + "/app?sslmode=disable"
	connect := func() *pgx.Conn {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	const pidQuery = "SELECT pg_backend_pid() /* dbproxy: primary */"
	pid := func(conn *pgx.Conn) int {
		var v int
		if err := conn.QueryRow(ctx, pidQuery).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}

	// Two clients in transactions hold both primary connections; a third
	// gets 53300 after the acquire timeout.
	a, b, third := connect(), connect(), connect()
	for _, conn := range []*pgx.Conn{a, b} {
		if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		pid(conn)
	}
	var pe *pgconn.PgError
	if _, err := third.Exec(ctx, pidQuery); !errors.As(err, &pe) || pe.Code != "53300" {
		t.Fatalf("a third client over pool.size = 2: %v, want 53300", err)
	}
	// pool.size = 3 and a longer acquire timeout: the third client's query runs.
	cfg.Pool.Size = 3
	cfg.Pool.AcquireTimeout = config.Duration(5 * time.Second)
	reload("config reloaded")
	pid(third)
	for _, conn := range []*pgx.Conn{a, b} {
		if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
			t.Fatal(err)
		}
	}

	// Without a lifetime limit a client's transactions reuse the pooled
	// backend; with max_lifetime, a backend older than it is replaced.
	first := pid(third)
	if again := pid(third); again != first {
		t.Fatalf("backend %d then %d with max_lifetime 1h (want the pooled one again)", first, again)
	}
	cfg.Pool.MaxLifetime = config.Duration(300 * time.Millisecond)
	reload("config reloaded")
	time.Sleep(500 * time.Millisecond)
	if again := pid(third); again == first {
		t.Fatalf("backend %d still used past max_lifetime", first)
	}

	// Turning the cache on starts its change stream. The user may not open
	// one yet (no REPLICATION attribute): the stream stays down and reads
	// go to the nodes; once it may, the stream comes up and reads are
	// served from the cache.
	cfg.Cache.Enabled = true
	reload("config reloaded")
	pid(third)
	if err := prepareCacheStream(ctx, c); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"CREATE TABLE reload_cached (id int PRIMARY KEY, v text)", "INSERT INTO reload_cached VALUES (1, 'x')"} {
		if _, err := third.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	hits := func() float64 {
		var rep struct {
			Cache struct{ Hits float64 } `json:"cache"`
		}
		getJSON(t, ctx, "http://"+cfg.Server.StatusListen+"/status", &rep)
		return rep.Cache.Hits
	}
	for deadline := time.Now().Add(30 * time.Second); hits() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no cache hit 30s after the cache was turned on by a reload")
		}
		var v string
		if err := third.QueryRow(ctx, "SELECT v FROM reload_cached WHERE id = 1").Scan(&v); err != nil || v != "x" {
			t.Fatalf("read: %q, %v", v, err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A bad value is refused like a bad file at startup.
	cfg.Pool.IdleTimeout = config.Duration(-time.Second)
	reload("reload refused")
	if out := output(); !strings.Contains(out, "pool.idle_timeout") {
		t.Fatalf("refusal does not name pool.idle_timeout:\n%s", out)
	}
}

// getJSON decodes the JSON that url answers into v.
func getJSON(t *testing.T, ctx context.Context, url string, v any) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}
