package proxy

import (
	"bytes"
	"context"
	"fmt"
	"math/big"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/dbproxy/dbproxy/shard"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	"golang.org/x/sync/errgroup"
)

// defaultShard is where statements without tables go.
func (s *Server) defaultShard() shard.ID {
	st, err := router.Classify("SELECT 1")
	if err == nil {
		if d, err := s.router.Route(s.baseCtx, s.router.NewSession(), st, nil); err == nil && len(d.Shards) > 0 {
			return d.Shards[0].ID
		}
	}
	var first shard.ID
	ok := false
	for id := range s.shards {
		if !ok || id < first {
			first, ok = id, true
		}
	}
	return first
}

// shardResult is what one shard returned for a multi-shard statement, in
// text format.
type shardResult struct {
	fields []pgconn.FieldDescription
	rows   [][][]byte
	tag    string
}

// runMulti runs a statement on every shard of p (one after the other,
// each on its own short lease) and combines the results: merged rows for
// reads (p.merge), the first shard's command tag for broadcasts (DDL,
// TRUNCATE, ...). Reads are sent with text results and converted to the
// client's formats at the end. Nothing is left leased.
func (c *clientConn) runMulti(ctx context.Context, p plan, sql string, bind *pgproto3.Bind, ps *preparedStmt) (*localResult, error) {
	ctx, done := c.cancellable(ctx) // a CancelRequest of the client cancels ctx
	defer done()
	if changesSchema(p.stmt) {
		// Before and after: a statement prepared meanwhile may have seen
		// the old schema.
		c.srv.schemaChanged()
		defer c.srv.schemaChanged()
	}
	if p.sql != "" {
		sql = p.sql
	} else if ps != nil {
		sql = ps.query
	}
	results := make([]shardResult, len(p.targets))
	var paramOIDs []uint32
	read := p.merge != nil || (p.stmt != nil && p.stmt.Kind == router.KindRead)
	if !read && p.stmt != nil {
		defer c.invalidateStatement(p.stmt) // broadcasts (DDL, ...): drop cached reads of their tables
	}
	if read {
		// Reads run on all shards at once (each on its own lease); the
		// goroutines are waited for here.
		g, gctx := errgroup.WithContext(ctx)
		for i, t := range p.targets {
			g.Go(func() error {
				r, oids, err := c.runOnShard(gctx, t, sql, bind, ps, i == 0 && bind != nil)
				if err != nil {
					return fmt.Errorf("shard %d: %w", t.shard, err)
				}
				results[i] = r
				if i == 0 {
					paramOIDs = oids
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return nil, canceledBy(ctx, err)
		}
	} else {
		// Broadcasts (DDL, ...) run shard by shard and stop at the first
		// error, so a bad statement fails on one shard only.
		for i, t := range p.targets {
			r, oids, err := c.runOnShard(ctx, t, sql, bind, ps, i == 0 && bind != nil)
			if err != nil {
				return nil, canceledBy(ctx, fmt.Errorf("shard %d: %w", t.shard, err))
			}
			if i == 0 {
				paramOIDs = oids
			}
			results[i] = r
		}
	}
	res := &localResult{paramOIDs: paramOIDs}
	first := results[0]
	if first.fields == nil {
		res.tag = first.tag
		return res, nil
	}
	res.fields = make([]pgproto3.FieldDescription, len(first.fields))
	for i, f := range first.fields {
		res.fields[i] = pgproto3.FieldDescription{Name: []byte(f.Name), TableOID: f.TableOID, TableAttributeNumber: f.TableAttributeNumber,
			DataTypeOID: f.DataTypeOID, DataTypeSize: f.DataTypeSize, TypeModifier: f.TypeModifier}
	}
	var rows [][][]byte
	for _, r := range results {
		rows = append(rows, r.rows...)
	}
	if m := p.merge; m != nil {
		var err error
		rows, err = mergeRows(m, res.fields, rows)
		if err != nil {
			return nil, err
		}
		for _, a := range m.Aggregates {
			if a.Func == router.AggAvg {
				col := a.Column
				if col < 0 {
					col += len(res.fields)
				}
				if isFloat(res.fields[col].DataTypeOID) {
					res.fields[col].DataTypeOID, res.fields[col].DataTypeSize = pgtype.Float8OID, 8
				} else {
					res.fields[col].DataTypeOID, res.fields[col].DataTypeSize, res.fields[col].TypeModifier = pgtype.NumericOID, -1, -1
				}
			}
		}
		if h := m.HiddenColumns; h > 0 && h <= len(res.fields) {
			res.fields = res.fields[:len(res.fields)-h]
			for i := range rows {
				rows[i] = rows[i][:len(rows[i])-h]
			}
		}
	}
	res.rows = rows
	res.tag = "SELECT " + strconv.Itoa(len(rows))
	if bind != nil {
		if err := applyResultFormats(res, bind.ResultFormatCodes); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// cancellable returns ctx cancelled by a CancelRequest of the client while
// the proxy runs a statement on backends of its own (no attachment); call
// done when the statement ends.
func (c *clientConn) cancellable(ctx context.Context) (_ context.Context, done func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	c.mu.Lock()
	c.multiCancel = cancel
	c.mu.Unlock()
	c.multiRunning.Store(true)
	return ctx, func() {
		c.multiRunning.Store(false)
		c.mu.Lock()
		c.multiCancel = nil
		c.mu.Unlock()
		cancel(nil)
	}
}

// canceledBy returns errCanceledByClient for an error of a multi-shard
// statement the client cancelled (a shard's 57014, or a lease wait the
// cancellation ended), else err.
func canceledBy(ctx context.Context, err error) error {
	if context.Cause(ctx) == errCanceledByClient {
		return errCanceledByClient
	}
	return err
}

// runOnShard leases a backend of t, runs sql there and releases it.
func (c *clientConn) runOnShard(ctx context.Context, t target, sql string, bind *pgproto3.Bind, ps *preparedStmt, describe bool) (shardResult, []uint32, error) {
	lease, err := c.leaseForQuery(ctx, t)
	if err != nil {
		return shardResult{}, nil, err
	}
	conn := lease.Conn()
	var out shardResult
	var oids []uint32
	if bind == nil {
		results, err := readAllResults(conn.Exec(ctx, sql))
		if err == nil && len(results) > 0 {
			last := results[len(results)-1]
			out = shardResult{tag: last.CommandTag.String()}
			if last.FieldDescriptions != nil {
				out.fields, out.rows = last.FieldDescriptions, last.Rows
			}
		}
		finishLease(lease, err)
		return out, nil, err
	}
	var paramOIDs []uint32
	if ps != nil {
		paramOIDs = ps.paramOIDs
	}
	if describe {
		sd, err := conn.Prepare(ctx, "", sql, paramOIDs)
		if err != nil {
			finishLease(lease, err)
			return out, nil, err
		}
		oids = sd.ParamOIDs
		paramOIDs = sd.ParamOIDs
	}
	r := readResult(conn.ExecParams(ctx, sql, bind.Parameters, paramOIDs, bind.ParameterFormatCodes, nil))
	finishLease(lease, r.Err)
	if r.Err != nil {
		return out, nil, r.Err
	}
	out = shardResult{tag: r.CommandTag.String(), fields: r.FieldDescriptions, rows: r.Rows}
	return out, oids, nil
}

// readResult reads rr to its end like ResultReader.Read, but keeps the
// row description of a result without rows (Read only records it with the
// first row): a shard where no row matches still returns its columns, so
// that runMulti merges its empty result with the other shards' rows
// instead of taking it for a command without a result set.
func readResult(rr *pgconn.ResultReader) *pgconn.Result {
	fields := slices.Clone(rr.FieldDescriptions()) // pgconn reuses the slice
	r := rr.Read()
	if r.FieldDescriptions == nil {
		r.FieldDescriptions = fields
	}
	return r
}

// readAllResults is MultiResultReader.ReadAll with readResult's handling
// of results without rows.
func readAllResults(mrr *pgconn.MultiResultReader) ([]*pgconn.Result, error) {
	var results []*pgconn.Result
	for mrr.NextResult() {
		results = append(results, readResult(mrr.ResultReader()))
	}
	return results, mrr.Close()
}

func finishLease(l *replica.Lease, err error) {
	conn := l.Conn()
	if conn.IsClosed() || conn.TxStatus() != 'I' {
		l.Discard(err)
		return
	}
	l.Release(err)
}

// mergeRows applies a merge plan to the union of the shards' rows (text).
func mergeRows(m *router.MergePlan, fields []pgproto3.FieldDescription, rows [][][]byte) ([][][]byte, error) {
	n := len(fields)
	col := func(i int) int {
		if i < 0 {
			return n + i
		}
		return i
	}
	if len(m.Aggregates) > 0 {
		var err error
		rows, err = aggregate(m, fields, rows, col)
		if err != nil {
			return nil, err
		}
	}
	if len(m.Sort) > 0 {
		var sortErr error
		sort.SliceStable(rows, func(a, b int) bool {
			for _, k := range m.Sort {
				i := col(k.Column)
				c, err := compareValues(fields[i].DataTypeOID, rows[a][i], rows[b][i], k.NullsFirst)
				if err != nil && sortErr == nil {
					sortErr = err
				}
				if c != 0 {
					if k.Desc {
						// NULL placement is given by NullsFirst, not reversed.
						if rows[a][i] == nil || rows[b][i] == nil {
							return c < 0
						}
						return c > 0
					}
					return c < 0
				}
			}
			return false
		})
		if sortErr != nil {
			return nil, sortErr
		}
	}
	if m.Offset > 0 {
		if m.Offset >= int64(len(rows)) {
			rows = nil
		} else {
			rows = rows[m.Offset:]
		}
	}
	if m.Limit >= 0 && int64(len(rows)) > m.Limit {
		rows = rows[:m.Limit]
	}
	return rows, nil
}

// aggregate groups rows by the plan's group-key columns and combines the
// aggregate columns.
func aggregate(m *router.MergePlan, fields []pgproto3.FieldDescription, rows [][][]byte, col func(int) int) ([][][]byte, error) {
	var keyCols []int
	for _, a := range m.Aggregates {
		if a.Func == router.AggGroupKey {
			keyCols = append(keyCols, col(a.Column))
		}
	}
	groups := map[string]int{}
	var out [][][]byte
	var sums []map[int]*acc
	for _, r := range rows {
		var kb bytes.Buffer
		for _, k := range keyCols {
			if r[k] == nil {
				kb.WriteByte(0)
			} else {
				kb.WriteByte(1)
				kb.WriteString(strconv.Itoa(len(r[k])))
				kb.WriteByte(':')
				kb.Write(r[k])
			}
		}
		key := kb.String()
		gi, ok := groups[key]
		if !ok {
			gi = len(out)
			groups[key] = gi
			out = append(out, append([][]byte(nil), r...))
			sums = append(sums, map[int]*acc{})
		}
		for _, a := range m.Aggregates {
			i := col(a.Column)
			switch a.Func {
			case router.AggGroupKey:
				continue
			case router.AggCount, router.AggSum, router.AggAvg:
				ac := sums[gi][i]
				if ac == nil {
					ac = &acc{}
					sums[gi][i] = ac
				}
				if err := ac.add(fields[i].DataTypeOID, r[i]); err != nil {
					return nil, err
				}
				if a.Func == router.AggAvg {
					// Kept apart from an AggCount of the same column, which
					// would otherwise be counted twice.
					ci := col(a.CountColumn)
					cc := sums[gi][avgKey(ci)]
					if cc == nil {
						cc = &acc{}
						sums[gi][avgKey(ci)] = cc
					}
					if err := cc.add(fields[ci].DataTypeOID, r[ci]); err != nil {
						return nil, err
					}
				}
			case router.AggMin, router.AggMax:
				if !ok {
					continue
				}
				cur := out[gi][i]
				v := r[i]
				if v == nil {
					continue
				}
				if cur == nil {
					out[gi][i] = v
					continue
				}
				c, err := compareValues(fields[i].DataTypeOID, v, cur, false)
				if err != nil {
					return nil, err
				}
				if a.Func == router.AggMin && c < 0 || a.Func == router.AggMax && c > 0 {
					out[gi][i] = v
				}
			}
		}
	}
	for gi := range out {
		for _, a := range m.Aggregates {
			i := col(a.Column)
			switch a.Func {
			case router.AggCount, router.AggSum:
				out[gi][i] = sums[gi][i].text(a.Func == router.AggCount)
			case router.AggAvg:
				ci := col(a.CountColumn)
				cnt := sums[gi][avgKey(ci)]
				out[gi][i] = sums[gi][i].avg(cnt, isFloat(fields[i].DataTypeOID))
				out[gi][ci] = cnt.text(true)
			}
		}
	}
	if len(out) == 0 && len(keyCols) == 0 {
		// No shard returned a row and there is no GROUP BY: nothing.
		return nil, nil
	}
	return out, nil
}

// avgKey is where the count of an average is accumulated.
func avgKey(countCol int) int { return -1 - countCol }

// acc sums text values exactly (big.Rat) or as floats.
type acc struct {
	seen  bool
	float bool
	f     float64
	r     big.Rat
	scale int
}

func (a *acc) add(oid uint32, v []byte) error {
	if v == nil {
		return nil
	}
	s := string(v)
	if isFloat(oid) {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("merging %q: %w", s, err)
		}
		a.float, a.f, a.seen = true, a.f+f, true
		return nil
	}
	var r big.Rat
	if _, ok := r.SetString(s); !ok {
		return newClientError(codeFeatureNotSupported, fmt.Sprintf("cannot merge value %q across shards", s))
	}
	if i := strings.IndexByte(s, '.'); i >= 0 && len(s)-i-1 > a.scale {
		a.scale = len(s) - i - 1
	}
	a.r.Add(&a.r, &r)
	a.seen = true
	return nil
}

func (a *acc) text(count bool) []byte {
	if !a.seen {
		if count {
			return []byte("0")
		}
		return nil
	}
	if a.float {
		return []byte(strconv.FormatFloat(a.f, 'g', -1, 64))
	}
	return []byte(a.r.FloatString(a.scale))
}

func (a *acc) avg(count *acc, float bool) []byte {
	if !a.seen || count == nil || !count.seen || count.r.Sign() == 0 && !count.float {
		return nil
	}
	if a.float || float {
		c, _ := count.r.Float64()
		if count.float {
			c = count.f
		}
		s := a.f
		if !a.float {
			s, _ = a.r.Float64()
		}
		return []byte(strconv.FormatFloat(s/c, 'g', -1, 64))
	}
	var q big.Rat
	q.Quo(&a.r, &count.r)
	return []byte(q.FloatString(max(16, a.scale)))
}

func isFloat(oid uint32) bool { return oid == pgtype.Float4OID || oid == pgtype.Float8OID }

// compareValues orders two text-format values of type oid (NULLs last
// unless nullsFirst).
func compareValues(oid uint32, a, b []byte, nullsFirst bool) (int, error) {
	switch {
	case a == nil && b == nil:
		return 0, nil
	case a == nil:
		if nullsFirst {
			return -1, nil
		}
		return 1, nil
	case b == nil:
		if nullsFirst {
			return 1, nil
		}
		return -1, nil
	}
	switch oid {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID, pgtype.NumericOID:
		var x, y big.Rat
		_, ok1 := x.SetString(string(a))
		_, ok2 := y.SetString(string(b))
		if ok1 && ok2 {
			return x.Cmp(&y), nil
		}
		// NaN sorts after every number in PostgreSQL.
		return boolCmp(string(a) == "NaN", string(b) == "NaN"), nil
	case pgtype.Float4OID, pgtype.Float8OID:
		x, err1 := strconv.ParseFloat(string(a), 64)
		y, err2 := strconv.ParseFloat(string(b), 64)
		if err1 != nil || err2 != nil {
			return 0, newClientError(codeFeatureNotSupported, "cannot compare float values across shards")
		}
		switch {
		case x != x && y != y:
			return 0, nil
		case x != x:
			return 1, nil
		case y != y:
			return -1, nil
		case x < y:
			return -1, nil
		case x > y:
			return 1, nil
		}
		return 0, nil
	case pgtype.BoolOID:
		return boolCmp(a[0] == 't', b[0] == 't'), nil
	}
	return bytes.Compare(a, b), nil
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// textToBinary converts one text-format value to binary format.
func textToBinary(typeMap *pgtype.Map, oid uint32, v []byte) ([]byte, error) {
	t, ok := typeMap.TypeForOID(oid)
	if !ok {
		return nil, fmt.Errorf("unknown type oid %d", oid)
	}
	val, err := t.Codec.DecodeValue(typeMap, oid, pgtype.TextFormatCode, v)
	if err != nil {
		return nil, err
	}
	return typeMap.Encode(oid, pgtype.BinaryFormatCode, val, nil)
}
