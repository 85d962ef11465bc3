package engine_test

import (
	"encoding/json"
	"maps"
	"slices"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/engine"
	"github.com/syncgate/syncgate/sync/hlc"
	"github.com/syncgate/syncgate/sync/protocol"
)

// propDevice is a simulated device of the property test. Its replica
// follows the client rules of internal/client (docs/protocol.md): the
// server state, only ever set from `changes` entries and resolved states
// in acks, plus an overlay of the device's own mutations that the server
// state does not include yet. Changes apply under the checkpoint rule
// (From <= checkpoint), and a message that starts after the checkpoint is
// a gap: the device pulls.
type propDevice struct {
	p       engine.Principal
	ref     storage.DeviceRef
	scopes  []string
	online  bool
	skewMs  int64 // the device's wall clock minus the server's
	observe bool  // merge the HLCs of received entries into the clock (a full HLC client)
	wall    int64
	logical uint32
	nextMID uint64

	pending   []protocol.Mutation // not acknowledged yet (sent or not)
	awaiting  []propAwaited       // acknowledged, entry not in the server state yet
	confirmed map[uint64]bool     // pending mutations already seen committed in an entry
	replica   map[string]map[string]propDoc
	cp        map[string]uint64
	inbox     []propMsg                    // live messages on their way to the device
	conflicts map[string]protocol.Conflict // open manual conflicts the device knows of
}

type propDoc struct {
	Version uint64
	State   map[string]any
	Deleted bool
}

type propAwaited struct {
	m   protocol.Mutation
	seq uint64
}

// propMsg is one live message: a changes or a conflict announcement.
type propMsg struct {
	changes  *protocol.Changes
	conflict *protocol.ConflictMsg
}

func newPropDevice(p engine.Principal, scopes []string) *propDevice {
	d := &propDevice{
		p: p, ref: p.Ref(), scopes: scopes,
		confirmed: map[uint64]bool{}, replica: map[string]map[string]propDoc{},
		cp: map[string]uint64{}, conflicts: map[string]protocol.Conflict{},
	}
	for _, s := range scopes {
		d.replica[s] = map[string]propDoc{}
	}
	return d
}

func propKey(col, id string) string { return col + "/" + id }

// stamp issues the next HLC of the device (its node is the device id; the
// server replaces it with user/device).
func (d *propDevice) stamp(serverMs int64) string {
	if w := serverMs + d.skewMs; w > d.wall {
		d.wall, d.logical = w, 0
	} else {
		d.logical++
	}
	return hlc.Timestamp{Wall: d.wall, Logical: d.logical, Node: d.p.Device}.String()
}

func (d *propDevice) observeHLC(s string) {
	if !d.observe {
		return
	}
	ts, err := hlc.Parse(s)
	if err != nil {
		return
	}
	switch {
	case ts.Wall > d.wall:
		d.wall, d.logical = ts.Wall, ts.Logical
	case ts.Wall == d.wall && ts.Logical > d.logical:
		d.logical = ts.Logical
	}
}

// apply folds a changes message into the replica under the checkpoint
// rule. It returns false when the message starts after the checkpoint.
func (d *propDevice) apply(c *protocol.Changes) bool {
	cp := d.cp[c.Scope]
	if c.From > cp {
		return false
	}
	if c.To <= cp {
		return true
	}
	rep := d.replica[c.Scope]
	for _, e := range c.Entries {
		if e.User == d.ref.User && e.Device == d.ref.Device {
			d.confirmed[e.MutationID] = true
		}
		if e.Seq <= cp {
			continue
		}
		d.observeHLC(e.HLC)
		key := propKey(e.Collection, e.DocID)
		if cur, ok := rep[key]; ok && cur.Version >= e.Version {
			continue
		}
		rep[key] = propDoc{Version: e.Version, State: e.State, Deleted: e.Deleted}
	}
	d.cp[c.Scope] = c.To
	kept := d.awaiting[:0]
	for _, a := range d.awaiting {
		if a.m.Scope != c.Scope || a.seq > c.To {
			kept = append(kept, a)
		}
	}
	d.awaiting = kept
	return true
}

