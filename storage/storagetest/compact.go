package storagetest

import (
	"context"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/syncgate/syncgate/storage"
)

func (e *env) wantSeqs(t *testing.T, scope string, want ...uint64) {
	t.Helper()
	if got := seqs(e.read(t, scope, 0, math.MaxUint64, 10_000)); !slices.Equal(got, want) {
		t.Errorf("seqs of %s = %v, want %v", scope, got, want)
	}
}

func wantStats(t *testing.T, got, want storage.CompactStats) {
	t.Helper()
	if got != want {
		t.Errorf("Compact = %+v, want %+v", got, want)
	}
}

// testCompactSuperseded: superseded entries go once older than the cutoff;
// a document's latest entry and anything newer than the cutoff stay.
func testCompactSuperseded(t *testing.T, e *env) {
	t0 := e.clock.Now()
	e.commitEach(t, entry(scopeA, 1, "a", 1, e.alice, 1), entry(scopeA, 2, "b", 1, e.alice, 2))
	t1 := e.clock.Advance(time.Hour)
	e.commitEach(t, entry(scopeA, 3, "a", 2, e.alice, 3))
	e.clock.Advance(time.Hour)
	e.commitEach(t, entry(scopeA, 4, "a", 3, e.alice, 4), entry(scopeA, 5, "c", 1, e.alice, 5))

	// Only a v1 is both superseded and older than t0+30m.
	wantStats(t, e.compact(t, scopeA, t0.Add(30*time.Minute)), storage.CompactStats{Removed: 1})
	e.wantSeqs(t, scopeA, 2, 3, 4, 5)
	// The cutoff is exclusive: an entry committed at it stays.
	wantStats(t, e.compact(t, scopeA, t1), storage.CompactStats{})
	e.wantSeqs(t, scopeA, 2, 3, 4, 5)
	wantStats(t, e.compact(t, scopeA, t1.Add(time.Second)), storage.CompactStats{Removed: 1})
	e.wantSeqs(t, scopeA, 2, 4, 5)
	// Idempotent.
	wantStats(t, e.compact(t, scopeA, e.clock.Advance(time.Hour)), storage.CompactStats{})
	e.wantSeqs(t, scopeA, 2, 4, 5)

	if got := e.latest(t, scopeA, "a"); got.Version != 3 || got.Seq != 4 {
		t.Errorf("Latest(a) = v%d seq %d, want v3 seq 4", got.Version, got.Seq)
	}
	if got := e.latest(t, scopeA, "b"); got.Version != 1 || got.Seq != 2 {
		t.Errorf("Latest(b) = v%d seq %d, want v1 seq 2", got.Version, got.Seq)
	}
	if h := e.head(t, scopeA); h != 5 {
		t.Errorf("Head = %d, want 5", h)
	}
	if h := e.horizon(t, scopeA); h != 0 {
		t.Errorf("Horizon = %d, want 0: superseded entries erase nothing", h)
	}
	// The mutation index lost the deleted entries and kept the others.
	e.wantNoReceipt(t, e.alice, 1)
	e.wantNoReceipt(t, e.alice, 3)
	if got := e.receipt(t, e.alice, 2); got.Seq != 2 {
		t.Errorf("Receipt(2) = %+v, want seq 2", got)
	}
	// Compacting one scope leaves another alone.
	e.commitEach(t, entry(scopeB, 1, "a", 1, e.bob, 1), entry(scopeB, 2, "a", 2, e.bob, 2), entry(scopeB, 3, "z", 1, e.bob, 3))
	wantStats(t, e.compact(t, scopeA, e.clock.Advance(time.Hour)), storage.CompactStats{})
	e.wantSeqs(t, scopeB, 1, 2, 3)
}

