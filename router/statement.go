package router

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Kind is the class of a statement as far as routing is concerned.
type Kind uint8

const (
	// KindUnknown is a statement the parser rejected (or an empty string).
	// It is sent to the primary, where PostgreSQL reports the real error.
	KindUnknown Kind = iota
	// KindRead is a query that only reads (SELECT, VALUES, TABLE, SHOW,
	// EXPLAIN without ANALYZE, COPY ... TO).
	KindRead
	// KindWrite changes data (INSERT, UPDATE, DELETE, MERGE, COPY FROM,
	// SELECT INTO, writable CTEs, CALL, DO, LOCK, ...).
	KindWrite
	// KindDDL changes the schema (CREATE, ALTER, DROP, GRANT, COMMENT, ...).
	KindDDL
	// KindTxControl is BEGIN/START TRANSACTION, COMMIT, ROLLBACK, SAVEPOINT,
	// RELEASE, ROLLBACK TO, PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED and
	// SET TRANSACTION. Statement.Tx carries the details.
	KindTxControl
	// KindSession is SET, RESET, DISCARD and SET SESSION CHARACTERISTICS.
	// Statement.Sets carries the details.
	KindSession
	// KindUtility is everything else that does not fit above: PREPARE,
	// EXECUTE, DEALLOCATE, LISTEN, NOTIFY, VACUUM, ANALYZE, CHECKPOINT,
	// cursors, ...
	KindUtility
)

var kindNames = [...]string{
	KindUnknown:   "unknown",
	KindRead:      "read",
	KindWrite:     "write",
	KindDDL:       "ddl",
	KindTxControl: "tx",
	KindSession:   "session",
	KindUtility:   "utility",
}

// String returns the lower-case name of k ("read", "write", "ddl", "tx",
// "session", "utility", "unknown").
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// MarshalText implements encoding.TextMarshaler.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler for the names of String.
func (k *Kind) UnmarshalText(b []byte) error {
	for i, n := range kindNames {
		if n == strings.ToLower(string(b)) {
			*k = Kind(i)
			return nil
		}
	}
	return fmt.Errorf("router: unknown statement kind %q", b)
}

// strength orders kinds for multi-statement strings: the strongest kind
// of the parts is the kind of the whole. Transaction control is weakest so
// that "BEGIN; UPDATE ...; COMMIT" is a write.
func (k Kind) strength() int {
	switch k {
	case KindTxControl:
		return 0
	case KindRead:
		return 1
	case KindSession:
		return 2
	case KindUtility:
		return 3
	case KindWrite:
		return 4
	case KindDDL:
		return 5
	default: // KindUnknown
		return 6
	}
}

// TxKind is the sub-kind of a transaction-control statement.
type TxKind uint8

const (
	TxNone             TxKind = iota // not a transaction-control statement
	TxBegin                          // BEGIN, START TRANSACTION
	TxCommit                         // COMMIT, END (also COMMIT AND CHAIN: Tx.Chain)
	TxRollback                       // ROLLBACK, ABORT
	TxSavepoint                      // SAVEPOINT name
	TxRelease                        // RELEASE [SAVEPOINT] name
	TxRollbackTo                     // ROLLBACK TO [SAVEPOINT] name
	TxPrepare                        // PREPARE TRANSACTION 'gid'
	TxCommitPrepared                 // COMMIT PREPARED 'gid'
	TxRollbackPrepared               // ROLLBACK PREPARED 'gid'
	TxSetTransaction                 // SET TRANSACTION ... (current transaction only)
)

var txKindNames = [...]string{
	TxNone: "none", TxBegin: "begin", TxCommit: "commit", TxRollback: "rollback",
	TxSavepoint: "savepoint", TxRelease: "release", TxRollbackTo: "rollback_to",
	TxPrepare: "prepare_transaction", TxCommitPrepared: "commit_prepared",
	TxRollbackPrepared: "rollback_prepared", TxSetTransaction: "set_transaction",
}

// String returns the snake_case name of k.
func (k TxKind) String() string {
	if int(k) < len(txKindNames) {
		return txKindNames[k]
	}
	return "TxKind(" + strconv.Itoa(int(k)) + ")"
}

// TxAccess is the access mode requested by BEGIN or SET TRANSACTION.
type TxAccess uint8

const (
	AccessDefault   TxAccess = iota // not specified
	AccessReadOnly                  // READ ONLY
	AccessReadWrite                 // READ WRITE
)

// String returns "default", "read_only" or "read_write".
func (a TxAccess) String() string {
	switch a {
	case AccessReadOnly:
		return "read_only"
	case AccessReadWrite:
		return "read_write"
	}
	return "default"
}

// TxInfo describes a transaction-control statement.
type TxInfo struct {
	Kind       TxKind
	Access     TxAccess // BEGIN / SET TRANSACTION: READ ONLY or READ WRITE
	Isolation  string   // BEGIN / SET TRANSACTION: "serializable", "repeatable read", ... ("" = default)
	Deferrable bool     // DEFERRABLE was given
	Name       string   // savepoint name (folded) or prepared-transaction gid
	Chain      bool     // COMMIT/ROLLBACK AND CHAIN
}

