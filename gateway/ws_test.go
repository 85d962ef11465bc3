package gateway

import (
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/engine"
	"github.com/syncgate/syncgate/sync/protocol"
)

func TestHelloWelcome(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	tok := token(t, "alice", tokSpaces("team"), tokDevice("phone"))
	c := h.dial(t)
	c.send(&protocol.Hello{
		Envelope: protocol.Envelope{Rid: 1}, Protocol: protocol.Version, Token: tok, Device: "phone",
		Scopes: []protocol.Subscription{{Scope: "user:alice"}, {Scope: "space:team"}, {Scope: "user:bob"}},
	})
	var w protocol.Welcome
	c.expect(protocol.TypeWelcome, &w)
	ecfg := h.eng.Config()
	if w.Rid != 1 || w.Protocol != protocol.Version || w.Node != "test-node" || w.User != "alice" || w.Device != "phone" {
		t.Fatalf("welcome = %+v", w)
	}
	if b, err := hex.DecodeString(w.Session); err != nil || len(b) != 32 {
		t.Fatalf("session %q is not 32 random bytes in hex", w.Session)
	}
	if w.MaxMessageBytes != DefaultMaxMessageBytes || w.MaxBatch != ecfg.MaxBatch || w.PullLimit != ecfg.PullLimit {
		t.Fatalf("limits = %d %d %d", w.MaxMessageBytes, w.MaxBatch, w.PullLimit)
	}
	if exp := time.UnixMilli(w.ExpiresAt); exp.Before(time.Now().Add(59*time.Minute)) || exp.After(time.Now().Add(61*time.Minute)) {
		t.Fatalf("expiresAt %v is not about an hour ahead", exp)
	}
	if len(w.Scopes) != 2 || w.Scopes[0].Scope != "user:alice" || w.Scopes[1].Scope != "space:team" {
		t.Fatalf("scopes = %+v", w.Scopes)
	}
	e := c.expectError(protocol.CodeForbiddenScope) // user:bob; the session stays open
	if e.Rid != 1 || !strings.Contains(e.Message, "user:bob") {
		t.Fatalf("forbidden error = %+v", e)
	}
	c.ping(2)
	eventually(t, waitTimeout, "hub subscriptions", func() bool {
		return h.srv.hub.subscribers("user:alice") == 1 && h.srv.hub.subscribers("space:team") == 1 &&
			h.srv.hub.subscribers("user:bob") == 0
	})

	// A checkpoint ahead of the head: the scope is granted with reset, and
	// a reset message follows the welcome.
	c3 := h.dial(t)
	w3 := c3.hello(token(t, "alice"), "tablet", protocol.Subscription{Scope: "user:alice", Since: 7})
	if len(w3.Scopes) != 1 || !w3.Scopes[0].Reset {
		t.Fatalf("scopes = %+v", w3.Scopes)
	}
	var r protocol.Reset
	c3.expect(protocol.TypeReset, &r)
	if r.Scope != "user:alice" || r.Head != 0 || !strings.Contains(r.Reason, "ahead") {
		t.Fatalf("reset = %+v", r)
	}

	if exp := time.UnixMilli(w.SessionExpiresAt); exp.Before(time.Now().Add(DefaultSessionTTL-time.Minute)) || exp.After(time.Now().Add(DefaultSessionTTL+time.Minute)) {
		t.Fatalf("sessionExpiresAt %v is not about %s ahead", exp, DefaultSessionTTL)
	}

	// A client-chosen id names no session: a new one begins (the store
	// mints ids; see sessions_test.go for resuming).
	c2 := h.dial(t)
	c2.send(&protocol.Hello{Protocol: 1, Token: token(t, "alice"), Device: "laptop", Session: "resume-me_1"})
	var w2 protocol.Welcome
	c2.expect(protocol.TypeWelcome, &w2)
	if b, err := hex.DecodeString(w2.Session); err != nil || len(b) != 32 || w2.Session == w.Session {
		t.Fatalf("session = %q, want a new one", w2.Session)
	}
}

