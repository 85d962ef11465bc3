package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/syncgate/syncgate/gateway/auth"
	"github.com/syncgate/syncgate/sync/protocol"
)

// bareServer is a Server with only what a conn and the hub use: config,
// metrics, logger, hub and the pre-encoded messages. No engine, no HTTP.
func bareServer(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	cfg, err := cfg.withDefaults()
	if err != nil {
		tb.Fatal(err)
	}
	s := &Server{cfg: cfg, metrics: newMetrics(nil, func() float64 { return 0 }), log: slog.New(slog.DiscardHandler), conns: map[*conn]struct{}{}}
	s.broker = NewMemoryBroker()
	s.hub = newHub(s.broker)
	s.baseCtx, s.cancelBase = context.WithCancel(context.Background())
	tb.Cleanup(s.cancelBase)
	s.slowConsumerMsg = s.errorMessage(0, protocol.CodeSlowConsumer, "slow")
	s.shutdownMsg = s.errorMessage(0, protocol.CodeShutdown, "bye")
	return s
}

// bareConn is a conn without a socket (hub and queue tests).
func bareConn(s *Server) *conn {
	return newConn(context.Background(), s, nil, s.log)
}

// wsPair returns a server-side and a client-side WebSocket connected over
// loopback.
func wsPair(tb testing.TB) (server, client *websocket.Conn) {
	tb.Helper()
	ch := make(chan *websocket.Conn, 1)
	up := websocket.Upgrader{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			tb.Error(err)
			return
		}
		ch <- ws
	}))
	tb.Cleanup(hs.Close)
	cl, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(hs.URL, "http")+"/", nil)
	if err != nil {
		tb.Fatal(err)
	}
	_ = resp.Body.Close()
	server = <-ch
	tb.Cleanup(func() { _ = server.Close(); _ = cl.Close() })
	return server, cl
}

func msg(n, size int) []byte {
	s := fmt.Sprintf(`{"type":"pong","rid":%d}`, n)
	if len(s) < size {
		s = s[:len(s)-1] + `,"pad":"` + strings.Repeat("p", size-len(s)-9) + `"}`
	}
	return []byte(s)
}

