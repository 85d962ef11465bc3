package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/syncgate/syncgate/internal/client"
	"github.com/syncgate/syncgate/sync/protocol"
)

// Presence across 3 `syncgate serve` processes sharing one Redis: rooms
// that span nodes, the support API and its event stream on a node other
// than the devices', kill -9 of a node (its devices go offline and leave
// their rooms within the presence TTL), and an admin action reaching a
// device on another node.

// presenceEnv makes expiry quick enough to wait for: heartbeats every
// second, entries gone 3 s after the last one, sweeps every 200 ms.
var presenceEnv = []string{
	"SYNCGATE_PRESENCE_HEARTBEAT=1s", "SYNCGATE_PRESENCE_TTL=3s", "SYNCGATE_PRESENCE_SWEEP_EVERY=200ms",
}

const presenceTTL = 3 * time.Second

// staffToken mints a token with roles support and admin.
func (c *cluster) staffToken() string {
	c.t.Helper()
	cmd := exec.Command(binary, "token", "--data-dir", c.t.TempDir(), "--user", "staff", "--roles", "support,admin")
	cmd.Env = append(baseEnv(), c.env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("syncgate token: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

func (c *cluster) support(method string, i int, path, tok string) (int, []byte) {
	c.t.Helper()
	req, _ := http.NewRequest(method, "http://"+c.nodes[i].addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

type onlinePage struct {
	Users, Connections int
	Items              []struct{ User, Device, Node, Conn string }
}

// roomLog records the room events a device receives.
type roomLog struct {
	mu     sync.Mutex
	events []protocol.RoomEvent
	at     []time.Time
}

func (l *roomLog) hook(ev protocol.RoomEvent, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, ev)
	l.at = append(l.at, at)
}

// find returns when the first event for member id of kind event arrived.
func (l *roomLog) find(event, id string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, ev := range l.events {
		if ev.Event == event && ev.Member.ID == id {
			return l.at[i], true
		}
	}
	return time.Time{}, false
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestClusterPresence(t *testing.T) {
	c, _ := newCluster(t, 3, clusterOptions{env: presenceEnv})
	ctx := ctxT(t, 2*time.Minute)
	staff := c.staffToken()

	// The support event stream on node 2, about alice only.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.nodes[2].addr+"/v1/support/events?user=alice", nil)
	req.Header.Set("Authorization", "Bearer "+staff)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("events: %v %v", resp, err)
	}
	defer resp.Body.Close()
	type sse struct {
		name string
		ev   struct{ User, Device, Node, Reason string }
	}
	events := make(chan sse, 64)
	go func() {
		r := bufio.NewReader(resp.Body)
		var cur sse
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				close(events)
				return
			}
			line = strings.TrimSuffix(line, "\n")
			switch {
			case strings.HasPrefix(line, "event: "):
				cur.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &cur.ev)
			case line == "" && cur.name != "":
				events <- cur
				cur = sse{}
			}
		}
	}()
	expectEvent := func(name, device, reason string) {
		t.Helper()
		timeout := time.After(presenceTTL + 5*time.Second)
		for {
			select {
			case e, ok := <-events:
				if !ok {
					t.Fatalf("the event stream ended waiting for %s %s", name, device)
				}
				if e.name == name && e.ev.Device == device && (reason == "" || e.ev.Reason == reason) {
					return
				}
			case <-timeout:
				t.Fatalf("no %s event for %s", name, device)
			}
		}
	}

	// One device of alice per node, all in one room.
	var logs [3]roomLog
	devs := make([]*client.Device, 3)
	ids := make([]string, 3)
	for i := range devs {
		devs[i] = c.device("d"+string(rune('0'+i)), i)
		devs[i].OnRoomEvent = logs[i].hook
		if _, err := devs[i].Connect(ctx); err != nil {
			t.Fatal(err)
		}
		r, err := devs[i].Join(ctx, scope, "doc:1")
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = r.You
		if len(r.Members) != i+1 {
			t.Fatalf("d%d joined a room of %d members, want %d", i, len(r.Members), i+1)
		}
		expectEvent("online", devs[i].ID, "")
		expectEvent("join", devs[i].ID, "")
	}
	// d0 (node 0) saw d1 and d2 join on nodes 1 and 2.
	waitUntil(t, 5*time.Second, "join events across nodes", func() bool {
		_, ok1 := logs[0].find(protocol.RoomJoin, ids[1])
		_, ok2 := logs[0].find(protocol.RoomJoin, ids[2])
		return ok1 && ok2
	})
	if err := devs[2].SetRoomState(scope, "doc:1", json.RawMessage(`{"cursor":42}`)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "a state event across nodes", func() bool {
		_, ok := logs[0].find(protocol.RoomState, ids[2])
		return ok
	})

	// The support API on node 1 sees all three, on their nodes.
	var page onlinePage
	code, body := c.support(http.MethodGet, 1, "/v1/support/online", staff)
	if code != http.StatusOK || json.Unmarshal(body, &page) != nil || page.Connections != 3 || page.Users != 1 {
		t.Fatalf("online = %d %s", code, body)
	}
	nodes := map[string]string{}
	for _, it := range page.Items {
		nodes[it.Device] = it.Node
	}
	if nodes["d0"] != "n0" || nodes["d1"] != "n1" || nodes["d2"] != "n2" {
		t.Fatalf("online nodes = %v", nodes)
	}
	// An ordinary user's token is refused.
	if code, body := c.support(http.MethodGet, 1, "/v1/support/users/alice", c.token("alice", "d0")); code != http.StatusForbidden {
		t.Fatalf("users/alice as alice = %d %s", code, body)
	}

	// kill -9 node 1: nothing cleans up d1's entry; the other nodes sweep
	// it within the TTL and announce the leave and the offline.
	killed := time.Now()
	c.nodes[1].kill()
	waitUntil(t, presenceTTL+5*time.Second, "d1's leave at d0", func() bool {
		_, ok := logs[0].find(protocol.RoomLeave, ids[1])
		return ok
	})
	left, _ := logs[0].find(protocol.RoomLeave, ids[1])
	// The entry was last refreshed up to one heartbeat (1 s) before the
	// kill; the sweep runs every 200 ms.
	if took := left.Sub(killed); took > presenceTTL+time.Second {
		t.Fatalf("d1 left %s after the kill; the TTL is %s", took, presenceTTL)
	} else {
		t.Logf("d1 left the room %s after kill -9 (TTL %s)", took.Round(time.Millisecond), presenceTTL)
	}
	expectEvent("leave", "d1", "expired")
	expectEvent("offline", "d1", "expired")
	code, body = c.support(http.MethodGet, 2, "/v1/support/online", staff)
	if json.Unmarshal(body, &page) != nil || page.Connections != 2 {
		t.Fatalf("online after the kill = %d %s", code, body)
	}
	var room struct{ Members []protocol.Member }
	code, body = c.support(http.MethodGet, 0, "/v1/support/rooms/doc:1?scope="+scope, staff)
	if json.Unmarshal(body, &room) != nil || len(room.Members) != 2 {
		t.Fatalf("room after the kill = %d %s", code, body)
	}

	// An admin action on node 0 reaches d2 on node 2.
	code, body = c.support(http.MethodPost, 0, "/v1/support/devices/d2/disconnect", staff)
	if code != http.StatusOK {
		t.Fatalf("disconnect d2 = %d %s", code, body)
	}
	select {
	case <-devs[2].Closed():
	case <-time.After(5 * time.Second):
		t.Fatal("d2 was not disconnected")
	}
	if got := devs[2].CloseCode(); got != protocol.CloseDisconnected {
		t.Fatalf("d2 closed with %d, want %d", got, protocol.CloseDisconnected)
	}
	expectEvent("offline", "d2", "disconnect")
}
