package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Node is one PostgreSQL server of a cluster. Name, Host, Port and Dir (the
// data directory) are fixed once Start returns. Methods are safe for
// concurrent use; lifecycle methods (Start, Stop, Restart, Kill) of one node
// are serialized.
type Node struct {
	Name string
	Host string
	Port int
	Dir  string // data directory
	// SocketDir is the directory of the node's Unix socket
	// (SocketDir/.s.PGSQL.Port), "" when it has none (see the package
	// documentation).
	SocketDir string

	c       *Cluster
	nodeDir string // holds Dir, the log file, the Unix socket and nothing else
	standby bool   // created as a standby
	slot    string // physical slot on the upstream (standbys)

	upstream *Node // node this one replicates from; nil for a primary (guarded by c.topoMu)

	mu sync.Mutex // serializes lifecycle operations
}

// LocalHost is the host a client on this machine reaches n by: its
// Unix-socket directory, or Host when it has no socket.
func (n *Node) LocalHost() string {
	if n.SocketDir != "" {
		return n.SocketDir
	}
	return n.Host
}

// ConnString is a libpq keyword/value connection string for the superuser
// postgres (trusted, no password) on database db ("" means postgres).
func (n *Node) ConnString(db string) string {
	if db == "" {
		db = "postgres"
	}
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", n.Host, n.Port, db)
}

// Connect opens a new connection as postgres to db; the caller closes it.
func (n *Node) Connect(ctx context.Context, db string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, n.ConnString(db))
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %s: connect: %w", n.Name, err)
	}
	return conn, nil
}

func (n *Node) withConn(ctx context.Context, db string, fn func(*pgx.Conn) error) error {
	conn, err := n.Connect(ctx, db)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	return fn(conn)
}

// LogFile is the path of the node's server log.
func (n *Node) LogFile() string { return filepath.Join(n.nodeDir, "postgres.log") }

// LogTail returns up to the last lines lines of the node's server log.
func (n *Node) LogTail(lines int) string {
	b, err := os.ReadFile(n.LogFile())
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	b = bytes.TrimRight(b, "\n")
	parts := bytes.Split(b, []byte("\n"))
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return string(bytes.Join(parts, []byte("\n")))
}

// Upstream returns the node this standby replicates from (the primary, or
// the node given to Follow), or nil for the primary and promoted nodes.
func (n *Node) Upstream() *Node {
	n.c.topoMu.Lock()
	defer n.c.topoMu.Unlock()
	return n.upstream
}

// Follow repoints this standby at upstream (after a failover): it creates
// the standby's physical slot on upstream if missing, sets primary_conninfo
// and primary_slot_name with ALTER SYSTEM and reloads; the WAL receiver
// reconnects and follows upstream's timeline (recovery_target_timeline is
// 'latest'). The standby must not have replayed past the point where
// upstream's timeline forked (pick the most advanced standby to promote).
func (n *Node) Follow(ctx context.Context, upstream *Node) error {
	if upstream == nil || upstream == n || upstream.c != n.c {
		return fmt.Errorf("%w: %s cannot follow %v", ErrInvalidOptions, n.Name, upstream)
	}
	if err := upstream.createSlot(ctx, n.slot); err != nil {
		return fmt.Errorf("pgcluster: %s: create slot %s on %s: %w", n.Name, n.slot, upstream.Name, err)
	}
	conninfo := fmt.Sprintf("host=%s port=%d user=postgres application_name=%s", upstream.Host, upstream.Port, n.Name)
	err := n.withConn(ctx, "postgres", func(conn *pgx.Conn) error {
		var inRecovery bool
		if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
			return err
		}
		if !inRecovery {
			return errors.New("not a standby (not in recovery)")
		}
		for _, kv := range [][2]string{{"primary_conninfo", conninfo}, {"primary_slot_name", n.slot}} {
			var stmt string
			if err := conn.QueryRow(ctx, "SELECT format('ALTER SYSTEM SET %I = %L', $1::text, $2::text)", kv[0], kv[1]).Scan(&stmt); err != nil {
				return err
			}
			if _, err := conn.Exec(ctx, stmt); err != nil {
				return err
			}
		}
		_, err := conn.Exec(ctx, "SELECT pg_reload_conf()")
		return err
	})
	if err != nil {
		return fmt.Errorf("pgcluster: %s: follow %s: %w", n.Name, upstream.Name, err)
	}
	n.c.topoMu.Lock()
	n.upstream = upstream
	n.c.topoMu.Unlock()
	return nil
}

