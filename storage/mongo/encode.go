package mongo

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/sync/hlc"
)

// Collection names. App collections cannot start with "_sg" (see
// protocol.ValidateCollection), so these never collide with a
// materialized view.
const (
	collLog       = "_sg_log"
	collMarkers   = "_sg_markers"
	collReceipts  = "_sg_receipts"
	collDevices   = "_sg_devices"
	collMarks     = "_sg_device_marks"
	collConflicts = "_sg_conflicts"
)

// Index names: the duplicate-key errors of MongoDB name the index that
// fired, which is how Commit tells the guards apart without a re-read.
const (
	idxScopeSeq   = "scope_seq"
	idxDocVersion = "doc_version"
	idxMutation   = "mutation"
)

// devKey names a device: both parts length-prefixed, so that no pair of
// client-chosen strings can produce another pair's key ("a"/"bc" and
// "ab"/"c" differ). It always starts with a digit.
func devKey(d storage.DeviceRef) string {
	return strconv.Itoa(len(d.User)) + ":" + d.User + strconv.Itoa(len(d.Device)) + ":" + d.Device
}

// mutKey is the (device, mutation id) key: of log entries (the mutation
// guard), receipts and device marks. The id is zero-padded to 20 digits,
// so a device's keys sort by mutation id and lie between devKey+"#" and
// devKey+"$": Device finds the device's highest logged mutation with one
// seek on the mutation guard's index.
func mutKey(d storage.DeviceRef, mid uint64) string {
	return fmt.Sprintf("%s#%020d", devKey(d), mid)
}

// mutRange bounds the mutation keys of one device: lo < key < hi.
func mutRange(d storage.DeviceRef) (lo, hi string) {
	k := devKey(d)
	return k + "#", k + "$"
}

// noMutKey is the mutation-guard value of an entry with MutationID 0 (a
// server-made change, not a device's mutation). FerretDB has no partial
// indexes, so every entry needs a unique value: "-" plus the entry's
// nonce. It never equals a mutKey, which starts with a digit.
func noMutKey(nonce string) string { return "-" + nonce }

// logID is a log entry's _id: the length-prefixed scope and the
// zero-padded seq. It makes the (scope, seq) guard a point read by _id,
// the one query FerretDB answers without scanning the collection.
func logID(scope string, seq int64) string {
	return fmt.Sprintf("%d:%s#%020d", len(scope), scope, seq)
}

// conflictKey is a conflict record's _id: the length-prefixed scope, then
// the record's ID.
func conflictKey(scope, id string) string {
	return strconv.Itoa(len(scope)) + ":" + scope + id
}

// i64 converts a seq, version or mutation id for BSON, which has no
// unsigned integers. Values above MaxInt64 are refused by validateBatch.
func i64(v uint64) int64 { return int64(v) }

