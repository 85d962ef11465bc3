package gateway

import (
	"context"
	"hash/maphash"
	"sync"
)

const (
	// hubShards splits the scope -> connections index so that a broadcast
	// (read lock) and a (un)subscribe (write lock) of unrelated scopes
	// rarely meet on one mutex; each lock is held only for map operations
	// and non-blocking enqueues.
	hubShards = 32
	// subLockShards serialise the 0 <-> 1 subscriber transitions of a scope,
	// which call the broker (possibly network I/O) and so must not hold a
	// hub shard lock. More shards than the hub: a slow broker call blocks
	// only the scopes hashing to the same lock.
	subLockShards = 256
)

// hub indexes local connections by scope and delivers broker messages to
// them. It also owns the reference counting of broker subscriptions: the
// broker is subscribed to a scope while at least one local connection is.
type hub struct {
	seed     maphash.Seed
	broker   Broker
	shards   [hubShards]hubShard
	subLocks [subLockShards]sync.Mutex
}

type hubShard struct {
	mu     sync.RWMutex
	scopes map[string]map[*conn]struct{} // guarded by mu
}

func newHub(b Broker) *hub {
	h := &hub{seed: maphash.MakeSeed(), broker: b}
	for i := range h.shards {
		h.shards[i].scopes = make(map[string]map[*conn]struct{})
	}
	return h
}

func (h *hub) hash(scope string) uint64 { return maphash.String(h.seed, scope) }

func (h *hub) shard(scope string) *hubShard { return &h.shards[h.hash(scope)%hubShards] }

// subscribe adds c to scope's subscribers, subscribing the broker when c is
// the first local subscriber. On a broker error c is not subscribed.
func (h *hub) subscribe(ctx context.Context, scope string, c *conn) error {
	l := &h.subLocks[h.hash(scope)%subLockShards]
	l.Lock()
	defer l.Unlock()
	if !h.add(scope, c) {
		return nil
	}
	if err := h.broker.Subscribe(ctx, scope); err != nil {
		h.remove(scope, c)
		return err
	}
	return nil
}

// unsubscribe removes c from scope's subscribers, unsubscribing the broker
// when c was the last local one.
func (h *hub) unsubscribe(ctx context.Context, scope string, c *conn) error {
	l := &h.subLocks[h.hash(scope)%subLockShards]
	l.Lock()
	defer l.Unlock()
	if !h.remove(scope, c) {
		return nil
	}
	return h.broker.Unsubscribe(ctx, scope)
}

// add reports whether c is now scope's only subscriber.
func (h *hub) add(scope string, c *conn) (first bool) {
	s := h.shard(scope)
	s.mu.Lock()
	defer s.mu.Unlock()
	set := s.scopes[scope]
	if set == nil {
		set = make(map[*conn]struct{})
		s.scopes[scope] = set
	}
	set[c] = struct{}{}
	return len(set) == 1
}

// remove reports whether c was scope's last subscriber (false if c was not
// subscribed at all).
func (h *hub) remove(scope string, c *conn) (last bool) {
	s := h.shard(scope)
	s.mu.Lock()
	defer s.mu.Unlock()
	set := s.scopes[scope]
	if _, ok := set[c]; !ok {
		return false
	}
	delete(set, c)
	if len(set) == 0 {
		delete(s.scopes, scope)
		return true
	}
	return false
}

// broadcast enqueues data on every connection subscribed to scope and
// returns how many accepted it. It never blocks on a connection: enqueue
// only appends to a byte-bounded queue, and a connection whose queue is
// full is closed (slow consumer) instead of waited for.
func (h *hub) broadcast(scope string, data []byte) (delivered int) {
	s := h.shard(scope)
	s.mu.RLock()
	defer s.mu.RUnlock()
	for c := range s.scopes[scope] {
		if c.enqueue(data) {
			delivered++
		}
	}
	return delivered
}

// subscribers returns the number of local connections subscribed to scope.
func (h *hub) subscribers(scope string) int {
	s := h.shard(scope)
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.scopes[scope])
}
