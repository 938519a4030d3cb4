package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/maphash"
	"slices"
	"strconv"
	"time"

	"github.com/dbproxy/dbproxy/cache"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// The read-result cache in the proxy.
//
// A read the router marks cacheable (Decision.Cacheable: a deterministic
// single read outside a transaction, without a nocache hint, not forced
// to the primary), on one shard, with no backend held for the client
// (or only a parked one, session pooling), goes through Deps.Cache:
//
//   - a simple Query is looked up at once;
//   - an extended-protocol batch is looked up when its Bind arrives, if
//     the messages before it are only Parse messages; the rest of the
//     batch (Describe portal, Execute, Close, Sync) is then answered by
//     the proxy from the cached result (answerCachedMessage).
//
// The cached value is the backend's result in wire format: a RowDescription
// (or NoData), the DataRows and the CommandComplete, encoded as PostgreSQL
// sends them, so a hit is written to the client as bytes without decoding.
// A simple Query gets RowDescription, DataRow*, CommandComplete; an
// Execute gets the DataRows and CommandComplete (PortalSuspended when its
// row limit stops it), and the RowDescription only through Describe.
//
// A miss runs the read on its own lease, picked with MinLSN = max(the
// session's causal position, cache.FillMinLSN), with the session's
// settings replayed, through the unnamed statement (Parse, Bind with the
// client's parameters and formats, Describe portal, Execute, Sync), and
// records the result up to cacheRecordLimit bytes. When the fill fails or
// the result is larger, the request is run again on the normal path, so
// the client gets exactly what the backend says (an error, or a large
// result streamed); the connection then sends that read (same key parts)
// straight to the normal path for tooLargeTTL.
//
// The key is the shard, the namespace "proxy/v1" plus the session's
// replayed settings (RESET ALL + every SET and SQL-level PREPARE, see
// session.replay), the SQL text (and the Parse parameter types), the
// parameters and their formats, and the result formats.
//
// Writes: every table a statement sent to a primary writes or alters is
// recorded (for SQL-level EXECUTE, the prepared statement's tables), and
// when the backend goes back to idle (the transaction ended) they are
// invalidated with Cache.Invalidate before the client gets ReadyForQuery.
// Broadcasts (DDL, multi-shard writes, runMulti) invalidate their tables
// when they finish. The change streams see every committed row change
// anyway, including writes made around the proxy; DDL made around the
// proxy is bounded only by the cache's TTL (see the cache package).
//
// Limits: in a batch served from the cache, a message other than Parse,
// Describe/Execute/Close of the bound portal, Close of a statement, Sync
// or Flush (a second Bind, a Describe of a statement) ends the cached
// part and starts a new batch on the normal path; the cached portal is
// then unknown to the backend, so an Execute of it after a Describe of a
// statement fails (no driver we know sends that). NoticeResponses a read
// raised are not cached.

// cacheNamespace starts the KeyParts.Namespace of every proxy key.
const cacheNamespace = "proxy/v1\x00"

// cacheRecordLimit bounds the bytes a fill records; larger results are
// not cached (cache.DefaultConfig().MaxEntryBytes; a cache configured with
// a smaller limit drops what exceeds it itself).
var cacheRecordLimit = int(cache.DefaultConfig().MaxEntryBytes)

// errCacheTooLarge ends a fill whose result exceeds cacheRecordLimit.
var errCacheTooLarge = errors.New("proxy: result too large to cache")

// errCacheSkip: the request is not served from the cache (malformed Bind,
// unexpected value); it runs on the normal path.
var errCacheSkip = errors.New("proxy: request not served from the cache")

// cacheConnState is a client connection's cache bookkeeping. batch and
// the memo fields are owned by the reader goroutine; written is guarded by
// clientConn.mu (the pump reads it).
type cacheConnState struct {
	batch *cachedBatch // the current extended batch is answered from a cached result

	written []string // tables written on a primary since the backend was last idle (under c.mu)

	nsFP     uint64 // fingerprint ns was built for
	ns       string // cacheNamespace + replayed settings
	tablesOf *router.Statement
	tables   []string
	shardOf  string // the shard whose CacheShard name shard holds
	shard    string

	// tooLarge remembers (by hash of the key parts, until the time
	// stored) reads whose result exceeded cacheRecordLimit, so that they
	// run once, on the normal path, instead of once for a fill and again.
	tooLarge map[uint64]time.Time
}

