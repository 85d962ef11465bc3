package engine

import (
	"context"
	"errors"
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
	dev, err := e.store.Device(ctx, p.Ref())
	if err != nil {
		return nil, e.storageErr("device", err)
	}
	results := make([]protocol.Result, len(muts))
	high := dev.LastMutationID // highest mutation id processed so far
	for i := 0; i < len(muts); {
		j := i + 1
		for j < len(muts) && muts[j].Scope == muts[i].Scope {
			j++
		}
		high = e.pushRun(ctx, p, muts[i:j], results[i:j], high)
		i = j
	}
	for _, r := range results {
		e.m.outcomes.WithLabelValues(string(r.Outcome), boolLabel(r.Replayed)).Inc()
	}
	return results, nil
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
		op, perr := e.toOp(p, m)
		if perr != nil {
			results[i] = rejected(m.ID, perr)
			continue
		}
		high = m.ID
		todo = append(todo, planned{idx: i, mut: m, op: op})
	}
	if len(todo) == 0 {
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
		return rejected(m.ID, e.storageErr("receipt", err).(*protocol.Error))
	}
	if perr := e.checkScope(p, m.Scope); perr != nil {
		return rejected(m.ID, perr)
	}
	if _, perr := e.toOp(p, m); perr != nil {
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
	}
}

// toOp validates a mutation and converts it to the resolver's vocabulary.
func (e *Engine) toOp(p Principal, m *protocol.Mutation) (conflict.Op, *protocol.Error) {
	if perr := protocol.ValidateMutation(m, e.cfg.Limits); perr != nil {
		return conflict.Op{}, perr
	}
	ts, err := hlc.Parse(m.HLC)
	if err != nil || ts.IsZero() {
		return conflict.Op{}, protocol.Errorf(protocol.CodeBadRequest, "mutation %d: hlc must be a timestamp WALL-LOGICAL-NODE", m.ID)
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
	}, nil
}

type docKey struct{ col, id string }

// commitRun resolves and commits planned mutations of one scope with the
// optimistic protocol: read head and latest versions, resolve, insert
// entries seq head+1.. in one ordered batch; when another writer took a seq
// or version first, keep the committed prefix and redo the rest.
func (e *Engine) commitRun(ctx context.Context, p Principal, scope string, todo []planned, results []protocol.Result) {
	unlock := e.scopes.lock(scope)
	defer unlock()
	start := time.Now()
	defer func() { e.m.commitLatency.Observe(time.Since(start).Seconds()) }()

	var receipts []storage.Receipt // of mutations already decided, for the final batch
	for attempt := 0; len(todo) > 0; attempt++ {
		if attempt == maxCommitAttempts || ctx.Err() != nil {
			e.failAll(todo, results, protocol.Errorf(protocol.CodeUnavailable, "scope is too contended; retry"))
			return
		}
		jitter(ctx, attempt)
		plan, err := e.resolveAll(ctx, p.Ref(), scope, todo)
		if err != nil {
			e.failAll(todo, results, asProtocolErr(err))
			return
		}
		batch := &storage.Batch{
			Scope: scope, Entries: plan.entries, Receipts: append(receipts, plan.receipts...),
			Device: p.Ref(), LastMutationID: todo[len(todo)-1].mut.ID,
		}
		n, err := e.store.Commit(ctx, batch)
		if n > 0 {
			e.announce(scope, plan.entries[:n])
		}
		var ce *storage.CommitError
		switch {
		case err == nil:
			for k, t := range todo {
				results[t.idx] = plan.results[k]
			}
			return
		case !errors.As(err, &ce):
			// Entries [0, n) are durable; everything after is unknown to the
			// device and must be resent. They are not lost: never acked.
			done := plan.decidedThrough(n)
			for k := range done {
				results[todo[k].idx] = plan.results[k]
			}
			e.failAll(todo[done:], results, asProtocolErr(e.storageErr("commit", err)))
			return
		}
		e.m.commitRetries.Inc()
		// Mutations before the rejected entry are decided; keep their
		// results and receipts.
		done := plan.decidedThrough(n)
		for k := range done {
			results[todo[k].idx] = plan.results[k]
		}
		receipts = append(receipts, plan.receiptsOf(done)...)
		todo = todo[done:]
		if ce.Taken == storage.TakenMutation {
			// This mutation was committed before (a crash between commit and
			// receipt, or the same device pushing on two connections).
			t := todo[0]
			results[t.idx] = e.replay(ctx, p, t.mut)
			todo = todo[1:]
		}
	}
	// Only rejections decided by the resolver remained: persist their receipts.
	if len(receipts) > 0 {
		e.saveReceipts(ctx, p, scope, receipts)
	}
}

