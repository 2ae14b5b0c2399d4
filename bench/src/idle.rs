//! Scenario 1: idle connections.
//!
//! N clients connect (mqim: a valid token each; Mosquitto: anonymous), subscribe QoS 1 to their
//! own downlink topic and go quiet (one small task per connection, PINGREQ every 5 minutes). This
//! file measures the broker's RSS growth per connection (`(VmRSS after − VmRSS before) / N`), the
//! time to get all N connected and subscribed, and, for reference, the load generator's own RSS
//! per connection. Past 20,000 connections the client source addresses are spread over
//! 127.0.0.2, 127.0.0.3, ... so that ephemeral ports do not run out.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::brokers::{self, down_topic, Broker, Kind};
use crate::client::{self, ConnectOptions};
use crate::report::{Row, Section};
use crate::Ctx;

/// Connections per client source address.
pub const PER_SOURCE_IP: usize = 20_000;

/// The source address for client number `i` (`None`: let the kernel pick, i.e. 127.0.0.1).
pub fn source_for(i: usize) -> Option<IpAddr> {
    let idx = i / PER_SOURCE_IP;
    if idx == 0 {
        None
    } else {
        let idx = idx.min(250) as u8;
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + idx)))
    }
}

/// User and device of idle client `i`.
pub fn idle_ids(prefix: &str, i: usize) -> (String, String) {
    (format!("{prefix}{i}"), format!("{prefix}{i}-d"))
}

pub struct IdleOutcome {
    pub n: usize,
    pub connected: usize,
    pub failed: usize,
    pub failed_attempts: usize,
    pub first_error: Option<String>,
    pub connect_time: Duration,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub client_rss_delta_kib: u64,
}

impl IdleOutcome {
    pub fn rss_per_conn_kib(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.connected.max(1) as f64
    }
}

