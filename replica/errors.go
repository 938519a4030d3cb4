package replica

import (
	"context"
	"errors"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
)

// Sentinel errors. Errors returned by this package wrap one of them in an
// *Error that names the node and carries a SQLSTATE; branch with errors.Is.
var (
	// ErrNoHealthyReplica: no standby qualified and the caller asked for no
	// primary fallback (PickRequest.NoFallback). SQLSTATE 08006.
	ErrNoHealthyReplica = errors.New("no healthy replica")
	// ErrPoolExhausted: every connection of the node's pool stayed in use for
	// Config.AcquireTimeout. SQLSTATE 53300.
	ErrPoolExhausted = errors.New("connection pool exhausted")
	// ErrClosed: the Set was closed. SQLSTATE 57P01.
	ErrClosed = errors.New("replica set closed")
	// ErrNodeUnavailable: the node's breaker is open or connecting to it
	// failed. SQLSTATE 08006. Nothing was sent to the server, so the caller
	// may retry elsewhere.
	ErrNodeUnavailable = errors.New("node unavailable")
	// ErrRoleMismatch: the node's observed role differs from its configured
	// role; writes to a configured primary that is in recovery are refused.
	// SQLSTATE 25006.
	ErrRoleMismatch = errors.New("node role mismatch")
)

// SQLSTATE codes used by this package.
const (
	codeConnectionFailure = "08006"
	codeTooManyConns      = "53300"
	codeAdminShutdown     = "57P01"
	codeReadOnly          = "25006"
)

// Error is the error type returned by this package: a sentinel (Kind), the
// node it concerns, the SQLSTATE a client should see, and an optional cause.
type Error struct {
	Kind  error  // one of the sentinels above
	Node  string // node name, "" when not about one node
	Code  string // SQLSTATE
	Msg   string // extra detail, may be empty
	Cause error  // underlying error, may be nil
}

func (e *Error) Error() string {
	s := "replica"
	if e.Node != "" {
		s += ": node " + e.Node
	}
	s += ": " + e.Kind.Error()
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	if e.Cause != nil {
		s += ": " + e.Cause.Error()
	}
	return s
}

// SQLState returns the PostgreSQL error code for clients.
func (e *Error) SQLState() string { return e.Code }

// Unwrap returns the sentinel and the cause, so errors.Is works for both.
func (e *Error) Unwrap() []error {
	if e.Cause == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Cause}
}

func newError(kind error, node, code, msg string, cause error) *Error {
	return &Error{Kind: kind, Node: node, Code: code, Msg: msg, Cause: cause}
}

// IsConnFailure reports whether err counts as a failure for the circuit
// breaker: network errors, timeouts, connection errors and the server errors
// of class 08 (connection exception), 53 (insufficient resources) and
// 57P01-57P03 (shutdown / cannot connect now). Other *pgconn.PgError values
// (constraint violations, syntax errors, statement timeouts...) prove the
// server is alive and are not failures. nil and context.Canceled (the
// caller gave up) are not failures either.
func IsConnFailure(err error) bool {
	if err == nil {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		c := pgErr.Code
		return len(c) == 5 && (c[:2] == "08" || c[:2] == "53" || c == "57P01" || c == "57P02" || c == "57P03")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	if errors.Is(err, context.Canceled) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	// Any other error (io.EOF, connect errors, protocol errors) means the
	// connection is unusable.
	return true
}

// isServerError reports whether err is nil or an error the server sent
// (after which the connection is still in protocol sync).
func isServerError(err error) bool {
	if err == nil {
		return true
	}
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr)
}
