package proxy

import (
	"context"
	"errors"
	"time"

	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgproto3"
)

// maxPending bounds the extended-protocol messages buffered before the
// proxy must pick a backend.
const maxPending = 256

// handleExtended handles Parse/Bind/Describe/Execute/Close/Sync/Flush.
//
// Inside a batch (messages since the last Sync) every message goes to
// the backend the batch started on, so unnamed statements and portals
// stay together. A batch that starts without a backend is buffered until
// its first routable message: Bind (the statement plus its parameters
// decide the shard), or Sync/Flush/Execute for batches without a Bind
// (Parse+Describe, as drivers do to prepare).
func (c *clientConn) handleExtended(ctx context.Context, msg pgproto3.FrontendMessage) stateFn {
	if c.cacheState.batch != nil {
		if next, ok := c.answerCachedMessage(msg); ok {
			return next
		}
	}
	if c.localBatch != nil {
		if next := c.answerLocalMessage(msg); next != nil {
			return next
		}
		return c.idleOrAttached()
	}
	if c.skipToSync {
		if _, ok := msg.(*pgproto3.Sync); ok {
			c.skipToSync = false
			if err := c.send(&pgproto3.ReadyForQuery{TxStatus: c.txStatus()}); err != nil {
				return c.to.closing
			}
		}
		return c.idleOrAttached()
	}
	c.mu.Lock()
	att := c.att
	inBatch := att != nil && att.unsynced
	c.mu.Unlock()
	if inBatch && len(c.pending) == 0 {
		if _, ok := msg.(*pgproto3.Sync); ok {
			c.queries.Add(1)
		}
		if b, ok := msg.(*pgproto3.Bind); ok {
			if next := c.bindInBatch(ctx, att, b); next != nil {
				return next
			}
		}
		if c.replay != nil {
			c.keepForReplay(att, msg)
		}
		return c.afterForward(ctx, att, msg, c.forward(att, msg))
	}

	var trigger bool
	var bind *pgproto3.Bind
	switch m := msg.(type) {
	case *pgproto3.Bind:
		trigger, bind = true, m
	case *pgproto3.Sync:
		trigger = true
		if len(c.pending) == 0 {
			// Nothing to run: answer ReadyForQuery ourselves (in order).
			c.queries.Add(1)
			if a := c.current(true); a != nil {
				if err := c.forward(a, m); err != nil {
					return c.backendFailed(a, err)
				}
				return c.to.attached
			}
			if err := c.send(&pgproto3.ReadyForQuery{TxStatus: c.txStatus()}); err != nil {
				return c.to.closing
			}
			return c.to.idle
		}
	case *pgproto3.Flush:
		if len(c.pending) == 0 {
			if a := c.current(false); a != nil {
				if err := c.forward(a, m); err != nil {
					return c.backendFailed(a, err)
				}
				return c.to.attached
			}
			if err := c.flushClient(); err != nil {
				return c.to.closing
			}
			return c.to.idle
		}
		trigger = true
	case *pgproto3.Execute:
		trigger = true
	}
	c.pending = append(c.pending, copyFrontendMessage(msg))
	if !trigger && len(c.pending) < maxPending {
		return c.idleOrAttached()
	}
	return c.startBatch(ctx, bind)
}

