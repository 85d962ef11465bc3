package gateway

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/engine"
	"github.com/syncgate/syncgate/sync/protocol"
)

// The media API stores blobs that documents reference with
// {"$media": "<id>"}. It uses the fallback's auth (Authorization: Bearer
// <jwt>) and error bodies; media belongs to a scope, and a token may use
// the media of the scopes it may sync (engine.Principal.CanUse, as for
// push and pull). docs/protocol.md has the details and curl examples.
//
//	POST   /v1/media/{scope}                         body = the bytes, Content-Type = their type
//	                                                 -> 201 media (200 when identical content existed)
//	GET    /v1/media/{scope}/{id}  (and HEAD)        -> 200 | 206 (Range) | 304 (If-None-Match) | 416
//	DELETE /v1/media/{scope}/{id}                    -> 204
//	POST   /v1/media/{scope}/uploads                 {"size":N,"mime":"...","sha256":"..."} -> 201 upload
//	GET    /v1/media/{scope}/uploads/{uid}           -> 200 upload, with the parts received
//	PUT    /v1/media/{scope}/uploads/{uid}/parts/{n} body = part n (1-based), X-Part-SHA256 or
//	                                                 Content-Digest: sha-256=:<base64>: -> 200 part
//	POST   /v1/media/{scope}/uploads/{uid}/complete  -> 201 media (200 when identical content existed)
//	DELETE /v1/media/{scope}/uploads/{uid}           -> 204
//
// Errors: 401/403 as elsewhere, 404 not_found, 413 too_large, 415
// unsupported_media_type, 400 digest_mismatch or bad_request, 409
// upload_conflict or upload_incomplete, 503 unavailable.

// MediaConfig tunes the media API. The zero value of each field means its
// default.
type MediaConfig struct {
	// MaxBytes caps one media (a streamed upload, or the size a resumable
	// upload announces). Default 100 MiB.
	MaxBytes int64
	// AllowedTypes are the MIME types an upload may have: "type/subtype",
	// "type/*" or "*/*", matched case-insensitively against the media type
	// without parameters. Default DefaultMediaTypes.
	AllowedTypes []string
	// PartBytes is the size of every part of a resumable upload but the
	// last. Default 5 MiB.
	PartBytes int64
	// UploadTTL is how long a resumable upload may take, from its
	// creation. Default 24h.
	UploadTTL time.Duration
}

// Media defaults.
const (
	DefaultMediaMaxBytes  = 100 << 20
	DefaultMediaPartBytes = 5 << 20
	DefaultUploadTTL      = 24 * time.Hour
)

// DefaultMediaTypes is the default allow-list: pictures, video, sound,
// PDF, and opaque bytes (which clients use for anything else they want
// to sync, and which browsers will not render).
var DefaultMediaTypes = []string{"image/*", "video/*", "audio/*", "application/pdf", "application/octet-stream"}

// fill sets defaults and validates; the allowed types are lower-cased.
func (m *MediaConfig) fill() []error {
	if m.MaxBytes == 0 {
		m.MaxBytes = DefaultMediaMaxBytes
	}
	if m.PartBytes == 0 {
		m.PartBytes = DefaultMediaPartBytes
	}
	if m.UploadTTL == 0 {
		m.UploadTTL = DefaultUploadTTL
	}
	if m.AllowedTypes == nil {
		m.AllowedTypes = DefaultMediaTypes
	}
	var errs []error
	if m.MaxBytes < 0 || m.PartBytes < 0 || m.UploadTTL < 0 {
		errs = append(errs, fmt.Errorf("gateway: Media.MaxBytes, PartBytes and UploadTTL must be positive"))
	}
	types := make([]string, len(m.AllowedTypes))
	for i, t := range m.AllowedTypes {
		types[i] = strings.ToLower(strings.TrimSpace(t))
		if !validTypePattern(types[i]) {
			errs = append(errs, fmt.Errorf("gateway: Media.AllowedTypes: %q is not type/subtype, type/* or */*", t))
		}
	}
	m.AllowedTypes = types
	return errs
}

// validTypePattern checks an allow-list entry.
func validTypePattern(p string) bool {
	if p == "*/*" {
		return true
	}
	typ, sub, ok := strings.Cut(p, "/")
	if !ok || typ == "" || typ == "*" || sub == "" {
		return false
	}
	if sub == "*" {
		sub = "x"
	}
	_, _, err := mime.ParseMediaType(typ + "/" + sub)
	return err == nil
}

