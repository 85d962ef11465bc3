package auth

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/syncgate/syncgate/sync/protocol"
)

// The two outcomes of a failed Verify. Every error Verify returns matches
// exactly one of them with errors.Is.
var (
	// ErrExpired: the token is well-formed, correctly signed and otherwise
	// valid, but its exp (plus leeway) has passed. The client should get a
	// new token (close code token_expired).
	ErrExpired = errors.New("auth: token expired")
	// ErrInvalid: anything else (malformed, bad signature, unknown kid,
	// algorithm not the key's, wrong iss or aud, missing sub or exp, not yet
	// valid). Close code unauthorized.
	ErrInvalid = errors.New("auth: invalid token")
)

// MaxTokenBytes bounds the token Verify will parse.
const MaxTokenBytes = 64 << 10

// Claims is what a verified token grants.
type Claims struct {
	Subject string   // sub: the user id
	Spaces  []string // spaces: space ids (without "space:") the user may use
	// Device (device claim), if set, is the only device id the token may be
	// used with; see AllowsDevice.
	Device    string
	Roles     []string  // roles, e.g. "support", "admin"
	Remember  bool      // remember: a long (remember-me) session
	ID        string    // jti, if any
	ExpiresAt time.Time // exp, in UTC
	IssuedAt  time.Time // iat, in UTC; zero if absent
	// ValidUntil is when Verify starts refusing the token as expired: exp
	// plus the verifier's leeway, in UTC. A session authenticated by the
	// token should end then, not at ExpiresAt, or a token accepted within
	// the leeway would be cut off at once.
	ValidUntil time.Time
}

// AllowsDevice reports whether the token may be used by device.
func (c Claims) AllowsDevice(device string) bool {
	return c.Device == "" || c.Device == device
}

// HasRole reports whether the token carries role.
func (c Claims) HasRole(role string) bool {
	return slices.Contains(c.Roles, role)
}

// tokenClaims is the JSON form of the claims. A claim of the wrong JSON type
// (e.g. a string for spaces) makes the token malformed.
type tokenClaims struct {
	jwt.RegisteredClaims
	Spaces   []string `json:"spaces,omitempty"`
	Device   string   `json:"device,omitempty"`
	Roles    []string `json:"roles,omitempty"`
	Remember bool     `json:"remember,omitempty"`
}

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	// Keys verify tokens; at least one. A token's kid header picks the key;
	// a token without kid uses the only key when there is exactly one.
	Keys []Key
	// Issuer, if not empty, must equal the iss claim.
	Issuer string
	// Audience, if not empty, must be one of the aud claim's values.
	Audience string
	// Leeway is the clock skew tolerated on exp and nbf (at least 0).
	Leeway time.Duration
	// Now returns the current time. Default time.Now.
	Now func() time.Time
}

// Verifier checks tokens. It is immutable and safe for concurrent use.
type Verifier struct {
	keys     map[string]Key
	only     *Key // the key used for tokens without kid, when there is one key
	parser   *jwt.Parser
	issuer   string
	audience string
	leeway   time.Duration
	now      func() time.Time
}

// NewVerifier checks cfg and builds a Verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if len(cfg.Keys) == 0 {
		return nil, errors.New("auth: no verification key")
	}
	if cfg.Leeway < 0 {
		return nil, fmt.Errorf("auth: leeway must not be negative, got %s", cfg.Leeway)
	}
	v := &Verifier{
		keys:     make(map[string]Key, len(cfg.Keys)),
		issuer:   cfg.Issuer,
		audience: cfg.Audience,
		leeway:   cfg.Leeway,
		now:      cfg.Now,
	}
	if v.now == nil {
		v.now = time.Now
	}
	var algs []string
	for _, k := range cfg.Keys {
		if err := k.check(); err != nil {
			return nil, err
		}
		if k.ID == "" && len(cfg.Keys) > 1 {
			return nil, errors.New("auth: every key needs an id when there are several")
		}
		if _, dup := v.keys[k.ID]; dup {
			return nil, fmt.Errorf("auth: duplicate key id %q", k.ID)
		}
		if k.Alg == HS256 {
			k.Secret = slices.Clone(k.Secret) // the caller may reuse its slice
		}
		v.keys[k.ID] = k
		if !slices.Contains(algs, k.Alg) {
			algs = append(algs, k.Alg)
		}
	}
	if len(cfg.Keys) == 1 {
		k := v.keys[cfg.Keys[0].ID]
		v.only = &k
	}
	// Claims are checked by Verify itself, so that an expired token is
	// reported as expired only when nothing else is wrong with it.
	v.parser = jwt.NewParser(jwt.WithValidMethods(algs), jwt.WithoutClaimsValidation(), jwt.WithStrictDecoding())
	return v, nil
}

