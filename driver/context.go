package driver

import (
	"context"
	"sync"
	"time"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
)

// Causal consistency with database/sql.
//
// database/sql has no per-statement options, so the driver reads them from
// the context of each call (ExecContext, QueryContext, BeginTx, ...):
//
//	ctx, tr := driver.WithCausalTracking(ctx)  // install a sink
//	_, err := db.ExecContext(ctx, "UPDATE accounts SET ... WHERE id = $1", id)
//	tok := tr.Token()                          // or driver.CausalToken(ctx)
//	// ... hand tok to another goroutine, process or service ...
//	rctx := driver.WithCausalToken(ctx, tok)
//	row := db.QueryRowContext(rctx, "SELECT ... FROM accounts WHERE id = $1", id)
//
// A token is the router's CausalToken text ("s0:0/16B3748,s1:0/1A2B3C"),
// the same value the proxy reports as ParameterStatus dbproxy.causal_token
// and accepts with SET dbproxy.causal_token, so tokens move freely between
// driver and proxy clients.

type (
	trackerKey   struct{}
	tokenErrKey  struct{}
	stalenessKey struct{}
	primaryKey   struct{}
)

// Tracker collects the commit positions of the writes run with a context
// made by WithCausalTracking (autocommit writes and committed write
// transactions, on any connection of any *sql.DB of this driver). It is
// safe for concurrent use.
type Tracker struct {
	mu  sync.Mutex
	tok router.CausalToken
}

// Token returns the text form of every position recorded so far ("" when
// no write committed yet). Pass it to WithCausalToken (driver) or SET
// dbproxy.causal_token (proxy) before a read that must see those writes.
func (t *Tracker) Token() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tok.String()
}

// CausalToken returns the recorded positions as a router.CausalToken.
func (t *Tracker) CausalToken() router.CausalToken {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tok
}

func (t *Tracker) add(shardName string, lsn replica.LSN) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.tok = t.tok.With(shardName, lsn)
	t.mu.Unlock()
}

// WithCausalTracking returns a context carrying a new Tracker, and the
// Tracker. For a transaction, install it on the context given to BeginTx:
// Commit has no context of its own and records into BeginTx's tracker.
func WithCausalTracking(ctx context.Context) (context.Context, *Tracker) {
	t := &Tracker{}
	return context.WithValue(ctx, trackerKey{}, t), t
}

func trackerFrom(ctx context.Context) *Tracker {
	t, _ := ctx.Value(trackerKey{}).(*Tracker)
	return t
}

// CausalToken returns the token of the Tracker installed in ctx by
// WithCausalTracking ("" when there is none or nothing was written yet).
func CausalToken(ctx context.Context) string {
	if t := trackerFrom(ctx); t != nil {
		return t.Token()
	}
	return ""
}

// WithCausalToken returns a context whose reads only run on nodes that have
// replayed the positions of tok (a token from Tracker.Token, CausalToken or
// the proxy's dbproxy.causal_token); a standby that has not caught up
// within the configured catch-up wait is skipped for the primary. Tokens
// given several times (nested contexts) are merged. An empty tok changes
// nothing. A malformed tok makes every statement run with the context fail
// with an error wrapping router.ErrBadCausalToken (SQLSTATE 22023).
func WithCausalToken(ctx context.Context, tok string) context.Context {
	t, err := router.ParseCausalToken(tok)
	if err != nil {
		return context.WithValue(ctx, tokenErrKey{}, err)
	}
	if t.IsZero() {
		return ctx
	}
	return router.WithCausalToken(ctx, t)
}

// WithMaxStaleness returns a context whose replica reads accept a standby
// lagging at most d behind its primary (overriding the configured
// routing.max_staleness and SET dbproxy.max_staleness). d <= 0 means the
// primary only, like WithPrimary.
func WithMaxStaleness(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, stalenessKey{}, d)
}

// WithPrimary returns a context whose statements all run on primaries.
// Inside a transaction it only matters for the context given to BeginTx.
func WithPrimary(ctx context.Context) context.Context {
	return context.WithValue(ctx, primaryKey{}, true)
}

// callOptions are the per-call settings read from a context.
type callOptions struct {
	tracker      *Tracker
	primary      bool
	staleness    time.Duration
	hasStaleness bool
	tokenErr     error
}

func optionsFrom(ctx context.Context) callOptions {
	var o callOptions
	o.tracker = trackerFrom(ctx)
	o.primary, _ = ctx.Value(primaryKey{}).(bool)
	o.staleness, o.hasStaleness = ctx.Value(stalenessKey{}).(time.Duration)
	if o.hasStaleness && o.staleness <= 0 {
		o.primary = true
	}
	o.tokenErr, _ = ctx.Value(tokenErrKey{}).(error)
	return o
}
