//! The local publish endpoint: how a service behind the wall pushes to WebSocket clients.
//!
//! `POST /publish` on `publish_listen` (loopback or a Unix socket: being local is the
//! authentication) with a JSON body `{"channel": "route:NAME" | "user:SUB" |
//! "connection:ID", "message": "text"}`. The connector sends it on the control stream of one
//! live tunnel connection, always the same one while it lives, so messages keep their order;
//! the gateway brings it to every gateway (see the gateway's `fanout`). The container never
//! needs access to Redis or to the Internet.
//!
//! Answers: `202` accepted into the tunnel; `400` not the JSON above or a channel that does
//! not exist; `413` a message over [`netwall_proto::DEFAULT_MAX_PUBLISH_LEN`]; `503` no live
//! tunnel connection whose gateway accepts publishing. Delivery is at most once: a message
//! accepted on a connection that then breaks may be lost.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Messages one connection queues before a publisher waits (backpressure to the service).
pub const CONNECTION_QUEUE: usize = 256;
/// Time a local publisher has to send a request head: a stuck client holds one task, not
/// forever.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest request body: the largest message plus room for JSON escaping and the channel.
const MAX_BODY: usize = 2 * netwall_proto::DEFAULT_MAX_PUBLISH_LEN;

/// A message on its way to a gateway.
pub type Outgoing = (String, Bytes);

/// The live connections a message may leave on, oldest first.
#[derive(Default)]
pub struct Outbox {
    routes: Mutex<Vec<(u64, mpsc::Sender<Outgoing>)>>,
    next: std::sync::atomic::AtomicU64,
}

/// A connection's place in the [`Outbox`]; leaves it on drop.
pub struct Route {
    outbox: Arc<Outbox>,
    id: u64,
    /// Messages to send on this connection's control stream.
    pub rx: mpsc::Receiver<Outgoing>,
}

impl Drop for Route {
    fn drop(&mut self) {
        if let Ok(mut r) = self.outbox.routes.lock() {
            r.retain(|(id, _)| *id != self.id);
        }
    }
}

/// Why a message was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The channel is not `route:`, `user:` or `connection:` something.
    Channel,
    /// No live connection takes publishing.
    NoTunnel,
}

