package mongo

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"testing"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// The media benchmarks pair the store with the driver's own GridFS on the
// same bytes and server, in the same run, so the ratio is the store's
// overhead (SHA-256, the _sg_media insert, the pending/final files
// document): every iteration runs one store operation and one driver
// operation, in alternating order, each timed on its own, and the
// benchmark reports both rates and store/gridfs (above 1: the store is
// faster). ns/op is the pair's. The servers must be up
// (SYNCGATE_MONGO_URI; make bench starts them): without it the benchmarks
// fail, they do not skip.
//
//	tools/testenv.sh go test -run '^$' -bench Media -benchtime 5x ./storage/mongo/
//
// Each upload gets distinct content (its first 16 bytes are a counter and
// a random number), so no Put is deduplicated.

const benchBlob = 8 << 20

func benchMedia(b *testing.B) (*Media, *mongo.GridFSBucket) {
	b.Helper()
	s := openDB(b, testDatabase(b), Options{})
	m, err := NewMedia(context.Background(), s, MediaOptions{})
	if err != nil {
		b.Fatal(err)
	}
	// The driver's bucket, on its own collections, with the same chunk size.
	raw := s.db.GridFSBucket(options.GridFSBucket().SetName("raw").SetChunkSizeBytes(DefaultChunkBytes))
	return m, raw
}

func benchData(i int) []byte {
	data := make([]byte, benchBlob)
	for j := range data {
		data[j] = byte(j * 7)
	}
	binary.BigEndian.PutUint64(data, uint64(i))
	binary.BigEndian.PutUint64(data[8:], rand.Uint64()) // and across reruns of a benchmark
	return data
}

// mb is the megabyte of the MB/s the benchmarks report (as b.SetBytes does).
const mb = 1e6

func BenchmarkMediaUpload(b *testing.B) {
	m, raw := benchMedia(b)
	ctx := context.Background()
	var p pair
	for i := 0; b.Loop(); i++ {
		store, driver := benchData(2*i), benchData(2*i+1) // made outside the timed parts
		p.run(func() {
			if _, err := m.Put(ctx, "user:bench", "video/mp4", bytes.NewReader(store), benchBlob); err != nil {
				b.Fatal(err)
			}
		}, func() {
			if _, err := raw.UploadFromStream(ctx, "bench", bytes.NewReader(driver)); err != nil {
				b.Fatal(err)
			}
		})
	}
	p.report(b, benchBlob/mb, "store", "gridfs", "MB/s")
}

func BenchmarkMediaDownload(b *testing.B) {
	m, raw := benchMedia(b)
	ctx := context.Background()
	data := benchData(1)
	info, err := m.Put(ctx, "user:bench", "video/mp4", bytes.NewReader(data), benchBlob)
	if err != nil {
		b.Fatal(err)
	}
	rawID, err := raw.UploadFromStream(ctx, "bench", bytes.NewReader(data))
	if err != nil {
		b.Fatal(err)
	}
	var p pair
	for b.Loop() {
		p.run(func() {
			r, err := m.Open(ctx, "user:bench", info.ID)
			if err != nil {
				b.Fatal(err)
			}
			if n, err := io.Copy(io.Discard, r); err != nil || n != benchBlob {
				b.Fatal(n, err)
			}
			r.Close()
		}, func() {
			if n, err := raw.DownloadToStream(ctx, rawID, io.Discard); err != nil || n != benchBlob {
				b.Fatal(n, err)
			}
		})
	}
	p.report(b, benchBlob/mb, "store", "gridfs", "MB/s")
}

// BenchmarkMediaTailRange reads the last 64 KiB of an 8 MiB blob, as a
// Range request does: the store's reader queries from the chunk holding
// the offset; the driver's stream can only Skip, which fetches every
// chunk before it.
func BenchmarkMediaTailRange(b *testing.B) {
	m, raw := benchMedia(b)
	ctx := context.Background()
	data := benchData(2)
	info, err := m.Put(ctx, "user:bench", "video/mp4", bytes.NewReader(data), benchBlob)
	if err != nil {
		b.Fatal(err)
	}
	rawID, err := raw.UploadFromStream(ctx, "bench", bytes.NewReader(data))
	if err != nil {
		b.Fatal(err)
	}
	const n = 64 << 10
	want := data[benchBlob-n:]
	buf := make([]byte, n)
	var p pair
	for b.Loop() {
		p.run(func() {
			r, err := m.Open(ctx, "user:bench", info.ID)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := r.Seek(-n, io.SeekEnd); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(r, buf); err != nil || !bytes.Equal(buf, want) {
				b.Fatal(err)
			}
			r.Close()
		}, func() {
			ds, err := raw.OpenDownloadStream(ctx, rawID)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := ds.Skip(benchBlob - n); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(ds, buf); err != nil || !bytes.Equal(buf, want) {
				b.Fatal(err)
			}
			ds.Close()
		})
	}
	p.report(b, float64(n)/mb, "store-seek", "gridfs-skip", "MB/s")
}
