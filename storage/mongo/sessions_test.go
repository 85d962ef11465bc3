package mongo

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/syncgate/syncgate/storage"
)

// TestSessionExpiry pins what the server does with the TTL indexes and
// that the store copes either way: MongoDB accepts them (expireAfterSeconds
// 0 on expiresAt) and no sweeper runs; FerretDB v1.24 answers code 238
// (NotImplemented, "Index option expireAfterSeconds is not implemented
// yet") and creates nothing, so the store runs its sweeper, which deletes
// expired sessions and revocations. A second Open on the same database is
// a no-op for the indexes.
func TestSessionExpiry(t *testing.T) {
	ctx := context.Background()
	database := testDatabase(t)
	var (
		mu  sync.Mutex
		now = time.Now().Add(24 * time.Hour).Truncate(time.Second) // ahead of a real TTL monitor
	)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := openDB(t, database, Options{Now: clock, SessionSweepEvery: 20 * time.Millisecond})
	openDB(t, database, Options{SessionSweepEvery: -1}) // indexes again: idempotent

	for _, coll := range []string{collSessions, collRevocations} {
		cur, err := s.Database().Collection(coll).Indexes().List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var specs []bson.M
		if err := cur.All(ctx, &specs); err != nil {
			t.Fatal(err)
		}
		var ttl bson.M
		for _, sp := range specs {
			if sp["name"] == "expires" {
				ttl = sp
			}
		}
		switch {
		case s.sessionTTL() && (ttl == nil || asInt(ttl["expireAfterSeconds"]) != 0):
			t.Errorf("%s: TTL index = %v, want expires with expireAfterSeconds 0", coll, ttl)
		case !s.sessionTTL() && ttl != nil:
			t.Errorf("%s: the server refused TTL, yet lists %v", coll, ttl)
		}
	}
	if s.sessionTTL() {
		if s.sess.cancel != nil {
			t.Error("a sweeper runs although the server has TTL indexes")
		}
		return // MongoDB expires documents itself (within a minute)
	}
	t.Log("the server has no TTL indexes: the sweeper runs")
	_, err := s.Database().Collection("ttl_probe").Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys: bson.D{{Key: "expiresAt", Value: 1}}, Options: options.Index().SetExpireAfterSeconds(0),
	})
	var se mongo.ServerError
	if !errors.As(err, &se) || !se.HasErrorCode(codeNotImplemented) {
		t.Fatalf("a TTL index on a server without them: %v, want code %d", err, codeNotImplemented)
	}
	if s.sess.cancel == nil {
		t.Fatal("no sweeper runs on a server without TTL indexes")
	}

	sess, _, err := s.BeginSession(ctx, storage.SessionSpec{User: "alice", Device: "phone", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeSession(ctx, sess.ID); err != nil {
		t.Fatal(err)
	}
	count := func(coll string) int64 {
		n, err := s.Database().Collection(coll).CountDocuments(ctx, bson.D{})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	time.Sleep(100 * time.Millisecond)
	if count(collSessions) != 1 || count(collRevocations) != 1 {
		t.Fatal("the sweeper deleted an unexpired session or revocation")
	}
	mu.Lock()
	now = now.Add(time.Minute + revocationMargin)
	mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for count(collSessions)+count(collRevocations) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the sweeper did not delete the expired session and revocation")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if s.sess.done != nil {
		select {
		case <-s.sess.done:
		default:
			t.Error("Close did not stop the sweeper")
		}
	}
}

// TestRevokeBeatsConcurrentTouches: FerretDB applies an update as a read
// and a whole-document write, so a refresh racing a revocation would
// undo a revoked flag kept in the session document. The revocation is an
// insert into its own collection instead, and survives any number of
// concurrent refreshes and resumes.
func TestRevokeBeatsConcurrentTouches(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t, nil)
	for round := range 3 {
		spec := storage.SessionSpec{User: "alice", Device: "phone", TTL: time.Hour}
		sess, _, err := s.BeginSession(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		spec.Resume = sess.ID
		var wg sync.WaitGroup
		for i := range 12 {
			wg.Go(func() {
				if i%3 == 0 {
					_, _, _ = s.BeginSession(ctx, spec)
				} else {
					_, _ = s.TouchSession(ctx, sess.ID)
				}
			})
		}
		wg.Go(func() {
			if _, err := s.RevokeSession(ctx, sess.ID); err != nil {
				t.Errorf("RevokeSession: %v", err)
			}
		})
		wg.Wait()
		got, err := s.Session(ctx, sess.ID)
		if err != nil || !got.Revoked {
			t.Fatalf("round %d: Session after revoke raced with refreshes = %+v, %v; want revoked", round, got, err)
		}
		if _, err := s.TouchSession(ctx, sess.ID); !errors.Is(err, storage.ErrSessionRevoked) {
			t.Fatalf("round %d: TouchSession = %v, want ErrSessionRevoked", round, err)
		}
	}
}
