package gateway

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisBroker is the cluster Broker: nodes sharing one Redis server fan
// committed changes out to each other over Redis pub/sub (PUBLISH and
// SUBSCRIBE on `<prefix>:scope:<scope>`), in the model of centrifuge's
// broker_redis.go, on go-redis/v9.
//
// # Publish path
//
// Publish delivers to this node's Handler at once, in the caller's
// goroutine (no Redis round trip for local devices), and then appends the
// message to a bounded per-node queue and returns. One writer goroutine
// drains the queue and sends what it finds (up to PublishBatchSize
// messages) as one pipeline, so messages leave in queue order — per-scope
// order from one node holds, because Redis runs a pipeline's commands in
// order, the writer reads a pipeline's replies before it sends the next,
// and each scope is read on one subscriber connection. A full queue drops the message and counts it
// (syncgate_redis_broker_publish_dropped_total): live fan-out is a hint,
// and the devices on other nodes see changes.from above their checkpoint
// and pull. PUBLISH is not retried on error for the same reason (a retry
// after a lost reply would deliver twice).
//
// Why a queue rather than a synchronous PUBLISH with a short timeout:
// Publish runs under the engine's scope lock (Server.Committed), and every
// commit of the scope waits behind it. Measured with
// BenchmarkRedisBrokerPublish (200-byte payloads, Redis 7.0 on loopback, a
// shared 2-core machine, -count 3): a synchronous PUBLISH costs 21-23 µs
// p50 and 0.3-1.2 ms p99 even on loopback — a LAN adds its round trip, and
// a Redis stall or failover the whole timeout — while Publish costs about
// 0.1 µs (the enqueue). The writer's pipelining also amortises the round
// trip: through the queue one node delivers 40-78k msg/s to another,
// against 11-34k msg/s for one synchronous PUBLISH after another. A
// timeout short enough not to hold commits up would drop messages on any
// hiccup anyway; the queue drops only when Redis falls PublishQueueSize
// messages behind the commit rate.
//
// # Echo suppression
//
// Every PUBLISH carries an envelope: a version byte, the origin's length
// (one byte), the origin, then the payload bytes as given (binary-safe, no
// re-encoding; see appendRedisEnvelope). The origin is Node plus a random
// per-broker suffix, so two nodes configured with the same name, or a
// restarted node, never mistake each other's messages for their own. A
// node that receives its own origin back skips the message (it delivered
// it locally already) and counts it in
// syncgate_redis_broker_echoes_skipped_total.
//
// # Subscriptions
//
// The node keeps the set of scopes it subscribes to (the hub calls
// Subscribe on a scope's first local subscriber and Unsubscribe after the
// last). Changes to the set are sent by a per-connection batching loop:
// it waits up to SubscribeBatchDelay after the first pending change, or
// until SubscribeBatchSize changes are pending, and sends one SUBSCRIBE and
// one UNSUBSCRIBE for all of them — a reconnect storm of thousands of
// devices costs a few commands rather than one per device. Subscribe
// returns once Redis confirms the subscription (so a message another node
// publishes after Subscribe returns is delivered), or after
// SubscribeTimeout without a confirmation (Redis unreachable: it returns
// nil, the subscription is kept and is made when Redis is back; the
// device fills the gap from the log), or with ctx's error when ctx ends
// first (then the subscription is rolled back). Unsubscribe takes effect
// locally at once — no message for the scope reaches the Handler after it
// returns — and the UNSUBSCRIBE goes out with the next batch.
//
// Scopes are spread over PubSubShards subscriber connections by hash: each
// has its own receive loop (decoding in parallel) and batching loop.
//
// # Redis failures
//
// go-redis's PubSub reconnects after a connection error and resubscribes
// to every channel it holds; the receive loop notices the error, retries
// with backoff until the connection is back, then logs and counts it
// (syncgate_redis_broker_resubscribes_total). A connection that goes
// silent (a half-open TCP connection: no error, no data) is pinged after
// ReadTimeout and replaced by a new one, subscribed to the node's set,
// when the PING is not answered within another ReadTimeout. Messages
// published while a connection is down are lost, which is safe: devices
// fill gaps from the scope log. The broker needs no restart.
//
// # Control messages
//
// PublishControl sends a node-wide control message (session revocation,
// "disconnect device") on `<prefix>:control`, which every node subscribes
// to from Run on. It reaches every running node once, the sender included:
// the sender's handler runs in PublishControl after Redis accepted the
// message, and the sender skips its echo. See PublishControl.
type RedisBroker struct {
	cfg    RedisBrokerConfig
	log    *slog.Logger
	m      *redisBrokerMetrics
	client *redis.Client
	seed   maphash.Seed

	origin         string // envelope origin: Node + "/" + random suffix
	scopePrefix    string // "<prefix>:scope:"
	controlChannel string // "<prefix>:control"

	shards []*redisShard
	queue  chan redisPub

	handler atomic.Pointer[Handler]
	control atomic.Pointer[ControlHandler]

	state        atomic.Int32    // redisNew, redisRunning, redisStopped
	mu           sync.Mutex      // serialises Run, stop and Close
	ctx          context.Context // cancelled by stop
	cancel       context.CancelFunc
	controlReady chan struct{} // closed on the control channel's first confirmation
	readyOnce    sync.Once
	closed       bool // guarded by mu
	wg           sync.WaitGroup
}

