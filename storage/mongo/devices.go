package mongo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/syncgate/syncgate/storage"
)

// writeOutcomes writes receipts and conflict records, concurrently: each
// collection's as one unordered BulkWrite of whole-document upserts by
// _id (idempotent; last write wins, which the storage contract asks of
// records).
func (s *Store) writeOutcomes(ctx context.Context, receipts []receiptDoc, conflicts []conflictDoc) error {
	var fns []func() error
	if len(receipts) > 0 {
		models := make([]mongo.WriteModel, len(receipts))
		for i := range receipts {
			models[i] = mongo.NewReplaceOneModel().SetFilter(bson.D{{Key: "_id", Value: receipts[i].ID}}).
				SetReplacement(&receipts[i]).SetUpsert(true)
		}
		fns = append(fns, func() error { return s.upsertAll(ctx, s.receipts, models) })
	}
	if len(conflicts) > 0 {
		models := make([]mongo.WriteModel, len(conflicts))
		for i := range conflicts {
			models[i] = mongo.NewReplaceOneModel().SetFilter(bson.D{{Key: "_id", Value: conflicts[i].ID}}).
				SetReplacement(&conflicts[i]).SetUpsert(true)
		}
		fns = append(fns, func() error { return s.upsertAll(ctx, s.conflicts, models) })
	}
	if len(fns) == 0 {
		return nil
	}
	return parallel(fns...)
}

// undoOp puts one receipt or record back as it was before a commit wrote
// it: prev is its previous document, nil when it had none. owner is the
// mutation it is the outcome of.
type undoOp struct {
	coll  *mongo.Collection
	id    string
	prev  bson.Raw
	owner storage.DeviceMutation
}

// previous reads the documents that writeOutcomes is about to replace.
// owners name the mutation of each receipt, then of each record.
func (s *Store) previous(ctx context.Context, receipts []receiptDoc, conflicts []conflictDoc, owners []storage.DeviceMutation) ([]undoOp, error) {
	var (
		rids, cids   []string
		rprev, cprev map[string]bson.Raw
	)
	for _, r := range receipts {
		rids = append(rids, r.ID)
	}
	for _, c := range conflicts {
		cids = append(cids, c.ID)
	}
	err := parallel(
		func() (err error) { rprev, err = s.byIDs(ctx, s.receipts, rids); return err },
		func() (err error) { cprev, err = s.byIDs(ctx, s.conflicts, cids); return err },
	)
	if err != nil {
		return nil, err
	}
	ops := make([]undoOp, 0, len(rids)+len(cids))
	for i, id := range rids {
		ops = append(ops, undoOp{coll: s.receipts, id: id, prev: rprev[id], owner: owners[i]})
	}
	for i, id := range cids {
		ops = append(ops, undoOp{coll: s.conflicts, id: id, prev: cprev[id], owner: owners[len(rids)+i]})
	}
	return ops, nil
}

func (s *Store) byIDs(ctx context.Context, c *mongo.Collection, ids []string) (map[string]bson.Raw, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	out := map[string]bson.Raw{}
	err := s.retry(ctx, func(ctx context.Context) error {
		cur, err := c.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
		if err != nil {
			return err
		}
		defer cur.Close(ctx)
		clear(out)
		for cur.Next(ctx) {
			id, ok := cur.Current.Lookup("_id").StringValueOK()
			if !ok {
				return fmt.Errorf("%s: _id is not a string", c.Name())
			}
			out[id] = append(bson.Raw(nil), cur.Current...)
		}
		return cur.Err()
	})
	return out, err
}

