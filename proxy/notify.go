package proxy

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/shard"
	"github.com/jackc/pgx/v5/pgproto3"
)

// LISTEN/NOTIFY.
//
// A LISTEN cannot run on a pooled backend: the backend goes back to the
// pool and its notifications would reach whichever client leases it
// next. The proxy answers LISTEN and UNLISTEN itself and fans
// notifications out: per shard one listener goroutine holds a backend
// leased from the shard's primary and LISTENs there on every channel some
// client listens on, so a NOTIFY on any shard (inside a transaction
// pinned to that shard, say) reaches every client listening on its
// channel. A LISTEN is answered once every shard's listener listens on
// the channel, so a NOTIFY committed after the client saw the answer is
// delivered.
//
// A channel is held (refs) by each client that listens on it or has a
// LISTEN inside its open transaction; a client gets a channel's
// notifications (subs) once its LISTEN is committed. A listener whose
// backend fails ends the connections of the clients listening, with
// SQLSTATE 08006, as PostgreSQL's own sessions would end: notifications
// may have been lost, and a client that reconnects and listens again
// knows to catch up. Notifications are written to a client between
// messages, whatever it is doing; a client that does not read them ends
// when maxPendingNotifications bytes are waiting for it.

// maxPendingNotifications bounds the notification bytes waiting for one
// client.
const maxPendingNotifications = 16 << 20

// listenerRetry is the pause between attempts to lease a listener's
// backend.
const listenerRetry = 250 * time.Millisecond

var errListenerLost = &clientError{code: codeConnectionFailure, message: "terminating connection: the connection dbproxy listens on for notifications failed; notifications may have been lost", hint: "reconnect and LISTEN again"}

// notifier fans notifications from the shards' primaries out to client
// connections. Its methods are safe for concurrent use.
type notifier struct {
	srv *Server

	mu        sync.Mutex
	ident     *replica.Identity // who the listeners log in as (nil: the sets' own)
	chans     map[string]*notifyChannel
	listeners map[shard.ID]*listener
	waits     []*listenWait
	wg        sync.WaitGroup // listener and delivery goroutines
}

type notifyChannel struct {
	refs int                      // clients holding the channel
	subs map[*clientConn]struct{} // clients getting its notifications
}

// listenWait is an acquire waiting for every shard's listener to listen
// on a channel.
type listenWait struct {
	channel string
	pending map[shard.ID]bool
	done    chan error // buffered; one value
}

// listener holds one shard's listening backend. Fields under n.mu.
type listener struct {
	n        *notifier
	id       shard.ID
	listened map[string]bool // channels LISTENed on the current backend
	lease    *replica.Lease  // nil while connecting
	reading  bool            // blocked reading the backend: interrupt to wake
	woken    bool            // a read deadline was set to wake it
}

func newNotifier(s *Server) *notifier {
	return &notifier{srv: s, chans: map[string]*notifyChannel{}, listeners: map[shard.ID]*listener{}}
}

// acquire takes a reference on channel for a client and returns once
// every shard's listener listens on it (or with the first error, the
// reference given back). A non-nil ident becomes the listeners' identity
// when none is running (another database's fan-out takes that of the
// client listening now, whose login was checked, rather than keeping one
// of a client that may have left or can no longer log in).
func (n *notifier) acquire(ctx context.Context, channel string, ident *replica.Identity) error {
	n.mu.Lock()
	if ident != nil && len(n.listeners) == 0 {
		n.ident = ident
	}
	ch := n.chans[channel]
	if ch == nil {
		ch = &notifyChannel{subs: map[*clientConn]struct{}{}}
		n.chans[channel] = ch
	}
	ch.refs++
	w := &listenWait{channel: channel, pending: map[shard.ID]bool{}, done: make(chan error, 1)}
	for id := range n.srv.shards {
		l := n.listeners[id]
		if l != nil && l.listened[channel] {
			continue
		}
		w.pending[id] = true
		if l == nil {
			l = &listener{n: n, id: id, listened: map[string]bool{}}
			n.listeners[id] = l
			n.wg.Add(1)
			go l.run(n.srv.baseCtx)
		} else {
			l.wakeLocked()
		}
	}
	if len(w.pending) == 0 {
		n.mu.Unlock()
		return nil
	}
	n.waits = append(n.waits, w)
	n.mu.Unlock()
	var err error
	select {
	case err = <-w.done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		n.mu.Lock()
		n.waits = slices.DeleteFunc(n.waits, func(x *listenWait) bool { return x == w })
		n.mu.Unlock()
		n.release(channel)
	}
	return err
}

