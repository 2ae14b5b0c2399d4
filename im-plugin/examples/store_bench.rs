//! Durable appends per second of the embedded store on this machine.
//!
//! Usage: `cargo run --release -p mqim-im-plugin --example store_bench [-- N [DIR]]`
//! (N messages per run, default 20000; DIR the directory to create the stores under, default the
//! system temp dir: put it on the disk you want to measure).
//!
//! Runs once with one sender at a time (every append waits for its own fsync) and once with 64
//! concurrent senders (group commit folds queued appends into one transaction), and prints
//! messages/s, the mean number of appends per commit and the append latency.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use mqim_im_plugin::store::embedded::EmbeddedStore;
use mqim_im_plugin::store::{MessageStore, NewMessage, SendOutcome};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = match args.next() {
        Some(s) => s.parse().context("N must be a number")?,
        None => 20_000,
    };
    let base = args.next().map_or_else(std::env::temp_dir, Into::into);
    println!(
        "{n} durable appends per run, stores under {}",
        base.display()
    );

    for concurrency in [1u64, 64] {
        let dir = tempfile::TempDir::new_in(&base)?;
        let store = Arc::new(EmbeddedStore::open(dir.path())?);
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
        let stats = store.writer_stats();
        latencies.sort_unstable();
        let pct = |p: f64| {
            let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
            latencies.get(i).copied().unwrap_or_default()
        };
        println!(
            "concurrency {concurrency:>3}: {n} msgs in {:.2}s = {:.0} msg/s; {} commits, mean batch {:.1}; \
             latency p50 {:.2}ms p99 {:.2}ms",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            stats.batches,
            stats.requests as f64 / stats.batches.max(1) as f64,
            ms(pct(0.5)),
            ms(pct(0.99)),
        );
    }
    Ok(())
}

/// Sends `count` messages one after another, as one client connection would.
async fn sender(store: Arc<EmbeddedStore>, task: u64, count: u64) -> anyhow::Result<Vec<Duration>> {
    let from = format!("sender{task}");
    let to = format!("recipient{}", task % 8);
    let mut latencies = Vec::with_capacity(count as usize);
    for i in 0..count {
        let msg = NewMessage {
            from: from.clone(),
            to: to.clone(),
            client_msg_id: format!("{task}-{i}"),
            // Unique across tasks, increasing within one, like real msgids.
            msg_id: (task << 40) | i,
            ts: now_ms(),
            text: Some(format!(
                "message {i} from {from}: a short line of chat text, ~80 bytes"
            )),
            body: None,
            kind: Some("text".into()),
        };
        let started = Instant::now();
        match store.append_message(msg).await? {
            SendOutcome::Fresh(_) => latencies.push(started.elapsed()),
            SendOutcome::Duplicate(_) => anyhow::bail!("unexpected duplicate"),
        }
    }
    Ok(latencies)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
