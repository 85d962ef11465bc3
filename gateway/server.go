package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/syncgate/syncgate/gateway/auth"
	"github.com/syncgate/syncgate/presence"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/engine"
	"github.com/syncgate/syncgate/sync/protocol"
)

// Engine is what the gateway needs from the sync engine. *engine.Engine
// implements it; tests may substitute their own.
type Engine interface {
	Open(ctx context.Context, p engine.Principal, subs []protocol.Subscription) (engine.OpenResult, error)
	Push(ctx context.Context, p engine.Principal, muts []protocol.Mutation) ([]protocol.Result, error)
	Pull(ctx context.Context, p engine.Principal, scope string, since uint64, limit int) (*protocol.Changes, *protocol.Reset, error)
	// Conflicts lists a scope's conflict records, oldest first, after the
	// record named after ("" from the start), at most limit.
	Conflicts(ctx context.Context, p engine.Principal, scope string, openOnly bool, after string, limit int) ([]protocol.Conflict, error)
	// ResolveConflict applies a person's decision on a conflict as a
	// mutation of p's device that names it.
	ResolveConflict(ctx context.Context, p engine.Principal, scope, id string, r engine.Resolution) (protocol.Result, error)
	// Config gives the limits announced in welcome (MaxBatch, PullLimit).
	Config() engine.Config
	// Latest is scope's newest entry as a changes message (nil: empty
	// scope), broadcast after fan-out may have lost messages.
	Latest(ctx context.Context, scope string) (*protocol.Changes, error)
	// Confirm records the checkpoints a device confirmed.
	Confirm(ctx context.Context, p engine.Principal, checkpoints map[string]uint64) error
}

// Verifier checks client tokens. *auth.Verifier implements it. Errors must
// match auth.ErrExpired or auth.ErrInvalid (errors.Is).
type Verifier interface {
	Verify(token string) (auth.Claims, error)
}

var (
	_ Engine          = (*engine.Engine)(nil)
	_ Verifier        = (*auth.Verifier)(nil)
	_ engine.Notifier = (*Server)(nil)
	_ engine.Notifier = (*LateNotifier)(nil)
)

// Options are the Server's collaborators. Engine, Verifier and Sessions are
// required.
type Options struct {
	Engine   Engine
	Verifier Verifier
	// Broker fans commits out to nodes. nil: a single-node MemoryBroker.
	// Shutdown closes it (if it implements Closer) after the last
	// connection is gone.
	Broker Broker
	// Logger receives the gateway's logs. nil: discard.
	Logger *slog.Logger
	// Registry registers the gateway's metrics. nil: not registered.
	Registry prometheus.Registerer
	// Gatherer is served at /metrics. nil: Registry, if it is also a
	// Gatherer; otherwise /metrics is not served.
	Gatherer prometheus.Gatherer
	// Sessions stores device sessions (the stores in storage/embedded and
	// storage/mongo implement it). Nodes of a cluster share one.
	Sessions storage.Sessions
	// Media stores the blobs of the media API (/v1/media). nil: the API
	// answers 404, and the engine should refuse $media references.
	Media storage.Media
	// MediaConfig tunes the media API; zero fields take their defaults.
	MediaConfig MediaConfig
	// Tracker stores presence (online entries, rooms). Nodes of a cluster
	// share one (presence.RedisTracker). nil: a presence.MemoryTracker
	// with Config.PresenceTTL.
	Tracker presence.Tracker
	// Store answers the support API's sync-lag questions (heads,
	// checkpoints, conflicts). storage.Store implements it. nil: the user
	// API omits per-scope sync state.
	Store SupportStore
}

// ErrServerClosed is returned by Serve after Shutdown has started.
var ErrServerClosed = errors.New("gateway: server closed")

// shutdownParallelism bounds how many connections Shutdown closes at once:
// it caps the burst of close-frame writes, and spreads the reconnect storm
// the closes cause over other nodes.
const shutdownParallelism = 128

