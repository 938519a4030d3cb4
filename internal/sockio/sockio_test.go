package sockio

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pair returns the two ends of a loopback TCP connection, the first wrapped.
func pair(t testing.TB) (*Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	w, ok := Wrap(c).(*Conn)
	if !ok {
		t.Fatalf("Wrap(%T) did not wrap", c)
	}
	t.Cleanup(func() { w.Close(); peer.Close() })
	return w, peer
}

func TestWrapOnlySockets(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := Wrap(a); got != a {
		t.Fatalf("Wrap(net.Pipe) = %T, want the pipe itself", got)
	}
	c, _ := pair(t)
	if _, ok := c.Unwrap().(*net.TCPConn); !ok {
		t.Fatalf("Unwrap = %T, want *net.TCPConn", c.Unwrap())
	}
}

// TestLargeTransfer writes far more than the socket buffers hold in both
// directions at once, so writes wait for the peer (EAGAIN) and reads wait
// for data, and checks every byte.
func TestLargeTransfer(t *testing.T) {
	c, peer := pair(t)
	const size = 32 << 20
	out := make([]byte, size)
	for i := range out {
		out[i] = byte(i*7 + i>>11)
	}
	errc := make(chan error, 2)
	go func() { // c -> peer
		_, err := c.Write(out)
		errc <- err
	}()
	go func() { // peer -> c, echoed back below
		got := make([]byte, size)
		if _, err := io.ReadFull(peer, got); err != nil {
			errc <- err
			return
		}
		if !bytes.Equal(got, out) {
			errc <- errors.New("peer received different bytes")
			return
		}
		_, err := peer.Write(got[:size/2])
		errc <- err
	}()
	back := make([]byte, size/2)
	if _, err := io.ReadFull(c, back); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(back, out[:size/2]) {
		t.Fatal("received different bytes")
	}
}

// TestUnixSocket: a Unix stream connection (an unnamed client end) is
// wrapped and works, errors included.
func TestUnixSocket(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.Close()
	}()
	nc, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, ok := Wrap(nc).(*Conn)
	if !ok {
		t.Fatalf("Wrap(%T) did not wrap", nc)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo = %q, %v", buf, err)
	}
	c.SetReadDeadline(time.Now())
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline = %v", err)
	}
}

func TestEOF(t *testing.T) {
	c, peer := pair(t)
	if _, err := peer.Write([]byte("last")); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "last" {
		t.Fatalf("ReadAll = %q, %v; want \"last\", nil", got, err)
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("Read after EOF = %d, %v; want 0, io.EOF", n, err)
	}
}

func TestReadDeadline(t *testing.T) {
	c, _ := pair(t)
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read = %v, want os.ErrDeadlineExceeded", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read error %v is not a net.Error timeout", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Fatalf("Read returned after %v, before the deadline", d)
	}
	// A deadline in the past fails at once; clearing it lets data through.
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("second Read = %v, want os.ErrDeadlineExceeded", err)
	}
}

func TestWriteDeadline(t *testing.T) {
	c, _ := pair(t) // the peer never reads: the socket buffers fill up
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	n, err := c.Write(make([]byte, 64<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write = %d, %v; want os.ErrDeadlineExceeded", n, err)
	}
	if n <= 0 || n >= 64<<20 {
		t.Fatalf("Write wrote %d bytes before the deadline, want part of the buffer", n)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	c, _ := pair(t)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close = %v, want net.ErrClosed", err)
		}
	case <-ctx.Done():
		t.Fatal("Read still blocked after Close")
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close = %v, want net.ErrClosed", err)
	}
}

func TestResetByPeer(t *testing.T) {
	c, peer := pair(t)
	peer.(*net.TCPConn).SetLinger(0) // close sends RST
	peer.Close()
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = c.Write([]byte("after reset"))
		time.Sleep(time.Millisecond)
	}
	var oe *net.OpError
	var se *os.SyscallError
	if !errors.As(err, &oe) || !errors.As(err, &se) || oe.Op != "write" {
		t.Fatalf("Write to a reset connection = %v (%T), want *net.OpError{Op: write} wrapping *os.SyscallError", err, err)
	}
}

