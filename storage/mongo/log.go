package mongo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/syncgate/syncgate/storage"
)

// Commit inserts b.Entries with one ordered InsertMany into _sg_log: the
// commit point. Before it, Commit reads the scope's head and the latest
// version of each document the batch touches (log and purge markers), and
// applies the checks a unique index cannot make: the first seq must be
// head+1 (at or below the head is TakenSeq, even when compaction removed
// that seq; above head+1 is a plain error), and each entry's version must
// be the document's latest + 1 (TakenVersion otherwise, which catches a
// version jump and a stale version whose entry compaction removed). Only
// the entries before the first failed check are inserted. The unique
// indexes then decide every race: a duplicate-key error at entry i leaves
// entries [0, i) committed (ordered insert) and names the guard that fired
// (from the index name in the error, or by re-reading the three keys when
// the server's message has none, as FerretDB's). Commit returns the
// committed count and a bare *storage.CommitError.
//
// Without a transaction, what goes with the entries is ordered so that a
// failure at any point loses only what the log can rebuild:
//
//  1. Before the insert: the receipts of outcomes without an entry (Seq 0:
//     conflicts, rejections, merges with nothing to write) and the conflict
//     records, which nothing else could rebuild (the device's mark, derived
//     from the log too, will cover their mutations once a later entry
//     commits). Their previous versions are read first.
//  2. The insert.
//  3. With a full win: the receipts of outcomes with an entry (rebuildable
//     from the log), then the device's mark, concurrently with the
//     materialized views. With a lost race (a *CommitError), the writes of
//     step 1 are undone: each document goes back to its previous version
//     or is deleted, so a lost batch leaves no receipt or record (the
//     storage contract). A partial win keeps only the outcomes of
//     mutations the committed entries cover (see undo): Device's mark,
//     derived from the log, already covers those, so a resend is answered
//     from them. After a failure that leaves it unknown whether the
//     entries landed, nothing is undone: leftovers of a batch that did not
//     land are rewritten by the engine's retry.
//
// A batch without entries writes its receipts and records, then the mark.
// The writes after the insert finish even if ctx ends, within
// followUpTimeout; if one fails, Commit returns the committed count with
// the error. The views are best effort: their failures are logged.
func (s *Store) Commit(ctx context.Context, b *storage.Batch) (int, error) {
	if err := validateBatch(b); err != nil {
		return 0, fmt.Errorf("mongo: commit: %w", err)
	}
	if len(b.Entries) == 0 && len(b.Receipts) == 0 && len(b.Conflicts) == 0 && b.LastMutationID == 0 {
		return 0, s.begin(ctx, "commit") // nothing to write
	}
	now := s.now()
	docs := make([]logDoc, len(b.Entries))
	stored := make([]storage.Entry, len(b.Entries)) // as committed: for the views
	for i, e := range b.Entries {
		var err error
		if docs[i], stored[i], err = encodeEntry(e, now); err != nil {
			return 0, fmt.Errorf("mongo: commit: %w", err)
		}
	}
	var (
		early, late []receiptDoc             // without and with an entry
		owners      []storage.DeviceMutation // of early, then of conflicts
	)
	for _, r := range b.Receipts {
		d, err := encodeReceipt(r, now)
		if err != nil {
			return 0, fmt.Errorf("mongo: commit: %w", err)
		}
		if r.Seq == 0 || len(docs) == 0 {
			early = append(early, d)
			owners = append(owners, storage.DeviceMutation{Device: r.Device, MutationID: r.MutationID})
		} else {
			late = append(late, d)
		}
	}
	conflicts := make([]conflictDoc, len(b.Conflicts))
	for i, c := range b.Conflicts {
		var err error
		if conflicts[i], err = encodeConflict(c, now); err != nil {
			return 0, fmt.Errorf("mongo: commit: %w", err)
		}
		owner := storage.DeviceMutation{Device: c.Device, MutationID: c.MutationID}
		if c.ResolvedBy != nil {
			owner = *c.ResolvedBy // a status change belongs to the resolving mutation
		}
		owners = append(owners, owner)
	}
	if err := s.begin(ctx, "commit"); err != nil {
		return 0, err
	}
	if len(docs) == 0 {
		if err := s.writeOutcomes(ctx, early, conflicts); err != nil {
			return 0, s.wrap(ctx, "commit", err)
		}
		if b.LastMutationID != 0 {
			if err := s.writeMark(ctx, b.Device, b.LastMutationID); err != nil {
				return 0, s.wrap(ctx, "commit", err)
			}
		}
		return 0, nil
	}

	limit, checkTaken, err := s.checkEntries(ctx, b, docs)
	if err != nil {
		return 0, s.wrap(ctx, "commit", err)
	}
	if limit == 0 {
		return 0, checkTaken
	}
	var undo []undoOp
	if len(early) > 0 || len(conflicts) > 0 {
		if undo, err = s.previous(ctx, early, conflicts, owners); err == nil {
			err = s.writeOutcomes(ctx, early, conflicts)
		}
		if err != nil {
			fctx, cancel := followUpContext(ctx)
			s.undo(fctx, undo, nil)
			cancel()
			return 0, s.wrap(ctx, "commit", err)
		}
	}
	n, taken, err := s.insertEntries(ctx, docs[:limit])
	if taken == nil && err == nil && limit < len(docs) {
		taken = checkTaken
	}
	fctx, cancel := followUpContext(ctx)
	defer cancel()
	if err != nil || taken != nil {
		if n > 0 {
			_ = s.writeViews(fctx, stored[:n]) // best effort: repairViews catches up
		}
		if err != nil {
			return n, s.wrap(ctx, "commit", err)
		}
		s.undo(fctx, undo, stored[:n])
		return n, taken
	}
	err = parallel(
		func() error { _ = s.writeViews(fctx, stored); return nil }, // best effort: repairViews catches up
		func() error {
			if err := s.writeOutcomes(fctx, late, nil); err != nil {
				return err
			}
			if b.LastMutationID == 0 {
				return nil
			}
			return s.writeMark(fctx, b.Device, b.LastMutationID)
		},
	)
	if err != nil {
		return n, s.wrap(fctx, "commit", err)
	}
	return n, nil
}

