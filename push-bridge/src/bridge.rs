//! The bridge: decides which device gets which push, sends it through its provider, and records
//! the outcome. It is the IM layer's [`PushHook`].
//!
//! It works from durable state, as Synapse's pushers do: each registered device has a "pushed up
//! to seq" cursor against its user's stream ([`crate::state`]). A committed event only signals
//! the user (a hash-set lookup on the delivery task, nothing more); a worker then compares each
//! of the user's devices' cursors with the stream and pushes what is pending. So a crash or
//! restart resumes pending pushes (from the cursors), and in-memory work is bounded: at most one
//! queued or running evaluation per user, one timer per user, per-device timing state.
//!
//! A device is pushed when it is connected on no node, is registered, and its pending events
//! hold a message from someone else in a conversation the user has not muted, not recalled (or a
//! read by the user on another device, or a recall, that changed the badge: then a badge-only
//! push). The badge is the
//! user's unread total read from the store at push time. At most one push per device per
//! `min_interval`; a burst in between becomes one push with the latest message and badge.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use mqim_im_plugin::error::ImError;
use mqim_im_plugin::hooks::PushHook;
use mqim_im_plugin::presence::Presence;
use mqim_im_plugin::store::Store;
use mqim_im_plugin::ImPlugin;
use mqim_schemas::v1::{event, Event, PushRegisterRequest};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, error, info, warn};

use crate::config::PushConfig;
use crate::notification::{Notification, ProviderKind, Registration};
use crate::provider::{Outcome, Provider};
use crate::state::{LogEntry, PushState, TokenOwner, UserState};

/// Evaluations (and so provider requests) running at once.
const CONCURRENCY: usize = 64;
/// Events read per evaluation: enough to find the newest message of a burst.
const PAGE: usize = 256;
/// Longest retry backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Longest text preview, in characters.
const PREVIEW_CHARS: usize = 200;

/// The push bridge of one node.
pub struct PushBridge {
    store: Arc<dyn Store>,
    presence: Arc<Presence>,
    state: PushState,
    providers: HashMap<ProviderKind, Arc<dyn Provider>>,
    /// Providers whose credentials were refused, with the reason; paused until restart.
    paused: Mutex<HashMap<ProviderKind, String>>,
    min_interval: Duration,
    give_up_after: Duration,
    queue_cap: usize,
    /// Users with at least one registration: the only ones a committed event signals.
    registered: Mutex<HashSet<String>>,
    sched: Mutex<Sched>,
    tx: mpsc::UnboundedSender<String>,
    devices: Mutex<HashMap<(String, String), DeviceTiming>>,
    /// This bridge, for the futures the hook methods return.
    me: std::sync::Weak<PushBridge>,
}

#[derive(Default)]
struct Sched {
    users: HashMap<String, Phase>,
    timers: HashMap<String, Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Queued,
    Running,
    /// Signalled again while running: run once more.
    RunningDirty,
}

/// When a device may be pushed next, and its run of failures.
#[derive(Clone, Copy)]
struct DeviceTiming {
    not_before: Instant,
    attempts: u32,
    failing_since: Option<Instant>,
}

/// What one device should get now.
enum Plan {
    /// Nothing to push; the cursor may move to this seq.
    Nothing(u64),
    /// Push this, covering the stream up to its `seq`.
    Push(Notification),
}

