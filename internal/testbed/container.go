package testbed

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tcexec "github.com/testcontainers/testcontainers-go/exec"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"
)

// Container is one node: a container with a fixed address on a Network, and
// the faults that can be applied to it. Fault methods are safe for
// concurrent use (they are serialised per container); each blocks until the
// engine has applied the change.
type Container struct {
	Name string     // node name; also its DNS alias on the network
	IP   netip.Addr // its address on the network, reachable from the host
	ID   string     // docker container id

	net *Network
	tc  *testcontainers.DockerContainer

	mu           sync.Mutex
	killed       bool
	paused       bool
	disconnected bool
	removed      bool
	chains       bool // iptables chains installed in the current boot
	latency      time.Duration
	loss         float64
	delay        *delayer
}

// containerSpec describes a container to start on a network.
type containerSpec struct {
	name   string     // node name
	role   string     // label value: "postgres", "etcd"
	cmd    []string   // main process; nil = the image's (sleep infinity)
	volume string     // path of an anonymous volume (data survives Kill/Start)
	ip     netip.Addr // address allocated beforehand; zero = allocate now
}

// start creates and starts a container from the node image on n.
func (n *Network) start(ctx context.Context, spec containerSpec) (*Container, error) {
	if !validName(spec.name) {
		return nil, fmt.Errorf("%w: node name %q (want [a-z0-9-]+)", ErrBadOptions, spec.name)
	}
	img, err := Image(ctx, n.logf)
	if err != nil {
		return nil, err
	}
	ip := spec.ip
	if !ip.IsValid() {
		if ip, err = n.allocate(); err != nil {
			return nil, err
		}
	}
	full := n.Name + "-" + spec.name
	opts := []testcontainers.ContainerCustomizer{
		testcontainers.WithName(full),
		testcontainers.WithLabels(labels(spec.role)),
		testcontainers.WithLogger(tclog.NewNoopLogger()), // our own Logf reports what matters
		tcnetwork.WithNetworkName([]string{spec.name}, n.Name),
		testcontainers.WithEndpointSettingsModifier(func(m map[string]*network.EndpointSettings) {
			es := m[n.Name]
			if es == nil {
				es = &network.EndpointSettings{Aliases: []string{spec.name}}
				m[n.Name] = es
			}
			es.IPAMConfig = &network.EndpointIPAMConfig{IPv4Address: ip}
		}),
		testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.NetworkMode = container.NetworkMode(n.Name)
			hc.CapAdd = append(hc.CapAdd, "NET_ADMIN") // iptables for loss and latency
			init := true
			hc.Init = &init // docker-init as pid 1 reaps daemonised children
			if spec.volume != "" {
				hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeVolume, Target: spec.volume})
			}
		}),
	}
	if spec.cmd != nil {
		opts = append(opts, testcontainers.WithCmd(spec.cmd...))
	}
	tc, err := testcontainers.Run(ctx, img, opts...)
	if tc != nil {
		c := &Container{Name: spec.name, IP: ip, ID: tc.GetContainerID(), net: n, tc: tc}
		if aerr := n.add(c); aerr != nil {
			_ = c.remove(ctx)
			return nil, aerr
		}
		if err != nil {
			return nil, fmt.Errorf("testbed: start container %s: %w", full, err)
		}
		n.logf("testbed: container %s at %s", full, ip)
		return c, nil
	}
	return nil, fmt.Errorf("testbed: start container %s: %w", full, err)
}

// String returns the node name and address.
func (c *Container) String() string { return c.Name + "@" + c.IP.String() }

// Exec runs cmd in the container as user ("" = root) and returns its
// combined output. A non-zero exit status is an error carrying the output.
func (c *Container) Exec(ctx context.Context, user string, cmd ...string) (string, error) {
	opts := []tcexec.ProcessOption{tcexec.Multiplexed()}
	if user != "" {
		opts = append(opts, tcexec.WithUser(user))
	}
	code, r, err := c.tc.Exec(ctx, cmd, opts...)
	if err != nil {
		return "", fmt.Errorf("testbed: %s: exec %s: %w", c.Name, strings.Join(cmd, " "), err)
	}
	out, _ := io.ReadAll(r)
	if code != 0 {
		return string(out), fmt.Errorf("testbed: %s: exec %q: exit status %d: %s", c.Name, strings.Join(cmd, " "), code, tail(string(out), 2000))
	}
	return string(out), nil
}

