//! Scenario 5: group fan-out.
//!
//! One sender sends at a fixed rate (default 10 msg/s) into a group whose members are all
//! online, each on a connection of its own: a small group (default 500 members; write diffusion,
//! every message is a commit into each member's stream) and a large group (default 10,000;
//! read diffusion, stored once and fanned out live). Measured per message: the time from the
//! scheduled send to the *last* member's delivery (p50/p99/max), the send -> `sent` reply time,
//! and whether every member got it. Mosquitto's yardstick is the same payload published at QoS 1
//! to one topic the same number of clients subscribe to. Then a large group of 100,000 members
//! (none online) is created and sent to: creation time and send -> `sent` time, mqim only.
//! mqim runs once per store shape in `--stores` (a group entry on `redis+embedded` is one ALLOC
//! for every copy, the log's batch, then the index script), against one Mosquitto run.
//! The small group's write cost is reported per member: bytes the data dir grew per message per
//! member, and the send -> `sent` p50 divided by the member count.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::brokers::{down_topic, up_topic, Broker, Kind, Store};
use crate::client::{self, ConnectOptions, Connection};
use crate::report::{Row, Section};
use crate::throughput::pct_ms;
use crate::workload::{self, new_histogram};
use crate::Ctx;

/// Mosquitto's group: one topic every member subscribes to.
const MOSQUITTO_TOPIC: &str = "bench/group";
/// Members per groupCreate / groupAdd request (the server's per-request limit).
const CHUNK: usize = 500;

/// What one fan-out run measured.
pub struct FanOutcome {
    pub members: usize,
    pub sent: u64,
    /// Messages every member received.
    pub complete: u64,
    /// Scheduled send -> last member's delivery, microseconds.
    pub last_delivery: Histogram<u64>,
    /// Scheduled send -> `sent` reply (mqim) or PUBACK (Mosquitto), microseconds.
    pub ack: Histogram<u64>,
    pub connect_secs: f64,
    /// Group creation (mqim), seconds.
    pub create_secs: Option<f64>,
    /// Data dir growth per message per member (mqim), bytes.
    pub bytes_per_member_msg: Option<f64>,
}

/// Per message: deliveries counted and the latest arrival (µs since the harness's base).
struct Arrivals {
    count: Vec<AtomicU32>,
    last: Vec<AtomicU64>,
}

/// The number after `"clientMsgId":"f` in a payload.
fn message_index(payload: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"clientMsgId\":\"f";
    let at = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut n = 0usize;
    let mut any = false;
    for d in digits {
        n = n * 10 + usize::from(d - b'0');
        any = true;
    }
    any.then_some(n)
}

/// Reads a member's connection: acknowledges QoS 1 deliveries and records arrivals.
fn spawn_member(conn: Connection, arrivals: Arc<Arrivals>) {
    let Connection { stream, mut reader } = conn;
    let (mut rd, wr) = stream.into_split();
    let tx = client::spawn_writer(wr);
    tokio::spawn(async move {
        while let Ok(Some(frame)) = reader.next(&mut rd).await {
            let Some((_, pkid, payload)) = frame.publish() else {
                continue;
            };
            if let Some(pkid) = pkid {
                let mut ack = BytesMut::new();
                client::encode_puback(&mut ack, pkid);
                let _ = tx.send(ack.freeze());
            }
            if let Some(i) = message_index(&payload) {
                if let (Some(c), Some(l)) = (arrivals.count.get(i), arrivals.last.get(i)) {
                    c.fetch_add(1, Ordering::Relaxed);
                    l.fetch_max(workload::now_us(), Ordering::Relaxed);
                }
            }
        }
    });
}

