//! Replaying one tunnel stream to a local service.
//!
//! The stream carries a request head and body; the request goes to the service on one of that
//! service's pooled keep-alive connections ([`crate::pool`]), and the response head and body
//! come back on the same stream. An HTTP/1.1 upgrade is relayed as raw bytes only after the
//! service really answered `101`. Failures become a `Reset` with a code the gateway turns into
//! the right status; the connector itself never invents HTTP responses.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Empty};
use hyper_util::rt::TokioIo;
use netwall_proto::{Codec, Frame, Reset, ResetCode, ResponseHead};
use netwall_tunnel::body::{TunnelBody, pipe_upgraded, send_body};
use netwall_tunnel::http::{
    fix_response_framing, from_header_map, strip_hop_by_hop, to_header_map,
};
use netwall_tunnel::io::{FrameReader, FrameWriter};
use netwall_tunnel::{Stream, StreamRead, StreamWrite};
use tracing::{Instrument, debug};

use crate::config::{Resolved, ServiceTarget};
use crate::local::LocalConnector;
use crate::pool::{Pool, PoolError};

/// Response bodies up to this size (known in advance) are sent with their head in one write.
const SMALL_BODY: u64 = 16 * 1024;

type ReqBody = Either<TunnelBody<StreamRead>, Empty<Bytes>>;

/// A local service and its keep-alive connections.
#[derive(Clone)]
pub struct Service {
    pool: Arc<Pool<ReqBody>>,
    /// Dialer for raw connections (WebSockets).
    connector: LocalConnector,
    /// Authority of the service, for the WebSocket handshake.
    authority: String,
    /// Where it lives, so a reload that keeps it keeps its pool.
    target: ServiceTarget,
}

/// Every local service, by name.
pub struct Services {
    by_name: BTreeMap<String, Service>,
    tcp: BTreeMap<String, LocalConnector>,
    codec: Codec,
    /// The pool settings every client was built with.
    pool: (std::time::Duration, usize),
}

impl Services {
    /// Clients for every configured service.
    pub fn new(resolved: &Resolved, codec: Codec) -> Self {
        Self::reusing(resolved, codec, None)
    }

    /// Clients for every service of `resolved`; a service that `old` has with the same
    /// target and pool settings keeps its client, so its warm connections stay in use.
    pub fn reusing(resolved: &Resolved, codec: Codec, old: Option<&Services>) -> Self {
        let timeout = resolved.config.service_connect_timeout;
        let pool = (timeout, resolved.config.pool_max_idle_per_service);
        let old = old.filter(|o| o.pool == pool);
        let by_name = resolved
            .services
            .iter()
            .map(|(name, target)| {
                if let Some(kept) = old
                    .and_then(|o| o.by_name.get(name))
                    .filter(|s| s.target == *target)
                {
                    return (name.clone(), kept.clone());
                }
                let connector = LocalConnector::new(target.clone(), timeout);
                let authority = match target {
                    ServiceTarget::Tcp { authority } => authority.clone(),
                    ServiceTarget::Unix(_) => "localhost".to_owned(),
                };
                (
                    name.clone(),
                    Service {
                        pool: Arc::new(Pool::new(connector.clone(), pool.1)),
                        connector,
                        authority,
                        target: target.clone(),
                    },
                )
            })
            .collect();
        let tcp = resolved
            .tcp_services
            .iter()
            .map(|(name, target)| (name.clone(), LocalConnector::new(target.clone(), timeout)))
            .collect();
        Services {
            by_name,
            tcp,
            codec,
            pool,
        }
    }

