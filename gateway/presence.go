package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/syncgate/syncgate/presence"
	"github.com/syncgate/syncgate/sync/protocol"
)

// Presence (docs/protocol.md, "Presence and rooms"; docs/support-api.md).
//
// Every open session is an entry in the presence.Tracker, Connected after
// its welcome and Disconnected at teardown. The node refreshes all of its
// entries and its node record every PresenceHeartbeat, and sweeps expired
// ones every PresenceSweep: what a sweep removes (ghosts of a node that
// died) is announced as offline and leave events by the sweeping node.
//
// Rooms fan out through the broker like scopes: a room is the hub key
// roomKeyPrefix+scope+"\x00"+room, and every member connection is a hub
// subscriber of it, so a room event published on any node reaches every
// member on every node. Support events (online, offline, app_state, join,
// leave) go to the broker key supportEventsKey, which a node subscribes
// while it has at least one /v1/support/events stream open.
//
// Presence is best effort: a tracker failure is logged and counted, never
// closes a connection; the next heartbeat re-adds entries the tracker
// lost (Refresh reports them).

const (
	// presenceKeyPrefix starts every broker key that is not a scope.
	// Scopes are user:… or space:…, so the namespaces cannot meet.
	presenceKeyPrefix = "presence:"
	roomKeyPrefix     = presenceKeyPrefix + "room:"
	supportEventsKey  = presenceKeyPrefix + "events"
	// connIDBytes is the random part of a connection's presence id.
	connIDBytes = 12
	// presenceBatch bounds one Refresh call of the heartbeat.
	presenceBatch = 1024
)

// roomID is a room's id in the tracker: scope and name joined by NUL,
// which neither may contain.
func roomID(r protocol.RoomRef) string { return r.Scope + "\x00" + r.Room }

func roomRefOf(id string) protocol.RoomRef {
	scope, room, _ := strings.Cut(id, "\x00")
	return protocol.RoomRef{Scope: scope, Room: room}
}

// presenceManager is the Server's presence part.
type presenceManager struct {
	srv     *Server
	tracker presence.Tracker
	inst    string // this process's node instance: name/random
	log     *slog.Logger

	mu    sync.Mutex // guards conns; held only for map operations
	conns map[string]*conn

	streams supportStreams // /v1/support/events subscribers (http_support.go)
}

func newPresenceManager(s *Server, t presence.Tracker) *presenceManager {
	return &presenceManager{
		srv: s, tracker: t, log: s.log.With("part", "presence"),
		inst:  s.cfg.Node + "/" + randomHex(6),
		conns: make(map[string]*conn),
		streams: supportStreams{
			subs: make(map[*supportStream]struct{}),
		},
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (Go 1.24+)
	return hex.EncodeToString(b)
}

// connPresence is one connection's presence state. The identity fields
// are set before the connection is registered and never change; mu
// guards the rest. mu is a leaf: nothing is called while holding it.
type connPresence struct {
	base presence.Device // identity and client info

	mu          sync.Mutex
	state       presence.AppState
	checkpoints map[string]uint64 // confirmed (hello, pull, checkpoint)
	unsaved     map[string]uint64 // confirmed by checkpoint messages, not yet in the store
	lastErr     *presence.LastError
	scopes      []string               // subscribed scopes (for a support resync)
	rooms       map[string]*roomMember // by roomID
}

// roomMember is a connection's membership of one room, with the awareness
// throttle: updates faster than AwarenessInterval are coalesced into
// pending, and a timer sends the latest one when the gap has passed.
type roomMember struct {
	ref    protocol.RoomRef
	sendMu sync.Mutex // serialises tracker writes and publishes of this member
	// Under connPresence.mu:
	member     presence.Member
	pending    json.RawMessage // newest unsent state; nil: none
	lastSent   time.Time
	timer      *time.Timer // armed while pending waits; nil otherwise
	lastTyping time.Time
	left       bool
}

// waitSends waits for a state or typing send in flight (a flush that
// passed its left check before the member left), so that no state event
// follows the member's leave event: a client would draw a ghost cursor.
func (rm *roomMember) waitSends() {
	rm.sendMu.Lock()
	rm.sendMu.Unlock() //nolint:staticcheck // an empty critical section: a barrier
}

// device snapshots the entry as the tracker stores it.
func (p *connPresence) device(now time.Time) presence.Device {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.base
	d.State, d.LastSeen = p.state, now
	d.Checkpoints = maps.Clone(p.checkpoints)
	if p.lastErr != nil {
		le := *p.lastErr
		d.LastError = &le
	}
	return d
}

func (p *connPresence) confirm(cps map[string]uint64, persist bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for scope, seq := range cps {
		if seq > p.checkpoints[scope] {
			p.checkpoints[scope] = seq
			if persist {
				p.unsaved[scope] = seq
			}
		}
	}
}

func (p *connPresence) takeUnsaved() map[string]uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.unsaved) == 0 {
		return nil
	}
	out := p.unsaved
	p.unsaved = make(map[string]uint64)
	return out
}

