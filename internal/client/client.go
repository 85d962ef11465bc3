// Package client is a small Go implementation of the device side of the
// wire protocol: a replica per scope, a queue of pending mutations with
// strictly increasing ids, checkpoints, gap detection and resets.
//
// The replica is kept as two layers, the model every client should follow:
// the server state (only ever set from `changes` entries and resolved
// states in acks) and, on top, the device's own mutations the server state
// does not include yet — unacknowledged ones, and acknowledged ones whose
// entry has not arrived. What the app sees is the server state with that
// overlay re-applied in mutation order, so an incoming change never makes
// a local edit flicker away, and a rejected or conflicting edit simply
// drops out of the view. The e2e
// tests and `syncgate bench` use it; the product's client is the TypeScript
// one in clients/js, which follows the same rules (docs/protocol.md).
//
// A Device is goroutine-safe. Its state (replica, queue, checkpoints) lives
// in memory and survives Disconnect/Connect, which is how tests model a
// device going offline.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/sync/protocol"
)

// awaited is an acknowledged mutation whose log entry (seq) has not reached
// the server state yet.
type awaited struct {
	m   protocol.Mutation
	seq uint64
}

// Doc is a replica document.
type Doc struct {
	Version uint64
	State   map[string]any
	Deleted bool
}

// Device is one simulated device.
type Device struct {
	ID    string
	URL   string // ws://host:port/v1/ws
	Token string

	user        string // from welcome: with ID, names this device in changes entries
	session     string // from welcome: resumed by the next hello; forgotten on close 4011
	mu          sync.Mutex
	nextMID     uint64
	wallMs      int64
	logical     int
	pending     []protocol.Mutation       // not acknowledged yet (sent or not)
	awaiting    []awaited                 // acknowledged, entry not seen yet
	replica     map[string]map[string]Doc // scope -> "col/id" -> doc
	checkpoints map[string]uint64
	scopes      []string
	acked       map[uint64]protocol.Result
	confirmed   map[uint64]bool // pending mutations already seen committed in a changes entry
	conn        *websocket.Conn
	writeMu     sync.Mutex
	rid         uint64
	waiters     map[uint64]chan json.RawMessage
	pulling     map[string]bool
	OnChanges   func(scope string, c *protocol.Changes, received time.Time) // optional hook (bench)
	// OnRoomEvent, if set, receives every room_event (on the read loop:
	// it must not block). Set it before Connect.
	OnRoomEvent func(ev protocol.RoomEvent, received time.Time)
	closed      chan struct{}
	closeCode   int
	lastErr     []protocol.ErrorMsg
}

// New returns a device subscribed to scopes.
func New(id, url, token string, scopes ...string) *Device {
	d := &Device{
		ID: id, URL: url, Token: token, scopes: scopes,
		replica: map[string]map[string]Doc{}, checkpoints: map[string]uint64{},
		acked: map[uint64]protocol.Result{}, confirmed: map[uint64]bool{},
	}
	for _, s := range scopes {
		d.replica[s] = map[string]Doc{}
	}
	return d
}

// hlcLocked stamps a new HLC from the local clock.
func (d *Device) hlcLocked() string {
	now := time.Now().UnixMilli()
	if now > d.wallMs {
		d.wallMs, d.logical = now, 0
	} else {
		d.logical++
	}
	return fmt.Sprintf("%013d-%06d-%s", d.wallMs, d.logical, d.ID)
}

// Put, Patch and Delete queue a mutation and apply it to the local replica
// optimistically. They work offline; Flush sends the queue.
func (d *Device) Put(scope, col, id string, data map[string]any) {
	d.enqueue(protocol.Mutation{Scope: scope, Collection: col, DocID: id, Op: conflict.Put, Data: data})
}

func (d *Device) Patch(scope, col, id string, ops conflict.PatchOps) {
	d.enqueue(protocol.Mutation{Scope: scope, Collection: col, DocID: id, Op: conflict.Patch, PatchOps: ops})
}

func (d *Device) Delete(scope, col, id string) {
	d.enqueue(protocol.Mutation{Scope: scope, Collection: col, DocID: id, Op: conflict.Delete})
}

