package config

import (
	"errors"
	"strings"
	"testing"
)

// Sections of a small valid config; cases replace or edit them.
var sectionOrder = []string{"server", "users", "shards", "tables", "routing", "extra"}

func baseSections() map[string]string {
	return map[string]string{
		"server": `[server]
databases = ["app"]
`,
		"users": `
[[users]]
name = "app"
password = "secret"
`,
		"shards": `
[[shards]]
name = "s0"
  [[shards.nodes]]
  name = "s0-primary"
  host = "127.0.0.1"
  port = 5432
  role = "primary"
  [[shards.nodes]]
  name = "s0-standby"
  host = "127.0.0.1"
  port = 5433
  role = "standby"

[[shards]]
name = "s1"
  [[shards.nodes]]
  name = "s1-primary"
  host = "127.0.0.1"
  port = 5442
  role = "primary"
`,
		"tables": `
[[tables]]
name = "accounts"
shard_key = ["id"]
key_types = ["int"]
`,
		"routing": "",
		"extra":   "",
	}
}

func join(s map[string]string) string {
	var b strings.Builder
	for _, k := range sectionOrder {
		b.WriteString(s[k])
	}
	return b.String()
}

// lineOf returns the 1-based line of the first occurrence of marker in text.
func lineOf(t *testing.T, text, marker string) int {
	t.Helper()
	i := strings.Index(text, marker)
	if i < 0 {
		t.Fatalf("marker %q not in config text", marker)
	}
	if strings.Count(text, marker) != 1 {
		t.Fatalf("marker %q is not unique in config text", marker)
	}
	return strings.Count(text[:i], "\n") + 1
}

func TestBaseConfigValid(t *testing.T) {
	c, err := Parse([]byte(join(baseSections())))
	if err != nil {
		t.Fatalf("base config: %v", err)
	}
	if c.Routing.DefaultShard != "s0" {
		t.Errorf("default shard = %q, want first shard s0", c.Routing.DefaultShard)
	}
	if c.Users[0].Auth != AuthSCRAMSHA256 || c.Shards[1].Weight != 1 || c.Shards[0].Nodes[1].Weight != 1 {
		t.Errorf("ApplyDefaults not applied: %+v", c)
	}
	if c.Pool.Size != 20 || c.Server.Listen != "127.0.0.1:6432" {
		t.Errorf("defaults from Default() missing: %+v", c)
	}
}

type validateCase struct {
	name string
	mut  func(s map[string]string)
	// Expected error (one of the returned ones).
	key      string
	sentinel error
	msg      string // substring of the message
	marker   string // the error's line is the line of this unique substring; "" = line 0
}

func replaceIn(sec, old, new string) func(map[string]string) {
	return func(s map[string]string) {
		if !strings.Contains(s[sec], old) {
			panic("test bug: " + old + " not in section " + sec)
		}
		s[sec] = strings.Replace(s[sec], old, new, 1)
	}
}

func set(sec, text string) func(map[string]string) {
	return func(s map[string]string) { s[sec] = text }
}