// testCompactTombstones: a tombstone goes like a superseded entry, and
// raises the horizon, unless it is the scope's head. The purged document
// leaves a marker of its version, and its versions continue above it.
func testCompactTombstones(t *testing.T, e *env) {
	t0 := e.clock.Now()
	e.commitEach(t, entry(scopeA, 1, "a", 1, e.alice, 1), tombstone(scopeA, 2, "a", 2, e.alice, 2))
	e.clock.Advance(time.Hour)

	// The tombstone is the head: it stays however old it is.
	wantStats(t, e.compact(t, scopeA, e.clock.Advance(24*time.Hour)), storage.CompactStats{Removed: 1})
	e.wantSeqs(t, scopeA, 2)
	if got := e.latest(t, scopeA, "a"); !got.Deleted || got.Version != 2 {
		t.Errorf("Latest(a) = %+v, want the v2 tombstone", got)
	}
	if h := e.head(t, scopeA); h != 2 {
		t.Errorf("Head = %d, want 2", h)
	}

	// Once another entry is the head, the old tombstone goes.
	e.commitEach(t, entry(scopeA, 3, "b", 1, e.alice, 3))
	wantStats(t, e.compact(t, scopeA, t0.Add(30*time.Minute)), storage.CompactStats{Removed: 1, Horizon: 2})
	e.wantSeqs(t, scopeA, 3)
	e.wantMarker(t, scopeA, "a", 2)
	if h := e.horizon(t, scopeA); h != 2 {
		t.Errorf("Horizon = %d, want 2", h)
	}
	if h := e.head(t, scopeA); h != 3 {
		t.Errorf("Head = %d, want 3", h)
	}
	e.wantNoReceipt(t, e.alice, 2)

	// The purged document can be created again, continuing its versions:
	// version 1 is taken, version 3 follows the purged tombstone.
	n, err := e.s.Commit(context.Background(), batch(entry(scopeA, 4, "a", 1, e.bob, 1)))
	wantCommitErr(t, n, err, 0, &storage.CommitError{Index: 0, Taken: storage.TakenVersion})
	e.commitEach(t, entry(scopeA, 4, "a", 3, e.bob, 1))
	if got := e.latest(t, scopeA, "a"); got.Version != 3 || got.Seq != 4 {
		t.Errorf("Latest(a) = v%d seq %d, want v3 seq 4", got.Version, got.Seq)
	}

	// A tombstone newer than the cutoff stays; then it goes too.
	cut := e.clock.Advance(time.Hour)
	e.clock.Advance(time.Hour)
	e.commitEach(t,
		entry(scopeA, 5, "c", 1, e.alice, 5),
		tombstone(scopeA, 6, "c", 2, e.alice, 6),
		entry(scopeA, 7, "d", 1, e.alice, 7))
	wantStats(t, e.compact(t, scopeA, cut), storage.CompactStats{Horizon: 2})
	e.wantSeqs(t, scopeA, 3, 4, 5, 6, 7)
	wantStats(t, e.compact(t, scopeA, e.clock.Advance(time.Hour)), storage.CompactStats{Removed: 2, Horizon: 6})
	e.wantSeqs(t, scopeA, 3, 4, 7)
	e.wantMarker(t, scopeA, "c", 2)
	if h := e.horizon(t, scopeA); h != 6 {
		t.Errorf("Horizon = %d, want 6", h)
	}

	// An entry of a purged document is superseded by the purged tombstone:
	// it goes once old enough, even if it was committed after the
	// tombstone (a caller-set Committed); the document continues from
	// version 3 throughout.
	late := e.clock.Now().Add(10 * time.Hour)
	g1 := entry(scopeA, 8, "g", 1, e.alice, 8)
	g1.Committed = late
	e.commitEach(t, g1, tombstone(scopeA, 9, "g", 2, e.alice, 9), entry(scopeA, 10, "h", 1, e.alice, 10))
	wantStats(t, e.compact(t, scopeA, e.clock.Advance(time.Hour)), storage.CompactStats{Removed: 1, Horizon: 9})
	e.wantSeqs(t, scopeA, 3, 4, 7, 8, 10)
	e.wantMarker(t, scopeA, "g", 2)
	wantStats(t, e.compact(t, scopeA, late.Add(time.Second)), storage.CompactStats{Removed: 1, Horizon: 9})
	e.wantSeqs(t, scopeA, 3, 4, 7, 10)
	e.wantMarker(t, scopeA, "g", 2)
	e.commitEach(t, entry(scopeA, 11, "g", 3, e.bob, 2))
	if got := e.latest(t, scopeA, "g"); got.Version != 3 || got.Seq != 11 {
		t.Errorf("Latest(g) = v%d seq %d, want v3 seq 11", got.Version, got.Seq)
	}
}

