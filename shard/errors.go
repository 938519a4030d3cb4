package shard

import "fmt"

// Error is the type of this package's sentinel errors. Each carries the
// PostgreSQL SQLSTATE a client should see when the error reaches it; the
// proxy edge finds it with errors.As(err, &interface{ SQLState() string }).
// Compare with errors.Is against the sentinels, never on the message.
type Error struct {
	msg  string
	code string
}

func (e *Error) Error() string { return e.msg }

// SQLState returns the PostgreSQL error code for e ("" when the error is
// internal and has no client-facing code).
func (e *Error) SQLState() string { return e.code }

var (
	// ErrUnknownShardKey means the shard of a statement on a sharded table
	// cannot be determined because the table's shard key (all of its
	// columns) is missing or incomplete. Callers wrap it with the table and
	// its key columns. SQLSTATE 0A000 (feature_not_supported), as
	// architecture.md prescribes for a statement refused for a missing key.
	ErrUnknownShardKey = &Error{msg: "shard: shard key missing or incomplete", code: "0A000"}

	// ErrBadKey means a shard-key value cannot be parsed or decoded for its
	// type, or a Key does not match the key types of its table. Errors
	// returned by ParseKey and DecodeBinaryKey wrap it and carry their own
	// SQLSTATE: 22P02 (invalid_text_representation), 22003
	// (numeric_value_out_of_range), 22021 (character_not_in_repertoire) or
	// 08P01 (protocol_violation) for a binary value of the wrong length.
	ErrBadKey = &Error{msg: "shard: bad shard key value", code: "22P02"}

	// ErrUnknownShard means a shard name or ID does not exist in the
	// topology. It is internal (a configuration or programming error).
	ErrUnknownShard = &Error{msg: "shard: unknown shard", code: "XX000"}

	// ErrInvalidTopology means a TopologySpec (or ring parameters) failed
	// validation. Returned by NewTopology, NewRing and NewNamedRing.
	ErrInvalidTopology = &Error{msg: "shard: invalid topology", code: "F0000"}
)

// keyError is a detailed ErrBadKey with its own SQLSTATE.
type keyError struct {
	typ   KeyType
	input string
	why   string
	code  string
}

func (e *keyError) Error() string {
	in := e.input
	if len(in) > 64 {
		in = in[:64] + "..."
	}
	return fmt.Sprintf("shard: bad %s shard key %q: %s", e.typ, in, e.why)
}

func (e *keyError) SQLState() string { return e.code }
func (e *keyError) Unwrap() error    { return ErrBadKey }

func badKey(t KeyType, input, why, code string) error {
	return &keyError{typ: t, input: input, why: why, code: code}
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidTopology}, args...)...)
}
