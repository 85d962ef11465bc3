// Package storage defines what the sync engine needs from a database: an
// append-only scope log whose commit point is a single (ordered) insert
// guarded by uniqueness, plus device state, receipts and manual conflict
// records.
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
//   - Entry.Committed, Receipt.Created, ConflictRecord.Created and the
//     Closed of a closed ConflictRecord are stamped with the store's clock
//     when zero and kept otherwise.
//   - Receipts, conflict records and LastMutationID are written only when
//     every entry of the batch committed: a partial win, or a batch whose
//     first entry lost, writes none of them. A batch with no entries (every
//     mutation was rejected or became a conflict) simply writes them. A
//     batch's conflict records belong to its Scope, and a malformed one
//     (no ID, another scope, an unknown status, an open record with Closed
//     set) is refused with the whole batch.
//   - A conflict record is keyed by (Scope, ID). Writing one whose key
//     exists replaces it whole, unconditionally (last write wins), which
//     makes a retried commit idempotent and a status change a rewrite; the
//     store never compares statuses. A caller rewriting a record keeps its
//     Created, which orders the scope's records with ID as the tie break.
//     The engine derives ID from the conflicting mutation's (device,
//     mutation id), so concurrent writers of one record write the same
//     content or a status change.
//   - AgeConflicts may race with a rewrite of the same record. A store
//     need not make that race atomic (a MongoDB store may implement it as
//     an update filtered by status, which FerretDB does not apply
//     atomically): the record then ends resolved or abandoned, either one,
//     but never open. A deleted record's ID may be written again.
//   - Conflict records do not make a scope: Scopes lists scopes with a log.
//   - Version finds an entry by (scope, collection, id, version), the key
//     of the version guard; ErrNotFound once compaction removed it.
//   - A log entry's version must be exactly the document's latest version + 1
//     (1 for a document that never had an entry); a store that enforces
//     uniqueness by index also checks this before inserting. A document's
//     versions never restart, not even after compaction purged it: devices
//     that saw the tombstone still hold its version, and skip (or refuse as
//     stale) anything not above it.
//   - Purging a tombstone therefore leaves a marker of the document: the
//     purged tombstone's (scope, collection, id, version) and nothing else.
//     While the document has no newer entry, Latest returns the marker as
//     an Entry with Seq 0 and Deleted set (every field but Scope,
//     Collection, DocID and Version zero) and the version guard treats its
//     version as the document's latest; once a newer entry exists, that
//     entry is the latest and the marker no longer matters (a store may
//     overwrite it or keep it). A marker is not a log entry: Read, Head and
//     Version never return it. The embedded store keeps it as a docs ref
//     with seq 0; a MongoDB store would keep a small marker document per
//     purged document. Without transactions, a store writes the marker
//     before it deletes the tombstone, so no reader of the guard ever sees
//     neither. Markers are a few dozen bytes and must be kept forever (the
//     id may be written again at any time); no migration creates them for
//     documents purged before this rule, whose version is lost.
//   - After compaction removes an entry, the (device, mutation id) guard for
//     it goes too; replays older than the retention are caught by the
//     device's LastMutationID instead.
//   - A store that cannot write a batch atomically (MongoDB without
//     transactions) may lose, on a failure after the entries, only what
//     the log can rebuild: the receipts of mutations that have an entry,
//     and the device's progress (derived from the log anyway). Receipts of
//     outcomes without an entry (Seq 0: merged with nothing to write,
//     conflicts, rejections) and conflict records must be durable no later
//     than the entries, e.g. written before them.
//   - Nothing else (materialized documents, receipts, device checkpoints) is
//     needed for correctness: if it lags or is lost, the log wins.
//   - No method may rely on transactions, conditional updates or $inc for
//     correctness (see the brief: they lose writes on the test server).
//
// Device sessions (Sessions, sessions.go) are a separate interface that the
// same concrete stores implement, in the same database. Contract:
//   - Expiry is exact for readers: a session is gone at its ExpiresAt
//     (exclusive) for every method, whether or not SweepSessions, a
//     sweeper goroutine or a TTL index has deleted it yet. SweepSessions
//     only reclaims space.
//   - Ids are minted by the store (NewSessionID: 32 random bytes, hex) and
//     never taken from the client. BeginSession resumes only a live session
//     of the same user and device; any other id (unknown, expired, another
//     user's or device's) begins a new session, so an id is useless without
//     a token of its user and device. An unexpired revoked session of the
//     same user and device is refused with ErrSessionRevoked.
//   - A revocation is durable and wins every race: once RevokeSession (or
//     an eviction) returned, no TouchSession or resume makes the session
//     live again. A store without atomic updates (FerretDB rewrites the
//     whole document on every update) keeps revocations as records of
//     their own, inserted once, never in a field a refresh could overwrite.
//   - The per-user cap orders a user's live sessions by (CreatedAt, ID)
//     and revokes (Evicted) all but the newest MaxPerUser. Without a
//     transaction, a store inserts first and evicts after listing: each
//     lister revokes only sessions outside the newest N of what it saw,
//     which are outside the newest N of all, and the last lister saw every
//     insert before it, so concurrent begins end with at most MaxPerUser
//     live sessions and never revoke one of the newest N.
//   - Refreshes (TouchSession, a resume) may race each other; the later
//     write may win, which only makes the expiry a little earlier or later.
//
// Media (media.go) is a third interface: blobs that documents reference
// with {"$media": id}, each belonging to a scope. The concrete stores
// provide it beside the Store (embedded.NewMedia, mongo.NewMedia), in the
// same database; storagetest.RunMedia checks both. Contract, besides the
// interface's comments:
//   - Content is streamed in and out (a Put never holds the whole blob;
//     a part at most), readers are seekable at no cost until the next Read.
//   - Dedupe is per scope by SHA-256, decided by a unique key on (scope,
//     sha256) (a bbolt key, a unique MongoDB index), never by a
//     conditional update: racing Puts of one content end with one media.
//   - A blob's bytes are durable before its metadata commits; a crash in
//     between leaves bytes no metadata names, which the store removes
//     (embedded: at NewMedia; MongoDB: SweepUploads, after 24 h).
//   - Uploads expire exactly like sessions: invisible at Expires for every
//     method, deleted with their parts by SweepUploads.
//   - Media is not reference-counted: deleting it leaves the documents
//     that reference it dangling (the engine checks references only when a
//     mutation adds them).
package storage