    /// Serve one stream the gateway opened.
    pub async fn replay(self: Arc<Self>, stream: Stream) {
        let Stream { send, recv } = stream;
        let mut writer = FrameWriter::new(send, self.codec);
        let mut reader = FrameReader::new(recv, self.codec);
        let head = match reader.next().await {
            Ok(Some(Frame::RequestHead(h))) => h,
            Ok(Some(Frame::TcpOpen(open))) => {
                let Some(service) = self.tcp.get(&open.service) else {
                    let reason = format!("no TCP service named `{}`", open.service);
                    return reset(&mut writer, ResetCode::UnknownService, reason).await;
                };
                let name = open.service.clone();
                let client = open.client_addr.clone();
                match crate::tcp::relay(service, open, writer, reader).await {
                    Ok((up, down)) => {
                        debug!(service = %name, %client, to_client = up, to_service = down, "TCP stream ended")
                    }
                    Err(reason) => debug!(service = %name, %reason, "TCP service unreachable"),
                }
                return;
            }
            // An empty stream: the gateway gave up before sending anything.
            Ok(None) => return,
            Ok(Some(other)) => {
                return reset(
                    &mut writer,
                    ResetCode::Protocol,
                    format!("expected a request head, got {}", other.kind()),
                )
                .await;
            }
            Err(e) => return reset(&mut writer, ResetCode::Protocol, e.to_string()).await,
        };
        let service_name = head.service.clone();
        let Some(service) = self.by_name.get(&head.service) else {
            return reset(
                &mut writer,
                ResetCode::UnknownService,
                format!("no service named `{}`", head.service),
            )
            .await;
        };
        if head.websocket {
            // A task of its own: an open WebSocket then holds the relay's state only, not
            // the layout of this function, which the HTTP replay makes large.
            let (connector, authority) = (service.connector.clone(), service.authority.clone());
            tokio::spawn(
                async move {
                    let relay =
                        crate::ws::relay(&connector, &authority, head, &mut writer, &mut reader);
                    if let Err((code, reason)) = Box::pin(relay).await {
                        debug!(service = %service_name, %reason, "WebSocket relay failed");
                        reset(&mut writer, code, reason).await;
                    }
                }
                .in_current_span(),
            );
            return;
        }
        let built = (|| {
            let method = Method::from_bytes(head.method.as_bytes()).ok()?;
            // Origin form only: the path (and query) is all that goes to the service.
            let uri = Uri::from(PathAndQuery::try_from(head.uri.as_str()).ok()?);
            let headers = to_header_map(&head.headers).ok()?;
            Some((method, uri, headers))
        })();
        let Some((method, uri, headers)) = built else {
            return reset(
                &mut writer,
                ResetCode::Protocol,
                "request head is not valid HTTP".into(),
            )
            .await;
        };
        let (body, upgrade_reader) = if head.upgrade {
            (Either::Right(Empty::new()), Some(reader))
        } else if reader.take_received_end() {
            // The gateway sends a bodiless request's head and end in one write: the service
            // gets a request without a body, as the client sent it, not an empty chunked one
            // (`Transfer-Encoding: chunked` on a `DELETE` some services refuse).
            (Either::Right(Empty::new()), None)
        } else {
            (Either::Left(TunnelBody::new(reader, None, ())), None)
        };
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;

        let response = tokio::select! {
            r = service.pool.send(req) => r,
            // The gateway gave up (client gone, route timeout): stop waiting for the service.
            _ = writer.get_mut().stopped() => return,
        };
        let (mut resp, mut conn) = match response {
            Ok(r) => r,
            Err(e) => {
                let code = match e {
                    PoolError::Connect(_) => ResetCode::ServiceUnavailable,
                    PoolError::Request(_) => ResetCode::ServiceError,
                };
                debug!(service = %head.service, error = %e, "service request failed");
                return reset(
                    &mut writer,
                    code,
                    format!("service `{}`: {e}", head.service),
                )
                .await;
            }
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(reader) = upgrade_reader else {
                return reset(
                    &mut writer,
                    ResetCode::ServiceError,
                    "101 without an upgrade request".into(),
                )
                .await;
            };
            let on_upgrade = hyper::upgrade::on(&mut resp);
            let head = ResponseHead {
                status: 101,
                headers: from_header_map(resp.headers()),
            };
            if writer.send(&Frame::ResponseHead(head)).await.is_err() {
                return;
            }
            // The connection is the service's side of the upgrade now: hyper hands it over once
            // its driver has run to the end.
            let ((), upgraded) = tokio::join!(conn.run_to_end(), on_upgrade);
            match upgraded {
                Ok(upgraded) => {
                    pipe_upgraded(TokioIo::new(upgraded), writer, reader).await;
                }
                Err(e) => {
                    reset(
                        &mut writer,
                        ResetCode::ServiceError,
                        format!("upgrade failed: {e}"),
                    )
                    .await
                }
            }
            return;
        }

        let (mut parts, body) = resp.into_parts();
        fix_response_framing(parts.status.as_u16(), &mut parts.headers);
        strip_hop_by_hop(&mut parts.headers, false);
        let response_head = ResponseHead {
            status: parts.status.as_u16(),
            headers: from_header_map(&parts.headers),
        };
        if body.size_hint().exact().is_some_and(|n| n <= SMALL_BODY) {
            // A small body of known size goes out with its head and end in one write; the
            // connection is free for the next request before that write.
            let collected = match conn.drive(body.collect()).await {
                Ok(c) => {
                    service.pool.finish(conn);
                    c
                }
                Err(e) => {
                    return reset(
                        &mut writer,
                        ResetCode::ServiceError,
                        format!("service body: {e}"),
                    )
                    .await;
                }
            };
            let end = Frame::End(
                collected
                    .trailers()
                    .map(from_header_map)
                    .unwrap_or_default(),
            );
            let data = Frame::Data(collected.to_bytes());
            let head = Frame::ResponseHead(response_head);
            let frames: &[&Frame] = match &data {
                Frame::Data(d) if d.is_empty() => &[&head, &end],
                _ => &[&head, &data, &end],
            };
            if writer.send_all(frames).await.is_ok() {
                let _ = writer.shutdown().await;
            }
            return;
        }
        if writer
            .send(&Frame::ResponseHead(response_head))
            .await
            .is_err()
        {
            return;
        }
        match conn.drive(send_body(body, &mut writer, None)).await {
            Ok(_) => {
                service.pool.finish(conn);
                let _ = writer.shutdown().await;
            }
            Err(e) => {
                debug!(service = %service_name, error = %e, "response body relay ended early")
            }
        }
    }
}

async fn reset(writer: &mut FrameWriter<StreamWrite>, code: ResetCode, reason: String) {
    debug!(?code, %reason, "resetting tunnel stream");
    let _ = writer.send(&Frame::Reset(Reset { code, reason })).await;
    let _ = writer.shutdown().await;
}
