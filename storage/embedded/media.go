package embedded

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/syncgate/syncgate/storage"
)

var _ storage.Media = (*Media)(nil)

// Media buckets (top level, created by NewMedia). Metadata lives in bbolt,
// so the dedupe check and the insert are one transaction; the bytes live
// in files (see the package comment's media section).
const (
	bucketMedia       = "media"         // mediaKey(scope, id) -> JSON storage.MediaInfo
	bucketMediaSHA    = "media-sha"     // appendString(scope) | sha256 hex -> id
	bucketMediaIDs    = "media-ids"     // id -> scope: which blob files are live
	bucketMediaUpload = "media-uploads" // upload id -> JSON uploadRec
	bucketMediaParts  = "media-parts"   // upload id | BE uint32 n -> JSON partRec
)

// Directories under the media directory.
const (
	dirBlobs   = "blobs"   // blobs/<id[:2]>/<id>: one file per media
	dirTmp     = "tmp"     // files being written by Put and CompleteUpload
	dirUploads = "uploads" // uploads/<upload id>/<n>: stored parts
)

// orphanAge is how old a temporary file must be before SweepUploads
// removes it: a write that has not finished within a day has been cut off
// (or the process died), and a live one that slow loses its file.
const orphanAge = 24 * time.Hour

// MediaOptions tunes Media. The zero value is ready to use.
type MediaOptions struct {
	// Dir holds the media files. Default: "media" next to the bbolt file
	// (<data_dir>/media). It must not be shared with another store.
	Dir string
	// Logger receives cleanup events at Debug and failed file removals at
	// Warn. Default: the store's logger.
	Logger *slog.Logger
}

// Media is a storage.Media on the embedded store: metadata in the store's
// bbolt file, bytes in files under Dir. Close the Store to close it.
type Media struct {
	s   *Store
	dir string
	log *slog.Logger
}

// uploadRec is an upload session as stored.
type uploadRec struct {
	Scope     string    `json:"scope"`
	Size      int64     `json:"size"`
	MIME      string    `json:"mime"`
	SHA256    string    `json:"sha256,omitempty"`
	PartBytes int64     `json:"partBytes"`
	Created   time.Time `json:"created"`
	Expires   time.Time `json:"expires"`
	Media     string    `json:"media,omitempty"`
}

