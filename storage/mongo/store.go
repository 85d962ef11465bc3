package mongo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/connstring"

	"github.com/syncgate/syncgate/storage"
)

var _ storage.Store = (*Store)(nil)

// Defaults of Options, documented on its fields.
const (
	defaultDatabase               = "syncgate"
	defaultAttempts               = 3
	defaultBaseDelay              = time.Second
	defaultMultiplier             = 2
	defaultMaxDelay               = 8 * time.Second
	defaultServerSelectionTimeout = 5 * time.Second
	defaultChunk                  = 1000
	defaultLookupParallelism      = 16
)

// Options tunes a Store. The zero value is ready to use.
type Options struct {
	// Logger receives housekeeping events at Debug, retried errors and
	// failed materialized-view writes at Warn. Default: nil discards them.
	Logger *slog.Logger
	// Now stamps Entry.Committed, Receipt.Created, ConflictRecord.Created
	// and the Closed of a closed record when the caller left them zero, and
	// AgeConflicts' Closed. Default: nil means time.Now. Tests inject a clock.
	Now func() time.Time
	// WriteConcern of every write. Default: nil means majority
	// (writeconcern.Majority()), so an acknowledged commit survives a
	// primary failover. A standalone server treats majority as w:1.
	WriteConcern *writeconcern.WriteConcern
	// Retry is the policy for retryable errors (network errors, timeouts,
	// server selection failures, NotWritablePrimary and the other codes in
	// retryable). Default: the zero value means 3 attempts, 1 s base delay,
	// ×2, capped at 8 s.
	Retry RetryPolicy
	// ServerSelectionTimeout bounds how long one attempt waits for a
	// usable server, unless the URI sets serverSelectionTimeoutMS.
	// Default: 5 s (the driver's own default of 30 s would hold a push for
	// 30 s per attempt while MongoDB is down).
	ServerSelectionTimeout time.Duration
	// Client, if set, is applied after the URI: pool sizes, TLS, auth and
	// so on. Its WriteConcern is overridden by WriteConcern above.
	// Default: nil.
	Client *options.ClientOptions
	// Chunk is how many log entries one compaction step examines and
	// deletes. Default: 1000.
	Chunk int
	// SessionSweepEvery is how often the sweeper deletes expired device
	// sessions on a server without TTL indexes (FerretDB; see Sessions in
	// doc.go). Default: 0 means one minute; negative disables it.
	SessionSweepEvery time.Duration
}

// RetryPolicy is an exponential backoff for retryable errors. Zero fields
// take their defaults.
type RetryPolicy struct {
	// Attempts is the number of tries, the first included. Default: 3.
	Attempts int
	// BaseDelay is the wait after the first failed try. Default: 1 s.
	BaseDelay time.Duration
	// Multiplier grows the wait after each further failure. Default: 2.
	Multiplier float64
	// MaxDelay caps one wait. Default: 8 s.
	MaxDelay time.Duration
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Attempts <= 0 {
		p.Attempts = defaultAttempts
	}
	if p.BaseDelay <= 0 {
		p.BaseDelay = defaultBaseDelay
	}
	if p.Multiplier < 1 {
		p.Multiplier = defaultMultiplier
	}
	if p.MaxDelay <= 0 {
		p.MaxDelay = defaultMaxDelay
	}
	return p
}

// Store is a storage.Store on a MongoDB database. See the package comment
// for the layout and the indexes.
type Store struct {
	client   *mongo.Client
	db       *mongo.Database
	log      *slog.Logger
	now      func() time.Time
	retryPol RetryPolicy
	chunk    int

	logC, markers, receipts, devices, marks, conflicts *mongo.Collection

	views  sync.Map // app collection name -> struct{}: its index is ensured
	closed atomic.Bool

	// afterInsert, when set (by tests), sees each commit InsertMany's
	// documents and error and returns the error Commit acts on: a test
	// turns a success into a lost reply.
	afterInsert func(attempt int, docs []logDoc, err error) error

	sess sessionState // device sessions (sessions.go)
}

