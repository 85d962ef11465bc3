package embedded

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/storage/storagetest"
)

// openTemp opens a store on a fresh file that is closed when t ends.
func openTemp(t *testing.T, now func() time.Time) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data", "syncgate.db")
	s, err := Open(t.Context(), path, Options{Now: now})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil && !errors.Is(err, storage.ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return s, path
}

// openChecked is openTemp plus a layout check when t ends, so that every
// conformance subtest also proves the buckets agree with each other.
func openChecked(t *testing.T, now func() time.Time) *Store {
	s, _ := openTemp(t, now)
	t.Cleanup(func() { // runs before openTemp's Close
		if !s.closed.Load() {
			checkLayout(t, s)
		}
	})
	return s
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T, now func() time.Time) storage.Store {
		return openChecked(t, now)
	})
}

// TestConformanceSmallChunks reruns the suite with housekeeping chunks of
// three keys, so that compaction and expiry cross many chunk boundaries.
func TestConformanceSmallChunks(t *testing.T) {
	storagetest.Run(t, func(t *testing.T, now func() time.Time) storage.Store {
		s := openChecked(t, now)
		s.chunk = 3
		return s
	})
}

// checkLayout verifies the invariants doc.go describes: docs points at the
// newest entry of each document in the log, or holds a purge marker (seq
// 0) above every version of the document the log still has, and every
// document in the log has a docs value; the chain holds a valid link
// for exactly the log's entries, and leads from each document's latest
// entry to each of its older versions; the mutation index holds exactly
// the log's entries with a mutation id; every receipt has exactly one
// receipt-age key; the conflict indexes agree with the records.
func checkLayout(t *testing.T, s *Store) {
	t.Helper()
	err := s.db.View(func(tx *bbolt.Tx) error {
		wantMuts := map[string]string{}
		err := tx.Bucket([]byte(bucketScopes)).ForEachBucket(func(scope []byte) error {
			sc := tx.Bucket([]byte(bucketScopes)).Bucket(scope)
			log, docs := sc.Bucket([]byte(bucketLog)), sc.Bucket([]byte(bucketDocs))
			if err := checkChain(t, string(scope), log, docs, sc.Bucket([]byte(bucketChain))); err != nil {
				return err
			}
			newest := map[string]uint64{}        // docKey -> seq of its newest entry
			newestVersion := map[string]uint64{} // docKey -> that entry's version
			if err := log.ForEach(func(k, v []byte) error {
				e, err := decodeEntry(v)
				if err != nil {
					return err
				}
				if e.Seq != seqOf(k) || e.Scope != string(scope) {
					t.Errorf("%s: key %d holds seq %d of %q", scope, seqOf(k), e.Seq, e.Scope)
				}
				newest[string(docKey(e.Collection, e.DocID))] = e.Seq
				newestVersion[string(docKey(e.Collection, e.DocID))] = e.Version
				if e.MutationID != 0 {
					wantMuts[string(mutKey(e.Device, e.MutationID))] = string(encodeMutRef(mutRef{scope: string(scope), seq: e.Seq}))
				}
				return nil
			}); err != nil {
				return err
			}
			for k := range newest {
				if docs.Get([]byte(k)) == nil {
					t.Errorf("%s: document %q has entries but no docs value", scope, k)
				}
			}
			return docs.ForEach(func(k, v []byte) error {
				ref, err := decodeDocRef(v)
				if err != nil {
					return err
				}
				if ref.seq == 0 {
					// A purge marker: no entry of its own, and only
					// older (superseded) versions may remain in the log.
					if ref.version == 0 {
						t.Errorf("%s: marker of %q has version 0", scope, k)
					}
					if n, ok := newestVersion[string(k)]; ok && n >= ref.version {
						t.Errorf("%s: marker of %q at v%d, but the log has v%d (seq %d)", scope, k, ref.version, n, newest[string(k)])
					}
					return nil
				}
				raw := log.Get(seqKey(ref.seq))
				if raw == nil {
					t.Errorf("%s: docs points at missing seq %d", scope, ref.seq)
					return nil
				}
				if e, _ := decodeEntry(raw); e.Version != ref.version || newest[string(k)] != ref.seq {
					t.Errorf("%s: docs says v%d seq %d; log has v%d, newest seq %d", scope, ref.version, ref.seq, e.Version, newest[string(k)])
				}
				return nil
			})
		})
		if err != nil {
			return err
		}
		gotMuts := map[string]string{}
		if err := tx.Bucket([]byte(bucketMutations)).ForEach(func(k, v []byte) error {
			gotMuts[string(k)] = string(v)
			return nil
		}); err != nil {
			return err
		}
		if !maps.Equal(gotMuts, wantMuts) {
			t.Errorf("mutation index has %d keys, want %d (one per logged mutation)", len(gotMuts), len(wantMuts))
		}
		receipts, ages := tx.Bucket([]byte(bucketReceipts)), tx.Bucket([]byte(bucketReceiptAge))
		if r, a := receipts.Stats().KeyN, ages.Stats().KeyN; r != a {
			t.Errorf("%d receipts but %d receipt-age keys", r, a)
		}
		if err := ages.ForEach(func(k, _ []byte) error {
			if receipts.Get(k[timeLen:]) == nil {
				t.Errorf("receipt-age key without a receipt")
			}
			return nil
		}); err != nil {
			return err
		}
		return checkConflicts(t, tx)
	})
	if err != nil {
		t.Errorf("checkLayout: %v", err)
	}
}

