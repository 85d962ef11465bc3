package embedded

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/syncgate/syncgate/storage"
)

// errRollback aborts a write transaction that has nothing to write (such as
// a Commit whose first entry lost), so that it costs no fsync.
var errRollback = errors.New("rollback")

// logFillPercent packs log pages: seqs only ever append, so bbolt's default
// half-full split would waste half of every page.
const logFillPercent = 0.9

// Commit inserts b.Entries in order inside one bbolt transaction (one
// fsync). Entry i is rejected when its seq is not head+1 (TakenSeq), when
// its version is not the document's latest version + 1 (a purged
// document's marker counts as its latest version), or 1 for a document
// that never had an entry (TakenVersion), or when its (device, mutation id)
// is already indexed (TakenMutation); the guards are checked in that order.
// Entries before the rejected one stay committed and Commit returns their
// count and a bare *storage.CommitError. Receipts, conflict records and the
// device's LastMutationID (which only moves forward) are written in the
// same transaction, and only when every entry committed (or the batch has
// none).
//
// Committed and Created are stamped with Options.Now when zero, and so is
// the Closed of a closed conflict record. An entry
// with MutationID 0 is not a device's mutation and is not indexed.
// Malformed batches (entries of another scope, non-contiguous seqs, a seq
// past head+1 that would leave a gap) are refused with a plain error and
// commit nothing.
func (s *Store) Commit(ctx context.Context, b *storage.Batch) (int, error) {
	if err := b.Validate(); err != nil {
		return 0, fmt.Errorf("embedded: commit: %w", err)
	}
	if len(b.Entries) == 0 && len(b.Receipts) == 0 && len(b.Conflicts) == 0 && b.LastMutationID == 0 {
		return 0, s.begin(ctx, "commit") // nothing to write
	}
	// Encoding happens before the write lock is taken, so concurrent
	// writers only serialize on the B-tree work and the fsync.
	now := s.now()
	entries, err := encodeEntries(b.Entries, now)
	if err != nil {
		return 0, fmt.Errorf("embedded: commit: %w", err)
	}
	receipts, err := encodeReceipts(b.Receipts, now)
	if err != nil {
		return 0, fmt.Errorf("embedded: commit: %w", err)
	}
	conflicts, err := encodeConflicts(b.Conflicts, now)
	if err != nil {
		return 0, fmt.Errorf("embedded: commit: %w", err)
	}
	var (
		n     int
		taken *storage.CommitError
	)
	if err := s.begin(ctx, "commit"); err != nil {
		return 0, err
	}
	err = s.wrap("commit", s.group.do(func(tx *bolt.Tx) error {
		n, taken = 0, nil // fn may rerun (group.go): recompute from scratch
		if len(b.Entries) > 0 {
			var err error
			n, taken, err = insertEntries(tx, b, entries)
			switch {
			case err != nil:
				return err
			case taken != nil && n == 0:
				return errRollback
			case taken != nil:
				return nil // keep the prefix; receipts wait for a full win
			}
		}
		return writeProgress(tx, b, receipts, conflicts)
	}))
	if err != nil && !errors.Is(err, errRollback) {
		return 0, err
	}
	if taken != nil {
		return n, taken
	}
	return n, nil
}

func encodeEntries(entries []storage.Entry, now time.Time) ([][]byte, error) {
	out := make([][]byte, len(entries))
	for i, e := range entries {
		if e.Committed.IsZero() {
			e.Committed = now
		}
		v, err := json.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("encode entry %d: %w", i, err)
		}
		out[i] = v
	}
	return out, nil
}

