//! `mqim`: the MQTT broker with instant-messaging semantics.
//!
//! `mqim serve` runs the broker; `mqim token <user>` prints a token that broker accepts
//! (`--admin`: one for the admin HTTP API);
//! `mqim push-log <user>` shows the user's push registrations and recent push outcomes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mqim_broker::acl::Acl;
use mqim_broker::admin::{self, AdminState, NodeInfo};
use mqim_broker::config::Config;
use mqim_broker::im_glue::ImExtension;
use mqim_broker::server::Server;
use mqim_im_plugin::auth::Authenticator;
use mqim_im_plugin::bans::BanStore;
use mqim_im_plugin::config as store_cfg;
use mqim_im_plugin::store;
use mqim_im_plugin::ImPlugin;
use tracing::info;

#[derive(Parser)]
#[command(
    name = "mqim",
    version,
    about = "MQTT broker with instant-messaging semantics"
)]
struct Cli {
    /// Config file (TOML). Also MQIM_CONFIG. Without one, built-in defaults apply.
    #[arg(long, global = true, env = "MQIM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve,
    /// Print a token for USER, valid for this broker (same config and data dir).
    Token {
        user: String,
        /// Lifetime, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: humantime::Duration,
        /// An admin token (claim `adm`) for the admin HTTP API and console; USER is the name
        /// its audit lines show.
        #[arg(long)]
        admin: bool,
    },
    /// Show USER's push registrations and the last push outcomes per device (same data dir;
    /// works while the broker runs).
    PushLog { user: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Token { user, ttl, admin } => {
            let auth = Authenticator::load(&cfg.auth, &cfg.data_dir)?;
            let ttl = Duration::from(ttl).as_secs();
            let token = if admin {
                auth.issue_admin(&user, ttl)?
            } else {
                anyhow::ensure!(
                    user != mqim_im_plugin::admin::SYSTEM_SENDER,
                    "{user:?} is the reserved sender of system messages"
                );
                auth.issue(&user, ttl)?
            };
            println!("{token}");
            Ok(())
        }
        Command::PushLog { user } => {
            print!(
                "{}",
                mqim_push_bridge::state::format_log(&cfg.data_dir, &user)?
            );
            Ok(())
        }
        Command::Serve => {
            // Logs go to stderr; stdout carries only the machine-readable listening line.
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(cfg))
        }
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    info!("effective configuration:\n{}", cfg.redacted());
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let auth = Authenticator::load(&cfg.auth, &cfg.data_dir)?;
    // Embedded: the LSM store, one journal sync per group commit (see BENCHMARKS.md).
    // Scale-out: the Redis index over a message log (see README, "Scale-out").
    let store = store::open(&cfg.store, &cfg.data_dir, &cfg.im)
        .await
        .context("opening the store")?;
    let plugin = ImPlugin::open(cfg.im.clone(), auth, store.clone()).await?;
    plugin.set_observer(Arc::new(mqim_broker::im_glue::MetricsObserver));
    let words = plugin
        .moderation()
        .load(&cfg.moderation)
        .context("loading the moderation word list")?;
    if words > 0 {
        info!(words, action = ?cfg.moderation.action, "moderation word list loaded");
    }
    let bans = match cfg.store.backend {
        store_cfg::StoreBackend::Embedded => BanStore::open_file(&cfg.data_dir)?,
        _ => BanStore::open_redis(&cfg.store.redis).await?,
    };
    let purge = plugin.spawn_dedup_purge();
    let push = mqim_push_bridge::PushBridge::start(&cfg.push, &cfg.data_dir, &plugin)
        .context("starting the push bridge")?;
    plugin.set_push_hook(push);
    let server = Server::bind(
        &cfg.listeners()?,
        cfg.limits(),
        Acl::new(cfg.acl.clone()),
        Arc::new(ImExtension::new(plugin.clone(), bans.clone())),
    )
    .await?;
    let control = server.control();
    bans.on_new_ban(Box::new(move |user| {
        let closed = control.close_user(user, None);
        info!(user, closed, "banned on another node: connections closed");
    }));
    let admin_state = AdminState::new(
        server.control(),
        plugin.clone(),
        Arc::new(Authenticator::load(&cfg.auth, &cfg.data_dir)?),
        bans,
        NodeInfo {
            node_id: cfg.im.node_id,
            store: store_shape(cfg.store.backend).into(),
            started: std::time::Instant::now(),
            metrics_auth: cfg.admin.metrics_auth,
            drain_rate: cfg.admin.drain_rate.max(1),
            redirect: cfg.cluster.redirect.clone(),
            exit_after_drain: cfg.admin.exit_after_drain,
            data_dir: cfg.data_dir.clone(),
        },
    );
    let admin_listener = match cfg.admin_listen()? {
        Some(addr) => Some(admin::bind(addr).await?),
        None => None,
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let admin_tls = cfg.admin_tls()?;
    let admin_scheme = if admin_tls.is_some() { "https" } else { "http" };
    let admin_task =
        admin_listener.map(|l| tokio::spawn(admin::serve(l, admin_tls, admin_state.clone())));
    if let Some(a) = admin_addr {
        info!("admin console and API at {admin_scheme}://{a}/");
    }
    let (mqtt, ws, tls) = server.local_addrs();
    let show =
        |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
    // One machine-readable line, so scripts and tests started on port 0 find the ports.
    println!(
        "mqim listening mqtt={mqtt} ws={} tls={} admin={}",
        show(ws),
        show(tls),
        show(admin_addr)
    );
    info!(%mqtt, ws = ?ws, data_dir = %cfg.data_dir.display(), "mqim is serving");
    let handle = server.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down");
        handle.shutdown(false);
    });
    spawn_operator_signals(admin_state.clone());
    server
        .run(Duration::from_secs(cfg.mqtt.shutdown_grace_secs))
        .await;
    if let Some(t) = admin_task {
        t.abort();
    }
    purge.abort();
    drop(store);
    info!("stopped");
    Ok(())
}

fn store_shape(b: store_cfg::StoreBackend) -> &'static str {
    match b {
        store_cfg::StoreBackend::Embedded => "embedded",
        store_cfg::StoreBackend::RedisEmbedded => "redis+embedded",
        store_cfg::StoreBackend::RedisScylla => "redis+scylla",
    }
}

/// SIGUSR1 drains the node with the configured defaults (`[admin] drain_rate`, `[cluster]
/// redirect`); SIGHUP reloads the moderation word list.
fn spawn_operator_signals(admin: AdminState) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut usr1), Ok(mut hup)) = (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("could not install the SIGUSR1/SIGHUP handlers");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = usr1.recv() => {
                    info!(target: "mqim::audit", admin = "SIGUSR1", action = "drain", "admin action");
                    if let Err(e) = admin.drain_with_defaults() {
                        info!(error = %e, "SIGUSR1 ignored");
                    }
                }
                _ = hup.recv() => match admin.plugin().moderation().reload() {
                    Ok(words) => info!(words, "SIGHUP: moderation word list reloaded"),
                    Err(e) => tracing::warn!(error = %e, "SIGHUP: word list not reloaded; the old one stays"),
                },
            }
        }
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
