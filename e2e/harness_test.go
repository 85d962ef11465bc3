package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binary is the syncgate binary built once for the package.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "syncgate-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "syncgate")
	build := exec.Command("go", "build", "-race", "-o", binary, "../cmd/syncgate")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building syncgate:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// node is one `syncgate serve` subprocess. It keeps its address and data
// dir across kill and restart, as a node behind a load balancer does.
type node struct {
	t       *testing.T
	dataDir string
	addr    string
	env     []string // extra SYNCGATE_* settings
	args    []string // extra flags
	logs    *syncBuffer
	cmd     *exec.Cmd  // the current process
	exited  chan error // receives the current process's exit
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startNode runs syncgate serve on dataDir and waits until /readyz answers.
func startNode(t *testing.T, dataDir string, extra ...string) *node {
	t.Helper()
	return startNodeEnv(t, dataDir, nil, extra...)
}

// startNodeEnv is startNode with extra SYNCGATE_* environment settings.
func startNodeEnv(t *testing.T, dataDir string, env []string, extra ...string) *node {
	t.Helper()
	n := &node{t: t, dataDir: dataDir, addr: freeAddr(t), env: env, args: extra, logs: &syncBuffer{}}
	t.Cleanup(func() {
		if n.running() {
			n.cmd.Process.Kill()
			<-n.exited
		}
		if t.Failed() {
			t.Logf("node %s logs:\n%s", n.addr, tail(n.logs.String(), 6000))
		}
	})
	n.start()
	return n
}

// running reports whether the current process has not exited yet.
func (n *node) running() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case err := <-n.exited:
		n.exited <- err // keep it for whoever waits
		return false
	default:
		return true
	}
}

// start runs the process (again) on the node's address and waits until
// /readyz answers.
func (n *node) start() {
	t := n.t
	t.Helper()
	args := append([]string{"serve", "--listen", n.addr, "--data-dir", n.dataDir, "--log-level", "debug"}, n.args...)
	n.cmd = exec.Command(binary, args...)
	n.cmd.Stdout, n.cmd.Stderr = n.logs, n.logs
	// make test exports the shared servers' addresses as SYNCGATE_* for the
	// packages that test against them; a node only uses them when a test
	// passes them explicitly in env.
	n.cmd.Env = append(append(baseEnv(), "SYNCGATE_TIMING_SHUTDOWN_TIMEOUT=5s"), n.env...)
	fmt.Fprintf(n.logs, "=== e2e: starting %s\n", n.addr)
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	n.exited = exited
	cmd := n.cmd
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + n.addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("syncgate exited at start: %v\n%s", err, tail(n.logs.String(), 6000))
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("syncgate not ready after 30s:\n%s", tail(n.logs.String(), 6000))
}

// kill is kill -9: no drain, no cleanup.
func (n *node) kill() {
	n.t.Helper()
	fmt.Fprintf(n.logs, "=== e2e: kill -9 %s\n", n.addr)
	if err := n.cmd.Process.Kill(); err != nil {
		n.t.Fatal(err)
	}
	<-n.exited
	n.exited <- nil
}

// baseEnv is the test's environment without the shared servers' settings.
func baseEnv() []string {
	var base []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SYNCGATE_MONGO_URI=") && !strings.HasPrefix(kv, "SYNCGATE_REDIS_ADDR=") {
			base = append(base, kv)
		}
	}
	return base
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

func (n *node) wsURL() string { return "ws://" + n.addr + "/v1/ws" }

// token mints a dev token with the node's data-dir secret, like a user would.
func (n *node) token(user string, args ...string) string {
	n.t.Helper()
	out, err := exec.Command(binary, append([]string{"token", "--data-dir", n.dataDir, "--user", user}, args...)...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("syncgate token: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// stop sends SIGTERM and waits for a clean exit within the deadline.
func (n *node) stop(deadline time.Duration) {
	n.t.Helper()
	fmt.Fprintf(n.logs, "=== e2e: SIGTERM %s\n", n.addr)
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		n.t.Fatal(err)
	}
	select {
	case err := <-n.exited:
		n.exited <- err
		if err != nil {
			n.t.Fatalf("syncgate exited with %v after SIGTERM:\n%s", err, tail(n.logs.String(), 4000))
		}
	case <-time.After(deadline):
		n.cmd.Process.Kill()
		n.t.Fatalf("syncgate did not exit within %s of SIGTERM", deadline)
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
