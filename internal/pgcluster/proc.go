package pgcluster

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	sigSTOP = syscall.SIGSTOP
	sigKILL = syscall.SIGKILL
	sigCONT = syscall.SIGCONT
)

func syscallKill(pid int, sig syscall.Signal) error { return syscall.Kill(pid, sig) }

// procStat returns the command name, state and parent pid from
// /proc/<pid>/stat.
func procStat(pid int) (comm string, state byte, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, 0, false
	}
	return parseProcStat(string(b))
}

// parseProcStat parses the text of /proc/<pid>/stat.
func parseProcStat(s string) (comm string, state byte, ppid int, ok bool) {
	// comm is in parentheses and may itself contain spaces or ')'.
	open, closeIdx := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closeIdx < open || closeIdx+2 >= len(s) {
		return "", 0, 0, false
	}
	comm = s[open+1 : closeIdx]
	fields := strings.Fields(s[closeIdx+2:])
	if len(fields) < 2 || len(fields[0]) != 1 {
		return "", 0, 0, false
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return "", 0, 0, false
	}
	return comm, fields[0][0], ppid, true
}

// pidAlive reports whether pid is a live (not zombie) PostgreSQL process.
// Checking the command name guards against a recycled pid in a stale
// postmaster.pid.
func pidAlive(pid int) bool {
	comm, state, _, ok := procStat(pid)
	if !ok || state == 'Z' || state == 'X' {
		return false
	}
	return strings.HasPrefix(comm, "postgres") || strings.HasPrefix(comm, "postmaster")
}

// childPIDs lists the live children of pid.
func childPIDs(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var kids []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, state, ppid, ok := procStat(p); ok && ppid == pid && state != 'Z' {
			kids = append(kids, p)
		}
	}
	return kids
}

// waitExit polls until none of pids is alive or d passes; it reports
// whether they all exited.
func waitExit(pids []int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		alive := false
		for _, p := range pids {
			if pidAlive(p) {
				alive = true
				break
			}
		}
		if !alive {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
