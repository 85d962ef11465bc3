package conflict

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/syncgate/syncgate/sync/hlc"
)

const (
	me    = "alice/phone"
	other = "bob/laptop"
)

// at is an HLC at wall millisecond w. Tests that need logical or node
// tie-breaks build timestamps by hand.
func at(w int64) hlc.Timestamp { return hlc.Timestamp{Wall: w, Node: "n"} }

func putOp(t hlc.Timestamp, base uint64, dev string, fields map[string]any) Op {
	return Op{Kind: Put, Put: fields, Base: base, HLC: t, Device: dev}
}

func patchOp(t hlc.Timestamp, base uint64, dev string, p PatchOps) Op {
	return Op{Kind: Patch, Patch: p, Base: base, HLC: t, Device: dev}
}

func delOp(t hlc.Timestamp, base uint64, dev string) Op {
	return Op{Kind: Delete, Base: base, HLC: t, Device: dev}
}

type clocks = map[string]hlc.Timestamp
type obj = map[string]any
type arr = []any

// live is a document at version 3, last changed by me. Ops from other with
// base 3 are not concurrent; with base 1 they are.
func live() *Doc {
	return &Doc{
		Fields:  obj{"a": 1.0, "b": "x", "tags": arr{"red", "blue"}, "n": 2.0},
		Clocks:  clocks{"a": at(10), "b": at(20), "tags": at(10), "n": at(10)},
		Version: 3, LastDevice: me,
	}
}

// liveWith is live() after the given field changes (nil value: removed),
// as last changed by dev.
func liveWith(dev string, fields obj, cl clocks) Doc {
	d := *live()
	for k, v := range fields {
		if v == nil {
			delete(d.Fields, k)
		} else {
			d.Fields[k] = v
		}
	}
	for k, c := range cl {
		d.Clocks[k] = c
	}
	d.LastDevice = dev
	return d
}

// tomb is a tombstone at version 4, deleted by me at 40.
func tomb() *Doc { return &Doc{Deleted: true, DeletedAt: at(40), Version: 4, LastDevice: me} }

// one is a live document holding a single field.
func one(f string, v any, c hlc.Timestamp) *Doc {
	return &Doc{Fields: obj{f: v}, Clocks: clocks{f: c}, Version: 3, LastDevice: me}
}

// snapshot renders a document and an op completely (fmt sorts map keys), to
// prove a resolver left its inputs alone.
func snapshot(cur *Doc, op Op) string {
	if cur == nil {
		return fmt.Sprintf("nil|%#v", op)
	}
	return fmt.Sprintf("%#v|%#v", *cur, op)
}

type lwwCase struct {
	name    string
	policy  DeletePolicy
	cur     *Doc
	op      Op
	outcome Outcome
	want    Doc // for Applied and Merged
}

func runLWWCases(t *testing.T, cases []lwwCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshot(tc.cur, tc.op)
			res, err := LWW{Delete: tc.policy}.Resolve(tc.cur, tc.op)
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if after := snapshot(tc.cur, tc.op); after != before {
				t.Errorf("inputs mutated:\nbefore %s\nafter  %s", before, after)
			}
			if res.Outcome != tc.outcome {
				t.Fatalf("outcome %q (%s), want %q", res.Outcome, res.Reason, tc.outcome)
			}
			if tc.outcome == Rejected {
				if res.Code != CodeBadOp || res.Reason == "" {
					t.Errorf("rejection code %q reason %q, want bad_op with a reason", res.Code, res.Reason)
				}
				return
			}
			if !reflect.DeepEqual(res.Doc, tc.want) {
				t.Errorf("doc\n got %#v\nwant %#v", res.Doc, tc.want)
			}
		})
	}
}