func put(scope string, seq uint64, id string, version, mid uint64) storage.Entry {
	return storage.Entry{
		Scope: scope, Seq: seq, Collection: "notes", DocID: id, Version: version,
		Op: storage.OpPut, State: map[string]any{"v": float64(version)},
		Device: storage.DeviceRef{User: "alice", Device: "phone"}, MutationID: mid,
	}
}

func TestSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	s, path := openTemp(t, nil)
	dev := storage.DeviceRef{User: "alice", Device: "phone"}
	b := &storage.Batch{
		Scope:          "user:alice",
		Entries:        []storage.Entry{put("user:alice", 1, "n1", 1, 1), put("user:alice", 2, "n1", 2, 2)},
		Receipts:       []storage.Receipt{{Device: dev, MutationID: 2, Outcome: storage.Merged, Scope: "user:alice"}},
		Device:         dev,
		LastMutationID: 2,
	}
	if _, err := s.Commit(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveCheckpoints(ctx, dev, map[string]uint64{"user:alice": 2}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}

	s2, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s2.Close(ctx)
	if h, err := s2.Head(ctx, "user:alice"); h != 2 || err != nil {
		t.Errorf("Head = %d, %v; want 2", h, err)
	}
	if e, err := s2.Latest(ctx, "user:alice", "notes", "n1"); err != nil || e.Version != 2 {
		t.Errorf("Latest = %+v, %v; want v2", e, err)
	}
	if r, err := s2.Receipt(ctx, dev, 2); err != nil || r.Outcome != storage.Merged {
		t.Errorf("Receipt = %+v, %v; want the stored one", r, err)
	}
	if st, err := s2.Device(ctx, dev); err != nil || st.LastMutationID != 2 || st.Checkpoints["user:alice"] != 2 {
		t.Errorf("Device = %+v, %v", st, err)
	}
	// The guards survive too.
	n, err := s2.Commit(ctx, &storage.Batch{Scope: "user:alice", Entries: []storage.Entry{put("user:alice", 3, "n1", 3, 2)}})
	var ce *storage.CommitError
	if n != 0 || !errors.As(err, &ce) || ce.Taken != storage.TakenMutation {
		t.Errorf("replay after reopen = %d, %v; want TakenMutation", n, err)
	}
}

func TestSecondOpenFailsFast(t *testing.T) {
	_, path := openTemp(t, nil)
	start := time.Now()
	s2, err := Open(context.Background(), path, Options{})
	if err == nil {
		s2.Close(context.Background())
		t.Fatal("second Open of a locked file succeeded")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("second Open took %s, want about %s", took, lockTimeout)
	}
	if want := "embedded: open "; len(err.Error()) < len(want) || err.Error()[:len(want)] != want {
		t.Errorf("error %q lacks the package prefix", err)
	}
	t.Logf("second Open: %v", err)
}

func TestOpenRejectsForeignFile(t *testing.T) {
	s, path := openTemp(t, nil)
	// Rewrite the schema version as a future layout would.
	if err := s.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte(bucketMeta)).Put([]byte(keySchema), u64(schemaVersion+1))
	}); err != nil {
		t.Fatal(err)
	}
	s.Close(context.Background())
	if s2, err := Open(context.Background(), path, Options{}); err == nil {
		s2.Close(context.Background())
		t.Fatal("Open accepted an unknown schema version")
	}
}

