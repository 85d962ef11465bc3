package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestVerify(t *testing.T) {
	k := newTestKeys(t)
	v := k.verifier(t)
	hs := []byte(testSecret)
	in := func(d time.Duration) int64 { return testNow.Add(d).Unix() }

	tests := []struct {
		name   string
		token  func(t *testing.T) string
		want   error  // nil, ErrExpired or ErrInvalid
		detail string // substring of the error
		check  func(t *testing.T, c Claims)
	}{
		{name: "valid HS256", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) {
				c["device"], c["remember"], c["jti"] = "phone", true, "j1"
			}))
		}, check: func(t *testing.T, c Claims) {
			want := Claims{Subject: "alice", Spaces: []string{"team1", "team2"}, Device: "phone", Roles: []string{"support"},
				Remember: true, ID: "j1", ExpiresAt: testNow.Add(time.Hour), IssuedAt: testNow.Add(-time.Minute),
				ValidUntil: testNow.Add(time.Hour + 30*time.Second)} // exp + the verifier's leeway
			if !reflect.DeepEqual(c, want) {
				t.Errorf("claims\n got %+v\nwant %+v", c, want)
			}
			if !c.HasRole("support") || c.HasRole("admin") || !c.AllowsDevice("phone") || c.AllowsDevice("laptop") {
				t.Errorf("HasRole/AllowsDevice wrong for %+v", c)
			}
		}},
		{name: "valid RS256", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodRS256, k.rsaPriv, "rs", claims())
		}},
		{name: "valid ES256", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodES256, k.ecPriv, "es", claims())
		}},
		{name: "aud as a list holding ours", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { c["aud"] = []string{"other", "syncgate"} }))
		}},
		{name: "no nbf, no iat, no spaces", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { delete(c, "iat"); delete(c, "spaces") }))
		}, check: func(t *testing.T, c Claims) {
			if !c.IssuedAt.IsZero() || c.Spaces != nil {
				t.Errorf("claims %+v", c)
			}
		}},
		{name: "expired", want: ErrExpired, detail: "auth: token expired at 2025-06-01T11:59:00Z", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { c["exp"] = in(-time.Minute) }))
		}},
		{name: "expired RS256", want: ErrExpired, token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodRS256, k.rsaPriv, "rs", claims(func(c jwt.MapClaims) { c["exp"] = in(-time.Hour) }))
		}},
		{name: "expired exactly leeway ago", want: ErrExpired, token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { c["exp"] = in(-30 * time.Second) }))
		}},
		{name: "expired within leeway is accepted", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { c["exp"] = in(-20 * time.Second) }))
		}, check: func(t *testing.T, c Claims) {
			// A session must not end at exp (already past) but when the
			// verifier would refuse the token: exp + leeway, 10s from now.
			if want := testNow.Add(-20 * time.Second); !c.ExpiresAt.Equal(want) {
				t.Errorf("ExpiresAt = %s, want %s", c.ExpiresAt, want)
			}
			if want := testNow.Add(10 * time.Second); !c.ValidUntil.Equal(want) || c.ValidUntil.Location() != time.UTC {
				t.Errorf("ValidUntil = %s, want %s in UTC", c.ValidUntil, want)
			}
		}},
		{name: "nbf in the future", want: ErrInvalid, detail: "not valid before", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { c["nbf"] = in(2 * time.Minute) }))
		}},
		{name: "nbf within leeway is accepted", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { c["nbf"] = in(20 * time.Second) }))
		}},
		{name: "wrong iss", want: ErrInvalid, detail: `iss "evil" is not "syncgate"`, token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { c["iss"] = "evil" }))
		}},
		{name: "missing iss", want: ErrInvalid, detail: "iss", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { delete(c, "iss") }))
		}},
		{name: "wrong aud", want: ErrInvalid, detail: `aud does not include "syncgate"`, token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { c["aud"] = []string{"other"} }))
		}},
		{name: "missing aud", want: ErrInvalid, detail: "aud", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { delete(c, "aud") }))
		}},
		{name: "missing sub", want: ErrInvalid, detail: "sub claim is required", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { delete(c, "sub") }))
		}},
		{name: "sub with a control character", want: ErrInvalid, detail: "not a valid user id", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { c["sub"] = "al\nice" }))
		}},
		{name: "missing exp", want: ErrInvalid, detail: "exp claim is required", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { delete(c, "exp") }))
		}},
		{name: "exp not a number", want: ErrInvalid, detail: "malformed", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { c["exp"] = "tomorrow" }))
		}},
		{name: "spaces not an array", want: ErrInvalid, detail: "malformed", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { c["spaces"] = "team1" }))
		}},
		{name: "empty space id", want: ErrInvalid, detail: `spaces[1] "" is not a valid space id`, token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { c["spaces"] = []string{"a", ""} }))
		}},
		{name: "expired and wrong iss is invalid, not expired", want: ErrInvalid, detail: "iss", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { c["exp"], c["iss"] = in(-time.Hour), "evil" }))
		}},
		{name: "expired and badly signed is invalid, not expired", want: ErrInvalid, detail: "signature", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, []byte(strings.Repeat("x", 32)), "hs", claims(func(c jwt.MapClaims) { c["exp"] = in(-time.Hour) }))
		}},
		{name: "bad signature", want: ErrInvalid, detail: "signature is invalid", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, []byte(strings.Repeat("x", 32)), "hs", claims())
		}},
		{name: "tampered payload", want: ErrInvalid, detail: "signature is invalid", token: func(t *testing.T) string {
			good := strings.Split(sign(t, jwt.SigningMethodRS256, k.rsaPriv, "rs", claims()), ".")
			evil := strings.Split(sign(t, jwt.SigningMethodRS256, k.rsaPriv, "rs", claims(func(c jwt.MapClaims) { c["sub"] = "root" })), ".")
			return good[0] + "." + evil[1] + "." + good[2]
		}},
		{name: "ES256 signature from another key", want: ErrInvalid, detail: "signature is invalid", token: func(t *testing.T) string {
			other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			return sign(t, jwt.SigningMethodES256, other, "es", claims())
		}},
		{name: "alg none with kid", want: ErrInvalid, detail: "signing method none is invalid", token: func(*testing.T) string {
			return rawToken(map[string]any{"alg": "none", "typ": "JWT", "kid": "hs"}, mustJSON(claims()), nil)
		}},
		{name: "alg none without kid", want: ErrInvalid, token: func(*testing.T) string {
			return rawToken(map[string]any{"alg": "none"}, mustJSON(claims()), nil)
		}},
		{name: "alg None (case)", want: ErrInvalid, token: func(*testing.T) string {
			return rawToken(map[string]any{"alg": "None", "kid": "hs"}, mustJSON(claims()), nil)
		}},
		{name: "alg confusion: HS256 signed with the RSA public key", want: ErrInvalid, detail: `alg HS256 does not match key "rs", which is RS256`,
			token: func(*testing.T) string {
				return rawToken(map[string]any{"alg": "HS256", "kid": "rs"}, mustJSON(claims()), k.rsaPub)
			}},
		{name: "RS256 token presented as the HS256 key", want: ErrInvalid, detail: `alg RS256 does not match key "hs"`, token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodRS256, k.rsaPriv, "hs", claims())
		}},
		{name: "ES256 token presented as the RS256 key", want: ErrInvalid, detail: "does not match", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodES256, k.ecPriv, "rs", claims())
		}},
		{name: "HS512 is not an allowed alg", want: ErrInvalid, detail: "signing method HS512 is invalid", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS512, hs, "hs", claims())
		}},
		{name: "unknown kid", want: ErrInvalid, detail: `unknown key id "nope"`, token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "nope", claims())
		}},
		{name: "long kid is clipped in the error", want: ErrInvalid, detail: `unknown key id "` + strings.Repeat("k", 64) + `…"`, token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, strings.Repeat("k", 500), claims())
		}},
		{name: "no kid with several keys", want: ErrInvalid, detail: "no kid header", token: func(t *testing.T) string {
			return sign(t, jwt.SigningMethodHS256, hs, "", claims())
		}},
		{name: "kid not a string", want: ErrInvalid, detail: "kid header is not a string", token: func(*testing.T) string {
			return rawToken(map[string]any{"alg": "HS256", "kid": 7}, mustJSON(claims()), hs)
		}},
		{name: "crit header", want: ErrInvalid, detail: "crit", token: func(*testing.T) string {
			return rawToken(map[string]any{"alg": "HS256", "kid": "hs", "crit": []string{"exp"}}, mustJSON(claims()), hs)
		}},
		{name: "garbage", want: ErrInvalid, detail: "malformed", token: func(*testing.T) string { return "not.a.token" }},
		{name: "empty", want: ErrInvalid, token: func(*testing.T) string { return "" }},
		{name: "too long", want: ErrInvalid, detail: "longer than", token: func(*testing.T) string {
			return strings.Repeat("a", MaxTokenBytes+1)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := v.Verify(tc.token(t))
			checkErr(t, err, tc.want, tc.detail)
			if err == nil && tc.check != nil {
				tc.check(t, c)
			}
			if err == nil && (c.Subject == "" || c.ExpiresAt.IsZero()) {
				t.Errorf("accepted claims lack sub or exp: %+v", c)
			}
		})
	}
}

