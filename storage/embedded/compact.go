package embedded

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/syncgate/syncgate/storage"
)

// entryInfo is the part of an entry compaction decides on; decoding into it
// skips building the state map.
type entryInfo struct {
	Seq        uint64            `json:"seq"`
	Collection string            `json:"col"`
	DocID      string            `json:"id"`
	Version    uint64            `json:"version"`
	Deleted    bool              `json:"deleted"`
	Device     storage.DeviceRef `json:"device"`
	MutationID uint64            `json:"mid"`
	Committed  time.Time         `json:"committed"`
}

type action int

const (
	keep      action = iota
	supersede        // a newer entry of the same document exists
	purge            // the document's latest entry is an expired tombstone
)

// decide is the whole compaction rule. ref is the document's docs ref: its
// latest entry, or a marker (seq 0) left by a purged tombstone, which
// supersedes every entry of the document still in the log. (nil, a
// document without a ref, is what a schema 1 store left after a purge, and
// counts as a marker.)
func decide(e entryInfo, ref *docRef, head uint64, olderThan time.Time) action {
	switch {
	case e.Seq == head, !e.Committed.Before(olderThan):
		return keep // the head keeps seqs from being reused
	case ref == nil || ref.seq == 0 || ref.seq > e.Seq:
		return supersede
	case ref.seq == e.Seq && e.Deleted:
		return purge
	}
	return keep
}

// Compact deletes entries of scope committed before olderThan that a newer
// entry of the same document supersedes, and tombstones that are their
// document's latest entry (replacing the document's docs ref by a marker
// of the tombstone's version, and raising the horizon to the tombstone's
// seq). The head entry is never deleted. Mutation-index and chain keys of
// deleted entries go with them.
//
// The pass scans chunks of keys in read transactions, which never block
// writers, and deletes each chunk's candidates in one short write
// transaction that re-checks them, so Commit waits at most one chunk.
func (s *Store) Compact(ctx context.Context, scope string, olderThan time.Time) (storage.CompactStats, error) {
	var stats storage.CompactStats
	from := uint64(1)
	for {
		candidates, next, err := s.compactCandidates(ctx, scope, from, olderThan)
		if err != nil {
			return stats, err
		}
		if len(candidates) > 0 {
			removed, err := s.compactApply(ctx, scope, candidates, olderThan)
			stats.Removed += removed
			if err != nil {
				return stats, err
			}
		}
		if next == 0 {
			break
		}
		from = next
	}
	err := s.view(ctx, "compact", func(tx *bolt.Tx) error {
		var err error
		stats.Horizon, err = horizon(scopeBucket(tx, scope))
		return err
	})
	if err != nil {
		return stats, err
	}
	s.log.Debug("compacted scope", "scope", scope, "removed", stats.Removed, "horizon", stats.Horizon)
	return stats, nil
}

// compactCandidates examines up to s.chunk log keys from seq `from` and
// returns the seqs that look deletable, and the seq to continue from (0
// when the log is exhausted).
func (s *Store) compactCandidates(ctx context.Context, scope string, from uint64, olderThan time.Time) ([]uint64, uint64, error) {
	var (
		candidates []uint64
		next       uint64
	)
	err := s.view(ctx, "compact", func(tx *bolt.Tx) error {
		candidates, next = nil, 0
		log, docs := scopeSub(tx, scope, bucketLog), scopeSub(tx, scope, bucketDocs)
		if log == nil || docs == nil {
			return nil
		}
		head := lastSeq(log)
		c := log.Cursor()
		n := 0
		for k, v := c.Seek(seqKey(from)); k != nil; k, v = c.Next() {
			if n == s.chunk {
				next = seqOf(k)
				return nil
			}
			n++
			act, _, err := classify(docs, v, head, olderThan)
			if err != nil {
				return fmt.Errorf("seq %d: %w", seqOf(k), err)
			}
			if act != keep {
				candidates = append(candidates, seqOf(k))
			}
		}
		return nil
	})
	return candidates, next, err
}

// compactApply deletes candidates that still qualify; a commit or another
// compaction may have run since the scan.
func (s *Store) compactApply(ctx context.Context, scope string, candidates []uint64, olderThan time.Time) (int, error) {
	var removed int
	err := s.update(ctx, "compact", func(tx *bolt.Tx) error {
		removed = 0
		sc := scopeBucket(tx, scope)
		if sc == nil {
			return nil // scope buckets are never deleted; defensive
		}
		log, docs, chain := sc.Bucket([]byte(bucketLog)), sc.Bucket([]byte(bucketDocs)), sc.Bucket([]byte(bucketChain))
		muts := tx.Bucket([]byte(bucketMutations))
		head := lastSeq(log)
		h, err := horizon(sc)
		if err != nil {
			return err
		}
		newHorizon := h
		for _, seq := range candidates {
			k := seqKey(seq)
			v := log.Get(k)
			if v == nil {
				continue
			}
			act, e, err := classify(docs, v, head, olderThan)
			if err != nil {
				return fmt.Errorf("seq %d: %w", seq, err)
			}
			if act == keep {
				continue
			}
			if err := log.Delete(k); err != nil {
				return err
			}
			if err := unindexMutation(muts, e, scope); err != nil {
				return err
			}
			if err := chain.Delete(k); err != nil {
				return err
			}
			if act == purge {
				// A marker, not a deletion: the document's next entry
				// must still be version e.Version+1.
				if err := docs.Put(docKey(e.Collection, e.DocID), encodeDocRef(docRef{version: e.Version})); err != nil {
					return err
				}
				newHorizon = max(newHorizon, e.Seq)
			}
			removed++
		}
		if newHorizon != h {
			return sc.Put([]byte(keyHorizon), u64(newHorizon))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return removed, nil
}

// classify decodes one log value and applies decide to it.
func classify(docs *bolt.Bucket, v []byte, head uint64, olderThan time.Time) (action, entryInfo, error) {
	var e entryInfo
	if err := json.Unmarshal(v, &e); err != nil {
		return keep, e, fmt.Errorf("decode entry: %w", err)
	}
	var ref *docRef
	if raw := docs.Get(docKey(e.Collection, e.DocID)); raw != nil {
		r, err := decodeDocRef(raw)
		if err != nil {
			return keep, e, err
		}
		ref = &r
	}
	return decide(e, ref, head, olderThan), e, nil
}

// unindexMutation removes the mutation-index key of a deleted entry, if it
// still points at that entry.
func unindexMutation(muts *bolt.Bucket, e entryInfo, scope string) error {
	if e.MutationID == 0 {
		return nil
	}
	mk := mutKey(e.Device, e.MutationID)
	v := muts.Get(mk)
	if v == nil {
		return nil
	}
	ref, err := decodeMutRef(v)
	if err != nil {
		return err
	}
	if ref.scope != scope || ref.seq != e.Seq {
		return nil
	}
	return muts.Delete(mk)
}