// Server is the gateway: the HTTP routes, the WebSocket connections, the
// hub and the broker. It implements engine.Notifier. See doc.go for the
// concurrency contract.
type Server struct {
	cfg      Config
	engine   Engine
	verifier Verifier
	broker   Broker
	log      *slog.Logger
	metrics  *metrics
	resyncQ  chan string // scopes awaiting a resync hint (queueResync)
	gatherer prometheus.Gatherer
	hub      *hub
	upgrader websocket.Upgrader
	handler  http.Handler
	http     *http.Server
	limits   struct{ MaxBatch, PullLimit int }
	sessions *sessionManager  // device sessions (sessions.go)
	presence *presenceManager // presence and rooms (presence.go)
	store    SupportStore     // nil: no per-scope sync state in the support API
	media    storage.Media    // nil: no media API (http_media.go)
	mediaCfg MediaConfig

	// Encoded once: sent to many connections.
	slowConsumerMsg []byte
	shutdownMsg     []byte

	// baseCtx lives as long as the server: the broker's Run context and
	// the context of broker calls made outside any connection.
	baseCtx    context.Context
	cancelBase context.CancelFunc

	serving      atomic.Bool
	draining     atomic.Bool // set under mu; read without it on hot paths
	shutdownOnce sync.Once
	shutdownDone chan struct{}
	shutdownErr  error
	drainOnce    sync.Once
	drainStart   chan struct{} // closed when draining begins: ends event streams

	mu     sync.Mutex // guards conns; held only for map operations
	conns  map[*conn]struct{}
	connWG sync.WaitGroup // one per registered connection
}

// New builds a Server. It does not listen: call Serve.
func New(cfg Config, o Options) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if o.Engine == nil || o.Verifier == nil || o.Sessions == nil {
		return nil, errors.New("gateway: Engine, Verifier and Sessions are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Broker == nil {
		o.Broker = NewMemoryBroker()
	}
	if o.Gatherer == nil {
		if g, ok := o.Registry.(prometheus.Gatherer); ok {
			o.Gatherer = g
		}
	}
	s := &Server{
		cfg:          cfg,
		engine:       o.Engine,
		verifier:     o.Verifier,
		broker:       o.Broker,
		log:          o.Logger,
		store:        o.Store,
		resyncQ:      make(chan string, resyncQueue),
		gatherer:     o.Gatherer,
		hub:          newHub(o.Broker),
		shutdownDone: make(chan struct{}),
		drainStart:   make(chan struct{}),
		conns:        make(map[*conn]struct{}),
		media:        o.Media,
		mediaCfg:     o.MediaConfig,
	}
	if err := errors.Join(s.mediaCfg.fill()...); err != nil {
		return nil, err
	}
	ecfg := o.Engine.Config()
	s.limits.MaxBatch, s.limits.PullLimit = ecfg.MaxBatch, ecfg.PullLimit
	s.baseCtx, s.cancelBase = context.WithCancel(context.Background())
	s.slowConsumerMsg = s.errorMessage(0, protocol.CodeSlowConsumer,
		"the outbound queue overflowed; reconnect and resume from your checkpoints")
	s.shutdownMsg = s.errorMessage(0, protocol.CodeShutdown, "the node is draining; reconnect after a jittered delay")
	s.upgrader = websocket.Upgrader{
		HandshakeTimeout: cfg.WriteTimeout,
		ReadBufferSize:   4096,
		WriteBufferSize:  4096,
		// Write buffers are borrowed per frame, so an idle connection holds
		// none (gorilla's pool is per-upgrader: no package state).
		WriteBufferPool: &sync.Pool{},
		// CheckOrigin allows every origin for now: the token, not cookies,
		// authenticates a connection, so a foreign page gains nothing it
		// could not get with the token itself. Restrict when cookie auth
		// arrives.
		CheckOrigin: func(*http.Request) bool { return true },
		Error: func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
			writeJSONError(w, status, protocol.CodeBadRequest, "websocket upgrade failed: "+reason.Error())
		},
	}
	if o.Tracker == nil {
		o.Tracker = presence.NewMemoryTracker(presence.Options{TTL: cfg.PresenceTTL})
	}
	s.presence = newPresenceManager(s, o.Tracker)
	s.metrics = newMetrics(o.Registry, s.presence.localEntries)
	s.sessions = newSessionManager(o.Sessions, o.Broker, &s.cfg, s.log)
	if cb, ok := o.Broker.(ControlBroker); ok {
		cb.HandleControl(s.onControl) // before Run, which Serve calls
	}
	s.handler = s.routes()
	s.http = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: cfg.HelloTimeout,
		IdleTimeout:       cfg.PongTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// routes builds the gin engine: release mode, panic recovery, one debug
