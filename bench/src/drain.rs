//! Scenario 6: the reconnect storm's drain variant (seed 001: drain a node before restarting it).
//!
//! Two mqim nodes, A and B (embedded store each). N MQTT 5 clients connect to A and subscribe;
//! then `POST /api/v1/drain {redirect: B, rate}` on A's admin API. A closes its connections at
//! `rate` per second, telling each client DISCONNECT 0x9C "use another server" with B as Server
//! Reference; each client connects where the reference points at once (a client that got no
//! reference falls back to B, and is counted). Reported: the time from the drain call until all
//! N are back (connected and subscribed on B), how long A took to close them all, what the
//! clients were told, and every failed attempt by cause, as in the storm. Mosquitto has no drain:
//! its column stays empty.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::brokers::{down_topic, Broker, BrokerSpec};
use crate::client::ConnectOptions;
use crate::client_v5::{connect_and_subscribe_v5, Ending};
use crate::idle::{idle_ids, source_for};
use crate::report::{Row, Section};
use crate::storm::{backoff, Counters};
use crate::Ctx;

/// DISCONNECT reason "use another server" (MQTT 5).
const USE_ANOTHER_SERVER: u8 = 0x9C;

/// What the clients were told when A closed them.
#[derive(Default)]
struct Told {
    /// 0x9C with a Server Reference naming B.
    redirected: AtomicUsize,
    /// A DISCONNECT with another reason or reference.
    other_disconnect: AtomicUsize,
    /// The socket closed without a DISCONNECT.
    closed: AtomicUsize,
}

pub struct DrainOutcome {
    n: usize,
    rate: u32,
    initial_connect: Duration,
    /// From the drain call until A had closed every client.
    drained: Option<Duration>,
    /// From the drain call until every client was back on B.
    all_back: Option<Duration>,
    reconnected: usize,
    redirected: usize,
    other_disconnect: usize,
    closed: usize,
    attempts: u64,
    failed: u64,
    refused: u64,
    rejected: u64,
    timeouts: u64,
    max_attempts: u64,
    first_failure: Option<String>,
}

struct ClientCfg {
    a: SocketAddr,
    b: SocketAddr,
    base: Duration,
    cap: Duration,
    deadline: Instant,
}

