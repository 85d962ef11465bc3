package conflict

import (
	"fmt"
	"maps"
	"math"
	"slices"

	"github.com/syncgate/syncgate/sync/hlc"
)

// DeletePolicy decides a delete against a concurrent update (see Concurrent).
// It only matters when the two are concurrent: a device that saw the delete
// and writes again recreates the document under either policy, and a device
// that saw the update and deletes deletes it under either policy.
type DeletePolicy string

const (
	// DeleteWins is the default, as in Realm: a delete always applies, and an
	// update concurrent with a tombstone does not resurrect the document.
	DeleteWins DeletePolicy = "delete-wins"
	// UpdateWins discards a delete concurrent with a live version, and lets
	// an update concurrent with a tombstone resurrect the document.
	UpdateWins DeletePolicy = "update-wins"
)

// ParseDeletePolicy reads a policy name from config. The empty string means
// DeleteWins.
func ParseDeletePolicy(s string) (DeletePolicy, error) {
	p, err := parseDeletePolicy(DeletePolicy(s))
	if err != nil {
		return "", Errorf("%v", err)
	}
	return p, nil
}

// parseDeletePolicy returns an unprefixed error so callers can add context.
func parseDeletePolicy(p DeletePolicy) (DeletePolicy, error) {
	switch p {
	case "", DeleteWins:
		return DeleteWins, nil
	case UpdateWins:
		return UpdateWins, nil
	}
	return "", fmt.Errorf("unknown delete policy %q (want %q or %q)", string(p), DeleteWins, UpdateWins)
}

// CodeBadOp is the Result.Code of an op that cannot apply to the document
// (it matches the protocol's bad_op error code).
const CodeBadOp = "bad_op"

// DocClock is the Doc.Clocks key that holds the HLC of the newest put: the
// put wrote every field, including ones it never saw, so a field's effective
// clock is the later of Clocks[field] and Clocks[DocClock]. Without it an
// older set of a field the put did not know about, delivered after the put,
// would resurrect that field, and the result would depend on delivery
// order. It is not a field: ops that name a field "*" are rejected.
const DocClock = "*"

// Concurrent reports whether op was made without seeing the current state:
// the device's base version is older than the current one and the last
// change came from another device. A device's own queued offline edits all
// carry an old base but follow each other, so they are not concurrent.
// A nil cur (no document) is never concurrent.
func Concurrent(cur *Doc, op Op) bool {
	return cur != nil && op.Base < cur.Version && cur.LastDevice != op.Device
}

// LWW is the default resolver: last writer wins per top-level field, ordered
// by HLC. The zero value uses DeleteWins. An LWW value is immutable and safe
// for concurrent use.
//
// Field rule. Every field has a clock: its effective clock is the later of
// Clocks[f] and Clocks[DocClock] (zero when missing). A write of field f
// by an op with HLC t takes effect iff t is strictly after the effective
// clock; it then stores the value (or removes the field) and sets
// Clocks[f] = t. Ties cannot happen between devices (HLC breaks them by
// node); an op replayed with the same HLC does not take effect again.
//
//   - put: every field in Put is set and every other field is unset, each
//     by the field rule, and Clocks[DocClock] becomes t if t is later. A
//     put older than the newest put therefore changes nothing. Clocks of
//     absent fields that the new DocClock dominates are dropped.
//   - patch set/unset: the field rule. An unset records its clock, so an
//     older concurrent set cannot bring the field back.
//   - patch inc: always applies, because increments commute: value + delta
//     (missing = 0), Clocks[f] = max(Clocks[f], t). A non-number is
//     rejected (bad_op). Integer values (int64 and friends, json.Number)
//     stay int64 while the delta is whole and the sum fits; everything else
//     is float64, so fractional sums round like float64 does.
//   - patch add/remove: treat the field as a set (a JSON array; missing =
//     empty). Elements are compared by their JSON encoding, so 1 and 1.0
//     and maps with the same entries are equal. remove drops every
//     occurrence of each element; add then appends each element not yet
//     present, in op order (so an element in both stays present).
//     Existing duplicates are left alone. The result is always an array,
//     even when empty. Clocks[f] = max(Clocks[f], t). A non-array is
//     rejected (bad_op).
//   - delete: a tombstone: Deleted, Fields and Clocks nil, DeletedAt = t (or
//     the older tombstone's DeletedAt if that is later).
//
// A patch names each field in at most one of set, unset and inc, or in add
// and/or remove; an op without an HLC, of an unknown kind or naming DocClock
// is rejected (bad_op). The engine validates the same, so these are a
// second line of defence.
//
// Deletes against concurrent updates (see Concurrent and DeletePolicy):
//
//   - DeleteWins: a delete always applies. An update concurrent with a
//     tombstone returns Merged with the tombstone unchanged (LastDevice
//     too), which tells the device the document is gone. A non-concurrent
//     update of a tombstone (the device saw the delete) recreates the
//     document from empty fields and clocks, whatever its HLC.
//   - UpdateWins: a delete concurrent with a live document returns Merged
//     with the document unchanged. An update concurrent with a tombstone
//     resurrects it from empty fields and clocks: a tombstone keeps no
//     fields, so a resurrecting patch yields only the fields it writes.
//
// Outcome: Applied when the op is not concurrent and every field write took
// effect (inc, add and remove always do); Merged otherwise; Rejected for
// bad ops. For Applied and Merged, Result.Doc is the complete next state
// with Version = cur.Version (0 for a new document) and LastDevice =
// op.Device, except where the op is discarded as described above, where
// Result.Doc is a copy of cur exactly.
//
// Convergence: applying set, unset and put ops in any order yields the same
// Fields and Clocks. inc commutes with other incs, with writes to other
// fields and with older puts. It does not commute with a concurrent set,
// unset or newer put of the same field (one clock per field cannot tell
// which increments came after the overwrite); the counter rule is meant for
// fields like that.
type LWW struct {
	Delete DeletePolicy // "" means DeleteWins
}

