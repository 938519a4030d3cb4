package proxy

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/dbproxy/dbproxy/shard"
	"github.com/jackc/pgx/v5/pgproto3"
)

// The proxy's own settings, answered without a backend.
const (
	paramCausalToken  = "dbproxy.causal_token"
	paramMaxStaleness = "dbproxy.max_staleness"
)

// isLocal reports whether st is answered by the proxy itself: SET/RESET
// of dbproxy.* parameters and SHOW dbproxy.*.
func isLocal(st *router.Statement) bool {
	if _, ok := showName(st.SQL); ok {
		return true
	}
	if st.Kind != router.KindSession || len(st.Sets) == 0 {
		return false
	}
	for _, s := range st.Sets {
		if !s.Intercepted() {
			return false
		}
	}
	return true
}

// showName recognizes "SHOW dbproxy.<name>".
func showName(sql string) (string, bool) {
	s := strings.TrimSpace(sql)
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

// execLocal applies st and returns the messages describing its result
// (RowDescription+DataRow for SHOW, then CommandComplete).
func (c *clientConn) execLocal(st *router.Statement, withRowDesc bool) ([]pgproto3.BackendMessage, error) {
	if name, ok := showName(st.SQL); ok {
		var v string
		switch name {
		case paramCausalToken:
			v = c.sess.tokenText()
		case paramMaxStaleness:
			v = c.sess.maxStaleness.String()
		default:
			return nil, newClientError("42704", fmt.Sprintf("unrecognized configuration parameter %q", name))
		}
		var out []pgproto3.BackendMessage
		if withRowDesc {
			out = append(out, showRowDescription(name))
		}
		return append(out, &pgproto3.DataRow{Values: [][]byte{[]byte(v)}}, &pgproto3.CommandComplete{CommandTag: []byte("SHOW")}), nil
	}
	var out []pgproto3.BackendMessage
	for _, si := range st.Sets {
		if err := c.applyLocalSet(si); err != nil {
			return nil, err
		}
		tag := "SET"
		if si.Op == router.SetReset || si.Op == router.SetResetAll {
			tag = "RESET"
		}
		out = append(out, &pgproto3.CommandComplete{CommandTag: []byte(tag)})
	}
	return out, nil
}

func showRowDescription(name string) *pgproto3.RowDescription {
	return &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte(name), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}}}
}

func (c *clientConn) applyLocalSet(si router.SetInfo) error {
	reset := si.Op == router.SetReset || si.Op == router.SetDefault
	switch si.Name {
	case paramCausalToken:
		if reset {
			c.mu.Lock()
			clear(c.sess.causal)
			c.mu.Unlock()
			return nil
		}
		tok, err := parseToken(si.Value)
		if err != nil {
			return err
		}
		c.mu.Lock()
		for id, lsn := range tok {
			c.sess.observeCommit(id, lsn)
		}
		c.mu.Unlock()
	case paramMaxStaleness:
		d := c.srv.live.Load().maxStaleness
		if !reset {
			v, err := parseStaleness(si.Value)
			if err != nil {
				return err
			}
			d = v
		}
		c.mu.Lock()
		c.sess.maxStaleness = d
		c.mu.Unlock()
	default:
		return newClientError("42704", fmt.Sprintf("unrecognized configuration parameter %q", si.Name))
	}
	return nil
}

// parseStaleness accepts Go durations ("200ms", "1s") and bare integers
// (milliseconds), as PostgreSQL time settings do.
func parseStaleness(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return time.Duration(n) * time.Millisecond, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, newClientError(codeInvalidParameter, fmt.Sprintf("invalid value for parameter %q: %q (want a duration such as 200ms)", paramMaxStaleness, s))
	}
	return d, nil
}

// parseToken parses a causal token: "s<shard>:<lsn>" items separated by
// commas ("s0:0/16B3748,s1:0/3000060"); an empty string is no token.
func parseToken(s string) (map[shard.ID]replica.LSN, error) {
	out := map[shard.ID]replica.LSN{}
	s = strings.TrimSpace(s)
	if s == "" {
		return out, nil
	}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		id, lsn, ok := strings.Cut(item, ":")
		if !ok || len(id) < 2 || (id[0] != 's' && id[0] != 'S') {
			return nil, badToken(s)
		}
		n, err := strconv.Atoi(id[1:])
		if err != nil || n < 0 {
			return nil, badToken(s)
		}
		l, err := replica.ParseLSN(lsn)
		if err != nil {
			return nil, badToken(s)
		}
		if l > out[shard.ID(n)] {
			out[shard.ID(n)] = l
		}
	}
	return out, nil
}

func badToken(s string) error {
	return &clientError{code: codeInvalidParameter, message: fmt.Sprintf("invalid value for parameter %q: %q", paramCausalToken, s),
		hint: `a causal token looks like "s0:0/16B3748,s1:0/3000060", as reported in ParameterStatus dbproxy.causal_token`}
}

// answerLocal answers a simple Query handled by the proxy.
func (c *clientConn) answerLocal(ctx context.Context, st *router.Statement, _ bool, tx byte) stateFn {
	msgs, err := c.execLocal(st, true)
	if err != nil {
		msgs = []pgproto3.BackendMessage{errorResponse(err, "")}
	}
	msgs = append(msgs, &pgproto3.ReadyForQuery{TxStatus: tx})
	if err := c.send(msgs...); err != nil {
		return c.stateClosing
	}
	return c.idleOrAttached()
}

// answerLocalBatch answers an extended-protocol batch whose statement is
// handled by the proxy; later messages of the batch are answered by
// answerLocalMessage until Sync.
func (c *clientConn) answerLocalBatch(ctx context.Context, st *router.Statement) stateFn {
	if c.current(true) != nil && c.lastTxStatus() == 'I' {
		// session pooling: nothing else in flight, answer in order
	}
	c.localBatch = st
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
	st := c.localBatch
	_, isShow := showName(st.SQL)
	var out []pgproto3.BackendMessage
	flush := false
	switch m := m.(type) {
	case *pgproto3.Parse:
		c.sess.stmts[m.Name] = &preparedStmt{name: m.Name, query: m.Query, paramOIDs: append([]uint32(nil), m.ParameterOIDs...), hash: stmtHash(m.Query, m.ParameterOIDs), stmt: st}
		out = append(out, &pgproto3.ParseComplete{})
	case *pgproto3.Bind:
		out = append(out, &pgproto3.BindComplete{})
	case *pgproto3.Describe:
		if m.ObjectType == 'S' {
			out = append(out, &pgproto3.ParameterDescription{})
		}
		if isShow {
			name, _ := showName(st.SQL)
			out = append(out, showRowDescription(name))
		} else {
			out = append(out, &pgproto3.NoData{})
		}
	case *pgproto3.Execute:
		res, err := c.execLocal(st, false)
		if err != nil {
			c.localBatch = nil
			c.skipToSync = true
			out = append(out, errorResponse(err, ""))
		} else {
			out = append(out, res...)
		}
	case *pgproto3.Close:
		if m.ObjectType == 'S' {
			delete(c.sess.stmts, m.Name)
		}
		out = append(out, &pgproto3.CloseComplete{})
	case *pgproto3.Sync:
		c.localBatch = nil
		out = append(out, &pgproto3.ReadyForQuery{TxStatus: c.lastTxStatus()})
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
		return c.stateClosing
	}
	return nil
}
