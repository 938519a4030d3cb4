package proxy

import (
	"context"
	"strconv"
	"strings"

	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
)

// localResult is a statement result the proxy produces itself: a local
// router decision (deferred BEGIN, SET dbproxy.*, ...), SHOW dbproxy.*,
// or the merged result of a multi-shard statement.
type localResult struct {
	fields    []pgproto3.FieldDescription // nil: no rows (NoData)
	paramOIDs []uint32                    // for Describe of the statement
	rows      [][][]byte                  // in the client's result formats
	tag       string
	partial   bool // an Execute's row limit suspended the portal (extended protocol)
	notices   []*pgproto3.NoticeResponse
}

func (r *localResult) rowDescription() pgproto3.BackendMessage {
	if r.fields == nil {
		return &pgproto3.NoData{}
	}
	return &pgproto3.RowDescription{Fields: r.fields}
}

// messages returns the result as sent for a Query or an Execute.
func (r *localResult) messages(withRowDesc bool) []pgproto3.BackendMessage {
	out := make([]pgproto3.BackendMessage, 0, len(r.rows)+3)
	for _, n := range r.notices {
		out = append(out, n)
	}
	if withRowDesc && r.fields != nil {
		out = append(out, &pgproto3.RowDescription{Fields: r.fields})
	}
	for _, row := range r.rows {
		out = append(out, &pgproto3.DataRow{Values: row})
	}
	return append(out, &pgproto3.CommandComplete{CommandTag: []byte(r.tag)})
}

// The proxy's own settings, answered without a backend.
const (
	paramCausalToken  = "dbproxy.causal_token"
	paramMaxStaleness = "dbproxy.max_staleness"
)

// showName recognizes "SHOW dbproxy.<name>".
func showName(sql string) (string, bool) {
	s := strings.TrimSpace(sql)
	if len(s) < 5 || !strings.EqualFold(s[:4], "show") {
		return "", false // most statements: no allocation
	}
	s = strings.TrimSpace(strings.TrimSuffix(s, ";"))
	f := strings.Fields(s)
	if len(f) != 2 || !strings.EqualFold(f[0], "show") {
		return "", false
	}
	name := strings.ToLower(strings.Trim(f[1], `"`))
	if !strings.HasPrefix(name, "dbproxy.") {
		return "", false
	}
	return name, true
}

// showResult answers SHOW dbproxy.<name>.
func (c *clientConn) showResult(name string) (*localResult, error) {
	c.mu.Lock()
	var v string
	switch name {
	case paramCausalToken:
		v = c.sess.tokenText()
	case paramMaxStaleness:
		d, ok := c.sess.rs.MaxStaleness()
		if !ok {
			d = c.srv.live.Load().maxStaleness
		}
		v = d.String()
	default:
		c.mu.Unlock()
		return nil, newClientError("42704", "unrecognized configuration parameter \""+name+"\"")
	}
	c.mu.Unlock()
	return &localResult{
		fields: []pgproto3.FieldDescription{{Name: []byte(name), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}},
		rows:   [][][]byte{{[]byte(v)}},
		tag:    "SHOW",
	}, nil
}

// localDecision carries out a router decision that sends nothing. A
// LISTEN waits until the proxy listens on the channel (notify.go).
func (c *clientConn) localDecision(ctx context.Context, p plan) (*localResult, error) {
	if st := p.stmt; st != nil && st.Listen != nil && st.Listen.Op == router.ListenAdd {
		if err := c.listen(ctx, st.Listen.Channel); err != nil {
			c.observeDetached(err)
			return nil, err
		}
	}
	if st := p.stmt; st != nil {
		c.mu.Lock()
		if st.DeallocAll {
			clear(c.sess.stmts)
		} else if st.DeallocName != "" {
			delete(c.sess.stmts, st.DeallocName)
		}
		c.mu.Unlock()
	}
	c.observeDetached(nil)
	return &localResult{tag: p.tag}, nil
}

// answerLocal answers a simple Query with a local result (or error).
func (c *clientConn) answerLocal(res *localResult, err error) stateFn {
	var msgs []pgproto3.BackendMessage
	if err != nil {
		msgs = []pgproto3.BackendMessage{errorResponse(err, "")}
	} else {
		msgs = res.messages(true)
	}
	msgs = append(msgs, &pgproto3.ReadyForQuery{TxStatus: c.txStatus()})
	if err := c.send(msgs...); err != nil {
		return c.to.closing
	}
	return c.idleOrAttached()
}

