package storagetest

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/syncgate/syncgate/storage"
)

// SessionsOpener opens a new, empty session store for one subtest. Like
// Opener, the store must read the current time only through now, must be
// closed and removed by a t.Cleanup it registers, and must not sweep by
// itself (the suite calls SweepSessions).
type SessionsOpener func(t *testing.T, now func() time.Time) storage.Sessions

// sessionEpoch is where the sessions suite's clock starts: a whole second
// a year ahead of the real clock. A server with TTL indexes (MongoDB)
// deletes by the real clock, so sessions stamped in the past would vanish
// under the suite within a minute.
func sessionEpoch() time.Time {
	return time.Now().Add(365 * 24 * time.Hour).Truncate(time.Second).UTC()
}

const (
	sessTTL      = 2 * time.Hour
	sessRemember = 24 * time.Hour
	sessMax      = 10
)

// RunSessions runs the storage.Sessions conformance suite against stores
// made by open.
func RunSessions(t *testing.T, open SessionsOpener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, e *sessEnv)
	}{
		{"Create", testSessionCreate},
		{"InvalidSpec", testSessionInvalidSpec},
		{"Resume", testSessionResume},
		{"NoResume", testSessionNoResume},
		{"RememberTTL", testSessionRemember},
		{"Touch", testSessionTouch},
		{"EvictOldest", testSessionEvict},
		{"Revoke", testSessionRevoke},
		{"ListFiltersExpired", testSessionListExpired},
		{"Sweep", testSessionSweep},
		{"ConcurrentBegins", testSessionConcurrentBegins},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &clock{now: sessionEpoch()}
			tc.fn(t, &sessEnv{s: open(t, c.Now), clock: c})
		})
	}
}

type sessEnv struct {
	s     storage.Sessions
	clock *clock
}

func spec(user, device string) storage.SessionSpec {
	return storage.SessionSpec{
		User: user, Device: device, Node: "n1", Platform: "ios", AppVersion: "1.2.3",
		TTL: sessTTL, MaxPerUser: sessMax,
	}
}

// begin begins a session and fails the test on an error.
func (e *sessEnv) begin(t *testing.T, sp storage.SessionSpec) (storage.Session, []storage.Session) {
	t.Helper()
	s, evicted, err := e.s.BeginSession(context.Background(), sp)
	if err != nil {
		t.Fatalf("BeginSession(%+v) = %v", sp, err)
	}
	return s, evicted
}

func (e *sessEnv) get(t *testing.T, id string) storage.Session {
	t.Helper()
	s, err := e.s.Session(context.Background(), id)
	if err != nil {
		t.Fatalf("Session(%s) = %v", id, err)
	}
	return s
}

func (e *sessEnv) list(t *testing.T, user string) []string {
	t.Helper()
	list, err := e.s.ListSessions(context.Background(), user)
	if err != nil {
		t.Fatalf("ListSessions(%s) = %v", user, err)
	}
	ids := make([]string, len(list))
	for i, s := range list {
		ids[i] = s.ID
		if s.User != user || !s.Live(e.clock.Now()) {
			t.Errorf("ListSessions(%s) holds %+v", user, s)
		}
	}
	return ids
}

// sameSession compares sessions field by field, times with Equal.
func sameSession(a, b storage.Session) error {
	type plain struct {
		ID, User, Device, Node, Platform, AppVersion string
		Remember, Revoked, Evicted                   bool
		TTL                                          time.Duration
	}
	pa := plain{a.ID, a.User, a.Device, a.Node, a.Platform, a.AppVersion, a.Remember, a.Revoked, a.Evicted, a.TTL}
	pb := plain{b.ID, b.User, b.Device, b.Node, b.Platform, b.AppVersion, b.Remember, b.Revoked, b.Evicted, b.TTL}
	if pa != pb {
		return fmt.Errorf("%+v != %+v", pa, pb)
	}
	for _, f := range []struct {
		name string
		x, y time.Time
	}{
		{"CreatedAt", a.CreatedAt, b.CreatedAt}, {"ConnectedAt", a.ConnectedAt, b.ConnectedAt},
		{"LastSeenAt", a.LastSeenAt, b.LastSeenAt}, {"ExpiresAt", a.ExpiresAt, b.ExpiresAt},
		{"RevokedAt", a.RevokedAt, b.RevokedAt},
	} {
		if !f.x.Equal(f.y) {
			return fmt.Errorf("%s %v != %v", f.name, f.x, f.y)
		}
	}
	return nil
}

