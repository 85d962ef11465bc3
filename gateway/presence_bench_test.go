package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/syncgate/syncgate/presence"
	"github.com/syncgate/syncgate/sync/protocol"
)

// Presence benchmarks through a real node: the support API's /online over
// 10,000 entries, and room awareness fan-out to 100 WebSocket members.
// Each runs with the memory tracker and broker (one node) and with Redis
// (RedisTracker and RedisBroker, against SYNCGATE_REDIS_ADDR; they fail
// without it). Latencies are reported as percentiles of per-request (or
// per-delivery) samples, so a run needs enough ops for a p99 to mean
// something: -benchtime 1x gives one request (and 99 deliveries).

// percentile returns the p-quantile (0 < p <= 1) of sorted, in ms.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := min(max(int(math.Ceil(p*float64(len(sorted))))-1, 0), len(sorted)-1)
	return float64(sorted[i]) / float64(time.Millisecond)
}

// benchRedisKeys deletes the keys under prefix when the benchmark ends.
// Call it before newHarness: cleanups run last-in first-out, so the keys
// go after the nodes have stopped (their teardown writes last records).
func benchRedisKeys(b *testing.B, addr, prefix string) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	b.Cleanup(func() {
		defer rdb.Close()
		ctx := context.Background()
		iter := rdb.Scan(ctx, 0, prefix+":*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if err := iter.Err(); err != nil {
			b.Errorf("scanning benchmark keys: %v", err)
		}
		for chunk := range slices.Chunk(keys, 1000) {
			if err := rdb.Unlink(ctx, chunk...).Err(); err != nil {
				b.Errorf("deleting benchmark keys: %v", err)
			}
		}
	})
}

// benchRedisTracker returns a RedisTracker under prefix (closed by the
// Server's Shutdown; closed again, harmlessly, at cleanup).
func benchRedisTracker(b *testing.B, prefix string) *presence.RedisTracker {
	b.Helper()
	rt, err := presence.NewRedisTracker(presence.RedisTrackerConfig{Addr: redisTestAddr(b), Prefix: prefix})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rt.Close(context.Background()) })
	return rt
}

// BenchmarkSupportOnlineHTTP10k: GET /v1/support/online?limit=100 end to
// end (HTTP over loopback, token check, tracker, JSON) while the cluster
// has 10,000 entries of 2,000 users. The entries are written straight into
// the tracker as entries of this node's instance (10,000 sockets would
// measure the sockets), and live for the tracker's 60 s TTL, longer than
// the benchmark. op = one request; p50 and p99 are over the ops.
func BenchmarkSupportOnlineHTTP10k(b *testing.B) {
	const entries, users = 10_000, 2_000
	for _, kind := range []string{"memory", "redis"} {
		b.Run(kind, func(b *testing.B) {
			var tr presence.Tracker
			opts := []harnessOption{withConfig(func(c *Config) { c.Node = "bench-node" })}
			if kind == "memory" {
				tr = presence.NewMemoryTracker(presence.Options{})
			} else {
				prefix := redisTestPrefix()
				benchRedisKeys(b, redisTestAddr(b), prefix)
				tr = benchRedisTracker(b, prefix)
				opts = append(opts, withBroker(redisNodes(b, redisTestAddr(b), 1, nil)[0]))
			}
			h := newHarness(b, append(opts, withTracker(tr))...)
			ctx := context.Background()
			inst := h.srv.presence.inst
			if err := tr.RenewNode(ctx, inst); err != nil {
				b.Fatal(err)
			}
			platforms := []string{"ios", "android", "web", "desktop"}
			now := time.Now().UTC()
			var (
				wg    sync.WaitGroup
				errMu sync.Mutex
				first error
			)
			next := make(chan int)
			for range 8 {
				wg.Go(func() {
					for i := range next {
						user := fmt.Sprintf("user-%05d", i%users)
						err := tr.Connect(ctx, presence.Device{
							Conn: randomHex(connIDBytes), User: user, Device: fmt.Sprintf("dev-%05d", i),
							Session: randomHex(8), Node: h.srv.cfg.Node, Instance: inst,
							Platform: platforms[i%len(platforms)], AppVersion: "3.1." + strconv.Itoa(i%5),
							State: presence.Active, Connected: now, LastSeen: now,
							Checkpoints: map[string]uint64{"user:" + user: uint64(1000 + i), "space:team": 42},
						})
						if err != nil {
							errMu.Lock()
							if first == nil {
								first = err
							}
							errMu.Unlock()
						}
					}
				})
			}
			for i := range entries {
				next <- i
			}
			close(next)
			wg.Wait()
			if first != nil {
				b.Fatal(first)
			}

			url := h.httpURL() + "/v1/support/online?limit=100"
			tok := supportToken(b)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer client.CloseIdleConnections()
			get := func() []byte {
				req, err := http.NewRequest(http.MethodGet, url, nil)
				if err != nil {
					b.Fatal(err)
				}
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK {
					b.Fatalf("GET /online = %d %v %.200s", resp.StatusCode, err, body)
				}
				return body
			}
			var page supportOnline
			if err := json.Unmarshal(get(), &page); err != nil { // warm, and check
				b.Fatal(err)
			}
			if page.Connections != entries || page.Users != users || len(page.Items) != 100 || page.Next == "" {
				b.Fatalf("online: %d connections, %d users, %d items, next %q", page.Connections, page.Users, len(page.Items), page.Next)
			}
			var lat []time.Duration
			var size int
			for b.Loop() {
				start := time.Now()
				size = len(get())
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			b.ReportMetric(percentile(lat, 0.50), "p50-ms")
			b.ReportMetric(percentile(lat, 0.99), "p99-ms")
			b.ReportMetric(float64(size), "resp-bytes")
		})
	}
}

// fanoutRound tracks the deliveries of one awareness update.
type fanoutRound struct {
	mu   sync.Mutex
	seq  int64 // the update in flight
	want int   // deliveries still expected
	done chan struct{}
	lat  []time.Duration // send-to-receipt of every delivery, all rounds
}

func (f *fanoutRound) arm(seq int64, want int) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq, f.want, f.done = seq, want, make(chan struct{})
	return f.done
}

