package testbed

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
)

// NetworkOptions configures NewNetwork.
type NetworkOptions struct {
	// Name is part of the docker network's name ("dbproxy-testbed-<name>-<run>-<n>").
	Name string
	// Logf receives progress messages; nil discards them.
	Logf func(format string, args ...any)
}

// Network is a docker bridge network with a /24 subnet chosen by the testbed,
// so every container gets a fixed address (kept across Kill/Start and
// Disconnect/Reconnect). The host reaches every container at its address
// directly (no port mapping). Close removes every container started on it,
// then the network.
type Network struct {
	Name    string
	ID      string
	Subnet  netip.Prefix
	Gateway netip.Addr // the host's address on the network

	logf func(string, ...any)
	cli  *testcontainers.DockerClient

	mu         sync.Mutex
	next       int // host part of the next container address
	containers []*Container
	closed     bool
}

var netSeq struct {
	sync.Mutex
	n int
}

// NewNetwork creates a network. Errors wrap ErrNoEngine when the engine
// cannot be reached.
func NewNetwork(ctx context.Context, opts NetworkOptions) (*Network, error) {
	if opts.Name == "" {
		opts.Name = "net"
	}
	if !validName(opts.Name) {
		return nil, fmt.Errorf("%w: network name %q (want [a-z0-9-]+)", ErrBadOptions, opts.Name)
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	cli, err := docker(ctx)
	if err != nil {
		return nil, err
	}
	netSeq.Lock()
	netSeq.n++
	seq := netSeq.n
	netSeq.Unlock()
	name := fmt.Sprintf("dbproxy-testbed-%s-%s-%d", opts.Name, RunID(), seq)

	taken := hostRoutes()
	var lastErr error
	for range 40 {
		subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(150 + rand.IntN(100)), byte(rand.IntN(256)), 0}), 24)
		if overlapsAny(subnet, taken) {
			continue
		}
		gw := subnet.Addr().Next()
		res, err := cli.NetworkCreate(ctx, name, client.NetworkCreateOptions{
			Driver: "bridge",
			IPAM:   &network.IPAM{Driver: "default", Config: []network.IPAMConfig{{Subnet: subnet, Gateway: gw}}},
			Labels: labels("network"),
		})
		if err != nil {
			lastErr = err
			if strings.Contains(strings.ToLower(err.Error()), "overlap") {
				continue
			}
			return nil, fmt.Errorf("testbed: create network %s: %w", name, err)
		}
		logf("testbed: network %s %s", name, subnet)
		return &Network{Name: name, ID: res.ID, Subnet: subnet, Gateway: gw, logf: logf, cli: cli, next: 10}, nil
	}
	return nil, fmt.Errorf("testbed: create network %s: no free subnet: %w", name, lastErr)
}

// NewNetworkT is NewNetwork for tests: t.Fatal on error, Close in t.Cleanup.
func NewNetworkT(t testing.TB, opts NetworkOptions) *Network {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := cleanupContext()
	defer cancel()
	n, err := NewNetwork(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := cleanupContext()
		defer cancel()
		if err := n.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return n
}

// allocate returns the next free container address.
func (n *Network) allocate() (netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return netip.Addr{}, fmt.Errorf("testbed: network %s: %w", n.Name, ErrClosed)
	}
	if n.next > 250 {
		return netip.Addr{}, fmt.Errorf("%w: network %s is full", ErrBadOptions, n.Name)
	}
	a := n.Subnet.Addr().As4()
	a[3] = byte(n.next)
	n.next++
	return netip.AddrFrom4(a), nil
}

func (n *Network) add(c *Container) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return fmt.Errorf("testbed: network %s: %w", n.Name, ErrClosed)
	}
	n.containers = append(n.containers, c)
	return nil
}

// Close removes every container started on the network and the network
// itself. It is idempotent and safe to call concurrently with nothing else
// using the network.
func (n *Network) Close(ctx context.Context) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	cs := n.containers
	n.containers = nil
	n.mu.Unlock()

	var (
		wg   sync.WaitGroup
		emu  sync.Mutex
		errs []error
	)
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.remove(ctx); err != nil {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		}()
	}
	wg.Wait()
	if _, err := n.cli.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{}); err != nil && !isNotFound(err) {
		errs = append(errs, fmt.Errorf("testbed: remove network %s: %w", n.Name, err))
	}
	return errors.Join(errs...)
}

// hostRoutes lists the IPv4 destinations in the host's routing table, so a
// new subnet does not shadow one the host already uses.
func hostRoutes() []netip.Prefix {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []netip.Prefix
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 8 {
			continue
		}
		dst, err1 := hex.DecodeString(fs[1])
		mask, err2 := hex.DecodeString(fs[7])
		if err1 != nil || err2 != nil || len(dst) != 4 || len(mask) != 4 {
			continue
		}
		// /proc/net/route prints each address as a host-order (little
		// endian) number: the bytes come out reversed.
		ones := bits.OnesCount32(binary.BigEndian.Uint32(mask))
		if ones == 0 {
			continue // default route
		}
		a := [4]byte{dst[3], dst[2], dst[1], dst[0]}
		out = append(out, netip.PrefixFrom(netip.AddrFrom4(a), ones).Masked())
	}
	return out
}

func overlapsAny(p netip.Prefix, ps []netip.Prefix) bool {
	for _, q := range ps {
		if p.Overlaps(q) {
			return true
		}
	}
	return false
}

func isNotFound(err error) bool { return errdefs.IsNotFound(err) }

// validName accepts names usable in container and network names.
func validName(s string) bool {
	if s == "" || len(s) > 40 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}
