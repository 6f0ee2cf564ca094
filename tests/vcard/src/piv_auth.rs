//! PIN and PUK: VERIFY, CHANGE REFERENCE DATA, RESET RETRY COUNTER (SP 800-73-4 Part 2
//! §3.2.1–3.2.3), Yubico SET PIN RETRIES (FA), PIN complexity, and the touch prompt.
//! The management key: `piv_mgmt.rs`.

use zeroize::Zeroizing;

use crate::apdu::{sw, Apdu, Response};
use crate::piv::{Piv, Touch};
use crate::state::{DEFAULT_PIN, DEFAULT_PUK};
use crate::timing::Op;

const PIN_REF: u8 = 0x80;
const PUK_REF: u8 = 0x81;

/// A PIN or PUK as VERIFY carries it: 8 bytes, padded with FF; 6 to 8 characters.
fn valid_reference(value: &[u8]) -> bool {
    if value.len() != 8 {
        return false;
    }
    let len = value.iter().position(|&b| b == 0xFF).unwrap_or(8);
    len >= 6 && value[len..].iter().all(|&b| b == 0xFF)
}

/// PIN complexity (YubiKey 5.7+, docs.yubico.com "PIN complexity policy", after NIST SP
/// 800-63B): a value of one repeated character, or one of the commonly used values, is
/// refused. Yubico's full blocklist is in the YubiKey Technical Manual; this is the part
/// of it we could confirm from public examples and clients' tests.
fn trivial(value: &[u8]) -> bool {
    const BLOCKLIST: &[&[u8]] = &[
        b"123456",
        b"123123",
        b"654321",
        b"123321",
        b"112233",
        b"121212",
        b"123654",
        b"159753",
        b"12345678",
        b"87654321",
        b"11223344",
        b"1234567",
        b"password",
        b"abc123",
        b"qwerty",
        b"iloveyou",
        b"000000",
    ];
    let len = value.iter().position(|&b| b == 0xFF).unwrap_or(value.len());
    let value = &value[..len];
    value.iter().all(|&b| b == value[0]) || BLOCKLIST.contains(&value)
}

impl Piv {
    /// A new PIN or PUK this card refuses under PIN complexity.
    fn refused(&self, new: &[u8]) -> bool {
        self.pin_complexity && trivial(new)
    }

    fn pin(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(hex::decode(&self.state.pin).unwrap_or_default())
    }

    fn puk(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(hex::decode(&self.state.puk).unwrap_or_default())
    }

    /// The PIN's tries after a wrong value: decrement, answer 63Cx (6983 once blocked).
    fn wrong_pin(&mut self) -> Response {
        self.state.pin_tries_left = self.state.pin_tries_left.saturating_sub(1);
        self.vol.pin_verified = false;
        self.vol.pin_fresh = false;
        self.dirty = true;
        Response::status(sw::retries(self.state.pin_tries_left))
    }

    fn wrong_puk(&mut self) -> Response {
        self.state.puk_tries_left = self.state.puk_tries_left.saturating_sub(1);
        self.dirty = true;
        Response::status(sw::retries(self.state.puk_tries_left))
    }

    /// VERIFY (20): P2 80 only. Empty data asks for the status (9000 when verified, else
    /// 63Cx); P1 FF forgets the verification; a Bio reference (96) is not on this card.
    pub(crate) fn verify(&mut self, apdu: &Apdu) -> Response {
        if apdu.p2 == 0x96 {
            return Response::status(sw::REFERENCE_NOT_FOUND);
        }
        if apdu.p2 != PIN_REF || !matches!(apdu.p1, 0x00 | 0xFF) {
            return Response::status(sw::INCORRECT_P1P2);
        }
        if apdu.p1 == 0xFF {
            self.vol.pin_verified = false;
            self.vol.pin_fresh = false;
            return Response::success();
        }
        if apdu.data.is_empty() {
            if self.vol.pin_verified {
                return Response::success();
            }
            if self.state.pin_tries_left == 0 {
                return Response::status(sw::AUTH_BLOCKED);
            }
            return Response::status(sw::retries(self.state.pin_tries_left));
        }
        if self.state.pin_tries_left == 0 {
            return Response::status(sw::AUTH_BLOCKED);
        }
        // Any 8-byte value is a try (ykman blocks the PIN with VERIFY of 8 × FF).
        if apdu.data.len() != 8 {
            return Response::status(sw::WRONG_DATA);
        }
        self.spend(Op::Verify);
        if apdu.data.as_slice() != self.pin().as_slice() {
            return self.wrong_pin();
        }
        if self.state.pin_tries_left != self.state.pin_tries_total {
            self.state.pin_tries_left = self.state.pin_tries_total;
            self.dirty = true;
        }
        self.vol.pin_verified = true;
        self.vol.pin_fresh = true;
        Response::success()
    }

