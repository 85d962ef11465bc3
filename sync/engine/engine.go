package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/hlc"
	"github.com/syncgate/syncgate/sync/protocol"
)

// maxCommitAttempts bounds the optimistic retry loop. Each attempt loses
// only to a writer that committed, so the system as a whole progresses;
// the cap exists so that one request cannot spin forever behind a storm.
const maxCommitAttempts = 64

// Engine is the sync engine. It is goroutine-safe.
type Engine struct {
	store     storage.Store
	resolvers *conflict.Registry
	notify    Notifier
	cfg       Config
	log       *slog.Logger
	clock     *hlc.Clock
	scopes    keyedMutex // one writer per scope in this process
	devices   keyedMutex // one push per device in this process; taken before a scope lock
	m         *metrics
	media     MediaChecker // nil: media refs are refused
}

// Options are the collaborators of an Engine. Store and Resolvers are required.
type Options struct {
	Store     storage.Store
	Resolvers *conflict.Registry
	Notifier  Notifier              // nil: commits are not announced
	Logger    *slog.Logger          // nil: discard
	Registry  prometheus.Registerer // nil: metrics are not registered
	// Media checks the {"$media": id} references mutations add. nil: no
	// media support, and every mutation adding a reference is rejected
	// with media_not_found.
	Media MediaChecker
}

// New builds an engine.
func New(cfg Config, o Options) (*Engine, error) {
	if o.Store == nil || o.Resolvers == nil {
		return nil, errors.New("engine: Store and Resolvers are required")
	}
	cfg = cfg.withDefaults()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Notifier == nil {
		o.Notifier = nopNotifier{}
	}
	return &Engine{
		store:     o.Store,
		resolvers: o.Resolvers,
		notify:    o.Notifier,
		cfg:       cfg,
		log:       o.Logger,
		clock:     hlc.New(cfg.Node, cfg.Now),
		m:         newMetrics(o.Registry),
		media:     o.Media,
	}, nil
}

type nopNotifier struct{}

func (nopNotifier) Committed(string, *protocol.Changes)      {}
func (nopNotifier) Conflicted(string, *protocol.ConflictMsg) {}

// MaxOpenConflicts caps the open conflicts of one scope sent in a welcome;
// the HTTP API lists them all.
const MaxOpenConflicts = 100

