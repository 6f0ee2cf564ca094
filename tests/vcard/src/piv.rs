//! The PIV applet (NIST SP 800-73-4 Part 2, with Yubico's extensions as documented on
//! developers.yubico.com "PIV commands" and docs.yubico.com "PIV APDUs").
//!
//! This file: the applet's state, SELECT, the instruction switch, data objects (GET /
//! PUT DATA), version, serial and RESET. PIN, PUK and management key: `piv_auth.rs`.
//! Keys (generate, import, use, metadata, move, attest): `piv_keys.rs`.

use std::time::Duration;

use crate::apdu::{sw, Apdu, Response};
use crate::firmware::{DeviceIdentity, Firmware};
use crate::state::{CardState, PivState};
use crate::tlv;

/// PIV AID (SP 800-73-4 Part 1 §2.2): RID A000000308, PIX 00001000 0100. Clients select
/// with the 5-byte RID only; a prefix match is what a YubiKey does.
pub const PIV_AID: &[u8] = &[
    0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];

/// What a touch-required operation does (`--touch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Touch {
    /// The user touches at once.
    Ok,
    /// Nobody touches: the YubiKey gives up after 15 s and answers 6985 (the card answers
    /// at once; clients see the same status word).
    Timeout,
    /// The user touches after this delay.
    Delay(Duration),
}

/// Security state lost on power cycle, RESET and SELECT (SP 800-73-4 Part 2 §3.1.1:
/// selecting the PIV application resets its security status).
#[derive(Default)]
pub struct Volatile {
    pub pin_verified: bool,
    /// A PIN verification not yet used by a key of PIN policy "always".
    pub pin_fresh: bool,
    pub mgmt_authenticated: bool,
    /// The pending management key authentication (witness or challenge we sent).
    pub mgmt_pending: Option<crate::piv_mgmt::Pending>,
    /// Touch policy "cached": a touch less than 15 s ago counts.
    pub touched_at: Option<std::time::Instant>,
}

pub struct Piv {
    pub firmware: Firmware,
    pub device: DeviceIdentity,
    pub state: PivState,
    /// f9 attestation material for attest.rs: (PKCS#8 of the f9 key, f9 cert) comes from
    /// the slot table and object 5FFF01 like any other key; nothing else kept here.
    pub vol: Volatile,
    pub touch: Touch,
    /// PIN complexity (5.7+ option, `--pin-complexity`): trivial PINs and PUKs refused.
    pub pin_complexity: bool,
    /// `--forge-attestation` (tests of verifiers only): what ATTEST forges.
    pub forge: Option<crate::attest::Forge>,
    /// Whom the attestation speaks for: `device`, except under `--forge-attestation
    /// other-serial`.
    pub attest_device: DeviceIdentity,
    pub timing: crate::timing::Timing,
    /// Persistent state changed since the transport last saved.
    pub dirty: bool,
    /// `--timing`: the answer to the current command waits until then.
    answer_not_before: Option<std::time::Instant>,
}

impl Piv {
    pub fn new(
        firmware: Firmware,
        device: DeviceIdentity,
        state: &CardState,
        touch: Touch,
        timing: crate::timing::Timing,
    ) -> Piv {
        Piv {
            firmware,
            attest_device: device.clone(),
            device,
            state: state.piv.clone(),
            vol: Volatile::default(),
            touch,
            pin_complexity: false,
            forge: None,
            timing,
            dirty: false,
            answer_not_before: None,
        }
    }

    /// Power cycle: all volatile security state goes.
    pub fn power_cycle(&mut self) {
        self.vol = Volatile::default();
    }

    /// SELECT by AID; the answer is the application property template (SP 800-73-4
    /// Part 2 §3.1.1: 61 { 4F PIX+version, 79 { 4F RID }, 50 label? , AC algorithms }).
    /// YubiKeys answer 61 { 4F 06 000010000100, 79 07 { 4F 05 A000000308 } }.
    pub fn select(&mut self) -> Response {
        self.vol = Volatile::default();
        let mut inner = Vec::new();
        tlv::put(&mut inner, 0x4F, &PIV_AID[5..]);
        tlv::put(&mut inner, 0x79, &tlv::tlv(0x4F, &PIV_AID[..5]));
        Response::ok(tlv::tlv(0x61, &inner))
    }

