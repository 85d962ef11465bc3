package engine_test

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/hlc"
	"github.com/syncgate/syncgate/sync/protocol"
)

// propRules lists every field the generator writes, with its rule.
var propRules = map[string]map[string]string{
	"reading_progress": {"progress": "max", "chapter": "lww"},
	"bookmarks":        {"items": "union", "title": "lww"},
	"counters":         {"n": "counter", "label": "lww"},
	"notes":            {"title": "lww", "body": "lww", "tags": "lww", "pinned": "lww"},
}

// propDeleteWins are the collections whose deletes follow delete-wins
// (user_content is manual: deletes are decided by the manual rule).
var propDeleteWins = []string{"reading_progress", "bookmarks", "counters", "notes"}

// check runs after quiescence.
func (s *propSim) check() {
	ctx := context.Background()
	server := map[string]map[string]propDoc{}
	logs := map[string][]storage.Entry{}
	heads := map[string]uint64{}
	for _, sc := range s.scopes {
		// The server state, as a fresh device reads it: engine.Pull from 0.
		docs := map[string]propDoc{}
		var since uint64
		for range 10_000 {
			ch, reset, err := s.eng.Pull(ctx, s.auditor[sc], sc, since, 1+s.rng.IntN(10))
			if err != nil || reset != nil {
				s.failf("pull of %s from %d by a fresh device: err=%v reset=%+v", sc, since, err, reset)
				return
			}
			if ch.From != since {
				s.failf("pull of %s from %d answered from %d", sc, since, ch.From)
				return
			}
			for _, e := range ch.Entries {
				docs[propKey(e.Collection, e.DocID)] = propDoc{Version: e.Version, State: e.State, Deleted: e.Deleted}
			}
			since = ch.To
			if !ch.More {
				break
			}
		}
		head, err := s.base.Head(ctx, sc)
		if err != nil {
			s.failf("head of %s: %v", sc, err)
			return
		}
		if since != head {
			s.failf("pull of %s from 0 ended at %d, head is %d", sc, since, head)
		}
		entries, err := s.base.Read(ctx, sc, 0, head, 1<<30)
		if err != nil {
			s.failf("read log of %s: %v", sc, err)
			return
		}
		server[sc], logs[sc], heads[sc] = docs, entries, head
	}
	s.checkReplicas(server, heads)
	entryOf := s.checkLog(logs)
	s.checkDecisions(entryOf)
	s.checkRules(server, logs, entryOf)
	s.checkConflictRecords()
}

// (a) every device's replica (the view: server state plus its overlay)
// equals the server state, and it has nothing left to send or await.
func (s *propSim) checkReplicas(server map[string]map[string]propDoc, heads map[string]uint64) {
	for _, d := range s.devs {
		if len(d.pending) > 0 || len(d.awaiting) > 0 {
			s.failf("(a) %s still has %d pending and %d awaited mutations", d.ref, len(d.pending), len(d.awaiting))
		}
		for _, sc := range d.scopes {
			if d.cp[sc] != heads[sc] {
				s.failf("(a) %s checkpoint of %s is %d, head is %d", d.ref, sc, d.cp[sc], heads[sc])
			}
			view, want := d.view(sc), server[sc]
			keys := slices.Sorted(maps.Keys(want))
			for k := range view {
				if _, ok := want[k]; !ok {
					keys = append(keys, k)
				}
			}
			for _, k := range keys {
				got, ok := view[k]
				w := want[k]
				switch {
				case !ok:
					s.failf("(a) %s lacks %s %s (server v%d %s)", d.ref, sc, k, w.Version, propDescDoc(w))
				case got.Version != w.Version || got.Deleted != w.Deleted || propDescDoc(got) != propDescDoc(w):
					s.failf("(a) %s has %s %s v%d %s, server has v%d %s", d.ref, sc, k, got.Version, propDescDoc(got), w.Version, propDescDoc(w))
				}
			}
		}
	}
}

