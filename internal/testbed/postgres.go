package testbed

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// Paths inside a PostgreSQL node's container.
const (
	pgData = "/var/lib/postgresql/data" // a volume: survives Kill/Start
	pgLog  = "/var/lib/postgresql/postgres.log"
	pgPort = 5432
)

// Options configures Start. The shape follows internal/pgcluster.
type Options struct {
	// Network to run on; nil creates one that Stop removes.
	Network *Network
	// Name prefixes node names: "<name>-primary", "<name>-standby1", ...
	// Default "pg".
	Name string
	// Standbys is the number of hot standbys, each streaming from the
	// primary through its own physical replication slot.
	Standbys int
	// Settings are extra postgresql.conf settings, applied to every node.
	Settings map[string]string
	// Logf receives progress messages; nil discards them.
	Logf func(format string, args ...any)
}

// defaultSettings suit small containers on a loaded two-core machine.
// fsync is off: a killed container's writes are still in the host's page
// cache, so Kill loses nothing that fsync would have saved.
var defaultSettings = map[string]string{
	"listen_addresses":             "*",
	"port":                         "5432",
	"unix_socket_directories":      "/tmp",
	"shared_buffers":               "32MB",
	"max_connections":              "50",
	"wal_level":                    "replica",
	"max_wal_senders":              "10",
	"max_replication_slots":        "10",
	"hot_standby":                  "on",
	"hot_standby_feedback":         "on",
	"wal_keep_size":                "64MB",
	"fsync":                        "off",
	"synchronous_commit":           "on",
	"wal_receiver_status_interval": "1s",
	"wal_receiver_timeout":         "10s",
	"wal_sender_timeout":           "10s",
	"logging_collector":            "off",
	"log_min_messages":             "warning",
	"password_encryption":          "scram-sha-256",
}

// Cluster is a primary and its streaming standbys, each in its own container.
type Cluster struct {
	net    *Network
	ownNet bool
	name   string
	logf   func(string, ...any)

	mu      sync.Mutex
	primary *Node
	nodes   []*Node
	stopped bool
}

// Node is one PostgreSQL server in its own container. Host is its address on
// the network (reachable from the host), Port 5432, Dir the data directory
// inside the container. The embedded Container gives the faults (Pause,
// Disconnect, SetLatency, SetLoss, ...); Kill and Start here also manage the
// server.
type Node struct {
	*Container
	Name string
	Host string
	Port int
	Dir  string

	cluster *Cluster
	slot    string // slot name on its upstream
	mu      sync.Mutex
	up      bool  // postmaster believed running
	follows *Node // upstream for a standby; nil on a primary
}

// Start starts a cluster: containers, initdb on the primary, pg_basebackup
// -R on each standby from the primary's address, all servers running as the
// postgres user. It returns once every standby streams. On error everything
// started is removed.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Name == "" {
		opts.Name = "pg"
	}
	if opts.Standbys < 0 || opts.Standbys > 8 {
		return nil, fmt.Errorf("%w: Standbys %d (want 0..8)", ErrBadOptions, opts.Standbys)
	}
	if !validName(opts.Name) {
		return nil, fmt.Errorf("%w: name %q (want [a-z0-9-]+)", ErrBadOptions, opts.Name)
	}
	settings := maps.Clone(defaultSettings)
	for k, v := range opts.Settings {
		if !validSetting(k) {
			return nil, fmt.Errorf("%w: setting name %q", ErrBadOptions, k)
		}
		settings[k] = v
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	c := &Cluster{net: opts.Network, name: opts.Name, logf: logf}
	if c.net == nil {
		n, err := NewNetwork(ctx, NetworkOptions{Name: opts.Name, Logf: logf})
		if err != nil {
			return nil, err
		}
		c.net, c.ownNet = n, true
	}
	if err := c.start(ctx, opts.Standbys, settings); err != nil {
		sctx, cancel := cleanupContext()
		defer cancel()
		return nil, errors.Join(err, c.Stop(sctx))
	}
	return c, nil
}

// StartT is Start for tests: t.Fatal on error, Stop in t.Cleanup. Progress
// goes to t.Logf unless opts.Logf is set.
func StartT(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := cleanupContext()
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Error(err)
		}
	})
	return c
}

