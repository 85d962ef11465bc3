package gateway

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"
)

// brokerNodes returns n brokers that share one backend (one MemoryBus, one
// Redis server), as the nodes of one cluster. The suite calls Run on each.
type brokerNodes func(t *testing.T, n int) []Broker

// recorder is a Handler that records deliveries.
type recorder struct {
	mu   sync.Mutex
	msgs []string       // "scope data"
	lost map[string]int // scope -> nil-data signals
	wake chan struct{}
}

func newRecorder() *recorder { return &recorder{wake: make(chan struct{}, 1)} }

func (r *recorder) handle(scope string, data []byte) {
	r.mu.Lock()
	if data == nil { // "may have lost messages of scope" (Handler)
		if r.lost == nil {
			r.lost = map[string]int{}
		}
		r.lost[scope]++
	} else {
		r.msgs = append(r.msgs, scope+" "+string(data))
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// lostSignals returns how often each scope was reported as possibly lossy.
func (r *recorder) lostSignals() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.lost)
}

func (r *recorder) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs...)
}

// waitFor waits until the recorder holds want (in order), and fails if it
// holds anything else.
func (r *recorder) waitFor(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.After(2 * time.Second)
	for {
		got := r.snapshot()
		if len(got) >= len(want) {
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("delivered %q, want %q", got, want)
			}
			return
		}
		select {
		case <-r.wake:
		case <-deadline:
			t.Fatalf("delivered %q, want %q", got, want)
		}
	}
}

// quiet requires that nothing more than want arrives within a short while
// (networked brokers deliver asynchronously).
func (r *recorder) quiet(t *testing.T, want ...string) {
	t.Helper()
	r.waitFor(t, want...)
	time.Sleep(50 * time.Millisecond)
	if got := r.snapshot(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("delivered %q, want only %q", got, want)
	}
}

// testBrokerConformance is the contract every Broker implementation must
// pass (see broker.go). It runs against MemoryBroker here, and against
// RedisBroker nodes sharing a real Redis server in broker_redis_test.go.
func testBrokerConformance(t *testing.T, nodes brokerNodes) {
	ctx := context.Background()
	start := func(t *testing.T, n int) ([]Broker, []*recorder) {
		bs := nodes(t, n)
		rs := make([]*recorder, n)
		for i, b := range bs {
			rs[i] = newRecorder()
			rctx, cancel := context.WithCancel(ctx)
			t.Cleanup(cancel)
			if err := b.Run(rctx, rs[i].handle); err != nil {
				t.Fatalf("Run: %v", err)
			}
		}
		return bs, rs
	}

	t.Run("local delivery once", func(t *testing.T) {
		bs, rs := start(t, 1)
		b := bs[0]
		if err := b.Subscribe(ctx, "user:a"); err != nil {
			t.Fatal(err)
		}
		if err := b.Publish(ctx, "user:a", []byte("1")); err != nil {
			t.Fatal(err)
		}
		rs[0].quiet(t, "user:a 1")
	})

	t.Run("only subscribed scopes", func(t *testing.T) {
		bs, rs := start(t, 1)
		b := bs[0]
		mustDo(t, b.Subscribe(ctx, "user:a"))
		mustDo(t, b.Publish(ctx, "user:b", []byte("x"))) // no subscriber: dropped, no error
		mustDo(t, b.Publish(ctx, "user:a", []byte("1")))
		rs[0].quiet(t, "user:a 1")
	})

	t.Run("subscribe and unsubscribe are idempotent", func(t *testing.T) {
		bs, rs := start(t, 1)
		b := bs[0]
		mustDo(t, b.Subscribe(ctx, "user:a"))
		mustDo(t, b.Subscribe(ctx, "user:a"))
		mustDo(t, b.Publish(ctx, "user:a", []byte("1")))
		rs[0].waitFor(t, "user:a 1") // once, not twice
		mustDo(t, b.Unsubscribe(ctx, "user:a"))
		mustDo(t, b.Unsubscribe(ctx, "user:a"))
		mustDo(t, b.Unsubscribe(ctx, "user:never"))
		mustDo(t, b.Publish(ctx, "user:a", []byte("2")))
		rs[0].quiet(t, "user:a 1")
		mustDo(t, b.Subscribe(ctx, "user:a"))
		mustDo(t, b.Publish(ctx, "user:a", []byte("3")))
		rs[0].quiet(t, "user:a 1", "user:a 3")
	})

	t.Run("order per scope", func(t *testing.T) {
		bs, rs := start(t, 2)
		mustDo(t, bs[0].Subscribe(ctx, "user:a"))
		mustDo(t, bs[1].Subscribe(ctx, "user:a"))
		var want []string
		for i := range 100 {
			data := fmt.Sprint(i)
			mustDo(t, bs[0].Publish(ctx, "user:a", []byte(data)))
			want = append(want, "user:a "+data)
		}
		rs[0].quiet(t, want...) // each once: no echo, no duplicate
		rs[1].quiet(t, want...)
	})

	t.Run("unsubscribed node receives nothing", func(t *testing.T) {
		bs, rs := start(t, 2)
		mustDo(t, bs[1].Subscribe(ctx, "space:s"))
		mustDo(t, bs[0].Publish(ctx, "space:s", []byte("a")))
		rs[1].waitFor(t, "space:s a")
		mustDo(t, bs[1].Unsubscribe(ctx, "space:s"))
		mustDo(t, bs[0].Publish(ctx, "space:s", []byte("b")))
		rs[1].quiet(t, "space:s a")
		// A subscription is in place when Subscribe returns: a message
		// another node publishes right after it is delivered.
		mustDo(t, bs[1].Subscribe(ctx, "space:s"))
		mustDo(t, bs[0].Publish(ctx, "space:s", []byte("c")))
		rs[1].quiet(t, "space:s a", "space:s c")
		rs[0].quiet(t)
	})

	t.Run("cross node", func(t *testing.T) {
		bs, rs := start(t, 3)
		mustDo(t, bs[1].Subscribe(ctx, "space:s"))
		mustDo(t, bs[2].Subscribe(ctx, "space:other"))
		// Node 0 publishes without subscribing itself.
		mustDo(t, bs[0].Publish(ctx, "space:s", []byte("hi")))
		rs[1].waitFor(t, "space:s hi")
		// Node 1 publishes: it gets its own message once (no echo), node 0
		// and node 2 get nothing.
		mustDo(t, bs[1].Publish(ctx, "space:s", []byte("again")))
		rs[1].quiet(t, "space:s hi", "space:s again")
		rs[0].quiet(t)
		rs[2].quiet(t)
	})

	t.Run("no delivery after Run's context ends", func(t *testing.T) {
		bs := nodes(t, 1)
		r := newRecorder()
		rctx, cancel := context.WithCancel(ctx)
		mustDo(t, bs[0].Run(rctx, r.handle))
		mustDo(t, bs[0].Subscribe(ctx, "user:a"))
		mustDo(t, bs[0].Publish(ctx, "user:a", []byte("1")))
		r.waitFor(t, "user:a 1")
		cancel()
		time.Sleep(20 * time.Millisecond)
		_ = bs[0].Publish(ctx, "user:a", []byte("2")) // may fail; must not deliver
		r.quiet(t, "user:a 1")
	})

	t.Run("concurrent use", func(t *testing.T) {
		bs, rs := start(t, 2)
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				scope := fmt.Sprintf("user:g%d", g)
				for i := range 50 {
					b := bs[i%2]
					_ = b.Subscribe(ctx, scope)
					_ = b.Publish(ctx, scope, []byte("x"))
					_ = b.Unsubscribe(ctx, scope)
				}
			}()
		}
		wg.Wait()
		mustDo(t, bs[0].Subscribe(ctx, "user:final"))
		mustDo(t, bs[1].Publish(ctx, "user:final", []byte("done")))
		eventually(t, 2*time.Second, "final delivery", func() bool {
			got := rs[0].snapshot()
			return len(got) > 0 && got[len(got)-1] == "user:final done"
		})
	})

	t.Run("close", func(t *testing.T) {
		bs, _ := start(t, 1)
		cl, ok := bs[0].(Closer)
		if !ok {
			t.Skip("broker has no Close")
		}
		mustDo(t, cl.Close(ctx))
		mustDo(t, cl.Close(ctx)) // idempotent
		if err := bs[0].Publish(ctx, "user:a", []byte("x")); err == nil {
			t.Fatal("Publish after Close succeeded")
		}
	})
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestMemoryBrokerConformance(t *testing.T) {
	t.Parallel()
	testBrokerConformance(t, func(t *testing.T, n int) []Broker {
		bus := NewMemoryBus()
		out := make([]Broker, n)
		for i := range out {
			out[i] = bus.Node()
		}
		return out
	})
}

