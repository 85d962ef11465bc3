package embedded

import (
	"context"
	"errors"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/syncgate/syncgate/storage"
)

// commitVersions commits n versions of each of docs, interleaved, in
// batches of per entries, starting after head; it returns the new head.
func commitVersions(t *testing.T, s *Store, scope string, docs []string, n, per int, head uint64) uint64 {
	t.Helper()
	ctx := context.Background()
	version := map[string]uint64{}
	for _, d := range docs {
		e, err := s.Latest(ctx, scope, "notes", d)
		if err == nil {
			version[d] = e.Version
		}
	}
	var pending []storage.Entry
	flush := func() {
		if _, err := s.Commit(ctx, &storage.Batch{Scope: scope, Entries: pending}); err != nil {
			t.Fatal(err)
		}
		pending = nil
	}
	for i := 0; i < n; i++ {
		for _, d := range docs {
			head++
			version[d]++
			pending = append(pending, put(scope, head, d, version[d], 0))
			if len(pending) == per {
				flush()
			}
		}
	}
	if len(pending) > 0 {
		flush()
	}
	return head
}

// wantVersions checks that Version finds every version of doc in [from, to]
// and nothing outside it.
func wantVersions(t *testing.T, s *Store, scope, doc string, from, to uint64) {
	t.Helper()
	ctx := context.Background()
	for v := uint64(0); v <= to+1; v++ {
		e, err := s.Version(ctx, scope, "notes", doc, v)
		if v < from || v > to {
			if !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("Version(%s v%d) = seq %d, %v; want ErrNotFound", doc, v, e.Seq, err)
			}
			continue
		}
		if err != nil || e.Version != v || e.DocID != doc {
			t.Fatalf("Version(%s v%d) = %s v%d, %v", doc, v, e.DocID, e.Version, err)
		}
	}
}

// TestChainFindsEveryVersion: long histories, several documents in one
// batch, and compaction removing the oldest versions.
func TestChainFindsEveryVersion(t *testing.T) {
	s := openChecked(t, nil)
	head := commitVersions(t, s, "s", []string{"a", "b", "c"}, 700, 64, 0)
	for _, d := range []string{"a", "b", "c"} {
		wantVersions(t, s, "s", d, 1, 700)
	}
	checkLayout(t, s)

	// Compact everything older than now, then add 300 more versions: only
	// the surviving latest and the new ones are found.
	if _, err := s.Compact(context.Background(), "s", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	commitVersions(t, s, "s", []string{"a", "b"}, 300, 100, head)
	wantVersions(t, s, "s", "a", 700, 1000)
	wantVersions(t, s, "s", "c", 700, 700)
}

// TestChainWalkIsShort: finding version 1 of a document with many versions
// takes O(log n) steps.
func TestChainWalkIsShort(t *testing.T) {
	s := openChecked(t, nil)
	const n = 5000
	commitVersions(t, s, "s", []string{"hot"}, n, 500, 0)
	err := s.db.View(func(tx *bbolt.Tx) error {
		sc := scopeBucket(tx, "s")
		chain, docs := sc.Bucket([]byte(bucketChain)), sc.Bucket([]byte(bucketDocs))
		latest, err := docLatest(docs, docKey("notes", "hot"))
		if err != nil {
			return err
		}
		worst := 0
		for v := uint64(1); v <= n; v += 7 {
			steps := 0
			for cur, curV := latest.seq, latest.version; curV > v; steps++ {
				l, _, _ := getLink(chain, cur)
				if l.jump != 0 && l.jumpVersion >= v {
					cur, curV = l.jump, l.jumpVersion
				} else {
					cur, curV = l.prev, curV-1
				}
			}
			worst = max(worst, steps)
		}
		if worst > 3*13 { // 3·log2(5000)
			t.Errorf("the longest walk took %d steps", worst)
		}
		t.Logf("longest walk over %d versions: %d steps", n, worst)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestMigrateV1 turns a file back into the version 1 layout (no chain, no
// conflicts bucket) and checks that Open rebuilds the index, across
// migration chunks, scopes, a compacted gap and a document that a schema 1
// store purged and restarted from version 1.
func TestMigrateV1(t *testing.T) {
	ctx := context.Background()
	s, path := openTemp(t, nil)
	head := commitVersions(t, s, "big", []string{"x", "y"}, (migrateChunk+500)/2, 1000, 0)
	del := put("small", 2, "gone", 2, 0)
	del.Op, del.State, del.Deleted = storage.OpDelete, nil, true
	for _, e := range []storage.Entry{put("small", 1, "gone", 1, 0), del, put("small", 3, "a", 1, 0), put("small", 4, "a", 2, 0), put("small", 5, "a", 3, 0)} {
		if _, err := s.Commit(ctx, &storage.Batch{Scope: "small", Entries: []storage.Entry{e}}); err != nil {
			t.Fatal(err)
		}
	}
	// Purge "gone" and compact a v1 away, then write more after the cutoff.
	// A schema 1 store deleted a purged document's docs key rather than
	// keeping a marker, and a document could then start again from v1.
	if _, err := s.Compact(ctx, "small", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(tx *bbolt.Tx) error {
		return scopeBucket(tx, "small").Bucket([]byte(bucketDocs)).Delete(docKey("notes", "gone"))
	}); err != nil {
		t.Fatal(err)
	}
	for _, e := range []storage.Entry{put("small", 6, "gone", 1, 0), put("small", 7, "a", 4, 0)} {
		if _, err := s.Commit(ctx, &storage.Batch{Scope: "small", Entries: []storage.Entry{e}}); err != nil {
			t.Fatal(err)
		}
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		for _, scope := range []string{"big", "small"} {
			if err := scopeBucket(tx, scope).DeleteBucket([]byte(bucketChain)); err != nil {
				return err
			}
		}
		if err := tx.DeleteBucket([]byte(bucketConflicts)); err != nil {
			return err
		}
		return tx.Bucket([]byte(bucketMeta)).Put([]byte(keySchema), u64(1))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}

	s2, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatalf("Open of a version 1 file: %v", err)
	}
	t.Cleanup(func() { s2.Close(context.Background()) })
	checkLayout(t, s2)
	n := uint64((migrateChunk + 500) / 2)
	wantVersions(t, s2, "big", "x", 1, n)
	wantVersions(t, s2, "small", "a", 3, 4) // v1 and v2 were compacted
	wantVersions(t, s2, "small", "gone", 1, 1)
	if e, err := s2.Version(ctx, "small", "notes", "gone", 1); err != nil || e.Seq != 6 {
		t.Errorf("Version(gone v1) = seq %d, %v; want the new life's seq 6", e.Seq, err)
	}
	// New commits extend the migrated chain, and conflicts work.
	commitVersions(t, s2, "big", []string{"x"}, 50, 10, head)
	wantVersions(t, s2, "big", "x", 1, n+50)
	c := storage.ConflictRecord{ID: "c", Scope: "big", Status: storage.ConflictOpen}
	if _, err := s2.Commit(ctx, &storage.Batch{Scope: "big", Conflicts: []storage.ConflictRecord{c}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Conflict(ctx, "big", "c"); err != nil {
		t.Errorf("Conflict after migration: %v", err)
	}
	var schema uint64
	s2.db.View(func(tx *bbolt.Tx) error {
		schema = seqOf(tx.Bucket([]byte(bucketMeta)).Get([]byte(keySchema)))
		return nil
	})
	if schema != schemaVersion {
		t.Errorf("schema after migration = %d, want %d", schema, schemaVersion)
	}
	checkLayout(t, s2)
}
