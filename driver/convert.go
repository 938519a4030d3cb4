package driver

import (
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"time"

	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// ErrNamedArgs is returned for sql.Named arguments: PostgreSQL statements
// take positional parameters ($1, $2, ...).
var ErrNamedArgs = errors.New("dbproxy driver: named arguments are not supported; use positional $n parameters")

// checkNamedValue implements driver.NamedValueChecker for a connection
// whose pgtype.Map is m. Standard driver.Value types pass as they are;
// driver.Valuer implementations, Go integer, float and pointer types are
// converted by driver.DefaultParameterConverter; any other value pgx can
// encode (slices as arrays, [16]byte as uuid, netip types, pgtype values,
// ...) is kept and encoded with pgx's codecs in text format.
func checkNamedValue(m *pgtype.Map, nv *driver.NamedValue) error {
	if nv.Name != "" {
		return fmt.Errorf("%w (got sql.Named(%q, ...))", ErrNamedArgs, nv.Name)
	}
	switch nv.Value.(type) {
	case nil, int64, float64, bool, string, []byte, time.Time:
		return nil
	}
	v, err := driver.DefaultParameterConverter.ConvertValue(nv.Value)
	if err == nil {
		nv.Value = v
		return nil
	}
	if _, ok := m.TypeForValue(nv.Value); ok {
		return nil
	}
	return fmt.Errorf("dbproxy driver: argument $%d of type %T: %w", nv.Ordinal, nv.Value, err)
}

// encodedArgs are the Bind parameters of one statement, kept in the shapes
// pgconn.ExecParams and router.Route take.
type encodedArgs struct {
	values  [][]byte
	oids    []uint32
	formats []int16
	params  []router.Param
}

const (
	oidBytea       = pgtype.ByteaOID
	oidTimestamptz = pgtype.TimestamptzOID
)

// encodeArgs encodes args (already checked by checkNamedValue) as
// parameters: text format and unspecified type (OID 0, inferred by the
// server) for strings, integers, floats and booleans; binary bytea for
// []byte; text timestamptz for time.Time; text in pgx's codec of the
// value's type for everything else.
func encodeArgs(m *pgtype.Map, args []driver.NamedValue, buf *encodedArgs) error {
	buf.values = buf.values[:0]
	buf.oids = buf.oids[:0]
	buf.formats = buf.formats[:0]
	buf.params = buf.params[:0]
	for i := range args {
		a := &args[i]
		if a.Name != "" {
			return fmt.Errorf("%w (got sql.Named(%q, ...))", ErrNamedArgs, a.Name)
		}
		if a.Ordinal != i+1 {
			return fmt.Errorf("dbproxy driver: argument %d has ordinal %d", i+1, a.Ordinal)
		}
		var (
			val    []byte
			oid    uint32
			format int16
		)
		switch v := a.Value.(type) {
		case nil:
		case int64:
			val = strconv.AppendInt(make([]byte, 0, 20), v, 10)
		case float64:
			val = appendFloat(v)
		case bool:
			if v {
				val = []byte("true")
			} else {
				val = []byte("false")
			}
		case string:
			val = []byte(v)
		case []byte:
			val, oid, format = v, oidBytea, 1
			if v == nil {
				val = []byte{}
			}
		case time.Time:
			oid = oidTimestamptz
			b, err := m.Encode(oid, pgtype.TextFormatCode, v, nil)
			if err != nil {
				return fmt.Errorf("dbproxy driver: argument $%d: %w", i+1, err)
			}
			val = b
		default:
			t, ok := m.TypeForValue(v)
			if !ok {
				return fmt.Errorf("dbproxy driver: argument $%d: cannot encode %T", i+1, v)
			}
			oid = t.OID
			b, err := m.Encode(oid, pgtype.TextFormatCode, v, nil)
			if err != nil {
				return fmt.Errorf("dbproxy driver: argument $%d: %w", i+1, err)
			}
			if b == nil && !isNil(v) {
				b = []byte{}
			}
			val = b
		}
		buf.values = append(buf.values, val)
		buf.oids = append(buf.oids, oid)
		buf.formats = append(buf.formats, format)
		buf.params = append(buf.params, router.Param{Value: val, Format: format, OID: oid})
	}
	return nil
}

func isNil(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Interface:
		return rv.IsNil()
	}
	return false
}