// followUpTimeout bounds the writes that follow the commit point once the
// caller's context has ended.
const followUpTimeout = 30 * time.Second

// followUpContext keeps ctx's values but not its cancellation: after the
// commit point, the receipts, records, mark and views are worth finishing.
func followUpContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), followUpTimeout)
}

// validateBatch adds the int64 range of BSON to the rules every store
// checks (storage.Batch.Validate).
func validateBatch(b *storage.Batch) error {
	if err := b.Validate(); err != nil {
		return err
	}
	if b.LastMutationID > math.MaxInt64 {
		return fmt.Errorf("LastMutationID %d exceeds the int64 range", b.LastMutationID)
	}
	for i, e := range b.Entries {
		if e.Seq > math.MaxInt64 || e.Version > math.MaxInt64 || e.MutationID > math.MaxInt64 {
			return fmt.Errorf("entry %d: seq, version or mutation id exceeds the int64 range", i)
		}
	}
	return nil
}

// docRef names a document within a scope.
type docRef struct{ col, id string }

// checkEntries applies the checks a unique index cannot make, and returns
// how many leading entries passed and, if one did not, the CommitError to
// report for it.
//
// It reads with one query on the log, an $or of "seq >= first-1" (at most
// the head and whatever a racing writer added, normally one entry) and,
// per document of the batch, "version >= v-1" where v is the document's
// first version in the batch (normally one entry: the version the writer
// read). Each branch is a range on one of the unique indexes. Whatever a
// document's true latest version L is, the result decides the check
// exactly: if L >= v-1, L is among the rows; if not, every row of the
// document is below v-1, and so is the maximum they give, and the version
// check fails either way. Likewise the head is among the rows whenever it
// is at least first-1. One more read returns the purge markers of the
// batch's documents, concurrently.
func (s *Store) checkEntries(ctx context.Context, b *storage.Batch, docs []logDoc) (int, *storage.CommitError, error) {
	// The common lost race first, with a point read by _id: cheap
	// everywhere, and the only read FerretDB answers without a scan.
	if taken, err := s.exists(ctx, s.logC, bson.D{{Key: "_id", Value: docs[0].ID}}); err != nil || taken {
		if taken {
			return 0, &storage.CommitError{Index: 0, Taken: storage.TakenSeq}, nil
		}
		return 0, nil, err
	}
	first := docs[0].Seq
	or := bson.A{bson.D{{Key: "seq", Value: bson.D{{Key: "$gte", Value: max(first-1, 1)}}}}}
	var refs []docRef
	seen := make(map[docRef]bool, len(docs))
	for _, d := range docs {
		r := docRef{d.Col, d.DocID}
		if seen[r] {
			continue
		}
		seen[r] = true
		refs = append(refs, r)
		or = append(or, bson.D{{Key: "col", Value: d.Col}, {Key: "id", Value: d.DocID}, {Key: "version", Value: bson.D{{Key: "$gte", Value: d.Version - 1}}}})
	}
	filter := bson.D{{Key: "scope", Value: b.Scope}, {Key: "$or", Value: or}}
	var (
		rows    []logInfo
		markers map[docRef]int64
	)
	err := parallel(
		func() error {
			return s.retry(ctx, func(ctx context.Context) error {
				cur, err := s.logC.Find(ctx, filter, options.Find().SetProjection(bson.D{
					{Key: "seq", Value: 1}, {Key: "col", Value: 1}, {Key: "id", Value: 1}, {Key: "version", Value: 1},
				}))
				if err != nil {
					return err
				}
				rows = nil
				return cur.All(ctx, &rows)
			})
		},
		func() (err error) { markers, err = s.markerVersions(ctx, b.Scope, refs); return err },
	)
	if err != nil {
		return 0, nil, err
	}
	var head int64 // the head if it is at least first-1, else a lower bound
	latest := markers
	for _, r := range rows {
		head = max(head, r.Seq)
		k := docRef{r.Col, r.DocID}
		latest[k] = max(latest[k], r.Version)
	}
	if head >= first {
		return 0, &storage.CommitError{Index: 0, Taken: storage.TakenSeq}, nil
	}
	if head < first-1 {
		return 0, nil, fmt.Errorf("entry 0: seq %d would leave a gap: the head is below %d", first, first-1)
	}
	for i, d := range docs {
		r := docRef{d.Col, d.DocID}
		if d.Version != latest[r]+1 {
			return i, &storage.CommitError{Index: i, Taken: storage.TakenVersion}, nil
		}
		latest[r] = d.Version
	}
	return len(docs), nil, nil
}

