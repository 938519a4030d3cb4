package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"
)

// PoolMode says for how long a client keeps a backend connection.
type PoolMode uint8

const (
	// PoolTransaction leases a backend for one transaction (or one
	// autocommit statement) and returns it on ReadyForQuery 'I'. Session
	// state (SET parameters, prepared statements) is replayed on whichever
	// backend the next transaction lands on.
	PoolTransaction PoolMode = iota
	// PoolSession pins a backend to the client for the client's lifetime.
	PoolSession
)

// String returns "transaction" or "session".
func (m PoolMode) String() string {
	switch m {
	case PoolTransaction:
		return "transaction"
	case PoolSession:
		return "session"
	}
	return fmt.Sprintf("PoolMode(%d)", uint8(m))
}

// MarshalText implements encoding.TextMarshaler.
func (m PoolMode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText accepts "transaction" or "session".
func (m *PoolMode) UnmarshalText(b []byte) error {
	switch strings.ToLower(strings.TrimSpace(string(b))) {
	case "transaction", "":
		*m = PoolTransaction
	case "session":
		*m = PoolSession
	default:
		return fmt.Errorf("proxy: unknown pool mode %q (want transaction or session): %w", b, ErrInvalidConfig)
	}
	return nil
}

// AuthMethod is the password challenge the proxy sends to clients.
type AuthMethod uint8

const (
	// AuthSCRAM is SCRAM-SHA-256 (RFC 5802, RFC 7677), the default.
	AuthSCRAM AuthMethod = iota
	// AuthMD5 is PostgreSQL's legacy md5 challenge. It needs the plain
	// password or an "md5..." hash in User.Password.
	AuthMD5
)

// String returns "scram-sha-256" or "md5".
func (a AuthMethod) String() string {
	switch a {
	case AuthSCRAM:
		return "scram-sha-256"
	case AuthMD5:
		return "md5"
	}
	return fmt.Sprintf("AuthMethod(%d)", uint8(a))
}

// MarshalText implements encoding.TextMarshaler.
func (a AuthMethod) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// UnmarshalText accepts "scram-sha-256" (or "scram") and "md5".
func (a *AuthMethod) UnmarshalText(b []byte) error {
	switch strings.ToLower(strings.TrimSpace(string(b))) {
	case "scram-sha-256", "scram", "":
		*a = AuthSCRAM
	case "md5":
		*a = AuthMD5
	default:
		return fmt.Errorf("proxy: unknown auth method %q (want scram-sha-256 or md5): %w", b, ErrInvalidConfig)
	}
	return nil
}

// User is a client identity the proxy accepts. Exactly one of Password
// and SCRAMVerifier must be set.
type User struct {
	Name string
	// Password is the plain password, or an md5 hash in PostgreSQL's
	// "md5<hex(md5(password||user))>" form (then only AuthMD5 works).
	Password string
	// SCRAMVerifier is a PostgreSQL SCRAM secret as stored in pg_authid:
	// "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>".
	SCRAMVerifier string
	// Databases this user may connect to; empty means every database in
	// Config.Databases.
	Databases []string
	// BackendPassword is the password the proxy logs in to the backends
	// with, as this user and to the database the client named; "" means
	// Password when that is a plain password. A user with neither is
	// refused at login (28000): the proxy never runs a client's statements
	// as another user.
	BackendPassword string
}

// Config configures a Server. The listener is not part of it: the caller
// passes a net.Listener to Serve.
type Config struct {
	// TLS, when non-nil, lets clients upgrade with SSLRequest. When nil
	// the proxy answers SSLRequest with 'N'.
	TLS *tls.Config
	// RequireTLS refuses clients that do not upgrade (needs TLS), except
	// on a Unix socket, where TLS is neither asked for nor offered (an
	// SSLRequest gets 'N'), as in PostgreSQL.
	RequireTLS bool
	// PoolMode is PoolTransaction (default) or PoolSession.
	PoolMode PoolMode
	// Auth is the challenge sent to clients (default AuthSCRAM).
	Auth AuthMethod
	// Users the proxy authenticates. Reloadable.
	Users []User
	// Databases clients may name in their startup message (the backends
	// are configured in the replica sets, this is only the allow-list).
	// Empty means any database name is accepted.
	Databases []string
	// MaxMessageBytes bounds one client message body (SetMaxBodyLen); a
	// larger message gets SQLSTATE 54000 and the connection is closed.
	MaxMessageBytes int
	// MaxClients bounds concurrent client connections (0 = unbounded);
	// more get SQLSTATE 53300.
	MaxClients int
	// ShutdownTimeout is how long Close lets open transactions finish
	// before ending sessions with FATAL 57P01 (when Close's ctx has no
	// earlier deadline).
	ShutdownTimeout time.Duration
	// IdleTransactionTimeout ends a session whose client stays idle
	// inside a transaction (ReadyForQuery 'T' or 'E', nothing in flight)
	// for longer than this: the client gets FATAL 25P03, its backend
	// connection is closed (PostgreSQL rolls the transaction back) and its
	// place in the pool freed. 0 disables.
	// Reloadable; a wait already begun keeps the value it began with.
	IdleTransactionTimeout time.Duration
	// ClientCheckInterval is how often the sockets of clients whose
	// query is running are checked for a disconnected peer (poll with
	// POLLRDHUP, like PostgreSQL's client_connection_check_interval); a
	// client found gone has its query cancelled on the backend and its
	// backend connection discarded. The same check sends the reads that
	// wait for a node whose probes have failed since to another node. 0
	// disables both: a query then runs to its end and the loss is noticed
	// when its reply is written, and a read waits for its node.
	ClientCheckInterval time.Duration
	// MaxBackendStatements bounds the client-named prepared statements
	// kept on one backend connection (PgBouncer's max_prepared_statements):
	// when a backend is leased holding more, the least recently used are
	// closed; a client that uses one again has it prepared again,
	// transparently. 0 leaves them unbounded (until the connection's
	// lifetime ends).
	MaxBackendStatements int
	// StartupTimeout bounds the time from accept to ReadyForQuery.
	StartupTimeout time.Duration
	// MaxStaleness is the default bound on standby lag for reads; a
	// session changes it with SET dbproxy.max_staleness. Reloadable.
	MaxStaleness time.Duration
	// ServerVersion is reported to clients until a backend has been seen.
	ServerVersion string
	// Logger receives connection-level events; nil discards.
	Logger *slog.Logger
	// Trace, when non-nil, receives a trace of every client-side protocol
	// message (pgproto3's tracer). For debugging only: it is slow and
	// shows data.
	Trace io.Writer

	// AutoPrepare runs unnamed extended-protocol statements as named
	// statements prepared once per backend (see attach.go), so PostgreSQL
	// does not parse and plan a repeated query on every execution.
	AutoPrepare bool

	// noInlinePump makes every reply stream through a pump goroutine
	// (tests run both paths).
	noInlinePump bool
}

// DefaultConfig returns a Config with transaction pooling, SCRAM, 16 MiB
// messages, a 30 s shutdown timeout and no users.
func DefaultConfig() Config {
	return Config{
		PoolMode:             PoolTransaction,
		Auth:                 AuthSCRAM,
		MaxMessageBytes:      16 << 20,
		ShutdownTimeout:      30 * time.Second,
		StartupTimeout:       15 * time.Second,
		ClientCheckInterval:  time.Second,
		MaxBackendStatements: 1000,
		MaxStaleness:         5 * time.Second,
		ServerVersion:        "15.0",
		AutoPrepare:          true,
	}
}

// Validate reports the first problem in c, wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("proxy: "+format+": %w", append(args, ErrInvalidConfig)...)
	}
	if c.PoolMode > PoolSession {
		return bad("unknown pool mode %d", c.PoolMode)
	}
	if c.Auth > AuthMD5 {
		return bad("unknown auth method %d", c.Auth)
	}
	if c.RequireTLS && c.TLS == nil {
		return bad("RequireTLS needs a TLS config")
	}
	if c.MaxMessageBytes < 1024 {
		return bad("MaxMessageBytes %d is below 1024", c.MaxMessageBytes)
	}
	if c.MaxBackendStatements < 0 {
		return bad("negative MaxBackendStatements")
	}
	if c.MaxClients < 0 || c.ShutdownTimeout < 0 || c.StartupTimeout < 0 || c.MaxStaleness < 0 || c.IdleTransactionTimeout < 0 || c.ClientCheckInterval < 0 {
		return bad("negative limit or duration")
	}
	seen := map[string]bool{}
	for i, u := range c.Users {
		if u.Name == "" {
			return bad("user %d has no name", i)
		}
		if seen[u.Name] {
			return bad("user %q listed twice", u.Name)
		}
		seen[u.Name] = true
		if (u.Password == "") == (u.SCRAMVerifier == "") {
			return bad("user %q needs exactly one of password and SCRAM verifier", u.Name)
		}
		if u.SCRAMVerifier != "" {
			if _, err := parseSCRAMVerifier(u.SCRAMVerifier); err != nil {
				return bad("user %q: %v", u.Name, err)
			}
			if c.Auth == AuthMD5 {
				return bad("user %q has only a SCRAM verifier but auth is md5", u.Name)
			}
		}
		if isMD5Hash(u.Password) && c.Auth == AuthSCRAM {
			return bad("user %q has only an md5 hash but auth is scram-sha-256", u.Name)
		}
		for _, d := range u.Databases {
			if len(c.Databases) > 0 && !contains(c.Databases, d) {
				return bad("user %q names database %q which is not in Databases", u.Name, d)
			}
		}
	}
	return nil
}

// Reloadable is the part of Config that Reload changes on a running
// Server. Everything else needs a new Server.
type Reloadable struct {
	Users                  []User
	Databases              []string
	MaxStaleness           time.Duration
	MaxClients             int
	IdleTransactionTimeout time.Duration
	// CacheOff stops serving reads from Deps.Cache (writes still
	// invalidate it, so it is current when turned on again).
	CacheOff bool
}

// Reloadable returns c's reloadable part.
func (c Config) Reloadable() Reloadable {
	return Reloadable{Users: c.Users, Databases: c.Databases, MaxStaleness: c.MaxStaleness, MaxClients: c.MaxClients,
		IdleTransactionTimeout: c.IdleTransactionTimeout}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// ErrInvalidConfig is wrapped by every Config.Validate error.
var ErrInvalidConfig = errors.New("invalid proxy config")
