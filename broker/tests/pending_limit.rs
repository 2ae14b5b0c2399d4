//! Every publish a connection is still handling counts against `max_pending_acks`, whatever its
//! QoS: a client cannot make the server hold unbounded work (or memory) by sending QoS 0. Driven
//! against the real server with an extension whose handling never finishes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use mqim_broker::acl::Acl;
use mqim_broker::extension::{AuthDecision, ConnectInfo, Extension, PublishOutcome};
use mqim_broker::server::{Limits, Listeners, Server};
use mqim_broker::session::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Claims `im/`, admits everyone as user "u", and never finishes handling a publish.
struct Stuck {
    calls: AtomicUsize,
}

#[async_trait]
impl Extension for Stuck {
    fn claimed_prefix(&self) -> &str {
        "im/"
    }
    async fn authenticate(&self, _: &ConnectInfo<'_>) -> AuthDecision {
        AuthDecision::User("u".into())
    }
    fn authorize_subscribe(&self, _: &Session, _: &str) -> bool {
        true
    }
    fn on_publish(
        &self,
        _: &Arc<Session>,
        _: &str,
        _: Bytes,
    ) -> BoxFuture<'static, PublishOutcome> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        futures::future::pending().boxed()
    }
    fn on_session_open(&self, _: &Arc<Session>) {}
    fn on_session_close(&self, _: &Arc<Session>) {}
}

fn limits(max_pending_acks: usize) -> Limits {
    Limits {
        max_packet_size: 1 << 16,
        outbox_limit: 16,
        max_inflight: 16,
        max_pending_acks,
        allow_anonymous: false,
        connect_timeout: Duration::from_secs(5),
        max_connections: 16,
        session_expiry: Duration::from_secs(60),
        max_queued_messages: 16,
        max_subscriptions: 16,
        state_file: None,
        connects_per_ip_per_sec: 0,
        demo_page: false,
    }
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut v = vec![first, body.len() as u8];
    v.extend_from_slice(body);
    v
}

#[tokio::test]
async fn qos0_requests_count_against_max_pending_acks() {
    let ext = Arc::new(Stuck {
        calls: AtomicUsize::new(0),
    });
    let listeners = Listeners {
        mqtt: "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        ws: None,
        tls: None,
    };
    let server = Server::bind(&listeners, limits(4), Acl::default(), ext.clone())
        .await
        .unwrap();
    let (addr, _, _) = server.local_addrs();
    tokio::spawn(server.run(Duration::from_secs(1)));

    let mut s = TcpStream::connect(addr).await.unwrap();
    // CONNECT 3.1.1, clean session, client id "d".
    s.write_all(&frame(0x10, b"\x00\x04MQTT\x04\x02\x00\x1e\x00\x01d"))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    // 1,000 QoS 0 requests in one go.
    let one = frame(0x30, b"\x00\x04im/xpayload");
    let all: Vec<u8> = std::iter::repeat_n(one, 1000).flatten().collect();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.write_all(&all)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ext.calls.load(Ordering::SeqCst),
        4,
        "publishes taken in hand beyond the connection's limit"
    );
}
