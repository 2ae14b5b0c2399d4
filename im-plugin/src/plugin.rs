//! `ImPlugin`: the IM service behind the `im/` topic tree. It authorizes IM topics, decodes
//! requests, dispatches them to `ops/`, and answers on the requesting device's downlink.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use mqim_schemas::v1::request::Op;
use parking_lot::Mutex;
use tracing::{info, warn};

use crate::auth::{AuthError, Authenticator};
use crate::config::ImConfig;
use crate::delivery::DeliveryQueue;
use crate::groups::Registry;
use crate::hooks::{Hooks, PushHook};
use crate::limits::SendLimiter;
use crate::msgid::MsgIdGen;
use crate::presence::{DeviceLink, Presence};
use crate::store::Store;
use crate::topics::{self, Direction, Format};
use crate::{ops, wire};

/// The IM service of one node.
pub struct ImPlugin {
    pub(crate) cfg: ImConfig,
    auth: Authenticator,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) ids: MsgIdGen,
    /// Held while a msgid is assigned, its append enqueued and its delivery slot taken, so the
    /// three orders agree.
    pub(crate) order: Mutex<()>,
    pub(crate) presence: Arc<Presence>,
    pub(crate) deliveries: DeliveryQueue,
    pub(crate) send_limit: SendLimiter,
    pub(crate) hooks: Arc<Hooks>,
    /// Every group and its members, in step with the order of writes.
    pub(crate) groups: Arc<Registry>,
    /// The sensitive-word filter on sends (empty until the broker loads a list).
    pub(crate) moderation: crate::moderation::Moderation,
    /// Blocks, presence settings and watches, typing rates.
    pub(crate) extras: crate::extras::Extras,
}

