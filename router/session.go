package router

import (
	"maps"
	"slices"
	"time"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/shard"
)

type txState uint8

const (
	txIdle    txState = iota
	txPending         // BEGIN seen, deferred: no backend yet
	txActive          // pinned to a shard's backend
	txFailed          // backend reported 'E'
)

// Session is the routing state of one front-end connection (a proxy client
// connection or a driver.Conn): transaction state and pinning, per-shard
// causal positions, session parameters to replay, SQL and protocol-level
// prepared statements, temporary tables.
//
// A Session is NOT safe for concurrent use: it belongs to exactly one
// connection, whose goroutine calls Route and the Observe* methods in
// order. Create one with Router.NewSession.
//
// Lifecycle of a statement: Route (decide) → the front end executes →
// ObserveError if the backend sent an ErrorResponse → Observe with the
// backend's ReadyForQuery status. Session changes made by a statement
// (SET, PREPARE, DEALLOCATE, DISCARD, temporary tables) are pending until
// Observe, and dropped by ObserveError.
type Session struct {
	r *Router

	tx         txState
	txShard    shard.ID
	txTarget   Target
	txReadOnly bool
	preamble   []string // deferred BEGIN (+ SET TRANSACTION / SAVEPOINT) texts
	ending     TxKind   // COMMIT or ROLLBACK forwarded, waiting for 'I'

	last      shard.ID // shard of the last forwarded decision
	lastValid bool
	lastTgt   Target

	causal       CausalToken
	maxStaleness time.Duration
	hasStaleness bool

	settings []SetInfo // session-level SETs in effect, in order
	staged   []SetInfo // SETs inside the current transaction (applied on COMMIT)
	prepared map[string]*Statement
	prepSQL  []preparedText // SQL-level PREPAREs to replay, in order
	temps    map[string]bool
	version  uint64

	listening     map[string]bool // channels of committed LISTENs
	stagedListens []ListenInfo    // LISTEN/UNLISTEN inside the current transaction (applied on COMMIT)
	listenVersion uint64

	pending []func() // changes applied on Observe, dropped on ObserveError
}

type preparedText struct{ name, sql string }

// NewSession returns a new idle session routed by r.
func (r *Router) NewSession() *Session {
	return &Session{r: r, prepared: map[string]*Statement{}, temps: map[string]bool{}}
}

// Observe tells the session the backend's ReadyForQuery status after a
// statement: 'I' idle, 'T' in a transaction, 'E' in a failed transaction.
// 'I' ends any transaction (unpinning it); 'T' pins the session to the
// shard of the last decision if it was not pinned already (a BEGIN inside a
// multi-statement string); 'E' keeps the pin until ROLLBACK.
func (s *Session) Observe(txStatus byte) {
	for _, f := range s.pending {
		f()
	}
	s.pending = s.pending[:0]
	switch txStatus {
	case 'I':
		if s.ending == TxCommit {
			s.applySets(s.staged)
			s.applyListens(s.stagedListens)
		}
		s.staged, s.stagedListens = nil, nil
		s.endTx()
	case 'T':
		if s.tx != txActive && s.lastValid {
			s.tx, s.txShard, s.txTarget = txActive, s.last, s.lastTgt
		}
	case 'E':
		if s.tx == txActive || s.lastValid {
			if s.tx != txActive {
				s.txShard, s.txTarget = s.last, s.lastTgt
			}
			s.tx = txFailed
		}
	}
}

// ObserveError tells the session the backend rejected the last statement
// (ErrorResponse): its pending session changes are dropped.
func (s *Session) ObserveError() {
	s.pending = s.pending[:0]
}

func (s *Session) endTx() {
	s.tx, s.txReadOnly, s.preamble, s.ending = txIdle, false, nil, TxNone
}

// TxStatus returns the transaction status the front end should report to
// its client ('I', 'T' or 'E'); a deferred BEGIN counts as 'T'.
func (s *Session) TxStatus() byte {
	switch s.tx {
	case txPending, txActive:
		return 'T'
	case txFailed:
		return 'E'
	}
	return 'I'
}

// InTransaction reports whether an explicit transaction is open (deferred,
// pinned or failed).
func (s *Session) InTransaction() bool { return s.tx != txIdle }

// PinnedShard returns the shard the current transaction is pinned to.
func (s *Session) PinnedShard() (shard.ID, bool) {
	return s.txShard, s.tx == txActive || s.tx == txFailed
}

// AdvanceCausal records that a write committed on shard id at lsn (or
// later): reads of this session on that shard will need a replica that has
// replayed lsn. Unknown shard ids are ignored.
func (s *Session) AdvanceCausal(id shard.ID, lsn replica.LSN) {
	tv := s.r.view()
	if int(id) < 0 || int(id) >= len(tv.names) {
		return
	}
	s.causal = s.causal.With(tv.names[id], lsn)
}

// CausalToken returns the session's read-your-writes token (send it to the
// client as ParameterStatus dbproxy.causal_token).
func (s *Session) CausalToken() CausalToken { return s.causal }

// MergeCausalToken raises the session's positions to those of t.
func (s *Session) MergeCausalToken(t CausalToken) { s.causal = s.causal.Merge(t) }

// MaxStaleness returns the session's staleness bound set by SET
// dbproxy.max_staleness (ok false when unset).
func (s *Session) MaxStaleness() (time.Duration, bool) { return s.maxStaleness, s.hasStaleness }

// Settings returns the session-level parameters in effect (SET outside or
// committed inside a transaction; SET LOCAL and dbproxy.* excluded), in the
// order they were last set.
func (s *Session) Settings() []SetInfo { return append([]SetInfo(nil), s.settings...) }

