package presence

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"
)

// One suite, every Tracker. The Redis tracker runs against the real Redis
// named by SYNCGATE_REDIS_ADDR (make test starts one), each test under its
// own key prefix; a missing server fails the test, never skips it.

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.UnixMilli(time.Now().UnixMilli()).UTC()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

const testTTL = 60 * time.Second

type factory struct {
	name string
	make func(t *testing.T, c *clock) Tracker
}

func redisAddr(t testing.TB) string {
	addr := os.Getenv("SYNCGATE_REDIS_ADDR")
	if addr == "" {
		t.Fatal("SYNCGATE_REDIS_ADDR is not set: run the tests through make test")
	}
	return addr
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func newTestRedisTracker(t testing.TB, o Options) *RedisTracker {
	tr, err := NewRedisTracker(RedisTrackerConfig{Addr: redisAddr(t), Prefix: "presencetest-" + randHex(6), Options: o})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Ping(context.Background()); err != nil {
		t.Fatalf("redis at %s: %v", redisAddr(t), err)
	}
	t.Cleanup(func() { tr.Close(context.Background()) })
	return tr
}

var factories = []factory{
	{"memory", func(t *testing.T, c *clock) Tracker {
		return NewMemoryTracker(Options{TTL: testTTL, Now: c.Now})
	}},
	{"redis", func(t *testing.T, c *clock) Tracker {
		return newTestRedisTracker(t, Options{TTL: testTTL, Now: c.Now})
	}},
}

func forEach(t *testing.T, f func(t *testing.T, tr Tracker, c *clock)) {
	for _, fac := range factories {
		t.Run(fac.name, func(t *testing.T) {
			c := newClock()
			f(t, fac.make(t, c), c)
		})
	}
}

func dev(conn, user, device, inst string) Device {
	return Device{Conn: conn, User: user, Device: device, Session: "s-" + conn, Node: "n", Instance: inst,
		Platform: "ios", AppVersion: "1.0", State: Active}
}

func conns(ds []Device) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Conn
	}
	return out
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestConnectDisconnect(t *testing.T) {
	forEach(t, func(t *testing.T, tr Tracker, c *clock) {
		ctx := context.Background()
		must(t, tr.RenewNode(ctx, "i1"))
		a := dev("c1", "alice", "phone", "i1")
		a.Connected, a.LastSeen = c.Now(), c.Now()
		a.Checkpoints = map[string]uint64{"user:alice": 1 << 60}
		a.LastError = &LastError{Code: "bad_request", Message: "x", At: c.Now()}
		must(t, tr.Connect(ctx, a))
		must(t, tr.Connect(ctx, dev("c2", "alice", "laptop", "i1")))
		must(t, tr.Connect(ctx, dev("c3", "bob", "phone", "i1")))

		us, err := tr.User(ctx, "alice")
		must(t, err)
		if got := conns(us); !slices.Equal(got, []string{"c1", "c2"}) {
			t.Fatalf("User(alice) = %v", got)
		}
		if us[0].Checkpoints["user:alice"] != 1<<60 || us[0].LastError == nil || us[0].LastError.Code != "bad_request" {
			t.Fatalf("entry did not round-trip: %+v", us[0])
		}
		ds, err := tr.Devices(ctx, "phone")
		must(t, err)
		if got := conns(ds); !slices.Equal(got, []string{"c1", "c3"}) {
			t.Fatalf("Devices(phone) = %v", got)
		}
		p, err := tr.Online(ctx, Query{Limit: 10})
		must(t, err)
		if p.Users != 2 || p.Conns != 3 || p.Matching != 3 || len(p.Devices) != 3 || p.Next != "" {
			t.Fatalf("Online = %+v", p)
		}

		c.Advance(5 * time.Second)
		g, ok, err := tr.Disconnect(ctx, "c1")
		must(t, err)
		if !ok || g.Device.Conn != "c1" || g.Device.User != "alice" {
			t.Fatalf("Disconnect = %+v, %v", g, ok)
		}
		if _, ok, err := tr.Disconnect(ctx, "c1"); err != nil || ok {
			t.Fatalf("second Disconnect = %v, %v; want not found", ok, err)
		}
		us, _ = tr.User(ctx, "alice")
		if got := conns(us); !slices.Equal(got, []string{"c2"}) {
			t.Fatalf("User(alice) after disconnect = %v", got)
		}
		rec, err := tr.Recent(ctx, "alice")
		must(t, err)
		if r, ok := rec["phone"]; !ok || !r.LastSeen.Equal(c.Now()) || r.LastError == nil {
			t.Fatalf("Recent(alice)[phone] = %+v (ok %v); want LastSeen %v", r, ok, c.Now())
		}
		must(t, errors.Join(
			func() error { _, _, err := tr.Disconnect(ctx, "c2"); return err }(),
			func() error { _, _, err := tr.Disconnect(ctx, "c3"); return err }()))
		p, _ = tr.Online(ctx, Query{Limit: 10})
		if p.Users != 0 || p.Conns != 0 || len(p.Devices) != 0 {
			t.Fatalf("Online after all left = %+v", p)
		}
	})
}

