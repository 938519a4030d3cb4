package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/dbproxy/dbproxy/shard"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// idleStream is a startup phase (SSLRequest refused, StartupMessage)
// followed by typed messages, with the offsets at which each message ends.
func idleStream(t testing.TB) (stream []byte, ends []int) {
	t.Helper()
	var err error
	add := func(m interface{ Encode([]byte) ([]byte, error) }) {
		stream, err = m.Encode(stream)
		if err != nil {
			t.Fatal(err)
		}
		ends = append(ends, len(stream))
	}
	add(&pgproto3.SSLRequest{})
	add(&pgproto3.GSSEncRequest{})
	add(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "app", "database": "app"}})
	add(&pgproto3.PasswordMessage{Password: "secret"})
	add(&pgproto3.Query{String: "select 1"})
	add(&pgproto3.Parse{Name: "s", Query: "select $1::int", ParameterOIDs: []uint32{23}})
	add(&pgproto3.Bind{PreparedStatement: "s", Parameters: [][]byte{[]byte("42")}})
	add(&pgproto3.Describe{ObjectType: 'P'})
	add(&pgproto3.Execute{})
	add(&pgproto3.Sync{}) // empty body
	add(&pgproto3.CopyData{Data: bytes.Repeat([]byte{'x'}, 20000)})
	add(&pgproto3.Flush{})
	add(&pgproto3.Terminate{})
	return stream, ends
}

// expectAt is the framing state after the first n bytes of a stream
// whose messages end at ends: at a boundary, and messages complete.
func expectAt(ends []int, n int) (boundary bool, complete uint64) {
	for _, e := range ends {
		if e <= n {
			complete++
		}
		if e == n {
			boundary = true
		}
	}
	// The startup phase (up to the StartupMessage, the third message)
	// is never a boundary.
	return boundary && complete >= 3, complete
}

func checkFraming(t *testing.T, f *framing, ends []int, n int) {
	t.Helper()
	b, k := expectAt(ends, n)
	if f.atBoundary() != b || f.delivered != k {
		t.Fatalf("after %d bytes: atBoundary %v, %d messages delivered; want %v, %d", n, f.atBoundary(), f.delivered, b, k)
	}
}

// chunks is an io.Reader handing out its chunks one per Read (a Read
// with a smaller buffer gets a chunk in pieces).
type chunks struct {
	c   [][]byte
	err error // after the last chunk; io.EOF when nil
}

func (r *chunks) Read(p []byte) (int, error) {
	for len(r.c) > 0 && len(r.c[0]) == 0 {
		r.c = r.c[1:]
	}
	if len(r.c) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		return 0, io.EOF
	}
	n := copy(p, r.c[0])
	r.c[0] = r.c[0][n:]
	return n, nil
}

// readConn is a net.Conn that only reads, from r.
type readConn struct {
	net.Conn
	r io.Reader
}

