//! Scenario 4: reconnect storm.
//!
//! N clients connect and subscribe; then the broker is killed (SIGKILL) and started again on the
//! same port and data dir. Every client notices its connection end and reconnects with backoff
//! base, base, 2·base, 2·base, 4·base, ... (capped; each delay multiplied by a random factor in
//! [0.75, 1.25)), and counts as back once CONNECT and SUBSCRIBE succeeded again. This file reports
//! the time from the kill until all N are back, how long the broker took to serve again, and every
//! failed attempt by cause (TCP refused, CONNACK refusal, timeout, closed, other).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::brokers::{down_topic, Broker, Kind};
use crate::client::{self, ConnectError, ConnectOptions};
use crate::idle::{idle_ids, source_for};
use crate::report::{Row, Section};
use crate::{BrokerRun, Ctx};

/// The delay before reconnect attempt `k` (0-based): base·2^(k/2), capped, with jitter.
pub fn backoff(k: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let doubling = 2f64.powi((k / 2).min(30) as i32);
    let d = base.as_secs_f64() * doubling * jitter;
    Duration::from_secs_f64(d.min(cap.as_secs_f64()))
}

/// What the clients of a storm count, shared by all of them (the drain variant too).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) up: AtomicUsize,
    pub(crate) initial_failed: AtomicUsize,
    pub(crate) went_down: AtomicUsize,
    pub(crate) reconnected: AtomicUsize,
    pub(crate) attempts: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) other: AtomicU64,
    pub(crate) max_attempts: AtomicU64,
    pub(crate) first_failure: Mutex<Option<String>>,
    pub(crate) rejected_codes: Mutex<Vec<u8>>,
}

