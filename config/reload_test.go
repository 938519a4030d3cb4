package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestCheckReloadAllowsReloadableChanges(t *testing.T) {
	old := loadExample(t)
	n := old.Clone()
	n.Users = append(n.Users, User{Name: "new", Password: "pw", Auth: AuthMD5})
	n.Users[0].Password = "changed"
	n.Pool.Size = 50
	n.Pool.AcquireTimeout = Duration(time.Second)
	n.Shards[1].Nodes[1].PoolSize = 7
	n.Routing.Balance = LeastLatency
	n.Routing.MaxStaleness = Duration(3 * time.Second)
	n.Routing.CatchUpWait = 0
	n.Breaker.Failures = 9
	n.Breaker.ErrorRate = 0.9
	n.Cache.Enabled = true
	n.Cache.TTL = Duration(time.Second)
	n.Server.IdleTransactionTimeout = Duration(time.Minute)
	if err := n.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := CheckReload(old, n); err != nil {
		t.Fatalf("reloadable changes rejected: %v", err)
	}
	if d := Diff(old, n); len(d) != 12 || d[1] != "users" {
		t.Errorf("Diff = %v (want 12 paths, users as one path since its length changed)", d)
	}
	r := n.Reloadable()
	if r.PoolSize != 50 || r.Balance != LeastLatency || r.MaxStaleness.D() != 3*time.Second || !r.CacheEnabled ||
		r.CacheTTL.D() != time.Second || r.Breaker.Failures != 9 || len(r.Users) != 3 || r.AcquireTimeout.D() != time.Second || r.IdleTransactionTimeout.D() != time.Minute {
		t.Errorf("Reloadable = %+v", r)
	}
	want := map[string]int{"s0-primary": 50, "s0-standby1": 50, "s1-primary": 50, "s1-standby1": 7}
	if !reflect.DeepEqual(r.NodePoolSizes, want) {
		t.Errorf("NodePoolSizes = %v, want %v", r.NodePoolSizes, want)
	}
	r.Users[0].Name = "mutated"
	if n.Users[0].Name == "mutated" {
		t.Error("Reloadable shares the users slice")
	}
	if err := CheckReload(old, old.Clone()); err != nil || len(Diff(old, old)) != 0 {
		t.Errorf("identical configs: %v %v", err, Diff(old, old))
	}
}

func TestCheckReloadRejectsFixedChanges(t *testing.T) {
	cases := []struct {
		name string
		edit func(c *Config)
		key  string
		msg  string
	}{
		{"listen", func(c *Config) { c.Server.Listen = "127.0.0.1:7000" }, "server.listen", `changed from "127.0.0.1:6432" to "127.0.0.1:7000"`},
		{"status listen", func(c *Config) { c.Server.StatusListen = "" }, "server.status_listen", "changed"},
		{"add node", func(c *Config) {
			c.Shards[0].Nodes = append(c.Shards[0].Nodes, Node{Name: "x", Host: "h", Port: 1, Role: RoleStandby, Weight: 1})
		}, "shards[0].nodes", "changed from 2 entries to 3 entries"},
		{"add shard", func(c *Config) {
			c.Shards = append(c.Shards, Shard{Name: "s2", Weight: 1, Nodes: []Node{{Name: "x", Host: "h", Port: 1, Role: RolePrimary, Weight: 1}}})
		}, "shards", "changed from 2 entries to 3 entries"},
		{"node port", func(c *Config) { c.Shards[1].Nodes[0].Port = 6000 }, "shards[1].nodes[0].port", "changed from 5442 to 6000"},
		{"node role", func(c *Config) { c.Shards[1].Nodes[1].Role = RolePrimary }, "shards[1].nodes[1].role", `changed from "standby" to "primary"`},
		{"table key", func(c *Config) { c.Tables[0].ShardKey[0] = "owner_id" }, "tables[0].shard_key[0]", `changed from "id" to "owner_id"`},
		{"drop table", func(c *Config) { c.Tables = c.Tables[:1] }, "tables", "changed from 2 entries to 1 entry"},
		{"cache size", func(c *Config) { c.Cache.MaxBytes = 1 << 30 }, "cache.max_bytes", "changed"},
		{"databases", func(c *Config) { c.Server.Databases = []string{"app", "other"} }, "server.databases", "changed"},
		{"backend sslmode", func(c *Config) { c.Backend.SSLMode = "verify-full" }, "backend.sslmode", `changed from "prefer" to "verify-full"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			old := loadExample(t)
			n := old.Clone()
			tc.edit(n)
			n.Pool.Size = 99 // a reloadable change alongside is not reported
			err := CheckReload(old, n)
			if err == nil || !errors.Is(err, ErrNotReloadable) {
				t.Fatalf("CheckReload = %v", err)
			}
			fes := FieldErrors(err)
			if len(fes) != 1 || fes[0].Key != tc.key || !strings.Contains(fes[0].Error(), tc.msg) ||
				!strings.Contains(fes[0].Error(), "restart required") {
				t.Errorf("got %v, want one error for %s containing %q", err, tc.key, tc.msg)
			}
		})
	}
}

func TestCheckReloadNamesLinesOfNewFile(t *testing.T) {
	s := baseSections()
	old, err := Parse([]byte(join(s)))
	if err != nil {
		t.Fatal(err)
	}
	s["shards"] = strings.Replace(s["shards"], "port = 5442", "port = 5450", 1)
	text := join(s)
	n, err := Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	fes := FieldErrors(CheckReload(old, n))
	if len(fes) != 1 || fes[0].Line != lineOf(t, text, "port = 5450") {
		t.Fatalf("got %+v", fes)
	}
}
