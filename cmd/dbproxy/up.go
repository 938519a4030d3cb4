package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/internal/pgcluster"
	"github.com/dbproxy/dbproxy/proxy"
)

// upOptions are the flags of `dbproxy up`.
type upOptions struct {
	dataDir   string
	shards    int
	standbys  int
	listen    string
	status    string
	noProxy   bool
	noRestart bool
}

const (
	upDatabase = "app"
	upUser     = "app"
	upPassword = "app"
)

func runUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o upOptions
	fs := newFlagSet("up [flags]", `Starts the embedded local default: real PostgreSQL clusters (one per shard,
each a primary plus hot standbys with streaming replication) on free loopback
ports, database "app" with user "app" / password "app" on every node, and the
proxy. Writes the generated config to DATA-DIR/dbproxy.toml, so that
'dbproxy serve --config DATA-DIR/dbproxy.toml' reuses it. A second 'up' on the
same directory reuses the data. A server that exits while up runs (a crash,
a kill, pg_ctl stop) is restarted unless --no-restart is given (to keep a
node down, say, to watch reads move off it). Ctrl-C or SIGTERM stops
everything; SIGHUP reloads the proxy's config (DATA-DIR/dbproxy.toml) as
serve does.`, stderr)
	fs.StringVar(&o.dataDir, "data-dir", ".dbproxy", "directory for the clusters and the generated config")
	fs.IntVar(&o.shards, "shards", 2, "number of shards (one cluster each)")
	fs.IntVar(&o.standbys, "standbys", 2, "hot standbys per shard")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:6432", "proxy listen address")
	fs.StringVar(&o.status, "status-listen", "127.0.0.1:6433", "HTTP address for /status and /metrics (\"\" disables)")
	fs.BoolVar(&o.noProxy, "no-proxy", false, "start the clusters and write the config, but do not serve")
	fs.BoolVar(&o.noRestart, "no-restart", false, "leave a server that exits down (default: restart it)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if o.shards < 1 || o.shards > 16 {
		return fmt.Errorf("--shards must be between 1 and 16, got %d", o.shards)
	}
	if o.standbys < 0 || o.standbys > 8 {
		return fmt.Errorf("--standbys must be between 0 and 8, got %d", o.standbys)
	}
	dir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}

	began := time.Now()
	fmt.Fprintf(stdout, "dbproxy up: starting %d shard(s), each 1 primary + %d hot standbys, in %s\n", o.shards, o.standbys, dir)
	clusters, err := startShards(ctx, dir, o)
	if err != nil {
		return err
	}
	defer stopShards(clusters, stderr)
	if !o.noRestart {
		// Deferred after stopShards, so it runs first: nothing is
		// restarted while the servers are being stopped.
		defer superviseNodes(ctx, clusters, stdout)()
	}

	cfg, err := upConfig(clusters, o)
	if err != nil {
		return err
	}
	if cfg.Server.TLSCert, cfg.Server.TLSKey, err = ensureTLSPair(filepath.Join(dir, "tls")); err != nil {
		return err
	}
	cfgPath := filepath.Join(dir, "dbproxy.toml")
	var srv *runningProxy
	if !o.noProxy {
		srv, err = startProxy(ctx, cfg, dir, stderr)
		if err != nil {
			return err
		}
		defer srv.stop(stderr)
		// Record the addresses actually bound (port 0 picks one), so that
		// status and serve find this proxy.
		cfg.Server.Listen, cfg.Server.StatusListen = srv.addr, srv.statusAddr
	}
	if err := writeConfig(cfgPath, cfg); err != nil {
		return err
	}
	printCluster(stdout, clusters, cfgPath)
	if srv != nil {
		fmt.Fprintf(stdout, "\nproxy listening on %s (TLS available, SCRAM-SHA-256)\n", srv.addr)
		fmt.Fprintf(stdout, "  psql \"postgres://%s:%s@%s/%s\"\n", upUser, upPassword, srv.addr, upDatabase)
		if srv.statusAddr != "" {
			fmt.Fprintf(stdout, "  status: dbproxy status --config %s   (or http://%s/status)\n", cfgPath, srv.statusAddr)
		}
	}
	fmt.Fprintf(stdout, "\nready in %s. Ctrl-C stops everything.\n", time.Since(began).Round(time.Millisecond))

	var serveErr error
	if srv != nil {
		serveErr = srv.serveUntilDone(ctx, cfgPath, "up", stdout, stderr)
	} else {
		// Nothing to reload; a hangup must not leave the servers running.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		<-ctx.Done()
	}
	fmt.Fprintln(stdout, "\ndbproxy up: stopping")
	return serveErr
}

