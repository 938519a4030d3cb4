package driver

import (
	"context"
	"database/sql/driver"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// streamRows streams one shard's result set from a leased backend; Close
// (or reading past the last row) finishes the statement and releases or
// keeps the backend as the transaction status says.
type streamRows struct {
	cn   *conn
	ctx  context.Context
	b    *backend
	st   *router.Statement
	rr   *pgconn.ResultReader
	key  string // cached statement (forgotten if the server rejects it)
	o    callOptions
	cols []string
	oids []uint32
	fns  []valueFunc
	done bool
	err  error
	// again runs the statement once more (a read a standby may cancel
	// for a conflict with recovery); nil when it may not.
	again     func() (any, error)
	delivered bool // a row reached the caller
}

var (
	_ driver.Rows                           = (*streamRows)(nil)
	_ driver.RowsColumnTypeDatabaseTypeName = (*streamRows)(nil)
	_ driver.RowsColumnTypeScanType         = (*streamRows)(nil)
)

func (r *streamRows) init(fds []pgconn.FieldDescription) {
	r.cols = make([]string, len(fds))
	r.oids = make([]uint32, len(fds))
	for i, fd := range fds {
		r.cols[i] = fd.Name
		r.oids[i] = fd.DataTypeOID
	}
	r.fns = valueFuncs(r.cn.tm, fds)
}

// Columns implements driver.Rows.
func (r *streamRows) Columns() []string { return r.cols }

// ColumnTypeDatabaseTypeName returns the PostgreSQL type name in upper
// case (the OID in decimal when the type is unknown to pgx).
func (r *streamRows) ColumnTypeDatabaseTypeName(i int) string { return typeName(r.cn.tm, r.oids[i]) }

// ColumnTypeScanType returns the Go type Next produces for column i.
func (r *streamRows) ColumnTypeScanType(i int) reflect.Type { return scanType(r.oids[i]) }

// Next implements driver.Rows.
func (r *streamRows) Next(dest []driver.Value) error {
	if r.done {
		if r.err != nil {
			return r.err
		}
		return io.EOF
	}
	if !r.rr.NextRow() {
		err := r.finish()
		if err == nil {
			return io.EOF
		}
		if !r.delivered && r.again != nil && recoveryConflict(err) && r.ctx.Err() == nil {
			if next, ok := r.runAgain(); ok {
				*r = *next
				return r.Next(dest)
			}
		}
		return err
	}
	r.delivered = true
	return decodeRow(r.fns, r.rr.Values(), dest)
}

// runAgain runs r's statement again after a conflict with recovery
// cancelled it before any row was delivered. ok is false (and nothing is
// left open) when that fails or yields a result of another shape.
func (r *streamRows) runAgain() (*streamRows, bool) {
	rows, err := r.again()
	if err != nil {
		return nil, false
	}
	next, ok := rows.(*streamRows)
	if !ok || !slices.Equal(next.cols, r.cols) || !slices.Equal(next.oids, r.oids) {
		rows.(driver.Rows).Close()
		return nil, false
	}
	return next, true
}

// Close implements driver.Rows: unread rows are discarded.
func (r *streamRows) Close() error {
	if r.done {
		return nil
	}
	return r.finish()
}

func (r *streamRows) finish() error {
	r.done = true
	tag, err := r.rr.Close()
	forgetStatement(r.b.pc, r.key, err)
	r.cn.afterStatement(r.ctx, r.b, r.st, tag.String(), err, r.o)
	if err != nil {
		r.err = err
	}
	return err
}

// bufRows are rows held in memory: merged multi-shard results, results of
// multi-statement strings, statements without a result set.
type bufRows struct {
	tm   *pgtype.Map
	cols []string
	oids []uint32
	rows [][]driver.Value
	i    int
}

var (
	_ driver.Rows                           = (*bufRows)(nil)
	_ driver.RowsColumnTypeDatabaseTypeName = (*bufRows)(nil)
	_ driver.RowsColumnTypeScanType         = (*bufRows)(nil)
)

func (r *bufRows) fromResult(tm *pgtype.Map, res *pgconn.Result) error {
	r.tm = tm
	r.cols = make([]string, len(res.FieldDescriptions))
	r.oids = make([]uint32, len(res.FieldDescriptions))
	for i, fd := range res.FieldDescriptions {
		r.cols[i], r.oids[i] = fd.Name, fd.DataTypeOID
	}
	fns := valueFuncs(tm, res.FieldDescriptions)
	for _, raw := range res.Rows {
		row := make([]driver.Value, len(fns))
		if err := decodeRow(fns, raw, row); err != nil {
			return err
		}
		r.rows = append(r.rows, row)
	}
	return nil
}

// Columns implements driver.Rows.
func (r *bufRows) Columns() []string { return r.cols }

// ColumnTypeDatabaseTypeName: see streamRows.
func (r *bufRows) ColumnTypeDatabaseTypeName(i int) string { return typeName(r.tm, r.oids[i]) }

// ColumnTypeScanType: see streamRows.
func (r *bufRows) ColumnTypeScanType(i int) reflect.Type { return scanType(r.oids[i]) }

// Next implements driver.Rows.
func (r *bufRows) Next(dest []driver.Value) error {
	if r.i >= len(r.rows) {
		return io.EOF
	}
	copy(dest, r.rows[r.i])
	r.i++
	return nil
}

// Close implements driver.Rows.
func (r *bufRows) Close() error {
	r.rows = nil
	return nil
}

func typeName(tm *pgtype.Map, oid uint32) string {
	if tm != nil {
		if t, ok := tm.TypeForOID(oid); ok {
			return strings.ToUpper(t.Name)
		}
	}
	return strconv.FormatUint(uint64(oid), 10)
}

func scanType(oid uint32) reflect.Type {
	switch oid {
	case pgtype.Float8OID, pgtype.Float4OID:
		return reflect.TypeFor[float64]()
	case pgtype.Int8OID, pgtype.Int4OID, pgtype.Int2OID:
		return reflect.TypeFor[int64]()
	case pgtype.BoolOID:
		return reflect.TypeFor[bool]()
	case pgtype.DateOID, pgtype.TimestampOID, pgtype.TimestamptzOID:
		return reflect.TypeFor[time.Time]()
	case pgtype.ByteaOID, pgtype.JSONOID, pgtype.JSONBOID, pgtype.XMLOID:
		return reflect.TypeFor[[]byte]()
	}
	return reflect.TypeFor[string]()
}
