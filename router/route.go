package router

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/shard"
)

// TopologySource yields the current topology snapshot. Implementations
// must be safe for concurrent use and return immutable snapshots; a swap
// is a new *shard.Topology value. The Router calls Topology once per Route.
type TopologySource interface {
	Topology() *shard.Topology
}

// StaticTopology is a TopologySource holding one swappable snapshot.
type StaticTopology struct {
	p atomic.Pointer[shard.Topology]
}

// NewStaticTopology returns a source serving t.
func NewStaticTopology(t *shard.Topology) *StaticTopology {
	s := &StaticTopology{}
	s.p.Store(t)
	return s
}

// Topology returns the current snapshot.
func (s *StaticTopology) Topology() *shard.Topology { return s.p.Load() }

// Store atomically replaces the snapshot; routes started later see t.
func (s *StaticTopology) Store(t *shard.Topology) { s.p.Store(t) }

// FunctionCatalog reports the volatility of user-defined functions
// (implemented by the front ends against pg_proc). known is false when the
// function does not exist or is ambiguous. It may block (a query); it must
// honour ctx and be safe for concurrent use.
type FunctionCatalog interface {
	Volatility(ctx context.Context, schema, name string) (v Volatility, known bool, err error)
}

// Config configures a Router.
type Config struct {
	// Topology is required.
	Topology TopologySource
	// Functions is optional; without it every call of a user-defined
	// function sends the statement to the primary.
	Functions FunctionCatalog
	// MaxStaleness is the default staleness bound for replica reads
	// (overridden per session by SET dbproxy.max_staleness and per
	// statement by a max_staleness hint). 0 means replica.Set's own bound.
	MaxStaleness time.Duration
	// Classifier caches classifications for Route's internal parsing needs;
	// nil means the package-level cache.
	Classifier *Classifier
	// Logger receives debug events; nil discards.
	Logger *slog.Logger
}

// DefaultConfig returns a Config with no topology (set one) and a 1 s
// default staleness bound.
func DefaultConfig() Config { return Config{MaxStaleness: time.Second} }

// Validate checks c.
func (c Config) Validate() error {
	if c.Topology == nil {
		return fmt.Errorf("router: Config.Topology is required")
	}
	if c.MaxStaleness < 0 {
		return fmt.Errorf("router: Config.MaxStaleness must be >= 0")
	}
	return nil
}

// Router decides where statements run. It is safe for concurrent use;
// Sessions are not.
type Router struct {
	cfg  Config
	tv   atomic.Pointer[topoView]
	fmu  sync.RWMutex
	fvol map[FuncRef]Volatility
}

// New returns a Router for cfg (validated).
func New(cfg Config) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Classifier == nil {
		cfg.Classifier = defaultClassifier
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Router{cfg: cfg, fvol: map[FuncRef]Volatility{}}, nil
}

// topoView caches per-topology lookups so that Route does not allocate.
type topoView struct {
	t      *shard.Topology
	names  []string
	tables map[string]*shard.TableSpec
	all    []ShardTarget
}

func (r *Router) view() *topoView {
	t := r.cfg.Topology.Topology()
	if v := r.tv.Load(); v != nil && v.t == t {
		return v
	}
	v := &topoView{t: t, tables: map[string]*shard.TableSpec{}}
	if t == nil {
		return v
	}
	for _, si := range t.Shards() {
		v.names = append(v.names, si.Name)
		v.all = append(v.all, ShardTarget{ID: si.ID, Name: si.Name})
	}
	for _, tb := range t.Tables() {
		tb := tb
		v.tables[strings.TrimPrefix(tb.Name, "public.")] = &tb
	}
	r.tv.Store(v)
	return v
}

func (v *topoView) table(ref TableRef) *shard.TableSpec {
	name := ref.Name
	if ref.Schema != "" && ref.Schema != "public" {
		name = ref.Schema + "." + ref.Name
	}
	return v.tables[name]
}

// Target is where on a shard a statement runs.
type Target uint8

const (
	TargetPrimary Target = iota // the shard's primary
	TargetReplica               // a hot standby satisfying MinLSN and MaxStaleness (replica.Set.Pick falls back to the primary)
)

// String returns "primary" or "replica".
func (t Target) String() string {
	if t == TargetReplica {
		return "replica"
	}
	return "primary"
}

// Action says what the front end does with a Decision.
type Action uint8

const (
	// ActionForward: send the statement (Decision.SQL if set) to Shards.
	ActionForward Action = iota
	// ActionLocal: send nothing; answer the client with CommandComplete
	// (Decision.Tag) and, for the proxy, ReadyForQuery(Session.TxStatus()).
	// Used for a deferred BEGIN, COMMIT/ROLLBACK of a transaction that
	// never reached a backend, SET dbproxy.*, and DEALLOCATE.
	ActionLocal
)