// Logs returns the container's output (its main process's stdout/stderr).
func (c *Container) Logs(ctx context.Context) (string, error) {
	rc, err := c.tc.Logs(ctx)
	if err != nil {
		return "", fmt.Errorf("testbed: %s: logs: %w", c.Name, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return string(b), err
}

// Kill SIGKILLs every process of the container at once, like a host losing
// power; its disk (the volume) survives. Latency and loss settings are lost
// with the network namespace. Start brings it back. Killing a paused
// container works.
func (c *Container) Kill(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.killed {
		return nil
	}
	if _, err := c.net.cli.ContainerKill(ctx, c.ID, client.ContainerKillOptions{Signal: "KILL"}); err != nil {
		return fmt.Errorf("testbed: kill %s: %w", c.Name, err)
	}
	c.killed, c.paused = true, false
	c.resetLinkLocked()
	return nil
}

// Start starts the container again after Kill, with the same address (and
// still disconnected if it was). The main process restarts; for a
// PostgreSQL node use Node.Start, which also starts the server.
func (c *Container) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.killed {
		return nil
	}
	// Wait for the engine to see the container as exited before starting.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := c.net.cli.ContainerInspect(ctx, c.ID, client.ContainerInspectOptions{})
		if err != nil {
			return fmt.Errorf("testbed: inspect %s: %w", c.Name, err)
		}
		if st.Container.State == nil || !st.Container.State.Running || time.Now().After(deadline) {
			break
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	if _, err := c.net.cli.ContainerStart(ctx, c.ID, client.ContainerStartOptions{}); err != nil {
		return fmt.Errorf("testbed: start %s: %w", c.Name, err)
	}
	c.killed = false
	return nil
}

// Pause freezes every process of the container (cgroup freezer): the kernel
// still completes TCP handshakes on its listening sockets, so connects
// succeed, but nothing is ever answered. Unpause thaws it.
func (c *Container) Pause(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.runningLocked(); err != nil {
		return err
	}
	if c.paused {
		return nil
	}
	if _, err := c.net.cli.ContainerPause(ctx, c.ID, client.ContainerPauseOptions{}); err != nil {
		return fmt.Errorf("testbed: pause %s: %w", c.Name, err)
	}
	c.paused = true
	return nil
}

// Unpause thaws a paused container.
func (c *Container) Unpause(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.paused {
		return nil
	}
	if _, err := c.net.cli.ContainerUnpause(ctx, c.ID, client.ContainerUnpauseOptions{}); err != nil {
		return fmt.Errorf("testbed: unpause %s: %w", c.Name, err)
	}
	c.paused = false
	return nil
}

// Disconnect detaches the container from the network: nothing reaches it
// and it reaches nothing (a full partition of this node). Open TCP
// connections are not reset; their packets are lost until Reconnect.
func (c *Container) Disconnect(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.disconnected {
		return nil
	}
	if c.removed {
		return fmt.Errorf("testbed: %s: %w", c.Name, ErrClosed)
	}
	if _, err := c.net.cli.NetworkDisconnect(ctx, c.net.ID, client.NetworkDisconnectOptions{Container: c.ID, Force: true}); err != nil {
		return fmt.Errorf("testbed: disconnect %s: %w", c.Name, err)
	}
	c.disconnected = true
	return nil
}

// Reconnect attaches the container to the network again, at the same
// address.
func (c *Container) Reconnect(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.disconnected {
		return nil
	}
	_, err := c.net.cli.NetworkConnect(ctx, c.net.ID, client.NetworkConnectOptions{
		Container: c.ID,
		EndpointConfig: &network.EndpointSettings{
			Aliases:    []string{c.Name},
			IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: c.IP},
		},
	})
	if err != nil {
		return fmt.Errorf("testbed: reconnect %s: %w", c.Name, err)
	}
	c.disconnected = false
	return nil
}

// Killed, Paused and Disconnected report the faults in force.
func (c *Container) Killed() bool       { c.mu.Lock(); defer c.mu.Unlock(); return c.killed }
func (c *Container) Paused() bool       { c.mu.Lock(); defer c.mu.Unlock(); return c.paused }
func (c *Container) Disconnected() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.disconnected }

