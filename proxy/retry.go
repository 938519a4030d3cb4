package proxy

import (
	"context"
	"errors"
	"strings"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Reads that survive a failing node.
//
// A read the router lets run on a standby (routed to one, or to the
// primary when no standby qualifies), outside a transaction, runs on
// another node (or another connection) when its node fails before any of
// the reply reached the client:
//
//   - at lease time (leaseFor), when connecting to the standby, or
//     bringing a pooled connection to the session's settings, fails at
//     the connection level;
//   - in flight, for a request the reader pumps itself (a simple Query,
//     or an extended-protocol batch ending with Sync, whose messages are
//     kept for the purpose), when the backend connection breaks, or the
//     server ends it with a FATAL error (a crash or shutdown of the
//     standby, a terminated backend, idle_session_timeout racing the
//     request, ...), while the reply is still in the proxy's buffer: what
//     was queued for the client is taken back and the request sent again;
//   - in flight as well, when the standby cancels the request for a
//     conflict with recovery (40001, 40P01: replaying a lock, a vacuum
//     cleanup or a buffer pin its query conflicts with, past
//     max_standby_streaming_delay), while the reply is still buffered:
//     the rest of the reply is dropped, the backend (healthy) goes back
//     to its pool at ReadyForQuery, and the request is sent again, to
//     whatever standby Pick chooses (the replay that conflicted is over
//     by then).
//
// A failed node is suspected first (replica: a standby gets no reads
// until its lag probe succeeds again; the node's idle connections are
// closed), so the next Pick chooses another standby or falls back to the
// primary, on a new connection. Re-running is safe: such a read writes
// nothing, and what must not run twice (writes, volatile functions,
// locks, sequences) the router sends to the primary as such, which is
// never retried. Nothing is retried either inside a transaction, on a
// backend a session keeps between requests (session pooling), or after
// part of a reply went out; those fail as before (08006, and the client
// connection is closed when the backend is lost mid-request; the 40001
// error itself).

// maxReadRetries bounds how many more times a read is sent after its
// first try failed.
const maxReadRetries = 2

// nodeFailed reports whether err, from leasing or using a backend, says
// that the node failed (connecting to it, a broken connection, a server
// shutting down or refusing connections) rather than the request, the
// pool's capacity, the proxy or the caller.
func nodeFailed(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	for _, e := range []error{replica.ErrPoolExhausted, replica.ErrClosed, replica.ErrRoleMismatch, replica.ErrNoHealthyReplica, context.Canceled} {
		if errors.Is(err, e) {
			return false
		}
	}
	if errors.Is(err, replica.ErrNodeUnavailable) {
		return true // connecting failed, or the breaker is open: nothing was sent
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if isFatalSeverity(pgErr.SeverityUnlocalized, pgErr.Severity) {
			return true // the server ends the connection
		}
		c := pgErr.Code
		return strings.HasPrefix(c, "08") || c == "57P01" || c == "57P02" || c == "57P03"
	}
	var ce *clientError
	if errors.As(err, &ce) {
		return false // the proxy's own refusal
	}
	return replica.IsConnFailure(err)
}

// retryEligible reports whether a request planned as p may run again
// elsewhere if its node fails (see the comment above), as far as the
// plan tells: a read the router lets run on a standby, on a backend
// leased for this request alone (fresh), with no transaction to begin.
func retryEligible(p *plan, fresh bool) bool {
	return fresh && !p.pinned && len(p.preamble) == 0 && len(p.targets) == 1 && !p.targets[0].primary
}

// markRetryable records, before a request is sent on att, whether it may
// run again elsewhere: an eligible request (retryEligible) outside a
// transaction; tries beyond maxReadRetries may not. A retryable request
// notes where the client's output stands, to take its reply back. It
// reports whether the request is retryable.
func (c *clientConn) markRetryable(att *attachment, eligible bool, tries int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	att.retryable = eligible && tries < maxReadRetries && c.sess.rs.TxStatus() == 'I'
	if att.retryable {
		// The box stays while a backend is attached (deep idle takes it
		// only from a connection without one): its writes and length
		// tell whether the reply can be taken back.
		c.wmu.Lock()
		b := c.box
		att.retryable = b != nil && !b.traced
		if att.retryable {
			att.outWrites, att.outMark = b.writes, len(b.out)
		}
		c.wmu.Unlock()
	}
	return att.retryable
}

// fatalError returns msg as an error when it is the FATAL (or PANIC)
// error a server sends before it closes the connection.
func fatalError(msg pgproto3.BackendMessage) (error, bool) {
	e, ok := msg.(*pgproto3.ErrorResponse)
	if !ok || !isFatalSeverity(e.SeverityUnlocalized, e.Severity) {
		return nil, false
	}
	return pgconn.ErrorResponseToPgError(e), true
}

// isFatalSeverity reports whether an error's severity (unlocalized, as
// servers since 9.6 send it, else localized) ends the session.
func isFatalSeverity(unlocalized, localized string) bool {
	s := unlocalized
	if s == "" {
		s = localized
	}
	return s == "FATAL" || s == "PANIC"
}

// retryLater ends att without telling the client when its request may
// run again elsewhere: att is retryable, no pump goroutine runs it (the
// reader pumps it inline, or has not started reading the reply), err says
// that the node failed, and nothing of the reply was written to the
// client (what was queued is dropped). The lease is discarded with err
// (the node is suspected) and the reader sends the request again
// (takeResend). It reports whether it did.
func (c *clientConn) retryLater(att *attachment, err error) bool {
	c.mu.Lock()
	ok := c.resendable(att) && (att.inline || att.parked) && (att.nodeDown || nodeFailed(c.ctx, err)) && c.takeBackReply(att)
	if !ok {
		c.mu.Unlock()
		return false
	}
	c.endForResend(att)
	c.mu.Unlock()
	att.lease.Discard(err)
	c.srv.readRetries.Add(1)
	c.srv.log.Debug("read sent again elsewhere: its node failed before answering", "node", att.nodeName, "err", err)
	return true
}

// resendable reports whether att's request may still be sent again: it
// is retryable and att has neither been interrupted nor given up, nor the
// connection been ended by the pump. Called with c.mu held.
func (c *clientConn) resendable(att *attachment) bool {
	return att.retryable && !att.stopped && !att.released && c.closeReason == nil
}

// takeBackReply drops what was queued for the client since att's
// request was sent, unless some of it was written already; it reports
// whether it did. Called with c.mu held.
func (c *clientConn) takeBackReply(att *attachment) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := c.box
	if b == nil || b.writes != att.outWrites || len(b.out) < att.outMark || b.outErr != nil {
		return false
	}
	b.out = b.out[:att.outMark]
	c.unflushed = len(b.out)
	return true
}

