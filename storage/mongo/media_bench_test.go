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

// The media benchmarks compare the store with the driver's own GridFS on
// the same bytes and server, so the ratio is the store's overhead
// (SHA-256, the _sg_media insert, the pending/final files document):
//
//	go test -run '^$' -bench Media -benchtime 20x ./storage/mongo/
//
// Each upload gets distinct content (its first 8 bytes are a counter), so
// no Put is deduplicated.

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

func BenchmarkMediaUpload(b *testing.B) {
	m, raw := benchMedia(b)
	ctx := context.Background()
	b.Run("store", func(b *testing.B) {
		b.SetBytes(benchBlob)
		for i := 0; b.Loop(); i++ {
			if _, err := m.Put(ctx, "user:bench", "video/mp4", bytes.NewReader(benchData(i)), benchBlob); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("gridfs", func(b *testing.B) {
		b.SetBytes(benchBlob)
		for i := 0; b.Loop(); i++ {
			if _, err := raw.UploadFromStream(ctx, "bench", bytes.NewReader(benchData(i))); err != nil {
				b.Fatal(err)
			}
		}
	})
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
	b.Run("store", func(b *testing.B) {
		b.SetBytes(benchBlob)
		for b.Loop() {
			r, err := m.Open(ctx, "user:bench", info.ID)
			if err != nil {
				b.Fatal(err)
			}
			if n, err := io.Copy(io.Discard, r); err != nil || n != benchBlob {
				b.Fatal(n, err)
			}
			r.Close()
		}
	})
	b.Run("gridfs", func(b *testing.B) {
		b.SetBytes(benchBlob)
		for b.Loop() {
			if n, err := raw.DownloadToStream(ctx, rawID, io.Discard); err != nil || n != benchBlob {
				b.Fatal(n, err)
			}
		}
	})
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
	b.Run("store-seek", func(b *testing.B) {
		b.SetBytes(n)
		for b.Loop() {
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
		}
	})
	b.Run("gridfs-skip", func(b *testing.B) {
		b.SetBytes(n)
		for b.Loop() {
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
		}
	})
}
