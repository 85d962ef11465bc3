package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/gorilla/websocket"

	"github.com/syncgate/syncgate/gateway/auth"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/engine"
	"github.com/syncgate/syncgate/sync/protocol"
)

const (
	// maxSessionScopes caps the scopes one hello may ask for: Open reads
	// two values per scope, so the cap bounds the work one message causes.
	maxSessionScopes = 1024
)

// session is an open (authenticated) connection's state. It is owned by the
// read loop goroutine.
type session struct {
	id        string
	principal engine.Principal
	scopes    map[string]struct{} // subscribed in the hub
}

// handle processes one client message. Messages of one connection are
// handled one at a time, in arrival order, on the read loop.
func (c *conn) handle(kind int, data []byte) {
	var (
		msg  protocol.Message
		perr *protocol.Error
	)
	if kind == websocket.TextMessage {
		msg, perr = protocol.Decode(data)
	} else {
		perr = protocol.Errorf(protocol.CodeMalformed, "binary frames are not supported: send JSON text frames")
	}
	if perr != nil {
		c.srv.metrics.messageIn(typeInvalid)
		if c.sess == nil {
			// Before hello, only a valid hello is acceptable.
			c.fatal(ridOf(data), perr, protocol.CloseProtocolError)
			return
		}
		c.requestError(ridOf(data), perr) // the connection stays open
		return
	}
	c.srv.metrics.messageIn(msg.Kind())
	if c.sess == nil {
		if h, ok := msg.(*protocol.Hello); ok {
			c.onHello(h)
			return
		}
		c.fatal(protocol.RidOf(msg), protocol.Errorf(protocol.CodeNotReady,
			"the first message must be hello, not %s", msg.Kind()), protocol.CloseProtocolError)
		return
	}
	switch m := msg.(type) {
	case *protocol.Hello:
		c.requestError(m.Rid, protocol.Errorf(protocol.CodeBadRequest, "the session is already open"))
	case *protocol.Push:
		c.onPush(m)
	case *protocol.Pull:
		c.onPull(m)
	case *protocol.Auth:
		c.onAuth(m)
	case *protocol.Ping:
		c.send(&protocol.Pong{Envelope: protocol.Envelope{Rid: m.Rid}})
	case *protocol.AppStateMsg:
		c.onAppState(m)
	case *protocol.Checkpoint:
		c.onCheckpoint(m)
	case *protocol.Join:
		c.onJoin(m)
	case *protocol.Leave:
		c.onLeave(m)
	case *protocol.RoomStateMsg:
		c.onRoomState(m)
	case *protocol.Typing:
		c.onTyping(m)
	}
}

