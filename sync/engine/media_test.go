package engine_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/storage/embedded"
	"github.com/syncgate/syncgate/sync/engine"
	"github.com/syncgate/syncgate/sync/protocol"
)

// mediaHarness is an engine whose media checks go to the embedded media
// store of the same bbolt file; fail makes the checks fail.
func mediaHarness(t *testing.T, fail *atomic.Bool) (*harness, *embedded.Media) {
	t.Helper()
	clock := newFakeClock()
	st, err := embedded.Open(context.Background(), t.TempDir()+"/sync.db", embedded.Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(context.Background()) })
	media, err := embedded.NewMedia(st, embedded.MediaOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	eng, err := engine.New(engine.Config{Node: "test", Now: clock.Now}, engine.Options{
		Store: st, Resolvers: conflict.NewRegistry(conflict.LWW{}), Notifier: rec,
		Media: flakyMedia{engine.MediaOf(media), fail},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, store: st, eng: eng, clock: clock, seen: rec}, media
}

type flakyMedia struct {
	engine.MediaChecker
	fail *atomic.Bool
}

func (f flakyMedia) MediaExists(ctx context.Context, scope, id string) (bool, error) {
	if f.fail != nil && f.fail.Load() {
		return false, errors.New("media store down")
	}
	return f.MediaChecker.MediaExists(ctx, scope, id)
}

func ref(id string) map[string]any { return map[string]any{"$media": id} }

func TestMediaRefs(t *testing.T) {
	var fail atomic.Bool
	h, media := mediaHarness(t, &fail)
	ctx := context.Background()
	d := newDevice(alice("phone"))
	mine, err := media.Put(ctx, "user:alice", "image/png", strings.NewReader("png bytes"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := media.Put(ctx, "space:team", "image/png", strings.NewReader("team png"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}

	// A ref to media of the document's scope is applied, and kept in the state.
	res := h.push(d.p, d.next(put("a", map[string]any{"pic": ref(mine.ID)})))
	if res[0].Outcome != storage.Applied {
		t.Fatalf("valid ref: %+v", res[0])
	}
	docs, _ := h.pullAll(d.p, "user:alice", 0)
	if id, ok := protocol.MediaRef(docs["todos/a"].State["pic"]); !ok || id != mine.ID {
		t.Fatalf("state = %v", docs["todos/a"].State)
	}

	// Missing media, and media of another scope (the device may even use
	// that scope), are rejected; so is a batch's bad ref deep in a patch.
	// The other mutations of the push are decided as usual.
	missing := d.next(put("b", map[string]any{"pic": ref(storage.NewMediaID())}))
	foreign := d.next(put("c", map[string]any{"list": []any{map[string]any{"pic": ref(theirs.ID)}}}))
	patch := d.next(protocol.Mutation{DocID: "a", Op: conflict.Patch,
		PatchOps: conflict.PatchOps{Add: map[string][]any{"files": {ref(mine.ID), ref("nope")}}}})
	ok := d.next(put("d", map[string]any{"pic": ref(mine.ID), "again": ref(mine.ID)}))
	res = h.push(d.p, missing, foreign, patch, ok)
	for i, r := range res[:3] {
		if r.Outcome != storage.Rejected || r.Code != protocol.CodeMediaNotFound {
			t.Errorf("bad ref %d: %+v, want media_not_found", i, r)
		}
	}
	if res[3].Outcome != storage.Applied {
		t.Fatalf("valid ref after rejected ones: %+v", res[3])
	}
	if n, err := h.store.Head(ctx, "user:alice"); err != nil || n != 2 {
		t.Fatalf("head = %d, %v; want 2 (rejections write no entry)", n, err)
	}
	// A resend of a refused mutation gets the refusal again, even once
	// the device moved on (the receipt is kept).
	again := h.push(d.p, missing)
	if again[0].Code != protocol.CodeMediaNotFound || !again[0].Replayed {
		t.Fatalf("resend = %+v, want the stored refusal", again[0])
	}

	// The media store failing: retryable, nothing decided.
	fail.Store(true)
	res = h.push(d.p, d.next(put("e", map[string]any{"pic": ref(mine.ID)})))
	if res[0].Outcome != storage.Rejected || !res[0].Code.Retryable() {
		t.Fatalf("media store down: %+v, want a retryable rejection", res[0])
	}
	// A mutation without refs does not consult the media store.
	if res := h.push(d.p, d.next(put("f", map[string]any{"x": 1.0}))); res[0].Outcome != storage.Applied {
		t.Fatalf("no refs while the media store is down: %+v", res[0])
	}
}

func TestMediaRefsWithoutMediaStore(t *testing.T) {
	h := newHarness(t, nil)
	d := newDevice(alice("phone"))
	res := h.push(d.p, d.next(put("a", map[string]any{"pic": ref("0123")})))
	if res[0].Outcome != storage.Rejected || res[0].Code != protocol.CodeMediaNotFound {
		t.Fatalf("ref without a media store: %+v", res[0])
	}
}