// checkErr asserts err matches want (nil, ErrExpired or ErrInvalid) and only
// it, contains detail, and leaks no key material.
func checkErr(t *testing.T, err, want error, detail string) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("Verify accepted the token, want %v", want)
	}
	other := ErrInvalid
	if want == ErrInvalid {
		other = ErrExpired
	}
	if !errors.Is(err, want) || errors.Is(err, other) {
		t.Errorf("error %q: want it to match %v only", err, want)
	}
	if !strings.Contains(err.Error(), detail) {
		t.Errorf("error %q does not contain %q", err, detail)
	}
	if strings.Contains(err.Error(), testSecret) || strings.Contains(err.Error(), "BEGIN") {
		t.Errorf("error %q leaks key material", err)
	}
}

func TestVerifierSingleKey(t *testing.T) {
	k := newTestKeys(t)
	rs, err := LoadKey("main", RS256, k.rsaPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(VerifierConfig{Keys: []Key{rs}, Now: fixedNow}) // no iss/aud checks
	if err != nil {
		t.Fatal(err)
	}
	noIssAud := claims(func(c jwt.MapClaims) { delete(c, "iss"); delete(c, "aud") })
	tests := []struct {
		name   string
		token  string
		want   error
		detail string
	}{
		{"no kid uses the only key", sign(t, jwt.SigningMethodRS256, k.rsaPriv, "", noIssAud), nil, ""},
		{"matching kid", sign(t, jwt.SigningMethodRS256, k.rsaPriv, "main", noIssAud), nil, ""},
		{"iss and aud unchecked when not configured", sign(t, jwt.SigningMethodRS256, k.rsaPriv, "", claims(func(c jwt.MapClaims) {
			c["iss"], c["aud"] = "anyone", "anything"
		})), nil, ""},
		{"other kid", sign(t, jwt.SigningMethodRS256, k.rsaPriv, "old", noIssAud), ErrInvalid, `unknown key id "old"`},
		{"alg confusion without kid", rawToken(map[string]any{"alg": "HS256"}, mustJSON(noIssAud), k.rsaPub), ErrInvalid, "signing method HS256 is invalid"},
		{"alg confusion, PKCS1 bytes", func() string {
			der := x509.MarshalPKCS1PublicKey(&k.rsaPriv.PublicKey)
			return rawToken(map[string]any{"alg": "HS256", "kid": "main"}, mustJSON(noIssAud),
				pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: der}))
		}(), ErrInvalid, ""},
		{"alg none", rawToken(map[string]any{"alg": "none"}, mustJSON(noIssAud), nil), ErrInvalid, "none"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.Verify(tc.token)
			checkErr(t, err, tc.want, tc.detail)
		})
	}
}

