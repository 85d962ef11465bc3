package conflict

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Mode is how a collection treats an op that is concurrent with the current
// state (see Concurrent). Field rules decide how fields combine when an op
// applies; the mode decides whether and how it applies at all.
type Mode string

const (
	// ModeLWW (the default) applies every op; fields combine by their
	// rules, deletes against updates by the DeletePolicy.
	ModeLWW Mode = "lww"
	// ModeServerWins discards an op concurrent with the current state: the
	// outcome is Merged with the current document unchanged. Concurrent
	// deletes are discarded too. An op that saw the current state applies
	// as under ModeLWW.
	ModeServerWins Mode = "server-wins"
	// ModeClientWins applies every op as sent, ignoring clocks and field
	// rules' merging (clocks only move forward). An update of a tombstone
	// resurrects the document; a delete always applies.
	ModeClientWins Mode = "client-wins"
	// ModeManual applies nothing concurrent: an op concurrent with the
	// current state returns Conflict, and the engine keeps a conflict
	// record until a person resolves it with a Force op. An op that saw
	// the current state applies as under ModeLWW.
	ModeManual Mode = "manual"
)

// knownModes lists the built-in modes, sorted, for messages.
const knownModes = "client-wins, lww, manual, server-wins"

// ParseMode reads a mode name from config; "" means ModeLWW.
func ParseMode(s string) (Mode, error) {
	m, err := parseMode(Mode(s))
	if err != nil {
		return "", Errorf("%v", err)
	}
	return m, nil
}

func parseMode(m Mode) (Mode, error) {
	if m == "" {
		return ModeLWW, nil
	}
	switch m {
	case ModeLWW, ModeServerWins, ModeClientWins, ModeManual:
		return m, nil
	}
	return "", fmt.Errorf("unknown mode %q (known: %s)", string(m), knownModes)
}

// FieldRule is how one top-level field combines concurrent writes in a
// ModeLWW collection. See the file of each rule for its exact semantics.
type FieldRule string

const (
	RuleLWW     FieldRule = "lww"     // newest write by HLC wins (lww.go)
	RuleMax     FieldRule = "max"     // the largest number ever written (max.go)
	RuleMin     FieldRule = "min"     // the smallest number ever written (min.go)
	RuleUnion   FieldRule = "union"   // an add-wins set (union.go)
	RuleCounter FieldRule = "counter" // the sum of every inc (counter.go)
)

// knownRules lists the rules, sorted, for messages.
const knownRules = "counter, lww, max, min, union"

func isRule(r FieldRule) bool {
	switch r {
	case RuleLWW, RuleMax, RuleMin, RuleUnion, RuleCounter:
		return true
	}
	return false
}

// ParseFieldRule reads a rule name from config. The empty string is an
// error: a field listed in config must name its rule.
func ParseFieldRule(s string) (FieldRule, error) {
	r, err := parseRule(FieldRule(s))
	if err != nil {
		return "", Errorf("%v", err)
	}
	return r, nil
}

func parseRule(r FieldRule) (FieldRule, error) {
	if isRule(r) {
		return r, nil
	}
	return "", fmt.Errorf("unknown rule %q (known: %s)", string(r), knownRules)
}

// Policy is a built-in collection resolver: a Mode, the field rules used
// when an op applies, and the delete policy of ModeLWW. The zero value is
// LWW{}: lww mode, lww for every field, delete-wins.
//
// A Policy is a value; its Fields map must not be modified once the Policy
// is in use (Build and Lookup hand out policies with maps of their own).
// Resolve is then safe for concurrent use.
type Policy struct {
	Mode    Mode                 // "" means ModeLWW
	Default FieldRule            // rule of fields not in Fields; "" means RuleLWW
	Fields  map[string]FieldRule // per-field rules; "" values mean RuleLWW
	// Deletes decides a delete against a concurrent update in ModeLWW;
	// "" means DeleteWins. The other modes decide deletes themselves (see
	// the package documentation) and ignore it.
	Deletes DeletePolicy
}

// Validate reports a Policy that Resolve would refuse: an unknown mode,
// rule or delete policy, or a field name that no op can carry.
func (p Policy) Validate() error {
	if _, _, err := p.check(); err != nil {
		return Errorf("%v", err)
	}
	for _, f := range slices.Sorted(maps.Keys(p.Fields)) {
		if reason := checkFieldName(f); reason != "" {
			return Errorf("field %q: %s", f, reason)
		}
		if p.Fields[f] == "" {
			continue
		}
		if _, err := parseRule(p.Fields[f]); err != nil {
			return Errorf("field %q: %v", f, err)
		}
	}
	return nil
}

