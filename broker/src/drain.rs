//! The server as an operator controls it: its live sessions, kicking one, and draining the node
//! (seed 001: drain a node before restarting it).
//!
//! A drain first makes the listeners refuse new connections (so `/readyz` fails and a load
//! balancer moves on), then closes the live connections at `rate` per second, so the clients do
//! not storm the remaining nodes: MQTT 5 clients get DISCONNECT 0x9C "use another server" with a
//! Server Reference when a redirect is set, else 0x8B "server shutting down"; 3.1.1 clients are
//! closed. Each connection first answers the publishes it is handling (see
//! `connection::finish_pending`), so nothing acknowledged is lost and nothing stored goes
//! unacknowledged. When no connection is left the process exits, unless told to stay up.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::codec::DisconnectReason;
use crate::server::{Shared, ShutdownHandle};
use crate::session::Session;

/// How long a drain waits for connections it told to go before it stops waiting.
const STUCK: Duration = Duration::from_secs(15);

/// How a drain runs.
#[derive(Clone, Debug)]
pub struct DrainPlan {
    /// `host:port` MQTT 5 clients are sent to (Server Reference); None: "shutting down".
    pub redirect: Option<String>,
    /// Connections closed per second (at least 1).
    pub rate: u32,
    /// Exit the process once every connection is gone.
    pub exit: bool,
}

/// A drain was already started.
#[derive(Debug, thiserror::Error)]
#[error("the node is already draining")]
pub struct AlreadyDraining;

/// The admin API's handle on the running server.
#[derive(Clone)]
pub struct ServerControl {
    shared: Arc<Shared>,
    shutdown: ShutdownHandle,
}

impl ServerControl {
    pub(crate) fn new(shared: Arc<Shared>, shutdown: ShutdownHandle) -> Self {
        ServerControl { shared, shutdown }
    }

    /// The live sessions, a snapshot.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.shared.sessions.live()
    }

    /// The live session of `user`'s device `device`.
    pub fn find(&self, user: &str, device: &str) -> Option<Arc<Session>> {
        self.sessions()
            .into_iter()
            .find(|s| s.user() == Some(user) && s.client_id() == device)
    }

    /// Closes every live connection of `user` (5.0: DISCONNECT 0x98 "administrative action").
    /// Returns how many.
    pub fn close_user(&self, user: &str, device: Option<&str>) -> usize {
        let mut n = 0;
        for s in self.sessions() {
            if s.user() == Some(user) && device.is_none_or(|d| s.client_id() == d) {
                s.close(DisconnectReason::AdministrativeAction);
                n += 1;
            }
        }
        n
    }

    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Starts draining the node (see the module comment); returns at once.
    pub fn drain(&self, plan: DrainPlan) -> Result<(), AlreadyDraining> {
        if self.shared.draining.swap(true, Ordering::AcqRel) {
            return Err(AlreadyDraining);
        }
        *self.shared.redirect.lock() = plan.redirect.clone();
        info!(redirect = ?plan.redirect, rate = plan.rate, exit = plan.exit, "draining: refusing new connections");
        let this = self.clone();
        tokio::spawn(async move { this.run_drain(plan).await });
        Ok(())
    }

    async fn run_drain(self, plan: DrainPlan) {
        // Ten rounds a second, each closing a tenth of the rate.
        let per_round = (plan.rate.max(1) as usize).div_ceil(10);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut told = HashSet::new();
        let mut last_told = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            let live = self.sessions();
            if live.is_empty() {
                break;
            }
            let round: Vec<_> = live
                .iter()
                .filter(|s| !told.contains(&s.conn_id))
                .take(per_round)
                .collect();
            for s in round {
                s.close(DisconnectReason::UseAnotherServer);
                told.insert(s.conn_id);
                last_told = tokio::time::Instant::now();
            }
            if last_told.elapsed() > STUCK {
                // Told long ago and still there (a peer that stopped reading): the shutdown
                // deadline deals with them.
                warn!(
                    left = live.len(),
                    "drain: connections did not close in time"
                );
                break;
            }
        }
        info!(closed = told.len(), "drained: no connection left");
        if plan.exit {
            self.shutdown.shutdown(true);
        }
    }
}
