package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/syncgate/syncgate/storage"
)

// MediaOpener opens a new, empty media store for one subtest; like Opener,
// it reads the time only through now and registers the cleanup.
type MediaOpener func(t *testing.T, now func() time.Time) storage.Media

// gridChunk is the GridFS chunk size (255 KiB): the suite reads across its
// boundaries whatever the store's layout, so a chunked store is tested at
// its seams.
const gridChunk = 255 << 10

// RunMedia runs the media conformance suite (storage.Media's contract).
// It keeps data small (a few MB in all) so that it stays quick on the test
// MongoDB server.
func RunMedia(t *testing.T, open MediaOpener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, e *mediaEnv)
	}{
		{"RoundTrip", testMediaRoundTrip},
		{"RangeReads", testMediaRangeReads},
		{"Dedupe", testMediaDedupe},
		{"SizeLimit", testMediaSizeLimit},
		{"ForeignScope", testMediaForeignScope},
		{"Delete", testMediaDelete},
		{"Resumable", testMediaResumable},
		{"PartRetryAndConflict", testMediaParts},
		{"CompleteChecks", testMediaComplete},
		{"UploadExpiry", testMediaExpiry},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &clock{now: epoch()}
			tc.fn(t, &mediaEnv{m: open(t, c.Now), clock: c})
		})
	}
}

type mediaEnv struct {
	m     storage.Media
	clock *clock
}

