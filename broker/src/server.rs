//! The server: listeners, the connection limit, the session table and shutdown.
//!
//! Each accepted socket takes a permit from a semaphore (the hard connection limit) and runs as
//! its own task. Shutdown stops the listeners, tells every connection why (5.0 DISCONNECT
//! "server shutting down", or "use another server" when draining a node), and waits for the
//! connections to finish, within a deadline. Draining (closing connections at a rate, with MQTT 5
//! server redirect, while refusing new ones) is `drain.rs`, on top of this file's state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::acl::Acl;
use crate::codec::{DisconnectReason, Outgoing, QoS};
use crate::extension::Extension;
use crate::router::{Router, RouterSettings};
use crate::session::{Principal, Session, TransportKind};

/// Protocol and resource limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest MQTT packet accepted; larger ones close the connection (5.0 reason 0x95).
    pub max_packet_size: usize,
    /// Most deliveries queued for one client before it is disconnected as too slow.
    pub outbox_limit: usize,
    /// Most unacknowledged QoS 1 deliveries to one client.
    pub max_inflight: usize,
    /// Most received publishes awaiting their acknowledgement on one connection; past it the
    /// server stops reading from that client until some complete (back-pressure).
    pub max_pending_acks: usize,
    pub allow_anonymous: bool,
    pub connect_timeout: Duration,
    pub max_connections: usize,
    /// How long a disconnected persistent session keeps its subscriptions (the most a 5.0
    /// client may ask for).
    pub session_expiry: Duration,
    /// QoS 1/2 messages queued for an offline persistent session; past it the oldest is dropped.
    pub max_queued_messages: usize,
    /// General-topic subscriptions one session may hold (more get SUBACK 0x97 / 0x80).
    pub max_subscriptions: usize,
    /// Where persistent sessions and retained messages are kept across restarts (None: memory
    /// only).
    pub state_file: Option<std::path::PathBuf>,
    /// New connections per second from one IP address (0: unlimited), bursts of twice that.
    pub connects_per_ip_per_sec: u32,
    /// Serve the demo chat page at `/` on the WebSocket listener.
    pub demo_page: bool,
}

/// Where the server listens.
#[derive(Clone)]
pub struct Listeners {
    pub mqtt: SocketAddr,
    pub ws: Option<SocketAddr>,
    /// MQTT over TLS, with its acceptor.
    pub tls: Option<(SocketAddr, tokio_rustls::TlsAcceptor)>,
}

/// State every connection shares.
pub struct Shared {
    pub(crate) ext: Arc<dyn Extension>,
    pub(crate) acl: Acl,
    pub(crate) router: Router,
    pub(crate) sessions: SessionTable,
    pub(crate) limits: Limits,
    pub(crate) shutdown: watch::Receiver<bool>,
    shutdown_reason: AtomicU8,
    conn_counter: AtomicU64,
    /// Process start, seconds since the epoch (for assigned client ids).
    started: u64,
    connect_limit: Option<governor::DefaultKeyedRateLimiter<std::net::IpAddr>>,
    /// Set by a drain: the listeners refuse new connections.
    pub(crate) draining: AtomicBool,
    /// Where a drain sends MQTT 5 clients (Server Reference), if anywhere.
    pub(crate) redirect: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.conn_counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A client id for a client that sent none: unique in this process and, with the start
    /// time in it, unlikely to meet one of an earlier run.
    pub(crate) fn assign_client_id(&self, conn_id: u64) -> String {
        format!("mqim-{:x}-{conn_id}", self.started)
    }

    /// The receive maximum announced to 5.0 clients: the connection's pending-publish limit.
    pub(crate) fn receive_max(&self) -> u16 {
        u16::try_from(self.limits.max_pending_acks.max(1)).unwrap_or(u16::MAX)
    }

