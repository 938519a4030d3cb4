package driver

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dbproxy/dbproxy/config"
)

// ErrBadDSN is wrapped by every error ParseDSN and DSN.Config return for a
// malformed or inconsistent data source name.
var ErrBadDSN = errors.New("dbproxy driver: invalid DSN")

// DSN is a parsed data source name for sql.Open("dbproxy", dsn). It takes
// one of two forms, both a list of key=value pairs separated by ';':
//
// A config file (every routing setting comes from the file):
//
//	file=/etc/dbproxy.toml;user=app;database=app
//
// user names a [[users]] entry and database one of server.databases; both
// default to the first entry of the file. cache=on or cache=off overrides
// the file's [cache] enabled.
//
// Inline (shards, nodes and sharded tables in the DSN itself):
//
//	shards=s0:127.0.0.1:5432|127.0.0.1:5433,s1:10.0.0.2:5432;user=app;password=app;database=app;tables=users(id:int),orders(tenant:text,id:uuid)
//
// shards lists shards separated by ','; each is name ':' nodes, nodes
// separated by '|'. The first node of a shard is its primary, the others
// its standbys. A node is [name '@'] host ':' port ['*' weight]; an IPv6
// host is bracketed ("[::1]:5432"), and a host that is an absolute path is
// the directory of the server's Unix socket ("/var/run/postgresql:5432",
// see config.Node.Host). Unnamed nodes are called
// "<shard>-primary" and "<shard>-standby<i>" (i from 1).
//
// tables lists sharded tables separated by ','; each is name '(' column ':'
// type {',' column ':' type} ')' with type int, text or uuid (several
// columns form a composite key). Unlisted tables are unsharded and live on
// the default shard.
//
// Optional keys of the inline form: default_shard (a shard name; default
// the first), balance (round_robin, weighted_round_robin,
// least_connections, weighted_least_connections, least_latency, hash),
// max_staleness, catch_up_wait, acquire_timeout, health_interval,
// lag_interval, probe_timeout (Go durations: "200ms"), pool_size (per node),
// cache (on or off: the read-result cache, invalidated through a change
// stream from each primary; the user needs the REPLICATION attribute, see
// package cache), sslmode, sslrootcert, sslcert, sslkey (how the driver
// connects to the nodes, as in libpq; see [backend] in the config). A key
// left out keeps the default of config.Default.
//
// Values are percent-decoded and taken verbatim otherwise (white space
// included), so a ';' or '%' inside a password is written %3B or %25. Keys
// are case-sensitive (surrounding white space is ignored); unknown and
// repeated keys are errors.
type DSN struct {
	// File is the config file path (file form). Exclusive with Shards.
	File string

	User     string // [[users]] entry (file form) or login user (inline)
	Password string // inline form only
	Database string

	Shards []DSNShard // inline form
	Tables []DSNTable // inline form

	DefaultShard   string
	Balance        config.BalancePolicy // 0 = default (round_robin)
	MaxStaleness   time.Duration        // 0 = default
	CatchUpWait    time.Duration        // 0 = default
	AcquireTimeout time.Duration        // 0 = default
	HealthInterval time.Duration        // 0 = default
	LagInterval    time.Duration        // 0 = default
	ProbeTimeout   time.Duration        // 0 = default
	PoolSize       int                  // 0 = default
	// Cache is "on" or "off" to enable or disable the read-result cache
	// ([cache] enabled), "" to keep the configuration's setting.
	Cache string
	// SSLMode, SSLRootCert, SSLCert and SSLKey are [backend]'s keys of the
	// same names (inline form; "" = default).
	SSLMode, SSLRootCert, SSLCert, SSLKey string
}

// DSNShard is one shard of an inline DSN: Nodes[0] is the primary.
type DSNShard struct {
	Name  string
	Nodes []DSNNode
}

// DSNNode is one PostgreSQL server of an inline DSN.
type DSNNode struct {
	Name   string // "" = derived from the shard name and position
	Host   string
	Port   int
	Weight int // 0 = 1
}

// DSNTable is one sharded table of an inline DSN.
type DSNTable struct {
	Name    string
	Columns []string
	Types   []config.KeyType
}

