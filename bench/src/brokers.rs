//! Starting, probing, killing, restarting and stopping the two brokers under test.
//!
//! This file owns the process side of the harness: free loopback ports, a fresh temporary data
//! dir per broker instance, mqim's environment contract (`MQIM_DATA_DIR`, `MQIM_MQTT_LISTEN`,
//! `MQIM_WS_LISTEN`, `MQIM_AUTH_HS256_SECRET`, `MQIM_STORE_BACKEND`, `MQIM_REDIS_URL`,
//! `RUST_LOG`), the `redis-server` of an mqim instance on the `redis+embedded` store (one per
//! instance, as fresh as its data dir, stopped with it), a generated Mosquitto config (never
//! the system service), readiness checks (the port accepts and an MQTT CONNECT + SUBSCRIBE
//! succeeds), the broker's RSS from `/proc/<pid>/status`, and the credentials each broker expects
//! (mqim: user id + HS256 JWT; Mosquitto: anonymous).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::client::{self, ConnectOptions};

/// Which broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Mqim,
    Mosquitto,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Mqim => "mqim",
            Kind::Mosquitto => "Mosquitto",
        })
    }
}

/// Where mqim keeps its data (`MQIM_STORE_BACKEND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Store {
    /// Everything in the data dir.
    #[value(name = "embedded")]
    Embedded,
    /// Seq counters, unread index and dedup cache in Redis; the message log in the data dir.
    #[value(name = "redis+embedded")]
    RedisEmbedded,
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Store::Embedded => "embedded",
            Store::RedisEmbedded => "redis+embedded",
        })
    }
}

/// Settings of the harness's `redis-server`; printed into BENCHMARKS.md.
pub const REDIS_SETTINGS: &str = "loopback, save \"\", appendonly no, one per mqim instance";

/// Mosquitto settings the harness uses; printed into BENCHMARKS.md.
pub const MOSQUITTO_SETTINGS: &str = "allow_anonymous true, persistence false, \
max_queued_messages 1000000, max_queued_bytes 0, max_inflight_messages 20 (default), \
set_tcp_nodelay true, max_connections -1";

/// How long a broker gets to start serving.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Everything needed to start brokers of one kind.
#[derive(Clone)]
pub struct BrokerSpec {
    pub kind: Kind,
    pub bin: PathBuf,
    pub auth: Auth,
    /// mqim's store shape (ignored for Mosquitto).
    pub store: Store,
    /// mqim: serve the admin API on a port of its own and stay up after a drain (the drain
    /// scenario); off elsewhere, so the other scenarios measure MQTT only.
    pub admin: bool,
}

impl BrokerSpec {
    /// "mqim (redis+embedded)" or "Mosquitto", for logs and problems.
    pub fn name(&self) -> String {
        match self.kind {
            Kind::Mqim => format!("mqim ({})", self.store),
            Kind::Mosquitto => self.kind.to_string(),
        }
    }
}

/// Credentials: mqim wants username = user id and password = HS256 JWT; Mosquitto runs anonymous.
#[derive(Clone)]
pub struct Auth {
    secret: Option<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    /// An admin token (`mqim token <name> --admin`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    adm: bool,
}

impl Auth {
    pub fn anonymous() -> Self {
        Auth { secret: None }
    }

    pub fn hs256(secret: String) -> Self {
        Auth {
            secret: Some(secret),
        }
    }

    /// (username, password) for `user`.
    pub fn credentials(&self, user: &str) -> (Option<String>, Option<String>) {
        match self.sign(user, false) {
            None => (None, None),
            Some(token) => (Some(user.to_string()), Some(token)),
        }
    }

    /// An admin bearer token for mqim's admin API; None when running anonymous.
    pub fn admin_token(&self, name: &str) -> Option<String> {
        self.sign(name, true)
    }