// testPurgeKeepsVersion: purging a document's tombstone leaves a marker
// of its version in Latest, not in the log; the document's next entry
// continues its versions (anything else is TakenVersion), and Version
// finds only the entries of the new life.
func testPurgeKeepsVersion(t *testing.T, e *env) {
	ctx := context.Background()
	at := e.clock.Now()
	e.commitEach(t, entry(scopeA, 1, "a", 1, e.alice, 1), tombstone(scopeA, 2, "a", 2, e.alice, 2))
	b1 := entry(scopeA, 3, "b", 1, e.alice, 3) // the head, so the tombstone can go
	e.commitEach(t, b1)

	wantStats(t, e.compact(t, scopeA, e.clock.Advance(time.Hour)), storage.CompactStats{Removed: 2, Horizon: 2})
	e.wantMarker(t, scopeA, "a", 2)
	wantEntries(t, e.read(t, scopeA, 0, math.MaxUint64, 100), []storage.Entry{committedAt(b1, at)})
	if h := e.head(t, scopeA); h != 3 {
		t.Errorf("Head = %d, want 3: a marker is no entry", h)
	}
	for _, v := range []uint64{0, 1, 2, 3} {
		e.wantNoVersion(t, scopeA, notes, "a", v)
	}
	e.wantNoDoc(t, scopeB, "a")     // markers belong to their scope
	e.wantNoDoc(t, scopeA, "never") // and to their document
	e.commitEach(t, entry(scopeB, 1, "a", 1, e.bob, 1))
	// Compacting again keeps the marker.
	wantStats(t, e.compact(t, scopeA, e.clock.Advance(time.Hour)), storage.CompactStats{Horizon: 2})
	e.wantMarker(t, scopeA, "a", 2)

	// Only version 3 may follow: 1 and 2 are taken, 4 would skip one. A
	// lost entry leaves the marker as it was.
	for _, v := range []uint64{1, 2, 4} {
		n, err := e.s.Commit(ctx, batch(entry(scopeA, 4, "a", v, e.alice, 4)))
		wantCommitErr(t, n, err, 0, &storage.CommitError{Index: 0, Taken: storage.TakenVersion})
		e.wantMarker(t, scopeA, "a", 2)
	}
	t1 := e.clock.Now()
	a3 := entry(scopeA, 4, "a", 3, e.alice, 4)
	e.commitEach(t, a3)
	wantEntry(t, e.latest(t, scopeA, "a"), committedAt(a3, t1))
	wantEntries(t, e.read(t, scopeA, 0, math.MaxUint64, 100), []storage.Entry{committedAt(b1, at), committedAt(a3, t1)})
	wantEntry(t, e.version(t, scopeA, "a", 3), committedAt(a3, t1))
	e.wantNoVersion(t, scopeA, notes, "a", 1)
	e.wantNoVersion(t, scopeA, notes, "a", 2)
	e.wantNoVersion(t, scopeA, notes, "a", 4)

	// The new life is a document like any other: it grows, is deleted and
	// purged again, and the next marker carries its last version.
	a4, a5 := entry(scopeA, 5, "a", 4, e.alice, 5), tombstone(scopeA, 6, "a", 5, e.alice, 6)
	e.commitEach(t, a4, a5, entry(scopeA, 7, "b", 2, e.alice, 7))
	wantEntry(t, e.version(t, scopeA, "a", 3), committedAt(a3, t1))
	wantEntry(t, e.version(t, scopeA, "a", 5), committedAt(a5, t1))
	wantStats(t, e.compact(t, scopeA, e.clock.Advance(time.Hour)), storage.CompactStats{Removed: 4, Horizon: 6})
	e.wantSeqs(t, scopeA, 7)
	e.wantMarker(t, scopeA, "a", 5)
	for _, v := range []uint64{1, 3, 4, 5} {
		e.wantNoVersion(t, scopeA, notes, "a", v)
	}
	e.commitEach(t, entry(scopeA, 8, "a", 6, e.alice, 8))
	if got := e.version(t, scopeA, "a", 6); got.Seq != 8 {
		t.Errorf("Version(a, 6) = seq %d, want 8", got.Seq)
	}
	e.wantNoVersion(t, scopeA, notes, "a", 5)
}

