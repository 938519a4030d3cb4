package proxy

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// connState is where a client connection is in its life. Each state has
// one state function in conn.go/startup.go that returns the next one.
type connState uint8

const (
	stateStartup  connState = iota // accepted; reading SSLRequest/StartupMessage/CancelRequest
	stateAuth                      // StartupMessage accepted; password exchange
	stateIdle                      // ReadyForQuery sent; no backend leased
	stateAttached                  // a backend is leased and messages flow to it
	stateCopy                      // COPY in or out in progress on the leased backend
	stateClosing                   // Terminate, EOF, fatal error or shutdown
	numStates
)

func (s connState) String() string {
	switch s {
	case stateStartup:
		return "startup"
	case stateAuth:
		return "auth"
	case stateIdle:
		return "idle"
	case stateAttached:
		return "attached"
	case stateCopy:
		return "copy"
	case stateClosing:
		return "closing"
	}
	return fmt.Sprintf("connState(%d)", uint8(s))
}

// registry records every live client connection and its state, so Stats
// is a read of counters plus one pass over the map, and CancelRequest
// finds its target by (pid, secret) in O(1).
type registry struct {
	counts   [numStates]atomic.Int64
	accepted atomic.Uint64
	rejected atomic.Uint64

	mu    sync.Mutex
	conns map[uint32]*clientConn // by issued pid
}

func newRegistry() *registry {
	return &registry{conns: make(map[uint32]*clientConn)}
}

func (r *registry) add(c *clientConn) {
	r.mu.Lock()
	for {
		// pids are random so they cannot be guessed from the order of
		// connections; collisions are retried.
		if _, taken := r.conns[c.pid]; !taken && c.pid != 0 {
			break
		}
		c.pid = randomUint32()
	}
	r.conns[c.pid] = c
	r.mu.Unlock()
	r.counts[stateStartup].Add(1)
}

func (r *registry) remove(c *clientConn) {
	r.mu.Lock()
	delete(r.conns, c.pid)
	r.mu.Unlock()
	r.counts[c.state.Load()].Add(-1)
}

func (r *registry) transition(c *clientConn, to connState) {
	from := connState(c.state.Swap(uint32(to)))
	if from != to {
		r.counts[from].Add(-1)
		r.counts[to].Add(1)
	}
}

// active counts live connections.
func (r *registry) active() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

func (r *registry) lookup(pid uint32) *clientConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns[pid]
}

func (r *registry) all() []*clientConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Collect(maps.Values(r.conns))
}

// Stats is a point-in-time snapshot of a Server.
type Stats struct {
	Accepted uint64 // connections accepted since start
	Rejected uint64 // refused before ReadyForQuery (auth, limits, protocol)
	// IdleTransactionTimeouts counts sessions ended by
	// Config.IdleTransactionTimeout (25P03).
	IdleTransactionTimeouts uint64
	// ReadRetries counts reads outside a transaction that ran on another
	// node because theirs failed (connecting to it, or the connection
	// broke or was ended by the server) before any reply reached the
	// client.
	ReadRetries uint64
	// ClientsGoneMidQuery counts connections ended because the client
	// disconnected while its query ran (Config.ClientCheckInterval); the
	// query was cancelled on its backend.
	ClientsGoneMidQuery uint64

	Clients  int            // live client connections
	ByState  map[string]int // live connections per state name
	DeepIdle int            // idle connections that gave their protocol buffers back (idle for a second or more)
	Conns    []ClientStats  // one entry per live connection

	// Commit positions read for causal tokens after write transactions:
	// in the same flush as the committing request, or with a query of
	// their own (a round trip to the primary) after it.
	CommitLSNPiggybacked uint64
	CommitLSNQueries     uint64

	// LISTEN fan-out (notify.go): channels some client listens on (or has
	// a LISTEN pending on in its transaction), and listening backends
	// connected (one per shard per database with listeners); a channel
	// listened on in two databases counts twice.
	ListenChannels int
	ListenerShards int
}

// ClientStats describes one client connection.
type ClientStats struct {
	PID       uint32 // the pid the proxy issued in BackendKeyData
	Remote    string
	User      string
	Database  string
	State     string
	Since     time.Time // connection start
	Backend   string    // node name while attached, else ""
	Queries   uint64    // Query and Sync messages forwarded
	PoolMode  string
	TLS       bool
	TxStatus  string // 'I', 'T' or 'E' as last seen
	Prepared  int    // named prepared statements tracked for re-prepare
	Tokens    string // causal token text, if any
	Staleness time.Duration
	DeepIdle  bool // idle without protocol buffers (they are taken back at the next byte)
}
