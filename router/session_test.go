package router

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/shard"
)

func mustClassify(t *testing.T, sql string) *Statement {
	t.Helper()
	st, err := Classify(sql)
	if err != nil {
		t.Fatalf("Classify(%q): %v", sql, err)
	}
	return st
}

func route(t *testing.T, r *Router, s *Session, sql string, params ...Param) Decision {
	t.Helper()
	d, err := r.Route(context.Background(), s, mustClassify(t, sql), params)
	if err != nil {
		t.Fatalf("Route(%q): %v", sql, err)
	}
	return d
}

func routeErr(t *testing.T, r *Router, s *Session, sql string) error {
	t.Helper()
	_, err := r.Route(context.Background(), s, mustClassify(t, sql), nil)
	if err == nil {
		t.Fatalf("Route(%q): no error", sql)
	}
	return err
}

func sqlState(err error) string {
	var sq interface{ SQLState() string }
	if errors.As(err, &sq) {
		return sq.SQLState()
	}
	return ""
}

// users id=5 → s1, id=1 → s0 (see golden file).
func TestTransactionPinsFirstShard(t *testing.T) {
	r := newTestRouter(t)
	s := r.NewSession()
	d := route(t, r, s, "BEGIN ISOLATION LEVEL SERIALIZABLE")
	if d.Action != ActionLocal || d.Tag != "BEGIN" || s.TxStatus() != 'T' {
		t.Fatalf("BEGIN: %+v status %c", d, s.TxStatus())
	}
	d = route(t, r, s, "SELECT * FROM users WHERE id = 5")
	if d.Action != ActionForward || len(d.Shards) != 1 || d.Shards[0].Name != "s1" || d.Target != TargetPrimary || d.Pinned || d.Cacheable {
		t.Fatalf("first statement: %+v", d)
	}
	if !slices.Equal(d.Preamble, []string{"BEGIN ISOLATION LEVEL SERIALIZABLE"}) {
		t.Fatalf("preamble %q", d.Preamble)
	}
	s.Observe('T')
	if id, ok := s.PinnedShard(); !ok || id != 1 {
		t.Fatalf("pinned %v %v", id, ok)
	}
	d = route(t, r, s, "UPDATE users SET name = 'x' WHERE id = 5")
	if !d.Pinned || d.Shards[0].ID != 1 || d.Preamble != nil {
		t.Fatalf("second statement: %+v", d)
	}
	// statement without tables stays on the pinned shard
	d = route(t, r, s, "SELECT now()")
	if !d.Pinned || d.Shards[0].ID != 1 || d.Target != TargetPrimary {
		t.Fatalf("no-table statement: %+v", d)
	}
	// second shard: refused, session unchanged
	err := routeErr(t, r, s, "SELECT * FROM users WHERE id = 1")
	if !errors.Is(err, ErrCrossShardTransaction) || sqlState(err) != "0A000" {
		t.Fatalf("cross-shard: %v (%s)", err, sqlState(err))
	}
	err = routeErr(t, r, s, "SELECT * FROM users")
	if !errors.Is(err, ErrCrossShardTransaction) {
		t.Fatalf("scatter in tx: %v", err)
	}
	d = route(t, r, s, "COMMIT")
	if !d.Pinned || d.Action != ActionForward {
		t.Fatalf("COMMIT: %+v", d)
	}
	s.Observe('I')
	if s.InTransaction() || s.TxStatus() != 'I' {
		t.Fatal("still in a transaction after COMMIT + 'I'")
	}
	d = route(t, r, s, "SELECT * FROM users WHERE id = 1")
	if d.Pinned || d.Target != TargetReplica || d.Shards[0].Name != "s0" {
		t.Fatalf("after commit: %+v", d)
	}
}

