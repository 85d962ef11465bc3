// Package app assembles a syncgate node from a config.Config: the store, the
// conflict registry, the engine and the gateway, and runs them until the
// context ends, then drains. `syncgate serve`, `syncgate bench` (in-process
// mode) and the e2e tests all start nodes through it, so they run the same
// wiring.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/gateway"
	"github.com/syncgate/syncgate/gateway/auth"
	"github.com/syncgate/syncgate/internal/config"
	"github.com/syncgate/syncgate/presence"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/storage/embedded"
	"github.com/syncgate/syncgate/storage/mongo"
	"github.com/syncgate/syncgate/sync/engine"
	"github.com/syncgate/syncgate/sync/protocol"
)

// App is one node.
type App struct {
	cfg      config.Config
	log      *slog.Logger
	store    storage.Store
	engine   *engine.Engine
	gateway  *gateway.Server
	listener net.Listener
	media    storage.Media // nil: no media API
}

// Options are what an embedder adds to a Config. The zero value is fine.
type Options struct {
	// Logger receives the node's logs. nil: discard.
	Logger *slog.Logger
	// Catalog holds custom conflict resolvers, registered by name, that
	// the collections config may refer to. nil: built-ins only.
	Catalog *conflict.Catalog
}

// New opens the store and builds the node. It listens on cfg.Listen right
// away (so Addr is known before Run) but serves nothing until Run.
func New(ctx context.Context, cfg config.Config, o Options) (*App, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("app: data dir: %w", err)
	}
	vc, err := auth.FromConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("app: auth: %w", err)
	}
	verifier, err := auth.NewVerifier(vc)
	if err != nil {
		return nil, fmt.Errorf("app: auth: %w", err)
	}
	store, err := openStore(ctx, cfg, log)
	if err != nil {
		return nil, fmt.Errorf("app: storage: %w", err)
	}
	// Conflict rules per collection: validated here rather than in
	// config.Validate, because custom resolvers come from the embedder's
	// catalog. Errors name the config key.
	resolvers, err := conflict.Build(cfg.Collections, o.Catalog)
	if err != nil {
		store.Close(ctx)
		return nil, fmt.Errorf("app: %w", err)
	}
	media, err := openMedia(ctx, cfg, store, log)
	if err != nil {
		store.Close(ctx)
		return nil, fmt.Errorf("app: media: %w", err)
	}
	var mediaCheck engine.MediaChecker // nil (not a nil-valued interface): $media refs are refused
	if media != nil {
		mediaCheck = engine.MediaOf(media)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// The engine announces commits and conflicts to the gateway, which is
	// built after it: the late notifier is pointed at it below.
	notifier := new(gateway.LateNotifier)
	eng, err := engine.New(engineConfig(cfg), engine.Options{
		Store:     store,
		Resolvers: resolvers,
		Notifier:  notifier,
		Logger:    log,
		Registry:  reg,
		Media:     mediaCheck,
	})
	if err != nil {
		store.Close(ctx)
		return nil, err
	}
	var (
		broker  gateway.Broker   // nil: in-process fan-out
		tracker presence.Tracker // a MemoryTracker unless Redis is configured
	)
	tracker = presence.NewMemoryTracker(presence.Options{TTL: cfg.Presence.TTL})
	if cfg.Redis.Addr != "" {
		rt, err := presence.NewRedisTracker(presence.RedisTrackerConfig{
			Addr: cfg.Redis.Addr, Password: cfg.Redis.Password, DB: cfg.Redis.DB, Prefix: cfg.Redis.Prefix,
			Options: presence.Options{TTL: cfg.Presence.TTL},
		})
		if err != nil {
			store.Close(ctx)
			return nil, fmt.Errorf("app: redis presence: %w", err)
		}
		tracker = rt
		broker, err = gateway.NewRedisBroker(gateway.RedisBrokerConfig{
			Addr: cfg.Redis.Addr, Password: cfg.Redis.Password, DB: cfg.Redis.DB, Prefix: cfg.Redis.Prefix,
			Node: cfg.Node, Logger: log, Registerer: reg,
		})
		if err != nil {
			store.Close(ctx)
			return nil, fmt.Errorf("app: redis: %w", err)
		}
	}
	// Device sessions live in the same database as the log: both stores
	// implement storage.Sessions beside storage.Store.
	sessions, ok := store.(storage.Sessions)
	if !ok {
		store.Close(ctx)
		return nil, fmt.Errorf("app: storage: %T does not store device sessions", store)
	}
	srv, err := gateway.New(gatewayConfig(cfg), gateway.Options{
		Engine: eng, Verifier: verifier, Broker: broker, Logger: log, Registry: reg, Gatherer: reg, Sessions: sessions,
		Media: media, MediaConfig: mediaConfig(cfg), Tracker: tracker, Store: store,
	})
	if err != nil {
		store.Close(ctx)
		return nil, err
	}
	notifier.Set(srv)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		store.Close(ctx)
		return nil, fmt.Errorf("app: listen: %w", err)
	}
	return &App{cfg: cfg, log: log, store: store, engine: eng, gateway: srv, listener: ln, media: media}, nil
}

