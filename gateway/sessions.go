package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/syncgate/syncgate/gateway/auth"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/protocol"
)

// Device sessions. Every hello begins a session in the store, or resumes
// the one it names (storage.Sessions has the rules); the welcome carries
// its id. While the device is connected, the connection refreshes the
// session every SessionRefresh (at most a quarter of its TTL), and once
// more when it ends, so the session expires TTL after the device was last
// seen, never while it is connected.
//
// Revoking a session (DELETE /v1/sessions/{id}, or eviction by the
// per-user cap) marks it in the store, then sends a control message
// through the broker (ControlBroker): every node closes its connections of
// that session with 4011. The store's mark is the durable part: a node
// that misses the message (its Redis subscription was down) finds the
// mark at the connection's next refresh and closes it then.

const (
	// adminRole may list and revoke any user's sessions.
	adminRole = "admin"
	// maxClientInfoBytes caps hello.client's strings before they are
	// stored with the session.
	maxClientInfoBytes = 64
	// minSessionRefresh bounds how often one connection writes to the
	// store, whatever the TTL.
	minSessionRefresh = 10 * time.Millisecond
	// controlSessionRevoked is the control message type of a revocation.
	controlSessionRevoked = "session_revoked"
)

// controlMsg is a node-wide control message (ControlBroker). Nodes ignore
// types they do not know, so that later kinds can be added in a rolling
// upgrade.
type controlMsg struct {
	Type    string `json:"type"`
	Session string `json:"session,omitempty"`
	Evicted bool   `json:"evicted,omitempty"`
	// Device actions (presence.go).
	Action string `json:"action,omitempty"`
	User   string `json:"user,omitempty"`
	Device string `json:"device,omitempty"`
}

// sessionManager is the Server's session part: the store, and this node's
// connections by session id, which the control handler closes.
type sessionManager struct {
	store   storage.Sessions
	control ControlBroker // nil: the broker carries no control messages
	log     *slog.Logger
	cfg     *Config

	mu    sync.Mutex // guards conns; held only for map operations (see doc.go)
	conns map[string]map[*conn]struct{}
}

func newSessionManager(store storage.Sessions, b Broker, cfg *Config, log *slog.Logger) *sessionManager {
	m := &sessionManager{store: store, log: log, cfg: cfg, conns: make(map[string]map[*conn]struct{})}
	if cb, ok := b.(ControlBroker); ok {
		m.control = cb
	} else {
		log.Warn("gateway: the broker carries no control messages: a revoked session's device on another node is disconnected at its next refresh",
			"refresh", cfg.SessionRefresh)
	}
	return m
}

// validSessionID reports whether id can name a session: anything else in
// hello.session is ignored (a new session begins), so arbitrary client
// bytes never reach the store.
func validSessionID(id string) bool {
	if len(id) != 2*storage.SessionIDBytes {
		return false
	}
	for i := range len(id) {
		if c := id[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// clipInfo keeps client-supplied informational text small and valid
// UTF-8 before it is stored.
func clipInfo(s string) string {
	s = strings.ToValidUTF8(s, "")
	if len(s) <= maxClientInfoBytes {
		return s
	}
	n := maxClientInfoBytes
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// begin begins or resumes the session of a hello. A revoked session (or
// a new one evicted at once, see storage.Sessions) is returned with an
// error matching storage.ErrSessionRevoked. Sessions the cap evicted are
// announced to every node, asynchronously.
func (m *sessionManager) begin(ctx context.Context, claims auth.Claims, h *protocol.Hello) (storage.Session, error) {
	ttl := m.cfg.SessionTTL
	if claims.Remember {
		ttl = m.cfg.SessionRememberTTL
	}
	spec := storage.SessionSpec{
		User: claims.Subject, Device: h.Device, Node: m.cfg.Node,
		Platform: clipInfo(h.Client.Platform), AppVersion: clipInfo(h.Client.AppVersion),
		Remember: claims.Remember, TTL: ttl, MaxPerUser: m.cfg.MaxSessionsPerUser,
	}
	if validSessionID(h.Session) {
		spec.Resume = h.Session
	}
	sess, evicted, err := m.store.BeginSession(ctx, spec)
	for _, e := range evicted {
		m.log.Info("gateway: session evicted by the per-user cap", "user", e.User, "device", e.Device, "session", e.ID,
			"max", m.cfg.MaxSessionsPerUser)
		// In the background: the hello need not wait for a Redis round
		// trip (bounded by WriteTimeout) to disconnect another device.
		go m.announce(e)
	}
	if err == nil && sess.Revoked {
		err = storage.ErrSessionRevoked
	}
	return sess, err
}

// announce tells every node (this one included) to close the connections
// of a revoked session. Without a control broker it closes this node's
// only. A failure is logged: the store's mark stands, and the holding node
// notices it at its next refresh.
func (m *sessionManager) announce(s storage.Session) {
	if m.control == nil {
		m.disconnect(s.ID, s.Evicted)
		return
	}
	data, _ := json.Marshal(controlMsg{Type: controlSessionRevoked, Session: s.ID, Evicted: s.Evicted}) // strings and a bool
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.WriteTimeout)
	defer cancel()
	if err := m.control.PublishControl(ctx, data); err != nil {
		m.log.Warn("gateway: announcing a revoked session failed; its device is disconnected at its next refresh",
			"session", s.ID, "err", err)
		m.disconnect(s.ID, s.Evicted) // this node's, at least
	}
}

// onControl is the broker's ControlHandler. It must not block: it only
// starts closes (and resyncs in a goroutine).
func (s *Server) onControl(data []byte) {
	var msg controlMsg
	if err := json.Unmarshal(data, &msg); err != nil {
		s.log.Warn("gateway: undecodable control message", "err", err)
		return
	}
	switch msg.Type {
	case controlSessionRevoked:
		s.sessions.disconnect(msg.Session, msg.Evicted)
	case controlDeviceAction:
		s.presence.act(msg.Action, msg.User, msg.Device)
	default:
		s.log.Debug("gateway: ignoring a control message of unknown type", "type", msg.Type)
	}
}

// disconnect closes this node's connections of session id with 4011.
func (m *sessionManager) disconnect(id string, evicted bool) {
	m.mu.Lock()
	conns := make([]*conn, 0, len(m.conns[id]))
	for c := range m.conns[id] {
		conns = append(conns, c)
	}
	m.mu.Unlock()
	if len(conns) == 0 {
		return
	}
	text := "the session was revoked; sign in again"
	if evicted {
		text = "the session was evicted: the user began more than the allowed number of sessions; sign in again"
	}
	for _, c := range conns {
		c.closeWith(protocol.CloseSessionRevoked, string(protocol.CodeSessionRevoked),
			c.srv.errorMessage(0, protocol.CodeSessionRevoked, text), false)
	}
	m.log.Debug("gateway: closed the connections of a revoked session", "session", id, "connections", len(conns))
}

func (m *sessionManager) add(id string, c *conn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	set := m.conns[id]
	if set == nil {
		set = make(map[*conn]struct{})
		m.conns[id] = set
	}
	set[c] = struct{}{}
}

func (m *sessionManager) remove(id string, c *conn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if set := m.conns[id]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(m.conns, id)
		}
	}
}

// refreshEvery is how often a connection refreshes a session of ttl.
func (m *sessionManager) refreshEvery(ttl time.Duration) time.Duration {
	return max(min(m.cfg.SessionRefresh, ttl/4), minSessionRefresh)
}

// startSession registers the connection under its session and arms the
// periodic refresh. It runs on the read loop, after the welcome.
func (c *conn) startSession(s storage.Session) {
	m := c.srv.sessions
	m.add(s.ID, c)
	every := m.refreshEvery(s.TTL)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return // teardown removes the registration
	}
	c.refreshTimer = time.AfterFunc(every, func() { c.refreshSession(s.ID, every) })
}