func TestReadOnlyTransactionUsesReplica(t *testing.T) {
	r := newTestRouter(t)
	s := r.NewSession()
	route(t, r, s, "BEGIN READ ONLY")
	d := route(t, r, s, "SELECT * FROM users WHERE id = 1")
	if d.Target != TargetReplica || d.Cacheable {
		t.Fatalf("read-only tx first statement: %+v", d)
	}
	s.Observe('T')
	d = route(t, r, s, "SELECT * FROM users WHERE id = 2")
	if !d.Pinned || d.Target != TargetReplica {
		t.Fatalf("read-only tx: %+v", d)
	}
	// SET TRANSACTION READ ONLY before the first statement also counts
	s2 := r.NewSession()
	route(t, r, s2, "BEGIN")
	if d := route(t, r, s2, "SET TRANSACTION READ ONLY"); d.Action != ActionLocal {
		t.Fatalf("SET TRANSACTION deferred: %+v", d)
	}
	d = route(t, r, s2, "SELECT 1")
	if d.Target != TargetReplica || !slices.Equal(d.Preamble, []string{"BEGIN", "SET TRANSACTION READ ONLY"}) {
		t.Fatalf("after SET TRANSACTION READ ONLY: %+v", d)
	}
}

func TestDeferredBeginCommitAndErrors(t *testing.T) {
	r := newTestRouter(t)
	s := r.NewSession()
	route(t, r, s, "BEGIN")
	if d := route(t, r, s, "COMMIT"); d.Action != ActionLocal || d.Tag != "COMMIT" || s.InTransaction() {
		t.Fatalf("empty transaction: %+v", d)
	}
	// a failed transaction stays pinned until ROLLBACK
	route(t, r, s, "BEGIN")
	route(t, r, s, "SELECT * FROM users WHERE id = 5")
	s.ObserveError()
	s.Observe('E')
	if s.TxStatus() != 'E' {
		t.Fatalf("status %c", s.TxStatus())
	}
	d := route(t, r, s, "ROLLBACK")
	if !d.Pinned || d.Shards[0].ID != 1 {
		t.Fatalf("ROLLBACK: %+v", d)
	}
	s.Observe('I')
	if s.InTransaction() {
		t.Fatal("still in transaction")
	}
	// BEGIN inside a multi-statement string: pinned by Observe('T')
	d = route(t, r, s, "BEGIN; UPDATE users SET name = 'x' WHERE id = 5")
	if d.Target != TargetPrimary || d.Shards[0].ID != 1 {
		t.Fatalf("multi: %+v", d)
	}
	s.Observe('T')
	if id, ok := s.PinnedShard(); !ok || id != 1 {
		t.Fatal("multi-statement BEGIN did not pin")
	}
}