// mediaTypeAllowed matches a media type (lower case, no parameters)
// against the allow-list.
func mediaTypeAllowed(allowed []string, mt string) bool {
	typ, _, _ := strings.Cut(mt, "/")
	for _, p := range allowed {
		if p == "*/*" || p == mt || (strings.HasSuffix(p, "/*") && p[:len(p)-2] == typ) {
			return true
		}
	}
	return false
}

// uploadType normalizes a Content-Type (or a resumable upload's mime) and
// checks it against the allow-list: the stored type is the lower-case
// media type with its parameters. An absent type is
// application/octet-stream.
func (s *Server) uploadType(raw string) (string, *protocol.Error) {
	if strings.TrimSpace(raw) == "" {
		raw = "application/octet-stream"
	}
	mt, params, err := mime.ParseMediaType(raw)
	if err != nil {
		return "", protocol.Errorf(protocol.CodeUnsupportedMedia, "the media type %q does not parse", clip(raw))
	}
	if !mediaTypeAllowed(s.mediaCfg.AllowedTypes, mt) {
		return "", protocol.Errorf(protocol.CodeUnsupportedMedia, "media of type %s is not accepted (allowed: %s)",
			clip(mt), strings.Join(s.mediaCfg.AllowedTypes, ", "))
	}
	return mime.FormatMediaType(mt, params), nil
}

// mediaScope authenticates the request and checks that its token may use
// the scope in the path. It answers the request itself when it returns
// false.
func (s *Server) mediaScope(c *gin.Context) (string, bool) {
	claims, ok := s.httpAuth(c)
	if !ok {
		return "", false
	}
	if s.media == nil {
		s.httpError(c, protocol.Errorf(protocol.CodeNotFound, "this server has no media store"))
		return "", false
	}
	scope, perr := pathParam(c, "scope")
	if perr == nil {
		perr = protocol.ValidateScope(scope)
	}
	if perr == nil && !(engine.Principal{User: claims.Subject, Spaces: claims.Spaces}).CanUse(scope) {
		perr = protocol.Errorf(protocol.CodeForbiddenScope, "scope %q is not granted by the token", scope)
	}
	if perr != nil {
		s.httpError(c, perr)
		return "", false
	}
	return scope, true
}

// mediaID reads a media or upload id path parameter; a malformed one
// names nothing (404).
func (s *Server) mediaID(c *gin.Context, name string) (string, bool) {
	id := c.Param(name)
	if !storage.ValidMediaID(id) {
		s.httpError(c, protocol.Errorf(protocol.CodeNotFound, "no %s %q", name, clip(id)))
		return "", false
	}
	return id, true
}

// mediaTarget reads the scope (authorised) and the media or upload id
// named by param of a request about one object.
func (s *Server) mediaTarget(c *gin.Context, param string) (scope, id string, ok bool) {
	if scope, ok = s.mediaScope(c); !ok {
		return "", "", false
	}
	if id, ok = s.mediaID(c, param); !ok {
		return "", "", false
	}
	return scope, id, true
}

// mediaError answers a media store error.
func (s *Server) mediaError(c *gin.Context, op string, err error) {
	var code protocol.Code
	switch {
	case errors.Is(err, storage.ErrNotFound):
		code = protocol.CodeNotFound
	case errors.Is(err, storage.ErrTooLarge):
		code = protocol.CodeTooLarge
	case errors.Is(err, storage.ErrDigestMismatch):
		code = protocol.CodeDigestMismatch
	case errors.Is(err, storage.ErrPartConflict):
		code = protocol.CodeUploadConflict
	case errors.Is(err, storage.ErrIncomplete):
		code = protocol.CodeUploadIncomplete
	case errors.Is(err, storage.ErrBadPart):
		code = protocol.CodeBadRequest
	case errors.Is(err, context.Canceled) && c.Request.Context().Err() != nil:
		s.log.Debug("gateway: media request abandoned by the client", "op", op)
		s.httpError(c, protocol.Errorf(protocol.CodeUnavailable, "the request was cancelled"))
		return
	default:
		s.log.Error("gateway: media store failure", "op", op, "err", err)
		s.httpError(c, protocol.Errorf(protocol.CodeUnavailable, "media storage unavailable, retry later"))
		return
	}
	s.httpError(c, &protocol.Error{Code: code, Message: err.Error()})
}

