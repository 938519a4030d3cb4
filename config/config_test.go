package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

const exampleFile = "../dbproxy.example.toml"

func loadExample(t *testing.T) *Config {
	t.Helper()
	c, err := Load(exampleFile)
	if err != nil {
		t.Fatalf("example file does not validate:\n%v", err)
	}
	return c
}

func TestExampleFileValidates(t *testing.T) {
	c := loadExample(t)
	if len(c.Shards) != 2 || len(c.Shards[0].Nodes) != 2 || len(c.Tables) != 2 || len(c.Users) != 2 {
		t.Fatalf("unexpected shape: %+v", c)
	}
	p, ok := c.Primary("s1")
	if !ok || p.Name != "s1-primary" || p.Addr() != "127.0.0.1:5442" {
		t.Errorf("Primary(s1) = %+v, %v", p, ok)
	}
	if st := c.Standbys("s1"); len(st) != 1 || st[0].Weight != 2 {
		t.Errorf("Standbys(s1) = %+v", st)
	}
	if c.Routing.Balance != RoundRobin || c.Server.PoolMode != PoolTransaction || c.Routing.LagInterval.D() != 100*time.Millisecond {
		t.Errorf("routing/server = %+v %+v", c.Routing, c.Server)
	}
	tb, ok := c.Table("orders")
	if !ok || !reflect.DeepEqual(tb.KeyTypes, []KeyType{KeyText, KeyUUID}) {
		t.Errorf("Table(orders) = %+v, %v", tb, ok)
	}
	// The example's verifier really is the verifier of the password it names.
	u, _ := c.User("reporting")
	v, err := ParseSCRAMVerifier(u.SCRAMVerifier)
	if err != nil || !v.VerifyPassword("reporting") {
		t.Errorf("example verifier does not match \"reporting\": %v", err)
	}
	if u.BackendPasswordOrPlain() != "reporting" {
		t.Errorf("backend password = %q", u.BackendPasswordOrPlain())
	}
	// Every key the schema has appears in the example (so it documents all).
	data, _ := os.ReadFile(exampleFile)
	for _, k := range allSchemaKeys() {
		leaf := k[strings.LastIndexByte(k, '.')+1:]
		if !strings.Contains(string(data), "\n"+leaf+" =") && !strings.Contains(string(data), " "+leaf+" =") &&
			!strings.Contains(string(data), "# "+leaf+" =") {
			t.Errorf("example does not document key %s", k)
		}
	}
}

// allSchemaKeys lists every leaf key path of the schema (indexes stripped).
func allSchemaKeys() []string {
	var out []string
	var walk func(t reflect.Type, path string)
	walk = func(t reflect.Type, path string) {
		for name, f := range tomlFields(t) {
			ft := f.Type
			if ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				walk(ft, joinKey(path, name))
				continue
			}
			out = append(out, joinKey(path, name))
		}
	}
	walk(reflect.TypeFor[Config](), "")
	return out
}

// stripped returns a copy of c without source positions, for comparisons.
func stripped(c *Config) *Config {
	n := c.Clone()
	n.pos = nil
	return n
}

func TestEncodeRoundTrip(t *testing.T) {
	c := loadExample(t)
	var buf bytes.Buffer
	if err := c.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	c2, err := Parse(buf.Bytes())
	if err != nil {
		t.Fatalf("re-parse of encoded config: %v\n%s", err, buf.String())
	}
	if !reflect.DeepEqual(stripped(c), stripped(c2)) {
		t.Fatalf("round trip differs: %v\n%s", Diff(c, c2), buf.String())
	}
	var buf2 bytes.Buffer
	if err := c2.Encode(&buf2); err != nil {
		t.Fatal(err)
	}
	if buf.String() != buf2.String() {
		t.Errorf("encoding not stable:\n%s\n---\n%s", buf.String(), buf2.String())
	}
	// Durations and enums are written as strings.
	for _, want := range []string{`lag_interval = "100ms"`, `balance = "round_robin"`, `role = "standby"`, `key_types = ["text", "uuid"]`, `auth = "scram-sha-256"`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("encoded config lacks %s:\n%s", want, buf.String())
		}
	}
}

