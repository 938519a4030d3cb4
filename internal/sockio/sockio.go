//go:build linux

package sockio

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is a TCP or Unix stream connection whose Read and Write are raw
// system calls on the connection's non-blocking socket. Everything else
// (deadlines, Close, addresses) is the wrapped connection's.
type Conn struct {
	net.Conn
	rc   syscall.RawConn
	r, w half
}

// half is the state of one direction's call in progress, kept in the Conn
// so that a call allocates nothing.
type half struct {
	mu    sync.Mutex // serialises the direction's calls; guards the rest
	buf   []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool // the RawConn callback, bound once
}

// Wrap returns c as a *Conn when it is a *net.TCPConn or *net.UnixConn,
// otherwise c itself.
func Wrap(c net.Conn) net.Conn {
	var sc syscall.Conn
	switch t := c.(type) {
	case *net.TCPConn:
		sc = t
	case *net.UnixConn:
		sc = t
	default:
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	w := &Conn{Conn: c, rc: rc}
	w.r.fn = w.read
	w.w.fn = w.write
	return w
}

// Unwrap returns the wrapped connection.
func (c *Conn) Unwrap() net.Conn { return c.Conn }

// Read reads up to len(p) bytes. It waits, as net.Conn.Read does (read
// deadline included), only while the socket has nothing to read.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, err := c.run(&c.r, false, p)
	if err == nil && n == 0 {
		return 0, io.EOF
	}
	return n, err
}

// Write writes all of p, waiting (write deadline included) while the
// socket's send buffer is full.
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return c.run(&c.w, true, p)
}

// run makes one Read or Write call: h's callback under the RawConn, which
// waits for readiness whenever the callback returns false.
func (c *Conn) run(h *half, write bool, p []byte) (int, error) {
	h.mu.Lock()
	h.buf, h.n, h.errno = p, 0, 0
	var err error
	op := "read"
	if write {
		op = "write"
		err = c.rc.Write(h.fn)
	} else {
		err = c.rc.Read(h.fn)
	}
	n, errno := h.n, h.errno
	h.buf = nil
	h.mu.Unlock()
	if err != nil {
		return n, c.opError(op, err)
	}
	if errno != 0 {
		return n, c.opError(op, os.NewSyscallError(op, errno))
	}
	return n, nil
}

// read is the RawConn callback of Read: false means "wait until readable".
func (c *Conn) read(fd uintptr) bool {
	p := c.r.buf
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			c.r.n = int(r)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			c.r.errno = e
			return true
		}
	}
}

// write is the RawConn callback of Write: false means "wait until
// writable"; it resumes where the last call stopped.
func (c *Conn) write(fd uintptr) bool {
	p := c.w.buf
	for c.w.n < len(p) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[c.w.n])), uintptr(len(p)-c.w.n))
		switch e {
		case 0:
			c.w.n += int(r)
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			c.w.errno = e
			return true
		}
	}
	return true
}

// opError shapes err like the net package's errors: a *net.OpError whose
// Err is the cause (os.ErrDeadlineExceeded, net.ErrClosed, a syscall
// error), so errors.Is and net.Error checks behave as on a net.Conn.
func (c *Conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	la := c.LocalAddr()
	network := ""
	if la != nil {
		network = la.Network()
	}
	return &net.OpError{Op: op, Net: network, Source: la, Addr: c.RemoteAddr(), Err: err}
}

// PeerClosed reports whether the peer of c has closed its end (or the
// connection has failed), looking at the socket without reading from it:
// poll(2) with POLLRDHUP, as PostgreSQL's client_connection_check_interval
// does. Bytes the peer sent before closing do not hide the close. c may be
// a *Conn, a *tls.Conn or any connection with a NetConn or Unwrap method
// over a TCP or Unix stream connection; for others, and for a connection
// already closed on this side, it reports false and an error.
func PeerClosed(c net.Conn) (bool, error) {
	for {
		switch t := c.(type) {
		case interface{ NetConn() net.Conn }: // *tls.Conn
			c = t.NetConn()
			continue
		case interface{ Unwrap() net.Conn }: // *Conn
			c = t.Unwrap()
			continue
		}
		break
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false, errors.New("sockio: not a socket connection")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, err
	}
	closed := false
	var perr error
	err = rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
		for {
			_, e := unix.Poll(fds, 0)
			if e == unix.EINTR {
				continue
			}
			perr = e
			break
		}
		closed = fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0
	})
	if err != nil {
		return false, err
	}
	return closed, perr
}