// String returns "forward" or "local".
func (a Action) String() string {
	if a == ActionLocal {
		return "local"
	}
	return "forward"
}

// ShardTarget is one shard a decision involves.
type ShardTarget struct {
	ID     shard.ID
	Name   string
	MinLSN replica.LSN // replica reads: the standby must have replayed this (read-your-writes)
}

// Param is one Bind parameter.
type Param struct {
	Value  []byte // nil is SQL NULL
	Format int16  // 0 text, 1 binary
	OID    uint32 // type OID if known (0 = unspecified)
}

// Decision is where and how to run one statement. It is a value; its
// slices and Merge are not shared with other decisions except Merge, which
// is immutable.
type Decision struct {
	Action Action
	Tag    string // ActionLocal: the command tag to answer with ("BEGIN", "SET", ...)

	Shards       []ShardTarget // one or more (sorted by ID); empty for ActionLocal
	Target       Target
	MaxStaleness time.Duration // replica reads: staleness bound (0 = the replica set's default)
	Cacheable    bool          // the result may be served from / stored in the cache
	Reason       string        // why the primary, when Target == TargetPrimary because of the statement
	// ReadKey, for replica reads: a hash (xxhash, the same in every
	// process) of the statement's text and parameter values, for
	// replica.PickRequest.HashKey, so that the hash balancing policy
	// reads the same statement with the same values from the same
	// standby. 0 for other decisions.
	ReadKey uint64

	// Pinned: inside a transaction; run on the backend this session already
	// holds for Shards[0] (the one leased for the transaction's first
	// statement).
	Pinned bool
	// Preamble: statements to run first on the newly leased backend of a
	// transaction's first statement (the deferred BEGIN, SET TRANSACTION,
	// SAVEPOINT ...). The front end then holds the backend (Pinned) until
	// ReadyForQuery 'I'.
	Preamble []string

	SQL   string     // text to send when it differs from the statement (multi-shard rewrite); "" = as received
	Merge *MergePlan // multi-shard reads: how to combine; nil for one shard or broadcasts

	Statement       *Statement // the statement routed (for EXECUTE: the prepared one)
	TopologyVersion uint64

	// CopyConcat: COPY table TO STDOUT of a sharded table, or COPY
	// (SELECT ...) TO STDOUT over several shards; the front end
	// sends the shards' rows one shard after the other (Shards' order) as
	// one COPY (Statement.CopyOut tells the format).
	CopyConcat bool

	// CopySplit: COPY FROM STDIN into a sharded table outside a
	// transaction. Shards lists every shard; the front end sends each row
	// to the shard Topology.Locate gives for its key (Statement.CopyIn
	// tells how to read the rows).
	CopySplit *CopySplit
}

// CopySplit is what a front end needs to split COPY rows among shards.
type CopySplit struct {
	Table    shard.TableSpec // the sharded table: key columns and types
	Topology *shard.Topology // the snapshot the decision was made with
}

// MultiShard reports whether the decision involves more than one shard.
func (d Decision) MultiShard() bool { return len(d.Shards) > 1 }

// Route decides where st runs for session s with Bind parameters params
// (nil for simple queries; $n of SQL-level EXECUTE come from its
// arguments). It updates s (transaction state, pending session changes)
// and never blocks, except for FunctionCatalog lookups of user-defined
// functions not yet cached (bounded by ctx).
//
// Errors (all implement SQLState): ErrShardKeyRequired (wraps
// shard.ErrUnknownShardKey), ErrUnsupported, ErrCrossShardTransaction,
// ErrBadHint, ErrBadParameter, ErrBadCausalToken, shard.ErrBadKey (a
// key value of the wrong type), ctx errors. After an error s is unchanged.
func (r *Router) Route(ctx context.Context, s *Session, st *Statement, params []Param) (Decision, error) {
	if st == nil {
		return Decision{}, errorf(ErrUnsupported, "nil statement")
	}
	if st.HintError != nil {
		return Decision{}, st.HintError
	}
	tv := r.view()
	if tv.t == nil {
		return Decision{}, errorf(ErrUnsupported, "no topology")
	}
	if st.InvalidatesFunctions {
		r.fmu.Lock()
		clear(r.fvol)
		r.fmu.Unlock()
	}

	if st.Kind == KindTxControl && st.Tx != nil && st.NumStatements == 1 {
		return r.routeTx(tv, s, st)
	}
	if st.NumStatements == 1 && len(st.Sets) == 1 && st.Sets[0].Intercepted() {
		return r.routeIntercepted(s, st)
	}
	if st.listenInMulti {
		return Decision{}, errorf(ErrUnsupported, "LISTEN and UNLISTEN must be sent as statements of their own, not in a multi-statement string")
	}
	if st.Listen != nil && s.tx != txFailed {
		s.routeListen(*st.Listen)
		return Decision{Action: ActionLocal, Tag: st.Listen.Tag(), Statement: st, TopologyVersion: tv.t.Version()}, nil
	}
	if st.DeallocName != "" || st.DeallocAll {
		s.applySession(st)
		return Decision{Action: ActionLocal, Tag: "DEALLOCATE", Statement: st, TopologyVersion: tv.t.Version()}, nil
	}
	eff := st
	if st.ExecuteName != "" {
		p, ok := s.prepared[st.ExecuteName]
		if ok {
			eff = p
			params = executeParams(st.ExecuteArgs)
		}
	}
	d, err := r.routeStatement(ctx, tv, s, st, eff, params)
	if err != nil {
		return Decision{}, err
	}
	s.applySession(st)
	if d.Action == ActionForward && len(d.Shards) > 0 {
		s.last, s.lastValid, s.lastTgt = d.Shards[0].ID, true, d.Target
	}
	return d, nil
}