func TestLWWPutAndSet(t *testing.T) {
	floor30 := &Doc{Fields: obj{"a": 1.0}, Clocks: clocks{"a": at(30), DocClock: at(30)}, Version: 3, LastDevice: me}
	runLWWCases(t, []lwwCase{{
		name:    "put creates",
		op:      putOp(at(5), 0, other, obj{"a": 1.0, "o": obj{"k": arr{1.0}}}),
		outcome: Applied,
		want: Doc{Fields: obj{"a": 1.0, "o": obj{"k": arr{1.0}}},
			Clocks: clocks{"a": at(5), "o": at(5), DocClock: at(5)}, LastDevice: other},
	}, {
		name: "patch creates",
		op: patchOp(at(5), 0, other, PatchOps{Set: obj{"a": 1.0}, Unset: []string{"gone"},
			Inc: map[string]float64{"n": 2}, Add: map[string][]any{"tags": {"x"}}}),
		outcome: Applied,
		want: Doc{Fields: obj{"a": 1.0, "n": 2.0, "tags": arr{"x"}},
			Clocks: clocks{"a": at(5), "gone": at(5), "n": at(5), "tags": at(5)}, LastDevice: other},
	}, {
		name:    "put replaces every field",
		cur:     live(),
		op:      putOp(at(30), 3, other, obj{"a": 2.0, "c": true}),
		outcome: Applied,
		// The unset fields' clocks are dropped: DocClock says the same.
		want: Doc{Fields: obj{"a": 2.0, "c": true}, Clocks: clocks{"a": at(30), "c": at(30), DocClock: at(30)},
			Version: 3, LastDevice: other},
	}, {
		name:    "concurrent put keeps a newer field",
		cur:     live(),
		op:      putOp(at(15), 1, other, obj{"a": 2.0}),
		outcome: Merged,
		want: Doc{Fields: obj{"a": 2.0, "b": "x"}, Clocks: clocks{"a": at(15), "b": at(20), DocClock: at(15)},
			Version: 3, LastDevice: other},
	}, {
		name:    "put older than the last put changes nothing",
		cur:     floor30,
		op:      putOp(at(25), 3, other, obj{"a": 2.0, "z": 1.0}),
		outcome: Merged,
		want:    Doc{Fields: obj{"a": 1.0}, Clocks: clocks{"a": at(30), DocClock: at(30)}, Version: 3, LastDevice: other},
	}, {
		name:    "put clock beats an older set of a field the put never saw",
		cur:     floor30,
		op:      patchOp(at(25), 3, other, PatchOps{Set: obj{"z": 1.0}}),
		outcome: Merged,
		want:    Doc{Fields: obj{"a": 1.0}, Clocks: clocks{"a": at(30), DocClock: at(30)}, Version: 3, LastDevice: other},
	}, {
		name:    "set newer than the put applies",
		cur:     floor30,
		op:      patchOp(at(35), 3, other, PatchOps{Set: obj{"z": 1.0}}),
		outcome: Applied,
		want: Doc{Fields: obj{"a": 1.0, "z": 1.0}, Clocks: clocks{"a": at(30), "z": at(35), DocClock: at(30)},
			Version: 3, LastDevice: other},
	}, {
		name:    "newer set wins",
		cur:     live(),
		op:      patchOp(at(11), 3, other, PatchOps{Set: obj{"a": 9.0}}),
		outcome: Applied,
		want:    liveWith(other, obj{"a": 9.0}, clocks{"a": at(11)}),
	}, {
		name:    "older set loses, the rest applies",
		cur:     live(),
		op:      patchOp(at(9), 3, other, PatchOps{Set: obj{"a": 9.0, "c": 1.0}}),
		outcome: Merged,
		want:    liveWith(other, obj{"c": 1.0}, clocks{"c": at(9)}),
	}, {
		name:    "concurrent set that wins is merged",
		cur:     live(),
		op:      patchOp(at(30), 1, other, PatchOps{Set: obj{"c": 1.0}}),
		outcome: Merged,
		want:    liveWith(other, obj{"c": 1.0}, clocks{"c": at(30)}),
	}, {
		name:    "own offline edit with an old base is not concurrent",
		cur:     live(),
		op:      patchOp(at(30), 1, me, PatchOps{Set: obj{"c": 1.0}}),
		outcome: Applied,
		want:    liveWith(me, obj{"c": 1.0}, clocks{"c": at(30)}),
	}, {
		name:    "unset records its clock",
		cur:     live(),
		op:      patchOp(at(11), 3, other, PatchOps{Unset: []string{"a"}}),
		outcome: Applied,
		want:    liveWith(other, obj{"a": nil}, clocks{"a": at(11)}),
	}, {
		name:    "older set cannot resurrect an unset field",
		cur:     &Doc{Fields: obj{"b": "x"}, Clocks: clocks{"a": at(15), "b": at(20)}, Version: 3, LastDevice: me},
		op:      patchOp(at(12), 1, other, PatchOps{Set: obj{"a": 1.0}}),
		outcome: Merged,
		want:    Doc{Fields: obj{"b": "x"}, Clocks: clocks{"a": at(15), "b": at(20)}, Version: 3, LastDevice: other},
	}, {
		name:    "older unset loses to a newer set",
		cur:     live(),
		op:      patchOp(at(5), 3, other, PatchOps{Unset: []string{"a"}}),
		outcome: Merged,
		want:    liveWith(other, nil, nil),
	}})
}