    pub fn command(&mut self, apdu: &Apdu) -> Response {
        // CLA 00 only (no secure messaging on this card; 0x0C bits would be SM).
        if apdu.cla & !0x10 != 0 {
            return Response::status(sw::CLA_NOT_SUPPORTED);
        }
        let features = self.firmware.features();
        match apdu.ins {
            0x20 => self.verify(apdu),
            0x24 => self.change_reference(apdu),
            0x2C => self.reset_retry(apdu),
            0x47 => self.generate(apdu),
            0x87 => self.general_authenticate(apdu),
            0xCB => self.get_data(apdu),
            0xDB => self.put_data(apdu),
            0xF6 if features.move_key => self.move_key(apdu),
            0xF7 if features.metadata => self.metadata(apdu),
            0xF8 if features.piv_serial => Response::ok(self.device.serial.to_be_bytes().to_vec()),
            0xF9 if features.attestation => self.attest(apdu),
            0xFA => self.set_pin_retries(apdu),
            0xFB => self.reset(),
            0xFD => Response::ok(self.firmware.version.to_vec()),
            0xFE => self.import(apdu),
            0xFF => self.set_mgmt_key(apdu),
            _ => Response::status(sw::INS_NOT_SUPPORTED),
        }
    }

    /// RESET (Yubico INS FB): only once PIN and PUK are both blocked, else 6985.
    /// Wipes keys (not the attestation key in f9), objects (not the f9 certificate),
    /// PIN, PUK, retry counters and the management key back to the factory values.
    fn reset(&mut self) -> Response {
        if self.state.pin_tries_left != 0 || self.state.puk_tries_left != 0 {
            return Response::status(sw::CONDITIONS);
        }
        let mut fresh = PivState::factory(&self.firmware);
        if let Some(f9) = self.state.slots.remove("f9") {
            fresh.slots.insert("f9".into(), f9);
        }
        if let Some(cert) = self.state.objects.remove(&object_key(ATTESTATION_CERT)) {
            fresh.objects.insert(object_key(ATTESTATION_CERT), cert);
        }
        self.state = fresh;
        self.vol = Volatile::default();
        self.dirty = true;
        Response::success()
    }

    /// GET DATA (SP 800-73-4 Part 2 §3.1.2): data 5C <tag>; answer 53 <value> (7E for the
    /// discovery object, which is answered whole).
    fn get_data(&mut self, apdu: &Apdu) -> Response {
        if apdu.p1p2() != 0x3FFF {
            return Response::status(sw::INCORRECT_P1P2);
        }
        let Some(tag) = requested_tag(&apdu.data) else {
            return Response::status(sw::WRONG_DATA);
        };
        if tag == DISCOVERY {
            return Response::ok(discovery_object());
        }
        if !valid_object(tag) {
            return Response::status(sw::WRONG_DATA);
        }
        // PRINTED information is PIN-protected (SP 800-73-4 Part 1 Table 2; ykman keeps
        // the PIN-protected management key there).
        if tag == PRINTED && !self.vol.pin_verified {
            return Response::status(sw::SECURITY_STATUS);
        }
        match self
            .state
            .objects
            .get(&object_key(tag))
            .and_then(|v| hex::decode(v).ok())
        {
            Some(value) => Response::ok(tlv::tlv(0x53, &value)),
            None => Response::status(sw::FILE_NOT_FOUND),
        }
    }

