package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/syncgate/syncgate/gateway/auth"
	"github.com/syncgate/syncgate/internal/app"
	"github.com/syncgate/syncgate/internal/client"
	"github.com/syncgate/syncgate/sync/protocol"
)

// bench is a load generator: N devices in groups of --per-scope share a
// scope; every device pushes at rate/N per second; each push is delivered
// live to the other devices of its scope. It reports push→ack and
// push→delivery latency and throughput. Without --url it starts a node in
// process on a temporary data dir, and it also measures a bare WebSocket
// relay (no auth, no storage, no protocol) with the same devices and rate,
// so the figures come with a same-machine, same-run baseline.
func bench(args, env []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	url := fs.String("url", "", "ws:// URLs of running nodes, comma-separated; devices are spread over them (default: start --nodes in process)")
	nodes := fs.Int("nodes", 1, "nodes to start in process (more than 1 needs --mongo-uri and --redis-addr); a scope's devices land on different nodes")
	devices := fs.Int("devices", 50, "number of devices")
	perScope := fs.Int("per-scope", 2, "devices sharing each scope (each push is delivered to the others)")
	rate := fs.Float64("rate", 500, "total pushes per second")
	duration := fs.Duration("duration", 10*time.Second, "how long to push")
	batch := fs.Int("batch", 1, "mutations per push")
	baseline := fs.Bool("baseline", true, "also measure a bare WebSocket relay (in-process mode only)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run (server included in process mode)")
	cfg, err := loadConfig(fs, args, env, io.Discard)
	if err != nil {
		return err
	}
	if *devices < 2 || *perScope < 2 || *rate <= 0 || *batch < 1 || *nodes < 1 {
		return errors.New("bench: need --devices >= 2, --per-scope >= 2, --rate > 0, --batch >= 1, --nodes >= 1")
	}
	if *nodes > 1 && (cfg.Mongo.URI == "" || cfg.Redis.Addr == "") {
		return errors.New("bench: --nodes > 1 shares one cluster: set --mongo-uri and --redis-addr")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	var targets []string
	if *url != "" {
		targets = strings.Split(*url, ",")
	} else {
		dir, err := os.MkdirTemp("", "syncgate-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if cfg.Auth.Secret == "" && len(cfg.Auth.Keys) == 0 {
			// Every node must verify the tokens minted below: one secret.
			secret := make([]byte, 32)
			if _, err := rand.Read(secret); err != nil {
				return err
			}
			cfg.Auth.Secret = hex.EncodeToString(secret)
		}
		if *nodes > 1 && cfg.Mongo.Database == "" {
			// A fresh database per run: the figures do not depend on what
			// earlier runs left in the log.
			cfg.Mongo.Database = fmt.Sprintf("syncgate_bench_%d", time.Now().UnixNano())
		}
		for i := range *nodes {
			nc := cfg
			nc.DataDir, nc.Listen = filepath.Join(dir, strconv.Itoa(i)), "127.0.0.1:0"
			nc.Node = fmt.Sprintf("%s-%d", cfg.Node, i)
			a, err := app.New(ctx, nc, app.Options{})
			if err != nil {
				return err
			}
			done := make(chan error, 1)
			runCtx, stop := context.WithCancel(ctx)
			go func() { done <- a.Run(runCtx) }()
			defer func() { stop(); <-done }()
			targets = append(targets, "ws://"+a.Addr().String()+"/v1/ws")
		}
	}
	vc, err := auth.FromConfig(cfg)
	if err != nil {
		return err
	}
	key, err := vc.SigningKey()
	if err != nil {
		return err
	}
	mint := func(user string) (string, error) {
		return auth.Mint(key.Secret, auth.MintOptions{User: user, TTL: time.Hour, Issuer: cfg.Auth.Issuer, Audience: cfg.Auth.Audience, KeyID: key.ID})
	}
	fmt.Fprintf(stdout, "syncgate bench: %d devices, %d per scope, %.0f pushes/s (%d mutations each), %s\n",
		*devices, *perScope, *rate, *batch, *duration)
	if len(targets) > 1 {
		fmt.Fprintf(stdout, "devices spread over %d nodes: every delivery crosses nodes\n", len(targets))
	}
	res, err := runSyncBench(ctx, targets, mint, *devices, *perScope, *rate, *batch, *duration)
	if err != nil {
		return err
	}
	res.print(stdout, "syncgate")
	if *url == "" && *baseline {
		base, err := runRelayBench(ctx, *devices, *perScope, *rate, *duration)
		if err != nil {
			return err
		}
		base.print(stdout, "bare ws relay")
		fmt.Fprintf(stdout, "ratio syncgate/bare: delivery p50 %.1fx, p99 %.1fx; delivered/s %.2f\n",
			ratio(res.delivery.pct(50), base.delivery.pct(50)), ratio(res.delivery.pct(99), base.delivery.pct(99)),
			res.deliveredPerSec()/max(base.deliveredPerSec(), 1e-9))
	}
	return nil
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(max(b, time.Microsecond)) }

type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) { l.mu.Lock(); l.d = append(l.d, d); l.mu.Unlock() }

func (l *latencies) pct(p float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	slices.Sort(l.d)
	return l.d[min(len(l.d)-1, int(float64(len(l.d))*p/100))]
}

func (l *latencies) n() int { l.mu.Lock(); defer l.mu.Unlock(); return len(l.d) }

type benchResult struct {
	elapsed  time.Duration
	pushes   atomic.Int64
	errors   atomic.Int64
	ack      latencies
	delivery latencies
}

func (r *benchResult) deliveredPerSec() float64 { return float64(r.delivery.n()) / r.elapsed.Seconds() }

