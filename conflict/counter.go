package conflict

import (
	"fmt"
	"math"

	"github.com/syncgate/syncgate/sync/hlc"
)

// The counter rule: only inc changes the field, and increments commute.
//
//   - inc of d: the field becomes value + d. A missing counter is 0, and so
//     is a value that is not a number. Integers stay int64 while the deltas
//     are whole (see addNumber). Clocks[f] becomes the latest inc's HLC.
//     The engine applies each mutation once (receipts make retries
//     idempotent), so every inc is counted exactly once.
//   - set (or a put naming the field): ignored, whatever the value: the
//     op's other fields still apply. It took effect only if the value sent
//     equals the stored counter; otherwise the outcome is Merged and the
//     device learns the real count. One exception keeps "create with the
//     counter at 0" clean: a 0 written to a missing counter is stored (a
//     missing counter is 0 anyway, so this commutes with everything).
//   - unset, or a put leaving the field out: ignored likewise (took effect
//     only if there is no counter).
//   - add, remove: Rejected (bad_op).
//   - delete: the tombstone drops every field; a document created again
//     starts its counter at 0. Under delete-wins an inc concurrent with the
//     tombstone is discarded with the rest of the op.
//
// Convergence: the counter is the sum of the increments since the document
// was (re)created, in any delivery order (exactly, for integers; fractional
// deltas round like float64 and may differ in the last bit by order).
//
// Under client-wins and Op.Force a set stores the number as sent (a
// non-number is Rejected) and an unset removes the counter.

// counterInc adds delta to the counter f.
func (s *state) counterInc(f string, delta float64, t hlc.Timestamp) string {
	var next any = delta
	if v, ok := s.fields[f]; ok {
		if n, ok := addNumber(v, delta); ok {
			next = n
		}
	}
	if x, ok := next.(float64); ok && (math.IsInf(x, 0) || math.IsNaN(x)) {
		return fmt.Sprintf("inc on field %q overflows", f)
	}
	s.fields[f] = next
	s.bump(f, t)
	return ""
}

// counterSet is a set of the counter f: ignored unless forced.
func (s *state) counterSet(f string, v any, t hlc.Timestamp) (bool, string) {
	if s.force {
		if _, ok := toNum(v); !ok {
			return false, fmt.Sprintf("field %q follows the counter rule and takes a finite number, not %s", f, jsonKind(v))
		}
		s.fields[f] = deepCopy(v)
		s.bump(f, t)
		return true, ""
	}
	cur, ok := s.fields[f]
	if !ok {
		// A missing counter is 0, so writing 0 only makes that explicit (a
		// put creating the document with the counter at 0). It commutes:
		// the counter is present iff some op incremented it or wrote 0
		// while it was missing, and its value is still the sum of incs.
		if n, isNum := toNum(v); isNum && n.compare(num{}) == 0 {
			s.fields[f] = 0.0 // canonical: -0 and int64(0) would differ by delivery order
			return true, ""
		}
		return false, ""
	}
	return sameJSON(cur, v), ""
}
