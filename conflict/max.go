package conflict

import (
	"fmt"
	"math"
	"math/big"
	"reflect"

	"github.com/syncgate/syncgate/sync/hlc"
)

// The max rule keeps the largest number ever written to a field (the min
// rule, min.go, mirrors it):
//
//   - set (or a put naming the field) of a number v: the field becomes
//     max(current, v). A current value that is not a number counts as
//     absent. Between numerically equal values (-0 and 0, int64 and
//     float64) a fixed order picks, so the result does not depend on
//     which arrived first. Clocks[f] is the latest HLC among the writes that
//     carried the stored value, so a write that loses changes nothing at
//     all (the engine then commits nothing). Took effect iff the field now
//     equals v.
//   - set of anything else (string, null, NaN, ...): Rejected (bad_op).
//   - unset, or a put leaving the field out: ignored (the value stays; the
//     outcome is Merged when there was a value to keep).
//   - inc, add, remove: Rejected (bad_op).
//
// max is commutative, associative and idempotent, so the value and the
// clock are the same in every delivery order. Clocks do not decide
// anything: an older write of a larger number still wins.
//
// Under client-wins and Op.Force a set stores the number as sent (it can
// go down) and an unset removes the field.

// maxSet writes v to the max field f.
func (s *state) maxSet(f string, v any, t hlc.Timestamp) (bool, string) {
	return s.extreme(f, v, t, +1, RuleMax)
}

// extreme implements max (sign +1) and min (sign -1).
func (s *state) extreme(f string, v any, t hlc.Timestamp, sign int, rule FieldRule) (bool, string) {
	n, ok := toNum(v)
	if !ok {
		return false, fmt.Sprintf("field %q follows the %s rule and takes a finite number, not %s", f, rule, jsonKind(v))
	}
	if s.force {
		s.fields[f] = deepCopy(v)
		s.bump(f, t)
		return true, ""
	}
	if cur, present := s.fields[f]; present {
		if c, ok := toNum(cur); ok {
			switch d := n.compare(c) * sign; {
			case d == 0:
				s.bump(f, t) // the latest write carrying the stored value
				if tieWins(v, cur) {
					s.fields[f] = deepCopy(v)
				}
				return true, ""
			case d < 0:
				return false, "" // nothing changes, not even the clock
			}
		}
	}
	s.fields[f] = deepCopy(v)
	s.clocks[f] = t
	return true, ""
}

// keepUnset is an unset of a max, min or counter field: ignored (it took
// effect only if there was nothing to keep), or applied under force.
func (s *state) keepUnset(f string, t hlc.Timestamp) bool {
	_, present := s.fields[f]
	if s.force {
		delete(s.fields, f)
		s.bump(f, t)
		return true
	}
	return !present
}

// tieWins picks between numerically equal values by a total order (JSON
// text, then Go type), so the stored value does not depend on which came
// first: -0 and 0, or int64(5) and 5.0, always settle the same way.
func tieWins(v, cur any) bool {
	kv, _ := jsonKey(v)
	kc, _ := jsonKey(cur)
	if kv != kc {
		return kv < kc
	}
	return fmt.Sprintf("%T", v) < fmt.Sprintf("%T", cur)
}

// num is a finite number: an int64 (exact) or a float64.
type num struct {
	i     int64
	f     float64
	isInt bool
}

// toNum reads a finite JSON number of any Go type.
func toNum(v any) (num, bool) {
	switch x := v.(type) {
	case float64:
		return num{f: x}, !math.IsNaN(x) && !math.IsInf(x, 0)
	case int64:
		return num{i: x, isInt: true}, true
	case int:
		return num{i: int64(x), isInt: true}, true
	case nil, bool, string:
		return num{}, false
	}
	if _, ok := addNumber(v, 0); !ok {
		return num{}, false
	}
	if n, ok := v.(interface{ Int64() (int64, error) }); ok { // json.Number
		if i, err := n.Int64(); err == nil {
			return num{i: i, isInt: true}, true
		}
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return num{i: rv.Int(), isInt: true}, true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		if u := rv.Uint(); u <= math.MaxInt64 {
			return num{i: int64(u), isInt: true}, true
		}
		return num{f: float64(rv.Uint())}, true
	}
	f, _ := addNumber(v, 0) // float32, or a json.Number that is not an integer
	x, ok := f.(float64)
	return num{f: x}, ok && !math.IsNaN(x) && !math.IsInf(x, 0)
}

// compare returns -1, 0 or +1 as n is less than, equal to or greater than
// m, exactly (an int64 and a float64 are compared without rounding).
func (n num) compare(m num) int {
	switch {
	case n.isInt && m.isInt:
		return cmpInt(n.i, m.i)
	case !n.isInt && !m.isInt:
		return cmpFloat(n.f, m.f)
	}
	return n.big().Cmp(m.big())
}

func (n num) big() *big.Float {
	if n.isInt {
		return new(big.Float).SetInt64(n.i)
	}
	return big.NewFloat(n.f)
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
