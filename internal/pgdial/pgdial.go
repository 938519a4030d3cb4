package pgdial

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// sslRequestCode is the SSLRequest's request code (protocol version 1234.5679).
const sslRequestCode = 80877103

// Connect connects to the server cfg names, with sslmode=prefer negotiated
// on one connection (see the package documentation).
func Connect(ctx context.Context, cfg *pgconn.Config) (*pgconn.PgConn, error) {
	c := cfg.Copy()
	p := preferOnOne(c)
	conn, err := pgconn.ConnectConfig(ctx, c)
	if err == nil && p != nil {
		p.established(conn.Conn())
	}
	return conn, err
}

// States of a prefer dialer.
const (
	stateFirst    int32 = iota // the connect's first dial: negotiate TLS
	stateFallback              // pgconn's fallback attempt: no TLS
	stateTLS                   // connected over TLS: cancel connections negotiate TLS
	statePlain                 // connected without TLS: cancel connections are plain
)

// preferDialer dials for one connect of a single-host sslmode=prefer config.
type preferDialer struct {
	dial  func(ctx context.Context, network, addr string) (net.Conn, error)
	tls   *tls.Config
	state atomic.Int32
}

// preferOnOne rewrites c, a copy of a single-host sslmode=prefer config, so
// that its first dial negotiates TLS on the connection, and returns the
// dialer; nil (c untouched) for any other config.
//
// pgconn.ParseConfig expresses prefer as a TLS config with one fallback to
// the same host and port without TLS. That fallback stays: pgconn tries it
// when the first connection fails (TLS handshake or startup refused), and
// the dialer then dials without TLS.
func preferOnOne(c *pgconn.Config) *preferDialer {
	if c.TLSConfig == nil || len(c.Fallbacks) != 1 || c.SSLNegotiation == "direct" ||
		(c.SSLCertMode != "" && c.SSLCertMode != "allow") {
		return nil
	}
	fb := c.Fallbacks[0]
	if fb.Host != c.Host || fb.Port != c.Port || fb.TLSConfig != nil {
		return nil
	}
	p := &preferDialer{dial: c.DialFunc, tls: c.TLSConfig}
	c.TLSConfig = nil
	c.DialFunc = p.dialFunc
	return p
}

// established records how the connection came up, for later dials
// (pgconn's CancelRequest): TLS is asked for again only when it is TLS.
func (p *preferDialer) established(nc net.Conn) {
	if _, ok := nc.(*tls.Conn); ok {
		p.state.Store(stateTLS)
	} else {
		p.state.Store(statePlain)
	}
}

func (p *preferDialer) dialFunc(ctx context.Context, network, addr string) (net.Conn, error) {
	nc, err := p.dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if !p.state.CompareAndSwap(stateFirst, stateFallback) && p.state.Load() != stateTLS {
		return nc, nil
	}
	tc, err := negotiate(ctx, nc, p.tls)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return tc, nil
}

// negotiate sends SSLRequest on nc and returns a TLS client connection on
// it when the server answers 'S' (the handshake done), nc itself when it
// answers 'N'. ctx bounds the exchange.
func negotiate(ctx context.Context, nc net.Conn, cfg *tls.Config) (net.Conn, error) {
	if d, ok := ctx.Deadline(); ok {
		if err := nc.SetDeadline(d); err != nil {
			return nil, err
		}
		defer nc.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Now()) })
	defer stop()
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:4], 8)
	binary.BigEndian.PutUint32(req[4:8], sslRequestCode)
	if _, err := nc.Write(req[:]); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("pgdial: sending SSLRequest: %w", err))
	}
	var resp [1]byte
	if _, err := io.ReadFull(nc, resp[:]); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("pgdial: reading the SSLRequest answer: %w", err))
	}
	switch resp[0] {
	case 'N':
		return nc, nil
	case 'S':
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, ctxErr(ctx, fmt.Errorf("pgdial: TLS handshake: %w", err))
		}
		return tc, nil
	default:
		return nil, fmt.Errorf("pgdial: server answered SSLRequest with %q", resp[0])
	}
}

// ctxErr reports ctx's error, when ctx ended, beside err (a read or write
// the context's deadline interrupted).
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	return err
}
