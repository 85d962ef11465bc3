package embedded

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// The media benchmarks compare the store with the least a durable file
// write costs (write to a temporary file, fsync, rename, fsync the
// directory), so the ratio is the store's overhead (SHA-256, the bbolt
// transaction with its fsync):
//
//	go test -run '^$' -bench Media -benchtime 20x ./storage/embedded/

const benchBlob = 8 << 20

func benchBlobData(i int) []byte {
	data := make([]byte, benchBlob)
	for j := range data {
		data[j] = byte(j * 7)
	}
	binary.BigEndian.PutUint64(data, uint64(i))
	binary.BigEndian.PutUint64(data[8:], rand.Uint64()) // and across reruns of a benchmark // distinct content: no dedupe
	return data
}

func BenchmarkMediaPut(b *testing.B) {
	s, err := Open(context.Background(), filepath.Join(b.TempDir(), "syncgate.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(context.Background())
	m, err := NewMedia(s, MediaOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.Run("store", func(b *testing.B) {
		b.SetBytes(benchBlob)
		for i := 0; b.Loop(); i++ {
			if _, err := m.Put(ctx, "user:bench", "video/mp4", bytes.NewReader(benchBlobData(i)), benchBlob); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("file", func(b *testing.B) {
		dir := b.TempDir()
		b.SetBytes(benchBlob)
		for i := 0; b.Loop(); i++ {
			f, err := os.CreateTemp(dir, "tmp-*")
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(f, bytes.NewReader(benchBlobData(i))); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			f.Close()
			if err := os.Rename(f.Name(), filepath.Join(dir, "blob")); err != nil {
				b.Fatal(err)
			}
			if err := syncDir(dir); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkMediaRead(b *testing.B) {
	s, err := Open(context.Background(), filepath.Join(b.TempDir(), "syncgate.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(context.Background())
	m, err := NewMedia(s, MediaOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	info, err := m.Put(ctx, "user:bench", "video/mp4", bytes.NewReader(benchBlobData(0)), benchBlob)
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
			if _, err := io.Copy(io.Discard, r); err != nil {
				b.Fatal(err)
			}
			r.Close()
		}
	})
	b.Run("file", func(b *testing.B) {
		b.SetBytes(benchBlob)
		for b.Loop() {
			f, err := os.Open(m.blobPath(info.ID))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, f); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
}
