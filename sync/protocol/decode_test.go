package protocol

import (
	"slices"
	"strings"
	"testing"

	"github.com/syncgate/syncgate/conflict"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		name string
		in   string
		kind string
		code Code
	}{
		{"hello", `{"type":"hello","protocol":1,"token":"t","device":"d","scopes":[{"scope":"user:a","since":3}]}`, TypeHello, ""},
		{"push", `{"type":"push","rid":4,"mutations":[{"mid":1,"scope":"user:a","col":"c","id":"x","op":"put","hlc":"1-000000-d","data":{"n":1}}]}`, TypePush, ""},
		{"pull", `{"type":"pull","scope":"user:a","since":0}`, TypePull, ""},
		{"auth", `{"type":"auth","token":"t"}`, TypeAuth, ""},
		{"ping", `{"type":"ping","rid":1}`, TypePing, ""},
		{"not json", `{"type":`, "", CodeMalformed},
		{"array", `[1,2]`, "", CodeMalformed},
		{"no type", `{"rid":1}`, "", CodeMalformed},
		{"unknown type", `{"type":"welcome"}`, "", CodeUnknownType},
		{"wrong field type", `{"type":"pull","scope":5}`, "", CodeMalformed},
		{"negative since", `{"type":"pull","scope":"user:a","since":-1}`, "", CodeMalformed},
		{"mid too big", `{"type":"push","mutations":[{"mid":1e30}]}`, "", CodeMalformed},
		{"number out of float range", `{"type":"push","mutations":[{"mid":1,"data":{"n":1e400}}]}`, "", CodeMalformed},
		{"nested number out of range", `{"type":"push","mutations":[{"mid":1,"add":{"s":[{"n":-1e999}]}}]}`, "", CodeMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Decode([]byte(tc.in))
			if tc.code != "" {
				if err == nil || err.Code != tc.code {
					t.Fatalf("err = %v, want code %s", err, tc.code)
				}
				return
			}
			if err != nil || m.Kind() != tc.kind {
				t.Fatalf("got %v, %v; want %s", m, err, tc.kind)
			}
		})
	}
}