func propDescDoc(d propDoc) string {
	if d.Deleted {
		return "(deleted)"
	}
	if len(d.State) == 0 {
		return "{}"
	}
	return propJSON(d.State)
}

// checkLog: (b) the log is gap-free (compaction is off), versions count up
// per document, and no (device, mutation) appears twice. It returns the
// entry of every mutation that has one.
func (s *propSim) checkLog(logs map[string][]storage.Entry) map[mutKey]storage.Entry {
	entryOf := map[mutKey]storage.Entry{}
	for _, sc := range s.scopes {
		versions := map[string]uint64{}
		for i, e := range logs[sc] {
			if e.Seq != uint64(i+1) {
				s.failf("(b) %s log: entry %d has seq %d", sc, i, e.Seq)
			}
			dk := propKey(e.Collection, e.DocID)
			versions[dk]++
			if e.Version != versions[dk] {
				s.failf("(b) %s %s: seq %d has version %d, want %d", sc, dk, e.Seq, e.Version, versions[dk])
			}
			k := mutKey{e.Device, e.MutationID}
			if prev, dup := entryOf[k]; dup {
				s.failf("(b) %s m%d is in the log twice: %s seq %d and %s seq %d", e.Device, e.MutationID, prev.Scope, prev.Seq, sc, e.Seq)
				continue
			}
			entryOf[k] = e
			rec := s.muts[k]
			switch {
			case rec == nil:
				s.failf("(b) %s seq %d comes from %s m%d, which no device sent", sc, e.Seq, e.Device, e.MutationID)
			case rec.m.Scope != sc || rec.m.Collection != e.Collection || rec.m.DocID != e.DocID || string(rec.m.Op) != string(e.Op):
				s.failf("(b) %s seq %d (%s/%s %s) comes from %s m%d, which was %s", sc, e.Seq, e.Collection, e.DocID, e.Op, e.Device, e.MutationID, propDescMut(rec.m))
			}
		}
	}
	return entryOf
}

// checkDecisions: (b) every mutation was decided, every one acknowledged
// applied or merged with a seq has exactly that entry, and nothing else
// has one. Rejections are expected only for resolving a conflict that is
// no longer open.
func (s *propSim) checkDecisions(entryOf map[mutKey]storage.Entry) {
	for _, k := range s.order {
		rec := s.muts[k]
		r := rec.res
		e, has := entryOf[k]
		switch {
		case !rec.decided:
			s.failf("(b) %s m%d was never answered except with retryable rejections: %s", k.dev, k.mid, propDescMut(rec.m))
			continue
		case r.Outcome == storage.Applied && r.Seq == 0:
			s.failf("(b) %s m%d acknowledged applied without a seq", k.dev, k.mid)
		case (r.Outcome == storage.Applied || r.Outcome == storage.Merged) && r.Seq > 0:
			if !has {
				s.failf("(b) LOST: %s m%d acknowledged %s but the log has no entry for it: %s", k.dev, k.mid, propDescResult(r), propDescMut(rec.m))
			} else if e.Seq != r.Seq || e.Version != r.Version {
				s.failf("(b) %s m%d acknowledged %s, its entry is seq %d version %d", k.dev, k.mid, propDescResult(r), e.Seq, e.Version)
			}
			continue
		case r.Outcome == storage.Rejected && rec.m.Resolves != "" && r.Code == protocol.CodeStaleMutation:
			// Its refusal (bad_request) kept no receipt, and a retry after
			// a commit that landed unanswered found none.
			s.knownf(propBugRefusedResolutionReplay, "%s m%d, a resolution, was first answered %s", k.dev, k.mid, propDescResult(r))
		case r.Outcome == storage.Rejected && r.Code == protocol.CodeStaleMutation && s.lostReceipts:
			s.knownf(propBugLostReceiptsStale, "%s m%d was first answered %s", k.dev, k.mid, propDescResult(r))
		case r.Outcome == storage.Rejected:
			if rec.m.Resolves == "" || r.Code != protocol.CodeBadRequest {
				s.failf("(b) unexpected rejection of %s m%d %s: %s %s", k.dev, k.mid, propDescMut(rec.m), r.Code, r.Message)
			}
		case r.Outcome == storage.Conflict && rec.m.Collection != "user_content":
			s.failf("(c) conflict outcome outside the manual collection: %s m%d", k.dev, k.mid)
		}
		if has {
			s.failf("(b) %s m%d was acknowledged %s, yet the log holds its entry seq %d", k.dev, k.mid, propDescResult(r), e.Seq)
		}
	}
}