// undo restores the documents of ops, one unordered BulkWrite per
// collection, except those whose mutation is covered by the committed
// entries: at or below the highest mutation id among them of the same
// device. Device reports that as the device's mark (it is derived from
// the log), so a resend of such a mutation is answered as a replay, from
// its receipt: that outcome must stay. Every other mutation of the batch
// is above the mark and is decided again when resent. A failure is
// logged: what is left is the outcome of a batch that did not commit,
// which the engine's retry rewrites.
func (s *Store) undo(ctx context.Context, ops []undoOp, committed []storage.Entry) {
	covered := map[storage.DeviceRef]uint64{}
	for _, e := range committed {
		covered[e.Device] = max(covered[e.Device], e.MutationID)
	}
	byColl := map[*mongo.Collection][]mongo.WriteModel{}
	for _, op := range ops {
		if op.owner.MutationID != 0 && op.owner.MutationID <= covered[op.owner.Device] {
			continue
		}
		filter := bson.D{{Key: "_id", Value: op.id}}
		var m mongo.WriteModel
		if op.prev == nil {
			m = mongo.NewDeleteOneModel().SetFilter(filter)
		} else {
			m = mongo.NewReplaceOneModel().SetFilter(filter).SetReplacement(op.prev).SetUpsert(true)
		}
		byColl[op.coll] = append(byColl[op.coll], m)
	}
	for c, models := range byColl {
		if err := s.upsertAll(ctx, c, models); err != nil {
			s.log.Warn("mongo: undoing the outcomes of a lost commit failed", "collection", c.Name(), "err", err)
		}
	}
}

// upsertAll runs upserts by _id as one unordered BulkWrite. Two upserts of
// a new _id that race both try to insert, and the loser gets a
// duplicate-key error (InternalError on FerretDB); its model is simply
// run again, and now replaces.
func (s *Store) upsertAll(ctx context.Context, c *mongo.Collection, models []mongo.WriteModel) error {
	const rounds = 3
	for round := 1; ; round++ {
		err := s.retry(ctx, func(ctx context.Context) error {
			_, err := c.BulkWrite(ctx, models, options.BulkWrite().SetOrdered(false))
			return err
		})
		var bwe mongo.BulkWriteException
		if err == nil || round == rounds || !errors.As(err, &bwe) || bwe.WriteConcernError != nil {
			return err
		}
		var again []mongo.WriteModel
		for _, we := range bwe.WriteErrors {
			if !isDupCode(we.Code) && we.Code != codeInternalError {
				return err
			}
			again = append(again, models[we.Index])
		}
		models = again
	}
}

// writeMark records that the device's mutations up to mid were processed.
//
// LastMutationID must never move back and never lose an advance, even when
// two nodes commit for the same device at once; a read-modify-write or a
// $max update is not safe for that on FerretDB (concurrent conditional
// updates lose writes there). So the high-water mark is a set of immutable
// rows, one per (device, mid), and the device's LastMutationID is the
// highest row (Device reads it with one indexed, sorted point read).
// Inserting a row is idempotent (its _id is the (device, mid) key, and a
// duplicate means it is there already). Rows below the new one are then
// deleted to keep the set small: a delete can only remove rows lower than
// one this call inserted, so the maximum always survives, whatever runs
// concurrently; a lower row inserted by a racing commit just lingers until
// the device's next commit.
func (s *Store) writeMark(ctx context.Context, dev storage.DeviceRef, mid uint64) error {
	key := devKey(dev)
	err := s.retry(ctx, func(ctx context.Context) error {
		_, err := s.marks.InsertOne(ctx, markDoc{ID: mutKey(dev, mid), Dev: key, MID: i64(mid)})
		if mongo.IsDuplicateKeyError(err) {
			return nil
		}
		return err
	})
	if err != nil {
		return err
	}
	return s.retry(ctx, func(ctx context.Context) error {
		_, err := s.marks.DeleteMany(ctx, bson.D{{Key: "dev", Value: key}, {Key: "mid", Value: bson.D{{Key: "$lt", Value: i64(mid)}}}})
		return err
	})
}

