package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// dialRaw opens a TCP connection to the test server with a deadline.
func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { nc.Close() })
	return nc
}

// expectFatal reads until an ErrorResponse, checks its code, then
// expects the server to close the connection.
func expectFatal(t *testing.T, nc net.Conn, code string) *pgproto3.ErrorResponse {
	t.Helper()
	fe := pgproto3.NewFrontend(nc, nc)
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("waiting for error %s: %v", code, err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			if e.Code != code {
				t.Fatalf("got error %s %q, want %s", e.Code, e.Message, code)
			}
			if _, err := fe.Receive(); err == nil {
				t.Fatalf("connection still open after error %s", code)
			}
			return e
		}
	}
}

func connectString(addr, user, password, db, extra string) string {
	host, port, _ := net.SplitHostPort(addr)
	return "host=" + host + " port=" + port + " user=" + user + " password=" + password + " dbname=" + db + " connect_timeout=10 " + extra
}

func connect(t *testing.T, addr, user, password, db, extra string) (*pgconn.PgConn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return pgconn.Connect(ctx, connectString(addr, user, password, db, extra))
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func TestStartupGarbage(t *testing.T) {
	ts := newTestServer(t, nil)
	nc := dialRaw(t, ts.addr)
	nc.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	e := expectFatal(t, nc, codeProtocolViolation)
	if !strings.Contains(e.Message, "startup packet") {
		t.Errorf("message %q", e.Message)
	}
	// The server is fine: a normal client still connects.
	c, err := connect(t, ts.addr, "app", "secret", "app", "sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
}

func TestStartupPacketLimits(t *testing.T) {
	ts := newTestServer(t, nil)
	for _, tc := range []struct {
		name string
		pkt  []byte
	}{
		{"too short", []byte{0, 0, 0, 4}},
		{"negative", []byte{0xff, 0xff, 0xff, 0xf0}},
		{"too long", binary.BigEndian.AppendUint32(nil, 20000)},
		{"unknown code", []byte{0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78}},
		{"bad protocol", append([]byte{0, 0, 0, 9, 0, 2, 0, 0}, 0)},
		{"unterminated params", []byte{0, 0, 0, 12, 0, 3, 0, 0, 'u', 's', 'e', 'r'}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc := dialRaw(t, ts.addr)
			nc.Write(tc.pkt)
			expectFatal(t, nc, codeProtocolViolation)
		})
	}
}

func TestStartupTruncatedThenEOF(t *testing.T) {
	ts := newTestServer(t, nil)
	nc := dialRaw(t, ts.addr)
	nc.Write([]byte{0, 0, 0, 100, 0, 3, 0, 0})
	nc.(*net.TCPConn).CloseWrite()
	if _, err := io.ReadAll(nc); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return ts.Stats().Clients == 0 })
}

func TestSSLAndGSSRequestsRefusedWithoutTLS(t *testing.T) {
	ts := newTestServer(t, nil)
	nc := dialRaw(t, ts.addr)
	for _, code := range []uint32{80877103, 80877104} { // SSLRequest, GSSENCRequest
		nc.Write(binary.BigEndian.AppendUint32([]byte{0, 0, 0, 8}, code))
		b := make([]byte, 1)
		if _, err := io.ReadFull(nc, b); err != nil || b[0] != 'N' {
			t.Fatalf("answer %q %v, want N", b, err)
		}
	}
	// sslmode=require against a proxy without TLS: the client refuses.
	_, err := connect(t, ts.addr, "app", "secret", "app", "sslmode=require")
	if err == nil || !strings.Contains(err.Error(), "refused TLS") {
		t.Fatalf("sslmode=require without TLS: %v", err)
	}
}

func TestTLS(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.TLS = testTLSConfig(t); c.RequireTLS = true })
	c, err := connect(t, ts.addr, "app", "secret", "app", "sslmode=require")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Conn().(interface{ ConnectionState() any }); ok {
		t.Log("tls")
	}
	st := ts.Stats()
	if len(st.Conns) != 1 || !st.Conns[0].TLS {
		t.Errorf("stats %+v", st)
	}
	c.Close(context.Background())
	// Channel binding (SCRAM-SHA-256-PLUS) is required by this client.
	c, err = connect(t, ts.addr, "app", "secret", "app", "sslmode=require channel_binding=require")
	if err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
	_, err = connect(t, ts.addr, "app", "secret", "app", "sslmode=disable")
	if sqlState(err) != codeInvalidAuthSpec {
		t.Fatalf("plain connection with RequireTLS: %v", err)
	}
}

