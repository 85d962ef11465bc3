// Package storage defines what the sync engine needs from a database: an
// append-only scope log whose commit point is a single (ordered) insert
// guarded by uniqueness, plus device state and receipts.
//
// Implementations live in sub-packages (embedded = bbolt, mongo = MongoDB)
// and all of them pass the one conformance suite in storage/storagetest.
//
// Contract for implementations:
//   - Every method is goroutine-safe and honours ctx.
//   - Commit is the only write that decides anything. It must reject, with a
//     *CommitError, any entry whose (scope, seq), (scope, collection, id,
//     version) or (device, mutation id) already exists, and it must never
//     leave a gap: entries are inserted in order and the first rejected entry
//     stops the batch. Entries before it stay committed (a partial win).
//   - Entry.Committed and Receipt.Created are stamped with the store's clock
//     when zero and kept otherwise.
//   - A log entry's version must be exactly the document's latest version + 1
//     (1 for a document without entries); a store that enforces uniqueness
//     by index also checks this before inserting.
//   - After compaction removes an entry, the (device, mutation id) guard for
//     it goes too; replays older than the retention are caught by the
//     device's LastMutationID instead.
//   - Nothing else (materialized documents, receipts, device checkpoints) is
//     needed for correctness: if it lags or is lost, the log wins.
//   - No method may rely on transactions, conditional updates or $inc for
//     correctness (see the brief: they lose writes on the test server).
package storage
