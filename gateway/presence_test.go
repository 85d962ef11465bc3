package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/syncgate/syncgate/presence"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/protocol"
)

// Presence across two in-process nodes that share a session store, a
// broker and a tracker: one MemoryBus and one MemoryTracker, or a real
// Redis (broker and tracker under one fresh prefix).

type nodePair struct{ a, b *harness }

// fastPresence makes expiry observable in a test: heartbeats every
// 100 ms, entries live 600 ms, sweeps every 50 ms.
func fastPresence(c *Config) {
	c.PresenceHeartbeat, c.PresenceTTL, c.PresenceSweep = 100*time.Millisecond, 600*time.Millisecond, 50*time.Millisecond
}

func forEachCluster(t *testing.T, tweak func(*Config), f func(t *testing.T, n nodePair, tr presence.Tracker)) {
	for _, kind := range []string{"memory", "redis"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			cfg := Config{}
			if tweak != nil {
				tweak(&cfg)
			}
			ttl := cfg.PresenceTTL
			if ttl == 0 {
				ttl = DefaultPresenceTTL
			}
			var (
				ba, bb Broker
				ta, tb presence.Tracker
			)
			if kind == "memory" {
				bus := NewMemoryBus()
				ba, bb = bus.Node(), bus.Node()
				mt := presence.NewMemoryTracker(presence.Options{TTL: ttl})
				ta, tb = mt, mt
			} else {
				bs := redisNodes(t, redisTestAddr(t), 2, nil)
				ba, bb = bs[0], bs[1]
				prefix := redisTestPrefix()
				for _, tr := range []*presence.Tracker{&ta, &tb} {
					rt, err := presence.NewRedisTracker(presence.RedisTrackerConfig{Addr: redisTestAddr(t), Prefix: prefix,
						Options: presence.Options{TTL: ttl}})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { rt.Close(context.Background()) })
					*tr = rt
				}
			}
			a := newHarness(t, withBroker(ba), withTracker(ta), withConfig(func(c *Config) { *c = cfg; c.Node = "node-a" }))
			b := newHarness(t, withBroker(bb), withTracker(tb), withSessions(a.store),
				withConfig(func(c *Config) { *c = cfg; c.Node = "node-b" }))
			f(t, nodePair{a, b}, ta)
		})
	}
}

func supportToken(t testing.TB) string { return token(t, "staff", tokRoles("support")) }
func adminToken(t testing.TB) string   { return token(t, "root", tokRoles("admin")) }

// getJSON GETs path with tok and decodes a 200 answer into v, zeroed
// first (Unmarshal would keep fields the answer omits in reused slices).
func (h *harness) getJSON(t testing.TB, path, tok string, v any) {
	t.Helper()
	rv := reflect.ValueOf(v).Elem()
	rv.Set(reflect.Zero(rv.Type()))
	code, body := h.httpDo(t, http.MethodGet, path, tok)
	if code != http.StatusOK {
		t.Fatalf("GET %s = %d %s", path, code, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v in %s", path, err, body)
	}
}

// waitFor reads messages until one of type typ satisfies match (nil: any),
// skipping others, and decodes it into v.
func (c *client) waitFor(typ string, v any, match func([]byte) bool) []byte {
	c.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		got, data, err := c.next(time.Until(deadline))
		if err != nil {
			c.t.Fatalf("waiting for %s: %v", typ, err)
		}
		if got == typ && (match == nil || match(data)) {
			if v != nil {
				if err := json.Unmarshal(data, v); err != nil {
					c.t.Fatal(err)
				}
			}
			return data
		}
	}
	c.t.Fatalf("no %s within %s", typ, waitTimeout)
	return nil
}

func eventOf(event, user string) func([]byte) bool {
	return func(data []byte) bool {
		var ev protocol.RoomEvent
		return json.Unmarshal(data, &ev) == nil && ev.Event == event && ev.Member.User == user
	}
}

