package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"time"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/hlc"
	"github.com/syncgate/syncgate/sync/protocol"
)

// Push applies a batch of mutations from one device, in order, and returns
// one result per mutation. A returned error means the whole request failed
// before anything was decided (e.g. the batch is too large); failures that
// hit part of a batch are reported per mutation with a retryable code, and
// mutations decided before the failure keep their outcome.
func (e *Engine) Push(ctx context.Context, p Principal, muts []protocol.Mutation) ([]protocol.Result, error) {
	if len(muts) > e.cfg.MaxBatch {
		return nil, protocol.Errorf(protocol.CodeTooLarge, "push carries %d mutations; the limit is %d", len(muts), e.cfg.MaxBatch)
	}
	// One push per device at a time in this process: the high-water mark
	// read below must not move under a concurrent push of the same device
	// (e.g. a WebSocket and an HTTP push racing), or a mutation that one of
	// them fails retryably could later be refused as stale.
	unlockDevice := e.devices.lock(p.Ref().String())
	defer unlockDevice()
	dev, err := e.store.Device(ctx, p.Ref())
	if err != nil {
		return nil, e.storageErr(ctx, "device", err)
	}
	results := make([]protocol.Result, len(muts))
	high := dev.LastMutationID // highest mutation id processed so far
	for i := 0; i < len(muts); {
		j := i + 1
		for j < len(muts) && muts[j].Scope == muts[i].Scope {
			j++
		}
		high = e.pushRun(ctx, p, muts[i:j], results[i:j], high)
		if k := firstRetryable(results[i:j]); k >= 0 {
			// Nothing after a mutation the device must resend may be
			// decided: a later commit would record a higher mutation id,
			// and the resend would then look like a stale replay.
			perr := protocol.Errorf(protocol.CodeUnavailable, "an earlier mutation in this push must be retried first")
			for x := j; x < len(muts); x++ {
				results[x] = rejected(muts[x].ID, perr)
			}
			break
		}
		i = j
	}
	for _, r := range results {
		e.m.outcomes.WithLabelValues(string(r.Outcome), boolLabel(r.Replayed)).Inc()
	}
	return results, nil
}

// firstRetryable returns the index of the first result the device must
// resend, or -1.
func firstRetryable(rs []protocol.Result) int {
	for i, r := range rs {
		if r.Outcome == storage.Rejected && r.Code.Retryable() {
			return i
		}
	}
	return -1
}

