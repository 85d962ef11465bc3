package conflict

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func TestExampleCollectionsFile(t *testing.T) {
	data, err := os.ReadFile("../examples/collections.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Collections map[string]CollectionConfig `yaml:"collections"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	reg, err := Build(cfg.Collections, nil)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	for name, want := range map[string]Resolver{
		"reading_progress": Policy{Mode: ModeLWW, Fields: map[string]FieldRule{"progress": RuleMax}, Deletes: DeleteWins},
		"bookmarks":        Policy{Mode: ModeLWW, Fields: map[string]FieldRule{"items": RuleUnion}, Deletes: DeleteWins},
		"user_content":     Policy{Mode: ModeManual},
		"user_preferences": LWW{Delete: DeleteWins},
		"todos":            LWW{Delete: DeleteWins}, // through "*"
	} {
		c, ok := reg.Collection(name)
		if !ok || !reflect.DeepEqual(c.Resolver, want) {
			t.Errorf("%s: %#v, %v; want %#v", name, c.Resolver, ok, want)
		}
	}
	// The rules work end to end: progress only grows.
	rp := reg.For("reading_progress")
	res, _ := rp.Resolve(doc(obj{"progress": 0.6}, clocks{"progress": at(1)}), patchOp(at(2), 1, other, set("progress", 0.4)))
	if res.Doc.Fields["progress"] != 0.6 {
		t.Errorf("progress went back: %v", res.Doc.Fields)
	}
}

func TestBuildErrors(t *testing.T) {
	cols := map[string]CollectionConfig{
		"reading_progress": {Fields: map[string]string{"progress": "maxx", "ok": "max"}},
		"notes":            {Resolver: "manul"},
		"content":          {Resolver: "manual", Fields: map[string]string{"body": "lww"}, Deletes: "update-wins"},
		"prefs":            {Deletes: "sometimes", MaxDocBytes: -1, MaxDepth: -2},
		"bad.name":         {},
		"9lives":           {},
		"fields":           {Fields: map[string]string{"": "lww", "$x": "lww", "a.b": "lww", "_id": "lww", "_sync": "max", "*": "lww"}},
		"*":                {Resolver: "sometimes"},
	}
	_, err := Build(cols, nil)
	if err == nil {
		t.Fatal("Build accepted a broken config")
	}
	msg := err.Error()
	for _, want := range []string{
		`conflict: collections.reading_progress.fields.progress: unknown rule "maxx" (known: counter, lww, max, min, union)`,
		`conflict: collections.notes.resolver: unknown resolver "manul" (known: client-wins, lww, manual, server-wins)`,
		`conflict: collections.*.resolver: unknown resolver "sometimes"`,
		`conflict: collections.content.fields: field rules apply to resolver lww only, and this collection uses "manual"`,
		`conflict: collections.content.deletes: resolver "manual" decides deletes itself`,
		`conflict: collections.prefs.deletes: unknown delete policy "sometimes" (known: delete-wins, update-wins)`,
		`conflict: collections.prefs.max_doc_bytes: must be 0 (the server-wide limit) or more, not -1`,
		`conflict: collections.prefs.max_depth: must be 0 (the server-wide limit) or more, not -2`,
		`conflict: collections."bad.name": invalid collection name "bad.name"`,
		`conflict: collections."9lives": invalid collection name "9lives"`,
		`conflict: collections.fields.fields."": invalid field name "": field names cannot be empty`,
		`conflict: collections.fields.fields."$x": invalid field name "$x": field names cannot start with '$'`,
		`conflict: collections.fields.fields."a.b": invalid field name "a.b": field names cannot contain '.'`,
		`conflict: collections.fields.fields._id: invalid field name "_id": the name is reserved`,
		`conflict: collections.fields.fields._sync: invalid field name "_sync"`,
		`conflict: collections.fields.fields."*": invalid field name "*"`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in\n%s", want, msg)
		}
	}
	if !errors.Is(err, ErrUnknownResolver) {
		t.Error("an unknown resolver should match ErrUnknownResolver")
	}
	if n := strings.Count(msg, "\n") + 1; n != 16 {
		t.Errorf("%d problems reported, want 16:\n%s", n, msg)
	}
	// Deterministic: the same text every time.
	for range 10 {
		if _, again := Build(cols, nil); again.Error() != msg {
			t.Fatal("error text changed between runs")
		}
	}
	// A bad setting of a good collection does not hide an unknown resolver.
	if _, err := Build(map[string]CollectionConfig{"a": {Resolver: "x", MaxDepth: -1}}, nil); !errors.Is(err, ErrUnknownResolver) {
		t.Errorf("err = %v", err)
	}
}

