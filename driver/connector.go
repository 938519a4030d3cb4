package driver

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/dbproxy/dbproxy/cache"
	"github.com/dbproxy/dbproxy/config"
	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/dbproxy/dbproxy/shard"
)

func init() {
	sql.Register("dbproxy", &Driver{})
}

// Driver is the database/sql driver registered as "dbproxy". Each
// sql.Open builds its own Connector (and so its own replica sets); prefer
// one *sql.DB per process and configuration.
type Driver struct{}

var (
	_ driver.Driver        = (*Driver)(nil)
	_ driver.DriverContext = (*Driver)(nil)
)

// Open parses name as a DSN and returns a new connection. database/sql
// calls OpenConnector instead; Open exists for the Driver interface and
// builds a Connector per call, closed with the connection.
func (d *Driver) Open(name string) (driver.Conn, error) {
	c, err := d.OpenConnector(name)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cn, err := c.Connect(ctx)
	if err != nil {
		_ = c.(io.Closer).Close()
		return nil, err
	}
	cn.(*conn).ownsConnector = true
	return cn, nil
}

// OpenConnector parses name (see DSN) and returns a *Connector.
func (d *Driver) OpenConnector(name string) (driver.Connector, error) {
	dsn, err := ParseDSN(name)
	if err != nil {
		return nil, err
	}
	cfg, err := dsn.Config()
	if err != nil {
		return nil, err
	}
	var opts []Option
	if dsn.User != "" {
		opts = append(opts, WithUser(dsn.User))
	}
	if dsn.Database != "" {
		opts = append(opts, WithDatabase(dsn.Database))
	}
	return NewConnector(cfg, opts...)
}

// Option adjusts a Connector built by NewConnector.
type Option func(*options)

type options struct {
	user, database string
	logger         *slog.Logger
	functions      bool
}

// WithUser selects the [[users]] entry the connector logs in to the
// backends as (default: the first).
func WithUser(name string) Option { return func(o *options) { o.user = name } }

// WithDatabase selects the database (one of server.databases; default: the
// first).
func WithDatabase(name string) Option { return func(o *options) { o.database = name } }

// WithLogger sets the logger of the replica sets and the router (nil
// discards).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithoutFunctionCatalog stops the router from asking the default shard's
// primary for the volatility of user-defined functions (pg_proc): every
// statement calling one then goes to the primary.
func WithoutFunctionCatalog() Option { return func(o *options) { o.functions = false } }

// ErrClosed is returned by Connect and by statements of connections of a
// closed Connector. It wraps replica.ErrClosed (SQLSTATE 57P01).
var ErrClosed = fmt.Errorf("dbproxy driver: connector closed: %w", replica.ErrClosed)

// Connector is the shared runtime of one configuration: the router and one
// replica.Set (pools, probes, breakers) per shard. It implements
// driver.Connector for sql.OpenDB and io.Closer, so DB.Close stops the
// probes and closes the pools. The replica sets are built by the first
// Connect. A Connector is safe for concurrent use.
type Connector struct {
	cfg    *config.Config
	opts   options
	topo   *shard.Topology
	router *router.Router
	names  []string // shard names by ID

	mu     sync.Mutex
	sets   []*replica.Set // by shard.ID; nil until the first Connect
	cache  *cache.Cache   // [cache] enabled: built by the first Connect
	closed bool
}

var (
	_ driver.Connector = (*Connector)(nil)
	_ io.Closer        = (*Connector)(nil)
)

