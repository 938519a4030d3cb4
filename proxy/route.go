package proxy

import (
	"context"
	"fmt"
	"sort"
	"strconv"
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
}

// plan is how to run one request: on one target, or on several with
// their rows merged.
type plan struct {
	targets []target
}

func (s *Server) newSession(c *clientConn) (*session, error) {
	sess := &session{
		settings:     map[string]string{},
		stmts:        map[string]*preparedStmt{},
		maxStaleness: s.live.Load().maxStaleness,
		causal:       map[shard.ID]replica.LSN{},
	}
	// Startup parameters are session settings like any SET.
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
				sess.applySet(router.SetInfo{Op: router.SetValue, Name: strings.ToLower(kv[0]), Value: kv[1], SQL: "SET " + quoteIdent(strings.ToLower(kv[0])) + " = " + quoteLiteral(kv[1])})
			}
			continue
		}
		sess.applySet(router.SetInfo{Op: router.SetValue, Name: strings.ToLower(k), Value: v, SQL: "SET " + quoteIdent(strings.ToLower(k)) + " = " + quoteLiteral(v)})
	}
	return sess, nil
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

func (s *Server) defaultShard() shard.ID {
	first := true
	var id shard.ID
	for k := range s.shards {
		if first || k < id {
			id, first = k, false
		}
	}
	return id
}

// classify is the router's classification of sql.
func (c *clientConn) classify(sql string) (*router.Statement, error) {
	return &router.Statement{SQL: sql, Kind: router.KindUnknown, MustPrimary: true}, nil
}

// decide asks the router where a request goes.
func (c *clientConn) decide(ctx context.Context, st *router.Statement, bind *pgproto3.Bind, ps *preparedStmt) (plan, error) {
	return plan{targets: []target{{shard: c.srv.defaultShard(), primary: true}}}, nil
}

// checkInTransaction verifies that a statement inside an open
// transaction belongs on the transaction's backend.
func (c *clientConn) checkInTransaction(att *attachment, st *router.Statement, bind *pgproto3.Bind, ps *preparedStmt) error {
	return nil
}

// formatToken renders per-shard commit positions as a causal token.
func formatToken(m map[shard.ID]replica.LSN) string {
	ids := make([]int, 0, len(m))
	for id := range m {
		ids = append(ids, int(id))
	}
	sort.Ints(ids)
	var b strings.Builder
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("s" + strconv.Itoa(id) + ":" + m[shard.ID(id)].String())
	}
	return b.String()
}
