package pgdial_test

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/internal/pgdial"
	"github.com/dbproxy/dbproxy/proxy"
	"github.com/jackc/pgx/v5/pgconn"
)

// Request codes of a connection's first message.
const (
	sslRequestCode    = 80877103
	cancelRequestCode = 80877102
	protocol3         = 196608 // StartupMessage, protocol 3.0
)

// relay forwards TCP connections to a server and records the request code
// (the second 32-bit word) of each connection's first message.
type relay struct {
	ln    net.Listener
	mu    sync.Mutex
	codes []uint32
	wg    sync.WaitGroup
}

func startRelay(t *testing.T, upstream string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.forward(c, upstream)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); r.wg.Wait() })
	return r
}

func (r *relay) forward(c net.Conn, upstream string) {
	defer c.Close()
	var first [8]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		return
	}
	r.mu.Lock()
	r.codes = append(r.codes, binary.BigEndian.Uint32(first[4:]))
	r.mu.Unlock()
	u, err := net.Dial("tcp", upstream)
	if err != nil {
		return
	}
	defer u.Close()
	if _, err := u.Write(first[:]); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(c, u)
		c.Close()
		close(done)
	}()
	_, _ = io.Copy(u, c)
	u.Close()
	<-done
}

// take returns the codes recorded so far and forgets them.
func (r *relay) take() []uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	codes := r.codes
	r.codes = nil
	return codes
}

func (r *relay) connString(extra string) string {
	return fmt.Sprintf("postgres://app:app@%s/postgres?connect_timeout=10&%s", r.ln.Addr(), extra)
}

// cancelSleep runs pg_sleep on conn, cancels it with CancelRequest and
// checks the server ended it with 57014.
func cancelSleep(t *testing.T, ctx context.Context, conn *pgconn.PgConn) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "SELECT pg_sleep(30)").ReadAll()
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	if err := conn.CancelRequest(ctx); err != nil {
		t.Fatalf("CancelRequest: %v", err)
	}
	select {
	case err := <-done:
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
			t.Fatalf("pg_sleep after CancelRequest: %v, want SQLSTATE 57014", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pg_sleep not cancelled within 10 s")
	}
}

func sslInUse(t *testing.T, ctx context.Context, conn *pgconn.PgConn) string {
	t.Helper()
	res := conn.ExecParams(ctx, "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()", nil, nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 {
		t.Fatalf("pg_stat_ssl: %v (%d rows)", res.Err, len(res.Rows))
	}
	return string(res.Rows[0][0])
}

func connect(t *testing.T, ctx context.Context, connString string) *pgconn.PgConn {
	t.Helper()
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgdial.Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("Connect(%s): %v", connString, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func wantCodes(t *testing.T, what string, got []uint32, want ...uint32) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: connections opened with request codes %v, want %v", what, got, want)
	}
}

// startPrimary starts a one-node cluster with database app (user app,
// password app) and a relay in front of it.
func startPrimary(t *testing.T, ctx context.Context, opts pgcluster.Options) (*pgcluster.Node, *relay) {
	t.Helper()
	c := pgcluster.StartT(t, opts)
	if err := c.CreateDatabase(ctx, "app", "app", "app"); err != nil {
		t.Fatal(err)
	}
	p := c.Primary()
	return p, startRelay(t, net.JoinHostPort(p.Host, fmt.Sprint(p.Port)))
}

func TestPreferWithoutServerTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, r := startPrimary(t, ctx, pgcluster.Options{Name: "pgdialplain"})

	conn := connect(t, ctx, r.connString("sslmode=prefer"))
	wantCodes(t, "prefer, server without TLS", r.take(), sslRequestCode)
	if _, ok := conn.Conn().(*tls.Conn); ok {
		t.Error("connection is TLS; the server has none")
	}
	if got := sslInUse(t, ctx, conn); got != "false" {
		t.Errorf("pg_stat_ssl.ssl = %s, want false", got)
	}
	cancelSleep(t, ctx, conn)
	wantCodes(t, "CancelRequest of a plain connection", r.take(), cancelRequestCode)

	// sslmode=require is pgconn's own: one connection, refused.
	cfg, err := pgconn.ParseConfig(r.connString("sslmode=require"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pgdial.Connect(ctx, cfg); err == nil {
		t.Error("sslmode=require connected to a server without TLS")
	}
	wantCodes(t, "require, server without TLS", r.take(), sslRequestCode)

	// disable sends no SSLRequest.
	connect(t, ctx, r.connString("sslmode=disable"))
	wantCodes(t, "disable", r.take(), protocol3)
}

func TestPreferWithServerTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	certPEM, keyPEM, err := proxy.GenerateSelfSignedCert(nil)
	if err != nil {
		t.Fatal(err)
	}
	p, r := startPrimary(t, ctx, pgcluster.Options{Name: "pgdialtls", TLS: &pgcluster.TLS{CertPEM: certPEM, KeyPEM: keyPEM}})

	conn := connect(t, ctx, r.connString("sslmode=prefer"))
	wantCodes(t, "prefer, server with TLS", r.take(), sslRequestCode)
	if _, ok := conn.Conn().(*tls.Conn); !ok {
		t.Errorf("connection is %T, want *tls.Conn", conn.Conn())
	}
	if got := sslInUse(t, ctx, conn); got != "true" {
		t.Errorf("pg_stat_ssl.ssl = %s, want true", got)
	}
	cancelSleep(t, ctx, conn)
	// The cancel connection is encrypted like the connection it cancels.
	wantCodes(t, "CancelRequest of a TLS connection", r.take(), sslRequestCode)

	// A server that accepts TLS but whose pg_hba.conf refuses app over
	// TLS: as libpq, prefer retries without TLS.
	hba := "host all postgres 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 scram-sha-256\n"
	if err := os.WriteFile(filepath.Join(p.Dir, "pg_hba.conf"), []byte(hba), 0); err != nil {
		t.Fatal(err)
	}
	admin, err := p.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the postmaster reloads on SIGHUP
	conn = connect(t, ctx, r.connString("sslmode=prefer"))
	wantCodes(t, "prefer, TLS refused by pg_hba.conf", r.take(), sslRequestCode, protocol3)
	if got := sslInUse(t, ctx, conn); got != "false" {
		t.Errorf("pg_stat_ssl.ssl = %s, want false", got)
	}
	cancelSleep(t, ctx, conn)
	wantCodes(t, "CancelRequest of the plain retry", r.take(), cancelRequestCode)
}