func (n *Node) createSlot(ctx context.Context, slot string) error {
	return n.withConn(ctx, "postgres", func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", slot)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42710" { // duplicate_object: slot already there
			return nil
		}
		return err
	})
}

// IsStandby reports whether the node was created as a standby.
func (n *Node) IsStandby() bool { return n.standby }

// Running reports whether the node's postmaster process is alive.
func (n *Node) Running() bool {
	_, ok := n.livePostmaster()
	return ok
}

// livePostmaster returns the pid in postmaster.pid if that process is alive
// and is this node's server: a postgres process whose working directory is
// the data directory (a stale lock file's pid may have been recycled, even
// by another cluster's server).
func (n *Node) livePostmaster() (int, bool) {
	pid, ok := n.postmasterPID()
	if !ok || !pidAlive(pid) {
		return 0, false
	}
	cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd")
	if err != nil {
		return pid, true // cannot tell; trust the lock file
	}
	want, err := filepath.EvalSymlinks(n.Dir)
	if err != nil {
		want = n.Dir
	}
	return pid, cwd == want
}

// LSNs reads the node's WAL positions (see LSNs for the fields).
func (n *Node) LSNs(ctx context.Context) (LSNs, error) {
	var l LSNs
	err := n.withConn(ctx, "postgres", func(conn *pgx.Conn) error {
		var err error
		l, err = QueryLSNs(ctx, conn, n.Name)
		return err
	})
	if err != nil {
		return l, fmt.Errorf("pgcluster: %s: read LSNs: %w", n.Name, err)
	}
	return l, nil
}

// PauseReplay asks the standby to pause WAL replay (pg_wal_replay_pause()).
// WAL keeps being received; replay stops before the next record.
func (n *Node) PauseReplay(ctx context.Context) error {
	return n.exec(ctx, "SELECT pg_wal_replay_pause()")
}

// ResumeReplay resumes paused WAL replay (pg_wal_replay_resume()).
func (n *Node) ResumeReplay(ctx context.Context) error {
	return n.exec(ctx, "SELECT pg_wal_replay_resume()")
}

// Promote promotes the standby and waits (up to 60 s, or ctx) for it to
// accept writes: pg_promote(wait => true). It becomes the cluster's Leader.
func (n *Node) Promote(ctx context.Context) error {
	var ok bool
	err := n.withConn(ctx, "postgres", func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, "SELECT pg_promote(true, 60)").Scan(&ok)
	})
	if err != nil {
		return fmt.Errorf("pgcluster: %s: promote: %w", n.Name, err)
	}
	if !ok {
		return fmt.Errorf("pgcluster: %s: promote: pg_promote returned false (not promoted within 60s)", n.Name)
	}
	n.c.topoMu.Lock()
	n.upstream = nil
	n.c.leader = n
	n.c.topoMu.Unlock()
	return nil
}

func (n *Node) exec(ctx context.Context, sql string) error {
	err := n.withConn(ctx, "postgres", func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sql)
		return err
	})
	if err != nil {
		return fmt.Errorf("pgcluster: %s: %s: %w", n.Name, sql, err)
	}
	return nil
}

// Start starts the node's server (after Kill or Stop) and waits until it
// accepts connections; after a Kill, PostgreSQL runs crash recovery first.
// Starting a running node is a no-op. It waits for the node's port to be
// free first.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.c.isStopped() {
		return fmt.Errorf("%w: %s", ErrStopped, n.Name)
	}
	return n.startLocked(ctx)
}