// superviseInterval is how often `up` checks that every server runs.
const superviseInterval = 2 * time.Second

// superviseNodes starts a goroutine that restarts every node of clusters
// whose server exited (a crash, a kill, an OOM kill) until ctx ends or the
// returned stop is called; stop waits for it. A restarted standby resumes
// streaming from its replication slot; a restarted primary runs crash
// recovery first. A node that fails to start is tried again every
// superviseInterval (a failure is reported once, on the second try in a
// row, until the node comes back).
func superviseNodes(ctx context.Context, clusters []*pgcluster.Cluster, out io.Writer) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(superviseInterval)
		defer t.Stop()
		failing := map[string]int{} // consecutive failed starts, by node
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			for _, c := range clusters {
				for _, n := range c.Nodes() {
					if ctx.Err() != nil {
						return
					}
					if n.Running() {
						continue
					}
					if failing[n.Name] == 0 {
						fmt.Fprintf(out, "dbproxy up: %s is down; restarting it\n", n.Name)
					}
					began := time.Now()
					sctx, stopWait := context.WithTimeout(ctx, time.Minute)
					err := n.Start(sctx)
					stopWait()
					if err != nil {
						// The first try often meets the killed postmaster's
						// backends, still holding its shared memory for a
						// moment: report a failure that persists.
						if failing[n.Name]++; failing[n.Name] == 2 && ctx.Err() == nil {
							fmt.Fprintf(out, "dbproxy up: restarting %s: %v (trying again every %s)\n", n.Name, err, superviseInterval)
						}
						continue
					}
					delete(failing, n.Name)
					fmt.Fprintf(out, "dbproxy up: %s restarted in %s\n", n.Name, time.Since(began).Round(time.Millisecond))
				}
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// startShards starts one cluster per shard, concurrently, and waits until
// every standby streams and the app database and user exist.
func startShards(ctx context.Context, dir string, o upOptions) ([]*pgcluster.Cluster, error) {
	clusters := make([]*pgcluster.Cluster, o.shards)
	errs := make([]error, o.shards)
	var wg sync.WaitGroup
	for i := range clusters {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := "s" + strconv.Itoa(i)
			c, err := pgcluster.Start(ctx, pgcluster.Options{
				Dir:      filepath.Join(dir, name),
				Name:     name,
				Standbys: o.standbys,
			})
			if err != nil {
				errs[i] = fmt.Errorf("shard %s: %w", name, err)
				return
			}
			clusters[i] = c
			wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			if err := c.WaitStreaming(wctx); err != nil {
				errs[i] = fmt.Errorf("shard %s: waiting for streaming replication: %w", name, err)
				return
			}
			if err := c.CreateDatabase(wctx, upDatabase, upUser, upPassword); err != nil {
				errs[i] = fmt.Errorf("shard %s: creating database %s: %w", name, upDatabase, err)
				return
			}
			if err := prepareCacheStream(wctx, c); err != nil {
				errs[i] = fmt.Errorf("shard %s: %w", name, err)
			}
		}(i)
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		var started []*pgcluster.Cluster
		for _, c := range clusters {
			if c != nil {
				started = append(started, c)
			}
		}
		stopShards(started, io.Discard)
		return nil, err
	}
	return clusters, nil
}

