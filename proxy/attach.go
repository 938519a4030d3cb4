package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/shard"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// attachment is a leased backend and the bookkeeping of the messages in
// flight on it. Fields after "under c.mu" are shared by the reader and
// the pump and guarded by clientConn.mu.
type attachment struct {
	lease *replica.Lease
	conn  *pgconn.PgConn
	// wmu is held by the reader while it writes to the backend
	// (Frontend.Send/Flush). The pump takes it before giving the backend
	// back: a ReadyForQuery can arrive while the reader's Flush, whose
	// bytes caused it, is still resetting the Frontend's buffer.
	wmu      sync.Mutex
	bst      *backendState
	nodeName string
	shard    shard.ID
	primary  bool
	done     chan struct{} // closed when the pump has exited
	cancel   context.CancelFunc

	// under c.mu
	outstanding int  // Sync/Query/FunctionCall sent, ReadyForQuery not yet received
	unsynced    bool // extended-protocol messages sent since the last Sync
	flushWanted bool // the client sent Flush: deliver every response at once
	sentSeg     int  // ReadyForQuery-producing messages sent
	recvSeg     int  // ReadyForQuery messages received
	expect      []expectation
	wrote       bool // a write was sent in the current transaction (causal token at commit)
	transient   bool // leased without a routing decision (prepare/describe): the router session is not told
	parked      bool // session pooling: idle, kept, no pump running
	ctx         context.Context
	swallowSeg  int // recvSeg value after the injected preamble's ReadyForQuery (-1: none)
	copying     bool
	released    bool
	copyBytes   int // CopyData bytes sent since the last flush to the backend
}

// expectation is a ParseComplete/BindComplete/CloseComplete the pump will
// see, and whether the client asked for it (forward) or the proxy did
// (swallow: an injected re-prepare).
type expectation struct {
	seg     int
	kind    byte // '1' ParseComplete, '2' BindComplete, '3' CloseComplete
	swallow bool
	name    string // statement name for Parse (to forget it on failure)
	hash    uint64
}

// stateIdle waits for the next client message with no backend leased.
func (c *clientConn) stateIdle(ctx context.Context) stateFn {
	c.setState(stateIdle)
	if c.shutdown.Load() {
		return c.fail(ErrShuttingDown)
	}
	msg, err := c.fe.Receive()
	if err != nil {
		return c.readFailed(err)
	}
	return c.dispatch(ctx, msg)
}

// stateAttached reads client messages while a backend is leased.
func (c *clientConn) stateAttached(ctx context.Context) stateFn {
	c.setState(stateAttached)
	msg, err := c.fe.Receive()
	if err != nil {
		return c.readFailed(err)
	}
	return c.dispatch(ctx, msg)
}

func (c *clientConn) readFailed(err error) stateFn {
	if c.shutdown.Load() {
		return c.fail(ErrShuttingDown)
	}
	c.mu.Lock()
	reason := c.closeReason
	c.mu.Unlock()
	if reason != nil {
		return c.stateClosing // the pump already told the client
	}
	return c.fail(c.receiveError(err))
}

// dispatch handles one client message and returns the next state.
func (c *clientConn) dispatch(ctx context.Context, msg pgproto3.FrontendMessage) stateFn {
	switch m := msg.(type) {
	case *pgproto3.Terminate:
		return c.stateClosing
	case *pgproto3.Query:
		c.queries.Add(1)
		return c.handleQuery(ctx, m)
	case *pgproto3.Describe:
		if m.ObjectType != 'S' && m.ObjectType != 'P' {
			return c.fail(newClientError(codeProtocolViolation, fmt.Sprintf("invalid DESCRIBE message subtype %d", m.ObjectType)))
		}
		return c.handleExtended(ctx, msg)
	case *pgproto3.Close:
		if m.ObjectType != 'S' && m.ObjectType != 'P' {
			return c.fail(newClientError(codeProtocolViolation, fmt.Sprintf("invalid CLOSE message subtype %d", m.ObjectType)))
		}
		return c.handleExtended(ctx, msg)
	case *pgproto3.Parse, *pgproto3.Bind, *pgproto3.Execute, *pgproto3.Sync, *pgproto3.Flush:
		return c.handleExtended(ctx, msg)
	case *pgproto3.FunctionCall:
		c.queries.Add(1)
		return c.handleFunctionCall(ctx, m)
	case *pgproto3.CopyData, *pgproto3.CopyDone, *pgproto3.CopyFail:
		c.mu.Lock()
		att := c.att
		c.mu.Unlock()
		if att == nil {
			return c.stateIdle // stray copy messages after a failed COPY are ignored, as PostgreSQL does
		}
		if err := c.forward(att, msg); err != nil {
			return c.backendFailed(att, err)
		}
		return c.stateAttached
	default:
		return c.fail(newClientError(codeProtocolViolation, fmt.Sprintf("unexpected message %T", msg)))
	}
}

