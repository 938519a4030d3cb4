package cache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dbproxy/dbproxy/internal/pgdial"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// stream is the change-stream goroutine of one shard.
type stream struct {
	c      *Cache
	cfg    StreamConfig
	pgcfg  *pgconn.Config // replication=database connection
	qcfg   *pgconn.Config // plain connection for visibility checks
	sh     *shardState
	cancel context.CancelFunc
	done   chan struct{}

	kaWanted   atomic.Bool                        // a keepalive was requested by a reader
	recvCancel atomic.Pointer[context.CancelFunc] // cancels the receive in progress
}

// Watch starts the change stream of cfg.Shard's primary on a goroutine the
// Cache owns, replacing (after stopping) a stream already watching that
// shard, for instance after a failover moved the primary. Reads of the
// shard are served only while its stream is up; WaitUp waits for that.
// Watch blocks only while stopping a replaced stream, until ctx ends.
// Errors: ErrInvalidConfig (wrapped), ErrClosed, ctx.Err().
func (c *Cache) Watch(ctx context.Context, cfg StreamConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	pgcfg, err := pgconn.ParseConfig(cfg.ConnString)
	if err != nil {
		return fmt.Errorf("%w: shard %q: %v", ErrInvalidConfig, cfg.Shard, err)
	}
	pgcfg.RuntimeParams["replication"] = "database"
	if pgcfg.RuntimeParams["application_name"] == "" {
		pgcfg.RuntimeParams["application_name"] = cfg.SlotPrefix
	}
	if pgcfg.ConnectTimeout == 0 || pgcfg.ConnectTimeout > cfg.ConnectTimeout {
		pgcfg.ConnectTimeout = cfg.ConnectTimeout
	}
	qcfg, err := pgconn.ParseConfig(cfg.ConnString)
	if err != nil {
		return fmt.Errorf("%w: shard %q: %v", ErrInvalidConfig, cfg.Shard, err)
	}
	delete(qcfg.RuntimeParams, "replication")
	qcfg.RuntimeParams["application_name"] = pgcfg.RuntimeParams["application_name"]
	qcfg.ConnectTimeout = pgcfg.ConnectTimeout
	if err := c.Unwatch(ctx, cfg.Shard); err != nil && !errors.Is(err, ErrNotWatched) {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return ErrClosed
	}
	if c.streams[cfg.Shard] != nil {
		return fmt.Errorf("cache: shard %q: Watch raced with another Watch", cfg.Shard)
	}
	sh := c.shards[cfg.Shard]
	if sh == nil {
		sh = newShardState(cfg.Shard)
		c.shards[cfg.Shard] = sh
	}
	sctx, cancel := context.WithCancel(context.Background()) // owned: ended by Unwatch/Close
	s := &stream{c: c, cfg: cfg, pgcfg: pgcfg, qcfg: qcfg, sh: sh, cancel: cancel, done: make(chan struct{})}
	c.streams[cfg.Shard] = s
	sh.nudge.Store(s)
	c.wg.Add(1)
	go s.run(sctx)
	return nil
}

// Unwatch stops the change stream of shard and waits for it until ctx
// ends. The shard stops serving. Errors: ErrNotWatched, ctx.Err().
func (c *Cache) Unwatch(ctx context.Context, shard string) error {
	c.mu.Lock()
	s := c.streams[shard]
	delete(c.streams, shard)
	c.mu.Unlock()
	if s == nil {
		return fmt.Errorf("%w: %q", ErrNotWatched, shard)
	}
	s.sh.nudge.CompareAndSwap(s, nil)
	s.cancel()
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("cache: unwatch shard %q: %w", shard, ctx.Err())
	}
}

// WaitUp blocks until the change stream of shard is up (reads of the shard
// can be served) or ctx ends. Errors: ErrNotWatched, ErrClosed,
// ErrStreamDown wrapping the last stream error when ctx ends first.
func (c *Cache) WaitUp(ctx context.Context, shard string) error {
	c.mu.Lock()
	sh := c.shards[shard]
	watched := c.streams[shard] != nil
	c.mu.Unlock()
	if c.closed.Load() {
		return ErrClosed
	}
	if !watched {
		return fmt.Errorf("%w: %q", ErrNotWatched, shard)
	}
	for {
		ch := sh.upWaiter()
		if sh.up() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			sh.statsMu.Lock()
			last := sh.lastErr
			sh.statsMu.Unlock()
			return fmt.Errorf("%w: shard %q (last error: %s): %w", ErrStreamDown, shard, last, ctx.Err())
		}
	}
}

