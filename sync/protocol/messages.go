package protocol

import (
	"encoding/json"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/storage"
)

// Version is the protocol version this server speaks.
const Version = 1

// Message types.
const (
	// client -> server
	TypeHello = "hello"
	TypePush  = "push"
	TypePull  = "pull"
	TypeAuth  = "auth"
	TypePing  = "ping"
	// server -> client
	TypeWelcome  = "welcome"
	TypeAck      = "ack"
	TypeChanges  = "changes"
	TypeReset    = "reset"
	TypeAuthOK   = "auth_ok"
	TypeConflict = "conflict"
	TypePong     = "pong"
	TypeError    = "error"
)

// Envelope holds the fields every client message has. Decode reads it first
// to pick the concrete type.
type Envelope struct {
	Type string `json:"type"`
	// Rid is an optional client-chosen request id, echoed on the response.
	Rid uint64 `json:"rid,omitempty"`
}

// Subscription is a scope a device wants, with the seq it already holds.
type Subscription struct {
	Scope string `json:"scope"`
	Since uint64 `json:"since"`
}

// ClientInfo describes the app on the device; it is informational.
type ClientInfo struct {
	Platform   string `json:"platform,omitempty"`
	AppVersion string `json:"appVersion,omitempty"`
}

// Hello opens a session. It must be the first message, within HelloTimeout.
type Hello struct {
	Envelope
	Protocol int            `json:"protocol"`
	Token    string         `json:"token"`
	Device   string         `json:"device"`
	Scopes   []Subscription `json:"scopes,omitempty"`
	Session  string         `json:"session,omitempty"`
	Client   ClientInfo     `json:"client,omitempty"`
}

// ScopeState tells a device where a scope stands.
type ScopeState struct {
	Scope   string `json:"scope"`
	Head    uint64 `json:"head"`
	Horizon uint64 `json:"horizon,omitempty"`
	// Reset is true when the device's checkpoint is behind the horizon: it
	// must drop its replica of the scope and pull from 0.
	Reset bool `json:"reset,omitempty"`
}

// Welcome answers Hello.
type Welcome struct {
	Envelope
	Protocol int    `json:"protocol"`
	Session  string `json:"session"`
	Node     string `json:"node"`
	User     string `json:"user"`
	Device   string `json:"device"`
	// LastMutation is the highest mutation id the server has processed for
	// this device; a device that lost its queue continues above it.
	LastMutation uint64       `json:"lastMutation"`
	Scopes       []ScopeState `json:"scopes"`
	// ExpiresAt is the token expiry (Unix ms); refresh with an auth message before it.
	ExpiresAt int64 `json:"expiresAt,omitempty"`
	// SessionExpiresAt is when the session ends if the device stays away
	// (Unix ms): a reconnect before it may resume Session. The server
	// slides it forward while the device is connected.
	SessionExpiresAt int64 `json:"sessionExpiresAt,omitempty"`
	// Conflicts are the open manual conflicts of the granted scopes.
	Conflicts []Conflict `json:"conflicts,omitempty"`
	// Limits the client must respect.
	MaxMessageBytes int `json:"maxMessageBytes"`
	MaxBatch        int `json:"maxBatch"`
	PullLimit       int `json:"pullLimit"`
}

// Mutation is one change from a device.
type Mutation struct {
	ID         uint64          `json:"mid"` // strictly increasing per device
	Scope      string          `json:"scope"`
	Collection string          `json:"col"`
	DocID      string          `json:"id"`
	Op         conflict.OpKind `json:"op"`
	Base       uint64          `json:"base"` // version the device last saw; 0 if none
	HLC        string          `json:"hlc"`
	Data       map[string]any  `json:"data,omitempty"` // op == put
	conflict.PatchOps
	// Resolves names an open manual conflict of this document that this
	// mutation settles. It applies whatever the document's rule (the person
	// chose this state) and closes the record.
	Resolves string `json:"resolves,omitempty"`
}

// Push carries a batch of mutations, applied in order.
type Push struct {
	Envelope
	Mutations []Mutation `json:"mutations"`
}

// Result is the outcome of one mutation.
type Result struct {
	MutationID uint64          `json:"mid"`
	Outcome    storage.Outcome `json:"outcome"`
	Version    uint64          `json:"version,omitempty"`
	Seq        uint64          `json:"seq,omitempty"`
	State      map[string]any  `json:"state,omitempty"` // resolved state, when it differs from what was sent
	Deleted    bool            `json:"deleted,omitempty"`
	Code       Code            `json:"code,omitempty"` // why it was rejected
	Message    string          `json:"message,omitempty"`
	Replayed   bool            `json:"replayed,omitempty"` // answered from a receipt
	// Conflict is the id of the conflict record an outcome "conflict" opened.
	Conflict string `json:"conflict,omitempty"`
}

// Ack answers Push with one result per mutation, in order.
type Ack struct {
	Envelope
	Results []Result `json:"results"`
}

