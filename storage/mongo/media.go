package mongo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/syncgate/syncgate/storage"
)

var _ storage.Media = (*Media)(nil)

// Media collections. The GridFS bucket's are <bucket>.files and
// <bucket>.chunks.
const (
	collMedia       = "_sg_media"
	collUploads     = "_sg_uploads"
	collUploadParts = "_sg_upload_parts"
)

const (
	// DefaultMediaBucket is the GridFS bucket of media blobs.
	DefaultMediaBucket = "_sg_blobs"
	// DefaultChunkBytes is the GridFS chunk size: 255 KiB, the GridFS
	// default (a chunk and its envelope stay under 256 KiB).
	DefaultChunkBytes = 255 << 10
	// chunksPerInsert is how many chunks one insert carries: about 1 MiB,
	// which is also all of a blob that a Put holds in memory.
	chunksPerInsert = 4
	// readBatchChunks is the cursor batch of a download: about 4 MiB per
	// round trip, without fetching much past the end of a short range.
	readBatchChunks = 16
	// orphanAge: SweepUploads removes a blob still marked pending after
	// this long (the Put that wrote it died, or took longer than a day).
	orphanAge = 24 * time.Hour
	// cleanupTimeout bounds the removal of a failed write's chunks, which
	// runs even when the request's context has ended.
	cleanupTimeout = 30 * time.Second
)

// MediaOptions tunes Media. The zero value is ready to use.
type MediaOptions struct {
	// Bucket names the GridFS bucket. Default DefaultMediaBucket.
	Bucket string
	// ChunkBytes is the GridFS chunk size of new blobs (existing blobs
	// keep theirs). Default DefaultChunkBytes.
	ChunkBytes int
	// Logger receives cleanup events at Debug and failed cleanups at Warn.
	// Default: the store's logger.
	Logger *slog.Logger
}

// Media is a storage.Media on the store's database: blobs in a GridFS
// bucket, metadata in _sg_media, resumable uploads in _sg_uploads and
// _sg_upload_parts. See the package comment's Media section. Close the
// Store to close it.
type Media struct {
	s                                   *Store
	media, uploads, parts, files, chunk *mongo.Collection
	chunkBytes                          int
	log                                 *slog.Logger
}

// mediaDoc is one media in _sg_media. _id is mediaKey(scope, id); the
// unique (scope, sha256) index deduplicates.
type mediaDoc struct {
	Key       string        `bson:"_id"`
	Scope     string        `bson:"scope"`
	ID        string        `bson:"id"`
	SHA256    string        `bson:"sha256"`
	Size      int64         `bson:"size"`
	MIME      string        `bson:"mime"`
	File      bson.ObjectID `bson:"file"`
	ChunkSize int32         `bson:"chunkSize"`
	Created   bson.DateTime `bson:"created"`
	CreatedNs int32         `bson:"createdNs"`
}

func (d *mediaDoc) info() storage.MediaInfo {
	return storage.MediaInfo{Scope: d.Scope, ID: d.ID, Size: d.Size, MIME: d.MIME, SHA256: d.SHA256, Created: timeOf(d.Created, d.CreatedNs)}
}

// fileMeta is the metadata of a GridFS files document. A blob is written
// with Pending set (and length 0), and finalized once its _sg_media
// document exists; SweepUploads finds blobs whose writer died by Pending.
type fileMeta struct {
	Scope   string `bson:"scope"`
	Media   string `bson:"media"` // the _sg_media _id
	MIME    string `bson:"mime,omitempty"`
	SHA256  string `bson:"sha256,omitempty"`
	Pending bool   `bson:"pending"`
}

type fileDoc struct {
	ID         bson.ObjectID `bson:"_id"`
	Length     int64         `bson:"length"`
	ChunkSize  int32         `bson:"chunkSize"`
	UploadDate bson.DateTime `bson:"uploadDate"`
	Filename   string        `bson:"filename"`
	Metadata   fileMeta      `bson:"metadata"`
}

type chunkDoc struct {
	ID     bson.ObjectID `bson:"_id"`
	FileID bson.ObjectID `bson:"files_id"`
	N      int32         `bson:"n"`
	Data   []byte        `bson:"data"`
}

// uploadDoc is an upload session in _sg_uploads, _id the upload id.
type uploadDoc struct {
	ID        string        `bson:"_id"`
	Scope     string        `bson:"scope"`
	Size      int64         `bson:"size"`
	MIME      string        `bson:"mime"`
	SHA256    string        `bson:"sha256"`
	PartBytes int64         `bson:"partBytes"`
	Created   bson.DateTime `bson:"created"`
	CreatedNs int32         `bson:"createdNs"`
	Expires   bson.DateTime `bson:"expires"`
	ExpiresNs int32         `bson:"expiresNs"`
	Media     string        `bson:"media"`
}

