package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// EtcdOptions configures StartEtcd.
type EtcdOptions struct {
	// Network to run on; nil creates one that Stop removes.
	Network *Network
	// Name prefixes member names: "<name>-1", "<name>-2", ... Default "etcd".
	Name string
	// Members is the cluster size; default 3, at most 7.
	Members int
	// Logf receives progress messages; nil discards them.
	Logf func(format string, args ...any)
}

// Etcd is an etcd cluster (Debian's etcd-server, 3.4), one member per
// container. Each member's etcd is the container's main process, so
// Kill/Start on a member crash and restart it with its data.
type Etcd struct {
	net    *Network
	ownNet bool
	logf   func(string, ...any)

	mu      sync.Mutex
	members []*EtcdMember
	stopped bool
}

// EtcdMember is one etcd member. ClientURL is its client endpoint
// ("http://<ip>:2379"), reachable from the host. Faults come from the
// embedded Container.
type EtcdMember struct {
	*Container
	Name      string
	ClientURL string
	PeerURL   string
}

// StartEtcd starts an etcd cluster and waits until every member is healthy.
// On error everything started is removed.
func StartEtcd(ctx context.Context, opts EtcdOptions) (*Etcd, error) {
	if opts.Name == "" {
		opts.Name = "etcd"
	}
	if opts.Members == 0 {
		opts.Members = 3
	}
	if opts.Members < 1 || opts.Members > 7 {
		return nil, fmt.Errorf("%w: Members %d (want 1..7)", ErrBadOptions, opts.Members)
	}
	if !validName(opts.Name) {
		return nil, fmt.Errorf("%w: name %q (want [a-z0-9-]+)", ErrBadOptions, opts.Name)
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	e := &Etcd{net: opts.Network, logf: logf}
	if e.net == nil {
		n, err := NewNetwork(ctx, NetworkOptions{Name: opts.Name, Logf: logf})
		if err != nil {
			return nil, err
		}
		e.net, e.ownNet = n, true
	}
	if err := e.start(ctx, opts); err != nil {
		sctx, cancel := cleanupContext()
		defer cancel()
		return nil, errors.Join(err, e.Stop(sctx))
	}
	return e, nil
}

// StartEtcdT is StartEtcd for tests: t.Fatal on error, Stop in t.Cleanup.
func StartEtcdT(t testing.TB, opts EtcdOptions) *Etcd {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e, err := StartEtcd(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := cleanupContext()
		defer cancel()
		if err := e.Stop(ctx); err != nil {
			t.Error(err)
		}
	})
	return e
}

func (e *Etcd) start(ctx context.Context, opts EtcdOptions) error {
	if _, err := Image(ctx, e.logf); err != nil {
		return err
	}
	names := make([]string, opts.Members)
	ips := make([]netip.Addr, opts.Members)
	var initial []string
	for i := range names {
		names[i] = fmt.Sprintf("%s-%d", opts.Name, i+1)
		ip, err := e.net.allocate()
		if err != nil {
			return err
		}
		ips[i] = ip
		initial = append(initial, fmt.Sprintf("%s=http://%s:2380", names[i], ip))
	}
	token := e.net.Name + "-" + opts.Name
	members := make([]*EtcdMember, len(names))
	g, gctx := errgroup.WithContext(ctx)
	for i, name := range names {
		g.Go(func() error {
			ip := ips[i].String()
			cmd := []string{"etcd",
				"--name", name,
				"--data-dir", "/var/lib/etcd/data",
				"--listen-client-urls", "http://0.0.0.0:2379",
				"--advertise-client-urls", "http://" + ip + ":2379",
				"--listen-peer-urls", "http://0.0.0.0:2380",
				"--initial-advertise-peer-urls", "http://" + ip + ":2380",
				"--initial-cluster", strings.Join(initial, ","),
				"--initial-cluster-token", token,
				"--initial-cluster-state", "new",
				"--logger", "zap", "--log-level", "warn",
			}
			ct, err := e.net.start(gctx, containerSpec{name: name, role: "etcd", cmd: cmd, volume: "/var/lib/etcd", ip: ips[i]})
			if err != nil {
				return err
			}
			members[i] = &EtcdMember{Container: ct, Name: name, ClientURL: "http://" + ip + ":2379", PeerURL: "http://" + ip + ":2380"}
			return nil
		})
	}
	err := g.Wait()
	e.mu.Lock()
	for _, m := range members {
		if m != nil {
			e.members = append(e.members, m)
		}
	}
	e.mu.Unlock()
	if err != nil {
		return err
	}
	return e.WaitHealthy(ctx)
}

// Members returns the members in order.
func (e *Etcd) Members() []*EtcdMember {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.members)
}

// Endpoints returns every member's client URL, for clientv3.Config.Endpoints.
func (e *Etcd) Endpoints() []string {
	var out []string
	for _, m := range e.Members() {
		out = append(out, m.ClientURL)
	}
	return out
}

// Network returns the network the cluster runs on.
func (e *Etcd) Network() *Network { return e.net }

// WaitHealthy waits until every member that can (neither killed, paused nor
// disconnected) reports healthy on /health: it has a leader and serves
// reads.
func (e *Etcd) WaitHealthy(ctx context.Context) error {
	for _, m := range e.Members() {
		if m.Killed() || m.Paused() || m.Disconnected() {
			continue
		}
		if err := m.WaitHealthy(ctx); err != nil {
			return err
		}
	}
	return nil
}

// WaitHealthy waits until this member reports healthy.
func (m *EtcdMember) WaitHealthy(ctx context.Context) error {
	var last error
	for {
		last = m.Healthy(ctx)
		if last == nil {
			return nil
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			logs, _ := m.Logs(context.WithoutCancel(ctx))
			return fmt.Errorf("testbed: etcd %s not healthy: %w (last: %v)\n%s", m.Name, err, last, tail(logs, 2000))
		}
	}
}

// Healthy asks the member's /health endpoint once (2 s timeout).
func (m *EtcdMember) Healthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.ClientURL+"/health", nil)
	if err != nil {
		return err
	}
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return err
	}
	var h struct {
		Health string `json:"health"`
	}
	if err := json.Unmarshal(body, &h); err != nil || h.Health != "true" {
		return fmt.Errorf("etcd %s /health: %s %s", m.Name, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// Stop removes every member's container (and the network, if StartEtcd
// created it). Idempotent.
func (e *Etcd) Stop(ctx context.Context) error {
	e.mu.Lock()
	if e.stopped {
		e.mu.Unlock()
		return nil
	}
	e.stopped = true
	members := slices.Clone(e.members)
	e.mu.Unlock()
	if e.ownNet {
		return e.net.Close(ctx)
	}
	var errs []error
	for _, m := range members {
		errs = append(errs, m.remove(ctx))
	}
	return errors.Join(errs...)
}
