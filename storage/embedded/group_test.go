package embedded

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openBolt(t *testing.T) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "g.db"), 0o600, boltOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// A panicking member must not leave its batch-mates with a nil error for a
// transaction that was rolled back.
func TestGroupPanicAbortsEveryMember(t *testing.T) {
	g := &groupCommit{db: openBolt(t)}
	put := func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("b"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte("v"))
	}
	batch := []*commitReq{
		{fn: put, done: make(chan struct{})},
		{fn: func(*bolt.Tx) error { panic("boom") }, done: make(chan struct{})},
		{fn: put, done: make(chan struct{})},
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("the panic must reach the leader")
			}
		}()
		g.run(batch)
	}()
	for i, r := range batch {
		select {
		case <-r.done:
		default:
			t.Fatalf("member %d not released", i)
		}
		if !errors.Is(r.err, errAborted) {
			t.Fatalf("member %d err = %v, want errAborted", i, r.err)
		}
	}
	g.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte("b")) != nil {
			t.Error("a rolled-back batch left writes behind")
		}
		return nil
	})
}

// After a leader panics, the next commit must still run, not wait forever.
func TestGroupLeadershipSurvivesPanic(t *testing.T) {
	g := &groupCommit{db: openBolt(t)}
	func() {
		defer func() { recover() }()
		g.do(func(*bolt.Tx) error { panic("boom") })
	}()
	done := make(chan error, 1)
	go func() { done <- g.do(func(*bolt.Tx) error { return nil }) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("commit after a panic hung")
	}
}
