package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/protocol"
)

// manualRegistry configures user_content as manual and everything else as
// lww.
func manualRegistry(t testing.TB) *conflict.Registry {
	t.Helper()
	reg, err := conflict.Build(map[string]conflict.CollectionConfig{
		"user_content": {Resolver: "manual"},
		"*":            {Resolver: "lww"},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// mutation builds a put (data non-nil) or a delete of user_content doc id.
func contentPut(mid, base uint64, id string, data map[string]any) protocol.Mutation {
	return protocol.Mutation{
		ID: mid, Scope: "user:alice", Collection: "user_content", DocID: id, Op: "put",
		Base: base, HLC: hlcNow("d"), Data: data,
	}
}

// received is one server message.
type received struct {
	typ  string
	data []byte
}

// untilAck reads messages up to the ack with rid and returns the ack and
// what came before it.
func (c *client) untilAck(rid uint64) (protocol.Ack, []received) {
	c.t.Helper()
	var before []received
	for {
		typ, data, err := c.next(waitTimeout)
		if err != nil {
			c.t.Fatalf("waiting for ack %d: %v (after %d messages)", rid, err, len(before))
		}
		if typ != protocol.TypeAck {
			before = append(before, received{typ, data})
			continue
		}
		var a protocol.Ack
		if err := json.Unmarshal(data, &a); err != nil {
			c.t.Fatal(err)
		}
		if a.Rid != rid {
			c.t.Fatalf("ack rid %d, want %d", a.Rid, rid)
		}
		return a, before
	}
}

// expectConflict reads the next message, which must be a conflict
// announcement with the given status.
func (c *client) expectConflict(status storage.ConflictStatus) protocol.Conflict {
	c.t.Helper()
	var m protocol.ConflictMsg
	c.expect(protocol.TypeConflict, &m)
	if m.Rid != 0 || m.Conflict.Status != string(status) {
		c.t.Fatalf("conflict message %+v, want status %s and no rid", m, status)
	}
	return m.Conflict
}

// types lists the types of messages.
func types(ms []received) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.typ
	}
	return out
}

func (h *harness) httpGet(t testing.TB, path, tok string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, h.httpURL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, data
}

// listConflicts GETs a conflict page and decodes it.
func (h *harness) listConflicts(t testing.TB, path, tok string) httpConflictList {
	t.Helper()
	status, data := h.httpGet(t, path, tok)
	if status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, status, data)
	}
	var l httpConflictList
	if err := json.Unmarshal(data, &l); err != nil || l.Conflicts == nil || !strings.Contains(string(data), `"next":`) {
		t.Fatalf("GET %s: %s (%v)", path, data, err)
	}
	return l
}

func ids(cs []protocol.Conflict) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.ID
	}
	return out
}

// expectHTTPError requires an error answer with status and code.
func expectHTTPError(t testing.TB, what string, status int, data []byte, wantStatus int, code protocol.Code) {
	t.Helper()
	var e protocol.ErrorMsg
	if err := json.Unmarshal(data, &e); err != nil || status != wantStatus || e.Type != protocol.TypeError || e.Code != code {
		t.Fatalf("%s: got %d %s, want %d %s", what, status, data, wantStatus, code)
	}
}

