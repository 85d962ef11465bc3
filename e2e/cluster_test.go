package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/syncgate/syncgate/conflict"
	"github.com/syncgate/syncgate/internal/client"
	"github.com/syncgate/syncgate/internal/faultproxy"
	"github.com/syncgate/syncgate/sync/protocol"
)

// The cluster tests run 3 `syncgate serve` processes that share one
// MongoDB database (a fresh one per test) and one Redis (a fresh key and
// channel prefix per test), with real WebSocket devices. A fault test puts
// a faultproxy in front of the server it takes away: a shared server can
// then fail for one test without stopping it for the others, and from the
// nodes' side a proxy that drops every connection and refuses new ones is
// what a dead or restarting server looks like.

// cluster is several nodes of one deployment.
type cluster struct {
	t        *testing.T
	nodes    []*node
	env      []string // every node's SYNCGATE_* settings
	mongoURI string   // the real server, for the test's own reads
	database string
}

// clusterOptions change where the nodes find their servers.
type clusterOptions struct {
	mongoProxy bool // route MongoDB through a faultproxy (cluster.mongoProxy)
	redisProxy bool // route Redis through a faultproxy (cluster.redisProxy)
	env        []string
}

type clusterServers struct {
	mongo, redis *faultproxy.Proxy // nil unless asked for
}

func newCluster(t *testing.T, n int, o clusterOptions) (*cluster, clusterServers) {
	t.Helper()
	mongoURI := requireEnv(t, "SYNCGATE_MONGO_URI")
	redisAddr := requireEnv(t, "SYNCGATE_REDIS_ADDR")
	id := randomHex(t, 6)
	c := &cluster{t: t, mongoURI: mongoURI, database: "e2e_" + id}
	var servers clusterServers
	nodeMongo := mongoURI
	if o.mongoProxy {
		servers.mongo = newFaultProxy(t, mongoPrimary(t, mongoURI))
		// directConnection: the driver must not discover the real members
		// behind the proxy. serverSelectionTimeoutMS: with the default 5 s
		// per attempt, the store's 3 attempts ride out a 5 s outage and no
		// push ever fails; at 300 ms they give up after about 4 s, so the
		// outage test sees the retryable error and the client's re-send.
		nodeMongo = "mongodb://" + servers.mongo.Addr() + "/?directConnection=true&serverSelectionTimeoutMS=300"
	}
	if o.redisProxy {
		servers.redis = newFaultProxy(t, redisAddr)
		redisAddr = servers.redis.Addr()
	}
	c.env = append([]string{
		"SYNCGATE_MONGO_URI=" + nodeMongo,
		"SYNCGATE_MONGO_DATABASE=" + c.database,
		"SYNCGATE_REDIS_ADDR=" + redisAddr,
		"SYNCGATE_REDIS_PREFIX=e2e" + id,
		"SYNCGATE_AUTH_SECRET=" + randomHex(t, 32), // one secret: any node verifies any token
	}, o.env...)
	t.Cleanup(func() { c.dropDatabase() })
	for i := range n {
		c.nodes = append(c.nodes, startNodeEnv(t, t.TempDir(), append(c.env, fmt.Sprintf("SYNCGATE_NODE=n%d", i))))
	}
	return c, servers
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func newFaultProxy(t *testing.T, target string) *faultproxy.Proxy {
	p, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// mongoPrimary is the host a proxy must forward to: the test server, or
// the primary of a replica set.
func mongoPrimary(t *testing.T, uri string) string {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	mc, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = mc.Disconnect(ctx) }()
	var hello struct {
		Primary string `bson:"primary"`
	}
	if err := mc.Database("admin").RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Decode(&hello); err != nil {
		t.Fatalf("hello: %v", err)
	}
	if hello.Primary != "" {
		return hello.Primary
	}
	return options.Client().ApplyURI(uri).Hosts[0]
}

// mongoClient connects the test itself to the real server, as a backend
// reading the synced data would.
func (c *cluster) mongoClient() *mongo.Database {
	c.t.Helper()
	mc, err := mongo.Connect(options.Client().ApplyURI(c.mongoURI))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = mc.Disconnect(context.Background()) })
	return mc.Database(c.database)
}