func (d *uploadDoc) upload(received []int) storage.Upload {
	if received == nil {
		received = []int{}
	}
	return storage.Upload{
		ID: d.ID, Scope: d.Scope, Size: d.Size, MIME: d.MIME, SHA256: d.SHA256, PartBytes: d.PartBytes,
		Parts: storage.PartsOf(d.Size, d.PartBytes), Received: received,
		Created: timeOf(d.Created, d.CreatedNs), Expires: timeOf(d.Expires, d.ExpiresNs), Media: d.Media,
	}
}

// partDoc is one part in _sg_upload_parts, _id partKey(upload, n). It
// carries its upload's expiry, so the sweep finds parts even of an upload
// whose document is gone.
type partDoc struct {
	ID      string        `bson:"_id"`
	Upload  string        `bson:"upload"`
	N       int           `bson:"n"`
	Size    int64         `bson:"size"`
	SHA256  string        `bson:"sha256"`
	Expires bson.DateTime `bson:"expires"`
	Data    []byte        `bson:"data,omitempty"`
}

// mediaKey is a media's _id: the length-prefixed scope, then the id.
func mediaKey(scope, id string) string { return strconv.Itoa(len(scope)) + ":" + scope + id }

// partKey is a part's _id: the upload id (fixed alphabet, no '#') and the
// zero-padded part number.
func partKey(upload string, n int) string { return fmt.Sprintf("%s#%06d", upload, n) }

// NewMedia returns the media store of s and creates its indexes (the
// GridFS ones included, as the driver would on its first write).
func NewMedia(ctx context.Context, s *Store, opts MediaOptions) (*Media, error) {
	if opts.Bucket == "" {
		opts.Bucket = DefaultMediaBucket
	}
	if opts.ChunkBytes <= 0 {
		opts.ChunkBytes = DefaultChunkBytes
	}
	if opts.Logger == nil {
		opts.Logger = s.log
	}
	m := &Media{
		s:          s,
		media:      s.db.Collection(collMedia),
		uploads:    s.db.Collection(collUploads),
		parts:      s.db.Collection(collUploadParts),
		files:      s.db.Collection(opts.Bucket + ".files"),
		chunk:      s.db.Collection(opts.Bucket + ".chunks"),
		chunkBytes: opts.ChunkBytes,
		log:        opts.Logger,
	}
	if err := s.begin(ctx, "media"); err != nil {
		return nil, err
	}
	specs := []indexSpec{
		{collMedia, "scope_sha", asc("scope", "sha256"), true},
		{collUploads, "expires", asc("expires"), false},
		{collUploadParts, "upload_n", asc("upload", "n"), false},
		{collUploadParts, "expires", asc("expires"), false},
		// The GridFS spec's indexes, under the names the drivers give them.
		{m.files.Name(), "filename_1_uploadDate_1", asc("filename", "uploadDate"), false},
		{m.chunk.Name(), "files_id_1_n_1", asc("files_id", "n"), true},
		{m.files.Name(), "pending", asc("metadata.pending", "uploadDate"), false},
	}
	for _, ix := range specs {
		err := s.retry(ctx, func(ctx context.Context) error {
			_, err := s.db.Collection(ix.coll).Indexes().CreateOne(ctx, ix.model())
			return err
		})
		if err != nil {
			return nil, s.wrap(ctx, "media", fmt.Errorf("create index %s on %s: %w", ix.name, ix.coll, err))
		}
	}
	return m, nil
}

// Put implements storage.Media.
func (m *Media) Put(ctx context.Context, scope, mime string, r io.Reader, maxBytes int64) (storage.MediaInfo, error) {
	if err := m.s.begin(ctx, "media put"); err != nil {
		return storage.MediaInfo{}, err
	}
	info, err := m.putBlob(ctx, scope, mime, storage.ContextReader(ctx, r), maxBytes, "")
	return info, m.s.wrap(ctx, "media put", err)
}