// endForResend detaches att, whose request the reader is to send again
// (takeResend). Called with c.mu held; the caller disposes of the lease.
func (c *clientConn) endForResend(att *attachment) {
	if c.att == att {
		c.att = nil
	}
	att.released = true
	c.resend = true
	c.cond.Broadcast()
}

// takeResend reports (and clears) whether the request just sent is to be
// sent again on another backend (retryLater).
func (c *clientConn) takeResend() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.resend
	c.resend = false
	return r
}

// startReplay keeps pending, the first messages of a batch that may run
// again elsewhere (copies), in the connection's replay buffer.
func (c *clientConn) startReplay(pending []pgproto3.FrontendMessage, t target, st *router.Statement) {
	c.replay = append(c.replayBuf[:0], pending...)
	c.replayBuf = c.replay[:0]
	c.replayTarget, c.replayStmt = t, st
}

// Messages drivers send in every batch, kept for a replay without a copy
// (nothing modifies a message it sends).
var (
	executeUnnamed        = &pgproto3.Execute{}
	describeUnnamedPortal = &pgproto3.Describe{ObjectType: 'P'}
	describeUnnamedStmt   = &pgproto3.Describe{ObjectType: 'S'}
)

// replayCopy is copyFrontendMessage without allocating for the common
// unnamed Execute and Describe.
func replayCopy(msg pgproto3.FrontendMessage) pgproto3.FrontendMessage {
	switch m := msg.(type) {
	case *pgproto3.Execute:
		if *m == *executeUnnamed {
			return executeUnnamed
		}
	case *pgproto3.Describe:
		switch *m {
		case *describeUnnamedPortal:
			return describeUnnamedPortal
		case *describeUnnamedStmt:
			return describeUnnamedStmt
		}
	}
	return copyFrontendMessage(msg)
}

// keepForReplay adds a copy of msg, about to be sent in the batch being
// kept, to c.replay. A batch longer than maxPending is not kept: its
// request is then not retryable.
func (c *clientConn) keepForReplay(att *attachment, msg pgproto3.FrontendMessage) {
	if len(c.replay) < maxPending {
		c.replay = append(c.replay, replayCopy(msg))
		c.replayBuf = c.replay[:0]
		return
	}
	c.dropReplay()
	c.mu.Lock()
	att.retryable = false
	c.mu.Unlock()
}