// release gives back a reference taken by acquire. The listeners stop
// listening on a channel nobody holds.
func (n *notifier) release(channel string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ch := n.chans[channel]
	if ch == nil {
		return
	}
	if ch.refs--; ch.refs <= 0 {
		delete(n.chans, channel)
		for _, l := range n.listeners {
			if l.listened[channel] {
				l.wakeLocked()
			}
		}
	}
}

// subscribe makes c get channel's notifications; c holds a reference.
func (n *notifier) subscribe(c *clientConn, channel string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ch := n.chans[channel]; ch != nil {
		ch.subs[c] = struct{}{}
	}
}

// unsubscribe stops channel's notifications to c.
func (n *notifier) unsubscribe(c *clientConn, channel string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ch := n.chans[channel]; ch != nil {
		delete(ch.subs, c)
	}
}

// deliver hands a notification to the clients subscribed to its channel.
// Called by a listener without n.mu.
func (n *notifier) deliver(m *pgproto3.NotificationResponse) {
	buf, err := m.Encode(nil)
	if err != nil {
		return
	}
	n.mu.Lock()
	var to []*clientConn
	if ch := n.chans[m.Channel]; ch != nil {
		for c := range ch.subs {
			to = append(to, c)
		}
	}
	n.mu.Unlock()
	for _, c := range to {
		c.queueNotification(buf)
	}
}

// wakeLocked makes l look at the channels again: a listener blocked
// reading its backend is interrupted by a past read deadline. Called
// with n.mu held.
func (l *listener) wakeLocked() {
	if l.reading && !l.woken && l.lease != nil {
		l.woken = true
		_ = l.lease.Conn().Conn().SetReadDeadline(time.Now())
	}
}

// run keeps a backend on the shard's primary listening on the channels
// held, until none is held or ctx ends.
func (l *listener) run(ctx context.Context) {
	n := l.n
	defer n.wg.Done()
	for {
		n.mu.Lock()
		if l.idleLocked() || ctx.Err() != nil {
			delete(n.listeners, l.id)
			n.failWaitsLocked(l.id, ErrShuttingDown)
			n.mu.Unlock()
			return
		}
		n.mu.Unlock()
		lease, err := l.connect(ctx)
		if err != nil {
			n.mu.Lock()
			n.failWaitsLocked(l.id, err)
			n.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(listenerRetry):
			}
			continue
		}
		err = l.serve(ctx, lease)
		n.mu.Lock()
		lost := len(l.listened) > 0 && err != nil
		l.lease, l.reading, l.woken = nil, false, false
		clear(l.listened)
		var victims []*clientConn
		if lost && ctx.Err() == nil {
			// Notifications may have been missed: end the connections
			// of the clients listening, as their own backend's failure
			// would have.
			for _, ch := range n.chans {
				for c := range ch.subs {
					victims = append(victims, c)
				}
			}
		}
		n.mu.Unlock()
		// Never pooled: the proxy's per-backend bookkeeping (prepared
		// statements) does not follow what the listener ran.
		lease.Discard(err)
		if err != nil && ctx.Err() == nil {
			n.srv.log.Warn("notification listener failed", "shard", l.id, "err", err)
		}
		for _, c := range victims {
			n.wg.Add(1)
			go func() { // a client that does not read must not hold up the others
				defer n.wg.Done()
				c.endWith(errListenerLost)
			}()
		}
	}
}

