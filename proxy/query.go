package proxy

import (
	"context"

	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgproto3"
)

// handleQuery runs a simple-protocol Query.
func (c *clientConn) handleQuery(ctx context.Context, m *pgproto3.Query) stateFn {
	c.dropReplay()
	st, err := c.classify(m.String)
	if err != nil {
		c.current(true)
		return c.localError(err, false)
	}
	att := c.current(true) // requests are routed in order: let earlier ones finish
	if name, ok := showName(st.SQL); ok {
		return c.answerLocal(c.showResult(name))
	}
	if st.NumStatements == 0 && st.ParseError == nil {
		// An empty query (or only comments): PostgreSQL answers
		// EmptyQueryResponse; so do we, without a backend.
		if err := c.send(&pgproto3.EmptyQueryResponse{}, &pgproto3.ReadyForQuery{TxStatus: c.txStatus()}); err != nil {
			return c.to.closing
		}
		return c.idleOrAttached()
	}
	p, err := c.decide(ctx, st, nil, nil)
	if err != nil {
		if att != nil && c.lastTxStatus() != 'I' {
			// Inside a transaction an error aborts it, as in PostgreSQL:
			// let the backend raise it.
			return c.failInTransaction(att, err, &pgproto3.Sync{})
		}
		return c.localError(err, false)
	}
	switch {
	case p.local:
		return c.answerLocal(c.localDecision(ctx, p))
	case p.split != nil, p.concat:
		if att != nil {
			c.releaseIdle(att)
		}
		if p.concat {
			return c.copyOutConcat(ctx, p, st, m.String)
		}
		return c.copyInSplit(ctx, p, st, m.String)
	case len(p.targets) > 1:
		if att != nil && !p.pinned {
			c.releaseIdle(att)
		}
		res, err := c.runMulti(ctx, p, st.SQL, nil, nil)
		c.observeDetached(err)
		if err != nil {
			return c.localError(err, false)
		}
		return c.answerLocal(res, nil)
	}
	if next, ok := c.cachedQuery(ctx, att, p, st, m.String); ok {
		return next
	}
	if att != nil && !p.pinned && isCursorCommand(st) {
		p.pinned = true // session pooling: the cursor is on the backend the session holds
	}
	eligible := retryEligible(&p, att == nil) // att == nil: leased for this request alone
	att, err = c.use(ctx, att, p)
	if err != nil {
		return c.localError(err, false)
	}
	c.req = sendReq{att: att, st: st, m: m, eligible: eligible}
	if eligible {
		c.req.t = p.targets[0]
	}
	if c.srv.cfg.AutoPrepare {
		c.req.text, c.req.args, c.req.param = st.Parameterize()
	}
	return c.to.sendQuery
}

// sendReq is a request routed to one backend, which a state function
// sends from the top of the reader's stack: its reply may be pumped
// inline under it (see idle.go on stack depth).
type sendReq struct {
	att      *attachment
	st       *router.Statement
	m        *pgproto3.Query // valid until the next client message is read
	text     string          // with param: the parameterized text and its arguments
	args     []string
	param    bool
	eligible bool   // the request may run elsewhere if its node fails (retry.go)
	t        target // with eligible: where it was routed
}

// stateSendQuery sends the simple-protocol request handleQuery routed,
// and sends it again elsewhere while its node fails before answering
// (retry.go).
func (c *clientConn) stateSendQuery(ctx context.Context) stateFn {
	r := &c.req
	next, err := c.sendRetrying(ctx, r.att, r.t, r.st, r.eligible, 0, func(att *attachment) error {
		if r.param {
			return c.forwardParameterized(att, r.text, r.args)
		}
		return c.forward(att, r.m)
	})
	c.req = sendReq{}
	if err != nil {
		return c.localError(err, false)
	}
	return next
}

// handleFunctionCall forwards a FunctionCall to the attached backend, or
// the primary of the default shard.
func (c *clientConn) handleFunctionCall(ctx context.Context, m *pgproto3.FunctionCall) stateFn {
	att := c.current(true)
	if att == nil {
		t := target{shard: c.srv.defaultShard(), primary: true}
		var err error
		if att, err = c.attach(ctx, t, nil, true); err != nil {
			return c.localError(err, false)
		}
	}
	c.mu.Lock()
	att.wrote = att.wrote || att.primary
	c.mu.Unlock()
	if err := c.forward(att, m); err != nil {
		return c.backendFailed(att, err)
	}
	return c.to.attached
}

// use returns the backend that runs a single-shard plan: the
// transaction's backend when pinned, the attached one when it fits
// (session pooling), else a newly leased one.
func (c *clientConn) use(ctx context.Context, att *attachment, p plan) (*attachment, error) {
	if p.pinned {
		if att == nil {
			c.observeDetached(errNoBackend)
			return nil, errNoBackend
		}
		return att, nil
	}
	t := p.targets[0]
	if att != nil {
		if att.shard == t.shard && (att.primary || !t.primary) {
			if err := c.sendPreamble(att, p.preamble); err != nil {
				return nil, err
			}
			return att, nil
		}
		c.releaseIdle(att)
	}
	att, err := c.attach(ctx, t, p.preamble, false)
	if err != nil {
		c.observeDetached(err)
		return nil, err
	}
	return att, nil
}

