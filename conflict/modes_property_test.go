package conflict

import (
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
)

// Mode properties. Each case is a random sequence of ops from several
// devices whose bases lag behind the current version by a random amount,
// so some ops are concurrent and some are not. Every step is checked
// against the definition of the mode, and a forced copy of the op against
// client-wins; the state then advances as the engine would (version+1,
// and no commit when the result equals the current state).

const modeCases = 400

type failFunc func(format string, args ...any)

type modeStep struct {
	lag  uint64 // base = version - lag (at least 0)
	kind int
	op   Op
}

func genModeSteps(g *propGen) []modeStep {
	steps := make([]modeStep, 3+g.rng.IntN(12))
	fields := []string{"a", "b", "c"}
	for i := range steps {
		dev := g.device()
		var op Op
		switch k := g.rng.IntN(10); {
		case k < 4:
			p := PatchOps{Set: obj{}}
			for _, f := range fields[:1+g.rng.IntN(3)] {
				p.Set[f] = g.number()
			}
			op = patchOp(g.hlc(dev), 0, dev, p)
		case k < 5:
			op = patchOp(g.hlc(dev), 0, dev, unset(fields[g.rng.IntN(3)]))
		case k < 6:
			op = patchOp(g.hlc(dev), 0, dev, inc("n", float64(1+g.rng.IntN(3))))
		case k < 8:
			m := obj{}
			for _, f := range fields {
				if g.rng.IntN(2) == 0 {
					m[f] = g.number()
				}
			}
			op = putOp(g.hlc(dev), 0, dev, m)
		default:
			op = delOp(g.hlc(dev), 0, dev)
		}
		steps[i] = modeStep{lag: uint64(g.rng.IntN(3)), op: op}
	}
	return steps
}

func unchanged(cur *Doc, next Doc) bool {
	if cur == nil || cur.Deleted != next.Deleted {
		return false
	}
	return cur.Deleted || (reflect.DeepEqual(normalize(cur.Fields), normalize(next.Fields)) &&
		reflect.DeepEqual(normalizeClocks(cur.Clocks), normalizeClocks(next.Clocks)))
}

func normalize(m obj) obj {
	if len(m) == 0 {
		return nil
	}
	return m
}

func normalizeClocks(m clocks) clocks {
	if len(m) == 0 {
		return nil
	}
	return m
}

// asSent is what client-wins promises: the document the op describes.
func asSent(cur *Doc, op Op) obj {
	if op.Kind == Put {
		return maps.Clone(op.Put)
	}
	out := obj{}
	if cur != nil && !cur.Deleted {
		out = maps.Clone(cur.Fields)
	}
	for f, v := range op.Patch.Set {
		out[f] = v
	}
	for _, f := range op.Patch.Unset {
		delete(out, f)
	}
	for f, d := range op.Patch.Inc {
		n, _ := out[f].(float64)
		out[f] = n + d
	}
	return out
}