// settle folds one (non-retryable) ack result in, as internal/client does.
func (d *propDevice) settle(m protocol.Mutation, r protocol.Result) {
	if m.Resolves != "" {
		delete(d.conflicts, m.Resolves) // resolved, or refused because it no longer is open
	}
	switch r.Outcome {
	case storage.Conflict:
		if _, known := d.conflicts[r.Conflict]; !known && r.Conflict != "" {
			d.conflicts[r.Conflict] = protocol.Conflict{ID: r.Conflict, Scope: m.Scope, Collection: m.Collection, DocID: m.DocID, Status: "open"}
		}
		return
	case storage.Applied, storage.Merged:
	default:
		return
	}
	if r.State != nil || r.Deleted {
		m = protocol.Mutation{Scope: m.Scope, Collection: m.Collection, DocID: m.DocID, Op: conflict.Put, Data: r.State}
		if r.Deleted {
			m.Op, m.Data = conflict.Delete, nil
		}
	}
	if r.Seq == 0 {
		// Nothing was written: the resolved state is the server state at r.Version.
		rep := d.replica[m.Scope]
		key := propKey(m.Collection, m.DocID)
		if r.Version >= rep[key].Version && (r.State != nil || r.Deleted) {
			rep[key] = propDoc{Version: r.Version, State: r.State, Deleted: r.Deleted}
		}
		return
	}
	if r.Seq > d.cp[m.Scope] && !d.confirmed[m.ID] {
		d.awaiting = append(d.awaiting, propAwaited{m: m, seq: r.Seq})
	}
}

// ack processes a delivered ack: every result but a retryable rejection
// settles its mutation and takes it off the queue.
func (d *propDevice) ack(sent []protocol.Mutation, res []protocol.Result) {
	done := map[uint64]bool{}
	for i, r := range res {
		if r.Outcome == storage.Rejected && r.Code.Retryable() {
			continue
		}
		d.settle(sent[i], r)
		done[r.MutationID] = true
	}
	kept := d.pending[:0]
	for _, m := range d.pending {
		if done[m.ID] {
			delete(d.confirmed, m.ID)
			continue
		}
		kept = append(kept, m)
	}
	d.pending = kept
}

func (d *propDevice) reset(scope string) {
	d.replica[scope] = map[string]propDoc{}
	d.cp[scope] = 0
}

// view is what the app shows: the server state with the device's own
// not-yet-included mutations re-applied in order.
func (d *propDevice) view(scope string) map[string]propDoc {
	v := maps.Clone(d.replica[scope])
	cp := d.cp[scope]
	for _, a := range d.awaiting {
		if a.m.Scope == scope && a.seq > cp {
			applyLocalProp(v, a.m)
		}
	}
	for _, m := range d.pending {
		if m.Scope == scope && !d.confirmed[m.ID] {
			applyLocalProp(v, m)
		}
	}
	return v
}

// applyLocalProp is the optimistic local apply: a plain, non-merging
// application of the op, which the server's answer replaces.
func applyLocalProp(view map[string]propDoc, m protocol.Mutation) {
	key := propKey(m.Collection, m.DocID)
	doc := view[key]
	state := maps.Clone(doc.State)
	if state == nil || doc.Deleted {
		state = map[string]any{}
	}
	switch m.Op {
	case conflict.Put:
		state = maps.Clone(m.Data)
	case conflict.Delete:
		view[key] = propDoc{Version: doc.Version, Deleted: true}
		return
	case conflict.Patch:
		maps.Copy(state, m.Set)
		for _, f := range m.Unset {
			delete(state, f)
		}
		for f, v := range m.Inc {
			n, _ := state[f].(float64)
			state[f] = n + v
		}
		for f, rm := range m.Remove {
			arr, _ := state[f].([]any)
			state[f] = slices.DeleteFunc(slices.Clone(arr), func(x any) bool {
				return slices.ContainsFunc(rm, func(y any) bool { return propElemKey(x) == propElemKey(y) })
			})
		}
		for f, add := range m.Add {
			arr, _ := state[f].([]any)
			arr = slices.Clone(arr)
			for _, x := range add {
				if !slices.ContainsFunc(arr, func(y any) bool { return propElemKey(x) == propElemKey(y) }) {
					arr = append(arr, x)
				}
			}
			state[f] = arr
		}
	}
	view[key] = propDoc{Version: doc.Version, State: state}
}

// propElemKey is a union element's identity as conflict/union.go defines
// it: {"id":<id>} for an object with an id, the canonical JSON otherwise.
func propElemKey(v any) string {
	if m, ok := v.(map[string]any); ok {
		if id, ok := m["id"]; ok {
			return `{"id":` + propJSON(id) + `}`
		}
	}
	return propJSON(v)
}

// propJSON is canonical JSON (encoding/json sorts map keys).
func propJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return "!" + err.Error()
	}
	return string(b)
}
