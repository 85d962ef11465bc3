package embedded

import (
	"context"
	"encoding/json"
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
	// SessionSweepEvery is how often expired device sessions are deleted
	// (reads ignore them anyway; see SweepSessions). Default: 0 means one
	// minute; negative disables the sweeper (tests sweep by hand).
	SessionSweepEvery time.Duration
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

	sweeper sessionSweeper // SweepSessions loop, stopped by Close
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
	var found uint64
	err = db.Update(func(tx *bolt.Tx) error {
		var err error
		found, err = initSchema(tx)
		return err
	})
	if err == nil && found == 1 {
		err = migrateV1(db)
	}
	if err != nil {
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
	s.startSessionSweeper(opts.SessionSweepEvery)
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
// unknown layout, which would otherwise be misread silently. It returns the
// schema version the file had (schemaVersion for a new file); version 1
// is accepted, for migrateV1 to upgrade.
func initSchema(tx *bolt.Tx) (uint64, error) {
	for _, name := range []string{bucketMeta, bucketScopes, bucketMutations, bucketReceipts, bucketReceiptAge, bucketDevices, bucketConflicts} {
		if _, err := tx.CreateBucketIfNotExists([]byte(name)); err != nil {
			return 0, err
		}
	}
	meta := tx.Bucket([]byte(bucketMeta))
	v := meta.Get([]byte(keySchema))
	if v == nil {
		return schemaVersion, meta.Put([]byte(keySchema), u64(schemaVersion))
	}
	if len(v) != 8 || (seqOf(v) != schemaVersion && seqOf(v) != 1) {
		return 0, fmt.Errorf("unsupported schema version %x (want %d)", v, schemaVersion)
	}
	return seqOf(v), nil
}

// migrateChunk is how many log entries one migration transaction indexes.
const migrateChunk = 10_000

// migrateV1 upgrades a version 1 file: it builds each scope's chain index
// from its log, in transactions of migrateChunk entries, then records
// version 2. Interrupted, it simply runs again at the next Open (it
// rewrites the same links). An entry whose previous version was already
// compacted gets no parent, which is what the chain would have lost anyway.
func migrateV1(db *bolt.DB) error {
	var scopes []string
	if err := db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(bucketScopes)).ForEachBucket(func(k []byte) error {
			scopes = append(scopes, string(k))
			return nil
		})
	}); err != nil {
		return err
	}
	for _, scope := range scopes {
		latest := map[string]docRef{} // per document, in the log read so far
		for from := uint64(1); from != 0; {
			err := db.Update(func(tx *bolt.Tx) error {
				sc := tx.Bucket([]byte(bucketScopes)).Bucket([]byte(scope))
				log := sc.Bucket([]byte(bucketLog))
				chain, err := sc.CreateBucketIfNotExists([]byte(bucketChain))
				if err != nil || log == nil {
					return err
				}
				chain.FillPercent = logFillPercent
				c, n := log.Cursor(), 0
				for k, v := c.Seek(seqKey(from)); k != nil; k, v = c.Next() {
					if n == migrateChunk {
						from = seqOf(k)
						return nil
					}
					n++
					var e entryInfo
					if err := json.Unmarshal(v, &e); err != nil {
						return fmt.Errorf("migrate %s seq %d: %w", scope, seqOf(k), err)
					}
					dk := string(docKey(e.Collection, e.DocID))
					var l link
					if prev := latest[dk]; prev.seq != 0 && prev.version+1 == e.Version {
						if l, err = newLink(chain, prev.seq, prev.version); err != nil {
							return err
						}
					}
					if err := chain.Put(seqKey(e.Seq), encodeLink(l)); err != nil {
						return err
					}
					latest[dk] = docRef{version: e.Version, seq: e.Seq}
				}
				from = 0
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	return db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(bucketMeta)).Put([]byte(keySchema), u64(schemaVersion))
	})
}

// Close closes the file. It waits for transactions in flight; if ctx ends
// first, Close returns ctx's error and the file is closed in the
// background once they end. Every call after the first returns
// storage.ErrClosed.
func (s *Store) Close(ctx context.Context) error {
	if !s.closed.CompareAndSwap(false, true) {
		return fmt.Errorf("embedded: close: %w", storage.ErrClosed)
	}
	s.stopSessionSweeper()
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
