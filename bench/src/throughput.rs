//! Scenario 2: throughput.
//!
//! P sender/receiver pairs send 1:1 messages (256 bytes of text) as fast as a window of W
//! un-acknowledged sends per sender allows, for a fixed duration. A send is acknowledged by mqim's
//! `sent` reply (or an error reply) and by Mosquitto's PUBACK. This file reports the messages
//! delivered to receivers per second of load (counted at the moment the load stops), then waits for
//! the outstanding ones and checks that everything accepted was delivered exactly once. mqim runs
//! once per store shape (`--stores`), Mosquitto once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use bytes::BytesMut;
use hdrhistogram::Histogram;

use crate::brokers::{Broker, Kind};
use crate::report::{self, Row, Section};
use crate::workload::{self, SendHalf, Totals};
use crate::{BrokerRun, Ctx};

pub struct ThroughputOutcome {
    pub duration: Duration,
    /// Unique deliveries when the load stopped.
    pub delivered_in_window: u64,
    /// Acknowledged sends when the load stopped.
    pub acked_in_window: u64,
    /// Everything, after draining.
    pub totals: Totals,
    pub drain_time: Duration,
    pub histogram: Histogram<u64>,
    pub first_error: Option<String>,
}

async fn send_loop(mut s: SendHalf, end: tokio::time::Instant, window: usize) {
    let mut seq = 0u64;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let stats = s.stats.clone();
        let permit = match tokio::time::timeout_at(end, stats.window.acquire()).await {
            Ok(Ok(p)) => p,
            _ => break,
        };
        permit.forget();
        let mut n = 1;
        while n < window {
            match stats.window.try_acquire() {
                Ok(p) => {
                    p.forget();
                    n += 1;
                }
                Err(_) => break,
            }
        }
        let now = workload::now_us();
        for _ in 0..n {
            s.encode_send(&mut buf, seq, now);
            seq += 1;
        }
        stats.published.fetch_add(n as u64, Ordering::Relaxed);
        if !s.write(buf.split().freeze()) || tokio::time::Instant::now() >= end {
            break;
        }
    }
}

/// Runs the load on `broker`.
pub async fn run_one(
    broker: &mut Broker,
    pairs_n: usize,
    window: usize,
    duration: Duration,
    drain: Duration,
) -> Result<ThroughputOutcome> {
    let mut pairs = workload::setup(broker, pairs_n, window).await?;
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let end = start + duration;
    let mut senders = Vec::new();
    for p in pairs.iter_mut() {
        let s = p.take_sender();
        senders.push(tokio::spawn(async move {
            tokio::time::sleep_until(start).await;
            send_loop(s, end, window).await;
        }));
    }
    tokio::time::sleep_until(end).await;
    let at_end = workload::totals(&pairs);
    for s in senders {
        let _ = s.await;
    }
    let drain_time = workload::drain(&pairs, drain).await;
    let totals = workload::totals(&pairs);
    let histogram = workload::merged_histogram(&pairs);
    let first_error = workload::first_error(&pairs);
    for p in pairs.iter_mut() {
        p.close();
    }
    Ok(ThroughputOutcome {
        duration,
        delivered_in_window: at_end.delivered,
        acked_in_window: at_end.acked,
        totals,
        drain_time,
        histogram,
        first_error,
    })
}

/// Checks that what was sent was delivered; adds problems/notes to `sec`.
pub fn check_delivery(
    kind: &str,
    t: &Totals,
    first_error: &Option<String>,
    drain: Duration,
    sec: &mut Section,
) {
    if t.delivered == 0 {
        sec.problems.push(format!(
            "{kind}: nothing was delivered ({} sends published)",
            t.published
        ));
    }
    if t.errors > 0 {
        sec.problems.push(format!(
            "{kind}: {} sends were answered with an error; first: {}",
            t.errors,
            first_error.clone().unwrap_or_default()
        ));
    }
    if t.acked + t.errors < t.published {
        sec.problems.push(format!(
            "{kind}: {} of {} sends were never acknowledged (waited {:.1} s after the load)",
            t.published - t.acked - t.errors,
            t.published,
            drain.as_secs_f64()
        ));
    }
    if t.delivered < t.acked {
        sec.problems.push(format!(
            "{kind}: {} of {} accepted sends were never delivered (waited {:.1} s after the load)",
            t.acked - t.delivered,
            t.acked,
            drain.as_secs_f64()
        ));
    }
    if t.connections_lost > 0 {
        sec.problems.push(format!(
            "{kind}: {} pairs lost a connection during the run",
            t.connections_lost
        ));
    }
    if t.unparsable > 0 {
        sec.problems.push(format!(
            "{kind}: receivers got {} payloads without a clientMsgId",
            t.unparsable
        ));
    }
    if t.duplicates > 0 || t.reordered > 0 || t.seq_regressions > 0 {
        sec.notes.push(format!(
            "{kind}: receivers saw {} duplicates and {} deliveries out of send order (a message \
             arriving after a later one of the same sender); {} events arrived with a lower stream \
             seq than the event before them",
            t.duplicates, t.reordered, t.seq_regressions
        ));
    }
}