func TestSetTrackingAndReplay(t *testing.T) {
	r := newTestRouter(t)
	s := r.NewSession()
	v0 := s.ReplayVersion()
	route(t, r, s, "SET search_path TO app, public")
	if len(s.Replay()) != 0 {
		t.Fatal("SET applied before Observe")
	}
	s.Observe('I')
	route(t, r, s, "SET statement_timeout = 1000")
	s.Observe('I')
	route(t, r, s, "SET LOCAL work_mem = '1MB'")
	s.Observe('I')
	route(t, r, s, "SET search_path = other")
	s.Observe('I')
	want := []string{"SET statement_timeout = 1000", "SET search_path = other"}
	if got := s.Replay(); !slices.Equal(got, want) {
		t.Fatalf("replay %q want %q", got, want)
	}
	if s.ReplayVersion() == v0 {
		t.Fatal("version did not change")
	}
	// a SET the backend rejected is not replayed
	route(t, r, s, "SET bogus_param = 1")
	s.ObserveError()
	s.Observe('I')
	if got := s.Replay(); !slices.Equal(got, want) {
		t.Fatalf("rejected SET replayed: %q", got)
	}
	route(t, r, s, "RESET statement_timeout")
	s.Observe('I')
	if got := s.Replay(); !slices.Equal(got, []string{"SET search_path = other"}) {
		t.Fatalf("after RESET: %q", got)
	}
	// SET inside a rolled-back transaction is dropped; committed is kept
	route(t, r, s, "BEGIN")
	route(t, r, s, "SELECT 1")
	s.Observe('T')
	route(t, r, s, "SET timezone = 'UTC'")
	s.Observe('T')
	route(t, r, s, "ROLLBACK")
	s.Observe('I')
	if got := s.Replay(); len(got) != 1 {
		t.Fatalf("rolled-back SET kept: %q", got)
	}
	route(t, r, s, "BEGIN")
	route(t, r, s, "SELECT 1")
	s.Observe('T')
	route(t, r, s, "SET timezone = 'UTC'")
	s.Observe('T')
	route(t, r, s, "COMMIT")
	s.Observe('I')
	if got := s.Replay(); !slices.Equal(got, []string{"SET search_path = other", "SET timezone = 'UTC'"}) {
		t.Fatalf("committed SET: %q", got)
	}
	// SQL PREPARE is replayed; EXECUTE routes like the prepared statement
	route(t, r, s, "PREPARE q(int) AS SELECT * FROM users WHERE id = $1")
	s.Observe('I')
	if got := s.Replay(); got[len(got)-1] != "PREPARE q(int) AS SELECT * FROM users WHERE id = $1" {
		t.Fatalf("prepare replay: %q", got)
	}
	d := route(t, r, s, "EXECUTE q(5)")
	if d.Shards[0].ID != 1 || d.Target != TargetReplica {
		t.Fatalf("EXECUTE: %+v", d)
	}
	if d := route(t, r, s, "DEALLOCATE q"); d.Action != ActionLocal {
		t.Fatalf("DEALLOCATE: %+v", d)
	}
	s.Observe('I')
	if _, ok := s.Prepared("q"); ok {
		t.Fatal("q still prepared")
	}
	route(t, r, s, "RESET ALL")
	s.Observe('I')
	if got := s.Replay(); len(got) != 0 {
		t.Fatalf("after RESET ALL: %q", got)
	}
	route(t, r, s, "SET a.b = 1")
	s.Observe('I')
	route(t, r, s, "DISCARD ALL")
	s.Observe('I')
	if got := s.Replay(); len(got) != 0 {
		t.Fatalf("after DISCARD ALL: %q", got)
	}
}

func TestInterceptedSettings(t *testing.T) {
	r := newTestRouter(t)
	s := r.NewSession()
	d := route(t, r, s, "SET dbproxy.causal_token = 's1:0/10,s0:0/5'")
	if d.Action != ActionLocal || d.Tag != "SET" {
		t.Fatalf("%+v", d)
	}
	if got := s.CausalToken().String(); got != "s0:0/5,s1:0/10" {
		t.Fatalf("token %q", got)
	}
	d = route(t, r, s, "SELECT * FROM users WHERE id = 5")
	if d.Shards[0].MinLSN != 0x10 {
		t.Fatalf("MinLSN %v", d.Shards[0].MinLSN)
	}
	route(t, r, s, "SET dbproxy.max_staleness = '75ms'")
	d = route(t, r, s, "SELECT 1")
	if d.MaxStaleness != 75e6 || d.Shards[0].MinLSN != 5 {
		t.Fatalf("%+v", d)
	}
	err := routeErr(t, r, s, "SET dbproxy.causal_token = 'x'")
	if !errors.Is(err, ErrBadCausalToken) || sqlState(err) != "22023" {
		t.Fatalf("%v", err)
	}
	route(t, r, s, "RESET dbproxy.causal_token")
	if !s.CausalToken().IsZero() {
		t.Fatal("token not reset")
	}
	if len(s.Replay()) != 0 {
		t.Fatal("dbproxy.* settings must not be replayed")
	}
}

