package conflict

import (
	"cmp"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/syncgate/syncgate/sync/hlc"
)

// The union rule: an add-wins set whose result does not depend on the
// order in which ops arrive.
//
// # Elements
//
// A union field holds a JSON array. Its elements are scalars or objects
// (any JSON value works; arrays are compared by value like objects without
// an id). An element's identity, its key, is:
//
//   - for an object with an "id" member: {"id":<canonical JSON of the id>},
//     so two objects with the same id are one element whatever their other
//     members;
//   - otherwise: the element's canonical JSON (encoding/json: map keys
//     sorted, 1 and 1.0 alike).
//
// # Metadata (in Doc.Clocks)
//
// Field names never contain '.', so every key below is out of the field
// namespace. For a union field f and an element key K:
//
//	f        the HLC of the latest set or unset of f (a reset); a put resets
//	         every union field through DocClock instead
//	f.=      the HLC of the latest op that made f exist (set, add, remove,
//	         or a put naming f)
//	f.+K     the HLC of the latest add of K (the element's value is the one
//	         that add carried)
//	f.-K     the HLC of the latest remove of K
//	f.^K     the HLC of the first add of K ever
//
// The floor of f is F = max(Clocks[f], Clocks[DocClock]): a reset at t
// removes every element added before t, including adds that arrive later.
// An element is present iff its latest add is at or after both its latest
// remove and F (add wins ties). f exists in Fields iff f.= >= F; it then
// holds the present elements ordered by first add, then key, as an array
// (empty if none), and otherwise f is absent.
//
// The records are kept canonical, so equal histories give equal Clocks:
// f is stored only when later than DocClock; f.= only while f exists; for
// a present element f.+K, plus f.^K when the first add is older; for an
// absent element f.^K if it was ever added, plus f.-K when later than F.
// A present element needs no remove record (a remove older than its add
// can never matter again), and an absent element no add record (only an
// add newer than its remove can bring it back, and that add carries its
// own value). First-add records of elements ever added are kept for good,
// so the metadata grows with the number of distinct elements ever added.
//
// # Ops
//
//   - patch add at t: each element is added at t.
//   - patch remove at t: each element is removed at t.
//   - patch set of f at t: "the set is exactly this": Clocks[f] becomes
//     max(Clocks[f], t) and each listed element is added at t. Elements not
//     listed that were added before t are gone, whenever they arrive.
//   - patch unset of f at t: Clocks[f] becomes max(Clocks[f], t).
//   - put at t: like set when the put names f, like unset when it does not
//     (through DocClock).
//   - inc: rejected (bad_op); so is a set of anything but an array.
//
// Every op is a join (max or min of clocks), so any delivery order of the
// same ops yields the same Fields and Clocks. An older set or put still
// adds its elements; a newer reset removes them again.
//
// Outcome: a set or put took effect iff the resulting array equals the one
// sent (same elements, values and order); an unset iff the field is gone;
// an add iff every added element is present with the value sent; a remove
// iff every removed element is absent. Otherwise the op is Merged.
//
// Under client-wins and Op.Force the op applies as sent: added (listed)
// elements become present with the value sent, their add clock raised to
// at least their remove clock and F; removed (unlisted) elements get a
// remove clock of at least their add clock and drop their add; a forced
// unset removes every element and the field.
//
// A legacy array (written before the field had the union rule, so without
// element records) is read as if each element was added at the floor.

type unionAction uint8

const (
	actNone      unionAction = iota
	actSet                   // patch set
	actPutSet                // put naming the field
	actUnset                 // patch unset
	actPutUnset              // put leaving the field out
	actAddRemove             // patch add and/or remove
)

type unionElem struct {
	val      any           // value of the latest add (when added)
	added    bool          // add holds the latest add and val its value
	add      hlc.Timestamp // latest add
	hasFirst bool
	first    hlc.Timestamp // earliest add ever
	rem      hlc.Timestamp // latest remove (zero: none)
}

type unionField struct {
	elems    map[string]*unionElem
	oldKeys  []string      // clock keys loaded, removed from the state's clocks
	reset    hlc.Timestamp // Clocks[f]
	hasExist bool
	exist    hlc.Timestamp // Clocks[f.=]

	// What this op does to the field (one action per field per op).
	action unionAction
	t      hlc.Timestamp
	adds   []keyed // deduplicated: the last value of each key, at its first position
	rems   []keyed
	sent   []any // the array a set or put sent, for the outcome
}

type keyed struct {
	key string
	val any
}

// clockField returns the field a Clocks key belongs to.
func clockField(k string) string {
	if i := strings.IndexByte(k, '.'); i >= 0 {
		return k[:i]
	}
	return k
}