func (c *readConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// testBox is a protoBox reading r from the startup phase on.
func testBox(r io.Reader) *protoBox {
	b := newProtoBox()
	b.hold(&readConn{r: r}, false, nil)
	return b
}

func TestFramingSplitAtEveryByte(t *testing.T) {
	stream, ends := idleStream(t)
	for i := 1; i < len(stream); i++ {
		b := testBox(&chunks{c: [][]byte{stream[:i], stream[i:]}})
		buf := make([]byte, len(stream)+1)
		n, err := b.Read(buf)
		if n != i || err != nil {
			t.Fatalf("first read %d %v", n, err)
		}
		checkFraming(t, &b.f, ends, i)
		if n2, _ := b.Read(buf[n:]); n+n2 != len(stream) {
			t.Fatalf("second read %d", n2)
		}
		checkFraming(t, &b.f, ends, len(stream))
		if !bytes.Equal(buf[:len(stream)], stream) {
			t.Fatal("bytes changed")
		}
	}
}

func TestFramingByteAtATimeAndRandomChunks(t *testing.T) {
	stream, ends := idleStream(t)
	var f framing
	for i := 1; i <= len(stream); i++ {
		f.track(stream[i-1 : i])
		checkFraming(t, &f, ends, i)
	}
	rng := rand.New(rand.NewSource(1))
	for round := 0; round < 200; round++ {
		var c [][]byte
		for rest := stream; len(rest) > 0; {
			k := min(len(rest), 1+rng.Intn(64))
			if rng.Intn(4) == 0 {
				k = min(len(rest), 1+rng.Intn(30000)) // several messages per read
			}
			c, rest = append(c, rest[:k]), rest[k:]
		}
		b := testBox(&chunks{c: c})
		buf := make([]byte, 32<<10)
		for n := 0; ; {
			k, err := b.Read(buf)
			n += k
			if err != nil {
				if n != len(stream) {
					t.Fatalf("read %d of %d: %v", n, len(stream), err)
				}
				break
			}
			checkFraming(t, &b.f, ends, n)
		}
	}
}

func TestFramingPartialAndInvalid(t *testing.T) {
	for name, tc := range map[string]struct {
		in       []byte
		boundary bool
		n        uint64
	}{
		"empty":               {nil, true, 0},
		"header 1 byte":       {[]byte{'Q'}, false, 0},
		"header 4 bytes":      {[]byte{'Q', 0, 0, 0}, false, 0},
		"header only":         {[]byte{'Q', 0, 0, 0, 6}, false, 0},
		"body partial":        {[]byte{'Q', 0, 0, 0, 6, 'x'}, false, 0},
		"complete":            {[]byte{'Q', 0, 0, 0, 6, 'x', 0}, true, 1},
		"empty body":          {[]byte{'S', 0, 0, 0, 4}, true, 1},
		"two, second partial": {[]byte{'S', 0, 0, 0, 4, 'S', 0, 0}, false, 1},
		"length below 4":      {[]byte{'Q', 0, 0, 0, 3, 'S', 0, 0, 0, 4}, false, 0},
		"negative length":     {[]byte{'Q', 0xff, 0xff, 0xff, 0xff, 'S', 0, 0, 0, 4}, false, 0},
	} {
		t.Run(name, func(t *testing.T) {
			f := framing{typed: true}
			f.track(tc.in)
			if f.atBoundary() != tc.boundary || f.delivered != tc.n {
				t.Fatalf("atBoundary %v, delivered %d; want %v, %d", f.atBoundary(), f.delivered, tc.boundary, tc.n)
			}
		})
	}
	// The startup phase is never a boundary, and a short startup length
	// leaves the framing unknown for good.
	var f framing
	if f.atBoundary() {
		t.Fatal("boundary before the startup message")
	}
	f.track([]byte{0, 0, 0, 4, 0, 3, 0, 0, 'S', 0, 0, 0, 4})
	if f.atBoundary() || !f.broken {
		t.Fatalf("short startup length: %+v", f)
	}
}

func TestProtoBoxPending(t *testing.T) {
	b := newProtoBox()
	b.hold(&readConn{r: bytes.NewReader([]byte{0, 4, 'H', 0, 0, 0, 4})}, true, []byte{'S', 0, 0})
	if b.empty() {
		t.Fatal("pending bytes count as read")
	}
	var got []string
	for range 2 {
		msg, err := b.fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%T", msg))
	}
	if !slices.Equal(got, []string{"*pgproto3.Sync", "*pgproto3.Flush"}) {
		t.Fatalf("got %v", got)
	}
	if !b.empty() || b.f.delivered != 2 {
		t.Fatalf("after two messages: %+v", b.f)
	}
	if _, err := b.fe.Receive(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("after the stream: %v", err)
	}
}

// timeoutChunks hands out chunks like chunks, with a timeout error
// between two chunks (where a client pauses).
type timeoutChunks struct {
	c       [][]byte
	timeout bool // the next Read times out
}

func (r *timeoutChunks) Read(p []byte) (int, error) {
	if r.timeout {
		r.timeout = false
		return 0, os.ErrDeadlineExceeded
	}
	for len(r.c) > 0 && len(r.c[0]) == 0 {
		r.c = r.c[1:]
	}
	if len(r.c) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.c[0])
	r.c[0] = r.c[0][n:]
	if len(r.c[0]) == 0 {
		r.c = r.c[1:]
		r.timeout = true
	}
	return n, nil
}

