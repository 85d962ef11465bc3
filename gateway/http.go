package gateway

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/syncgate/syncgate/gateway/auth"
	"github.com/syncgate/syncgate/sync/engine"
	"github.com/syncgate/syncgate/sync/protocol"
)

// The HTTP fallback serves push and pull for background sync on mobile,
// with the WebSocket semantics (the conflict API is in http_conflicts.go):
//
//	POST /v1/sync/push  {"device": "...", "mutations": [...]}          -> 200 ack
//	POST /v1/sync/pull  {"device": "...", "scope": "...", "since": N, "limit": N} -> 200 changes | reset
//
// Authorization: Bearer <jwt>. The device comes from the body or, if the
// body has none, from the token's device claim; when both exist they must
// match. Bodies are capped at MaxMessageBytes. Errors are a JSON error
// message ({"type":"error","code":...,"message":...}) with status:
//
//	400 malformed, unknown_type, bad_request, invalid_*, too_deep, stale_mutation, bad_op
//	401 unauthorized, token_expired (with WWW-Authenticate: Bearer)
//	403 forbidden_scope, forbidden
//	404 not_found
//	409 upload_conflict, upload_incomplete (media API)
//	413 too_large
//	415 unsupported_media_type (media API)
//	500 internal
//	503 unavailable, shutdown (with Retry-After)

// retryAfterSeconds is the Retry-After of 503 answers.
const retryAfterSeconds = 2

type httpPushBody struct {
	Device    string          `json:"device"`
	Mutations json.RawMessage `json:"mutations"`
}

type httpPullBody struct {
	Device string `json:"device"`
	Scope  string `json:"scope"`
	Since  uint64 `json:"since"`
	Limit  int    `json:"limit"`
}

// instrument counts fallback requests by route and status.
func (s *Server) instrument(route string, h gin.HandlerFunc) gin.HandlerFunc {
	return func(c *gin.Context) {
		h(c)
		s.metrics.httpRequests.WithLabelValues(route, strconv.Itoa(c.Writer.Status())).Inc()
	}
}

func (s *Server) handlePush(c *gin.Context) {
	claims, body, ok := s.httpAuthAndBody(c)
	if !ok {
		return
	}
	var b httpPushBody
	if err := json.Unmarshal(body, &b); err != nil {
		s.httpError(c, protocol.Errorf(protocol.CodeMalformed, "invalid JSON body: %s", jsonErrReason(err)))
		return
	}
	p, ok := s.httpPrincipal(c, claims, b.Device)
	if !ok {
		return
	}
	// Decode the mutations exactly as a WebSocket push is decoded (number
	// handling, field errors): wrap them in a push message. b.Mutations is
	// valid JSON (it was just parsed), so the wrapper is too.
	raw := b.Mutations
	if len(raw) == 0 {
		raw = json.RawMessage("[]")
	}
	msg := make([]byte, 0, len(raw)+40)
	msg = append(msg, `{"type":"push","mutations":`...)
	msg = append(msg, raw...)
	msg = append(msg, '}')
	m, perr := protocol.Decode(msg)
	if perr != nil {
		s.httpError(c, perr)
		return
	}
	push := m.(*protocol.Push)
	results, err := s.engine.Push(c.Request.Context(), p, push.Mutations)
	if err != nil {
		s.httpError(c, asProtocolError(err))
		return
	}
	if results == nil {
		results = []protocol.Result{}
	}
	s.httpMessage(c, &protocol.Ack{Results: results})
}

func (s *Server) handlePull(c *gin.Context) {
	claims, body, ok := s.httpAuthAndBody(c)
	if !ok {
		return
	}
	var b httpPullBody
	if err := json.Unmarshal(body, &b); err != nil {
		s.httpError(c, protocol.Errorf(protocol.CodeMalformed, "invalid JSON body: %s", jsonErrReason(err)))
		return
	}
	p, ok := s.httpPrincipal(c, claims, b.Device)
	if !ok {
		return
	}
	ch, reset, err := s.engine.Pull(c.Request.Context(), p, b.Scope, b.Since, b.Limit)
	switch {
	case err != nil:
		s.httpError(c, asProtocolError(err))
	case reset != nil:
		s.httpMessage(c, reset)
	default:
		if ch.Entries == nil {
			ch.Entries = []protocol.Change{}
		}
		s.httpMessage(c, ch)
	}
}

// httpAuthAndBody refuses the request while draining, verifies the bearer
// token and reads the body (at most MaxMessageBytes).
func (s *Server) httpAuthAndBody(c *gin.Context) (auth.Claims, []byte, bool) {
	claims, ok := s.httpAuth(c)
	if !ok {
		return auth.Claims{}, nil, false
	}
	body, ok := s.httpBody(c)
	if !ok {
		return auth.Claims{}, nil, false
	}
	return claims, body, true
}

