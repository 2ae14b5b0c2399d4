//! Durable appends per second of an embedded store on this machine.
//!
//! Usage: `cargo run --release -p mqim-im-plugin --example store_bench [-- [OPTIONS] [N [DIR]]]`
//! (N messages per run, default 20000; DIR the directory to create the stores under, default the
//! system temp dir: put it on the disk you want to measure).
//!
//! Options:
//! - `--backend lsm`: the store to measure (default: `$STORE_BACKEND`, else `lsm`): `lsm` is
//!   [`LsmStore`] (fjall). (The redb backend it was chosen over is gone; its numbers are in git
//!   history and the session 1 note.)
//! - `--sync all|data`: how the lsm backend syncs a commit (fsync or fdatasync; default `all`).
//! - `--rate R`: the paced run's offered load in appends/s (default 5000; 0 skips the run).
//!
//! Runs once with one sender at a time (every append waits for its own sync), once with 64
//! concurrent senders (group commit folds queued appends into one commit), and once open-loop at
//! a fixed rate (64 senders' appends issued on a schedule whatever the replies do, like the
//! broker under steady load); prints messages/s, the mean number of appends per commit and the
//! append latency (from the `append_message` call to its answer).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use mqim_im_plugin::store::lsm::{LsmStore, SyncMode};
use mqim_im_plugin::store::{MessageStore, NewMessage, SendOutcome};
use tokio::task::JoinSet;

/// Which store to measure.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Lsm(SyncMode),
}

/// An open store of either backend.
enum Opened {
    Lsm(Arc<LsmStore>),
}

/// What the writer thread reports: commits, requests carried, time spent committing (lsm only).
#[derive(Clone, Copy)]
struct Stats {
    batches: u64,
    requests: u64,
    commit_micros: Option<u64>,
}

impl Stats {
    /// What happened after `earlier`.
    fn since(self, earlier: Stats) -> Stats {
        Stats {
            batches: self.batches - earlier.batches,
            requests: self.requests - earlier.requests,
            commit_micros: self
                .commit_micros
                .zip(earlier.commit_micros)
                .map(|(now, then)| now - then),
        }
    }
}

impl Backend {
    fn open(self, dir: &std::path::Path) -> anyhow::Result<Opened> {
        Ok(match self {
            Backend::Lsm(sync) => Opened::Lsm(Arc::new(LsmStore::open_with(dir, sync)?)),
        })
    }
}

impl Opened {
    fn store(&self) -> Arc<dyn MessageStore> {
        match self {
            Opened::Lsm(s) => s.clone(),
        }
    }

    fn stats(&self) -> Stats {
        match self {
            Opened::Lsm(s) => {
                let w = s.writer_stats();
                Stats {
                    batches: w.batches,
                    requests: w.requests,
                    commit_micros: Some(w.commit_micros),
                }
            }
        }
    }
}

struct Args {
    n: u64,
    base: std::path::PathBuf,
    backend: Backend,
    rate: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut backend_name = std::env::var("STORE_BACKEND").unwrap_or_else(|_| "lsm".into());
    let mut sync = SyncMode::All;
    let mut rate = 5_000;
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--backend" => backend_name = args.next().context("--backend needs a value")?,
            "--sync" => {
                sync = match args.next().as_deref() {
                    Some("all") => SyncMode::All,
                    Some("data") => SyncMode::Data,
                    other => bail!("--sync all|data, not {other:?}"),
                }
            }
            "--rate" => {
                rate = args
                    .next()
                    .context("--rate needs a value")?
                    .parse()
                    .context("--rate must be a number")?
            }
            _ => positional.push(arg),
        }
    }
    let backend = match backend_name.as_str() {
        "lsm" => Backend::Lsm(sync),
        other => bail!("unknown backend {other:?} (lsm)"),
    };
    let mut positional = positional.into_iter();
    let n = match positional.next() {
        Some(s) => s.parse().context("N must be a number")?,
        None => 20_000,
    };
    let base = positional
        .next()
        .map_or_else(std::env::temp_dir, Into::into);
    Ok(Args {
        n,
        base,
        backend,
        rate,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args {
        n,
        base,
        backend,
        rate,
    } = parse_args()?;
    println!(
        "{n} durable appends per run, stores under {}",
        base.display()
    );
    println!("backend: {backend:?}");

    for concurrency in [1u64, 64] {
        let dir = tempfile::TempDir::new_in(&base)?;
        let opened = backend.open(dir.path())?;
        let store = opened.store();
        let baseline = warm_up(&opened).await?;
        let started = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|task| {
                let store = store.clone();
                // Spread the remainder so exactly n messages are sent.
                let count = n / concurrency + u64::from(task < n % concurrency);
                tokio::spawn(async move { sender(store, task, count).await })
            })
            .collect();
        let mut latencies = Vec::with_capacity(n as usize);
        for task in tasks {
            latencies.extend(task.await??);
        }
        let elapsed = started.elapsed();
        report(
            &format!("concurrency {concurrency:>3}"),
            n,
            elapsed,
            &opened.stats().since(baseline),
            latencies,
        );
    }

    if rate > 0 {
        let dir = tempfile::TempDir::new_in(&base)?;
        let opened = backend.open(dir.path())?;
        let baseline = warm_up(&opened).await?;
        let started = Instant::now();
        let latencies = paced(opened.store(), n, rate).await?;
        let elapsed = started.elapsed();
        report(
            &format!("paced {rate}/s"),
            n,
            elapsed,
            &opened.stats().since(baseline),
            latencies,
        );
    }
    Ok(())
}

