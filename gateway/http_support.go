package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/syncgate/syncgate/gateway/auth"
	"github.com/syncgate/syncgate/presence"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/protocol"
)

// The support API (docs/support-api.md) answers "is this customer online,
// on which device and app version, and is their data synced?". Every route
// needs a bearer token with role support or admin; the device actions need
// admin. Without the role the answer is 403 and no data.
//
//	GET  /v1/support/users/{user}        every device of the user, online or not, with sync lag
//	GET  /v1/support/online              online entries: ?platform= &appVersion= &limit= &cursor=
//	GET  /v1/support/rooms/{room}?scope= a room's members and their states
//	GET  /v1/support/events[?user=]      Server-Sent Events: online, offline, app_state, join, leave
//	POST /v1/support/devices/{device}/disconnect|resync|revoke[?user=]

const (
	supportRole = "support"
	// supportOnlineMax caps one page of /online.
	supportOnlineMax = 500
	// supportOnlineDefault is /online's page size without ?limit.
	supportOnlineDefault = 100
	// supportConflictScan bounds the open conflicts read per scope to
	// count a device's own.
	supportConflictScan = 1000
	// supportStreamQueue bounds the events waiting for one stream; a
	// stream that falls this far behind is ended (the client reconnects).
	supportStreamQueue = 256
	// supportKeepalive is the period of SSE comments that keep proxies
	// from closing an idle stream.
	supportKeepalive = 15 * time.Second
)

// SupportStore is what the support API reads from storage to report sync
// lag: heads, the first entry a device lacks, device checkpoints and open
// conflicts. storage.Store implements it.
type SupportStore interface {
	Head(ctx context.Context, scope string) (uint64, error)
	Read(ctx context.Context, scope string, since, through uint64, limit int) ([]storage.Entry, error)
	Device(ctx context.Context, dev storage.DeviceRef) (storage.DeviceState, error)
	ListConflicts(ctx context.Context, scope string, openOnly bool, after string, limit int) ([]storage.ConflictRecord, error)
}

var _ SupportStore = (storage.Store)(nil)

// supportEvent is one event of the support stream, as published through
// the broker and sent to SSE clients.
type supportEvent struct {
	Type   string // online, offline, app_state, join, leave
	Device presence.Device
	Scope  string
	Room   string
	State  string
	Reason string // offline/leave: disconnect, expired, leave, forbidden
}

// supportEventWire is the JSON of a support event.
type supportEventWire struct {
	Type       string `json:"type"`
	At         int64  `json:"at"`
	User       string `json:"user"`
	Device     string `json:"device"`
	Conn       string `json:"conn"`
	Node       string `json:"node"`
	Platform   string `json:"platform,omitempty"`
	AppVersion string `json:"appVersion,omitempty"`
	State      string `json:"state,omitempty"`
	Scope      string `json:"scope,omitempty"`
	Room       string `json:"room,omitempty"`
	Reason     string `json:"reason,omitempty"`
}

// publishSupport sends an event to every node's event streams. It never
// blocks.
func (m *presenceManager) publishSupport(ev supportEvent) {
	d := ev.Device
	data, err := json.Marshal(supportEventWire{
		Type: ev.Type, At: time.Now().UnixMilli(), User: d.User, Device: d.Device, Conn: d.Conn, Node: d.Node,
		Platform: d.Platform, AppVersion: d.AppVersion, State: ev.State, Scope: ev.Scope, Room: ev.Room, Reason: ev.Reason,
	})
	if err != nil {
		return
	}
	if err := m.srv.broker.Publish(m.srv.baseCtx, supportEventsKey, data); err != nil {
		m.srv.metrics.brokerErrors.Inc()
	}
}

func (m *presenceManager) localEntries() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return float64(len(m.conns))
}

// supportStreams are this node's open event streams. The node subscribes
// the broker to supportEventsKey while it has at least one.
//
// Locks: subMu serialises the 0<->1 transitions (held across the broker
// call, like hub.subLocks); mu guards subs for map operations only and is
// taken by dispatch, which runs under broker locks — so mu is never held
// across a broker call.
type supportStreams struct {
	subMu sync.Mutex
	mu    sync.Mutex
	subs  map[*supportStream]struct{}
}

type supportStream struct {
	user   string // "" for every user
	ch     chan supportItem
	failed chan struct{} // closed when the queue overflowed
	once   sync.Once
}

type supportItem struct {
	typ  string
	data []byte
}

