// Package mongo is the production storage.Store: a MongoDB database
// (go.mongodb.org/mongo-driver/v2), used by `syncgate serve --mongo-uri`.
// Any number of gateway nodes may share one database.
//
// # Contract
//
// A *Store is goroutine-safe. It implements storage.Store exactly as the
// storage package documents it and passes storage/storagetest, on MongoDB
// 6/7 (standalone or replica set; see Sharding below) and on FerretDB
// v1.24, the test server. Errors carry the prefix "mongo: " and
// wrap their cause (test with errors.Is); storage.ErrNotFound,
// storage.ErrClosed and the context's error come wrapped, while a lost race
// in Commit is returned as a bare *storage.CommitError.
//
// Nothing relies on transactions, change streams, TTL, partial indexes,
// multi-accumulator $group, or on a conditional update or $inc for
// correctness: FerretDB has none of the first and loses concurrent
// conditional updates. What decides is the one ordered insert of the log,
// guarded by unique indexes; everything else is either an insert made
// idempotent by a unique key, a whole-document replace by _id (last write
// wins, which is the wanted semantics), or best effort (the materialized
// views, checkpoints). Device sessions use TTL indexes where the server
// has them, but never for correctness (see Sessions).
//
// Commit stamps Entry.Committed, Receipt.Created, ConflictRecord.Created and
// the Closed of a closed record with Options.Now when the caller left them
// zero, and never modifies the caller's batch. Times round-trip exactly:
// each is stored as a BSON date (milliseconds, for queries and people) plus
// a companion field with the nanoseconds within the millisecond
// (committedNs, createdNs, closedNs, seenNs). An entry whose MutationID is
// 0 is not a device's mutation and is not subject to the mutation guard.
//
// # Retries
//
// Every call retries retryable errors (network errors, timeouts, server
// selection failures, NotWritablePrimary, PrimarySteppedDown, shutdown and
// the other codes in retryable) with exponential backoff: by default 3
// attempts, 1 s, then ×2, capped at 8 s (Options.Retry). Context errors
// are never retried; after the last attempt the error wraps the cause.
// Every retried write is idempotent. The commit insert is the exception
// that needs care: a failure after the server applied it would make a
// blind retry collide with itself, so each entry carries a random nonce,
// and after a failure Commit counts the landed prefix (by _id and nonce)
// and inserts only the rest. Server selection waits 5 s per attempt by
// default (Options.ServerSelectionTimeout), so a push against a stopped
// MongoDB fails with a retryable error in seconds rather than minutes.
//
// # Layout
//
// Internal collections start with "_sg", which the protocol forbids as an
// app collection name, so they never collide with a materialized view.
//
//	_sg_log            one document per log entry (the source of truth):
//	                   {_id: log id, scope, seq, col, id, version, deleted,
//	                   mk, committed: date, committedNs,
//	                   entry: JSON text {nonce, op, device: {user, device},
//	                   mid, hlc, state, clocks}}
//	_sg_markers        one document per purged tombstone:
//	                   {_id, scope, col, id, version, seq, purged: date}
//	_sg_receipts       {_id: mutation key, user, device, mid, created: date,
//	                   createdNs, receipt: JSON text of storage.Receipt}
//	_sg_devices        {_id: device key, user, device,
//	                   checkpoints: [{scope, seq}], seen: date, seenNs}
//	_sg_device_marks   {_id: mutation key, dev: device key, mid}
//	_sg_view_marks     {_id: scope, seq}: the views reflect the log through
//	                   seq (repairViews, run by each compaction pass)
//	_sg_conflicts      {_id: conflict key, scope, cid, status, created: date,
//	                   createdNs, closed: date or null, closedNs,
//	                   record: JSON text of storage.ConflictRecord}
//	_sg_sessions       {_id: session id, user, device, node, platform,
//	                   appVersion, remember, ttlMs, created, connected,
//	                   seen, expiresAt: dates}
//	_sg_session_revocations
//	                   {_id: session id, user, at: date, evicted,
//	                   expiresAt: date}
//	_sg_media          {_id: media key, scope, id, sha256, size, mime,
//	                   file: GridFS file id, chunkSize, created: date,
//	                   createdNs} (see Media)
//	_sg_uploads        {_id: upload id, scope, size, mime, sha256,
//	                   partBytes, created, expires: dates (+Ns), media}
//	_sg_upload_parts   {_id: upload id "#" 6-digit part number, upload, n,
//	                   size, sha256, expires: date, data: binary}
//	_sg_blobs.files    the GridFS bucket of media blobs (255 KiB chunks):
//	_sg_blobs.chunks   standard GridFS documents; files.metadata holds
//	                   {scope, media: media key, mime, sha256, pending}
//	<app collection>   the materialized view, one per app collection
//
// Keys that combine client-chosen strings are length-prefixed, so no id can
// make two keys collide. The log id is "<len>:<scope>#<seq, 20 digits>"
// ("10:user:alice#00000000000000000042"): the (scope, seq) guard is then
// also a point read by _id, the only query FerretDB answers without
// scanning the collection. The device key is "<len>:<user><len>:<device>"
// (alice/phone is "5:alice5:phone"); the mutation key is the device key,
// "#" and the mutation id in 20 digits ("5:alice5:phone#00000000000000000007"),
// so a device's keys sort by mutation id; the conflict key is
// "<len>:<scope><record id>".
//
// The rest of an entry (op, device, mutation id, HLC, state, clocks) is one
// JSON text field: it round-trips exactly as the engine wrote it (the
// embedded store keeps JSON too), Clocks keys may contain '.' and '$'
// (union metadata), which are not safe BSON field names, and few top-level
// fields keep a document cheap to decode (FerretDB decodes every document
// a query scans, at a cost per field). The materialized views hold the
// state as BSON for backends.
//
// The mk field is the (device, mutation id) guard: the mutation key of the
// entry's mutation, or, for an entry with MutationID 0, "-" and the entry's
// nonce. FerretDB has no partial indexes, so a unique index on mk
// cannot skip such entries; the synthetic value is unique by construction
// and can never equal a mutation key (those start with a digit).
//
// A receipt's, record's and checkpoint's JSON or array form likewise keeps
// scope names and state field names out of BSON field names. A conflict
// record's status and closed fields are authoritative over its JSON:
// AgeConflicts changes only them.
//
// # Indexes
//
// Open creates these, idempotently (createIndexes with the same definition
// is a no-op; a different definition under one of these names fails Open).
// None is partial or sparse; the two expires indexes are TTL
// (expireAfterSeconds 0) and are created only where the server has TTL
// indexes (see Sessions).
//
//	_sg_log           scope_seq             {scope: 1, seq: 1}                        unique
//	_sg_log           doc_version           {scope: 1, col: 1, id: 1, version: 1}     unique
//	_sg_log           mutation              {mk: 1}                                   unique
//	_sg_markers       doc_version           {scope: 1, col: 1, id: 1, version: 1}     unique
//	_sg_markers       scope_seq             {scope: 1, seq: 1}
//	_sg_receipts      created               {created: 1, createdNs: 1}
//	_sg_device_marks  dev_mid               {dev: 1, mid: 1}
//	_sg_conflicts     scope_created         {scope: 1, created: 1, createdNs: 1, cid: 1}
//	_sg_conflicts     scope_status_created  {scope: 1, status: 1, created: 1, createdNs: 1, cid: 1}
//	_sg_conflicts     status_created        {status: 1, created: 1, createdNs: 1}
//	_sg_conflicts     status_closed         {status: 1, closed: 1, closedNs: 1}
//	_sg_sessions      user_created          {user: 1, created: 1}
//	_sg_sessions      expires               {expiresAt: 1}                            TTL 0
//	_sg_session_revocations  user           {user: 1}
//	_sg_session_revocations  expires        {expiresAt: 1}                            TTL 0
//	_sg_media         scope_sha             {scope: 1, sha256: 1}                     unique
//	_sg_uploads       expires               {expires: 1}
//	_sg_upload_parts  upload_n              {upload: 1, n: 1}
//	_sg_upload_parts  expires               {expires: 1}
//	_sg_blobs.files   filename_1_uploadDate_1  {filename: 1, uploadDate: 1}
//	_sg_blobs.files   pending               {"metadata.pending": 1, uploadDate: 1}
//	_sg_blobs.chunks  files_id_1_n_1        {files_id: 1, n: 1}                       unique
//	<app collection>  sync_scope            {"_sync.scope": 1, "_sync.id": 1}
//
// NewMedia (not Open) creates the media indexes; the two GridFS ones carry
// the names and keys the drivers give them, so GridFS tools and drivers
// find them in place. The last one is created on each app collection the first time a process
// writes its view. The three unique indexes of _sg_log are the commit
// guards (with _id, which carries (scope, seq) too); scope_seq also serves
// Head, Read, Compact and Scopes, doc_version also serves Latest, Version
// and the version check before the insert, mutation also serves Receipt's
// rebuild from the log and Device's highest logged mutation.
//
// Sharding: MongoDB allows a unique index on a sharded collection only if
// it starts with the shard key. scope_seq and doc_version do (shard key
// {scope: 1}), but the mutation guard is global (a device's mutation may
// not commit in two scopes), so _sg_log must stay unsharded for all three
// guards to hold; the other collections may be sharded by their _id.
//
// # The commit
//
// Commit first reads, with one query, what a unique index cannot check:
// the head and each touched document's latest version (newest log entry
// or purge marker). The first seq must be head+1 (not a seq compaction
// freed below the head, and not a gap) and each version exactly latest+1
// (not a jump, and not a version compaction freed). It then inserts the
// entries that passed with one ordered InsertMany. The unique indexes
// decide every race between those reads and the insert: a duplicate key
// at entry i leaves entries [0, i) committed and stops the batch. MongoDB
// names the index in the error; FerretDB does not, so then Commit reads
// the keys back (the seq by _id first) to tell TakenSeq, TakenVersion and
// TakenMutation apart. The most common lost race, a seq another writer
// took, is found before the query by a point read of the first entry's _id.
//
// Without a transaction, what goes with the entries is ordered so that a
// failure at any point loses only what the log can rebuild (the storage
// contract):
//
//  1. Before the insert: the receipts of outcomes without an entry (Seq 0)
//     and the conflict records (after reading their previous versions).
//  2. The insert.
//  3. After a full win: the receipts of outcomes with an entry (rebuildable
//     from the log), then the device's mark; the views concurrently.
//     After a lost race (a *storage.CommitError): step 1 is undone, each
//     document back to its previous version or deleted, so a lost batch
//     leaves no receipt or record behind. A partial win keeps the
//     outcomes of the mutations its committed entries cover (at or below
//     the highest mutation id among them, per device): the device's mark,
//     derived from the log, already covers those, so a resend is answered
//     from them as a replay; every other mutation is above the mark and is
//     decided again when resent. After a failure that leaves it unknown
//     whether the entries landed, nothing is undone: leftovers of a batch
//     that did not land are rewritten by the engine's retry, and the
//     device's mark has not moved.
//
// While a batch is in flight, its step 1 documents are visible to readers
// (a concurrent replay of the same mutation through another node may be
// answered from them).
//
// # LastMutationID without conditional updates
//
// A device's LastMutationID is the higher of two maxima. First, its
// highest mutation in the log: one seek on the mutation index, where the
// device's keys sort by mutation id; so the mark covers every logged
// mutation even if a batch's progress write was lost. Second, the highest
// of its rows in _sg_device_marks, which carries the mark of batches
// without entries and survives compaction: a commit inserts the row
// (device, LastMutationID) (a duplicate means it exists) and then deletes
// the device's rows below it. Rows are immutable, so a concurrent commit of
// the same device on another node can neither lower the maximum nor lose
// its own advance: a delete only removes rows below a row its own caller
// inserted.
//
// # Horizon and purge markers
//
// Purging a tombstone inserts its marker first and deletes the entry
// second (no transaction needed: a reader of the version guard sees one or
// the other, or both after a crash between the two, which the next pass
// finishes). Markers are never updated or deleted: a document purged again
// later gets another marker with a higher version and seq. So a document's
// latest version is max(newest log entry, newest marker), and a scope's
// horizon is its highest marker seq: both derive from immutable rows, and
// neither depends on compaction passes not overlapping.
//
// # Materialized views
//
// After each commit, the state of every document it changed is written to
// the collection named after the app collection:
//
//	{_id: {scope: "user:alice", id: "n1"},
//	 _sync: {scope, id, version, seq, deleted, device: {user, device}, mid,
//	         hlc: {wall, logical, node}, committed: date},
//	 title: "…", done: false, …}
//
// The _id combines scope and id (in that field order), so two scopes can
// hold the same id. The state's fields are at the top level (whole numbers
// as int64, others as double); a tombstone keeps only _id and _sync with
// deleted: true, and compaction deletes the document when it purges the
// tombstone. Backends read views with ordinary queries, for example
// find({"_sync.scope": "user:alice", "_sync.deleted": false}), and must
// not write them.
//
// Each view write is a ReplaceOne upsert filtered by {_id, _sync.version <
// new}, in one unordered BulkWrite per collection; when the view already
// holds a newer version the upsert collides on _id (11000, or
// InternalError on FerretDB), which is the expected no-op. The views are
// best effort: a failed write is logged at Warn, never returned, and two
// nodes racing on one document can leave its view one version behind on
// FerretDB (conditional updates are not atomic there) until the document's
// next change. The log is the truth.
//
// # Compaction
//
// Compact walks the scope's log in seq order, Options.Chunk (1000)
// candidates at a time: entries below the head committed before the
// cutoff, read without their state. It reads each touched document's
// latest log version and markers, deletes superseded entries, and purges
// tombstones that are their document's newest entry (marker first). Each
// chunk's deletions are one DeleteMany by _id.
//
// # Sessions
//
// Device sessions (storage.Sessions) are documents of _sg_sessions with
// millisecond times; a user's sessions sort by (created, _id). Every read
// filters expiresAt > now (the store's clock), so an expired session is
// gone at once whatever deletes it later.
//
// Deleting: Open creates the expires indexes with expireAfterSeconds 0, so
// MongoDB's TTL monitor deletes a document about a minute after its
// expiresAt. FerretDB v1.24 refuses such an index with code 238
// (NotImplemented: "Index option expireAfterSeconds is not implemented
// yet") and creates nothing; Open then skips the TTL indexes and starts a
// sweeper goroutine that calls SweepSessions every
// Options.SessionSweepEvery (1 m), stopped by Close. Any other error
// fails Open. (TestSessionExpiry pins both behaviours.)
//
// Revoking: FerretDB applies every update as a read and a whole-document
// write, so a refresh ($set seen, expiresAt) racing a revocation would
// write back revoked: false. A revocation is therefore a document of its
// own in _sg_session_revocations, keyed by the session id: inserted once
// (a duplicate _id means it exists), never updated, and read beside the
// session by _id. Refreshes and resumes read it first, and a resume reads
// it again after its update; a refresh that read "not revoked" just before
// the insert may still extend the session once, so a revocation is kept
// until the later of the session's expiry and now + its TTL, plus an hour
// (covering clock skew between nodes).
//
// The per-user cap: BeginSession inserts the new session, then lists the
// user's live sessions (sessions minus revocations, in (created, _id)
// order) and inserts an evicted revocation for each beyond the newest N.
// All listers agree on the order, a lister only revokes sessions outside
// the newest N of what it saw (so outside the newest N of all), and the
// last lister saw every earlier insert: concurrent begins on any nodes end
// with at most N live sessions, without a transaction or a conditional
// update. Clock skew between nodes can make a node's new session sort
// before others and be evicted at once; BeginSession then returns it
// revoked and the gateway refuses the hello.
//
// # Media
//
// Media (NewMedia) is the storage.Media of a Store: blobs in the GridFS
// bucket _sg_blobs (MediaOptions.Bucket) in chunks of 255 KiB, in the
// standard layout, so mongofiles --prefix _sg_blobs and any driver's
// GridFS read them. Metadata is one document per media in _sg_media, keyed
// by the media key "<len>:<scope><id>" (a point read by _id, so a media of
// another scope is simply not found). Its unique (scope, sha256) index is
// the dedupe: a Put inserts the document after writing the chunks, and a
// duplicate key on scope_sha means the scope holds the content (the new
// chunks are deleted and the existing media returned); no conditional
// update is involved, so it holds on FerretDB and across nodes.
//
// The store writes GridFS itself rather than through the driver's upload
// stream (which holds a 16 MiB buffer per upload and cannot retry a
// failed insert): four chunks (about 1 MiB, all a Put holds in memory) per
// unordered insert, with _ids chosen before the insert, so a retried insert
// that partly landed only collides with itself. A blob is written in four
// steps: (1) the files document, metadata.pending true, length 0; (2) the
// chunks; (3) the _sg_media insert, the commit point; (4) the files
// document, final. Downloads need only (2) and (3). A process that dies
// mid-way leaves a pending blob; SweepUploads finalizes a pending blob
// older than 24 h if its _sg_media document exists and deletes it if not.
// Delete marks the blob pending, deletes the _sg_media document, then the
// chunks and the files document, so a crash at any step is finished by the
// sweep too.
//
// Downloads do not use the driver's stream either, which can only Skip
// forward by fetching every chunk before the offset: the reader queries
// {files_id, n >= k} sorted by n from the chunk holding the offset, lazily
// on the next Read after a Seek, 16 chunks per batch. A range costs the
// chunks it covers (on MongoDB; FerretDB scans the collection anyway).
//
// A resumable upload is a document of _sg_uploads; each part is one
// document of _sg_upload_parts (a part is at most 15 MiB, under BSON's 16
// MiB), inserted by its _id: the duplicate key of a retry is answered by
// comparing the stored SHA-256 (same: a no-op; different:
// ErrPartConflict). CompleteUpload lists the parts without their data,
// then streams them, one document at a time, into a new blob exactly as
// Put does, records the media id in the upload document (a repeated
// complete returns it) and deletes the parts. Reads filter uploads by
// expires > now; SweepUploads deletes uploads and parts (each part carries
// its upload's expiry) with expires <= now. No TTL index: the sweep must
// delete the parts with their upload, and FerretDB has none.
//
// FerretDB v1.24 refuses field names starting with '$' in stored
// documents, so the materialized view of a document holding a
// {"$media": id} reference fails to write there (logged at Warn; the log,
// which keeps the state as JSON text, is unaffected). MongoDB 5.0 and
// later document support for nested $-prefixed names in inserts and
// replacements (not verified here: the tests only reach FerretDB).
//
// # Other assumptions
//
// SaveCheckpoints reads, merges forward in Go and replaces: two concurrent
// saves for one device can lose one's advance. Checkpoints are
// informational (the device states its own in hello, and the log decides
// what it receives), so the next save repairs it.
//
// AgeConflicts abandons with one UpdateMany filtered by status and deletes
// with one DeleteMany; its race with a rewrite of the same record ends
// resolved or abandoned, as the storage contract allows.
//
// Scopes skips through the scope_seq index with one point read per scope
// listed. On FerretDB (SQLite) only _id equality is pushed down to the
// database; every other query scans its collection, so the test server
// slows down as the log grows, which real MongoDB does not.
package mongo