/// One append by a user of its own before the clock starts, so that a run measures the store at
/// work rather than its start (on this shared 2-core machine a just-spawned writer thread can
/// wait tens of milliseconds for its first time slice). Returns the counters to subtract.
async fn warm_up(opened: &Opened) -> anyhow::Result<Stats> {
    let mut msg = message(0, 0);
    msg.from = "warm-up".into();
    opened.store().append_message(msg).await?;
    Ok(opened.stats())
}

fn report(label: &str, n: u64, elapsed: Duration, stats: &Stats, mut latencies: Vec<Duration>) {
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(i).copied().unwrap_or_default()
    };
    let commit = stats.commit_micros.map_or_else(String::new, |micros| {
        format!(
            "; mean commit {:.2}ms",
            micros as f64 / 1000.0 / stats.batches.max(1) as f64
        )
    });
    println!(
        "{label}: {n} msgs in {:.2}s = {:.0} msg/s; {} commits, mean batch {:.1}; \
         latency p50 {:.2}ms p99 {:.2}ms (p99.9 {:.2}ms max {:.2}ms){commit}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        stats.batches,
        stats.requests as f64 / stats.batches.max(1) as f64,
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(pct(0.999)),
        ms(pct(1.0)),
    );
}

/// Sends `count` messages one after another, as one client connection would.
async fn sender(
    store: Arc<dyn MessageStore>,
    task: u64,
    count: u64,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(count as usize);
    for i in 0..count {
        let msg = message(task, i);
        let started = Instant::now();
        match store.append_message(msg).await? {
            SendOutcome::Fresh(_) => latencies.push(started.elapsed()),
            SendOutcome::Duplicate(_) => bail!("unexpected duplicate"),
        }
    }
    Ok(latencies)
}

/// Offers `n` appends at `rate` per second, open-loop: each is issued at its scheduled time
/// whether or not earlier ones were answered (tokio's timer has 1 ms granularity, so they leave
/// in small bursts per millisecond, and a late tick is caught up at once). Senders and recipients
/// rotate as in the concurrency-64 run.
async fn paced(store: Arc<dyn MessageStore>, n: u64, rate: u64) -> anyhow::Result<Vec<Duration>> {
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut answers = JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
        let msg = message(i % 64, i / 64);
        let started = Instant::now();
        let answer = store.append_message(msg);
        answers.spawn(async move { answer.await.map(|outcome| (outcome, started.elapsed())) });
    }
    let mut latencies = Vec::with_capacity(n as usize);
    while let Some(joined) = answers.join_next().await {
        match joined?? {
            (SendOutcome::Fresh(_), latency) => latencies.push(latency),
            (SendOutcome::Duplicate(_), _) => bail!("unexpected duplicate"),
        }
    }
    Ok(latencies)
}

/// The `i`-th message of sender `task`.
fn message(task: u64, i: u64) -> NewMessage {
    let from = format!("sender{task}");
    NewMessage {
        to: format!("recipient{}", task % 8),
        client_msg_id: format!("{task}-{i}"),
        // Unique across tasks, increasing within one, like real msgids.
        msg_id: (task << 40) | i,
        ts: now_ms(),
        text: Some(format!(
            "message {i} from {from}: a short line of chat text, ~80 bytes"
        )),
        body: None,
        kind: Some("text".into()),
        from,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
