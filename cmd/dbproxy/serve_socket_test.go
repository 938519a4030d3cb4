package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
	"github.com/jackc/pgx/v5/pgconn"
)

// TestServeUnixSocket runs `dbproxy serve` with [server] unix_socket_dir
// and tls_required, in front of a cluster whose primary it reaches on the
// primary's Unix socket: clients on this machine connect on the proxy's
// socket without TLS, TCP clients still need TLS, a stale socket file is
// replaced and the socket is removed at exit.
func TestServeUnixSocket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := pgcluster.StartT(t, pgcluster.Options{Name: "servesock", Standbys: 1})
	if err := c.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateDatabase(ctx, "app", "app", "app"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sockDir := filepath.Join(dir, "run")
	if err := os.Mkdir(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := proxy.GenerateSelfSignedCert(nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, pem := range map[string][]byte{"server.crt": certPEM, "server.key": keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), pem, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	sockPath := config.SocketPath(sockDir, port)

	// A socket file nothing accepts on, as a killed proxy leaves it.
	stale, err := net.Listen("unix", sockPath)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	cfg := config.Default()
	cfg.Server.Listen = fmt.Sprintf("127.0.0.1:%d", port)
	cfg.Server.UnixSocketDir = sockDir
	cfg.Server.TLSCert, cfg.Server.TLSKey, cfg.Server.TLSRequired = "server.crt", "server.key", true
	cfg.Server.StatusListen = ""
	cfg.Server.Databases = []string{"app"}
	cfg.Users = []config.User{{Name: "app", Password: "app"}}
	p, s := c.Primary(), c.Standbys()[0]
	if p.SocketDir == "" {
		t.Fatalf("%s has no Unix socket", p.Name)
	}
	cfg.Shards = []config.Shard{{Name: "s0", Nodes: []config.Node{
		{Name: p.Name, Host: p.SocketDir, Port: p.Port, Role: config.RolePrimary},
		{Name: s.Name, Host: s.Host, Port: s.Port, Role: config.RoleStandby},
	}}}
	cfg.Backend.SSLMode = "disable"
	cfg.ApplyDefaults()
	got, stop := startServe(t, dir, cfg, regexp.MustCompile(`serve: listening on [0-9.]+:[0-9]+ and (\S+)`))
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	if got != sockPath {
		t.Fatalf("serving on %s, want %s", got, sockPath)
	}

	// libpq's way: host is the socket directory; no TLS on a socket.
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=app password=app dbname=app", sockDir, port))
	if err != nil {
		t.Fatalf("connect on the proxy's socket (tls_required applies to TCP only): %v", err)
	}
	for _, q := range []string{
		"CREATE TABLE IF NOT EXISTS sock_rows (id int PRIMARY KEY, v text)",
		"INSERT INTO sock_rows VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET v = excluded.v",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var primaryOverSocket bool
	if err := conn.QueryRow(ctx, "SELECT inet_server_addr() IS NULL FROM sock_rows WHERE id = 1 /* dbproxy: primary */").Scan(&primaryOverSocket); err != nil || !primaryOverSocket {
		t.Errorf("the primary, configured by its socket directory, is reached over TCP (%v, %v)", primaryOverSocket, err)
	}
	conn.Close(ctx)

	// A wrong password on the socket is refused as over TCP.
	if bad, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=app password=wrong dbname=app", sockDir, port)); err == nil {
		bad.Close(ctx)
		t.Error("a wrong password was accepted on the socket")
	} else if pe := (*pgconn.PgError)(nil); !errors.As(err, &pe) || pe.Code != "28P01" {
		t.Errorf("wrong password on the socket: %v (want 28P01)", err)
	}
	// TCP without TLS is still refused.
	if tc, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app:app@127.0.0.1:%d/app?sslmode=disable", port)); err == nil {
		tc.Close(ctx)
		t.Error("tls_required: a TCP client without TLS was accepted")
	} else if pe := (*pgconn.PgError)(nil); !errors.As(err, &pe) || pe.Code != "28000" {
		t.Errorf("TCP client without TLS: %v (want 28000)", err)
	}
	// An SSLRequest on the socket is declined, as PostgreSQL declines it.
	raw, err := net.Dial("unix", sockPath)
	if err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := raw.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
		t.Fatal(err)
	}
	answer := make([]byte, 1)
	if _, err := io.ReadFull(raw, answer); err != nil || answer[0] != 'N' {
		t.Errorf("SSLRequest on the socket: %q, %v (want 'N')", answer, err)
	}
	raw.Close()

	// A second proxy on the same socket, and a file that is not a socket,
	// are refused without touching the file.
	if ln, err := listenUnix(ctx, sockPath); err == nil {
		ln.Close()
		t.Error("listenUnix took over a socket another server accepts on")
	} else if !strings.Contains(err.Error(), "in use") {
		t.Errorf("socket in use: %v", err)
	}
	regular := filepath.Join(dir, ".s.PGSQL.1")
	if err := os.WriteFile(regular, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if ln, err := listenUnix(ctx, regular); err == nil {
		ln.Close()
		t.Error("listenUnix replaced a regular file")
	} else if b, _ := os.ReadFile(regular); string(b) != "data" {
		t.Errorf("listenUnix on a regular file: %v, and the file is now %q", err, b)
	}

	stopped = true
	stop()
	if _, err := os.Lstat(sockPath); !os.IsNotExist(err) {
		t.Errorf("socket file left after exit: %v", err)
	}
}