type partRec struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// NewMedia opens the media store of s. It creates the directories and
// buckets, and removes what an earlier process left behind when it died:
// temporary files, and blob and part files that no metadata names (the
// bbolt file lock guarantees no other process writes here).
func NewMedia(s *Store, opts MediaOptions) (*Media, error) {
	m := &Media{s: s, dir: opts.Dir, log: opts.Logger}
	if m.dir == "" {
		m.dir = filepath.Join(filepath.Dir(s.path), "media")
	}
	if m.log == nil {
		m.log = s.log
	}
	for _, d := range []string{dirBlobs, dirTmp, dirUploads} {
		if err := os.MkdirAll(filepath.Join(m.dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("embedded: media: %w", err)
		}
	}
	if err := s.update(context.Background(), "media", func(tx *bolt.Tx) error {
		for _, b := range []string{bucketMedia, bucketMediaSHA, bucketMediaIDs, bucketMediaUpload, bucketMediaParts} {
			if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := m.removeLeftovers(); err != nil {
		return nil, fmt.Errorf("embedded: media: %w", err)
	}
	return m, nil
}

// Dir is the directory holding the media files.
func (m *Media) Dir() string { return m.dir }

func mediaKey(scope, id string) []byte { return append(appendString(nil, scope), id...) }
func shaKey(scope, sha string) []byte  { return append(appendString(nil, scope), sha...) }

func partKey(upload string, n int) []byte {
	return binary.BigEndian.AppendUint32(appendString(nil, upload), uint32(n))
}

func (m *Media) blobPath(id string) string { return filepath.Join(m.dir, dirBlobs, id[:2], id) }
func (m *Media) uploadDir(id string) string {
	return filepath.Join(m.dir, dirUploads, id)
}

// Put implements storage.Media.
func (m *Media) Put(ctx context.Context, scope, mime string, r io.Reader, maxBytes int64) (storage.MediaInfo, error) {
	if err := m.s.begin(ctx, "media put"); err != nil {
		return storage.MediaInfo{}, err
	}
	tmp, size, sum, err := m.writeTemp(ctx, "put-*", storage.ContextReader(ctx, r), maxBytes)
	if err != nil {
		return storage.MediaInfo{}, fmt.Errorf("embedded: media put: %w", err)
	}
	return m.commitBlob(ctx, scope, mime, tmp, size, sum)
}

// writeTemp copies at most limit bytes of r into a new synced temporary
// file and returns its path, size and SHA-256. More than limit bytes is
// storage.ErrTooLarge; the file is removed on every error.
func (m *Media) writeTemp(ctx context.Context, pattern string, r io.Reader, limit int64) (string, int64, string, error) {
	f, err := os.CreateTemp(filepath.Join(m.dir, dirTmp), pattern)
	if err != nil {
		return "", 0, "", err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, limit+1))
	if err == nil && n > limit {
		err = fmt.Errorf("more than %d bytes: %w", limit, storage.ErrTooLarge)
	}
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		m.remove(f.Name())
		return "", 0, "", err
	}
	return f.Name(), n, hex.EncodeToString(h.Sum(nil)), nil
}

// commitBlob makes the synced temporary file tmp the blob of a new media,
// unless the scope holds the same content: then tmp is removed and the
// existing media returned. The file is renamed into place before the
// metadata commits, so no metadata ever names a missing file; a crash in
// between leaves a file no metadata names, which NewMedia removes.
func (m *Media) commitBlob(ctx context.Context, scope, mime, tmp string, size int64, sum string) (storage.MediaInfo, error) {
	const op = "media put"
	// Most duplicates are found here, before a rename and two fsyncs.
	if info, ok, err := m.bySHA(ctx, scope, sum); err != nil || ok {
		m.remove(tmp)
		return info, err
	}
	info := storage.MediaInfo{Scope: scope, ID: storage.NewMediaID(), Size: size, MIME: mime, SHA256: sum, Created: m.s.now()}
	path := m.blobPath(info.ID)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		m.remove(tmp)
		return storage.MediaInfo{}, fmt.Errorf("embedded: %s: %w", op, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		m.remove(tmp)
		return storage.MediaInfo{}, fmt.Errorf("embedded: %s: %w", op, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		m.remove(path)
		return storage.MediaInfo{}, fmt.Errorf("embedded: %s: %w", op, err)
	}
	var existing *storage.MediaInfo
	err := m.s.update(ctx, op, func(tx *bolt.Tx) error {
		existing = nil
		// A concurrent Put of the same content may have won since the
		// check above: bbolt's single writer makes this check-and-insert
		// atomic.
		if id := tx.Bucket([]byte(bucketMediaSHA)).Get(shaKey(scope, sum)); id != nil {
			old, err := getMedia(tx, scope, string(id))
			if err != nil {
				return err
			}
			existing = &old
			return nil
		}
		data, err := json.Marshal(info)
		if err != nil {
			return err
		}
		return errors.Join(
			tx.Bucket([]byte(bucketMedia)).Put(mediaKey(scope, info.ID), data),
			tx.Bucket([]byte(bucketMediaSHA)).Put(shaKey(scope, sum), []byte(info.ID)),
			tx.Bucket([]byte(bucketMediaIDs)).Put([]byte(info.ID), []byte(scope)),
		)
	})
	if err != nil || existing != nil {
		m.remove(path)
		if existing != nil {
			existing.Deduped = true
			return *existing, nil
		}
		return storage.MediaInfo{}, err
	}
	return info, nil
}

func (m *Media) bySHA(ctx context.Context, scope, sum string) (storage.MediaInfo, bool, error) {
	var info storage.MediaInfo
	found := false
	err := m.s.view(ctx, "media put", func(tx *bolt.Tx) error {
		id := tx.Bucket([]byte(bucketMediaSHA)).Get(shaKey(scope, sum))
		if id == nil {
			return nil
		}
		var err error
		info, err = getMedia(tx, scope, string(id))
		found = err == nil
		return err
	})
	info.Deduped = found
	return info, found, err
}

func getMedia(tx *bolt.Tx, scope, id string) (storage.MediaInfo, error) {
	v := tx.Bucket([]byte(bucketMedia)).Get(mediaKey(scope, id))
	if v == nil {
		return storage.MediaInfo{}, storage.ErrNotFound
	}
	var info storage.MediaInfo
	if err := json.Unmarshal(v, &info); err != nil {
		return storage.MediaInfo{}, fmt.Errorf("media %s: %w", id, err)
	}
	return info, nil
}

// Stat implements storage.Media.
func (m *Media) Stat(ctx context.Context, scope, id string) (storage.MediaInfo, error) {
	var info storage.MediaInfo
	err := m.s.view(ctx, "media stat", func(tx *bolt.Tx) error {
		var err error
		info, err = getMedia(tx, scope, id)
		return err
	})
	return info, err
}

// Open implements storage.Media. The reader is the blob's file: a delete
// while it is open unlinks the file, and the reader still sees all of it.
func (m *Media) Open(ctx context.Context, scope, id string) (storage.MediaReader, error) {
	info, err := m.Stat(ctx, scope, id)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(m.blobPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		// Deleted between the two reads.
		return nil, fmt.Errorf("embedded: media open: %w", storage.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("embedded: media open: %w", err)
	}
	return &fileReader{File: f, info: info}, nil
}

type fileReader struct {
	*os.File
	info storage.MediaInfo
}

func (r *fileReader) Info() storage.MediaInfo { return r.info }
func (r *fileReader) Size() int64             { return r.info.Size }

// Delete implements storage.Media: the metadata goes first (the media is
// then gone for every reader), the file second. A crash in between leaves
// a file no metadata names, which NewMedia removes.
func (m *Media) Delete(ctx context.Context, scope, id string) error {
	err := m.s.update(ctx, "media delete", func(tx *bolt.Tx) error {
		info, err := getMedia(tx, scope, id)
		if err != nil {
			return err
		}
		sha := tx.Bucket([]byte(bucketMediaSHA))
		if string(sha.Get(shaKey(scope, info.SHA256))) == id {
			if err := sha.Delete(shaKey(scope, info.SHA256)); err != nil {
				return err
			}
		}
		return errors.Join(
			tx.Bucket([]byte(bucketMedia)).Delete(mediaKey(scope, id)),
			tx.Bucket([]byte(bucketMediaIDs)).Delete([]byte(id)),
		)
	})
	if err != nil {
		return err
	}
	m.remove(m.blobPath(id))
	return nil
}

// CreateUpload implements storage.Media.
func (m *Media) CreateUpload(ctx context.Context, scope string, spec storage.UploadSpec) (storage.Upload, error) {
	if err := checkSpec(spec); err != nil {
		return storage.Upload{}, fmt.Errorf("embedded: create upload: %w", err)
	}
	now := m.s.now()
	rec := uploadRec{
		Scope: scope, Size: spec.Size, MIME: spec.MIME, SHA256: spec.SHA256, PartBytes: spec.PartBytes,
		Created: now, Expires: now.Add(spec.TTL),
	}
	id := storage.NewMediaID()
	data, err := json.Marshal(rec)
	if err != nil {
		return storage.Upload{}, fmt.Errorf("embedded: create upload: %w", err)
	}
	err = m.s.update(ctx, "create upload", func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(bucketMediaUpload)).Put([]byte(id), data)
	})
	if err != nil {
		return storage.Upload{}, err
	}
	return rec.upload(id, nil), nil
}

// checkSpec refuses an upload spec the store cannot honour. The gateway
// validates requests before, so this guards other callers.
func checkSpec(spec storage.UploadSpec) error {
	switch {
	case spec.Size < 0, spec.PartBytes <= 0, spec.TTL <= 0:
		return fmt.Errorf("invalid upload spec (size %d, part bytes %d, ttl %s)", spec.Size, spec.PartBytes, spec.TTL)
	case spec.SHA256 != "" && !storage.ValidSHA256(spec.SHA256):
		return errors.New("invalid upload spec: sha256 must be 64 lowercase hex digits")
	}
	return nil
}

func (r uploadRec) upload(id string, received []int) storage.Upload {
	if received == nil {
		received = []int{}
	}
	return storage.Upload{
		ID: id, Scope: r.Scope, Size: r.Size, MIME: r.MIME, SHA256: r.SHA256, PartBytes: r.PartBytes,
		Parts: storage.PartsOf(r.Size, r.PartBytes), Received: received, Created: r.Created, Expires: r.Expires, Media: r.Media,
	}
}

// getUpload reads an upload of scope that has not expired at now.
func getUpload(tx *bolt.Tx, scope, id string, now time.Time) (uploadRec, error) {
	v := tx.Bucket([]byte(bucketMediaUpload)).Get([]byte(id))
	if v == nil {
		return uploadRec{}, storage.ErrNotFound
	}
	var rec uploadRec
	if err := json.Unmarshal(v, &rec); err != nil {
		return uploadRec{}, fmt.Errorf("upload %s: %w", id, err)
	}
	if rec.Scope != scope || !rec.Expires.After(now) {
		return uploadRec{}, storage.ErrNotFound
	}
	return rec, nil
}

// parts lists the stored parts of an upload, by number.
func parts(tx *bolt.Tx, id string) (map[int]partRec, error) {
	out := map[int]partRec{}
	prefix := appendString(nil, id)
	c := tx.Bucket([]byte(bucketMediaParts)).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if len(k) != len(prefix)+4 {
			continue // another upload's key that shares the prefix cannot exist (length-prefixed), but be strict
		}
		var p partRec
		if err := json.Unmarshal(v, &p); err != nil {
			return nil, fmt.Errorf("upload %s part: %w", id, err)
		}
		out[int(binary.BigEndian.Uint32(k[len(prefix):]))] = p
	}
	return out, nil
}

func sortedParts(ps map[int]partRec) []int {
	return slices.Sorted(maps.Keys(ps))
}

// StatUpload implements storage.Media.
func (m *Media) StatUpload(ctx context.Context, scope, id string) (storage.Upload, error) {
	var up storage.Upload
	err := m.s.view(ctx, "stat upload", func(tx *bolt.Tx) error {
		rec, err := getUpload(tx, scope, id, m.s.now())
		if err != nil {
			return err
		}
		ps, err := parts(tx, id)
		if err != nil {
			return err
		}
		up = rec.upload(id, sortedParts(ps))
		return nil
	})
	return up, err
}

// PutPart implements storage.Media. The part is written to a synced
// temporary file first; the transaction that records it renames it into
// place, so a part's metadata always names a complete file.
func (m *Media) PutPart(ctx context.Context, scope, id string, n int, r io.Reader, sum string) (storage.PartInfo, error) {
	const op = "put part"
	var rec uploadRec
	if err := m.s.view(ctx, op, func(tx *bolt.Tx) error {
		var err error
		rec, err = getUpload(tx, scope, id, m.s.now())
		return err
	}); err != nil {
		return storage.PartInfo{}, err
	}
	if rec.Media != "" {
		return storage.PartInfo{}, fmt.Errorf("embedded: %s: upload %s is completed: %w", op, id, storage.ErrPartConflict)
	}
	want := storage.PartSize(rec.Size, rec.PartBytes, n)
	if want < 0 {
		return storage.PartInfo{}, fmt.Errorf("embedded: %s: part %d of %d: %w", op, n, storage.PartsOf(rec.Size, rec.PartBytes), storage.ErrBadPart)
	}
	tmp, size, got, err := m.writeTemp(ctx, "part-*", storage.ContextReader(ctx, r), want)
	if err != nil {
		return storage.PartInfo{}, fmt.Errorf("embedded: %s: part %d: %w", op, n, err)
	}
	info := storage.PartInfo{N: n, Size: size, SHA256: got}
	switch {
	case size != want:
		m.remove(tmp)
		return storage.PartInfo{}, fmt.Errorf("embedded: %s: part %d holds %d bytes, want %d: %w", op, n, size, want, storage.ErrBadPart)
	case sum != "" && sum != got:
		m.remove(tmp)
		return storage.PartInfo{}, fmt.Errorf("embedded: %s: part %d: %w", op, n, storage.ErrDigestMismatch)
	}
	dir := m.uploadDir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		m.remove(tmp)
		return storage.PartInfo{}, fmt.Errorf("embedded: %s: %w", op, err)
	}
	renamed := false
	err = m.s.update(ctx, op, func(tx *bolt.Tx) error {
		if _, err := getUpload(tx, scope, id, m.s.now()); err != nil {
			return err // aborted or expired meanwhile
		}
		b := tx.Bucket([]byte(bucketMediaParts))
		if v := b.Get(partKey(id, n)); v != nil {
			var old partRec
			if err := json.Unmarshal(v, &old); err != nil {
				return err
			}
			if old.SHA256 != got {
				return fmt.Errorf("part %d: %w", n, storage.ErrPartConflict)
			}
			info.Existed = true
			return nil
		}
		data, err := json.Marshal(partRec{Size: size, SHA256: got})
		if err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Join(dir, fmt.Sprint(n))); err != nil {
			return err
		}
		renamed = true
		if err := syncDir(dir); err != nil {
			return err
		}
		return b.Put(partKey(id, n), data)
	})
	if !renamed {
		m.remove(tmp)
	}
	if err != nil {
		return storage.PartInfo{}, err
	}
	return info, nil
}

