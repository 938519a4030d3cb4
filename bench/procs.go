package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/<pid>/stat. It is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// process is a long-running program the harness started (dbproxy, pgbouncer,
// pgpool) in its own process group, so that Ctrl-C on the terminal does not
// reach it and stop can end it together with its children.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string // file with its stdout and stderr

	done chan struct{}
	err  error // Wait's result, set before done closes
}

// startProcess runs argv as a separate process group, its output appended to
// logPath. cred, when non-nil, switches to that OS user (root only).
func startProcess(name string, argv []string, env []string, cred *syscall.Credential, logPath string) (*process, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: log file: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), env...)
	// Pdeathsig kills it should the harness itself die without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("%s: start %s: %w", name, argv[0], err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { // ends when the process exits; stop waits for it
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs
// the group and waits for the process to be reaped.
func (p *process) stop(grace time.Duration) {
	pgid := p.pid()
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	// Children that outlived their parent (pgpool's) still carry the group.
	syscall.Kill(-pgid, syscall.SIGKILL)
}

// logTail returns the last n lines of the process's log.
func (p *process) logTail(n int) string { return fileTail(p.log, n) }

func fileTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// cpuTicks returns utime+stime+cutime+cstime of pid and of every live
// descendant, in clock ticks. A descendant that exited and was reaped is
// counted in its parent's cutime/cstime, so the sum covers the whole tree.
func cpuTicks(pid int) int64 {
	var total int64
	for _, p := range processTree(pid) {
		f, ok := statFields(p)
		if !ok {
			continue
		}
		for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime (fields 14-17)
			v, _ := strconv.ParseInt(f[i], 10, 64)
			total += v
		}
	}
	return total
}

// statFields returns the fields of /proc/<pid>/stat after the command name:
// f[0] is the state (field 3 of proc(5)).
func statFields(pid int) ([]string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return nil, false
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 15 {
		return nil, false
	}
	return f, true
}

// processTree lists pid and its live descendants.
func processTree(root int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, ok := statFields(pid)
		if !ok {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// peakRSSKB returns VmHWM (peak resident set, kB) of pid, or with tree the
// sum over pid and its descendants (shared pages are then counted once per
// process: an upper bound).
func peakRSSKB(pid int, tree bool) int64 { return statusSumKB(pid, tree, "VmHWM:") }

// statusSumKB returns the kB field key of /proc/<pid>/status, or with tree
// its sum over pid and its descendants.
func statusSumKB(pid int, tree bool, key string) int64 {
	pids := []int{pid}
	if tree {
		pids = processTree(pid)
	}
	var total int64
	for _, p := range pids {
		total += statusKB(p, key)
	}
	return total
}

func statusKB(pid int, key string) int64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, key) {
			v, _ := strconv.ParseInt(strings.Fields(strings.TrimPrefix(line, key))[0], 10, 64)
			return v
		}
	}
	return 0
}

// serverCredential returns the credential to run pgbouncer and pgpool under
// when the harness runs as root (pgbouncer refuses root): the unprivileged
// user pgcluster runs PostgreSQL as. nil when not root.
func serverCredential(name string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("looking up OS user %s: %w", name, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

// chownTree gives dir (and what is in it) to cred's user, so a server
// started under cred can write there.
func chownTree(dir string, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.Lchown(dir+"/"+e.Name(), int(cred.Uid), int(cred.Gid)); err != nil {
			return err
		}
	}
	return os.Chown(dir, int(cred.Uid), int(cred.Gid))
}

// runCmd runs a short program to completion in its own process group,
// killing the group when ctx ends, and returns its combined output.
func runCmd(ctx context.Context, env []string, argv ...string) (string, error) {
	var out strings.Builder
	err := runCmdTo(ctx, env, &out, &out, argv...)
	return out.String(), err
}

// runCmdTo is runCmd with separate stdout and stderr writers.
func runCmdTo(ctx context.Context, env []string, stdout, stderr io.Writer, argv ...string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// lockedWriter serialises writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

var errNotReady = errors.New("not ready")
