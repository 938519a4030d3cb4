package proxy

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/dbproxy/dbproxy/shard"
	"github.com/jackc/pgx/v5/pgproto3"
)

// target is one backend choice: a shard, and its primary or a standby
// picked with the given freshness requirements.
type target struct {
	shard   shard.ID
	primary bool
	pick    replica.PickRequest
	name    string // the shard's name (cache keys)
}

// plan is the proxy's reading of a router.Decision.
type plan struct {
	local    bool              // answer with CommandComplete(tag), send nothing
	tag      string            //
	pinned   bool              // run on the transaction's backend
	split    *router.CopySplit // COPY FROM STDIN whose rows go to their keys' shards (copysplit.go)
	concat   bool              // COPY ... TO STDOUT of several shards, one after the other (copysplit.go)
	targets  []target
	preamble []string // run first on a newly leased backend (deferred BEGIN, ...)
	sql      string   // multi-shard rewrite ("" = as received)
	merge    *router.MergePlan
	stmt     *router.Statement

	cacheable bool              // Decision.Cacheable (see cache.go)
	eff       *router.Statement // Decision.Statement: the statement routed (for EXECUTE, the prepared one)
}

func (s *Server) newSession(ctx context.Context, c *clientConn) (*session, error) {
	sess := &session{rs: s.router.NewSession(), stmts: map[string]*preparedStmt{}}
	if d := s.live.Load().maxStaleness; d > 0 {
		if err := s.routeSet(ctx, sess, "dbproxy.max_staleness", d.String()); err != nil {
			return nil, err
		}
	}
	// Startup parameters are session settings like any SET, replayed on
	// every backend the session uses.
	names := make([]string, 0, len(c.startupParams))
	for k := range c.startupParams {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v := c.startupParams[k]
		if k == "options" {
			opts, err := parseOptions(v)
			if err != nil {
				return nil, err
			}
			for _, kv := range opts {
				if err := s.routeSet(ctx, sess, kv[0], kv[1]); err != nil {
					return nil, err
				}
			}
			continue
		}
		if err := s.routeSet(ctx, sess, k, v); err != nil {
			return nil, err
		}
	}
	return sess, nil
}

// routeSet records "SET name = 'value'" in the router session as if the
// client had run it successfully.
func (s *Server) routeSet(ctx context.Context, sess *session, name, value string) error {
	sql := "SET " + quoteIdent(strings.ToLower(name)) + " = " + quoteLiteral(value)
	st, err := router.Classify(sql)
	if err != nil {
		return newClientError(codeProtocolViolation, fmt.Sprintf("invalid startup parameter %q: %v", name, err))
	}
	if st.Kind != router.KindSession || len(st.Sets) != 1 {
		return newClientError(codeProtocolViolation, fmt.Sprintf("invalid startup parameter %q", name))
	}
	if _, err := s.router.Route(ctx, sess.rs, st, nil); err != nil {
		return err
	}
	if !st.Sets[0].Intercepted() {
		sess.rs.Observe('I')
	}
	return nil
}

// parseOptions parses the startup "options" parameter: "-c name=value"
// and "--name=value" items separated by spaces (backslash escapes a space).
func parseOptions(s string) ([][2]string, error) {
	var words []string
	var cur strings.Builder
	esc := false
	for _, r := range s {
		switch {
		case esc:
			cur.WriteRune(r)
			esc = false
		case r == '\\':
			esc = true
		case r == ' ' || r == '\t':
			if cur.Len() > 0 {
				words = append(words, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		words = append(words, cur.String())
	}
	var out [][2]string
	for i := 0; i < len(words); i++ {
		w := words[i]
		var kv string
		switch {
		case w == "-c" && i+1 < len(words):
			i++
			kv = words[i]
		case strings.HasPrefix(w, "-c"):
			kv = w[2:]
		case strings.HasPrefix(w, "--"):
			kv = w[2:]
		default:
			return nil, newClientError(codeProtocolViolation, fmt.Sprintf("invalid command-line argument for server process: %s", w))
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, newClientError(codeProtocolViolation, fmt.Sprintf("-c %s requires a value", kv))
		}
		out = append(out, [2]string{strings.ReplaceAll(k, "-", "_"), v})
	}
	return out, nil
}

// classify is the router's classification of sql (cached by text).
func (c *clientConn) classify(sql string) (*router.Statement, error) {
	return router.Classify(sql)
}

// decide asks the router where a request goes. bind and ps are set for
// extended-protocol requests. It is called with no request in flight.
func (c *clientConn) decide(ctx context.Context, st *router.Statement, bind *pgproto3.Bind, ps *preparedStmt) (plan, error) {
	if c.srv.cfg.PoolMode == PoolTransaction {
		switch {
		case st.SessionLock:
			return plan{}, errSessionLock
		case st.TempKept:
			return plan{}, errTempTable
		case st.HoldCursor:
			return plan{}, errHoldCursor
		}
	}
	var params []router.Param
	if bind != nil {
		params = make([]router.Param, len(bind.Parameters))
		for i, v := range bind.Parameters {
			p := router.Param{Value: v}
			switch {
			case len(bind.ParameterFormatCodes) == 1:
				p.Format = bind.ParameterFormatCodes[0]
			case i < len(bind.ParameterFormatCodes):
				p.Format = bind.ParameterFormatCodes[i]
			}
			if ps != nil && i < len(ps.paramOIDs) {
				p.OID = ps.paramOIDs[i]
			}
			params[i] = p
		}
	}
	c.mu.Lock()
	d, err := c.srv.router.Route(ctx, c.sess.rs, st, params)
	c.mu.Unlock()
	if err != nil {
		return plan{}, err
	}
	return c.srv.toPlan(d, st), nil
}

func (s *Server) toPlan(d router.Decision, st *router.Statement) plan {
	p := plan{stmt: st, tag: d.Tag, pinned: d.Pinned, preamble: d.Preamble, sql: d.SQL, merge: d.Merge, cacheable: d.Cacheable, eff: d.Statement, split: d.CopySplit, concat: d.CopyConcat}
	if d.Action == router.ActionLocal {
		p.local = true
		return p
	}
	for _, sh := range d.Shards {
		t := target{shard: sh.ID, primary: d.Target == router.TargetPrimary, name: sh.Name}
		if !t.primary {
			t.pick = d.Pick(sh)
		}
		p.targets = append(p.targets, t)
	}
	return p
}

// FunctionCatalog returns the router's catalog of user-defined function
// volatility (router.PgProcCatalog) read on set's primary, for the Router
// a Server routes with: reads calling immutable or stable user functions
// may then run on standbys and be cached. The backends it uses stay fit
// for the proxy's pool. Safe for concurrent use.
func FunctionCatalog(set *replica.Set) router.FunctionCatalog {
	return router.PgProcCatalog(func(ctx context.Context, sql string, params ...[]byte) ([][][]byte, error) {
		l, err := set.Primary().Acquire(ctx)
		if err != nil {
			return nil, err
		}
		conn := l.Conn()
		forgetUnnamed(conn)
		res := conn.ExecParams(ctx, sql, params, nil, nil, nil).Read()
		finishLease(l, res.Err)
		return res.Rows, res.Err
	})
}