// blob is n bytes of seeded pseudo-random content.
func blob(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func (e *mediaEnv) put(t *testing.T, scope string, data []byte) storage.MediaInfo {
	t.Helper()
	info, err := e.m.Put(context.Background(), scope, "application/octet-stream", bytes.NewReader(data), 1<<30)
	if err != nil {
		t.Fatalf("Put(%d bytes): %v", len(data), err)
	}
	return info
}

// readAll opens the media and reads it whole.
func (e *mediaEnv) readAll(t *testing.T, scope, id string) []byte {
	t.Helper()
	r, err := e.m.Open(context.Background(), scope, id)
	if err != nil {
		t.Fatalf("Open(%s): %v", id, err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading %s: %v", id, err)
	}
	return data
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: err = %v, want %v", what, err, want)
	}
}

func testMediaRoundTrip(t *testing.T, e *mediaEnv) {
	ctx := context.Background()
	for i, n := range []int{0, 1, gridChunk - 1, gridChunk, gridChunk + 1, 3*gridChunk + 17} {
		data := blob(uint64(i), n)
		info, err := e.m.Put(ctx, scopeA, "image/png", bytes.NewReader(data), int64(n))
		if err != nil {
			t.Fatalf("Put(%d bytes): %v", n, err)
		}
		if !storage.ValidMediaID(info.ID) || info.Scope != scopeA || info.Size != int64(n) || info.MIME != "image/png" ||
			info.SHA256 != sum(data) || !info.Created.Equal(epoch()) || info.Deduped {
			t.Fatalf("Put(%d bytes) = %+v", n, info)
		}
		st, err := e.m.Stat(ctx, scopeA, info.ID)
		if err != nil || st != info {
			t.Fatalf("Stat = %+v, %v; want %+v", st, err, info)
		}
		r, err := e.m.Open(ctx, scopeA, info.ID)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if r.Info() != info || r.Size() != int64(n) {
			t.Errorf("reader Info = %+v, Size %d; want %+v", r.Info(), r.Size(), info)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %d bytes (err %v), want the %d bytes put", len(got), err, n)
		}
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
}

func testMediaRangeReads(t *testing.T, e *mediaEnv) {
	data := blob(7, 3*gridChunk+17)
	info := e.put(t, scopeA, data)
	r, err := e.m.Open(context.Background(), scopeA, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if end, err := r.Seek(0, io.SeekEnd); err != nil || end != int64(len(data)) {
		t.Fatalf("Seek(0, End) = %d, %v; want %d", end, err, len(data))
	}
	size := int64(len(data))
	// Offsets around each chunk boundary, read across it; out of order, so
	// the reader seeks backwards too.
	for _, c := range []struct{ off, n int64 }{
		{gridChunk - 1, 2}, {0, 10}, {2*gridChunk - 5, 10}, {gridChunk, 1}, {gridChunk + 1, gridChunk},
		{3 * gridChunk, 17}, {size - 1, 1}, {100, 2*gridChunk + 50}, {0, size},
	} {
		if pos, err := r.Seek(c.off, io.SeekStart); err != nil || pos != c.off {
			t.Fatalf("Seek(%d) = %d, %v", c.off, pos, err)
		}
		got := make([]byte, c.n)
		if _, err := io.ReadFull(r, got); err != nil {
			t.Fatalf("read %d at %d: %v", c.n, c.off, err)
		}
		if !bytes.Equal(got, data[c.off:c.off+c.n]) {
			t.Fatalf("read %d at %d: wrong bytes", c.n, c.off)
		}
	}
	// Relative seeks, and reading at the end.
	if _, err := r.Seek(gridChunk, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if pos, err := r.Seek(-2, io.SeekCurrent); err != nil || pos != gridChunk-2 {
		t.Fatalf("Seek(-2, Current) = %d, %v", pos, err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, data[gridChunk-2:gridChunk+2]) {
		t.Fatalf("read across the boundary after a relative seek: %v", err)
	}
	if _, err := r.Seek(0, io.SeekEnd); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(got); n != 0 || err != io.EOF {
		t.Fatalf("Read at the end = %d, %v; want 0, EOF", n, err)
	}
	if _, err := r.Seek(-1, io.SeekStart); err == nil {
		t.Fatal("Seek to a negative offset succeeded")
	}
}

func testMediaDedupe(t *testing.T, e *mediaEnv) {
	ctx := context.Background()
	data := blob(3, gridChunk+100)
	first := e.put(t, scopeA, data)
	again, err := e.m.Put(ctx, scopeA, "image/jpeg", bytes.NewReader(data), 1<<30)
	if err != nil || again.ID != first.ID || !again.Deduped || again.MIME != first.MIME {
		t.Fatalf("second Put = %+v, %v; want media %s deduplicated (with its first MIME)", again, err, first.ID)
	}
	other := e.put(t, scopeB, data)
	if other.ID == first.ID || other.Deduped {
		t.Fatalf("Put in another scope = %+v: content is deduplicated per scope only", other)
	}
	// Racing Puts of new content in one scope end with one media.
	racy := blob(4, 2*gridChunk)
	ids := make([]string, 6)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			info, err := e.m.Put(ctx, scopeA, "video/mp4", bytes.NewReader(racy), 1<<30)
			if err != nil {
				t.Errorf("racing Put: %v", err)
			}
			ids[i] = info.ID
		})
	}
	wg.Wait()
	if distinct := slices.Compact(slices.Sorted(slices.Values(ids))); len(distinct) != 1 {
		t.Fatalf("racing Puts of one content made media %v, want one", ids)
	}
	if got := e.readAll(t, scopeA, ids[0]); !bytes.Equal(got, racy) {
		t.Fatal("the deduplicated media does not read back")
	}
}

func testMediaSizeLimit(t *testing.T, e *mediaEnv) {
	ctx := context.Background()
	data := blob(5, gridChunk+1)
	_, err := e.m.Put(ctx, scopeA, "image/png", bytes.NewReader(data), int64(len(data)-1))
	wantErr(t, "Put over the limit", err, storage.ErrTooLarge)
	// Nothing was kept: the same content is new.
	info, err := e.m.Put(ctx, scopeA, "image/png", bytes.NewReader(data), int64(len(data)))
	if err != nil || info.Deduped || info.Size != int64(len(data)) {
		t.Fatalf("Put at the limit = %+v, %v", info, err)
	}
	_, err = e.m.Put(ctx, scopeA, "image/png", bytes.NewReader([]byte("x")), 0)
	wantErr(t, "one byte over a zero limit", err, storage.ErrTooLarge)
}

func testMediaForeignScope(t *testing.T, e *mediaEnv) {
	ctx := context.Background()
	info := e.put(t, scopeA, []byte("private"))
	if _, err := e.m.Stat(ctx, scopeB, info.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat from another scope: %v, want not found", err)
	}
	if _, err := e.m.Open(ctx, scopeB, info.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Open from another scope: %v, want not found", err)
	}
	wantErr(t, "Delete from another scope", e.m.Delete(ctx, scopeB, info.ID), storage.ErrNotFound)
	if _, err := e.m.Stat(ctx, scopeA, info.ID); err != nil {
		t.Fatalf("the media is gone after a foreign delete: %v", err)
	}
	if _, err := e.m.Stat(ctx, scopeA, storage.NewMediaID()); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat of an unknown id: %v", err)
	}

	up, err := e.m.CreateUpload(ctx, scopeA, storage.UploadSpec{Size: 10, MIME: "image/png", PartBytes: 10, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.m.StatUpload(ctx, scopeB, up.ID)
	wantErr(t, "StatUpload from another scope", err, storage.ErrNotFound)
	_, err = e.m.PutPart(ctx, scopeB, up.ID, 1, bytes.NewReader(make([]byte, 10)), "")
	wantErr(t, "PutPart from another scope", err, storage.ErrNotFound)
	_, err = e.m.CompleteUpload(ctx, scopeB, up.ID)
	wantErr(t, "CompleteUpload from another scope", err, storage.ErrNotFound)
	wantErr(t, "AbortUpload from another scope", e.m.AbortUpload(ctx, scopeB, up.ID), storage.ErrNotFound)
	if _, err := e.m.StatUpload(ctx, scopeA, up.ID); err != nil {
		t.Fatalf("the upload is gone after foreign calls: %v", err)
	}
}

func testMediaDelete(t *testing.T, e *mediaEnv) {
	ctx := context.Background()
	data := blob(6, gridChunk+5)
	info := e.put(t, scopeA, data)
	if err := e.m.Delete(ctx, scopeA, info.ID); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	_, err := e.m.Stat(ctx, scopeA, info.ID)
	wantErr(t, "Stat after Delete", err, storage.ErrNotFound)
	_, err = e.m.Open(ctx, scopeA, info.ID)
	wantErr(t, "Open after Delete", err, storage.ErrNotFound)
	wantErr(t, "second Delete", e.m.Delete(ctx, scopeA, info.ID), storage.ErrNotFound)
	// The content is gone for dedupe too: putting it again makes new media.
	again := e.put(t, scopeA, data)
	if again.Deduped || again.ID == info.ID {
		t.Fatalf("Put after Delete = %+v, want new media", again)
	}
	if got := e.readAll(t, scopeA, again.ID); !bytes.Equal(got, data) {
		t.Fatal("media put after a delete of the same content does not read back")
	}
}

// upload creates an upload of data in parts of partBytes.
func (e *mediaEnv) upload(t *testing.T, scope string, data []byte, partBytes int64, sha string) storage.Upload {
	t.Helper()
	up, err := e.m.CreateUpload(context.Background(), scope, storage.UploadSpec{
		Size: int64(len(data)), MIME: "video/mp4", SHA256: sha, PartBytes: partBytes, TTL: 24 * time.Hour,
	})
	if err != nil {
		t.Fatalf("CreateUpload: %v", err)
	}
	return up
}

func part(data []byte, partBytes int64, n int) []byte {
	start := int64(n-1) * partBytes
	return data[start:min(start+partBytes, int64(len(data)))]
}

func (e *mediaEnv) putPart(t *testing.T, up storage.Upload, data []byte, n int) storage.PartInfo {
	t.Helper()
	p := part(data, up.PartBytes, n)
	info, err := e.m.PutPart(context.Background(), up.Scope, up.ID, n, bytes.NewReader(p), sum(p))
	if err != nil {
		t.Fatalf("PutPart(%d): %v", n, err)
	}
	return info
}

func testMediaResumable(t *testing.T, e *mediaEnv) {
	ctx := context.Background()
	const partBytes = 100_000
	data := blob(8, 2*partBytes+gridChunk/5) // 3 parts, the last one short
	up := e.upload(t, scopeA, data, partBytes, sum(data))
	if up.Parts != 3 || up.PartBytes != partBytes || up.Size != int64(len(data)) || up.Scope != scopeA ||
		!storage.ValidMediaID(up.ID) || !up.Created.Equal(epoch()) || !up.Expires.Equal(epoch().Add(24*time.Hour)) || len(up.Received) != 0 {
		t.Fatalf("CreateUpload = %+v", up)
	}
	for _, n := range []int{3, 1} { // out of order
		if pi := e.putPart(t, up, data, n); pi.N != n || pi.Size != int64(len(part(data, partBytes, n))) || pi.Existed {
			t.Fatalf("PutPart(%d) = %+v", n, pi)
		}
	}
	st, err := e.m.StatUpload(ctx, scopeA, up.ID)
	if err != nil || !slices.Equal(st.Received, []int{1, 3}) || st.Media != "" {
		t.Fatalf("StatUpload = %+v, %v; want parts 1 and 3", st, err)
	}
	// Concurrent parts.
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			p := part(data, partBytes, 2)
			if _, err := e.m.PutPart(ctx, scopeA, up.ID, 2, bytes.NewReader(p), ""); err != nil {
				t.Errorf("concurrent PutPart(2): %v", err)
			}
		})
	}
	wg.Wait()
	info, err := e.m.CompleteUpload(ctx, scopeA, up.ID)
	if err != nil || info.Size != int64(len(data)) || info.SHA256 != sum(data) || info.MIME != "video/mp4" || info.Scope != scopeA {
		t.Fatalf("CompleteUpload = %+v, %v", info, err)
	}
	if got := e.readAll(t, scopeA, info.ID); !bytes.Equal(got, data) {
		t.Fatal("the completed upload does not read back")
	}
	// Completing again answers the same media; a part after completion is a conflict.
	again, err := e.m.CompleteUpload(ctx, scopeA, up.ID)
	if err != nil || again.ID != info.ID {
		t.Fatalf("second CompleteUpload = %+v, %v; want media %s", again, err, info.ID)
	}
	_, err = e.m.PutPart(ctx, scopeA, up.ID, 1, bytes.NewReader(part(data, partBytes, 1)), "")
	wantErr(t, "PutPart after completion", err, storage.ErrPartConflict)
	// An upload of content the scope holds is deduplicated.
	dup := e.upload(t, scopeA, data, partBytes, "")
	for n := 1; n <= 3; n++ {
		e.putPart(t, dup, data, n)
	}
	d, err := e.m.CompleteUpload(ctx, scopeA, dup.ID)
	if err != nil || d.ID != info.ID || !d.Deduped {
		t.Fatalf("CompleteUpload of known content = %+v, %v; want media %s deduplicated", d, err, info.ID)
	}
	// An empty upload has no parts and completes at once.
	empty := e.upload(t, scopeA, nil, partBytes, "")
	if empty.Parts != 0 {
		t.Fatalf("empty upload has %d parts", empty.Parts)
	}
	ei, err := e.m.CompleteUpload(ctx, scopeA, empty.ID)
	if err != nil || ei.Size != 0 || ei.SHA256 != sum(nil) {
		t.Fatalf("CompleteUpload(empty) = %+v, %v", ei, err)
	}
}

