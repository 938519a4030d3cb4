package cache

import "errors"

// ErrClosed is returned by GetOrFill, Watch and WaitUp after Close. Its
// SQLState is 57P01 (admin_shutdown): the process is shutting down.
var ErrClosed error = &stateError{msg: "cache: closed", state: "57P01"}

// ErrInvalidConfig is wrapped by Config.Validate, StreamConfig.Validate, New
// and Watch when a configuration value is out of range.
var ErrInvalidConfig = errors.New("cache: invalid configuration")

// ErrStreamDown is wrapped by WaitUp when its context ends before the change
// stream of the shard is established; the wrapped error names the shard and
// the last stream error.
var ErrStreamDown = errors.New("cache: change stream is down")

// ErrNotAdmitted is returned by GetOrFill for a miss that is not filled
// (Config.FillAfterMisses): the caller runs the read itself, uncached.
var ErrNotAdmitted = errors.New("cache: miss not admitted for a fill")

// ErrNotWatched is returned by WaitUp and Unwatch for a shard that has no
// change stream.
var ErrNotWatched = errors.New("cache: shard has no change stream")

type stateError struct {
	msg   string
	state string
}

func (e *stateError) Error() string { return e.msg }

// SQLState returns the PostgreSQL SQLSTATE a front end reports for the error.
func (e *stateError) SQLState() string { return e.state }
