package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// ErrSessionRevoked is returned (wrapped) for a session that was revoked,
// by a person or by eviction: BeginSession asked to resume it, or
// TouchSession refreshed it. Test with errors.Is.
var ErrSessionRevoked = errors.New("storage: session revoked")

// SessionIDBytes is the number of random bytes in a session id; the id is
// their lower-case hex form (64 characters).
const SessionIDBytes = 32

// NewSessionID returns a fresh session id: SessionIDBytes random bytes in
// hex. Stores mint ids with it; ids are capabilities (whoever presents one
// resumes the session, given a token of the same user and device), hence
// crypto/rand.
func NewSessionID() string {
	var b [SessionIDBytes]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// Session is one device session: a device of a user that connected, and
// may resume within the session's TTL. A connection creates a session or
// resumes one, and refreshes it while connected and when it ends.
type Session struct {
	ID         string // SessionIDBytes random bytes, hex
	User       string
	Device     string
	Node       string // the node of the latest connection
	Platform   string // informational, from hello.client
	AppVersion string // informational, from hello.client
	Remember   bool   // the token asked for a long (remember-me) session
	// TTL is how long the session lives after it was last seen: every
	// refresh sets ExpiresAt to LastSeenAt + TTL.
	TTL time.Duration
	// CreatedAt is when the session began; a resume keeps it. Sessions of
	// a user are ordered by (CreatedAt, ID), and the per-user cap evicts
	// the oldest in that order.
	CreatedAt   time.Time
	ConnectedAt time.Time // the latest connection (begin or resume)
	LastSeenAt  time.Time // the latest refresh
	ExpiresAt   time.Time // the session is gone at and after this instant
	// Revoked sessions cannot be resumed or refreshed; they are kept, so
	// that their id is refused rather than replaced, until ExpiresAt.
	Revoked   bool
	RevokedAt time.Time // zero unless Revoked
	Evicted   bool      // revoked by the per-user cap, not by a person
}

// Live reports whether s can be used at now: not revoked and not expired.
func (s Session) Live(now time.Time) bool { return !s.Revoked && now.Before(s.ExpiresAt) }

// SessionSpec asks BeginSession for a session.
type SessionSpec struct {
	// Resume is the id the device presented ("" for none). It is resumed
	// when it names a live session of the same User and Device.
	Resume     string
	User       string // required
	Device     string // required
	Node       string
	Platform   string
	AppVersion string
	Remember   bool
	// TTL is the session's lifetime after each refresh; must be positive.
	TTL time.Duration
	// MaxPerUser caps the user's live sessions (0: no cap). Beginning a
	// new session evicts the oldest ones beyond it.
	MaxPerUser int
}

// Validate reports a spec BeginSession refuses.
func (sp SessionSpec) Validate() error {
	switch {
	case sp.User == "" || sp.Device == "":
		return errors.New("storage: session spec needs a user and a device")
	case sp.TTL <= 0:
		return fmt.Errorf("storage: session TTL must be positive, got %s", sp.TTL)
	case sp.MaxPerUser < 0:
		return fmt.Errorf("storage: session MaxPerUser must not be negative, got %d", sp.MaxPerUser)
	}
	return nil
}

// Sessions stores device sessions. It is separate from Store (the engine
// does not need it); the stores in storage/embedded and storage/mongo
// implement both, and a caller type-asserts the one it opened. Every
// method is goroutine-safe and honours ctx. Times are stamped with the
// store's clock (tests inject one); a store may keep them at millisecond
// precision (MongoDB does).
//
// A session is live while it is not revoked and the store's clock is
// before its ExpiresAt. Expired sessions are invisible to every read at
// once, whether or not a sweep or a TTL index has deleted them yet.
type Sessions interface {
	// BeginSession opens a session for spec. If spec.Resume names a live
	// session of the same user and device, that session is resumed: same
	// ID and CreatedAt; ConnectedAt and LastSeenAt become now, ExpiresAt
	// now + spec.TTL; Node, Platform, AppVersion, Remember and TTL are
	// taken from spec. If it names an unexpired revoked session of the
	// same user and device, BeginSession returns that session and an
	// error matching ErrSessionRevoked. Otherwise (no id, an unknown,
	// expired, or another user's or device's id) it creates a new session
	// with a fresh id (NewSessionID). After creating one, it evicts the
	// user's oldest live sessions (in (CreatedAt, ID) order) beyond
	// spec.MaxPerUser: they are revoked with Evicted set, and returned as
	// evicted so that the caller can disconnect their devices. A store
	// without transactions may, under races or clock skew between nodes,
	// evict the session it just created: the returned session then has
	// Revoked set, and the caller must not use it.
	BeginSession(ctx context.Context, spec SessionSpec) (s Session, evicted []Session, err error)
	// TouchSession refreshes a live session: LastSeenAt becomes now and
	// ExpiresAt now + its TTL. It returns ErrNotFound for an unknown or
	// expired session, and the session with an error matching
	// ErrSessionRevoked for a revoked one (which it does not extend).
	TouchSession(ctx context.Context, id string) (Session, error)
	// RevokeSession revokes an unexpired session and returns it: it can no
	// longer be resumed or refreshed, and is kept until its ExpiresAt.
	// Revoking a revoked session changes nothing (it keeps its first
	// RevokedAt) and returns it. ErrNotFound for an unknown or expired id.
	RevokeSession(ctx context.Context, id string) (Session, error)
	// Session returns an unexpired session, revoked or not, or ErrNotFound.
	Session(ctx context.Context, id string) (Session, error)
	// ListSessions returns the user's live sessions in (CreatedAt, ID)
	// order.
	ListSessions(ctx context.Context, user string) ([]Session, error)
	// SweepSessions deletes every session (revoked or not) whose ExpiresAt
	// is at or before now, and returns how many it deleted. Reads never
	// depend on it; it only reclaims space.
	SweepSessions(ctx context.Context, now time.Time) (int, error)
}
