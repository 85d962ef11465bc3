// Package gateway is syncgate's network edge: the gin HTTP server, the
// WebSocket connections (gorilla), the HTTP fallback for push and pull, the
// hub that indexes connections by scope, and the fan-out broker.
//
// # Routes
//
//	GET  /v1/ws          WebSocket, protocol v1 (sync/protocol, docs/protocol.md)
//	POST /v1/sync/push   HTTP fallback push (http.go)
//	POST /v1/sync/pull   HTTP fallback pull
//	GET  /v1/scopes/{scope}/conflicts                 list manual conflicts (http_conflicts.go)
//	POST /v1/scopes/{scope}/conflicts/{id}/resolve    resolve one
//	GET  /v1/sessions    the caller's device sessions (http_sessions.go)
//	DELETE /v1/sessions/{id}  revoke one (own, or anyone's with role admin)
//	POST|GET|HEAD|DELETE /v1/media/{scope}[/{id}]     media: upload, download (Range, ETag), delete (http_media.go)
//	/v1/media/{scope}/uploads[/{uid}[/parts/{n}|/complete]]  resumable uploads
//	GET  /healthz        200 while the process runs
//	GET  /readyz         200 while serving, 503 once draining
//	GET  /metrics        Prometheus (the injected Gatherer)
//
// # Data flow
//
// A connection's read loop (the HTTP handler's goroutine) handles one
// client message at a time, in order, calling the engine synchronously. The
// engine announces every commit to Server.Committed, and every manual
// conflict record that opens or closes to Server.Conflicted (the two
// methods of engine.Notifier), while it holds the scope lock; each encodes
// its message (`changes` or `conflict`) once and passes the bytes to the
// Broker, which calls the hub on every node with local subscribers; the
// hub appends the shared bytes to each subscribed connection's outbound
// queue. Both go through the same path, so a connection sees them in the
// order the engine announced them. The engine is built before the Server,
// so it is given a LateNotifier, pointed at the Server once it exists.
// Each connection's write loop drains its queue, coalescing up to
// MaxMessagesPerFrame messages into one text frame of newline-delimited
// JSON: clients split frames on '\n'.
//
// A hello's scopes are subscribed right after its welcome (and resets) are
// queued, so no live `changes` overtakes the welcome; a commit that lands
// between Open reading the heads and the subscription is not delivered
// live, and the device catches it by pulling from its checkpoint. The
// welcome also carries the scopes' open conflict records; one opened in
// that window is not announced live either, and the device finds it with
// the HTTP list.
//
// The connection that pushed is subscribed like any other and receives the
// `changes` for its own mutations (and the `conflict` for a record its push
// opened or closed) before its `ack`: it uses them to advance its
// checkpoint. Live fan-out is a hint: each `changes` carries
// from/to, and a device that sees from > checkpoint pulls.
//
// # Contract
//
// Goroutine-safe: Server (all exported methods), MemoryBroker, MemoryBus,
// RedisBroker (its shard locks are taken briefly under the engine scope lock
// and the hub subscribe locks, never while the handler runs).
// Serve may be called once; Shutdown any number of times.
//
// Must not block (they run under the engine's scope lock or a hub lock):
// Server.Committed, Server.Conflicted, LateNotifier's methods,
// Broker.Publish, the broker's Handler and ControlHandler (which only
// start closes), hub.broadcast and conn.enqueue. Enqueue never waits for a socket: a connection whose queue
// would exceed OutboundQueueBytes is closed with 4008 instead. Socket
// writes happen only on each connection's write loop, each bounded by
// WriteTimeout.
//
// Every queue is bounded: outbound queues by OutboundQueueBytes (a single
// larger message is accepted into an empty queue), inbound messages by
// MaxMessageBytes (one message read at a time), scopes per hello by
// maxSessionScopes, connections closed at once by Shutdown by
// shutdownParallelism.
//
// # Lock order
//
// A goroutine holding a lock may only take locks further down this list,
// never one above it:
//
//  1. Server.mu                  connection registry; never held across a call
//     roomMember.sendMu          one room member's state/typing sends, in order
//     (presence.go; held across tracker calls and Broker.Publish)
//  2. hub.subLocks[i]            serialise a scope's 0<->1 subscriber transitions
//     (held across Broker.Subscribe/Unsubscribe)
//     supportStreams.subMu       the same for the support event key
//  3. engine scope lock          (sync/engine; held while calling Committed
//     and Conflicted)
//  4. broker locks (MemoryBus.mu) held while calling the Handler and the
//     ControlHandler
//  5. hubShard.mu                scope -> connections; held while enqueueing
//     supportStreams.mu          event streams; held while handing them events
//     (non-blocking sends)
//     sessionManager.mu          session id -> connections (sessions.go);
//     presenceManager.mu         presence id -> connections (presence.go);
//     both held only for map operations, never with a hub lock
//     connPresence.mu            one connection's presence state; a leaf
//  6. conn.mu                    outbound queue and closing state; leaf
//
// Helpers that expect a held lock are named …Locked. conn.mu is a leaf: no
// code holding it calls out (closeWith, enqueue and takeLocked only touch
// the queue and signal a buffered channel without blocking). That is what
// lets the hub call enqueue under its shard lock, and the engine call
// Committed and Conflicted under its scope lock, without ever waiting on a
// client. The token-expiry timer decides under conn.mu too: it compares
// its generation with conn.expiryGen and starts the close in one step, so
// a refresh (which bumps the generation under the same lock) either
// cancels it or finds the connection already closing.
//
// # Close codes
//
// The close codes and the error sent before each are in sync/protocol
// (codes.go). The gateway sends: 1009 for an oversized message (written by
// gorilla itself when SetReadLimit is exceeded; the rest of the frame is
// drained so the close frame is not lost to a TCP reset), 4000 for a bad
// or missing hello, 4001 unauthorized, 4002 token expired (at exp plus the
// verifier's leeway, auth.Claims.ValidUntil, when no refresh came), 4003 hello
// timeout, 4004 ping timeout (best effort), 4008 slow consumer, 4010
// shutdown, 4011 session revoked or evicted (at hello, on a control
// message, or at a refresh that finds the store's mark), 4012 session
// expired while connected, 1011 internal (also: the session store is
// unreachable at hello). After writing a close frame the server waits up
// to closeGrace for the client's reply, then closes the socket.
package gateway
