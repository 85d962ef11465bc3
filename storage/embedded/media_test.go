package embedded

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/syncgate/syncgate/storage"
)

// TestMediaLeftovers: what a crash leaves (temporary files, a blob file
// renamed in before its transaction, an upload directory without its
// upload) is removed by the next NewMedia, and live media and uploads are
// kept.
func TestMediaLeftovers(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "syncgate.db")
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMedia(s, MediaOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if m.Dir() != filepath.Join(dir, "media") {
		t.Fatalf("media dir %s", m.Dir())
	}
	info, err := m.Put(ctx, "user:alice", "image/png", bytes.NewReader([]byte("live")), 100)
	if err != nil {
		t.Fatal(err)
	}
	up, err := m.CreateUpload(ctx, "user:alice", storage.UploadSpec{Size: 4, MIME: "image/png", PartBytes: 2, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.PutPart(ctx, "user:alice", up.ID, 1, bytes.NewReader([]byte("ab")), ""); err != nil {
		t.Fatal(err)
	}
	orphan := storage.NewMediaID()
	leftovers := []string{
		filepath.Join(m.dir, dirTmp, "put-123"),
		filepath.Join(m.dir, dirBlobs, orphan[:2], orphan),
		filepath.Join(m.dir, dirUploads, storage.NewMediaID(), "1"),
	}
	for _, p := range leftovers {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}

	s, err = Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if m, err = NewMedia(s, MediaOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range leftovers {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("leftover %s: %v, want removed", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(m.dir, dirUploads, filepath.Base(filepath.Dir(leftovers[2])))); !errors.Is(err, fs.ErrNotExist) {
		t.Error("the orphaned upload directory is left")
	}
	r, err := m.Open(ctx, "user:alice", info.ID)
	if err != nil {
		t.Fatalf("live media after restart: %v", err)
	}
	r.Close()
	st, err := m.StatUpload(ctx, "user:alice", up.ID)
	if err != nil || len(st.Received) != 1 {
		t.Fatalf("live upload after restart: %+v, %v", st, err)
	}
	if _, err := m.PutPart(ctx, "user:alice", up.ID, 2, bytes.NewReader([]byte("cd")), ""); err != nil {
		t.Fatal(err)
	}
	if got, err := m.CompleteUpload(ctx, "user:alice", up.ID); err != nil || got.Size != 4 {
		t.Fatalf("complete after restart: %+v, %v", got, err)
	}
	if _, err := os.Stat(m.uploadDir(up.ID)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the completed upload's parts are left: %v", err)
	}
	// Closed: every call says so.
	s.Close(ctx)
	if _, err := m.Stat(ctx, "user:alice", info.ID); !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("Stat on a closed store: %v", err)
	}
	if _, err := m.Put(ctx, "user:alice", "image/png", bytes.NewReader(nil), 10); !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("Put on a closed store: %v", err)
	}
}
