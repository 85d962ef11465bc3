package mongo

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/syncgate/syncgate/storage"
)

var _ storage.Sessions = (*Store)(nil)

// Device sessions (storage.Sessions). See "Sessions" in doc.go for why
// revocations live in a collection of their own.
const (
	collSessions    = "_sg_sessions"
	collRevocations = "_sg_session_revocations"

	// codeNotImplemented is what FerretDB v1.24 answers to an index with
	// expireAfterSeconds: "Index option expireAfterSeconds is not
	// implemented yet".
	codeNotImplemented = 238

	// defaultSessionSweep is the fallback sweeper's period when
	// Options.SessionSweepEvery is zero.
	defaultSessionSweep = time.Minute

	// revocationMargin is how much longer a revocation is kept than its
	// session's expiry. A resume or refresh that read "not revoked" just
	// before the revocation landed may still extend the session by its
	// TTL (plus the clock skew between nodes); the revocation must outlive
	// that extension, or the session would come back to life.
	revocationMargin = time.Hour
)

// sessionIndexes are created by Open with the store's other indexes.
var sessionIndexes = []indexSpec{
	// ListSessions and the per-user cap.
	{collSessions, "user_created", asc("user", "created"), false},
	// The revocations of a user's sessions (ListSessions, the cap).
	{collRevocations, "user", asc("user"), false},
}

// sessionTTLIndexes expire documents at expiresAt. Open creates them where
// the server supports TTL indexes; otherwise a sweeper deletes instead.
var sessionTTLIndexes = []indexSpec{
	{collSessions, "expires", asc("expiresAt"), false},
	{collRevocations, "expires", asc("expiresAt"), false},
}

// sessionDoc is one document of _sg_sessions. Times are BSON dates:
// sessions need no sub-millisecond order (ties sort by _id), so the store
// keeps millisecond precision (see now). Revocation is not a field here:
// it is a document of _sg_session_revocations.
type sessionDoc struct {
	ID         string        `bson:"_id"`
	User       string        `bson:"user"`
	Device     string        `bson:"device"`
	Node       string        `bson:"node"`
	Platform   string        `bson:"platform"`
	AppVersion string        `bson:"appVersion"`
	Remember   bool          `bson:"remember"`
	TTLMs      int64         `bson:"ttlMs"`
	Created    bson.DateTime `bson:"created"`
	Connected  bson.DateTime `bson:"connected"`
	Seen       bson.DateTime `bson:"seen"`
	Expires    bson.DateTime `bson:"expiresAt"`
}

// revocationDoc marks a session revoked. It is inserted once and never
// updated (a duplicate _id means the session is revoked already).
type revocationDoc struct {
	ID      string        `bson:"_id"` // the session id
	User    string        `bson:"user"`
	At      bson.DateTime `bson:"at"`
	Evicted bool          `bson:"evicted"`
	Expires bson.DateTime `bson:"expiresAt"`
}

func (d sessionDoc) session() storage.Session {
	return storage.Session{
		ID: d.ID, User: d.User, Device: d.Device, Node: d.Node, Platform: d.Platform, AppVersion: d.AppVersion,
		Remember: d.Remember, TTL: time.Duration(d.TTLMs) * time.Millisecond,
		CreatedAt: timeOf(d.Created, 0), ConnectedAt: timeOf(d.Connected, 0), LastSeenAt: timeOf(d.Seen, 0),
		ExpiresAt: timeOf(d.Expires, 0),
	}
}

// revoked applies a revocation to a session.
func revoked(s storage.Session, r revocationDoc) storage.Session {
	s.Revoked, s.RevokedAt, s.Evicted = true, timeOf(r.At, 0), r.Evicted
	return s
}

// sessionState is the Store's session part.
type sessionState struct {
	sessions, revocations *mongo.Collection
	// ttl: the server accepted the TTL indexes. Without them (FerretDB)
	// a sweeper goroutine deletes expired documents.
	ttl    bool
	cancel context.CancelFunc // stops the sweeper; nil if none runs
	done   chan struct{}
}