// putBlob streams r into a new GridFS file and records it as media of
// scope, unless the scope holds the same content (then the new file is
// deleted and the existing media returned). wantSHA, if set, must match.
//
// Order, so that a crash at any point leaves nothing a reader can see
// half-written: (1) the files document, marked pending; (2) the chunks;
// (3) the _sg_media document, whose insert is the commit point and the
// dedupe (unique (scope, sha256)); (4) the files document, final. After
// (3) the media is readable (downloads need only _sg_media and the
// chunks); a pending blob older than orphanAge is finalized or deleted by
// SweepUploads, depending on whether (3) happened.
func (m *Media) putBlob(ctx context.Context, scope, mime string, r io.Reader, maxBytes int64, wantSHA string) (storage.MediaInfo, error) {
	now := m.s.now()
	doc := mediaDoc{
		Scope: scope, ID: storage.NewMediaID(), MIME: mime, File: bson.NewObjectID(),
		ChunkSize: int32(m.chunkBytes), Created: msOf(now), CreatedNs: nsOf(now),
	}
	doc.Key = mediaKey(scope, doc.ID)
	file := fileDoc{
		ID: doc.File, ChunkSize: doc.ChunkSize, UploadDate: msOf(now), Filename: doc.ID,
		Metadata: fileMeta{Scope: scope, Media: doc.Key, Pending: true},
	}
	if err := m.insertOne(ctx, m.files, file); err != nil {
		return storage.MediaInfo{}, err
	}
	size, sum, err := m.writeChunks(ctx, doc.File, r, maxBytes)
	switch {
	case err != nil:
	case wantSHA != "" && sum != wantSHA:
		err = fmt.Errorf("content sha-256 is %s: %w", sum, storage.ErrDigestMismatch)
	}
	if err != nil {
		m.deleteFile(ctx, doc.File)
		return storage.MediaInfo{}, err
	}
	doc.Size, doc.SHA256 = size, sum
	existing, err := m.insertMedia(ctx, doc)
	if err != nil {
		// The insert may have landed: leave the pending blob to the sweep,
		// which keeps it if the media document exists.
		return storage.MediaInfo{}, err
	}
	if existing != nil {
		m.deleteFile(ctx, doc.File)
		info := existing.info()
		info.Deduped = true
		return info, nil
	}
	file.Length = size
	file.Metadata = fileMeta{Scope: scope, Media: doc.Key, MIME: mime, SHA256: sum}
	var matched int64
	err = m.s.retry(ctx, func(ctx context.Context) error {
		res, err := m.files.ReplaceOne(ctx, bson.D{{Key: "_id", Value: doc.File}}, file)
		if err == nil {
			matched = res.MatchedCount
		}
		return err
	})
	switch {
	case err != nil:
		// The media is readable; the sweep finalizes the files document.
		m.log.Warn("mongo: finalizing a media file failed", "media", doc.ID, "err", err)
	case matched == 0:
		// The sweep took the blob for a dead write (a Put slower than
		// orphanAge): undo.
		m.deleteMediaDoc(ctx, doc.Key)
		m.deleteFile(ctx, doc.File)
		return storage.MediaInfo{}, fmt.Errorf("media %s: the blob was swept before the write finished", doc.ID)
	}
	return doc.info(), nil
}

// insertOne inserts doc; a duplicate _id after a retry means an earlier
// attempt landed.
func (m *Media) insertOne(ctx context.Context, c *mongo.Collection, doc any) error {
	attempt := 0
	return m.s.retry(ctx, func(ctx context.Context) error {
		attempt++
		_, err := c.InsertOne(ctx, doc)
		if attempt > 1 && mongo.IsDuplicateKeyError(err) {
			return nil
		}
		return err
	})
}

// writeChunks reads r to EOF (at most limit bytes, else
// storage.ErrTooLarge) into GridFS chunks of file, chunksPerInsert per
// insert. Chunk _ids are chosen before the insert, so a retried insert
// that partly landed only collides with itself.
func (m *Media) writeChunks(ctx context.Context, file bson.ObjectID, r io.Reader, limit int64) (int64, string, error) {
	h := sha256.New()
	lr := io.LimitReader(r, limit+1)
	buf := make([]byte, m.chunkBytes*chunksPerInsert)
	var total int64
	n := int32(0)
	for {
		k, rerr := io.ReadFull(lr, buf)
		if rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, io.ErrUnexpectedEOF) {
			return 0, "", rerr
		}
		total += int64(k)
		if total > limit {
			return 0, "", fmt.Errorf("more than %d bytes: %w", limit, storage.ErrTooLarge)
		}
		h.Write(buf[:k])
		var docs []any
		for off := 0; off < k; off += m.chunkBytes {
			end := min(off+m.chunkBytes, k)
			docs = append(docs, chunkDoc{ID: bson.NewObjectID(), FileID: file, N: n, Data: buf[off:end]})
			n++
		}
		if len(docs) > 0 {
			err := m.s.retry(ctx, func(ctx context.Context) error {
				_, err := m.chunk.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
				if onlyDuplicates(err) {
					return nil // landed by an earlier attempt
				}
				return err
			})
			if err != nil {
				return 0, "", err
			}
		}
		if rerr != nil { // EOF: the last (short or empty) read
			return total, hex.EncodeToString(h.Sum(nil)), nil
		}
	}
}

