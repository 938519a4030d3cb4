package proxy

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dbproxy/dbproxy/cache"
	"github.com/dbproxy/dbproxy/internal/sockio"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/dbproxy/dbproxy/shard"
)

// Deps are the ready-made collaborators a Server routes through. The
// caller owns them: Server.Close does not close them.
type Deps struct {
	// Router classifies statements and decides where they go.
	Router *router.Router
	// Shards holds one replica set per shard of the router's topology.
	Shards map[shard.ID]*replica.Set
	// Cache, when non-nil, serves cacheable reads and is told about the
	// proxy's committed writes (see cache.go). Its change streams are the
	// caller's to start.
	Cache *cache.Cache
	// HomeDatabase is the database the replica sets' own connections use.
	// The Cache's entries of a shard's home-database reads are under the
	// shard's name, those of another database under CacheShard(shard,
	// database, HomeDatabase): the caller watches a change stream of that
	// database under that name, or its reads are never stored (a stream
	// decodes one database). LISTENs of another database are served by
	// listening connections of that database (notifications are per
	// database). "" means every client's database is the home database.
	HomeDatabase string
	// CacheDatabases are the databases whose clients read through Cache
	// (nil: every database). Clients of another database bypass it.
	CacheDatabases []string
	// Logger overrides Config.Logger when non-nil.
	Logger *slog.Logger
}

// Server is a PostgreSQL wire-protocol proxy. Create it with New, run it
// with Serve, stop it with Close. All methods are safe for concurrent use.
type Server struct {
	cfg    Config
	log    *slog.Logger
	router *router.Router
	shards map[shard.ID]*replica.Set
	cache  atomic.Pointer[cache.Cache] // nil: no result cache; set once (New or SetCache)
	homeDB string                      // Deps.HomeDatabase
	// cacheDBs holds Deps.CacheDatabases (nil: every database).
	cacheDBs map[string]bool

	live atomic.Pointer[liveConfig] // the reloadable part

	reg *registry

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	closed    bool
	closing   chan struct{} // closed when Close starts: stop accepting, drain
	closeDone chan struct{} // closed when the first Close has returned
	kill      chan struct{} // closed when the drain deadline passes: end sessions now
	conns     sync.WaitGroup
	helpers   sync.WaitGroup // shutdown watchers (one per connection during Close)
	serving   sync.WaitGroup

	baseCtx    context.Context // parent of every connection ctx
	baseCancel context.CancelFunc

	tlsLeaf *x509.Certificate // the one configured certificate, for SCRAM channel binding

	traceMu sync.Mutex

	paramsMu     sync.Mutex
	serverParams map[string]string // ParameterStatus values learned from backends

	// Deep idle (idle.go): one sweeper goroutine, started by the first
	// Serve and stopped by Close, makes client connections idle for
	// deepIdleAfter (0: never) give their protocol Backend to boxes.
	deepIdleAfter time.Duration
	idleEpoch     atomic.Int64 // sweeper ticks, from 1
	sweepStop     chan struct{}
	sweeper       sync.WaitGroup
	sweeping      bool          // under mu
	sweeps        atomic.Uint64 // connections the sweeper interrupted

	// Dead-client checks (clientcheck.go): one goroutine, started by the
	// first Serve, ended with baseCtx.
	checker  sync.WaitGroup
	checking bool // under mu

	schemaEpoch          atomic.Uint64 // counts schema changes sent through the proxy (aliases prepared before are closed)
	commitLSNPiggybacked atomic.Uint64 // commit positions read in the flush of the request that committed
	commitLSNQueries     atomic.Uint64 // commit positions read with a query of their own after the transaction
	idleTxTimeouts       atomic.Uint64 // sessions ended by IdleTransactionTimeout
	readRetries          atomic.Uint64 // reads sent again to another node after theirs failed before answering (retry.go)
	clientsGoneMidQuery  atomic.Uint64 // connections ended because the client went away while its query ran (clientcheck.go)
	boxes                sync.Pool     // *protoBox given back by deep-idle connections
	notify               *notifier     // LISTEN/NOTIFY fan-out of the home database (notify.go)
	dbNotifyMu           sync.Mutex
	dbNotify             map[string]*notifier // other databases' fan-outs, by name
}

type liveConfig struct {
	creds        map[string]*credential
	databases    []string
	maxStaleness time.Duration
	maxClients   int
	idleTxAfter  time.Duration // IdleTransactionTimeout
	cacheOff     bool          // Reloadable.CacheOff
}