// TestWriteLoopCoalesces: queued messages leave as NDJSON frames of at most
// MaxMessagesPerFrame messages and MaxMessageBytes bytes (a larger single
// message goes alone), in order; then the close frame.
func TestWriteLoopCoalesces(t *testing.T) {
	t.Parallel()
	s := bareServer(t, Config{MaxMessagesPerFrame: 4, MaxMessageBytes: 100})
	sws, cws := wsPair(t)
	c := newConn(context.Background(), s, sws, s.log)

	var sent [][]byte
	add := func(m []byte) {
		sent = append(sent, m)
		if !c.enqueue(m) {
			t.Fatal("enqueue refused")
		}
	}
	for i := range 10 {
		add(msg(i, 20)) // 4 + 4 + 2 by count
	}
	add(msg(10, 150)) // alone: larger than MaxMessageBytes
	for i := 11; i < 15; i++ {
		add(msg(i, 40)) // 40+1+40 = 81 fits, a third would be 122: 2 + 2
	}
	c.closeWith(protocol.CloseShutdown, "shutdown", s.shutdownMsg, false)
	go c.writeLoop()

	var frames []int
	var got [][]byte
	for {
		_ = cws.SetReadDeadline(time.Now().Add(waitTimeout))
		_, data, err := cws.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			if ce.Code != protocol.CloseShutdown {
				t.Fatalf("close code %d", ce.Code)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		lines := bytes.Split(data, []byte{'\n'})
		frames = append(frames, len(lines))
		got = append(got, lines...)
	}
	close(c.readDone) // as teardown would
	<-c.writeDone
	if want := []int{4, 4, 2, 1, 2, 2, 1}; fmt.Sprint(frames) != fmt.Sprint(want) {
		t.Fatalf("messages per frame = %v, want %v", frames, want)
	}
	want := append(sent, s.shutdownMsg)
	if len(got) != len(want) {
		t.Fatalf("got %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("message %d = %s, want %s", i, got[i], want[i])
		}
	}
	if f, m := counter(t, s.metrics.framesOut), counter(t, s.metrics.messagesOut); f != 7 || m != 16 {
		t.Fatalf("frames_out %v messages_out %v", f, m)
	}
}

// TestEnqueueBound: the queue never holds more than OutboundQueueBytes
// (except one oversized message alone); overflow drops the queue, queues
// slow_consumer and refuses everything after.
func TestEnqueueBound(t *testing.T) {
	t.Parallel()
	s := bareServer(t, Config{OutboundQueueBytes: 100})
	c := bareConn(s)
	if !c.enqueue(make([]byte, 150)) {
		t.Fatal("an oversized message into an empty queue was refused")
	}
	c.mu.Lock()
	c.queue, c.queued = c.queue[:0], 0
	c.mu.Unlock()
	for i := range 4 {
		if !c.enqueue(make([]byte, 25)) {
			t.Fatalf("message %d refused below the limit", i)
		}
	}
	if c.enqueue([]byte("x")) {
		t.Fatal("101st byte accepted")
	}
	c.mu.Lock()
	queue, closing, code := c.queue, c.closing, c.closeCode
	c.mu.Unlock()
	if !closing || code != protocol.CloseSlowConsumer {
		t.Fatalf("closing=%v code=%d", closing, code)
	}
	if len(queue) != 1 || !bytes.Equal(queue[0], s.slowConsumerMsg) {
		t.Fatalf("queue = %q, want only the slow_consumer error", queue)
	}
	if c.enqueue([]byte("y")) {
		t.Fatal("enqueue accepted after close")
	}
	if counter(t, s.metrics.slowConsumers) != 1 {
		t.Fatal("slow consumer not counted")
	}
}

func TestHubBroadcastAndRefcount(t *testing.T) {
	t.Parallel()
	s := bareServer(t, Config{})
	b := s.broker.(*MemoryBroker)
	ctx := context.Background()
	if err := b.Run(ctx, s.deliver); err != nil {
		t.Fatal(err)
	}
	c1, c2, c3 := bareConn(s), bareConn(s), bareConn(s)
	mustDo(t, s.hub.subscribe(ctx, "user:a", c1))
	mustDo(t, s.hub.subscribe(ctx, "user:a", c2))
	mustDo(t, s.hub.subscribe(ctx, "user:b", c3))
	if n := s.hub.broadcast("user:a", []byte("m")); n != 2 {
		t.Fatalf("delivered to %d", n)
	}
	mustDo(t, b.Publish(ctx, "user:b", []byte("via broker")))
	if c3.queued != len("via broker") {
		t.Fatalf("c3 queued %d bytes", c3.queued)
	}
	mustDo(t, s.hub.unsubscribe(ctx, "user:a", c1))
	if !b.subscribed("user:a") {
		t.Fatal("unsubscribed with a subscriber left")
	}
	mustDo(t, s.hub.unsubscribe(ctx, "user:a", c1)) // not subscribed: no-op
	mustDo(t, s.hub.unsubscribe(ctx, "user:a", c2))
	if b.subscribed("user:a") {
		t.Fatal("still subscribed after the last subscriber left")
	}
	if n := s.hub.broadcast("user:a", []byte("m")); n != 0 {
		t.Fatalf("delivered to %d after unsubscribing", n)
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Node: cfg.Node, MaxMessageBytes: 1 << 20, OutboundQueueBytes: 4 << 20, HelloTimeout: 10 * time.Second,
		PingInterval: 25 * time.Second, PongTimeout: 60 * time.Second, WriteTimeout: 10 * time.Second,
		ShutdownTimeout: 30 * time.Second, MaxMessagesPerFrame: 64,
		SessionTTL: 2 * time.Hour, SessionRememberTTL: 24 * time.Hour, MaxSessionsPerUser: 10, SessionRefresh: 5 * time.Minute,
		PresenceHeartbeat: 25 * time.Second, PresenceTTL: time.Minute, PresenceSweep: 5 * time.Second,
		AwarenessMaxBytes: 1024, AwarenessInterval: 100 * time.Millisecond, TypingInterval: time.Second,
		TypingTTL: 3 * time.Second, MaxRoomsPerConn: 32,
	}
	if cfg != want || cfg.Node == "" {
		t.Fatalf("defaults = %+v", cfg)
	}
	for _, bad := range []Config{
		{MaxMessageBytes: -1},
		{PingInterval: time.Minute, PongTimeout: time.Second},
		{PresenceHeartbeat: time.Minute, PresenceTTL: 30 * time.Second},
		{AwarenessMaxBytes: -1},
		{WriteTimeout: -time.Second},
		{SessionTTL: -time.Hour},
		{MaxSessionsPerUser: -1},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// TestExpiryRaceWithRefresh: a token-expiry timer and a refresh race. The
// generation check and the close decision are one step under conn.mu, so
// exactly one of them wins: either the refresh is accepted and the
// connection stays open, or the connection is closing with 4002 and the
// refresh is refused. (Before, the timer could pass the check, lose the CPU
// to an accepted refresh, then close anyway.)
func TestExpiryRaceWithRefresh(t *testing.T) {
	t.Parallel()
	s := bareServer(t, Config{})
	var won, lost int
	for i := range 300 {
		c := bareConn(s)
		c.armExpiry(auth.Claims{ExpiresAt: time.Now().Add(time.Duration(rand.IntN(300)) * time.Microsecond)})
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
		refreshed := c.armExpiry(auth.Claims{ExpiresAt: time.Now().Add(time.Hour)})
		// A timer callback in flight when the refresh landed finishes now.
		time.Sleep(2 * time.Millisecond)
		c.mu.Lock()
		closing, code := c.closing, c.closeCode
		c.mu.Unlock()
		switch {
		case refreshed && closing:
			t.Fatalf("round %d: the refresh was accepted, yet the connection closes with %d", i, code)
		case !refreshed && (!closing || code != protocol.CloseTokenExpired):
			t.Fatalf("round %d: the refresh was refused, but the connection is not closing with 4002 (%v, %d)", i, closing, code)
		case refreshed:
			won++
		default:
			lost++
		}
		if c.expTimer != nil {
			c.expTimer.Stop()
		}
	}
	t.Logf("refresh won %d rounds, expiry won %d", won, lost)
}

// TestExpiryUsesValidUntil: the timer is armed at ValidUntil (exp +
// leeway) when the verifier sets it, at ExpiresAt otherwise.
func TestExpiryUsesValidUntil(t *testing.T) {
	t.Parallel()
	s := bareServer(t, Config{})
	past := time.Now().Add(-time.Second)

	c := bareConn(s)
	c.armExpiry(auth.Claims{ExpiresAt: past, ValidUntil: time.Now().Add(time.Hour)})
	time.Sleep(20 * time.Millisecond)
	if c.isClosing() {
		t.Fatal("closed at exp although the token is valid until an hour from now")
	}
	c.expTimer.Stop()

	c = bareConn(s)
	c.armExpiry(auth.Claims{ExpiresAt: past})
	eventually(t, waitTimeout, "close at exp", c.isClosing)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeCode != protocol.CloseTokenExpired || len(c.queue) != 1 || !bytes.Contains(c.queue[0], []byte(`"token_expired"`)) {
		t.Fatalf("close %d, queue %q", c.closeCode, c.queue)
	}
}