// onlyDuplicates reports whether err is a write error whose every write
// error is a duplicate key.
func onlyDuplicates(err error) bool {
	var codes []int
	var bwe mongo.BulkWriteException
	var we mongo.WriteException
	switch {
	case err == nil:
		return false
	case errors.As(err, &bwe):
		if bwe.WriteConcernError != nil {
			return false
		}
		for _, e := range bwe.WriteErrors {
			codes = append(codes, e.Code)
		}
	case errors.As(err, &we):
		if we.WriteConcernError != nil {
			return false
		}
		for _, e := range we.WriteErrors {
			codes = append(codes, e.Code)
		}
	}
	return len(codes) > 0 && !slices.ContainsFunc(codes, func(c int) bool { return c != 11000 })
}

// insertMedia inserts doc, or returns the media of the scope with the same
// content. A duplicate key is either on _id (an earlier attempt of this
// insert landed) or on scope_sha (the content exists).
func (m *Media) insertMedia(ctx context.Context, doc mediaDoc) (*mediaDoc, error) {
	for range 3 {
		err := m.s.retry(ctx, func(ctx context.Context) error {
			_, err := m.media.InsertOne(ctx, doc)
			return err
		})
		if err == nil {
			return nil, nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return nil, err
		}
		var got mediaDoc
		found, ferr := m.findOne(ctx, m.media, bson.D{{Key: "_id", Value: doc.Key}}, &got)
		if ferr != nil {
			return nil, ferr
		}
		if found && got.File == doc.File {
			return nil, nil // our own insert, retried
		}
		found, ferr = m.findOne(ctx, m.media, bson.D{{Key: "scope", Value: doc.Scope}, {Key: "sha256", Value: doc.SHA256}}, &got)
		if ferr != nil {
			return nil, ferr
		}
		if found {
			return &got, nil
		}
		// The holder of the content was deleted in between: insert again.
	}
	return nil, errors.New("media insert kept colliding with concurrent deletes")
}

// findOne decodes the document matching filter into out; found is false
// when there is none.
func (m *Media) findOne(ctx context.Context, c *mongo.Collection, filter bson.D, out any, opts ...options.Lister[options.FindOneOptions]) (bool, error) {
	found := false
	err := m.s.retry(ctx, func(ctx context.Context) error {
		err := c.FindOne(ctx, filter, opts...).Decode(out)
		found = err == nil
		if errors.Is(err, mongo.ErrNoDocuments) {
			return nil
		}
		return err
	})
	return found, err
}

// deleteFile removes a GridFS file: chunks first, then the files
// document, so the (pending) files document stays the handle the sweep
// finds until nothing else is left. It runs even when ctx has ended;
// a failure leaves the sweep to finish it.
func (m *Media) deleteFile(ctx context.Context, file bson.ObjectID) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	err := m.s.retry(ctx, func(ctx context.Context) error {
		_, err := m.chunk.DeleteMany(ctx, bson.D{{Key: "files_id", Value: file}})
		return err
	})
	if err == nil {
		err = m.s.retry(ctx, func(ctx context.Context) error {
			_, err := m.files.DeleteOne(ctx, bson.D{{Key: "_id", Value: file}})
			return err
		})
	}
	if err != nil {
		m.log.Warn("mongo: deleting a media file failed; the sweep retries", "file", file.Hex(), "err", err)
	}
}

func (m *Media) deleteMediaDoc(ctx context.Context, key string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	err := m.s.retry(ctx, func(ctx context.Context) error {
		_, err := m.media.DeleteOne(ctx, bson.D{{Key: "_id", Value: key}})
		return err
	})
	if err != nil {
		m.log.Warn("mongo: deleting a media document failed", "media", key, "err", err)
	}
}

