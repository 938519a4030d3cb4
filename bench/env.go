package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/shard"
	"github.com/jackc/pgx/v5"
)

// The database, user and password every target is reached with.
const (
	benchDB       = "bench"
	benchUser     = "bench"
	benchPassword = "bench"

	// rawKeysPerClient keys of raw_kv belong to each read-after-write client.
	rawKeysPerClient = 100
	// shardKeySpace is the id range of the sharded-writes workload.
	shardKeySpace = 100000
	shardedTable  = "kv_sharded"
)

// endpoint is a wire-protocol address.
type endpoint struct {
	host string
	port int
}

// connString is a libpq keyword/value string for user bench on ep, with
// pgx's simple protocol (works through every pooler).
func (ep endpoint) connString() string {
	return ep.wireConnString() + " default_query_exec_mode=simple_protocol"
}

// wireConnString is connString without pgx's keywords (for pgconn).
func (ep endpoint) wireConnString() string {
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=disable",
		ep.host, ep.port, benchUser, benchPassword, benchDB)
}

// env is everything the harness started: clusters, proxies, poolers.
type env struct {
	cfg  Config
	work string // scratch directory (configs, logs), removed by close
	say  func(format string, args ...any)

	main, second *pgcluster.Cluster
	topo         *shard.Topology
	dbproxyCfg   string // path of the generated dbproxy config
	dbproxyPort  int    // its listen port

	endpoints map[string]endpoint // wire-protocol targets
	procs     map[string]*process // proxies and poolers we started, by target
	starters  map[string]func(context.Context) error
	restarts  map[string]int // restarts after a failed sanity check, by target
	driverErr error          // why the driver target is not available (nil = available)

	versions map[string]string
	machine  map[string]string
	pgbench  string // path of the pgbench binary

	mu sync.Mutex
}

// setup starts the clusters, loads the data and starts every selected
// target. On error everything started so far is stopped.
func setup(ctx context.Context, cfg Config, say func(string, ...any)) (_ *env, err error) {
	work, err := os.MkdirTemp("", "dbproxy-bench-")
	if err != nil {
		return nil, err
	}
	// Servers running as the unprivileged user must reach files in here.
	if err := os.Chmod(work, 0o755); err != nil {
		return nil, err
	}
	e := &env{cfg: cfg, work: work, say: say, endpoints: map[string]endpoint{}, procs: map[string]*process{}, restarts: map[string]int{},
		versions: map[string]string{}, machine: machineInfo()}
	defer func() {
		if err != nil {
			e.close()
		}
	}()

	bin, err := pgcluster.BinDir()
	if err != nil {
		return nil, err
	}
	e.pgbench = filepath.Join(bin, "pgbench")
	if _, err := os.Stat(e.pgbench); err != nil {
		return nil, fmt.Errorf("pgbench: %w", err)
	}
	if err := e.ensureTools(ctx); err != nil {
		return nil, err
	}
	if err := e.startClusters(ctx); err != nil {
		return nil, err
	}
	if err := e.loadData(ctx); err != nil {
		return nil, err
	}
	direct := e.main.Primary()
	e.endpoints[TargetDirect] = endpoint{direct.Host, direct.Port}
	if cfg.UnixClients {
		if direct.SocketDir == "" {
			return nil, fmt.Errorf("unix clients: %s has no Unix socket (its directory's path is too long for one: set a shorter TMPDIR)", direct.Name)
		}
		e.endpoints[TargetDirect] = endpoint{direct.SocketDir, direct.Port}
	}
	if err := e.writeDbproxyConfig(); err != nil {
		return nil, err
	}
	if err := e.versionsOf(ctx); err != nil {
		return nil, err
	}
	if cfg.idleConns() {
		lim, err := raiseNoFileLimit(uint64(cfg.IdleConnections + fdMargin))
		if err != nil {
			return nil, err
		}
		say("open-files limit %d (idle-conns holds %d connections)", lim.Cur, cfg.IdleConnections)
	}
	e.starters = map[string]func(context.Context) error{
		TargetDbproxy:     e.startDbproxy,
		TargetPgBouncer:   e.startPgBouncer,
		TargetPgpool:      func(ctx context.Context) error { return e.startPgpool(ctx, TargetPgpool, false) },
		TargetPgpoolCache: func(ctx context.Context) error { return e.startPgpool(ctx, TargetPgpoolCache, true) },
	}
	for _, t := range []string{TargetDbproxy, TargetPgBouncer, TargetPgpool, TargetPgpoolCache} {
		if !cfg.wants(t) {
			continue
		}
		say("starting %s", t)
		if err := e.starters[t](ctx); err != nil {
			return nil, fmt.Errorf("starting %s: %w", t, err)
		}
	}
	if cfg.wants(TargetDriver) {
		e.driverErr = driverAvailable()
		if e.driverErr != nil {
			say("driver target not available: %v", e.driverErr)
		}
	}
	return e, nil
}

