package driver

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/dbproxy/dbproxy/cache"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/dbproxy/dbproxy/shard"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// conn is one database/sql connection: a router.Session and, only while a
// transaction is open, the backend lease it is pinned to. database/sql
// uses a conn from one goroutine at a time.
type conn struct {
	c     *Connector
	sets  []*replica.Set
	cache *cache.Cache // nil: no read-result cache
	sess  *router.Session
	tm    *pgtype.Map
	args  encodedArgs
	memo  cacheMemo // cached-read path (see cache.go)

	pin      *backend   // leased backend while the session is in a transaction
	txWrote  bool       // a statement of the open transaction wrote
	txTables []string   // tables written by the open transaction (invalidated at commit)
	trackers []*Tracker // trackers seen during the open transaction

	tx        *tx   // the database/sql transaction in progress
	txBroken  error // the open database/sql transaction was lost (its backend failed)
	bad       bool  // unusable (database/sql must discard it)
	replayVer uint64
	replayKey string

	ownsConnector bool // opened by Driver.Open: Close closes the Connector
}

var (
	_ driver.Conn               = (*conn)(nil)
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
	_ driver.Pinger             = (*conn)(nil)
	_ driver.SessionResetter    = (*conn)(nil)
	_ driver.Validator          = (*conn)(nil)
	_ driver.NamedValueChecker  = (*conn)(nil)
)

func newConn(c *Connector, sets []*replica.Set, ch *cache.Cache) *conn {
	return &conn{c: c, sets: sets, cache: ch, sess: c.router.NewSession(), tm: pgtype.NewMap()}
}

// backend is a leased backend connection and where it is.
type backend struct {
	lease   *replica.Lease
	pc      *pgconn.PgConn
	shard   shard.ID
	primary bool
}

// backendState is what the driver knows about one pooled backend
// connection (kept in pgconn's CustomData): the session settings it has
// and the statements the driver prepared on it.
type backendState struct {
	replayKey string
	stmts     map[string]*pgconn.StatementDescription // by SQL text and parameter OIDs
	next      int                                     // sequence for statement names
}

// maxPrepared bounds the statements prepared per backend connection;
// beyond it statements run unprepared (Parse every time).
const maxPrepared = 256

func stateOf(pc *pgconn.PgConn) *backendState {
	bs, _ := pc.CustomData()[backendStateKey].(*backendState)
	if bs == nil {
		bs = &backendState{stmts: map[string]*pgconn.StatementDescription{}}
		pc.CustomData()[backendStateKey] = bs
	}
	return bs
}

// extended starts sqlText with args in the extended protocol: through a
// statement prepared once per backend (kept in its backendState), or
// unprepared when the cache is full. A failed Parse is returned as the
// statement's error.
func extended(ctx context.Context, pc *pgconn.PgConn, sqlText string, args *encodedArgs) (*pgconn.ResultReader, string, error) {
	bs := stateOf(pc)
	key := stmtKey(sqlText, args.oids)
	sd := bs.stmts[key]
	if sd == nil && len(bs.stmts) < maxPrepared {
		bs.next++
		var err error
		sd, err = pc.Prepare(ctx, "dbproxy_"+strconv.Itoa(bs.next), sqlText, args.oids)
		if err != nil {
			return nil, "", err
		}
		bs.stmts[key] = sd
	}
	if sd == nil {
		return pc.ExecParams(ctx, sqlText, args.values, args.oids, args.formats, nil), "", nil
	}
	return pc.ExecStatement(ctx, sd, args.values, args.formats, nil), key, nil
}

func stmtKey(sqlText string, oids []uint32) string {
	if len(oids) == 0 {
		return sqlText
	}
	b := make([]byte, 0, len(sqlText)+1+4*len(oids))
	b = append(b, sqlText...)
	b = append(b, 0)
	for _, o := range oids {
		b = append(b, byte(o>>24), byte(o>>16), byte(o>>8), byte(o))
	}
	return string(b)
}

// forgetStatement drops a cached statement the server no longer accepts
// (deallocated behind the driver's back, or its result type changed).
func forgetStatement(pc *pgconn.PgConn, key string, err error) {
	var pe *pgconn.PgError
	if key == "" || !errors.As(err, &pe) {
		return
	}
	if pe.Code == "26000" || pe.Code == "0A000" && strings.Contains(pe.Message, "cached plan") {
		delete(stateOf(pc).stmts, key)
	}
}

const backendStateKey = "dbproxy.driver.backend"