// NewConnector returns a Connector for cfg, which must be valid
// (config.Validate); cfg is copied. It does not connect or start anything:
// the first Connect builds the replica sets. Errors: cfg's Validate error,
// an unknown user or database, a topology error.
func NewConnector(cfg *config.Config, opts ...Option) (*Connector, error) {
	if cfg == nil {
		return nil, errors.New("dbproxy driver: nil config")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.Clone()
	o := options{functions: true}
	for _, f := range opts {
		f(&o)
	}
	if o.user == "" && len(cfg.Users) > 0 {
		o.user = cfg.Users[0].Name
	}
	if _, ok := cfg.User(o.user); !ok {
		return nil, fmt.Errorf("dbproxy driver: no [[users]] entry named %q", o.user)
	}
	if o.database == "" && len(cfg.Server.Databases) > 0 {
		o.database = cfg.Server.Databases[0]
	}
	if !slices.Contains(cfg.Server.Databases, o.database) {
		return nil, fmt.Errorf("dbproxy driver: database %q is not in server.databases", o.database)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	topo, err := cfg.Topology()
	if err != nil {
		return nil, err
	}
	c := &Connector{cfg: cfg, opts: o, topo: topo}
	for _, si := range topo.Shards() {
		c.names = append(c.names, si.Name)
	}
	rc := router.DefaultConfig()
	rc.Topology = router.NewStaticTopology(topo)
	rc.MaxStaleness = cfg.Routing.MaxStaleness.D()
	rc.Logger = o.logger
	if o.functions {
		rc.Functions = router.PgProcCatalog(c.queryPrimary)
	}
	r, err := router.New(rc)
	if err != nil {
		return nil, err
	}
	c.router = r
	return c, nil
}

// Driver returns the package's Driver.
func (c *Connector) Driver() driver.Driver { return &Driver{} }

// Connect returns a new connection: a router.Session, no backend yet.
// The first call builds the replica sets, probing every node once within
// ctx (unreachable nodes are marked down, not an error).
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	sets, err := c.runtime(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	ch := c.cache
	c.mu.Unlock()
	return newConn(c, sets, ch), nil
}

// runtime returns the replica sets, building them on first use.
func (c *Connector) runtime(ctx context.Context) ([]*replica.Set, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.sets != nil {
		return c.sets, nil
	}
	sets := make([]*replica.Set, len(c.names))
	for i, name := range c.names {
		rc, err := c.cfg.ReplicaConfig(name, c.opts.user, c.opts.database)
		if err == nil {
			rc.Logger = c.opts.logger
			sets[i], err = replica.NewSet(ctx, rc)
		}
		if err != nil {
			for _, s := range sets[:i] {
				_ = s.Close(context.WithoutCancel(ctx))
			}
			return nil, fmt.Errorf("dbproxy driver: shard %s: %w", name, err)
		}
	}
	if c.cfg.Cache.Enabled {
		ch, err := c.startCache(ctx)
		if err != nil {
			for _, s := range sets {
				_ = s.Close(context.WithoutCancel(ctx))
			}
			return nil, err
		}
		c.cache = ch
	}
	c.sets = sets
	return sets, nil
}

// Close stops the read-result cache's change streams (when enabled) and
// every replica set's probes and closes its idle backend connections,
// waiting up to 30 s. Connections still open fail their next
// statement with ErrClosed. A second Close returns nil.
func (c *Connector) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	sets, ch := c.sets, c.cache
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	if ch != nil {
		if err := ch.Close(ctx); err != nil && !errors.Is(err, cache.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for _, s := range sets {
		if err := s.Close(ctx); err != nil && !errors.Is(err, replica.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Stats returns a snapshot of every node of every shard (by shard name);
// nil before the first Connect.
func (c *Connector) Stats() map[string][]replica.NodeStats {
	c.mu.Lock()
	sets := c.sets
	c.mu.Unlock()
	if sets == nil {
		return nil
	}
	out := make(map[string][]replica.NodeStats, len(sets))
	for i, s := range sets {
		out[c.names[i]] = s.Stats()
	}
	return out
}

// Topology returns the shard topology the connector routes with.
func (c *Connector) Topology() *shard.Topology { return c.topo }

func (c *Connector) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// queryPrimary runs a catalog query (router.PgProcCatalog) on the
// default shard's primary.
func (c *Connector) queryPrimary(ctx context.Context, sql string, params ...[]byte) ([][][]byte, error) {
	sets, err := c.runtime(ctx)
	if err != nil {
		return nil, err
	}
	l, err := sets[c.topo.DefaultShard()].Primary().Acquire(ctx)
	if err != nil {
		return nil, err
	}
	res := l.Conn().ExecParams(ctx, sql, params, nil, nil, nil).Read()
	l.Release(res.Err)
	return res.Rows, res.Err
}
