package config

import (
	"github.com/syncgate/syncgate/conflict"

	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Size units for byte limits. Sizes are plain integers (bytes) in YAML, in
// the environment and in flags; these constants only make the code readable.
const (
	KiB = 1 << 10
	MiB = 1 << 20
	GiB = 1 << 30
)

// DefaultSecretFileName is the name of the auto-generated HS256 secret inside
// the data directory, used when auth.secret, auth.secret_file and auth.keys
// are all empty.
const DefaultSecretFileName = "jwt.secret"

// Config is the whole configuration of the syncgate binary. Every field's
// comment states its default, which Default sets; nowhere else does.
//
// The yaml tag of a field is its name everywhere: the environment variable is
// SYNCGATE_ plus the yaml path upper-cased with '_' between the parts
// (limits.max_batch → SYNCGATE_LIMITS_MAX_BATCH), and the few flags are the
// yaml path with '-' instead of '.' and '_' (auth.secret → --auth-secret).
type Config struct {
	// Listen is the HTTP/WebSocket address. Default "127.0.0.1:8080".
	Listen string `yaml:"listen"`
	// DataDir holds the embedded (bbolt) database and the generated JWT
	// secret. Default "./data".
	DataDir string `yaml:"data_dir"`
	// Node names this process in HLC timestamps, presence and logs; it must
	// be unique within a cluster. Default: the host name (reduced to
	// [A-Za-z0-9._-]), or "node" if it is unknown.
	Node string `yaml:"node"`
	// LogLevel is debug, info, warn or error. Default "info".
	LogLevel string `yaml:"log_level"`
	// LogFormat is text or json. Default "text".
	LogFormat string `yaml:"log_format"`

	Auth    Auth    `yaml:"auth"`
	Mongo   Mongo   `yaml:"mongo"`
	Redis   Redis   `yaml:"redis"`
	Limits  Limits  `yaml:"limits"`
	Timing  Timing  `yaml:"timing"`
	History History `yaml:"history"`
	// Sessions configures device sessions (see docs/operations.md).
	Sessions Sessions `yaml:"sessions"`
	// Media configures the media API (/v1/media; see docs/operations.md).
	Media Media `yaml:"media"`
	// Presence configures online entries, rooms and their limits (see
	// docs/operations.md and docs/support-api.md).
	Presence Presence `yaml:"presence"`
	// Collections sets the conflict rule of each collection, with per-field
	// overrides; "*" is the default for every other collection. Empty (the
	// default) means last-writer-wins per field for every collection. When
	// it is set without "*", other collections are refused with
	// unknown_collection. File only. See docs/conflicts.md and
	// examples/collections.yaml.
	Collections map[string]conflict.CollectionConfig `yaml:"collections"`
}

// Auth configures how client JWTs are verified.
//
// Either Keys is set (production: one or more keys picked by the token's
// kid), or a single HS256 secret is used: Secret if set, else the file
// SecretFile, else <DataDir>/jwt.secret, created with a random secret on first
// start. Keys excludes Secret and SecretFile.
type Auth struct {
	// Secret is an HS256 secret (at least 32 bytes). Default "" (use the
	// secret file). Prefer SYNCGATE_AUTH_SECRET or secret_file over a flag.
	Secret string `yaml:"secret"`
	// SecretFile holds the HS256 secret (the trimmed file content is the
	// secret). Default "" meaning <data_dir>/jwt.secret.
	SecretFile string `yaml:"secret_file"`
	// Keys are the verification keys, chosen by the token's kid header.
	// Default none. File-only: not settable from the environment.
	Keys []Key `yaml:"keys"`
	// Issuer is the required iss claim; "" disables the check. Default
	// "syncgate".
	Issuer string `yaml:"issuer"`
	// Audience must appear in the aud claim; "" disables the check. Default
	// "syncgate".
	Audience string `yaml:"audience"`
	// Leeway is the clock skew tolerated on exp and nbf (0 to 5m). Default
	// 30s.
	Leeway time.Duration `yaml:"leeway"`
}

// Key is one JWT verification key.
type Key struct {
	// ID is the kid header value that selects this key. It may be empty only
	// when it is the only key. No default.
	ID string `yaml:"id"`
	// Alg is HS256, RS256 or ES256; a token must use exactly this algorithm.
	// No default.
	Alg string `yaml:"alg"`
	// PEMFile is the PEM public key (or certificate) for RS256 and ES256.
	// Relative paths are relative to the working directory. No default.
	PEMFile string `yaml:"pem_file"`
	// Secret is the HS256 secret (at least 32 bytes). No default.
	Secret string `yaml:"secret"`
}

// Mongo selects MongoDB storage.
type Mongo struct {
	// URI (mongodb:// or mongodb+srv://) switches storage from the embedded
	// bbolt database to MongoDB. Default "" (embedded).
	URI string `yaml:"uri"`
	// Database is the MongoDB database name. Default "": the database in
	// the URI's path (mongodb://host/app → app), else "syncgate".
	Database string `yaml:"database"`
	// WriteConcern of every write: "majority", so an acknowledged commit
	// survives a primary failover, or a number of members (1 acknowledges
	// after the primary alone: faster, and a failover can lose the last
	// writes). Default "majority".
	WriteConcern string `yaml:"write_concern"`
}

// Redis selects Redis fan-out and presence.
type Redis struct {
	// Addr (host:port) switches fan-out and presence from in-process to
	// Redis. Default "" (in-process).
	Addr string `yaml:"addr"`
	// Password for Redis AUTH. Default "".
	Password string `yaml:"password"`
	// DB is the Redis database number for keys (pub/sub ignores it).
	// Default 0.
	DB int `yaml:"db"`
	// Prefix starts every Redis key and channel, so several clusters can
	// share one Redis. Default "syncgate".
	Prefix string `yaml:"prefix"`
}

// Limits bound what clients may send and what the server buffers.
// All sizes are in bytes.
type Limits struct {
	// MaxMessageBytes caps one WebSocket message (1KiB to 64MiB). Default
	// 1048576 (1 MiB).
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// OutboundQueueBytes caps the unsent bytes queued for one connection; a
	// connection over it is closed as a slow consumer (at least
	// max_message_bytes, at most 1GiB). Default 4194304 (4 MiB).
	OutboundQueueBytes int `yaml:"outbound_queue_bytes"`
	// MaxBatch is the most mutations one push may carry (1 to 100000).
	// Default 1000.
	MaxBatch int `yaml:"max_batch"`
	// PullLimit is the page size of a pull that names none (1 to
	// max_pull_limit). Default 500.
	PullLimit int `yaml:"pull_limit"`
	// MaxPullLimit caps the page size a client may ask for (1 to 100000).
	// Default 5000.
	MaxPullLimit int `yaml:"max_pull_limit"`
	// MaxDocBytes caps the JSON size of one document (1KiB to 15MiB, and at
	// most max_message_bytes). Default 262144 (256 KiB).
	MaxDocBytes int `yaml:"max_doc_bytes"`
	// MaxDepth caps the nesting depth of a document (1 to 96: MongoDB
	// allows 100 levels and the log entry adds a few). Default 32.
	MaxDepth int `yaml:"max_depth"`
	// MaxIDBytes caps the length of a document id (1 to 512). Default 256.
	MaxIDBytes int `yaml:"max_id_bytes"`
	// MaxPullBytes cuts a pull page once its documents add up to this many
	// bytes of JSON (a page always holds one entry). Default 1 MiB.
	MaxPullBytes int `yaml:"max_pull_bytes"`
}

// Timing holds the connection timers.
type Timing struct {
	// HelloTimeout is how long a new connection may take to send hello.
	// Default 10s.
	HelloTimeout time.Duration `yaml:"hello_timeout"`
	// PingInterval is how often the server pings an idle connection; it must
	// be below pong_timeout. Default 25s.
	PingInterval time.Duration `yaml:"ping_interval"`
	// PongTimeout closes a connection that sent nothing for this long.
	// Default 60s.
	PongTimeout time.Duration `yaml:"pong_timeout"`
	// WriteTimeout bounds one WebSocket write. Default 10s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// ShutdownTimeout is the drain deadline: how long a stopping node waits
	// for connections to close before it drops them. Default 30s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// MaxClockSkew: a mutation whose HLC is further ahead of the server
	// clock than this is re-stamped with the server clock. Default 1m.
	MaxClockSkew time.Duration `yaml:"max_clock_skew"`
}

// History controls how long the scope log and receipts are kept.
type History struct {
	// Retention is how long superseded log entries and tombstones are kept
	// before compaction removes them. Default 720h (30 days).
	Retention time.Duration `yaml:"retention"`
	// CompactEvery is the interval between compaction passes. Default 1h.
	CompactEvery time.Duration `yaml:"compact_every"`
	// ReceiptTTL is how long mutation receipts are kept (at least 24h).
	// Default 24h.
	ReceiptTTL time.Duration `yaml:"receipt_ttl"`
	// ConflictAbandonAfter: an open manual conflict older than this is
	// marked abandoned. Default 720h (30 days).
	ConflictAbandonAfter time.Duration `yaml:"conflict_abandon_after"`
	// ConflictRetention: resolved and abandoned conflict records are
	// deleted this long after they closed. Default 168h (7 days).
	ConflictRetention time.Duration `yaml:"conflict_retention"`
}

// Sessions configures device sessions: each connection begins or resumes
// one, and a user has at most max_per_user live ones.
type Sessions struct {
	// TTL is how long a device session lives after its device was last
	// seen (it is refreshed while the device is connected); a reconnect
	// within it resumes the session (1m to 8760h). Default 2h.
	TTL time.Duration `yaml:"ttl"`
	// RememberTTL replaces ttl for a token with the remember claim (ttl
	// to 8760h). Default 24h.
	RememberTTL time.Duration `yaml:"remember_ttl"`
	// MaxPerUser caps a user's live sessions: beginning one more revokes
	// the oldest and disconnects its device (1 to 1000). Default 10.
	MaxPerUser int `yaml:"max_per_user"`
	// SweepEvery is how often expired sessions are deleted by the
	// embedded store, and by the MongoDB store on a server without TTL
	// indexes (1s to 24h). Reads ignore expired sessions anyway. Default 1m.
	SweepEvery time.Duration `yaml:"sweep_every"`
}

// Presence configures presence: every connection is an online entry,
// refreshed every heartbeat and gone ttl after the last one; rooms carry
// awareness states and typing indicators.
type Presence struct {
	// Heartbeat is how often a node refreshes its entries and its node
	// record (1s to 5m, below ttl). Default 25s.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// TTL is how long an entry outlives its last heartbeat: the devices of
	// a node that died show offline, and leave their rooms, within it
	// (more than heartbeat, at most 1h). Default 60s.
	TTL time.Duration `yaml:"ttl"`
	// SweepEvery is how often each node removes expired entries and
	// announces them (100ms to ttl). Default 5s.
	SweepEvery time.Duration `yaml:"sweep_every"`
	// AwarenessMaxBytes caps one awareness state as JSON (16 to 65536).
	// Default 1024.
	AwarenessMaxBytes int `yaml:"awareness_max_bytes"`
	// AwarenessInterval is the least gap between two awareness updates of
	// one connection in one room; faster ones are coalesced (1ms to 10s).
	// Default 100ms (10/s).
	AwarenessInterval time.Duration `yaml:"awareness_interval"`
	// TypingInterval: at most one typing indicator per user per room per
	// interval, cluster-wide (10ms to 1m). Default 1s.
	TypingInterval time.Duration `yaml:"typing_interval"`
	// TypingTTL is how long a typing indicator shows (10ms to 1m).
	// Default 3s.
	TypingTTL time.Duration `yaml:"typing_ttl"`
	// MaxRooms caps the rooms one connection may be in (1 to 1000).
	// Default 32.
	MaxRooms int `yaml:"max_rooms"`
}

// Media configures the media API and its storage: files under
// <data_dir>/media with the embedded store, a GridFS bucket with MongoDB.
type Media struct {
	// MaxBytes caps one media: a streamed upload, or the size a resumable
	// upload announces (1KiB to 1TiB). Default 104857600 (100 MiB).
	MaxBytes int64 `yaml:"max_bytes"`
	// AllowedTypes are the MIME types an upload may have: type/subtype,
	// type/* or */*, matched case-insensitively (at least one; in the
	// environment, comma-separated). Default image/*, video/*, audio/*,
	// application/pdf, application/octet-stream.
	AllowedTypes []string `yaml:"allowed_types"`
	// PartBytes is the size of every part of a resumable upload but the
	// last (64KiB to 15MiB: with MongoDB a part is one document). Default
	// 5242880 (5 MiB).
	PartBytes int `yaml:"part_bytes"`
	// UploadTTL is how long a resumable upload may take from its creation;
	// then it and its parts are invisible, and deleted by the next sweep
	// (1m to 720h). Default 24h.
	UploadTTL time.Duration `yaml:"upload_ttl"`
}

// Default returns the configuration used when nothing is set. It is the only
// place defaults are written down.
func Default() Config {
	return Config{
		Listen:    "127.0.0.1:8080",
		DataDir:   "./data",
		Node:      defaultNode(),
		LogLevel:  "info",
		LogFormat: "text",
		Auth: Auth{
			Issuer:   "syncgate",
			Audience: "syncgate",
			Leeway:   30 * time.Second,
		},
		Mongo: Mongo{WriteConcern: "majority"},
		Redis: Redis{Prefix: "syncgate"},
		Limits: Limits{
			MaxMessageBytes:    1 * MiB,
			OutboundQueueBytes: 4 * MiB,
			MaxBatch:           1000,
			PullLimit:          500,
			MaxPullLimit:       5000,
			MaxDocBytes:        256 * KiB,
			MaxDepth:           32,
			MaxIDBytes:         256,
			MaxPullBytes:       1 << 20,
		},
		Timing: Timing{
			HelloTimeout:    10 * time.Second,
			PingInterval:    25 * time.Second,
			PongTimeout:     60 * time.Second,
			WriteTimeout:    10 * time.Second,
			ShutdownTimeout: 30 * time.Second,
			MaxClockSkew:    time.Minute,
		},
		History: History{
			Retention:            720 * time.Hour,
			CompactEvery:         time.Hour,
			ReceiptTTL:           24 * time.Hour,
			ConflictAbandonAfter: 720 * time.Hour,
			ConflictRetention:    168 * time.Hour,
		},
		Sessions: Sessions{
			TTL:         2 * time.Hour,
			RememberTTL: 24 * time.Hour,
			MaxPerUser:  10,
			SweepEvery:  time.Minute,
		},
		Presence: Presence{
			Heartbeat:         25 * time.Second,
			TTL:               60 * time.Second,
			SweepEvery:        5 * time.Second,
			AwarenessMaxBytes: 1024,
			AwarenessInterval: 100 * time.Millisecond,
			TypingInterval:    time.Second,
			TypingTTL:         3 * time.Second,
			MaxRooms:          32,
		},
		Media: Media{
			MaxBytes:     100 * MiB,
			AllowedTypes: []string{"image/*", "video/*", "audio/*", "application/pdf", "application/octet-stream"},
			PartBytes:    5 * MiB,
			UploadTTL:    24 * time.Hour,
		},
		Collections: map[string]conflict.CollectionConfig{},
	}
}

// defaultNode is the host name reduced to the characters a node name may
// hold, or "node".
func defaultNode() string {
	h, err := os.Hostname()
	if err != nil {
		return "node"
	}
	h = strings.Map(func(r rune) rune {
		if nodeRune(r) {
			return r
		}
		return '-'
	}, h)
	if len(h) > maxNodeBytes {
		h = h[:maxNodeBytes]
	}
	if h == "" {
		return "node"
	}
	return h
}

// SecretPath is the file holding the HS256 secret when neither auth.secret
// nor auth.keys is set: auth.secret_file, or <data_dir>/jwt.secret.
func (c Config) SecretPath() string {
	if c.Auth.SecretFile != "" {
		return c.Auth.SecretFile
	}
	return filepath.Join(c.DataDir, DefaultSecretFileName)
}

// Logger builds the process logger writing to w, with the level and format
// of c. An invalid level (which Validate rejects) falls back to info.
func (c Config) Logger(w io.Writer) *slog.Logger {
	level, ok := parseLevel(c.LogLevel)
	if !ok {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// parseLevel maps the log_level names to slog levels.
func parseLevel(s string) (slog.Level, bool) {
	switch s {
	case "debug":
		return slog.LevelDebug, true
	case "info":
		return slog.LevelInfo, true
	case "warn":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	}
	return 0, false
}