func TestLiveDeliveryBetweenDevices(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	phone, _ := h.open(t, "alice", "phone", "user:alice")
	laptop, _ := h.open(t, "alice", "laptop", "user:alice")
	eventually(t, waitTimeout, "two subscribers", func() bool { return h.srv.hub.subscribers("user:alice") == 2 })

	for i, title := range []string{"first", "second"} {
		seq := uint64(i + 1)
		phone.push(seq, put(seq, "user:alice", "notes", "n1", map[string]any{"title": title}))

		// The pusher gets its own changes, then the ack.
		var own protocol.Changes
		phone.expect(protocol.TypeChanges, &own)
		ack := phone.expectAck(seq)
		if len(ack.Results) != 1 || ack.Results[0].Outcome != storage.Applied || ack.Results[0].Seq != seq {
			t.Fatalf("ack = %+v", ack)
		}

		var ch protocol.Changes
		laptop.expect(protocol.TypeChanges, &ch)
		if ch.Scope != "user:alice" || ch.From != seq-1 || ch.To != seq || len(ch.Entries) != 1 {
			t.Fatalf("changes = %+v", ch)
		}
		en := ch.Entries[0]
		if en.Seq != seq || en.DocID != "n1" || en.Version != seq || en.Device != "phone" || en.MutationID != seq || en.State["title"] != title {
			t.Fatalf("entry = %+v", en)
		}
		if own.From != ch.From || own.To != ch.To {
			t.Fatalf("pusher got %d..%d, other device %d..%d", own.From, own.To, ch.From, ch.To)
		}
	}
	// Another user's device sees nothing of alice's scope.
	bob, _ := h.open(t, "bob", "phone", "user:bob")
	phone.push(3, put(3, "user:alice", "notes", "n2", map[string]any{"x": 1.0}))
	phone.expectAck(3)
	laptop.expect(protocol.TypeChanges, nil)
	bob.ping(9) // the pong is the next message: no changes came first
}

func TestPullPaging(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	c, _ := h.open(t, "alice", "phone") // no subscription: only pull answers arrive
	var muts []protocol.Mutation
	for i := 1; i <= 5; i++ {
		muts = append(muts, put(uint64(i), "user:alice", "notes", "n"+string(rune('0'+i)), map[string]any{"i": float64(i)}))
	}
	c.push(1, muts...)
	c.expectAck(1)

	type page struct {
		since, from, to uint64
		more            bool
		seqs            int
	}
	for i, want := range []page{
		{since: 0, from: 0, to: 2, more: true, seqs: 2},
		{since: 2, from: 2, to: 4, more: true, seqs: 2},
		{since: 4, from: 4, to: 5, more: false, seqs: 1},
		{since: 5, from: 5, to: 5, more: false, seqs: 0},
	} {
		rid := uint64(10 + i)
		c.send(&protocol.Pull{Envelope: protocol.Envelope{Rid: rid}, Scope: "user:alice", Since: want.since, Limit: 2})
		var ch protocol.Changes
		c.expect(protocol.TypeChanges, &ch)
		if ch.Rid != rid || ch.From != want.from || ch.To != want.to || ch.More != want.more || len(ch.Entries) != want.seqs || ch.Head != 5 {
			t.Fatalf("page %d: got rid=%d from=%d to=%d more=%v entries=%d head=%d, want %+v",
				i, ch.Rid, ch.From, ch.To, ch.More, len(ch.Entries), ch.Head, want)
		}
		for k, en := range ch.Entries {
			if en.Seq != want.since+uint64(k)+1 {
				t.Fatalf("page %d entry %d has seq %d", i, k, en.Seq)
			}
		}
	}
	// A checkpoint ahead of the head gets a reset.
	c.send(&protocol.Pull{Envelope: protocol.Envelope{Rid: 20}, Scope: "user:alice", Since: 99})
	var r protocol.Reset
	c.expect(protocol.TypeReset, &r)
	if r.Rid != 20 || r.Scope != "user:alice" || r.Head != 5 {
		t.Fatalf("reset = %+v", r)
	}
	// A forbidden scope is an error, and the connection stays.
	c.send(&protocol.Pull{Envelope: protocol.Envelope{Rid: 21}, Scope: "user:bob"})
	if e := c.expectError(protocol.CodeForbiddenScope); e.Rid != 21 {
		t.Fatalf("rid = %d", e.Rid)
	}
	c.ping(22)
}

