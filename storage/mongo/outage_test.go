package mongo

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/syncgate/syncgate/internal/faultproxy"
	"github.com/syncgate/syncgate/storage"
)

// newProxy puts a fault proxy in front of target for the test's lifetime.
func newProxy(t *testing.T, target string) *faultproxy.Proxy {
	p, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// primaryAddr is the address the proxy forwards to: the test server, or
// the primary of a replica set.
func primaryAddr(t *testing.T, uri string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Disconnect(ctx) }()
	var hello struct {
		Me      string `bson:"me"`
		Primary string `bson:"primary"`
	}
	if err := c.Database("admin").RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Decode(&hello); err != nil {
		t.Fatalf("hello: %v", err)
	}
	if hello.Primary != "" {
		return hello.Primary
	}
	opts := options.Client().ApplyURI(uri)
	if len(opts.Hosts) == 0 {
		t.Fatalf("no host in %s", uri)
	}
	return opts.Hosts[0]
}

// TestOutage: while MongoDB is unreachable, a commit fails after the retry
// policy with a retryable error (never a CommitError, nothing half
// written); an outage shorter than the retries is absorbed; afterwards
// every commit is there exactly once.
func TestOutage(t *testing.T) {
	uri := testURI(t)
	p := newProxy(t, primaryAddr(t, uri))
	database := testDatabase(t)
	t.Cleanup(func() { dropDatabase(t, uri, database) })
	s, err := Open(context.Background(), "mongodb://"+p.Addr()+"/?directConnection=true", database, Options{
		Retry:                  RetryPolicy{Attempts: 3, BaseDelay: 100 * time.Millisecond, MaxDelay: 200 * time.Millisecond},
		ServerSelectionTimeout: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	ctx := context.Background()
	dev := storage.DeviceRef{User: "alice", Device: "phone"}
	batch := func(seq uint64) *storage.Batch {
		e := testEntry("user:alice", seq, "n1", seq, seq)
		return &storage.Batch{Scope: "user:alice", Entries: []storage.Entry{e},
			Receipts: []storage.Receipt{{Device: dev, MutationID: seq, Outcome: storage.Applied, Seq: seq, Version: seq}},
			Device:   dev, LastMutationID: seq}
	}
	if n, err := s.Commit(ctx, batch(1)); n != 1 || err != nil {
		t.Fatalf("Commit before the outage = %d, %v", n, err)
	}

	// A long outage: the commit gives up with a retryable error.
	p.Down()
	start := time.Now()
	n, err := s.Commit(ctx, batch(2))
	var ce *storage.CommitError
	if n != 0 || err == nil || errors.As(err, &ce) || !retryable(err) || !strings.HasPrefix(err.Error(), "mongo: commit: ") {
		t.Fatalf("Commit during the outage = %d, %v; want 0 and a retryable error", n, err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Commit during the outage took %s", d)
	}
	if _, err := s.Head(ctx, "user:alice"); err == nil || !retryable(err) {
		t.Errorf("Head during the outage = %v, want a retryable error", err)
	}

	// A short outage: the retries absorb it.
	mustUp(t, p)
	if n, err := s.Commit(ctx, batch(2)); n != 1 || err != nil {
		t.Fatalf("Commit after the outage = %d, %v", n, err)
	}
	p.Down()
	time.AfterFunc(250*time.Millisecond, func() { _ = p.Up() })
	if n, err := s.Commit(ctx, batch(3)); n != 1 || err != nil {
		t.Fatalf("Commit across a short outage = %d, %v", n, err)
	}

	got, err := s.Read(ctx, "user:alice", 0, 100, 100)
	if err != nil || len(got) != 3 || got[2].Seq != 3 {
		t.Fatalf("Read = %v, %v; want seqs 1..3 once each", seqsOf(got), err)
	}
	if st, err := s.Device(ctx, dev); err != nil || st.LastMutationID != 3 {
		t.Errorf("Device = %+v, %v; want LastMutationID 3", st, err)
	}
}

func mustUp(t *testing.T, p *faultproxy.Proxy) {
	t.Helper()
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
}

func seqsOf(entries []storage.Entry) []uint64 {
	out := make([]uint64, len(entries))
	for i, e := range entries {
		out[i] = e.Seq
	}
	return out
}
