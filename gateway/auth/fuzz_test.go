package auth

import (
	"errors"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// FuzzVerify feeds arbitrary tokens, and arbitrary claim payloads correctly
// signed with the HS256 key, to a verifier. Verify must never panic, must
// fail with exactly one of the two sentinels, and must only accept tokens
// with a subject and an expiry.
func FuzzVerify(f *testing.F) {
	k := newTestKeys(f)
	v := k.verifier(f)
	hs := []byte(testSecret)
	valid := mustJSON(claims())
	for _, s := range []string{
		sign(f, jwt.SigningMethodHS256, hs, "hs", claims()),
		sign(f, jwt.SigningMethodRS256, k.rsaPriv, "rs", claims()),
		sign(f, jwt.SigningMethodES256, k.ecPriv, "es", claims()),
		sign(f, jwt.SigningMethodHS256, hs, "hs", claims(func(c jwt.MapClaims) { c["exp"] = testNow.Add(-time.Hour).Unix() })),
		rawToken(map[string]any{"alg": "none", "kid": "hs"}, valid, nil),
		rawToken(map[string]any{"alg": "HS256", "kid": "rs"}, valid, k.rsaPub),
		"", ".", "..", "a.b.c", "eyJhbGciOiJIUzI1NiJ9..",
	} {
		f.Add(s, valid)
	}
	f.Add("", []byte(`{"sub":"a","exp":1e300,"aud":"syncgate","iss":"syncgate"}`))
	f.Add("", []byte(`{"sub":"a","exp":-1e300,"nbf":"x","spaces":[null],"aud":["syncgate",1]}`))
	f.Add("", []byte(`{"sub":"a","exp":1748779200.5,"aud":"syncgate","iss":"syncgate","spaces":["x\u0000"]}`))
	f.Add("", []byte(`null`))

	check := func(t *testing.T, tok string) {
		c, err := v.Verify(tok)
		if err != nil {
			if errors.Is(err, ErrInvalid) == errors.Is(err, ErrExpired) {
				t.Fatalf("error %q matches neither or both sentinels", err)
			}
			return
		}
		if c.Subject == "" || c.ExpiresAt.IsZero() {
			t.Fatalf("accepted token without sub or exp: %+v", c)
		}
		if !testNow.Before(c.ExpiresAt.Add(30 * time.Second)) {
			t.Fatalf("accepted an expired token: %+v", c)
		}
	}
	f.Fuzz(func(t *testing.T, tok string, payload []byte) {
		check(t, tok)
		check(t, rawToken(map[string]any{"alg": "HS256", "kid": "hs"}, payload, hs))
	})
}
