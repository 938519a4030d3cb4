package proxy

import (
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Client write buffering.
//
// Messages for the client are encoded into the protoBox's out buffer
// (queue) and written by flushClientLocked, at a flush point or once
// clientFlushBytes are queued. pgproto3.Backend's own Send/Flush is not
// used for this: its Flush replaces a buffer that held more than 1 KiB
// with a new 1 KiB one, so every 32 KiB piece of a long result regrew
// its buffer from 1 KiB (a dozen allocations and copies per piece).
//
// A box keeps a small buffer of its own for the common short reply. When
// a reply grows past smallOutBytes, the queued bytes move to a large
// buffer from bigOutPool, which the reply keeps for all its pieces and
// gives back at its end (a forced flush), so a long result runs in one
// buffer and an idle box holds at most a small one.
//
// With a protocol trace configured, messages go through the Backend's
// Send and Flush instead, so that its tracer sees them.

const (
	// smallOutBytes is the size past which a reply moves to a pooled
	// large buffer; a box's own buffer larger than twice this after a
	// reply's end (a single large message) is dropped.
	smallOutBytes = 4 << 10
	// bigOutBytes is the capacity of the pooled buffers: room for
	// clientFlushBytes plus the message that crosses it.
	bigOutBytes = 2 * clientFlushBytes
	// maxPooledOut bounds the capacity of a buffer given back to
	// bigOutPool (one that grew for a single large message is dropped).
	maxPooledOut = 1 << 20
)

var bigOutPool = sync.Pool{New: func() any {
	b := make([]byte, 0, bigOutBytes)
	return &b
}}

// queue encodes msg for the client; it is written at the next flush. A
// message that cannot be encoded is dropped and its error returned by
// the next flush, as pgproto3.Backend does. Called with c.wmu held.
func (c *clientConn) queue(msg pgproto3.BackendMessage) {
	b := c.box
	if b.traced {
		c.fe.Send(msg)
		c.unflushed += approxSize(msg)
		return
	}
	if b.big == nil && len(b.out) >= smallOutBytes {
		b.growOut()
	}
	out, err := msg.Encode(b.out)
	if err != nil {
		if b.outErr == nil {
			b.outErr = err
		}
		return
	}
	b.out = out
	c.unflushed = len(out)
}

// flushClientLocked writes what is queued for the client when force is
// set or clientFlushBytes are queued. force marks the end of a reply:
// a large buffer goes back to its pool. Called with c.wmu held.
func (c *clientConn) flushClientLocked(force bool) error {
	if !force && c.unflushed < clientFlushBytes {
		return nil
	}
	c.unflushed = 0
	if c.box.traced {
		return c.fe.Flush()
	}
	return c.box.flushOut(force)
}

// growOut moves the queued bytes to a buffer from bigOutPool.
func (b *protoBox) growOut() {
	bp := bigOutPool.Get().(*[]byte)
	b.small = b.out[:0]
	b.out = append((*bp)[:0], b.out...)
	b.big = bp
}

// flushOut writes the queued bytes to the box's connection. With end,
// a large buffer goes back to bigOutPool and an oversized small one is
// dropped.
func (b *protoBox) flushOut(end bool) error {
	var err error
	if b.outErr != nil {
		err, b.outErr = b.outErr, nil
	}
	if len(b.out) > 0 {
		b.writes++
		if _, werr := b.nc.Write(b.out); err == nil {
			err = werr
		}
	}
	b.out = b.out[:0]
	if !end {
		return err
	}
	if b.big != nil {
		if cap(b.out) <= maxPooledOut {
			*b.big = b.out
			bigOutPool.Put(b.big)
		}
		b.out, b.small, b.big = b.small, nil, nil
	}
	if cap(b.out) > 2*smallOutBytes {
		b.out = nil
	}
	return err
}
