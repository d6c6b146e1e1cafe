//! HTTP bodies over tunnel streams.
//!
//! [`TunnelBody`] is the receiving half: an `http_body::Body` that yields `Data` frames as body
//! chunks and `End` trailers as trailers, pulling the next frame only when the consumer polls,
//! so flow control reaches all the way from the far socket to the near one. [`send_body`] is
//! the sending half.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame as BodyFrame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http::{HeaderError, from_header_map, strip_trailer_fields, to_header_map};
use crate::io::{ChunkWrite, FrameReader, FrameWriter, ReadError, WriteError};
use netwall_proto::{Frame, Reset, ResetCode};

/// Why a body relayed over a tunnel stream did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Reading the tunnel stream failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing the tunnel stream failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The peer abandoned the stream.
    #[error("stream reset by peer: {0:?}")]
    Reset(Reset),
    /// The stream ended without an `End` frame.
    #[error("stream ended before the body was complete")]
    Incomplete,
    /// A frame arrived that has no place in a body.
    #[error("unexpected {0} frame in a body")]
    Unexpected(&'static str),
    /// The trailers are not valid HTTP.
    #[error("invalid trailers: {0}")]
    Trailers(#[from] HeaderError),
    /// The body is larger than the limit in force.
    #[error("body exceeds {limit} bytes")]
    TooLarge {
        /// Limit in force.
        limit: u64,
    },
    /// The local end of the body failed (client or service went away mid-body).
    #[error("body source failed: {0}")]
    Source(String),
}

/// Something that lives exactly as long as a [`TunnelBody`] (an in-flight guard, the stream's
/// other half) and hears of every chunk it delivers (for byte counters).
pub trait BodyGuard: Unpin {
    /// `n` body bytes were delivered.
    fn on_data(&mut self, _n: usize) {}
}

impl BodyGuard for () {}

/// A body whose frames arrive on a tunnel stream, with a [`BodyGuard`].
pub struct TunnelBody<R, G = ()> {
    reader: Option<FrameReader<R>>,
    limit: Option<u64>,
    received: u64,
    guard: G,
}

impl<R, G> TunnelBody<R, G> {
    /// A body read from `reader`; with `limit`, more bytes than that is an error.
    pub fn new(reader: FrameReader<R>, limit: Option<u64>, guard: G) -> Self {
        TunnelBody {
            reader: Some(reader),
            limit,
            received: 0,
            guard,
        }
    }

    /// Bytes of body delivered so far.
    pub fn received(&self) -> u64 {
        self.received
    }
}

impl<R: AsyncRead + Unpin, G: BodyGuard> Body for TunnelBody<R, G> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(reader) = this.reader.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            let frame = match reader.poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r,
            };
            let out = match frame {
                Ok(Some(Frame::Data(d))) if d.is_empty() => continue,
                Ok(Some(Frame::Data(d))) => {
                    this.received += d.len() as u64;
                    match this.limit {
                        Some(limit) if this.received > limit => Err(BodyError::TooLarge { limit }),
                        _ => {
                            this.guard.on_data(d.len());
                            return Poll::Ready(Some(Ok(BodyFrame::data(d))));
                        }
                    }
                }
                Ok(Some(Frame::End(trailers))) => {
                    this.reader = None;
                    if trailers.is_empty() {
                        return Poll::Ready(None);
                    }
                    match to_header_map(&trailers) {
                        Ok(mut map) => {
                            strip_trailer_fields(&mut map);
                            if map.is_empty() {
                                return Poll::Ready(None);
                            }
                            Ok(BodyFrame::trailers(map))
                        }
                        Err(e) => Err(BodyError::from(e)),
                    }
                }
                Ok(Some(Frame::Reset(r))) => Err(BodyError::Reset(r)),
                Ok(Some(other)) => Err(BodyError::Unexpected(other.kind())),
                Ok(None) => Err(BodyError::Incomplete),
                Err(e) => Err(e.into()),
            };
            this.reader = None;
            return Poll::Ready(Some(out));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Relay `body` as `Data` frames and a closing `End`, stopping with
