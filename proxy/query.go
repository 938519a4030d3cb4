package proxy

import (
	"context"
	"fmt"

	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgproto3"
)

// handleQuery runs a simple-protocol Query.
func (c *clientConn) handleQuery(ctx context.Context, m *pgproto3.Query) stateFn {
	st, err := c.classify(m.String)
	if err != nil {
		return c.localError(err, false)
	}
	if isLocal(st) {
		if att := c.current(true); att != nil {
			// Answer in order: nothing is in flight now, and the backend
			// (in a transaction, or session pooling) stays attached.
			return c.answerLocal(ctx, st, false, c.lastTxStatus())
		}
		return c.answerLocal(ctx, st, false, 'I')
	}
	att, next := c.segmentTarget(ctx, st, nil, nil)
	if next != nil {
		return next
	}
	c.noteStatement(att, st)
	if err := c.forward(att, m); err != nil {
		return c.backendFailed(att, err)
	}
	return c.stateAttached
}

// handleFunctionCall forwards a FunctionCall to the primary of the
// default shard (or the attached backend).
func (c *clientConn) handleFunctionCall(ctx context.Context, m *pgproto3.FunctionCall) stateFn {
	att, next := c.segmentTarget(ctx, &router.Statement{Kind: router.KindWrite, MustPrimary: true}, nil, nil)
	if next != nil {
		return next
	}
	att.wrote = att.primary
	if err := c.forward(att, m); err != nil {
		return c.backendFailed(att, err)
	}
	return c.stateAttached
}

// segmentTarget returns the backend that runs a new request (a Query, or
// the first routable message of an extended-protocol batch): the attached
// backend when a transaction is open on it, else the one the router picks
// (attaching it). When it returns a non-nil stateFn the request was
// answered (an error) and the caller returns that state.
func (c *clientConn) segmentTarget(ctx context.Context, st *router.Statement, bind *pgproto3.Bind, ps *preparedStmt) (*attachment, stateFn) {
	att := c.current(true)
	if att != nil {
		if c.lastTxStatus() != 'I' {
			if err := c.checkInTransaction(att, st, bind, ps); err != nil {
				return nil, c.localError(err, bind != nil || ps != nil)
			}
			return att, nil
		}
		// Session pooling, idle: keep the backend if the route agrees.
	}
	p, err := c.decide(ctx, st, bind, ps)
	if err != nil {
		return nil, c.localError(err, bind != nil || ps != nil)
	}
	if len(p.targets) != 1 {
		if att != nil {
			c.releaseIdle(att)
		}
		return nil, c.scatter(ctx, st, p, bind, ps)
	}
	t := p.targets[0]
	if att != nil {
		if att.shard == t.shard && (att.primary || !t.primary) {
			return att, nil
		}
		c.releaseIdle(att)
	}
	att, err = c.attach(ctx, t)
	if err != nil {
		return nil, c.localError(err, bind != nil || ps != nil)
	}
	return att, nil
}

// releaseIdle gives back a backend kept across transactions (session
// pooling) when the next request must run elsewhere.
func (c *clientConn) releaseIdle(att *attachment) {
	c.mu.Lock()
	if c.att == att {
		c.att = nil
	}
	att.released = true
	c.mu.Unlock()
	att.cancel()
	<-att.done
	att.lease.Discard(nil) // the pump was interrupted mid-read: state unknown
}

func (c *clientConn) lastTxStatus() byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastTx
}

// noteStatement records what the pump needs to know about a statement
// about to be sent: whether it writes (causal token at commit) and which
// SET/RESET it carries (session replay).
func (c *clientConn) noteStatement(att *attachment, st *router.Statement) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if att.primary && writes(st) {
		att.wrote = true
	}
	for _, si := range st.Sets {
		if si.Intercepted() {
			continue
		}
		att.sets = append(att.sets, pendingSet{seg: att.sentSeg, info: si})
	}
}

func writes(st *router.Statement) bool {
	switch st.Kind {
	case router.KindRead, router.KindSession:
		return st.MustPrimary && st.Kind == router.KindRead
	case router.KindTxControl:
		return false
	}
	return true
}

// localError reports err to the client without a backend. In the
// extended protocol the rest of the batch up to Sync is skipped, as
// PostgreSQL does after an error.
func (c *clientConn) localError(err error, extended bool) stateFn {
	if extended {
		c.pending = nil
		c.skipToSync = true
		if e := c.sendNoFlush(errorResponse(err, "")); e != nil {
			return c.stateClosing
		}
		return c.stateIdle
	}
	if e := c.send(errorResponse(err, ""), &pgproto3.ReadyForQuery{TxStatus: c.lastTxStatus()}); e != nil {
		return c.stateClosing
	}
	return c.idleOrAttached()
}

func (c *clientConn) idleOrAttached() stateFn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.att != nil {
		return c.stateAttached
	}
	return c.stateIdle
}

func (c *clientConn) sendNoFlush(msgs ...pgproto3.BackendMessage) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for _, m := range msgs {
		c.fe.Send(m)
	}
	return c.fe.Flush()
}

func (c *clientConn) flushClient() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.fe.Flush(); err != nil {
		return err
	}
	return c.bw.Flush()
}

var _ = fmt.Sprint
