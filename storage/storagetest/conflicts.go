package storagetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/syncgate/syncgate/storage"
)

// conflictRec builds an open conflict record with every field set except
// the times (which the store stamps when zero).
func conflictRec(scope, id string, dev storage.DeviceRef, mid uint64) storage.ConflictRecord {
	return storage.ConflictRecord{
		ID: id, Scope: scope, Collection: notes, DocID: "n1",
		Base:          1,
		BaseState:     map[string]any{"title": "base", "n": float64(1)},
		Mine:          json.RawMessage(fmt.Sprintf(`{"id":%d,"op":"put","data":{"title":"mine","tags":["x"]}}`, mid)),
		Theirs:        map[string]any{"title": "theirs", "meta": map[string]any{"by": "bob"}, "tags": []any{"a", "b"}},
		TheirsVersion: 3,
		Device:        dev, MutationID: mid,
		Status: storage.ConflictOpen,
	}
}

// conflictAt is conflictRec created at a given time, with a status.
func conflictAt(scope, id string, created time.Time, status storage.ConflictStatus, closed time.Time) storage.ConflictRecord {
	c := conflictRec(scope, id, storage.DeviceRef{User: "alice", Device: "phone"}, 1)
	c.Created, c.Status, c.Closed = created, status, closed
	return c
}

// wantConflict compares records: times with Equal, Mine as JSON values (a
// store may re-encode it), the rest exactly.
func wantConflict(t *testing.T, got, want storage.ConflictRecord) {
	t.Helper()
	if !got.Created.Equal(want.Created) || !got.Closed.Equal(want.Closed) {
		t.Errorf("conflict %s: Created, Closed = %s, %s; want %s, %s", want.ID, got.Created, got.Closed, want.Created, want.Closed)
	}
	var gotMine, wantMine any
	if err := json.Unmarshal(got.Mine, &gotMine); err != nil {
		t.Errorf("conflict %s: Mine %q: %v", want.ID, got.Mine, err)
	}
	_ = json.Unmarshal(want.Mine, &wantMine)
	if !reflect.DeepEqual(gotMine, wantMine) {
		t.Errorf("conflict %s: Mine = %s, want %s", want.ID, got.Mine, want.Mine)
	}
	got.Created, got.Closed, got.Mine = want.Created, want.Closed, want.Mine
	if !reflect.DeepEqual(got, want) {
		t.Errorf("conflict %s:\n got %+v\nwant %+v", want.ID, got, want)
	}
}

func (e *env) conflict(t *testing.T, scope, id string) storage.ConflictRecord {
	t.Helper()
	c, err := e.s.Conflict(context.Background(), scope, id)
	if err != nil {
		t.Fatalf("Conflict(%s, %s): %v", scope, id, err)
	}
	return c
}

func (e *env) wantNoConflict(t *testing.T, scope, id string) {
	t.Helper()
	c, err := e.s.Conflict(context.Background(), scope, id)
	if !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Conflict(%s, %s) = %+v, %v; want ErrNotFound", scope, id, c, err)
	}
}

func (e *env) listConflicts(t *testing.T, scope string, openOnly bool, after string, limit int) []storage.ConflictRecord {
	t.Helper()
	got, err := e.s.ListConflicts(context.Background(), scope, openOnly, after, limit)
	if err != nil {
		t.Fatalf("ListConflicts(%s, %v, %q, %d): %v", scope, openOnly, after, limit, err)
	}
	return got
}

// wantConflictIDs checks ListConflicts, and paging through it by pages of
// 1, 2 and 3, against the IDs wanted in order.
func (e *env) wantConflictIDs(t *testing.T, scope string, openOnly bool, want ...string) {
	t.Helper()
	if got := conflictIDs(e.listConflicts(t, scope, openOnly, "", 100)); !slices.Equal(got, want) {
		t.Errorf("ListConflicts(%s, openOnly %v) = %v, want %v", scope, openOnly, got, want)
	}
	for page := 1; page <= 3; page++ {
		var got []string
		for after, n := "", 0; ; n++ {
			if n > len(want)+1 {
				t.Fatalf("paging ListConflicts(%s) by %d does not end: %v so far", scope, page, got)
			}
			recs := e.listConflicts(t, scope, openOnly, after, page)
			if len(recs) > page {
				t.Fatalf("ListConflicts(limit %d) returned %d records", page, len(recs))
			}
			if len(recs) == 0 {
				break
			}
			got = append(got, conflictIDs(recs)...)
			after = recs[len(recs)-1].ID
		}
		if !slices.Equal(got, want) {
			t.Errorf("ListConflicts(%s, openOnly %v) by pages of %d = %v, want %v", scope, openOnly, page, got, want)
		}
	}
}