// RedisBrokerConfig configures a RedisBroker. The zero value of each field
// means the default given in its comment.
type RedisBrokerConfig struct {
	// Addr is the Redis server's host:port. Required.
	Addr string
	// Username and Password authenticate (AUTH, or ACL when Username is
	// set). Empty: no authentication.
	Username string
	Password string
	// TLSConfig enables TLS to Redis. Zero: plaintext.
	TLSConfig *tls.Config
	// DB is the database number. Pub/sub ignores it (channels are
	// server-wide, hence Prefix); it is passed for completeness. Zero: 0.
	DB int
	// Prefix namespaces the channels: `<prefix>:scope:<scope>` and
	// `<prefix>:control`. Nodes of one cluster must use the same prefix;
	// clusters sharing a Redis server must use different ones. Zero:
	// "syncgate".
	Prefix string
	// Node names this node in logs, in Redis's CLIENT LIST (client name
	// "syncgate-<node>"), and in the origin of the messages it publishes
	// (echo suppression adds a random suffix, so names need not be
	// unique). Zero: the host name.
	Node string
	// Logger receives the broker's logs. Zero: discard.
	Logger *slog.Logger
	// Registerer registers the broker's metrics (syncgate_redis_broker_*).
	// Zero: not registered.
	Registerer prometheus.Registerer

	// DialTimeout bounds connecting to Redis. Zero: 5 s.
	DialTimeout time.Duration
	// ReadTimeout bounds waiting for a reply (PUBLISH, PING). A subscriber
	// connection silent for ReadTimeout is pinged, and replaced when the
	// PING is not answered within another ReadTimeout. Zero: 3 s.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing a command. Zero: 3 s.
	WriteTimeout time.Duration

	// SubscribeTimeout bounds how long Subscribe waits for Redis to confirm
	// a subscription before it returns nil anyway (keeping the
	// subscription, which is made once Redis answers). Zero: 5 s.
	SubscribeTimeout time.Duration
	// SubscribeBatchDelay is how long the batching loop collects
	// (un)subscribe requests after the first one before it sends them.
	// Zero: 2 ms. Negative: no delay (send what is pending at once).
	// Measured by TestRedisBrokerSubscribeStorm (loopback, 2 cores): 1,000
	// concurrent Subscribes are confirmed in 14-80 ms with 3-8 SUBSCRIBE
	// commands at 2 ms, and in 13-130 ms with 23-986 commands without a
	// delay; the delay costs a lone Subscribe 2 ms.
	SubscribeBatchDelay time.Duration
	// SubscribeBatchSize caps the channels of one SUBSCRIBE or UNSUBSCRIBE
	// command, and sends a batch at once when reached. Zero: 512.
	SubscribeBatchSize int
	// PubSubShards is the number of subscriber connections (each with its
	// own receive loop); scopes are spread over them by hash. More shards
	// decode on more cores and split a resubscription, at one Redis
	// connection and two goroutines each. Zero: 2.
	PubSubShards int

	// PublishQueueSize bounds the messages waiting to be published; a
	// Publish that finds the queue full drops its message (counted). Zero:
	// 8192.
	PublishQueueSize int
	// PublishBatchSize caps the messages sent in one pipeline. Zero: 256.
	PublishBatchSize int
}