func (ss *supportStreams) add(ctx context.Context, s *Server, user string) (*supportStream, error) {
	st := &supportStream{user: user, ch: make(chan supportItem, supportStreamQueue), failed: make(chan struct{})}
	ss.subMu.Lock()
	defer ss.subMu.Unlock()
	ss.mu.Lock()
	first := len(ss.subs) == 0
	ss.mu.Unlock()
	if first {
		if err := s.broker.Subscribe(ctx, supportEventsKey); err != nil {
			s.metrics.brokerErrors.Inc()
			return nil, err
		}
	}
	ss.mu.Lock()
	ss.subs[st] = struct{}{}
	ss.mu.Unlock()
	s.metrics.supportStreams.Inc()
	return st, nil
}

func (ss *supportStreams) remove(s *Server, st *supportStream) {
	ss.subMu.Lock()
	defer ss.subMu.Unlock()
	ss.mu.Lock()
	delete(ss.subs, st)
	last := len(ss.subs) == 0
	ss.mu.Unlock()
	s.metrics.supportStreams.Dec()
	if last {
		if err := s.broker.Unsubscribe(s.baseCtx, supportEventsKey); err != nil && s.baseCtx.Err() == nil {
			s.metrics.brokerErrors.Inc()
		}
	}
}

// dispatch hands an event to every matching stream. It never blocks: a
// stream whose queue is full is failed and ends.
func (ss *supportStreams) dispatch(data []byte) {
	var head struct {
		Type string `json:"type"`
		User string `json:"user"`
	}
	if json.Unmarshal(data, &head) != nil {
		return
	}
	it := supportItem{typ: head.Type, data: data}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for st := range ss.subs {
		if st.user != "" && st.user != head.User {
			continue
		}
		select {
		case st.ch <- it:
		default:
			st.once.Do(func() { close(st.failed) })
		}
	}
}

// supportAuth verifies the token and checks for role support or admin
// (admin only, for actions). It answers 401/403 itself.
func (s *Server) supportAuth(c *gin.Context, adminOnly bool) (auth.Claims, bool) {
	claims, ok := s.httpAuth(c)
	if !ok {
		return claims, false
	}
	allowed := claims.HasRole(adminRole) || (!adminOnly && claims.HasRole(supportRole))
	if !allowed {
		need := "support or admin"
		if adminOnly {
			need = "admin"
		}
		s.httpError(c, protocol.Errorf(protocol.CodeForbidden, "this API needs a token with role %s", need))
		return claims, false
	}
	return claims, true
}

func (s *Server) supportRoutes(r *gin.Engine) {
	r.GET("/v1/support/users/:user", s.instrument("support_user", s.handleSupportUser))
	r.GET("/v1/support/online", s.instrument("support_online", s.handleSupportOnline))
	r.GET("/v1/support/rooms/:room", s.instrument("support_room", s.handleSupportRoom))
	r.GET("/v1/support/events", s.instrument("support_events", s.handleSupportEvents))
	r.POST("/v1/support/devices/:device/:action", s.instrument("support_action", s.handleSupportAction))
}

// presenceError answers a tracker failure with 503.
func (s *Server) presenceError(c *gin.Context, err error) {
	s.metrics.presenceErrors.Inc()
	s.log.Warn("gateway: support API: presence is unavailable", "path", c.Request.URL.Path, "err", err)
	s.httpError(c, protocol.Errorf(protocol.CodeUnavailable, "presence is unavailable; retry"))
}

// supportConn is an online connection as the support API shows it.
type supportConn struct {
	Conn        string            `json:"conn"`
	User        string            `json:"user"`
	Device      string            `json:"device"`
	Node        string            `json:"node"`
	Platform    string            `json:"platform,omitempty"`
	AppVersion  string            `json:"appVersion,omitempty"`
	State       string            `json:"state"`
	ConnectedAt int64             `json:"connectedAt"`
	LastSeenAt  int64             `json:"lastSeenAt"`
	Checkpoints map[string]uint64 `json:"checkpoints,omitempty"`
	LastError   *supportError     `json:"lastError,omitempty"`
}

type supportError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	At      int64  `json:"at"`
}

func supportErrorOf(le *presence.LastError) *supportError {
	if le == nil {
		return nil
	}
	return &supportError{Code: le.Code, Message: le.Message, At: unixMilli(le.At)}
}

func supportConnOf(d presence.Device) supportConn {
	return supportConn{
		Conn: d.Conn, User: d.User, Device: d.Device, Node: d.Node, Platform: d.Platform, AppVersion: d.AppVersion,
		State: string(d.State), ConnectedAt: unixMilli(d.Connected), LastSeenAt: unixMilli(d.LastSeen),
		Checkpoints: d.Checkpoints, LastError: supportErrorOf(d.LastError),
	}
}