func (m *presenceManager) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(m.srv.baseCtx, m.srv.cfg.WriteTimeout)
}

// startPresence makes the connection an online entry and announces it. It
// runs on the read loop after the welcome.
func (c *conn) startPresence(h *protocol.Hello, scopes []string, checkpoints map[string]uint64) {
	s, m := c.srv, c.srv.presence
	now := time.Now().UTC()
	p := &connPresence{
		base: presence.Device{
			Conn: randomHex(connIDBytes), User: c.sess.principal.User, Device: c.sess.principal.Device,
			Session: c.sess.id, Node: s.cfg.Node, Instance: m.inst,
			Platform: clipInfo(h.Client.Platform), AppVersion: clipInfo(h.Client.AppVersion),
			State: presence.Active, Connected: now,
		},
		state:       presence.Active,
		checkpoints: make(map[string]uint64),
		unsaved:     make(map[string]uint64),
		scopes:      scopes,
		rooms:       make(map[string]*roomMember),
	}
	maps.Copy(p.checkpoints, checkpoints)
	c.pres = p
	m.mu.Lock()
	m.conns[p.base.Conn] = c
	m.mu.Unlock()
	ctx, cancel := m.ctx()
	defer cancel()
	d := p.device(now)
	if err := m.tracker.Connect(ctx, d); err != nil {
		s.metrics.presenceErrors.Inc()
		c.logger().Warn("gateway: presence: adding the entry failed; the next heartbeat retries", "err", err)
	}
	m.publishSupport(supportEvent{Type: "online", Device: d})
}

// endPresence runs on teardown: it removes the entry, leaves every room
// and persists checkpoints the device confirmed since the last heartbeat.
func (c *conn) endPresence() {
	p := c.pres
	if p == nil {
		return
	}
	m := c.srv.presence
	m.mu.Lock()
	delete(m.conns, p.base.Conn)
	m.mu.Unlock()
	p.mu.Lock()
	local := make([]string, 0, len(p.rooms))
	members := make([]*roomMember, 0, len(p.rooms))
	for id, rm := range p.rooms {
		rm.left = true
		if rm.timer != nil {
			rm.timer.Stop()
		}
		local = append(local, id)
		members = append(members, rm)
	}
	p.mu.Unlock()
	for _, rm := range members {
		rm.waitSends()
	}
	for _, id := range local {
		c.srv.unsubscribe(roomKeyPrefix+id, c)
	}
	ctx, cancel := m.ctx()
	defer cancel()
	m.persist(ctx, c, p)
	// Write the entry as it is now (app state, checkpoints, the error that
	// ended the connection) so that the device's last record keeps it.
	if _, err := m.tracker.Refresh(ctx, []presence.Device{p.device(time.Now().UTC())}); err != nil {
		c.srv.metrics.presenceErrors.Inc()
	}
	g, ok, err := m.tracker.Disconnect(ctx, p.base.Conn)
	if err != nil {
		c.srv.metrics.presenceErrors.Inc()
		c.logger().Warn("gateway: presence: removing the entry failed; it expires", "err", err)
	}
	if !ok { // gone already (swept) or unknown to a failing tracker: announce what we know
		g = presence.Gone{Device: p.device(time.Now().UTC()), Rooms: local}
	}
	g.Device.LastSeen = time.Now().UTC()
	m.announceGone(g, "disconnect")
}

// persist writes the checkpoints of p's checkpoint messages to the store.
func (m *presenceManager) persist(ctx context.Context, c *conn, p *connPresence) {
	cps := p.takeUnsaved()
	if cps == nil {
		return
	}
	if err := m.srv.engine.Confirm(ctx, c.sess.principal, cps); err != nil && ctx.Err() == nil {
		c.logger().Warn("gateway: presence: saving confirmed checkpoints failed", "err", err)
	}
}

