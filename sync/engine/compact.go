package engine

import (
	"context"
	"time"
)

// Compact runs one compaction pass over every scope and expires old receipts.
func (e *Engine) Compact(ctx context.Context) error {
	now := e.cfg.Now()
	olderThan := now.Add(-e.cfg.Retention)
	removed := 0
	after := ""
	for {
		scopes, err := e.store.Scopes(ctx, after, 256)
		if err != nil {
			return errf("listing scopes: %w", err)
		}
		for _, s := range scopes {
			st, err := e.store.Compact(ctx, s, olderThan)
			if err != nil {
				return errf("compacting %s: %w", s, err)
			}
			removed += st.Removed
		}
		if len(scopes) < 256 {
			break
		}
		after = scopes[len(scopes)-1]
	}
	e.m.compacted.Add(float64(removed))
	expired, err := e.store.ExpireReceipts(ctx, now.Add(-e.cfg.ReceiptTTL))
	if err != nil {
		return errf("expiring receipts: %w", err)
	}
	abandoned, deleted, err := e.store.AgeConflicts(ctx, now.Add(-e.cfg.ConflictAbandonAfter), now.Add(-e.cfg.ConflictRetention))
	if err != nil {
		return errf("ageing conflicts: %w", err)
	}
	e.log.Info("engine: compaction pass", "removed", removed, "receipts_expired", expired,
		"conflicts_abandoned", abandoned, "conflicts_deleted", deleted, "took", time.Since(now))
	return nil
}

// Run compacts every CompactEvery until ctx ends.
func (e *Engine) Run(ctx context.Context) error {
	t := time.NewTicker(e.cfg.CompactEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := e.Compact(ctx); err != nil && ctx.Err() == nil {
				e.log.Error("engine: compaction failed", "err", err)
			}
		}
	}
}
