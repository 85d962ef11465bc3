// Package storagetest is the one conformance suite every storage.Store
// passes: the embedded bbolt store, MongoDB, and any later backend. A
// backend's test calls Run with a function that opens an empty store:
//
//	func TestConformance(t *testing.T) {
//		storagetest.Run(t, func(t *testing.T, now func() time.Time) storage.Store {
//			s, err := embedded.Open(t.Context(), filepath.Join(t.TempDir(), "db"), embedded.Options{Now: now})
//			if err != nil {
//				t.Fatal(err)
//			}
//			t.Cleanup(func() { _ = s.Close(context.Background()) })
//			return s
//		})
//	}
//
// Besides storage's documented contract, the suite holds stores to two
// rules the interface leaves implicit: Commit stamps Entry.Committed,
// Receipt.Created, ConflictRecord.Created and a closed record's
// ConflictRecord.Closed with the store's clock when they are zero (and
// keeps them otherwise), and an entry with MutationID 0 is not subject to
// the (device, mutation id) guard.
package storagetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/hlc"
)

// Opener opens a new, empty store for one subtest. The store must read the
// current time only through now, which the suite controls. Opener must
// register a t.Cleanup that closes the store (tolerating storage.ErrClosed:
// some subtests close it themselves) and removes its data.
type Opener func(t *testing.T, now func() time.Time) storage.Store

// epoch is where every subtest's clock starts: whole milliseconds in UTC,
// so that backends storing milliseconds round-trip it exactly. The clock
// only ever moves by whole seconds.
func epoch() time.Time { return time.Date(2025, 10, 1, 12, 0, 0, 0, time.UTC) }

// clock is a settable clock, safe for concurrent use.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

// Now returns the clock's time.
func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d and returns the new time.
func (c *clock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// Run runs the conformance suite against stores made by open.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, e *env)
	}{
		{"EmptyScope", testEmptyScope},
		{"CommitSingle", testCommitSingle},
		{"CommitBatch", testCommitBatch},
		{"CommitTaken", testCommitTaken},
		{"CommitInvalid", testCommitInvalid},
		{"ProgressOnlyOnFullCommit", testProgressOnlyOnFullCommit},
		{"ReceiptRebuiltFromLog", testReceiptRebuiltFromLog},
		{"Read", testRead},
		{"Version", testVersion},
		{"CompactSuperseded", testCompactSuperseded},
		{"CompactTombstones", testCompactTombstones},
		{"PurgeKeepsVersion", testPurgeKeepsVersion},
		{"CompactManyEntries", testCompactManyEntries},
		{"Scopes", testScopes},
		{"Devices", testDevices},
		{"ExpireReceipts", testExpireReceipts},
		{"ConflictsOnFullCommit", testConflictsOnFullCommit},
		{"ConflictRewrite", testConflictRewrite},
		{"ListConflicts", testListConflicts},
		{"ConflictNotFound", testConflictNotFound},
		{"AgeConflicts", testAgeConflicts},
		{"ConcurrentWriters", testConcurrentWriters},
		{"ContextCanceled", testContextCanceled},
		{"Closed", testClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newEnv(t, open)) })
	}
}

// env is one subtest's store and clock, and the devices it writes as.
type env struct {
	s     storage.Store
	clock *clock
	open  Opener

	alice, alice2, bob storage.DeviceRef
}

func newEnv(t *testing.T, open Opener) *env {
	t.Helper()
	c := &clock{now: epoch()}
	return &env{
		s: open(t, c.Now), clock: c, open: open,
		alice:  storage.DeviceRef{User: "alice", Device: "phone"},
		alice2: storage.DeviceRef{User: "alice", Device: "laptop"},
		bob:    storage.DeviceRef{User: "bob", Device: "phone"},
	}
}

// fresh opens another empty store, for table cases that need isolation.
func (e *env) fresh(t *testing.T) *env { return newEnv(t, e.open) }

const (
	scopeA = "user:alice"
	scopeB = "space:team"
	notes  = "notes"
)