// receiveShared reads the messages of several clients whose streams
// arrive in chunks with pauses between them, in turns, as the proxy does:
// at every pause a client whose Backend holds nothing gives its box to a
// shared pool and waits with a 5-byte array; when bytes arrive it takes
// any box from the pool. It returns each client's messages (encoded) and
// how many times a box was given back.
func receiveShared(t testing.TB, streams ...[][]byte) (got [][][]byte, drops int) {
	type client struct {
		conn net.Conn
		box  *protoBox
		done bool
	}
	var pool []*protoBox
	cs := make([]*client, len(streams))
	for i, c := range streams {
		cs[i] = &client{conn: &readConn{r: &timeoutChunks{c: c}}}
		cs[i].box = newProtoBox()
		cs[i].box.hold(cs[i].conn, true, nil)
	}
	got = make([][][]byte, len(streams))
	for left := len(cs); left > 0; {
		for i, c := range cs {
			if c.done {
				continue
			}
			if c.box == nil {
				var wake [5]byte
				n, err := c.conn.Read(wake[:])
				switch {
				case n > 0:
					if len(pool) > 0 {
						c.box, pool = pool[len(pool)-1], pool[:len(pool)-1]
					} else {
						c.box = newProtoBox()
					}
					c.box.hold(c.conn, true, wake[:n])
				case isTimeout(err):
				default:
					c.done = true
					left--
				}
				continue
			}
			msg, err := c.box.fe.Receive()
			switch {
			case err == nil:
				b, err := msg.Encode(nil)
				if err != nil {
					t.Fatal(err)
				}
				got[i] = append(got[i], b)
			case isTimeout(err):
				if c.box.empty() { // else resumed by the next Receive
					c.box.hold(nil, false, nil)
					pool = append(pool, c.box)
					c.box = nil
					drops++
				}
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
				c.done = true // the messages received are compared
				left--
			default:
				t.Fatalf("Receive: %v", err)
			}
		}
	}
	return got, drops
}

// typedMessages encodes a few valid typed messages chosen by seed.
func typedMessages(t testing.TB, seed []byte) (stream []byte, msgs [][]byte) {
	for i, b := range seed {
		var m pgproto3.FrontendMessage
		switch b % 5 {
		case 0:
			m = &pgproto3.Query{String: strings.Repeat("q", int(b))}
		case 1:
			m = &pgproto3.Sync{}
		case 2:
			m = &pgproto3.CopyData{Data: bytes.Repeat([]byte{b}, int(b)*int(b)/8)}
		case 3:
			m = &pgproto3.Execute{Portal: "p", MaxRows: uint32(i)}
		default:
			m = &pgproto3.Flush{}
		}
		enc, err := m.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		stream = append(stream, enc...)
		msgs = append(msgs, enc)
	}
	return stream, msgs
}

func cut(stream []byte, cuts []byte) [][]byte {
	var c [][]byte
	for _, k := range cuts {
		n := min(len(stream), int(k))
		if n == 0 {
			continue
		}
		c, stream = append(c, stream[:n]), stream[n:]
	}
	if len(stream) > 0 {
		c = append(c, stream)
	}
	return c
}