// onHello authenticates the device and opens the session.
func (c *conn) onHello(h *protocol.Hello) {
	if h.Protocol != protocol.Version {
		c.fatal(h.Rid, protocol.Errorf(protocol.CodeProtocol,
			"protocol version %d is not supported; this server speaks %d", h.Protocol, protocol.Version),
			protocol.CloseProtocolError)
		return
	}
	if perr := protocol.ValidateDevice(h.Device); perr != nil {
		c.fatal(h.Rid, perr, protocol.CloseProtocolError)
		return
	}
	claims, err := c.srv.verifier.Verify(h.Token)
	if err != nil {
		c.authFailed(h.Rid, err)
		return
	}
	if claims.Device != "" && claims.Device != h.Device {
		c.fatal(h.Rid, protocol.Errorf(protocol.CodeUnauthorized, "the token is bound to another device"),
			protocol.CloseUnauthorized)
		return
	}
	subs := dedupeSubscriptions(h.Scopes)
	if len(subs) > maxSessionScopes {
		c.fatal(h.Rid, protocol.Errorf(protocol.CodeTooLarge, "hello asks for %d scopes; the limit is %d",
			len(subs), maxSessionScopes), protocol.CloseProtocolError)
		return
	}
	// The device session comes first: a revoked one is refused before
	// any sync work.
	rec, err := c.srv.sessions.begin(c.ctx, claims, h)
	switch {
	case errors.Is(err, storage.ErrSessionRevoked):
		c.fatal(h.Rid, protocol.Errorf(protocol.CodeSessionRevoked,
			"the session was revoked; sign in again and send hello without it"), protocol.CloseSessionRevoked)
		return
	case err != nil:
		c.logger().Warn("gateway: beginning the session failed", "user", claims.Subject, "device", h.Device, "err", err)
		c.fatal(h.Rid, protocol.Errorf(protocol.CodeUnavailable, "sessions are unavailable; retry"), protocol.CloseInternal)
		return
	}
	p := engine.Principal{User: claims.Subject, Spaces: claims.Spaces, Device: h.Device}
	res, err := c.srv.engine.Open(c.ctx, p, subs)
	if err != nil {
		perr := asProtocolError(err)
		c.logger().Warn("gateway: opening session failed", "user", p.User, "device", p.Device, "err", err)
		c.fatal(h.Rid, perr, protocol.CloseInternal)
		return
	}
	sess := &session{id: rec.ID, principal: p, scopes: make(map[string]struct{}, len(res.Scopes))}
	c.sess = sess
	c.log.Store(c.logger().With("user", p.User, "device", p.Device, "session", sess.id))
	c.armExpiry(claims)
	c.startSession(rec)

	states := res.Scopes
	if states == nil {
		states = []protocol.ScopeState{}
	}
	c.send(&protocol.Welcome{
		Envelope: protocol.Envelope{Rid: h.Rid},
		Protocol: protocol.Version, Session: sess.id, Node: c.srv.cfg.Node,
		User: p.User, Device: p.Device, LastMutation: res.LastMutation, Scopes: states,
		ExpiresAt: unixMilli(claims.ExpiresAt), SessionExpiresAt: unixMilli(rec.ExpiresAt), Conflicts: res.Conflicts,
		MaxMessageBytes: c.srv.cfg.MaxMessageBytes, MaxBatch: c.srv.limits.MaxBatch, PullLimit: c.srv.limits.PullLimit,
	})
	for _, st := range states {
		if st.Reset {
			c.send(&protocol.Reset{Scope: st.Scope, Reason: resetReason(st, subs), Horizon: st.Horizon, Head: st.Head})
		}
	}
	denied := make([]string, 0, len(res.Denied))
	for scope := range res.Denied {
		denied = append(denied, scope)
	}
	slices.Sort(denied)
	for _, scope := range denied {
		perr := res.Denied[scope]
		c.sendBytes(c.srv.errorMessage(h.Rid, perr.Code, perr.Message))
	}
	// Subscribe after the welcome is queued, so that no live `changes`
	// overtakes it. A commit between Open reading the head and this
	// subscription is not delivered live; the device sees head in the
	// welcome (or a later changes.from above its checkpoint) and pulls.
	for _, st := range states {
		if err := c.srv.subscribe(c.ctx, st.Scope, c); err != nil {
			c.logger().Warn("gateway: subscribing failed", "scope", st.Scope, "err", err)
			c.sendBytes(c.srv.errorMessage(0, protocol.CodeUnavailable,
				"live updates for "+st.Scope+" are unavailable; pull to catch up"))
			continue
		}
		sess.scopes[st.Scope] = struct{}{}
	}
	scopes := make([]string, 0, len(sess.scopes))
	checkpoints := make(map[string]uint64, len(sess.scopes))
	for _, st := range states {
		if _, ok := sess.scopes[st.Scope]; !ok {
			continue
		}
		scopes = append(scopes, st.Scope)
		if st.Reset {
			continue // the device's checkpoint is unusable: it starts again from 0
		}
		for _, sub := range subs {
			if sub.Scope == st.Scope {
				checkpoints[st.Scope] = sub.Since
			}
		}
	}
	slices.Sort(scopes)
	c.startPresence(h, scopes, checkpoints)
}