// entry builds a put (or, for version and deleted, a tombstone) with a
// state that exercises nested JSON types.
func entry(scope string, seq uint64, id string, version uint64, dev storage.DeviceRef, mid uint64) storage.Entry {
	ts := hlc.Timestamp{Wall: epoch().UnixMilli() + int64(seq), Logical: uint32(version), Node: dev.Device}
	return storage.Entry{
		Scope:      scope,
		Seq:        seq,
		Collection: notes,
		DocID:      id,
		Version:    version,
		Op:         storage.OpPut,
		State: map[string]any{
			"title": fmt.Sprintf("%s v%d", id, version),
			"n":     float64(version),
			"tags":  []any{"a", "b"},
			"meta":  map[string]any{"by": dev.String()},
		},
		Clocks:     map[string]hlc.Timestamp{"title": ts, "n": ts},
		Device:     dev,
		MutationID: mid,
		HLC:        ts,
	}
}

// tombstone builds a delete entry.
func tombstone(scope string, seq uint64, id string, version uint64, dev storage.DeviceRef, mid uint64) storage.Entry {
	e := entry(scope, seq, id, version, dev, mid)
	e.Op, e.State, e.Clocks, e.Deleted = storage.OpDelete, nil, nil, true
	return e
}

// receiptFor builds a stored receipt for an entry, with an outcome the
// store could not have rebuilt from the log (Merged, with state).
func receiptFor(e storage.Entry) storage.Receipt {
	return storage.Receipt{
		Device: e.Device, MutationID: e.MutationID, Outcome: storage.Merged,
		Scope: e.Scope, Collection: e.Collection, DocID: e.DocID,
		Version: e.Version, Seq: e.Seq, State: e.State, Deleted: e.Deleted,
	}
}

func rejected(dev storage.DeviceRef, mid uint64) storage.Receipt {
	return storage.Receipt{
		Device: dev, MutationID: mid, Outcome: storage.Rejected, Code: "invalid",
		Message: "rejected by the suite", Scope: scopeA, Collection: notes, DocID: "x",
	}
}

func batch(entries ...storage.Entry) *storage.Batch {
	b := &storage.Batch{Entries: entries}
	if len(entries) > 0 {
		b.Scope = entries[0].Scope
	}
	return b
}

// commit commits b and fails the test unless every entry committed.
func (e *env) commit(t *testing.T, b *storage.Batch) {
	t.Helper()
	n, err := e.s.Commit(context.Background(), b)
	if err != nil || n != len(b.Entries) {
		t.Fatalf("Commit = %d, %v; want %d, nil", n, err, len(b.Entries))
	}
}

// commitEach commits entries one batch each.
func (e *env) commitEach(t *testing.T, entries ...storage.Entry) {
	t.Helper()
	for _, en := range entries {
		e.commit(t, batch(en))
	}
}

func (e *env) head(t *testing.T, scope string) uint64 {
	t.Helper()
	h, err := e.s.Head(context.Background(), scope)
	if err != nil {
		t.Fatalf("Head(%s): %v", scope, err)
	}
	return h
}

func (e *env) horizon(t *testing.T, scope string) uint64 {
	t.Helper()
	h, err := e.s.Horizon(context.Background(), scope)
	if err != nil {
		t.Fatalf("Horizon(%s): %v", scope, err)
	}
	return h
}

func (e *env) latest(t *testing.T, scope, id string) storage.Entry {
	t.Helper()
	got, err := e.s.Latest(context.Background(), scope, notes, id)
	if err != nil {
		t.Fatalf("Latest(%s, %s): %v", scope, id, err)
	}
	return got
}

// wantNoDoc checks that a document never had an entry: Latest returns
// ErrNotFound (a purged document has a marker instead; see wantMarker).
func (e *env) wantNoDoc(t *testing.T, scope, id string) {
	t.Helper()
	got, err := e.s.Latest(context.Background(), scope, notes, id)
	if !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Latest(%s, %s) = %+v, %v; want ErrNotFound", scope, id, got, err)
	}
}

// wantMarker checks that Latest returns the marker compaction leaves when
// it purges a document's tombstone of the given version: Seq 0, Deleted,
// that Version, and nothing but the document's name besides.
func (e *env) wantMarker(t *testing.T, scope, id string, version uint64) {
	t.Helper()
	got, err := e.s.Latest(context.Background(), scope, notes, id)
	if err != nil {
		t.Fatalf("Latest(%s, %s): %v; want the purge marker of v%d", scope, id, err, version)
	}
	want := storage.Entry{Scope: scope, Collection: notes, DocID: id, Version: version, Deleted: true}
	if !got.Committed.IsZero() {
		t.Errorf("Latest(%s, %s): marker has Committed %s, want zero", scope, id, got.Committed)
	}
	got.Committed = time.Time{}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Latest(%s, %s):\n got %+v\nwant the purge marker %+v", scope, id, got, want)
	}
}

