package presence

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Benchmarks of the two trackers at the size of a busy node: 10,000 online
// entries (2,000 users with five connections each). The Redis ones run
// against the server named by SYNCGATE_REDIS_ADDR (they fail without it,
// like the conformance suite) under a fresh prefix, deleted afterwards.
//
// Redis load is read from the server itself (INFO commandstats and INFO
// cpu before and after the timed loop), so it counts every command,
// those run inside the Lua scripts included, as Redis's own ops/s does.
// The server is shared: anything else using it during the loop is
// counted too, so run these on an otherwise idle Redis.

const (
	benchEntries = 10_000
	benchUsers   = 2_000
	// benchGatewayBatch is the gateway's chunking of one heartbeat
	// (gateway.presenceBatch): one Refresh call per 1024 entries.
	benchGatewayBatch = 1024
	// benchPeriod is the gateway's default heartbeat period
	// (gateway.DefaultPresenceHeartbeat), which turns a heartbeat's cost
	// into a steady-state load.
	benchPeriod = 25 * time.Second
)

var benchPlatforms = [...]string{"ios", "android", "web", "desktop"}

// benchDevices returns n entries of node instance inst, spread over users
// users, shaped like the gateway's: two checkpointed scopes each, a
// platform out of four (so a platform filter matches a quarter).
func benchDevices(n, users int, inst string) []Device {
	now := time.Now().UTC()
	ds := make([]Device, n)
	for i := range ds {
		user := fmt.Sprintf("user-%05d", i%users)
		d := dev(randHex(12), user, fmt.Sprintf("dev-%05d", i), inst)
		d.Session = randHex(8)
		d.Platform = benchPlatforms[i%len(benchPlatforms)]
		d.AppVersion = "3.1." + strconv.Itoa(i%5)
		d.Connected, d.LastSeen = now, now
		d.Checkpoints = map[string]uint64{"user:" + user: uint64(1000 + i), "space:team": 42}
		ds[i] = d
	}
	return ds
}

// benchTracker returns an empty tracker of kind (memory or redis) and,
// for redis, a separate client to read the server's statistics.
func benchTracker(b *testing.B, kind string) (Tracker, *redis.Client) {
	b.Helper()
	if kind == "memory" {
		return NewMemoryTracker(Options{}), nil
	}
	rt := newTestRedisTracker(b, Options{})
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr(b)})
	b.Cleanup(func() {
		deleteKeys(b, rdb, rt.p+":*")
		_ = rdb.Close()
	})
	return rt, rdb
}

// deleteKeys removes the keys matching pattern (the backstop would expire
// them in an hour; a benchmark leaves tens of thousands).
func deleteKeys(b *testing.B, rdb *redis.Client, pattern string) {
	ctx := context.Background()
	iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
	var keys []string
	flush := func() {
		if len(keys) > 0 {
			if err := rdb.Unlink(ctx, keys...).Err(); err != nil {
				b.Errorf("deleting benchmark keys: %v", err)
			}
			keys = keys[:0]
		}
	}
	for iter.Next(ctx) {
		if keys = append(keys, iter.Val()); len(keys) == 1000 {
			flush()
		}
	}
	flush()
	if err := iter.Err(); err != nil {
		b.Errorf("scanning benchmark keys: %v", err)
	}
}

// fill Connects ds, eight at a time (the RedisTracker's pool size).
func fill(b *testing.B, tr Tracker, ds []Device) {
	b.Helper()
	ctx := context.Background()
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	next := make(chan Device)
	for range 8 {
		wg.Go(func() {
			for d := range next {
				if err := tr.Connect(ctx, d); err != nil {
					errMu.Lock()
					if first == nil {
						first = err
					}
					errMu.Unlock()
				}
			}
		})
	}
	for _, d := range ds {
		next <- d
	}
	close(next)
	wg.Wait()
	if first != nil {
		b.Fatal(first)
	}
}

// redisStats are cumulative server counters.
type redisStats struct {
	cmds    float64 // commands processed (script-internal ones included), INFO excluded
	scripts float64 // EVAL/EVALSHA calls: client round trips that ran a script
	cpu     float64 // used_cpu_sys + used_cpu_user, seconds
}

func readRedisStats(b *testing.B, rdb *redis.Client) redisStats {
	b.Helper()
	info, err := rdb.Info(context.Background(), "commandstats", "cpu").Result()
	if err != nil {
		b.Fatalf("INFO: %v", err)
	}
	var st redisStats
	for line := range strings.Lines(info) {
		line = strings.TrimSpace(line)
		name, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch {
		case name == "used_cpu_sys" || name == "used_cpu_user":
			f, err := strconv.ParseFloat(val, 64)
			if err != nil {
				b.Fatalf("INFO cpu: %q: %v", line, err)
			}
			st.cpu += f
		case strings.HasPrefix(name, "cmdstat_"):
			cmd := strings.TrimPrefix(name, "cmdstat_")
			calls, _, _ := strings.Cut(strings.TrimPrefix(val, "calls="), ",")
			n, err := strconv.ParseFloat(calls, 64)
			if err != nil {
				b.Fatalf("INFO commandstats: %q: %v", line, err)
			}
			if cmd == "info" {
				continue // ours
			}
			st.cmds += n
			if strings.HasPrefix(cmd, "eval") {
				st.scripts += n
			}
		}
	}
	return st
}

