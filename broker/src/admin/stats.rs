//! `GET /api/v1/stats`: the node at a glance. Rates and latency quantiles come from a sampler
//! that reads the process metrics every [`SAMPLE_EVERY`] and keeps five minutes of samples.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Json;
use parking_lot::Mutex;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Admin;
use super::error::ErrorBody;
use super::AdminState;
use crate::metrics::{self, BUCKETS};

const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const KEEP: Duration = Duration::from_secs(300);

/// The node's state.
#[derive(Serialize, ToSchema)]
pub struct Stats {
    pub node_id: u16,
    /// mqim's version.
    pub version: String,
    /// The store's shape: `embedded`, `redis+embedded` or `redis+scylla`.
    pub store: String,
    pub uptime_secs: u64,
    /// The node refuses new connections and is closing the others.
    pub draining: bool,
    pub connections_total: i64,
    /// Open connections per protocol (`3.1.1`, `5.0`) and transport (`tcp`, `ws`, `tls`).
    pub connections: Vec<ConnectionCount>,
    /// Distinct users with at least one connection on this node.
    pub users_online: usize,
    pub messages: MessageRates,
    /// Time from a send's start to its durable commit over the last minute, in milliseconds
    /// (bucket upper bounds; null without sends).
    pub store_commit_ms: Latency,
}

#[derive(Serialize, ToSchema)]
pub struct ConnectionCount {
    pub protocol: String,
    pub transport: String,
    pub count: i64,
}

/// IM messages: totals since start and per-second rates over 1 and 5 minutes.
#[derive(Serialize, ToSchema)]
pub struct MessageRates {
    pub received_total: u64,
    pub delivered_total: u64,
    pub received_per_sec_1m: f64,
    pub received_per_sec_5m: f64,
    pub delivered_per_sec_1m: f64,
    pub delivered_per_sec_5m: f64,
}

#[derive(Serialize, ToSchema)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Clone)]
struct Sample {
    at: Instant,
    received: u64,
    delivered: u64,
    commit: [u64; BUCKETS.len()],
}

impl Sample {
    fn now() -> Sample {
        let m = metrics::get();
        Sample {
            at: Instant::now(),
            received: m.messages_received.get(),
            delivered: m.messages_delivered.get(),
            commit: m.store_commit.counts(),
        }
    }
}

/// Five minutes of metric samples.
pub struct Rates {
    samples: Mutex<VecDeque<Sample>>,
}

impl Rates {
    /// Starts sampling.
    pub fn start() -> Arc<Rates> {
        let rates = Arc::new(Rates {
            samples: Mutex::new(VecDeque::from([Sample::now()])),
        });
        let weak = Arc::downgrade(&rates);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(r) = weak.upgrade() else { return };
                let mut s = r.samples.lock();
                s.push_back(Sample::now());
                while s
                    .front()
                    .is_some_and(|f| f.at.elapsed() > KEEP + SAMPLE_EVERY)
                {
                    s.pop_front();
                }
            }
        });
        rates
    }

    /// The oldest sample no older than `window` (or the oldest kept).
    fn since(&self, window: Duration) -> Sample {
        let s = self.samples.lock();
        s.iter()
            .find(|x| x.at.elapsed() <= window + SAMPLE_EVERY / 2)
            .or(s.front())
            .cloned()
            .unwrap_or_else(Sample::now)
    }
}

fn per_sec(now: &Sample, then: &Sample, f: fn(&Sample) -> u64) -> f64 {
    let dt = now.at.duration_since(then.at).as_secs_f64();
    if dt < 0.5 {
        return 0.0;
    }
    (f(now).saturating_sub(f(then))) as f64 / dt
}

#[utoipa::path(
    get,
    path = "/api/v1/stats",
    tag = "node",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Stats),
        (status = 401, body = ErrorBody, description = "no valid admin token"),
        (status = 403, body = ErrorBody, description = "not an admin token"),
    )
)]
pub async fn get_stats(_admin: Admin, State(st): State<AdminState>) -> Json<Stats> {
    let now = Sample::now();
    let (m1, m5) = (
        st.rates.since(Duration::from_secs(60)),
        st.rates.since(Duration::from_secs(300)),
    );
    let recent: Vec<u64> = now
        .commit
        .iter()
        .zip(m1.commit.iter())
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let ms = |q| metrics::quantile(&recent, q).map(|s| s * 1000.0);
    let connections: Vec<ConnectionCount> = metrics::get()
        .connections_by_label()
        .into_iter()
        .map(|(p, t, n)| ConnectionCount {
            protocol: p.into(),
            transport: t.into(),
            count: n,
        })
        .collect();
    let sessions = st.control.sessions();
    let users: HashSet<&str> = sessions.iter().filter_map(|s| s.user()).collect();
    Json(Stats {
        node_id: st.info.node_id,
        version: env!("CARGO_PKG_VERSION").into(),
        store: st.info.store.clone(),
        uptime_secs: st.info.started.elapsed().as_secs(),
        draining: st.control.is_draining(),
        connections_total: connections.iter().map(|c| c.count).sum(),
        connections,
        users_online: users.len(),
        messages: MessageRates {
            received_total: now.received,
            delivered_total: now.delivered,
            received_per_sec_1m: per_sec(&now, &m1, |s| s.received),
            received_per_sec_5m: per_sec(&now, &m5, |s| s.received),
            delivered_per_sec_1m: per_sec(&now, &m1, |s| s.delivered),
            delivered_per_sec_5m: per_sec(&now, &m5, |s| s.delivered),
        },
        store_commit_ms: Latency {
            p50: ms(0.5),
            p99: ms(0.99),
        },
    })
}
