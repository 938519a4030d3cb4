package config

import (
	"slices"
	"strings"
	"time"
)

// Config is the whole dbproxy configuration: one TOML file.
// Build one with Default (then fill Shards, Users, Server.Databases) or
// with Parse/Load. The zero Config is not useful.
type Config struct {
	Server  Server  `toml:"server"`
	Users   []User  `toml:"users"`
	Shards  []Shard `toml:"shards"`
	Tables  []Table `toml:"tables"`
	Routing Routing `toml:"routing"`
	Pool    Pool    `toml:"pool"`
	Breaker Breaker `toml:"breaker"`
	Cache   Cache   `toml:"cache"`
	Backend Backend `toml:"backend"`

	// pos holds source positions when the Config came from Parse/Load, so
	// Validate can name lines. Never serialised, ignored by Diff.
	pos positions
}

// Server is the [server] table: the client-facing listener.
type Server struct {
	// Listen is the PostgreSQL-protocol listen address, host:port.
	// Port 0 picks a free port (tests).
	Listen string `toml:"listen"`
	// UnixSocketDir, when set, also serves clients on the Unix socket
	// UnixSocketDir/.s.PGSQL.<port of Listen>, where libpq-based clients
	// on this machine find it with host=UnixSocketDir (as for
	// PostgreSQL). An absolute path; "" (default) serves TCP only.
	// Clients on the socket are not asked for TLS (tls_required applies
	// to TCP clients), as PostgreSQL's local connections are not.
	UnixSocketDir string `toml:"unix_socket_dir"`
	// PoolMode: transaction (default) or session.
	PoolMode PoolMode `toml:"pool_mode"`
	// TLSCert and TLSKey are PEM file paths; set both or neither.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// TLSRequired rejects clients that do not ask for TLS (needs TLSCert).
	TLSRequired bool `toml:"tls_required"`
	// MaxClientConns bounds concurrent client connections (> 0).
	MaxClientConns int `toml:"max_client_conns"`
	// MaxMessageBytes bounds one client protocol message; larger ones are
	// refused with SQLSTATE 54000 (> 0).
	MaxMessageBytes int `toml:"max_message_bytes"`
	// ShutdownTimeout is how long shutdown waits for clients (>= 0).
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
	// IdleTransactionTimeout ends a client session that stays idle inside
	// a transaction (or a failed one) for longer than this: the client
	// gets FATAL 25P03, its backend connection is closed (PostgreSQL rolls
	// the transaction back) and its place in the pool freed. 0 disables
	// it (>= 0).
	IdleTransactionTimeout Duration `toml:"idle_transaction_timeout"`
	// ClientCheckInterval is how often the proxy checks whether the
	// clients whose queries are running are still connected (a query
	// whose client has gone is cancelled on its backend), and whether the
	// node a read waits for has failed its probes since (the read is then
	// sent to another node). 0 disables the check (>= 0).
	ClientCheckInterval Duration `toml:"client_check_interval"`
	// MaxPreparedStatements bounds the client-named prepared statements
	// kept on one backend connection; the least recently used beyond it
	// are closed when the connection is next leased, and prepared again
	// if a client uses them. 0: unbounded (>= 0).
	MaxPreparedStatements int `toml:"max_prepared_statements"`
	// Databases are the database names clients may connect to; others get
	// SQLSTATE 3D000. At least one is required.
	Databases []string `toml:"databases"`
	// StatusListen is the HTTP address for /metrics and /status; "" disables.
	StatusListen string `toml:"status_listen"`
	// AutoPrepare runs repeated queries as statements prepared once per
	// backend connection: unnamed extended-protocol statements and simple
	// queries with integer literals (sent as int4 parameters). PostgreSQL
	// then parses and plans them once instead of on every execution; its
	// plan cache treats them as any prepared statement (generic plans after
	// five executions when they are no worse, see plan_cache_mode).
	AutoPrepare bool `toml:"auto_prepare"`
	// Threads is how many OS threads run proxy code at once (GOMAXPROCS);
	// 0 keeps the Go runtime's default, the number of CPUs available.
	// On a machine shared with the databases a small number (1 or 2)
	// avoids waking threads on other CPUs for every message and costs
	// less CPU per query; with 1, a thread the kernel preempts inside a
	// socket call holds up every other connection until it runs again,
	// which lengthens tail latency when the machine is busy.
	Threads int `toml:"threads"`
}