// Receipt returns the stored receipt of a mutation. When it is missing
// (expired, or its batch lost a race after this mutation's entry
// committed) but the log still holds the entry the mutation produced
// (found through the mutation guard's index), it rebuilds an Applied
// receipt from that entry. Otherwise storage.ErrNotFound.
func (s *Store) Receipt(ctx context.Context, dev storage.DeviceRef, mutationID uint64) (storage.Receipt, error) {
	if err := s.begin(ctx, "receipt"); err != nil {
		return storage.Receipt{}, err
	}
	key := mutKey(dev, mutationID)
	var rd receiptDoc
	found, err := s.findOne(ctx, s.receipts, bson.D{{Key: "_id", Value: key}}, &rd)
	if err != nil {
		return storage.Receipt{}, s.wrap(ctx, "receipt", err)
	}
	if found {
		var r storage.Receipt
		if err := json.Unmarshal([]byte(rd.Receipt), &r); err != nil {
			return storage.Receipt{}, s.wrap(ctx, "receipt", fmt.Errorf("decode receipt %q: %w", key, err))
		}
		return r, nil
	}
	var d logDoc
	found, err = s.findOne(ctx, s.logC, bson.D{{Key: "mk", Value: key}}, &d)
	if err == nil && !found {
		err = storage.ErrNotFound
	}
	if err != nil {
		return storage.Receipt{}, s.wrap(ctx, "receipt", err)
	}
	e, err := d.entry()
	if err != nil {
		return storage.Receipt{}, s.wrap(ctx, "receipt", err)
	}
	return storage.Receipt{
		Device:     dev,
		MutationID: mutationID,
		Outcome:    storage.Applied,
		Scope:      e.Scope,
		Collection: e.Collection,
		DocID:      e.DocID,
		Version:    e.Version,
		Seq:        e.Seq,
		Deleted:    e.Deleted,
		Created:    e.Committed,
	}, nil
}

// ExpireReceipts deletes receipts created before olderThan, with one
// DeleteMany on the created index.
func (s *Store) ExpireReceipts(ctx context.Context, olderThan time.Time) (int, error) {
	if err := s.begin(ctx, "expire receipts"); err != nil {
		return 0, err
	}
	var n int64
	err := s.retry(ctx, func(ctx context.Context) error {
		res, err := s.receipts.DeleteMany(ctx, before("created", "createdNs", olderThan))
		if res != nil {
			n += res.DeletedCount // a retried delete only counts what is left
		}
		return err
	})
	if err != nil {
		return int(n), s.wrap(ctx, "expire receipts", err)
	}
	s.log.Debug("expired receipts", "removed", n, "olderThan", olderThan)
	return int(n), nil
}

// Device returns a device's state: checkpoints and last seen from
// _sg_devices; LastMutationID is the higher of the device's highest mark
// (see writeMark) and its highest mutation in the log (one seek on the
// mutation guard's index, where a device's keys sort by mutation id), so
// it covers every logged mutation even if a batch's mark was lost. The
// three reads run concurrently. An unknown device has a zero state (with
// Device set).
func (s *Store) Device(ctx context.Context, dev storage.DeviceRef) (storage.DeviceState, error) {
	if err := s.begin(ctx, "device"); err != nil {
		return storage.DeviceState{}, err
	}
	st := storage.DeviceState{Device: dev}
	var (
		d           deviceDoc
		found       bool
		mark        markDoc
		logged      logDoc
		key         = devKey(dev)
		lo, hi      = mutRange(dev)
		markOptions = options.FindOne().SetSort(bson.D{{Key: "mid", Value: -1}})
		logOptions  = options.FindOne().SetSort(bson.D{{Key: "mk", Value: -1}}).SetProjection(bson.D{{Key: "mk", Value: 1}})
	)
	err := parallel(
		func() (err error) {
			found, err = s.findOne(ctx, s.devices, bson.D{{Key: "_id", Value: key}}, &d)
			return err
		},
		func() (err error) {
			_, err = s.findOne(ctx, s.marks, bson.D{{Key: "dev", Value: key}}, &mark, markOptions)
			return err
		},
		func() (err error) {
			_, err = s.findOne(ctx, s.logC, bson.D{{Key: "mk", Value: bson.D{{Key: "$gt", Value: lo}, {Key: "$lt", Value: hi}}}}, &logged, logOptions)
			return err
		},
	)
	if err != nil {
		return storage.DeviceState{}, s.wrap(ctx, "device", err)
	}
	st.LastMutationID = max(uint64(mark.MID), midOf(logged.MK))
	if found {
		st.Checkpoints = checkpointsOf(d.Checkpoints)
		if d.Seen != nil {
			st.LastSeen = timeOf(*d.Seen, d.SeenNs)
		}
	}
	return st, nil
}

