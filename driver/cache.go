package driver

import (
	"context"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"

	"github.com/dbproxy/dbproxy/cache"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// The read-result cache in the driver.
//
// A read the router marks cacheable (Decision.Cacheable: a deterministic
// single read outside a read-write transaction, without a nocache hint and
// not forced to the primary), on one shard, run with QueryContext outside a
// transaction, goes through the Connector's *cache.Cache: a hit is decoded
// from the cached bytes without leasing a backend; a miss runs the query on
// a backend picked with MinLSN = max(the session's causal position,
// cache.FillMinLSN) and stores the complete result, encoded by
// encodeResult. Reads with WithPrimary (or WithMaxStaleness <= 0) bypass it.

// cacheNamespace starts the KeyParts.Namespace of every driver key; the
// session's replayed settings (SET search_path, TimeZone, ... and SQL
// PREPAREs) follow it, so sessions with different settings never share
// entries.
const cacheNamespace = "driver/v1\x00"

// cacheTables returns the tables st reads, schema-qualified when written
// so (the cache's include/exclude patterns may name schemas).
func cacheTables(st *router.Statement) []string {
	out := make([]string, 0, len(st.Tables))
	for _, t := range st.Tables {
		n := t.QualifiedName()
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// writtenTables appends to dst the tables st writes or alters (not those
// it only reads), once each.
func writtenTables(dst []string, st *router.Statement) []string {
	for _, t := range st.Tables {
		if t.Access == router.AccessRead {
			continue
		}
		n := t.QualifiedName()
		if !slices.Contains(dst, n) {
			dst = append(dst, n)
		}
	}
	return dst
}

// useCache reports whether the single-shard decision d for st may go
// through the cache.
func (cn *conn) useCache(d *router.Decision, st *router.Statement, o callOptions) bool {
	return cn.cache != nil && d.Cacheable && !o.primary && !d.Pinned && len(d.Preamble) == 0 && len(d.Shards) == 1 &&
		d.Target == router.TargetReplica && !cn.sess.InTransaction() && cn.pin == nil && st.NumStatements == 1
}

// cachedQuery runs the cacheable read d through the cache and returns its
// rows (buffered).
func (cn *conn) cachedQuery(ctx context.Context, d router.Decision, st *router.Statement, sqlText string, args *encodedArgs) (driver.Rows, error) {
	c := cn.cache
	target := d.Shards[0]
	eff := d.Statement
	if eff == nil {
		eff = st
	}
	m := &cn.memo
	if m.st != eff {
		m.st, m.tables = eff, cacheTables(eff)
	}
	tables := m.tables
	skey := cn.sessionKey()
	if m.ns == "" || m.skey != skey {
		m.skey, m.ns = skey, cacheNamespace+skey
	}
	keySQL := sqlText
	if slices.ContainsFunc(args.oids, func(o uint32) bool { return o != 0 }) {
		keySQL = stmtKey(sqlText, args.oids) // parameter types change results too (SQL text never holds a NUL)
	}
	key := cache.NewKey(cache.KeyParts{
		Shard:        target.Name,
		Namespace:    m.ns,
		SQL:          keySQL,
		Params:       args.values,
		ParamFormats: args.formats,
	})
	pick := d.Pick(target)
	fill := func(fctx context.Context) ([]byte, error) {
		req := pick
		req.MinLSN = max(req.MinLSN, replica.LSN(cache.FillMinLSN(fctx)))
		var lastErr error
		for attempt := 0; attempt < maxAttempts; attempt++ {
			b, err := cn.acquire(fctx, target.ID, false, req, skey)
			if err != nil {
				if retryable(err, true) && fctx.Err() == nil && attempt+1 < maxAttempts {
					lastErr = err
					continue
				}
				return nil, err
			}
			v, err := fillResult(fctx, b, sqlText, args)
			switch {
			case b.pc.IsClosed() || (err != nil && !isServerError(err)):
				b.lease.Discard(err)
			case b.pc.TxStatus() != 'I':
				b.lease.Discard(errors.New("dbproxy driver: backend left inside a transaction by a cached read"))
			default:
				b.lease.Release(err)
			}
			if err != nil && retryable(err, true) && fctx.Err() == nil && attempt+1 < maxAttempts {
				lastErr = err
				continue
			}
			return v, err
		}
		return nil, lastErr
	}
	v, _, err := c.GetOrFill(ctx, key, tables, uint64(target.MinLSN), fill)
	if errors.Is(err, cache.ErrNotAdmitted) {
		v, err = fill(ctx) // a key's first miss: read it uncached
	}
	if err != nil {
		if isServerError(err) {
			cn.sess.ObserveError()
		}
		cn.sess.Observe('I')
		return nil, cn.failed(err, !pgconn.SafeToRetry(err))
	}
	cn.sess.Observe('I')
	return m.decode(cn.tm, v)
}

// cacheMemo keeps, per connection, what the cached-read path derives from
// the statement and the result shape, so that a hit allocates little: the
// tables of the last statement, the key namespace of the session settings,
// and the column decoders of the last result header. A conn is used by one
// goroutine at a time, and the decoders hold no state between calls, so
// rows open at once on one conn may share them.
type cacheMemo struct {
	st     *router.Statement
	tables []string
	skey   string
	ns     string
	head   []byte // encoded header (version through column formats)
	hdr    resultHeader
}

// resultHeader is the decoded column part of an encoded result.
type resultHeader struct {
	cols []string
	oids []uint32
	fns  []valueFunc
	raw  [][]byte // scratch for one row's values
}

// decode is decodeResult reusing the column decoders when v has the same
// header as the last result decoded on this connection.
func (m *cacheMemo) decode(tm *pgtype.Map, v []byte) (*cachedRows, error) {
	n, err := headerLen(v)
	if err != nil {
		return nil, err
	}
	if m.head == nil || string(m.head) != string(v[:n]) {
		r, err := decodeResult(tm, v)
		if err != nil {
			return nil, err
		}
		m.head, m.hdr = append(m.head[:0], v[:n]...), r.resultHeader
		r.shared = true
		return r, nil
	}
	r := &cachedRows{tm: tm, resultHeader: m.hdr, shared: true}
	if err := r.body(v[n:]); err != nil {
		return nil, err
	}
	return r, nil
}

// headerLen returns the length of the column part of an encoded result.
func headerLen(v []byte) (int, error) {
	if len(v) == 0 || v[0] != resultVersion {
		return 0, errCorruptResult
	}
	r := resultReader{b: v[1:]}
	ncols := r.uvarint()
	for i := uint64(0); i < ncols && r.err == nil; i++ {
		r.bytes(r.uvarint())
		r.uvarint()
		r.uvarint()
	}
	if r.err != nil {
		return 0, r.err
	}
	return len(v) - len(r.b), nil
}

// fillResult runs sqlText on b and encodes its complete result.
func fillResult(ctx context.Context, b *backend, sqlText string, args *encodedArgs) ([]byte, error) {
	rr, key, err := extended(ctx, b.pc, sqlText, args)
	if err != nil {
		return nil, err
	}
	var enc resultEncoder
	enc.columns(rr.FieldDescriptions())
	for rr.NextRow() {
		enc.row(rr.Values())
	}
	tag, err := rr.Close()
	forgetStatement(b.pc, key, err)
	if err != nil {
		return nil, err
	}
	return enc.finish(tag.String()), nil
}

// Encoding of a cached result (all integers unsigned varints):
//
//	version byte (1)
//	ncols, then per column: len(name) name oid format
//	len(tag) tag
//	nrows, then per row and column: 0 for NULL, else len(value)+1 value
//
// Column formats are kept although the driver asks for text results, so a
// binary result would decode correctly too.
const resultVersion = 1

// resultEncoder builds the encoding of one result.
type resultEncoder struct {
	head  []byte
	body  []byte
	nrows uint64
	ncols int
}

func (e *resultEncoder) columns(fds []pgconn.FieldDescription) {
	e.head = append(e.head[:0], resultVersion)
	e.head = binary.AppendUvarint(e.head, uint64(len(fds)))
	for _, fd := range fds {
		e.head = binary.AppendUvarint(e.head, uint64(len(fd.Name)))
		e.head = append(e.head, fd.Name...)
		e.head = binary.AppendUvarint(e.head, uint64(fd.DataTypeOID))
		e.head = binary.AppendUvarint(e.head, uint64(uint16(fd.Format)))
	}
	e.ncols = len(fds)
}

func (e *resultEncoder) row(vals [][]byte) {
	for i := 0; i < e.ncols; i++ {
		var v []byte
		if i < len(vals) {
			v = vals[i]
		}
		if v == nil {
			e.body = append(e.body, 0)
			continue
		}
		e.body = binary.AppendUvarint(e.body, uint64(len(v))+1)
		e.body = append(e.body, v...)
	}
	e.nrows++
}

func (e *resultEncoder) finish(tag string) []byte {
	if e.head == nil {
		e.columns(nil)
	}
	out := make([]byte, 0, len(e.head)+len(tag)+2*binary.MaxVarintLen64+len(e.body))
	out = append(out, e.head...)
	out = binary.AppendUvarint(out, uint64(len(tag)))
	out = append(out, tag...)
	out = binary.AppendUvarint(out, e.nrows)
	return append(out, e.body...)
}

// errCorruptResult reports cached bytes that do not decode (never expected:
// the driver wrote them).
var errCorruptResult = errors.New("dbproxy driver: corrupt cached result")

// resultReader reads an encoded result.
type resultReader struct {
	b   []byte
	err error
}

func (r *resultReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errCorruptResult
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *resultReader) bytes(n uint64) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.err = errCorruptResult
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// decodeResult returns rows reading the encoded result v, which is shared
// and never modified (values are decoded into fresh Go values).
func decodeResult(tm *pgtype.Map, v []byte) (*cachedRows, error) {
	if len(v) == 0 || v[0] != resultVersion {
		return nil, errCorruptResult
	}
	r := resultReader{b: v[1:]}
	ncols := r.uvarint()
	if ncols > uint64(len(r.b)) { // each column takes at least 3 bytes
		return nil, errCorruptResult
	}
	fds := make([]pgconn.FieldDescription, ncols)
	cols := make([]string, ncols)
	oids := make([]uint32, ncols)
	for i := range fds {
		cols[i] = string(r.bytes(r.uvarint()))
		oid, format := r.uvarint(), r.uvarint()
		if oid > 1<<32-1 || format > 1 {
			return nil, errCorruptResult
		}
		fds[i] = pgconn.FieldDescription{Name: cols[i], DataTypeOID: uint32(oid), Format: int16(format)}
		oids[i] = uint32(oid)
	}
	if r.err != nil {
		return nil, r.err
	}
	out := &cachedRows{tm: tm, resultHeader: resultHeader{cols: cols, oids: oids, fns: valueFuncs(tm, fds), raw: make([][]byte, ncols)}}
	if err := out.body(r.b); err != nil {
		return nil, err
	}
	return out, nil
}

// body reads the command tag and row count that follow the header in b.
func (cr *cachedRows) body(b []byte) error {
	r := resultReader{b: b}
	tagLen := r.uvarint()
	tag := r.bytes(tagLen)
	nrows := r.uvarint()
	if r.err != nil {
		return r.err
	}
	if len(cr.cols) > 0 && nrows > uint64(len(r.b)) { // each row takes at least one byte per column
		return errCorruptResult
	}
	cr.tagBytes, cr.left, cr.r = tag, nrows, r
	return nil
}

// cachedRows are rows decoded one by one from a cached (or just filled)
// result; no backend is involved.
type cachedRows struct {
	resultHeader
	tm       *pgtype.Map
	shared   bool   // resultHeader is the connection's memo: Columns copies
	tagBytes []byte // command tag (shared bytes)
	left     uint64
	r        resultReader
}

var (
	_ driver.Rows                           = (*cachedRows)(nil)
	_ driver.RowsColumnTypeDatabaseTypeName = (*cachedRows)(nil)
	_ driver.RowsColumnTypeScanType         = (*cachedRows)(nil)
)

// Columns implements driver.Rows. database/sql hands the slice to the
// caller, so a memoized one is copied.
func (r *cachedRows) Columns() []string {
	if r.shared {
		return slices.Clone(r.cols)
	}
	return r.cols
}

// ColumnTypeDatabaseTypeName: see streamRows.
func (r *cachedRows) ColumnTypeDatabaseTypeName(i int) string { return typeName(r.tm, r.oids[i]) }

// ColumnTypeScanType: see streamRows.
func (r *cachedRows) ColumnTypeScanType(i int) reflect.Type { return scanType(r.oids[i]) }

// Next implements driver.Rows.
func (r *cachedRows) Next(dest []driver.Value) error {
	if r.left == 0 {
		return io.EOF
	}
	r.left--
	for i := range r.raw {
		n := r.r.uvarint()
		if n == 0 {
			r.raw[i] = nil
		} else {
			r.raw[i] = r.r.bytes(n - 1)
		}
	}
	if r.r.err != nil {
		r.left = 0
		return r.r.err
	}
	return decodeRow(r.fns, r.raw, dest)
}

// Close implements driver.Rows.
func (r *cachedRows) Close() error {
	r.left = 0
	return nil
}

// CacheStats returns the read-result cache's counters, and false when the
// cache is not enabled or the connector has not connected yet.
func (c *Connector) CacheStats() (cache.Stats, bool) {
	c.mu.Lock()
	cc := c.cache
	c.mu.Unlock()
	if cc == nil {
		return cache.Stats{}, false
	}
	return cc.Stats(), true
}

// Cache returns the connector's read-result cache (nil when [cache] is not
// enabled, or before the first Connect), for WaitUp, Invalidate and Stats.
// Connector.Close closes it; do not Close it yourself.
func (c *Connector) Cache() *cache.Cache {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cache
}

// startCache builds the cache of cfg.Cache and starts one change stream per
// shard primary, logged in as the connector's user (who needs the
// REPLICATION attribute; the FOR ALL TABLES publication is created if
// missing, which needs more privilege: dbproxy up creates it).
func (c *Connector) startCache(ctx context.Context) (*cache.Cache, error) {
	cc := c.cfg.CacheConfig()
	cc.Logger = c.opts.logger
	ch, err := cache.New(cc)
	if err != nil {
		return nil, err
	}
	for _, name := range c.names {
		sc, err := c.cfg.CacheStreamConfig(name)
		if err == nil {
			sc.ConnString, err = c.primaryConnString(name)
		}
		if err == nil {
			err = ch.Watch(ctx, sc)
		}
		if err != nil {
			_ = ch.Close(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("dbproxy driver: cache stream of shard %s: %w", name, err)
		}
	}
	return ch, nil
}

// primaryConnString is the connection string of shard name's primary for
// the connector's user and database.
func (c *Connector) primaryConnString(name string) (string, error) {
	rc, err := c.cfg.ReplicaConfig(name, c.opts.user, c.opts.database)
	if err != nil {
		return "", err
	}
	for _, n := range rc.Nodes {
		if n.Role == replica.RolePrimary {
			return n.ConnString, nil
		}
	}
	return "", fmt.Errorf("shard %s has no primary", name)
}

// invalidate drops cached reads of tables after a committed write; call it
// after recordCommit, so that the session's causal positions become the
// cache's fill floor (no read refills the old rows from a replica behind
// the write).
func (cn *conn) invalidate(tables []string) {
	if c := cn.cache; c != nil && len(tables) > 0 {
		tok := cn.sess.CausalToken()
		c.InvalidateAfter(func(shard string) uint64 { return uint64(tok.LSN(shard)) }, tables...)
	}
}

// cacheModeString is the DSN form of a cache switch.
func cacheModeString(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

func parseCacheMode(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "on", "true", "1", "yes":
		return true, nil
	case "off", "false", "0", "no":
		return false, nil
	}
	return false, dsnErr("cache=%q: want on or off", v)
}
