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
//     writes) and Result.Doc is the combined state. The engine commits it
//     if it differs from the current state and tells the device what won.
//   - Conflict: reserved for the manual rule (not applied, a record is kept).
//   - Rejected: the op cannot apply to this document (Code "bad_op" with a
//     Reason). Nothing is written.
//
// A non-nil error means the resolver itself is broken or misconfigured, not
// that the op is bad; the engine treats it as an internal error.
//
// The engine owns Version: resolvers return the current Version unchanged
// (0 for a new document) and the engine stores version+1.
//
// # Concurrency
//
// An op is concurrent with the current state when the device had not seen
// it: op.Base < cur.Version and the last change came from another device
// (see Concurrent). A device's own queued offline edits are therefore never
// concurrent with each other, whatever base they carry.
//
// # Default
//
// Collections without their own rule use LWW with DeleteWins: last writer
// wins per top-level field by HLC, and a delete beats a concurrent update
// (as in Realm). Registry maps collections to resolvers; Lookup and Catalog
// build resolvers from the names used in config.
package conflict