// union loads the union field f from the state (once per op).
func (s *state) union(f string) *unionField {
	if u := s.unions[f]; u != nil {
		return u
	}
	u := &unionField{elems: map[string]*unionElem{}}
	if s.unions == nil {
		s.unions = map[string]*unionField{}
	}
	s.unions[f] = u
	prefix := f + "."
	for k, c := range s.clocks {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		rest := k[len(prefix):]
		switch {
		case rest == "=":
			u.exist, u.hasExist = c, true
		case len(rest) > 1 && rest[0] == '+':
			e := u.elem(rest[1:])
			e.add, e.added = c, true
		case len(rest) > 1 && rest[0] == '-':
			u.elem(rest[1:]).rem = c
		case len(rest) > 1 && rest[0] == '^':
			e := u.elem(rest[1:])
			e.first, e.hasFirst = c, true
		}
		u.oldKeys = append(u.oldKeys, k) // unknown keys are dropped too
	}
	u.reset = s.clocks[f]
	floor := maxTS(u.reset, s.clocks[DocClock])
	// Values come from the array. Elements without an add record are legacy.
	if v, ok := s.fields[f]; ok {
		if arr, ok := asArray(v); ok {
			if !u.hasExist {
				u.exist, u.hasExist = floor, true
			}
			withVal := make(map[string]bool, len(arr))
			for _, item := range arr {
				k, err := elemKey(item)
				if err != nil || withVal[k] {
					continue // not JSON (cannot come from a device), or a duplicate
				}
				withVal[k] = true
				e := u.elem(k)
				if !e.added {
					e.add, e.added = floor, true
				}
				e.val = item // the state owns it (deep-copied from cur)
			}
			for k, e := range u.elems {
				if e.added && !withVal[k] {
					e.added = false // an add record without a value: cannot be present
				}
			}
		} else {
			for _, e := range u.elems {
				e.added = false
			}
		}
	} else {
		for _, e := range u.elems {
			e.added = false
		}
	}
	for _, e := range u.elems {
		if e.added && (!e.hasFirst || e.first.After(e.add)) {
			e.first, e.hasFirst = e.add, true
		}
	}
	return u
}

func (u *unionField) elem(k string) *unionElem {
	e := u.elems[k]
	if e == nil {
		e = &unionElem{}
		u.elems[k] = e
	}
	return e
}

// act records what the op does to the field; flushUnions applies it once
// every clock the op moves is known. It returns a rejection reason or "".
func (u *unionField) act(a unionAction, t hlc.Timestamp, add, remove []any) string {
	u.action, u.t = a, t
	var reason string
	if u.adds, reason = dedupe(add, "add to"); reason != "" {
		return reason
	}
	if u.rems, reason = dedupe(remove, "remove from"); reason != "" {
		return reason
	}
	if a == actSet || a == actPutSet {
		u.sent = add
		if u.sent == nil {
			u.sent = []any{}
		}
	}
	return ""
}

func dedupe(list []any, verb string) ([]keyed, string) {
	if len(list) == 0 {
		return nil, ""
	}
	out := make([]keyed, 0, len(list))
	at := make(map[string]int, len(list))
	for _, v := range list {
		k, err := elemKey(v)
		if err != nil {
			return nil, fmt.Sprintf("%s a union field: element is not JSON: %v", verb, err)
		}
		if i, ok := at[k]; ok {
			out[i].val = v
			continue
		}
		at[k] = len(out)
		out = append(out, keyed{k, v})
	}
	return out, ""
}

// flushUnions applies the recorded actions and writes every loaded union
// field back in canonical form. It reports whether every action took
// effect (see the outcome rules above).
func (s *state) flushUnions() bool {
	all := true
	for f, u := range s.unions {
		all = s.flushUnion(f, u) && all
	}
	return all
}