func TestLWWTieBreaks(t *testing.T) {
	held := hlc.Timestamp{Wall: 10, Logical: 2, Node: "m"}
	cur := func() *Doc { return one("a", 1.0, held) }
	set := func(ts hlc.Timestamp) Op { return patchOp(ts, 3, other, PatchOps{Set: obj{"a": 2.0}}) }
	won := func(ts hlc.Timestamp) Doc {
		return Doc{Fields: obj{"a": 2.0}, Clocks: clocks{"a": ts}, Version: 3, LastDevice: other}
	}
	lost := Doc{Fields: obj{"a": 1.0}, Clocks: clocks{"a": held}, Version: 3, LastDevice: other}
	higherLogical := hlc.Timestamp{Wall: 10, Logical: 3, Node: "a"}
	higherNode := hlc.Timestamp{Wall: 10, Logical: 2, Node: "n"}
	runLWWCases(t, []lwwCase{
		{name: "equal wall: higher logical wins", cur: cur(), op: set(higherLogical), outcome: Applied, want: won(higherLogical)},
		{name: "equal wall: lower logical loses", cur: cur(), op: set(hlc.Timestamp{Wall: 10, Logical: 1, Node: "z"}), outcome: Merged, want: lost},
		{name: "equal wall and logical: higher node wins", cur: cur(), op: set(higherNode), outcome: Applied, want: won(higherNode)},
		{name: "equal wall and logical: lower node loses", cur: cur(), op: set(hlc.Timestamp{Wall: 10, Logical: 2, Node: "l"}), outcome: Merged, want: lost},
		{name: "identical clock does not apply twice", cur: cur(), op: set(held), outcome: Merged, want: lost},
	})
}

func TestLWWInc(t *testing.T) {
	runLWWCases(t, []lwwCase{{
		name:    "inc adds to a number",
		cur:     live(),
		op:      patchOp(at(11), 3, other, PatchOps{Inc: map[string]float64{"n": 2.5}}),
		outcome: Applied,
		want:    liveWith(other, obj{"n": 4.5}, clocks{"n": at(11)}),
	}, {
		name:    "inc on a missing field starts from zero",
		cur:     live(),
		op:      patchOp(at(11), 3, other, PatchOps{Inc: map[string]float64{"c": 3}}),
		outcome: Applied,
		want:    liveWith(other, obj{"c": 3.0}, clocks{"c": at(11)}),
	}, {
		name:    "older inc still applies and keeps the newer clock",
		cur:     live(),
		op:      patchOp(at(5), 3, other, PatchOps{Inc: map[string]float64{"n": 1}}),
		outcome: Applied,
		want:    liveWith(other, obj{"n": 3.0}, nil),
	}, {
		name:    "integers stay integers",
		cur:     one("n", int64(5), at(1)),
		op:      patchOp(at(2), 3, other, PatchOps{Inc: map[string]float64{"n": 1}}),
		outcome: Applied,
		want:    Doc{Fields: obj{"n": int64(6)}, Clocks: clocks{"n": at(2)}, Version: 3, LastDevice: other},
	}, {
		name:    "int32 becomes int64",
		cur:     one("n", int32(5), at(1)),
		op:      patchOp(at(2), 3, other, PatchOps{Inc: map[string]float64{"n": -2}}),
		outcome: Applied,
		want:    Doc{Fields: obj{"n": int64(3)}, Clocks: clocks{"n": at(2)}, Version: 3, LastDevice: other},
	}, {
		name:    "json.Number",
		cur:     one("n", json.Number("7"), at(1)),
		op:      patchOp(at(2), 3, other, PatchOps{Inc: map[string]float64{"n": 1}}),
		outcome: Applied,
		want:    Doc{Fields: obj{"n": int64(8)}, Clocks: clocks{"n": at(2)}, Version: 3, LastDevice: other},
	}, {
		name:    "fractional delta makes a float",
		cur:     one("n", int64(5), at(1)),
		op:      patchOp(at(2), 3, other, PatchOps{Inc: map[string]float64{"n": 0.5}}),
		outcome: Applied,
		want:    Doc{Fields: obj{"n": 5.5}, Clocks: clocks{"n": at(2)}, Version: 3, LastDevice: other},
	}, {
		name:    "int64 overflow falls back to float",
		cur:     one("n", int64(math.MaxInt64), at(1)),
		op:      patchOp(at(2), 3, other, PatchOps{Inc: map[string]float64{"n": 1}}),
		outcome: Applied,
		want:    Doc{Fields: obj{"n": float64(math.MaxInt64) + 1}, Clocks: clocks{"n": at(2)}, Version: 3, LastDevice: other},
	}, {
		name:    "inc on a string is rejected",
		cur:     live(),
		op:      patchOp(at(11), 3, other, PatchOps{Inc: map[string]float64{"b": 1}}),
		outcome: Rejected,
	}, {
		name:    "inc on a bool is rejected",
		cur:     one("n", true, at(1)),
		op:      patchOp(at(2), 3, other, PatchOps{Inc: map[string]float64{"n": 1}}),
		outcome: Rejected,
	}, {
		name:    "inc on null is rejected",
		cur:     one("n", nil, at(1)),
		op:      patchOp(at(2), 3, other, PatchOps{Inc: map[string]float64{"n": 1}}),
		outcome: Rejected,
	}, {
		name:    "inc on an array is rejected",
		cur:     live(),
		op:      patchOp(at(11), 3, other, PatchOps{Inc: map[string]float64{"tags": 1}}),
		outcome: Rejected,
	}, {
		name:    "inc that overflows float64 is rejected",
		cur:     one("n", math.MaxFloat64, at(1)),
		op:      patchOp(at(2), 3, other, PatchOps{Inc: map[string]float64{"n": math.MaxFloat64}}),
		outcome: Rejected,
	}, {
		name:    "inc by NaN is rejected",
		cur:     live(),
		op:      patchOp(at(11), 3, other, PatchOps{Inc: map[string]float64{"n": math.NaN()}}),
		outcome: Rejected,
	}})
}