func (e *Engine) saveReceipts(ctx context.Context, p Principal, scope string, receipts []storage.Receipt) {
	b := &storage.Batch{Scope: scope, Receipts: receipts, Device: p.Ref(), LastMutationID: receipts[len(receipts)-1].MutationID}
	if _, err := e.store.Commit(ctx, b); err != nil {
		// Losing these receipts only changes how a replay is answered.
		e.log.Warn("engine: saving receipts failed", "device", p.Ref().String(), "err", err)
	}
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

// plan is one resolve pass over the pending mutations.
type plan struct {
	entries  []storage.Entry
	results  []protocol.Result // per todo item
	receipts []storage.Receipt // per todo item
	entryOf  []int             // per todo item: index into entries, or -1
}

// decidedThrough returns how many todo items are decided when entries
// [0, n) committed: every item up to (not including) the first item whose
// entry did not commit. Items without an entry before that point are
// decided too; their decision read state that the commit did not change.
func (pl *plan) decidedThrough(n int) int {
	for k, ei := range pl.entryOf {
		if ei >= n {
			return k
		}
	}
	if n == len(pl.entries) {
		return len(pl.entryOf)
	}
	return 0
}

func (pl *plan) receiptsOf(k int) []storage.Receipt { return pl.receipts[:k] }

func (e *Engine) resolveAll(ctx context.Context, dev storage.DeviceRef, scope string, todo []planned) (*plan, error) {
	head, err := e.store.Head(ctx, scope)
	if err != nil {
		return nil, e.storageErr("head", err)
	}
	now := e.cfg.Now()
	pl := &plan{}
	docs := map[docKey]*conflict.Doc{} // state as this batch leaves it
	for _, t := range todo {
		m := t.mut
		key := docKey{m.Collection, m.DocID}
		cur, ok := docs[key]
		if !ok {
			latest, err := e.store.Latest(ctx, scope, m.Collection, m.DocID)
			switch {
			case err == nil:
				cur = docFromEntry(latest)
			case errors.Is(err, storage.ErrNotFound):
			default:
				return nil, e.storageErr("latest", err)
			}
		}
		res, err := e.resolvers.For(m.Collection).Resolve(cur, t.op)
		if err != nil {
			e.log.Error("engine: resolver failed", "collection", m.Collection, "err", err)
			res = conflict.Result{Outcome: conflict.Rejected, Code: string(protocol.CodeInternal), Reason: "resolver failed"}
		}
		r, rc, entry := e.decide(dev, scope, m, cur, res, now, head+uint64(len(pl.entries))+1)
		pl.results = append(pl.results, r)
		pl.receipts = append(pl.receipts, rc)
		if entry == nil {
			pl.entryOf = append(pl.entryOf, -1)
			continue
		}
		pl.entryOf = append(pl.entryOf, len(pl.entries))
		pl.entries = append(pl.entries, *entry)
		docs[key] = docFromEntry(*entry)
	}
	return pl, nil
}

// decide turns a resolver result into the ack result, the receipt and (when
// the state changes) the log entry to insert at seq.
func (e *Engine) decide(dev storage.DeviceRef, scope string, m *protocol.Mutation, cur *conflict.Doc, res conflict.Result, now time.Time, seq uint64) (protocol.Result, storage.Receipt, *storage.Entry) {
	rc := storage.Receipt{
		Device: dev, MutationID: m.ID, Outcome: storage.Outcome(res.Outcome), Scope: scope,
		Collection: m.Collection, DocID: m.DocID, Created: now,
	}
	var curVersion uint64
	if cur != nil {
		curVersion = cur.Version
	}
	switch res.Outcome {
	case conflict.Applied, conflict.Merged:
	default:
		rc.Outcome = storage.Rejected
		rc.Code, rc.Message = res.Code, res.Reason
		if rc.Code == "" {
			rc.Code = string(protocol.CodeBadOp)
		}
		rc.Version = curVersion
		return fromReceipt(rc), rc, nil
	}
	next := res.Doc
	if !next.Deleted && docSize(next.Fields) > e.cfg.MaxDocBytes {
		rc.Outcome, rc.Code = storage.Rejected, string(protocol.CodeTooLarge)
		rc.Message = "the resulting document exceeds max_doc_bytes"
		rc.Version = curVersion
		return fromReceipt(rc), rc, nil
	}
	if cur != nil && sameState(cur, &next) {
		// Nothing changed (every field lost to a newer write, or an update
		// met a tombstone under delete-wins): no entry, tell the device what won.
		rc.Outcome = storage.Merged
		rc.Version, rc.State, rc.Deleted = cur.Version, cur.Fields, cur.Deleted
		return fromReceipt(rc), rc, nil
	}
	entry := &storage.Entry{
		Scope: scope, Seq: seq, Collection: m.Collection, DocID: m.DocID,
		Version: curVersion + 1, Op: storage.Op(m.Op), State: next.Fields, Clocks: next.Clocks,
		Deleted: next.Deleted, Device: dev, MutationID: m.ID,
		HLC: entryHLC(next, m), Committed: now,
	}
	if entry.Deleted {
		entry.State = nil
	}
	rc.Version, rc.Seq = entry.Version, entry.Seq
	if rc.Outcome == storage.Merged {
		rc.State, rc.Deleted = entry.State, entry.Deleted
	}
	return fromReceipt(rc), rc, entry
}

func entryHLC(d conflict.Doc, m *protocol.Mutation) hlc.Timestamp {
	if d.Deleted {
		return d.DeletedAt
	}
	ts, _ := hlc.Parse(m.HLC) // validated in toOp
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

// Compact runs one compaction pass over every scope and expires old receipts.
func (e *Engine) Compact(ctx context.Context) error {
	now := e.cfg.Now()
	olderThan := now.Add(-e.cfg.Retention)
	removed := 0
	after := ""
	for {
		scopes, err := e.store.Scopes(ctx, after, 256)
		if err != nil {
			return errf("listing scopes: %w", err)
		}
		for _, s := range scopes {
			st, err := e.store.Compact(ctx, s, olderThan)
			if err != nil {
				return errf("compacting %s: %w", s, err)
			}
			removed += st.Removed
		}
		if len(scopes) < 256 {
			break
		}
		after = scopes[len(scopes)-1]
	}
	e.m.compacted.Add(float64(removed))
	expired, err := e.store.ExpireReceipts(ctx, now.Add(-e.cfg.ReceiptTTL))
	if err != nil {
		return errf("expiring receipts: %w", err)
	}
	e.log.Info("engine: compaction pass", "removed", removed, "receipts_expired", expired, "took", time.Since(now))
	return nil
}

// Run compacts every CompactEvery until ctx ends.
func (e *Engine) Run(ctx context.Context) error {
	t := time.NewTicker(e.cfg.CompactEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := e.Compact(ctx); err != nil && ctx.Err() == nil {
				e.log.Error("engine: compaction failed", "err", err)
			}
		}
	}
}