// BenchmarkPingPong measures small request/response round trips over
// loopback TCP from 16 goroutines at once, each on its own connection to an
// echo server in another process (the proxy's pattern: a write wakes another
// process), through a plain net.Conn and through a *Conn; alone on the
// machine ("idle") and with one busy-looping process per CPU competing for
// the cores ("contended"), where threads get descheduled inside system
// calls. Besides ns/op it reports this process's CPU time (cpu-ns/op) and
// context switches (ctxsw/op) per round trip. Compare the sub-benchmarks of
// one run.
func BenchmarkPingPong(b *testing.B) {
	addr := echoServer(b)
	for _, load := range []string{"idle", "contended"} {
		b.Run(load, func(b *testing.B) {
			if load == "contended" {
				spin(b, runtime.NumCPU())
			}
			for _, wrap := range []bool{false, true} {
				name := "net.Conn"
				if wrap {
					name = "sockio.Conn"
				}
				b.Run(name, func(b *testing.B) { pingPong(b, addr, wrap) })
			}
		})
	}
}

func pingPong(b *testing.B, addr string, wrap bool) {
	b.ReportAllocs()
	b.SetParallelism(8)
	before := usage(b)
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		if wrap {
			c = Wrap(c)
		}
		msg := make([]byte, 100)
		buf := make([]byte, 512)
		for pb.Next() {
			if _, err := c.Write(msg); err != nil {
				b.Error(err)
				return
			}
			if _, err := io.ReadFull(c, buf[:len(msg)]); err != nil {
				b.Error(err)
				return
			}
		}
	})
	after := usage(b)
	b.ReportMetric(float64(after.Nvcsw+after.Nivcsw-before.Nvcsw-before.Nivcsw)/float64(b.N), "ctxsw/op")
	cpu := func(ru syscall.Rusage) int64 { return ru.Utime.Nano() + ru.Stime.Nano() }
	b.ReportMetric(float64(cpu(after)-cpu(before))/float64(b.N), "cpu-ns/op")
}

func usage(b *testing.B) syscall.Rusage {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru
}

// spin starts n busy-looping shell processes until the benchmark ends.
func spin(b *testing.B, n int) {
	for range n {
		cmd := exec.Command("/bin/sh", "-c", "while :; do :; done")
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
	}
}

const echoEnv = "SOCKIO_TEST_ECHO_SERVER"

// echoServer starts this test binary as an echo server process (see
// TestMain) and returns its address; the process ends with the benchmark.
func echoServer(b *testing.B) string {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), echoEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close() // the server exits at EOF on stdin
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("echo server: %v", err)
	}
	return strings.TrimSpace(line)
}

// TestMain runs the echo server of BenchmarkPingPong when asked to.
func TestMain(m *testing.M) {
	if os.Getenv(echoEnv) == "" {
		os.Exit(m.Run())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 512)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				if _, err := c.Write(buf[:n]); err != nil {
					return
				}
			}
		}()
	}
}

func TestPeerClosed(t *testing.T) {
	waitClosed := func(t *testing.T, c net.Conn) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			closed, err := PeerClosed(c)
			if err != nil {
				t.Fatal(err)
			}
			if closed {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("PeerClosed still false 5s after the peer closed")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	t.Run("tcp", func(t *testing.T) {
		c, peer := pair(t)
		if closed, err := PeerClosed(c); closed || err != nil {
			t.Fatalf("open connection: %v, %v", closed, err)
		}
		// Data waiting to be read is not a close, and does not hide one.
		if _, err := peer.Write([]byte("X")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		if closed, err := PeerClosed(c); closed || err != nil {
			t.Fatalf("data pending: %v, %v", closed, err)
		}
		peer.Close()
		waitClosed(t, c)
		// Through a TLS layer (as a client that upgraded): the socket's.
		waitClosed(t, tls.Server(c, &tls.Config{}))
		// Nothing was read: the byte is still there.
		buf := make([]byte, 2)
		if n, err := c.Read(buf); n != 1 || buf[0] != 'X' || err != nil {
			t.Fatalf("Read after the checks = %d %q %v", n, buf[:n], err)
		}
		c.Close()
		if _, err := PeerClosed(c); err == nil {
			t.Fatal("PeerClosed on a connection closed here: no error")
		}
	})
	t.Run("unix", func(t *testing.T) {
		ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, _ := ln.Accept()
			accepted <- c
		}()
		nc, err := net.Dial("unix", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c := Wrap(nc)
		defer c.Close()
		peer := <-accepted
		if peer == nil {
			t.Fatal("accept failed")
		}
		if closed, err := PeerClosed(c); closed || err != nil {
			t.Fatalf("open connection: %v, %v", closed, err)
		}
		peer.Close()
		waitClosed(t, c)
	})
	t.Run("not a socket", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		if _, err := PeerClosed(a); err == nil {
			t.Fatal("PeerClosed(net.Pipe): no error")
		}
	})
}