/// Connects `n` members (`<prefix><i>`), each subscribed to its downlink (mqim) or the group
/// topic (Mosquitto), `concurrency` handshakes at a time.
async fn connect_members(
    broker: &Broker,
    prefix: &str,
    n: usize,
    concurrency: usize,
    arrivals: &Arc<Arrivals>,
    qos: u8,
) -> Result<()> {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let user = format!("{prefix}{i}");
        let (username, password) = broker.spec.auth.credentials(&user);
        let device = format!("{user}-d");
        let topic = match broker.spec.kind {
            Kind::Mqim => down_topic(&user, &device),
            Kind::Mosquitto => MOSQUITTO_TOPIC.to_string(),
        };
        let addr = broker.addr();
        let arrivals = arrivals.clone();
        tasks.push(tokio::spawn(async move {
            let opts = ConnectOptions {
                client_id: &device,
                username: username.as_deref(),
                password: password.as_deref(),
                keep_alive_secs: 300,
            };
            let timeout = Duration::from_secs(30);
            let r = client::connect_and_subscribe_at(addr, None, &opts, &topic, qos, timeout).await;
            drop(permit);
            r.map(|c| spawn_member(c, arrivals))
                .map_err(|e| anyhow::anyhow!("member {user}: {e}"))
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The sender: its connection's writer and the replies (mqim) or PUBACKs (Mosquitto) it reads.
struct Sender {
    tx: mpsc::UnboundedSender<Bytes>,
    /// Replies by request id (mqim).
    replies: mpsc::UnboundedReceiver<Value>,
    /// Ack time per message index (µs).
    acks: Arc<Vec<AtomicU64>>,
    topic: String,
    pkid: u16,
}

impl Sender {
    async fn connect(broker: &Broker, user: &str, messages: usize) -> Result<Sender> {
        let (username, password) = broker.spec.auth.credentials(user);
        let device = format!("{user}-d");
        let opts = ConnectOptions {
            client_id: &device,
            username: username.as_deref(),
            password: password.as_deref(),
            keep_alive_secs: 300,
        };
        let down = match broker.spec.kind {
            Kind::Mqim => down_topic(user, &device),
            Kind::Mosquitto => "bench/sender".to_string(),
        };
        let conn = client::connect_and_subscribe(
            broker.addr(),
            None,
            &opts,
            &down,
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| anyhow::anyhow!("sender: {e}"))?;
        let Connection { stream, mut reader } = conn;
        let (mut rd, wr) = stream.into_split();
        let tx = client::spawn_writer(wr);
        let (reply_tx, replies) = mpsc::unbounded_channel();
        let acks: Arc<Vec<AtomicU64>> =
            Arc::new((0..messages).map(|_| AtomicU64::new(0)).collect());
        let (acks2, tx2) = (acks.clone(), tx.clone());
        let count_pubacks = broker.spec.kind == Kind::Mosquitto;
        tokio::spawn(async move {
            while let Ok(Some(frame)) = reader.next(&mut rd).await {
                if frame.kind() == 4 {
                    // PUBACK: Mosquitto's acknowledgement (the packet id is the message index
                    // + 1); mqim's is the `sent` reply.
                    if count_pubacks && frame.body.len() >= 2 {
                        let id = usize::from(u16::from_be_bytes([frame.body[0], frame.body[1]]));
                        if let Some(a) = id.checked_sub(1).and_then(|i| acks2.get(i)) {
                            let _ = a.compare_exchange(
                                0,
                                workload::now_us(),
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                        }
                    }
                    continue;
                }
                let Some((_, pkid, payload)) = frame.publish() else {
                    continue;
                };
                if let Some(pkid) = pkid {
                    let mut ack = BytesMut::new();
                    client::encode_puback(&mut ack, pkid);
                    let _ = tx2.send(ack.freeze());
                }
                let Ok(v) = serde_json::from_slice::<Value>(&payload) else {
                    continue;
                };
                let Some(reply) = v.get("reply") else {
                    continue;
                };
                let id = reply["id"].as_str().unwrap_or_default();
                if let Some(i) = id.strip_prefix('f').and_then(|s| s.parse::<usize>().ok()) {
                    if reply.get("sent").is_some() {
                        if let Some(a) = acks2.get(i) {
                            a.store(workload::now_us(), Ordering::Relaxed);
                        }
                    }
                    continue;
                }
                let _ = reply_tx.send(reply.clone());
            }
        });
        let topic = match broker.spec.kind {
            Kind::Mqim => up_topic(user, &device),
            Kind::Mosquitto => MOSQUITTO_TOPIC.to_string(),
        };
        Ok(Sender {
            tx,
            replies,
            acks,
            topic,
            pkid: 1,
        })
    }

    fn publish(&mut self, pkid: u16, payload: &[u8]) {
        let mut buf = BytesMut::new();
        client::encode_publish_qos1(&mut buf, &self.topic, pkid, payload);
        let _ = self.tx.send(buf.freeze());
    }

    /// A request whose reply we wait for (mqim).
    async fn call(&mut self, op: Value) -> Result<Value> {
        self.pkid = client::next_pkid(self.pkid.max(1000));
        let id = format!("req{}", self.pkid);
        let mut req = op;
        req["id"] = json!(id);
        let body = serde_json::to_vec(&req)?;
        self.publish(self.pkid, &body);
        loop {
            let r = tokio::time::timeout(Duration::from_secs(60), self.replies.recv())
                .await
                .context("no reply within 60 s")?
                .context("sender connection closed")?;
            if r["id"] == json!(id) {
                if r.get("error").is_some() {
                    bail!("request failed: {r}");
                }
                return Ok(r);
            }
        }
    }
}

/// Creates a group of `owner` plus `members` (`<prefix><i>`); returns its id and the time taken.
async fn create_group(
    sender: &mut Sender,
    prefix: &str,
    members: usize,
    large: bool,
) -> Result<(String, f64)> {
    let started = Instant::now();
    let names: Vec<String> = (0..members).map(|i| format!("{prefix}{i}")).collect();
    let mut chunks = names.chunks(CHUNK - 1);
    let first = chunks.next().unwrap_or(&[]);
    let r = sender
        .call(json!({"groupCreate": {"name": "bench", "members": first, "large": large}}))
        .await?;
    let id = r["groupCreate"]["group"]["id"]
        .as_str()
        .context("groupCreate without an id")?
        .to_string();
    for chunk in chunks {
        sender
            .call(json!({"groupAdd": {"group": id, "members": chunk}}))
            .await?;
    }
    Ok((id, started.elapsed().as_secs_f64()))
}

/// Bytes the process has caused to be written to storage (`write_bytes` of /proc/<pid>/io):
/// every commit is fsynced, so this is what the store wrote.
fn storage_bytes(pid: Option<u32>) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{}/io", pid?)).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// One run: `members` online members of a group (`large` or not), `messages` sends at `rate`.
pub async fn run_one(
    broker: &mut Broker,
    members: usize,
    large: bool,
    messages: usize,
    rate: f64,
    concurrency: usize,
) -> Result<FanOutcome> {
    let prefix = if large { "lm" } else { "sm" };
    let arrivals = Arc::new(Arrivals {
        count: (0..messages).map(|_| AtomicU32::new(0)).collect(),
        last: (0..messages).map(|_| AtomicU64::new(0)).collect(),
    });
    let started = Instant::now();
    // mqim members subscribe to their downlink at QoS 1, as an app does; mqim sends a large
    // group's live copies at QoS 0 (a missed one is paged in by groupSync). Mosquitto's large
    // group members subscribe at QoS 0 for the same delivery: no acknowledgement per copy.
    let qos = match (broker.spec.kind, large) {
        (Kind::Mosquitto, true) => 0,
        _ => 1,
    };
    connect_members(broker, prefix, members, concurrency, &arrivals, qos).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    let mut sender = Sender::connect(broker, "fan-owner", messages).await?;
    let (group, create_secs) = match broker.spec.kind {
        Kind::Mqim => {
            let (id, secs) = create_group(&mut sender, prefix, members, large).await?;
            (Some(id), Some(secs))
        }
        Kind::Mosquitto => (None, None),
    };
    let bytes_before = storage_bytes(broker.pid());

    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(100);
    let mut scheduled = Vec::with_capacity(messages);
    for i in 0..messages {
        let due = start + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let sched = workload::instant_us(due);
        scheduled.push(sched);
        let payload = match &group {
            Some(g) => format!(
                r#"{{"id":"f{i}","send":{{"to":"{g}","clientMsgId":"f{i}","text":"{}"}}}}"#,
                workload::text()
            ),
            None => format!(
                r#"{{"event":{{"message":{{"clientMsgId":"f{i}","text":"{}"}}}}}}"#,
                workload::text()
            ),
        };
        // Packet ids 1..=messages identify Mosquitto's PUBACKs; requests use ids from 1000 up.
        sender.publish(u16::try_from(i + 1).unwrap_or(u16::MAX), payload.as_bytes());
    }
    // Wait until every message reached every member (or 15 s pass).
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let done = arrivals
            .count
            .iter()
            .all(|c| c.load(Ordering::Relaxed) as usize >= members);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut last_delivery = new_histogram();
    let mut ack = new_histogram();
    let mut complete = 0;
    for (i, sched) in scheduled.iter().enumerate() {
        if arrivals.count[i].load(Ordering::Relaxed) as usize >= members {
            complete += 1;
            let last = arrivals.last[i].load(Ordering::Relaxed);
            let _ = last_delivery.record(last.saturating_sub(*sched).max(1));
        }
        let a = sender.acks[i].load(Ordering::Relaxed);
        if a > 0 {
            let _ = ack.record(a.saturating_sub(*sched).max(1));
        }
    }
    let bytes_per_member_msg = match (&group, bytes_before, storage_bytes(broker.pid())) {
        (Some(_), Some(before), Some(after)) => {
            Some(after.saturating_sub(before) as f64 / (messages.max(1) * (members + 1)) as f64)
        }
        _ => None,
    };
    Ok(FanOutcome {
        members,
        sent: messages as u64,
        complete,
        last_delivery,
        ack,
        connect_secs,
        create_secs,
        bytes_per_member_msg: bytes_per_member_msg.filter(|_| !large),
    })
}

/// mqim only: a large group of `members` (none online), created and sent to.
pub async fn run_huge(broker: &mut Broker, members: usize, messages: usize) -> Result<FanOutcome> {
    let mut sender = Sender::connect(broker, "fan-owner", messages).await?;
    let (group, create_secs) = create_group(&mut sender, "hm", members, true).await?;
    let mut ack = new_histogram();
    let mut sent = 0;
    for i in 0..messages {
        let t0 = workload::now_us();
        let payload = format!(
            r#"{{"id":"f{i}","send":{{"to":"{group}","clientMsgId":"f{i}","text":"{}"}}}}"#,
            workload::text()
        );
        sender.publish(u16::try_from(i + 1).unwrap_or(u16::MAX), payload.as_bytes());
        let deadline = Instant::now() + Duration::from_secs(10);
        while sender.acks[i].load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let a = sender.acks[i].load(Ordering::Relaxed);
        if a > 0 {
            sent += 1;
            let _ = ack.record(a.saturating_sub(t0).max(1));
        }
    }
    Ok(FanOutcome {
        members,
        sent,
        complete: 0,
        last_delivery: new_histogram(),
        ack,
        connect_secs: 0.0,
        create_secs: Some(create_secs),
        bytes_per_member_msg: None,
    })
}

fn ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    pct_ms(h, q)
}

fn max_ms(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.max() as f64 / 1000.0)
}

fn rows_for(label: &str, a: Option<&FanOutcome>, b: Option<&FanOutcome>, rows: &mut Vec<Row>) {
    type G<'a> = &'a dyn Fn(&FanOutcome) -> Option<f64>;
    let f = |o: Option<&FanOutcome>, g: G| o.and_then(g);
    for (name, q) in [("**p50**", 0.5), ("**p99**", 0.99)] {
        rows.push(Row::num(
            &format!("{label}: send → last member {name} (ms) (lower is better)"),
            f(a, &|o| ms(&o.last_delivery, q)),
            f(b, &|o| ms(&o.last_delivery, q)),
            1,
        ));
    }
    rows.push(Row::num(
        &format!("{label}: send → last member max (ms)"),
        f(a, &|o| max_ms(&o.last_delivery)),
        f(b, &|o| max_ms(&o.last_delivery)),
        1,
    ));
    rows.push(Row::num(
        &format!("{label}: send → acknowledged p50 (ms)"),
        f(a, &|o| ms(&o.ack, 0.5)),
        f(b, &|o| ms(&o.ack, 0.5)),
        2,
    ));
    rows.push(Row::text(
        &format!("{label}: messages every member got / sent"),
        a.map(|o| format!("{} / {}", o.complete, o.sent)),
        b.map(|o| format!("{} / {}", o.complete, o.sent)),
    ));
    rows.push(Row::plain(
        &format!("{label}: time to connect the members (s)"),
        f(a, &|o| Some(o.connect_secs)),
        f(b, &|o| Some(o.connect_secs)),
        2,
    ));
}

pub async fn run(ctx: &Ctx) -> Section {
    let s = &ctx.settings;
    // Group sizes count the sender (the owner), who is a member too.
    let (small, large, huge) = if s.quick {
        (50, 200, 1_000)
    } else {
        (500, 10_000, 100_000)
    };
    let (small, large, huge) = (small - 1, large - 1, huge - 1);
    let (messages, rate) = if s.quick { (20, 20.0) } else { (100, 10.0) };
    let conc = s.connect_concurrency;
    let mut section = Section::new("fanout");
    section.param("small group members", small + 1);
    section.param("large group members", large + 1);
    section.param("messages per run", messages);
    section.param("rate (msg/s)", rate);
    section.param("huge large group members (offline)", huge + 1);

    let mut outcomes = Vec::new();
    for (is_large, n) in [(false, small), (true, large)] {
        let m = ctx
            .on_broker(Kind::Mosquitto, async |b: &mut Broker| {
                run_one(b, n, is_large, messages, rate, conc).await
            })
            .await;
        m.note_failure(Kind::Mosquitto, ctx.require_mqim, &mut section);
        let m = Arc::new(m);
        // mqim once per store shape (`--stores`), each against the same Mosquitto run.
        for &store in &ctx.stores {
            let a = ctx
                .on_store(Kind::Mqim, store, async |b: &mut Broker| {
                    run_one(b, n, is_large, messages, rate, conc).await
                })
                .await;
            a.note_failure(Kind::Mqim, ctx.require_mqim, &mut section);
            outcomes.push((is_large, n, store, a, m.clone()));
        }
    }
    for (is_large, n, store, a, m) in &outcomes {
        let on = match store {
            Store::Embedded => String::new(),
            other => format!(" on {other}"),
        };
        let label = format!(
            "{} group of {}{on}",
            if *is_large { "large" } else { "small" },
            n + 1
        );
        rows_for(&label, a.done(), m.done(), &mut section.rows);
        // Mosquitto ran once per group size: its problem is told once, under the first store.
        let mosquitto = (Some(store) == ctx.stores.first())
            .then(|| m.done())
            .flatten();
        for (who, run) in [("mqim", a.done()), ("Mosquitto", mosquitto)] {
            if let Some(o) = run {
                if o.complete < o.sent {
                    let label = if who == "mqim" {
                        label.as_str()
                    } else {
                        label.split(" on ").next().unwrap_or_default()
                    };
                    section.problems.push(format!(
                        "{who}, {label}: {} of {} messages did not reach every member",
                        o.sent - o.complete,
                        o.sent
                    ));
                }
            }
        }
        if !is_large {
            if let Some(o) = a.done() {
                rows_for_cost(&label, o, &mut section.rows);
            }
        }
    }
    let h = ctx
        .on_broker(Kind::Mqim, async |b: &mut Broker| {
            run_huge(b, huge, messages.min(20)).await
        })
        .await;
    h.note_failure(Kind::Mqim, ctx.require_mqim, &mut section);
    if let Some(o) = h.done() {
        section.rows.push(Row::plain(
            &format!("large group of {} (offline): time to create (s)", huge + 1),
            o.create_secs,
            None,
            2,
        ));
        section.rows.push(Row::plain(
            &format!("large group of {}: send → acknowledged p50 (ms)", huge + 1),
            ms(&o.ack, 0.5),
            None,
            2,
        ));
        section.rows.push(Row::plain(
            &format!("large group of {}: send → acknowledged max (ms)", huge + 1),
            max_ms(&o.ack),
            None,
            2,
        ));
    }
    section.notes.push(
        "mqim: each member is its own user on its own connection, subscribed to its downlink; \
         the group is created by the sender (groupCreate, then groupAdd in chunks of 500) before \
         the clock starts. A small group's message is one commit that writes a copy into every \
         member's stream (delivered at QoS 1); a large group's is written once and fanned out \
         live to the online members by the fan-out worker, at QoS 0 (no acknowledgement per \
         copy: a member who misses one pages it in with groupSync). Mosquitto: the same number \
         of clients subscribe to one topic (at QoS 1 for the small group, at QoS 0 for the large \
         one, the same delivery) and the sender publishes the same-sized payload at QoS 1. \
         Latency is from the \
         scheduled send to the last member's receipt; acknowledged is the `sent` reply (mqim) or \
         the PUBACK (Mosquitto). The 100,000-member group has no member online (Mosquitto has no \
         equivalent)."
            .into(),
    );
    section
}

fn rows_for_cost(label: &str, o: &FanOutcome, rows: &mut Vec<Row>) {
    rows.push(Row::plain(
        &format!("{label}: bytes written to storage per message per member"),
        o.bytes_per_member_msg,
        None,
        0,
    ));
    rows.push(Row::plain(
        &format!("{label}: send → acknowledged p50 per member (ms)"),
        ms(&o.ack, 0.5).map(|v| v / (o.members + 1) as f64),
        None,
        4,
    ));
}