func (e *env) read(t *testing.T, scope string, since, through uint64, limit int) []storage.Entry {
	t.Helper()
	got, err := e.s.Read(context.Background(), scope, since, through, limit)
	if err != nil {
		t.Fatalf("Read(%s, %d, %d, %d): %v", scope, since, through, limit, err)
	}
	return got
}

func (e *env) receipt(t *testing.T, dev storage.DeviceRef, mid uint64) storage.Receipt {
	t.Helper()
	r, err := e.s.Receipt(context.Background(), dev, mid)
	if err != nil {
		t.Fatalf("Receipt(%s, %d): %v", dev, mid, err)
	}
	return r
}

func (e *env) wantNoReceipt(t *testing.T, dev storage.DeviceRef, mid uint64) {
	t.Helper()
	r, err := e.s.Receipt(context.Background(), dev, mid)
	if !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Receipt(%s, %d) = %+v, %v; want ErrNotFound", dev, mid, r, err)
	}
}

func (e *env) device(t *testing.T, dev storage.DeviceRef) storage.DeviceState {
	t.Helper()
	st, err := e.s.Device(context.Background(), dev)
	if err != nil {
		t.Fatalf("Device(%s): %v", dev, err)
	}
	return st
}

func (e *env) compact(t *testing.T, scope string, olderThan time.Time) storage.CompactStats {
	t.Helper()
	st, err := e.s.Compact(context.Background(), scope, olderThan)
	if err != nil {
		t.Fatalf("Compact(%s, %s): %v", scope, olderThan, err)
	}
	return st
}

// wantEntry compares entries field by field; times compare with Equal.
func wantEntry(t *testing.T, got, want storage.Entry) {
	t.Helper()
	if !got.Committed.Equal(want.Committed) {
		t.Errorf("entry seq %d: Committed = %s, want %s", want.Seq, got.Committed, want.Committed)
	}
	got.Committed = want.Committed
	if !reflect.DeepEqual(got, want) {
		t.Errorf("entry seq %d:\n got %+v\nwant %+v", want.Seq, got, want)
	}
}

// wantEntries compares whole entries, in order.
func wantEntries(t *testing.T, got, want []storage.Entry) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d entries %v, want %d %v", len(got), seqs(got), len(want), seqs(want))
	}
	for i := range want {
		wantEntry(t, got[i], want[i])
	}
}

func wantReceipt(t *testing.T, got, want storage.Receipt) {
	t.Helper()
	if !got.Created.Equal(want.Created) {
		t.Errorf("receipt %s/%d: Created = %s, want %s", want.Device, want.MutationID, got.Created, want.Created)
	}
	got.Created = want.Created
	if !reflect.DeepEqual(got, want) {
		t.Errorf("receipt %s/%d:\n got %+v\nwant %+v", want.Device, want.MutationID, got, want)
	}
}

func seqs(entries []storage.Entry) []uint64 {
	out := make([]uint64, len(entries))
	for i, e := range entries {
		out[i] = e.Seq
	}
	return out
}

// committedAt returns e as the store should hand it back when it was
// committed at time at.
func committedAt(e storage.Entry, at time.Time) storage.Entry {
	e.Committed = at
	return e
}

// wantCommitErr checks a Commit result against a wanted partial win.
func wantCommitErr(t *testing.T, n int, err error, wantN int, want *storage.CommitError) {
	t.Helper()
	if want == nil {
		if err != nil || n != wantN {
			t.Fatalf("Commit = %d, %v; want %d, nil", n, err, wantN)
		}
		return
	}
	var ce *storage.CommitError
	if !errors.As(err, &ce) {
		t.Fatalf("Commit = %d, %v; want a *storage.CommitError", n, err)
	}
	if n != wantN || ce.Index != want.Index || (want.Taken != "" && ce.Taken != want.Taken) {
		t.Fatalf("Commit = %d, %+v; want %d, %+v", n, *ce, wantN, *want)
	}
}
