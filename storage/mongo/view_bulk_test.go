package mongo

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/syncgate/syncgate/storage"
)

// TestViewsLargeBatch: a batch that rewrites more documents than
// viewBulkMax, more than 100 in fact, updates every materialized document.
// One BulkWrite of 100 or more replaces of existing documents never
// finishes on FerretDB v1 and wedges the database (see viewBulkMax); the
// deadline turns that hang into a failure.
func TestViewsLargeBatch(t *testing.T) {
	const docs = 150
	s := openTemp(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var seq uint64
	for version := uint64(1); version <= 2; version++ {
		entries := make([]storage.Entry, docs)
		for i := range entries {
			seq++
			entries[i] = testEntry("user:alice", seq, fmt.Sprintf("doc-%03d", i), version, seq)
		}
		b := &storage.Batch{Scope: "user:alice", Entries: entries}
		if n, err := s.Commit(ctx, b); err != nil || n != docs {
			t.Fatalf("Commit of version %d = %d, %v", version, n, err)
		}
	}
	n, err := s.Database().Collection("notes").CountDocuments(ctx, bson.D{{Key: "_sync.version", Value: int64(2)}})
	if err != nil {
		t.Fatal(err)
	}
	if n != docs {
		t.Fatalf("%d materialized documents at version 2, want %d", n, docs)
	}
}
