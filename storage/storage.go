package storage

import (
	"context"
	"encoding/json"
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
	State      map[string]any `json:"state,omitempty"`    // resolved state when it differs from what was sent
	Conflict   string         `json:"conflict,omitempty"` // the conflict record an outcome Conflict opened
	Deleted    bool           `json:"deleted,omitempty"`
	Created    time.Time      `json:"created"`
}

// ConflictStatus is the state of a manual conflict record.
type ConflictStatus string

const (
	ConflictOpen      ConflictStatus = "open"      // awaiting a resolving mutation
	ConflictResolved  ConflictStatus = "resolved"  // a resolving mutation closed it
	ConflictAbandoned ConflictStatus = "abandoned" // left open longer than the abandon period
)

// Valid reports whether s is one of the three statuses.
func (s ConflictStatus) Valid() bool {
	return s == ConflictOpen || s == ConflictResolved || s == ConflictAbandoned
}

// ConflictRecord is a change the `manual` rule did not apply: the device's
// mutation (Mine) against the document as it stood (Theirs), kept until a
// resolving mutation names it. It is keyed by (Scope, ID); the store treats
// ID as opaque. The engine derives ID from (Device, MutationID), so a
// retried commit writes the same record again rather than a second one.
type ConflictRecord struct {
	ID            string          `json:"id"`
	Scope         string          `json:"scope"`
	Collection    string          `json:"col"`
	DocID         string          `json:"docId"`
	Base          uint64          `json:"base"`                // the version the device edited
	BaseState     map[string]any  `json:"baseState,omitempty"` // that version's state, if the log still had it
	Mine          json.RawMessage `json:"mine"`                // the mutation as the device sent it (protocol JSON)
	Theirs        map[string]any  `json:"theirs,omitempty"`    // the current state it collided with
	TheirsVersion uint64          `json:"theirsVersion"`
	TheirsDeleted bool            `json:"theirsDeleted,omitempty"`
	Device        DeviceRef       `json:"device"`
	MutationID    uint64          `json:"mid"`
	Status        ConflictStatus  `json:"status"`
	// Created orders the records of a scope, with ID as the tie break. A
	// rewrite should keep it: the order follows the last write. (Stores may
	// keep times at millisecond precision, as MongoDB does.)
	Created time.Time `json:"created"`
	// Closed is when the record was resolved or abandoned (zero while
	// open); ResolvedBy names the resolving mutation.
	Closed     time.Time       `json:"closed,omitzero"`
	ResolvedBy *DeviceMutation `json:"resolvedBy,omitempty"`
}

// DeviceMutation names one mutation of one device.
type DeviceMutation struct {
	Device     DeviceRef `json:"device"`
	MutationID uint64    `json:"mid"`
}

// Batch is one commit: entries of a single scope with contiguous seqs that
// start right after the head the writer read, plus the receipts, conflict
// records and device progress that become durable if (and only if) every
// entry commits. A batch without entries (every mutation was rejected or
// became a conflict) simply writes them.
type Batch struct {
	Scope    string
	Entries  []Entry
	Receipts []Receipt
	// Conflicts are conflict records of Scope to write: new ones, or
	// status changes of existing ones, each replacing the record with the
	// same ID whole (so a retried commit is idempotent).
	Conflicts []ConflictRecord
	// Device and LastMutationID advance the device's high-water mark of
	// processed mutation ids. Zero LastMutationID leaves it unchanged.
	Device         DeviceRef
	LastMutationID uint64
}

