package mongo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/syncgate/syncgate/storage"
)

// TestMediaPendingSweep: blobs that a Put left pending (it died before or
// after its _sg_media insert) are deleted or finalized by the sweep once
// they are a day old, and a finished Put leaves a standard GridFS file that
// the driver's own bucket reads.
func TestMediaPendingSweep(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2025, 10, 1, 12, 0, 0, 0, time.UTC)
	s := openTemp(t, func() time.Time { return now })
	m, err := NewMedia(ctx, s, MediaOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 40_000) // 640 000 bytes: 3 chunks
	info, err := m.Put(ctx, "user:alice", "image/png", bytes.NewReader(data), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var doc mediaDoc
	if _, err := m.findOne(ctx, m.media, bson.D{{Key: "_id", Value: mediaKey("user:alice", info.ID)}}, &doc); err != nil {
		t.Fatal(err)
	}
	bucket := s.db.GridFSBucket(options.GridFSBucket().SetName(DefaultMediaBucket))
	var viaDriver bytes.Buffer
	if _, err := bucket.DownloadToStream(ctx, doc.File, &viaDriver); err != nil || !bytes.Equal(viaDriver.Bytes(), data) {
		t.Fatalf("the driver's GridFS reads %d bytes (%v), want the %d put", viaDriver.Len(), err, len(data))
	}

	// A Put that died after its chunks: pending, no _sg_media document.
	dead := bson.NewObjectID()
	if err := m.insertOne(ctx, m.files, fileDoc{ID: dead, ChunkSize: DefaultChunkBytes, UploadDate: msOf(now),
		Metadata: fileMeta{Scope: "user:alice", Media: mediaKey("user:alice", "gone"), Pending: true}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.writeChunks(ctx, dead, bytes.NewReader(data), 1<<20); err != nil {
		t.Fatal(err)
	}
	// A Put that died after its _sg_media insert: pending again (as Delete
	// leaves it before deleting the document), but the media exists.
	if _, err := m.files.UpdateOne(ctx, bson.D{{Key: "_id", Value: doc.File}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "metadata.pending", Value: true}}}}); err != nil {
		t.Fatal(err)
	}

	count := func(filter bson.D) int64 {
		t.Helper()
		n, err := m.chunk.CountDocuments(ctx, filter)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if _, err := m.SweepUploads(ctx, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if count(bson.D{{Key: "files_id", Value: dead}}) != 3 {
		t.Fatal("the sweep removed a pending blob younger than a day")
	}
	if _, err := m.SweepUploads(ctx, now.Add(25*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n := count(bson.D{{Key: "files_id", Value: dead}}); n != 0 {
		t.Fatalf("%d chunks of the dead blob are left", n)
	}
	if n, _ := m.files.CountDocuments(ctx, bson.D{{Key: "_id", Value: dead}}); n != 0 {
		t.Fatal("the dead blob's files document is left")
	}
	var f fileDoc
	if _, err := m.findOne(ctx, m.files, bson.D{{Key: "_id", Value: doc.File}}, &f); err != nil ||
		f.Metadata.Pending || f.Length != int64(len(data)) || f.Metadata.SHA256 != info.SHA256 {
		t.Fatalf("the live blob after the sweep: %+v, %v; want it finalized", f, err)
	}
	r, err := m.Open(ctx, "user:alice", info.ID)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the live media after the sweep: %d bytes, %v", len(got), err)
	}

	// Delete removes the chunks and the files document too.
	if err := m.Delete(ctx, "user:alice", info.ID); err != nil {
		t.Fatal(err)
	}
	if n := count(bson.D{{Key: "files_id", Value: doc.File}}); n != 0 {
		t.Fatalf("%d chunks left after Delete", n)
	}
	if _, err := m.Stat(ctx, "user:alice", info.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat after Delete: %v", err)
	}
}
