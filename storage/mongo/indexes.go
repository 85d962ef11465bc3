package mongo

import (
	"context"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// indexSpec is one index the store needs. doc.go lists every one of them;
// keep the two in step.
type indexSpec struct {
	coll   string
	name   string
	keys   bson.D
	unique bool
}

func asc(fields ...string) bson.D {
	d := make(bson.D, len(fields))
	for i, f := range fields {
		d[i] = bson.E{Key: f, Value: 1}
	}
	return d
}

// indexes are created by Open. None is partial or sparse: FerretDB v1 has
// neither, and the store needs neither. The TTL indexes of the session
// collections are created separately (sessions.go), because a server that
// answers code 238 gets a sweeper instead.
var indexes = []indexSpec{
	// The commit guards.
	{collLog, idxScopeSeq, asc("scope", "seq"), true},
	{collLog, idxDocVersion, asc("scope", "col", "id", "version"), true},
	{collLog, idxMutation, asc("mk"), true},
	// Latest (the marker of a purged document) and Horizon.
	{collMarkers, idxDocVersion, asc("scope", "col", "id", "version"), true},
	{collMarkers, idxScopeSeq, asc("scope", "seq"), false},
	// ExpireReceipts.
	{collReceipts, "created", asc("created", "createdNs"), false},
	// Device: the highest mark of a device.
	{collMarks, "dev_mid", asc("dev", "mid"), false},
	// ListConflicts (all, and open only) and AgeConflicts (abandon, delete).
	{collConflicts, "scope_created", asc("scope", "created", "createdNs", "cid"), false},
	{collConflicts, "scope_status_created", asc("scope", "status", "created", "createdNs", "cid"), false},
	{collConflicts, "status_created", asc("status", "created", "createdNs"), false},
	{collConflicts, "status_closed", asc("status", "closed", "closedNs"), false},
}

// viewIndex is created on each materialized collection the first time this
// process writes to it: backends list a scope's documents with it.
var viewIndex = indexSpec{name: "sync_scope", keys: asc("_sync.scope", "_sync.id")}

// ensureIndexes creates the indexes: one createIndexes command per index
// (FerretDB v1 drops the connection when one command names two indexes
// that exist already), collections concurrently. createIndexes is
// idempotent for an identical definition; a different definition under
// the same name fails Open.
func (s *Store) ensureIndexes(ctx context.Context) error {
	byColl := map[string][]indexSpec{}
	var order []string
	for _, ix := range indexes {
		if _, ok := byColl[ix.coll]; !ok {
			order = append(order, ix.coll)
		}
		byColl[ix.coll] = append(byColl[ix.coll], ix)
	}
	fns := make([]func() error, len(order))
	for i, coll := range order {
		fns[i] = func() error {
			for _, ix := range byColl[coll] {
				err := s.retry(ctx, func(ctx context.Context) error {
					_, err := s.db.Collection(coll).Indexes().CreateOne(ctx, ix.model())
					return err
				})
				if err != nil {
					return fmt.Errorf("create index %s on %s: %w", ix.name, coll, err)
				}
			}
			return nil
		}
	}
	return parallel(fns...)
}

func (ix indexSpec) model() mongo.IndexModel {
	o := options.Index().SetName(ix.name)
	if ix.unique {
		o.SetUnique(true)
	}
	return mongo.IndexModel{Keys: ix.keys, Options: o}
}

// ensureViewIndex creates the view index of an app collection once per
// process. A failure is logged, not returned: the view is best effort.
func (s *Store) ensureViewIndex(ctx context.Context, coll string) {
	if _, ok := s.views.Load(coll); ok {
		return
	}
	err := s.retry(ctx, func(ctx context.Context) error {
		_, err := s.db.Collection(coll).Indexes().CreateOne(ctx, viewIndex.model())
		return err
	})
	if err != nil {
		s.log.Warn("mongo: creating the view index failed", "collection", coll, "err", err)
		return
	}
	s.views.Store(coll, struct{}{})
}