func conflictIDs(recs []storage.ConflictRecord) []string {
	out := make([]string, len(recs))
	for i, c := range recs {
		out[i] = c.ID
	}
	return out
}

func conflictsOnly(scope string, recs ...storage.ConflictRecord) *storage.Batch {
	return &storage.Batch{Scope: scope, Conflicts: recs}
}

// conflictReceipt is what the engine stores for a mutation that became a
// conflict.
func conflictReceipt(c storage.ConflictRecord) storage.Receipt {
	return storage.Receipt{
		Device: c.Device, MutationID: c.MutationID, Outcome: storage.Conflict, Code: c.ID,
		Scope: c.Scope, Collection: c.Collection, DocID: c.DocID,
	}
}

// testConflictsOnFullCommit: conflict records follow the receipts' rule:
// written with a full win (or a batch without entries), not at all with a
// partial or lost one.
func testConflictsOnFullCommit(t *testing.T, e *env) {
	ctx := context.Background()
	at := e.clock.Now()

	// A full win writes every record; a zero Created is stamped, a set
	// one kept.
	c1, c2 := conflictRec(scopeA, "c1", e.alice, 2), conflictRec(scopeA, "c2", e.alice, 3)
	c2.Created = epoch().Add(-time.Hour)
	c2.TheirsDeleted, c2.Theirs, c2.BaseState = true, nil, nil
	b := batch(entry(scopeA, 1, "n1", 1, e.alice, 1))
	b.Conflicts = []storage.ConflictRecord{c1, c2}
	b.Receipts = []storage.Receipt{conflictReceipt(c1), conflictReceipt(c2)}
	b.Device, b.LastMutationID = e.alice, 3
	e.commit(t, b)
	c1.Created = at
	wantConflict(t, e.conflict(t, scopeA, "c1"), c1)
	wantConflict(t, e.conflict(t, scopeA, "c2"), c2)
	if r := e.receipt(t, e.alice, 2); r.Outcome != storage.Conflict || r.Code != "c1" {
		t.Errorf("Receipt(2) = %+v, want the conflict outcome", r)
	}

	// A partial win keeps its prefix but writes no record.
	c3 := conflictRec(scopeA, "c3", e.alice, 6)
	b = batch(entry(scopeA, 2, "n2", 1, e.alice, 4), entry(scopeA, 3, "n1", 1, e.alice, 5))
	b.Conflicts, b.Receipts = []storage.ConflictRecord{c3}, []storage.Receipt{conflictReceipt(c3)}
	n, err := e.s.Commit(ctx, b)
	wantCommitErr(t, n, err, 1, &storage.CommitError{Index: 1, Taken: storage.TakenVersion})
	e.wantNoConflict(t, scopeA, "c3")

	// A batch that loses its first entry writes no record.
	b = batch(entry(scopeA, 3, "n1", 1, e.alice, 5))
	b.Conflicts = []storage.ConflictRecord{c3}
	n, err = e.s.Commit(ctx, b)
	wantCommitErr(t, n, err, 0, &storage.CommitError{Index: 0, Taken: storage.TakenVersion})
	e.wantNoConflict(t, scopeA, "c3")
	e.wantConflictIDs(t, scopeA, false, "c2", "c1")

	// A push whose mutations all became conflicts has no entries: its
	// records and receipts are simply written, and the log is untouched.
	b = conflictsOnly(scopeA, c3)
	b.Receipts = []storage.Receipt{conflictReceipt(c3)}
	b.Device, b.LastMutationID = e.alice, 6
	if n, err := e.s.Commit(ctx, b); n != 0 || err != nil {
		t.Fatalf("Commit(conflicts only) = %d, %v; want 0, nil", n, err)
	}
	c3.Created = at
	wantConflict(t, e.conflict(t, scopeA, "c3"), c3)
	if r := e.receipt(t, e.alice, 6); r.Outcome != storage.Conflict {
		t.Errorf("Receipt(6) = %+v, want the conflict outcome", r)
	}
	if st := e.device(t, e.alice); st.LastMutationID != 6 {
		t.Errorf("LastMutationID = %d, want 6", st.LastMutationID)
	}
	if h := e.head(t, scopeA); h != 2 {
		t.Errorf("Head = %d, want 2", h)
	}
	// Records alone do not make a scope with a log.
	e.commit(t, conflictsOnly(scopeB, conflictRec(scopeB, "c1", e.bob, 1)))
	if got, err := e.s.Scopes(ctx, "", 10); err != nil || !slices.Equal(got, []string{scopeA}) {
		t.Errorf("Scopes = %v, %v; want [%s]", got, err, scopeA)
	}
	if h := e.head(t, scopeB); h != 0 {
		t.Errorf("Head(%s) = %d, want 0", scopeB, h)
	}
}

