package config

import (
	"net"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// maxIdentLen is PostgreSQL's NAMEDATALEN-1.
const maxIdentLen = 63

// Validate checks c and returns nil or an error joining one *FieldError
// per problem (all of them, sorted by line when the Config came from
// Parse/Load), each naming the key path and wrapping ErrInvalid.
// Validate does not modify c; call ApplyDefaults first for configs built
// in code. Table existence is not checked here: the proxy checks
// [[tables]] against the database at startup.
func (c *Config) Validate() error {
	el := &errorList{pos: c.pos}
	c.validateServer(el)
	c.validateUsers(el)
	c.validateShards(el)
	c.validateTables(el)
	c.validateRouting(el)
	c.validatePool(el)
	c.validateBreaker(el)
	c.validateCache(el)
	c.validateBackend(el)
	return el.err()
}

// MaxSocketPath is the longest Unix socket path the kernel takes
// (sockaddr_un's sun_path holds 108 bytes with the terminating NUL).
const MaxSocketPath = 107

// SocketPath is the path of the PostgreSQL-protocol Unix socket for port
// in dir, named as PostgreSQL names its own (dir/.s.PGSQL.port).
func SocketPath(dir string, port int) string {
	return filepath.Join(dir, ".s.PGSQL."+strconv.Itoa(port))
}

func joinHostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// checkAddr checks a listen address "host:port" (port 0..65535).
func checkAddr(el *errorList, key, addr string) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		el.invalid(key, "%q is not a host:port address", addr)
		return
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		el.invalid(key, "%q: port must be a number 0..65535", addr)
	}
}

func positive(el *errorList, key string, v int64) {
	if v <= 0 {
		el.invalid(key, "must be greater than 0 (got %d)", v)
	}
}

func nonNegative(el *errorList, key string, v int64) {
	if v < 0 {
		el.invalid(key, "must not be negative (got %d)", v)
	}
}

func positiveDur(el *errorList, key string, d Duration) {
	if d <= 0 {
		el.invalid(key, "must be a duration greater than 0 (got %q)", d.String())
	}
}

func nonNegativeDur(el *errorList, key string, d Duration) {
	if d < 0 {
		el.invalid(key, "must not be a negative duration (got %q)", d.String())
	}
}

func checkEnum(el *errorList, key string, ok bool, kind string, names enumNames) {
	if !ok {
		el.invalid(key, "%s is not set or invalid (allowed: %s)", kind, names.allowed())
	}
}

func (c *Config) validateServer(el *errorList) {
	s := &c.Server
	if s.Listen == "" {
		el.invalid("server.listen", "must be set (host:port)")
	} else {
		checkAddr(el, "server.listen", s.Listen)
	}
	if d := s.UnixSocketDir; d != "" {
		switch {
		case !filepath.IsAbs(d):
			el.invalid("server.unix_socket_dir", "%q is not an absolute path", d)
		case len(SocketPath(d, 65535)) > MaxSocketPath: // whatever the port
			el.invalid("server.unix_socket_dir", "%q is too long: a socket path in it would exceed %d bytes", d, MaxSocketPath)
		}
	}
	checkEnum(el, "server.pool_mode", s.PoolMode == PoolTransaction || s.PoolMode == PoolSession, "pool_mode", poolModeNames)
	switch {
	case s.TLSCert != "" && s.TLSKey == "":
		el.invalid("server.tls_cert", "tls_cert is set but tls_key is not (set both or neither)")
	case s.TLSCert == "" && s.TLSKey != "":
		el.invalid("server.tls_key", "tls_key is set but tls_cert is not (set both or neither)")
	}
	if s.TLSRequired && (s.TLSCert == "" || s.TLSKey == "") {
		el.invalid("server.tls_required", "tls_required needs tls_cert and tls_key")
	}
	positive(el, "server.max_client_conns", int64(s.MaxClientConns))
	positive(el, "server.max_message_bytes", int64(s.MaxMessageBytes))
	nonNegativeDur(el, "server.shutdown_timeout", s.ShutdownTimeout)
	nonNegativeDur(el, "server.idle_transaction_timeout", s.IdleTransactionTimeout)
	nonNegativeDur(el, "server.client_check_interval", s.ClientCheckInterval)
	if s.MaxPreparedStatements < 0 {
		el.invalid("server.max_prepared_statements", "must be >= 0 (0: unbounded)")
	}
	if s.Threads < 0 {
		el.invalid("server.threads", "must be >= 0 (0: one per CPU)")
	}
	if len(s.Databases) == 0 {
		el.invalid("server.databases", "must list at least one database clients may connect to")
	}
	seen := map[string]int{}
	for i, db := range s.Databases {
		k := indexKey("server.databases", i)
		if db == "" {
			el.invalid(k, "database name must not be empty")
			continue
		}
		if j, dup := seen[db]; dup {
			el.invalid(k, "database %q is listed twice (also server.databases[%d])", db, j)
			continue
		}
		seen[db] = i
	}
	if s.StatusListen != "" {
		checkAddr(el, "server.status_listen", s.StatusListen)
	}
}

