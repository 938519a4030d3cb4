package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Deep idle.
//
// The client side's pgproto3.Backend keeps an 8 KiB read buffer (and up
// to 1 KiB of write buffer) for the life of the connection, more than
// the rest of an idle connection together. A connection that waits in
// the idle state (no backend attached) for longer than
// Server.deepIdleAfter gives its Backend back to the Server's pool (see
// protoBox) and waits for the client's next message with a 5-byte array;
// the first bytes to arrive make it take a Backend again, which reads
// them first.
//
// Giving a Backend away is only safe when its read buffer is empty. The
// Backend reads the client through its protoBox, which follows the
// protocol's framing of every byte it hands out (framing) and so knows
// whether they end exactly at a message boundary. The check is made only
// when Receive has just failed: Receive returns a message whenever one is
// complete in its buffer, so a failure means the buffer holds less than
// one message, the start of the next one. If the bytes handed out end at
// a boundary, that start is empty: the Backend holds nothing. (So no
// count of the messages received is needed.)
//
// The sweeper (one goroutine per Server, started by Serve, stopped by
// Close) looks sweepTicks times per deepIdleAfter. It marks a connection
// it finds in the idle state with the current tick (idleMark), clears
// the mark of one in any other state, and the reader clears it when it
// receives a message in stateIdle. A connection marked sweepTicks ticks
// ago or earlier is claimed: the sweeper sets a past read deadline on it,
// holding sweepMu from the claim until the deadline is set. Every client
// read after the startup phase ends in stateIdle or readFailed, so a
// claimed connection's reader sees the claim at its next read, clears the
// deadline (under sweepMu) and knows a timeout for the sweeper's and not
// a real one. Receive keeps a partly read message, so a client that was
// sending when the deadline struck just goes on being read. The reader
// may be elsewhere than in a read when claimed (in the idle state but
// waiting for a backend lease, or left in stateAttached's read after a
// pump gave the backend back): its next read then fails at once and goes
// on the same way.
//
// No write through a Backend happens while it is away: the connection
// has no backend attached and its last pump has ended, and any other
// write comes from the reader, which takes a Backend first (also for the
// FATAL of a shutdown that ends the wait). Notifications (notify.go) are
// written to the connection directly, under wmu, and need no Backend.
//
// Stack depth matters here: a goroutine's stack is halved by the garbage
// collector only while less than a quarter of it is in use, and a
// reader waiting in stateIdle's Receive is close to that line for 4 KiB
// of an 8 KiB stack. protoBox.Read is the one frame added to that path,
// and stateIdle keeps its own frame small to make room for it.

// defaultDeepIdleAfter is how long a client connection waits in the idle
// state before it gives its protocol Backend back.
const defaultDeepIdleAfter = time.Second

// freeAfterBurst is how many connections going deep idle make the
// sweeper return freed memory to the OS once they are all settled.
const freeAfterBurst = 256

// sweepTicks is how many times per deepIdleAfter the sweeper looks: a
// connection goes deep idle between deepIdleAfter and 1.25×deepIdleAfter
// after it fell idle.
const sweepTicks = 4

// idleMark values besides sweeper ticks (from 1) and 0 (unmarked).
const (
	idleClaimed = -1 // the sweeper set a past read deadline
	idleDeep    = -2 // no Backend: the sweeper leaves the connection alone
)

// Startup-phase request codes after which another startup-phase message
// follows on the same stream (the server answered 'N').
const (
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
)

// framing follows the message framing of a byte stream from a client:
// startup-phase messages (4-byte length including itself, 4-byte code) up
// to the StartupMessage, then typed messages (1-byte type, 4-byte length
// including itself).
type framing struct {
	typed     bool  // past the startup phase
	broken    bool  // an invalid length went by: the Backend fails, the framing is unknown
	hdrN      uint8 // bytes of the current header seen
	hdr       [8]byte
	remain    int    // body bytes of the current message not yet seen
	delivered uint64 // complete messages seen
}

// track advances the framing over the next bytes b of the stream.
func (f *framing) track(b []byte) {
	for len(b) > 0 && !f.broken {
		if f.remain > 0 {
			k := min(f.remain, len(b))
			f.remain -= k
			b = b[k:]
			if f.remain == 0 {
				f.delivered++
			}
			continue
		}
		hl := uint8(8)
		if f.typed {
			hl = 5
		}
		k := copy(f.hdr[f.hdrN:hl], b)
		f.hdrN += uint8(k)
		b = b[k:]
		if f.hdrN < hl {
			return
		}
		f.hdrN = 0
		if f.typed {
			n := int32(binary.BigEndian.Uint32(f.hdr[1:5]))
			if n < 4 {
				f.broken = true
				return
			}
			f.remain = int(n) - 4
		} else {
			n := int32(binary.BigEndian.Uint32(f.hdr[0:4]))
			if n < 8 {
				f.broken = true
				return
			}
			f.remain = int(n) - 8
			if code := binary.BigEndian.Uint32(f.hdr[4:8]); code != sslRequestCode && code != gssEncRequestCode {
				f.typed = true // a StartupMessage (or CancelRequest): typed messages follow
			}
		}
		if f.remain == 0 {
			f.delivered++
		}
	}
}

