package proxy

// Client authentication. SCRAM-SHA-256 uses github.com/xdg-go/scram, a
// maintained implementation of RFC 5802/7677 with a server side (pgx only
// has the client side); md5 is PostgreSQL's legacy challenge.

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
	"github.com/xdg-go/stringprep"
)

const scramIterations = 4096

// credential is a user's precomputed secrets.
type credential struct {
	name      string
	scram     scram.StoredCredentials // valid when hasSCRAM
	hasSCRAM  bool
	md5Inner  string // hex(md5(password||user)), valid when hasMD5
	hasMD5    bool
	databases []string
	// backendPassword logs in to the backends as this user ("" = cannot).
	backendPassword string
}

// buildCredentials precomputes SCRAM keys (one PBKDF2 per user, at
// New/Reload time rather than per connection).
func buildCredentials(users []User) (map[string]*credential, error) {
	out := make(map[string]*credential, len(users))
	for _, u := range users {
		c := &credential{name: u.Name, databases: u.Databases, backendPassword: u.BackendPassword}
		if c.backendPassword == "" && u.SCRAMVerifier == "" && !isMD5Hash(u.Password) {
			c.backendPassword = u.Password
		}
		switch {
		case u.SCRAMVerifier != "":
			sc, err := parseSCRAMVerifier(u.SCRAMVerifier)
			if err != nil {
				return nil, fmt.Errorf("proxy: user %q: %w", u.Name, err)
			}
			c.scram, c.hasSCRAM = sc, true
		case isMD5Hash(u.Password):
			c.md5Inner, c.hasMD5 = u.Password[3:], true
		default:
			salt := make([]byte, 16)
			if _, err := rand.Read(salt); err != nil {
				return nil, err
			}
			sc, err := scramFromPassword(u.Password, salt, scramIterations)
			if err != nil {
				return nil, fmt.Errorf("proxy: user %q: %w", u.Name, err)
			}
			c.scram, c.hasSCRAM = sc, true
			sum := md5.Sum([]byte(u.Password + u.Name))
			c.md5Inner, c.hasMD5 = hex.EncodeToString(sum[:]), true
		}
		out[u.Name] = c
	}
	return out, nil
}

func isMD5Hash(s string) bool {
	if len(s) != 35 || !strings.HasPrefix(s, "md5") {
		return false
	}
	_, err := hex.DecodeString(s[3:])
	return err == nil
}

// scramFromPassword derives the stored keys as PostgreSQL does: SASLprep
// the password when it is valid for SASLprep, else use it raw.
func scramFromPassword(password string, salt []byte, iters int) (scram.StoredCredentials, error) {
	if p, err := stringprep.SASLprep.Prepare(password); err == nil {
		password = p
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, iters, sha256.Size)
	if err != nil {
		return scram.StoredCredentials{}, err
	}
	clientKey := hmacSHA256(salted, []byte("Client Key"))
	storedKey := sha256.Sum256(clientKey)
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: iters},
		StoredKey:  storedKey[:],
		ServerKey:  hmacSHA256(salted, []byte("Server Key")),
	}, nil
}

func hmacSHA256(key, data []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil)
}

// parseSCRAMVerifier parses "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>".
func parseSCRAMVerifier(v string) (scram.StoredCredentials, error) {
	var zero scram.StoredCredentials
	parts := strings.Split(v, "$")
	if len(parts) != 3 || parts[0] != "SCRAM-SHA-256" {
		return zero, errors.New(`SCRAM verifier must look like "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"`)
	}
	is, salt64, ok := strings.Cut(parts[1], ":")
	if !ok {
		return zero, errors.New("SCRAM verifier: missing salt")
	}
	iters, err := strconv.Atoi(is)
	if err != nil || iters < 1 {
		return zero, fmt.Errorf("SCRAM verifier: bad iteration count %q", is)
	}
	salt, err := base64.StdEncoding.DecodeString(salt64)
	if err != nil || len(salt) == 0 {
		return zero, errors.New("SCRAM verifier: bad salt")
	}
	sk64, svk64, ok := strings.Cut(parts[2], ":")
	if !ok {
		return zero, errors.New("SCRAM verifier: missing server key")
	}
	storedKey, err1 := base64.StdEncoding.DecodeString(sk64)
	serverKey, err2 := base64.StdEncoding.DecodeString(svk64)
	if err1 != nil || err2 != nil || len(storedKey) != sha256.Size || len(serverKey) != sha256.Size {
		return zero, errors.New("SCRAM verifier: bad keys")
	}
	return scram.StoredCredentials{KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: iters}, StoredKey: storedKey, ServerKey: serverKey}, nil
}

// SCRAMVerifier returns a PostgreSQL-format SCRAM-SHA-256 verifier for
// password (random salt, 4096 iterations), for use in User.SCRAMVerifier.
func SCRAMVerifier(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	sc, err := scramFromPassword(password, salt, scramIterations)
	if err != nil {
		return "", err
	}
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", sc.Iters, b64(salt), b64(sc.StoredKey), b64(sc.ServerKey)), nil
}