// checkRules: (c) each rule's promise, per document, from the history of
// acknowledged mutations. A tombstone drops every field and clock, so a
// document's state after its last delete depends only on the mutations
// decided after that delete: those with an entry after it, and those
// decided without an entry on a version after it.
func (s *propSim) checkRules(server map[string]map[string]propDoc, logs map[string][]storage.Entry, entryOf map[mutKey]storage.Entry) {
	type docID struct{ scope, col, id string }
	acked := map[docID][]*mutRec{}
	for _, k := range s.order {
		rec := s.muts[k]
		if rec.decided && (rec.res.Outcome == storage.Applied || rec.res.Outcome == storage.Merged) {
			id := docID{rec.m.Scope, rec.m.Collection, rec.m.DocID}
			acked[id] = append(acked[id], rec)
		}
	}
	entries := map[docID][]storage.Entry{}
	var ids []docID
	for _, sc := range s.scopes {
		for _, e := range logs[sc] {
			id := docID{sc, e.Collection, e.DocID}
			if _, ok := entries[id]; !ok {
				ids = append(ids, id)
			}
			entries[id] = append(entries[id], e)
		}
	}
	for id, recs := range acked {
		if _, ok := entries[id]; !ok {
			s.failf("(b) %s %s/%s has acknowledged mutations (%s m%d first) but no entry", id.scope, id.col, id.id, recs[0].dev, recs[0].m.ID)
		}
	}
	for _, id := range ids {
		es := entries[id]
		final := server[id.scope][propKey(id.col, id.id)]
		where := fmt.Sprintf("%s %s/%s", id.scope, id.col, id.id)
		if id.col == "user_content" {
			s.checkManual(where, es)
			continue
		}
		if slices.Contains(propDeleteWins, id.col) {
			s.checkDeletes(where, acked[id], entryOf)
		}
		var tomb storage.Entry
		for _, e := range es {
			if e.Deleted {
				tomb = e
			}
		}
		if es[len(es)-1].Deleted {
			if !final.Deleted {
				s.failf("(a) %s: the log ends with a tombstone, the server state is live", where)
			}
			continue
		}
		var ops []*mutRec
		for _, rec := range acked[id] {
			if rec.res.Seq > tomb.Seq || (rec.res.Seq == 0 && rec.res.Version > tomb.Version) {
				if rec.m.Op == conflict.Delete {
					s.failf("(c) delete-wins: %s %s m%d, a delete acknowledged %s, did not delete it", where, rec.dev, rec.m.ID, propDescResult(rec.res))
				}
				ops = append(ops, rec)
			}
		}
		s.checkFields(where, id.col, final, ops)
	}
}

// checkDeletes: under delete-wins a delete always deletes.
func (s *propSim) checkDeletes(where string, recs []*mutRec, entryOf map[mutKey]storage.Entry) {
	for _, rec := range recs {
		if rec.m.Op != conflict.Delete {
			continue
		}
		e, has := entryOf[mutKey{rec.dev, rec.m.ID}]
		if (rec.res.Seq > 0 && !(has && e.Deleted)) || (rec.res.Seq == 0 && !rec.res.Deleted) {
			s.failf("(c) delete-wins: %s %s m%d, a delete acknowledged %s, left the document live", where, rec.dev, rec.m.ID, propDescResult(rec.res))
		}
	}
}

func propMids(ops []*mutRec) string {
	var out []string
	for _, o := range ops {
		out = append(out, fmt.Sprintf("%s/m%d", o.dev, o.m.ID))
	}
	return strings.Join(out, " ")
}