// supportDevice is one device of a user, online or not.
type supportDevice struct {
	Device      string         `json:"device"`
	Online      bool           `json:"online"`
	Platform    string         `json:"platform,omitempty"`
	AppVersion  string         `json:"appVersion,omitempty"`
	Node        string         `json:"node,omitempty"`
	LastSeenAt  int64          `json:"lastSeenAt,omitempty"`
	Connections []supportConn  `json:"connections"`
	Sessions    []httpSession  `json:"sessions"`
	Scopes      []supportScope `json:"scopes"`
	LastError   *supportError  `json:"lastError,omitempty"`
}

// supportScope is a device's sync state in one scope.
type supportScope struct {
	Scope      string `json:"scope"`
	Checkpoint uint64 `json:"checkpoint"` // the highest seq the device confirmed
	Head       uint64 `json:"head"`
	LagEntries uint64 `json:"lagEntries"` // head - checkpoint (entries, compacted ones included)
	// LagSeconds is how long the oldest entry the device lacks has been
	// committed (0 when it is caught up).
	LagSeconds    float64 `json:"lagSeconds"`
	OpenConflicts int     `json:"openConflicts"`
}

type supportUser struct {
	User    string          `json:"user"`
	Online  bool            `json:"online"`
	Devices []supportDevice `json:"devices"`
}

// handleSupportUser answers GET /v1/support/users/{user}: the user's
// devices from the session store, the presence entries and the devices'
// last records, each with its sync state per scope.
func (s *Server) handleSupportUser(c *gin.Context) {
	if _, ok := s.supportAuth(c, false); !ok {
		return
	}
	user, perr := pathParam(c, "user")
	if perr != nil {
		s.httpError(c, perr)
		return
	}
	ctx := c.Request.Context()
	sessions, err := s.sessions.store.ListSessions(ctx, user)
	if err != nil {
		s.httpError(c, s.sessionStoreError(ctx, "listing sessions", err))
		return
	}
	online, err := s.presence.tracker.User(ctx, user)
	if err != nil {
		s.presenceError(c, err)
		return
	}
	recent, err := s.presence.tracker.Recent(ctx, user)
	if err != nil {
		s.presenceError(c, err)
		return
	}
	byDev := make(map[string]*supportDevice)
	get := func(id string) *supportDevice {
		d := byDev[id]
		if d == nil {
			d = &supportDevice{Device: id, Connections: []supportConn{}, Sessions: []httpSession{}, Scopes: []supportScope{}}
			byDev[id] = d
		}
		return d
	}
	seen := func(d *supportDevice, at time.Time, node, platform, app string) {
		if ms := unixMilli(at); ms >= d.LastSeenAt {
			d.LastSeenAt, d.Node = ms, node
			if platform != "" || app != "" {
				d.Platform, d.AppVersion = platform, app
			}
		}
	}
	for _, r := range recent {
		d := get(r.Device)
		seen(d, r.LastSeen, r.Node, r.Platform, r.AppVersion)
		d.LastError = supportErrorOf(r.LastError)
	}
	for _, ss := range sessions {
		d := get(ss.Device)
		d.Sessions = append(d.Sessions, httpSessionOf(ss))
		seen(d, ss.LastSeenAt, ss.Node, ss.Platform, ss.AppVersion)
	}
	now := time.Now()
	for _, e := range online {
		d := get(e.Device)
		d.Online = true
		d.Connections = append(d.Connections, supportConnOf(e))
		seen(d, now, e.Node, e.Platform, e.AppVersion)
		if e.LastError != nil && (d.LastError == nil || unixMilli(e.LastError.At) > d.LastError.At) {
			d.LastError = supportErrorOf(e.LastError)
		}
	}
	out := supportUser{User: user, Devices: make([]supportDevice, 0, len(byDev))}
	for _, id := range slices.Sorted(maps.Keys(byDev)) {
		d := byDev[id]
		if s.store != nil {
			scopes, err := s.syncState(ctx, user, d)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("gateway: support API: reading sync state failed", "user", user, "err", err)
				}
				s.httpError(c, protocol.Errorf(protocol.CodeUnavailable, "the sync state is unavailable; retry"))
				return
			}
			d.Scopes = scopes
		}
		out.Online = out.Online || d.Online
		out.Devices = append(out.Devices, *d)
	}
	s.httpJSON(c, out)
}

