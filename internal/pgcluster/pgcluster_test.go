package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestParseLSN(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
	}{
		{"0/0", 0},
		{"0/3000148", 0x3000148},
		{"16/B374D848", 0x16_B374D848},
		{"FFFFFFFF/FFFFFFFF", ^uint64(0)},
		{"a/b", 0xa0000000b},
	} {
		got, err := ParseLSN(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseLSN(%q) = %#x, %v; want %#x", tc.in, got, err, tc.want)
		}
		if back, _ := ParseLSN(FormatLSN(got)); back != got {
			t.Errorf("FormatLSN(%#x) = %q does not parse back", got, FormatLSN(got))
		}
	}
	if got := FormatLSN(0x16_B374D848); got != "16/B374D848" {
		t.Errorf("FormatLSN = %q", got)
	}
	for _, bad := range []string{"", "/", "0/", "/0", "16B374D848", "1/2/3", "G/0", "123456789/0", "0/123456789", "-1/0", " 1/0"} {
		if _, err := ParseLSN(bad); !errors.Is(err, ErrBadLSN) {
			t.Errorf("ParseLSN(%q) err = %v, want ErrBadLSN", bad, err)
		}
	}
}

func TestLSNsDerived(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 10, 0, time.UTC)
	standby := LSNs{InRecovery: true, ReceiveLSN: 200, ReplayLSN: 100, LastReplay: now.Add(-3 * time.Second), ServerNow: now}
	if got := standby.ReplayDelay(); got != 3*time.Second {
		t.Errorf("lagging standby ReplayDelay = %v", got)
	}
	if standby.Position() != 100 {
		t.Errorf("standby Position = %d", standby.Position())
	}
	caughtUp := standby
	caughtUp.ReceiveLSN = 100
	if got := caughtUp.ReplayDelay(); got != 0 {
		t.Errorf("caught-up standby ReplayDelay = %v (an idle primary is not lag)", got)
	}
	fresh := standby
	fresh.LastReplay = time.Time{}
	if got := fresh.ReplayDelay(); got != 0 {
		t.Errorf("nothing replayed: ReplayDelay = %v", got)
	}
	primary := LSNs{CurrentLSN: 500, ServerNow: now}
	if primary.ReplayDelay() != 0 || primary.Position() != 500 {
		t.Errorf("primary: delay %v position %d", primary.ReplayDelay(), primary.Position())
	}
}

func TestOptionsValidate(t *testing.T) {
	good := []Options{
		{},
		{Name: "shard-0_a", Standbys: 3},
		{Settings: map[string]string{"work_mem": "8MB", "auto_explain.log_min_duration": "0"}},
	}
	for _, o := range good {
		if err := o.Validate(); err != nil {
			t.Errorf("%+v: %v", o, err)
		}
	}
	bad := []Options{
		{Name: "Upper"},
		{Name: "has space"},
		{Name: "-lead"},
		{Name: "../escape"},
		{Name: strings.Repeat("x", 41)},
		{Standbys: -1},
		{Standbys: 9},
		{Settings: map[string]string{"port": "5432"}},
		{Settings: map[string]string{"Listen_Addresses": "*"}},
		{Settings: map[string]string{"bad name": "1"}},
		{Settings: map[string]string{"work_mem": "1MB\nport = 1"}},
	}
	for _, o := range bad {
		if err := o.Validate(); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("%+v: err = %v, want ErrInvalidOptions", o, err)
		}
		if _, err := Start(context.Background(), o); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("Start(%+v): err = %v, want ErrInvalidOptions", o, err)
		}
	}
}