func testMediaParts(t *testing.T, e *mediaEnv) {
	ctx := context.Background()
	const partBytes = 50_000
	data := blob(9, 2*partBytes+10)
	up := e.upload(t, scopeA, data, partBytes, "")
	e.putPart(t, up, data, 1)
	if pi := e.putPart(t, up, data, 1); !pi.Existed || pi.SHA256 != sum(part(data, partBytes, 1)) {
		t.Fatalf("retried PutPart = %+v, want Existed", pi)
	}
	other := blob(10, partBytes)
	_, err := e.m.PutPart(ctx, scopeA, up.ID, 1, bytes.NewReader(other), "")
	wantErr(t, "conflicting part", err, storage.ErrPartConflict)
	_, err = e.m.PutPart(ctx, scopeA, up.ID, 2, bytes.NewReader(part(data, partBytes, 2)), sum(other))
	wantErr(t, "part with a wrong digest", err, storage.ErrDigestMismatch)
	_, err = e.m.PutPart(ctx, scopeA, up.ID, 2, bytes.NewReader(other[:partBytes-1]), "")
	wantErr(t, "short part", err, storage.ErrBadPart)
	_, err = e.m.PutPart(ctx, scopeA, up.ID, 3, bytes.NewReader(other[:11]), "")
	if !errors.Is(err, storage.ErrTooLarge) && !errors.Is(err, storage.ErrBadPart) {
		t.Fatalf("long last part: %v, want too large", err)
	}
	for _, n := range []int{0, 4, -1} {
		_, err = e.m.PutPart(ctx, scopeA, up.ID, n, bytes.NewReader(nil), "")
		wantErr(t, fmt.Sprintf("part %d of 3", n), err, storage.ErrBadPart)
	}
	// The failed attempts stored nothing; the stored part is intact.
	st, err := e.m.StatUpload(ctx, scopeA, up.ID)
	if err != nil || !slices.Equal(st.Received, []int{1}) {
		t.Fatalf("StatUpload = %+v, %v; want part 1 only", st, err)
	}
	e.putPart(t, up, data, 2)
	e.putPart(t, up, data, 3)
	info, err := e.m.CompleteUpload(ctx, scopeA, up.ID)
	if err != nil || info.SHA256 != sum(data) {
		t.Fatalf("CompleteUpload = %+v, %v", info, err)
	}
}

