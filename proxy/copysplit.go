package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/dbproxy/dbproxy/shard"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// COPY FROM STDIN into a sharded table.
//
// The router gives every shard (router.CopySplit). The proxy opens a
// transaction and the same COPY on each shard's primary, answers the
// client's CopyInResponse itself, reads the client's rows (text, CSV or
// binary), finds each row's shard from its key columns and streams the
// row there. When the client's CopyDone arrives and every shard accepted
// its rows, each shard commits; on any error (a bad row, a shard's
// constraint violation, CopyFail) every shard rolls back and the client
// gets the error. A shard failing at COMMIT after others committed is the
// one way to end with part of the rows; the error then says so.

// copyFlushBytes is how many bytes of rows are gathered per shard before
// they are written to the shard's COPY.
const copyFlushBytes = 64 << 10

// binaryCopySignature starts a binary COPY stream.
const binaryCopySignature = "PGCOPY\n\xff\r\n\x00"

// copyShard is one shard's side of a split COPY.
type copyShard struct {
	lease *replica.Lease
	pw    *io.PipeWriter
	w     io.Writer // where the gathered rows go (pw)
	buf   []byte
	done  chan copyShardResult
	began bool
}

type copyShardResult struct {
	tag pgconn.CommandTag
	err error
}

// copyInSplit runs a simple-protocol COPY FROM STDIN into a sharded table.
func (c *clientConn) copyInSplit(ctx context.Context, p plan, st *router.Statement, sql string) stateFn {
	ci := st.CopyIn
	ctx, done := c.cancellable(ctx)
	defer done()

	shards := make([]*copyShard, len(p.targets))
	index := map[shard.ID]*copyShard{}
	release := func(err error) {
		for _, s := range shards {
			if s == nil {
				continue
			}
			if s.began && err != nil && !s.lease.Conn().IsClosed() {
				_, _ = s.lease.Conn().Exec(context.WithoutCancel(ctx), "ROLLBACK").ReadAll()
			}
			finishLease(s.lease, err)
		}
	}
	fail := func(err error) stateFn {
		release(err)
		c.observeDetached(err)
		return c.answerLocal(nil, canceledBy(ctx, err))
	}
	for i, t := range p.targets {
		lease, err := c.leaseForQuery(ctx, t) // the COPY and its transaction run as simple queries
		if err != nil {
			return fail(err)
		}
		shards[i] = &copyShard{lease: lease}
		index[t.shard] = shards[i]
	}
	sp, err := newCopySplitter(ctx, ci, p.split, shards[0].lease.Conn())
	if err != nil {
		return fail(err)
	}
	sp.route = func(id shard.ID) *copyShard { return index[id] }
	for _, s := range shards {
		if _, err := s.lease.Conn().Exec(ctx, "BEGIN").ReadAll(); err != nil {
			return fail(err)
		}
		s.began = true
	}
	for _, s := range shards {
		pr, pw := io.Pipe()
		s.pw, s.w, s.done = pw, pw, make(chan copyShardResult, 1)
		conn := s.lease.Conn()
		go func() {
			tag, err := conn.CopyFrom(ctx, pr, sql)
			if err == nil {
				err = io.EOF
			}
			pr.CloseWithError(err)
			if err == io.EOF {
				err = nil
			}
			s.done <- copyShardResult{tag, err}
		}()
	}
	format := int16(0)
	if ci.Format == "binary" {
		format = 1
	}
	codes := make([]uint16, sp.ncols)
	for i := range codes {
		codes[i] = uint16(format)
	}
	c.setState(stateCopy)
	sendErr := c.send(&pgproto3.CopyInResponse{OverallFormat: byte(format), ColumnFormatCodes: codes})

	// The client's rows, until CopyDone or CopyFail.
	var failed, readErr error
	if sendErr != nil {
		readErr = sendErr
	}
read:
	for readErr == nil {
		msg, err := c.fe.Receive()
		if err != nil {
			readErr = err
			break
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if failed == nil {
				failed = sp.write(m.Data)
			}
		case *pgproto3.CopyDone:
			if failed == nil {
				failed = sp.finish()
			}
			break read
		case *pgproto3.CopyFail:
			if failed == nil {
				failed = &clientError{code: codeQueryCanceled, message: "COPY from stdin failed: " + m.Message}
			}
			break read
		case *pgproto3.Flush, *pgproto3.Sync:
			// ignored during COPY, as PostgreSQL does
		default:
			if failed == nil {
				failed = newClientError(codeProtocolViolation, fmt.Sprintf("unexpected message type 0x%02X during COPY from stdin", msgType(msg)))
			}
			break read
		}
	}
	if failed == nil && readErr != nil {
		failed = readErr
	}

	// End every shard's COPY: CopyDone on success, CopyFail otherwise.
	var total int64
	for _, s := range shards {
		if failed != nil {
			s.pw.CloseWithError(failed)
		} else {
			s.pw.Close()
		}
	}
	var partial []string
	for _, s := range shards {
		r := <-s.done
		if r.err != nil && failed == nil {
			failed = r.err
		}
		total += r.tag.RowsAffected()
	}
	if failed == nil {
		for i, s := range shards {
			if _, err := s.lease.Conn().Exec(ctx, "COMMIT").ReadAll(); err != nil {
				failed = err
				if i > 0 {
					partial = append(partial, "shards before it committed")
				}
				break
			}
			s.began = false
		}
	}
	release(failed)
	if readErr != nil {
		c.observeDetached(readErr)
		return c.readFailed(readErr)
	}
	c.observeDetached(failed)
	if failed != nil {
		failed = canceledBy(ctx, failed)
		if len(partial) > 0 {
			failed = fmt.Errorf("COPY committed on some shards only (%s): %w", strings.Join(partial, ", "), failed)
		}
		return c.answerLocal(nil, failed)
	}
	return c.answerLocal(&localResult{tag: "COPY " + strconv.FormatInt(total, 10)}, nil)
}