func (c *client) join(rid uint64, scope, room string) protocol.Room {
	c.t.Helper()
	c.send(&protocol.Join{Envelope: protocol.Envelope{Rid: rid}, RoomRef: protocol.RoomRef{Scope: scope, Room: room}})
	var r protocol.Room
	c.waitFor(protocol.TypeRoom, &r, nil)
	return r
}

func TestPresenceOnlineAcrossNodes(t *testing.T) {
	t.Parallel()
	forEachCluster(t, fastPresence, func(t *testing.T, n nodePair, _ presence.Tracker) {
		phone := n.b.dial(t)
		phone.helloSession(token(t, "alice"), "phone", "")
		var online supportOnline
		eventually(t, waitTimeout, "alice online on node A's API", func() bool {
			n.a.getJSON(t, "/v1/support/online", supportToken(t), &online)
			return online.Connections == 1
		})
		it := online.Items[0]
		if online.Users != 1 || it.User != "alice" || it.Device != "phone" || it.Node != "node-b" ||
			it.Platform != "ios" || it.AppVersion != "3.1.4" || it.State != "active" {
			t.Fatalf("online = %+v", online)
		}
		// An ordinary user gets 403 and no data, on every support route.
		for _, path := range []string{"/v1/support/online", "/v1/support/users/alice", "/v1/support/rooms/r?scope=user:alice", "/v1/support/events"} {
			code, body := n.a.httpDo(t, http.MethodGet, path, token(t, "alice"))
			if code != http.StatusForbidden || strings.Contains(string(body), "phone") {
				t.Fatalf("GET %s as a plain user = %d %s", path, code, body)
			}
		}
		if code, _ := n.a.httpDo(t, http.MethodGet, "/v1/support/online", ""); code != http.StatusUnauthorized {
			t.Fatalf("no token = %d, want 401", code)
		}
		phone.send(&protocol.AppStateMsg{State: "background"})
		eventually(t, waitTimeout, "the background state", func() bool {
			n.a.getJSON(t, "/v1/support/online", supportToken(t), &online)
			return len(online.Items) == 1 && online.Items[0].State == "background"
		})
		phone.ws.Close()
		eventually(t, waitTimeout, "alice offline", func() bool {
			n.a.getJSON(t, "/v1/support/online", supportToken(t), &online)
			return online.Connections == 0 && online.Users == 0
		})
		var u supportUser
		n.a.getJSON(t, "/v1/support/users/alice", supportToken(t), &u)
		if u.Online || len(u.Devices) != 1 || u.Devices[0].Online || u.Devices[0].Node != "node-b" ||
			u.Devices[0].LastSeenAt == 0 || len(u.Devices[0].Sessions) != 1 || u.Devices[0].AppVersion != "3.1.4" {
			t.Fatalf("users/alice after disconnect = %+v", u)
		}
	})
}

