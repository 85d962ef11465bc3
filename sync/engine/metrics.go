package engine

import "github.com/prometheus/client_golang/prometheus"

// metrics are the engine's Prometheus series. A nil Registerer gives
// unregistered (still usable) collectors, so tests need no registry.
type metrics struct {
	commits       prometheus.Counter
	commitEntries prometheus.Counter
	commitLatency prometheus.Histogram
	commitRetries prometheus.Counter
	outcomes      *prometheus.CounterVec
	pulls         prometheus.Counter
	resets        prometheus.Counter
	compacted     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		commits: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "commits_total",
			Help: "Successful commits to the scope log (one per batch insert).",
		}),
		commitEntries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "commit_entries_total",
			Help: "Log entries committed.",
		}),
		commitLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "syncgate", Name: "commit_duration_seconds",
			Help:    "Time from taking the scope lock to a durable commit, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms .. 4 s
		}),
		commitRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "commit_retries_total",
			Help: "Commits retried because another writer took the seq or version first.",
		}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "mutations_total",
			Help: "Mutations processed, by outcome (applied, merged, conflict, rejected) and replayed (true when answered from a receipt).",
		}, []string{"outcome", "replayed"}),
		pulls: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "pulls_total",
			Help: "Pull requests served.",
		}),
		resets: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "resets_total",
			Help: "Resets sent because a checkpoint was behind the compaction horizon or ahead of the head.",
		}),
		compacted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "syncgate", Name: "compacted_entries_total",
			Help: "Log entries removed by compaction.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.commits, m.commitEntries, m.commitLatency, m.commitRetries,
			m.outcomes, m.pulls, m.resets, m.compacted)
	}
	return m
}
