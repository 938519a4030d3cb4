package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// writeConn records what is written to it.
type writeConn struct {
	net.Conn
	w      bytes.Buffer
	writes int
}

func (c *writeConn) Write(p []byte) (int, error) {
	c.writes++
	return c.w.Write(p)
}

// outConn is a clientConn whose box writes to a writeConn.
func outConn() (*clientConn, *writeConn) {
	wc := &writeConn{}
	b := newProtoBox()
	b.hold(wc, true, nil)
	return &clientConn{box: b, fe: b.fe}, wc
}

// brokenMessage is a backend message that cannot be encoded.
type brokenMessage struct{}

func (brokenMessage) Backend()                      {}
func (brokenMessage) Decode([]byte) error           { return nil }
func (brokenMessage) Encode([]byte) ([]byte, error) { return nil, errors.New("cannot encode") }

// resultRows makes rows DataRows: the row number and width bytes.
func resultRows(rows, width int) []pgproto3.BackendMessage {
	val := bytes.Repeat([]byte{'x'}, width)
	msgs := make([]pgproto3.BackendMessage, rows)
	for i := range msgs {
		msgs[i] = &pgproto3.DataRow{Values: [][]byte{[]byte(fmt.Sprint(i)), val}}
	}
	return msgs
}

var readyIdle = &pgproto3.ReadyForQuery{TxStatus: 'I'}

// queueResult queues msgs the way the pump does (a flush check after
// each) and a ReadyForQuery that forces the flush.
func queueResult(t testing.TB, c *clientConn, msgs []pgproto3.BackendMessage) {
	for _, m := range msgs {
		c.queue(m)
		if err := c.flushClientLocked(false); err != nil {
			t.Fatal(err)
		}
	}
	c.queue(readyIdle)
	if err := c.flushClientLocked(true); err != nil {
		t.Fatal(err)
	}
}

// checkResult decodes what was written and checks the rows and their order.
func checkResult(t *testing.T, wire []byte, rows, width int) {
	t.Helper()
	fe := pgproto3.NewFrontend(bytes.NewReader(wire), nil)
	fe.SetMaxBodyLen(0)
	for i := range rows {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
		dr, ok := msg.(*pgproto3.DataRow)
		if !ok || len(dr.Values) != 2 || string(dr.Values[0]) != fmt.Sprint(i) || len(dr.Values[1]) != width {
			t.Fatalf("row %d: got %T %v", i, msg, msg)
		}
	}
	if msg, err := fe.Receive(); err != nil {
		t.Fatal(err)
	} else if _, ok := msg.(*pgproto3.ReadyForQuery); !ok {
		t.Fatalf("after the rows: %T", msg)
	}
}

func TestQueueLongResultInPieces(t *testing.T) {
	c, wc := outConn()
	const rows, width = 5000, 100 // ~560 KB: many clientFlushBytes pieces
	queueResult(t, c, resultRows(rows, width))
	checkResult(t, wc.w.Bytes(), rows, width)
	if min := rows * (width + 15) / (2 * clientFlushBytes); wc.writes < min {
		t.Errorf("%d writes, want at least %d (pieces of ~%d bytes)", wc.writes, min, clientFlushBytes)
	}
	if c.box.big != nil || cap(c.box.out) > 2*smallOutBytes || c.unflushed != 0 {
		t.Errorf("after the reply: big %v, out cap %d, unflushed %d", c.box.big != nil, cap(c.box.out), c.unflushed)
	}

	// A short reply after it uses the box's small buffer and one write.
	wc.w.Reset()
	wc.writes = 0
	queueResult(t, c, resultRows(3, 10))
	checkResult(t, wc.w.Bytes(), 3, 10)
	if wc.writes != 1 || c.box.big != nil {
		t.Errorf("short reply: %d writes, big buffer %v", wc.writes, c.box.big != nil)
	}
}

func TestQueueOneLargeMessage(t *testing.T) {
	c, wc := outConn()
	const width = 3 << 20 // larger than a pooled buffer may grow
	queueResult(t, c, resultRows(1, width))
	checkResult(t, wc.w.Bytes(), 1, width)
	if c.box.big != nil || cap(c.box.out) > 2*smallOutBytes {
		t.Errorf("after the reply: big %v, out cap %d", c.box.big != nil, cap(c.box.out))
	}
}

func TestQueueEncodeError(t *testing.T) {
	c, wc := outConn()
	c.queue(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
	c.queue(brokenMessage{})
	if err := c.flushClientLocked(true); err == nil || err.Error() != "cannot encode" {
		t.Fatalf("flush after a message that cannot be encoded: %v", err)
	}
	// The messages queued around it are written; the error is reported once.
	queueResult(t, c, resultRows(2, 5))
	fe := pgproto3.NewFrontend(bytes.NewReader(wc.w.Bytes()), nil)
	if msg, err := fe.Receive(); err != nil {
		t.Fatal(err)
	} else if _, ok := msg.(*pgproto3.CommandComplete); !ok {
		t.Fatalf("first message %T", msg)
	}
	checkResult(t, wc.w.Bytes()[len("C\x00\x00\x00\x0dSELECT 1\x00"):], 2, 5)
}

// BenchmarkQueueLongResult writes a 1,000-row result (~110 KB) in
// clientFlushBytes pieces: through the box's buffers (out), and through
// pgproto3.Backend's Send/Flush as a baseline in the same run.
func BenchmarkQueueLongResult(b *testing.B) {
	const rows, width = 1000, 100
	b.Run("out", func(b *testing.B) {
		c, wc := outConn()
		msgs := resultRows(rows, width)
		b.ReportAllocs()
		for b.Loop() {
			wc.w.Reset()
			queueResult(b, c, msgs)
		}
	})
	b.Run("pgproto3", func(b *testing.B) {
		c, wc := outConn()
		c.box.traced = true // the Backend's own Send/Flush
		msgs := resultRows(rows, width)
		b.ReportAllocs()
		for b.Loop() {
			wc.w.Reset()
			queueResult(b, c, msgs)
		}
	})
}