// current returns the attachment when the client still holds a backend.
// With wait, it first lets every in-flight request finish (the pump may
// then release the backend and current returns nil).
func (c *clientConn) current(wait bool) *attachment {
	c.mu.Lock()
	defer c.mu.Unlock()
	if wait {
		for c.att != nil && (c.att.outstanding > 0 || c.att.copying) && c.closeReason == nil {
			c.cond.Wait()
		}
	}
	return c.att
}

// attach leases a backend for d, brings it to the session's state and
// starts the pump.
func (c *clientConn) attach(ctx context.Context, d target, preamble []string, transient bool) (*attachment, error) {
	if c.lastPump != nil {
		<-c.lastPump // the previous pump's last writes precede ours
	}
	lease, bst, err := c.leaseFor(ctx, d, preamble)
	if err != nil {
		return nil, err
	}
	conn, node := lease.Conn(), lease.Node()
	pctx, cancel := context.WithCancel(c.ctx)
	att := &attachment{
		lease: lease, conn: conn, bst: bst, nodeName: node.Name(), shard: d.shard,
		primary: node.Role() == replica.RolePrimary, done: make(chan struct{}), cancel: cancel, transient: transient, swallowSeg: -1, ctx: pctx,
	}
	c.mu.Lock()
	c.att = att
	c.lastPump = att.done
	c.mu.Unlock()
	go c.pump(pctx, att)
	c.setState(stateAttached)
	return att, nil
}

// forward sends one client message to the backend, recording what the
// pump must expect. Parse/Bind/Describe/Close are rewritten with injected
// re-prepares where the backend lacks the client's statement.
func (c *clientConn) forward(att *attachment, msg pgproto3.FrontendMessage) error {
	att.wmu.Lock()
	defer att.wmu.Unlock()
	fr := att.conn.Frontend()
	flush := false
	c.mu.Lock()
	if att.released {
		// The pump gave the backend back meanwhile (only possible for a
		// Flush sent between transactions): nothing is left to flush.
		c.mu.Unlock()
		if _, ok := msg.(*pgproto3.Flush); ok {
			return c.flushClient()
		}
		return errNoBackend
	}
	c.unpark(att)
	switch m := msg.(type) {
	case *pgproto3.Parse:
		h := stmtHash(m.Query, m.ParameterOIDs)
		if old, ok := att.bst.stmts[m.Name]; ok && m.Name != "" && old != 0 {
			att.inject(fr, &pgproto3.Close{ObjectType: 'S', Name: m.Name}, expectation{kind: '3', swallow: true})
		}
		c.sess.stmts[m.Name] = &preparedStmt{name: m.Name, query: m.Query, paramOIDs: append([]uint32(nil), m.ParameterOIDs...), hash: h}
		att.bst.stmts[m.Name] = h
		att.expect = append(att.expect, expectation{seg: att.sentSeg, kind: '1', name: m.Name, hash: h})
		att.unsynced = true
		fr.Send(m)
	case *pgproto3.Bind:
		c.ensurePrepared(att, fr, m.PreparedStatement)
		att.expect = append(att.expect, expectation{seg: att.sentSeg, kind: '2'})
		att.unsynced = true
		fr.Send(m)
	case *pgproto3.Describe:
		if m.ObjectType == 'S' {
			c.ensurePrepared(att, fr, m.Name)
		}
		att.unsynced = true
		fr.Send(m)
	case *pgproto3.Close:
		if m.ObjectType == 'S' {
			delete(c.sess.stmts, m.Name)
			delete(att.bst.stmts, m.Name)
		}
		att.expect = append(att.expect, expectation{seg: att.sentSeg, kind: '3'})
		att.unsynced = true
		fr.Send(m)
	case *pgproto3.Execute:
		att.unsynced = true
		fr.Send(m)
	case *pgproto3.Sync:
		att.unsynced = false
		att.outstanding++
		att.sentSeg++
		fr.Send(m)
		flush = true
	case *pgproto3.Flush:
		att.flushWanted = true
		fr.Send(m)
		flush = true
	case *pgproto3.Query:
		// A simple query destroys the unnamed statement.
		delete(att.bst.stmts, "")
		att.outstanding++
		att.sentSeg++
		fr.Send(m)
		flush = true
	case *pgproto3.FunctionCall:
		att.outstanding++
		att.sentSeg++
		fr.Send(m)
		flush = true
	case *pgproto3.CopyData:
		att.copyBytes += len(m.Data)
		flush = att.copyBytes >= 64<<10
		fr.Send(m)
	case *pgproto3.CopyDone, *pgproto3.CopyFail:
		fr.Send(m)
		flush = true
	default:
		c.mu.Unlock()
		return newClientError(codeProtocolViolation, fmt.Sprintf("unexpected message %T", msg))
	}
	if flush {
		att.copyBytes = 0
	}
	c.mu.Unlock()
	if flush {
		return fr.Flush()
	}
	return nil
}

