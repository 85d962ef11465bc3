package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/syncgate/syncgate/sync/protocol"
)

// closeGrace is how long the write loop waits, after writing a close frame,
// for the client's close reply (which ends the read loop) before it closes
// the socket anyway. Waiting lets the close frame arrive intact: closing a
// TCP socket with unread input sends RST, and a client can lose the frame.
const closeGrace = 2 * time.Second

// frameSep separates coalesced messages in one frame. A string constant
// (written with io.WriteString, which gorilla's writer implements without
// copying) keeps the package free of mutable state.
const frameSep = "\n"

// conn is one WebSocket connection: a read loop (the HTTP handler's
// goroutine) that processes client messages one at a time, in order, and a
// write loop that drains a byte-bounded outbound queue.
//
// Outbound framing: the write loop coalesces up to MaxMessagesPerFrame
// queued messages (and at most MaxMessageBytes, unless a single message is
// larger) into ONE text frame, separated by '\n' (NDJSON). json.Marshal
// escapes control characters inside strings, so a message never contains a
// raw newline: clients split every frame on '\n' and parse each line.
//
// Teardown: whoever decides to close calls closeWith (any goroutine; it
// never blocks). The write loop flushes what is queued, writes the close
// frame, waits up to closeGrace for the read loop to see the client's
// reply, and closes the socket. The read loop then returns, waits for the
// write loop, and unregisters the connection.
type conn struct {
	srv    *Server
	ws     *websocket.Conn
	log    atomic.Pointer[slog.Logger] // gains user/device/session at hello; read by every goroutine
	ctx    context.Context             // cancelled when the socket is closed
	cancel context.CancelFunc

	wake      chan struct{} // capacity 1: the queue or the closing state changed
	readDone  chan struct{} // closed when the read loop has returned
	writeDone chan struct{} // closed when the write loop has returned
	closeSent chan struct{} // closed once the close frame has been written (or attempted)
	done      chan struct{} // closed when the connection is fully torn down
	netClose  sync.Once

	mu             sync.Mutex // guards the fields below; leaf lock (see doc.go)
	queue          [][]byte   // outbound messages, oldest first; shared slices, never modified
	queued         int        // bytes in queue
	closing        bool       // no more messages are accepted
	closeCode      int        // close code to send (or that the peer sent)
	closeText      string
	closeFrameSent bool // the close frame is already on the wire (peer close, read limit)
	// expiryGen invalidates token-expiry timers: armExpiry bumps it, and a
	// timer closes the connection only if it still holds its generation.
	// Checking it and deciding to close happen under mu in one step, so a
	// refresh either lands before the close decision (and cancels it) or
	// finds the connection closing (and is too late).
	expiryGen uint64
	// refreshTimer refreshes the session in the store (sessions.go). It
	// re-arms itself only while the connection is not closing, checked
	// under mu, so once teardown has stopped it, it stays stopped.
	refreshTimer *time.Timer

	// pres is the connection's presence state (presence.go); set on the
	// read loop before the connection is registered with the presence
	// manager, which publishes it to other goroutines.
	pres *connPresence

	// Owned by the read loop goroutine; no lock.
	sess     *session
	expTimer *time.Timer
}

func newConn(parent context.Context, s *Server, ws *websocket.Conn, log *slog.Logger) *conn {
	ctx, cancel := context.WithCancel(parent)
	c := &conn{
		srv: s, ws: ws, ctx: ctx, cancel: cancel,
		wake:      make(chan struct{}, 1),
		readDone:  make(chan struct{}),
		writeDone: make(chan struct{}),
		closeSent: make(chan struct{}),
		done:      make(chan struct{}),
	}
	c.log.Store(log)
	return c
}

func (c *conn) logger() *slog.Logger { return c.log.Load() }

