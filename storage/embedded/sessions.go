package embedded

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/syncgate/syncgate/storage"
)

var _ storage.Sessions = (*Store)(nil)

// Session buckets. They are created by the first session write rather
// than by initSchema: they are additive (a file without them simply has
// no sessions), so no schema version or migration is needed, and a
// store that never sees a session never gets them.
const (
	bucketSessions      = "sessions"       // id -> JSON sessionRec
	bucketSessionUsers  = "session-users"  // len|user|created|id -> (empty)
	bucketSessionExpiry = "session-expiry" // expires|id -> (empty)
)

// defaultSessionSweep is the sweeper's period when Options.SessionSweepEvery
// is zero.
const defaultSessionSweep = time.Minute

// sessionRec is the stored form of a storage.Session. Its own type (with
// tags) keeps the file format independent of the Go struct.
type sessionRec struct {
	ID         string        `json:"id"`
	User       string        `json:"user"`
	Device     string        `json:"device"`
	Node       string        `json:"node,omitempty"`
	Platform   string        `json:"platform,omitempty"`
	AppVersion string        `json:"appVersion,omitempty"`
	Remember   bool          `json:"remember,omitempty"`
	TTL        time.Duration `json:"ttl"`
	Created    time.Time     `json:"created"`
	Connected  time.Time     `json:"connected"`
	Seen       time.Time     `json:"seen"`
	Expires    time.Time     `json:"expires"`
	Revoked    bool          `json:"revoked,omitempty"`
	RevokedAt  time.Time     `json:"revokedAt,omitzero"`
	Evicted    bool          `json:"evicted,omitempty"`
}

func recOf(s storage.Session) sessionRec {
	return sessionRec{
		ID: s.ID, User: s.User, Device: s.Device, Node: s.Node, Platform: s.Platform, AppVersion: s.AppVersion,
		Remember: s.Remember, TTL: s.TTL, Created: s.CreatedAt, Connected: s.ConnectedAt, Seen: s.LastSeenAt,
		Expires: s.ExpiresAt, Revoked: s.Revoked, RevokedAt: s.RevokedAt, Evicted: s.Evicted,
	}
}

func (r sessionRec) session() storage.Session {
	return storage.Session{
		ID: r.ID, User: r.User, Device: r.Device, Node: r.Node, Platform: r.Platform, AppVersion: r.AppVersion,
		Remember: r.Remember, TTL: r.TTL, CreatedAt: r.Created, ConnectedAt: r.Connected, LastSeenAt: r.Seen,
		ExpiresAt: r.Expires, Revoked: r.Revoked, RevokedAt: r.RevokedAt, Evicted: r.Evicted,
	}
}

// sessionUserKey orders a user's sessions by (CreatedAt, ID).
func sessionUserKey(s storage.Session) []byte {
	k := appendString(nil, s.User)
	k = append(k, timeKey(s.CreatedAt)...)
	return append(k, s.ID...)
}

// sessionExpiryKey orders every session by ExpiresAt, for the sweep.
func sessionExpiryKey(s storage.Session) []byte {
	return append(timeKey(s.ExpiresAt), s.ID...)
}

// sessionTx is the session buckets of one transaction. In a read
// transaction before the first session write, the buckets are nil and
// every read finds nothing.
type sessionTx struct {
	recs, users, expiry *bolt.Bucket
}

func readSessions(tx *bolt.Tx) sessionTx {
	return sessionTx{
		recs:   tx.Bucket([]byte(bucketSessions)),
		users:  tx.Bucket([]byte(bucketSessionUsers)),
		expiry: tx.Bucket([]byte(bucketSessionExpiry)),
	}
}

func writeSessions(tx *bolt.Tx) (sessionTx, error) {
	var b sessionTx
	var err error
	if b.recs, err = tx.CreateBucketIfNotExists([]byte(bucketSessions)); err != nil {
		return b, err
	}
	if b.users, err = tx.CreateBucketIfNotExists([]byte(bucketSessionUsers)); err != nil {
		return b, err
	}
	b.expiry, err = tx.CreateBucketIfNotExists([]byte(bucketSessionExpiry))
	return b, err
}

// get returns the stored session id, expired or not.
func (b sessionTx) get(id string) (storage.Session, bool, error) {
	if b.recs == nil || id == "" {
		return storage.Session{}, false, nil
	}
	v := b.recs.Get([]byte(id))
	if v == nil {
		return storage.Session{}, false, nil
	}
	var r sessionRec
	if err := json.Unmarshal(v, &r); err != nil {
		return storage.Session{}, false, fmt.Errorf("corrupt session %q: %w", id, err)
	}
	return r.session(), true, nil
}

// put writes s, replacing old (the zero Session for a new one) and moving
// its index keys.
func (b sessionTx) put(old, s storage.Session) error {
	if old.ID != "" {
		if err := b.users.Delete(sessionUserKey(old)); err != nil {
			return err
		}
		if err := b.expiry.Delete(sessionExpiryKey(old)); err != nil {
			return err
		}
	}
	v, err := json.Marshal(recOf(s))
	if err != nil {
		return err
	}
	if err := b.recs.Put([]byte(s.ID), v); err != nil {
		return err
	}
	if err := b.users.Put(sessionUserKey(s), nil); err != nil {
		return err
	}
	return b.expiry.Put(sessionExpiryKey(s), nil)
}

