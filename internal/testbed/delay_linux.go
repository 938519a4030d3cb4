package testbed

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The engine's kernel may lack sch_netem (this machine's does), so latency is
// emulated with netfilter's NFQUEUE: an iptables rule inside the container
// queues every packet the container sends, and a delayer in the test process
// holds each queued packet for the configured delay before accepting it.
// The packets wait inside the kernel, on the container's own egress path, so
// every peer (host, other containers) sees the added latency. The rule uses
// --queue-bypass: if the test process dies, packets flow undelayed instead of
// being dropped.
//
// The netlink socket is opened inside the container's network namespace (a
// locked OS thread enters it with setns, creates the socket and returns); a
// socket stays bound to the namespace it was created in.

const (
	nfnlSubsysQueue = 3

	nfqnlMsgPacket  = 0
	nfqnlMsgVerdict = 1
	nfqnlMsgConfig  = 2

	nfqaPacketHdr  = 1
	nfqaVerdictHdr = 2

	nfqaCfgCmd      = 1
	nfqaCfgParams   = 2
	nfqaCfgQueueMax = 3
	nfqaCfgMask     = 4
	nfqaCfgFlags    = 5

	nfqnlCfgCmdBind   = 1
	nfqnlCfgCmdUnbind = 2
	nfqnlCopyMeta     = 1
	nfqaCfgFFailOpen  = 1

	nfAccept = 1

	nlmsgHdrLen  = 16
	nfgenHdrLen  = 4
	delayQueueNo = 7
)

// delayer holds every packet queued on delayQueueNo in one network namespace
// for the current delay, then accepts it. It owns two goroutines (reader and
// releaser), both stopped and waited for by close.
type delayer struct {
	fd    int
	delay atomic.Int64 // nanoseconds
	seq   atomic.Uint32

	pending chan queuedPacket
	stop    chan struct{}
	wg      sync.WaitGroup

	mu      sync.Mutex // serialises writes to fd
	errOnce sync.Once
	err     error
}

type queuedPacket struct {
	id  uint32
	due time.Time
}

// newDelayer binds NFQUEUE delayQueueNo in the network namespace of process
// pid and starts releasing queued packets after d.
func newDelayer(pid int, d time.Duration) (*delayer, error) {
	fd, err := socketInNetns(pid)
	if err != nil {
		return nil, err
	}
	dl := &delayer{fd: fd, pending: make(chan queuedPacket, 1<<16), stop: make(chan struct{})}
	dl.delay.Store(int64(d))
	// A large receive buffer so bursts are not lost (ENOBUFS drops packets).
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	// Unblock reads periodically so close can stop the reader.
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("testbed: nfqueue SO_RCVTIMEO: %w", err)
	}
	if err := dl.configure(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	dl.wg.Add(2)
	go dl.read()
	go dl.release()
	return dl, nil
}

// socketInNetns creates a NETLINK_NETFILTER socket in the network namespace
// of pid.
func socketInNetns(pid int) (int, error) {
	target, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return -1, fmt.Errorf("testbed: open netns of pid %d: %w", pid, err)
	}
	defer target.Close()

	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, fmt.Errorf("testbed: open own netns: %w", err)}
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, fmt.Errorf("testbed: setns into pid %d: %w", pid, err)}
			return
		}
		fd, serr := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread is stuck in the other namespace: leave it locked so
			// the runtime destroys it when this goroutine exits.
			if serr == nil {
				unix.Close(fd)
			}
			ch <- result{-1, fmt.Errorf("testbed: setns back: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		if serr != nil {
			ch <- result{-1, fmt.Errorf("testbed: netlink socket: %w", serr)}
			return
		}
		ch <- result{fd, nil}
	}()
	r := <-ch
	if r.err != nil {
		return -1, r.err
	}
	if err := unix.Bind(r.fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(r.fd)
		return -1, fmt.Errorf("testbed: bind netlink: %w", err)
	}
	return r.fd, nil
}

// nlattr appends one netlink attribute (payload padded to 4 bytes).
func nlattr(b []byte, typ uint16, payload []byte) []byte {
	l := 4 + len(payload)
	var h [4]byte
	binary.NativeEndian.PutUint16(h[0:2], uint16(l))
	binary.NativeEndian.PutUint16(h[2:4], typ)
	b = append(b, h[:]...)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// message builds a nfnetlink queue message for queue delayQueueNo.
func (dl *delayer) message(msgType uint16, flags uint16, attrs []byte) []byte {
	b := make([]byte, nlmsgHdrLen+nfgenHdrLen, nlmsgHdrLen+nfgenHdrLen+len(attrs))
	b = append(b, attrs...)
	binary.NativeEndian.PutUint32(b[0:4], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:6], nfnlSubsysQueue<<8|msgType)
	binary.NativeEndian.PutUint16(b[6:8], unix.NLM_F_REQUEST|flags)
	binary.NativeEndian.PutUint32(b[8:12], dl.seq.Add(1))
	binary.NativeEndian.PutUint32(b[12:16], 0)
	b[16] = unix.AF_UNSPEC
	b[17] = 0 // NFNETLINK_V0
	binary.BigEndian.PutUint16(b[18:20], delayQueueNo)
	return b
}