// TestHelloRejected: each bad hello gets its error and close code, and a
// push pipelined right behind it is never applied.
func TestHelloRejected(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ok := func(t *testing.T) string { return token(t, "alice") }
	tests := []struct {
		name     string
		protocol int
		device   string
		token    func(t *testing.T) string
		first    string // raw first message instead of a hello
		code     protocol.Code
		close    int
	}{
		{name: "garbage token", device: "d1", token: func(*testing.T) string { return "not-a-jwt" },
			code: protocol.CodeUnauthorized, close: protocol.CloseUnauthorized},
		{name: "bad signature", device: "d2", token: func(t *testing.T) string { return ok(t)[:len(ok(t))-4] + "AAAA" },
			code: protocol.CodeUnauthorized, close: protocol.CloseUnauthorized},
		{name: "expired token", device: "d3",
			token: func(t *testing.T) string { return token(t, "alice", tokIssued(time.Now().Add(-2*time.Hour))) },
			code:  protocol.CodeTokenExpired, close: protocol.CloseTokenExpired},
		{name: "alg none", device: "d4", token: algNoneToken,
			code: protocol.CodeUnauthorized, close: protocol.CloseUnauthorized},
		{name: "token for another device", device: "d5",
			token: func(t *testing.T) string { return token(t, "alice", tokDevice("other")) },
			code:  protocol.CodeUnauthorized, close: protocol.CloseUnauthorized},
		{name: "no token", device: "d6", token: func(*testing.T) string { return "" },
			code: protocol.CodeUnauthorized, close: protocol.CloseUnauthorized},
		{name: "protocol version", protocol: 2, device: "d7", token: ok,
			code: protocol.CodeProtocol, close: protocol.CloseProtocolError},
		{name: "empty device", device: "", token: ok,
			code: protocol.CodeBadRequest, close: protocol.CloseProtocolError},
		{name: "push before hello", device: "d9", first: `{"type":"push","rid":5,"mutations":[]}`,
			code: protocol.CodeNotReady, close: protocol.CloseProtocolError},
		{name: "malformed before hello", device: "d10", first: `{"type":"hello",`,
			code: protocol.CodeMalformed, close: protocol.CloseProtocolError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := h.dial(t)
			if tt.first != "" {
				c.sendRaw([]byte(tt.first))
			} else {
				p := tt.protocol
				if p == 0 {
					p = protocol.Version
				}
				c.send(&protocol.Hello{Protocol: p, Token: tt.token(t), Device: tt.device,
					Scopes: []protocol.Subscription{{Scope: "user:alice"}}})
			}
			// Pipelined: must not be applied.
			c.push(7, put(1, "user:alice", "notes", "x-"+tt.device, map[string]any{"a": 1.0}))
			c.expectError(tt.code)
			c.expectClose(tt.close)
			if n := h.lastMutation("alice", tt.device); n != 0 {
				t.Fatalf("device advanced to mutation %d", n)
			}
		})
	}
	t.Cleanup(func() {
		if n := h.head("user:alice"); n != 0 {
			t.Errorf("user:alice head = %d after rejected hellos, want 0", n)
		}
	})
}

// algNoneToken is an unsigned token (alg "none") for alice.
func algNoneToken(t *testing.T) string {
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimRight(base64URL(b), "=")
	}
	return enc(map[string]any{"alg": "none", "typ": "JWT"}) + "." +
		enc(map[string]any{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix()}) + "."
}