    /// CHANGE REFERENCE DATA (24): old value (8) then new value (8) for PIN (80) or PUK (81).
    pub(crate) fn change_reference(&mut self, apdu: &Apdu) -> Response {
        if apdu.p1 != 0 || !matches!(apdu.p2, PIN_REF | PUK_REF) {
            return Response::status(sw::INCORRECT_P1P2);
        }
        let is_pin = apdu.p2 == PIN_REF;
        let left = if is_pin {
            self.state.pin_tries_left
        } else {
            self.state.puk_tries_left
        };
        if left == 0 {
            return Response::status(sw::AUTH_BLOCKED);
        }
        if apdu.data.len() != 16 {
            return Response::status(sw::WRONG_DATA);
        }
        let (old, new) = apdu.data.split_at(8);
        if !valid_reference(new) || self.refused(new) {
            return Response::status(sw::WRONG_DATA);
        }
        self.spend(Op::Verify);
        let current = if is_pin { self.pin() } else { self.puk() };
        if old != current.as_slice() {
            return if is_pin {
                self.wrong_pin()
            } else {
                self.wrong_puk()
            };
        }
        if is_pin {
            self.state.pin = hex::encode(new);
            self.state.pin_tries_left = self.state.pin_tries_total;
        } else {
            self.state.puk = hex::encode(new);
            self.state.puk_tries_left = self.state.puk_tries_total;
        }
        self.dirty = true;
        Response::success()
    }

    /// RESET RETRY COUNTER (2C): PUK (8) then new PIN (8); P2 80.
    pub(crate) fn reset_retry(&mut self, apdu: &Apdu) -> Response {
        if apdu.p1 != 0 || apdu.p2 != PIN_REF {
            return Response::status(sw::INCORRECT_P1P2);
        }
        if self.state.puk_tries_left == 0 {
            return Response::status(sw::AUTH_BLOCKED);
        }
        if apdu.data.len() != 16 {
            return Response::status(sw::WRONG_DATA);
        }
        let (puk, new_pin) = apdu.data.split_at(8);
        self.spend(Op::Verify);
        if puk != self.puk().as_slice() {
            return self.wrong_puk();
        }
        if !valid_reference(new_pin) || self.refused(new_pin) {
            return Response::status(sw::WRONG_DATA);
        }
        self.state.puk_tries_left = self.state.puk_tries_total;
        self.state.pin = hex::encode(new_pin);
        self.state.pin_tries_left = self.state.pin_tries_total;
        self.dirty = true;
        Response::success()
    }

    /// SET PIN RETRIES (Yubico FA): P1 PIN tries, P2 PUK tries (1–255). Needs the
    /// management key and the PIN; sets PIN and PUK back to their defaults.
    pub(crate) fn set_pin_retries(&mut self, apdu: &Apdu) -> Response {
        if !self.vol.mgmt_authenticated || !self.vol.pin_verified {
            return Response::status(sw::SECURITY_STATUS);
        }
        if apdu.p1 == 0 || apdu.p2 == 0 {
            return Response::status(sw::INCORRECT_P1P2);
        }
        self.state.pin_tries_total = apdu.p1;
        self.state.pin_tries_left = apdu.p1;
        self.state.puk_tries_total = apdu.p2;
        self.state.puk_tries_left = apdu.p2;
        self.state.pin = hex::encode(DEFAULT_PIN);
        self.state.puk = hex::encode(DEFAULT_PUK);
        self.vol.pin_verified = false;
        self.vol.pin_fresh = false;
        self.dirty = true;
        Response::success()
    }

    pub(crate) fn pin_is_default(&self) -> bool {
        self.pin().as_slice() == DEFAULT_PIN
    }

    pub(crate) fn puk_is_default(&self) -> bool {
        self.puk().as_slice() == DEFAULT_PUK
    }