var dsnKeys = []string{
	"file", "user", "password", "database", "shards", "tables", "default_shard", "balance",
	"max_staleness", "catch_up_wait", "acquire_timeout", "health_interval", "lag_interval", "probe_timeout", "pool_size", "cache",
	"sslmode", "sslrootcert", "sslcert", "sslkey",
}

func dsnErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadDSN}, args...)...)
}

// ParseDSN parses s (see DSN). Errors wrap ErrBadDSN and name the key. It
// never panics, whatever s holds.
func ParseDSN(s string) (*DSN, error) {
	d := &DSN{}
	seen := map[string]bool{}
	for part := range strings.SplitSeq(s, ";") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		k, raw, ok := strings.Cut(part, "=")
		k = strings.TrimSpace(k)
		if !ok {
			return nil, dsnErr("%q is not key=value", part)
		}
		if !slices.Contains(dsnKeys, k) {
			return nil, dsnErr("unknown key %q (known: %s)", k, strings.Join(dsnKeys, ", "))
		}
		if seen[k] {
			return nil, dsnErr("key %q given twice", k)
		}
		seen[k] = true
		v, err := url.PathUnescape(raw)
		if err != nil {
			return nil, dsnErr("%s: %v", k, err)
		}
		if err := d.set(k, v); err != nil {
			return nil, err
		}
	}
	if d.File == "" && len(d.Shards) == 0 {
		return nil, dsnErr("need file=<config path> or shards=<shard list>")
	}
	if d.File != "" {
		for _, k := range dsnKeys {
			if seen[k] && k != "file" && k != "user" && k != "database" && k != "cache" {
				return nil, dsnErr("key %q cannot be combined with file= (it comes from the config file)", k)
			}
		}
	}
	return d, nil
}

func (d *DSN) set(k, v string) error {
	dur := func(p *time.Duration) error {
		x, err := time.ParseDuration(v)
		if err != nil || x < 0 {
			return dsnErr("%s=%q: want a non-negative Go duration such as 200ms", k, v)
		}
		*p = x
		return nil
	}
	plain := map[string]*string{"user": &d.User, "password": &d.Password, "database": &d.Database, "default_shard": &d.DefaultShard,
		"sslmode": &d.SSLMode, "sslrootcert": &d.SSLRootCert, "sslcert": &d.SSLCert, "sslkey": &d.SSLKey}
	if p, ok := plain[k]; ok {
		*p = v
		return nil
	}
	switch k {
	case "file":
		if v == "" {
			return dsnErr("file is empty")
		}
		d.File = v
	case "shards":
		sh, err := parseShards(v)
		if err != nil {
			return err
		}
		d.Shards = sh
	case "tables":
		t, err := parseTables(v)
		if err != nil {
			return err
		}
		d.Tables = t
	case "balance":
		if err := d.Balance.UnmarshalText([]byte(v)); err != nil {
			return dsnErr("balance: %v", err)
		}
	case "max_staleness":
		return dur(&d.MaxStaleness)
	case "catch_up_wait":
		return dur(&d.CatchUpWait)
	case "acquire_timeout":
		return dur(&d.AcquireTimeout)
	case "health_interval":
		return dur(&d.HealthInterval)
	case "lag_interval":
		return dur(&d.LagInterval)
	case "probe_timeout":
		return dur(&d.ProbeTimeout)
	case "pool_size":
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return dsnErr("pool_size=%q: want a non-negative integer", v)
		}
		d.PoolSize = n
	case "cache":
		on, err := parseCacheMode(v)
		if err != nil {
			return err
		}
		d.Cache = cacheModeString(on)
	}
	return nil
}

