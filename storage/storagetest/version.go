package storagetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/syncgate/syncgate/storage"
)

func (e *env) version(t *testing.T, scope, id string, version uint64) storage.Entry {
	t.Helper()
	got, err := e.s.Version(context.Background(), scope, notes, id, version)
	if err != nil {
		t.Fatalf("Version(%s, %s, v%d): %v", scope, id, version, err)
	}
	return got
}

func (e *env) wantNoVersion(t *testing.T, scope, collection, id string, version uint64) {
	t.Helper()
	got, err := e.s.Version(context.Background(), scope, collection, id, version)
	if !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Version(%s, %s/%s, v%d) = seq %d, %v; want ErrNotFound", scope, collection, id, version, got.Seq, err)
	}
}

// testVersion: Version finds the entry of each committed version, nothing
// for versions that were never committed (including a lost batch's), and
// nothing once compaction removed the entry.
func testVersion(t *testing.T, e *env) {
	t0 := e.clock.Now()
	a1, b1 := entry(scopeA, 1, "a", 1, e.alice, 1), entry(scopeA, 2, "b", 1, e.alice, 2)
	e.commit(t, batch(a1, b1))
	t1 := e.clock.Advance(time.Hour)
	a2, a3, b2 := entry(scopeA, 3, "a", 2, e.alice, 3), tombstone(scopeA, 4, "a", 3, e.alice, 4), entry(scopeA, 5, "b", 2, e.alice, 5)
	e.commitEach(t, a2, a3, b2)

	wantEntry(t, e.version(t, scopeA, "a", 1), committedAt(a1, t0))
	wantEntry(t, e.version(t, scopeA, "a", 2), committedAt(a2, t1))
	wantEntry(t, e.version(t, scopeA, "a", 3), committedAt(a3, t1)) // a tombstone is a version too
	wantEntry(t, e.version(t, scopeA, "b", 1), committedAt(b1, t0))
	wantEntry(t, e.version(t, scopeA, "b", 2), committedAt(b2, t1))

	// Unknown versions, documents, collections and scopes.
	e.wantNoVersion(t, scopeA, notes, "a", 0)
	e.wantNoVersion(t, scopeA, notes, "a", 4)
	e.wantNoVersion(t, scopeA, notes, "c", 1)
	e.wantNoVersion(t, scopeA, "other", "a", 1)
	e.wantNoVersion(t, scopeB, notes, "a", 1)

	// A partial win: the committed prefix is found, the rest is not.
	c1, d1 := entry(scopeA, 6, "c", 1, e.alice, 6), entry(scopeA, 8, "d", 1, e.alice, 8)
	n, err := e.s.Commit(context.Background(), batch(c1, entry(scopeA, 7, "b", 2, e.alice, 7), d1))
	wantCommitErr(t, n, err, 1, &storage.CommitError{Index: 1, Taken: storage.TakenVersion})
	wantEntry(t, e.version(t, scopeA, "c", 1), committedAt(c1, t1))
	e.wantNoVersion(t, scopeA, notes, "d", 1)
	e.wantNoVersion(t, scopeA, notes, "b", 3)

	// Compaction removes a1 and b1 (superseded before t0+30m) ...
	wantStats(t, e.compact(t, scopeA, t0.Add(30*time.Minute)), storage.CompactStats{Removed: 2})
	e.wantNoVersion(t, scopeA, notes, "a", 1)
	e.wantNoVersion(t, scopeA, notes, "b", 1)
	wantEntry(t, e.version(t, scopeA, "a", 2), committedAt(a2, t1))
	wantEntry(t, e.version(t, scopeA, "b", 2), committedAt(b2, t1))
	// ... then a2 and the purged tombstone a3.
	wantStats(t, e.compact(t, scopeA, e.clock.Advance(time.Hour)), storage.CompactStats{Removed: 2, Horizon: 4})
	e.wantNoVersion(t, scopeA, notes, "a", 2)
	e.wantNoVersion(t, scopeA, notes, "a", 3)
	wantEntry(t, e.version(t, scopeA, "b", 2), committedAt(b2, t1))

	// The purged document continues from its purged version; Version
	// finds its new life and none of the old one.
	e.wantMarker(t, scopeA, "a", 3)
	n, err = e.s.Commit(context.Background(), batch(entry(scopeA, 7, "a", 1, e.bob, 1)))
	wantCommitErr(t, n, err, 0, &storage.CommitError{Index: 0, Taken: storage.TakenVersion})
	t3 := e.clock.Now()
	again := entry(scopeA, 7, "a", 4, e.bob, 1)
	e.commitEach(t, again)
	wantEntry(t, e.version(t, scopeA, "a", 4), committedAt(again, t3))
	for _, v := range []uint64{1, 2, 3, 5} {
		e.wantNoVersion(t, scopeA, notes, "a", v)
	}
}