    pub(crate) fn shutdown_reason(&self) -> DisconnectReason {
        match self.shutdown_reason.load(Ordering::Acquire) {
            1 => DisconnectReason::UseAnotherServer,
            _ => DisconnectReason::ServerShuttingDown,
        }
    }

    /// The DISCONNECT a server-side close sends: "use another server" carries the drain's
    /// Server Reference, and without one becomes "server shutting down".
    pub(crate) fn farewell(&self, reason: DisconnectReason) -> Outgoing {
        if reason != DisconnectReason::UseAnotherServer {
            return Outgoing::Disconnect(reason);
        }
        match self.redirect.lock().clone() {
            Some(server) => Outgoing::Redirect(server),
            None => Outgoing::Disconnect(DisconnectReason::ServerShuttingDown),
        }
    }
}

/// A bound, not yet running server.
pub struct Server {
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    mqtt: TcpListener,
    ws: Option<TcpListener>,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    permits: Arc<Semaphore>,
}

/// Stops a running server.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
    tx: watch::Sender<bool>,
}

impl ShutdownHandle {
    /// Asks every client to go, with "use another server" when `drain`, else "shutting down".
    pub fn shutdown(&self, drain: bool) {
        self.shared
            .shutdown_reason
            .store(u8::from(drain), Ordering::Release);
        let _ = self.tx.send(true);
    }
}