func (c RedisBrokerConfig) withDefaults() (RedisBrokerConfig, error) {
	if c.Addr == "" {
		return c, errors.New("gateway: RedisBrokerConfig.Addr is required")
	}
	if c.Prefix == "" {
		c.Prefix = "syncgate"
	}
	if c.Node == "" {
		c.Node, _ = os.Hostname()
		if c.Node == "" {
			c.Node = "node"
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.DialTimeout, 5*time.Second)
	def(&c.ReadTimeout, 3*time.Second)
	def(&c.WriteTimeout, 3*time.Second)
	def(&c.SubscribeTimeout, 5*time.Second)
	def(&c.SubscribeBatchDelay, 2*time.Millisecond)
	defInt := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	defInt(&c.SubscribeBatchSize, 512)
	defInt(&c.PubSubShards, 2)
	defInt(&c.PublishQueueSize, 8192)
	defInt(&c.PublishBatchSize, 256)
	switch {
	case c.DialTimeout < 0, c.ReadTimeout < 0, c.WriteTimeout < 0, c.SubscribeTimeout < 0:
		return c, errors.New("gateway: RedisBrokerConfig: negative timeout")
	case c.SubscribeBatchSize < 0, c.PubSubShards < 0, c.PublishQueueSize < 0, c.PublishBatchSize < 0:
		return c, errors.New("gateway: RedisBrokerConfig: negative size")
	case c.PubSubShards > 64:
		return c, errors.New("gateway: RedisBrokerConfig.PubSubShards is above 64")
	}
	return c, nil
}

// ControlHandler receives a node-wide control message: the data given to
// PublishControl on any node, this one included. The slice must not be
// modified. It may be called concurrently (from the receive loop for
// other nodes' messages, from PublishControl for this node's) and must not
// block for long.
type ControlHandler func(data []byte)

// ControlBroker is implemented by brokers that carry node-wide control
// messages (session revocation, "disconnect device") besides scope
// fan-out.
type ControlBroker interface {
	// HandleControl sets the handler of control messages. Call it before
	// Run: messages that arrive while no handler is set are dropped.
	HandleControl(h ControlHandler)
	// PublishControl sends data to every node's control handler, this
	// node's included.
	PublishControl(ctx context.Context, data []byte) error
}

var (
	_ Broker        = (*RedisBroker)(nil)
	_ Closer        = (*RedisBroker)(nil)
	_ ControlBroker = (*RedisBroker)(nil)
)

const (
	redisNew int32 = iota
	redisRunning
	redisStopped // Run's context ended, or Close
)

// redisEnvelopeV1 is the first byte of a version-1 envelope.
const redisEnvelopeV1 = 1

// errRedisNotRunning is returned by Publish and PublishControl before Run.
var errRedisNotRunning = errors.New("gateway: RedisBroker is not running")

// redisPub is a queued Publish.
type redisPub struct {
	scope string
	data  []byte // shared, never modified
}

// NewRedisBroker returns a broker for cfg. It does not connect: Run does.
func NewRedisBroker(cfg RedisBrokerConfig) (*RedisBroker, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m, err := newRedisBrokerMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	var suffix [6]byte
	_, _ = rand.Read(suffix[:]) // crypto/rand.Read never fails (Go 1.24+)
	node := cfg.Node
	if len(node) > 200 { // the origin's length is one byte
		node = node[:200]
	}
	b := &RedisBroker{
		cfg:            cfg,
		log:            cfg.Logger.With("broker", "redis", "node", cfg.Node),
		m:              m,
		seed:           maphash.MakeSeed(),
		origin:         node + "/" + hex.EncodeToString(suffix[:]),
		scopePrefix:    cfg.Prefix + ":scope:",
		controlChannel: cfg.Prefix + ":control",
		queue:          make(chan redisPub, cfg.PublishQueueSize),
		controlReady:   make(chan struct{}),
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.client = redis.NewClient(&redis.Options{
		Addr:       cfg.Addr,
		Username:   cfg.Username,
		Password:   cfg.Password,
		DB:         cfg.DB,
		TLSConfig:  cfg.TLSConfig,
		ClientName: "syncgate-" + clientNameSafe(cfg.Node),
		// RESP2: pub/sub as every Redis version speaks it, without HELLO or
		// go-redis's RESP3 push-notification processing on the subscriber
		// connection, which this broker does not need.
		Protocol:     2,
		DialTimeout:  cfg.DialTimeout,
		ReadTimeout:  cfg.ReadTimeout,
		WriteTimeout: cfg.WriteTimeout,
		// No command retries: a PUBLISH retried after a lost reply would be
		// delivered twice, and a lost one is only a missed hint.
		MaxRetries: -1,
		// The writer, PublishControl and Run's PING share the pool; the
		// subscriber connections are separate.
		PoolSize: 4,
		// CLIENT SETINFO needs Redis 7.2 and maintenance notifications need
		// RESP3: both would only cost a failing round trip per connection.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	b.shards = make([]*redisShard, cfg.PubSubShards)
	for i := range b.shards {
		b.shards[i] = &redisShard{
			b:     b,
			idx:   i,
			subs:  make(map[string]*redisSub),
			dirty: make(map[string]struct{}),
			wake:  make(chan struct{}, 1),
		}
	}
	return b, nil
}

// clientNameSafe makes s usable as a Redis client name (no spaces or
// newlines).
func clientNameSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r > '~' {
			return '_'
		}
		return r
	}, s)
}

// Run connects to Redis, subscribes to the control channel (and to the
// scopes subscribed before Run), starts the receive, batching and writer
// loops, and returns once Redis has confirmed the control subscription. It
// returns an error when Redis does not answer within
// DialTimeout+ReadTimeout (or before ctx ends); the broker then does not
// run, and should be closed. When ctx ends the broker stops: no more
// deliveries, and Publish, Subscribe and Unsubscribe return
// ErrBrokerClosed. Close still releases the client.
func (b *RedisBroker) Run(ctx context.Context, h Handler) error {
	if h == nil {
		return errors.New("gateway: RedisBroker.Run: nil handler")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed || b.state.Load() == redisStopped:
		return ErrBrokerClosed
	case b.state.Load() == redisRunning:
		return errors.New("gateway: RedisBroker.Run called twice")
	}
	readyCtx, cancel := context.WithTimeout(ctx, b.cfg.DialTimeout+b.cfg.ReadTimeout)
	defer cancel()
	if err := b.client.Ping(readyCtx).Err(); err != nil {
		return fmt.Errorf("gateway: connecting to Redis at %s: %w", b.cfg.Addr, err)
	}
	b.handler.Store(&h)
	for _, s := range b.shards {
		if err := s.start(readyCtx); err != nil {
			b.stopLocked()
			return fmt.Errorf("gateway: subscribing on Redis at %s: %w", b.cfg.Addr, err)
		}
	}
	b.state.Store(redisRunning)
	b.wg.Add(1 + 2*len(b.shards))
	go b.writeLoop()
	for _, s := range b.shards {
		go s.receiveLoop()
		go s.batchLoop()
		s.kick() // changes made between start and now
	}
	select {
	case <-b.controlReady:
	case <-readyCtx.Done():
		b.stopLocked()
		return fmt.Errorf("gateway: Redis did not confirm the control subscription: %w", readyCtx.Err())
	}
	context.AfterFunc(ctx, b.stop)
	b.log.Info("redis broker: running", "addr", b.cfg.Addr, "prefix", b.cfg.Prefix, "shards", len(b.shards))
	return nil
}

// stop ends delivery and the loops (Run's context ended, or Close).
func (b *RedisBroker) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stopLocked()
}

