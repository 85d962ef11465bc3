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
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/gateway"
	"github.com/syncgate/syncgate/gateway/auth"
	"github.com/syncgate/syncgate/internal/config"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/storage/embedded"
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
	})
	if err != nil {
		store.Close(ctx)
		return nil, err
	}
	var broker gateway.Broker // nil: in-process fan-out
	if cfg.Redis.Addr != "" {
		broker, err = gateway.NewRedisBroker(gateway.RedisBrokerConfig{
			Addr: cfg.Redis.Addr, Password: cfg.Redis.Password, DB: cfg.Redis.DB, Prefix: cfg.Redis.Prefix,
			Node: cfg.Node, Logger: log, Registerer: reg,
		})
		if err != nil {
			store.Close(ctx)
			return nil, fmt.Errorf("app: redis: %w", err)
		}
	}
	srv, err := gateway.New(gatewayConfig(cfg), gateway.Options{
		Engine: eng, Verifier: verifier, Broker: broker, Logger: log, Registry: reg, Gatherer: reg,
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
	return &App{cfg: cfg, log: log, store: store, engine: eng, gateway: srv, listener: ln}, nil
}

// openStore picks the storage: bbolt in the data directory.
func openStore(ctx context.Context, cfg config.Config, log *slog.Logger) (storage.Store, error) {
	if cfg.Mongo.URI != "" {
		// Refuse rather than silently run on local storage while the
		// operator believes the cluster shares MongoDB.
		return nil, errors.New("mongo.uri is set, but this build has no MongoDB store yet: unset it to use the embedded store")
	}
	return embedded.Open(ctx, filepath.Join(cfg.DataDir, "syncgate.db"), embedded.Options{Logger: log})
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
	if cerr := a.store.Close(context.Background()); cerr != nil && err == nil {
		err = cerr
	}
	return err
}