func TestExpiryAndRefresh(t *testing.T) {
	forEach(t, func(t *testing.T, tr Tracker, c *clock) {
		ctx := context.Background()
		must(t, tr.RenewNode(ctx, "i1"))
		start := c.Now()
		must(t, tr.Connect(ctx, dev("stay", "alice", "phone", "i1")))
		must(t, tr.Connect(ctx, dev("ghost", "bob", "phone", "i1")))
		must(t, tr.Join(ctx, "space:t/doc:1", Member{Conn: "ghost", User: "bob", Device: "phone"}))

		c.Advance(25 * time.Second)
		must(t, tr.RenewNode(ctx, "i1"))
		refreshed := c.Now()
		d := dev("stay", "alice", "phone", "i1")
		d.LastSeen, d.State = refreshed, Background
		missing, err := tr.Refresh(ctx, []Device{d, dev("never", "carol", "x", "i1")})
		must(t, err)
		if !slices.Equal(missing, []string{"never"}) {
			t.Fatalf("Refresh missing = %v, want [never]", missing)
		}
		c.Advance(testTTL - 25*time.Second + time.Millisecond) // ghost's expiry has passed
		must(t, tr.RenewNode(ctx, "i1"))
		p, _ := tr.Online(ctx, Query{Limit: 10})
		if got := conns(p.Devices); !slices.Equal(got, []string{"stay"}) {
			t.Fatalf("Online before sweep = %v; an expired entry must be hidden", got)
		}
		if m, _ := tr.Room(ctx, "space:t/doc:1"); len(m) != 0 {
			t.Fatalf("Room shows an expired member: %+v", m)
		}
		gone, err := tr.Sweep(ctx)
		must(t, err)
		if len(gone) != 1 || gone[0].Device.Conn != "ghost" || !slices.Equal(gone[0].Rooms, []string{"space:t/doc:1"}) {
			t.Fatalf("Sweep = %+v", gone)
		}
		if again, _ := tr.Sweep(ctx); len(again) != 0 {
			t.Fatalf("second Sweep = %+v", again)
		}
		rec, _ := tr.Recent(ctx, "bob")
		if r := rec["phone"]; !r.LastSeen.Equal(start) {
			t.Fatalf("a swept entry's last record says %v; want its last refresh %v", r.LastSeen, start)
		}
		us, _ := tr.User(ctx, "alice")
		if len(us) != 1 || us[0].State != Background || !us[0].LastSeen.Equal(refreshed) {
			t.Fatalf("refreshed entry = %+v", us)
		}
		p, _ = tr.Online(ctx, Query{Limit: 10})
		if p.Users != 1 || p.Conns != 1 {
			t.Fatalf("totals after sweep = %+v", p)
		}
	})
}