func TestFindBinDir(t *testing.T) {
	tmp := t.TempDir()
	mk := func(dir string, tools ...string) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, tool := range tools {
			if err := os.WriteFile(filepath.Join(dir, tool), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	glob := filepath.Join(tmp, "pg", "*", "bin")
	// Nothing installed: a clear error naming both places searched.
	_, err := findBinDir(filepath.Join(tmp, "no-pg_config"), glob)
	if !errors.Is(err, ErrNoBinaries) || !strings.Contains(err.Error(), "no-pg_config") || !strings.Contains(err.Error(), glob) {
		t.Fatalf("err = %v", err)
	}
	// 9.6 complete, 16 complete, 17 incomplete: newest complete (16) wins,
	// compared numerically (not "9.6" > "16").
	mk(filepath.Join(tmp, "pg", "9.6", "bin"), requiredTools...)
	mk(filepath.Join(tmp, "pg", "16", "bin"), requiredTools...)
	mk(filepath.Join(tmp, "pg", "17", "bin"), "postgres")
	got, err := findBinDir(filepath.Join(tmp, "no-pg_config"), glob)
	if err != nil || got != filepath.Join(tmp, "pg", "16", "bin") {
		t.Fatalf("findBinDir = %q, %v", got, err)
	}
	// pg_config pointing at a complete directory takes precedence.
	mk(filepath.Join(tmp, "cfg", "bin"), requiredTools...)
	script := "#!/bin/sh\necho " + filepath.Join(tmp, "cfg", "bin") + "\n"
	if err := os.WriteFile(filepath.Join(tmp, "pg_config"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err = findBinDir(filepath.Join(tmp, "pg_config"), glob)
	if err != nil || got != filepath.Join(tmp, "cfg", "bin") {
		t.Fatalf("findBinDir with pg_config = %q, %v", got, err)
	}

	// The real machine: PostgreSQL must be installed (a missing binary fails).
	dir, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	if !hasTools(dir) {
		t.Fatalf("BinDir %s lacks tools", dir)
	}
}

func TestParseProcStat(t *testing.T) {
	comm, state, ppid, ok := parseProcStat("4242 (post gres) x) S 17 4242 4242 0 -1 4194560 ...")
	if !ok || comm != "post gres) x" || state != 'S' || ppid != 17 {
		t.Fatalf("got %q %c %d %v", comm, state, ppid, ok)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) ", "1 (x) SS 2", "1 (x) S y"} {
		if _, _, _, ok := parseProcStat(bad); ok {
			t.Errorf("parseProcStat(%q) ok", bad)
		}
	}
	_, _, ppid, ok = procStat(os.Getpid())
	if !ok || ppid != os.Getppid() {
		t.Fatalf("procStat(self) ppid %d ok %v; want %d", ppid, ok, os.Getppid())
	}
	if pidAlive(os.Getpid()) {
		t.Fatal("the test binary counted as a PostgreSQL process")
	}
}

func TestRuntimeUserAndTraversal(t *testing.T) {
	u, err := runtimeUser(context.Background(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if !u.switched || u.uid == 0 || u.sysProcAttr() == nil {
			t.Fatalf("as root: user %+v", u)
		}
	} else if u.switched || u.uid != uint32(os.Geteuid()) || u.sysProcAttr() != nil {
		t.Fatalf("as non-root: user %+v", u)
	}

	base, err := os.MkdirTemp("", "pgcluster-trav-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	private := filepath.Join(base, "private")
	leaf := filepath.Join(private, "open", "leaf")
	if err := os.MkdirAll(leaf, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := u.prepareDir(leaf); err != nil {
		t.Fatal(err)
	}
	if err := u.ensureTraversable(leaf, t.Logf); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(private)
	if err != nil {
		t.Fatal(err)
	}
	want := os.FileMode(0o700)
	if u.switched {
		want = 0o701 // search only: listing stays private
	}
	if fi.Mode().Perm() != want {
		t.Fatalf("private dir mode %v, want %v", fi.Mode().Perm(), want)
	}
}

// startSmall starts a 1-primary cluster for the package's own tests.
func startSmall(t *testing.T, opts Options) *Cluster {
	t.Helper()
	if opts.Name == "" {
		opts.Name = "unit"
	}
	return StartT(t, opts)
}

func TestBindClashMovesToAnotherPort(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	calls := 0
	pickPort = func() (int, error) {
		calls++
		if calls == 1 {
			return takenPort, nil
		}
		return freePort()
	}
	t.Cleanup(func() { pickPort = freePort })

	c := startSmall(t, Options{Name: "clash"})
	p := c.Primary()
	if p.Port == takenPort || calls < 2 {
		t.Fatalf("primary on port %d (taken %d), %d picks", p.Port, takenPort, calls)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := p.LSNs(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := c.readMeta()
	if err != nil || m.Nodes[0].Port != p.Port {
		t.Fatalf("layout records %+v (%v), want port %d", m, err, p.Port)
	}
}

func TestStartFailureIsCleanAndExplained(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before, _ := filepath.Glob(filepath.Join(os.TempDir(), "pgcluster-badconf-*"))
	_, err := Start(ctx, Options{Name: "badconf", Settings: map[string]string{"shared_buffers": "lots"}})
	if err == nil {
		t.Fatal("Start with an invalid setting succeeded")
	}
	if !strings.Contains(err.Error(), "shared_buffers") {
		t.Fatalf("error does not name the bad setting: %v", err)
	}
	after, _ := filepath.Glob(filepath.Join(os.TempDir(), "pgcluster-badconf-*"))
	if len(after) != len(before) {
		t.Fatalf("temp dirs left behind: %v", after)
	}
}

func TestNodeLifecycleErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := startSmall(t, Options{Name: "life", Settings: map[string]string{"work_mem": "8MB"}})
	p := c.Primary()
	conn, err := p.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	var workMem, maxConn, unixDirs, hba string
	if err := conn.QueryRow(ctx, "SELECT current_setting('work_mem'), current_setting('max_connections'), current_setting('unix_socket_directories'), current_setting('password_encryption')").
		Scan(&workMem, &maxConn, &unixDirs, &hba); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if workMem != "8MB" || maxConn != "200" || unixDirs != p.SocketDir || p.SocketDir == "" || hba != "scram-sha-256" {
		t.Fatalf("settings: work_mem %s max_connections %s unix_socket_directories %q (SocketDir %q) password_encryption %s", workMem, maxConn, unixDirs, p.SocketDir, hba)
	}
	// The Unix socket: postgres trusted, other users by password.
	sconn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", p.SocketDir, p.Port))
	if err != nil {
		t.Fatalf("postgres over the Unix socket: %v", err)
	}
	var overSocket bool
	if err := sconn.QueryRow(ctx, "SELECT inet_server_addr() IS NULL").Scan(&overSocket); err != nil || !overSocket {
		t.Fatalf("connection over %s is not a Unix-socket one (%v, %v)", p.SocketDir, overSocket, err)
	}
	if _, err := sconn.Exec(ctx, "CREATE ROLE sockuser LOGIN PASSWORD 'pw'"); err != nil {
		t.Fatal(err)
	}
	sconn.Close(ctx)
	if c, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=sockuser password=wrong dbname=postgres", p.SocketDir, p.Port)); err == nil {
		c.Close(ctx)
		t.Fatal("a wrong password was accepted over the Unix socket")
	} else if !strings.Contains(err.Error(), "28P01") {
		t.Fatalf("wrong password over the Unix socket: %v (want SQLSTATE 28P01)", err)
	}
	if c, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=sockuser password=pw dbname=postgres", p.SocketDir, p.Port)); err != nil {
		t.Fatalf("password login over the Unix socket: %v", err)
	} else {
		c.Close(ctx)
	}
	// Pause/resume on a primary is a server error, reported with the node.
	if err := p.PauseReplay(ctx); err == nil || !strings.Contains(err.Error(), p.Name) {
		t.Fatalf("PauseReplay on primary: %v", err)
	}
	if err := p.Promote(ctx); err == nil {
		t.Fatal("Promote on a primary succeeded")
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(p.Dir, "postmaster.pid")); !os.IsNotExist(err) {
		t.Fatalf("stale postmaster.pid after Kill: %v", err)
	}
	if err := p.Stop(ctx); err != nil {
		t.Fatalf("Stop after Kill: %v", err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatalf("Start of a running node: %v", err)
	}
	if _, err := p.LSNs(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitStreaming(ctx); err != nil {
		t.Fatalf("WaitStreaming without standbys: %v", err)
	}
}

func TestOrphanedTempClusterIsSwept(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := startSmall(t, Options{Name: "orphan"})
	if !ownerAlive(c.Dir()) {
		t.Fatal("live owner reported dead")
	}
	p := c.Primary()
	pid, ok := p.livePostmaster()
	if !ok {
		t.Fatal("primary not running")
	}
	// Pretend the owning process died: a pid with the wrong start time.
	if err := os.WriteFile(filepath.Join(c.Dir(), ownerFile), []byte("1 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if ownerAlive(c.Dir()) {
		t.Fatal("dead owner reported alive")
	}
	// A cluster in a given dir (no owner file) must survive the sweep.
	kept, err := os.MkdirTemp("", "pgcluster-kept-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(kept) })
	sweepOnce = sync.Once{}
	c.sweepOrphans(ctx)
	if _, err := os.Stat(c.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("orphaned dir still there: %v", err)
	}
	if pidAlive(pid) {
		t.Fatalf("orphaned postmaster %d still alive", pid)
	}
	if _, err := os.Stat(kept); err != nil {
		t.Fatalf("sweep removed a dir without owner file: %v", err)
	}
}

// A caller-given dir under t.TempDir() (0700, root's when we are root) still
// works: its ancestors are made traversable for the server user.
func TestStartInTestTempDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "cluster")
	c := startSmall(t, Options{Name: "tmpdir", Dir: dir})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Primary().LSNs(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Dir() != dir || !strings.HasPrefix(c.Primary().Dir, dir) {
		t.Fatalf("cluster dir %s, primary data %s; want under %s", c.Dir(), c.Primary().Dir, dir)
	}
}