// del removes s and its index keys.
func (b sessionTx) del(s storage.Session) error {
	if err := b.users.Delete(sessionUserKey(s)); err != nil {
		return err
	}
	if err := b.expiry.Delete(sessionExpiryKey(s)); err != nil {
		return err
	}
	return b.recs.Delete([]byte(s.ID))
}

// live returns the user's live sessions at now, in (CreatedAt, ID) order.
// Expired and revoked ones are skipped (they stay until swept).
func (b sessionTx) live(user string, now time.Time) ([]storage.Session, error) {
	if b.users == nil {
		return nil, nil
	}
	prefix := appendString(nil, user)
	var out []storage.Session
	c := b.users.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if len(k) < len(prefix)+timeLen {
			return nil, errors.New("corrupt session-users key")
		}
		id := string(k[len(prefix)+timeLen:])
		s, ok, err := b.get(id)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("session-users names missing session %q", id)
		}
		if s.Live(now) {
			out = append(out, s)
		}
	}
	return out, nil
}

// batch runs fn in a write transaction that bbolt may share with
// concurrent callers (DB.Batch): a reconnect storm begins thousands of
// sessions, and one fsync per session would serialise them. fn may run
// more than once, so it must reset what it reports, and it returns an
// error only for a failure (a refusal such as "revoked" is a result:
// an error makes bbolt rerun the rest of the batch).
func (s *Store) batch(ctx context.Context, op string, fn func(*bolt.Tx) error) error {
	if err := s.begin(ctx, op); err != nil {
		return err
	}
	return s.wrap(op, s.db.Batch(fn))
}

// BeginSession implements storage.Sessions. Everything happens in one
// transaction, so the per-user cap is exact.
func (s *Store) BeginSession(ctx context.Context, spec storage.SessionSpec) (storage.Session, []storage.Session, error) {
	if err := spec.Validate(); err != nil {
		return storage.Session{}, nil, fmt.Errorf("embedded: begin session: %w", err)
	}
	newID := storage.NewSessionID() // outside fn: a rerun must mint the same id
	var (
		out     storage.Session
		evicted []storage.Session
		revoked bool
	)
	err := s.batch(ctx, "begin session", func(tx *bolt.Tx) error {
		out, evicted, revoked = storage.Session{}, nil, false
		now := s.now()
		b, err := writeSessions(tx)
		if err != nil {
			return err
		}
		if cur, ok, err := b.get(spec.Resume); err != nil {
			return err
		} else if ok && cur.User == spec.User && cur.Device == spec.Device && now.Before(cur.ExpiresAt) {
			if cur.Revoked {
				out, revoked = cur, true
				return nil
			}
			next := cur
			next.Node, next.Platform, next.AppVersion = spec.Node, spec.Platform, spec.AppVersion
			next.Remember, next.TTL = spec.Remember, spec.TTL
			next.ConnectedAt, next.LastSeenAt, next.ExpiresAt = now, now, now.Add(spec.TTL)
			out = next
			return b.put(cur, next)
		}
		out = storage.Session{
			ID: newID, User: spec.User, Device: spec.Device, Node: spec.Node,
			Platform: spec.Platform, AppVersion: spec.AppVersion, Remember: spec.Remember, TTL: spec.TTL,
			CreatedAt: now, ConnectedAt: now, LastSeenAt: now, ExpiresAt: now.Add(spec.TTL),
		}
		if err := b.put(storage.Session{}, out); err != nil {
			return err
		}
		if spec.MaxPerUser == 0 {
			return nil
		}
		live, err := b.live(spec.User, now)
		if err != nil {
			return err
		}
		for _, old := range live[:max(0, len(live)-spec.MaxPerUser)] {
			gone := old
			gone.Revoked, gone.RevokedAt, gone.Evicted = true, now, true
			if err := b.put(old, gone); err != nil {
				return err
			}
			evicted = append(evicted, gone)
			if gone.ID == out.ID { // only if the clock went back
				out = gone
			}
		}
		return nil
	})
	if err != nil {
		return storage.Session{}, nil, err
	}
	if revoked {
		return out, nil, fmt.Errorf("embedded: begin session: %w", storage.ErrSessionRevoked)
	}
	if len(evicted) > 0 {
		s.log.Debug("sessions evicted", "user", spec.User, "evicted", len(evicted), "max", spec.MaxPerUser)
	}
	return out, evicted, nil
}