// The user API reports sync lag per scope: entries and age of what the
// device lacks, its open conflicts and the last error sent to it.
func TestSupportUserSyncLag(t *testing.T) {
	t.Parallel()
	forEachCluster(t, fastPresence, func(t *testing.T, n nodePair, _ presence.Tracker) {
		scope := "user:alice"
		writer, _ := n.a.open(t, "alice", "laptop", scope)
		for i := range 3 {
			writer.push(uint64(i+1), put(uint64(i+1), scope, "notes", fmt.Sprint("n", i), map[string]any{"i": i}))
			writer.expectAck(uint64(i + 1))
		}
		time.Sleep(20 * time.Millisecond)
		tablet, _ := n.b.open(t, "alice", "tablet", scope) // since 0: three entries behind
		tablet.sendRaw([]byte(`{"type":"pull","rid":9,"scope":"user:nobody","since":0}`))
		tablet.expectError(protocol.CodeForbiddenScope)
		var u supportUser
		device := func(id string) supportDevice {
			for _, d := range u.Devices {
				if d.Device == id {
					return d
				}
			}
			t.Fatalf("no device %s in %+v", id, u)
			return supportDevice{}
		}
		eventually(t, waitTimeout, "the tablet's last error", func() bool {
			n.a.getJSON(t, "/v1/support/users/alice", supportToken(t), &u)
			d := device("tablet")
			return d.LastError != nil && d.LastError.Code == string(protocol.CodeForbiddenScope)
		})
		d := device("tablet")
		if !d.Online || len(d.Scopes) != 1 || d.Scopes[0].Head != 3 || d.Scopes[0].LagEntries != 3 || d.Scopes[0].LagSeconds <= 0 {
			t.Fatalf("tablet sync state = %+v", d)
		}
		tablet.send(&protocol.Checkpoint{Scopes: map[string]uint64{scope: 3, "user:bob": 7}})
		eventually(t, waitTimeout, "the confirmed checkpoint", func() bool {
			n.a.getJSON(t, "/v1/support/users/alice", supportToken(t), &u)
			d := device("tablet")
			return len(d.Scopes) == 1 && d.Scopes[0].LagEntries == 0 && d.Scopes[0].LagSeconds == 0
		})
		tablet.ws.Close()
		// Persisted at teardown: the store's checkpoint says 3 too (node
		// B's: in this harness only sessions are shared).
		eventually(t, waitTimeout, "the stored checkpoint", func() bool {
			st, err := n.b.store.Device(context.Background(), deviceRef("alice", "tablet"))
			return err == nil && st.Checkpoints[scope] == 3 && st.Checkpoints["user:bob"] == 0
		})
	})
}

func TestRoomsAcrossNodes(t *testing.T) {
	t.Parallel()
	forEachCluster(t, nil, func(t *testing.T, n nodePair, _ presence.Tracker) {
		scope, room := "space:team", "doc:1"
		alice := n.a.dial(t)
		alice.hello(token(t, "alice", tokSpaces("team")), "phone")
		bob := n.b.dial(t)
		bob.hello(token(t, "bob", tokSpaces("team")), "laptop")
		ra := alice.join(1, scope, room)
		if len(ra.Members) != 1 || ra.You == "" || ra.Members[0].ID != ra.You {
			t.Fatalf("alice's room = %+v", ra)
		}
		rb := bob.join(2, scope, room)
		if len(rb.Members) != 2 {
			t.Fatalf("bob's room = %+v", rb)
		}
		var ev protocol.RoomEvent
		alice.waitFor(protocol.TypeRoomEvent, &ev, eventOf(protocol.RoomJoin, "bob"))
		if ev.Member.ID != rb.You || ev.Scope != scope || ev.Room != room {
			t.Fatalf("join event = %+v", ev)
		}
		bob.send(&protocol.RoomStateMsg{RoomRef: protocol.RoomRef{Scope: scope, Room: room}, State: json.RawMessage(`{"cursor":7}`)})
		alice.waitFor(protocol.TypeRoomEvent, &ev, eventOf(protocol.RoomState, "bob"))
		if string(ev.Member.State) != `{"cursor":7}` {
			t.Fatalf("state event = %s", ev.Member.State)
		}
		bob.send(&protocol.Typing{RoomRef: protocol.RoomRef{Scope: scope, Room: room}})
		alice.waitFor(protocol.TypeRoomEvent, &ev, eventOf(protocol.RoomTyping, "bob"))
		if ev.ExpiresIn != DefaultTypingTTL.Milliseconds() || !ev.Member.Typing {
			t.Fatalf("typing event = %+v", ev)
		}
		var sr supportRoom
		n.a.getJSON(t, "/v1/support/rooms/doc:1?scope=space:team", supportToken(t), &sr)
		if len(sr.Members) != 2 {
			t.Fatalf("support room = %+v", sr)
		}
		// A scope the token does not grant.
		alice.send(&protocol.Join{Envelope: protocol.Envelope{Rid: 5}, RoomRef: protocol.RoomRef{Scope: "space:other", Room: room}})
		alice.waitFor(protocol.TypeError, nil, func(b []byte) bool { return strings.Contains(string(b), "forbidden_scope") })
		bob.send(&protocol.Leave{Envelope: protocol.Envelope{Rid: 3}, RoomRef: protocol.RoomRef{Scope: scope, Room: room}})
		bob.waitFor(protocol.TypeLeft, nil, nil)
		alice.waitFor(protocol.TypeRoomEvent, &ev, eventOf(protocol.RoomLeave, "bob"))
		// A member that drops leaves at once.
		bob.join(4, scope, room)
		alice.waitFor(protocol.TypeRoomEvent, nil, eventOf(protocol.RoomJoin, "bob"))
		bob.ws.Close()
		alice.waitFor(protocol.TypeRoomEvent, nil, eventOf(protocol.RoomLeave, "bob"))
		n.a.getJSON(t, "/v1/support/rooms/doc:1?scope=space:team", supportToken(t), &sr)
		if len(sr.Members) != 1 || sr.Members[0].User != "alice" {
			t.Fatalf("support room after bob dropped = %+v", sr)
		}
	})
}

