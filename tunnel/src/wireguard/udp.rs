//! The WireGuard UDP socket with the kernel's batching: many datagrams of one size leave in
//! one `sendmsg` (UDP GSO) and arrive in one `recvmsg` (UDP GRO) where the kernel offers it,
//! through quinn-udp, the same layer the QUIC transport sends with. A bulk transfer is a
//! stream of equal datagrams (1,452 bytes on an ordinary path, 8,952 to a gateway on this
//! host), and one system call each was most of its cost.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams gathered into one send at most (the kernel's own limit may be lower).
const MAX_BATCH: usize = 64;

/// Bytes of one batched send at most: a UDP payload.
const MAX_BATCH_BYTES: usize = 65_000;

/// A UDP socket and its batching state.
pub(crate) struct WgSocket {
    io: UdpSocket,
    state: UdpSocketState,
}

impl WgSocket {
    /// Wrap `sock` (already bound, and connected if it has one peer).
    pub fn new(sock: std::net::UdpSocket) -> io::Result<WgSocket> {
        sock.set_nonblocking(true)?;
        let state = UdpSocketState::new((&sock).into())?;
        Ok(WgSocket {
            io: UdpSocket::from_std(sock)?,
            state,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// How many datagrams one send may carry.
    pub fn batch_limit(&self) -> usize {
        self.state.max_gso_segments().clamp(1, MAX_BATCH)
    }

    /// Send `contents` to `to`: one datagram, or several of `segment` bytes each (the last
    /// may be shorter).
    pub async fn send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: segment.filter(|s| *s < contents.len()),
            src_ip: None,
        };
        self.io
            .async_io(Interest::WRITABLE, || {
                self.state.send((&self.io).into(), &transmit)
            })
            .await
    }

    /// Wait for datagrams; fills `buf` and returns `(bytes, stride, from)`: the buffer holds
    /// datagrams of `stride` bytes each, the last one possibly shorter.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, usize, SocketAddr)> {
        self.io
            .async_io(Interest::READABLE, || self.recv_now(buf))
            .await
    }

    /// Like [`WgSocket::recv`] without waiting.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<(usize, usize, SocketAddr)> {
        self.io.try_io(Interest::READABLE, || self.recv_now(buf))
    }

    fn recv_now(&self, buf: &mut [u8]) -> io::Result<(usize, usize, SocketAddr)> {
        let mut meta = [RecvMeta::default()];
        let n = self
            .state
            .recv((&self.io).into(), &mut [IoSliceMut::new(buf)], &mut meta)?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let m = &meta[0];
        Ok((m.len, m.stride.max(1), m.addr))
    }
}

/// Datagrams gathered for one send: equal sizes, at most one shorter one last.
pub(crate) struct Batch {
    buf: Vec<u8>,
    segment: usize,
    count: usize,
    closed: bool,
}

impl Batch {
    pub fn new() -> Batch {
        Batch {
            buf: Vec::with_capacity(MAX_BATCH_BYTES),
            segment: 0,
            count: 0,
            closed: false,
        }
    }

    /// Whether `datagram` can join the batch (else send the batch first).
    pub fn fits(&self, datagram: &[u8], limit: usize) -> bool {
        if self.count == 0 {
            return true;
        }
        !self.closed
            && self.count < limit
            && datagram.len() <= self.segment
            && self.buf.len() + datagram.len() <= MAX_BATCH_BYTES
    }

    pub fn push(&mut self, datagram: &[u8]) {
        if self.count == 0 {
            self.segment = datagram.len();
        } else if datagram.len() < self.segment {
            // A shorter datagram can only end a batch.
            self.closed = true;
        }
        self.buf.extend_from_slice(datagram);
        self.count += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bytes and segment size to send; the batch is empty again after `clear`.
    pub fn contents(&self) -> (&[u8], Option<usize>) {
        (&self.buf, (self.count > 1).then_some(self.segment))
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }
}

/// The datagrams in a received buffer of `len` bytes, `stride` bytes each.
pub(crate) fn datagrams(buf: &[u8], len: usize, stride: usize) -> impl Iterator<Item = &[u8]> {
    buf[..len.min(buf.len())].chunks(stride)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_equal_datagrams_and_one_shorter_last() {
        let mut b = Batch::new();
        assert!(b.fits(&[1; 100], 4));
        b.push(&[1; 100]);
        assert!(b.fits(&[2; 100], 4));
        b.push(&[2; 100]);
        assert!(!b.fits(&[3; 101], 4), "a longer datagram cannot join");
        assert!(b.fits(&[3; 40], 4));
        b.push(&[3; 40]);
        assert!(!b.fits(&[4; 40], 4), "nothing follows a shorter one");
        let (bytes, seg) = b.contents();
        assert_eq!((bytes.len(), seg), (240, Some(100)));
        let split: Vec<usize> = datagrams(bytes, bytes.len(), 100)
            .map(<[u8]>::len)
            .collect();
        assert_eq!(split, vec![100, 100, 40]);
        b.clear();
        assert!(b.is_empty());
        b.push(&[5; 10]);
        assert_eq!(b.contents().1, None, "one datagram is sent as itself");
        b.push(&[5; 10]);
        b.push(&[5; 10]);
        b.push(&[5; 10]);
        assert!(!b.fits(&[5; 10], 4), "the limit holds");
    }
}
