package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgproto3"
)

// stateFn is one state of a client connection: it does that state's work
// and returns the next state (nil ends the connection).
type stateFn func(ctx context.Context) stateFn

// clientConn is one client connection. The reader goroutine (serve) owns
// the client-side receive path and every state function; while a backend
// is attached a second goroutine (pump, see attach.go) streams backend
// messages to the client. Fields below mu are shared between the two.
type clientConn struct {
	srv     *Server
	netConn net.Conn
	box     *protoBox         // holds fe (idle.go); nil while deep idle (under wmu)
	fe      *pgproto3.Backend // the client side of the protocol (we are its backend); Flush writes to netConn; nil while deep idle (idle.go)
	wmu     sync.Mutex        // serializes writes to the client (queue/flushClientLocked, unflushed) and guards fe and box (deep idle)
	// unflushed is the bytes queued for the client since the last flush
	// (out.go), so that a long result is written out in pieces (under wmu).
	unflushed int
	start     time.Time
	remote    string
	tls       bool
	local     bool // on a Unix socket: no TLS asked or offered

	pid    uint32
	secret []byte

	user, database string
	startupParams  map[string]string
	// backendID is who the client's backend connections log in as: its
	// own user, to its own database (set at authentication).
	backendID *replica.Identity
	// loginChecked: backendID logged in to a node (checkBackendLogin).
	// Owned by the reader goroutine.
	loginChecked bool

	state    atomic.Uint32 // connState
	shutdown atomic.Bool   // Close asked this connection to end
	queries  atomic.Uint64

	// Deep idle (idle.go): idleMark is the sweeper tick at which the
	// connection was first seen idle (0: not seen; idleClaimed: the
	// sweeper set a read deadline, under sweepMu; idleDeep: no Backend);
	// deepIdle is set while the connection has no Backend.
	idleMark atomic.Int64
	sweepMu  sync.Mutex
	deepIdle atomic.Bool
	wake     [5]byte // the first bytes read while deep idle
	wakeN    uint8

	ctx    context.Context // connection lifetime; cancelled when the connection ends or the server is killed
	cancel context.CancelFunc

	// to holds the state functions a state returns most often, bound to
	// this connection once (a method value made at each return would be
	// an allocation per request).
	to struct{ idle, attached, closing, sendQuery, sendBatch stateFn }

	sess       *session                   // owned by the reader goroutine, read by the pump under mu
	pending    []pgproto3.FrontendMessage // buffered extended-protocol messages (copies) awaiting a route
	skipToSync bool                       // a local error was sent: drop messages until Sync
	localBatch *localResult               // the current batch is answered by the proxy
	cacheState cacheConnState             // result cache bookkeeping (cache.go)
	// The extended-protocol batch being sent while it may run again
	// elsewhere (retry.go): its messages (copies), target and statement;
	// nil between batches.
	replay       []pgproto3.FrontendMessage
	replayBuf    []pgproto3.FrontendMessage // replay's backing array, reused
	replayTarget target
	replayStmt   *router.Statement
	req          sendReq // the request stateSendQuery / stateSendBatch sends

	mu          sync.Mutex
	cond        *sync.Cond
	att         *attachment // non-nil while a backend is leased
	spare       *attachment // a finished attachment no goroutine refers to, for the next attach (under mu)
	resend      bool        // the request's node failed before answering: the reader sends it again (retry.go; under mu)
	lastPump    chan struct{}
	lastTx      byte
	closeReason error                   // why the pump ended the connection
	multiCancel context.CancelCauseFunc // cancels the multi-shard statement running (runMulti)
	// multiRunning is multiCancel != nil, readable without mu (the
	// dead-client check's scan, clientcheck.go).
	multiRunning atomic.Bool
	stalled      stallMark // the dead-client check's view of a read waiting on a failing node (under mu)

	// LISTEN (notify.go), under mu: channels held with the notifier,
	// channels subscribed to (the router session's committed LISTENs),
	// and the session's ListenVersion they reflect.
	listenHeld    map[string]bool
	listenSubs    map[string]bool
	listenVersion uint64
	notes         notifyOut // notifications waiting to be written
}