// ensurePrepared injects a Parse (and a Close of a different statement of
// the same name) when the backend does not hold the client's statement.
// Called with c.mu held.
func (c *clientConn) ensurePrepared(att *attachment, fr *pgproto3.Frontend, name string) {
	ps := c.sess.stmts[name]
	if ps == nil {
		return // unknown to us: PostgreSQL reports the error
	}
	have, ok := att.bst.stmts[name]
	if ok && have == ps.hash {
		return
	}
	if ok && name != "" {
		att.inject(fr, &pgproto3.Close{ObjectType: 'S', Name: name}, expectation{kind: '3', swallow: true})
	}
	att.inject(fr, &pgproto3.Parse{Name: name, Query: ps.query, ParameterOIDs: ps.paramOIDs}, expectation{kind: '1', swallow: true, name: name, hash: ps.hash})
	att.bst.stmts[name] = ps.hash
}

func (att *attachment) inject(fr *pgproto3.Frontend, msg pgproto3.FrontendMessage, e expectation) {
	e.seg = att.sentSeg
	att.expect = append(att.expect, e)
	att.unsynced = true
	fr.Send(msg)
}

// backendFailed ends the client connection after the backend broke.
func (c *clientConn) backendFailed(att *attachment, err error) stateFn {
	att.cancel()
	<-att.done
	c.mu.Lock()
	reason := c.closeReason
	c.mu.Unlock()
	if reason != nil {
		return c.stateClosing
	}
	return c.fail(&clientError{code: codeConnectionFailure, message: "lost connection to backend " + att.nodeName, err: err})
}

// teardown runs when the connection ends: a leased backend that may be
// mid-transaction is never pooled dirty. If requests are in flight the
// backend is asked to cancel them, then the connection is discarded;
// an idle backend goes back to the pool.
func (c *clientConn) teardown() {
	c.mu.Lock()
	att := c.att
	c.mu.Unlock()
	if att == nil {
		return
	}
	c.mu.Lock()
	busy := att.outstanding > 0 || att.unsynced || att.copying
	c.mu.Unlock()
	att.cancel()
	<-att.done
	c.mu.Lock()
	released := att.released
	c.att = nil
	c.mu.Unlock()
	if released {
		return
	}
	if busy || att.conn.TxStatus() != 'I' || att.conn.IsBusy() {
		att.lease.Discard(nil)
		return
	}
	att.lease.Release(nil)
}

