//! Byte transports under MQTT: plain TCP, and WebSocket on path `/mqtt` (binary frames carry MQTT
//! bytes, subprotocol `mqtt`). Both become one `AsyncRead + AsyncWrite` stream so the connection
//! logic does not care which it got. The WebSocket listener also answers plain `GET`s of the demo
//! chat page (`broker/web/chat/`, embedded) when `[mqtt] demo_page` is on.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The demo chat page's files: (path, content type, body).
const PAGE: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../web/chat/index.html"),
    ),
    (
        "/chat/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/chat/app.js"),
    ),
    (
        "/chat/mqtt.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/chat/mqtt.js"),
    ),
    (
        "/chat/style.css",
        "text/css; charset=utf-8",
        include_str!("../web/chat/style.css"),
    ),
];

/// Largest request head read while telling a page request from a WebSocket upgrade.
const MAX_HEAD: usize = 8192;

/// Answers a plain HTTP `GET` of a demo page file (then the connection is done: true). Anything
/// else (a WebSocket upgrade, another path) is left unread for [`accept_ws`]: false.
pub async fn serve_page(stream: &TcpStream, within: std::time::Duration) -> bool {
    let mut buf = vec![0u8; MAX_HEAD];
    let deadline = tokio::time::Instant::now() + within;
    let head = loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        if let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            break String::from_utf8_lossy(&buf[..end]).into_owned();
        }
        if n == MAX_HEAD || tokio::time::Instant::now() >= deadline {
            return false;
        }
        // More of the head is on its way; peek does not wait for it.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (first.next(), first.next().unwrap_or_default());
    let upgrade = lines.any(|l| {
        l.to_ascii_lowercase().starts_with("upgrade:")
            && l.to_ascii_lowercase().contains("websocket")
    });
    let path = target.split('?').next().unwrap_or_default();
    let Some((_, ctype, body)) = PAGE.iter().find(|(p, _, _)| *p == path) else {
        return false;
    };
    if method != Some("GET") || upgrade {
        return false;
    }
    // Consume the request head, then answer and close.
    let mut sink = vec![0u8; head.len() + 4];
    let mut read = 0;
    while read < sink.len() {
        match stream.try_read(&mut sink[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stream.readable().await.is_err() {
                    return true;
                }
            }
            Err(_) => return true,
        }
    }
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut written = 0;
    let bytes = resp.as_bytes();
    while written < bytes.len() {
        if stream.writable().await.is_err() {
            return true;
        }
        match stream.try_write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return true,
        }
    }
    true
}

/// Completes the WebSocket handshake: only path `/mqtt` is served.
// The callback's error type is tungstenite's, fixed by its handshake API.
#[allow(clippy::result_large_err)]
pub async fn accept_ws(stream: TcpStream, max_frame: usize) -> io::Result<WsIo> {
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != "/mqtt" {
            let mut err = ErrorResponse::new(Some("MQTT is served on /mqtt".into()));
            *err.status_mut() = StatusCode::NOT_FOUND;
            return Err(err);
        }
        let wants_mqtt = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == "mqtt");
        if wants_mqtt {
            resp.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        }
        Ok(resp)
    };
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(max_frame + 1024))
        .max_frame_size(Some(max_frame + 1024));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
        .map_err(io::Error::other)?;
    Ok(WsIo {
        ws,
        pending: Bytes::new(),
    })
}

/// A WebSocket seen as a byte stream.
pub struct WsIo {
    ws: WebSocketStream<TcpStream>,
    pending: Bytes,
}

impl AsyncRead for WsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Ready(Some(Ok(Message::Binary(b)))) => self.pending = b,
                // Pings are answered by tungstenite on the next write or flush.
                Poll::Ready(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
                Poll::Ready(Some(Ok(Message::Text(_)))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket uses binary frames",
                    )))
                }
                Poll::Ready(Some(Ok(Message::Close(_)))) | Poll::Ready(None) => {
                    return Poll::Ready(Ok(()))
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io::Error::other(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for WsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.ws).poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            Poll::Pending => return Poll::Pending,
        }
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}
