package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/syncgate/syncgate/storage"
)

var _ storage.Store = (*Store)(nil)

// lockTimeout bounds the wait for bbolt's file lock. Another process that
// holds the file keeps it for its whole life, so waiting longer only turns
// a clear error into a hang.
const lockTimeout = time.Second

// defaultChunk is how many keys one compaction or expiry transaction
// examines. bbolt has a single writer, so a bounded chunk bounds how long a
// Commit can wait behind housekeeping.
const defaultChunk = 1000

// Options tunes a Store. The zero value is ready to use.
type Options struct {
	// Logger receives housekeeping events (compaction, expiry, close) at
	// Debug and problems at Warn. Default: nil discards them.
	Logger *slog.Logger
	// Now stamps Entry.Committed and Receipt.Created when the caller left
	// them zero. Default: nil means time.Now. Tests inject a clock.
	Now func() time.Time
}

// Store is a storage.Store on one bbolt file. See the package comment for
// the layout and what blocks what.
type Store struct {
	db     *bolt.DB
	path   string
	log    *slog.Logger
	now    func() time.Time
	chunk  int // defaultChunk; tests lower it to cross chunk boundaries
	closed atomic.Bool
	group  groupCommit // Commit's write path
}

// Open opens (creating it and its directory if needed) the bbolt file at
// path. It fails after about a second, instead of hanging, when another
// process holds the file.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("embedded: open %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("embedded: open %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, boltOptions())
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("embedded: open %s: file is locked by another process (waited %s): %w", path, lockTimeout, err)
	}
	if err != nil {
		return nil, fmt.Errorf("embedded: open %s: %w", path, err)
	}
	if err := db.Update(initSchema); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("embedded: open %s: %w", path, err)
	}
	s := &Store{db: db, path: path, log: opts.Logger, now: opts.Now, chunk: defaultChunk, group: groupCommit{db: db}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.log.Debug("embedded store opened", "path", path)
	return s, nil
}

// boltOptions keeps fsync on (an acknowledged commit survives a crash). The
// freelist is not synced, as etcd does: that saves a write per commit and
// only costs a freelist rebuild at open after a crash.
func boltOptions() *bolt.Options {
	return &bolt.Options{
		Timeout:        lockTimeout,
		NoSync:         false,
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	}
}

// initSchema creates the top-level buckets and refuses files written by an
// unknown layout, which would otherwise be misread silently.
func initSchema(tx *bolt.Tx) error {
	for _, name := range []string{bucketMeta, bucketScopes, bucketMutations, bucketReceipts, bucketReceiptAge, bucketDevices} {
		if _, err := tx.CreateBucketIfNotExists([]byte(name)); err != nil {
			return err
		}
	}
	meta := tx.Bucket([]byte(bucketMeta))
	v := meta.Get([]byte(keySchema))
	if v == nil {
		return meta.Put([]byte(keySchema), u64(schemaVersion))
	}
	if len(v) != 8 || seqOf(v) != schemaVersion {
		return fmt.Errorf("unsupported schema version %x (want %d)", v, schemaVersion)
	}
	return nil
}

// Close closes the file. It waits for transactions in flight; if ctx ends
// first, Close returns ctx's error and the file is closed in the
// background once they end. Every call after the first returns
// storage.ErrClosed.
func (s *Store) Close(ctx context.Context) error {
	if !s.closed.CompareAndSwap(false, true) {
		return fmt.Errorf("embedded: close: %w", storage.ErrClosed)
	}
	done := make(chan error, 1)
	go func() { done <- s.db.Close() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("embedded: close %s: %w", s.path, err)
		}
		s.log.Debug("embedded store closed", "path", s.path)
		return nil
	case <-ctx.Done():
		s.log.Warn("embedded store close continues in background", "path", s.path, "err", ctx.Err())
		return fmt.Errorf("embedded: close %s: %w", s.path, ctx.Err())
	}
}

// begin refuses work on a closed store or an ended context.
func (s *Store) begin(ctx context.Context, op string) error {
	if s.closed.Load() {
		return fmt.Errorf("embedded: %s: %w", op, storage.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("embedded: %s: %w", op, err)
	}
	return nil
}

// view runs fn in a read transaction and prefixes its error.
func (s *Store) view(ctx context.Context, op string, fn func(*bolt.Tx) error) error {
	if err := s.begin(ctx, op); err != nil {
		return err
	}
	return s.wrap(op, s.db.View(fn))
}

// update runs fn in a write transaction (one fsync) and prefixes its error.
func (s *Store) update(ctx context.Context, op string, fn func(*bolt.Tx) error) error {
	if err := s.begin(ctx, op); err != nil {
		return err
	}
	return s.wrap(op, s.db.Update(fn))
}

// wrap adds the package prefix and turns bbolt's "not open" (a Close that
// raced with this call) into storage.ErrClosed.
func (s *Store) wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, berrors.ErrDatabaseNotOpen):
		return fmt.Errorf("embedded: %s: %w", op, storage.ErrClosed)
	default:
		return fmt.Errorf("embedded: %s: %w", op, err)
	}
}