func TestEncodeCodeBuiltConfig(t *testing.T) {
	c := Default()
	c.Server.Databases = []string{"app"}
	c.Users = []User{{Name: "app", Password: "pw", Auth: AuthMD5}}
	c.Shards = []Shard{{Name: "s0", Nodes: []Node{
		{Name: "p", Host: "127.0.0.1", Port: 5432, Role: RolePrimary},
		{Name: "s", Host: "127.0.0.1", Port: 5433, Role: RoleStandby, PoolSize: 4},
	}}}
	c.Cache.IncludeTables = nil
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := c.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	c2, err := Parse(buf.Bytes())
	if err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	if !reflect.DeepEqual(c, stripped(c2)) {
		t.Fatalf("round trip differs: %v", Diff(c, c2))
	}
	if c2.NodePoolSize(c2.Shards[0].Nodes[0]) != 20 || c2.NodePoolSize(c2.Shards[0].Nodes[1]) != 4 {
		t.Error("NodePoolSize")
	}
	// An unset enum cannot be encoded (it would not parse back).
	c.Shards[0].Nodes[0].Role = 0
	if err := c.Encode(&bytes.Buffer{}); err == nil {
		t.Error("encoded a node without a role")
	}
}

func TestDefault(t *testing.T) {
	c := Default()
	if len(c.Shards) != 0 || len(c.Users) != 0 {
		t.Error("Default has shards or users")
	}
	want := map[string]any{
		"listen": c.Server.Listen == "127.0.0.1:6432", "pool_mode": c.Server.PoolMode == PoolTransaction,
		"max_client_conns": c.Server.MaxClientConns == 5000, "max_message_bytes": c.Server.MaxMessageBytes == 1048576,
		"shutdown_timeout": c.Server.ShutdownTimeout.D() == 30*time.Second, "idle_transaction_timeout": c.Server.IdleTransactionTimeout == 0, "client_check_interval": c.Server.ClientCheckInterval.D() == time.Second, "max_prepared_statements": c.Server.MaxPreparedStatements == 1000, "status_listen": c.Server.StatusListen == "127.0.0.1:6433",
		"balance": c.Routing.Balance == RoundRobin, "max_staleness": c.Routing.MaxStaleness.D() == time.Second,
		"catch_up_wait": c.Routing.CatchUpWait.D() == 50*time.Millisecond, "health_interval": c.Routing.HealthInterval.D() == time.Second,
		"lag_interval": c.Routing.LagInterval.D() == 100*time.Millisecond, "probe_timeout": c.Routing.ProbeTimeout.D() == time.Second,
		"pool.size": c.Pool.Size == 20, "acquire_timeout": c.Pool.AcquireTimeout.D() == 5*time.Second,
		"failures": c.Breaker.Failures == 5, "error_rate": c.Breaker.ErrorRate == 0.5, "window": c.Breaker.Window.D() == 10*time.Second,
		"min_requests": c.Breaker.MinRequests == 20, "open_for": c.Breaker.OpenFor.D() == 5*time.Second, "half_open_trials": c.Breaker.HalfOpenTrials == 3,
		"cache.enabled": !c.Cache.Enabled, "max_bytes": c.Cache.MaxBytes == 64<<20, "ttl": c.Cache.TTL.D() == time.Minute,
		"max_entry_bytes": c.Cache.MaxEntryBytes == 1<<20, "include_tables": reflect.DeepEqual(c.Cache.IncludeTables, []string{"*"}),
		"fill_after_misses": c.Cache.FillAfterMisses == 2, "sslmode": c.Backend.SSLMode == "prefer",
	}
	for k, ok := range want {
		if !ok.(bool) {
			t.Errorf("default %s wrong", k)
		}
	}
	// Default returns fresh slices each time.
	Default().Cache.IncludeTables[0] = "x"
	if Default().Cache.IncludeTables[0] != "*" {
		t.Error("Default shares slices")
	}
}

func TestApplyDefaultsIdempotentAndClone(t *testing.T) {
	c := loadExample(t)
	d := c.Clone()
	d.ApplyDefaults()
	if !reflect.DeepEqual(c, d) {
		t.Errorf("ApplyDefaults changed a parsed config: %v", Diff(c, d))
	}
	d.Shards[0].Nodes[0].Port = 1
	d.Tables[0].ShardKey[0] = "zz"
	d.Cache.IncludeTables[0] = "zz"
	if c.Shards[0].Nodes[0].Port == 1 || c.Tables[0].ShardKey[0] == "zz" || c.Cache.IncludeTables[0] == "zz" {
		t.Error("Clone shares memory")
	}
}