func (b *RedisBroker) stopLocked() {
	if b.state.Swap(redisStopped) == redisStopped {
		return
	}
	b.handler.Store(nil)
	b.cancel() // aborts dials and waits; the loops see it and return
	for _, s := range b.shards {
		s.closePubSub()
	}
}

// Close stops the broker if it runs, waits (until ctx ends) for its
// goroutines to return, and closes the Redis client. Later calls to any
// method return ErrBrokerClosed. Idempotent.
func (b *RedisBroker) Close(ctx context.Context) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.stopLocked()
	b.mu.Unlock()

	done := make(chan struct{})
	go func() { b.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if cerr := b.client.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}

// Publish delivers data to this node's Handler now (if this node
// subscribes to scope) and queues it for the other nodes; it does not
// wait for Redis. A full queue drops the message (counted) and returns
// nil: see the type's comment.
func (b *RedisBroker) Publish(ctx context.Context, scope string, data []byte) error {
	switch b.state.Load() {
	case redisNew:
		return errRedisNotRunning
	case redisStopped:
		return ErrBrokerClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if b.shard(scope).subscribed(scope) {
		if h := b.handler.Load(); h != nil {
			(*h)(scope, data)
		}
	}
	select {
	case b.queue <- redisPub{scope: scope, data: data}:
	default:
		b.m.dropped.Inc()
	}
	return nil
}

// Subscribe makes this node receive scope's messages. It returns once
// Redis confirmed the subscription, or after SubscribeTimeout (the
// subscription is kept and made when Redis answers), or with ctx.Err()
// when ctx ends first (the subscription is then rolled back, unless it was
// already in place). Idempotent. Before Run it only records the scope,
// which Run subscribes.
func (b *RedisBroker) Subscribe(ctx context.Context, scope string) error {
	if b.state.Load() == redisStopped {
		return ErrBrokerClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s := b.shard(scope)
	s.mu.Lock()
	st := s.subs[scope]
	if st != nil && st.confirmed {
		s.mu.Unlock()
		return nil
	}
	owner := st == nil
	if owner {
		st = &redisSub{}
		s.subs[scope] = st
		s.dirty[scope] = struct{}{}
		b.m.subscriptions.Inc()
	}
	switch b.state.Load() {
	case redisNew: // Run subscribes
		s.mu.Unlock()
		return nil
	case redisStopped:
		s.mu.Unlock()
		return ErrBrokerClosed
	}
	w := make(chan struct{})
	st.waiters = append(st.waiters, w)
	s.mu.Unlock()
	s.kick()

	timer := time.NewTimer(b.cfg.SubscribeTimeout)
	defer timer.Stop()
	select {
	case <-w:
		if b.state.Load() == redisStopped {
			return ErrBrokerClosed
		}
		return nil
	case <-timer.C:
		b.m.unconfirmed.Inc()
		b.log.Debug("redis broker: subscription not confirmed in time; kept", "scope", scope,
			"timeout", b.cfg.SubscribeTimeout)
		return nil
	case <-b.ctx.Done():
		return ErrBrokerClosed
	case <-ctx.Done():
		s.abandon(scope, st, w, owner)
		return ctx.Err()
	}
}

// Unsubscribe stops this node receiving scope: no message for it reaches
// the Handler once Unsubscribe returns. The UNSUBSCRIBE is sent with the
// next batch; Unsubscribe does not wait for it. Idempotent.
func (b *RedisBroker) Unsubscribe(ctx context.Context, scope string) error {
	if b.state.Load() == redisStopped {
		return ErrBrokerClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s := b.shard(scope)
	s.mu.Lock()
	removed := s.removeLocked(scope)
	s.mu.Unlock()
	if removed {
		s.kick()
	}
	return nil
}

// HandleControl implements ControlBroker.
func (b *RedisBroker) HandleControl(h ControlHandler) {
	if h == nil {
		b.control.Store(nil)
		return
	}
	b.control.Store(&h)
}

// PublishControl implements ControlBroker: it PUBLISHes data on the control
// channel and waits for Redis to accept it (a revocation must not be
// dropped silently the way a live `changes` hint may), then runs this
// node's control handler. Every node subscribed to the control channel
// receives it once; a node whose subscriber connection is down at that
// moment misses it, so control commands that must not be missed need a
// durable record too (a revoked session is marked in the store). Control
// messages should be idempotent: after an error the caller cannot tell
// whether other nodes received the message, and may retry. Messages from
// one node reach another node in order; there is no order between
// messages of different nodes (the sender's handler runs here, possibly
// before earlier messages of other nodes arrive).
func (b *RedisBroker) PublishControl(ctx context.Context, data []byte) error {
	switch b.state.Load() {
	case redisNew:
		return errRedisNotRunning
	case redisStopped:
		return ErrBrokerClosed
	}
	env := appendRedisEnvelope(nil, b.origin, data)
	if err := b.client.Publish(ctx, b.controlChannel, env).Err(); err != nil {
		b.m.publishErrors.Inc()
		return fmt.Errorf("gateway: publishing a control message: %w", err)
	}
	b.m.publishes.Inc()
	if h := b.control.Load(); h != nil {
		(*h)(data)
	}
	return nil
}

func (b *RedisBroker) shard(scope string) *redisShard {
	if len(b.shards) == 1 {
		return b.shards[0]
	}
	return b.shards[maphash.String(b.seed, scope)%uint64(len(b.shards))]
}

func (b *RedisBroker) channel(scope string) string { return b.scopePrefix + scope }

// writeLoop publishes the queue in order, pipelining what it finds queued.
func (b *RedisBroker) writeLoop() {
	defer b.wg.Done()
	var (
		batch   = make([]redisPub, 0, b.cfg.PublishBatchSize)
		buf     []byte
		failing bool
		lastLog time.Time
	)
	for {
		select {
		case p := <-b.queue:
			batch = append(batch, p)
		case <-b.ctx.Done():
			// Best effort: send what is already queued, briefly.
		drain:
			for len(batch) < cap(batch) {
				select {
				case p := <-b.queue:
					batch = append(batch, p)
				default:
					break drain
				}
			}
			if len(batch) > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), b.cfg.WriteTimeout)
				_, _ = b.send(ctx, batch, buf)
				cancel()
			}
			return
		}
	more:
		for len(batch) < cap(batch) {
			select {
			case p := <-b.queue:
				batch = append(batch, p)
			default:
				break more
			}
		}
		var err error
		buf, err = b.send(b.ctx, batch, buf)
		switch {
		case err != nil && b.ctx.Err() == nil:
			if !failing || time.Since(lastLog) > 10*time.Second {
				b.log.Warn("redis broker: publishing failed; live messages are being dropped", "err", err)
				lastLog = time.Now()
			}
			failing = true
		case err == nil && failing:
			b.log.Info("redis broker: publishing again")
			failing = false
		}
		clear(batch) // drop the references to the payloads
		batch = batch[:0]
	}
}