// CheckNamedValue implements driver.NamedValueChecker.
func (cn *conn) CheckNamedValue(nv *driver.NamedValue) error { return checkNamedValue(cn.tm, nv) }

// Prepare implements driver.Conn.
func (cn *conn) Prepare(query string) (driver.Stmt, error) {
	return cn.PrepareContext(context.Background(), query)
}

// PrepareContext classifies query and returns a statement that is routed
// anew at every execution (never pinned to a node).
func (cn *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if err := cn.usable(); err != nil {
		return nil, err
	}
	st, err := router.Classify(query)
	if err != nil {
		return nil, err
	}
	return &stmt{cn: cn, st: st}, nil
}

// Begin implements driver.Conn.
func (cn *conn) Begin() (driver.Tx, error) {
	return cn.BeginTx(context.Background(), driver.TxOptions{})
}

// BeginTx starts a transaction: BEGIN [ISOLATION LEVEL ...] [READ ONLY],
// deferred by the router until the first statement, which pins the
// transaction to that statement's shard (a read-only transaction may run
// on a fresh standby).
func (cn *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if err := cn.usable(); err != nil {
		return nil, err
	}
	if cn.sess.InTransaction() {
		return nil, errors.New("dbproxy driver: a transaction is already open on this connection")
	}
	var b strings.Builder
	b.WriteString("BEGIN")
	serializable := false
	switch sql.IsolationLevel(opts.Isolation) {
	case sql.LevelDefault:
	case sql.LevelReadUncommitted:
		b.WriteString(" ISOLATION LEVEL READ UNCOMMITTED")
	case sql.LevelReadCommitted:
		b.WriteString(" ISOLATION LEVEL READ COMMITTED")
	case sql.LevelRepeatableRead, sql.LevelSnapshot:
		b.WriteString(" ISOLATION LEVEL REPEATABLE READ")
	case sql.LevelSerializable:
		b.WriteString(" ISOLATION LEVEL SERIALIZABLE")
		serializable = true
	default:
		return nil, fmt.Errorf("dbproxy driver: isolation level %v is not supported by PostgreSQL", sql.IsolationLevel(opts.Isolation))
	}
	if opts.ReadOnly {
		b.WriteString(" READ ONLY")
	}
	t := &tx{cn: cn, ctx: context.WithoutCancel(ctx), opts: optionsFrom(ctx)}
	// PostgreSQL refuses SERIALIZABLE on a hot standby.
	t.opts.primary = t.opts.primary || serializable
	if _, err := cn.run(ctx, b.String(), nil, false); err != nil {
		return nil, err
	}
	cn.tx, cn.txBroken = t, nil
	return t, nil
}

// ExecContext implements driver.ExecerContext.
func (cn *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	st, err := router.Classify(query)
	if err != nil {
		return nil, err
	}
	res, err := cn.execStatement(ctx, st, args, false)
	if err != nil {
		return nil, err
	}
	return res.(driver.Result), nil
}

// QueryContext implements driver.QueryerContext.
func (cn *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	st, err := router.Classify(query)
	if err != nil {
		return nil, err
	}
	res, err := cn.execStatement(ctx, st, args, true)
	if err != nil {
		return nil, err
	}
	return res.(driver.Rows), nil
}

// Ping checks that the default shard's primary answers.
func (cn *conn) Ping(ctx context.Context) error {
	if err := cn.usable(); err != nil {
		return err
	}
	if cn.pin != nil {
		return cn.pin.pc.Ping(ctx)
	}
	set := cn.sets[cn.c.topo.DefaultShard()]
	l, err := set.Primary().Acquire(ctx)
	if err != nil {
		return err
	}
	err = l.Conn().Ping(ctx)
	l.Release(err)
	return err
}

// ResetSession implements driver.SessionResetter: a connection left inside
// a transaction (BEGIN run by hand and never ended) is discarded.
func (cn *conn) ResetSession(ctx context.Context) error {
	if cn.bad || cn.c.isClosed() || cn.sess.InTransaction() || cn.pin != nil {
		return driver.ErrBadConn
	}
	return nil
}

// IsValid implements driver.Validator.
func (cn *conn) IsValid() bool { return !cn.bad && !cn.c.isClosed() }

// Close releases the connection; a backend still pinned by an open
// transaction is closed (which rolls the transaction back).
func (cn *conn) Close() error {
	if cn.pin != nil {
		cn.pin.lease.Discard(nil)
		cn.pin = nil
	}
	cn.bad = true
	if cn.ownsConnector {
		return cn.c.Close()
	}
	return nil
}