// check resolves the defaults and validates the mode, default rule and
// delete policy (field rules are checked when a field is touched).
func (p Policy) check() (Mode, DeletePolicy, error) {
	mode, err := parseMode(p.Mode)
	if err != nil {
		return "", "", err
	}
	deletes, err := parseDeletePolicy(p.Deletes)
	if err != nil {
		return "", "", err
	}
	if p.Default != "" {
		if _, err := parseRule(p.Default); err != nil {
			return "", "", fmt.Errorf("default rule: %v", err)
		}
	}
	for _, r := range p.Fields {
		if r != "" && !isRule(r) {
			// Rare: report the first bad field in name order, deterministically.
			for _, f := range slices.Sorted(maps.Keys(p.Fields)) {
				if _, err := parseRule(p.Fields[f]); p.Fields[f] != "" && err != nil {
					return "", "", fmt.Errorf("field %q: %v", f, err)
				}
			}
		}
	}
	return mode, deletes, nil
}

// Resolve implements Resolver.
func (p Policy) Resolve(cur *Doc, op Op) (Result, error) {
	mode, deletes, err := p.check()
	if err != nil {
		return Result{}, Errorf("%s: %v", modeName(p.Mode), err)
	}
	if reason := checkOp(op); reason != "" {
		return reject(reason), nil
	}
	concurrent := Concurrent(cur, op)
	var res Result
	switch {
	case op.Force || mode == ModeClientWins:
		res, err = p.clientWins(cur, op, concurrent)
	case mode == ModeServerWins && concurrent:
		res = Result{Outcome: Merged, Doc: cloneDoc(cur)}
	case mode == ModeManual && concurrent && !(op.Kind == Delete && cur.Deleted):
		res = Result{Outcome: Conflict, Reason: fmt.Sprintf(
			"the document changed to version %d on another device since version %d", cur.Version, op.Base)}
	case mode == ModeLWW:
		res, err = p.lww(cur, op, deletes, concurrent)
	default:
		// server-wins and manual, op not concurrent (or a delete meeting a
		// tombstone under manual: both sides want it gone). The delete
		// policy only matters for concurrent ops.
		res, err = p.lww(cur, op, DeleteWins, concurrent)
	}
	if err != nil {
		return Result{}, Errorf("%s: %v", modeName(p.Mode), err)
	}
	return res, nil
}

func modeName(m Mode) string {
	if m == "" {
		return string(ModeLWW)
	}
	return string(m)
}

// lww applies op by the field rules, with the delete policy deciding
// deletes against concurrent updates.
func (p Policy) lww(cur *Doc, op Op, deletes DeletePolicy, concurrent bool) (Result, error) {
	if op.Kind == Delete {
		return deleteDoc(cur, op, deletes, concurrent), nil
	}
	base := cur
	switch {
	case cur == nil || !cur.Deleted:
	case concurrent && deletes == DeleteWins:
		return Result{Outcome: Merged, Doc: cloneDoc(cur)}, nil
	default:
		// Recreate (the device saw the delete) or resurrect (UpdateWins):
		// the tombstone holds no fields, and its old clocks must not make
		// the new writes lose.
		base = nil
	}
	return p.update(cur, base, op, false, concurrent)
}

// clientWins applies op as sent. A delete always applies; an update of a
// tombstone resurrects the document from empty fields and clocks.
func (p Policy) clientWins(cur *Doc, op Op, concurrent bool) (Result, error) {
	if op.Kind == Delete {
		return deleteDoc(cur, op, DeleteWins, concurrent), nil
	}
	base := cur
	if cur != nil && cur.Deleted {
		base = nil
	}
	return p.update(cur, base, op, true, concurrent)
}

// update applies a put or patch to base (nil: empty) and builds the result
// against cur.
func (p Policy) update(cur, base *Doc, op Op, force, concurrent bool) (Result, error) {
	st := newState(&p, base, force)
	all, reason, err := st.apply(op)
	if err != nil {
		return Result{}, err
	}
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

func reject(reason string) Result {
	return Result{Outcome: Rejected, Code: CodeBadOp, Reason: reason}
}

func versionOf(cur *Doc) uint64 {
	if cur == nil {
		return 0
	}
	return cur.Version
}

// checkFieldName returns why f cannot be a top-level field name, or "".
// It mirrors the protocol's validation (sync/protocol): no empty names, no
// '$' prefix, no '.', and not a reserved name.
func checkFieldName(f string) string {
	switch {
	case f == "":
		return "field names cannot be empty"
	case strings.HasPrefix(f, "$"):
		return "field names cannot start with '$'"
	case strings.Contains(f, "."):
		return "field names cannot contain '.'"
	case f == "_id" || f == "_sync" || f == DocClock:
		return "the name is reserved (reserved: _id, _sync, *)"
	}
	return ""
}
