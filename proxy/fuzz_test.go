package proxy

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/shard"
	"github.com/jackc/pgx/v5/pgproto3"
)

// fuzzConn is a net.Conn that reads a fixed input and discards writes.
type fuzzConn struct{ r *bytes.Reader }

func (f *fuzzConn) Read(b []byte) (int, error)       { return f.r.Read(b) }
func (f *fuzzConn) Write(b []byte) (int, error)      { return len(b), nil }
func (f *fuzzConn) Close() error                     { return nil }
func (f *fuzzConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (f *fuzzConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (f *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (f *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (f *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

func fuzzServer(f *testing.F) *Server {
	cfg := DefaultConfig()
	cfg.Users = []User{{Name: "app", Password: "secret"}}
	cfg.MaxMessageBytes = 4096
	s, err := New(cfg, Deps{Router: testRouter(&testing.T{}), Shards: map[shard.ID]*replica.Set{0: nil}})
	if err != nil {
		f.Fatal(err)
	}
	return s
}

func encodeAll(msgs ...interface{ Encode([]byte) ([]byte, error) }) []byte {
	var out []byte
	for _, m := range msgs {
		out, _ = m.Encode(out)
	}
	return out
}

// FuzzStartup feeds arbitrary bytes to a new connection: the startup
// path must answer or close, never panic or hang.
func FuzzStartup(f *testing.F) {
	s := fuzzServer(f)
	f.Add(encodeAll(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "app", "database": "app"}}))
	f.Add(encodeAll(&pgproto3.SSLRequest{}, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "x"}}))
	f.Add(encodeAll(&pgproto3.GSSEncRequest{}))
	f.Add(encodeAll(&pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}}))
	f.Add(append(encodeAll(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "app", "options": "-c search_path=a"}}),
		encodeAll(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abc")})...))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add(binary.BigEndian.AppendUint32(nil, 20000))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := newClientConn(s, &fuzzConn{r: bytes.NewReader(data)})
		c.serve()
	})
}

// FuzzMessages feeds arbitrary bytes to an authenticated connection (no
// backends: every routed statement fails): the message path must answer
// or close, never panic or hang.
func FuzzMessages(f *testing.F) {
	s := fuzzServer(f)
	f.Add(encodeAll(&pgproto3.Query{String: "select 1"}, &pgproto3.Terminate{}))
	f.Add(encodeAll(&pgproto3.Parse{Name: "s", Query: "select $1::int"}, &pgproto3.Describe{ObjectType: 'S', Name: "s"}, &pgproto3.Sync{},
		&pgproto3.Bind{PreparedStatement: "s", Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{}, &pgproto3.Sync{}))
	f.Add(encodeAll(&pgproto3.Query{String: "SET dbproxy.causal_token = 's0:0/1'"}, &pgproto3.Query{String: "SHOW dbproxy.causal_token"},
		&pgproto3.Parse{Query: "SHOW dbproxy.max_staleness"}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}))
	f.Add(encodeAll(&pgproto3.Query{String: "BEGIN"}, &pgproto3.Query{String: "select * from users where id = 1"}, &pgproto3.Query{String: "COMMIT"}))
	f.Add(encodeAll(&pgproto3.CopyData{Data: []byte("x")}, &pgproto3.CopyDone{}, &pgproto3.Flush{}, &pgproto3.Sync{}))
	f.Add([]byte{'Q', 0, 0, 0, 2})
	f.Add([]byte{'B', 0, 0, 0, 6, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		c := newClientConn(s, &fuzzConn{r: bytes.NewReader(data)})
		c.user, c.database = "app", "app"
		sess, err := s.newSession(c.ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		c.sess = sess
		s.reg.add(c)
		defer s.reg.remove(c)
		defer c.cancel()
		for fn := c.stateIdle; fn != nil; {
			fn = fn(c.ctx)
		}
		c.teardown()
	})
}

var _ = io.EOF