// log line per request, no gin logger.
func (s *Server) routes() http.Handler {
	if gin.Mode() == gin.DebugMode {
		// gin's mode is process-wide (an atomic); release mode only stops
		// its debug printing, which would bypass slog.
		gin.SetMode(gin.ReleaseMode)
	}
	r := gin.New()
	// Route on the escaped path and unescape parameters ourselves
	// (pathParam): a scope is user:<id> or space:<id>, and an id may hold
	// '/' (sent as %2F) or '+', which gin's default routing on the decoded
	// path, or its query-style unescaping, would get wrong.
	r.UseEscapedPath = true
	r.UnescapePathValues = false
	// No proxy is trusted: ClientIP (logged) is the socket's peer, not a
	// client-supplied X-Forwarded-For. The cmd may configure proxies.
	_ = r.SetTrustedProxies(nil)
	r.Use(gin.CustomRecoveryWithWriter(io.Discard, func(c *gin.Context, err any) {
		s.log.Error("gateway: panic in HTTP handler", "path", c.Request.URL.Path, "panic", err, "stack", stack())
		c.AbortWithStatusJSON(http.StatusInternalServerError, errorBody(protocol.CodeInternal, "internal error"))
	}))
	r.Use(s.logRequests)
	r.GET("/healthz", func(c *gin.Context) { c.String(http.StatusOK, "ok\n") })
	r.GET("/readyz", s.handleReady)
	if s.gatherer != nil {
		r.GET("/metrics", gin.WrapH(promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{})))
	}
	r.GET("/v1/ws", s.handleWS)
	r.POST("/v1/sync/push", s.instrument("push", s.handlePush))
	r.POST("/v1/sync/pull", s.instrument("pull", s.handlePull))
	r.GET("/v1/scopes/:scope/conflicts", s.instrument("conflicts", s.handleConflicts))
	r.POST("/v1/scopes/:scope/conflicts/:id/resolve", s.instrument("resolve", s.handleResolve))
	r.GET("/v1/sessions", s.instrument("sessions", s.handleSessions))
	r.DELETE("/v1/sessions/:id", s.instrument("revoke_session", s.handleRevokeSession))
	s.mediaRoutes(r)
	s.supportRoutes(r)
	return r
}

func (s *Server) logRequests(c *gin.Context) {
	start := time.Now()
	c.Next()
	if s.log.Enabled(c.Request.Context(), slog.LevelDebug) {
		s.log.LogAttrs(c.Request.Context(), slog.LevelDebug, "gateway: http request",
			slog.String("method", c.Request.Method), slog.String("path", c.Request.URL.Path),
			slog.Int("status", c.Writer.Status()), slog.Duration("took", time.Since(start)),
			slog.String("remote", c.ClientIP()))
	}
}

func (s *Server) handleReady(c *gin.Context) {
	if s.draining.Load() {
		c.String(http.StatusServiceUnavailable, "draining\n")
		return
	}
	c.String(http.StatusOK, "ready\n")
}

