package conflict

import (
	"fmt"
	"testing"
)

func forced(op Op) Op { op.Force = true; return op }

func TestServerWins(t *testing.T) {
	sw := Policy{Mode: ModeServerWins}
	runCases(t, []rcase{
		{name: "concurrent patch is discarded", res: sw, cur: live(), op: patchOp(at(30), 1, other, set("a", 9.0)), outcome: Merged,
			want: *live()},
		{name: "concurrent put is discarded", res: sw, cur: live(), op: putOp(at(30), 1, other, obj{}), outcome: Merged,
			want: *live()},
		{name: "non-concurrent patch applies as lww", res: sw, cur: live(), op: patchOp(at(11), 3, other, set("a", 9.0, "b", "old")), outcome: Merged,
			want: liveWith(other, obj{"a": 9.0}, clocks{"a": at(11)})},
		{name: "own offline edits are not concurrent", res: sw, cur: live(), op: patchOp(at(30), 1, me, set("a", 9.0)), outcome: Applied,
			want: liveWith(me, obj{"a": 9.0}, clocks{"a": at(30)})},
		{name: "new document", res: sw, op: putOp(at(5), 0, other, obj{"a": 1.0}), outcome: Applied,
			want: Doc{Fields: obj{"a": 1.0}, Clocks: clocks{"a": at(5), DocClock: at(5)}, LastDevice: other}},
		{name: "concurrent delete is discarded", res: sw, cur: live(), op: delOp(at(30), 1, other), outcome: Merged,
			want: *live()},
		{name: "non-concurrent delete applies", res: sw, cur: live(), op: delOp(at(30), 3, other), outcome: Applied,
			want: Doc{Deleted: true, DeletedAt: at(30), Version: 3, LastDevice: other}},
		{name: "concurrent update of a tombstone is discarded", res: sw, cur: tomb(), op: patchOp(at(50), 1, other, set("a", 1.0)), outcome: Merged,
			want: *tomb()},
		{name: "update after seeing the delete recreates", res: sw, cur: tomb(), op: patchOp(at(50), 4, other, set("a", 1.0)), outcome: Applied,
			want: Doc{Fields: obj{"a": 1.0}, Clocks: clocks{"a": at(50)}, Version: 4, LastDevice: other}},
		{name: "Deletes is ignored", res: Policy{Mode: ModeServerWins, Deletes: UpdateWins}, cur: tomb(), op: patchOp(at(50), 1, other, set("a", 1.0)), outcome: Merged,
			want: *tomb()},
		{name: "forced op applies as sent", res: sw, cur: live(), op: forced(patchOp(at(5), 1, other, set("a", 9.0))), outcome: Merged,
			want: liveWith(other, obj{"a": 9.0}, nil)},
		{name: "bad op is still rejected", res: sw, cur: live(), op: patchOp(at(30), 1, other, PatchOps{Set: obj{DocClock: 1.0}}), outcome: Rejected},
	})
}

func TestClientWins(t *testing.T) {
	cw := Policy{Mode: ModeClientWins}
	runCases(t, []rcase{
		{name: "an older set applies; the clock stays", res: cw, cur: live(), op: patchOp(at(5), 3, other, set("a", 9.0)), outcome: Applied,
			want: liveWith(other, obj{"a": 9.0}, nil)},
		{name: "concurrent: applied, Merged so the device gets the state", res: cw, cur: live(), op: patchOp(at(5), 1, other, set("b", "y")), outcome: Merged,
			want: liveWith(other, obj{"b": "y"}, nil)},
		{name: "a newer set advances the clock", res: cw, cur: live(), op: patchOp(at(25), 3, other, set("b", "y")), outcome: Applied,
			want: liveWith(other, obj{"b": "y"}, clocks{"b": at(25)})},
		{name: "an older unset applies", res: cw, cur: live(), op: patchOp(at(5), 3, other, unset("b")), outcome: Applied,
			want: liveWith(other, obj{"b": nil}, nil)},
		{name: "an older put replaces everything", res: cw, cur: live(), op: putOp(at(5), 1, other, obj{"z": 1.0}), outcome: Merged,
			want: by(other, obj{"z": 1.0}, clocks{"a": at(10), "b": at(20), "tags": at(10), "n": at(10), "z": at(5), DocClock: at(5)})},
		{name: "concurrent delete applies", res: Policy{Mode: ModeClientWins, Deletes: UpdateWins}, cur: live(), op: delOp(at(5), 1, other), outcome: Merged,
			want: Doc{Deleted: true, DeletedAt: at(5), Version: 3, LastDevice: other}},
		{name: "concurrent update resurrects a tombstone", res: cw, cur: tomb(), op: patchOp(at(5), 1, other, set("a", 1.0)), outcome: Merged,
			want: Doc{Fields: obj{"a": 1.0}, Clocks: clocks{"a": at(5)}, Version: 4, LastDevice: other}},
		{name: "inc adds", res: cw, cur: live(), op: patchOp(at(5), 3, other, inc("n", 1)), outcome: Applied,
			want: liveWith(other, obj{"n": 3.0}, nil)},
	})
}

