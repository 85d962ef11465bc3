package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/syncgate/syncgate/gateway/auth"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/protocol"
)

func tokRemember() tokenOption { return func(o *auth.MintOptions) { o.Remember = true } }
func tokRoles(r ...string) tokenOption {
	return func(o *auth.MintOptions) { o.Roles = r }
}

// helloSession sends a hello that names session (and client info) and
// returns the welcome.
func (c *client) helloSession(tok, device, session string) *protocol.Welcome {
	c.t.Helper()
	c.send(&protocol.Hello{Protocol: protocol.Version, Token: tok, Device: device, Session: session,
		Client: protocol.ClientInfo{Platform: "ios", AppVersion: "3.1.4"}})
	var w protocol.Welcome
	c.expect(protocol.TypeWelcome, &w)
	return &w
}

// expectRevoked reads until the connection closes with 4011 after an
// error session_revoked, and returns that error's message.
func (c *client) expectRevoked() string {
	c.t.Helper()
	before := c.expectClose(protocol.CloseSessionRevoked)
	for _, m := range before {
		if strings.HasPrefix(m, "error ") && strings.Contains(m, `"code":"session_revoked"`) {
			return m
		}
	}
	c.t.Fatalf("closed with 4011 without an error session_revoked first: %q", before)
	return ""
}

// httpDo sends a request with an optional bearer token.
func (h *harness) httpDo(t testing.TB, method, path, tok string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, h.httpURL()+path, nil)
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

