package config

import (
	"errors"
	"fmt"
	"mime"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

const (
	maxNodeBytes   = 128 // an HLC node id may be at most 128 bytes
	minSecretBytes = 32  // RFC 7518 §3.2: an HS256 key must be at least 256 bits
	maxLeeway      = 5 * time.Minute
	minReceiptTTL  = 24 * time.Hour
)

// Validate checks every setting and returns all problems at once (joined),
// each naming the yaml key and the bad value. Secrets are never echoed,
// only their length; the MongoDB URI (which may hold a password) neither.
// It reads the file system only to check that auth.keys[].pem_file exists.
func (c Config) Validate() error {
	var p problems

	p.hostPort("listen", c.Listen, false)
	if c.DataDir == "" {
		p.add("data_dir must not be empty")
	}
	if !validNode(c.Node) {
		p.add("node must be 1 to %d bytes of A-Z a-z 0-9 . _ -, got %q", maxNodeBytes, c.Node)
	}
	if _, ok := parseLevel(c.LogLevel); !ok {
		p.add("log_level must be debug, info, warn or error, got %q", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		p.add("log_format must be text or json, got %q", c.LogFormat)
	}

	c.Auth.validate(&p)
	c.Mongo.validate(&p)
	c.Redis.validate(&p)
	c.Limits.validate(&p)
	c.Timing.validate(&p)
	c.History.validate(&p)
	c.Sessions.validate(&p)
	c.Media.validate(&p)
	c.Presence.validate(&p)
	return errors.Join(p...)
}

func (a Auth) validate(p *problems) {
	if a.Secret != "" && len(a.Secret) < minSecretBytes {
		p.add("auth.secret must be at least %d bytes, got %d bytes", minSecretBytes, len(a.Secret))
	}
	if len(a.Keys) > 0 && a.Secret != "" {
		p.add("auth.secret and auth.keys are mutually exclusive: put the HS256 secret in a key")
	}
	if len(a.Keys) > 0 && a.SecretFile != "" {
		p.add("auth.secret_file and auth.keys are mutually exclusive, got auth.secret_file %q", a.SecretFile)
	}
	if a.Leeway < 0 || a.Leeway > maxLeeway {
		p.add("auth.leeway must be between 0s and %s, got %s", maxLeeway, a.Leeway)
	}
	ids := map[string]int{}
	for i, k := range a.Keys {
		key := fmt.Sprintf("auth.keys[%d]", i)
		if k.ID == "" && len(a.Keys) > 1 {
			p.add("%s.id must be set when there are several keys", key)
		}
		if j, dup := ids[k.ID]; dup {
			p.add("%s.id %q is already used by auth.keys[%d]", key, k.ID, j)
		} else {
			ids[k.ID] = i
		}
		switch k.Alg {
		case "HS256":
			if len(k.Secret) < minSecretBytes {
				p.add("%s.secret must be at least %d bytes for HS256, got %d bytes", key, minSecretBytes, len(k.Secret))
			}
			if k.PEMFile != "" {
				p.add("%s.pem_file is only for RS256 and ES256, got %q with alg HS256", key, k.PEMFile)
			}
		case "RS256", "ES256":
			if k.Secret != "" {
				p.add("%s.secret is only for HS256, alg is %s", key, k.Alg)
			}
			if k.PEMFile == "" {
				p.add("%s.pem_file must name the PEM public key for %s", key, k.Alg)
			} else if fi, err := os.Stat(k.PEMFile); err != nil {
				p.add("%s.pem_file: %w", key, err)
			} else if !fi.Mode().IsRegular() {
				p.add("%s.pem_file %q is not a regular file", key, k.PEMFile)
			}
		default:
			p.add("%s.alg must be HS256, RS256 or ES256, got %q", key, k.Alg)
		}
	}
}

func (m Mongo) validate(p *problems) {
	if m.URI != "" && !strings.HasPrefix(m.URI, "mongodb://") && !strings.HasPrefix(m.URI, "mongodb+srv://") {
		scheme, _, ok := strings.Cut(m.URI, "://")
		if !ok {
			scheme = "none"
		}
		p.add("mongo.uri must start with mongodb:// or mongodb+srv://, got scheme %q", scheme)
	}
	if m.Database != "" && (len(m.Database) > 63 || strings.ContainsAny(m.Database, "/\\. \"$*<>:|?\x00")) {
		p.add("mongo.database must be empty (the URI's database) or 1 to 63 bytes without /\\. \"$*<>:|? characters, got %q", m.Database)
	}
	if m.WriteConcern != "majority" {
		if n, err := strconv.Atoi(m.WriteConcern); err != nil || n < 1 || n > 50 {
			p.add("mongo.write_concern must be majority or a member count from 1 to 50, got %q", m.WriteConcern)
		}
	}
}

func (r Redis) validate(p *problems) {
	if r.Addr != "" {
		p.hostPort("redis.addr", r.Addr, true)
	}
	if r.DB < 0 {
		p.add("redis.db must be at least 0, got %d", r.DB)
	}
	if r.Prefix == "" || len(r.Prefix) > 64 || strings.ContainsFunc(r.Prefix, func(r rune) bool {
		return !nodeRune(r) && r != ':'
	}) {
		p.add("redis.prefix must be 1 to 64 bytes of A-Z a-z 0-9 . _ - :, got %q", r.Prefix)
	}
}

func (l Limits) validate(p *problems) {
	p.bytes("limits.max_message_bytes", l.MaxMessageBytes, 1*KiB, 64*MiB)
	p.bytes("limits.outbound_queue_bytes", l.OutboundQueueBytes, 1*KiB, 1*GiB)
	if l.OutboundQueueBytes < l.MaxMessageBytes {
		p.add("limits.outbound_queue_bytes must be at least limits.max_message_bytes (%d), got %d", l.MaxMessageBytes, l.OutboundQueueBytes)
	}
	p.count("limits.max_batch", l.MaxBatch, 1, 100000)
	p.count("limits.max_pull_limit", l.MaxPullLimit, 1, 100000)
	p.count("limits.pull_limit", l.PullLimit, 1, 100000)
	if l.PullLimit > l.MaxPullLimit {
		p.add("limits.pull_limit must be at most limits.max_pull_limit (%d), got %d", l.MaxPullLimit, l.PullLimit)
	}
	p.bytes("limits.max_doc_bytes", l.MaxDocBytes, 1*KiB, 15*MiB)
	if l.MaxDocBytes > l.MaxMessageBytes {
		p.add("limits.max_doc_bytes must be at most limits.max_message_bytes (%d), got %d", l.MaxMessageBytes, l.MaxDocBytes)
	}
	p.count("limits.max_depth", l.MaxDepth, 1, 96)
	p.count("limits.max_id_bytes", l.MaxIDBytes, 1, 512)
	p.count("limits.max_pull_bytes", l.MaxPullBytes, 1<<10, 256<<20)
}

func (t Timing) validate(p *problems) {
	p.positive("timing.hello_timeout", t.HelloTimeout)
	p.positive("timing.ping_interval", t.PingInterval)
	p.positive("timing.pong_timeout", t.PongTimeout)
	p.positive("timing.write_timeout", t.WriteTimeout)
	p.positive("timing.shutdown_timeout", t.ShutdownTimeout)
	p.positive("timing.max_clock_skew", t.MaxClockSkew)
	if t.PingInterval > 0 && t.PingInterval >= t.PongTimeout {
		p.add("timing.ping_interval must be less than timing.pong_timeout (%s), got %s", t.PongTimeout, t.PingInterval)
	}
}

func (h History) validate(p *problems) {
	p.positive("history.retention", h.Retention)
	p.positive("history.compact_every", h.CompactEvery)
	p.positive("history.conflict_abandon_after", h.ConflictAbandonAfter)
	p.positive("history.conflict_retention", h.ConflictRetention)
	if h.ReceiptTTL < minReceiptTTL {
		p.add("history.receipt_ttl must be at least %s, got %s", minReceiptTTL, h.ReceiptTTL)
	}
}

func (s Sessions) validate(p *problems) {
	const maxTTL = 8760 * time.Hour // a year
	if s.TTL < time.Minute || s.TTL > maxTTL {
		p.add("sessions.ttl must be between 1m and %s, got %s", maxTTL, s.TTL)
	}
	if s.RememberTTL < s.TTL || s.RememberTTL > maxTTL {
		p.add("sessions.remember_ttl must be between sessions.ttl (%s) and %s, got %s", s.TTL, maxTTL, s.RememberTTL)
	}
	p.count("sessions.max_per_user", s.MaxPerUser, 1, 1000)
	if s.SweepEvery < time.Second || s.SweepEvery > 24*time.Hour {
		p.add("sessions.sweep_every must be between 1s and 24h, got %s", s.SweepEvery)
	}
}

func (pr Presence) validate(p *problems) {
	between := func(key string, got, lo, hi time.Duration) {
		if got < lo || got > hi {
			p.add("%s must be between %s and %s, got %s", key, lo, hi, got)
		}
	}
	between("presence.heartbeat", pr.Heartbeat, time.Second, 5*time.Minute)
	between("presence.ttl", pr.TTL, time.Second, time.Hour)
	if pr.TTL <= pr.Heartbeat {
		p.add("presence.ttl must exceed presence.heartbeat (%s), got %s", pr.Heartbeat, pr.TTL)
	}
	between("presence.sweep_every", pr.SweepEvery, 100*time.Millisecond, max(pr.TTL, 100*time.Millisecond))
	p.count("presence.awareness_max_bytes", pr.AwarenessMaxBytes, 16, 65536)
	between("presence.awareness_interval", pr.AwarenessInterval, time.Millisecond, 10*time.Second)
	between("presence.typing_interval", pr.TypingInterval, 10*time.Millisecond, time.Minute)
	between("presence.typing_ttl", pr.TypingTTL, 10*time.Millisecond, time.Minute)
	p.count("presence.max_rooms", pr.MaxRooms, 1, 1000)
}

func (m Media) validate(p *problems) {
	if m.MaxBytes < KiB || m.MaxBytes > 1<<40 {
		p.add("media.max_bytes must be between 1KiB and 1TiB, got %d", m.MaxBytes)
	}
	p.bytes("media.part_bytes", m.PartBytes, 64*KiB, 15*MiB)
	if m.UploadTTL < time.Minute || m.UploadTTL > 720*time.Hour {
		p.add("media.upload_ttl must be between 1m and 720h, got %s", m.UploadTTL)
	}
	if len(m.AllowedTypes) == 0 {
		p.add("media.allowed_types must list at least one type (*/* allows all)")
	}
	for i, t := range m.AllowedTypes {
		if !validTypePattern(strings.ToLower(strings.TrimSpace(t))) {
			p.add("media.allowed_types[%d] must be type/subtype, type/* or */*, got %q", i, t)
		}
	}
}

// validTypePattern checks a media.allowed_types entry (the gateway, which
// matches them, checks them the same way).
func validTypePattern(pat string) bool {
	if pat == "*/*" {
		return true
	}
	typ, sub, ok := strings.Cut(pat, "/")
	if !ok || typ == "" || typ == "*" || sub == "" {
		return false
	}
	if sub == "*" {
		sub = "x"
	}
	_, _, err := mime.ParseMediaType(typ + "/" + sub)
	return err == nil
}

// problems collects validation errors.
type problems []error

func (p *problems) add(format string, args ...any) {
	*p = append(*p, fmt.Errorf("config: "+format, args...))
}

func (p *problems) count(key string, got, lo, hi int) {
	if got < lo || got > hi {
		p.add("%s must be between %d and %d, got %d", key, lo, hi, got)
	}
}

func (p *problems) bytes(key string, got, lo, hi int) {
	if got < lo || got > hi {
		p.add("%s must be between %s and %s, got %d", key, sizeString(lo), sizeString(hi), got)
	}
}

func (p *problems) positive(key string, got time.Duration) {
	if got <= 0 {
		p.add("%s must be greater than 0, got %s", key, got)
	}
}

// hostPort checks a host:port address; the host may be empty (all
// interfaces) unless needHost.
func (p *problems) hostPort(key, addr string, needHost bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		p.add("%s must be host:port, got %q", key, addr)
		return
	}
	minPort := 0 // 0 lets the OS pick a port to listen on
	if needHost {
		minPort = 1
	}
	if n, err := strconv.Atoi(port); err != nil || n < minPort || n > 65535 {
		p.add("%s port must be a number from %d to 65535, got %q", key, minPort, port)
	}
	if needHost && host == "" {
		p.add("%s must name a host, got %q", key, addr)
	}
}

// sizeString writes n in the largest binary unit that divides it.
func sizeString(n int) string {
	switch {
	case n != 0 && n%GiB == 0:
		return fmt.Sprintf("%dGiB", n/GiB)
	case n != 0 && n%MiB == 0:
		return fmt.Sprintf("%dMiB", n/MiB)
	case n != 0 && n%KiB == 0:
		return fmt.Sprintf("%dKiB", n/KiB)
	}
	return strconv.Itoa(n)
}

func validNode(s string) bool {
	return s != "" && len(s) <= maxNodeBytes && !strings.ContainsFunc(s, func(r rune) bool { return !nodeRune(r) })
}

func nodeRune(r rune) bool {
	return r == '.' || r == '_' || r == '-' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
}
