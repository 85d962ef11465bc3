package mongo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"math"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/syncgate/syncgate/storage"
	"github.com/syncgate/syncgate/storage/storagetest"
	"github.com/syncgate/syncgate/sync/hlc"
)

// testURI is the server the tests use: make test starts one (FerretDB, or
// the server SYNCGATE_MONGO_URI already names) and exports it.
func testURI(t testing.TB) string {
	t.Helper()
	uri := os.Getenv("SYNCGATE_MONGO_URI")
	if uri == "" {
		t.Fatal("SYNCGATE_MONGO_URI is not set: run the tests through make test")
	}
	return uri
}

// testDatabase is a fresh database name.
func testDatabase(t testing.TB) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "sgtest_" + hex.EncodeToString(b)
}

// fastRetry keeps failing tests quick: the policy's shape, not its delays.
var fastRetry = RetryPolicy{BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond}

// openDB opens a store on database, which the cleanup drops (with a client
// of its own: the test may have closed the store).
func openDB(t testing.TB, database string, opts Options) *Store {
	t.Helper()
	uri := testURI(t)
	if opts.Retry == (RetryPolicy{}) {
		opts.Retry = fastRetry
	}
	s, err := Open(context.Background(), uri, database, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil && !errors.Is(err, storage.ErrClosed) {
			t.Errorf("Close: %v", err)
		}
		dropDatabase(t, uri, database)
	})
	return s
}

func dropDatabase(t testing.TB, uri, database string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Errorf("drop %s: %v", database, err)
		return
	}
	defer func() { _ = c.Disconnect(ctx) }()
	if err := c.Database(database).Drop(ctx); err != nil {
		t.Errorf("drop %s: %v", database, err)
	}
}

func openTemp(t testing.TB, now func() time.Time) *Store {
	t.Helper()
	return openDB(t, testDatabase(t), Options{Now: now})
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T, now func() time.Time) storage.Store {
		return openTemp(t, now)
	})
}