    fn sign(&self, sub: &str, adm: bool) -> Option<String> {
        let secret = self.secret.as_ref()?;
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            + 24 * 3600;
        let token = jsonwebtoken::encode(
            &Header::default(),
            &Claims { sub, exp, adm },
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("HS256 signing cannot fail");
        Some(token)
    }
}

/// The downlink topic of device `device` of user `user`.
pub fn down_topic(user: &str, device: &str) -> String {
    format!("im/{user}/{device}/down/json")
}

/// The uplink (request) topic of device `device` of user `user`.
pub fn up_topic(user: &str, device: &str) -> String {
    format!("im/{user}/{device}/up/json")
}

/// A running broker (killed when dropped, with its Redis).
pub struct Broker {
    pub spec: BrokerSpec,
    pub port: u16,
    ws_port: u16,
    /// mqim's admin listener, when the spec asks for it.
    pub admin_port: Option<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    restarts: u32,
    /// mqim's Redis on the `redis+embedded` store; it outlives broker restarts.
    redis: Option<Redis>,
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a probe port")?;
    Ok(l.local_addr()?.port())
}

impl Broker {
    /// Starts a fresh broker instance (new ports, new data dir) and waits until it serves.
    pub async fn start(spec: &BrokerSpec) -> Result<Broker> {
        if !spec.bin.is_file() {
            bail!("{} binary not found at {}", spec.kind, spec.bin.display());
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!(
                "mqim-bench-{}-",
                spec.kind.to_string().to_lowercase()
            ))
            .tempdir()
            .context("creating a temp dir")?;
        let mut broker = Broker {
            spec: spec.clone(),
            port: free_port()?,
            ws_port: free_port()?,
            admin_port: match spec.admin && spec.kind == Kind::Mqim {
                true => Some(free_port()?),
                false => None,
            },
            dir,
            child: None,
            restarts: 0,
            redis: None,
        };
        if spec.kind == Kind::Mqim && spec.store == Store::RedisEmbedded {
            broker.redis = Some(Redis::start(&broker.dir.path().join("redis.log")).await?);
        }
        if spec.kind == Kind::Mosquitto {
            std::fs::write(
                broker.dir.path().join("mosquitto.conf"),
                broker.mosquitto_conf(),
            )?;
        }
        std::fs::create_dir_all(broker.data_dir())?;
        broker.spawn()?;
        broker.wait_ready().await?;
        Ok(broker)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("broker-{}.log", self.restarts))
    }

    fn mosquitto_conf(&self) -> String {
        format!(
            "# generated by mqim-bench\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence false\n\
             max_queued_messages 1000000\n\
             max_queued_bytes 0\n\
             max_connections -1\n\
             set_tcp_nodelay true\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             connection_messages false\n",
            port = self.port
        )
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.log_path())?;
        let log2 = log.try_clone()?;
        let mut cmd = Command::new(&self.spec.bin);
        match self.spec.kind {
            Kind::Mqim => {
                cmd.arg("serve")
                    .env("MQIM_DATA_DIR", self.data_dir())
                    .env("MQIM_MQTT_LISTEN", format!("127.0.0.1:{}", self.port))
                    .env("MQIM_WS_LISTEN", format!("127.0.0.1:{}", self.ws_port))
                    // Benchmarks measure MQTT (the admin API only where the scenario drives
                    // it); two instances must not contend for one port.
                    .env(
                        "MQIM_ADMIN_LISTEN",
                        self.admin_port
                            .map_or("off".to_string(), |p| format!("127.0.0.1:{p}")),
                    )
                    .env("MQIM_EXIT_AFTER_DRAIN", "false")
                    .env(
                        "MQIM_AUTH_HS256_SECRET",
                        self.spec.auth.secret.clone().unwrap_or_default(),
                    )
                    // The load comes from one address and a few users far faster than any
                    // person: the abuse limits would measure themselves, not the broker.
                    .env("MQIM_MAX_CONNECTS_PER_IP", "0")
                    .env("MQIM_MAX_SENDS_PER_SEC", "0")
                    .env("MQIM_STORE_BACKEND", self.spec.store.to_string())
                    .env("RUST_LOG", "warn");
                if let Some(redis) = &self.redis {
                    cmd.env("MQIM_REDIS_URL", redis.url());
                }
            }
            Kind::Mosquitto => {
                cmd.arg("-c").arg(self.dir.path().join("mosquitto.conf"));
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.spec.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the port accepts and an MQTT CONNECT + SUBSCRIBE with proper credentials works.
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{} exited during startup ({status}); log:\n{}",
                        self.spec.kind,
                        self.log_tail()
                    );
                }
            }
            if tokio::net::TcpStream::connect(self.addr()).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not accept TCP connections on {} within {:?}; log:\n{}",
                    self.spec.kind,
                    self.addr(),
                    READY_TIMEOUT,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (user, pass) = self.spec.auth.credentials("benchprobe");
        let opts = ConnectOptions {
            client_id: "benchprobe-d",
            username: user.as_deref(),
            password: pass.as_deref(),
            keep_alive_secs: 60,
        };
        let topic = down_topic("benchprobe", "benchprobe-d");
        match client::connect_and_subscribe(
            self.addr(),
            None,
            &opts,
            &topic,
            Duration::from_secs(5),
        )
        .await
        {
            Ok(conn) => {
                drop(conn);
                Ok(())
            }
            Err(e) => bail!(
                "{} accepts TCP but the MQTT probe (CONNECT as user benchprobe, SUBSCRIBE {topic}) \
                 failed: {e}; log:\n{}",
                self.spec.kind,
                self.log_tail()
            ),
        }
    }

    /// If the broker process has exited by itself: its exit status and the tail of its log.
    pub fn exit_report(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(format!(
            "{} exited by itself ({status}); log tail:\n{}",
            self.spec.kind,
            self.log_tail()
        ))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Resident set size of the broker process in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.pid().context("broker not running")?;
        rss_kib_of(&format!("/proc/{pid}/status"))
    }

    /// SIGKILLs the broker and reaps it.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill().ok();
            child.wait().await?;
        }
        Ok(())
    }

    /// Starts the broker again on the same ports and data dir (after [`Broker::kill`]) and
    /// waits until it serves. Returns how long that took.
    pub async fn restart(&mut self) -> Result<Duration> {
        let t0 = Instant::now();
        self.restarts += 1;
        self.spawn()?;
        self.wait_ready().await?;
        Ok(t0.elapsed())
    }

    /// Asks the broker to stop (SIGTERM), SIGKILLs it after 5 s; then stops its Redis.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                child.start_kill().ok();
                let _ = child.wait().await;
            }
        }
        if let Some(redis) = self.redis.take() {
            redis.stop().await;
        }
    }

    /// The lines of the broker's current log that are warnings or errors.
    pub fn log_warnings(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        text.lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("warn") || l.contains("error")
            })
            .map(str::to_string)
            .collect()
    }

    /// The last lines of the broker's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path())
    }
}

