//! The sample service: real HTTP/1.1 over real sockets, used behind connectors in tests and
//! in the quickstart.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Body type of sample responses.
pub type SampleBody = UnsyncBoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<SampleBody> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|e: Infallible| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Answer one request.
pub async fn handle(
    mut req: Request<Incoming>,
    name: Arc<str>,
) -> Result<Response<SampleBody>, Infallible> {
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if websocket {
        return Ok(websocket_echo(&mut req, name));
    }
    if req.headers().contains_key(header::UPGRADE) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
        if let Some(up) = req.headers().get(header::UPGRADE) {
            r.headers_mut().insert(header::UPGRADE, up.clone());
        }
        return Ok(r);
    }
    let path = req.uri().path().to_owned();
    let resp = match path.as_str() {
        "/echo" => {
            let (parts, body) = req.into_parts();
            let mut r = Response::new(body.map_err(std::io::Error::other).boxed_unsync());
            if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
                r.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
            }
            r
        }
        "/bytes" => {
            let n = query_u64(&req, "n").unwrap_or(1024);
            const CHUNK: u64 = 64 * 1024;
            let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
            let stream = futures_util::stream::iter((0..n.div_ceil(CHUNK)).map(move |i| {
                let len = CHUNK.min(n - i * CHUNK) as usize;
                Ok::<_, std::io::Error>(Frame::data(chunk.slice(..len)))
            }));
            let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, header::HeaderValue::from(n));
            r
        }
        "/upload" => {
            let mut body = req.into_body().into_data_stream();
            let mut total = 0u64;
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(c) => total += c.len() as u64,
                    Err(_) => return Ok(full(StatusCode::BAD_REQUEST, "body failed\n")),
                }
            }
            full(StatusCode::OK, format!("{total}\n"))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_u64(&req, "ms").unwrap_or(1000))).await;
            full(StatusCode::OK, "slow\n")
        }
        "/ws-page" => {
            let mut r = full(StatusCode::OK, WS_PAGE);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        "/cors-page" => {
            let mut r = full(StatusCode::OK, CORS_PAGE);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        // A page whose title names the path and query it was asked for (where a browser landed).
        p if p.starts_with("/content/") => {
            let asked = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or(p)
                .replace(['<', '>', '&'], "");
            let mut r = full(
                StatusCode::OK,
                format!(
                    "<!doctype html><html><head><title>content:{asked}</title></head><body>content</body></html>"
                ),
            );
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        "/ws-stats" => {
            let (messages, bytes) = ws_stats(&name);
            full(
                StatusCode::OK,
                format!("messages={messages} bytes={bytes}\n"),
            )
        }
        // `/headers`, also under a prefix (`/api/headers`): the request headers as received.
        p if p.ends_with("/headers") => {
            let mut out = String::new();
            for (k, v) in req.headers() {
                out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("<binary>")));
            }
            full(StatusCode::OK, out)
        }
        _ => {
            let client = req
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("unknown")
                .to_owned();
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            full(
                StatusCode::OK,
                format!(
                    "hello from {name} via netwall: {} {} (host {host}, client {client})\n",
                    req.method(),
                    req.uri()
                ),
            )
        }
    };
    Ok(resp)
}

/// A page whose script opens a WebSocket to `wss://HOST:PORT/ws` (HOST from `?host=`, else the
/// page's own), sends one message, and reports the outcome in the title: `ok:<echo>|<extensions>`
/// or `closed:<code>`.
const WS_PAGE: &str = r#"<!doctype html><html><head><title>pending</title></head><body><script>
const params = new URLSearchParams(location.search);
const host = (params.get("host") || location.hostname) + ":" + location.port;
const ws = new WebSocket("wss://" + host + "/ws");
ws.onopen = () => ws.send("hello from a browser");
ws.onmessage = (e) => { document.title = "ok:" + e.data + "|" + ws.extensions; ws.close(1000, "done"); };
ws.onclose = (e) => { if (!document.title.startsWith("ok:")) document.title = "closed:" + e.code; };
</script></body></html>"#;