func (h *harness) sessionsOf(t testing.TB, user string) []storage.Session {
	t.Helper()
	list, err := h.store.ListSessions(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func TestSessionResume(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	tok := token(t, "alice")
	c := h.dial(t)
	w := c.helloSession(tok, "phone", "")
	c.sync()
	list := h.sessionsOf(t, "alice")
	if len(list) != 1 || list[0].ID != w.Session || list[0].Device != "phone" || list[0].Node != "test-node" ||
		list[0].Platform != "ios" || list[0].AppVersion != "3.1.4" || list[0].TTL != DefaultSessionTTL {
		t.Fatalf("stored sessions = %+v, want the welcome's %s", list, w.Session)
	}
	created := list[0].CreatedAt
	c.ws.Close()
	// The disconnect refreshes the session: LastSeenAt moves past the hello.
	eventually(t, waitTimeout, "refresh at disconnect", func() bool {
		s, err := h.store.Session(context.Background(), w.Session)
		return err == nil && s.LastSeenAt.After(list[0].LastSeenAt)
	})

	for _, tc := range []struct {
		name, device, session string
		same                  bool
	}{
		{"same device resumes", "phone", w.Session, true},
		{"another device gets its own", "laptop", w.Session, false},
		{"made-up id", "phone", strings.Repeat("ab", 32), false},
		{"malformed id", "phone", "not a session id", false},
	} {
		c := h.dial(t)
		got := c.helloSession(tok, tc.device, tc.session)
		if (got.Session == w.Session) != tc.same {
			t.Errorf("%s: welcome session %s (first %s), want same=%v", tc.name, got.Session, w.Session, tc.same)
		}
		if !validSessionID(got.Session) {
			t.Errorf("%s: welcome session %q is not 32 bytes of hex", tc.name, got.Session)
		}
		c.ws.Close()
	}
	s, err := h.store.Session(context.Background(), w.Session)
	if err != nil || !s.CreatedAt.Equal(created) {
		t.Fatalf("resumed session = %+v, %v; want CreatedAt kept", s, err)
	}
}

func TestSessionRememberTTL(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withConfig(func(c *Config) { c.SessionRememberTTL = 48 * time.Hour }))
	for _, tc := range []struct {
		name string
		tok  string
		ttl  time.Duration
	}{
		{"plain", token(t, "alice"), DefaultSessionTTL},
		{"remember", token(t, "alice", tokRemember()), 48 * time.Hour},
	} {
		c := h.dial(t)
		w := c.helloSession(tc.tok, "phone-"+tc.name, "")
		exp := time.UnixMilli(w.SessionExpiresAt)
		if want := time.Now().Add(tc.ttl); exp.Before(want.Add(-time.Minute)) || exp.After(want.Add(time.Minute)) {
			t.Errorf("%s: sessionExpiresAt %v, want about now+%s", tc.name, exp, tc.ttl)
		}
	}
}

// TestSessionRevokeOverHTTP: revoking a session disconnects its device
// with 4011, its id is refused afterwards, and a hello without it begins
// a new session.
func TestSessionRevokeOverHTTP(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	phone, w := h.open(t, "alice", "phone", "user:alice")
	laptop, _ := h.open(t, "alice", "laptop")

	code, body := h.httpDo(t, http.MethodDelete, "/v1/sessions/"+w.Session, token(t, "alice"))
	var one httpSessionOne
	if code != http.StatusOK || json.Unmarshal(body, &one) != nil || one.Session.ID != w.Session || !one.Session.Revoked ||
		one.Session.RevokedAt == 0 || one.Session.Evicted {
		t.Fatalf("DELETE = %d %s", code, body)
	}
	phone.expectRevoked()
	laptop.ping(5) // another session of the user is untouched
	eventually(t, waitTimeout, "unsubscribed", func() bool { return h.srv.hub.subscribers("user:alice") == 0 })

	// The revoked id is refused at hello, with the same code.
	c := h.dial(t)
	c.send(&protocol.Hello{Protocol: protocol.Version, Token: token(t, "alice"), Device: "phone", Session: w.Session})
	c.expectRevoked()

	// Revoking again is idempotent.
	if code, body := h.httpDo(t, http.MethodDelete, "/v1/sessions/"+w.Session, token(t, "alice")); code != http.StatusOK {
		t.Fatalf("DELETE again = %d %s", code, body)
	}
	// Without the id, the device begins anew.
	c = h.dial(t)
	if w2 := c.helloSession(token(t, "alice"), "phone", ""); w2.Session == w.Session {
		t.Fatal("a new hello got the revoked session")
	}
}

func TestSessionHTTPAPI(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	_, wa := h.open(t, "alice", "phone")
	_, wb := h.open(t, "bob", "phone")
	alice, bob, admin := token(t, "alice"), token(t, "bob"), token(t, "carol", tokRoles("admin"))

	for _, tc := range []struct {
		name, method, path, tok string
		status                  int
		code                    protocol.Code // error code, or "" for 200
		ids                     []string      // sessions in the answer
	}{
		{"list own", http.MethodGet, "/v1/sessions", alice, 200, "", []string{wa.Session}},
		{"list own, bob", http.MethodGet, "/v1/sessions", bob, 200, "", []string{wb.Session}},
		{"list another's", http.MethodGet, "/v1/sessions?user=bob", alice, 403, protocol.CodeForbidden, nil},
		{"list another's as admin", http.MethodGet, "/v1/sessions?user=bob", admin, 200, "", []string{wb.Session}},
		{"list, none", http.MethodGet, "/v1/sessions", admin, 200, "", []string{}},
		{"no token", http.MethodGet, "/v1/sessions", "", 401, protocol.CodeUnauthorized, nil},
		{"bad token", http.MethodDelete, "/v1/sessions/" + wa.Session, "x.y.z", 401, protocol.CodeUnauthorized, nil},
		{"revoke another's", http.MethodDelete, "/v1/sessions/" + wb.Session, alice, 403, protocol.CodeForbidden, nil},
		{"revoke unknown", http.MethodDelete, "/v1/sessions/" + strings.Repeat("0", 64), alice, 404, protocol.CodeNotFound, nil},
		{"revoke garbage", http.MethodDelete, "/v1/sessions/" + url.PathEscape("../x"), alice, 404, protocol.CodeNotFound, nil},
		{"revoke another's as admin", http.MethodDelete, "/v1/sessions/" + wb.Session, admin, 200, "", []string{wb.Session}},
		{"list after revoke", http.MethodGet, "/v1/sessions", bob, 200, "", []string{}},
	} {
		code, body := h.httpDo(t, tc.method, tc.path, tc.tok)
		if code != tc.status {
			t.Errorf("%s: status %d, want %d: %s", tc.name, code, tc.status, body)
			continue
		}
		if tc.code != "" {
			var e protocol.ErrorMsg
			if err := json.Unmarshal(body, &e); err != nil || e.Code != tc.code {
				t.Errorf("%s: body %s, want error %s", tc.name, body, tc.code)
			}
			continue
		}
		var ids []string
		if tc.method == http.MethodGet {
			var l httpSessionList
			if err := json.Unmarshal(body, &l); err != nil || l.Sessions == nil {
				t.Errorf("%s: body %s", tc.name, body)
				continue
			}
			for _, s := range l.Sessions {
				ids = append(ids, s.ID)
				if s.Platform != "" || s.CreatedAt == 0 || s.ExpiresAt <= s.CreatedAt || s.Node != "test-node" {
					t.Errorf("%s: session %+v", tc.name, s)
				}
			}
		} else {
			var one httpSessionOne
			if err := json.Unmarshal(body, &one); err != nil {
				t.Errorf("%s: body %s", tc.name, body)
				continue
			}
			ids = []string{one.Session.ID}
		}
		if ids == nil {
			ids = []string{}
		}
		if !slices.Equal(ids, tc.ids) {
			t.Errorf("%s: sessions %v, want %v", tc.name, ids, tc.ids)
		}
	}
}

// TestSessionEviction: the 11th session of a user evicts the oldest, whose
// device is disconnected with 4011; the other ten stay connected.
func TestSessionEviction(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var (
		clients []*client
		ids     []string
	)
	for i := range DefaultMaxSessionsPerUser {
		c, w := h.open(t, "alice", fmt.Sprintf("d%02d", i))
		clients, ids = append(clients, c), append(ids, w.Session)
		time.Sleep(2 * time.Millisecond) // distinct CreatedAt: the order is by time, then id
	}
	eleventh, w := h.open(t, "alice", "d10")
	msg := clients[0].expectRevoked()
	if !strings.Contains(msg, "evicted") {
		t.Errorf("eviction error %s does not say evicted", msg)
	}
	for i, c := range clients[1:] {
		c.ping(uint64(100 + i))
	}
	eleventh.ping(7)
	var live []string
	for _, s := range h.sessionsOf(t, "alice") {
		live = append(live, s.ID)
	}
	if want := append(slices.Clone(ids[1:]), w.Session); !slices.Equal(live, want) {
		t.Errorf("live sessions %v, want %v", live, want)
	}
	// The evicted id is refused.
	c := h.dial(t)
	c.send(&protocol.Hello{Protocol: protocol.Version, Token: token(t, "alice"), Device: "d00", Session: ids[0]})
	c.expectRevoked()
}

// TestSessionRefresh: a connected device's session is refreshed in the
// store periodically, and the refresh finds a revocation no control
// message announced (here: revoked straight in the store).
func TestSessionRefresh(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withConfig(func(c *Config) { c.SessionRefresh = 20 * time.Millisecond }))
	c, w := h.open(t, "alice", "phone")
	first, err := h.store.Session(context.Background(), w.Session)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, waitTimeout, "a periodic refresh", func() bool {
		s, err := h.store.Session(context.Background(), w.Session)
		return err == nil && s.ExpiresAt.After(first.ExpiresAt) && s.ConnectedAt.Equal(first.ConnectedAt)
	})
	c.ping(1)
	if _, err := h.store.RevokeSession(context.Background(), w.Session); err != nil {
		t.Fatal(err)
	}
	c.expectRevoked()
}