func (s *propSim) checkFields(where, col string, final propDoc, ops []*mutRec) {
	rules := propRules[col]
	for f := range final.State {
		if _, ok := rules[f]; !ok {
			s.failf("(c) %s holds field %q, which no mutation writes", where, f)
		}
	}
	for _, f := range slices.Sorted(maps.Keys(rules)) {
		got, has := final.State[f]
		switch rules[f] {
		case "max":
			want, ok := expectMax(ops, f)
			if ok != has || (ok && propNum(got) != want) {
				s.failf("(c) max: %s %s = %s, want %s (the largest acknowledged; from %s)", where, f, propShow(got, has), propShow(want, ok), propMids(ops))
			}
		case "counter":
			sum, incs := expectCounter(ops, f)
			if (incs > 0 && !has) || propNum(got) != sum {
				s.failf("(c) counter: %s %s = %s, want %v (the sum of %d distinct acknowledged increments; from %s)", where, f, propShow(got, has), sum, incs, propMids(ops))
			}
		case "lww":
			want, ok := expectLWW(ops, f)
			if ok != has || (ok && propJSON(got) != propJSON(want)) {
				s.failf("(c) lww: %s %s = %s, want %s (the write with the greatest HLC; from %s)", where, f, propShow(got, has), propShow(want, ok), propMids(ops))
			}
		case "union":
			want, ok := expectUnion(ops, f)
			if ok != has || (ok && propJSON(got) != propJSON(want)) {
				s.failf("(c) union: %s %s = %s, want %s (every add not removed or reset by a later op; from %s)", where, f, propShow(got, has), propShow(want, ok), propMids(ops))
			}
		}
	}
}

func propShow(v any, present bool) string {
	if !present {
		return "(absent)"
	}
	return propJSON(v)
}

func propNum(v any) float64 {
	f, _ := v.(float64)
	return f
}

// expectMax: the largest number any acknowledged op wrote to f.
func expectMax(ops []*mutRec, f string) (float64, bool) {
	best, ok := 0.0, false
	for _, o := range ops {
		v, in := o.m.Data[f]
		if o.m.Op == conflict.Patch {
			v, in = o.m.Set[f]
		}
		if n, isNum := v.(float64); in && isNum && (!ok || n > best) {
			best, ok = n, true
		}
	}
	return best, ok
}

// expectCounter: the sum of the increments, each acknowledged mutation once.
func expectCounter(ops []*mutRec, f string) (float64, int) {
	sum, n := 0.0, 0
	for _, o := range ops {
		if d, ok := o.m.Inc[f]; ok && o.m.Op == conflict.Patch {
			sum += d
			n++
		}
	}
	return sum, n
}

// expectLWW: the write of f with the greatest HLC. A put writes every
// field: the ones it leaves out are unset at its HLC (conflict/lww.go).
func expectLWW(ops []*mutRec, f string) (any, bool) {
	var best *mutRec
	var val any
	var present bool
	for _, o := range ops {
		var v any
		var in, writes bool
		switch o.m.Op {
		case conflict.Put:
			v, in = o.m.Data[f]
			writes = true
		case conflict.Patch:
			if v, in = o.m.Set[f]; in {
				writes = true
			} else if slices.Contains(o.m.Unset, f) {
				writes = true
			}
		}
		if writes && (best == nil || o.ts.After(best.ts)) {
			best, val, present = o, v, in
		}
	}
	return val, present
}