// User is one [[users]] entry: credentials a client logs in with and the
// proxy uses towards the backends.
type User struct {
	Name string `toml:"name"`
	// Password is the plain password: clients authenticate with it (SCRAM
	// or md5) and, unless BackendPassword is set, so does the proxy towards
	// the backends. Exactly one of Password and SCRAMVerifier is set.
	Password string `toml:"password,omitempty"`
	// SCRAMVerifier is a PostgreSQL-format SCRAM-SHA-256 verifier
	// ("SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>", as in
	// pg_authid.rolpassword), used instead of a plain password for client
	// authentication. Needs BackendPassword.
	SCRAMVerifier string `toml:"scram_verifier,omitempty"`
	// BackendPassword, if set, is the password the proxy uses to log in to
	// the backends as this user. Required with SCRAMVerifier.
	BackendPassword string `toml:"backend_password,omitempty"`
	// Auth is what the proxy asks the client for: scram-sha-256 (default)
	// or md5 (needs Password).
	Auth AuthMethod `toml:"auth"`
}

// BackendPasswordOrPlain returns the password the proxy uses towards the
// backends: BackendPassword if set, else Password.
func (u User) BackendPasswordOrPlain() string {
	if u.BackendPassword != "" {
		return u.BackendPassword
	}
	return u.Password
}

// Shard is one [[shards]] entry: a primary and its standbys.
type Shard struct {
	Name string `toml:"name"`
	// Weight is the shard's weight on the consistent-hash ring; 0 means 1.
	Weight int    `toml:"weight"`
	Nodes  []Node `toml:"nodes"`
}

// Node is one [[shards.nodes]] entry: a PostgreSQL server.
type Node struct {
	// Name is unique across the whole config.
	Name string `toml:"name"`
	// Host is a host name, an IP address, or the absolute path of the
	// directory holding the server's Unix socket (as in libpq; the
	// socket is Host/.s.PGSQL.Port, and [backend]'s TLS settings do not
	// apply to it).
	Host string `toml:"host"`
	Port int    `toml:"port"`
	// Role: primary (exactly one per shard) or standby.
	Role Role `toml:"role"`
	// Weight is the balancing weight among standbys; 0 means 1.
	Weight int `toml:"weight"`
	// PoolSize bounds backend connections to this node; 0 means Pool.Size.
	PoolSize int `toml:"pool_size"`
}

// Addr returns "host:port".
func (n Node) Addr() string { return joinHostPort(n.Host, n.Port) }

// IsSocket reports whether Host names a Unix-socket directory (an
// absolute path, as in libpq): the server's socket is
// Host/.s.PGSQL.Port.
func (n Node) IsSocket() bool { return strings.HasPrefix(n.Host, "/") }

// Table is one [[tables]] entry: a sharded table and its shard key.
// Tables not listed are unsharded and live on Routing.DefaultShard.
type Table struct {
	// Name is an unquoted SQL identifier, optionally schema-qualified
	// ("accounts" or "public.accounts"; an unqualified name means public).
	// Whether the table exists is checked by the proxy at startup against
	// the database, not here.
	Name string `toml:"name"`
	// ShardKey lists the key columns (several = composite key), no repeats.
	ShardKey []string `toml:"shard_key"`
	// KeyTypes has one type per ShardKey column.
	KeyTypes []KeyType `toml:"key_types"`
}

// Routing is the [routing] table.
type Routing struct {
	// DefaultShard holds unsharded tables; "" means the first shard
	// (ApplyDefaults fills it in).
	DefaultShard string `toml:"default_shard"`
	// VirtualNodes per unit of ring weight; 0 means the shard package default.
	VirtualNodes int `toml:"virtual_nodes"`
	// Balance picks among qualifying standbys.
	Balance BalancePolicy `toml:"balance"`
	// MaxStaleness is the default staleness bound for replica reads (>= 0).
	MaxStaleness Duration `toml:"max_staleness"`
	// CatchUpWait is how long a read waits for a standby to catch up before
	// falling back to the primary (>= 0).
	CatchUpWait Duration `toml:"catch_up_wait"`
	// HealthInterval, LagInterval and ProbeTimeout drive node probes (> 0).
	HealthInterval Duration `toml:"health_interval"`
	LagInterval    Duration `toml:"lag_interval"`
	ProbeTimeout   Duration `toml:"probe_timeout"`
}