func (s *stream) run(ctx context.Context) {
	defer s.c.wg.Done()
	defer close(s.done)
	backoff := s.cfg.MinBackoff
	for {
		wasUp, err := s.session(ctx)
		s.c.streamDown(s.sh, err, ctx.Err() != nil)
		if ctx.Err() != nil {
			return
		}
		if wasUp {
			backoff = s.cfg.MinBackoff
		}
		delay := backoff/2 + rand.N(backoff/2+1)
		backoff = min(backoff*2, s.cfg.MaxBackoff)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			s.c.streamDown(s.sh, nil, true)
			return
		case <-t.C:
		}
	}
}

// requestKeepalive makes the stream ask the server for a keepalive now.
func (s *stream) requestKeepalive() {
	if s.kaWanted.CompareAndSwap(false, true) {
		if f := s.recvCancel.Load(); f != nil {
			(*f)()
		}
	}
}

// slotName returns a fresh temporary slot name for this process and shard.
func (s *stream) slotName() string {
	var b strings.Builder
	b.WriteString(s.cfg.SlotPrefix)
	b.WriteByte('_')
	for _, r := range strings.ToLower(s.cfg.Shard) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
		if b.Len() > 40 {
			break
		}
	}
	b.WriteByte('_')
	b.WriteString(strconv.Itoa(os.Getpid()))
	b.WriteByte('_')
	b.WriteString(strconv.FormatUint(rand.Uint64()&0xffffffff, 36))
	name := b.String()
	if len(name) > 63 {
		name = name[len(name)-63:]
		if name[0] >= '0' && name[0] <= '9' {
			name = "s" + name[1:]
		}
	}
	return name
}

// session connects, creates the publication if missing and a temporary
// slot, streams until an error, and reports whether it got up.
func (s *stream) session(ctx context.Context) (wasUp bool, err error) {
	setupCtx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
	defer cancel()
	conn, err := pgdial.Connect(setupCtx, s.pgcfg)
	if err != nil {
		return false, fmt.Errorf("connect: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_ = conn.Close(cctx)
		cancel()
	}()
	qconn, err := pgdial.Connect(setupCtx, s.qcfg)
	if err != nil {
		return false, fmt.Errorf("connect (visibility checks): %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_ = qconn.Close(cctx)
		cancel()
	}()
	if err := s.ensurePublication(setupCtx, conn); err != nil {
		return false, err
	}
	slot := s.slotName()
	res, err := pglogrepl.CreateReplicationSlot(setupCtx, conn, slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
		Temporary:      true,
		Mode:           pglogrepl.LogicalReplication,
		SnapshotAction: "NOEXPORT_SNAPSHOT",
	})
	if err != nil {
		return false, fmt.Errorf("create temporary slot %s: %w", slot, err)
	}
	start, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return false, fmt.Errorf("slot %s consistent point %q: %w", slot, res.ConsistentPoint, err)
	}
	err = pglogrepl.StartReplication(setupCtx, conn, slot, start, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + s.cfg.Publication + "'"},
	})
	if err != nil {
		return false, fmt.Errorf("start replication on slot %s: %w", slot, err)
	}
	s.c.streamUp(s.sh, uint64(start), slot)
	return true, s.receive(ctx, conn, qconn)
}

func (s *stream) ensurePublication(ctx context.Context, conn *pgconn.PgConn) error {
	pub := s.cfg.Publication // an identifier: Validate rejects anything needing quotes
	rs, err := conn.Exec(ctx, "SELECT puballtables AND pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_catalog.pg_publication WHERE pubname = '"+pub+"'").ReadAll()
	if err != nil {
		return fmt.Errorf("look up publication %s: %w", pub, err)
	}
	if len(rs) == 1 && len(rs[0].Rows) == 1 {
		if string(rs[0].Rows[0][0]) != "t" {
			return fmt.Errorf("publication %s exists but is not FOR ALL TABLES publishing insert, update, delete and truncate", pub)
		}
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE PUBLICATION "+pub+" FOR ALL TABLES").ReadAll()
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42710" { // created concurrently
		return nil
	}
	if err != nil {
		return fmt.Errorf("create publication %s (needs superuser): %w", pub, err)
	}
	return nil
}

// decoder turns pgoutput messages into invalidations.
//
// A commit is decoded as soon as its WAL record is flushed, which is before
// the committing backend leaves the proc array: for a short while (longer
// with synchronous replication) new snapshots still do not see it. Applying
// its invalidation then would let a fill read the old row and store it
// under the new epochs. So decoded commits wait in queue until the
// primary's current snapshot shows their xid as finished, and are applied
// in commit order; keepalive positions past a queued commit wait too.
type decoder struct {
	relations  map[uint32]string // relation id -> table key
	touched    map[string]struct{}
	unknown    bool // a change to a relation never described: flush the shard
	commitTime time.Time
	xid        uint32

	queue     []decodedCommit
	heldKA    uint64 // keepalive position to apply once queue drains
	lastCheck time.Time
}

