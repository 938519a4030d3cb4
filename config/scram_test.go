package config

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

// RFC 7677 section 3 example: user "user", password "pencil",
// salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations. The verifier's keys were
// computed independently (Python hashlib.pbkdf2_hmac + hmac) and are
// consistent with the RFC's ClientProof and ServerSignature below.
const rfcVerifier = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="

const (
	rfcClientFirstBare  = "n=user,r=rOprNGfwEbeRWgbNEkqO"
	rfcServerFirst      = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
	rfcClientFinalNoPrf = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	rfcClientProof      = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	rfcServerSignature  = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
	rfcAuthMessage      = rfcClientFirstBare + "," + rfcServerFirst + "," + rfcClientFinalNoPrf
	rfcSaltB64          = "W22ZaJ0SNY7soEsUEjb6gQ=="
	rfcPassword         = "pencil"
	rfcIterations       = 4096
)

func b64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSCRAMRFC7677Vector(t *testing.T) {
	v, err := DeriveSCRAMVerifier(rfcPassword, b64(t, rfcSaltB64), rfcIterations)
	if err != nil {
		t.Fatal(err)
	}
	if got := v.String(); got != rfcVerifier {
		t.Fatalf("derived verifier\n got %s\nwant %s", got, rfcVerifier)
	}
	// The RFC's exchange: the server accepts the client's proof and
	// produces the RFC's server signature from StoredKey/ServerKey alone.
	if !v.VerifyClientProof([]byte(rfcAuthMessage), b64(t, rfcClientProof)) {
		t.Error("RFC 7677 ClientProof rejected")
	}
	if sig := v.ServerSignature([]byte(rfcAuthMessage)); !bytes.Equal(sig, b64(t, rfcServerSignature)) {
		t.Errorf("ServerSignature = %s, want %s", base64.StdEncoding.EncodeToString(sig), rfcServerSignature)
	}
	// A proof with one flipped bit fails.
	bad := b64(t, rfcClientProof)
	bad[0] ^= 1
	if v.VerifyClientProof([]byte(rfcAuthMessage), bad) {
		t.Error("tampered proof accepted")
	}
	if v.VerifyClientProof([]byte(rfcAuthMessage), bad[:10]) {
		t.Error("short proof accepted")
	}
	if !v.VerifyPassword("pencil") || v.VerifyPassword("pencil2") {
		t.Error("VerifyPassword wrong")
	}
}

func TestParseSCRAMVerifier(t *testing.T) {
	v, err := ParseSCRAMVerifier(rfcVerifier)
	if err != nil {
		t.Fatal(err)
	}
	if v.Iterations != 4096 || !bytes.Equal(v.Salt, b64(t, rfcSaltB64)) || len(v.StoredKey) != 32 || len(v.ServerKey) != 32 {
		t.Errorf("parsed %+v", v)
	}
	if v.String() != rfcVerifier {
		t.Errorf("String() does not round-trip: %s", v.String())
	}
	storedKey, serverKey, _ := strings.Cut(strings.SplitN(rfcVerifier, "$", 3)[2], ":")
	for _, bad := range []string{
		"",
		"md5abcdef",
		"SCRAM-SHA-1$4096:" + rfcSaltB64 + "$" + storedKey + ":" + serverKey,
		"SCRAM-SHA-256$4096:" + rfcSaltB64,
		"SCRAM-SHA-256$" + rfcSaltB64 + "$" + storedKey + ":" + serverKey,
		"SCRAM-SHA-256$0:" + rfcSaltB64 + "$" + storedKey + ":" + serverKey,
		"SCRAM-SHA-256$-1:" + rfcSaltB64 + "$" + storedKey + ":" + serverKey,
		"SCRAM-SHA-256$99999999999:" + rfcSaltB64 + "$" + storedKey + ":" + serverKey,
		"SCRAM-SHA-256$4096:$" + storedKey + ":" + serverKey,
		"SCRAM-SHA-256$4096:!!!$" + storedKey + ":" + serverKey,
		"SCRAM-SHA-256$4096:" + rfcSaltB64 + "$" + storedKey,
		"SCRAM-SHA-256$4096:" + rfcSaltB64 + "$" + storedKey + ":c2hvcnQ=",
		"SCRAM-SHA-256$4096:" + rfcSaltB64 + "$c2hvcnQ=:" + serverKey,
	} {
		if _, err := ParseSCRAMVerifier(bad); err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "malformed scram_verifier") {
			t.Errorf("ParseSCRAMVerifier(%q) = %v, want malformed error", bad, err)
		}
	}
}

func TestNewSCRAMVerifier(t *testing.T) {
	a, err := NewSCRAMVerifier("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewSCRAMVerifier("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Error("two verifiers share a salt")
	}
	for _, s := range []string{a, b} {
		v, err := ParseSCRAMVerifier(s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if v.Iterations != DefaultSCRAMIterations || len(v.Salt) != 16 {
			t.Errorf("iterations %d salt %d bytes", v.Iterations, len(v.Salt))
		}
		if !v.VerifyPassword("s3cret") || v.VerifyPassword("S3cret") {
			t.Error("VerifyPassword wrong")
		}
	}
	if _, err := DeriveSCRAMVerifier("x", nil, 4096); err == nil {
		t.Error("empty salt accepted")
	}
	if _, err := DeriveSCRAMVerifier("x", []byte("s"), 0); err == nil {
		t.Error("zero iterations accepted")
	}
}