// TouchSession implements storage.Sessions.
func (s *Store) TouchSession(ctx context.Context, id string) (storage.Session, error) {
	const op = "touch session"
	var (
		out          storage.Session
		found, isRev bool
	)
	err := s.batch(ctx, op, func(tx *bolt.Tx) error {
		out, found, isRev = storage.Session{}, false, false
		now := s.now()
		b, err := writeSessions(tx)
		if err != nil {
			return err
		}
		cur, ok, err := b.get(id)
		if err != nil || !ok || !now.Before(cur.ExpiresAt) {
			return err
		}
		found = true
		if cur.Revoked {
			out, isRev = cur, true
			return nil
		}
		next := cur
		next.LastSeenAt, next.ExpiresAt = now, now.Add(cur.TTL)
		out = next
		return b.put(cur, next)
	})
	switch {
	case err != nil:
		return storage.Session{}, err
	case !found:
		return storage.Session{}, fmt.Errorf("embedded: %s: %w", op, storage.ErrNotFound)
	case isRev:
		return out, fmt.Errorf("embedded: %s: %w", op, storage.ErrSessionRevoked)
	}
	return out, nil
}

// RevokeSession implements storage.Sessions.
func (s *Store) RevokeSession(ctx context.Context, id string) (storage.Session, error) {
	const op = "revoke session"
	var (
		out   storage.Session
		found bool
	)
	err := s.batch(ctx, op, func(tx *bolt.Tx) error {
		out, found = storage.Session{}, false
		now := s.now()
		b, err := writeSessions(tx)
		if err != nil {
			return err
		}
		cur, ok, err := b.get(id)
		if err != nil || !ok || !now.Before(cur.ExpiresAt) {
			return err
		}
		found, out = true, cur
		if cur.Revoked {
			return nil
		}
		out.Revoked, out.RevokedAt = true, now
		return b.put(cur, out)
	})
	switch {
	case err != nil:
		return storage.Session{}, err
	case !found:
		return storage.Session{}, fmt.Errorf("embedded: %s: %w", op, storage.ErrNotFound)
	}
	return out, nil
}

// Session implements storage.Sessions.
func (s *Store) Session(ctx context.Context, id string) (storage.Session, error) {
	const op = "session"
	var (
		out   storage.Session
		found bool
	)
	err := s.view(ctx, op, func(tx *bolt.Tx) error {
		cur, ok, err := readSessions(tx).get(id)
		if err != nil || !ok || !s.now().Before(cur.ExpiresAt) {
			return err
		}
		out, found = cur, true
		return nil
	})
	switch {
	case err != nil:
		return storage.Session{}, err
	case !found:
		return storage.Session{}, fmt.Errorf("embedded: %s: %w", op, storage.ErrNotFound)
	}
	return out, nil
}

// ListSessions implements storage.Sessions.
func (s *Store) ListSessions(ctx context.Context, user string) ([]storage.Session, error) {
	var out []storage.Session
	err := s.view(ctx, "list sessions", func(tx *bolt.Tx) error {
		var err error
		out, err = readSessions(tx).live(user, s.now())
		return err
	})
	return out, err
}

// SweepSessions implements storage.Sessions: it walks the expiry index
// from the oldest key, deleting at most one chunk per write transaction
// so that a large sweep never holds up commits for long.
func (s *Store) SweepSessions(ctx context.Context, now time.Time) (int, error) {
	const op = "sweep sessions"
	limit := string(timeKey(now))
	total := 0
	for {
		n, more := 0, false
		err := s.update(ctx, op, func(tx *bolt.Tx) error {
			n, more = 0, false
			b := readSessions(tx)
			if b.expiry == nil {
				return errRollback
			}
			var ids []string
			c := b.expiry.Cursor()
			for k, _ := c.First(); k != nil && len(k) >= timeLen && string(k[:timeLen]) <= limit; k, _ = c.Next() {
				if len(ids) == s.chunk {
					more = true
					break
				}
				ids = append(ids, string(k[timeLen:]))
			}
			// Delete after the scan: a bbolt cursor may skip keys when
			// the bucket changes under it.
			for _, id := range ids {
				cur, ok, err := b.get(id)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("session-expiry names missing session %q", id)
				}
				if err := b.del(cur); err != nil {
					return err
				}
			}
			n = len(ids)
			if n == 0 {
				return errRollback // nothing to write: skip the fsync
			}
			return nil
		})
		if errors.Is(err, errRollback) {
			err = nil
		}
		total += n
		if err != nil {
			return total, err
		}
		if !more {
			break
		}
	}
	if total > 0 {
		s.log.Debug("swept expired sessions", "removed", total)
	}
	return total, nil
}

// sessionSweeper is the background loop that calls SweepSessions.
type sessionSweeper struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// startSessionSweeper runs SweepSessions every `every` (0: one minute;
// negative: never) until stopSessionSweeper.
func (s *Store) startSessionSweeper(every time.Duration) {
	if every < 0 {
		return
	}
	if every == 0 {
		every = defaultSessionSweep
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.sweeper = sessionSweeper{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.sweeper.done)
		storage.SweepEvery(ctx, every, s.log, "expired sessions", func(ctx context.Context) (int, error) {
			return s.SweepSessions(ctx, s.now())
		})
	}()
}

// stopSessionSweeper stops the loop and waits for a sweep in flight.
func (s *Store) stopSessionSweeper() {
	if s.sweeper.cancel == nil {
		return
	}
	s.sweeper.cancel()
	<-s.sweeper.done
}
