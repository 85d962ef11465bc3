package conflict

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"slices"
	"strconv"
	"testing"

	"github.com/syncgate/syncgate/sync/hlc"
)

// Order-independence properties of the field rules. Each case is a random
// history: a prefix applied first in a fixed order (the document's past),
// then concurrent ops from several devices (base 0, distinct HLCs) that
// are delivered in several orders. Every order must end with the same
// Fields and Clocks, and the Fields must match an oracle computed from the
// ops directly.
//
// The base seed is fixed so runs are reproducible; CONFLICT_SEED=<n>
// replays another one. A failure prints the base seed and the case.

const (
	ruleCases        = 400 // per property
	ruleOrders       = 8   // random delivery orders per case, plus forward and reverse
	defaultBaseSeed  = 20251122
	propertyDeviceN  = 4
	unionUniverseLen = 8
)

func baseSeed(t *testing.T) uint64 {
	if s := os.Getenv("CONFLICT_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("CONFLICT_SEED=%q: %v", s, err)
		}
		return n
	}
	return defaultBaseSeed
}

type propHistory struct {
	prefix []Op // applied first, in order
	ops    []Op // concurrent, delivered in every order tried
}

func (h propHistory) all() []Op { return append(slices.Clone(h.prefix), h.ops...) }

func (h propHistory) String() string {
	s := ""
	for i, op := range h.all() {
		tag := "  "
		if i < len(h.prefix) {
			tag = "p "
		}
		s += fmt.Sprintf("%s%d: %s %s %s put=%v patch=%+v\n", tag, i, op.HLC, op.Device, op.Kind, op.Put, op.Patch)
	}
	return s
}

// propGen hands out unique HLCs and picks devices.
type propGen struct {
	rng  *rand.Rand
	used map[hlc.Timestamp]bool
}

func newPropGen(rng *rand.Rand) *propGen { return &propGen{rng: rng, used: map[hlc.Timestamp]bool{}} }

func (g *propGen) device() string { return fmt.Sprintf("u%d/d", g.rng.IntN(propertyDeviceN)) }

func (g *propGen) hlc(dev string) hlc.Timestamp {
	for {
		ts := hlc.Timestamp{Wall: 1 + g.rng.Int64N(20), Logical: uint32(g.rng.IntN(3)), Node: dev}
		if !g.used[ts] {
			g.used[ts] = true
			return ts
		}
	}
}

func (g *propGen) patch(p PatchOps) Op {
	dev := g.device()
	return patchOp(g.hlc(dev), 0, dev, p)
}

func (g *propGen) put(m obj) Op {
	dev := g.device()
	return putOp(g.hlc(dev), 0, dev, m)
}

// split makes the first k ops a prefix (with bases that follow each other).
func (g *propGen) split(ops []Op) propHistory {
	k := g.rng.IntN(min(3, len(ops)) + 1)
	h := propHistory{prefix: ops[:k], ops: ops[k:]}
	for i := range h.prefix {
		h.prefix[i].Base = uint64(i)
	}
	return h
}

func replayWith(t *testing.T, r Resolver, ops []Op) *Doc {
	t.Helper()
	var cur *Doc
	for i, op := range ops {
		res, err := r.Resolve(cur, op)
		if err != nil || (res.Outcome != Applied && res.Outcome != Merged) {
			t.Fatalf("op %d = %+v, %v", i, res, err)
		}
		next := res.Doc
		next.Version = versionOf(cur) + 1
		cur = &next
	}
	return cur
}

// checkOrders runs every case of a property.
func checkOrders(t *testing.T, r Resolver, generate func(*propGen) propHistory, oracle func(propHistory) obj) {
	base := baseSeed(t)
	for c := range ruleCases {
		rng := rand.New(rand.NewPCG(base, uint64(c)))
		h := generate(newPropGen(rng))
		n := len(h.ops)
		forward := make([]int, n)
		for i := range forward {
			forward[i] = i
		}
		orders := [][]int{forward, slices.Clone(forward)}
		slices.Reverse(orders[1])
		for range ruleOrders {
			orders = append(orders, rng.Perm(n))
		}
		var want obj
		if oracle != nil {
			want = oracle(h)
		}
		var first *Doc
		for _, order := range orders {
			ops := slices.Clone(h.prefix)
			for _, i := range order {
				ops = append(ops, h.ops[i])
			}
			got := replayWith(t, r, ops)
			if oracle != nil && fmt.Sprint(got.Fields) != fmt.Sprint(want) {
				t.Fatalf("base seed %d, case %d, order %v:\nfields %v\noracle %v\n%s", base, c, order, got.Fields, want, h)
			}
			if first == nil {
				first = got
				continue
			}
			if !reflect.DeepEqual(got.Fields, first.Fields) || !reflect.DeepEqual(got.Clocks, first.Clocks) {
				t.Fatalf("base seed %d, case %d, order %v:\nfields %v\nclocks %v\nfirst order:\nfields %v\nclocks %v\n%s",
					base, c, order, got.Fields, got.Clocks, first.Fields, first.Clocks, h)
			}
		}
	}
}