// Replay returns the statements to run on a backend before using it for
// this session, in order: every tracked SET, then every SQL-level
// PREPARE. ReplayVersion changes whenever the list changes, so a front end
// can remember which version a pooled backend already has.
func (s *Session) Replay() []string {
	out := make([]string, 0, len(s.settings)+len(s.prepSQL))
	for _, si := range s.settings {
		out = append(out, si.SQL)
	}
	for _, p := range s.prepSQL {
		out = append(out, p.sql)
	}
	return out
}

// ReplayVersion is incremented whenever Replay's result changes.
func (s *Session) ReplayVersion() uint64 { return s.version }

// Prepare records a protocol-level (Parse message) prepared statement, so
// that Bind/Execute of name can be routed without parsing again. The
// unnamed statement is "". It takes effect immediately.
func (s *Session) Prepare(name string, st *Statement) { s.prepared[name] = st }

// Prepared returns the statement prepared under name (by Prepare or by SQL
// PREPARE).
func (s *Session) Prepared(name string) (*Statement, bool) {
	st, ok := s.prepared[name]
	return st, ok
}

// Deallocate forgets a protocol-level prepared statement (Close message).
func (s *Session) Deallocate(name string) { delete(s.prepared, name) }

// applySession queues the session effects of a statement (SET, DISCARD,
// PREPARE, DEALLOCATE, CREATE TEMP).
func (s *Session) applySession(st *Statement) {
	if len(st.Sets) == 0 && st.PrepareName == "" && st.DeallocName == "" && !st.DeallocAll && len(st.CreatesTemp) == 0 {
		return
	}
	inTx := s.tx != txIdle
	s.pending = append(s.pending, func() {
		for _, si := range st.Sets {
			if si.Intercepted() || si.Local {
				continue
			}
			if inTx && (si.Op == SetValue || si.Op == SetDefault || si.Op == SetFromCurrent || si.Op == SetReset || si.Op == SetResetAll || si.Op == SetSessionCharacteristics) {
				s.staged = append(s.staged, si)
				continue
			}
			s.applySets([]SetInfo{si})
		}
		if st.PrepareName != "" && st.Prepared != nil {
			s.prepared[st.PrepareName] = st.Prepared
			s.prepSQL = append(s.prepSQL, preparedText{st.PrepareName, firstStatementText(st)})
			s.version++
		}
		if st.DeallocAll {
			s.dropAllPrepared()
		} else if st.DeallocName != "" {
			delete(s.prepared, st.DeallocName)
			s.dropPrepSQL(st.DeallocName)
		}
		for _, t := range st.CreatesTemp {
			s.temps[t] = true
		}
	})
}

func firstStatementText(st *Statement) string {
	if st.Prepared != nil && st.Prepared.SQL != "" {
		return st.Prepared.SQL
	}
	return st.SQL
}

func (s *Session) dropPrepSQL(name string) {
	for i, p := range s.prepSQL {
		if p.name == name {
			s.prepSQL = append(s.prepSQL[:i:i], s.prepSQL[i+1:]...)
			s.version++
			return
		}
	}
}

func (s *Session) dropAllPrepared() {
	for _, p := range s.prepSQL {
		delete(s.prepared, p.name)
	}
	s.prepSQL = nil
	s.version++
}

// applySets applies SET/RESET/DISCARD effects to the replay list.
func (s *Session) applySets(sets []SetInfo) {
	for _, si := range sets {
		switch si.Op {
		case SetValue, SetFromCurrent, SetSessionCharacteristics:
			s.removeSetting(si.Name)
			s.settings = append(s.settings, si)
		case SetDefault, SetReset:
			s.removeSetting(si.Name)
		case SetResetAll:
			s.settings = nil
		case SetDiscardAll:
			s.settings = nil
			s.dropAllPrepared()
			clear(s.temps)
			s.applyListens([]ListenInfo{{Op: ListenRemoveAll}})
		case SetDiscardTemp:
			clear(s.temps)
		}
		s.version++
	}
}

func (s *Session) removeSetting(name string) {
	for i, si := range s.settings {
		if si.Name == name {
			s.settings = append(s.settings[:i:i], s.settings[i+1:]...)
			return
		}
	}
}

// routeListen records a LISTEN or UNLISTEN answered by the front end:
// inside a transaction it takes effect when the transaction commits;
// outside one on Observe (dropped by ObserveError, so that a front end
// that failed to carry it out leaves the session unchanged).
func (s *Session) routeListen(li ListenInfo) {
	if s.tx != txIdle {
		s.stagedListens = append(s.stagedListens, li)
		return
	}
	s.pending = append(s.pending, func() { s.applyListens([]ListenInfo{li}) })
}

func (s *Session) applyListens(ls []ListenInfo) {
	for _, li := range ls {
		switch li.Op {
		case ListenAdd:
			if s.listening == nil {
				s.listening = map[string]bool{}
			}
			if s.listening[li.Channel] {
				continue
			}
			s.listening[li.Channel] = true
		case ListenRemove:
			if !s.listening[li.Channel] {
				continue
			}
			delete(s.listening, li.Channel)
		case ListenRemoveAll:
			if len(s.listening) == 0 {
				continue
			}
			clear(s.listening)
		}
		s.listenVersion++
	}
}

// Listening returns the channels the session listens on (committed
// LISTENs not undone by UNLISTEN or DISCARD ALL), sorted. A LISTEN inside
// a transaction counts once the transaction commits.
func (s *Session) Listening() []string {
	return slices.Sorted(maps.Keys(s.listening))
}

// ListenVersion changes whenever Listening's result changes.
func (s *Session) ListenVersion() uint64 { return s.listenVersion }