/// A page whose script POSTs with a custom header (so the browser sends a preflight first) to
/// `https://TARGET:PORT/echo` (TARGET from `?target=`) and reports in the title: `ok:<body>`,
/// or `closed:<error name>` when the browser's CORS check blocks the answer.
const CORS_PAGE: &str = r#"<!doctype html><html><head><title>pending</title></head><body><script>
const params = new URLSearchParams(location.search);
const url = "https://" + params.get("target") + ":" + location.port + "/echo";
fetch(url, { method: "POST", headers: { "x-api-key": "k", "content-type": "text/plain" }, body: "crossed" })
  .then((r) => r.text())
  .then((t) => { document.title = "ok:" + t; })
  .catch((e) => { document.title = "closed:" + e.name; });
</script></body></html>"#;

/// WebSocket messages and bytes received, per sample name (tests share one process).
static WS_STATS: Mutex<BTreeMap<String, (u64, u64)>> = Mutex::new(BTreeMap::new());

/// Messages and bytes the sample named `name` received over WebSockets.
pub fn ws_stats(name: &str) -> (u64, u64) {
    WS_STATS
        .lock()
        .map(|m| m.get(name).copied().unwrap_or_default())
        .unwrap_or_default()
}

/// Accept a WebSocket and echo every message, choosing the subprotocol `chat` when offered.
/// A path of `/ws/refuse` answers 403 instead;
/// a text message `close <code>` makes the service close with that code; `whoami` answers
/// with the identity headers the edge added.
fn websocket_echo(req: &mut Request<Incoming>, name: Arc<str>) -> Response<SampleBody> {
    use futures_util::SinkExt;
    if req.uri().path() == "/ws/refuse" {
        return full(StatusCode::FORBIDDEN, "service refuses WebSockets here\n");
    }
    let mut identity: Vec<String> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-netwall-"))
        .map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("")))
        .collect();
    identity.sort();
    let identity = identity.join(";");
    // Messages of up to 16 MiB inclusive (yawc's limits are exclusive).
    let options = yawc::Options::default()
        .with_max_payload_read((16 << 20) + 1)
        .with_max_read_buffer((16 << 20) + 1);
    // Subprotocols: `chat` when the client offers it; `/ws/wrong-protocol` answers one the
    // client never offered, as a broken service would.
    let offers_chat = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "chat");
    let chosen = match req.uri().path() {
        "/ws/wrong-protocol" => Some("not-offered"),
        _ => offers_chat.then_some("chat"),
    };
    let Ok((mut resp, fut)) = yawc::WebSocket::upgrade_with_options(req, options) else {
        return full(StatusCode::BAD_REQUEST, "bad websocket handshake\n");
    };
    if let Some(p) = chosen {
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            header::HeaderValue::from_static(p),
        );
    }
    tokio::spawn(async move {
        let Ok(mut ws) = fut.await else { return };
        while let Ok(frame) = ws.next_frame().await {
            match frame.opcode() {
                yawc::OpCode::Text | yawc::OpCode::Binary => {
                    if let Ok(mut m) = WS_STATS.lock() {
                        let e = m.entry(name.to_string()).or_default();
                        e.0 += 1;
                        e.1 += frame.payload().len() as u64;
                    }
                    let text = std::str::from_utf8(frame.payload()).unwrap_or("");
                    if let Some(code) = text
                        .strip_prefix("close ")
                        .and_then(|c| c.parse::<u16>().ok())
                    {
                        let _ = ws
                            .send(yawc::Frame::close(
                                yawc::close::CloseCode::from(code),
                                "service closed",
                            ))
                            .await;
                        continue;
                    }
                    let reply = match text {
                        "whoami" => yawc::Frame::text(format!("{name}: {identity}")),
                        _ => frame,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
                yawc::OpCode::Close => break,
                _ => {}
            }
        }
    });
    resp.map(|_| {
        http_body_util::Empty::new()
            .map_err(|e: Infallible| match e {})
            .boxed_unsync()
    })
}

/// Serve HTTP/1.1 on `listener` forever.
pub async fn serve(listener: TcpListener, name: String) {
    let name: Arc<str> = name.into();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, name.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades()
                .await;
        });
    }
}