func TestAuthSCRAM(t *testing.T) {
	verifier, err := SCRAMVerifier("v3rifier")
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, func(c *Config) {
		c.Users = append(c.Users, User{Name: "ver", SCRAMVerifier: verifier, BackendPassword: "v3rifier"}, User{Name: "limited", Password: "x", Databases: []string{"other"}},
			User{Name: "nobackend", SCRAMVerifier: verifier}) // authenticates, but the proxy cannot log in as it

		c.Databases = []string{"app", "other"}
	})
	for _, tc := range []struct{ user, pass, db, code string }{
		{"app", "secret", "app", ""},
		{"ver", "v3rifier", "app", ""},
		{"app", "wrong", "app", codeInvalidPassword},
		{"nobody", "secret", "app", codeInvalidPassword},
		{"app", "secret", "nodb", codeUnknownDatabase},
		{"limited", "x", "app", codeUnknownDatabase},
		{"limited", "x", "other", ""},
		{"nobackend", "v3rifier", "app", codeInvalidAuthSpec},
	} {
		c, err := connect(t, ts.addr, tc.user, tc.pass, tc.db, "sslmode=disable")
		if tc.code == "" {
			if err != nil {
				t.Errorf("%s/%s: %v", tc.user, tc.db, err)
				continue
			}
			if c.ParameterStatus("server_version") == "" {
				t.Errorf("no server_version")
			}
			c.Close(context.Background())
			continue
		}
		if got := sqlState(err); got != tc.code {
			t.Errorf("%s/%s: got %q (%v), want %s", tc.user, tc.db, got, err, tc.code)
		}
	}
	if st := ts.Stats(); st.Rejected != 5 {
		t.Errorf("rejected %d, want 5", st.Rejected)
	}
}

func TestAuthMD5(t *testing.T) {
	ts := newTestServer(t, func(c *Config) {
		c.Auth = AuthMD5
		c.Users = append(c.Users, User{Name: "hashed", Password: "md5" + md5hex("pw"+"hashed"), BackendPassword: "pw"},
			User{Name: "hashonly", Password: "md5" + md5hex("pw"+"hashonly")})
	})
	for _, tc := range []struct{ user, pass, code string }{
		{"app", "secret", ""}, {"hashed", "pw", ""}, {"app", "nope", codeInvalidPassword}, {"ghost", "x", codeInvalidPassword},
		{"hashonly", "pw", codeInvalidAuthSpec}, // an md5 hash cannot log in to the backends
	} {
		c, err := connect(t, ts.addr, tc.user, tc.pass, "app", "sslmode=disable")
		if tc.code == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.user, err)
			} else {
				c.Close(context.Background())
			}
			continue
		}
		if got := sqlState(err); got != tc.code {
			t.Errorf("%s: got %q (%v), want %s", tc.user, got, err, tc.code)
		}
	}
}

// hijack connects with pgconn and takes over the raw connection.
func hijack(t *testing.T, ts *testServer) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	c, err := connect(t, ts.addr, "app", "secret", "app", "sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	hc, err := c.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	_ = hc.Conn.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { hc.Conn.Close() })
	return hc.Conn, hc.Frontend
}

func TestOversizedMessage(t *testing.T) {
	ts := newTestServer(t, nil)
	nc, _ := hijack(t, ts)
	msg := []byte{'Q'}
	msg = binary.BigEndian.AppendUint32(msg, 100_000)
	msg = append(msg, bytes.Repeat([]byte{'x'}, 100)...)
	nc.Write(msg)
	expectFatal(t, nc, codeProgramLimit)
	waitFor(t, func() bool { return ts.Stats().Clients == 0 })
}

func TestMalformedMessages(t *testing.T) {
	ts := newTestServer(t, nil)
	for name, raw := range map[string][]byte{
		"length below 4":       {'Q', 0, 0, 0, 2},
		"unknown type":         {'z', 0, 0, 0, 4},
		"bind truncated":       {'B', 0, 0, 0, 6, 0, 0},
		"query unterminated":   {'Q', 0, 0, 0, 7, 'a', 'b', 'c'},
		"describe bad type":    {'D', 0, 0, 0, 6, 'X', 0},
		"negative length":      {'P', 0xff, 0xff, 0xff, 0xff},
		"server-only message":  {'T', 0, 0, 0, 6, 0, 0},
		"password after login": {'p', 0, 0, 0, 5, 0},
	} {
		t.Run(name, func(t *testing.T) {
			nc, _ := hijack(t, ts)
			nc.Write(raw)
			expectFatal(t, nc, codeProtocolViolation)
		})
	}
	waitFor(t, func() bool { return ts.Stats().Clients == 0 })
}