func TestLWWAddRemove(t *testing.T) {
	add := func(f string, es ...any) PatchOps { return PatchOps{Add: map[string][]any{f: es}} }
	remove := func(f string, es ...any) PatchOps { return PatchOps{Remove: map[string][]any{f: es}} }
	set := func(v any) *Doc { return one("s", v, at(1)) }
	result := func(v any) Doc {
		return Doc{Fields: obj{"s": v}, Clocks: clocks{"s": at(2)}, Version: 3, LastDevice: other}
	}
	runLWWCases(t, []lwwCase{{
		name:    "add skips present and repeated elements",
		cur:     live(),
		op:      patchOp(at(11), 3, other, add("tags", "blue", "green", "green")),
		outcome: Applied,
		want:    liveWith(other, obj{"tags": arr{"red", "blue", "green"}}, clocks{"tags": at(11)}),
	}, {
		name: "add compares objects by JSON value",
		cur:  set(arr{obj{"id": 1.0, "x": "y"}}),
		op: patchOp(at(2), 3, other, add("s",
			map[string]any{"x": "y", "id": 1}, // same as the element held: int vs float, key order
			obj{"id": 2.0})),
		outcome: Applied,
		want:    result(arr{obj{"id": 1.0, "x": "y"}, obj{"id": 2.0}}),
	}, {
		name:    "remove drops every occurrence, objects by value",
		cur:     set(arr{1.0, 1.0, 2.0, obj{"id": 1.0}}),
		op:      patchOp(at(2), 3, other, remove("s", 1.0, obj{"id": int64(1)})),
		outcome: Applied,
		want:    result(arr{2.0}),
	}, {
		name:    "remove of an absent element changes only the clock",
		cur:     live(),
		op:      patchOp(at(11), 3, other, remove("tags", "nope")),
		outcome: Applied,
		want:    liveWith(other, nil, clocks{"tags": at(11)}),
	}, {
		name:    "add leaves existing duplicates alone",
		cur:     set(arr{1.0, 1.0}),
		op:      patchOp(at(2), 3, other, add("s", 2.0)),
		outcome: Applied,
		want:    result(arr{1.0, 1.0, 2.0}),
	}, {
		name:    "add to a missing field",
		cur:     live(),
		op:      patchOp(at(11), 3, other, add("s", "x")),
		outcome: Applied,
		want:    liveWith(other, obj{"s": arr{"x"}}, clocks{"s": at(11)}),
	}, {
		name:    "remove from a missing field leaves an empty set",
		cur:     live(),
		op:      patchOp(at(11), 3, other, remove("s", "x")),
		outcome: Applied,
		want:    liveWith(other, obj{"s": arr{}}, clocks{"s": at(11)}),
	}, {
		name: "remove then add of the same element keeps it",
		cur:  live(),
		op: patchOp(at(11), 3, other, PatchOps{
			Add: map[string][]any{"tags": {"red"}}, Remove: map[string][]any{"tags": {"red"}}}),
		outcome: Applied,
		want:    liveWith(other, obj{"tags": arr{"blue", "red"}}, clocks{"tags": at(11)}),
	}, {
		name:    "older add still applies and keeps the newer clock",
		cur:     live(),
		op:      patchOp(at(5), 3, other, add("tags", "green")),
		outcome: Applied,
		want:    liveWith(other, obj{"tags": arr{"red", "blue", "green"}}, nil),
	}, {
		name:    "typed slices are arrays",
		cur:     set([]string{"a"}),
		op:      patchOp(at(2), 3, other, add("s", "a", "b")),
		outcome: Applied,
		want:    result(arr{"a", "b"}),
	}, {
		name:    "add on a string is rejected",
		cur:     live(),
		op:      patchOp(at(11), 3, other, add("b", "x")),
		outcome: Rejected,
	}, {
		name:    "remove on an object is rejected",
		cur:     set(obj{"k": 1.0}),
		op:      patchOp(at(2), 3, other, remove("s", "k")),
		outcome: Rejected,
	}, {
		name:    "add on binary data is rejected",
		cur:     set([]byte("xy")),
		op:      patchOp(at(2), 3, other, add("s", "x")),
		outcome: Rejected,
	}})
}

