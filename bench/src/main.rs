//! `mqim-bench`: the load generator and harness that measures mqim against Mosquitto in one run.
//!
//! This file owns the command line, the resolved options (`--quick` defaults), raising
//! RLIMIT_NOFILE, the tokio runtime, running the chosen scenarios against both brokers in order
//! (mqim once per `--stores` shape where a scenario compares them), and the exit code. Each
//! scenario lives in its own file (`idle.rs`, `throughput.rs`, `latency.rs`, `storm.rs`,
//! `fanout.rs`, `drain.rs`); brokers are started by `brokers.rs`, the MQTT client is `client.rs`
//! (its 5.0 subset for the drain in `client_v5.rs`), the sender/receiver workload is
//! `workload.rs`, and tables/`BENCHMARKS.md` are `report.rs`.

mod brokers;
mod client;
mod client_v5;
mod drain;
mod fanout;
mod idle;
mod latency;
mod report;
mod storm;
mod throughput;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rand::Rng;

use brokers::{Auth, Broker, BrokerSpec, Kind, Store};
use report::{RunInfo, Section};

#[derive(Parser, Debug)]
#[command(
    name = "mqim-bench",
    about = "mqim against Mosquitto, same run, same load generator",
    long_about = "Runs each scenario against mqim and then Mosquitto, and writes the results \
                  (absolute numbers and mqim/Mosquitto ratios) to BENCHMARKS.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    /// All six scenarios.
    All,
    /// Scenario 1: N idle connections; broker RSS per connection and time to connect.
    Idle,
    /// Scenario 2: P sender/receiver pairs, window of un-acked sends; delivered msg/s.
    Throughput,
    /// Scenario 3: open-loop offered load; latency from scheduled send to receipt.
    Latency,
    /// Scenario 4: N clients, broker killed and restarted; time until all are back.
    Storm,
    /// Scenario 5: one sender into a small and a large group of online members; time until the
    /// last member has each message.
    Fanout,
    /// Scenario 6: the storm's drain variant: N MQTT 5 clients on mqim node A, A drained with
    /// redirect to node B; time until all are back on B, refused attempts.
    Drain,
}

#[derive(clap::Args, Debug, Clone)]
struct Opts {
    /// Tiny sizes, finishes in well under a minute; prints to stdout only (unless --write).
    #[arg(long, global = true)]
    quick: bool,
    /// Write BENCHMARKS.md even with --quick.
    #[arg(long, global = true)]
    write: bool,
    /// Do not write BENCHMARKS.md.
    #[arg(long, global = true, conflicts_with = "write")]
    no_write: bool,
    /// The mqim binary (relative paths are tried against the current dir, then the workspace).
    #[arg(long, global = true, default_value = "target/release/mqim")]
    mqim_bin: PathBuf,
    /// The Mosquitto binary.
    #[arg(long, global = true, default_value = "/usr/sbin/mosquitto")]
    mosquitto_bin: PathBuf,
    /// Which brokers to run (comma-separated: mqim, mosquitto).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "mqim,mosquitto"
    )]
    brokers: Vec<String>,
    /// mqim store shapes that throughput and latency run, each against the same Mosquitto run
    /// (comma-separated; idle and storm use embedded). redis+embedded starts a redis-server per
    /// mqim instance.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "embedded,redis+embedded"
    )]
    stores: Vec<Store>,
    /// Fail (exit non-zero) when mqim is missing or cannot serve.
    #[arg(long, global = true)]
    require_mqim: bool,
    /// Where to write the results (default: BENCHMARKS.md at the workspace root).
    #[arg(long, global = true)]
    output: Option<PathBuf>,

    /// Idle: number of connections [default: 20000; quick: 200].
    #[arg(long, global = true)]
    idle_clients: Option<usize>,
    /// Throughput/latency: number of sender/receiver pairs [default: 50; quick: 4].
    #[arg(long, global = true)]
    pairs: Option<usize>,
    /// Throughput: un-acked sends allowed per sender.
    #[arg(long, global = true, default_value_t = 64)]
    window: usize,
    /// Throughput/latency: seconds of load [default: 10; quick: 2].
    #[arg(long, global = true)]
    duration: Option<f64>,
    /// Latency: offered messages per second, all pairs together [default: 5000; quick: 500].
    #[arg(long, global = true)]
    rate: Option<f64>,
    /// Throughput/latency: seconds to wait for outstanding deliveries after the load stops
    /// [default: 15; quick: 5].
    #[arg(long, global = true)]
    drain: Option<f64>,
    /// Storm: number of clients [default: 5000; quick: 100].
    #[arg(long, global = true)]
    storm_clients: Option<usize>,
    /// Storm: backoff base in seconds (delays base,base,2b,2b,4b,4b,...) [default: 2; quick: 0.25].
    #[arg(long, global = true)]
    storm_backoff_base: Option<f64>,
    /// Storm: backoff cap in seconds.
    #[arg(long, global = true, default_value_t = 120.0)]
    storm_backoff_cap: f64,
    /// Storm: give up waiting for reconnects after this many seconds [default: 300; quick: 30].
    #[arg(long, global = true)]
    storm_timeout: Option<f64>,
    /// Drain: connections node A closes per second (mqim's default drain rate).
    #[arg(long, global = true, default_value_t = 500)]
    drain_rate: u32,
    /// Connection handshakes in flight at once while connecting many clients (kept below
    /// Mosquitto's listen backlog of 100 so that neither broker sees SYN drops).
    #[arg(long, global = true, default_value_t = 64)]
    connect_concurrency: usize,
    /// Worker threads of the load generator's tokio runtime.
    #[arg(long, global = true, default_value_t = 2)]
    client_threads: usize,
}

