package replica_test

import (
	"fmt"

	"github.com/dbproxy/dbproxy/replica"
)

func ExampleParseLSN() {
	token, err := replica.ParseLSN("16/B374D848")
	if err != nil {
		panic(err)
	}
	// A standby may serve a read carrying this token once its replay LSN
	// reaches it: pass it as PickRequest.MinLSN.
	req := replica.PickRequest{MinLSN: token}
	fmt.Println(uint64(req.MinLSN), req.MinLSN)
	// Output: 97500059720 16/B374D848
}

func ExampleConfig() {
	cfg := replica.DefaultConfig()
	cfg.Policy = replica.WeightedRoundRobin
	cfg.Nodes = []replica.NodeConfig{
		{Name: "pg1", ConnString: "host=10.0.0.1 user=app password=secret dbname=app", Role: replica.RolePrimary},
		{Name: "pg2", ConnString: "host=10.0.0.2 user=app password=secret dbname=app", Role: replica.RoleStandby, Weight: 1},
		{Name: "pg3", ConnString: "host=10.0.0.3 user=app password=secret dbname=app", Role: replica.RoleStandby, Weight: 3},
	}
	fmt.Println(cfg.Validate(), cfg.Policy, cfg.LagInterval, cfg.CatchUpWait)
	// Output: <nil> weighted_round_robin 100ms 50ms
}
