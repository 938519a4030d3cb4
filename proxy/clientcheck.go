package proxy

import (
	"context"
	"time"

	"github.com/dbproxy/dbproxy/internal/sockio"
)

// Dead clients of running queries.
//
// While a reply is pumped on the reader goroutine (pumpInline), or a
// multi-shard statement runs on backends of the proxy's own (runMulti),
// nothing reads the client's socket, so a client that disconnects while
// its query runs would go unnoticed until the backends answer, and the
// query would run to its end. Every Config.ClientCheckInterval the checker
// looks at the sockets of the clients waiting in that way
// (sockio.PeerClosed: poll with POLLRDHUP, reading nothing); for each one
// whose peer has gone, it ends the client connection and interrupts the
// wait: a pump is interrupted, which cancels the running query on the
// backend (CancelRequest) and discards the backend connection
// (pumpFailed); a multi-shard statement's context is cancelled, which
// cancels it on every shard. Replies pumped by a pump goroutine need no
// check: the reader is reading the client then and sees the end of its
// stream itself.
//
// The same pass moves reads off nodes that stopped answering: a read
// waiting on a node whose probes fail is sent to another node
// (rerouteFromFailingNode).

// startClientCheck starts the checker once. Called with s.mu held.
func (s *Server) startClientCheck() {
	if s.checking || s.cfg.ClientCheckInterval <= 0 {
		return
	}
	s.checking = true
	s.checker.Add(1)
	go func() {
		defer s.checker.Done()
		s.checkClients(s.baseCtx, s.cfg.ClientCheckInterval)
	}()
}

// checkClients runs the checks every interval until ctx ends.
func (s *Server) checkClients(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var busy []*clientConn
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		busy = busy[:0]
		s.reg.mu.Lock()
		for _, c := range s.reg.conns {
			if connState(c.state.Load()) == stateAttached || c.multiRunning.Load() {
				busy = append(busy, c)
			}
		}
		s.reg.mu.Unlock()
		for i, c := range busy {
			c.rerouteFromFailingNode()
			if c.notReading() {
				if gone, _ := sockio.PeerClosed(c.netConn); gone {
					c.clientGoneMidQuery()
				}
			}
			busy[i] = nil
		}
	}
}

// rerouteFromFailingNode interrupts a read that waits for a node whose
// health or lag probe has failed (replica Node.Failing: the node did not
// accept a connection and answer within the probe timeout, as when its
// host hangs or a network partition drops packets without resets), so
// that the read is sent again to another node (retryLater) rather than
// waiting for the node, possibly for ever. Only requests that may run
// again qualify (attachment.retryable: reads outside a transaction), with
// nothing of their reply written to the client, and only when nothing of
// it was received either during a whole check interval: a node slow to
// answer its probes while it streams a long result keeps its read. The
// reads sent again are counted with Stats.ReadRetries.
func (c *clientConn) rerouteFromFailingNode() {
	c.mu.Lock()
	defer c.mu.Unlock()
	att := c.att
	if att == nil || !att.inline || att.parked || att.stopped || att.released || att.nodeDown ||
		!att.retryable || att.outstanding == 0 || !att.lease.Node().Failing() || !c.resendable(att) {
		c.stalled = stallMark{}
		return
	}
	c.wmu.Lock()
	b := c.box
	var cur stallMark
	if b != nil && b.outErr == nil && b.writes == att.outWrites && len(b.out) >= att.outMark {
		cur = stallMark{att: att, seg: att.recvSeg, out: len(b.out)}
	}
	c.wmu.Unlock()
	if cur.att == nil || cur != c.stalled {
		c.stalled = cur // first seen so: look again at the next check
		return
	}
	c.stalled = stallMark{}
	att.nodeDown = true
	att.failRead()
}

// stallMark is what rerouteFromFailingNode saw of a read waiting on a
// failing node: the read's attachment and segment and how much of its
// reply was queued for the client. The same mark at the next check means
// the node sent nothing meanwhile.
type stallMark struct {
	att *attachment
	seg int
	out int
}

// notReading reports whether the reader goroutine waits for backends
// with a request in flight, not reading the client: it pumps a reply
// itself or runs a multi-shard statement.
func (c *clientConn) notReading() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.multiCancel != nil {
		return true
	}
	att := c.att
	return att != nil && att.inline && !att.parked && !att.stopped && (att.outstanding > 0 || att.unsynced)
}

// clientGoneMidQuery ends a connection whose client went away while its
// request runs: the client's socket is closed and the pump interrupted
// (which cancels the request on the backend and discards the backend),
// or the multi-shard statement cancelled.
func (c *clientConn) clientGoneMidQuery() {
	c.mu.Lock()
	att, multi := c.att, c.multiCancel
	if (multi == nil && (att == nil || att.stopped)) || c.closeReason != nil {
		c.mu.Unlock()
		return
	}
	c.closeReason = errClientGone
	c.cond.Broadcast()
	c.mu.Unlock()
	c.srv.clientsGoneMidQuery.Add(1)
	c.srv.log.Info("client disconnected while its query ran: cancelling it", "client", c.remote)
	_ = c.netConn.Close()
	if multi != nil {
		multi(errClientGone)
	}
	if att != nil {
		c.interrupt(att)
	}
}

// cancelRunning asks att's backend to cancel what it is running when a
// request is in flight; pumpFailed calls it before discarding a backend
// it was interrupted on, so that a query whose client or session ended
// does not run on to its end on the server.
func (c *clientConn) cancelRunning(att *attachment) {
	c.mu.Lock()
	busy := att.inFlight()
	c.mu.Unlock()
	if !busy {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.ctx), backendCancelTimeout)
	defer cancel()
	if err := att.conn.CancelRequest(ctx); err != nil {
		c.srv.log.Debug("cancel request to backend failed", "node", att.nodeName, "err", err)
	}
}

// backendCancelTimeout bounds sending a CancelRequest to a backend.
const backendCancelTimeout = 5 * time.Second