// Resolve implements Resolver.
func (r LWW) Resolve(cur *Doc, op Op) (Result, error) {
	policy, err := parseDeletePolicy(r.Delete)
	if err != nil {
		return Result{}, Errorf("lww: %v", err)
	}
	if reason := checkOp(op); reason != "" {
		return reject(reason), nil
	}
	concurrent := Concurrent(cur, op)
	if op.Kind == Delete {
		return deleteDoc(cur, op, policy, concurrent), nil
	}
	var st *lwwState
	switch {
	case cur == nil:
		st = newLWWState(nil)
	case !cur.Deleted:
		st = newLWWState(cur)
	case concurrent && policy == DeleteWins:
		return Result{Outcome: Merged, Doc: cloneDoc(cur)}, nil
	default:
		// Recreate (the device saw the delete) or resurrect (UpdateWins):
		// the tombstone holds no fields, and its old clocks must not make
		// the new writes lose.
		st = newLWWState(nil)
	}
	all, reason := st.apply(op)
	if reason != "" {
		return reject(reason), nil
	}
	outcome := Applied
	if concurrent || !all {
		outcome = Merged
	}
	return Result{Outcome: outcome, Doc: Doc{
		Fields: st.fields, Clocks: st.clocks, Version: versionOf(cur), LastDevice: op.Device,
	}}, nil
}

func deleteDoc(cur *Doc, op Op, policy DeletePolicy, concurrent bool) Result {
	if concurrent && policy == UpdateWins && !cur.Deleted {
		return Result{Outcome: Merged, Doc: cloneDoc(cur)}
	}
	at := op.HLC
	if cur != nil && cur.Deleted && cur.DeletedAt.After(at) {
		at = cur.DeletedAt // deleting twice keeps the tombstone's time monotonic
	}
	outcome := Applied
	if concurrent {
		outcome = Merged
	}
	return Result{Outcome: outcome, Doc: Doc{
		Deleted: true, DeletedAt: at, Version: versionOf(cur), LastDevice: op.Device,
	}}
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
		if _, ok := op.Put[DocClock]; ok {
			return fmt.Sprintf("field name %q is reserved", DocClock)
		}
		return ""
	case Patch:
		return checkPatch(&op.Patch)
	}
	return fmt.Sprintf("unknown op kind %q", op.Kind)
}

