package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
)

func init() {
	// The reaper (Ryuk) is an image pulled from a registry, which the test
	// machines cannot reach; the testbed removes what it creates itself
	// (Close, t.Cleanup) and reaps what a crashed run left (reapStale).
	// testcontainers reads this once, at first use, which is after init.
	_ = os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
}

// Labels put on every container and network the testbed creates.
const (
	LabelTestbed  = "dbproxy.testbed"          // always "1"
	labelRun      = "dbproxy.testbed.run"      // run id of the creating process
	labelPID      = "dbproxy.testbed.pid"      // pid of the creating process
	labelPIDStart = "dbproxy.testbed.pidstart" // its start time (clock ticks since boot), against pid reuse
	labelRole     = "dbproxy.testbed.role"     // "postgres", "etcd"
)

var (
	runOnce  sync.Once
	runID    string
	pidStart string
)

// RunID identifies this process's testbed objects: every container and
// network it creates carries it in the label dbproxy.testbed.run.
func RunID() string {
	runOnce.Do(func() {
		var b [6]byte
		_, _ = rand.Read(b[:])
		runID = hex.EncodeToString(b[:])
		pidStart, _ = processStart(os.Getpid())
	})
	return runID
}

// labels returns the labels for a new object of this run.
func labels(role string) map[string]string {
	RunID()
	l := map[string]string{
		LabelTestbed:  "1",
		labelRun:      runID,
		labelPID:      strconv.Itoa(os.Getpid()),
		labelPIDStart: pidStart,
	}
	if role != "" {
		l[labelRole] = role
	}
	return l
}

// processStart returns field 22 of /proc/<pid>/stat (start time in clock
// ticks after boot); with the pid it identifies a process across pid reuse.
// A zombie (exited, not yet reaped) counts as no process.
func processStart(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	s := string(b)
	// The command name (field 2) is parenthesised and may hold spaces.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); field 22 is f[19].
	if len(f) < 20 {
		return "", errors.New("short stat")
	}
	if f[0] == "Z" || f[0] == "X" {
		return "", errors.New("process exited")
	}
	return f[19], nil
}

// ownerGone reports whether the process that created an object with these
// labels has exited.
func ownerGone(l map[string]string) bool {
	if l[labelRun] == RunID() {
		return false
	}
	pid, err := strconv.Atoi(l[labelPID])
	if err != nil || pid <= 0 {
		return true
	}
	start, err := processStart(pid)
	if err != nil {
		return true // no such process
	}
	return start != l[labelPIDStart]
}

// dockerClient is the engine connection every testbed object shares; it is
// opened on first use and lives as long as the process (one HTTP client over
// the engine's unix socket).
var (
	dockerMu  sync.Mutex
	dockerCli *testcontainers.DockerClient
	reapOnce  sync.Once
	reapErr   error
)

// docker returns the shared engine client, and on first use removes what
// crashed earlier runs left behind.
func docker(ctx context.Context) (*testcontainers.DockerClient, error) {
	dockerMu.Lock()
	defer dockerMu.Unlock()
	if dockerCli == nil {
		c, err := testcontainers.NewDockerClientWithOpts(ctx)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoEngine, err)
		}
		if _, err := c.Ping(ctx, client.PingOptions{}); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("%w: %w", ErrNoEngine, err)
		}
		dockerCli = c
	}
	reapOnce.Do(func() { reapErr = reapStale(ctx, dockerCli) })
	if reapErr != nil {
		return nil, reapErr
	}
	return dockerCli, nil
}

// reapStale removes testbed containers and networks whose creating process
// is gone (a crashed or killed test run). Objects of live processes, such as
// another test package running concurrently, are left alone.
func reapStale(ctx context.Context, c *testcontainers.DockerClient) error {
	f := client.Filters{}.Add("label", LabelTestbed+"=1")
	cs, err := c.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return fmt.Errorf("testbed: list stale containers: %w", err)
	}
	var errs []error
	for _, ct := range cs.Items {
		if !ownerGone(ct.Labels) {
			continue
		}
		if _, err := c.ContainerRemove(ctx, ct.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("testbed: remove stale container %s: %w", ct.ID[:12], err))
		}
	}
	ns, err := c.NetworkList(ctx, client.NetworkListOptions{Filters: f})
	if err != nil {
		return fmt.Errorf("testbed: list stale networks: %w", err)
	}
	for _, n := range ns.Items {
		if !ownerGone(n.Labels) {
			continue
		}
		if _, err := c.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{}); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("testbed: remove stale network %s: %w", n.Name, err))
		}
	}
	return errors.Join(errs...)
}

// cleanupContext is the context cleanups run under: a fresh one, since the
// test's own may be done, bounded so a wedged engine cannot hang a run.
func cleanupContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*time.Minute)
}