// msgType is a frontend message's type byte, for error messages.
func msgType(m pgproto3.FrontendMessage) byte {
	b, err := m.Encode(nil)
	if err != nil || len(b) == 0 {
		return 0
	}
	return b[0]
}

// copySplitter reads a COPY data stream and routes whole rows.
type copySplitter struct {
	ci       *router.CopyInfo
	table    string
	topo     *shard.Topology
	types    []shard.KeyType
	keyIdx   []int // position of each key column in a row
	maxIdx   int
	ncols    int
	route    func(shard.ID) *copyShard
	pending  []byte
	header   bool // the header line is still to come (text, CSV)
	binStart bool // the binary header was read
	ended    bool // end-of-data marker or trailer seen
	rows     int64
	keyParts []shard.Key
}

// newCopySplitter works out where the key columns are in a row: from the
// COPY's column list, or from the table's columns (read with conn).
func newCopySplitter(ctx context.Context, ci *router.CopyInfo, split *router.CopySplit, conn *pgconn.PgConn) (*copySplitter, error) {
	cols := ci.Columns
	if cols == nil {
		name := quoteIdent(ci.Table.Name)
		if ci.Table.Schema != "" {
			name = quoteIdent(ci.Table.Schema) + "." + name
		}
		res := conn.ExecParams(ctx, `SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum`,
			[][]byte{[]byte(name)}, nil, nil, nil).Read()
		if res.Err != nil {
			return nil, res.Err
		}
		for _, r := range res.Rows {
			cols = append(cols, string(r[0]))
		}
	}
	sp := &copySplitter{ci: ci, table: split.Table.Name, topo: split.Topology, types: split.Table.Types, ncols: len(cols),
		header: ci.Header && ci.Format != "binary", keyParts: make([]shard.Key, len(split.Table.Columns))}
	for _, kc := range split.Table.Columns {
		i := slices.Index(cols, kc)
		if i < 0 {
			return nil, newClientError(codeFeatureNotSupported, fmt.Sprintf("COPY into table %s, sharded by (%s), must include the column %s",
				split.Table.Name, strings.Join(split.Table.Columns, ", "), kc))
		}
		sp.keyIdx = append(sp.keyIdx, i)
		sp.maxIdx = max(sp.maxIdx, i)
	}
	return sp, nil
}

