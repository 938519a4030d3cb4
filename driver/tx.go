package driver

import (
	"context"
	"database/sql/driver"
	"errors"
)

// ErrTxRolledBack is returned by Commit when PostgreSQL rolled the
// transaction back instead (a statement of it had failed).
var ErrTxRolledBack = errors.New("dbproxy driver: commit unsuccessful: the transaction had failed and was rolled back")

// tx is a database/sql transaction on one conn.
type tx struct {
	cn     *conn
	ctx    context.Context // BeginTx's context without its cancellation (values: tracker, token)
	opts   callOptions
	ending bool
}

var _ driver.Tx = (*tx)(nil)

// Commit sends COMMIT through the router (to the pinned backend; nothing
// is sent if the transaction never ran a statement). A committed write
// transaction advances the session's causal position and the trackers of
// BeginTx's context and of the transaction's statements.
func (t *tx) Commit() error { return t.end("COMMIT") }

// Rollback sends ROLLBACK the same way.
func (t *tx) Rollback() error { return t.end("ROLLBACK") }

func (t *tx) end(verb string) error {
	cn := t.cn
	if cn.tx != t {
		return errors.New("dbproxy driver: transaction already ended")
	}
	t.ending = true
	defer func() { cn.tx, cn.txBroken = nil, nil }()
	if cn.txBroken != nil {
		if cn.pin != nil {
			cn.pin.lease.Discard(cn.txBroken)
			cn.pin = nil
		}
		if cn.sess.InTransaction() {
			cn.sess.Observe('I')
		}
		if verb == "ROLLBACK" {
			return nil
		}
		return cn.txBroken
	}
	if err := cn.usable(); err != nil {
		return err
	}
	res, err := cn.run(t.ctx, verb, nil, false)
	if err != nil {
		return err
	}
	if verb == "COMMIT" {
		if r, ok := res.(result); ok && r.tag.String() == "ROLLBACK" {
			return ErrTxRolledBack
		}
	}
	return nil
}