func TestManual(t *testing.T) {
	m := Policy{Mode: ModeManual}
	runCases(t, []rcase{
		{name: "concurrent patch is a conflict", res: m, cur: live(), op: patchOp(at(30), 1, other, set("c", 1.0)), outcome: Conflict},
		{name: "concurrent put is a conflict", res: m, cur: live(), op: putOp(at(30), 2, other, obj{}), outcome: Conflict},
		{name: "concurrent delete is a conflict", res: m, cur: live(), op: delOp(at(30), 1, other), outcome: Conflict},
		{name: "concurrent update of a tombstone is a conflict", res: m, cur: tomb(), op: patchOp(at(50), 1, other, set("a", 1.0)), outcome: Conflict},
		{name: "concurrent delete of a tombstone agrees", res: m, cur: tomb(), op: delOp(at(50), 1, other), outcome: Merged,
			want: Doc{Deleted: true, DeletedAt: at(50), Version: 4, LastDevice: other}},
		{name: "non-concurrent patch applies as lww", res: m, cur: live(), op: patchOp(at(11), 3, other, set("a", 2.0, "b", "old")), outcome: Merged,
			want: liveWith(other, obj{"a": 2.0}, clocks{"a": at(11)})},
		{name: "own offline edits apply", res: m, cur: live(), op: patchOp(at(30), 1, me, set("c", 1.0)), outcome: Applied,
			want: liveWith(me, obj{"c": 1.0}, clocks{"c": at(30)})},
		{name: "non-concurrent delete applies", res: m, cur: live(), op: delOp(at(30), 3, other), outcome: Applied,
			want: Doc{Deleted: true, DeletedAt: at(30), Version: 3, LastDevice: other}},
		{name: "new document", res: m, op: putOp(at(5), 0, other, obj{"a": 1.0}), outcome: Applied,
			want: Doc{Fields: obj{"a": 1.0}, Clocks: clocks{"a": at(5), DocClock: at(5)}, LastDevice: other}},
		{name: "a resolving put applies as sent", res: m, cur: live(), op: forced(putOp(at(5), 1, other, obj{"a": 7.0})), outcome: Merged,
			want: by(other, obj{"a": 7.0}, clocks{"a": at(10), "b": at(20), "tags": at(10), "n": at(10), DocClock: at(5)})},
		{name: "a resolving delete applies", res: m, cur: live(), op: forced(delOp(at(5), 1, other)), outcome: Merged,
			want: Doc{Deleted: true, DeletedAt: at(5), Version: 3, LastDevice: other}},
		{name: "a resolving put restores a tombstone", res: m, cur: tomb(), op: forced(putOp(at(5), 4, other, obj{"a": 7.0})), outcome: Applied,
			want: Doc{Fields: obj{"a": 7.0}, Clocks: clocks{"a": at(5), DocClock: at(5)}, Version: 4, LastDevice: other}},
	})
}

// Force applies as client-wins under every mode and delete policy, with
// every field rule.
func TestForceIsClientWinsEverywhere(t *testing.T) {
	fields := map[string]FieldRule{"p": RuleMax, "m": RuleMin, "n": RuleCounter, "s": RuleUnion}
	cur := func() *Doc {
		return doc(obj{"a": 1.0, "p": 5.0, "m": 1.0, "n": 10.0, "s": arr{"x", "y"}},
			clocks{"a": at(20), "p": at(20), "m": at(20), "n": at(20), uAdd(`"x"`): at(20), uAdd(`"y"`): at(20), uExist: at(20)})
	}
	ops := []Op{
		patchOp(at(5), 1, other, set("a", 2.0, "p", 1.0, "m", 9.0, "n", 3.0, "s", arr{"z", "x"})),
		patchOp(at(5), 1, other, unset("a", "p", "m", "n", "s")),
		patchOp(at(5), 1, other, PatchOps{Add: map[string][]any{"s": {"w"}}, Remove: map[string][]any{"s": {"x"}}, Inc: map[string]float64{"n": 1}}),
		putOp(at(5), 1, other, obj{"p": 2.0, "s": arr{"y"}}),
		putOp(at(5), 1, other, obj{}),
		delOp(at(5), 1, other),
	}
	wantFields := []obj{
		{"a": 2.0, "p": 1.0, "m": 9.0, "n": 3.0, "s": arr{"x", "z"}},
		{},
		{"a": 1.0, "p": 5.0, "m": 1.0, "n": 11.0, "s": arr{"w", "y"}}, // w first added at 5, y at 20
		{"p": 2.0, "s": arr{"y"}},
		{},
		nil,
	}
	policies := []Policy{
		{Fields: fields}, {Fields: fields, Deletes: UpdateWins},
		{Mode: ModeServerWins, Fields: fields}, {Mode: ModeManual, Fields: fields}, {Mode: ModeClientWins, Fields: fields},
	}
	for i, op := range ops {
		for _, p := range policies {
			t.Run(fmt.Sprintf("op%d/%s/%s", i, modeName(p.Mode), p.Deletes), func(t *testing.T) {
				res, err := p.Resolve(cur(), forced(op))
				if err != nil || res.Outcome != Merged {
					t.Fatalf("Resolve = %+v, %v", res, err)
				}
				if op.Kind == Delete {
					if !res.Doc.Deleted {
						t.Fatal("forced delete did not delete")
					}
					return
				}
				if got := fmt.Sprint(res.Doc.Fields); got != fmt.Sprint(wantFields[i]) {
					t.Errorf("fields %s, want %s", got, wantFields[i])
				}
				cw, _ := Policy{Mode: ModeClientWins, Fields: fields}.Resolve(cur(), op)
				if fmt.Sprint(cw.Doc) != fmt.Sprint(res.Doc) {
					t.Errorf("forced %v differs from client-wins %v", res.Doc, cw.Doc)
				}
				// Every clock only moved forward.
				for k, c := range cur().Clocks {
					if nc, ok := res.Doc.Clocks[k]; ok && c.After(nc) {
						t.Errorf("clock %s went back from %s to %s", k, c, nc)
					}
				}
			})
		}
	}
	// A forced op still has to be well-formed.
	if res, _ := (Policy{Fields: fields}).Resolve(cur(), forced(patchOp(at(5), 1, other, set("p", "high")))); res.Outcome != Rejected {
		t.Errorf("forced non-number on a max field = %s, want rejected", res.Outcome)
	}
}

