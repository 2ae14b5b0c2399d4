//! `mqim`: the MQTT broker with instant-messaging semantics.
//!
//! `mqim serve` runs the broker; `mqim token <user>` prints a token that broker accepts;
//! `mqim push-log <user>` shows the user's push registrations and recent push outcomes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mqim_broker::acl::Acl;
use mqim_broker::config::Config;
use mqim_broker::im_glue::ImExtension;
use mqim_broker::server::Server;
use mqim_im_plugin::auth::Authenticator;
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
    },
    /// Show USER's push registrations and the last push outcomes per device (same data dir;
    /// works while the broker runs).
    PushLog { user: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Token { user, ttl } => {
            let auth = Authenticator::load(&cfg.auth, &cfg.data_dir)?;
            println!("{}", auth.issue(&user, Duration::from(ttl).as_secs())?);
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
    let purge = plugin.spawn_dedup_purge();
    let push = mqim_push_bridge::PushBridge::start(&cfg.push, &cfg.data_dir, &plugin)
        .context("starting the push bridge")?;
    plugin.set_push_hook(push);
    let server = Server::bind(
        &cfg.listeners()?,
        cfg.limits(),
        Acl::new(cfg.acl.clone()),
        Arc::new(ImExtension::new(plugin)),
    )
    .await?;
    let (mqtt, ws, tls) = server.local_addrs();
    let show =
        |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
    // One machine-readable line, so scripts and tests started on port 0 find the ports.
    println!(
        "mqim listening mqtt={mqtt} ws={} tls={}",
        show(ws),
        show(tls)
    );
    info!(%mqtt, ws = ?ws, data_dir = %cfg.data_dir.display(), "mqim is serving");
    let handle = server.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down");
        handle.shutdown(false);
    });
    server
        .run(Duration::from_secs(cfg.mqtt.shutdown_grace_secs))
        .await;
    purge.abort();
    drop(store);
    info!("stopped");
    Ok(())
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
