package conflict

import (
	"fmt"
	"math"
	"strings"

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
// for concurrent use. LWW{Delete: d} is the same resolver as
// Policy{Mode: ModeLWW, Deletes: d} (no field rules); it stays a small
// comparable value because configs and tests compare it.
//
// The lww field rule described here is also what a Policy applies to every
// field without a rule of its own.
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
// Op.Force applies the op as sent instead (see ModeClientWins): set and
// unset take effect whatever the clocks, and clocks only move forward.
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
	return Policy{Deletes: r.Delete}.Resolve(cur, op)
}

// The lww field rule, as methods of the working state (see state.go).

// effective is the clock a write to f must beat.
func (s *state) effective(f string) hlc.Timestamp {
	c, floor := s.clocks[f], s.clocks[DocClock]
	if floor.After(c) {
		return floor
	}
	return c
}

// write sets (present) or unsets field f at t by the field rule and reports
// whether it took effect. Under force it always takes effect and the clock
// only moves forward.
func (s *state) write(f string, v any, present bool, t hlc.Timestamp) bool {
	if s.force {
		s.store(f, v, present)
		s.bump(f, t)
		return true
	}
	if !t.After(s.effective(f)) {
		return false
	}
	s.store(f, v, present)
	s.clocks[f] = t
	return true
}

func (s *state) store(f string, v any, present bool) {
	if present {
		s.fields[f] = deepCopy(v)
	} else {
		delete(s.fields, f)
	}
}

// bump advances f's clock to t (for the commutative ops and forced writes).
func (s *state) bump(f string, t hlc.Timestamp) {
	if t.After(s.clocks[f]) {
		s.clocks[f] = t
	}
}

// raiseDocClock records a put at t. Clocks of absent lww fields at or
// before the put say nothing the put's clock does not; dropping them keeps
// Clocks from growing with every field name ever unset. Other rules keep
// their own clocks (union fields canonicalize theirs in flushUnions).
func (s *state) raiseDocClock(t hlc.Timestamp) {
	if !t.After(s.clocks[DocClock]) {
		return
	}
	s.clocks[DocClock] = t
	for f, c := range s.clocks {
		if f == DocClock || c.After(t) || strings.IndexByte(f, '.') >= 0 || s.rule(f) != RuleLWW {
			continue
		}
		if _, present := s.fields[f]; !present {
			delete(s.clocks, f)
		}
	}
}

func (s *state) lwwInc(f string, delta float64, t hlc.Timestamp) string {
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

func (s *state) lwwAddRemove(f string, add, remove []any, t hlc.Timestamp) string {
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
