package engine_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/storage/embedded"
	"github.com/syncgate/syncgate/sync/engine"
	"github.com/syncgate/syncgate/sync/protocol"
)

// fakeClock is a settable clock shared by the engine and the store.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

type harness struct {
	t     testing.TB
	store storage.Store
	eng   *engine.Engine
	clock *fakeClock
	seen  *recorder
}

type recorder struct {
	mu        sync.Mutex
	changes   []*protocol.Changes
	conflicts []*protocol.ConflictMsg
}

func (r *recorder) Committed(_ string, c *protocol.Changes) {
	r.mu.Lock()
	r.changes = append(r.changes, c)
	r.mu.Unlock()
}

func (r *recorder) Conflicted(_ string, c *protocol.ConflictMsg) {
	r.mu.Lock()
	r.conflicts = append(r.conflicts, c)
	r.mu.Unlock()
}

func newHarness(t testing.TB, mutate func(*engine.Config)) *harness {
	t.Helper()
	clock := newFakeClock()
	st, err := embedded.Open(context.Background(), t.TempDir()+"/sync.db", embedded.Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(context.Background()) })
	return newHarnessOn(t, st, clock, mutate)
}

func newHarnessOn(t testing.TB, st storage.Store, clock *fakeClock, mutate func(*engine.Config)) *harness {
	cfg := engine.Config{Node: "test", Now: clock.Now}
	if mutate != nil {
		mutate(&cfg)
	}
	rec := &recorder{}
	eng, err := engine.New(cfg, engine.Options{Store: st, Resolvers: conflict.NewRegistry(conflict.LWW{}), Notifier: rec})
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, store: st, eng: eng, clock: clock, seen: rec}
}

func alice(device string) engine.Principal {
	return engine.Principal{User: "alice", Device: device, Spaces: []string{"team"}}
}

// device simulates a client: it numbers mutations and stamps HLCs.
type device struct {
	p      engine.Principal
	mid    uint64
	wallMs int64
}

func newDevice(p engine.Principal) *device { return &device{p: p, wallMs: 1_763_800_000_000} }

func (d *device) next(m protocol.Mutation) protocol.Mutation {
	d.mid++
	d.wallMs++
	m.ID = d.mid
	m.HLC = fmt.Sprintf("%013d-%06d-%s", d.wallMs, 0, d.p.Device)
	if m.Scope == "" {
		m.Scope = "user:" + d.p.User
	}
	if m.Collection == "" {
		m.Collection = "todos"
	}
	return m
}

func put(id string, data map[string]any) protocol.Mutation {
	return protocol.Mutation{DocID: id, Op: conflict.Put, Data: data}
}

func (h *harness) push(p engine.Principal, muts ...protocol.Mutation) []protocol.Result {
	h.t.Helper()
	res, err := h.eng.Push(context.Background(), p, muts)
	if err != nil {
		h.t.Fatalf("push: %v", err)
	}
	if len(res) != len(muts) {
		h.t.Fatalf("push: %d results for %d mutations", len(res), len(muts))
	}
	return res
}

func (h *harness) pullAll(p engine.Principal, scope string, since uint64) (map[string]protocol.Change, uint64) {
	h.t.Helper()
	docs := map[string]protocol.Change{}
	for {
		ch, reset, err := h.eng.Pull(context.Background(), p, scope, since, 7)
		if err != nil || reset != nil {
			h.t.Fatalf("pull: err=%v reset=%v", err, reset)
		}
		if ch.From != since {
			h.t.Fatalf("page starts at %d, asked %d", ch.From, since)
		}
		for _, e := range ch.Entries {
			if e.Seq <= since || e.Seq > ch.To {
				h.t.Fatalf("entry seq %d outside (%d, %d]", e.Seq, since, ch.To)
			}
			docs[e.Collection+"/"+e.DocID] = e
		}
		since = ch.To
		if !ch.More {
			return docs, since
		}
	}
}

