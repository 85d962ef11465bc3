package protocol

import (
	"bytes"
	"testing"
)

// FuzzDecode checks, for any input, that Decode never panics, fails only
// with malformed or unknown_type, and that what it accepts re-encodes to
// JSON without a raw newline (the gateway coalesces messages into
// newline-delimited frames and clients split on '\n') and reaches a fixed
// point: Marshal(Decode(Marshal(m))) == Marshal(m).
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		`{"type":"hello","rid":1,"protocol":1,"token":"t","device":"phone","scopes":[{"scope":"user:a","since":3}],"session":"s","client":{"platform":"ios"}}`,
		`{"type":"push","rid":2,"mutations":[{"mid":18446744073709551615,"scope":"user:a","col":"notes","id":"n1","op":"put","base":0,"hlc":"0000000000001-000000-d","data":{"a":1.5,"b":[1,{"c":1e308}],"d":"x\ny"}}]}`,
		`{"type":"push","mutations":[{"mid":1,"scope":"space:s","col":"c","id":"i","op":"patch","set":{"a":1},"unset":["b"],"inc":{"n":2},"add":{"tags":["x",1]},"remove":{"tags":[2]}}]}`,
		`{"type":"pull","rid":3,"scope":"user:a","since":10,"limit":2}`,
		`{"type":"auth","token":"x"}`,
		`{"type":"ping","rid":4}`,
		`{"type":"app_state","state":"background"}`,
		`{"type":"join","rid":6,"scope":"space:t","room":"doc:1","state":{"cursor":[1,2]}}`,
		`{"type":"room_state","scope":"space:t","room":"doc:1","state":{"sel":{"a":1,
"b":2}}}`,
		`{"type":"typing","scope":"space:t","room":"doc:1"}`,
		`{"type":"leave","rid":7,"scope":"space:t","room":"doc:1"}`,
		`{"type":"checkpoint","scopes":{"user:a":18446744073709551615}}`,
		`{"type":"nope"}`,
		`{"rid":5}`,
		`{"type":"push","mutations":[{"data":{"n":1e400}}]}`,
		`{"type":"pull","since":-1}`,
		`[]`, `null`, `{`, `"\u0000"`, "{\"type\":\"ping\"}\n{\"type\":\"ping\"}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, perr := Decode(data)
		if perr != nil {
			if m != nil {
				t.Fatalf("Decode returned both a message and an error")
			}
			if perr.Code != CodeMalformed && perr.Code != CodeUnknownType {
				t.Fatalf("Decode failed with code %s", perr.Code)
			}
			return
		}
		switch m.Kind() {
		case TypeHello, TypePush, TypePull, TypeAuth, TypePing,
			TypeAppState, TypeJoin, TypeLeave, TypeRoomState, TypeTyping, TypeCheckpoint:
		default:
			t.Fatalf("Decode returned a %s, which is not a client message", m.Kind())
		}
		out, err := Marshal(m)
		if err != nil {
			t.Fatalf("re-encoding a decoded %s: %v", m.Kind(), err)
		}
		if bytes.IndexByte(out, '\n') >= 0 {
			t.Fatalf("encoded message contains a raw newline: %q", out)
		}
		m2, perr := Decode(out)
		if perr != nil {
			t.Fatalf("decoding the re-encoded message %q: %v", out, perr)
		}
		out2, err := Marshal(m2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, out2) {
			t.Fatalf("not a fixed point:\n%s\n%s", out, out2)
		}
	})
}
