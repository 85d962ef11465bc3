package conflict

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"github.com/syncgate/syncgate/sync/hlc"
)

// state is the working copy of a live document's fields and clocks while
// one op is applied. It owns its maps and values (deep-copied from the
// current document), so it edits in place and hands them over as the
// result. Each field's rule decides what a write does.
type state struct {
	rules  map[string]FieldRule // the policy's per-field rules (read only)
	def    FieldRule            // rule of every other field
	force  bool                 // apply as sent (client-wins, Op.Force)
	plain  bool                 // every field is lww: writes cannot fail
	fields map[string]any
	clocks map[string]hlc.Timestamp
	unions map[string]*unionField // union fields this op touches, loaded lazily
}

func newState(p *Policy, cur *Doc, force bool) *state {
	s := &state{rules: p.Fields, def: p.Default, force: force}
	if s.def == "" {
		s.def = RuleLWW
	}
	s.plain = s.def == RuleLWW
	for _, r := range p.Fields {
		if r != RuleLWW && r != "" {
			s.plain = false
		}
	}
	if cur == nil {
		s.fields, s.clocks = map[string]any{}, map[string]hlc.Timestamp{}
	} else {
		s.fields, s.clocks = copyFields(cur.Fields), copyClocks(cur.Clocks)
	}
	return s
}

// rule returns f's rule.
func (s *state) rule(f string) FieldRule {
	if r, ok := s.rules[f]; ok && r != "" {
		return r
	}
	return s.def
}

// apply runs a put or patch. all reports whether every field write took
// effect; a non-empty reason means the op is rejected (the state is then
// garbage and must be dropped); err means the policy is broken.
func (s *state) apply(op Op) (all bool, reason string, err error) {
	t := op.HLC
	if op.Kind == Put {
		all, reason = s.put(op.Put, t)
	} else {
		all, reason = s.patch(&op.Patch, t)
	}
	if reason != "" {
		return false, reason, nil
	}
	return s.flushUnions() && all, "", nil
}

func (s *state) patch(p *PatchOps, t hlc.Timestamp) (all bool, reason string) {
	all = true
	if s.plain { // lww sets cannot fail: skip sorting
		for f, v := range p.Set {
			all = s.write(f, v, true, t) && all
		}
	} else {
		// Sorted so that the same bad op gets the same reason every time.
		for _, f := range slices.Sorted(maps.Keys(p.Set)) {
			took, reason := s.set(f, p.Set[f], t, false)
			if reason != "" {
				return false, reason
			}
			all = took && all
		}
	}
	for _, f := range p.Unset {
		all = s.unset(f, t, false) && all
	}
	for _, f := range slices.Sorted(maps.Keys(p.Inc)) {
		if reason = s.inc(f, p.Inc[f], t); reason != "" {
			return false, reason
		}
	}
	if len(p.Add)+len(p.Remove) > 0 {
		fields := slices.Sorted(maps.Keys(p.Add))
		for f := range p.Remove {
			if _, ok := p.Add[f]; !ok {
				fields = append(fields, f)
			}
		}
		slices.Sort(fields)
		for _, f := range fields {
			if reason = s.addRemove(f, p.Add[f], p.Remove[f], t); reason != "" {
				return false, reason
			}
		}
	}
	return all, ""
}

// put makes the document the object m: every field in m is set and every
// other field is unset, each by its rule (so max, min and counter fields
// that m leaves out keep their values, and union fields are reset), and
// DocClock becomes t if t is later.
func (s *state) put(m map[string]any, t hlc.Timestamp) (all bool, reason string) {
	all = true
	if !s.plain {
		// Union fields are loaded before any clock moves: the put resets
		// every one of them, including those that exist only as metadata.
		for f := range s.fields {
			if s.rule(f) == RuleUnion {
				s.union(f)
			}
		}
		for f := range m {
			if s.rule(f) == RuleUnion {
				s.union(f)
			}
		}
		for k := range s.clocks {
			if f := clockField(k); f != DocClock && s.rule(f) == RuleUnion {
				s.union(f)
			}
		}
	}
	for f := range s.fields { // deleting the current key while ranging is safe
		if _, keep := m[f]; !keep {
			all = s.unset(f, t, true) && all
		}
	}
	for f, u := range s.unions {
		if _, keep := m[f]; !keep && u.action == actNone {
			u.act(actPutUnset, t, nil, nil) // a union field that exists only as metadata
		}
	}
	if s.plain {
		for f, v := range m {
			all = s.write(f, v, true, t) && all
		}
	} else {
		for _, f := range slices.Sorted(maps.Keys(m)) {
			took, reason := s.set(f, m[f], t, true)
			if reason != "" {
				return false, reason
			}
			all = took && all
		}
	}
	s.raiseDocClock(t)
	return all, ""
}

