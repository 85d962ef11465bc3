package engine_test

// Minimal reproductions of engine bugs that the property test
// (property_test.go) found, with the seeds that found them. A test here
// fails until its bug is fixed, then stays as a regression test; the
// fixed ones say so.

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/storage/embedded"
	"github.com/syncgate/syncgate/sync/engine"
	"github.com/syncgate/syncgate/sync/protocol"
)

func propNote(d *device, base uint64, text, resolves string) protocol.Mutation {
	return d.next(protocol.Mutation{Collection: "user_content", DocID: "n1", Op: conflict.Put, Base: base,
		Data: map[string]any{"text": text}, Resolves: resolves})
}

// propConflictOnN1 makes phone's edit of user_content/n1 conflict with
// laptop's, and returns the conflict id.
func propConflictOnN1(t *testing.T, h *harness, phone, laptop *device) string {
	t.Helper()
	h.push(phone.p, propNote(phone, 0, "v1", ""))
	h.push(laptop.p, propNote(laptop, 1, "laptop edit", ""))
	res := h.push(phone.p, propNote(phone, 1, "phone edit", ""))
	if res[0].Outcome != storage.Conflict {
		t.Fatalf("setup: concurrent manual edit = %+v, want a conflict", res[0])
	}
	return res[0].Conflict
}

// Fixed in 342a68f (resolveAll remembers the conflicts a batch closes).
//
// Found by seeds 3357 and 3533 of the simulation's first version (its step
// mix has changed since, so they no longer replay this): a device
// queued two resolutions of one conflict (it re-learned the conflict as
// open from a welcome while its first resolution was still queued) and
// pushed both in one batch. resolveAll checks each Resolves against the
// stored record, which the batch's first resolution has not closed yet,
// so both apply (Force) and the record ends up resolved by the second.
// Pushed one at a time, the second is refused as already resolved: the
// outcome depends on how the queue was cut into batches.
func TestPropertyBugTwoResolutionsInOneBatch(t *testing.T) {
	h := newHarnessWith(t, propCollections())
	phone, laptop := newDevice(alice("phone")), newDevice(alice("laptop"))
	laptop.wallMs += 1000
	id := propConflictOnN1(t, h, phone, laptop)

	first := propNote(phone, 2, "chosen", id)
	second := propNote(phone, 2, "chosen again", id)
	res := h.push(phone.p, first, second)
	if res[0].Outcome != storage.Applied && res[0].Outcome != storage.Merged {
		t.Fatalf("first resolution = %+v", res[0])
	}
	if res[1].Outcome != storage.Rejected || res[1].Code != protocol.CodeBadRequest {
		t.Errorf("second resolution of %s in the same push = %+v; pushed alone it is refused (bad_request: already resolved)", id, res[1])
	}
	rec, err := h.store.Conflict(context.Background(), "user:alice", id)
	if err != nil || rec.ResolvedBy == nil || rec.ResolvedBy.MutationID != first.ID {
		t.Errorf("record resolved by %+v (err %v), want m%d, the first resolution", rec.ResolvedBy, err, first.ID)
	}
}

// refuseOnce fails the next commit that carries entries without writing
// anything (storage unavailable), as MongoDB or a full disk may.
type refuseOnce struct {
	storage.Store
	armed atomic.Bool
}

func (f *refuseOnce) Commit(ctx context.Context, b *storage.Batch) (int, error) {
	if len(b.Entries) > 0 && f.armed.CompareAndSwap(true, false) {
		return 0, errors.New("injected: storage unavailable")
	}
	return f.Store.Commit(ctx, b)
}

