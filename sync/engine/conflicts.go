package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/hlc"
	"github.com/syncgate/syncgate/sync/protocol"
)

// conflictID derives a record id from the mutation that opened it, so a
// retried commit rewrites the same record instead of opening a second one.
func conflictID(dev storage.DeviceRef, mid uint64) string {
	h := sha256.Sum256([]byte(dev.User + "\x00" + dev.Device + "\x00" + strconv.FormatUint(mid, 10)))
	return "c" + hex.EncodeToString(h[:12])
}

// openConflict builds the record of a mutation the manual rule did not apply.
func (e *Engine) openConflict(ctx context.Context, dev storage.DeviceRef, scope string, m *protocol.Mutation, cur *conflict.Doc, now time.Time) (storage.ConflictRecord, error) {
	mine, err := json.Marshal(m)
	if err != nil {
		return storage.ConflictRecord{}, errf("encoding mutation %d: %w", m.ID, err)
	}
	rec := storage.ConflictRecord{
		ID: conflictID(dev, m.ID), Scope: scope, Collection: m.Collection, DocID: m.DocID,
		Base: m.Base, Mine: mine, Device: dev, MutationID: m.ID,
		Status: storage.ConflictOpen, Created: now,
	}
	if cur != nil {
		rec.Theirs, rec.TheirsVersion, rec.TheirsDeleted = cur.Fields, cur.Version, cur.Deleted
	}
	if m.Base > 0 {
		// The common ancestor, for a three-way merge in the app, if the log
		// still has it (compaction removes superseded versions).
		base, err := e.store.Version(ctx, scope, m.Collection, m.DocID, m.Base)
		switch {
		case err == nil:
			rec.BaseState = base.State
		case !errors.Is(err, storage.ErrNotFound):
			return rec, e.storageErr(ctx, "version", err)
		}
	}
	return rec, nil
}

// checkResolves validates a mutation that names a conflict: the record must
// be open and about the same document.
func (e *Engine) checkResolves(ctx context.Context, scope string, m *protocol.Mutation) (storage.ConflictRecord, error) {
	rec, err := e.store.Conflict(ctx, scope, m.Resolves)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return rec, protocol.Errorf(protocol.CodeBadRequest, "mutation %d resolves unknown conflict %q", m.ID, m.Resolves)
	case err != nil:
		return rec, e.storageErr(ctx, "conflict", err)
	case rec.Collection != m.Collection || rec.DocID != m.DocID:
		return rec, protocol.Errorf(protocol.CodeBadRequest, "conflict %q is about %s/%s, not %s/%s", m.Resolves, rec.Collection, rec.DocID, m.Collection, m.DocID)
	case rec.Status != storage.ConflictOpen:
		return rec, protocol.Errorf(protocol.CodeBadRequest, "conflict %q is already %s", m.Resolves, rec.Status)
	}
	return rec, nil
}

// ConflictView converts a stored record to its wire form.
func ConflictView(r storage.ConflictRecord) protocol.Conflict {
	c := protocol.Conflict{
		ID: r.ID, Scope: r.Scope, Collection: r.Collection, DocID: r.DocID, Base: r.Base,
		BaseState: r.BaseState, Mine: r.Mine, Theirs: r.Theirs, TheirsVersion: r.TheirsVersion,
		TheirsDeleted: r.TheirsDeleted, User: r.Device.User, Device: r.Device.Device,
		MutationID: r.MutationID, Status: string(r.Status), Created: r.Created.UnixMilli(),
	}
	if !r.Closed.IsZero() {
		c.Closed = r.Closed.UnixMilli()
	}
	return c
}

// Conflicts lists conflict records of a scope the principal may use,
// oldest first, paged by the id of the last record of the previous page.
func (e *Engine) Conflicts(ctx context.Context, p Principal, scope string, openOnly bool, after string, limit int) ([]protocol.Conflict, error) {
	if perr := e.checkScope(p, scope); perr != nil {
		return nil, perr
	}
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	recs, err := e.store.ListConflicts(ctx, scope, openOnly, after, limit)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return nil, protocol.Errorf(protocol.CodeNotFound, "no conflict %q in %s to page after", after, scope)
	case err != nil:
		return nil, e.storageErr(ctx, "conflicts", err)
	}
	out := make([]protocol.Conflict, len(recs))
	for i, r := range recs {
		out[i] = ConflictView(r)
	}
	return out, nil
}

// Resolution is a person's decision on a conflict, sent without building a
// mutation by hand (the HTTP API). MutationID must follow the device's
// earlier ones, as for any mutation.
type Resolution struct {
	MutationID uint64
	State      map[string]any // the chosen or merged document
	Delete     bool           // or: the document should be deleted
}

// ResolveConflict applies a resolution as a put (or delete) that names the
// conflict, through the normal push path: same idempotency, same fan-out.
func (e *Engine) ResolveConflict(ctx context.Context, p Principal, scope, id string, r Resolution) (protocol.Result, error) {
	if perr := e.checkScope(p, scope); perr != nil {
		return protocol.Result{}, perr
	}
	rec, err := e.store.Conflict(ctx, scope, id)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return protocol.Result{}, protocol.Errorf(protocol.CodeNotFound, "no conflict %q in %s", id, scope)
	case err != nil:
		return protocol.Result{}, e.storageErr(ctx, "conflict", err)
	}
	m := protocol.Mutation{
		ID: r.MutationID, Scope: scope, Collection: rec.Collection, DocID: rec.DocID,
		Op: conflict.Put, Data: r.State, Resolves: id,
		HLC: hlc.Timestamp{Wall: e.cfg.Now().UnixMilli(), Node: p.Ref().String()}.String(),
	}
	if r.Delete {
		m.Op, m.Data = conflict.Delete, nil
	}
	// The person decided with the current state in view: base the
	// resolution on it, so it is not reported as a merge with itself.
	if latest, err := e.store.Latest(ctx, scope, rec.Collection, rec.DocID); err == nil {
		m.Base = latest.Version
	} else if !errors.Is(err, storage.ErrNotFound) {
		return protocol.Result{}, e.storageErr(ctx, "latest", err)
	}
	res, err := e.Push(ctx, p, []protocol.Mutation{m})
	if err != nil {
		return protocol.Result{}, err
	}
	return res[0], nil
}

func (e *Engine) announceConflicts(scope string, recs []storage.ConflictRecord) {
	for _, r := range recs {
		e.notify.Conflicted(scope, &protocol.ConflictMsg{Conflict: ConflictView(r)})
	}
}
