package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The process-wide engine client keeps idle HTTP connections to the
		// docker socket.
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
	)
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// probe is a health check: connect and SELECT 1 within timeout.
func probe(ctx context.Context, n *Node, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := n.Connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		return err
	}
	if one != 1 {
		return fmt.Errorf("SELECT 1 returned %d", one)
	}
	return nil
}

// eventually polls fn until it returns nil or d passes.
func eventually(ctx context.Context, d time.Duration, fn func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		if serr := sleepCtx(ctx, 100*time.Millisecond); serr != nil {
			return errors.Join(err, serr)
		}
	}
}

func lsnOf(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestParseLSN(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"0/0", 0, true},
		{"16/B374D848", 0x16_B374D848, true},
		{"FFFFFFFF/FFFFFFFF", ^uint64(0), true},
		{"", 0, false},
		{"16", 0, false},
		{"/1", 0, false},
		{"1/", 0, false},
		{"123456789/0", 0, false},
		{"G/0", 0, false},
	} {
		got, err := ParseLSN(tc.in)
		if tc.ok && (err != nil || got != tc.want) {
			t.Errorf("ParseLSN(%q) = %x, %v; want %x", tc.in, got, err, tc.want)
		}
		if !tc.ok && !errors.Is(err, ErrBadLSN) {
			t.Errorf("ParseLSN(%q) error = %v; want ErrBadLSN", tc.in, err)
		}
		if tc.ok && FormatLSN(got) != tc.in {
			t.Errorf("FormatLSN(%x) = %q; want %q", got, FormatLSN(got), tc.in)
		}
	}
}

func TestBadOptions(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	if _, err := Start(ctx, Options{Name: "Bad Name"}); !errors.Is(err, ErrBadOptions) {
		t.Errorf("Start with bad name: %v; want ErrBadOptions", err)
	}
	if _, err := Start(ctx, Options{Standbys: -1}); !errors.Is(err, ErrBadOptions) {
		t.Errorf("Start with -1 standbys: %v; want ErrBadOptions", err)
	}
	if _, err := Start(ctx, Options{Settings: map[string]string{"x'; drop": "1"}}); !errors.Is(err, ErrBadOptions) {
		t.Errorf("Start with bad setting: %v; want ErrBadOptions", err)
	}
	if _, err := StartEtcd(ctx, EtcdOptions{Members: 9}); !errors.Is(err, ErrBadOptions) {
		t.Errorf("StartEtcd with 9 members: %v; want ErrBadOptions", err)
	}
}

// TestReapStale: objects labelled by a process that has exited are removed
// when the testbed first connects; this process's own objects are not.
func TestReapStale(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	cli, err := docker(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A pid that certainly exited: a finished child.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := map[string]string{
		LabelTestbed: "1", labelRun: "deadbeef0000", labelPID: strconv.Itoa(cmd.Process.Pid), labelPIDStart: "1",
	}
	name := "dbproxy-testbed-staletest-" + RunID()
	res, err := cli.NetworkCreate(ctx, name, client.NetworkCreateOptions{Driver: "bridge", Labels: dead})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = cli.NetworkRemove(context.Background(), res.ID, client.NetworkRemoveOptions{}) })
	own := NewNetworkT(t, NetworkOptions{Name: "own"})

	if err := reapStale(ctx, cli); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.NetworkInspect(ctx, res.ID, client.NetworkInspectOptions{}); !isNotFound(err) {
		t.Errorf("stale network still there after reap (inspect err %v)", err)
	}
	if _, err := cli.NetworkInspect(ctx, own.ID, client.NetworkInspectOptions{}); err != nil {
		t.Errorf("own network removed by reap: %v", err)
	}
}