func TestProtoBoxSharedAtPauses(t *testing.T) {
	stream, msgs := typedMessages(t, []byte{0, 1, 2, 3, 4, 10, 17, 40, 99, 1, 1})
	other, otherMsgs := typedMessages(t, []byte{5, 6, 7, 8, 9, 12, 200, 0})
	for i := 1; i < len(stream); i++ {
		for _, j := range []int{i + 1, i + 3, i + 5, i + 7, len(stream)} {
			if j > len(stream) {
				continue
			}
			k := (i * 7) % len(other)
			got, _ := receiveShared(t, [][]byte{stream[:i], stream[i:j], stream[j:]}, [][]byte{other[:k], other[k:]})
			if !equalChunks(got[0], msgs) || !equalChunks(got[1], otherMsgs) {
				t.Fatalf("pauses at %d and %d: got %q, want %q", i, j, got, msgs)
			}
		}
	}
	// Pauses at message boundaries give the box back every time.
	if _, drops := receiveShared(t, msgs); drops != len(msgs) {
		t.Fatalf("%d drops at %d boundaries", drops, len(msgs))
	}
}

func equalChunks(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// FuzzFraming checks that the framing of arbitrary bytes does not depend
// on how reads split them, and that two clients' valid messages arriving
// with arbitrary pauses are all received, each by its own client, when
// Backends go back to a shared pool at every pause where the box says
// they hold nothing.
func FuzzFraming(f *testing.F) {
	stream, _ := idleStream(f)
	f.Add(stream, []byte{3, 5, 8, 200, 1})
	f.Add([]byte{'Q', 0, 0, 0, 6, 'x', 0, 'S', 0, 0, 0, 4}, []byte{1, 4, 1})
	f.Add([]byte{0, 0, 0, 8, 4, 210, 22, 47, 0, 0, 0, 9, 0, 3, 0, 0, 0}, []byte{2, 2, 2})
	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		// Arbitrary bytes, in chunks vs one byte at a time.
		b := testBox(&chunks{c: cut(data, cuts)})
		var ref framing
		buf := make([]byte, 256)
		for n := 0; ; {
			k, err := b.Read(buf)
			for i := n; i < n+k; i++ {
				ref.track(data[i : i+1])
			}
			n += k
			if b.f != ref {
				t.Fatalf("after %d bytes: chunked %+v, bytewise %+v", n, b.f, ref)
			}
			if err != nil {
				break
			}
		}
		// Valid messages of two clients with pauses.
		data = data[:min(len(data), 512)]
		s1, m1 := typedMessages(t, data[:len(data)/2])
		s2, m2 := typedMessages(t, data[len(data)/2:])
		rcuts := slices.Clone(cuts)
		slices.Reverse(rcuts)
		got, _ := receiveShared(t, cut(s1, cuts), cut(s2, rcuts))
		if !equalChunks(got[0], m1) || !equalChunks(got[1], m2) {
			t.Fatalf("got %d and %d messages, want %d and %d", len(got[0]), len(got[1]), len(m1), len(m2))
		}
	})
}

// newIdleServer is newTestServer with a deep-idle threshold (and shards
// when given).
func newIdleServer(t *testing.T, after time.Duration, shards map[shard.ID]*replica.Set, rt *router.Router, mut func(*Config)) *testServer {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Users = []User{{Name: "app", Password: "secret", BackendPassword: "app"}} // the test clusters' password for app
	cfg.Databases = []string{"app"}
	cfg.ShutdownTimeout = 2 * time.Second
	cfg.StartupTimeout = 5 * time.Second
	if mut != nil {
		mut(&cfg)
	}
	if shards == nil {
		shards, rt = map[shard.ID]*replica.Set{0: nil}, testRouter(t)
	}
	srv, err := New(cfg, Deps{Router: rt, Shards: shards})
	if err != nil {
		t.Fatal(err)
	}
	srv.deepIdleAfter = after
	return serveTest(t, srv)
}