impl Server {
    /// Binds the listeners and starts the general router.
    pub async fn bind(
        listeners: &Listeners,
        limits: Limits,
        acl: Acl,
        ext: Arc<dyn Extension>,
    ) -> anyhow::Result<Server> {
        let mqtt = TcpListener::bind(listeners.mqtt).await?;
        let ws = match listeners.ws {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let tls = match &listeners.tls {
            Some((addr, acceptor)) => Some((TcpListener::bind(addr).await?, acceptor.clone())),
            None => None,
        };
        let router = Router::new(RouterSettings {
            max_queued: limits.max_queued_messages,
            max_subscriptions: limits.max_subscriptions,
        });
        if let Some(path) = &limits.state_file {
            match std::fs::read(path) {
                Ok(data) => {
                    let (sessions, retained) = router
                        .restore(&data)
                        .with_context(|| format!("reading {}", path.display()))?;
                    info!(sessions, retained, "general-topic state restored");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let shared = Arc::new(Shared {
            ext,
            acl,
            router,
            sessions: SessionTable::default(),
            shutdown: shutdown_rx,
            shutdown_reason: AtomicU8::new(0),
            conn_counter: AtomicU64::new(0),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            draining: AtomicBool::new(false),
            redirect: Mutex::new(None),
            connect_limit: std::num::NonZeroU32::new(limits.connects_per_ip_per_sec).map(|rate| {
                // Bursts of twice the rate.
                let burst = rate.saturating_mul(std::num::NonZeroU32::MIN.saturating_add(1));
                governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
            }),
            limits,
        });
        Ok(Server {
            shared,
            shutdown_tx,
            mqtt,
            ws,
            tls,
            permits,
        })
    }

    /// The addresses actually bound (useful with port 0): MQTT, WebSocket, TLS.
    pub fn local_addrs(&self) -> (SocketAddr, Option<SocketAddr>, Option<SocketAddr>) {
        let mqtt = self
            .mqtt
            .local_addr()
            .expect("bound listener has an address");
        let ws = self.ws.as_ref().and_then(|l| l.local_addr().ok());
        let tls = self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok());
        (mqtt, ws, tls)
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: self.shared.clone(),
            tx: self.shutdown_tx.clone(),
        }
    }

    /// What the admin API sees and does: sessions, kicks, drain.
    pub fn control(&self) -> crate::drain::ServerControl {
        crate::drain::ServerControl::new(self.shared.clone(), self.shutdown_handle())
    }

    /// Serves until shutdown, then waits up to `grace` for connections to finish.
    pub async fn run(self, grace: Duration) {
        let Server {
            shared,
            shutdown_tx: _keep,
            mqtt,
            ws,
            tls,
            permits,
        } = self;
        let sweeper = tokio::spawn(sweep_sessions(shared.clone()));
        let saver = shared
            .limits
            .state_file
            .clone()
            .map(|path| tokio::spawn(save_state_loop(shared.clone(), path)));
        let mut loops = vec![tokio::spawn(accept_loop(
            shared.clone(),
            mqtt,
            permits.clone(),
            Transport::Tcp,
        ))];
        if let Some(l) = ws {
            loops.push(tokio::spawn(accept_loop(
                shared.clone(),
                l,
                permits.clone(),
                Transport::Ws,
            )));
        }
        if let Some((l, acceptor)) = tls {
            loops.push(tokio::spawn(accept_loop(
                shared.clone(),
                l,
                permits.clone(),
                Transport::Tls(acceptor),
            )));
        }
        let mut shutdown = shared.shutdown.clone();
        let _ = shutdown.wait_for(|s| *s).await;
        for l in loops {
            l.abort();
        }
        sweeper.abort();
        let total = shared.limits.max_connections as u32;
        let all_closed = tokio::time::timeout(grace, permits.acquire_many(total)).await;
        match all_closed {
            Ok(_) => info!("all connections closed"),
            Err(_) => warn!(
                open = shared.limits.max_connections - permits.available_permits(),
                "connections still open after the shutdown grace period"
            ),
        }
        if let Some(saver) = saver {
            saver.abort();
        }
        if let Some(path) = &shared.limits.state_file {
            if let Err(e) = save_state(&shared, path) {
                warn!(error = %e, "could not save the general-topic state");
            }
        }
    }
}

/// What runs on top of an accepted socket.
#[derive(Clone)]
enum Transport {
    Tcp,
    Ws,
    Tls(tokio_rustls::TlsAcceptor),
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    permits: Arc<Semaphore>,
    transport: Transport,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if shared.draining.load(Ordering::Acquire) {
            // A draining node takes no one new: the client retries another node.
            crate::metrics::get()
                .connects
                .get_or_create(&[("result", "draining")])
                .inc();
            continue;
        }
        if let Some(limit) = &shared.connect_limit {
            // 001's rule: an address opening connections faster than this is refused at once.
            if limit.check_key(&peer.ip()).is_err() {
                debug!(%peer, "connection rate limit exceeded: refusing");
                crate::metrics::get()
                    .rate_limited
                    .get_or_create(&[("kind", "connect")])
                    .inc();
                continue;
            }
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(%peer, "connection limit reached: refusing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let transport = transport.clone();
        tokio::spawn(async move {
            serve_socket(shared, stream, peer, transport).await;
            drop(permit);
        });
    }
}

async fn serve_socket(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, t: Transport) {
    // The WebSocket and TLS handshakes are large futures: boxed, so a plain TCP connection's
    // task is not sized for them.
    match t {
        Transport::Tcp => crate::connection::serve(shared, stream, peer, TransportKind::Tcp).await,
        Transport::Ws => Box::pin(serve_ws(shared, stream, peer)).await,
        Transport::Tls(acceptor) => Box::pin(serve_tls(shared, stream, peer, acceptor)).await,
    }
}

async fn serve_ws(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    if shared.limits.demo_page
        && crate::transport::serve_page(&stream, shared.limits.connect_timeout).await
    {
        return;
    }
    match crate::transport::accept_ws(stream, shared.limits.max_packet_size).await {
        Ok(io) => crate::connection::serve(shared, io, peer, TransportKind::Ws).await,
        Err(e) => debug!(%peer, error = %e, "WebSocket handshake failed"),
    }
}

async fn serve_tls(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    let handshake = acceptor.accept(stream);
    match tokio::time::timeout(shared.limits.connect_timeout, handshake).await {
        Ok(Ok(io)) => crate::connection::serve(shared, io, peer, TransportKind::Tls).await,
        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => debug!(%peer, "TLS handshake timed out"),
    }
}

/// Writes the router's state to `path` atomically (beside it, then renamed).
fn save_state(shared: &Shared, path: &std::path::Path) -> std::io::Result<()> {
    let data = shared.router.snapshot();
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Rewrites the state file every two seconds when something in it changed.
async fn save_state_loop(shared: Arc<Shared>, path: std::path::PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut saved = crate::router::changes();
    loop {
        tick.tick().await;
        let now = crate::router::changes();
        if now == saved {
            continue;
        }
        saved = now;
        let (s, p) = (shared.clone(), path.clone());
        match tokio::task::spawn_blocking(move || save_state(&s, &p)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "could not save the general-topic state"),
            Err(_) => {}
        }
    }
}

/// Drops persistent sessions whose client did not come back in time, and logs the abuse
/// counters when they changed (each event is logged once where it happens, then counted).
async fn sweep_sessions(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = crate::metrics::snapshot();
    for n in 0u64.. {
        tick.tick().await;
        // 5.0 session expiry intervals are in seconds: checked every second.
        shared.router.expire();
        if n % 60 != 0 {
            continue;
        }
        shared.sessions.expire(shared.limits.session_expiry);
        if let Some(limit) = &shared.connect_limit {
            limit.retain_recent();
            limit.shrink_to_fit();
        }
        let now = crate::metrics::snapshot();
        if now != last {
            info!(
                outbox_overflows = now.0,
                offline_dropped = now.1,
                protocol_errors = now.2,
                "counters"
            );
            last = now;
        }
    }
}

/// Live sessions and the saved subscriptions of disconnected persistent ones, keyed by
/// (user, client id): two users may use the same client id without touching each other.
#[derive(Default)]
pub(crate) struct SessionTable {
    inner: Mutex<HashMap<Principal, Entry>>,
}

#[derive(Default)]
struct Entry {
    live: Option<Arc<Session>>,
    saved: Option<(Vec<(String, QoS)>, Instant)>,
}

impl SessionTable {
    /// Registers `session`, closing any live session with the same identity (takeover). Returns
    /// the subscriptions to restore when the client resumes a session.
    pub(crate) fn open(
        &self,
        session: &Arc<Session>,
        clean_start: bool,
        persistent: bool,
    ) -> Option<Vec<(String, QoS)>> {
        let mut map = self.inner.lock();
        let entry = map.entry(session.principal.clone()).or_default();
        let mut resumed = entry.saved.take().map(|(subs, _)| subs);
        if let Some(old) = entry.live.replace(session.clone()) {
            info!(client_id = %session.principal.client_id, "session taken over by a new connection");
            if resumed.is_none() {
                resumed = Some(old.subscriptions());
            }
            old.close(DisconnectReason::SessionTakenOver);
        }
        if clean_start || !persistent {
            None
        } else {
            resumed
        }
    }

    /// Unregisters `session` if it is still the live one; keeps `saved` subscriptions if given.
    pub(crate) fn close(&self, session: &Session, saved: Option<Vec<(String, QoS)>>) {
        let mut map = self.inner.lock();
        let Some(entry) = map.get_mut(&session.principal) else {
            return;
        };
        if entry.live.as_ref().map(|s| s.conn_id) != Some(session.conn_id) {
            return;
        }
        entry.live = None;
        entry.saved = saved.map(|s| (s, Instant::now()));
        if entry.saved.is_none() {
            map.remove(&session.principal);
        }
    }

    /// The live sessions (a snapshot).
    pub(crate) fn live(&self) -> Vec<Arc<Session>> {
        self.inner
            .lock()
            .values()
            .filter_map(|e| e.live.clone())
            .collect()
    }

    fn expire(&self, ttl: Duration) {
        let mut map = self.inner.lock();
        map.retain(|_, e| {
            e.live.is_some() || e.saved.as_ref().is_some_and(|(_, at)| at.elapsed() < ttl)
        });
    }
}