func testSessionCreate(t *testing.T, e *sessEnv) {
	now := e.clock.Now()
	s, evicted := e.begin(t, spec("alice", "phone"))
	if b, err := hex.DecodeString(s.ID); err != nil || len(b) != storage.SessionIDBytes {
		t.Fatalf("id %q is not %d bytes of hex", s.ID, storage.SessionIDBytes)
	}
	want := storage.Session{
		ID: s.ID, User: "alice", Device: "phone", Node: "n1", Platform: "ios", AppVersion: "1.2.3", TTL: sessTTL,
		CreatedAt: now, ConnectedAt: now, LastSeenAt: now, ExpiresAt: now.Add(sessTTL),
	}
	if err := sameSession(s, want); err != nil || len(evicted) != 0 {
		t.Fatalf("BeginSession = %+v, evicted %v: %v", s, evicted, err)
	}
	if err := sameSession(e.get(t, s.ID), want); err != nil {
		t.Errorf("Session: %v", err)
	}
	e.clock.Advance(time.Second) // (CreatedAt, ID) order: s first
	s2, _ := e.begin(t, spec("alice", "laptop"))
	if s2.ID == s.ID {
		t.Fatal("two sessions got one id")
	}
	if got := e.list(t, "alice"); !slices.Equal(got, []string{s.ID, s2.ID}) {
		t.Errorf("ListSessions = %v, want [%s %s]", got, s.ID, s2.ID)
	}
	if got := e.list(t, "bob"); len(got) != 0 {
		t.Errorf("ListSessions(bob) = %v", got)
	}
	if _, err := e.s.Session(context.Background(), "unknown"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Session(unknown) = %v, want ErrNotFound", err)
	}
}

func testSessionInvalidSpec(t *testing.T, e *sessEnv) {
	for _, tc := range []struct {
		name string
		edit func(*storage.SessionSpec)
	}{
		{"no user", func(sp *storage.SessionSpec) { sp.User = "" }},
		{"no device", func(sp *storage.SessionSpec) { sp.Device = "" }},
		{"zero TTL", func(sp *storage.SessionSpec) { sp.TTL = 0 }},
		{"negative cap", func(sp *storage.SessionSpec) { sp.MaxPerUser = -1 }},
	} {
		sp := spec("alice", "phone")
		tc.edit(&sp)
		if _, _, err := e.s.BeginSession(context.Background(), sp); err == nil {
			t.Errorf("%s: BeginSession accepted %+v", tc.name, sp)
		}
	}
}

func testSessionResume(t *testing.T, e *sessEnv) {
	first, _ := e.begin(t, spec("alice", "phone"))
	now := e.clock.Advance(time.Hour + 59*time.Minute) // still within the TTL
	sp := spec("alice", "phone")
	sp.Resume, sp.Node, sp.Platform, sp.AppVersion = first.ID, "n2", "android", "2.0"
	got, evicted := e.begin(t, sp)
	want := first
	want.Node, want.Platform, want.AppVersion = "n2", "android", "2.0"
	want.ConnectedAt, want.LastSeenAt, want.ExpiresAt = now, now, now.Add(sessTTL)
	if err := sameSession(got, want); err != nil || len(evicted) != 0 {
		t.Fatalf("resume = %+v, evicted %v: %v", got, evicted, err)
	}
	if err := sameSession(e.get(t, first.ID), want); err != nil {
		t.Errorf("Session after resume: %v", err)
	}
	if ids := e.list(t, "alice"); !slices.Equal(ids, []string{first.ID}) {
		t.Errorf("ListSessions = %v: a resume must not add a session", ids)
	}
	// The resume slid the expiry: alive past the first ExpiresAt.
	e.clock.Advance(time.Hour)
	if s := e.get(t, first.ID); !s.Live(e.clock.Now()) {
		t.Errorf("session %+v expired at its first ExpiresAt despite the resume", s)
	}
}