// deepIdle reports whether client pid has dropped its Backend.
func (s *Server) isDeepIdle(pid uint32) bool {
	c := s.reg.lookup(pid)
	if c == nil || !c.deepIdle.Load() {
		return false
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.fe == nil
}

func waitDeepIdle(t *testing.T, s *Server, pid uint32) {
	t.Helper()
	waitFor(t, func() bool { return s.isDeepIdle(pid) })
}

// waitSweeps waits until the sweeper has interrupted n more reads.
func waitSweeps(t *testing.T, s *Server, n uint64) {
	t.Helper()
	want := s.sweeps.Load() + n
	waitFor(t, func() bool { return s.sweeps.Load() >= want })
}

// readReply reads one request's reply up to ReadyForQuery: the rows'
// first columns and the error codes.
func readReply(t *testing.T, fe *pgproto3.Frontend) (rows, errs []string) {
	t.Helper()
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			rows = append(rows, string(m.Values[0]))
		case *pgproto3.ErrorResponse:
			errs = append(errs, m.Code)
		case *pgproto3.ReadyForQuery:
			return rows, errs
		}
	}
}

func encodeMsgs(t *testing.T, msgs ...pgproto3.FrontendMessage) []byte {
	var out []byte
	for _, m := range msgs {
		var err error
		if out, err = m.Encode(out); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestDeepIdleLocal exercises deep idle with statements the proxy answers
// itself (no backends), in plain text and over TLS.
func TestDeepIdleLocal(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", useTLS), func(t *testing.T) {
			ts := newIdleServer(t, 50*time.Millisecond, nil, nil, func(c *Config) {
				if useTLS {
					c.TLS = testTLSConfig(t)
					c.Trace = io.Discard // the rebuilt Backend traces too
				}
			})
			mode := "sslmode=disable"
			if useTLS {
				mode = "sslmode=require"
			}
			c, err := connect(t, ts.addr, "app", "secret", "app", mode)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			waitDeepIdle(t, ts.Server, c.PID())
			if _, err := c.Exec(ctx, "SET dbproxy.max_staleness = '250ms'").ReadAll(); err != nil {
				t.Fatal(err)
			}
			waitDeepIdle(t, ts.Server, c.PID())
			r := c.ExecParams(ctx, "SHOW dbproxy.max_staleness", nil, nil, nil, nil).Read()
			if r.Err != nil || string(r.Rows[0][0]) != "250ms" {
				t.Fatalf("extended SHOW after deep idle: %+v", r)
			}
			waitDeepIdle(t, ts.Server, c.PID())
			res, err := c.Exec(ctx, "SHOW dbproxy.max_staleness").ReadAll()
			if err != nil || len(res) != 1 || string(res[0].Rows[0][0]) != "250ms" {
				t.Fatalf("SHOW after deep idle: %v %v", res, err)
			}
			hc, err := c.Hijack()
			if err != nil {
				t.Fatal(err)
			}
			defer hc.Conn.Close()
			_ = hc.Conn.SetDeadline(time.Now().Add(20 * time.Second))
			nc, fe := hc.Conn, hc.Frontend
			q := encodeMsgs(t, &pgproto3.Query{String: "SHOW dbproxy.max_staleness"})

			// Two requests in one write while deep idle.
			waitDeepIdle(t, ts.Server, c.PID())
			if _, err := nc.Write(append(append([]byte(nil), q...), q...)); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 2; i++ {
				if rows, errs := readReply(t, fe); len(errs) > 0 || len(rows) != 1 || rows[0] != "250ms" {
					t.Fatalf("pipelined reply %d: %v %v", i, rows, errs)
				}
			}

			// A message interrupted by the sweeper halfway through its
			// body, then again in its header after deep idle: the
			// Backend keeps it.
			waitDeepIdle(t, ts.Server, c.PID())
			if _, err := nc.Write(q[:2]); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { return !ts.isDeepIdle(c.PID()) })
			waitSweeps(t, ts.Server, 2)
			if _, err := nc.Write(q[2:9]); err != nil {
				t.Fatal(err)
			}
			waitSweeps(t, ts.Server, 2)
			if ts.isDeepIdle(c.PID()) {
				t.Fatal("deep idle in the middle of a message")
			}
			if _, err := nc.Write(q[9:]); err != nil {
				t.Fatal(err)
			}
			if rows, errs := readReply(t, fe); len(errs) > 0 || len(rows) != 1 {
				t.Fatalf("reply to a slow message: %v %v", rows, errs)
			}

			// Shutdown while deep idle: FATAL 57P01.
			waitDeepIdle(t, ts.Server, c.PID())
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			go func() { _ = ts.Close(cctx) }()
			expectFatal(t, nc, "57P01")
		})
	}
}

