package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/dbproxy/dbproxy/replica"
	"github.com/dbproxy/dbproxy/router"
	"github.com/dbproxy/dbproxy/shard"
)

// testServer is a Server without backends: everything up to
// ReadyForQuery (startup, TLS, auth) and the client-side protocol
// handling can be exercised; statements fail with a routing error.
type testServer struct {
	*Server
	addr string
	done chan error
}

func newTestServer(t *testing.T, mut func(*Config)) *testServer {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Users = []User{{Name: "app", Password: "secret"}}
	cfg.Databases = []string{"app"}
	cfg.MaxMessageBytes = 4096
	cfg.ShutdownTimeout = 2 * time.Second
	cfg.StartupTimeout = 5 * time.Second
	if mut != nil {
		mut(&cfg)
	}
	srv, err := New(cfg, Deps{Router: testRouter(t), Shards: map[shard.ID]*replica.Set{0: nil}})
	if err != nil {
		t.Fatal(err)
	}
	return serveTest(t, srv)
}

// serveTest serves srv on a loopback port until the test ends (Close
// must return nil and Serve ErrServerClosed).
func serveTest(t *testing.T, srv *Server) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: srv, addr: ln.Addr().String(), done: make(chan error, 1)}
	go func() { ts.done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-ts.done; err != ErrServerClosed {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ts
}

// testRouter routes over one shard "s0" with table "users" sharded by id.
func testRouter(t *testing.T) *router.Router {
	t.Helper()
	topo, err := shard.NewTopology(shard.TopologySpec{
		Shards: []shard.ShardSpec{{Name: "s0", Nodes: []shard.NodeSpec{{Name: "p", Host: "127.0.0.1", Port: 1, Role: shard.RolePrimary}}}},
		Tables: []shard.TableSpec{{Name: "users", Columns: []string{"id"}, Types: []shard.KeyType{shard.KeyInt}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := router.DefaultConfig()
	cfg.Topology = router.NewStaticTopology(topo)
	r, err := router.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func testTLSConfig(t *testing.T) *tls.Config {
	t.Helper()
	certPEM, keyPEM, err := GenerateSelfSignedCert(nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}}
}
