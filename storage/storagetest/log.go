package storagetest

import (
	"context"
	"errors"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/syncgate/syncgate/storage"
)

func testEmptyScope(t *testing.T, e *env) {
	ctx := context.Background()
	if h := e.head(t, scopeA); h != 0 {
		t.Errorf("Head = %d, want 0", h)
	}
	if h := e.horizon(t, scopeA); h != 0 {
		t.Errorf("Horizon = %d, want 0", h)
	}
	e.wantNoDoc(t, scopeA, "n1")
	if got := e.read(t, scopeA, 0, math.MaxUint64, 100); len(got) != 0 {
		t.Errorf("Read = %v, want none", seqs(got))
	}
	if got, err := e.s.Scopes(ctx, "", 100); err != nil || len(got) != 0 {
		t.Errorf("Scopes = %v, %v; want none", got, err)
	}
	e.wantNoReceipt(t, e.alice, 1)
	if st := e.device(t, e.alice); st.LastMutationID != 0 || len(st.Checkpoints) != 0 || !st.LastSeen.IsZero() {
		t.Errorf("Device = %+v, want a zero state", st)
	}
	if st := e.compact(t, scopeA, e.clock.Now().Add(time.Hour)); st != (storage.CompactStats{}) {
		t.Errorf("Compact = %+v, want zero", st)
	}
	if n, err := e.s.ExpireReceipts(ctx, e.clock.Now().Add(time.Hour)); n != 0 || err != nil {
		t.Errorf("ExpireReceipts = %d, %v; want 0, nil", n, err)
	}
	e.wantNoVersion(t, scopeA, notes, "n1", 1)
	e.wantNoConflict(t, scopeA, "c1")
	if got := e.listConflicts(t, scopeA, false, "", 10); len(got) != 0 {
		t.Errorf("ListConflicts = %v, want none", conflictIDs(got))
	}
	if a, d, err := e.s.AgeConflicts(ctx, e.clock.Now().Add(time.Hour), e.clock.Now().Add(time.Hour)); a != 0 || d != 0 || err != nil {
		t.Errorf("AgeConflicts = %d, %d, %v; want 0, 0, nil", a, d, err)
	}
}

func testCommitSingle(t *testing.T, e *env) {
	first := entry(scopeA, 1, "n1", 1, e.alice, 1)
	at := e.clock.Now()
	e.commit(t, batch(first))

	if h := e.head(t, scopeA); h != 1 {
		t.Fatalf("Head = %d, want 1", h)
	}
	// A zero Committed is stamped with the store's clock.
	wantEntry(t, e.latest(t, scopeA, "n1"), committedAt(first, at))
	wantEntries(t, e.read(t, scopeA, 0, 1, 10), []storage.Entry{committedAt(first, at)})

	// A Committed the caller set is kept.
	e.clock.Advance(time.Minute)
	second := entry(scopeA, 2, "n1", 2, e.alice, 2)
	second.Committed = epoch().Add(-time.Hour)
	e.commit(t, batch(second))
	wantEntry(t, e.latest(t, scopeA, "n1"), second)
	wantEntries(t, e.read(t, scopeA, 0, math.MaxUint64, 10), []storage.Entry{committedAt(first, at), second})

	// Other scopes are untouched.
	if h := e.head(t, scopeB); h != 0 {
		t.Errorf("Head(%s) = %d, want 0", scopeB, h)
	}
	e.wantNoDoc(t, scopeB, "n1")
}