// TestSessionStoreFailure: a hello whose session cannot be begun is
// refused as retryable, and the connection closed with 1011.
func TestSessionStoreFailure(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withSessions(failingSessions{}))
	c := h.dial(t)
	c.send(&protocol.Hello{Protocol: protocol.Version, Token: token(t, "alice"), Device: "phone"})
	before := c.expectClose(protocol.CloseInternal)
	if len(before) != 1 || !strings.Contains(before[0], `"code":"unavailable"`) || !strings.Contains(before[0], `"retryable":true`) {
		t.Fatalf("before the close: %q", before)
	}
	if code, body := h.httpDo(t, http.MethodGet, "/v1/sessions", token(t, "alice")); code != http.StatusServiceUnavailable {
		t.Fatalf("GET /v1/sessions = %d %s, want 503", code, body)
	}
}

// TestSessionStoreSlowerThanHello: beginning the session outlasts the
// hello deadline (a MongoDB outage rides out its retries); the device
// still gets the retryable error and the close code, not a bare reset.
func TestSessionStoreSlowerThanHello(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withSessions(slowSessions{delay: 700 * time.Millisecond}),
		withConfig(func(c *Config) { c.HelloTimeout = 200 * time.Millisecond }))
	c := h.dial(t)
	c.send(&protocol.Hello{Protocol: protocol.Version, Token: token(t, "alice"), Device: "phone"})
	before := c.expectClose(protocol.CloseInternal)
	if len(before) != 1 || !strings.Contains(before[0], `"code":"unavailable"`) {
		t.Fatalf("before the close: %q", before)
	}
}

// slowSessions fails BeginSession after a delay.
type slowSessions struct {
	failingSessions
	delay time.Duration
}

func (s slowSessions) BeginSession(ctx context.Context, spec storage.SessionSpec) (storage.Session, []storage.Session, error) {
	time.Sleep(s.delay)
	return s.failingSessions.BeginSession(ctx, spec)
}

type failingSessions struct{}

var errStoreDown = errors.New("store down")

func (failingSessions) BeginSession(context.Context, storage.SessionSpec) (storage.Session, []storage.Session, error) {
	return storage.Session{}, nil, errStoreDown
}
func (failingSessions) TouchSession(context.Context, string) (storage.Session, error) {
	return storage.Session{}, errStoreDown
}
func (failingSessions) RevokeSession(context.Context, string) (storage.Session, error) {
	return storage.Session{}, errStoreDown
}
func (failingSessions) Session(context.Context, string) (storage.Session, error) {
	return storage.Session{}, errStoreDown
}
func (failingSessions) ListSessions(context.Context, string) ([]storage.Session, error) {
	return nil, errStoreDown
}
func (failingSessions) SweepSessions(context.Context, time.Time) (int, error) { return 0, errStoreDown }