func (f *fanoutRound) got(seq, sentNanos int64, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if seq != f.seq || f.want == 0 {
		return
	}
	f.lat = append(f.lat, at.Sub(time.Unix(0, sentNanos)))
	if f.want--; f.want == 0 {
		close(f.done)
	}
}

func (f *fanoutRound) take() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.lat
	f.lat = nil
	slices.Sort(out)
	return out
}

// BenchmarkRoomFanout100: one member of a 100-member room sends
// room_state; op = one update, from the sender's write until all 99 other
// members have read the state event from their sockets (p50/p99 are over
// every delivery). The path: the sender's read loop, the awareness
// throttle's timer, Tracker.SetMember, the broker, the hub, 99 write loops.
// memory: one node, MemoryTracker and memory broker; redis: members split
// over two nodes (sender on the first), RedisTracker and RedisBroker.
//
// AwarenessInterval is 1 ms here, not the default 100 ms, so that the
// rate limit does not set the pace; rounds are also spaced by at least
// that interval, so no update waits for the throttle's timer and the
// latency is the fan-out's alone. Rounds are sequential (closed loop):
// deliveries/s is what one sender achieves this way, not a saturation
// figure.
//
// The baseline, after the timed loop, publishes the same room event
// bytes straight to the broker from the sender's node, and the same 99
// members receive them: the cost of the fan-out alone, without the
// room_state handling (read loop, throttle, tracker write, encoding).
func BenchmarkRoomFanout100(b *testing.B) {
	const members, warm = 100, 20
	const interval = time.Millisecond
	ref := protocol.RoomRef{Scope: "space:team", Room: "doc:bench"}
	for _, kind := range []string{"memory", "redis"} {
		b.Run(kind, func(b *testing.B) {
			cfg := func(node string) harnessOption {
				return withConfig(func(c *Config) { c.Node, c.AwarenessInterval = node, interval })
			}
			var nodes []*harness
			if kind == "memory" {
				nodes = []*harness{newHarness(b, cfg("node-a"))}
			} else {
				addr, prefix := redisTestAddr(b), redisTestPrefix()
				benchRedisKeys(b, addr, prefix)
				bs := redisNodes(b, addr, 2, nil)
				a := newHarness(b, cfg("node-a"), withBroker(bs[0]), withTracker(benchRedisTracker(b, prefix)))
				nb := newHarness(b, cfg("node-b"), withBroker(bs[1]), withTracker(benchRedisTracker(b, prefix)), withSessions(a.store))
				nodes = []*harness{a, nb}
			}
			clients := make([]*client, members)
			var you string
			for i := range clients {
				c := nodes[i%len(nodes)].dial(b)
				c.hello(token(b, fmt.Sprintf("u%03d", i), tokSpaces("team")), "d")
				r := c.join(uint64(i+1), ref.Scope, ref.Room)
				if len(r.Members) != i+1 {
					b.Fatalf("member %d sees %d members", i, len(r.Members))
				}
				if i == 0 {
					you = r.You
				}
				clients[i] = c
			}
			const sender = "u000"
			f := &fanoutRound{}
			var readers sync.WaitGroup
			for i, c := range clients {
				readers.Go(func() {
					for {
						typ, data, err := c.next(time.Minute)
						if err != nil {
							return // closed at the end
						}
						at := time.Now()
						if typ != protocol.TypeRoomEvent || i == 0 {
							continue
						}
						var ev struct {
							Event  string `json:"event"`
							Member struct {
								User  string          `json:"user"`
								State json.RawMessage `json:"state"`
							} `json:"member"`
						}
						if json.Unmarshal(data, &ev) != nil || ev.Event != protocol.RoomState || ev.Member.User != sender {
							continue
						}
						var st struct{ T, N int64 }
						if json.Unmarshal(ev.Member.State, &st) == nil {
							f.got(st.N, st.T, at)
						}
					}
				})
			}
			b.Cleanup(func() { // first: before the sockets' own cleanups and the nodes'
				for _, c := range clients {
					_ = c.ws.Close()
				}
				readers.Wait()
			})

			var seq int64
			var last time.Time
			round := func(send func(state json.RawMessage)) {
				if d := interval - time.Since(last); d > 0 {
					time.Sleep(d)
				}
				seq++
				done := f.arm(seq, members-1)
				last = time.Now()
				send(json.RawMessage(fmt.Sprintf(`{"t":%d,"n":%d}`, last.UnixNano(), seq)))
				select {
				case <-done:
				case <-time.After(10 * time.Second):
					f.mu.Lock()
					missing := f.want
					f.mu.Unlock()
					b.Fatalf("update %d: %d of %d members got nothing within 10s", seq, missing, members-1)
				}
			}
			viaRoomState := func(st json.RawMessage) {
				clients[0].send(&protocol.RoomStateMsg{RoomRef: ref, State: st})
			}
			for range warm {
				round(viaRoomState)
			}
			f.take()
			n := 0
			for b.Loop() {
				round(viaRoomState)
				n++
			}
			lat := f.take()
			elapsed := b.Elapsed()

			// Baseline: the same event, published to the broker directly.
			a := nodes[0]
			viaBroker := func(st json.RawMessage) {
				data, err := protocol.Marshal(&protocol.RoomEvent{RoomRef: ref, Event: protocol.RoomState,
					Member: protocol.Member{ID: you, User: sender, Device: "d", State: st}})
				if err != nil {
					b.Fatal(err)
				}
				if err := a.srv.broker.Publish(a.srv.baseCtx, roomKeyPrefix+roomID(ref), data); err != nil {
					b.Fatal(err)
				}
			}
			for range warm {
				round(viaBroker)
			}
			f.take()
			for range max(n, warm) {
				round(viaBroker)
			}
			base := f.take()

			b.ReportMetric(percentile(lat, 0.50), "p50-ms")
			b.ReportMetric(percentile(lat, 0.99), "p99-ms")
			b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "deliveries/s")
			b.ReportMetric(percentile(base, 0.50), "base-p50-ms")
			b.ReportMetric(percentile(base, 0.99), "base-p99-ms")
			if bp := percentile(base, 0.50); bp > 0 {
				b.ReportMetric(percentile(lat, 0.50)/bp, "p50/base-p50")
			}
		})
	}
}
