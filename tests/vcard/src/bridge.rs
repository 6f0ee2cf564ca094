//! The bridge between vpcd's raw APDUs and the PIV applet: ISO 7816-4 transport (command
//! chaining, response chaining with 61xx / GET RESPONSE) plus what a YubiKey 5 does that
//! `piv-authenticator` doesn't, so that yubico-piv-tool, ykman, OpenSC and the `yubikey`
//! crate treat the emulator as a YubiKey:
//!
//! 1. SELECT with the right-truncated PIV AID `A0 00 00 03 08` (the emulator wants ≥ 9 bytes);
//! 2. a command without Le gets its data anyway (as if Le = 256), like a YubiKey;
//! 3. the response framing (short or extended) follows the *last* raw APDU of a chain;
//! 4. GET VERSION answers the configured firmware version;
//! 5. GET SERIAL answers the configured serial;
//! 6. data objects 5FFFxx (Yubico ADMIN DATA etc.) are stored and served here;
//! 7. key history 5FC10C is absent unless written, PRINTED 5FC109 is empty unless written;
//!
//! and a minimal Yubico management application (SELECT + READ CONFIG) so `ykman info`
//! shows the serial, and a power cycle forgets PIN and management key authentication.

use heapless::VecView;
use iso7816::{command::CommandView, Status};

use crate::state::BridgeObjects;

/// The PIV applet behind the bridge.
pub trait PivApplet {
    /// Executes one complete (unchained) command.
    fn respond(&mut self, command: CommandView<'_>, reply: &mut VecView<u8>) -> Result<(), Status>;
    /// Card reset or power cycle: forget all volatile security state.
    fn reset(&mut self);
}

/// Largest command or response data field we handle (a PIV certificate object is ≤ 3 KB
/// on a YubiKey; RSA-4096 signatures are 512 bytes).
pub const MAX_DATA: usize = 8192;

// Status words, ISO 7816-4 §5.6.
const SW_OK: u16 = 0x9000;
const SW_MORE: u16 = 0x6100;
const SW_WRONG_LENGTH: u16 = 0x6700;
const SW_SECURITY_STATUS: u16 = 0x6982;
const SW_CONDITIONS: u16 = 0x6985;
const SW_NOT_FOUND: u16 = 0x6A82;
const SW_INS_NOT_SUPPORTED: u16 = 0x6D00;
const SW_CLA_NOT_SUPPORTED: u16 = 0x6E00;

/// PIV card application AID, NIST SP 800-73-4 Part 1 §2.2 (RID A000000308, PIX
/// 0000 1000 0100). Part 2 §3.1.1: SELECT may give the right-truncated AID.
const PIV_AID: [u8; 11] = [
    0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];
/// Yubico's management application (yubikit `AID.MANAGEMENT`).
const MGMT_AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x05, 0x27, 0x47, 0x11, 0x17];

// Instructions: ISO 7816-4 / SP 800-73-4 Part 2 §3, and Yubico's PIV extensions
// (https://developers.yubico.com/PIV/Introduction/Yubico_extensions.html).
const INS_SELECT: u8 = 0xA4;
const INS_GET_RESPONSE: u8 = 0xC0;
const INS_GET_DATA: u8 = 0xCB;
const INS_PUT_DATA: u8 = 0xDB;
const INS_GENERAL_AUTHENTICATE: u8 = 0x87;
const INS_YK_GET_VERSION: u8 = 0xFD;
const INS_YK_GET_SERIAL: u8 = 0xF8;
const INS_YK_RESET: u8 = 0xFB;
/// Yubico management: READ CONFIG (yubikit `INS_READ_CONFIG`).
const INS_MGMT_READ_CONFIG: u8 = 0x1D;

/// PIV card application administration key reference, SP 800-73-4 Part 1 Table 5.
const KEY_REF_MANAGEMENT: u8 = 0x9B;

/// PRINTED information (SP 800-73-4 Part 1 Table 3); ykman keeps a PIN-protected
/// management key in it.
const TAG_PRINTED: u32 = 0x5F_C109;
/// Key history object (SP 800-73-4 Part 1 Table 3).
const TAG_KEY_HISTORY: u32 = 0x5F_C10C;