func (s *Server) mediaJSON(c *gin.Context, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		s.httpError(c, protocol.Errorf(protocol.CodeInternal, "encoding the answer failed"))
		return
	}
	c.Data(status, "application/json", data)
}

// httpMedia is a media as the API answers it (times in Unix ms, as
// everywhere in the protocol).
type httpMedia struct {
	Scope   string `json:"scope"`
	ID      string `json:"id"`
	Size    int64  `json:"size"`
	MIME    string `json:"mime"`
	SHA256  string `json:"sha256"`
	Created int64  `json:"created"`
	Deduped bool   `json:"deduped,omitempty"`
}

func mediaView(m storage.MediaInfo) httpMedia {
	return httpMedia{Scope: m.Scope, ID: m.ID, Size: m.Size, MIME: m.MIME, SHA256: m.SHA256, Created: m.Created.UnixMilli(), Deduped: m.Deduped}
}

// httpUpload is a resumable upload as the API answers it.
type httpUpload struct {
	ID        string `json:"id"`
	Scope     string `json:"scope"`
	Size      int64  `json:"size"`
	MIME      string `json:"mime"`
	SHA256    string `json:"sha256,omitempty"`
	PartBytes int64  `json:"partBytes"`
	Parts     int    `json:"parts"`
	Received  []int  `json:"received"`
	Created   int64  `json:"created"`
	Expires   int64  `json:"expires"`
	Media     string `json:"media,omitempty"`
}

func uploadView(u storage.Upload) httpUpload {
	received := u.Received
	if received == nil {
		received = []int{}
	}
	return httpUpload{
		ID: u.ID, Scope: u.Scope, Size: u.Size, MIME: u.MIME, SHA256: u.SHA256, PartBytes: u.PartBytes, Parts: u.Parts,
		Received: received, Created: u.Created.UnixMilli(), Expires: u.Expires.UnixMilli(), Media: u.Media,
	}
}

// mediaLocation is the path of a media.
func mediaLocation(scope, id string) string {
	return "/v1/media/" + url.PathEscape(scope) + "/" + id
}

func (s *Server) handleMediaPut(c *gin.Context) {
	scope, ok := s.mediaScope(c)
	if !ok {
		return
	}
	typ, perr := s.uploadType(c.GetHeader("Content-Type"))
	if perr != nil {
		s.httpError(c, perr)
		return
	}
	if c.Request.ContentLength > s.mediaCfg.MaxBytes {
		s.httpError(c, tooLarge(s.mediaCfg.MaxBytes))
		return
	}
	// The store streams the body (its size is only known at EOF, for a
	// chunked request) and stops one byte past the limit.
	info, err := s.media.Put(c.Request.Context(), scope, typ, c.Request.Body, s.mediaCfg.MaxBytes)
	if err != nil {
		s.mediaError(c, "put", err)
		return
	}
	s.mediaCreated(c, info)
}

// mediaCreated answers a new media 201 (with its Location), or an
// existing one 200.
func (s *Server) mediaCreated(c *gin.Context, info storage.MediaInfo) {
	status := http.StatusCreated
	if info.Deduped {
		status = http.StatusOK
	}
	c.Header("Location", mediaLocation(info.Scope, info.ID))
	s.mediaJSON(c, status, mediaView(info))
}

// handleMediaGet serves GET and HEAD with http.ServeContent: Range (one
// range; a request for several gets the whole body, as RFC 9110 allows),
// If-None-Match and If-Modified-Since. The ETag is the content's SHA-256.
func (s *Server) handleMediaGet(c *gin.Context) {
	scope, id, ok := s.mediaTarget(c, "id")
	if !ok {
		return
	}
	r, err := s.media.Open(c.Request.Context(), scope, id)
	if err != nil {
		s.mediaError(c, "open", err)
		return
	}
	defer r.Close()
	info := r.Info()
	if strings.Contains(c.GetHeader("Range"), ",") {
		c.Request.Header.Del("Range")
	}
	h := c.Writer.Header()
	h.Set("Content-Type", info.MIME)
	h.Set("ETag", `"`+info.SHA256+`"`)
	// An id always names the same bytes: caches may keep them (privately:
	// they are behind a token).
	h.Set("Cache-Control", "private, max-age=31536000, immutable")
	// Uploaded content is the uploader's: never sniffed into something
	// executable, and sandboxed if a browser renders it (an SVG's scripts).
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "sandbox")
	http.ServeContent(c.Writer, c.Request, "", info.Created, &loggedReader{MediaReader: r, s: s})
}