// lwwOracle: the newest write covering f (a put covers every field).
func lwwOracle(ops []Op, f string, want obj) {
	var best hlc.Timestamp
	var val any
	present := false
	for _, op := range ops {
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

func (g *propGen) number() float64 { return float64(g.rng.IntN(41) - 20) }

// --- max and min ---

func maxMinHistory(g *propGen) propHistory {
	var ops []Op
	for range 2 + g.rng.IntN(9) {
		switch g.rng.IntN(5) {
		case 0, 1:
			p := set("p", g.number())
			if g.rng.IntN(2) == 0 {
				p.Set["q"] = g.number()
			}
			if g.rng.IntN(3) == 0 {
				p.Set["a"] = g.number()
			}
			ops = append(ops, g.patch(p))
		case 2:
			ops = append(ops, g.patch(set("q", g.number())))
		case 3:
			ops = append(ops, g.patch(unset(slices.Clone([]string{"p", "q", "a"}[:1+g.rng.IntN(3)])...)))
		default:
			m := obj{}
			for _, f := range []string{"p", "q", "a"} {
				if g.rng.IntN(2) == 0 {
					m[f] = g.number()
				}
			}
			ops = append(ops, g.put(m))
		}
	}
	return g.split(ops)
}

func maxMinOracle(h propHistory) obj {
	want := obj{}
	for _, op := range h.all() {
		for f, sign := range map[string]float64{"p": 1, "q": -1} {
			v, ok := op.Patch.Set[f]
			if op.Kind == Put {
				v, ok = op.Put[f]
			}
			if !ok {
				continue
			}
			if cur, had := want[f]; !had || sign*v.(float64) > sign*cur.(float64) {
				want[f] = v
			}
		}
	}
	lwwOracle(h.all(), "a", want)
	return want
}

func TestPropertyMaxMinConverge(t *testing.T) {
	checkOrders(t, withRules("p", "max", "q", "min"), maxMinHistory, maxMinOracle)
}

// --- counter ---

func counterHistory(g *propGen) propHistory {
	var ops []Op
	for range 2 + g.rng.IntN(9) {
		switch g.rng.IntN(6) {
		case 0, 1, 2:
			p := PatchOps{Inc: map[string]float64{"n": float64(g.rng.IntN(11) - 5)}}
			if g.rng.IntN(3) == 0 {
				p.Set = obj{"a": g.number()}
			}
			ops = append(ops, g.patch(p))
		case 3:
			n := g.number()
			if g.rng.IntN(3) == 0 {
				n = 0 // stored when the counter is missing, else ignored
			}
			ops = append(ops, g.patch(set("n", n, "a", g.number()))) // n ignored
		case 4:
			ops = append(ops, g.patch(unset("n")))
		default:
			m := obj{"a": g.number()}
			if g.rng.IntN(2) == 0 {
				m["n"] = float64(g.rng.IntN(2)) * g.number()
			}
			ops = append(ops, g.put(m))
		}
	}
	return g.split(ops)
}

func counterOracle(h propHistory) obj {
	want := obj{}
	sum, touched := 0.0, false
	for _, op := range h.all() {
		if d, ok := op.Patch.Inc["n"]; ok {
			sum, touched = sum+d, true
		}
		v, ok := op.Patch.Set["n"]
		if op.Kind == Put {
			v, ok = op.Put["n"]
		}
		if ok && v == 0.0 { // a 0 written to a missing counter is kept
			touched = true
		}
	}
	if touched {
		want["n"] = sum
	}
	lwwOracle(h.all(), "a", want)
	return want
}

func TestPropertyCounterConverges(t *testing.T) {
	checkOrders(t, withRules("n", "counter"), counterHistory, counterOracle)
}

// --- union ---

func (g *propGen) element() any {
	switch k := g.rng.IntN(unionUniverseLen); {
	case k < 3:
		return fmt.Sprintf("e%d", k)
	case k < 4:
		return float64(k)
	case k < 7:
		return obj{"id": fmt.Sprintf("b%d", k), "v": float64(g.rng.IntN(3))} // same id, varying value
	default:
		return obj{"k": float64(g.rng.IntN(2))} // no id: compared whole
	}
}

func (g *propGen) elements(n int) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = g.element()
	}
	return out
}

func unionHistory(g *propGen) propHistory {
	var ops []Op
	for range 2 + g.rng.IntN(10) {
		switch g.rng.IntN(7) {
		case 0, 1:
			ops = append(ops, g.patch(PatchOps{Add: map[string][]any{"s": g.elements(1 + g.rng.IntN(3))}}))
		case 2:
			ops = append(ops, g.patch(PatchOps{Remove: map[string][]any{"s": g.elements(1 + g.rng.IntN(2))}}))
		case 3:
			ops = append(ops, g.patch(PatchOps{Add: map[string][]any{"s": g.elements(1)}, Remove: map[string][]any{"s": g.elements(1)}}))
		case 4:
			p := set("s", g.elements(g.rng.IntN(4)))
			if g.rng.IntN(3) == 0 {
				p.Set["a"] = g.number()
			}
			ops = append(ops, g.patch(p))
		case 5:
			ops = append(ops, g.patch(unset("s")))
		default:
			m := obj{"a": g.number()}
			if g.rng.IntN(3) > 0 {
				m["s"] = g.elements(g.rng.IntN(4))
			}
			ops = append(ops, g.put(m))
		}
	}
	return g.split(ops)
}

