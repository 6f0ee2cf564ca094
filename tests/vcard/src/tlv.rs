//! BER-TLV as PIV uses it (SP 800-73-4 Part 2 §3; ISO/IEC 7816-4 §5.2): one- to three-byte
//! tags (5FC1xx, 7F49), lengths in the short form or 81/82 long forms.

/// Appends tag, length and value.
pub fn put(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    if tag > 0xFFFF {
        out.extend_from_slice(&tag.to_be_bytes()[1..]);
    } else if tag > 0xFF {
        out.extend_from_slice(&(tag as u16).to_be_bytes());
    } else {
        out.push(tag as u8);
    }
    put_len(out, value.len());
    out.extend_from_slice(value);
}

/// One TLV as a new vector.
pub fn tlv(tag: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    put(&mut out, tag, value);
    out
}

pub fn put_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xFF {
        out.extend_from_slice(&[0x81, len as u8]);
    } else if len <= 0xFFFF {
        out.push(0x82);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x83);
        out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    }
}

/// Reads one TLV from the front of `input`: (tag, value, rest). `None` if malformed.
pub fn take(input: &[u8]) -> Option<(u32, &[u8], &[u8])> {
    let (&first, mut rest) = input.split_first()?;
    let mut tag = u32::from(first);
    // Multi-byte tag: low five bits all set, then bytes while bit 8 is set.
    if first & 0x1F == 0x1F {
        loop {
            let (&b, r) = rest.split_first()?;
            rest = r;
            tag = (tag << 8) | u32::from(b);
            if b & 0x80 == 0 {
                break;
            }
            if tag > 0x00FF_FFFF {
                return None;
            }
        }
    }
    let (&l, r) = rest.split_first()?;
    rest = r;
    let len = match l {
        0..=0x7F => usize::from(l),
        0x81 => {
            let (&b, r) = rest.split_first()?;
            rest = r;
            usize::from(b)
        }
        0x82 => {
            let b = rest.get(..2)?;
            rest = &rest[2..];
            usize::from(u16::from_be_bytes([b[0], b[1]]))
        }
        0x83 => {
            let b = rest.get(..3)?;
            rest = &rest[3..];
            (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
        }
        _ => return None,
    };
    let value = rest.get(..len)?;
    Some((tag, value, &rest[len..]))
}

/// All TLVs of `input` in order; `None` if any is malformed.
pub fn parse_all(mut input: &[u8]) -> Option<Vec<(u32, &[u8])>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (tag, value, rest) = take(input)?;
        out.push((tag, value));
        input = rest;
    }
    Some(out)
}

/// The value of the first TLV with `tag` among the top-level TLVs of `input`.
pub fn find(input: &[u8], tag: u32) -> Option<&[u8]> {
    parse_all(input)?
        .into_iter()
        .find(|(t, _)| *t == tag)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_long_tags_and_lengths() {
        let value = vec![7u8; 300];
        let mut out = Vec::new();
        put(&mut out, 0x7F49, &value);
        put(&mut out, 0x5FC105, &[1, 2]);
        put(&mut out, 0x53, &[0; 200]);
        assert_eq!(&out[..5], &[0x7F, 0x49, 0x82, 0x01, 0x2C]);
        let all = parse_all(&out).unwrap();
        assert_eq!(all[0], (0x7F49, value.as_slice()));
        assert_eq!(all[1], (0x5FC105, &[1u8, 2][..]));
        assert_eq!(all[2].1.len(), 200);
        assert_eq!(find(&out, 0x53).map(<[u8]>::len), Some(200));
        assert!(take(&[0x53, 0x05, 1]).is_none());
    }
}
