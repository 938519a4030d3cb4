package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dbproxy/dbproxy/cache"
	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/proxy"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/dbproxy/dbproxy/shard"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve --config FILE", `Runs the proxy: PostgreSQL wire protocol on [server].listen, routing each
statement by the config's shards, tables and routing policy. SIGTERM/SIGINT
stop accepting, let transactions finish up to [server].shutdown_timeout, then
end sessions (57P01) and exit 0. SIGHUP reloads the reloadable part of the
config (users, staleness bound); other changes are refused and logged.`, stderr)
	cfgPath := fs.String("config", "", "config file (required)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *cfgPath == "" {
		fmt.Fprintln(stderr, "--config is required")
		fs.Usage()
		return errUsage
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	srv, err := startProxy(ctx, cfg, filepath.Dir(*cfgPath), stderr)
	if err != nil {
		return err
	}
	defer srv.stop(stderr)
	fmt.Fprintf(stdout, "dbproxy serve: listening on %s", srv.addr)
	if srv.socket != "" {
		fmt.Fprintf(stdout, " and %s", srv.socket)
	}
	if srv.statusAddr != "" {
		fmt.Fprintf(stdout, ", status and metrics on http://%s", srv.statusAddr)
	}
	fmt.Fprintln(stdout)
	return srv.serveUntilDone(ctx, *cfgPath, "serve", stdout, stderr)
}

// serveUntilDone waits until ctx ends (nil) or a listener fails (its
// error). Meanwhile each SIGHUP re-reads the config file at path and applies
// its reloadable part, printing the outcome (who names the command).
func (rp *runningProxy) serveUntilDone(ctx context.Context, path, who string, stdout, stderr io.Writer) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-rp.done:
			return err
		case <-hup:
			if err := rp.reload(ctx, path); err != nil {
				fmt.Fprintf(stderr, "dbproxy %s: reload refused: %v\n", who, err)
			} else {
				fmt.Fprintf(stdout, "dbproxy %s: config reloaded\n", who)
			}
		}
	}
}

// runningProxy is a proxy started by startProxy, with its replica sets and
// status server.
type runningProxy struct {
	addr       string
	socket     string // the Unix socket's path; "" without one
	statusAddr string
	done       chan error // the Serve results, one per listener

	cfg   *config.Config
	srv   *proxy.Server
	sets  map[shard.ID]*replica.Set
	topo  *shard.Topology
	cache atomic.Pointer[cache.Cache] // nil while [cache] was never on
	// backendDB is the database of the proxy's own connections (the
	// cache's change streams among them).
	backendDB string
	log       *slog.Logger
	status    *http.Server
	cancel    context.CancelFunc
}

// startProxy builds the runtime the config describes (topology, a replica
// set per shard, router, proxy), listens and serves until ctx ends or stop.
func startProxy(ctx context.Context, cfg *config.Config, baseDir string, stderr io.Writer) (*runningProxy, error) {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if cfg.Server.Threads > 0 {
		runtime.GOMAXPROCS(cfg.Server.Threads) // process-wide: serve and up run one proxy
	}
	topo, err := cfg.Topology()
	if err != nil {
		return nil, err
	}
	if len(cfg.Users) == 0 || len(cfg.Server.Databases) == 0 {
		return nil, errors.New("config needs at least one user and one database")
	}
	// Clients' backend connections log in as the client's user to its
	// database; the proxy's own (probes, LISTEN, the function catalog, the
	// cache's change streams) as the first user to the first database.
	backendUser, backendDB := cfg.Users[0].Name, cfg.Server.Databases[0]
	rp := &runningProxy{cfg: cfg, topo: topo, sets: map[shard.ID]*replica.Set{}, backendDB: backendDB, log: log}
	fail := func(err error) (*runningProxy, error) {
		rp.closeSets()
		return nil, err
	}
	// The config's files are relative to its directory; the running
	// config (compared on reload) keeps them as written.
	fcfg := cfg.WithFilesIn(baseDir)
	for _, si := range topo.Shards() {
		rc, err := fcfg.ReplicaConfig(si.Name, backendUser, backendDB)
		if err != nil {
			return fail(err)
		}
		rc.Logger = log.With("shard", si.Name)
		set, err := replica.NewSet(ctx, rc)
		if err != nil {
			return fail(fmt.Errorf("shard %s: %w", si.Name, err))
		}
		rp.sets[si.ID] = set
	}
	if cfg.Cache.Enabled {
		c, err := startCache(ctx, fcfg, topo, backendDB, log)
		if err != nil {
			return fail(err)
		}
		rp.cache.Store(c)
	}
	rt, err := newRouter(cfg, topo, proxy.FunctionCatalog(rp.sets[topo.DefaultShard()]))
	if err != nil {
		return fail(err)
	}
	pcfg, err := proxyConfig(fcfg)
	if err != nil {
		return fail(err)
	}
	pcfg.Logger = log
	rp.srv, err = proxy.New(pcfg, proxy.Deps{Router: rt, Shards: rp.sets, Cache: rp.cache.Load(), HomeDatabase: backendDB, CacheDatabases: cfg.Cache.Databases, Logger: log})
	if err != nil {
		return fail(err)
	}
	ln, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		return fail(fmt.Errorf("server.listen: %w", err))
	}
	rp.addr = ln.Addr().String()
	lns := []net.Listener{ln}
	closeAll := func() {
		for _, l := range lns {
			l.Close()
		}
	}
	if dir := cfg.Server.UnixSocketDir; dir != "" {
		uln, err := listenUnix(ctx, config.SocketPath(dir, ln.Addr().(*net.TCPAddr).Port))
		if err != nil {
			closeAll()
			return fail(fmt.Errorf("server.unix_socket_dir: %w", err))
		}
		rp.socket = uln.Addr().String()
		lns = append(lns, uln)
	}
	if cfg.Server.StatusListen != "" {
		sln, err := net.Listen("tcp", cfg.Server.StatusListen)
		if err != nil {
			closeAll()
			return fail(fmt.Errorf("server.status_listen: %w", err))
		}
		rp.statusAddr = sln.Addr().String()
		rp.status = &http.Server{Handler: rp.statusHandler(), ReadHeaderTimeout: 5 * time.Second}
		go rp.status.Serve(sln) // stopped by stop's Shutdown
	}
	sctx, cancel := context.WithCancel(ctx)
	rp.cancel = cancel
	rp.done = make(chan error, len(lns)) // every Serve can report without a reader
	for _, l := range lns {
		go func() { rp.done <- rp.srv.Serve(sctx, l) }()
	}
	return rp, nil
}

// listenUnix listens on the Unix socket path. A socket file nothing
// accepts on (left by a proxy that was killed) is replaced; one another
// process serves, or a file that is not a socket, is an error. The socket
// is open to every local user (mode 0777, PostgreSQL's default): clients
// authenticate on it as over TCP. Closing the listener removes the file.
func listenUnix(ctx context.Context, path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		d := net.Dialer{Timeout: time.Second}
		if c, err := d.DialContext(ctx, "unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by another server", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o777); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// stop shuts the proxy down (draining up to the shutdown timeout), then the
// status server and the replica sets.
func (rp *runningProxy) stop(stderr io.Writer) {
	timeout := time.Duration(rp.cfg.Server.ShutdownTimeout) + 10*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := rp.srv.Close(ctx); err != nil {
		fmt.Fprintf(stderr, "dbproxy: closing proxy: %v\n", err)
	}
	rp.cancel()
	if rp.status != nil {
		rp.status.Shutdown(ctx)
	}
	rp.closeSets()
}

func (rp *runningProxy) closeSets() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c := rp.cache.Load(); c != nil {
		c.Close(ctx)
	}
	for _, s := range rp.sets {
		s.Close(ctx)
	}
}

// reload re-reads the config file and applies its reloadable part (see
// config.Reloadable): the proxy's users, limits and timeouts, every
// shard's pools, balancing and breakers, and the cache's switch and TTL
// (a cache turned on for the first time starts its change streams, bound
// by ctx, the proxy's lifetime). Everything is checked, and a new cache
// started, before anything changes.
func (rp *runningProxy) reload(ctx context.Context, path string) error {
	next, err := config.Load(path)
	if err != nil {
		return err
	}
	if err := config.CheckReload(rp.cfg, next); err != nil {
		return err
	}
	fnext := next.WithFilesIn(filepath.Dir(path))
	pcfg, err := proxyConfig(fnext)
	if err != nil {
		return err
	}
	tunings := make(map[shard.ID]replica.Tuning, len(rp.sets))
	for _, si := range rp.topo.Shards() {
		t, err := next.ReplicaTuning(si.Name)
		if err != nil {
			return err
		}
		tunings[si.ID] = t
	}
	var started *cache.Cache
	if next.Cache.Enabled && rp.cache.Load() == nil {
		if started, err = startCache(ctx, fnext, rp.topo, rp.backendDB, rp.log); err != nil {
			return fmt.Errorf("cache.enabled: %w", err)
		}
	}
	r := pcfg.Reloadable()
	r.CacheOff = !next.Cache.Enabled
	if err := rp.srv.Reload(r); err != nil {
		if started != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			started.Close(cctx)
			cancel()
		}
		return err
	}
	if started != nil {
		rp.cache.Store(started)
		if err := rp.srv.SetCache(started); err != nil {
			return err
		}
	}
	var errs []error
	for id, t := range tunings {
		if err := rp.sets[id].Reconfigure(t); err != nil {
			errs = append(errs, err)
		}
	}
	if c := rp.cache.Load(); c != nil {
		errs = append(errs, c.SetTTL(time.Duration(next.Cache.TTL)))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	rp.cfg = next
	return nil
}

// proxyConfig converts the file's [server] and [[users]] into proxy.Config
// (file paths as they are in cfg: see config.WithFilesIn).
func proxyConfig(cfg *config.Config) (proxy.Config, error) {
	pc := proxy.DefaultConfig()
	if cfg.Server.PoolMode == config.PoolSession {
		pc.PoolMode = proxy.PoolSession
	}
	pc.Databases = append([]string(nil), cfg.Server.Databases...)
	pc.MaxMessageBytes = cfg.Server.MaxMessageBytes
	pc.MaxClients = cfg.Server.MaxClientConns
	pc.ShutdownTimeout = time.Duration(cfg.Server.ShutdownTimeout)
	pc.IdleTransactionTimeout = time.Duration(cfg.Server.IdleTransactionTimeout)
	pc.ClientCheckInterval = time.Duration(cfg.Server.ClientCheckInterval)
	pc.MaxBackendStatements = cfg.Server.MaxPreparedStatements
	pc.MaxStaleness = time.Duration(cfg.Routing.MaxStaleness)
	pc.AutoPrepare = cfg.Server.AutoPrepare
	for _, u := range cfg.Users {
		if u.Auth == config.AuthMD5 {
			pc.Auth = proxy.AuthMD5
		}
		pc.Users = append(pc.Users, proxy.User{Name: u.Name, Password: u.Password, SCRAMVerifier: u.SCRAMVerifier, BackendPassword: u.BackendPasswordOrPlain()})
	}
	if cfg.TLSEnabled() {
		cert, err := tls.LoadX509KeyPair(cfg.Server.TLSCert, cfg.Server.TLSKey)
		if err != nil {
			return pc, fmt.Errorf("server.tls_cert/tls_key: %w", err)
		}
		pc.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		pc.RequireTLS = cfg.Server.TLSRequired
	}
	return pc, pc.Validate()
}

// report is the status of the running proxy, as /status serves it.
func (rp *runningProxy) report() *statusReport {
	rep := &statusReport{Source: "proxy", Time: time.Now()}
	for _, si := range rp.topo.Shards() {
		if set := rp.sets[si.ID]; set != nil {
			rep.Shards = append(rep.Shards, shardStatus{Name: si.Name, Nodes: nodeStatuses(set.Stats())})
		}
	}
	st := rp.srv.Stats()
	rep.Clients, rep.DeepIdle, rep.ListenChannels, rep.ReadRetries = st.ByState, st.DeepIdle, st.ListenChannels, st.ReadRetries
	rep.ClientsGoneMidQuery = st.ClientsGoneMidQuery
	if c := rp.cache.Load(); c != nil {
		rep.Cache = c.Stats()
	}
	return rep
}

func (rp *runningProxy) statusHandler() http.Handler {
	reg := prometheus.NewRegistry()
	// The Go runtime's and the process's own metrics (go_*: heap, GC
	// pauses, goroutines; process_*: CPU seconds, RSS, open descriptors)
	// beside the proxy's.
	reg.MustRegister(&collector{rp: rp}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(rp.report())
	})
	// Profiles of the running proxy (CPU, heap, goroutines); the status
	// listener is loopback-only unless the operator says otherwise.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// startCache creates the result cache and starts one change stream per shard
// primary and database of cache.databases (the streams of databases other
// than home, the proxy's home database, are named by proxy.CacheShard);
// reads of a shard in a database are served from the cache only while that
// stream is up.
func startCache(ctx context.Context, cfg *config.Config, topo *shard.Topology, home string, log *slog.Logger) (*cache.Cache, error) {
	cc := cfg.CacheConfig()
	cc.Logger = log.With("component", "cache")
	c, err := cache.New(cc)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	for _, si := range topo.Shards() {
		for _, db := range cfg.Cache.Databases {
			sc, err := cfg.CacheStreamConfigFor(si.Name, db)
			if err == nil {
				sc.Shard = proxy.CacheShard(si.Name, db, home)
				err = c.Watch(ctx, sc)
			}
			if err != nil {
				c.Close(context.WithoutCancel(ctx))
				return nil, fmt.Errorf("cache stream of shard %s, database %s: %w", si.Name, db, err)
			}
		}
	}
	return c, nil
}

// newRouter builds the router over the static topology of the config,
// with functions as its catalog of user-defined functions (nil: none).
func newRouter(cfg *config.Config, topo *shard.Topology, functions router.FunctionCatalog) (*router.Router, error) {
	rc := router.DefaultConfig()
	rc.Topology = router.NewStaticTopology(topo)
	rc.Functions = functions
	rc.MaxStaleness = time.Duration(cfg.Routing.MaxStaleness)
	return router.New(rc)
}