func testSessionNoResume(t *testing.T, e *sessEnv) {
	base, _ := e.begin(t, spec("alice", "phone"))
	short := spec("alice", "watch")
	short.TTL = time.Minute
	expiring, _ := e.begin(t, short)
	e.clock.Advance(time.Minute) // expiring is gone (ExpiresAt is exclusive)
	for _, tc := range []struct {
		name, user, device, resume string
	}{
		{"another device", "alice", "laptop", base.ID},
		{"another user", "bob", "phone", base.ID},
		{"unknown id", "alice", "phone", "0123456789abcdef"},
		{"garbage id", "alice", "phone", "../../etc/passwd\x00"},
		{"expired", "alice", "watch", expiring.ID},
	} {
		sp := spec(tc.user, tc.device)
		sp.Resume = tc.resume
		got, _ := e.begin(t, sp)
		if got.ID == tc.resume || got.User != tc.user || got.Device != tc.device || !got.CreatedAt.Equal(e.clock.Now()) {
			t.Errorf("%s: BeginSession = %+v, want a new session", tc.name, got)
		}
	}
	if _, err := e.s.Session(context.Background(), expiring.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Session(expired) = %v, want ErrNotFound", err)
	}
	if s := e.get(t, base.ID); !s.Live(e.clock.Now()) || !s.ConnectedAt.Equal(base.ConnectedAt) {
		t.Errorf("a foreign resume changed %+v", s)
	}
}

func testSessionRemember(t *testing.T, e *sessEnv) {
	sp := spec("alice", "phone")
	sp.Remember, sp.TTL = true, sessRemember
	s, _ := e.begin(t, sp)
	if !s.Remember || s.TTL != sessRemember || !s.ExpiresAt.Equal(s.CreatedAt.Add(sessRemember)) {
		t.Fatalf("remember session = %+v", s)
	}
	now := e.clock.Advance(20 * time.Hour)
	touched, err := e.s.TouchSession(context.Background(), s.ID)
	if err != nil || !touched.ExpiresAt.Equal(now.Add(sessRemember)) {
		t.Fatalf("TouchSession = %+v, %v; want ExpiresAt now+24h", touched, err)
	}
	// A short session begun at the same time is long gone.
	e.clock.Advance(23 * time.Hour)
	if got := e.list(t, "alice"); !slices.Equal(got, []string{s.ID}) {
		t.Errorf("ListSessions = %v", got)
	}
}

func testSessionTouch(t *testing.T, e *sessEnv) {
	ctx := context.Background()
	s, _ := e.begin(t, spec("alice", "phone"))
	now := e.clock.Advance(30 * time.Minute)
	got, err := e.s.TouchSession(ctx, s.ID)
	want := s
	want.LastSeenAt, want.ExpiresAt = now, now.Add(sessTTL)
	if err != nil {
		t.Fatalf("TouchSession = %v", err)
	}
	if err := sameSession(got, want); err != nil {
		t.Errorf("TouchSession: %v", err)
	}
	if err := sameSession(e.get(t, s.ID), want); err != nil {
		t.Errorf("Session after touch: %v", err)
	}
	if _, err := e.s.TouchSession(ctx, "unknown"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("TouchSession(unknown) = %v, want ErrNotFound", err)
	}
	// Revoked: refused, and not extended.
	r, _ := e.begin(t, spec("alice", "laptop"))
	if _, err := e.s.RevokeSession(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Minute)
	rs, err := e.s.TouchSession(ctx, r.ID)
	if !errors.Is(err, storage.ErrSessionRevoked) || rs.ID != r.ID || !rs.Revoked {
		t.Errorf("TouchSession(revoked) = %+v, %v; want the session and ErrSessionRevoked", rs, err)
	}
	if got := e.get(t, r.ID); !got.ExpiresAt.Equal(r.ExpiresAt) {
		t.Errorf("touching a revoked session moved ExpiresAt %v -> %v", r.ExpiresAt, got.ExpiresAt)
	}
	// Expired: gone, and a touch does not bring it back.
	e.clock.Advance(sessTTL)
	if _, err := e.s.TouchSession(ctx, s.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("TouchSession(expired) = %v, want ErrNotFound", err)
	}
}

