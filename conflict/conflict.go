package conflict

import (
	"errors"
	"fmt"

	"github.com/syncgate/syncgate/sync/hlc"
)

// OpKind is the kind of a mutation.
type OpKind string

const (
	Put    OpKind = "put"    // replace the whole object
	Patch  OpKind = "patch"  // field operations
	Delete OpKind = "delete" // tombstone the document
)

// PatchOps are the field operations of a patch. Field names are top-level
// document fields; nested objects are values, replaced as a whole.
type PatchOps struct {
	Set    map[string]any     `json:"set,omitempty"`
	Unset  []string           `json:"unset,omitempty"`
	Inc    map[string]float64 `json:"inc,omitempty"`
	Add    map[string][]any   `json:"add,omitempty"`    // add elements to a set (array)
	Remove map[string][]any   `json:"remove,omitempty"` // remove elements from a set (array)
}

// Op is one mutation as a resolver sees it.
type Op struct {
	Kind   OpKind
	Put    map[string]any // Kind == Put
	Patch  PatchOps       // Kind == Patch
	Base   uint64         // the document version the device last saw (0: none)
	HLC    hlc.Timestamp  // when the device made the change
	Device string         // the device that made it (user-qualified)
	// Force marks a mutation that resolves a manual conflict: a person
	// looked at both versions and chose (or merged) this state. The engine
	// sets it; devices cannot. Every built-in mode applies a forced op as
	// client-wins does (see ModeClientWins): as sent, whatever the clocks,
	// the field rules' merging and the delete policy say. Custom resolvers
	// should honour it the same way.
	Force bool
}

// Doc is the current state of a document with its sync metadata.
type Doc struct {
	Fields     map[string]any
	Clocks     map[string]hlc.Timestamp // per field: HLC of the write that set or unset it
	Deleted    bool
	DeletedAt  hlc.Timestamp
	Version    uint64
	LastDevice string // device of the last change (user-qualified)
}

// Clone returns a deep copy of d that shares no map or slice with it, as a
// resolver must return when it keeps the current state (e.g. a discarded
// op: Result{Outcome: Merged, Doc: cur.Clone()}).
func (d *Doc) Clone() Doc { return cloneDoc(d) }

// Outcome of resolving one op.
type Outcome string

const (
	Applied  Outcome = "applied"
	Merged   Outcome = "merged"
	Conflict Outcome = "conflict"
	Rejected Outcome = "rejected"
)

// Result is what a resolver decided. For Applied and Merged, Doc is the next
// state (the engine sets its Version). For Conflict and Rejected, Doc is
// ignored and nothing is written.
type Result struct {
	Outcome Outcome
	Doc     Doc
	// Code and Reason explain a Rejected outcome (a protocol error code).
	Code   string
	Reason string
}

// Resolver decides how one op combines with the current state of a document.
//
// Resolvers are pure functions: no I/O, no clocks, no randomness, no
// retained state. cur is nil when the document has never existed (or its
// tombstone was compacted away). The resolver must not mutate cur or op; it
// returns a fresh Doc. It is called concurrently and must be goroutine-safe.
type Resolver interface {
	Resolve(cur *Doc, op Op) (Result, error)
}

// ResolverFunc adapts a function to Resolver.
type ResolverFunc func(cur *Doc, op Op) (Result, error)

// Resolve implements Resolver.
func (f ResolverFunc) Resolve(cur *Doc, op Op) (Result, error) { return f(cur, op) }

// ErrUnknownResolver is returned when config names a resolver nobody registered.
var ErrUnknownResolver = errors.New("conflict: unknown resolver")

// Errorf builds a conflict-prefixed error.
func Errorf(format string, args ...any) error { return fmt.Errorf("conflict: "+format, args...) }