// prepareCacheStream lets the app user open the cache's change stream: the
// REPLICATION attribute, and the FOR ALL TABLES publication the stream reads
// (creating one needs a superuser).
func prepareCacheStream(ctx context.Context, c *pgcluster.Cluster) error {
	conn, err := c.Primary().Connect(ctx, upDatabase)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, q := range []string{
		"ALTER ROLE " + upUser + " REPLICATION",
		`DO $$ BEGIN
		   IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'dbproxy_cache') THEN
		     CREATE PUBLICATION dbproxy_cache FOR ALL TABLES;
		   END IF;
		 END $$`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("preparing the cache change stream: %w", err)
		}
	}
	return nil
}

// stopShards stops every cluster, keeping their data. It uses its own
// deadline: the caller's context is usually already cancelled.
func stopShards(clusters []*pgcluster.Cluster, stderr io.Writer) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for _, c := range clusters {
		wg.Add(1)
		go func(c *pgcluster.Cluster) {
			defer wg.Done()
			if err := c.Stop(ctx); err != nil {
				fmt.Fprintf(stderr, "dbproxy up: stopping %s: %v\n", c.Name(), err)
			}
		}(c)
	}
	wg.Wait()
}

// upConfig is the configuration `dbproxy up` generates for its clusters.
func upConfig(clusters []*pgcluster.Cluster, o upOptions) (*config.Config, error) {
	cfg := config.Default()
	cfg.Server.Listen = o.listen
	cfg.Server.StatusListen = o.status
	cfg.Server.Databases = []string{upDatabase}
	cfg.Users = []config.User{{Name: upUser, Password: upPassword, Auth: config.AuthSCRAMSHA256}}
	cfg.Cache.Enabled = true
	// The local clusters serve plain TCP on loopback: no TLS round trip.
	// The proxy reaches each node on its Unix socket where it has one (a
	// write on it costs less CPU than one through loopback TCP).
	cfg.Backend.SSLMode = "disable"
	for _, c := range clusters {
		sh := config.Shard{Name: c.Name(), Weight: 1}
		for i, n := range c.Nodes() {
			role := config.RoleStandby
			if i == 0 {
				role = config.RolePrimary
			}
			sh.Nodes = append(sh.Nodes, config.Node{Name: n.Name, Host: n.LocalHost(), Port: n.Port, Role: role, Weight: 1})
		}
		cfg.Shards = append(cfg.Shards, sh)
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("generated config is invalid: %w", err)
	}
	return cfg, nil
}

// ensureTLSPair returns the paths of a self-signed certificate and key for
// 127.0.0.1 and localhost in dir, generating them on first use.
func ensureTLSPair(dir string) (certPath, keyPath string, err error) {
	certPath, keyPath = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if _, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		return certPath, keyPath, nil
	}
	certPEM, keyPEM, err := proxy.GenerateSelfSignedCert([]string{"127.0.0.1", "localhost"})
	if err != nil {
		return "", "", fmt.Errorf("generating TLS certificate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(certPath, certPEM, 0o644); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

func writeConfig(path string, cfg *config.Config) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	fmt.Fprintln(f, "# Generated by `dbproxy up`; `dbproxy serve --config` reads it. Edits are")
	fmt.Fprintln(f, "# overwritten by the next `dbproxy up` on this directory.")
	if err := cfg.Encode(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func printCluster(w io.Writer, clusters []*pgcluster.Cluster, cfgPath string) {
	for _, c := range clusters {
		fmt.Fprintf(w, "\nshard %s:\n", c.Name())
		for i, n := range c.Nodes() {
			role := "standby"
			if i == 0 {
				role = "primary"
			}
			fmt.Fprintf(w, "  %-8s %-14s postgres://%s:%s@%s:%d/%s\n", role, n.Name, upUser, upPassword, n.Host, n.Port, upDatabase)
		}
	}
	fmt.Fprintf(w, "\nconfig written to %s\n", cfgPath)
}
