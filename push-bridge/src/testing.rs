//! Test support (feature `testing`): a local fake push service that records every request as
//! it arrived (HTTP version, method, path, headers, raw body) and answers from the test's
//! script. It speaks HTTP/1.1 and h2c (for webhooks, FCM and the common APNs tests) or HTTP/2
//! over TLS with ALPN `h2` (APNs as Apple serves it). Assertions about request shapes belong to
//! the tests; this only listens, records and answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// "HTTP/1.1" or "HTTP/2.0".
    pub version: String,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header names lowercase; the last value wins.
    pub headers: HashMap<String, String>,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// How the fake answers one request.
#[derive(Clone, Debug)]
pub enum Answer {
    Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Fail the request without an answer (HTTP/1.1: the connection closes; HTTP/2: the
    /// stream is reset).
    Drop,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer::Reply {
            status,
            headers: vec![],
            body: String::new(),
        }
    }

    pub fn json(status: u16, body: serde_json::Value) -> Answer {
        Answer::Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Answer {
        if let Answer::Reply { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }
}

/// How the fake listens.
pub enum Mode {
    /// HTTP/1.1 and h2c with prior knowledge on one port.
    Plain,
    /// HTTP/2 only, over TLS with ALPN `h2`, with this certificate chain and key (DER).
    H2Tls { cert_der: Vec<u8>, key_der: Vec<u8> },
}

type Handler = dyn Fn(&Recorded) -> Answer + Send + Sync;

/// A running fake. Stops when dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    tls: bool,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Recorded>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// Starts on a free loopback port; `handler` answers every request.
    pub async fn start(
        mode: Mode,
        handler: impl Fn(&Recorded) -> Answer + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
        let addr = listener.local_addr().expect("fake addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let handler: Arc<Handler> = Arc::new(handler);
        let tls = match &mode {
            Mode::Plain => None,
            Mode::H2Tls { cert_der, key_der } => Some(acceptor(cert_der, key_der)),
        };
        let is_tls = tls.is_some();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (tx, handler, tls) = (tx.clone(), handler.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (tx, handler) = (tx.clone(), handler.clone());
                        async move { answer(req, &tx, &*handler).await }
                    });
                    match tls {
                        None => {
                            let _ =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(tcp), svc)
                                    .await;
                        }
                        Some(acc) => {
                            let Ok(stream) = acc.accept(tcp).await else {
                                return;
                            };
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
            }
        });
        FakeServer {
            addr,
            tls: is_tls,
            rx: tokio::sync::Mutex::new(rx),
            task,
        }
    }

    /// `http://127.0.0.1:PORT` (or `https://localhost:PORT` for TLS, matching the certificate).
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://127.0.0.1:{}", self.addr.port())
        }
    }

    /// The next request received, waiting up to `wait`.
    pub async fn next(&self, wait: Duration) -> Option<Recorded> {
        let mut rx = self.rx.lock().await;
        tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
    }

    /// Every request received so far and not yet taken, without waiting.
    pub async fn drain(&self) -> Vec<Recorded> {
        let mut rx = self.rx.lock().await;
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(r);
        }
        out
    }
}

async fn answer(
    req: Request<Incoming>,
    tx: &mpsc::UnboundedSender<Recorded>,
    handler: &Handler,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let rec = Recorded {
        version: format!("{:?}", parts.version),
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let a = handler(&rec);
    let _ = tx.send(rec);
    match a {
        Answer::Drop => Err(std::io::Error::other("scripted drop")),
        Answer::Reply {
            status,
            headers,
            body,
        } => {
            let mut resp = Response::builder().status(status);
            for (k, v) in headers {
                resp = resp.header(k, v);
            }
            resp.body(Full::new(Bytes::from(body)))
                .map_err(std::io::Error::other)
        }
    }
}

fn acceptor(cert_der: &[u8], key_der: &[u8]) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert_der.to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec())),
        )
        .expect("fake certificate");
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}
