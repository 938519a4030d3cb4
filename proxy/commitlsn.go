package proxy

import (
	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Commit positions.
//
// After a transaction that wrote on a primary, the client is sent its
// causal token: the primary's WAL position once the commit is done. When
// the request that ends the transaction is recognised as it is sent (a
// lone COMMIT/END, or a write outside a transaction block), the query
// reading that position follows it in the same flush to the backend, so
// no round trip is added: the request's ReadyForQuery is held back until
// the position has arrived, then the client gets ParameterStatus
// dbproxy.causal_token and that ReadyForQuery together. Every other write
// transaction (a COMMIT inside a longer multi-statement string, COPY,
// CALL, a retryable parameterized query, ...) has its position read after
// its ReadyForQuery, with a query of its own (detach).

// commitLSNQuery reads the commit position; as a simple Query it runs in
// its own implicit transaction once the client's request is done.
var commitLSNQuery = &pgproto3.Query{String: "SELECT pg_current_wal_lsn()"}

// wantCommitLSN marks att's request being sent when statement st, about
// to be forwarded, ends a write transaction. Called with c.mu held.
func (c *clientConn) wantCommitLSN(att *attachment, st *router.Statement) {
	if !att.primary {
		return
	}
	switch {
	case st.NumStatements != 1 || st.Command == "COPY":
		// A COPY's reply may be a copy sub-protocol the query must not
		// interrupt; a string of statements may end anywhere.
		att.lsnWanted = false
	case st.Kind == router.KindTxControl:
		att.lsnWanted = att.wrote && st.Tx != nil && st.Tx.Kind == router.TxCommit && !st.Tx.Chain
	case st.Kind == router.KindWrite && plainWrite(st.Command):
		// Outside a transaction block the write commits with its request.
		att.lsnWanted = c.sess.rs.TxStatus() == 'I'
	}
}

// plainWrite reports whether command is a row write whose reply is rows
// and a command tag, nothing else.
func plainWrite(command string) bool {
	switch command {
	case "INSERT", "UPDATE", "DELETE", "MERGE":
		return true
	}
	return false
}

// appendCommitLSN queues the commit-position query right after the
// request end just queued (Query or Sync) when that request was marked by
// wantCommitLSN. Called with c.mu and att.wmu held.
func (c *clientConn) appendCommitLSN(att *attachment, fr *pgproto3.Frontend) {
	if !att.lsnWanted {
		return
	}
	att.lsnWanted = false
	if att.lsnSeg >= 0 || att.transient {
		return // one at a time; detach reads any other
	}
	fr.Send(commitLSNQuery)
	delete(att.bst.stmts, "") // a simple query destroys the unnamed statement
	att.lsnSeg = att.sentSeg
	att.lsnValue = 0
	att.outstanding++
	att.sentSeg++
	att.wbytes += 32
}

// commitLSNReply handles backend message msg while a commit-position
// query is in flight. It holds back the ReadyForQuery of the request
// before it and swallows the query's own reply, remembering the position
// (own: msg is consumed). At the query's ReadyForQuery it tells the
// session the position, queues the causal token for the client and
// returns the held ReadyForQuery for the pump to handle as if it had
// just arrived. Called with c.mu held.
func (c *clientConn) commitLSNReply(att *attachment, msg pgproto3.BackendMessage) (out pgproto3.BackendMessage, own bool) {
	if !att.lsnHeld {
		if m, ok := msg.(*pgproto3.ReadyForQuery); ok && att.recvSeg+1 == att.lsnSeg {
			att.heldRFQ = pgproto3.ReadyForQuery{TxStatus: m.TxStatus} // m is reused by the next receive
			att.lsnHeld = true
			return nil, true
		}
		return msg, false
	}
	switch m := msg.(type) {
	case *pgproto3.DataRow:
		if len(m.Values) == 1 && m.Values[0] != nil {
			if lsn, err := replica.ParseLSN(string(m.Values[0])); err == nil {
				att.lsnValue = lsn
			}
		}
		return nil, true
	case *pgproto3.ReadyForQuery:
		// The query's segment is over; the held ReadyForQuery ends the
		// one before it, and observe counts that one.
		att.outstanding--
		att.recvSeg++
		att.lsnSeg, att.lsnHeld = -1, false
		if att.lsnValue != 0 {
			c.srv.commitLSNPiggybacked.Add(1)
			c.sess.rs.AdvanceCausal(att.shard, att.lsnValue)
			if att.heldRFQ.TxStatus == 'I' {
				att.wrote = false // detach has nothing left to read
			}
			c.wmu.Lock()
			c.queue(&pgproto3.ParameterStatus{Name: paramCausalToken, Value: c.sess.tokenText()})
			c.wmu.Unlock()
		}
		return &att.heldRFQ, false
	}
	return nil, true // RowDescription, CommandComplete, or an error (the position stays unknown)
}