func TestPushAppliesAndVersions(t *testing.T) {
	h := newHarness(t, nil)
	d := newDevice(alice("phone"))
	res := h.push(d.p,
		d.next(put("t1", map[string]any{"title": "milk"})),
		d.next(protocol.Mutation{DocID: "t1", Op: conflict.Patch, Base: 1, PatchOps: conflict.PatchOps{Set: map[string]any{"done": true}}}),
		d.next(put("t2", map[string]any{"title": "eggs"})),
		d.next(protocol.Mutation{DocID: "t2", Op: conflict.Delete, Base: 1}),
	)
	want := []struct {
		outcome      storage.Outcome
		version, seq uint64
	}{{storage.Applied, 1, 1}, {storage.Applied, 2, 2}, {storage.Applied, 1, 3}, {storage.Applied, 2, 4}}
	for i, w := range want {
		if res[i].Outcome != w.outcome || res[i].Version != w.version || res[i].Seq != w.seq {
			t.Errorf("result %d = %+v, want %+v", i, res[i], w)
		}
	}
	docs, head := h.pullAll(d.p, "user:alice", 0)
	if head != 4 {
		t.Fatalf("head %d, want 4", head)
	}
	if got := docs["todos/t1"].State; got["title"] != "milk" || got["done"] != true {
		t.Errorf("t1 = %v", got)
	}
	if !docs["todos/t2"].Deleted {
		t.Errorf("t2 not deleted: %+v", docs["todos/t2"])
	}
	// The notifier saw every commit in order with contiguous ranges.
	var next uint64
	for _, c := range h.seen.changes {
		if c.From != next {
			t.Fatalf("announcement from %d, want %d", c.From, next)
		}
		next = c.To
	}
	if next != 4 {
		t.Fatalf("announcements end at %d", next)
	}
}

func TestReplayIsExactlyOnce(t *testing.T) {
	h := newHarness(t, nil)
	d := newDevice(alice("phone"))
	h.push(d.p, d.next(put("c", map[string]any{"n": 0.0})))
	inc := d.next(protocol.Mutation{DocID: "c", Op: conflict.Patch, Base: 1, PatchOps: conflict.PatchOps{Inc: map[string]float64{"n": 1}}})
	first := h.push(d.p, inc)
	// The ack is lost; the device re-sends the same mutation three times,
	// once inside a batch with a new one.
	for i := 0; i < 3; i++ {
		again := h.push(d.p, inc)
		if !again[0].Replayed || again[0].Outcome != first[0].Outcome || again[0].Seq != first[0].Seq {
			t.Fatalf("replay %d = %+v, first %+v", i, again[0], first[0])
		}
	}
	mixed := h.push(d.p, inc, d.next(protocol.Mutation{DocID: "c", Op: conflict.Patch, Base: 2, PatchOps: conflict.PatchOps{Inc: map[string]float64{"n": 10}}}))
	if !mixed[0].Replayed || mixed[1].Replayed || mixed[1].Outcome != storage.Applied {
		t.Fatalf("mixed = %+v", mixed)
	}
	docs, _ := h.pullAll(d.p, "user:alice", 0)
	if n := docs["todos/c"].State["n"]; n != 11.0 {
		t.Fatalf("counter = %v, want 11 (each inc exactly once)", n)
	}
}

