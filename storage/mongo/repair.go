package mongo

import (
	"context"
	"errors"
	"math"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// collViewMarks holds, per scope, the seq through which the materialized
// views are known to reflect the log: {_id: scope, seq}.
const collViewMarks = "_sg_view_marks"

// repairViews makes scope's materialized views catch up with the log
// through head: it re-applies every entry above the scope's view mark with
// the same guarded upserts as a commit, then raises the mark to head.
//
// Why: the view write follows the commit point and is best effort, so a
// node that dies between the two, or a view write that fails, leaves a
// document behind the log until its next change. Compaction runs this
// first on every scope, so a view is never behind for longer than one
// compaction period (history.compact_every). The writes are idempotent
// (the version guard), so a pass that is cut off, or two passes that
// overlap, do no harm; an entry committed while a pass runs but not read
// by it is above the new mark only if its seq is above head, and so is
// covered by the next pass. The mark is raised with $max, the only
// conditional update here, and harmless if it loses a race: a lower mark
// only re-applies entries again.
func (s *Store) repairViews(ctx context.Context, scope string, head uint64) error {
	if head == 0 {
		return nil
	}
	marks := s.db.Collection(collViewMarks)
	var mark struct {
		Seq int64 `bson:"seq"`
	}
	err := s.retry(ctx, func(ctx context.Context) error {
		return marks.FindOne(ctx, bson.D{{Key: "_id", Value: scope}}).Decode(&mark)
	})
	if err != nil && !errors.Is(err, mongo.ErrNoDocuments) {
		return err
	}
	since := uint64(max(mark.Seq, 0))
	repaired := 0
	for since < head {
		entries, err := s.Read(ctx, scope, since, head, s.chunk)
		if err != nil {
			return err
		}
		if len(entries) == 0 {
			break
		}
		if err := s.writeViews(ctx, entries); err != nil {
			return err
		}
		repaired += len(entries)
		since = entries[len(entries)-1].Seq
	}
	if head > math.MaxInt64 {
		return nil
	}
	err = s.retry(ctx, func(ctx context.Context) error {
		_, err := marks.UpdateOne(ctx, bson.D{{Key: "_id", Value: scope}},
			bson.D{{Key: "$max", Value: bson.D{{Key: "seq", Value: int64(head)}}}}, options.UpdateOne().SetUpsert(true))
		return err
	})
	if err == nil && repaired > 0 {
		s.log.Debug("mongo: materialized views re-applied", "scope", scope, "entries", repaired, "through", head)
	}
	return err
}