// openSessions creates the session indexes and, when the server has no TTL
// indexes, starts the sweeper (every `every`; 0: a minute; negative:
// none). Called by Open after the other indexes.
func (s *Store) openSessions(ctx context.Context, every time.Duration) error {
	s.sess.sessions = s.db.Collection(collSessions)
	s.sess.revocations = s.db.Collection(collRevocations)
	for _, ix := range sessionIndexes {
		if err := s.createIndex(ctx, ix.coll, ix.model()); err != nil {
			return fmt.Errorf("create index %s on %s: %w", ix.name, ix.coll, err)
		}
	}
	s.sess.ttl = true
	for _, ix := range sessionTTLIndexes {
		m := ix.model()
		m.Options.SetExpireAfterSeconds(0)
		err := s.createIndex(ctx, ix.coll, m)
		var se mongo.ServerError
		if errors.As(err, &se) && se.HasErrorCode(codeNotImplemented) {
			s.sess.ttl = false
			break
		}
		if err != nil {
			return fmt.Errorf("create TTL index %s on %s: %w", ix.name, ix.coll, err)
		}
	}
	if s.sess.ttl || every < 0 {
		return nil
	}
	if every == 0 {
		every = defaultSessionSweep
	}
	s.log.Info("mongo: the server has no TTL indexes (code 238); a sweeper deletes expired sessions", "every", every)
	sweepCtx, cancel := context.WithCancel(context.Background())
	s.sess.cancel, s.sess.done = cancel, make(chan struct{})
	go func() {
		defer close(s.sess.done)
		storage.SweepEvery(sweepCtx, every, s.log, "expired sessions", func(ctx context.Context) (int, error) {
			return s.SweepSessions(ctx, s.now())
		})
	}()
	return nil
}

// createIndex creates one index (retried like every call).
func (s *Store) createIndex(ctx context.Context, coll string, m mongo.IndexModel) error {
	return s.retry(ctx, func(ctx context.Context) error {
		_, err := s.db.Collection(coll).Indexes().CreateOne(ctx, m)
		return err
	})
}

// stopSessions stops the sweeper, if one runs, and waits for it.
func (s *Store) stopSessions() {
	if s.sess.cancel != nil {
		s.sess.cancel()
		<-s.sess.done
	}
}

// sessionTTL reports whether the server expires sessions itself (a TTL
// index) rather than the sweeper.
func (s *Store) sessionTTL() bool { return s.sess.ttl }

// msNow is the store's clock at millisecond precision, the precision
// sessions are stored with, so that what a call returns equals what a
// later read returns.
func (s *Store) msNow() time.Time { return timeOf(msOf(s.now()), 0) }

func unexpired(now time.Time) bson.D {
	return bson.D{{Key: "$gt", Value: msOf(now)}}
}

// loadSession reads an unexpired session and its revocation, with two
// point reads by _id in parallel.
func (s *Store) loadSession(ctx context.Context, id string, now time.Time) (storage.Session, bool, error) {
	var (
		d                  sessionDoc
		r                  revocationDoc
		found, revokedFlag bool
	)
	err := parallel(
		func() (err error) {
			found, err = s.findOne(ctx, s.sess.sessions, bson.D{{Key: "_id", Value: id}, {Key: "expiresAt", Value: unexpired(now)}}, &d)
			return err
		},
		func() (err error) {
			revokedFlag, err = s.revocation(ctx, id, now, &r)
			return err
		},
	)
	if err != nil || !found {
		return storage.Session{}, false, err
	}
	sess := d.session()
	if revokedFlag {
		sess = revoked(sess, r)
	}
	return sess, true, nil
}

// revocation reads the unexpired revocation of session id into r.
func (s *Store) revocation(ctx context.Context, id string, now time.Time, r *revocationDoc) (bool, error) {
	return s.findOne(ctx, s.sess.revocations, bson.D{{Key: "_id", Value: id}, {Key: "expiresAt", Value: unexpired(now)}}, r)
}