func TestRejectionsWriteNothing(t *testing.T) {
	h := newHarness(t, nil)
	d := newDevice(alice("phone"))
	cases := []struct {
		name string
		mut  protocol.Mutation
		code protocol.Code
	}{
		{"foreign user scope", protocol.Mutation{Scope: "user:bob", DocID: "x", Op: conflict.Put, Data: map[string]any{"a": 1.0}}, protocol.CodeForbiddenScope},
		{"foreign space", protocol.Mutation{Scope: "space:other", DocID: "x", Op: conflict.Put, Data: map[string]any{"a": 1.0}}, protocol.CodeForbiddenScope},
		{"bad scope", protocol.Mutation{Scope: "nope", DocID: "x", Op: conflict.Put, Data: map[string]any{"a": 1.0}}, protocol.CodeInvalidName},
		{"dollar field", put("x", map[string]any{"$where": 1.0}), protocol.CodeInvalidField},
		{"dotted field", put("x", map[string]any{"a.b": 1.0}), protocol.CodeInvalidField},
		{"nested dollar", put("x", map[string]any{"a": map[string]any{"$gt": 1.0}}), protocol.CodeInvalidField},
		{"reserved field", put("x", map[string]any{"_id": "y"}), protocol.CodeInvalidField},
		{"dotted set", protocol.Mutation{DocID: "x", Op: conflict.Patch, PatchOps: conflict.PatchOps{Set: map[string]any{"a.b": 1.0}}}, protocol.CodeInvalidField},
		{"bad collection", protocol.Mutation{Collection: "system.users", DocID: "x", Op: conflict.Put, Data: map[string]any{}}, protocol.CodeInvalidName},
		{"bad op", protocol.Mutation{DocID: "x", Op: "upsert"}, protocol.CodeBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := h.push(d.p, d.next(tc.mut))
			if res[0].Outcome != storage.Rejected || res[0].Code != tc.code {
				t.Fatalf("got %+v, want rejected %s", res[0], tc.code)
			}
		})
	}
	for _, scope := range []string{"user:alice", "user:bob", "space:other"} {
		if head, _ := h.store.Head(context.Background(), scope); head != 0 {
			t.Errorf("%s head = %d, want 0 (nothing written)", scope, head)
		}
	}
	bad := d.next(put("x", map[string]any{"$x": 1.0}))
	h.push(d.p, bad)
	// A replay of a rejected mutation is rejected the same way.
	if again := h.push(d.p, bad); again[0].Code != protocol.CodeInvalidField {
		t.Fatalf("replayed rejection = %+v", again[0])
	}
	if _, err := h.eng.Push(context.Background(), d.p, make([]protocol.Mutation, 1001)); err == nil {
		t.Fatal("a push over MaxBatch must fail")
	}
}

func TestConcurrentPushersContiguous(t *testing.T) {
	clock := newFakeClock()
	st, err := embedded.Open(context.Background(), t.TempDir()+"/sync.db", embedded.Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(context.Background())
	// Two engines over one store model two nodes: their scope locks do not
	// see each other, so they really race at the commit point.
	engines := []*harness{newHarnessOn(t, st, clock, nil), newHarnessOn(t, st, clock, nil)}
	const devices, each = 20, 15
	var wg sync.WaitGroup
	for i := 0; i < devices; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			h := engines[i%2]
			d := newDevice(engine.Principal{User: fmt.Sprintf("u%d", i), Device: "d", Spaces: []string{"shared"}})
			for k := 0; k < each; k++ {
				m := d.next(protocol.Mutation{Scope: "space:shared", DocID: fmt.Sprintf("doc%d", k%3), Op: conflict.Patch,
					PatchOps: conflict.PatchOps{Inc: map[string]float64{"n": 1}}})
				res, err := h.eng.Push(context.Background(), d.p, []protocol.Mutation{m})
				if err != nil || res[0].Outcome == storage.Rejected {
					t.Errorf("push: %v %+v", err, res)
					return
				}
			}
		}(i)
	}
	wg.Wait()
	entries, err := st.Read(context.Background(), "space:shared", 0, 1<<62, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != devices*each {
		t.Fatalf("%d entries, want %d", len(entries), devices*each)
	}
	versions := map[string]uint64{}
	for i, e := range entries {
		if e.Seq != uint64(i+1) {
			t.Fatalf("entry %d has seq %d: gap", i, e.Seq)
		}
		versions[e.DocID]++
		if e.Version != versions[e.DocID] {
			t.Fatalf("%s version %d, want %d", e.DocID, e.Version, versions[e.DocID])
		}
	}
	var total float64
	for k := 0; k < 3; k++ {
		latest, err := st.Latest(context.Background(), "space:shared", "todos", fmt.Sprintf("doc%d", k))
		if err != nil {
			t.Fatal(err)
		}
		total += latest.State["n"].(float64)
	}
	if total != devices*each {
		t.Fatalf("sum of counters %v, want %d: an increment was lost or doubled", total, devices*each)
	}
}