// Pool is the [pool] table: per-node backend connection pools.
type Pool struct {
	// Size is the default per-node pool size (> 0).
	Size int `toml:"size"`
	// AcquireTimeout bounds the wait for a pooled connection; then SQLSTATE
	// 53300 (> 0).
	AcquireTimeout Duration `toml:"acquire_timeout"`
	// MaxLifetime closes a backend connection this long after it was
	// opened (less up to a tenth, spread over the connections), when its
	// transaction or session ends; 0 keeps it while it works (>= 0).
	MaxLifetime Duration `toml:"max_lifetime"`
	// IdleTimeout closes a backend connection left idle in the pool this
	// long; 0 keeps idle connections (>= 0).
	IdleTimeout Duration `toml:"idle_timeout"`
}

// Backend is the [backend] table: how the proxy connects to every node
// (pooled connections, health and lag probes, the cache's change stream).
// The keys mean what libpq's connection parameters of the same names mean.
type Backend struct {
	// SSLMode: disable, allow, prefer (default: TLS when the server offers
	// it, unverified; asked for on the connection itself, so a server
	// without TLS costs no second connection), require (TLS, unverified
	// unless SSLRootCert is set, then as verify-ca), verify-ca (TLS with a
	// certificate signed by a trusted CA) or verify-full (verify-ca and the
	// node's host matches the certificate).
	SSLMode string `toml:"sslmode"`
	// SSLRootCert is a PEM file of the CAs trusted for verify-ca and
	// verify-full; "" means the system's trusted roots, "system" says so
	// explicitly (and implies verify-full, as in libpq).
	SSLRootCert string `toml:"sslrootcert"`
	// SSLCert and SSLKey are a PEM client certificate and key presented to
	// the nodes (for cert authentication); set both or neither.
	SSLCert string `toml:"sslcert"`
	SSLKey  string `toml:"sslkey"`
}

// SSLModes are the accepted values of backend.sslmode.
var SSLModes = []string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}

// Breaker is the [breaker] table: the per-node circuit breaker.
type Breaker struct {
	// Failures is the number of consecutive failures that opens it (> 0).
	Failures int `toml:"failures"`
	// ErrorRate in (0, 1] over Window opens it once MinRequests were seen.
	ErrorRate   float64  `toml:"error_rate"`
	Window      Duration `toml:"window"`
	MinRequests int      `toml:"min_requests"`
	// OpenFor is how long it stays open before half-open trials (> 0).
	OpenFor Duration `toml:"open_for"`
	// HalfOpenTrials successes close it again (> 0).
	HalfOpenTrials int `toml:"half_open_trials"`
}

// Cache is the [cache] table: the read-result cache.
type Cache struct {
	Enabled bool `toml:"enabled"`
	// MaxBytes is the total cache budget (> 0).
	MaxBytes int64 `toml:"max_bytes"`
	// TTL bounds how long an entry may be served (> 0).
	TTL Duration `toml:"ttl"`
	// MaxEntryBytes: larger results are not cached (> 0, <= MaxBytes).
	MaxEntryBytes int64 `toml:"max_entry_bytes"`
	// IncludeTables and ExcludeTables are path.Match patterns over table
	// names ("*", "public.*", "accounts"); a read is cacheable when every
	// table it reads matches an include pattern and no exclude pattern.
	IncludeTables []string `toml:"include_tables"`
	ExcludeTables []string `toml:"exclude_tables"`
	// FillAfterMisses (1 or 2) is the miss of a key that fills it: 2 keeps
	// reads of keys read once (random scans) off the cache entirely.
	FillAfterMisses int `toml:"fill_after_misses"`
	// Databases are the databases of server.databases whose reads are
	// cached (default: all of them). Each has its own change stream on
	// every shard primary: one walsender and one temporary replication
	// slot there per database, counted against max_wal_senders and
	// max_replication_slots beside the standbys'.
	Databases []string `toml:"databases"`
}

