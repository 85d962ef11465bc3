package conflict

import "github.com/syncgate/syncgate/sync/hlc"

// The min rule keeps the smallest number ever written to a field. It is the
// max rule (max.go) with the comparison reversed:
//
//   - set (or a put naming the field) of a number v: the field becomes
//     min(current, v); a current value that is not a number counts as
//     absent; took effect iff the field now equals v.
//   - set of anything else: Rejected (bad_op).
//   - unset, or a put leaving the field out: ignored (Merged when there was
//     a value to keep).
//   - inc, add, remove: Rejected (bad_op).
//
// Commutative, associative and idempotent: the same in any delivery order.
// Under client-wins and Op.Force the number is stored as sent.

// minSet writes v to the min field f.
func (s *state) minSet(f string, v any, t hlc.Timestamp) (bool, string) {
	return s.extreme(f, v, t, -1, RuleMin)
}
