package pgcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Sentinel errors. Errors returned by this package wrap one of these (or a
// context, OS or pgx error) with the cluster/node name.
var (
	// ErrInvalidOptions: Options fail validation.
	ErrInvalidOptions = errors.New("pgcluster: invalid options")
	// ErrStopped: the cluster was stopped; nodes cannot be started again.
	ErrStopped = errors.New("pgcluster: cluster stopped")
	// ErrNotRunning: the node's server is not running.
	ErrNotRunning = errors.New("pgcluster: node not running")
	// ErrLayout: a reused directory does not hold the cluster Options describe.
	ErrLayout = errors.New("pgcluster: directory does not match the requested cluster")
)

// DefaultName is the cluster name used when Options.Name is empty.
const DefaultName = "pg"

// metaVersion is the version of the JSON layout file.
const metaVersion = 1

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,39}$`)

// Options describe a cluster to start.
type Options struct {
	// Dir: "" makes a fresh temporary directory under os.TempDir(), removed by
	// Stop. Otherwise the cluster lives in Dir and survives Stop; a later Start
	// with the same Dir and Name reuses the data and ports.
	Dir string
	// Name is used in node names ("<name>-primary", "<name>-standby1", ...),
	// directories and slot names. Lower-case letters, digits, '_' and '-';
	// default DefaultName.
	Name string
	// Standbys is the number of hot standbys (streaming replication through
	// one physical slot each).
	Standbys int
	// Settings are extra postgresql.conf settings, applied to every node on
	// every Start. They override DefaultSettings; port, listen_addresses and
	// unix_socket_directories belong to pgcluster and are refused.
	Settings map[string]string
	// Logf receives progress messages; nil discards them.
	Logf func(format string, args ...any)
	// TLS, when set, makes every node serve TLS with its certificate.
	TLS *TLS
}

// TLS is the certificate of Options.TLS.
type TLS struct {
	// CertPEM and KeyPEM are the server certificate and its private key.
	CertPEM, KeyPEM []byte
	// Only makes pg_hba.conf refuse connections without TLS, except the
	// superuser postgres's and replication connections (pgcluster's own).
	Only bool
}

func (o Options) withDefaults() Options {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return o
}

// Validate reports whether the options are usable.
func (o Options) Validate() error {
	o = o.withDefaults()
	if !nameRE.MatchString(o.Name) {
		return fmt.Errorf("%w: name %q must match %s", ErrInvalidOptions, o.Name, nameRE)
	}
	if o.Standbys < 0 || o.Standbys > 8 {
		return fmt.Errorf("%w: standbys %d out of range 0..8", ErrInvalidOptions, o.Standbys)
	}
	if o.TLS != nil && (len(o.TLS.CertPEM) == 0 || len(o.TLS.KeyPEM) == 0) {
		return fmt.Errorf("%w: TLS needs a certificate and a key", ErrInvalidOptions)
	}
	for k, v := range o.Settings {
		if !settingRE.MatchString(k) {
			return fmt.Errorf("%w: setting name %q", ErrInvalidOptions, k)
		}
		if ownedSettings[strings.ToLower(k)] {
			return fmt.Errorf("%w: setting %q is managed by pgcluster", ErrInvalidOptions, k)
		}
		if strings.ContainsAny(v, "\n\r\x00") {
			return fmt.Errorf("%w: setting %s: value contains a line break or NUL", ErrInvalidOptions, k)
		}
	}
	return nil
}

// ownedSettings are written by pgcluster for every node and may not be set
// through Options.Settings.
var ownedSettings = map[string]bool{"port": true, "listen_addresses": true, "unix_socket_directories": true}

var settingRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// DefaultSettings are the postgresql.conf settings every node gets (sized for
// a small, shared 2-core machine). Options.Settings override them.
func DefaultSettings() map[string]string {
	return map[string]string{
		"shared_buffers":               "128MB",
		"max_connections":              "200",
		"max_prepared_transactions":    "10",
		"wal_level":                    "logical",
		"max_wal_senders":              "10",
		"max_replication_slots":        "10",
		"hot_standby":                  "on",
		"hot_standby_feedback":         "on",
		"wal_receiver_status_interval": "1s",
		"wal_retrieve_retry_interval":  "1s",
		"password_encryption":          "scram-sha-256",
		"logging_collector":            "off",
		"log_min_messages":             "warning",
		"log_line_prefix":              "%m [%p] %q%u@%d ",
	}
}

// Cluster is a running primary plus hot standbys. Its methods are safe for
// concurrent use.
type Cluster struct {
	name  string
	root  string
	temp  bool
	bin   string
	user  osUser
	logf  func(string, ...any)
	conf  map[string]string
	tls   *TLS
	nodes []*Node // nodes[0] is the primary

	reused bool

	topoMu sync.Mutex // guards leader and Node.upstream
	leader *Node      // nil: nodes[0]

	stopMu  sync.Mutex
	stopped bool
	stopErr error
}

type meta struct {
	Version int        `json:"version"`
	Name    string     `json:"name"`
	Nodes   []metaNode `json:"nodes"`
	Created time.Time  `json:"created"`
}

type metaNode struct {
	Name    string `json:"name"`
	Port    int    `json:"port"`
	Standby bool   `json:"standby"`
	Slot    string `json:"slot,omitempty"`
}

// Start starts a cluster as opts describe, creating it (initdb on the
// primary, pg_basebackup for each standby) or reusing the one in opts.Dir. It
// returns when every node accepts connections; call WaitStreaming to wait for
// replication. On error nothing is left running.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	u, err := runtimeUser(ctx, opts.Logf)
	if err != nil {
		return nil, err
	}
	c := &Cluster{name: opts.Name, bin: bin, user: u, logf: opts.Logf, conf: DefaultSettings(), tls: opts.TLS}
	for k, v := range opts.Settings {
		c.conf[k] = v
	}
	c.sweepOrphans(ctx)
	if opts.Dir == "" {
		dir, err := os.MkdirTemp(os.TempDir(), "pgcluster-"+opts.Name+"-")
		if err != nil {
			return nil, fmt.Errorf("pgcluster: temp dir: %w", err)
		}
		c.root, c.temp = dir, true
		if err := writeOwner(dir); err != nil {
			c.cleanupFailed()
			return nil, err
		}
	} else {
		dir, err := filepath.Abs(opts.Dir)
		if err != nil {
			return nil, fmt.Errorf("pgcluster: dir %q: %w", opts.Dir, err)
		}
		c.root = dir
	}
	if err := c.user.prepareDir(c.root); err != nil {
		c.cleanupFailed()
		return nil, fmt.Errorf("pgcluster: prepare %s: %w", c.root, err)
	}
	if err := c.user.ensureTraversable(c.root, c.logf); err != nil {
		c.cleanupFailed()
		return nil, err
	}
	unlock, err := lockFile(ctx, filepath.Join(c.root, c.name+".pgcluster.lock"))
	if err != nil {
		c.cleanupFailed()
		return nil, fmt.Errorf("pgcluster: %s: lock %s: %w", c.name, c.root, err)
	}
	defer unlock()
	m, err := c.readMeta()
	switch {
	case err == nil:
		err = c.startExisting(ctx, m, opts.Standbys)
	case errIsNotExist(err):
		err = c.create(ctx, opts.Standbys)
	}
	if err != nil {
		c.cleanupFailed()
		return nil, err
	}
	return c, nil
}

// StartT starts a cluster for a test: t.Fatal on error, and t.Cleanup stops
// it (dumping the tail of each node's log when the test failed). Logf
// defaults to t.Logf.
func StartT(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("pgcluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.nodes {
				t.Logf("pgcluster: last lines of %s:\n%s", n.LogFile(), n.LogTail(40))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("pgcluster: stop: %v", err)
		}
	})
	return c
}

// Name is the cluster name.
func (c *Cluster) Name() string { return c.name }

// Dir is the directory holding the cluster (node directories and layout file).
func (c *Cluster) Dir() string { return c.root }

// Reused reports whether Start found and reused an existing cluster in Dir.
func (c *Cluster) Reused() bool { return c.reused }

// Primary returns the node created as primary (it stays the first node even
// after another node is promoted; see Leader).
func (c *Cluster) Primary() *Node { return c.nodes[0] }

// Leader returns the node that was promoted last (by Node.Promote), or the
// original primary when none was.
func (c *Cluster) Leader() *Node {
	c.topoMu.Lock()
	defer c.topoMu.Unlock()
	if c.leader != nil {
		return c.leader
	}
	return c.nodes[0]
}

// Standbys returns the nodes created as standbys, in order.
func (c *Cluster) Standbys() []*Node { return append([]*Node(nil), c.nodes[1:]...) }

// Nodes returns every node, primary first.
func (c *Cluster) Nodes() []*Node { return append([]*Node(nil), c.nodes...) }

func (c *Cluster) metaPath() string { return filepath.Join(c.root, c.name+".pgcluster.json") }

func (c *Cluster) readMeta() (meta, error) {
	var m meta
	b, err := os.ReadFile(c.metaPath())
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%w: %s: %v", ErrLayout, c.metaPath(), err)
	}
	if m.Version != metaVersion || m.Name != c.name || len(m.Nodes) == 0 {
		return m, fmt.Errorf("%w: %s: version %d name %q nodes %d", ErrLayout, c.metaPath(), m.Version, m.Name, len(m.Nodes))
	}
	return m, nil
}

func (c *Cluster) writeMeta() error {
	m := meta{Version: metaVersion, Name: c.name, Created: time.Now().UTC()}
	for _, n := range c.nodes {
		m.Nodes = append(m.Nodes, metaNode{Name: n.Name, Port: n.Port, Standby: n.standby, Slot: n.slot})
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := c.metaPath() + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, c.metaPath())
}

// maxSocketPath is the longest Unix socket path the kernel takes
// (sockaddr_un's sun_path holds 108 bytes with the terminating NUL).
const maxSocketPath = 107

// socketFits reports whether a server socket in dir fits in sun_path
// whatever its port (".s.PGSQL.65535").
func socketFits(dir string) bool {
	return len(filepath.Join(dir, ".s.PGSQL.65535")) <= maxSocketPath
}

func (c *Cluster) newNode(name string, port int, standby bool, slot string) *Node {
	nodeDir := filepath.Join(c.root, name)
	n := &Node{
		Name: name, Host: "127.0.0.1", Port: port, Dir: filepath.Join(nodeDir, "data"),
		c: c, nodeDir: nodeDir, standby: standby, slot: slot,
	}
	if socketFits(nodeDir) && (c.tls == nil || !c.tls.Only) {
		n.SocketDir = nodeDir
	}
	if standby && len(c.nodes) > 0 {
		n.upstream = c.nodes[0]
	}
	return n
}

func (c *Cluster) standbyName(i int) string { return fmt.Sprintf("%s-standby%d", c.name, i) }

// create builds a fresh cluster in c.root.
func (c *Cluster) create(ctx context.Context, standbys int) error {
	t0 := time.Now()
	port, err := pickPort()
	if err != nil {
		return err
	}
	p := c.newNode(c.name+"-primary", port, false, "")
	c.nodes = []*Node{p}
	if err := p.initdb(ctx); err != nil {
		return err
	}
	if err := p.startFresh(ctx); err != nil {
		return err
	}
	c.logf("pgcluster: %s: primary %s up on port %d (%v)", c.name, p.Name, p.Port, time.Since(t0).Round(time.Millisecond))
	if err := c.addStandbys(ctx, 1, standbys); err != nil {
		return err
	}
	if err := c.writeMeta(); err != nil {
		return fmt.Errorf("pgcluster: %s: write layout: %w", c.name, err)
	}
	c.logf("pgcluster: %s: created 1 primary + %d standbys in %s (%v)", c.name, standbys, c.root, time.Since(t0).Round(time.Millisecond))
	return nil
}

// addStandbys creates standbys first..last (1-based) from the running
// primary, concurrently.
func (c *Cluster) addStandbys(ctx context.Context, first, last int) error {
	if first > last {
		return nil
	}
	news := make([]*Node, 0, last-first+1)
	for i := first; i <= last; i++ {
		port, err := pickPort()
		if err != nil {
			return err
		}
		name := c.standbyName(i)
		news = append(news, c.newNode(name, port, true, slotName(name)))
	}
	c.nodes = append(c.nodes, news...)
	errs := make([]error, len(news))
	var wg sync.WaitGroup
	for i, n := range news {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			if err := n.basebackup(ctx); err != nil {
				errs[i] = err
				return
			}
			c.logf("pgcluster: %s: base backup of %s done (%v)", c.name, n.Name, time.Since(t0).Round(time.Millisecond))
			if err := n.startFresh(ctx); err != nil {
				errs[i] = err
				return
			}
			c.logf("pgcluster: %s: standby %s up on port %d (%v)", c.name, n.Name, n.Port, time.Since(t0).Round(time.Millisecond))
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// startExisting starts a cluster recorded in the layout file.
func (c *Cluster) startExisting(ctx context.Context, m meta, standbys int) error {
	t0 := time.Now()
	have := len(m.Nodes) - 1
	if standbys < have {
		return fmt.Errorf("%w: %s holds cluster %q with %d standbys, %d requested (remove the directory to shrink it)",
			ErrLayout, c.root, c.name, have, standbys)
	}
	for i, mn := range m.Nodes {
		want := c.name + "-primary"
		if i > 0 {
			want = c.standbyName(i)
		}
		if mn.Name != want || mn.Port <= 0 || mn.Port > 65535 {
			return fmt.Errorf("%w: %s: node %d is %q port %d, want %q", ErrLayout, c.metaPath(), i, mn.Name, mn.Port, want)
		}
		n := c.newNode(mn.Name, mn.Port, mn.Standby, mn.Slot)
		if _, err := os.Stat(filepath.Join(n.Dir, "PG_VERSION")); err != nil {
			return fmt.Errorf("%w: node %s: %v", ErrLayout, n.Name, err)
		}
		c.nodes = append(c.nodes, n)
	}
	c.reused = true
	// Start the (original) primary first, then the standbys concurrently.
	if err := c.nodes[0].startConfigured(ctx); err != nil {
		return err
	}
	errs := make([]error, len(c.nodes))
	var wg sync.WaitGroup
	for i, n := range c.nodes[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.startConfigured(ctx)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if standbys > have {
		if err := c.addStandbys(ctx, have+1, standbys); err != nil {
			return err
		}
		if err := c.writeMeta(); err != nil {
			return fmt.Errorf("pgcluster: %s: write layout: %w", c.name, err)
		}
	}
	c.logf("pgcluster: %s: restarted %d nodes from %s (%v)", c.name, len(c.nodes), c.root, time.Since(t0).Round(time.Millisecond))
	return nil
}

// cleanupFailed tears down whatever a failed Start left running.
func (c *Cluster) cleanupFailed() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = c.Stop(ctx)
}

// Stop stops every node and removes the directory if it was a temporary
// one. Nodes of a kept directory get a fast (clean) shutdown, escalating to
// immediate shutdown and then SIGKILL if a node does not stop in time; nodes
// of a temporary cluster get an immediate shutdown straight away. It is idempotent: later calls return the first
// call's result.
func (c *Cluster) Stop(ctx context.Context) error {
	c.stopMu.Lock()
	defer c.stopMu.Unlock()
	if c.stopped {
		return c.stopErr
	}
	c.stopped = true
	errs := make([]error, len(c.nodes))
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A temporary cluster is deleted next: no need for a clean
			// shutdown checkpoint.
			errs[i] = n.stop(ctx, !c.temp)
		}()
	}
	wg.Wait()
	err := errors.Join(errs...)
	if c.temp {
		if rerr := os.RemoveAll(c.root); rerr != nil {
			err = errors.Join(err, fmt.Errorf("pgcluster: remove %s: %w", c.root, rerr))
		}
	}
	c.stopErr = err
	return err
}

func (c *Cluster) isStopped() bool {
	c.stopMu.Lock()
	defer c.stopMu.Unlock()
	return c.stopped
}

// WaitStreaming blocks until every running standby streams from its
// upstream (the primary, or the node given to Follow): pg_stat_replication on
// the upstream shows the standby's application_name in state 'streaming', and
// the standby's pg_stat_wal_receiver status is 'streaming'. Stopped or killed
// standbys, and promoted nodes, are not waited for. It polls until ctx is done and
// then returns ctx's error together with the last thing that was missing.
func (c *Cluster) WaitStreaming(ctx context.Context) error {
	for {
		err := c.checkStreaming(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgcluster: %s: waiting for streaming: %w (last: %v)", c.name, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) checkStreaming(ctx context.Context) error {
	// Group running standbys by the node they replicate from.
	byUpstream := map[*Node][]*Node{}
	var order []*Node
	for _, n := range c.nodes {
		u := n.Upstream()
		if u == nil || !n.Running() {
			continue
		}
		if _, ok := byUpstream[u]; !ok {
			order = append(order, u)
		}
		byUpstream[u] = append(byUpstream[u], n)
	}
	for _, u := range order {
		states := map[string]string{}
		err := u.withConn(ctx, "postgres", func(conn *pgx.Conn) error {
			rows, err := conn.Query(ctx, `SELECT application_name, state FROM pg_stat_replication`)
			if err != nil {
				return err
			}
			for rows.Next() {
				var app, state string
				if err := rows.Scan(&app, &state); err != nil {
					return err
				}
				states[app] = state
			}
			return rows.Err()
		})
		if err != nil {
			return err
		}
		for _, n := range byUpstream[u] {
			if s := states[n.Name]; s != "streaming" {
				return fmt.Errorf("%s's pg_stat_replication shows %s as %q", u.Name, n.Name, s)
			}
			var status *string
			err := n.withConn(ctx, "postgres", func(conn *pgx.Conn) error {
				return conn.QueryRow(ctx, `SELECT status FROM pg_stat_wal_receiver`).Scan(&status)
			})
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("%s has no WAL receiver", n.Name)
			}
			if err != nil {
				return err
			}
			if status == nil || *status != "streaming" {
				return fmt.Errorf("%s WAL receiver status %v", n.Name, strOrNull(status))
			}
		}
	}
	return nil
}

// WaitCaughtUp blocks until every running standby whose replay is not paused
// has replayed the leader's current WAL position (read once, at the call).
func (c *Cluster) WaitCaughtUp(ctx context.Context) error {
	pl, err := c.Leader().LSNs(ctx)
	if err != nil {
		return err
	}
	target := pl.CurrentLSN
	for _, n := range c.nodes {
		if n.Upstream() == nil || !n.Running() {
			continue
		}
		for {
			l, err := n.LSNs(ctx)
			if err == nil && (l.ReplayLSN >= target || l.ReplayPaused || !l.InRecovery) {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("pgcluster: %s: waiting for replay of %s: %w (last: %+v, %v)", n.Name, FormatLSN(target), ctx.Err(), l, err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// CreateDatabase creates (if missing) a login role user with password and a
// database db owned by it, on the leader (the primary unless another node was
// promoted), then waits for running, unpaused
// standbys to replay it. An empty user creates only the database (owned by
// postgres). For an existing role the password is reset.
func (c *Cluster) CreateDatabase(ctx context.Context, db, user, password string) error {
	if db == "" {
		return fmt.Errorf("%w: empty database name", ErrInvalidOptions)
	}
	err := c.Leader().withConn(ctx, "postgres", func(conn *pgx.Conn) error {
		owner := "postgres"
		if user != "" {
			owner = user
			var exists bool
			if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, user).Scan(&exists); err != nil {
				return err
			}
			verb := "CREATE"
			if exists {
				verb = "ALTER"
			}
			var stmt string
			if err := conn.QueryRow(ctx, `SELECT format('`+verb+` ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)`, user, password).Scan(&stmt); err != nil {
				return err
			}
			if _, err := conn.Exec(ctx, stmt); err != nil {
				return err
			}
		}
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, db).Scan(&exists); err != nil {
			return err
		}
		if exists {
			return nil
		}
		_, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()+" OWNER "+pgx.Identifier{owner}.Sanitize())
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: raced with another creator
			return nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("pgcluster: %s: create database %q: %w", c.name, db, err)
	}
	return c.WaitCaughtUp(ctx)
}

func strOrNull(s *string) string {
	if s == nil {
		return "NULL"
	}
	return *s
}

func slotName(node string) string { return strings.ReplaceAll(node, "-", "_") }

var (
	portMu    sync.Mutex
	portsUsed = map[int]bool{}
)

// lockFile takes an exclusive flock on path (created if missing), polling
// until ctx ends; it serializes Starts of one cluster directory across
// goroutines and processes.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				_ = f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			_ = f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("another Start holds it: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// pickPort chooses a port for a new node (a variable so tests can force a
// bind clash).
var pickPort = freePort

// freePort returns a loopback port that was free a moment ago and that this
// process has not handed out before.
func freePort() (int, error) {
	portMu.Lock()
	defer portMu.Unlock()
	var lastErr error
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			lastErr = err
			continue
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if !portsUsed[port] {
			portsUsed[port] = true
			return port, nil
		}
	}
	return 0, fmt.Errorf("pgcluster: no free loopback port: %v", lastErr)
}

// portFree reports whether 127.0.0.1:port can be bound now.
func portFree(port int) bool {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}
