package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/gateway/auth"
	"github.com/syncgate/syncgate/presence"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/storage/embedded"
	"github.com/syncgate/syncgate/sync/engine"
	"github.com/syncgate/syncgate/sync/hlc"
	"github.com/syncgate/syncgate/sync/protocol"
)

// The harness runs a real Server (Serve on a loopback listener) over a real
// engine on an embedded bbolt store in t.TempDir(), with a real HS256
// Verifier, and talks to it with real gorilla WebSocket clients.

const testSecret = "gateway-test-secret-0123456789abcdef"

// waitTimeout bounds every wait for a server message in tests.
const waitTimeout = 5 * time.Second

type harness struct {
	t      testing.TB
	srv    *Server
	eng    *engine.Engine
	store  *embedded.Store
	reg    *prometheus.Registry
	addr   string
	done   chan error
	cancel context.CancelFunc
}

type harnessOption func(*harnessSetup)

type harnessSetup struct {
	cfg       Config
	ecfg      engine.Config
	broker    Broker
	resolvers *conflict.Registry
	leeway    time.Duration
	sessions  storage.Sessions // nil: the harness's own store
	tracker   presence.Tracker // nil: the Server's default memory tracker
}

func withConfig(f func(*Config)) harnessOption { return func(s *harnessSetup) { f(&s.cfg) } }
func withEngineConfig(f func(*engine.Config)) harnessOption {
	return func(s *harnessSetup) { f(&s.ecfg) }
}
func withBroker(b Broker) harnessOption { return func(s *harnessSetup) { s.broker = b } }

// withResolvers replaces the default registry (LWW for every collection).
func withResolvers(r *conflict.Registry) harnessOption {
	return func(s *harnessSetup) { s.resolvers = r }
}

// withSessions makes the node share a session store with another node
// (nodes of one cluster share one), instead of using its own store's.
func withSessions(s storage.Sessions) harnessOption { return func(h *harnessSetup) { h.sessions = s } }

// withTracker makes the node use a presence tracker (nodes of one cluster
// share one).
func withTracker(t presence.Tracker) harnessOption { return func(h *harnessSetup) { h.tracker = t } }

// withLeeway sets the verifier's clock-skew leeway on exp and nbf.
func withLeeway(d time.Duration) harnessOption { return func(s *harnessSetup) { s.leeway = d } }