// Validate checks the rules every store enforces before it writes: these
// are programmer errors, which a store must not mistake for lost races.
// Stores add checks of their own encoding (MongoDB: the int64 range of BSON).
func (b *Batch) Validate() error {
	if b == nil {
		return errors.New("nil batch")
	}
	if b.LastMutationID != 0 && b.Device == (DeviceRef{}) {
		return errors.New("LastMutationID without Device")
	}
	for i, r := range b.Receipts {
		if r.Device == (DeviceRef{}) {
			return fmt.Errorf("receipt %d has no device", i)
		}
	}
	for i, c := range b.Conflicts {
		switch {
		case c.ID == "":
			return fmt.Errorf("conflict %d has no id", i)
		case c.Scope == "" || c.Scope != b.Scope:
			return fmt.Errorf("conflict %d: scope %q in a batch of scope %q", i, c.Scope, b.Scope)
		case !c.Status.Valid():
			return fmt.Errorf("conflict %d: unknown status %q", i, c.Status)
		case c.Status == ConflictOpen && !c.Closed.IsZero():
			return fmt.Errorf("conflict %d: open but Closed is set", i)
		}
	}
	if len(b.Entries) == 0 {
		return nil
	}
	if b.Scope == "" {
		return errors.New("batch has entries but no scope")
	}
	first := b.Entries[0].Seq
	if first == 0 {
		return errors.New("entry 0: seq 0 (seqs start at 1)")
	}
	for i, e := range b.Entries {
		switch {
		case e.Scope != b.Scope:
			return fmt.Errorf("entry %d: scope %q in a batch of scope %q", i, e.Scope, b.Scope)
		case e.Seq != first+uint64(i):
			return fmt.Errorf("entry %d: seq %d, want %d (seqs must be contiguous)", i, e.Seq, first+uint64(i))
		case e.Collection == "" || e.DocID == "":
			return fmt.Errorf("entry %d: empty collection or document id", i)
		case e.Version == 0:
			return fmt.Errorf("entry %d: version 0 (versions start at 1)", i)
		}
	}
	return nil
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
	// Latest returns the newest entry of a document, or ErrNotFound if the
	// document never had one. Once compaction has purged the document's
	// tombstone, Latest returns a marker instead: an Entry with Scope,
	// Collection and DocID set, Seq 0, Deleted true and the purged
	// tombstone's Version, every other field zero. A marker is not a log
	// entry (Read never returns one); it means "no current state, but the
	// versions continue": the document's next entry has Version
	// marker.Version+1, as after a live tombstone.
	Latest(ctx context.Context, scope, collection, id string) (Entry, error)
	// Version returns the entry that gave a document the given version, or
	// ErrNotFound if there is none: never committed, or removed by
	// compaction (a marker's version included: its entry is gone).
	// Versions never restart, so each version names at most one entry. An
	// entry superseded by a purged tombstone but not yet removed (possible
	// only with caller-set Committed times out of order) may be reported
	// as not found too.
	Version(ctx context.Context, scope, collection, id string, version uint64) (Entry, error)
	// Commit inserts b.Entries in order (the commit point). On a uniqueness
	// violation it returns the number committed and a *CommitError.
	Commit(ctx context.Context, b *Batch) (int, error)
	// Read returns entries with since < seq <= through, ascending, at most limit.
	Read(ctx context.Context, scope string, since, through uint64, limit int) ([]Entry, error)
	// Compact deletes entries superseded by a newer version of the same
	// document, and tombstones, committed before olderThan. It never deletes
	// the head entry of a scope, so seqs are never reused. Purging a
	// document's tombstone leaves a marker of its version (see Latest).
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
	// LastMutationID is at least the highest mutation id of the device that
	// has a log entry, even if the batch that wrote the entry lost its
	// progress update (a store that writes them separately must derive it
	// from the log's mutation index), so that a resend of a committed
	// mutation is always answered as a replay, never decided again.
	Device(ctx context.Context, dev DeviceRef) (DeviceState, error)
	// SaveCheckpoints merges checkpoints into the device state (a seq only
	// moves forward) and stamps LastSeen.
	SaveCheckpoints(ctx context.Context, dev DeviceRef, checkpoints map[string]uint64, seen time.Time) error
	// ExpireReceipts deletes receipts created before olderThan.
	ExpireReceipts(ctx context.Context, olderThan time.Time) (int, error)
}

// Conflicts holds manual conflict records. Records are written only
// through Batch.Conflicts (so a record is durable before the device is
// told, and under the commit's rule); this interface reads and ages them.
//
// Records of a scope are ordered by (Created, ID), ascending: the order of
// ListConflicts, and a stable one for paging.
type Conflicts interface {
	// Conflict returns the record of scope with this ID, or ErrNotFound
	// (also for the ID of a record of another scope).
	Conflict(ctx context.Context, scope, id string) (ConflictRecord, error)
	// ListConflicts returns records of scope in (Created, ID) order,
	// starting after the record with ID `after` ("" from the start), at
	// most limit (which must be positive). openOnly keeps only
	// ConflictOpen records. `after` keeps its place even if that record
	// was closed since; if no record of scope has that ID any more
	// (deleted by AgeConflicts), ListConflicts returns ErrNotFound.
	ListConflicts(ctx context.Context, scope string, openOnly bool, after string, limit int) ([]ConflictRecord, error)
	// AgeConflicts marks open records created before abandonBefore as
	// ConflictAbandoned, with Closed stamped by the store's clock, then
	// deletes resolved or abandoned records closed before deleteBefore
	// (both cutoffs exclusive), across all scopes. It returns how many
	// records it abandoned and deleted.
	AgeConflicts(ctx context.Context, abandonBefore, deleteBefore time.Time) (abandoned, deleted int, err error)
}

// Store is everything the engine needs.
type Store interface {
	Log
	Devices
	Conflicts
	// Close releases the store. Further calls return ErrClosed.
	Close(ctx context.Context) error
}