// The version rule is stricter than a unique index: a version that skips
// ahead is refused too (as TakenVersion), so versions have no gaps.
func TestVersionMustFollowLatest(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t, nil)
	if _, err := s.Commit(ctx, &storage.Batch{Scope: "s", Entries: []storage.Entry{put("s", 1, "a", 1, 0)}}); err != nil {
		t.Fatal(err)
	}
	for _, e := range []storage.Entry{put("s", 2, "a", 3, 0), put("s", 2, "new", 2, 0)} {
		n, err := s.Commit(ctx, &storage.Batch{Scope: "s", Entries: []storage.Entry{e}})
		var ce *storage.CommitError
		if n != 0 || !errors.As(err, &ce) || ce.Taken != storage.TakenVersion {
			t.Errorf("Commit(%s v%d) = %d, %v; want TakenVersion", e.DocID, e.Version, n, err)
		}
	}
}

// A batch that loses at its first entry writes nothing, not even the
// bucket of a new scope.
func TestLostFirstEntryLeavesNoScope(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t, nil)
	if _, err := s.Commit(ctx, &storage.Batch{Scope: "a", Entries: []storage.Entry{put("a", 1, "n", 1, 1)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx, &storage.Batch{Scope: "b", Entries: []storage.Entry{put("b", 1, "n", 1, 1)}}); err == nil {
		t.Fatal("replayed mutation committed in another scope")
	}
	if got, err := s.Scopes(ctx, "", 10); err != nil || len(got) != 1 || got[0] != "a" {
		t.Errorf("Scopes = %v, %v; want [a]", got, err)
	}
}

func TestErrorsCarryPrefix(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t, nil)
	_, err := s.Latest(ctx, "s", "c", "id")
	if !errors.Is(err, storage.ErrNotFound) || err.Error() != "embedded: latest: storage: not found" {
		t.Errorf("Latest error = %q", err)
	}
	if _, err := s.Read(ctx, "s", 0, math.MaxUint64, 0); err == nil {
		t.Error("Read with limit 0 succeeded")
	}
	if _, err := s.Commit(ctx, nil); err == nil || err.Error()[:len("embedded: ")] != "embedded: " {
		t.Errorf("Commit(nil) = %v", err)
	}
}

func TestKeysDoNotCollide(t *testing.T) {
	pairs := [][2]storage.DeviceRef{
		{{User: "a", Device: "bc"}, {User: "ab", Device: "c"}},
		{{User: "a\x00", Device: "b"}, {User: "a", Device: "\x00b"}},
	}
	for _, p := range pairs {
		if string(mutKey(p[0], 1)) == string(mutKey(p[1], 1)) {
			t.Errorf("mutKey(%q) == mutKey(%q)", p[0], p[1])
		}
	}
	if string(docKey("a", "bc")) == string(docKey("ab", "c")) {
		t.Error("docKey collides")
	}
	// Time keys sort like times, across the Unix epoch and far beyond.
	times := []time.Time{
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1969, 12, 31, 23, 59, 59, 999_999_999, time.UTC),
		time.Unix(0, 0),
		time.Unix(0, 1),
		time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	for i := 1; i < len(times); i++ {
		if string(timeKey(times[i-1])) >= string(timeKey(times[i])) {
			t.Errorf("timeKey(%s) >= timeKey(%s)", times[i-1], times[i])
		}
	}
}

// A chunk that became a superseded entry between the scan and the delete
// (a new version of a tombstoned document was committed) must not purge
// the document or raise the horizon.
func TestCompactRechecksCandidates(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t, nil)
	del := put("s", 2, "a", 2, 2)
	del.Op, del.State, del.Deleted = storage.OpDelete, nil, true
	for _, e := range []storage.Entry{put("s", 1, "a", 1, 1), del, put("s", 3, "b", 1, 3)} {
		if _, err := s.Commit(ctx, &storage.Batch{Scope: "s", Entries: []storage.Entry{e}}); err != nil {
			t.Fatal(err)
		}
	}
	cutoff := time.Now().Add(time.Hour)
	candidates, _, err := s.compactCandidates(ctx, "s", 1, cutoff)
	if err != nil || len(candidates) != 2 {
		t.Fatalf("candidates = %v, %v; want seqs 1 and 2", candidates, err)
	}
	if _, err := s.Commit(ctx, &storage.Batch{Scope: "s", Entries: []storage.Entry{put("s", 4, "a", 3, 4)}}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.compactApply(ctx, "s", candidates, cutoff); n != 2 || err != nil {
		t.Fatalf("compactApply = %d, %v; want 2", n, err)
	}
	if e, err := s.Latest(ctx, "s", "notes", "a"); err != nil || e.Version != 3 {
		t.Errorf("Latest(a) = %+v, %v; want v3", e, err)
	}
	if h, _ := s.Horizon(ctx, "s"); h != 0 {
		t.Errorf("Horizon = %d, want 0: nothing was erased", h)
	}
	checkLayout(t, s)
}