// refreshSession is the refresh timer's function: it slides the session's
// expiry, closes the connection if the session was revoked (a control
// message this node missed) or is gone, and re-arms itself.
func (c *conn) refreshSession(id string, every time.Duration) {
	if c.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.srv.cfg.WriteTimeout)
	_, err := c.srv.sessions.store.TouchSession(ctx, id)
	cancel()
	switch {
	case errors.Is(err, storage.ErrSessionRevoked):
		c.logger().Info("gateway: the session was revoked; closing")
		c.closeWith(protocol.CloseSessionRevoked, string(protocol.CodeSessionRevoked),
			c.srv.errorMessage(0, protocol.CodeSessionRevoked, "the session was revoked; sign in again"), false)
		return
	case errors.Is(err, storage.ErrNotFound):
		c.logger().Warn("gateway: the session expired while connected; closing")
		c.closeWith(protocol.CloseSessionExpired, string(protocol.CodeSessionExpired),
			c.srv.errorMessage(0, protocol.CodeSessionExpired, "the session expired; reconnect to begin a new one"), false)
		return
	case err != nil && c.ctx.Err() == nil:
		// Try again at the next period: the TTL is four periods at least.
		c.logger().Warn("gateway: refreshing the session failed", "err", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closing && c.refreshTimer != nil {
		c.refreshTimer.Reset(every)
	}
}

// endSession runs on teardown: it unregisters the connection and
// refreshes the session one last time, so that its TTL counts from the
// device's departure. The write is bounded by WriteTimeout and made under
// the server's context, so Shutdown waits for it (the store is closed
// after the gateway has drained).
func (c *conn) endSession() {
	if c.sess == nil {
		return
	}
	id := c.sess.id
	m := c.srv.sessions
	m.remove(id, c)
	ctx, cancel := context.WithTimeout(c.srv.baseCtx, c.srv.cfg.WriteTimeout)
	defer cancel()
	_, err := m.store.TouchSession(ctx, id)
	if err != nil && !errors.Is(err, storage.ErrSessionRevoked) && !errors.Is(err, storage.ErrNotFound) && ctx.Err() == nil {
		c.logger().Warn("gateway: refreshing the session at disconnect failed", "err", err)
	}
}

// revoke revokes a session on behalf of an HTTP caller and disconnects
// its devices everywhere. Revoking a revoked session announces it again
// (idempotent), which also repairs an announcement that failed.
func (m *sessionManager) revoke(ctx context.Context, id string) (storage.Session, error) {
	s, err := m.store.RevokeSession(ctx, id)
	if err != nil {
		return storage.Session{}, err
	}
	m.log.Info("gateway: session revoked", "user", s.User, "device", s.Device, "session", s.ID)
	m.announce(s)
	return s, nil
}
