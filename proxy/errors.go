package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Sentinel errors. Errors returned to clients carry a SQLSTATE (see the
// catalogue below); these are what Go callers branch on.
var (
	// ErrServerClosed is returned by Serve after Close.
	ErrServerClosed = errors.New("proxy: server closed")
	// ErrShuttingDown is sent to clients (57P01) when Close ends sessions.
	ErrShuttingDown = errors.New("proxy: shutting down")
	// errClientGone means the client closed its side (EOF or Terminate).
	errClientGone = errors.New("proxy: client disconnected")
	// errCanceledByClient ends a multi-shard statement the client sent a
	// CancelRequest for (57014, PostgreSQL's message).
	errCanceledByClient = &clientError{code: codeQueryCanceled, message: "canceling statement due to user request"}
	// errSessionLock refuses session-level advisory locks under
	// transaction pooling: the lock would outlive the transaction on a
	// pooled backend, and the client's unlock would go elsewhere.
	errSessionLock = &clientError{code: codeFeatureNotSupported,
		message: "session-level advisory locks are not supported with transaction pooling: the lock would stay on a pooled backend after the transaction",
		hint:    `use pg_advisory_xact_lock inside a transaction, or server.pool_mode = "session"`}
	// errTempTable refuses temporary tables that outlive their
	// transaction under transaction pooling: the session's next
	// transaction may run on another backend, and the table would stay on
	// a pooled one.
	errTempTable = &clientError{code: codeFeatureNotSupported,
		message: "temporary tables that outlive their transaction are not supported with transaction pooling: the next transaction may run on another backend",
		hint:    `create it inside a transaction with ON COMMIT DROP, or use server.pool_mode = "session"`}
	// errHoldCursor refuses cursors WITH HOLD under transaction pooling.
	errHoldCursor = &clientError{code: codeFeatureNotSupported,
		message: "cursors WITH HOLD are not supported with transaction pooling: the cursor would stay on a pooled backend after the transaction",
		hint:    `fetch from a cursor without WITH HOLD inside the transaction, or use server.pool_mode = "session"`}
	// errIdleInTransaction ends a session idle inside a transaction for
	// longer than Config.IdleTransactionTimeout (PostgreSQL's code and
	// message for idle_in_transaction_session_timeout).
	errIdleInTransaction = &clientError{code: codeIdleInTransactionTimeout, message: "terminating connection due to idle-in-transaction timeout"}
	// errCopySplitExtended refuses COPY of a sharded table over the
	// extended protocol (the proxy splits only simple queries).
	errCopySplitExtended = &clientError{code: codeFeatureNotSupported, message: "COPY of a sharded table must be sent as a simple query"}
)

// SQLSTATE codes used by the proxy itself: the catalogue. Messages that
// reach clients name the condition and, where it helps, the fix.
const (
	codeProtocolViolation        = "08P01" // malformed or unexpected message
	codeConnectionFailure        = "08006" // backend unreachable or lost
	codeProgramLimit             = "54000" // message larger than MaxMessageBytes
	codeInvalidPassword          = "28P01" // wrong password or unknown user
	codeInvalidAuthSpec          = "28000" // e.g. TLS required
	codeUnknownDatabase          = "3D000" // database not in the allow-list
	codeAdminShutdown            = "57P01" // proxy shutting down
	codeIdleInTransactionTimeout = "25P03" // idle inside a transaction past IdleTransactionTimeout
	codeQueryCanceled            = "57014" // statement canceled
	codeTooManyConnections       = "53300" // MaxClients reached
	codeFeatureNotSupported      = "0A000" // unsupported statement or cross-shard operation
	codeInvalidParameter         = "22023" // bad value for a dbproxy.* setting
	codeInternal                 = "XX000" // a bug: should never reach a client
)

// clientError is an error with a SQLSTATE, built by the proxy.
type clientError struct {
	code    string
	message string
	detail  string
	hint    string
	err     error
}

func newClientError(code, message string) *clientError {
	return &clientError{code: code, message: message}
}

func (e *clientError) Error() string {
	if e.err != nil {
		return e.message + ": " + e.err.Error()
	}
	return e.message
}
func (e *clientError) SQLState() string { return e.code }
func (e *clientError) Unwrap() error    { return e.err }

// errorResponse translates any error into the ErrorResponse sent to a
// client. It is the only place that does so. Order: a PostgreSQL error
// from a backend passes through unchanged; anything exposing SQLState()
// keeps its code; context cancellation is 57014; everything else is
// reported as a lost backend connection (08006) rather than as an internal
// error, since it almost always is one.
func errorResponse(err error, severity string) *pgproto3.ErrorResponse {
	if severity == "" {
		severity = "ERROR"
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return &pgproto3.ErrorResponse{
			Severity: pgErr.Severity, SeverityUnlocalized: pgErr.Severity, Code: pgErr.Code, Message: pgErr.Message,
			Detail: pgErr.Detail, Hint: pgErr.Hint, Position: pgErr.Position, InternalPosition: pgErr.InternalPosition,
			InternalQuery: pgErr.InternalQuery, Where: pgErr.Where, SchemaName: pgErr.SchemaName, TableName: pgErr.TableName,
			ColumnName: pgErr.ColumnName, DataTypeName: pgErr.DataTypeName, ConstraintName: pgErr.ConstraintName,
			File: pgErr.File, Line: pgErr.Line, Routine: pgErr.Routine,
		}
	}
	resp := &pgproto3.ErrorResponse{Severity: severity, SeverityUnlocalized: severity, Message: err.Error()}
	var ce *clientError
	var coded interface{ SQLState() string }
	switch {
	case errors.As(err, &ce):
		resp.Code, resp.Message, resp.Detail, resp.Hint = ce.code, ce.Error(), ce.detail, ce.hint
	case errors.As(err, &coded) && len(coded.SQLState()) == 5:
		resp.Code = coded.SQLState()
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		resp.Code, resp.Message = codeQueryCanceled, "canceling statement: "+err.Error()
	case errors.Is(err, ErrShuttingDown):
		resp.Code, resp.Message = codeAdminShutdown, "terminating connection due to administrator command (dbproxy is shutting down)"
	default:
		resp.Code = codeConnectionFailure
	}
	return resp
}

// receiveError classifies an error from reading a client message.
func (c *clientConn) receiveError(err error) error {
	var tooBig *pgproto3.ExceededMaxBodyLenErr
	switch {
	case errors.As(err, &tooBig):
		return &clientError{code: codeProgramLimit, message: fmt.Sprintf("message of %d bytes exceeds the limit of %d bytes", tooBig.ActualBodyLen, tooBig.MaxExpectedBodyLen), err: nil}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return errClientGone
	}
	var ne net.Error
	if errors.As(err, &ne) {
		if ne.Timeout() {
			return &clientError{code: codeProtocolViolation, message: "timeout reading from client", err: err}
		}
		return errClientGone
	}
	return &clientError{code: codeProtocolViolation, message: "invalid frontend message", err: err}
}
