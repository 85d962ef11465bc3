package gateway

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/syncgate/syncgate/sync/protocol"
)

// BenchmarkBroadcast: hub delivery of one 200-byte message to 1,000
// connections subscribed to its scope (sockets not involved: the write
// loops are not running, queues are emptied between rounds).
func BenchmarkBroadcast(b *testing.B) {
	const subscribers = 1000
	s := bareServer(b, Config{OutboundQueueBytes: 1 << 30})
	ctx := context.Background()
	conns := make([]*conn, subscribers)
	for i := range conns {
		conns[i] = bareConn(s)
		if err := s.hub.subscribe(ctx, "space:big", conns[i]); err != nil {
			b.Fatal(err)
		}
	}
	// Unrelated scopes in the same shards, as in a busy node.
	for i := range 10_000 {
		if err := s.hub.subscribe(ctx, fmt.Sprintf("user:%d", i), bareConn(s)); err != nil {
			b.Fatal(err)
		}
	}
	data := bytes.Repeat([]byte("x"), 200)
	drain := func() {
		for _, c := range conns {
			c.mu.Lock()
			clear(c.queue)
			c.queue, c.queued = c.queue[:0], 0
			c.mu.Unlock()
			select {
			case <-c.wake:
			default:
			}
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if n := s.hub.broadcast("space:big", data); n != subscribers {
			b.Fatalf("delivered to %d", n)
		}
		if i%256 == 255 {
			b.StopTimer()
			drain()
			b.StartTimer()
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*subscribers), "ns/delivery")
}

// BenchmarkConnWrite: the write path of one connection, from enqueue to
// the client socket, for 200-byte messages; frames=1 disables coalescing.
func BenchmarkConnWrite(b *testing.B) {
	for _, perFrame := range []int{1, 64} {
		b.Run(fmt.Sprintf("frames=%d", perFrame), func(b *testing.B) {
			s := bareServer(b, Config{MaxMessagesPerFrame: perFrame, OutboundQueueBytes: 64 << 20})
			sws, cws := wsPair(b)
			c := newConn(context.Background(), s, sws, s.log)
			go c.writeLoop()
			got := make(chan int)
			go func() {
				n := 0
				for {
					_, data, err := cws.ReadMessage()
					if err != nil {
						got <- n
						return
					}
					n += bytes.Count(data, []byte{'\n'}) + 1
					if n >= b.N {
						got <- n
						return
					}
				}
			}()
			data, _ := protocol.Marshal(&protocol.ErrorMsg{Code: protocol.CodeInternal, Message: string(bytes.Repeat([]byte("m"), 150))})
			data = data[:200:200]
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				for {
					c.mu.Lock()
					backlog := c.queued
					c.mu.Unlock()
					if backlog < 1<<20 {
						break
					}
					runtime.Gosched() // let the writer catch up: measure steady state
				}
				if !c.enqueue(data) {
					b.Fatal("enqueue refused")
				}
			}
			select {
			case n := <-got:
				if n < b.N {
					b.Fatalf("client got %d of %d", n, b.N)
				}
			case <-time.After(time.Minute):
				b.Fatal("client did not receive everything")
			}
			b.StopTimer()
			b.ReportMetric(counter(b, s.metrics.messagesOut)/counter(b, s.metrics.framesOut), "msgs/frame")
			close(c.readDone)
			c.closeNetConn()
			<-c.writeDone
		})
	}
}