// clampSeq maps a uint64 bound onto the int64 range of stored seqs.
func clampSeq(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

// Times are stored as a BSON date (milliseconds, what queries and people
// read) plus the nanoseconds within that millisecond, so that a time
// round-trips exactly; sorting and cutoffs use both.
func msOf(t time.Time) bson.DateTime { return bson.DateTime(t.UnixMilli()) }
func nsOf(t time.Time) int32         { return int32(t.Nanosecond() % int(time.Millisecond)) }
func timeOf(ms bson.DateTime, ns int32) time.Time {
	return time.UnixMilli(int64(ms)).Add(time.Duration(ns)).UTC()
}

// before is a filter "field (with its nanosecond companion) < t".
func before(field, nsField string, t time.Time) bson.D {
	return bson.D{{Key: "$or", Value: bson.A{
		bson.D{{Key: field, Value: bson.D{{Key: "$lt", Value: msOf(t)}}}},
		bson.D{{Key: field, Value: msOf(t)}, {Key: nsField, Value: bson.D{{Key: "$lt", Value: nsOf(t)}}}},
	}}}
}

type hlcDoc struct {
	Wall    int64  `bson:"wall"`
	Logical int64  `bson:"logical"`
	Node    string `bson:"node"`
}

func hlcDocOf(t hlc.Timestamp) hlcDoc {
	return hlcDoc{Wall: t.Wall, Logical: int64(t.Logical), Node: t.Node}
}

// logDoc is one document of _sg_log: a storage.Entry. The fields queries
// and the unique indexes use are native BSON; the rest of the entry (op,
// device, mutation id, HLC, state, clocks) is one JSON text field, which
// round-trips exactly as the engine wrote it (Clocks keys may hold '.'
// and '$', which BSON field names must not, and the state's JSON numbers
// must not turn into BSON's int32/int64/double distinction). Few fields
// also keep the document cheap to decode: FerretDB decodes every document
// a query scans, at a cost per field. The materialized views hold the
// state as BSON.
type logDoc struct {
	ID          string        `bson:"_id"` // logID(scope, seq)
	Scope       string        `bson:"scope"`
	Seq         int64         `bson:"seq"`
	Col         string        `bson:"col"`
	DocID       string        `bson:"id"`
	Version     int64         `bson:"version"`
	Deleted     bool          `bson:"deleted"`
	MK          string        `bson:"mk"`
	Committed   bson.DateTime `bson:"committed"`
	CommittedNs int32         `bson:"committedNs"`
	Body        string        `bson:"entry"`
}

// entryBody is the JSON text of logDoc.Body. Nonce is random per insert
// attempt: it tells a commit's own entry from another writer's entry of
// the same seq after a lost reply.
type entryBody struct {
	Nonce  string                   `json:"nonce"`
	Op     storage.Op               `json:"op"`
	Device storage.DeviceRef        `json:"device"`
	MID    uint64                   `json:"mid,omitempty"`
	HLC    hlc.Timestamp            `json:"hlc"`
	State  map[string]any           `json:"state,omitempty"`
	Clocks map[string]hlc.Timestamp `json:"clocks,omitempty"`
}

// logInfo is the part of a log document compaction and the guards decide
// on; it leaves the body on the server.
type logInfo struct {
	ID          string        `bson:"_id"`
	Seq         int64         `bson:"seq"`
	Col         string        `bson:"col"`
	DocID       string        `bson:"id"`
	Version     int64         `bson:"version"`
	Deleted     bool          `bson:"deleted"`
	Committed   bson.DateTime `bson:"committed"`
	CommittedNs int32         `bson:"committedNs"`
}

var infoProjection = bson.D{
	{Key: "seq", Value: 1}, {Key: "col", Value: 1}, {Key: "id", Value: 1}, {Key: "version", Value: 1},
	{Key: "deleted", Value: 1}, {Key: "committed", Value: 1}, {Key: "committedNs", Value: 1},
}

// encodeEntry encodes e, stamping a zero Committed with now; it returns
// the entry as stored too.
func encodeEntry(e storage.Entry, now time.Time) (logDoc, storage.Entry, error) {
	if e.Committed.IsZero() {
		e.Committed = now
	}
	nonce := bson.NewObjectID().Hex()
	d := logDoc{
		ID:          logID(e.Scope, i64(e.Seq)),
		Scope:       e.Scope,
		Seq:         i64(e.Seq),
		Col:         e.Collection,
		DocID:       e.DocID,
		Version:     i64(e.Version),
		Deleted:     e.Deleted,
		Committed:   msOf(e.Committed),
		CommittedNs: nsOf(e.Committed),
	}
	if e.MutationID != 0 {
		d.MK = mutKey(e.Device, e.MutationID)
	} else {
		d.MK = noMutKey(nonce)
	}
	// Like the embedded store's JSON (omitempty): an empty map reads back nil.
	body := entryBody{Nonce: nonce, Op: e.Op, Device: e.Device, MID: e.MutationID, HLC: e.HLC}
	if len(e.State) > 0 {
		body.State = e.State
	}
	if len(e.Clocks) > 0 {
		body.Clocks = e.Clocks
	}
	v, err := json.Marshal(body)
	if err != nil {
		return logDoc{}, e, fmt.Errorf("encode entry seq %d: %w", e.Seq, err)
	}
	d.Body = string(v)
	return d, e, nil
}

func (d *logDoc) body() (entryBody, error) {
	var b entryBody
	if err := json.Unmarshal([]byte(d.Body), &b); err != nil {
		return b, fmt.Errorf("decode entry %s seq %d: %w", d.Scope, d.Seq, err)
	}
	return b, nil
}

func (d *logDoc) entry() (storage.Entry, error) {
	b, err := d.body()
	if err != nil {
		return storage.Entry{}, err
	}
	return storage.Entry{
		Scope:      d.Scope,
		Seq:        uint64(d.Seq),
		Collection: d.Col,
		DocID:      d.DocID,
		Version:    uint64(d.Version),
		Op:         b.Op,
		State:      b.State,
		Clocks:     b.Clocks,
		Deleted:    d.Deleted,
		Device:     b.Device,
		MutationID: b.MID,
		HLC:        b.HLC,
		Committed:  timeOf(d.Committed, d.CommittedNs),
	}, nil
}

// midOf is the mutation id in a mutation key, 0 for an entry without one.
func midOf(mk string) uint64 {
	i := strings.LastIndexByte(mk, '#')
	if i < 0 || strings.HasPrefix(mk, "-") {
		return 0
	}
	v, _ := strconv.ParseUint(mk[i+1:], 10, 64)
	return v
}

// markerDoc is one document of _sg_markers: a purged tombstone.
type markerDoc struct {
	ID      bson.ObjectID `bson:"_id"`
	Scope   string        `bson:"scope"`
	Col     string        `bson:"col"`
	DocID   string        `bson:"id"`
	Version int64         `bson:"version"`
	Seq     int64         `bson:"seq"`    // the purged tombstone's seq (the horizon it raised)
	Purged  bson.DateTime `bson:"purged"` // when (informational)
}

// receiptDoc is one document of _sg_receipts. The receipt itself is JSON
// text (its State is a document state); created is copied out for
// ExpireReceipts.
type receiptDoc struct {
	ID        string        `bson:"_id"` // mutKey
	User      string        `bson:"user"`
	Device    string        `bson:"device"`
	MID       int64         `bson:"mid"`
	Created   bson.DateTime `bson:"created"`
	CreatedNs int32         `bson:"createdNs"`
	Receipt   string        `bson:"receipt"`
}

func encodeReceipt(r storage.Receipt, now time.Time) (receiptDoc, error) {
	if r.Created.IsZero() {
		r.Created = now
	}
	v, err := json.Marshal(r)
	if err != nil {
		return receiptDoc{}, fmt.Errorf("encode receipt %s/%d: %w", r.Device, r.MutationID, err)
	}
	return receiptDoc{
		ID: mutKey(r.Device, r.MutationID), User: r.Device.User, Device: r.Device.Device, MID: i64(r.MutationID),
		Created: msOf(r.Created), CreatedNs: nsOf(r.Created), Receipt: string(v),
	}, nil
}

// conflictDoc is one document of _sg_conflicts. The record is JSON text;
// status, created and closed are copied out for ordering, listing and
// ageing, and status and closed are authoritative (AgeConflicts sets them
// without rewriting the JSON).
type conflictDoc struct {
	ID        string         `bson:"_id"` // conflictKey
	Scope     string         `bson:"scope"`
	CID       string         `bson:"cid"`
	Status    string         `bson:"status"`
	Created   bson.DateTime  `bson:"created"`
	CreatedNs int32          `bson:"createdNs"`
	Closed    *bson.DateTime `bson:"closed"` // null while open
	ClosedNs  int32          `bson:"closedNs"`
	Record    string         `bson:"record"`
}

func encodeConflict(c storage.ConflictRecord, now time.Time) (conflictDoc, error) {
	if c.Created.IsZero() {
		c.Created = now
	}
	if c.Status != storage.ConflictOpen && c.Closed.IsZero() {
		c.Closed = now
	}
	v, err := json.Marshal(c)
	if err != nil {
		return conflictDoc{}, fmt.Errorf("encode conflict %s: %w", c.ID, err)
	}
	d := conflictDoc{
		ID: conflictKey(c.Scope, c.ID), Scope: c.Scope, CID: c.ID, Status: string(c.Status),
		Created: msOf(c.Created), CreatedNs: nsOf(c.Created), Record: string(v),
	}
	if !c.Closed.IsZero() {
		ms := msOf(c.Closed)
		d.Closed, d.ClosedNs = &ms, nsOf(c.Closed)
	}
	return d, nil
}

func (d *conflictDoc) record() (storage.ConflictRecord, error) {
	var c storage.ConflictRecord
	if err := json.Unmarshal([]byte(d.Record), &c); err != nil {
		return storage.ConflictRecord{}, fmt.Errorf("decode conflict %q: %w", d.ID, err)
	}
	c.Status = storage.ConflictStatus(d.Status)
	c.Closed = time.Time{}
	if d.Closed != nil {
		c.Closed = timeOf(*d.Closed, d.ClosedNs)
	}
	return c, nil
}

// deviceDoc is one document of _sg_devices: checkpoints and last seen.
// Checkpoints are an array, since scope names are not safe field names.
type deviceDoc struct {
	ID          string          `bson:"_id"` // devKey
	User        string          `bson:"user"`
	Device      string          `bson:"device"`
	Checkpoints []checkpointDoc `bson:"checkpoints"`
	Seen        *bson.DateTime  `bson:"seen"`
	SeenNs      int32           `bson:"seenNs"`
}

type checkpointDoc struct {
	Scope string `bson:"scope"`
	Seq   int64  `bson:"seq"`
}

// markDoc is one document of _sg_device_marks: "the device's mutations up
// to MID were processed" (see devices.go).
type markDoc struct {
	ID  string `bson:"_id"` // mutKey(device, mid)
	Dev string `bson:"dev"` // devKey
	MID int64  `bson:"mid"`
}