// handleWS upgrades GET /v1/ws and runs the connection on this goroutine.
func (s *Server) handleWS(c *gin.Context) {
	if s.draining.Load() {
		retryAfter(c.Writer)
		writeJSONError(c.Writer, http.StatusServiceUnavailable, protocol.CodeShutdown, "the node is draining")
		return
	}
	ws, err := s.upgrader.Upgrade(c.Writer, c.Request, nil)
	if err != nil {
		s.log.Debug("gateway: websocket upgrade failed", "err", err)
		return // the upgrader has answered
	}
	cn := newConn(c.Request.Context(), s, ws, s.log.With("remote", c.Request.RemoteAddr))
	if !s.register(cn) {
		// Shutdown began between the check above and the upgrade.
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(protocol.CloseShutdown, string(protocol.CodeShutdown)),
			time.Now().Add(s.cfg.WriteTimeout))
		_ = ws.Close()
		cn.cancel()
		return
	}
	defer s.unregister(cn)
	cn.serve()
}

// register adds c to the live set unless the server is draining.
func (s *Server) register(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	s.connWG.Add(1)
	s.metrics.connections.Inc()
	s.metrics.connectionsTotal.Inc()
	return true
}

func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.metrics.connections.Dec()
	s.connWG.Done()
}

func (s *Server) snapshotConns() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// Serve accepts connections on ln until Shutdown (then it returns nil once
// Shutdown has finished) or until ctx ends (then every socket is closed at
// once and it returns ctx.Err()). ctx is also the parent of every
// connection's context. Serve starts the broker first, so fan-out works
// before the first connection is accepted. It may be called once.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if !s.serving.CompareAndSwap(false, true) {
		return errors.New("gateway: Serve called twice")
	}
	if s.draining.Load() {
		return ErrServerClosed
	}
	for range resyncWorkers {
		go s.runResync(s.baseCtx)
	}
	if err := s.broker.Run(s.baseCtx, s.deliver); err != nil {
		return fmt.Errorf("gateway: starting broker: %w", err)
	}
	go s.presence.run(s.baseCtx)
	s.http.BaseContext = func(net.Listener) context.Context { return ctx }
	stop := context.AfterFunc(ctx, s.closeNow)
	defer stop()
	s.log.Info("gateway: serving", "addr", ln.Addr().String(), "node", s.cfg.Node)
	err := s.http.Serve(ln)
	if !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	select {
	case <-s.shutdownDone:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// closeNow closes the listener and every socket without a close handshake.
func (s *Server) closeNow() {
	s.beginDrain()
	s.mu.Lock()
	s.draining.Store(true)
	s.mu.Unlock()
	_ = s.http.Close()
	for _, c := range s.snapshotConns() {
		c.closeNetConn()
	}
	s.cancelBase()
}

// Shutdown drains the node: /readyz answers 503, listeners stop accepting
// and new upgrades are refused; every connection gets an error `shutdown`
// and close 4010, a bounded number at a time; then Shutdown waits until all
// connections are gone or ctx ends. If ctx ends first the remaining sockets
// are closed at once and ctx.Err() is returned. The broker is closed last.
// Concurrent and repeated calls wait for the first.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		s.shutdownErr = s.drain(ctx)
		close(s.shutdownDone)
	})
	select {
	case <-s.shutdownDone:
		return s.shutdownErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// beginDrain ends the long-lived HTTP responses (event streams), which
// http.Server.Shutdown would otherwise wait for.
func (s *Server) beginDrain() { s.drainOnce.Do(func() { close(s.drainStart) }) }

func (s *Server) drain(ctx context.Context) error {
	start := time.Now()
	s.beginDrain()
	s.mu.Lock()
	s.draining.Store(true)
	s.mu.Unlock()
	conns := s.snapshotConns()
	s.log.Info("gateway: draining", "connections", len(conns))

	// http.Server.Shutdown closes the listeners and waits for in-flight
	// HTTP requests; it does not track hijacked (WebSocket) connections,
	// which are drained below.
	httpDone := make(chan error, 1)
	go func() { httpDone <- s.http.Shutdown(ctx) }()

	sem := make(chan struct{}, shutdownParallelism)
	var wg sync.WaitGroup
closing:
	for _, c := range conns {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break closing
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c.closeWith(protocol.CloseShutdown, string(protocol.CodeShutdown), s.shutdownMsg, false)
			select {
			case <-c.closeSent:
			case <-c.done:
			case <-ctx.Done():
			}
		}()
	}
	wg.Wait()

	gone := make(chan struct{})
	go func() { s.connWG.Wait(); close(gone) }()
	var err error
	select {
	case <-gone:
	case <-ctx.Done():
		err = ctx.Err()
		left := s.snapshotConns()
		s.log.Warn("gateway: drain deadline passed; closing the remaining connections", "connections", len(left))
		for _, c := range left {
			c.closeNetConn()
		}
	}
	if herr := <-httpDone; herr != nil && err == nil {
		err = herr
	}
	s.cancelBase()
	if cl, ok := s.broker.(Closer); ok {
		if cerr := cl.Close(ctx); cerr != nil {
			s.log.Warn("gateway: closing broker", "err", cerr)
		}
	}
	if cl, ok := s.presence.tracker.(Closer); ok { // after the connections' last Disconnect
		if cerr := cl.Close(ctx); cerr != nil {
			s.log.Warn("gateway: closing the presence tracker", "err", cerr)
		}
	}
	s.log.Info("gateway: drained", "took", time.Since(start), "err", err)
	return err
}