// send publishes batch in one pipeline. It builds the envelopes in buf,
// which it returns for reuse (the pipeline has written them when Exec
// returns).
func (b *RedisBroker) send(ctx context.Context, batch []redisPub, buf []byte) ([]byte, error) {
	size := 0
	for _, p := range batch {
		size += 2 + len(b.origin) + len(p.data)
	}
	if cap(buf) < size {
		buf = make([]byte, 0, size)
	}
	buf = buf[:0]
	pipe := b.client.Pipeline()
	for _, p := range batch {
		start := len(buf)
		buf = appendRedisEnvelope(buf, b.origin, p.data)
		pipe.Publish(ctx, b.channel(p.scope), buf[start:])
	}
	cmds, err := pipe.Exec(ctx)
	failed := 0
	if err != nil {
		for _, c := range cmds {
			if c.Err() != nil {
				failed++
			}
		}
	}
	b.m.publishes.Add(float64(len(batch) - failed))
	b.m.publishErrors.Add(float64(failed))
	if cap(buf) > 1<<20 { // do not keep a burst's buffer forever
		buf = nil
	}
	return buf, err
}

// appendRedisEnvelope appends a version-1 envelope to dst:
//
//	byte 0       1 (version)
//	byte 1       n = len(origin), at most 255
//	bytes 2..n+1 origin
//	the rest     payload, as given
func appendRedisEnvelope(dst []byte, origin string, payload []byte) []byte {
	dst = append(dst, redisEnvelopeV1, byte(len(origin)))
	dst = append(dst, origin...)
	return append(dst, payload...)
}