// validName reports whether s is usable as a shard, node, table or column
// name in the inline form.
func validName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if !(r == '_' || r == '-' || r == '.' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

func parseShards(v string) ([]DSNShard, error) {
	if v == "" {
		return nil, dsnErr("shards is empty")
	}
	var out []DSNShard
	for item := range strings.SplitSeq(v, ",") {
		name, nodes, ok := strings.Cut(item, ":")
		if !ok || !validName(name) {
			return nil, dsnErr("shards: %q: want name:host:port[|host:port...] with a name of letters, digits, '_', '-', '.'", item)
		}
		sh := DSNShard{Name: name}
		for nd := range strings.SplitSeq(nodes, "|") {
			n, err := parseNode(nd)
			if err != nil {
				return nil, dsnErr("shards: shard %s: %v", name, err)
			}
			sh.Nodes = append(sh.Nodes, n)
		}
		out = append(out, sh)
	}
	return out, nil
}

func parseNode(s string) (DSNNode, error) {
	var n DSNNode
	if at := strings.LastIndexByte(s, '@'); at >= 0 {
		n.Name, s = s[:at], s[at+1:]
		if !validName(n.Name) {
			return n, fmt.Errorf("node name %q: use letters, digits, '_', '-', '.'", n.Name)
		}
	}
	if star := strings.LastIndexByte(s, '*'); star >= 0 {
		w, err := strconv.Atoi(s[star+1:])
		if err != nil || w < 1 || w > 1000 {
			return n, fmt.Errorf("node %q: weight must be an integer 1..1000", s)
		}
		n.Weight, s = w, s[:star]
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return n, fmt.Errorf("node %q: want host:port ([v6addr]:port for IPv6)", s)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 || host == "" || strings.ContainsAny(host, ",|@*;%[] \t") {
		return n, fmt.Errorf("node %q: bad host or port", s)
	}
	n.Host, n.Port = host, p
	return n, nil
}

func parseTables(v string) ([]DSNTable, error) {
	if v == "" {
		return nil, dsnErr("tables is empty")
	}
	var out []DSNTable
	rest := v
	for rest != "" {
		open := strings.IndexByte(rest, '(')
		closeIdx := strings.IndexByte(rest, ')')
		if open <= 0 || closeIdx < open {
			return nil, dsnErr("tables: %q: want name(column:type,...)", rest)
		}
		t := DSNTable{Name: rest[:open]}
		if !validName(t.Name) {
			return nil, dsnErr("tables: bad table name %q", t.Name)
		}
		for col := range strings.SplitSeq(rest[open+1:closeIdx], ",") {
			c, typ, ok := strings.Cut(col, ":")
			if !ok || !validName(c) {
				return nil, dsnErr("tables: %s: %q: want column:type", t.Name, col)
			}
			var kt config.KeyType
			if err := kt.UnmarshalText([]byte(typ)); err != nil {
				return nil, dsnErr("tables: %s.%s: %v", t.Name, c, err)
			}
			t.Columns = append(t.Columns, c)
			t.Types = append(t.Types, kt)
		}
		out = append(out, t)
		rest = rest[closeIdx+1:]
		if rest != "" {
			if rest[0] != ',' || len(rest) == 1 {
				return nil, dsnErr("tables: expected ',' between tables, got %q", rest)
			}
			rest = rest[1:]
		}
	}
	return out, nil
}

// String formats d so that ParseDSN reads back an equal DSN. Keys are
// written in a fixed order; zero-valued optional keys are left out.
func (d *DSN) String() string {
	var parts []string
	add := func(k, v string) { parts = append(parts, k+"="+escapeDSN(v)) }
	addDur := func(k string, v time.Duration) {
		if v != 0 {
			add(k, v.String())
		}
	}
	if d.File != "" {
		add("file", d.File)
	}
	if d.User != "" {
		add("user", d.User)
	}
	if d.Password != "" {
		add("password", d.Password)
	}
	if d.Database != "" {
		add("database", d.Database)
	}
	if len(d.Shards) > 0 {
		var b strings.Builder
		for i, s := range d.Shards {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(s.Name)
			b.WriteByte(':')
			for j, n := range s.Nodes {
				if j > 0 {
					b.WriteByte('|')
				}
				if n.Name != "" {
					b.WriteString(n.Name + "@")
				}
				b.WriteString(net.JoinHostPort(n.Host, strconv.Itoa(n.Port)))
				if n.Weight != 0 {
					b.WriteString("*" + strconv.Itoa(n.Weight))
				}
			}
		}
		add("shards", b.String())
	}
	if len(d.Tables) > 0 {
		var b strings.Builder
		for i, t := range d.Tables {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(t.Name + "(")
			for j, c := range t.Columns {
				if j > 0 {
					b.WriteByte(',')
				}
				typ := ""
				if j < len(t.Types) {
					typ = t.Types[j].String()
				}
				b.WriteString(c + ":" + typ)
			}
			b.WriteByte(')')
		}
		add("tables", b.String())
	}
	if d.DefaultShard != "" {
		add("default_shard", d.DefaultShard)
	}
	if d.Balance != 0 {
		add("balance", d.Balance.String())
	}
	addDur("max_staleness", d.MaxStaleness)
	addDur("catch_up_wait", d.CatchUpWait)
	addDur("acquire_timeout", d.AcquireTimeout)
	addDur("health_interval", d.HealthInterval)
	addDur("lag_interval", d.LagInterval)
	addDur("probe_timeout", d.ProbeTimeout)
	if d.PoolSize != 0 {
		add("pool_size", strconv.Itoa(d.PoolSize))
	}
	if d.Cache != "" {
		add("cache", d.Cache)
	}
	for _, kv := range [][2]string{{"sslmode", d.SSLMode}, {"sslrootcert", d.SSLRootCert}, {"sslcert", d.SSLCert}, {"sslkey", d.SSLKey}} {
		if kv[1] != "" {
			add(kv[0], kv[1])
		}
	}
	return strings.Join(parts, ";")
}

// escapeDSN percent-encodes what would break the key=value;... syntax:
// '%', ';', '=' and control characters.
func escapeDSN(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '%' || c == ';' || c == '=' || c < 0x20 || c == 0x7f {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Config returns the configuration d describes: config.Load(File) for the
// file form, or a Config built from the inline keys (checked by
// config.Validate). Errors wrap ErrBadDSN or come from config.
func (d *DSN) Config() (*config.Config, error) {
	if d.File != "" {
		c, err := config.Load(d.File)
		if err != nil {
			return nil, err
		}
		c = c.WithFilesIn(filepath.Dir(d.File))
		if d.Cache != "" {
			c.Cache.Enabled = d.Cache == "on"
		}
		return c, nil
	}
	if d.User == "" {
		return nil, dsnErr("user is required in the inline form")
	}
	if d.Database == "" {
		return nil, dsnErr("database is required in the inline form")
	}
	c := config.Default()
	c.Users = []config.User{{Name: d.User, Password: d.Password}}
	c.Server.Databases = []string{d.Database}
	c.Server.StatusListen = ""
	for _, s := range d.Shards {
		cs := config.Shard{Name: s.Name}
		for j, n := range s.Nodes {
			cn := config.Node{Name: n.Name, Host: n.Host, Port: n.Port, Weight: n.Weight, Role: config.RoleStandby}
			if j == 0 {
				cn.Role = config.RolePrimary
				if cn.Name == "" {
					cn.Name = s.Name + "-primary"
				}
			} else if cn.Name == "" {
				cn.Name = s.Name + "-standby" + strconv.Itoa(j)
			}
			cs.Nodes = append(cs.Nodes, cn)
		}
		c.Shards = append(c.Shards, cs)
	}
	for _, t := range d.Tables {
		c.Tables = append(c.Tables, config.Table{Name: t.Name, ShardKey: slices.Clone(t.Columns), KeyTypes: slices.Clone(t.Types)})
	}
	c.Routing.DefaultShard = d.DefaultShard
	if d.Balance != 0 {
		c.Routing.Balance = d.Balance
	}
	setDur := func(dst *config.Duration, v time.Duration) {
		if v != 0 {
			*dst = config.Duration(v)
		}
	}
	setDur(&c.Routing.MaxStaleness, d.MaxStaleness)
	setDur(&c.Routing.CatchUpWait, d.CatchUpWait)
	setDur(&c.Pool.AcquireTimeout, d.AcquireTimeout)
	setDur(&c.Routing.HealthInterval, d.HealthInterval)
	setDur(&c.Routing.LagInterval, d.LagInterval)
	setDur(&c.Routing.ProbeTimeout, d.ProbeTimeout)
	if d.PoolSize != 0 {
		c.Pool.Size = d.PoolSize
	}
	c.Cache.Enabled = d.Cache == "on"
	c.Backend = config.Backend{SSLMode: d.SSLMode, SSLRootCert: d.SSLRootCert, SSLCert: d.SSLCert, SSLKey: d.SSLKey} // "" -> ApplyDefaults' default
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadDSN, err)
	}
	return c, nil
}
