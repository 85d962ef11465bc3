// Package embedded is the single-machine storage.Store: one bbolt file, used
// by `syncgate serve` when no MongoDB is configured.
//
// # Contract
//
// A *Store is goroutine-safe. It implements storage.Store exactly as the
// storage package documents it and passes storage/storagetest. Errors carry
// the prefix "embedded: " and wrap their cause (test with errors.Is);
// storage.ErrNotFound and storage.ErrClosed come wrapped, while a lost race
// in Commit is returned as a bare *storage.CommitError.
//
// Commit stamps Entry.Committed, Receipt.Created, ConflictRecord.Created
// and the Closed of a closed conflict record with Options.Now when the
// caller left them zero, and never modifies the caller's batch. An entry
// whose MutationID is 0 is not a device's mutation (a server-made change)
// and is not checked against, or added to, the mutation index.
//
// # What blocks
//
// bbolt allows one write transaction at a time and any number of read
// transactions beside it (readers see a snapshot and never wait for the
// writer). So:
//   - Commit, SaveCheckpoints and the write halves of Compact and
//     ExpireReceipts queue behind one another. Each write ends with an
//     fsync, so an acknowledged write survives a crash; a write with nothing
//     to change is rolled back and costs no fsync.
//   - Head, Horizon, Latest, Version, Read, Scopes, Receipt, Device,
//     Conflict and ListConflicts never wait for writers.
//   - Compact scans in read transactions and deletes each chunk of at most
//     1000 keys in its own short write transaction; ExpireReceipts deletes in
//     write transactions of at most 1000 receipts; AgeConflicts abandons or
//     deletes at most 1000 records (and visits at most 1000 scopes) per
//     write transaction. Housekeeping therefore delays a Commit by at most
//     one chunk, never by a whole pass.
//   - When the file grows, bbolt remaps it, and the writer doing so waits
//     for the read transactions in flight. Reads are short (Read is bounded
//     by its limit), so this wait is short too.
//   - Open waits at most one second for the file lock, then fails: only one
//     process may open a file. Close waits for transactions in flight (or
//     for ctx, then finishes in the background).
//
// # Layout
//
// Keys that combine client-chosen strings use uvarint length prefixes, so
// no byte in an id can make two keys collide. Numbers are 8-byte big-endian,
// so that bbolt's byte order is numeric order.
//
//	meta                       "schema" -> 2
//	scopes/<scope>/log         seq -> JSON storage.Entry (the source of truth)
//	scopes/<scope>/docs        len|collection|id -> version|seq of the latest entry (seq 0: purge marker)
//	scopes/<scope>/chain       seq -> prev seq|jump seq|jump version (see chain.go)
//	scopes/<scope>  "horizon"  -> highest seq of a tombstone compaction purged
//	mutations                  len|user|len|device|mid -> seq|scope
//	receipts                   len|user|len|device|mid -> JSON storage.Receipt
//	receipt-age                created|len|user|len|device|mid -> (empty)
//	devices                    len|user|len|device -> JSON storage.DeviceState
//	conflicts/<scope>/records  id -> JSON storage.ConflictRecord
//	conflicts/<scope>/created  created|id -> (empty), every record
//	conflicts/<scope>/open     created|id -> (empty), open records
//	conflicts/<scope>/closed   closed|id -> created, closed records
//	sessions                   session id -> JSON session (sessions.go)
//	session-users              len|user|created|id -> (empty): ListSessions, the per-user cap
//	session-expiry             expires|id -> (empty): SweepSessions
//
// The session buckets are created by the first session write (a file
// without them has no sessions; no schema change). Session writes go
// through bbolt's Batch, which coalesces concurrent calls into one
// transaction and one fsync: a reconnect storm begins thousands of
// sessions at once. BeginSession reads, inserts and evicts in one
// transaction, so the per-user cap is exact. A sweeper goroutine, started
// by Open and stopped by Close, calls SweepSessions every
// Options.SessionSweepEvery (1 m); it deletes a chunk of at most 1000
// sessions per write transaction.
//
// Media (NewMedia, media.go) keeps its bytes in files and its metadata in
// these buckets, created by NewMedia:
//
//	media          len|scope|id -> JSON storage.MediaInfo
//	media-sha      len|scope|sha256 hex -> id: the dedupe key
//	media-ids      id -> scope: which blob files are live
//	media-uploads  upload id -> JSON upload (scope, size, mime, sha256, part size, times, media id once completed)
//	media-parts    len|upload id|BE uint32 n -> JSON {size, sha256}
//
// and the files under MediaOptions.Dir (<data_dir>/media):
//
//	blobs/<id[:2]>/<id>   one file per media, its bytes
//	uploads/<upload>/<n>  the stored parts of an upload
//	tmp/                  files being written
//
// A Put streams into a temporary file (hashing as it goes), fsyncs it, and
// checks the scope's dedupe key; new content is renamed into blobs/ (and
// the directory fsynced) before the transaction that inserts its three
// keys, which re-checks the dedupe key (bbolt's single writer makes the
// check and the insert atomic; the loser removes its file). A part is
// written the same way and renamed into uploads/ inside the transaction
// that records it. Metadata therefore never names a missing file; a crash
// can only leave files that no metadata names, and NewMedia removes them
// (every temporary file, and blob files and upload directories without
// keys) before the first write: the bbolt file lock guarantees that no
// other process writes in the directory. Delete removes the keys, then
// the file; an open reader keeps reading the unlinked file.
//
// The docs bucket is both the (scope, collection, id, version) guard and the
// index Latest reads through; it points at the log rather than copying the
// state, which halves the bytes a commit writes. The head is the last log
// key: compaction never deletes it, so a seq is never reused. The mutations
// bucket is the (device, mutation id) guard and lets Receipt rebuild a lost
// receipt from the log; compaction removes its key together with the
// entry. receipt-age orders receipts by creation so that ExpireReceipts
// touches only what expires.
//
// When compaction purges a document's tombstone, it rewrites the
// document's docs value to the tombstone's version and seq 0 instead of
// deleting the key: a purge marker. Latest returns it as the seq-0 marker
// entry storage documents, and the version guard continues from it, so the
// document's versions never restart. A marker costs its key and 16 bytes
// and is kept forever. Schema 1 stores deleted the key, so a document they
// purged has no marker and may start again from version 1 (its version is
// lost); that needs no conversion, since a missing key reads as it did.
//
// The chain bucket answers Version: each entry's link points at the entry
// of its document's previous version and at an older one (skew-binary jump
// pointers), so finding version v from the latest version L takes
// O(log(L-v)) reads. It is keyed by seq, so a commit appends to it as to the
// log; an index ordered by document would dirty a page per document a
// batch touches. Compaction deletes a link with its entry; the first entry
// after a purge marker links to nothing.
//
// Conflict records live apart from the scope buckets, so that records alone
// do not make a scope, and AgeConflicts visits only scopes that have
// records (it drops a scope's conflict buckets once its last record goes).
// The created index gives ListConflicts its (Created, ID) order; the open
// index serves openOnly listing (every welcome) and abandonment, the
// closed index deletion, so that neither reads records it leaves alone. A
// closed key's value is the record's created time, so deletion finds the
// created key without decoding the record.
//
// A scope bucket exists once the scope has an entry, so Scopes lists exactly
// the scopes with a log. Open upgrades a schema 1 file (no chain, no
// conflicts) by building the chain from the log.
package embedded