// insertEntries applies the three uniqueness guards to each entry in turn
// and inserts the winners. Because bbolt has a single writer, the head and
// latest versions it reads cannot move under it.
func insertEntries(tx *bolt.Tx, b *storage.Batch, values [][]byte) (int, *storage.CommitError, error) {
	// Buckets are looked up, not created, until the first entry is known to
	// win: a commit whose first entry loses writes nothing, so it can share
	// a group transaction (see group.go) and leaves no empty scope behind.
	scopes := tx.Bucket([]byte(bucketScopes))
	var log, docs, chain *bolt.Bucket
	if sc := scopes.Bucket([]byte(b.Scope)); sc != nil {
		log, docs, chain = sc.Bucket([]byte(bucketLog)), sc.Bucket([]byte(bucketDocs)), sc.Bucket([]byte(bucketChain))
		if log == nil || docs == nil || chain == nil {
			return 0, nil, fmt.Errorf("scope %q lacks a log, docs or chain bucket", b.Scope)
		}
	}
	muts := tx.Bucket([]byte(bucketMutations))
	var head uint64
	if log != nil {
		head = lastSeq(log)
	}
	for i, e := range b.Entries {
		if e.Seq <= head {
			return i, &storage.CommitError{Index: i, Taken: storage.TakenSeq}, nil
		}
		if e.Seq > head+1 {
			return i, nil, fmt.Errorf("entry %d: seq %d would leave a gap after head %d", i, e.Seq, head)
		}
		dk := docKey(e.Collection, e.DocID)
		var latest docRef
		if docs != nil {
			var err error
			if latest, err = docLatest(docs, dk); err != nil {
				return i, nil, err
			}
		}
		if e.Version != latest.version+1 {
			return i, &storage.CommitError{Index: i, Taken: storage.TakenVersion}, nil
		}
		var mk []byte
		if e.MutationID != 0 {
			mk = mutKey(e.Device, e.MutationID)
			if muts.Get(mk) != nil {
				return i, &storage.CommitError{Index: i, Taken: storage.TakenMutation}, nil
			}
		}
		if log == nil {
			var err error
			if log, docs, chain, err = createScope(scopes, b.Scope); err != nil {
				return i, nil, err
			}
		}
		if err := log.Put(seqKey(e.Seq), values[i]); err != nil {
			return i, nil, err
		}
		if err := docs.Put(dk, encodeDocRef(docRef{version: e.Version, seq: e.Seq})); err != nil {
			return i, nil, err
		}
		// After a marker (seq 0) the entry starts a new life: no link back.
		l, err := newLink(chain, latest.seq, latest.version)
		if err != nil {
			return i, nil, err
		}
		if err := chain.Put(seqKey(e.Seq), encodeLink(l)); err != nil {
			return i, nil, err
		}
		if mk != nil {
			if err := muts.Put(mk, encodeMutRef(mutRef{scope: b.Scope, seq: e.Seq})); err != nil {
				return i, nil, err
			}
		}
		head = e.Seq
	}
	return len(b.Entries), nil, nil
}

func createScope(scopes *bolt.Bucket, scope string) (log, docs, chain *bolt.Bucket, err error) {
	sc, err := scopes.CreateBucketIfNotExists([]byte(scope))
	if err != nil {
		return nil, nil, nil, err
	}
	if log, err = sc.CreateBucketIfNotExists([]byte(bucketLog)); err != nil {
		return nil, nil, nil, err
	}
	log.FillPercent = logFillPercent
	if docs, err = sc.CreateBucketIfNotExists([]byte(bucketDocs)); err != nil {
		return nil, nil, nil, err
	}
	if chain, err = sc.CreateBucketIfNotExists([]byte(bucketChain)); err != nil {
		return nil, nil, nil, err
	}
	chain.FillPercent = logFillPercent // keyed by seq: appends only
	return log, docs, chain, nil
}

// docLatest is the version and seq of a document's latest entry; seq 0 for
// a marker (a purged document, see Compact), and zero when the document
// never had an entry.
func docLatest(docs *bolt.Bucket, dk []byte) (docRef, error) {
	v := docs.Get(dk)
	if v == nil {
		return docRef{}, nil
	}
	return decodeDocRef(v)
}

// writeProgress stores what becomes durable only with a fully committed
// batch: the receipts, the conflict records and the device's high-water
// mark.
func writeProgress(tx *bolt.Tx, b *storage.Batch, receipts []encodedReceipt, conflicts []encodedConflict) error {
	for _, r := range receipts {
		if err := putReceipt(tx, r); err != nil {
			return err
		}
	}
	for _, c := range conflicts {
		if err := putConflict(tx, b.Scope, c); err != nil {
			return err
		}
	}
	if b.LastMutationID == 0 {
		return nil
	}
	return updateDevice(tx, b.Device, func(st *storage.DeviceState) bool {
		if b.LastMutationID <= st.LastMutationID {
			return false
		}
		st.LastMutationID = b.LastMutationID
		return true
	})
}