// Committed implements engine.Notifier. The engine calls it under the
// scope's lock, in seq order, so it must not block: it encodes the changes
// once and hands the bytes to the broker, which delivers them to every
// subscribed connection on every node — including the connection that
// pushed, which uses them to advance its checkpoint (they reach it before
// its ack).
func (s *Server) Committed(scope string, ch *protocol.Changes) { s.publish(scope, ch) }

// Conflicted implements engine.Notifier: a manual conflict record opened,
// or was resolved or abandoned. Like Committed it runs under the scope's
// lock and does not block; the `conflict` message takes the same path, so
// it reaches each connection in the order the engine announced it relative
// to the scope's `changes` (a pusher sees the record its push opened
// before its ack; every device sees a resolution's `changes` before the
// `conflict` that closes the record).
func (s *Server) Conflicted(scope string, c *protocol.ConflictMsg) { s.publish(scope, c) }

// publish encodes m once and hands it to the broker for every subscriber
// of scope. It never blocks (see Broker.Publish).
func (s *Server) publish(scope string, m protocol.Message) {
	data, err := protocol.Marshal(m)
	if err != nil {
		s.log.Error("gateway: encoding a live message failed", "type", m.Kind(), "scope", scope, "err", err)
		return
	}
	if err := s.broker.Publish(s.baseCtx, scope, data); err != nil {
		s.metrics.brokerErrors.Inc()
		s.log.Warn("gateway: publishing failed", "type", m.Kind(), "scope", scope, "err", err)
	}
}

// deliver is the broker's Handler: it hands a message to local
// subscribers. nil data means the broker may have lost messages of scope
// (see Broker): the scope is queued for a resync hint.
func (s *Server) deliver(scope string, data []byte) {
	if strings.HasPrefix(scope, presenceKeyPrefix) {
		switch {
		case data == nil: // presence events are not in the log: nothing to resync
		case scope == supportEventsKey:
			s.presence.streams.dispatch(data)
		default: // a room
			s.hub.broadcast(scope, data)
		}
		return
	}
	if data == nil {
		s.queueResync(scope)
		return
	}
	s.hub.broadcast(scope, data)
}

// resyncWorkers bound the storage reads of resync hints: after a Redis
// outage every subscribed scope of a node needs one, and a node with
// thousands of scopes must not open thousands of reads at once.
const resyncWorkers = 4

