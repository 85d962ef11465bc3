package gateway

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/syncgate/syncgate/sync/protocol"
)

// metrics are the gateway's Prometheus series. A nil Registerer gives
// unregistered (still usable) collectors.
type metrics struct {
	connections      prometheus.Gauge
	connectionsTotal prometheus.Counter
	messagesIn       *prometheus.CounterVec
	messagesOut      prometheus.Counter
	bytesOut         prometheus.Counter
	framesOut        prometheus.Counter
	slowConsumers    prometheus.Counter
	closes           *prometheus.CounterVec
	httpRequests     *prometheus.CounterVec
	brokerErrors     prometheus.Counter
	resyncHints      prometheus.Counter
	resyncDropped    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "syncgate", Name: "connections",
			Help: "Open WebSocket connections.",
		}),
		connectionsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "connections_total",
			Help: "WebSocket connections accepted (upgraded).",
		}),
		messagesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "messages_in_total",
			Help: "Client messages received over WebSocket, by type (invalid: malformed or unknown type).",
		}, []string{"type"}),
		messagesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "messages_out_total",
			Help: "Server messages written to WebSockets.",
		}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "bytes_out_total",
			Help: "Payload bytes written to WebSockets (frames, newlines included).",
		}),
		framesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "frames_out_total",
			Help: "WebSocket data frames written; messages_out_total / frames_out_total is the coalescing factor.",
		}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "slow_consumer_disconnects_total",
			Help: "Connections closed (4008) because their outbound queue overflowed.",
		}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "closes_total",
			Help: "WebSocket connections ended, by close code (1006: no close frame; the socket failed).",
		}, []string{"code"}),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "http_requests_total",
			Help: "HTTP API requests (fallback push and pull, conflict list and resolve), by route and status code.",
		}, []string{"route", "code"}),
		brokerErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "broker_errors_total",
			Help: "Broker publish, subscribe or unsubscribe calls that failed.",
		}),
		resyncHints: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "resync_hints_total",
			Help: "Newest-entry hints broadcast to a scope's local devices after the broker may have lost its messages (a Redis reconnect).",
		}),
		resyncDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "resync_dropped_total",
			Help: "Resync hints not sent because the resync queue was full.",
		}),
	}
	for _, t := range []string{
		protocol.TypeHello, protocol.TypePush, protocol.TypePull, protocol.TypeAuth, protocol.TypePing, typeInvalid,
	} {
		m.messagesIn.WithLabelValues(t) // export zeroes so rates work from the start
	}
	if reg != nil {
		reg.MustRegister(m.connections, m.connectionsTotal, m.messagesIn, m.messagesOut, m.bytesOut,
			m.framesOut, m.slowConsumers, m.closes, m.httpRequests, m.brokerErrors, m.resyncHints, m.resyncDropped)
	}
	return m
}

// closed counts a connection's end. Peers choose their close codes, so
// codes outside the RFC's common ones and ours are counted as "other": the
// label set stays bounded.
func (m *metrics) closed(code int) {
	label := "other"
	switch {
	case code >= 1000 && code <= 1015, code >= 4000 && code <= 4011:
		label = strconv.Itoa(code)
	}
	m.closes.WithLabelValues(label).Inc()
}

// typeInvalid labels messages that were malformed or of an unknown type:
// label values stay a closed set, never a client-chosen string.
const typeInvalid = "invalid"

func (m *metrics) messageIn(kind string) {
	switch kind {
	case protocol.TypeHello, protocol.TypePush, protocol.TypePull, protocol.TypeAuth, protocol.TypePing:
	default:
		kind = typeInvalid
	}
	m.messagesIn.WithLabelValues(kind).Inc()
}