// Default returns a configuration with every default filled in and no
// shards, users or databases (those have no sensible default and Validate
// requires them).
func Default() *Config {
	return &Config{
		Server: Server{
			Listen:                "127.0.0.1:6432",
			PoolMode:              PoolTransaction,
			MaxClientConns:        5000,
			MaxMessageBytes:       1 << 20,
			ShutdownTimeout:       Duration(30 * time.Second),
			ClientCheckInterval:   Duration(time.Second),
			MaxPreparedStatements: 1000,
			StatusListen:          "127.0.0.1:6433",
			AutoPrepare:           true,
		},
		Routing: Routing{
			Balance:        RoundRobin,
			MaxStaleness:   Duration(time.Second),
			CatchUpWait:    Duration(50 * time.Millisecond),
			HealthInterval: Duration(time.Second),
			LagInterval:    Duration(100 * time.Millisecond),
			ProbeTimeout:   Duration(time.Second),
		},
		Pool: Pool{
			Size:           20,
			AcquireTimeout: Duration(5 * time.Second),
			MaxLifetime:    Duration(time.Hour),
			IdleTimeout:    Duration(10 * time.Minute),
		},
		Breaker: Breaker{
			Failures:       5,
			ErrorRate:      0.5,
			Window:         Duration(10 * time.Second),
			MinRequests:    20,
			OpenFor:        Duration(5 * time.Second),
			HalfOpenTrials: 3,
		},
		Cache: Cache{
			Enabled:         false,
			MaxBytes:        64 << 20,
			TTL:             Duration(60 * time.Second),
			MaxEntryBytes:   1 << 20,
			IncludeTables:   []string{"*"},
			ExcludeTables:   []string{},
			FillAfterMisses: 2,
		},
		Backend: Backend{SSLMode: "prefer"},
	}
}

// ApplyDefaults fills the fields whose zero value documents a default:
// Server.PoolMode, Routing.Balance, Users[i].Auth, Shards[i].Weight and
// Shards[i].Nodes[j].Weight (0 -> 1), Routing.DefaultShard ("" -> first
// shard), Cache.IncludeTables (nil -> ["*"]), Cache.ExcludeTables
// (nil -> []), Cache.Databases (nil -> Server.Databases) and
// Backend.SSLMode ("" -> "prefer"). Other fields get
// their defaults from Default (Parse decodes onto Default()), so an
// explicit zero there stays zero and Validate reports it. Node.PoolSize 0
// is left as is; see NodePoolSize.
// ApplyDefaults is idempotent.
func (c *Config) ApplyDefaults() {
	if c.Server.PoolMode == 0 {
		c.Server.PoolMode = PoolTransaction
	}
	if c.Routing.Balance == 0 {
		c.Routing.Balance = RoundRobin
	}
	for i := range c.Users {
		if c.Users[i].Auth == 0 {
			c.Users[i].Auth = AuthSCRAMSHA256
		}
	}
	for i := range c.Shards {
		s := &c.Shards[i]
		if s.Weight == 0 {
			s.Weight = 1
		}
		for j := range s.Nodes {
			if s.Nodes[j].Weight == 0 {
				s.Nodes[j].Weight = 1
			}
		}
	}
	if c.Routing.DefaultShard == "" && len(c.Shards) > 0 {
		c.Routing.DefaultShard = c.Shards[0].Name
	}
	if c.Cache.IncludeTables == nil {
		c.Cache.IncludeTables = []string{"*"}
	}
	if c.Cache.ExcludeTables == nil {
		c.Cache.ExcludeTables = []string{}
	}
	if c.Cache.Databases == nil {
		c.Cache.Databases = slices.Clone(c.Server.Databases)
	}
	if c.Backend.SSLMode == "" {
		c.Backend.SSLMode = "prefer"
	}
}