func TestHelloTimeout(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withConfig(func(c *Config) { c.HelloTimeout = 200 * time.Millisecond }))
	c := h.dial(t)
	start := time.Now()
	c.expectError(protocol.CodeHelloTimeout)
	c.expectClose(protocol.CloseHelloTimeout)
	if d := time.Since(start); d < 150*time.Millisecond || d > 3*time.Second {
		t.Fatalf("closed after %s, want about 200ms", d)
	}
}

func TestPingTimeout(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withConfig(func(c *Config) {
		c.PingInterval = 50 * time.Millisecond
		c.PongTimeout = 300 * time.Millisecond
	}))
	c, _ := h.open(t, "alice", "phone")
	// Not reading means gorilla never answers the server's pings.
	time.Sleep(600 * time.Millisecond)
	c.expectClose(protocol.ClosePingTimeout)
	eventually(t, waitTimeout, "closes_total{4004}", func() bool {
		return counter(t, h.srv.metrics.closes.WithLabelValues("4004")) == 1
	})

	// A client that reads (and so answers pings) stays connected.
	c2, _ := h.open(t, "alice", "laptop")
	stop := time.Now().Add(700 * time.Millisecond)
	for i := uint64(1); time.Now().Before(stop); i++ {
		c2.ping(i)
		time.Sleep(50 * time.Millisecond)
	}
}

func TestOversizedMessageCloses1009(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	h := newHarness(t, withConfig(func(c *Config) { c.MaxMessageBytes = limit }))
	c, _ := h.open(t, "alice", "phone")

	// Exactly the limit is fine.
	ping := []byte(`{"type":"ping","rid":1}`)
	exact := append(ping, []byte(strings.Repeat(" ", limit-len(ping)))...)
	c.sendRaw(exact)
	c.expect(protocol.TypePong, nil)

	// One byte more closes with 1009, and nothing else arrives first.
	big := append(exact, ' ')
	c.sendRaw(big)
	if before := c.expectClose(protocol.CloseMessageTooBig); len(before) != 0 {
		t.Fatalf("messages before the close: %v", before)
	}
	eventually(t, waitTimeout, "closes_total{1009}", func() bool {
		return counter(t, h.srv.metrics.closes.WithLabelValues("1009")) == 1
	})

	// Also before hello, and with a frame far over the limit.
	c2 := h.dial(t)
	c2.sendRaw([]byte(`{"type":"hello","token":"` + strings.Repeat("x", 4*limit) + `"}`))
	c2.expectClose(protocol.CloseMessageTooBig)
}

