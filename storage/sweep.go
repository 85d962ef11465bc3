package storage

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// SweepEvery calls sweep every period until ctx ends: the shared loop of
// the background sweepers (expired sessions, expired uploads). A failure
// is logged at Warn and the loop goes on; a sweep that removed something
// is logged at Info. It returns when ctx ends (a sweep in flight gets the
// cancelled ctx) and does not log ErrClosed, the store closing under it.
func SweepEvery(ctx context.Context, every time.Duration, log *slog.Logger, what string, sweep func(context.Context) (int, error)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n, err := sweep(ctx)
			switch {
			case err != nil && ctx.Err() == nil && !errors.Is(err, ErrClosed):
				log.Warn("storage: sweeping "+what+" failed", "err", err)
			case n > 0:
				log.Info("storage: swept "+what, "removed", n)
			}
		}
	}
}