func newClientConn(s *Server, nc net.Conn) *clientConn {
	c := &clientConn{srv: s, netConn: nc, start: time.Now(), remote: nc.RemoteAddr().String(), lastTx: 'I'}
	if nc.LocalAddr().Network() == "unix" {
		c.local, c.remote = true, "[local]"
	}
	c.cond = sync.NewCond(&c.mu)
	c.to.idle, c.to.attached, c.to.closing = c.stateIdle, c.stateAttached, c.stateClosing
	c.to.sendQuery, c.to.sendBatch = c.stateSendQuery, c.stateSendBatch
	c.secret = make([]byte, 4)
	_, _ = rand.Read(c.secret)
	c.ctx, c.cancel = context.WithCancel(s.baseCtx)
	// When the connection's context ends (the server is killed), a pump
	// reading a backend is interrupted.
	context.AfterFunc(c.ctx, func() {
		c.mu.Lock()
		att := c.att
		c.mu.Unlock()
		if att != nil {
			c.interrupt(att)
		}
	})
	c.setTransport(nc)
	return c
}

func (c *clientConn) setTransport(nc net.Conn) {
	c.netConn = nc
	// No write buffer of our own: the Backend buffers what Send encodes
	// until Flush and keeps at most 1 KiB between flushes, which keeps an
	// idle client connection small. The Backend comes from the Server's
	// pool (idle.go) and follows the framing of the new transport from its
	// startup phase; one replaced by a TLS upgrade may hold bytes and is
	// not reused.
	c.takeBox(false)
}

// syncWriter serializes trace output of all connections.
type syncWriter struct {
	w  io.Writer
	mu *sync.Mutex
	c  *clientConn
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.w, "[%d] ", s.c.pid)
	return s.w.Write(b)
}

// serve runs the state machine until the connection ends, then cleans up:
// the backend (if any) is released only when idle, otherwise discarded.
func (c *clientConn) serve() {
	c.srv.reg.add(c)
	defer c.srv.reg.remove(c)
	defer c.cancel()
	defer c.netConn.Close()
	defer c.dropListens()
	defer c.teardown()

	ctx := c.ctx
	for fn := c.stateStartup; fn != nil; {
		fn = fn(ctx)
	}
}

func (c *clientConn) setState(s connState) { c.srv.reg.transition(c, s) }

// notifyShutdown asks the connection to end at its next idle point; a
// connection that is idle or still starting is interrupted at once.
func (c *clientConn) notifyShutdown() {
	c.shutdown.Store(true)
	c.mu.Lock()
	// A backend kept while the client is inside a transaction counts as
	// attached even when no pump is reading it.
	attached := c.att != nil && (!c.att.parked || c.lastTx != 'I')
	c.mu.Unlock()
	if !attached {
		_ = c.netConn.SetReadDeadline(time.Now())
	}
	c.srv.helpers.Add(1)
	go func() {
		defer c.srv.helpers.Done()
		// After the drain deadline even attached connections end.
		select {
		case <-c.srv.kill:
			_ = c.netConn.SetReadDeadline(time.Now())
			c.cancel()
		case <-c.ctx.Done():
		}
	}()
}

// send writes messages to the client and flushes.
func (c *clientConn) send(msgs ...pgproto3.BackendMessage) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for _, m := range msgs {
		c.queue(m)
	}
	return c.flushClientLocked(true)
}

// fail sends err to the client as a FATAL error; the caller then closes.
func (c *clientConn) fail(err error) stateFn {
	if !errors.Is(err, errClientGone) {
		_ = c.netConn.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_ = c.send(errorResponse(err, "FATAL"))
	}
	return c.to.closing
}

func (c *clientConn) stateClosing(ctx context.Context) stateFn {
	c.setState(stateClosing)
	return nil
}

