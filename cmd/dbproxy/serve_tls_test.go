package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/proxy"
	"github.com/jackc/pgx/v5"
)

// TestServeBackendTLS runs `dbproxy serve` in front of a cluster (primary
// and hot standby) whose pg_hba.conf accepts user app only over TLS, with
// [backend] settings read from the config file.
func TestServeBackendTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	certPEM, keyPEM, err := proxy.GenerateSelfSignedCert(nil) // 127.0.0.1 among its names
	if err != nil {
		t.Fatal(err)
	}
	c := pgcluster.StartT(t, pgcluster.Options{Name: "backendtls", Standbys: 1, TLS: &pgcluster.TLS{CertPEM: certPEM, KeyPEM: keyPEM, Only: true}})
	if err := c.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateDatabase(ctx, "app", "app", "app"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "certs"), 0o755); err != nil {
		t.Fatal(err)
	}
	otherCA, _, err := proxy.GenerateSelfSignedCert(nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, pem := range map[string][]byte{"ca.pem": certPEM, "other-ca.pem": otherCA} {
		if err := os.WriteFile(filepath.Join(dir, "certs", name), pem, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// serve starts the proxy with [backend] b and returns a connection to it.
	serve := func(t *testing.T, b config.Backend) *pgx.Conn {
		t.Helper()
		cfg := config.Default()
		cfg.Server.Listen = "127.0.0.1:0"
		cfg.Server.StatusListen = ""
		cfg.Server.Databases = []string{"app"}
		cfg.Users = []config.User{{Name: "app", Password: "app"}}
		sh := config.Shard{Name: "s0"}
		for i, n := range c.Nodes() {
			role := config.RoleStandby
			if i == 0 {
				role = config.RolePrimary
			}
			sh.Nodes = append(sh.Nodes, config.Node{Name: n.Name, Host: n.Host, Port: n.Port, Role: role})
		}
		cfg.Shards = []config.Shard{sh}
		cfg.Routing.ProbeTimeout = config.Duration(2 * time.Second)
		cfg.Backend = b
		cfg.ApplyDefaults()
		addr, stop := startServe(t, dir, cfg, regexp.MustCompile(`serve: listening on ([0-9.]+:[0-9]+)`))
		t.Cleanup(func() { stop() })
		conn, err := pgx.Connect(ctx, "postgres://app:app@"+addr+"/app?sslmode=disable")
		if err != nil {
			t.Fatalf("connect to the proxy: %v", err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}

	// wantTLS checks that the proxy's backend connections to the primary
	// and to the standby are TLS.
	wantTLS := func(t *testing.T, conn *pgx.Conn) {
		t.Helper()
		for _, q := range []string{
			"SELECT ssl, pg_is_in_recovery() FROM pg_stat_ssl WHERE pid = pg_backend_pid() /* dbproxy: primary */",
			"SELECT ssl, pg_is_in_recovery() FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
		} {
			var ssl, standby bool
			if err := conn.QueryRow(ctx, q).Scan(&ssl, &standby); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
			if !ssl {
				t.Errorf("%s: the proxy's backend connection is not TLS (standby %v)", q, standby)
			}
			if wantStandby := !strings.Contains(q, "primary"); standby != wantStandby {
				t.Errorf("%s: ran on a standby: %v, want %v", q, standby, wantStandby)
			}
		}
	}

	t.Run("verify-full", func(t *testing.T) {
		conn := serve(t, config.Backend{SSLMode: "verify-full", SSLRootCert: "certs/ca.pem"})
		if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS tls_rows (id int PRIMARY KEY)"); err != nil {
			t.Fatalf("create through the proxy: %v", err)
		}
		if _, err := conn.Exec(ctx, "INSERT INTO tls_rows VALUES (1) ON CONFLICT DO NOTHING"); err != nil {
			t.Fatalf("insert through the proxy: %v", err)
		}
		wantTLS(t, conn)
		// dbproxy status (no status listener: it probes the nodes itself)
		// reaches them with the same [backend] settings, run from
		// another directory.
		var out, errb bytes.Buffer
		if code := run(ctx, []string{"status", "--config", filepath.Join(dir, "dbproxy.toml"), "--json"}, &out, &errb); code != 0 {
			t.Fatalf("status: exit %d: %s", code, errb.String())
		}
		var rep statusReport
		if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
			t.Fatalf("status --json: %v\n%s", err, out.String())
		}
		if rep.Source != "probe" || len(rep.Shards) != 1 || len(rep.Shards[0].Nodes) != 2 {
			t.Fatalf("status: %+v", rep)
		}
		for _, n := range rep.Shards[0].Nodes {
			if !n.Healthy {
				t.Errorf("status: node %s not healthy: %s", n.Name, n.LastError)
			}
		}
	})
	t.Run("prefer", func(t *testing.T) { // negotiated on the connection (internal/pgdial)
		wantTLS(t, serve(t, config.Backend{SSLMode: "prefer"}))
	})
	t.Run("plaintext refused by the server", func(t *testing.T) {
		conn := serve(t, config.Backend{SSLMode: "disable"})
		_, err := conn.Exec(ctx, "SELECT 1 /* dbproxy: primary */")
		if err == nil || !strings.Contains(err.Error(), "no encryption") {
			t.Errorf("query with sslmode disable against a TLS-only server: %v, want the server's pg_hba refusal", err)
		}
	})
	t.Run("certificate from an untrusted CA", func(t *testing.T) {
		conn := serve(t, config.Backend{SSLMode: "verify-full", SSLRootCert: "certs/other-ca.pem"})
		_, err := conn.Exec(ctx, "SELECT 1 /* dbproxy: primary */")
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("query with a CA that did not sign the server's certificate: %v, want a certificate error", err)
		}
	})
}

// startServe writes cfg to dir/dbproxy.toml and runs `dbproxy serve` on it
// until the returned stop is called; it returns the first submatch of
// ready in the output (what the test connects to).
func startServe(t *testing.T, dir string, cfg *config.Config, ready *regexp.Regexp) (string, func() string) {
	t.Helper()
	path := filepath.Join(dir, "dbproxy.toml")
	writeTestConfig(t, path, cfg)
	return startCommand(t, []string{"serve", "--config", path}, func(out string) string {
		if m := ready.FindStringSubmatch(out); m != nil {
			return m[1]
		}
		return ""
	})
}

// writeTestConfig writes cfg as TOML to path.
func writeTestConfig(t *testing.T, path string, cfg *config.Config) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := cfg.Encode(f); err != nil {
		t.Fatal(err)
	}
}
