package conflict

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/syncgate/syncgate/sync/hlc"
)

// rcase is one table-driven resolver case. want is compared exactly for
// Applied and Merged; reason, when set, must appear in a rejection.
type rcase struct {
	name    string
	res     Resolver
	cur     *Doc
	op      Op
	outcome Outcome
	want    Doc
	reason  string
}

func runCases(t *testing.T, cases []rcase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshot(tc.cur, tc.op)
			res, err := tc.res.Resolve(tc.cur, tc.op)
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if after := snapshot(tc.cur, tc.op); after != before {
				t.Errorf("inputs mutated:\nbefore %s\nafter  %s", before, after)
			}
			if res.Outcome != tc.outcome {
				t.Fatalf("outcome %q (%s), want %q", res.Outcome, res.Reason, tc.outcome)
			}
			switch tc.outcome {
			case Rejected:
				if res.Code != CodeBadOp || res.Reason == "" || !strings.Contains(res.Reason, tc.reason) {
					t.Errorf("rejection code %q reason %q, want bad_op mentioning %q", res.Code, res.Reason, tc.reason)
				}
				return
			case Conflict:
				if res.Reason == "" {
					t.Error("a conflict should say why")
				}
				return
			}
			if !reflect.DeepEqual(res.Doc, tc.want) {
				t.Errorf("doc\n got %#v\nwant %#v", res.Doc, tc.want)
			}
		})
	}
}

func withRules(kv ...string) Policy {
	p := Policy{Fields: map[string]FieldRule{}}
	for i := 0; i < len(kv); i += 2 {
		p.Fields[kv[i]] = FieldRule(kv[i+1])
	}
	return p
}

// doc is a live document at version 3 last changed by me.
func doc(fields obj, cl clocks) *Doc {
	return &Doc{Fields: fields, Clocks: cl, Version: 3, LastDevice: me}
}

// by is the expected result: a live document at version 3 changed by dev.
func by(dev string, fields obj, cl clocks) Doc {
	return Doc{Fields: fields, Clocks: cl, Version: 3, LastDevice: dev}
}

func set(kv ...any) PatchOps {
	p := PatchOps{Set: obj{}}
	for i := 0; i < len(kv); i += 2 {
		p.Set[kv[i].(string)] = kv[i+1]
	}
	return p
}

func inc(f string, d float64) PatchOps { return PatchOps{Inc: map[string]float64{f: d}} }
func unset(fs ...string) PatchOps      { return PatchOps{Unset: fs} }