// Bounds of cacheConnState.tooLarge.
const (
	tooLargeEntries = 64
	tooLargeTTL     = time.Minute
)

// largeHash hashes what identifies a read for cacheConnState.tooLarge. A
// collision only makes a read skip the cache.
func largeHash(shard, ns, sql string, r *cacheRead) uint64 {
	var h maphash.Hash
	h.SetSeed(hashSeed)
	for _, s := range []string{shard, ns, sql} {
		_ = binary.Write(&h, binary.LittleEndian, uint32(len(s)))
		h.WriteString(s)
	}
	for _, p := range r.params {
		_ = binary.Write(&h, binary.LittleEndian, int32(len(p)))
		if p == nil {
			h.WriteByte(0xff)
		}
		h.Write(p)
	}
	for _, f := range [][]int16{r.pformats, r.rformats} {
		_ = binary.Write(&h, binary.LittleEndian, uint32(len(f)))
		for _, c := range f {
			_ = binary.Write(&h, binary.LittleEndian, c)
		}
	}
	return h.Sum64()
}

// cachedBatch is an extended-protocol batch answered from a cached result.
type cachedBatch struct {
	portal  string
	head    []byte // RowDescription or NoData message
	rows    []byte // DataRow messages not yet sent
	tag     []byte // the CommandComplete message
	partial bool   // an Execute with a row limit was suspended
	done    bool   // an Execute ran the portal to completion
}

// cacheTarget reports whether the single-shard plan p of st may go
// through the cache, and with which tables.
func (c *clientConn) cacheTarget(att *attachment, p plan, st *router.Statement) (target, []string, bool) {
	cc := c.srv.cache.Load()
	if cc == nil || c.srv.live.Load().cacheOff || c.srv.cacheDBs != nil && !c.srv.cacheDBs[c.database] || !p.cacheable || p.local || p.pinned || len(p.preamble) > 0 || len(p.targets) != 1 || p.targets[0].primary {
		return target{}, nil, false
	}
	eff := p.eff
	if eff == nil {
		eff = st
	}
	if eff.NumStatements != 1 {
		return target{}, nil, false
	}
	c.mu.Lock()
	busy := att != nil && !att.parked || c.sess.rs.InTransaction()
	c.mu.Unlock()
	if busy {
		return target{}, nil, false
	}
	cs := &c.cacheState
	if cs.tablesOf != eff {
		cs.tablesOf, cs.tables = eff, cacheTables(eff)
	}
	if !cc.Cacheable(cs.tables) {
		return target{}, nil, false
	}
	return p.targets[0], cs.tables, true
}