func testSessionEvict(t *testing.T, e *sessEnv) {
	ctx := context.Background()
	bob, _ := e.begin(t, spec("bob", "phone"))
	var ids []string
	for i := range sessMax {
		s, evicted := e.begin(t, spec("alice", fmt.Sprintf("d%02d", i)))
		if len(evicted) != 0 {
			t.Fatalf("session %d evicted %v", i+1, evicted)
		}
		ids = append(ids, s.ID)
		e.clock.Advance(time.Second)
	}
	now := e.clock.Now()
	eleventh, evicted := e.begin(t, spec("alice", "d10"))
	if eleventh.Revoked {
		t.Fatalf("the new session was evicted: %+v", eleventh)
	}
	if len(evicted) != 1 || evicted[0].ID != ids[0] || !evicted[0].Revoked || !evicted[0].Evicted ||
		!evicted[0].RevokedAt.Equal(now) || evicted[0].Device != "d00" {
		t.Fatalf("evicted = %+v, want the oldest (%s), revoked", evicted, ids[0])
	}
	want := append(slices.Clone(ids[1:]), eleventh.ID)
	if got := e.list(t, "alice"); !slices.Equal(got, want) {
		t.Errorf("ListSessions = %v, want %v", got, want)
	}
	if got := e.get(t, ids[0]); !got.Revoked || !got.Evicted {
		t.Errorf("Session(evicted) = %+v", got)
	}
	sp := spec("alice", "d00")
	sp.Resume = ids[0]
	if _, _, err := e.s.BeginSession(ctx, sp); !errors.Is(err, storage.ErrSessionRevoked) {
		t.Errorf("resuming an evicted session = %v, want ErrSessionRevoked", err)
	}
	if got := e.list(t, "bob"); !slices.Equal(got, []string{bob.ID}) {
		t.Errorf("ListSessions(bob) = %v: another user's cap evicted bob", got)
	}
	// Resuming does not count as a new session.
	sp = spec("alice", "d05")
	sp.Resume = ids[5]
	if _, evicted := e.begin(t, sp); len(evicted) != 0 {
		t.Errorf("a resume evicted %v", evicted)
	}
	// No cap: nothing is evicted.
	sp = spec("alice", "d99")
	sp.MaxPerUser = 0
	if _, evicted := e.begin(t, sp); len(evicted) != 0 {
		t.Errorf("MaxPerUser 0 evicted %v", evicted)
	}
}

func testSessionRevoke(t *testing.T, e *sessEnv) {
	ctx := context.Background()
	s, _ := e.begin(t, spec("alice", "phone"))
	keep, _ := e.begin(t, spec("alice", "laptop"))
	now := e.clock.Advance(time.Minute)
	got, err := e.s.RevokeSession(ctx, s.ID)
	if err != nil || got.ID != s.ID || !got.Revoked || got.Evicted || !got.RevokedAt.Equal(now) {
		t.Fatalf("RevokeSession = %+v, %v", got, err)
	}
	if err := sameSession(e.get(t, s.ID), got); err != nil {
		t.Errorf("Session after revoke: %v", err)
	}
	if ids := e.list(t, "alice"); !slices.Equal(ids, []string{keep.ID}) {
		t.Errorf("ListSessions = %v, want only %s", ids, keep.ID)
	}
	e.clock.Advance(time.Minute)
	again, err := e.s.RevokeSession(ctx, s.ID)
	if err != nil || !again.RevokedAt.Equal(now) {
		t.Errorf("RevokeSession again = %+v, %v; want the first RevokedAt %v", again, err, now)
	}
	sp := spec("alice", "phone")
	sp.Resume = s.ID
	r, _, err := e.s.BeginSession(ctx, sp)
	if !errors.Is(err, storage.ErrSessionRevoked) || r.ID != s.ID {
		t.Errorf("resuming a revoked session = %+v, %v; want it and ErrSessionRevoked", r, err)
	}
	// Presented by another device, a revoked id is merely foreign.
	sp.Device = "tablet"
	if n, _ := e.begin(t, sp); n.ID == s.ID {
		t.Errorf("another device resumed a revoked session")
	}
	if _, err := e.s.RevokeSession(ctx, "unknown"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("RevokeSession(unknown) = %v, want ErrNotFound", err)
	}
	// Once expired, the revoked id is unknown: resuming it begins anew.
	e.clock.Advance(sessTTL)
	if _, err := e.s.Session(ctx, s.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Session(revoked, expired) = %v, want ErrNotFound", err)
	}
	if _, err := e.s.RevokeSession(ctx, s.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("RevokeSession(expired) = %v, want ErrNotFound", err)
	}
	sp.Device = "phone"
	if n, _ := e.begin(t, sp); n.ID == s.ID || n.Revoked {
		t.Errorf("resuming an expired revoked session = %+v, want a new one", n)
	}
}