// announceGone publishes the offline event of a removed entry and the
// leave events of its rooms.
func (m *presenceManager) announceGone(g presence.Gone, reason string) {
	for _, id := range g.Rooms {
		ref := roomRefOf(id)
		m.publishRoom(ref, &protocol.RoomEvent{RoomRef: ref, Event: protocol.RoomLeave,
			Member: protocol.Member{ID: g.Device.Conn, User: g.Device.User, Device: g.Device.Device}})
		m.publishSupport(supportEvent{Type: "leave", Device: g.Device, Scope: ref.Scope, Room: ref.Room, Reason: reason})
	}
	m.publishSupport(supportEvent{Type: "offline", Device: g.Device, Reason: reason})
}

// run is the heartbeat and sweep loop; it returns when ctx ends.
func (m *presenceManager) run(ctx context.Context) {
	beat := time.NewTicker(m.srv.cfg.PresenceHeartbeat)
	defer beat.Stop()
	sweep := time.NewTicker(m.srv.cfg.PresenceSweep)
	defer sweep.Stop()
	m.heartbeat(ctx) // the node record exists from the start
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			m.heartbeat(ctx)
		case <-sweep.C:
			m.sweep(ctx)
		}
	}
}

func (m *presenceManager) snapshot() []*conn {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*conn, 0, len(m.conns))
	for _, c := range m.conns {
		out = append(out, c)
	}
	return out
}

// heartbeat renews the node record and refreshes every local entry; the
// entries the tracker lost are added again, with their rooms.
func (m *presenceManager) heartbeat(ctx context.Context) {
	start := time.Now()
	defer func() { m.srv.metrics.presenceHeartbeat.Observe(time.Since(start).Seconds()) }()
	hctx, cancel := context.WithTimeout(ctx, m.srv.cfg.PresenceHeartbeat)
	defer cancel()
	if err := m.tracker.RenewNode(hctx, m.inst); err != nil {
		m.srv.metrics.presenceErrors.Inc()
		m.log.Warn("gateway: presence: renewing the node record failed", "err", err)
	}
	conns := m.snapshot()
	now := time.Now().UTC()
	byID := make(map[string]*conn, len(conns))
	for batch := range slices.Chunk(conns, presenceBatch) {
		ds := make([]presence.Device, len(batch))
		for i, c := range batch {
			ds[i] = c.pres.device(now)
			byID[ds[i].Conn] = c
		}
		missing, err := m.tracker.Refresh(hctx, ds)
		if err != nil {
			m.srv.metrics.presenceErrors.Inc()
			m.log.Warn("gateway: presence: heartbeat failed", "entries", len(ds), "err", err)
			continue
		}
		for _, id := range missing {
			if c := byID[id]; c != nil && m.registered(id) {
				m.restore(hctx, c, now)
			}
		}
	}
	// Checkpoints confirmed since the last heartbeat go to the store after
	// the entries are refreshed, so a slow store never delays presence.
	for _, c := range conns {
		m.persist(hctx, c, c.pres)
	}
}

// registered reports whether conn is still one of this node's (it may
// have closed since a heartbeat's snapshot).
func (m *presenceManager) registered(conn string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.conns[conn]
	return ok
}

// restore adds back an entry the tracker lost (swept after a late
// heartbeat, or a Redis restart), with its room memberships.
func (m *presenceManager) restore(ctx context.Context, c *conn, now time.Time) {
	p := c.pres
	if err := m.tracker.Connect(ctx, p.device(now)); err != nil {
		m.srv.metrics.presenceErrors.Inc()
		return
	}
	m.srv.metrics.presenceRestored.Inc()
	m.publishSupport(supportEvent{Type: "online", Device: p.device(now)})
	p.mu.Lock()
	members := make(map[string]presence.Member, len(p.rooms))
	for id, rm := range p.rooms {
		if !rm.left {
			members[id] = rm.member
		}
	}
	p.mu.Unlock()
	for id, mem := range members {
		if err := m.tracker.Join(ctx, id, mem); err == nil {
			ref := roomRefOf(id)
			m.publishRoom(ref, &protocol.RoomEvent{RoomRef: ref, Event: protocol.RoomJoin, Member: publicMember(mem, now)})
		}
	}
}

