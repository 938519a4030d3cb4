package proxy

import (
	"crypto/md5"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/shard"
)

func md5hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig()
	ok.Users = []User{{Name: "a", Password: "p"}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"no user name":     func(c *Config) { c.Users = []User{{Password: "p"}} },
		"duplicate user":   func(c *Config) { c.Users = append(c.Users, User{Name: "a", Password: "q"}) },
		"both secrets":     func(c *Config) { c.Users = []User{{Name: "b", Password: "p", SCRAMVerifier: "x"}} },
		"bad verifier":     func(c *Config) { c.Users = []User{{Name: "b", SCRAMVerifier: "SCRAM-SHA-256$x"}} },
		"md5 hash + scram": func(c *Config) { c.Users = []User{{Name: "b", Password: "md5" + md5hex("x")}} },
		"tiny messages":    func(c *Config) { c.MaxMessageBytes = 10 },
		"require tls":      func(c *Config) { c.RequireTLS = true },
		"negative":         func(c *Config) { c.ShutdownTimeout = -time.Second },
		"db not allowed":   func(c *Config) { c.Databases = []string{"x"}; c.Users[0].Databases = []string{"y"} },
	} {
		c := ok
		c.Users = append([]User(nil), ok.Users...)
		mut(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := New(ok, Deps{}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("New without deps: %v", err)
	}
	if _, err := New(ok, Deps{Router: testRouter(t), Shards: map[shard.ID]*replica.Set{}}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("New without shards: %v", err)
	}
}

func TestEnums(t *testing.T) {
	var m PoolMode
	if err := m.UnmarshalText([]byte("session")); err != nil || m != PoolSession || m.String() != "session" {
		t.Fatal(m, err)
	}
	if err := m.UnmarshalText([]byte("statement")); err == nil {
		t.Fatal("statement mode accepted")
	}
	var a AuthMethod
	if err := a.UnmarshalText([]byte("md5")); err != nil || a != AuthMD5 || a.String() != "md5" {
		t.Fatal(a, err)
	}
	for s := connState(0); s < numStates; s++ {
		if s.String() == "" || s.String()[0] == 'c' && s != stateCopy && s != stateClosing {
			t.Errorf("state %d: %q", s, s)
		}
	}
}

func TestParseOptions(t *testing.T) {
	got, err := parseOptions(`-c search_path=a,b --statement-timeout=5s -cwork_mem=1MB -c x=with\ space`)
	if err != nil {
		t.Fatal(err)
	}
	want := [][2]string{{"search_path", "a,b"}, {"statement_timeout", "5s"}, {"work_mem", "1MB"}, {"x", "with space"}}
	if len(got) != len(want) {
		t.Fatalf("%v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%v", got)
		}
	}
	if _, err := parseOptions("-x"); err == nil {
		t.Fatal("bad option accepted")
	}
}

func TestSCRAMVerifierRoundTrip(t *testing.T) {
	v, err := SCRAMVerifier("pw")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseSCRAMVerifier(v); err != nil {
		t.Fatal(err)
	}
}

func TestSelfSignedCert(t *testing.T) {
	c, k, err := GenerateSelfSignedCert([]string{"db.example", "10.0.0.1"})
	if err != nil || len(c) == 0 || len(k) == 0 {
		t.Fatal(err)
	}
}
