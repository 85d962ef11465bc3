package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// now is the verifiers' fixed clock in these tests.
var testNow = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func fixedNow() time.Time { return testNow }

// testSecret is an HS256 secret; tests check that no error ever shows it.
const testSecret = "test-secret-0123456789abcdefghijklmnop"

type testKeys struct {
	rsaPriv *rsa.PrivateKey
	rsaPEM  string // path of the PKIX public PEM
	rsaPub  []byte // its content
	ecPriv  *ecdsa.PrivateKey
	ecPEM   string
}

func writePublicPEM(t testing.TB, name string, pub crypto.PublicKey) (string, []byte) {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, data
}

func newTestKeys(t testing.TB) testKeys {
	t.Helper()
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k := testKeys{rsaPriv: rk, ecPriv: ek}
	k.rsaPEM, k.rsaPub = writePublicPEM(t, "rs.pem", &rk.PublicKey)
	k.ecPEM, _ = writePublicPEM(t, "es.pem", &ek.PublicKey)
	return k
}

// verifier has three keys: "hs" (HS256), "rs" (RS256), "es" (ES256).
func (k testKeys) verifier(t testing.TB) *Verifier {
	t.Helper()
	hs, err := LoadKey("hs", HS256, "", []byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := LoadKey("rs", RS256, k.rsaPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	es, err := LoadKey("es", ES256, k.ecPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(VerifierConfig{
		Keys: []Key{hs, rs, es}, Issuer: "syncgate", Audience: "syncgate", Leeway: 30 * time.Second, Now: fixedNow,
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// claims returns valid claims for alice, changed by the given edits.
func claims(edits ...func(jwt.MapClaims)) jwt.MapClaims {
	c := jwt.MapClaims{
		"sub":    "alice",
		"iss":    "syncgate",
		"aud":    "syncgate",
		"iat":    testNow.Add(-time.Minute).Unix(),
		"exp":    testNow.Add(time.Hour).Unix(),
		"spaces": []string{"team1", "team2"},
		"roles":  []string{"support"},
	}
	for _, e := range edits {
		e(c)
	}
	return c
}

// sign signs c with method and key; kid "" leaves the header out.
func sign(t testing.TB, method jwt.SigningMethod, key any, kid string, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// rawToken assembles a token from a header, a payload and an HS256 key
// (nil: empty signature), bypassing the jwt library.
func rawToken(header map[string]any, payload []byte, hsKey []byte) string {
	h, _ := json.Marshal(header)
	s := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(payload)
	if hsKey == nil {
		return s + "."
	}
	m := hmac.New(sha256.New, hsKey)
	m.Write([]byte(s))
	return s + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