func TestCompactionAndReset(t *testing.T) {
	h := newHarness(t, func(c *engine.Config) { c.Retention = time.Hour })
	d := newDevice(alice("phone"))
	for i := 0; i < 5; i++ {
		h.push(d.p, d.next(protocol.Mutation{DocID: "a", Op: conflict.Patch, PatchOps: conflict.PatchOps{Set: map[string]any{"i": float64(i)}}}))
	}
	h.push(d.p, d.next(put("gone", map[string]any{"x": 1.0})))
	h.push(d.p, d.next(protocol.Mutation{DocID: "gone", Op: conflict.Delete, Base: 1})) // seq 7: tombstone
	h.push(d.p, d.next(put("b", map[string]any{"y": 2.0})))                             // seq 8: head
	// A second device synced up to seq 3, then went away.
	laptop := alice("laptop")
	h.clock.Advance(2 * time.Hour)
	if err := h.eng.Compact(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, reset, err := h.eng.Pull(context.Background(), laptop, "user:alice", 3, 0)
	if err != nil || reset == nil || reset.Horizon != 7 {
		t.Fatalf("pull behind horizon: reset=%+v err=%v", reset, err)
	}
	open, err := h.eng.Open(context.Background(), laptop, []protocol.Subscription{{Scope: "user:alice", Since: 3}})
	if err != nil || len(open.Scopes) != 1 || !open.Scopes[0].Reset {
		t.Fatalf("open = %+v, %v", open, err)
	}
	// Pulling from 0 after the reset is the full current state.
	docs, head := h.pullAll(laptop, "user:alice", 0)
	if head != 8 || len(docs) != 2 || docs["todos/a"].State["i"] != 4.0 || docs["todos/b"].Version != 1 {
		t.Fatalf("after reset: head %d docs %+v", head, docs)
	}
	if _, ok := docs["todos/gone"]; ok {
		t.Fatal("purged tombstone still served")
	}
	// A device at or past the horizon just continues.
	if _, reset, _ := h.eng.Pull(context.Background(), laptop, "user:alice", 7, 0); reset != nil {
		t.Fatalf("device at horizon got reset %+v", reset)
	}
	// Seqs are never reused after compaction.
	res := h.push(d.p, d.next(put("c", map[string]any{})))
	if res[0].Seq != 9 {
		t.Fatalf("seq after compaction = %d, want 9", res[0].Seq)
	}
	// Versions are not either: re-creating the purged document continues
	// above its tombstone's version (2), as a plain new document would.
	res = h.push(laptop, newDevice(laptop).next(put("gone", map[string]any{"x": 2.0})))
	if res[0].Outcome != storage.Applied || res[0].Version != 3 {
		t.Fatalf("re-created purged document = %+v, want applied at version 3", res[0])
	}
}

// faultyStore injects failures around the commit point.
type faultyStore struct {
	storage.Store
	failNext  atomic.Bool
	dropRcpts bool // commit the entries but lose receipts and device progress
}

func (f *faultyStore) Commit(ctx context.Context, b *storage.Batch) (int, error) {
	if len(b.Entries) == 0 || !f.failNext.CompareAndSwap(true, false) {
		return f.Store.Commit(ctx, b)
	}
	if f.dropRcpts {
		b = &storage.Batch{Scope: b.Scope, Entries: b.Entries}
	}
	if _, err := f.Store.Commit(ctx, b); err != nil {
		return 0, err
	}
	return 0, errors.New("injected: connection reset after commit") // the caller cannot know n
}

func TestLostCommitAckIsNotAppliedTwice(t *testing.T) {
	for _, dropReceipts := range []bool{false, true} {
		t.Run(fmt.Sprintf("dropReceipts=%v", dropReceipts), func(t *testing.T) {
			clock := newFakeClock()
			st, err := embedded.Open(context.Background(), t.TempDir()+"/sync.db", embedded.Options{Now: clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close(context.Background())
			fs := &faultyStore{Store: st, dropRcpts: dropReceipts}
			h := newHarnessOn(t, fs, clock, nil)
			d := newDevice(alice("phone"))
			h.push(d.p, d.next(put("c", map[string]any{"n": 0.0})))
			inc := d.next(protocol.Mutation{DocID: "c", Op: conflict.Patch, Base: 1, PatchOps: conflict.PatchOps{Inc: map[string]float64{"n": 5}}})
			fs.failNext.Store(true)
			res := h.push(d.p, inc)
			if res[0].Outcome != storage.Rejected || !res[0].Code.Retryable() {
				t.Fatalf("storage failure must be a retryable rejection, got %+v", res[0])
			}
			// The client retries: the commit did land, so this must be a replay.
			res = h.push(d.p, inc)
			if res[0].Outcome != storage.Applied || res[0].Seq != 2 || !res[0].Replayed {
				t.Fatalf("retry = %+v", res[0])
			}
			docs, head := h.pullAll(d.p, "user:alice", 0)
			if n := docs["todos/c"].State["n"]; n != 5.0 || head != 2 {
				t.Fatalf("n = %v head = %d, want 5 and 2", n, head)
			}
		})
	}
}

func TestPullPagingAndAccess(t *testing.T) {
	h := newHarness(t, func(c *engine.Config) { c.MaxPullLimit = 10 })
	d := newDevice(alice("phone"))
	var muts []protocol.Mutation
	for i := 0; i < 25; i++ {
		muts = append(muts, d.next(put(fmt.Sprintf("t%d", i), map[string]any{"i": float64(i)})))
	}
	h.push(d.p, muts...)
	ch, _, err := h.eng.Pull(context.Background(), d.p, "user:alice", 0, 1000)
	if err != nil || len(ch.Entries) != 10 || !ch.More || ch.To != 10 || ch.Head != 25 {
		t.Fatalf("capped page = %+v, %v", ch, err)
	}
	docs, head := h.pullAll(d.p, "user:alice", 0)
	if len(docs) != 25 || head != 25 {
		t.Fatalf("%d docs head %d", len(docs), head)
	}
	_, _, err = h.eng.Pull(context.Background(), d.p, "user:bob", 0, 0)
	var perr *protocol.Error
	if !errors.As(err, &perr) || perr.Code != protocol.CodeForbiddenScope {
		t.Fatalf("foreign pull err = %v", err)
	}
}

// failingScopeStore fails every commit to one scope.
type failingScopeStore struct {
	storage.Store
	scope string
}

func (f *failingScopeStore) Commit(ctx context.Context, b *storage.Batch) (int, error) {
	if b.Scope == f.scope {
		return 0, errors.New("injected: scope unavailable")
	}
	return f.Store.Commit(ctx, b)
}

// A mutation the server asks the device to resend must still apply when
// resent: nothing later in the push may be decided past it.
func TestRetryableFailureStopsThePush(t *testing.T) {
	clock := newFakeClock()
	st, err := embedded.Open(context.Background(), t.TempDir()+"/sync.db", embedded.Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(context.Background())
	fs := &failingScopeStore{Store: st, scope: "user:alice"}
	h := newHarnessOn(t, fs, clock, nil)
	d := newDevice(alice("phone"))
	first := d.next(put("a", map[string]any{"v": 1.0}))
	second := d.next(protocol.Mutation{Scope: "space:team", DocID: "b", Op: conflict.Put, Data: map[string]any{"v": 2.0}})
	res := h.push(d.p, first, second)
	for i, r := range res {
		if r.Outcome != storage.Rejected || !r.Code.Retryable() {
			t.Fatalf("result %d = %+v, want a retryable rejection", i, r)
		}
	}
	fs.scope = "" // storage recovers; the device resends both
	res = h.push(d.p, first, second)
	for i, r := range res {
		if r.Outcome != storage.Applied {
			t.Fatalf("resent %d = %+v, want applied", i, r)
		}
	}
}

// cancelledReceipts fails receipt lookups as a cancelled request would.
type cancelledReceipts struct{ storage.Store }

func (cancelledReceipts) Receipt(context.Context, storage.DeviceRef, uint64) (storage.Receipt, error) {
	return storage.Receipt{}, fmt.Errorf("embedded: receipt: %w", context.Canceled)
}

func TestCancelledReplayDoesNotPanic(t *testing.T) {
	h := newHarness(t, nil)
	d := newDevice(alice("phone"))
	m := d.next(put("a", map[string]any{"v": 1.0}))
	h.push(d.p, m)
	h2 := newHarnessOn(t, cancelledReceipts{h.store}, h.clock, nil)
	res, err := h2.eng.Push(context.Background(), d.p, []protocol.Mutation{m})
	if err != nil || res[0].Outcome != storage.Rejected || !res[0].Code.Retryable() {
		t.Fatalf("interrupted replay = %+v, %v; want a retryable rejection", res, err)
	}
}

func TestPullPageByteBudget(t *testing.T) {
	h := newHarness(t, func(c *engine.Config) { c.MaxPullBytes = 10 << 10 })
	d := newDevice(alice("phone"))
	big := strings.Repeat("x", 3<<10)
	for i := 0; i < 10; i++ {
		h.push(d.p, d.next(put(fmt.Sprintf("d%d", i), map[string]any{"blob": big})))
	}
	ch, _, err := h.eng.Pull(context.Background(), d.p, "user:alice", 0, 100)
	if err != nil || len(ch.Entries) == 0 || len(ch.Entries) > 3 || !ch.More || ch.To != ch.Entries[len(ch.Entries)-1].Seq {
		t.Fatalf("page of %d entries, more=%v to=%d, err=%v; want at most 3 (10 KiB budget)", len(ch.Entries), ch.More, ch.To, err)
	}
	docs, head := h.pullAll(d.p, "user:alice", 0)
	if len(docs) != 10 || head != 10 {
		t.Fatalf("paging under the byte budget lost entries: %d docs, head %d", len(docs), head)
	}
}

func newHarnessWith(t testing.TB, cols map[string]conflict.CollectionConfig) *harness {
	t.Helper()
	reg, err := conflict.Build(cols, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, nil)
	eng, err := engine.New(engine.Config{Node: "test", Now: h.clock.Now}, engine.Options{Store: h.store, Resolvers: reg, Notifier: h.seen})
	if err != nil {
		t.Fatal(err)
	}
	h.eng = eng
	return h
}

func TestManualConflictLifecycle(t *testing.T) {
	h := newHarnessWith(t, map[string]conflict.CollectionConfig{
		"user_content": {Resolver: "manual"},
		"*":            {Resolver: "lww"},
	})
	phone, laptop := newDevice(alice("phone")), newDevice(alice("laptop"))
	laptop.wallMs += 1000 // the laptop's edits come later in time than the phone's first
	note := func(d *device, base uint64, text string) protocol.Mutation {
		return d.next(protocol.Mutation{Collection: "user_content", DocID: "n1", Op: conflict.Put, Base: base, Data: map[string]any{"text": text}})
	}
	h.push(phone.p, note(phone, 0, "v1"))
	h.push(laptop.p, note(laptop, 1, "laptop edit")) // sequential: applies
	mine := note(phone, 1, "phone edit")             // concurrent with the laptop's
	res := h.push(phone.p, mine)
	if res[0].Outcome != storage.Conflict || res[0].Conflict == "" || res[0].Version != 2 {
		t.Fatalf("concurrent manual edit = %+v, want a conflict at version 2", res[0])
	}
	id := res[0].Conflict
	// Nothing was overwritten, the record holds base, mine and theirs, and
	// every device of the scope was told.
	latest, _ := h.store.Latest(context.Background(), "user:alice", "user_content", "n1")
	if latest.State["text"] != "laptop edit" || latest.Version != 2 {
		t.Fatalf("manual rule overwrote: %+v", latest.State)
	}
	rec, err := h.store.Conflict(context.Background(), "user:alice", id)
	if err != nil || rec.Status != storage.ConflictOpen || rec.BaseState["text"] != "v1" || rec.Theirs["text"] != "laptop edit" || rec.TheirsVersion != 2 {
		t.Fatalf("record = %+v, %v", rec, err)
	}
	if len(h.seen.conflicts) != 1 || h.seen.conflicts[0].Conflict.ID != id {
		t.Fatalf("conflict announcements: %+v", h.seen.conflicts)
	}
	// Replaying the conflicting mutation answers the same conflict, no second record.
	if again := h.push(phone.p, mine); again[0].Conflict != id || !again[0].Replayed {
		t.Fatalf("replay = %+v", again[0])
	}
	open, err := h.eng.Open(context.Background(), alice("tablet"), []protocol.Subscription{{Scope: "user:alice"}})
	if err != nil || len(open.Conflicts) != 1 || open.Conflicts[0].ID != id {
		t.Fatalf("welcome conflicts = %+v, %v", open.Conflicts, err)
	}
	// A resolving mutation applies the chosen state whatever the rule and closes the record.
	resolve := phone.next(protocol.Mutation{Collection: "user_content", DocID: "n1", Op: conflict.Put, Base: 1,
		Data: map[string]any{"text": "merged by hand"}, Resolves: id})
	res = h.push(phone.p, resolve)
	if res[0].Outcome == storage.Rejected || res[0].Outcome == storage.Conflict || res[0].Version != 3 {
		t.Fatalf("resolution = %+v", res[0])
	}
	latest, _ = h.store.Latest(context.Background(), "user:alice", "user_content", "n1")
	rec, _ = h.store.Conflict(context.Background(), "user:alice", id)
	if latest.State["text"] != "merged by hand" || rec.Status != storage.ConflictResolved || rec.ResolvedBy == nil || rec.ResolvedBy.MutationID != resolve.ID {
		t.Fatalf("after resolution: doc %+v record %+v", latest.State, rec)
	}
	if n := len(h.seen.conflicts); n != 2 || h.seen.conflicts[1].Conflict.Status != "resolved" {
		t.Fatalf("resolution not announced: %+v", h.seen.conflicts)
	}
	// Resolving again, or naming a conflict that does not exist, is refused.
	for _, bad := range []string{id, "cnope"} {
		m := phone.next(protocol.Mutation{Collection: "user_content", DocID: "n1", Op: conflict.Put, Base: 3, Data: map[string]any{"text": "x"}, Resolves: bad})
		if r := h.push(phone.p, m); r[0].Outcome != storage.Rejected || r[0].Code != protocol.CodeBadRequest {
			t.Fatalf("resolves %q = %+v", bad, r[0])
		}
	}
	// The HTTP-style resolution path, through ResolveConflict.
	h.push(laptop.p, note(laptop, 3, "laptop again"))
	res = h.push(phone.p, note(phone, 3, "phone again"))
	if res[0].Outcome != storage.Conflict {
		t.Fatalf("second conflict = %+v", res[0])
	}
	r, err := h.eng.ResolveConflict(context.Background(), phone.p, "user:alice", res[0].Conflict, engine.Resolution{MutationID: phone.mid + 1, Delete: true})
	if err != nil || r.Outcome != storage.Applied {
		t.Fatalf("ResolveConflict = %+v, %v", r, err)
	}
	list, err := h.eng.Conflicts(context.Background(), phone.p, "user:alice", true, "", 10)
	if err != nil || len(list) != 0 {
		t.Fatalf("open conflicts after resolving both: %+v, %v", list, err)
	}
	if _, err := h.eng.Conflicts(context.Background(), phone.p, "user:bob", false, "", 10); err == nil {
		t.Fatal("listing another user's conflicts must be refused")
	}
}

func TestUnknownCollectionAndLimits(t *testing.T) {
	h := newHarnessWith(t, map[string]conflict.CollectionConfig{
		"notes": {Resolver: "lww", MaxDocBytes: 64, MaxDepth: 2},
	})
	d := newDevice(alice("phone"))
	cases := []struct {
		name string
		m    protocol.Mutation
		code protocol.Code
	}{
		{"unknown collection", protocol.Mutation{Collection: "other", DocID: "x", Op: conflict.Put, Data: map[string]any{"a": 1.0}}, protocol.CodeUnknownCollection},
		{"too large", protocol.Mutation{Collection: "notes", DocID: "x", Op: conflict.Put, Data: map[string]any{"a": strings.Repeat("y", 100)}}, protocol.CodeTooLarge},
		{"too deep", protocol.Mutation{Collection: "notes", DocID: "x", Op: conflict.Put, Data: map[string]any{"a": map[string]any{"b": map[string]any{"c": 1.0}}}}, protocol.CodeTooDeep},
	}
	for _, tc := range cases {
		if r := h.push(d.p, d.next(tc.m)); r[0].Outcome != storage.Rejected || r[0].Code != tc.code {
			t.Errorf("%s: %+v, want %s", tc.name, r[0], tc.code)
		}
	}
	if r := h.push(d.p, d.next(protocol.Mutation{Collection: "notes", DocID: "x", Op: conflict.Put, Data: map[string]any{"a": 1.0}})); r[0].Outcome != storage.Applied {
		t.Fatalf("small doc: %+v", r[0])
	}
	if head, _ := h.store.Head(context.Background(), "user:alice"); head != 1 {
		t.Fatalf("head %d: rejected mutations wrote something", head)
	}
}