// write takes the next CopyData payload.
func (sp *copySplitter) write(data []byte) error {
	if sp.ended {
		return nil
	}
	sp.pending = append(sp.pending, data...)
	var n int
	var err error
	if sp.ci.Format == "binary" {
		n, err = sp.binary(sp.pending, false)
	} else {
		n, err = sp.lines(sp.pending, false)
	}
	rest := copy(sp.pending, sp.pending[n:])
	sp.pending = sp.pending[:rest]
	return err
}

// finish handles the end of the client's data and writes out what is
// gathered for every shard.
func (sp *copySplitter) finish() error {
	if !sp.ended && len(sp.pending) > 0 {
		var err error
		if sp.ci.Format == "binary" {
			_, err = sp.binary(sp.pending, true)
		} else {
			_, err = sp.lines(sp.pending, true)
		}
		if err != nil {
			return err
		}
	}
	sp.pending = nil
	return sp.eachShard(sp.flush)
}

// toAll sends b to every shard.
func (sp *copySplitter) toAll(b []byte) error {
	return sp.eachShard(func(s *copyShard) error { return sp.add(s, b) })
}

func (sp *copySplitter) eachShard(f func(*copyShard) error) error {
	for _, id := range sp.topo.Shards() {
		if s := sp.route(id.ID); s != nil {
			if err := f(s); err != nil {
				return err
			}
		}
	}
	return nil
}

func (sp *copySplitter) add(s *copyShard, b []byte) error {
	s.buf = append(s.buf, b...)
	if len(s.buf) >= copyFlushBytes {
		return sp.flush(s)
	}
	return nil
}

func (sp *copySplitter) flush(s *copyShard) error {
	if len(s.buf) == 0 {
		return nil
	}
	_, err := s.w.Write(s.buf)
	s.buf = s.buf[:0]
	return err
}

// toShard sends one row to the shard of key.
func (sp *copySplitter) toShard(row []byte) error {
	var key shard.Key
	if len(sp.keyParts) == 1 {
		key = sp.keyParts[0]
	} else {
		key = shard.Composite(sp.keyParts...)
	}
	id, err := sp.topo.Locate(sp.table, key)
	if err != nil {
		return sp.rowError(err)
	}
	s := sp.route(id)
	if s == nil {
		return newClientError(codeInternal, fmt.Sprintf("no COPY open on shard %d", id))
	}
	sp.rows++
	return sp.add(s, row)
}

// errNullKey is a row whose shard key column is NULL (23502).
var errNullKey = &clientError{code: "23502", message: "the shard key column is NULL"}

// rowError names the row (1-based, as PostgreSQL's CONTEXT does: the line
// of a text or CSV stream, header included; the tuple of a binary one) and
// keeps err's SQLSTATE (22P04 bad_copy_file_format when it has none).
func (sp *copySplitter) rowError(err error) error {
	code := "22P04"
	var coded interface{ SQLState() string }
	if errors.As(err, &coded) {
		code = coded.SQLState()
	}
	unit, n := "line", sp.rows+1
	if sp.ci.Format == "binary" {
		unit = "row"
	} else if sp.ci.Header {
		n++
	}
	return &clientError{code: code, message: fmt.Sprintf("COPY %s, %s %d: %v", sp.table, unit, n, err)}
}

