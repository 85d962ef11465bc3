package mongo

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/syncgate/syncgate/storage"
)

// proxy is a TCP proxy in front of the test server that a test can take
// down (closing every connection) and bring back on the same port: a
// MongoDB outage without stopping a shared server.
type proxy struct {
	t      *testing.T
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	p := &proxy{t: t, target: target, conns: map[net.Conn]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(func() {
		p.down()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[s] = true, true
			p.mu.Unlock()
			for _, pair := range [][2]net.Conn{{c, s}, {s, c}} {
				p.wg.Go(func() {
					_, _ = io.Copy(pair[0], pair[1])
					_ = pair[0].Close()
					_ = pair[1].Close()
				})
			}
		}
	})
}

// down closes the listener and every proxied connection.
func (p *proxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		_ = c.Close()
	}
	clear(p.conns)
}

// up listens on the proxy's port again.
func (p *proxy) up() {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
	}
	p.serve(ln)
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
	s, err := Open(context.Background(), "mongodb://"+p.addr+"/?directConnection=true", database, Options{
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
	p.down()
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
	p.up()
	if n, err := s.Commit(ctx, batch(2)); n != 1 || err != nil {
		t.Fatalf("Commit after the outage = %d, %v", n, err)
	}
	p.down()
	time.AfterFunc(250*time.Millisecond, p.up)
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

func seqsOf(entries []storage.Entry) []uint64 {
	out := make([]uint64, len(entries))
	for i, e := range entries {
		out[i] = e.Seq
	}
	return out
}