func (d *Device) enqueue(m protocol.Mutation) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nextMID++
	m.ID = d.nextMID
	m.HLC = d.hlcLocked()
	m.Base = d.replica[m.Scope][m.Collection+"/"+m.DocID].Version
	d.pending = append(d.pending, m)
}

// applyLocal is the optimistic local apply onto a view: a plain
// (non-merging) application of the op, which the server's answer replaces.
func applyLocal(view map[string]Doc, m protocol.Mutation) {
	key := m.Collection + "/" + m.DocID
	doc := view[key]
	state := maps.Clone(doc.State)
	if state == nil || doc.Deleted {
		state = map[string]any{}
	}
	switch m.Op {
	case conflict.Put:
		state = maps.Clone(m.Data)
	case conflict.Delete:
		view[key] = Doc{Version: doc.Version, Deleted: true}
		return
	case conflict.Patch:
		maps.Copy(state, m.Set)
		for _, f := range m.Unset {
			delete(state, f)
		}
		for f, v := range m.Inc {
			n, _ := state[f].(float64)
			state[f] = n + v
		}
	}
	view[key] = Doc{Version: doc.Version, State: state}
}

// viewLocked is the server state of scope with the device's own
// not-yet-included mutations re-applied in order.
func (d *Device) viewLocked(scope string) map[string]Doc {
	view := maps.Clone(d.replica[scope])
	if view == nil {
		view = map[string]Doc{}
	}
	cp := d.checkpoints[scope]
	for _, a := range d.awaiting {
		if a.m.Scope == scope && a.seq > cp {
			applyLocal(view, a.m)
		}
	}
	for _, m := range d.pending {
		if m.Scope == scope && !d.confirmed[m.ID] {
			applyLocal(view, m)
		}
	}
	return view
}

// Pending returns the number of unacknowledged mutations.
func (d *Device) Pending() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.pending)
}

// Checkpoint returns the device's checkpoint for scope.
func (d *Device) Checkpoint(scope string) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.checkpoints[scope]
}

// Replica returns a copy of the device's documents in scope (live ones only).
func (d *Device) Replica(scope string) map[string]map[string]any {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]map[string]any{}
	for k, doc := range d.viewLocked(scope) {
		if !doc.Deleted {
			out[k] = maps.Clone(doc.State)
		}
	}
	return out
}

// Result returns the ack of a mutation id, if it arrived.
func (d *Device) Result(mid uint64) (protocol.Result, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.acked[mid]
	return r, ok
}

// Errors returns the error messages received so far.
func (d *Device) Errors() []protocol.ErrorMsg {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]protocol.ErrorMsg(nil), d.lastErr...)
}

// Connect dials, sends hello with the device's checkpoints and waits for
// welcome; then it catches up every scope.
func (d *Device) Connect(ctx context.Context) (*protocol.Welcome, error) {
	conn, resp, err := websocket.DefaultDialer.DialContext(ctx, d.URL, nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("client: dial: %w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, fmt.Errorf("client: dial: %w", err)
	}
	d.mu.Lock()
	d.conn = conn
	d.waiters = map[uint64]chan json.RawMessage{}
	d.pulling = map[string]bool{}
	d.closed = make(chan struct{})
	d.closeCode = 0
	subs := make([]protocol.Subscription, 0, len(d.scopes))
	for _, s := range d.scopes {
		subs = append(subs, protocol.Subscription{Scope: s, Since: d.checkpoints[s]})
	}
	session := d.session
	d.mu.Unlock()
	welcomeCh := d.expect(0)
	go d.readLoop(conn)
	hello := &protocol.Hello{Protocol: protocol.Version, Token: d.Token, Device: d.ID, Scopes: subs, Session: session}
	if err := d.send(hello); err != nil {
		return nil, err
	}
	raw, err := d.await(ctx, 0, welcomeCh)
	if err != nil {
		return nil, err
	}
	var w protocol.Welcome
	if err := json.Unmarshal(raw, &w); err != nil || w.Type != protocol.TypeWelcome {
		return nil, fmt.Errorf("client: expected welcome, got %s", raw)
	}
	d.mu.Lock()
	d.user, d.session = w.User, w.Session
	if w.LastMutation > d.nextMID {
		d.nextMID = w.LastMutation // the queue was lost: continue above the server's mark
	}
	d.mu.Unlock()
	for _, s := range w.Scopes {
		if s.Reset {
			d.reset(s.Scope)
		}
		if err := d.CatchUp(ctx, s.Scope); err != nil {
			return &w, err
		}
	}
	return &w, nil
}

// reset drops the replica of scope; pending mutations stay queued and are
// re-applied locally on top of the fresh state.
func (d *Device) reset(scope string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.replica[scope] = map[string]Doc{}
	d.checkpoints[scope] = 0
}

// Disconnect closes the socket (the device goes offline).
func (d *Device) Disconnect() {
	d.mu.Lock()
	conn := d.conn
	d.conn = nil
	d.mu.Unlock()
	if conn != nil {
		conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		conn.Close()
	}
}

// Closed is closed when the current connection ends; CloseCode tells why.
func (d *Device) Closed() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// CloseCode is the close code the server sent (0 if none yet).
func (d *Device) CloseCode() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closeCode
}

