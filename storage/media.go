package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Media errors, besides ErrNotFound (no such media or upload in that scope,
// or an expired upload) and ErrClosed. Test with errors.Is.
var (
	// ErrTooLarge: the content exceeds the limit the caller passed (Put)
	// or the part's size (PutPart). Nothing was kept.
	ErrTooLarge = errors.New("storage: media too large")
	// ErrDigestMismatch: the content's SHA-256 differs from the one the
	// caller announced (a part's, or a whole upload's at completion).
	ErrDigestMismatch = errors.New("storage: sha-256 mismatch")
	// ErrPartConflict: the part was stored before with other content, or
	// the upload was already completed. The stored part is kept.
	ErrPartConflict = errors.New("storage: part already stored with other content")
	// ErrIncomplete: CompleteUpload found parts missing.
	ErrIncomplete = errors.New("storage: upload incomplete")
	// ErrBadPart: a part number outside 1..Parts, or a part of the wrong
	// size (every part but the last holds exactly PartBytes).
	ErrBadPart = errors.New("storage: bad part")
)

// MediaInfo describes one stored blob. Media is immutable: an id always
// names the same bytes, until it is deleted.
type MediaInfo struct {
	Scope   string    `json:"scope"`
	ID      string    `json:"id"`
	Size    int64     `json:"size"`
	MIME    string    `json:"mime"`
	SHA256  string    `json:"sha256"` // lowercase hex
	Created time.Time `json:"created"`
	// Deduped is set by Put and CompleteUpload when the scope already held
	// identical content: the existing media is returned and nothing new
	// is kept (its MIME and Created are the existing ones).
	Deduped bool `json:"deduped,omitempty"`
}

// MediaReader reads one blob. Seek is cheap (a store reads lazily from the
// new offset on the next Read), so http.ServeContent can serve ranges.
type MediaReader interface {
	io.ReadSeekCloser
	// Size is the blob's length (what Seek(0, io.SeekEnd) returns).
	Size() int64
	// Info describes the blob.
	Info() MediaInfo
}

// UploadSpec opens a resumable upload.
type UploadSpec struct {
	Size      int64  // total bytes, >= 0
	MIME      string // recorded on the media as given
	SHA256    string // optional lowercase hex; CompleteUpload verifies it
	PartBytes int64  // every part but the last holds exactly this many bytes; > 0
	// TTL: the upload and its parts expire this long after creation and
	// are then invisible (ErrNotFound) until SweepUploads deletes them.
	TTL time.Duration
}

// Upload is a resumable upload session. Parts are numbered 1..Parts.
type Upload struct {
	ID        string    `json:"id"`
	Scope     string    `json:"scope"`
	Size      int64     `json:"size"`
	MIME      string    `json:"mime"`
	SHA256    string    `json:"sha256,omitempty"`
	PartBytes int64     `json:"partBytes"`
	Parts     int       `json:"parts"`
	Received  []int     `json:"received"` // part numbers stored, ascending (StatUpload)
	Created   time.Time `json:"created"`
	Expires   time.Time `json:"expires"`
	// Media is the id of the media the upload became, once completed
	// (a repeated CompleteUpload returns it again).
	Media string `json:"media,omitempty"`
}

// PartInfo describes a stored part.
type PartInfo struct {
	N      int    `json:"n"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// Existed: the same content was stored before (a retry); nothing changed.
	Existed bool `json:"existed,omitempty"`
}

// PartsOf is the number of parts of an upload of size bytes in parts of
// partBytes (0 for an empty upload).
func PartsOf(size, partBytes int64) int {
	if size <= 0 || partBytes <= 0 {
		return 0
	}
	return int((size + partBytes - 1) / partBytes)
}

// PartSize is the size part n (1-based) of such an upload must have, or -1
// when n is out of range.
func PartSize(size, partBytes int64, n int) int64 {
	parts := PartsOf(size, partBytes)
	switch {
	case n < 1 || n > parts:
		return -1
	case n < parts:
		return partBytes
	}
	return size - int64(parts-1)*partBytes
}

// Media stores blobs (images, video, documents) that documents reference
// with {"$media": "<id>"}. Media belongs to a scope: every method takes the
// scope, and media or uploads of another scope are ErrNotFound. Access
// control is the caller's (the gateway checks the token grants the scope).
//
// Contract for implementations (storagetest.RunMedia checks it):
//   - Every method is goroutine-safe and honours ctx; errors carry the
//     package prefix and wrap their cause.
//   - Content is streamed: no method holds a whole blob in memory (a part
//     at most).
//   - Put and CompleteUpload deduplicate within a scope by SHA-256: when
//     the scope holds identical content they return that media (Deduped)
//     and keep nothing new, also when two of them race (a unique key on
//     (scope, sha256) decides, never a conditional update).
//   - Ids are opaque, at most 64 bytes of [A-Za-z0-9_-]; both stores use
//     32 lowercase hex digits (128 random bits), so an id does not reveal
//     the content or the scope.
//   - Deleting media does not look for documents that reference it: refs
//     dangle (the engine only checks refs when a mutation adds them).
type Media interface {
	// Put stores r's content (read until EOF) as a new blob of scope, or
	// returns the identical one the scope already holds. More than
	// maxBytes of content fails with ErrTooLarge, and nothing is kept.
	Put(ctx context.Context, scope, mime string, r io.Reader, maxBytes int64) (MediaInfo, error)
	// Open returns a reader of the blob, or ErrNotFound. The caller closes it.
	Open(ctx context.Context, scope, id string) (MediaReader, error)
	// Stat describes the blob, or returns ErrNotFound.
	Stat(ctx context.Context, scope, id string) (MediaInfo, error)
	// Delete removes the blob, or returns ErrNotFound. Readers already
	// open may fail or see the whole blob.
	Delete(ctx context.Context, scope, id string) error

	// CreateUpload opens a resumable upload (stamped with the store's
	// clock; it expires after spec.TTL).
	CreateUpload(ctx context.Context, scope string, spec UploadSpec) (Upload, error)
	// StatUpload describes an upload, with the parts received so far.
	StatUpload(ctx context.Context, scope, uploadID string) (Upload, error)
	// PutPart stores part n (1-based) of an upload; r must hold exactly
	// the part's size (PartSize), else ErrBadPart (or ErrTooLarge when it
	// holds more). If sha256 (lowercase hex) is not empty, the content must
	// match it, else ErrDigestMismatch. Parts may come in any order and
	// concurrently. Storing a part again with the same content is a no-op
	// (Existed); with other content, ErrPartConflict.
	PutPart(ctx context.Context, scope, uploadID string, n int, r io.Reader, sha256 string) (PartInfo, error)
	// CompleteUpload concatenates the parts into media (as Put does,
	// deduplicated), verifies the upload's SHA-256 if one was given
	// (ErrDigestMismatch, and the upload stays open), deletes the parts
	// and returns the media. Missing parts: ErrIncomplete. Completing a
	// completed upload returns its media again (while the upload has not
	// expired).
	CompleteUpload(ctx context.Context, scope, uploadID string) (MediaInfo, error)
	// AbortUpload deletes an upload and its parts, or returns ErrNotFound.
	AbortUpload(ctx context.Context, scope, uploadID string) error
	// SweepUploads deletes uploads expired at now, with their parts, and
	// what interrupted writes left behind. It returns how many uploads it
	// deleted.
	SweepUploads(ctx context.Context, now time.Time) (int, error)
}

// MaxMediaIDBytes caps a media or upload id.
const MaxMediaIDBytes = 64

// NewMediaID returns a new media or upload id: 32 lowercase hex digits of
// crypto/rand (128 bits, so ids of concurrent writers never collide).
func NewMediaID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b[:])
}

// ValidMediaID reports whether id has the form of a media or upload id:
// 1 to MaxMediaIDBytes bytes of [A-Za-z0-9_-], safe in a URL path and a
// file name.
func ValidMediaID(id string) bool {
	if id == "" || len(id) > MaxMediaIDBytes {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidSHA256 reports whether s is a SHA-256 digest in lowercase hex.
func ValidSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// ContextReader returns a reader of r that fails with ctx's error once ctx
// has ended, so a store copying a client's stream stops when the request
// does.
func ContextReader(ctx context.Context, r io.Reader) io.Reader { return ctxReader{ctx, r} }

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// MissingParts returns ErrIncomplete naming the first missing parts of an
// upload of size bytes in parts of partBytes (has reports a stored part),
// or nil when every part is present.
func MissingParts(size, partBytes int64, has func(n int) bool) error {
	var missing []string
	total := 0
	for n := 1; n <= PartsOf(size, partBytes); n++ {
		if !has(n) {
			total++
			if len(missing) < 10 {
				missing = append(missing, fmt.Sprint(n))
			}
		}
	}
	if total == 0 {
		return nil
	}
	more := ""
	if total > len(missing) {
		more = fmt.Sprintf(" and %d more", total-len(missing))
	}
	return fmt.Errorf("missing parts %s%s: %w", strings.Join(missing, ", "), more, ErrIncomplete)
}