// serve runs the connection until it ends. It is called on the HTTP
// handler's goroutine, which becomes the read loop.
func (c *conn) serve() {
	defer c.teardown()
	defer func() {
		if r := recover(); r != nil {
			c.logger().Error("gateway: panic in connection read loop", "panic", r, "stack", stack())
			c.closeWith(protocol.CloseInternal, "internal error", nil, true)
			// teardown closes the socket at once; send the close frame
			// here (control frames may be written concurrently).
			_ = c.ws.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(protocol.CloseInternal, "internal error"),
				time.Now().Add(c.srv.cfg.WriteTimeout))
		}
	}()
	go c.writeLoop()
	c.readLoop()
}

// teardown runs once the read loop has returned.
func (c *conn) teardown() {
	close(c.readDone)
	c.closeNetConn()
	<-c.writeDone
	if c.expTimer != nil {
		c.expTimer.Stop()
	}
	if c.sess != nil {
		for scope := range c.sess.scopes {
			c.srv.unsubscribe(scope, c)
		}
	}
	c.mu.Lock()
	code := c.closeCode
	if !c.closing {
		code = 1006 // RFC 6455 "abnormal closure": no close frame either way
	}
	c.queue, c.queued, c.closing = nil, 0, true
	if c.refreshTimer != nil {
		c.refreshTimer.Stop()
	}
	c.mu.Unlock()
	c.endPresence()
	c.endSession()
	c.srv.metrics.closed(code)
	c.logger().Debug("gateway: connection closed", "code", code)
	close(c.done)
}

// closeNetConn closes the socket and cancels the connection's context.
// Safe from any goroutine, any number of times.
func (c *conn) closeNetConn() {
	c.netClose.Do(func() {
		c.cancel()
		_ = c.ws.NetConn().Close()
	})
}

// enqueue queues data for the write loop. It never blocks. It returns false
// when the connection is closing, or when data would overflow the outbound
// queue; the connection is then closed with 4008 (slow consumer).
//
// A message larger than OutboundQueueBytes is accepted into an empty queue,
// so one large pull page never trips the limit on an idle connection.
func (c *conn) enqueue(data []byte) bool {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return false
	}
	if c.queued > 0 && c.queued+len(data) > c.srv.cfg.OutboundQueueBytes {
		c.mu.Unlock()
		// No logging here: enqueue runs under hub locks and must not
		// block; finishClose logs the close.
		c.srv.metrics.slowConsumers.Inc()
		c.closeWith(protocol.CloseSlowConsumer, string(protocol.CodeSlowConsumer), c.srv.slowConsumerMsg, true)
		return false
	}
	c.queue = append(c.queue, data)
	c.queued += len(data)
	c.mu.Unlock()
	c.signal()
	return true
}