// A rebuilt receipt of a delete says so.
func TestRebuiltReceiptOfDelete(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t, nil)
	del := put("s", 2, "a", 2, 2)
	del.Op, del.State, del.Deleted = storage.OpDelete, nil, true
	if _, err := s.Commit(ctx, &storage.Batch{Scope: "s", Entries: []storage.Entry{put("s", 1, "a", 1, 1), del}}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Receipt(ctx, del.Device, 2)
	if err != nil || !r.Deleted || r.Outcome != storage.Applied || r.Seq != 2 || r.Created.IsZero() {
		t.Errorf("Receipt = %+v, %v; want Applied, Deleted, seq 2, Created from the entry", r, err)
	}
}

// TestGroupCommitIsolatesFailures: commits that share a group transaction
// must not fail or lose each other's writes when one member fails for real
// (here a batch that would leave a gap), and every member gets its own answer.
func TestGroupCommitIsolatesFailures(t *testing.T) {
	s := openChecked(t, nil)
	ctx := context.Background()
	const rounds, writers = 20, 24
	for r := 0; r < rounds; r++ {
		errs := make([]error, writers)
		var wg sync.WaitGroup
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				scope := fmt.Sprintf("space:r%dw%d", r, w)
				seq := uint64(1)
				if w%6 == 0 {
					seq = 3 // a gap: refused with a plain error
				}
				_, errs[w] = s.Commit(ctx, &storage.Batch{Scope: scope, Entries: []storage.Entry{put(scope, seq, "d", 1, 0)}})
			}()
		}
		wg.Wait()
		for w := 0; w < writers; w++ {
			scope := fmt.Sprintf("space:r%dw%d", r, w)
			head, err := s.Head(ctx, scope)
			if err != nil {
				t.Fatal(err)
			}
			if w%6 == 0 {
				if errs[w] == nil || head != 0 {
					t.Fatalf("gap batch %s: err=%v head=%d", scope, errs[w], head)
				}
				continue
			}
			if errs[w] != nil || head != 1 {
				t.Fatalf("good batch %s beside a failing one: err=%v head=%d", scope, errs[w], head)
			}
		}
	}
}