type decodedCommit struct {
	xid        uint32
	lsn        uint64
	tables     []string
	flushAll   bool
	commitTime time.Time
}

// settleRetry is how soon a visibility check is repeated while a decoded
// commit is not yet visible, and the minimum gap between checks.
const settleRetry = 250 * time.Microsecond

func (s *stream) receive(ctx context.Context, conn, qconn *pgconn.PgConn) error {
	d := &decoder{relations: make(map[uint32]string), touched: make(map[string]struct{})}
	lastRecv := time.Now()
	nextStatus := time.Now()
	for {
		now := time.Now()
		if s.kaWanted.Swap(false) || !now.Before(nextStatus) {
			err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
				WALWritePosition: pglogrepl.LSN(s.sh.applied.Load()),
				ReplyRequested:   true,
			})
			if err != nil {
				return fmt.Errorf("send status: %w", err)
			}
			nextStatus = now.Add(s.cfg.StatusInterval)
		}
		if now.Sub(lastRecv) > s.cfg.StallTimeout {
			return fmt.Errorf("stream stalled: nothing received for %s", now.Sub(lastRecv).Round(time.Millisecond))
		}
		if len(d.queue) > 0 && now.Sub(d.lastCheck) >= settleRetry {
			if err := s.settle(ctx, qconn, d); err != nil {
				return err
			}
		}
		deadline := nextStatus
		if stall := lastRecv.Add(s.cfg.StallTimeout); stall.Before(deadline) {
			deadline = stall
		}
		if retry := d.lastCheck.Add(settleRetry); len(d.queue) > 0 && retry.Before(deadline) {
			deadline = retry
		}
		rctx, cancel := context.WithDeadline(ctx, deadline)
		s.recvCancel.Store(&cancel)
		if s.kaWanted.Load() {
			cancel()
		}
		msg, err := conn.ReceiveMessage(rctx)
		s.recvCancel.Store(nil)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) || errors.Is(err, context.Canceled) {
				if conn.IsClosed() {
					return fmt.Errorf("receive: %w", err)
				}
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		lastRecv = time.Now()
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if err := s.handleCopyData(d, m.Data, &nextStatus); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("server: %w", pgconn.ErrorResponseToPgError(m))
		case *pgproto3.CopyDone:
			return errors.New("server ended the replication stream")
		}
	}
}

// settle applies, in order, the queued commits the primary now shows as
// finished to new snapshots.
func (s *stream) settle(ctx context.Context, qconn *pgconn.PgConn, d *decoder) error {
	d.lastCheck = time.Now()
	qctx, cancel := context.WithTimeout(ctx, s.cfg.StallTimeout)
	defer cancel()
	rs, err := qconn.Exec(qctx, "SELECT pg_catalog.pg_current_snapshot()::text").ReadAll()
	if err != nil {
		return fmt.Errorf("visibility check: %w", err)
	}
	if len(rs) != 1 || len(rs[0].Rows) != 1 {
		return errors.New("visibility check: unexpected result")
	}
	snap, err := parseSnapshot(string(rs[0].Rows[0][0]))
	if err != nil {
		return fmt.Errorf("visibility check: %w", err)
	}
	n := 0
	for _, c := range d.queue {
		if !snap.finished(c.xid) {
			break
		}
		s.c.applyCommit(s.sh, c.tables, c.flushAll, c.lsn, c.commitTime)
		n++
	}
	d.queue = append(d.queue[:0], d.queue[n:]...)
	if len(d.queue) == 0 && d.heldKA > 0 {
		s.sh.advance(d.heldKA)
		d.heldKA = 0
	}
	return nil
}

// pgSnapshot is the 32-bit view of a pg_current_snapshot() value.
type pgSnapshot struct {
	xmax uint32
	xip  []uint32
}

func parseSnapshot(text string) (pgSnapshot, error) {
	parts := strings.Split(text, ":")
	if len(parts) != 3 {
		return pgSnapshot{}, fmt.Errorf("bad snapshot %q", text)
	}
	xmax, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return pgSnapshot{}, fmt.Errorf("bad snapshot %q: %w", text, err)
	}
	snap := pgSnapshot{xmax: uint32(xmax)}
	if parts[2] != "" {
		for _, x := range strings.Split(parts[2], ",") {
			v, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				return pgSnapshot{}, fmt.Errorf("bad snapshot %q: %w", text, err)
			}
			snap.xip = append(snap.xip, uint32(v))
		}
	}
	return snap, nil
}

// finished reports whether xid (a 32-bit xid of a recent transaction) is
// no longer running in the snapshot: below xmax (modulo wraparound) and
// not in progress.
func (p pgSnapshot) finished(xid uint32) bool {
	if int32(p.xmax-xid) <= 0 {
		return false
	}
	for _, x := range p.xip {
		if x == xid {
			return false
		}
	}
	return true
}

