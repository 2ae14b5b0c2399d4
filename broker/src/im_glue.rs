//! Plugs `mqim-im-plugin` into the broker's extension interface. The only module of the
//! connection layer that knows the IM service exists; it translates, it decides nothing.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use mqim_im_plugin::bans::BanStore;
use mqim_im_plugin::observe::Observer;
use mqim_im_plugin::presence::DeviceLink;
use mqim_im_plugin::{topics, ImPlugin};
use mqim_schemas::v1::ErrorCode;
use tracing::info;

use crate::codec::QoS;
use crate::extension::{AuthDecision, ConnectInfo, Extension, PublishOutcome};
use crate::session::Session;

/// The IM service as a broker extension.
pub struct ImExtension {
    plugin: Arc<ImPlugin>,
    bans: Arc<BanStore>,
}

impl ImExtension {
    /// The IM service, refusing the users `bans` lists.
    pub fn new(plugin: Arc<ImPlugin>, bans: Arc<BanStore>) -> Self {
        ImExtension { plugin, bans }
    }
}

/// The IM layer's requests and deliveries, counted in the broker's metrics.
pub struct MetricsObserver;

impl Observer for MetricsObserver {
    fn request(&self, op: &'static str, error: Option<ErrorCode>, elapsed: std::time::Duration) {
        let m = crate::metrics::get();
        let result = error.map_or("ok", |c| c.as_str_name());
        m.requests
            .get_or_create(&[("op", op), ("result", result)])
            .inc();
        if op == "send" {
            match error {
                None => {
                    m.messages_received.inc();
                    m.store_commit.observe(elapsed);
                }
                Some(ErrorCode::RateLimited) => {
                    m.rate_limited.get_or_create(&[("kind", "send")]).inc();
                }
                Some(_) => {}
            }
        }
    }

    fn delivered(&self, sent_at_ms: Option<i64>, devices: usize) {
        let Some(sent) = sent_at_ms else { return };
        if devices == 0 {
            return;
        }
        let m = crate::metrics::get();
        m.messages_delivered.inc_by(devices as u64);
        let ms = (mqim_im_plugin::now_ms() - sent).max(0) as u64;
        m.send_to_deliver
            .observe(std::time::Duration::from_millis(ms));
    }
}

/// A session seen by the IM layer as a device.
struct Device(Arc<Session>);

impl DeviceLink for Device {
    fn conn_id(&self) -> u64 {
        self.0.conn_id
    }
    fn user(&self) -> &str {
        self.0.user().unwrap_or_default()
    }
    fn device(&self) -> &str {
        self.0.client_id()
    }
    fn is_subscribed(&self, topic: &str) -> bool {
        self.0.is_subscribed(topic)
    }
    fn deliver(&self, topic: &str, payload: Bytes) -> bool {
        self.0.deliver(topic, payload)
    }
    fn deliver_live(&self, topic: &str, payload: Bytes) -> bool {
        self.0.deliver_at_most(topic, payload, QoS::AtMostOnce)
    }
}

#[async_trait]
impl Extension for ImExtension {
    fn claimed_prefix(&self) -> &str {
        topics::PREFIX
    }

    async fn authenticate(&self, info: &ConnectInfo<'_>) -> AuthDecision {
        let Some(user) = info.username else {
            return AuthDecision::Anonymous;
        };
        if user == mqim_im_plugin::admin::SYSTEM_SENDER {
            return AuthDecision::Denied("the system sender cannot log in".into());
        }
        match self.plugin.authenticate(user, info.password) {
            Ok(()) => match self.bans.check(user) {
                Some(ban) => AuthDecision::Banned(ban.reason),
                None => AuthDecision::User(user.to_string()),
            },
            Err(e) => AuthDecision::Denied(e.to_string()),
        }
    }

    fn authorize_subscribe(&self, session: &Session, filter: &str) -> bool {
        session
            .user()
            .is_some_and(|u| self.plugin.may_subscribe(u, session.client_id(), filter))
    }

    fn on_publish(
        &self,
        session: &Arc<Session>,
        topic: &str,
        payload: Bytes,
    ) -> BoxFuture<'static, PublishOutcome> {
        let Some(user) = session.user() else {
            return futures::future::ready(PublishOutcome::NotAuthorized).boxed();
        };
        let Some(format) = self.plugin.uplink_format(user, session.client_id(), topic) else {
            info!(conn = session.conn_id, %topic, "IM publish to a topic the device does not own");
            return futures::future::ready(PublishOutcome::NotAuthorized).boxed();
        };
        let link: Arc<dyn DeviceLink> = Arc::new(Device(session.clone()));
        self.plugin
            .handle_uplink(link, format, payload)
            .map(|()| PublishOutcome::Accepted)
            .boxed()
    }

    fn on_session_open(&self, session: &Arc<Session>) {
        if session.user().is_some() {
            self.plugin.device_online(Arc::new(Device(session.clone())));
        }
    }

    fn on_session_close(&self, session: &Arc<Session>) {
        if let Some(user) = session.user() {
            self.plugin
                .device_offline(user, session.client_id(), session.conn_id);
        }
    }
}