// testConflictRewrite: a record is keyed by (scope, ID); writing it again
// replaces it whole, so a retried commit is idempotent and a status change
// is a rewrite.
func testConflictRewrite(t *testing.T, e *env) {
	ctx := context.Background()
	c := conflictRec(scopeA, "c1", e.alice, 1)
	c.Created = epoch().Add(-time.Hour)
	e.commit(t, conflictsOnly(scopeA, c))
	e.commit(t, conflictsOnly(scopeA, c)) // a retry
	e.wantConflictIDs(t, scopeA, false, "c1")
	e.wantConflictIDs(t, scopeA, true, "c1")
	wantConflict(t, e.conflict(t, scopeA, "c1"), c)

	// The resolving mutation commits an entry and closes the record; a
	// zero Closed is stamped with the store's clock.
	at := e.clock.Advance(time.Minute)
	resolved := c
	resolved.Status = storage.ConflictResolved
	resolved.ResolvedBy = &storage.DeviceMutation{Device: e.alice2, MutationID: 9}
	b := batch(entry(scopeA, 1, "n1", 1, e.alice2, 9))
	b.Conflicts = []storage.ConflictRecord{resolved}
	e.commit(t, b)
	resolved.Closed = at
	wantConflict(t, e.conflict(t, scopeA, "c1"), resolved)
	e.wantConflictIDs(t, scopeA, false, "c1")
	e.wantConflictIDs(t, scopeA, true)
	// Retried, it changes nothing; a Closed the caller set is kept.
	e.clock.Advance(time.Minute)
	e.commit(t, conflictsOnly(scopeA, resolved))
	wantConflict(t, e.conflict(t, scopeA, "c1"), resolved)

	// Replacing is whole: a record can even move in the order (callers
	// keep Created; the store does not).
	e.commit(t, conflictsOnly(scopeA, conflictAt(scopeA, "c0", epoch(), storage.ConflictOpen, time.Time{})))
	e.wantConflictIDs(t, scopeA, false, "c1", "c0")
	moved := resolved
	moved.Created = epoch().Add(time.Hour)
	e.commit(t, conflictsOnly(scopeA, moved))
	e.wantConflictIDs(t, scopeA, false, "c0", "c1")
	wantConflict(t, e.conflict(t, scopeA, "c1"), moved)
	// And reopened, it is listed as open again.
	reopened := c
	e.commit(t, conflictsOnly(scopeA, reopened))
	e.wantConflictIDs(t, scopeA, true, "c1", "c0")
	wantConflict(t, e.conflict(t, scopeA, "c1"), reopened)
	if n, a, err := e.s.AgeConflicts(ctx, time.Time{}, e.clock.Now().Add(time.Hour)); n != 0 || a != 0 || err != nil {
		t.Errorf("AgeConflicts = %d, %d, %v; want nothing to do: both records are open", n, a, err)
	}
}