func (m *Media) stat(ctx context.Context, op, scope, id string) (mediaDoc, error) {
	if err := m.s.begin(ctx, op); err != nil {
		return mediaDoc{}, err
	}
	var doc mediaDoc
	found, err := m.findOne(ctx, m.media, bson.D{{Key: "_id", Value: mediaKey(scope, id)}}, &doc)
	if err == nil && !found {
		err = storage.ErrNotFound
	}
	return doc, m.s.wrap(ctx, op, err)
}

// Stat implements storage.Media.
func (m *Media) Stat(ctx context.Context, scope, id string) (storage.MediaInfo, error) {
	doc, err := m.stat(ctx, "media stat", scope, id)
	if err != nil {
		return storage.MediaInfo{}, err
	}
	return doc.info(), nil
}

// Open implements storage.Media. The reader queries the chunks lazily
// from the offset of its next Read, so a Seek costs nothing and a range
// costs only the chunks it covers.
func (m *Media) Open(ctx context.Context, scope, id string) (storage.MediaReader, error) {
	doc, err := m.stat(ctx, "media open", scope, id)
	if err != nil {
		return nil, err
	}
	return &chunkReader{m: m, ctx: ctx, doc: doc}, nil
}

// chunkReader is a storage.MediaReader over a GridFS file's chunks.
type chunkReader struct {
	m      *Media
	ctx    context.Context
	doc    mediaDoc
	off    int64         // offset of the next byte Read returns
	cur    *mongo.Cursor // nil until the next Read (after a Seek)
	next   int32         // the chunk number cur yields next
	skip   int           // bytes of the next chunk before off
	buf    []byte        // the unread rest of the current chunk
	closed bool
}

func (r *chunkReader) Info() storage.MediaInfo { return r.doc.info() }
func (r *chunkReader) Size() int64             { return r.doc.Size }

func (r *chunkReader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, errors.New("mongo: media read: reader closed")
	}
	if r.off >= r.doc.Size {
		return 0, io.EOF
	}
	if len(r.buf) == 0 {
		if err := r.fill(); err != nil {
			return 0, fmt.Errorf("mongo: media read %s: %w", r.doc.ID, err)
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	r.off += int64(n)
	return n, nil
}

// fill loads the chunk holding off, opening the cursor there if needed,
// and checks it is the chunk expected, of the expected length.
func (r *chunkReader) fill() error {
	cs := int64(r.doc.ChunkSize)
	if cs <= 0 {
		return fmt.Errorf("invalid chunk size %d", cs)
	}
	if r.cur == nil {
		r.next = int32(r.off / cs)
		r.skip = int(r.off % cs)
		filter := bson.D{{Key: "files_id", Value: r.doc.File}, {Key: "n", Value: bson.D{{Key: "$gte", Value: r.next}}}}
		opts := options.Find().SetSort(bson.D{{Key: "n", Value: 1}}).SetBatchSize(readBatchChunks).
			SetProjection(bson.D{{Key: "n", Value: 1}, {Key: "data", Value: 1}})
		err := r.m.s.retry(r.ctx, func(ctx context.Context) error {
			var err error
			r.cur, err = r.m.chunk.Find(ctx, filter, opts)
			return err
		})
		if err != nil {
			return err
		}
	}
	if !r.cur.Next(r.ctx) {
		if err := r.cur.Err(); err != nil {
			return err
		}
		return fmt.Errorf("chunk %d is missing (deleted while reading?)", r.next)
	}
	var c chunkDoc
	if err := r.cur.Decode(&c); err != nil {
		return err
	}
	want := min(cs, r.doc.Size-int64(r.next)*cs)
	if c.N != r.next || int64(len(c.Data)) != want {
		return fmt.Errorf("chunk %d: got chunk %d of %d bytes, want %d bytes", r.next, c.N, len(c.Data), want)
	}
	r.buf = c.Data[r.skip:]
	r.skip = 0
	r.next++
	return nil
}

func (r *chunkReader) Seek(offset int64, whence int) (int64, error) {
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = r.off + offset
	case io.SeekEnd:
		abs = r.doc.Size + offset
	default:
		return 0, errors.New("mongo: media seek: invalid whence")
	}
	if abs < 0 {
		return 0, errors.New("mongo: media seek: negative position")
	}
	if abs != r.off {
		r.closeCursor()
		r.off, r.buf = abs, nil
	}
	return abs, nil
}

func (r *chunkReader) closeCursor() {
	if r.cur != nil {
		_ = r.cur.Close(context.WithoutCancel(r.ctx))
		r.cur = nil
	}
}

func (r *chunkReader) Close() error {
	r.closeCursor()
	r.closed = true
	return nil
}

