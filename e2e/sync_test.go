package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/internal/client"
	"github.com/syncgate/syncgate/sync/protocol"
)

const scope = "user:alice"

func connect(t *testing.T, n *node, device string) *client.Device {
	t.Helper()
	d := client.New(device, n.wsURL(), n.token("alice", "--device", device), scope)
	if _, err := d.Connect(ctxT(t, 30*time.Second)); err != nil {
		t.Fatalf("%s connect: %v", device, err)
	}
	t.Cleanup(d.Disconnect)
	return d
}

func flush(t *testing.T, d *client.Device) {
	t.Helper()
	if err := d.Flush(ctxT(t, 60*time.Second), 200); err != nil {
		t.Fatalf("%s flush: %v", d.ID, err)
	}
}

func waitCheckpoint(t *testing.T, d *client.Device, seq uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for d.Checkpoint(scope) < seq {
		if time.Now().After(deadline) {
			t.Fatalf("%s checkpoint %d, want %d", d.ID, d.Checkpoint(scope), seq)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOfflineEditsConverge is the headline scenario: the phone goes
// offline and makes 1,000 edits, the laptop edits some of the same
// documents, the phone reconnects, and both devices hold the same data with
// every increment counted exactly once.
func TestOfflineEditsConverge(t *testing.T) {
	n := startNode(t, t.TempDir())
	phone, laptop := connect(t, n, "phone"), connect(t, n, "laptop")

	for k := 0; k < 100; k++ {
		laptop.Put(scope, "todos", fmt.Sprintf("t%d", k), map[string]any{"title": "seed", "count": 0.0})
	}
	flush(t, laptop)
	waitCheckpoint(t, phone, 100)

	phone.Disconnect()
	lastTitle := map[int]string{}
	for i := 0; i < 1000; i++ {
		k := i % 50
		id := fmt.Sprintf("t%d", k)
		if i%2 == 0 {
			phone.Patch(scope, "todos", id, conflict.PatchOps{Inc: map[string]float64{"count": 1}})
		} else {
			title := fmt.Sprintf("phone-%d", i)
			phone.Patch(scope, "todos", id, conflict.PatchOps{Set: map[string]any{"title": title}})
			lastTitle[k] = title
		}
	}
	if phone.Pending() != 1000 {
		t.Fatalf("phone queue holds %d, want 1000", phone.Pending())
	}
	time.Sleep(5 * time.Millisecond) // the laptop's edits are later in wall time
	for k := 0; k < 20; k++ {
		laptop.Patch(scope, "todos", fmt.Sprintf("t%d", k), conflict.PatchOps{Set: map[string]any{"title": "laptop"}})
	}
	for k := 0; k < 10; k++ {
		laptop.Patch(scope, "todos", fmt.Sprintf("t%d", k), conflict.PatchOps{Inc: map[string]float64{"count": 2}})
	}
	for _, k := range []int{45, 95, 96, 97, 98, 99} {
		laptop.Delete(scope, "todos", fmt.Sprintf("t%d", k))
	}
	flush(t, laptop)

	if _, err := phone.Connect(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	flush(t, phone)
	for mid := uint64(1); mid <= 1000; mid++ {
		r, ok := phone.Result(mid)
		if !ok || (r.Outcome != "applied" && r.Outcome != "merged") {
			t.Fatalf("phone mutation %d: %+v (acked=%v)", mid, r, ok)
		}
	}
	auditor := connect(t, n, "auditor") // a fresh device: the server's truth
	head := auditor.Checkpoint(scope)
	waitCheckpoint(t, phone, head)
	waitCheckpoint(t, laptop, head)

	want := auditor.Replica(scope)
	for _, d := range []*client.Device{phone, laptop} {
		if got := d.Replica(scope); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s replica differs from the server:\n got %v\nwant %v", d.ID, got, want)
		}
	}
	for k := 0; k < 100; k++ {
		doc, ok := want[fmt.Sprintf("todos/t%d", k)]
		deleted := k == 45 || k >= 95
		if ok == deleted {
			t.Fatalf("t%d present=%v, want deleted=%v", k, ok, deleted)
		}
		if deleted {
			continue
		}
		wantCount := 0.0
		if k < 50 && k%2 == 0 { // i even and i%50 == k: only even k get increments
			wantCount = 20
		}
		if k < 10 {
			wantCount += 2
		}
		wantTitle := "seed"
		switch {
		case k < 20:
			wantTitle = "laptop"
		case k < 50 && k%2 == 1:
			wantTitle = lastTitle[k]
		}
		if doc["count"] != wantCount || doc["title"] != wantTitle {
			t.Errorf("t%d = %v, want count %v title %q", k, doc, wantCount, wantTitle)
		}
	}
}

// TestCatchUpInOrder: a device offline during 1,000 changes catches up in
// order with no gaps, over WebSocket and over the HTTP fallback.
func TestCatchUpInOrder(t *testing.T) {
	n := startNode(t, t.TempDir())
	phone, laptop := connect(t, n, "phone"), connect(t, n, "laptop")
	phone.Disconnect()
	for i := 0; i < 1000; i++ {
		laptop.Put(scope, "notes", fmt.Sprintf("n%d", i%400), map[string]any{"i": float64(i)})
	}
	flush(t, laptop)
	if _, err := phone.Connect(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if cp := phone.Checkpoint(scope); cp != 1000 {
		t.Fatalf("phone checkpoint %d after catch-up, want 1000", cp)
	}
	if !reflect.DeepEqual(phone.Replica(scope), laptop.Replica(scope)) {
		t.Fatal("replicas differ after catch-up")
	}

	tok := n.token("alice", "--device", "phone")
	var since, seen uint64
	for pages := 0; ; pages++ {
		body, _ := json.Marshal(map[string]any{"device": "phone", "scope": scope, "since": since, "limit": 128})
		req, _ := http.NewRequest("POST", "http://"+n.addr+"/v1/sync/pull", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var page protocol.Changes
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || page.Type != protocol.TypeChanges {
			t.Fatalf("page %d: status %d err %v %+v", pages, resp.StatusCode, err, page)
		}
		if page.From != since {
			t.Fatalf("page %d covers from %d, asked %d", pages, page.From, since)
		}
		for _, e := range page.Entries {
			if e.Seq != seen+1 {
				t.Fatalf("seq %d after %d: gap or disorder", e.Seq, seen)
			}
			seen = e.Seq
		}
		since = page.To
		if !page.More {
			break
		}
	}
	if seen != 1000 || since != 1000 {
		t.Fatalf("read through seq %d (to %d), want 1000", seen, since)
	}
}

// TestRestartKeepsEverything: SIGTERM drains (clients get 4010), and after a
// restart on the same data dir the data, the device's mutation mark and its
// checkpoint are all still valid.
func TestRestartKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir)
	phone := connect(t, n, "phone")
	for i := 0; i < 50; i++ {
		phone.Put(scope, "todos", fmt.Sprintf("t%d", i), map[string]any{"i": float64(i)})
	}
	phone.Patch(scope, "todos", "t0", conflict.PatchOps{Inc: map[string]float64{"n": 1}})
	flush(t, phone)
	waitCheckpoint(t, phone, 51)
	before := phone.Replica(scope)

	start := time.Now()
	n.stop(10 * time.Second)
	select {
	case <-phone.Closed():
	case <-time.After(5 * time.Second):
		t.Fatal("phone not disconnected by the drain")
	}
	if code := phone.CloseCode(); code != protocol.CloseShutdown {
		t.Fatalf("drain close code %d, want %d", code, protocol.CloseShutdown)
	}
	t.Logf("drained and exited in %s", time.Since(start))

	n2 := startNode(t, dir)
	phone.URL = n2.wsURL()
	w, err := phone.Connect(ctxT(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if w.LastMutation != 51 || len(w.Scopes) != 1 || w.Scopes[0].Head != 51 || w.Scopes[0].Reset {
		t.Fatalf("welcome after restart = %+v", w)
	}
	if got := phone.Replica(scope); !reflect.DeepEqual(got, before) {
		t.Fatalf("replica changed across restart")
	}
	// A replay of an old mutation is answered from its receipt.
	ack, err := phone.PushRaw(ctxT(t, 10*time.Second), []protocol.Mutation{{
		ID: 51, Scope: scope, Collection: "todos", DocID: "t0", Op: conflict.Patch,
		HLC: "1763800000000-000000-phone", PatchOps: conflict.PatchOps{Inc: map[string]float64{"n": 1}},
	}})
	if err != nil || !ack.Results[0].Replayed || ack.Results[0].Seq != 51 {
		t.Fatalf("replay after restart: %+v %v", ack, err)
	}
	fresh := connect(t, n2, "laptop")
	if n := fresh.Replica(scope)["todos/t0"]["n"]; n != 1.0 {
		t.Fatalf("counter after replay = %v, want 1", n)
	}
}

// TestResetBehindHorizon: compaction purges a tombstone the offline phone
// never saw; on reconnect the phone is told to reset, re-downloads the scope,
// keeps its unsent edit, and ends with the server's state.
func TestResetBehindHorizon(t *testing.T) {
	n := startNodeEnv(t, t.TempDir(), []string{"SYNCGATE_HISTORY_RETENTION=1s", "SYNCGATE_HISTORY_COMPACT_EVERY=500ms"})
	phone, laptop := connect(t, n, "phone"), connect(t, n, "laptop")
	for k := 0; k < 5; k++ {
		laptop.Put(scope, "todos", fmt.Sprintf("t%d", k), map[string]any{"v": 1.0})
	}
	flush(t, laptop)
	waitCheckpoint(t, phone, 5)
	phone.Disconnect()
	phone.Put(scope, "todos", "mine", map[string]any{"offline": true}) // unsent across the reset

	laptop.Delete(scope, "todos", "t1") // seq 6: the tombstone the phone will miss
	laptop.Patch(scope, "todos", "t2", conflict.PatchOps{Set: map[string]any{"v": 2.0}})
	flush(t, laptop)
	time.Sleep(2500 * time.Millisecond)                        // past retention, and a compaction pass ran
	laptop.Put(scope, "todos", "t9", map[string]any{"v": 9.0}) // a new head, so the tombstone is not the head
	flush(t, laptop)
	time.Sleep(1500 * time.Millisecond)

	w, err := phone.Connect(ctxT(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if !w.Scopes[0].Reset || w.Scopes[0].Horizon < 6 {
		t.Fatalf("welcome scope = %+v, want reset with horizon >= 6", w.Scopes[0])
	}
	if _, ok := phone.Replica(scope)["todos/t1"]; ok {
		t.Fatal("phone still holds t1, deleted while it was offline")
	}
	if _, ok := phone.Replica(scope)["todos/mine"]; !ok {
		t.Fatal("the unsent offline edit was lost by the reset")
	}
	flush(t, phone)
	auditor := connect(t, n, "auditor")
	waitCheckpoint(t, phone, auditor.Checkpoint(scope))
	if got, want := phone.Replica(scope), auditor.Replica(scope); !reflect.DeepEqual(got, want) {
		t.Fatalf("after reset:\n got %v\nwant %v", got, want)
	}
	if got := auditor.Replica(scope)["todos/t2"]["v"]; got != 2.0 {
		t.Fatalf("t2 = %v", got)
	}
}

// TestCollectionRulesOverWebSocket runs the shipped examples/collections.yaml:
// a phone and a laptop go offline, each edits reading progress, bookmarks
// and user content, both reconnect, and each collection ends by its rule.
func TestCollectionRulesOverWebSocket(t *testing.T) {
	n := startNode(t, t.TempDir(), "--config", "../examples/collections.yaml")
	phone, laptop := connect(t, n, "phone"), connect(t, n, "laptop")
	laptop.Put(scope, "reading_progress", "book1", map[string]any{"progress": 10.0, "chapter": "1"})
	laptop.Put(scope, "bookmarks", "book1", map[string]any{"items": []any{"p1"}})
	laptop.Put(scope, "user_content", "note1", map[string]any{"text": "first draft"})
	laptop.Put(scope, "user_preferences", "prefs", map[string]any{"theme": "light", "font": 12.0})
	flush(t, laptop)
	waitCheckpoint(t, phone, 4)

	phone.Disconnect()
	laptop.Disconnect()
	// Offline, the phone reads further but the laptop's later sync carries
	// a lower page; both add bookmarks and one removes the seed; both edit
	// the note; preferences differ per field.
	phone.Patch(scope, "reading_progress", "book1", conflict.PatchOps{Set: map[string]any{"progress": 80.0}})
	phone.Patch(scope, "bookmarks", "book1", conflict.PatchOps{Add: map[string][]any{"items": {"p80"}}, Remove: map[string][]any{"items": {"p1"}}})
	phone.Put(scope, "user_content", "note1", map[string]any{"text": "phone rewrite"})
	phone.Patch(scope, "user_preferences", "prefs", conflict.PatchOps{Set: map[string]any{"theme": "dark"}})
	time.Sleep(5 * time.Millisecond)
	laptop.Patch(scope, "reading_progress", "book1", conflict.PatchOps{Set: map[string]any{"progress": 35.0, "chapter": "3"}})
	laptop.Patch(scope, "bookmarks", "book1", conflict.PatchOps{Add: map[string][]any{"items": {"p35"}}})
	laptop.Put(scope, "user_content", "note1", map[string]any{"text": "laptop rewrite"})
	laptop.Patch(scope, "user_preferences", "prefs", conflict.PatchOps{Set: map[string]any{"font": 14.0}})

	for _, d := range []*client.Device{phone, laptop} {
		if _, err := d.Connect(ctxT(t, 30*time.Second)); err != nil {
			t.Fatal(err)
		}
		flush(t, d)
	}
	// The laptop synced second: its note edit was concurrent with the
	// phone's, so the manual rule kept the phone's and opened a conflict.
	r, _ := laptop.Result(7) // mids 1-4 seeded the docs; 5-8 are the offline edits
	if r.Outcome != "conflict" || r.Conflict == "" {
		t.Fatalf("laptop's concurrent note edit = %+v, want a conflict", r)
	}
	auditor := connect(t, n, "auditor")
	waitCheckpoint(t, phone, auditor.Checkpoint(scope))
	waitCheckpoint(t, laptop, auditor.Checkpoint(scope))
	state := auditor.Replica(scope)
	for _, d := range []*client.Device{phone, laptop} {
		if got := d.Replica(scope); !reflect.DeepEqual(got, state) {
			t.Fatalf("%s differs from the server:\n got %v\nwant %v", d.ID, got, state)
		}
	}
	if got := state["reading_progress/book1"]; got["progress"] != 80.0 || got["chapter"] != "3" {
		t.Errorf("reading_progress = %v: progress must be the max (80); chapter is lww (3)", got)
	}
	if got := state["bookmarks/book1"]["items"]; !reflect.DeepEqual(got, []any{"p80", "p35"}) && !reflect.DeepEqual(got, []any{"p35", "p80"}) {
		t.Errorf("bookmarks = %v, want the union p80+p35 without the removed p1", got)
	}
	if got := state["user_content/note1"]["text"]; got != "phone rewrite" {
		t.Errorf("user_content = %v: the manual rule must not overwrite", got)
	}
	if got := state["user_preferences/prefs"]; got["theme"] != "dark" || got["font"] != 14.0 {
		t.Errorf("user_preferences = %v, want field-by-field merge", got)
	}
	// Either device resolves the conflict over HTTP; everyone converges on the choice.
	want := auditor.Checkpoint(scope) + 1 // read before the resolution can arrive
	tok := n.token("alice", "--device", "laptop")
	body, _ := json.Marshal(map[string]any{"device": "laptop", "mid": 100, "state": map[string]any{"text": "merged by hand"}})
	req, _ := http.NewRequest("POST", "http://"+n.addr+"/v1/scopes/user:alice/conflicts/"+r.Conflict+"/resolve", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("resolve over HTTP: status %d", resp.StatusCode)
	}
	for _, d := range []*client.Device{phone, laptop, auditor} {
		waitCheckpoint(t, d, want)
		if got := d.Replica(scope)["user_content/note1"]["text"]; got != "merged by hand" {
			t.Fatalf("%s note after resolution = %v", d.ID, got)
		}
	}
}
