package engine

import (
	"context"
	"time"

	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/protocol"
)

// checkMedia looks up the {"$media": id} references each planned mutation
// adds and marks a mutation whose references are not all media of scope
// (or any reference, without a MediaChecker) as refused. It runs before
// the scope lock: a lookup per distinct id, none under the lock. Media
// deleted between this check and the commit leaves a dangling reference,
// as a delete after the commit does (deleting media never looks for
// references).
//
// An error means a lookup failed: the caller fails the run retryably.
func (e *Engine) checkMedia(ctx context.Context, scope string, todo []planned) error {
	var known map[string]bool // id -> exists, per push run
	for i := range todo {
		ids := protocol.MutationMediaRefs(todo[i].mut)
		if len(ids) == 0 {
			continue
		}
		if e.media == nil {
			todo[i].refusal = protocol.Errorf(protocol.CodeMediaNotFound, "this server has no media store: {\"$media\": ...} references are not accepted")
			continue
		}
		if known == nil {
			known = map[string]bool{}
		}
		for _, id := range ids {
			ok, seen := known[id]
			if !seen {
				var err error
				if ok, err = e.media.MediaExists(ctx, scope, id); err != nil {
					return e.storageErr(ctx, "media", err)
				}
				known[id] = ok
			}
			if !ok {
				todo[i].refusal = protocol.Errorf(protocol.CodeMediaNotFound, "no media %q in scope %s", id, scope)
				break
			}
		}
	}
	return nil
}

// refusedItem is the decision for a mutation refused before the resolver
// ran. Its receipt is persisted: the refusal depends on state (media that
// may be uploaded later), so a resend of the same mutation id must get it
// again rather than be decided anew, or be called stale.
func refusedItem(dev storage.DeviceRef, scope string, m *protocol.Mutation, perr *protocol.Error, now time.Time) planItem {
	rc := storage.Receipt{
		Device: dev, MutationID: m.ID, Outcome: storage.Rejected, Code: string(perr.Code),
		Message: perr.Message, Scope: scope, Collection: m.Collection, DocID: m.DocID, Created: now,
	}
	return planItem{result: fromReceipt(rc), receipt: &rc, entry: -1}
}