func executeParams(args []KeyValue) []Param {
	out := make([]Param, len(args))
	for i, a := range args {
		if a.Param == 0 {
			out[i] = Param{Value: []byte(a.Text)}
		}
	}
	return out
}

// routeTx handles single transaction-control statements.
func (r *Router) routeTx(tv *topoView, s *Session, st *Statement) (Decision, error) {
	local := func(tag string) Decision {
		return Decision{Action: ActionLocal, Tag: tag, Statement: st, TopologyVersion: tv.t.Version()}
	}
	tx := st.Tx
	switch s.tx {
	case txIdle:
		switch tx.Kind {
		case TxBegin:
			s.tx = txPending
			s.txReadOnly = tx.Access == AccessReadOnly
			s.preamble = []string{st.SQL}
			return local("BEGIN"), nil
		case TxCommit, TxRollback:
			// no transaction in progress: PostgreSQL only warns
			return local(st.Command), nil
		}
		// SAVEPOINT/SET TRANSACTION/... outside a transaction, 2PC
		// statements: let the default shard's primary answer.
		return r.single(tv, s, st, tv.t.DefaultShard(), TargetPrimary, st.Command+" outside a transaction"), nil
	case txPending:
		switch tx.Kind {
		case TxBegin:
			return local("BEGIN"), nil // PostgreSQL warns: already in a transaction
		case TxCommit, TxRollback:
			if tx.Kind == TxCommit {
				s.applySets(s.staged)
				s.applyListens(s.stagedListens)
			}
			s.staged, s.stagedListens = nil, nil
			s.endTx()
			if tx.Chain {
				s.tx = txPending
				s.preamble = []string{"BEGIN"}
			}
			return local(st.Command), nil
		case TxSetTransaction:
			switch tx.Access {
			case AccessReadOnly:
				s.txReadOnly = true
			case AccessReadWrite:
				s.txReadOnly = false
			}
			s.preamble = append(s.preamble, st.SQL)
			return local("SET"), nil
		case TxSavepoint, TxRelease, TxRollbackTo:
			s.preamble = append(s.preamble, st.SQL)
			return local(st.Command), nil
		}
		return Decision{}, errorf(ErrUnsupported, "%s before the transaction's first statement", st.Command)
	default: // active or failed: the pinned backend
		d := Decision{
			Action: ActionForward, Shards: []ShardTarget{{ID: s.txShard, Name: tv.name(s.txShard)}},
			Target: s.txTarget, Pinned: true, Statement: st, TopologyVersion: tv.t.Version(),
		}
		if tx.Kind == TxCommit || tx.Kind == TxRollback {
			s.ending = tx.Kind
		}
		return d, nil
	}
}

func (v *topoView) name(id shard.ID) string {
	if int(id) >= 0 && int(id) < len(v.names) {
		return v.names[id]
	}
	return ""
}

// routeIntercepted handles SET/RESET dbproxy.*.
func (r *Router) routeIntercepted(s *Session, st *Statement) (Decision, error) {
	si := st.Sets[0]
	tag := "SET"
	if si.Op == SetReset || si.Op == SetResetAll {
		tag = "RESET"
	}
	reset := si.Op == SetReset || si.Op == SetDefault
	switch si.Name {
	case "dbproxy.causal_token":
		if reset {
			s.causal = CausalToken{}
			break
		}
		tok, err := ParseCausalToken(si.Value)
		if err != nil {
			return Decision{}, err
		}
		s.causal = s.causal.Merge(tok)
	case "dbproxy.max_staleness":
		if reset {
			s.maxStaleness, s.hasStaleness = 0, false
			break
		}
		d, err := parseStaleness(si.Value)
		if err != nil {
			return Decision{}, errorf(ErrBadParameter, "dbproxy.max_staleness = %q: %v", si.Value, err)
		}
		s.maxStaleness, s.hasStaleness = d, true
	default:
		return Decision{}, errorf(ErrBadParameter, "unrecognized configuration parameter %q (dbproxy knows dbproxy.causal_token and dbproxy.max_staleness)", si.Name)
	}
	return Decision{Action: ActionLocal, Tag: tag, Statement: st}, nil
}