// parseRedisEnvelope splits an envelope into origin and payload (both
// substrings of env: no copy).
func parseRedisEnvelope(env string) (origin, payload string, ok bool) {
	if len(env) < 2 || env[0] != redisEnvelopeV1 {
		return "", "", false
	}
	n := int(env[1])
	if len(env) < 2+n {
		return "", "", false
	}
	return env[2 : 2+n], env[2+n:], true
}

// redisShard is one subscriber connection with its receive and batching
// loops, and the part of the node's subscription set hashed to it.
type redisShard struct {
	b    *RedisBroker
	idx  int
	wake chan struct{} // a batch is pending; capacity 1

	// flushMu serialises the batching loop's sends with the replacement of
	// the PubSub, so that a replacement sees every change sent before it.
	flushMu sync.Mutex
	ps      atomic.Pointer[redis.PubSub] // written under flushMu

	mu    sync.RWMutex
	subs  map[string]*redisSub // scope -> state, for the scopes this node subscribes to
	dirty map[string]struct{}  // scopes whose state changed since the last batch
}

type redisSub struct {
	confirmed bool            // Redis confirmed it on the current connection
	waiters   []chan struct{} // Subscribe calls waiting for the confirmation
}

// start creates the shard's PubSub, subscribed to what was subscribed
// before Run (and, on shard 0, the control channel), and connects it.
func (s *redisShard) start(ctx context.Context) error {
	s.mu.Lock()
	chans := s.channelsLocked()
	clear(s.dirty)
	s.mu.Unlock()
	ps := s.b.client.Subscribe(ctx)
	s.ps.Store(ps)
	var err error
	if len(chans) > 0 {
		err = ps.Subscribe(ctx, chans...)
	} else {
		err = ps.Ping(ctx)
	}
	if err != nil {
		_ = ps.Close()
	}
	return err
}

// channelsLocked lists the channels the shard must subscribe to.
func (s *redisShard) channelsLocked() []string {
	chans := make([]string, 0, len(s.subs)+1)
	if s.idx == 0 {
		chans = append(chans, s.b.controlChannel)
	}
	for scope := range s.subs {
		chans = append(chans, s.b.channel(scope))
	}
	return chans
}

func (s *redisShard) closePubSub() {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	if ps := s.ps.Load(); ps != nil {
		_ = ps.Close()
	}
}

func (s *redisShard) subscribed(scope string) bool {
	s.mu.RLock()
	_, ok := s.subs[scope]
	s.mu.RUnlock()
	return ok
}

func (s *redisShard) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// removeLocked drops scope from the set; pending Subscribe calls return
// (superseded by this unsubscription). It reports whether scope was there.
func (s *redisShard) removeLocked(scope string) bool {
	st := s.subs[scope]
	if st == nil {
		return false
	}
	for _, w := range st.waiters {
		close(w)
	}
	delete(s.subs, scope)
	s.dirty[scope] = struct{}{}
	s.b.m.subscriptions.Dec()
	return true
}

// abandon handles a Subscribe whose context ended before the confirmation:
// it stops waiting and, if that call added the scope and nobody else waits
// for it, removes it again so the hub's view (not subscribed) and the
// broker's agree.
func (s *redisShard) abandon(scope string, st *redisSub, w chan struct{}, owner bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.subs[scope] != st || st.confirmed {
		return
	}
	for i, x := range st.waiters {
		if x == w {
			st.waiters = append(st.waiters[:i], st.waiters[i+1:]...)
			break
		}
	}
	if owner && len(st.waiters) == 0 {
		s.removeLocked(scope)
		s.kick()
	}
}

// batchLoop sends the pending (un)subscriptions: see the type's comment.
func (s *redisShard) batchLoop() {
	defer s.b.wg.Done()
	b := s.b
	delay := b.cfg.SubscribeBatchDelay
	var timer *time.Timer
	if delay > 0 {
		timer = time.NewTimer(time.Hour)
		timer.Stop()
		defer timer.Stop()
	}
	for {
		select {
		case <-s.wake:
		case <-b.ctx.Done():
			return
		}
		if delay > 0 {
			timer.Reset(delay)
		collect:
			for s.pending() < b.cfg.SubscribeBatchSize {
				select {
				case <-s.wake:
				case <-timer.C:
					break collect
				case <-b.ctx.Done():
					return
				}
			}
			timer.Stop()
		}
		if more := s.flush(); more {
			s.kick()
		}
	}
}

