package conflict_test

import (
	"fmt"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/sync/hlc"
)

// priorityOf reads a document's numeric "priority" field (0 when missing).
func priorityOf(fields map[string]any) float64 {
	p, _ := fields["priority"].(float64)
	return p
}

// A custom resolver, registered by name and used from config as
// `resolver: priority`: a concurrent put loses to a stored document of
// higher priority; everything else is lww.
func ExampleCatalog_Register() {
	cat := conflict.NewCatalog()
	err := cat.Register("priority", func(opts conflict.Options) (conflict.Resolver, error) {
		lww, err := conflict.Lookup("lww", conflict.Options{Delete: opts.Delete})
		if err != nil {
			return nil, err
		}
		return conflict.ResolverFunc(func(cur *conflict.Doc, op conflict.Op) (conflict.Result, error) {
			if op.Kind == conflict.Put && !op.Force && conflict.Concurrent(cur, op) && !cur.Deleted &&
				priorityOf(op.Put) < priorityOf(cur.Fields) {
				return conflict.Result{Outcome: conflict.Merged, Doc: cur.Clone()}, nil
			}
			return lww.Resolve(cur, op)
		}), nil
	})
	if err != nil {
		panic(err)
	}
	reg, err := conflict.Build(map[string]conflict.CollectionConfig{
		"tickets": {Resolver: "priority"},
		"*":       {},
	}, cat)
	if err != nil {
		panic(err)
	}

	col, _ := reg.Collection("tickets")
	cur := &conflict.Doc{
		Fields:  map[string]any{"title": "outage", "priority": 3.0},
		Clocks:  map[string]hlc.Timestamp{"title": {Wall: 1, Node: "phone"}, "priority": {Wall: 1, Node: "phone"}},
		Version: 2, LastDevice: "alice/phone",
	}
	res, _ := col.Resolver.Resolve(cur, conflict.Op{
		Kind: conflict.Put, Put: map[string]any{"title": "typo", "priority": 1.0},
		Base: 1, HLC: hlc.Timestamp{Wall: 2, Node: "laptop"}, Device: "alice/laptop",
	})
	fmt.Println(res.Outcome, res.Doc.Fields["title"])
	// Output: merged outage
}