// The delete matrix of docs/conflicts.md and doc.go, row by row.
func TestDeleteMatrix(t *testing.T) {
	type row struct {
		policy      Policy
		updTomb     Outcome // concurrent update meets a tombstone
		updTombLive bool    // ... and the document is live afterwards
		delLive     Outcome // concurrent delete meets a live document
		delLiveGone bool    // ... and the document is deleted afterwards
	}
	for _, r := range []row{
		{Policy{}, Merged, false, Merged, true},
		{Policy{Deletes: UpdateWins}, Merged, true, Merged, false},
		{Policy{Mode: ModeServerWins}, Merged, false, Merged, false},
		{Policy{Mode: ModeClientWins}, Merged, true, Merged, true},
		{Policy{Mode: ModeManual}, Conflict, false, Conflict, false},
	} {
		name := modeName(r.policy.Mode) + "/" + string(r.policy.Deletes)
		res, _ := r.policy.Resolve(tomb(), patchOp(at(50), 1, other, set("a", 1.0)))
		if res.Outcome != r.updTomb || (res.Outcome != Conflict && res.Doc.Deleted == r.updTombLive) {
			t.Errorf("%s: update vs tombstone = %s deleted=%v", name, res.Outcome, res.Doc.Deleted)
		}
		res, _ = r.policy.Resolve(live(), delOp(at(50), 1, other))
		if res.Outcome != r.delLive || (res.Outcome != Conflict && res.Doc.Deleted != r.delLiveGone) {
			t.Errorf("%s: delete vs live = %s deleted=%v", name, res.Outcome, res.Doc.Deleted)
		}
		// Delete meets tombstone: nothing to commit; DeletedAt is the later one.
		res, _ = r.policy.Resolve(tomb(), delOp(at(50), 1, other))
		if res.Outcome != Merged || !res.Doc.Deleted {
			t.Errorf("%s: delete vs tombstone = %+v", name, res)
		}
		if r.policy.Mode != ModeServerWins && res.Doc.DeletedAt != at(50) {
			t.Errorf("%s: delete vs tombstone DeletedAt = %v", name, res.Doc.DeletedAt)
		}
		// Force: resurrects, applies, keeps the tombstone.
		res, _ = r.policy.Resolve(tomb(), forced(patchOp(at(50), 1, other, set("a", 1.0))))
		if res.Outcome != Merged || res.Doc.Deleted || res.Doc.Fields["a"] != 1.0 {
			t.Errorf("%s: forced update vs tombstone = %+v", name, res)
		}
		res, _ = r.policy.Resolve(live(), forced(delOp(at(5), 1, other)))
		if res.Outcome != Merged || !res.Doc.Deleted {
			t.Errorf("%s: forced delete vs live = %+v", name, res)
		}
		res, _ = r.policy.Resolve(tomb(), forced(delOp(at(5), 1, other)))
		if !res.Doc.Deleted || res.Doc.DeletedAt != at(40) {
			t.Errorf("%s: forced delete vs tombstone = %+v", name, res)
		}
		// Not concurrent: every policy recreates, and deletes.
		res, _ = r.policy.Resolve(tomb(), patchOp(at(50), 4, other, set("a", 1.0)))
		if res.Outcome != Applied || res.Doc.Deleted {
			t.Errorf("%s: recreate = %s deleted=%v", name, res.Outcome, res.Doc.Deleted)
		}
		res, _ = r.policy.Resolve(live(), delOp(at(50), 3, other))
		if res.Outcome != Applied || !res.Doc.Deleted {
			t.Errorf("%s: delete = %s deleted=%v", name, res.Outcome, res.Doc.Deleted)
		}
	}
}