func checkPatch(p *PatchOps) string {
	seen := make(map[string]string, len(p.Set)+len(p.Unset)+len(p.Inc)+len(p.Add)+len(p.Remove))
	claim := func(f, kind string) string {
		if f == DocClock {
			return fmt.Sprintf("field name %q is reserved", DocClock)
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

func reject(reason string) Result {
	return Result{Outcome: Rejected, Code: CodeBadOp, Reason: reason}
}

func versionOf(cur *Doc) uint64 {
	if cur == nil {
		return 0
	}
	return cur.Version
}

// lwwState is the working copy of a live document's fields and clocks. It
// owns its maps and values (deep-copied from cur), so it can edit in place
// and hand them over as the result.
type lwwState struct {
	fields map[string]any
	clocks map[string]hlc.Timestamp
}

func newLWWState(cur *Doc) *lwwState {
	if cur == nil {
		return &lwwState{fields: map[string]any{}, clocks: map[string]hlc.Timestamp{}}
	}
	return &lwwState{fields: copyFields(cur.Fields), clocks: copyClocks(cur.Clocks)}
}

// apply runs a put or patch. all reports whether every field write took
// effect; a non-empty reason means the op is rejected (the state is then
// garbage and must be dropped).
func (s *lwwState) apply(op Op) (all bool, reason string) {
	t := op.HLC
	if op.Kind == Put {
		return s.put(op.Put, t), ""
	}
	p := &op.Patch
	all = true
	for f, v := range p.Set {
		all = s.write(f, v, true, t) && all
	}
	for _, f := range p.Unset {
		all = s.write(f, nil, false, t) && all
	}
	// inc, add and remove can fail; sorted so the reason is deterministic.
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

// effective is the clock a write to f must beat.
func (s *lwwState) effective(f string) hlc.Timestamp {
	c, floor := s.clocks[f], s.clocks[DocClock]
	if floor.After(c) {
		return floor
	}
	return c
}

// write sets (present) or unsets field f at t by the field rule and reports
// whether it took effect.
func (s *lwwState) write(f string, v any, present bool, t hlc.Timestamp) bool {
	if !t.After(s.effective(f)) {
		return false
	}
	if present {
		s.fields[f] = deepCopy(v)
	} else {
		delete(s.fields, f)
	}
	s.clocks[f] = t
	return true
}

// bump advances f's clock to t for the commutative ops (inc, add, remove).
func (s *lwwState) bump(f string, t hlc.Timestamp) {
	if t.After(s.clocks[f]) {
		s.clocks[f] = t
	}
}

func (s *lwwState) put(m map[string]any, t hlc.Timestamp) bool {
	all := true
	for f := range s.fields { // deleting the current key while ranging is safe
		if _, keep := m[f]; !keep {
			all = s.write(f, nil, false, t) && all
		}
	}
	for f, v := range m {
		all = s.write(f, v, true, t) && all
	}
	if floor := s.clocks[DocClock]; t.After(floor) {
		s.clocks[DocClock] = t
		// Clocks of absent fields at or before the put say nothing the put's
		// clock does not; dropping them keeps Clocks from growing with every
		// field name ever unset.
		for f, c := range s.clocks {
			if _, present := s.fields[f]; f != DocClock && !present && !c.After(t) {
				delete(s.clocks, f)
			}
		}
	}
	return all
}

func (s *lwwState) inc(f string, delta float64, t hlc.Timestamp) string {
	var next any = delta
	if v, ok := s.fields[f]; ok {
		if next, ok = addNumber(v, delta); !ok {
			return fmt.Sprintf("inc on field %q, which holds %s, not a number", f, jsonKind(v))
		}
	}
	if x, ok := next.(float64); ok && (math.IsInf(x, 0) || math.IsNaN(x)) {
		return fmt.Sprintf("inc on field %q overflows", f)
	}
	s.fields[f] = next
	s.bump(f, t)
	return ""
}

func (s *lwwState) addRemove(f string, add, remove []any, t hlc.Timestamp) string {
	var elems []any
	if v, ok := s.fields[f]; ok {
		if elems, ok = asArray(v); !ok {
			return fmt.Sprintf("add/remove on field %q, which holds %s, not an array", f, jsonKind(v))
		}
	}
	keys := make([]string, len(elems))
	for i, e := range elems {
		k, err := jsonKey(e)
		if err != nil {
			return fmt.Sprintf("field %q holds an element that is not JSON: %v", f, err)
		}
		keys[i] = k
	}
	if len(remove) > 0 {
		drop := make(map[string]bool, len(remove))
		for _, e := range remove {
			k, err := jsonKey(e)
			if err != nil {
				return fmt.Sprintf("remove from field %q: element is not JSON: %v", f, err)
			}
			drop[k] = true
		}
		kept, keptKeys := elems[:0], keys[:0] // elems is the state's own copy
		for i, e := range elems {
			if !drop[keys[i]] {
				kept, keptKeys = append(kept, e), append(keptKeys, keys[i])
			}
		}
		elems, keys = kept, keptKeys
	}
	if len(add) > 0 {
		present := make(map[string]bool, len(keys)+len(add))
		for _, k := range keys {
			present[k] = true
		}
		for _, e := range add {
			k, err := jsonKey(e)
			if err != nil {
				return fmt.Sprintf("add to field %q: element is not JSON: %v", f, err)
			}
			if !present[k] {
				present[k] = true
				elems = append(elems, deepCopy(e))
			}
		}
	}
	if elems == nil {
		elems = []any{} // a set, even when empty: [] not null
	}
	s.fields[f] = elems
	s.bump(f, t)
	return ""
}
