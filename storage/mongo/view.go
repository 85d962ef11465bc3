package mongo

import (
	"context"
	"errors"
	"math"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/syncgate/syncgate/storage"
)

// viewID is the _id of a materialized document: the scope and the
// document id, so that two scopes can hold the same id in one collection.
// Field order matters to MongoDB's equality on embedded documents: always
// scope, then id.
func viewID(scope, id string) bson.D {
	return bson.D{{Key: "scope", Value: scope}, {Key: "id", Value: id}}
}

// viewable reports whether an app collection name can be a MongoDB
// collection the store may write. The engine only lets through
// [A-Za-z_][A-Za-z0-9_]{0,63} without a "system" or "_sg" prefix; this is
// the store's own guard.
func viewable(coll string) bool {
	return coll != "" && !strings.HasPrefix(coll, "_sg") && !strings.HasPrefix(coll, "system.") &&
		!strings.ContainsAny(coll, "$\x00")
}

// writeViews writes the state of each document after docs into its
// collection's materialized view: the newest entry per document, as one
// unordered BulkWrite of guarded upserts per collection. A view document
// holds the state's fields at the top level and the sync metadata in
// _sync; a tombstone leaves only _id and _sync (deleted: true). The filter
// {_id, _sync.version < new} keeps an older write from replacing a newer
// one; when the view already holds a newer version, the upsert collides on
// _id (11000 on MongoDB, InternalError on FerretDB) and that is the
// expected outcome, not a failure. Every other failure is logged at Warn
// and returned; the commit path drops it (the view is best effort, the log
// wins, and repairViews rewrites what a failed write missed).
func (s *Store) writeViews(ctx context.Context, entries []storage.Entry) error {
	type pending struct {
		models []mongo.WriteModel
		index  map[docRef]int // latest entry per document in this batch
	}
	byColl := map[string]*pending{}
	var order []string
	for i := range entries {
		e := &entries[i]
		if !viewable(e.Collection) {
			s.log.Warn("mongo: no materialized view for this collection name", "collection", e.Collection)
			continue
		}
		p := byColl[e.Collection]
		if p == nil {
			p = &pending{index: map[docRef]int{}}
			byColl[e.Collection] = p
			order = append(order, e.Collection)
		}
		m := viewModel(e)
		r := docRef{e.Collection, e.DocID}
		if k, ok := p.index[r]; ok {
			p.models[k] = m // a later version of the same document in this batch
			continue
		}
		p.index[r] = len(p.models)
		p.models = append(p.models, m)
	}
	fns := make([]func() error, len(order))
	for i, coll := range order {
		fns[i] = func() error {
			s.ensureViewIndex(ctx, coll)
			return s.bulkView(ctx, coll, byColl[coll].models)
		}
	}
	return parallel(fns...)
}

// viewBulkMax is the most upserts one view BulkWrite carries; a larger
// write is split into several, one after another. FerretDB v1 (the test
// server) holds one SQLite connection per matched update of a bulk until
// the whole command ends, from a pool of 100 per database: a bulk that
// replaces 100 existing documents waits forever for a connection, and
// wedges every later command on that database (measured: 99 replaces take
// 0.3 s, 100 never finish). Commits of 100+ entries and repairViews would
// hit that. Chunks of 32 keep the writes of a few collections (written in
// parallel) and of concurrent commits below the limit. Splitting changes
// nothing else: the bulk is unordered and its models independent.
const viewBulkMax = 32

func (s *Store) bulkView(ctx context.Context, coll string, models []mongo.WriteModel) error {
	var errs []error
	for len(models) > 0 {
		n := min(len(models), viewBulkMax)
		if err := s.bulkViewChunk(ctx, coll, models[:n]); err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break // the rest would fail the same way
			}
		}
		models = models[n:]
	}
	return errors.Join(errs...)
}

func (s *Store) bulkViewChunk(ctx context.Context, coll string, models []mongo.WriteModel) error {
	err := s.retry(ctx, func(ctx context.Context) error {
		_, err := s.db.Collection(coll).BulkWrite(ctx, models, options.BulkWrite().SetOrdered(false))
		return err
	})
	var bwe mongo.BulkWriteException
	if errors.As(err, &bwe) && bwe.WriteConcernError == nil {
		err = nil
		for _, we := range bwe.WriteErrors {
			if !isDupCode(we.Code) && we.Code != codeInternalError {
				err = bwe
				break
			}
		}
	}
	if err != nil {
		s.log.Warn("mongo: materialized view write failed", "collection", coll, "err", err)
	}
	return err
}

// codeInternalError is what FerretDB v1 answers, instead of 11000, when an
// update or upsert would violate a unique index.
const codeInternalError = 1

// viewModel is the guarded upsert of one entry's state.
func viewModel(e *storage.Entry) mongo.WriteModel {
	id := viewID(e.Scope, e.DocID)
	doc := bson.D{{Key: "_id", Value: id}, {Key: "_sync", Value: syncMeta(e)}}
	if !e.Deleted {
		for k, v := range e.State {
			if k == "_id" || k == "_sync" {
				continue // reserved (the protocol refuses them)
			}
			doc = append(doc, bson.E{Key: k, Value: viewValue(v)})
		}
	}
	return mongo.NewReplaceOneModel().
		SetFilter(bson.D{{Key: "_id", Value: id}, {Key: "_sync.version", Value: bson.D{{Key: "$lt", Value: i64(e.Version)}}}}).
		SetReplacement(doc).
		SetUpsert(true)
}

// viewValue converts a state value for the view: whole numbers (JSON has
// one number type, which decodes as float64) become int64, which is what
// a backend querying a count expects; the rest is left as it is.
func viewValue(v any) any {
	switch x := v.(type) {
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return int64(x)
		}
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, v := range x {
			out[k] = viewValue(v)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, v := range x {
			out[i] = viewValue(v)
		}
		return out
	}
	return v
}

func syncMeta(e *storage.Entry) bson.D {
	return bson.D{
		{Key: "scope", Value: e.Scope},
		{Key: "id", Value: e.DocID},
		{Key: "version", Value: i64(e.Version)},
		{Key: "seq", Value: i64(e.Seq)},
		{Key: "deleted", Value: e.Deleted},
		{Key: "device", Value: bson.D{{Key: "user", Value: e.Device.User}, {Key: "device", Value: e.Device.Device}}},
		{Key: "mid", Value: i64(e.MutationID)},
		{Key: "hlc", Value: hlcDocOf(e.HLC)},
		{Key: "committed", Value: e.Committed},
	}
}

// deleteViews removes the materialized documents of purged tombstones,
// unless the view already holds a newer version. Best effort, like every
// view write.
func (s *Store) deleteViews(ctx context.Context, purged []markerDoc) {
	byColl := map[string][]mongo.WriteModel{}
	for _, m := range purged {
		if !viewable(m.Col) {
			continue
		}
		byColl[m.Col] = append(byColl[m.Col], mongo.NewDeleteOneModel().SetFilter(bson.D{
			{Key: "_id", Value: viewID(m.Scope, m.DocID)},
			{Key: "_sync.version", Value: bson.D{{Key: "$lte", Value: m.Version}}},
		}))
	}
	for coll, models := range byColl {
		err := s.retry(ctx, func(ctx context.Context) error {
			_, err := s.db.Collection(coll).BulkWrite(ctx, models, options.BulkWrite().SetOrdered(false))
			return err
		})
		if err != nil {
			s.log.Warn("mongo: deleting purged view documents failed", "collection", coll, "err", err)
		}
	}
}
