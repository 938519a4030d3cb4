package router

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// Volatility is a function's volatility class, as in pg_proc.provolatile.
type Volatility uint8

const (
	// VolatilityImmutable: same result for the same arguments, forever.
	VolatilityImmutable Volatility = iota
	// VolatilityStable: same result within one statement (now(), current_setting()).
	VolatilityStable
	// VolatilityVolatile: may change between calls and may have side effects.
	VolatilityVolatile
)

// String returns "immutable", "stable" or "volatile".
func (v Volatility) String() string {
	switch v {
	case VolatilityImmutable:
		return "immutable"
	case VolatilityStable:
		return "stable"
	case VolatilityVolatile:
		return "volatile"
	}
	return "Volatility(" + strconv.Itoa(int(v)) + ")"
}

// MarshalText implements encoding.TextMarshaler.
func (v Volatility) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// UnmarshalText accepts the names of String and the pg_proc.provolatile
// letters "i", "s", "v".
func (v *Volatility) UnmarshalText(b []byte) error {
	switch strings.ToLower(string(b)) {
	case "immutable", "i":
		*v = VolatilityImmutable
	case "stable", "s":
		*v = VolatilityStable
	case "volatile", "v":
		*v = VolatilityVolatile
	default:
		return fmt.Errorf("router: unknown volatility %q", b)
	}
	return nil
}

// pgCatalogFunctions is generated from a PostgreSQL 15 catalog:
//
//	COPY (SELECT lower(proname), max(provolatile),
//	             max(CASE WHEN prokind = 'a' THEN 'a' ELSE '-' END)
//	        FROM pg_proc WHERE pronamespace = 11 GROUP BY 1 ORDER BY 1) TO '...';
//
// One line per function name: name, most volatile class over its
// overloads (i/s/v), "a" if some overload is an aggregate.
//
//go:embed pg_catalog_functions.tsv
var pgCatalogFunctions string

type builtinFunc struct {
	vol       Volatility
	aggregate bool
}

var builtins = sync.OnceValue(func() map[string]builtinFunc {
	m := make(map[string]builtinFunc, 2700)
	for line := range strings.SplitSeq(pgCatalogFunctions, "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 3 {
			continue
		}
		var bf builtinFunc
		switch f[1] {
		case "s":
			bf.vol = VolatilityStable
		case "v":
			bf.vol = VolatilityVolatile
		}
		bf.aggregate = f[2] == "a"
		m[f[0]] = bf
	}
	return m
})

// primaryOnlyFunctions are built-ins that write, take locks, assign a
// transaction id, notify, change session state, or fail on a hot standby.
// A statement calling one of them runs on the primary.
var primaryOnlyFunctions = map[string]string{
	"nextval": "sequence", "setval": "sequence", "currval": "sequence (session-bound)", "lastval": "sequence (session-bound)",
	"txid_current": "assigns a transaction id", "txid_current_if_assigned": "transaction id",
	"pg_current_xact_id": "assigns a transaction id", "pg_current_xact_id_if_assigned": "transaction id",
	"pg_advisory_lock": "advisory lock", "pg_advisory_lock_shared": "advisory lock",
	"pg_advisory_unlock": "advisory lock", "pg_advisory_unlock_shared": "advisory lock",
	"pg_advisory_unlock_all": "advisory lock", "pg_advisory_xact_lock": "advisory lock",
	"pg_advisory_xact_lock_shared": "advisory lock", "pg_try_advisory_lock": "advisory lock",
	"pg_try_advisory_lock_shared": "advisory lock", "pg_try_advisory_xact_lock": "advisory lock",
	"pg_try_advisory_xact_lock_shared": "advisory lock",
	"pg_notify":                        "notification", "set_config": "changes session state",
	"pg_current_wal_lsn": "primary WAL position", "pg_current_wal_insert_lsn": "primary WAL position",
	"pg_current_wal_flush_lsn": "primary WAL position", "pg_switch_wal": "WAL control",
	"pg_create_restore_point": "WAL control", "pg_logical_emit_message": "writes WAL",
	"pg_promote": "server control", "pg_cancel_backend": "backend control", "pg_terminate_backend": "backend control",
	"lo_create": "large object write", "lo_creat": "large object write", "lo_import": "large object write",
	"lo_unlink": "large object write", "lo_put": "large object write", "lo_from_bytea": "large object write",
	"lo_truncate": "large object write", "lo_truncate64": "large object write", "lowrite": "large object write",
	"query_to_xml": "runs arbitrary SQL", "query_to_xmlschema": "runs arbitrary SQL",
	"query_to_xml_and_xmlschema": "runs arbitrary SQL", "cursor_to_xml": "runs arbitrary SQL",
	"cursor_to_xmlschema": "runs arbitrary SQL", "ts_stat": "runs arbitrary SQL", "ts_rewrite": "runs arbitrary SQL",
	"dblink_exec": "runs remote SQL",
}