// cacheTables returns the tables st reads, schema-qualified when written
// so, once each.
func cacheTables(st *router.Statement) []string {
	out := make([]string, 0, len(st.Tables))
	for _, t := range st.Tables {
		if n := t.QualifiedName(); !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// cacheRead is the input of one cached read.
type cacheRead struct {
	t        target
	tables   []string
	sql      string
	oids     []uint32
	params   [][]byte
	pformats []int16
	rformats []int16
}

// lookupCache returns the result of r from the cache or a fill. An error
// means the request is to be run on the normal path.
func (c *clientConn) lookupCache(ctx context.Context, r *cacheRead) ([]byte, error) {
	if n := len(r.pformats); n > 1 && n != len(r.params) {
		return nil, errCacheSkip // malformed Bind: let the backend answer
	}
	c.mu.Lock()
	fp, replaySQL := c.sess.replay()
	c.mu.Unlock()
	cs := &c.cacheState
	if cs.ns == "" || cs.nsFP != fp {
		// Results are shared only between sessions of the same user and
		// database: privileges (and row security) differ between users.
		cs.nsFP, cs.ns = fp, cacheNamespace+c.user+"\x00"+c.database+"\x00"+replaySQL
	}
	keySQL := r.sql
	if slices.ContainsFunc(r.oids, func(o uint32) bool { return o != 0 }) {
		// Parameter types change results too; SQL text never holds a NUL.
		b := append([]byte(keySQL), 0)
		for _, o := range r.oids {
			b = binary.BigEndian.AppendUint32(b, o)
		}
		keySQL = string(b)
	}
	var large uint64
	if len(cs.tooLarge) > 0 {
		large = largeHash(r.t.name, cs.ns, keySQL, r)
		if exp, ok := cs.tooLarge[large]; ok {
			if time.Now().Before(exp) {
				return nil, errCacheSkip
			}
			delete(cs.tooLarge, large)
		}
	}
	if cs.shard == "" || cs.shardOf != r.t.name {
		cs.shardOf, cs.shard = r.t.name, CacheShard(r.t.name, c.database, c.srv.homeDB)
	}
	key := cache.NewKey(cache.KeyParts{
		Shard:         cs.shard,
		Namespace:     cs.ns,
		SQL:           keySQL,
		Params:        r.params,
		ParamFormats:  r.pformats,
		ResultFormats: r.rformats,
	})
	fill := func(fctx context.Context) ([]byte, error) {
		t := r.t
		t.pick.MinLSN = max(t.pick.MinLSN, replica.LSN(cache.FillMinLSN(fctx)))
		lease, err := c.leaseForQuery(fctx, t) // the fill uses the unnamed statement
		if err != nil {
			return nil, err
		}
		conn := lease.Conn()
		v, err := recordResult(fctx, conn, r)
		var pgErr *pgconn.PgError
		switch {
		case conn.IsClosed() || err != nil && !errors.As(err, &pgErr) && !errors.Is(err, errCacheTooLarge):
			lease.Discard(err)
		case conn.TxStatus() != 'I':
			lease.Discard(errors.New("proxy: backend left inside a transaction by a cached read"))
		default:
			lease.Release(nil) // a server error is the query's, not the node's
		}
		return v, err
	}
	v, _, err := c.srv.cache.Load().GetOrFill(ctx, key, r.tables, uint64(r.t.pick.MinLSN), fill)
	if errors.Is(err, errCacheTooLarge) {
		cs.rememberTooLarge(largeHash(r.t.name, cs.ns, keySQL, r))
	}
	if err != nil {
		return nil, err
	}
	if _, _, ok := splitResult(v); !ok {
		return nil, errCacheSkip
	}
	return v, nil
}

// rememberTooLarge records a read whose result is too large to cache.
func (cs *cacheConnState) rememberTooLarge(h uint64) {
	now := time.Now()
	if cs.tooLarge == nil {
		cs.tooLarge = map[uint64]time.Time{}
	}
	if len(cs.tooLarge) >= tooLargeEntries {
		for k, exp := range cs.tooLarge {
			if now.After(exp) || len(cs.tooLarge) >= tooLargeEntries {
				delete(cs.tooLarge, k)
			}
		}
	}
	cs.tooLarge[h] = now.Add(tooLargeTTL)
}

// recordResult runs r on conn and returns its result in wire format:
// RowDescription (or NoData), DataRow*, CommandComplete.
func recordResult(ctx context.Context, conn *pgconn.PgConn, r *cacheRead) ([]byte, error) {
	oids := r.oids
	if len(oids) > len(r.params) {
		oids = oids[:len(r.params)]
	}
	rr := conn.ExecParams(ctx, r.sql, r.params, oids, r.pformats, r.rformats)
	fds := rr.FieldDescriptions()
	buf := make([]byte, 0, 512)
	var err error
	if fds == nil {
		buf, err = (&pgproto3.NoData{}).Encode(buf)
	} else {
		rd := pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(fds))}
		for i, f := range fds {
			rd.Fields[i] = pgproto3.FieldDescription{
				Name: []byte(f.Name), TableOID: f.TableOID, TableAttributeNumber: f.TableAttributeNumber,
				DataTypeOID: f.DataTypeOID, DataTypeSize: f.DataTypeSize, TypeModifier: f.TypeModifier, Format: f.Format,
			}
		}
		buf, err = rd.Encode(buf)
	}
	if err != nil {
		_, _ = rr.Close()
		return nil, err
	}
	tooLarge := false
	for rr.NextRow() {
		if tooLarge {
			continue
		}
		buf = appendDataRow(buf, rr.Values())
		if len(buf) > cacheRecordLimit {
			tooLarge, buf = true, nil
		}
	}
	tag, err := rr.Close()
	if err != nil {
		return nil, err
	}
	if tooLarge {
		return nil, errCacheTooLarge
	}
	return (&pgproto3.CommandComplete{CommandTag: []byte(tag.String())}).Encode(buf)
}