func TestMaxRule(t *testing.T) {
	p := withRules("p", "max")
	cur := func() *Doc { return doc(obj{"p": 5.0, "a": "x"}, clocks{"p": at(10), "a": at(10)}) }
	runCases(t, []rcase{
		{name: "larger wins", res: p, cur: cur(), op: patchOp(at(11), 3, other, set("p", 7.0)), outcome: Applied,
			want: by(other, obj{"p": 7.0, "a": "x"}, clocks{"p": at(11), "a": at(10)})},
		{name: "smaller is kept out and changes nothing", res: p, cur: cur(), op: patchOp(at(11), 3, other, set("p", 3.0)), outcome: Merged,
			want: by(other, obj{"p": 5.0, "a": "x"}, clocks{"p": at(10), "a": at(10)})},
		{name: "an older write of a larger number still wins", res: p, cur: cur(), op: patchOp(at(2), 1, other, set("p", 9.0)), outcome: Merged,
			want: by(other, obj{"p": 9.0, "a": "x"}, clocks{"p": at(2), "a": at(10)})},
		{name: "an older write of an equal number keeps the later clock", res: p, cur: cur(), op: patchOp(at(2), 3, other, set("p", 5.0)), outcome: Applied,
			want: by(other, obj{"p": 5.0, "a": "x"}, clocks{"p": at(10), "a": at(10)})},
		{name: "equal is applied; a fixed order picks the representation", res: p, cur: doc(obj{"p": int64(5)}, clocks{"p": at(10)}),
			op: patchOp(at(11), 3, other, set("p", 5.0)), outcome: Applied,
			want: by(other, obj{"p": 5.0}, clocks{"p": at(11)})},
		{name: "equal the other way round settles the same", res: p, cur: doc(obj{"p": 5.0}, clocks{"p": at(10)}),
			op: patchOp(at(11), 3, other, set("p", int64(5))), outcome: Applied,
			want: by(other, obj{"p": 5.0}, clocks{"p": at(11)})},
		{name: "-0 and 0 settle the same", res: p, cur: doc(obj{"p": math.Copysign(0, -1)}, clocks{"p": at(10)}),
			op: patchOp(at(11), 3, other, set("p", 0.0)), outcome: Applied,
			want: by(other, obj{"p": math.Copysign(0, -1)}, clocks{"p": at(11)})},
		{name: "missing field takes the value", res: p, cur: doc(obj{"a": "x"}, clocks{"a": at(10)}),
			op: patchOp(at(11), 3, other, set("p", -1.0)), outcome: Applied,
			want: by(other, obj{"p": -1.0, "a": "x"}, clocks{"p": at(11), "a": at(10)})},
		{name: "non-number current value counts as absent", res: p, cur: doc(obj{"p": "lots"}, clocks{"p": at(10)}),
			op: patchOp(at(11), 3, other, set("p", 1.0)), outcome: Applied,
			want: by(other, obj{"p": 1.0}, clocks{"p": at(11)})},
		{name: "ints and floats compare exactly", res: p, cur: doc(obj{"p": int64(1<<53 + 1)}, clocks{"p": at(10)}),
			op: patchOp(at(11), 3, other, set("p", float64(1<<53))), outcome: Merged,
			want: by(other, obj{"p": int64(1<<53 + 1)}, clocks{"p": at(10)})},
		{name: "json.Number", res: p, cur: doc(obj{"p": json.Number("4")}, clocks{"p": at(10)}),
			op: patchOp(at(11), 3, other, set("p", json.Number("4.5"))), outcome: Applied,
			want: by(other, obj{"p": json.Number("4.5")}, clocks{"p": at(11)})},
		{name: "unset is ignored", res: p, cur: cur(), op: patchOp(at(11), 3, other, unset("p")), outcome: Merged,
			want: by(other, obj{"p": 5.0, "a": "x"}, clocks{"p": at(10), "a": at(10)})},
		{name: "unset of a missing field took effect", res: p, cur: doc(obj{"a": "x"}, clocks{"a": at(10)}),
			op: patchOp(at(11), 3, other, unset("p")), outcome: Applied,
			want: by(other, obj{"a": "x"}, clocks{"a": at(10)})},
		{name: "put takes the max and keeps an omitted field", res: withRules("p", "max", "q", "max"),
			cur: doc(obj{"p": 5.0, "q": 1.0, "a": "x"}, clocks{"p": at(10), "q": at(10), "a": at(10)}),
			op:  putOp(at(11), 3, other, obj{"p": 6.0, "b": true}), outcome: Merged,
			want: by(other, obj{"p": 6.0, "q": 1.0, "b": true},
				clocks{"p": at(11), "q": at(10), "b": at(11), DocClock: at(11)})},
		{name: "string is bad_op", res: p, cur: cur(), op: patchOp(at(11), 3, other, set("p", "7")), outcome: Rejected, reason: `"p" follows the max rule`},
		{name: "null is bad_op", res: p, cur: cur(), op: patchOp(at(11), 3, other, set("p", nil)), outcome: Rejected, reason: "null"},
		{name: "NaN is bad_op", res: p, cur: cur(), op: patchOp(at(11), 3, other, set("p", math.NaN())), outcome: Rejected, reason: "finite"},
		{name: "string in a put is bad_op", res: p, cur: cur(), op: putOp(at(11), 3, other, obj{"p": "x"}), outcome: Rejected},
		{name: "inc is bad_op", res: p, cur: cur(), op: patchOp(at(11), 3, other, inc("p", 1)), outcome: Rejected, reason: "takes no inc"},
		{name: "add is bad_op", res: p, cur: cur(), op: patchOp(at(11), 3, other, PatchOps{Add: map[string][]any{"p": {1.0}}}), outcome: Rejected},
		{name: "other fields stay lww", res: p, cur: cur(), op: patchOp(at(9), 3, other, set("a", "old", "p", 6.0)), outcome: Merged,
			want: by(other, obj{"p": 6.0, "a": "x"}, clocks{"p": at(9), "a": at(10)})},
	})
}

