package conflict

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/syncgate/syncgate/sync/hlc"
)

// The property: for a set of concurrent ops (base 0, several devices,
// distinct HLCs), every delivery order yields the same Fields and Clocks,
// and the Fields are what a per-field "newest write wins" oracle predicts.
//
// Two generators, because the promise differs:
//   - lwwHistory: set, unset and put on shared fields, any HLCs.
//   - mixedHistory: adds inc on counter fields. LWW promises that increments
//     commute with each other, with writes to other fields and with older
//     puts; so counter fields are only ever incremented (never set, unset
//     or named in a put) and every put is older than every inc. Mixing inc
//     with a concurrent overwrite of the same field is order-dependent by
//     design (TestLWWIncVersusOverwriteOfTheSameFieldIsOrderDependent).

const (
	propertyCases = 600 // per generator
	permutations  = 8   // delivery orders tried per case, besides the generated one and its reverse
)

var (
	lwwFields     = []string{"a", "b", "c", "d"}
	counterFields = []string{"n", "m"}
	devices       = []string{"u1/d1", "u1/d2", "u2/d1", "u3/d1"}
)

type history struct {
	seed *Doc // state before the ops (nil: new document)
	ops  []Op
}

type gen struct {
	rng  *rand.Rand
	used map[hlc.Timestamp]bool
}

// hlcIn returns an HLC with wall in [lo, hi] never returned before in this
// history; the node is the device, as the engine stamps it.
func (g *gen) hlcIn(lo, hi int64, dev string) hlc.Timestamp {
	for {
		ts := hlc.Timestamp{Wall: lo + g.rng.Int64N(hi-lo+1), Logical: uint32(g.rng.IntN(3)), Node: dev}
		if !g.used[ts] {
			g.used[ts] = true
			return ts
		}
	}
}

func (g *gen) value() any {
	switch g.rng.IntN(5) {
	case 0:
		return float64(g.rng.IntN(10))
	case 1:
		return fmt.Sprintf("v%d", g.rng.IntN(10))
	case 2:
		return g.rng.IntN(2) == 0
	case 3:
		return obj{"k": float64(g.rng.IntN(3))}
	}
	return arr{float64(g.rng.IntN(3)), "x"}
}

func (g *gen) pick(from []string, n int) []string {
	out := slices.Clone(from)
	g.rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out[:n]
}

// seed is the document before the ops. Counter fields start absent: a
// seeded counter value would be an overwrite older than the increments.
func (g *gen) seed() *Doc {
	if g.rng.IntN(4) == 0 {
		return nil
	}
	d := &Doc{Fields: obj{}, Clocks: clocks{}, Version: 1, LastDevice: "seed/dev"}
	for _, f := range g.pick(lwwFields, g.rng.IntN(len(lwwFields)+1)) {
		d.Fields[f], d.Clocks[f] = g.value(), hlc.Timestamp{Wall: 1, Node: "seed/dev"}
	}
	return d
}

// lwwOp is a set, unset, set+unset or put with wall clock in [lo, hi].
func (g *gen) lwwOp(lo, hi int64, allowPut bool) Op {
	dev := devices[g.rng.IntN(len(devices))]
	kind := g.rng.IntN(4)
	if kind == 3 && !allowPut {
		kind = g.rng.IntN(3)
	}
	if kind == 3 {
		fields := obj{}
		for _, f := range g.pick(lwwFields, g.rng.IntN(len(lwwFields)+1)) {
			fields[f] = g.value()
		}
		return putOp(g.hlcIn(lo, hi, dev), 0, dev, fields)
	}
	fs := g.pick(lwwFields, 1+g.rng.IntN(2))
	var p PatchOps
	switch {
	case kind == 0 || (kind == 2 && len(fs) == 1):
		p.Set = obj{}
		for _, f := range fs {
			p.Set[f] = g.value()
		}
	case kind == 1:
		p.Unset = fs
	default:
		p.Set, p.Unset = obj{fs[0]: g.value()}, fs[1:]
	}
	return patchOp(g.hlcIn(lo, hi, dev), 0, dev, p)
}

func lwwHistory(rng *rand.Rand) history {
	g := &gen{rng: rng, used: map[hlc.Timestamp]bool{}}
	h := history{seed: g.seed()}
	for range 2 + rng.IntN(7) {
		h.ops = append(h.ops, g.lwwOp(2, 12, true))
	}
	return h
}