/// Objects the bridge stores itself: Yubico's 5FFFxx range (ADMIN DATA 5FFF00, MSCMAP,
/// MSROOTS, attestation...) which the emulator refuses, and the key history, which the
/// emulator synthesises even when nothing was written (a fresh YubiKey has none).
fn bridge_held(tag: u32) -> bool {
    tag & 0xFF_FF00 == 0x5F_FF00 || tag == TAG_KEY_HISTORY
}

/// The identity the card reports.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    pub serial: u32,
    pub version: [u8; 3],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Application {
    Piv,
    Management,
}

/// A parsed command APDU (ISO 7816-4 §5.1).
#[derive(Clone, Debug)]
struct Apdu {
    cla: u8,
    ins: u8,
    p1: u8,
    p2: u8,
    data: Vec<u8>,
    /// Ne; 0 when Le was absent.
    le: usize,
    extended: bool,
}

impl Apdu {
    fn parse(raw: &[u8]) -> Result<Self, u16> {
        let view = CommandView::try_from(raw).map_err(|_| SW_WRONG_LENGTH)?;
        Ok(Self {
            cla: raw[0],
            ins: raw[1],
            p1: raw[2],
            p2: raw[3],
            data: view.data().to_vec(),
            le: view.expected(),
            extended: view.extended,
        })
    }

    /// Re-encodes the command (short if it fits, else extended) for the applet.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.cla, self.ins, self.p1, self.p2];
        let short = self.data.len() <= 255 && self.le <= 256;
        let lc = self.data.len();
        if short {
            if lc > 0 {
                out.push(lc as u8);
                out.extend_from_slice(&self.data);
            }
            if self.le > 0 {
                out.push(self.le as u8); // 256 encodes as 00
            }
        } else {
            out.push(0);
            if lc > 0 {
                out.extend_from_slice(&(lc as u16).to_be_bytes());
                out.extend_from_slice(&self.data);
            }
            if self.le > 0 {
                out.extend_from_slice(&(self.le as u16).to_be_bytes()); // 65536 → 0000
            }
        }
        out
    }

    fn p1p2(&self) -> u16 {
        u16::from_be_bytes([self.p1, self.p2])
    }
}

/// A chain being received (ISO 7816-4 §5.1.1.1: CLA bit 0x10 = "more commands follow").
struct Chain {
    ins: u8,
    p1: u8,
    p2: u8,
    data: Vec<u8>,
}

pub struct Bridge<A> {
    applet: A,
    identity: Identity,
    selected: Application,
    chain: Option<Chain>,
    /// Response bytes not yet fetched with GET RESPONSE.
    pending: Vec<u8>,
    /// The management key was proven since the last reset (mirrors the emulator's own
    /// flag, which it does not expose; needed to guard PUT DATA on bridge-held objects).
    admin_authenticated: bool,
    objects: BridgeObjects,
    objects_dirty: bool,
}

impl<A: PivApplet> Bridge<A> {
    pub fn new(applet: A, identity: Identity, objects: BridgeObjects) -> Self {
        Self {
            applet,
            identity,
            selected: Application::Piv,
            chain: None,
            pending: Vec::new(),
            admin_authenticated: false,
            objects,
            objects_dirty: false,
        }
    }

    /// The bridge-held objects, to persist.
    pub fn objects(&self) -> &BridgeObjects {
        &self.objects
    }

    /// Whether the bridge-held objects changed since the last call; clears the flag.
    pub fn take_objects_dirty(&mut self) -> bool {
        std::mem::take(&mut self.objects_dirty)
    }

    /// vpcd's power off / power on / reset: like a real card, forget PIN verification,
    /// management key authentication, half-received chains and unread responses.
    pub fn power_cycle(&mut self) {
        self.applet.reset();
        self.admin_authenticated = false;
        self.chain = None;
        self.pending.clear();
        // A YubiKey has no default application; clients always SELECT. Defaulting to PIV
        // keeps clients that skip it working.
        self.selected = Application::Piv;
    }

