//! A scanner over the WebSocket frames a client sends, in front of the WebSocket decoder.
//!
//! RFC 6455 §5.2 makes a reserved opcode (0x3-0x7, 0xB-0xF) a protocol error, which the edge
//! answers with close code 1002. The decoder the edge uses maps it to 1003 ("data it cannot
//! accept") instead. The scanner follows frame boundaries in the byte stream (header, then a
//! payload it skips) and marks the header of a frame with a reserved opcode with a reserved
//! bit (RSV2) as well, which every decoder must treat as a protocol error first: the client
//! is failed with 1002, whether the frame arrived whole or a byte at a time. Nothing else is
//! changed. Pure: bytes in, bytes (in place) out.

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;
/// RSV2: never valid without an extension that defines it (the edge negotiates none).
const RSV2: u8 = 0x20;

/// Where the scanner is in the client's frame stream.
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

/// Follows a client's frame stream and marks reserved opcodes.
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

impl FrameScanner {
    /// Scan the next bytes of the client's stream, marking in place the first byte of any
    /// frame whose opcode is reserved.
    pub fn scan(&mut self, mut bytes: &mut [u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Payload(left) => {
                    let skip = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    *left -= skip as u64;
                    bytes = &mut bytes[skip..];
                    if *left == 0 {
                        *self = FrameScanner::default();
                    }
                }
                State::Header { buf, have, need } => {
                    let b = &mut bytes[0];
                    if *have == 0 && reserved_opcode(*b) {
                        *b |= RSV2;
                    }
                    buf[*have] = *b;
                    *have += 1;
                    if *have == 2 {
                        let ext = match buf[1] & 0x7f {
                            126 => 2,
                            127 => 8,
                            _ => 0,
                        };
                        let mask = if buf[1] & 0x80 != 0 { 4 } else { 0 };
                        *need = 2 + ext + mask;
                    }
                    bytes = &mut bytes[1..];
                    if *have == *need {
                        let len = match buf[1] & 0x7f {
                            126 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
                            127 => u64::from_be_bytes([
                                buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], buf[8], buf[9],
                            ]),
                            n => u64::from(n),
                        };
                        self.state = if len == 0 {
                            FrameScanner::default().state
                        } else {
                            State::Payload(len)
                        };
                    }
                }
            }
        }
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