// httpAuth refuses the request while draining and verifies the bearer
// token.
func (s *Server) httpAuth(c *gin.Context) (auth.Claims, bool) {
	if s.draining.Load() {
		s.httpError(c, protocol.Errorf(protocol.CodeShutdown, "the node is draining"))
		return auth.Claims{}, false
	}
	token, ok := bearer(c.GetHeader("Authorization"))
	if !ok {
		s.httpError(c, protocol.Errorf(protocol.CodeUnauthorized, "an Authorization: Bearer <token> header is required"))
		return auth.Claims{}, false
	}
	claims, err := s.verifier.Verify(token)
	if err != nil {
		s.log.Debug("gateway: token rejected", "err", err)
		if errors.Is(err, auth.ErrExpired) {
			s.httpError(c, protocol.Errorf(protocol.CodeTokenExpired, "the token has expired"))
		} else {
			s.httpError(c, protocol.Errorf(protocol.CodeUnauthorized, "the token is not valid"))
		}
		return auth.Claims{}, false
	}
	return claims, true
}

// httpBody reads the request body, at most MaxMessageBytes.
func (s *Server) httpBody(c *gin.Context) ([]byte, bool) {
	limit := int64(s.cfg.MaxMessageBytes)
	if c.Request.ContentLength > limit {
		s.httpError(c, tooLarge(limit))
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.httpError(c, tooLarge(limit))
		} else {
			s.httpError(c, protocol.Errorf(protocol.CodeBadRequest, "reading the body failed"))
		}
		return nil, false
	}
	return body, true
}

func tooLarge(limit int64) *protocol.Error {
	return protocol.Errorf(protocol.CodeTooLarge, "the body exceeds %d bytes", limit)
}

// httpPrincipal picks the device (body, else the token's device claim).
func (s *Server) httpPrincipal(c *gin.Context, claims auth.Claims, device string) (engine.Principal, bool) {
	switch {
	case device == "":
		device = claims.Device
	case claims.Device != "" && claims.Device != device:
		s.httpError(c, protocol.Errorf(protocol.CodeUnauthorized, "the token is bound to another device"))
		return engine.Principal{}, false
	}
	if perr := protocol.ValidateDevice(device); perr != nil {
		s.httpError(c, perr)
		return engine.Principal{}, false
	}
	return engine.Principal{User: claims.Subject, Spaces: claims.Spaces, Device: device}, true
}

func bearer(h string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(h), " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	return token, true
}

func (s *Server) httpMessage(c *gin.Context, m protocol.Message) {
	data, err := protocol.Marshal(m)
	if err != nil {
		s.log.Error("gateway: encoding a message failed", "type", m.Kind(), "err", err)
		s.httpError(c, protocol.Errorf(protocol.CodeInternal, "encoding the answer failed"))
		return
	}
	c.Data(http.StatusOK, "application/json", data)
}

func (s *Server) httpError(c *gin.Context, perr *protocol.Error) {
	status := httpStatus(perr.Code)
	switch status {
	case http.StatusUnauthorized:
		c.Header("WWW-Authenticate", `Bearer realm="syncgate"`)
	case http.StatusServiceUnavailable:
		retryAfter(c.Writer)
	}
	writeJSONError(c.Writer, status, perr.Code, perr.Message)
	c.Abort()
}

// httpStatus maps a protocol error code to its HTTP status.
func httpStatus(code protocol.Code) int {
	switch code {
	case protocol.CodeUnauthorized, protocol.CodeTokenExpired:
		return http.StatusUnauthorized
	case protocol.CodeForbiddenScope, protocol.CodeForbidden:
		return http.StatusForbidden
	case protocol.CodeNotFound:
		return http.StatusNotFound
	case protocol.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case protocol.CodeUnsupportedMedia:
		return http.StatusUnsupportedMediaType
	case protocol.CodeUploadConflict, protocol.CodeUploadIncomplete:
		return http.StatusConflict
	case protocol.CodeUnavailable, protocol.CodeShutdown:
		return http.StatusServiceUnavailable
	case protocol.CodeInternal:
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}

func retryAfter(w http.ResponseWriter) {
	w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
}

func errorBody(code protocol.Code, msg string) *protocol.ErrorMsg {
	return &protocol.ErrorMsg{Envelope: protocol.Envelope{Type: protocol.TypeError}, Code: code, Message: msg, Retryable: code.Retryable()}
}

// writeJSONError writes a protocol error message as the response.
func writeJSONError(w http.ResponseWriter, status int, code protocol.Code, msg string) {
	data, _ := protocol.Marshal(errorBody(code, msg))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(status)
	_, _ = w.Write(data)
}

// jsonErrReason words a JSON error without echoing the body.
func jsonErrReason(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return "syntax error at byte " + strconv.FormatInt(se.Offset, 10)
	case errors.As(err, &te):
		field := te.Field
		if len(field) > 64 {
			field = field[:64] + "…"
		}
		return "field " + field + " must be " + te.Type.String()
	}
	return "not a JSON object"
}
