package gateway

import (
	"errors"
	"fmt"
	"os"
	"time"
)

// Config tunes the gateway. The zero value of every field means its default,
// given in the field's comment. cmd/syncgate maps the global configuration
// onto this struct; the gateway never reads files or the environment.
type Config struct {
	// Node names this process in welcome messages and logs.
	// Default: the host name, or "node" if it cannot be read.
	Node string

	// MaxMessageBytes caps one inbound WebSocket message and one HTTP
	// fallback body. A larger WebSocket message closes the connection with
	// 1009; a larger HTTP body is answered 413. Outbound frames that
	// coalesce several messages stay within it too (a single larger
	// message is still sent alone). Default 1 MiB.
	MaxMessageBytes int

	// OutboundQueueBytes bounds the bytes queued for one connection and not
	// yet written to its socket. A message that would overflow it closes
	// the connection with 4008 (slow consumer). Default 4 MiB.
	OutboundQueueBytes int

	// HelloTimeout is how long a new connection has to send hello.
	// Default 10s.
	HelloTimeout time.Duration

	// PingInterval is the period of server WebSocket ping frames.
	// Default 25s.
	PingInterval time.Duration

	// PongTimeout is the read deadline of an open session: it is extended by
	// every frame (data, ping or pong) the client sends, and a connection
	// silent for longer is closed with 4004. It must exceed PingInterval.
	// Default 60s.
	PongTimeout time.Duration

	// WriteTimeout bounds each socket write (a frame, a ping, a close).
	// Default 10s.
	WriteTimeout time.Duration

	// ShutdownTimeout is the drain deadline the cmd should give Shutdown's
	// context; Shutdown itself obeys its ctx. Default 30s.
	ShutdownTimeout time.Duration

	// MaxMessagesPerFrame is how many queued messages the write loop
	// coalesces into one WebSocket frame (newline-delimited JSON).
	// 1 disables coalescing. Default 64.
	MaxMessagesPerFrame int

	// SessionTTL is how long a device session lives after its device was
	// last seen (connected, refreshed or disconnected): a reconnect within
	// it resumes the session. Default 2h.
	SessionTTL time.Duration

	// SessionRememberTTL replaces SessionTTL for a token with the
	// remember claim. Default 24h.
	SessionRememberTTL time.Duration

	// MaxSessionsPerUser caps a user's live sessions: beginning one more
	// revokes the oldest and disconnects its device (close 4011).
	// Default 10.
	MaxSessionsPerUser int

	// SessionRefresh is the period at which a connected device's session
	// is refreshed in the store (its expiry slid forward, and a revocation
	// the node missed noticed), capped at a quarter of the session's TTL.
	// Default 5m.
	SessionRefresh time.Duration

	// PresenceHeartbeat is how often the node refreshes the presence
	// entries of its connections and its node record. It must be below
	// PresenceTTL, the entries' lifetime, which is the tracker's.
	// Default 25s.
	PresenceHeartbeat time.Duration

	// PresenceTTL is how long an entry outlives its last heartbeat: a
	// node that dies without cleanup has its devices shown offline, and
	// its room members leave, within it. Give the tracker the same value.
	// Default 60s.
	PresenceTTL time.Duration

	// PresenceSweep is how often the node sweeps expired entries (every
	// node sweeps; removal is atomic, so each ghost is announced once).
	// Default 5s.
	PresenceSweep time.Duration

	// AwarenessMaxBytes caps one awareness state (room_state, join) as
	// JSON; a larger one is refused with too_large. Default 1024.
	AwarenessMaxBytes int

	// AwarenessInterval is the minimum gap between two awareness updates
	// one connection sends into one room (10/s by default): faster updates
	// are coalesced, and the latest one is sent when the gap has passed.
	// Default 100ms.
	AwarenessInterval time.Duration

	// TypingInterval: a user's typing indicator goes out at most once per
	// interval per room, across the cluster; others are dropped.
	// Default 1s.
	TypingInterval time.Duration

	// TypingTTL is how long a typing indicator shows (sent as expiresIn).
	// Default 3s.
	TypingTTL time.Duration

	// MaxRoomsPerConn caps the rooms one connection may be in.
	// Default 32.
	MaxRoomsPerConn int
}