    /// Waits for a touch as `--touch` says; false when nobody touched.
    pub(crate) fn touch(&mut self, policy: u8) -> bool {
        const CACHE: std::time::Duration = std::time::Duration::from_secs(15);
        match policy {
            2 => {}
            3 => {
                if self.vol.touched_at.is_some_and(|t| t.elapsed() < CACHE) {
                    return true;
                }
            }
            _ => return true,
        }
        match self.touch {
            Touch::Ok => {}
            Touch::Timeout => return false,
            Touch::Delay(d) => std::thread::sleep(d),
        }
        self.vol.touched_at = Some(std::time::Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use crate::piv::tests::{apdu, card};

    fn pin(value: &[u8]) -> Vec<u8> {
        let mut v = value.to_vec();
        v.resize(8, 0xFF);
        v
    }

    #[test]
    fn wrong_pins_count_down_and_block() {
        let mut piv = card([5, 7, 4]);
        assert_eq!(piv.command(&apdu(0x20, 0, 0x80, &[])).sw, 0x63C3);
        assert_eq!(
            piv.command(&apdu(0x20, 0, 0x80, &pin(b"000000"))).sw,
            0x63C2
        );
        let mut change = pin(b"111111");
        change.extend(pin(b"222222"));
        assert_eq!(piv.command(&apdu(0x24, 0, 0x80, &change)).sw, 0x63C1);
        assert_eq!(
            piv.command(&apdu(0x20, 0, 0x80, &pin(b"000000"))).sw,
            0x63C0
        );
        assert_eq!(
            piv.command(&apdu(0x20, 0, 0x80, &pin(b"123456"))).sw,
            0x6983
        );
        assert_eq!(piv.command(&apdu(0x20, 0, 0x80, &[])).sw, 0x6983);
        // The PUK unblocks it.
        let mut unblock = pin(b"12345678");
        unblock.extend(pin(b"654321"));
        assert_eq!(piv.command(&apdu(0x2C, 0, 0x80, &unblock)).sw, 0x9000);
        assert_eq!(
            piv.command(&apdu(0x20, 0, 0x80, &pin(b"654321"))).sw,
            0x9000
        );
        assert_eq!(piv.command(&apdu(0x20, 0, 0x80, &[])).sw, 0x9000);
        assert_eq!(piv.command(&apdu(0x20, 0xFF, 0x80, &[])).sw, 0x9000);
        assert_eq!(piv.command(&apdu(0x20, 0, 0x80, &[])).sw, 0x63C3);
        // A value of the wrong length is refused without spending a try.
        assert_eq!(piv.command(&apdu(0x20, 0, 0x80, b"123")).sw, 0x6A80);
        assert_eq!(piv.command(&apdu(0x20, 0, 0x96, &[])).sw, 0x6A88);
    }

    #[test]
    fn set_pin_retries_needs_both_and_resets_values() {
        let mut piv = card([5, 4, 3]);
        assert_eq!(piv.command(&apdu(0xFA, 5, 6, &[])).sw, 0x6982);
        piv.vol.mgmt_authenticated = true;
        assert_eq!(piv.command(&apdu(0xFA, 5, 6, &[])).sw, 0x6982);
        assert_eq!(
            piv.command(&apdu(0x20, 0, 0x80, &pin(b"123456"))).sw,
            0x9000
        );
        assert_eq!(piv.command(&apdu(0xFA, 5, 6, &[])).sw, 0x9000);
        assert_eq!(piv.command(&apdu(0x20, 0, 0x80, &[])).sw, 0x63C5);
    }

    #[test]
    fn pin_complexity_refuses_trivial_values() {
        let mut piv = card([5, 7, 4]);
        piv.pin_complexity = true;
        let change = |new: &[u8]| {
            let mut data = pin(b"123456");
            data.extend(pin(new));
            apdu(0x24, 0, 0x80, &data)
        };
        for bad in [
            &b"111111"[..],
            b"4444444",
            b"abc123",
            b"password",
            b"123123",
        ] {
            assert_eq!(piv.command(&change(bad)).sw, 0x6A80, "{bad:?}");
        }
        assert_eq!(piv.command(&change(b"123458")).sw, 0x9000);
        let mut plain = card([5, 7, 4]);
        assert_eq!(plain.command(&change(b"111111")).sw, 0x9000);
    }
}
