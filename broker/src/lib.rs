//! mqim's connection layer: a general MQTT 3.1.1 / 5.0 server with a small extension interface.
//!
//! Layout:
//! - `server`: listeners, the connection limit, the session table, shutdown.
//! - `drain`: the server as an operator controls it: sessions, kicks, draining with redirect.
//! - `connection`: one client's MQTT state machine, from CONNECT to close.
//! - `session`: a live session as others see it, with its bounded outbox.
//! - `codec`: MQTT framing for both protocol versions behind one packet model.
//! - `transport`: TCP and WebSocket (`/mqtt`) as byte streams; `tls`: the optional TLS listener.
//! - `acl`: deny-by-default rules for the general topic tree (`%u`, `%c`).
//! - `router`: the general-topic router (subscription trie, retained store, session state).
//! - `metrics`: the Prometheus metrics, and counters of events logged once and counted after that.
//! - `admin/`: the admin HTTP server (REST API, OpenAPI document, console, `/metrics`).
//! - `extension`: the interface a plugin implements to claim a topic tree (mqim's IM layer).
//! - `config`, `im_glue`: the `mqim` binary's typed configuration and the glue that plugs
//!   `mqim-im-plugin` into the extension interface.
//!
//! Nothing but `im_glue`, `admin` and `config` knows about IM; the rest is a general MQTT broker.
#![forbid(unsafe_code)]
// Deliveries move between queues as `Box<Outbound>` (one allocation for their life; an outbox
// entry stays pointer-sized): a `Vec<Box<Outbound>>` is the intended shape.
#![allow(clippy::vec_box)]

pub mod acl;
pub mod admin;
pub mod codec;
pub mod config;
pub mod connection;
pub mod drain;
pub mod extension;
pub mod im_glue;
pub mod metrics;
pub mod router;
pub mod server;
pub mod session;
pub mod tls;
pub mod transport;