// lines routes the complete lines of b (text or CSV) and returns how many
// bytes it consumed; at the end (last) an unterminated line counts too.
func (sp *copySplitter) lines(b []byte, last bool) (int, error) {
	csv := sp.ci.Format == "csv"
	start := 0
	for start < len(b) && !sp.ended {
		var line, row []byte
		if end := lineEnd(b[start:], csv, sp.ci.Quote, sp.ci.Escape); end >= 0 {
			line, row = b[start:start+end], b[start:start+end+1]
			start += end + 1
		} else {
			if !last {
				break
			}
			// The last line may go without its newline: add it.
			line = b[start:]
			row = append(append([]byte(nil), line...), '\n')
			start = len(b)
		}
		if sp.header {
			sp.header = false
			if err := sp.toAll(row); err != nil {
				return start, err
			}
			continue
		}
		line = bytes.TrimSuffix(line, []byte{'\r'})
		if bytes.Equal(line, []byte(`\.`)) {
			sp.ended = true
			return start, sp.toAll(row)
		}
		if err := sp.lineKey(line, csv); err != nil {
			return start, err
		}
		if err := sp.toShard(row); err != nil {
			return start, err
		}
	}
	return start, nil
}

// lineEnd returns the offset of the newline ending the first row of b, or
// -1. In CSV a newline inside quotes belongs to the field.
func lineEnd(b []byte, csv bool, quote, escape byte) int {
	if !csv {
		return bytes.IndexByte(b, '\n')
	}
	inQuote := false
	for i := 0; i < len(b); i++ {
		switch ch := b[i]; {
		case inQuote && ch == escape && escape != quote && i+1 < len(b) && (b[i+1] == quote || b[i+1] == escape):
			i++
		case ch == quote:
			inQuote = !inQuote
		case ch == '\n' && !inQuote:
			return i
		}
	}
	return -1
}

// lineKey reads the key columns of a text or CSV line into sp.keyParts.
func (sp *copySplitter) lineKey(line []byte, csv bool) error {
	field, pos := 0, 0
	for field <= sp.maxIdx {
		if pos > len(line) {
			return sp.rowError(fmt.Errorf("missing data for column %d", field+1))
		}
		raw, quoted, next := nextField(line, pos, csv, sp.ci.Delimiter, sp.ci.Quote, sp.ci.Escape)
		for k, idx := range sp.keyIdx {
			if idx != field {
				continue
			}
			if !quoted && string(raw) == sp.ci.Null {
				return sp.rowError(errNullKey)
			}
			var v string
			switch {
			case csv && quoted:
				v = unquoteCSV(raw, sp.ci.Quote, sp.ci.Escape)
			case csv:
				v = string(raw)
			default:
				v = unescapeText(raw)
			}
			key, err := shard.ParseKey(sp.types[k], v)
			if err != nil {
				return sp.rowError(err)
			}
			sp.keyParts[k] = key
		}
		field++
		pos = next
	}
	return nil
}

// nextField returns the field starting at pos and the start of the next
// one (len(line)+1 after the last field).
func nextField(line []byte, pos int, csv bool, delim, quote, escape byte) (raw []byte, quoted bool, next int) {
	i := pos
	if csv && i < len(line) && line[i] == quote {
		quoted = true
		in := false
		for ; i < len(line); i++ {
			ch := line[i]
			switch {
			case in && ch == escape && escape != quote && i+1 < len(line) && (line[i+1] == quote || line[i+1] == escape):
				i++
			case ch == quote:
				in = !in
			case ch == delim && !in:
				return line[pos:i], true, i + 1
			}
		}
		return line[pos:], true, len(line) + 1
	}
	for ; i < len(line); i++ {
		switch line[i] {
		case '\\':
			if !csv {
				i++
			}
		case delim:
			return line[pos:i], false, i + 1
		}
	}
	return line[pos:], false, len(line) + 1
}

// unquoteCSV returns the value of a quoted CSV field.
func unquoteCSV(raw []byte, quote, escape byte) string {
	var sb strings.Builder
	in := false
	for i := 0; i < len(raw); i++ {
		ch := raw[i]
		switch {
		case in && ch == escape && i+1 < len(raw) && (raw[i+1] == quote || raw[i+1] == escape) && (escape != quote || raw[i+1] == quote):
			sb.WriteByte(raw[i+1])
			i++
		case ch == quote:
			in = !in
		default:
			sb.WriteByte(ch)
		}
	}
	return sb.String()
}