// Flush pushes the pending queue in batches of at most batch mutations and
// waits for every ack. Retryable rejections stay queued.
func (d *Device) Flush(ctx context.Context, batch int) error {
	for {
		d.mu.Lock()
		n := min(batch, len(d.pending))
		muts := append([]protocol.Mutation(nil), d.pending[:n]...)
		d.mu.Unlock()
		if n == 0 {
			return nil
		}
		ack, err := d.PushRaw(ctx, muts)
		if err != nil {
			return err
		}
		d.mu.Lock()
		retry := 0
		for i, r := range ack.Results {
			d.acked[r.MutationID] = r
			if r.Outcome == "rejected" && r.Code.Retryable() {
				retry++
				continue
			}
			d.settleLocked(muts[i], r)
		}
		d.dropAckedLocked(ack.Results)
		d.mu.Unlock()
		if retry > 0 {
			return fmt.Errorf("client: %d mutations need a retry", retry)
		}
	}
}

func (d *Device) dropAckedLocked(results []protocol.Result) {
	done := map[uint64]bool{}
	for _, r := range results {
		if !(r.Outcome == "rejected" && r.Code.Retryable()) {
			done[r.MutationID] = true
		}
	}
	kept := d.pending[:0]
	for _, m := range d.pending {
		if !done[m.ID] {
			kept = append(kept, m)
		} else {
			delete(d.confirmed, m.ID)
		}
	}
	d.pending = kept
}

// settleLocked folds an ack in. An applied or merged mutation whose entry
// is not in the server state yet stays in the view until the checkpoint
// passes its seq; a merged result's resolved state replaces the local
// guess; a conflict or rejection simply leaves the view.
func (d *Device) settleLocked(m protocol.Mutation, r protocol.Result) {
	if r.Outcome != "applied" && r.Outcome != "merged" {
		return
	}
	if r.State != nil || r.Deleted {
		m = protocol.Mutation{Scope: m.Scope, Collection: m.Collection, DocID: m.DocID, Op: conflict.Put, Data: r.State}
		if r.Deleted {
			m.Op, m.Data = conflict.Delete, nil
		}
	}
	if r.Seq == 0 {
		// Nothing was written: the resolved state is the server state at r.Version.
		rep := d.replica[m.Scope]
		key := m.Collection + "/" + m.DocID
		if r.Version >= rep[key].Version && (r.State != nil || r.Deleted) {
			rep[key] = Doc{Version: r.Version, State: r.State, Deleted: r.Deleted}
		}
		return
	}
	if r.Seq > d.checkpoints[m.Scope] && !d.confirmed[m.ID] {
		d.awaiting = append(d.awaiting, awaited{m: m, seq: r.Seq})
	}
}