var validateCases = []validateCase{
	{
		name: "unknown key names key and line",
		mut:  replaceIn("server", `databases = ["app"]`, "databases = [\"app\"]\nlisten_addr = \"x:1\""),
		key:  "server.listen_addr", sentinel: ErrUnknownKey, msg: `did you mean "listen"`, marker: "listen_addr",
	},
	{
		name: "unknown key inside array of tables is indexed",
		mut:  replaceIn("shards", "port = 5433", "port = 5433\n  hots = \"x\""),
		key:  "shards[0].nodes[1].hots", sentinel: ErrUnknownKey, msg: "not a dbproxy configuration key", marker: "hots",
	},
	{
		name: "unknown table",
		mut:  set("extra", "\n[replication]\nfoo = 1\n"),
		key:  "replication", sentinel: ErrUnknownKey, msg: "not a dbproxy", marker: "[replication]",
	},
	{
		name: "case-mismatched key is unknown",
		mut:  replaceIn("server", `databases`, `Databases`),
		key:  "server.Databases", sentinel: ErrUnknownKey, msg: `did you mean "databases"`, marker: "Databases",
	},
	{
		name: "wrong value type",
		mut:  set("extra", "\n[pool]\nsize = \"20\"\n"),
		key:  "pool.size", sentinel: ErrType, msg: "must be an integer", marker: `size = "20"`,
	},
	{
		name: "table instead of array of tables",
		mut:  set("users", "\n[users]\nname = \"app\"\n"),
		key:  "users", sentinel: ErrType, msg: "array of tables ([[users]])", marker: "[users]",
	},
	{
		name: "missing primary",
		mut:  replaceIn("shards", `  role = "primary"`+"\n"+`  [[shards.nodes]]`, `  role = "standby"`+"\n"+`  [[shards.nodes]]`),
		key:  "shards[0]", sentinel: ErrInvalid, msg: `shard "s0" has no primary`, marker: "[[shards]]\nname = \"s0\"",
	},
	{
		name: "two primaries in a shard",
		mut:  replaceIn("shards", "port = 5433\n  role = \"standby\"", "port = 5433\n  role = \"primary\" # second"),
		key:  "shards[0].nodes[1].role", sentinel: ErrInvalid, msg: "more than one primary (also shards[0].nodes[0])", marker: "# second",
	},
	{
		name: "duplicate host:port across shards",
		mut:  replaceIn("shards", "port = 5442", "port = 5433 # dup"),
		key:  "shards[1].nodes[0].port", sentinel: ErrInvalid, msg: "127.0.0.1:5433 is already used by shards[0].nodes[1]", marker: "# dup",
	},
	{
		name: "duplicate shard name",
		mut:  replaceIn("shards", `name = "s1"`, `name = "s0" # dupshard`),
		key:  "shards[1].name", sentinel: ErrInvalid, msg: `shard "s0" is already defined by shards[0]`, marker: "# dupshard",
	},
	{
		name: "slash in shard name",
		mut:  replaceIn("shards", `name = "s1"`, `name = "s1/x" # slashshard`),
		key:  "shards[1].name", sentinel: ErrInvalid, msg: `shard "s1/x": '/' is not allowed in a shard name`, marker: "# slashshard",
	},
	{
		name: "duplicate node name across shards",
		mut:  replaceIn("shards", `name = "s1-primary"`, `name = "s0-standby" # dupnode`),
		key:  "shards[1].nodes[0].name", sentinel: ErrInvalid, msg: `node "s0-standby" is already defined by shards[0].nodes[1]`, marker: "# dupnode",
	},
	{
		name: "shard without nodes",
		mut:  set("extra", "\n[[shards]] # noshardnodes\nname = \"empty\"\n"),
		key:  "shards[2].nodes", sentinel: ErrInvalid, msg: `shard "empty" has no nodes`, marker: "# noshardnodes",
	},
	{
		name: "node without role",
		mut: func(s map[string]string) {
			replaceIn("shards", "port = 5442\n  role = \"primary\"", "port = 5442")(s)
			replaceIn("shards", "name = \"s1\"\n  [[shards.nodes]]", "name = \"s1\"\n  [[shards.nodes]] # s1node")(s)
		},
		key: "shards[1].nodes[0].role", sentinel: ErrInvalid, msg: "must be set (allowed: primary, standby)", marker: "# s1node",
	},
	{
		name: "bad role value lists allowed",
		mut:  replaceIn("shards", `role = "standby"`, `role = "replica"`),
		key:  "shards[0].nodes[1].role", sentinel: ErrInvalid, msg: `unknown role "replica" (allowed: primary, standby)`, marker: `"replica"`,
	},
	{
		name: "relative socket directory",
		mut:  replaceIn("shards", "host = \"127.0.0.1\"\n  port = 5442", "host = \"run/pg\" # relsock\n  port = 5442"),
		key:  "shards[1].nodes[0].host", sentinel: ErrInvalid, msg: `"run/pg" is neither a host name nor an absolute path`, marker: "# relsock",
	},
	{
		name: "port zero",
		mut:  replaceIn("shards", "port = 5442", "port = 0"),
		key:  "shards[1].nodes[0].port", sentinel: ErrInvalid, msg: "must be between 1 and 65535 (got 0)", marker: "port = 0",
	},
	{
		name: "negative node weight",
		mut:  replaceIn("shards", "port = 5442", "port = 5442\n  weight = -2"),
		key:  "shards[1].nodes[0].weight", sentinel: ErrInvalid, msg: "must not be negative (got -2)", marker: "weight = -2",
	},
	{
		name: "empty shard key",
		mut:  replaceIn("tables", `shard_key = ["id"]`, `shard_key = []`),
		key:  "tables[0].shard_key", sentinel: ErrInvalid, msg: "must list at least one column", marker: "shard_key = []",
	},
	{
		name: "key types count mismatch",
		mut:  replaceIn("tables", `key_types = ["int"]`, `key_types = ["int", "text"]`),
		key:  "tables[0].key_types", sentinel: ErrInvalid, msg: "has 2 entries but shard_key has 1 columns", marker: `key_types = ["int", "text"]`,
	},
	{
		name: "bad key type",
		mut:  replaceIn("tables", `key_types = ["int"]`, `key_types = ["bigint"]`),
		key:  "tables[0].key_types[0]", sentinel: ErrInvalid, msg: `unknown key type "bigint" (allowed: int, text, uuid)`, marker: `"bigint"`,
	},
	{
		name: "shard key column listed twice",
		mut: replaceIn("tables", `shard_key = ["id"]`+"\n"+`key_types = ["int"]`,
			`shard_key = ["id", "ID"]`+"\n"+`key_types = ["int", "int"]`),
		key: "tables[0].shard_key[1]", sentinel: ErrInvalid, msg: `column "ID" is listed twice`, marker: `["id", "ID"]`,
	},
	{
		name: "duplicate tables entry (public. prefix is the same table)",
		mut:  set("extra", "\n[[tables]]\nname = \"public.accounts\"\nshard_key = [\"x\"]\nkey_types = [\"text\"]\n"),
		key:  "tables[1].name", sentinel: ErrInvalid, msg: `table "public.accounts" is already declared by tables[0]`, marker: `"public.accounts"`,
	},
	{
		name: "table name not an identifier",
		mut:  replaceIn("tables", `name = "accounts"`, `name = "my table"`),
		key:  "tables[0].name", sentinel: ErrInvalid, msg: `"my table" is not a valid table name`, marker: `"my table"`,
	},
	{
		name: "table name with too many dots",
		mut:  replaceIn("tables", `name = "accounts"`, `name = "db.public.accounts"`),
		key:  "tables[0].name", sentinel: ErrInvalid, msg: "not a valid table name", marker: `"db.public.accounts"`,
	},
	{
		name: "default shard unknown",
		mut:  set("routing", "\n[routing]\ndefault_shard = \"s9\"\n"),
		key:  "routing.default_shard", sentinel: ErrInvalid, msg: `no shard is named "s9" (shards: s0, s1)`, marker: `"s9"`,
	},
	{
		name: "bad balance lists allowed",
		mut:  set("routing", "\n[routing]\nbalance = \"random\"\n"),
		key:  "routing.balance", sentinel: ErrInvalid,
		msg:    `unknown balance "random" (allowed: round_robin, weighted_round_robin, least_connections, weighted_least_connections, least_latency, hash)`,
		marker: `"random"`,
	},
	{
		name: "bad pool mode",
		mut:  replaceIn("server", `databases`, "pool_mode = \"statement\"\ndatabases"),
		key:  "server.pool_mode", sentinel: ErrInvalid, msg: `unknown pool_mode "statement" (allowed: transaction, session)`, marker: `"statement"`,
	},
	{
		name: "bad auth",
		mut:  replaceIn("users", `password = "secret"`, "password = \"secret\"\nauth = \"trust\""),
		key:  "users[0].auth", sentinel: ErrInvalid, msg: `unknown auth "trust" (allowed: scram-sha-256, md5)`, marker: `"trust"`,
	},
	{
		name: "zero pool size",
		mut:  set("extra", "\n[pool]\nsize = 0\n"),
		key:  "pool.size", sentinel: ErrInvalid, msg: "must be greater than 0 (got 0)", marker: "size = 0",
	},
	{
		name: "negative max_client_conns",
		mut:  replaceIn("server", `databases`, "max_client_conns = -1\ndatabases"),
		key:  "server.max_client_conns", sentinel: ErrInvalid, msg: "must be greater than 0 (got -1)", marker: "max_client_conns",
	},
	{
		name: "zero cache max_bytes",
		mut:  set("extra", "\n[cache]\nmax_bytes = 0\n"),
		key:  "cache.max_bytes", sentinel: ErrInvalid, msg: "must be greater than 0", marker: "max_bytes = 0",
	},
	{
		name: "error rate out of range",
		mut:  set("extra", "\n[breaker]\nerror_rate = 1.5\n"),
		key:  "breaker.error_rate", sentinel: ErrInvalid, msg: "must be in (0, 1]", marker: "1.5",
	},
	{
		name: "bad duration",
		mut:  set("routing", "\n[routing]\nmax_staleness = \"1 second\"\n"),
		key:  "routing.max_staleness", sentinel: ErrInvalid, msg: `bad duration "1 second"`, marker: `"1 second"`,
	},
	{
		name: "duration as number",
		mut:  set("routing", "\n[routing]\nlag_interval = 100\n"),
		key:  "routing.lag_interval", sentinel: ErrType, msg: "must be a string, got integer 100", marker: "lag_interval",
	},
	{
		name: "zero duration",
		mut:  set("routing", "\n[routing]\nprobe_timeout = \"0s\"\n"),
		key:  "routing.probe_timeout", sentinel: ErrInvalid, msg: "must be a duration greater than 0", marker: "probe_timeout",
	},
	{
		name: "negative duration",
		mut:  set("routing", "\n[routing]\ncatch_up_wait = \"-5ms\"\n"),
		key:  "routing.catch_up_wait", sentinel: ErrInvalid, msg: "must not be a negative duration", marker: "catch_up_wait",
	},
	{
		name: "negative idle_transaction_timeout",
		mut:  replaceIn("server", `databases`, "idle_transaction_timeout = \"-1s\"\ndatabases"),
		key:  "server.idle_transaction_timeout", sentinel: ErrInvalid, msg: "must not be a negative duration", marker: "idle_transaction_timeout",
	},
	{
		name: "negative client_check_interval",
		mut:  replaceIn("server", `databases`, "client_check_interval = \"-1s\"\ndatabases"),
		key:  "server.client_check_interval", sentinel: ErrInvalid, msg: "must not be a negative duration", marker: "client_check_interval",
	},
	{
		name: "negative max_prepared_statements",
		mut:  replaceIn("server", `databases`, "max_prepared_statements = -1\ndatabases"),
		key:  "server.max_prepared_statements", sentinel: ErrInvalid, msg: "must be >= 0 (0: unbounded)", marker: "max_prepared_statements",
	},
	{
		name: "unknown backend sslmode",
		mut:  set("extra", "\n[backend]\nsslmode = \"verify\"\n"),
		key:  "backend.sslmode", sentinel: ErrInvalid, msg: `"verify" is not an sslmode (allowed: disable, allow, prefer, require, verify-ca, verify-full)`, marker: "sslmode",
	},
	{
		name: "backend sslcert without sslkey",
		mut:  set("extra", "\n[backend]\nsslmode = \"verify-full\"\nsslcert = \"/etc/client.pem\"\n"),
		key:  "backend.sslcert", sentinel: ErrInvalid, msg: "sslkey is not", marker: "sslcert",
	},
	{
		name: "backend sslrootcert with sslmode disable",
		mut:  set("extra", "\n[backend]\nsslmode = \"disable\"\nsslrootcert = \"/etc/ca.pem\"\n"),
		key:  "backend.sslrootcert", sentinel: ErrInvalid, msg: "has no effect with sslmode = \"disable\"", marker: "sslrootcert",
	},
	{
		name: "tls_cert without tls_key",
		mut:  replaceIn("server", `databases`, "tls_cert = \"/etc/cert.pem\"\ndatabases"),
		key:  "server.tls_cert", sentinel: ErrInvalid, msg: "tls_key is not", marker: "tls_cert",
	},
	{
		name: "tls_key without tls_cert",
		mut:  replaceIn("server", `databases`, "tls_key = \"/etc/key.pem\"\ndatabases"),
		key:  "server.tls_key", sentinel: ErrInvalid, msg: "tls_cert is not", marker: "tls_key",
	},
	{
		name: "relative unix_socket_dir",
		mut:  replaceIn("server", `databases`, "unix_socket_dir = \"run\"\ndatabases"),
		key:  "server.unix_socket_dir", sentinel: ErrInvalid, msg: `"run" is not an absolute path`, marker: "unix_socket_dir",
	},
	{
		name: "unix_socket_dir too long for a socket path",
		mut:  replaceIn("server", `databases`, "unix_socket_dir = \"/"+strings.Repeat("d", 100)+"\"\ndatabases"),
		key:  "server.unix_socket_dir", sentinel: ErrInvalid, msg: "would exceed 107 bytes", marker: "unix_socket_dir",
	},
	{
		name: "tls_required without certificate",
		mut:  replaceIn("server", `databases`, "tls_required = true\ndatabases"),
		key:  "server.tls_required", sentinel: ErrInvalid, msg: "needs tls_cert and tls_key", marker: "tls_required",
	},
	{
		name: "user without password or verifier",
		mut:  replaceIn("users", "password = \"secret\"\n", ""),
		key:  "users[0]", sentinel: ErrInvalid, msg: `user "app" has neither password nor scram_verifier`, marker: "[[users]]",
	},
	{
		name: "user with both password and verifier",
		mut:  replaceIn("users", `password = "secret"`, "password = \"secret\"\nscram_verifier = \""+rfcVerifier+"\""),
		key:  "users[0].scram_verifier", sentinel: ErrInvalid, msg: "not both", marker: "scram_verifier",
	},
	{
		name: "malformed scram verifier",
		mut:  replaceIn("users", `password = "secret"`, "scram_verifier = \"SCRAM-SHA-256$4096:abc\"\nbackend_password = \"x\""),
		key:  "users[0].scram_verifier", sentinel: ErrInvalid, msg: "malformed scram_verifier", marker: "scram_verifier",
	},
	{
		name: "scram verifier without backend password",
		mut:  replaceIn("users", `password = "secret"`, "scram_verifier = \""+rfcVerifier+"\""),
		key:  "users[0].backend_password", sentinel: ErrInvalid, msg: "required when only scram_verifier is given", marker: "[[users]]",
	},
	{
		name: "md5 with verifier only",
		mut:  replaceIn("users", `password = "secret"`, "scram_verifier = \""+rfcVerifier+"\"\nbackend_password = \"x\"\nauth = \"md5\""),
		key:  "users[0].auth", sentinel: ErrInvalid, msg: "md5 needs a plain password", marker: `auth = "md5"`,
	},
	{
		name: "duplicate user",
		mut:  set("extra", "\n[[users]]\nname = \"app\" # dupuser\npassword = \"x\"\n"),
		key:  "users[1].name", sentinel: ErrInvalid, msg: `user "app" is already defined by users[0]`, marker: "# dupuser",
	},
	{
		name: "no users",
		mut:  set("users", ""),
		key:  "users", sentinel: ErrInvalid, msg: "at least one [[users]]",
	},
	{
		name: "no shards",
		mut:  func(s map[string]string) { s["shards"] = "" },
		key:  "shards", sentinel: ErrInvalid, msg: "at least one [[shards]]",
	},
	{
		name: "empty databases list",
		mut:  replaceIn("server", `databases = ["app"]`, `databases = []`),
		key:  "server.databases", sentinel: ErrInvalid, msg: "at least one database", marker: "databases = []",
	},
	{
		name: "missing databases",
		mut:  set("server", ""),
		key:  "server.databases", sentinel: ErrInvalid, msg: "at least one database",
	},
	{
		name: "bad listen address",
		mut:  replaceIn("server", `databases`, "listen = \"localhost\"\ndatabases"),
		key:  "server.listen", sentinel: ErrInvalid, msg: "not a host:port address", marker: "listen",
	},
	{
		name: "bad cache pattern",
		mut:  set("extra", "\n[cache]\ninclude_tables = [\"[\"]\n"),
		key:  "cache.include_tables[0]", sentinel: ErrInvalid, msg: "bad pattern", marker: "include_tables",
	},
	{
		name: "entry larger than cache",
		mut:  set("extra", "\n[cache]\nmax_bytes = 10\nmax_entry_bytes = 20\n"),
		key:  "cache.max_entry_bytes", sentinel: ErrInvalid, msg: "must not exceed cache.max_bytes", marker: "max_entry_bytes",
	},
	{
		name: "cache database not served",
		mut:  set("extra", "\n[cache]\ndatabases = [\"app\", \"nope\"] # cachedbs\n"),
		key:  "cache.databases[1]", sentinel: ErrInvalid, msg: `database "nope" is not in server.databases`, marker: "# cachedbs",
	},
	{
		name: "cache enabled for no database",
		mut:  set("extra", "\n[cache]\nenabled = true\ndatabases = []\n"),
		key:  "cache.databases", sentinel: ErrInvalid, msg: "must list at least one of server.databases", marker: "databases = []",
	},
	{
		name:     "syntax error has line",
		mut:      set("extra", "\n[pool]\nsize = = 3\n"),
		sentinel: ErrSyntax, msg: "", marker: "size = = 3", key: "*",
	},
}