// unescapeText returns the value of a text-format field (backslash
// escapes as PostgreSQL's COPY reads them).
func unescapeText(raw []byte) string {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw)
	}
	var sb strings.Builder
	for i := 0; i < len(raw); i++ {
		ch := raw[i]
		if ch != '\\' || i+1 >= len(raw) {
			sb.WriteByte(ch)
			continue
		}
		i++
		switch c := raw[i]; c {
		case 'b':
			sb.WriteByte('\b')
		case 'f':
			sb.WriteByte('\f')
		case 'n':
			sb.WriteByte('\n')
		case 'r':
			sb.WriteByte('\r')
		case 't':
			sb.WriteByte('\t')
		case 'v':
			sb.WriteByte('\v')
		case 'x':
			v, n := 0, 0
			for n < 2 && i+1 < len(raw) && isHex(raw[i+1]) {
				i++
				v = v*16 + hexVal(raw[i])
				n++
			}
			if n == 0 {
				sb.WriteByte('x')
			} else {
				sb.WriteByte(byte(v))
			}
		default:
			if c >= '0' && c <= '7' {
				v := int(c - '0')
				for n := 1; n < 3 && i+1 < len(raw) && raw[i+1] >= '0' && raw[i+1] <= '7'; n++ {
					i++
					v = v*8 + int(raw[i]-'0')
				}
				sb.WriteByte(byte(v))
			} else {
				sb.WriteByte(c)
			}
		}
	}
	return sb.String()
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	}
	return int(c-'A') + 10
}

// binary routes the complete tuples of a binary COPY stream in b and
// returns how many bytes it consumed.
func (sp *copySplitter) binary(b []byte, last bool) (int, error) {
	pos := 0
	if !sp.binStart {
		const fixed = len(binaryCopySignature) + 8
		if len(b) < fixed {
			return 0, sp.truncated(last)
		}
		if string(b[:len(binaryCopySignature)]) != binaryCopySignature {
			return 0, &clientError{code: "22P04", message: "COPY file signature not recognized"}
		}
		ext := int(binary.BigEndian.Uint32(b[len(binaryCopySignature)+4:]))
		if ext < 0 || len(b) < fixed+ext {
			return 0, sp.truncated(last)
		}
		pos = fixed + ext
		sp.binStart = true
		if err := sp.toAll(b[:pos]); err != nil {
			return pos, err
		}
	}
	for !sp.ended {
		if len(b)-pos < 2 {
			return pos, sp.truncated(last && len(b) > pos)
		}
		n := int(int16(binary.BigEndian.Uint16(b[pos:])))
		if n == -1 {
			sp.ended = true
			return pos + 2, sp.toAll(b[pos : pos+2])
		}
		if n <= sp.maxIdx {
			return pos, sp.rowError(fmt.Errorf("row has %d fields, the shard key is field %d", n, sp.maxIdx+1))
		}
		p := pos + 2
		complete := true
		for f := 0; f < n; f++ {
			if len(b)-p < 4 {
				complete = false
				break
			}
			l := int(int32(binary.BigEndian.Uint32(b[p:])))
			p += 4
			if l < -1 || l > len(b)-p {
				if l < -1 {
					return pos, sp.rowError(fmt.Errorf("invalid field size %d", l))
				}
				complete = false
				break
			}
			for k, idx := range sp.keyIdx {
				if idx != f {
					continue
				}
				if l == -1 {
					return pos, sp.rowError(errNullKey)
				}
				key, err := shard.DecodeBinaryKey(sp.types[k], b[p:p+l])
				if err != nil {
					return pos, sp.rowError(err)
				}
				sp.keyParts[k] = key
			}
			if l > 0 {
				p += l
			}
		}
		if !complete {
			return pos, sp.truncated(last)
		}
		if err := sp.toShard(b[pos:p]); err != nil {
			return p, err
		}
		pos = p
	}
	return pos, nil
}