// TestHubRefcountsBrokerSubscriptions: the node subscribes to a scope while
// it has at least one local subscriber, and only then.
func TestHubRefcountsBrokerSubscriptions(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	b := h.srv.broker.(*MemoryBroker)
	a1, _ := h.open(t, "alice", "one", "user:alice")
	// The hub subscribes right after queueing the welcome.
	eventually(t, waitTimeout, "broker subscribed", func() bool { return b.subscribed("user:alice") })
	a2, _ := h.open(t, "alice", "two", "user:alice")
	eventually(t, waitTimeout, "two subscribers", func() bool { return h.srv.hub.subscribers("user:alice") == 2 })
	a1.ws.Close()
	eventually(t, waitTimeout, "one subscriber left", func() bool { return h.srv.hub.subscribers("user:alice") == 1 })
	if !b.subscribed("user:alice") {
		t.Fatal("unsubscribed while a connection remains")
	}
	a2.ws.Close()
	eventually(t, waitTimeout, "broker unsubscribed", func() bool { return !b.subscribed("user:alice") })
	if b.subscribed("user:bob") {
		t.Fatal("subscribed to a scope nobody asked for")
	}
}

// TestTwoNodesShareABus: a push on node A reaches a device on node B.
func TestTwoNodesShareABus(t *testing.T) {
	t.Parallel()
	bus := NewMemoryBus()
	a := newHarness(t, withBroker(bus.Node()))
	b := newHarness(t, withBroker(bus.Node()))
	// The nodes have separate stores here; only the fan-out is shared.
	pusher, _ := a.open(t, "alice", "phone")
	reader, _ := b.open(t, "alice", "laptop", "user:alice")
	pusher.push(1, put(1, "user:alice", "notes", "n", map[string]any{"v": 1.0}))
	pusher.expectAck(1)
	var ch struct {
		To uint64 `json:"to"`
	}
	reader.expect("changes", &ch)
	if ch.To != 1 {
		t.Fatalf("to = %d", ch.To)
	}
}