// Fixed in 342a68f (saveCarried moves the device's mark).
//
// Found by reading the commit path after the property test's storage
// faults showed re-decided mutations (the simulation needs a refused
// commit, a lost ack and a resolution in between, which it hits rarely).
// A mutation decided before a failed commit keeps its result and receipt
// (saveCarried), but the device's high-water mark does not move: a resend
// is then planned again instead of being answered from the receipt. For a
// manual conflict, the second decision rewrites the record (same id) as
// open, even after a person resolved it.
func TestPropertyBugResendAfterRefusedCommitReopensConflict(t *testing.T) {
	clock := newFakeClock()
	st, err := embedded.Open(context.Background(), t.TempDir()+"/sync.db", embedded.Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(context.Background())
	fs := &refuseOnce{Store: st}
	reg, err := conflict.Build(propCollections(), nil)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarnessOn(t, fs, clock, nil)
	if h.eng, err = engine.New(engine.Config{Node: "test", Now: clock.Now}, engine.Options{Store: fs, Resolvers: reg, Notifier: h.seen}); err != nil {
		t.Fatal(err)
	}
	phone, laptop := newDevice(alice("phone")), newDevice(alice("laptop"))
	laptop.wallMs += 1000
	h.push(phone.p, propNote(phone, 0, "v1", ""))
	h.push(laptop.p, propNote(laptop, 1, "laptop edit", ""))

	// The phone's offline edit of n1 conflicts; the edit after it needs a
	// commit, which storage refuses. The ack of this push is lost.
	mine := propNote(phone, 1, "phone edit", "")
	other := phone.next(put("t1", map[string]any{"x": 1.0}))
	fs.armed.Store(true)
	res := h.push(phone.p, mine, other)
	if res[0].Outcome != storage.Conflict || res[1].Outcome != storage.Rejected || !res[1].Code.Retryable() {
		t.Fatalf("push under a refused commit = %+v", res)
	}
	id, firstVersion := res[0].Conflict, res[0].Version

	// Another device sees the conflict and resolves it.
	r, err := h.eng.ResolveConflict(context.Background(), laptop.p, "user:alice", id, engine.Resolution{MutationID: laptop.mid + 1, State: map[string]any{"text": "picked"}})
	if err != nil || (r.Outcome != storage.Applied && r.Outcome != storage.Merged) {
		t.Fatalf("resolution = %+v, %v", r, err)
	}
	laptop.mid++

	// The phone, which never got its ack, resends both.
	res = h.push(phone.p, mine, other)
	if res[0].Outcome != storage.Conflict || res[0].Conflict != id || res[0].Version != firstVersion || !res[0].Replayed {
		t.Errorf("resent conflicting mutation = %+v; want the stored answer again (conflict %s at v%d, replayed)", res[0], id, firstVersion)
	}
	rec, err := h.store.Conflict(context.Background(), "user:alice", id)
	if err != nil || rec.Status != storage.ConflictResolved {
		t.Errorf("conflict %s is %q after the resend (err %v); it was resolved by laptop m%d and must stay resolved", id, rec.Status, err, laptop.mid)
	}
}

// dropReceiptsOnce commits the entries of the next batch that has any but
// loses its receipts and the device's progress, then reports an error:
// what a store that writes them separately (MongoDB) does when it fails
// between the two writes. docs/architecture.md says this is harmless:
// "if they are lost, the (device, mutation id) guard still stops a second
// apply and the receipt is rebuilt from the log entry". (The embedded
// store writes a batch in one transaction, so it cannot do this.)
type dropReceiptsOnce struct {
	storage.Store
	armed atomic.Bool
}

func (f *dropReceiptsOnce) Commit(ctx context.Context, b *storage.Batch) (int, error) {
	if len(b.Entries) == 0 || !f.armed.CompareAndSwap(true, false) {
		return f.Store.Commit(ctx, b)
	}
	if _, err := f.Store.Commit(ctx, &storage.Batch{Scope: b.Scope, Entries: b.Entries, Conflicts: b.Conflicts, Receipts: entrylessReceipts(b.Receipts)}); err != nil {
		return 0, err
	}
	return 0, errors.New("injected: connection reset after the entries were written")
}

// entrylessReceipts keeps the receipts a store may not lose: those of
// outcomes without a log entry (Seq 0), which nothing else can rebuild
// (storage/doc.go). The rest are rebuilt from the log.
func entrylessReceipts(rs []storage.Receipt) []storage.Receipt {
	var out []storage.Receipt
	for _, r := range rs {
		if r.Seq == 0 {
			out = append(out, r)
		}
	}
	return out
}

// Fixed in 342a68f (a store's Device derives the mark from the log's
// mutation index). The embedded store passes through this test, but a
// store written later (MongoDB) must keep that contract too.
//
// Found with SYNCGATE_PROPERTY_FAULTS=lost-receipts (seeds 5 and 17 of
// the simulation's first version): the
// resend of a mutation whose receipt and device progress were lost is
// resolved again, against a state that already holds it. The (device,
// mutation) guard only fires when that second resolution inserts an
// entry; when it does not (the write is already in, or it now conflicts),
// the device is answered from the second decision: "merged, nothing
// written", or, under the manual rule, a conflict for an edit that was
// applied, with a conflict record to match.
func TestPropertyBugLostReceiptResendIsDecidedAgain(t *testing.T) {
	clock := newFakeClock()
	st, err := embedded.Open(context.Background(), t.TempDir()+"/sync.db", embedded.Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(context.Background())
	fs := &dropReceiptsOnce{Store: st}
	reg, err := conflict.Build(propCollections(), nil)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarnessOn(t, fs, clock, nil)
	if h.eng, err = engine.New(engine.Config{Node: "test", Now: clock.Now}, engine.Options{Store: fs, Resolvers: reg, Notifier: h.seen}); err != nil {
		t.Fatal(err)
	}
	phone, laptop := newDevice(alice("phone")), newDevice(alice("laptop"))
	phone.wallMs += 1000 // each edit below is later than the one before
	laptop.wallMs -= 1000
	h.push(laptop.p, propNote(laptop, 0, "v1", ""))

	// The phone's edit (it saw v1) is written, but its receipt and the
	// phone's progress are lost and the phone is told to retry.
	mine := propNote(phone, 1, "phone edit", "")
	fs.armed.Store(true)
	if res := h.push(phone.p, mine); res[0].Outcome != storage.Rejected || !res[0].Code.Retryable() {
		t.Fatalf("push under the fault = %+v", res[0])
	}
	// The laptop sees the phone's edit (v2) and edits after it (v3).
	laptop.wallMs += 5000
	if res := h.push(laptop.p, propNote(laptop, 2, "laptop edit", "")); res[0].Outcome != storage.Applied || res[0].Version != 3 {
		t.Fatalf("laptop edit = %+v", res[0])
	}

	res := h.push(phone.p, mine)
	if res[0].Outcome != storage.Applied || res[0].Seq != 2 || res[0].Version != 2 {
		t.Errorf("resent mutation = %+v; its entry is seq 2 version 2, so it must be answered applied there (rebuilt from the log)", res[0])
	}
	if open, _ := h.eng.Conflicts(context.Background(), phone.p, "user:alice", true, "", 10); len(open) > 0 {
		t.Errorf("an applied edit opened conflict %s", open[0].ID)
	}
}

// Found by seeds 5, 21 and 25 (the default runs): a resolution of a
// conflict that another device already resolved is refused (bad_request),
// but no receipt is kept for that refusal. When the ack is lost and the
// device resends, replay() finds no receipt, re-validates (the mutation is
// well-formed) and answers stale_mutation: the same mutation gets two
// different answers. Both are final rejections, so a device drops it
// either way, but the second one misstates why.
func TestPropertyBugReplayOfRefusedResolution(t *testing.T) {
	h := newHarnessWith(t, propCollections())
	phone, laptop := newDevice(alice("phone")), newDevice(alice("laptop"))
	laptop.wallMs += 1000
	id := propConflictOnN1(t, h, phone, laptop)
	if res := h.push(phone.p, propNote(phone, 2, "chosen", id)); res[0].Outcome == storage.Rejected {
		t.Fatalf("resolution = %+v", res[0])
	}
	late := propNote(laptop, 2, "laptop's choice", id)
	first := h.push(laptop.p, late)
	if first[0].Outcome != storage.Rejected || first[0].Code != protocol.CodeBadRequest {
		t.Fatalf("second resolution = %+v, want bad_request", first[0])
	}
	again := h.push(laptop.p, late) // the ack was lost
	if again[0].Outcome != first[0].Outcome || again[0].Code != first[0].Code {
		t.Errorf("resent refused resolution answered %s (%s), first answered %s (%s)", again[0].Code, again[0].Message, first[0].Code, first[0].Message)
	}
}

// refuseCommits fails the next n commits, whatever they carry, without
// writing anything.
type refuseCommits struct {
	storage.Store
	n atomic.Int32
}

func (f *refuseCommits) Commit(ctx context.Context, b *storage.Batch) (int, error) {
	if f.n.Add(-1) >= 0 {
		return 0, errors.New("injected: storage unavailable")
	}
	return f.Store.Commit(ctx, b)
}

func propFaultyHarness(t *testing.T, wrap func(storage.Store) storage.Store) *harness {
	t.Helper()
	clock := newFakeClock()
	st, err := embedded.Open(context.Background(), t.TempDir()+"/sync.db", embedded.Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(context.Background()) })
	fs := wrap(st)
	reg, err := conflict.Build(propCollections(), nil)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarnessOn(t, fs, clock, nil)
	if h.eng, err = engine.New(engine.Config{Node: "test", Now: clock.Now}, engine.Options{Store: fs, Resolvers: reg, Notifier: h.seen}); err != nil {
		t.Fatal(err)
	}
	return h
}

// Found by seed 2559 (SYNCGATE_PROPERTY_BASE=1000 RUNS=5000): a
// resolution that writes no entry (here: "keep it deleted" against a
// tombstone) closes its conflict record in a receipt-only batch. When
// storage refuses that batch and saveCarried's retry, the device is still
// told "merged" (saveCarried downgrades only Conflict outcomes to a
// retryable rejection), but the record stays open: the conflict is
// announced as resolved to nobody, and a second device's resolution is
// then accepted too.
func TestPropertyBugResolutionAckedWhileRecordStaysOpen(t *testing.T) {
	var fs *refuseCommits
	h := propFaultyHarness(t, func(st storage.Store) storage.Store { fs = &refuseCommits{Store: st}; return fs })
	phone, laptop := newDevice(alice("phone")), newDevice(alice("laptop"))
	laptop.wallMs += 1000
	h.push(laptop.p, propNote(laptop, 0, "v1", ""))
	h.push(laptop.p, laptop.next(protocol.Mutation{Collection: "user_content", DocID: "n1", Op: conflict.Delete, Base: 1}))
	res := h.push(phone.p, propNote(phone, 1, "phone edit", "")) // concurrent with the delete
	if res[0].Outcome != storage.Conflict {
		t.Fatalf("setup: %+v, want a conflict", res[0])
	}
	id := res[0].Conflict

	keepDeleted := phone.next(protocol.Mutation{Collection: "user_content", DocID: "n1", Op: conflict.Delete, Base: 2, Resolves: id})
	fs.n.Store(2) // the batch and saveCarried's retry
	res = h.push(phone.p, keepDeleted)
	rec, err := h.store.Conflict(context.Background(), "user:alice", id)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Outcome != storage.Rejected && rec.Status != storage.ConflictResolved {
		t.Errorf("resolution acknowledged %s, but conflict %s is still %s: the closing was not saved, so the device must be told to retry",
			res[0].Outcome, id, rec.Status)
	}
}

// Found by seed 3664 (SYNCGATE_PROPERTY_BASE=1000 RUNS=5000), fixed: an
// outcome without an entry (merged, nothing written) cannot be rebuilt from
// the log, so when its receipt could not be saved the device used to be
// told "merged" anyway, and a resend after a later batch moved the mark
// got stale_mutation. Now an unsaved outcome is answered "retry", and the
// resend is decided again.
func TestPropertyBugLostReceiptOfNoEntryOutcome(t *testing.T) {
	var fs *refuseCommits
	h := propFaultyHarness(t, func(st storage.Store) storage.Store { fs = &refuseCommits{Store: st}; return fs })
	phone := newDevice(alice("phone"))
	h.push(phone.p, phone.next(put("gone", map[string]any{"x": 1.0})))
	h.push(phone.p, phone.next(protocol.Mutation{DocID: "gone", Op: conflict.Delete, Base: 1}))

	again := phone.next(protocol.Mutation{DocID: "gone", Op: conflict.Delete, Base: 1}) // merged: the tombstone is kept
	other := phone.next(protocol.Mutation{Scope: "space:team", DocID: "t", Op: conflict.Put, Data: map[string]any{"y": 2.0}})
	fs.n.Store(2)
	first := h.push(phone.p, again, other)
	for i, r := range first {
		if r.Outcome != storage.Rejected || !r.Code.Retryable() {
			t.Fatalf("result %d with its outcome unsaved = %+v, want a retry", i, r)
		}
	}
	res := h.push(phone.p, again, other)
	if res[0].Outcome != storage.Merged || res[1].Outcome != storage.Applied {
		t.Errorf("resend = %+v, want merged then applied", res)
	}
}

// Found with SYNCGATE_PROPERTY_FAULTS=lost-receipts after 342a68f (seeds
// 190, 292, 354 and about 1% of runs): when a batch's entries land but its
// receipts and device progress do not, every mutation of the batch is
// answered "retry". The mark now comes from the log's mutation index, so
// on the resend a mutation of that batch that has no entry (merged with
// nothing to write, or a conflict) is at or below the mark with no
// receipt, and is refused as stale_mutation: the device drops an edit it
// was never given an outcome for. (docs/architecture.md says losing
// receipts and progress is harmless; for outcomes without an entry it is
// not. The embedded store cannot lose them; a store that writes them
// separately would have to.)
func TestPropertyBugLostReceiptsRefuseAnUnansweredMutation(t *testing.T) {
	var fs *dropReceiptsOnce
	h := propFaultyHarness(t, func(st storage.Store) storage.Store { fs = &dropReceiptsOnce{Store: st}; return fs })
	phone := newDevice(alice("phone"))
	h.push(phone.p, phone.next(put("gone", map[string]any{"x": 1.0})))
	h.push(phone.p, phone.next(protocol.Mutation{DocID: "gone", Op: conflict.Delete, Base: 1}))

	batch := []protocol.Mutation{
		phone.next(put("a", map[string]any{"v": 1.0})),
		phone.next(protocol.Mutation{DocID: "gone", Op: conflict.Delete, Base: 2}), // merged: nothing to write
		phone.next(put("b", map[string]any{"v": 2.0})),
	}
	fs.armed.Store(true)
	for i, r := range h.push(phone.p, batch...) {
		if r.Outcome != storage.Rejected || !r.Code.Retryable() {
			t.Fatalf("result %d under the fault = %+v, want retry", i, r)
		}
	}
	res := h.push(phone.p, batch...)
	if res[1].Outcome == storage.Rejected {
		t.Errorf("mutation %d, only ever answered \"retry\", is now refused: %s (%s)", batch[1].ID, res[1].Code, res[1].Message)
	}
}
