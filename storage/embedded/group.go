package embedded

import (
	"errors"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// groupCommit runs concurrent commits in one bbolt write transaction, so
// they share one fsync. bbolt has one writer and every Update pays its own
// fsync (~0.3 ms here), which capped single-entry commits at ~2,400/s
// across all scopes (`syncgate bench --devices 100 --rate 3000`: 1,420
// pushes/s delivered, p50 57 ms). bbolt's own DB.Batch makes every caller
// wait MaxBatchDelay for company; this one never waits: a caller that finds
// no commit in flight runs alone at once, and callers that arrive while one
// is in flight queue up and go together in the next transaction.
//
// The first caller is the leader. It takes the whole queue, runs it, then
// hands leadership to the first caller that queued meanwhile, so no caller
// serves other callers' batches for longer than one transaction.
type groupCommit struct {
	db *bolt.DB

	mu    sync.Mutex // guards queue and busy; never held during a transaction
	queue []*commitReq
	busy  bool // a leader is running a batch
}

type commitReq struct {
	fn   func(*bolt.Tx) error
	err  error
	done chan struct{} // closed when err is final
	lead chan struct{} // closed when this caller must lead the next batch
}

// do runs fn in a write transaction, possibly shared with other callers'
// fns. fn may run more than once (if a batch-mate fails, each member reruns
// alone), so it must recompute its results on every call. A fn that
// returns errRollback must not have written anything: that error ends only
// its own part, not the shared transaction.
func (g *groupCommit) do(fn func(*bolt.Tx) error) error {
	r := &commitReq{fn: fn, done: make(chan struct{}), lead: make(chan struct{})}
	g.mu.Lock()
	g.queue = append(g.queue, r)
	if g.busy {
		g.mu.Unlock()
		select {
		case <-r.done:
			return r.err
		case <-r.lead:
		}
	} else {
		g.busy = true
		g.mu.Unlock()
	}
	g.mu.Lock()
	batch := g.queue
	g.queue = nil
	g.mu.Unlock()

	// Leadership passes on even if run panics, or every later commit
	// would wait forever for a leader that is gone.
	defer func() {
		g.mu.Lock()
		if len(g.queue) > 0 {
			close(g.queue[0].lead)
		} else {
			g.busy = false
		}
		g.mu.Unlock()
	}()
	g.run(batch)
	return r.err
}

var (
	errMemberFailed = errors.New("embedded: group commit member failed")
	errAborted      = errors.New("embedded: commit aborted by a panic in its group")
)

// run executes a batch. Every member gets an outcome even if a member (or
// bbolt) panics: then every member gets errAborted — never a nil error for
// a transaction that did not commit — and the panic continues in the leader
// after they are released. (A member that had already committed alone in
// the rerun loop is reported aborted too; that is safe, because the engine
// treats it as retryable and the retry is answered as a replay.)
func (g *groupCommit) run(batch []*commitReq) {
	settled := false
	defer func() {
		if !settled {
			for _, r := range batch {
				r.err = errAborted
			}
		}
		for _, r := range batch {
			close(r.done)
		}
	}()
	g.execute(batch)
	settled = true
}

func (g *groupCommit) execute(batch []*commitReq) {
	if len(batch) == 1 {
		batch[0].err = g.db.Update(batch[0].fn)
		return
	}
	err := g.db.Update(func(tx *bolt.Tx) error {
		for _, r := range batch {
			r.err = r.fn(tx)
			if r.err != nil && !errors.Is(r.err, errRollback) {
				return errMemberFailed // its writes may be half done: abandon the batch
			}
		}
		return nil
	})
	if err == nil {
		return
	}
	// A member failed, or the transaction itself did: rerun each alone so
	// that one bad batch cannot fail its neighbours.
	for _, r := range batch {
		r.err = g.db.Update(r.fn)
	}
}