// unionOracle computes the set from every op at once: the definition in
// union.go, without metadata.
func unionOracle(h propHistory) obj {
	type el struct {
		added      bool
		add, first hlc.Timestamp
		val        any
		rem        hlc.Timestamp
	}
	elems := map[string]*el{}
	get := func(v any) (*el, string) {
		k, _ := elemKey(v)
		if elems[k] == nil {
			elems[k] = &el{}
		}
		return elems[k], k
	}
	var floor, exist hlc.Timestamp
	hasExist := false
	markExist := func(t hlc.Timestamp) {
		if !hasExist || t.After(exist) {
			exist, hasExist = t, true
		}
	}
	add := func(v any, t hlc.Timestamp) {
		e, _ := get(v)
		if !e.added || !e.add.After(t) { // equal HLC: the same op, whose last duplicate wins
			e.add, e.val = t, v
		}
		if !e.added || e.first.After(t) {
			e.first = t
		}
		e.added = true
	}
	for _, op := range h.all() {
		t := op.HLC
		if op.Kind == Put {
			floor = maxTS(floor, t)
			if list, ok := op.Put["s"]; ok {
				markExist(t)
				for _, v := range list.([]any) {
					add(v, t)
				}
			}
			continue
		}
		p := op.Patch
		if list, ok := p.Set["s"]; ok {
			floor = maxTS(floor, t)
			markExist(t)
			for _, v := range list.([]any) {
				add(v, t)
			}
		}
		if slices.Contains(p.Unset, "s") {
			floor = maxTS(floor, t)
		}
		for _, v := range p.Add["s"] {
			add(v, t)
			markExist(t)
		}
		for _, v := range p.Remove["s"] {
			e, _ := get(v)
			e.rem = maxTS(e.rem, t)
			markExist(t)
		}
	}
	want := obj{}
	lwwOracle(h.all(), "a", want)
	if !hasExist || floor.After(exist) {
		return want
	}
	type shown struct {
		key   string
		first hlc.Timestamp
		val   any
	}
	var present []shown
	for k, e := range elems {
		if e.added && !maxTS(e.rem, floor).After(e.add) {
			present = append(present, shown{k, e.first, e.val})
		}
	}
	slices.SortFunc(present, func(a, b shown) int {
		if c := a.first.Compare(b.first); c != 0 {
			return c
		}
		return cmp.Compare(a.key, b.key)
	})
	arr := []any{}
	for _, p := range present {
		arr = append(arr, p.val)
	}
	want["s"] = arr
	return want
}

func TestPropertyUnionConverges(t *testing.T) {
	checkOrders(t, withRules("s", "union"), unionHistory, unionOracle)
}

// --- every rule at once, with lww fields ---

func mixedRulesHistory(g *propGen) propHistory {
	var ops []Op
	for range 2 + g.rng.IntN(12) {
		switch g.rng.IntN(8) {
		case 0:
			ops = append(ops, g.patch(set("a", g.number(), "p", g.number())))
		case 1:
			ops = append(ops, g.patch(set("b", g.number(), "n", g.number())))
		case 2:
			ops = append(ops, g.patch(unset("a", "p", "n")))
		case 3:
			ops = append(ops, g.patch(PatchOps{Inc: map[string]float64{"n": float64(g.rng.IntN(5))}, Set: obj{"b": g.number()}}))
		case 4:
			ops = append(ops, g.patch(PatchOps{Add: map[string][]any{"s": g.elements(2)}, Unset: []string{"b"}}))
		case 5:
			ops = append(ops, g.patch(PatchOps{Remove: map[string][]any{"s": g.elements(1)}, Set: obj{"a": g.number()}}))
		case 6:
			ops = append(ops, g.patch(set("s", g.elements(2))))
		default:
			m := obj{}
			for _, f := range []string{"a", "b", "p", "n"} {
				if g.rng.IntN(2) == 0 {
					m[f] = g.number()
				}
			}
			if g.rng.IntN(2) == 0 {
				m["s"] = g.elements(g.rng.IntN(3))
			}
			ops = append(ops, g.put(m))
		}
	}
	return g.split(ops)
}

func mixedRulesOracle(h propHistory) obj {
	want := obj{}
	for _, f := range []string{"a", "b"} {
		lwwOracle(h.all(), f, want)
	}
	for _, f := range []string{"p", "n", "s"} {
		var part obj
		switch f {
		case "p":
			part = maxMinOracle(h)
		case "n":
			part = counterOracle(h)
		case "s":
			part = unionOracle(h)
		}
		if v, ok := part[f]; ok {
			want[f] = v
		}
	}
	return want
}

func TestPropertyLWWPerFieldWithOtherRulesConverges(t *testing.T) {
	checkOrders(t, withRules("p", "max", "n", "counter", "s", "union"), mixedRulesHistory, mixedRulesOracle)
}