// Typing goes out at most once per TypingInterval per user and room, and
// shows for TypingTTL.
func TestTypingThrottleAndExpiry(t *testing.T) {
	t.Parallel()
	forEachCluster(t, func(c *Config) { c.TypingInterval, c.TypingTTL = 400*time.Millisecond, 300*time.Millisecond },
		func(t *testing.T, n nodePair, _ presence.Tracker) {
			scope, room := "space:team", "doc:t"
			ref := protocol.RoomRef{Scope: scope, Room: room}
			alice := n.a.dial(t)
			alice.hello(token(t, "alice", tokSpaces("team")), "phone")
			alice.join(1, scope, room)
			// bob on two devices, two nodes: one user.
			bob1, bob2 := n.b.dial(t), n.a.dial(t)
			bob1.hello(token(t, "bob", tokSpaces("team")), "laptop")
			bob2.hello(token(t, "bob", tokSpaces("team")), "tablet")
			bob1.join(2, scope, room)
			bob2.join(3, scope, room)
			start := time.Now()
			for range 10 {
				bob1.send(&protocol.Typing{RoomRef: ref})
				bob2.send(&protocol.Typing{RoomRef: ref})
			}
			// A marker after the burst: every typing event sent for the
			// burst arrives before it.
			bob1.send(&protocol.RoomStateMsg{RoomRef: ref, State: json.RawMessage(`"marker"`)})
			typing := 0
			for {
				typ, data, err := alice.next(waitTimeout)
				if err != nil {
					t.Fatal(err)
				}
				if typ != protocol.TypeRoomEvent {
					continue
				}
				if eventOf(protocol.RoomTyping, "bob")(data) {
					typing++
				}
				if eventOf(protocol.RoomState, "bob")(data) {
					break
				}
			}
			if elapsed := time.Since(start); typing != 1 && elapsed < 400*time.Millisecond {
				t.Fatalf("%d typing events for 20 signals within %s; want 1", typing, elapsed)
			}
			var sr supportRoom
			n.a.getJSON(t, "/v1/support/rooms/doc:t?scope=space:team", supportToken(t), &sr)
			typingNow := 0
			for _, m := range sr.Members {
				if m.Typing {
					typingNow++
				}
			}
			if time.Since(start) < 300*time.Millisecond && typingNow != 1 {
				t.Fatalf("members typing right after = %d, want 1: %+v", typingNow, sr.Members)
			}
			time.Sleep(350 * time.Millisecond)
			n.a.getJSON(t, "/v1/support/rooms/doc:t?scope=space:team", supportToken(t), &sr)
			for _, m := range sr.Members {
				if m.Typing {
					t.Fatalf("still typing %s after the burst began (TTL 300ms): %+v", time.Since(start), m)
				}
			}
			time.Sleep(100 * time.Millisecond) // the interval has passed: allowed again
			bob2.send(&protocol.Typing{RoomRef: ref})
			alice.waitFor(protocol.TypeRoomEvent, nil, eventOf(protocol.RoomTyping, "bob"))
		})
}