// TestManualConflictFlow drives a `manual` collection end to end: two
// devices edit the same version, the second gets the conflict outcome,
// every device of the scope hears of it (live, or in a later welcome), the
// HTTP API lists and pages it, and resolutions over WebSocket and HTTP
// apply the chosen state and close the records for everyone.
func TestManualConflictFlow(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withResolvers(manualRegistry(t)))
	a, _ := h.open(t, "alice", "a", "user:alice")
	b, _ := h.open(t, "alice", "b", "user:alice")
	eventually(t, waitTimeout, "two subscribers", func() bool { return h.srv.hub.subscribers("user:alice") == 2 })
	tok := token(t, "alice")
	ctx := context.Background()

	// conflictOn makes a conflict on doc id: A creates it (version 1), B
	// receives it, A updates it (version 2), then B pushes an update made
	// on version 1. It returns the conflict as announced to B.
	aMid, bMid := uint64(0), uint64(0)
	conflictOn := func(id string) protocol.Conflict {
		t.Helper()
		aMid++
		a.push(aMid, contentPut(aMid, 0, id, map[string]any{"text": "v1"}))
		if ack, _ := a.untilAck(aMid); ack.Results[0].Outcome != storage.Applied || ack.Results[0].Version != 1 {
			t.Fatalf("create %s: %+v", id, ack.Results[0])
		}
		b.expect(protocol.TypeChanges, nil)
		aMid++
		a.push(aMid, contentPut(aMid, 1, id, map[string]any{"text": "from a"}))
		if ack, _ := a.untilAck(aMid); ack.Results[0].Outcome != storage.Applied || ack.Results[0].Version != 2 {
			t.Fatalf("update %s by A: %+v", id, ack.Results[0])
		}
		b.expect(protocol.TypeChanges, nil)

		bMid++
		b.push(bMid, contentPut(bMid, 1, id, map[string]any{"text": "from b"}))
		ack, before := b.untilAck(bMid)
		res := ack.Results[0]
		if res.Outcome != storage.Conflict || res.Conflict == "" || res.Seq != 0 {
			t.Fatalf("B's concurrent update of %s: %+v", id, res)
		}
		// The pusher hears of the record before its ack, like any device
		// of the scope; no changes: nothing was applied.
		if !slices.Equal(types(before), []string{protocol.TypeConflict}) {
			t.Fatalf("B got %v before its ack", types(before))
		}
		var bm protocol.ConflictMsg
		if err := json.Unmarshal(before[0].data, &bm); err != nil {
			t.Fatal(err)
		}
		if bm.Conflict.ID != res.Conflict || bm.Conflict.Status != string(storage.ConflictOpen) {
			t.Fatalf("B's conflict message %+v, ack names %q", bm.Conflict, res.Conflict)
		}
		if am := a.expectConflict(storage.ConflictOpen); am.ID != res.Conflict {
			t.Fatalf("A heard of %q, want %q", am.ID, res.Conflict)
		}
		return bm.Conflict
	}

	c1 := conflictOn("d1")
	if c1.Scope != "user:alice" || c1.Collection != "user_content" || c1.DocID != "d1" || c1.Base != 1 ||
		c1.TheirsVersion != 2 || c1.Theirs["text"] != "from a" || c1.BaseState["text"] != "v1" ||
		c1.User != "alice" || c1.Device != "b" || c1.MutationID != 1 || c1.Created == 0 || c1.Closed != 0 {
		t.Fatalf("conflict record %+v", c1)
	}
	var mine protocol.Mutation
	if err := json.Unmarshal(c1.Mine, &mine); err != nil || mine.Data["text"] != "from b" || mine.Base != 1 {
		t.Fatalf("mine = %s (%v)", c1.Mine, err)
	}
	// Nothing was applied: the document is A's version 2.
	if latest, err := h.store.Latest(ctx, "user:alice", "user_content", "d1"); err != nil || latest.Version != 2 || latest.State["text"] != "from a" {
		t.Fatalf("d1 = %+v (%v)", latest, err)
	}
	c2 := conflictOn("d2")
	c3 := conflictOn("d3")

	// A device that connects later gets the open records in its welcome.
	late, w := h.open(t, "alice", "c", "user:alice")
	if got := ids(w.Conflicts); len(got) != 3 || !slices.Contains(got, c1.ID) || !slices.Contains(got, c2.ID) || !slices.Contains(got, c3.ID) {
		t.Fatalf("welcome conflicts = %v, want %s %s %s", got, c1.ID, c2.ID, c3.ID)
	}
	for _, c := range w.Conflicts {
		if c.Status != string(storage.ConflictOpen) || c.Scope != "user:alice" {
			t.Fatalf("welcome conflict %+v", c)
		}
	}
	// A device of another user sees none of them.
	if _, wb := h.open(t, "bob", "phone", "user:bob"); len(wb.Conflicts) != 0 {
		t.Fatalf("bob's welcome has conflicts %+v", wb.Conflicts)
	}

	// The HTTP list, with the scope plain or URL-escaped.
	all := h.listConflicts(t, "/v1/scopes/user:alice/conflicts", tok)
	if len(all.Conflicts) != 3 || all.Next != "" {
		t.Fatalf("list = %v next %q", ids(all.Conflicts), all.Next)
	}
	if esc := h.listConflicts(t, "/v1/scopes/user%3Aalice/conflicts?status=open", tok); !slices.Equal(ids(esc.Conflicts), ids(all.Conflicts)) {
		t.Fatalf("escaped scope lists %v, want %v", ids(esc.Conflicts), ids(all.Conflicts))
	}
	// Paging: a full page names its last record as next.
	p1 := h.listConflicts(t, "/v1/scopes/user:alice/conflicts?limit=2", tok)
	if len(p1.Conflicts) != 2 || p1.Next != p1.Conflicts[1].ID {
		t.Fatalf("page 1 = %v next %q", ids(p1.Conflicts), p1.Next)
	}
	p2 := h.listConflicts(t, "/v1/scopes/user:alice/conflicts?limit=2&after="+p1.Next, tok)
	if len(p2.Conflicts) != 1 || p2.Next != "" {
		t.Fatalf("page 2 = %v next %q", ids(p2.Conflicts), p2.Next)
	}
	if got := append(ids(p1.Conflicts), ids(p2.Conflicts)...); !slices.Equal(got, ids(all.Conflicts)) {
		t.Fatalf("pages %v, unpaged %v", got, ids(all.Conflicts))
	}
	var walked []string
	for after, n := "", 0; ; n++ {
		p := h.listConflicts(t, "/v1/scopes/user:alice/conflicts?limit=1&after="+after, tok)
		walked = append(walked, ids(p.Conflicts)...)
		if p.Next == "" {
			break
		}
		if n > 5 {
			t.Fatal("paging does not end")
		}
		after = p.Next
	}
	if !slices.Equal(walked, ids(all.Conflicts)) {
		t.Fatalf("limit=1 walk %v, unpaged %v", walked, ids(all.Conflicts))
	}

	// B resolves d1 over WebSocket with a merged state: applied; every
	// device gets the changes, then the record closing.
	bMid++
	b.push(bMid, protocol.Mutation{
		ID: bMid, Scope: "user:alice", Collection: "user_content", DocID: "d1", Op: "put", Base: 2,
		HLC: hlcNow("d"), Data: map[string]any{"text": "from a and b"}, Resolves: c1.ID,
	})
	ack, before := b.untilAck(bMid)
	if r := ack.Results[0]; r.Outcome != storage.Applied || r.Version != 3 || r.Seq == 0 {
		t.Fatalf("resolution = %+v", r)
	}
	if !slices.Equal(types(before), []string{protocol.TypeChanges, protocol.TypeConflict}) {
		t.Fatalf("B got %v before its ack", types(before))
	}
	for name, cl := range map[string]*client{"a": a, "c": late} {
		var ch protocol.Changes
		cl.expect(protocol.TypeChanges, &ch)
		if len(ch.Entries) != 1 || ch.Entries[0].DocID != "d1" || ch.Entries[0].State["text"] != "from a and b" {
			t.Fatalf("%s: changes %+v", name, ch)
		}
		if rc := cl.expectConflict(storage.ConflictResolved); rc.ID != c1.ID || rc.Closed == 0 {
			t.Fatalf("%s: resolved %+v", name, rc)
		}
	}
	if latest, err := h.store.Latest(ctx, "user:alice", "user_content", "d1"); err != nil || latest.Version != 3 || latest.State["text"] != "from a and b" {
		t.Fatalf("d1 = %+v (%v)", latest, err)
	}

	// The web app resolves d2 over HTTP with the chosen state.
	resolve := func(id string, body any) (int, []byte) {
		t.Helper()
		status, _, data := h.httpPost(t, "/v1/scopes/user:alice/conflicts/"+id+"/resolve", tok, mustJSON(t, body))
		return status, data
	}
	status, data := resolve(c2.ID, map[string]any{"device": "web", "mid": 1, "state": map[string]any{"text": "chosen", "n": 1}})
	// The engine bases the resolution on the version the person saw: it
	// is applied, not reported as a merge with itself.
	var hack protocol.Ack
	if err := json.Unmarshal(data, &hack); status != http.StatusOK || err != nil || hack.Type != protocol.TypeAck ||
		len(hack.Results) != 1 || hack.Results[0].Outcome != storage.Applied || hack.Results[0].MutationID != 1 || hack.Results[0].Version != 3 {
		t.Fatalf("HTTP resolve: %d %s", status, data)
	}
	for name, cl := range map[string]*client{"a": a, "b": b, "c": late} {
		var ch protocol.Changes
		cl.expect(protocol.TypeChanges, &ch)
		if en := ch.Entries[0]; en.DocID != "d2" || en.State["text"] != "chosen" || en.Device != "web" {
			t.Fatalf("%s: changes %+v", name, ch)
		}
		if rc := cl.expectConflict(storage.ConflictResolved); rc.ID != c2.ID {
			t.Fatalf("%s: resolved %+v", name, rc)
		}
	}
	if latest, err := h.store.Latest(ctx, "user:alice", "user_content", "d2"); err != nil || latest.State["text"] != "chosen" || latest.State["n"] != 1.0 {
		t.Fatalf("d2 = %+v (%v)", latest, err)
	}

	// d3 is resolved by deleting the document; the escaped path works too.
	status, _, data = h.httpPost(t, "/v1/scopes/user%3Aalice/conflicts/"+c3.ID+"/resolve", tok,
		[]byte(`{"device":"web","mid":2,"delete":true}`))
	if err := json.Unmarshal(data, &hack); status != http.StatusOK || err != nil || hack.Results[0].Outcome != storage.Applied {
		t.Fatalf("HTTP delete resolve: %d %s", status, data)
	}
	if latest, err := h.store.Latest(ctx, "user:alice", "user_content", "d3"); err != nil || !latest.Deleted {
		t.Fatalf("d3 = %+v (%v)", latest, err)
	}
	// Resending the same request is answered from the receipt.
	status, _, data = h.httpPost(t, "/v1/scopes/user:alice/conflicts/"+c3.ID+"/resolve", tok,
		[]byte(`{"device":"web","mid":2,"delete":true}`))
	if err := json.Unmarshal(data, &hack); status != http.StatusOK || err != nil || !hack.Results[0].Replayed {
		t.Fatalf("HTTP resolve replay: %d %s", status, data)
	}
	for _, cl := range []*client{a, b, late} {
		cl.expect(protocol.TypeChanges, nil)
		cl.expectConflict(storage.ConflictResolved)
	}

	// Resolving a closed record again is a bad request, over HTTP and
	// over WebSocket; nothing is written.
	head := h.head("user:alice")
	status, data = resolve(c1.ID, map[string]any{"device": "web", "mid": 3, "state": map[string]any{"text": "again"}})
	expectHTTPError(t, "resolve again", status, data, http.StatusBadRequest, protocol.CodeBadRequest)
	bMid++
	b.push(bMid, protocol.Mutation{
		ID: bMid, Scope: "user:alice", Collection: "user_content", DocID: "d2", Op: "put", Base: 3,
		HLC: hlcNow("d"), Data: map[string]any{"text": "again"}, Resolves: c2.ID,
	})
	if r := b.expectAck(bMid).Results[0]; r.Outcome != storage.Rejected || r.Code != protocol.CodeBadRequest {
		t.Fatalf("WebSocket resolve again: %+v", r)
	}
	if h.head("user:alice") != head {
		t.Fatal("a rejected resolution was written")
	}

	// Nothing is open any more; status=all still lists the closed records.
	if open := h.listConflicts(t, "/v1/scopes/user:alice/conflicts", tok); len(open.Conflicts) != 0 || open.Next != "" {
		t.Fatalf("open after resolving = %v", ids(open.Conflicts))
	}
	closed := h.listConflicts(t, "/v1/scopes/user:alice/conflicts?status=all", tok)
	if !slices.Equal(ids(closed.Conflicts), ids(all.Conflicts)) {
		t.Fatalf("status=all = %v, want %v", ids(closed.Conflicts), ids(all.Conflicts))
	}
	for _, c := range closed.Conflicts {
		if c.Status != string(storage.ConflictResolved) || c.Closed == 0 {
			t.Fatalf("closed record %+v", c)
		}
	}
	if _, w := h.open(t, "alice", "d", "user:alice"); len(w.Conflicts) != 0 {
		t.Fatalf("welcome after resolving has %v", ids(w.Conflicts))
	}

	// No stray messages reached the devices.
	a.ping(900)
	late.ping(901)
	b.ping(902)
}

