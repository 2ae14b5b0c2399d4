//! The extension interface: how a plugin (mqim's IM layer) hooks into the MQTT server.
//!
//! The server stays a general MQTT broker. An extension decides who may connect, claims one topic
//! tree (for mqim: `im/`), authorizes subscriptions and publishes inside that tree, receives the
//! publishes made to it and delivers to sessions through [`Session::deliver`]. Nothing in the
//! claimed tree ever reaches the general router, so no wildcard filter can read it.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::session::Session;

/// What the server knows when a client connects.
#[derive(Debug)]
pub struct ConnectInfo<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub peer: SocketAddr,
}

/// The extension's verdict on a CONNECT.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthDecision {
    /// Accept the client as this user.
    User(String),
    /// The client gave no credentials: the server applies its anonymous policy.
    Anonymous,
    /// Credentials were given and are wrong, expired or for someone else.
    Denied(String),
    /// The user is banned (5.0 CONNACK 0x8A; 3.1.1 "not authorized").
    Banned(String),
}

/// Result of handling a publish in the claimed tree; decides the PUBACK (5.0 reason code).
#[derive(Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    Accepted,
    NotAuthorized,
}

#[async_trait]
pub trait Extension: Send + Sync + 'static {
    /// The topic prefix this extension owns, e.g. `"im/"`.
    fn claimed_prefix(&self) -> &str;

    /// Checks credentials; called for every connection before CONNACK.
    async fn authenticate(&self, info: &ConnectInfo<'_>) -> AuthDecision;

    /// May `session` subscribe to `filter` (which starts with the claimed prefix)? The server
    /// grants only exact topics: the filter is delivered to through [`Session::deliver`].
    fn authorize_subscribe(&self, session: &Session, filter: &str) -> bool;

    /// Handles a publish to `topic` (which starts with the claimed prefix). The call itself runs
    /// in the order the client sent its publishes and should fix that order (for IM: enqueue to
    /// the store); the returned future completes when the publish is handled. The server sends
    /// the PUBACK only then, so a durable extension acknowledges only what it stored. Publishes of
    /// one connection are pipelined: the next call may come before the previous future completes.
    fn on_publish(
        &self,
        session: &Arc<Session>,
        topic: &str,
        payload: Bytes,
    ) -> BoxFuture<'static, PublishOutcome>;

    /// A session subscribed to a claimed topic it was authorized for.
    fn on_subscribed(&self, _session: &Arc<Session>, _topic: &str) {}

    /// A session was accepted (after CONNACK).
    fn on_session_open(&self, session: &Arc<Session>);

    /// A session ended (disconnect, takeover, keepalive timeout, shutdown).
    fn on_session_close(&self, session: &Arc<Session>);
}