// resyncQueue bounds the scopes waiting for a hint: one per subscribed
// scope of a node covers a full Redis outage of a node with that many.
const resyncQueue = 1 << 16

// queueResync schedules a resync hint for scope. It never blocks: when the
// queue is full the scope is dropped and counted; its devices then catch
// up at their next change or reconnect, as before the hint existed.
func (s *Server) queueResync(scope string) {
	select {
	case s.resyncQ <- scope:
	default:
		s.metrics.resyncDropped.Inc()
	}
}

// runResync broadcasts, for each queued scope with local subscribers, the
// scope's newest entry: devices that missed live messages see a gap and
// pull (docs/protocol.md, "gaps"). It returns when ctx ends.
func (s *Server) runResync(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case scope := <-s.resyncQ:
			if s.hub.subscribers(scope) == 0 {
				continue
			}
			ch, err := s.engine.Latest(ctx, scope)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("gateway: resync hint failed; devices catch up at their next change", "scope", scope, "err", err)
				}
				continue
			}
			if ch == nil {
				continue
			}
			data, err := protocol.Marshal(ch)
			if err != nil {
				s.log.Error("gateway: encoding a resync hint failed", "scope", scope, "err", err)
				continue
			}
			s.metrics.resyncHints.Inc()
			s.hub.broadcast(scope, data)
		}
	}
}

func (s *Server) subscribe(ctx context.Context, scope string, c *conn) error {
	if err := s.hub.subscribe(ctx, scope, c); err != nil {
		s.metrics.brokerErrors.Inc()
		return err
	}
	return nil
}

// unsubscribe runs on teardown too, when the connection's context is
// already cancelled; it uses the server's.
func (s *Server) unsubscribe(scope string, c *conn) {
	if err := s.hub.unsubscribe(s.baseCtx, scope, c); err != nil && s.baseCtx.Err() == nil {
		s.metrics.brokerErrors.Inc()
		s.log.Warn("gateway: unsubscribing failed", "scope", scope, "err", err)
	}
}

// errorMessage encodes an error message.
func (s *Server) errorMessage(rid uint64, code protocol.Code, msg string) []byte {
	data, err := protocol.Marshal(&protocol.ErrorMsg{
		Envelope: protocol.Envelope{Rid: rid}, Code: code, Message: msg, Retryable: code.Retryable(),
	})
	if err != nil { // cannot happen: only strings and numbers
		panic(fmt.Sprintf("gateway: encoding an error message: %v", err))
	}
	return data
}

// LateNotifier is an engine.Notifier whose Server is set after it is
// built. It breaks the construction cycle (the engine takes its Notifier
// in engine.New, the Server takes the engine in New):
//
//	var late gateway.LateNotifier
//	eng, err := engine.New(ecfg, engine.Options{..., Notifier: &late})
//	srv, err := gateway.New(gcfg, gateway.Options{Engine: eng, ...})
//	late.Set(srv)
//
// Until Set, notifications are dropped (nothing is subscribed before the
// Server serves, so nothing is lost: devices catch up by pulling). Set and
// the notifications are safe to call concurrently. The zero value is ready
// to use; it must not be copied after first use.
type LateNotifier struct {
	srv atomic.Pointer[Server]
}

// Set routes every later notification to s.
func (n *LateNotifier) Set(s *Server) { n.srv.Store(s) }

// Committed implements engine.Notifier.
func (n *LateNotifier) Committed(scope string, c *protocol.Changes) {
	if s := n.srv.Load(); s != nil {
		s.Committed(scope, c)
	}
}

// Conflicted implements engine.Notifier.
func (n *LateNotifier) Conflicted(scope string, c *protocol.ConflictMsg) {
	if s := n.srv.Load(); s != nil {
		s.Conflicted(scope, c)
	}
}

func stack() string { return string(debug.Stack()) }
