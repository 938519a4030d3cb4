package config

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// SCRAM-SHA-256 (RFC 5802, RFC 7677) verifiers in PostgreSQL's format:
//
//	SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>
//
// Passwords are used as their raw UTF-8 bytes. PostgreSQL applies SASLprep
// to non-ASCII passwords first, so for non-ASCII passwords a verifier made
// here can differ from one made by PostgreSQL; ASCII passwords agree.

const (
	scramPrefix = "SCRAM-SHA-256"
	// DefaultSCRAMIterations is PostgreSQL's default scram_iterations.
	DefaultSCRAMIterations = 4096
	scramSaltLen           = 16
)

// SCRAMVerifier is a parsed SCRAM-SHA-256 verifier.
type SCRAMVerifier struct {
	Iterations int
	Salt       []byte
	StoredKey  []byte // H(HMAC(SaltedPassword, "Client Key")), 32 bytes
	ServerKey  []byte // HMAC(SaltedPassword, "Server Key"), 32 bytes
}

// NewSCRAMVerifier returns a PostgreSQL-format verifier for password with
// a random 16-byte salt and 4096 iterations. The error is non-nil only if
// the system random source fails.
func NewSCRAMVerifier(password string) (string, error) {
	salt := make([]byte, scramSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("config: scram salt: %w", err)
	}
	v, err := DeriveSCRAMVerifier(password, salt, DefaultSCRAMIterations)
	if err != nil {
		return "", err
	}
	return v.String(), nil
}

// DeriveSCRAMVerifier computes the verifier for password, salt and
// iterations (deterministic; NewSCRAMVerifier picks a random salt).
func DeriveSCRAMVerifier(password string, salt []byte, iterations int) (SCRAMVerifier, error) {
	if iterations < 1 || iterations > math.MaxInt32 {
		return SCRAMVerifier{}, fmt.Errorf("%w: scram iterations must be 1..%d (got %d)", ErrInvalid, math.MaxInt32, iterations)
	}
	if len(salt) == 0 {
		return SCRAMVerifier{}, fmt.Errorf("%w: scram salt must not be empty", ErrInvalid)
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return SCRAMVerifier{}, fmt.Errorf("config: scram: %w", err)
	}
	clientKey := hmacSHA256(salted, []byte("Client Key"))
	stored := sha256.Sum256(clientKey)
	return SCRAMVerifier{
		Iterations: iterations,
		Salt:       append([]byte(nil), salt...),
		StoredKey:  stored[:],
		ServerKey:  hmacSHA256(salted, []byte("Server Key")),
	}, nil
}

// ParseSCRAMVerifier parses a PostgreSQL-format SCRAM-SHA-256 verifier.
// Errors wrap ErrInvalid and say which part is malformed.
func ParseSCRAMVerifier(s string) (SCRAMVerifier, error) {
	bad := func(why string) (SCRAMVerifier, error) {
		return SCRAMVerifier{}, fmt.Errorf("%w: malformed scram_verifier: %s (want %s$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>)",
			ErrInvalid, why, scramPrefix)
	}
	method, rest, ok := strings.Cut(s, "$")
	if !ok || method != scramPrefix {
		return bad("does not start with " + scramPrefix + "$")
	}
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return bad("missing '$' before the keys")
	}
	iterStr, saltStr, ok := strings.Cut(params, ":")
	if !ok {
		return bad("missing ':' between iterations and salt")
	}
	iter, err := strconv.Atoi(iterStr)
	if err != nil || iter < 1 || iter > math.MaxInt32 {
		return bad(fmt.Sprintf("iterations %q is not a number 1..%d", iterStr, math.MaxInt32))
	}
	salt, err := base64.StdEncoding.DecodeString(saltStr)
	if err != nil || len(salt) == 0 {
		return bad("salt is not non-empty base64")
	}
	storedStr, serverStr, ok := strings.Cut(keys, ":")
	if !ok {
		return bad("missing ':' between StoredKey and ServerKey")
	}
	stored, err := base64.StdEncoding.DecodeString(storedStr)
	if err != nil || len(stored) != sha256.Size {
		return bad("StoredKey is not 32 bytes of base64")
	}
	server, err := base64.StdEncoding.DecodeString(serverStr)
	if err != nil || len(server) != sha256.Size {
		return bad("ServerKey is not 32 bytes of base64")
	}
	return SCRAMVerifier{Iterations: iter, Salt: salt, StoredKey: stored, ServerKey: server}, nil
}

// String returns v in PostgreSQL's format.
func (v SCRAMVerifier) String() string {
	enc := base64.StdEncoding
	return scramPrefix + "$" + strconv.Itoa(v.Iterations) + ":" + enc.EncodeToString(v.Salt) +
		"$" + enc.EncodeToString(v.StoredKey) + ":" + enc.EncodeToString(v.ServerKey)
}

// VerifyPassword reports whether password produces v (costs v.Iterations
// PBKDF2 rounds).
func (v SCRAMVerifier) VerifyPassword(password string) bool {
	w, err := DeriveSCRAMVerifier(password, v.Salt, v.Iterations)
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare(w.StoredKey, v.StoredKey) == 1 &&
		subtle.ConstantTimeCompare(w.ServerKey, v.ServerKey) == 1
}

// VerifyClientProof checks a SCRAM client-final ClientProof against
// authMessage (client-first-bare "," server-first "," client-final-without-proof):
// ClientKey = proof XOR HMAC(StoredKey, authMessage); valid iff
// H(ClientKey) == StoredKey.
func (v SCRAMVerifier) VerifyClientProof(authMessage, proof []byte) bool {
	if len(proof) != sha256.Size || len(v.StoredKey) != sha256.Size {
		return false
	}
	sig := hmacSHA256(v.StoredKey, authMessage)
	clientKey := make([]byte, sha256.Size)
	for i := range clientKey {
		clientKey[i] = proof[i] ^ sig[i]
	}
	h := sha256.Sum256(clientKey)
	return subtle.ConstantTimeCompare(h[:], v.StoredKey) == 1
}

// ServerSignature returns HMAC(ServerKey, authMessage), sent to the client
// in server-final ("v=" + base64).
func (v SCRAMVerifier) ServerSignature(authMessage []byte) []byte {
	return hmacSHA256(v.ServerKey, authMessage)
}

func hmacSHA256(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}