// Delete implements storage.Media. The blob is marked pending first, so
// that if the process dies after the _sg_media document is gone, the
// sweep still finds the blob (and, if the delete never happened, finds
// the document and unmarks it).
func (m *Media) Delete(ctx context.Context, scope, id string) error {
	const op = "media delete"
	doc, err := m.stat(ctx, op, scope, id)
	if err != nil {
		return err
	}
	err = m.s.retry(ctx, func(ctx context.Context) error {
		_, err := m.files.UpdateOne(ctx, bson.D{{Key: "_id", Value: doc.File}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "metadata.pending", Value: true}}}})
		return err
	})
	var deleted int64
	if err == nil {
		err = m.s.retry(ctx, func(ctx context.Context) error {
			res, err := m.media.DeleteOne(ctx, bson.D{{Key: "_id", Value: doc.Key}})
			if err == nil {
				deleted = res.DeletedCount
			}
			return err
		})
	}
	if err != nil {
		return m.s.wrap(ctx, op, err)
	}
	if deleted == 0 {
		return m.s.wrap(ctx, op, storage.ErrNotFound) // a concurrent delete won
	}
	m.deleteFile(ctx, doc.File)
	return nil
}

// CreateUpload implements storage.Media.
func (m *Media) CreateUpload(ctx context.Context, scope string, spec storage.UploadSpec) (storage.Upload, error) {
	const op = "create upload"
	if err := m.s.begin(ctx, op); err != nil {
		return storage.Upload{}, err
	}
	switch {
	case spec.Size < 0, spec.PartBytes <= 0, spec.TTL <= 0:
		return storage.Upload{}, fmt.Errorf("mongo: %s: invalid upload spec (size %d, part bytes %d, ttl %s)", op, spec.Size, spec.PartBytes, spec.TTL)
	case spec.SHA256 != "" && !storage.ValidSHA256(spec.SHA256):
		return storage.Upload{}, fmt.Errorf("mongo: %s: invalid upload spec: sha256 must be 64 lowercase hex digits", op)
	}
	now := m.s.now()
	exp := now.Add(spec.TTL)
	doc := uploadDoc{
		ID: storage.NewMediaID(), Scope: scope, Size: spec.Size, MIME: spec.MIME, SHA256: spec.SHA256, PartBytes: spec.PartBytes,
		Created: msOf(now), CreatedNs: nsOf(now), Expires: msOf(exp), ExpiresNs: nsOf(exp),
	}
	if err := m.insertOne(ctx, m.uploads, doc); err != nil {
		return storage.Upload{}, m.s.wrap(ctx, op, err)
	}
	return doc.upload(nil), nil
}

// getUpload reads an upload of scope that has not expired (by the store's
// clock: expired uploads are invisible before the sweep deletes them).
func (m *Media) getUpload(ctx context.Context, op, scope, id string) (uploadDoc, error) {
	if err := m.s.begin(ctx, op); err != nil {
		return uploadDoc{}, err
	}
	var doc uploadDoc
	found, err := m.findOne(ctx, m.uploads, bson.D{{Key: "_id", Value: id}}, &doc)
	if err == nil && (!found || doc.Scope != scope || !timeOf(doc.Expires, doc.ExpiresNs).After(m.s.now())) {
		err = storage.ErrNotFound
	}
	return doc, m.s.wrap(ctx, op, err)
}

// partList lists an upload's parts without their data.
func (m *Media) partList(ctx context.Context, id string) (map[int]partDoc, error) {
	out := map[int]partDoc{}
	err := m.s.retry(ctx, func(ctx context.Context) error {
		clear(out)
		cur, err := m.parts.Find(ctx, bson.D{{Key: "upload", Value: id}},
			options.Find().SetProjection(bson.D{{Key: "data", Value: 0}}))
		if err != nil {
			return err
		}
		var docs []partDoc
		if err := cur.All(ctx, &docs); err != nil {
			return err
		}
		for _, d := range docs {
			out[d.N] = d
		}
		return nil
	})
	return out, err
}

// StatUpload implements storage.Media.
func (m *Media) StatUpload(ctx context.Context, scope, id string) (storage.Upload, error) {
	const op = "stat upload"
	doc, err := m.getUpload(ctx, op, scope, id)
	if err != nil {
		return storage.Upload{}, err
	}
	ps, err := m.partList(ctx, id)
	if err != nil {
		return storage.Upload{}, m.s.wrap(ctx, op, err)
	}
	received := make([]int, 0, len(ps))
	for n := range ps {
		received = append(received, n)
	}
	slices.Sort(received)
	return doc.upload(received), nil
}