// Open connects to uri, uses database (the URI's database when empty, then
// "syncgate"), and creates every index the store needs (idempotently: an
// index that exists with the same definition is left alone). It retries
// retryable errors like every other call.
func Open(ctx context.Context, uri, database string, opts Options) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("mongo: open: %w", err)
	}
	cs, err := connstring.ParseAndValidate(uri)
	if err != nil {
		return nil, fmt.Errorf("mongo: open: %w", err)
	}
	if database == "" {
		database = cs.Database
	}
	if database == "" {
		database = defaultDatabase
	}
	copts := options.Client().ApplyURI(uri)
	if !cs.ServerSelectionTimeoutSet {
		t := opts.ServerSelectionTimeout
		if t <= 0 {
			t = defaultServerSelectionTimeout
		}
		copts.SetServerSelectionTimeout(t)
	}
	wc := opts.WriteConcern
	if wc == nil {
		wc = writeconcern.Majority()
	}
	all := []*options.ClientOptions{copts}
	if opts.Client != nil {
		all = append(all, opts.Client)
	}
	all = append(all, options.Client().SetWriteConcern(wc))
	client, err := mongo.Connect(all...)
	if err != nil {
		return nil, fmt.Errorf("mongo: open: %w", err)
	}
	s := &Store{
		client:   client,
		db:       client.Database(database, options.Database().SetWriteConcern(wc)),
		log:      opts.Logger,
		now:      opts.Now,
		retryPol: opts.Retry.withDefaults(),
		chunk:    opts.Chunk,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.chunk <= 0 {
		s.chunk = defaultChunk
	}
	s.logC = s.db.Collection(collLog)
	s.markers = s.db.Collection(collMarkers)
	s.receipts = s.db.Collection(collReceipts)
	s.devices = s.db.Collection(collDevices)
	s.marks = s.db.Collection(collMarks)
	s.conflicts = s.db.Collection(collConflicts)

	err = s.retry(ctx, func(ctx context.Context) error { return client.Ping(ctx, readpref.Primary()) })
	if err == nil {
		err = s.ensureIndexes(ctx)
	}
	if err == nil {
		err = s.openSessions(ctx, opts.SessionSweepEvery)
	}
	if err != nil {
		_ = client.Disconnect(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("mongo: open %s: %w", database, err)
	}
	s.log.Debug("mongo store opened", "database", database)
	return s, nil
}

// Database returns the database the store uses (for tests and tools).
func (s *Store) Database() *mongo.Database { return s.db }

// Close disconnects. It waits for operations in flight up to ctx. Every
// call after the first returns storage.ErrClosed.
func (s *Store) Close(ctx context.Context) error {
	if !s.closed.CompareAndSwap(false, true) {
		return fmt.Errorf("mongo: close: %w", storage.ErrClosed)
	}
	s.stopSessions()
	if err := s.client.Disconnect(ctx); err != nil {
		return fmt.Errorf("mongo: close: %w", err)
	}
	s.log.Debug("mongo store closed")
	return nil
}

// begin refuses work on a closed store or an ended context.
func (s *Store) begin(ctx context.Context, op string) error {
	if s.closed.Load() {
		return fmt.Errorf("mongo: %s: %w", op, storage.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mongo: %s: %w", op, err)
	}
	return nil
}

// wrap adds the package prefix, and names the context's error when the
// context ended (so errors.Is(err, context.Canceled) holds whatever the
// driver made of it) and storage.ErrClosed when Close raced with the call.
func (s *Store) wrap(ctx context.Context, op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, storage.ErrNotFound), errors.Is(err, storage.ErrClosed):
		return fmt.Errorf("mongo: %s: %w", op, err)
	case errors.Is(err, mongo.ErrClientDisconnected) || s.closed.Load():
		return fmt.Errorf("mongo: %s: %w (%v)", op, storage.ErrClosed, err)
	case ctx.Err() != nil && !errors.Is(err, ctx.Err()):
		return fmt.Errorf("mongo: %s: %w (%w)", op, ctx.Err(), err)
	default:
		return fmt.Errorf("mongo: %s: %w", op, err)
	}
}

// parallel runs fns concurrently and returns the first error (in fns
// order).
func parallel(fns ...func() error) error {
	if len(fns) == 1 {
		return fns[0]()
	}
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Go(func() { errs[i] = fn() })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