// New validates cfg and returns a Server that routes through deps. It
// starts no goroutines; Serve does.
func New(cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Router == nil {
		return nil, fmt.Errorf("proxy: Deps.Router is nil: %w", ErrInvalidConfig)
	}
	if len(deps.Shards) == 0 {
		return nil, fmt.Errorf("proxy: Deps.Shards is empty: %w", ErrInvalidConfig)
	}
	log := cfg.Logger
	if deps.Logger != nil {
		log = deps.Logger
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{
		cfg:       cfg,
		log:       log,
		router:    deps.Router,
		shards:    deps.Shards,
		homeDB:    deps.HomeDatabase,
		reg:       newRegistry(),
		listeners: map[net.Listener]struct{}{},
		closing:   make(chan struct{}),
		closeDone: make(chan struct{}),
		kill:      make(chan struct{}),
		sweepStop: make(chan struct{}),
		serverParams: map[string]string{
			"server_version": cfg.ServerVersion, "server_encoding": "UTF8", "client_encoding": "UTF8",
			"DateStyle": "ISO, MDY", "IntervalStyle": "postgres", "TimeZone": "UTC", "integer_datetimes": "on",
			"standard_conforming_strings": "on", "is_superuser": "off",
		},
	}
	s.cache.Store(deps.Cache)
	if cfg.TLS != nil && len(cfg.TLS.Certificates) == 1 && cfg.TLS.GetCertificate == nil && len(cfg.TLS.Certificates[0].Certificate) > 0 {
		if leaf, err := x509.ParseCertificate(cfg.TLS.Certificates[0].Certificate[0]); err == nil {
			s.tlsLeaf = leaf
		}
	}
	s.baseCtx, s.baseCancel = context.WithCancel(context.Background())
	s.deepIdleAfter = defaultDeepIdleAfter
	s.idleEpoch.Store(1)
	if err := s.Reload(cfg.Reloadable()); err != nil {
		return nil, err
	}
	s.notify, s.dbNotify = newNotifier(s), map[string]*notifier{}
	if deps.CacheDatabases != nil {
		s.cacheDBs = map[string]bool{}
		for _, db := range deps.CacheDatabases {
			s.cacheDBs[db] = true
		}
	}
	return s, nil
}

// SetCache gives a Server created without a result cache (Deps.Cache nil)
// one, as turning cache.enabled on by a reload does: reads are served
// from it (unless Reloadable.CacheOff) and writes invalidate it from now
// on. It fails if the Server already has a cache.
func (s *Server) SetCache(c *cache.Cache) error {
	if c == nil || !s.cache.CompareAndSwap(nil, c) {
		return errors.New("proxy: SetCache: the server already has a result cache")
	}
	return nil
}

// Reload swaps the reloadable settings (users, databases, default max
// staleness, client limit, idle-in-transaction timeout, serving from the
// cache). Existing connections keep their identity; new connections and
// new transactions see the new values.
func (s *Server) Reload(r Reloadable) error {
	check := s.cfg
	check.Users, check.Databases, check.MaxStaleness, check.MaxClients, check.IdleTransactionTimeout = r.Users, r.Databases, r.MaxStaleness, r.MaxClients, r.IdleTransactionTimeout
	if err := check.Validate(); err != nil {
		return err
	}
	creds, err := buildCredentials(r.Users)
	if err != nil {
		return err
	}
	s.live.Store(&liveConfig{creds: creds, databases: append([]string(nil), r.Databases...), maxStaleness: r.MaxStaleness, maxClients: r.MaxClients,
		idleTxAfter: r.IdleTransactionTimeout, cacheOff: r.CacheOff})
	return nil
}

// Serve accepts client connections on ln until Close is called or ctx is
// done, and returns ErrServerClosed (or ctx's error). Each connection is
// served by goroutines the Server owns; Close waits for them. Serve may be
// called on several listeners at once. It closes ln when it returns.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.serving.Add(1)
	s.startSweeper()
	s.startClientCheck()
	s.mu.Unlock()
	defer s.serving.Done()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		_ = ln.Close()
	}()
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			select {
			case <-s.closing:
				return ErrServerClosed
			default:
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscallEMFILE) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		s.startConn(sockio.Wrap(nc))
	}
}

func (s *Server) startConn(nc net.Conn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = nc.Close()
		return
	}
	s.conns.Add(1)
	s.mu.Unlock()
	s.reg.accepted.Add(1)
	c := newClientConn(s, nc)
	go func() {
		defer s.conns.Done()
		c.serve()
	}()
}