// SetOp is what a session statement does.
type SetOp uint8

const (
	SetValue                  SetOp = iota // SET name = value / SET name TO value
	SetDefault                             // SET name TO DEFAULT
	SetFromCurrent                         // SET name FROM CURRENT
	SetReset                               // RESET name
	SetResetAll                            // RESET ALL
	SetDiscardAll                          // DISCARD ALL
	SetDiscardPlans                        // DISCARD PLANS
	SetDiscardSequences                    // DISCARD SEQUENCES
	SetDiscardTemp                         // DISCARD TEMP
	SetSessionCharacteristics              // SET SESSION CHARACTERISTICS AS TRANSACTION ...
)

var setOpNames = [...]string{
	SetValue: "set", SetDefault: "set_default", SetFromCurrent: "set_from_current",
	SetReset: "reset", SetResetAll: "reset_all", SetDiscardAll: "discard_all",
	SetDiscardPlans: "discard_plans", SetDiscardSequences: "discard_sequences",
	SetDiscardTemp: "discard_temp", SetSessionCharacteristics: "set_session_characteristics",
}

// String returns the snake_case name of o.
func (o SetOp) String() string {
	if int(o) < len(setOpNames) {
		return setOpNames[o]
	}
	return "SetOp(" + strconv.Itoa(int(o)) + ")"
}

// SetInfo describes one session statement (SET, RESET, DISCARD).
type SetInfo struct {
	Op    SetOp
	Name  string // parameter name as PostgreSQL folds it ("search_path", "timezone", "dbproxy.causal_token"); "" for RESET ALL / DISCARD
	Value string // SET: the value as text (list items joined with ", "); "" otherwise
	Local bool   // SET LOCAL (transaction-scoped; never replayed)
	SQL   string // the statement's own text, suitable for replaying on another backend
}

// Intercepted reports whether the parameter belongs to dbproxy itself
// (dbproxy.causal_token, dbproxy.max_staleness, ...): such statements are
// handled by the Session and never sent to PostgreSQL.
func (s SetInfo) Intercepted() bool { return strings.HasPrefix(s.Name, "dbproxy.") }

// Access says how a statement uses a table.
type Access uint8

const (
	AccessRead  Access = iota // read only
	AccessWrite               // INSERT/UPDATE/DELETE/MERGE/COPY FROM target, TRUNCATE, LOCK, SELECT INTO target
	AccessDDL                 // the object of a DDL statement
)

// String returns "read", "write" or "ddl".
func (a Access) String() string {
	switch a {
	case AccessWrite:
		return "write"
	case AccessDDL:
		return "ddl"
	}
	return "read"
}

// TableRef is one reference to a table in a statement (one per occurrence:
// a self-join yields two). Names are folded as PostgreSQL folds them:
// unquoted identifiers lower-cased, quoted ones kept verbatim.
type TableRef struct {
	Schema string // "" when not qualified in the text
	Name   string
	Alias  string // "" when none
	Access Access
	Scope  int // the query level (SELECT block) the reference belongs to; key predicates are per scope
}

// QualifiedName returns "schema.name", or "name" when no schema was written.
func (t TableRef) QualifiedName() string {
	if t.Schema == "" {
		return t.Name
	}
	return t.Schema + "." + t.Name
}

// KeyValue is one candidate value of a column: a literal or a $n parameter.
type KeyValue struct {
	Param int    // 1-based parameter number for $n; 0 for a literal
	Text  string // the literal as text ("42", "abc", "4f...-..."); "" for a parameter
}

// String renders the value as "$n" or the quoted literal.
func (v KeyValue) String() string {
	if v.Param > 0 {
		return "$" + strconv.Itoa(v.Param)
	}
	return strconv.Quote(v.Text)
}

// ColumnValue is an equality "column = value" found in one alternative.
type ColumnValue struct {
	Column string
	Value  KeyValue
}

// TableKeys lists the shard-key candidates found for one table reference.
// Alternatives are OR-ed (OR branches, IN items, VALUES rows); inside one
// alternative the equalities are AND-ed. A column that an alternative does
// not constrain can have any value in that alternative. Nil Alternatives
// means nothing is known (any row of the table may be involved).
type TableKeys struct {
	Ref          int // index into Statement.Tables
	Alternatives [][]ColumnValue
}

// Hints are the /* dbproxy: ... */ and -- dbproxy: ... comment directives.
type Hints struct {
	Shard        string        // "shard=N" or "shard=name": force the shard ("" = none)
	Primary      bool          // "primary": force the primary
	MaxStaleness time.Duration // "max_staleness=200ms" (0 = not given)
	CausalToken  string        // "causal_token=s0:0/16B3748,..." (validated by Classify)
	NoCache      bool          // "nocache"
}

// IsZero reports whether no hint was given.
func (h Hints) IsZero() bool { return h == Hints{} }

// FuncRef names a function call that is not a known built-in; its
// volatility is looked up through the Router's FunctionCatalog.
type FuncRef struct {
	Schema string // "" when unqualified
	Name   string
}