func TestNewVerifierErrors(t *testing.T) {
	k := newTestKeys(t)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	good := Key{ID: "a", Alg: HS256, Secret: []byte(testSecret)}
	tests := []struct {
		name   string
		cfg    VerifierConfig
		detail string
	}{
		{"no keys", VerifierConfig{}, "no verification key"},
		{"short secret", VerifierConfig{Keys: []Key{{Alg: HS256, Secret: []byte("short")}}}, "at least 32 bytes, got 5"},
		{"HS256 with a public key", VerifierConfig{Keys: []Key{{Alg: HS256, Secret: []byte(testSecret), Public: &k.ecPriv.PublicKey}}}, "not a public key"},
		{"RS256 with an EC key", VerifierConfig{Keys: []Key{{Alg: RS256, Public: &k.ecPriv.PublicKey}}}, "RS256 needs an RSA public key"},
		{"RS256 with a secret", VerifierConfig{Keys: []Key{{Alg: RS256, Secret: []byte(testSecret), Public: &k.rsaPriv.PublicKey}}}, "not a secret"},
		{"RS256 without key", VerifierConfig{Keys: []Key{{Alg: RS256}}}, "RS256 needs an RSA public key"},
		{"RSA 1024", VerifierConfig{Keys: []Key{{Alg: RS256, Public: &rsa1024.PublicKey}}}, "at least 2048 bits, got 1024"},
		{"ES256 with P-384", VerifierConfig{Keys: []Key{{Alg: ES256, Public: &p384.PublicKey}}}, "needs a P-256 key, got P-384"},
		{"ES256 with an RSA key", VerifierConfig{Keys: []Key{{Alg: ES256, Public: &k.rsaPriv.PublicKey}}}, "ES256 needs an ECDSA public key"},
		{"unknown alg", VerifierConfig{Keys: []Key{{Alg: "PS256", Public: &k.rsaPriv.PublicKey}}}, `alg must be HS256, RS256 or ES256, got "PS256"`},
		{"alg none", VerifierConfig{Keys: []Key{{Alg: "none"}}}, "alg must be"},
		{"duplicate ids", VerifierConfig{Keys: []Key{good, good}}, `duplicate key id "a"`},
		{"missing id among several", VerifierConfig{Keys: []Key{good, {Alg: HS256, Secret: []byte(testSecret)}}}, "every key needs an id"},
		{"negative leeway", VerifierConfig{Keys: []Key{good}, Leeway: -time.Second}, "leeway must not be negative"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := NewVerifier(tc.cfg)
			if err == nil {
				t.Fatalf("NewVerifier succeeded: %+v", v)
			}
			if !strings.HasPrefix(err.Error(), "auth: ") || !strings.Contains(err.Error(), tc.detail) {
				t.Errorf("error %q, want auth: ... %q", err, tc.detail)
			}
			if strings.Contains(err.Error(), testSecret) {
				t.Errorf("error %q leaks the secret", err)
			}
		})
	}
}