async fn drain_client(
    i: usize,
    creds: (Option<String>, Option<String>),
    cfg: Arc<ClientCfg>,
    sem: Arc<Semaphore>,
    c: Arc<Counters>,
    told: Arc<Told>,
) {
    let (uid, did) = idle_ids("drain", i);
    let topic = down_topic(&uid, &did);
    let opts = ConnectOptions {
        client_id: &did,
        username: creds.0.as_deref(),
        password: creds.1.as_deref(),
        keep_alive_secs: 600,
    };
    let timeout = Duration::from_secs(10);
    let ping = Duration::from_secs(300);
    let mut conn = None;
    {
        let _permit = sem.acquire().await.ok();
        for _ in 0..3 {
            match connect_and_subscribe_v5(cfg.a, source_for(i), &opts, &topic, timeout).await {
                Ok(cn) => {
                    conn = Some(cn);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    let Some(conn) = conn else {
        c.initial_failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    c.up.fetch_add(1, Ordering::Relaxed);
    let ending = conn.until_ended(ping).await;
    c.up.fetch_sub(1, Ordering::Relaxed);
    c.went_down.fetch_add(1, Ordering::Relaxed);
    let target = match &ending {
        Ending::Disconnect {
            reason: USE_ANOTHER_SERVER,
            server_reference: Some(r),
        } if r.parse::<SocketAddr>().ok() == Some(cfg.b) => {
            told.redirected.fetch_add(1, Ordering::Relaxed);
            cfg.b
        }
        Ending::Disconnect { .. } => {
            told.other_disconnect.fetch_add(1, Ordering::Relaxed);
            cfg.b
        }
        Ending::Closed => {
            told.closed.fetch_add(1, Ordering::Relaxed);
            cfg.b
        }
    };
    // A redirect is followed at once; only a failed attempt backs off (as in the storm).
    let mut k = 0u32;
    loop {
        if Instant::now() >= cfg.deadline {
            return;
        }
        c.attempts.fetch_add(1, Ordering::Relaxed);
        match connect_and_subscribe_v5(target, source_for(i), &opts, &topic, timeout).await {
            Ok(cn) => {
                c.max_attempts
                    .fetch_max(u64::from(k) + 1, Ordering::Relaxed);
                c.reconnected.fetch_add(1, Ordering::Relaxed);
                cn.until_ended(ping).await;
                return;
            }
            Err(e) => c.count_failure(&e),
        }
        let jitter = rand::rng().random_range(0.75..1.25);
        tokio::time::sleep(backoff(k, cfg.base, cfg.cap, jitter)).await;
        k += 1;
    }
}

/// `POST path` with a JSON body and a bearer token to `addr` (HTTP/1.1, one request); returns
/// the status and the body.
async fn http_post(addr: SocketAddr, path: &str, token: &str, body: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .context("connecting to the admin listener")?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")?;
    let body = resp
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}

/// Runs the drain once: N clients on `a`, drained to `b`.
#[allow(clippy::too_many_arguments)]
pub async fn run_one(
    a: &mut Broker,
    b: &mut Broker,
    n: usize,
    rate: u32,
    base: Duration,
    cap: Duration,
    limit: Duration,
    concurrency: usize,
) -> Result<DrainOutcome> {
    let admin = SocketAddr::from(([127, 0, 0, 1], a.admin_port.context("A has no admin port")?));
    let token = a
        .spec
        .auth
        .admin_token("bench")
        .context("the drain needs mqim's JWT auth for an admin token")?;
    let c = Arc::new(Counters::default());
    let told = Arc::new(Told::default());
    let sem = Arc::new(Semaphore::new(concurrency));
    let t0 = Instant::now();
    let cfg = Arc::new(ClientCfg {
        a: a.addr(),
        b: b.addr(),
        base,
        cap,
        deadline: t0 + limit + Duration::from_secs(120),
    });
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let creds = a.spec.auth.credentials(&idle_ids("drain", i).0);
        tasks.spawn(drain_client(
            i,
            creds,
            cfg.clone(),
            sem.clone(),
            c.clone(),
            told.clone(),
        ));
    }
    let initial_connect = match c.wait_until_up(n, t0).await {
        Ok(d) => d,
        Err(up) => {
            tasks.shutdown().await;
            bail!("only {up} of {n} clients connected to A before the drain");
        }
    };

    eprintln!("[mqim-bench] drain: draining A ({n} clients) to B at {rate}/s");
    let body = format!(r#"{{"redirect": "{}", "rate": {rate}}}"#, b.addr());
    let t_drain = Instant::now();
    let (status, answer) = http_post(admin, "/api/v1/drain", &token, &body).await?;
    if !(200..300).contains(&status) {
        tasks.shutdown().await;
        bail!("POST /api/v1/drain answered {status}: {answer}");
    }
    let (mut drained, mut all_back) = (None, None);
    while t_drain.elapsed() < limit {
        if drained.is_none() && c.went_down.load(Ordering::Relaxed) >= n {
            drained = Some(t_drain.elapsed());
        }
        if c.reconnected.load(Ordering::Relaxed) >= n {
            all_back = Some(t_drain.elapsed());
            drained = drained.or(all_back);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reconnected = c.reconnected.load(Ordering::Relaxed);
    // Stop the brokers first so that the server side keeps the TIME_WAIT sockets.
    a.kill().await?;
    b.kill().await?;
    tasks.shutdown().await;
    let load = |x: &AtomicU64| x.load(Ordering::Relaxed);
    let first_failure = c.first_failure.lock().unwrap().clone();
    Ok(DrainOutcome {
        n,
        rate,
        initial_connect,
        drained,
        all_back,
        reconnected,
        redirected: told.redirected.load(Ordering::Relaxed),
        other_disconnect: told.other_disconnect.load(Ordering::Relaxed),
        closed: told.closed.load(Ordering::Relaxed),
        attempts: load(&c.attempts),
        failed: load(&c.refused)
            + load(&c.rejected)
            + load(&c.timeouts)
            + load(&c.closed)
            + load(&c.other),
        refused: load(&c.refused),
        rejected: load(&c.rejected),
        timeouts: load(&c.timeouts),
        max_attempts: load(&c.max_attempts),
        first_failure,
    })
}

/// Starts A and B, runs the drain, stops them.
async fn on_two_nodes(ctx: &Ctx, spec: &BrokerSpec) -> Result<DrainOutcome> {
    let s = &ctx.settings;
    let spec = BrokerSpec {
        admin: true,
        ..spec.clone()
    };
    let mut a = Broker::start(&spec).await.context("starting node A")?;
    let mut b = Broker::start(&spec).await.context("starting node B")?;
    let r = run_one(
        &mut a,
        &mut b,
        s.storm_clients,
        s.drain_rate,
        s.storm_backoff_base,
        s.storm_backoff_cap,
        s.storm_timeout,
        s.connect_concurrency,
    )
    .await;
    for (name, node) in [("A", &mut a), ("B", &mut b)] {
        if let Some(died) = node.exit_report() {
            eprintln!("[mqim-bench] drain: node {name} exited: {died}");
        }
    }
    a.stop().await;
    b.stop().await;
    r
}

/// How long mqim's drain takes to close `n` connections at `rate`/s by pacing alone: rounds of
/// rate/10 every 100 ms, the first at once (see `broker/src/drain.rs`).
fn pacing(n: usize, rate: u32) -> Duration {
    let per_round = (rate.max(1) as usize).div_ceil(10);
    let rounds = n.div_ceil(per_round).max(1);
    Duration::from_millis(100 * (rounds as u64 - 1))
}

/// Runs the scenario on mqim (Mosquitto has no drain).
pub async fn run(ctx: &Ctx) -> Section {
    let s = &ctx.settings;
    let mut sec = Section::new("drain");
    sec.param("clients", s.storm_clients);
    sec.param("drain rate", format!("{}/s", s.drain_rate));
    sec.param("protocol", "MQTT 5.0");
    sec.param(
        "give up after",
        format!("{} s", s.storm_timeout.as_secs_f64()),
    );
    eprintln!(
        "[mqim-bench] scenario drain: {} clients at {}/s",
        s.storm_clients, s.drain_rate
    );
    let outcome = match ctx.mqim.as_ref() {
        None => {
            sec.warnings
                .push("mqim was not selected (--brokers): nothing to drain".into());
            return sec;
        }
        Some(Err(why)) => Err(anyhow::anyhow!("mqim could not be started: {why}")),
        Some(Ok(spec)) => on_two_nodes(ctx, spec).await,
    };
    let o = match outcome {
        Ok(o) => o,
        Err(e) => {
            let msg = format!("mqim: scenario failed: {e:#}");
            match ctx.require_mqim {
                true => sec.problems.push(msg),
                false => sec.warnings.push(msg),
            }
            return sec;
        }
    };
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let count = |v: usize| Some(v as f64);
    sec.rows.extend([
        Row::num(
            "**time from the drain call until all are back on B (s)** (lower is better)",
            secs(o.all_back),
            None,
            2,
        ),
        Row::num(
            "time until A had closed them all (s)",
            secs(o.drained),
            None,
            2,
        ),
        Row::num(
            "the drain's pacing alone (s): rate/10 closed every 100 ms from the call",
            Some(pacing(o.n, o.rate).as_secs_f64()),
            None,
            2,
        ),
        Row::count("clients back on B", count(o.reconnected), None),
        Row::count(
            "told DISCONNECT 0x9C with B as Server Reference",
            count(o.redirected),
            None,
        ),
        Row::count("… another DISCONNECT", count(o.other_disconnect), None),
        Row::count("… closed without DISCONNECT", count(o.closed), None),
        Row::count("connect attempts on B", Some(o.attempts as f64), None),
        Row::count(
            "**attempts refused/failed (all causes)**",
            Some(o.failed as f64),
            None,
        ),
        Row::count("… TCP connection refused", Some(o.refused as f64), None),
        Row::count("… CONNACK/SUBACK refusal", Some(o.rejected as f64), None),
        Row::count("… handshake timeout (10 s)", Some(o.timeouts as f64), None),
        Row::count(
            "most attempts one client needed",
            Some(o.max_attempts as f64),
            None,
        ),
        Row::num(
            "initial connect of all clients to A (s)",
            Some(o.initial_connect.as_secs_f64()),
            None,
            2,
        ),
    ]);
    sec.notes.push(
        "Two mqim nodes on this machine (embedded store each); the clients are MQTT 5 and \
         follow the Server Reference of A's DISCONNECT at once. Mosquitto has no drain: no \
         column. The pacing row is what the drain rate alone allows."
            .into(),
    );
    if o.reconnected < o.n {
        sec.problems.push(format!(
            "mqim: only {} of {} clients were back on B after {:.0} s",
            o.reconnected,
            o.n,
            s.storm_timeout.as_secs_f64()
        ));
    }
    if o.redirected < o.n {
        sec.problems.push(format!(
            "mqim: {} of {} clients were not redirected to B by A's DISCONNECT",
            o.n - o.redirected,
            o.n
        ));
    }
    if let Some(e) = &o.first_failure {
        sec.notes.push(format!("mqim: first failed attempt: {e}"));
    }
    sec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_is_rounds_of_a_tenth_of_the_rate() {
        assert_eq!(pacing(100, 500), Duration::from_millis(100));
        assert_eq!(pacing(5000, 500), Duration::from_millis(9900));
        assert_eq!(pacing(1, 500), Duration::ZERO);
    }
}