// single builds a one-shard decision.
func (r *Router) single(tv *topoView, s *Session, st *Statement, id shard.ID, tgt Target, reason string) Decision {
	d := Decision{
		Action: ActionForward, Shards: []ShardTarget{{ID: id, Name: tv.name(id)}}, Target: tgt,
		Statement: st, TopologyVersion: tv.t.Version(),
	}
	if tgt == TargetPrimary {
		d.Reason = reason
	}
	return d
}

// routeStatement is the general path. st is the statement received; eff is
// the statement whose tables and keys decide (st itself, or the prepared
// statement of an EXECUTE).
func (r *Router) routeStatement(ctx context.Context, tv *topoView, s *Session, st, eff *Statement, params []Param) (Decision, error) {
	d := Decision{Action: ActionForward, Statement: eff, TopologyVersion: tv.t.Version()}

	// Target: primary or replica.
	primary, reason := eff.MustPrimary, eff.PrimaryReason
	if st.MustPrimary && !primary {
		primary, reason = true, st.PrimaryReason
	}
	switch eff.Kind {
	case KindRead, KindSession:
	case KindUtility:
		if eff.NumStatements == 0 || st.PrepareName != "" {
			break // empty query, PREPARE: no execution
		}
		if !primary {
			primary, reason = true, eff.Command+" runs on the primary"
		}
	default:
		if !primary {
			primary, reason = true, eff.Kind.String()
		}
	}
	if st.PrepareName != "" && st.Prepared != nil {
		primary, reason = st.Prepared.MustPrimary, st.Prepared.PrimaryReason
	}
	cacheable := eff.Cacheable && !st.Hints.NoCache
	if len(eff.Functions) > 0 && (!primary || cacheable) {
		p, why, cache, err := r.userFunctions(ctx, eff.Functions)
		if err != nil {
			return Decision{}, err
		}
		if p {
			primary, reason = true, why
		}
		cacheable = cacheable && cache
	}
	for _, t := range eff.Tables {
		if t.Schema == "" && s.temps[t.Name] {
			primary, reason, cacheable = true, "temporary table "+t.Name, false
		}
	}
	if st.Hints.Primary && !primary {
		primary, reason = true, "primary hint"
	}

	// Shards.
	var ids []shard.ID
	var merge *scatterPlan
	switch {
	case st.Hints.Shard != "":
		id, err := hintShard(tv, st.Hints.Shard)
		if err != nil {
			return Decision{}, err
		}
		ids = []shard.ID{id}
	case eff.mixedBroadcast:
		return Decision{}, errorf(ErrUnsupported, "a multi-statement string mixes a statement for every shard (%s) with row writes; send them separately", eff.Command)
	case eff.broadcast:
		ids = r.broadcastShards(tv, eff)
	case eff.CopyIn != nil && tv.table(eff.CopyIn.Table) != nil && len(eff.Keys) == 0:
		// COPY FROM STDIN into a sharded table: the front end sends each
		// row to its key's shard.
		for _, si := range tv.t.Shards() {
			ids = append(ids, si.ID)
		}
		if len(ids) > 1 {
			d.CopySplit = &CopySplit{Table: *tv.table(eff.CopyIn.Table), Topology: tv.t}
		}
	default:
		var err error
		ids, err = r.shardsFor(tv, eff, params)
		if err != nil {
			return Decision{}, err
		}
		if len(ids) > 1 {
			if err := r.checkMultiShard(tv, eff); err != nil {
				return Decision{}, err
			}
			if eff.explain {
				ids = ids[:1] // one shard's plan is representative
			} else if eff.CopyOut != nil {
				d.CopyConcat = true
			} else {
				merge = eff.scatter.get()
				if st.ExecuteName != "" {
					return Decision{}, errorf(ErrUnsupported, "EXECUTE %s would need several shards", st.ExecuteName)
				}
			}
		}
	}

	// Transactions.
	switch s.tx {
	case txPending:
		if len(ids) != 1 {
			return Decision{}, errorf(ErrCrossShardTransaction, "statement needs shards %v inside a transaction", tv.nameList(ids))
		}
		tgt := TargetPrimary
		if s.txReadOnly {
			tgt = TargetReplica
		}
		d.Preamble = s.preamble
		s.tx, s.txShard, s.txTarget = txActive, ids[0], tgt
		s.preamble = nil
		primary = tgt == TargetPrimary
		if primary && reason == "" {
			reason = "read-write transaction"
		}
		cacheable = false
	case txActive, txFailed:
		if len(ids) != 1 || ids[0] != s.txShard {
			if st.Hints.Shard == "" && eff.NumStatements > 0 && len(eff.Tables) == 0 && !eff.broadcast {
				ids = []shard.ID{s.txShard} // no table: stays where the transaction is
			} else {
				return Decision{}, errorf(ErrCrossShardTransaction, "transaction is on shard %s, statement needs %v", tv.name(s.txShard), tv.nameList(ids))
			}
		}
		d.Pinned = true
		primary = s.txTarget == TargetPrimary
		if primary && reason == "" {
			reason = "read-write transaction"
		}
		cacheable = false
	}

	d.Shards = make([]ShardTarget, len(ids))
	for i, id := range ids {
		d.Shards[i] = ShardTarget{ID: id, Name: tv.name(id)}
	}
	if primary {
		d.Target, d.Reason = TargetPrimary, reason
		d.Cacheable = false
		return d, r.finishMerge(&d, merge, params)
	}
	d.Target = TargetReplica
	d.Cacheable = cacheable
	d.ReadKey = readKey(st.SQL, params)
	d.MaxStaleness = r.cfg.MaxStaleness
	if s.hasStaleness {
		d.MaxStaleness = s.maxStaleness
	}
	if st.Hints.MaxStaleness > 0 {
		d.MaxStaleness = st.Hints.MaxStaleness
	}
	ctxTok := CausalTokenFromContext(ctx)
	var hintTok CausalToken
	if st.Hints.CausalToken != "" {
		hintTok, _ = ParseCausalToken(st.Hints.CausalToken) // validated by Classify
	}
	for i := range d.Shards {
		n := d.Shards[i].Name
		d.Shards[i].MinLSN = max(s.causal.LSN(n), ctxTok.LSN(n), hintTok.LSN(n))
	}
	return d, r.finishMerge(&d, merge, params)
}