/// Options after applying the `--quick` defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    pub idle_clients: usize,
    pub pairs: usize,
    pub window: usize,
    pub duration: Duration,
    pub rate: f64,
    pub drain: Duration,
    pub storm_clients: usize,
    pub storm_backoff_base: Duration,
    pub storm_backoff_cap: Duration,
    pub storm_timeout: Duration,
    /// The drain scenario's rate (connections/s); its size is `storm_clients`.
    pub drain_rate: u32,
    pub connect_concurrency: usize,
    /// Why a requested size was reduced (shown in the report).
    pub clamp_notes: Vec<String>,
}

impl Settings {
    fn from(o: &Opts) -> Settings {
        let q = o.quick;
        let pick =
            |v: Option<f64>, full: f64, quick: f64| v.unwrap_or(if q { quick } else { full });
        Settings {
            quick: q,
            idle_clients: o.idle_clients.unwrap_or(if q { 200 } else { 20_000 }),
            pairs: o.pairs.unwrap_or(if q { 4 } else { 50 }).max(1),
            window: o.window.max(1),
            duration: Duration::from_secs_f64(pick(o.duration, 10.0, 2.0).max(0.1)),
            rate: pick(o.rate, 5000.0, 500.0).max(1.0),
            drain: Duration::from_secs_f64(pick(o.drain, 15.0, 5.0).max(0.0)),
            storm_clients: o.storm_clients.unwrap_or(if q { 100 } else { 5000 }),
            storm_backoff_base: Duration::from_secs_f64(
                pick(o.storm_backoff_base, 2.0, 0.25).max(0.01),
            ),
            storm_backoff_cap: Duration::from_secs_f64(o.storm_backoff_cap.max(0.01)),
            storm_timeout: Duration::from_secs_f64(pick(o.storm_timeout, 300.0, 30.0).max(1.0)),
            drain_rate: o.drain_rate.max(1),
            connect_concurrency: o.connect_concurrency.max(1),
            clamp_notes: Vec::new(),
        }
    }
}

