package driver

import (
	"context"
	"database/sql/driver"
	"errors"

	"github.com/dbproxy/dbproxy/router"
)

// stmt is a prepared statement: the SQL text and its classification. It
// is routed anew at every execution (never pinned to the node it was
// prepared on), so it keeps working across failovers, lag and balancing.
type stmt struct {
	cn *conn
	st *router.Statement
}

var (
	_ driver.Stmt              = (*stmt)(nil)
	_ driver.StmtExecContext   = (*stmt)(nil)
	_ driver.StmtQueryContext  = (*stmt)(nil)
	_ driver.NamedValueChecker = (*stmt)(nil)
)

// Close implements driver.Stmt; nothing is held on any backend.
func (s *stmt) Close() error { return nil }

// NumInput returns -1: database/sql does not check the argument count;
// PostgreSQL does.
func (s *stmt) NumInput() int { return -1 }

// CheckNamedValue implements driver.NamedValueChecker.
func (s *stmt) CheckNamedValue(nv *driver.NamedValue) error { return s.cn.CheckNamedValue(nv) }

// Exec implements driver.Stmt (deprecated path).
func (s *stmt) Exec(args []driver.Value) (driver.Result, error) {
	return nil, errors.New("dbproxy driver: Stmt.Exec is deprecated; database/sql uses ExecContext")
}

// Query implements driver.Stmt (deprecated path).
func (s *stmt) Query(args []driver.Value) (driver.Rows, error) {
	return nil, errors.New("dbproxy driver: Stmt.Query is deprecated; database/sql uses QueryContext")
}

// ExecContext routes and runs the statement.
func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	res, err := s.cn.execStatement(ctx, s.st, args, false)
	if err != nil {
		return nil, err
	}
	return res.(driver.Result), nil
}

// QueryContext routes and runs the statement.
func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	res, err := s.cn.execStatement(ctx, s.st, args, true)
	if err != nil {
		return nil, err
	}
	return res.(driver.Rows), nil
}