// BeginSession implements storage.Sessions. Without transactions, the
// per-user cap is enforced after the insert: see "Sessions" in doc.go.
func (s *Store) BeginSession(ctx context.Context, spec storage.SessionSpec) (storage.Session, []storage.Session, error) {
	const op = "begin session"
	if err := spec.Validate(); err != nil {
		return storage.Session{}, nil, fmt.Errorf("mongo: %s: %w", op, err)
	}
	if err := s.begin(ctx, op); err != nil {
		return storage.Session{}, nil, err
	}
	now := s.msNow()
	ttl := spec.TTL.Truncate(time.Millisecond)
	if ttl <= 0 {
		ttl = time.Millisecond
	}
	expires := now.Add(ttl)
	if spec.Resume != "" {
		cur, found, err := s.loadSession(ctx, spec.Resume, now)
		if err != nil {
			return storage.Session{}, nil, s.wrap(ctx, op, err)
		}
		if found && cur.User == spec.User && cur.Device == spec.Device {
			if cur.Revoked {
				return cur, nil, s.wrap(ctx, op, storage.ErrSessionRevoked)
			}
			next, ok, err := s.resume(ctx, cur, spec, now, ttl)
			if err != nil || ok {
				return next, nil, s.wrap(ctx, op, err)
			}
			// Expired or swept since the read: begin a new one.
		}
	}
	d := sessionDoc{
		ID: storage.NewSessionID(), User: spec.User, Device: spec.Device, Node: spec.Node,
		Platform: spec.Platform, AppVersion: spec.AppVersion, Remember: spec.Remember, TTLMs: ttl.Milliseconds(),
		Created: msOf(now), Connected: msOf(now), Seen: msOf(now), Expires: msOf(expires),
	}
	err := s.retry(ctx, func(ctx context.Context) error {
		_, err := s.sess.sessions.InsertOne(ctx, &d)
		if mongo.IsDuplicateKeyError(err) {
			return nil // a retry after a lost reply: the id is random, so it is ours
		}
		return err
	})
	if err != nil {
		return storage.Session{}, nil, s.wrap(ctx, op, err)
	}
	out := d.session()
	if spec.MaxPerUser == 0 {
		return out, nil, nil
	}
	evicted, err := s.evictExcess(ctx, spec.User, spec.MaxPerUser, now)
	if err != nil {
		// The session exists; the cap is enforced again by the user's
		// next begin.
		s.log.Warn("mongo: evicting sessions beyond the cap failed", "user", spec.User, "err", err)
		return out, nil, nil
	}
	for _, e := range evicted {
		if e.ID == out.ID {
			out = e // clock skew between nodes: see storage.Sessions
		}
	}
	if len(evicted) > 0 {
		s.log.Debug("sessions evicted", "user", spec.User, "evicted", len(evicted), "max", spec.MaxPerUser)
	}
	return out, evicted, nil
}

// resume refreshes cur for spec. ok is false when cur expired (or was
// swept) since it was read.
func (s *Store) resume(ctx context.Context, cur storage.Session, spec storage.SessionSpec, now time.Time, ttl time.Duration) (storage.Session, bool, error) {
	next := cur
	next.Node, next.Platform, next.AppVersion, next.Remember, next.TTL = spec.Node, spec.Platform, spec.AppVersion, spec.Remember, ttl
	next.ConnectedAt, next.LastSeenAt, next.ExpiresAt = now, now, now.Add(ttl)
	var matched int64
	err := s.retry(ctx, func(ctx context.Context) error {
		res, err := s.sess.sessions.UpdateOne(ctx,
			bson.D{{Key: "_id", Value: cur.ID}, {Key: "expiresAt", Value: unexpired(now)}},
			bson.D{{Key: "$set", Value: bson.D{
				{Key: "node", Value: next.Node}, {Key: "platform", Value: next.Platform},
				{Key: "appVersion", Value: next.AppVersion}, {Key: "remember", Value: next.Remember},
				{Key: "ttlMs", Value: ttl.Milliseconds()}, {Key: "connected", Value: msOf(now)},
				{Key: "seen", Value: msOf(now)}, {Key: "expiresAt", Value: msOf(next.ExpiresAt)},
			}}})
		if err == nil {
			matched = res.MatchedCount
		}
		return err
	})
	if err != nil || matched == 0 {
		return storage.Session{}, false, err
	}
	// A revocation that landed between the read and the update must win:
	// read it again, so that a resume never outlives a revocation it
	// raced with.
	var r revocationDoc
	isRevoked, err := s.revocation(ctx, cur.ID, now, &r)
	if err != nil {
		return storage.Session{}, false, err
	}
	if isRevoked {
		return revoked(next, r), true, storage.ErrSessionRevoked
	}
	return next, true, nil
}

