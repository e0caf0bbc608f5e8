//! Segment framing: many stored messages packed into one write-once value.
//!
//! A segment is the concatenation of frames `[u32 big-endian length][bytes]`,
//! one per message, in stream order. Positions are not stored: message `i`
//! starts at the segment's start plus the lengths of the messages before it,
//! exactly where it started in the hot log, so offsets never change.

use crate::error::{Error, Result};

const LEN: usize = 4;

/// Packs messages into one segment.
pub fn encode<'a>(messages: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        let len = u32::try_from(m.len()).expect("a stored message is below 1 GiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

/// Unpacks a segment into its messages; a truncated frame is an error (a
/// segment is written once, whole, so this means corruption).
pub fn decode(segment: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = segment;
    while !rest.is_empty() {
        let corrupt = || Error::CorruptSegment(segment.len() - rest.len());
        let header: [u8; LEN] = rest.get(..LEN).ok_or_else(corrupt)?.try_into().expect("4 bytes");
        let len = u32::from_be_bytes(header) as usize;
        let body = rest.get(LEN..LEN + len).ok_or_else(corrupt)?;
        out.push(body);
        rest = &rest[LEN + len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames() {
        assert_eq!(encode([&b"ab"[..], b""]), b"\0\0\0\x02ab\0\0\0\0");
        assert_eq!(decode(b"\0\0\0\x02ab\0\0\0\0").unwrap(), vec![&b"ab"[..], b""]);
        assert!(decode(b"").unwrap().is_empty());
        assert_eq!(decode(b"\0\0\0\x05ab"), Err(Error::CorruptSegment(0)));
        assert_eq!(decode(b"\0\0\0\x01a\0\0"), Err(Error::CorruptSegment(5)));
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity(xs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..50)) {
            let packed = encode(xs.iter().map(Vec::as_slice));
            let back: Vec<Vec<u8>> = decode(&packed).unwrap().into_iter().map(<[u8]>::to_vec).collect();
            prop_assert_eq!(back, xs);
        }
    }
}