// close stops everything setup started, in reverse order, with its own
// deadlines (the caller's context is usually cancelled by now).
func (e *env) close() {
	var wg sync.WaitGroup
	for name, p := range e.procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.stop(15 * time.Second)
			e.say("stopped %s", name)
		}()
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range []*pgcluster.Cluster{e.main, e.second} {
		if c != nil {
			if err := c.Stop(ctx); err != nil {
				e.say("stopping cluster %s: %v", c.Name(), err)
			}
		}
	}
	if e.main != nil || e.second != nil {
		e.say("stopped the clusters")
	}
	os.RemoveAll(e.work)
}

// ensureTools installs pgbouncer and pgpool2 with apt-get when a selected
// target needs them and they are missing.
func (e *env) ensureTools(ctx context.Context) error {
	need := map[string]string{} // binary -> Debian package
	if e.cfg.wants(TargetPgBouncer) {
		need["pgbouncer"] = "pgbouncer"
	}
	if e.cfg.wants(TargetPgpool) || e.cfg.wants(TargetPgpoolCache) {
		need["pgpool"] = "pgpool2"
	}
	var missing []string
	for binName, pkg := range need {
		if _, err := exec.LookPath(binName); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if !e.cfg.Install || os.Geteuid() != 0 {
		return fmt.Errorf("missing %v (install the Debian packages, or run as root to let the harness apt-get them)", missing)
	}
	e.say("installing %v with apt-get", missing)
	args := append([]string{"apt-get", "install", "-y", "--no-install-recommends"}, missing...)
	env := []string{"DEBIAN_FRONTEND=noninteractive"}
	out, err := runCmd(ctx, env, args...)
	if err != nil {
		// The package lists may be missing or stale; refresh once.
		if o, uerr := runCmd(ctx, env, "apt-get", "update"); uerr != nil {
			return fmt.Errorf("apt-get update: %w\n%s", uerr, lastLines(o, 10))
		}
		if out, err = runCmd(ctx, env, args...); err != nil {
			return fmt.Errorf("apt-get install %v: %w\n%s", missing, err, lastLines(out, 15))
		}
	}
	for binName := range need {
		if _, err := exec.LookPath(binName); err != nil {
			return fmt.Errorf("%s still missing after apt-get install: %w", binName, err)
		}
	}
	return nil
}

// clusterSettings are the PostgreSQL settings of benchmarks.md.
func clusterSettings() map[string]string {
	return map[string]string{
		"shared_buffers":     "256MB",
		"max_connections":    "400", // 2 Pgpool-II instances' cached backends + pools + 64 direct clients
		"fsync":              "on",
		"synchronous_commit": "on",
		"max_wal_size":       "2GB",
	}
}

func (e *env) startClusters(ctx context.Context) error {
	e.say("starting clusters: bmain (1 primary + 2 standbys) and bshard (1 primary)")
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, spec := range []struct {
		name     string
		standbys int
		dst      **pgcluster.Cluster
	}{{"bmain", 2, &e.main}, {"bshard", 0, &e.second}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := pgcluster.Start(ctx, pgcluster.Options{Name: spec.name, Standbys: spec.standbys, Settings: clusterSettings()})
			if err != nil {
				errs[i] = err
				return
			}
			e.mu.Lock()
			*spec.dst = c
			e.mu.Unlock()
			wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
			defer cancel()
			if err := c.WaitStreaming(wctx); err != nil {
				errs[i] = fmt.Errorf("%s: %w", spec.name, err)
				return
			}
			errs[i] = c.CreateDatabase(wctx, benchDB, benchUser, benchPassword)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// loadData runs pgbench -i on the main cluster and creates the tables of
// the Go workloads.
func (e *env) loadData(ctx context.Context) error {
	p := e.main.Primary()
	e.say("loading pgbench data, scale %d", e.cfg.Scale)
	out, err := runCmd(ctx, []string{"PGPASSWORD=" + benchPassword}, e.pgbench, "-i", "-q", "-s", strconv.Itoa(e.cfg.Scale),
		"-h", p.Host, "-p", strconv.Itoa(p.Port), "-U", benchUser, benchDB)
	if err != nil {
		return fmt.Errorf("pgbench -i: %w\n%s", err, lastLines(out, 10))
	}
	maxClients := 0
	for _, w := range e.cfg.Workloads {
		maxClients = max(maxClients, w.Clients)
	}
	stmts := map[*pgcluster.Node][]string{
		p: {
			`CREATE TABLE IF NOT EXISTS raw_kv (k int PRIMARY KEY, v bigint NOT NULL)`,
			fmt.Sprintf(`INSERT INTO raw_kv SELECT g, 0 FROM generate_series(1, %d) g ON CONFLICT DO NOTHING`, (maxClients+1)*rawKeysPerClient),
			`CREATE TABLE IF NOT EXISTS ` + shardedTable + ` (id bigint PRIMARY KEY, v bigint NOT NULL)`,
			`VACUUM ANALYZE raw_kv`,
		},
		e.second.Primary(): {
			`CREATE TABLE IF NOT EXISTS ` + shardedTable + ` (id bigint PRIMARY KEY, v bigint NOT NULL)`,
		},
	}
	for n, list := range stmts {
		conn, err := pgx.Connect(ctx, endpoint{n.Host, n.Port}.connString())
		if err != nil {
			return err
		}
		for _, s := range list {
			if _, err := conn.Exec(ctx, s); err != nil {
				conn.Close(ctx)
				return fmt.Errorf("%s: %s: %w", n.Name, s, err)
			}
		}
		conn.Close(ctx)
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	return e.main.WaitCaughtUp(wctx)
}

// postmasters returns the pids of every PostgreSQL postmaster of the
// clusters (their process trees are the database's CPU).
func (e *env) postmasters() []int {
	var pids []int
	for _, c := range []*pgcluster.Cluster{e.main, e.second} {
		for _, n := range c.Nodes() {
			b, err := os.ReadFile(filepath.Join(n.Dir, "postmaster.pid"))
			if err != nil {
				continue
			}
			if pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func (e *env) dbCPUTicks() int64 {
	var t int64
	for _, pid := range e.postmasters() {
		t += cpuTicks(pid)
	}
	return t
}

// shardTopology returns the topology dbproxy uses (built from the same
// generated config), for the direct target of the sharded writes.
func (e *env) shardTopology() *shard.Topology { return e.topo }

// shardPrimary returns the primary of shard id of the topology.
func (e *env) shardPrimary(id shard.ID) endpoint {
	c := e.main
	if e.topo.Shards()[id].Name == "s1" {
		c = e.second
	}
	return endpoint{c.Primary().Host, c.Primary().Port}
}

// dbproxyConfig is the generated config: shard s0 = bmain (primary and two
// standbys, holding every unsharded table), s1 = bshard; kv_sharded is
// sharded by id.
func (e *env) dbproxyConfig(port int) (*config.Config, error) {
	cfg := config.Default()
	cfg.Server.Listen = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	cfg.Server.StatusListen = ""
	cfg.Server.Databases = []string{benchDB}
	cfg.Server.ShutdownTimeout = config.Duration(5 * time.Second)
	cfg.Users = []config.User{{Name: benchUser, Password: benchPassword, Auth: config.AuthSCRAMSHA256}}
	for i, c := range []*pgcluster.Cluster{e.main, e.second} {
		sh := config.Shard{Name: "s" + strconv.Itoa(i), Weight: 1}
		for j, n := range c.Nodes() {
			role := config.RoleStandby
			if j == 0 {
				role = config.RolePrimary
			}
			sh.Nodes = append(sh.Nodes, config.Node{Name: n.Name, Host: n.LocalHost(), Port: n.Port, Role: role, Weight: 1})
		}
		cfg.Shards = append(cfg.Shards, sh)
	}
	cfg.Tables = []config.Table{{Name: shardedTable, ShardKey: []string{"id"}, KeyTypes: []config.KeyType{config.KeyInt}}}
	if e.cfg.UnixClients {
		cfg.Server.UnixSocketDir = e.dbproxySocketDir()
		if err := os.MkdirAll(cfg.Server.UnixSocketDir, 0o755); err != nil {
			return nil, err
		}
	}
	cfg.Routing.DefaultShard = "s0"
	cfg.Pool.Size = 20
	cfg.Backend.SSLMode = "disable" // the clusters serve no TLS
	cfg.ApplyDefaults()
	// Room for every idle-conns connection and the sanity check's.
	cfg.Server.MaxClientConns = max(cfg.Server.MaxClientConns, e.cfg.IdleConnections+100)
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("generated dbproxy config: %w", err)
	}
	return cfg, nil
}

// writeDbproxyConfig generates the dbproxy config (also used by the driver
// target and, for its topology, by the direct sharded writes).
func (e *env) writeDbproxyConfig() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	cfg, err := e.dbproxyConfig(port)
	if err != nil {
		return err
	}
	if e.topo, err = cfg.Topology(); err != nil {
		return err
	}
	e.dbproxyPort = port
	e.dbproxyCfg = filepath.Join(e.work, "dbproxy.toml")
	f, err := os.Create(e.dbproxyCfg)
	if err != nil {
		return err
	}
	if err := cfg.Encode(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// startDbproxy runs `dbproxy serve` as a separate
// process.
func (e *env) startDbproxy(ctx context.Context) error {
	bin := e.cfg.DbproxyBin
	if bin == "" {
		bin = filepath.Join(e.work, "dbproxy")
		e.say("building dbproxy (go build)")
		out, err := runCmd(ctx, nil, "go", "build", "-o", bin, "github.com/dbproxy/dbproxy/cmd/dbproxy")
		if err != nil {
			return fmt.Errorf("go build: %w\n%s", err, lastLines(out, 20))
		}
		e.cfg.DbproxyBin = bin // a restart reuses it
	}
	out, err := runCmd(ctx, nil, bin, "version")
	if err != nil {
		return fmt.Errorf("%s version: %w\n%s", bin, err, out)
	}
	e.versions["dbproxy"] = strings.TrimSpace(out)
	p, err := startProcess("dbproxy", []string{bin, "serve", "--config", e.dbproxyCfg}, nil, nil, filepath.Join(e.work, "dbproxy.log"))
	if err != nil {
		return err
	}
	e.procs[TargetDbproxy] = p
	ep := e.clientEndpoint(e.dbproxySocketDir(), e.dbproxyPort)
	if err := waitReady(ctx, p, ep, time.Minute); err != nil {
		return err
	}
	e.endpoints[TargetDbproxy] = ep
	return nil
}

// restart stops target t's process and starts it again (same config and
// port where the program allows; the endpoint is updated).
func (e *env) restart(ctx context.Context, t string) error {
	if p := e.procs[t]; p != nil {
		p.stop(15 * time.Second)
		delete(e.procs, t)
	}
	delete(e.endpoints, t)
	e.restarts[t]++
	if t == TargetDbproxy {
		// The old listener may linger a moment; take a new port.
		if err := e.writeDbproxyConfig(); err != nil {
			return err
		}
	}
	return e.starters[t](ctx)
}

// sanityCheck asks target t, over fresh connections, for values only a
// correct answer contains, and returns an error describing the first wrong
// answer. A proxy whose pooled backends lost protocol sync (results of an
// earlier statement delivered for a later one) fails it.
func (e *env) sanityCheck(ctx context.Context, t string) error {
	ep, ok := e.endpoints[t]
	if !ok {
		return fmt.Errorf("%s is not running", t)
	}
	for i := range 4 {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := func() error {
			conn, err := pgx.Connect(cctx, ep.connString())
			if err != nil {
				return fmt.Errorf("connect: %w", err)
			}
			defer conn.Close(cctx)
			nonce := time.Now().UnixNano() + int64(i)
			rows, err := conn.Query(cctx, fmt.Sprintf("SELECT %d::bigint AS nonce, k FROM raw_kv WHERE k = %d", nonce, rawKeysPerClient))
			if err != nil {
				return err
			}
			defer rows.Close()
			var got, k int64
			n := 0
			for rows.Next() {
				if err := rows.Scan(&got, &k); err != nil {
					return fmt.Errorf("wrong result shape for SELECT <nonce> AS nonce, k: %w", err)
				}
				n++
			}
			if err := rows.Err(); err != nil {
				return err
			}
			if fd := rows.FieldDescriptions(); n != 1 || got != nonce || k != rawKeysPerClient || len(fd) != 2 || fd[0].Name != "nonce" {
				return fmt.Errorf("SELECT %d AS nonce, k ... returned %d row(s), nonce %d, k %d, %d column(s): wrong results", nonce, n, got, k, len(fd))
			}
			return nil
		}()
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

// clientEndpoint is where clients reach a target listening on
// 127.0.0.1:port and, with Config.UnixClients, on a socket in sockDir:
// the socket then.
func (e *env) clientEndpoint(sockDir string, port int) endpoint {
	if e.cfg.UnixClients {
		return endpoint{sockDir, port}
	}
	return endpoint{"127.0.0.1", port}
}

// dbproxySocketDir is the directory of dbproxy's client socket
// (Config.UnixClients).
func (e *env) dbproxySocketDir() string { return filepath.Join(e.work, "dbproxy-run") }

// waitReady polls until user bench can log in through ep and run SELECT 1,
// the process exits, or timeout.
func waitReady(ctx context.Context, p *process, ep endpoint, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if done, err := p.exited(); done {
			return fmt.Errorf("%s exited (%v) before accepting connections; log:\n%s", p.name, err, p.logTail(20))
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.Connect(cctx, ep.connString())
		if err == nil {
			_, err = conn.Exec(cctx, "SELECT 1")
			conn.Close(cctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		last = err
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %v; log:\n%s", p.name, timeout, last, p.logTail(20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// versionsOf records the versions of the software measured.
func (e *env) versionsOf(ctx context.Context) error {
	conn, err := e.main.Primary().Connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&v); err != nil {
		return err
	}
	e.versions["PostgreSQL"] = v
	e.versions["Go"] = runtime.Version()
	// The revision of the tree the harness runs in (the dbproxy binary is
	// built from it unless Config.DbproxyBin says otherwise).
	if out, err := runCmd(ctx, nil, "git", "describe", "--always", "--dirty", "--abbrev=12"); err == nil {
		e.versions["dbproxy revision"] = strings.TrimSpace(out)
	}
	for name, argv := range map[string][]string{
		"pgbench":   {e.pgbench, "--version"},
		"PgBouncer": {"pgbouncer", "--version"},
		"Pgpool-II": {"pgpool", "--version"},
	} {
		if out, err := runCmd(ctx, nil, argv...); err == nil {
			e.versions[name] = firstLine(out)
		}
	}
	return nil
}

// machineInfo describes the machine: CPUs, memory, kernel, CPU model.
func machineInfo() map[string]string {
	m := map[string]string{"nproc": strconv.Itoa(runtime.NumCPU())}
	if kb := meminfoKB("MemTotal:"); kb > 0 {
		m["memory"] = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				m["cpu"] = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				m["os"] = strings.Trim(v, `"`)
			}
		}
	}
	return m
}

func meminfoKB(key string) int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	return 0
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
