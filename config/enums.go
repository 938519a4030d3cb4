package config

import (
	"fmt"
	"strings"
	"time"
)

// enumNames lists the TOML spelling of each value of an enum, index = value.
// Index 0 is the unset zero value and has no spelling.
type enumNames []string

func (n enumNames) name(v uint8) string {
	if int(v) < len(n) && v != 0 {
		return n[v]
	}
	return ""
}

func (n enumNames) parse(kind string, text []byte) (uint8, error) {
	s := string(text)
	for i := 1; i < len(n); i++ {
		if n[i] == s {
			return uint8(i), nil
		}
	}
	return 0, fmt.Errorf("%w: unknown %s %q (allowed: %s)", ErrInvalid, kind, s, n.allowed())
}

func (n enumNames) allowed() string { return strings.Join(n[1:], ", ") }

func (n enumNames) marshal(kind string, v uint8) ([]byte, error) {
	s := n.name(v)
	if s == "" {
		return nil, fmt.Errorf("%w: %s value %d is not set or out of range (allowed: %s)", ErrInvalid, kind, v, n.allowed())
	}
	return []byte(s), nil
}

func (n enumNames) str(kind string, v uint8) string {
	if s := n.name(v); s != "" {
		return s
	}
	return fmt.Sprintf("%s(%d)", kind, v)
}

// PoolMode says how long a client keeps a backend connection.
// The zero value is unset; ApplyDefaults makes it PoolTransaction.
type PoolMode uint8

// Pool modes.
const (
	PoolTransaction PoolMode = 1 // "transaction": a backend is leased per transaction (or per statement outside one)
	PoolSession     PoolMode = 2 // "session": a backend is leased for the whole client session
)

var poolModeNames = enumNames{"", "transaction", "session"}

func (m PoolMode) String() string               { return poolModeNames.str("PoolMode", uint8(m)) }
func (m PoolMode) MarshalText() ([]byte, error) { return poolModeNames.marshal("pool_mode", uint8(m)) }
func (m *PoolMode) UnmarshalText(b []byte) error {
	v, err := poolModeNames.parse("pool_mode", b)
	*m = PoolMode(v)
	return err
}

// AuthMethod is the authentication method the proxy asks clients for.
// The zero value is unset; ApplyDefaults makes it AuthSCRAMSHA256.
type AuthMethod uint8

// Authentication methods.
const (
	AuthSCRAMSHA256 AuthMethod = 1 // "scram-sha-256"
	AuthMD5         AuthMethod = 2 // "md5" (needs a plain password)
)

var authNames = enumNames{"", "scram-sha-256", "md5"}

func (a AuthMethod) String() string               { return authNames.str("AuthMethod", uint8(a)) }
func (a AuthMethod) MarshalText() ([]byte, error) { return authNames.marshal("auth", uint8(a)) }
func (a *AuthMethod) UnmarshalText(b []byte) error {
	v, err := authNames.parse("auth", b)
	*a = AuthMethod(v)
	return err
}

// Role is a node's replication role. The zero value is unset and invalid:
// every node must say its role.
type Role uint8

// Node roles.
const (
	RolePrimary Role = 1 // "primary"
	RoleStandby Role = 2 // "standby"
)

var roleNames = enumNames{"", "primary", "standby"}

func (r Role) String() string               { return roleNames.str("Role", uint8(r)) }
func (r Role) MarshalText() ([]byte, error) { return roleNames.marshal("role", uint8(r)) }
func (r *Role) UnmarshalText(b []byte) error {
	v, err := roleNames.parse("role", b)
	*r = Role(v)
	return err
}

// KeyType is the type of one shard-key column. The zero value is invalid.
type KeyType uint8

// Shard-key column types.
const (
	KeyInt  KeyType = 1 // "int": smallint, integer, bigint
	KeyText KeyType = 2 // "text": text, varchar
	KeyUUID KeyType = 3 // "uuid"
)

var keyTypeNames = enumNames{"", "int", "text", "uuid"}

func (t KeyType) String() string               { return keyTypeNames.str("KeyType", uint8(t)) }
func (t KeyType) MarshalText() ([]byte, error) { return keyTypeNames.marshal("key type", uint8(t)) }
func (t *KeyType) UnmarshalText(b []byte) error {
	v, err := keyTypeNames.parse("key type", b)
	*t = KeyType(v)
	return err
}

// BalancePolicy chooses among the standbys that qualify for a read.
// The zero value is unset; ApplyDefaults makes it RoundRobin.
type BalancePolicy uint8

// Balancing policies.
const (
	RoundRobin               BalancePolicy = 1 // "round_robin"
	WeightedRoundRobin       BalancePolicy = 2 // "weighted_round_robin"
	LeastConnections         BalancePolicy = 3 // "least_connections"
	WeightedLeastConnections BalancePolicy = 4 // "weighted_least_connections"
	LeastLatency             BalancePolicy = 5 // "least_latency" (EWMA of query latency)
	Hash                     BalancePolicy = 6 // "hash" (sticky by a key)
)

var balanceNames = enumNames{"", "round_robin", "weighted_round_robin", "least_connections",
	"weighted_least_connections", "least_latency", "hash"}

func (p BalancePolicy) String() string { return balanceNames.str("BalancePolicy", uint8(p)) }
func (p BalancePolicy) MarshalText() ([]byte, error) {
	return balanceNames.marshal("balance", uint8(p))
}
func (p *BalancePolicy) UnmarshalText(b []byte) error {
	v, err := balanceNames.parse("balance", b)
	*p = BalancePolicy(v)
	return err
}

// Duration is a time.Duration written in TOML as a Go duration string
// ("200ms", "1s", "1m30s"). It marshals back to the same form
// (time.Duration.String).
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler. It accepts what
// time.ParseDuration accepts.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%w: bad duration %q (write e.g. \"200ms\", \"1s\", \"1m30s\")", ErrInvalid, string(b))
	}
	*d = Duration(v)
	return nil
}