func TestPropertyModes(t *testing.T) {
	type chain struct {
		name   string
		policy Policy
		check  func(fail failFunc, cur *Doc, op Op, res Result)
	}
	lwwOf := func(d DeletePolicy) func(cur *Doc, op Op) Result {
		return func(cur *Doc, op Op) Result {
			r, _ := Policy{Deletes: d}.Resolve(cur, op)
			return r
		}
	}
	sameAsLWW := func(fail failFunc, cur *Doc, op Op, res Result) {
		if want := lwwOf(DeleteWins)(cur, op); !reflect.DeepEqual(res, want) {
			fail("not concurrent: %+v, want the lww result %+v", res, want)
		}
	}
	chains := []chain{
		{"lww delete-wins", Policy{}, func(fail failFunc, cur *Doc, op Op, res Result) {
			if Concurrent(cur, op) && cur.Deleted && op.Kind != Delete && (res.Outcome != Merged || !reflect.DeepEqual(res.Doc, *cur)) {
				fail("update resurrected a tombstone: %+v", res)
			}
			if op.Kind == Delete && !res.Doc.Deleted {
				fail("delete discarded: %+v", res)
			}
		}},
		{"lww update-wins", Policy{Deletes: UpdateWins}, func(fail failFunc, cur *Doc, op Op, res Result) {
			if Concurrent(cur, op) && !cur.Deleted && op.Kind == Delete && (res.Outcome != Merged || !reflect.DeepEqual(res.Doc, *cur)) {
				fail("concurrent delete applied: %+v", res)
			}
			if op.Kind != Delete && res.Doc.Deleted {
				fail("update did not resurrect: %+v", res)
			}
		}},
		{"server-wins", Policy{Mode: ModeServerWins}, func(fail failFunc, cur *Doc, op Op, res Result) {
			if !Concurrent(cur, op) {
				sameAsLWW(fail, cur, op, res)
			} else if res.Outcome != Merged || !reflect.DeepEqual(res.Doc, *cur) {
				fail("concurrent op not discarded: %+v", res)
			}
		}},
		{"manual", Policy{Mode: ModeManual}, func(fail failFunc, cur *Doc, op Op, res Result) {
			switch {
			case !Concurrent(cur, op) || (op.Kind == Delete && cur.Deleted):
				sameAsLWW(fail, cur, op, res)
			case res.Outcome != Conflict:
				fail("concurrent op: %+v, want a conflict", res)
			}
		}},
		{"client-wins", Policy{Mode: ModeClientWins}, func(fail failFunc, cur *Doc, op Op, res Result) {
			if op.Kind == Delete {
				if !res.Doc.Deleted {
					fail("delete discarded: %+v", res)
				}
			} else if want := asSent(cur, op); !reflect.DeepEqual(normalize(res.Doc.Fields), normalize(want)) {
				fail("fields %v, want as sent %v", res.Doc.Fields, want)
			}
			if want := map[bool]Outcome{false: Applied, true: Merged}[Concurrent(cur, op)]; res.Outcome != want {
				fail("outcome %s, want %s", res.Outcome, want)
			}
			if cur != nil && !cur.Deleted && !res.Doc.Deleted {
				for k, c := range cur.Clocks {
					if nc, ok := res.Doc.Clocks[k]; ok && c.After(nc) {
						fail("clock %s went back", k)
					}
				}
			}
		}},
	}
	base := baseSeed(t)
	for _, ch := range chains {
		t.Run(ch.name, func(t *testing.T) {
			for c := range modeCases {
				g := newPropGen(rand.New(rand.NewPCG(base, uint64(c))))
				steps := genModeSteps(g)
				var cur *Doc
				for i, st := range steps {
					op := st.op
					if v := versionOf(cur); v > st.lag {
						op.Base = v - st.lag
					}
					before := snapshot(cur, op)
					res, err := ch.policy.Resolve(cur, op)
					if err != nil {
						t.Fatal(err)
					}
					if snapshot(cur, op) != before {
						t.Fatalf("base seed %d, case %d, step %d: inputs mutated", base, c, i)
					}
					fail := func(format string, args ...any) {
						t.Helper()
						t.Fatalf("base seed %d, case %d, step %d:\ncur %+v\nop  %+v\n"+format,
							append([]any{base, c, i, cur, op}, args...)...)
					}
					ch.check(fail, cur, op, res)
					forcedOp := op
					forcedOp.Force = true
					f, _ := ch.policy.Resolve(cur, forcedOp)
					if cw, _ := (Policy{Mode: ModeClientWins}).Resolve(cur, op); !reflect.DeepEqual(f, cw) {
						fail("forced %+v, client-wins %+v", f, cw)
					}
					if (res.Outcome == Applied || res.Outcome == Merged) && !unchanged(cur, res.Doc) {
						next := res.Doc
						next.Version = versionOf(cur) + 1
						cur = &next
					}
				}
			}
		})
	}
}

// Sanity: the generator makes both concurrent and non-concurrent ops, so
// the property exercises both branches of every mode.
func TestPropertyModesCoverage(t *testing.T) {
	counts := map[string]int{}
	for c := range 100 {
		g := newPropGen(rand.New(rand.NewPCG(baseSeed(t), uint64(c))))
		var cur *Doc
		for _, st := range genModeSteps(g) {
			op := st.op
			if v := versionOf(cur); v > st.lag {
				op.Base = v - st.lag
			}
			key := op.Kind
			if Concurrent(cur, op) {
				key += "/concurrent"
			}
			if cur != nil && cur.Deleted {
				key += "/tombstone"
			}
			counts[string(key)]++
			res, _ := Policy{}.Resolve(cur, op)
			if !unchanged(cur, res.Doc) {
				next := res.Doc
				next.Version = versionOf(cur) + 1
				cur = &next
			}
		}
	}
	for _, want := range []string{"put", "patch", "delete", "put/concurrent", "patch/concurrent", "delete/concurrent",
		"patch/concurrent/tombstone", "put/tombstone"} {
		if counts[want] == 0 {
			t.Errorf("no %s ops generated: %v", want, slices.Sorted(maps.Keys(counts)))
		}
	}
}