func TestMinRule(t *testing.T) {
	p := withRules("m", "min")
	cur := func() *Doc { return doc(obj{"m": 5.0}, clocks{"m": at(10)}) }
	runCases(t, []rcase{
		{name: "smaller wins", res: p, cur: cur(), op: patchOp(at(11), 3, other, set("m", 2.0)), outcome: Applied,
			want: by(other, obj{"m": 2.0}, clocks{"m": at(11)})},
		{name: "larger is kept out", res: p, cur: cur(), op: patchOp(at(11), 3, other, set("m", 9.0)), outcome: Merged,
			want: by(other, obj{"m": 5.0}, clocks{"m": at(10)})},
		{name: "unset is ignored", res: p, cur: cur(), op: patchOp(at(11), 3, other, unset("m")), outcome: Merged,
			want: by(other, obj{"m": 5.0}, clocks{"m": at(10)})},
		{name: "bool is bad_op", res: p, cur: cur(), op: patchOp(at(11), 3, other, set("m", true)), outcome: Rejected, reason: "min rule"},
		{name: "inc is bad_op", res: p, cur: cur(), op: patchOp(at(11), 3, other, inc("m", -1)), outcome: Rejected},
	})
}

func TestCounterRule(t *testing.T) {
	p := withRules("n", "counter")
	cur := func() *Doc { return doc(obj{"n": 5.0, "a": "x"}, clocks{"n": at(10), "a": at(10)}) }
	runCases(t, []rcase{
		{name: "inc adds", res: p, cur: cur(), op: patchOp(at(11), 3, other, inc("n", 2)), outcome: Applied,
			want: by(other, obj{"n": 7.0, "a": "x"}, clocks{"n": at(11), "a": at(10)})},
		{name: "an older inc still counts", res: p, cur: cur(), op: patchOp(at(2), 3, other, inc("n", -1)), outcome: Applied,
			want: by(other, obj{"n": 4.0, "a": "x"}, clocks{"n": at(10), "a": at(10)})},
		{name: "missing counter is 0", res: p, cur: doc(obj{}, clocks{}), op: patchOp(at(11), 3, other, inc("n", 3)), outcome: Applied,
			want: by(other, obj{"n": 3.0}, clocks{"n": at(11)})},
		{name: "non-number counts as 0", res: p, cur: doc(obj{"n": "x"}, clocks{"n": at(1)}), op: patchOp(at(11), 3, other, inc("n", 3)), outcome: Applied,
			want: by(other, obj{"n": 3.0}, clocks{"n": at(11)})},
		{name: "integers stay integers", res: p, cur: doc(obj{"n": int64(5)}, clocks{"n": at(1)}), op: patchOp(at(11), 3, other, inc("n", 1)), outcome: Applied,
			want: by(other, obj{"n": int64(6)}, clocks{"n": at(11)})},
		{name: "set is ignored, the rest applies", res: p, cur: cur(), op: patchOp(at(11), 3, other, set("n", 100.0, "a", "y")), outcome: Merged,
			want: by(other, obj{"n": 5.0, "a": "y"}, clocks{"n": at(10), "a": at(11)})},
		{name: "set of a non-number is ignored too", res: p, cur: cur(), op: patchOp(at(11), 3, other, set("n", "lots")), outcome: Merged,
			want: by(other, obj{"n": 5.0, "a": "x"}, clocks{"n": at(10), "a": at(10)})},
		{name: "set of the current value took effect", res: p, cur: cur(), op: patchOp(at(11), 3, other, set("n", 5.0)), outcome: Applied,
			want: by(other, obj{"n": 5.0, "a": "x"}, clocks{"n": at(10), "a": at(10)})},
		{name: "unset is ignored", res: p, cur: cur(), op: patchOp(at(11), 3, other, unset("n")), outcome: Merged,
			want: by(other, obj{"n": 5.0, "a": "x"}, clocks{"n": at(10), "a": at(10)})},
		{name: "creating with the counter at 0 stores 0", res: p, op: putOp(at(11), 0, other, obj{"n": 0.0, "a": "y"}), outcome: Applied,
			want: Doc{Fields: obj{"n": 0.0, "a": "y"}, Clocks: clocks{"a": at(11), DocClock: at(11)}, LastDevice: other}},
		{name: "creating with another count is ignored", res: p, op: putOp(at(11), 0, other, obj{"n": 7.0}), outcome: Merged,
			want: Doc{Fields: obj{}, Clocks: clocks{DocClock: at(11)}, LastDevice: other}},
		{name: "put keeps the counter", res: p, cur: cur(), op: putOp(at(11), 3, other, obj{"b": 1.0}), outcome: Merged,
			want: by(other, obj{"n": 5.0, "b": 1.0}, clocks{"n": at(10), "b": at(11), DocClock: at(11)})},
		{name: "put echoing the counter is applied", res: p, cur: cur(), op: putOp(at(11), 3, other, obj{"n": 5.0, "a": "z"}), outcome: Applied,
			want: by(other, obj{"n": 5.0, "a": "z"}, clocks{"n": at(10), "a": at(11), DocClock: at(11)})},
		{name: "add is bad_op", res: p, cur: cur(), op: patchOp(at(11), 3, other, PatchOps{Remove: map[string][]any{"n": {1.0}}}), outcome: Rejected, reason: "counter rule"},
		{name: "overflow is bad_op", res: p, cur: doc(obj{"n": math.MaxFloat64}, clocks{}), op: patchOp(at(11), 3, other, inc("n", math.MaxFloat64)), outcome: Rejected},
		{name: "delete-wins: a concurrent inc does not resurrect", res: p, cur: tomb(), op: patchOp(at(50), 1, other, inc("n", 1)), outcome: Merged,
			want: *tomb()},
		{name: "a recreated document restarts at 0", res: p, cur: tomb(), op: patchOp(at(50), 4, other, inc("n", 1)), outcome: Applied,
			want: Doc{Fields: obj{"n": 1.0}, Clocks: clocks{"n": at(50)}, Version: 4, LastDevice: other}},
		{name: "update-wins: a concurrent inc resurrects from 0", res: Policy{Fields: p.Fields, Deletes: UpdateWins}, cur: tomb(),
			op: patchOp(at(50), 1, other, inc("n", 2)), outcome: Merged,
			want: Doc{Fields: obj{"n": 2.0}, Clocks: clocks{"n": at(50)}, Version: 4, LastDevice: other}},
	})
}

