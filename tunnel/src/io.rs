//! Frame reading and writing over any tokio byte stream.
//!
//! This is the only place bytes from a tunnel stream become frames. The read buffer grows to
//! at most one frame (bounded by the codec's [`Limits`](netwall_proto::Limits)) plus one read chunk, so a
//! peer cannot make a reader hold more than that however it slices its writes.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use netwall_proto::Frame;
use netwall_proto::{Codec, DecodeError, EncodeError};

/// Bytes asked of the transport per read.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes asked of the transport by the first read after a pause, read onto the stack (an
/// idle reader holds no heap buffer): a small frame's worth.
const IDLE_READ: usize = 512;

/// What a writer keeps between writes: room for a data frame's header, not a head's.
const IDLE_WRITE: usize = 64;

/// Failure while reading frames.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The transport failed.
    #[error("tunnel stream read failed: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a valid frame.
    #[error("tunnel stream carried a malformed frame: {0}")]
    Decode(#[from] DecodeError),
    /// The stream ended in the middle of a frame.
    #[error("tunnel stream ended in the middle of a frame")]
    UnexpectedEof,
}

/// Failure while writing frames.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The transport failed (peer gone, stream stopped).
    #[error("tunnel stream write failed: {0}")]
    Io(#[from] io::Error),
    /// The frame could not be encoded within the limits.
    #[error("frame could not be encoded: {0}")]
    Encode(#[from] EncodeError),
}

/// Reads frames from a byte stream.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    codec: Codec,
    eof: bool,
    /// The last read filled its buffer.
    streaming: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wrap `inner`, decoding with `codec`.
    pub fn new(inner: R, codec: Codec) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::new(),
            codec,
            eof: false,
            streaming: false,
        }
    }

    /// Poll for the next frame; `Ready(Ok(None))` is a clean end of stream between frames.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, ReadError>> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Poll::Ready(Ok(Some(frame)));
            }
            if self.eof {
                return Poll::Ready(if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::UnexpectedEof)
                });
            }
            if self.buf.is_empty() && !self.streaming {
                // Between frames: read a little first, as the stream may have nothing more,
                // and onto the stack, so a reader that waits (an idle WebSocket, a response
                // not sent yet) holds no buffer at all.
                let mut first = [std::mem::MaybeUninit::<u8>::uninit(); IDLE_READ];
                let mut rb = ReadBuf::uninit(&mut first);
                match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        self.buf = BytesMut::new();
                        return Poll::Pending;
                    }
                    Poll::Ready(r) => r?,
                }
                let n = rb.filled().len();
                self.streaming = n == IDLE_READ;
                if n == 0 {
                    self.eof = true;
                } else {
                    let want = if self.streaming { READ_CHUNK } else { n };
                    if self.buf.capacity() < want {
                        self.buf = BytesMut::with_capacity(want);
                    }
                    self.buf.extend_from_slice(rb.filled());
                }
                continue;
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
                self.buf.reserve(READ_CHUNK);
            }
            let (polled, offered) = {
                let spare = self.buf.spare_capacity_mut();
                let offered = spare.len();
                let mut rb = ReadBuf::uninit(spare);
                let polled = Pin::new(&mut self.inner).poll_read(cx, &mut rb);
                (polled.map_ok(|()| rb.filled().len()), offered)
            };
            let n = match polled {
                Poll::Ready(r) => r?,
                Poll::Pending => {
                    if self.buf.is_empty() {
                        // Idle between frames, perhaps for hours (an open WebSocket): wait
                        // without holding a buffer.
                        self.streaming = false;
                        self.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
            };
            // A read that filled all it was offered means more is waiting: keep reading in
            // large chunks until a read comes up short.
            self.streaming = n == offered;
            if n == 0 {
                self.eof = true;
            } else {
                // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
                unsafe { self.buf.set_len(self.buf.len() + n) };
            }
        }
    }

    /// Whether the next frame, already received, is an `End` without trailers; consumed if so.
    /// Reads nothing: a request head and the end of its empty body, sent in one write, tell
    /// the reader the request has no body without waiting for more.
    pub fn take_received_end(&mut self) -> bool {
        let end = self.buf.starts_with(&netwall_proto::BARE_END);
        if end {
            let _ = self.buf.split_to(netwall_proto::BARE_END.len());
        }
        end
    }

    /// The next frame, or `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        poll_fn(|cx| self.poll_frame(cx)).await
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// A byte stream frames are written to, which may take a `Data` frame's payload as shared
/// bytes instead of copying it.
pub trait ChunkWrite: AsyncWrite + Unpin {
    /// Write the front of `data` and advance it past what was taken, as
    /// [`SendHalf::poll_write_chunk`](crate::SendHalf::poll_write_chunk); the default copies.
    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        crate::transport::poll_copy_chunk(self, cx, data)
    }
}

impl ChunkWrite for crate::StreamWrite {
    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        (**self).poll_write_chunk(cx, data)
    }
}

impl ChunkWrite for tokio::io::DuplexStream {}

/// Writes frames to a byte stream.
pub struct FrameWriter<W> {
    inner: W,
    buf: BytesMut,
    codec: Codec,
}