func (c *Cluster) start(ctx context.Context, standbys int, settings map[string]string) error {
	names := []string{c.name + "-primary"}
	for i := 1; i <= standbys; i++ {
		names = append(names, fmt.Sprintf("%s-standby%d", c.name, i))
	}
	// Containers start in parallel; the image is built (once) by the first.
	if _, err := Image(ctx, c.logf); err != nil {
		return err
	}
	nodes := make([]*Node, len(names))
	g, gctx := errgroup.WithContext(ctx)
	for i, name := range names {
		g.Go(func() error {
			ct, err := c.net.start(gctx, containerSpec{name: name, role: "postgres", volume: pgData})
			if err != nil {
				return err
			}
			nodes[i] = &Node{Container: ct, Name: name, Host: ct.IP.String(), Port: pgPort, Dir: pgData, cluster: c}
			return nil
		})
	}
	err := g.Wait()
	c.mu.Lock()
	for _, n := range nodes {
		if n != nil {
			c.nodes = append(c.nodes, n)
		}
	}
	c.mu.Unlock()
	if err != nil {
		return err
	}
	primary := nodes[0]
	c.mu.Lock()
	c.primary = primary
	c.mu.Unlock()
	if err := primary.initPrimary(ctx, settings); err != nil {
		return err
	}
	g, gctx = errgroup.WithContext(ctx)
	for _, n := range nodes[1:] {
		g.Go(func() error { return n.initStandby(gctx, primary) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return c.WaitStreaming(ctx)
}

// pgConf renders settings as postgresql.conf lines.
func pgConf(settings map[string]string, clusterName string) string {
	var b strings.Builder
	b.WriteString("\n# dbproxy testbed\n")
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(settings[k], "'", "''"))
	}
	fmt.Fprintf(&b, "cluster_name = '%s'\n", clusterName)
	return b.String()
}

// hbaConf trusts the superuser and replication from the network (the host
// and the other nodes); every other user needs scram-sha-256.
func (c *Cluster) hbaConf() string {
	s := c.net.Subnet.String()
	return "local all all trust\n" +
		"host all postgres 127.0.0.1/32 trust\n" +
		"host all postgres " + s + " trust\n" +
		"host replication all " + s + " trust\n" +
		"host all all 0.0.0.0/0 scram-sha-256\n"
}

func (n *Node) initPrimary(ctx context.Context, settings map[string]string) error {
	if _, err := n.Exec(ctx, "", "sh", "-c", "chown postgres:postgres "+pgData+" && chmod 700 "+pgData); err != nil {
		return err
	}
	if _, err := n.Exec(ctx, "postgres", "initdb", "-D", pgData, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		return err
	}
	if err := n.writeFile(ctx, pgData+"/pg_hba.conf", n.cluster.hbaConf(), false); err != nil {
		return err
	}
	if err := n.writeFile(ctx, pgData+"/postgresql.conf", pgConf(settings, n.Name), true); err != nil {
		return err
	}
	return n.startServer(ctx)
}

// initStandby clones primary with pg_basebackup -R through a physical slot
// and starts the standby.
func (n *Node) initStandby(ctx context.Context, primary *Node) error {
	slot := slotName(n.Name)
	if err := primary.createSlot(ctx, slot); err != nil {
		return err
	}
	if _, err := n.Exec(ctx, "", "sh", "-c", "chown postgres:postgres "+pgData+" && chmod 700 "+pgData); err != nil {
		return err
	}
	if _, err := n.Exec(ctx, "postgres", "pg_basebackup", "-h", primary.Host, "-p", fmt.Sprint(primary.Port),
		"-U", "postgres", "-D", pgData, "-R", "-X", "stream", "-S", slot, "-c", "fast", "--no-sync"); err != nil {
		return err
	}
	conf := fmt.Sprintf("\ncluster_name = '%s'\n", n.Name)
	if err := n.writeFile(ctx, pgData+"/postgresql.conf", conf, true); err != nil {
		return err
	}
	if err := n.writeFile(ctx, pgData+"/postgresql.auto.conf", n.followConf(primary, slot), true); err != nil {
		return err
	}
	n.mu.Lock()
	n.follows, n.slot = primary, slot
	n.mu.Unlock()
	return n.startServer(ctx)
}

func (n *Node) followConf(primary *Node, slot string) string {
	return fmt.Sprintf("\nprimary_conninfo = 'host=%s port=%d user=postgres application_name=%s'\nprimary_slot_name = '%s'\n",
		primary.Host, primary.Port, n.Name, slot)
}

func slotName(node string) string { return strings.ReplaceAll(node, "-", "_") }

func (n *Node) createSlot(ctx context.Context, slot string) error {
	conn, err := n.Connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, `SELECT pg_create_physical_replication_slot($1, true)
		WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, slot)
	if err != nil {
		return fmt.Errorf("testbed: %s: create slot %s: %w", n.Name, slot, err)
	}
	return nil
}

// writeFile writes (or appends) content to path inside the container,
// owned by postgres.
func (n *Node) writeFile(ctx context.Context, path, content string, appendTo bool) error {
	tmp := "/tmp/testbed-" + strings.ReplaceAll(strings.TrimPrefix(path, "/"), "/", "_")
	if err := n.tc.CopyToContainer(ctx, []byte(content), tmp, 0o600); err != nil {
		return fmt.Errorf("testbed: %s: write %s: %w", n.Name, path, err)
	}
	op := ">"
	if appendTo {
		op = ">>"
	}
	_, err := n.Exec(ctx, "", "sh", "-c", fmt.Sprintf("cat %s %s %s && rm -f %s && chown postgres:postgres %s", tmp, op, path, tmp, path))
	return err
}

// startServer starts the postmaster and waits until it accepts connections.
func (n *Node) startServer(ctx context.Context) error {
	// After a container kill the old postmaster.pid is stale, and its pid
	// may belong to another process in the new container: remove it when
	// no postgres runs.
	if _, err := n.Exec(ctx, "", "sh", "-c", "pgrep -x postgres >/dev/null || rm -f "+pgData+"/postmaster.pid"); err != nil {
		return err
	}
	if _, err := n.Exec(ctx, "postgres", "pg_ctl", "-D", pgData, "-l", pgLog, "-w", "-t", "120", "start"); err != nil {
		return fmt.Errorf("%w\nserver log:\n%s", err, n.serverLogTail(ctx))
	}
	n.mu.Lock()
	n.up = true
	n.mu.Unlock()
	return nil
}

func (n *Node) serverLogTail(ctx context.Context) string {
	out, _ := n.Exec(ctx, "", "tail", "-n", "30", pgLog)
	return out
}

// ServerLog returns the server's log file.
func (n *Node) ServerLog(ctx context.Context) (string, error) {
	return n.Exec(ctx, "", "cat", pgLog)
}

// Primary returns the current primary: the initial one, or the node most
// recently promoted.
func (c *Cluster) Primary() *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.primary
}

// Standbys returns every node but the current primary.
func (c *Cluster) Standbys() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Node
	for _, n := range c.nodes {
		if n != c.primary {
			out = append(out, n)
		}
	}
	return out
}

// Nodes returns every node, the initial primary first.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.nodes)
}

// Network returns the network the cluster runs on.
func (c *Cluster) Network() *Network { return c.net }

// WaitStreaming waits until every standby that follows the current primary
// and can (server up, container neither killed, paused nor disconnected)
// streams from it, as seen in the primary's pg_stat_replication.
func (c *Cluster) WaitStreaming(ctx context.Context) error {
	primary := c.Primary()
	var want []string
	for _, n := range c.Standbys() {
		n.mu.Lock()
		ok := n.up && n.follows == primary
		n.mu.Unlock()
		if ok && !n.Killed() && !n.Paused() && !n.Disconnected() {
			want = append(want, n.Name)
		}
	}
	if len(want) == 0 {
		return nil
	}
	var last error
	for {
		got, err := primary.streaming(ctx)
		if err == nil {
			missing := slices.DeleteFunc(slices.Clone(want), func(s string) bool { return slices.Contains(got, s) })
			if len(missing) == 0 {
				return nil
			}
			last = fmt.Errorf("not streaming: %s", strings.Join(missing, ", "))
		} else {
			last = err
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return fmt.Errorf("testbed: wait streaming from %s: %w (last: %v)", primary.Name, err, last)
		}
	}
}

func (n *Node) streaming(ctx context.Context) ([]string, error) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := n.Connect(qctx, "postgres")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(qctx, `SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// Stop removes every container of the cluster (and its network, if Start
// created it). Idempotent.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil
	}
	c.stopped = true
	nodes := slices.Clone(c.nodes)
	c.mu.Unlock()
	if c.ownNet {
		return c.net.Close(ctx)
	}
	var errs []error
	for _, n := range nodes {
		errs = append(errs, n.remove(ctx))
	}
	return errors.Join(errs...)
}