// u builds union element clock keys for field "s".
func uAdd(k string) string   { return "s.+" + k }
func uRem(k string) string   { return "s.-" + k }
func uFirst(k string) string { return "s.^" + k }

const uExist = "s.="

func TestUnionRule(t *testing.T) {
	p := withRules("s", "union")
	// cur holds a (added 2) and b (added 4, first at 1), exists since 2.
	cur := func() *Doc {
		return doc(obj{"s": arr{"b", "a"}, "x": 1.0},
			clocks{uAdd(`"a"`): at(2), uAdd(`"b"`): at(4), uFirst(`"b"`): at(1), uExist: at(4), "x": at(1)})
	}
	add := func(es ...any) PatchOps { return PatchOps{Add: map[string][]any{"s": es}} }
	remove := func(es ...any) PatchOps { return PatchOps{Remove: map[string][]any{"s": es}} }
	runCases(t, []rcase{
		{name: "add creates the field", res: p, cur: doc(obj{}, clocks{}), op: patchOp(at(5), 3, other, add("b", "a", "b")), outcome: Applied,
			want: by(other, obj{"s": arr{"a", "b"}}, clocks{uAdd(`"a"`): at(5), uAdd(`"b"`): at(5), uExist: at(5)})},
		{name: "add appends by first add", res: p, cur: cur(), op: patchOp(at(5), 3, other, add("c")), outcome: Applied,
			want: by(other, obj{"s": arr{"b", "a", "c"}, "x": 1.0},
				clocks{uAdd(`"a"`): at(2), uAdd(`"b"`): at(4), uFirst(`"b"`): at(1), uAdd(`"c"`): at(5), uExist: at(5), "x": at(1)})},
		{name: "re-adding keeps the position", res: p, cur: cur(), op: patchOp(at(5), 3, other, add("a")), outcome: Applied,
			want: by(other, obj{"s": arr{"b", "a"}, "x": 1.0},
				clocks{uAdd(`"a"`): at(5), uFirst(`"a"`): at(2), uAdd(`"b"`): at(4), uFirst(`"b"`): at(1), uExist: at(5), "x": at(1)})},
		{name: "remove", res: p, cur: cur(), op: patchOp(at(5), 3, other, remove("a", "zz")), outcome: Applied,
			want: by(other, obj{"s": arr{"b"}, "x": 1.0},
				clocks{uFirst(`"a"`): at(2), uRem(`"a"`): at(5), uRem(`"zz"`): at(5), uAdd(`"b"`): at(4), uFirst(`"b"`): at(1), uExist: at(5), "x": at(1)})},
		{name: "an older remove loses to a newer add", res: p, cur: cur(), op: patchOp(at(3), 1, other, remove("b")), outcome: Merged,
			want: by(other, obj{"s": arr{"b", "a"}, "x": 1.0},
				clocks{uAdd(`"a"`): at(2), uAdd(`"b"`): at(4), uFirst(`"b"`): at(1), uExist: at(4), "x": at(1)})},
		{name: "an add older than a remove stays out", res: p,
			cur: doc(obj{"s": arr{}}, clocks{uRem(`"a"`): at(9), uExist: at(9)}),
			op:  patchOp(at(5), 1, other, add("a")), outcome: Merged,
			want: by(other, obj{"s": arr{}}, clocks{uRem(`"a"`): at(9), uFirst(`"a"`): at(5), uExist: at(9)})},
		{name: "add and remove of one element in one op: add wins", res: p, cur: cur(),
			op:      patchOp(at(5), 3, other, PatchOps{Add: map[string][]any{"s": {"a"}}, Remove: map[string][]any{"s": {"a"}}}),
			outcome: Applied,
			want: by(other, obj{"s": arr{"b", "a"}, "x": 1.0},
				clocks{uAdd(`"a"`): at(5), uFirst(`"a"`): at(2), uAdd(`"b"`): at(4), uFirst(`"b"`): at(1), uExist: at(5), "x": at(1)})},
		{name: "set is exactly this", res: p, cur: cur(), op: patchOp(at(5), 3, other, set("s", arr{"c", "b"})), outcome: Merged, // order differs
			want: by(other, obj{"s": arr{"b", "c"}, "x": 1.0},
				clocks{"s": at(5), uFirst(`"a"`): at(2), uAdd(`"b"`): at(5), uFirst(`"b"`): at(1), uAdd(`"c"`): at(5), uExist: at(5), "x": at(1)})},
		{name: "set in the stored order is applied", res: p, cur: cur(), op: patchOp(at(5), 3, other, set("s", arr{"b"})), outcome: Applied,
			want: by(other, obj{"s": arr{"b"}, "x": 1.0},
				clocks{"s": at(5), uFirst(`"a"`): at(2), uAdd(`"b"`): at(5), uFirst(`"b"`): at(1), uExist: at(5), "x": at(1)})},
		{name: "an older set does not remove newer adds", res: p, cur: cur(), op: patchOp(at(3), 1, other, set("s", arr{"c"})), outcome: Merged,
			want: by(other, obj{"s": arr{"b", "c"}, "x": 1.0},
				clocks{"s": at(3), uFirst(`"a"`): at(2), uAdd(`"b"`): at(4), uFirst(`"b"`): at(1), uAdd(`"c"`): at(3), uExist: at(4), "x": at(1)})},
		{name: "set of []", res: p, cur: cur(), op: patchOp(at(5), 3, other, set("s", arr{})), outcome: Applied,
			want: by(other, obj{"s": arr{}, "x": 1.0}, clocks{"s": at(5), uFirst(`"a"`): at(2), uFirst(`"b"`): at(1), uExist: at(5), "x": at(1)})},
		{name: "unset removes all", res: p, cur: cur(), op: patchOp(at(5), 3, other, unset("s")), outcome: Applied,
			want: by(other, obj{"x": 1.0}, clocks{"s": at(5), uFirst(`"a"`): at(2), uFirst(`"b"`): at(1), "x": at(1)})},
		{name: "an older unset keeps newer adds", res: p, cur: cur(), op: patchOp(at(3), 1, other, unset("s")), outcome: Merged,
			want: by(other, obj{"s": arr{"b"}, "x": 1.0},
				clocks{"s": at(3), uFirst(`"a"`): at(2), uAdd(`"b"`): at(4), uFirst(`"b"`): at(1), uExist: at(4), "x": at(1)})},
		{name: "put naming the field", res: p, cur: cur(), op: putOp(at(5), 3, other, obj{"s": arr{"b", "d"}}), outcome: Applied,
			want: by(other, obj{"s": arr{"b", "d"}},
				clocks{DocClock: at(5), uFirst(`"a"`): at(2), uAdd(`"b"`): at(5), uFirst(`"b"`): at(1), uAdd(`"d"`): at(5), uExist: at(5)})},
		{name: "put leaving the field out", res: p, cur: cur(), op: putOp(at(5), 3, other, obj{"x": 2.0}), outcome: Applied,
			want: by(other, obj{"x": 2.0}, clocks{DocClock: at(5), uFirst(`"a"`): at(2), uFirst(`"b"`): at(1), "x": at(5)})},
		{name: "objects are identified by id; the latest add's value wins", res: p,
			cur: doc(obj{"s": arr{obj{"id": "b1", "title": "old"}}}, clocks{uAdd(`{"id":"b1"}`): at(4), uExist: at(4)}),
			op:  patchOp(at(5), 3, other, add(obj{"id": "b1", "title": "new"}, obj{"id": "b2"})), outcome: Applied,
			want: by(other, obj{"s": arr{obj{"id": "b1", "title": "new"}, obj{"id": "b2"}}},
				clocks{uAdd(`{"id":"b1"}`): at(5), uFirst(`{"id":"b1"}`): at(4), uAdd(`{"id":"b2"}`): at(5), uExist: at(5)})},
		{name: "an older add of the same id keeps the newer value", res: p,
			cur: doc(obj{"s": arr{obj{"id": "b1", "title": "new"}}}, clocks{uAdd(`{"id":"b1"}`): at(4), uExist: at(4)}),
			op:  patchOp(at(3), 1, other, add(obj{"id": "b1", "title": "old"})), outcome: Merged,
			want: by(other, obj{"s": arr{obj{"id": "b1", "title": "new"}}},
				clocks{uAdd(`{"id":"b1"}`): at(4), uFirst(`{"id":"b1"}`): at(3), uExist: at(4)})},
		{name: "remove by id alone", res: p,
			cur: doc(obj{"s": arr{obj{"id": 1.0, "t": "x"}}}, clocks{uAdd(`{"id":1}`): at(4), uExist: at(4)}),
			op:  patchOp(at(5), 3, other, remove(obj{"id": int64(1)})), outcome: Applied,
			want: by(other, obj{"s": arr{}}, clocks{uFirst(`{"id":1}`): at(4), uRem(`{"id":1}`): at(5), uExist: at(5)})},
		{name: "objects without id are compared whole", res: p,
			cur: doc(obj{"s": arr{obj{"k": 1.0}}}, clocks{uAdd(`{"k":1}`): at(4), uExist: at(4)}),
			op:  patchOp(at(5), 3, other, add(obj{"k": 2.0})), outcome: Applied,
			want: by(other, obj{"s": arr{obj{"k": 1.0}, obj{"k": 2.0}}},
				clocks{uAdd(`{"k":1}`): at(4), uAdd(`{"k":2}`): at(5), uExist: at(5)})},
		{name: "a legacy array counts as added at the field clock", res: p,
			cur: doc(obj{"s": arr{"z", "y"}}, clocks{"s": at(4)}),
			op:  patchOp(at(3), 1, other, remove("y")), outcome: Merged,
			want: by(other, obj{"s": arr{"y", "z"}},
				clocks{"s": at(4), uAdd(`"y"`): at(4), uAdd(`"z"`): at(4), uExist: at(4)})},
		{name: "a non-array value counts as absent", res: p, cur: doc(obj{"s": "text"}, clocks{"s": at(4)}),
			op: patchOp(at(5), 3, other, add("a")), outcome: Applied,
			want: by(other, obj{"s": arr{"a"}}, clocks{"s": at(4), uAdd(`"a"`): at(5), uExist: at(5)})},
		{name: "set of a non-array is bad_op", res: p, cur: cur(), op: patchOp(at(5), 3, other, set("s", "a")), outcome: Rejected, reason: "takes an array"},
		{name: "put of a non-array is bad_op", res: p, cur: cur(), op: putOp(at(5), 3, other, obj{"s": obj{}}), outcome: Rejected, reason: "takes an array"},
		{name: "inc is bad_op", res: p, cur: cur(), op: patchOp(at(5), 3, other, inc("s", 1)), outcome: Rejected, reason: "union rule"},
		{name: "delete-wins: a concurrent add does not resurrect", res: p, cur: tomb(), op: patchOp(at(50), 1, other, add("a")), outcome: Merged,
			want: *tomb()},
		{name: "update-wins: a concurrent add resurrects from empty", res: Policy{Fields: p.Fields, Deletes: UpdateWins}, cur: tomb(),
			op: patchOp(at(50), 1, other, add("a")), outcome: Merged,
			want: Doc{Fields: obj{"s": arr{"a"}}, Clocks: clocks{uAdd(`"a"`): at(50), uExist: at(50)}, Version: 4, LastDevice: other}},
	})
}

