package conflict

import (
	"fmt"
	"testing"
)

// BenchmarkResolve measures one Resolve per mutation for each rule and
// mode on a 20-field document (the kind of document a phone syncs: a few
// strings, numbers, flags and a nested object). The op touches the rule's
// field ("f00") only and saw the current version, except where the name
// says "concurrent".
func BenchmarkResolve(b *testing.B) {
	base := func() (obj, clocks) {
		fields, cl := obj{}, clocks{}
		for i := 1; i < 20; i++ {
			f := fmt.Sprintf("f%02d", i)
			switch i % 4 {
			case 0:
				fields[f] = float64(i)
			case 1:
				fields[f] = fmt.Sprintf("value %d", i)
			case 2:
				fields[f] = i%3 == 0
			case 3:
				fields[f] = obj{"nested": arr{1.0, "two"}}
			}
			cl[f] = at(int64(i))
		}
		return fields, cl
	}
	mk := func(rule FieldRule, v any, extra clocks) *Doc {
		fields, cl := base()
		fields["f00"], cl["f00"] = v, at(10)
		for k, c := range extra {
			cl[k] = c
		}
		return &Doc{Fields: fields, Clocks: cl, Version: 10, LastDevice: me}
	}
	// A union of 10 bookmarks with canonical metadata.
	bookmarks, unionClocks := arr{}, clocks{"f00.=": at(10)}
	for i := range 10 {
		id := fmt.Sprintf("b%d", i)
		bookmarks = append(bookmarks, obj{"id": id, "url": "https://example.com/" + id})
		unionClocks[`f00.+{"id":"`+id+`"}`] = at(int64(i + 1))
	}
	putAll := func(d *Doc) obj {
		m := obj{}
		for k, v := range d.Fields {
			m[k] = v
		}
		return m
	}

	type bench struct {
		name string
		res  Resolver
		cur  *Doc
		op   Op
	}
	lwwDoc := mk(RuleLWW, "title", nil)
	unionDoc := mk(RuleUnion, bookmarks, unionClocks)
	delete(unionDoc.Clocks, "f00")
	benches := []bench{
		{"lww", LWW{}, lwwDoc, patchOp(at(100), 10, other, set("f00", "new title"))},
		{"lww-put", LWW{}, lwwDoc, putOp(at(100), 10, other, putAll(lwwDoc))},
		{"max", withRules("f00", "max"), mk(RuleMax, 0.4, nil), patchOp(at(100), 10, other, set("f00", 0.5))},
		{"min", withRules("f00", "min"), mk(RuleMin, 0.4, nil), patchOp(at(100), 10, other, set("f00", 0.3))},
		{"counter", withRules("f00", "counter"), mk(RuleCounter, 41.0, nil), patchOp(at(100), 10, other, inc("f00", 1))},
		{"union-add", withRules("f00", "union"), unionDoc,
			patchOp(at(100), 10, other, PatchOps{Add: map[string][]any{"f00": {obj{"id": "b10", "url": "https://example.com/b10"}}}})},
		{"union-remove", withRules("f00", "union"), unionDoc,
			patchOp(at(100), 10, other, PatchOps{Remove: map[string][]any{"f00": {obj{"id": "b3"}}}})},
		{"union-put", withRules("f00", "union"), unionDoc, putOp(at(100), 10, other, putAll(unionDoc))},
		{"server-wins-concurrent", Policy{Mode: ModeServerWins}, lwwDoc, patchOp(at(100), 5, other, set("f00", "x"))},
		{"client-wins", Policy{Mode: ModeClientWins}, lwwDoc, patchOp(at(100), 5, other, set("f00", "x"))},
		{"manual-concurrent", Policy{Mode: ModeManual}, lwwDoc, patchOp(at(100), 5, other, set("f00", "x"))},
	}
	for _, bc := range benches {
		b.Run(bc.name, func(b *testing.B) {
			if res, err := bc.res.Resolve(bc.cur, bc.op); err != nil || res.Outcome == Rejected {
				b.Fatalf("%+v %v", res, err)
			}
			b.ReportAllocs()
			for b.Loop() {
				_, _ = bc.res.Resolve(bc.cur, bc.op)
			}
		})
	}
}