// resetReason words why a scope was reset, as engine.Pull does.
func resetReason(st protocol.ScopeState, subs []protocol.Subscription) string {
	for _, s := range subs {
		if s.Scope == st.Scope && s.Since > st.Head {
			return "checkpoint ahead of the scope head"
		}
	}
	return "checkpoint behind the compaction horizon"
}

// onPush applies a batch and answers with an ack.
func (c *conn) onPush(m *protocol.Push) {
	results, err := c.srv.engine.Push(c.ctx, c.sess.principal, m.Mutations)
	if err != nil {
		c.requestError(m.Rid, asProtocolError(err))
		return
	}
	if results == nil {
		results = []protocol.Result{}
	}
	c.send(&protocol.Ack{Envelope: protocol.Envelope{Rid: m.Rid}, Results: results})
}

// onPull answers with a page of changes or a reset.
func (c *conn) onPull(m *protocol.Pull) {
	ch, reset, err := c.srv.engine.Pull(c.ctx, c.sess.principal, m.Scope, m.Since, m.Limit)
	switch {
	case err != nil:
		c.requestError(m.Rid, asProtocolError(err))
	case reset != nil:
		reset.Rid = m.Rid
		c.send(reset)
	case ch != nil:
		if m.Since > 0 { // a pull's since is proof the device holds it (engine.Pull saves it)
			c.pres.confirm(map[string]uint64{m.Scope: m.Since}, false)
		}
		ch.Rid = m.Rid
		if ch.Entries == nil {
			ch.Entries = []protocol.Change{}
		}
		c.send(ch)
	}
}

// onAuth refreshes the session's token.
func (c *conn) onAuth(m *protocol.Auth) {
	claims, err := c.srv.verifier.Verify(m.Token)
	if err != nil {
		c.authFailed(m.Rid, err)
		return
	}
	sess := c.sess
	if claims.Subject != sess.principal.User {
		c.fatal(m.Rid, protocol.Errorf(protocol.CodeUnauthorized, "the new token is for another user"),
			protocol.CloseUnauthorized)
		return
	}
	if claims.Device != "" && claims.Device != sess.principal.Device {
		c.fatal(m.Rid, protocol.Errorf(protocol.CodeUnauthorized, "the new token is bound to another device"),
			protocol.CloseUnauthorized)
		return
	}
	if !c.armExpiry(claims) {
		return // the old token expired first: the connection is closing with 4002
	}
	sess.principal.Spaces = claims.Spaces
	c.send(&protocol.AuthOK{Envelope: protocol.Envelope{Rid: m.Rid}, ExpiresAt: unixMilli(claims.ExpiresAt)})
	var revoked []string
	for scope := range sess.scopes {
		if !sess.principal.CanUse(scope) {
			revoked = append(revoked, scope)
		}
	}
	slices.Sort(revoked)
	if len(revoked) > 0 {
		p := c.pres
		p.mu.Lock()
		p.scopes = slices.DeleteFunc(p.scopes, func(s string) bool { return slices.Contains(revoked, s) })
		p.mu.Unlock()
	}
	c.leaveUngrantedRooms()
	for _, scope := range revoked {
		c.srv.unsubscribe(scope, c)
		delete(sess.scopes, scope)
		c.sendBytes(c.srv.errorMessage(0, protocol.CodeForbiddenScope,
			"scope "+scope+" is no longer granted by the token; unsubscribed"))
	}
}