// PushRaw sends one push and waits for its ack.
func (d *Device) PushRaw(ctx context.Context, muts []protocol.Mutation) (*protocol.Ack, error) {
	rid, ch := d.newRequest()
	if err := d.send(&protocol.Push{Envelope: protocol.Envelope{Rid: rid}, Mutations: muts}); err != nil {
		return nil, err
	}
	raw, err := d.await(ctx, rid, ch)
	if err != nil {
		return nil, err
	}
	var ack protocol.Ack
	if err := json.Unmarshal(raw, &ack); err != nil || ack.Type != protocol.TypeAck {
		return nil, fmt.Errorf("client: push answered with %s", raw)
	}
	return &ack, nil
}

// CatchUp pulls scope from the checkpoint until the server says no more.
func (d *Device) CatchUp(ctx context.Context, scope string) error {
	for {
		rid, ch := d.newRequest()
		if err := d.send(&protocol.Pull{Envelope: protocol.Envelope{Rid: rid}, Scope: scope, Since: d.Checkpoint(scope)}); err != nil {
			return err
		}
		raw, err := d.await(ctx, rid, ch)
		if err != nil {
			return err
		}
		var env protocol.Envelope
		json.Unmarshal(raw, &env)
		switch env.Type {
		case protocol.TypeReset:
			d.reset(scope)
			continue
		case protocol.TypeChanges:
			var c protocol.Changes
			if err := json.Unmarshal(raw, &c); err != nil {
				return err
			}
			d.apply(&c)
			if !c.More {
				return nil
			}
		default:
			return fmt.Errorf("client: pull answered with %s", raw)
		}
	}
}

// apply folds a changes message into the replica under the checkpoint rule.
// It returns false when the message starts after the checkpoint (a gap).
func (d *Device) apply(c *protocol.Changes) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	cp := d.checkpoints[c.Scope]
	if c.From > cp {
		return false
	}
	if c.To <= cp {
		return true
	}
	rep := d.replica[c.Scope]
	if rep == nil {
		rep = map[string]Doc{}
		d.replica[c.Scope] = rep
	}
	for _, e := range c.Entries {
		if e.User == d.user && e.Device == d.ID {
			d.confirmed[e.MutationID] = true // in the server state now: never re-apply it
		}
		if e.Seq <= cp {
			continue
		}
		key := e.Collection + "/" + e.DocID
		if cur, ok := rep[key]; ok && cur.Version >= e.Version {
			continue
		}
		rep[key] = Doc{Version: e.Version, State: e.State, Deleted: e.Deleted}
	}
	d.checkpoints[c.Scope] = c.To
	kept := d.awaiting[:0]
	for _, a := range d.awaiting {
		if a.m.Scope != c.Scope || a.seq > c.To {
			kept = append(kept, a)
		}
	}
	d.awaiting = kept
	return true
}

func (d *Device) newRequest() (uint64, chan json.RawMessage) {
	d.mu.Lock()
	d.rid++
	rid := d.rid
	d.mu.Unlock()
	return rid, d.expect(rid)
}

func (d *Device) expect(rid uint64) chan json.RawMessage {
	ch := make(chan json.RawMessage, 1)
	d.mu.Lock()
	d.waiters[rid] = ch
	d.mu.Unlock()
	return ch
}

// ErrClosed is returned for requests on a closed connection.
var ErrClosed = errors.New("client: connection closed")

func (d *Device) await(ctx context.Context, rid uint64, ch chan json.RawMessage) (json.RawMessage, error) {
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	select {
	case raw := <-ch:
		var e protocol.ErrorMsg
		if json.Unmarshal(raw, &e) == nil && e.Type == protocol.TypeError {
			return nil, &protocol.Error{Code: e.Code, Message: e.Message}
		}
		return raw, nil
	case <-closed:
		return nil, fmt.Errorf("%w (code %d)", ErrClosed, d.CloseCode())
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (d *Device) send(m protocol.Message) error {
	b, err := protocol.Marshal(m)
	if err != nil {
		return err
	}
	d.mu.Lock()
	conn := d.conn
	d.mu.Unlock()
	if conn == nil {
		return ErrClosed
	}
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	return conn.WriteMessage(websocket.TextMessage, b)
}

// SendRaw writes raw bytes as one frame (for tests of bad input).
func (d *Device) SendRaw(b []byte) error {
	d.mu.Lock()
	conn := d.conn
	d.mu.Unlock()
	if conn == nil {
		return ErrClosed
	}
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	return conn.WriteMessage(websocket.TextMessage, b)
}

func (d *Device) readLoop(conn *websocket.Conn) {
	defer func() {
		d.mu.Lock()
		if d.closed != nil {
			select {
			case <-d.closed:
			default:
				close(d.closed)
			}
		}
		d.mu.Unlock()
	}()
	for {
		_, frame, err := conn.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				d.mu.Lock()
				d.closeCode = ce.Code
				if ce.Code == protocol.CloseSessionRevoked {
					d.session = "" // revoked or evicted: never present it again
				}
				d.mu.Unlock()
			}
			return
		}
		received := time.Now()
		sc := bufio.NewScanner(bytes.NewReader(frame))
		sc.Buffer(make([]byte, 0, 64<<10), len(frame)+1)
		for sc.Scan() {
			line := append([]byte(nil), sc.Bytes()...)
			if len(line) > 0 {
				d.dispatch(line, received)
			}
		}
	}
}

