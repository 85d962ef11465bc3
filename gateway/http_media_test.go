package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/gateway/auth"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/storage/embedded"
	"github.com/syncgate/syncgate/sync/engine"
	"github.com/syncgate/syncgate/sync/protocol"
)

// newMediaHarness is newHarness with a media store (the embedded one, on
// the harness's bbolt file) behind the media API and the engine.
func newMediaHarness(t *testing.T, mc MediaConfig) *harness {
	t.Helper()
	ctx := context.Background()
	store, err := embedded.Open(ctx, filepath.Join(t.TempDir(), "sync.db"), embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	media, err := embedded.NewMedia(store, embedded.MediaOptions{})
	if err != nil {
		t.Fatal(err)
	}
	notifier := new(LateNotifier)
	eng, err := engine.New(engine.Config{}, engine.Options{
		Store: store, Resolvers: conflict.NewRegistry(conflict.LWW{}), Notifier: notifier, Media: engine.MediaOf(media),
	})
	if err != nil {
		t.Fatal(err)
	}
	key, err := auth.LoadKey("", auth.HS256, "", []byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	ver, err := auth.NewVerifier(auth.VerifierConfig{Keys: []auth.Key{key}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srv, err := New(Config{Node: "test-node"}, Options{
		Engine: eng, Verifier: ver, Logger: testLogger(), Registry: reg, Sessions: store,
		Media: media, MediaConfig: mc,
	})
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

// mediaDo sends one request; body may be nil, an io.Reader (sent chunked
// when it is not a *bytes.Reader) or []byte.
func (h *harness) mediaDo(t *testing.T, method, path, tok string, body any, header ...string) (*http.Response, []byte) {
	t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case []byte:
		r = bytes.NewReader(b)
	case io.Reader:
		r = b
	}
	req, err := http.NewRequest(method, h.httpURL()+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
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
	return resp, data
}

// expectError checks an error answer's status and code.
func expectError(t *testing.T, what string, resp *http.Response, data []byte, status int, code protocol.Code) {
	t.Helper()
	var e protocol.ErrorMsg
	if resp.StatusCode != status || json.Unmarshal(data, &e) != nil || e.Code != code {
		t.Fatalf("%s: %d %s, want %d %s", what, resp.StatusCode, data, status, code)
	}
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func testBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + i>>8)
	}
	return b
}

func TestMediaHTTP(t *testing.T) {
	t.Parallel()
	const limit = 600 << 10
	h := newMediaHarness(t, MediaConfig{MaxBytes: limit})
	alice, bob := token(t, "alice", tokSpaces("team")), token(t, "bob")
	data := testBytes(300 << 10) // two GridFS chunks' worth
	png := []string{"Content-Type", "image/png"}

	// Access: a token, and a scope it may use.
	resp, body := h.mediaDo(t, "POST", "/v1/media/user:alice", "", data, png...)
	expectError(t, "no token", resp, body, 401, protocol.CodeUnauthorized)
	resp, body = h.mediaDo(t, "POST", "/v1/media/user:alice", bob, data, png...)
	expectError(t, "another user's scope", resp, body, 403, protocol.CodeForbiddenScope)
	resp, body = h.mediaDo(t, "POST", "/v1/media/space:other", alice, data, png...)
	expectError(t, "a space not granted", resp, body, 403, protocol.CodeForbiddenScope)
	resp, body = h.mediaDo(t, "POST", "/v1/media/team:x", alice, data, png...)
	expectError(t, "a malformed scope", resp, body, 400, protocol.CodeInvalidName)

	// Type and size.
	resp, body = h.mediaDo(t, "POST", "/v1/media/user:alice", alice, data, "Content-Type", "text/html")
	expectError(t, "text/html", resp, body, 415, protocol.CodeUnsupportedMedia)
	resp, body = h.mediaDo(t, "POST", "/v1/media/user:alice", alice, data, "Content-Type", "image/")
	expectError(t, "a malformed type", resp, body, 415, protocol.CodeUnsupportedMedia)
	big := testBytes(limit + 1)
	resp, body = h.mediaDo(t, "POST", "/v1/media/user:alice", alice, big, png...)
	expectError(t, "too large (Content-Length)", resp, body, 413, protocol.CodeTooLarge)
	resp, body = h.mediaDo(t, "POST", "/v1/media/user:alice", alice, io.MultiReader(bytes.NewReader(big)), png...)
	expectError(t, "too large (chunked)", resp, body, 413, protocol.CodeTooLarge)

	// Upload, streamed (chunked: no Content-Length), then again: deduplicated.
	resp, body = h.mediaDo(t, "POST", "/v1/media/user:alice", alice, io.MultiReader(bytes.NewReader(data)), "Content-Type", "Image/PNG")
	var info httpMedia
	if resp.StatusCode != 201 || json.Unmarshal(body, &info) != nil || info.Size != int64(len(data)) ||
		info.SHA256 != hexSum(data) || info.MIME != "image/png" || resp.Header.Get("Location") != "/v1/media/user:alice/"+info.ID {
		t.Fatalf("upload: %d %s %v", resp.StatusCode, body, resp.Header)
	}
	resp, body = h.mediaDo(t, "POST", "/v1/media/user:alice", alice, data, png...)
	var again httpMedia
	if resp.StatusCode != 200 || json.Unmarshal(body, &again) != nil || again.ID != info.ID || !again.Deduped {
		t.Fatalf("same content again: %d %s", resp.StatusCode, body)
	}

	// Download: whole, HEAD, ranges across the chunk boundary, ETag.
	path := "/v1/media/user:alice/" + info.ID
	etag := `"` + info.SHA256 + `"`
	resp, body = h.mediaDo(t, "GET", path, alice, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, data) || resp.Header.Get("Content-Type") != "image/png" ||
		resp.Header.Get("ETag") != etag || resp.Header.Get("Accept-Ranges") != "bytes" ||
		resp.Header.Get("Content-Length") != fmt.Sprint(len(data)) || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("GET: %d (%d bytes) %v", resp.StatusCode, len(body), resp.Header)
	}
	resp, body = h.mediaDo(t, "HEAD", path, alice, nil)
	if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get("Content-Length") != fmt.Sprint(len(data)) || resp.Header.Get("ETag") != etag {
		t.Fatalf("HEAD: %d %v", resp.StatusCode, resp.Header)
	}
	const b = 255 << 10
	resp, body = h.mediaDo(t, "GET", path, alice, nil, "Range", fmt.Sprintf("bytes=%d-%d", b-2, b+2))
	if resp.StatusCode != 206 || !bytes.Equal(body, data[b-2:b+3]) ||
		resp.Header.Get("Content-Range") != fmt.Sprintf("bytes %d-%d/%d", b-2, b+2, len(data)) {
		t.Fatalf("Range: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	resp, body = h.mediaDo(t, "GET", path, alice, nil, "Range", "bytes=-10")
	if resp.StatusCode != 206 || !bytes.Equal(body, data[len(data)-10:]) {
		t.Fatalf("suffix Range: %d", resp.StatusCode)
	}
	resp, _ = h.mediaDo(t, "GET", path, alice, nil, "Range", fmt.Sprintf("bytes=%d-", len(data)))
	if resp.StatusCode != 416 || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes */%d", len(data)) {
		t.Fatalf("unsatisfiable Range: %d %v", resp.StatusCode, resp.Header)
	}
	resp, body = h.mediaDo(t, "GET", path, alice, nil, "Range", "bytes=0-1,5-6")
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("several ranges: %d, want the whole body", resp.StatusCode)
	}
	resp, body = h.mediaDo(t, "GET", path, alice, nil, "If-None-Match", etag)
	if resp.StatusCode != 304 || len(body) != 0 {
		t.Fatalf("If-None-Match: %d", resp.StatusCode)
	}
	resp, _ = h.mediaDo(t, "GET", path, alice, nil, "If-None-Match", `"other"`)
	if resp.StatusCode != 200 {
		t.Fatalf("If-None-Match of another tag: %d", resp.StatusCode)
	}

	// Other scopes and unknown ids.
	resp, body = h.mediaDo(t, "GET", "/v1/media/user:alice/"+info.ID, bob, nil)
	expectError(t, "GET by another user", resp, body, 403, protocol.CodeForbiddenScope)
	resp, body = h.mediaDo(t, "GET", "/v1/media/space:team/"+info.ID, alice, nil)
	expectError(t, "GET through another scope", resp, body, 404, protocol.CodeNotFound)
	resp, body = h.mediaDo(t, "GET", "/v1/media/user:alice/..%2Fx", alice, nil)
	expectError(t, "a malformed id", resp, body, 404, protocol.CodeNotFound)

	// A document may reference the media of its scope only.
	push := func(mid uint64, scope, id string) protocol.Result {
		t.Helper()
		m := put(mid, scope, "notes", "n", map[string]any{"pic": map[string]any{"$media": id}})
		status, _, data := h.httpPost(t, "/v1/sync/push", alice, mustJSON(t, map[string]any{"device": "phone", "mutations": []protocol.Mutation{m}}))
		var ack protocol.Ack
		if status != 200 || json.Unmarshal(data, &ack) != nil || len(ack.Results) != 1 {
			t.Fatalf("push: %d %s", status, data)
		}
		return ack.Results[0]
	}
	if r := push(1, "user:alice", info.ID); r.Outcome != storage.Applied {
		t.Fatalf("ref to the scope's media: %+v", r)
	}
	if r := push(2, "space:team", info.ID); r.Outcome != storage.Rejected || r.Code != protocol.CodeMediaNotFound {
		t.Fatalf("ref to another scope's media: %+v", r)
	}

	// Delete: allowed while referenced (the ref dangles).
	resp, body = h.mediaDo(t, "DELETE", path, bob, nil)
	expectError(t, "DELETE by another user", resp, body, 403, protocol.CodeForbiddenScope)
	if resp, _ = h.mediaDo(t, "DELETE", path, alice, nil); resp.StatusCode != 204 {
		t.Fatalf("DELETE: %d", resp.StatusCode)
	}
	resp, body = h.mediaDo(t, "GET", path, alice, nil)
	expectError(t, "GET after DELETE", resp, body, 404, protocol.CodeNotFound)
	resp, body = h.mediaDo(t, "DELETE", path, alice, nil)
	expectError(t, "second DELETE", resp, body, 404, protocol.CodeNotFound)
	if r := push(3, "user:alice", info.ID); r.Code != protocol.CodeMediaNotFound {
		t.Fatalf("ref to deleted media: %+v", r)
	}
}

func TestMediaHTTPResumable(t *testing.T) {
	t.Parallel()
	const partBytes = 100_000
	h := newMediaHarness(t, MediaConfig{MaxBytes: 1 << 20, PartBytes: partBytes})
	alice := token(t, "alice")
	data := testBytes(2*partBytes + 1234)
	part := func(n int) []byte { return data[(n-1)*partBytes : min(n*partBytes, len(data))] }
	base := "/v1/media/user:alice/uploads"

	resp, body := h.mediaDo(t, "POST", base, alice, []byte(`{"size":2000000,"mime":"video/mp4"}`))
	expectError(t, "size over the limit", resp, body, 413, protocol.CodeTooLarge)
	resp, body = h.mediaDo(t, "POST", base, alice, []byte(`{"size":10,"mime":"text/plain"}`))
	expectError(t, "a type not allowed", resp, body, 415, protocol.CodeUnsupportedMedia)
	resp, body = h.mediaDo(t, "POST", base, alice, []byte(`{"mime":"video/mp4"}`))
	expectError(t, "no size", resp, body, 400, protocol.CodeBadRequest)
	resp, body = h.mediaDo(t, "POST", base, alice, []byte(`{"size":10,"sha256":"abc"}`))
	expectError(t, "a bad sha256", resp, body, 400, protocol.CodeBadRequest)

	create := fmt.Sprintf(`{"size":%d,"mime":"video/mp4","sha256":"%s"}`, len(data), strings.ToUpper(hexSum(data)))
	resp, body = h.mediaDo(t, "POST", base, alice, []byte(create))
	var up httpUpload
	if resp.StatusCode != 201 || json.Unmarshal(body, &up) != nil || up.Parts != 3 || up.PartBytes != partBytes ||
		up.SHA256 != hexSum(data) || resp.Header.Get("Location") != base+"/"+up.ID {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	partPath := func(n int) string { return fmt.Sprintf("%s/%s/parts/%d", base, up.ID, n) }
	putPart := func(n int, content []byte, header ...string) (*http.Response, []byte) {
		t.Helper()
		return h.mediaDo(t, "PUT", partPath(n), alice, content, header...)
	}

	// Out of order, with either digest header; a retry is idempotent.
	if resp, body = putPart(3, part(3), "X-Part-SHA256", hexSum(part(3))); resp.StatusCode != 200 {
		t.Fatalf("part 3: %d %s", resp.StatusCode, body)
	}
	d := sha256.Sum256(part(1))
	digest := "sha-512=:AAAA:, sha-256=:" + base64.StdEncoding.EncodeToString(d[:]) + ":"
	if resp, body = putPart(1, part(1), "Content-Digest", digest); resp.StatusCode != 200 {
		t.Fatalf("part 1 with Content-Digest: %d %s", resp.StatusCode, body)
	}
	resp, body = putPart(1, part(1), "X-Part-SHA256", hexSum(part(1)))
	var pi storage.PartInfo
	if resp.StatusCode != 200 || json.Unmarshal(body, &pi) != nil || !pi.Existed || pi.N != 1 {
		t.Fatalf("part 1 again: %d %s", resp.StatusCode, body)
	}
	other := testBytes(partBytes + 1)[1:]
	resp, body = putPart(1, other, "X-Part-SHA256", hexSum(other))
	expectError(t, "conflicting part", resp, body, 409, protocol.CodeUploadConflict)
	resp, body = putPart(2, part(2))
	expectError(t, "part without a digest", resp, body, 400, protocol.CodeBadRequest)
	resp, body = putPart(2, part(2), "X-Part-SHA256", hexSum(other))
	expectError(t, "part with a wrong digest", resp, body, 400, protocol.CodeDigestMismatch)
	resp, body = putPart(2, part(2)[1:], "X-Part-SHA256", hexSum(part(2)[1:]))
	expectError(t, "short part", resp, body, 400, protocol.CodeBadRequest)
	resp, body = putPart(4, part(3), "X-Part-SHA256", hexSum(part(3)))
	expectError(t, "part out of range", resp, body, 400, protocol.CodeBadRequest)
	resp, body = putPart(0, part(3), "X-Part-SHA256", hexSum(part(3)))
	expectError(t, "part 0", resp, body, 400, protocol.CodeBadRequest)

	// Status, and completing too early.
	resp, body = h.mediaDo(t, "GET", base+"/"+up.ID, alice, nil)
	if resp.StatusCode != 200 || json.Unmarshal(body, &up) != nil || !slices.Equal(up.Received, []int{1, 3}) {
		t.Fatalf("status: %d %s", resp.StatusCode, body)
	}
	resp, body = h.mediaDo(t, "POST", base+"/"+up.ID+"/complete", alice, nil)
	expectError(t, "complete with part 2 missing", resp, body, 409, protocol.CodeUploadIncomplete)
	resp, body = h.mediaDo(t, "GET", base+"/"+up.ID, token(t, "bob"), nil)
	expectError(t, "status by another user", resp, body, 403, protocol.CodeForbiddenScope)

	if resp, body = putPart(2, part(2), "X-Part-SHA256", hexSum(part(2))); resp.StatusCode != 200 {
		t.Fatalf("part 2: %d %s", resp.StatusCode, body)
	}
	resp, body = h.mediaDo(t, "POST", base+"/"+up.ID+"/complete", alice, nil)
	var info httpMedia
	if resp.StatusCode != 201 || json.Unmarshal(body, &info) != nil || info.SHA256 != hexSum(data) || info.MIME != "video/mp4" {
		t.Fatalf("complete: %d %s", resp.StatusCode, body)
	}
	resp, body = h.mediaDo(t, "GET", "/v1/media/user:alice/"+info.ID, alice, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("GET the completed upload: %d", resp.StatusCode)
	}
	resp, body = h.mediaDo(t, "POST", base+"/"+up.ID+"/complete", alice, nil)
	var again httpMedia
	if resp.StatusCode != 201 || json.Unmarshal(body, &again) != nil || again.ID != info.ID {
		t.Fatalf("complete again: %d %s", resp.StatusCode, body)
	}
	resp, body = putPart(2, part(2), "X-Part-SHA256", hexSum(part(2)))
	expectError(t, "part after completion", resp, body, 409, protocol.CodeUploadConflict)

	// Abort.
	resp, body = h.mediaDo(t, "POST", base, alice, []byte(`{"size":5}`))
	if resp.StatusCode != 201 || json.Unmarshal(body, &up) != nil || up.MIME != "application/octet-stream" {
		t.Fatalf("create without a type: %d %s", resp.StatusCode, body)
	}
	if resp, _ = h.mediaDo(t, "DELETE", base+"/"+up.ID, alice, nil); resp.StatusCode != 204 {
		t.Fatalf("abort: %d", resp.StatusCode)
	}
	resp, body = h.mediaDo(t, "GET", base+"/"+up.ID, alice, nil)
	expectError(t, "status after abort", resp, body, 404, protocol.CodeNotFound)
}

func TestMediaConfig(t *testing.T) {
	var mc MediaConfig
	if errs := mc.fill(); len(errs) > 0 || mc.MaxBytes != 100<<20 || mc.PartBytes != 5<<20 ||
		mc.UploadTTL != DefaultUploadTTL || !slices.Equal(mc.AllowedTypes, DefaultMediaTypes) {
		t.Fatalf("defaults: %+v %v", mc, errs)
	}
	for _, c := range []struct {
		mt   string
		want bool
	}{
		{"image/png", true}, {"image/svg+xml", true}, {"video/mp4", true}, {"application/pdf", true},
		{"application/octet-stream", true}, {"text/html", false}, {"application/javascript", false}, {"imagex/png", false},
	} {
		if got := mediaTypeAllowed(mc.AllowedTypes, c.mt); got != c.want {
			t.Errorf("allowed(%s) = %v", c.mt, got)
		}
	}
	bad := MediaConfig{AllowedTypes: []string{"image", "*/png", "Text/Plain"}}
	if errs := bad.fill(); len(errs) != 2 || bad.AllowedTypes[2] != "text/plain" {
		t.Fatalf("bad patterns: %v %v", errs, bad.AllowedTypes)
	}
	if !mediaTypeAllowed([]string{"*/*"}, "text/html") {
		t.Fatal("*/* allows everything")
	}
}

func TestParseContentDigest(t *testing.T) {
	sum := sha256.Sum256([]byte("x"))
	b64 := base64.StdEncoding.EncodeToString(sum[:])
	want := hex.EncodeToString(sum[:])
	for field, ok := range map[string]bool{
		"sha-256=:" + b64 + ":":                 true,
		"SHA-256=:" + b64 + ":;x=1":             true,
		"sha-512=:AAAA:, sha-256=:" + b64 + ":": true,
		"sha-256=" + b64:                        false,
		"sha-256=:" + b64[:10] + ":":            false,
		"sha-256=:!!!:":                         false,
		"md5=:AAAA:":                            false,
		"":                                      false,
		"sha-256=::":                            false,
		"sha-256=:" + base64.StdEncoding.EncodeToString(make([]byte, 31)) + ":": false,
	} {
		got, gotOK := parseContentDigest(field)
		if gotOK != ok || (ok && got != want) {
			t.Errorf("parseContentDigest(%q) = %q, %v", field, got, gotOK)
		}
	}
}

// FuzzContentDigest: any header parses without panicking, and a digest it
// accepts is a SHA-256 in hex that encodes back to the member it read.
func FuzzContentDigest(f *testing.F) {
	sum := sha256.Sum256([]byte("x"))
	f.Add("sha-256=:" + base64.StdEncoding.EncodeToString(sum[:]) + ":")
	f.Add("sha-512=:AAAA:, sha-256=:" + base64.StdEncoding.EncodeToString(sum[:]) + ":;a=b")
	f.Add("sha-256=:::")
	f.Add(",,=,:")
	f.Fuzz(func(t *testing.T, field string) {
		got, ok := parseContentDigest(field)
		if !ok {
			return
		}
		if !storage.ValidSHA256(got) {
			t.Fatalf("parseContentDigest(%q) = %q, not a hex SHA-256", field, got)
		}
		raw, _ := hex.DecodeString(got)
		if !strings.Contains(field, base64.StdEncoding.EncodeToString(raw)) {
			t.Fatalf("parseContentDigest(%q) = %q, which the field does not carry", field, got)
		}
	})
}