func testMediaComplete(t *testing.T, e *mediaEnv) {
	ctx := context.Background()
	const partBytes = 40_000
	data := blob(11, 3*partBytes)
	up := e.upload(t, scopeA, data, partBytes, "")
	e.putPart(t, up, data, 1)
	e.putPart(t, up, data, 3)
	_, err := e.m.CompleteUpload(ctx, scopeA, up.ID)
	wantErr(t, "CompleteUpload with part 2 missing", err, storage.ErrIncomplete)
	e.putPart(t, up, data, 2)
	if _, err := e.m.CompleteUpload(ctx, scopeA, up.ID); err != nil {
		t.Fatalf("CompleteUpload once every part is there: %v", err)
	}

	// A whole-upload digest that the parts do not match: refused, and the
	// upload stays open.
	bad := e.upload(t, scopeA, blob(12, partBytes), partBytes, sum([]byte("something else")))
	e.putPart(t, bad, blob(12, partBytes), 1)
	_, err = e.m.CompleteUpload(ctx, scopeA, bad.ID)
	wantErr(t, "CompleteUpload with a wrong digest", err, storage.ErrDigestMismatch)
	if st, err := e.m.StatUpload(ctx, scopeA, bad.ID); err != nil || st.Media != "" || len(st.Received) != 1 {
		t.Fatalf("after a refused complete: %+v, %v", st, err)
	}
	if err := e.m.AbortUpload(ctx, scopeA, bad.ID); err != nil {
		t.Fatalf("AbortUpload: %v", err)
	}
	_, err = e.m.StatUpload(ctx, scopeA, bad.ID)
	wantErr(t, "StatUpload after abort", err, storage.ErrNotFound)
	wantErr(t, "second AbortUpload", e.m.AbortUpload(ctx, scopeA, bad.ID), storage.ErrNotFound)
	_, err = e.m.PutPart(ctx, scopeA, bad.ID, 1, bytes.NewReader(blob(12, partBytes)), "")
	wantErr(t, "PutPart after abort", err, storage.ErrNotFound)
}