/// What every scenario gets: the settings and, per broker, how to start it or why it cannot be.
pub struct Ctx {
    pub settings: Settings,
    pub mqim: Option<Result<BrokerSpec, String>>,
    pub mosquitto: Option<Result<BrokerSpec, String>>,
    /// mqim's store shapes for the scenarios that compare them, without repeats.
    pub stores: Vec<Store>,
    pub require_mqim: bool,
}

/// The outcome of one scenario on one broker.
pub enum BrokerRun<T> {
    /// The broker was not selected with `--brokers`.
    Skipped,
    /// The broker could not be started (missing binary, does not serve).
    Unavailable(String),
    /// The broker started but the scenario failed.
    Failed(String),
    Done(T),
}

impl<T> BrokerRun<T> {
    pub fn done(&self) -> Option<&T> {
        match self {
            BrokerRun::Done(t) => Some(t),
            _ => None,
        }
    }

    /// Adds the failure of this run (if any) to the section.
    pub fn note_failure(&self, kind: Kind, require_mqim: bool, section: &mut Section) {
        self.note_failure_as(kind, &kind.to_string(), require_mqim, section);
    }

    /// [`BrokerRun::note_failure`], naming the broker `who` (e.g. "mqim (redis+embedded)").
    pub fn note_failure_as(
        &self,
        kind: Kind,
        who: &str,
        require_mqim: bool,
        section: &mut Section,
    ) {
        match self {
            BrokerRun::Unavailable(why) => {
                let msg = format!("{who} could not be started or does not serve: {why}");
                if kind == Kind::Mosquitto || require_mqim {
                    section.problems.push(msg);
                } else {
                    section.warnings.push(msg);
                }
            }
            BrokerRun::Failed(why) => section
                .problems
                .push(format!("{who}: scenario failed: {why}")),
            BrokerRun::Skipped | BrokerRun::Done(_) => {}
        }
    }
}

impl Ctx {
    fn spec(&self, kind: Kind) -> Option<&Result<BrokerSpec, String>> {
        match kind {
            Kind::Mqim => self.mqim.as_ref(),
            Kind::Mosquitto => self.mosquitto.as_ref(),
        }
    }

    /// Starts a fresh `kind` broker (mqim on the embedded store), runs `f` on it, stops it.
    pub async fn on_broker<T, F>(&self, kind: Kind, f: F) -> BrokerRun<T>
    where
        F: AsyncFnOnce(&mut Broker) -> Result<T>,
    {
        self.on_store(kind, Store::Embedded, f).await
    }

    /// Runs `f` on mqim once per store shape, then on Mosquitto: the comparison the throughput
    /// and latency scenarios make.
    pub async fn on_each_store<T, F>(&self, f: F) -> (Vec<(Store, BrokerRun<T>)>, BrokerRun<T>)
    where
        F: AsyncFn(&mut Broker) -> Result<T>,
    {
        let mut mqim = Vec::new();
        for &store in &self.stores {
            mqim.push((store, self.on_store(Kind::Mqim, store, &f).await));
        }
        let mosquitto = self.on_broker(Kind::Mosquitto, &f).await;
        (mqim, mosquitto)
    }

