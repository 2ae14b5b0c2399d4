//! General-topic load against any MQTT broker: memory per idle connection that holds one
//! general subscription, then delivered messages per second through P publisher/subscriber
//! pairs at QoS 1 (rumqttc clients, 3.1.1). Used to compare mqim with its previous router and
//! with Mosquitto in one run (see the note on issue 10); the IM scenarios are in `bench/`.
//!
//! Usage: `cargo run --release -p mqim-broker --example general_load -- HOST:PORT PID \
//!         [IDLE_CONNS] [PAIRS] [SECONDS]` with PID the broker's process id (for its RSS).
//! The broker must let anonymous clients use `load/#` and `idle/#`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn options(id: String, host: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(300));
    o.set_inflight(64);
    o
}

/// Connects, subscribes to `filter` and waits for the SUBACK; the event loop keeps running.
async fn subscriber(
    o: MqttOptions,
    filter: String,
    received: Option<Arc<AtomicU64>>,
) -> AsyncClient {
    let (client, mut el) = AsyncClient::new(o, 256);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(t) = tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    if let Some(r) = &received {
                        r.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
    client
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (host, port) = args[1].rsplit_once(':').expect("HOST:PORT");
    let port: u16 = port.parse().unwrap();
    let pid: u32 = args[2].parse().unwrap();
    let idle: usize = args.get(3).map_or(2000, |a| a.parse().unwrap());
    let pairs: usize = args.get(4).map_or(8, |a| a.parse().unwrap());
    let secs: u64 = args.get(5).map_or(5, |a| a.parse().unwrap());

    // Idle connections, one general subscription each.
    let before = rss_kib(pid);
    let mut keep = Vec::new();
    for chunk in (0..idle).collect::<Vec<_>>().chunks(50) {
        let batch = chunk.iter().map(|i| {
            subscriber(
                options(format!("idle-{i}"), host, port),
                format!("idle/{i}"),
                None,
            )
        });
        keep.extend(futures::future::join_all(batch).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let per_conn = (after.saturating_sub(before)) as f64 * 1024.0 / idle.max(1) as f64;

    // Throughput: P pairs, QoS 1, each publisher as fast as its in-flight window allows.
    let received = Arc::new(AtomicU64::new(0));
    for i in 0..pairs {
        keep.push(
            subscriber(
                options(format!("sub-{i}"), host, port),
                format!("load/{i}"),
                Some(received.clone()),
            )
            .await,
        );
    }
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..pairs {
        let (client, mut el) = AsyncClient::new(options(format!("pub-{i}"), host, port), 256);
        tokio::spawn(async move { while el.poll().await.is_ok() {} });
        tasks.push(tokio::spawn(async move {
            let payload = vec![b'x'; 64];
            while Instant::now() < stop {
                if client
                    .publish(
                        format!("load/{i}"),
                        QoS::AtLeastOnce,
                        false,
                        payload.clone(),
                    )
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }));
    }
    let start = received.load(Ordering::Relaxed);
    let t0 = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed) - start;
    println!(
        "idle_conns={idle} rss_before_kib={before} rss_after_kib={after} bytes_per_idle_conn={per_conn:.0} \
         pairs={pairs} secs={elapsed:.1} delivered={got} msgs_per_sec={:.0} rss_end_kib={}",
        got as f64 / elapsed,
        rss_kib(pid)
    );
    std::process::exit(0);
}
