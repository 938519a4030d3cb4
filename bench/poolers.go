package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dbproxy/dbproxy/internal/pgcluster"
)

// startPgBouncer runs PgBouncer in front of the main primary: transaction
// pooling, pool 20, SCRAM client auth from an auth_file with the plain
// password (which it also uses towards PostgreSQL), max_client_conn above
// Config.IdleConnections. As root it runs as
// pgcluster's unprivileged ServerUser: PgBouncer refuses to run as root.
func (e *env) startPgBouncer(ctx context.Context) error {
	dir := filepath.Join(e.work, "pgbouncer")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	p := e.main.Primary()
	sockDir := "" // PgBouncer's default is /tmp: none unless clients use one
	if e.cfg.UnixClients {
		sockDir = dir
	}
	ini := fmt.Sprintf(`[databases]
%s = host=%s port=%d dbname=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir = %s
auth_type = scram-sha-256
auth_file = %s
pool_mode = transaction
default_pool_size = 20
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = %d
max_db_connections = 0
ignore_startup_parameters = extra_float_digits,options
log_connections = 0
log_disconnections = 0
logfile = %s
`, benchDB, p.LocalHost(), p.Port, benchDB, port, sockDir, filepath.Join(dir, "userlist.txt"), max(2000, e.cfg.IdleConnections+100), filepath.Join(dir, "pgbouncer.log"))
	files := map[string]string{
		"pgbouncer.ini": ini,
		"userlist.txt":  fmt.Sprintf("%q %q\n", benchUser, benchPassword),
	}
	cred, err := writeServerFiles(dir, files)
	if err != nil {
		return err
	}
	proc, err := startProcess("pgbouncer", []string{"pgbouncer", filepath.Join(dir, "pgbouncer.ini")}, nil, cred, filepath.Join(e.work, "pgbouncer.out"))
	if err != nil {
		return err
	}
	e.procs[TargetPgBouncer] = proc
	ep := e.clientEndpoint(dir, port)
	if err := waitReady(ctx, proc, ep, time.Minute); err != nil {
		return fmt.Errorf("%w\npgbouncer.log:\n%s", err, fileTail(filepath.Join(dir, "pgbouncer.log"), 20))
	}
	e.endpoints[TargetPgBouncer] = ep
	return nil
}

// startPgpool runs a Pgpool-II instance over the main cluster in
// streaming-replication mode with load balancing over all three nodes;
// with cache, its in-memory query cache (shmem, 256 MB) is on. Clients
// authenticate with SCRAM against pool_passwd (plain-text entry), which
// Pgpool-II also uses towards the backends.
func (e *env) startPgpool(ctx context.Context, target string, cache bool) error {
	dir := filepath.Join(e.work, target)
	if err := os.MkdirAll(filepath.Join(dir, "oiddir"), 0o755); err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	pcpPort, err := freePort()
	if err != nil {
		return err
	}
	var b strings.Builder
	set := func(k string, v any) {
		switch v := v.(type) {
		case string:
			fmt.Fprintf(&b, "%s = '%s'\n", k, v)
		default:
			fmt.Fprintf(&b, "%s = %v\n", k, v)
		}
	}
	set("backend_clustering_mode", "streaming_replication")
	set("listen_addresses", "127.0.0.1")
	set("port", port)
	set("socket_dir", dir)
	set("pcp_listen_addresses", "")
	set("pcp_port", pcpPort)
	set("pcp_socket_dir", dir)
	set("wd_ipc_socket_dir", dir)
	set("pid_file_name", filepath.Join(dir, "pgpool.pid"))
	set("logdir", dir)
	set("log_destination", "stderr")
	set("log_min_messages", "warning")
	set("num_init_children", e.cfg.PgpoolChildren)
	set("max_pool", 1)
	set("reserved_connections", 0)
	set("connection_cache", "on")
	set("load_balance_mode", "on")
	set("enable_pool_hba", "on")
	set("pool_passwd", filepath.Join(dir, "pool_passwd"))
	set("allow_clear_text_frontend_auth", "off")
	set("sr_check_period", 10)
	set("sr_check_user", "postgres")
	set("sr_check_password", "")
	set("sr_check_database", "postgres")
	set("health_check_period", 0)
	set("failover_on_backend_error", "off")
	set("use_watchdog", "off")
	for i, n := range e.main.Nodes() {
		set(fmt.Sprintf("backend_hostname%d", i), n.LocalHost())
		set(fmt.Sprintf("backend_port%d", i), n.Port)
		set(fmt.Sprintf("backend_weight%d", i), 1)
		set(fmt.Sprintf("backend_flag%d", i), "DISALLOW_TO_FAILOVER")
		set(fmt.Sprintf("backend_application_name%d", i), n.Name)
	}
	if cache {
		set("memory_cache_enabled", "on")
		set("memqcache_method", "shmem")
		set("memqcache_total_size", "256MB")
		set("memqcache_max_num_cache", 1000000)
		set("memqcache_expire", 0)
		set("memqcache_auto_cache_invalidation", "on")
		set("memqcache_maxcache", "400kB")
		set("memqcache_cache_block_size", "1MB")
		set("memqcache_oiddir", filepath.Join(dir, "oiddir"))
	} else {
		set("memory_cache_enabled", "off")
	}
	files := map[string]string{
		"pgpool.conf": b.String(),
		"pcp.conf":    "",
		"pool_hba.conf": "host all postgres 127.0.0.1/32 trust\n" +
			"host all all 127.0.0.1/32 scram-sha-256\n" +
			"local all postgres trust\n" +
			"local all all scram-sha-256\n",
		"pool_passwd": fmt.Sprintf("%s:TEXT%s\n", benchUser, benchPassword),
	}
	cred, err := writeServerFiles(dir, files)
	if err != nil {
		return err
	}
	if err := chownTree(filepath.Join(dir, "oiddir"), cred); err != nil {
		return err
	}
	argv := []string{"pgpool", "-n", "-D",
		"-f", filepath.Join(dir, "pgpool.conf"),
		"-F", filepath.Join(dir, "pcp.conf"),
		"-a", filepath.Join(dir, "pool_hba.conf")}
	proc, err := startProcess(target, argv, nil, cred, filepath.Join(e.work, target+".log"))
	if err != nil {
		return err
	}
	e.procs[target] = proc
	ep := e.clientEndpoint(dir, port)
	if err := waitReady(ctx, proc, ep, 2*time.Minute); err != nil {
		return err
	}
	e.endpoints[target] = ep
	return nil
}

// writeServerFiles writes a pooler's config files into dir and hands dir to
// the unprivileged server user the pooler runs as.
func writeServerFiles(dir string, files map[string]string) (*syscall.Credential, error) {
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			return nil, err
		}
	}
	cred, err := serverCredential(pgcluster.ServerUser)
	if err != nil {
		return nil, err
	}
	return cred, chownTree(dir, cred)
}