// Stop shuts the node down (fast mode, escalating to immediate mode and then
// SIGKILL). Stopping a stopped node is a no-op.
func (n *Node) Stop(ctx context.Context) error {
	return n.stop(ctx, true)
}

// Restart stops (fast) and starts the node.
func (n *Node) Restart(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.c.isStopped() {
		return fmt.Errorf("%w: %s", ErrStopped, n.Name)
	}
	if err := n.stopLocked(ctx, true); err != nil {
		return err
	}
	return n.startLocked(ctx)
}

// Kill sends SIGKILL to the node's postmaster and every server process it
// started (a simulated crash of the node) and waits for them to exit. The
// node stays down until Start. Killing a node that is not running returns
// ErrNotRunning.
func (n *Node) Kill() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.killLocked()
}

func (n *Node) stop(ctx context.Context, fast bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stopLocked(ctx, fast)
}

// stopLocked shuts the server down: fast mode first when fast is set (a
// clean shutdown checkpoint), then immediate mode, then SIGKILL.
func (n *Node) stopLocked(ctx context.Context, fast bool) error {
	pid, ok := n.livePostmaster()
	if !ok {
		return nil
	}
	var err error
	if fast {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err = n.c.run(sctx, n.nodeDir, "pg_ctl", "stop", "-D", n.Dir, "-m", "fast", "-w", "-t", "25")
		cancel()
		// pg_ctl returns once postmaster.pid is gone, a moment before the
		// postmaster exits.
		grace := 10 * time.Second
		if err != nil {
			grace = 500 * time.Millisecond
		}
		if waitExit([]int{pid}, grace) {
			return nil
		}
		n.c.logf("pgcluster: %s: fast shutdown failed (%v); trying immediate", n.Name, err)
	}
	ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	_, err = n.c.run(ictx, n.nodeDir, "pg_ctl", "stop", "-D", n.Dir, "-m", "immediate", "-w", "-t", "10")
	cancel()
	if waitExit([]int{pid}, 10*time.Second) {
		return nil
	}
	n.c.logf("pgcluster: %s: immediate shutdown failed (%v); killing", n.Name, err)
	if err := n.killLocked(); err != nil && !errors.Is(err, ErrNotRunning) {
		return err
	}
	return nil
}

// Freeze stops every process of the node's server with SIGSTOP, as a
// hung host would: connections to it and queries on it get no answer and
// no error. The returned thaw resumes them (SIGCONT); call it before
// Stop or the cluster's cleanup.
func (n *Node) Freeze() (thaw func(), err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	pid, ok := n.livePostmaster()
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotRunning, n.Name)
	}
	if err := syscallKill(pid, sigSTOP); err != nil {
		return nil, fmt.Errorf("pgcluster: %s: stop postmaster %d: %w", n.Name, pid, err)
	}
	pids := append([]int{pid}, childPIDs(pid)...)
	for _, k := range pids[1:] {
		_ = syscallKill(k, sigSTOP)
	}
	n.c.logf("pgcluster: %s: froze postmaster %d and %d children", n.Name, pid, len(pids)-1)
	return func() {
		for _, p := range pids {
			_ = syscallKill(p, sigCONT)
		}
	}, nil
}

// killLocked SIGKILLs the postmaster and its children. The postmaster is
// stopped first so it cannot fork while its children are collected.
func (n *Node) killLocked() error {
	pid, ok := n.livePostmaster()
	if !ok {
		return fmt.Errorf("%w: %s", ErrNotRunning, n.Name)
	}
	_ = syscallKill(pid, sigSTOP)
	kids := childPIDs(pid)
	for _, k := range kids {
		_ = syscallKill(k, sigKILL)
	}
	if err := syscallKill(pid, sigKILL); err != nil && pidAlive(pid) {
		return fmt.Errorf("pgcluster: %s: kill postmaster %d: %w", n.Name, pid, err)
	}
	if !waitExit(append([]int{pid}, kids...), 30*time.Second) {
		return fmt.Errorf("pgcluster: %s: server processes still alive 30s after SIGKILL", n.Name)
	}
	// Everything is dead: the lock files are stale. Remove them so a
	// zombie postmaster (if nobody reaps it) cannot block the next start.
	_ = os.Remove(filepath.Join(n.Dir, "postmaster.pid"))
	n.removeSocketFiles()
	n.c.logf("pgcluster: %s: killed postmaster %d and %d children", n.Name, pid, len(kids))
	return nil
}