func TestValidateErrors(t *testing.T) {
	for _, tc := range validateCases {
		t.Run(tc.name, func(t *testing.T) {
			s := baseSections()
			tc.mut(s)
			text := join(s)
			c, err := Parse([]byte(text))
			if err == nil {
				t.Fatalf("Parse accepted invalid config:\n%s\n%+v", text, c)
			}
			if c != nil {
				t.Errorf("Parse returned a config with an error")
			}
			if !errors.Is(err, tc.sentinel) {
				t.Errorf("error does not wrap %v: %v", tc.sentinel, err)
			}
			wantLine := 0
			if tc.marker != "" {
				wantLine = lineOf(t, text, tc.marker)
			}
			var found *FieldError
			for _, fe := range FieldErrors(err) {
				if (tc.key == "*" || fe.Key == tc.key) && strings.Contains(fe.Error(), tc.msg) && errors.Is(fe, tc.sentinel) {
					found = fe
					break
				}
			}
			if found == nil {
				t.Fatalf("no error with key %q and message containing %q; got:\n%v", tc.key, tc.msg, err)
			}
			if found.Line != wantLine {
				t.Errorf("line = %d, want %d (%v)\n%s", found.Line, wantLine, found, text)
			}
			if tc.key != "*" && !strings.Contains(found.Error(), tc.key+": ") {
				t.Errorf("message does not name the key: %q", found.Error())
			}
		})
	}
}

