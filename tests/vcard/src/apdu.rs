//! Command and response APDUs as the applets see them (ISO/IEC 7816-4 §5.1).
//!
//! The transport (`transport.rs`) has already merged command chaining (CLA bit 0x10) into
//! one [`Apdu`] and splits long responses with 61xx / GET RESPONSE, so an applet only ever
//! sees whole commands and returns whole answers. This interface is shared with the
//! management applet (`mgmt.rs`): keep it stable.

// A shared interface: not every applet uses every helper and status word.
#![allow(dead_code)]

/// One command, chaining already merged.
#[derive(Clone, PartialEq, Eq)]
pub struct Apdu {
    /// Class byte of the last command of a chain (chaining bit cleared).
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    pub data: Vec<u8>,
    /// Expected response length; `Some(256)` for a short Le of 00, `Some(65536)` for an
    /// extended Le of 0000, `None` when the command had no Le field.
    pub le: Option<usize>,
}

/// A response: data and status word. Chaining into 61xx is the transport's job.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    pub data: Vec<u8>,
    pub sw: u16,
}

/// Status words used by the applets (ISO/IEC 7816-4 §5.6, SP 800-73-4 Part 2 §5.6).
pub mod sw {
    pub const OK: u16 = 0x9000;
    /// Security status not satisfied (PIN or management key needed).
    pub const SECURITY_STATUS: u16 = 0x6982;
    /// Authentication method blocked.
    pub const AUTH_BLOCKED: u16 = 0x6983;
    /// Reference data not usable (e.g. touch timed out on a YubiKey).
    pub const DATA_INVALID: u16 = 0x6984;
    /// Conditions of use not satisfied.
    pub const CONDITIONS: u16 = 0x6985;
    pub const COMMAND_NOT_ALLOWED: u16 = 0x6986;
    pub const WRONG_DATA: u16 = 0x6A80;
    pub const FUNC_NOT_SUPPORTED: u16 = 0x6A81;
    pub const FILE_NOT_FOUND: u16 = 0x6A82;
    pub const NOT_ENOUGH_MEMORY: u16 = 0x6A84;
    pub const INCORRECT_P1P2: u16 = 0x6A86;
    pub const REFERENCE_NOT_FOUND: u16 = 0x6A88;
    pub const WRONG_LENGTH: u16 = 0x6700;
    pub const INS_NOT_SUPPORTED: u16 = 0x6D00;
    pub const CLA_NOT_SUPPORTED: u16 = 0x6E00;
    pub const MEMORY_FAILURE: u16 = 0x6581;
    pub const NO_INFO: u16 = 0x6F00;
    /// 63Cx: verification failed, x tries left (x capped at 15).
    pub fn retries(left: u8) -> u16 {
        0x63C0 | u16::from(left.min(15))
    }
}

/// Why raw bytes are not an APDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer than 4 header bytes or a length field that does not match the body.
    WrongLength,
}

impl Apdu {
    /// Parses one raw command (cases 1–4, short or extended; ISO/IEC 7816-4 §5.1).
    /// The chaining bit of CLA is kept: the transport looks at it and clears it.
    pub fn parse(raw: &[u8]) -> Result<Apdu, ParseError> {
        let [cla, ins, p1, p2, body @ ..] = raw else {
            return Err(ParseError::WrongLength);
        };
        let (data, le) = match body {
            // Case 1.
            [] => (Vec::new(), None),
            // Case 2 short: Le only (00 means 256).
            [le] => (Vec::new(), Some(short_le(*le))),
            // Extended forms start with a 00 byte followed by two length bytes.
            [0, hi, lo, rest @ ..] => {
                let n = usize::from(u16::from_be_bytes([*hi, *lo]));
                if rest.is_empty() {
                    // Case 2 extended: Le only.
                    (Vec::new(), Some(if n == 0 { 65536 } else { n }))
                } else if n == 0 {
                    return Err(ParseError::WrongLength);
                } else if rest.len() == n {
                    // Case 3 extended.
                    (rest.to_vec(), None)
                } else if rest.len() == n + 2 {
                    // Case 4 extended.
                    let le = usize::from(u16::from_be_bytes([rest[n], rest[n + 1]]));
                    (rest[..n].to_vec(), Some(if le == 0 { 65536 } else { le }))
                } else {
                    return Err(ParseError::WrongLength);
                }
            }
            [lc, rest @ ..] => {
                let n = usize::from(*lc);
                if n == 0 {
                    return Err(ParseError::WrongLength);
                } else if rest.len() == n {
                    // Case 3 short.
                    (rest.to_vec(), None)
                } else if rest.len() == n + 1 {
                    // Case 4 short.
                    (rest[..n].to_vec(), Some(short_le(rest[n])))
                } else {
                    return Err(ParseError::WrongLength);
                }
            }
        };
        Ok(Apdu {
            cla: *cla,
            ins: *ins,
            p1: *p1,
            p2: *p2,
            data,
            le,
        })
    }