// CompleteUpload implements storage.Media.
func (m *Media) CompleteUpload(ctx context.Context, scope, id string) (storage.MediaInfo, error) {
	const op = "complete upload"
	var rec uploadRec
	var ps map[int]partRec
	if err := m.s.view(ctx, op, func(tx *bolt.Tx) error {
		var err error
		if rec, err = getUpload(tx, scope, id, m.s.now()); err != nil {
			return err
		}
		ps, err = parts(tx, id)
		return err
	}); err != nil {
		return storage.MediaInfo{}, err
	}
	if rec.Media != "" {
		return m.Stat(ctx, scope, rec.Media)
	}
	if err := storage.MissingParts(rec.Size, rec.PartBytes, func(n int) bool { _, ok := ps[n]; return ok }); err != nil {
		return storage.MediaInfo{}, fmt.Errorf("embedded: %s: %w", op, err)
	}
	tmp, size, sum, err := m.writeTemp(ctx, "complete-*", storage.ContextReader(ctx, &partsReader{m: m, id: id, parts: storage.PartsOf(rec.Size, rec.PartBytes)}), rec.Size)
	switch {
	case err != nil:
		return storage.MediaInfo{}, fmt.Errorf("embedded: %s: %w", op, err)
	case size != rec.Size:
		m.remove(tmp)
		return storage.MediaInfo{}, fmt.Errorf("embedded: %s: parts hold %d bytes, want %d", op, size, rec.Size)
	case rec.SHA256 != "" && rec.SHA256 != sum:
		m.remove(tmp)
		return storage.MediaInfo{}, fmt.Errorf("embedded: %s: the parts' sha-256 is %s: %w", op, sum, storage.ErrDigestMismatch)
	}
	info, err := m.commitBlob(ctx, scope, rec.MIME, tmp, size, sum)
	if err != nil {
		return storage.MediaInfo{}, err
	}
	// Record the result (a repeated complete returns it) and drop the parts.
	rec.Media = info.ID
	data, err := json.Marshal(rec)
	if err != nil {
		return storage.MediaInfo{}, fmt.Errorf("embedded: %s: %w", op, err)
	}
	err = m.s.update(ctx, op, func(tx *bolt.Tx) error {
		if err := deleteParts(tx, id); err != nil {
			return err
		}
		return tx.Bucket([]byte(bucketMediaUpload)).Put([]byte(id), data)
	})
	if err != nil {
		// The media exists; the parts stay until the upload expires.
		m.log.Warn("embedded: recording a completed upload failed", "upload", id, "err", err)
		return info, nil
	}
	m.removeAll(m.uploadDir(id))
	return info, nil
}