// stateStartup reads SSLRequest / GSSENCRequest / CancelRequest /
// StartupMessage.
func (c *clientConn) stateStartup(ctx context.Context) stateFn {
	if t := c.srv.cfg.StartupTimeout; t > 0 {
		_ = c.netConn.SetDeadline(time.Now().Add(t))
	}
	for {
		if c.shutdown.Load() {
			c.srv.reg.rejected.Add(1)
			return c.fail(ErrShuttingDown)
		}
		msg, err := c.fe.ReceiveStartupMessage()
		if err != nil {
			c.srv.reg.rejected.Add(1)
			if ce := c.receiveError(err); errors.Is(ce, errClientGone) {
				return c.to.closing
			}
			return c.fail(&clientError{code: codeProtocolViolation, message: "invalid startup packet", err: err})
		}
		switch m := msg.(type) {
		case *pgproto3.SSLRequest:
			if c.tls || c.local || c.srv.cfg.TLS == nil {
				if _, err := c.netConn.Write([]byte{'N'}); err != nil {
					return c.to.closing
				}
				continue
			}
			if _, err := c.netConn.Write([]byte{'S'}); err != nil {
				return c.to.closing
			}
			tc := tls.Server(c.netConn, c.srv.cfg.TLS)
			if err := tc.HandshakeContext(ctx); err != nil {
				c.srv.reg.rejected.Add(1)
				c.srv.log.Debug("tls handshake failed", "remote", c.remote, "err", err)
				return c.to.closing
			}
			// A fresh Backend: bytes the client sent before the handshake
			// (a buffer-stuffing attack) are dropped with the old reader.
			c.tls = true
			c.setTransport(tc)
		case *pgproto3.GSSEncRequest:
			if _, err := c.netConn.Write([]byte{'N'}); err != nil {
				return c.to.closing
			}
		case *pgproto3.CancelRequest:
			c.srv.cancelRequest(ctx, m.ProcessID, m.SecretKey)
			return c.to.closing
		case *pgproto3.StartupMessage:
			return c.acceptStartup(m)
		default:
			return c.fail(newClientError(codeProtocolViolation, fmt.Sprintf("unexpected startup message %T", msg)))
		}
	}
}

func (c *clientConn) acceptStartup(m *pgproto3.StartupMessage) stateFn {
	reject := func(code, msg string) stateFn {
		c.srv.reg.rejected.Add(1)
		return c.fail(newClientError(code, msg))
	}
	if m.ProtocolVersion != pgproto3.ProtocolVersion30 && m.ProtocolVersion != pgproto3.ProtocolVersion32 {
		return reject(codeFeatureNotSupported, fmt.Sprintf("unsupported frontend protocol %d.%d", m.ProtocolVersion>>16, m.ProtocolVersion&0xffff))
	}
	var unknown []string
	params := map[string]string{}
	for k, v := range m.Parameters {
		switch {
		case strings.HasPrefix(k, "_pq_."):
			unknown = append(unknown, k)
		case k == "replication" && v != "false" && v != "0" && v != "off" && v != "no":
			return reject(codeFeatureNotSupported, "dbproxy does not proxy replication connections")
		default:
			params[k] = v
		}
	}
	c.user = params["user"]
	if c.user == "" {
		return reject(codeInvalidAuthSpec, "no PostgreSQL user name specified in startup packet")
	}
	c.database = params["database"]
	if c.database == "" {
		c.database = c.user
	}
	delete(params, "user")
	delete(params, "database")
	c.startupParams = params
	if c.srv.cfg.RequireTLS && !c.tls && !c.local {
		return reject(codeInvalidAuthSpec, "dbproxy requires TLS (connect with sslmode=require)")
	}
	if m.ProtocolVersion == pgproto3.ProtocolVersion32 || len(unknown) > 0 {
		// We speak 3.0 (4-byte cancel keys); tell the client.
		c.wmu.Lock()
		c.queue(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unknown})
		c.wmu.Unlock()
	}
	return c.stateAuth
}