// A node that dies stops renewing its record: its entries are swept when
// the record expires, even those refreshed later than the record.
func TestNodeRecordExpiry(t *testing.T) {
	forEach(t, func(t *testing.T, tr Tracker, c *clock) {
		ctx := context.Background()
		must(t, tr.RenewNode(ctx, "dead"))
		must(t, tr.RenewNode(ctx, "live"))
		must(t, tr.Connect(ctx, dev("d1", "alice", "phone", "dead")))
		must(t, tr.Connect(ctx, dev("l1", "bob", "phone", "live")))
		c.Advance(40 * time.Second)
		// d1 refreshed (entry expiry now +100 s) but its node stops here.
		if _, err := tr.Refresh(ctx, []Device{dev("d1", "alice", "phone", "dead")}); err != nil {
			t.Fatal(err)
		}
		must(t, tr.RenewNode(ctx, "live"))
		_, err := tr.Refresh(ctx, []Device{dev("l1", "bob", "phone", "live")})
		must(t, err)
		c.Advance(21 * time.Second) // dead's record expired; d1's own expiry has not
		us, _ := tr.User(ctx, "alice")
		if len(us) != 0 {
			t.Fatalf("an entry of an expired node is visible: %+v", us)
		}
		gone, err := tr.Sweep(ctx)
		must(t, err)
		if got := conns(goneDevices(gone)); !slices.Equal(got, []string{"d1"}) {
			t.Fatalf("Sweep = %v, want [d1]", got)
		}
		us, _ = tr.User(ctx, "bob")
		if len(us) != 1 {
			t.Fatalf("the live node's entry is gone: %+v", us)
		}
	})
}

// A dead node with more entries than one sweep step removes: every one
// is swept, each exactly once, and the node record goes with the last.
func TestSweepLargeDeadNode(t *testing.T) {
	forEach(t, func(t *testing.T, tr Tracker, c *clock) {
		ctx := context.Background()
		must(t, tr.RenewNode(ctx, "big"))
		const n = 1200
		for i := range n {
			must(t, tr.Connect(ctx, dev(fmt.Sprintf("c%04d", i), fmt.Sprintf("u%d", i%50), "d", "big")))
		}
		c.Advance(testTTL + time.Second)
		gone, err := tr.Sweep(ctx)
		must(t, err)
		seen := map[string]bool{}
		for _, g := range gone {
			if seen[g.Device.Conn] {
				t.Fatalf("%s swept twice", g.Device.Conn)
			}
			seen[g.Device.Conn] = true
		}
		if len(seen) != n {
			t.Fatalf("swept %d of %d", len(seen), n)
		}
		p, _ := tr.Online(ctx, Query{Limit: 10})
		if p.Conns != 0 || p.Users != 0 {
			t.Fatalf("after the sweep: %+v", p)
		}
		// A new process under the same instance name starts clean.
		must(t, tr.RenewNode(ctx, "big"))
		must(t, tr.Connect(ctx, dev("fresh", "u", "d", "big")))
		if again, _ := tr.Sweep(ctx); len(again) != 0 {
			t.Fatalf("a renewed node lost entries: %+v", again)
		}
	})
}

func goneDevices(gs []Gone) []Device {
	out := make([]Device, len(gs))
	for i, g := range gs {
		out[i] = g.Device
	}
	return out
}