func (c *conn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// closeWith starts closing the connection with code: no further messages
// are accepted; errMsg (an encoded error message, may be nil) is queued
// last; the write loop flushes the queue, sends the close frame and closes
// the socket. dropQueued discards what is queued first (the slow-consumer
// case: the client will resume from its checkpoint, and holding megabytes
// for a socket that is already behind helps no one). Only the first call
// has an effect. It never blocks.
func (c *conn) closeWith(code int, text string, errMsg []byte, dropQueued bool) {
	c.mu.Lock()
	started := c.closeLocked(code, text, errMsg, dropQueued)
	c.mu.Unlock()
	if started {
		c.signal()
	}
}

// closeLocked is closeWith with c.mu held; it reports whether this call
// started the close (the caller then signals the write loop).
func (c *conn) closeLocked(code int, text string, errMsg []byte, dropQueued bool) bool {
	if c.closing {
		return false
	}
	c.closing, c.closeCode, c.closeText = true, code, text
	if dropQueued {
		clear(c.queue)
		c.queue, c.queued = c.queue[:0], 0
	}
	if errMsg != nil && (c.queued == 0 || c.queued+len(errMsg) <= c.srv.cfg.OutboundQueueBytes) {
		c.queue = append(c.queue, errMsg)
		c.queued += len(errMsg)
	}
	return true
}

// peerClosed records a close the client started (gorilla has already
// replied with the close frame) or a close frame already on the wire.
func (c *conn) peerClosed(code int) {
	c.mu.Lock()
	if !c.closing {
		c.closing, c.closeCode = true, code
		clear(c.queue)
		c.queue, c.queued = c.queue[:0], 0
	}
	c.closeFrameSent = true
	c.mu.Unlock()
	c.signal()
}

func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// takeLocked moves up to MaxMessagesPerFrame queued messages, within
// MaxMessageBytes in total (a single larger message goes alone), into
// batch. c.mu must be held.
func (c *conn) takeLocked(batch [][]byte) [][]byte {
	maxN, maxBytes := c.srv.cfg.MaxMessagesPerFrame, c.srv.cfg.MaxMessageBytes
	n, size, taken := 0, 0, 0
	for n < len(c.queue) && n < maxN {
		l := len(c.queue[n])
		if n > 0 && size+1+l > maxBytes {
			break
		}
		if n > 0 {
			size++
		}
		size += l
		taken += l
		n++
	}
	batch = append(batch, c.queue[:n]...)
	rest := copy(c.queue, c.queue[n:])
	clear(c.queue[rest:]) // release the sent messages to the GC
	c.queue = c.queue[:rest]
	c.queued -= taken
	if rest == 0 && cap(c.queue) > 1024 {
		c.queue = nil // do not keep a burst's backing array forever
	}
	return batch
}

// writeLoop owns all data writes to the socket (gorilla allows one
// concurrent writer; control frames may be written from other goroutines).
func (c *conn) writeLoop() {
	defer close(c.writeDone)
	defer func() {
		if r := recover(); r != nil {
			c.logger().Error("gateway: panic in connection write loop", "panic", r, "stack", stack())
			c.closeNetConn()
		}
	}()
	ping := time.NewTicker(c.srv.cfg.PingInterval)
	defer ping.Stop()
	batch := make([][]byte, 0, c.srv.cfg.MaxMessagesPerFrame)
	for {
		select {
		case <-c.readDone:
			return
		case <-ping.C:
			err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.srv.cfg.WriteTimeout))
			if err != nil && !errors.Is(err, websocket.ErrCloseSent) {
				c.writeFailed(err)
				return
			}
			continue
		case <-c.wake:
		}
		for {
			c.mu.Lock()
			batch = c.takeLocked(batch[:0])
			closing := c.closing
			c.mu.Unlock()
			if len(batch) > 0 {
				err := c.writeFrame(batch)
				clear(batch)
				if err != nil {
					c.writeFailed(err)
					return
				}
				continue
			}
			if closing {
				c.finishClose()
				return
			}
			break
		}
	}
}

// writeFrame writes batch as one text frame, messages separated by '\n'.
func (c *conn) writeFrame(batch [][]byte) error {
	if err := c.ws.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout)); err != nil {
		return err
	}
	w, err := c.ws.NextWriter(websocket.TextMessage)
	if err != nil {
		return err
	}
	n := 0
	for i, m := range batch {
		if i > 0 {
			if _, err := io.WriteString(w, frameSep); err != nil {
				return err
			}
			n++
		}
		if _, err := w.Write(m); err != nil {
			return err
		}
		n += len(m)
	}
	if err := w.Close(); err != nil {
		return err
	}
	m := c.srv.metrics
	m.framesOut.Inc()
	m.messagesOut.Add(float64(len(batch)))
	m.bytesOut.Add(float64(n))
	return nil
}

func (c *conn) writeFailed(err error) {
	if !errors.Is(err, websocket.ErrCloseSent) && !errors.Is(err, net.ErrClosed) {
		c.logger().Debug("gateway: write failed", "err", err)
	}
	c.closeNetConn()
}

// finishClose sends the close frame, waits for the client's reply (seen by
// the read loop) for at most closeGrace, and closes the socket.
func (c *conn) finishClose() {
	c.mu.Lock()
	code, text, sent := c.closeCode, c.closeText, c.closeFrameSent
	c.mu.Unlock()
	if code == protocol.CloseSlowConsumer {
		c.logger().Info("gateway: slow consumer: outbound queue overflowed", "limit", c.srv.cfg.OutboundQueueBytes)
	}
	if !sent {
		err := c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text),
			time.Now().Add(c.srv.cfg.WriteTimeout))
		if err != nil && !errors.Is(err, websocket.ErrCloseSent) {
			c.logger().Debug("gateway: writing close frame failed", "code", code, "err", err)
		}
	}
	close(c.closeSent)
	t := time.NewTimer(closeGrace)
	defer t.Stop()
	select {
	case <-c.readDone:
	case <-t.C:
	}
	c.closeNetConn()
}