/// Connects `n` idle clients to `broker`, measures, disconnects them.
pub async fn run_one(broker: &mut Broker, n: usize, concurrency: usize) -> Result<IdleOutcome> {
    let addr = broker.addr();
    // Tokens are signed before the clock starts so that signing is not counted as connect time.
    let creds: Vec<(Option<String>, Option<String>)> = (0..n)
        .map(|i| broker.spec.auth.credentials(&idle_ids("idle", i).0))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = broker.rss_kib()?;
    let self_before = brokers::self_rss_kib();

    let sem = Arc::new(Semaphore::new(concurrency));
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let failed_attempts = Arc::new(AtomicUsize::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let mut tasks = JoinSet::new();
    let t0 = Instant::now();
    for (i, (user, pass)) in creds.into_iter().enumerate() {
        let sem = sem.clone();
        let connected = connected.clone();
        let failed = failed.clone();
        let failed_attempts = failed_attempts.clone();
        let first_error = first_error.clone();
        tasks.spawn(async move {
            let (uid, did) = idle_ids("idle", i);
            let topic = down_topic(&uid, &did);
            let permit = sem.acquire_owned().await.ok();
            let mut conn = None;
            for attempt in 0..3 {
                let opts = ConnectOptions {
                    client_id: &did,
                    username: user.as_deref(),
                    password: pass.as_deref(),
                    keep_alive_secs: 600,
                };
                match client::connect_and_subscribe(
                    addr,
                    source_for(i),
                    &opts,
                    &topic,
                    Duration::from_secs(30),
                )
                .await
                {
                    Ok(c) => {
                        conn = Some(c);
                        break;
                    }
                    Err(e) => {
                        failed_attempts.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap()
                            .get_or_insert_with(|| format!("client {i}: {e}"));
                        if attempt < 2 {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }
            drop(permit);
            drop((user, pass, topic));
            match conn {
                Some(c) => {
                    connected.fetch_add(1, Ordering::Relaxed);
                    c.hold_idle(Duration::from_secs(300)).await;
                }
                None => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Bounded wait: generous per connection, capped.
    let limit = Duration::from_secs(60 + (n as u64 / 100)).min(Duration::from_secs(900));
    loop {
        let done = connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
        if done >= n {
            break;
        }
        if t0.elapsed() > limit {
            tasks.shutdown().await;
            bail!(
                "only {} of {n} clients connected within {limit:?} ({} failed; first error: {})",
                connected.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
                first_error.lock().unwrap().clone().unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connect_time = t0.elapsed();
    // Let the broker settle (allocator, deferred per-connection work) before reading RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_kib = broker.rss_kib()?;
    let client_rss_delta_kib = brokers::self_rss_kib().saturating_sub(self_before);
    let still = connected.load(Ordering::Relaxed);
    // Kill the broker before dropping the clients: the server side then holds the TIME_WAIT
    // sockets, not our ephemeral ports.
    if let Some(died) = broker.exit_report() {
        tasks.shutdown().await;
        bail!("{died}");
    }
    broker.kill().await?;
    tasks.shutdown().await;
    let first_error = first_error.lock().unwrap().clone();
    Ok(IdleOutcome {
        n,
        connected: still,
        failed: failed.load(Ordering::Relaxed),
        failed_attempts: failed_attempts.load(Ordering::Relaxed),
        first_error,
        connect_time,
        rss_before_kib,
        rss_after_kib,
        client_rss_delta_kib,
    })
}

/// Runs the scenario on both brokers.
pub async fn run(ctx: &Ctx) -> Section {
    let s = &ctx.settings;
    let n = s.idle_clients;
    let c = s.connect_concurrency;
    let mut sec = Section::new("idle");
    sec.param("clients", n);
    sec.param("handshakes in flight", c);
    for note in s
        .clamp_notes
        .iter()
        .filter(|n| n.starts_with("idle clients"))
    {
        sec.notes.push(note.clone());
    }
    eprintln!("[mqim-bench] scenario idle: {n} clients");
    let mqim = ctx
        .on_broker(Kind::Mqim, async |b: &mut Broker| run_one(b, n, c).await)
        .await;
    let mosq = ctx
        .on_broker(Kind::Mosquitto, async |b: &mut Broker| {
            run_one(b, n, c).await
        })
        .await;
    let (a, b) = (mqim.done(), mosq.done());
    let f = |o: Option<&IdleOutcome>, g: &dyn Fn(&IdleOutcome) -> f64| o.map(g);
    sec.rows.push(Row::count(
        "connected and subscribed",
        f(a, &|o| o.connected as f64),
        f(b, &|o| o.connected as f64),
    ));
    sec.rows.push(Row::num(
        "**broker RSS per connection (KiB)** (lower is better)",
        f(a, &|o| o.rss_per_conn_kib()),
        f(b, &|o| o.rss_per_conn_kib()),
        2,
    ));
    sec.rows.push(Row::num(
        "broker RSS before (MiB)",
        f(a, &|o| o.rss_before_kib as f64 / 1024.0),
        f(b, &|o| o.rss_before_kib as f64 / 1024.0),
        1,
    ));
    sec.rows.push(Row::num(
        "broker RSS with all connected (MiB)",
        f(a, &|o| o.rss_after_kib as f64 / 1024.0),
        f(b, &|o| o.rss_after_kib as f64 / 1024.0),
        1,
    ));
    sec.rows.push(Row::num(
        "**time to connect all (s)** (lower is better)",
        f(a, &|o| o.connect_time.as_secs_f64()),
        f(b, &|o| o.connect_time.as_secs_f64()),
        2,
    ));
    sec.rows.push(Row::num(
        "connects per second",
        f(a, &|o| {
            o.connected as f64 / o.connect_time.as_secs_f64().max(1e-9)
        }),
        f(b, &|o| {
            o.connected as f64 / o.connect_time.as_secs_f64().max(1e-9)
        }),
        0,
    ));
    sec.rows.push(Row::count(
        "failed connection attempts",
        f(a, &|o| o.failed_attempts as f64),
        f(b, &|o| o.failed_attempts as f64),
    ));
    sec.rows.push(Row::plain(
        "load generator RSS per connection (KiB)",
        f(a, &|o| {
            o.client_rss_delta_kib as f64 / o.connected.max(1) as f64
        }),
        f(b, &|o| {
            o.client_rss_delta_kib as f64 / o.connected.max(1) as f64
        }),
        2,
    ));
    sec.notes.push(
        "RSS is VmRSS from /proc/<pid>/status, read 0.5 s after the broker serves and 2 s after \
         the last client subscribed; mqim clients each present a distinct user's HS256 token, \
         Mosquitto clients are anonymous. The load generator's RSS delta is informational (it \
         runs mqim first, then Mosquitto, in one process, so the second run reuses freed memory). \
         The connect time is shared with the load generator on the same 2 cores (at most \
         `handshakes in flight` connects are pending at once, below Mosquitto's listen backlog \
         of 100)."
            .into(),
    );
    sec.notes
        .push("mqim runs its embedded store in this scenario (`--stores` applies to throughput and latency).".into());
    for (kind, r) in [(Kind::Mqim, &mqim), (Kind::Mosquitto, &mosq)] {
        r.note_failure(kind, ctx.require_mqim, &mut sec);
        if let Some(o) = r.done() {
            if o.connected != o.n {
                sec.problems.push(format!(
                    "{kind}: only {} of {} clients connected ({} failed); first error: {}",
                    o.connected,
                    o.n,
                    o.failed,
                    o.first_error.clone().unwrap_or_default()
                ));
            } else if let Some(e) = &o.first_error {
                sec.notes.push(format!(
                    "{kind}: {} attempts failed and were retried; first error: {e}",
                    o.failed_attempts
                ));
            }
        }
    }
    sec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_past_the_first_block() {
        assert_eq!(source_for(0), None);
        assert_eq!(source_for(PER_SOURCE_IP - 1), None);
        assert_eq!(
            source_for(PER_SOURCE_IP),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        );
        assert_eq!(
            source_for(5 * PER_SOURCE_IP),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)))
        );
    }
}