    /// [`Ctx::on_broker`] with mqim on `store`.
    pub async fn on_store<T, F>(&self, kind: Kind, store: Store, f: F) -> BrokerRun<T>
    where
        F: AsyncFnOnce(&mut Broker) -> Result<T>,
    {
        let spec = match self.spec(kind) {
            None => return BrokerRun::Skipped,
            Some(Err(why)) => return BrokerRun::Unavailable(why.clone()),
            Some(Ok(spec)) => BrokerSpec {
                store,
                ..spec.clone()
            },
        };
        let name = spec.name();
        eprintln!("[mqim-bench] starting {name}");
        let mut broker = match Broker::start(&spec).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("[mqim-bench] {name} unavailable: {e:#}");
                return BrokerRun::Unavailable(format!("{e:#}"));
            }
        };
        let r = f(&mut broker).await;
        let died = broker.exit_report();
        let alive = broker.pid().is_some();
        let tail = broker.log_tail();
        let warnings = broker.log_warnings();
        broker.stop().await;
        match (r, died) {
            (Ok(t), None) => {
                if !warnings.is_empty() {
                    eprintln!(
                        "[mqim-bench] {name} logged {} warnings/errors; first:\n{}",
                        warnings.len(),
                        warnings[..warnings.len().min(10)].join("\n")
                    );
                }
                BrokerRun::Done(t)
            }
            (Ok(_), Some(died)) => {
                eprintln!("[mqim-bench] {name} died during the scenario: {died}");
                BrokerRun::Failed(format!("the broker died during the scenario: {died}"))
            }
            (Err(e), died) => {
                eprintln!("[mqim-bench] {name} failed: {e:#}");
                let mut msg = format!("{e:#}");
                if let Some(died) = died {
                    msg.push_str(&format!("; {died}"));
                } else if alive && tail != "(empty)" {
                    msg.push_str(&format!("; broker log tail:\n{tail}"));
                }
                BrokerRun::Failed(msg)
            }
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn resolve_bin(p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p.to_path_buf();
    }
    let in_ws = workspace_root().join(p);
    if in_ws.exists() {
        in_ws
    } else {
        p.to_path_buf()
    }
}

/// File descriptors kept free for everything but client sockets (the broker's listeners, store
/// files and epoll; our runtime, logs and pairs).
const FD_RESERVE: usize = 200;