func (c *Config) validateUsers(el *errorList) {
	if len(c.Users) == 0 {
		el.invalid("users", "at least one [[users]] entry is required")
	}
	seen := map[string]int{}
	for i, u := range c.Users {
		k := indexKey("users", i)
		if u.Name == "" {
			el.invalid(k+".name", "must be set")
		} else if j, dup := seen[u.Name]; dup {
			el.invalid(k+".name", "user %q is already defined by users[%d]", u.Name, j)
		} else {
			seen[u.Name] = i
		}
		checkEnum(el, k+".auth", u.Auth == AuthSCRAMSHA256 || u.Auth == AuthMD5, "auth", authNames)
		switch {
		case u.Password == "" && u.SCRAMVerifier == "":
			el.invalid(k, "user %q has neither password nor scram_verifier (set one)", u.Name)
		case u.Password != "" && u.SCRAMVerifier != "":
			el.invalid(k+".scram_verifier", "set either password or scram_verifier, not both (with a verifier, put the backend password in backend_password)")
		case u.SCRAMVerifier != "":
			if _, err := ParseSCRAMVerifier(u.SCRAMVerifier); err != nil {
				el.addErr(k+".scram_verifier", err)
			}
			if u.BackendPassword == "" {
				el.invalid(k+".backend_password", "required when only scram_verifier is given (the proxy needs it to log in to the backends)")
			}
			if u.Auth == AuthMD5 {
				el.invalid(k+".auth", "md5 needs a plain password; with scram_verifier use auth = \"scram-sha-256\"")
			}
		}
	}
}

func (c *Config) validateShards(el *errorList) {
	if len(c.Shards) == 0 {
		el.invalid("shards", "at least one [[shards]] entry is required")
	}
	shardNames := map[string]int{}
	nodeNames := map[string]string{} // node name -> key path
	addrs := map[string]string{}     // host:port -> key path
	for i, s := range c.Shards {
		k := indexKey("shards", i)
		if s.Name == "" {
			el.invalid(k+".name", "must be set")
		} else if strings.Contains(s.Name, "/") {
			el.invalid(k+".name", "shard %q: '/' is not allowed in a shard name (it separates shard and database in cache stream names)", s.Name)
		} else if j, dup := shardNames[s.Name]; dup {
			el.invalid(k+".name", "shard %q is already defined by shards[%d]", s.Name, j)
		} else {
			shardNames[s.Name] = i
		}
		nonNegative(el, k+".weight", int64(s.Weight))
		if len(s.Nodes) == 0 {
			el.invalid(k+".nodes", "shard %q has no nodes (add [[shards.nodes]] with one role = \"primary\")", s.Name)
			continue
		}
		primary := ""
		for j, n := range s.Nodes {
			nk := indexKey(k+".nodes", j)
			if n.Name == "" {
				el.invalid(nk+".name", "must be set")
			} else if prev, dup := nodeNames[n.Name]; dup {
				el.invalid(nk+".name", "node %q is already defined by %s (node names are unique across all shards)", n.Name, prev)
			} else {
				nodeNames[n.Name] = nk
			}
			if n.Host == "" {
				el.invalid(nk+".host", "must be set")
			} else if !n.IsSocket() && strings.Contains(n.Host, "/") {
				el.invalid(nk+".host", "%q is neither a host name nor an absolute path (a Unix-socket directory starts with /)", n.Host)
			}
			if n.Port < 1 || n.Port > 65535 {
				el.invalid(nk+".port", "must be between 1 and 65535 (got %d)", n.Port)
			} else if n.Host != "" {
				h := n.Host
				if !n.IsSocket() {
					h = strings.ToLower(h) // host names are case-insensitive, paths are not
				}
				a := h + ":" + strconv.Itoa(n.Port)
				if prev, dup := addrs[a]; dup {
					el.invalid(nk+".port", "%s is already used by %s (each node needs its own host:port)", n.Addr(), prev)
				} else {
					addrs[a] = nk
				}
			}
			switch n.Role {
			case RolePrimary:
				if primary != "" {
					el.invalid(nk+".role", "shard %q has more than one primary (also %s); exactly one node per shard is the primary", s.Name, primary)
				} else {
					primary = nk
				}
			case RoleStandby:
			default:
				el.invalid(nk+".role", "must be set (allowed: %s)", roleNames.allowed())
			}
			nonNegative(el, nk+".weight", int64(n.Weight))
			nonNegative(el, nk+".pool_size", int64(n.PoolSize))
		}
		if primary == "" {
			el.invalid(k, "shard %q has no primary (exactly one node must have role = \"primary\")", s.Name)
		}
	}
}

