//! Process-wide metrics: the Prometheus ones `/metrics` exports, and counters of events that are
//! logged once and counted after that, so abuse cannot flood the log.
//!
//! Recording is on the send path, so it is lock-free: counters and gauges are atomics
//! (`prometheus-client`'s), labelled families are looked up only for rare events (connects,
//! one lookup per request), and the two histograms are this file's [`AtomicHistogram`]
//! (`prometheus-client`'s own takes a mutex per observation). The registry only renders.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Deliveries refused because a client's outbox was full.
pub static OUTBOX_OVERFLOWS: AtomicU64 = AtomicU64::new(0);
/// QoS 1/2 messages dropped from full offline queues of persistent sessions.
pub static OFFLINE_DROPPED: AtomicU64 = AtomicU64::new(0);
/// Connections closed for a malformed packet or a protocol error.
pub static PROTOCOL_ERRORS: AtomicU64 = AtomicU64::new(0);

/// (outbox overflows, offline drops, protocol errors).
pub fn snapshot() -> (u64, u64, u64) {
    (
        OUTBOX_OVERFLOWS.load(Ordering::Relaxed),
        OFFLINE_DROPPED.load(Ordering::Relaxed),
        PROTOCOL_ERRORS.load(Ordering::Relaxed),
    )
}

/// A label set of fixed names: `[("protocol", "5.0"), ("transport", "tcp")]`.
pub type Labels<const N: usize> = [(&'static str, &'static str); N];

/// The exported metrics (names in the README, "Operators").
pub struct Metrics {
    registry: Registry,
    /// Open connections by protocol (`3.1.1`, `5.0`) and transport (`tcp`, `ws`, `tls`).
    pub connections: Family<Labels<2>, Gauge>,
    /// CONNECT outcomes by `result`: `ok`, `not_authorized`, `banned`, `bad_client_id`,
    /// `draining`.
    pub connects: Family<Labels<1>, Counter>,
    /// IM messages accepted (sends answered `sent`).
    pub messages_received: Counter,
    /// IM message events queued to online devices.
    pub messages_delivered: Counter,
    /// IM requests by `op` and `result` (`ok` or the error code).
    pub requests: Family<Labels<2>, Counter>,
    /// Clients disconnected because their outbox was full.
    pub outbox_disconnects: Counter,
    /// Refusals by `kind`: `connect` (per-IP connection rate), `send` (per-user send rate).
    pub rate_limited: Family<Labels<1>, Counter>,
    /// Time from a send's start to its answer: the store's durable commit, mostly.
    pub store_commit: AtomicHistogram,
    /// Time from a message's acceptance to its queueing on the recipient's devices.
    pub send_to_deliver: AtomicHistogram,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            connections: Family::default(),
            connects: Family::default(),
            messages_received: Counter::default(),
            messages_delivered: Counter::default(),
            requests: Family::default(),
            outbox_disconnects: Counter::default(),
            rate_limited: Family::default(),
            store_commit: AtomicHistogram::default(),
            send_to_deliver: AtomicHistogram::default(),
        };
        let mut r = Registry::with_prefix("mqim");
        r.register("connections", "Open connections", m.connections.clone());
        r.register("connects", "CONNECT outcomes", m.connects.clone());
        r.register(
            "messages_received",
            "IM messages accepted",
            m.messages_received.clone(),
        );
        r.register(
            "messages_delivered",
            "IM message events queued to online devices",
            m.messages_delivered.clone(),
        );
        r.register("requests", "IM requests answered", m.requests.clone());
        r.register(
            "outbox_disconnects",
            "Clients disconnected for a full outbox",
            m.outbox_disconnects.clone(),
        );
        r.register(
            "rate_limited",
            "Connections and sends refused by a rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "store_commit_seconds",
            "Time from a send's start to its durable commit",
            m.store_commit.clone(),
        );
        r.register(
            "send_to_deliver_seconds",
            "Time from a message's acceptance to its live delivery",
            m.send_to_deliver.clone(),
        );
        // Every connection series exists from the start (a scrape shows 0, not nothing).
        m.connections_by_label();
        Metrics { registry: r, ..m }
    }

    /// The Prometheus text exposition (OpenMetrics 1.0).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Open connections, summed over the labels.
    pub fn connections_by_label(&self) -> Vec<(&'static str, &'static str, i64)> {
        let mut v = Vec::new();
        for p in ["3.1.1", "5.0"] {
            for t in ["tcp", "ws", "tls"] {
                let n = self
                    .connections
                    .get_or_create(&[("protocol", p), ("transport", t)])
                    .get();
                v.push((p, t, n));
            }
        }
        v
    }
}

/// Upper bounds of the histogram buckets, in seconds (the last is +Inf).
pub const BUCKETS: [f64; 14] = [
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    f64::INFINITY,
];

/// A histogram of durations with fixed buckets: one relaxed atomic add per bucket and sum.
/// Clones share the counts (the registry holds one).
#[derive(Clone, Debug, Default)]
pub struct AtomicHistogram(Arc<HistogramCounts>);

#[derive(Debug, Default)]
pub struct HistogramCounts {
    counts: [AtomicU64; BUCKETS.len()],
    sum_nanos: AtomicU64,
}

impl std::ops::Deref for AtomicHistogram {
    type Target = HistogramCounts;
    fn deref(&self) -> &HistogramCounts {
        &self.0
    }
}

impl HistogramCounts {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len() - 1);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative), in [`BUCKETS`] order.
    pub fn counts(&self) -> [u64; BUCKETS.len()] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.counts();
        let buckets: Vec<(f64, u64)> = BUCKETS.iter().copied().zip(counts).collect();
        let count = counts.iter().sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The `q` quantile (0..1) of per-bucket counts, as the upper bound of the bucket it falls in
/// (None without observations; +Inf reported as the largest finite bound).
pub fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(BUCKETS[i].min(BUCKETS[BUCKETS.len() - 2]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets_and_quantiles_follow_them() {
        let h = AtomicHistogram::default();
        for ms in [1, 1, 2, 3, 40] {
            h.observe(Duration::from_millis(ms));
        }
        let c = h.counts();
        assert_eq!(quantile(&c, 0.5), Some(0.0025));
        assert_eq!(quantile(&c, 0.99), Some(0.05));
        let m = get();
        m.store_commit.observe(Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains("mqim_store_commit_seconds_bucket{le=\"0.005\"}"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mqim_messages_received counter"),
            "{text}"
        );
    }
}