// removeSocketFiles removes the Unix socket and its lock file left by a
// killed postmaster.
func (n *Node) removeSocketFiles() {
	if n.SocketDir == "" {
		return
	}
	stale, _ := filepath.Glob(filepath.Join(n.SocketDir, ".s.PGSQL.*"))
	for _, f := range stale {
		_ = os.Remove(f)
	}
}

func (n *Node) startLocked(ctx context.Context) error {
	if n.Running() {
		return nil
	}
	if err := n.waitPortFree(ctx); err != nil {
		return err
	}
	_, err := n.pgctlStart(ctx)
	return err
}

func (n *Node) waitPortFree(ctx context.Context) error {
	for !portFree(n.Port) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgcluster: %s: port %d stays in use: %w", n.Name, n.Port, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// pgctlStart runs pg_ctl start and waits for the server to accept
// connections. It returns the log written by this attempt.
func (n *Node) pgctlStart(ctx context.Context) (string, error) {
	var off int64
	if fi, err := os.Stat(n.LogFile()); err == nil {
		off = fi.Size()
	}
	_, err := n.c.run(ctx, n.nodeDir, "pg_ctl", "start", "-D", n.Dir, "-l", n.LogFile(), "-w", "-t", "300")
	if err == nil {
		return "", nil
	}
	logText := readFrom(n.LogFile(), off)
	// pg_ctl may have given up while the postmaster keeps running: stop it.
	if n.Running() {
		_ = n.killLocked()
	}
	return logText, fmt.Errorf("pgcluster: %s: start on port %d: %w\nlog:\n%s", n.Name, n.Port, err, logText)
}

// startFresh writes the node's config and starts it, moving to a new port
// if the chosen one turns out to be taken (a bind clash with another process).
func (n *Node) startFresh(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for attempt := 1; ; attempt++ {
		if err := n.writeConf(); err != nil {
			return err
		}
		logText, err := n.pgctlStart(ctx)
		if err == nil {
			return nil
		}
		clash := strings.Contains(logText, "could not bind") || strings.Contains(logText, "Address already in use") ||
			strings.Contains(logText, "could not create any TCP/IP sockets")
		if !clash || attempt >= 5 || ctx.Err() != nil {
			return err
		}
		port, perr := pickPort()
		if perr != nil {
			return errors.Join(err, perr)
		}
		n.c.logf("pgcluster: %s: port %d taken; retrying on %d", n.Name, n.Port, port)
		n.Port = port
	}
}

// startConfigured starts an existing node of a reused cluster on its
// recorded port, rewriting its config so Settings changes apply.
func (n *Node) startConfigured(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.Running() {
		n.c.logf("pgcluster: %s: already running on port %d", n.Name, n.Port)
		return nil
	}
	if err := n.writeConf(); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := n.waitPortFree(wctx)
	cancel()
	if err != nil {
		return err
	}
	_, err = n.pgctlStart(ctx)
	return err
}

// initdb creates the primary's data directory: a copy of the initdb
// template, or a plain initdb if the template cannot be used.
func (n *Node) initdb(ctx context.Context) error {
	if err := n.resetNodeDir(); err != nil {
		return err
	}
	tmpl, err := n.c.templateDir(ctx)
	if err == nil {
		if err = n.c.copyTemplate(ctx, n.nodeDir, tmpl, n.Dir); err == nil {
			return nil
		}
		_ = os.RemoveAll(n.Dir)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("pgcluster: %s: initdb: %w", n.Name, ctx.Err())
	}
	n.c.logf("pgcluster: %s: initdb template unusable (%v); running initdb", n.Name, err)
	if err := n.c.initdbInto(ctx, n.nodeDir, n.Dir); err != nil {
		return fmt.Errorf("pgcluster: %s: %w", n.Name, err)
	}
	return nil
}

// basebackup creates a standby's data directory from the primary through its
// own physical slot.
func (n *Node) basebackup(ctx context.Context) error {
	if err := n.resetNodeDir(); err != nil {
		return err
	}
	p := n.c.Primary()
	if err := p.createSlot(ctx, n.slot); err != nil {
		return fmt.Errorf("pgcluster: %s: create slot %s: %w", n.Name, n.slot, err)
	}
	conninfo := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres application_name=%s", p.Port, n.Name)
	if _, err := n.c.run(ctx, n.nodeDir, "pg_basebackup", "-D", n.Dir, "-d", conninfo,
		"-R", "-S", n.slot, "-X", "stream", "-c", "fast", "--no-sync"); err != nil {
		return fmt.Errorf("pgcluster: %s: %w", n.Name, err)
	}
	// Make application_name explicit whatever pg_basebackup -R wrote.
	auto := fmt.Sprintf("\n# Written by pgcluster.\nprimary_conninfo = '%s'\nprimary_slot_name = '%s'\n",
		strings.ReplaceAll(conninfo, "'", "''"), n.slot)
	f, err := os.OpenFile(filepath.Join(n.Dir, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(auto)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (n *Node) resetNodeDir() error {
	if err := os.RemoveAll(n.nodeDir); err != nil {
		return err
	}
	return n.c.user.prepareDir(n.nodeDir)
}

// writeConf writes pgcluster.conf (included by postgresql.conf): defaults,
// Options.Settings, then the settings pgcluster owns.
func (n *Node) writeConf() error {
	var b strings.Builder
	b.WriteString("# Managed by pgcluster; rewritten on every start.\n")
	for _, k := range slices.Sorted(maps.Keys(n.c.conf)) {
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(n.c.conf[k], "'", "''"))
	}
	fmt.Fprintf(&b, "port = %d\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n", n.Port, strings.ReplaceAll(n.SocketDir, "'", "''"))
	hba := hbaConf
	if t := n.c.tls; t != nil {
		for name, pem := range map[string][]byte{"server.crt": t.CertPEM, "server.key": t.KeyPEM} {
			if err := n.c.writeOwnedFile(filepath.Join(n.Dir, name), string(pem)); err != nil {
				return err
			}
		}
		b.WriteString("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
		if t.Only {
			hba = hbaTLSOnly
		}
	}
	if err := n.c.writeOwnedFile(filepath.Join(n.Dir, "pg_hba.conf"), hba); err != nil {
		return err
	}
	return n.c.writeOwnedFile(filepath.Join(n.Dir, "pgcluster.conf"), b.String())
}

// postmasterPID reads the first line of postmaster.pid.
func (n *Node) postmasterPID() (int, bool) {
	b, err := os.ReadFile(filepath.Join(n.Dir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// run runs a PostgreSQL program as the server user in dir.
func (c *Cluster) run(ctx context.Context, dir, prog string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, prog), args...)
	cmd.Dir = dir
	cmd.Env = c.env()
	cmd.SysProcAttr = c.user.sysProcAttr()
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", prog, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// env is the environment for PostgreSQL programs: ours without PG* and
// locale variables, with HOME pointing somewhere the server user can read.
func (c *Cluster) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") || k == "LANG" || k == "LANGUAGE" || k == "HOME" {
			continue
		}
		env = append(env, kv)
	}
	home := c.user.home
	if c.user.switched {
		home = c.root
	}
	return append(env, "LC_ALL=C", "HOME="+home)
}

func readFrom(path string, off int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	defer f.Close()
	if _, err := f.Seek(off, 0); err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	var b bytes.Buffer
	_, _ = b.ReadFrom(f)
	return b.String()
}