// startBatch picks the backend for the buffered batch and sends it.
// A batch with a Bind is routed by the router with the Bind's
// parameters; a batch without one (Parse/Describe, as drivers send to
// prepare) runs on the transaction's backend, or on any backend of the
// statement's shard without changing the router session.
func (c *clientConn) startBatch(ctx context.Context, bind *pgproto3.Bind) stateFn {
	ps, st, err := c.batchStatement(bind)
	att := c.current(true)
	if err != nil {
		return c.localError(err, true)
	}
	if name, ok := showName(st.SQL); ok {
		res, err := c.showResult(name)
		if err != nil {
			return c.localError(err, true)
		}
		return c.startLocalBatch(res)
	}
	if bind == nil {
		return c.startDescribeBatch(ctx, att, st)
	}
	p, err := c.decide(ctx, st, bind, ps)
	if err != nil {
		if att != nil && c.lastTxStatus() != 'I' {
			pending := c.pending
			c.pending = nil
			return c.failInTransaction(att, err, pending...)
		}
		return c.localError(err, true)
	}
	switch {
	case p.split != nil, p.concat:
		c.observeDetached(errCopySplitExtended)
		return c.localError(errCopySplitExtended, true)
	case p.local:
		res, err := c.localDecision(ctx, p)
		if err != nil {
			return c.localError(err, true)
		}
		return c.startLocalBatch(res)
	case len(p.targets) > 1:
		if att != nil && !p.pinned {
			c.releaseIdle(att)
		}
		sql := st.SQL
		res, err := c.runMulti(ctx, p, sql, bind, ps)
		c.observeDetached(err)
		if err != nil {
			return c.localError(err, true)
		}
		return c.startLocalBatch(res)
	}
	if next, ok := c.cachedBatchStart(ctx, att, p, st, bind, ps); ok {
		return next
	}
	fresh := att == nil // leased for this batch alone (retry.go)
	att, err = c.use(ctx, att, p)
	if err != nil {
		return c.localError(err, true)
	}
	c.noteStatement(att, st)
	c.dropReplay()
	if c.markRetryable(att, retryEligible(&p, fresh), 0) {
		c.startReplay(c.pending, p.targets[0], st)
	}
	c.req = sendReq{att: att}
	return c.to.sendBatch
}

// stateSendBatch sends the buffered batch startBatch routed, from the
// top of the reader's stack: the reply may be pumped inline under it
// (see idle.go on stack depth).
func (c *clientConn) stateSendBatch(ctx context.Context) stateFn {
	att := c.req.att
	c.req = sendReq{}
	return c.sendPending(ctx, att)
}

// startDescribeBatch runs a batch without Bind (prepare and describe).
func (c *clientConn) startDescribeBatch(ctx context.Context, att *attachment, st *router.Statement) stateFn {
	if att == nil {
		t := target{shard: c.srv.defaultShard(), primary: true}
		if len(st.Tables) > 0 {
			// Any shard has the schema; prefer the default shard's primary,
			// which is always current for DDL just run.
		}
		actx, cancel := ctx, context.CancelFunc(func() {})
		parseOnly := c.parseOnlyBatch(st)
		if parseOnly {
			actx, cancel = context.WithTimeout(ctx, prepareLeaseWait)
		}
		a, err := c.attach(actx, t, nil, true)
		cancel()
		if err != nil {
			if parseOnly && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				// Every backend is busy, perhaps with transactions of other
				// connections of a client program that is blocked on this
				// very prepare (libpq's PQprepare): answer the Parse here.
				// The statement is prepared on the backend of its first
				// Bind, where an error of its own (an unknown table, ...)
				// then shows.
				return c.startLocalBatch(&localResult{})
			}
			return c.localError(err, true)
		}
		att = a
	}
	return c.sendPending(ctx, att)
}

// prepareLeaseWait is how long a prepare-only batch (Parse ... Sync) waits
// for a backend before the proxy answers it itself.
const prepareLeaseWait = 5 * time.Millisecond

// parseOnlyBatch reports whether the buffered batch only prepares
// statements (Parse and Close messages ending with Sync) that parse:
// nothing in it needs a backend's answer.
func (c *clientConn) parseOnlyBatch(st *router.Statement) bool {
	// Called with no backend attached: outside a transaction, or in one
	// whose BEGIN is still deferred. A failed transaction refuses Parse.
	if st == nil || st.ParseError != nil || len(c.pending) < 2 || c.txStatus() == 'E' {
		return false
	}
	parses := 0
	for i, m := range c.pending {
		switch m := m.(type) {
		case *pgproto3.Parse:
			parses++
		case *pgproto3.Close:
			if m.ObjectType != 'S' {
				return false
			}
		case *pgproto3.Sync:
			if i != len(c.pending)-1 {
				return false
			}
		default:
			return false
		}
	}
	_, synced := c.pending[len(c.pending)-1].(*pgproto3.Sync)
	return synced && parses > 0
}

func (c *clientConn) sendPending(ctx context.Context, att *attachment) stateFn {
	pending := c.pending
	c.pending = nil
	for i, m := range pending {
		if _, ok := m.(*pgproto3.Sync); ok {
			c.queries.Add(1)
		}
		err := c.forward(att, m)
		if i == len(pending)-1 {
			return c.afterForward(ctx, att, m, err)
		}
		if err != nil {
			c.dropReplay()
			return c.backendFailed(att, err)
		}
	}
	return c.to.attached
}