// Awareness states are capped in size and coalesced to one per
// AwarenessInterval, and the newest always arrives.
func TestAwarenessLimits(t *testing.T) {
	t.Parallel()
	forEachCluster(t, func(c *Config) { c.AwarenessMaxBytes = 64 }, func(t *testing.T, n nodePair, _ presence.Tracker) {
		scope, room := "space:team", "doc:a"
		ref := protocol.RoomRef{Scope: scope, Room: room}
		alice := n.a.dial(t)
		alice.hello(token(t, "alice", tokSpaces("team")), "phone")
		alice.join(1, scope, room)
		bob := n.b.dial(t)
		bob.hello(token(t, "bob", tokSpaces("team")), "laptop")
		bob.join(2, scope, room)
		bob.send(&protocol.RoomStateMsg{Envelope: protocol.Envelope{Rid: 3}, RoomRef: ref,
			State: json.RawMessage(`"` + strings.Repeat("x", 70) + `"`)})
		if e := bob.waitFor(protocol.TypeError, nil, nil); !strings.Contains(string(e), `"too_large"`) || !strings.Contains(string(e), `"rid":3`) {
			t.Fatalf("oversized state: %s", e)
		}
		// Not in the room: not_found.
		bob.send(&protocol.RoomStateMsg{Envelope: protocol.Envelope{Rid: 4}, RoomRef: protocol.RoomRef{Scope: scope, Room: "other"}, State: json.RawMessage(`1`)})
		if e := bob.waitFor(protocol.TypeError, nil, nil); !strings.Contains(string(e), `"not_found"`) {
			t.Fatalf("state for a room not joined: %s", e)
		}
		start := time.Now()
		const updates = 50
		for i := range updates {
			bob.send(&protocol.RoomStateMsg{RoomRef: ref, State: json.RawMessage(fmt.Sprintf(`{"cursor":%d}`, i))})
		}
		sent := time.Since(start)
		got := 0
		for {
			var ev protocol.RoomEvent
			alice.waitFor(protocol.TypeRoomEvent, &ev, eventOf(protocol.RoomState, "bob"))
			got++
			if string(ev.Member.State) == fmt.Sprintf(`{"cursor":%d}`, updates-1) {
				break
			}
		}
		elapsed := time.Since(start)
		// 10/s: at most one per 100 ms, plus the first at once.
		if limit := int(elapsed/DefaultAwarenessInterval) + 2; got > limit || got >= updates {
			t.Fatalf("%d state events for %d updates in %s (sent in %s); want at most %d", got, updates, elapsed, sent, limit)
		}
		t.Logf("%d updates in %s -> %d events in %s", updates, sent, got, elapsed)
	})
}

// sseClient reads a /v1/support/events stream.
type sseClient struct {
	t    testing.TB
	resp *http.Response
	r    *bufio.Reader
}

func (h *harness) events(t testing.TB, query, tok string) *sseClient {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, h.httpURL()+"/v1/support/events"+query, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	c := &sseClient{t: t, resp: resp, r: bufio.NewReader(resp.Body)}
	if line, _ := c.r.ReadString('\n'); line != ": connected\n" {
		t.Fatalf("first line %q", line)
	}
	return c
}

// next returns the next event's name and data.
func (c *sseClient) next() (string, supportEventWire) {
	c.t.Helper()
	var name string
	var ev supportEventWire
	done := make(chan struct{})
	timer := time.AfterFunc(waitTimeout, func() { c.resp.Body.Close() })
	defer timer.Stop()
	defer close(done)
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading events: %v", err)
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case strings.HasPrefix(line, "event: "):
			name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev); err != nil {
				c.t.Fatal(err)
			}
		case line == "" && name != "":
			return name, ev
		}
	}
}

