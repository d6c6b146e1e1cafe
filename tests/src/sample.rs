//! The sample service: real HTTP/1.1 over real sockets, used behind connectors in tests and
//! in the quickstart.

use std::convert::Infallible;
use std::sync::Arc;
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
        "/headers" => {
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