// afterForward finishes sending msg, the last message the reader had of
// a batch, whose send (and inline pump) returned err: a failure
// retryLater takes, or one the inline pump took, sends the kept batch
// again elsewhere (resendBatch); other failures lose the backend. The
// kept batch is dropped at its Sync.
func (c *clientConn) afterForward(ctx context.Context, att *attachment, msg pgproto3.FrontendMessage, err error) stateFn {
	if err != nil && !c.retryLater(att, err) {
		c.dropReplay()
		return c.backendFailed(att, err)
	}
	if c.takeResend() {
		return c.resendBatch(ctx)
	}
	if _, ok := msg.(*pgproto3.Sync); ok {
		c.dropReplay() // answered, or being answered by a pump goroutine (which does not retry)
	}
	return c.to.attached
}

// resendBatch sends the kept batch (c.replay) on another backend, its
// node having failed before answering, as often as that happens up to
// maxReadRetries.
func (c *clientConn) resendBatch(ctx context.Context) stateFn {
	msgs := c.replay
	_, synced := msgs[len(msgs)-1].(*pgproto3.Sync)
	next, err := c.sendRetrying(ctx, nil, c.replayTarget, c.replayStmt, true, 1, func(att *attachment) error {
		for _, m := range msgs {
			if err := c.forward(att, m); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || synced {
		c.dropReplay() // the batch ended (or the connection does, after a lost backend)
	}
	if err != nil {
		// After the batch's Sync the client waits for ReadyForQuery;
		// before it, the rest of the batch is skipped.
		return c.localError(err, !synced)
	}
	return next
}

// sendRetrying sends a request with send on att (or, when att is nil, on
// a backend of t attached first), and sends it again on a new backend of
// t as often as its node fails before answering (retryLater), the count
// of tries starting at tries. It returns the next state, or the error
// attaching a backend for a new try failed with (observed as detached,
// for the caller to report).
func (c *clientConn) sendRetrying(ctx context.Context, att *attachment, t target, st *router.Statement, eligible bool, tries int, send func(*attachment) error) (stateFn, error) {
	for ; ; tries++ {
		if att == nil {
			var err error
			if att, err = c.attach(ctx, t, nil, false); err != nil {
				c.observeDetached(err)
				return nil, err
			}
		}
		c.noteStatement(att, st)
		c.markRetryable(att, eligible, tries)
		if err := send(att); err != nil && !c.retryLater(att, err) {
			return c.backendFailed(att, err), nil
		}
		if !c.takeResend() {
			return c.to.attached, nil
		}
		att = nil // the node failed before answering: the read runs elsewhere
	}
}

// dropReplay forgets the kept batch (its buffer stays for the next,
// holding no message).
func (c *clientConn) dropReplay() {
	if c.replay == nil {
		return
	}
	clear(c.replay)
	c.replay, c.replayTarget, c.replayStmt = nil, target{}, nil
}

// recoveryConflict reports whether msg is a standby's cancellation of
// att's retryable request for a conflict with recovery (40001, or 40P01
// for a buffer-pin deadlock; serializable transactions, the other source
// of 40001, do not exist on a standby) that can be taken back: nothing
// of the reply was written to the client, and the backend, healthy, goes
// back to its pool at the ReadyForQuery that follows (transaction
// pooling). If so, what was queued for the client is dropped, the
// statement bookkeeping of the failed request is undone, and att is
// marked (conflict). Called by the pump with c.mu held.
func (c *clientConn) recoveryConflict(att *attachment, msg pgproto3.BackendMessage) bool {
	e, ok := msg.(*pgproto3.ErrorResponse)
	if !ok || (e.Code != "40001" && e.Code != "40P01") || isFatalSeverity(e.SeverityUnlocalized, e.Severity) {
		return false
	}
	if !c.resendable(att) || !att.inline || att.outstanding != 1 || c.srv.cfg.PoolMode != PoolTransaction {
		return false
	}
	if !c.takeBackReply(att) {
		return false
	}
	c.forgetSegment(att)
	att.conflict = true
	return true
}

// dropUntilReady handles msg, a message of a reply being dropped after a
// recovery conflict: at its ReadyForQuery the backend goes back to its
// pool and the reader sends the request again (takeResend), which
// dropUntilReady reports. Called by the pump with c.mu held; it unlocks
// it.
func (c *clientConn) dropUntilReady(att *attachment, msg pgproto3.BackendMessage) (done bool) {
	rfq, ok := msg.(*pgproto3.ReadyForQuery)
	if !ok {
		c.mu.Unlock()
		return false
	}
	att.outstanding = 0
	att.recvSeg++
	att.bst.fingerprint = 0 // what the failed request set is unknown: replay the session's settings next time
	c.endForResend(att)
	c.mu.Unlock()
	if rfq.TxStatus == 'I' {
		c.releaseBackend(att)
	} else {
		att.lease.Discard(nil)
	}
	c.srv.readRetries.Add(1)
	c.srv.log.Debug("read sent again: its standby cancelled it (conflict with recovery)", "node", att.nodeName)
	return true
}
