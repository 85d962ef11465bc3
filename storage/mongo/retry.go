package mongo

import (
	"context"
	"errors"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/topology"
)

// retryableCodes are server error codes after which the same operation may
// succeed: the driver's own list (a primary stepping down or shutting down,
// network trouble on the server's side) plus WriteConcernFailed and
// ReadConcernMajorityNotAvailableYet.
var retryableCodes = [...]int{
	6,     // HostUnreachable
	7,     // HostNotFound
	64,    // WriteConcernFailed
	89,    // NetworkTimeout
	91,    // ShutdownInProgress
	134,   // ReadConcernMajorityNotAvailableYet
	189,   // PrimarySteppedDown
	262,   // ExceededTimeLimit
	9001,  // SocketException
	10107, // NotWritablePrimary
	11600, // InterruptedAtShutdown
	11602, // InterruptedDueToReplStateChange
	13435, // NotPrimaryNoSecondaryOk
	13436, // NotPrimaryOrSecondary
}

// retryable reports whether err is worth another attempt. A canceled
// context and a disconnected client never are. Timeouts are (the driver
// reports its own, such as server selection, as context.DeadlineExceeded
// too); retry stops anyway once the caller's context has ended.
func retryable(err error) bool {
	switch {
	case err == nil,
		errors.Is(err, mongo.ErrClientDisconnected):
		return false
	case errors.As(err, &topology.ServerSelectionError{}):
		return true
	case errors.Is(err, context.Canceled):
		return false
	case mongo.IsNetworkError(err), mongo.IsTimeout(err):
		return true
	}
	var le mongo.LabeledError
	if errors.As(err, &le) && (le.HasErrorLabel("RetryableWriteError") || le.HasErrorLabel("RetryableReadError") ||
		le.HasErrorLabel("TransientTransactionError")) {
		return true
	}
	var se mongo.ServerError
	if errors.As(err, &se) {
		for _, c := range retryableCodes {
			if se.HasErrorCode(c) {
				return true
			}
		}
	}
	return false
}

// retry runs fn until it succeeds, fails with an error that is not
// retryable, the context ends, or the policy's attempts are spent; it
// returns fn's last error (or the context's). fn must be safe to repeat:
// every write the store retries this way is idempotent (upserts, replaces
// and deletes by key, inserts whose duplicate-key error means "already
// there"); Commit's insert has its own loop (see insertEntries).
func (s *Store) retry(ctx context.Context, fn func(ctx context.Context) error) error {
	delay := s.retryPol.BaseDelay
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil || !retryable(err) || attempt >= s.retryPol.Attempts || ctx.Err() != nil || s.closed.Load() {
			return err
		}
		s.log.Warn("mongo: retrying", "attempt", attempt, "in", delay, "err", err)
		if werr := sleep(ctx, delay); werr != nil {
			return errors.Join(werr, err)
		}
		delay = s.nextDelay(delay)
	}
}

func (s *Store) nextDelay(d time.Duration) time.Duration {
	return min(time.Duration(float64(d)*s.retryPol.Multiplier), s.retryPol.MaxDelay)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