func TestSupportEventsAcrossNodes(t *testing.T) {
	t.Parallel()
	forEachCluster(t, nil, func(t *testing.T, n nodePair, _ presence.Tracker) {
		all := n.a.events(t, "", supportToken(t))
		bobOnly := n.a.events(t, "?user=bob", supportToken(t))
		alice := n.b.dial(t)
		alice.hello(token(t, "alice", tokSpaces("team")), "phone")
		bob := n.b.dial(t)
		bob.hello(token(t, "bob", tokSpaces("team")), "laptop")
		bob.join(1, "space:team", "doc:1")
		bob.ws.Close()
		want := []string{"online alice", "online bob", "join bob", "leave bob", "offline bob"}
		for _, w := range want {
			name, ev := all.next()
			if got := name + " " + ev.User; got != w {
				t.Fatalf("event %q, want %q (%+v)", got, w, ev)
			}
			if ev.Node != "node-b" || ev.At == 0 {
				t.Fatalf("event %+v", ev)
			}
		}
		for _, w := range want[1:] {
			if name, ev := bobOnly.next(); name+" "+ev.User != w {
				t.Fatalf("filtered stream: %s %s, want %s", name, ev.User, w)
			}
		}
	})
}

func TestSupportActionsAcrossNodes(t *testing.T) {
	t.Parallel()
	forEachCluster(t, nil, func(t *testing.T, n nodePair, _ presence.Tracker) {
		scope := "user:bob"
		bob, _ := n.b.open(t, "bob", "laptop", scope)
		eventually(t, waitTimeout, "bob online", func() bool {
			var o supportOnline
			n.a.getJSON(t, "/v1/support/online", supportToken(t), &o)
			return o.Connections == 1
		})
		// support may look but not act.
		if code, body := n.a.httpDo(t, http.MethodPost, "/v1/support/devices/laptop/disconnect", supportToken(t)); code != http.StatusForbidden {
			t.Fatalf("disconnect with role support = %d %s", code, body)
		}
		if code, _ := n.a.httpDo(t, http.MethodPost, "/v1/support/devices/nosuch/disconnect", adminToken(t)); code != http.StatusNotFound {
			t.Fatalf("unknown device = %d, want 404", code)
		}
		if code, _ := n.a.httpDo(t, http.MethodPost, "/v1/support/devices/laptop/explode", adminToken(t)); code != http.StatusNotFound {
			t.Fatalf("unknown action = %d, want 404", code)
		}
		code, body := n.a.httpDo(t, http.MethodPost, "/v1/support/devices/laptop/resync", adminToken(t))
		if code != http.StatusOK || !strings.Contains(string(body), `"user":"bob"`) {
			t.Fatalf("resync = %d %s", code, body)
		}
		var r protocol.Reset
		bob.waitFor(protocol.TypeReset, &r, nil)
		if r.Scope != scope {
			t.Fatalf("reset = %+v", r)
		}
		if code, body := n.a.httpDo(t, http.MethodPost, "/v1/support/devices/laptop/disconnect", adminToken(t)); code != http.StatusOK {
			t.Fatalf("disconnect = %d %s", code, body)
		}
		bob.expectClose(protocol.CloseDisconnected)
		// The error that ended the connection is the device's last error.
		eventually(t, waitTimeout, "the offline device's last error", func() bool {
			var u supportUser
			n.a.getJSON(t, "/v1/support/users/bob", supportToken(t), &u)
			return len(u.Devices) == 1 && !u.Devices[0].Online && u.Devices[0].LastError != nil &&
				u.Devices[0].LastError.Code == string(protocol.CodeDisconnected)
		})
		bob2, _ := n.b.open(t, "bob", "laptop", scope)
		eventually(t, waitTimeout, "bob back online", func() bool {
			var o supportOnline
			n.a.getJSON(t, "/v1/support/online", supportToken(t), &o)
			return o.Connections == 1
		})
		if code, body := n.a.httpDo(t, http.MethodPost, "/v1/support/devices/laptop/revoke?user=bob", adminToken(t)); code != http.StatusOK ||
			!strings.Contains(string(body), `"revoked":[`) {
			t.Fatalf("revoke = %d %s", code, body)
		}
		bob2.expectRevoked()
	})
}