    /// Executes one raw command APDU; returns the response APDU (data + SW1 SW2).
    pub fn execute(&mut self, raw: &[u8]) -> Vec<u8> {
        let apdu = match Apdu::parse(raw) {
            Ok(apdu) => apdu,
            Err(sw) => return finish(Vec::new(), sw),
        };

        if apdu.ins == INS_GET_RESPONSE && apdu.cla & 0x10 == 0 {
            return self.get_response(&apdu);
        }
        // Any other command discards an unread response (ISO 7816-4 §5.3.4 / 12.6.1).
        self.pending.clear();

        if apdu.cla & 0x10 != 0 {
            return self.chain_part(apdu);
        }
        let apdu = match self.chain.take() {
            Some(chain) if (chain.ins, chain.p1, chain.p2) == (apdu.ins, apdu.p1, apdu.p2) => {
                let mut data = chain.data;
                data.extend_from_slice(&apdu.data);
                if data.len() > MAX_DATA {
                    return finish(Vec::new(), SW_WRONG_LENGTH);
                }
                // Le and the extended flag come from the last APDU of the chain: that is
                // the one whose response the client reads.
                Apdu { data, ..apdu }
            }
            // A different command ends the chain (the partial data is dropped).
            _ => apdu,
        };

        let (data, sw) = self.dispatch(&apdu);
        self.frame(&apdu, data, sw)
    }

    fn chain_part(&mut self, apdu: Apdu) -> Vec<u8> {
        let same =
            matches!(&self.chain, Some(c) if (c.ins, c.p1, c.p2) == (apdu.ins, apdu.p1, apdu.p2));
        if !same {
            self.chain = Some(Chain {
                ins: apdu.ins,
                p1: apdu.p1,
                p2: apdu.p2,
                data: Vec::new(),
            });
        }
        let chain = self.chain.as_mut().expect("set above");
        chain.data.extend_from_slice(&apdu.data);
        if chain.data.len() > MAX_DATA {
            self.chain = None;
            return finish(Vec::new(), SW_WRONG_LENGTH);
        }
        finish(Vec::new(), SW_OK)
    }

    /// Sends at most what the command allows and keeps the rest for GET RESPONSE.
    fn frame(&mut self, apdu: &Apdu, mut data: Vec<u8>, sw: u16) -> Vec<u8> {
        let limit = match (apdu.le, apdu.extended) {
            // No Le: a YubiKey still returns its data (the `yubikey` crate relies on it).
            (0, false) => 256,
            (0, true) => 65536,
            (ne, _) => ne,
        };
        if sw != SW_OK || data.len() <= limit {
            return finish(data, sw);
        }
        self.pending = data.split_off(limit);
        let more = more_sw(self.pending.len());
        finish(data, more)
    }

    fn get_response(&mut self, apdu: &Apdu) -> Vec<u8> {
        if self.pending.is_empty() {
            return finish(Vec::new(), SW_CONDITIONS);
        }
        let ne = if apdu.le == 0 { 256 } else { apdu.le };
        let rest = self.pending.split_off(ne.min(self.pending.len()));
        let data = std::mem::replace(&mut self.pending, rest);
        let sw = if self.pending.is_empty() {
            SW_OK
        } else {
            more_sw(self.pending.len())
        };
        finish(data, sw)
    }

    fn dispatch(&mut self, apdu: &Apdu) -> (Vec<u8>, u16) {
        if apdu.cla & 0xF0 != 0x00 {
            // PIV and the Yubico extensions use the interindustry class only.
            return (Vec::new(), SW_CLA_NOT_SUPPORTED);
        }
        if apdu.ins == INS_SELECT && apdu.p1 == 0x04 {
            return self.select(apdu);
        }
        match self.selected {
            Application::Management => self.management(apdu),
            Application::Piv => self.piv(apdu),
        }
    }