// loggedReader logs the first read error of a download: ServeContent
// drops it (the response is already under way, so the client only sees a
// short body).
type loggedReader struct {
	storage.MediaReader
	s      *Server
	logged bool
}

func (r *loggedReader) Read(p []byte) (int, error) {
	n, err := r.MediaReader.Read(p)
	if err != nil && err != io.EOF && !r.logged {
		r.logged = true
		r.s.log.Warn("gateway: media download failed", "media", r.Info().ID, "err", err)
	}
	return n, err
}

func (s *Server) handleMediaDelete(c *gin.Context) {
	scope, id, ok := s.mediaTarget(c, "id")
	if !ok {
		return
	}
	if err := s.media.Delete(c.Request.Context(), scope, id); err != nil {
		s.mediaError(c, "delete", err)
		return
	}
	c.Status(http.StatusNoContent)
}

// httpUploadBody creates a resumable upload.
type httpUploadBody struct {
	Size   *int64 `json:"size"`
	MIME   string `json:"mime"`
	SHA256 string `json:"sha256"`
}

func (s *Server) handleUploadCreate(c *gin.Context) {
	scope, ok := s.mediaScope(c)
	if !ok {
		return
	}
	body, ok := s.httpBody(c)
	if !ok {
		return
	}
	var b httpUploadBody
	if err := json.Unmarshal(body, &b); err != nil {
		s.httpError(c, protocol.Errorf(protocol.CodeMalformed, "invalid JSON body: %s", jsonErrReason(err)))
		return
	}
	b.SHA256 = strings.ToLower(b.SHA256)
	switch {
	case b.Size == nil || *b.Size < 0:
		s.httpError(c, protocol.Errorf(protocol.CodeBadRequest, "size (the total bytes, >= 0) is required"))
		return
	case *b.Size > s.mediaCfg.MaxBytes:
		s.httpError(c, tooLarge(s.mediaCfg.MaxBytes))
		return
	case b.SHA256 != "" && !storage.ValidSHA256(b.SHA256):
		s.httpError(c, protocol.Errorf(protocol.CodeBadRequest, "sha256 must be 64 hex digits"))
		return
	}
	typ, perr := s.uploadType(b.MIME)
	if perr != nil {
		s.httpError(c, perr)
		return
	}
	up, err := s.media.CreateUpload(c.Request.Context(), scope, storage.UploadSpec{
		Size: *b.Size, MIME: typ, SHA256: b.SHA256, PartBytes: s.mediaCfg.PartBytes, TTL: s.mediaCfg.UploadTTL,
	})
	if err != nil {
		s.mediaError(c, "create upload", err)
		return
	}
	c.Header("Location", "/v1/media/"+url.PathEscape(scope)+"/uploads/"+up.ID)
	s.mediaJSON(c, http.StatusCreated, uploadView(up))
}

func (s *Server) handleUploadStat(c *gin.Context) {
	scope, id, ok := s.mediaTarget(c, "uid")
	if !ok {
		return
	}
	up, err := s.media.StatUpload(c.Request.Context(), scope, id)
	if err != nil {
		s.mediaError(c, "stat upload", err)
		return
	}
	s.mediaJSON(c, http.StatusOK, uploadView(up))
}

func (s *Server) handleUploadPart(c *gin.Context) {
	scope, id, ok := s.mediaTarget(c, "uid")
	if !ok {
		return
	}
	n, err := strconv.Atoi(c.Param("n"))
	if err != nil || n < 1 {
		s.httpError(c, protocol.Errorf(protocol.CodeBadRequest, "the part number must be an integer from 1, not %q", clip(c.Param("n"))))
		return
	}
	sum, perr := partDigest(c.Request.Header)
	if perr != nil {
		s.httpError(c, perr)
		return
	}
	if c.Request.ContentLength > s.mediaCfg.PartBytes {
		s.httpError(c, tooLarge(s.mediaCfg.PartBytes))
		return
	}
	part, err := s.media.PutPart(c.Request.Context(), scope, id, n, c.Request.Body, sum)
	if err != nil {
		s.mediaError(c, "put part", err)
		return
	}
	s.mediaJSON(c, http.StatusOK, part)
}