func TestAccessors(t *testing.T) {
	c := loadExample(t)
	if i := c.ShardIndex("s1"); i != 1 {
		t.Errorf("ShardIndex = %d", i)
	}
	if c.ShardIndex("nope") != -1 || c.DefaultShardIndex() != 0 {
		t.Error("ShardIndex/DefaultShardIndex")
	}
	if _, ok := c.Primary("nope"); ok {
		t.Error("Primary of unknown shard")
	}
	n, shard, ok := c.Node("s1-standby1")
	if !ok || shard != "s1" || n.Role != RoleStandby {
		t.Errorf("Node = %+v %q %v", n, shard, ok)
	}
	if _, ok := c.Table("PUBLIC.Accounts"); !ok {
		t.Error("Table lookup is not case-insensitive / public-qualified")
	}
	if _, ok := c.Table("other.accounts"); ok {
		t.Error("Table matched another schema")
	}
	if !c.AllowsDatabase("app") || c.AllowsDatabase("postgres") {
		t.Error("AllowsDatabase")
	}
	if c.TLSEnabled() {
		t.Error("TLSEnabled")
	}
	if CanonicalTableName("Foo") != "public.foo" || CanonicalTableName("s.Foo") != "s.foo" {
		t.Error("CanonicalTableName")
	}
}

func TestEnums(t *testing.T) {
	type enum interface {
		String() string
		MarshalText() ([]byte, error)
	}
	check := func(v enum, want string, parse func(string) (enum, error)) {
		t.Helper()
		if v.String() != want {
			t.Errorf("String() = %q, want %q", v.String(), want)
		}
		b, err := v.MarshalText()
		if err != nil || string(b) != want {
			t.Errorf("MarshalText = %q, %v", b, err)
		}
		back, err := parse(want)
		if err != nil || back != v {
			t.Errorf("UnmarshalText(%q) = %v, %v", want, back, err)
		}
	}
	for _, p := range []BalancePolicy{RoundRobin, WeightedRoundRobin, LeastConnections, WeightedLeastConnections, LeastLatency, Hash} {
		check(p, balanceNames[p], func(s string) (enum, error) { var x BalancePolicy; err := x.UnmarshalText([]byte(s)); return x, err })
	}
	for _, m := range []PoolMode{PoolTransaction, PoolSession} {
		check(m, poolModeNames[m], func(s string) (enum, error) { var x PoolMode; err := x.UnmarshalText([]byte(s)); return x, err })
	}
	for _, a := range []AuthMethod{AuthSCRAMSHA256, AuthMD5} {
		check(a, authNames[a], func(s string) (enum, error) { var x AuthMethod; err := x.UnmarshalText([]byte(s)); return x, err })
	}
	for _, r := range []Role{RolePrimary, RoleStandby} {
		check(r, roleNames[r], func(s string) (enum, error) { var x Role; err := x.UnmarshalText([]byte(s)); return x, err })
	}
	for _, k := range []KeyType{KeyInt, KeyText, KeyUUID} {
		check(k, keyTypeNames[k], func(s string) (enum, error) { var x KeyType; err := x.UnmarshalText([]byte(s)); return x, err })
	}
	if Hash.String() != "hash" || WeightedLeastConnections.String() != "weighted_least_connections" || RolePrimary.String() != "primary" {
		t.Error("enum spelling")
	}
	if Role(0).String() != "Role(0)" || BalancePolicy(99).String() != "BalancePolicy(99)" {
		t.Error("String of invalid value")
	}
	var r Role
	if err := r.UnmarshalText([]byte("PRIMARY")); err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "allowed: primary, standby") {
		t.Errorf("UnmarshalText(PRIMARY) = %v", err)
	}
	if _, err := Role(0).MarshalText(); err == nil {
		t.Error("MarshalText of unset Role succeeded")
	}
}

func TestDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"200ms": 200 * time.Millisecond, "1s": time.Second, "1m30s": 90 * time.Second, "0s": 0} {
		var d Duration
		if err := d.UnmarshalText([]byte(in)); err != nil || d.D() != want {
			t.Errorf("UnmarshalText(%q) = %v, %v", in, d, err)
		}
		b, _ := d.MarshalText()
		var back Duration
		if err := back.UnmarshalText(b); err != nil || back != d {
			t.Errorf("round trip %q -> %q -> %v", in, b, back)
		}
	}
	var d Duration
	if err := d.UnmarshalText([]byte("5")); err == nil || !errors.Is(err, ErrInvalid) {
		t.Errorf("bare number accepted: %v", err)
	}
}

func TestLoadNamesFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.toml")
	s := baseSections()
	s["extra"] = "\n[pool]\nsize = -3\n"
	text := join(s)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	want := p + ":" + strconv.Itoa(lineOf(t, text, "size = -3")) + ": pool.size: invalid value: must be greater than 0 (got -3)"
	if err == nil || err.Error() != want {
		t.Errorf("Load error = %v\nwant %s", err, want)
	}
	if _, err := Load(filepath.Join(dir, "missing.toml")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestSyntaxErrorNamesLine(t *testing.T) {
	text := "[server]\ndatabases = [\"app\"]\nlisten = \"x\n"
	_, err := Parse([]byte(text))
	fes := FieldErrors(err)
	if len(fes) != 1 || !errors.Is(err, ErrSyntax) || fes[0].Line != 3 || !strings.HasPrefix(err.Error(), "config: line 3: ") {
		t.Fatalf("syntax error = %v (%+v)", err, fes)
	}
}

func TestUnknownKeysReportedOnce(t *testing.T) {
	s := baseSections()
	s["extra"] = "\n[metrics]\nport = 1\n[metrics.deep]\nx = 2\n"
	_, err := Parse([]byte(join(s)))
	fes := FieldErrors(err)
	if len(fes) != 1 || fes[0].Key != "metrics" || !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("got %v", err)
	}
}

func TestInlineTables(t *testing.T) {
	text := `[server]
databases = ["app"]
[[users]]
name = "app"
password = "pw"
[[shards]]
name = "s0"
nodes = [{ name = "p", host = "db1", port = 5432, role = "primary" },
         { name = "s", host = "db2", port = 5432, role = "standby", pool_size = 5 }]
`
	c, err := Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if n, _, ok := c.Node("s"); !ok || n.PoolSize != 5 || n.Weight != 1 {
		t.Errorf("inline node = %+v", n)
	}
	bad := strings.Replace(text, `role = "standby"`, `role = "standby", colour = 1`, 1)
	_, err = Parse([]byte(bad))
	fes := FieldErrors(err)
	if len(fes) != 1 || fes[0].Key != "shards[0].nodes[1].colour" || fes[0].Line != 9 {
		t.Errorf("unknown key in inline table: %v", err)
	}
	bad = strings.Replace(text, `port = 5432, role = "standby"`, `port = -1, role = "standby"`, 1)
	_, err = Parse([]byte(bad))
	fes = FieldErrors(err)
	if len(fes) != 1 || fes[0].Key != "shards[0].nodes[1].port" || fes[0].Line != 9 {
		t.Errorf("bad port in inline table: %v", err)
	}
}

func BenchmarkParseExample(b *testing.B) {
	data, err := os.ReadFile(exampleFile)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}

// TestConnURLBackendTLS checks that [backend] reaches the connection strings
// the proxy's pools, probes and cache stream are built from, as pgconn
// reads them.
func TestConnURLBackendTLS(t *testing.T) {
	c := loadExample(t)
	n := c.Shards[0].Nodes[0]
	for _, tc := range []struct {
		b          Backend
		tls        bool   // a TLS config at all
		fallback   bool   // a plaintext fallback after it
		serverName string // verify-full checks the host name
	}{
		{Backend{SSLMode: "disable"}, false, false, ""},
		{Backend{SSLMode: "prefer"}, true, true, ""},
		{Backend{SSLMode: "require"}, true, false, ""},
		{Backend{SSLMode: "verify-full", SSLRootCert: "testdata/ca.pem"}, true, false, n.Host},
	} {
		c.Backend = tc.b
		url := c.ConnURL(n, "app", "pw", "app")
		pc, err := pgconn.ParseConfig(url)
		if err != nil {
			t.Fatalf("%+v: %s does not parse: %v", tc.b, url, err)
		}
		if (pc.TLSConfig != nil) != tc.tls || (len(pc.Fallbacks) > 0) != tc.fallback {
			t.Errorf("%+v: TLS %v, %d fallbacks; want TLS %v, fallback %v", tc.b, pc.TLSConfig != nil, len(pc.Fallbacks), tc.tls, tc.fallback)
		}
		if pc.TLSConfig != nil && pc.TLSConfig.ServerName != tc.serverName {
			t.Errorf("%+v: ServerName %q, want %q", tc.b, pc.TLSConfig.ServerName, tc.serverName)
		}
		if tc.b.SSLRootCert != "" && (pc.TLSConfig == nil || pc.TLSConfig.RootCAs == nil) {
			t.Errorf("%+v: sslrootcert not loaded", tc.b)
		}
	}
	c.Backend = Backend{SSLMode: "verify-ca", SSLRootCert: "testdata/missing.pem"}
	if _, err := pgconn.ParseConfig(c.ConnURL(n, "app", "pw", "app")); err == nil || !strings.Contains(err.Error(), "CA file") {
		t.Errorf("missing CA file: %v", err)
	}
}