// sweep removes expired entries and announces them.
func (m *presenceManager) sweep(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, m.srv.cfg.PresenceSweep)
	defer cancel()
	gone, err := m.tracker.Sweep(sctx)
	if err != nil {
		m.srv.metrics.presenceErrors.Inc()
		m.log.Warn("gateway: presence: sweep failed", "err", err)
	}
	if len(gone) > 0 {
		m.srv.metrics.presenceSwept.Add(float64(len(gone)))
		m.log.Info("gateway: presence: swept expired entries", "entries", len(gone))
	}
	for _, g := range gone {
		m.announceGone(g, "expired")
	}
}

// publishRoom encodes a room event once and publishes it to the room's
// members on every node. It never blocks (Broker.Publish).
func (m *presenceManager) publishRoom(ref protocol.RoomRef, ev *protocol.RoomEvent) {
	data, err := protocol.Marshal(ev)
	if err != nil {
		m.log.Error("gateway: encoding a room event failed", "err", err)
		return
	}
	m.srv.metrics.roomEvents.WithLabelValues(ev.Event).Inc()
	if err := m.srv.broker.Publish(m.srv.baseCtx, roomKeyPrefix+roomID(ref), data); err != nil {
		m.srv.metrics.brokerErrors.Inc()
	}
}

func publicMember(mem presence.Member, now time.Time) protocol.Member {
	return protocol.Member{
		ID: mem.Conn, User: mem.User, Device: mem.Device, State: mem.State,
		JoinedAt: protocol.UnixMilli(mem.Joined), UpdatedAt: protocol.UnixMilli(mem.Updated),
		Typing: now.Before(mem.TypingUntil),
	}
}

// noteError records the last error sent to the connection (support API).
func (c *conn) noteError(code protocol.Code, msg string) {
	if p := c.pres; p != nil {
		p.mu.Lock()
		p.lastErr = &presence.LastError{Code: string(code), Message: msg, At: time.Now().UTC()}
		p.mu.Unlock()
	}
}

// onAppState handles app_state.
func (c *conn) onAppState(msg *protocol.AppStateMsg) {
	st := presence.AppState(msg.State)
	if !st.Valid() {
		c.requestError(msg.Rid, protocol.Errorf(protocol.CodeBadRequest, "state must be active or background"))
		return
	}
	p := c.pres
	p.mu.Lock()
	changed := p.state != st
	p.state = st
	p.mu.Unlock()
	if !changed {
		return
	}
	m := c.srv.presence
	ctx, cancel := m.ctx()
	defer cancel()
	now := time.Now().UTC()
	d := p.device(now)
	missing, err := m.tracker.Refresh(ctx, []presence.Device{d})
	switch {
	case err != nil:
		c.srv.metrics.presenceErrors.Inc()
	case len(missing) > 0:
		m.restore(ctx, c, now)
	}
	m.publishSupport(supportEvent{Type: "app_state", Device: d, State: string(st)})
}

// onCheckpoint handles checkpoint: the seqs are kept for the presence
// entry and written to the store at the next heartbeat (or teardown), so a
// device confirming after every change costs one write per heartbeat.
func (c *conn) onCheckpoint(msg *protocol.Checkpoint) {
	if len(msg.Scopes) > maxSessionScopes {
		c.requestError(msg.Rid, protocol.Errorf(protocol.CodeTooLarge, "checkpoint names %d scopes; the limit is %d",
			len(msg.Scopes), maxSessionScopes))
		return
	}
	keep := make(map[string]uint64, len(msg.Scopes))
	for scope, seq := range msg.Scopes {
		if c.sess.principal.CanUse(scope) {
			keep[scope] = seq
		}
	}
	c.pres.confirm(keep, true)
}

// validRoom checks a room reference and that the token grants its scope.
func (c *conn) validRoom(rid uint64, ref protocol.RoomRef) bool {
	if perr := protocol.ValidateRoom(ref); perr != nil {
		c.requestError(rid, perr)
		return false
	}
	if !c.sess.principal.CanUse(ref.Scope) {
		c.requestError(rid, protocol.Errorf(protocol.CodeForbiddenScope, "the token does not grant scope %s", ref.Scope))
		return false
	}
	return true
}

