package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
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
	done     chan struct{} // closed when the pump has exited (closedChan while none ran)

	// under c.mu
	outstanding int  // Sync/Query/FunctionCall sent, ReadyForQuery not yet received
	unsynced    bool // extended-protocol messages sent since the last Sync
	flushWanted bool // the client sent Flush: deliver every response at once
	sentSeg     int  // ReadyForQuery-producing messages sent
	recvSeg     int  // ReadyForQuery messages received
	expect      []expectation
	wrote       bool // a write was sent in the current transaction (causal token at commit)
	transient   bool // leased without a routing decision (prepare/describe): the router session is not told
	parked      bool // no pump running: the backend has nothing in flight (session pooling idle, an inline pump done, or not yet used)
	inline      bool // the pump runs on the reader goroutine (see pumpInline)
	wbytes      int  // bytes queued for the backend since its last flush (approximate)
	stopped     bool // interrupt was called: a pump must end (its read fails at once)
	deadlineSet bool // interrupt set a past read deadline on the backend
	swallowSeg  int  // recvSeg value after the injected preamble's ReadyForQuery (-1: none)
	copying     bool
	released    bool
	copyBytes   int         // CopyData bytes sent since the last flush to the backend
	retry       *paramRetry // the parameterized simple query in flight, retried once if its statement is stale
	retrying    *paramRetry // retry in progress: resent by the pump after the failed attempt's ReadyForQuery
	retryBuf    paramRetry  // what retry points to
	lsnWanted   bool        // the request being sent ends a write transaction: read the commit position with it
	lsnSeg      int         // segment of the commit-position query sent after a request (-1: none)
	lsnHeld     bool        // the ReadyForQuery ending the request before lsnSeg arrived and waits in heldRFQ
	lsnValue    replica.LSN // pg_current_wal_lsn() read in segment lsnSeg
	heldRFQ     pgproto3.ReadyForQuery
	ddl         bool   // a schema change was sent: Server.schemaChanged again when the transaction ends
	retryable   bool   // the request is a read outside a transaction the router lets run on a standby: it may run elsewhere if its node fails before answering (retry.go)
	outWrites   uint64 // with retryable: the client box's writes and the length of its out buffer when the request was sent
	outMark     int
	conflict    bool // the standby cancelled the retryable request (recovery conflict): its reply is dropped until ReadyForQuery, then it is sent again
	nodeDown    bool // interrupted because its node's probes fail (rerouteFromFailingNode): a failure of the node for retryLater
	trim        bool // leased holding more client-named statements than Config.MaxBackendStatements: the first send closes the least recently used (trimNamed)
}

// paramRetry is what is needed to send a parameterized simple query again.
type paramRetry struct {
	seg  int
	text string
	args []string
}

// expectation is a ParseComplete/BindComplete/CloseComplete the pump will
// see, and whether the client asked for it (forward) or the proxy did
// (swallow: an injected re-prepare).
type expectation struct {
	seg int
	// kind: '1' ParseComplete, '2' BindComplete, '3' CloseComplete;
	// 'D' ParameterDescription and 'r' RowDescription or NoData of a
	// parameterized query's statement (remembered); 'P' ParseComplete and
	// 'R' RowDescription (rowDesc) the proxy answers itself.
	kind    byte
	rowDesc *pgproto3.RowDescription
	swallow bool
	name    string // statement name for Parse (to forget it on failure)
	hash    uint64
	auto    bool // name is the server-side alias of the client's unnamed statement
}

// stateIdle waits for the next client message with no backend leased.
// A wait longer than the deep-idle threshold is interrupted by the
// sweeper (see idle.go) and continues without the protocol Backend.
// Its frame is kept small (ctx is c.ctx; received dispatches): a reader
// waits here with this frame on its stack (see idle.go).
func (c *clientConn) stateIdle(_ context.Context) stateFn {
	c.setState(stateIdle)
	if c.shutdown.Load() {
		return c.fail(ErrShuttingDown)
	}
	msg, err := c.fe.Receive()
	if err != nil {
		return c.readFailed(err)
	}
	return c.received(msg)
}

// stateAttached reads client messages while a backend is leased.
func (c *clientConn) stateAttached(ctx context.Context) stateFn {
	c.mu.Lock()
	att := c.att
	idleTx := att != nil && att.outstanding == 0 && !att.unsynced && !att.copying && c.lastTx != 'I'
	c.mu.Unlock()
	if att == nil {
		// An inline pump gave the backend back already.
		return c.stateIdle(ctx)
	}
	c.setState(stateAttached)
	var idleTimer *time.Timer
	if idleTx {
		idleTimer = c.armIdleTransaction()
	}
	msg, err := c.fe.Receive()
	if idleTimer != nil && !idleTimer.Stop() {
		// The timeout fired first (the message, if any, came too late).
		c.srv.idleTxTimeouts.Add(1)
		return c.fail(errIdleInTransaction)
	}
	if err != nil {
		return c.readFailed(err)
	}
	return c.dispatch(ctx, msg)
}

// armIdleTransaction starts the idle-in-transaction timeout of a client
// that holds a backend inside a transaction with nothing in flight: when
// it fires, the client read in progress fails at once. It returns nil
// when the timeout is off. The caller stops the timer after its read; a
// timer that had fired by then ends the session (stateAttached).
func (c *clientConn) armIdleTransaction() *time.Timer {
	d := c.srv.live.Load().idleTxAfter
	if d <= 0 {
		return nil
	}
	return time.AfterFunc(d, func() { _ = c.netConn.SetReadDeadline(time.Now()) })
}