// PutPart implements storage.Media. A part is one document (the part
// size is at most 15 MiB, under BSON's 16 MiB), inserted by its key: the
// unique _id makes a retry idempotent and a conflicting part detectable
// without a conditional update.
func (m *Media) PutPart(ctx context.Context, scope, id string, n int, r io.Reader, sum string) (storage.PartInfo, error) {
	const op = "put part"
	up, err := m.getUpload(ctx, op, scope, id)
	if err != nil {
		return storage.PartInfo{}, err
	}
	if up.Media != "" {
		return storage.PartInfo{}, fmt.Errorf("mongo: %s: upload %s is completed: %w", op, id, storage.ErrPartConflict)
	}
	want := storage.PartSize(up.Size, up.PartBytes, n)
	if want < 0 {
		return storage.PartInfo{}, fmt.Errorf("mongo: %s: part %d of %d: %w", op, n, storage.PartsOf(up.Size, up.PartBytes), storage.ErrBadPart)
	}
	buf := make([]byte, want+1)
	k, rerr := io.ReadFull(storage.ContextReader(ctx, r), buf)
	switch {
	case rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, io.ErrUnexpectedEOF):
		return storage.PartInfo{}, m.s.wrap(ctx, op, rerr)
	case int64(k) > want:
		return storage.PartInfo{}, fmt.Errorf("mongo: %s: part %d holds more than %d bytes: %w", op, n, want, storage.ErrTooLarge)
	case int64(k) != want:
		return storage.PartInfo{}, fmt.Errorf("mongo: %s: part %d holds %d bytes, want %d: %w", op, n, k, want, storage.ErrBadPart)
	}
	h := sha256.Sum256(buf[:k])
	got := hex.EncodeToString(h[:])
	if sum != "" && sum != got {
		return storage.PartInfo{}, fmt.Errorf("mongo: %s: part %d: %w", op, n, storage.ErrDigestMismatch)
	}
	info := storage.PartInfo{N: n, Size: int64(k), SHA256: got}
	doc := partDoc{ID: partKey(id, n), Upload: id, N: n, Size: int64(k), SHA256: got, Expires: up.Expires, Data: buf[:k]}
	err = m.s.retry(ctx, func(ctx context.Context) error {
		_, err := m.parts.InsertOne(ctx, doc)
		return err
	})
	if mongo.IsDuplicateKeyError(err) {
		var old partDoc
		found, ferr := m.findOne(ctx, m.parts, bson.D{{Key: "_id", Value: doc.ID}}, &old,
			options.FindOne().SetProjection(bson.D{{Key: "sha256", Value: 1}}))
		switch {
		case ferr != nil:
			err = ferr
		case !found:
			err = fmt.Errorf("part %d vanished while being stored (the upload was aborted?)", n)
		case old.SHA256 != got:
			err = fmt.Errorf("part %d: %w", n, storage.ErrPartConflict)
		default:
			err, info.Existed = nil, true
		}
	}
	if err != nil {
		return storage.PartInfo{}, m.s.wrap(ctx, op, err)
	}
	return info, nil
}

// CompleteUpload implements storage.Media. It reads one part at a time.
func (m *Media) CompleteUpload(ctx context.Context, scope, id string) (storage.MediaInfo, error) {
	const op = "complete upload"
	up, err := m.getUpload(ctx, op, scope, id)
	if err != nil {
		return storage.MediaInfo{}, err
	}
	if up.Media != "" {
		return m.Stat(ctx, scope, up.Media)
	}
	ps, err := m.partList(ctx, id)
	if err != nil {
		return storage.MediaInfo{}, m.s.wrap(ctx, op, err)
	}
	if err := storage.MissingParts(up.Size, up.PartBytes, func(n int) bool { _, ok := ps[n]; return ok }); err != nil {
		return storage.MediaInfo{}, fmt.Errorf("mongo: %s: %w", op, err)
	}
	pr := &partReader{m: m, ctx: ctx, upload: id, parts: storage.PartsOf(up.Size, up.PartBytes)}
	info, err := m.putBlob(ctx, scope, up.MIME, pr, up.Size, up.SHA256)
	if err == nil && info.Size != up.Size {
		err = fmt.Errorf("parts hold %d bytes, want %d", info.Size, up.Size)
	}
	if err != nil {
		return storage.MediaInfo{}, m.s.wrap(ctx, op, err)
	}
	// Record the result (a repeated complete returns it), then drop the
	// parts. A failure here leaves them to the sweep.
	up.Media = info.ID
	err = m.s.retry(ctx, func(ctx context.Context) error {
		_, err := m.uploads.ReplaceOne(ctx, bson.D{{Key: "_id", Value: id}}, up)
		return err
	})
	if err == nil {
		err = m.s.retry(ctx, func(ctx context.Context) error {
			_, err := m.parts.DeleteMany(ctx, bson.D{{Key: "upload", Value: id}})
			return err
		})
	}
	if err != nil {
		m.log.Warn("mongo: cleaning up a completed upload failed; the sweep retries", "upload", id, "err", err)
	}
	return info, nil
}