func (r *benchResult) print(w io.Writer, name string) {
	fmt.Fprintf(w, "%-14s pushes %d (errors %d) in %s; deliveries %d (%.0f/s)\n",
		name, r.pushes.Load(), r.errors.Load(), r.elapsed.Round(time.Millisecond), r.delivery.n(), r.deliveredPerSec())
	if r.ack.n() > 0 {
		fmt.Fprintf(w, "%-14s push→ack      p50 %-9s p90 %-9s p99 %-9s max %s\n", "",
			r.ack.pct(50), r.ack.pct(90), r.ack.pct(99), r.ack.pct(100))
	}
	fmt.Fprintf(w, "%-14s push→delivery p50 %-9s p90 %-9s p99 %-9s max %s\n", "",
		r.delivery.pct(50), r.delivery.pct(90), r.delivery.pct(99), r.delivery.pct(100))
}

// pace calls fn every interval until ctx ends, without drift.
func pace(ctx context.Context, interval time.Duration, fn func()) {
	next := time.Now().Add(time.Duration(float64(interval) * randFrac()))
	for {
		if d := time.Until(next); d > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		} else if ctx.Err() != nil {
			return
		}
		fn()
		next = next.Add(interval)
	}
}

func randFrac() float64 { return float64(time.Now().UnixNano()%1000) / 1000 }

func runSyncBench(ctx context.Context, urls []string, mint func(string) (string, error), n, perScope int, rate float64, batch int, dur time.Duration) (*benchResult, error) {
	res := &benchResult{}
	devs := make([]*client.Device, n)
	for i := range devs {
		user := fmt.Sprintf("bench%d", i/perScope)
		tok, err := mint(user)
		if err != nil {
			return nil, err
		}
		// Device i goes to node i mod len(urls): with per-scope devices
		// consecutive, a scope's devices sit on different nodes (when
		// per-scope <= nodes), so every delivery crosses the broker.
		d := client.New(fmt.Sprintf("d%d", i), urls[i%len(urls)], tok, "user:"+user)
		self := d.ID
		d.OnChanges = func(_ string, c *protocol.Changes, received time.Time) {
			for _, e := range c.Entries {
				if e.Device == self {
					continue
				}
				if sent, ok := e.State["t"].(float64); ok {
					res.delivery.add(received.Sub(time.Unix(0, int64(sent))))
				}
			}
		}
		if _, err := d.Connect(ctx); err != nil {
			return nil, fmt.Errorf("bench: connect device %d: %w", i, err)
		}
		devs[i] = d
	}
	defer func() {
		for _, d := range devs {
			d.Disconnect()
		}
	}()
	interval := time.Duration(float64(n) / rate * float64(time.Second))
	pushCtx, stop := context.WithTimeout(ctx, dur)
	defer stop()
	start := time.Now()
	var wg sync.WaitGroup
	for i, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			scope := "user:" + fmt.Sprintf("bench%d", i/perScope)
			k := 0
			pace(pushCtx, interval, func() {
				sent := time.Now()
				for j := 0; j < batch; j++ {
					k++
					d.Put(scope, "bench", fmt.Sprintf("%s-%d", d.ID, k%100), map[string]any{"t": float64(sent.UnixNano()), "k": float64(k)})
				}
				flushCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := d.Flush(flushCtx, batch)
				cancel()
				res.pushes.Add(1)
				if err != nil {
					res.errors.Add(1)
					return
				}
				res.ack.add(time.Since(sent))
			})
		}()
	}
	wg.Wait()
	time.Sleep(200 * time.Millisecond) // let the last deliveries land
	res.elapsed = time.Since(start)
	return res, nil
}

// runRelayBench measures the floor: a bare gorilla WebSocket server that
// forwards every frame to the other connections of the sender's group.
func runRelayBench(ctx context.Context, n, perScope int, rate float64, dur time.Duration) (*benchResult, error) {
	var mu sync.Mutex
	groups := map[string][]*relayConn{}
	up := websocket.Upgrader{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		g := r.URL.Query().Get("g")
		rc := &relayConn{c: c}
		mu.Lock()
		groups[g] = append(groups[g], rc)
		mu.Unlock()
		for {
			_, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			mu.Lock()
			peers := append([]*relayConn(nil), groups[g]...)
			mu.Unlock()
			for _, p := range peers {
				if p != rc {
					p.write(msg)
				}
			}
		}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go srv.Serve(ln)
	defer srv.Close()

	res := &benchResult{}
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		c, _, err := websocket.DefaultDialer.DialContext(ctx, fmt.Sprintf("ws://%s/?g=%d", ln.Addr(), i/perScope), nil)
		if err != nil {
			return nil, err
		}
		conns[i] = c
		go func() {
			for {
				_, msg, err := c.ReadMessage()
				if err != nil {
					return
				}
				var sent int64
				fmt.Sscanf(string(msg), "%d", &sent)
				res.delivery.add(time.Since(time.Unix(0, sent)))
			}
		}()
	}
	time.Sleep(100 * time.Millisecond) // all joined
	interval := time.Duration(float64(n) / rate * float64(time.Second))
	pushCtx, stop := context.WithTimeout(ctx, dur)
	defer stop()
	start := time.Now()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pace(pushCtx, interval, func() {
				res.pushes.Add(1)
				if c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, "%d", time.Now().UnixNano())) != nil {
					res.errors.Add(1)
				}
			})
		}()
	}
	wg.Wait()
	time.Sleep(200 * time.Millisecond)
	res.elapsed = time.Since(start)
	for _, c := range conns {
		c.Close()
	}
	return res, nil
}

type relayConn struct {
	mu sync.Mutex
	c  *websocket.Conn
}

func (r *relayConn) write(b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.c.WriteMessage(websocket.TextMessage, b)
}