// idleLocked reports whether no channel is held and nothing is listened
// on: the listener can stop.
func (l *listener) idleLocked() bool {
	return len(l.n.chans) == 0 && len(l.listened) == 0 && !l.n.waitingOn(l.id)
}

func (n *notifier) waitingOn(id shard.ID) bool {
	for _, w := range n.waits {
		if w.pending[id] {
			return true
		}
	}
	return false
}

// failWaitsLocked ends the acquires waiting for shard id with err.
func (n *notifier) failWaitsLocked(id shard.ID, err error) {
	n.waits = slices.DeleteFunc(n.waits, func(w *listenWait) bool {
		if !w.pending[id] {
			return false
		}
		w.done <- err
		return true
	})
}

func (l *listener) connect(ctx context.Context) (*replica.Lease, error) {
	set := l.n.srv.shards[l.id]
	if set == nil {
		return nil, newClientError(codeInternal, fmt.Sprintf("no replica set for shard %d", l.id))
	}
	node := set.Primary()
	if node == nil {
		return nil, newClientError(codeConnectionFailure, fmt.Sprintf("shard %d has no primary", l.id))
	}
	l.n.mu.Lock()
	ident := l.n.ident
	l.n.mu.Unlock()
	return node.AcquireAs(ctx, ident)
}

// serve listens on lease's backend until it fails (an error), nothing is
// held any more (nil, the backend clean), or ctx ends.
func (l *listener) serve(ctx context.Context, lease *replica.Lease) error {
	n := l.n
	conn := lease.Conn()
	stop := context.AfterFunc(ctx, func() { _ = conn.Conn().SetReadDeadline(time.Now()) })
	defer stop()
	fr := conn.Frontend()
	n.mu.Lock()
	l.lease = lease
	n.mu.Unlock()
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		n.mu.Lock()
		var sql strings.Builder
		var adds []string
		for name := range n.chans {
			if !l.listened[name] {
				adds = append(adds, name)
				fmt.Fprintf(&sql, "LISTEN %s;", quoteIdent(name))
			}
		}
		var drops []string
		for name := range l.listened {
			if n.chans[name] == nil {
				drops = append(drops, name)
				fmt.Fprintf(&sql, "UNLISTEN %s;", quoteIdent(name))
			}
		}
		if sql.Len() == 0 {
			if l.idleLocked() {
				n.mu.Unlock()
				return nil
			}
			l.reading = true
		}
		n.mu.Unlock()

		if sql.Len() > 0 {
			if err := l.exec(fr, sql.String()); err != nil {
				return err
			}
			n.mu.Lock()
			for _, name := range adds {
				l.listened[name] = true
			}
			for _, name := range drops {
				delete(l.listened, name)
			}
			n.waits = slices.DeleteFunc(n.waits, func(w *listenWait) bool {
				if !w.pending[l.id] || !l.listened[w.channel] {
					return false
				}
				delete(w.pending, l.id)
				if len(w.pending) > 0 {
					return false
				}
				w.done <- nil
				return true
			})
			n.mu.Unlock()
			continue
		}

		msg, err := fr.Receive()
		n.mu.Lock()
		woken := l.woken
		l.reading, l.woken = false, false
		n.mu.Unlock()
		if woken {
			_ = conn.Conn().SetReadDeadline(time.Time{})
		}
		if err != nil {
			if woken && isTimeout(err) && ctx.Err() == nil {
				continue // a LISTEN or UNLISTEN to send
			}
			return err
		}
		if err := l.handle(msg); err != nil {
			return err
		}
	}
}

// exec runs sql (LISTEN/UNLISTEN statements) on the listener's backend,
// delivering notifications that arrive meanwhile.
func (l *listener) exec(fr *pgproto3.Frontend, sql string) error {
	fr.Send(&pgproto3.Query{String: sql})
	if err := fr.Flush(); err != nil {
		return err
	}
	var failed error
	for {
		msg, err := fr.Receive()
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			failed = fmt.Errorf("%s: %s (SQLSTATE %s)", sql, m.Message, m.Code)
		case *pgproto3.ReadyForQuery:
			return failed
		default:
			if err := l.handle(msg); err != nil {
				return err
			}
		}
	}
}