// testListConflicts: (Created, ID) order, openOnly, paging, and `after`.
func testListConflicts(t *testing.T, e *env) {
	ctx := context.Background()
	t0 := epoch()
	open, resolved, abandoned := storage.ConflictOpen, storage.ConflictResolved, storage.ConflictAbandoned
	e.commit(t, conflictsOnly(scopeA,
		conflictAt(scopeA, "m", t0, open, time.Time{}),
		conflictAt(scopeA, "b", t0.Add(time.Second), open, time.Time{}),
		conflictAt(scopeA, "d", t0.Add(3*time.Second), open, time.Time{}),
	))
	e.commit(t, conflictsOnly(scopeA,
		conflictAt(scopeA, "a", t0.Add(time.Second), resolved, t0.Add(time.Hour)), // same Created as b: ID breaks the tie
		conflictAt(scopeA, "z", t0.Add(-time.Hour), open, time.Time{}),
		conflictAt(scopeA, "c", t0.Add(2*time.Second), abandoned, t0.Add(time.Hour)),
	))
	e.commit(t, conflictsOnly(scopeB,
		conflictAt(scopeB, "a", t0, open, time.Time{}),
		conflictAt(scopeB, "x", t0, open, time.Time{}),
	))

	e.wantConflictIDs(t, scopeA, false, "z", "m", "a", "b", "c", "d")
	e.wantConflictIDs(t, scopeA, true, "z", "m", "b", "d")
	e.wantConflictIDs(t, scopeB, false, "a", "x")
	e.wantConflictIDs(t, "space:none", false)
	e.wantConflictIDs(t, "space:none", true)
	if got := e.listConflicts(t, scopeA, false, "a", 2); !slices.Equal(conflictIDs(got), []string{"b", "c"}) {
		t.Errorf("ListConflicts(after a, 2) = %v, want [b c]", conflictIDs(got))
	}
	// `after` may name a closed record when listing open ones.
	if got := e.listConflicts(t, scopeA, true, "c", 10); !slices.Equal(conflictIDs(got), []string{"d"}) {
		t.Errorf("ListConflicts(open, after c) = %v, want [d]", conflictIDs(got))
	}
	// Records come back whole.
	wantConflict(t, e.listConflicts(t, scopeA, false, "m", 1)[0], conflictAt(scopeA, "a", t0.Add(time.Second), resolved, t0.Add(time.Hour)))

	// A record closed between two pages keeps its place.
	page := e.listConflicts(t, scopeA, true, "", 2)
	if ids := conflictIDs(page); !slices.Equal(ids, []string{"z", "m"}) {
		t.Fatalf("first page = %v, want [z m]", ids)
	}
	closing := page[1]
	closing.Status = resolved
	e.commit(t, conflictsOnly(scopeA, closing))
	if got := e.listConflicts(t, scopeA, true, "m", 2); !slices.Equal(conflictIDs(got), []string{"b", "d"}) {
		t.Errorf("second page after a closed m = %v, want [b d]", conflictIDs(got))
	}

	// An `after` that names no record of the scope is an error, not a
	// silent restart.
	for _, r := range []struct{ scope, after string }{{scopeA, "nope"}, {scopeA, "x"}, {"space:none", "a"}} {
		got, err := e.s.ListConflicts(ctx, r.scope, false, r.after, 10)
		if !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("ListConflicts(%s, after %q) = %v, %v; want ErrNotFound", r.scope, r.after, conflictIDs(got), err)
		}
	}
	if _, err := e.s.ListConflicts(ctx, scopeA, false, "", 0); err == nil {
		t.Error("ListConflicts with limit 0 succeeded")
	}
}

// testConflictNotFound: unknown IDs, and IDs of another scope.
func testConflictNotFound(t *testing.T, e *env) {
	e.wantNoConflict(t, scopeA, "c1")
	e.commit(t, conflictsOnly(scopeA, conflictRec(scopeA, "c1", e.alice, 1)))
	e.conflict(t, scopeA, "c1")
	e.wantNoConflict(t, scopeA, "c2")
	e.wantNoConflict(t, scopeA, "C1")
	e.wantNoConflict(t, scopeB, "c1")
	e.wantNoConflict(t, "", "c1")
}

