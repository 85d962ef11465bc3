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

// The commit benchmarks pair Commit with its floor on the same server and
// in the same run: every iteration makes one Commit of per entries and one
// raw ordered InsertMany of the same encoded log documents into a plain
// collection (no secondary index, no checks, no views, no device mark),
// in alternating order, each timed on its own. They report both
// throughputs and commit/raw, the share of the raw insert rate that Commit
// keeps. The servers must be up (SYNCGATE_MONGO_URI; make bench starts
// them): without it the benchmarks fail, they do not skip.
//
//	tools/testenv.sh go test -run '^$' -bench Commit -benchtime 3s ./storage/mongo/
//
// log-entries is the log's size at the end. On FerretDB (the test server)
// every read but a point read by _id scans the whole collection, so
// Commit's checks get slower as the log grows, and the ratio depends on
// how long the benchmark ran; on MongoDB they are index lookups.

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

// pair times two operations run once per iteration, the first one first
// on even iterations and last on odd ones, so that neither always runs on
// a server the other has just warmed or loaded.
type pair struct {
	a, b time.Duration
	n    int
}

func (p *pair) run(a, b func()) {
	timed := func(f func(), into *time.Duration) {
		start := time.Now()
		f()
		*into += time.Since(start)
	}
	if p.n%2 == 0 {
		timed(a, &p.a)
		timed(b, &p.b)
	} else {
		timed(b, &p.b)
		timed(a, &p.a)
	}
	p.n++
}

// report gives each side's rate of units per second and the ratio of the
// rates (a's over b's).
func (p *pair) report(tb *testing.B, units float64, aName, bName, unit string) {
	if p.n == 0 || p.a <= 0 || p.b <= 0 {
		tb.Fatal("nothing measured")
	}
	ra, rb := units*float64(p.n)/p.a.Seconds(), units*float64(p.n)/p.b.Seconds()
	tb.ReportMetric(ra, aName+"-"+unit)
	tb.ReportMetric(rb, bName+"-"+unit)
	tb.ReportMetric(ra/rb, aName+"/"+bName)
}

// benchCommit pairs a Commit of per entries, seqs and versions always
// winning (the uncontended commit path: checks, ordered insert, views,
// device mark), with a raw InsertMany of the same entries.
func benchCommit(b *testing.B, per int) {
	ctx := context.Background()
	s := openDB(b, testDatabase(b), Options{})
	raw := s.Database().Collection("raw")
	var p pair
	var seq, rawSeq uint64
	docs := make([]logDoc, per)
	for b.Loop() {
		p.run(func() {
			batch := &storage.Batch{Scope: "user:alice", Entries: make([]storage.Entry, per)}
			for i := range batch.Entries {
				seq++
				batch.Entries[i] = benchEntry(seq)
			}
			batch.Device, batch.LastMutationID = batch.Entries[0].Device, seq
			if n, err := s.Commit(ctx, batch); err != nil || n != per {
				b.Fatalf("Commit = %d, %v", n, err)
			}
		}, func() {
			now := time.Now()
			for i := range docs {
				rawSeq++
				var err error
				if docs[i], _, err = encodeEntry(benchEntry(rawSeq), now); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := raw.InsertMany(ctx, docs, options.InsertMany().SetOrdered(true)); err != nil {
				b.Fatal(err)
			}
		})
	}
	p.report(b, float64(per), "commit", "raw", "entries/s")
	b.ReportMetric(float64(seq), "log-entries")
}

func BenchmarkCommitSingle(b *testing.B)   { benchCommit(b, 1) }
func BenchmarkCommitBatch100(b *testing.B) { benchCommit(b, 100) }