var errNoBackend = &clientError{code: "25P02", message: "current transaction is aborted: its backend connection was lost", hint: "ROLLBACK and retry the transaction"}

// observeDetached tells the router session how a request that never
// reached a backend ended: as an error (err != nil) inside or outside a
// transaction, or successfully.
func (c *clientConn) observeDetached(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.syncListensLocked()
	if err == nil {
		if c.sess.rs.TxStatus() == 'I' {
			c.sess.rs.Observe('I')
		}
		return
	}
	c.sess.rs.ObserveError()
	if c.sess.rs.TxStatus() == 'I' {
		c.sess.rs.Observe('I')
	} else {
		c.sess.rs.Observe('E')
	}
}

// releaseIdle gives back a backend kept across transactions (session
// pooling) when the next request must run elsewhere.
func (c *clientConn) releaseIdle(att *attachment) {
	c.mu.Lock()
	if c.att == att {
		c.att = nil
	}
	att.released = true
	parked := att.parked
	c.mu.Unlock()
	if parked {
		<-att.done
		c.releaseBackend(att)
		return
	}
	c.interrupt(att)
	<-att.done
	att.lease.Discard(nil) // the pump was interrupted mid-read: state unknown
}

// txStatus is the transaction status reported to the client for answers
// the proxy makes itself.
func (c *clientConn) txStatus() byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sess.rs.TxStatus()
}

// noteStatement records what the pump needs to know about a statement
// about to be sent: whether it writes (causal token at commit) and
// whether it ends a write transaction (commit position read with it).
func (c *clientConn) noteStatement(att *attachment, st *router.Statement) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wantCommitLSN(att, st)
	if changesSchema(st) {
		c.srv.schemaChanged()
		att.ddl = true // and again when its transaction ends
	}
	if st.TempKept || st.HoldCursor || st.SessionLock {
		att.bst.tainted = true // session state outlives the session's use: never pooled again (releaseBackend)
	}
	if att.primary && writes(st) {
		att.wrote = true
		c.noteCacheWrite(st)
	}
}

// isCursorCommand reports whether st works on a cursor declared earlier
// (FETCH, MOVE, CLOSE): it runs where the session's backend is.
func isCursorCommand(st *router.Statement) bool {
	if st.NumStatements != 1 {
		return false
	}
	switch st.Command {
	case "FETCH", "MOVE", "CLOSE":
		return true
	}
	return false
}

// changesSchema reports whether st may change the result type of
// statements prepared earlier (DDL other than creating temporary tables).
func changesSchema(st *router.Statement) bool {
	return st != nil && st.Kind == router.KindDDL && len(st.CreatesTemp) == 0
}

func writes(st *router.Statement) bool {
	switch st.Kind {
	case router.KindRead:
		return st.MustPrimary
	case router.KindSession, router.KindTxControl:
		return false
	}
	return true
}

// localError reports err to the client without a backend. In the
// extended protocol the rest of the batch up to Sync is skipped, as
// PostgreSQL does after an error; when the batch's Sync is already
// buffered (it triggered the batch), ReadyForQuery follows at once.
func (c *clientConn) localError(err error, extended bool) stateFn {
	if extended && len(c.pending) > 0 {
		if _, ok := c.pending[len(c.pending)-1].(*pgproto3.Sync); ok {
			extended = false
		}
	}
	if extended {
		c.pending = nil
		c.skipToSync = true
		if e := c.sendNoFlush(errorResponse(err, "")); e != nil {
			return c.to.closing
		}
		return c.idleOrAttached()
	}
	c.pending = nil
	if e := c.send(errorResponse(err, ""), &pgproto3.ReadyForQuery{TxStatus: c.txStatus()}); e != nil {
		return c.to.closing
	}
	return c.idleOrAttached()
}

func (c *clientConn) idleOrAttached() stateFn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.att != nil {
		return c.to.attached
	}
	return c.to.idle
}

// sendNoFlush queues msgs for the client; the next flush writes them.
func (c *clientConn) sendNoFlush(msgs ...pgproto3.BackendMessage) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for _, m := range msgs {
		c.queue(m)
	}
	return c.flushClientLocked(false)
}

func (c *clientConn) flushClient() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.flushClientLocked(true)
}

func (c *clientConn) lastTxStatus() byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastTx
}

// failInTransaction reports a routing error inside an open transaction
// through the transaction's backend, which aborts the transaction ('E')
// exactly as an error of its own would; then sends end (Sync for a
// simple Query, or the rest of the extended batch) so the client gets its
// ReadyForQuery from the backend.
func (c *clientConn) failInTransaction(att *attachment, err error, rest ...pgproto3.FrontendMessage) stateFn {
	if ferr := c.failOnBackend(att, err); ferr != nil {
		return c.backendFailed(att, ferr)
	}
	for _, m := range rest {
		if ferr := c.forward(att, m); ferr != nil {
			return c.backendFailed(att, ferr)
		}
	}
	return c.to.attached
}