    /// Whether CLA announces more commands of a chain (bit 0x10, ISO/IEC 7816-4 §5.4.2).
    pub fn chained(&self) -> bool {
        self.cla & 0x10 != 0
    }

    /// P1 and P2 as one number (handy in match arms).
    pub fn p1p2(&self) -> u16 {
        u16::from_be_bytes([self.p1, self.p2])
    }
}

fn short_le(le: u8) -> usize {
    if le == 0 {
        256
    } else {
        usize::from(le)
    }
}

impl Response {
    /// 9000 with `data`.
    pub fn ok(data: Vec<u8>) -> Response {
        Response { data, sw: sw::OK }
    }

    /// 9000 with no data.
    pub fn success() -> Response {
        Response::status(sw::OK)
    }

    /// A bare status word.
    pub fn status(sw: u16) -> Response {
        Response {
            data: Vec::new(),
            sw,
        }
    }

    pub fn is_ok(&self) -> bool {
        self.sw == sw::OK
    }

    /// Data followed by SW1 SW2, as it goes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 2);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.sw.to_be_bytes());
        out
    }
}

impl From<u16> for Response {
    fn from(sw: u16) -> Response {
        Response::status(sw)
    }
}

// Debug never shows data: commands carry PINs and keys, answers carry secrets too
// (a decrypted session key). The transport logs redacted views itself.
impl std::fmt::Debug for Apdu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Apdu {{ {:02x} {:02x} {:02x} {:02x}, {} data bytes, le {:?} }}",
            self.cla,
            self.ins,
            self.p1,
            self.p2,
            self.data.len(),
            self.le
        )
    }
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Response {{ {} data bytes, sw {:04x} }}",
            self.data.len(),
            self.sw
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_four_cases_short_and_extended() {
        let a = Apdu::parse(&[0, 0xA4, 4, 0]).unwrap();
        assert_eq!((a.data.len(), a.le), (0, None));
        let a = Apdu::parse(&[0, 0xFD, 0, 0, 0]).unwrap();
        assert_eq!(a.le, Some(256));
        let a = Apdu::parse(&[0, 0xA4, 4, 0, 2, 0xA0, 0]).unwrap();
        assert_eq!((a.data, a.le), (vec![0xA0, 0], None));
        let a = Apdu::parse(&[0, 0xCB, 0x3F, 0xFF, 1, 0x5C, 0]).unwrap();
        assert_eq!((a.data, a.le), (vec![0x5C], Some(256)));
        let a = Apdu::parse(&[0, 0xCB, 0x3F, 0xFF, 0, 0, 1, 0x5C, 0, 0]).unwrap();
        assert_eq!((a.data, a.le), (vec![0x5C], Some(65536)));
        let a = Apdu::parse(&[0, 0xCB, 0x3F, 0xFF, 0, 0, 1, 0x5C]).unwrap();
        assert_eq!((a.data, a.le), (vec![0x5C], None));
        let a = Apdu::parse(&[0, 0xCB, 0x3F, 0xFF, 0, 0x01, 0x00]).unwrap();
        assert_eq!((a.data.len(), a.le), (0, Some(256)));
        assert!(Apdu::parse(&[0, 1, 2]).is_err());
        assert!(Apdu::parse(&[0, 1, 2, 3, 5, 1]).is_err());
    }

    #[test]
    fn debug_hides_data() {
        let a = Apdu::parse(&[0, 0x20, 0, 0x80, 2, b'1', b'2']).unwrap();
        assert!(!format!("{a:?}").contains("31"));
        assert_eq!(sw::retries(3), 0x63C3);
        assert_eq!(Response::ok(vec![1]).to_bytes(), vec![1, 0x90, 0]);
    }
}
