package proxy

import (
	"hash/maphash"
	"sort"
	"strings"
	"time"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/dbproxy/dbproxy/shard"
)

// session is the client-side state that outlives a backend lease: SET
// parameters and prepared statements to replay, the staleness bound and
// the causal position. It is owned by the connection's reader goroutine;
// the pump touches it only under clientConn.mu.
type session struct {
	settings     map[string]string // parameter name -> statement that sets it (replayable SQL)
	order        []string          // names in first-set order (replay order)
	fingerprint  uint64            // of settings; 0 = no settings
	stmts        map[string]*preparedStmt
	maxStaleness time.Duration
	causal       map[shard.ID]replica.LSN // highest commit position seen per shard
}

// preparedStmt is a statement the client prepared with Parse (name may
// be "" for the unnamed statement). It is re-prepared on any backend that
// does not have it, identified by hash.
type preparedStmt struct {
	name      string
	query     string
	paramOIDs []uint32
	hash      uint64
	stmt      *router.Statement // classification, nil until classified
}

var hashSeed = maphash.MakeSeed()

func stmtHash(query string, oids []uint32) uint64 {
	var h maphash.Hash
	h.SetSeed(hashSeed)
	h.WriteString(query)
	for _, o := range oids {
		h.WriteByte(byte(o))
		h.WriteByte(byte(o >> 8))
		h.WriteByte(byte(o >> 16))
		h.WriteByte(byte(o >> 24))
	}
	return h.Sum64() | 1 // never 0
}

// backendState is what the proxy knows about one backend connection,
// stored in its pgconn CustomData so it lives and dies with the
// connection: the fingerprint of the session settings applied to it and
// the prepared statements it holds (name -> hash).
type backendState struct {
	fingerprint uint64
	stmts       map[string]uint64
}

const backendStateKey = "dbproxy.proxy.backend"

func (s *session) applySet(si router.SetInfo) {
	switch si.Op {
	case router.SetValue, router.SetFromCurrent, router.SetSessionCharacteristics:
		name := si.Name
		if si.Op == router.SetSessionCharacteristics {
			name = "\x00session_characteristics"
		}
		if _, ok := s.settings[name]; !ok {
			s.order = append(s.order, name)
		}
		s.settings[name] = si.SQL
	case router.SetDefault, router.SetReset:
		s.delete(si.Name)
	case router.SetResetAll, router.SetDiscardAll:
		s.settings = map[string]string{}
		s.order = nil
	}
	s.fingerprint = s.computeFingerprint()
}

func (s *session) delete(name string) {
	if _, ok := s.settings[name]; !ok {
		return
	}
	delete(s.settings, name)
	for i, n := range s.order {
		if n == name {
			s.order = append(s.order[:i:i], s.order[i+1:]...)
			break
		}
	}
}

func (s *session) computeFingerprint() uint64 {
	if len(s.settings) == 0 {
		return 0
	}
	names := make([]string, 0, len(s.settings))
	for n := range s.settings {
		names = append(names, n)
	}
	sort.Strings(names)
	var h maphash.Hash
	h.SetSeed(hashSeed)
	for _, n := range names {
		h.WriteString(n)
		h.WriteByte(0)
		h.WriteString(s.settings[n])
		h.WriteByte(0)
	}
	return h.Sum64() | 1
}

// replaySQL returns the statements that bring a backend to this session's
// settings: RESET ALL, then every tracked SET in order.
func (s *session) replaySQL() string {
	var b strings.Builder
	b.WriteString("RESET ALL")
	for _, n := range s.order {
		b.WriteString(";\n")
		b.WriteString(s.settings[n])
	}
	return b.String()
}

func (s *session) observeCommit(id shard.ID, lsn replica.LSN) {
	if lsn > s.causal[id] {
		s.causal[id] = lsn
	}
}

func (s *session) tokenText() string {
	return formatToken(s.causal)
}

// quoteLiteral quotes v as a SQL string literal.
func quoteLiteral(v string) string {
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

// quoteIdent quotes a parameter name when it needs it.
func quoteIdent(v string) string {
	ok := v != ""
	for i, r := range v {
		if !(r == '_' || r == '.' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			ok = false
		}
	}
	if ok {
		return v
	}
	return `"` + strings.ReplaceAll(v, `"`, `""`) + `"`
}
