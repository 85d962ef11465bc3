package engine

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/protocol"
)

// Principal is an authenticated device: who it is and what it may use.
type Principal struct {
	User   string   // the token's sub
	Spaces []string // space ids (without the "space:" prefix) the token grants
	Device string   // device id chosen by the client, unique within the user
}

// Ref names the principal's device in storage.
func (p Principal) Ref() storage.DeviceRef { return storage.DeviceRef{User: p.User, Device: p.Device} }

// CanUse reports whether the principal may read and write scope:
// its own user:<sub> scope and the spaces its token lists.
func (p Principal) CanUse(scope string) bool {
	if scope == "user:"+p.User {
		return true
	}
	if id, ok := cutPrefix(scope, "space:"); ok {
		return slices.Contains(p.Spaces, id)
	}
	return false
}

func cutPrefix(s, prefix string) (string, bool) {
	if len(s) > len(prefix) && s[:len(prefix)] == prefix {
		return s[len(prefix):], true
	}
	return "", false
}

// MediaChecker tells the engine whether media exists, for the
// {"$media": id} references a mutation adds: a reference to media that is
// not in the mutation's own scope rejects the mutation (media_not_found).
// An error means the check could not be made (the push is answered
// retryably). MediaOf adapts a storage.Media.
type MediaChecker interface {
	MediaExists(ctx context.Context, scope, id string) (bool, error)
}

// MediaOf is the MediaChecker of a media store: media exists when Stat
// finds it in the scope.
func MediaOf(m storage.Media) MediaChecker { return mediaStat{m} }

type mediaStat struct{ m storage.Media }

func (c mediaStat) MediaExists(ctx context.Context, scope, id string) (bool, error) {
	_, err := c.m.Stat(ctx, scope, id)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, storage.ErrNotFound):
		return false, nil
	}
	return false, err
}

// Notifier receives every commit, in seq order per scope within this
// process, and every conflict record that opens or closes. The engine calls
// it while holding the scope's lock, so it must not block: enqueue and
// return.
type Notifier interface {
	Committed(scope string, c *protocol.Changes)
	Conflicted(scope string, c *protocol.ConflictMsg)
}

// Config tunes the engine. The zero value of each field means its default.
type Config struct {
	// Node names this process in HLC timestamps and logs. Default "node".
	Node string
	// Retention is how long superseded entries and tombstones stay in the
	// log before compaction removes them. Default 720h (30 days).
	Retention time.Duration
	// CompactEvery is the interval between compaction passes. Default 1h.
	CompactEvery time.Duration
	// ReceiptTTL is how long mutation receipts are kept. Default 24h; values
	// below 24h are raised to 24h.
	ReceiptTTL time.Duration
	// MaxBatch is the most mutations one push may carry. Default 1000.
	MaxBatch int
	// PullLimit is the default page size of a pull. Default 500.
	PullLimit int
	// MaxPullLimit caps the page size a client may ask for. Default 5000.
	MaxPullLimit int
	// MaxDocBytes caps the JSON size of a document's state. Default 256 KiB.
	MaxDocBytes int
	// MaxPullBytes cuts a pull page once its documents add up to this many
	// bytes of JSON (a page always holds at least one entry). Default 1 MiB.
	MaxPullBytes int
	// MaxClockSkew: a mutation whose HLC is further ahead of the server
	// clock than this is re-stamped with the server clock, so one device
	// with a wrong clock cannot win every future LWW race. Default 1m.
	MaxClockSkew time.Duration
	// Limits bound names and nesting in mutations; a collection's own
	// max_depth (conflict.Collection) overrides Limits.MaxDepth.
	Limits protocol.Limits
	// ConflictAbandonAfter: an open conflict record older than this is
	// marked abandoned. Default 720h (30 days).
	ConflictAbandonAfter time.Duration
	// ConflictRetention: resolved and abandoned records are deleted this
	// long after they closed. Default 168h (7 days).
	ConflictRetention time.Duration
	// Now returns the current time. Default time.Now (tests inject a clock).
	Now func() time.Time
}

// OpenResult is what a device learns when its session opens.
type OpenResult struct {
	LastMutation uint64
	Scopes       []protocol.ScopeState
	// Denied holds the requested scopes the principal may not use.
	Denied map[string]*protocol.Error
	// Conflicts are the open conflicts of the granted scopes (at most
	// MaxOpenConflicts per scope, oldest first).
	Conflicts []protocol.Conflict
}