// sessionLockFunctions take advisory locks held until the session
// releases them (not the transaction): Statement.SessionLock.
var sessionLockFunctions = map[string]bool{
	"pg_advisory_lock": true, "pg_advisory_lock_shared": true,
	"pg_try_advisory_lock": true, "pg_try_advisory_lock_shared": true,
}

// readSafeVolatileFunctions are volatile (or session-dependent) built-ins
// that cannot write: a read calling them still runs on a standby, but its
// result is not cacheable. Extension functions commonly installed
// (uuid-ossp, pgcrypto) are listed too.
var readSafeVolatileFunctions = map[string]bool{
	"random": true, "random_normal": true, "setseed": true, "clock_timestamp": true, "timeofday": true,
	"gen_random_uuid": true, "uuid_generate_v1": true, "uuid_generate_v1mc": true, "uuid_generate_v4": true,
	"gen_random_bytes": true, "pg_sleep": true, "pg_sleep_for": true, "pg_sleep_until": true,
	"pg_is_in_recovery": true, "pg_last_wal_receive_lsn": true, "pg_last_wal_replay_lsn": true,
	"pg_last_xact_replay_timestamp": true, "pg_is_wal_replay_paused": true, "pg_get_wal_replay_pause_state": true,
	"pg_database_size": true, "pg_relation_size": true, "pg_table_size": true, "pg_indexes_size": true,
	"pg_total_relation_size": true, "pg_tablespace_size": true, "pg_lock_status": true, "pg_blocking_pids": true,
	"pg_safe_snapshot_blocking_pids": true, "pg_stat_clear_snapshot": true, "pg_stat_file": true,
	"pg_ls_dir": true, "pg_ls_logdir": true, "pg_ls_waldir": true, "pg_ls_tmpdir": true, "pg_ls_archive_statusdir": true,
	"pg_read_file": true, "pg_read_binary_file": true, "pg_jit_available": true, "pg_control_checkpoint": true,
	"pg_control_init": true, "pg_control_recovery": true, "pg_control_system": true, "pg_current_logfile": true,
	"pg_sequence_last_value": true, "pg_partition_tree": true, "pg_partition_ancestors": true, "current_query": true,
	"pg_show_all_file_settings": true, "pg_hba_file_rules": true, "pg_ident_file_mappings": true,
	"pg_get_backend_memory_contexts": true, "pg_get_shmem_allocations": true, "pg_notification_queue_usage": true,
	"pg_xact_commit_timestamp": true, "pg_xact_commit_timestamp_origin": true, "pg_xact_status": true, "txid_status": true,
	"pg_last_committed_xact": true, "pg_get_multixact_members": true, "pg_prepared_xact": true,
	"pg_collation_actual_version": true, "pg_database_collation_actual_version": true,
	"pg_get_wal_resource_managers": true, "pg_stat_have_stats": true, "pg_stat_get_recovery_prefetch": true,
	"lo_get": true, "loread": true, "lo_open": true, "lo_close": true, "lo_lseek": true, "lo_lseek64": true,
	"lo_tell": true, "lo_tell64": true, "lo_export": true, "bernoulli": true, "system": true,
	"pg_stat_get_xact_blocks_fetched": true, "pg_stat_get_xact_blocks_hit": true, "pg_stat_get_xact_function_calls": true,
	"pg_stat_get_xact_function_self_time": true, "pg_stat_get_xact_function_total_time": true,
	"pg_stat_get_xact_numscans": true, "pg_stat_get_xact_tuples_deleted": true, "pg_stat_get_xact_tuples_fetched": true,
	"pg_stat_get_xact_tuples_hot_updated": true, "pg_stat_get_xact_tuples_inserted": true,
	"pg_stat_get_xact_tuples_returned": true, "pg_stat_get_xact_tuples_updated": true,
}