func checkpointsOf(cps []checkpointDoc) map[string]uint64 {
	if len(cps) == 0 {
		return nil
	}
	out := make(map[string]uint64, len(cps))
	for _, c := range cps {
		out[c.Scope] = max(out[c.Scope], uint64(c.Seq))
	}
	return out
}

// SaveCheckpoints merges checkpoints into the device state (a seq only
// moves forward, and so does LastSeen): it reads the device's document,
// merges in Go and replaces the document when something moved. Two
// concurrent saves for the same device (two connections of it on two
// nodes) can lose one's advance, since FerretDB applies no conditional
// update atomically; checkpoints are informational (a device sends its
// own in hello, and the log decides what it receives), so the next save
// repairs it. LastMutationID does not live here (see writeMark).
func (s *Store) SaveCheckpoints(ctx context.Context, dev storage.DeviceRef, checkpoints map[string]uint64, seen time.Time) error {
	if dev == (storage.DeviceRef{}) {
		return errors.New("mongo: save checkpoints: empty device")
	}
	if err := s.begin(ctx, "save checkpoints"); err != nil {
		return err
	}
	key := devKey(dev)
	for round := 1; ; round++ {
		var d deviceDoc
		found, err := s.findOne(ctx, s.devices, bson.D{{Key: "_id", Value: key}}, &d)
		if err != nil {
			return s.wrap(ctx, "save checkpoints", err)
		}
		cps := checkpointsOf(d.Checkpoints)
		changed := !found
		for scope, seq := range checkpoints {
			if seq > cps[scope] {
				if cps == nil {
					cps = make(map[string]uint64, len(checkpoints))
				}
				cps[scope] = min(seq, 1<<63-1)
				changed = true
			}
		}
		var last time.Time
		if d.Seen != nil {
			last = timeOf(*d.Seen, d.SeenNs)
		}
		if seen.After(last) {
			ms := msOf(seen)
			d.Seen, d.SeenNs = &ms, nsOf(seen)
			changed = true
		}
		if !changed {
			return nil
		}
		d.ID, d.User, d.Device = key, dev.User, dev.Device
		d.Checkpoints = d.Checkpoints[:0]
		for scope, seq := range cps {
			d.Checkpoints = append(d.Checkpoints, checkpointDoc{Scope: scope, Seq: int64(seq)})
		}
		slices.SortFunc(d.Checkpoints, func(a, b checkpointDoc) int {
			switch {
			case a.Scope < b.Scope:
				return -1
			case a.Scope > b.Scope:
				return 1
			}
			return 0
		})
		err = s.retry(ctx, func(ctx context.Context) error {
			_, err := s.devices.ReplaceOne(ctx, bson.D{{Key: "_id", Value: key}}, &d, options.Replace().SetUpsert(true))
			return err
		})
		var se mongo.ServerError
		if err != nil && round < 3 && (mongo.IsDuplicateKeyError(err) || (errors.As(err, &se) && se.HasErrorCode(codeInternalError))) {
			continue // a concurrent first save inserted it: merge into that one
		}
		return s.wrap(ctx, "save checkpoints", err)
	}
}