func TestRooms(t *testing.T) {
	forEach(t, func(t *testing.T, tr Tracker, c *clock) {
		ctx := context.Background()
		room := "space:t/doc:1"
		must(t, tr.RenewNode(ctx, "i1"))
		if err := tr.Join(ctx, room, Member{Conn: "nobody"}); !errors.Is(err, ErrGone) {
			t.Fatalf("Join of an offline conn = %v, want ErrGone", err)
		}
		if err := tr.SetMember(ctx, room, Member{Conn: "nobody"}); !errors.Is(err, ErrGone) {
			t.Fatalf("SetMember of a non-member = %v, want ErrGone", err)
		}
		for _, cn := range []string{"b", "a"} {
			must(t, tr.Connect(ctx, dev(cn, "u-"+cn, "d", "i1")))
			must(t, tr.Join(ctx, room, Member{Conn: cn, User: "u-" + cn, Device: "d", Joined: c.Now(), Updated: c.Now()}))
		}
		must(t, tr.Join(ctx, "space:t/doc:2", Member{Conn: "a", User: "u-a", Device: "d"}))
		st := json.RawMessage(`{"cursor":3}`)
		must(t, tr.SetMember(ctx, room, Member{Conn: "a", User: "u-a", Device: "d", State: st, TypingUntil: c.Now().Add(3 * time.Second)}))
		ms, err := tr.Room(ctx, room)
		must(t, err)
		if len(ms) != 2 || ms[0].Conn != "a" || string(ms[0].State) != `{"cursor":3}` || ms[0].TypingUntil.IsZero() {
			t.Fatalf("Room = %+v", ms)
		}
		ok, err := tr.Leave(ctx, room, "b")
		must(t, err)
		if !ok {
			t.Fatal("Leave of a member reported not a member")
		}
		if ok, _ := tr.Leave(ctx, room, "b"); ok {
			t.Fatal("second Leave reported a member")
		}
		g, _, err := tr.Disconnect(ctx, "a")
		must(t, err)
		if !slices.Equal(g.Rooms, []string{room, "space:t/doc:2"}) {
			t.Fatalf("Disconnect rooms = %v", g.Rooms)
		}
		for _, r := range []string{room, "space:t/doc:2"} {
			if ms, _ := tr.Room(ctx, r); len(ms) != 0 {
				t.Fatalf("Room(%s) after its members left = %+v", r, ms)
			}
		}
	})
}

func TestAllowTyping(t *testing.T) {
	forEach(t, func(t *testing.T, tr Tracker, c *clock) {
		ctx := context.Background()
		every := 300 * time.Millisecond
		for i, want := range []bool{true, false, false} {
			ok, err := tr.AllowTyping(ctx, "r", "alice", every)
			must(t, err)
			if ok != want {
				t.Fatalf("call %d: AllowTyping = %v, want %v", i, ok, want)
			}
		}
		if ok, _ := tr.AllowTyping(ctx, "r", "bob", every); !ok {
			t.Fatal("another user is throttled by alice")
		}
		if ok, _ := tr.AllowTyping(ctx, "r2", "alice", every); !ok {
			t.Fatal("another room is throttled by r")
		}
		// Redis expires the throttle by its own clock, the memory tracker
		// by the tracker's: move both.
		c.Advance(every + 50*time.Millisecond)
		time.Sleep(every + 50*time.Millisecond)
		if ok, _ := tr.AllowTyping(ctx, "r", "alice", every); !ok {
			t.Fatal("still throttled after the interval")
		}
	})
}