// String returns "schema.name" or "name".
func (f FuncRef) String() string {
	if f.Schema == "" {
		return f.Name
	}
	return f.Schema + "." + f.Name
}

// Statement is the classification of one SQL string (which may hold
// several statements separated by semicolons).
//
// A *Statement returned by Classify may be shared with other callers
// through the parse cache: it is immutable, and callers must not modify
// it or anything it points to (slices included).
type Statement struct {
	SQL           string // the classified text, verbatim
	Kind          Kind
	Command       string // upper-case command of the first statement ("SELECT", "INSERT", "SET", "BEGIN", ...)
	NumStatements int

	Tables []TableRef  // every table reference, in textual order of discovery
	Keys   []TableKeys // shard-key candidates per table reference (only references with something known)

	MustPrimary   bool   // must run on a primary (writes, locks, volatile functions, session-bound state, ...)
	PrimaryReason string // why, when MustPrimary
	Cacheable     bool   // a deterministic single read whose result may be cached, assuming the user-defined Functions are immutable (Route checks them)

	Tx   *TxInfo   // set when Kind == KindTxControl and the string is a single statement
	Sets []SetInfo // every session statement in the string, in order

	Functions   []FuncRef // calls to functions that are not known built-ins (checked by Route)
	UpdatesKeys []string  // UPDATE: columns assigned by SET (a shard-key column here is refused)

	PrepareName          string     // SQL PREPARE name AS ...: the name
	Prepared             *Statement // SQL PREPARE: the classification of the prepared query
	ExecuteName          string     // SQL EXECUTE name: the name (its class comes from the Session)
	ExecuteArgs          []KeyValue // SQL EXECUTE arguments: literals (Param == -1 for an expression)
	DeallocName          string     // DEALLOCATE name ("" with DeallocAll for DEALLOCATE ALL)
	DeallocAll           bool
	CreatesTemp          []string    // CREATE TEMP TABLE names (session-bound)
	InvalidatesFunctions bool        // CREATE/ALTER/DROP FUNCTION/PROCEDURE/SCHEMA, ...: drop the function cache
	Listen               *ListenInfo // LISTEN or UNLISTEN as the only statement of the text
	SessionLock          bool        // takes a session-level advisory lock (pg_advisory_lock, pg_try_advisory_lock, _shared)
	TempKept             bool        // creates a temporary table that outlives its transaction (no ON COMMIT DROP)
	HoldCursor           bool        // DECLARE ... CURSOR WITH HOLD (outlives its transaction)
	CopyIn               *CopyInfo   // COPY table FROM STDIN as the only statement of the text
	CopyOut              *CopyInfo   // COPY table TO STDOUT or COPY (SELECT ...) TO STDOUT as the only statement of the text

	Hints     Hints
	HintError error // a malformed dbproxy hint (Route refuses the statement with 22023)

	ParseError error // the parser's error for unparseable SQL (Kind == KindUnknown)

	// analysis used by Route (unexported, immutable after Classify)
	scopes         []scopeInfo  // per Scope: alternatives with column equalities (co-location)
	scatter        *lazyScatter // single top-level SELECT: how to run it on several shards, planned on first use (nil if none)
	broadcast      bool         // DDL, TRUNCATE, VACUUM, CHECKPOINT: every shard
	mixedBroadcast bool         // multi-statement string mixing a broadcast with row writes
	explain        bool         // EXPLAIN: one shard is representative, never scattered
	hasTxControl   bool         // multi-statement string containing BEGIN/COMMIT/...
	listenInMulti  bool         // multi-statement string containing LISTEN/UNLISTEN (refused by Route)

	// set on statements instantiated from a shape template (shape.go)
	shape *shapeEntry
	lits  []string // literal values, in the order of the shape's $n
}

// ListenOp is what a LISTEN or UNLISTEN statement does.
type ListenOp uint8

const (
	ListenAdd       ListenOp = iota + 1 // LISTEN channel
	ListenRemove                        // UNLISTEN channel
	ListenRemoveAll                     // UNLISTEN *
)

// ListenInfo describes a LISTEN or UNLISTEN statement. Channel is the
// channel name as PostgreSQL folds it ("" for UNLISTEN *).
type ListenInfo struct {
	Op      ListenOp
	Channel string
}

// Tag is the statement's command tag.
func (l ListenInfo) Tag() string {
	if l.Op == ListenAdd {
		return "LISTEN"
	}
	return "UNLISTEN"
}

// CopyInfo describes COPY table [(columns)] FROM STDIN or TO STDOUT: what
// a front end needs to split the rows among shards or join theirs.
type CopyInfo struct {
	Table   TableRef // the table (zero for COPY (query) TO STDOUT)
	Query   bool     // COPY (SELECT ...) TO STDOUT: the rows of a query, not of Table
	Columns []string // the column list as folded by the parser; nil: every column of the table
	Format  string   // "text", "csv" or "binary"
	// Text and CSV options (PostgreSQL's defaults when not written).
	Delimiter byte
	Quote     byte   // CSV
	Escape    byte   // CSV
	Null      string // the NULL marker
	Header    bool   // the first line is a header (CSV or text, HEADER or HEADER MATCH)
}
