package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/syncgate/syncgate/gateway/auth"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/protocol"
)

// The session API lists and revokes device sessions, with the fallback's
// auth (Authorization: Bearer <jwt>) and error bodies:
//
//	GET    /v1/sessions             the caller's live sessions, oldest first
//	GET    /v1/sessions?user=<id>   another user's (role admin only)
//	       -> 200 {"sessions":[session, ...]}
//	DELETE /v1/sessions/{id}        revoke one: the caller's own, or anyone's
//	                                with role admin; its devices are
//	                                disconnected with 4011 on every node
//	       -> 200 {"session":session} (with revoked: true)
//
// Errors: 401 unauthorized/token_expired; 403 forbidden (another user's
// session or list without role admin); 404 not_found (no such session, or
// it expired); 503 unavailable (the store), shutdown.

// httpSession is a session as the API shows it; times are Unix ms.
type httpSession struct {
	ID          string `json:"id"`
	User        string `json:"user"`
	Device      string `json:"device"`
	Node        string `json:"node"`
	Platform    string `json:"platform,omitempty"`
	AppVersion  string `json:"appVersion,omitempty"`
	Remember    bool   `json:"remember,omitempty"`
	CreatedAt   int64  `json:"createdAt"`
	ConnectedAt int64  `json:"connectedAt"`
	LastSeenAt  int64  `json:"lastSeenAt"`
	ExpiresAt   int64  `json:"expiresAt"`
	Revoked     bool   `json:"revoked,omitempty"`
	RevokedAt   int64  `json:"revokedAt,omitempty"`
	Evicted     bool   `json:"evicted,omitempty"`
}

func httpSessionOf(s storage.Session) httpSession {
	return httpSession{
		ID: s.ID, User: s.User, Device: s.Device, Node: s.Node, Platform: s.Platform, AppVersion: s.AppVersion,
		Remember: s.Remember, CreatedAt: unixMilli(s.CreatedAt), ConnectedAt: unixMilli(s.ConnectedAt),
		LastSeenAt: unixMilli(s.LastSeenAt), ExpiresAt: unixMilli(s.ExpiresAt),
		Revoked: s.Revoked, RevokedAt: unixMilli(s.RevokedAt), Evicted: s.Evicted,
	}
}

type httpSessionList struct {
	Sessions []httpSession `json:"sessions"`
}

type httpSessionOne struct {
	Session httpSession `json:"session"`
}

// mayActFor reports whether the token may see or revoke user's sessions.
func mayActFor(claims auth.Claims, user string) bool {
	return claims.Subject == user || claims.HasRole(adminRole)
}

func (s *Server) handleSessions(c *gin.Context) {
	claims, ok := s.httpAuth(c)
	if !ok {
		return
	}
	user := claims.Subject
	if u := c.Query("user"); u != "" {
		user = u
	}
	if !mayActFor(claims, user) {
		s.httpError(c, protocol.Errorf(protocol.CodeForbidden, "listing another user's sessions needs role %s", adminRole))
		return
	}
	list, err := s.sessions.store.ListSessions(c.Request.Context(), user)
	if err != nil {
		s.httpError(c, s.sessionStoreError(c.Request.Context(), "listing sessions", err))
		return
	}
	out := httpSessionList{Sessions: make([]httpSession, len(list))}
	for i, sess := range list {
		out.Sessions[i] = httpSessionOf(sess)
	}
	s.httpJSON(c, &out)
}

func (s *Server) handleRevokeSession(c *gin.Context) {
	claims, ok := s.httpAuth(c)
	if !ok {
		return
	}
	id, perr := pathParam(c, "id")
	if perr != nil {
		s.httpError(c, perr)
		return
	}
	ctx := c.Request.Context()
	// Read first to check the owner: revoking is not undone.
	sess, err := s.sessions.store.Session(ctx, id)
	if err != nil {
		s.httpError(c, s.sessionStoreError(ctx, "reading a session", err))
		return
	}
	if !mayActFor(claims, sess.User) {
		s.httpError(c, protocol.Errorf(protocol.CodeForbidden, "the session belongs to another user; revoking it needs role %s", adminRole))
		return
	}
	sess, err = s.sessions.revoke(ctx, id)
	if err != nil {
		s.httpError(c, s.sessionStoreError(ctx, "revoking a session", err))
		return
	}
	s.httpJSON(c, &httpSessionOne{Session: httpSessionOf(sess)})
}

// sessionStoreError maps a store error to the API's: not_found, or
// unavailable (logged) for anything else.
func (s *Server) sessionStoreError(ctx context.Context, what string, err error) *protocol.Error {
	if errors.Is(err, storage.ErrNotFound) {
		return protocol.Errorf(protocol.CodeNotFound, "no such session (or it expired)")
	}
	if ctx.Err() == nil {
		s.log.Warn("gateway: "+what+" failed", "err", err)
	}
	return protocol.Errorf(protocol.CodeUnavailable, "sessions are unavailable; retry")
}

func (s *Server) httpJSON(c *gin.Context, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		s.log.Error("gateway: encoding an answer failed", "err", err)
		s.httpError(c, protocol.Errorf(protocol.CodeInternal, "encoding the answer failed"))
		return
	}
	c.Data(http.StatusOK, "application/json", data)
}