// authenticate runs the configured challenge with the client. It returns
// nil on success; a *clientError with 28P01 otherwise. cred is nil for an
// unknown user: the exchange still runs (with made-up secrets) so a client
// cannot tell unknown users from wrong passwords.
func (c *clientConn) authenticate(cred *credential, method AuthMethod) error {
	user := c.user
	if method == AuthSCRAM && (cred == nil || cred.hasSCRAM) {
		return c.authSCRAM(cred, user)
	}
	if cred != nil && !cred.hasMD5 {
		// configured md5 but only a verifier: Validate prevents this.
		return errAuthFailed(user)
	}
	return c.authMD5(cred, user)
}

func errAuthFailed(user string) error {
	return newClientError(codeInvalidPassword, fmt.Sprintf("password authentication failed for user %q", user))
}

func (c *clientConn) authSCRAM(cred *credential, user string) error {
	stored := scram.StoredCredentials{}
	if cred != nil {
		stored = cred.scram
	} else {
		salt := make([]byte, 16)
		_, _ = rand.Read(salt)
		key := make([]byte, 32)
		_, _ = rand.Read(key)
		stored = scram.StoredCredentials{KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: scramIterations}, StoredKey: key, ServerKey: key}
	}
	srv, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) {
		// PostgreSQL clients send an empty SCRAM user name; the startup
		// message's user is the identity.
		return stored, nil
	})
	if err != nil {
		return err
	}
	mechs := []string{"SCRAM-SHA-256"}
	conv := srv.NewConversation()
	if leaf := c.srv.tlsLeaf; c.tls && leaf != nil {
		// tls-server-end-point binds to the certificate we served; the
		// library computes it from a client-side view of the connection.
		if cb, err := scram.NewTLSServerEndpointBinding(&tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}); err == nil {
			mechs = []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}
			conv = srv.NewConversationWithChannelBinding(cb)
		}
	}
	if err := c.sendAuth(&pgproto3.AuthenticationSASL{AuthMechanisms: mechs}, pgproto3.AuthTypeSASL); err != nil {
		return err
	}
	msg, err := c.receiveAuth()
	if err != nil {
		return err
	}
	init, ok := msg.(*pgproto3.SASLInitialResponse)
	if !ok {
		return newClientError(codeProtocolViolation, fmt.Sprintf("expected SASL initial response, got %T", msg))
	}
	if init.AuthMechanism != "SCRAM-SHA-256" && !(init.AuthMechanism == "SCRAM-SHA-256-PLUS" && len(mechs) == 2) {
		return newClientError(codeProtocolViolation, fmt.Sprintf("client selected an invalid SASL authentication mechanism %q", init.AuthMechanism))
	}
	first, err := conv.Step(string(init.Data))
	if err != nil {
		return newClientError(codeProtocolViolation, "malformed SCRAM message: "+err.Error())
	}
	if err := c.sendAuth(&pgproto3.AuthenticationSASLContinue{Data: []byte(first)}, pgproto3.AuthTypeSASLContinue); err != nil {
		return err
	}
	msg, err = c.receiveAuth()
	if err != nil {
		return err
	}
	resp, ok := msg.(*pgproto3.SASLResponse)
	if !ok {
		return newClientError(codeProtocolViolation, fmt.Sprintf("expected SASL response, got %T", msg))
	}
	final, err := conv.Step(string(resp.Data))
	if err != nil || !conv.Valid() || cred == nil {
		return errAuthFailed(user)
	}
	if err := c.sendAuth(&pgproto3.AuthenticationSASLFinal{Data: []byte(final)}, pgproto3.AuthTypeSASLFinal); err != nil {
		return err
	}
	return nil
}

func (c *clientConn) authMD5(cred *credential, user string) error {
	var salt [4]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return err
	}
	if err := c.sendAuth(&pgproto3.AuthenticationMD5Password{Salt: salt}, pgproto3.AuthTypeMD5Password); err != nil {
		return err
	}
	msg, err := c.receiveAuth()
	if err != nil {
		return err
	}
	pw, ok := msg.(*pgproto3.PasswordMessage)
	if !ok {
		return newClientError(codeProtocolViolation, fmt.Sprintf("expected password response, got %T", msg))
	}
	if cred == nil {
		return errAuthFailed(user)
	}
	sum := md5.Sum(append([]byte(cred.md5Inner), salt[:]...))
	want := "md5" + hex.EncodeToString(sum[:])
	if !hmac.Equal([]byte(want), []byte(pw.Password)) {
		return errAuthFailed(user)
	}
	return nil
}

func (c *clientConn) sendAuth(msg pgproto3.BackendMessage, authType uint32) error {
	if err := c.fe.SetAuthType(authType); err != nil {
		return err
	}
	return c.send(msg)
}

func (c *clientConn) receiveAuth() (pgproto3.FrontendMessage, error) {
	msg, err := c.fe.Receive()
	if err != nil {
		return nil, c.receiveError(err)
	}
	if _, ok := msg.(*pgproto3.Terminate); ok {
		return nil, errClientGone
	}
	return msg, nil
}
