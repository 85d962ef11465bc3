package auth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/syncgate/syncgate/internal/config"
)

func TestMintRoundTrip(t *testing.T) {
	secret := []byte(testSecret)
	v, err := NewVerifier(VerifierConfig{
		Keys:   []Key{{ID: "dev", Alg: HS256, Secret: secret}},
		Issuer: "syncgate", Audience: "syncgate", Now: fixedNow,
	})
	if err != nil {
		t.Fatal(err)
	}
	base := MintOptions{User: "alice", Issuer: "syncgate", Audience: "syncgate", Now: fixedNow}
	tests := []struct {
		name   string
		edit   func(*MintOptions)
		want   Claims // ID is random and not compared
		verErr error
	}{
		{"plain, default TTL", func(*MintOptions) {},
			Claims{Subject: "alice", ExpiresAt: testNow.Add(24 * time.Hour), ValidUntil: testNow.Add(24 * time.Hour), IssuedAt: testNow}, nil},
		{"everything", func(o *MintOptions) {
			o.Device, o.Spaces, o.Roles, o.Remember, o.TTL, o.KeyID = "phone", []string{"t1"}, []string{"admin"}, true, time.Hour, "dev"
		}, Claims{Subject: "alice", Device: "phone", Spaces: []string{"t1"}, Roles: []string{"admin"}, Remember: true,
			ExpiresAt: testNow.Add(time.Hour), ValidUntil: testNow.Add(time.Hour), IssuedAt: testNow}, nil},
		{"expired", func(o *MintOptions) {
			o.TTL, o.Now = time.Minute, func() time.Time { return testNow.Add(-time.Hour) }
		}, Claims{}, ErrExpired},
		{"wrong kid", func(o *MintOptions) { o.KeyID = "other" }, Claims{}, ErrInvalid},
		{"wrong audience", func(o *MintOptions) { o.Audience = "else" }, Claims{}, ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.edit(&o)
			tok, err := Mint(secret, o)
			if err != nil {
				t.Fatalf("Mint: %v", err)
			}
			c, err := v.Verify(tok)
			if tc.verErr != nil {
				if !errors.Is(err, tc.verErr) {
					t.Fatalf("Verify = %v, want %v", err, tc.verErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if len(c.ID) != 32 {
				t.Errorf("jti %q, want 32 hex digits", c.ID)
			}
			c.ID = ""
			if !reflect.DeepEqual(c, tc.want) {
				t.Errorf("claims\n got %+v\nwant %+v", c, tc.want)
			}
		})
	}

	t.Run("kid header and HS256", func(t *testing.T) {
		tok, err := Mint(secret, MintOptions{User: "bob", KeyID: "dev"})
		if err != nil {
			t.Fatal(err)
		}
		h, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
		var header map[string]any
		if err := json.Unmarshal(h, &header); err != nil || header["alg"] != "HS256" || header["kid"] != "dev" {
			t.Errorf("header %s (%v)", h, err)
		}
		a, _ := Mint(secret, MintOptions{User: "bob"})
		b, _ := Mint(secret, MintOptions{User: "bob"})
		if a == b {
			t.Error("two minted tokens are identical: jti is not random")
		}
	})
}

func TestMintErrors(t *testing.T) {
	tests := []struct {
		name   string
		secret string
		o      MintOptions
		detail string
	}{
		{"short secret", "short", MintOptions{User: "a"}, "at least 32 bytes, got 5"},
		{"no user", testSecret, MintOptions{}, "user is required"},
		{"bad user", testSecret, MintOptions{User: "a\x00b"}, "not a valid user id"},
		{"space with prefix", testSecret, MintOptions{User: "a", Spaces: []string{"space:t"}}, `"space:t" is not a valid space id`},
		{"empty space", testSecret, MintOptions{User: "a", Spaces: []string{""}}, "not a valid space id"},
		{"negative ttl", testSecret, MintOptions{User: "a", TTL: -time.Second}, "ttl must not be negative"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Mint([]byte(tc.secret), tc.o)
			if err == nil || !strings.HasPrefix(err.Error(), "auth: ") || !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("Mint error %v, want %q", err, tc.detail)
			}
		})
	}
}

func TestFromConfig(t *testing.T) {
	k := newTestKeys(t)
	newCfg := func(edit func(*config.Config)) config.Config {
		c := config.Default()
		c.DataDir = filepath.Join(t.TempDir(), "data")
		edit(&c)
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	mintVerify := func(t *testing.T, cfg config.Config) {
		t.Helper()
		vc, err := FromConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		key, err := vc.SigningKey()
		if err != nil {
			t.Fatal(err)
		}
		tok, err := Mint(key.Secret, MintOptions{User: "alice", Device: "phone", KeyID: key.ID, Issuer: vc.Issuer, Audience: vc.Audience})
		if err != nil {
			t.Fatal(err)
		}
		v, err := NewVerifier(vc)
		if err != nil {
			t.Fatal(err)
		}
		if c, err := v.Verify(tok); err != nil || c.Subject != "alice" || !c.AllowsDevice("phone") || c.AllowsDevice("laptop") {
			t.Fatalf("Verify = %+v, %v", c, err)
		}
	}

	t.Run("default: secret file in the data dir, created once", func(t *testing.T) {
		cfg := newCfg(func(*config.Config) {})
		mintVerify(t, cfg)
		first, err := os.ReadFile(filepath.Join(cfg.DataDir, "jwt.secret"))
		if err != nil {
			t.Fatal(err)
		}
		vc, err := FromConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if string(vc.Keys[0].Secret) != strings.TrimSpace(string(first)) || vc.Issuer != "syncgate" || vc.Audience != "syncgate" || vc.Leeway != 30*time.Second {
			t.Errorf("second FromConfig: %+v", vc)
		}
	})
	t.Run("auth.secret, no file written", func(t *testing.T) {
		cfg := newCfg(func(c *config.Config) { c.Auth.Secret = testSecret })
		mintVerify(t, cfg)
		if _, err := os.Stat(cfg.DataDir); !os.IsNotExist(err) {
			t.Errorf("data dir touched: %v", err)
		}
	})
	t.Run("auth.keys", func(t *testing.T) {
		cfg := newCfg(func(c *config.Config) {
			c.Auth.Keys = []config.Key{{ID: "rs", Alg: "RS256", PEMFile: k.rsaPEM}, {ID: "dev", Alg: "HS256", Secret: testSecret}}
		})
		mintVerify(t, cfg)
	})
	t.Run("only public keys: no signing key", func(t *testing.T) {
		cfg := newCfg(func(c *config.Config) { c.Auth.Keys = []config.Key{{ID: "es", Alg: "ES256", PEMFile: k.ecPEM}} })
		vc, err := FromConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := vc.SigningKey(); err == nil || !strings.Contains(err.Error(), "no HS256 key") {
			t.Fatalf("SigningKey error %v", err)
		}
	})
	t.Run("unparsable PEM", func(t *testing.T) {
		cfg := newCfg(func(c *config.Config) { c.Auth.Keys = []config.Key{{ID: "es", Alg: "ES256", PEMFile: k.rsaPEM}} })
		if _, err := FromConfig(cfg); err == nil || !strings.Contains(err.Error(), `auth: key "es"`) {
			t.Fatalf("FromConfig error %v", err)
		}
	})
}