// TestCompactChunks: a pass that crosses many chunk boundaries (chunks of
// three entries) leaves the same log, markers and horizon as one chunk.
func TestCompactChunks(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2025, 10, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	small, big := openTemp(t, clock), openTemp(t, clock)
	small.chunk = 3
	ids := []string{"a", "b", "c", "d"}
	version := map[string]uint64{}
	var entries []storage.Entry
	for seq := uint64(1); seq <= 40; seq++ {
		id := ids[(seq*7)%4]
		version[id]++
		e := testEntry("user:alice", seq, id, version[id], seq)
		if seq%9 == 0 || seq == 39 { // deleted and written again, or deleted for good (b)
			e.Op, e.State, e.Clocks, e.Deleted = storage.OpDelete, nil, nil, true
		}
		entries = append(entries, e)
	}
	for _, s := range []*Store{small, big} {
		for i := 0; i < len(entries); i += 10 {
			commit(t, s, entries[i:i+10]...)
		}
	}
	now = now.Add(time.Hour)
	var stats [2]storage.CompactStats
	var logs [2][]uint64
	for i, s := range []*Store{small, big} {
		var err error
		if stats[i], err = s.Compact(ctx, "user:alice", now); err != nil {
			t.Fatal(err)
		}
		got, err := s.Read(ctx, "user:alice", 0, math.MaxUint64, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range got {
			logs[i] = append(logs[i], e.Seq)
		}
	}
	if stats[0] != stats[1] || !slices.Equal(logs[0], logs[1]) {
		t.Errorf("chunks of 3: %+v, log %v; one chunk: %+v, log %v", stats[0], logs[0], stats[1], logs[1])
	}
	if stats[1].Removed == 0 || stats[1].Horizon == 0 {
		t.Errorf("Compact = %+v: the scenario should remove entries and purge a tombstone", stats[1])
	}
	for _, id := range ids {
		a, errA := small.Latest(ctx, "user:alice", "notes", id)
		b, errB := big.Latest(ctx, "user:alice", "notes", id)
		if errA != nil || errB != nil || a.Version != b.Version || a.Seq != b.Seq || a.Deleted != b.Deleted {
			t.Errorf("Latest(%s): %+v, %v vs %+v, %v", id, a, errA, b, errB)
		}
	}
}

// TestLostBatchRestoresOutcomes: receipts without an entry and conflict
// records are written before the insert (so that they are never later
// than the entries); a batch that then loses puts back what they replaced,
// except the outcomes of mutations its committed entries cover (Device's
// mark covers them, so a resend is answered from them).
func TestLostBatchRestoresOutcomes(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t, time.Now)
	dev := storage.DeviceRef{User: "alice", Device: "phone"}
	open := storage.ConflictRecord{
		ID: "c1", Scope: "user:alice", Collection: "notes", DocID: "n1", Base: 1,
		Mine: []byte(`{"id":1}`), TheirsVersion: 1, Device: dev, MutationID: 1, Status: storage.ConflictOpen,
	}
	rejected := func(mid uint64, code string) storage.Receipt {
		return storage.Receipt{Device: dev, MutationID: mid, Outcome: storage.Rejected, Code: code, Scope: "user:alice", Collection: "notes", DocID: "n9"}
	}
	b := &storage.Batch{Scope: "user:alice", Entries: []storage.Entry{testEntry("user:alice", 1, "n1", 1, 2)},
		Conflicts: []storage.ConflictRecord{open}, Receipts: []storage.Receipt{rejected(1, "c1"), rejected(9, "first")}, Device: dev, LastMutationID: 9}
	if n, err := s.Commit(ctx, b); n != 1 || err != nil {
		t.Fatalf("Commit = %d, %v", n, err)
	}
	before, err := s.Conflict(ctx, "user:alice", "c1")
	if err != nil {
		t.Fatal(err)
	}

	// Mutations 10..13 of one push: 10 rejected, 11 an entry that commits,
	// 12 resolving c1 with an entry that loses (n1 v1 is taken), 13
	// rejected; and receipt 9 written again (a retried outcome).
	resolved := open
	resolved.Status = storage.ConflictResolved
	resolved.ResolvedBy = &storage.DeviceMutation{Device: dev, MutationID: 12}
	b = &storage.Batch{Scope: "user:alice", Entries: []storage.Entry{
		testEntry("user:alice", 2, "n2", 1, 11), testEntry("user:alice", 3, "n1", 1, 12),
	}, Conflicts: []storage.ConflictRecord{resolved}, Receipts: []storage.Receipt{
		rejected(10, "kept"), rejected(13, "undone"), rejected(9, "second"),
	}, Device: dev, LastMutationID: 13}
	n, err := s.Commit(ctx, b)
	var ce *storage.CommitError
	if n != 1 || !errors.As(err, &ce) || ce.Index != 1 || ce.Taken != storage.TakenVersion {
		t.Fatalf("Commit = %d, %v; want 1, TakenVersion at 1", n, err)
	}
	after, err := s.Conflict(ctx, "user:alice", "c1")
	if err != nil || after.Status != storage.ConflictOpen || after.ResolvedBy != nil || !after.Created.Equal(before.Created) {
		t.Errorf("c1 after the lost resolution = %+v, %v; want it open as before", after, err)
	}
	if r, err := s.Receipt(ctx, dev, 13); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Receipt(13) = %+v, %v; want ErrNotFound", r, err)
	}
	// 9 and 10 are below 11, the committed entry's mutation: Device's mark
	// covers them, so their receipts stay as the batch wrote them.
	if r, err := s.Receipt(ctx, dev, 10); err != nil || r.Code != "kept" {
		t.Errorf("Receipt(10) = %+v, %v; want the batch's", r, err)
	}
	if r, err := s.Receipt(ctx, dev, 9); err != nil || r.Code != "second" {
		t.Errorf("Receipt(9) = %+v, %v; want the batch's", r, err)
	}
	if st, err := s.Device(ctx, dev); err != nil || st.LastMutationID != 11 {
		t.Errorf("Device = %+v, %v; want LastMutationID 11 (from the log)", st, err)
	}

	// A batch that loses its first entry leaves nothing.
	b = &storage.Batch{Scope: "user:alice", Entries: []storage.Entry{testEntry("user:alice", 3, "n2", 1, 14)},
		Receipts: []storage.Receipt{rejected(9, "third")}, Conflicts: []storage.ConflictRecord{resolved}}
	if n, err := s.Commit(ctx, b); n != 0 || !errors.As(err, &ce) {
		t.Fatalf("Commit = %d, %v; want 0 and a CommitError", n, err)
	}
	if r, err := s.Receipt(ctx, dev, 9); err != nil || r.Code != "second" {
		t.Errorf("Receipt(9) = %+v, %v; want it unchanged", r, err)
	}
}

