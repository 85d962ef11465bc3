package mongo

import (
	"context"
	"errors"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/syncgate/syncgate/storage"
)

// Compact deletes entries of scope committed before olderThan that a newer
// version of the same document supersedes (in the log or as a purge
// marker), and tombstones that are their document's latest entry. The
// head entry is never deleted.
//
// It walks the scope's log in seq order, s.chunk candidates at a time
// (entries below the head committed before the cutoff, read without their
// state), reads the latest version of each document of the chunk, and
// decides. A tombstone is purged in two steps, marker first: its marker
// (scope, collection, id, version, seq) is inserted into _sg_markers,
// and only then is the entry deleted, so a reader of the version guard
// always sees one or the other. The marker also raises the horizon, which
// is the highest marker seq (see Horizon). The chunk's deletions are one
// DeleteMany by _id; then the purged documents' materialized views are
// deleted (unless they hold a newer version already; best effort).
//
// Decisions stay right if commits run meanwhile (a newer version only
// supersedes more) and if two passes overlap (inserting the same marker
// twice is a no-op, deleting an entry twice counts once).
func (s *Store) Compact(ctx context.Context, scope string, olderThan time.Time) (storage.CompactStats, error) {
	var stats storage.CompactStats
	if err := s.begin(ctx, "compact"); err != nil {
		return stats, err
	}
	head, err := s.head(ctx, scope)
	if err != nil {
		return stats, s.wrap(ctx, "compact", err)
	}
	// Views first: a pass that fails does not stop compaction (the next
	// pass retries it from the same mark).
	if err := s.repairViews(ctx, scope, uint64(head)); err != nil && ctx.Err() == nil {
		s.log.Warn("mongo: repairing materialized views failed; the next compaction pass retries", "scope", scope, "err", err)
	}
	for from := int64(0); head > 0; {
		infos, err := s.compactCandidates(ctx, scope, from, head, olderThan)
		if err != nil {
			return stats, s.wrap(ctx, "compact", err)
		}
		if len(infos) == 0 {
			break
		}
		from = infos[len(infos)-1].Seq
		removed, err := s.compactChunk(ctx, scope, infos)
		stats.Removed += removed
		if err != nil {
			return stats, s.wrap(ctx, "compact", err)
		}
		if len(infos) < s.chunk {
			break
		}
	}
	h, err := s.horizon(ctx, scope)
	if err != nil {
		return stats, s.wrap(ctx, "compact", err)
	}
	stats.Horizon = uint64(h)
	s.log.Debug("compacted scope", "scope", scope, "removed", stats.Removed, "horizon", stats.Horizon)
	return stats, nil
}

// compactCandidates reads up to s.chunk entries of scope with from < seq <
// head committed before olderThan, in seq order, without state or clocks.
func (s *Store) compactCandidates(ctx context.Context, scope string, from, head int64, olderThan time.Time) ([]logInfo, error) {
	filter := append(bson.D{
		{Key: "scope", Value: scope},
		{Key: "seq", Value: bson.D{{Key: "$gt", Value: from}, {Key: "$lt", Value: head}}},
	}, before("committed", "committedNs", olderThan)...)
	var infos []logInfo
	err := s.retry(ctx, func(ctx context.Context) error {
		cur, err := s.logC.Find(ctx, filter, options.Find().
			SetSort(bson.D{{Key: "seq", Value: 1}}).SetLimit(int64(s.chunk)).SetProjection(infoProjection))
		if err != nil {
			return err
		}
		infos = nil
		return cur.All(ctx, &infos)
	})
	return infos, err
}

// compactChunk decides on and deletes one chunk of candidates, and returns
// how many entries it deleted.
func (s *Store) compactChunk(ctx context.Context, scope string, infos []logInfo) (int, error) {
	var refs []docRef
	seen := map[docRef]bool{}
	for _, e := range infos {
		if r := (docRef{e.Col, e.DocID}); !seen[r] {
			seen[r] = true
			refs = append(refs, r)
		}
	}
	// The latest version in the log and in the markers, apart: a
	// tombstone is purged only while it is the newest entry of the log.
	var logLatest, markerLatest map[docRef]int64
	err := parallel(
		func() (err error) { logLatest, err = s.logVersions(ctx, scope, refs); return err },
		func() (err error) { markerLatest, err = s.markerVersions(ctx, scope, refs); return err },
	)
	if err != nil {
		return 0, err
	}
	var (
		del    bson.A
		purged []markerDoc
	)
	now := msOf(s.now())
	for _, e := range infos {
		r := docRef{e.Col, e.DocID}
		l, m := logLatest[r], markerLatest[r]
		switch {
		case e.Version < max(l, m):
			del = append(del, e.ID) // superseded
		case e.Version == l && e.Deleted:
			del = append(del, e.ID) // an expired tombstone: purge it
			purged = append(purged, markerDoc{
				ID: bson.NewObjectID(), Scope: scope, Col: e.Col, DocID: e.DocID, Version: e.Version, Seq: e.Seq, Purged: now,
			})
		}
	}
	if len(del) == 0 {
		return 0, nil
	}
	if len(purged) > 0 {
		if err := s.insertMarkers(ctx, purged); err != nil {
			return 0, err
		}
	}
	var removed int64
	for start := 0; start < len(del); start += s.chunk {
		ids := del[start:min(start+s.chunk, len(del))]
		err := s.retry(ctx, func(ctx context.Context) error {
			res, err := s.logC.DeleteMany(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
			if res != nil {
				removed += res.DeletedCount
			}
			return err
		})
		if err != nil {
			return int(removed), err
		}
	}
	if len(purged) > 0 {
		s.deleteViews(ctx, purged)
	}
	return int(removed), nil
}

// logVersions is latestVersions without the markers.
func (s *Store) logVersions(ctx context.Context, scope string, refs []docRef) (map[docRef]int64, error) {
	out := make(map[docRef]int64, len(refs))
	fns := make([]func() error, len(refs))
	vals := make([]int64, len(refs))
	sem := make(chan struct{}, lookupParallelism)
	for i, r := range refs {
		fns[i] = func() error {
			sem <- struct{}{}
			defer func() { <-sem }()
			var row struct {
				Version int64 `bson:"version"`
			}
			_, err := s.findOne(ctx, s.logC, docFilter(scope, r), &row,
				options.FindOne().SetSort(bson.D{{Key: "version", Value: -1}}).SetProjection(bson.D{{Key: "version", Value: 1}}))
			vals[i] = row.Version
			return err
		}
	}
	if err := parallel(fns...); err != nil {
		return nil, err
	}
	for i, r := range refs {
		out[r] = vals[i]
	}
	return out, nil
}

// insertMarkers inserts purge markers, unordered; a marker that exists
// (same document and version: an earlier, interrupted or concurrent pass)
// is no error.
func (s *Store) insertMarkers(ctx context.Context, markers []markerDoc) error {
	docs := make([]any, len(markers))
	for i := range markers {
		docs[i] = &markers[i]
	}
	return s.retry(ctx, func(ctx context.Context) error {
		_, err := s.markers.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
		var bwe mongo.BulkWriteException
		if err != nil && errors.As(err, &bwe) && bwe.WriteConcernError == nil {
			for _, we := range bwe.WriteErrors {
				if !isDupCode(we.Code) {
					return err
				}
			}
			return nil
		}
		return err
	})
}