// CreateDatabase creates user (LOGIN, scram-sha-256 password) unless it
// exists, and database db owned by it, on the primary; standbys get both by
// replication.
func (c *Cluster) CreateDatabase(ctx context.Context, db, user, password string) error {
	if db == "" || user == "" {
		return fmt.Errorf("%w: empty database or user name", ErrBadOptions)
	}
	p := c.Primary()
	conn, err := p.Connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, user).Scan(&exists); err != nil {
		return fmt.Errorf("testbed: %s: %w", p.Name, err)
	}
	if !exists {
		var stmt string
		if err := conn.QueryRow(ctx, `SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)`, user, password).Scan(&stmt); err != nil {
			return fmt.Errorf("testbed: %s: %w", p.Name, err)
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("testbed: %s: create role %s: %w", p.Name, user, err)
		}
	}
	stmt := "CREATE DATABASE " + pgx.Identifier{db}.Sanitize() + " OWNER " + pgx.Identifier{user}.Sanitize()
	if _, err := conn.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("testbed: %s: create database %s: %w", p.Name, db, err)
	}
	return nil
}

// ConnString is a libpq connection string for the superuser "postgres"
// (trusted from the network, no password) to database db on this node.
func (n *Node) ConnString(db string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", n.Host, n.Port, db)
}