// A node that dies without cleanup: its entries expire, a live node
// sweeps them and announces offline and leave; room members see the leave.
func TestPresenceGhostsOfDeadNodeSwept(t *testing.T) {
	t.Parallel()
	forEachCluster(t, fastPresence, func(t *testing.T, n nodePair, tr presence.Tracker) {
		ctx := context.Background()
		scope, room := "space:team", "doc:g"
		alice := n.a.dial(t)
		alice.hello(token(t, "alice", tokSpaces("team")), "phone")
		alice.join(1, scope, room)
		stream := n.a.events(t, "?user=ghost", supportToken(t))
		// The dead node's state, as it left it: a node record, an entry
		// and a membership, then silence.
		if err := tr.RenewNode(ctx, "dead/0"); err != nil {
			t.Fatal(err)
		}
		ghost := presence.Device{Conn: "ghostconn", User: "ghost", Device: "d", Node: "dead", Instance: "dead/0", State: presence.Active}
		if err := tr.Connect(ctx, ghost); err != nil {
			t.Fatal(err)
		}
		if err := tr.Join(ctx, roomID(protocol.RoomRef{Scope: scope, Room: room}), presence.Member{Conn: "ghostconn", User: "ghost", Device: "d"}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var ev protocol.RoomEvent
		alice.waitFor(protocol.TypeRoomEvent, &ev, eventOf(protocol.RoomLeave, "ghost"))
		took := time.Since(start)
		if took > 600*time.Millisecond+500*time.Millisecond {
			t.Fatalf("the ghost left after %s; the TTL is 600ms", took)
		}
		name, sev := stream.next()
		if name != "leave" || sev.Reason != "expired" {
			t.Fatalf("first ghost event %s %+v", name, sev)
		}
		if name, sev = stream.next(); name != "offline" || sev.Reason != "expired" {
			t.Fatalf("second ghost event %s %+v", name, sev)
		}
		// The live node's own entry survived its heartbeats.
		var o supportOnline
		n.a.getJSON(t, "/v1/support/online", supportToken(t), &o)
		if o.Connections != 1 || o.Items[0].User != "alice" {
			t.Fatalf("online after the sweep = %+v", o)
		}
	})
}

func deviceRef(user, device string) storage.DeviceRef {
	return storage.DeviceRef{User: user, Device: device}
}

// A token refresh that drops a space also leaves that space's rooms.
func TestRoomsLeftWhenScopeRevoked(t *testing.T) {
	t.Parallel()
	forEachCluster(t, nil, func(t *testing.T, n nodePair, _ presence.Tracker) {
		alice := n.a.dial(t)
		alice.hello(token(t, "alice", tokSpaces("team")), "phone")
		alice.join(1, "space:team", "doc:1")
		bob := n.b.dial(t)
		bob.hello(token(t, "bob", tokSpaces("team")), "laptop")
		rb := bob.join(2, "space:team", "doc:1")
		alice.waitFor(protocol.TypeRoomEvent, nil, eventOf(protocol.RoomJoin, "bob"))
		bob.send(&protocol.Auth{Envelope: protocol.Envelope{Rid: 3}, Token: token(t, "bob")}) // no spaces
		var ev protocol.RoomEvent
		alice.waitFor(protocol.TypeRoomEvent, &ev, eventOf(protocol.RoomLeave, "bob"))
		if ev.Member.ID != rb.You {
			t.Fatalf("leave of %s, want %s", ev.Member.ID, rb.You)
		}
		var sr supportRoom
		n.a.getJSON(t, "/v1/support/rooms/doc:1?scope=space:team", supportToken(t), &sr)
		if len(sr.Members) != 1 {
			t.Fatalf("room after bob's scope was revoked = %+v", sr)
		}
	})
}