    fn select(&mut self, apdu: &Apdu) -> (Vec<u8>, u16) {
        let aid = apdu.data.as_slice();
        let partial_of = |full: &[u8]| aid.len() >= 5 && full.starts_with(aid);
        if partial_of(&PIV_AID) {
            // A YubiKey clears the PIV security status (verified PIN, management-key
            // authentication) when the application is selected (ISO 7816-4 7.1.1 lets
            // selection reset it); clients rely on it, e.g. reading the PIN retry counter
            // with an empty VERIFY right after a SELECT.
            self.applet.reset();
            self.admin_authenticated = false;
            // Hand the applet the full AID: it refuses fewer than 9 bytes.
            let full = Apdu {
                data: PIV_AID.to_vec(),
                ..apdu.clone()
            };
            let (data, sw) = self.forward(&full);
            if sw == SW_OK {
                self.selected = Application::Piv;
            }
            (data, sw)
        } else if partial_of(&MGMT_AID) {
            self.selected = Application::Management;
            // A YubiKey answers with its version as text; ykman parses "x.y.z" out of it.
            let [major, minor, patch] = self.identity.version;
            (format!("{major}.{minor}.{patch}").into_bytes(), SW_OK)
        } else {
            // OTP, OATH, OpenPGP, FIDO...: not on this card. The selection stays.
            (Vec::new(), SW_NOT_FOUND)
        }
    }

    fn management(&mut self, apdu: &Apdu) -> (Vec<u8>, u16) {
        if apdu.ins != INS_MGMT_READ_CONFIG {
            return (Vec::new(), SW_INS_NOT_SUPPORTED);
        }
        // Device info as yubikit's `DeviceInfo.parse` reads it: a length byte, then TLVs
        // 01 USB supported capabilities, 02 serial, 03 USB enabled capabilities,
        // 04 form factor (01 = USB-A keychain), 05 firmware version, 0A config locked.
        const PIV_CAPABILITY: [u8; 2] = [0x00, 0x10];
        let mut tlvs = Vec::new();
        tlvs.extend_from_slice(&[0x01, 0x02]);
        tlvs.extend_from_slice(&PIV_CAPABILITY);
        tlvs.extend_from_slice(&[0x02, 0x04]);
        tlvs.extend_from_slice(&self.identity.serial.to_be_bytes());
        tlvs.extend_from_slice(&[0x03, 0x02]);
        tlvs.extend_from_slice(&PIV_CAPABILITY);
        tlvs.extend_from_slice(&[0x04, 0x01, 0x01]);
        tlvs.extend_from_slice(&[0x05, 0x03]);
        tlvs.extend_from_slice(&self.identity.version);
        tlvs.extend_from_slice(&[0x0A, 0x01, 0x00]);
        let mut data = vec![tlvs.len() as u8];
        data.extend_from_slice(&tlvs);
        (data, SW_OK)
    }

    fn piv(&mut self, apdu: &Apdu) -> (Vec<u8>, u16) {
        match apdu.ins {
            INS_YK_GET_VERSION => (self.identity.version.to_vec(), SW_OK),
            INS_YK_GET_SERIAL => (self.identity.serial.to_be_bytes().to_vec(), SW_OK),
            INS_GET_DATA if apdu.p1p2() == 0x3FFF => self.get_data(apdu),
            INS_PUT_DATA if apdu.p1p2() == 0x3FFF => self.put_data(apdu),
            INS_GENERAL_AUTHENTICATE => {
                let (data, sw) = self.forward(apdu);
                if sw == SW_OK && apdu.p2 == KEY_REF_MANAGEMENT && is_final_auth_step(&apdu.data) {
                    self.admin_authenticated = true;
                }
                (data, sw)
            }
            INS_YK_RESET => {
                let (data, sw) = self.forward(apdu);
                if sw == SW_OK {
                    // RESET wipes the whole PIV application, Yubico's objects included.
                    self.objects = BridgeObjects::default();
                    self.objects_dirty = true;
                    self.admin_authenticated = false;
                    self.applet.reset();
                }
                (data, sw)
            }
            _ => self.forward(apdu),
        }
    }

