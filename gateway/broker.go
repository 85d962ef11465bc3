package gateway

import "context"

// Why the broker lives in package gateway: it is the gateway's fan-out, not
// part of the sync engine. The engine only knows engine.Notifier ("this scope
// committed these entries"); turning that into bytes on sockets — on this
// node and on every other node with subscribers — is the gateway's job, and
// the broker's only client is the gateway's Server/hub. Keeping it here (like
// centrifuge's broker.go beside hub.go) avoids a package whose sole importer
// is this one, and keeps the subscription reference counting (hub.go) next
// to the one component that may call Subscribe and Unsubscribe.

// Handler receives a message the broker delivers to this node: the scope and
// the encoded `changes` message, exactly as the publisher passed it. The
// slice is shared and must not be modified. A Handler must not block; the
// Server's handler only enqueues onto connections.
//
// nil data is a signal, not a message: the broker may have lost messages
// of scope (a networked broker calls it, for every subscribed scope, once
// its subscriptions are back after a connection failure). The Server then
// broadcasts the scope's newest log entry, so devices that missed
// something see a gap and pull, even if the scope never changes again.
type Handler func(scope string, data []byte)

// Broker fans committed changes out to every node that has local subscribers
// for a scope. Implementations: MemoryBroker (one process, or several nodes
// in one process via MemoryBus) and, later, a Redis pub/sub broker. Both pass
// the same conformance suite (broker_conformance_test.go).
//
// Contract (what the Server relies on and what an implementation must give):
//
//   - Run starts delivery to h and returns once the broker is ready; its
//     background work (if any) stops when ctx ends. Run is called once,
//     before any other method that should deliver. Messages published
//     before Run, or for scopes this node does not subscribe, are dropped.
//   - Publish delivers data for scope to this node's handler (if this node
//     subscribes to scope) exactly once, and to every other node that
//     subscribes to it. A networked implementation delivers locally without
//     a round trip and ignores its own echo. Publish MUST NOT block on I/O:
//     it is called under the engine's scope lock. A networked implementation
//     queues (bounded) and returns; when the queue is full it drops the
//     message and counts it. Dropping is safe: live fan-out is only a hint
//     and devices detect the gap (changes.from > checkpoint) and pull.
//   - Publish calls for one scope from one node are delivered in call order.
//   - Subscribe makes this node receive scope; Unsubscribe stops it. Both
//     are idempotent. The Server reference-counts local subscribers per
//     scope and calls Subscribe on the first one and Unsubscribe after the
//     last one has gone, serialised per scope, so a node only subscribes to
//     scopes with local subscribers and an implementation needs no counting
//     of its own. They may block on I/O and honour ctx.
//   - Every method is goroutine-safe.
//
// Optional capabilities are separate interfaces checked by type assertion
// (Closer), not methods added here.
type Broker interface {
	Run(ctx context.Context, h Handler) error
	Publish(ctx context.Context, scope string, data []byte) error
	Subscribe(ctx context.Context, scope string) error
	Unsubscribe(ctx context.Context, scope string) error
}

// Closer is implemented by brokers holding resources (connections,
// goroutines). Server.Shutdown calls Close last, after every connection is
// gone.
type Closer interface {
	Close(ctx context.Context) error
}