func TestBuildRegistry(t *testing.T) {
	t.Run("empty config: lww for everything", func(t *testing.T) {
		for _, cols := range []map[string]CollectionConfig{nil, {}} {
			reg, err := Build(cols, nil)
			if err != nil {
				t.Fatal(err)
			}
			c, ok := reg.Collection("anything")
			if !ok || c.Resolver != (LWW{}) || c.MaxDocBytes != 0 || reg.For("x") != (LWW{}) {
				t.Errorf("Collection = %#v, %v", c, ok)
			}
		}
	})
	t.Run("no star: unknown collections are not ok", func(t *testing.T) {
		reg, err := Build(map[string]CollectionConfig{"notes": {MaxDocBytes: 1000, MaxDepth: 4}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if c, ok := reg.Collection("notes"); !ok || c.MaxDocBytes != 1000 || c.MaxDepth != 4 || c.Resolver != (LWW{Delete: DeleteWins}) {
			t.Errorf("notes = %#v, %v", c, ok)
		}
		if c, ok := reg.Collection("todos"); ok || c.Resolver != nil {
			t.Errorf("todos = %#v, %v; want unknown", c, ok)
		}
		if reg.For("todos") != (LWW{}) {
			t.Error("For should stay lenient")
		}
		reg.Set(DefaultCollection, LWW{Delete: UpdateWins})
		if c, ok := reg.Collection("todos"); !ok || c.Resolver != (LWW{Delete: UpdateWins}) {
			t.Errorf("after Set(*): todos = %#v, %v", c, ok)
		}
		reg.Set("notes", named("n"))
		if c, _ := reg.Collection("notes"); c.Resolver != named("n") || c.MaxDocBytes != 1000 {
			t.Errorf("Set lost the limits: %#v", c)
		}
	})
	t.Run("star limits serve other collections, not named ones", func(t *testing.T) {
		reg, err := Build(map[string]CollectionConfig{
			"*":     {MaxDocBytes: 500, Deletes: "update-wins"},
			"notes": {Resolver: "server-wins"},
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if c, _ := reg.Collection("todos"); c.MaxDocBytes != 500 || c.Resolver != (LWW{Delete: UpdateWins}) {
			t.Errorf("todos = %#v", c)
		}
		if c, _ := reg.Collection("notes"); c.MaxDocBytes != 0 || !reflect.DeepEqual(c.Resolver, Policy{Mode: ModeServerWins}) {
			t.Errorf("notes = %#v", c)
		}
	})
	t.Run("custom resolvers come from the catalog", func(t *testing.T) {
		cat := NewCatalog()
		var seen Options
		if err := cat.Register("priority", func(o Options) (Resolver, error) { seen = o; return named("priority"), nil }); err != nil {
			t.Fatal(err)
		}
		reg, err := Build(map[string]CollectionConfig{"tasks": {Resolver: "priority", Deletes: "update-wins"}}, cat)
		if err != nil {
			t.Fatal(err)
		}
		if c, _ := reg.Collection("tasks"); c.Resolver != named("priority") {
			t.Errorf("tasks = %#v", c)
		}
		if seen.Delete != UpdateWins || seen.Collection != "tasks" {
			t.Errorf("factory saw %+v", seen)
		}
		_, err = Build(map[string]CollectionConfig{"tasks": {Resolver: "priority", Fields: map[string]string{"a": "max"}}}, cat)
		if err == nil || !strings.Contains(err.Error(), `collections.tasks.fields: field rules apply to resolver lww only`) {
			t.Errorf("fields on a custom resolver: %v", err)
		}
		if err := cat.Register("broken", func(Options) (Resolver, error) { return nil, errors.New("needs a weight") }); err != nil {
			t.Fatal(err)
		}
		_, err = Build(map[string]CollectionConfig{"tasks": {Resolver: "broken"}}, cat)
		if err == nil || err.Error() != `conflict: collections.tasks.resolver: resolver "broken": needs a weight` {
			t.Errorf("factory error: %v", err)
		}
	})
	t.Run("names", func(t *testing.T) {
		long := strings.Repeat("a", 64)
		if _, err := Build(map[string]CollectionConfig{long: {}, "_x": {}, "A9_b": {}}, nil); err != nil {
			t.Errorf("valid names refused: %v", err)
		}
		if _, err := Build(map[string]CollectionConfig{long + "a": {}}, nil); err == nil {
			t.Error("a 65-byte name was accepted")
		}
		for _, bad := range []string{"", "a-b", "é", "a b", "system.users"} {
			if _, err := Build(map[string]CollectionConfig{bad: {}}, nil); err == nil {
				t.Errorf("name %q was accepted", bad)
			}
		}
	})
}

func TestLookupModes(t *testing.T) {
	for _, m := range []Mode{ModeServerWins, ModeClientWins, ModeManual} {
		got, err := Lookup(string(m), Options{})
		if err != nil || !reflect.DeepEqual(got, Policy{Mode: m}) {
			t.Errorf("Lookup(%s) = %#v, %v", m, got, err)
		}
		if _, err := Lookup(string(m), Options{Delete: UpdateWins}); err == nil {
			t.Errorf("Lookup(%s) accepted a delete policy", m)
		}
		if _, err := Lookup(string(m), Options{Fields: map[string]FieldRule{"a": RuleMax}}); err == nil {
			t.Errorf("Lookup(%s) accepted field rules", m)
		}
	}
	fields := map[string]FieldRule{"a": RuleMax}
	got, err := Lookup("lww", Options{Fields: fields, Delete: UpdateWins})
	if err != nil || !reflect.DeepEqual(got, Policy{Mode: ModeLWW, Fields: fields, Deletes: UpdateWins}) {
		t.Errorf("Lookup(lww, fields) = %#v, %v", got, err)
	}
	fields["a"] = RuleMin // the policy has its own copy
	if got.(Policy).Fields["a"] != RuleMax {
		t.Error("Lookup shares the Fields map")
	}
	if _, err := Lookup("lww", Options{Fields: map[string]FieldRule{"a": "maxx"}}); err == nil {
		t.Error("Lookup(lww) accepted an unknown rule")
	}
}