func TestCausalAdvanceAndContext(t *testing.T) {
	r := newTestRouter(t)
	s := r.NewSession()
	s.AdvanceCausal(1, 0x2000)
	s.AdvanceCausal(1, 0x1000) // lower: ignored
	s.AdvanceCausal(7, 1)      // unknown shard: ignored
	if got := s.CausalToken().String(); got != "s1:0/2000" {
		t.Fatalf("%q", got)
	}
	ctx := WithCausalToken(context.Background(), mustToken(t, "s0:1/0"))
	d, err := r.Route(ctx, s, mustClassify(t, "SELECT * FROM users WHERE id IN (1, 5)"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Shards) != 2 || d.Shards[0].MinLSN != 1<<32 || d.Shards[1].MinLSN != 0x2000 {
		t.Fatalf("%+v", d.Shards)
	}
	// a write goes to the primary without MinLSN
	d = route(t, r, s, "UPDATE users SET name = 'x' WHERE id = 5")
	if d.Target != TargetPrimary || d.Shards[0].MinLSN != 0 {
		t.Fatalf("%+v", d)
	}
}

func mustToken(t *testing.T, s string) CausalToken {
	t.Helper()
	tok, err := ParseCausalToken(s)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestCausalTokenRoundTrip(t *testing.T) {
	for _, in := range []string{"", "s0:0/16B3748", "s0:0/16B3748,s1:0/1A2B3C", "shard:a:FF/FF"} {
		tok := mustToken(t, in)
		if tok.String() != in {
			t.Errorf("round trip %q → %q", in, tok.String())
		}
		var back CausalToken
		b, _ := tok.MarshalText()
		if err := back.UnmarshalText(b); err != nil || back.String() != in {
			t.Errorf("text round trip %q: %v", in, err)
		}
	}
	tok := mustToken(t, " s1:0/2 , s0:0/1,s1:0/1 ")
	if tok.String() != "s0:0/1,s1:0/2" {
		t.Errorf("normalized %q", tok.String())
	}
	if tok.LSN("s1") != 2 || tok.LSN("nope") != 0 {
		t.Error("LSN lookup")
	}
	m := tok.Merge(mustToken(t, "s0:0/9,s2:0/1"))
	if m.String() != "s0:0/9,s1:0/2,s2:0/1" || tok.String() != "s0:0/1,s1:0/2" {
		t.Errorf("merge %q (receiver %q)", m, tok)
	}
	if got := tok.With("s0", replica.LSN(0)); got.String() != tok.String() {
		t.Error("With zero LSN changed the token")
	}
	for _, bad := range []string{"s0", "s0:", ":0/1", "s0:zz/1", "s0:0/1,", "s 0:0/1", "s0:0/1,,s1:0/2", "s0:1"} {
		_, err := ParseCausalToken(bad)
		if !errors.Is(err, ErrBadCausalToken) || sqlState(err) != "22023" {
			t.Errorf("ParseCausalToken(%q) = %v", bad, err)
		}
	}
}

func TestTopologySwapIsSeen(t *testing.T) {
	src := NewStaticTopology(testTopology(t))
	r, err := New(Config{Topology: src})
	if err != nil {
		t.Fatal(err)
	}
	s := r.NewSession()
	d := route(t, r, s, "SELECT * FROM users WHERE id = 5")
	if d.TopologyVersion != 7 {
		t.Fatalf("version %d", d.TopologyVersion)
	}
	one, err := shard.NewTopology(shard.TopologySpec{Version: 8, Shards: []shard.ShardSpec{{Name: "only"}},
		Tables: []shard.TableSpec{{Name: "users", Columns: []string{"id"}, Types: []shard.KeyType{shard.KeyInt}}}})
	if err != nil {
		t.Fatal(err)
	}
	src.Store(one)
	d = route(t, r, s, "SELECT * FROM users WHERE id = 5")
	if d.TopologyVersion != 8 || d.Shards[0].Name != "only" {
		t.Fatalf("after swap: %+v", d)
	}
}

func TestErrorsAndSentinels(t *testing.T) {
	r := newTestRouter(t)
	s := r.NewSession()
	err := routeErr(t, r, s, "DELETE FROM users")
	if !errors.Is(err, ErrShardKeyRequired) || !errors.Is(err, shard.ErrUnknownShardKey) || sqlState(err) != "0A000" {
		t.Fatalf("%v", err)
	}
	err = routeErr(t, r, s, "SELECT DISTINCT name FROM users")
	if sqlState(err) != "0A000" {
		t.Fatalf("%v", err)
	}
	err = routeErr(t, r, s, "UPDATE users SET id = 3 WHERE id = 1")
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("%v", err)
	}
	st, err := Classify("SELECT 1\x00; DROP TABLE users")
	if !errors.Is(err, ErrInvalidSQL) || st == nil || !st.MustPrimary {
		t.Fatalf("NUL: %v %+v", err, st)
	}
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without topology")
	}
}