func TestOnlinePaging(t *testing.T) {
	forEach(t, func(t *testing.T, tr Tracker, c *clock) {
		ctx := context.Background()
		must(t, tr.RenewNode(ctx, "i1"))
		var want []string
		for i := range 37 {
			d := dev(fmt.Sprintf("c%02d", i), fmt.Sprintf("user%d", i%7), "d", "i1")
			if i%3 == 0 {
				d.Platform = "android"
			}
			if i%2 == 0 {
				d.AppVersion = "2.0"
			}
			must(t, tr.Connect(ctx, d))
		}
		all, _ := tr.Online(ctx, Query{Limit: 1000})
		for _, d := range all.Devices {
			want = append(want, d.User+"/"+d.Conn)
		}
		if !slices.IsSorted(want) || len(want) != 37 {
			t.Fatalf("Online is not in (user, conn) order or incomplete: %v", want)
		}
		cases := []struct {
			name      string
			q         Query
			wantCount int
		}{
			{"all", Query{Limit: 10}, 37},
			{"platform", Query{Platform: "android", Limit: 4}, 13},
			{"version", Query{AppVersion: "2.0", Limit: 5}, 19},
			{"both", Query{Platform: "android", AppVersion: "2.0", Limit: 3}, 7},
			{"none", Query{Platform: "symbian", Limit: 3}, 0},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				var got []string
				q := tc.q
				for pages := 0; ; pages++ {
					if pages > 50 {
						t.Fatal("paging does not end")
					}
					p, err := tr.Online(ctx, q)
					must(t, err)
					if p.Users != 7 || p.Conns != 37 || p.Matching != tc.wantCount {
						t.Fatalf("totals = users %d conns %d matching %d; want 7, 37, %d", p.Users, p.Conns, p.Matching, tc.wantCount)
					}
					if len(p.Devices) > q.Limit {
						t.Fatalf("page of %d > limit %d", len(p.Devices), q.Limit)
					}
					for _, d := range p.Devices {
						if !q.matches(&d) {
							t.Fatalf("%+v does not match the filter", d)
						}
						got = append(got, d.User+"/"+d.Conn)
					}
					if p.Next == "" {
						break
					}
					q.After = p.Next
				}
				if len(got) != tc.wantCount || !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
					t.Fatalf("paged %d entries (%v), want %d, sorted, unique", len(got), got, tc.wantCount)
				}
			})
		}
		if _, err := tr.Online(ctx, Query{After: "!!not-a-cursor", Limit: 3}); !errors.Is(err, ErrBadCursor) {
			t.Fatalf("bad cursor = %v, want ErrBadCursor", err)
		}
	})
}

// Concurrent connects and disconnects from several goroutines (nodes)
// leave the counters exact.
func TestConcurrentChurn(t *testing.T) {
	forEach(t, func(t *testing.T, tr Tracker, c *clock) {
		ctx := context.Background()
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 40 {
					cn := fmt.Sprintf("w%d-%d", w, i)
					d := dev(cn, fmt.Sprintf("u%d", i%5), "d", fmt.Sprintf("i%d", w))
					if err := tr.Connect(ctx, d); err != nil {
						errs <- err
						return
					}
					if err := tr.Join(ctx, "room", Member{Conn: cn, User: d.User}); err != nil {
						errs <- err
						return
					}
					if i%2 == 0 {
						if _, _, err := tr.Disconnect(ctx, cn); err != nil {
							errs <- err
							return
						}
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		p, err := tr.Online(ctx, Query{Limit: 1000})
		must(t, err)
		if p.Conns != 160 || len(p.Devices) != 160 || p.Users != 5 {
			t.Fatalf("after churn: conns %d, listed %d, users %d; want 160, 160, 5", p.Conns, len(p.Devices), p.Users)
		}
		ms, _ := tr.Room(ctx, "room")
		if len(ms) != 160 {
			t.Fatalf("room has %d members, want 160", len(ms))
		}
	})
}

// Refresh keeps every index of an entry alive: an entry refreshed past
// the key backstop is still found by user and by device.
func TestRefreshRenewsIndexes(t *testing.T) {
	c := newClock()
	tr := newTestRedisTracker(t, Options{TTL: testTTL, Now: c.Now})
	ctx := context.Background()
	must(t, tr.RenewNode(ctx, "i1"))
	must(t, tr.Connect(ctx, dev("c1", "alice", "phone", "i1")))
	for _, k := range []string{":u:alice", ":d:phone", ":n:i1"} {
		must(t, tr.rdb.PExpire(ctx, tr.p+k, 50*time.Millisecond).Err())
	}
	_, err := tr.Refresh(ctx, []Device{dev("c1", "alice", "phone", "i1")})
	must(t, err)
	time.Sleep(100 * time.Millisecond)
	if ds, _ := tr.Devices(ctx, "phone"); len(ds) != 1 {
		t.Fatalf("Devices(phone) after refresh = %v: the device index expired", ds)
	}
	if ds, _ := tr.User(ctx, "alice"); len(ds) != 1 {
		t.Fatalf("User(alice) after refresh = %v: the user index expired", ds)
	}
}