func (cn *conn) usable() error {
	if cn.bad {
		return driver.ErrBadConn
	}
	if cn.c.isClosed() {
		return ErrClosed
	}
	return nil
}

// sessionKey returns the session's replay statements as one string, the
// state a backend must be in for this session.
func (cn *conn) sessionKey() string {
	if v := cn.sess.ReplayVersion(); v != cn.replayVer {
		cn.replayVer = v
		cn.replayKey = strings.Join(cn.sess.Replay(), ";\n")
	}
	return cn.replayKey
}

// syncBackend brings a freshly leased backend to the session's settings
// (SET ..., SQL PREPARE) if it does not have them already.
func (cn *conn) syncBackend(ctx context.Context, b *backend, key string) error {
	bs := stateOf(b.pc)
	if bs.replayKey == key {
		return nil
	}
	q := key
	if bs.replayKey != "" {
		q = "RESET ALL;\nDEALLOCATE ALL"
		if key != "" {
			q += ";\n" + key
		}
	}
	bs.replayKey = "\x00unknown" // until the replay succeeds
	if bs.replayKey != "" {
		clear(bs.stmts) // DEALLOCATE ALL
	}
	if _, err := b.pc.Exec(ctx, q).ReadAll(); err != nil {
		return fmt.Errorf("dbproxy driver: restoring session settings on %s: %w", b.lease.Node().Name(), err)
	}
	bs.replayKey = key
	return nil
}

// acquire leases a backend on shard id: its primary, or a standby chosen
// by replica.Set.Pick with req (which falls back to the primary).
// key is the session's sessionKey (passed in: acquire may run on several
// goroutines at once for a multi-shard read).
func (cn *conn) acquire(ctx context.Context, id shard.ID, primary bool, req replica.PickRequest, key string) (*backend, error) {
	if int(id) < 0 || int(id) >= len(cn.sets) {
		return nil, fmt.Errorf("dbproxy driver: no replica set for shard %d", id)
	}
	set := cn.sets[id]
	node := set.Primary()
	if !primary {
		n, err := set.Pick(ctx, req)
		if err != nil {
			return nil, err
		}
		node = n
	}
	l, err := node.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	b := &backend{lease: l, pc: l.Conn(), shard: id, primary: node.Role() == replica.RolePrimary}
	if err := cn.syncBackend(ctx, b, key); err != nil {
		release(b, err)
		return nil, err
	}
	return b, nil
}

// release gives b back: pooled when idle and healthy, else closed.
func release(b *backend, err error) {
	if err != nil && !isServerError(err) {
		b.lease.Discard(err)
		return
	}
	b.lease.Release(err)
}

func isServerError(err error) bool {
	var pe *pgconn.PgError
	return err == nil || errors.As(err, &pe)
}

// writes reports whether st may change data, so that a commit after it
// needs a causal position.
func writes(st *router.Statement) bool {
	switch st.Kind {
	case router.KindRead:
		return st.MustPrimary
	case router.KindSession, router.KindTxControl:
		return false
	}
	return true
}

// retryable reports whether a failed attempt may be repeated on another
// backend: nothing reached the server, or the statement only reads
// outside a transaction and the failure is the connection's.
func retryable(err error, readOnly bool) bool {
	if err == nil || isServerError(err) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if pgconn.SafeToRetry(err) {
		return true
	}
	return readOnly && (replica.IsConnFailure(err) || errors.Is(err, replica.ErrNodeUnavailable))
}

const maxAttempts = 3