func testCommitBatch(t *testing.T, e *env) {
	at := e.clock.Now()
	first := []storage.Entry{
		entry(scopeA, 1, "n1", 1, e.alice, 1),
		entry(scopeA, 2, "n2", 1, e.alice, 2),
		entry(scopeA, 3, "n1", 2, e.alice, 3),
		tombstone(scopeA, 4, "n1", 3, e.alice, 4),
		entry(scopeA, 5, "n3", 1, e.alice, 5),
	}
	e.commit(t, batch(first...))
	if h := e.head(t, scopeA); h != 5 {
		t.Fatalf("Head = %d, want 5", h)
	}
	want := make([]storage.Entry, len(first))
	for i, en := range first {
		want[i] = committedAt(en, at)
	}
	wantEntries(t, e.read(t, scopeA, 0, math.MaxUint64, 100), want)
	wantEntry(t, e.latest(t, scopeA, "n1"), want[3])
	wantEntry(t, e.latest(t, scopeA, "n2"), want[1])
	wantEntry(t, e.latest(t, scopeA, "n3"), want[4])

	// A tombstone is a version like any other: the next put continues it.
	second := []storage.Entry{
		entry(scopeA, 6, "n1", 4, e.bob, 1),
		entry(scopeA, 7, "n2", 2, e.bob, 2),
	}
	e.commit(t, batch(second...))
	if h := e.head(t, scopeA); h != 7 {
		t.Fatalf("Head = %d, want 7", h)
	}
	wantEntry(t, e.latest(t, scopeA, "n1"), committedAt(second[0], at))
	wantEntry(t, e.latest(t, scopeA, "n2"), committedAt(second[1], at))
	if got := seqs(e.read(t, scopeA, 0, math.MaxUint64, 100)); len(got) != 7 {
		t.Errorf("Read seqs = %v, want 1..7", got)
	}
}