// pump streams backend messages to the client until the backend can be
// released (ReadyForQuery 'I' with nothing in flight, transaction
// pooling), the backend fails, or ctx ends.
//
// ctx interrupts the backend read through a read deadline armed once per
// pump (context.AfterFunc), not through pgconn's per-call context watch,
// which costs a channel and an AfterFunc registration per message.
func (c *clientConn) pump(ctx context.Context, att *attachment) {
	defer close(att.done)
	nc := att.conn.Conn()
	interrupted := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = nc.SetReadDeadline(time.Now())
		close(interrupted)
	})
	// disarm stops the interruption; if it already fired, it waits for it
	// and clears the deadline (as pgconn's context watch does) so that a
	// backend given back afterwards is not left with a past deadline.
	disarm := func() {
		if !stop() {
			<-interrupted
			_ = nc.SetReadDeadline(time.Time{})
		}
	}
	for {
		msg, err := att.conn.ReceiveMessage(context.Background())
		if err != nil {
			disarm()
			c.pumpFailed(ctx, att, err) // the backend is discarded
			return
		}
		c.mu.Lock()
		forward, flush, release := c.observe(att, msg)
		c.mu.Unlock()
		if release {
			disarm()
			c.detach(ctx, att, msg.(*pgproto3.ReadyForQuery), !att.parked)
			return
		}
		if !forward {
			continue
		}
		c.wmu.Lock()
		c.fe.Send(msg)
		err = c.fe.Flush()
		if err == nil && flush {
			err = c.bw.Flush()
		}
		c.wmu.Unlock()
		if err != nil {
			disarm()
			// The client is gone; the reader will see it too.
			c.mu.Lock()
			c.closeReason = errClientGone
			c.cond.Broadcast()
			c.mu.Unlock()
			_ = c.netConn.Close()
			return
		}
	}
}

// observe updates the bookkeeping for one backend message. Called with
// c.mu held. It reports whether to forward it, whether to flush the
// client afterwards, and whether the backend is to be released now.
func (c *clientConn) observe(att *attachment, msg pgproto3.BackendMessage) (forward, flush, release bool) {
	if att.swallowSeg == att.recvSeg+1 {
		if _, ok := msg.(*pgproto3.ReadyForQuery); !ok {
			return false, false, false // results of an injected preamble
		}
	}
	switch m := msg.(type) {
	case *pgproto3.ParseComplete, *pgproto3.BindComplete, *pgproto3.CloseComplete:
		if len(att.expect) > 0 {
			e := att.expect[0]
			att.expect = att.expect[1:]
			if e.swallow {
				return false, false, false
			}
		}
	case *pgproto3.ErrorResponse:
		// The backend skips to the next Sync: forget what it will not answer.
		keep := att.expect[:0]
		for _, e := range att.expect {
			if e.seg != att.recvSeg {
				keep = append(keep, e)
			} else if e.kind == '1' {
				delete(att.bst.stmts, e.name)
				if ps := c.sess.stmts[e.name]; ps != nil && ps.hash == e.hash && !e.swallow {
					delete(c.sess.stmts, e.name)
				}
			}
		}
		att.expect = keep
		if !att.transient {
			c.sess.rs.ObserveError()
		}
		att.copying = false
		flush = true
	case *pgproto3.CommandComplete:
		c.observeCommand(att, m.CommandTag)
	case *pgproto3.CopyInResponse, *pgproto3.CopyBothResponse:
		att.copying = true
		flush = true
		c.srv.reg.transition(c, stateCopy)
	case *pgproto3.CopyOutResponse:
		att.copying = true
		c.srv.reg.transition(c, stateCopy)
	case *pgproto3.ParameterStatus:
		flush = att.outstanding == 0
	case *pgproto3.NoticeResponse, *pgproto3.NotificationResponse:
		flush = true
	case *pgproto3.ReadyForQuery:
		att.outstanding--
		att.recvSeg++
		att.copying = false
		att.flushWanted = false
		backendTx := m.TxStatus
		c.lastTx = backendTx
		if att.swallowSeg == att.recvSeg {
			// The end of an injected preamble: the client never asked.
			att.swallowSeg = -1
			return false, false, false
		}
		if att.transient {
			// The client's view (a deferred BEGIN is 'T') wins.
			m.TxStatus = c.sess.rs.TxStatus()
		} else {
			c.sess.rs.Observe(m.TxStatus)
		}
		if c.lastTx == 'I' {
			// The backend ran everything the session did: same settings.
			att.bst.fingerprint, _ = c.sess.replay()
		}
		flush = true
		if att.outstanding <= 0 && !att.unsynced {
			att.outstanding = 0
			c.cond.Broadcast()
			if backendTx == 'I' && c.srv.cfg.PoolMode == PoolTransaction {
				c.att = nil
				att.released = true
				return false, false, true
			}
			if backendTx == 'I' {
				// Session pooling: keep the backend but stop reading it
				// (parked); the next forward restarts the pump.
				att.parked = true
				return false, false, true
			}
			c.srv.reg.transition(c, stateAttached)
		}
	}
	if att.flushWanted {
		flush = true
	}
	return true, flush, false
}