// atBoundary reports whether the bytes seen so far are exactly a sequence
// of complete messages, the last of them past the startup phase.
func (f *framing) atBoundary() bool {
	return f.typed && !f.broken && f.hdrN == 0 && f.remain == 0
}

// protoBox is the client side's protocol Backend with its reader and
// writer, able to serve one connection after another: it reads and writes
// through whichever connection holds it. A deep-idle connection gives its
// box back to the Server's pool, and the next connection that needs one
// (a new client, a deep-idle one waking up) takes it, so going deep idle
// makes no garbage and the buffers of idle clients serve active ones.
// Only a box whose Backend holds nothing is given back (see swept); one
// that may hold bytes (replaced by a TLS upgrade, or of a closed
// connection) is left to the garbage collector.
type protoBox struct {
	fe   *pgproto3.Backend
	r    io.Reader // read next: nc, or pend while it holds bytes
	nc   net.Conn  // the holder's connection
	f    framing   // of the bytes handed to fe
	pend pendReader

	// Client write buffering (out.go).
	out    []byte  // encoded messages not yet written
	outErr error   // the first encoding error since the last flush
	small  []byte  // the box's own buffer while out is a large one
	big    *[]byte // out's buffer from bigOutPool, nil if none
	traced bool    // messages go through fe, whose tracer sees them
	writes uint64  // writes of out to the connection (a reply not yet written may be taken back: retry.go)
}

func newProtoBox() *protoBox {
	b := &protoBox{}
	b.pend.box = b
	b.fe = pgproto3.NewBackend(b, b)
	return b
}

// Read reads for the Backend, following the framing of what it hands out.
func (b *protoBox) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.f.track(p[:n])
	return n, err
}

func (b *protoBox) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil // Flush of an empty buffer: no system call
	}
	return b.nc.Write(p)
}

// empty reports, right after the Backend's Receive failed, whether the
// Backend holds no bytes of the client's.
func (b *protoBox) empty() bool {
	return b.f.atBoundary() && b.pend.off == b.pend.n
}

// hold makes b read and write nc. With typed, the stream is past the
// startup phase and starts with pending (bytes already read from nc).
func (b *protoBox) hold(nc net.Conn, typed bool, pending []byte) {
	b.nc, b.r = nc, nc
	b.f = framing{typed: typed}
	b.pend.off, b.pend.n = 0, uint8(copy(b.pend.buf[:], pending))
	if b.pend.n > 0 {
		b.r = &b.pend
	}
}

// pendReader hands out the bytes a deep-idle connection read while it
// had no Backend, then makes its box read the connection again.
type pendReader struct {
	box    *protoBox
	buf    [5]byte
	off, n uint8
}

func (p *pendReader) Read(dst []byte) (int, error) {
	k := copy(dst, p.buf[p.off:p.n])
	p.off += uint8(k)
	if p.off == p.n {
		p.box.r = p.box.nc
	}
	return k, nil
}

// takeBox gives c a protocol Backend from the Server's pool (or a new
// one) over c.netConn. With resume, c is past the startup phase and its
// Backend first reads the bytes of c.wake.
func (c *clientConn) takeBox(resume bool) {
	b, _ := c.srv.boxes.Get().(*protoBox)
	if b == nil {
		b = newProtoBox()
	}
	var pending []byte
	if resume {
		pending = c.wake[:c.wakeN]
		c.wakeN = 0
	}
	b.hold(c.netConn, resume, pending)
	b.fe.SetMaxBodyLen(c.srv.cfg.MaxMessageBytes)
	b.traced = c.srv.cfg.Trace != nil
	if w := c.srv.cfg.Trace; w != nil {
		b.fe.Trace(&syncWriter{w: w, mu: &c.srv.traceMu, c: c}, pgproto3.TracerOptions{})
	}
	c.box, c.fe = b, b.fe
}

// putBox gives c's Backend, which holds no bytes of the client's, to the
// Server's pool. Called with c.wmu held.
func (c *clientConn) putBox() {
	b := c.box
	c.box, c.fe = nil, nil
	// Nothing is queued for the client (unflushed is 0); were anything
	// left, it would go to this client, never to the next holder.
	if err := b.flushOut(true); err != nil {
		return
	}
	b.hold(nil, false, nil)
	c.srv.boxes.Put(b)
}