func TestVerifierCopiesSecret(t *testing.T) {
	secret := []byte(testSecret)
	v, err := NewVerifier(VerifierConfig{Keys: []Key{{Alg: HS256, Secret: secret}}, Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, jwt.SigningMethodHS256, []byte(testSecret), "", claims(func(c jwt.MapClaims) { delete(c, "iss"); delete(c, "aud") }))
	copy(secret, "XXXX") // the caller reuses its buffer
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("Verify after the caller changed its secret slice: %v", err)
	}
}

func TestLoadKey(t *testing.T) {
	k := newTestKeys(t)
	dir := t.TempDir()
	write := func(name string, b *pem.Block) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pkcs1 := write("pkcs1.pem", &pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&k.rsaPriv.PublicKey)})
	ecDER, _ := x509.MarshalECPrivateKey(k.ecPriv)
	private := write("private.pem", &pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})
	notPEM := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, id, alg, pemFile string
		secret                 string
		detail                 string // "" means success
	}{
		{"HS256", "h", HS256, "", testSecret, ""},
		{"RS256 PKIX", "r", RS256, k.rsaPEM, "", ""},
		{"RS256 PKCS1", "r", RS256, pkcs1, "", ""},
		{"ES256", "e", ES256, k.ecPEM, "", ""},
		{"HS256 short", "h", HS256, "", "short", "at least 32 bytes"},
		{"HS256 with a PEM file", "h", HS256, k.rsaPEM, testSecret, "takes a secret, not a PEM file"},
		{"RS256 with a secret", "r", RS256, k.rsaPEM, testSecret, "takes a PEM file, not a secret"},
		{"RS256 missing file", "r", RS256, filepath.Join(dir, "missing.pem"), "", "no such file"},
		{"RS256 given an EC key", "r", RS256, k.ecPEM, "", "not a PEM RS256 public key"},
		{"ES256 given an RSA key", "e", ES256, k.rsaPEM, "", "not a PEM ES256 public key"},
		{"ES256 given a private key", "e", ES256, private, "", "not a PEM ES256 public key"},
		{"not PEM", "r", RS256, notPEM, "", "not a PEM RS256 public key"},
		{"bad alg", "x", "HS384", "", testSecret, "alg must be HS256, RS256 or ES256"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key, err := LoadKey(tc.id, tc.alg, tc.pemFile, []byte(tc.secret))
			if tc.detail == "" {
				if err != nil {
					t.Fatalf("LoadKey: %v", err)
				}
				if key.ID != tc.id || key.Alg != tc.alg {
					t.Errorf("key %q %q", key.ID, key.Alg)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), "auth: ") || !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("error %v, want %q", err, tc.detail)
			}
			if strings.Contains(err.Error(), testSecret) || strings.Contains(err.Error(), "BEGIN") {
				t.Errorf("error %q leaks key material", err)
			}
		})
	}
}