// funcClass is what Classify concludes about one function call.
type funcClass uint8

const (
	funcDeterministic funcClass = iota // immutable built-in
	funcNonCacheable                   // stable or read-safe volatile built-in
	funcPrimary                        // must run on the primary
	funcUser                           // not a known built-in: ask the FunctionCatalog
)

// classifyFunction classifies a call of schema.name (schema "" when
// unqualified). It returns the class and, for funcPrimary, a reason.
func classifyFunction(schema, name string) (funcClass, string) {
	if schema != "" && schema != "pg_catalog" {
		return funcUser, ""
	}
	if why, ok := primaryOnlyFunctions[name]; ok {
		return funcPrimary, name + "(): " + why
	}
	if readSafeVolatileFunctions[name] {
		return funcNonCacheable, ""
	}
	bf, ok := builtins()[name]
	if !ok {
		if schema == "pg_catalog" {
			return funcPrimary, "unknown pg_catalog function " + name + "()"
		}
		return funcUser, ""
	}
	switch bf.vol {
	case VolatilityVolatile:
		return funcPrimary, "volatile function " + name + "()"
	case VolatilityStable:
		return funcNonCacheable, ""
	}
	return funcDeterministic, ""
}

// isAggregate reports whether an unqualified or pg_catalog function name
// is a built-in aggregate.
func isAggregate(schema, name string) bool {
	if schema != "" && schema != "pg_catalog" {
		return false
	}
	return builtins()[name].aggregate
}

// QueryFunc runs sql with text parameters ($1, $2, ...) and returns the
// rows' text values. It must honour ctx.
type QueryFunc func(ctx context.Context, sql string, params ...[]byte) ([][][]byte, error)

// PgProcCatalog returns a FunctionCatalog that reads pg_proc with query,
// which a front end runs on its default shard's primary. A name without
// schema resolves in the search path of the connection query uses; a
// function is known only when every overload of that name has the same
// volatility. Safe for concurrent use when query is.
func PgProcCatalog(query QueryFunc) FunctionCatalog { return pgProcCatalog(query) }

type pgProcCatalog QueryFunc

const pgProcVolatility = `SELECT DISTINCT p.provolatile FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.proname = $1 AND (CASE WHEN $2 = '' THEN n.nspname = ANY (current_schemas(true)) ELSE n.nspname = $2 END)`

func (q pgProcCatalog) Volatility(ctx context.Context, schema, name string) (Volatility, bool, error) {
	rows, err := q(ctx, pgProcVolatility, []byte(name), []byte(schema))
	if err != nil {
		return 0, false, err
	}
	if len(rows) != 1 || len(rows[0]) != 1 {
		return 0, false, nil // unknown, or overloads of different volatility
	}
	switch string(rows[0][0]) {
	case "i":
		return VolatilityImmutable, true, nil
	case "s":
		return VolatilityStable, true, nil
	}
	return VolatilityVolatile, true, nil
}
