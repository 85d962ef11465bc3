package storagetest

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/syncgate/syncgate/storage"
)

func testDevices(t *testing.T, e *env) {
	ctx := context.Background()
	save := func(dev storage.DeviceRef, cps map[string]uint64, seen time.Time) {
		t.Helper()
		if err := e.s.SaveCheckpoints(ctx, dev, cps, seen); err != nil {
			t.Fatalf("SaveCheckpoints(%s): %v", dev, err)
		}
	}
	want := func(dev storage.DeviceRef, lastMutation uint64, cps map[string]uint64, seen time.Time) {
		t.Helper()
		st := e.device(t, dev)
		if st.Device != dev || st.LastMutationID != lastMutation || !maps.Equal(st.Checkpoints, cps) || !st.LastSeen.Equal(seen) {
			t.Errorf("Device(%s) = %+v, want last mutation %d, checkpoints %v, last seen %s", dev, st, lastMutation, cps, seen)
		}
	}

	t1 := e.clock.Advance(time.Minute)
	save(e.alice, map[string]uint64{scopeA: 5, scopeB: 3}, t1)
	want(e.alice, 0, map[string]uint64{scopeA: 5, scopeB: 3}, t1)

	// Checkpoints merge forward, per scope.
	t2 := e.clock.Advance(time.Minute)
	save(e.alice, map[string]uint64{scopeA: 4, scopeB: 7, "space:new": 1}, t2)
	want(e.alice, 0, map[string]uint64{scopeA: 5, scopeB: 7, "space:new": 1}, t2)

	// A commit's LastMutationID and checkpoints live side by side.
	b := batch(entry(scopeA, 1, "n1", 1, e.alice, 9))
	b.Device, b.LastMutationID = e.alice, 9
	e.commit(t, b)
	want(e.alice, 9, map[string]uint64{scopeA: 5, scopeB: 7, "space:new": 1}, t2)
	t3 := e.clock.Advance(time.Minute)
	save(e.alice, nil, t3)
	want(e.alice, 9, map[string]uint64{scopeA: 5, scopeB: 7, "space:new": 1}, t3)

	// Devices are independent, even when names could run together.
	if st := e.device(t, e.alice2); st.LastMutationID != 0 || len(st.Checkpoints) != 0 || !st.LastSeen.IsZero() {
		t.Errorf("Device(%s) = %+v, want a zero state", e.alice2, st)
	}
	ab := storage.DeviceRef{User: "a", Device: "bc"}
	abc := storage.DeviceRef{User: "ab", Device: "c"}
	save(ab, map[string]uint64{scopeA: 1}, t1)
	save(abc, map[string]uint64{scopeA: 2}, t2)
	want(ab, 0, map[string]uint64{scopeA: 1}, t1)
	want(abc, 0, map[string]uint64{scopeA: 2}, t2)
}

func testExpireReceipts(t *testing.T, e *env) {
	ctx := context.Background()
	t0 := e.clock.Now()
	expire := func(olderThan time.Time, wantN int) {
		t.Helper()
		if n, err := e.s.ExpireReceipts(ctx, olderThan); n != wantN || err != nil {
			t.Fatalf("ExpireReceipts(%s) = %d, %v; want %d, nil", olderThan.Sub(t0), n, err, wantN)
		}
	}
	store := func(r storage.Receipt) {
		t.Helper()
		e.commit(t, &storage.Batch{Scope: scopeA, Receipts: []storage.Receipt{r}})
	}

	r1 := rejected(e.alice, 1)
	r1.Created = t0
	store(r1)
	e.clock.Advance(time.Hour)
	store(rejected(e.alice, 2)) // stamped t0+1h
	r3 := rejected(e.alice, 3)
	r3.Created = t0.Add(2 * time.Hour)
	store(r3)
	// Storing a receipt again replaces it, creation time included.
	r4 := rejected(e.alice, 4)
	r4.Created = t0
	store(r4)
	r4.Created = t0.Add(5 * time.Hour)
	r4.Code = "replaced"
	store(r4)

	expire(t0.Add(90*time.Minute), 2)
	e.wantNoReceipt(t, e.alice, 1)
	e.wantNoReceipt(t, e.alice, 2)
	wantReceipt(t, e.receipt(t, e.alice, 3), r3)
	wantReceipt(t, e.receipt(t, e.alice, 4), r4)
	expire(t0.Add(90*time.Minute), 0)
	expire(t0.Add(2*time.Hour), 0) // the cutoff is exclusive
	expire(t0.Add(3*time.Hour), 1)
	wantReceipt(t, e.receipt(t, e.alice, 4), r4)

	// An expired receipt of a mutation whose entry is still in the log is
	// rebuilt from it.
	en := entry(scopeA, 1, "n1", 1, e.alice, 10)
	b := batch(en)
	b.Receipts = []storage.Receipt{receiptFor(en)}
	e.commit(t, b)
	if got := e.receipt(t, e.alice, 10); got.Outcome != storage.Merged {
		t.Fatalf("Receipt(10) = %+v, want the stored Merged receipt", got)
	}
	var many []storage.Receipt
	for mid := uint64(20); mid < 27; mid++ {
		many = append(many, rejected(e.bob, mid))
	}
	e.commit(t, &storage.Batch{Scope: scopeA, Receipts: many})
	expire(e.clock.Advance(24*time.Hour), 9)
	e.wantNoReceipt(t, e.bob, 26)
	if got := e.receipt(t, e.alice, 10); got.Outcome != storage.Applied || got.Seq != 1 {
		t.Errorf("Receipt(10) = %+v, want Applied seq 1 rebuilt from the log", got)
	}
	e.wantNoReceipt(t, e.alice, 4)
}