// testAgeConflicts: open records created before the abandon cutoff become
// abandoned (Closed stamped by the store's clock); closed records closed
// before the delete cutoff go; both cutoffs are exclusive; fresh records
// stay.
func testAgeConflicts(t *testing.T, e *env) {
	ctx := context.Background()
	age := func(e *env, abandonBefore, deleteBefore time.Time, wantAbandoned, wantDeleted int) {
		t.Helper()
		a, d, err := e.s.AgeConflicts(ctx, abandonBefore, deleteBefore)
		if a != wantAbandoned || d != wantDeleted || err != nil {
			t.Fatalf("AgeConflicts = %d, %d, %v; want %d, %d, nil", a, d, err, wantAbandoned, wantDeleted)
		}
	}
	open, resolved, abandoned := storage.ConflictOpen, storage.ConflictResolved, storage.ConflictAbandoned
	t0 := e.clock.Now()
	t2 := t0.Add(2 * time.Hour)
	o1 := conflictAt(scopeA, "o1", t0, open, time.Time{})
	r1 := conflictAt(scopeA, "r1", t0, resolved, t0.Add(time.Hour))
	a1 := conflictAt(scopeA, "a1", t0, abandoned, t0.Add(30*time.Minute))
	o2 := conflictAt(scopeA, "o2", t2, open, time.Time{})
	r2 := conflictAt(scopeA, "r2", t2, resolved, t2)
	b1 := conflictAt(scopeB, "b1", t0, open, time.Time{})
	e.commit(t, conflictsOnly(scopeA, o1, r1, a1, o2, r2))
	e.commit(t, conflictsOnly(scopeB, b1))
	t3 := e.clock.Advance(3 * time.Hour)

	// o2 was created at the abandon cutoff and r1 closed at the delete
	// cutoff: both stay.
	age(e, t2, t0.Add(time.Hour), 2, 1)
	for _, c := range []*storage.ConflictRecord{&o1, &b1} {
		c.Status, c.Closed = abandoned, t3
		wantConflict(t, e.conflict(t, c.Scope, c.ID), *c)
	}
	e.wantNoConflict(t, scopeA, "a1")
	wantConflict(t, e.conflict(t, scopeA, "r1"), r1)
	wantConflict(t, e.conflict(t, scopeA, "o2"), o2)
	e.wantConflictIDs(t, scopeA, true, "o2")
	e.wantConflictIDs(t, scopeA, false, "o1", "r1", "o2", "r2")
	age(e, t2, t0.Add(time.Hour), 0, 0) // idempotent

	// Abandoned records age like resolved ones, from when they closed.
	age(e, t2, t3, 0, 2)
	e.wantConflictIDs(t, scopeA, false, "o1", "o2")
	e.wantConflictIDs(t, scopeB, false, "b1")
	age(e, t2, t3.Add(time.Second), 0, 2)
	e.wantConflictIDs(t, scopeA, false, "o2")
	e.wantConflictIDs(t, scopeB, false)
	e.wantNoConflict(t, scopeB, "b1")
	// A deleted record's ID can be used again.
	e.commit(t, conflictsOnly(scopeB, b1))
	wantConflict(t, e.conflict(t, scopeB, "b1"), b1)

	t.Run("many", func(t *testing.T) {
		e := e.fresh(t)
		const perScope = 9
		scopes := []string{scopeA, scopeB, "space:c"}
		for _, scope := range scopes {
			var recs []storage.ConflictRecord
			for i := range perScope {
				recs = append(recs, conflictRec(scope, fmt.Sprintf("c%02d", i), e.alice, uint64(i+1)))
			}
			e.commit(t, conflictsOnly(scope, recs...))
		}
		t1 := e.clock.Advance(time.Hour)
		age(e, t1, time.Time{}, perScope*len(scopes), 0)
		for _, scope := range scopes {
			e.wantConflictIDs(t, scope, true)
			if got := e.listConflicts(t, scope, false, "", 100); len(got) != perScope || got[0].Status != abandoned || !got[0].Closed.Equal(t1) {
				t.Errorf("ListConflicts(%s) = %d records, first %+v; want %d abandoned at %s", scope, len(got), got[0], perScope, t1)
			}
		}
		age(e, t1, t1.Add(time.Second), 0, perScope*len(scopes))
		for _, scope := range scopes {
			e.wantConflictIDs(t, scope, false)
		}
	})

	// Ageing races with resolutions: whichever lands last, every record
	// ends closed, and none is lost.
	t.Run("concurrent", func(t *testing.T) {
		e := e.fresh(t)
		const n = 40
		var recs []storage.ConflictRecord
		for i := range n {
			recs = append(recs, conflictRec(scopeA, fmt.Sprintf("c%02d", i), e.alice, uint64(i+1)))
		}
		e.commit(t, conflictsOnly(scopeA, recs...))
		cut := e.clock.Advance(time.Hour)
		var wg sync.WaitGroup
		wg.Go(func() {
			for _, c := range recs {
				c.Created = epoch()
				c.Status = resolved
				if _, err := e.s.Commit(ctx, conflictsOnly(scopeA, c)); err != nil {
					t.Error(err)
					return
				}
			}
		})
		for range 3 {
			wg.Go(func() {
				if _, _, err := e.s.AgeConflicts(ctx, cut, time.Time{}); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		e.wantConflictIDs(t, scopeA, true)
		got := e.listConflicts(t, scopeA, false, "", 100)
		if len(got) != n {
			t.Fatalf("%d records after the race, want %d", len(got), n)
		}
		for _, c := range got {
			if c.Status == open || c.Closed.IsZero() {
				t.Errorf("%s is %s (closed %s) after the race", c.ID, c.Status, c.Closed)
			}
		}
	})
}