/// Raises RLIMIT_NOFILE (soft and, with CAP_SYS_RESOURCE, hard) so that this process and the
/// brokers it spawns (they inherit it) can hold `want` sockets. Returns the new soft limit.
fn raise_nofile(want: u64) -> u64 {
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    // SAFETY: getrlimit/setrlimit on a properly initialised struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let target = want.min(nr_open).max(lim.rlim_cur);
        if target > lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: target,
                rlim_max: target,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return target;
            }
        }
        let soft = target.min(lim.rlim_max);
        let l = libc::rlimit {
            rlim_cur: soft,
            rlim_max: lim.rlim_max,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut settings = Settings::from(&cli.opts);
    let want_fds = (settings.idle_clients.max(settings.storm_clients) + FD_RESERVE) as u64;
    let nofile = raise_nofile(want_fds.max(262_144));
    eprintln!("[mqim-bench] RLIMIT_NOFILE = {nofile}");
    // Every client socket costs one descriptor here and one in the broker, and both processes
    // have the same limit: clamp the connection counts to it.
    let max_clients = (nofile as usize).saturating_sub(FD_RESERVE).max(1);
    for (name, n) in [
        ("idle clients", &mut settings.idle_clients),
        ("storm clients", &mut settings.storm_clients),
    ] {
        if *n > max_clients {
            let msg = format!(
                "{name} clamped from {} to {max_clients}: RLIMIT_NOFILE is {nofile} and could not be \
                 raised (raising the hard limit needs CAP_SYS_RESOURCE); the broker inherits the \
                 same limit",
                *n
            );
            eprintln!("[mqim-bench] WARNING: {msg}");
            settings.clamp_notes.push(msg);
            *n = max_clients;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.opts.client_threads.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mqim-bench: cannot build the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, settings)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("mqim-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the scenarios; Ok(false) when a scenario reported a problem.
async fn run(cli: Cli, settings: Settings) -> Result<bool> {
    workload::base();
    let selected = |name: &str| {
        cli.opts
            .brokers
            .iter()
            .any(|b| b.eq_ignore_ascii_case(name))
    };
    let secret: String = {
        let mut rng = rand::rng();
        (0..32)
            .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
            .collect()
    };
    let mqim_bin = resolve_bin(&cli.opts.mqim_bin);
    let mosquitto_bin = resolve_bin(&cli.opts.mosquitto_bin);
    let spec_for = |kind: Kind, bin: &Path, auth: Auth| -> Result<BrokerSpec, String> {
        if bin.is_file() {
            Ok(BrokerSpec {
                kind,
                bin: bin.to_path_buf(),
                auth,
                store: Store::Embedded,
                admin: false,
            })
        } else {
            Err(format!("binary {} does not exist", bin.display()))
        }
    };
    let mut stores = Vec::new();
    for s in &cli.opts.stores {
        if !stores.contains(s) {
            stores.push(*s);
        }
    }
    let ctx = Ctx {
        settings: settings.clone(),
        mqim: selected("mqim").then(|| spec_for(Kind::Mqim, &mqim_bin, Auth::hs256(secret))),
        mosquitto: selected("mosquitto")
            .then(|| spec_for(Kind::Mosquitto, &mosquitto_bin, Auth::anonymous())),
        stores,
        require_mqim: cli.opts.require_mqim,
    };
    if let Some(Err(why)) = &ctx.mqim {
        eprintln!(
            "[mqim-bench] WARNING: mqim is not available ({why}); running the Mosquitto side only"
        );
    }
    let mqim_built = std::fs::metadata(&mqim_bin)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(
            || "not built".to_string(),
            |d| format!("built {}", report::format_utc(d.as_secs())),
        );
    let mut brokers_line = format!(
        "mqim `{}` ({mqim_built}); {} (`{}`; {})",
        mqim_bin.display(),
        brokers::mosquitto_version(&mosquitto_bin),
        mosquitto_bin.display(),
        brokers::MOSQUITTO_SETTINGS
    );
    if ctx.stores.contains(&Store::RedisEmbedded) {
        brokers_line.push_str(&format!(
            "; mqim's Redis: {} ({})",
            brokers::redis_version(),
            brokers::REDIS_SETTINGS
        ));
    }

    let scenarios: &[Cmd] = match cli.command {
        Cmd::All => &[
            Cmd::Idle,
            Cmd::Throughput,
            Cmd::Latency,
            Cmd::Storm,
            Cmd::Fanout,
            Cmd::Drain,
        ],
        Cmd::Idle => &[Cmd::Idle],
        Cmd::Throughput => &[Cmd::Throughput],
        Cmd::Latency => &[Cmd::Latency],
        Cmd::Storm => &[Cmd::Storm],
        Cmd::Fanout => &[Cmd::Fanout],
        Cmd::Drain => &[Cmd::Drain],
    };
    let mut sections = Vec::new();
    for sc in scenarios {
        let section = match sc {
            Cmd::Idle => idle::run(&ctx).await,
            Cmd::Throughput => throughput::run(&ctx).await,
            Cmd::Latency => latency::run(&ctx).await,
            Cmd::Storm => storm::run(&ctx).await,
            Cmd::Fanout => fanout::run(&ctx).await,
            Cmd::Drain => drain::run(&ctx).await,
            Cmd::All => unreachable!(),
        };
        sections.push(section);
    }

    let root = workspace_root();
    let info = RunInfo::collect(&root, brokers_line);
    println!();
    for s in &sections {
        println!("{}", s.render(&info));
    }
    let write = if settings.quick {
        cli.opts.write
    } else {
        !cli.opts.no_write
    };
    if write {
        let path = cli
            .opts
            .output
            .clone()
            .unwrap_or_else(|| root.join("BENCHMARKS.md"));
        report::write_file(&path, &sections, &info).context("writing the report")?;
        eprintln!("[mqim-bench] wrote {}", path.display());
    } else {
        eprintln!(
            "[mqim-bench] not writing BENCHMARKS.md ({})",
            if settings.quick {
                "quick mode; pass --write to write it"
            } else {
                "--no-write"
            }
        );
    }
    let problems: Vec<&String> = sections.iter().flat_map(|s| s.problems.iter()).collect();
    for p in &problems {
        eprintln!("[mqim-bench] PROBLEM: {p}");
    }
    for s in &sections {
        for w in &s.warnings {
            eprintln!("[mqim-bench] WARNING ({}): {w}", s.id);
        }
    }
    Ok(problems.is_empty())
}