func (c *clientConn) readFailed(err error) stateFn {
	if c.disarmSweep() && isTimeout(err) && !c.shutdown.Load() {
		return c.swept() // the deep-idle sweeper's deadline, not the client's fault
	}
	if c.shutdown.Load() {
		return c.fail(ErrShuttingDown)
	}
	c.mu.Lock()
	reason := c.closeReason
	c.mu.Unlock()
	if reason != nil {
		return c.to.closing // the pump already told the client
	}
	return c.fail(c.receiveError(err))
}

// dispatch handles one client message and returns the next state.
func (c *clientConn) dispatch(ctx context.Context, msg pgproto3.FrontendMessage) stateFn {
	switch m := msg.(type) {
	case *pgproto3.Terminate:
		return c.to.closing
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
			return c.to.idle // stray copy messages after a failed COPY are ignored, as PostgreSQL does
		}
		if err := c.forward(att, msg); err != nil {
			return c.backendFailed(att, err)
		}
		return c.to.attached
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

// attach leases a backend for d and brings it to the session's state.
// The preamble (a deferred BEGIN) is sent with the request that follows,
// its results dropped, unless the session's settings must be replayed on
// the backend first (then both run before attach returns, so that an
// error is the request's).
func (c *clientConn) attach(ctx context.Context, d target, preamble []string, transient bool) (*attachment, error) {
	if c.lastPump != nil {
		<-c.lastPump // the previous pump's last writes precede ours
	}
	lease, bst, preamble, err := c.leaseFor(ctx, d, preamble)
	if err != nil {
		return nil, err
	}
	conn, node := lease.Conn(), lease.Node()
	c.mu.Lock()
	att := c.spare
	c.spare = nil
	var expect []expectation
	if att != nil {
		expect = att.expect[:0]
	} else {
		att = new(attachment)
	}
	*att = attachment{
		lease: lease, conn: conn, bst: bst, nodeName: node.Name(), shard: d.shard,
		primary: node.Role() == replica.RolePrimary, done: closedChan, transient: transient, swallowSeg: -1, lsnSeg: -1,
		parked: true, // the first flush starts the pump
		expect: expect,
		trim:   c.srv.cfg.MaxBackendStatements > 0 && len(bst.lastUse) > c.srv.cfg.MaxBackendStatements,
	}
	c.att = att
	c.lastPump = att.done
	c.mu.Unlock()
	c.setState(stateAttached)
	if len(preamble) > 0 {
		_ = c.sendPreamble(att, preamble) // queued, never fails
	}
	return att, nil
}

// closedChan is the done channel of an attachment with no pump goroutine.
var closedChan = func() chan struct{} { ch := make(chan struct{}); close(ch); return ch }()

// inlineMaxBytes bounds the request a reader may flush before pumping the
// reply itself: a write that size never blocks on a backend that is
// waiting for input, so the backend's output cannot back up behind it.
const inlineMaxBytes = 32 << 10

// forward sends one client message to the backend, recording what the
// pump must expect. Parse/Bind/Describe/Close are rewritten with injected
// re-prepares where the backend lacks the client's statement.
//
// When the message ends a request (Sync, Query, FunctionCall: exactly one
// ReadyForQuery follows), no pump is running and the request is small,
// the reader pumps the reply itself (pumpInline) before it reads the
// client again, as PostgreSQL itself answers one request before reading
// the next; otherwise a pump goroutine streams the replies while the
// reader goes on reading the client (pipelining, Flush, COPY).
func (c *clientConn) forward(att *attachment, msg pgproto3.FrontendMessage) error {
	inline, err := c.send1(att, msg)
	return c.pumpIfInline(att, inline, err)
}

// send1 is forward without the inline pump: it queues msg for the
// backend, flushes at request ends, and reports whether the caller is to
// pump the reply inline.
func (c *clientConn) send1(att *attachment, msg pgproto3.FrontendMessage) (inline bool, err error) {
	att.wmu.Lock()
	defer att.wmu.Unlock()
	fr := att.conn.Frontend()
	flush, end := false, false
	c.mu.Lock()
	if att.released {
		// The pump gave the backend back meanwhile (only possible for a
		// Flush sent between transactions): nothing is left to flush.
		c.mu.Unlock()
		if _, ok := msg.(*pgproto3.Flush); ok {
			return false, c.flushClient()
		}
		return false, errNoBackend
	}
	c.closeStaleAuto(att, fr)
	if att.trim {
		c.trimNamed(att, fr)
	}
	switch m := msg.(type) {
	case *pgproto3.Parse:
		h := stmtHash(m.Query, m.ParameterOIDs)
		att.wbytes += 16 + len(m.Name) + len(m.Query) + 4*len(m.ParameterOIDs)
		if m.Name == "" && c.srv.cfg.AutoPrepare && autoPreparable(m.Query) {
			c.parseUnnamed(att, fr, m, h)
			break
		}
		if old, ok := att.bst.stmts[m.Name]; ok && m.Name != "" && old != 0 {
			att.inject(fr, &pgproto3.Close{ObjectType: 'S', Name: m.Name}, expectation{kind: '3', swallow: true})
		}
		c.sess.stmts[m.Name] = &preparedStmt{name: m.Name, query: m.Query, paramOIDs: append([]uint32(nil), m.ParameterOIDs...), hash: h}
		att.bst.prepared(m.Name, h)
		att.expect = append(att.expect, expectation{seg: att.sentSeg, kind: '1', name: m.Name, hash: h})
		att.unsynced = true
		fr.Send(m)
	case *pgproto3.Bind:
		if alias, ok := c.unnamedAlias(att, fr, m.PreparedStatement); ok {
			b := *m
			b.PreparedStatement = alias
			m = &b
		} else {
			c.ensurePrepared(att, fr, m.PreparedStatement)
		}
		att.expect = append(att.expect, expectation{seg: att.sentSeg, kind: '2'})
		att.unsynced = true
		att.wbytes += 16 + len(m.DestinationPortal) + len(m.PreparedStatement) + 2*len(m.ParameterFormatCodes) + 2*len(m.ResultFormatCodes)
		for _, v := range m.Parameters {
			att.wbytes += 4 + len(v)
		}
		fr.Send(m)
	case *pgproto3.Describe:
		if m.ObjectType == 'S' {
			if alias, ok := c.unnamedAlias(att, fr, m.Name); ok {
				m = &pgproto3.Describe{ObjectType: 'S', Name: alias}
			} else {
				c.ensurePrepared(att, fr, m.Name)
			}
		}
		att.unsynced = true
		fr.Send(m)
	case *pgproto3.Close:
		if m.ObjectType == 'S' {
			delete(c.sess.stmts, m.Name)
			att.bst.forgetStatement(m.Name)
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
		c.appendCommitLSN(att, fr)
		flush, end = true, true
	case *pgproto3.Flush:
		att.flushWanted = true
		fr.Send(m)
		flush = true
	case *pgproto3.Query:
		// A simple query destroys the unnamed statement, and its
		// ReadyForQuery also ends whatever extended-protocol messages
		// precede it (the proxy's injected Closes).
		delete(att.bst.stmts, "")
		att.unsynced = false
		att.outstanding++
		att.sentSeg++
		att.wbytes += len(m.String)
		fr.Send(m)
		c.appendCommitLSN(att, fr)
		flush, end = true, true
	case *pgproto3.FunctionCall:
		att.unsynced = false // as for Query
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
		return false, newClientError(codeProtocolViolation, fmt.Sprintf("unexpected message %T", msg))
	}
	att.wbytes += 8
	if flush {
		att.copyBytes = 0
		inline = c.flushPoint(att, end)
	}
	c.mu.Unlock()
	if flush {
		return inline, fr.Flush()
	}
	return false, nil
}

// flushPoint decides, when att's queued messages are about to be flushed,
// who reads the reply: the caller, inline (true), when no pump runs and
// the flushed request is small and ends with exactly one ReadyForQuery
// (end); else a pump goroutine, started here if none runs. Called with
// c.mu held.
func (c *clientConn) flushPoint(att *attachment, end bool) (inline bool) {
	if att.parked {
		if end && !att.flushWanted && att.wbytes <= inlineMaxBytes && !c.srv.cfg.noInlinePump {
			inline = true
		} else {
			c.startPump(att)
		}
	}
	att.wbytes = 0
	return inline
}

// pumpIfInline finishes a send that returned (inline, err): the caller
// pumps the reply itself when the send said so.
func (c *clientConn) pumpIfInline(att *attachment, inline bool, err error) error {
	if err == nil && inline {
		c.pumpInline(att)
	}
	return err
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
		att.bst.touch(name)
		return
	}
	if ok && name != "" {
		att.inject(fr, &pgproto3.Close{ObjectType: 'S', Name: name}, expectation{kind: '3', swallow: true})
	}
	att.inject(fr, &pgproto3.Parse{Name: name, Query: ps.query, ParameterOIDs: ps.paramOIDs}, expectation{kind: '1', swallow: true, name: name, hash: ps.hash})
	att.bst.prepared(name, ps.hash)
}

// popExpect removes the first expectation, keeping the slice's start
// (and so its capacity) for the expectations to come.
func (att *attachment) popExpect() {
	n := copy(att.expect, att.expect[1:])
	att.expect[n] = expectation{}
	att.expect = att.expect[:n]
}

func (att *attachment) inject(fr *pgproto3.Frontend, msg pgproto3.FrontendMessage, e expectation) {
	e.seg = att.sentSeg
	att.expect = append(att.expect, e)
	att.unsynced = true
	fr.Send(msg)
}

// backendFailed ends the client connection after the backend broke.
func (c *clientConn) backendFailed(att *attachment, err error) stateFn {
	c.interrupt(att)
	<-att.done
	c.mu.Lock()
	reason := c.closeReason
	c.mu.Unlock()
	if reason != nil {
		return c.to.closing
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
	busy := att.inFlight()
	c.mu.Unlock()
	c.interrupt(att)
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
	c.releaseBackend(att)
}

// releaseBackend gives an idle backend back to its pool, or closes it
// when a session left state on it that another session could see
// (backendState.tainted).
func (c *clientConn) releaseBackend(att *attachment) {
	if att.bst.tainted {
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
func (c *clientConn) pump(att *attachment) {
	defer close(att.done)
	c.pumpLoop(att)
}

// interrupt makes att's pump, if one is reading the backend, fail its
// read at once and end as when the connection ends (the backend is then
// discarded). Any goroutine may call it.
func (c *clientConn) interrupt(att *attachment) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if att.stopped {
		return
	}
	att.stopped = true
	if !att.parked && !att.released {
		att.failRead()
	}
}

// failRead makes the pump's read of the backend fail at once (a past
// read deadline, which clearInterrupt undoes). Called with c.mu held.
func (att *attachment) failRead() {
	_ = att.conn.Conn().SetReadDeadline(time.Now())
	att.deadlineSet = true
}

// inFlight reports whether a request is in flight on att's backend (a
// reply, a Sync or the end of a COPY still to come). Called with c.mu
// held.
func (att *attachment) inFlight() bool {
	return att.outstanding > 0 || att.unsynced || att.copying
}

// clearInterrupt undoes interrupt's read deadline on a backend whose pump
// ended normally meanwhile (so it can be kept or pooled). Called with
// c.mu held.
func (att *attachment) clearInterrupt() {
	if att.deadlineSet {
		att.deadlineSet = false
		_ = att.conn.Conn().SetReadDeadline(time.Time{})
	}
}

// pumpInline runs the pump on the reader goroutine for the request just
// flushed to a parked backend: it returns once the backend is released,
// or is idle waiting for the client again (inside a transaction, or
// kept by session pooling), or has failed. When the reply turns into
// COPY FROM STDIN the reader must read the client's data, so a pump
// goroutine takes over.
func (c *clientConn) pumpInline(att *attachment) {
	c.mu.Lock()
	att.parked = false
	att.inline = true
	c.mu.Unlock()
	c.pumpLoop(att)
	c.mu.Lock()
	att.inline = false
	handOver := !att.parked && !att.released && c.closeReason == nil
	if handOver {
		att.parked = true
		c.startPump(att)
	}
	if att.released && att.done == closedChan && c.att != att {
		// Given back, and no pump goroutine ever had it: the next attach
		// reuses it (its expectation slice too).
		c.spare = att
	}
	c.mu.Unlock()
}

// pumpLoop is the body of pump and pumpInline.
//
// The pump is interrupted (interrupt) by a past read deadline rather than
// a context per request: the connection's context reaches it through one
// context.AfterFunc per client connection (newClientConn).
func (c *clientConn) pumpLoop(att *attachment) {
	ctx := c.ctx
	c.mu.Lock()
	if (ctx.Err() != nil || att.stopped) && !att.deadlineSet {
		att.stopped = true // interrupted before this pump started: do not wait for the backend
		att.failRead()
	}
	c.mu.Unlock()
	// directRows: the DataRows that follow go to the client without the
	// bookkeeping under c.mu. Set when a DataRow was just forwarded
	// unflushed, cleared by any other message. How a result's rows are
	// treated (forwarded or swallowed, flushed or not) is settled before
	// its first row and changes only at a message that is not a DataRow:
	// requests the reader sends meanwhile concern later segments, and an
	// interrupt ends the read itself. (A Flush the client sends while the
	// rows stream takes effect at the message that ends them.)
	directRows := false
	for {
		msg, err := att.conn.ReceiveMessage(context.Background())
		if err != nil {
			if c.retryLater(att, err) {
				return // the reader sends the request again elsewhere
			}
			c.pumpFailed(ctx, att, err) // the backend is discarded
			return
		}
		if ferr, ok := fatalError(msg); ok && c.retryLater(att, ferr) {
			return
		}
		if dr, ok := msg.(*pgproto3.DataRow); ok && directRows {
			if err := c.forwardToClient(dr, false); err != nil {
				return
			}
			continue
		}
		directRows = false
		c.mu.Lock()
		if att.conflict || c.recoveryConflict(att, msg) {
			// The standby cancelled the read: drop the rest of its reply
			// and send it again (retry.go).
			if c.dropUntilReady(att, msg) {
				return
			}
			continue
		}
		if att.lsnSeg >= 0 {
			var own bool
			if msg, own = c.commitLSNReply(att, msg); own {
				c.mu.Unlock()
				continue
			}
		}
		if len(att.expect) > 0 && att.expect[0].kind == 'P' && att.expect[0].seg == att.recvSeg {
			// The segment's first reply: its ParseComplete precedes it.
			att.popExpect()
			c.wmu.Lock()
			c.queue(parseComplete)
			c.wmu.Unlock()
		}
		forward, flush, release := c.observe(att, msg)
		if _, ok := msg.(*pgproto3.BindComplete); ok && len(att.expect) > 0 && att.expect[0].kind == 'R' && att.expect[0].seg == att.recvSeg {
			// A parameterized query's remembered RowDescription follows
			// its (swallowed) BindComplete.
			rd := att.expect[0].rowDesc
			att.popExpect()
			c.wmu.Lock()
			c.queue(rd)
			c.wmu.Unlock()
		}
		if r := att.retrying; r != nil && att.outstanding == 0 {
			att.retrying = nil
			c.mu.Unlock()
			if _, err := c.sendParameterized(att, r.text, r.args); err != nil {
				c.pumpFailed(ctx, att, err)
				return
			}
			continue
		}
		stop := false
		if att.inline && !release && forward {
			switch msg.(type) {
			case *pgproto3.ReadyForQuery:
				// Idle inside a transaction: the client speaks next.
				stop = att.outstanding == 0 && !att.unsynced
			case *pgproto3.CopyInResponse, *pgproto3.CopyBothResponse:
				stop = true // the reader must read the client's data; a pump goroutine goes on
			}
		}
		if stop && att.outstanding == 0 && !att.copying {
			att.parked = true
		}
		if release || att.parked {
			att.clearInterrupt() // the pump ends normally after all
		}
		c.mu.Unlock()
		if release {
			c.detach(ctx, att, msg.(*pgproto3.ReadyForQuery), !att.parked)
			return
		}
		if !forward {
			continue
		}
		if _, ok := msg.(*pgproto3.DataRow); ok && !flush && !stop {
			directRows = true
		}
		if err := c.forwardToClient(msg, flush); err != nil || stop {
			return
		}
	}
}

// forwardToClient queues a backend message for the client and writes
// what is queued when flush is set or enough is. When the write fails the
// client is gone: that is recorded and its connection closed (the reader
// will see it too), and the error returned.
func (c *clientConn) forwardToClient(msg pgproto3.BackendMessage, flush bool) error {
	c.wmu.Lock()
	c.queue(msg)
	err := c.flushClientLocked(flush)
	c.wmu.Unlock()
	if err != nil {
		c.mu.Lock()
		c.closeReason = errClientGone
		c.cond.Broadcast()
		c.mu.Unlock()
		_ = c.netConn.Close()
	}
	return err
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
		if len(att.expect) > 0 && att.expect[0].kind <= '3' {
			e := att.expect[0]
			att.popExpect()
			if e.swallow {
				return false, false, false
			}
		}
	case *pgproto3.ErrorResponse:
		if m.Code == "0A000" && m.Message == "cached plan must not change result type" && len(att.bst.auto) > 0 {
			// A table changed under statements the proxy prepared: every
			// one of them may be stale on this backend.
			att.bst.staleAuto = true
			if r := att.retry; r != nil && r.seg == att.recvSeg {
				// A parameterized simple query outside a transaction:
				// run it again once, prepared anew; the client sees only
				// the second answer.
				att.retry = nil
				att.retrying = r
				att.expect = att.expect[:0]
				return false, false, false
			}
		}
		c.forgetSegment(att)
		if !att.transient {
			c.sess.rs.ObserveError()
		}
		att.copying = false
		flush = true
	case *pgproto3.ParameterDescription:
		if len(att.expect) > 0 && att.expect[0].kind == 'D' {
			att.popExpect()
			return false, false, false // the Describe of a parameterized simple query's statement
		}
	case *pgproto3.NoData:
		if len(att.expect) > 0 && att.expect[0].kind == 'r' {
			att.bst.rowDescs[att.expect[0].name] = nil
			att.popExpect()
			return false, false, false
		}
	case *pgproto3.RowDescription:
		if len(att.expect) > 0 && att.expect[0].kind == 'r' {
			att.bst.rowDescs[att.expect[0].name] = copyRowDescription(m)
			att.popExpect() // it has rows: the client gets this
		}
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
		att.retry = nil
		if att.retrying != nil && att.outstanding == 0 {
			return false, false, false // pumpLoop sends the query again
		}
		att.copying = false
		att.flushWanted = false
		backendTx := m.TxStatus
		c.lastTx = backendTx
		if att.ddl && backendTx == 'I' {
			att.ddl = false
			c.srv.schemaChanged() // the change is visible to every session now
		}
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
			c.syncListensLocked()
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

// forgetSegment drops what att expects of the segment being received,
// which failed: the backend skips to the next Sync and will not answer
// it, and the statements it was to prepare are not prepared. Called with
// c.mu held.
func (c *clientConn) forgetSegment(att *attachment) {
	keep := att.expect[:0]
	for _, e := range att.expect {
		if e.seg != att.recvSeg {
			keep = append(keep, e)
		} else if e.kind == '1' {
			att.bst.forgetStatement(e.name)
			client := e.name
			if e.auto {
				client = ""
			}
			if ps := c.sess.stmts[client]; ps != nil && ps.hash == e.hash && !e.swallow {
				delete(c.sess.stmts, client)
			}
		}
	}
	att.expect = keep
}

func (c *clientConn) observeCommand(att *attachment, tag []byte) {
	switch t := string(tag); {
	case t == "DISCARD ALL":
		att.bst.forgetStatements()
		clear(c.sess.stmts)
	case t == "DEALLOCATE ALL":
		att.bst.forgetStatements()
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
		c.srv.commitLSNQueries.Add(1)
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
		c.releaseBackend(att)
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
	ending := ctx.Err() != nil || att.stopped
	if c.att == att {
		c.att = nil
	}
	att.released = true
	if !ending {
		c.closeReason = err
	}
	c.cond.Broadcast()
	c.mu.Unlock()
	if ending {
		// Interrupted (the client went away, the session is ended, or
		// the reader gives the backend up): what runs there is
		// cancelled rather than left to run on to its end.
		c.cancelRunning(att)
		att.lease.Discard(err)
		return
	}
	att.lease.Discard(err)
	c.wmu.Lock()
	c.queue(errorResponse(&clientError{code: codeConnectionFailure, message: "lost connection to backend " + att.nodeName, err: err}, "FATAL"))
	_ = c.flushClientLocked(true)
	c.wmu.Unlock()
	_ = c.netConn.Close()
}

// clientFlushBytes is how much of a result is buffered for the client
// before it is written out without waiting for a flush point.
const clientFlushBytes = 32 << 10

// approxSize is about the wire size of a backend message, for deciding
// when to write a long result out through a traced Backend.
func approxSize(msg pgproto3.BackendMessage) int {
	switch m := msg.(type) {
	case rawMessage:
		return len(m)
	case *pgproto3.DataRow:
		n := 7
		for _, v := range m.Values {
			n += 4 + len(v)
		}
		return n
	case *pgproto3.CopyData:
		return 5 + len(m.Data)
	case *pgproto3.RowDescription:
		n := 7
		for _, f := range m.Fields {
			n += 19 + len(f.Name)
		}
		return n
	case *pgproto3.NoticeResponse, *pgproto3.ErrorResponse:
		return 256
	}
	return 16
}

// prepareBackend brings a freshly leased backend to the session's
// settings (replaying them only when its applied fingerprint differs) and
// runs the decision's preamble (a deferred BEGIN) with the replay. With
// nothing to replay the preamble is not run but returned (deferred), to
// go with the request. On error the lease is given back (or discarded
// when its state is unknown).
func (c *clientConn) prepareBackend(ctx context.Context, lease *replica.Lease, bst *backendState, preamble []string) (deferred []string, err error) {
	conn := lease.Conn()
	c.mu.Lock()
	fp, replay := c.sess.replay()
	c.mu.Unlock()
	sql := ""
	if bst.fingerprint != fp {
		sql = replay
	} else if len(preamble) > 0 {
		// Nothing else to run first: the preamble goes with the request
		// (attach), saving a round trip.
		return preamble, nil
	}
	if len(preamble) > 0 {
		if sql != "" {
			sql += ";\n"
		}
		sql += strings.Join(preamble, ";\n")
	}
	if sql == "" {
		return nil, nil
	}
	delete(bst.stmts, "") // a simple query destroys the unnamed statement
	_, err = conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && conn.TxStatus() == 'I' && !conn.IsClosed() {
			bst.fingerprint = 0
			lease.Release(nil)
			return nil, fmt.Errorf("preparing backend %s for the session: %w", lease.Node().Name(), err)
		}
		lease.Discard(err)
		return nil, err
	}
	if bst.fingerprint != fp {
		bst.fingerprint = fp
		if strings.Contains(replay, "DEALLOCATE ALL") {
			bst.forgetStatements()
		}
	}
	return nil, nil
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
	att.inject(fr, &pgproto3.Close{ObjectType: 'S', Name: "dbproxy_fail"}, expectation{kind: '3', swallow: true})
	att.inject(fr, &pgproto3.Parse{Name: "dbproxy_fail", Query: sql}, expectation{kind: '1', swallow: true, name: "\x00dbproxy_fail"})
	att.inject(fr, &pgproto3.Bind{DestinationPortal: "dbproxy_fail", PreparedStatement: "dbproxy_fail"}, expectation{kind: '2', swallow: true})
	fr.Send(&pgproto3.Execute{Portal: "dbproxy_fail"})
	att.wbytes += len(sql) + 64
	c.mu.Unlock()
	return nil // sent with the batch's Sync
}

// leaseFor leases a backend for t and prepares it for the session. A
// preamble it did not run is returned (deferred) for the caller to send
// with its request.
func (c *clientConn) leaseFor(ctx context.Context, t target, preamble []string) (*replica.Lease, *backendState, []string, error) {
	set := c.srv.shards[t.shard]
	if set == nil {
		return nil, nil, nil, newClientError(codeInternal, fmt.Sprintf("no replica set for shard %d", t.shard))
	}
	for attempt := 0; ; attempt++ {
		lease, bst, deferred, node, err := c.leaseOn(ctx, set, t, preamble)
		if err == nil || t.primary || attempt == maxReadRetries || !nodeFailed(ctx, err) {
			return lease, bst, deferred, err
		}
		if node == set.Primary() && errors.Is(err, replica.ErrNodeUnavailable) {
			return nil, nil, nil, err // Pick would choose it again: no standby qualifies
		}
		// The node failed before anything was sent: it is suspected now
		// (a standby gets no reads until its lag probe succeeds; idle
		// connections are closed), so Pick chooses another standby, or
		// the primary, on a new connection.
		c.srv.readRetries.Add(1)
	}
}

// leaseOn is one attempt of leaseFor; it also returns the node it tried
// (nil when none was picked).
func (c *clientConn) leaseOn(ctx context.Context, set *replica.Set, t target, preamble []string) (*replica.Lease, *backendState, []string, *replica.Node, error) {
	var node *replica.Node
	if t.primary {
		node = set.Primary()
	} else {
		n, err := set.Pick(ctx, t.pick)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		node = n
	}
	lease, err := node.AcquireAs(ctx, c.backendID)
	if err != nil {
		return nil, nil, nil, node, err
	}
	conn := lease.Conn()
	bst, _ := conn.CustomData()[backendStateKey].(*backendState)
	if bst == nil {
		bst = &backendState{stmts: map[string]uint64{}, rowDescs: map[string]*pgproto3.RowDescription{}, lastUse: map[string]uint64{}}
		conn.CustomData()[backendStateKey] = bst
		c.srv.learnBackendParams(conn)
	}
	deferred, err := c.prepareBackend(ctx, lease, bst, preamble)
	if err != nil {
		return nil, nil, nil, node, err
	}
	return lease, bst, deferred, node, nil
}

// leaseForQuery leases a backend of t for a query of the proxy's own (a
// simple query, or the unnamed extended-protocol statement), which
// replaces the backend's unnamed statement.
func (c *clientConn) leaseForQuery(ctx context.Context, t target) (*replica.Lease, error) {
	lease, _, _, err := c.leaseFor(ctx, t, nil)
	if err != nil {
		return nil, err
	}
	forgetUnnamed(lease.Conn())
	return lease, nil
}

// forgetUnnamed records that a query of the proxy's own is about to
// replace conn's unnamed statement, so that the backend state (kept in
// conn's CustomData) does not offer the client's one as prepared.
func forgetUnnamed(conn *pgconn.PgConn) {
	if bst, ok := conn.CustomData()[backendStateKey].(*backendState); ok {
		delete(bst.stmts, "")
	}
}

// sendPreamble runs a decision's preamble (a deferred BEGIN) on a backend
// that is already attached, as a Query whose results the pump drops.
func (c *clientConn) sendPreamble(att *attachment, preamble []string) error {
	att.wmu.Lock()
	defer att.wmu.Unlock()
	fr := att.conn.Frontend()
	c.mu.Lock()
	att.transient = false
	if len(preamble) > 0 {
		att.outstanding++
		att.sentSeg++
		att.swallowSeg = att.sentSeg
		delete(att.bst.stmts, "")
		q := strings.Join(preamble, ";\n")
		att.wbytes += len(q) + 8
		fr.Send(&pgproto3.Query{String: q})
	}
	c.mu.Unlock()
	return nil // sent with the request that follows
}

// startPump starts a pump goroutine for a parked attachment. Called with
// c.mu held, by the reader.
func (c *clientConn) startPump(att *attachment) {
	if !att.parked {
		return
	}
	att.parked = false
	att.done = make(chan struct{})
	c.lastPump = att.done
	go c.pump(att)
}

// Unnamed statements (Parse with an empty name, as most drivers send for
// every parameterized query) are prepared on each backend under a name
// derived from their text and parameter types, so PostgreSQL parses and
// plans a repeated query once per backend instead of on every execution
// (the plan cache then behaves as for any named statement). The client
// still sees its unnamed statement: its Parse is answered by the
// backend's ParseComplete for either the named Parse or, when the backend
// already holds the statement, for a Parse of an empty unnamed statement
// (cheap, and answered in order); its Bind and Describe name the alias.
// At most maxAutoStatements aliases are kept per backend; the oldest is
// closed first.

// maxAutoStatements bounds the aliased statements kept on one backend.
const maxAutoStatements = 128

// emptyParse replaces the client's unnamed Parse when the backend holds
// its alias already and the Parse follows other messages of its segment.
var emptyParse = &pgproto3.Parse{}

var parseComplete = &pgproto3.ParseComplete{}

// autoPreparable reports whether query is a single plannable statement
// (SELECT, INSERT, UPDATE, DELETE, MERGE) worth preparing by alias.
// Transaction control and utility statements keep the unnamed statement:
// an aborted transaction refuses every Parse but ROLLBACK/COMMIT.
func autoPreparable(query string) bool {
	st, err := router.Classify(query)
	if err != nil || st.ParseError != nil || st.NumStatements != 1 {
		return false
	}
	switch st.Command {
	case "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE":
		return st.Kind == router.KindRead || st.Kind == router.KindWrite
	}
	return false
}

// autoName is the backend-side name of the unnamed statement with hash h.
func autoName(h uint64) string {
	var b [32]byte
	return string(strconv.AppendUint(append(b[:0], "dbproxy_"...), h, 36))
}

// parseUnnamed sends the client's unnamed Parse m (hash h) as its alias.
// Called with c.mu and att.wmu held.
func (c *clientConn) parseUnnamed(att *attachment, fr *pgproto3.Frontend, m *pgproto3.Parse, h uint64) {
	ps := &preparedStmt{name: "", query: m.Query, paramOIDs: append([]uint32(nil), m.ParameterOIDs...), hash: h, auto: autoName(h)}
	c.sess.stmts[""] = ps
	first := !att.unsynced // nothing else sent since the last Sync
	att.unsynced = true
	if att.bst.stmts[ps.auto] == h {
		if first && c.lastTx != 'E' {
			// Nothing precedes it in its segment: the pump answers
			// ParseComplete itself before the segment's first reply.
			att.expect = append(att.expect, expectation{seg: att.sentSeg, kind: 'P'})
			return
		}
		// Elsewhere a cheap empty Parse has the backend answer in order.
		delete(att.bst.stmts, "")
		att.expect = append(att.expect, expectation{seg: att.sentSeg, kind: '1'})
		fr.Send(emptyParse)
		return
	}
	delete(att.bst.stmts, "") // the client's statement is no longer the backend's unnamed one
	c.prepareAuto(att, fr, ps.auto, m.Query, m.ParameterOIDs, h, false)
}

// prepareAuto prepares a statement the proxy names (the alias of an
// unnamed statement, or a parameterized simple query) on att's backend,
// closing the oldest such statement first when the backend holds
// maxAutoStatements of them. swallow: the client did not send this Parse.
// Called with c.mu and att.wmu held.
func (c *clientConn) prepareAuto(att *attachment, fr *pgproto3.Frontend, name, query string, oids []uint32, h uint64, swallow bool) {
	c.evictAuto(att, fr)
	att.inject(fr, &pgproto3.Parse{Name: name, Query: query, ParameterOIDs: oids}, expectation{kind: '1', swallow: swallow, name: name, hash: h, auto: true})
	att.bst.stmts[name] = h
	att.bst.auto = append(att.bst.auto, name)
	delete(att.bst.rowDescs, name)
}

// unnamedAlias returns the alias to use for the client's statement name
// when it is the aliased unnamed statement, preparing it on the backend
// if this backend does not hold it. Called with c.mu and att.wmu held.
func (c *clientConn) unnamedAlias(att *attachment, fr *pgproto3.Frontend, name string) (string, bool) {
	if name != "" {
		return "", false
	}
	ps := c.sess.stmts[""]
	if ps == nil || ps.auto == "" {
		return "", false
	}
	if att.bst.stmts[ps.auto] != ps.hash {
		c.prepareAuto(att, fr, ps.auto, ps.query, ps.paramOIDs, ps.hash, true)
	}
	return ps.auto, true
}

// evictAuto closes the oldest aliases while the backend holds
// maxAutoStatements of them. Called with c.mu and att.wmu held.
func (c *clientConn) evictAuto(att *attachment, fr *pgproto3.Frontend) {
	for len(att.bst.auto) >= maxAutoStatements {
		name := att.bst.auto[0]
		att.bst.auto = att.bst.auto[1:]
		closeAuto(att, fr, name)
	}
}

// forwardParameterized sends a simple Query whose integer literals the
// router turned into parameters (router.Statement.Parameterize) as the
// extended-protocol request Parse (once per backend) / Bind / Describe /
// Execute / Sync. The client sees exactly the simple protocol's reply:
// ParseComplete, BindComplete and NoData are swallowed, RowDescription,
// rows, CommandComplete, errors and ReadyForQuery pass through.
func (c *clientConn) forwardParameterized(att *attachment, text string, args []string) error {
	inline, err := c.sendParameterized(att, text, args)
	return c.pumpIfInline(att, inline, err)
}

// sendParameterized queues and flushes the request of forwardParameterized.
// It also sends a retry (called from the pump that runs, so never inline).
func (c *clientConn) sendParameterized(att *attachment, text string, args []string) (inline bool, err error) {
	att.wmu.Lock()
	defer att.wmu.Unlock()
	fr := att.conn.Frontend()
	c.mu.Lock()
	if att.released {
		c.mu.Unlock()
		return false, errNoBackend
	}
	c.closeStaleAuto(att, fr)
	if att.trim {
		c.trimNamed(att, fr)
	}
	seg := att.sentSeg
	oids := int4OIDs(len(args))
	h := stmtHash(text, oids)
	name := c.paramName(h)
	if att.bst.stmts[name] != h {
		c.prepareAuto(att, fr, name, text, oids, h, true)
		att.wbytes += len(text) + 4*len(oids)
	}
	rd, described := att.bst.rowDescs[name]
	if !described {
		// Describe the statement once per backend: its RowDescription (or
		// NoData) is remembered and answered by the proxy afterwards.
		// PostgreSQL fails a prepared statement whose result columns
		// would change ("cached plan must not change result type"), which
		// closes and forgets it, so the remembered one stays right.
		att.expect = append(att.expect, expectation{seg: att.sentSeg, kind: 'D', swallow: true}, expectation{seg: att.sentSeg, kind: 'r', name: name})
		fr.Send(&pgproto3.Describe{ObjectType: 'S', Name: name})
	}
	// The Bind is encoded at once (Send), so one per session is reused.
	sess := c.sess
	sess.argBuf, sess.argVals = sess.argBuf[:0], sess.argVals[:0]
	for _, a := range args {
		sess.argBuf = append(sess.argBuf, a...)
		att.wbytes += 4 + len(a)
	}
	off := 0
	for _, a := range args {
		sess.argVals = append(sess.argVals, sess.argBuf[off:off+len(a):off+len(a)])
		off += len(a)
	}
	sess.bind = pgproto3.Bind{PreparedStatement: name, Parameters: sess.argVals}
	att.inject(fr, &sess.bind, expectation{kind: '2', swallow: true})
	if described && rd != nil {
		att.expect = append(att.expect, expectation{seg: att.sentSeg, kind: 'R', rowDesc: rd})
	}
	fr.Send(executePortal)
	fr.Send(syncMsg)
	att.unsynced = false
	att.outstanding++
	att.sentSeg++
	att.wbytes += 64 + len(name)
	retryable := c.lastTx == 'I' && att.outstanding == 1
	if !retryable {
		// (A retryable query reads its commit position after the retry
		// could have happened: in detach.)
		c.appendCommitLSN(att, fr)
	}
	inline = c.flushPoint(att, true)
	if inline && retryable {
		// Nothing else in flight and no transaction block: the query can
		// be sent again if its statement proves stale.
		att.retryBuf = paramRetry{seg: seg, text: text, args: args}
		att.retry = &att.retryBuf
	}
	c.mu.Unlock()
	return inline, fr.Flush()
}

var (
	executePortal = &pgproto3.Execute{}
	syncMsg       = &pgproto3.Sync{}
	int4s         = func() []uint32 {
		s := make([]uint32, 64)
		for i := range s {
			s[i] = 23 // int4
		}
		return s
	}()
)

// int4OIDs is n parameter types int4 (shared, read-only).
func int4OIDs(n int) []uint32 {
	if n <= len(int4s) {
		return int4s[:n:n]
	}
	s := make([]uint32, n)
	for i := range s {
		s[i] = 23
	}
	return s
}

// paramName is autoName(h), remembered for the session's last few
// parameterized texts (a simple-protocol client repeats a handful).
func (c *clientConn) paramName(h uint64) string {
	for _, e := range c.sess.paramNames {
		if e.hash == h {
			return e.name
		}
	}
	name := autoName(h)
	c.sess.paramNames[c.sess.paramNext%len(c.sess.paramNames)] = paramNameEntry{hash: h, name: name}
	c.sess.paramNext++
	return name
}

// closeStaleAuto closes every alias on att's backend after one of them
// was found stale (its table changed) or a schema change went through the
// proxy since the backend's last check, so that each is prepared anew on
// its next use. It acts only between requests. Called with c.mu and
// att.wmu held.
func (c *clientConn) closeStaleAuto(att *attachment, fr *pgproto3.Frontend) {
	if att.unsynced || att.copying {
		return // only between requests: never inside a batch or a COPY
	}
	if e := c.srv.schemaEpoch.Load(); att.bst.schemaEpoch != e {
		// A schema change went through the proxy since this backend's
		// statements were prepared: prepare them anew rather than have
		// PostgreSQL fail them ("cached plan must not change result type").
		att.bst.schemaEpoch = e
		att.bst.staleAuto = att.bst.staleAuto || len(att.bst.auto) > 0
	}
	if !att.bst.staleAuto {
		return
	}
	att.bst.staleAuto = false
	clear(att.bst.rowDescs)
	for _, name := range att.bst.auto {
		closeAuto(att, fr, name)
	}
	att.bst.auto = att.bst.auto[:0]
}

// trimNamed closes, on a backend just leased, the client-named statements
// it holds beyond Config.MaxBackendStatements, least recently used first,
// so that a backend shared by many clients does not accumulate every
// statement any of them prepared. The backend is outside any transaction
// then, so no portal built from a closed statement is lost; a client that
// uses a closed statement again has it prepared again (ensurePrepared).
// Called with c.mu and att.wmu held.
func (c *clientConn) trimNamed(att *attachment, fr *pgproto3.Frontend) {
	att.trim = false
	excess := len(att.bst.lastUse) - c.srv.cfg.MaxBackendStatements
	if excess <= 0 {
		return
	}
	type use struct {
		name string
		at   uint64
	}
	uses := make([]use, 0, len(att.bst.lastUse))
	for name, at := range att.bst.lastUse {
		uses = append(uses, use{name, at})
	}
	slices.SortFunc(uses, func(a, b use) int { return cmp.Compare(a.at, b.at) })
	for _, u := range uses[:excess] {
		closeAuto(att, fr, u.name)
	}
}

// closeAuto closes the statement name on att's backend if it holds it (a
// proxy-named one, or one trimNamed closes). Called with c.mu and att.wmu
// held.
func closeAuto(att *attachment, fr *pgproto3.Frontend, name string) {
	if _, ok := att.bst.stmts[name]; ok {
		att.bst.forgetStatement(name)
		att.inject(fr, &pgproto3.Close{ObjectType: 'S', Name: name}, expectation{kind: '3', swallow: true})
	}
}

// copyRowDescription copies m (received into a buffer that is reused) to
// be remembered.
func copyRowDescription(m *pgproto3.RowDescription) *pgproto3.RowDescription {
	out := &pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(m.Fields))}
	for i, f := range m.Fields {
		f.Name = append([]byte(nil), f.Name...)
		out.Fields[i] = f
	}
	return out
}