// testCommitTaken checks every uniqueness guard, the partial win, and that
// receipts and LastMutationID wait for a whole batch.
func testCommitTaken(t *testing.T, e *env) {
	type row struct {
		name    string
		entries func(e *env) []storage.Entry
		wantN   int
		want    *storage.CommitError // nil: the whole batch commits
	}
	ce := func(i int, taken storage.Taken) *storage.CommitError {
		return &storage.CommitError{Index: i, Taken: taken}
	}
	rows := []row{
		{"seq of the head", func(e *env) []storage.Entry {
			return []storage.Entry{entry(scopeA, 3, "n3", 1, e.alice, 10)}
		}, 0, ce(0, storage.TakenSeq)},
		{"seq from a stale head", func(e *env) []storage.Entry {
			return []storage.Entry{entry(scopeA, 1, "n3", 1, e.alice, 10), entry(scopeA, 2, "n4", 1, e.alice, 11)}
		}, 0, ce(0, storage.TakenSeq)},
		{"stale version first", func(e *env) []storage.Entry {
			return []storage.Entry{entry(scopeA, 4, "n1", 2, e.alice, 10)}
		}, 0, ce(0, storage.TakenVersion)},
		{"new doc as version 1 of a taken doc", func(e *env) []storage.Entry {
			return []storage.Entry{entry(scopeA, 4, "n3", 1, e.alice, 10), entry(scopeA, 5, "n2", 1, e.alice, 11)}
		}, 1, ce(1, storage.TakenVersion)},
		{"same version twice in the batch", func(e *env) []storage.Entry {
			return []storage.Entry{entry(scopeA, 4, "n3", 1, e.alice, 10), entry(scopeA, 5, "n3", 1, e.alice, 11)}
		}, 1, ce(1, storage.TakenVersion)},
		{"mutation already committed", func(e *env) []storage.Entry {
			return []storage.Entry{
				entry(scopeA, 4, "n3", 1, e.alice, 10),
				entry(scopeA, 5, "n4", 1, e.alice, 11),
				entry(scopeA, 6, "n5", 1, e.alice, 2),
			}
		}, 2, ce(2, storage.TakenMutation)},
		{"mutation twice in the batch", func(e *env) []storage.Entry {
			return []storage.Entry{entry(scopeA, 4, "n3", 1, e.alice, 10), entry(scopeA, 5, "n4", 1, e.alice, 10)}
		}, 1, ce(1, storage.TakenMutation)},
		{"mutation taken in another scope", func(e *env) []storage.Entry {
			return []storage.Entry{entry(scopeB, 1, "n1", 1, e.alice, 3)}
		}, 0, ce(0, storage.TakenMutation)},
		{"replay of a committed entry", func(e *env) []storage.Entry {
			return []storage.Entry{entry(scopeA, 3, "n2", 1, e.alice, 3)}
		}, 0, ce(0, "")}, // several guards fire; any may be reported
		{"same mutation id from another device", func(e *env) []storage.Entry {
			return []storage.Entry{entry(scopeA, 4, "n3", 1, e.alice2, 2), entry(scopeA, 5, "n1", 3, e.bob, 3)}
		}, 2, nil},
		{"entries without a mutation id", func(e *env) []storage.Entry {
			return []storage.Entry{entry(scopeA, 4, "n3", 1, e.alice, 0), entry(scopeA, 5, "n4", 1, e.alice, 0)}
		}, 2, nil},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			e := e.fresh(t)
			// Setup: n1 at version 2, n2 at version 1; alice's mutations 1..3.
			setup := batch(
				entry(scopeA, 1, "n1", 1, e.alice, 1),
				entry(scopeA, 2, "n1", 2, e.alice, 2),
				entry(scopeA, 3, "n2", 1, e.alice, 3),
			)
			setup.Device, setup.LastMutationID = e.alice, 3
			e.commit(t, setup)

			entries := r.entries(e)
			b := batch(entries...)
			for _, en := range entries {
				if en.MutationID != 0 {
					b.Receipts = append(b.Receipts, receiptFor(en))
				}
			}
			b.Receipts = append(b.Receipts, rejected(e.alice, 99))
			b.Device, b.LastMutationID = e.alice, 99
			scope := b.Scope
			before := e.head(t, scope)
			before1, before2 := e.latestVersions(t, scope)

			n, err := e.s.Commit(context.Background(), b)
			wantCommitErr(t, n, err, r.wantN, r.want)

			if h := e.head(t, scope); h != before+uint64(r.wantN) {
				t.Errorf("Head = %d, want %d", h, before+uint64(r.wantN))
			}
			// The committed prefix is readable; the rest left no trace.
			got := e.read(t, scope, before, math.MaxUint64, 100)
			if len(got) != r.wantN {
				t.Fatalf("Read after head %d = %v, want %d entries", before, seqs(got), r.wantN)
			}
			for i := range got {
				wantEntry(t, got[i], committedAt(entries[i], got[i].Committed))
			}
			after1, after2 := e.latestVersions(t, scope)
			if r.want != nil && r.wantN == 0 && (after1 != before1 || after2 != before2) {
				t.Errorf("versions of n1, n2 moved from %d, %d to %d, %d", before1, before2, after1, after2)
			}

			// Progress is written only with a full win.
			if r.want == nil {
				if got := e.receipt(t, e.alice, 99); got.Outcome != storage.Rejected {
					t.Errorf("Receipt(99) = %+v, want the stored rejection", got)
				}
				if st := e.device(t, e.alice); st.LastMutationID != 99 {
					t.Errorf("LastMutationID = %d, want 99", st.LastMutationID)
				}
				return
			}
			e.wantNoReceipt(t, e.alice, 99)
			// The batch's progress is not written, but the mark still
			// covers every mutation of alice that now has a log entry.
			wantMark := uint64(3)
			for _, en := range entries[:r.wantN] {
				if en.Device == e.alice {
					wantMark = max(wantMark, en.MutationID)
				}
			}
			if st := e.device(t, e.alice); st.LastMutationID != wantMark {
				t.Errorf("LastMutationID = %d, want %d (3, or the highest committed mutation of alice)", st.LastMutationID, wantMark)
			}
			// The prefix's mutations are answered from the log instead.
			for _, en := range entries[:r.wantN] {
				if en.MutationID == 0 {
					continue
				}
				if got := e.receipt(t, en.Device, en.MutationID); got.Outcome != storage.Applied || got.Seq != en.Seq {
					t.Errorf("Receipt(%s, %d) = %+v, want Applied at seq %d rebuilt from the log", en.Device, en.MutationID, got, en.Seq)
				}
			}
		})
	}
}