// TestPostgresFaults runs the PostgreSQL faults on one cluster (a primary
// and two standbys), each subtest undoing its fault.
func TestPostgresFaults(t *testing.T) {
	t.Parallel()
	c := StartT(t, Options{Name: "faults", Standbys: 2})
	ctx := testCtx(t, 10*time.Minute)
	primary := c.Primary()
	sb := c.Standbys()
	if len(sb) != 2 || len(c.Nodes()) != 3 {
		t.Fatalf("nodes: %d standbys, %d nodes", len(sb), len(c.Nodes()))
	}
	for _, n := range c.Nodes() {
		if n.Host == primary.Host && n != primary {
			t.Fatalf("nodes share an address: %s", n.Host)
		}
	}
	conn, err := primary.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE TABLE t (id serial PRIMARY KEY, v text)"); err != nil {
		t.Fatal(err)
	}
	write := func(n int) uint64 {
		t.Helper()
		for range n {
			if _, err := conn.Exec(ctx, "INSERT INTO t (v) SELECT repeat('x', 200) FROM generate_series(1, 50)"); err != nil {
				t.Fatal(err)
			}
		}
		l, err := primary.LSNs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return l.CurrentLSN
	}

	t.Run("Topology", func(t *testing.T) {
		pl, err := primary.LSNs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if pl.InRecovery || pl.CurrentLSN == 0 {
			t.Fatalf("primary LSNs %+v", pl)
		}
		for _, s := range sb {
			l, err := s.LSNs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !l.InRecovery || l.ReceiveLSN == 0 {
				t.Fatalf("standby %s LSNs %+v", s.Name, l)
			}
		}
		// Each standby replicates from the primary's address through its slot.
		rows, err := conn.Query(ctx, "SELECT slot_name FROM pg_replication_slots WHERE active ORDER BY 1")
		if err != nil {
			t.Fatal(err)
		}
		var slots []string
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			slots = append(slots, s)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if want := []string{"faults_standby1", "faults_standby2"}; !slices.Equal(slots, want) {
			t.Fatalf("active slots %v; want %v", slots, want)
		}
		var addr string
		if err := conn.QueryRow(ctx, "SELECT client_addr::text FROM pg_stat_replication WHERE application_name = $1", sb[0].Name).Scan(&addr); err != nil {
			t.Fatal(err)
		}
		if addr != sb[0].Host+"/32" && addr != sb[0].Host {
			t.Fatalf("standby1 replicates from %s; want its own address %s", addr, sb[0].Host)
		}
		if err := c.CreateDatabase(ctx, "app", "appuser", "s3cret'pw"); err != nil {
			t.Fatal(err)
		}
		if err := sb[1].WaitReplay(ctx, write(1)); err != nil {
			t.Fatal(err)
		}
		got, err := sb[1].Psql(ctx, "app", "SELECT current_database()")
		if err != nil || got != "app" {
			t.Fatalf("database app on standby: %q, %v", got, err)
		}
	})

	t.Run("PartitionedStandbyLagsThenCatchesUp", func(t *testing.T) {
		s := sb[0]
		if err := s.WaitReplay(ctx, write(1)); err != nil {
			t.Fatal(err)
		}
		if err := s.Disconnect(ctx); err != nil {
			t.Fatal(err)
		}
		reconnected := false
		defer func() {
			if !reconnected {
				_ = s.Reconnect(context.Background())
			}
		}()
		// The host cannot reach it any more.
		if err := probe(ctx, s, 2*time.Second); err == nil {
			t.Fatal("partitioned standby answered a probe from the host")
		}
		// Primary writes continue; the standby receives nothing.
		var target uint64
		var gap uint64
		for range 5 {
			target = write(20)
			out, err := s.Psql(ctx, "postgres", "SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()")
			if err != nil {
				t.Fatal(err)
			}
			rcv, rep, ok := strings.Cut(out, "|")
			if !ok {
				t.Fatalf("psql output %q", out)
			}
			if lsnOf(t, rep) >= target || lsnOf(t, rcv) >= target {
				t.Fatalf("partitioned standby reached %s/%s, primary at %s", rcv, rep, FormatLSN(target))
			}
			if g := target - lsnOf(t, rep); g <= gap {
				t.Fatalf("lag did not grow: %d then %d bytes", gap, g)
			} else {
				gap = g
			}
			if err := sleepCtx(ctx, 300*time.Millisecond); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("lag while partitioned: %d bytes", gap)
		if err := s.Reconnect(ctx); err != nil {
			t.Fatal(err)
		}
		reconnected = true
		start := time.Now()
		wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		if err := s.WaitReplay(wctx, target); err != nil {
			t.Fatal(err)
		}
		t.Logf("caught up %s after reconnect", time.Since(start).Round(time.Millisecond))
		if err := c.WaitStreaming(wctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("PausedPrimaryFailsHealthCheck", func(t *testing.T) {
		if err := probe(ctx, primary, 2*time.Second); err != nil {
			t.Fatalf("probe before pause: %v", err)
		}
		if err := primary.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		paused := true
		defer func() {
			if paused {
				_ = primary.Unpause(context.Background())
			}
		}()
		// The kernel still completes the TCP handshake of a frozen server.
		d := net.Dialer{Timeout: 2 * time.Second}
		tcp, err := d.DialContext(ctx, "tcp", net.JoinHostPort(primary.Host, strconv.Itoa(primary.Port)))
		if err != nil {
			t.Fatalf("TCP connect to paused primary: %v (the kernel should accept)", err)
		}
		tcp.Close()
		start := time.Now()
		err = probe(ctx, primary, 2*time.Second)
		if err == nil {
			t.Fatal("paused primary passed a health check")
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Logf("probe error (not a bare deadline): %v", err)
		}
		t.Logf("probe failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
		if err := primary.Unpause(ctx); err != nil {
			t.Fatal(err)
		}
		paused = false
		if err := eventually(ctx, 30*time.Second, func() error { return probe(ctx, primary, 2*time.Second) }); err != nil {
			t.Fatalf("probe after unpause: %v", err)
		}
	})

	t.Run("LatencyShowsInRoundTrips", func(t *testing.T) {
		s := sb[1]
		sc, err := s.Connect(ctx, "postgres")
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close(context.Background())
		median := func() time.Duration {
			t.Helper()
			var ds []time.Duration
			for range 15 {
				start := time.Now()
				if _, err := sc.Exec(ctx, "SELECT 1"); err != nil {
					t.Fatal(err)
				}
				ds = append(ds, time.Since(start))
			}
			slices.Sort(ds)
			return ds[len(ds)/2]
		}
		before := median()
		if err := s.SetLatency(ctx, 100*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		during := median()
		if err := s.SetLatency(ctx, 0); err != nil {
			t.Fatal(err)
		}
		after := median()
		t.Logf("median SELECT 1: before %s, with 100ms delay %s, after removal %s", before, during, after)
		if during-before < 80*time.Millisecond {
			t.Fatalf("100ms delay added only %s to the median round trip", during-before)
		}
		if during-after < 80*time.Millisecond {
			t.Fatalf("removing the delay saved only %s", during-after)
		}
	})

	t.Run("LossDropsTraffic", func(t *testing.T) {
		s := sb[1]
		if err := s.SetLoss(ctx, 1); err != nil {
			t.Fatal(err)
		}
		if err := probe(ctx, s, 2*time.Second); err == nil {
			_ = s.SetLoss(context.Background(), 0)
			t.Fatal("node with 100% loss answered a probe")
		}
		if err := s.SetLoss(ctx, 0.2); err != nil {
			t.Fatal(err)
		}
		if got := s.Loss(); got != 0.2 {
			t.Fatalf("Loss() = %v", got)
		}
		if err := s.SetLoss(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if err := eventually(ctx, 30*time.Second, func() error { return probe(ctx, s, 2*time.Second) }); err != nil {
			t.Fatalf("probe after removing loss: %v", err)
		}
		if err := s.SetLoss(ctx, 1.5); !errors.Is(err, ErrBadOptions) {
			t.Fatalf("SetLoss(1.5) = %v; want ErrBadOptions", err)
		}
	})

	t.Run("KilledStandbyComesBackAndCatchesUp", func(t *testing.T) {
		s := sb[1]
		if err := s.Kill(ctx); err != nil {
			t.Fatal(err)
		}
		if err := probe(ctx, s, 2*time.Second); err == nil {
			t.Fatal("killed standby answered")
		}
		if err := s.SetLatency(ctx, time.Millisecond); !errors.Is(err, ErrKilled) {
			t.Fatalf("SetLatency on killed node = %v; want ErrKilled", err)
		}
		target := write(10)
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		if err := s.WaitReplay(wctx, target); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitStreaming(wctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("KilledServerRestarts", func(t *testing.T) {
		s := sb[1]
		if err := s.KillServer(ctx); err != nil {
			t.Fatal(err)
		}
		if s.Killed() {
			t.Fatal("KillServer killed the container")
		}
		if err := probe(ctx, s, 2*time.Second); err == nil {
			t.Fatal("standby answered after KillServer")
		}
		target := write(1)
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.WaitReplay(ctx, target); err != nil {
			t.Fatal(err)
		}
	})

	// Last: it changes the topology. The primary dies, standby1 is promoted
	// and standby2 follows it onto the new timeline.
	t.Run("FailoverPromoteAndFollow", func(t *testing.T) {
		target := write(1)
		for _, s := range sb {
			if err := s.WaitReplay(ctx, target); err != nil {
				t.Fatal(err)
			}
		}
		var rows int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if err := primary.Kill(ctx); err != nil {
			t.Fatal(err)
		}
		if err := sb[0].Promote(ctx); err != nil {
			t.Fatal(err)
		}
		if c.Primary() != sb[0] {
			t.Fatalf("Primary() = %s after promoting %s", c.Primary().Name, sb[0].Name)
		}
		if err := sb[1].Follow(ctx, sb[0]); err != nil {
			t.Fatal(err)
		}
		nc, err := sb[0].Connect(ctx, "postgres")
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close(context.Background())
		if _, err := nc.Exec(ctx, "INSERT INTO t (v) VALUES ('after failover')"); err != nil {
			t.Fatal(err)
		}
		l, err := sb[0].LSNs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if l.InRecovery {
			t.Fatal("promoted node still in recovery")
		}
		wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		if err := sb[1].WaitReplay(wctx, l.CurrentLSN); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitStreaming(wctx); err != nil {
			t.Fatal(err)
		}
		got, err := sb[1].Psql(ctx, "postgres", "SELECT count(*) FROM t")
		if err != nil || got != strconv.Itoa(rows+1) {
			t.Fatalf("rows on the follower: %q (%v); want %d", got, err, rows+1)
		}
	})
}

// TestEtcdQuorum: a killed member (the leader) leaves a working two-member
// quorum; partitioning one more loses quorum; healing restores it.
func TestEtcdQuorum(t *testing.T) {
	t.Parallel()
	e := StartEtcdT(t, EtcdOptions{Name: "quorum"})
	ctx := testCtx(t, 5*time.Minute)
	members := e.Members()
	if len(members) != 3 || len(e.Endpoints()) != 3 {
		t.Fatalf("%d members", len(members))
	}
	newClient := func(eps []string) *clientv3.Client {
		t.Helper()
		cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cli.Close() })
		return cli
	}
	all := newClient(e.Endpoints())
	put := func(cli *clientv3.Client, k, v string, timeout time.Duration) error {
		c, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		_, err := cli.Put(c, k, v)
		return err
	}
	if err := put(all, "k", "v0", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// Kill the leader: the worst member to lose.
	var leader *EtcdMember
	for _, m := range members {
		st, err := all.Status(ctx, m.ClientURL)
		if err != nil {
			t.Fatal(err)
		}
		if st.Leader == st.Header.MemberId {
			leader = m
		}
	}
	if leader == nil {
		t.Fatal("no leader")
	}
	if err := leader.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	var rest []*EtcdMember
	var restEps []string
	for _, m := range members {
		if m != leader {
			rest = append(rest, m)
			restEps = append(restEps, m.ClientURL)
		}
	}
	two := newClient(restEps)
	if err := eventually(ctx, 60*time.Second, func() error { return put(two, "k", "v1", 3*time.Second) }); err != nil {
		t.Fatalf("put with two members: %v", err)
	}
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	resp, err := two.Get(gctx, "k")
	cancel()
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" {
		t.Fatalf("get with two members: %v %v", resp, err)
	}

	// Partition one of the two: no quorum, writes fail.
	if err := rest[1].Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	one := newClient([]string{rest[0].ClientURL})
	// A timed-out put has an unknown outcome: etcd may still commit it once
	// the partition heals, so it uses a key of its own.
	if err := put(one, "during-partition", "x", 3*time.Second); err == nil {
		t.Fatal("put succeeded with one of three members reachable")
	}
	if err := rest[1].Reconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := eventually(ctx, 60*time.Second, func() error { return put(one, "k", "v3", 3*time.Second) }); err != nil {
		t.Fatalf("put after healing the partition: %v", err)
	}
	// The killed leader rejoins with its data.
	if err := leader.Start(ctx); err != nil {
		t.Fatal(err)
	}
	hctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := e.WaitHealthy(hctx); err != nil {
		t.Fatal(err)
	}
	back := newClient([]string{leader.ClientURL})
	if err := eventually(ctx, 30*time.Second, func() error {
		c, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		r, err := back.Get(c, "k")
		if err != nil {
			return err
		}
		if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v3" {
			return fmt.Errorf("restarted member reads %v", r.Kvs)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestMissingBuilderFailsLoudly(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, _, err := findBuilder(context.Background())
	if !errors.Is(err, ErrMissingTool) || !strings.Contains(err.Error(), "apt-get install -y mmdebstrap") {
		t.Fatalf("findBuilder without mmdebstrap: %v", err)
	}
}

func TestImageTag(t *testing.T) {
	a := imageTag("mmdebstrap 1.3.5", DefaultMirror)
	if a != imageTag("mmdebstrap 1.3.5", DefaultMirror) || len(a) != 16 {
		t.Fatalf("imageTag not stable: %q", a)
	}
	if a == imageTag("mmdebstrap 1.3.6", DefaultMirror) {
		t.Error("builder version not part of the tag")
	}
	if a == imageTag("mmdebstrap 1.3.5", "http://example.invalid/debian") {
		t.Error("mirror not part of the tag")
	}
}

func TestLockFileExcludes(t *testing.T) {
	path := t.TempDir() + "/lock"
	unlock, err := lockFile(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	// flock locks belong to the open file description: a second open in
	// this process contends like another process would.
	if _, err := lockFile(ctx, path); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second lock while held: %v", err)
	}
	unlock()
	unlock2, err := lockFile(context.Background(), path)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
}

// TestNetworkAddressing: a network's subnet shows up in the host's routes
// (the host reaches containers directly), and Close removes it.
func TestNetworkAddressing(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	n, err := NewNetwork(ctx, NetworkOptions{Name: "addr"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(hostRoutes(), n.Subnet) {
		_ = n.Close(ctx)
		t.Fatalf("subnet %s not in host routes %v", n.Subnet, hostRoutes())
	}
	a1, _ := n.allocate()
	a2, _ := n.allocate()
	if !n.Subnet.Contains(a1) || a1 == a2 || a1 == n.Gateway {
		t.Errorf("allocated %s, %s in %s (gateway %s)", a1, a2, n.Subnet, n.Gateway)
	}
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := n.allocate(); !errors.Is(err, ErrClosed) {
		t.Errorf("allocate after Close: %v", err)
	}
	if _, err := n.cli.NetworkInspect(ctx, n.ID, client.NetworkInspectOptions{}); !isNotFound(err) {
		t.Errorf("network still exists after Close: %v", err)
	}
	if err := n.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestImage: the node image exists after Image, and a second call reuses it.
func TestImage(t *testing.T) {
	ctx := testCtx(t, 10*time.Minute)
	start := time.Now()
	ref, err := Image(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Image: %s in %s", ref, time.Since(start).Round(time.Millisecond))
	if !strings.HasPrefix(ref, imageRepo+":") {
		t.Fatalf("ref %q", ref)
	}
	cli, err := docker(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.ImageInspect(ctx, ref); err != nil {
		t.Fatalf("image %s not in the engine: %v", ref, err)
	}
	again, err := Image(ctx, t.Logf)
	if err != nil || again != ref {
		t.Fatalf("second Image = %q, %v; want %q", again, err, ref)
	}
}
