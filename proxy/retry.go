package proxy

import (
	"context"
	"errors"
	"strings"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Reads that survive a failing standby.
//
// A read routed to a standby outside a transaction runs on another node
// when its standby fails before any of the reply reached the client:
//
//   - at lease time (leaseFor), when connecting to the standby, or
//     bringing a pooled connection to the session's settings, fails at
//     the connection level;
//   - in flight, for a simple-protocol Query the reader pumps itself
//     (handleQuery), when the backend connection breaks, or the server
//     ends it with a FATAL error (a crash or shutdown of the standby,
//     idle_session_timeout racing the request, ...), before the first
//     reply message was forwarded.
//
// The failed standby is suspected first (replica: no reads until its
// lag probe succeeds again), so the next Pick chooses another standby or
// falls back to the primary. Re-running is safe: a standby cannot write,
// and what must not run twice (volatile functions, locks, sequences) is
// routed to the primary by the router. Nothing is retried inside a
// transaction, in session pooling (the session's backend holds its
// state), after part of a reply went out, or on the primary; those fail
// as before (08006, and the client connection is closed when the
// backend is lost mid-request).

// maxReadRetries bounds how many more nodes a read tries after the
// first failed.
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

// markRetryable records, before a simple-protocol request is sent on
// att, whether it may run again elsewhere (see the comment above): a
// read on a standby, on a backend leased for this request alone (fresh),
// with no transaction to begin. Tries beyond maxReadRetries are not.
func (c *clientConn) markRetryable(att *attachment, p plan, fresh bool, tries int) {
	c.mu.Lock()
	att.retryable = fresh && tries < maxReadRetries && !att.primary && !p.pinned && len(p.preamble) == 0 && c.sess.rs.TxStatus() == 'I'
	c.mu.Unlock()
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
// run again elsewhere: att is retryable, nothing of its reply reached the
// client (the caller knows), no pump goroutine runs it (the reader pumps
// it inline, or has not started reading the reply), and err says that
// the node failed. The lease is discarded with err (the node is
// suspected) and the reader sends the request again (takeResend). It
// reports whether it did.
func (c *clientConn) retryLater(att *attachment, err error) bool {
	c.mu.Lock()
	ok := att.retryable && (att.inline || att.parked) && !att.stopped && !att.released && c.closeReason == nil && nodeFailed(c.ctx, err)
	if !ok {
		c.mu.Unlock()
		return false
	}
	if c.att == att {
		c.att = nil
	}
	att.released = true
	c.resend = true
	c.cond.Broadcast()
	c.mu.Unlock()
	att.lease.Discard(err)
	c.srv.readRetries.Add(1)
	c.srv.log.Debug("read sent again elsewhere: its standby failed before answering", "node", att.nodeName, "err", err)
	return true
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