func (c *conn) validAwareness(rid uint64, st json.RawMessage) bool {
	if len(st) > c.srv.cfg.AwarenessMaxBytes {
		c.requestError(rid, protocol.Errorf(protocol.CodeTooLarge, "the awareness state is %d bytes; the limit is %d",
			len(st), c.srv.cfg.AwarenessMaxBytes))
		return false
	}
	return true
}

// onJoin handles join: the membership is stored, the connection
// subscribes to the room's events, and it gets the member list. The
// subscription comes first, so no event between the list and the
// subscription is lost (one may arrive twice; members are keyed by id).
func (c *conn) onJoin(msg *protocol.Join) {
	if !c.validRoom(msg.Rid, msg.RoomRef) || !c.validAwareness(msg.Rid, msg.State) {
		return
	}
	s, m, p := c.srv, c.srv.presence, c.pres
	id := roomID(msg.RoomRef)
	now := time.Now().UTC()
	p.mu.Lock()
	_, already := p.rooms[id]
	n := len(p.rooms)
	p.mu.Unlock()
	switch {
	case already:
		c.requestError(msg.Rid, protocol.Errorf(protocol.CodeBadRequest, "already in room %s", msg.Room))
		return
	case n >= s.cfg.MaxRoomsPerConn:
		c.requestError(msg.Rid, protocol.Errorf(protocol.CodeTooLarge, "a connection may be in at most %d rooms", s.cfg.MaxRoomsPerConn))
		return
	}
	mem := presence.Member{Conn: p.base.Conn, User: p.base.User, Device: p.base.Device, State: msg.State, Joined: now, Updated: now}
	if err := s.subscribe(c.ctx, roomKeyPrefix+id, c); err != nil {
		c.requestError(msg.Rid, protocol.Errorf(protocol.CodeUnavailable, "rooms are unavailable; retry"))
		return
	}
	ctx, cancel := m.ctx()
	defer cancel()
	err := m.tracker.Join(ctx, id, mem)
	if errors.Is(err, presence.ErrGone) {
		// The entry was lost (a late heartbeat, a Redis restart): add it
		// back and join again.
		if err = m.tracker.Connect(ctx, p.device(now)); err == nil {
			err = m.tracker.Join(ctx, id, mem)
		}
	}
	if err != nil {
		s.unsubscribe(roomKeyPrefix+id, c)
		s.metrics.presenceErrors.Inc()
		c.logger().Warn("gateway: presence: joining a room failed", "room", msg.Room, "err", err)
		c.requestError(msg.Rid, protocol.Errorf(protocol.CodeUnavailable, "rooms are unavailable; retry"))
		return
	}
	rm := &roomMember{ref: msg.RoomRef, member: mem, lastSent: now}
	p.mu.Lock()
	p.rooms[id] = rm
	p.mu.Unlock()
	members, err := m.tracker.Room(ctx, id)
	if err != nil {
		s.metrics.presenceErrors.Inc()
		members = []presence.Member{mem}
	}
	out := make([]protocol.Member, len(members))
	for i, mm := range members {
		out[i] = publicMember(mm, now)
	}
	c.send(&protocol.Room{Envelope: protocol.Envelope{Rid: msg.Rid}, RoomRef: msg.RoomRef, You: mem.Conn, Members: out})
	m.publishRoom(msg.RoomRef, &protocol.RoomEvent{RoomRef: msg.RoomRef, Event: protocol.RoomJoin, Member: publicMember(mem, now)})
	m.publishSupport(supportEvent{Type: "join", Device: p.device(now), Scope: msg.Scope, Room: msg.Room})
}

// onLeave handles leave.
func (c *conn) onLeave(msg *protocol.Leave) {
	if perr := protocol.ValidateRoom(msg.RoomRef); perr != nil {
		c.requestError(msg.Rid, perr)
		return
	}
	if !c.leaveRoom(roomID(msg.RoomRef), "leave") {
		c.requestError(msg.Rid, protocol.Errorf(protocol.CodeNotFound, "not in room %s", msg.Room))
		return
	}
	c.send(&protocol.Left{Envelope: protocol.Envelope{Rid: msg.Rid}, RoomRef: msg.RoomRef})
}