// testCompactManyEntries compacts more entries than a backend would
// reasonably handle in one step.
func testCompactManyEntries(t *testing.T, e *env) {
	const total, per = 2500, 100
	ids := []string{"x", "y", "z"}
	version := map[string]uint64{}
	for start := 1; start <= total; start += per {
		var entries []storage.Entry
		for seq := start; seq < start+per; seq++ {
			id := ids[seq%len(ids)]
			version[id]++
			entries = append(entries, entry(scopeA, uint64(seq), id, version[id], e.alice, uint64(seq)))
		}
		e.commit(t, batch(entries...))
	}
	e.commitEach(t, entry(scopeA, total+1, "w", 1, e.alice, total+1))

	wantStats(t, e.compact(t, scopeA, e.clock.Advance(time.Hour)), storage.CompactStats{Removed: total - len(ids)})
	e.wantSeqs(t, scopeA, total-2, total-1, total, total+1)
	for _, id := range ids {
		if got := e.latest(t, scopeA, id); got.Version != version[id] {
			t.Errorf("Latest(%s) = v%d, want v%d", id, got.Version, version[id])
		}
	}
	e.wantNoReceipt(t, e.alice, 1)
	e.wantNoReceipt(t, e.alice, total-3)
	if got := e.receipt(t, e.alice, total); got.Seq != total {
		t.Errorf("Receipt(%d) = %+v, want seq %d", total, got, total)
	}
}

func testScopes(t *testing.T, e *env) {
	ctx := context.Background()
	all := []string{"space:a", "space:b", "space:c", "user:alice", "user:bob"}
	for _, scope := range []string{"space:b", "user:alice", "space:a", "user:bob", "space:c"} {
		// The same document in every scope: scopes do not share versions.
		e.commitEach(t, entry(scope, 1, "n1", 1, e.alice, 0))
	}
	// A batch of only receipts creates no scope.
	e.commit(t, &storage.Batch{Scope: "space:zzz", Receipts: []storage.Receipt{rejected(e.alice, 1)}})

	rows := []struct {
		after string
		limit int
		want  []string
	}{
		{"", 100, all},
		{"", 2, all[:2]},
		{"space:b", 2, all[2:4]},
		{"user:alice", 2, all[4:]},
		{"user:bob", 2, nil},
		{"space:aa", 10, all[1:]},
		{"a", 1, all[:1]},
		{"z", 10, nil},
	}
	for _, r := range rows {
		got, err := e.s.Scopes(ctx, r.after, r.limit)
		if err != nil || !slices.Equal(got, r.want) {
			t.Errorf("Scopes(%q, %d) = %v, %v; want %v", r.after, r.limit, got, err, r.want)
		}
	}
	// Paging visits every scope exactly once.
	var paged []string
	for after, pages := "", 0; ; pages++ {
		if pages > len(all) {
			t.Fatalf("paging Scopes does not end: %v so far", paged)
		}
		page, err := e.s.Scopes(ctx, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		paged = append(paged, page...)
		after = page[len(page)-1]
	}
	if !slices.Equal(paged, all) {
		t.Errorf("paged Scopes = %v, want %v", paged, all)
	}
	for _, scope := range all {
		if h := e.head(t, scope); h != 1 {
			t.Errorf("Head(%s) = %d, want 1", scope, h)
		}
		if got := e.latest(t, scope, "n1"); got.Scope != scope || got.Version != 1 {
			t.Errorf("Latest(%s, n1) = %+v, want v1 of that scope", scope, got)
		}
	}
}
