package storagetest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/syncgate/syncgate/storage"
)

// testConcurrentWriters is the brief's race: writers read the head and the
// document's latest version, commit head+1 / version+1, and retry on a
// lost race, mostly on the same few documents. Every commit must land
// exactly once, with seqs and per-document versions contiguous.
func testConcurrentWriters(t *testing.T, e *env) {
	// 20 writers, as the brief asks. Every commit competes for the one
	// next seq, so a round of 20 attempts lands one commit: on FerretDB (a
	// scan per query) 16×40 commits took 209 s, hence 6 per writer by
	// default; SYNCGATE_STORAGETEST_PER_WRITER runs a longer race.
	const writers, maxRetries = 20, 100_000
	perWriter := 6
	if v := os.Getenv("SYNCGATE_STORAGETEST_PER_WRITER"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("SYNCGATE_STORAGETEST_PER_WRITER=%q: want a positive integer", v)
		}
		perWriter = n
	}
	hot := []string{"hot0", "hot1", "hot2"}
	ctx := context.Background()
	var retries atomic.Int64

	// read returns the head and the document's latest version. Half the
	// writers read the document first: then only the version guard stops
	// them from committing over a version that moved after they read it.
	read := func(doc string, versionFirst bool) (head, version uint64, err error) {
		readHead := func() error {
			head, err = e.s.Head(ctx, scopeA)
			return err
		}
		readVersion := func() error {
			latest, err := e.s.Latest(ctx, scopeA, notes, doc)
			if errors.Is(err, storage.ErrNotFound) {
				return nil
			}
			version = latest.Version
			return err
		}
		steps := []func() error{readHead, readVersion}
		if versionFirst {
			steps[0], steps[1] = steps[1], steps[0]
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return 0, 0, err
			}
		}
		return head, version, nil
	}

	// write commits mutation mid of dev to doc, retrying lost races.
	write := func(dev storage.DeviceRef, mid uint64, doc string, versionFirst bool) error {
		for range maxRetries {
			head, version, err := read(doc, versionFirst)
			if err != nil {
				return err
			}
			en := entry(scopeA, head+1, doc, version+1, dev, mid)
			b := batch(en)
			b.Receipts = []storage.Receipt{receiptFor(en)}
			b.Device, b.LastMutationID = dev, mid
			n, err := e.s.Commit(ctx, b)
			var ce *storage.CommitError
			switch {
			case err == nil && n == 1:
				return nil
			case errors.As(err, &ce) && n == 0 && ce.Index == 0 && ce.Taken != storage.TakenMutation:
				retries.Add(1)
			default:
				return fmt.Errorf("Commit(%s/%d) = %d, %v", dev, mid, n, err)
			}
		}
		return fmt.Errorf("%s/%d: no commit after %d retries", dev, mid, maxRetries)
	}

	var wg sync.WaitGroup
	for w := range writers {
		dev := storage.DeviceRef{User: "u", Device: fmt.Sprintf("d%02d", w)}
		wg.Go(func() {
			for i := range perWriter {
				// Three hot documents take four writes in five; the
				// fifth goes to the writer's own document.
				doc := hot[(w+i)%len(hot)]
				if i%5 == 4 {
					doc = fmt.Sprintf("own%02d", w)
				}
				if err := write(dev, uint64(i+1), doc, w%2 == 1); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("%d commits, %d retries", writers*perWriter, retries.Load())

	all := e.read(t, scopeA, 0, math.MaxUint64, 10*writers*perWriter)
	if len(all) != writers*perWriter {
		t.Fatalf("read %d entries, want %d", len(all), writers*perWriter)
	}
	versions := map[string]uint64{}
	seen := map[storage.DeviceRef]map[uint64]bool{}
	for i, en := range all {
		if en.Seq != uint64(i+1) {
			t.Fatalf("entry %d has seq %d: seqs are not contiguous", i, en.Seq)
		}
		versions[en.DocID]++
		if en.Version != versions[en.DocID] {
			t.Fatalf("seq %d: %s v%d, want v%d: versions are not contiguous", en.Seq, en.DocID, en.Version, versions[en.DocID])
		}
		if seen[en.Device] == nil {
			seen[en.Device] = map[uint64]bool{}
		}
		if seen[en.Device][en.MutationID] {
			t.Fatalf("seq %d: %s/%d committed twice", en.Seq, en.Device, en.MutationID)
		}
		seen[en.Device][en.MutationID] = true
	}
	if len(seen) != writers {
		t.Fatalf("entries from %d devices, want %d", len(seen), writers)
	}
	for dev, mids := range seen {
		if len(mids) != perWriter {
			t.Errorf("%s: %d mutations committed, want %d", dev, len(mids), perWriter)
		}
		if st := e.device(t, dev); st.LastMutationID != uint64(perWriter) {
			t.Errorf("%s: LastMutationID %d, want %d", dev, st.LastMutationID, perWriter)
		}
		if r := e.receipt(t, dev, uint64(perWriter)); r.Outcome != storage.Merged {
			t.Errorf("%s: Receipt(%d) = %+v, want the stored receipt", dev, perWriter, r)
		}
	}
	if len(versions) != len(hot)+writers {
		t.Errorf("%d documents written, want %d", len(versions), len(hot)+writers)
	}
	for doc := range versions {
		if got := e.latest(t, scopeA, doc); got.Version != versions[doc] {
			t.Errorf("Latest(%s) = v%d, want v%d", doc, got.Version, versions[doc])
		}
	}
}

func testContextCanceled(t *testing.T, e *env) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n, err := e.s.Commit(ctx, batch(entry(scopeA, 1, "n1", 1, e.alice, 1)))
	if !errors.Is(err, context.Canceled) || n != 0 {
		t.Errorf("Commit(canceled) = %d, %v; want 0, context.Canceled", n, err)
	}
	if h := e.head(t, scopeA); h != 0 {
		t.Errorf("Head = %d after a canceled Commit, want 0", h)
	}
	b := batch(entry(scopeA, 1, "n1", 1, e.alice, 1))
	b.Conflicts = []storage.ConflictRecord{conflictRec(scopeA, "c1", e.alice, 1)}
	e.commit(t, b)
	calls := map[string]func() error{
		"Head":           func() error { _, err := e.s.Head(ctx, scopeA); return err },
		"Latest":         func() error { _, err := e.s.Latest(ctx, scopeA, notes, "n1"); return err },
		"Version":        func() error { _, err := e.s.Version(ctx, scopeA, notes, "n1", 1); return err },
		"Read":           func() error { _, err := e.s.Read(ctx, scopeA, 0, math.MaxUint64, 10); return err },
		"Compact":        func() error { _, err := e.s.Compact(ctx, scopeA, e.clock.Now().Add(time.Hour)); return err },
		"SaveCheckpoint": func() error { return e.s.SaveCheckpoints(ctx, e.alice, map[string]uint64{scopeA: 1}, e.clock.Now()) },
		"Conflict":       func() error { _, err := e.s.Conflict(ctx, scopeA, "c1"); return err },
		"ListConflicts":  func() error { _, err := e.s.ListConflicts(ctx, scopeA, false, "", 10); return err },
		"AgeConflicts": func() error {
			_, _, err := e.s.AgeConflicts(ctx, e.clock.Now().Add(time.Hour), e.clock.Now().Add(time.Hour))
			return err
		},
		"Commit(conflicts only)": func() error {
			_, err := e.s.Commit(ctx, conflictsOnly(scopeA, conflictRec(scopeA, "c2", e.alice, 2)))
			return err
		},
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s(canceled) = %v, want context.Canceled", name, err)
		}
	}
}

func testClosed(t *testing.T, e *env) {
	ctx := context.Background()
	e.commit(t, batch(entry(scopeA, 1, "n1", 1, e.alice, 1)))
	if err := e.s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	now := e.clock.Now()
	calls := map[string]func() error{
		"Close":  func() error { return e.s.Close(ctx) },
		"Head":   func() error { _, err := e.s.Head(ctx, scopeA); return err },
		"Latest": func() error { _, err := e.s.Latest(ctx, scopeA, notes, "n1"); return err },
		"Read":   func() error { _, err := e.s.Read(ctx, scopeA, 0, math.MaxUint64, 10); return err },
		"Commit": func() error {
			_, err := e.s.Commit(ctx, batch(entry(scopeA, 2, "n1", 2, e.alice, 2)))
			return err
		},
		"Horizon":         func() error { _, err := e.s.Horizon(ctx, scopeA); return err },
		"Scopes":          func() error { _, err := e.s.Scopes(ctx, "", 10); return err },
		"Compact":         func() error { _, err := e.s.Compact(ctx, scopeA, now); return err },
		"Receipt":         func() error { _, err := e.s.Receipt(ctx, e.alice, 1); return err },
		"Device":          func() error { _, err := e.s.Device(ctx, e.alice); return err },
		"SaveCheckpoints": func() error { return e.s.SaveCheckpoints(ctx, e.alice, nil, now) },
		"ExpireReceipts":  func() error { _, err := e.s.ExpireReceipts(ctx, now); return err },
		"Version":         func() error { _, err := e.s.Version(ctx, scopeA, notes, "n1", 1); return err },
		"Conflict":        func() error { _, err := e.s.Conflict(ctx, scopeA, "c1"); return err },
		"ListConflicts":   func() error { _, err := e.s.ListConflicts(ctx, scopeA, false, "", 10); return err },
		"AgeConflicts":    func() error { _, _, err := e.s.AgeConflicts(ctx, now, now); return err },
		"Commit(conflicts only)": func() error {
			_, err := e.s.Commit(ctx, conflictsOnly(scopeA, conflictRec(scopeA, "c2", e.alice, 2)))
			return err
		},
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, storage.ErrClosed) {
			t.Errorf("%s after Close = %v, want storage.ErrClosed", name, err)
		}
	}
}