// partsReader reads an upload's part files in order, one open at a time.
type partsReader struct {
	m     *Media
	id    string
	parts int
	next  int // last part opened
	f     *os.File
}

func (r *partsReader) Read(p []byte) (int, error) {
	for {
		if r.f == nil {
			if r.next >= r.parts {
				return 0, io.EOF
			}
			r.next++
			f, err := os.Open(filepath.Join(r.m.uploadDir(r.id), fmt.Sprint(r.next)))
			if err != nil {
				return 0, err
			}
			r.f = f
		}
		n, err := r.f.Read(p)
		if errors.Is(err, io.EOF) {
			_ = r.f.Close()
			r.f = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func deleteParts(tx *bolt.Tx, id string) error {
	prefix := appendString(nil, id)
	c := tx.Bucket([]byte(bucketMediaParts)).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// AbortUpload implements storage.Media.
func (m *Media) AbortUpload(ctx context.Context, scope, id string) error {
	err := m.s.update(ctx, "abort upload", func(tx *bolt.Tx) error {
		if _, err := getUpload(tx, scope, id, m.s.now()); err != nil {
			return err
		}
		if err := deleteParts(tx, id); err != nil {
			return err
		}
		return tx.Bucket([]byte(bucketMediaUpload)).Delete([]byte(id))
	})
	if err != nil {
		return err
	}
	m.removeAll(m.uploadDir(id))
	return nil
}

// SweepUploads implements storage.Media: it deletes uploads expired at
// now (metadata in one transaction, then their directories), and
// temporary files older than orphanAge.
func (m *Media) SweepUploads(ctx context.Context, now time.Time) (int, error) {
	var expired []string
	err := m.s.update(ctx, "sweep uploads", func(tx *bolt.Tx) error {
		expired = expired[:0]
		b := tx.Bucket([]byte(bucketMediaUpload))
		err := b.ForEach(func(k, v []byte) error {
			var rec uploadRec
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("upload %s: %w", k, err)
			}
			if !rec.Expires.After(now) {
				expired = append(expired, string(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, id := range expired {
			if err := deleteParts(tx, id); err != nil {
				return err
			}
			if err := b.Delete([]byte(id)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, id := range expired {
		m.removeAll(m.uploadDir(id))
	}
	entries, err := os.ReadDir(filepath.Join(m.dir, dirTmp))
	if err != nil {
		return len(expired), fmt.Errorf("embedded: sweep uploads: %w", err)
	}
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && now.Sub(fi.ModTime()) > orphanAge {
			m.remove(filepath.Join(m.dir, dirTmp, e.Name()))
		}
	}
	if len(expired) > 0 {
		m.log.Debug("embedded: swept expired uploads", "uploads", len(expired))
	}
	return len(expired), nil
}

// removeLeftovers runs at NewMedia, before any write: every temporary
// file is a dead write, and blob files and upload directories that no
// metadata names were left by a crash between a file operation and its
// transaction.
func (m *Media) removeLeftovers() error {
	tmp := filepath.Join(m.dir, dirTmp)
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return err
	}
	for _, e := range entries {
		m.remove(filepath.Join(tmp, e.Name()))
	}
	return m.s.db.View(func(tx *bolt.Tx) error {
		ids, uploads := tx.Bucket([]byte(bucketMediaIDs)), tx.Bucket([]byte(bucketMediaUpload))
		err := filepath.WalkDir(filepath.Join(m.dir, dirBlobs), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			if ids.Get([]byte(d.Name())) == nil {
				m.log.Debug("embedded: removing an orphaned media file", "path", path)
				m.remove(path)
			}
			return nil
		})
		if err != nil {
			return err
		}
		dirs, err := os.ReadDir(filepath.Join(m.dir, dirUploads))
		if err != nil {
			return err
		}
		for _, d := range dirs {
			if uploads.Get([]byte(d.Name())) == nil {
				m.removeAll(filepath.Join(m.dir, dirUploads, d.Name()))
			}
		}
		return nil
	})
}

// remove deletes a file; a failure only leaves garbage, so it is logged.
func (m *Media) remove(path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		m.log.Warn("embedded: removing a media file failed", "path", path, "err", err)
	}
}

func (m *Media) removeAll(path string) {
	if err := os.RemoveAll(path); err != nil {
		m.log.Warn("embedded: removing a media directory failed", "path", path, "err", err)
	}
}

// syncDir makes a rename into dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