// TestDeepIdleBackendsReused has clients go deep idle and wake up in
// turn, so that they take each other's pooled Backends: every client
// keeps getting its own answers.
func TestDeepIdleBackendsReused(t *testing.T) {
	ts := newIdleServer(t, 50*time.Millisecond, nil, nil, nil)
	ctx := context.Background()
	var conns []*pgconn.PgConn
	for i := 1; i <= 4; i++ {
		c, err := connect(t, ts.addr, "app", "secret", "app", "sslmode=disable")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, fmt.Sprintf("SET dbproxy.max_staleness = '%dms'", 100*i)).ReadAll(); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for round := 0; round < 3; round++ {
		for _, c := range conns {
			waitDeepIdle(t, ts.Server, c.PID())
		}
		for i, c := range conns {
			want := fmt.Sprintf("%dms", 100*(i+1))
			res, err := c.Exec(ctx, "SHOW dbproxy.max_staleness").ReadAll()
			if err != nil || string(res[0].Rows[0][0]) != want {
				t.Fatalf("round %d client %d: %v %v, want %s", round, i, res, err, want)
			}
			r := c.ExecParams(ctx, "SHOW dbproxy.max_staleness", nil, nil, nil, nil).Read()
			if r.Err != nil || string(r.Rows[0][0]) != want {
				t.Fatalf("round %d client %d extended: %+v, want %s", round, i, r, want)
			}
		}
	}
}