// Pick is the replica request for target t of d (one of d.Shards): its
// read-your-writes position, d's staleness bound and d's ReadKey. Only
// meaningful when d.Target is TargetReplica.
func (d Decision) Pick(t ShardTarget) replica.PickRequest {
	return replica.PickRequest{MinLSN: t.MinLSN, MaxStaleness: d.MaxStaleness, HashKey: d.ReadKey}
}

// readKey is Decision.ReadKey: xxhash of sql, then of each parameter's
// format and value (length-prefixed, so that values cannot run into each
// other; -1 for NULL). Never 0.
func readKey(sql string, params []Param) uint64 {
	var d xxhash.Digest
	d.Reset()
	_, _ = d.WriteString(sql)
	var hdr [6]byte
	for _, p := range params {
		n := uint32(len(p.Value))
		if p.Value == nil {
			n = ^uint32(0)
		}
		binary.LittleEndian.PutUint16(hdr[:2], uint16(p.Format))
		binary.LittleEndian.PutUint32(hdr[2:], n)
		_, _ = d.Write(hdr[:])
		_, _ = d.Write(p.Value)
	}
	return d.Sum64() | 1
}

func (v *topoView) nameList(ids []shard.ID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = v.name(id)
	}
	return out
}

// finishMerge attaches the merge plan of a multi-shard read, resolving
// LIMIT/OFFSET parameters.
func (r *Router) finishMerge(d *Decision, sp *scatterPlan, params []Param) error {
	if len(d.Shards) <= 1 || sp == nil {
		return nil
	}
	if d.Statement.Kind != KindRead {
		return nil
	}
	p := &sp.plan
	if sp.limitParam > 0 || sp.offsetParam > 0 {
		cp := *p
		if sp.limitParam > 0 {
			v, err := intParam(params, sp.limitParam)
			if err != nil {
				return err
			}
			cp.Limit = v
		}
		if sp.offsetParam > 0 {
			v, err := intParam(params, sp.offsetParam)
			if err != nil {
				return err
			}
			if v < 0 {
				v = 0
			}
			cp.Offset = v
		}
		p = &cp
	}
	d.Merge = p
	d.SQL = p.SQL
	return nil
}

