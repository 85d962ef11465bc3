package auth

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"fmt"
	"os"

	"github.com/golang-jwt/jwt/v5"

	"github.com/syncgate/syncgate/internal/config"
)

// The algorithms a key may have.
const (
	HS256 = "HS256"
	RS256 = "RS256"
	ES256 = "ES256"
)

// MinSecretBytes is the shortest HS256 secret accepted (RFC 7518 §3.2: a
// key at least as long as the hash output).
const MinSecretBytes = 32

// minRSABits is the smallest RSA modulus accepted.
const minRSABits = 2048

// Key is one verification key. The algorithm is pinned: a token verified with
// this key must say exactly Alg.
type Key struct {
	// ID matches the token's kid header. It may be empty only when the key
	// is the verifier's only key.
	ID string
	// Alg is HS256, RS256 or ES256.
	Alg string
	// Secret is the HS256 secret (at least MinSecretBytes).
	Secret []byte
	// Public is an *rsa.PublicKey of at least 2048 bits (RS256) or an
	// *ecdsa.PublicKey on P-256 (ES256).
	Public crypto.PublicKey
}

// check reports a key that cannot verify its algorithm. Messages name the key
// but never its material.
func (k Key) check() error {
	switch k.Alg {
	case HS256:
		if len(k.Secret) < MinSecretBytes {
			return fmt.Errorf("auth: key %q: HS256 secret must be at least %d bytes, got %d", k.ID, MinSecretBytes, len(k.Secret))
		}
		if k.Public != nil {
			return fmt.Errorf("auth: key %q: HS256 takes a secret, not a public key", k.ID)
		}
	case RS256, ES256:
		if len(k.Secret) > 0 {
			return fmt.Errorf("auth: key %q: %s takes a public key, not a secret", k.ID, k.Alg)
		}
		return checkPublic(k.Alg, k.Public)
	default:
		return fmt.Errorf("auth: key %q: alg must be HS256, RS256 or ES256, got %q", k.ID, k.Alg)
	}
	return nil
}

func checkPublic(alg string, pub crypto.PublicKey) error {
	switch alg {
	case RS256:
		rk, ok := pub.(*rsa.PublicKey)
		if !ok || rk == nil || rk.N == nil {
			return fmt.Errorf("auth: RS256 needs an RSA public key, got %T", pub)
		}
		if rk.N.BitLen() < minRSABits {
			return fmt.Errorf("auth: RS256 key must be at least %d bits, got %d", minRSABits, rk.N.BitLen())
		}
	case ES256:
		ek, ok := pub.(*ecdsa.PublicKey)
		if !ok || ek == nil || ek.Curve == nil {
			return fmt.Errorf("auth: ES256 needs an ECDSA public key, got %T", pub)
		}
		if ek.Curve != elliptic.P256() {
			return fmt.Errorf("auth: ES256 needs a P-256 key, got %s", ek.Curve.Params().Name)
		}
	default:
		return fmt.Errorf("auth: no public key for alg %q", alg)
	}
	return nil
}

// verificationKey is what the jwt library verifies a signature with.
func (k Key) verificationKey() any {
	if k.Alg == HS256 {
		return k.Secret
	}
	return k.Public
}

// ParsePublicKey parses a PEM public key ("PUBLIC KEY", "RSA PUBLIC KEY" or
// a certificate) for alg RS256 or ES256 and checks its size or curve.
func ParsePublicKey(alg string, pemData []byte) (crypto.PublicKey, error) {
	var pub crypto.PublicKey
	var err error
	switch alg {
	case RS256:
		pub, err = jwt.ParseRSAPublicKeyFromPEM(pemData)
	case ES256:
		pub, err = jwt.ParseECPublicKeyFromPEM(pemData)
	default:
		return nil, fmt.Errorf("auth: no public key for alg %q", alg)
	}
	if err != nil {
		return nil, fmt.Errorf("auth: not a PEM %s public key: %w", alg, err)
	}
	if err := checkPublic(alg, pub); err != nil {
		return nil, err
	}
	return pub, nil
}

// LoadKey builds a checked key from its configured form: for HS256 the
// secret (pemFile empty), for RS256 and ES256 the PEM file (secret empty).
func LoadKey(id, alg, pemFile string, secret []byte) (Key, error) {
	k := Key{ID: id, Alg: alg}
	switch alg {
	case HS256:
		if pemFile != "" {
			return Key{}, fmt.Errorf("auth: key %q: HS256 takes a secret, not a PEM file", id)
		}
		k.Secret = bytes.Clone(secret)
	case RS256, ES256:
		if len(secret) > 0 {
			return Key{}, fmt.Errorf("auth: key %q: %s takes a PEM file, not a secret", id, alg)
		}
		data, err := os.ReadFile(pemFile)
		if err != nil {
			return Key{}, fmt.Errorf("auth: key %q: %w", id, err)
		}
		if k.Public, err = ParsePublicKey(alg, data); err != nil {
			return Key{}, fmt.Errorf("auth: key %q (%s): %w", id, pemFile, err)
		}
	}
	if err := k.check(); err != nil {
		return Key{}, err
	}
	return k, nil
}

// FromConfig builds the verifier configuration of cfg: the keys of
// auth.keys, or else one HS256 key (id "") whose secret is auth.secret or the
// content of cfg.SecretPath(), which is created if it does not exist.
func FromConfig(cfg config.Config) (VerifierConfig, error) {
	vc := VerifierConfig{Issuer: cfg.Auth.Issuer, Audience: cfg.Auth.Audience, Leeway: cfg.Auth.Leeway}
	switch {
	case len(cfg.Auth.Keys) > 0:
		for _, ck := range cfg.Auth.Keys {
			k, err := LoadKey(ck.ID, ck.Alg, ck.PEMFile, []byte(ck.Secret))
			if err != nil {
				return VerifierConfig{}, err
			}
			vc.Keys = append(vc.Keys, k)
		}
	case cfg.Auth.Secret != "":
		vc.Keys = []Key{{Alg: HS256, Secret: []byte(cfg.Auth.Secret)}}
	default:
		secret, err := LoadOrCreateSecret(cfg.SecretPath())
		if err != nil {
			return VerifierConfig{}, err
		}
		vc.Keys = []Key{{Alg: HS256, Secret: secret}}
	}
	return vc, nil
}

// SigningKey returns the first HS256 key, the one development tokens are
// minted with (see Mint).
func (c VerifierConfig) SigningKey() (Key, error) {
	for _, k := range c.Keys {
		if k.Alg == HS256 {
			return k, nil
		}
	}
	return Key{}, fmt.Errorf("auth: no HS256 key is configured; development tokens need one")
}
