package gateway

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/protocol"
)

func TestHTTPFallback(t *testing.T) {
	t.Parallel()
	const limit = 32 << 10
	h := newHarness(t, withConfig(func(c *Config) { c.MaxMessageBytes = limit }))
	tok := token(t, "alice")
	live, _ := h.open(t, "alice", "laptop", "user:alice")

	// Push: 200 with the ack, delivered live to the WebSocket device.
	body := mustJSON(t, map[string]any{
		"device":    "phone",
		"mutations": []protocol.Mutation{put(1, "user:alice", "notes", "n1", map[string]any{"n": 1.0, "big": 12345678901234567890.0})},
	})
	status, _, data := h.httpPost(t, "/v1/sync/push", tok, body)
	if status != http.StatusOK {
		t.Fatalf("push: %d %s", status, data)
	}
	var ack protocol.Ack
	if err := json.Unmarshal(data, &ack); err != nil || ack.Type != protocol.TypeAck || len(ack.Results) != 1 ||
		ack.Results[0].Outcome != storage.Applied || ack.Results[0].Seq != 1 {
		t.Fatalf("ack = %s (%v)", data, err)
	}
	var ch protocol.Changes
	live.expect(protocol.TypeChanges, &ch)
	if ch.To != 1 || ch.Entries[0].Device != "phone" {
		t.Fatalf("live changes = %+v", ch)
	}

	// A replay answers from the receipt.
	status, _, data = h.httpPost(t, "/v1/sync/push", tok, body)
	if err := json.Unmarshal(data, &ack); status != 200 || err != nil || !ack.Results[0].Replayed {
		t.Fatalf("replay: %d %s", status, data)
	}

	// Pull: the device comes from the token's device claim.
	status, _, data = h.httpPost(t, "/v1/sync/pull", token(t, "alice", tokDevice("phone")),
		[]byte(`{"scope":"user:alice","since":0,"limit":10}`))
	if status != http.StatusOK {
		t.Fatalf("pull: %d %s", status, data)
	}
	if err := json.Unmarshal(data, &ch); err != nil || ch.Type != protocol.TypeChanges || ch.To != 1 || len(ch.Entries) != 1 {
		t.Fatalf("pull = %s", data)
	}
	// Numbers are decoded as a WebSocket push decodes them.
	if ch.Entries[0].State["big"] != 12345678901234567890.0 {
		t.Fatalf("state = %v", ch.Entries[0].State)
	}
	// A checkpoint ahead of the head: reset.
	status, _, data = h.httpPost(t, "/v1/sync/pull", tok, []byte(`{"device":"phone","scope":"user:alice","since":50}`))
	if status != 200 || !strings.Contains(string(data), `"type":"reset"`) {
		t.Fatalf("reset pull: %d %s", status, data)
	}

	big := `{"device":"phone","mutations":[{"mid":9,"scope":"user:alice","col":"n","id":"x","op":"put","hlc":"` +
		hlcNow("d") + `","data":{"s":"` + strings.Repeat("x", limit) + `"}}]}`
	tests := []struct {
		name   string
		path   string
		token  string
		body   string
		status int
		code   protocol.Code
	}{
		{"no token", "/v1/sync/push", "", `{"device":"phone","mutations":[]}`, 401, protocol.CodeUnauthorized},
		{"bad token", "/v1/sync/pull", "nope", `{"device":"phone","scope":"user:alice"}`, 401, protocol.CodeUnauthorized},
		{"alg none", "/v1/sync/pull", algNoneToken(t), `{"device":"phone","scope":"user:alice"}`, 401, protocol.CodeUnauthorized},
		{"expired", "/v1/sync/pull", token(t, "alice", tokIssued(time.Now().Add(-3*time.Hour))),
			`{"device":"phone","scope":"user:alice"}`, 401, protocol.CodeTokenExpired},
		{"device mismatch", "/v1/sync/push", token(t, "alice", tokDevice("tablet")),
			`{"device":"phone","mutations":[]}`, 401, protocol.CodeUnauthorized},
		{"no device", "/v1/sync/pull", tok, `{"scope":"user:alice"}`, 400, protocol.CodeBadRequest},
		{"forbidden scope", "/v1/sync/pull", tok, `{"device":"phone","scope":"user:bob"}`, 403, protocol.CodeForbiddenScope},
		{"invalid scope", "/v1/sync/pull", tok, `{"device":"phone","scope":"nope"}`, 400, protocol.CodeInvalidName},
		{"malformed", "/v1/sync/push", tok, `{"device":`, 400, protocol.CodeMalformed},
		{"wrong type", "/v1/sync/push", tok, `{"device":"phone","mutations":[{"mid":"one"}]}`, 400, protocol.CodeMalformed},
		{"too large", "/v1/sync/push", tok, big, 413, protocol.CodeTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, hdr, data := h.httpPost(t, tt.path, tt.token, []byte(tt.body))
			var e protocol.ErrorMsg
			if err := json.Unmarshal(data, &e); err != nil {
				t.Fatalf("body %q: %v", data, err)
			}
			if status != tt.status || e.Type != protocol.TypeError || e.Code != tt.code {
				t.Fatalf("got %d %s (%s), want %d %s", status, e.Code, e.Message, tt.status, tt.code)
			}
			if status == 401 && hdr.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
		})
	}
	if n := h.head("user:alice"); n != 1 {
		t.Fatalf("head = %d after the rejected requests, want 1", n)
	}

	// Foreign scope via push: 200 with a rejected result, nothing written.
	status, _, data = h.httpPost(t, "/v1/sync/push", tok, mustJSON(t, map[string]any{
		"device": "phone", "mutations": []protocol.Mutation{put(2, "user:bob", "notes", "n", map[string]any{})},
	}))
	if err := json.Unmarshal(data, &ack); status != 200 || err != nil || ack.Results[0].Code != protocol.CodeForbiddenScope {
		t.Fatalf("foreign push: %d %s", status, data)
	}
	if h.head("user:bob") != 0 {
		t.Fatal("user:bob was written")
	}

	if got := counter(t, h.srv.metrics.httpRequests.WithLabelValues("pull", "403")); got != 1 {
		t.Fatalf("http_requests_total{pull,403} = %v", got)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.open(t, "alice", "phone")
	for path, want := range map[string]string{
		"/healthz": "ok",
		"/readyz":  "ready",
		"/metrics": "syncgate_connections 1",
	} {
		resp, err := http.Get(h.httpURL() + path)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(data), want) {
			t.Fatalf("%s: %d %.200s", path, resp.StatusCode, data)
		}
	}
	// Upgrading needs a WebSocket handshake.
	resp, err := http.Get(h.httpURL() + "/v1/ws")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("plain GET /v1/ws = %d", resp.StatusCode)
	}
}
