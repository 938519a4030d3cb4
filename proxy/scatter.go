package proxy

import (
	"context"

	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgproto3"
)

// scatter runs a request on several shards and merges the rows.
func (c *clientConn) scatter(ctx context.Context, st *router.Statement, p plan, bind *pgproto3.Bind, ps *preparedStmt) stateFn {
	return c.localError(newClientError(codeFeatureNotSupported, "multi-shard statements are not supported yet"), bind != nil || ps != nil)
}