func testSessionListExpired(t *testing.T, e *sessEnv) {
	long, _ := e.begin(t, spec("alice", "phone"))
	e.clock.Advance(time.Second)
	sp := spec("alice", "laptop")
	sp.TTL = time.Hour
	short, _ := e.begin(t, sp)
	if got := e.list(t, "alice"); !slices.Equal(got, []string{long.ID, short.ID}) {
		t.Fatalf("ListSessions = %v", got)
	}
	e.clock.Advance(time.Hour - time.Second)
	if got := e.list(t, "alice"); len(got) != 2 {
		t.Fatalf("ListSessions a second before expiry = %v", got)
	}
	e.clock.Advance(time.Second)
	if got := e.list(t, "alice"); !slices.Equal(got, []string{long.ID}) {
		t.Errorf("ListSessions after the short one expired = %v, want [%s]", got, long.ID)
	}
}

func testSessionSweep(t *testing.T, e *sessEnv) {
	ctx := context.Background()
	sp := spec("alice", "phone")
	sp.TTL = time.Hour
	a, _ := e.begin(t, sp)
	sp.Device = "watch"
	c, _ := e.begin(t, sp)
	if _, err := e.s.RevokeSession(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	b, _ := e.begin(t, spec("bob", "laptop")) // 2 h
	if n, err := e.s.SweepSessions(ctx, e.clock.Now()); err != nil || n != 0 {
		t.Fatalf("SweepSessions before expiry = %d, %v; want 0", n, err)
	}
	now := e.clock.Advance(time.Hour)
	if n, err := e.s.SweepSessions(ctx, now); err != nil || n != 2 {
		t.Fatalf("SweepSessions at the expiry of two = %d, %v; want 2", n, err)
	}
	if n, err := e.s.SweepSessions(ctx, now); err != nil || n != 0 {
		t.Errorf("SweepSessions again = %d, %v; want 0", n, err)
	}
	if got := e.get(t, b.ID); !got.Live(now) {
		t.Errorf("sweep removed a live session: %+v", got)
	}
	for _, id := range []string{a.ID, c.ID} {
		if _, err := e.s.Session(ctx, id); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Session(swept) = %v, want ErrNotFound", err)
		}
	}
	// Gone for good: the id of the swept revoked session is unknown.
	sp.Resume = c.ID
	if n, _ := e.begin(t, sp); n.ID == c.ID {
		t.Errorf("a swept session was resumed")
	}
}

// testSessionConcurrentBegins races begins for one user (all at one
// clock instant, the hardest case for the (CreatedAt, ID) order) and
// requires the cap to hold once they are done.
func testSessionConcurrentBegins(t *testing.T, e *sessEnv) {
	const workers = 16
	ctx := context.Background()
	for i := range 3 {
		e.begin(t, spec("alice", fmt.Sprintf("old%d", i)))
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		created []string
		errs    []error
	)
	for i := range workers {
		wg.Go(func() {
			s, _, err := e.s.BeginSession(ctx, spec("alice", fmt.Sprintf("w%02d", i)))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			created = append(created, s.ID)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	live := e.list(t, "alice")
	if len(live) == 0 || len(live) > sessMax {
		t.Fatalf("%d live sessions after %d concurrent begins, want 1..%d", len(live), workers, sessMax)
	}
	if len(created) != workers {
		t.Fatalf("%d sessions created, want %d", len(created), workers)
	}
	// Whatever survived is the newest in (CreatedAt, ID) order: another
	// begin brings the set to exactly the cap.
	e.clock.Advance(time.Second)
	n, _ := e.begin(t, spec("alice", "last"))
	live = e.list(t, "alice")
	if len(live) != sessMax || live[len(live)-1] != n.ID {
		t.Errorf("after one more begin: %d live (%v), want %d ending with %s", len(live), live, sessMax, n.ID)
	}
}