// latestVersions returns the versions of n1 and n2 in scope, 0 if absent.
func (e *env) latestVersions(t *testing.T, scope string) (uint64, uint64) {
	t.Helper()
	v := func(id string) uint64 {
		got, err := e.s.Latest(context.Background(), scope, notes, id)
		if errors.Is(err, storage.ErrNotFound) {
			return 0
		}
		if err != nil {
			t.Fatalf("Latest(%s): %v", id, err)
		}
		return got.Version
	}
	return v("n1"), v("n2")
}

// testCommitInvalid: malformed batches are programmer errors, refused
// whole, never mistaken for a lost race.
func testCommitInvalid(t *testing.T, e *env) {
	e.commit(t, batch(entry(scopeA, 1, "n1", 1, e.alice, 1), entry(scopeA, 2, "n2", 1, e.alice, 2)))
	good := entry(scopeA, 3, "n3", 1, e.alice, 3)
	badConflict := func(edit func(*storage.ConflictRecord)) []storage.ConflictRecord {
		c := conflictRec(scopeA, "bad", e.alice, 4)
		edit(&c)
		return []storage.ConflictRecord{c}
	}
	rows := []struct {
		name      string
		entries   []storage.Entry
		conflicts []storage.ConflictRecord
	}{
		{"entry of another scope", []storage.Entry{entry(scopeA, 3, "n3", 1, e.alice, 3), entry(scopeB, 4, "n4", 1, e.alice, 4)}, nil},
		{"seqs not contiguous", []storage.Entry{entry(scopeA, 3, "n3", 1, e.alice, 3), entry(scopeA, 5, "n4", 1, e.alice, 4)}, nil},
		{"seqs out of order", []storage.Entry{entry(scopeA, 4, "n3", 1, e.alice, 3), entry(scopeA, 3, "n4", 1, e.alice, 4)}, nil},
		{"seq past head+1 (a gap)", []storage.Entry{entry(scopeA, 4, "n3", 1, e.alice, 3)}, nil},
		{"conflict of another scope", []storage.Entry{good}, badConflict(func(c *storage.ConflictRecord) { c.Scope = scopeB })},
		{"conflict without id", []storage.Entry{good}, badConflict(func(c *storage.ConflictRecord) { c.ID = "" })},
		{"conflict with an unknown status", []storage.Entry{good}, badConflict(func(c *storage.ConflictRecord) { c.Status = "pending" })},
		{"open conflict with Closed set", []storage.Entry{good}, badConflict(func(c *storage.ConflictRecord) { c.Closed = epoch() })},
		{"conflict without entries, of another scope", nil, badConflict(func(c *storage.ConflictRecord) { c.Scope = scopeB })},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			b := batch(r.entries...)
			if b.Conflicts = r.conflicts; len(r.entries) == 0 {
				b.Scope = scopeA
			}
			n, err := e.s.Commit(context.Background(), b)
			var ce *storage.CommitError
			if err == nil || errors.As(err, &ce) || n != 0 {
				t.Fatalf("Commit = %d, %v; want 0 and a plain error", n, err)
			}
			if h := e.head(t, scopeA); h != 2 {
				t.Errorf("Head = %d, want 2 (nothing committed)", h)
			}
			if h := e.head(t, scopeB); h != 0 {
				t.Errorf("Head(%s) = %d, want 0", scopeB, h)
			}
			e.wantNoConflict(t, scopeA, "bad")
			e.wantNoConflict(t, scopeB, "bad")
		})
	}
}