func TestFunctionCacheInvalidation(t *testing.T) {
	cat := testCatalog{"f1": VolatilityImmutable}
	r, err := New(Config{Topology: NewStaticTopology(testTopology(t)), Functions: cat})
	if err != nil {
		t.Fatal(err)
	}
	s := r.NewSession()
	if d := route(t, r, s, "SELECT f1()"); d.Target != TargetReplica || !d.Cacheable {
		t.Fatalf("%+v", d)
	}
	cat["f1"] = VolatilityVolatile
	if d := route(t, r, s, "SELECT f1()"); d.Target != TargetReplica {
		t.Fatalf("cached volatility should still be used: %+v", d)
	}
	route(t, r, s, "ALTER FUNCTION f1() VOLATILE")
	if d := route(t, r, s, "SELECT f1()"); d.Target != TargetPrimary {
		t.Fatalf("after DDL the catalog must be asked again: %+v", d)
	}
}

func TestSessionListen(t *testing.T) {
	r := newTestRouter(t)
	listening := func(s *Session, want ...string) {
		t.Helper()
		if got := s.Listening(); !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Fatalf("Listening() = %q, want %q", got, want)
		}
	}
	if st := mustClassify(t, `LISTEN Jobs`); st.Listen == nil || *st.Listen != (ListenInfo{ListenAdd, "jobs"}) {
		t.Fatalf("LISTEN Jobs: %+v", st.Listen)
	}
	if st := mustClassify(t, `UNLISTEN "Mixed"`); st.Listen == nil || *st.Listen != (ListenInfo{ListenRemove, "Mixed"}) {
		t.Fatalf(`UNLISTEN "Mixed": %+v`, st.Listen)
	}
	if st := mustClassify(t, `UNLISTEN *`); st.Listen == nil || st.Listen.Op != ListenRemoveAll || st.Listen.Tag() != "UNLISTEN" {
		t.Fatalf("UNLISTEN *: %+v", st.Listen)
	}

	s := r.NewSession()
	if err := routeErr(t, r, s, "LISTEN a; SELECT 1"); sqlState(err) != "0A000" || !errors.Is(err, ErrUnsupported) {
		t.Fatalf("LISTEN in a multi-statement string: %v", err)
	}

	// Outside a transaction: applied on Observe, dropped on ObserveError.
	v := s.ListenVersion()
	d := route(t, r, s, "LISTEN a")
	if d.Action != ActionLocal || d.Tag != "LISTEN" {
		t.Fatalf("LISTEN a: %+v", d)
	}
	listening(s)
	s.Observe('I')
	listening(s, "a")
	if s.ListenVersion() == v {
		t.Fatal("ListenVersion unchanged by LISTEN")
	}
	route(t, r, s, "LISTEN b")
	s.ObserveError()
	s.Observe('I')
	listening(s, "a")

	// Inside a deferred transaction: on COMMIT only.
	route(t, r, s, "BEGIN")
	route(t, r, s, "LISTEN b")
	s.Observe('T')
	listening(s, "a")
	route(t, r, s, "ROLLBACK")
	s.Observe('I')
	listening(s, "a")
	route(t, r, s, "BEGIN")
	route(t, r, s, "LISTEN b")
	route(t, r, s, "COMMIT")
	s.Observe('I')
	listening(s, "a", "b")

	// Inside a transaction on a backend: on its COMMIT, not its ROLLBACK.
	route(t, r, s, "BEGIN")
	route(t, r, s, "SELECT * FROM users WHERE id = 5")
	s.Observe('T')
	route(t, r, s, "UNLISTEN a")
	route(t, r, s, "ROLLBACK")
	s.Observe('I')
	listening(s, "a", "b")
	route(t, r, s, "BEGIN")
	route(t, r, s, "SELECT * FROM users WHERE id = 5")
	s.Observe('T')
	route(t, r, s, "UNLISTEN a")
	route(t, r, s, "LISTEN c")
	route(t, r, s, "COMMIT")
	s.Observe('I')
	listening(s, "b", "c")

	// In a failed transaction the statement goes to the backend (which
	// answers 25P02).
	route(t, r, s, "BEGIN")
	route(t, r, s, "SELECT * FROM users WHERE id = 5")
	s.Observe('E')
	if d := route(t, r, s, "LISTEN d"); d.Action != ActionForward || !d.Pinned {
		t.Fatalf("LISTEN in a failed transaction: %+v", d)
	}
	route(t, r, s, "ROLLBACK")
	s.Observe('I')
	listening(s, "b", "c")

	// DISCARD ALL and UNLISTEN * forget every channel.
	route(t, r, s, "DISCARD ALL")
	s.Observe('I')
	listening(s)
	route(t, r, s, "LISTEN e")
	s.Observe('I')
	route(t, r, s, "UNLISTEN *")
	s.Observe('I')
	listening(s)
}

