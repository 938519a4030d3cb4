package driver

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/config"
)

var testDSNs = []string{
	"file=/etc/dbproxy.toml",
	"file=/etc/dbproxy.toml;user=app;database=app",
	"file=/etc/dbproxy.toml;user=app;database=app;cache=on",
	"shards=s0:127.0.0.1:5432;user=app;password=app;database=app",
	"shards=s0:127.0.0.1:5432|127.0.0.1:5433,s1:p1@10.0.0.2:5432|r1@10.0.0.3:5432*3;user=app;password=p%3Bw%25d;database=app;tables=users(id:int),orders(tenant:text,id:uuid)",
	"shards=s0:[::1]:5432|[::1]:5433;user=u;password=x;database=d;default_shard=s0;balance=least_latency;max_staleness=250ms;catch_up_wait=10ms;acquire_timeout=2s;health_interval=1s;lag_interval=50ms;probe_timeout=900ms;pool_size=7",
	"shards=s0:127.0.0.1:5432;user=app;password=app;database=app;cache=off",
	"shards=s0:p@/var/run/postgresql:5432|127.0.0.1:5433;user=app;password=app;database=app",
}

func TestParseDSNInline(t *testing.T) {
	d, err := ParseDSN(testDSNs[4])
	if err != nil {
		t.Fatal(err)
	}
	want := &DSN{
		User: "app", Password: "p;w%d", Database: "app",
		Shards: []DSNShard{
			{Name: "s0", Nodes: []DSNNode{{Host: "127.0.0.1", Port: 5432}, {Host: "127.0.0.1", Port: 5433}}},
			{Name: "s1", Nodes: []DSNNode{{Name: "p1", Host: "10.0.0.2", Port: 5432}, {Name: "r1", Host: "10.0.0.3", Port: 5432, Weight: 3}}},
		},
		Tables: []DSNTable{
			{Name: "users", Columns: []string{"id"}, Types: []config.KeyType{config.KeyInt}},
			{Name: "orders", Columns: []string{"tenant", "id"}, Types: []config.KeyType{config.KeyText, config.KeyUUID}},
		},
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("got %+v\nwant %+v", d, want)
	}
	cfg, err := d.Config()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Shards) != 2 || cfg.Shards[0].Nodes[0].Name != "s0-primary" || cfg.Shards[0].Nodes[1].Name != "s0-standby1" ||
		cfg.Shards[0].Nodes[0].Role != config.RolePrimary || cfg.Shards[1].Nodes[1].Role != config.RoleStandby || cfg.Shards[1].Nodes[1].Weight != 3 {
		t.Fatalf("shards %+v", cfg.Shards)
	}
	if u, ok := cfg.User("app"); !ok || u.Password != "p;w%d" {
		t.Fatalf("user %+v", u)
	}
	if cfg.Routing.DefaultShard != "s0" || len(cfg.Tables) != 2 {
		t.Fatalf("routing %+v tables %+v", cfg.Routing, cfg.Tables)
	}
	if _, err := cfg.Topology(); err != nil {
		t.Fatal(err)
	}
}

// TestParseDSNSocket: a node given by its Unix-socket directory.
func TestParseDSNSocket(t *testing.T) {
	d := mustDSN(t, testDSNs[7])
	cfg, err := d.Config()
	if err != nil {
		t.Fatal(err)
	}
	if n := cfg.Shards[0].Nodes[0]; n.Name != "p" || n.Host != "/var/run/postgresql" || n.Port != 5432 || !n.IsSocket() {
		t.Fatalf("node %+v", n)
	}
	if _, err := ParseDSN("shards=s0:run/pg:5432;user=app;password=app;database=app"); err != nil {
		t.Fatal(err) // parses; the config check refuses it
	}
	if _, err := mustDSN(t, "shards=s0:run/pg:5432;user=app;password=app;database=app").Config(); err == nil || !strings.Contains(err.Error(), "absolute path") {
		t.Fatalf("relative socket directory: %v", err)
	}
}

