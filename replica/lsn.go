package replica

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a PostgreSQL write-ahead log position (pg_lsn). The zero value is
// "no position" and is satisfied by every node.
type LSN uint64

// ParseLSN parses the textual form PostgreSQL uses for pg_lsn values, two
// hexadecimal numbers separated by a slash ("16/B374D848").
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("replica: invalid LSN %q: want XXXXXXXX/XXXXXXXX", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("replica: invalid LSN %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("replica: invalid LSN %q: %w", s, err)
	}
	return LSN(h<<32 | l), nil
}

// String formats l the way PostgreSQL does ("16/B374D848").
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l))
}

// MarshalText implements encoding.TextMarshaler.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// Role is the replication role of a node, either as configured or as
// observed with pg_is_in_recovery().
type Role uint8

const (
	// RoleUnknown is the observed role of a node that has not answered a
	// probe yet (or whose last probe failed). It is not valid in NodeConfig.
	RoleUnknown Role = iota
	// RolePrimary is a node that accepts writes (not in recovery).
	RolePrimary
	// RoleStandby is a hot standby (in recovery) serving reads.
	RoleStandby
)

var roleNames = [...]string{RoleUnknown: "unknown", RolePrimary: "primary", RoleStandby: "standby"}

// String returns "primary", "standby" or "unknown".
func (r Role) String() string {
	if int(r) < len(roleNames) {
		return roleNames[r]
	}
	return "Role(" + strconv.Itoa(int(r)) + ")"
}

// MarshalText implements encoding.TextMarshaler.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText accepts "primary" or "standby" (also "replica"), case-insensitively.
func (r *Role) UnmarshalText(b []byte) error {
	switch strings.ToLower(string(b)) {
	case "primary":
		*r = RolePrimary
	case "standby", "replica":
		*r = RoleStandby
	default:
		return fmt.Errorf("replica: unknown role %q (want primary or standby)", b)
	}
	return nil
}

// Policy selects how Pick balances reads over the eligible standbys.
type Policy uint8

const (
	// RoundRobin cycles through the eligible standbys.
	RoundRobin Policy = iota
	// WeightedRoundRobin is smooth weighted round robin (nginx style) by NodeConfig.Weight.
	WeightedRoundRobin
	// LeastConnections picks the standby with the fewest leases in use.
	LeastConnections
	// WeightedLeastConnections picks the lowest in-use/weight ratio; ties
	// are broken by smooth weighted round robin.
	WeightedLeastConnections
	// LeastLatency picks the standby with the lowest EWMA of observed latency.
	// One pick in 16 is spread round robin so slow nodes keep being measured.
	LeastLatency
	// Hash is sticky by PickRequest.HashKey (rendezvous hashing over the
	// eligible standbys: a key only moves when its standby becomes ineligible).
	Hash
)

var policyNames = [...]string{
	RoundRobin:               "round_robin",
	WeightedRoundRobin:       "weighted_round_robin",
	LeastConnections:         "least_connections",
	WeightedLeastConnections: "weighted_least_connections",
	LeastLatency:             "least_latency",
	Hash:                     "hash",
}

// String returns the snake_case name used in configuration files.
func (p Policy) String() string {
	if int(p) < len(policyNames) {
		return policyNames[p]
	}
	return "Policy(" + strconv.Itoa(int(p)) + ")"
}

// MarshalText implements encoding.TextMarshaler.
func (p Policy) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText accepts the names returned by String (hyphens are accepted
// in place of underscores, case-insensitively).
func (p *Policy) UnmarshalText(b []byte) error {
	s := strings.ReplaceAll(strings.ToLower(string(b)), "-", "_")
	for i, n := range policyNames {
		if n == s {
			*p = Policy(i)
			return nil
		}
	}
	return fmt.Errorf("replica: unknown balancing policy %q (want one of %s)", b, strings.Join(policyNames[:], ", "))
}

// BreakerState is the state of a node's circuit breaker.
type BreakerState uint8

const (
	// BreakerClosed lets all traffic through.
	BreakerClosed BreakerState = iota
	// BreakerOpen sends no new traffic to the node (standbys only; the
	// primary keeps serving and its breaker is informational).
	BreakerOpen
	// BreakerHalfOpen lets a few trial requests through after OpenFor.
	BreakerHalfOpen
)

var breakerNames = [...]string{BreakerClosed: "closed", BreakerOpen: "open", BreakerHalfOpen: "half_open"}

// String returns "closed", "open" or "half_open".
func (b BreakerState) String() string {
	if int(b) < len(breakerNames) {
		return breakerNames[b]
	}
	return "BreakerState(" + strconv.Itoa(int(b)) + ")"
}

// MarshalText implements encoding.TextMarshaler.
func (b BreakerState) MarshalText() ([]byte, error) { return []byte(b.String()), nil }