// TestSessionRevokeAcrossNodes: two nodes share a session store and a
// broker; revoking on node A disconnects the device connected to node B.
// With Redis, this needs the control channel; with a MemoryBus it runs in
// one process.
func TestSessionRevokeAcrossNodes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		nodes func(t *testing.T) (Broker, Broker)
	}{
		{"memory", func(*testing.T) (Broker, Broker) {
			bus := NewMemoryBus()
			return bus.Node(), bus.Node()
		}},
		{"redis", func(t *testing.T) (Broker, Broker) {
			bs := redisNodes(t, redisTestAddr(t), 2, nil)
			return bs[0], bs[1]
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ba, bb := tc.nodes(t)
			a := newHarness(t, withBroker(ba), withConfig(func(c *Config) { c.Node = "node-a" }))
			b := newHarness(t, withBroker(bb), withSessions(a.store), withConfig(func(c *Config) { c.Node = "node-b" }))
			phone, w := b.open(t, "alice", "phone")
			if s, err := a.store.Session(context.Background(), w.Session); err != nil || s.Node != "node-b" {
				t.Fatalf("session through node A's store = %+v, %v", s, err)
			}
			code, body := a.httpDo(t, http.MethodDelete, "/v1/sessions/"+w.Session, token(t, "alice"))
			if code != http.StatusOK {
				t.Fatalf("DELETE on node A = %d %s", code, body)
			}
			phone.expectRevoked()
			// The eviction path announces across nodes too: node B holds
			// the oldest of eleven, node A begins the eleventh.
			oldest, w0 := b.open(t, "alice", "tablet")
			for i := range DefaultMaxSessionsPerUser {
				time.Sleep(2 * time.Millisecond)
				a.open(t, "alice", fmt.Sprintf("d%02d", i))
			}
			if msg := oldest.expectRevoked(); !strings.Contains(msg, "evicted") {
				t.Errorf("eviction error %s", msg)
			}
			if s, err := a.store.Session(context.Background(), w0.Session); err != nil || !s.Evicted {
				t.Errorf("the evicted session = %+v, %v", s, err)
			}
		})
	}
}

// TestMemoryBrokerControl: a control message reaches every running node of
// the bus once, the sender included; nodes not running, or closed, get
// nothing.
func TestMemoryBrokerControl(t *testing.T) {
	t.Parallel()
	bus := NewMemoryBus()
	nodes := []*MemoryBroker{bus.Node(), bus.Node(), bus.Node(), bus.Node()}
	crs := make([]*recorder, len(nodes))
	for i, n := range nodes {
		crs[i] = newRecorder()
		n.HandleControl(func(data []byte) { crs[i].handle("control", data) })
	}
	ctx := context.Background()
	if err := nodes[0].PublishControl(ctx, []byte("early")); err == nil {
		t.Fatal("PublishControl before Run succeeded")
	}
	for _, n := range nodes[:3] { // nodes[3] never runs
		if err := n.Run(ctx, newRecorder().handle); err != nil {
			t.Fatal(err)
		}
	}
	if err := nodes[2].Close(ctx); err != nil {
		t.Fatal(err)
	}
	mustDo(t, nodes[0].PublishControl(ctx, []byte("revoke s1")))
	mustDo(t, nodes[1].PublishControl(ctx, []byte("revoke s2")))
	for i, want := range [][]string{
		{"control revoke s1", "control revoke s2"},
		{"control revoke s1", "control revoke s2"},
		nil, nil,
	} {
		if got := crs[i].snapshot(); !slices.Equal(got, want) {
			t.Errorf("node %d got %q, want %q", i, got, want)
		}
	}
	if err := nodes[2].PublishControl(ctx, []byte("x")); !errors.Is(err, ErrBrokerClosed) {
		t.Errorf("PublishControl after Close = %v", err)
	}
}

func TestSessionHelpers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{storage.NewSessionID(), true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("A", 64), false},
		{strings.Repeat("a", 63), false},
		{strings.Repeat("g", 64), false},
		{"", false},
	} {
		if got := validSessionID(tc.id); got != tc.ok {
			t.Errorf("validSessionID(%q) = %v", tc.id, got)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"ios", "ios"},
		{strings.Repeat("x", 70), strings.Repeat("x", 64)},
		{strings.Repeat("x", 63) + "é", strings.Repeat("x", 63)}, // never half a rune
		{"a\xffb", "ab"},
	} {
		if got := clipInfo(tc.in); got != tc.want {
			t.Errorf("clipInfo(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
