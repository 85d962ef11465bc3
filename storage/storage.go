package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/syncgate/syncgate/sync/hlc"
)

// Errors returned by stores. Wrap-compatible: test with errors.Is.
var (
	ErrNotFound = errors.New("storage: not found")
	ErrClosed   = errors.New("storage: closed")
)

// Op names the operation that produced an entry.
type Op string

const (
	OpPut    Op = "put"
	OpPatch  Op = "patch"
	OpDelete Op = "delete"
)

// DeviceRef names one device of one user. Device ids are chosen by clients,
// so they are only unique within a user.
type DeviceRef struct {
	User   string `json:"user"`
	Device string `json:"device"`
}

func (d DeviceRef) String() string { return d.User + "/" + d.Device }

// Entry is one accepted change: a row of the scope log. It carries the whole
// document state after the change, so the latest entry of a document is its
// current state and catch-up never needs a second read.
type Entry struct {
	Scope      string                   `json:"scope"`
	Seq        uint64                   `json:"seq"`
	Collection string                   `json:"col"`
	DocID      string                   `json:"id"`
	Version    uint64                   `json:"version"`
	Op         Op                       `json:"op"`
	State      map[string]any           `json:"state,omitempty"`  // nil when Deleted
	Clocks     map[string]hlc.Timestamp `json:"clocks,omitempty"` // per top-level field
	Deleted    bool                     `json:"deleted,omitempty"`
	Device     DeviceRef                `json:"device"`
	MutationID uint64                   `json:"mid"`
	HLC        hlc.Timestamp            `json:"hlc"`
	Committed  time.Time                `json:"committed"`
}

// Outcome is the result of one mutation, as acknowledged to the device.
type Outcome string

const (
	Applied  Outcome = "applied"  // applied as sent
	Merged   Outcome = "merged"   // applied, but concurrent changes were resolved; state attached
	Conflict Outcome = "conflict" // not applied; a conflict record awaits a decision
	Rejected Outcome = "rejected" // not applied; Code says why
)

// Receipt records the outcome of one mutation so that a replay of the same
// (device, mutation id) is answered with the original outcome, never applied
// twice. Receipts are kept at least engine.ReceiptTTL (24 h by default).
type Receipt struct {
	Device     DeviceRef      `json:"device"`
	MutationID uint64         `json:"mid"`
	Outcome    Outcome        `json:"outcome"`
	Code       string         `json:"code,omitempty"`
	Message    string         `json:"message,omitempty"`
	Scope      string         `json:"scope"`
	Collection string         `json:"col"`
	DocID      string         `json:"id"`
	Version    uint64         `json:"version,omitempty"`
	Seq        uint64         `json:"seq,omitempty"`
	State      map[string]any `json:"state,omitempty"` // resolved state when it differs from what was sent
	Deleted    bool           `json:"deleted,omitempty"`
	Created    time.Time      `json:"created"`
}

// Batch is one commit: entries of a single scope with contiguous seqs that
// start right after the head the writer read, plus the receipts and device
// progress that become durable if (and only if) every entry commits.
type Batch struct {
	Scope    string
	Entries  []Entry
	Receipts []Receipt
	// Device and LastMutationID advance the device's high-water mark of
	// processed mutation ids. Zero LastMutationID leaves it unchanged.
	Device         DeviceRef
	LastMutationID uint64
}

// Taken says which uniqueness guard rejected an entry.
type Taken string

const (
	TakenSeq      Taken = "seq"      // (scope, seq): another writer committed this seq first
	TakenVersion  Taken = "version"  // (scope, collection, id, version): the document moved on
	TakenMutation Taken = "mutation" // (device, mutation id): already committed (a replay)
)

// CommitError reports a partial commit: entries [0, Index) are committed,
// entry Index was rejected by a uniqueness guard, and later entries were not
// attempted.
type CommitError struct {
	Index int
	Taken Taken
}

func (e *CommitError) Error() string {
	return fmt.Sprintf("storage: commit stopped at entry %d: %s already taken", e.Index, e.Taken)
}

// DeviceState is what the server remembers about a device between connections.
type DeviceState struct {
	Device         DeviceRef         `json:"device"`
	LastMutationID uint64            `json:"lastMutationId"` // highest mutation id processed
	Checkpoints    map[string]uint64 `json:"checkpoints"`    // scope -> highest seq the device confirmed
	LastSeen       time.Time         `json:"lastSeen"`
}

// CompactStats reports one compaction pass over one scope.
type CompactStats struct {
	Removed int    // superseded entries and expired tombstones deleted
	Horizon uint64 // the scope's horizon after the pass
}

// Log is the scope log: the source of truth.
type Log interface {
	// Head returns the highest committed seq of scope, 0 if it has none.
	Head(ctx context.Context, scope string) (uint64, error)
	// Horizon returns the highest seq whose information compaction may have
	// erased; a device whose checkpoint is below it must reset. 0 if none.
	Horizon(ctx context.Context, scope string) (uint64, error)
	// Latest returns the newest entry of a document, or ErrNotFound.
	Latest(ctx context.Context, scope, collection, id string) (Entry, error)
	// Commit inserts b.Entries in order (the commit point). On a uniqueness
	// violation it returns the number committed and a *CommitError.
	Commit(ctx context.Context, b *Batch) (int, error)
	// Read returns entries with since < seq <= through, ascending, at most limit.
	Read(ctx context.Context, scope string, since, through uint64, limit int) ([]Entry, error)
	// Compact deletes entries superseded by a newer version of the same
	// document, and tombstones, committed before olderThan. It never deletes
	// the head entry of a scope, so seqs are never reused.
	Compact(ctx context.Context, scope string, olderThan time.Time) (CompactStats, error)
	// Scopes lists scope names after `after` in ascending order, at most limit.
	Scopes(ctx context.Context, after string, limit int) ([]string, error)
}

// Devices holds per-device state and mutation receipts.
type Devices interface {
	// Receipt returns the receipt of a processed mutation, or ErrNotFound.
	// If the receipt was lost but the log still holds the entry the mutation
	// produced, the receipt is rebuilt from that entry.
	Receipt(ctx context.Context, dev DeviceRef, mutationID uint64) (Receipt, error)
	// Device returns a device's state; an unknown device has a zero state.
	Device(ctx context.Context, dev DeviceRef) (DeviceState, error)
	// SaveCheckpoints merges checkpoints into the device state (a seq only
	// moves forward) and stamps LastSeen.
	SaveCheckpoints(ctx context.Context, dev DeviceRef, checkpoints map[string]uint64, seen time.Time) error
	// ExpireReceipts deletes receipts created before olderThan.
	ExpireReceipts(ctx context.Context, olderThan time.Time) (int, error)
}

// Store is everything the engine needs.
type Store interface {
	Log
	Devices
	// Close releases the store. Further calls return ErrClosed.
	Close(ctx context.Context) error
}
