package pgcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// A process that dies without calling Stop (a test binary killed by `go test
// -timeout`, a crash) leaves its temporary cluster running. On a small shared
// machine those servers add up, so temporary clusters record their owner
// (pid and process start time) in an "owner" file, and the first Start of
// every process stops the servers of temporary clusters whose owner is gone
// and removes their directories. Clusters in a caller-given Dir are never
// touched.

const ownerFile = "owner"

var sweepOnce sync.Once

// writeOwner records this process as the owner of a temporary cluster dir.
func writeOwner(dir string) error {
	st, ok := procStartTime(os.Getpid())
	if !ok {
		return fmt.Errorf("pgcluster: cannot read own process start time")
	}
	return os.WriteFile(filepath.Join(dir, ownerFile), fmt.Appendf(nil, "%d %d\n", os.Getpid(), st), 0o644)
}

// procStartTime returns field 22 of /proc/<pid>/stat (start time in ticks
// since boot), which tells a recycled pid from the original process.
func procStartTime(pid int) (uint64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return 0, false
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return 0, false
	}
	v, err := strconv.ParseUint(fields[19], 10, 64)
	return v, err == nil
}

// ownerAlive reports whether the owner recorded in dir still runs. Unreadable
// or malformed owner files count as alive (never destroy what we don't understand).
func ownerAlive(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return true
	}
	var pid int
	var start uint64
	if _, err := fmt.Sscanf(string(b), "%d %d", &pid, &start); err != nil || pid <= 0 {
		return true
	}
	st, ok := procStartTime(pid)
	return ok && st == start
}

// sweepOrphans stops and removes temporary clusters whose owner died.
func (c *Cluster) sweepOrphans(ctx context.Context) {
	sweepOnce.Do(func() {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		owners, _ := filepath.Glob(filepath.Join(os.TempDir(), "pgcluster-*", ownerFile))
		for _, f := range owners {
			dir := filepath.Dir(f)
			if ownerAlive(dir) || ctx.Err() != nil {
				continue
			}
			datas, _ := filepath.Glob(filepath.Join(dir, "*", "data"))
			for _, data := range datas {
				n := &Node{Name: filepath.Base(filepath.Dir(data)), Dir: data, nodeDir: filepath.Dir(data), c: c}
				if err := n.stopLocked(ctx, false); err != nil {
					c.logf("pgcluster: orphaned node %s: %v", data, err)
				}
			}
			if err := os.RemoveAll(dir); err != nil {
				c.logf("pgcluster: remove orphaned cluster %s: %v", dir, err)
				continue
			}
			c.logf("pgcluster: removed orphaned cluster %s (its process is gone)", dir)
		}
	})
}
