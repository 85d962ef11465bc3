// Package conflict decides how a mutation from a device combines with the
// server's current state of a document.
//
// # Contract
//
// A Resolver is a pure function of (current document, op). It does no I/O,
// reads no clock, draws no random numbers and keeps no state between calls,
// so the engine can call it again after losing a commit race and get the
// same answer, and a property test can replay histories in any order. It
// never mutates its inputs and returns a Doc that shares no maps or slices
// with them: the engine keeps both the old and the new state and callers
// reuse decoded maps. Resolvers are called from many goroutines at once.
//
// A Resolver reports one Outcome:
//
//   - Applied: nothing concurrent happened and every part of the op took
//     effect.
//   - Merged: the op met concurrent changes (or lost some fields to newer
//     writes, or a field rule ignored part of it) and Result.Doc is the
//     combined state. The engine commits it if it differs from the current
//     state and tells the device what won.
//   - Conflict: the manual mode did not apply a concurrent op; the engine
//     keeps a conflict record (Result.Doc is ignored, Result.Reason says
//     why).
//   - Rejected: the op cannot apply to this document (Code "bad_op" with a
//     Reason). Nothing is written.
//
// A non-nil error means the resolver itself is broken or misconfigured, not
// that the op is bad; the engine treats it as an internal error.
//
// The engine owns Version: resolvers return the current Version unchanged
// (0 for a new document) and the engine stores version+1. LastDevice is
// op.Device, except where an op is discarded and Result.Doc is an exact
// copy of the current document.
//
// # Concurrency
//
// An op is concurrent with the current state when the device had not seen
// it: op.Base < cur.Version and the last change came from another device
// (see Concurrent). A device's own queued offline edits are therefore never
// concurrent with each other, whatever base they carry.
//
// # Collections: modes and field rules
//
// A Policy is the built-in resolver: a Mode decides whether an op applies,
// field rules decide how fields combine when it does.
//
//   - ModeLWW (default): every op applies; each top-level field combines by
//     its FieldRule (Policy.Fields, else Policy.Default, else lww):
//     lww (lww.go), max (max.go), min (min.go), union (union.go), counter
//     (counter.go). Deletes against concurrent updates follow
//     Policy.Deletes.
//   - ModeServerWins: a concurrent op is discarded (Merged, document
//     unchanged); other ops apply as in ModeLWW.
//   - ModeClientWins: every op applies as sent, whatever the clocks (which
//     only move forward) and the field rules' merging.
//   - ModeManual: a concurrent op returns Conflict; other ops apply as in
//     ModeLWW.
//
// Op.Force (set by the engine on a mutation that resolves a manual
// conflict) applies the op as ModeClientWins does, under every mode, delete
// policy and field rule: a person chose that state.
//
// LWW{Delete} is Policy{Mode: ModeLWW, Deletes: Delete} without field
// rules, and the default for collections without their own rule.
//
// # Deletes
//
// When an op saw the current state (not concurrent), every mode treats
// deletes the same: a delete tombstones the document, and an update of a
// tombstone recreates the document from empty fields and clocks (whatever
// its HLC). When they are concurrent:
//
//	mode / deletes         update meets tombstone     delete meets live doc     delete meets tombstone
//	lww, delete-wins       discarded (Merged, copy)   applies (Merged)          Merged, tombstone kept
//	lww, update-wins       resurrects from empty      discarded (Merged, copy)  Merged, tombstone kept
//	server-wins            discarded (Merged, copy)   discarded (Merged, copy)  discarded (Merged, copy)
//	client-wins            resurrects from empty      applies (Merged)          Merged, tombstone kept
//	manual                 Conflict                   Conflict                  Merged, tombstone kept
//	any mode, Op.Force     resurrects from empty      applies                   tombstone kept
//
// "copy" is an exact copy of the current document (LastDevice too), which
// the engine recognizes as "nothing changed". A tombstone drops every field
// and clock, so a resurrected or recreated document holds only what the op
// writes: counters restart at 0, union sets are empty. "Merged, tombstone
// kept" commits nothing (both sides want the document gone); its DeletedAt
// is the later of the two.
//
// # Metadata in Doc.Clocks
//
// Clocks maps top-level field names to the HLC of the write that last
// decided them, DocClock ("*") to the newest put, and union fields keep
// per-element records under keys that contain '.', which no field name
// does (see union.go for the scheme). Storage must keep the map as is; the
// keys can hold any character (element keys are canonical JSON), so a
// store must not turn them into document paths.
//
// # Configuration
//
// Build turns the config's collections section (CollectionConfig per
// collection, "*" for the rest) into a Registry; Registry.Collection gives
// the engine each collection's resolver and size limits. Names that are
// not built-in modes are looked up in a Catalog, where an embedding
// program registers its own resolvers. docs/conflicts.md has worked
// examples of every rule and mode.
package conflict
