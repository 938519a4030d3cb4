package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// hotSetScript is the hot-set read of benchmarks.md: one of 1,000 accounts.
const hotSetScript = `\set aid random(1, 1000)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
`

// rangeRows is how many consecutive accounts the range-scan reads.
const rangeRows = 10000

// rangeScanScript is the range-scan read: rangeRows consecutive accounts
// (about 1 MB of rows) from a random start, a long result streamed through
// the target.
func rangeScanScript(scale int) string {
	return fmt.Sprintf("\\set aid random(1, %d)\nSELECT * FROM pgbench_accounts WHERE aid BETWEEN :aid AND :aid + %d;\n",
		scale*100000-rangeRows+1, rangeRows-1)
}

// samplingRate limits pgbench's per-transaction log (-l) to a tenth of the
// transactions; percentiles are computed from that sample.
const samplingRate = 0.1

// pgbenchOutput is what runPgbench reads from pgbench's summary and log.
type pgbenchOutput struct {
	tps          float64
	latAvgMs     float64
	transactions int64
	failed       int64
	samples      []time.Duration
	exitErr      error  // pgbench exited non-zero
	errLine      string // first error pgbench printed
}

var (
	reTPS       = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	reLatAvg    = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	reProcessed = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	reFailed    = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
)

// runPgbench runs pgbench (a separate process: it is the load generator)
// against ep and parses its summary and per-transaction log.
func (e *env) runPgbench(ctx context.Context, w Workload, ep endpoint, dur time.Duration) (*pgbenchOutput, error) {
	dir, err := os.MkdirTemp(e.work, "pgbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	args := []string{e.pgbench, "-h", ep.host, "-p", strconv.Itoa(ep.port), "-U", benchUser,
		"-n", "-c", strconv.Itoa(w.Clients), "-j", "2", "-T", strconv.Itoa(int(dur.Seconds())),
		"-M", w.Mode, "-l", "--log-prefix=" + filepath.Join(dir, "tx"),
		"--sampling-rate=" + strconv.FormatFloat(samplingRate, 'f', -1, 64)}
	script := "" // a custom script (-f)
	switch w.Kind {
	case KindSelectOnly:
		args = append(args, "-S")
	case KindTPCB:
	case KindHotSet:
		script = hotSetScript
	case KindRangeScan:
		script = rangeScanScript(e.cfg.Scale)
	default:
		return nil, fmt.Errorf("not a pgbench workload: %s", w.Kind)
	}
	if script != "" {
		f := filepath.Join(dir, "script.sql")
		if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
			return nil, err
		}
		args = append(args, "-f", f)
	}
	args = append(args, benchDB)

	var stdout, stderr strings.Builder
	// pgbench runs at most dur plus connection setup; a stuck run is killed.
	rctx, cancel := context.WithTimeout(ctx, dur+2*time.Minute)
	defer cancel()
	runErr := runCmdTo(rctx, []string{"PGPASSWORD=" + benchPassword, "PGCONNECT_TIMEOUT=30"}, &stdout, &stderr, args...)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	out := &pgbenchOutput{}
	var ee *exec.ExitError
	if runErr != nil && !errors.As(runErr, &ee) {
		if rctx.Err() != nil {
			return nil, fmt.Errorf("pgbench did not finish within %s", dur+2*time.Minute)
		}
		return nil, fmt.Errorf("pgbench: %w", runErr)
	}
	out.exitErr = runErr
	parsePgbenchSummary(stdout.String(), out)
	out.errLine = firstErrorLine(stderr.String())
	if out.exitErr != nil && out.errLine == "" {
		// No error line (pgbench crashed, e.g. on a malformed result):
		// say how it ended and what it printed, without its banner.
		var msgs []string
		for _, l := range strings.Split(stderr.String()+stdout.String(), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "pgbench (") && len(msgs) < 3 {
				msgs = append(msgs, l)
			}
		}
		out.errLine = out.exitErr.Error()
		if len(msgs) > 0 {
			out.errLine += ": " + strings.Join(msgs, " / ")
		}
	}
	out.samples, err = readPgbenchLogs(dir)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func parsePgbenchSummary(s string, out *pgbenchOutput) {
	if m := reTPS.FindStringSubmatch(s); m != nil {
		out.tps, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := reLatAvg.FindStringSubmatch(s); m != nil {
		out.latAvgMs, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := reProcessed.FindStringSubmatch(s); m != nil {
		out.transactions, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reFailed.FindStringSubmatch(s); m != nil {
		out.failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
}

// firstErrorLine returns the first line of pgbench's stderr that reports an
// error, without the "pgbench: error: " prefix.
func firstErrorLine(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		l = strings.TrimSpace(l)
		if strings.Contains(l, "error") || strings.Contains(l, "fatal") || strings.Contains(l, "ERROR") {
			for _, p := range []string{"pgbench: error: ", "pgbench: fatal: "} {
				l = strings.TrimPrefix(l, p)
			}
			// "could not count number of branches:" continues on the next line.
			if strings.HasSuffix(l, ":") && i+1 < len(lines) {
				l += " " + strings.TrimSpace(strings.TrimPrefix(lines[i+1], "pgbench: detail: "))
			}
			return l
		}
	}
	return ""
}

// readPgbenchLogs reads the per-transaction logs pgbench -l wrote into dir
// ("client_id transaction_no time script_no time_epoch time_us", time in
// µs) and returns the latencies of completed transactions.
func readPgbenchLogs(dir string) ([]time.Duration, error) {
	files, err := filepath.Glob(filepath.Join(dir, "tx.*"))
	if err != nil {
		return nil, err
	}
	var out []time.Duration
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 3 {
				continue
			}
			us, err := strconv.ParseInt(fields[2], 10, 64) // "failed"/"skipped" are not numbers
			if err != nil {
				continue
			}
			out = append(out, time.Duration(us)*time.Microsecond)
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