    /// PUT DATA (SP 800-73-4 Part 2 §3.2.1): 5C <tag> 53 <value>; an empty value deletes.
    /// Needs the management key.
    fn put_data(&mut self, apdu: &Apdu) -> Response {
        if apdu.p1p2() != 0x3FFF {
            return Response::status(sw::INCORRECT_P1P2);
        }
        if !self.vol.mgmt_authenticated {
            return Response::status(sw::SECURITY_STATUS);
        }
        let Some(tlvs) = tlv::parse_all(&apdu.data) else {
            return Response::status(sw::WRONG_DATA);
        };
        let (tag, value) = match tlvs.as_slice() {
            [(0x5C, id), (0x53, value)] => match object_id(id) {
                Some(tag) => (tag, *value),
                None => return Response::status(sw::WRONG_DATA),
            },
            _ => return Response::status(sw::WRONG_DATA),
        };
        if !valid_object(tag) {
            return Response::status(sw::WRONG_DATA);
        }
        // A YubiKey 5 holds objects of up to 3063 bytes (Yubico "PIV objects": about
        // 3 KB per object, 51 KB in all).
        if value.len() > MAX_OBJECT {
            return Response::status(sw::NOT_ENOUGH_MEMORY);
        }
        self.spend(crate::timing::Op::Write);
        if value.is_empty() {
            self.state.objects.remove(&object_key(tag));
        } else {
            self.state
                .objects
                .insert(object_key(tag), hex::encode(value));
        }
        self.dirty = true;
        Response::success()
    }

    /// Starts `op`'s clock: with a timing profile, the answer leaves no earlier than the
    /// profile's figure after this call (the host's own computing time counts against it;
    /// see [`Piv::finish_timing`]).
    pub fn spend(&mut self, op: crate::timing::Op) {
        if let Some(d) = self.timing.duration(op) {
            let end = std::time::Instant::now() + d;
            self.answer_not_before = Some(self.answer_not_before.map_or(end, |t| t.max(end)));
        }
    }

    /// Waits until the operations of this command have taken the profile's time.
    pub fn finish_timing(&mut self) {
        if let Some(end) = self.answer_not_before.take() {
            let now = std::time::Instant::now();
            if end > now {
                std::thread::sleep(end - now);
            }
        }
    }
}

/// Data object tags (SP 800-73-4 Part 1 Table 3; Yubico 5FFFxx).
pub const DISCOVERY: u32 = 0x7E;
pub const PRINTED: u32 = 0x5F_C109;
pub const ATTESTATION_CERT: u32 = 0x5F_FF01;
const MAX_OBJECT: usize = 3063;

/// The object of the certificate of `slot` (Part 1 Table 3, Yubico f9 → 5FFF01).
pub fn cert_object(slot: u8) -> Option<u32> {
    Some(match slot {
        0x9A => 0x5F_C105,
        0x9C => 0x5F_C10A,
        0x9D => 0x5F_C10B,
        0x9E => 0x5F_C101,
        0x82..=0x95 => 0x5F_C10D + u32::from(slot - 0x82),
        0xF9 => ATTESTATION_CERT,
        _ => return None,
    })
}

pub fn object_key(tag: u32) -> String {
    format!("{tag:02x}")
}

/// Objects a YubiKey stores: any three-byte 5Fxxxx tag (the PIV containers 5FC101–5FC123,
/// Yubico's 5FFF00–5FFF15 for admin data, attestation, MSCMAP, … and free ones such as
/// 5F0001, which ykman's suite writes) and the biometric group template 7F61.
fn valid_object(tag: u32) -> bool {
    matches!(tag, 0x5F_0000..=0x5F_FFFF | 0x7F61)
}