// validIdent reports whether s is an unquoted SQL identifier.
func validIdent(s string) bool {
	if s == "" || len(s) > maxIdentLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case i > 0 && (c >= '0' && c <= '9' || c == '$'):
		default:
			return false
		}
	}
	return true
}

// validTableName reports whether s is "ident" or "schema.ident".
func validTableName(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) > 2 {
		return false
	}
	for _, p := range parts {
		if !validIdent(p) {
			return false
		}
	}
	return true
}

func (c *Config) validateTables(el *errorList) {
	seen := map[string]int{}
	for i, t := range c.Tables {
		k := indexKey("tables", i)
		if !validTableName(t.Name) {
			if t.Name == "" {
				el.invalid(k+".name", "must be set")
			} else {
				el.invalid(k+".name", "%q is not a valid table name (an unquoted SQL identifier, optionally schema-qualified: \"accounts\" or \"public.accounts\")", t.Name)
			}
		} else if j, dup := seen[CanonicalTableName(t.Name)]; dup {
			el.invalid(k+".name", "table %q is already declared by tables[%d]", t.Name, j)
		} else {
			seen[CanonicalTableName(t.Name)] = i
		}
		if len(t.ShardKey) == 0 {
			el.invalid(k+".shard_key", "must list at least one column")
		}
		cols := map[string]int{}
		for j, col := range t.ShardKey {
			ck := indexKey(k+".shard_key", j)
			if !validIdent(col) {
				el.invalid(ck, "%q is not a valid column name (an unquoted SQL identifier)", col)
				continue
			}
			lc := strings.ToLower(col)
			if prev, dup := cols[lc]; dup {
				el.invalid(ck, "column %q is listed twice in the shard key (also shard_key[%d])", col, prev)
				continue
			}
			cols[lc] = j
		}
		if len(t.KeyTypes) != len(t.ShardKey) {
			el.invalid(k+".key_types", "has %d entries but shard_key has %d columns (one type per column: %s)",
				len(t.KeyTypes), len(t.ShardKey), keyTypeNames.allowed())
		}
		for j, kt := range t.KeyTypes {
			if kt < KeyInt || kt > KeyUUID {
				el.invalid(indexKey(k+".key_types", j), "invalid key type (allowed: %s)", keyTypeNames.allowed())
			}
		}
	}
}

func (c *Config) validateRouting(el *errorList) {
	r := &c.Routing
	if r.DefaultShard != "" && len(c.Shards) > 0 && c.ShardIndex(r.DefaultShard) < 0 {
		names := make([]string, len(c.Shards))
		for i, s := range c.Shards {
			names[i] = s.Name
		}
		el.invalid("routing.default_shard", "no shard is named %q (shards: %s)", r.DefaultShard, strings.Join(names, ", "))
	}
	nonNegative(el, "routing.virtual_nodes", int64(r.VirtualNodes))
	checkEnum(el, "routing.balance", r.Balance >= RoundRobin && r.Balance <= Hash, "balance", balanceNames)
	nonNegativeDur(el, "routing.max_staleness", r.MaxStaleness)
	nonNegativeDur(el, "routing.catch_up_wait", r.CatchUpWait)
	positiveDur(el, "routing.health_interval", r.HealthInterval)
	positiveDur(el, "routing.lag_interval", r.LagInterval)
	positiveDur(el, "routing.probe_timeout", r.ProbeTimeout)
}