// handle processes a message the backend sent unasked.
func (l *listener) handle(msg pgproto3.BackendMessage) error {
	switch m := msg.(type) {
	case *pgproto3.NotificationResponse:
		l.n.deliver(m)
	case *pgproto3.ErrorResponse:
		// FATAL (terminated, shut down): the connection ends.
		return fmt.Errorf("listener backend: %s (SQLSTATE %s)", m.Message, m.Code)
	}
	return nil
}

// stats returns the channels held and the listeners with a backend.
func (n *notifier) stats() (channels, listeners int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, l := range n.listeners {
		if l.lease != nil {
			listeners++
		}
	}
	return len(n.chans), listeners
}

// wait waits for the notifier's goroutines after every client connection
// has ended and the Server's base context is cancelled.
func (n *notifier) wait() { n.wg.Wait() }

// notifyOut is a client connection's notifications waiting to be
// written.
type notifyOut struct {
	mu      sync.Mutex
	buf     []byte
	writing bool // a goroutine is writing buf out
	dead    bool // the connection failed or ended: drop everything
}

// queueNotification writes an encoded NotificationResponse to the client
// between messages, from a goroutine of its own so that a slow client
// delays nobody else.
func (c *clientConn) queueNotification(msg []byte) {
	o := &c.notes
	o.mu.Lock()
	if o.dead {
		o.mu.Unlock()
		return
	}
	if len(o.buf)+len(msg) > maxPendingNotifications {
		o.dead = true
		o.buf = nil
		o.mu.Unlock()
		c.srv.log.Warn("client does not read its notifications: closing it", "remote", c.remote)
		_ = c.netConn.Close()
		return
	}
	o.buf = append(o.buf, msg...)
	if o.writing {
		o.mu.Unlock()
		return
	}
	o.writing = true
	o.mu.Unlock()
	c.srv.notify.wg.Add(1)
	go c.writeNotifications()
}

func (c *clientConn) writeNotifications() {
	defer c.srv.notify.wg.Done()
	o := &c.notes
	var out []byte
	for {
		o.mu.Lock()
		if len(o.buf) == 0 || o.dead {
			o.writing = false
			o.mu.Unlock()
			return
		}
		out, o.buf = o.buf, out[:0]
		o.mu.Unlock()
		c.wmu.Lock()
		var err error
		if c.fe != nil && c.unflushed > 0 {
			// Messages queued before go first.
			err = c.flushClientLocked(true)
		}
		if err == nil {
			_, err = c.netConn.Write(out)
		}
		c.wmu.Unlock()
		if err != nil {
			o.mu.Lock()
			o.dead, o.buf, o.writing = true, nil, false
			o.mu.Unlock()
			_ = c.netConn.Close()
			return
		}
	}
}

// endWith ends the connection from outside its goroutines: a FATAL
// error, then the socket is closed (the reader then tears down).
func (c *clientConn) endWith(err error) {
	buf, encErr := errorResponse(err, "FATAL").Encode(nil)
	// The deadline first: it also ends a write blocked on a client that
	// does not read, which holds wmu.
	_ = c.netConn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	c.wmu.Lock()
	if encErr == nil {
		if c.fe != nil && c.unflushed > 0 {
			_ = c.flushClientLocked(true)
		}
		_, _ = c.netConn.Write(buf)
	}
	c.wmu.Unlock()
	c.notes.mu.Lock()
	c.notes.dead, c.notes.buf = true, nil
	c.notes.mu.Unlock()
	_ = c.netConn.Close()
}

// atHome reports whether the client's database is the server's home
// database (Deps.HomeDatabase).
func (c *clientConn) atHome() bool { return c.srv.homeDB == "" || c.database == c.srv.homeDB }