// evictExcess revokes the user's oldest live sessions beyond limit. Every
// caller lists the same (CreatedAt, _id) order, and revoking is an
// idempotent insert, so concurrent calls agree on what to revoke; the
// last caller to list has seen every session inserted before, so the user
// ends with at most limit live sessions without a transaction.
func (s *Store) evictExcess(ctx context.Context, user string, limit int, now time.Time) ([]storage.Session, error) {
	live, err := s.liveSessions(ctx, user, now)
	if err != nil || len(live) <= limit {
		return nil, err
	}
	excess := live[:len(live)-limit]
	docs := make([]any, len(excess))
	out := make([]storage.Session, len(excess))
	for i, e := range excess {
		r := revocationDoc{ID: e.ID, User: e.User, At: msOf(now), Evicted: true, Expires: msOf(revocationExpiry(e, now))}
		docs[i] = r
		out[i] = revoked(e, r)
	}
	if err := s.insertRevocations(ctx, docs); err != nil {
		return nil, err
	}
	return out, nil
}

// revocationExpiry keeps a revocation past any extension of its session
// that raced with it (see revocationMargin).
func revocationExpiry(sess storage.Session, now time.Time) time.Time {
	return maxTime(sess.ExpiresAt, now.Add(sess.TTL)).Add(revocationMargin)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// insertRevocations inserts revocation documents; one that exists already
// (a duplicate _id) is a revocation someone else made, which is as good.
func (s *Store) insertRevocations(ctx context.Context, docs []any) error {
	return s.retry(ctx, func(ctx context.Context) error {
		_, err := s.sess.revocations.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
		var bwe mongo.BulkWriteException
		if errors.As(err, &bwe) && bwe.WriteConcernError == nil {
			for _, we := range bwe.WriteErrors {
				if !isDupCode(we.Code) {
					return err
				}
			}
			return nil
		}
		if mongo.IsDuplicateKeyError(err) {
			return nil
		}
		return err
	})
}

// liveSessions lists the user's unexpired, unrevoked sessions in
// (CreatedAt, ID) order: the sessions and the user's revocations, read in
// parallel.
func (s *Store) liveSessions(ctx context.Context, user string, now time.Time) ([]storage.Session, error) {
	var (
		docs []sessionDoc
		revs []revocationDoc
	)
	filter := bson.D{{Key: "user", Value: user}, {Key: "expiresAt", Value: unexpired(now)}}
	err := parallel(
		func() error {
			return s.retry(ctx, func(ctx context.Context) error {
				cur, err := s.sess.sessions.Find(ctx, filter,
					options.Find().SetSort(bson.D{{Key: "created", Value: 1}, {Key: "_id", Value: 1}}))
				if err != nil {
					return err
				}
				docs = nil
				return cur.All(ctx, &docs)
			})
		},
		func() error {
			return s.retry(ctx, func(ctx context.Context) error {
				cur, err := s.sess.revocations.Find(ctx, filter, options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}}))
				if err != nil {
					return err
				}
				revs = nil
				return cur.All(ctx, &revs)
			})
		},
	)
	if err != nil {
		return nil, err
	}
	gone := make(map[string]struct{}, len(revs))
	for _, r := range revs {
		gone[r.ID] = struct{}{}
	}
	out := make([]storage.Session, 0, len(docs))
	for _, d := range docs {
		if _, ok := gone[d.ID]; !ok {
			out = append(out, d.session())
		}
	}
	return out, nil
}