func testEntry(scope string, seq uint64, id string, version uint64, mid uint64) storage.Entry {
	ts := hlc.Timestamp{Wall: 1_760_000_000_000 + int64(seq), Logical: 2, Node: "alice/phone"}
	return storage.Entry{
		Scope: scope, Seq: seq, Collection: "notes", DocID: id, Version: version, Op: storage.OpPut,
		State: map[string]any{
			"title": id, "n": float64(version), "ratio": 0.5, "tags": []any{"a", "b"},
			"meta": map[string]any{"by": "alice"}, "done": false, "none": nil,
		},
		Clocks: map[string]hlc.Timestamp{
			"title": ts, "*": ts, `tags.["a"]`: ts, "$weird.key": ts,
		},
		Device:     storage.DeviceRef{User: "alice", Device: "phone"},
		MutationID: mid,
		HLC:        ts,
	}
}

func commit(t *testing.T, s *Store, entries ...storage.Entry) {
	t.Helper()
	b := &storage.Batch{Scope: entries[0].Scope, Entries: entries}
	if n, err := s.Commit(context.Background(), b); err != nil || n != len(entries) {
		t.Fatalf("Commit = %d, %v; want %d, nil", n, err, len(entries))
	}
}

// TestIndexes: Open creates every index doc.go lists, and a second Open on
// the same database succeeds and changes nothing.
func TestIndexes(t *testing.T) {
	database := testDatabase(t)
	s := openDB(t, database, Options{})
	s2 := openDB(t, database, Options{})
	ctx := context.Background()
	want := map[string][]string{}
	for _, ix := range indexes {
		want[ix.coll] = append(want[ix.coll], ix.name)
	}
	for coll, names := range want {
		cur, err := s2.Database().Collection(coll).Indexes().List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var specs []struct {
			Name   string `bson:"name"`
			Key    bson.D `bson:"key"`
			Unique bool   `bson:"unique"`
		}
		if err := cur.All(ctx, &specs); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, sp := range specs {
			if sp.Name == "_id_" {
				continue
			}
			got = append(got, sp.Name)
			for _, ix := range indexes {
				if ix.coll == coll && ix.name == sp.Name {
					if sp.Unique != ix.unique || !sameKeys(sp.Key, ix.keys) {
						t.Errorf("%s.%s = %v unique %v; want %v unique %v", coll, sp.Name, sp.Key, sp.Unique, ix.keys, ix.unique)
					}
				}
			}
		}
		slices.Sort(got)
		slices.Sort(names)
		if !slices.Equal(got, names) {
			t.Errorf("indexes of %s = %v, want %v", coll, got, names)
		}
	}
	// The stores work side by side, as two nodes do.
	commit(t, s, testEntry("user:alice", 1, "n1", 1, 1))
	if h, err := s2.Head(ctx, "user:alice"); err != nil || h != 1 {
		t.Errorf("Head through the second store = %d, %v; want 1", h, err)
	}
}