func testProgressOnlyOnFullCommit(t *testing.T, e *env) {
	ctx := context.Background()
	at := e.clock.Now()

	// A full win stores every receipt, as given, and advances the device.
	e1, e2 := entry(scopeA, 1, "n1", 1, e.alice, 1), entry(scopeA, 2, "n2", 1, e.alice, 3)
	b := batch(e1, e2)
	r1, r3 := receiptFor(e1), receiptFor(e2)
	r2 := rejected(e.alice, 2)
	r2.Created = epoch().Add(-time.Minute) // a Created the caller set is kept
	b.Receipts = []storage.Receipt{r1, r2, r3}
	b.Device, b.LastMutationID = e.alice, 3
	e.commit(t, b)
	r1.Created, r3.Created = at, at
	wantReceipt(t, e.receipt(t, e.alice, 1), r1)
	wantReceipt(t, e.receipt(t, e.alice, 2), r2)
	wantReceipt(t, e.receipt(t, e.alice, 3), r3)
	if st := e.device(t, e.alice); st.LastMutationID != 3 {
		t.Errorf("LastMutationID = %d, want 3", st.LastMutationID)
	}

	// A batch of only rejected mutations has no entries but is still a win.
	b = &storage.Batch{Scope: scopeA, Receipts: []storage.Receipt{rejected(e.alice, 4), rejected(e.alice, 5)}, Device: e.alice, LastMutationID: 5}
	if n, err := e.s.Commit(ctx, b); n != 0 || err != nil {
		t.Fatalf("Commit(receipts only) = %d, %v; want 0, nil", n, err)
	}
	if got := e.receipt(t, e.alice, 5); got.Outcome != storage.Rejected || got.Code != "invalid" {
		t.Errorf("Receipt(5) = %+v, want the stored rejection", got)
	}
	if st := e.device(t, e.alice); st.LastMutationID != 5 {
		t.Errorf("LastMutationID = %d, want 5", st.LastMutationID)
	}
	if h := e.head(t, scopeA); h != 2 {
		t.Errorf("Head = %d, want 2", h)
	}

	// LastMutationID never moves back.
	b = batch(entry(scopeA, 3, "n3", 1, e.alice, 0))
	b.Device, b.LastMutationID = e.alice, 2
	e.commit(t, b)
	if st := e.device(t, e.alice); st.LastMutationID != 5 {
		t.Errorf("LastMutationID = %d after a lower one, want 5", st.LastMutationID)
	}

	// A partial win keeps its prefix but writes no receipt and no progress;
	// the mark covers the committed entry's mutation (6) all the same.
	e6 := entry(scopeA, 4, "n4", 1, e.alice, 6)
	b = batch(e6, entry(scopeA, 5, "n1", 1, e.alice, 7))
	b.Receipts = []storage.Receipt{receiptFor(e6), rejected(e.alice, 8)}
	b.Device, b.LastMutationID = e.alice, 8
	n, err := e.s.Commit(ctx, b)
	wantCommitErr(t, n, err, 1, &storage.CommitError{Index: 1, Taken: storage.TakenVersion})
	e.wantNoReceipt(t, e.alice, 7)
	e.wantNoReceipt(t, e.alice, 8)
	if got := e.receipt(t, e.alice, 6); got.Outcome != storage.Applied {
		t.Errorf("Receipt(6) = %+v, want Applied rebuilt from the log, not the batch's Merged", got)
	}
	if st := e.device(t, e.alice); st.LastMutationID != 6 {
		t.Errorf("LastMutationID = %d after a partial win, want 6 (mutation 6 has a log entry)", st.LastMutationID)
	}
}

