package engine_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/protocol"
)

// The engine benchmarks push through the whole commit pipeline (validate,
// idempotency, resolve, one bbolt transaction with fsync). The RawBolt
// benchmarks put the same entry bytes into a plain bbolt bucket with one
// Update per batch, so `make bench` can report engine/raw as a ratio that
// is stable on a noisy machine.

func benchDoc(i int) map[string]any {
	return map[string]any{"title": fmt.Sprintf("todo %d", i), "done": i%2 == 0, "prio": float64(i % 5)}
}

func benchPush(b *testing.B, batch int) {
	h := newHarness(b, nil)
	d := newDevice(alice("bench"))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		muts := make([]protocol.Mutation, batch)
		for j := range muts {
			muts[j] = d.next(put(fmt.Sprintf("d%d", (i*batch+j)%1000), benchDoc(j)))
		}
		res, err := h.eng.Push(context.Background(), d.p, muts)
		if err != nil || res[len(res)-1].Outcome == storage.Rejected {
			b.Fatalf("%v %+v", err, res[len(res)-1])
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "mutations/s")
}

func BenchmarkPushSingle(b *testing.B)   { benchPush(b, 1) }
func BenchmarkPushBatch100(b *testing.B) { benchPush(b, 100) }

func benchRawBolt(b *testing.B, batch int) {
	db, err := bolt.Open(b.TempDir()+"/raw.db", 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	entry, _ := json.Marshal(storage.Entry{Scope: "user:alice", Collection: "todos", DocID: "d1", Version: 1, Op: storage.Op(conflict.Put), State: benchDoc(1)})
	var seq uint64
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		err := db.Update(func(tx *bolt.Tx) error {
			bk, err := tx.CreateBucketIfNotExists([]byte("log"))
			if err != nil {
				return err
			}
			for j := 0; j < batch; j++ {
				seq++
				if err := bk.Put(binary.BigEndian.AppendUint64(nil, seq), entry); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "mutations/s")
}

func BenchmarkRawBoltSingle(b *testing.B)   { benchRawBolt(b, 1) }
func BenchmarkRawBoltBatch100(b *testing.B) { benchRawBolt(b, 100) }

// benchContended pushes batches of 100 from two devices of one user. In
// the contended variants, 10% of each batch edits documents the other
// device changed since this device last saw them (a stale base): under lww
// they are merged per field, under manual they open conflict records. The
// ratio against the conflict-free variant is the cost of conflicts.
func benchContended(b *testing.B, collection string, conflictEvery int) {
	h := newHarnessWith(b, map[string]conflict.CollectionConfig{
		"notes":  {Resolver: "lww"},
		"drafts": {Resolver: "manual"},
	})
	phone, laptop := newDevice(alice("phone")), newDevice(alice("laptop"))
	laptop.wallMs += 1 << 20
	versions := map[string]uint64{} // as the server has them
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := phone
		if i%2 == 1 {
			d = laptop
		}
		muts := make([]protocol.Mutation, 100)
		for j := range muts {
			id := fmt.Sprintf("d%d", (i*100+j)%5000)
			base := versions[id]
			if conflictEvery > 0 && j%conflictEvery == 0 && base > 0 {
				id = fmt.Sprintf("hot%d", j)
				base = 0 // never saw the other device's edits: concurrent
			}
			muts[j] = d.next(protocol.Mutation{Collection: collection, DocID: id, Op: conflict.Put, Base: base, Data: benchDoc(j)})
		}
		res, err := h.eng.Push(context.Background(), d.p, muts)
		if err != nil {
			b.Fatal(err)
		}
		for j, r := range res {
			if r.Outcome == storage.Rejected {
				b.Fatalf("%+v", r)
			}
			if r.Version > 0 {
				versions[muts[j].DocID] = r.Version
			}
		}
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "mutations/s")
}

func BenchmarkPushBatch100ConflictFree(b *testing.B) { benchContended(b, "notes", 0) }
func BenchmarkPushBatch100LWW10pct(b *testing.B)     { benchContended(b, "notes", 10) }
func BenchmarkPushBatch100Manual10pct(b *testing.B)  { benchContended(b, "drafts", 10) }