// openMedia builds the media store beside the log store, in the same
// database: files under <data_dir>/media (metadata in the bbolt file) for
// the embedded store, a GridFS bucket for MongoDB. A store of another
// kind has no media (nil): the media API answers 404 and $media refs are
// refused.
func openMedia(ctx context.Context, cfg config.Config, store storage.Store, log *slog.Logger) (storage.Media, error) {
	switch s := store.(type) {
	case storage.Media: // a store that is its own media store
		return s, nil
	case *embedded.Store:
		return embedded.NewMedia(s, embedded.MediaOptions{Dir: filepath.Join(cfg.DataDir, "media"), Logger: log})
	case *mongo.Store:
		return mongo.NewMedia(ctx, s, mongo.MediaOptions{Logger: log})
	}
	log.Warn("app: this store has no media support; the media API is off", "store", fmt.Sprintf("%T", store))
	return nil, nil
}

func mediaConfig(c config.Config) gateway.MediaConfig {
	return gateway.MediaConfig{
		MaxBytes:     c.Media.MaxBytes,
		AllowedTypes: c.Media.AllowedTypes,
		PartBytes:    int64(c.Media.PartBytes),
		UploadTTL:    c.Media.UploadTTL,
	}
}

// mediaSweepEvery is the period of the upload sweep. Expired uploads are
// invisible at once; the sweep only reclaims their space.
const mediaSweepEvery = 15 * time.Minute

// sweepUploads deletes expired resumable uploads every mediaSweepEvery
// until ctx ends.
func (a *App) sweepUploads(ctx context.Context) {
	if a.media == nil {
		return
	}
	storage.SweepEvery(ctx, mediaSweepEvery, a.log, "expired uploads", func(ctx context.Context) (int, error) {
		return a.media.SweepUploads(ctx, time.Now())
	})
}

// openStore picks the storage: MongoDB when mongo.uri is set (every node of
// a cluster shares it), else bbolt in the data directory.
func openStore(ctx context.Context, cfg config.Config, log *slog.Logger) (storage.Store, error) {
	if cfg.Mongo.URI != "" {
		wc := writeconcern.Majority()
		if cfg.Mongo.WriteConcern != "majority" {
			n, err := strconv.Atoi(cfg.Mongo.WriteConcern) // validated by config
			if err != nil {
				return nil, fmt.Errorf("mongo.write_concern: %w", err)
			}
			wc = &writeconcern.WriteConcern{W: n}
		}
		return mongo.Open(ctx, cfg.Mongo.URI, cfg.Mongo.Database, mongo.Options{Logger: log, WriteConcern: wc,
			SessionSweepEvery: cfg.Sessions.SweepEvery})
	}
	return embedded.Open(ctx, filepath.Join(cfg.DataDir, "syncgate.db"), embedded.Options{Logger: log, SessionSweepEvery: cfg.Sessions.SweepEvery})
}