// recoveryConflict reports whether err is a standby cancelling a
// statement (ERROR) or ending its session (FATAL, when the cancellation
// found it between messages) for a conflict with recovery: 40001, or
// 40P01 for a buffer-pin deadlock. A read may run again elsewhere;
// serializable transactions, the other source of 40001, do not exist on a
// standby.
func recoveryConflict(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// execStatement routes and runs one classified statement. With wantRows it
// returns driver.Rows, else driver.Result.
func (cn *conn) execStatement(ctx context.Context, st *router.Statement, args []driver.NamedValue, wantRows bool) (any, error) {
	if err := cn.usable(); err != nil {
		return nil, err
	}
	if cn.txBroken != nil {
		return nil, fmt.Errorf("dbproxy driver: transaction lost: %w", cn.txBroken)
	}
	if err := encodeArgs(cn.tm, args, &cn.args); err != nil {
		return nil, err
	}
	return cn.runStatement(ctx, st, &cn.args, wantRows)
}

// run executes query with no arguments (transaction control from Tx).
func (cn *conn) run(ctx context.Context, query string, args []driver.NamedValue, wantRows bool) (any, error) {
	st, err := router.Classify(query)
	if err != nil {
		return nil, err
	}
	if err := cn.usable(); err != nil {
		return nil, err
	}
	if err := encodeArgs(cn.tm, args, &cn.args); err != nil {
		return nil, err
	}
	return cn.runStatement(ctx, st, &cn.args, wantRows)
}

func (cn *conn) runStatement(ctx context.Context, st *router.Statement, args *encodedArgs, wantRows bool) (any, error) {
	o := optionsFrom(ctx)
	if o.tokenErr != nil {
		return nil, o.tokenErr
	}
	d, err := cn.c.router.Route(ctx, cn.sess, st, args.params)
	if err != nil {
		return nil, err
	}
	if cn.tx != nil && !d.Pinned && len(d.Preamble) > 0 {
		// first statement of a transaction: BeginTx's options apply
		o.primary = o.primary || cn.tx.opts.primary
		if !o.hasStaleness && cn.tx.opts.hasStaleness {
			o.staleness, o.hasStaleness = cn.tx.opts.staleness, true
		}
	}
	if d.Action == router.ActionForward && !d.Pinned && d.Target == router.TargetReplica {
		switch {
		case o.primary:
			d.Target = router.TargetPrimary
		case o.hasStaleness:
			d.MaxStaleness = o.staleness
		}
	}
	if o.tracker != nil && cn.sess.InTransaction() {
		cn.noteTracker(o.tracker)
	}
	switch {
	case st.Listen != nil && d.Action == router.ActionLocal:
		return nil, &pgconn.PgError{Severity: "ERROR", Code: "0A000", Message: "dbproxy driver: " + st.Listen.Tag() + " is not supported: database/sql has no way to deliver notifications",
			Hint: "listen on a connection of its own (pgx's WaitForNotification), directly or through dbproxy serve"}
	case st.SessionLock, st.TempKept, st.HoldCursor:
		return nil, &pgconn.PgError{Severity: "ERROR", Code: "0A000",
			Message: "dbproxy driver: session-level advisory locks, temporary tables and cursors WITH HOLD that outlive their transaction are not supported: the backend connection is leased per transaction",
			Hint:    "use pg_advisory_xact_lock, ON COMMIT DROP, or a cursor inside the transaction"}
	case d.CopySplit != nil, d.CopyConcat:
		return nil, &pgconn.PgError{Severity: "ERROR", Code: "0A000", Message: "dbproxy driver: COPY of a sharded table is not supported",
			Hint: "use INSERT, or COPY through dbproxy serve"}
	case d.Action == router.ActionLocal:
		if wantRows {
			return &bufRows{}, nil
		}
		return result{tag: pgconn.NewCommandTag(d.Tag)}, nil
	case len(d.Shards) == 0:
		return nil, fmt.Errorf("dbproxy driver: router returned no shard for %q", st.Command)
	case len(d.Shards) > 1:
		return cn.runMulti(ctx, d, st, args, wantRows, o)
	}
	return cn.runSingle(ctx, d, st, args, wantRows, o)
}

func (cn *conn) noteTracker(t *Tracker) {
	for _, x := range cn.trackers {
		if x == t {
			return
		}
	}
	cn.trackers = append(cn.trackers, t)
}

// runSingle runs a one-shard decision: on the pinned backend, or on a
// backend leased for it (kept pinned when the statement leaves a
// transaction open).
func (cn *conn) runSingle(ctx context.Context, d router.Decision, st *router.Statement, args *encodedArgs, wantRows bool, o callOptions) (any, error) {
	return cn.runSingleAttempts(ctx, d, st, args, wantRows, o, maxAttempts)
}

// runSingleAttempts is runSingle with at most attempts tries.
func (cn *conn) runSingleAttempts(ctx context.Context, d router.Decision, st *router.Statement, args *encodedArgs, wantRows bool, o callOptions, attempts int) (any, error) {
	sqlText := d.SQL
	if sqlText == "" {
		sqlText = st.SQL
	}
	if wantRows && cn.useCache(&d, st, o) {
		return cn.cachedQuery(ctx, d, st, sqlText, args)
	}
	target := d.Shards[0]
	readOnly := !d.Pinned && len(d.Preamble) == 0 && !writes(st) && !cn.sess.InTransaction()
	var lastErr error
	for attempt := 0; attempt < attempts; attempt++ {
		b := cn.pin
		if d.Pinned {
			if b == nil {
				return nil, cn.loseTx(errors.New("dbproxy driver: transaction backend is gone"))
			}
		} else {
			if b != nil {
				// a pinned backend the router no longer uses: give it back
				release(b, nil)
				cn.pin = nil
			}
			var err error
			b, err = cn.acquire(ctx, target.ID, d.Target == router.TargetPrimary, d.Pick(target), cn.sessionKey())
			if err != nil {
				if retryable(err, readOnly) && ctx.Err() == nil && attempt+1 < attempts {
					lastErr = err
					continue
				}
				if len(d.Preamble) > 0 {
					cn.sess.Observe('I') // the deferred BEGIN never ran
					return nil, cn.loseTx(err)
				}
				return nil, cn.failed(err, false)
			}
			if len(d.Preamble) > 0 {
				if _, err := b.pc.Exec(ctx, strings.Join(d.Preamble, ";\n")).ReadAll(); err != nil {
					cn.afterStatement(ctx, b, st, "", err, o)
					return nil, err
				}
			}
		}
		// A read a standby cancels for a conflict with recovery runs again
		// (another standby, or the primary), as long as none of its rows
		// reached the caller.
		onStandby := readOnly && !d.Pinned && !b.primary
		again := func(err error) bool {
			return err != nil && !d.Pinned && (retryable(err, readOnly) || onStandby && recoveryConflict(err)) && ctx.Err() == nil && attempt+1 < attempts
		}
		if wantRows {
			rows, err := cn.query(ctx, b, st, sqlText, args, o)
			if again(err) {
				lastErr = err
				continue
			}
			if sr, ok := rows.(*streamRows); ok && onStandby && attempt+1 < attempts {
				left := attempts - attempt - 1
				sr.again = func() (any, error) { return cn.runSingleAttempts(ctx, d, st, args, true, o, left) }
			}
			return rows, err
		}
		tag, err := cn.exec(ctx, b, st, sqlText, args)
		if again(err) {
			release(b, err)
			lastErr = err
			continue
		}
		cn.afterStatement(ctx, b, st, tag.String(), err, o)
		if err != nil {
			return nil, cn.failed(err, true)
		}
		return result{tag: tag}, nil
	}
	return nil, cn.failed(lastErr, false)
}

// failed shapes the error of a statement: driver.ErrBadConn (joined with
// the cause) only when nothing reached a server and no session state would
// be lost by database/sql retrying on another connection.
func (cn *conn) failed(err error, sent bool) error {
	if err == nil {
		return nil
	}
	if pgconn.SafeToRetry(err) && !cn.sess.InTransaction() && cn.tx == nil && cn.sessionKey() == "" {
		return errors.Join(driver.ErrBadConn, err)
	}
	return err
}

// loseTx records that the open database/sql transaction cannot continue.
func (cn *conn) loseTx(err error) error {
	if cn.tx != nil {
		cn.txBroken = err
	}
	return err
}

// exec runs a statement to completion: simple protocol without arguments
// (so multi-statement strings work), extended protocol with them.
func (cn *conn) exec(ctx context.Context, b *backend, st *router.Statement, sqlText string, args *encodedArgs) (pgconn.CommandTag, error) {
	if len(args.values) == 0 {
		res, err := b.pc.Exec(ctx, sqlText).ReadAll()
		var tag pgconn.CommandTag
		if len(res) > 0 {
			tag = res[len(res)-1].CommandTag
		}
		return tag, err
	}
	rr, key, err := extended(ctx, b.pc, sqlText, args)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := rr.Close()
	forgetStatement(b.pc, key, err)
	return tag, err
}

// query starts a statement and returns rows streaming from b; the
// backend is released (or kept pinned) when the rows are closed.
func (cn *conn) query(ctx context.Context, b *backend, st *router.Statement, sqlText string, args *encodedArgs, o callOptions) (driver.Rows, error) {
	if len(args.values) == 0 && st.NumStatements > 1 {
		// several statements: simple protocol, rows of the last result set
		res, err := b.pc.Exec(ctx, sqlText).ReadAll()
		tag := ""
		if len(res) > 0 {
			tag = res[len(res)-1].CommandTag.String()
		}
		cn.afterStatement(ctx, b, st, tag, err, o)
		if err != nil {
			return nil, cn.failed(err, true)
		}
		out := &bufRows{tm: cn.tm}
		for i := len(res) - 1; i >= 0; i-- {
			if res[i].FieldDescriptions != nil {
				if err := out.fromResult(cn.tm, res[i]); err != nil {
					return nil, err
				}
				break
			}
		}
		return out, nil
	}
	rr, key, err := extended(ctx, b.pc, sqlText, args)
	if err != nil {
		if retryable(err, false) {
			release(b, err) // nothing reached the server: the caller may retry
			return nil, err
		}
		cn.afterStatement(ctx, b, st, "", err, o)
		return nil, cn.failed(err, true)
	}
	fds := rr.FieldDescriptions()
	if fds == nil {
		// no result set (or an error before it): finish now
		tag, err := rr.Close()
		forgetStatement(b.pc, key, err)
		if err != nil && !isServerError(err) && retryable(err, false) {
			// nothing reached the server: the caller may retry
			release(b, err)
			return nil, err
		}
		cn.afterStatement(ctx, b, st, tag.String(), err, o)
		if err != nil {
			return nil, cn.failed(err, true)
		}
		return &bufRows{}, nil
	}
	r := &streamRows{cn: cn, ctx: ctx, b: b, st: st, rr: rr, o: o, key: key}
	r.init(fds)
	return r, nil
}

// afterStatement updates the session from the backend's transaction status
// after a statement ended (err is its error), records causal positions of
// committed writes, and releases the backend when no transaction remains.
func (cn *conn) afterStatement(ctx context.Context, b *backend, st *router.Statement, tag string, err error, o callOptions) {
	broken := b.pc.IsClosed() || (err != nil && !isServerError(err))
	if err != nil && !broken {
		cn.sess.ObserveError()
	}
	status := b.pc.TxStatus()
	if broken {
		status = 'I'
	}
	if err == nil && writes(st) {
		cn.txWrote = true
		cn.txTables = writtenTables(cn.txTables, st)
	}
	cn.sess.Observe(status)
	if status != 'I' {
		cn.pin = b
		if o.tracker != nil {
			cn.noteTracker(o.tracker)
		}
		return
	}
	cn.pin = nil
	if broken {
		b.lease.Discard(err)
		cn.txWrote, cn.trackers, cn.txTables = false, cn.trackers[:0], cn.txTables[:0]
		if cn.tx != nil {
			cn.txBroken = err
		}
		return
	}
	if cn.tx != nil && !cn.tx.ending {
		// the database/sql transaction ended behind its back (its BEGIN
		// failed, or COMMIT/ROLLBACK was sent as a statement)
		cn.txBroken = fmt.Errorf("dbproxy driver: the transaction ended early (%s)", describeEnd(tag, err))
	}
	if cn.txWrote && b.primary && !strings.HasPrefix(tag, "ROLLBACK") && err == nil {
		lsn, lerr := b.lease.CurrentLSN(ctx)
		if lerr == nil {
			cn.recordCommit(b.shard, lsn, o.tracker)
		}
		cn.invalidate(cn.txTables) // the change stream will too; this is sooner
		if lerr != nil && !isServerError(lerr) {
			cn.txWrote, cn.trackers, cn.txTables = false, cn.trackers[:0], cn.txTables[:0]
			b.lease.Discard(lerr)
			return
		}
	}
	cn.txWrote, cn.trackers, cn.txTables = false, cn.trackers[:0], cn.txTables[:0]
	b.lease.Release(err)
}

// recordCommit advances the session's causal position on shard id and
// reports it to the trackers of the statement and of the transaction.
func (cn *conn) recordCommit(id shard.ID, lsn replica.LSN, t *Tracker) {
	cn.sess.AdvanceCausal(id, lsn)
	name := cn.c.names[id]
	t.add(name, lsn)
	for _, x := range cn.trackers {
		if x != t {
			x.add(name, lsn)
		}
	}
}

func describeEnd(tag string, err error) string {
	if err != nil {
		return err.Error()
	}
	if tag == "" {
		return "backend idle"
	}
	return tag
}

// result is the driver.Result of a statement.
type result struct{ tag pgconn.CommandTag }

// LastInsertId is not supported by PostgreSQL: use RETURNING.
func (r result) LastInsertId() (int64, error) {
	return 0, errors.New("dbproxy driver: LastInsertId is not supported; use INSERT ... RETURNING")
}

// RowsAffected returns the count of the command tag.
func (r result) RowsAffected() (int64, error) { return r.tag.RowsAffected(), nil }