// insertEntries is the commit point: one ordered InsertMany. A retryable
// failure leaves it unknown how many entries landed; they carry _ids made
// here, so insertEntries counts the landed prefix by _id and inserts the
// rest in the next attempt (a duplicate-key error against an entry of its
// own earlier attempt is recognised the same way).
func (s *Store) insertEntries(ctx context.Context, docs []logDoc) (int, *storage.CommitError, error) {
	done := 0
	ambiguous := false // an earlier attempt may have landed entries
	delay := s.retryPol.BaseDelay
	opts := options.InsertMany().SetOrdered(true)
	for attempt := 1; ; attempt++ {
		_, err := s.logC.InsertMany(ctx, docs[done:], opts)
		if s.afterInsert != nil {
			err = s.afterInsert(attempt, docs[done:], err)
		}
		if err == nil {
			return len(docs), nil, nil
		}
		if i, msg, dup := firstDuplicate(err); dup {
			at := done + i
			if ambiguous {
				if n, lerr := s.landed(ctx, docs[done:]); lerr == nil && n > i {
					done += n // our own entry from the earlier attempt
					if done == len(docs) {
						return done, nil, nil
					}
					continue
				}
			}
			taken, terr := s.whichGuard(ctx, docs[at], msg)
			if terr != nil {
				return at, nil, terr
			}
			return at, &storage.CommitError{Index: at, Taken: taken}, nil
		}
		// Not a lost race: count what landed (ordered, so a prefix).
		if n, lerr := s.landed(ctx, docs[done:]); lerr == nil {
			done += n
			ambiguous = false
			if done == len(docs) {
				return done, nil, nil
			}
		} else {
			ambiguous = true
		}
		if !retryable(err) || attempt >= s.retryPol.Attempts || ctx.Err() != nil || s.closed.Load() {
			return done, nil, err
		}
		s.log.Warn("mongo: retrying commit", "attempt", attempt, "in", delay, "committed", done, "err", err)
		if werr := sleep(ctx, delay); werr != nil {
			return done, nil, errors.Join(werr, err)
		}
		delay = s.nextDelay(delay)
	}
}

// firstDuplicate returns the index and message of the first duplicate-key
// write error in err.
func firstDuplicate(err error) (int, string, bool) {
	var bwe mongo.BulkWriteException
	if errors.As(err, &bwe) {
		for _, we := range bwe.WriteErrors {
			if isDupCode(we.Code) {
				return we.Index, we.Message, true
			}
		}
		return 0, "", false
	}
	var we mongo.WriteException
	if errors.As(err, &we) {
		for _, e := range we.WriteErrors {
			if isDupCode(e.Code) {
				return e.Index, e.Message, true
			}
		}
	}
	return 0, "", false
}