impl PushBridge {
    /// Builds the configured providers, opens the state under `data_dir`, starts the worker
    /// and resumes every pending push. Register the result with
    /// [`ImPlugin::set_push_hook`].
    pub fn start(
        cfg: &PushConfig,
        data_dir: &Path,
        plugin: &Arc<ImPlugin>,
    ) -> anyhow::Result<Arc<PushBridge>> {
        let give_up_after = cfg.give_up_after()?;
        let mut providers: HashMap<ProviderKind, Arc<dyn Provider>> = HashMap::new();
        if let Some(a) = &cfg.apns {
            let client = crate::apns::Apns::client_for(a)?;
            providers.insert(
                ProviderKind::Apns,
                Arc::new(crate::apns::Apns::new(a, client, give_up_after)?),
            );
        }
        if let Some(f) = &cfg.fcm {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()?;
            providers.insert(
                ProviderKind::Fcm,
                Arc::new(crate::fcm::Fcm::new(f, client)?),
            );
        }
        if let Some(w) = &cfg.webhook {
            providers.insert(
                ProviderKind::Webhook,
                Arc::new(crate::webhook::Webhook::new(w)?),
            );
        }
        let state = PushState::open(data_dir)?;
        let mut registered = HashSet::new();
        for user in state.users()? {
            if has_registration(&state.get(&user)?) {
                registered.insert(user);
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let bridge = Arc::new_cyclic(|me| PushBridge {
            store: plugin.store().clone(),
            presence: plugin.presence().clone(),
            state,
            providers,
            paused: Mutex::new(HashMap::new()),
            min_interval: Duration::from_millis(cfg.min_interval_ms),
            give_up_after,
            queue_cap: cfg.queue.max(1),
            registered: Mutex::new(registered.clone()),
            sched: Mutex::new(Sched::default()),
            tx,
            devices: Mutex::new(HashMap::new()),
            me: me.clone(),
        });
        bridge.clone().spawn_worker(rx);
        let on: Vec<&str> = bridge.providers.keys().map(|k| k.name()).collect();
        info!(providers = ?on, registered_users = registered.len(), "push bridge started");
        for user in registered {
            bridge.signal(&user);
        }
        Ok(bridge)
    }

    fn spawn_worker(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<String>) {
        let limit = Arc::new(Semaphore::new(CONCURRENCY));
        tokio::spawn(async move {
            while let Some(user) = rx.recv().await {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                self.sched.lock().users.insert(user.clone(), Phase::Running);
                let this = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.evaluate(&user).await {
                        warn!(%user, error = %e, "push evaluation failed; retrying in 5 s");
                        this.wake_at(&user, Instant::now() + Duration::from_secs(5));
                    }
                    drop(permit);
                    this.finished(&user);
                });
            }
        });
    }

    /// Queues an evaluation of `user` (at most one queued or running per user).
    fn signal(&self, user: &str) {
        let mut s = self.sched.lock();
        match s.users.get_mut(user) {
            None => {
                if s.users.len() >= self.queue_cap {
                    // The cursors keep the work; the next signal or restart picks it up.
                    debug!(%user, "push queue full; signal dropped");
                    return;
                }
                s.users.insert(user.to_string(), Phase::Queued);
                let _ = self.tx.send(user.to_string());
            }
            Some(p @ Phase::Running) => *p = Phase::RunningDirty,
            Some(_) => {}
        }
    }

    fn finished(&self, user: &str) {
        let mut s = self.sched.lock();
        if s.users.get(user) == Some(&Phase::RunningDirty) {
            s.users.insert(user.to_string(), Phase::Queued);
            let _ = self.tx.send(user.to_string());
        } else {
            s.users.remove(user);
        }
    }