// startLocalBatch answers the buffered messages of an extended-protocol
// batch whose result the proxy holds; the rest of the batch is answered
// by answerLocalMessage until Sync.
func (c *clientConn) startLocalBatch(res *localResult) stateFn {
	c.localBatch = res
	pending := c.pending
	c.pending = nil
	for _, m := range pending {
		if next := c.answerLocalMessage(m); next != nil {
			return next
		}
	}
	return c.idleOrAttached()
}

// answerLocalMessage answers one message of a local batch. It returns a
// non-nil state only when the connection must end.
func (c *clientConn) answerLocalMessage(m pgproto3.FrontendMessage) stateFn {
	res := c.localBatch
	var out []pgproto3.BackendMessage
	flush := false
	switch m := m.(type) {
	case *pgproto3.Parse:
		c.mu.Lock()
		c.sess.stmts[m.Name] = &preparedStmt{name: m.Name, query: m.Query, paramOIDs: append([]uint32(nil), m.ParameterOIDs...), hash: stmtHash(m.Query, m.ParameterOIDs)}
		c.mu.Unlock()
		out = append(out, &pgproto3.ParseComplete{})
	case *pgproto3.Bind:
		out = append(out, &pgproto3.BindComplete{})
	case *pgproto3.Describe:
		if m.ObjectType == 'S' {
			oids := res.paramOIDs
			if ps := c.sess.stmts[m.Name]; oids == nil && ps != nil {
				oids = ps.paramOIDs
			}
			out = append(out, &pgproto3.ParameterDescription{ParameterOIDs: oids})
		}
		out = append(out, res.rowDescription())
	case *pgproto3.Execute:
		if res.fields != nil && (m.MaxRows > 0 || res.partial) {
			// As PostgreSQL: a row limit reached suspends the portal
			// (even with no rows left); the Execute that completes a
			// suspended portal reports the rows it sent itself.
			n := len(res.rows)
			if m.MaxRows > 0 {
				n = min(n, int(m.MaxRows))
			}
			for _, nt := range res.notices {
				out = append(out, nt)
			}
			for _, row := range res.rows[:n] {
				out = append(out, &pgproto3.DataRow{Values: row})
			}
			res.rows, res.notices = res.rows[n:], nil
			if m.MaxRows > 0 && n == int(m.MaxRows) {
				res.partial = true
				out = append(out, &pgproto3.PortalSuspended{})
				break
			}
			out = append(out, &pgproto3.CommandComplete{CommandTag: []byte("SELECT " + strconv.Itoa(n))})
		} else {
			out = append(out, res.messages(false)...)
		}
		res.rows, res.notices, res.partial = nil, nil, false // a second Execute of the portal returns nothing more
		if res.fields != nil {
			res.tag = "SELECT 0"
		}
	case *pgproto3.Close:
		if m.ObjectType == 'S' {
			c.mu.Lock()
			delete(c.sess.stmts, m.Name)
			c.mu.Unlock()
		}
		out = append(out, &pgproto3.CloseComplete{})
	case *pgproto3.Sync:
		c.localBatch = nil
		out = append(out, &pgproto3.ReadyForQuery{TxStatus: c.txStatus()})
		flush = true
	case *pgproto3.Flush:
		flush = true
	}
	var err error
	if flush {
		err = c.send(out...)
	} else {
		err = c.sendNoFlush(out...)
	}
	if err != nil {
		return c.to.closing
	}
	return nil
}

// applyResultFormats converts a text-format result to the formats a Bind
// asked for (0 text, 1 binary; one code for all columns or one per column).
func applyResultFormats(res *localResult, formats []int16) error {
	if res.fields == nil || len(formats) == 0 {
		return nil
	}
	codeOf := func(i int) int16 {
		if len(formats) == 1 {
			return formats[0]
		}
		if i < len(formats) {
			return formats[i]
		}
		return 0
	}
	var tm *pgtype.Map
	for i := range res.fields {
		if codeOf(i) != 1 {
			continue
		}
		res.fields[i].Format = 1
		if tm == nil {
			tm = pgtype.NewMap() // not safe for concurrent use: one per result
		}
		for _, row := range res.rows {
			if row[i] == nil {
				continue
			}
			b, err := textToBinary(tm, res.fields[i].DataTypeOID, row[i])
			if err != nil {
				return newClientError(codeFeatureNotSupported, "cannot send column "+strconv.Quote(string(res.fields[i].Name))+" of a multi-shard result in binary: "+err.Error())
			}
			row[i] = b
		}
	}
	return nil
}

var _ = router.KindRead
