package mongo

import (
	"context"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/syncgate/syncgate/storage"
)

// Conflict returns one conflict record of scope, or storage.ErrNotFound:
// a point read by _id.
func (s *Store) Conflict(ctx context.Context, scope, id string) (storage.ConflictRecord, error) {
	if err := s.begin(ctx, "conflict"); err != nil {
		return storage.ConflictRecord{}, err
	}
	if scope == "" {
		return storage.ConflictRecord{}, s.wrap(ctx, "conflict", storage.ErrNotFound)
	}
	var d conflictDoc
	found, err := s.findOne(ctx, s.conflicts, bson.D{{Key: "_id", Value: conflictKey(scope, id)}}, &d)
	if err == nil && !found {
		err = storage.ErrNotFound
	}
	if err != nil {
		return storage.ConflictRecord{}, s.wrap(ctx, "conflict", err)
	}
	c, err := d.record()
	return c, s.wrap(ctx, "conflict", err)
}

// ListConflicts returns records of scope in (Created, ID) order, starting
// after the record named `after` ("" from the start), at most limit (which
// must be positive), on the scope_created (or, openOnly, the
// scope_status_created) index. An `after` that names no record of scope is
// storage.ErrNotFound; one that names a record closed since keeps its
// place, since its created time is still known.
func (s *Store) ListConflicts(ctx context.Context, scope string, openOnly bool, after string, limit int) ([]storage.ConflictRecord, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("mongo: list conflicts: limit %d must be positive", limit)
	}
	if err := s.begin(ctx, "list conflicts"); err != nil {
		return nil, err
	}
	filter := bson.D{{Key: "scope", Value: scope}}
	if openOnly {
		filter = append(filter, bson.E{Key: "status", Value: string(storage.ConflictOpen)})
	}
	if after != "" {
		var a conflictDoc
		found, err := s.findOne(ctx, s.conflicts, bson.D{{Key: "_id", Value: conflictKey(scope, after)}}, &a,
			options.FindOne().SetProjection(bson.D{{Key: "created", Value: 1}, {Key: "createdNs", Value: 1}, {Key: "cid", Value: 1}}))
		if err == nil && !found {
			err = storage.ErrNotFound
		}
		if err != nil {
			return nil, s.wrap(ctx, "list conflicts", err)
		}
		filter = append(filter, bson.E{Key: "$or", Value: bson.A{
			bson.D{{Key: "created", Value: bson.D{{Key: "$gt", Value: a.Created}}}},
			bson.D{{Key: "created", Value: a.Created}, {Key: "createdNs", Value: bson.D{{Key: "$gt", Value: a.CreatedNs}}}},
			bson.D{{Key: "created", Value: a.Created}, {Key: "createdNs", Value: a.CreatedNs}, {Key: "cid", Value: bson.D{{Key: "$gt", Value: after}}}},
		}})
	}
	var out []storage.ConflictRecord
	err := s.retry(ctx, func(ctx context.Context) error {
		cur, err := s.conflicts.Find(ctx, filter, options.Find().
			SetSort(bson.D{{Key: "created", Value: 1}, {Key: "createdNs", Value: 1}, {Key: "cid", Value: 1}}).
			SetLimit(int64(limit)))
		if err != nil {
			return err
		}
		var docs []conflictDoc
		if err := cur.All(ctx, &docs); err != nil {
			return err
		}
		out = make([]storage.ConflictRecord, len(docs))
		for i := range docs {
			if out[i], err = docs[i].record(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap(ctx, "list conflicts", err)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// AgeConflicts marks open records created before abandonBefore as
// abandoned, with Closed stamped by Options.Now (one UpdateMany on
// status_created), then deletes resolved or abandoned records closed
// before deleteBefore (one DeleteMany on status_closed), across all
// scopes. The update sets only the status and closed fields, which are
// authoritative over the record's JSON. It may race with a rewrite of the
// same record (the storage contract allows it): FerretDB does not apply
// the status filter atomically, so the record ends resolved or abandoned,
// whichever write lands last, never open.
func (s *Store) AgeConflicts(ctx context.Context, abandonBefore, deleteBefore time.Time) (abandoned, deleted int, err error) {
	if err := s.begin(ctx, "age conflicts"); err != nil {
		return 0, 0, err
	}
	now := s.now()
	abandonFilter := append(bson.D{{Key: "status", Value: string(storage.ConflictOpen)}}, before("created", "createdNs", abandonBefore)...)
	update := bson.D{{Key: "$set", Value: bson.D{
		{Key: "status", Value: string(storage.ConflictAbandoned)},
		{Key: "closed", Value: msOf(now)},
		{Key: "closedNs", Value: nsOf(now)},
	}}}
	var a, d int64
	err = s.retry(ctx, func(ctx context.Context) error {
		res, err := s.conflicts.UpdateMany(ctx, abandonFilter, update)
		if res != nil {
			a += res.ModifiedCount
		}
		return err
	})
	if err != nil {
		return int(a), 0, s.wrap(ctx, "age conflicts", err)
	}
	deleteFilter := append(bson.D{{Key: "status", Value: bson.D{{Key: "$in", Value: bson.A{
		string(storage.ConflictResolved), string(storage.ConflictAbandoned),
	}}}}}, before("closed", "closedNs", deleteBefore)...)
	err = s.retry(ctx, func(ctx context.Context) error {
		res, err := s.conflicts.DeleteMany(ctx, deleteFilter)
		if res != nil {
			d += res.DeletedCount
		}
		return err
	})
	if err != nil {
		return int(a), int(d), s.wrap(ctx, "age conflicts", err)
	}
	s.log.Debug("aged conflicts", "abandoned", a, "deleted", d)
	return int(a), int(d), nil
}