func TestDefaultRuleAndLWWFields(t *testing.T) {
	runCases(t, []rcase{
		{name: "Default applies to fields without a rule", res: Policy{Default: RuleMax, Fields: map[string]FieldRule{"name": RuleLWW}},
			cur: doc(obj{"a": 5.0, "name": "x"}, clocks{"a": at(1), "name": at(10)}),
			op:  patchOp(at(9), 1, other, set("a", 3.0, "b", 2.0, "name", "old")), outcome: Merged,
			want: by(other, obj{"a": 5.0, "b": 2.0, "name": "x"}, clocks{"a": at(1), "b": at(9), "name": at(10)})},
		{name: "a rule of \"\" is lww", res: Policy{Fields: map[string]FieldRule{"a": ""}},
			cur: doc(obj{"a": 5.0}, clocks{"a": at(1)}),
			op:  patchOp(at(9), 3, other, set("a", 3.0)), outcome: Applied,
			want: by(other, obj{"a": 3.0}, clocks{"a": at(9)})},
	})
}

// Rejection reasons name the first bad field in order, every time.
func TestRuleRejectionIsDeterministic(t *testing.T) {
	p := withRules("p", "max", "q", "max", "r", "max")
	op := patchOp(at(30), 3, other, set("r", "x", "q", "y", "p", "z"))
	first, _ := p.Resolve(live(), op)
	for range 50 {
		if again, _ := p.Resolve(live(), op); again.Reason != first.Reason {
			t.Fatalf("reason changed: %q then %q", first.Reason, again.Reason)
		}
	}
	if !strings.Contains(first.Reason, `"p"`) {
		t.Errorf("reason %q should name p", first.Reason)
	}
}