// Close stops accepting, lets open transactions finish until ctx's
// deadline or Config.ShutdownTimeout (whichever is first), then ends the
// remaining sessions with FATAL 57P01 and waits for every connection
// goroutine. Idle sessions are ended at once. It is idempotent: a later
// call waits for the first to finish (or for its own ctx, returning its
// error). The replica sets and router in Deps are not closed.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		select {
		case <-s.closeDone:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.closed = true
	defer close(s.closeDone)
	close(s.closing)
	close(s.sweepStop)
	for ln := range s.listeners {
		_ = ln.Close()
	}
	s.mu.Unlock()
	s.serving.Wait()
	s.sweeper.Wait()

	for _, c := range s.reg.all() {
		c.notifyShutdown()
	}
	done := make(chan struct{})
	go func() { s.conns.Wait(); close(done) }()
	var timer <-chan time.Time
	if s.cfg.ShutdownTimeout > 0 {
		t := time.NewTimer(s.cfg.ShutdownTimeout)
		defer t.Stop()
		timer = t.C
	}
	var err error
	select {
	case <-done:
	case <-timer:
	case <-ctx.Done():
		err = ctx.Err()
	}
	close(s.kill)
	s.baseCancel()
	<-done
	s.checker.Wait()
	s.helpers.Wait()
	s.notify.wait()
	for _, n := range s.otherNotifiers() {
		n.wait()
	}
	return err
}

// otherNotifiers returns the fan-outs of databases other than the home one.
func (s *Server) otherNotifiers() []*notifier {
	s.dbNotifyMu.Lock()
	defer s.dbNotifyMu.Unlock()
	return slices.Collect(maps.Values(s.dbNotify))
}

// Stats returns a snapshot of the connections and their states.
func (s *Server) Stats() Stats {
	st := Stats{Accepted: s.reg.accepted.Load(), Rejected: s.reg.rejected.Load(), ByState: map[string]int{}}
	for i := connState(0); i < numStates; i++ {
		if n := s.reg.counts[i].Load(); n > 0 {
			st.ByState[i.String()] = int(n)
			st.Clients += int(n)
		}
	}
	st.ListenChannels, st.ListenerShards = s.notify.stats()
	for _, n := range s.otherNotifiers() {
		ch, ls := n.stats()
		st.ListenChannels += ch
		st.ListenerShards += ls
	}
	st.CommitLSNPiggybacked = s.commitLSNPiggybacked.Load()
	st.CommitLSNQueries = s.commitLSNQueries.Load()
	st.IdleTransactionTimeouts = s.idleTxTimeouts.Load()
	st.ReadRetries = s.readRetries.Load()
	st.ClientsGoneMidQuery = s.clientsGoneMidQuery.Load()
	for _, c := range s.reg.all() {
		cs := c.stats()
		if cs.DeepIdle {
			st.DeepIdle++
		}
		st.Conns = append(st.Conns, cs)
	}
	return st
}

func (s *Server) learnParams(p map[string]string) {
	s.paramsMu.Lock()
	defer s.paramsMu.Unlock()
	for k, v := range p {
		s.serverParams[k] = v
	}
}

func (s *Server) params() map[string]string {
	s.paramsMu.Lock()
	defer s.paramsMu.Unlock()
	out := make(map[string]string, len(s.serverParams))
	for k, v := range s.serverParams {
		out[k] = v
	}
	return out
}

func randomUint32() uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint32(b[:])
}

// reportedParams are the ParameterStatus names a client expects at startup.
var reportedParams = []string{"server_version", "server_encoding", "client_encoding", "DateStyle", "IntervalStyle",
	"TimeZone", "integer_datetimes", "standard_conforming_strings", "is_superuser", "session_authorization",
	"in_hot_standby", "default_transaction_read_only", "application_name", "scram_iterations"}

// learnBackendParams records a new backend's ParameterStatus values so the
// next clients are greeted with the real server's (server_version, ...).
func (s *Server) learnBackendParams(conn interface{ ParameterStatus(string) string }) {
	p := map[string]string{}
	for _, k := range []string{"server_version", "server_encoding", "integer_datetimes", "standard_conforming_strings"} {
		if v := conn.ParameterStatus(k); v != "" {
			p[k] = v
		}
	}
	s.learnParams(p)
}

// schemaChanged records a schema change sent through the proxy: the
// statements it prepared on any backend before are closed on their next
// use.
func (s *Server) schemaChanged() { s.schemaEpoch.Add(1) }

// CacheShard is the Cache shard name under which a client of database
// reading shard keeps its entries: the shard's own name for the home
// database, "shard/database" for another. A change stream from the
// shard's primary decoding database is to be watched under that name.
// Shard names must not contain '/' (config refuses them).
func CacheShard(shard, database, home string) string {
	if home == "" || database == home {
		return shard
	}
	return shard + "/" + database
}

// shardOfCacheShard is the shard a CacheShard name belongs to.
func shardOfCacheShard(name string) string {
	if i := strings.IndexByte(name, '/'); i >= 0 {
		return name[:i]
	}
	return name
}