func TestVerifyConcurrent(t *testing.T) {
	k := newTestKeys(t)
	v := k.verifier(t)
	toks := []string{
		sign(t, jwt.SigningMethodHS256, []byte(testSecret), "hs", claims()),
		sign(t, jwt.SigningMethodES256, k.ecPriv, "es", claims()),
		sign(t, jwt.SigningMethodHS256, []byte(testSecret), "nope", claims()),
	}
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			for j := range 50 {
				tok := toks[(i+j)%len(toks)]
				_, err := v.Verify(tok)
				if (err == nil) != (tok != toks[2]) {
					t.Errorf("Verify(%d) = %v", (i+j)%len(toks), err)
				}
			}
		})
	}
	wg.Wait()
}

// TestValidUntilIsWhenVerifyStartsRefusing: ValidUntil is exp + leeway, the
// first instant at which Verify answers ErrExpired, for any leeway
// (including none). The gateway arms its session-expiry timer at it.
func TestValidUntilIsWhenVerifyStartsRefusing(t *testing.T) {
	hs, err := LoadKey("hs", HS256, "", []byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	exp := testNow.Add(time.Hour)
	tok := sign(t, jwt.SigningMethodHS256, []byte(testSecret), "hs", claims(func(c jwt.MapClaims) { c["exp"] = exp.Unix() }))
	for _, leeway := range []time.Duration{0, time.Second, 30 * time.Second, 5 * time.Minute} {
		var now time.Time
		v, err := NewVerifier(VerifierConfig{
			Keys: []Key{hs}, Issuer: "syncgate", Audience: "syncgate", Leeway: leeway,
			Now: func() time.Time { return now },
		})
		if err != nil {
			t.Fatal(err)
		}
		now = testNow
		c, err := v.Verify(tok)
		if err != nil {
			t.Fatalf("leeway %s: %v", leeway, err)
		}
		if want := exp.Add(leeway); !c.ValidUntil.Equal(want) || !c.ExpiresAt.Equal(exp) {
			t.Fatalf("leeway %s: ExpiresAt %s ValidUntil %s, want %s and %s", leeway, c.ExpiresAt, c.ValidUntil, exp, want)
		}
		now = c.ValidUntil.Add(-time.Nanosecond)
		if _, err := v.Verify(tok); err != nil {
			t.Fatalf("leeway %s: refused just before ValidUntil: %v", leeway, err)
		}
		now = c.ValidUntil
		if _, err := v.Verify(tok); !errors.Is(err, ErrExpired) {
			t.Fatalf("leeway %s: at ValidUntil got %v, want ErrExpired", leeway, err)
		}
	}
}
