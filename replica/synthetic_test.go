package replica

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// newSyntheticSet builds a Set whose nodes point at nothing and whose probes
// are not running: tests set health, role and lag directly.
func newSyntheticSet(t testing.TB, policy Policy, weights ...int) *Set {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Policy = policy
	cfg.Nodes = []NodeConfig{{Name: "p", ConnString: "host=127.0.0.1 port=1 user=u dbname=d", Role: RolePrimary}}
	for i, w := range weights {
		cfg.Nodes = append(cfg.Nodes, NodeConfig{
			Name: fmt.Sprintf("s%d", i+1), ConnString: "host=127.0.0.1 port=1 user=u dbname=d",
			Role: RoleStandby, Weight: w,
		})
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s := newSet(context.Background(), cfg)
	for _, nc := range cfg.Nodes {
		n, err := newNode(s, nc)
		if err != nil {
			t.Fatal(err)
		}
		s.nodes = append(s.nodes, n)
		if nc.Role == RolePrimary {
			s.primary = n
		} else {
			s.standbys = append(s.standbys, n)
		}
		n.healthy.Store(true)
		if nc.Role == RolePrimary {
			n.observed.Store(uint32(RolePrimary))
			n.lag.Store(&lagSample{at: s.now(), lsn: 1000})
		} else {
			n.observed.Store(uint32(RoleStandby))
			setLag(s, n, 1000, 0)
		}
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

// setLag stores a fresh measurement for standby n and wakes waiting Picks.
func setLag(s *Set, n *Node, replay LSN, lag time.Duration) {
	n.lag.Store(&lagSample{at: s.now(), inRecovery: true, lsn: replay, lagTime: lag})
	s.notifyLag()
}