func TestCopyInSplit(t *testing.T) {
	r := newTestRouter(t)
	st := mustClassify(t, `COPY public.users (id, "Name") FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER ';', NULL 'n/a')`)
	ci := st.CopyIn
	if ci == nil || ci.Table.QualifiedName() != "public.users" || !slices.Equal(ci.Columns, []string{"id", "Name"}) ||
		ci.Format != "csv" || !ci.Header || ci.Delimiter != ';' || ci.Quote != '"' || ci.Escape != '"' || ci.Null != "n/a" {
		t.Fatalf("CopyIn = %+v", ci)
	}
	if ci := mustClassify(t, `COPY users FROM STDIN`).CopyIn; ci == nil || ci.Columns != nil || ci.Format != "text" || ci.Delimiter != '\t' || ci.Null != `\N` || ci.Header {
		t.Fatalf("text defaults: %+v", ci)
	}
	// Texts differing only in option literals keep their own options.
	for _, d := range []string{";", "|", ";"} {
		if ci := mustClassify(t, "COPY users FROM STDIN WITH (FORMAT csv, DELIMITER '"+d+"')").CopyIn; ci == nil || ci.Delimiter != d[0] {
			t.Fatalf("DELIMITER %q: %+v", d, ci)
		}
	}
	if ci := mustClassify(t, `COPY users FROM STDIN (FORMAT binary)`).CopyIn; ci == nil || ci.Format != "binary" {
		t.Fatalf("binary: %+v", ci)
	}
	if st := mustClassify(t, `SELECT pg_try_advisory_lock(42)`); !st.SessionLock {
		t.Fatal("pg_try_advisory_lock: no SessionLock")
	}
	if st := mustClassify(t, `SELECT pg_advisory_xact_lock(42)`); st.SessionLock {
		t.Fatal("pg_advisory_xact_lock: SessionLock")
	}
	if ci := mustClassify(t, `COPY users FROM '/tmp/x'`).CopyIn; ci != nil {
		t.Fatalf("COPY FROM a file: %+v", ci)
	}
	s := r.NewSession()
	d := route(t, r, s, `COPY users (id) FROM STDIN`)
	if d.CopySplit == nil || len(d.Shards) != 2 || d.Target != TargetPrimary || d.CopySplit.Table.Name != "users" || d.CopySplit.Topology == nil {
		t.Fatalf("COPY into a sharded table: %+v", d)
	}
	if d := route(t, r, s, `COPY users TO STDOUT (FORMAT binary)`); !d.CopyConcat || len(d.Shards) != 2 || d.Statement.CopyOut == nil || d.Statement.CopyOut.Format != "binary" {
		t.Fatalf("COPY out of a sharded table: %+v", d)
	}
	if d := route(t, r, s, `COPY (SELECT * FROM users WHERE id = 5) TO STDOUT`); d.CopyConcat || len(d.Shards) != 1 {
		t.Fatalf("COPY of a keyed query: %+v", d)
	}
	for _, q := range []string{
		`COPY (SELECT id, name FROM users WHERE name <> 'x') TO STDOUT (FORMAT csv, HEADER)`,
		`COPY (SELECT id FROM users UNION ALL SELECT id FROM users) TO STDOUT`,
	} {
		d := route(t, r, s, q)
		if !d.CopyConcat || len(d.Shards) != 2 || d.Statement.CopyOut == nil || !d.Statement.CopyOut.Query {
			t.Fatalf("%s: %+v", q, d)
		}
	}
	if ci := mustClassify(t, `COPY (SELECT 1) TO STDOUT (FORMAT csv, HEADER)`).CopyOut; ci == nil || !ci.Query || ci.Format != "csv" || !ci.Header {
		t.Fatalf("COPY (SELECT 1): %+v", ci)
	}
	for _, q := range []string{`COPY (SELECT 1) TO '/tmp/x'`, `COPY (DELETE FROM users RETURNING id) TO STDOUT`} {
		if ci := mustClassify(t, q).CopyOut; ci != nil {
			t.Fatalf("%s: CopyOut %+v", q, ci)
		}
	}
	for q, want := range map[string]*Error{
		`COPY (SELECT id FROM users ORDER BY id) TO STDOUT`:    ErrUnsupported,
		`COPY (SELECT id FROM users LIMIT 10) TO STDOUT`:       ErrUnsupported,
		`COPY (SELECT count(*) FROM users) TO STDOUT`:          ErrUnsupported,
		`COPY (SELECT DISTINCT name FROM users) TO STDOUT`:     ErrShardKeyRequired,
		`COPY (SELECT id FROM users UNION SELECT 1) TO STDOUT`: ErrShardKeyRequired,
		`COPY (DELETE FROM users RETURNING id) TO STDOUT`:      ErrShardKeyRequired,
	} {
		if err := routeErr(t, r, s, q); !errors.Is(err, want) {
			t.Fatalf("%s: %v, want %v", q, err, want)
		}
	}
	if d := route(t, r, s, `COPY settings FROM STDIN`); d.CopySplit != nil || len(d.Shards) != 1 {
		t.Fatalf("COPY into an unsharded table: %+v", d)
	}
	route(t, r, s, "BEGIN")
	if err := routeErr(t, r, s, `COPY users FROM STDIN`); !errors.Is(err, ErrCrossShardTransaction) {
		t.Fatalf("COPY into a sharded table inside a transaction: %v", err)
	}
}

