//! A rumqttc 5.0 client for tests: connects, forwards every incoming packet to a channel, and
//! offers the few waits the tests need.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnAck, Filter, Packet, Publish, SubscribeProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::{Broker, WAIT};

/// A 5.0 client and everything it receives.
pub struct C {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Packet>,
    pub connack: ConnAck,
    task: JoinHandle<()>,
}

pub async fn connect(b: &Broker, id: &str, tune: impl FnOnce(&mut MqttOptions)) -> C {
    let mut o = MqttOptions::new(id, "127.0.0.1", b.mqtt_port);
    o.set_keep_alive(Duration::from_secs(30));
    tune(&mut o);
    let (client, mut el) = AsyncClient::new(o, 1000);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            if let Event::Incoming(p) = ev {
                if tx.send(p).is_err() {
                    return;
                }
            }
        }
    });
    let connack = loop {
        match timeout(WAIT, rx.recv()).await.expect("CONNACK in time") {
            Some(Packet::ConnAck(c)) => break c,
            Some(_) => continue,
            None => panic!("{id}: connection failed"),
        }
    };
    C {
        client,
        rx,
        connack,
        task,
    }
}

impl C {
    pub async fn next(&mut self) -> Packet {
        timeout(WAIT, self.rx.recv())
            .await
            .expect("a packet in time")
            .expect("connection open")
    }

    pub async fn publish(&mut self) -> Publish {
        loop {
            if let Packet::Publish(p) = self.next().await {
                return p;
            }
        }
    }

    /// The SUBACK's reason codes, as text.
    pub async fn suback(&mut self) -> String {
        loop {
            if let Packet::SubAck(s) = self.next().await {
                return format!("{:?}", s.return_codes);
            }
        }
    }

    pub async fn sub(&mut self, filter: &str, qos: QoS) -> String {
        self.client.subscribe(filter, qos).await.unwrap();
        self.suback().await
    }

    pub async fn sub_with(&mut self, f: Filter, id: Option<usize>) -> String {
        let props = SubscribeProperties {
            id,
            user_properties: Vec::new(),
        };
        self.client
            .subscribe_many_with_properties(vec![f], props)
            .await
            .unwrap();
        self.suback().await
    }

    /// Asserts that no PUBLISH arrives within `d`.
    pub async fn no_publish(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            if let Packet::Publish(p) = p {
                panic!("unexpected publish {p:?}");
            }
        }
    }

    pub async fn send(&self, topic: &str, qos: QoS, retain: bool, payload: &str) {
        self.client
            .publish(topic, qos, retain, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }

    /// Drops the socket without DISCONNECT, as a crashed device would.
    pub fn crash(self) {
        self.task.abort();
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.task.abort();
    }
}

pub fn topic(p: &Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}

pub fn persistent(o: &mut MqttOptions) {
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(600));
}