// batchStatement finds the statement that decides a batch's route: the
// one the Bind names, else the batch's first Parse, else the first
// Describe'd statement. Parse messages in the batch take precedence over
// the session's statements of the same name.
func (c *clientConn) batchStatement(bind *pgproto3.Bind) (*preparedStmt, *router.Statement, error) {
	find := func(name string) *preparedStmt {
		for i := len(c.pending) - 1; i >= 0; i-- {
			if p, ok := c.pending[i].(*pgproto3.Parse); ok && p.Name == name {
				return &preparedStmt{name: p.Name, query: p.Query, paramOIDs: p.ParameterOIDs, hash: stmtHash(p.Query, p.ParameterOIDs)}
			}
		}
		return c.sess.stmts[name]
	}
	var ps *preparedStmt
	if bind != nil {
		ps = find(bind.PreparedStatement)
	} else {
		for _, m := range c.pending {
			switch m := m.(type) {
			case *pgproto3.Parse:
				ps = find(m.Name)
			case *pgproto3.Describe:
				if m.ObjectType == 'S' {
					ps = find(m.Name)
				}
			}
			if ps != nil {
				break
			}
		}
	}
	if ps == nil {
		// Portal-only batches (Describe/Execute of a portal) have no
		// statement here: PostgreSQL will report what is missing.
		return nil, &router.Statement{Kind: router.KindRead}, nil
	}
	st, err := c.classifyPrepared(ps)
	return ps, st, err
}

func (c *clientConn) classifyPrepared(ps *preparedStmt) (*router.Statement, error) {
	if ps.stmt != nil {
		return ps.stmt, nil
	}
	st, err := c.classify(ps.query)
	if err != nil {
		return nil, err
	}
	ps.stmt = st
	return st, nil
}

// copyFrontendMessage copies a message returned by Receive (which is
// valid only until the next Receive) so it can be buffered.
func copyFrontendMessage(msg pgproto3.FrontendMessage) pgproto3.FrontendMessage {
	switch m := msg.(type) {
	case *pgproto3.Parse:
		cp := *m
		cp.ParameterOIDs = append([]uint32(nil), m.ParameterOIDs...)
		return &cp
	case *pgproto3.Bind:
		cp := *m
		cp.ParameterFormatCodes = append([]int16(nil), m.ParameterFormatCodes...)
		cp.ResultFormatCodes = append([]int16(nil), m.ResultFormatCodes...)
		cp.Parameters = make([][]byte, len(m.Parameters))
		for i, p := range m.Parameters {
			if p != nil {
				cp.Parameters[i] = append([]byte{}, p...)
			}
		}
		return &cp
	case *pgproto3.Describe:
		cp := *m
		return &cp
	case *pgproto3.Execute:
		cp := *m
		return &cp
	case *pgproto3.Close:
		cp := *m
		return &cp
	case *pgproto3.Sync:
		return &pgproto3.Sync{}
	case *pgproto3.Flush:
		return &pgproto3.Flush{}
	}
	return msg
}

// bindInBatch routes a Bind that arrives inside a batch already running on
// att (pipelined statements before one Sync). The statement must run on
// att's shard; otherwise the batch is failed on the backend itself so that
// PostgreSQL skips the rest of it, as it would after any error.
func (c *clientConn) bindInBatch(ctx context.Context, att *attachment, b *pgproto3.Bind) stateFn {
	ps := c.sess.stmts[b.PreparedStatement]
	if ps == nil {
		return nil
	}
	st, err := c.classifyPrepared(ps)
	if err != nil {
		return nil
	}
	if c.transient(att) {
		return nil
	}
	p, err := c.decide(ctx, st, b, ps)
	if err == nil && !p.local && !p.pinned && (len(p.targets) != 1 || p.targets[0].shard != att.shard || (p.targets[0].primary && !att.primary)) {
		err = newClientError(codeFeatureNotSupported, "a pipelined batch (statements before one Sync) cannot span shards or move from a standby to the primary; send Sync between such statements")
	}
	if err == nil && p.local {
		err = newClientError(codeFeatureNotSupported, st.Command+" inside a pipelined batch is not supported by dbproxy; send Sync first")
	}
	if err != nil {
		if ferr := c.failOnBackend(att, err); ferr != nil {
			return c.backendFailed(att, ferr)
		}
		return nil
	}
	c.noteStatement(att, st)
	return nil
}