/// A `redis-server` on a free loopback port without persistence, SIGKILLed when stopped or dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// Starts one and waits until it answers PING; its output goes to `log`.
    async fn start(log: &Path) -> Result<Redis> {
        // A free port may be taken before Redis binds it; Redis then exits and we try another.
        for _ in 0..3 {
            let port = free_port()?;
            let out = std::fs::File::create(log)?;
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::from(out.try_clone()?))
                .stderr(Stdio::from(out))
                .kill_on_drop(true)
                .spawn()
                .context("spawning redis-server (apt-get install redis-server)")?;
            let deadline = Instant::now() + READY_TIMEOUT;
            while child.try_wait()?.is_none() {
                if redis_ping(port).await {
                    // Still ours: another server on the port would have made this one exit.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if child.try_wait()?.is_none() {
                        return Ok(Redis { child, port });
                    }
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "redis-server did not answer PING on port {port} within {READY_TIMEOUT:?}; \
                         log:\n{}",
                        log_tail(log)
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        bail!(
            "redis-server exited at start-up three times; log:\n{}",
            log_tail(log)
        )
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn stop(mut self) {
        self.child.start_kill().ok();
        let _ = self.child.wait().await;
    }
}

/// Whether a Redis answers PING on the loopback `port`.
async fn redis_ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        s.write_all(b"PING\r\n").await?;
        let mut answer = [0u8; 7];
        s.read_exact(&mut answer).await?;
        std::io::Result::Ok(&answer == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Ok(true))
    )
}

/// `redis-server --version`'s first words, e.g. "Redis server v=7.0.15".
pub fn redis_version() -> String {
    std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "redis-server not found".into())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(15);
    let tail = lines[start..].join("\n");
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail
    }
}

/// VmRSS in KiB from a `/proc/<pid>/status` file.
pub fn rss_kib_of(status_path: &str) -> Result<u64> {
    let text =
        std::fs::read_to_string(status_path).with_context(|| format!("reading {status_path}"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kib = rest
                .split_whitespace()
                .next()
                .context("VmRSS without a number")?
                .parse()?;
            return Ok(kib);
        }
    }
    bail!("no VmRSS in {status_path}")
}

/// Our own RSS in KiB.
pub fn self_rss_kib() -> u64 {
    rss_kib_of("/proc/self/status").unwrap_or(0)
}

/// `mosquitto -h`'s first line, e.g. "mosquitto version 2.0.11".
pub fn mosquitto_version(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            text.lines().next().map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown version".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_sub_and_exp() {
        let auth = Auth::hs256("s3cret".into());
        let (u, p) = auth.credentials("alice");
        assert_eq!(u.as_deref(), Some("alice"));
        let token = p.unwrap();
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "alice");
        assert!(data.claims["exp"].as_u64().unwrap() > 0);
        assert_eq!(Auth::anonymous().credentials("x"), (None, None));
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(self_rss_kib() > 0);
    }
}