    /// Evaluates `user` again at `at` (one timer per user: the earliest wins).
    fn wake_at(self: &Arc<Self>, user: &str, at: Instant) {
        {
            let mut s = self.sched.lock();
            if s.timers.get(user).is_some_and(|t| *t <= at) {
                return;
            }
            s.timers.insert(user.to_string(), at);
        }
        let (this, user) = (self.clone(), user.to_string());
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            {
                let mut s = this.sched.lock();
                if s.timers.get(&user) == Some(&at) {
                    s.timers.remove(&user);
                }
            }
            this.signal(&user);
        });
    }

    /// Pushes whatever is pending for `user`'s offline devices.
    async fn evaluate(self: &Arc<Self>, user: &str) -> anyhow::Result<()> {
        let st = self.state.get(user)?;
        let regs: Vec<(String, Registration, u64, Option<u64>)> = st
            .devices
            .iter()
            .filter_map(|(d, s)| {
                s.registration
                    .clone()
                    .map(|r| (d.clone(), r, s.pushed_up_to, s.badge))
            })
            .collect();
        if regs.is_empty() {
            return Ok(());
        }
        let last_seq = self.store.last_seq(user).await?;
        if regs.iter().all(|r| r.2 >= last_seq) {
            return Ok(());
        }
        // Devices online on other nodes (stores that share presence); unknown if it fails.
        let elsewhere = self.store.online_devices(user).await.ok().flatten();
        let mut badge = None;
        for (device, reg, cursor, last_badge) in regs {
            if cursor >= last_seq {
                continue;
            }
            let online = self.presence.is_online(user, &device)
                || elsewhere
                    .as_ref()
                    .is_some_and(|v| v.iter().any(|(d, _)| *d == device));
            if online {
                // It got these events live. Not synced: after a crash the worst case is one
                // push of something the device already has.
                self.state.update_lazy(user, |s| {
                    if let Some(d) = s.devices.get_mut(&device) {
                        if d.registration.as_ref() == Some(&reg) {
                            d.pushed_up_to = d.pushed_up_to.max(last_seq);
                        }
                    }
                })?;
                continue;
            }
            let Some(provider) = self.providers.get(&reg.provider).cloned() else {
                continue; // switched off in the config: left pending
            };
            if self.paused.lock().contains_key(&reg.provider) {
                continue;
            }
            let key = (user.to_string(), device.clone());
            let now = Instant::now();
            if let Some(t) = self.devices.lock().get(&key) {
                if t.not_before > now {
                    self.wake_at(user, t.not_before);
                    continue;
                }
            }
            let plan = self
                .plan(
                    user, &st, &device, &reg, cursor, last_seq, last_badge, &mut badge,
                )
                .await?;
            let n = match plan {
                Plan::Nothing(upto) => {
                    // Not synced either: losing it only means deciding "nothing" again.
                    self.state.update_lazy(user, |s| {
                        if let Some(d) = s.devices.get_mut(&device) {
                            if d.registration.as_ref() == Some(&reg) {
                                d.pushed_up_to = d.pushed_up_to.max(upto);
                            }
                        }
                    })?;
                    continue;
                }
                Plan::Push(n) => n,
            };
            let outcome = provider.send(&reg, &n).await;
            self.record(user, &device, &reg, &n, outcome)?;
        }
        Ok(())
    }

    /// Decides what `device` gets for the events after `cursor`.
    #[allow(clippy::too_many_arguments)]
    async fn plan(
        &self,
        user: &str,
        st: &UserState,
        device: &str,
        reg: &Registration,
        cursor: u64,
        last_seq: u64,
        last_badge: Option<u64>,
        badge: &mut Option<u64>,
    ) -> anyhow::Result<Plan> {
        let mut page = self.store.read_stream(user, cursor, PAGE).await?;
        if page.has_more {
            // Only the newest events matter for a push: read the tail.
            page = self
                .store
                .read_stream(user, last_seq.saturating_sub(PAGE as u64).max(cursor), PAGE)
                .await?;
        }
        let Some(covered) = page.events.last().map(|e| e.seq) else {
            return Ok(Plan::Nothing(cursor));
        };
        let now_ms = mqim_im_plugin::now_ms();
        let horizon = now_ms - self.give_up_after.as_millis() as i64;
        // A recalled message is never pushed (its copy in the stream is already rewritten).
        let newest = page.events.iter().rev().find_map(|e| match &e.body {
            Some(event::Body::Message(m))
                if m.from != user
                    && !m.recalled
                    && m.ts >= horizon
                    && !st.muted(&m.conversation, now_ms) =>
            {
                Some(m)
            }
            _ => None,
        });
        // What may have changed the badge without a message to show: a read on another device,
        // a recall of an unread message.
        let own_read = page.events.iter().rev().find_map(|e| match &e.body {
            Some(event::Body::Read(r)) if r.by == user => Some(r.conversation.clone()),
            Some(event::Body::Recalled(r)) => Some(r.conversation.clone()),
            _ => None,
        });
        if newest.is_none() && own_read.is_none() {
            return Ok(Plan::Nothing(covered));
        }
        let total = match *badge {
            Some(b) => b,
            None => {
                let b = self.unread_total(user).await?;
                *badge = Some(b);
                b
            }
        };
        let n = match newest {
            Some(m) => Notification {
                user: user.to_string(),
                device: device.to_string(),
                conversation: m.conversation.clone(),
                seq: covered,
                msg_id: Some(m.msg_id),
                from: m.from.clone(),
                badge: total,
                preview: m
                    .text
                    .as_ref()
                    .filter(|_| reg.preview)
                    .map(|t| t.chars().take(PREVIEW_CHARS).collect()),
            },
            None if last_badge == Some(total) => return Ok(Plan::Nothing(covered)),
            None => Notification {
                user: user.to_string(),
                device: device.to_string(),
                conversation: own_read.unwrap_or_default(),
                seq: covered,
                msg_id: None,
                from: String::new(),
                badge: total,
                preview: None,
            },
        };
        Ok(Plan::Push(n))
    }

    /// The user's unread total across conversations, from the store.
    async fn unread_total(&self, user: &str) -> anyhow::Result<u64> {
        let page = self.store.conversations(user, 1000).await?;
        Ok(page.conversations.iter().map(|c| c.unread).sum())
    }

    /// Moves `device`'s cursor to `upto` (and its badge), if its registration is still `reg`.
    fn advance(
        &self,
        user: &str,
        device: &str,
        reg: &Registration,
        upto: u64,
        badge: Option<u64>,
        log: Option<LogEntry>,
    ) -> std::io::Result<()> {
        self.state.update(user, |s| {
            if let Some(d) = s.devices.get_mut(device) {
                if d.registration.as_ref() == Some(reg) {
                    d.pushed_up_to = d.pushed_up_to.max(upto);
                    if badge.is_some() {
                        d.badge = badge;
                    }
                }
                if let Some(e) = log {
                    d.log(e);
                }
            }
        })
    }

    /// Acts on a push outcome: cursor, timing, registration, provider pause, push log.
    fn record(
        self: &Arc<Self>,
        user: &str,
        device: &str,
        reg: &Registration,
        n: &Notification,
        outcome: Outcome,
    ) -> std::io::Result<()> {
        let now = Instant::now();
        let key = (user.to_string(), device.to_string());
        let entry = |status: &str, reason: String| LogEntry {
            at_ms: mqim_im_plugin::now_ms(),
            provider: reg.provider.name().into(),
            status: status.into(),
            reason,
            seq: n.seq,
        };
        let log = entry(outcome.status(), outcome.reason().to_string());
        match outcome {
            Outcome::Delivered => {
                debug!(%user, %device, seq = n.seq, badge = n.badge, "pushed");
                self.devices.lock().insert(
                    key,
                    DeviceTiming {
                        not_before: now + self.min_interval,
                        attempts: 0,
                        failing_since: None,
                    },
                );
                self.advance(user, device, reg, n.seq, Some(n.badge), Some(log))
            }
            Outcome::Retry { after, reason } => {
                let mut devices = self.devices.lock();
                let t = devices.entry(key).or_insert(DeviceTiming {
                    not_before: now,
                    attempts: 0,
                    failing_since: None,
                });
                t.attempts += 1;
                let since = *t.failing_since.get_or_insert(now);
                if now.duration_since(since) >= self.give_up_after {
                    *t = DeviceTiming {
                        not_before: now + self.min_interval,
                        attempts: 0,
                        failing_since: None,
                    };
                    drop(devices);
                    warn!(%user, %device, %reason, "giving up on a push");
                    let e = entry("gave_up", reason);
                    return self.advance(user, device, reg, n.seq, None, Some(e));
                }
                let backoff = backoff(t.attempts);
                let delay = match after {
                    Some(d) if t.attempts == 1 => d,
                    Some(d) => d.max(backoff),
                    None => backoff,
                };
                t.not_before = now + delay;
                drop(devices);
                info!(%user, %device, %reason, ?delay, "push will be retried");
                self.wake_at(user, now + delay);
                self.advance(user, device, reg, 0, None, Some(log))
            }
            Outcome::TokenGone(reason) => {
                warn!(%user, %device, provider = reg.provider.name(), %reason,
                    "push token no longer valid; registration removed");
                self.remove_registration(user, device, reg, log)
            }
            Outcome::Rejected(reason) => {
                warn!(%user, %device, provider = reg.provider.name(), %reason, "push rejected");
                self.advance(user, device, reg, n.seq, None, Some(log))
            }
            Outcome::AuthFailed(reason) => {
                error!(provider = reg.provider.name(), %reason,
                    "PUSH PROVIDER REFUSED OUR CREDENTIALS: pushes through it are paused until \
                     the configuration is fixed and mqim restarted");
                self.paused.lock().insert(reg.provider, reason);
                self.advance(user, device, reg, 0, None, Some(log))
            }
        }
    }

    /// Removes `device`'s registration if it is still `reg`, logging why.
    fn remove_registration(
        &self,
        user: &str,
        device: &str,
        reg: &Registration,
        log: LogEntry,
    ) -> std::io::Result<()> {
        let still = self.state.update(user, |s| {
            let d = s.devices.entry(device.to_string()).or_default();
            let still = d.registration.as_ref() == Some(reg);
            if still {
                d.registration = None;
            }
            d.log(log);
            (still, has_registration(s))
        })?;
        if still.0 {
            let me = TokenOwner {
                user: user.into(),
                device: device.into(),
            };
            self.state.clear_token(&token_key(reg), &me)?;
        }
        if !still.1 {
            self.registered.lock().remove(user);
        }
        Ok(())
    }

    async fn do_register(
        self: Arc<Self>,
        user: String,
        device: String,
        req: PushRegisterRequest,
    ) -> Result<(), ImError> {
        let kind = ProviderKind::parse(&req.provider).ok_or_else(|| {
            ImError::invalid("`provider` must be \"apns\", \"fcm\" or \"webhook\"")
        })?;
        let provider = self.providers.get(&kind).ok_or_else(|| {
            ImError::invalid(format!(
                "push provider {:?} is not configured on this server",
                kind.name()
            ))
        })?;
        if req.token.is_empty() {
            return Err(ImError::invalid("`token` is required"));
        }
        let reg = Registration {
            provider: kind,
            token: req.token,
            topic: req.topic,
            sandbox: req.sandbox,
            locale: req.locale,
            preview: req.preview,
        };
        provider
            .check_token(&reg)
            .map_err(|e| ImError::invalid(format!("{} token refused: {e}", kind.name())))?;
        // Nothing already in the stream is pushed to a device that registers now.
        let last_seq = self.store.last_seq(&user).await?;
        let me = TokenOwner {
            user: user.clone(),
            device: device.clone(),
        };
        let key = token_key(&reg);
        let io = |e: std::io::Error| {
            warn!(error = %e, "push state write failed");
            ImError::unavailable("push registrations are unavailable; retry")
        };
        // A token held by another device (a phone that changed hands) moves here.
        if let Some(prev) = self.state.token_owner(&key).map_err(io)? {
            if prev != me {
                let moved = LogEntry {
                    at_ms: mqim_im_plugin::now_ms(),
                    provider: kind.name().into(),
                    status: "moved".into(),
                    reason: format!("token registered by {user}/{device}"),
                    seq: 0,
                };
                let prev_reg = self
                    .state
                    .get(&prev.user)
                    .map_err(io)?
                    .devices
                    .get(&prev.device)
                    .and_then(|d| d.registration.clone())
                    .filter(|r| token_key(r) == key);
                if let Some(r) = prev_reg {
                    self.remove_registration(&prev.user, &prev.device, &r, moved)
                        .map_err(io)?;
                }
            }
        }
        let logged = LogEntry {
            at_ms: mqim_im_plugin::now_ms(),
            provider: kind.name().into(),
            status: "registered".into(),
            reason: String::new(),
            seq: last_seq,
        };
        let old = self
            .state
            .update(&user, |s| {
                let d = s.devices.entry(device.clone()).or_default();
                let old = d.registration.replace(reg.clone());
                d.pushed_up_to = d.pushed_up_to.max(last_seq);
                d.badge = None;
                d.log(logged);
                old
            })
            .map_err(io)?;
        if let Some(old) = old.filter(|o| token_key(o) != key) {
            self.state.clear_token(&token_key(&old), &me).map_err(io)?;
        }
        self.state.set_token_owner(&key, &me).map_err(io)?;
        self.devices.lock().remove(&(user.clone(), device));
        self.registered.lock().insert(user);
        Ok(())
    }
}

