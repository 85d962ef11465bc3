package embedded

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/syncgate/syncgate/storage"
)

// Bucket and key names. They are constants (not []byte variables) so the
// package holds no mutable state; the []byte conversions are cheap next to
// an fsync.
const (
	bucketMeta       = "meta"        // schema version
	bucketScopes     = "scopes"      // scope name -> per-scope bucket
	bucketLog        = "log"         // (in a scope) BE seq -> JSON storage.Entry
	bucketDocs       = "docs"        // (in a scope) docKey -> BE version | BE seq of the latest entry
	bucketChain      = "chain"       // (in a scope) BE seq -> link: how to reach the document's older versions
	bucketMutations  = "mutations"   // mutKey -> BE seq | scope
	bucketReceipts   = "receipts"    // mutKey -> JSON storage.Receipt
	bucketReceiptAge = "receipt-age" // timeKey(Created) | mutKey -> empty
	bucketDevices    = "devices"     // devKey -> JSON storage.DeviceState
	bucketConflicts  = "conflicts"   // scope name -> per-scope conflict buckets:
	bucketRecords    = "records"     //   conflict id -> JSON storage.ConflictRecord
	bucketCreated    = "created"     //   timeKey(Created) | id -> empty (every record)
	bucketOpen       = "open"        //   timeKey(Created) | id -> empty (open records)
	bucketClosed     = "closed"      //   timeKey(Closed) | id -> timeKey(Created) (closed records)

	keySchema  = "schema"  // in meta
	keyHorizon = "horizon" // in a scope bucket: BE uint64

	// schemaVersion 2 added the chain index (and the conflicts buckets);
	// Open migrates a version 1 file.
	schemaVersion = 2
)

const (
	seqLen  = 8
	timeLen = 12 // 8 bytes of sign-flipped Unix seconds, 4 of nanoseconds
	docLen  = 16 // docs value: BE version, BE seq
	linkLen = 24 // chain value: BE prev seq, BE jump seq, BE jump version
)

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// seqKey is a log key; big-endian so that bbolt's byte order is seq order.
func seqKey(seq uint64) []byte { return u64(seq) }

func seqOf(k []byte) uint64 { return binary.BigEndian.Uint64(k) }

// appendString appends a length-prefixed string. Length prefixes (rather
// than a NUL separator) keep composite keys unambiguous whatever bytes
// client-chosen ids contain.
func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// docKey names a document within a scope. The id is last, so it needs no
// length prefix.
func docKey(collection, id string) []byte {
	b := make([]byte, 0, 2+len(collection)+len(id))
	b = appendString(b, collection)
	return append(b, id...)
}

// docRef is what the docs bucket remembers about a document's latest entry.
type docRef struct {
	version, seq uint64
}

func encodeDocRef(r docRef) []byte {
	b := make([]byte, docLen)
	binary.BigEndian.PutUint64(b, r.version)
	binary.BigEndian.PutUint64(b[8:], r.seq)
	return b
}

func decodeDocRef(v []byte) (docRef, error) {
	if len(v) != docLen {
		return docRef{}, fmt.Errorf("corrupt docs value (%d bytes)", len(v))
	}
	return docRef{version: binary.BigEndian.Uint64(v), seq: binary.BigEndian.Uint64(v[8:])}, nil
}

func devKey(d storage.DeviceRef) []byte {
	b := make([]byte, 0, 4+len(d.User)+len(d.Device))
	b = appendString(b, d.User)
	return appendString(b, d.Device)
}

// mutKey keys the mutation index and receipts: a device's mutations sort
// together, in mutation id order.
func mutKey(d storage.DeviceRef, mid uint64) []byte {
	return binary.BigEndian.AppendUint64(devKey(d), mid)
}

// mutRef is where the entry a mutation produced lives.
type mutRef struct {
	scope string
	seq   uint64
}

func encodeMutRef(r mutRef) []byte {
	return append(u64(r.seq), r.scope...)
}

func decodeMutRef(v []byte) (mutRef, error) {
	if len(v) < seqLen {
		return mutRef{}, errors.New("corrupt mutation index value")
	}
	return mutRef{seq: seqOf(v), scope: string(v[seqLen:])}, nil
}

// conflictKey is a key of the conflict indexes: records of a scope in
// (time, id) order.
func conflictKey(t time.Time, id string) []byte {
	return append(timeKey(t), id...)
}

// timeKey encodes t so that byte order is time order over the whole range
// of time.Time (UnixNano would overflow outside 1678..2262).
func timeKey(t time.Time) []byte {
	b := make([]byte, timeLen)
	binary.BigEndian.PutUint64(b, uint64(t.Unix())^(1<<63))
	binary.BigEndian.PutUint32(b[8:], uint32(t.Nanosecond()))
	return b
}