// Read returns entries of scope with since < seq <= through, ascending, at
// most limit (which must be positive). Compacted seqs are simply absent.
func (s *Store) Read(ctx context.Context, scope string, since, through uint64, limit int) ([]storage.Entry, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("embedded: read: limit %d must be positive", limit)
	}
	var out []storage.Entry
	err := s.view(ctx, "read", func(tx *bolt.Tx) error {
		out = nil
		log := scopeSub(tx, scope, bucketLog)
		if log == nil || since == math.MaxUint64 || through <= since {
			return nil
		}
		out = make([]storage.Entry, 0, min(limit, 256, int(min(through-since, 256))))
		c := log.Cursor()
		for k, v := c.Seek(seqKey(since + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			if seqOf(k) > through {
				break
			}
			e, err := decodeEntry(v)
			if err != nil {
				return fmt.Errorf("seq %d: %w", seqOf(k), err)
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Head returns the highest committed seq of scope, 0 if none. Compaction
// never deletes the head entry, so the last log key is the head.
func (s *Store) Head(ctx context.Context, scope string) (uint64, error) {
	var head uint64
	err := s.view(ctx, "head", func(tx *bolt.Tx) error {
		if log := scopeSub(tx, scope, bucketLog); log != nil {
			head = lastSeq(log)
		}
		return nil
	})
	return head, err
}

// Horizon returns the highest seq of a tombstone compaction removed, 0 if none.
func (s *Store) Horizon(ctx context.Context, scope string) (uint64, error) {
	var h uint64
	err := s.view(ctx, "horizon", func(tx *bolt.Tx) error {
		var err error
		h, err = horizon(scopeBucket(tx, scope))
		return err
	})
	return h, err
}

// Latest returns the newest entry of a document, a marker (Seq 0, Deleted,
// the purged version) when compaction purged its tombstone, or
// storage.ErrNotFound when it never had an entry.
func (s *Store) Latest(ctx context.Context, scope, collection, id string) (storage.Entry, error) {
	var e storage.Entry
	err := s.view(ctx, "latest", func(tx *bolt.Tx) error {
		docs := scopeSub(tx, scope, bucketDocs)
		if docs == nil {
			return storage.ErrNotFound
		}
		v := docs.Get(docKey(collection, id))
		if v == nil {
			return storage.ErrNotFound
		}
		ref, err := decodeDocRef(v)
		if err != nil {
			return err
		}
		if ref.seq == 0 {
			e = storage.Entry{Scope: scope, Collection: collection, DocID: id, Version: ref.version, Deleted: true}
			return nil
		}
		raw := scopeSub(tx, scope, bucketLog).Get(seqKey(ref.seq))
		if raw == nil {
			return fmt.Errorf("docs points at missing seq %d", ref.seq)
		}
		e, err = decodeEntry(raw)
		return err
	})
	return e, err
}

// Version returns the entry that gave a document the given version, or
// storage.ErrNotFound when there is none (never written, or compacted
// away). It walks the chain index back from the document's latest entry
// (see chain.go). The chain does not cross a purge: the first entry after
// a marker links to nothing, so versions up to the marker's are not found.
// They were purged with the tombstone, or removed as superseded before it;
// only an entry committed out of Committed order can still be in the log,
// superseded and due to go at the next compaction.
func (s *Store) Version(ctx context.Context, scope, collection, id string, version uint64) (storage.Entry, error) {
	var e storage.Entry
	err := s.view(ctx, "version", func(tx *bolt.Tx) error {
		sc := scopeBucket(tx, scope)
		if sc == nil {
			return storage.ErrNotFound
		}
		log, docs, chain := sc.Bucket([]byte(bucketLog)), sc.Bucket([]byte(bucketDocs)), sc.Bucket([]byte(bucketChain))
		latest, err := docLatest(docs, docKey(collection, id))
		if err != nil {
			return err
		}
		seq, ok, err := findVersion(chain, log, latest, version)
		if err != nil {
			return err
		}
		if !ok {
			return storage.ErrNotFound
		}
		if e, err = decodeEntry(log.Get(seqKey(seq))); err != nil {
			return err
		}
		if e.Collection != collection || e.DocID != id || e.Version != version {
			return fmt.Errorf("chain leads to seq %d, which holds %s/%s v%d", seq, e.Collection, e.DocID, e.Version)
		}
		return nil
	})
	return e, err
}

// Scopes lists scopes that have entries, after `after`, ascending, at most
// limit (which must be positive).
func (s *Store) Scopes(ctx context.Context, after string, limit int) ([]string, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("embedded: scopes: limit %d must be positive", limit)
	}
	var out []string
	err := s.view(ctx, "scopes", func(tx *bolt.Tx) error {
		out = nil
		c := tx.Bucket([]byte(bucketScopes)).Cursor()
		k, _ := c.Seek([]byte(after))
		if k != nil && string(k) == after {
			k, _ = c.Next()
		}
		for ; k != nil && len(out) < limit; k, _ = c.Next() {
			out = append(out, string(k))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func scopeBucket(tx *bolt.Tx, scope string) *bolt.Bucket {
	if scope == "" {
		return nil
	}
	return tx.Bucket([]byte(bucketScopes)).Bucket([]byte(scope))
}

// scopeSub returns a sub-bucket of a scope, nil when the scope has none.
func scopeSub(tx *bolt.Tx, scope, name string) *bolt.Bucket {
	sc := scopeBucket(tx, scope)
	if sc == nil {
		return nil
	}
	return sc.Bucket([]byte(name))
}

func lastSeq(log *bolt.Bucket) uint64 {
	k, _ := log.Cursor().Last()
	if k == nil {
		return 0
	}
	return seqOf(k)
}

func horizon(sc *bolt.Bucket) (uint64, error) {
	if sc == nil {
		return 0, nil
	}
	v := sc.Get([]byte(keyHorizon))
	if v == nil {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, errors.New("corrupt horizon")
	}
	return seqOf(v), nil
}

func decodeEntry(v []byte) (storage.Entry, error) {
	var e storage.Entry
	if err := json.Unmarshal(v, &e); err != nil {
		return storage.Entry{}, fmt.Errorf("decode entry: %w", err)
	}
	return e, nil
}