func testMediaExpiry(t *testing.T, e *mediaEnv) {
	ctx := context.Background()
	spec := func(ttl time.Duration) storage.UploadSpec {
		return storage.UploadSpec{Size: 20, MIME: "audio/ogg", PartBytes: 10, TTL: ttl}
	}
	short, err := e.m.CreateUpload(ctx, scopeA, spec(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	long, err := e.m.CreateUpload(ctx, scopeA, spec(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for _, up := range []storage.Upload{short, long} {
		if _, err := e.m.PutPart(ctx, scopeA, up.ID, 1, bytes.NewReader(make([]byte, 10)), ""); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing is due yet.
	if n, err := e.m.SweepUploads(ctx, e.clock.Now()); err != nil || n != 0 {
		t.Fatalf("early SweepUploads = %d, %v", n, err)
	}
	now := e.clock.Advance(time.Hour)
	// Expired uploads are invisible at once, before any sweep.
	_, err = e.m.StatUpload(ctx, scopeA, short.ID)
	wantErr(t, "StatUpload of an expired upload", err, storage.ErrNotFound)
	_, err = e.m.PutPart(ctx, scopeA, short.ID, 2, bytes.NewReader(make([]byte, 10)), "")
	wantErr(t, "PutPart of an expired upload", err, storage.ErrNotFound)
	_, err = e.m.CompleteUpload(ctx, scopeA, short.ID)
	wantErr(t, "CompleteUpload of an expired upload", err, storage.ErrNotFound)
	if n, err := e.m.SweepUploads(ctx, now); err != nil || n != 1 {
		t.Fatalf("SweepUploads = %d, %v; want 1", n, err)
	}
	if n, err := e.m.SweepUploads(ctx, now); err != nil || n != 0 {
		t.Fatalf("second SweepUploads = %d, %v; want 0", n, err)
	}
	st, err := e.m.StatUpload(ctx, scopeA, long.ID)
	if err != nil || !slices.Equal(st.Received, []int{1}) {
		t.Fatalf("the live upload after the sweep: %+v, %v", st, err)
	}
	if _, err := e.m.PutPart(ctx, scopeA, long.ID, 2, bytes.NewReader(make([]byte, 10)), ""); err != nil {
		t.Fatal(err)
	}
	if info, err := e.m.CompleteUpload(ctx, scopeA, long.ID); err != nil || info.Size != 20 {
		t.Fatalf("CompleteUpload of the live upload = %+v, %v", info, err)
	}
	// Completed uploads expire too.
	now = e.clock.Advance(48 * time.Hour)
	if n, err := e.m.SweepUploads(ctx, now); err != nil || n != 1 {
		t.Fatalf("SweepUploads of the completed upload = %d, %v; want 1", n, err)
	}
}