func TestPolicyErrors(t *testing.T) {
	for name, p := range map[string]Policy{
		"mode":    {Mode: "sometimes"},
		"deletes": {Deletes: "never"},
		"default": {Default: "maxx"},
		"field":   {Fields: map[string]FieldRule{"a": "maxx"}},
	} {
		_, err := p.Resolve(nil, putOp(at(1), 0, other, obj{}))
		if err == nil || !strings.HasPrefix(err.Error(), "conflict: ") {
			t.Errorf("%s: err = %v, want a conflict: error", name, err)
		}
		if p.Validate() == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
	}
	for _, f := range []string{"", "$a", "a.b", "_id", "_sync", "*"} {
		if err := (Policy{Fields: map[string]FieldRule{f: RuleMax}}).Validate(); err == nil {
			t.Errorf("Validate accepted field name %q", f)
		}
	}
	if err := (Policy{Mode: ModeManual, Default: RuleLWW, Fields: map[string]FieldRule{"a": RuleUnion}}).Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	for _, s := range []string{"lww", "max", "min", "union", "counter"} {
		if r, err := ParseFieldRule(s); err != nil || string(r) != s {
			t.Errorf("ParseFieldRule(%q) = %q, %v", s, r, err)
		}
	}
	if _, err := ParseFieldRule("maxx"); err == nil || !strings.Contains(err.Error(), "known: counter, lww, max, min, union") {
		t.Errorf("ParseFieldRule(maxx) err = %v", err)
	}
	for in, want := range map[string]Mode{"": ModeLWW, "lww": ModeLWW, "server-wins": ModeServerWins, "client-wins": ModeClientWins, "manual": ModeManual} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseMode("first-wins"); err == nil {
		t.Error("ParseMode accepted first-wins")
	}
}