pub fn pct_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    if h.is_empty() {
        None
    } else {
        Some(h.value_at_quantile(q) as f64 / 1000.0)
    }
}

/// The table rows of one mqim run `a` against the Mosquitto run `b`.
fn rows(a: Option<&ThroughputOutcome>, b: Option<&ThroughputOutcome>) -> Vec<Row> {
    type G<'a> = &'a dyn Fn(&ThroughputOutcome) -> Option<f64>;
    let f = |o: Option<&ThroughputOutcome>, g: G| o.and_then(g);
    let mut rows = Vec::new();
    let rate =
        |o: &ThroughputOutcome| Some(o.delivered_in_window as f64 / o.duration.as_secs_f64());
    rows.push(Row::num(
        "**delivered messages/s** (higher is better)",
        f(a, &rate),
        f(b, &rate),
        0,
    ));
    let acked_rate =
        |o: &ThroughputOutcome| Some(o.acked_in_window as f64 / o.duration.as_secs_f64());
    rows.push(Row::num(
        "acknowledged sends/s",
        f(a, &acked_rate),
        f(b, &acked_rate),
        0,
    ));
    rows.push(Row::count(
        "sends published (total)",
        f(a, &|o| Some(o.totals.published as f64)),
        f(b, &|o| Some(o.totals.published as f64)),
    ));
    rows.push(Row::count(
        "delivered after drain (unique)",
        f(a, &|o| Some(o.totals.delivered as f64)),
        f(b, &|o| Some(o.totals.delivered as f64)),
    ));
    rows.push(Row::count(
        "error replies",
        f(a, &|o| Some(o.totals.errors as f64)),
        f(b, &|o| Some(o.totals.errors as f64)),
    ));
    rows.push(Row::plain(
        "drain time after the load (s)",
        f(a, &|o| Some(o.drain_time.as_secs_f64())),
        f(b, &|o| Some(o.drain_time.as_secs_f64())),
        2,
    ));
    for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
        rows.push(Row::num(
            &format!("send→delivery latency under full load, {label} (ms)"),
            f(a, &|o| pct_ms(&o.histogram, q)),
            f(b, &|o| pct_ms(&o.histogram, q)),
            2,
        ));
    }
    rows
}

/// Runs the scenario on mqim (once per store shape) and Mosquitto.
pub async fn run(ctx: &Ctx) -> Section {
    let s = &ctx.settings;
    let (p, w, d, dr) = (s.pairs, s.window, s.duration, s.drain);
    let mut sec = Section::new("throughput");
    sec.param("pairs", p);
    sec.param("window (un-acked sends per sender)", w);
    sec.param("duration", format!("{} s", d.as_secs_f64()));
    sec.param("text", "256 bytes");
    eprintln!("[mqim-bench] scenario throughput: {p} pairs, window {w}, {d:?}");
    let (mqim, mosq) = ctx
        .on_each_store(async |b: &mut Broker| run_one(b, p, w, d, dr).await)
        .await;
    let per_store: Vec<(String, Vec<Row>)> = mqim
        .iter()
        .map(|(store, r)| (store.to_string(), rows(r.done(), mosq.done())))
        .collect();
    report::add_store_rows(&mut sec, &per_store);
    sec.notes.push(
        "Closed loop: each sender keeps at most `window` sends un-acknowledged (mqim: until the \
         `sent` reply; Mosquitto: until the PUBACK). Delivered/s counts unique receiver deliveries \
         up to the moment the load stops; deliveries still in flight are then drained and checked."
            .into(),
    );
    let runs = mqim
        .iter()
        .map(|(store, r)| (Kind::Mqim, format!("mqim ({store})"), r))
        .chain([(Kind::Mosquitto, Kind::Mosquitto.to_string(), &mosq)]);
    for (kind, who, r) in runs {
        r.note_failure_as(kind, &who, ctx.require_mqim, &mut sec);
        if let BrokerRun::Done(o) = r {
            check_delivery(&who, &o.totals, &o.first_error, dr, &mut sec);
            if kind == Kind::Mqim && o.totals.own_events > 0 {
                sec.notes.push(format!(
                    "{who} also sent {} events to the senders' own devices (the sender-side copy).",
                    o.totals.own_events
                ));
            }
        }
    }
    sec
}