func (c *clientConn) observeCommand(att *attachment, tag []byte) {
	switch t := string(tag); {
	case t == "DISCARD ALL":
		clear(att.bst.stmts)
		clear(c.sess.stmts)
	case t == "DEALLOCATE ALL":
		clear(att.bst.stmts)
	case t == "COPY" || strings.HasPrefix(t, "COPY "):
		att.copying = false
	}
	if !att.copying && connState(c.state.Load()) == stateCopy {
		c.srv.reg.transition(c, stateAttached)
	}
}

// detach ends an attachment at ReadyForQuery 'I': it reads the commit
// position when the transaction wrote (and tells the client its causal
// token), forwards the ReadyForQuery, and returns the backend to its pool.
func (c *clientConn) detach(ctx context.Context, att *attachment, rfq *pgproto3.ReadyForQuery, release bool) {
	tx := rfq.TxStatus
	msgs := make([]pgproto3.BackendMessage, 0, 2)
	// The reader may still be inside Frontend.Flush for the bytes that
	// caused this ReadyForQuery (resetting the Frontend's buffer): wait
	// for it before using the connection or giving it back.
	att.wmu.Lock()
	defer att.wmu.Unlock()
	if att.wrote && att.primary {
		delete(att.bst.stmts, "")
		if lsn, err := att.lease.CurrentLSN(ctx); err == nil {
			c.mu.Lock()
			c.sess.rs.AdvanceCausal(att.shard, replica.LSN(lsn))
			tok := c.sess.tokenText()
			c.mu.Unlock()
			msgs = append(msgs, &pgproto3.ParameterStatus{Name: "dbproxy.causal_token", Value: tok})
		} else {
			c.srv.log.Debug("reading commit position failed", "node", att.nodeName, "err", err)
		}
	}
	msgs = append(msgs, &pgproto3.ReadyForQuery{TxStatus: tx})
	c.invalidateCacheWrites() // before the client may read again
	c.mu.Lock()
	att.wrote = false
	c.mu.Unlock()
	if release {
		att.lease.Release(nil)
		att.cancel() // drop the pump's context from the connection's
		c.setState(stateIdle)
	}
	if err := c.send(msgs...); err != nil {
		_ = c.netConn.Close()
	}
	if c.shutdown.Load() {
		// Draining: the transaction is over, end the session now.
		_ = c.netConn.SetReadDeadline(time.Now())
	}
}

// pumpFailed handles a backend read error: unless the connection is
// ending anyway, the client gets FATAL 08006 and is disconnected.
func (c *clientConn) pumpFailed(ctx context.Context, att *attachment, err error) {
	c.mu.Lock()
	ending := ctx.Err() != nil
	if c.att == att {
		c.att = nil
	}
	att.released = true
	if !ending {
		c.closeReason = err
	}
	c.cond.Broadcast()
	c.mu.Unlock()
	att.lease.Discard(err)
	att.cancel()
	if ending {
		return
	}
	c.wmu.Lock()
	c.fe.Send(errorResponse(&clientError{code: codeConnectionFailure, message: "lost connection to backend " + att.nodeName, err: err}, "FATAL"))
	_ = c.fe.Flush()
	_ = c.bw.Flush()
	c.wmu.Unlock()
	_ = c.netConn.Close()
}

// prepareBackend brings a freshly leased backend to the session's
// settings (replaying them only when its applied fingerprint differs) and
// runs the decision's preamble (a deferred BEGIN). On error the lease is
// given back (or discarded when its state is unknown).
func (c *clientConn) prepareBackend(ctx context.Context, lease *replica.Lease, bst *backendState, preamble []string) error {
	conn := lease.Conn()
	c.mu.Lock()
	fp, replay := c.sess.replay()
	c.mu.Unlock()
	sql := ""
	if bst.fingerprint != fp {
		sql = replay
	}
	if len(preamble) > 0 {
		if sql != "" {
			sql += ";\n"
		}
		sql += strings.Join(preamble, ";\n")
	}
	if sql == "" {
		return nil
	}
	delete(bst.stmts, "") // a simple query destroys the unnamed statement
	_, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && conn.TxStatus() == 'I' && !conn.IsClosed() {
			bst.fingerprint = 0
			lease.Release(nil)
			return fmt.Errorf("preparing backend %s for the session: %w", lease.Node().Name(), err)
		}
		lease.Discard(err)
		return err
	}
	if bst.fingerprint != fp {
		bst.fingerprint = fp
		if strings.Contains(replay, "DEALLOCATE ALL") {
			clear(bst.stmts)
		}
	}
	return nil
}