impl Counters {
    /// Waits until all `n` clients (started at `t0`) are up or gave up, then a moment for the
    /// last SUBACKs to settle; the time they took, or how many are up if not all.
    pub(crate) async fn wait_until_up(&self, n: usize, t0: Instant) -> Result<Duration, usize> {
        let connect_limit = Duration::from_secs(60 + n as u64 / 100);
        while self.up.load(Ordering::Relaxed) + self.initial_failed.load(Ordering::Relaxed) < n {
            if t0.elapsed() > connect_limit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = t0.elapsed();
        let up = self.up.load(Ordering::Relaxed);
        if up < n {
            return Err(up);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(took)
    }

    pub(crate) fn count_failure(&self, e: &ConnectError) {
        match e {
            ConnectError::Refused => &self.refused,
            ConnectError::Rejected(code) => {
                let mut codes = self.rejected_codes.lock().unwrap();
                if !codes.contains(code) {
                    codes.push(*code);
                }
                &self.rejected
            }
            ConnectError::SubscribeRejected => &self.rejected,
            ConnectError::Timeout => &self.timeouts,
            ConnectError::Closed => &self.closed,
            ConnectError::Io(_) | ConnectError::Protocol(_) => &self.other,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.first_failure
            .lock()
            .unwrap()
            .get_or_insert_with(|| e.to_string());
    }
}

pub struct StormOutcome {
    pub n: usize,
    pub initial_connect: Duration,
    pub restart_time: Duration,
    pub all_back: Option<Duration>,
    pub reconnected: usize,
    pub attempts: u64,
    pub refused: u64,
    pub rejected: u64,
    pub rejected_codes: Vec<u8>,
    pub timeouts: u64,
    pub closed: u64,
    pub other: u64,
    pub max_attempts: u64,
    pub first_failure: Option<String>,
    /// Set when the restarted broker exited by itself during the storm.
    pub broker_died: Option<String>,
}

struct ClientCfg {
    addr: std::net::SocketAddr,
    base: Duration,
    cap: Duration,
    deadline: Instant,
}

#[allow(clippy::too_many_arguments)]
async fn storm_client(
    i: usize,
    user: Option<String>,
    pass: Option<String>,
    cfg: Arc<ClientCfg>,
    sem: Arc<Semaphore>,
    c: Arc<Counters>,
) {
    let (uid, did) = idle_ids("storm", i);
    let topic = down_topic(&uid, &did);
    let opts = ConnectOptions {
        client_id: &did,
        username: user.as_deref(),
        password: pass.as_deref(),
        keep_alive_secs: 600,
    };
    let timeout = Duration::from_secs(10);
    // Initial connection: bounded handshakes in flight, three tries.
    let mut conn = None;
    {
        let _permit = sem.acquire().await.ok();
        for _ in 0..3 {
            match client::connect_and_subscribe(cfg.addr, source_for(i), &opts, &topic, timeout)
                .await
            {
                Ok(cn) => {
                    conn = Some(cn);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    let Some(mut conn) = conn else {
        c.initial_failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    c.up.fetch_add(1, Ordering::Relaxed);
    loop {
        conn.hold_idle(Duration::from_secs(300)).await;
        c.up.fetch_sub(1, Ordering::Relaxed);
        c.went_down.fetch_add(1, Ordering::Relaxed);
        let mut k = 0u32;
        loop {
            if Instant::now() >= cfg.deadline {
                return;
            }
            let jitter = rand::rng().random_range(0.75..1.25);
            tokio::time::sleep(backoff(k, cfg.base, cfg.cap, jitter)).await;
            k += 1;
            c.attempts.fetch_add(1, Ordering::Relaxed);
            match client::connect_and_subscribe(cfg.addr, source_for(i), &opts, &topic, timeout)
                .await
            {
                Ok(cn) => {
                    conn = cn;
                    c.max_attempts.fetch_max(k as u64, Ordering::Relaxed);
                    c.up.fetch_add(1, Ordering::Relaxed);
                    c.reconnected.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => c.count_failure(&e),
            }
        }
    }
}

/// Runs the storm on `broker`.
pub async fn run_one(
    broker: &mut Broker,
    n: usize,
    base: Duration,
    cap: Duration,
    limit: Duration,
    concurrency: usize,
) -> Result<StormOutcome> {
    let creds: Vec<_> = (0..n)
        .map(|i| broker.spec.auth.credentials(&idle_ids("storm", i).0))
        .collect();
    let c = Arc::new(Counters::default());
    let sem = Arc::new(Semaphore::new(concurrency));
    let t0 = Instant::now();
    let cfg = Arc::new(ClientCfg {
        addr: broker.addr(),
        base,
        cap,
        deadline: t0 + limit + Duration::from_secs(120),
    });
    let mut tasks = JoinSet::new();
    for (i, (u, p)) in creds.into_iter().enumerate() {
        tasks.spawn(storm_client(i, u, p, cfg.clone(), sem.clone(), c.clone()));
    }
    let initial_connect = match c.wait_until_up(n, t0).await {
        Ok(d) => d,
        Err(up) => {
            tasks.shutdown().await;
            bail!("only {up} of {n} clients connected before the restart");
        }
    };

    eprintln!(
        "[mqim-bench] storm: killing {} with {n} clients connected",
        broker.spec.kind
    );
    let t_kill = Instant::now();
    broker.kill().await?;
    let restart = broker.restart().await;
    let restart_time = t_kill.elapsed();
    if let Err(e) = restart {
        tasks.shutdown().await;
        return Err(e.context("restarting the broker"));
    }
    let mut all_back = None;
    while t_kill.elapsed() < limit {
        if c.reconnected.load(Ordering::Relaxed) >= n {
            all_back = Some(t_kill.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reconnected = c.reconnected.load(Ordering::Relaxed);
    let broker_died = broker.exit_report();
    // Stop the broker first so that the server side keeps the TIME_WAIT sockets.
    broker.kill().await?;
    tasks.shutdown().await;
    let rejected_codes = c.rejected_codes.lock().unwrap().clone();
    let first_failure = c.first_failure.lock().unwrap().clone();
    Ok(StormOutcome {
        n,
        initial_connect,
        restart_time,
        all_back,
        reconnected,
        attempts: c.attempts.load(Ordering::Relaxed),
        refused: c.refused.load(Ordering::Relaxed),
        rejected: c.rejected.load(Ordering::Relaxed),
        rejected_codes,
        timeouts: c.timeouts.load(Ordering::Relaxed),
        closed: c.closed.load(Ordering::Relaxed),
        other: c.other.load(Ordering::Relaxed),
        max_attempts: c.max_attempts.load(Ordering::Relaxed),
        first_failure,
        broker_died,
    })
}

/// Runs the scenario on both brokers.
pub async fn run(ctx: &Ctx) -> Section {
    let s = &ctx.settings;
    let (n, base, cap, limit, conc) = (
        s.storm_clients,
        s.storm_backoff_base,
        s.storm_backoff_cap,
        s.storm_timeout,
        s.connect_concurrency,
    );
    let mut sec = Section::new("storm");
    sec.param("clients", n);
    sec.param(
        "backoff",
        format!(
            "{b}, {b}, {}, {}, {}, {}, … s, cap {} s, ×[0.75, 1.25) jitter",
            2.0 * base.as_secs_f64(),
            2.0 * base.as_secs_f64(),
            4.0 * base.as_secs_f64(),
            4.0 * base.as_secs_f64(),
            cap.as_secs_f64(),
            b = base.as_secs_f64()
        ),
    );
    sec.param("give up after", format!("{} s", limit.as_secs_f64()));
    for note in s
        .clamp_notes
        .iter()
        .filter(|n| n.starts_with("storm clients"))
    {
        sec.notes.push(note.clone());
    }
    eprintln!("[mqim-bench] scenario storm: {n} clients");
    let mqim = ctx
        .on_broker(Kind::Mqim, async |b: &mut Broker| {
            run_one(b, n, base, cap, limit, conc).await
        })
        .await;
    let mosq = ctx
        .on_broker(Kind::Mosquitto, async |b: &mut Broker| {
            run_one(b, n, base, cap, limit, conc).await
        })
        .await;
    let (a, b) = (mqim.done(), mosq.done());
    type G<'a> = &'a dyn Fn(&StormOutcome) -> Option<f64>;
    let f = |o: Option<&StormOutcome>, g: G| o.and_then(g);
    sec.rows.push(Row::num(
        "**time from kill until all are back (s)** (lower is better)",
        f(a, &|o| o.all_back.map(|d| d.as_secs_f64())),
        f(b, &|o| o.all_back.map(|d| d.as_secs_f64())),
        2,
    ));
    sec.rows.push(Row::count(
        "clients back",
        f(a, &|o| Some(o.reconnected as f64)),
        f(b, &|o| Some(o.reconnected as f64)),
    ));
    sec.rows.push(Row::num(
        "broker restart until it serves again (s)",
        f(a, &|o| Some(o.restart_time.as_secs_f64())),
        f(b, &|o| Some(o.restart_time.as_secs_f64())),
        3,
    ));
    sec.rows.push(Row::count(
        "reconnect attempts",
        f(a, &|o| Some(o.attempts as f64)),
        f(b, &|o| Some(o.attempts as f64)),
    ));
    sec.rows.push(Row::count(
        "**attempts refused/failed (all causes)**",
        f(a, &|o| {
            Some((o.refused + o.rejected + o.timeouts + o.closed + o.other) as f64)
        }),
        f(b, &|o| {
            Some((o.refused + o.rejected + o.timeouts + o.closed + o.other) as f64)
        }),
    ));
    sec.rows.push(Row::count(
        "… TCP connection refused",
        f(a, &|o| Some(o.refused as f64)),
        f(b, &|o| Some(o.refused as f64)),
    ));
    sec.rows.push(Row::count(
        "… CONNACK/SUBACK refusal",
        f(a, &|o| Some(o.rejected as f64)),
        f(b, &|o| Some(o.rejected as f64)),
    ));
    sec.rows.push(Row::count(
        "… handshake timeout (10 s)",
        f(a, &|o| Some(o.timeouts as f64)),
        f(b, &|o| Some(o.timeouts as f64)),
    ));
    sec.rows.push(Row::count(
        "… closed/reset during handshake, other",
        f(a, &|o| Some((o.closed + o.other) as f64)),
        f(b, &|o| Some((o.closed + o.other) as f64)),
    ));
    sec.rows.push(Row::count(
        "most attempts one client needed",
        f(a, &|o| Some(o.max_attempts as f64)),
        f(b, &|o| Some(o.max_attempts as f64)),
    ));
    sec.rows.push(Row::num(
        "initial connect of all clients (s)",
        f(a, &|o| Some(o.initial_connect.as_secs_f64())),
        f(b, &|o| Some(o.initial_connect.as_secs_f64())),
        2,
    ));
    sec.notes.push(
        "The broker is SIGKILLed and immediately started again (same port, same data dir); the \
         first reconnect attempt of each client waits one backoff delay, so the time until all \
         are back is at least about one base delay."
            .into(),
    );
    sec.notes
        .push("mqim runs its embedded store in this scenario (`--stores` applies to throughput and latency).".into());
    for (kind, r) in [(Kind::Mqim, &mqim), (Kind::Mosquitto, &mosq)] {
        r.note_failure(kind, ctx.require_mqim, &mut sec);
        if let BrokerRun::Done(o) = r {
            if let Some(died) = &o.broker_died {
                sec.problems.push(format!(
                    "{kind}: the restarted broker died during the storm: {died}"
                ));
            }
            if o.reconnected < o.n {
                sec.problems.push(format!(
                    "{kind}: only {} of {} clients were back after {:.0} s",
                    o.reconnected,
                    o.n,
                    limit.as_secs_f64()
                ));
            }
            if let Some(e) = &o.first_failure {
                let codes = if o.rejected_codes.is_empty() {
                    String::new()
                } else {
                    format!(" (CONNACK codes seen: {:?})", o.rejected_codes)
                };
                sec.notes
                    .push(format!("{kind}: first failed attempt: {e}{codes}"));
            }
        }
    }
    sec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_every_second_attempt_and_caps() {
        let b = Duration::from_secs(2);
        let cap = Duration::from_secs(120);
        let seq: Vec<u64> = (0..12).map(|k| backoff(k, b, cap, 1.0).as_secs()).collect();
        assert_eq!(seq, vec![2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 64]);
        assert_eq!(backoff(12, b, cap, 1.0).as_secs(), 120);
        assert_eq!(backoff(100, b, cap, 1.2).as_secs(), 120);
    }
}