func (s *redisShard) pending() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.dirty)
}

// flush sends up to SubscribeBatchSize pending changes as one UNSUBSCRIBE
// and one SUBSCRIBE, and reports whether changes remain.
func (s *redisShard) flush() (more bool) {
	b := s.b
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	var sub, unsub []string
	s.mu.Lock()
	for scope := range s.dirty {
		if len(sub)+len(unsub) == b.cfg.SubscribeBatchSize {
			more = true
			break
		}
		delete(s.dirty, scope)
		if _, ok := s.subs[scope]; ok {
			sub = append(sub, b.channel(scope))
		} else {
			unsub = append(unsub, b.channel(scope))
		}
	}
	s.mu.Unlock()
	ps := s.ps.Load()
	if ps == nil || b.ctx.Err() != nil {
		return false
	}
	// Errors need no retry here: go-redis's PubSub keeps the channel set
	// whether or not the write succeeded, and resubscribes to it when it
	// reconnects (which the receive loop drives).
	if len(unsub) > 0 {
		b.m.subscribeCommands.Inc()
		if err := ps.Unsubscribe(b.ctx, unsub...); err != nil && b.ctx.Err() == nil {
			b.log.Warn("redis broker: UNSUBSCRIBE failed; applied on reconnect", "shard", s.idx,
				"channels", len(unsub), "err", err)
		}
	}
	if len(sub) > 0 {
		b.m.subscribeCommands.Inc()
		if err := ps.Subscribe(b.ctx, sub...); err != nil && b.ctx.Err() == nil {
			b.log.Warn("redis broker: SUBSCRIBE failed; sent again on reconnect", "shard", s.idx,
				"channels", len(sub), "err", err)
		}
	}
	return more
}

// receiveLoop reads the shard's PubSub: messages go to the handlers,
// confirmations to the waiting Subscribe calls. It drives reconnection.
func (s *redisShard) receiveLoop() {
	defer s.b.wg.Done()
	b := s.b
	pinged := false
	for {
		ps := s.ps.Load()
		msg, err := ps.ReceiveTimeout(b.ctx, b.cfg.ReadTimeout)
		if b.ctx.Err() != nil {
			return
		}
		if err != nil {
			lostAt := time.Now()
			if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
				if !pinged {
					// Silent for ReadTimeout: a PING tells an idle connection
					// from a dead one.
					pinged = true
					_ = ps.Ping(b.ctx)
					continue
				}
				b.log.Warn("redis broker: subscriber connection does not answer; replacing it", "shard", s.idx)
				s.replace(ps)
			} else {
				b.log.Warn("redis broker: subscriber connection lost; reconnecting", "shard", s.idx, "err", err)
			}
			pinged = false
			s.unconfirmAll()
			s.reconnect(lostAt)
			continue
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Message:
			s.deliver(m)
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				s.confirm(m.Channel)
			}
		}
	}
}

// deliver hands a received message to the right handler.
func (s *redisShard) deliver(m *redis.Message) {
	b := s.b
	b.m.received.Inc()
	origin, payload, ok := parseRedisEnvelope(m.Payload)
	if !ok {
		b.m.malformed.Inc()
		return
	}
	if origin == b.origin {
		b.m.echoes.Inc() // delivered locally by Publish or PublishControl
		return
	}
	if m.Channel == b.controlChannel {
		if h := b.control.Load(); h != nil {
			(*h)([]byte(payload))
		}
		return
	}
	scope, ok := strings.CutPrefix(m.Channel, b.scopePrefix)
	if !ok || !s.subscribed(scope) { // unsubscribed since: Unsubscribe is immediate
		return
	}
	if h := b.handler.Load(); h != nil {
		(*h)(scope, []byte(payload))
	}
}

// confirm records Redis's confirmation of channel and releases the
// Subscribe calls waiting for it. Confirmations are matched by channel
// only: a late one, of an earlier SUBSCRIBE still in flight when the scope
// was unsubscribed and subscribed again, can release the new Subscribe
// before its own SUBSCRIBE is processed. The hub cannot do that while
// Redis answers (it serialises a scope's calls, and Subscribe waits for
// the confirmation); after an unconfirmed Subscribe the cost is at most a
// missed hint.
func (s *redisShard) confirm(channel string) {
	b := s.b
	if channel == b.controlChannel {
		b.readyOnce.Do(func() { close(b.controlReady) })
		return
	}
	scope, ok := strings.CutPrefix(channel, b.scopePrefix)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.subs[scope]
	if st == nil {
		return
	}
	st.confirmed = true
	for _, w := range st.waiters {
		close(w)
	}
	st.waiters = nil
}