// Verify checks token and returns its claims. The error matches ErrExpired
// or ErrInvalid (errors.Is) and carries a detail safe to log: it never holds
// key material.
func (v *Verifier) Verify(token string) (Claims, error) {
	if len(token) > MaxTokenBytes {
		return Claims{}, invalid("token is longer than %d bytes", MaxTokenBytes)
	}
	var tc tokenClaims
	var keyErr error
	_, err := v.parser.ParseWithClaims(token, &tc, func(t *jwt.Token) (any, error) {
		k, err := v.keyFor(t)
		if err != nil {
			keyErr = err
			return nil, err
		}
		return k.verificationKey(), nil
	})
	if keyErr != nil {
		return Claims{}, fmt.Errorf("%w: %w", ErrInvalid, keyErr)
	}
	if err != nil {
		return Claims{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return v.checkClaims(&tc)
}

// keyFor picks the key for t by kid and pins the algorithm to the key's.
func (v *Verifier) keyFor(t *jwt.Token) (Key, error) {
	if _, ok := t.Header["crit"]; ok {
		return Key{}, errors.New("crit header is not supported")
	}
	var k Key
	if raw, ok := t.Header["kid"]; ok {
		kid, isString := raw.(string)
		if !isString {
			return Key{}, errors.New("kid header is not a string")
		}
		if k, ok = v.keys[kid]; !ok {
			return Key{}, fmt.Errorf("unknown key id %q", clip(kid))
		}
	} else if v.only != nil {
		k = *v.only
	} else {
		return Key{}, errors.New("token has no kid header and several keys are configured")
	}
	if alg := t.Method.Alg(); alg != k.Alg {
		return Key{}, fmt.Errorf("alg %s does not match key %q, which is %s", clip(alg), clip(k.ID), k.Alg)
	}
	return k, nil
}

// checkClaims validates a correctly signed token's claims. Expiry is checked
// last: ErrExpired means the token was valid apart from its age.
func (v *Verifier) checkClaims(tc *tokenClaims) (Claims, error) {
	now := v.now()
	if tc.ExpiresAt == nil {
		return Claims{}, invalid("exp claim is required")
	}
	if v.issuer != "" && tc.Issuer != v.issuer {
		return Claims{}, invalid("iss %q is not %q", clip(tc.Issuer), v.issuer)
	}
	if v.audience != "" && !slices.Contains(tc.Audience, v.audience) {
		return Claims{}, invalid("aud does not include %q", v.audience)
	}
	if tc.Subject == "" {
		return Claims{}, invalid("sub claim is required")
	}
	if protocol.ValidateScope("user:"+tc.Subject) != nil {
		return Claims{}, invalid("sub %q is not a valid user id", clip(tc.Subject))
	}
	for i, s := range tc.Spaces {
		if protocol.ValidateScope("space:"+s) != nil {
			return Claims{}, invalid("spaces[%d] %q is not a valid space id", i, clip(s))
		}
	}
	if tc.NotBefore != nil && now.Add(v.leeway).Before(tc.NotBefore.Time) {
		return Claims{}, invalid("token is not valid before %s", tc.NotBefore.UTC().Format(time.RFC3339))
	}
	if !now.Before(tc.ExpiresAt.Add(v.leeway)) {
		return Claims{}, fmt.Errorf("%w at %s", ErrExpired, tc.ExpiresAt.UTC().Format(time.RFC3339))
	}
	c := Claims{
		Subject:    tc.Subject,
		Spaces:     tc.Spaces,
		Device:     tc.Device,
		Roles:      tc.Roles,
		Remember:   tc.Remember,
		ID:         tc.ID,
		ExpiresAt:  tc.ExpiresAt.UTC(),
		ValidUntil: tc.ExpiresAt.Add(v.leeway).UTC(),
	}
	if tc.IssuedAt != nil {
		c.IssuedAt = tc.IssuedAt.UTC()
	}
	return c, nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// clip shortens untrusted text quoted in errors.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