// partDigest reads a part's SHA-256 from X-Part-SHA256 (hex) or
// Content-Digest (RFC 9530: sha-256=:<base64>:). One is required; when
// both are given they must agree.
func partDigest(h http.Header) (string, *protocol.Error) {
	hexSum := strings.ToLower(strings.TrimSpace(h.Get("X-Part-SHA256")))
	if hexSum != "" && !storage.ValidSHA256(hexSum) {
		return "", protocol.Errorf(protocol.CodeBadRequest, "X-Part-SHA256 must be 64 hex digits")
	}
	var fromDigest string
	if cd := h.Values("Content-Digest"); len(cd) > 0 {
		var ok bool
		if fromDigest, ok = parseContentDigest(strings.Join(cd, ",")); !ok {
			return "", protocol.Errorf(protocol.CodeBadRequest, "Content-Digest must carry sha-256=:<base64 of 32 bytes>:")
		}
	}
	switch {
	case hexSum == "" && fromDigest == "":
		return "", protocol.Errorf(protocol.CodeBadRequest, "a part needs its SHA-256: X-Part-SHA256 (hex) or Content-Digest: sha-256=:<base64>:")
	case hexSum != "" && fromDigest != "" && hexSum != fromDigest:
		return "", protocol.Errorf(protocol.CodeBadRequest, "X-Part-SHA256 and Content-Digest disagree")
	case hexSum != "":
		return hexSum, nil
	}
	return fromDigest, nil
}

// parseContentDigest finds the sha-256 member of a Content-Digest field
// (an RFC 8941 dictionary: key=:base64:, comma-separated; other
// algorithms and parameters are skipped) and returns it in hex. ok is
// false when there is no well-formed sha-256 member.
func parseContentDigest(field string) (string, bool) {
	for member := range strings.SplitSeq(field, ",") {
		key, val, found := strings.Cut(strings.TrimSpace(member), "=")
		if !found || strings.ToLower(strings.TrimSpace(key)) != "sha-256" {
			continue
		}
		val, _, _ = strings.Cut(strings.TrimSpace(val), ";") // drop parameters
		if len(val) < 2 || val[0] != ':' || val[len(val)-1] != ':' {
			return "", false
		}
		raw, err := base64.StdEncoding.Strict().DecodeString(val[1 : len(val)-1])
		if err != nil || len(raw) != 32 {
			return "", false
		}
		return hex.EncodeToString(raw), true
	}
	return "", false
}

func (s *Server) handleUploadComplete(c *gin.Context) {
	scope, id, ok := s.mediaTarget(c, "uid")
	if !ok {
		return
	}
	info, err := s.media.CompleteUpload(c.Request.Context(), scope, id)
	if err != nil {
		s.mediaError(c, "complete upload", err)
		return
	}
	s.mediaCreated(c, info)
}

func (s *Server) handleUploadAbort(c *gin.Context) {
	scope, id, ok := s.mediaTarget(c, "uid")
	if !ok {
		return
	}
	if err := s.media.AbortUpload(c.Request.Context(), scope, id); err != nil {
		s.mediaError(c, "abort upload", err)
		return
	}
	c.Status(http.StatusNoContent)
}

// mediaRoutes registers the media API on r.
func (s *Server) mediaRoutes(r *gin.Engine) {
	r.POST("/v1/media/:scope", s.instrument("media_put", s.handleMediaPut))
	r.GET("/v1/media/:scope/:id", s.instrument("media_get", s.handleMediaGet))
	r.HEAD("/v1/media/:scope/:id", s.instrument("media_head", s.handleMediaGet))
	r.DELETE("/v1/media/:scope/:id", s.instrument("media_delete", s.handleMediaDelete))
	r.POST("/v1/media/:scope/uploads", s.instrument("upload_create", s.handleUploadCreate))
	r.GET("/v1/media/:scope/uploads/:uid", s.instrument("upload_stat", s.handleUploadStat))
	r.PUT("/v1/media/:scope/uploads/:uid/parts/:n", s.instrument("upload_part", s.handleUploadPart))
	r.POST("/v1/media/:scope/uploads/:uid/complete", s.instrument("upload_complete", s.handleUploadComplete))
	r.DELETE("/v1/media/:scope/uploads/:uid", s.instrument("upload_abort", s.handleUploadAbort))
}