// TestConnURLHosts: a node's host is a host name, an IPv6 address or a
// Unix-socket directory, and reaches pgconn as such (a socket connection
// has no TLS, as in libpq).
func TestConnURLHosts(t *testing.T) {
	c := loadExample(t)
	c.Backend = Backend{SSLMode: "require"}
	for _, tc := range []struct {
		host string
		tls  bool
	}{
		{"db1.example.com", true},
		{"::1", true},
		{"/var/run/postgresql", false},
		{"/tmp/dir with space", false},
	} {
		n := Node{Name: "n", Host: tc.host, Port: 5433}
		url := c.ConnURL(n, "app", "p@ss:w/rd", "app")
		pc, err := pgconn.ParseConfig(url)
		if err != nil {
			t.Fatalf("%s: %s does not parse: %v", tc.host, url, err)
		}
		if pc.Host != tc.host || pc.Port != 5433 || pc.User != "app" || pc.Password != "p@ss:w/rd" || pc.Database != "app" {
			t.Errorf("%s: %s parses to host %q port %d user %q password %q database %q", tc.host, url, pc.Host, pc.Port, pc.User, pc.Password, pc.Database)
		}
		if (pc.TLSConfig != nil) != tc.tls {
			t.Errorf("%s: TLS %v, want %v", tc.host, pc.TLSConfig != nil, tc.tls)
		}
		if n.IsSocket() != strings.HasPrefix(tc.host, "/") {
			t.Errorf("%s: IsSocket %v", tc.host, n.IsSocket())
		}
	}
}

// TestWithFilesIn: relative file paths are taken from the given directory;
// absolute ones, empty ones and sslrootcert = "system" stay; c is not changed.
func TestWithFilesIn(t *testing.T) {
	c := loadExample(t)
	c.Server.TLSCert, c.Server.TLSKey = "tls/server.crt", "/etc/dbproxy/server.key"
	c.Backend = Backend{SSLMode: "verify-full", SSLRootCert: "system", SSLCert: "client.crt", SSLKey: "client.key"}
	n := c.WithFilesIn("/cfg")
	if n.Server.TLSCert != "/cfg/tls/server.crt" || n.Server.TLSKey != "/etc/dbproxy/server.key" {
		t.Errorf("server files: %q, %q", n.Server.TLSCert, n.Server.TLSKey)
	}
	if want := (Backend{SSLMode: "verify-full", SSLRootCert: "system", SSLCert: "/cfg/client.crt", SSLKey: "/cfg/client.key"}); n.Backend != want {
		t.Errorf("backend %+v, want %+v", n.Backend, want)
	}
	c.Backend.SSLRootCert = "ca.pem"
	if got := c.WithFilesIn("/cfg").Backend.SSLRootCert; got != "/cfg/ca.pem" {
		t.Errorf("sslrootcert %q", got)
	}
	if c.Server.TLSCert != "tls/server.crt" || c.Backend.SSLCert != "client.crt" {
		t.Errorf("WithFilesIn changed its receiver: %+v %+v", c.Server, c.Backend)
	}
	c.Backend = Backend{}
	if n := c.WithFilesIn("/cfg"); n.Backend != (Backend{}) {
		t.Errorf("empty paths became %+v", n.Backend)
	}
}