impl<W: ChunkWrite> FrameWriter<W> {
    /// Wrap `inner`, encoding with `codec`.
    pub fn new(inner: W, codec: Codec) -> Self {
        FrameWriter {
            inner,
            buf: BytesMut::new(),
            codec,
        }
    }

    /// After a write: a buffer that grew for a head or a batch is given back, so a writer
    /// that then waits (an idle WebSocket, a long response) holds no more than a data
    /// frame's header needs.
    fn release(&mut self) {
        if self.buf.capacity() > IDLE_WRITE {
            self.buf = BytesMut::new();
        }
    }

    /// Encode and write one frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), WriteError> {
        if let Frame::Data(data) = frame {
            return self.send_data(data.clone()).await;
        }
        self.buf.clear();
        self.codec.encode(frame, &mut self.buf)?;
        let written = self.inner.write_all(&self.buf).await;
        self.release();
        written?;
        Ok(())
    }

    /// Encode several frames and write them with one write: a small message (a head and its
    /// end, a head, a short body and its end) then costs the transport one wake-up instead of
    /// several. `Data` frames are copied, so keep this for small ones.
    pub async fn send_all(&mut self, frames: &[&Frame]) -> Result<(), WriteError> {
        self.buf.clear();
        for frame in frames {
            self.codec.encode(frame, &mut self.buf)?;
        }
        let written = self.inner.write_all(&self.buf).await;
        self.release();
        written?;
        Ok(())
    }

    /// Write bytes that already hold whole frames encoded with this writer's codec (the
    /// caller encoded them first, so an encoding error stayed that caller's).
    pub async fn send_encoded(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        self.inner.write_all(bytes).await?;
        Ok(())
    }

    /// Write `data` as one or more `Data` frames without copying it into a frame buffer (nor,
    /// where the transport can take shared bytes, anywhere).
    pub async fn send_data(&mut self, mut data: Bytes) -> Result<(), WriteError> {
        let max = self.codec.limits().max_data_len;
        while !data.is_empty() {
            let mut chunk = data.split_to(data.len().min(max));
            self.buf.clear();
            self.codec.encode_data_header(chunk.len(), &mut self.buf)?;
            self.inner.write_all(&self.buf).await?;
            while !chunk.is_empty() {
                let n = poll_fn(|cx| self.inner.poll_write_chunk(cx, &mut chunk)).await?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero).into());
                }
            }
        }
        Ok(())
    }

    /// Flush buffered bytes to the transport.
    pub async fn flush(&mut self) -> Result<(), WriteError> {
        self.inner.flush().await?;
        Ok(())
    }

    /// Finish the stream: no more frames will follow.
    pub async fn shutdown(&mut self) -> Result<(), WriteError> {
        self.inner.shutdown().await?;
        Ok(())
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer() {
        let (mut tx, rx) = tokio::io::duplex(256 * 1024);
        let codec = Codec::default();
        let mut reader = FrameReader::new(rx, codec);
        for len in [READ_CHUNK, 40 * 1024, 100] {
            let mut wire = BytesMut::new();
            codec
                .encode(&Frame::Data(Bytes::from(vec![7u8; len])), &mut wire)
                .expect("encode");
            tx.write_all(&wire).await.expect("write");
            let frame = reader.next().await.expect("read").expect("a frame");
            assert!(matches!(&frame, Frame::Data(d) if d.len() == len));
            drop(frame);
            // Nothing more was sent: the reader waits, holding no buffer.
            let polled = poll_fn(|cx| Poll::Ready(reader.poll_frame(cx).is_pending())).await;
            assert!(polled, "no further frame was sent");
            assert_eq!(
                reader.buf.capacity(),
                0,
                "after a {len}-byte frame an idle reader holds a buffer"
            );
        }
    }

    #[tokio::test]
    async fn a_writer_keeps_no_head_sized_buffer_between_writes() {
        let (tx, mut rx) = tokio::io::duplex(256 * 1024);
        let codec = Codec::default();
        let mut writer = FrameWriter::new(tx, codec);
        let big = Frame::Publish {
            channel: "c".repeat(100),
            message: Bytes::from(vec![1u8; 2000]),
        };
        writer.send(&big).await.expect("send");
        assert!(
            writer.buf.capacity() <= IDLE_WRITE,
            "{}",
            writer.buf.capacity()
        );
        writer
            .send_all(&[&big, &Frame::Ping(1)])
            .await
            .expect("send all");
        assert!(
            writer.buf.capacity() <= IDLE_WRITE,
            "{}",
            writer.buf.capacity()
        );
        writer
            .send_data(Bytes::from_static(b"hello"))
            .await
            .expect("data");
        assert!(
            writer.buf.capacity() <= IDLE_WRITE,
            "{}",
            writer.buf.capacity()
        );
        drop(writer);
        // Every frame arrived whole.
        let mut reader = FrameReader::new(&mut rx, codec);
        let mut kinds = Vec::new();
        while let Some(f) = reader.next().await.expect("frame") {
            kinds.push(f.kind());
        }
        assert_eq!(kinds, ["publish", "publish", "ping", "data"]);
    }
}