func (dl *delayer) send(b []byte) error {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	return unix.Sendto(dl.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

// configure binds the queue, asks for metadata only (no payload copies) and
// makes a full queue accept packets rather than drop them.
func (dl *delayer) configure() error {
	cmd := []byte{nfqnlCfgCmdBind, 0, 0, 0} // command, pad, pf (be16, unused)
	if err := dl.request(nlattr(nil, nfqaCfgCmd, cmd)); err != nil {
		return fmt.Errorf("testbed: nfqueue bind: %w", err)
	}
	params := make([]byte, 5)
	binary.BigEndian.PutUint32(params[0:4], 0)
	params[4] = nfqnlCopyMeta
	attrs := nlattr(nil, nfqaCfgParams, params)
	maxLen := binary.BigEndian.AppendUint32(nil, 1<<15)
	attrs = nlattr(attrs, nfqaCfgQueueMax, maxLen)
	attrs = nlattr(attrs, nfqaCfgFlags, binary.BigEndian.AppendUint32(nil, nfqaCfgFFailOpen))
	attrs = nlattr(attrs, nfqaCfgMask, binary.BigEndian.AppendUint32(nil, nfqaCfgFFailOpen))
	if err := dl.request(attrs); err != nil {
		return fmt.Errorf("testbed: nfqueue params: %w", err)
	}
	return nil
}

// request sends a config message with NLM_F_ACK and waits for the ack.
func (dl *delayer) request(attrs []byte) error {
	msg := dl.message(nfqnlMsgConfig, unix.NLM_F_ACK, attrs)
	seq := binary.NativeEndian.Uint32(msg[8:12])
	if err := dl.send(msg); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(dl.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		for off := 0; off+nlmsgHdrLen <= n; {
			l := int(binary.NativeEndian.Uint32(buf[off : off+4]))
			if l < nlmsgHdrLen || off+l > n {
				break
			}
			typ := binary.NativeEndian.Uint16(buf[off+4 : off+6])
			s := binary.NativeEndian.Uint32(buf[off+8 : off+12])
			if typ == unix.NLMSG_ERROR && s == seq && l >= nlmsgHdrLen+4 {
				errno := int32(binary.NativeEndian.Uint32(buf[off+16 : off+20]))
				if errno != 0 {
					return unix.Errno(-errno)
				}
				return nil
			}
			off += (l + 3) &^ 3
		}
	}
	return errors.New("no netlink ack")
}

// read receives queued-packet notifications and schedules their release.
func (dl *delayer) read() {
	defer dl.wg.Done()
	buf := make([]byte, 1<<16)
	for {
		select {
		case <-dl.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(dl.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENOBUFS) {
				continue
			}
			dl.fail(fmt.Errorf("testbed: nfqueue read: %w", err))
			return
		}
		now := time.Now()
		for off := 0; off+nlmsgHdrLen <= n; {
			l := int(binary.NativeEndian.Uint32(buf[off : off+4]))
			if l < nlmsgHdrLen || off+l > n {
				break
			}
			typ := binary.NativeEndian.Uint16(buf[off+4 : off+6])
			if typ == nfnlSubsysQueue<<8|nfqnlMsgPacket {
				if id, ok := packetID(buf[off+nlmsgHdrLen+nfgenHdrLen : off+l]); ok {
					p := queuedPacket{id: id, due: now.Add(time.Duration(dl.delay.Load()))}
					select {
					case dl.pending <- p:
					case <-dl.stop:
						return
					}
				}
			}
			off += (l + 3) &^ 3
		}
	}
}

// packetID extracts the packet id from NFQA_PACKET_HDR.
func packetID(attrs []byte) (uint32, bool) {
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs[0:2]))
		typ := binary.NativeEndian.Uint16(attrs[2:4]) & 0x3fff
		if l < 4 || l > len(attrs) {
			return 0, false
		}
		if typ == nfqaPacketHdr && l >= 4+4 {
			return binary.BigEndian.Uint32(attrs[4:8]), true
		}
		adv := (l + 3) &^ 3
		if adv > len(attrs) {
			return 0, false
		}
		attrs = attrs[adv:]
	}
	return 0, false
}

// release accepts each queued packet once its delay has passed, in arrival
// order. On stop it accepts everything still pending at once.
func (dl *delayer) release() {
	defer dl.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var p queuedPacket
		select {
		case p = <-dl.pending:
		case <-dl.stop:
			dl.drain()
			return
		}
		if wait := time.Until(p.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-dl.stop:
				dl.verdict(p.id)
				dl.drain()
				return
			}
		}
		dl.verdict(p.id)
	}
}

func (dl *delayer) drain() {
	for {
		select {
		case p := <-dl.pending:
			dl.verdict(p.id)
		default:
			return
		}
	}
}

func (dl *delayer) verdict(id uint32) {
	v := make([]byte, 8)
	binary.BigEndian.PutUint32(v[0:4], nfAccept)
	binary.BigEndian.PutUint32(v[4:8], id)
	if err := dl.send(dl.message(nfqnlMsgVerdict, 0, nlattr(nil, nfqaVerdictHdr, v))); err != nil {
		dl.fail(fmt.Errorf("testbed: nfqueue verdict: %w", err))
	}
}

func (dl *delayer) fail(err error) {
	dl.errOnce.Do(func() { dl.err = err })
}

func (dl *delayer) setDelay(d time.Duration) { dl.delay.Store(int64(d)) }

// close stops both goroutines (accepting every packet still held), unbinds
// the queue and closes the socket. It returns the first error the delayer met.
func (dl *delayer) close() error {
	close(dl.stop)
	dl.wg.Wait()
	_ = dl.send(dl.message(nfqnlMsgConfig, 0, nlattr(nil, nfqaCfgCmd, []byte{nfqnlCfgCmdUnbind, 0, 0, 0})))
	unix.Close(dl.fd)
	return dl.err
}