// Pull asks for entries of a scope after since.
type Pull struct {
	Envelope
	Scope string `json:"scope"`
	Since uint64 `json:"since"`
	Limit int    `json:"limit,omitempty"`
}

// Change is one log entry as sent to devices.
type Change struct {
	Seq        uint64         `json:"seq"`
	Collection string         `json:"col"`
	DocID      string         `json:"id"`
	Version    uint64         `json:"version"`
	Op         storage.Op     `json:"op"`
	State      map[string]any `json:"state,omitempty"`
	Deleted    bool           `json:"deleted,omitempty"`
	User       string         `json:"user"`   // the user whose device made it
	Device     string         `json:"device"` // device id (unique within the user) that made it
	MutationID uint64         `json:"mid"`
	HLC        string         `json:"hlc"`
}

// Changes carries every entry of a scope with From < seq <= To that still
// exists (compaction leaves holes in seqs; the range is what is contiguous).
// A device holding checkpoint c applies it only if From <= c; if From > c
// it has missed something and pulls from c.
type Changes struct {
	Envelope
	Scope   string   `json:"scope"`
	From    uint64   `json:"from"`
	To      uint64   `json:"to"`
	Entries []Change `json:"entries"`
	More    bool     `json:"more,omitempty"` // more entries exist after To: pull again
	Head    uint64   `json:"head,omitempty"` // scope head when this page was read
}

// Reset tells a device to drop its replica of a scope and pull it again from
// 0. Its pending mutations are kept and re-sent.
type Reset struct {
	Envelope
	Scope   string `json:"scope"`
	Reason  string `json:"reason"`
	Horizon uint64 `json:"horizon"`
	Head    uint64 `json:"head"`
}

// Conflict is a manual conflict record as devices see it: the mutation the
// `manual` rule did not apply (Mine), against the document as it stood
// (Theirs), and the state both started from (BaseState, when the log still
// had it). A mutation with Resolves = ID closes it.
type Conflict struct {
	ID            string          `json:"id"`
	Scope         string          `json:"scope"`
	Collection    string          `json:"col"`
	DocID         string          `json:"docId"`
	Base          uint64          `json:"base"`
	BaseState     map[string]any  `json:"baseState,omitempty"`
	Mine          json.RawMessage `json:"mine"`
	Theirs        map[string]any  `json:"theirs,omitempty"`
	TheirsVersion uint64          `json:"theirsVersion"`
	TheirsDeleted bool            `json:"theirsDeleted,omitempty"`
	User          string          `json:"user"`
	Device        string          `json:"device"`
	MutationID    uint64          `json:"mid"`
	Status        string          `json:"status"`  // open, resolved, abandoned
	Created       int64           `json:"created"` // Unix ms
	Closed        int64           `json:"closed,omitempty"`
}

// ConflictMsg announces a conflict record to every device of its scope:
// when it opens, and again when it is resolved or abandoned.
type ConflictMsg struct {
	Envelope
	Conflict Conflict `json:"conflict"`
}

// Auth refreshes the token on an open connection.
type Auth struct {
	Envelope
	Token string `json:"token"`
}

// AuthOK answers Auth.
type AuthOK struct {
	Envelope
	ExpiresAt int64 `json:"expiresAt,omitempty"` // Unix ms
}

// Ping asks for a Pong; clients use it to measure latency.
type Ping struct{ Envelope }

// Pong answers Ping.
type Pong struct{ Envelope }

// ErrorMsg reports a failed request, or a fatal problem right before a close.
type ErrorMsg struct {
	Envelope
	Code      Code   `json:"code"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable,omitempty"`
}

// Message is any protocol message. Kind returns its type field value.
type Message interface {
	Kind() string
	envelope() *Envelope
}

func (e *Envelope) envelope() *Envelope { return e }

// RidOf returns a message's request id (0: none).
func RidOf(m Message) uint64 { return m.envelope().Rid }

func (*Hello) Kind() string       { return TypeHello }
func (*Push) Kind() string        { return TypePush }
func (*Pull) Kind() string        { return TypePull }
func (*Auth) Kind() string        { return TypeAuth }
func (*Ping) Kind() string        { return TypePing }
func (*Welcome) Kind() string     { return TypeWelcome }
func (*Ack) Kind() string         { return TypeAck }
func (*Changes) Kind() string     { return TypeChanges }
func (*Reset) Kind() string       { return TypeReset }
func (*AuthOK) Kind() string      { return TypeAuthOK }
func (*Pong) Kind() string        { return TypePong }
func (*ErrorMsg) Kind() string    { return TypeError }
func (*ConflictMsg) Kind() string { return TypeConflict }

// Marshal sets the message's type field and encodes it as JSON.
func Marshal(m Message) ([]byte, error) {
	m.envelope().Type = m.Kind()
	return json.Marshal(m)
}