// TestConflictAPIErrors: auth, scope access, unknown records and bad
// requests of the conflict endpoints.
func TestConflictAPIErrors(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withResolvers(manualRegistry(t)))
	tok := token(t, "alice")
	good := `{"device":"web","mid":1,"state":{"text":"x"}}`
	tests := []struct {
		name, method, path, token, body string
		status                          int
		code                            protocol.Code
	}{
		{"list without token", "GET", "/v1/scopes/user:alice/conflicts", "", "", 401, protocol.CodeUnauthorized},
		{"list with a bad token", "GET", "/v1/scopes/user:alice/conflicts", "nope", "", 401, protocol.CodeUnauthorized},
		{"list a foreign scope", "GET", "/v1/scopes/user:bob/conflicts", tok, "", 403, protocol.CodeForbiddenScope},
		{"list an ungranted space", "GET", "/v1/scopes/space:team/conflicts", tok, "", 403, protocol.CodeForbiddenScope},
		{"list an invalid scope", "GET", "/v1/scopes/alice/conflicts", tok, "", 400, protocol.CodeInvalidName},
		{"list a bad status", "GET", "/v1/scopes/user:alice/conflicts?status=closed", tok, "", 400, protocol.CodeBadRequest},
		{"list a bad limit", "GET", "/v1/scopes/user:alice/conflicts?limit=ten", tok, "", 400, protocol.CodeBadRequest},
		{"list a zero limit", "GET", "/v1/scopes/user:alice/conflicts?limit=0", tok, "", 400, protocol.CodeBadRequest},
		{"resolve without token", "POST", "/v1/scopes/user:alice/conflicts/c1/resolve", "", good, 401, protocol.CodeUnauthorized},
		{"resolve in a foreign scope", "POST", "/v1/scopes/user:bob/conflicts/c1/resolve", tok, good, 403, protocol.CodeForbiddenScope},
		{"resolve an unknown id", "POST", "/v1/scopes/user:alice/conflicts/cnope/resolve", tok, good, 404, protocol.CodeNotFound},
		{"resolve with malformed JSON", "POST", "/v1/scopes/user:alice/conflicts/c1/resolve", tok, `{"device":`, 400, protocol.CodeMalformed},
		{"resolve without mid", "POST", "/v1/scopes/user:alice/conflicts/c1/resolve", tok, `{"device":"web","state":{}}`, 400, protocol.CodeBadRequest},
		{"resolve without state or delete", "POST", "/v1/scopes/user:alice/conflicts/c1/resolve", tok, `{"device":"web","mid":1}`, 400, protocol.CodeBadRequest},
		{"resolve with state and delete", "POST", "/v1/scopes/user:alice/conflicts/c1/resolve", tok,
			`{"device":"web","mid":1,"state":{},"delete":true}`, 400, protocol.CodeBadRequest},
		{"resolve without device", "POST", "/v1/scopes/user:alice/conflicts/c1/resolve", tok, `{"mid":1,"state":{}}`, 400, protocol.CodeBadRequest},
		{"resolve with another device's token", "POST", "/v1/scopes/user:alice/conflicts/c1/resolve",
			token(t, "alice", tokDevice("phone")), good, 401, protocol.CodeUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var (
				status int
				hdr    http.Header
				data   []byte
			)
			if tt.method == "GET" {
				status, data = h.httpGet(t, tt.path, tt.token)
			} else {
				status, hdr, data = h.httpPost(t, tt.path, tt.token, []byte(tt.body))
			}
			expectHTTPError(t, tt.name, status, data, tt.status, tt.code)
			if status == 401 && hdr != nil && hdr.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
		})
	}

	// Space ids may hold '/' and '+': the escaped path reaches the right
	// scope (a lost '+' or a split at '/' would be a 403 or a 404).
	spaceTok := token(t, "alice", tokSpaces("team/x", "a+b"))
	for _, path := range []string{"/v1/scopes/space:team%2Fx/conflicts", "/v1/scopes/space:a+b/conflicts", "/v1/scopes/space%3Aa%2Bb/conflicts"} {
		if l := h.listConflicts(t, path, spaceTok); len(l.Conflicts) != 0 {
			t.Fatalf("%s: %v", path, ids(l.Conflicts))
		}
	}
	// A limit above the cap is capped, not refused.
	h.listConflicts(t, "/v1/scopes/user:alice/conflicts?limit=100000", tok)

	if got := counter(t, h.srv.metrics.httpRequests.WithLabelValues("resolve", "404")); got != 1 {
		t.Fatalf("http_requests_total{resolve,404} = %v", got)
	}
}

// TestUnknownCollectionRejected: with a collections config that has no
// "*" entry, a mutation of an unlisted collection is rejected with
// unknown_collection and nothing is written.
func TestUnknownCollectionRejected(t *testing.T) {
	t.Parallel()
	reg, err := conflict.Build(map[string]conflict.CollectionConfig{"user_content": {Resolver: "manual"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, withResolvers(reg))
	c, _ := h.open(t, "alice", "phone")
	c.push(1, put(1, "user:alice", "notes", "n1", map[string]any{"x": 1.0}), contentPut(2, 0, "d1", map[string]any{"text": "ok"}))
	ack := c.expectAck(1)
	if r := ack.Results[0]; r.Outcome != storage.Rejected || r.Code != protocol.CodeUnknownCollection {
		t.Fatalf("notes: %+v", r)
	}
	if r := ack.Results[1]; r.Outcome != storage.Applied {
		t.Fatalf("user_content: %+v", r)
	}
	if n := h.head("user:alice"); n != 1 {
		t.Fatalf("head = %d, want 1", n)
	}
}