func TestDecodeKeepsNumbersExact(t *testing.T) {
	m, err := Decode([]byte(`{"type":"push","mutations":[{"mid":18446744073709551615,"scope":"user:a","col":"c","id":"x","op":"put","hlc":"1-000000-d","data":{"n":1.5,"deep":{"a":[2]}}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	mu := m.(*Push).Mutations[0]
	if mu.ID != 18446744073709551615 {
		t.Fatalf("mid = %d", mu.ID)
	}
	if mu.Data["n"] != 1.5 || mu.Data["deep"].(map[string]any)["a"].([]any)[0] != 2.0 {
		t.Fatalf("numbers not normalised: %#v", mu.Data)
	}
}

func TestValidateMutation(t *testing.T) {
	ok := func() Mutation {
		return Mutation{ID: 1, Scope: "user:a", Collection: "todos", DocID: "x", Op: conflict.Put, HLC: "1-000000-d", Data: map[string]any{"a": 1.0}}
	}
	deep := map[string]any{}
	cur := deep
	for i := 0; i < 40; i++ {
		next := map[string]any{}
		cur["n"] = next
		cur = next
	}
	tests := []struct {
		name   string
		change func(*Mutation)
		code   Code
	}{
		{"valid put", func(*Mutation) {}, ""},
		{"valid patch", func(m *Mutation) {
			m.Op, m.Data = conflict.Patch, nil
			m.Set = map[string]any{"a": 1.0}
			m.Add = map[string][]any{"tags": {"x"}}
			m.Remove = map[string][]any{"tags": {"y"}}
		}, ""},
		{"valid delete", func(m *Mutation) { m.Op, m.Data = conflict.Delete, nil }, ""},
		{"mid 0", func(m *Mutation) { m.ID = 0 }, CodeBadRequest},
		{"bad scope kind", func(m *Mutation) { m.Scope = "team:a" }, CodeInvalidName},
		{"empty scope id", func(m *Mutation) { m.Scope = "user:" }, CodeInvalidName},
		{"control char scope", func(m *Mutation) { m.Scope = "user:a\n" }, CodeInvalidName},
		{"collection with dot", func(m *Mutation) { m.Collection = "a.b" }, CodeInvalidName},
		{"collection with dollar", func(m *Mutation) { m.Collection = "$cmd" }, CodeInvalidName},
		{"system collection", func(m *Mutation) { m.Collection = "system_users" }, CodeInvalidName},
		{"long collection", func(m *Mutation) { m.Collection = strings.Repeat("a", 65) }, CodeInvalidName},
		{"empty id", func(m *Mutation) { m.DocID = "" }, CodeInvalidName},
		{"long id", func(m *Mutation) { m.DocID = strings.Repeat("a", 257) }, CodeInvalidName},
		{"dollar field", func(m *Mutation) { m.Data = map[string]any{"$set": 1.0} }, CodeInvalidField},
		{"dotted field", func(m *Mutation) { m.Data = map[string]any{"a.b": 1.0} }, CodeInvalidField},
		{"empty field", func(m *Mutation) { m.Data = map[string]any{"": 1.0} }, CodeInvalidField},
		{"nested dollar in array", func(m *Mutation) { m.Data = map[string]any{"a": []any{map[string]any{"$x": 1.0}}} }, CodeInvalidField},
		{"reserved _id", func(m *Mutation) { m.Data = map[string]any{"_id": 1.0} }, CodeInvalidField},
		{"reserved star", func(m *Mutation) { m.Data = map[string]any{"*": 1.0} }, CodeInvalidField},
		{"nested _id is fine", func(m *Mutation) { m.Data = map[string]any{"a": map[string]any{"_id": 1.0}} }, ""},
		{"too deep", func(m *Mutation) { m.Data = map[string]any{"d": deep} }, CodeTooDeep},
		{"put without data", func(m *Mutation) { m.Data = nil }, CodeBadRequest},
		{"put with patch ops", func(m *Mutation) { m.Set = map[string]any{"a": 1.0} }, CodeBadRequest},
		{"empty patch", func(m *Mutation) { m.Op, m.Data = conflict.Patch, nil }, CodeBadRequest},
		{"patch field twice", func(m *Mutation) {
			m.Op, m.Data = conflict.Patch, nil
			m.Set = map[string]any{"a": 1.0}
			m.Unset = []string{"a"}
		}, CodeBadRequest},
		{"patch dotted unset", func(m *Mutation) { m.Op, m.Data = conflict.Patch, nil; m.Unset = []string{"a.b"} }, CodeInvalidField},
		{"patch dollar inc", func(m *Mutation) { m.Op, m.Data = conflict.Patch, nil; m.Inc = map[string]float64{"$inc": 1} }, CodeInvalidField},
		{"media ref", func(m *Mutation) { m.Data = map[string]any{"pic": map[string]any{"$media": "0123abcdef"}} }, ""},
		{"media ref deep in an array", func(m *Mutation) {
			m.Data = map[string]any{"a": []any{map[string]any{"b": map[string]any{"$media": "x_y-Z"}}}}
		}, ""},
		{"media ref in patch set and add", func(m *Mutation) {
			m.Op, m.Data = conflict.Patch, nil
			m.Set = map[string]any{"pic": map[string]any{"$media": "m1"}}
			m.Add = map[string][]any{"files": {map[string]any{"$media": "m2"}}}
		}, ""},
		{"media ref as the document", func(m *Mutation) { m.Data = map[string]any{"$media": "m1"} }, CodeInvalidField},
		{"media ref as a set field", func(m *Mutation) {
			m.Op, m.Data = conflict.Patch, nil
			m.Set = map[string]any{"$media": "m1"}
		}, CodeInvalidField},
		{"media ref with another key", func(m *Mutation) {
			m.Data = map[string]any{"pic": map[string]any{"$media": "m1", "alt": "x"}}
		}, CodeInvalidField},
		{"media ref not a string", func(m *Mutation) { m.Data = map[string]any{"pic": map[string]any{"$media": 1.0}} }, CodeBadRequest},
		{"media ref bad id", func(m *Mutation) { m.Data = map[string]any{"pic": map[string]any{"$media": "../etc"}} }, CodeBadRequest},
		{"media ref empty id", func(m *Mutation) { m.Data = map[string]any{"pic": map[string]any{"$media": ""}} }, CodeBadRequest},
		{"other dollar key stays refused", func(m *Mutation) { m.Data = map[string]any{"pic": map[string]any{"$file": "m1"}} }, CodeInvalidField},
		{"delete with data", func(m *Mutation) { m.Op = conflict.Delete }, CodeBadRequest},
		{"unknown op", func(m *Mutation) { m.Op = "merge" }, CodeBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := ok()
			tc.change(&m)
			err := ValidateMutation(&m, Limits{})
			switch {
			case tc.code == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.code != "" && (err == nil || err.Code != tc.code):
				t.Fatalf("err = %v, want %s", err, tc.code)
			}
		})
	}
}

func TestMarshalSetsType(t *testing.T) {
	b, err := Marshal(&Ack{Envelope: Envelope{Rid: 3}})
	if err != nil || !strings.Contains(string(b), `"type":"ack"`) || !strings.Contains(string(b), `"rid":3`) {
		t.Fatalf("%s %v", b, err)
	}
}

func TestMutationMediaRefs(t *testing.T) {
	m := Mutation{
		Data: map[string]any{"a": map[string]any{"$media": "d1"}, "b": []any{1.0, map[string]any{"c": map[string]any{"$media": "d2"}}}},
		PatchOps: conflict.PatchOps{
			Set:    map[string]any{"s": map[string]any{"$media": "s1"}},
			Add:    map[string][]any{"t": {map[string]any{"$media": "a1"}}},
			Remove: map[string][]any{"t": {map[string]any{"$media": "r1"}}},
		},
	}
	got := MutationMediaRefs(&m)
	slices.Sort(got)
	if want := []string{"a1", "d1", "d2", "s1"}; !slices.Equal(got, want) {
		t.Fatalf("MutationMediaRefs = %v, want %v (removed refs need no check)", got, want)
	}
	if _, ok := MediaRef(map[string]any{"$media": "x", "y": 1.0}); ok {
		t.Fatal("an object with a second key is not a reference")
	}
}