// waitBytes blocks until the client sends (up to a header's worth of)
// bytes, kept in c.wake. It returns the read's error when none came.
func (c *clientConn) waitBytes() error {
	for {
		n, err := c.netConn.Read(c.wake[:])
		if n > 0 {
			// An error with the bytes comes back on the next read.
			c.wakeN = uint8(n)
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// received handles a message read in stateIdle (with its own frame, so
// that stateIdle's stays small).
func (c *clientConn) received(msg pgproto3.FrontendMessage) stateFn {
	c.disarmSweep()
	// c.ctx is the ctx every state function is given (serve).
	return c.dispatch(c.ctx, msg)
}

// disarmSweep clears the mark once a read returned and reports whether
// the sweeper had claimed the connection; its read deadline is cleared
// by then.
func (c *clientConn) disarmSweep() bool {
	if c.idleMark.Load() == 0 || c.idleMark.Swap(0) != idleClaimed {
		return false
	}
	c.sweepMu.Lock()
	_ = c.netConn.SetReadDeadline(time.Time{})
	c.sweepMu.Unlock()
	return true
}

// swept handles a client read that the sweeper interrupted (its deadline
// is cleared by now). When no backend is attached, no pump can write to
// the client any more, and the Backend holds no bytes, the Backend goes
// back to the pool and the reader waits for the client's next bytes
// without it; otherwise (a message arriving slowly, a backend attached)
// the read goes on.
func (c *clientConn) swept() stateFn {
	c.mu.Lock()
	attached := c.att != nil
	quiet := !attached && isClosed(c.lastPump)
	c.mu.Unlock()
	resume := c.to.idle
	if attached {
		resume = c.to.attached
	}
	if !quiet || !c.box.empty() {
		return resume
	}
	c.wmu.Lock()
	if c.unflushed > 0 {
		// Replies the client has not asked to flush yet are queued in the
		// Backend: keep it.
		c.wmu.Unlock()
		return resume
	}
	c.putBox()
	c.wmu.Unlock()
	// The sweeper leaves a deep-idle connection alone.
	for {
		m := c.idleMark.Load()
		if m == idleClaimed {
			c.disarmSweep()
			continue
		}
		if c.idleMark.CompareAndSwap(m, idleDeep) {
			break
		}
	}
	c.deepIdle.Store(true)
	return c.stateDeepIdle // waits from the top of the stack (serve's loop)
}

// stateDeepIdle waits without a Backend for the client's next bytes, then
// takes one and goes on in stateIdle.
func (c *clientConn) stateDeepIdle(context.Context) stateFn {
	// A shutdown's read deadline (notifyShutdown) ends this read; one set
	// before the last clear of the sweeper's deadline is seen here.
	var err error
	if !c.shutdown.Load() {
		err = c.waitBytes()
	}
	c.wmu.Lock()
	c.takeBox(true)
	c.wmu.Unlock()
	c.deepIdle.Store(false)
	c.idleMark.Store(0)
	if err != nil {
		return c.readFailed(err)
	}
	return c.to.idle
}

func isClosed(ch chan struct{}) bool {
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// startSweeper starts the deep-idle sweeper once. Called with s.mu held.
func (s *Server) startSweeper() {
	if s.sweeping || s.deepIdleAfter <= 0 {
		return
	}
	s.sweeping = true
	s.sweeper.Add(1)
	go func() {
		defer s.sweeper.Done()
		s.sweep(s.sweepStop)
	}()
}

// sweep claims connections idle for deepIdleAfter until stop is closed.
func (s *Server) sweep(stop <-chan struct{}) {
	t := time.NewTicker(max(s.deepIdleAfter/sweepTicks, time.Millisecond))
	defer t.Stop()
	type candidate struct {
		c    *clientConn
		mark int64
	}
	var cands []candidate
	burst := 0             // connections claimed since the last return of memory
	var lastFree time.Time // when memory was last returned to the OS
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if len(cands) == 0 && burst >= freeAfterBurst && time.Since(lastFree) >= 10*time.Second {
			// Many connections went deep idle and none since: return what
			// their startup and buffers left behind, rather than hold it
			// until the heap grows enough for a collection. The boxes they
			// gave back sit in a sync.Pool, which a collection only moves
			// to its victim cache: the first collection does that, the
			// second (FreeOSMemory's) frees them.
			runtime.GC()
			debug.FreeOSMemory()
			burst, lastFree = 0, time.Now()
		}
		now := s.idleEpoch.Add(1)
		cands = cands[:0]
		s.reg.mu.Lock()
		for _, c := range s.reg.conns {
			m := c.idleMark.Load()
			switch {
			case connState(c.state.Load()) != stateIdle:
				if m > 0 {
					c.idleMark.CompareAndSwap(m, 0)
				}
			case m == 0:
				c.idleMark.CompareAndSwap(0, now) // idle since before this tick
			case m > 0 && now-m >= sweepTicks:
				cands = append(cands, candidate{c, m})
			}
		}
		s.reg.mu.Unlock()
		for i, cd := range cands {
			c := cd.c
			c.sweepMu.Lock()
			if c.idleMark.CompareAndSwap(cd.mark, idleClaimed) {
				_ = c.netConn.SetReadDeadline(time.Now())
				s.sweeps.Add(1)
				burst++
			}
			c.sweepMu.Unlock()
			cands[i] = candidate{}
		}
	}
}