fn has_registration(s: &UserState) -> bool {
    s.devices.values().any(|d| d.registration.is_some())
}

fn token_key(r: &Registration) -> String {
    format!("{}:{}", r.provider.name(), r.token)
}

/// 1 s, 2 s, 4 s, ... up to an hour.
fn backoff(attempts: u32) -> Duration {
    let secs = 1u64 << attempts.saturating_sub(1).min(12);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

fn io_error(e: std::io::Error) -> ImError {
    warn!(error = %e, "push state write failed");
    ImError::unavailable("push settings are unavailable; retry")
}

impl PushHook for PushBridge {
    fn event_committed(&self, user: &str, _event: &Event) {
        if self.registered.lock().contains(user) {
            self.signal(user);
        }
    }

    fn register(
        &self,
        user: &str,
        device: &str,
        req: PushRegisterRequest,
    ) -> BoxFuture<'static, Result<(), ImError>> {
        let Some(this) = self.me.upgrade() else {
            return futures::future::ready(Err(ImError::unavailable("shutting down"))).boxed();
        };
        this.do_register(user.to_string(), device.to_string(), req)
            .boxed()
    }

    fn unregister(&self, user: &str, device: &str) -> BoxFuture<'static, Result<(), ImError>> {
        let reg = self
            .state
            .get(user)
            .ok()
            .and_then(|s| s.devices.get(device).and_then(|d| d.registration.clone()));
        let r = match reg {
            Some(reg) => {
                let e = LogEntry {
                    at_ms: mqim_im_plugin::now_ms(),
                    provider: reg.provider.name().into(),
                    status: "unregistered".into(),
                    reason: "pushUnregister".into(),
                    seq: 0,
                };
                self.remove_registration(user, device, &reg, e)
                    .map_err(io_error)
            }
            None => Ok(()),
        };
        futures::future::ready(r).boxed()
    }

    fn mute(
        &self,
        user: &str,
        conversation: &str,
        until_ms: Option<i64>,
    ) -> BoxFuture<'static, Result<(), ImError>> {
        let r = self
            .state
            .update(user, |s| {
                s.mutes.insert(conversation.to_string(), until_ms);
            })
            .map_err(io_error);
        futures::future::ready(r).boxed()
    }

    fn unmute(&self, user: &str, conversation: &str) -> BoxFuture<'static, Result<(), ImError>> {
        let r = self
            .state
            .update(user, |s| {
                s.mutes.remove(conversation);
            })
            .map_err(io_error);
        futures::future::ready(r).boxed()
    }
}