impl Outbox {
    /// Register a live connection.
    pub fn join(self: &Arc<Self>) -> Route {
        let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut r) = self.routes.lock() {
            r.push((id, tx));
        }
        Route {
            outbox: self.clone(),
            id,
            rx,
        }
    }

    /// Send `message` on `channel` through the oldest live connection.
    pub async fn publish(&self, channel: String, message: Bytes) -> Result<(), Refused> {
        if !netwall_proto::valid_channel(&channel) {
            return Err(Refused::Channel);
        }
        let mut item = (channel, message);
        loop {
            let first = self
                .routes
                .lock()
                .ok()
                .and_then(|r| r.first().map(|(id, tx)| (*id, tx.clone())));
            let Some((id, tx)) = first else {
                return Err(Refused::NoTunnel);
            };
            match tx.send(item).await {
                Ok(()) => return Ok(()),
                // That connection just ended: the next one takes it.
                Err(mpsc::error::SendError(back)) => {
                    item = back;
                    if let Ok(mut r) = self.routes.lock() {
                        r.retain(|(i, _)| *i != id);
                    }
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    channel: String,
    message: String,
}

fn answer(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(outbox: Arc<Outbox>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/publish" {
        return answer(StatusCode::NOT_FOUND, "404 not found: POST /publish\n");
    }
    if req.method() != Method::POST {
        return answer(StatusCode::METHOD_NOT_ALLOWED, "405: POST /publish\n");
    }
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return answer(StatusCode::PAYLOAD_TOO_LARGE, "413: message too large\n"),
    };
    let Ok(body) = serde_json::from_slice::<Body>(&bytes) else {
        return answer(
            StatusCode::BAD_REQUEST,
            "400: expected {\"channel\": \"...\", \"message\": \"...\"}\n",
        );
    };
    // The frame carries the channel beside the message; both must fit.
    if body.message.len() + body.channel.len() + 2 > netwall_proto::DEFAULT_MAX_PUBLISH_LEN {
        return answer(StatusCode::PAYLOAD_TOO_LARGE, "413: message too large\n");
    }
    match outbox
        .publish(body.channel, Bytes::from(body.message))
        .await
    {
        Ok(()) => answer(StatusCode::ACCEPTED, "accepted\n"),
        Err(Refused::Channel) => answer(
            StatusCode::BAD_REQUEST,
            "400: channel must be route:NAME, user:SUB or connection:ID\n",
        ),
        Err(Refused::NoTunnel) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "503: no live tunnel connection takes publishing\n",
        ),
    }
}

/// Serve one local connection.
async fn serve_conn<S>(io: S, outbox: Arc<Outbox>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let svc = service_fn(move |req| {
        let outbox = outbox.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(outbox, req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc)
        .await
    {
        debug!(error = %e, "publish connection ended");
    }
}

/// Where the endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A loopback TCP address.
    Tcp(std::net::SocketAddr),
    /// A Unix socket.
    Unix(std::path::PathBuf),
}

/// A bound endpoint.
pub enum Bound {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// Unix.
    Unix(tokio::net::UnixListener),
}

impl Bound {
    /// Bind `listen` (a stale socket file is replaced).
    pub fn bind(listen: &Listen) -> std::io::Result<Bound> {
        Ok(match listen {
            Listen::Tcp(a) => {
                let std = std::net::TcpListener::bind(a)?;
                std.set_nonblocking(true)?;
                Bound::Tcp(tokio::net::TcpListener::from_std(std)?)
            }
            Listen::Unix(p) => {
                let _ = std::fs::remove_file(p);
                Bound::Unix(tokio::net::UnixListener::bind(p)?)
            }
        })
    }

    /// The TCP address, when it is one.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Bound::Tcp(l) => l.local_addr().ok(),
            Bound::Unix(_) => None,
        }
    }
}

/// Accept local publishers until `stop`.
pub async fn serve(bound: Bound, outbox: Arc<Outbox>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            accepted = accept(&bound) => match accepted {
                Ok(Accepted::Tcp(s)) => { tokio::spawn(serve_conn(s, outbox.clone())); }
                Ok(Accepted::Unix(s)) => { tokio::spawn(serve_conn(s, outbox.clone())); }
                Err(e) => {
                    warn!(error = %e, "publish endpoint accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(bound: &Bound) -> std::io::Result<Accepted> {
    Ok(match bound {
        Bound::Tcp(l) => Accepted::Tcp(l.accept().await?.0),
        Bound::Unix(l) => Accepted::Unix(l.accept().await?.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_live_connection_carries_every_message_in_order() {
        let outbox = Arc::new(Outbox::default());
        assert_eq!(
            outbox.publish("route:r".into(), Bytes::from("x")).await,
            Err(Refused::NoTunnel)
        );
        let mut first = outbox.join();
        let mut second = outbox.join();
        for i in 0..3 {
            outbox
                .publish("user:a".into(), Bytes::from(i.to_string()))
                .await
                .expect("accepted");
        }
        for i in 0..3 {
            let (_, m) = first.rx.recv().await.expect("message");
            assert_eq!(m, Bytes::from(i.to_string()));
        }
        assert!(second.rx.try_recv().is_err());
        drop(first);
        outbox
            .publish("user:a".into(), Bytes::from("next"))
            .await
            .expect("accepted");
        assert_eq!(
            second.rx.recv().await.map(|(_, m)| m),
            Some(Bytes::from("next"))
        );
        assert_eq!(
            outbox.publish("nope".into(), Bytes::from("x")).await,
            Err(Refused::Channel)
        );
    }
}