/// The tag inside 5C, as a number.
fn object_id(id: &[u8]) -> Option<u32> {
    if id.is_empty() || id.len() > 3 {
        return None;
    }
    Some(id.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
}

fn requested_tag(data: &[u8]) -> Option<u32> {
    match tlv::parse_all(data)?.as_slice() {
        [(0x5C, id)] => object_id(id),
        _ => None,
    }
}

/// Discovery object (SP 800-73-4 Part 1 §3.3.2): the PIV AID and the PIN usage policy
/// (40 00: PIV PIN only; YubiKeys answer 5F2F 02 40 00).
fn discovery_object() -> Vec<u8> {
    let mut inner = tlv::tlv(0x4F, PIV_AID);
    tlv::put(&mut inner, 0x5F2F, &[0x40, 0x00]);
    tlv::tlv(DISCOVERY, &inner)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn card(version: [u8; 3]) -> Piv {
        let firmware = Firmware::new(version);
        let device = DeviceIdentity {
            serial: 42,
            version,
            form_factor: 1,
            fips: false,
        };
        let state = CardState::fresh(&firmware);
        Piv::new(
            firmware,
            device,
            &state,
            Touch::Ok,
            crate::timing::Timing::Instant,
        )
    }

    pub fn apdu(ins: u8, p1: u8, p2: u8, data: &[u8]) -> Apdu {
        Apdu {
            cla: 0,
            ins,
            p1,
            p2,
            data: data.to_vec(),
            le: Some(256),
        }
    }

    pub fn auth_default(piv: &mut Piv) {
        piv.vol.mgmt_authenticated = true;
    }

    #[test]
    fn objects_need_the_management_key_and_printed_needs_the_pin() {
        let mut piv = card([5, 7, 4]);
        piv.select();
        let put = apdu(
            0xDB,
            0x3F,
            0xFF,
            &[0x5C, 3, 0x5F, 0xC1, 0x09, 0x53, 2, 1, 2],
        );
        assert_eq!(piv.command(&put).sw, 0x6982);
        auth_default(&mut piv);
        assert_eq!(piv.command(&put).sw, 0x9000);
        let get = apdu(0xCB, 0x3F, 0xFF, &[0x5C, 3, 0x5F, 0xC1, 0x09]);
        assert_eq!(piv.command(&get).sw, 0x6982);
        piv.vol.pin_verified = true;
        assert_eq!(piv.command(&get).to_bytes(), vec![0x53, 2, 1, 2, 0x90, 0]);
        let chuid = apdu(0xCB, 0x3F, 0xFF, &[0x5C, 3, 0x5F, 0xC1, 0x02]);
        assert_eq!(piv.command(&chuid).sw, 0x6A82);
        let disc = piv.command(&apdu(0xCB, 0x3F, 0xFF, &[0x5C, 1, 0x7E]));
        assert_eq!(disc.data[0], 0x7E);
    }

    #[test]
    fn select_clears_security_state_and_gates_follow_firmware() {
        let mut piv = card([5, 2, 7]);
        piv.vol.pin_verified = true;
        assert_eq!(piv.select().data[0], 0x61);
        assert!(!piv.vol.pin_verified);
        assert_eq!(piv.command(&apdu(0xF7, 0, 0x9B, &[])).sw, 0x6D00);
        assert_eq!(piv.command(&apdu(0xFD, 0, 0, &[])).data, vec![5, 2, 7]);
        assert_eq!(
            piv.command(&apdu(0xF8, 0, 0, &[])).data,
            42u32.to_be_bytes()
        );
        let mut old = card([4, 3, 7]);
        assert_eq!(old.command(&apdu(0xF8, 0, 0, &[])).sw, 0x6D00);
    }

    #[test]
    fn reset_needs_pin_and_puk_blocked() {
        let mut piv = card([5, 7, 4]);
        assert_eq!(piv.command(&apdu(0xFB, 0, 0, &[])).sw, 0x6985);
        piv.state.pin_tries_left = 0;
        assert_eq!(piv.command(&apdu(0xFB, 0, 0, &[])).sw, 0x6985);
        piv.state.puk_tries_left = 0;
        piv.state.objects.insert("5fc105".into(), "00".into());
        assert_eq!(piv.command(&apdu(0xFB, 0, 0, &[])).sw, 0x9000);
        assert_eq!(piv.state.pin_tries_left, 3);
        assert!(piv.state.objects.is_empty());
    }
}