func isDupCode(code int) bool { return code == 11000 || code == 11001 || code == 12582 }

// landed counts the prefix of docs present in the log: by _id, and by
// nonce, since another writer's entry of the same seq has the same _id. It
// reads with a context of its own when ctx has ended: the count is what
// makes a partial commit visible to the caller.
func (s *Store) landed(ctx context.Context, docs []logDoc) (int, error) {
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
	}
	ids := make(bson.A, len(docs))
	for i, d := range docs {
		ids[i] = d.ID
	}
	var present map[string]string // _id -> nonce
	err := s.retry(ctx, func(ctx context.Context) error {
		cur, err := s.logC.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}},
			options.Find().SetProjection(bson.D{{Key: "entry", Value: 1}}))
		if err != nil {
			return err
		}
		var rows []logDoc
		if err := cur.All(ctx, &rows); err != nil {
			return err
		}
		present = make(map[string]string, len(rows))
		for i := range rows {
			b, err := rows[i].body()
			if err != nil {
				return err
			}
			present[rows[i].ID] = b.Nonce
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for n < len(docs) {
		var b entryBody
		if err := json.Unmarshal([]byte(docs[n].Body), &b); err != nil {
			return n, err
		}
		if nonce, ok := present[docs[n].ID]; !ok || nonce != b.Nonce {
			break
		}
		n++
	}
	return n, nil
}

// whichGuard names the unique index that rejected d. MongoDB's message
// names it ("... index: scope_seq dup key: ..."); FerretDB's does not, so
// then the three keys are read back, in the order the embedded store
// checks them.
func (s *Store) whichGuard(ctx context.Context, d logDoc, msg string) (storage.Taken, error) {
	switch {
	case strings.Contains(msg, "index: "+idxScopeSeq+" "), strings.Contains(msg, "index: _id_ "):
		return storage.TakenSeq, nil
	case strings.Contains(msg, "index: "+idxDocVersion+" "):
		return storage.TakenVersion, nil
	case strings.Contains(msg, "index: "+idxMutation+" "):
		return storage.TakenMutation, nil
	}
	filters := []bson.D{
		{{Key: "_id", Value: d.ID}},
		{{Key: "scope", Value: d.Scope}, {Key: "col", Value: d.Col}, {Key: "id", Value: d.DocID}, {Key: "version", Value: d.Version}},
		{{Key: "mk", Value: d.MK}},
	}
	found := make([]bool, len(filters))
	fns := make([]func() error, len(filters))
	for i, f := range filters {
		fns[i] = func() (err error) { found[i], err = s.exists(ctx, s.logC, f); return err }
	}
	if err := parallel(fns...); err != nil {
		return "", err
	}
	for i, t := range []storage.Taken{storage.TakenSeq, storage.TakenVersion, storage.TakenMutation} {
		if found[i] {
			return t, nil
		}
	}
	// The key that collided is gone again (compacted meanwhile): any guard
	// makes the caller re-read and retry, which is what it needs.
	return storage.TakenSeq, nil
}

func (s *Store) exists(ctx context.Context, c *mongo.Collection, filter bson.D) (bool, error) {
	var ok bool
	err := s.retry(ctx, func(ctx context.Context) error {
		err := c.FindOne(ctx, filter, options.FindOne().SetProjection(bson.D{{Key: "_id", Value: 1}})).Err()
		ok = err == nil
		if errors.Is(err, mongo.ErrNoDocuments) {
			err = nil
		}
		return err
	})
	return ok, err
}

// head is the highest seq of scope, 0 when it has none.
func (s *Store) head(ctx context.Context, scope string) (int64, error) {
	var row struct {
		Seq int64 `bson:"seq"`
	}
	found, err := s.findOne(ctx, s.logC, bson.D{{Key: "scope", Value: scope}}, &row,
		options.FindOne().SetSort(bson.D{{Key: "seq", Value: -1}}).SetProjection(bson.D{{Key: "seq", Value: 1}}))
	if err != nil || !found {
		return 0, err
	}
	return row.Seq, nil
}

// lookupParallelism bounds the concurrent reads of one logVersions call.
const lookupParallelism = defaultLookupParallelism