// testLogger discards logs unless SYNCGATE_TEST_LOG is set (t.Log cannot be
// used: connection goroutines may log after the test returns).
func testLogger() *slog.Logger {
	if os.Getenv("SYNCGATE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func newHarness(t testing.TB, opts ...harnessOption) *harness {
	t.Helper()
	setup := harnessSetup{cfg: Config{Node: "test-node"}}
	for _, o := range opts {
		o(&setup)
	}
	ctx := context.Background()
	store, err := embedded.Open(ctx, filepath.Join(t.TempDir(), "sync.db"), embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if setup.resolvers == nil {
		setup.resolvers = conflict.NewRegistry(conflict.LWW{})
	}
	notifier := new(LateNotifier)
	eng, err := engine.New(setup.ecfg, engine.Options{
		Store:     store,
		Resolvers: setup.resolvers,
		Notifier:  notifier,
	})
	if err != nil {
		t.Fatal(err)
	}
	key, err := auth.LoadKey("", auth.HS256, "", []byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	ver, err := auth.NewVerifier(auth.VerifierConfig{Keys: []auth.Key{key}, Leeway: setup.leeway})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if setup.sessions == nil {
		setup.sessions = store
	}
	srv, err := New(setup.cfg, Options{Engine: eng, Verifier: ver, Broker: setup.broker, Logger: testLogger(), Registry: reg, Sessions: setup.sessions, Tracker: setup.tracker, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	notifier.Set(srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	h := &harness{t: t, srv: srv, eng: eng, store: store, reg: reg, addr: ln.Addr().String(), done: make(chan error, 1), cancel: cancel}
	go func() { h.done <- srv.Serve(sctx, ln) }()
	t.Cleanup(func() {
		h.stop()
		_ = store.Close(context.Background())
	})
	return h
}

// stop shuts the server down (idempotent).
func (h *harness) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = h.srv.Shutdown(ctx)
	h.cancel()
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		h.t.Error("Serve did not return after Shutdown")
	}
}

func (h *harness) wsURL() string   { return "ws://" + h.addr + "/v1/ws" }
func (h *harness) httpURL() string { return "http://" + h.addr }

type tokenOption func(*auth.MintOptions)

func tokDevice(d string) tokenOption     { return func(o *auth.MintOptions) { o.Device = d } }
func tokSpaces(s ...string) tokenOption  { return func(o *auth.MintOptions) { o.Spaces = s } }
func tokTTL(d time.Duration) tokenOption { return func(o *auth.MintOptions) { o.TTL = d } }
func tokIssued(at time.Time) tokenOption {
	return func(o *auth.MintOptions) { o.Now = func() time.Time { return at } }
}

// token mints a token for user signed with the harness secret.
func token(t testing.TB, user string, opts ...tokenOption) string {
	t.Helper()
	o := auth.MintOptions{User: user, TTL: time.Hour}
	for _, f := range opts {
		f(&o)
	}
	tok, err := auth.Mint([]byte(testSecret), o)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// head returns the scope's head seq straight from the store.
func (h *harness) head(scope string) uint64 {
	h.t.Helper()
	n, err := h.store.Head(context.Background(), scope)
	if err != nil {
		h.t.Fatal(err)
	}
	return n
}

func (h *harness) lastMutation(user, device string) uint64 {
	h.t.Helper()
	d, err := h.store.Device(context.Background(), storage.DeviceRef{User: user, Device: device})
	if err != nil {
		h.t.Fatal(err)
	}
	return d.LastMutationID
}

// counter reads the value of a counter or gauge.
func counter(t testing.TB, c prometheus.Metric) float64 {
	t.Helper()
	var pb dto.Metric
	if err := c.Write(&pb); err != nil {
		t.Fatal(err)
	}
	switch {
	case pb.Counter != nil:
		return pb.Counter.GetValue()
	case pb.Gauge != nil:
		return pb.Gauge.GetValue()
	}
	t.Fatalf("%s is not a counter or gauge", c.Desc())
	return 0
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// client is a test WebSocket client. It splits the server's NDJSON frames
// into messages and records how many messages each frame carried.
type client struct {
	t        testing.TB
	ws       *websocket.Conn
	pending  [][]byte
	frames   int
	messages int
	maxBatch int // most messages seen in one frame
	closeErr *websocket.CloseError
}

type dialOption func(*websocket.Dialer)

// withReadBuffer shrinks the client's kernel receive buffer, so that a
// client that stops reading backs the server up quickly.
func withReadBuffer(n int) dialOption {
	return func(d *websocket.Dialer) {
		d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var nd net.Dialer
			c, err := nd.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			_ = c.(*net.TCPConn).SetReadBuffer(n)
			return c, nil
		}
	}
}

func (h *harness) dial(t testing.TB, opts ...dialOption) *client {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: waitTimeout}
	for _, o := range opts {
		o(&d)
	}
	ws, resp, err := d.Dial(h.wsURL(), nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	_ = resp.Body.Close()
	t.Cleanup(func() { _ = ws.Close() })
	return &client{t: t, ws: ws}
}

func (c *client) send(m protocol.Message) {
	c.t.Helper()
	data, err := protocol.Marshal(m)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(data)
}

func (c *client) sendRaw(data []byte) {
	c.t.Helper()
	_ = c.ws.SetWriteDeadline(time.Now().Add(waitTimeout))
	if err := c.ws.WriteMessage(websocket.TextMessage, data); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next returns the next server message (its type and JSON), or the error
// that ended the connection (a *websocket.CloseError for a close frame).
func (c *client) next(timeout time.Duration) (string, []byte, error) {
	for len(c.pending) == 0 {
		_ = c.ws.SetReadDeadline(time.Now().Add(timeout))
		kind, data, err := c.ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				// gorilla has answered the close; like a browser, drop
				// the TCP connection now.
				c.closeErr = ce
				_ = c.ws.Close()
			}
			return "", nil, err
		}
		if kind != websocket.TextMessage {
			return "", nil, fmt.Errorf("server sent a non-text frame (%d)", kind)
		}
		lines := bytes.Split(data, []byte{'\n'})
		c.frames++
		c.messages += len(lines)
		c.maxBatch = max(c.maxBatch, len(lines))
		c.pending = append(c.pending, lines...)
	}
	msg := c.pending[0]
	c.pending = c.pending[1:]
	var env struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(msg, &env); err != nil {
		return "", nil, fmt.Errorf("server sent invalid JSON %q: %v", msg, err)
	}
	return env.Type, msg, nil
}

// expect reads the next message, requires its type and decodes it into v.
func (c *client) expect(typ string, v any) {
	c.t.Helper()
	got, data, err := c.next(waitTimeout)
	if err != nil {
		c.t.Fatalf("waiting for %s: %v", typ, err)
	}
	if got != typ {
		c.t.Fatalf("want a %s message, got %s: %s", typ, got, data)
	}
	if v != nil {
		if err := json.Unmarshal(data, v); err != nil {
			c.t.Fatalf("decoding %s: %v", typ, err)
		}
	}
}

func (c *client) expectError(code protocol.Code) protocol.ErrorMsg {
	c.t.Helper()
	var e protocol.ErrorMsg
	c.expect(protocol.TypeError, &e)
	if e.Code != code {
		c.t.Fatalf("want error %s, got %s (%s)", code, e.Code, e.Message)
	}
	return e
}

// expectClose reads until the connection ends and requires close code
// code. It returns the messages that came first.
func (c *client) expectClose(code int) []string {
	c.t.Helper()
	var before []string
	for {
		typ, data, err := c.next(waitTimeout)
		if err == nil {
			before = append(before, typ+" "+string(data))
			continue
		}
		if c.closeErr == nil {
			c.t.Fatalf("want close %d, got %v (after %d messages: %.300s)", code, err, len(before), strings.Join(before, " | "))
		}
		if c.closeErr.Code != code {
			c.t.Fatalf("want close %d, got close %d %q", code, c.closeErr.Code, c.closeErr.Text)
		}
		return before
	}
}

func (c *client) hello(tok, device string, scopes ...protocol.Subscription) *protocol.Welcome {
	c.t.Helper()
	c.send(&protocol.Hello{Protocol: protocol.Version, Token: tok, Device: device, Scopes: scopes})
	var w protocol.Welcome
	c.expect(protocol.TypeWelcome, &w)
	return &w
}

// open dials and completes a hello for user on device, subscribed to the
// given scopes from 0.
func (h *harness) open(t testing.TB, user, device string, scopes ...string) (*client, *protocol.Welcome) {
	t.Helper()
	c := h.dial(t)
	subs := make([]protocol.Subscription, len(scopes))
	for i, s := range scopes {
		subs[i] = protocol.Subscription{Scope: s}
	}
	w := c.hello(token(t, user), device, subs...)
	c.sync()
	return c, w
}

// syncRid is the rid of sync's ping.
const syncRid = 1 << 62

// sync makes a ping round trip. The server handles a connection's messages
// in order, so once the pong is back everything sent before (a hello's
// subscriptions included) has taken effect. Other messages that arrive
// meanwhile stay queued for next.
func (c *client) sync() {
	c.t.Helper()
	c.send(&protocol.Ping{Envelope: protocol.Envelope{Rid: syncRid}})
	var stash [][]byte
	for {
		typ, data, err := c.next(waitTimeout)
		if err != nil {
			c.t.Fatalf("sync: %v", err)
		}
		if typ == protocol.TypePong && bytes.Contains(data, []byte(`"rid":4611686018427387904`)) {
			break
		}
		stash = append(stash, data)
	}
	c.pending = append(stash, c.pending...)
}

func (c *client) ping(rid uint64) {
	c.t.Helper()
	c.send(&protocol.Ping{Envelope: protocol.Envelope{Rid: rid}})
	var p protocol.Pong
	c.expect(protocol.TypePong, &p)
	if p.Rid != rid {
		c.t.Fatalf("pong rid %d, want %d", p.Rid, rid)
	}
}

func (c *client) push(rid uint64, muts ...protocol.Mutation) {
	c.t.Helper()
	c.send(&protocol.Push{Envelope: protocol.Envelope{Rid: rid}, Mutations: muts})
}

// expectAck skips `changes` (a pusher receives its own commits first) and
// returns the ack.
func (c *client) expectAck(rid uint64) protocol.Ack {
	c.t.Helper()
	for {
		typ, data, err := c.next(waitTimeout)
		if err != nil {
			c.t.Fatalf("waiting for ack %d: %v", rid, err)
		}
		switch typ {
		case protocol.TypeChanges:
			continue
		case protocol.TypeAck:
			var a protocol.Ack
			if err := json.Unmarshal(data, &a); err != nil {
				c.t.Fatal(err)
			}
			if a.Rid != rid {
				c.t.Fatalf("ack rid %d, want %d", a.Rid, rid)
			}
			return a
		default:
			c.t.Fatalf("want ack, got %s: %s", typ, data)
		}
	}
}

var mutationClock atomic.Int64

// hlcNow returns a fresh HLC text for device.
func hlcNow(device string) string {
	l := mutationClock.Add(1) % hlc.MaxLogical
	return hlc.Timestamp{Wall: time.Now().UnixMilli(), Logical: uint32(l), Node: device}.String()
}

func put(mid uint64, scope, col, id string, data map[string]any) protocol.Mutation {
	return protocol.Mutation{ID: mid, Scope: scope, Collection: col, DocID: id, Op: "put", HLC: hlcNow("d"), Data: data}
}

// httpPost posts body with an optional bearer token.
func (h *harness) httpPost(t testing.TB, path, tok string, body []byte) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, h.httpURL()+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
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
	return resp.StatusCode, resp.Header, data
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func base64URL(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// serveLocal runs one request through the server's handler, without a
// listener.
func serveLocal(s *Server, method, path string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	s.handler.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader("{}")))
	return rec
}