func engineConfig(c config.Config) engine.Config {
	return engine.Config{
		Node:                 c.Node,
		Retention:            c.History.Retention,
		CompactEvery:         c.History.CompactEvery,
		ReceiptTTL:           c.History.ReceiptTTL,
		MaxPullBytes:         c.Limits.MaxPullBytes,
		ConflictAbandonAfter: c.History.ConflictAbandonAfter,
		ConflictRetention:    c.History.ConflictRetention,
		MaxBatch:             c.Limits.MaxBatch,
		PullLimit:            c.Limits.PullLimit,
		MaxPullLimit:         c.Limits.MaxPullLimit,
		MaxDocBytes:          c.Limits.MaxDocBytes,
		MaxClockSkew:         c.Timing.MaxClockSkew,
		Limits:               protocol.Limits{MaxDepth: c.Limits.MaxDepth, MaxIDBytes: c.Limits.MaxIDBytes},
	}
}

func gatewayConfig(c config.Config) gateway.Config {
	return gateway.Config{
		Node:               c.Node,
		MaxMessageBytes:    c.Limits.MaxMessageBytes,
		OutboundQueueBytes: c.Limits.OutboundQueueBytes,
		HelloTimeout:       c.Timing.HelloTimeout,
		PingInterval:       c.Timing.PingInterval,
		PongTimeout:        c.Timing.PongTimeout,
		WriteTimeout:       c.Timing.WriteTimeout,
		ShutdownTimeout:    c.Timing.ShutdownTimeout,
		SessionTTL:         c.Sessions.TTL,
		SessionRememberTTL: c.Sessions.RememberTTL,
		MaxSessionsPerUser: c.Sessions.MaxPerUser,
		PresenceHeartbeat:  c.Presence.Heartbeat,
		PresenceTTL:        c.Presence.TTL,
		PresenceSweep:      c.Presence.SweepEvery,
		AwarenessMaxBytes:  c.Presence.AwarenessMaxBytes,
		AwarenessInterval:  c.Presence.AwarenessInterval,
		TypingInterval:     c.Presence.TypingInterval,
		TypingTTL:          c.Presence.TypingTTL,
		MaxRoomsPerConn:    c.Presence.MaxRooms,
	}
}

// Addr is the address the node listens on.
func (a *App) Addr() net.Addr { return a.listener.Addr() }

// Engine exposes the engine (tests and in-process benchmarks).
func (a *App) Engine() *engine.Engine { return a.engine }

// Run serves until ctx ends, then drains within cfg.Timing.ShutdownTimeout:
// clients are told to reconnect (close 4010), the compaction loop stops and
// the store is closed last, so every acknowledged write is durable on exit.
func (a *App) Run(ctx context.Context) error {
	engCtx, stopEngine := context.WithCancel(context.WithoutCancel(ctx))
	engDone := make(chan error, 1)
	go func() { engDone <- a.engine.Run(engCtx) }()
	sweepDone := make(chan struct{})
	go func() { defer close(sweepDone); a.sweepUploads(engCtx) }()

	serveCtx, stopServe := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServe()
	served := make(chan error, 1)
	go func() { served <- a.gateway.Serve(serveCtx, a.listener) }()

	var err error
	select {
	case err = <-served: // failed to serve
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
	case <-ctx.Done():
		a.log.Info("app: draining", "deadline", a.cfg.Timing.ShutdownTimeout)
		drainCtx, cancel := context.WithTimeout(context.Background(), a.cfg.Timing.ShutdownTimeout)
		start := time.Now()
		if derr := a.gateway.Shutdown(drainCtx); derr != nil {
			a.log.Warn("app: drain deadline passed; remaining connections were cut", "err", derr)
		}
		cancel()
		stopServe()
		<-served
		a.log.Info("app: drained", "took", time.Since(start).Round(time.Millisecond))
	}
	stopEngine()
	<-engDone
	<-sweepDone
	if cerr := a.store.Close(context.Background()); cerr != nil && err == nil {
		err = cerr
	}
	return err
}