func (c *clientConn) transient(att *attachment) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return att.transient
}

// failOnBackend makes the backend itself fail the current batch with err,
// so that it skips the batch's remaining messages up to Sync exactly as
// after any error of its own (and an open transaction is aborted).
func (c *clientConn) failOnBackend(att *attachment, err error) error {
	resp := errorResponse(err, "")
	msg := strings.ReplaceAll(resp.Message, "$", "")
	sql := "DO $dbproxy$BEGIN RAISE EXCEPTION USING ERRCODE = " + quoteLiteral(resp.Code) + ", MESSAGE = " + quoteLiteral(msg) + "; END$dbproxy$"
	att.wmu.Lock()
	defer att.wmu.Unlock()
	fr := att.conn.Frontend()
	c.mu.Lock()
	c.unpark(att)
	att.inject(fr, &pgproto3.Close{ObjectType: 'S', Name: "dbproxy_fail"}, expectation{kind: '3', swallow: true})
	att.inject(fr, &pgproto3.Parse{Name: "dbproxy_fail", Query: sql}, expectation{kind: '1', swallow: true, name: "\x00dbproxy_fail"})
	att.inject(fr, &pgproto3.Bind{DestinationPortal: "dbproxy_fail", PreparedStatement: "dbproxy_fail"}, expectation{kind: '2', swallow: true})
	fr.Send(&pgproto3.Execute{Portal: "dbproxy_fail"})
	c.mu.Unlock()
	return fr.Flush()
}

// leaseFor leases a backend for t and prepares it for the session.
func (c *clientConn) leaseFor(ctx context.Context, t target, preamble []string) (*replica.Lease, *backendState, error) {
	set := c.srv.shards[t.shard]
	if set == nil {
		return nil, nil, newClientError(codeInternal, fmt.Sprintf("no replica set for shard %d", t.shard))
	}
	var node *replica.Node
	if t.primary {
		node = set.Primary()
	} else {
		n, err := set.Pick(ctx, t.pick)
		if err != nil {
			return nil, nil, err
		}
		node = n
	}
	lease, err := node.Acquire(ctx)
	if err != nil {
		return nil, nil, err
	}
	conn := lease.Conn()
	bst, _ := conn.CustomData()[backendStateKey].(*backendState)
	if bst == nil {
		bst = &backendState{stmts: map[string]uint64{}}
		conn.CustomData()[backendStateKey] = bst
		c.srv.learnBackendParams(conn)
	}
	if err := c.prepareBackend(ctx, lease, bst, preamble); err != nil {
		return nil, nil, err
	}
	return lease, bst, nil
}

// sendPreamble runs a decision's preamble (a deferred BEGIN) on a backend
// that is already attached, as a Query whose results the pump drops.
func (c *clientConn) sendPreamble(att *attachment, preamble []string) error {
	att.wmu.Lock()
	defer att.wmu.Unlock()
	fr := att.conn.Frontend()
	c.mu.Lock()
	c.unpark(att)
	att.transient = false
	if len(preamble) > 0 {
		att.outstanding++
		att.sentSeg++
		att.swallowSeg = att.sentSeg
		delete(att.bst.stmts, "")
		fr.Send(&pgproto3.Query{String: strings.Join(preamble, ";\n")})
	}
	c.mu.Unlock()
	return fr.Flush()
}

// unpark restarts the pump of a parked attachment before a request is
// sent to it. Called with c.mu held, by the reader.
func (c *clientConn) unpark(att *attachment) {
	if !att.parked {
		return
	}
	att.parked = false
	att.done = make(chan struct{})
	c.lastPump = att.done
	go c.pump(att.ctx, att)
}