func intParam(params []Param, n int) (int64, error) {
	if n > len(params) {
		return 0, errorf(ErrBadParameter, "parameter $%d not bound", n)
	}
	p := params[n-1]
	if p.Value == nil {
		return -1, nil // LIMIT NULL = no limit
	}
	if p.Format == 1 {
		var v int64
		switch len(p.Value) {
		case 8:
			v = int64(binary.BigEndian.Uint64(p.Value))
		case 4:
			v = int64(int32(binary.BigEndian.Uint32(p.Value)))
		case 2:
			v = int64(int16(binary.BigEndian.Uint16(p.Value)))
		default:
			return 0, errorf(ErrBadParameter, "LIMIT/OFFSET parameter $%d: bad binary integer of %d bytes", n, len(p.Value))
		}
		return v, nil
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(p.Value)), 10, 64)
	if err != nil {
		return 0, errorf(ErrBadParameter, "LIMIT/OFFSET parameter $%d: %v", n, err)
	}
	return v, nil
}

func hintShard(tv *topoView, h string) (shard.ID, error) {
	if n, err := strconv.Atoi(h); err == nil {
		if n < 0 || n >= len(tv.names) {
			return 0, errorf(ErrBadHint, "shard=%d: topology has %d shards", n, len(tv.names))
		}
		return shard.ID(n), nil
	}
	for i, n := range tv.names {
		if n == h {
			return shard.ID(i), nil
		}
	}
	return 0, errorf(ErrBadHint, "shard=%s: no such shard", h)
}

// broadcastShards: DDL and CHECKPOINT go everywhere; TRUNCATE/VACUUM/
// ANALYZE go everywhere when they touch a sharded table or name no table,
// else to the default shard.
func (r *Router) broadcastShards(tv *topoView, st *Statement) []shard.ID {
	all := func() []shard.ID {
		ids := make([]shard.ID, len(tv.names))
		for i := range ids {
			ids[i] = shard.ID(i)
		}
		return ids
	}
	if st.Kind == KindDDL || len(st.Tables) == 0 {
		return all()
	}
	for _, t := range st.Tables {
		if tv.table(t) != nil {
			return all()
		}
	}
	return []shard.ID{tv.t.DefaultShard()}
}

// userFunctions consults the catalog (cached) for calls of user-defined
// functions: volatile or unknown → primary; stable → not cacheable.
func (r *Router) userFunctions(ctx context.Context, fns []FuncRef) (primary bool, reason string, cacheable bool, err error) {
	cacheable = true
	for _, f := range fns {
		r.fmu.RLock()
		v, ok := r.fvol[f]
		r.fmu.RUnlock()
		if !ok {
			if r.cfg.Functions == nil {
				return true, "user-defined function " + f.String() + "() (no function catalog)", false, nil
			}
			var known bool
			var cerr error
			v, known, cerr = r.cfg.Functions.Volatility(ctx, f.Schema, f.Name)
			if cerr != nil {
				if ctx.Err() != nil {
					return false, "", false, ctx.Err()
				}
				r.cfg.Logger.Debug("function catalog lookup failed; routing to primary", "function", f.String(), "err", cerr)
				return true, "user-defined function " + f.String() + "() (catalog error)", false, nil
			}
			if !known {
				return true, "unknown function " + f.String() + "()", false, nil
			}
			r.fmu.Lock()
			r.fvol[f] = v
			r.fmu.Unlock()
		}
		switch v {
		case VolatilityVolatile:
			return true, "volatile function " + f.String() + "()", false, nil
		case VolatilityStable:
			cacheable = false
		}
	}
	return false, "", cacheable, nil
}

