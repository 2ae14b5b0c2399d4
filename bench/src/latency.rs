//! Scenario 3: latency under an open-loop offered load.
//!
//! A pacer thread (a plain OS thread with `std::thread::sleep`, which wakes up within tens of
//! microseconds, unlike tokio's 1 ms timer wheel) schedules message m at `start + m / rate` and
//! hands it, round-robin over the P pairs, to the sender's writer task; it never waits for
//! acknowledgements. The scheduled time travels in the clientMsgId and the receiver records
//! `receipt − scheduled` in an HdrHistogram, so a stalled broker shows up as latency rather than as
//! a lower send rate (no coordinated omission). This file reports p50/p99/p99.9/max for mqim (once
//! per store shape, `--stores`) and Mosquitto, and how many messages were not delivered within the
//! drain period.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::BytesMut;
use hdrhistogram::Histogram;

use crate::brokers::{Broker, Kind};
use crate::report::{self, Row, Section};
use crate::throughput::{check_delivery, pct_ms};
use crate::workload::{self, SendHalf, Totals};
use crate::{BrokerRun, Ctx};

pub struct LatencyOutcome {
    pub offered: u64,
    pub duration: Duration,
    pub totals: Totals,
    pub histogram: Histogram<u64>,
    pub max_pacer_lag: Duration,
    pub first_error: Option<String>,
}

/// Sends `total` messages at `rate`/s starting at `start`; returns the worst lateness of a send.
fn pace(mut senders: Vec<SendHalf>, start: Instant, rate: f64, total: u64) -> Duration {
    let p = senders.len() as u64;
    let period_ns = 1e9 / rate;
    let sched = |m: u64| start + Duration::from_nanos((m as f64 * period_ns) as u64);
    let hard_stop = sched(total) + Duration::from_secs(30);
    let mut seqs = vec![0u64; senders.len()];
    let mut bufs: Vec<BytesMut> = (0..senders.len()).map(|_| BytesMut::new()).collect();
    let mut m = 0u64;
    let mut max_lag = Duration::ZERO;
    while m < total {
        let now = Instant::now();
        let due = sched(m);
        if due > now {
            std::thread::sleep(due - now);
            continue;
        }
        if now > hard_stop {
            break;
        }
        max_lag = max_lag.max(now - due);
        while m < total && sched(m) <= now {
            let i = (m % p) as usize;
            senders[i].encode_send(&mut bufs[i], seqs[i], workload::instant_us(sched(m)));
            seqs[i] += 1;
            senders[i].stats.published.fetch_add(1, Ordering::Relaxed);
            m += 1;
        }
        for (s, buf) in senders.iter_mut().zip(bufs.iter_mut()) {
            if !buf.is_empty() {
                s.write(buf.split().freeze());
            }
        }
    }
    max_lag
}

/// Runs the open-loop load on `broker`.
pub async fn run_one(
    broker: &mut Broker,
    pairs_n: usize,
    rate: f64,
    duration: Duration,
    drain: Duration,
) -> Result<LatencyOutcome> {
    let mut pairs = workload::setup(broker, pairs_n, 1).await?;
    let senders: Vec<SendHalf> = pairs.iter_mut().map(|p| p.take_sender()).collect();
    let offered = (rate * duration.as_secs_f64()).round() as u64;
    let start = Instant::now() + Duration::from_millis(100);
    let pacer = tokio::task::spawn_blocking(move || pace(senders, start, rate, offered));
    let max_pacer_lag = pacer.await.context("pacer thread")?;
    workload::drain(&pairs, drain).await;
    let totals = workload::totals(&pairs);
    let histogram = workload::merged_histogram(&pairs);
    let first_error = workload::first_error(&pairs);
    for p in pairs.iter_mut() {
        p.close();
    }
    Ok(LatencyOutcome {
        offered,
        duration,
        totals,
        histogram,
        max_pacer_lag,
        first_error,
    })
}

/// The table rows of one mqim run `a` against the Mosquitto run `b`.
fn rows(a: Option<&LatencyOutcome>, b: Option<&LatencyOutcome>) -> Vec<Row> {
    type G<'a> = &'a dyn Fn(&LatencyOutcome) -> Option<f64>;
    let f = |o: Option<&LatencyOutcome>, g: G| o.and_then(g);
    let mut rows = Vec::new();
    for (label, q) in [
        ("**p50**", 0.5),
        ("p90", 0.9),
        ("**p99**", 0.99),
        ("**p99.9**", 0.999),
    ] {
        rows.push(Row::num(
            &format!("{label} latency (ms) (lower is better)"),
            f(a, &|o| pct_ms(&o.histogram, q)),
            f(b, &|o| pct_ms(&o.histogram, q)),
            2,
        ));
    }
    let max =
        |o: &LatencyOutcome| (!o.histogram.is_empty()).then(|| o.histogram.max() as f64 / 1000.0);
    rows.push(Row::num("**max** latency (ms)", f(a, &max), f(b, &max), 2));
    rows.push(Row::count(
        "messages offered",
        f(a, &|o| Some(o.offered as f64)),
        f(b, &|o| Some(o.offered as f64)),
    ));
    rows.push(Row::count(
        "delivered (unique)",
        f(a, &|o| Some(o.totals.delivered as f64)),
        f(b, &|o| Some(o.totals.delivered as f64)),
    ));
    let missing =
        |o: &LatencyOutcome| Some(o.totals.published.saturating_sub(o.totals.delivered) as f64);
    rows.push(Row::count(
        "not delivered within the drain period",
        f(a, &missing),
        f(b, &missing),
    ));
    let rate = |o: &LatencyOutcome| Some(o.totals.delivered as f64 / o.duration.as_secs_f64());
    rows.push(Row::num(
        "achieved delivery rate (msg/s)",
        f(a, &rate),
        f(b, &rate),
        0,
    ));
    rows.push(Row::plain(
        "worst pacer lateness (ms)",
        f(a, &|o| Some(o.max_pacer_lag.as_secs_f64() * 1000.0)),
        f(b, &|o| Some(o.max_pacer_lag.as_secs_f64() * 1000.0)),
        2,
    ));
    rows
}

/// Runs the scenario on mqim (once per store shape) and Mosquitto.
pub async fn run(ctx: &Ctx) -> Section {
    let s = &ctx.settings;
    let (p, rate, d, dr) = (s.pairs, s.rate, s.duration, s.drain);
    let mut sec = Section::new("latency");
    sec.param("pairs", p);
    sec.param("offered load", format!("{rate} msg/s in total"));
    sec.param("duration", format!("{} s", d.as_secs_f64()));
    sec.param("text", "256 bytes");
    eprintln!("[mqim-bench] scenario latency: {p} pairs, {rate} msg/s, {d:?}");
    let (mqim, mosq) = ctx
        .on_each_store(async |b: &mut Broker| run_one(b, p, rate, d, dr).await)
        .await;
    let per_store: Vec<(String, Vec<Row>)> = mqim
        .iter()
        .map(|(store, r)| (store.to_string(), rows(r.done(), mosq.done())))
        .collect();
    report::add_store_rows(&mut sec, &per_store);
    sec.notes.push(
        "Latency runs from the *scheduled* send time (open loop, no coordinated omission) to the \
         receiver's read of the event (mqim) or PUBLISH (Mosquitto); it includes the load \
         generator's own scheduling delay (the worst pacer lateness row). Messages not delivered \
         at all are counted above, not in the percentiles."
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
        }
    }
    sec
}