func (s *state) flushUnion(f string, u *unionField) bool {
	t := u.t
	if u.action == actSet || u.action == actUnset {
		u.reset = maxTS(u.reset, t)
	}
	docClock := s.clocks[DocClock]
	floor := maxTS(u.reset, docClock)
	if s.force {
		u.forced(floor)
	} else {
		switch u.action {
		case actSet, actPutSet, actAddRemove:
			for _, a := range u.adds {
				u.addAt(a, t)
			}
			for _, r := range u.rems {
				e := u.elem(r.key)
				e.rem = maxTS(e.rem, t)
			}
			u.markExist(t)
		}
	}

	// Write back, canonically.
	for _, k := range u.oldKeys {
		delete(s.clocks, k)
	}
	delete(s.clocks, f)
	if u.reset.After(docClock) {
		s.clocks[f] = u.reset
	}
	type shown struct {
		key   string
		first hlc.Timestamp
		val   any
	}
	var present []shown
	for k, e := range u.elems {
		if e.added && !maxTS(e.rem, floor).After(e.add) {
			s.clocks[f+".+"+k] = e.add
			if e.add.After(e.first) {
				s.clocks[f+".^"+k] = e.first
			}
			present = append(present, shown{k, e.first, e.val})
			continue
		}
		e.added, e.val = false, nil
		if e.hasFirst {
			s.clocks[f+".^"+k] = e.first
		}
		if e.rem.After(floor) {
			s.clocks[f+".-"+k] = e.rem
		}
	}
	exists := u.hasExist && !floor.After(u.exist)
	if !exists && len(present) > 0 { // cannot happen: every add marks the field existing
		u.exist, u.hasExist, exists = floor, true, true
	}
	var arr []any
	if exists {
		s.clocks[f+".="] = u.exist
		slices.SortFunc(present, func(a, b shown) int {
			if c := a.first.Compare(b.first); c != 0 {
				return c
			}
			return cmp.Compare(a.key, b.key)
		})
		arr = make([]any, len(present))
		for i, p := range present {
			arr[i] = p.val
		}
		s.fields[f] = arr
	} else {
		delete(s.fields, f)
	}

	switch u.action {
	case actSet, actPutSet:
		return exists && sameJSON(arr, u.sent)
	case actUnset, actPutUnset:
		return !exists
	case actAddRemove:
		for _, r := range u.rems {
			if e := u.elems[r.key]; e.added && !u.adding(r.key) {
				return false
			}
		}
		for _, a := range u.adds {
			if e := u.elems[a.key]; !e.added || !sameJSON(e.val, a.val) {
				return false
			}
		}
	}
	return true
}

func (u *unionField) adding(k string) bool {
	for _, a := range u.adds {
		if a.key == k {
			return true
		}
	}
	return false
}

// addAt adds element a at t: the latest add carries the value.
func (u *unionField) addAt(a keyed, t hlc.Timestamp) {
	e := u.elem(a.key)
	if !e.added || t.After(e.add) {
		e.add, e.added, e.val = t, true, deepCopy(a.val)
	}
	if !e.hasFirst || e.first.After(t) {
		e.first, e.hasFirst = t, true
	}
}

func (u *unionField) markExist(t hlc.Timestamp) {
	if !u.hasExist || t.After(u.exist) {
		u.exist, u.hasExist = t, true
	}
}

// forced applies the action as sent (client-wins, Op.Force).
func (u *unionField) forced(floor hlc.Timestamp) {
	t := u.t
	present := func(e *unionElem) bool { return e.added && !maxTS(e.rem, floor).After(e.add) }
	remove := func(e *unionElem) {
		r := maxTS(t, e.rem)
		if e.added {
			r = maxTS(r, e.add)
		}
		e.rem, e.added, e.val = r, false, nil
	}
	add := func(a keyed) {
		e := u.elem(a.key)
		at := maxTS(t, maxTS(e.rem, floor))
		if e.added {
			at = maxTS(at, e.add)
		}
		e.add, e.added, e.val = at, true, deepCopy(a.val)
		if !e.hasFirst || e.first.After(t) {
			e.first, e.hasFirst = t, true
		}
		if e.first.After(at) {
			e.first = at
		}
	}
	switch u.action {
	case actSet, actPutSet:
		listed := make(map[string]bool, len(u.adds))
		for _, a := range u.adds {
			listed[a.key] = true
		}
		for k, e := range u.elems {
			if !listed[k] && present(e) {
				remove(e)
			}
		}
		for _, a := range u.adds {
			add(a)
		}
		u.markExist(maxTS(t, floor))
	case actUnset, actPutUnset:
		for _, e := range u.elems {
			if present(e) {
				remove(e)
			}
		}
		u.hasExist = false
	case actAddRemove:
		for _, r := range u.rems {
			remove(u.elem(r.key))
		}
		for _, a := range u.adds {
			add(a)
		}
		u.markExist(maxTS(t, floor))
	}
}

// elemKey is the identity of a union element: {"id":<id>} for an object
// with an id member, the canonical JSON of the element otherwise.
func elemKey(v any) (string, error) {
	if id, ok := objectID(v); ok {
		k, err := jsonKey(id)
		return `{"id":` + k + `}`, err
	}
	return jsonKey(v)
}

func objectID(v any) (any, bool) {
	if m, ok := v.(map[string]any); ok {
		id, ok := m["id"]
		return id, ok
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Map || rv.Type().Key().Kind() != reflect.String {
		return nil, false
	}
	x := rv.MapIndex(reflect.ValueOf("id").Convert(rv.Type().Key()))
	if !x.IsValid() {
		return nil, false
	}
	return x.Interface(), true
}

func maxTS(a, b hlc.Timestamp) hlc.Timestamp {
	if b.After(a) {
		return b
	}
	return a
}

// sameJSON reports whether a and b encode to the same JSON.
func sameJSON(a, b any) bool {
	ka, err1 := jsonKey(a)
	kb, err2 := jsonKey(b)
	return err1 == nil && err2 == nil && ka == kb
}