// Clone returns a deep copy of c.
func (c *Config) Clone() *Config {
	n := *c
	n.Server.Databases = slices.Clone(c.Server.Databases)
	n.Users = slices.Clone(c.Users)
	n.Shards = slices.Clone(c.Shards)
	for i := range n.Shards {
		n.Shards[i].Nodes = slices.Clone(c.Shards[i].Nodes)
	}
	n.Tables = slices.Clone(c.Tables)
	for i := range n.Tables {
		n.Tables[i].ShardKey = slices.Clone(c.Tables[i].ShardKey)
		n.Tables[i].KeyTypes = slices.Clone(c.Tables[i].KeyTypes)
	}
	n.Cache.IncludeTables = slices.Clone(c.Cache.IncludeTables)
	n.Cache.ExcludeTables = slices.Clone(c.Cache.ExcludeTables)
	n.Cache.Databases = slices.Clone(c.Cache.Databases)
	return &n
}

// Shard returns the shard named name.
func (c *Config) Shard(name string) (Shard, bool) {
	i := c.ShardIndex(name)
	if i < 0 {
		return Shard{}, false
	}
	return c.Shards[i], true
}

// ShardIndex returns the index of the shard named name in Shards, or -1.
func (c *Config) ShardIndex(name string) int {
	for i := range c.Shards {
		if c.Shards[i].Name == name {
			return i
		}
	}
	return -1
}

// DefaultShardIndex returns the index of Routing.DefaultShard (the first
// shard when it is ""), or -1 if there is no such shard.
func (c *Config) DefaultShardIndex() int {
	if c.Routing.DefaultShard == "" {
		if len(c.Shards) > 0 {
			return 0
		}
		return -1
	}
	return c.ShardIndex(c.Routing.DefaultShard)
}

// Primary returns the primary node of the shard named shard.
func (c *Config) Primary(shard string) (Node, bool) {
	s, ok := c.Shard(shard)
	if !ok {
		return Node{}, false
	}
	for _, n := range s.Nodes {
		if n.Role == RolePrimary {
			return n, true
		}
	}
	return Node{}, false
}

// Standbys returns the standby nodes of the shard named shard, in file order.
func (c *Config) Standbys(shard string) []Node {
	s, _ := c.Shard(shard)
	var out []Node
	for _, n := range s.Nodes {
		if n.Role == RoleStandby {
			out = append(out, n)
		}
	}
	return out
}

// Node returns the node named name and the name of its shard.
func (c *Config) Node(name string) (node Node, shard string, ok bool) {
	for _, s := range c.Shards {
		for _, n := range s.Nodes {
			if n.Name == name {
				return n, s.Name, true
			}
		}
	}
	return Node{}, "", false
}

// NodePoolSize returns n's effective pool size: n.PoolSize, or Pool.Size
// when that is 0.
func (c *Config) NodePoolSize(n Node) int {
	if n.PoolSize > 0 {
		return n.PoolSize
	}
	return c.Pool.Size
}

// User returns the user named name.
func (c *Config) User(name string) (User, bool) {
	for _, u := range c.Users {
		if u.Name == name {
			return u, true
		}
	}
	return User{}, false
}

// Table returns the [[tables]] entry for name. Names compare the way
// PostgreSQL resolves unquoted identifiers with the default search_path:
// case-insensitively, and "t" is "public.t".
func (c *Config) Table(name string) (Table, bool) {
	want := CanonicalTableName(name)
	for _, t := range c.Tables {
		if CanonicalTableName(t.Name) == want {
			return t, true
		}
	}
	return Table{}, false
}

// CanonicalTableName lower-cases name and qualifies it with "public." when
// it has no schema: "Accounts" -> "public.accounts".
func CanonicalTableName(name string) string {
	name = strings.ToLower(name)
	if !strings.Contains(name, ".") {
		return "public." + name
	}
	return name
}

// AllowsDatabase reports whether clients may connect to database db.
func (c *Config) AllowsDatabase(db string) bool {
	return slices.Contains(c.Server.Databases, db)
}

// TLSEnabled reports whether the client listener offers TLS.
func (c *Config) TLSEnabled() bool { return c.Server.TLSCert != "" && c.Server.TLSKey != "" }