// Connect opens a connection as the superuser. On a paused node it blocks
// until ctx ends (the kernel accepts the TCP connection; nobody answers).
func (n *Node) Connect(ctx context.Context, db string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, n.ConnString(db))
	if err != nil {
		return nil, fmt.Errorf("testbed: connect %s: %w", n.Name, err)
	}
	return conn, nil
}

// query runs fn on a fresh superuser connection to database postgres.
func (n *Node) query(ctx context.Context, fn func(*pgx.Conn) error) error {
	conn, err := n.Connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := fn(conn); err != nil {
		return fmt.Errorf("testbed: %s: %w", n.Name, err)
	}
	return nil
}

// LSNs reads the node's WAL positions.
func (n *Node) LSNs(ctx context.Context) (LSNs, error) {
	var l LSNs
	err := n.query(ctx, func(conn *pgx.Conn) error {
		var err error
		l, err = pgcluster.QueryLSNs(ctx, conn, n.Name)
		return err
	})
	return l, err
}

// WaitReplay waits until the node's position (replay LSN on a standby,
// current LSN on a primary) reaches lsn.
func (n *Node) WaitReplay(ctx context.Context, lsn uint64) error {
	var last error
	for {
		l, err := n.LSNs(ctx)
		if err == nil && l.Position() >= lsn {
			return nil
		}
		if err != nil {
			last = err
		} else {
			last = fmt.Errorf("at %s", FormatLSN(l.Position()))
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return fmt.Errorf("testbed: %s: wait for replay of %s: %w (last: %v)", n.Name, FormatLSN(lsn), err, last)
		}
	}
}

// PauseReplay pauses WAL replay on a standby (WAL is still received).
func (n *Node) PauseReplay(ctx context.Context) error {
	return n.query(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, "SELECT pg_wal_replay_pause()")
		return err
	})
}

// ResumeReplay resumes WAL replay on a standby.
func (n *Node) ResumeReplay(ctx context.Context) error {
	return n.query(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, "SELECT pg_wal_replay_resume()")
		return err
	})
}

// Kill kills the node's whole container (SIGKILL to every process, a host
// crash). Its data directory survives; Start brings it back.
func (n *Node) Kill(ctx context.Context) error {
	if err := n.Container.Kill(ctx); err != nil {
		return err
	}
	n.mu.Lock()
	n.up = false
	n.mu.Unlock()
	return nil
}