// checkChain verifies the chain index of one scope against its log.
func checkChain(t *testing.T, scope string, log, docs, chain *bbolt.Bucket) error {
	t.Helper()
	if chain == nil {
		t.Errorf("%s: no chain bucket", scope)
		return nil
	}
	if l, c := log.Stats().KeyN, chain.Stats().KeyN; l != c {
		t.Errorf("%s: %d log entries but %d chain keys", scope, l, c)
	}
	entryAt := func(seq uint64) (storage.Entry, bool, error) {
		raw := log.Get(seqKey(seq))
		if raw == nil {
			return storage.Entry{}, false, nil
		}
		e, err := decodeEntry(raw)
		return e, true, err
	}
	err := log.ForEach(func(k, v []byte) error {
		e, err := decodeEntry(v)
		if err != nil {
			return err
		}
		l, ok, err := getLink(chain, e.Seq)
		if err != nil {
			return err
		}
		if !ok {
			t.Errorf("%s: seq %d has no chain link", scope, e.Seq)
			return nil
		}
		same := func(seq, version uint64, what string) error {
			if seq >= e.Seq {
				t.Errorf("%s: seq %d: %s %d is not older", scope, e.Seq, what, seq)
				return nil
			}
			o, ok, err := entryAt(seq)
			if err == nil && ok && (o.Collection != e.Collection || o.DocID != e.DocID || o.Version != version) {
				t.Errorf("%s: seq %d (%s v%d): %s seq %d holds %s v%d, want v%d", scope, e.Seq, e.DocID, e.Version, what, seq, o.DocID, o.Version, version)
			}
			return err
		}
		switch {
		case e.Version == 1 && l != (link{}):
			t.Errorf("%s: seq %d is version 1 but links to %+v", scope, e.Seq, l)
		case l.jumpVersion >= e.Version || (l.jump == 0) != (l.jumpVersion == 0):
			t.Errorf("%s: seq %d v%d: bad jump %+v", scope, e.Seq, e.Version, l)
		}
		if l.prev != 0 {
			if err := same(l.prev, e.Version-1, "prev"); err != nil {
				return err
			}
		}
		if l.jump != 0 {
			if err := same(l.jump, l.jumpVersion, "jump"); err != nil {
				return err
			}
		}
		// Links never change once written, so while the links newLink
		// read still exist it must build the same one again.
		if _, ok, _ := getLink(chain, l.prev); ok && l.prev != 0 {
			p, _, _ := getLink(chain, l.prev)
			if _, ok, _ := getLink(chain, p.jump); ok || p.jump == 0 {
				if want, err := newLink(chain, l.prev, e.Version-1); err != nil || want != l {
					t.Errorf("%s: seq %d: link %+v, want %+v (%v)", scope, e.Seq, l, want, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// From each document's latest entry, every older version still linked
	// by prev pointers is found.
	return docs.ForEach(func(k, v []byte) error {
		latest, err := decodeDocRef(v)
		if err != nil {
			return err
		}
		if latest.seq == 0 {
			// A purge marker: none of its versions is found.
			for _, version := range []uint64{1, latest.version - 1, latest.version} {
				if got, ok, err := findVersion(chain, log, latest, version); err != nil || ok {
					t.Errorf("%s: marker v%d: findVersion(v%d) = %d, %v, %v; want none", scope, latest.version, version, got, ok, err)
				}
			}
			return nil
		}
		for seq, version := latest.seq, latest.version; seq != 0; version-- {
			if _, ok, _ := entryAt(seq); !ok {
				break
			}
			got, ok, err := findVersion(chain, log, latest, version)
			if err != nil {
				return err
			}
			if !ok || got != seq {
				t.Errorf("%s: findVersion(v%d) = %d, %v; want seq %d", scope, version, got, ok, seq)
			}
			l, _, _ := getLink(chain, seq)
			seq = l.prev
		}
		return nil
	})
}

// checkConflicts verifies that each scope's conflict indexes hold exactly
// the keys its records imply, and that no scope is left without records.
func checkConflicts(t *testing.T, tx *bbolt.Tx) error {
	t.Helper()
	root := tx.Bucket([]byte(bucketConflicts))
	return root.ForEachBucket(func(scope []byte) error {
		b, ok := subBuckets(root.Bucket(scope))
		if !ok {
			t.Errorf("conflicts of %s: missing buckets", scope)
			return nil
		}
		want := map[string]map[string]string{bucketCreated: {}, bucketOpen: {}, bucketClosed: {}}
		err := b.records.ForEach(func(k, v []byte) error {
			c, err := decodeConflict(v)
			if err != nil {
				return err
			}
			if c.ID != string(k) || c.Scope != string(scope) || !c.Status.Valid() || c.Created.IsZero() {
				t.Errorf("conflicts of %s: key %q holds %+v", scope, k, c)
			}
			open := c.Status == storage.ConflictOpen
			if open == !c.Closed.IsZero() {
				t.Errorf("conflicts of %s: %q is %s with Closed %s", scope, k, c.Status, c.Closed)
			}
			ik := keysOf(c.ID, open, c.Created, c.Closed)
			want[bucketCreated][string(ik.created)] = ""
			if open {
				want[bucketOpen][string(ik.status)] = string(ik.statusValue)
			} else {
				want[bucketClosed][string(ik.status)] = string(ik.statusValue)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(want[bucketCreated]) == 0 {
			t.Errorf("conflicts of %s: buckets without records", scope)
		}
		for name, bk := range map[string]*bbolt.Bucket{bucketCreated: b.created, bucketOpen: b.open, bucketClosed: b.closed} {
			got := map[string]string{}
			if err := bk.ForEach(func(k, v []byte) error {
				got[string(k)] = string(v)
				return nil
			}); err != nil {
				return err
			}
			if !maps.Equal(got, want[name]) {
				t.Errorf("conflicts of %s: %s index has %d keys, want %d matching the records", scope, name, len(got), len(want[name]))
			}
		}
		return nil
	})
}

func TestSessionsConformance(t *testing.T) {
	storagetest.RunSessions(t, func(t *testing.T, now func() time.Time) storage.Sessions {
		return openSessionsChecked(t, now)
	})
}

func TestMediaConformance(t *testing.T) {
	storagetest.RunMedia(t, func(t *testing.T, now func() time.Time) storage.Media {
		s, _ := openTemp(t, now)
		m, err := NewMedia(s, MediaOptions{})
		if err != nil {
			t.Fatalf("NewMedia: %v", err)
		}
		return m
	})
}