// latestVersions returns each document's latest version: the higher of its
// newest log entry and its newest purge marker, 0 for a document that
// never had an entry. One indexed point read per document (sorted by
// version, limit 1), run concurrently, plus one read of the markers.
func (s *Store) latestVersions(ctx context.Context, scope string, refs []docRef) (map[docRef]int64, error) {
	var logLatest, markerLatest map[docRef]int64
	err := parallel(
		func() (err error) { logLatest, err = s.logVersions(ctx, scope, refs); return err },
		func() (err error) { markerLatest, err = s.markerVersions(ctx, scope, refs); return err },
	)
	if err != nil {
		return nil, err
	}
	for r, v := range markerLatest {
		logLatest[r] = max(logLatest[r], v)
	}
	return logLatest, nil
}

// markerVersions returns the highest purge-marker version of each of refs
// that has one. Markers are few (one per purge of a document), so one read
// returns them all.
func (s *Store) markerVersions(ctx context.Context, scope string, refs []docRef) (map[docRef]int64, error) {
	or := make(bson.A, len(refs))
	for i, r := range refs {
		or[i] = bson.D{{Key: "col", Value: r.col}, {Key: "id", Value: r.id}}
	}
	filter := bson.D{{Key: "scope", Value: scope}}
	if len(refs) == 1 {
		filter = docFilter(scope, refs[0])
	} else {
		filter = append(filter, bson.E{Key: "$or", Value: or})
	}
	out := map[docRef]int64{}
	err := s.retry(ctx, func(ctx context.Context) error {
		cur, err := s.markers.Find(ctx, filter, options.Find().SetProjection(bson.D{{Key: "col", Value: 1}, {Key: "id", Value: 1}, {Key: "version", Value: 1}}))
		if err != nil {
			return err
		}
		var rows []markerDoc
		if err := cur.All(ctx, &rows); err != nil {
			return err
		}
		clear(out)
		for _, m := range rows {
			r := docRef{m.Col, m.DocID}
			out[r] = max(out[r], m.Version)
		}
		return nil
	})
	return out, err
}

func docFilter(scope string, r docRef) bson.D {
	return bson.D{{Key: "scope", Value: scope}, {Key: "col", Value: r.col}, {Key: "id", Value: r.id}}
}

// findOne decodes the first document matching filter into out; found is
// false when there is none.
func (s *Store) findOne(ctx context.Context, c *mongo.Collection, filter bson.D, out any, opts ...options.Lister[options.FindOneOptions]) (bool, error) {
	found := false
	err := s.retry(ctx, func(ctx context.Context) error {
		err := c.FindOne(ctx, filter, opts...).Decode(out)
		if errors.Is(err, mongo.ErrNoDocuments) {
			found = false
			return nil
		}
		found = err == nil
		return err
	})
	return found, err
}

// Head returns the highest committed seq of scope, 0 if none. Compaction
// never deletes the head entry, so it is the newest entry.
func (s *Store) Head(ctx context.Context, scope string) (uint64, error) {
	if err := s.begin(ctx, "head"); err != nil {
		return 0, err
	}
	h, err := s.head(ctx, scope)
	if err != nil {
		return 0, s.wrap(ctx, "head", err)
	}
	return uint64(h), nil
}

// Horizon returns the highest seq of a tombstone compaction purged, 0 if
// none: the highest seq among the scope's purge markers, which are kept
// forever, so the horizon needs no document of its own.
func (s *Store) Horizon(ctx context.Context, scope string) (uint64, error) {
	if err := s.begin(ctx, "horizon"); err != nil {
		return 0, err
	}
	h, err := s.horizon(ctx, scope)
	if err != nil {
		return 0, s.wrap(ctx, "horizon", err)
	}
	return uint64(h), nil
}

func (s *Store) horizon(ctx context.Context, scope string) (int64, error) {
	var row struct {
		Seq int64 `bson:"seq"`
	}
	found, err := s.findOne(ctx, s.markers, bson.D{{Key: "scope", Value: scope}}, &row,
		options.FindOne().SetSort(bson.D{{Key: "seq", Value: -1}}).SetProjection(bson.D{{Key: "seq", Value: 1}}))
	if err != nil || !found {
		return 0, err
	}
	return row.Seq, nil
}