// syncState computes a device's per-scope sync lag: its checkpoint (the
// store's, raised by what its live connections confirmed) against the
// scope head, the age of the oldest entry it lacks, and its own open
// conflicts.
func (s *Server) syncState(ctx context.Context, user string, d *supportDevice) ([]supportScope, error) {
	ref := storage.DeviceRef{User: user, Device: d.Device}
	st, err := s.store.Device(ctx, ref)
	if err != nil {
		return nil, err
	}
	cps := maps.Clone(st.Checkpoints)
	if cps == nil {
		cps = make(map[string]uint64)
	}
	for _, cn := range d.Connections {
		for scope, seq := range cn.Checkpoints {
			cps[scope] = max(cps[scope], seq)
		}
	}
	out := make([]supportScope, 0, len(cps))
	for _, scope := range slices.Sorted(maps.Keys(cps)) {
		head, err := s.store.Head(ctx, scope)
		if err != nil {
			return nil, err
		}
		sc := supportScope{Scope: scope, Checkpoint: cps[scope], Head: head}
		if head > sc.Checkpoint {
			sc.LagEntries = head - sc.Checkpoint
			// The first entry above the checkpoint (compaction may have
			// removed the exact next seq).
			es, err := s.store.Read(ctx, scope, sc.Checkpoint, head, 1)
			if err != nil {
				return nil, err
			}
			if len(es) > 0 {
				sc.LagSeconds = max(0, time.Since(es[0].Committed).Seconds())
			}
		}
		recs, err := s.store.ListConflicts(ctx, scope, true, "", supportConflictScan)
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			if r.Device == ref {
				sc.OpenConflicts++
			}
		}
		out = append(out, sc)
	}
	return out, nil
}

type supportOnline struct {
	Users       int           `json:"users"`
	Connections int           `json:"connections"`
	Matching    int           `json:"matching"`
	Items       []supportConn `json:"items"`
	Next        string        `json:"next,omitempty"`
}

// handleSupportOnline answers GET /v1/support/online.
func (s *Server) handleSupportOnline(c *gin.Context) {
	if _, ok := s.supportAuth(c, false); !ok {
		return
	}
	limit := supportOnlineDefault
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > supportOnlineMax {
			s.httpError(c, protocol.Errorf(protocol.CodeBadRequest, "limit must be 1-%d", supportOnlineMax))
			return
		}
		limit = n
	}
	q := presence.Query{Platform: c.Query("platform"), AppVersion: c.Query("appVersion"), After: c.Query("cursor"), Limit: limit}
	page, err := s.presence.tracker.Online(c.Request.Context(), q)
	if errors.Is(err, presence.ErrBadCursor) {
		s.httpError(c, protocol.Errorf(protocol.CodeBadRequest, "the cursor is not one a page returned"))
		return
	}
	if err != nil {
		s.presenceError(c, err)
		return
	}
	out := supportOnline{Users: page.Users, Connections: page.Conns, Matching: page.Matching,
		Items: make([]supportConn, len(page.Devices)), Next: page.Next}
	for i, d := range page.Devices {
		out.Items[i] = supportConnOf(d)
	}
	s.httpJSON(c, out)
}

type supportRoom struct {
	Scope   string            `json:"scope"`
	Room    string            `json:"room"`
	Members []protocol.Member `json:"members"`
}

// handleSupportRoom answers GET /v1/support/rooms/{room}?scope=.
func (s *Server) handleSupportRoom(c *gin.Context) {
	if _, ok := s.supportAuth(c, false); !ok {
		return
	}
	room, perr := pathParam(c, "room")
	if perr != nil {
		s.httpError(c, perr)
		return
	}
	ref := protocol.RoomRef{Scope: c.Query("scope"), Room: room}
	if perr := protocol.ValidateRoom(ref); perr != nil {
		s.httpError(c, perr)
		return
	}
	members, err := s.presence.tracker.Room(c.Request.Context(), roomID(ref))
	if err != nil {
		s.presenceError(c, err)
		return
	}
	now := time.Now()
	out := supportRoom{Scope: ref.Scope, Room: ref.Room, Members: make([]protocol.Member, len(members))}
	for i, m := range members {
		out.Members[i] = publicMember(m, now)
	}
	s.httpJSON(c, out)
}

