//! A scanner over WebSocket frames, in front of the WebSocket codec.
//!
//! On the client's side it enforces two rules the codec the edge uses gets wrong, by making
//! the offending frame one the codec must refuse as a protocol error (close 1002):
//!
//! - a reserved opcode (0x3-0x7, 0xB-0xF; RFC 6455 §5.2) is answered with 1002, not the
//!   codec's 1003 ("data it cannot accept"): the frame's first byte gets a reserved bit
//!   (RSV2) as well, which every decoder checks first;
//! - a control frame longer than 125 bytes (§5.5) is refused, where the codec checks only
//!   pings (and would echo an over-long Close): RSV2 again, or, when the first byte has
//!   already been handed on, the length byte loses its mask bit (an unmasked client frame is
//!   refused, §5.1).
//!
//! On the edge's own side it only watches, and tells whether a Close frame has been written,
//! so the edge never sends two.
//!
//! The scanner follows frame boundaries (a header, then a payload it skips), whether frames
//! arrive whole or a byte at a time. Pure: bytes in, bytes (in place) out.

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;
/// RSV2: never valid without an extension that defines it (the edge negotiates none).
const RSV2: u8 = 0x20;
/// The mask bit of the second header byte.
const MASK: u8 = 0x80;
/// Longest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u8 = 125;

/// Where the scanner is in a frame stream.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a header: the bytes seen so far, how many it has, how many it needs.
    Header {
        buf: [u8; MAX_HEADER],
        have: usize,
        need: usize,
    },
    /// Inside a payload: bytes left to skip.
    Payload(u64),
}

/// A change to make to the bytes just scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fix {
    /// Set RSV2 on the byte at this index.
    Reserve(usize),
    /// Clear the mask bit of the byte at this index.
    Unmask(usize),
}

/// Follows one direction of a WebSocket's frame stream.
#[derive(Debug, Clone, Copy)]
pub struct FrameScanner {
    state: State,
}

impl Default for FrameScanner {
    fn default() -> Self {
        FrameScanner {
            state: State::Header {
                buf: [0; MAX_HEADER],
                have: 0,
                need: 2,
            },
        }
    }
}

fn reserved_opcode(b: u8) -> bool {
    matches!(b & 0x0f, 0x3..=0x7 | 0xb..=0xf)
}

fn is_control(b: u8) -> bool {
    b & 0x08 != 0
}

impl FrameScanner {
    /// Follow `bytes`; returns the fixes a client's frames need (empty, without allocating,
    /// for well-formed ones) and whether a Close frame started in them.
    fn walk(&mut self, bytes: &[u8]) -> (Vec<Fix>, bool) {
        let mut fixes = Vec::new();
        let mut close = false;
        let mut i = 0;
        // Where this header's first byte is in `bytes`, when it is.
        let mut first_at = None;
        while i < bytes.len() {
            match &mut self.state {
                State::Payload(left) => {
                    let skip = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len() - i);
                    *left -= skip as u64;
                    i += skip;
                    if *left == 0 {
                        *self = FrameScanner::default();
                    }
                }
                State::Header { buf, have, need } => {
                    let b = bytes[i];
                    buf[*have] = b;
                    *have += 1;
                    if *have == 1 {
                        first_at = Some(i);
                        close |= b & 0x0f == 0x8;
                        if reserved_opcode(b) {
                            fixes.push(Fix::Reserve(i));
                        }
                    } else if *have == 2 {
                        let ext = match b & 0x7f {
                            126 => 2,
                            127 => 8,
                            _ => 0,
                        };
                        *need = 2 + ext + if b & MASK != 0 { 4 } else { 0 };
                        if is_control(buf[0]) && b & 0x7f > MAX_CONTROL_PAYLOAD {
                            fixes.push(match first_at {
                                Some(at) => Fix::Reserve(at),
                                None => Fix::Unmask(i),
                            });
                        }
                    }
                    i += 1;
                    if *have == *need {
                        let len = match buf[1] & 0x7f {
                            126 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
                            127 => u64::from_be_bytes([
                                buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], buf[8], buf[9],
                            ]),
                            n => u64::from(n),
                        };
                        first_at = None;
                        self.state = if len == 0 {
                            FrameScanner::default().state
                        } else {
                            State::Payload(len)
                        };
                    }
                }
            }
        }
        (fixes, close)
    }

    /// Scan the next bytes a client sent, fixing in place the frames the codec must refuse.
    pub fn scan(&mut self, bytes: &mut [u8]) {
        let (fixes, _) = self.walk(bytes);
        for fix in fixes {
            match fix {
                Fix::Reserve(at) => bytes[at] |= RSV2,
                Fix::Unmask(at) => bytes[at] &= !MASK,
            }
        }
    }

    /// Follow bytes the edge wrote; returns whether a Close frame started in them.
    pub fn observe(&mut self, bytes: &[u8]) -> bool {
        self.walk(bytes).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(first: u8, len: usize) -> Vec<u8> {
        let mut f = vec![first];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        // Payload bytes that look like reserved opcodes must never be touched.
        f.extend(std::iter::repeat_n(0x83u8, len));
        f
    }

    #[test]
    fn an_over_long_control_frame_is_refused_whole_or_split() {
        let mut close = vec![0x88u8, 0x80 | 126];
        close.extend_from_slice(&126u16.to_be_bytes());
        close.extend_from_slice(&[0; 4 + 126]);
        let mut whole = close.clone();
        FrameScanner::default().scan(&mut whole);
        assert_eq!(whole[0], 0x88 | RSV2);
        assert_eq!(whole[1..], close[1..]);
        // Split after the first byte: that byte is gone already, so the mask bit goes.
        let mut s = FrameScanner::default();
        let mut first = close[..1].to_vec();
        let mut rest = close[1..].to_vec();
        s.scan(&mut first);
        s.scan(&mut rest);
        assert_eq!(first[0], 0x88);
        assert_eq!(rest[0], 126);
        // A Close of 125 bytes is fine, and the edge's own writes are only watched.
        let mut ok = vec![0x88u8, 0x80 | 125];
        ok.extend_from_slice(&[0; 4 + 125]);
        let before = ok.clone();
        FrameScanner::default().scan(&mut ok);
        assert_eq!(ok, before);
        let mut w = FrameScanner::default();
        assert!(!w.observe(&[0x81, 3, b'a', b'b', b'c', 0x89]));
        assert!(w.observe(&[0, 0x88]));
        assert!(!w.observe(&[0]));
    }

    #[test]
    fn marks_reserved_opcodes_only_at_frame_starts_however_the_bytes_are_split() {
        let mut stream = Vec::new();
        let mut starts = Vec::new();
        for (first, len) in [
            (0x81, 5),
            (0x82, 300),
            (0x89, 0),
            (0x83, 3),
            (0x02, 70_000),
            (0x8b, 1),
            (0x80, 0),
        ] {
            starts.push((stream.len(), first));
            stream.extend(frame(first, len));
        }
        for chunk in [1, 2, 3, 7, 13, 100, 4096, stream.len()] {
            let mut bytes = stream.clone();
            let mut s = FrameScanner::default();
            for part in bytes.chunks_mut(chunk) {
                s.scan(part);
            }
            let mut expected = stream.clone();
            for &(at, first) in &starts {
                if reserved_opcode(first) {
                    expected[at] |= RSV2;
                }
            }
            assert_eq!(bytes, expected, "chunks of {chunk}");
        }
    }
}