func appendFloat(v float64) []byte {
	switch {
	case math.IsNaN(v):
		return []byte("NaN")
	case math.IsInf(v, 1):
		return []byte("Infinity")
	case math.IsInf(v, -1):
		return []byte("-Infinity")
	}
	return strconv.AppendFloat(make([]byte, 0, 24), v, 'g', -1, 64)
}

// valueFunc decodes one column's value into a driver.Value.
type valueFunc func(src []byte) (driver.Value, error)

// valueFuncs returns the decoders of fds, as pgx's stdlib does: bool,
// bytea, float4/8, int2/4/8, date and timestamps, json/jsonb and xml
// decode to the matching Go types; everything else (numeric included)
// decodes to its text form.
func valueFuncs(m *pgtype.Map, fds []pgconn.FieldDescription) []valueFunc {
	out := make([]valueFunc, len(fds))
	for i, fd := range fds {
		out[i] = valueFuncFor(m, fd.DataTypeOID, fd.Format)
	}
	return out
}

func valueFuncFor(m *pgtype.Map, oid uint32, format int16) valueFunc {
	switch oid {
	case pgtype.BoolOID:
		var d bool
		p := m.PlanScan(oid, format, &d)
		return func(src []byte) (driver.Value, error) { err := p.Scan(src, &d); return d, err }
	case pgtype.ByteaOID, pgtype.JSONOID, pgtype.JSONBOID, pgtype.XMLOID:
		p := m.PlanScan(oid, format, new([]byte))
		return func(src []byte) (driver.Value, error) {
			var d []byte // fresh: the value outlives the next row
			err := p.Scan(src, &d)
			return d, err
		}
	case pgtype.CIDOID, pgtype.OIDOID, pgtype.XIDOID:
		var d pgtype.Uint32
		p := m.PlanScan(oid, format, &d)
		return func(src []byte) (driver.Value, error) {
			if err := p.Scan(src, &d); err != nil {
				return nil, err
			}
			return d.Value()
		}
	case pgtype.DateOID:
		var d pgtype.Date
		p := m.PlanScan(oid, format, &d)
		return func(src []byte) (driver.Value, error) {
			if err := p.Scan(src, &d); err != nil {
				return nil, err
			}
			return d.Value()
		}
	case pgtype.Float4OID:
		var d float32
		p := m.PlanScan(oid, format, &d)
		return func(src []byte) (driver.Value, error) { err := p.Scan(src, &d); return float64(d), err }
	case pgtype.Float8OID:
		var d float64
		p := m.PlanScan(oid, format, &d)
		return func(src []byte) (driver.Value, error) { err := p.Scan(src, &d); return d, err }
	case pgtype.Int2OID:
		var d int16
		p := m.PlanScan(oid, format, &d)
		return func(src []byte) (driver.Value, error) { err := p.Scan(src, &d); return int64(d), err }
	case pgtype.Int4OID:
		var d int32
		p := m.PlanScan(oid, format, &d)
		return func(src []byte) (driver.Value, error) { err := p.Scan(src, &d); return int64(d), err }
	case pgtype.Int8OID:
		var d int64
		p := m.PlanScan(oid, format, &d)
		return func(src []byte) (driver.Value, error) { err := p.Scan(src, &d); return d, err }
	case pgtype.TimestampOID:
		var d pgtype.Timestamp
		p := m.PlanScan(oid, format, &d)
		return func(src []byte) (driver.Value, error) {
			if err := p.Scan(src, &d); err != nil {
				return nil, err
			}
			return d.Value()
		}
	case pgtype.TimestamptzOID:
		var d pgtype.Timestamptz
		p := m.PlanScan(oid, format, &d)
		return func(src []byte) (driver.Value, error) {
			if err := p.Scan(src, &d); err != nil {
				return nil, err
			}
			return d.Value()
		}
	default:
		if format == pgtype.TextFormatCode {
			return func(src []byte) (driver.Value, error) { return string(src), nil }
		}
		var d string
		p := m.PlanScan(oid, format, &d)
		return func(src []byte) (driver.Value, error) { err := p.Scan(src, &d); return d, err }
	}
}

// decodeRow decodes raw values into dest.
func decodeRow(fns []valueFunc, raw [][]byte, dest []driver.Value) error {
	for i, rv := range raw {
		if i >= len(dest) {
			break
		}
		if rv == nil {
			dest[i] = nil
			continue
		}
		v, err := fns[i](rv)
		if err != nil {
			return fmt.Errorf("dbproxy driver: decode column %d: %w", i+1, err)
		}
		dest[i] = v
	}
	return nil
}