/// [`BodyError::TooLarge`] (after sending a `Reset`) once more than `limit` bytes were read.
/// Returns the body bytes sent.
pub async fn send_body<B, W>(
    mut body: B,
    writer: &mut FrameWriter<W>,
    limit: Option<u64>,
) -> Result<u64, BodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
    W: ChunkWrite,
{
    let mut sent = 0u64;
    let mut trailers = HeaderMap::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                let reset = Reset {
                    code: ResetCode::Cancelled,
                    reason: "body source failed".into(),
                };
                let _ = writer.send(&Frame::Reset(reset)).await;
                return Err(BodyError::Source(e.to_string()));
            }
        };
        match frame.into_data() {
            Ok(data) => {
                sent += data.len() as u64;
                if let Some(limit) = limit.filter(|l| sent > *l) {
                    let reset = Reset {
                        code: ResetCode::TooLarge,
                        reason: "body over limit".into(),
                    };
                    let _ = writer.send(&Frame::Reset(reset)).await;
                    return Err(BodyError::TooLarge { limit });
                }
                writer.send_data(data).await?;
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.extend(t);
                }
            }
        }
    }
    writer.send(&Frame::End(from_header_map(&trailers))).await?;
    Ok(sent)
}

/// Bytes read from an upgraded connection per `Data` frame.
const UPGRADE_CHUNK: usize = 16 * 1024;

/// Relay an upgraded connection (after a real `101`) over a tunnel stream until both
/// directions have ended: bytes from `io` go out as `Data` frames and a final `End`; `Data`
/// frames from the tunnel are written to `io`. A `Reset` or broken stream ends both
/// directions. Returns bytes (to tunnel, from tunnel).
pub async fn pipe_upgraded<IO, R, W>(
    io: IO,
    mut writer: FrameWriter<W>,
    mut reader: FrameReader<R>,
) -> (u64, u64)
where
    IO: AsyncRead + AsyncWrite,
    R: AsyncRead + Unpin,
    W: ChunkWrite,
{
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (mut rd, mut wr) = tokio::io::split(io);
    let up = async {
        let mut sent = 0u64;
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(UPGRADE_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) => {
                    let _ = writer.send(&Frame::End(Vec::new())).await;
                    let _ = writer.shutdown().await;
                    return sent;
                }
                Ok(n) => {
                    sent += n as u64;
                    if writer.send_data(buf.split().freeze()).await.is_err() {
                        return sent;
                    }
                }
                Err(_) => {
                    let reset = Reset {
                        code: ResetCode::Cancelled,
                        reason: "upgraded connection failed".into(),
                    };
                    let _ = writer.send(&Frame::Reset(reset)).await;
                    return sent;
                }
            }
        }
    };
    // Ends with the bytes received and whether the tunnel side ended cleanly (`End`).
    let down = async {
        let mut received = 0u64;
        loop {
            match reader.next().await {
                Ok(Some(Frame::Data(d))) => {
                    received += d.len() as u64;
                    if wr.write_all(&d).await.is_err() {
                        return (received, false);
                    }
                }
                Ok(Some(Frame::End(_))) => {
                    let _ = wr.shutdown().await;
                    return (received, true);
                }
                _ => return (received, false),
            }
        }
    };
    tokio::pin!(up, down);
    let (mut sent, mut received) = (None, None);
    while sent.is_none() || received.is_none() {
        tokio::select! {
            s = &mut up, if sent.is_none() => sent = Some(s),
            (r, clean) = &mut down, if received.is_none() => {
                received = Some(r);
                if !clean {
                    // The far side is gone: stop reading the near side too.
                    break;
                }
            }
        }
    }
    (sent.unwrap_or(0), received.unwrap_or(0))
}