func (s *stream) handleCopyData(d *decoder, data []byte, nextStatus *time.Time) error {
	if len(data) == 0 {
		return errors.New("empty CopyData")
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return err
		}
		// The keepalive carries the walsender's sent position: every commit
		// before it has been sent already, and applied unless still queued.
		if len(d.queue) == 0 {
			s.sh.advance(uint64(ka.ServerWALEnd))
		} else {
			d.heldKA = max(d.heldKA, uint64(ka.ServerWALEnd))
		}
		if ka.ReplyRequested {
			*nextStatus = time.Time{}
		}
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return err
		}
		msg, err := pglogrepl.Parse(xld.WALData)
		if err != nil {
			return fmt.Errorf("decode pgoutput: %w", err)
		}
		s.decode(d, msg)
	}
	return nil
}

func (s *stream) decode(d *decoder, msg pglogrepl.Message) {
	touch := func(rel uint32) {
		if k, ok := d.relations[rel]; ok {
			d.touched[k] = struct{}{}
		} else {
			d.unknown = true
		}
	}
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		d.commitTime = m.CommitTime
		d.xid = m.Xid
		clear(d.touched)
		d.unknown = false
	case *pglogrepl.RelationMessage:
		k := tableKey(m.RelationName)
		if old, ok := d.relations[m.RelationID]; ok {
			// Sent again after the relation changed (DDL): reads of it
			// may now return different results.
			d.touched[old] = struct{}{}
			d.touched[k] = struct{}{}
		}
		d.relations[m.RelationID] = k
	case *pglogrepl.InsertMessage:
		touch(m.RelationID)
	case *pglogrepl.UpdateMessage:
		touch(m.RelationID)
	case *pglogrepl.DeleteMessage:
		touch(m.RelationID)
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			touch(id)
		}
	case *pglogrepl.CommitMessage:
		tables := make([]string, 0, len(d.touched))
		for k := range d.touched {
			tables = append(tables, k)
		}
		d.queue = append(d.queue, decodedCommit{
			xid: d.xid, lsn: uint64(m.TransactionEndLSN), tables: tables,
			flushAll: d.unknown, commitTime: d.commitTime,
		})
		clear(d.touched)
		d.unknown = false
	}
}

// applyCommit invalidates the tables of one committed transaction.
func (c *Cache) applyCommit(sh *shardState, tables []string, flushAll bool, lsn uint64, commitTime time.Time) {
	storeMax(&sh.pending, lsn)
	if flushAll {
		sh.flush()
	}
	sh.bump(tables)
	storeMax(&sh.applied, lsn)
	lag := time.Since(commitTime)
	if lag < 0 {
		lag = 0
	}
	c.inval.Add(uint64(len(tables)))
	sh.statsMu.Lock()
	sh.lag.observe(lag)
	sh.commits++
	sh.statsMu.Unlock()
	c.lagMu.Lock()
	c.lag.observe(lag)
	c.lagMu.Unlock()
	if h := c.cfg.Hooks.OnInvalidate; h != nil {
		h(InvalidateEvent{Shard: sh.name, Tables: tables, LSN: lsn, Lag: lag})
	}
}

// streamUp marks the shard's stream established at lsn (the slot's
// consistent point). The generation bump drops every entry filled before.
func (c *Cache) streamUp(sh *shardState, lsn uint64, slot string) {
	sh.pending.Store(lsn)
	sh.applied.Store(lsn)
	sh.transition(true)
	sh.statsMu.Lock()
	sh.since = time.Now()
	sh.lastErr = ""
	sh.slot = slot
	if sh.upWait != nil {
		close(sh.upWait)
		sh.upWait = nil
	}
	sh.statsMu.Unlock()
	c.log.Info("cache: change stream up", "shard", sh.name, "slot", slot, "lsn", pglogrepl.LSN(lsn).String())
	if h := c.cfg.Hooks.OnStreamState; h != nil {
		h(sh.name, true, nil)
	}
}

// streamDown marks the shard's stream down: nothing of the shard is served
// or stored until it is up again.
func (c *Cache) streamDown(sh *shardState, err error, stopped bool) {
	changed := sh.transition(false)
	sh.statsMu.Lock()
	if err != nil && !stopped {
		sh.lastErr = err.Error()
	}
	if changed {
		sh.since = time.Now()
		if !stopped {
			sh.breaks++
		}
	}
	sh.statsMu.Unlock()
	if stopped {
		if changed {
			c.log.Info("cache: change stream stopped", "shard", sh.name)
		}
		err = nil
	} else {
		c.log.Warn("cache: change stream down; shard not served until it reconnects", "shard", sh.name, "err", err)
	}
	if h := c.cfg.Hooks.OnStreamState; h != nil && (changed || err != nil) {
		h(sh.name, false, err)
	}
}
