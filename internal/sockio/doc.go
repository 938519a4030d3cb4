// Package sockio makes reads and writes on TCP and Unix stream connections
// raw system calls.
//
// A net.Conn read or write is a blocking-style system call for the Go
// scheduler: the goroutine's processor is marked as in a system call, and
// when the kernel deschedules the thread inside it (as it does after a
// loopback write wakes the peer), the runtime's monitor hands the processor
// to another thread, wakes it, and parks the first on its return. For a
// proxy that relays small messages that is several context switches per
// message. The sockets under net.Conn are non-blocking, so read(2) and
// write(2) on them return at once (EAGAIN when they would block); Conn
// issues them as raw system calls and waits for readiness through the
// runtime's network poller exactly as net.Conn does.
//
// The price: a raw call keeps its processor for its whole duration, so a
// thread the kernel keeps off the CPU inside one also delays the
// goroutines queued on that processor (other processors steal them) and a
// stop-the-world phase of the garbage collector. On a non-blocking socket
// the call itself takes microseconds; measured on a busy 2-core machine,
// the proxy's p99 latency went down, not up (see README).
//
// # Contract
//
// Wrap returns a *Conn for *net.TCPConn and *net.UnixConn and its argument
// unchanged for any other net.Conn. A *Conn behaves as the connection it
// wraps: Read returns io.EOF at the peer's end of stream; deadlines set with
// SetDeadline, SetReadDeadline and SetWriteDeadline bound the waits (errors
// satisfy errors.Is(err, os.ErrDeadlineExceeded) and net.Error.Timeout);
// after Close, Read and Write fail with errors satisfying
// errors.Is(err, net.ErrClosed); other failures are *net.OpError wrapping an
// *os.SyscallError (ECONNRESET, EPIPE, ...). Write returns only once all of
// its bytes are written or an error occurs.
//
// # Concurrency
//
// As for net.Conn: one Read and one Write may run at once (the connection
// serialises concurrent reads, and concurrent writes, among themselves);
// Close may be called at any time and unblocks both.
package sockio
