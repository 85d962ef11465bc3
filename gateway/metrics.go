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

	presenceErrors     prometheus.Counter
	presenceHeartbeat  prometheus.Histogram
	presenceRestored   prometheus.Counter
	presenceSwept      prometheus.Counter
	presenceOnline     prometheus.GaugeFunc
	roomEvents         *prometheus.CounterVec
	awarenessCoalesced prometheus.Counter
	typingDropped      prometheus.Counter
	supportStreams     prometheus.Gauge
}

// newMetrics builds the gateway's metrics; localOnline reports this node's
// online presence entries.
func newMetrics(reg prometheus.Registerer, localOnline func() float64) *metrics {
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
		presenceErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "presence_errors_total",
			Help: "Presence tracker calls that failed (entries, rooms, heartbeats, sweeps); presence is best effort and retried at the next heartbeat.",
		}),
		presenceHeartbeat: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "syncgate", Name: "presence_heartbeat_seconds",
			Help:    "Time to refresh every local presence entry and the node record, per heartbeat.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
		presenceRestored: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "presence_restored_total",
			Help: "Local entries the tracker had lost (a late heartbeat, a Redis restart), added back by a heartbeat.",
		}),
		presenceSwept: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "presence_swept_total",
			Help: "Expired entries this node removed and announced offline: ghosts of dead nodes, or entries whose node's heartbeat came too late.",
		}),
		presenceOnline: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "syncgate", Name: "presence_local_entries",
			Help: "Online presence entries held by this node.",
		}, localOnline),
		roomEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "room_events_total",
			Help: "Room events published, by event (join, leave, state, typing).",
		}, []string{"event"}),
		awarenessCoalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "awareness_coalesced_total",
			Help: "Awareness updates held back by the per-connection rate limit (the newest is sent when the interval passes).",
		}),
		typingDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "typing_dropped_total",
			Help: "Typing signals dropped by the per-user, per-room throttle.",
		}),
		supportStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "syncgate", Name: "support_event_streams",
			Help: "Open /v1/support/events streams on this node.",
		}),
	}
	for _, t := range []string{
		protocol.TypeHello, protocol.TypePush, protocol.TypePull, protocol.TypeAuth, protocol.TypePing, typeInvalid,
	} {
		m.messagesIn.WithLabelValues(t) // export zeroes so rates work from the start
	}
	if reg != nil {
		reg.MustRegister(m.connections, m.connectionsTotal, m.messagesIn, m.messagesOut, m.bytesOut,
			m.framesOut, m.slowConsumers, m.closes, m.httpRequests, m.brokerErrors, m.resyncHints, m.resyncDropped,
			m.presenceErrors, m.presenceHeartbeat, m.presenceRestored, m.presenceSwept, m.presenceOnline,
			m.roomEvents, m.awarenessCoalesced, m.typingDropped, m.supportStreams)
	}
	return m
}

// closed counts a connection's end. Peers choose their close codes, so
// codes outside the RFC's common ones and ours are counted as "other": the
// label set stays bounded.
func (m *metrics) closed(code int) {
	label := "other"
	switch {
	case code >= 1000 && code <= 1015, code >= 4000 && code <= 4013:
		label = strconv.Itoa(code)
	}
	m.closes.WithLabelValues(label).Inc()
}

// typeInvalid labels messages that were malformed or of an unknown type:
// label values stay a closed set, never a client-chosen string.
const typeInvalid = "invalid"

func (m *metrics) messageIn(kind string) {
	switch kind {
	case protocol.TypeHello, protocol.TypePush, protocol.TypePull, protocol.TypeAuth, protocol.TypePing,
		protocol.TypeAppState, protocol.TypeJoin, protocol.TypeLeave, protocol.TypeRoomState, protocol.TypeTyping,
		protocol.TypeCheckpoint:
	default:
		kind = typeInvalid
	}
	m.messagesIn.WithLabelValues(kind).Inc()
}
