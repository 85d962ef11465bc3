package protocol

import (
	"encoding/json"
	"strings"
	"time"
	"unicode/utf8"
)

// Presence messages (docs/protocol.md, "Presence and rooms").
const (
	// client -> server
	TypeAppState   = "app_state"  // the app went to the foreground or background
	TypeJoin       = "join"       // join a room; answered with room
	TypeLeave      = "leave"      // leave a room; answered with left
	TypeRoomState  = "room_state" // set this connection's awareness state in a room
	TypeTyping     = "typing"     // signal typing in a room
	TypeCheckpoint = "checkpoint" // confirm the seqs the device has applied
	// server -> client
	TypeRoom      = "room"       // a room's members, answering join
	TypeLeft      = "left"       // answering leave
	TypeRoomEvent = "room_event" // a member joined, left, changed state or typed
)

// Room events.
const (
	RoomJoin   = "join"
	RoomLeave  = "leave"
	RoomState  = "state"
	RoomTyping = "typing"
)

// MaxRoomBytes caps a room name.
const MaxRoomBytes = 128

// AppStateMsg sets the connection's app state: "active" or "background".
type AppStateMsg struct {
	Envelope
	State string `json:"state"`
}

// RoomRef names a room: a name within a scope the token grants.
type RoomRef struct {
	Scope string `json:"scope"`
	Room  string `json:"room"`
}

// Join asks to join a room.
type Join struct {
	Envelope
	RoomRef
	// State is the initial awareness state (optional).
	State json.RawMessage `json:"state,omitempty"`
}

// Leave asks to leave a room.
type Leave struct {
	Envelope
	RoomRef
}

// RoomStateMsg sets the awareness state of this connection in a room.
type RoomStateMsg struct {
	Envelope
	RoomRef
	State json.RawMessage `json:"state"`
}

// Typing signals that the user is typing in a room.
type Typing struct {
	Envelope
	RoomRef
}

// Checkpoint confirms, per scope, the highest seq the device has applied.
// It feeds the support API's sync lag; it changes nothing in sync.
type Checkpoint struct {
	Envelope
	Scopes map[string]uint64 `json:"scopes"`
}

// Member is a room member as clients see it. ID is the member's
// connection (a user with two tabs is two members).
type Member struct {
	ID        string          `json:"id"`
	User      string          `json:"user"`
	Device    string          `json:"device"`
	State     json.RawMessage `json:"state,omitempty"`
	JoinedAt  int64           `json:"joinedAt,omitempty"`  // unix ms (omitted in leave events)
	UpdatedAt int64           `json:"updatedAt,omitempty"` // unix ms (omitted in leave events)
	Typing    bool            `json:"typing,omitempty"`
}

// Room answers join: the members (this connection included), and which
// of them is this connection.
type Room struct {
	Envelope
	RoomRef
	You     string   `json:"you"`
	Members []Member `json:"members"`
}

// Left answers leave.
type Left struct {
	Envelope
	RoomRef
}

// RoomEvent tells members that one member joined, left, changed its state
// or typed. Events about a member reach that member too; it recognises
// them by Member.ID == Room.You.
type RoomEvent struct {
	Envelope
	RoomRef
	Event  string `json:"event"`
	Member Member `json:"member"`
	// ExpiresIn (typing events) is how long, in ms, the indicator shows
	// unless another typing event refreshes it.
	ExpiresIn int64 `json:"expiresIn,omitempty"`
}

func (*AppStateMsg) Kind() string  { return TypeAppState }
func (*Join) Kind() string         { return TypeJoin }
func (*Leave) Kind() string        { return TypeLeave }
func (*RoomStateMsg) Kind() string { return TypeRoomState }
func (*Typing) Kind() string       { return TypeTyping }
func (*Checkpoint) Kind() string   { return TypeCheckpoint }
func (*Room) Kind() string         { return TypeRoom }
func (*Left) Kind() string         { return TypeLeft }
func (*RoomEvent) Kind() string    { return TypeRoomEvent }

// ValidateRoom checks a room reference: a valid scope, and a name of
// 1-MaxRoomBytes bytes of printable UTF-8.
func ValidateRoom(r RoomRef) *Error {
	if perr := ValidateScope(r.Scope); perr != nil {
		return perr
	}
	if r.Room == "" || len(r.Room) > MaxRoomBytes || !utf8.ValidString(r.Room) || hasControl(r.Room) ||
		strings.TrimSpace(r.Room) != r.Room {
		return Errorf(CodeInvalidName, "room %q must be 1-%d bytes of printable UTF-8 without surrounding spaces",
			truncate(r.Room, 64), MaxRoomBytes)
	}
	return nil
}

// UnixMilli converts a time to the protocol's unix ms (0 for the zero time).
func UnixMilli(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}