// handleSupportEvents streams GET /v1/support/events as Server-Sent
// Events until the client goes, the node drains, or the stream falls
// supportStreamQueue events behind (then a final `error` event).
func (s *Server) handleSupportEvents(c *gin.Context) {
	if _, ok := s.supportAuth(c, false); !ok {
		return
	}
	ctx := c.Request.Context()
	st, err := s.presence.streams.add(ctx, s, c.Query("user"))
	if err != nil {
		s.httpError(c, protocol.Errorf(protocol.CodeUnavailable, "the event stream is unavailable; retry"))
		return
	}
	defer s.presence.streams.remove(s, st)
	h := c.Writer.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	c.Status(http.StatusOK)
	w := c.Writer
	write := func(s string) bool {
		if _, err := w.WriteString(s); err != nil {
			return false
		}
		w.Flush()
		return true
	}
	if !write(": connected\n\n") {
		return
	}
	keep := time.NewTicker(supportKeepalive)
	defer keep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.drainStart:
			write("event: error\ndata: {\"code\":\"shutdown\",\"message\":\"the node is draining; reconnect\"}\n\n")
			return
		case <-st.failed:
			write("event: error\ndata: {\"code\":\"slow_consumer\",\"message\":\"the stream fell behind; reconnect\"}\n\n")
			return
		case it := <-st.ch:
			if !write("event: " + it.typ + "\ndata: " + string(it.data) + "\n\n") {
				return
			}
		case <-keep.C:
			if !write(": keepalive\n\n") {
				return
			}
		}
	}
}

type supportActionResult struct {
	Action      string        `json:"action"`
	User        string        `json:"user,omitempty"`
	Device      string        `json:"device"`
	Connections []supportConn `json:"connections"`       // the online entries acted on
	Revoked     []httpSession `json:"revoked,omitempty"` // revoke: the sessions ended
}

// handleSupportAction answers POST /v1/support/devices/{device}/{action}.
// The device is found in presence (its online entries name the user);
// ?user= narrows it to one user's device (device ids are chosen by
// clients, so two users may share one) and is required to revoke an
// offline device. The action reaches whichever node holds the device
// through a control message.
func (s *Server) handleSupportAction(c *gin.Context) {
	if _, ok := s.supportAuth(c, true); !ok {
		return
	}
	action, user := c.Param("action"), c.Query("user")
	device, perr := pathParam(c, "device")
	if perr != nil {
		s.httpError(c, perr)
		return
	}
	if action != actionDisconnect && action != actionResync && action != "revoke" {
		s.httpError(c, protocol.Errorf(protocol.CodeNotFound, "unknown action %q: use disconnect, resync or revoke", action))
		return
	}
	ctx := c.Request.Context()
	entries, err := s.presence.tracker.Devices(ctx, device)
	if err != nil {
		s.presenceError(c, err)
		return
	}
	users := map[string]struct{}{}
	res := supportActionResult{Action: action, User: user, Device: device, Connections: []supportConn{}}
	for _, e := range entries {
		if user == "" || e.User == user {
			res.Connections = append(res.Connections, supportConnOf(e))
			users[e.User] = struct{}{}
		}
	}
	if user == "" {
		switch len(users) {
		case 0:
			s.httpError(c, protocol.Errorf(protocol.CodeNotFound, "device %s is not online; pass ?user= to act on it", device))
			return
		case 1:
			for u := range users {
				user, res.User = u, u
			}
		default:
			s.httpError(c, protocol.Errorf(protocol.CodeBadRequest, "device id %s is online for several users; pass ?user=", device))
			return
		}
	}
	switch action {
	case "revoke":
		sessions, err := s.sessions.store.ListSessions(ctx, user)
		if err != nil {
			s.httpError(c, s.sessionStoreError(ctx, "listing sessions", err))
			return
		}
		for _, ss := range sessions {
			if ss.Device != device {
				continue
			}
			r, err := s.sessions.revoke(ctx, ss.ID)
			if err != nil && !errors.Is(err, storage.ErrNotFound) {
				s.httpError(c, s.sessionStoreError(ctx, "revoking a session", err))
				return
			}
			if err == nil {
				res.Revoked = append(res.Revoked, httpSessionOf(r))
			}
		}
		if len(res.Revoked) == 0 {
			s.httpError(c, protocol.Errorf(protocol.CodeNotFound, "device %s of %s has no live session", device, user))
			return
		}
	default:
		if len(res.Connections) == 0 {
			s.httpError(c, protocol.Errorf(protocol.CodeNotFound, "device %s of %s is not online", device, user))
			return
		}
		if err := s.presence.announceAction(ctx, action, user, device); err != nil {
			s.log.Warn("gateway: support action: the control message failed", "action", action, "err", err)
			s.httpError(c, protocol.Errorf(protocol.CodeUnavailable, "the action could not reach the cluster; retry"))
			return
		}
	}
	s.log.Info("gateway: support action requested", "action", action, "user", user, "device", device,
		"connections", len(res.Connections), "revoked", len(res.Revoked))
	s.httpJSON(c, res)
}