// TestDeepIdlePostgres runs simple, extended and pipelined requests, a
// transaction and a shutdown on connections that went deep idle in
// between, through a proxy in front of a real PostgreSQL.
func TestDeepIdlePostgres(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl := pgcluster.StartT(t, pgcluster.Options{Name: "proxyidle"})
	if err := cl.CreateDatabase(ctx, "app", "app", "app"); err != nil {
		t.Fatal(err)
	}
	set, rt := clusterShard(t, ctx, cl, func(rc *replica.Config) {
		rc.PoolSize = 1 // a second client waits for the first one's backend
		rc.AcquireTimeout = time.Minute
	})
	for _, noInline := range []bool{false, true} {
		t.Run(fmt.Sprintf("noInlinePump=%v", noInline), func(t *testing.T) {
			ts := newIdleServer(t, 50*time.Millisecond, map[shard.ID]*replica.Set{0: set}, rt, func(c *Config) { c.noInlinePump = noInline })
			c, err := connect(t, ts.addr, "app", "secret", "app", "sslmode=disable")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			pid := c.PID()

			waitDeepIdle(t, ts.Server, pid)
			res, err := c.Exec(ctx, "SELECT 1").ReadAll()
			if err != nil || string(res[0].Rows[0][0]) != "1" {
				t.Fatalf("simple query: %v %v", res, err)
			}
			waitDeepIdle(t, ts.Server, pid)
			r := c.ExecParams(ctx, "SELECT $1::int + 1", [][]byte{[]byte("41")}, nil, nil, nil).Read()
			if r.Err != nil || string(r.Rows[0][0]) != "42" {
				t.Fatalf("extended query: %+v", r)
			}
			waitDeepIdle(t, ts.Server, pid)
			if _, err := c.Prepare(ctx, "twice", "SELECT $1::int * 2", nil); err != nil {
				t.Fatal(err)
			}
			waitDeepIdle(t, ts.Server, pid)
			b := &pgconn.Batch{}
			b.ExecParams("SELECT $1::text", [][]byte{[]byte("a")}, nil, nil, nil)
			b.ExecPrepared("twice", [][]byte{[]byte("21")}, nil, nil)
			b.ExecParams("SELECT $1::text", [][]byte{[]byte("b")}, nil, nil, nil)
			results, err := c.ExecBatch(ctx, b).ReadAll()
			if err != nil || len(results) != 3 || string(results[0].Rows[0][0]) != "a" || string(results[1].Rows[0][0]) != "42" || string(results[2].Rows[0][0]) != "b" {
				t.Fatalf("pipelined batch: %v %v", results, err)
			}

			// Idle inside a transaction holds the backend: no deep idle.
			waitDeepIdle(t, ts.Server, pid)
			if _, err := c.Exec(ctx, "BEGIN; SELECT 1").ReadAll(); err != nil {
				t.Fatal(err)
			}
			n := ts.sweeps.Load()
			time.Sleep(300 * time.Millisecond)
			if ts.isDeepIdle(pid) || ts.sweeps.Load() != n {
				t.Fatal("a connection inside a transaction was swept")
			}
			if _, err := c.Exec(ctx, "SELECT 2; COMMIT").ReadAll(); err != nil {
				t.Fatal(err)
			}

			// A reader waiting for a backend is in the idle state, not
			// reading the client: the sweeper's deadline strikes its next
			// read, which goes on.
			c2, err := connect(t, ts.addr, "app", "secret", "app", "sslmode=disable")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Exec(ctx, "BEGIN; SELECT 1").ReadAll(); err != nil { // holds the only backend
				t.Fatal(err)
			}
			waitDeepIdle(t, ts.Server, c2.PID())
			got := make(chan error, 1)
			go func() {
				res, err := c2.Exec(ctx, "SELECT 3").ReadAll()
				if err == nil && string(res[0].Rows[0][0]) != "3" {
					err = fmt.Errorf("got %v", res)
				}
				got <- err
			}()
			waitFor(t, func() bool { return !ts.isDeepIdle(c2.PID()) })
			waitSweeps(t, ts.Server, 1)
			if _, err := c.Exec(ctx, "COMMIT").ReadAll(); err != nil {
				t.Fatal(err)
			}
			if err := <-got; err != nil {
				t.Fatalf("query that waited for a backend: %v", err)
			}
			waitDeepIdle(t, ts.Server, c2.PID())
			if res, err := c2.Exec(ctx, "SELECT 4").ReadAll(); err != nil || string(res[0].Rows[0][0]) != "4" {
				t.Fatalf("after waiting: %v %v", res, err)
			}
			c2.Close(ctx)

			// A pipeline of two requests in one write, and a shutdown, on
			// raw connections that are deep idle.
			nc, fe := hijack(t, ts)
			waitFor(t, func() bool { return ts.Stats().ByState["idle"] == 2 })
			for _, st := range ts.Stats().Conns {
				waitDeepIdle(t, ts.Server, st.PID)
			}
			two := encodeMsgs(t, &pgproto3.Query{String: "SELECT 7"},
				&pgproto3.Parse{Query: "SELECT $1::int"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("8")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
			if _, err := nc.Write(two); err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"7", "8"} {
				if rows, errs := readReply(t, fe); len(errs) > 0 || len(rows) != 1 || rows[0] != want {
					t.Fatalf("pipelined %s: %v %v", want, rows, errs)
				}
			}
			for _, st := range ts.Stats().Conns {
				waitDeepIdle(t, ts.Server, st.PID)
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := ts.Close(cctx); err != nil {
				t.Fatal(err)
			}
			expectFatal(t, nc, "57P01")
			if _, err := c.Exec(ctx, "SELECT 1").ReadAll(); err == nil {
				t.Fatal("query after shutdown succeeded")
			}
		})
	}
}