func (c *Config) validatePool(el *errorList) {
	positive(el, "pool.size", int64(c.Pool.Size))
	positiveDur(el, "pool.acquire_timeout", c.Pool.AcquireTimeout)
	nonNegativeDur(el, "pool.max_lifetime", c.Pool.MaxLifetime)
	nonNegativeDur(el, "pool.idle_timeout", c.Pool.IdleTimeout)
}

func (c *Config) validateBreaker(el *errorList) {
	b := &c.Breaker
	positive(el, "breaker.failures", int64(b.Failures))
	if !(b.ErrorRate > 0 && b.ErrorRate <= 1) {
		el.invalid("breaker.error_rate", "must be in (0, 1] (got %v)", b.ErrorRate)
	}
	positiveDur(el, "breaker.window", b.Window)
	nonNegative(el, "breaker.min_requests", int64(b.MinRequests))
	positiveDur(el, "breaker.open_for", b.OpenFor)
	positive(el, "breaker.half_open_trials", int64(b.HalfOpenTrials))
}

func (c *Config) validateCache(el *errorList) {
	cc := &c.Cache
	positive(el, "cache.max_bytes", cc.MaxBytes)
	positiveDur(el, "cache.ttl", cc.TTL)
	positive(el, "cache.max_entry_bytes", cc.MaxEntryBytes)
	if cc.FillAfterMisses < 1 || cc.FillAfterMisses > 2 {
		el.invalid("cache.fill_after_misses", "must be 1 or 2 (got %d)", cc.FillAfterMisses)
	}
	if cc.MaxEntryBytes > 0 && cc.MaxBytes > 0 && cc.MaxEntryBytes > cc.MaxBytes {
		el.invalid("cache.max_entry_bytes", "must not exceed cache.max_bytes (%d > %d)", cc.MaxEntryBytes, cc.MaxBytes)
	}
	if cc.Enabled && len(cc.Databases) == 0 {
		el.invalid("cache.databases", "must list at least one of server.databases (or set cache.enabled = false)")
	}
	seen := map[string]int{}
	for i, db := range cc.Databases {
		k := indexKey("cache.databases", i)
		if !slices.Contains(c.Server.Databases, db) {
			el.invalid(k, "database %q is not in server.databases", db)
		} else if j, dup := seen[db]; dup {
			el.invalid(k, "database %q is listed twice (also cache.databases[%d])", db, j)
		} else {
			seen[db] = i
		}
	}
	for _, list := range []struct {
		key  string
		pats []string
	}{{"cache.include_tables", cc.IncludeTables}, {"cache.exclude_tables", cc.ExcludeTables}} {
		for i, p := range list.pats {
			k := indexKey(list.key, i)
			if p == "" {
				el.invalid(k, "pattern must not be empty")
				continue
			}
			if _, err := path.Match(p, ""); err != nil {
				el.invalid(k, "bad pattern %q: %v", p, err)
			}
		}
	}
}

func (c *Config) validateBackend(el *errorList) {
	b := &c.Backend
	if !slices.Contains(SSLModes, b.SSLMode) {
		el.invalid("backend.sslmode", "%q is not an sslmode (allowed: %s)", b.SSLMode, strings.Join(SSLModes, ", "))
	}
	switch {
	case b.SSLCert != "" && b.SSLKey == "":
		el.invalid("backend.sslcert", "sslcert is set but sslkey is not (set both or neither)")
	case b.SSLCert == "" && b.SSLKey != "":
		el.invalid("backend.sslkey", "sslkey is set but sslcert is not (set both or neither)")
	}
	if b.SSLMode == "disable" {
		for _, f := range []struct{ key, v string }{{"backend.sslrootcert", b.SSLRootCert}, {"backend.sslcert", b.SSLCert}} {
			if f.v != "" {
				el.invalid(f.key, "has no effect with sslmode = \"disable\" (connections to the nodes are not encrypted)")
			}
		}
	}
}