impl ImPlugin {
    /// Opens the service on `store`; msgids continue above the highest one stored.
    pub async fn open(
        cfg: ImConfig,
        auth: Authenticator,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<Arc<ImPlugin>> {
        let floor = store.max_msg_id().await?;
        let ids = MsgIdGen::new(cfg.node_id, floor)?;
        let presence = Arc::new(Presence::default());
        let send_limit = SendLimiter::new(cfg.max_sends_per_sec, cfg.send_burst);
        let hooks = Arc::new(Hooks::default());
        let groups = Arc::new(Registry::load(&store).await?);
        let debounce = Duration::from_millis(cfg.presence_debounce_ms);
        let extras = crate::extras::Extras::load(&store, debounce).await?;
        let plugin = Arc::new(ImPlugin {
            groups,
            send_limit,
            cfg,
            auth,
            store,
            ids,
            order: Mutex::new(()),
            deliveries: DeliveryQueue::start_with_hooks(presence.clone(), hooks.clone()),
            presence,
            hooks,
            moderation: Default::default(),
            extras,
        });
        crate::extras::news::follow(&plugin);
        Ok(plugin)
    }

    /// Registers the push hook (once, at start-up); false if one was already set.
    pub fn set_push_hook(&self, hook: Arc<dyn PushHook>) -> bool {
        self.hooks.set_push(hook)
    }

    /// The store this service runs on (the push bridge reads streams and unread counts).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// This node's online devices.
    pub fn presence(&self) -> &Arc<Presence> {
        &self.presence
    }

    /// Checks a connecting user's token.
    pub fn authenticate(&self, user: &str, token: Option<&str>) -> Result<(), AuthError> {
        self.auth.verify(user, token)
    }

    /// May `user`'s device `device` subscribe to `filter`? Only its own downlinks, exactly.
    pub fn may_subscribe(&self, user: &str, device: &str, filter: &str) -> bool {
        matches!(topics::parse(filter), Some(t)
            if t.user == user && t.device == device && t.direction == Direction::Down)
    }

    /// The format of an uplink `topic` this device may publish to, or None if it may not.
    pub fn uplink_format(&self, user: &str, device: &str, topic: &str) -> Option<Format> {
        match topics::parse(topic) {
            Some(t) if t.user == user && t.device == device && t.direction == Direction::Up => {
                Some(t.format)
            }
            _ => None,
        }
    }

    pub fn device_online(self: &Arc<Self>, link: Arc<dyn DeviceLink>) {
        self.store
            .device_online(link.user(), link.device(), link.conn_id());
        let user = link.user().to_string();
        self.presence.add(link);
        if self.presence.devices_of(&user) == 1 {
            self.extras.watch.changed(self, &user);
        }
    }

    pub fn device_offline(self: &Arc<Self>, user: &str, device: &str, conn_id: u64) {
        self.presence.remove(user, conn_id);
        self.store.device_offline(user, device, conn_id);
        self.extras.watch.connection_closed(conn_id);
        if self.presence.devices_of(user) == 0 {
            let ts = self.extras.seen(user);
            self.extras.watch.changed(self, user);
            // Durable too, so `lastSeen` survives a restart; a failure costs only that.
            let (store, user) = (self.store.clone(), user.to_string());
            tokio::spawn(async move {
                if let Some(log) = store.extras_log() {
                    if let Err(e) = log.set_last_seen(&user, ts).await {
                        tracing::debug!(%user, error = %e, "last seen not recorded");
                    }
                }
            });
        }
    }

    /// Handles one request from `link` on its uplink in `format`. The call decodes the request
    /// and starts it (a send is enqueued to the store in call order); the future completes when
    /// the reply has been queued on the device's downlink. Bad input gets an error reply.
    pub fn handle_uplink(
        self: &Arc<Self>,
        link: Arc<dyn DeviceLink>,
        format: Format,
        payload: Bytes,
    ) -> BoxFuture<'static, ()> {
        let (id, op) = match wire::decode_request(format, &payload) {
            Ok(req) => (req.id, req.op),
            Err((id, e)) => {
                info!(user = link.user(), device = link.device(), error = %e, "bad request");
                reply(&link, format, wire::error_reply(id, &e));
                return futures::future::ready(()).boxed();
            }
        };
        let observed = (
            op.as_ref().map(crate::observe::op_name),
            std::time::Instant::now(),
        );
        let fut = match op {
            Some(Op::Send(r)) => ops::send::start(self, &link, r),
            Some(Op::Sync(r)) => ops::sync::start(self, &link, r),
            Some(Op::Ack(r)) => ops::ack::start(self, &link, r),
            Some(Op::Conversations(r)) => ops::conversations::start(self, &link, r),
            Some(Op::Read(r)) => ops::read::start(self, &link, r),
            Some(Op::History(r)) => ops::history::start(self, &link, r),
            Some(Op::GroupCreate(r)) => ops::group_admin::create(self, &link, r),
            Some(Op::GroupAdd(r)) => ops::group_admin::add(self, &link, r),
            Some(Op::GroupRemove(r)) => ops::group_admin::remove(self, &link, r),
            Some(Op::GroupLeave(r)) => ops::group_admin::leave(self, &link, r),
            Some(Op::GroupUpdate(r)) => ops::group_admin::update(self, &link, r),
            Some(Op::GroupRole(r)) => ops::group_admin::role(self, &link, r),
            Some(Op::GroupTransfer(r)) => ops::group_admin::transfer(self, &link, r),
            Some(Op::GroupDisband(r)) => ops::group_admin::disband(self, &link, r),
            Some(Op::GroupInfo(r)) => ops::group_query::group_info(self, &link, r),
            Some(Op::GroupMembers(r)) => ops::group_query::group_members(self, &link, r),
            Some(Op::GroupSync(r)) => ops::group_query::group_sync(self, &link, r),
            Some(Op::PushRegister(r)) => ops::push_register::start(self, &link, r),
            Some(Op::PushUnregister(r)) => ops::push_unregister::start(self, &link, r),
            Some(Op::Mute(r)) => ops::mute::start(self, &link, r),
            Some(Op::Unmute(r)) => ops::unmute::start(self, &link, r),
            Some(Op::Recall(r)) => ops::recall::start(self, &link, r),
            Some(Op::Edit(r)) => ops::edit::start(self, &link, r),
            Some(Op::Typing(r)) => ops::typing::start(self, &link, r),
            Some(Op::Presence(r)) => ops::presence::presence(self, &link, r),
            Some(Op::PresenceWatch(r)) => ops::presence::watch(self, &link, r),
            Some(Op::Settings(r)) => ops::presence::settings(self, &link, r),
            Some(Op::Block(r)) => ops::block::block(self, &link, r),
            Some(Op::Unblock(r)) => ops::block::unblock(self, &link, r),
            Some(Op::Blocked(r)) => ops::block::blocked(self, &link, r),
            // decode_request rejects requests without an operation.
            None => return futures::future::ready(()).boxed(),
        };
        let hooks = self.hooks.clone();
        async move {
            let result = fut.await;
            if let (Some(o), (Some(op), started)) = (hooks.observer(), observed) {
                o.request(op, result.as_ref().err().map(|e| e.code), started.elapsed());
            }
            let d = match result {
                Ok(result) => wire::reply(id, result),
                Err(e) => wire::error_reply(id, &e),
            };
            reply(&link, format, d);
        }
        .boxed()
    }

    /// Removes expired resend-dedup entries every hour.
    pub fn spawn_dedup_purge(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                this.send_limit.sweep();
                let cutoff = crate::now_ms() - (this.cfg.dedup_ttl_secs as i64) * 1000;
                match this.store.purge_dedup(cutoff).await {
                    Ok(n) if n > 0 => info!(removed = n, "expired resend-dedup entries"),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "dedup purge failed"),
                }
            }
        })
    }
}

fn reply(link: &Arc<dyn DeviceLink>, format: Format, d: mqim_schemas::v1::Downlink) {
    let topic = topics::downlink(link.user(), link.device(), format);
    link.deliver(&topic, wire::encode(format, &d));
}