// notifier returns the fan-out of the client's database: notifications
// are per database in PostgreSQL. The home database's listeners use the
// replica sets' own connections; another database's log in as the client
// whose LISTEN started them (listen).
func (c *clientConn) notifier() *notifier {
	if c.atHome() {
		return c.srv.notify
	}
	s := c.srv
	s.dbNotifyMu.Lock()
	defer s.dbNotifyMu.Unlock()
	n := s.dbNotify[c.database]
	if n == nil {
		n = newNotifier(s)
		s.dbNotify[c.database] = n
	}
	return n
}

// listen carries out a LISTEN answered by the proxy: the channel is
// held before the answer. Called by the reader.
func (c *clientConn) listen(ctx context.Context, channel string) error {
	c.mu.Lock()
	held := c.listenHeld[channel]
	c.mu.Unlock()
	if held {
		return nil
	}
	if err := c.checkBackendLogin(ctx); err != nil {
		return err
	}
	var ident *replica.Identity
	if !c.atHome() {
		ident = c.backendID
	}
	if err := c.notifier().acquire(ctx, channel, ident); err != nil {
		return err
	}
	c.mu.Lock()
	if c.listenHeld == nil {
		c.listenHeld = map[string]bool{}
	}
	c.listenHeld[channel] = true
	c.mu.Unlock()
	return nil
}

// checkBackendLogin makes sure, once per session, that the client's backend
// identity logs in to its database before the proxy listens for it (on the
// default shard's primary). The fan-out's own connections answer LISTEN, so
// PostgreSQL would otherwise never see this client: a role that pg_hba.conf
// refuses, that lacks CONNECT on the database or whose backend password is
// wrong would get the database's notifications. The server's refusal is
// returned. A backend the client holds, or an idle pooled connection of the
// identity (it logged in before), counts.
// Called by the reader.
func (c *clientConn) checkBackendLogin(ctx context.Context) error {
	if c.loginChecked {
		return nil
	}
	c.mu.Lock()
	attached := c.att != nil // a backend of the client's own (session pooling, a transaction)
	c.mu.Unlock()
	if attached {
		c.loginChecked = true
		return nil
	}
	lease, err := c.srv.shards[c.srv.defaultShard()].Primary().AcquireAs(ctx, c.backendID)
	if err != nil {
		return err
	}
	lease.Release(nil)
	c.loginChecked = true
	return nil
}

// syncListensLocked brings the client's subscriptions in line with the
// channels its router session listens on, and gives back channels held
// for nothing once no transaction is open. Called with c.mu held after
// the session observed a request's end; it does not block.
func (c *clientConn) syncListensLocked() {
	rs := c.sess.rs
	if len(c.listenHeld) == 0 && len(c.listenSubs) == 0 {
		return
	}
	n := c.notifier()
	if v := rs.ListenVersion(); v != c.listenVersion {
		c.listenVersion = v
		want := rs.Listening()
		for ch := range c.listenSubs {
			if !slices.Contains(want, ch) {
				n.unsubscribe(c, ch)
				delete(c.listenSubs, ch)
			}
		}
		for _, ch := range want {
			if !c.listenSubs[ch] && c.listenHeld[ch] {
				if c.listenSubs == nil {
					c.listenSubs = map[string]bool{}
				}
				n.subscribe(c, ch)
				c.listenSubs[ch] = true
			}
		}
	}
	if rs.InTransaction() {
		return
	}
	for ch := range c.listenHeld {
		if !c.listenSubs[ch] {
			delete(c.listenHeld, ch)
			n.release(ch)
		}
	}
}

// dropListens gives back everything the connection holds; called once
// when it ends.
func (c *clientConn) dropListens() {
	c.mu.Lock()
	held, subs := c.listenHeld, c.listenSubs
	c.listenHeld, c.listenSubs = nil, nil
	c.mu.Unlock()
	if len(subs)+len(held) > 0 {
		n := c.notifier()
		for ch := range subs {
			n.unsubscribe(c, ch)
		}
		for ch := range held {
			n.release(ch)
		}
	}
	c.notes.mu.Lock()
	c.notes.dead, c.notes.buf = true, nil
	c.notes.mu.Unlock()
}
