package presence

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// AppState is what the app told the gateway about its foreground state.
type AppState string

const (
	// Active: the app is in the foreground (the default at connect).
	Active AppState = "active"
	// Background: the app is backgrounded but its socket is still open.
	Background AppState = "background"
)

// Valid reports whether s is one of the states above.
func (s AppState) Valid() bool { return s == Active || s == Background }

// Device is one online entry: one open connection of one device. A user
// with the app open in two tabs has two entries with the same Device.
type Device struct {
	// Conn is the connection's id, unique across the cluster (random,
	// minted by the gateway). Rooms name their members by it.
	Conn       string    `json:"conn"`
	User       string    `json:"user"`
	Device     string    `json:"device"`
	Session    string    `json:"session"`
	Node       string    `json:"node"`     // the gateway node's name (config node)
	Instance   string    `json:"instance"` // the node process holding it (NodeInstance): its node record
	Platform   string    `json:"platform,omitempty"`
	AppVersion string    `json:"appVersion,omitempty"`
	State      AppState  `json:"state"`
	Connected  time.Time `json:"connectedAt"`
	LastSeen   time.Time `json:"lastSeenAt"`
	// Checkpoints are the seqs the device confirmed per scope while
	// connected (hello, pull, checkpoint messages).
	Checkpoints map[string]uint64 `json:"checkpoints,omitempty"`
	// LastError is the last error message the gateway sent to this
	// connection, a request error or the one before a close (nil: none).
	LastError *LastError `json:"lastError,omitempty"`
}

// LastError is an error message sent to a device.
type LastError struct {
	Code    string    `json:"code"`
	Message string    `json:"message"`
	At      time.Time `json:"at"`
}

// Member is a connection's membership of a room, with its awareness state.
type Member struct {
	Conn   string          `json:"id"`
	User   string          `json:"user"`
	Device string          `json:"device"`
	State  json.RawMessage `json:"state,omitempty"` // the awareness state (cursor, selection, …); nil: none yet
	Joined time.Time       `json:"joinedAt"`
	// Updated is when State last changed (Joined until then).
	Updated time.Time `json:"updatedAt"`
	// TypingUntil is when the member's typing indicator expires (zero:
	// never typed).
	TypingUntil time.Time `json:"typingUntil,omitzero"`
}

// Gone is an entry that left: a clean disconnect or an expiry. Rooms are
// the rooms the connection was a member of; it has left them too.
type Gone struct {
	Device Device
	Rooms  []string
}

// Query selects a page of online entries.
type Query struct {
	// Platform and AppVersion filter on equality ("" matches any).
	Platform   string
	AppVersion string
	// After is the Next of the previous page ("" for the first).
	After string
	// Limit caps the entries returned; it must be positive.
	Limit int
}

// Page is one page of online entries, ordered by (user, conn).
type Page struct {
	Devices []Device
	// Next continues after this page; "" when there is nothing after it.
	// A page holding fewer than Limit entries may still have a Next (with
	// a filter, the tracker examines a bounded number of entries per call).
	Next string
	// Totals over the whole cluster, at the time of the call.
	Users    int // distinct online users
	Conns    int // online entries
	Matching int // online entries matching the filter (Conns without one)
}

// ErrBadCursor is returned by Online for an After that no page returned.
var ErrBadCursor = errors.New("presence: invalid cursor")

// Tracker stores online entries, node records, rooms and typing throttles.
// MemoryTracker (one process) and RedisTracker (a cluster) implement it and
// pass one conformance suite (conformance_test.go).
//
// Expiry: Connect and Refresh set an entry's expiry to now+TTL (the
// tracker's TTL, by its clock). RenewNode does the same for a node
// instance's record. Sweep removes, and returns, every entry whose expiry
// passed and every entry whose node record expired, with their room
// memberships. Nothing expires without a Sweep, but every read (Online,
// User, Devices, Room) already hides what has expired.
//
// Every method is goroutine-safe and honours ctx. None blocks on anything
// but its store.
type Tracker interface {
	// Connect adds an online entry. If d.Conn is there already (an entry
	// expired but not swept, added back), its data and expiry are
	// replaced and its memberships kept.
	Connect(ctx context.Context, d Device) error
	// Refresh rewrites existing entries (data and expiry). Entries that
	// are gone (swept: the node's heartbeat came too late, or Redis lost
	// them) are not recreated: their conns are returned, and the caller
	// Connects them again.
	Refresh(ctx context.Context, ds []Device) (missing []string, err error)
	// RenewNode renews the record of node instance inst.
	RenewNode(ctx context.Context, inst string) error
	// Disconnect removes an entry and its room memberships, keeps the
	// device's last record (Recent), and returns what it removed; ok is
	// false if the entry was already gone.
	Disconnect(ctx context.Context, conn string) (g Gone, ok bool, err error)
	// Sweep removes expired entries (and those of expired node records)
	// as Disconnect does, and returns them.
	Sweep(ctx context.Context) ([]Gone, error)

	// Online returns a page of online entries with totals.
	Online(ctx context.Context, q Query) (Page, error)
	// User returns the user's online entries, ordered by conn.
	User(ctx context.Context, user string) ([]Device, error)
	// Devices returns the online entries of a device id (of any user),
	// ordered by (user, conn).
	Devices(ctx context.Context, device string) ([]Device, error)
	// Recent returns the user's last records by device id: the entry as
	// it was when each device's latest connection ended (LastSeen is the
	// end), kept for the tracker's RecentTTL.
	Recent(ctx context.Context, user string) (map[string]Device, error)

	// Join adds m to room (or replaces its member record). The entry of
	// m.Conn must be online; otherwise Join returns ErrGone.
	Join(ctx context.Context, room string, m Member) error
	// SetMember replaces an existing member's record (state, typing);
	// it returns ErrGone if m.Conn is not a member.
	SetMember(ctx context.Context, room string, m Member) error
	// Leave removes conn from room; ok is false if it was not a member.
	Leave(ctx context.Context, room, conn string) (ok bool, err error)
	// Room returns room's members, ordered by conn.
	Room(ctx context.Context, room string) ([]Member, error)
	// AllowTyping reports whether user may send a typing indicator in
	// room now: true at most once per every, cluster-wide.
	AllowTyping(ctx context.Context, room, user string, every time.Duration) (bool, error)
}

// ErrGone is returned for an entry or member that is no longer online.
var ErrGone = errors.New("presence: connection is not online")

// Defaults shared by both implementations.
const (
	// DefaultTTL is how long an entry lives without a refresh: more than
	// two 25 s heartbeats, so one lost heartbeat never drops a device.
	DefaultTTL = 60 * time.Second
	// DefaultRecentTTL is how long a device's last record is kept after
	// its connection ended.
	DefaultRecentTTL = 7 * 24 * time.Hour
)