func TestLWWDelete(t *testing.T) {
	tombBy := func(dev string, when hlc.Timestamp, version uint64) Doc {
		return Doc{Deleted: true, DeletedAt: when, Version: version, LastDevice: dev}
	}
	setA := PatchOps{Set: obj{"a": 1.0}}
	runLWWCases(t, []lwwCase{{
		name:    "delete tombstones",
		cur:     live(),
		op:      delOp(at(30), 3, other),
		outcome: Applied,
		want:    tombBy(other, at(30), 3),
	}, {
		name:    "delete of a document that never existed",
		op:      delOp(at(30), 0, other),
		outcome: Applied,
		want:    tombBy(other, at(30), 0),
	}, {
		name:    "delete-wins: a concurrent delete applies",
		cur:     live(),
		op:      delOp(at(5), 1, other),
		outcome: Merged,
		want:    tombBy(other, at(5), 3),
	}, {
		name:    "deleting a tombstone keeps the later time",
		cur:     tomb(),
		op:      delOp(at(30), 4, other),
		outcome: Applied,
		want:    tombBy(other, at(40), 4),
	}, {
		name:    "delete-wins: a concurrent patch does not resurrect",
		cur:     tomb(),
		op:      patchOp(at(50), 3, other, setA),
		outcome: Merged,
		want:    *tomb(), // unchanged, LastDevice too
	}, {
		name:    "delete-wins: a concurrent put does not resurrect",
		cur:     tomb(),
		op:      putOp(at(50), 1, other, obj{"a": 1.0}),
		outcome: Merged,
		want:    *tomb(),
	}, {
		name:    "delete-wins: a put after seeing the delete recreates, whatever its clock",
		cur:     tomb(),
		op:      putOp(at(30), 4, other, obj{"a": 1.0}),
		outcome: Applied,
		want:    Doc{Fields: obj{"a": 1.0}, Clocks: clocks{"a": at(30), DocClock: at(30)}, Version: 4, LastDevice: other},
	}, {
		name:    "delete-wins: own offline edit after own delete recreates",
		cur:     tomb(),
		op:      patchOp(at(50), 2, me, setA),
		outcome: Applied,
		want:    Doc{Fields: obj{"a": 1.0}, Clocks: clocks{"a": at(50)}, Version: 4, LastDevice: me},
	}, {
		name:    "update-wins: a concurrent delete is discarded",
		policy:  UpdateWins,
		cur:     live(),
		op:      delOp(at(30), 1, other),
		outcome: Merged,
		want:    *live(), // unchanged, LastDevice too
	}, {
		name:    "update-wins: a delete after seeing the update applies",
		policy:  UpdateWins,
		cur:     live(),
		op:      delOp(at(30), 3, other),
		outcome: Applied,
		want:    tombBy(other, at(30), 3),
	}, {
		name:    "update-wins: a concurrent patch resurrects from empty",
		policy:  UpdateWins,
		cur:     tomb(),
		op:      patchOp(at(30), 3, other, PatchOps{Set: obj{"a": 1.0}, Inc: map[string]float64{"n": 1}}),
		outcome: Merged,
		want:    Doc{Fields: obj{"a": 1.0, "n": 1.0}, Clocks: clocks{"a": at(30), "n": at(30)}, Version: 4, LastDevice: other},
	}, {
		name:    "update-wins: a concurrent put resurrects",
		policy:  UpdateWins,
		cur:     tomb(),
		op:      putOp(at(30), 1, other, obj{"a": 1.0}),
		outcome: Merged,
		want:    Doc{Fields: obj{"a": 1.0}, Clocks: clocks{"a": at(30), DocClock: at(30)}, Version: 4, LastDevice: other},
	}, {
		name:    "update-wins: a concurrent delete of a tombstone keeps it deleted",
		policy:  UpdateWins,
		cur:     tomb(),
		op:      delOp(at(50), 3, other),
		outcome: Merged,
		want:    tombBy(other, at(50), 4),
	}})
}

