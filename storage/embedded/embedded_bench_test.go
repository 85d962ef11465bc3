package embedded

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/hlc"
)

// benchDocs is how many documents the benchmarks rewrite in turn.
const benchDocs = 100

// benchEntry is a typical small document change (about 400 bytes of JSON).
func benchEntry(seq uint64) storage.Entry {
	ts := hlc.Timestamp{Wall: 1_760_000_000_000 + int64(seq), Node: "phone"}
	return storage.Entry{
		Scope:      "user:alice",
		Seq:        seq,
		Collection: "notes",
		DocID:      fmt.Sprintf("note-%03d", seq%benchDocs),
		Version:    (seq-1)/benchDocs + 1,
		Op:         storage.OpPatch,
		State: map[string]any{
			"title": "Shopping list", "body": "milk, eggs, bread, coffee, apples",
			"done": false, "tags": []any{"home", "weekly"}, "position": float64(seq),
		},
		Clocks:     map[string]hlc.Timestamp{"title": ts, "body": ts, "done": ts, "tags": ts, "position": ts},
		Device:     storage.DeviceRef{User: "alice", Device: "phone"},
		MutationID: seq,
		HLC:        ts,
	}
}

func encodedSize(b *testing.B) int {
	v, err := json.Marshal(benchEntry(1))
	if err != nil {
		b.Fatal(err)
	}
	return len(v)
}

// benchCommit commits per entries per Commit, seqs and versions always
// winning, so it measures the uncontended commit path.
func benchCommit(b *testing.B, per int) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(b.TempDir(), "bench.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(ctx)
	b.SetBytes(int64(encodedSize(b) * per))
	var seq uint64
	ops := 0
	for b.Loop() {
		batch := &storage.Batch{Scope: "user:alice", Entries: make([]storage.Entry, per)}
		for i := range batch.Entries {
			seq++
			batch.Entries[i] = benchEntry(seq)
		}
		if n, err := s.Commit(ctx, batch); err != nil || n != per {
			b.Fatalf("Commit = %d, %v", n, err)
		}
		ops++
	}
	b.ReportMetric(float64(ops*per)/b.Elapsed().Seconds(), "entries/s")
}

// benchRawPut puts the same encoded entries into a plain bbolt bucket, one
// Update per op: the floor the store's Commit is compared against.
func benchRawPut(b *testing.B, per int) {
	db, err := bbolt.Open(filepath.Join(b.TempDir(), "raw.db"), 0o600, boltOptions())
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucket([]byte(bucketLog))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(encodedSize(b) * per))
	var seq uint64
	ops := 0
	values := make([][]byte, per)
	for b.Loop() {
		// Encode outside the transaction, as Commit does.
		for i := range values {
			seq++
			v, err := json.Marshal(benchEntry(seq))
			if err != nil {
				b.Fatal(err)
			}
			values[i] = v
		}
		first := seq - uint64(per) + 1
		err := db.Update(func(tx *bbolt.Tx) error {
			bk := tx.Bucket([]byte(bucketLog))
			bk.FillPercent = logFillPercent
			for i, v := range values {
				if err := bk.Put(seqKey(first+uint64(i)), v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		ops++
	}
	b.ReportMetric(float64(ops*per)/b.Elapsed().Seconds(), "entries/s")
}

func BenchmarkCommitSingle(b *testing.B)       { benchCommit(b, 1) }
func BenchmarkCommitBatch100(b *testing.B)     { benchCommit(b, 100) }
func BenchmarkRawBoltPutSingle(b *testing.B)   { benchRawPut(b, 1) }
func BenchmarkRawBoltPutBatch100(b *testing.B) { benchRawPut(b, 100) }