// Every rule leaves its inputs alone and shares nothing with its result.
func TestRulesShareNothingWithInputs(t *testing.T) {
	p := withRules("s", "union", "n", "counter", "p", "max")
	elem := obj{"id": "e", "deep": arr{obj{"z": 1.0}}}
	cur := doc(obj{"s": arr{obj{"id": "a", "v": arr{1.0}}}, "n": 1.0, "p": obj{"not": "a number"}},
		clocks{uAdd(`{"id":"a"}`): at(1), uExist: at(1)})
	ops := []Op{
		patchOp(at(5), 3, other, PatchOps{Add: map[string][]any{"s": {elem}}, Inc: map[string]float64{"n": 1}, Set: obj{"p": 2.0}}),
		putOp(at(5), 3, other, obj{"s": arr{elem}, "p": 1.0}),
	}
	for _, op := range ops {
		before := snapshot(cur, op)
		res, err := p.Resolve(cur, op)
		if err != nil || res.Outcome == Rejected {
			t.Fatalf("Resolve = %+v, %v", res, err)
		}
		for _, e := range res.Doc.Fields["s"].([]any) {
			e.(obj)["id"] = "changed"
		}
		res.Doc.Clocks[uExist] = at(99)
		if after := snapshot(cur, op); after != before {
			t.Fatalf("inputs changed through the result:\nbefore %s\nafter  %s", before, after)
		}
		res, _ = p.Resolve(cur, op)
		want := snapshot(&res.Doc, Op{})
		elem["deep"].([]any)[0].(obj)["z"] = "reused"
		cur.Fields["s"].([]any)[0].(obj)["v"].([]any)[0] = "reused"
		if got := snapshot(&res.Doc, Op{}); got != want {
			t.Fatalf("result changed through the inputs:\nbefore %s\nafter  %s", want, got)
		}
		elem["deep"].([]any)[0].(obj)["z"] = 1.0
		cur.Fields["s"].([]any)[0].(obj)["v"].([]any)[0] = 1.0
	}
}

var _ = hlc.Timestamp{}

// Numerically equal values written in either order settle on the same
// stored value, to the JSON text and the Go type.
func TestMaxMinTiesSettleTheSameInAnyOrder(t *testing.T) {
	pairs := [][2]any{
		{int64(5), 5.0}, {math.Copysign(0, -1), 0.0}, {json.Number("5"), 5.0}, {int32(7), int64(7)}, {json.Number("5.0"), 5.0},
	}
	for _, rule := range []string{"max", "min"} {
		p := withRules("v", rule)
		for _, pair := range pairs {
			run := func(a, b any) string {
				d := replayWith(t, p, []Op{
					patchOp(at(1), 0, me, set("v", a)),
					patchOp(at(2), 0, other, set("v", b)),
				})
				k, _ := jsonKey(d.Fields["v"])
				return fmt.Sprintf("%s %T %v", k, d.Fields["v"], d.Clocks)
			}
			if ab, ba := run(pair[0], pair[1]), run(pair[1], pair[0]); ab != ba {
				t.Errorf("%s %#v: %s one way, %s the other", rule, pair, ab, ba)
			}
		}
	}
}
