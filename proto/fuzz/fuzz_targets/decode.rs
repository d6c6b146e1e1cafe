//! Fuzz the frame decoder with invariants, not only "no crash":
//! - every decoded frame consumed bytes, and its re-encoding decodes to the same frame;
//! - decoding the input whole or split at any point yields the same frames and the same error;
//! - nothing is reserved beyond the limits (checked through the buffer's capacity).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use netwall_proto::{Codec, Frame, Limits};

fn decode_all(codec: &Codec, chunks: &[&[u8]]) -> (Vec<Frame>, bool) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(buf.len() < before, "a frame consumed no bytes");
                    frames.push(f);
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
            let limits = codec.limits();
            let biggest = limits.max_data_len.max(limits.max_head_len).max(limits.max_control_len);
            let input: usize = chunks.iter().map(|c| c.len()).sum();
            // Growth may double what the input needed; a declared length never adds more than a frame.
            assert!(buf.capacity() <= 2 * input + biggest + 64, "over-reserved");
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let codec = Codec::new(Limits { max_data_len: 4096, max_head_len: 4096, max_message_len: 4096, max_control_len: 1024, max_headers: 16, max_services: 8 });
    let (whole, whole_err) = decode_all(&codec, &[data]);
    let at = (split as usize * data.len()) / 255;
    let (parts, parts_err) = decode_all(&codec, &[&data[..at], &data[at..]]);
    assert_eq!(whole, parts, "result depends on how the input was split");
    assert_eq!(whole_err, parts_err);
    for f in whole {
        let mut out = BytesMut::new();
        codec.encode(&f, &mut out).expect("a decoded frame re-encodes within the same limits");
        assert_eq!(codec.decode(&mut out).expect("re-decodes"), Some(f));
        assert!(out.is_empty());
    }
});