func TestValidateCollectsAllErrorsSortedByLine(t *testing.T) {
	s := baseSections()
	s["routing"] = "\n[routing]\nbalance = \"nope\"\n"
	s["extra"] = "\n[pool]\nsize = -1\n"
	s["shards"] = strings.Replace(s["shards"], "port = 5442", "port = 70000", 1)
	s["server"] = "[server]\ndatabases = []\n"
	text := join(s)
	// Type/enum errors are reported before semantic checks run, so use only
	// semantic errors here.
	text = strings.Replace(text, `balance = "nope"`, `default_shard = "zz"`, 1)
	_, err := Parse([]byte(text))
	fes := FieldErrors(err)
	var keys []string
	for _, fe := range fes {
		keys = append(keys, fe.Key)
	}
	want := []string{"server.databases", "shards[1].nodes[0].port", "routing.default_shard", "pool.size"}
	if strings.Join(keys, ",") != strings.Join(want, ",") {
		t.Fatalf("keys = %v, want %v (sorted by line)\n%v", keys, want, err)
	}
	for i := 1; i < len(fes); i++ {
		if fes[i-1].Line >= fes[i].Line {
			t.Errorf("not sorted by line: %v", err)
		}
	}
	// The joined message has one line per problem.
	if n := strings.Count(err.Error(), "\n"); n != len(want)-1 {
		t.Errorf("joined error has %d newlines, want %d:\n%v", n, len(want)-1, err)
	}
}

func TestValidateCodeBuiltConfig(t *testing.T) {
	c := Default()
	if err := c.Validate(); err == nil {
		t.Fatal("Default() without shards/users/databases validated")
	} else {
		for _, k := range []string{"users", "shards", "server.databases"} {
			if !strings.Contains(err.Error(), "config: "+k+": ") {
				t.Errorf("missing error for %s (no line for code-built configs): %v", k, err)
			}
		}
	}
	c.Server.Databases = []string{"app"}
	c.Users = []User{{Name: "app", Password: "pw"}}
	c.Shards = []Shard{{Name: "s0", Nodes: []Node{{Name: "p", Host: "h", Port: 1, Role: RolePrimary}}}}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "users[0].auth") {
		t.Errorf("unset auth not reported before ApplyDefaults: %v", err)
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("code-built config after ApplyDefaults: %v", err)
	}
	// Zero-valued enum that ApplyDefaults does not fill.
	c.Tables = []Table{{Name: "t", ShardKey: []string{"a"}, KeyTypes: []KeyType{0}}}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "tables[0].key_types[0]: invalid value: invalid key type") {
		t.Errorf("zero key type: %v", err)
	}
}