// Latest returns the newest entry of a document, the marker of its purged
// tombstone (Seq 0, Deleted, the purged version) when no entry is newer
// than the marker, or storage.ErrNotFound. The log and the markers are
// read concurrently.
func (s *Store) Latest(ctx context.Context, scope, collection, id string) (storage.Entry, error) {
	if err := s.begin(ctx, "latest"); err != nil {
		return storage.Entry{}, err
	}
	r := docRef{collection, id}
	var (
		d       logDoc
		found   bool
		markers map[docRef]int64
	)
	err := parallel(
		func() (err error) {
			found, err = s.findOne(ctx, s.logC, docFilter(scope, r), &d, options.FindOne().SetSort(bson.D{{Key: "version", Value: -1}}))
			return err
		},
		func() (err error) { markers, err = s.markerVersions(ctx, scope, []docRef{r}); return err },
	)
	if err != nil {
		return storage.Entry{}, s.wrap(ctx, "latest", err)
	}
	marker := markers[r]
	switch {
	case found && d.Version >= marker:
		e, err := d.entry()
		return e, s.wrap(ctx, "latest", err)
	case marker > 0:
		return storage.Entry{Scope: scope, Collection: collection, DocID: id, Version: uint64(marker), Deleted: true}, nil
	}
	return storage.Entry{}, s.wrap(ctx, "latest", storage.ErrNotFound)
}

// Version returns the entry that gave a document the given version, or
// storage.ErrNotFound: a point read on the version guard's index. An entry
// superseded by a purged tombstone but not yet removed is still found.
func (s *Store) Version(ctx context.Context, scope, collection, id string, version uint64) (storage.Entry, error) {
	if err := s.begin(ctx, "version"); err != nil {
		return storage.Entry{}, err
	}
	if version == 0 || version > math.MaxInt64 {
		return storage.Entry{}, s.wrap(ctx, "version", storage.ErrNotFound)
	}
	var d logDoc
	filter := append(docFilter(scope, docRef{collection, id}), bson.E{Key: "version", Value: int64(version)})
	found, err := s.findOne(ctx, s.logC, filter, &d)
	if err == nil && !found {
		err = storage.ErrNotFound
	}
	if err != nil {
		return storage.Entry{}, s.wrap(ctx, "version", err)
	}
	e, err := d.entry()
	return e, s.wrap(ctx, "version", err)
}

// Read returns entries of scope with since < seq <= through, ascending, at
// most limit (which must be positive).
func (s *Store) Read(ctx context.Context, scope string, since, through uint64, limit int) ([]storage.Entry, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("mongo: read: limit %d must be positive", limit)
	}
	if err := s.begin(ctx, "read"); err != nil {
		return nil, err
	}
	if through <= since || since >= math.MaxInt64 {
		return nil, nil
	}
	filter := bson.D{{Key: "scope", Value: scope}, {Key: "seq", Value: bson.D{{Key: "$gt", Value: int64(since)}, {Key: "$lte", Value: clampSeq(through)}}}}
	var out []storage.Entry
	err := s.retry(ctx, func(ctx context.Context) error {
		cur, err := s.logC.Find(ctx, filter, options.Find().SetSort(bson.D{{Key: "seq", Value: 1}}).SetLimit(int64(limit)))
		if err != nil {
			return err
		}
		var docs []logDoc
		if err := cur.All(ctx, &docs); err != nil {
			return err
		}
		out = make([]storage.Entry, len(docs))
		for i := range docs {
			if out[i], err = docs[i].entry(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap(ctx, "read", err)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// Scopes lists scopes that have entries, after `after`, ascending, at most
// limit (which must be positive). It skips through the (scope, seq) index,
// one point read per scope, so a page costs limit index seeks however many
// entries or scopes the log holds. (distinct would return every scope
// after `after` in one 16 MB-capped reply; a $group would read them all.)
func (s *Store) Scopes(ctx context.Context, after string, limit int) ([]string, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("mongo: scopes: limit %d must be positive", limit)
	}
	if err := s.begin(ctx, "scopes"); err != nil {
		return nil, err
	}
	var out []string
	cur := after
	for len(out) < limit {
		var row struct {
			Scope string `bson:"scope"`
		}
		found, err := s.findOne(ctx, s.logC, bson.D{{Key: "scope", Value: bson.D{{Key: "$gt", Value: cur}}}}, &row,
			options.FindOne().SetSort(bson.D{{Key: "scope", Value: 1}, {Key: "seq", Value: 1}}).SetProjection(bson.D{{Key: "scope", Value: 1}}))
		if err != nil {
			return nil, s.wrap(ctx, "scopes", err)
		}
		if !found {
			break
		}
		out = append(out, row.Scope)
		cur = row.Scope
	}
	return out, nil
}