func (d *Device) dispatch(raw []byte, received time.Time) {
	var env protocol.Envelope
	if json.Unmarshal(raw, &env) != nil {
		return
	}
	switch {
	case env.Type == protocol.TypeWelcome:
		d.deliver(0, raw)
	case env.Rid != 0:
		if env.Type == protocol.TypeError {
			d.recordError(raw)
		}
		d.deliver(env.Rid, raw)
	case env.Type == protocol.TypeChanges:
		var c protocol.Changes
		if json.Unmarshal(raw, &c) != nil {
			return
		}
		if hook := d.OnChanges; hook != nil {
			hook(c.Scope, &c, received)
		}
		if !d.apply(&c) {
			d.requestCatchUp(c.Scope)
		}
	case env.Type == protocol.TypeReset:
		var r protocol.Reset
		if json.Unmarshal(raw, &r) == nil {
			d.reset(r.Scope)
			d.requestCatchUp(r.Scope)
		}
	case env.Type == protocol.TypeRoomEvent:
		var ev protocol.RoomEvent
		if hook := d.OnRoomEvent; hook != nil && json.Unmarshal(raw, &ev) == nil {
			hook(ev, received)
		}
	case env.Type == protocol.TypeError:
		d.recordError(raw)
	}
}

// Join joins a room of scope and returns its members.
func (d *Device) Join(ctx context.Context, scope, room string) (*protocol.Room, error) {
	rid, ch := d.newRequest()
	if err := d.send(&protocol.Join{Envelope: protocol.Envelope{Rid: rid}, RoomRef: protocol.RoomRef{Scope: scope, Room: room}}); err != nil {
		return nil, err
	}
	raw, err := d.await(ctx, rid, ch)
	if err != nil {
		return nil, err
	}
	var r protocol.Room
	if err := json.Unmarshal(raw, &r); err != nil || r.Type != protocol.TypeRoom {
		return nil, fmt.Errorf("client: join answered with %s", raw)
	}
	return &r, nil
}

// SetRoomState sets this connection's awareness state in a room joined.
func (d *Device) SetRoomState(scope, room string, state json.RawMessage) error {
	return d.send(&protocol.RoomStateMsg{RoomRef: protocol.RoomRef{Scope: scope, Room: room}, State: state})
}

func (d *Device) recordError(raw []byte) {
	var e protocol.ErrorMsg
	if json.Unmarshal(raw, &e) == nil {
		d.mu.Lock()
		d.lastErr = append(d.lastErr, e)
		d.mu.Unlock()
	}
}

// requestCatchUp pulls a scope after a gap, once at a time.
func (d *Device) requestCatchUp(scope string) {
	d.mu.Lock()
	if d.pulling[scope] {
		d.mu.Unlock()
		return
	}
	d.pulling[scope] = true
	d.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		d.CatchUp(ctx, scope)
		d.mu.Lock()
		d.pulling[scope] = false
		d.mu.Unlock()
	}()
}

func (d *Device) deliver(rid uint64, raw []byte) {
	d.mu.Lock()
	ch := d.waiters[rid]
	delete(d.waiters, rid)
	d.mu.Unlock()
	if ch != nil {
		ch <- raw
	}
}