// expectUnion computes the union field f as conflict/union.go defines it:
// an element is present iff its latest add is at or after both its latest
// remove and the floor (the latest patch set/unset of f, or put); the field
// exists iff the latest op that made it exist (set, add, remove, a put
// naming it) is at or after the floor; elements are ordered by first add,
// then key, and carry the value of their latest add.
func expectUnion(ops []*mutRec, f string) ([]any, bool) {
	type elem struct {
		add, first, rem hlc.Timestamp
		added           bool
		val             any
	}
	elems := map[string]*elem{}
	get := func(v any) *elem {
		k := propElemKey(v)
		if elems[k] == nil {
			elems[k] = &elem{}
		}
		return elems[k]
	}
	var reset, docClock, exist hlc.Timestamp
	hasExist := false
	later := func(a, b hlc.Timestamp) hlc.Timestamp {
		if b.After(a) {
			return b
		}
		return a
	}
	addAt := func(v any, t hlc.Timestamp) {
		e := get(v)
		if !e.added || t.After(e.add) {
			e.add, e.val = t, v
		}
		if !e.added || e.first.After(t) {
			e.first = t
		}
		e.added = true
	}
	markExist := func(t hlc.Timestamp) {
		if !hasExist || t.After(exist) {
			exist, hasExist = t, true
		}
	}
	for _, o := range ops {
		t := o.ts
		switch o.m.Op {
		case conflict.Put:
			docClock = later(docClock, t)
			if v, ok := o.m.Data[f]; ok {
				for _, x := range v.([]any) {
					addAt(x, t)
				}
				markExist(t)
			}
		case conflict.Patch:
			if v, ok := o.m.Set[f]; ok {
				reset = later(reset, t)
				for _, x := range v.([]any) {
					addAt(x, t)
				}
				markExist(t)
			}
			if slices.Contains(o.m.Unset, f) {
				reset = later(reset, t)
			}
			if add, ok := o.m.Add[f]; ok {
				for _, x := range add {
					addAt(x, t)
				}
				markExist(t)
			}
			if rem, ok := o.m.Remove[f]; ok {
				for _, x := range rem {
					e := get(x)
					e.rem = later(e.rem, t)
				}
				markExist(t)
			}
		}
	}
	floor := later(reset, docClock)
	if !hasExist || floor.After(exist) {
		return nil, false
	}
	type shown struct {
		key   string
		first hlc.Timestamp
		val   any
	}
	var present []shown
	for k, e := range elems {
		if e.added && !later(e.rem, floor).After(e.add) {
			present = append(present, shown{k, e.first, e.val})
		}
	}
	slices.SortFunc(present, func(a, b shown) int {
		if c := a.first.Compare(b.first); c != 0 {
			return c
		}
		return cmp.Compare(a.key, b.key)
	})
	arr := make([]any, len(present))
	for i, p := range present {
		arr[i] = p.val
	}
	return arr, true
}

// checkManual: (c) the manual rule never overwrites without a resolving
// mutation. Every entry of a user_content document either saw the version
// it replaces (its base is not older, or that version is the same
// device's) or names a conflict it resolves; a resolution applies as sent.
func (s *propSim) checkManual(where string, es []storage.Entry) {
	byVersion := map[uint64]storage.Entry{}
	for _, e := range es {
		byVersion[e.Version] = e
	}
	for _, e := range es {
		rec := s.muts[mutKey{e.Device, e.MutationID}]
		if rec == nil {
			continue // reported by checkLog
		}
		if prev, ok := byVersion[e.Version-1]; ok && e.Version > 1 {
			if rec.m.Resolves == "" && rec.m.Base < prev.Version && prev.Device != e.Device {
				s.failf("(c) manual: %s seq %d: %s m%d (base %d, no conflict resolved) overwrote version %d by %s",
					where, e.Seq, e.Device, e.MutationID, rec.m.Base, prev.Version, prev.Device)
			}
		}
		if rec.m.Resolves != "" {
			switch {
			case rec.m.Op == conflict.Delete && !e.Deleted:
				s.failf("(c) manual: %s seq %d: resolving delete %s m%d left the document live", where, e.Seq, e.Device, e.MutationID)
			case rec.m.Op == conflict.Put && (e.Deleted || propDescDoc(propDoc{State: e.State}) != propDescDoc(propDoc{State: rec.m.Data})):
				s.failf("(c) manual: %s seq %d: resolution %s m%d sent %s, the document became %s", where, e.Seq, e.Device, e.MutationID,
					propJSON(rec.m.Data), propDescDoc(propDoc{State: e.State, Deleted: e.Deleted}))
			}
		}
	}
}