// leaveUngrantedRooms leaves every room whose scope a refreshed token no
// longer grants (subscribed or not).
func (c *conn) leaveUngrantedRooms() {
	p := c.pres
	p.mu.Lock()
	var ids []string
	for id, rm := range p.rooms {
		if !c.sess.principal.CanUse(rm.ref.Scope) {
			ids = append(ids, id)
		}
	}
	p.mu.Unlock()
	for _, id := range ids {
		c.leaveRoom(id, "forbidden")
	}
}

// leaveRoom removes the connection from a room it is in and announces the
// leave; false if it was not in the room. It runs on the read loop.
func (c *conn) leaveRoom(id, reason string) bool {
	m, p := c.srv.presence, c.pres
	p.mu.Lock()
	rm, ok := p.rooms[id]
	if ok {
		delete(p.rooms, id)
		rm.left = true
		if rm.timer != nil {
			rm.timer.Stop()
		}
	}
	p.mu.Unlock()
	if !ok {
		return false
	}
	rm.waitSends()
	ctx, cancel := m.ctx()
	defer cancel()
	if _, err := m.tracker.Leave(ctx, id, p.base.Conn); err != nil {
		c.srv.metrics.presenceErrors.Inc()
	}
	c.srv.unsubscribe(roomKeyPrefix+id, c)
	m.publishRoom(rm.ref, &protocol.RoomEvent{RoomRef: rm.ref, Event: protocol.RoomLeave,
		Member: protocol.Member{ID: p.base.Conn, User: p.base.User, Device: p.base.Device}})
	m.publishSupport(supportEvent{Type: "leave", Device: p.device(time.Now().UTC()), Scope: rm.ref.Scope, Room: rm.ref.Room, Reason: reason})
	return true
}

// member returns the connection's membership of a room, or answers
// not_found.
func (c *conn) member(rid uint64, ref protocol.RoomRef) *roomMember {
	if perr := protocol.ValidateRoom(ref); perr != nil {
		c.requestError(rid, perr)
		return nil
	}
	p := c.pres
	p.mu.Lock()
	rm := p.rooms[roomID(ref)]
	p.mu.Unlock()
	if rm == nil {
		c.requestError(rid, protocol.Errorf(protocol.CodeNotFound, "not in room %s; join it first", ref.Room))
	}
	return rm
}

// onRoomState handles room_state: the throttle sends at once if the last
// update went out at least AwarenessInterval ago, else it keeps the newest
// state and a timer sends it when the interval has passed. Coalescing,
// rather than dropping, means the last cursor position always arrives.
func (c *conn) onRoomState(msg *protocol.RoomStateMsg) {
	rm := c.member(msg.Rid, msg.RoomRef)
	if rm == nil || !c.validAwareness(msg.Rid, msg.State) {
		return
	}
	if len(msg.State) == 0 {
		msg.State = json.RawMessage("null")
	}
	p := c.pres
	interval := c.srv.cfg.AwarenessInterval
	p.mu.Lock()
	defer p.mu.Unlock()
	if rm.left {
		return
	}
	rm.pending = msg.State
	if rm.timer != nil {
		c.srv.metrics.awarenessCoalesced.Inc()
		return // the armed timer sends the newest state
	}
	delay := max(0, time.Until(rm.lastSent.Add(interval)))
	if delay > 0 {
		c.srv.metrics.awarenessCoalesced.Inc()
	}
	rm.timer = time.AfterFunc(delay, func() { c.flushAwareness(rm) })
}

// flushAwareness sends rm's pending state: it stores the member record and
// publishes a state event. It runs on a timer goroutine; sendMu keeps one
// member's sends in order (the later flush always sends the newer state).
func (c *conn) flushAwareness(rm *roomMember) {
	rm.sendMu.Lock()
	defer rm.sendMu.Unlock()
	p := c.pres
	now := time.Now().UTC()
	p.mu.Lock()
	st := rm.pending
	rm.pending, rm.timer = nil, nil
	if st == nil || rm.left {
		p.mu.Unlock()
		return
	}
	rm.lastSent = now
	rm.member.State, rm.member.Updated = st, now
	mem := rm.member
	p.mu.Unlock()
	m := c.srv.presence
	ctx, cancel := m.ctx()
	defer cancel()
	if err := m.tracker.SetMember(ctx, roomID(rm.ref), mem); err != nil && !errors.Is(err, presence.ErrGone) {
		c.srv.metrics.presenceErrors.Inc()
	}
	m.publishRoom(rm.ref, &protocol.RoomEvent{RoomRef: rm.ref, Event: protocol.RoomState, Member: publicMember(mem, now)})
}