// unconfirmAll marks the shard's subscriptions as not in place: the
// connection was lost, and Subscribe calls now wait for the resubscription.
func (s *redisShard) unconfirmAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.subs {
		st.confirmed = false
	}
}

// reconnect pings the PubSub until it answers: go-redis reconnects it and
// resubscribes to its channels on the way. Backoff from 50 ms to 2 s.
func (s *redisShard) reconnect(lostAt time.Time) {
	b := s.b
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(b.ctx, b.cfg.DialTimeout+b.cfg.WriteTimeout)
		err := s.ps.Load().Ping(ctx)
		cancel()
		if b.ctx.Err() != nil {
			return
		}
		if err == nil {
			break
		}
		if attempt == 1 || attempt%20 == 0 {
			b.log.Warn("redis broker: reconnecting the subscriber connection failed; retrying", "shard", s.idx,
				"attempt", attempt, "err", err)
		}
		select {
		case <-time.After(backoff):
		case <-b.ctx.Done():
			return
		}
		backoff = min(backoff*2, 2*time.Second)
	}
	b.m.resubscribes.Inc()
	s.mu.RLock()
	scopes := make([]string, 0, len(s.subs))
	for scope := range s.subs {
		scopes = append(scopes, scope)
	}
	s.mu.RUnlock()
	b.log.Info("redis broker: subscriber connection back; resubscribed", "shard", s.idx, "scopes", len(scopes),
		"down", time.Since(lostAt).Round(time.Millisecond))
	// Messages published while the connection was down are gone: tell the
	// handler which scopes may have missed some (Handler, nil data).
	if h := b.handler.Load(); h != nil {
		for _, scope := range scopes {
			(*h)(scope, nil)
		}
	}
}

// replace swaps a silent PubSub for a new one subscribed to the shard's
// set (reconnect then connects it). go-redis offers no way to force a
// reconnection of a PubSub whose connection is half-open.
func (s *redisShard) replace(old *redis.PubSub) {
	b := s.b
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	if b.ctx.Err() != nil || s.ps.Load() != old {
		return
	}
	_ = old.Close()
	s.mu.Lock()
	chans := s.channelsLocked()
	clear(s.dirty) // the new PubSub starts from the current set
	s.mu.Unlock()
	ps := b.client.Subscribe(b.ctx)
	s.ps.Store(ps)
	// A failure leaves the channels recorded in ps; reconnect connects it.
	_ = ps.Subscribe(b.ctx, chans...)
}

// redisBrokerMetrics are the RedisBroker's Prometheus series.
type redisBrokerMetrics struct {
	publishes         prometheus.Counter
	publishErrors     prometheus.Counter
	dropped           prometheus.Counter
	received          prometheus.Counter
	echoes            prometheus.Counter
	malformed         prometheus.Counter
	resubscribes      prometheus.Counter
	subscriptions     prometheus.Gauge
	unconfirmed       prometheus.Counter
	subscribeCommands prometheus.Counter
}

func newRedisBrokerMetrics(reg prometheus.Registerer) (*redisBrokerMetrics, error) {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Subsystem: "redis_broker", Name: name, Help: help,
		})
	}
	m := &redisBrokerMetrics{
		publishes:     counter("publishes_total", "Messages (scope and control) Redis accepted from this node."),
		publishErrors: counter("publish_errors_total", "Messages whose PUBLISH failed (lost: devices fill the gap from the log)."),
		dropped:       counter("publish_dropped_total", "Messages dropped because the publish queue was full."),
		received:      counter("messages_received_total", "Messages received from Redis, echoes included."),
		echoes:        counter("echoes_skipped_total", "This node's own messages received back from Redis and skipped."),
		malformed:     counter("malformed_total", "Messages received with an unknown envelope, skipped."),
		resubscribes: counter("resubscribes_total",
			"Times a subscriber connection came back after a failure and resubscribed."),
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "syncgate", Subsystem: "redis_broker", Name: "subscriptions",
			Help: "Scopes this node subscribes to.",
		}),
		unconfirmed: counter("subscribe_unconfirmed_total",
			"Subscribe calls that returned after SubscribeTimeout without Redis's confirmation."),
		subscribeCommands: counter("subscribe_commands_total",
			"SUBSCRIBE and UNSUBSCRIBE commands sent (each carries a batch of channels)."),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.publishes, m.publishErrors, m.dropped, m.received, m.echoes,
			m.malformed, m.resubscribes, m.subscriptions, m.unconfirmed, m.subscribeCommands} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("gateway: registering Redis broker metrics: %w", err)
			}
		}
	}
	return m, nil
}