func TestParseDSNOptions(t *testing.T) {
	d, err := ParseDSN(testDSNs[5])
	if err != nil {
		t.Fatal(err)
	}
	if d.Balance != config.LeastLatency || d.MaxStaleness != 250*time.Millisecond || d.PoolSize != 7 || d.Shards[0].Nodes[1].Host != "::1" {
		t.Fatalf("%+v", d)
	}
	cfg, err := d.Config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Routing.Balance != config.LeastLatency || cfg.Routing.MaxStaleness.D() != 250*time.Millisecond ||
		cfg.Routing.CatchUpWait.D() != 10*time.Millisecond || cfg.Pool.Size != 7 || cfg.Pool.AcquireTimeout.D() != 2*time.Second {
		t.Fatalf("config %+v %+v", cfg.Routing, cfg.Pool)
	}
}

func TestParseDSNErrors(t *testing.T) {
	for _, s := range []string{
		"",
		"user=app",
		"bogus=1;file=x",
		"file=x;file=y",
		"file=x;shards=s0:h:1",
		"file=x;password=p",
		"file=",
		"shards=s0",
		"shards=s0:host",
		"shards=s0:host:0",
		"shards=s0:host:70000",
		"shards=s 0:host:1",
		"shards=s0:a,b@host:1",
		"shards=s0:host:1*0",
		"shards=s0:h:1;tables=users",
		"shards=s0:h:1;tables=users(id)",
		"shards=s0:h:1;tables=users(id:float)",
		"shards=s0:h:1;tables=users(id:int)x",
		"shards=s0:h:1;max_staleness=soon",
		"shards=s0:h:1;max_staleness=-1s",
		"shards=s0:h:1;pool_size=-2",
		"shards=s0:h:1;balance=random",
		"shards=s0:h:1;cache=maybe",
		"shards=s0:h:1;user=%zz",
		"novalue",
	} {
		if _, err := ParseDSN(s); !errors.Is(err, ErrBadDSN) {
			t.Errorf("ParseDSN(%q) = %v, want ErrBadDSN", s, err)
		}
	}
	// parses, but the config is inconsistent
	for _, s := range []string{
		"shards=s0:h:1;database=app",                        // no user
		"shards=s0:h:1;user=app;password=app",               // no database
		"shards=s0:h:1,s0:h:2;user=a;password=a;database=a", // duplicate shard
		"shards=s0:h:1;user=a;password=a;database=a;default_shard=s9",
		"shards=s0:h:1;user=a;password=a;database=a;sslmode=verify",                     // not an sslmode
		"shards=s0:h:1;user=a;password=a;database=a;sslmode=verify-full;sslcert=c.pem",  // sslkey missing
		"shards=s0:h:1;user=a;password=a;database=a;sslmode=disable;sslrootcert=ca.pem", // no effect
	} {
		d, err := ParseDSN(s)
		if err != nil {
			t.Errorf("ParseDSN(%q): %v", s, err)
			continue
		}
		if _, err := d.Config(); err == nil {
			t.Errorf("Config of %q: no error", s)
		}
	}
}

func TestDSNRoundTrip(t *testing.T) {
	for _, s := range testDSNs {
		d, err := ParseDSN(s)
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		d2, err := ParseDSN(d.String())
		if err != nil {
			t.Fatalf("reparse %q: %v", d.String(), err)
		}
		if !reflect.DeepEqual(d, d2) {
			t.Fatalf("round trip of %q:\n%+v\n%+v", s, d, d2)
		}
	}
}