    /// GET DATA, SP 800-73-4 Part 2 §3.1.2: data `5C len tag`, reply `53 len value`.
    fn get_data(&mut self, apdu: &Apdu) -> (Vec<u8>, u16) {
        let Some(tag) = tag_list_object(&apdu.data) else {
            return self.forward(apdu);
        };
        if bridge_held(tag) {
            return match self.objects.objects.get(&tag) {
                Some(value) => (tlv(0x53, value), SW_OK),
                None => (Vec::new(), SW_NOT_FOUND),
            };
        }
        let (data, sw) = self.forward(apdu);
        if sw != SW_OK {
            return (data, sw);
        }
        // The emulator serves a built-in PRINTED object until one is written.
        let unwritten_printed = tag == TAG_PRINTED && !self.objects.printed_written;
        // An object written empty was deleted (that is how clients delete certificates).
        let empty = data == [0x53, 0x00];
        if unwritten_printed || empty {
            (Vec::new(), SW_NOT_FOUND)
        } else {
            (data, sw)
        }
    }

    /// PUT DATA, SP 800-73-4 Part 2 §3.3.2: data `5C len tag 53 len value`.
    fn put_data(&mut self, apdu: &Apdu) -> (Vec<u8>, u16) {
        let Some((tag, value)) = put_data_fields(&apdu.data) else {
            return self.forward(apdu);
        };
        if bridge_held(tag) {
            // Writing any data object needs the management key (SP 800-73-4 Part 1 §3.1).
            if !self.admin_authenticated {
                return (Vec::new(), SW_SECURITY_STATUS);
            }
            if value.is_empty() {
                self.objects.objects.remove(&tag);
            } else {
                self.objects.objects.insert(tag, value.to_vec());
            }
            self.objects_dirty = true;
            return (Vec::new(), SW_OK);
        }
        let (data, sw) = self.forward(apdu);
        if sw == SW_OK && tag == TAG_PRINTED {
            self.objects.printed_written = !value.is_empty();
            self.objects_dirty = true;
        }
        (data, sw)
    }

    fn forward(&mut self, apdu: &Apdu) -> (Vec<u8>, u16) {
        let raw = apdu.encode();
        let command = match CommandView::try_from(raw.as_slice()) {
            Ok(command) => command,
            Err(_) => return (Vec::new(), SW_WRONG_LENGTH),
        };
        let mut reply = heapless::Vec::<u8, MAX_DATA>::new();
        match self.applet.respond(command, reply.as_mut_view()) {
            Ok(()) => (reply.to_vec(), SW_OK),
            Err(status) => (Vec::new(), u16::from(status)),
        }
    }
}

fn finish(mut data: Vec<u8>, sw: u16) -> Vec<u8> {
    data.extend_from_slice(&sw.to_be_bytes());
    data
}

/// 61xx: xx more bytes available, 00 for 256 or more (ISO 7816-4 §5.6).
fn more_sw(remaining: usize) -> u16 {
    SW_MORE
        | u16::try_from(remaining)
            .ok()
            .filter(|&n| n < 256)
            .unwrap_or(0)
}

/// Reads one BER-TLV (ISO 7816-4 §8 / SP 800-73-4 Part 2 §3: tags of 1–3 bytes, lengths
/// in short or 81/82 long form). Returns (tag, value, rest).
fn read_tlv(bytes: &[u8]) -> Option<(u32, &[u8], &[u8])> {
    let mut i = 0;
    let first = *bytes.first()?;
    let mut tag = u32::from(first);
    i += 1;
    if first & 0x1F == 0x1F {
        // Multi-byte tag: continue while b8 is set.
        loop {
            let b = *bytes.get(i)?;
            tag = (tag << 8) | u32::from(b);
            i += 1;
            if b & 0x80 == 0 || i > 3 {
                break;
            }
        }
    }
    let (len, skip) = match *bytes.get(i)? {
        n @ 0..=0x7F => (usize::from(n), 1),
        0x81 => (usize::from(*bytes.get(i + 1)?), 2),
        0x82 => (
            usize::from(u16::from_be_bytes([*bytes.get(i + 1)?, *bytes.get(i + 2)?])),
            3,
        ),
        _ => return None,
    };
    i += skip;
    let value = bytes.get(i..i + len)?;
    Some((tag, value, &bytes[i + len..]))
}

fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match value.len() {
        n @ 0..=0x7F => out.push(n as u8),
        n @ 0x80..=0xFF => out.extend_from_slice(&[0x81, n as u8]),
        n => {
            out.push(0x82);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(value);
    out
}

/// The object tag from a GET DATA / PUT DATA tag list `5C len tag`.
fn tag_list_object(data: &[u8]) -> Option<u32> {
    let (tag, value, _) = read_tlv(data)?;
    if tag != 0x5C || value.is_empty() || value.len() > 3 {
        return None;
    }
    Some(value.iter().fold(0, |acc, &b| (acc << 8) | u32::from(b)))
}

fn put_data_fields(data: &[u8]) -> Option<(u32, &[u8])> {
    let object = tag_list_object(data)?;
    let (_, _, rest) = read_tlv(data)?;
    let (tag, value, _) = read_tlv(rest)?;
    (tag == 0x53).then_some((object, value))
}

/// GENERAL AUTHENTICATE with the management key (SP 800-73-4 Part 2 §3.2.4, Appendix A):
/// the step that completes authentication carries a non-empty witness (80, mutual) or
/// response (82, single); the first step carries empty ones.
fn is_final_auth_step(data: &[u8]) -> bool {
    let Some((0x7C, mut inner, _)) = read_tlv(data) else {
        return false;
    };
    while let Some((tag, value, rest)) = read_tlv(inner) {
        if matches!(tag, 0x80 | 0x82) && !value.is_empty() {
            return true;
        }
        inner = rest;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An applet that records what it got and answers canned data.
    #[derive(Default)]
    struct Fake {
        seen: Vec<Vec<u8>>,
        answer: Vec<u8>,
        resets: usize,
    }

    impl PivApplet for Fake {
        fn respond(
            &mut self,
            command: CommandView<'_>,
            reply: &mut VecView<u8>,
        ) -> Result<(), Status> {
            let mut seen = vec![command.instruction().into(), command.p1, command.p2];
            seen.extend_from_slice(command.data());
            self.seen.push(seen);
            reply.extend_from_slice(&self.answer).unwrap();
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn bridge(answer: &[u8]) -> Bridge<Fake> {
        let fake = Fake {
            answer: answer.to_vec(),
            ..Fake::default()
        };
        let id = Identity {
            serial: 0x0098_9681,
            version: [5, 2, 7],
        };
        Bridge::new(fake, id, BridgeObjects::default())
    }

    #[test]
    fn truncated_piv_aid_selects_with_full_aid() {
        let mut b = bridge(&[0x61, 0x00]);
        let r = b.execute(&[0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08]);
        assert_eq!(r, [0x61, 0x00, 0x90, 0x00]);
        assert_eq!(b.applet.seen[0][3..], PIV_AID);
    }

    #[test]
    fn unknown_aid_is_not_found() {
        let mut b = bridge(&[]);
        let r = b.execute(&[
            0x00, 0xA4, 0x04, 0x00, 0x07, 0xA0, 0, 0, 5, 0x27, 0x20, 0x01,
        ]);
        assert_eq!(r, [0x6A, 0x82]);
    }

    #[test]
    fn version_and_serial() {
        let mut b = bridge(&[]);
        assert_eq!(b.execute(&[0, 0xFD, 0, 0]), [5, 2, 7, 0x90, 0]);
        assert_eq!(
            b.execute(&[0, 0xF8, 0, 0, 0]),
            [0, 0x98, 0x96, 0x81, 0x90, 0]
        );
    }

    #[test]
    fn missing_le_still_returns_data_and_long_replies_chain() {
        let mut b = bridge(&[7; 300]);
        // GENERAL AUTHENTICATE without Le.
        let r = b.execute(&[0, 0x87, 0x11, 0x9A, 2, 0x7C, 0]);
        assert_eq!(r.len(), 258);
        assert_eq!(r[256..], [0x61, 44]);
        let r = b.execute(&[0, 0xC0, 0, 0, 0]);
        assert_eq!(r.len(), 46);
        assert_eq!(r[44..], [0x90, 0]);
        assert_eq!(b.execute(&[0, 0xC0, 0, 0, 0]), [0x69, 0x85]);
    }

    #[test]
    fn chained_command_is_merged_and_framed_short() {
        let mut b = bridge(&[1; 512]);
        assert_eq!(
            b.execute(&[0x10, 0x87, 0x07, 0x9A, 2, 0xAA, 0xBB]),
            [0x90, 0]
        );
        let r = b.execute(&[0x00, 0x87, 0x07, 0x9A, 1, 0xCC, 0x00]);
        assert_eq!(r.len(), 258, "short Le=00 gets 256 bytes, not all 512");
        assert_eq!(r[256..], [0x61, 0x00]);
        assert_eq!(b.applet.seen[0], [0x87, 0x07, 0x9A, 0xAA, 0xBB, 0xCC]);
    }

    #[test]
    fn admin_data_needs_management_key_and_persists_in_bridge() {
        let mut b = bridge(&[]);
        let put = [
            0x00, 0xDB, 0x3F, 0xFF, 0x0A, 0x5C, 0x03, 0x5F, 0xFF, 0x00, 0x53, 0x03, 0x80, 0x01,
            0x01,
        ];
        assert_eq!(b.execute(&put), [0x69, 0x82]);
        // Mutual authentication, step 2 (witness + challenge) succeeded.
        let ga = [
            0x00, 0x87, 0x03, 0x9B, 0x0C, 0x7C, 0x0A, 0x80, 0x08, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        assert_eq!(b.execute(&ga), [0x90, 0x00]);
        assert_eq!(b.execute(&put), [0x90, 0x00]);
        assert!(b.take_objects_dirty());
        let get = [
            0x00, 0xCB, 0x3F, 0xFF, 0x05, 0x5C, 0x03, 0x5F, 0xFF, 0x00, 0x00,
        ];
        assert_eq!(b.execute(&get), [0x53, 0x03, 0x80, 0x01, 0x01, 0x90, 0x00]);
        b.power_cycle();
        assert_eq!(
            b.execute(&put),
            [0x69, 0x82],
            "reset forgets the management key"
        );
        assert_eq!(b.applet.resets, 1);
    }

    #[test]
    fn key_history_absent_and_printed_empty_until_written() {
        let mut b = bridge(&[0x53, 0x02, 0x88, 0x00]);
        let kh = [
            0x00, 0xCB, 0x3F, 0xFF, 0x05, 0x5C, 0x03, 0x5F, 0xC1, 0x0C, 0x00,
        ];
        assert_eq!(b.execute(&kh), [0x6A, 0x82]);
        let printed = [
            0x00, 0xCB, 0x3F, 0xFF, 0x05, 0x5C, 0x03, 0x5F, 0xC1, 0x09, 0x00,
        ];
        assert_eq!(b.execute(&printed), [0x6A, 0x82]);
        b.objects.printed_written = true;
        assert_eq!(b.execute(&printed), [0x53, 0x02, 0x88, 0x00, 0x90, 0x00]);
    }

    #[test]
    fn management_application_reports_serial() {
        let mut b = bridge(&[]);
        let sel = [
            0x00, 0xA4, 0x04, 0x00, 0x08, 0xA0, 0, 0, 5, 0x27, 0x47, 0x11, 0x17,
        ];
        assert_eq!(b.execute(&sel), b"5.2.7\x90\x00");
        let r = b.execute(&[0x00, 0x1D, 0x00, 0x00, 0x00]);
        assert_eq!(usize::from(r[0]), r.len() - 3);
        let serial_at = r.windows(2).position(|w| w == [0x02, 0x04]).unwrap() + 2;
        assert_eq!(r[serial_at..serial_at + 4], [0, 0x98, 0x96, 0x81]);
    }

    #[test]
    fn tlv_reader_handles_long_forms() {
        let mut data = vec![0x53, 0x82, 0x01, 0x00];
        data.extend_from_slice(&[9; 256]);
        let (tag, value, rest) = read_tlv(&data).unwrap();
        assert_eq!((tag, value.len(), rest.len()), (0x53, 256, 0));
        let (tag, value, _) = read_tlv(&[0x5F, 0xC1, 0x09, 0x01, 0xAA]).unwrap();
        assert_eq!((tag, value), (0x5F_C109, &[0xAA][..]));
        assert_eq!(tlv(0x53, &[0; 200])[..3], [0x53, 0x81, 200]);
    }
}
