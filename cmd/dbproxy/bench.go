package main

import (
	"context"
	"errors"
	"io"
)

// runBench is replaced by the benchmark harness's command.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench [--quick] --out DIR", "Benchmarks dbproxy against direct connections, PgBouncer and Pgpool-II.", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return errors.New("the benchmark harness is not built into this binary yet")
}
