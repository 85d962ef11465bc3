package gateway

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"

	"github.com/gin-gonic/gin"

	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/engine"
	"github.com/syncgate/syncgate/sync/protocol"
)

// The conflict API lists and resolves manual conflict records over HTTP,
// with the fallback's auth (Authorization: Bearer <jwt>) and error bodies;
// the engine checks that the token grants the scope.
//
//	GET  /v1/scopes/{scope}/conflicts?status=open|all&after=<id>&limit=N
//	     -> 200 {"conflicts":[...],"next":"<id>"}
//	POST /v1/scopes/{scope}/conflicts/{id}/resolve
//	     {"device":"...","mid":N,"state":{...}} or {"device":"...","mid":N,"delete":true}
//	     -> 200 {"type":"ack","results":[result]}
//
// The scope and id are path segments; clients should URL-escape them (a
// space id may hold '/', sent as %2F). A list page holds records oldest
// first; next is the id of its last record when the page is full (pass it
// as after for the next page), "" otherwise. A resolution is a mutation of
// the device (body device or the token's device claim, as for push): mid
// must follow the device's earlier mutation ids, and resending the same mid
// is answered from its receipt. A resolution the engine rejects is
// answered with the error of its code (bad_request when the record is
// already closed, stale_mutation, invalid_field_name, too_large, ...).

const (
	// defaultConflictPage is the page size of a list without limit.
	defaultConflictPage = 100
	// maxConflictPage caps the page size a client may ask for.
	maxConflictPage = 1000
)

// httpConflictList is the list answer.
type httpConflictList struct {
	Conflicts []protocol.Conflict `json:"conflicts"`
	Next      string              `json:"next"`
}

// httpResolveBody is a resolution. Exactly one of State and Delete.
type httpResolveBody struct {
	Device     string         `json:"device"`
	MutationID uint64         `json:"mid"`
	State      map[string]any `json:"state"`
	Delete     bool           `json:"delete"`
}

func (s *Server) handleConflicts(c *gin.Context) {
	claims, ok := s.httpAuth(c)
	if !ok {
		return
	}
	scope, perr := pathParam(c, "scope")
	if perr != nil {
		s.httpError(c, perr)
		return
	}
	q := c.Request.URL.Query()
	openOnly := true
	switch st := q.Get("status"); st {
	case "", string(storage.ConflictOpen):
	case "all":
		openOnly = false
	default:
		s.httpError(c, protocol.Errorf(protocol.CodeBadRequest, "status must be open or all, not %q", clip(st)))
		return
	}
	limit := defaultConflictPage
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			s.httpError(c, protocol.Errorf(protocol.CodeBadRequest, "limit must be a positive integer, not %q", clip(v)))
			return
		}
		limit = min(n, maxConflictPage)
	}
	// Listing needs no device: any token that grants the scope may read it.
	p := engine.Principal{User: claims.Subject, Spaces: claims.Spaces, Device: claims.Device}
	list, err := s.engine.Conflicts(c.Request.Context(), p, scope, openOnly, q.Get("after"), limit)
	if err != nil {
		s.httpError(c, asProtocolError(err))
		return
	}
	out := httpConflictList{Conflicts: list}
	if out.Conflicts == nil {
		out.Conflicts = []protocol.Conflict{}
	}
	if len(list) >= limit {
		out.Next = list[len(list)-1].ID
	}
	data, err := json.Marshal(&out)
	if err != nil {
		s.log.Error("gateway: encoding a conflict list failed", "scope", scope, "err", err)
		s.httpError(c, protocol.Errorf(protocol.CodeInternal, "encoding the answer failed"))
		return
	}
	c.Data(http.StatusOK, "application/json", data)
}

func (s *Server) handleResolve(c *gin.Context) {
	claims, ok := s.httpAuth(c)
	if !ok {
		return
	}
	scope, perr := pathParam(c, "scope")
	if perr != nil {
		s.httpError(c, perr)
		return
	}
	id, perr := pathParam(c, "id")
	if perr != nil {
		s.httpError(c, perr)
		return
	}
	body, ok := s.httpBody(c)
	if !ok {
		return
	}
	// Plain json.Unmarshal decodes numbers in state as float64 and refuses
	// one that does not fit, as a push does; mid stays an exact uint64.
	var b httpResolveBody
	if err := json.Unmarshal(body, &b); err != nil {
		s.httpError(c, protocol.Errorf(protocol.CodeMalformed, "invalid JSON body: %s", jsonErrReason(err)))
		return
	}
	switch {
	case b.MutationID == 0:
		s.httpError(c, protocol.Errorf(protocol.CodeBadRequest, "mid is required: the device's next mutation id"))
		return
	case b.Delete && b.State != nil:
		s.httpError(c, protocol.Errorf(protocol.CodeBadRequest, "send either state or delete, not both"))
		return
	case !b.Delete && b.State == nil:
		s.httpError(c, protocol.Errorf(protocol.CodeBadRequest, "state (the chosen document) or delete: true is required"))
		return
	}
	p, ok := s.httpPrincipal(c, claims, b.Device)
	if !ok {
		return
	}
	res, err := s.engine.ResolveConflict(c.Request.Context(), p, scope, id,
		engine.Resolution{MutationID: b.MutationID, State: b.State, Delete: b.Delete})
	if err != nil {
		s.httpError(c, asProtocolError(err))
		return
	}
	if res.Outcome == storage.Rejected {
		// One decision per request: a rejection is the request's error
		// (with Retry-After when it is retryable).
		code := res.Code
		if code == "" {
			code = protocol.CodeBadRequest
		}
		s.httpError(c, &protocol.Error{Code: code, Message: res.Message})
		return
	}
	s.httpMessage(c, &protocol.Ack{Results: []protocol.Result{res}})
}

// pathParam returns a path parameter, unescaped (routing runs on the
// escaped path; see routes).
func pathParam(c *gin.Context, name string) (string, *protocol.Error) {
	v, err := url.PathUnescape(c.Param(name))
	if err != nil {
		return "", protocol.Errorf(protocol.CodeInvalidName, "the %s in the path is not validly URL-escaped", name)
	}
	return v, nil
}

// clip shortens client text quoted in error messages.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