// TestReadKey: replica reads carry a key of their text and parameter
// values (replica.PickRequest.HashKey); other decisions none.
func TestReadKey(t *testing.T) {
	r := newTestRouter(t)
	s := r.NewSession()
	key := func(sql string, params ...Param) uint64 {
		t.Helper()
		return route(t, r, s, sql, params...).ReadKey
	}
	a := key("SELECT * FROM users WHERE id = 1")
	if a == 0 || a != key("SELECT * FROM users WHERE id = 1") {
		t.Fatalf("same read: keys %x and %x", a, key("SELECT * FROM users WHERE id = 1"))
	}
	if b := key("SELECT * FROM users WHERE id = 2"); b == a {
		t.Fatalf("other literal, same key %x", b)
	}
	const q = "SELECT * FROM users WHERE id = 7 AND name = $1 AND email = $2"
	p := func(vals ...[]byte) []Param {
		out := make([]Param, len(vals))
		for i, v := range vals {
			out[i] = Param{Value: v}
		}
		return out
	}
	k1 := key(q, p([]byte("x"), []byte("ab"))...)
	if k1 != key(q, p([]byte("x"), []byte("ab"))...) {
		t.Fatal("same parameters, different keys")
	}
	seen := map[uint64][]Param{}
	for _, ps := range [][]Param{
		p([]byte("x"), []byte("ab")),
		p([]byte("xa"), []byte("b")), // values do not run into each other
		p([]byte("x"), []byte("")),
		p([]byte("x"), nil), // NULL differs from ''
		{{Value: []byte("x")}, {Value: []byte("ab"), Format: 1}},
	} {
		k := key(q, ps...)
		if prev, dup := seen[k]; dup {
			t.Fatalf("parameters %v and %v: same key %x", prev, ps, k)
		}
		seen[k] = ps
	}
	if d := route(t, r, s, "UPDATE users SET name = 'x' WHERE id = 1"); d.Target != TargetPrimary || d.ReadKey != 0 {
		t.Fatalf("write: %+v", d)
	}
}