// appendDataRow appends a DataRow message holding values.
func appendDataRow(b []byte, values [][]byte) []byte {
	start := len(b)
	b = append(b, 'D', 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(values)))
	for _, v := range values {
		if v == nil {
			b = binary.BigEndian.AppendUint32(b, 0xffffffff)
			continue
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	binary.BigEndian.PutUint32(b[start+1:], uint32(len(b)-start-1))
	return b
}

// splitResult splits a cached value into its first message
// (RowDescription or NoData) and the rest, checking the framing of every
// message and that the last one is the CommandComplete.
func splitResult(v []byte) (head, body []byte, ok bool) {
	n, typ, ok := nextMessage(v)
	if !ok || typ != 'T' && typ != 'n' {
		return nil, nil, false
	}
	head, body = v[:n], v[n:]
	for rest := body; ; {
		m, typ, ok := nextMessage(rest)
		if !ok {
			return nil, nil, false
		}
		rest = rest[m:]
		if typ == 'C' {
			return head, body, len(rest) == 0
		}
		if typ != 'D' {
			return nil, nil, false
		}
	}
}

// nextMessage returns the length and type of the wire message at the
// start of b.
func nextMessage(b []byte) (int, byte, bool) {
	if len(b) < 5 {
		return 0, 0, false
	}
	n := int(binary.BigEndian.Uint32(b[1:5]))
	if n < 4 || n+1 > len(b) {
		return 0, 0, false
	}
	return n + 1, b[0], true
}

// splitTag splits a body validated by splitResult into its DataRows and
// the final CommandComplete.
func splitTag(body []byte) (rows, tag []byte) {
	off := 0
	for {
		n, typ, _ := nextMessage(body[off:])
		if typ != 'D' {
			return body[:off], body[off:]
		}
		off += n
	}
}

// takeRows splits rows (DataRow messages) after at most maxRows of them
// (0: all) and returns how many it took.
func takeRows(rows []byte, maxRows uint32) (n uint32, out, rest []byte) {
	off := 0
	for ; maxRows == 0 || n < maxRows; n++ {
		m, _, ok := nextMessage(rows[off:])
		if !ok {
			break
		}
		off += m
	}
	return n, rows[:off], rows[off:]
}

// writeClient writes msgs, then raw wire bytes, then tail to the client,
// flushing to the network when flush is set.
func (c *clientConn) writeClient(msgs []pgproto3.BackendMessage, raw [][]byte, tail []pgproto3.BackendMessage, flush bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for _, m := range msgs {
		c.queue(m)
	}
	for _, b := range raw {
		c.queue(rawMessage(b))
	}
	for _, m := range tail {
		c.queue(m)
	}
	return c.flushClientLocked(flush)
}

// rawMessage is wire bytes (whole messages, as cached) sent as they are.
type rawMessage []byte

func (rawMessage) Backend()                            {}
func (rawMessage) Decode([]byte) error                 { return errors.New("proxy: rawMessage is send-only") }
func (m rawMessage) Encode(dst []byte) ([]byte, error) { return append(dst, m...), nil }

// waitLastPump lets the last pump finish its writes to the client (the
// ReadyForQuery of the previous request) before the proxy answers.
func (c *clientConn) waitLastPump() {
	c.mu.Lock()
	lp := c.lastPump
	c.mu.Unlock()
	if lp != nil {
		<-lp
	}
}

// cachedQuery answers a simple Query from the cache when p allows it.
// ok is false when the Query is to run on the normal path.
func (c *clientConn) cachedQuery(ctx context.Context, att *attachment, p plan, st *router.Statement, sql string) (next stateFn, ok bool) {
	t, tables, ok := c.cacheTarget(att, p, st)
	if !ok {
		return nil, false
	}
	v, err := c.lookupCache(ctx, &cacheRead{t: t, tables: tables, sql: sql})
	if err != nil {
		return nil, false
	}
	head, body, _ := splitResult(v)
	if head[0] != 'T' {
		head = nil // NoData belongs to Describe, not to a simple Query
	}
	c.waitLastPump()
	c.observeDetached(nil)
	if err := c.writeClient(nil, [][]byte{head, body}, []pgproto3.BackendMessage{&pgproto3.ReadyForQuery{TxStatus: c.txStatus()}}, true); err != nil {
		return c.to.closing, true
	}
	return c.idleOrAttached(), true
}

// cachedBatchStart answers an extended-protocol batch from the cache when
// p allows it: the buffered messages (Parse* then the Bind) are answered
// now, the rest of the batch by answerCachedMessage. ok is false when the
// batch is to run on the normal path.
func (c *clientConn) cachedBatchStart(ctx context.Context, att *attachment, p plan, st *router.Statement, bind *pgproto3.Bind, ps *preparedStmt) (next stateFn, ok bool) {
	if ps == nil || bind == nil || len(c.pending) == 0 {
		return nil, false
	}
	bind, isBind := c.pending[len(c.pending)-1].(*pgproto3.Bind) // the buffered copy
	if !isBind || bind.PreparedStatement != ps.name {
		return nil, false
	}
	for _, m := range c.pending[:len(c.pending)-1] {
		if _, isParse := m.(*pgproto3.Parse); !isParse {
			return nil, false
		}
	}
	t, tables, ok := c.cacheTarget(att, p, st)
	if !ok {
		return nil, false
	}
	v, err := c.lookupCache(ctx, &cacheRead{
		t: t, tables: tables, sql: ps.query, oids: ps.paramOIDs,
		params: bind.Parameters, pformats: bind.ParameterFormatCodes, rformats: bind.ResultFormatCodes,
	})
	if err != nil {
		return nil, false
	}
	head, body, _ := splitResult(v)
	rows, tag := splitTag(body)
	c.waitLastPump()
	c.observeDetached(nil)
	pending := c.pending
	c.pending = nil
	out := make([]pgproto3.BackendMessage, 0, len(pending))
	c.mu.Lock()
	for _, m := range pending {
		switch m := m.(type) {
		case *pgproto3.Parse:
			c.sess.stmts[m.Name] = &preparedStmt{name: m.Name, query: m.Query, paramOIDs: append([]uint32(nil), m.ParameterOIDs...), hash: stmtHash(m.Query, m.ParameterOIDs)}
			out = append(out, &pgproto3.ParseComplete{})
		case *pgproto3.Bind:
			out = append(out, &pgproto3.BindComplete{})
		}
	}
	c.mu.Unlock()
	c.cacheState.batch = &cachedBatch{portal: bind.DestinationPortal, head: head, rows: rows, tag: tag}
	if err := c.writeClient(out, nil, nil, false); err != nil {
		return c.to.closing, true
	}
	return c.idleOrAttached(), true
}

// answerCachedMessage answers one message of a batch served from the
// cache. ok is false when the message needs a backend: the cached part
// of the batch is over (its replies are sent) and msg is handled as the
// start of a new batch.
func (c *clientConn) answerCachedMessage(msg pgproto3.FrontendMessage) (next stateFn, ok bool) {
	b := c.cacheState.batch
	var out []pgproto3.BackendMessage
	var raw [][]byte
	flush := false
	switch m := msg.(type) {
	case *pgproto3.Parse:
		c.mu.Lock()
		c.sess.stmts[m.Name] = &preparedStmt{name: m.Name, query: m.Query, paramOIDs: append([]uint32(nil), m.ParameterOIDs...), hash: stmtHash(m.Query, m.ParameterOIDs)}
		c.mu.Unlock()
		out = append(out, &pgproto3.ParseComplete{})
	case *pgproto3.Describe:
		if m.ObjectType != 'P' || m.Name != b.portal {
			c.cacheState.batch = nil
			return nil, false
		}
		raw = append(raw, b.head)
	case *pgproto3.Execute:
		if m.Portal != b.portal {
			c.cacheState.batch = nil
			return nil, false
		}
		if b.done {
			if b.head[0] == 'T' {
				out = append(out, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 0")})
			} else {
				out = append(out, &pgproto3.EmptyQueryResponse{})
			}
			break
		}
		// As PostgreSQL: a row limit reached suspends the portal (even
		// with no rows left); the Execute that completes a suspended
		// portal reports the rows it sent itself.
		n, rows, rest := takeRows(b.rows, m.MaxRows)
		raw = append(raw, rows)
		if m.MaxRows > 0 && n == m.MaxRows {
			b.rows, b.partial = rest, true
			out = append(out, &pgproto3.PortalSuspended{})
			break
		}
		if b.partial {
			out = append(out, &pgproto3.CommandComplete{CommandTag: []byte("SELECT " + strconv.FormatUint(uint64(n), 10))})
		} else {
			raw = append(raw, b.tag)
		}
		b.rows, b.done = nil, true
	case *pgproto3.Close:
		if m.ObjectType == 'S' {
			c.mu.Lock()
			delete(c.sess.stmts, m.Name)
			c.mu.Unlock()
		} else if m.Name == b.portal {
			b.portal = "\x00closed" // no portal name holds a NUL
		}
		out = append(out, &pgproto3.CloseComplete{})
	case *pgproto3.Sync:
		c.cacheState.batch = nil
		c.queries.Add(1)
		flush = true
		if err := c.writeClient(nil, nil, []pgproto3.BackendMessage{&pgproto3.ReadyForQuery{TxStatus: c.txStatus()}}, true); err != nil {
			return c.to.closing, true
		}
		return c.idleOrAttached(), true
	case *pgproto3.Flush:
		flush = true
	default:
		c.cacheState.batch = nil
		return nil, false
	}
	if err := c.writeClient(nil, raw, out, flush); err != nil {
		return c.to.closing, true
	}
	return c.idleOrAttached(), true
}

// noteCacheWrite records the tables st writes, to invalidate them when
// the transaction ends. Called with c.mu held.
func (c *clientConn) noteCacheWrite(st *router.Statement) {
	if c.srv.cache.Load() == nil {
		return
	}
	if st.ExecuteName != "" {
		// SQL-level EXECUTE: the tables are the prepared statement's.
		if ps, ok := c.sess.rs.Prepared(st.ExecuteName); ok && ps != nil {
			st = ps
		}
	}
	for _, t := range st.Tables {
		if t.Access == router.AccessRead {
			continue
		}
		if n := t.QualifiedName(); !slices.Contains(c.cacheState.written, n) {
			c.cacheState.written = append(c.cacheState.written, n)
		}
	}
}

// invalidateStatement invalidates at once the tables st writes or alters
// (a statement run outside the pump: multi-shard writes and DDL, which
// the change streams do not decode).
func (c *clientConn) invalidateStatement(st *router.Statement) {
	if c.srv.cache.Load() == nil {
		return
	}
	c.mu.Lock()
	c.noteCacheWrite(st)
	c.mu.Unlock()
	c.invalidateCacheWrites()
}

// invalidateCacheWrites invalidates the tables written since the backend
// was last idle; the pump calls it when the backend is idle again, before
// the client gets ReadyForQuery. The session's causal positions (its
// writes' commit positions) become the cache's fill floor, so no read,
// from any session, refills the old rows from a replica behind them.
func (c *clientConn) invalidateCacheWrites() {
	cc := c.srv.cache.Load()
	if cc == nil {
		return
	}
	c.mu.Lock()
	w := c.cacheState.written
	c.cacheState.written = nil
	tok := c.sess.rs.CausalToken()
	c.mu.Unlock()
	if len(w) > 0 {
		// Commit positions are the server's, whichever database's stream
		// (CacheShard) decodes them.
		cc.InvalidateAfter(func(name string) uint64 { return uint64(tok.LSN(shardOfCacheShard(name))) }, w...)
	}
}