func TestMalformedAndUnknownTypeKeepConnection(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	c, _ := h.open(t, "alice", "phone")
	cases := []struct {
		raw  string
		code protocol.Code
		rid  uint64
	}{
		{`{not json`, protocol.CodeMalformed, 0},
		{`{"type":"nope","rid":7}`, protocol.CodeUnknownType, 7},
		{`{"rid":8}`, protocol.CodeMalformed, 8},
		{`{"type":"pull","rid":9,"since":"ten"}`, protocol.CodeMalformed, 9},
		{`[1,2,3]`, protocol.CodeMalformed, 0},
		{`{"type":"hello","rid":10,"protocol":1,"token":"x","device":"y"}`, protocol.CodeBadRequest, 10}, // session already open
	}
	for _, tc := range cases {
		c.sendRaw([]byte(tc.raw))
		if e := c.expectError(tc.code); e.Rid != tc.rid {
			t.Fatalf("%s: rid %d, want %d", tc.raw, e.Rid, tc.rid)
		}
	}
	if err := c.ws.WriteMessage(websocket.BinaryMessage, []byte(`{"type":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	c.expectError(protocol.CodeMalformed)
	c.ping(11)
	if got := counter(t, h.srv.metrics.messagesIn.WithLabelValues(typeInvalid)); got != 6 {
		t.Fatalf("messages_in_total{type=invalid} = %v, want 6", got)
	}
}

func TestForeignScopePushRejected(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	c, _ := h.open(t, "alice", "phone")
	c.push(1,
		put(1, "user:bob", "notes", "n1", map[string]any{"a": 1.0}),
		put(2, "space:secret", "notes", "n1", map[string]any{"a": 1.0}),
		put(3, "user:alice", "notes", "n1", map[string]any{"a": 1.0}),
	)
	ack := c.expectAck(1)
	if len(ack.Results) != 3 {
		t.Fatalf("results = %+v", ack.Results)
	}
	for i, r := range ack.Results[:2] {
		if r.Outcome != storage.Rejected || r.Code != protocol.CodeForbiddenScope {
			t.Fatalf("result %d = %+v, want rejected forbidden_scope", i, r)
		}
	}
	if ack.Results[2].Outcome != storage.Applied {
		t.Fatalf("own scope result = %+v", ack.Results[2])
	}
	if h.head("user:bob") != 0 || h.head("space:secret") != 0 {
		t.Fatal("a foreign scope was written")
	}
}

func TestInvalidFieldNamesRejected(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	c, _ := h.open(t, "alice", "phone")
	patch := put(4, "user:alice", "notes", "n4", nil)
	patch.Op, patch.Data = "patch", nil
	patch.Set = map[string]any{"a.b": 1.0}
	muts := []protocol.Mutation{
		put(1, "user:alice", "notes", "n1", map[string]any{"$set": 1.0}),
		put(2, "user:alice", "notes", "n2", map[string]any{"a.b": 1.0}),
		put(3, "user:alice", "notes", "n3", map[string]any{"ok": map[string]any{"$inner": 1.0}}),
		patch,
	}
	c.push(1, muts...)
	ack := c.expectAck(1)
	for i, r := range ack.Results {
		if r.Outcome != storage.Rejected || r.Code != protocol.CodeInvalidField {
			t.Fatalf("result %d = %+v, want rejected invalid_field_name", i, r)
		}
	}
	if n := h.head("user:alice"); n != 0 {
		t.Fatalf("head = %d, want 0", n)
	}
}

func TestPushErrorIsAnError(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withEngineConfig(func(c *engine.Config) { c.MaxBatch = 2 }))
	c, w := h.open(t, "alice", "phone")
	if w.MaxBatch != 2 {
		t.Fatalf("welcome maxBatch = %d", w.MaxBatch)
	}
	c.push(5, put(1, "user:alice", "n", "a", map[string]any{}), put(2, "user:alice", "n", "b", map[string]any{}),
		put(3, "user:alice", "n", "c", map[string]any{}))
	if e := c.expectError(protocol.CodeTooLarge); e.Rid != 5 {
		t.Fatalf("rid = %d", e.Rid)
	}
	c.ping(6)
}

// TestSlowConsumer: a client that stops reading is cut off with 4008 once
// its queue overflows, while the device pushing is never held up.
func TestSlowConsumer(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withConfig(func(c *Config) {
		c.OutboundQueueBytes = 64 << 10
		c.WriteTimeout = 5 * time.Second
	}))
	slow := h.dial(t, withReadBuffer(256<<10))
	slow.hello(token(t, "alice"), "slow", protocol.Subscription{Scope: "user:alice"})
	pusher, _ := h.open(t, "alice", "pusher")
	eventually(t, waitTimeout, "slow subscribed", func() bool { return h.srv.hub.subscribers("user:alice") == 1 })

	blob := strings.Repeat("x", 60<<10)
	var mid uint64
	round := 1
	for ; counter(t, h.srv.metrics.slowConsumers) == 0; round++ {
		if round > 400 {
			t.Fatal("the slow consumer was never disconnected")
		}
		var muts []protocol.Mutation
		for range 4 {
			mid++
			muts = append(muts, put(mid, "user:alice", "blobs", "b", map[string]any{"blob": blob}))
		}
		start := time.Now()
		pusher.push(uint64(round), muts...)
		ack := pusher.expectAck(uint64(round))
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("push %d took %s: the pusher was held up", round, d)
		}
		if ack.Results[3].Outcome != storage.Applied {
			t.Fatalf("ack = %+v", ack.Results[3])
		}
	}
	t.Logf("slow consumer cut off after %d pushes of %d KiB", round-1, 4*len(blob)>>10)
	// The slow client now reads: the changes that made it to the socket,
	// then slow_consumer, then close 4008.
	before := slow.expectClose(protocol.CloseSlowConsumer)
	if len(before) == 0 || !strings.Contains(before[len(before)-1], `"code":"slow_consumer"`) {
		t.Fatalf("last message before the close is not slow_consumer: %d messages", len(before))
	}
	eventually(t, waitTimeout, "closes_total{4008}", func() bool {
		return counter(t, h.srv.metrics.closes.WithLabelValues("4008")) == 1
	})
	pusher.ping(999)
}

func TestTokenExpiry(t *testing.T) {
	t.Parallel()
	h := newHarness(t)

	t.Run("without refresh", func(t *testing.T) {
		t.Parallel()
		c := h.dial(t)
		c.hello(token(t, "alice", tokTTL(2*time.Second)), "phone")
		start := time.Now()
		c.expectError(protocol.CodeTokenExpired)
		c.expectClose(protocol.CloseTokenExpired)
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("closed after %s", d)
		}
	})

	t.Run("with refresh", func(t *testing.T) {
		t.Parallel()
		c := h.dial(t)
		w := c.hello(token(t, "alice", tokTTL(2*time.Second), tokSpaces("team")), "laptop",
			protocol.Subscription{Scope: "user:alice"}, protocol.Subscription{Scope: "space:team"})
		if len(w.Scopes) != 2 {
			t.Fatalf("scopes = %+v", w.Scopes)
		}
		// The new token drops space team.
		c.send(&protocol.Auth{Envelope: protocol.Envelope{Rid: 3}, Token: token(t, "alice")})
		var ok protocol.AuthOK
		c.expect(protocol.TypeAuthOK, &ok)
		if ok.Rid != 3 || time.UnixMilli(ok.ExpiresAt).Before(time.Now().Add(50*time.Minute)) {
			t.Fatalf("auth_ok = %+v", ok)
		}
		if e := c.expectError(protocol.CodeForbiddenScope); !strings.Contains(e.Message, "space:team") {
			t.Fatalf("error = %+v", e)
		}
		eventually(t, waitTimeout, "space:team unsubscribed", func() bool { return h.srv.hub.subscribers("space:team") == 0 })
		time.Sleep(2500 * time.Millisecond) // past the first token's expiry
		c.ping(4)
	})

	t.Run("refresh for another user", func(t *testing.T) {
		t.Parallel()
		c, _ := h.open(t, "alice", "tablet")
		c.send(&protocol.Auth{Envelope: protocol.Envelope{Rid: 1}, Token: token(t, "mallory")})
		c.expectError(protocol.CodeUnauthorized)
		c.expectClose(protocol.CloseUnauthorized)
	})
}

func TestShutdownClosesEveryConnection(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var clients []*client
	for _, d := range []string{"a", "b", "c"} {
		c, _ := h.open(t, "alice", d, "user:alice")
		clients = append(clients, c)
	}
	clients = append(clients, h.dial(t)) // no hello yet
	eventually(t, waitTimeout, "4 connections", func() bool {
		return counter(t, h.srv.metrics.connections) == 4
	})

	results := make(chan []string, len(clients))
	for _, c := range clients {
		go func() {
			// Read concurrently: Shutdown waits for each client's close reply.
			var msgs []string
			for {
				typ, data, err := c.next(waitTimeout)
				if err != nil {
					break
				}
				msgs = append(msgs, typ+" "+string(data))
			}
			results <- msgs
		}()
	}
	ctx, cancel := contextWithTimeout(3 * time.Second)
	defer cancel()
	start := time.Now()
	if err := h.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Shutdown took %s", d)
	}
	for range clients {
		msgs := <-results
		if len(msgs) == 0 || !strings.Contains(msgs[len(msgs)-1], `"code":"shutdown"`) {
			t.Fatalf("last message is not error shutdown: %v", msgs)
		}
	}
	for _, c := range clients {
		if c.closeErr == nil || c.closeErr.Code != protocol.CloseShutdown {
			t.Fatalf("close = %v, want 4010", c.closeErr)
		}
	}
	if got := counter(t, h.srv.metrics.connections); got != 0 {
		t.Fatalf("connections gauge = %v after Shutdown", got)
	}
	// Serve returns nil once Shutdown is done.
	select {
	case err := <-h.done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
		h.done <- nil // for the cleanup
	case <-time.After(waitTimeout):
		t.Fatal("Serve did not return")
	}
	// Draining: readyz is 503, upgrades and fallback requests are refused.
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/readyz", 503}, {"GET", "/healthz", 200}, {"GET", "/v1/ws", 503},
		{"POST", "/v1/sync/push", 503}, {"POST", "/v1/sync/pull", 503},
	} {
		rec := serveLocal(h.srv, tc.method, tc.path)
		if rec.Code != tc.want {
			t.Errorf("%s %s = %d, want %d", tc.method, tc.path, rec.Code, tc.want)
		}
		if tc.want == 503 && tc.path != "/readyz" {
			if rec.Header().Get("Retry-After") == "" || !strings.Contains(rec.Body.String(), `"code":"shutdown"`) {
				t.Errorf("%s %s: %v %s", tc.method, tc.path, rec.Header(), rec.Body)
			}
		}
	}
}

// TestShutdownDeadline: clients that never answer the close do not hold
// Shutdown beyond its context.
func TestShutdownDeadline(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for _, d := range []string{"a", "b"} {
		h.open(t, "alice", d) // never read again
	}
	ctx, cancel := contextWithTimeout(300 * time.Millisecond)
	defer cancel()
	start := time.Now()
	err := h.srv.Shutdown(ctx)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Shutdown took %s with a 300ms deadline", d)
	}
	if err == nil {
		t.Fatal("Shutdown returned nil although connections outlived the deadline")
	}
	eventually(t, waitTimeout, "connections gone", func() bool { return counter(t, h.srv.metrics.connections) == 0 })
}

// TestCoalescingUnderLoad: under a burst, the server packs several
// messages into one frame, and every line is a whole message.
func TestCoalescingUnderLoad(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withConfig(func(c *Config) { c.MaxMessagesPerFrame = 16 }))
	c, _ := h.open(t, "alice", "phone", "user:alice")
	pusher, _ := h.open(t, "alice", "pusher")
	const n = 400
	// Live changes (from the pusher's commits) and pongs interleave on c.
	go func() {
		for i := 1; i <= 20; i++ {
			pusher.push(uint64(i), put(uint64(i), "user:alice", "notes", "n", map[string]any{"i": float64(i)}))
		}
	}()
	for i := 1; i <= n; i++ {
		c.send(&protocol.Ping{Envelope: protocol.Envelope{Rid: uint64(i)}})
	}
	pongs, changes := 0, 0
	var lastTo uint64
	for pongs < n || changes < 20 {
		typ, data, err := c.next(waitTimeout)
		if err != nil {
			t.Fatalf("after %d pongs, %d changes: %v", pongs, changes, err)
		}
		switch typ {
		case protocol.TypePong:
			var p protocol.Pong
			_ = json.Unmarshal(data, &p)
			pongs++
			if p.Rid != uint64(pongs) {
				t.Fatalf("pong %d has rid %d: order lost", pongs, p.Rid)
			}
		case protocol.TypeChanges:
			var ch protocol.Changes
			_ = json.Unmarshal(data, &ch)
			if ch.From != lastTo {
				t.Fatalf("changes from %d after %d: gap or reorder", ch.From, lastTo)
			}
			lastTo = ch.To
			changes++
		default:
			t.Fatalf("unexpected %s", typ)
		}
	}
	t.Logf("%d messages in %d frames (max %d per frame)", c.messages, c.frames, c.maxBatch)
	if c.maxBatch > 16 {
		t.Fatalf("a frame carried %d messages; MaxMessagesPerFrame is 16", c.maxBatch)
	}
	if c.maxBatch < 2 {
		t.Fatalf("no frame carried more than one message (%d messages, %d frames)", c.messages, c.frames)
	}
}

// TestServeContextCancelClosesAtOnce: ending Serve's context is the hard
// stop: sockets close without a handshake and Serve returns ctx.Err().
func TestServeContextCancelClosesAtOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	c, _ := h.open(t, "alice", "phone", "user:alice")
	h.cancel()
	select {
	case err := <-h.done:
		if err == nil {
			t.Fatal("Serve returned nil after its context ended")
		}
		h.done <- nil // for the cleanup
	case <-time.After(waitTimeout):
		t.Fatal("Serve did not return")
	}
	// gorilla reports a socket that ends without a close frame as 1006.
	if _, _, err := c.next(waitTimeout); err == nil || (c.closeErr != nil && c.closeErr.Code != websocket.CloseAbnormalClosure) {
		t.Fatalf("want an abrupt end, got %v", err)
	}
	eventually(t, waitTimeout, "connections gone", func() bool { return counter(t, h.srv.metrics.connections) == 0 })
}

// TestTokenWithinLeeway: the verifier accepts a token up to exp + leeway,
// so a session opened (or refreshed) with a token already past exp but
// within the leeway is not closed at once: it ends at exp + leeway.
func TestTokenWithinLeeway(t *testing.T) {
	t.Parallel()
	const leeway = 3 * time.Second
	h := newHarness(t, withLeeway(leeway))
	// exp about a second ago (JWT times are whole seconds): within leeway.
	pastExp := func() string {
		return token(t, "alice", tokIssued(time.Now().Add(-time.Hour-time.Second)), tokTTL(time.Hour))
	}

	t.Run("hello", func(t *testing.T) {
		t.Parallel()
		c := h.dial(t)
		w := c.hello(pastExp(), "phone")
		exp := time.UnixMilli(w.ExpiresAt)
		if !exp.Before(time.Now()) {
			t.Fatalf("welcome expiresAt %s is not the (past) exp", exp)
		}
		c.ping(1) // used to be: token_expired and 4002 right after the welcome
		c.expectError(protocol.CodeTokenExpired)
		c.expectClose(protocol.CloseTokenExpired)
		// Closed at exp + leeway, not before (and not much later).
		if d := time.Since(exp.Add(leeway)); d < -50*time.Millisecond || d > 1500*time.Millisecond {
			t.Fatalf("closed %s after exp+leeway", d)
		}
	})

	t.Run("refresh", func(t *testing.T) {
		t.Parallel()
		c := h.dial(t)
		c.hello(token(t, "alice"), "laptop")
		c.send(&protocol.Auth{Envelope: protocol.Envelope{Rid: 2}, Token: pastExp()})
		var ok protocol.AuthOK
		c.expect(protocol.TypeAuthOK, &ok)
		c.ping(3)
		c.expectError(protocol.CodeTokenExpired)
		c.expectClose(protocol.CloseTokenExpired)
		if d := time.Since(time.UnixMilli(ok.ExpiresAt).Add(leeway)); d < -50*time.Millisecond || d > 1500*time.Millisecond {
			t.Fatalf("closed %s after exp+leeway", d)
		}
	})
}