// truncated is the error for a binary stream that ends inside a tuple
// (nil while more data may come).
func (sp *copySplitter) truncated(last bool) error {
	if !last {
		return nil
	}
	return &clientError{code: "22P04", message: "unexpected EOF in COPY data"}
}

// copyOutConcat runs COPY table TO STDOUT of a sharded table, or COPY
// (SELECT ...) TO STDOUT over several shards: the same
// COPY on each shard in turn (a standby as the router picks, one lease at
// a time), relayed as one COPY: the first shard's CopyOutResponse, every
// shard's rows (later shards' header line or binary header, and all but
// the last shard's binary trailer, left out), one CopyDone and the total
// row count.
func (c *clientConn) copyOutConcat(ctx context.Context, p plan, st *router.Statement, sql string) stateFn {
	ci := st.CopyOut
	ctx, done := c.cancellable(ctx)
	defer done()
	var total int64
	var failed error
	for i, t := range p.targets {
		n, err := c.copyOutShard(ctx, t, sql, ci, i == 0, i == len(p.targets)-1)
		total += n
		if err != nil {
			failed = canceledBy(ctx, err)
			break
		}
	}
	c.observeDetached(failed)
	if failed != nil {
		if errors.Is(failed, errClientGone) {
			return c.to.closing
		}
		return c.answerLocal(nil, failed)
	}
	if err := c.send(&pgproto3.CopyDone{}); err != nil {
		return c.to.closing
	}
	return c.answerLocal(&localResult{tag: "COPY " + strconv.FormatInt(total, 10)}, nil)
}

// copyOutShard relays one shard's part of copyOutConcat and returns its
// row count.
func (c *clientConn) copyOutShard(ctx context.Context, t target, sql string, ci *router.CopyInfo, first, last bool) (int64, error) {
	lease, err := c.leaseForQuery(ctx, t)
	if err != nil {
		return 0, err
	}
	conn := lease.Conn()
	stop := context.AfterFunc(ctx, func() { _ = conn.CancelRequest(context.WithoutCancel(ctx)) })
	defer stop()
	fr := conn.Frontend()
	fr.Send(&pgproto3.Query{String: sql})
	if err := fr.Flush(); err != nil {
		lease.Discard(err)
		return 0, err
	}
	binaryFormat := ci.Format == "binary"
	skipHead := !first && (ci.Header || binaryFormat) // later shards' header line or binary header
	var held []byte                                   // the last CopyData, held back to drop a binary trailer
	var rows int64
	var failed error
	release := func(err error) { finishLease(lease, err) }
	for {
		msg, err := fr.Receive()
		if err != nil {
			lease.Discard(err)
			return rows, err
		}
		switch m := msg.(type) {
		case *pgproto3.CopyOutResponse:
			if first {
				if err := c.send(m); err != nil {
					failed = errClientGone
				}
			}
		case *pgproto3.CopyData:
			data := m.Data
			if skipHead {
				skipHead = false
				if binaryFormat {
					data = data[min(len(data), len(binaryCopySignature)+8):]
				} else {
					data = nil // the header line is a message of its own
				}
			}
			if len(held) > 0 && failed == nil {
				if err := c.sendNoFlush(&pgproto3.CopyData{Data: held}); err != nil {
					failed = errClientGone
				}
			}
			held = append(held[:0], data...)
		case *pgproto3.CopyDone:
			if binaryFormat && !last && len(held) >= 2 && held[len(held)-2] == 0xff && held[len(held)-1] == 0xff {
				held = held[:len(held)-2]
			}
			if len(held) > 0 && failed == nil {
				if err := c.sendNoFlush(&pgproto3.CopyData{Data: held}); err != nil {
					failed = errClientGone
				}
			}
			held = nil
		case *pgproto3.CommandComplete:
			rows = pgconn.NewCommandTag(string(m.CommandTag)).RowsAffected()
		case *pgproto3.ErrorResponse:
			if failed == nil {
				failed = pgconn.ErrorResponseToPgError(m)
			}
		case *pgproto3.ReadyForQuery:
			release(failed)
			return rows, failed
		}
	}
}