// onTyping handles typing: at most one indicator per TypingInterval per
// user per room goes out (this connection's own throttle first, then the
// tracker's cluster-wide one); the rest are dropped silently, as a
// keystroke-rate client expects.
func (c *conn) onTyping(msg *protocol.Typing) {
	rm := c.member(msg.Rid, msg.RoomRef)
	if rm == nil {
		return
	}
	s, m, p := c.srv, c.srv.presence, c.pres
	now := time.Now().UTC()
	p.mu.Lock()
	if now.Sub(rm.lastTyping) < s.cfg.TypingInterval {
		p.mu.Unlock()
		s.metrics.typingDropped.Inc()
		return
	}
	rm.lastTyping = now
	p.mu.Unlock()
	ctx, cancel := m.ctx()
	defer cancel()
	id := roomID(msg.RoomRef)
	ok, err := m.tracker.AllowTyping(ctx, id, p.base.User, s.cfg.TypingInterval)
	if err != nil {
		s.metrics.presenceErrors.Inc()
		return
	}
	if !ok {
		s.metrics.typingDropped.Inc()
		return
	}
	rm.sendMu.Lock()
	defer rm.sendMu.Unlock()
	p.mu.Lock()
	rm.member.TypingUntil = now.Add(s.cfg.TypingTTL)
	mem := rm.member
	p.mu.Unlock()
	if err := m.tracker.SetMember(ctx, id, mem); err != nil && !errors.Is(err, presence.ErrGone) {
		s.metrics.presenceErrors.Inc()
	}
	m.publishRoom(msg.RoomRef, &protocol.RoomEvent{RoomRef: msg.RoomRef, Event: protocol.RoomTyping,
		Member: publicMember(mem, now), ExpiresIn: s.cfg.TypingTTL.Milliseconds()})
}

// Device actions from support staff (POST /v1/support/devices/{id}/…),
// carried to every node by a control message; each node acts on its own
// connections of the device.
const (
	controlDeviceAction = "device_action"
	actionDisconnect    = "disconnect"
	actionResync        = "resync"
)

// localConns returns this node's connections of device (of user, if set).
func (m *presenceManager) localConns(user, device string) []*conn {
	var out []*conn
	for _, c := range m.snapshot() {
		if c.pres.base.Device == device && (user == "" || c.pres.base.User == user) {
			out = append(out, c)
		}
	}
	return out
}

// act runs a device action on this node. It must not block (it runs in
// the control handler): resyncs read heads in a goroutine.
func (m *presenceManager) act(action, user, device string) {
	conns := m.localConns(user, device)
	if len(conns) == 0 {
		return
	}
	m.log.Info("gateway: support action", "action", action, "user", user, "device", device, "connections", len(conns))
	switch action {
	case actionDisconnect:
		msg := m.srv.errorMessage(0, protocol.CodeDisconnected, "support staff disconnected this device; reconnect after a backoff")
		for _, c := range conns {
			c.noteError(protocol.CodeDisconnected, "disconnected by support")
			c.closeWith(protocol.CloseDisconnected, string(protocol.CodeDisconnected), msg, false)
		}
	case actionResync:
		go func() {
			for _, c := range conns {
				m.resync(c)
			}
		}()
	}
}

// resync sends a reset for every scope the connection subscribes: the
// device drops its replica of each and downloads it again, keeping its
// pending mutations.
func (m *presenceManager) resync(c *conn) {
	p := c.pres
	p.mu.Lock()
	scopes := slices.Clone(p.scopes)
	p.mu.Unlock()
	for _, scope := range scopes {
		var head uint64
		ctx, cancel := m.ctx()
		if ch, err := m.srv.engine.Latest(ctx, scope); err == nil && ch != nil {
			head = ch.Head
		}
		cancel()
		c.send(&protocol.Reset{Scope: scope, Reason: "support staff requested a resync", Head: head})
	}
}

// announceAction sends a device action to every node (this one included).
func (m *presenceManager) announceAction(ctx context.Context, action, user, device string) error {
	cb := m.srv.sessions.control
	if cb == nil {
		m.act(action, user, device)
		return nil
	}
	data, _ := json.Marshal(controlMsg{Type: controlDeviceAction, Action: action, User: user, Device: device}) // strings
	return cb.PublishControl(ctx, data)
}