// KillServer SIGKILLs only the postmaster (the container stays up, like a
// crashed server on a healthy host) and waits for every postgres process to
// exit.
func (n *Node) KillServer(ctx context.Context) error {
	script := `pid=$(head -n 1 ` + pgData + `/postmaster.pid 2>/dev/null) || exit 0
kill -KILL "$pid" 2>/dev/null || true
for i in $(seq 1 300); do pgrep -x postgres >/dev/null || exit 0; sleep 0.1; done
echo "postgres still running" >&2; exit 1`
	if _, err := n.Exec(ctx, "", "sh", "-c", script); err != nil {
		return err
	}
	n.mu.Lock()
	n.up = false
	n.mu.Unlock()
	return nil
}

// Start starts the node again after Kill, KillServer or Stop: the container
// if it was killed, then the server.
func (n *Node) Start(ctx context.Context) error {
	if err := n.Container.Start(ctx); err != nil {
		return err
	}
	if out, err := n.Exec(ctx, "postgres", "sh", "-c", "pg_ctl -D "+pgData+" status >/dev/null; echo $?"); err != nil {
		return err
	} else if strings.TrimSpace(out) == "0" {
		n.mu.Lock()
		n.up = true
		n.mu.Unlock()
		return nil
	}
	return n.startServer(ctx)
}

// Stop shuts the server down (fast mode); the container stays up.
func (n *Node) Stop(ctx context.Context) error {
	if _, err := n.Exec(ctx, "postgres", "pg_ctl", "-D", pgData, "-m", "fast", "-w", "-t", "120", "stop"); err != nil {
		return err
	}
	n.mu.Lock()
	n.up = false
	n.mu.Unlock()
	return nil
}

// Restart restarts the server (fast shutdown, then start).
func (n *Node) Restart(ctx context.Context) error {
	if err := n.Stop(ctx); err != nil {
		return err
	}
	return n.startServer(ctx)
}

// Promote promotes a standby (pg_promote, waiting for it to finish) and
// makes it the cluster's Primary. Other standbys keep following the old
// primary until Follow repoints them.
func (n *Node) Promote(ctx context.Context) error {
	err := n.query(ctx, func(conn *pgx.Conn) error {
		var ok bool
		if err := conn.QueryRow(ctx, "SELECT pg_promote(true, 60)").Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return errors.New("pg_promote returned false")
		}
		return nil
	})
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.follows = nil
	n.mu.Unlock()
	c := n.cluster
	c.mu.Lock()
	c.primary = n
	c.mu.Unlock()
	return nil
}

// Follow repoints a standby at primary: a physical slot for it on primary,
// primary_conninfo and primary_slot_name via ALTER SYSTEM, then a reload
// (the walreceiver restarts and follows the new timeline).
func (n *Node) Follow(ctx context.Context, primary *Node) error {
	if primary == n {
		return fmt.Errorf("%w: %s cannot follow itself", ErrBadOptions, n.Name)
	}
	slot := slotName(n.Name)
	if err := primary.createSlot(ctx, slot); err != nil {
		return err
	}
	conninfo := fmt.Sprintf("host=%s port=%d user=postgres application_name=%s", primary.Host, primary.Port, n.Name)
	err := n.query(ctx, func(conn *pgx.Conn) error {
		for _, stmt := range []string{
			"ALTER SYSTEM SET primary_conninfo = " + quoteLiteral(conninfo),
			"ALTER SYSTEM SET primary_slot_name = " + quoteLiteral(slot),
			"SELECT pg_reload_conf()",
		} {
			if _, err := conn.Exec(ctx, stmt); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.follows, n.slot = primary, slot
	n.mu.Unlock()
	return nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// validSetting accepts PostgreSQL GUC names (including custom "a.b").
func validSetting(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// Psql runs sql with psql inside the node's container over the local
// socket, so it works while the node is disconnected from the network, and
// returns the unaligned, tuples-only output with surrounding space trimmed.
func (n *Node) Psql(ctx context.Context, db, sql string) (string, error) {
	out, err := n.Exec(ctx, "postgres", "psql", "-h", "/tmp", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql)
	return strings.TrimSpace(out), err
}
