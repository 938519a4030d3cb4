package proxy

import (
	"hash/maphash"
	"strings"

	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgproto3"
)

// session is the client-side state that outlives a backend lease. The
// router's Session holds transaction state, SET parameters to replay and
// causal positions; the proxy adds the protocol-level prepared statements
// (text and parameter types, to re-prepare them on any backend). It is
// owned by the connection's reader goroutine; the pump touches it only
// under clientConn.mu, and every router.Session call is made under
// clientConn.mu.
type session struct {
	rs    *router.Session
	stmts map[string]*preparedStmt

	paramNames [8]paramNameEntry // recent parameterized texts' statement names (paramName)
	paramNext  int
	bind       pgproto3.Bind // reused by sendParameterized (encoded at once)
	argBuf     []byte
	argVals    [][]byte

	replayVersion uint64 // rs.ReplayVersion() when fingerprint was computed
	fingerprint   uint64 // of rs.Replay(); 0 = nothing to replay
	replaySQL     string
}

type paramNameEntry struct {
	hash uint64
	name string
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
	auto      string            // the unnamed statement's alias on backends ("" when not aliased)
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
	schemaEpoch uint64 // Server.schemaEpoch when the aliases were last checked (closeStaleAuto)
	tainted     bool   // a session left state here (temporary table, WITH HOLD cursor, advisory lock; session pooling): closed, never pooled again
	stmts       map[string]uint64
	// lastUse orders the client-named statements prepared here by their
	// last Parse or Bind (a counter, uses), for trimNamed.
	lastUse   map[string]uint64
	uses      uint64
	auto      []string // aliases of unnamed statements prepared here, oldest first
	staleAuto bool     // an alias failed with "cached plan must not change result type": close them all
	// rowDescs is the RowDescription (nil: NoData) of parameterized
	// queries' statements prepared here, by name.
	rowDescs map[string]*pgproto3.RowDescription
}

// forgetStatement records that the backend no longer holds statement name.
func (b *backendState) forgetStatement(name string) {
	delete(b.stmts, name)
	delete(b.rowDescs, name)
	delete(b.lastUse, name)
}

// prepared records that the backend holds the client's statement name
// (hash h) and that it was just used.
func (b *backendState) prepared(name string, h uint64) {
	b.stmts[name] = h
	b.touch(name)
}

// touch records a use of the client-named statement name.
func (b *backendState) touch(name string) {
	if name != "" {
		b.uses++
		b.lastUse[name] = b.uses
	}
}

// forgetStatements records that the backend dropped every prepared
// statement (DISCARD ALL, DEALLOCATE ALL).
func (b *backendState) forgetStatements() {
	clear(b.stmts)
	clear(b.rowDescs)
	clear(b.lastUse)
	b.auto = b.auto[:0]
}

const backendStateKey = "dbproxy.proxy.backend"

// replay returns the fingerprint of the session's settings and the SQL
// that brings a backend to them (RESET ALL, then every tracked SET and
// SQL-level PREPARE). Called with clientConn.mu held.
func (s *session) replay() (uint64, string) {
	if v := s.rs.ReplayVersion(); v != s.replayVersion || (v == 0 && s.replaySQL == "") {
		stmts := s.rs.Replay()
		s.replayVersion = v
		if len(stmts) == 0 {
			s.fingerprint, s.replaySQL = 0, "RESET ALL"
		} else {
			var h maphash.Hash
			h.SetSeed(hashSeed)
			for _, st := range stmts {
				h.WriteString(st)
				h.WriteByte(0)
			}
			s.fingerprint = h.Sum64() | 1
			prefix := "RESET ALL;\n"
			for _, st := range stmts {
				if len(st) >= 7 && strings.EqualFold(strings.TrimSpace(st)[:7], "PREPARE") {
					// SQL-level PREPAREs are replayed: drop the backend's first.
					prefix = "RESET ALL;\nDEALLOCATE ALL;\n"
					break
				}
			}
			s.replaySQL = prefix + strings.Join(stmts, ";\n")
		}
	}
	return s.fingerprint, s.replaySQL
}

func (s *session) tokenText() string { return s.rs.CausalToken().String() }

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