// BenchmarkHeartbeat10k: one node's heartbeat with 10,000 connections, as
// presenceManager.heartbeat does it: RenewNode, then Refresh of every
// entry in chunks of 1024, each entry rebuilt first (LastSeen moves, the
// checkpoints are copied: what connPresence.device does). Every op is one
// heartbeat; the gateway runs one per PresenceHeartbeat (25 s), so
// dividing by 25 s gives the steady-state load 10,000 devices put on
// Redis. ns/op is the wall time of a heartbeat on the gateway's side
// (for memory it is all Go CPU; for Redis, mostly waiting on the scripts).
func BenchmarkHeartbeat10k(b *testing.B) {
	for _, kind := range []string{"memory", "redis"} {
		b.Run(kind, func(b *testing.B) {
			ctx := context.Background()
			tr, rdb := benchTracker(b, kind)
			const inst = "bench/heartbeat"
			if err := tr.RenewNode(ctx, inst); err != nil {
				b.Fatal(err)
			}
			ds := benchDevices(benchEntries, benchUsers, inst)
			fill(b, tr, ds)
			heartbeat := func() {
				if err := tr.RenewNode(ctx, inst); err != nil {
					b.Fatal(err)
				}
				now := time.Now().UTC()
				for chunk := range slices.Chunk(ds, benchGatewayBatch) {
					batch := make([]Device, len(chunk))
					for i, d := range chunk {
						d.LastSeen = now
						d.Checkpoints = maps.Clone(d.Checkpoints)
						batch[i] = d
					}
					missing, err := tr.Refresh(ctx, batch)
					if err != nil {
						b.Fatal(err)
					}
					if len(missing) > 0 {
						b.Fatalf("Refresh lost %d of %d entries", len(missing), len(batch))
					}
				}
			}
			heartbeat() // warm: scripts loaded, connections dialled
			var before redisStats
			if rdb != nil {
				before = readRedisStats(b, rdb)
			}
			n := 0
			for b.Loop() {
				heartbeat()
				n++
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/1e6/float64(n), "ms/heartbeat")
			if rdb == nil {
				return
			}
			after := readRedisStats(b, rdb)
			cmds := (after.cmds - before.cmds) / float64(n)
			cpu := (after.cpu - before.cpu) / float64(n)
			b.ReportMetric(cmds, "redis-cmds/heartbeat")
			b.ReportMetric((after.scripts-before.scripts)/float64(n), "redis-scripts/heartbeat")
			b.ReportMetric(cpu*1e3, "redis-cpu-ms/heartbeat")
			b.ReportMetric(cmds/benchPeriod.Seconds(), "redis-ops/s-at-25s")
			b.ReportMetric(cpu/benchPeriod.Seconds()*100, "redis-cpu-%-at-25s")
		})
	}
}

// BenchmarkOnline10k: the support API's /online over 10,000 entries of
// 2,000 users: the first page of 100; the first page of 100 with a
// platform filter matching a quarter of the entries; and paging through
// everything 500 at a time (op = the whole walk, 20 pages). The memory
// tracker copies and sorts every entry per call; the Redis one reads a
// range of its (user, conn) index and the entries in it.
func BenchmarkOnline10k(b *testing.B) {
	for _, kind := range []string{"memory", "redis"} {
		b.Run(kind, func(b *testing.B) {
			ctx := context.Background()
			tr, _ := benchTracker(b, kind)
			const inst = "bench/online"
			if err := tr.RenewNode(ctx, inst); err != nil {
				b.Fatal(err)
			}
			fill(b, tr, benchDevices(benchEntries, benchUsers, inst))
			b.Run("first100", func(b *testing.B) {
				for b.Loop() {
					p, err := tr.Online(ctx, Query{Limit: 100})
					if err != nil {
						b.Fatal(err)
					}
					if len(p.Devices) != 100 || p.Next == "" || p.Conns != benchEntries || p.Users != benchUsers {
						b.Fatalf("page: %d entries, next %q, %d conns, %d users", len(p.Devices), p.Next, p.Conns, p.Users)
					}
				}
			})
			b.Run("platform100", func(b *testing.B) {
				for b.Loop() {
					p, err := tr.Online(ctx, Query{Platform: "ios", Limit: 100})
					if err != nil {
						b.Fatal(err)
					}
					if len(p.Devices) != 100 || p.Matching != benchEntries/4 || p.Devices[99].Platform != "ios" {
						b.Fatalf("filtered page: %d entries, %d matching", len(p.Devices), p.Matching)
					}
				}
			})
			b.Run("all500", func(b *testing.B) {
				pages := 0
				for b.Loop() {
					got, q := 0, Query{Limit: 500}
					for {
						p, err := tr.Online(ctx, q)
						if err != nil {
							b.Fatal(err)
						}
						got += len(p.Devices)
						pages++
						if p.Next == "" {
							break
						}
						q.After = p.Next
					}
					if got != benchEntries {
						b.Fatalf("paged through %d entries, want %d", got, benchEntries)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/1e3/float64(pages), "µs/page")
			})
		})
	}
}