// SetLatency delays every packet the container sends (to the host and to
// other containers; not loopback) by d, so a round trip to this node takes d
// longer. d = 0 removes the delay. The kernel holds the packets (NFQUEUE)
// and this process releases them; see doc.go. The setting lasts until
// changed, Kill, or Close.
func (c *Container) SetLatency(ctx context.Context, d time.Duration) error {
	if d < 0 || d > time.Minute {
		return fmt.Errorf("%w: latency %s (want 0..1m)", ErrBadOptions, d)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.runningLocked(); err != nil {
		return err
	}
	if c.paused {
		return fmt.Errorf("testbed: set latency on %s: %w", c.Name, ErrPaused)
	}
	if d == c.latency {
		return nil
	}
	if d == 0 {
		if _, err := c.Exec(ctx, "", "iptables", "-w", "-F", "TESTBED_DELAY"); err != nil {
			return err
		}
		err := c.delay.close()
		c.delay, c.latency = nil, 0
		return err
	}
	if err := c.chainsLocked(ctx); err != nil {
		return err
	}
	if c.delay != nil {
		c.delay.setDelay(d)
		c.latency = d
		return nil
	}
	pid, err := c.pid(ctx)
	if err != nil {
		return err
	}
	dl, err := newDelayer(pid, d)
	if err != nil {
		return fmt.Errorf("testbed: set latency on %s: %w", c.Name, err)
	}
	if _, err := c.Exec(ctx, "", "iptables", "-w", "-A", "TESTBED_DELAY", "!", "-o", "lo", "-j", "NFQUEUE",
		"--queue-num", strconv.Itoa(delayQueueNo), "--queue-bypass"); err != nil {
		_ = dl.close()
		return err
	}
	c.delay, c.latency = dl, d
	return nil
}

// SetLoss drops each packet the container sends (not loopback) with
// probability fraction (0 <= fraction <= 1; 0 removes the loss, 1 drops
// everything: a one-way partition). The setting lasts until changed or Kill.
func (c *Container) SetLoss(ctx context.Context, fraction float64) error {
	if math.IsNaN(fraction) || fraction < 0 || fraction > 1 {
		return fmt.Errorf("%w: loss %v (want 0..1)", ErrBadOptions, fraction)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.runningLocked(); err != nil {
		return err
	}
	if c.paused {
		return fmt.Errorf("testbed: set loss on %s: %w", c.Name, ErrPaused)
	}
	if fraction == c.loss {
		return nil
	}
	if err := c.chainsLocked(ctx); err != nil {
		return err
	}
	if _, err := c.Exec(ctx, "", "iptables", "-w", "-F", "TESTBED_LOSS"); err != nil {
		return err
	}
	c.loss = 0
	switch {
	case fraction == 0:
	case fraction == 1:
		if _, err := c.Exec(ctx, "", "iptables", "-w", "-A", "TESTBED_LOSS", "!", "-o", "lo", "-j", "DROP"); err != nil {
			return err
		}
	default:
		if _, err := c.Exec(ctx, "", "iptables", "-w", "-A", "TESTBED_LOSS", "!", "-o", "lo",
			"-m", "statistic", "--mode", "random", "--probability", strconv.FormatFloat(fraction, 'f', 6, 64), "-j", "DROP"); err != nil {
			return err
		}
	}
	c.loss = fraction
	return nil
}

// Latency and Loss report the current link settings.
func (c *Container) Latency() time.Duration { c.mu.Lock(); defer c.mu.Unlock(); return c.latency }
func (c *Container) Loss() float64          { c.mu.Lock(); defer c.mu.Unlock(); return c.loss }

// chainsLocked installs the testbed's OUTPUT chains once per boot: loss is
// decided before packets are queued for delay.
func (c *Container) chainsLocked(ctx context.Context) error {
	if c.chains {
		return nil
	}
	script := `set -e
iptables -w -N TESTBED_LOSS
iptables -w -N TESTBED_DELAY
iptables -w -A OUTPUT -j TESTBED_LOSS
iptables -w -A OUTPUT -j TESTBED_DELAY`
	if _, err := c.Exec(ctx, "", "sh", "-c", script); err != nil {
		return err
	}
	c.chains = true
	return nil
}

// resetLinkLocked forgets link settings after the network namespace died.
func (c *Container) resetLinkLocked() {
	if c.delay != nil {
		_ = c.delay.close()
	}
	c.delay, c.latency, c.loss, c.chains = nil, 0, 0, false
}

func (c *Container) runningLocked() error {
	if c.removed {
		return fmt.Errorf("testbed: %s: %w", c.Name, ErrClosed)
	}
	if c.killed {
		return fmt.Errorf("testbed: %s: %w", c.Name, ErrKilled)
	}
	return nil
}

// pid returns the host pid of the container's init process.
func (c *Container) pid(ctx context.Context) (int, error) {
	st, err := c.net.cli.ContainerInspect(ctx, c.ID, client.ContainerInspectOptions{})
	if err != nil {
		return 0, fmt.Errorf("testbed: inspect %s: %w", c.Name, err)
	}
	if st.Container.State == nil || st.Container.State.Pid <= 0 {
		return 0, fmt.Errorf("testbed: %s: %w", c.Name, ErrKilled)
	}
	return st.Container.State.Pid, nil
}

// remove deletes the container and its volume.
func (c *Container) remove(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return nil
	}
	c.removed = true
	c.resetLinkLocked()
	if _, err := c.net.cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !isNotFound(err) {
		return fmt.Errorf("testbed: remove %s: %w", c.Name, err)
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