// Defaults, named so tests and docs can refer to them.
const (
	DefaultMaxMessageBytes     = 1 << 20
	DefaultOutboundQueueBytes  = 4 << 20
	DefaultHelloTimeout        = 10 * time.Second
	DefaultPingInterval        = 25 * time.Second
	DefaultPongTimeout         = 60 * time.Second
	DefaultWriteTimeout        = 10 * time.Second
	DefaultShutdownTimeout     = 30 * time.Second
	DefaultMaxMessagesPerFrame = 64
	DefaultSessionTTL          = 2 * time.Hour
	DefaultSessionRememberTTL  = 24 * time.Hour
	DefaultMaxSessionsPerUser  = 10
	DefaultSessionRefresh      = 5 * time.Minute
	DefaultPresenceHeartbeat   = 25 * time.Second
	DefaultPresenceTTL         = 60 * time.Second
	DefaultPresenceSweep       = 5 * time.Second
	DefaultAwarenessMaxBytes   = 1024
	DefaultAwarenessInterval   = 100 * time.Millisecond
	DefaultTypingInterval      = time.Second
	DefaultTypingTTL           = 3 * time.Second
	DefaultMaxRoomsPerConn     = 32
)

// withDefaults fills zero fields and validates the rest.
func (c Config) withDefaults() (Config, error) {
	if c.Node == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			c.Node = h
		} else {
			c.Node = "node"
		}
	}
	setInt := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	setDur := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	setInt(&c.MaxMessageBytes, DefaultMaxMessageBytes)
	setInt(&c.OutboundQueueBytes, DefaultOutboundQueueBytes)
	setInt(&c.MaxMessagesPerFrame, DefaultMaxMessagesPerFrame)
	setDur(&c.HelloTimeout, DefaultHelloTimeout)
	setDur(&c.PingInterval, DefaultPingInterval)
	setDur(&c.PongTimeout, DefaultPongTimeout)
	setDur(&c.WriteTimeout, DefaultWriteTimeout)
	setDur(&c.ShutdownTimeout, DefaultShutdownTimeout)
	setInt(&c.MaxSessionsPerUser, DefaultMaxSessionsPerUser)
	setDur(&c.SessionTTL, DefaultSessionTTL)
	setDur(&c.SessionRememberTTL, DefaultSessionRememberTTL)
	setDur(&c.SessionRefresh, DefaultSessionRefresh)
	setDur(&c.PresenceHeartbeat, DefaultPresenceHeartbeat)
	setDur(&c.PresenceTTL, DefaultPresenceTTL)
	setDur(&c.PresenceSweep, DefaultPresenceSweep)
	setInt(&c.AwarenessMaxBytes, DefaultAwarenessMaxBytes)
	setDur(&c.AwarenessInterval, DefaultAwarenessInterval)
	setDur(&c.TypingInterval, DefaultTypingInterval)
	setDur(&c.TypingTTL, DefaultTypingTTL)
	setInt(&c.MaxRoomsPerConn, DefaultMaxRoomsPerConn)

	var errs []error
	for _, f := range []struct {
		name string
		v    int
	}{
		{"MaxMessageBytes", c.MaxMessageBytes},
		{"OutboundQueueBytes", c.OutboundQueueBytes},
		{"MaxMessagesPerFrame", c.MaxMessagesPerFrame},
		{"MaxSessionsPerUser", c.MaxSessionsPerUser},
		{"AwarenessMaxBytes", c.AwarenessMaxBytes},
		{"MaxRoomsPerConn", c.MaxRoomsPerConn},
	} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("gateway: %s must be positive, got %d", f.name, f.v))
		}
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{
		{"HelloTimeout", c.HelloTimeout},
		{"PingInterval", c.PingInterval},
		{"PongTimeout", c.PongTimeout},
		{"WriteTimeout", c.WriteTimeout},
		{"ShutdownTimeout", c.ShutdownTimeout},
		{"SessionTTL", c.SessionTTL},
		{"SessionRememberTTL", c.SessionRememberTTL},
		{"SessionRefresh", c.SessionRefresh},
		{"PresenceHeartbeat", c.PresenceHeartbeat},
		{"PresenceTTL", c.PresenceTTL},
		{"PresenceSweep", c.PresenceSweep},
		{"AwarenessInterval", c.AwarenessInterval},
		{"TypingInterval", c.TypingInterval},
		{"TypingTTL", c.TypingTTL},
	} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("gateway: %s must be positive, got %s", f.name, f.v))
		}
	}
	if c.PongTimeout <= c.PingInterval {
		errs = append(errs, fmt.Errorf("gateway: PongTimeout (%s) must exceed PingInterval (%s)", c.PongTimeout, c.PingInterval))
	}
	if c.PresenceTTL <= c.PresenceHeartbeat {
		errs = append(errs, fmt.Errorf("gateway: PresenceTTL (%s) must exceed PresenceHeartbeat (%s)", c.PresenceTTL, c.PresenceHeartbeat))
	}
	return c, errors.Join(errs...)
}