// partReader reads an upload's parts in order, one document at a time.
type partReader struct {
	m      *Media
	ctx    context.Context
	upload string
	parts  int
	n      int // last part loaded
	buf    []byte
}

func (r *partReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.n >= r.parts {
			return 0, io.EOF
		}
		r.n++
		var d partDoc
		found, err := r.m.findOne(r.ctx, r.m.parts, bson.D{{Key: "_id", Value: partKey(r.upload, r.n)}}, &d)
		if err != nil {
			return 0, err
		}
		if !found {
			return 0, fmt.Errorf("part %d: %w", r.n, storage.ErrIncomplete)
		}
		r.buf = d.Data
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// AbortUpload implements storage.Media.
func (m *Media) AbortUpload(ctx context.Context, scope, id string) error {
	const op = "abort upload"
	if _, err := m.getUpload(ctx, op, scope, id); err != nil {
		return err
	}
	err := m.s.retry(ctx, func(ctx context.Context) error {
		_, err := m.uploads.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
		return err
	})
	if err == nil {
		err = m.s.retry(ctx, func(ctx context.Context) error {
			_, err := m.parts.DeleteMany(ctx, bson.D{{Key: "upload", Value: id}})
			return err
		})
	}
	return m.s.wrap(ctx, op, err)
}

// SweepUploads implements storage.Media: it deletes uploads and parts
// expired at now (each part carries its upload's expiry), then settles
// blobs still pending after orphanAge: finalized if their _sg_media
// document exists, deleted if not.
func (m *Media) SweepUploads(ctx context.Context, now time.Time) (int, error) {
	const op = "sweep uploads"
	if err := m.s.begin(ctx, op); err != nil {
		return 0, err
	}
	expired := bson.D{{Key: "expires", Value: bson.D{{Key: "$lte", Value: msOf(now)}}}}
	var swept int64
	err := m.s.retry(ctx, func(ctx context.Context) error {
		res, err := m.uploads.DeleteMany(ctx, expired)
		if err == nil {
			swept = res.DeletedCount
		}
		return err
	})
	if err == nil {
		err = m.s.retry(ctx, func(ctx context.Context) error {
			_, err := m.parts.DeleteMany(ctx, expired)
			return err
		})
	}
	if err == nil {
		err = m.sweepPending(ctx, now.Add(-orphanAge))
	}
	if err != nil {
		return int(swept), m.s.wrap(ctx, op, err)
	}
	if swept > 0 {
		m.log.Debug("mongo: swept expired uploads", "uploads", swept)
	}
	return int(swept), nil
}

func (m *Media) sweepPending(ctx context.Context, before time.Time) error {
	var files []fileDoc
	err := m.s.retry(ctx, func(ctx context.Context) error {
		cur, err := m.files.Find(ctx, bson.D{
			{Key: "metadata.pending", Value: true},
			{Key: "uploadDate", Value: bson.D{{Key: "$lt", Value: msOf(before)}}},
		})
		if err != nil {
			return err
		}
		files = files[:0]
		return cur.All(ctx, &files)
	})
	if err != nil {
		return err
	}
	for _, f := range files {
		var doc mediaDoc
		found, err := m.findOne(ctx, m.media, bson.D{{Key: "_id", Value: f.Metadata.Media}}, &doc)
		if err != nil {
			return err
		}
		if !found || doc.File != f.ID {
			m.log.Debug("mongo: deleting an orphaned media blob", "file", f.ID.Hex())
			m.deleteFile(ctx, f.ID)
			continue
		}
		f.Length = doc.Size
		f.Metadata = fileMeta{Scope: doc.Scope, Media: doc.Key, MIME: doc.MIME, SHA256: doc.SHA256}
		err = m.s.retry(ctx, func(ctx context.Context) error {
			_, err := m.files.ReplaceOne(ctx, bson.D{{Key: "_id", Value: f.ID}}, f)
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}