func (c *cluster) dropDatabase() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mc, err := mongo.Connect(options.Client().ApplyURI(c.mongoURI))
	if err != nil {
		return
	}
	defer func() { _ = mc.Disconnect(ctx) }()
	_ = mc.Database(c.database).Drop(ctx)
}

// token mints a dev token with the cluster's shared secret.
func (c *cluster) token(user, device string) string {
	c.t.Helper()
	cmd := exec.Command(binary, "token", "--data-dir", c.t.TempDir(), "--user", user, "--device", device)
	cmd.Env = append(baseEnv(), c.env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("syncgate token: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// device returns alice's device, not connected yet, homed on node i.
func (c *cluster) device(id string, i int) *client.Device {
	d := client.New(id, c.nodes[i].wsURL(), c.token("alice", id), scope)
	c.t.Cleanup(d.Disconnect)
	return d
}

// connect connects d to node i, or to the next node that accepts it (a
// load balancer in front of the cluster without sticky sessions), until
// ctx ends. It returns the node it reached.
func (c *cluster) connect(ctx context.Context, d *client.Device, i int) (int, error) {
	backoff := 20 * time.Millisecond
	for attempt := 0; ; attempt++ {
		k := (i + attempt) % len(c.nodes)
		d.URL = c.nodes[k].wsURL()
		_, err := d.Connect(ctx)
		if err == nil {
			return k, nil
		}
		d.Disconnect()
		select {
		case <-ctx.Done():
			return k, fmt.Errorf("%s: no node accepted the device: %w (last: %v)", d.ID, ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

// writer is a device that pushes increments through whatever happens to
// the cluster: each step is one push of two patches, +1 on the shared
// counter and +1 on the device's own counter. A push that fails stays
// queued and is sent again (after a reconnect when the socket died), so
// every step is eventually acknowledged, and the counters are exact only
// if each was applied once.
type writer struct {
	c    *cluster
	d    *client.Device
	node int

	steps     atomic.Int64 // steps queued
	failures  atomic.Int64 // pushes that failed and were sent again
	reconnect atomic.Int64 // reconnections to a node
}

func (c *cluster) writers(n int) []*writer {
	c.t.Helper()
	ws := make([]*writer, n)
	for i := range ws {
		w := &writer{c: c, node: i % len(c.nodes)}
		w.d = c.device(fmt.Sprintf("w%d", i), w.node)
		var err error
		if w.node, err = c.connect(ctxT(c.t, 30*time.Second), w.d, w.node); err != nil {
			c.t.Fatal(err)
		}
		ws[i] = w
	}
	return ws
}

// run pushes until stop is closed or ctx ends, one step every pause.
func (w *writer) run(ctx context.Context, stop <-chan struct{}, pause time.Duration) error {
	for {
		select {
		case <-stop:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		w.d.Patch(scope, "counters", "shared", conflict.PatchOps{Inc: map[string]float64{"n": 1}})
		w.d.Patch(scope, "counters", w.d.ID, conflict.PatchOps{Inc: map[string]float64{"n": 1}})
		w.steps.Add(1)
		if err := w.flush(ctx); err != nil {
			return err
		}
		time.Sleep(pause)
	}
}

// flush sends the queue until it is empty, reconnecting when the socket
// is gone. Only a non-retryable answer is an error.
func (w *writer) flush(ctx context.Context) error {
	for {
		fctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := w.d.Flush(fctx, 100)
		cancel()
		if err == nil {
			return nil
		}
		var perr *protocol.Error
		if errors.As(err, &perr) && !perr.Code.Retryable() {
			return fmt.Errorf("%s: push answered %s: %s", w.d.ID, perr.Code, perr.Message)
		}
		w.failures.Add(1)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		select {
		case <-w.d.Closed():
			w.d.Disconnect()
			w.reconnect.Add(1)
			w.node, err = w.c.connect(ctx, w.d, w.node+1)
			if err != nil {
				return err
			}
		default:
			time.Sleep(50 * time.Millisecond) // a retryable answer on a live socket
		}
	}
}

// load runs the writers until stop, and returns their first error.
func load(ctx context.Context, ws []*writer, stop <-chan struct{}) func() error {
	var wg sync.WaitGroup
	errs := make([]error, len(ws))
	for i, w := range ws {
		wg.Go(func() { errs[i] = w.run(ctx, stop, 5*time.Millisecond) })
	}
	return func() error {
		wg.Wait()
		return errors.Join(errs...)
	}
}

// verify checks the end state: every step of every writer was applied
// exactly once (the counters), the log has exactly one entry per
// mutation (the head), every writer and a fresh device on every node
// hold the same state, and the materialized view in MongoDB agrees.
func (c *cluster) verify(ws []*writer) {
	t := c.t
	t.Helper()
	var total int64
	for _, w := range ws {
		if n := w.d.Pending(); n != 0 {
			t.Fatalf("%s still has %d pending mutations", w.d.ID, n)
		}
		total += w.steps.Load()
	}
	want := map[string]map[string]any{"counters/shared": {"n": float64(total)}}
	for _, w := range ws {
		want["counters/"+w.d.ID] = map[string]any{"n": float64(w.steps.Load())}
	}
	head := uint64(2 * total) // two mutations per step, one entry each
	check := func(who string, d *client.Device) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for d.Checkpoint(scope) < head && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if err := d.CatchUp(ctxT(t, 30*time.Second), scope); err != nil {
			t.Fatalf("%s catch-up: %v", who, err)
		}
		if got := d.Checkpoint(scope); got != head {
			t.Fatalf("%s checkpoint %d, want the head %d (2 entries per step, %d steps): a mutation was lost or applied twice",
				who, got, head, total)
		}
		if got := d.Replica(scope); !jsonEqual(got, want) {
			t.Fatalf("%s holds %v, want %v", who, got, want)
		}
	}
	for _, w := range ws {
		check(w.d.ID, w.d)
	}
	for i := range c.nodes {
		d := c.device(fmt.Sprintf("fresh%d", i), i)
		if _, err := d.Connect(ctxT(t, 30*time.Second)); err != nil {
			t.Fatalf("fresh device on node %d: %v", i, err)
		}
		check(d.ID, d)
	}
	// A backend reads the same numbers from the plain collection.
	var doc struct {
		N    float64 `bson:"n"`
		Sync struct {
			Version int64 `bson:"version"`
		} `bson:"_sync"`
	}
	filter := bson.D{{Key: "_id", Value: bson.D{{Key: "scope", Value: scope}, {Key: "id", Value: "shared"}}}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := c.mongoClient().Collection("counters").FindOne(ctxT(t, 10*time.Second), filter).Decode(&doc)
		if err == nil && doc.N == float64(total) && doc.Sync.Version == total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("materialized counters/shared = %+v, %v; want n=%d at version %d", doc, err, total, total)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var failures, reconnects int64
	for _, w := range ws {
		failures += w.failures.Load()
		reconnects += w.reconnect.Load()
	}
	t.Logf("%d writers, %d steps (%d mutations), %d pushes sent again, %d reconnections", len(ws), total, head, failures, reconnects)
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// TestClusterLiveAcrossNodes: devices of one user on three nodes see each
// other's changes live (no pull), a backend reads them from the plain
// collection, and media uploaded on one node is served by another, with
// Range and ETag.
func TestClusterLiveAcrossNodes(t *testing.T) {
	c, _ := newCluster(t, 3, clusterOptions{})
	devs := make([]*client.Device, 3)
	for i := range devs {
		devs[i] = c.device(fmt.Sprintf("d%d", i), i)
		if _, err := devs[i].Connect(ctxT(t, 30*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	for i, d := range devs {
		d.Put(scope, "todos", fmt.Sprintf("t%d", i), map[string]any{"title": fmt.Sprintf("from node %d", i)})
		flush(t, d)
		// Live: the others' checkpoints move without any pull of theirs.
		for _, o := range devs {
			waitCheckpoint(t, o, uint64(i+1))
		}
	}
	for _, d := range devs {
		if got := d.Replica(scope); len(got) != 3 || got["todos/t2"]["title"] != "from node 2" {
			t.Fatalf("%s holds %v", d.ID, got)
		}
	}
	var view struct {
		Title string `bson:"title"`
		Sync  struct {
			Version int64 `bson:"version"`
		} `bson:"_sync"`
	}
	err := c.mongoClient().Collection("todos").FindOne(ctxT(t, 10*time.Second),
		bson.D{{Key: "_id", Value: bson.D{{Key: "scope", Value: scope}, {Key: "id", Value: "t1"}}}}).Decode(&view)
	if err != nil || view.Title != "from node 1" || view.Sync.Version != 1 {
		t.Fatalf("materialized todos/t1 = %+v, %v", view, err)
	}

	// Media: upload on node 0, download a range on node 2.
	tok := c.token("alice", "d0")
	body := bytes.Repeat([]byte("0123456789"), 30000) // 300 kB: more than one 255 KB GridFS chunk
	req, _ := http.NewRequest("POST", "http://"+c.nodes[0].addr+"/v1/media/"+scope, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var created struct {
		ID     string `json:"id"`
		SHA256 string `json:"sha256"`
	}
	json.NewDecoder(resp.Body).Decode(&created)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || created.ID == "" {
		t.Fatalf("upload: %d %+v", resp.StatusCode, created)
	}
	req, _ = http.NewRequest("GET", "http://"+c.nodes[2].addr+"/v1/media/"+scope+"/"+created.ID, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Range", "bytes=261115-261124") // across the first chunk boundary (261120)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || string(part) != string(body[261115:261125]) {
		t.Fatalf("range download: %d %q, want 206 %q", resp.StatusCode, part, body[261115:261125])
	}
	etag := resp.Header.Get("ETag")
	req.Header.Del("Range")
	req.Header.Set("If-None-Match", etag)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if etag == "" || resp.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match %q: %d, want 304", etag, resp.StatusCode)
	}
	// The blob is in GridFS, readable by any MongoDB tool.
	n, err := c.mongoClient().Collection("_sg_blobs.files").CountDocuments(ctxT(t, 10*time.Second), bson.D{})
	if err != nil || n != 1 {
		t.Fatalf("fs.files holds %d files, %v; want 1", n, err)
	}
}

// TestClusterKillNode: kill -9 of a node under load. Its devices
// reconnect to the other nodes and converge, and every acknowledged
// mutation is in the log exactly once.
func TestClusterKillNode(t *testing.T) {
	c, _ := newCluster(t, 3, clusterOptions{})
	ws := c.writers(6)
	ctx := ctxT(t, 3*time.Minute)
	stop := make(chan struct{})
	wait := load(ctx, ws, stop)
	waitSteps(t, ws, 60)
	c.nodes[1].kill()
	waitSteps(t, ws, 180)
	close(stop)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	c.nodes = append(c.nodes[:1], c.nodes[2:]...) // the fresh devices of verify use the live nodes
	c.verify(ws)
	if moved := ws[1].reconnect.Load() + ws[4].reconnect.Load(); moved < 2 {
		t.Fatalf("the killed node's devices reconnected %d times, want at least 2", moved)
	}
}

// TestClusterRedisRestart: Redis goes away mid-traffic and comes back.
// Commits go on (MongoDB holds them); live messages published meanwhile
// are lost. Nothing is pushed after Redis returns, so a device that only
// watches converges only if its node notices the loss and sends it a
// resync hint after resubscribing (Broker Handler, nil data).
func TestClusterRedisRestart(t *testing.T) {
	c, servers := newCluster(t, 3, clusterOptions{redisProxy: true})
	ws := c.writers(3)
	watchers := make([]*client.Device, 3)
	for i := range watchers {
		watchers[i] = c.device(fmt.Sprintf("watch%d", i), i)
		if _, err := watchers[i].Connect(ctxT(t, 30*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	ctx := ctxT(t, 3*time.Minute)
	stop := make(chan struct{})
	wait := load(ctx, ws, stop)
	waitSteps(t, ws, 40)
	servers.redis.Down()
	before := totalSteps(ws)
	waitSteps(t, ws, before+30) // commits without Redis
	close(stop)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // Redis stays away a while after the last commit
	if err := servers.redis.Up(); err != nil {
		t.Fatal(err)
	}
	head := uint64(2 * totalSteps(ws))
	for _, d := range watchers {
		deadline := time.Now().Add(20 * time.Second)
		for d.Checkpoint(scope) < head {
			if time.Now().After(deadline) {
				t.Fatalf("%s stuck at %d of %d after Redis came back: no resync hint", d.ID, d.Checkpoint(scope), head)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	c.verify(ws)
}

// TestClusterMongoOutage: MongoDB unreachable for 5 s under load. Pushes
// are answered with a retryable error, the devices send them again, and
// in the end every step is applied exactly once.
func TestClusterMongoOutage(t *testing.T) {
	c, servers := newCluster(t, 3, clusterOptions{mongoProxy: true})
	ws := c.writers(3)
	ctx := ctxT(t, 3*time.Minute)
	stop := make(chan struct{})
	wait := load(ctx, ws, stop)
	waitSteps(t, ws, 40)
	failedBefore := totalFailures(ws)
	servers.mongo.Down()
	time.Sleep(5 * time.Second)
	if err := servers.mongo.Up(); err != nil {
		t.Fatal(err)
	}
	waitSteps(t, ws, totalSteps(ws)+40)
	during := totalFailures(ws) - failedBefore
	close(stop)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if during == 0 {
		t.Fatal("no push failed while MongoDB was away: the outage was not felt")
	}
	for _, w := range ws {
		for _, e := range w.d.Errors() {
			if !e.Code.Retryable() {
				t.Fatalf("%s got a non-retryable error during the outage: %s %s", w.d.ID, e.Code, e.Message)
			}
		}
	}
	c.verify(ws)
}

// TestClusterRollingRestart: every node in turn is drained (SIGTERM) and
// started again while devices push; no write is lost or doubled.
func TestClusterRollingRestart(t *testing.T) {
	c, _ := newCluster(t, 3, clusterOptions{})
	ws := c.writers(6)
	ctx := ctxT(t, 4*time.Minute)
	stop := make(chan struct{})
	wait := load(ctx, ws, stop)
	for _, n := range c.nodes {
		waitSteps(t, ws, totalSteps(ws)+30)
		n.stop(15 * time.Second)
		waitSteps(t, ws, totalSteps(ws)+30)
		n.start()
	}
	waitSteps(t, ws, totalSteps(ws)+30)
	close(stop)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	c.verify(ws)
	var moved int64
	for _, w := range ws {
		moved += w.reconnect.Load()
	}
	if moved < 6 {
		t.Fatalf("%d reconnections during a rolling restart of 3 nodes with 6 devices, want at least 6", moved)
	}
}

func totalSteps(ws []*writer) int64 {
	var n int64
	for _, w := range ws {
		n += w.steps.Load()
	}
	return n
}

func totalFailures(ws []*writer) int64 {
	var n int64
	for _, w := range ws {
		n += w.failures.Load()
	}
	return n
}

// waitSteps waits until the writers have queued n steps in all.
func waitSteps(t *testing.T, ws []*writer, n int64) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for totalSteps(ws) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the writers reached %d steps, want %d", totalSteps(ws), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