func (c Config) withDefaults() Config {
	if c.Node == "" {
		c.Node = "node"
	}
	if c.Retention <= 0 {
		c.Retention = 30 * 24 * time.Hour
	}
	if c.CompactEvery <= 0 {
		c.CompactEvery = time.Hour
	}
	if c.ReceiptTTL < 24*time.Hour {
		c.ReceiptTTL = 24 * time.Hour
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 1000
	}
	if c.PullLimit <= 0 {
		c.PullLimit = 500
	}
	if c.MaxPullLimit <= 0 {
		c.MaxPullLimit = 5000
	}
	if c.PullLimit > c.MaxPullLimit {
		c.PullLimit = c.MaxPullLimit
	}
	if c.MaxDocBytes <= 0 {
		c.MaxDocBytes = 256 << 10
	}
	if c.MaxPullBytes <= 0 {
		c.MaxPullBytes = 1 << 20
	}
	if c.ConflictAbandonAfter <= 0 {
		c.ConflictAbandonAfter = 30 * 24 * time.Hour
	}
	if c.ConflictRetention <= 0 {
		c.ConflictRetention = 7 * 24 * time.Hour
	}
	if c.MaxClockSkew <= 0 {
		c.MaxClockSkew = time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Config returns the effective configuration (defaults applied).
func (e *Engine) Config() Config { return e.cfg }

// Open starts a device session: it checks access to each requested scope and
// tells the device where each stands. Scopes the principal may not use are
// returned in Denied and must not be subscribed.
func (e *Engine) Open(ctx context.Context, p Principal, subs []protocol.Subscription) (OpenResult, error) {
	var res OpenResult
	dev, err := e.store.Device(ctx, p.Ref())
	if err != nil {
		return res, e.storageErr(ctx, "open", err)
	}
	res.LastMutation = dev.LastMutationID
	checkpoints := make(map[string]uint64, len(subs))
	for _, s := range subs {
		if perr := e.checkScope(p, s.Scope); perr != nil {
			if res.Denied == nil {
				res.Denied = make(map[string]*protocol.Error)
			}
			res.Denied[s.Scope] = perr
			continue
		}
		st, err := e.scopeState(ctx, s.Scope, s.Since)
		if err != nil {
			return res, err
		}
		res.Scopes = append(res.Scopes, st)
		if !st.Reset {
			checkpoints[s.Scope] = s.Since
		}
		open, err := e.store.ListConflicts(ctx, s.Scope, true, "", MaxOpenConflicts)
		if err != nil {
			return res, e.storageErr(ctx, "conflicts", err)
		}
		for _, r := range open {
			res.Conflicts = append(res.Conflicts, ConflictView(r))
		}
	}
	if err := e.store.SaveCheckpoints(ctx, p.Ref(), checkpoints, e.cfg.Now()); err != nil {
		return res, e.storageErr(ctx, "open", err)
	}
	return res, nil
}

func (e *Engine) scopeState(ctx context.Context, scope string, since uint64) (protocol.ScopeState, error) {
	head, err := e.store.Head(ctx, scope)
	if err != nil {
		return protocol.ScopeState{}, e.storageErr(ctx, "head", err)
	}
	horizon, err := e.store.Horizon(ctx, scope)
	if err != nil {
		return protocol.ScopeState{}, e.storageErr(ctx, "horizon", err)
	}
	return protocol.ScopeState{
		Scope: scope, Head: head, Horizon: horizon,
		Reset: needsReset(since, head, horizon),
	}, nil
}

// needsReset: a checkpoint below the horizon may have missed a purged
// tombstone; one above the head means the server lost history the device
// saw (a restore from backup). Either way the replica cannot be trusted.
func needsReset(since, head, horizon uint64) bool {
	return since > 0 && (since < horizon || since > head)
}

func (e *Engine) checkScope(p Principal, scope string) *protocol.Error {
	if err := protocol.ValidateScope(scope); err != nil {
		return err
	}
	if !p.CanUse(scope) {
		return protocol.Errorf(protocol.CodeForbiddenScope, "scope %q is not granted by the token", scope)
	}
	return nil
}

// Pull returns a page of entries of scope after since, or a Reset when the
// device must start over. Errors are *protocol.Error.
func (e *Engine) Pull(ctx context.Context, p Principal, scope string, since uint64, limit int) (*protocol.Changes, *protocol.Reset, error) {
	if perr := e.checkScope(p, scope); perr != nil {
		return nil, nil, perr
	}
	switch {
	case limit <= 0:
		limit = e.cfg.PullLimit
	case limit > e.cfg.MaxPullLimit:
		limit = e.cfg.MaxPullLimit
	}
	st, err := e.scopeState(ctx, scope, since)
	if err != nil {
		return nil, nil, err
	}
	e.m.pulls.Inc()
	if st.Reset {
		e.m.resets.Inc()
		reason := "checkpoint behind the compaction horizon"
		if since > st.Head {
			reason = "checkpoint ahead of the scope head"
		}
		return nil, &protocol.Reset{Scope: scope, Reason: reason, Horizon: st.Horizon, Head: st.Head}, nil
	}
	entries, err := e.store.Read(ctx, scope, since, st.Head, limit)
	if err != nil {
		return nil, nil, e.storageErr(ctx, "read", err)
	}
	// Compaction may have purged a tombstone in (since, head] between the
	// reads above: the page would then silently lack a deletion. Re-check
	// the horizon after reading and answer reset instead.
	if horizon, err := e.store.Horizon(ctx, scope); err != nil {
		return nil, nil, e.storageErr(ctx, "horizon", err)
	} else if needsReset(since, st.Head, horizon) {
		e.m.resets.Inc()
		return nil, &protocol.Reset{Scope: scope, Reason: "checkpoint behind the compaction horizon", Horizon: horizon, Head: st.Head}, nil
	}
	read := len(entries)
	entries = e.capPage(entries)
	ch := &protocol.Changes{Scope: scope, From: since, To: st.Head, Head: st.Head, Entries: toChanges(entries)}
	if n := len(entries); n > 0 && entries[n-1].Seq < st.Head && (read == limit || n < read) {
		ch.To = entries[len(entries)-1].Seq
		ch.More = true
	}
	if since > 0 {
		// The since of a pull is proof the device holds everything up to it.
		if err := e.store.SaveCheckpoints(ctx, p.Ref(), map[string]uint64{scope: since}, e.cfg.Now()); err != nil {
			e.log.Warn("engine: saving checkpoint failed", "device", p.Ref().String(), "err", err)
		}
	}
	return ch, nil, nil
}

// Confirm records the seqs a device says it has applied (the `checkpoint`
// message), for the scopes p may use; others are ignored. Checkpoints only
// move forward. They inform the support API's sync lag and change nothing
// in sync: a device's pulls and hello carry their own since.
func (e *Engine) Confirm(ctx context.Context, p Principal, checkpoints map[string]uint64) error {
	keep := make(map[string]uint64, len(checkpoints))
	for scope, seq := range checkpoints {
		if p.CanUse(scope) {
			keep[scope] = seq
		}
	}
	if len(keep) == 0 {
		return nil
	}
	if err := e.store.SaveCheckpoints(ctx, p.Ref(), keep, e.cfg.Now()); err != nil {
		return e.storageErr(ctx, "checkpoint", err)
	}
	return nil
}

// Latest returns scope's newest entry as a one-entry changes message
// (From = head-1, To = head), or nil while the scope is empty. The gateway
// broadcasts it after its fan-out may have lost messages (a Redis
// outage): a device that missed any of them sees From above its
// checkpoint, which is the protocol's gap rule, and pulls; a device that
// missed nothing ignores it. It is not a read on behalf of a device, so it
// takes no principal: only subscribed connections receive it.
func (e *Engine) Latest(ctx context.Context, scope string) (*protocol.Changes, error) {
	head, err := e.store.Head(ctx, scope)
	if err != nil {
		return nil, e.storageErr(ctx, "head", err)
	}
	if head == 0 {
		return nil, nil
	}
	// The head entry is never superseded, so compaction never removes it.
	entries, err := e.store.Read(ctx, scope, head-1, head, 1)
	if err != nil {
		return nil, e.storageErr(ctx, "read", err)
	}
	if len(entries) == 0 {
		return nil, nil
	}
	return &protocol.Changes{Scope: scope, From: head - 1, To: head, Head: head, Entries: toChanges(entries)}, nil
}

// capPage cuts a page at MaxPullBytes of document state (at least one
// entry), so a page of large documents cannot exhaust memory.
func (e *Engine) capPage(entries []storage.Entry) []storage.Entry {
	total := 0
	for i, en := range entries {
		total += docSize(en.State) + 128 // 128: the entry's other fields, roughly
		if total > e.cfg.MaxPullBytes && i > 0 {
			return entries[:i]
		}
	}
	return entries
}

func toChanges(entries []storage.Entry) []protocol.Change {
	out := make([]protocol.Change, len(entries))
	for i, en := range entries {
		out[i] = protocol.Change{
			Seq: en.Seq, Collection: en.Collection, DocID: en.DocID, Version: en.Version,
			Op: en.Op, State: en.State, Deleted: en.Deleted,
			User: en.Device.User, Device: en.Device.Device, MutationID: en.MutationID, HLC: en.HLC.String(),
		}
	}
	return out
}

// storageErr turns a storage failure into the retryable protocol error.
// Only the caller's own context ending passes through as it is: the
// MongoDB driver wraps context.DeadlineExceeded in its server-selection
// timeout, so errors.Is on the error would mistake an outage for a
// request that was cut off (and neither log it nor answer unavailable).
func (e *Engine) storageErr(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return err
	}
	e.log.Error("engine: storage failure", "op", op, "err", err)
	return &protocol.Error{Code: protocol.CodeUnavailable, Message: "storage unavailable, retry later"}
}

// jitter sleeps a random 0..n ms so that colliding writers on different
// nodes do not retry in lock-step.
func jitter(ctx context.Context, attempt int) {
	if attempt < 3 {
		return
	}
	d := time.Duration(rand.IntN(1<<min(attempt, 6))) * time.Millisecond
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// docSize is the JSON size of a state, for MaxDocBytes.
func docSize(state map[string]any) int {
	b, err := json.Marshal(state)
	if err != nil {
		return int(^uint(0) >> 1)
	}
	return len(b)
}

func errf(format string, args ...any) error { return fmt.Errorf("engine: "+format, args...) }
