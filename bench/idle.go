package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// fdMargin is the open-files headroom above Config.IdleConnections: the
// clusters' and pools' sockets, log files, the sanity check.
const fdMargin = 1024

// idleSettle is how long idle-conns waits with every connection open
// before reading the target's RSS: long enough for the connections to
// be idle, not just opened (dbproxy frees an idle connection's buffers
// after 1 s of idleness).
const idleSettle = 5 * time.Second

// raiseNoFileLimit makes RLIMIT_NOFILE of this process (inherited by every
// process it starts afterwards: the proxies, the poolers) at least need:
// the soft limit is raised to the hard one, and as root the hard one too
// when it is below need. It fails when the hard limit is below need and
// cannot be raised.
func raiseNoFileLimit(need uint64) (syscall.Rlimit, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return lim, fmt.Errorf("getrlimit(RLIMIT_NOFILE): %w", err)
	}
	want := lim
	if want.Max < need {
		want.Max = need
	}
	want.Cur = want.Max
	// Calling Setrlimit also tells package syscall not to restore the
	// startup soft limit in the processes this one starts.
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		if lim.Max < need {
			return lim, fmt.Errorf("open-files hard limit %d < %d needed to hold the idle connections, and raising it failed (%w); raise it (ulimit -Hn) or run as root", lim.Max, need, err)
		}
		return lim, fmt.Errorf("setrlimit(RLIMIT_NOFILE, %d): %w", want.Cur, err)
	}
	return want, nil
}

// idleOutput is what idle-conns measured.
type idleOutput struct {
	held       int64 // connections open at once when RSS was read
	errors     int64 // connections that failed to open (or to run SELECT 1)
	firstErr   error
	rssBefore  int64 // VmRSS of the target before opening, kB
	rssHeld    int64 // and with every connection open
	elapsed    time.Duration
	notStarted error
}

// runIdleConns opens total connections through target t, w.Clients at a
// time — each authenticated with SCRAM, one SELECT 1 run on it, then left
// idle — reads the VmRSS of the target's process (pid; with tree summed
// over its descendants) before opening and once all are open, and closes
// them all.
func (e *env) runIdleConns(ctx context.Context, t string, w Workload, total int, pid int, tree bool) idleOutput {
	ep, ok := e.endpoints[t]
	if !ok {
		return idleOutput{notStarted: fmt.Errorf("target %s is not running", t)}
	}
	cs := ep.wireConnString()
	out := idleOutput{rssBefore: rssKB(pid, tree)}
	conns := make([]*pgconn.PgConn, total)
	var next, held, failed atomic.Int64
	var errOnce sync.Once
	var wg sync.WaitGroup
	began := time.Now()
	for range w.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(total) || ctx.Err() != nil {
					return
				}
				c, err := openIdle(ctx, cs)
				if err != nil {
					failed.Add(1)
					errOnce.Do(func() { out.firstErr = err })
					continue
				}
				conns[i] = c
				held.Add(1)
			}
		}()
	}
	wg.Wait()
	out.elapsed = time.Since(began)
	out.held, out.errors = held.Load(), failed.Load()
	select {
	case <-ctx.Done():
	case <-time.After(idleSettle):
		out.rssHeld = rssKB(pid, tree)
	}
	closeAll(conns, w.Clients)
	return out
}

// openIdle connects (full authentication) and runs SELECT 1, so the target
// has served the connection once before it idles.
func openIdle(ctx context.Context, connString string) (*pgconn.PgConn, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := pgconn.Connect(cctx, connString)
	if err != nil {
		return nil, err
	}
	if _, err := c.Exec(cctx, "SELECT 1").ReadAll(); err != nil {
		c.Close(cctx)
		return nil, err
	}
	return c, nil
}

// closeAll closes the non-nil conns, workers at a time, each with a short
// deadline of its own (the caller's context may be cancelled by now).
func closeAll(conns []*pgconn.PgConn, workers int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(len(conns)) {
					return
				}
				if c := conns[i]; c != nil {
					cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					c.Close(cctx)
					cancel()
				}
			}
		}()
	}
	wg.Wait()
}

// rssKB returns VmRSS (resident set, kB) of pid, or with tree the sum over
// pid and its descendants.
func rssKB(pid int, tree bool) int64 { return statusSumKB(pid, tree, "VmRSS:") }