// checkConflictRecords: (c) every conflict outcome has its record, every
// record comes from a conflict outcome, and a record is resolved exactly
// when a resolving mutation naming it was applied, by that mutation.
func (s *propSim) checkConflictRecords() {
	ctx := context.Background()
	resolver := map[string]mutKey{} // conflict id -> the applied mutation that resolved it
	for _, k := range s.order {
		rec := s.muts[k]
		if rec.m.Resolves == "" || !rec.decided || (rec.res.Outcome != storage.Applied && rec.res.Outcome != storage.Merged) {
			continue
		}
		if prev, dup := resolver[rec.m.Resolves]; dup {
			msg := fmt.Sprintf("(c) manual: conflict %s resolved twice: by %s m%d and %s m%d", rec.m.Resolves, prev.dev, prev.mid, k.dev, k.mid)
			if s.muts[prev].res.Seq == 0 {
				s.knownf(propBugResolutionRecordOpen, "%s", msg) // the first closing was lost
			} else {
				s.failf("%s", msg)
			}
		}
		resolver[rec.m.Resolves] = k
	}
	for _, sc := range s.scopes {
		recs, err := s.base.ListConflicts(ctx, sc, false, "", 100_000)
		if err != nil {
			s.failf("list conflicts of %s: %v", sc, err)
			return
		}
		for _, r := range recs {
			k := mutKey{r.Device, r.MutationID}
			m := s.muts[k]
			switch {
			case m != nil && m.decided && m.res.Code == protocol.CodeStaleMutation && s.lostReceipts:
				s.knownf(propBugLostReceiptsStale, "conflict record %s of %s m%d, which was answered %s", r.ID, k.dev, k.mid, propDescResult(m.res))
				continue
			case m == nil || !m.decided || m.res.Outcome != storage.Conflict || m.res.Conflict != r.ID:
				res := "nothing"
				if m != nil {
					res = propDescResult(m.res)
				}
				s.failf("(c) manual: conflict record %s (%s m%d on %s/%s) but that mutation was answered %s", r.ID, r.Device, r.MutationID, r.Collection, r.DocID, res)
				continue
			case m.m.Collection != r.Collection || m.m.DocID != r.DocID:
				s.failf("(c) manual: conflict record %s is about %s/%s, its mutation about %s/%s", r.ID, r.Collection, r.DocID, m.m.Collection, m.m.DocID)
			}
			by, resolved := resolver[r.ID]
			switch {
			case resolved && r.Status == storage.ConflictOpen && s.muts[by].res.Seq == 0:
				s.knownf(propBugResolutionRecordOpen, "(c) manual: conflict %s was resolved by %s m%d (no entry) but its record is open", r.ID, by.dev, by.mid)
			case resolved && r.Status != storage.ConflictResolved:
				s.failf("(c) manual: conflict %s was resolved by %s m%d but its record is %s", r.ID, by.dev, by.mid, r.Status)
			case !resolved && r.Status != storage.ConflictOpen:
				s.failf("(c) manual: conflict %s is %s but no resolving mutation was applied", r.ID, r.Status)
			case resolved && (r.ResolvedBy == nil || r.ResolvedBy.Device != by.dev || r.ResolvedBy.MutationID != by.mid):
				s.failf("(c) manual: conflict %s was resolved by %s m%d, its record says %+v", r.ID, by.dev, by.mid, r.ResolvedBy)
			}
			delete(resolver, r.ID)
		}
	}
	for _, k := range s.order {
		rec := s.muts[k]
		if rec.decided && rec.res.Outcome == storage.Conflict {
			if _, err := s.base.Conflict(ctx, rec.m.Scope, rec.res.Conflict); err != nil {
				s.failf("(c) manual: %s m%d was answered conflict %s, which has no record: %v", k.dev, k.mid, rec.res.Conflict, err)
			}
		}
	}
	for id, k := range resolver {
		s.failf("(c) manual: %s m%d resolved conflict %s, which has no record", k.dev, k.mid, id)
	}
}