func TestLocalSettingsAndEmptyBatches(t *testing.T) {
	ts := newTestServer(t, nil)
	c, err := connect(t, ts.addr, "app", "secret", "app", "sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	ctx := context.Background()
	// dbproxy.* settings are answered by the proxy without a backend.
	if _, err := c.Exec(ctx, "SET dbproxy.causal_token = 's0:0/16B3748,s1:0/10'").ReadAll(); err != nil {
		t.Fatal(err)
	}
	res, err := c.Exec(ctx, "SHOW dbproxy.causal_token").ReadAll()
	if err != nil || string(res[0].Rows[0][0]) != "s0:0/16B3748,s1:0/10" {
		t.Fatalf("SHOW: %v %v", res, err)
	}
	_, err = c.Exec(ctx, "SET dbproxy.causal_token = 'garbage'").ReadAll()
	if sqlState(err) != "22023" {
		t.Fatalf("bad token: %v", err)
	}
	if _, err := c.Exec(ctx, "SET dbproxy.max_staleness = '200ms'").ReadAll(); err != nil {
		t.Fatal(err)
	}
	r := c.ExecParams(ctx, "SHOW dbproxy.max_staleness", nil, nil, nil, nil).Read()
	if r.Err != nil || string(r.Rows[0][0]) != "200ms" {
		t.Fatalf("extended SHOW: %+v", r)
	}
	// A statement needing a backend fails cleanly here (no backends).
	_, err = c.Exec(ctx, "SELECT 1").ReadAll()
	if err == nil {
		t.Fatal("SELECT without backends succeeded")
	}
	r = c.ExecParams(ctx, "SELECT $1::int", [][]byte{[]byte("1")}, nil, nil, nil).Read()
	if r.Err == nil {
		t.Fatal("extended SELECT without backends succeeded")
	}
	// The connection is still usable afterwards.
	if _, err := c.Exec(ctx, "RESET dbproxy.causal_token").ReadAll(); err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestCancelUnknownKeyAndShutdown(t *testing.T) {
	ts := newTestServer(t, nil)
	nc := dialRaw(t, ts.addr)
	pkt := binary.BigEndian.AppendUint32([]byte{0, 0, 0, 16}, 80877102)
	pkt = binary.BigEndian.AppendUint32(pkt, 1234)
	pkt = binary.BigEndian.AppendUint32(pkt, 5678)
	nc.Write(pkt)
	if _, err := io.ReadAll(nc); err != nil {
		t.Fatal(err)
	}

	c, err := connect(t, ts.addr, "app", "secret", "app", "sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	// The client sees ReadyForQuery before the server records the idle
	// state, so wait for the registry rather than read it once.
	waitFor(t, func() bool { return ts.Stats().ByState["idle"] == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.Close(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = c.Exec(ctx, "SELECT 1").ReadAll()
	if err == nil {
		t.Fatal("query after shutdown succeeded")
	}
	if ts.Stats().Clients != 0 {
		t.Fatalf("clients left after Close: %+v", ts.Stats())
	}
	if err := ts.Close(ctx); err != nil { // idempotent
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConcurrentClose closes a server from several goroutines while an
// idle client is being ended: every call returns only once the shutdown
// is complete (no connection left), and none races with another's
// bookkeeping (a later call once waited on the first's WaitGroups while
// the first was still adding to them).
func TestConcurrentClose(t *testing.T) {
	for i := 0; i < 50; i++ {
		ts := newTestServer(t, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := connect(t, ts.addr, "app", "secret", "app", "sslmode=disable")
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return ts.Stats().ByState["idle"] == 1 })
		closed := make(chan error, 1)
		go func() { closed <- ts.Close(ctx) }()
		// The client is told first, then a second Close comes in.
		if _, err := c.Exec(ctx, "SELECT 1").ReadAll(); err == nil {
			t.Fatal("query during shutdown succeeded")
		}
		if err := ts.Close(ctx); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if n := ts.Stats().Clients; n != 0 {
			t.Fatalf("Close returned with %d clients", n)
		}
		if err := <-closed; err != nil {
			t.Fatalf("first Close: %v", err)
		}
		c.Close(ctx)
		cancel()
	}
}