func sameKeys(got, want bson.D) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range want {
		if got[i].Key != want[i].Key {
			return false
		}
		switch v := got[i].Value.(type) {
		case int32:
			if v != 1 {
				return false
			}
		case int64:
			if v != 1 {
				return false
			}
		case float64:
			if v != 1 {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// viewDoc reads one materialized document with a plain Find, as a backend
// would.
func viewDoc(t *testing.T, s *Store, scope, id string) (bson.M, bool) {
	t.Helper()
	var m bson.M
	err := s.Database().Collection("notes").FindOne(context.Background(),
		bson.D{{Key: "_sync.scope", Value: scope}, {Key: "_sync.id", Value: id}}).Decode(&m)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return m, true
}

func syncOf(t *testing.T, m bson.M) bson.M {
	t.Helper()
	sm := sub(m["_sync"])
	if sm == nil {
		t.Fatalf("view document %v has no _sync sub-document", m)
	}
	return sm
}

// sub returns an embedded document as a map (the driver decodes embedded
// documents as bson.D, even inside a bson.M).
func sub(v any) bson.M {
	switch x := v.(type) {
	case bson.M:
		return x
	case bson.D:
		m := bson.M{}
		for _, e := range x {
			m[e.Key] = e.Value
		}
		return m
	}
	return nil
}

func asInt(v any) int64 {
	switch x := v.(type) {
	case int32:
		return int64(x)
	case int64:
		return x
	case float64:
		return int64(x)
	}
	return math.MinInt64
}

// TestMaterializedView: the view holds each document's latest state, with
// _sync metadata, readable with plain queries; scopes do not collide;
// tombstones and purges show; an older write never replaces a newer one.
func TestMaterializedView(t *testing.T) {
	now := time.Date(2025, 10, 1, 12, 0, 0, 0, time.UTC)
	s := openTemp(t, func() time.Time { return now })
	ctx := context.Background()
	a, b := "user:alice", "space:team"

	commit(t, s, testEntry(a, 1, "n1", 1, 1), testEntry(a, 2, "n2", 1, 2), testEntry(a, 3, "n1", 2, 3))
	commit(t, s, testEntry(b, 1, "n1", 1, 0))

	m, ok := viewDoc(t, s, a, "n1")
	if !ok {
		t.Fatal("no view document for user:alice/n1")
	}
	if id := sub(m["_id"]); id["scope"] != a || id["id"] != "n1" {
		t.Errorf("_id = %v, want {scope: %s, id: n1}", m["_id"], a)
	}
	if m["title"] != "n1" || asInt(m["n"]) != 2 || m["ratio"] != 0.5 || m["done"] != false || m["none"] != nil {
		t.Errorf("view fields = %v, want the v2 state", m)
	}
	if _, isInt := m["n"].(int64); !isInt {
		t.Errorf("whole number n is %T in the view, want int64", m["n"])
	}
	if tags, _ := m["tags"].(bson.A); len(tags) != 2 || tags[0] != "a" {
		t.Errorf("tags = %v", m["tags"])
	}
	if meta := sub(m["meta"]); meta["by"] != "alice" {
		t.Errorf("meta = %v", m["meta"])
	}
	sm := syncOf(t, m)
	if sm["scope"] != a || sm["id"] != "n1" || asInt(sm["version"]) != 2 || asInt(sm["seq"]) != 3 || sm["deleted"] != false || asInt(sm["mid"]) != 3 {
		t.Errorf("_sync = %v, want scope %s id n1 v2 seq 3 mid 3", sm, a)
	}
	if dev := sub(sm["device"]); dev["user"] != "alice" || dev["device"] != "phone" {
		t.Errorf("_sync.device = %v", sm["device"])
	}
	if c, _ := sm["committed"].(bson.DateTime); !c.Time().Equal(now) {
		t.Errorf("_sync.committed = %v, want %s", sm["committed"], now)
	}
	if h := sub(sm["hlc"]); asInt(h["wall"]) != 1_760_000_000_003 || asInt(h["logical"]) != 2 || h["node"] != "alice/phone" {
		t.Errorf("_sync.hlc = %v", sm["hlc"])
	}
	if m, ok := viewDoc(t, s, b, "n1"); !ok || asInt(syncOf(t, m)["version"]) != 1 {
		t.Errorf("space:team/n1 view = %v, %v; want its own v1", m, ok)
	}
	// A backend lists a scope's live documents with an ordinary query.
	n, err := s.Database().Collection("notes").CountDocuments(ctx, bson.D{{Key: "_sync.scope", Value: a}, {Key: "_sync.deleted", Value: false}})
	if err != nil || n != 2 {
		t.Errorf("CountDocuments(user:alice live) = %d, %v; want 2", n, err)
	}

	// An older version arriving late (a racing node) does not win.
	stale := testEntry(a, 2, "n1", 1, 2)
	stale.Committed = now
	s.writeViews(ctx, []storage.Entry{stale})
	if m, _ := viewDoc(t, s, a, "n1"); asInt(syncOf(t, m)["version"]) != 2 {
		t.Errorf("a stale view write replaced v2: %v", m)
	}

	// A tombstone leaves only the metadata; purging it deletes the document.
	del := testEntry(a, 4, "n1", 3, 4)
	del.Op, del.State, del.Clocks, del.Deleted = storage.OpDelete, nil, nil, true
	commit(t, s, del, testEntry(a, 5, "n3", 1, 5))
	m, _ = viewDoc(t, s, a, "n1")
	if sm := syncOf(t, m); sm["deleted"] != true || asInt(sm["version"]) != 3 || len(m) != 2 {
		t.Errorf("tombstone view = %v, want only _id and _sync with deleted v3", m)
	}
	now = now.Add(time.Hour)
	if st, err := s.Compact(ctx, a, now); err != nil || st.Horizon != 4 {
		t.Fatalf("Compact = %+v, %v; want horizon 4", st, err)
	}
	if m, ok := viewDoc(t, s, a, "n1"); ok {
		t.Errorf("purged document still in the view: %v", m)
	}
	if _, ok := viewDoc(t, s, a, "n2"); !ok {
		t.Error("n2 left the view")
	}
	// The document's next life is materialized again.
	commit(t, s, testEntry(a, 6, "n1", 4, 6))
	if m, ok := viewDoc(t, s, a, "n1"); !ok || asInt(syncOf(t, m)["version"]) != 4 {
		t.Errorf("view after the purge = %v, %v; want v4", m, ok)
	}
}

// TestLogLayout: an entry's clocks (keys with '.' and '$') and state
// round-trip, and the log is readable as documented.
func TestLogLayout(t *testing.T) {
	s := openTemp(t, time.Now)
	ctx := context.Background()
	e := testEntry("user:alice", 1, "n1", 1, 7)
	e.Committed = time.Date(2025, 1, 2, 3, 4, 5, 123456789, time.FixedZone("x", 3600))
	commit(t, s, e)
	got, err := s.Latest(ctx, "user:alice", "notes", "n1")
	if err != nil {
		t.Fatal(err)
	}
	if !got.Committed.Equal(e.Committed) {
		t.Errorf("Committed = %s, want %s (exact)", got.Committed, e.Committed)
	}
	got.Committed = e.Committed
	if !equalEntries(got, e) {
		t.Errorf("Latest =\n%+v\nwant\n%+v", got, e)
	}
	var raw bson.M
	if err := s.Database().Collection(collLog).FindOne(ctx, bson.D{{Key: "scope", Value: "user:alice"}, {Key: "seq", Value: 1}}).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	if raw["mk"] != "5:alice5:phone#00000000000000000007" || raw["col"] != "notes" || asInt(raw["version"]) != 1 {
		t.Errorf("log document = %v", raw)
	}
	if _, ok := raw["entry"].(string); !ok {
		t.Errorf("the entry's body is stored as %T, want JSON text", raw["entry"])
	}
	if len(raw) != 11 {
		t.Errorf("log document has %d fields, want 11: %v", len(raw), raw)
	}
}

func equalEntries(a, b storage.Entry) bool { return reflect.DeepEqual(a, b) }

// TestKeysDoNotCollide: user and device names that run together stay apart.
func TestKeysDoNotCollide(t *testing.T) {
	pairs := [][2]storage.DeviceRef{
		{{User: "a", Device: "bc"}, {User: "ab", Device: "c"}},
		{{User: "a1", Device: "2"}, {User: "a", Device: "12"}},
		{{User: "1:a", Device: "b"}, {User: "1", Device: ":ab"}},
	}
	for _, p := range pairs {
		if devKey(p[0]) == devKey(p[1]) || mutKey(p[0], 12) == mutKey(p[1], 12) {
			t.Errorf("%v and %v share a key", p[0], p[1])
		}
	}
	if mutKey(storage.DeviceRef{User: "a", Device: "b#1"}, 2) == mutKey(storage.DeviceRef{User: "a", Device: "b"}, 12) {
		t.Error("mutation keys collide")
	}
	if conflictKey("user:a", "1b") == conflictKey("user:a1", "b") {
		t.Error("conflict keys collide")
	}
	if k := noMutKey(bson.NewObjectID().Hex()); k[0] != '-' {
		t.Errorf("noMutKey = %q", k)
	}
}

// TestCommitLostReply: the server applied the insert but the reply was
// lost (a network error); the retry must not collide with the commit's
// own entries, and must finish a partly applied batch.
func TestCommitLostReply(t *testing.T) {
	s := openTemp(t, time.Now)
	ctx := context.Background()
	netErr := mongo.CommandError{Code: 9001, Message: "connection reset (simulated)", Labels: []string{"NetworkError"}}

	// Everything landed, the reply was lost.
	s.afterInsert = func(attempt int, docs []logDoc, err error) error {
		if attempt == 1 && err == nil {
			return netErr
		}
		return err
	}
	commit(t, s, testEntry("user:alice", 1, "n1", 1, 1), testEntry("user:alice", 2, "n2", 1, 2))

	// Only the first entry landed.
	s.afterInsert = func(attempt int, docs []logDoc, err error) error {
		if attempt == 1 && err == nil {
			ids := bson.A{}
			for _, d := range docs[1:] {
				ids = append(ids, d.ID)
			}
			if _, derr := s.logC.DeleteMany(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}}); derr != nil {
				t.Error(derr)
			}
			return netErr
		}
		return err
	}
	b := &storage.Batch{Scope: "user:alice", Entries: []storage.Entry{
		testEntry("user:alice", 3, "n1", 2, 3), testEntry("user:alice", 4, "n3", 1, 4), testEntry("user:alice", 5, "n2", 2, 5),
	}, Device: storage.DeviceRef{User: "alice", Device: "phone"}, LastMutationID: 5}
	if n, err := s.Commit(ctx, b); err != nil || n != 3 {
		t.Fatalf("Commit = %d, %v; want 3, nil", n, err)
	}
	got, err := s.Read(ctx, "user:alice", 0, math.MaxUint64, 10)
	if err != nil || len(got) != 5 {
		t.Fatalf("Read = %d entries, %v; want 5", len(got), err)
	}
	if st, err := s.Device(ctx, b.Device); err != nil || st.LastMutationID != 5 {
		t.Errorf("Device = %+v, %v; want LastMutationID 5", st, err)
	}

	// An error after which the entry is there anyway is a success.
	s.afterInsert = func(attempt int, docs []logDoc, err error) error {
		if err == nil {
			return errors.New("not retryable (simulated)")
		}
		return err
	}
	commit(t, s, testEntry("user:alice", 6, "n4", 1, 6))
	// A failure that is not retryable, and left nothing, stops at once.
	calls := 0
	s.afterInsert = func(attempt int, docs []logDoc, err error) error {
		calls++
		if _, derr := s.logC.DeleteOne(ctx, bson.D{{Key: "_id", Value: docs[0].ID}}); derr != nil {
			t.Error(derr)
		}
		return errors.New("not retryable (simulated)")
	}
	n, err := s.Commit(ctx, &storage.Batch{Scope: "user:alice", Entries: []storage.Entry{testEntry("user:alice", 7, "n5", 1, 7)}})
	if n != 0 || calls != 1 || err == nil || !strings.HasPrefix(err.Error(), "mongo: commit: ") {
		t.Errorf("Commit = %d, %v after %d attempts; want 0 and a prefixed error after 1", n, err, calls)
	}
}

// TestUnreachable: a server that does not answer gives a prefixed error
// after the policy's attempts, quickly, and a canceled context is not
// retried.
func TestUnreachable(t *testing.T) {
	start := time.Now()
	_, err := Open(context.Background(), "mongodb://127.0.0.1:1/?connectTimeoutMS=200", "x", Options{
		Retry: RetryPolicy{Attempts: 2, BaseDelay: 10 * time.Millisecond}, ServerSelectionTimeout: 200 * time.Millisecond,
	})
	if err == nil || !strings.HasPrefix(err.Error(), "mongo: open") {
		t.Fatalf("Open(unreachable) = %v, want a prefixed error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Open(unreachable) took %s", d)
	}
	if !retryable(err) {
		t.Errorf("%v is not classed retryable", err)
	}
	for _, e := range []error{context.Canceled, mongo.ErrClientDisconnected, errors.New("x")} {
		if retryable(e) {
			t.Errorf("%v classed retryable", e)
		}
	}
	for _, code := range []int{10107, 189, 91, 11600} {
		if !retryable(mongo.CommandError{Code: int32(code)}) {
			t.Errorf("code %d not classed retryable", code)
		}
	}
	if retryable(mongo.CommandError{Code: 11000}) {
		t.Error("duplicate key classed retryable")
	}
}

// TestErrorsCarryPrefix: errors say where they come from and wrap
// storage's sentinels.
func TestErrorsCarryPrefix(t *testing.T) {
	s := openTemp(t, time.Now)
	ctx := context.Background()
	_, err := s.Latest(ctx, "user:alice", "notes", "none")
	if !errors.Is(err, storage.ErrNotFound) || !strings.HasPrefix(err.Error(), "mongo: latest: ") {
		t.Errorf("Latest = %v", err)
	}
	_, err = s.Commit(ctx, &storage.Batch{Scope: "user:alice", Entries: []storage.Entry{testEntry("user:alice", 2, "n1", 1, 1)}})
	if err == nil || !strings.Contains(err.Error(), "gap") || !strings.HasPrefix(err.Error(), "mongo: commit: ") {
		t.Errorf("Commit(gap) = %v", err)
	}
}

func TestMediaConformance(t *testing.T) {
	storagetest.RunMedia(t, func(t *testing.T, now func() time.Time) storage.Media {
		m, err := NewMedia(t.Context(), openTemp(t, now), MediaOptions{})
		if err != nil {
			t.Fatalf("NewMedia: %v", err)
		}
		return m
	})
}

func TestSessionsConformance(t *testing.T) {
	storagetest.RunSessions(t, func(t *testing.T, now func() time.Time) storage.Sessions {
		return openDB(t, testDatabase(t), Options{Now: now, SessionSweepEvery: -1})
	})
}

// TestViewRepair: a view left behind the log (a node died between the
// commit and its view write, or the write failed) is rewritten by the
// next compaction pass, which then only reads what is new.
func TestViewRepair(t *testing.T) {
	s := openTemp(t, time.Now)
	ctx := context.Background()
	const a = "user:alice"
	commit(t, s, testEntry(a, 1, "n1", 1, 1), testEntry(a, 2, "n2", 1, 2), testEntry(a, 3, "n1", 2, 3))
	notes := s.Database().Collection("notes")
	// The view loses n1 and n2 falls back to a version the log superseded.
	if _, err := notes.DeleteMany(ctx, bson.D{{Key: "_sync.id", Value: "n1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := notes.UpdateOne(ctx, bson.D{{Key: "_sync.id", Value: "n2"}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "_sync.version", Value: int64(0)}, {Key: "title", Value: "stale"}}}}); err != nil {
		t.Fatal(err)
	}
	// Compaction with a cutoff in the past removes nothing, but repairs.
	if _, err := s.Compact(ctx, a, time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	if m, ok := viewDoc(t, s, a, "n1"); !ok || asInt(syncOf(t, m)["version"]) != 2 {
		t.Fatalf("n1 view after repair = %v, %v; want v2", m, ok)
	}
	if m, ok := viewDoc(t, s, a, "n2"); !ok || m["title"] != "n2" || asInt(syncOf(t, m)["version"]) != 1 {
		t.Fatalf("n2 view after repair = %v, %v; want v1 titled n2", m, ok)
	}
	var mark struct {
		Seq int64 `bson:"seq"`
	}
	if err := s.Database().Collection(collViewMarks).FindOne(ctx, bson.D{{Key: "_id", Value: a}}).Decode(&mark); err != nil || mark.Seq != 3 {
		t.Fatalf("view mark = %d, %v; want 3", mark.Seq, err)
	}
	// Below the mark nothing is re-read: a view broken now stays broken
	// until its document changes or the mark is reset (operations.md).
	if _, err := notes.DeleteMany(ctx, bson.D{{Key: "_sync.id", Value: "n2"}}); err != nil {
		t.Fatal(err)
	}
	commit(t, s, testEntry(a, 4, "n3", 1, 4))
	if _, err := s.Compact(ctx, a, time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	if _, ok := viewDoc(t, s, a, "n2"); ok {
		t.Fatal("the pass re-read entries below its mark")
	}
	if _, ok := viewDoc(t, s, a, "n3"); !ok {
		t.Fatal("n3 missing from the view")
	}
}
