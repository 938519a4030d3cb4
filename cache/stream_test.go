package cache

import (
	"slices"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

func TestParseSnapshot(t *testing.T) {
	for _, tc := range []struct {
		text     string
		xid      uint32
		finished bool
	}{
		{"100:105:", 99, true},
		{"100:105:", 104, true},
		{"100:105:", 105, false}, // not yet completed in the proc array
		{"100:105:100,103", 103, false},
		{"100:105:100,103", 101, true},
		// xid8 values past the first epoch: compare the low 32 bits.
		{"4294967390:4294967400:4294967395", 94, true},
		{"4294967390:4294967400:4294967395", 99, false},
		// Wraparound: xmax just past 2^32, xid just below it.
		{"4294967290:4294967300:", 4294967294, true},
	} {
		snap, err := parseSnapshot(tc.text)
		if err != nil {
			t.Fatal(err)
		}
		if got := snap.finished(tc.xid); got != tc.finished {
			t.Errorf("%s finished(%d) = %v, want %v", tc.text, tc.xid, got, tc.finished)
		}
	}
	for _, bad := range []string{"", "1:2", "a:b:", "1:2:x"} {
		if _, err := parseSnapshot(bad); err == nil {
			t.Errorf("parseSnapshot(%q) accepted", bad)
		}
	}
}

func TestDecoderQueuesCommits(t *testing.T) {
	s := &stream{}
	d := &decoder{relations: map[uint32]string{}, touched: map[string]struct{}{}}
	ts := time.Now()
	feed := func(msgs ...pglogrepl.Message) {
		for _, m := range msgs {
			s.decode(d, m)
		}
	}
	feed(
		&pglogrepl.BeginMessage{Xid: 7, CommitTime: ts},
		&pglogrepl.RelationMessage{RelationID: 1, Namespace: "public", RelationName: "KV"},
		&pglogrepl.InsertMessage{RelationID: 1},
		&pglogrepl.RelationMessage{RelationID: 2, Namespace: "app", RelationName: "users"},
		&pglogrepl.UpdateMessage{RelationID: 2},
		&pglogrepl.DeleteMessage{RelationID: 1},
		&pglogrepl.CommitMessage{TransactionEndLSN: 500},
		// A truncate of a known relation.
		&pglogrepl.BeginMessage{Xid: 8},
		&pglogrepl.TruncateMessage{RelationIDs: []uint32{2}},
		&pglogrepl.CommitMessage{TransactionEndLSN: 600},
		// A change to a relation never described: flush everything.
		&pglogrepl.BeginMessage{Xid: 9},
		&pglogrepl.InsertMessage{RelationID: 3},
		&pglogrepl.CommitMessage{TransactionEndLSN: 700},
		// The relation described again after DDL (renamed): old and new.
		&pglogrepl.BeginMessage{Xid: 10},
		&pglogrepl.RelationMessage{RelationID: 1, Namespace: "public", RelationName: "kv2"},
		&pglogrepl.InsertMessage{RelationID: 1},
		&pglogrepl.CommitMessage{TransactionEndLSN: 800},
	)
	if len(d.queue) != 4 {
		t.Fatalf("queue %+v", d.queue)
	}
	want := []struct {
		xid    uint32
		lsn    uint64
		tables []string
		flush  bool
	}{
		{7, 500, []string{"kv", "users"}, false},
		{8, 600, []string{"users"}, false},
		{9, 700, []string{}, true},
		{10, 800, []string{"kv", "kv2"}, false},
	}
	for i, w := range want {
		q := d.queue[i]
		slices.Sort(q.tables)
		if q.xid != w.xid || q.lsn != w.lsn || q.flushAll != w.flush || !slices.Equal(q.tables, w.tables) {
			t.Errorf("commit %d = %+v, want %+v", i, q, w)
		}
	}
	if !d.queue[0].commitTime.Equal(ts) {
		t.Error("commit time not carried from Begin")
	}
}
