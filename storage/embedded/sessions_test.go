package embedded

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/syncgate/syncgate/storage"
)

// openSessionsChecked opens a store without a sweeper (the suite sweeps)
// and checks the session buckets agree with each other when t ends.
func openSessionsChecked(t *testing.T, now func() time.Time) *Store {
	t.Helper()
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "syncgate.db"), Options{Now: now, SessionSweepEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		checkSessionLayout(t, s)
		_ = s.Close(context.Background())
	})
	return s
}

// checkSessionLayout verifies that every session has exactly its
// session-users and session-expiry keys, and that no index key is left
// without its session.
func checkSessionLayout(t *testing.T, s *Store) {
	t.Helper()
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := readSessions(tx)
		if b.recs == nil {
			return nil
		}
		users, expiry := map[string]bool{}, map[string]bool{}
		if err := b.recs.ForEach(func(k, _ []byte) error {
			sess, ok, err := b.get(string(k))
			if err != nil || !ok {
				t.Errorf("session %q: %v", k, err)
				return nil
			}
			users[string(sessionUserKey(sess))] = true
			expiry[string(sessionExpiryKey(sess))] = true
			return nil
		}); err != nil {
			return err
		}
		for name, want := range map[*bbolt.Bucket]map[string]bool{b.users: users, b.expiry: expiry} {
			n := 0
			if err := name.ForEach(func(k, _ []byte) error {
				n++
				if !want[string(k)] {
					t.Errorf("index key %x has no session", k)
				}
				return nil
			}); err != nil {
				return err
			}
			if n != len(want) {
				t.Errorf("index has %d keys, want %d (one per session)", n, len(want))
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("checkSessionLayout: %v", err)
	}
}

// TestSessionSweeper: the store's own sweeper deletes expired sessions
// from the file (reads hide them before that), and stops with Close.
func TestSessionSweeper(t *testing.T) {
	var (
		mu  sync.Mutex
		now = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "syncgate.db"), Options{Now: clock, SessionSweepEvery: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	sess, _, err := s.BeginSession(t.Context(), storage.SessionSpec{User: "alice", Device: "phone", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	stored := func() bool {
		var ok bool
		_ = s.db.View(func(tx *bbolt.Tx) error {
			_, ok, _ = readSessions(tx).get(sess.ID)
			return nil
		})
		return ok
	}
	time.Sleep(50 * time.Millisecond)
	if !stored() {
		t.Fatal("the sweeper deleted a live session")
	}
	mu.Lock()
	now = now.Add(time.Minute)
	mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for stored() {
		if time.Now().After(deadline) {
			t.Fatal("the sweeper did not delete the expired session")
		}
		time.Sleep(5 * time.Millisecond)
	}
	checkSessionLayout(t, s)
}

// TestSessionsSurviveReopen: sessions are in the file, and a file written
// before sessions existed (no session buckets) reads as having none.
func TestSessionsSurviveReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "syncgate.db")
	s, err := Open(ctx, path, Options{SessionSweepEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	if list, err := s.ListSessions(ctx, "alice"); err != nil || len(list) != 0 {
		t.Fatalf("ListSessions on a file without session buckets = %v, %v", list, err)
	}
	if _, err := s.TouchSession(ctx, "x"); err == nil {
		t.Fatal("TouchSession(unknown) succeeded")
	}
	if n, err := s.SweepSessions(ctx, time.Now()); err != nil || n != 0 {
		t.Fatalf("SweepSessions on a file without session buckets = %d, %v", n, err)
	}
	sess, _, err := s.BeginSession(ctx, storage.SessionSpec{User: "alice", Device: "phone", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	s, err = Open(ctx, path, Options{SessionSweepEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	got, err := s.Session(ctx, sess.ID)
	if err != nil || got.ID != sess.ID || !got.CreatedAt.Equal(sess.CreatedAt) || got.User != "alice" {
		t.Fatalf("Session after reopen = %+v, %v", got, err)
	}
}