func TestLWWRejectsMalformedOps(t *testing.T) {
	runLWWCases(t, []lwwCase{
		{name: "no hlc", cur: live(), op: putOp(hlc.Timestamp{}, 3, other, obj{}), outcome: Rejected},
		{name: "unknown kind", cur: live(), op: Op{Kind: "merge", HLC: at(30), Base: 3, Device: other}, outcome: Rejected},
		{name: "put names the doc clock", op: putOp(at(30), 0, other, obj{DocClock: 1.0}), outcome: Rejected},
		{name: "set names the doc clock", cur: live(), op: patchOp(at(30), 3, other, PatchOps{Set: obj{DocClock: 1.0}}), outcome: Rejected},
		{name: "unset names the doc clock", cur: live(), op: patchOp(at(30), 3, other, PatchOps{Unset: []string{DocClock}}), outcome: Rejected},
		{name: "put names a dotted field", op: putOp(at(30), 0, other, obj{"s.+x": 1.0}), outcome: Rejected},
		{name: "add names a dotted field", cur: live(), op: patchOp(at(30), 3, other, PatchOps{Add: map[string][]any{"s.=": {1.0}}}), outcome: Rejected},
		{name: "set and inc of one field", cur: live(), op: patchOp(at(30), 3, other,
			PatchOps{Set: obj{"n": 1.0}, Inc: map[string]float64{"n": 1}}), outcome: Rejected},
		{name: "set and unset of one field", cur: live(), op: patchOp(at(30), 3, other,
			PatchOps{Set: obj{"a": 1.0}, Unset: []string{"a"}}), outcome: Rejected},
		{name: "inc and add of one field", cur: live(), op: patchOp(at(30), 3, other,
			PatchOps{Inc: map[string]float64{"tags": 1}, Add: map[string][]any{"tags": {"x"}}}), outcome: Rejected},
		// A malformed op is rejected even where it would have been discarded.
		{name: "bad op against a tombstone", cur: tomb(), op: patchOp(hlc.Timestamp{}, 1, other, PatchOps{Set: obj{"a": 1.0}}), outcome: Rejected},
	})
}

func TestLWWRejectionReasonIsDeterministic(t *testing.T) {
	op := patchOp(at(30), 3, other, PatchOps{Inc: map[string]float64{"b": 1, "tags": 1, "a2": 1}})
	cur := live()
	cur.Fields["a2"] = "s"
	first, _ := LWW{}.Resolve(cur, op)
	for range 50 {
		if again, _ := (LWW{}).Resolve(cur, op); again.Reason != first.Reason {
			t.Fatalf("reason changed: %q then %q", first.Reason, again.Reason)
		}
	}
	if !strings.Contains(first.Reason, `"a2"`) {
		t.Errorf("reason %q should name the first bad field in order, a2", first.Reason)
	}
}