// stateAuth authenticates the user, checks the database, and sends the
// greeting (AuthenticationOk, ParameterStatus×n, BackendKeyData, ReadyForQuery).
func (c *clientConn) stateAuth(ctx context.Context) stateFn {
	c.setState(stateAuth)
	live := c.srv.live.Load()
	cred := live.creds[c.user]
	if err := c.authenticate(cred, c.srv.cfg.Auth); err != nil {
		c.srv.reg.rejected.Add(1)
		c.srv.log.Info("client authentication failed", "remote", c.remote, "user", c.user, "err", err)
		return c.fail(err)
	}
	if len(live.databases) > 0 && !contains(live.databases, c.database) ||
		len(cred.databases) > 0 && !contains(cred.databases, c.database) {
		c.srv.reg.rejected.Add(1)
		return c.fail(newClientError(codeUnknownDatabase, fmt.Sprintf("database %q does not exist", c.database)))
	}
	if cred.backendPassword == "" {
		c.srv.reg.rejected.Add(1)
		return c.fail(newClientError(codeInvalidAuthSpec, fmt.Sprintf("dbproxy has no password to log in to the databases as user %q (set its backend password)", c.user)))
	}
	c.backendID = &replica.Identity{User: c.user, Password: cred.backendPassword, Database: c.database}
	if live.maxClients > 0 && c.srv.reg.active() > live.maxClients {
		c.srv.reg.rejected.Add(1)
		return c.fail(newClientError(codeTooManyConnections, "sorry, too many clients already"))
	}
	sess, err := c.srv.newSession(ctx, c)
	if err != nil {
		c.srv.reg.rejected.Add(1)
		return c.fail(err)
	}
	c.mu.Lock()
	c.sess = sess
	c.mu.Unlock()
	msgs := []pgproto3.BackendMessage{&pgproto3.AuthenticationOk{}}
	params := c.srv.params()
	for _, k := range []string{"application_name", "client_encoding", "DateStyle", "TimeZone", "IntervalStyle", "extra_float_digits"} {
		if v, ok := c.startupParams[k]; ok {
			params[k] = v
		}
	}
	for k, v := range params {
		msgs = append(msgs, &pgproto3.ParameterStatus{Name: k, Value: v})
	}
	msgs = append(msgs, &pgproto3.BackendKeyData{ProcessID: c.pid, SecretKey: c.secret}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := c.send(msgs...); err != nil {
		return c.to.closing
	}
	_ = c.netConn.SetDeadline(time.Time{})
	if c.shutdown.Load() {
		return c.fail(ErrShuttingDown)
	}
	return c.to.idle
}

func (c *clientConn) stats() ClientStats {
	st := ClientStats{
		PID: c.pid, Remote: c.remote, User: c.user, Database: c.database,
		State: connState(c.state.Load()).String(), Since: c.start, Queries: c.queries.Load(),
		PoolMode: c.srv.cfg.PoolMode.String(), TLS: c.tls, DeepIdle: c.deepIdle.Load(),
	}
	c.mu.Lock()
	if c.att != nil {
		st.Backend = c.att.nodeName
	}
	st.TxStatus = string(c.lastTx)
	if c.sess != nil {
		st.Prepared = len(c.sess.stmts)
		st.Tokens = c.sess.tokenText()
		if d, ok := c.sess.rs.MaxStaleness(); ok {
			st.Staleness = d
		} else {
			st.Staleness = c.srv.live.Load().maxStaleness
		}
	}
	c.mu.Unlock()
	return st
}

// cancelRequest handles a CancelRequest for the client that was issued
// (pid, secret): it cancels the query running on that client's current
// backend. Unknown keys are ignored, as PostgreSQL does.
func (s *Server) cancelRequest(ctx context.Context, pid uint32, secret []byte) {
	target := s.reg.lookup(pid)
	if target == nil || len(secret) != len(target.secret) || !equalConstTime(secret, target.secret) {
		return
	}
	target.mu.Lock()
	att := target.att
	var lease *replica.Lease
	var node string
	if att != nil {
		// Copied under the lock: a finished attachment is reused.
		lease, node = att.lease, att.nodeName
	}
	multi := target.multiCancel
	target.mu.Unlock()
	if multi != nil {
		// A multi-shard statement: its context reaches every shard's
		// backend as a CancelRequest (replica's pooled connections).
		multi(errCanceledByClient)
	}
	if lease == nil {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, backendCancelTimeout)
	defer cancel()
	if err := lease.Conn().CancelRequest(cctx); err != nil {
		s.log.Debug("cancel request to backend failed", "node", node, "err", err)
	}
}

func equalConstTime(a, b []byte) bool {
	var v byte
	for i := range a {
		v |= a[i] ^ b[i]
	}
	return v == 0
}