func boolLabel(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// planned is a mutation that passed validation and awaits the resolver.
type planned struct {
	idx int // index into the run
	mut *protocol.Mutation
	op  conflict.Op
	col conflict.Collection
	// refusal, when set, rejects the mutation without running the
	// resolver (a missing $media reference; see checkMedia).
	refusal *protocol.Error
}

// pushRun handles consecutive mutations of one scope. It returns the new
// high-water mark of mutation ids.
func (e *Engine) pushRun(ctx context.Context, p Principal, muts []protocol.Mutation, results []protocol.Result, high uint64) uint64 {
	scope := muts[0].Scope
	scopeErr := e.checkScope(p, scope)
	var todo []planned
	for i := range muts {
		m := &muts[i]
		results[i].MutationID = m.ID
		if m.ID != 0 && m.ID <= high {
			results[i] = e.replay(ctx, p, m)
			continue
		}
		if scopeErr != nil {
			results[i] = rejected(m.ID, scopeErr)
			continue
		}
		op, col, perr := e.toOp(p, m)
		if perr != nil {
			results[i] = rejected(m.ID, perr)
			continue
		}
		high = m.ID
		todo = append(todo, planned{idx: i, mut: m, op: op, col: col})
	}
	if len(todo) == 0 {
		return high
	}
	if err := e.checkMedia(ctx, scope, todo); err != nil {
		e.failAll(todo, results, asProtocolErr(err))
		return high
	}
	e.commitRun(ctx, p, scope, todo, results)
	return high
}

// replay answers a mutation id the device already used: from its receipt if
// one is kept, otherwise by re-validating (validation is deterministic, so a
// rejected mutation is rejected the same way again), otherwise as stale.
func (e *Engine) replay(ctx context.Context, p Principal, m *protocol.Mutation) protocol.Result {
	rc, err := e.store.Receipt(ctx, p.Ref(), m.ID)
	switch {
	case err == nil:
		r := fromReceipt(rc)
		r.Replayed = true
		return r
	case !errors.Is(err, storage.ErrNotFound):
		return rejected(m.ID, asProtocolErr(e.storageErr(ctx, "receipt", err)))
	}
	if perr := e.checkScope(p, m.Scope); perr != nil {
		return rejected(m.ID, perr)
	}
	if _, _, perr := e.toOp(p, m); perr != nil {
		return rejected(m.ID, perr)
	}
	return rejected(m.ID, protocol.Errorf(protocol.CodeStaleMutation,
		"mutation %d is not above the device's last processed id and no receipt is kept for it", m.ID))
}

func rejected(mid uint64, perr *protocol.Error) protocol.Result {
	return protocol.Result{MutationID: mid, Outcome: storage.Rejected, Code: perr.Code, Message: perr.Message}
}

func fromReceipt(rc storage.Receipt) protocol.Result {
	return protocol.Result{
		MutationID: rc.MutationID, Outcome: rc.Outcome, Version: rc.Version, Seq: rc.Seq,
		State: rc.State, Deleted: rc.Deleted, Code: protocol.Code(rc.Code), Message: rc.Message,
		Conflict: rc.Conflict,
	}
}

// toOp validates a mutation against its collection's settings and converts
// it to the resolver's vocabulary.
func (e *Engine) toOp(p Principal, m *protocol.Mutation) (conflict.Op, conflict.Collection, *protocol.Error) {
	col, ok := e.resolvers.Collection(m.Collection)
	if !ok {
		if perr := protocol.ValidateCollection(m.Collection); perr != nil {
			return conflict.Op{}, col, perr
		}
		return conflict.Op{}, col, protocol.Errorf(protocol.CodeUnknownCollection, "collection %q is not configured", m.Collection)
	}
	lim := e.cfg.Limits
	if col.MaxDepth > 0 {
		lim.MaxDepth = col.MaxDepth
	}
	if perr := protocol.ValidateMutation(m, lim); perr != nil {
		return conflict.Op{}, col, perr
	}
	ts, err := hlc.Parse(m.HLC)
	if err != nil || ts.IsZero() {
		return conflict.Op{}, col, protocol.Errorf(protocol.CodeBadRequest, "mutation %d: hlc must be a timestamp WALL-LOGICAL-NODE", m.ID)
	}
	// The node part names the device, whatever the client wrote: the tie
	// break between equal clocks must not be forgeable.
	ts.Node = p.Ref().String()
	if ahead := time.UnixMilli(ts.Wall).Sub(e.cfg.Now()); ahead > e.cfg.MaxClockSkew {
		now := e.clock.Now()
		ts = hlc.Timestamp{Wall: now.Wall, Logical: now.Logical, Node: ts.Node}
	} else {
		e.clock.Observe(ts)
	}
	return conflict.Op{
		Kind: m.Op, Put: m.Data, Patch: m.PatchOps, Base: m.Base, HLC: ts, Device: p.Ref().String(),
	}, col, nil
}

type docKey struct{ col, id string }

// commitRun resolves and commits planned mutations of one scope with the
// optimistic protocol: read head and latest versions, resolve, insert
// entries seq head+1.. in one ordered batch; when another writer took a seq
// or version first, keep the committed prefix and redo the rest.
//
// Receipts and conflict records ride in the batch and become durable only
// when every entry of it commits; those of mutations decided before a lost
// race are carried into the next attempt.
func (e *Engine) commitRun(ctx context.Context, p Principal, scope string, todo []planned, results []protocol.Result) {
	unlock := e.scopes.lock(scope)
	defer unlock()
	start := time.Now()
	defer func() { e.m.commitLatency.Observe(time.Since(start).Seconds()) }()

	var carried []planItem // decided in earlier attempts, not yet durable
	for attempt := 0; len(todo) > 0; attempt++ {
		if attempt >= maxCommitAttempts || ctx.Err() != nil {
			e.failAll(todo, results, protocol.Errorf(protocol.CodeUnavailable, "scope is too contended; retry"))
			e.saveCarried(ctx, p, scope, carried, results)
			return
		}
		jitter(ctx, attempt)
		pl, err := e.resolveAll(ctx, p.Ref(), scope, todo)
		if err != nil {
			e.failAll(todo, results, asProtocolErr(err))
			e.saveCarried(ctx, p, scope, carried, results)
			return
		}
		all := append(append([]planItem(nil), carried...), pl.items...)
		batch := &storage.Batch{
			Scope: scope, Entries: pl.entries, Receipts: receiptsOf(all), Conflicts: recordsOf(all),
			Device: p.Ref(), LastMutationID: todo[len(todo)-1].mut.ID,
		}
		n, err := e.store.Commit(ctx, batch)
		if n > 0 {
			e.announce(scope, pl.entries[:n])
		}
		var ce *storage.CommitError
		switch {
		case err == nil:
			for k, t := range todo {
				results[t.idx] = pl.items[k].result
			}
			e.announceConflicts(scope, batch.Conflicts)
			return
		case !errors.As(err, &ce):
			// Entries [0, n) are durable; everything after is unknown to the
			// device and must be resent. It is not lost: it was never acked.
			done := pl.decidedThrough(n)
			for k := range done {
				results[todo[k].idx] = pl.items[k].result
			}
			e.failAll(todo[done:], results, asProtocolErr(e.storageErr(ctx, "commit", err)))
			e.saveCarried(ctx, p, scope, append(carried, pl.items[:done]...), results)
			return
		}
		e.m.commitRetries.Inc()
		// Mutations before the rejected entry are decided: keep their
		// results, and carry their receipts and records to the next batch.
		done := pl.decidedThrough(n)
		for k := range done {
			results[todo[k].idx] = pl.items[k].result
		}
		carried = append(carried, pl.items[:done]...)
		todo = todo[done:]
		if ce.Taken == storage.TakenMutation {
			// This mutation was committed before: a crash between commit and
			// receipt, or the same device pushing through another node. The
			// rest of the batch was likely committed with it: settle every
			// mutation at or below the device's stored mark as a replay in
			// one go, rather than one per resolve pass.
			mark := todo[0].mut.ID
			if st, err := e.store.Device(ctx, p.Ref()); err == nil && st.LastMutationID > mark {
				mark = st.LastMutationID
			}
			k := 0
			for k < len(todo) && todo[k].mut.ID <= mark {
				results[todo[k].idx] = e.replay(ctx, p, todo[k].mut)
				k++
			}
			todo = todo[k:]
			attempt-- // not a lost race: no reason to give up sooner
		}
	}
	e.saveCarried(ctx, p, scope, carried, results)
}

// saveCarried makes the receipts and conflict records of decided mutations
// durable when no later batch carried them. Receipts are a convenience (a
// lost one is rebuilt from the log, or a rejection is re-derived), but a
// conflict record is the only copy of the device's change: if it cannot be
// written, the device is told to resend instead of being told "conflict".
func (e *Engine) saveCarried(ctx context.Context, p Principal, scope string, items []planItem, results []protocol.Result) {
	receipts, records := receiptsOf(items), recordsOf(items)
	if len(receipts) == 0 && len(records) == 0 {
		return
	}
	// The device's mark moves past them too: a resend must be answered
	// from these receipts, never decided a second time (a conflict record
	// rewritten as open after someone resolved it, say). Every mutation
	// still undecided has a higher id, so the mark never passes one.
	var mark uint64
	for _, it := range items {
		mark = max(mark, it.result.MutationID)
	}
	b := &storage.Batch{Scope: scope, Receipts: receipts, Conflicts: records, Device: p.Ref(), LastMutationID: mark}
	if _, err := e.store.Commit(ctx, b); err != nil {
		// Nothing of these decisions is durable except entries already in
		// the log. Tell the device to resend every one of them: a resend of
		// a committed entry is answered from the log; anything else is
		// decided again, which is safe because nothing was acknowledged and
		// the device's mark did not move. Acknowledging "conflict" without
		// its record, or "merged" for a resolution whose record stays open,
		// would lose the change.
		e.log.Warn("engine: saving receipts and conflicts failed", "device", p.Ref().String(), "err", err)
		perr := protocol.Errorf(protocol.CodeUnavailable, "outcome not saved; retry")
		decided := make(map[uint64]bool, len(items))
		for _, it := range items {
			decided[it.result.MutationID] = true
		}
		for i := range results {
			if decided[results[i].MutationID] {
				results[i] = rejected(results[i].MutationID, perr)
			}
		}
		return
	}
	e.announceConflicts(scope, records)
}

func (e *Engine) failAll(todo []planned, results []protocol.Result, perr *protocol.Error) {
	for _, t := range todo {
		results[t.idx] = rejected(t.mut.ID, perr)
	}
}

func asProtocolErr(err error) *protocol.Error {
	var perr *protocol.Error
	if errors.As(err, &perr) {
		return perr
	}
	return protocol.Errorf(protocol.CodeUnavailable, "request interrupted: %v", err)
}

// planItem is the decision for one pending mutation in one resolve pass.
type planItem struct {
	result  protocol.Result
	receipt *storage.Receipt        // nil: nothing to persist
	record  *storage.ConflictRecord // a conflict opened or closed by it
	entry   int                     // index into plan.entries, or -1
}

// plan is one resolve pass over the pending mutations.
type plan struct {
	entries []storage.Entry
	items   []planItem // one per todo item
}

func receiptsOf(items []planItem) []storage.Receipt {
	var out []storage.Receipt
	for _, it := range items {
		if it.receipt != nil {
			out = append(out, *it.receipt)
		}
	}
	return out
}

func recordsOf(items []planItem) []storage.ConflictRecord {
	var out []storage.ConflictRecord
	for _, it := range items {
		if it.record != nil {
			out = append(out, *it.record)
		}
	}
	return out
}

// decidedThrough returns how many todo items are decided when entries
// [0, n) committed: every item up to (not including) the first item whose
// entry did not commit. Items without an entry before that point are
// decided too; their decision read state that the commit did not change.
func (pl *plan) decidedThrough(n int) int {
	for k, it := range pl.items {
		if it.entry >= n {
			return k
		}
	}
	if n == len(pl.entries) {
		return len(pl.items)
	}
	return 0
}

func (e *Engine) resolveAll(ctx context.Context, dev storage.DeviceRef, scope string, todo []planned) (*plan, error) {
	head, err := e.store.Head(ctx, scope)
	if err != nil {
		return nil, e.storageErr(ctx, "head", err)
	}
	now := e.cfg.Now()
	pl := &plan{}
	docs := map[docKey]*conflict.Doc{} // state as this batch leaves it
	floors := map[docKey]uint64{}      // versions of purged documents: numbering continues above them
	closed := map[string]bool{}        // conflicts resolved earlier in this batch
	for _, t := range todo {
		m := t.mut
		if t.refusal != nil {
			pl.items = append(pl.items, refusedItem(dev, scope, m, t.refusal, now))
			continue
		}
		key := docKey{m.Collection, m.DocID}
		cur, ok := docs[key]
		if !ok {
			latest, err := e.store.Latest(ctx, scope, m.Collection, m.DocID)
			switch {
			case err == nil && latest.Seq == 0:
				// Compaction purged the tombstone: to resolvers the document
				// does not exist, but its versions never restart.
				floors[key] = latest.Version
			case err == nil:
				cur = docFromEntry(latest)
			case errors.Is(err, storage.ErrNotFound):
			default:
				return nil, e.storageErr(ctx, "latest", err)
			}
		}
		op := t.op
		var closing *storage.ConflictRecord
		if m.Resolves != "" {
			rec, err := e.checkResolves(ctx, scope, m)
			if err == nil && closed[m.Resolves] {
				// The store still says open, but an earlier mutation of this
				// batch closes it: answer as a later push would.
				err = protocol.Errorf(protocol.CodeBadRequest, "conflict %q is already resolved", m.Resolves)
			}
			var perr *protocol.Error
			switch {
			case errors.As(err, &perr) && !perr.Code.Retryable():
				// Persist the refusal: a resend must get it again, not
				// stale_mutation (the record it named may be gone by then).
				rc := storage.Receipt{
					Device: dev, MutationID: m.ID, Outcome: storage.Rejected, Code: string(perr.Code),
					Message: perr.Message, Scope: scope, Collection: m.Collection, DocID: m.DocID, Created: now,
				}
				pl.items = append(pl.items, planItem{result: fromReceipt(rc), receipt: &rc, entry: -1})
				continue
			case err != nil:
				return nil, err
			}
			op.Force = true // the person chose this state: it applies whatever the rule
			closing = &rec
		}
		res, err := t.col.Resolver.Resolve(cur, op)
		if err != nil {
			// A resolver is a pure function: an error is a bug, not a
			// property of the mutation. Do not record it as the mutation's
			// outcome; fail the rest of the run retryably instead.
			e.log.Error("engine: resolver failed", "collection", m.Collection, "err", err)
			return nil, protocol.Errorf(protocol.CodeInternal, "resolver for %s failed", m.Collection)
		}
		it, entry, err := e.decide(ctx, dev, scope, t, cur, floors[key], res, now, head+uint64(len(pl.entries))+1)
		if err != nil {
			return nil, err
		}
		if closing != nil && (it.result.Outcome == storage.Applied || it.result.Outcome == storage.Merged) {
			closing.Status, closing.Closed = storage.ConflictResolved, now
			closing.ResolvedBy = &storage.DeviceMutation{Device: dev, MutationID: m.ID}
			it.record = closing
			closed[closing.ID] = true
		}
		if entry == nil {
			it.entry = -1
			pl.items = append(pl.items, it)
			continue
		}
		it.entry = len(pl.entries)
		pl.items = append(pl.items, it)
		pl.entries = append(pl.entries, *entry)
		docs[key] = docFromEntry(*entry)
	}
	return pl, nil
}

// decide turns a resolver result into the ack result, the receipt, a
// conflict record (manual rule) and, when the state changes, the log entry
// to insert at seq.
func (e *Engine) decide(ctx context.Context, dev storage.DeviceRef, scope string, t planned, cur *conflict.Doc, floor uint64, res conflict.Result, now time.Time, seq uint64) (planItem, *storage.Entry, error) {
	m := t.mut
	rc := storage.Receipt{
		Device: dev, MutationID: m.ID, Outcome: storage.Outcome(res.Outcome), Scope: scope,
		Collection: m.Collection, DocID: m.DocID, Created: now,
	}
	curVersion := floor
	if cur != nil {
		curVersion = cur.Version
	}
	item := func(rc storage.Receipt) planItem { return planItem{result: fromReceipt(rc), receipt: &rc} }
	switch res.Outcome {
	case conflict.Applied, conflict.Merged:
	case conflict.Conflict:
		rec, err := e.openConflict(ctx, dev, scope, m, cur, now)
		if err != nil {
			return planItem{}, nil, err
		}
		rc.Outcome, rc.Version, rc.Conflict = storage.Conflict, curVersion, rec.ID
		it := item(rc)
		it.record = &rec
		return it, nil, nil
	default:
		rc.Outcome = storage.Rejected
		rc.Code, rc.Message = res.Code, res.Reason
		if rc.Code == "" {
			rc.Code = string(protocol.CodeBadOp)
		}
		rc.Version = curVersion
		return item(rc), nil, nil
	}
	next := res.Doc
	maxBytes := e.cfg.MaxDocBytes
	if t.col.MaxDocBytes > 0 {
		maxBytes = t.col.MaxDocBytes
	}
	if !next.Deleted && docSize(next.Fields) > maxBytes {
		rc.Outcome, rc.Code = storage.Rejected, string(protocol.CodeTooLarge)
		rc.Message = fmt.Sprintf("the resulting document exceeds %d bytes", maxBytes)
		rc.Version = curVersion
		return item(rc), nil, nil
	}
	if cur != nil && sameState(cur, &next) {
		// Nothing changed (every field lost to a newer write, or an update
		// met a tombstone under delete-wins): no entry, tell the device what won.
		rc.Outcome = storage.Merged
		rc.Version, rc.State, rc.Deleted = cur.Version, cur.Fields, cur.Deleted
		return item(rc), nil, nil
	}
	entry := &storage.Entry{
		Scope: scope, Seq: seq, Collection: m.Collection, DocID: m.DocID,
		Version: curVersion + 1, Op: storage.Op(m.Op), State: next.Fields, Clocks: next.Clocks,
		Deleted: next.Deleted, Device: dev, MutationID: m.ID,
		HLC: entryHLC(next, t.op.HLC), Committed: now,
	}
	if entry.Deleted {
		entry.State = nil
	}
	rc.Version, rc.Seq = entry.Version, entry.Seq
	if rc.Outcome == storage.Merged {
		rc.State, rc.Deleted = entry.State, entry.Deleted
	}
	return item(rc), entry, nil
}

func entryHLC(d conflict.Doc, ts hlc.Timestamp) hlc.Timestamp {
	if d.Deleted {
		return d.DeletedAt
	}
	var max hlc.Timestamp
	for _, c := range d.Clocks {
		if c.After(max) {
			max = c
		}
	}
	if max.IsZero() {
		return ts
	}
	return max
}

func sameState(a, b *conflict.Doc) bool {
	if a.Deleted != b.Deleted {
		return false
	}
	if a.Deleted {
		return true
	}
	return maps.EqualFunc(a.Clocks, b.Clocks, func(x, y hlc.Timestamp) bool { return x == y }) &&
		reflect.DeepEqual(normalize(a.Fields), normalize(b.Fields))
}

func normalize(m map[string]any) map[string]any {
	if len(m) == 0 {
		return nil
	}
	return m
}

func docFromEntry(en storage.Entry) *conflict.Doc {
	d := &conflict.Doc{
		Fields: en.State, Clocks: en.Clocks, Deleted: en.Deleted,
		Version: en.Version, LastDevice: en.Device.String(),
	}
	if en.Deleted {
		d.DeletedAt = en.HLC
	}
	return d
}

// announce tells the notifier about committed entries (called under the
// scope lock, so announcements leave in seq order).
func (e *Engine) announce(scope string, entries []storage.Entry) {
	e.m.commits.Inc()
	e.m.commitEntries.Add(float64(len(entries)))
	e.notify.Committed(scope, &protocol.Changes{
		Scope: scope, From: entries[0].Seq - 1, To: entries[len(entries)-1].Seq,
		Head: entries[len(entries)-1].Seq, Entries: toChanges(entries),
	})
}