// mixedHistory: puts at walls 2-10, incs at 11-20, sets and unsets anywhere.
func mixedHistory(rng *rand.Rand) history {
	g := &gen{rng: rng, used: map[hlc.Timestamp]bool{}}
	h := history{seed: g.seed()}
	for range 2 + rng.IntN(9) {
		switch rng.IntN(3) {
		case 0:
			h.ops = append(h.ops, g.lwwOp(2, 10, true))
		case 1:
			h.ops = append(h.ops, g.lwwOp(2, 20, false))
		default:
			dev := devices[rng.IntN(len(devices))]
			p := PatchOps{Inc: map[string]float64{}}
			for _, f := range g.pick(counterFields, 1+rng.IntN(2)) {
				p.Inc[f] = float64(rng.IntN(7) - 3)
			}
			if rng.IntN(2) == 0 { // a counter bump together with an edit
				p.Set = obj{lwwFields[rng.IntN(len(lwwFields))]: g.value()}
			}
			h.ops = append(h.ops, patchOp(g.hlcIn(11, 20, dev), 0, dev, p))
		}
	}
	return h
}

// replay applies ops in order, committing every result as the engine
// would (version+1), and returns the final state.
func replay(t *testing.T, h history, order []int) *Doc {
	t.Helper()
	cur := h.seed
	for _, i := range order {
		res, err := LWW{}.Resolve(cur, h.ops[i])
		if err != nil || (res.Outcome != Applied && res.Outcome != Merged) {
			t.Fatalf("op %d = %+v, %v", i, res, err)
		}
		next := res.Doc
		next.Version = versionOf(cur) + 1
		cur = &next
	}
	return cur
}

// oracle computes Fields directly: each LWW field takes the value of the
// newest write that covers it (a put covers every field), each counter the
// sum of its increments.
func oracle(h history) obj {
	want := obj{}
	for _, f := range lwwFields {
		var best hlc.Timestamp
		var val any
		present := false
		if h.seed != nil {
			if v, ok := h.seed.Fields[f]; ok {
				best, val, present = h.seed.Clocks[f], v, true
			}
		}
		for _, op := range h.ops {
			if !op.HLC.After(best) {
				continue
			}
			switch {
			case op.Kind == Put:
				val, present = op.Put[f]
			case op.Patch.Set != nil && op.Patch.Set[f] != nil:
				val, present = op.Patch.Set[f], true
			case slices.Contains(op.Patch.Unset, f):
				val, present = nil, false
			default:
				continue
			}
			best = op.HLC
		}
		if present {
			want[f] = val
		}
	}
	for _, f := range counterFields {
		sum, touched := 0.0, false
		for _, op := range h.ops {
			if d, ok := op.Patch.Inc[f]; ok {
				sum, touched = sum+d, true
			}
		}
		if touched {
			want[f] = sum
		}
	}
	return want
}

func describe(h history) string {
	var b strings.Builder
	if h.seed != nil {
		fmt.Fprintf(&b, "seed %v %v\n", h.seed.Fields, h.seed.Clocks)
	}
	for i, op := range h.ops {
		fmt.Fprintf(&b, "%d: %s %s put=%v patch=%+v\n", i, op.HLC, op.Kind, op.Put, op.Patch)
	}
	return b.String()
}

func checkConvergence(t *testing.T, name string, generate func(*rand.Rand) history) {
	rng := rand.New(rand.NewPCG(20251122, 1))
	for c := range propertyCases {
		h := generate(rng)
		n := len(h.ops)
		orders := [][]int{make([]int, n)}
		for i := range n {
			orders[0][i] = i
		}
		orders = append(orders, slices.Clone(orders[0]))
		slices.Reverse(orders[1])
		for range permutations {
			orders = append(orders, rng.Perm(n))
		}

		want := oracle(h)
		var first *Doc
		for _, order := range orders {
			got := replay(t, h, order)
			if !reflect.DeepEqual(got.Fields, want) {
				t.Fatalf("%s case %d, order %v:\nfields %v\noracle %v\n%s", name, c, order, got.Fields, want, describe(h))
			}
			if first == nil {
				first = got
			} else if !reflect.DeepEqual(got.Clocks, first.Clocks) {
				t.Fatalf("%s case %d, order %v:\nclocks %v\nfirst  %v\n%s", name, c, order, got.Clocks, first.Clocks, describe(h))
			}
		}
	}
}

func TestLWWConvergesInAnyOrder(t *testing.T) {
	checkConvergence(t, "set/unset/put", lwwHistory)
}

func TestLWWWithCountersConvergesInAnyOrder(t *testing.T) {
	checkConvergence(t, "set/unset/put/inc", mixedHistory)
}
