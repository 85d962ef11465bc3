package engine

import "sync"

// keyedMutex hands out one mutex per key (scope) and forgets it when no one
// holds or waits for it, so memory stays proportional to active scopes.
// Writers of one scope in this process queue here instead of colliding on
// the storage uniqueness guards; writers on other nodes still collide and
// retry, which the commit protocol handles.
type keyedMutex struct {
	mu    sync.Mutex // guards locks; leaf lock, held only for map access
	locks map[string]*refMutex
}

type refMutex struct {
	sync.Mutex
	refs int // holders + waiters; guarded by keyedMutex.mu
}

func (k *keyedMutex) lock(key string) func() {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = make(map[string]*refMutex)
	}
	m := k.locks[key]
	if m == nil {
		m = &refMutex{}
		k.locks[key] = m
	}
	m.refs++
	k.mu.Unlock()

	m.Lock()
	return func() {
		m.Unlock()
		k.mu.Lock()
		m.refs--
		if m.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}