func TestOpenConnectorErrors(t *testing.T) {
	drv := &Driver{}
	if _, err := drv.OpenConnector("nonsense"); !errors.Is(err, ErrBadDSN) {
		t.Fatalf("bad DSN: %v", err)
	}
	if _, err := drv.OpenConnector("file=/nonexistent/dbproxy.toml"); err == nil {
		t.Fatal("missing config file accepted")
	}
	c, err := drv.OpenConnector("shards=s0:127.0.0.1:1;user=app;password=app;database=app")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.(*Connector).Close(); err != nil {
		t.Fatal(err)
	}
	cfg, _ := mustDSN(t, "shards=s0:127.0.0.1:1;user=app;password=app;database=app").Config()
	if _, err := NewConnector(cfg, WithUser("nobody")); err == nil || !strings.Contains(err.Error(), "nobody") {
		t.Fatalf("unknown user: %v", err)
	}
	if _, err := NewConnector(cfg, WithDatabase("other")); err == nil {
		t.Fatal("unknown database accepted")
	}
	if _, err := NewConnector(nil); err == nil {
		t.Fatal("nil config accepted")
	}
}

func mustDSN(t *testing.T, s string) *DSN {
	t.Helper()
	d, err := ParseDSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// FuzzDSN checks that ParseDSN never panics and that parse → format →
// parse gives back the same DSN.
func FuzzDSN(f *testing.F) {
	for _, s := range testDSNs {
		f.Add(s)
	}
	f.Add("shards=a:h:1;user=%20x%20")
	f.Add("shards=a:[fe80::1]:5;tables=t(a:int,b:text)")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDSN(s)
		if err != nil {
			if !errors.Is(err, ErrBadDSN) {
				t.Fatalf("error does not wrap ErrBadDSN: %v", err)
			}
			return
		}
		out := d.String()
		d2, err := ParseDSN(out)
		if err != nil {
			t.Fatalf("reparse of %q (from %q): %v", out, s, err)
		}
		if !reflect.DeepEqual(d, d2) {
			t.Fatalf("round trip of %q via %q:\n%#v\n%#v", s, out, d, d2)
		}
		if d.File == "" {
			_, _ = d.Config() // must not panic (the file form would read arbitrary paths)
		}
	})
}

// TestDSNBackendTLS: the inline TLS keys reach [backend]; the file form's
// relative [backend] paths are taken from the config file's directory.
func TestDSNBackendTLS(t *testing.T) {
	d, err := ParseDSN("shards=s0:h:1;user=a;password=a;database=a;sslmode=verify-full;sslrootcert=/etc/ca.pem;sslcert=/etc/c.pem;sslkey=/etc/k.pem")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := d.Config()
	if err != nil {
		t.Fatal(err)
	}
	if want := (config.Backend{SSLMode: "verify-full", SSLRootCert: "/etc/ca.pem", SSLCert: "/etc/c.pem", SSLKey: "/etc/k.pem"}); cfg.Backend != want {
		t.Errorf("backend %+v, want %+v", cfg.Backend, want)
	}
	if d2, err := ParseDSN(d.String()); err != nil || !reflect.DeepEqual(d, d2) {
		t.Errorf("round trip: %+v, %v", d2, err)
	}
	d, _ = ParseDSN("shards=s0:h:1;user=a;password=a;database=a")
	if cfg, err := d.Config(); err != nil {
		t.Fatal(err)
	} else if cfg.Backend.SSLMode != "prefer" {
		t.Errorf("default sslmode %q, want prefer", cfg.Backend.SSLMode)
	}

	dir := t.TempDir()
	text := "[server]\ndatabases = [\"app\"]\n[[users]]\nname = \"app\"\npassword = \"app\"\n" +
		"[[shards]]\nname = \"s0\"\n  [[shards.nodes]]\n  name = \"p\"\n  host = \"127.0.0.1\"\n  port = 5432\n  role = \"primary\"\n" +
		"[backend]\nsslmode = \"verify-ca\"\nsslrootcert = \"certs/ca.pem\"\n"
	if err := os.WriteFile(filepath.Join(dir, "db.toml"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err = ParseDSN("file=" + filepath.Join(dir, "db.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err := d.Config(); err != nil {
		t.Fatal(err)
	} else if cfg.Backend.SSLRootCert != filepath.Join(dir, "certs/ca.pem") {
		t.Errorf("file form sslrootcert %q; want it under the file's directory", cfg.Backend.SSLRootCert)
	}
}
