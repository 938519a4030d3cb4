package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/jackc/pgx/v5/pgconn"
)

// runMulti runs a decision spanning several shards: reads run on every
// shard at once and are merged by the router's plan; everything else
// (DDL, TRUNCATE, ... broadcast by the router) runs on each shard's
// primary in shard order.
func (cn *conn) runMulti(ctx context.Context, d router.Decision, st *router.Statement, args *encodedArgs, wantRows bool, o callOptions) (any, error) {
	if cn.pin != nil {
		release(cn.pin, nil)
		cn.pin = nil
	}
	sqlText := d.SQL
	if sqlText == "" {
		sqlText = st.SQL
	}
	if st.Kind == router.KindRead && !writes(st) {
		return cn.scatterRead(ctx, d, sqlText, args, wantRows)
	}
	return cn.broadcast(ctx, d, st, sqlText, args, wantRows, o)
}

func (cn *conn) scatterRead(ctx context.Context, d router.Decision, sqlText string, args *encodedArgs, wantRows bool) (any, error) {
	key := cn.sessionKey()
	results := make([]*pgconn.Result, len(d.Shards))
	errs := make([]error, len(d.Shards))
	var wg sync.WaitGroup
	for i, t := range d.Shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = cn.readShard(ctx, t, d, sqlText, args, key)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		cn.sess.ObserveError()
		cn.sess.Observe('I')
		return nil, err
	}
	cn.sess.Observe('I')
	parts := make([]shardResult, len(results))
	var affected int64
	for i, res := range results {
		var br bufRows
		if res.FieldDescriptions != nil {
			if err := br.fromResult(cn.tm, res); err != nil {
				return nil, err
			}
			if br.cols == nil {
				br.cols = []string{}
			}
		}
		parts[i] = shardResult{columns: br.cols, oids: br.oids, rows: br.rows}
		affected += res.CommandTag.RowsAffected()
	}
	merged := shardResult{}
	if d.Merge != nil {
		var err error
		if merged, err = mergeResults(d.Merge, parts); err != nil {
			return nil, err
		}
	} else {
		merged, _ = mergeResults(&router.MergePlan{Limit: -1}, parts)
	}
	if !wantRows {
		return result{tag: pgconn.NewCommandTag(fmt.Sprintf("SELECT %d", affected))}, nil
	}
	return &bufRows{tm: cn.tm, cols: merged.columns, oids: merged.oids, rows: merged.rows}, nil
}

// readShard runs one shard's part of a multi-shard read and returns its
// whole result (values copied). It may run concurrently with other
// shards' parts: it touches no conn state but the read-only sets.
func (cn *conn) readShard(ctx context.Context, t router.ShardTarget, d router.Decision, sqlText string, args *encodedArgs, key string) (*pgconn.Result, error) {
	var err error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		var b *backend
		b, err = cn.acquire(ctx, t.ID, d.Target == router.TargetPrimary, d.Pick(t), key)
		if err != nil {
			if retryable(err, true) && ctx.Err() == nil {
				continue
			}
			return nil, err
		}
		rr, key, perr := extended(ctx, b.pc, sqlText, args)
		if perr != nil {
			release(b, perr)
			err = perr
			if !retryable(err, true) || ctx.Err() != nil {
				break
			}
			continue
		}
		res := readResult(rr)
		forgetStatement(b.pc, key, res.Err)
		err = res.Err
		release(b, err)
		if err == nil {
			return res, nil
		}
		if !retryable(err, true) || ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("dbproxy driver: shard %s: %w", t.Name, err)
}

// broadcast runs a statement on every shard of d in order, stopping at
// the first error. Committed writes advance the causal positions.
func (cn *conn) broadcast(ctx context.Context, d router.Decision, st *router.Statement, sqlText string, args *encodedArgs, wantRows bool, o callOptions) (any, error) {
	key := cn.sessionKey()
	var affected int64
	var last pgconn.CommandTag
	for _, t := range d.Shards {
		b, err := cn.acquire(ctx, t.ID, true, replica.PickRequest{}, key)
		if err != nil {
			cn.sess.ObserveError()
			cn.sess.Observe('I')
			return nil, fmt.Errorf("dbproxy driver: shard %s: %w", t.Name, err)
		}
		tag, err := cn.exec(ctx, b, st, sqlText, args)
		if err == nil && writes(st) && b.pc.TxStatus() == 'I' {
			lsn, lerr := b.lease.CurrentLSN(ctx)
			if lerr == nil {
				cn.recordCommit(t.ID, lsn, o.tracker)
			}
			cn.invalidate(writtenTables(nil, st))
			err = lerr
		}
		if err == nil && b.pc.TxStatus() != 'I' {
			err = fmt.Errorf("dbproxy driver: a statement sent to several shards left a transaction open on shard %s", t.Name)
			b.lease.Discard(err)
		} else {
			release(b, err)
		}
		if err != nil {
			cn.sess.ObserveError()
			cn.sess.Observe('I')
			return nil, fmt.Errorf("dbproxy driver: shard %s: %w", t.Name, err)
		}
		affected += tag.RowsAffected()
		last = tag
	}
	cn.sess.Observe('I')
	if wantRows {
		return &bufRows{tm: cn.tm}, nil
	}
	_ = last
	return result{tag: pgconn.NewCommandTag(fmt.Sprintf("%s %d", commandOf(last), affected))}, nil
}

func commandOf(tag pgconn.CommandTag) string {
	s := tag.String()
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == ' ' {
			if _, err := fmt.Sscan(s[i+1:], new(int64)); err == nil {
				return s[:i]
			}
			break
		}
	}
	return s
}

// readResult reads a whole result like ResultReader.Read, but keeps the
// field descriptions of a result set without rows too.
func readResult(rr *pgconn.ResultReader) *pgconn.Result {
	res := &pgconn.Result{}
	if fds := rr.FieldDescriptions(); fds != nil {
		res.FieldDescriptions = append(make([]pgconn.FieldDescription, 0, len(fds)), fds...)
	}
	for rr.NextRow() {
		values := rr.Values()
		row := make([][]byte, len(values))
		for i, v := range values {
			if v != nil {
				row[i] = append(make([]byte, 0, len(v)), v...)
			}
		}
		res.Rows = append(res.Rows, row)
	}
	res.CommandTag, res.Err = rr.Close()
	return res
}
