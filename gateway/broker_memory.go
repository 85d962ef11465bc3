package gateway

import (
	"context"
	"errors"
	"sync"
)

// ErrBrokerClosed is returned by a broker's methods after Close.
var ErrBrokerClosed = errors.New("gateway: broker closed")

// MemoryBus links MemoryBroker nodes inside one process, the way a Redis
// server links gateway nodes: a node receives a scope's messages only while
// it subscribes to it. A single-node deployment uses NewMemoryBroker, which
// makes a private bus; tests use a shared bus to run several nodes.
//
// Delivery is synchronous: Publish calls each subscribed node's Handler
// before it returns, under the bus's read lock. Handlers must therefore not
// block and must not call back into the bus (the Server's handler only
// enqueues onto connections).
type MemoryBus struct {
	mu    sync.RWMutex
	subs  map[string]map[*MemoryBroker]struct{} // scope -> subscribed nodes
	nodes map[*MemoryBroker]struct{}            // attached nodes: control messages reach each
}

// NewMemoryBus returns an empty bus.
func NewMemoryBus() *MemoryBus {
	return &MemoryBus{subs: make(map[string]map[*MemoryBroker]struct{}), nodes: make(map[*MemoryBroker]struct{})}
}

// Node attaches a new broker node to the bus.
func (b *MemoryBus) Node() *MemoryBroker {
	m := &MemoryBroker{bus: b}
	b.mu.Lock()
	b.nodes[m] = struct{}{}
	b.mu.Unlock()
	return m
}

// MemoryBroker is the in-process Broker: the default of a single node, and
// a node of a MemoryBus in multi-node tests. It is goroutine-safe.
type MemoryBroker struct {
	bus *MemoryBus
	// Guarded by bus.mu.
	handler Handler
	control ControlHandler
	scopes  map[string]struct{} // this node's subscriptions
	closed  bool
}

var (
	_ Broker        = (*MemoryBroker)(nil)
	_ Closer        = (*MemoryBroker)(nil)
	_ ControlBroker = (*MemoryBroker)(nil)
)

// NewMemoryBroker returns a single-node broker on a private bus.
func NewMemoryBroker() *MemoryBroker { return NewMemoryBus().Node() }

// Run registers h and returns at once: there is no background work. When
// ctx ends the node stops delivering.
func (m *MemoryBroker) Run(ctx context.Context, h Handler) error {
	if h == nil {
		return errors.New("gateway: MemoryBroker.Run: nil handler")
	}
	m.bus.mu.Lock()
	defer m.bus.mu.Unlock()
	if m.closed {
		return ErrBrokerClosed
	}
	if m.handler != nil {
		return errors.New("gateway: MemoryBroker.Run called twice")
	}
	m.handler = h
	context.AfterFunc(ctx, func() {
		m.bus.mu.Lock()
		m.handler = nil
		m.bus.mu.Unlock()
	})
	return nil
}

// Publish delivers data to every node subscribed to scope, this one
// included, before it returns.
func (m *MemoryBroker) Publish(ctx context.Context, scope string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.bus.mu.RLock()
	defer m.bus.mu.RUnlock()
	if m.closed {
		return ErrBrokerClosed
	}
	for node := range m.bus.subs[scope] {
		if node.handler != nil {
			node.handler(scope, data)
		}
	}
	return nil
}

// Subscribe makes this node receive scope. Idempotent.
func (m *MemoryBroker) Subscribe(ctx context.Context, scope string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.bus.mu.Lock()
	defer m.bus.mu.Unlock()
	if m.closed {
		return ErrBrokerClosed
	}
	if m.scopes == nil {
		m.scopes = make(map[string]struct{})
	}
	m.scopes[scope] = struct{}{}
	nodes := m.bus.subs[scope]
	if nodes == nil {
		nodes = make(map[*MemoryBroker]struct{})
		m.bus.subs[scope] = nodes
	}
	nodes[m] = struct{}{}
	return nil
}

// Unsubscribe stops this node receiving scope. Idempotent.
func (m *MemoryBroker) Unsubscribe(ctx context.Context, scope string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.bus.mu.Lock()
	defer m.bus.mu.Unlock()
	if m.closed {
		return ErrBrokerClosed
	}
	m.unsubscribeLocked(scope)
	return nil
}

// unsubscribeLocked removes this node's subscription; bus.mu must be held
// for writing.
func (m *MemoryBroker) unsubscribeLocked(scope string) {
	delete(m.scopes, scope)
	if nodes := m.bus.subs[scope]; nodes != nil {
		delete(nodes, m)
		if len(nodes) == 0 {
			delete(m.bus.subs, scope)
		}
	}
}

// Close detaches the node from the bus. Further calls return
// ErrBrokerClosed. Idempotent.
func (m *MemoryBroker) Close(context.Context) error {
	m.bus.mu.Lock()
	defer m.bus.mu.Unlock()
	for scope := range m.scopes {
		m.unsubscribeLocked(scope)
	}
	delete(m.bus.nodes, m)
	m.closed, m.handler, m.control = true, nil, nil
	return nil
}

// HandleControl implements ControlBroker.
func (m *MemoryBroker) HandleControl(h ControlHandler) {
	m.bus.mu.Lock()
	defer m.bus.mu.Unlock()
	m.control = h
}

// PublishControl implements ControlBroker: it calls the control handler of
// every running node on the bus, this one included, before it returns
// (synchronously, under the bus's read lock, like Publish). A node whose
// Run has not started, or whose Run context ended, receives nothing, as
// with Redis.
func (m *MemoryBroker) PublishControl(ctx context.Context, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.bus.mu.RLock()
	defer m.bus.mu.RUnlock()
	switch {
	case m.closed:
		return ErrBrokerClosed
	case m.handler == nil:
		return errors.New("gateway: MemoryBroker is not running")
	}
	for node := range m.bus.nodes {
		if node.handler != nil && node.control != nil {
			node.control(data)
		}
	}
	return nil
}

// subscribed reports whether this node subscribes to scope (for tests).
func (m *MemoryBroker) subscribed(scope string) bool {
	m.bus.mu.RLock()
	defer m.bus.mu.RUnlock()
	_, ok := m.scopes[scope]
	return ok
}