// TouchSession implements storage.Sessions: the revocation is checked
// first, so a revoked session is not extended (barring the race that
// revocationMargin covers).
func (s *Store) TouchSession(ctx context.Context, id string) (storage.Session, error) {
	const op = "touch session"
	if err := s.begin(ctx, op); err != nil {
		return storage.Session{}, err
	}
	now := s.msNow()
	cur, err := s.liveSession(ctx, op, id, now)
	switch {
	case err != nil:
		return storage.Session{}, err
	case cur.Revoked:
		return cur, s.wrap(ctx, op, storage.ErrSessionRevoked)
	}
	next := cur
	next.LastSeenAt, next.ExpiresAt = now, now.Add(cur.TTL)
	var matched int64
	err = s.retry(ctx, func(ctx context.Context) error {
		res, err := s.sess.sessions.UpdateOne(ctx,
			bson.D{{Key: "_id", Value: id}, {Key: "expiresAt", Value: unexpired(now)}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "seen", Value: msOf(now)}, {Key: "expiresAt", Value: msOf(next.ExpiresAt)}}}})
		if err == nil {
			matched = res.MatchedCount
		}
		return err
	})
	switch {
	case err != nil:
		return storage.Session{}, s.wrap(ctx, op, err)
	case matched == 0:
		return storage.Session{}, s.wrap(ctx, op, storage.ErrNotFound)
	}
	return next, nil
}

// RevokeSession implements storage.Sessions: one insert into
// _sg_session_revocations.
func (s *Store) RevokeSession(ctx context.Context, id string) (storage.Session, error) {
	const op = "revoke session"
	if err := s.begin(ctx, op); err != nil {
		return storage.Session{}, err
	}
	now := s.msNow()
	cur, err := s.liveSession(ctx, op, id, now)
	switch {
	case err != nil:
		return storage.Session{}, err
	case cur.Revoked:
		return cur, nil
	}
	r := revocationDoc{ID: id, User: cur.User, At: msOf(now), Expires: msOf(revocationExpiry(cur, now))}
	if err := s.insertRevocations(ctx, []any{r}); err != nil {
		return storage.Session{}, s.wrap(ctx, op, err)
	}
	// Read it back: a concurrent revocation (or eviction) may have won the
	// insert, and its time and reason are the ones kept.
	var got revocationDoc
	ok, err := s.revocation(ctx, id, now, &got)
	if err != nil {
		return storage.Session{}, s.wrap(ctx, op, err)
	}
	if !ok {
		got = r // swept at this very instant: report our own
	}
	return revoked(cur, got), nil
}

// Session implements storage.Sessions.
func (s *Store) Session(ctx context.Context, id string) (storage.Session, error) {
	const op = "session"
	if err := s.begin(ctx, op); err != nil {
		return storage.Session{}, err
	}
	return s.liveSession(ctx, op, id, s.msNow())
}

// liveSession is loadSession for op, with no session (or an expired one)
// as a wrapped storage.ErrNotFound.
func (s *Store) liveSession(ctx context.Context, op, id string, now time.Time) (storage.Session, error) {
	cur, found, err := s.loadSession(ctx, id, now)
	if err == nil && !found {
		err = storage.ErrNotFound
	}
	if err != nil {
		return storage.Session{}, s.wrap(ctx, op, err)
	}
	return cur, nil
}

// ListSessions implements storage.Sessions.
func (s *Store) ListSessions(ctx context.Context, user string) ([]storage.Session, error) {
	const op = "list sessions"
	if err := s.begin(ctx, op); err != nil {
		return nil, err
	}
	out, err := s.liveSessions(ctx, user, s.msNow())
	if err != nil {
		return nil, s.wrap(ctx, op, err)
	}
	return out, nil
}

// SweepSessions implements storage.Sessions: two DeleteMany, sessions and
// revocations expired at now. It is what the TTL indexes do on a server
// that has them; the sweeper calls it on one that does not.
func (s *Store) SweepSessions(ctx context.Context, now time.Time) (int, error) {
	const op = "sweep sessions"
	if err := s.begin(ctx, op); err != nil {
		return 0, err
	}
	filter := bson.D{{Key: "expiresAt", Value: bson.D{{Key: "$lte", Value: msOf(now)}}}}
	var n int64
	err := parallel(
		func() error {
			return s.retry(ctx, func(ctx context.Context) error {
				res, err := s.sess.sessions.DeleteMany(ctx, filter)
				if err == nil {
					n = res.DeletedCount
				}
				return err
			})
		},
		func() error {
			return s.retry(ctx, func(ctx context.Context) error {
				_, err := s.sess.revocations.DeleteMany(ctx, filter)
				return err
			})
		},
	)
	if err != nil {
		return int(n), s.wrap(ctx, op, err)
	}
	if n > 0 {
		s.log.Debug("swept expired sessions", "removed", n)
	}
	return int(n), nil
}
