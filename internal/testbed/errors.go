package testbed

import "errors"

// Sentinel errors; returned errors wrap them with %w and name the node.
var (
	// ErrNoEngine: the docker engine cannot be reached.
	ErrNoEngine = errors.New("testbed: docker engine unreachable")
	// ErrMissingTool: a host tool the testbed needs (mmdebstrap) is not
	// installed; the message names the apt package.
	ErrMissingTool = errors.New("testbed: required tool missing")
	// ErrBadOptions: invalid options or arguments.
	ErrBadOptions = errors.New("testbed: bad options")
	// ErrClosed: the network or cluster was closed.
	ErrClosed = errors.New("testbed: closed")
	// ErrKilled: the operation needs a running container, and it was killed.
	ErrKilled = errors.New("testbed: container killed")
	// ErrPaused: the operation needs a running container, and it is paused.
	ErrPaused = errors.New("testbed: container paused")
)