func TestLWWUnknownPolicyIsAnError(t *testing.T) {
	_, err := LWW{Delete: "last-one-wins"}.Resolve(nil, putOp(at(1), 0, other, obj{}))
	if err == nil || !strings.HasPrefix(err.Error(), "conflict: ") || !strings.Contains(err.Error(), "last-one-wins") {
		t.Fatalf("err = %v, want a conflict: error naming the policy", err)
	}
	if _, err := ParseDeletePolicy("sometimes"); err == nil || !strings.HasPrefix(err.Error(), "conflict: ") {
		t.Fatalf("ParseDeletePolicy err = %v", err)
	}
	for in, want := range map[string]DeletePolicy{"": DeleteWins, "delete-wins": DeleteWins, "update-wins": UpdateWins} {
		if got, err := ParseDeletePolicy(in); err != nil || got != want {
			t.Errorf("ParseDeletePolicy(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestConcurrent(t *testing.T) {
	cur := &Doc{Version: 5, LastDevice: me}
	for _, tc := range []struct {
		name string
		cur  *Doc
		base uint64
		dev  string
		want bool
	}{
		{"no document", nil, 0, other, false},
		{"saw the current version", cur, 5, other, false},
		{"base ahead (replay after a lost ack)", cur, 6, other, false},
		{"missed a version from another device", cur, 4, other, true},
		{"own earlier edits", cur, 1, me, false},
	} {
		if got := Concurrent(tc.cur, Op{Base: tc.base, Device: tc.dev}); got != tc.want {
			t.Errorf("%s: Concurrent = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// The result must share no map or slice with the inputs: the engine keeps
// cur as the previous state, and callers reuse decoded op maps.
func TestLWWResultSharesNothingWithInputs(t *testing.T) {
	cur := &Doc{
		Fields:  obj{"o": obj{"k": arr{1.0}}, "tags": arr{"a"}, "keep": arr{obj{"x": 1.0}}},
		Clocks:  clocks{"o": at(1), "tags": at(1), "keep": at(1)},
		Version: 1, LastDevice: me,
	}
	val := obj{"deep": arr{obj{"z": 1.0}}}
	elem := obj{"e": 1.0}
	op := patchOp(at(5), 1, me, PatchOps{Set: obj{"v": val}, Add: map[string][]any{"tags": {elem}}})
	before := snapshot(cur, op)

	res, err := LWW{}.Resolve(cur, op)
	if err != nil || res.Outcome != Applied {
		t.Fatalf("Resolve = %+v, %v", res, err)
	}
	// Scribble over everything the result holds...
	res.Doc.Fields["o"].(obj)["k"].([]any)[0] = "changed"
	res.Doc.Fields["keep"].([]any)[0].(obj)["x"] = "changed"
	res.Doc.Fields["v"].(obj)["deep"].([]any)[0].(obj)["z"] = "changed"
	res.Doc.Fields["tags"].([]any)[1].(obj)["e"] = "changed"
	res.Doc.Clocks["o"] = at(99)
	// ...and the inputs are untouched.
	if after := snapshot(cur, op); after != before {
		t.Fatalf("inputs changed through the result:\nbefore %s\nafter  %s", before, after)
	}

	// The other way round: reusing the op's maps must not change a result.
	res, _ = LWW{}.Resolve(cur, op)
	want := fmt.Sprintf("%#v", res.Doc)
	val["deep"].([]any)[0].(obj)["z"] = "reused"
	elem["e"] = "reused"
	cur.Fields["o"].(obj)["k"].([]any)[0] = "reused"
	if got := fmt.Sprintf("%#v", res.Doc); got != want {
		t.Fatalf("result changed through the inputs:\nbefore %s\nafter  %s", want, got)
	}
}

// Discarded ops return a copy of cur, not cur itself.
func TestLWWDiscardedResultIsACopy(t *testing.T) {
	cur := live()
	res, _ := LWW{Delete: UpdateWins}.Resolve(cur, delOp(at(30), 1, other))
	res.Doc.Fields["tags"].([]any)[0] = "changed"
	res.Doc.Clocks["a"] = at(99)
	if !reflect.DeepEqual(cur, live()) {
		t.Fatalf("cur changed through a discarded result: %#v", cur)
	}
}

// A device that edited offline while another deleted the document must not
// bring it back with its second queued edit: the discarded first edit
// leaves LastDevice alone, so the second is still concurrent.
func TestLWWDeleteWinsAgainstAQueueOfOfflineEdits(t *testing.T) {
	var cur *Doc
	commit := func(op Op) Result {
		t.Helper()
		res, err := LWW{}.Resolve(cur, op)
		if err != nil || res.Outcome == Rejected {
			t.Fatalf("Resolve = %+v, %v", res, err)
		}
		next := res.Doc
		next.Version = versionOf(cur) + 1 // as the engine does
		cur = &next
		return res
	}
	commit(putOp(at(1), 0, me, obj{"title": "milk"}))                     // v1 by me
	commit(delOp(at(5), 1, other))                                        // v2: other deletes
	r1 := commit(patchOp(at(3), 1, me, PatchOps{Set: obj{"done": true}})) // my queued edits,
	r2 := commit(patchOp(at(4), 1, me, PatchOps{Set: obj{"title": "x"}})) // made before I saw v2
	if r1.Outcome != Merged || r2.Outcome != Merged || !cur.Deleted {
		t.Fatalf("outcomes %s, %s; deleted %v: queued edits resurrected the document", r1.Outcome, r2.Outcome, cur.Deleted)
	}
	// Having seen the tombstone, the device may recreate it.
	r3 := commit(putOp(at(6), cur.Version, me, obj{"title": "again"}))
	if r3.Outcome != Applied || cur.Deleted || cur.Fields["title"] != "again" {
		t.Fatalf("recreate = %+v", r3)
	}
}

// Increments commute with each other but not with a concurrent overwrite
// of the same field: with one clock per field the resolver cannot tell
// which increments came after the overwrite. This pins the documented
// behaviour; the counter rule is the fix for fields that need both.
func TestLWWIncVersusOverwriteOfTheSameFieldIsOrderDependent(t *testing.T) {
	set := patchOp(at(1), 0, me, PatchOps{Set: obj{"n": 5.0}})
	inc := patchOp(at(2), 0, other, PatchOps{Inc: map[string]float64{"n": 1}})
	run := func(ops ...Op) any {
		var cur *Doc
		for _, op := range ops {
			res, _ := LWW{}.Resolve(cur, op)
			cur = &res.Doc
		}
		return cur.Fields["n"]
	}
	if got := run(set, inc); got != 6.0 {
		t.Errorf("set then inc = %v, want 6", got)
	}
	if got := run(inc, set); got != 1.0 {
		t.Errorf("inc then (older) set = %v, want 1: the set loses to the inc's clock", got)
	}
}

func TestErrorsArePrefixed(t *testing.T) {
	if err := Errorf("x %d", 1); err.Error() != "conflict: x 1" {
		t.Fatal(err)
	}
	if !errors.Is(fmt.Errorf("%w", ErrUnknownResolver), ErrUnknownResolver) {
		t.Fatal("ErrUnknownResolver does not wrap")
	}
}

func BenchmarkLWWResolve(b *testing.B) {
	cur := &Doc{Fields: obj{}, Clocks: clocks{}, Version: 10, LastDevice: me}
	put := obj{}
	for i := range 20 {
		f := fmt.Sprintf("field%02d", i)
		var v any
		switch i % 4 {
		case 0:
			v = float64(i)
		case 1:
			v = fmt.Sprintf("value %d", i)
		case 2:
			v = i%3 == 0
		case 3:
			v = obj{"nested": arr{1.0, "two"}}
		}
		cur.Fields[f], cur.Clocks[f], put[f] = v, at(int64(i+1)), v
	}
	ops := map[string]Op{
		"patch-set-2": patchOp(at(100), 5, other, PatchOps{Set: obj{"field00": 1.0, "field01": "x"}}),
		"patch-inc":   patchOp(at(100), 10, me, PatchOps{Inc: map[string]float64{"field04": 1}}),
		"put-20":      putOp(at(100), 10, other, put),
		"tags-add":    patchOp(at(100), 10, other, PatchOps{Add: map[string][]any{"tags": {"a", "b"}}}),
	}
	for _, name := range []string{"patch-set-2", "patch-inc", "put-20", "tags-add"} {
		op := ops[name]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			r := LWW{}
			for b.Loop() {
				if res, err := r.Resolve(cur, op); err != nil || res.Outcome == Rejected {
					b.Fatalf("%+v %v", res, err)
				}
			}
		})
	}
}