// refShards returns the shards a sharded table reference may touch: nil
// with all=true when its key is not fixed.
func (r *Router) refShards(tv *topoView, st *Statement, ref int, spec *shard.TableSpec, params []Param) (ids []shard.ID, all bool, err error) {
	var tk *TableKeys
	for i := range st.Keys {
		if st.Keys[i].Ref == ref {
			tk = &st.Keys[i]
			break
		}
	}
	if tk == nil || len(tk.Alternatives) == 0 {
		return nil, true, nil
	}
	for _, alt := range tk.Alternatives {
		key, ok, err := altKey(spec, alt, params)
		if err != nil {
			return nil, false, err
		}
		if !ok {
			return nil, true, nil
		}
		id := tv.t.LocateKey(key)
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids, false, nil
}

// altKey builds the key of spec from one alternative; ok is false when a
// key column is missing or a parameter is NULL.
func altKey(spec *shard.TableSpec, alt []ColumnValue, params []Param) (shard.Key, bool, error) {
	var parts []shard.Key
	for ci, col := range spec.Columns {
		var kv *KeyValue
		for i := range alt {
			if alt[i].Column == col {
				kv = &alt[i].Value
				break
			}
		}
		if kv == nil {
			return nil, false, nil
		}
		k, ok, err := keyOf(spec.Types[ci], *kv, params, spec.Name, col)
		if err != nil || !ok {
			return nil, ok, err
		}
		parts = append(parts, k)
	}
	if len(parts) == 1 {
		return parts[0], true, nil
	}
	return shard.Composite(parts...), true, nil
}

func keyOf(t shard.KeyType, kv KeyValue, params []Param, table, col string) (shard.Key, bool, error) {
	if kv.Param == 0 {
		k, err := shard.ParseKey(t, kv.Text)
		if err != nil {
			return nil, false, fmt.Errorf("router: %s.%s: %w", table, col, err)
		}
		return k, true, nil
	}
	if kv.Param < 0 || kv.Param > len(params) {
		return nil, false, nil // not bound (e.g. Parse without Bind): unknown
	}
	p := params[kv.Param-1]
	if p.Value == nil {
		return nil, false, nil // NULL never equals: no row on any shard; treat as unknown
	}
	var k shard.Key
	var err error
	if p.Format == 1 {
		k, err = shard.DecodeBinaryKey(t, p.Value)
	} else {
		k, err = shard.ParseKey(t, string(p.Value))
	}
	if err != nil {
		return nil, false, fmt.Errorf("router: %s.%s ($%d): %w", table, col, kv.Param, err)
	}
	return k, true, nil
}

// shardsFor computes the shard set of a statement from its tables and keys.
func (r *Router) shardsFor(tv *topoView, st *Statement, params []Param) ([]shard.ID, error) {
	var sharded []shardedRef
	var unsharded []string
	for i, t := range st.Tables {
		spec := tv.table(t)
		if spec == nil {
			unsharded = appendUnique(unsharded, t.QualifiedName())
			continue
		}
		ids, all, err := r.refShards(tv, st, i, spec, params)
		if err != nil {
			return nil, err
		}
		sharded = append(sharded, shardedRef{ref: i, spec: spec, ids: ids, all: all})
	}
	def := tv.t.DefaultShard()
	if len(sharded) == 0 {
		return []shard.ID{def}, nil
	}
	write := st.Kind != KindRead
	keyErr := func(sr shardedRef) error {
		return errorf(ErrShardKeyRequired, "table %s is sharded by (%s): the statement must fix %s (e.g. WHERE %s = ...)",
			sr.spec.Name, strings.Join(sr.spec.Columns, ", "), strings.Join(sr.spec.Columns, ", "), sr.spec.Columns[0])
	}
	// Union of the shards of every reference.
	var union []shard.ID
	anyAll := false
	for _, sr := range sharded {
		if sr.all {
			anyAll = true
			continue
		}
		for _, id := range sr.ids {
			if !slices.Contains(union, id) {
				union = append(union, id)
			}
		}
	}
	// Writes: exactly one shard, determined for every written table.
	if write {
		for _, sr := range sharded {
			if sr.all && st.Tables[sr.ref].Access != AccessRead {
				return nil, keyErr(sr)
			}
		}
		for _, k := range st.UpdatesKeys {
			for _, sr := range sharded {
				if st.Tables[sr.ref].Access == AccessWrite && slices.Contains(sr.spec.Columns, k) && st.Command == "UPDATE" {
					return nil, errorf(ErrUnsupported, "UPDATE of shard-key column %s of table %s (rows cannot move between shards)", k, sr.spec.Name)
				}
				if st.Tables[sr.ref].Access == AccessWrite && slices.Contains(sr.spec.Columns, k) && st.Command == "INSERT" {
					return nil, errorf(ErrUnsupported, "ON CONFLICT DO UPDATE of shard-key column %s of table %s", k, sr.spec.Name)
				}
			}
		}
		if anyAll {
			for _, sr := range sharded {
				if sr.all {
					return nil, keyErr(sr)
				}
			}
		}
		if len(union) != 1 {
			return nil, errorf(ErrUnsupported, "write spans shards %v (table %s); a write must stay on one shard", tv.nameList(sortIDs(union)), sharded[0].spec.Name)
		}
		if len(unsharded) > 0 && union[0] != def {
			return nil, errorf(ErrUnsupported, "statement joins sharded table %s (on shard %s) with unsharded %s (on default shard %s)",
				sharded[0].spec.Name, tv.name(union[0]), strings.Join(unsharded, ", "), tv.name(def))
		}
		return union, nil
	}
	// Reads.
	if !anyAll && len(union) == 1 {
		if len(unsharded) > 0 && union[0] != def {
			return nil, errorf(ErrUnsupported, "statement joins sharded table %s (on shard %s) with unsharded %s (on default shard %s)",
				sharded[0].spec.Name, tv.name(union[0]), strings.Join(unsharded, ", "), tv.name(def))
		}
		return union, nil
	}
	if len(unsharded) > 0 {
		return nil, errorf(ErrShardKeyRequired, "table %s is sharded by (%s) and the statement also reads unsharded %s, which lives only on the default shard",
			sharded[0].spec.Name, strings.Join(sharded[0].spec.Columns, ", "), strings.Join(unsharded, ", "))
	}
	if len(sharded) > 1 && !r.colocated(st, sharded) && !unionBranches(st, sharded) {
		names := make([]string, 0, len(sharded))
		for _, sr := range sharded {
			names = appendUnique(names, sr.spec.Name+"("+strings.Join(sr.spec.Columns, ", ")+")")
		}
		return nil, errorf(ErrShardKeyRequired, "statement combines sharded tables %s that are not joined on their shard keys and not fixed to one shard",
			strings.Join(names, ", "))
	}
	if anyAll {
		ids := make([]shard.ID, len(tv.names))
		for i := range ids {
			ids[i] = shard.ID(i)
		}
		return ids, nil
	}
	return sortIDs(union), nil
}

// shardedRef is one reference to a sharded table and the shards it may touch.
type shardedRef struct {
	ref  int
	spec *shard.TableSpec
	ids  []shard.ID
	all  bool // key not fixed: every shard
}

func sortIDs(ids []shard.ID) []shard.ID { slices.Sort(ids); return ids }

// colocated reports whether every sharded reference is in one scope and,
// in every alternative of that scope, their key columns are connected by
// column = column equalities (so matching rows live on the same shard).
// Only single-column keys of the same type qualify.
func (r *Router) colocated(st *Statement, list []shardedRef) bool {
	if len(list) == 0 {
		return false
	}
	sc := st.Tables[list[0].ref].Scope
	typ := list[0].spec.Types
	for _, sr := range list {
		if st.Tables[sr.ref].Scope != sc || len(sr.spec.Columns) != 1 || len(typ) != 1 || sr.spec.Types[0] != typ[0] {
			return false
		}
	}
	if sc < 0 || sc >= len(st.scopes) || st.scopes[sc].alts == nil {
		return false
	}
	for _, alt := range st.scopes[sc].alts {
		// union-find over the key columns of the refs
		parent := make([]int, len(list))
		for i := range parent {
			parent[i] = i
		}
		var find func(int) int
		find = func(i int) int {
			for parent[i] != i {
				i = parent[i]
			}
			return i
		}
		keyIdx := func(c colRef) []int {
			var out []int
			for i, sr := range list {
				if c.col == sr.spec.Columns[0] && c.matches(sr.ref, sc) {
					out = append(out, i)
				}
			}
			return out
		}
		for _, e := range alt.eqs {
			for _, i := range keyIdx(e[0]) {
				for _, j := range keyIdx(e[1]) {
					parent[find(i)] = find(j)
				}
			}
		}
		root := find(0)
		for i := range list {
			if find(i) != root {
				return false
			}
		}
	}
	return true
}

// unionBranches reports whether the sharded references sit in distinct
// branches of a top-level UNION ALL (at most one per branch): each shard
// then returns its part of every branch and the union is correct.
func unionBranches(st *Statement, list []shardedRef) bool {
	seen := map[int]bool{}
	for _, sr := range list {
		sc := st.Tables[sr.ref].Scope
		if sc < 0 || sc >= len(st.scopes) || !st.scopes[sc].branch || seen[sc] {
			return false
		}
		seen[sc] = true
	}
	return true
}

// checkMultiShard refuses statements that cannot run on several shards.
func (r *Router) checkMultiShard(tv *topoView, st *Statement) error {
	if st.explain || st.CopyOut != nil && !st.CopyOut.Query {
		return nil // COPY table TO STDOUT: the front end concatenates the shards' rows
	}
	name := ""
	cols := ""
	for _, t := range st.Tables {
		if spec := tv.table(t); spec != nil {
			name, cols = spec.Name, strings.Join(spec.Columns, ", ")
			break
		}
	}
	if st.Kind != KindRead || st.NumStatements != 1 || st.scatter == nil {
		return errorf(ErrShardKeyRequired, "table %s is sharded by (%s) and this %s cannot run on several shards; fix the shard key",
			name, cols, st.Command)
	}
	sp := st.scatter.get()
	if sp.refuse != "" {
		return errorf(ErrShardKeyRequired, "table %s is sharded by (%s) and the statement needs several shards, but %s is not supported; fix the shard key",
			name, cols, sp.refuse)
	}
	if st.CopyOut != nil && !sp.concatenates() {
		// COPY (SELECT ...) TO STDOUT is relayed like a table's COPY, one
		// shard after another: only rows that need no merging qualify.
		return errorf(ErrUnsupported, "COPY (query) TO STDOUT over several shards relays each shard's rows in turn: ORDER BY, LIMIT/OFFSET and aggregates need a single shard; run the query as a SELECT (merged across shards) or fix the shard key")
	}
	return nil
}