// readLoop reads and handles client messages until the connection ends.
func (c *conn) readLoop() {
	cfg := &c.srv.cfg
	c.ws.SetReadLimit(int64(cfg.MaxMessageBytes))
	_ = c.ws.SetReadDeadline(time.Now().Add(cfg.HelloTimeout))
	c.ws.SetPongHandler(func(string) error {
		c.extendReadDeadline()
		return nil
	})
	c.ws.SetPingHandler(func(data string) error {
		c.extendReadDeadline()
		err := c.ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(cfg.WriteTimeout))
		if err == nil || errors.Is(err, websocket.ErrCloseSent) || isTimeout(err) {
			return nil
		}
		return err
	})
	for {
		kind, data, err := c.ws.ReadMessage()
		if err != nil {
			c.readFailed(err)
			return
		}
		if c.isClosing() {
			continue // waiting for the close reply: requests are no longer served
		}
		c.extendReadDeadline()
		c.handle(kind, data)
		c.extendReadDeadline() // handling may have taken a while
		if c.sess == nil && c.isClosing() {
			// A refused hello: the hello deadline may have passed while it
			// was handled (a storage outage makes beginning the session
			// slow), and a read that failed at once would end the
			// connection before the write loop sends the error and the
			// close frame. Wait for the client's close reply instead.
			_ = c.ws.SetReadDeadline(time.Now().Add(closeGrace))
		}
	}
}

// extendReadDeadline pushes the read deadline PongTimeout ahead once the
// session is open; before hello, the HelloTimeout deadline stands.
func (c *conn) extendReadDeadline() {
	if c.sess != nil {
		_ = c.ws.SetReadDeadline(time.Now().Add(c.srv.cfg.PongTimeout))
	}
}

// readFailed decides how the connection ends after a read error.
func (c *conn) readFailed(err error) {
	var ce *websocket.CloseError
	switch {
	case c.isClosing():
		// We started the close: this is the client's reply, or the write
		// loop closing the socket after closeGrace.
	case errors.As(err, &ce):
		// The client started the close; gorilla has replied in kind.
		c.peerClosed(ce.Code)
	case errors.Is(err, websocket.ErrReadLimit):
		// gorilla has already written close 1009 (websocket.CloseMessageTooBig);
		// finishClose retries it if that write lost the race for the
		// socket. The rest of the oversized frame is still arriving:
		// drain it so the close does not turn into a reset.
		c.logger().Debug("gateway: message exceeds MaxMessageBytes", "limit", c.srv.cfg.MaxMessageBytes)
		c.closeWith(protocol.CloseMessageTooBig, "message too big", nil, true)
		c.drain()
	case isTimeout(err) && c.sess == nil:
		c.closeWith(protocol.CloseHelloTimeout, "hello timeout",
			c.srv.errorMessage(0, protocol.CodeHelloTimeout, "no hello within "+c.srv.cfg.HelloTimeout.String()), false)
		c.drain()
	case isTimeout(err):
		// Best effort: a silent client may be gone, and the close frame
		// with it.
		c.closeWith(protocol.ClosePingTimeout, "ping timeout", nil, false)
		c.drain()
	default:
		// EOF, reset: the socket is gone without a close frame.
		c.logger().Debug("gateway: read failed", "err", err)
	}
}

// drain discards input after the WebSocket reader has failed (gorilla's
// read errors are permanent) while the write loop finishes the close. It
// ends when the client closes, the write loop closes the socket, or the
// deadline passes.
func (c *conn) drain() {
	nc := c.ws.NetConn()
	_ = nc.SetReadDeadline(time.Now().Add(c.srv.cfg.WriteTimeout + closeGrace))
	_, _ = io.Copy(io.Discard, nc)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