// set writes v to f at t (a patch set, or a field of a put).
func (s *state) set(f string, v any, t hlc.Timestamp, inPut bool) (took bool, reason string) {
	switch s.rule(f) {
	case RuleMax:
		return s.maxSet(f, v, t)
	case RuleMin:
		return s.minSet(f, v, t)
	case RuleCounter:
		return s.counterSet(f, v, t)
	case RuleUnion:
		elems, ok := asArray(v)
		if !ok {
			return false, fmt.Sprintf("field %q is a union (set) field and takes an array, not %s", f, jsonKind(v))
		}
		act := actSet
		if inPut {
			act = actPutSet
		}
		u := s.union(f)
		return true, u.act(act, t, elems, nil)
	}
	return s.write(f, v, true, t), ""
}

// unset removes f at t (a patch unset, or a field a put leaves out).
func (s *state) unset(f string, t hlc.Timestamp, inPut bool) bool {
	switch s.rule(f) {
	case RuleMax, RuleMin, RuleCounter:
		return s.keepUnset(f, t)
	case RuleUnion:
		act := actUnset
		if inPut {
			act = actPutUnset
		}
		s.union(f).act(act, t, nil, nil)
		return true // decided in flushUnions
	}
	return s.write(f, nil, false, t)
}

func (s *state) inc(f string, delta float64, t hlc.Timestamp) string {
	switch r := s.rule(f); r {
	case RuleCounter:
		return s.counterInc(f, delta, t)
	case RuleMax, RuleMin, RuleUnion:
		return fmt.Sprintf("field %q follows the %s rule and takes no inc", f, r)
	}
	return s.lwwInc(f, delta, t)
}

func (s *state) addRemove(f string, add, remove []any, t hlc.Timestamp) string {
	switch r := s.rule(f); r {
	case RuleUnion:
		return s.union(f).act(actAddRemove, t, add, remove)
	case RuleMax, RuleMin, RuleCounter:
		return fmt.Sprintf("field %q follows the %s rule and takes no add or remove", f, r)
	}
	return s.lwwAddRemove(f, add, remove, t)
}

// checkOp returns why op is malformed, or "". It repeats the engine's
// validation where a malformed op would corrupt the resolver's state.
func checkOp(op Op) string {
	if op.HLC.IsZero() {
		return "op has no hlc timestamp"
	}
	switch op.Kind {
	case Delete:
		return ""
	case Put:
		for f := range op.Put {
			if r := checkOpField(f); r != "" {
				return r // any one: the engine rejects such ops before they get here
			}
		}
		return ""
	case Patch:
		return checkPatch(&op.Patch)
	}
	return fmt.Sprintf("unknown op kind %q", op.Kind)
}

// checkOpField rejects the names that would write into the metadata:
// DocClock, and names with '.' (union element records).
func checkOpField(f string) string {
	if f == DocClock {
		return fmt.Sprintf("field name %q is reserved", DocClock)
	}
	if strings.IndexByte(f, '.') >= 0 {
		return fmt.Sprintf("field name %q contains '.'", f)
	}
	return ""
}

func checkPatch(p *PatchOps) string {
	seen := make(map[string]string, len(p.Set)+len(p.Unset)+len(p.Inc)+len(p.Add)+len(p.Remove))
	claim := func(f, kind string) string {
		if r := checkOpField(f); r != "" {
			return r
		}
		prev, ok := seen[f]
		if ok && prev != kind && !(prev == "add" && kind == "remove") {
			return fmt.Sprintf("field %q appears in both %s and %s", f, prev, kind)
		}
		seen[f] = kind
		return ""
	}
	// Sorted so that the same bad op gets the same reason every time.
	for _, f := range slices.Sorted(maps.Keys(p.Set)) {
		if r := claim(f, "set"); r != "" {
			return r
		}
	}
	for _, f := range p.Unset {
		if r := claim(f, "unset"); r != "" {
			return r
		}
	}
	for _, f := range slices.Sorted(maps.Keys(p.Inc)) {
		if r := claim(f, "inc"); r != "" {
			return r
		}
		if d := p.Inc[f]; math.IsNaN(d) || math.IsInf(d, 0) {
			return fmt.Sprintf("inc of field %q is not a finite number", f)
		}
	}
	for _, f := range slices.Sorted(maps.Keys(p.Add)) {
		if r := claim(f, "add"); r != "" {
			return r
		}
	}
	for _, f := range slices.Sorted(maps.Keys(p.Remove)) {
		if r := claim(f, "remove"); r != "" {
			return r
		}
	}
	return ""
}
