package auth

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/syncgate/syncgate/sync/protocol"
)

// DefaultTTL is the lifetime of a minted token when MintOptions.TTL is 0.
const DefaultTTL = 24 * time.Hour

// MintOptions describe a development token.
type MintOptions struct {
	User     string   // sub; required
	Device   string   // device claim: binds the token to one device id; "" for any
	Spaces   []string // space ids without the "space:" prefix
	Roles    []string
	Remember bool
	TTL      time.Duration // time to expiry; 0 means DefaultTTL
	Issuer   string        // iss; "" leaves it out
	Audience string        // aud; "" leaves it out
	KeyID    string        // kid header; "" leaves it out
	// Now returns the issue time. Default time.Now.
	Now func() time.Time
}

// Mint signs an HS256 token for o with secret. Tokens it mints verify with a
// Verifier holding the same secret, issuer and audience. Each has a random
// jti.
func Mint(secret []byte, o MintOptions) (string, error) {
	if len(secret) < MinSecretBytes {
		return "", fmt.Errorf("auth: HS256 secret must be at least %d bytes, got %d", MinSecretBytes, len(secret))
	}
	if o.User == "" {
		return "", errors.New("auth: mint: user is required")
	}
	if protocol.ValidateScope("user:"+o.User) != nil {
		return "", fmt.Errorf("auth: mint: %q is not a valid user id", clip(o.User))
	}
	for _, s := range o.Spaces {
		if strings.HasPrefix(s, "space:") || protocol.ValidateScope("space:"+s) != nil {
			return "", fmt.Errorf("auth: mint: %q is not a valid space id (give it without the space: prefix)", clip(s))
		}
	}
	if o.TTL < 0 {
		return "", fmt.Errorf("auth: mint: ttl must not be negative, got %s", o.TTL)
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	issued := now()
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", fmt.Errorf("auth: mint: %w", err)
	}
	c := tokenClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   o.User,
			Issuer:    o.Issuer,
			IssuedAt:  jwt.NewNumericDate(issued),
			ExpiresAt: jwt.NewNumericDate(issued.Add(o.TTL)),
			ID:        hex.EncodeToString(jti[:]),
		},
		Spaces:   o.Spaces,
		Device:   o.Device,
		Roles:    o.Roles,
		Remember: o.Remember,
	}
	if o.Audience != "" {
		c.Audience = jwt.ClaimStrings{o.Audience}
	}
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, c)
	if o.KeyID != "" {
		t.Header["kid"] = o.KeyID
	}
	s, err := t.SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("auth: mint: %w", err)
	}
	return s, nil
}