// armExpiry (re)starts the token-expiry timer for a verified token. The
// timer fires when the verifier would start refusing the token: at
// ValidUntil (exp plus the verifier's leeway), or at exp for a Verifier
// that does not set it. A token accepted within the leeway is therefore
// not closed right after its welcome or auth_ok. armExpiry reports false
// when the connection is already closing (an expiry won the race: the
// refresh is too late). It runs on the read loop.
func (c *conn) armExpiry(claims auth.Claims) bool {
	deadline := claims.ValidUntil
	if deadline.IsZero() {
		deadline = claims.ExpiresAt
	}
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return false
	}
	c.expiryGen++
	gen := c.expiryGen
	c.mu.Unlock()
	if c.expTimer != nil {
		c.expTimer.Stop()
		c.expTimer = nil
	}
	if deadline.IsZero() {
		return true
	}
	c.expTimer = time.AfterFunc(time.Until(deadline), func() { c.expire(gen) })
	return true
}

// expire closes the connection with 4002 if no refresh re-armed the timer
// since generation gen. The check and the close decision are one step
// under c.mu (see conn.expiryGen).
func (c *conn) expire(gen uint64) {
	msg := c.srv.errorMessage(0, protocol.CodeTokenExpired, "the token expired; send auth before expiresAt")
	c.mu.Lock()
	if c.expiryGen != gen {
		c.mu.Unlock()
		return
	}
	started := c.closeLocked(protocol.CloseTokenExpired, string(protocol.CodeTokenExpired), msg, false)
	c.mu.Unlock()
	if started {
		c.signal()
		c.logger().Debug("gateway: token expired without refresh")
	}
}

// authFailed closes the connection after a token failed verification.
func (c *conn) authFailed(rid uint64, err error) {
	c.logger().Debug("gateway: token rejected", "err", err)
	if errors.Is(err, auth.ErrExpired) {
		c.fatal(rid, protocol.Errorf(protocol.CodeTokenExpired, "the token has expired"), protocol.CloseTokenExpired)
		return
	}
	c.fatal(rid, protocol.Errorf(protocol.CodeUnauthorized, "the token is not valid"), protocol.CloseUnauthorized)
}

// send encodes m and queues it.
func (c *conn) send(m protocol.Message) {
	data, err := protocol.Marshal(m)
	if err != nil {
		c.logger().Error("gateway: encoding a message failed", "type", m.Kind(), "err", err)
		data = c.srv.errorMessage(0, protocol.CodeInternal, "the server could not encode a "+m.Kind()+" message")
	}
	c.enqueue(data)
}

// sendBytes queues an already encoded message.
func (c *conn) sendBytes(data []byte) { c.enqueue(data) }

// requestError answers a failed request; the connection stays open.
func (c *conn) requestError(rid uint64, perr *protocol.Error) {
	c.noteError(perr.Code, perr.Message)
	c.sendBytes(c.srv.errorMessage(rid, perr.Code, perr.Message))
}

// fatal sends an error and closes the connection with closeCode.
func (c *conn) fatal(rid uint64, perr *protocol.Error, closeCode int) {
	c.noteError(perr.Code, perr.Message)
	c.closeWith(closeCode, string(perr.Code), c.srv.errorMessage(rid, perr.Code, perr.Message), false)
}

// asProtocolError maps an engine error to the protocol error sent to the
// client. Errors that are not *protocol.Error are server faults.
func asProtocolError(err error) *protocol.Error {
	var perr *protocol.Error
	if errors.As(err, &perr) {
		return perr
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return protocol.Errorf(protocol.CodeUnavailable, "request interrupted; retry")
	}
	return protocol.Errorf(protocol.CodeInternal, "internal error")
}

func dedupeSubscriptions(subs []protocol.Subscription) []protocol.Subscription {
	if len(subs) < 2 {
		return subs
	}
	seen := make(map[string]struct{}, len(subs))
	out := subs[:0:0]
	for _, s := range subs {
		if _, dup := seen[s.Scope]; dup {
			continue
		}
		seen[s.Scope] = struct{}{}
		out = append(out, s)
	}
	return out
}

func unixMilli(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// ridOf extracts the rid of a message that failed to decode, if it can.
func ridOf(data []byte) uint64 {
	var env protocol.Envelope
	_ = json.Unmarshal(data, &env)
	return env.Rid
}
