package mongo

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/hlc"
)

// benchDocs is how many documents the benchmarks rewrite in turn (as in
// the embedded store's benchmarks).
const benchDocs = 100

// benchEntry is a typical small document change (the embedded store's
// benchmark entry).
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

// benchCommit commits per entries per Commit, seqs and versions always
// winning: the uncontended commit path (checks, ordered insert, views).
func benchCommit(b *testing.B, per int) {
	ctx := context.Background()
	s := openDB(b, testDatabase(b), Options{})
	var seq uint64
	ops := 0
	for b.Loop() {
		batch := &storage.Batch{Scope: "user:alice", Entries: make([]storage.Entry, per)}
		for i := range batch.Entries {
			seq++
			batch.Entries[i] = benchEntry(seq)
		}
		batch.Device, batch.LastMutationID = batch.Entries[0].Device, seq
		if n, err := s.Commit(ctx, batch); err != nil || n != per {
			b.Fatalf("Commit = %d, %v", n, err)
		}
		ops++
	}
	b.ReportMetric(float64(ops*per)/b.Elapsed().Seconds(), "entries/s")
}

// benchRawInsert inserts the same encoded log documents with one ordered
// InsertMany per op into a plain collection without secondary indexes:
// the floor Commit is compared against.
func benchRawInsert(b *testing.B, per int) {
	ctx := context.Background()
	s := openDB(b, testDatabase(b), Options{})
	raw := s.Database().Collection("raw")
	var seq uint64
	ops := 0
	docs := make([]logDoc, per)
	now := time.Now()
	for b.Loop() {
		for i := range docs {
			seq++
			var err error
			if docs[i], _, err = encodeEntry(benchEntry(seq), now); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := raw.InsertMany(ctx, docs, options.InsertMany().SetOrdered(true)); err != nil {
			b.Fatal(err)
		}
		ops++
	}
	b.ReportMetric(float64(ops*per)/b.Elapsed().Seconds(), "entries/s")
}

func BenchmarkCommitSingle(b *testing.B)        { benchCommit(b, 1) }
func BenchmarkCommitBatch100(b *testing.B)      { benchCommit(b, 100) }
func BenchmarkRawInsertManySingle(b *testing.B) { benchRawInsert(b, 1) }
func BenchmarkRawInsertMany100(b *testing.B)    { benchRawInsert(b, 100) }