func testReceiptRebuiltFromLog(t *testing.T, e *env) {
	en := entry(scopeA, 1, "n1", 1, e.alice, 7)
	e.commit(t, batch(en)) // no receipt stored
	got := e.receipt(t, e.alice, 7)
	want := storage.Receipt{
		Device: e.alice, MutationID: 7, Outcome: storage.Applied,
		Scope: scopeA, Collection: notes, DocID: "n1", Version: 1, Seq: 1,
	}
	got.Created = time.Time{} // not specified for a rebuilt receipt
	wantReceipt(t, got, want)
	if got.State != nil {
		t.Errorf("rebuilt receipt has State %v, want nil", got.State)
	}
	e.wantNoReceipt(t, e.alice2, 7) // same id, other device
	e.wantNoReceipt(t, e.alice, 8)

	// Once compaction removes the entry there is nothing to rebuild from.
	e.commitEach(t, entry(scopeA, 2, "n1", 2, e.alice, 8), entry(scopeA, 3, "n2", 1, e.alice, 9))
	if st := e.compact(t, scopeA, e.clock.Advance(time.Hour)); st.Removed != 1 {
		t.Fatalf("Compact removed %d, want 1", st.Removed)
	}
	e.wantNoReceipt(t, e.alice, 7)
	if got := e.receipt(t, e.alice, 8); got.Seq != 2 {
		t.Errorf("Receipt(8) = %+v, want seq 2", got)
	}
}

func testRead(t *testing.T, e *env) {
	// a is rewritten, c twice; b, d, e, f are written once.
	at := e.clock.Now()
	var all []storage.Entry
	for i, d := range []struct {
		id      string
		version uint64
	}{{"a", 1}, {"b", 1}, {"a", 2}, {"c", 1}, {"a", 3}, {"d", 1}, {"c", 2}, {"e", 1}, {"a", 4}, {"f", 1}} {
		all = append(all, entry(scopeA, uint64(i+1), d.id, d.version, e.alice, uint64(i+1)))
	}
	e.commit(t, batch(all[:4]...))
	e.commit(t, batch(all[4:]...))
	for i := range all {
		all[i].Committed = at
	}
	wantEntries(t, e.read(t, scopeA, 0, math.MaxUint64, 100), all)

	type row struct {
		since, through uint64
		limit          int
		want           []uint64
	}
	check := func(t *testing.T, rows []row) {
		t.Helper()
		for _, r := range rows {
			got := seqs(e.read(t, scopeA, r.since, r.through, r.limit))
			if len(got) != len(r.want) || !slices.Equal(got, r.want) {
				t.Errorf("Read(%d, %d, %d) = %v, want %v", r.since, r.through, r.limit, got, r.want)
			}
		}
	}
	check(t, []row{
		{0, math.MaxUint64, 100, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{0, 10, 100, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{3, 7, 100, []uint64{4, 5, 6, 7}},
		{0, 10, 3, []uint64{1, 2, 3}},
		{8, math.MaxUint64, 1, []uint64{9}},
		{9, 10, 100, []uint64{10}},
		{10, math.MaxUint64, 100, nil},
		{5, 5, 100, nil},
		{7, 3, 100, nil},
		{20, 30, 100, nil},
	})
	if got := e.read(t, scopeB, 0, math.MaxUint64, 100); len(got) != 0 {
		t.Errorf("Read(%s) = %v, want none", scopeB, seqs(got))
	}

	// Compaction leaves holes at 1, 3, 4, 5; limit counts entries, not seqs.
	if st := e.compact(t, scopeA, e.clock.Advance(time.Second)); st.Removed != 4 {
		t.Fatalf("Compact removed %d, want 4", st.Removed)
	}
	check(t, []row{
		{0, math.MaxUint64, 100, []uint64{2, 6, 7, 8, 9, 10}},
		{0, math.MaxUint64, 2, []uint64{2, 6}},
		{2, 7, 100, []uint64{6, 7}},
		{2, 5, 100, nil},
		{0, 1, 100, nil},
		{3, math.MaxUint64, 3, []uint64{6, 7, 8}},
	})
	wantEntries(t, e.read(t, scopeA, 5, 7, 100), all[5:7])
}
