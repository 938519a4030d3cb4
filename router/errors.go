package router

import (
	"fmt"

	"github.com/dbproxy/dbproxy/shard"
)

// Error is the type of this package's sentinel errors. Each carries the
// PostgreSQL SQLSTATE a client should see; the front end finds it with
// errors.As(err, &interface{ SQLState() string }). Errors returned by this
// package wrap a sentinel with %w and add the table, shard or value
// involved: compare with errors.Is, never on the message.
type Error struct {
	msg  string
	code string
	wrap error
}

func (e *Error) Error() string { return e.msg }

// SQLState returns the PostgreSQL error code for e.
func (e *Error) SQLState() string { return e.code }

// Unwrap returns the lower-layer sentinel e stands for, if any.
func (e *Error) Unwrap() error { return e.wrap }

var (
	// ErrCrossShardTransaction means a statement inside an explicit
	// transaction needs a shard other than the one the transaction is
	// pinned to (or needs several shards). Cross-shard transactions need
	// two-phase commit, which dbproxy does not do. SQLSTATE 0A000.
	ErrCrossShardTransaction = &Error{msg: "router: cross-shard transaction not supported", code: "0A000"}

	// ErrShardKeyRequired means a statement on a sharded table cannot be
	// routed to one shard because the table's shard key is not fixed by
	// the statement, and running it on every shard would not be correct
	// (a write, or a read whose results cannot be merged). The wrapping
	// error names the table and its key columns. It wraps
	// shard.ErrUnknownShardKey. SQLSTATE 0A000.
	ErrShardKeyRequired = &Error{msg: "router: shard key required", code: "0A000", wrap: shard.ErrUnknownShardKey}

	// ErrUnsupported means the statement is valid SQL that dbproxy cannot
	// run correctly on a sharded topology (DISTINCT across shards,
	// non-mergeable aggregates, joins of sharded tables on different keys,
	// updating a shard-key column, a write spanning shards, ...).
	// SQLSTATE 0A000.
	ErrUnsupported = &Error{msg: "router: statement not supported across shards", code: "0A000"}

	// ErrBadHint means a /* dbproxy: ... */ comment is malformed or names
	// a shard that does not exist. SQLSTATE 22023 (invalid_parameter_value).
	ErrBadHint = &Error{msg: "router: invalid dbproxy hint", code: "22023"}

	// ErrBadCausalToken means a causal token (ParseCausalToken, SET
	// dbproxy.causal_token, a causal_token hint) is malformed.
	// SQLSTATE 22023 (invalid_parameter_value).
	ErrBadCausalToken = &Error{msg: "router: invalid causal token", code: "22023"}

	// ErrBadParameter means SET of a dbproxy.* parameter has an invalid
	// name or value, or a Bind parameter needed for routing is missing.
	// SQLSTATE 22023 (invalid_parameter_value).
	ErrBadParameter = &Error{msg: "router: invalid parameter", code: "22023"}

	// ErrInvalidSQL means the SQL text can never be valid (it contains a
	// NUL byte). SQLSTATE 22021 (character_not_in_repertoire).
	ErrInvalidSQL = &Error{msg: "router: invalid SQL text", code: "22021"}
)

// errorf wraps sentinel with a formatted detail: "sentinel: detail".
func errorf(sentinel *Error, format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...)
}
