//! pivault's one BER-TLV reader and writer for card answers and commands: one-byte tags,
//! short and 0x81/0x82 long-form lengths (ISO/IEC 7816-4 5.2.2; every PIV object and
//! Yubico extension answer pivault reads fits in them).

/// A BER-TLV with a one-byte tag (lengths up to 65535, ISO 7816-4 5.2.2).
pub(crate) fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match value.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n <= 0xFF => out.extend_from_slice(&[0x81, n as u8]),
        n => {
            let n = u16::try_from(n).unwrap_or(u16::MAX);
            out.push(0x82);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    out.extend_from_slice(value);
    out
}

/// Why a run of TLVs does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TlvError {
    #[error("a TLV header is cut short at byte {0}")]
    Truncated(usize),
    #[error("tag {tag:02X} at byte {at} has a length form pivault does not read ({form:02X})")]
    LengthForm { tag: u8, at: usize, form: u8 },
    #[error("tag {tag:02X} at byte {at} claims {len} bytes, more than the answer holds")]
    Overrun { tag: u8, at: usize, len: usize },
}

/// The TLVs of a flat run, in order, as (tag, value). A malformed TLV ends the run with
/// one `Err`; the values always lie inside `data`.
pub(crate) fn tlvs(data: &[u8]) -> Tlvs<'_> {
    Tlvs { data, at: 0 }
}

pub(crate) struct Tlvs<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Result<(u8, &'a [u8]), TlvError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.data.get(self.at..)?;
        let (&tag, after_tag) = rest.split_first()?;
        let at = self.at;
        // After a malformed TLV nothing more is read: where the next one starts is unknown.
        let (len, hdr) = match after_tag {
            [] => (None, 0),
            [l @ 0..=0x7f, ..] => (Some(usize::from(*l)), 2),
            [0x81, l, ..] => (Some(usize::from(*l)), 3),
            [0x82, h, l, ..] => (Some(usize::from(*h) << 8 | usize::from(*l)), 4),
            [0x81 | 0x82, ..] => (None, 0),
            [form, ..] => {
                self.at = self.data.len();
                return Some(Err(TlvError::LengthForm {
                    tag,
                    at,
                    form: *form,
                }));
            }
        };
        let Some(len) = len else {
            self.at = self.data.len();
            return Some(Err(TlvError::Truncated(at)));
        };
        match rest.get(hdr..hdr + len) {
            Some(value) => {
                self.at += hdr + len;
                Some(Ok((tag, value)))
            }
            None => {
                self.at = self.data.len();
                Some(Err(TlvError::Overrun { tag, at, len }))
            }
        }
    }
}

/// Find a BER-TLV value by tag in a flat run of TLVs: the first well-formed one before
/// any malformed TLV.
pub(crate) fn find_tlv(data: &[u8], tag: u8) -> Option<&[u8]> {
    tlvs(data)
        .map_while(Result::ok)
        .find_map(|(t, v)| (t == tag).then_some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_lookup() {
        let data = [0x88, 0x05, 0x89, 0x03, 1, 2, 3, 0x90, 0x81, 0x01, 7];
        let inner = find_tlv(&data, 0x88).expect("88");
        assert_eq!(find_tlv(inner, 0x89), Some(&[1u8, 2, 3][..]));
        assert_eq!(find_tlv(&data, 0x90), Some(&[7u8][..]));
        assert_eq!(find_tlv(&data, 0x91), None);
        assert_eq!(find_tlv(&[0x88, 0x05, 1], 0x88), None, "truncated value");
        assert_eq!(tlv(0x53, &[1; 200])[..3], [0x53, 0x81, 200]);
    }

    #[test]
    fn malformed_runs_end_with_one_error() {
        fn all(d: &[u8]) -> Vec<Result<(u8, &[u8]), TlvError>> {
            tlvs(d).collect()
        }
        assert_eq!(all(&[]), vec![]);
        assert_eq!(all(&[0x01]), vec![Err(TlvError::Truncated(0))]);
        assert_eq!(all(&[0x01, 0x00]), vec![Ok((0x01, &[][..]))]);
        assert_eq!(
            all(&[0x01, 0x01, 0xAA, 0x02, 0x82, 0x00]),
            vec![Ok((0x01, &[0xAA][..])), Err(TlvError::Truncated(3))]
        );
        assert_eq!(
            all(&[0x04, 0x83, 0, 0, 1]),
            vec![Err(TlvError::LengthForm {
                tag: 4,
                at: 0,
                form: 0x83
            })]
        );
        assert_eq!(
            all(&[0x04, 0x05, 1]),
            vec![Err(TlvError::Overrun {
                tag: 4,
                at: 0,
                len: 5
            })]
        );
    }
}
