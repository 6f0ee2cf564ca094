//! The card as vpcd sees it: raw APDUs in, raw responses out.
//!
//! - command chaining (CLA bit 0x10, ISO/IEC 7816-4 §5.4.2) merged into one [`Apdu`];
//! - response chaining: answers longer than the command's Le go out in pieces with 61xx,
//!   the rest fetched with GET RESPONSE (INS C0), for every applet;
//! - SELECT dispatches by AID: PIV (RID prefix match, as clients send A000000308), the
//!   management applet (`mgmt.rs`), the OTP applet's serial for YubiKey 4 clients;
//! - APDU counting, `--fault` handling, state saved before an answer leaves;
//! - debug traces with PINs, keys and management key exchanges redacted.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::apdu::{sw, Apdu, Response};
use crate::faults::{Fault, Pauser};
use crate::mgmt::Management;
use crate::piv::{Piv, PIV_AID};
use crate::state::{CardState, StateError};

/// ATR of a YubiKey 5 over USB (CCID): T=1, historical bytes "\x80\x73\xC0\x21\xC0WYubiKey@".
/// ykman reads "USB transport" from it (ISO 7816-3 §8.2; TCK checked).
pub const YUBIKEY_ATR: &[u8] = &[
    0x3B, 0xFD, 0x13, 0x00, 0x00, 0x81, 0x31, 0xFE, 0x15, 0x80, 0x73, 0xC0, 0x21, 0xC0, 0x57, 0x59,
    0x75, 0x62, 0x69, 0x4B, 0x65, 0x79, 0x40,
];

/// Yubico OTP applet (yubico-piv-tool selects A0000005272001 01): YubiKey 4 clients read
/// the serial there (INS 01, P1 10).
pub const OTP_AID: &[u8] = &[0xA0, 0x00, 0x00, 0x05, 0x27, 0x20, 0x01];

/// Exit code when `--fault vanish@N` pulls the card.
pub const EXIT_VANISHED: i32 = 5;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Selected {
    None,
    Piv,
    Mgmt,
    Otp,
}

/// APDUs served per instruction byte (a benchmark's "where do the APDUs go"); one process
/// serves one card, so a process-wide table is the card's.
static BY_INS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

/// Microseconds the card spent on APDUs, command in to answer out (the timing profile's
/// waits included; a `--fault pause` excluded): what a benchmark sets wall time against.
static BUSY_US: AtomicU64 = AtomicU64::new(0);

/// The card's busy time so far, in microseconds (see [`BUSY_US`]).
pub fn busy_us() -> u64 {
    BUSY_US.load(Ordering::SeqCst)
}

/// `A4:1 20:5 …`: the non-zero per-instruction counts, in instruction order.
pub fn ins_summary() -> String {
    BY_INS
        .iter()
        .enumerate()
        .filter_map(|(ins, n)| {
            let n = n.load(Ordering::SeqCst);
            (n > 0).then(|| format!("{ins:02X}:{n}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub struct Card {
    pub piv: Piv,
    mgmt: Management,
    selected: Selected,
    /// Commands of an unfinished chain, merged.
    chain: Option<Apdu>,
    /// The rest of a long answer, for GET RESPONSE.
    remaining: Option<Response>,
    pub state: CardState,
    pub state_path: Option<PathBuf>,
    pub apdus: Arc<AtomicU64>,
    pub fault: Option<Fault>,
    pub pauser: Pauser,
    /// A state file write failed: the main loop stops with this error.
    pub fatal: Option<StateError>,
}

impl Card {
    pub fn new(
        piv: Piv,
        mgmt: Management,
        state: CardState,
        state_path: Option<PathBuf>,
        apdus: Arc<AtomicU64>,
        fault: Option<Fault>,
        pauser: Pauser,
    ) -> Card {
        Card {
            piv,
            mgmt,
            selected: Selected::None,
            chain: None,
            remaining: None,
            state,
            state_path,
            apdus,
            fault,
            pauser,
            fatal: None,
        }
    }

    /// vpcd's power off / power on / reset all end the card session.
    fn control(&mut self, what: &str) {
        log::debug!("{what}");
        self.piv.power_cycle();
        self.selected = Selected::None;
        self.chain = None;
        self.remaining = None;
    }

    /// Saves the state if the PIV applet changed it.
    pub fn persist(&mut self, force: bool) -> Result<(), StateError> {
        if !std::mem::take(&mut self.piv.dirty) && !force {
            return Ok(());
        }
        self.state.piv = self.piv.state.clone();
        match &self.state_path {
            Some(path) => self.state.save(path),
            None => Ok(()),
        }
    }

    /// One raw command in, one raw answer out.
    pub fn process(&mut self, raw: &[u8]) -> Vec<u8> {
        let Ok(apdu) = Apdu::parse(raw) else {
            return Response::status(sw::WRONG_LENGTH).to_bytes();
        };
        log_command(&apdu);
        // GET RESPONSE continues a long answer.
        if apdu.ins == 0xC0 && self.chain.is_none() {
            return match self.remaining.take() {
                Some(rest) => self.send(rest, apdu.le),
                None => Response::status(sw::CONDITIONS).to_bytes(),
            };
        }
        self.remaining = None;
        let apdu = match self.merge_chain(apdu) {
            Some(apdu) => apdu,
            None => return Response::success().to_bytes(),
        };
        let le = apdu.le;
        let response = self.dispatch(&apdu);
        self.piv.finish_timing();
        log_response(&apdu, &response);
        self.send(response, le)
    }

    /// Chained commands accumulate; the last one (no chaining bit) gets the whole data.
    fn merge_chain(&mut self, apdu: Apdu) -> Option<Apdu> {
        let chained = apdu.chained();
        let merged = match self.chain.take() {
            Some(mut head) if head.ins == apdu.ins && head.p1 == apdu.p1 && head.p2 == apdu.p2 => {
                head.data.extend_from_slice(&apdu.data);
                head.le = apdu.le;
                head.cla = apdu.cla;
                head
            }
            _ => apdu,
        };
        if chained {
            self.chain = Some(merged);
            return None;
        }
        let mut merged = merged;
        merged.cla &= !0x10;
        Some(merged)
    }

    /// Sends as much as Le allows; the rest waits for GET RESPONSE (61xx says how much).
    fn send(&mut self, mut response: Response, le: Option<usize>) -> Vec<u8> {
        // A command without Le gets up to 256 bytes too: the `yubikey` crate's GENERAL
        // AUTHENTICATE has none and expects the answer.
        let max = le.unwrap_or(256).max(1);
        if response.data.len() <= max {
            return response.to_bytes();
        }
        let rest = response.data.split_off(max);
        let more = rest.len().min(256) as u16 & 0xFF;
        self.remaining = Some(Response {
            data: rest,
            sw: response.sw,
        });
        Response {
            data: response.data,
            sw: 0x6100 | more,
        }
        .to_bytes()
    }

    fn dispatch(&mut self, apdu: &Apdu) -> Response {
        if apdu.ins == 0xA4 && apdu.p1 == 0x04 {
            return self.select(&apdu.data);
        }
        match self.selected {
            Selected::Piv => self.piv.command(apdu),
            Selected::Mgmt => self.mgmt.command(apdu),
            Selected::Otp => self.otp(apdu),
            Selected::None => Response::status(sw::INS_NOT_SUPPORTED),
        }
    }

    fn select(&mut self, aid: &[u8]) -> Response {
        let previous = self.selected;
        let response = if aid.len() >= 5 && PIV_AID.starts_with(aid) {
            self.selected = Selected::Piv;
            self.piv.select()
        } else if aid == crate::mgmt::AID {
            self.selected = Selected::Mgmt;
            self.mgmt.select()
        } else if aid.starts_with(OTP_AID) && !self.piv.firmware.features().piv_serial {
            self.selected = Selected::Otp;
            // OTP status: firmware version, program sequence, touch level (2 bytes).
            let mut status = self.piv.firmware.version.to_vec();
            status.extend_from_slice(&[1, 0, 0]);
            Response::ok(status)
        } else {
            return Response::status(sw::FILE_NOT_FOUND);
        };
        if previous == Selected::Piv && self.selected != Selected::Piv {
            // Leaving PIV drops its security status.
            self.piv.power_cycle();
        }
        response
    }

    /// The OTP applet, just enough for YubiKey 4 clients to read the serial.
    fn otp(&mut self, apdu: &Apdu) -> Response {
        match (apdu.ins, apdu.p1) {
            (0x01, 0x10) => Response::ok(self.piv.device.serial.to_be_bytes().to_vec()),
            _ => Response::status(sw::INS_NOT_SUPPORTED),
        }
    }
}

impl vpicc::VSmartCard for Card {
    fn atr(&self) -> &[u8] {
        YUBIKEY_ATR
    }

    fn power_on(&mut self) {
        self.control("power on");
    }

    fn power_off(&mut self) {
        self.control("power off");
    }

    fn reset(&mut self) {
        self.control("reset");
    }

    fn execute(&mut self, raw: &[u8]) -> Vec<u8> {
        let n = self.apdus.fetch_add(1, Ordering::SeqCst) + 1;
        let ins = raw.get(1).copied().unwrap_or(0);
        BY_INS[usize::from(ins)].fetch_add(1, Ordering::SeqCst);
        match self.fault {
            Some(Fault::Vanish(at)) if at == n => {
                // Pulled before the command is processed: everything acknowledged so far is
                // on disk (saved before each answer), nothing of this APDU is.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "vanished apdu={n} ins={ins:02X}");
                let _ = out.flush();
                std::process::exit(EXIT_VANISHED);
            }
            Some(Fault::PauseBefore(at)) if at == n => self.pauser.pause(n, ins),
            _ => {}
        }
        let started = std::time::Instant::now();
        let response = self.process(raw);
        // `--fault metadata-answer@HEX`: the card processed GET METADATA (it changes
        // nothing) but another answer leaves.
        let response = match self.fault.as_ref().and_then(Fault::metadata_answer) {
            Some(answer) if ins == 0xF7 => answer.to_vec(),
            _ => response,
        };
        let response = match self.persist(false) {
            Ok(()) => response,
            Err(err) => {
                self.fatal = Some(err);
                Response::status(sw::MEMORY_FAILURE).to_bytes()
            }
        };
        let spent = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        BUSY_US.fetch_add(spent, Ordering::SeqCst);
        match self.fault {
            Some(Fault::PauseAfter(at)) if at == n => self.pauser.pause(n, ins),
            Some(Fault::ReselectAfterIns(at))
                if at == ins && BY_INS[usize::from(ins)].load(Ordering::SeqCst) == 1 =>
            {
                self.piv.vol = Default::default();
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "reselected apdu={n} ins={ins:02X}");
                let _ = out.flush();
            }
            _ => {}
        }
        response
    }
}

/// Instructions whose data carries secrets: PINs (20, 24, 2C), keys (FE import, FF set
/// management key), management key exchanges and decryptions (87).
fn secret_ins(ins: u8) -> bool {
    matches!(ins, 0x20 | 0x24 | 0x2C | 0x87 | 0xFE | 0xFF)
}

fn log_command(apdu: &Apdu) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    if secret_ins(apdu.ins) {
        log::debug!(
            "> {:02x} {:02x} {:02x} {:02x} [{} bytes redacted] le={:?}",
            apdu.cla,
            apdu.ins,
            apdu.p1,
            apdu.p2,
            apdu.data.len(),
            apdu.le
        );
    } else {
        log::debug!(
            "> {:02x} {:02x} {:02x} {:02x} {} le={:?}",
            apdu.cla,
            apdu.ins,
            apdu.p1,
            apdu.p2,
            hex::encode(&apdu.data),
            apdu.le
        );
    }
}

fn log_response(apdu: &Apdu, response: &Response) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    if secret_ins(apdu.ins) {
        log::debug!(
            "< [{} bytes redacted] {:04x}",
            response.data.len(),
            response.sw
        );
    } else {
        log::debug!("< {} {:04x}", hex::encode(&response.data), response.sw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::{DeviceIdentity, Firmware};
    use crate::piv::Touch;
    use crate::timing::Timing;

    fn card(version: [u8; 3]) -> Card {
        let firmware = Firmware::new(version);
        let device = DeviceIdentity {
            serial: 99,
            version,
            form_factor: 1,
            fips: false,
        };
        let state = CardState::fresh(&firmware);
        let piv = Piv::new(firmware, device.clone(), &state, Touch::Ok, Timing::Instant);
        Card::new(
            piv,
            Management::new(&device),
            state,
            None,
            Arc::default(),
            None,
            Pauser::default(),
        )
    }

    const SELECT_PIV: &[u8] = &[0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08];

    #[test]
    fn select_dispatches_by_aid_and_unknown_aids_are_not_found() {
        let mut c = card([5, 7, 4]);
        assert_eq!(c.process(&[0x00, 0xFD, 0x00, 0x00]), [0x6D, 0x00]);
        assert!(c.process(SELECT_PIV).ends_with(&[0x90, 0x00]));
        assert_eq!(c.process(&[0x00, 0xFD, 0x00, 0x00]), [5, 7, 4, 0x90, 0x00]);
        let oath = [
            0x00, 0xA4, 0x04, 0x00, 0x07, 0xA0, 0x00, 0x00, 0x05, 0x27, 0x21, 0x01,
        ];
        assert_eq!(c.process(&oath), [0x6A, 0x82]);
        let mut mgmt = vec![0x00, 0xA4, 0x04, 0x00, 0x08];
        mgmt.extend_from_slice(crate::mgmt::AID);
        assert!(c.process(&mgmt).ends_with(&[0x90, 0x00]));
        // The OTP applet (serial for YubiKey 4 clients) exists only before 5.0.
        let otp = [
            0x00, 0xA4, 0x04, 0x00, 0x08, 0xA0, 0x00, 0x00, 0x05, 0x27, 0x20, 0x01, 0x01,
        ];
        assert_eq!(c.process(&otp), [0x6A, 0x82]);
        let mut old = card([4, 3, 7]);
        assert!(old.process(&otp).ends_with(&[0x90, 0x00]));
        assert_eq!(
            old.process(&[0x00, 0x01, 0x10, 0x00]),
            [0, 0, 0, 99, 0x90, 0x00]
        );
    }

    #[test]
    fn chained_commands_merge_and_long_answers_come_in_pieces() {
        let mut c = card([5, 7, 4]);
        c.process(SELECT_PIV);
        c.piv.vol.mgmt_authenticated = true;
        // PUT DATA of a 600-byte object in three chained commands.
        let value = vec![0x42u8; 600];
        let mut data = crate::tlv::tlv(0x5C, &[0x5F, 0xC1, 0x05]);
        crate::tlv::put(&mut data, 0x53, &value);
        let chunks: Vec<&[u8]> = data.chunks(255).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let cla = if i + 1 < chunks.len() { 0x10 } else { 0x00 };
            let mut apdu = vec![cla, 0xDB, 0x3F, 0xFF, chunk.len() as u8];
            apdu.extend_from_slice(chunk);
            assert_eq!(c.process(&apdu), [0x90, 0x00]);
        }
        // GET DATA answers 604 bytes: 256, then 61xx and GET RESPONSE.
        let r = c.process(&[
            0x00, 0xCB, 0x3F, 0xFF, 0x05, 0x5C, 0x03, 0x5F, 0xC1, 0x05, 0x00,
        ]);
        assert_eq!(r.len(), 258);
        assert_eq!(&r[256..], &[0x61, 0x00]);
        let mut all = r[..256].to_vec();
        let r = c.process(&[0x00, 0xC0, 0x00, 0x00, 0x00]);
        assert_eq!(&r[256..], &[0x61, 92]); // 604 - 512 left
        all.extend_from_slice(&r[..256]);
        let r = c.process(&[0x00, 0xC0, 0x00, 0x00, 0x00]);
        assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
        all.extend_from_slice(&r[..r.len() - 2]);
        assert_eq!(all.len(), 604);
        assert_eq!(&all[4..], value.as_slice());
        // An extended Le takes it in one go.
        let r = c.process(&[
            0x00, 0xCB, 0x3F, 0xFF, 0x00, 0x00, 0x05, 0x5C, 0x03, 0x5F, 0xC1, 0x05, 0x00, 0x00,
        ]);
        assert_eq!(r.len(), 606);
    }

    #[test]
    fn timing_profile_makes_the_answer_take_the_figure_not_more() {
        let mut c = card([5, 7, 4]);
        c.piv.timing = Timing::YubiKey5;
        c.process(SELECT_PIV);
        let verify = [
            0x00, 0x20, 0x00, 0x80, 0x08, b'1', b'2', b'3', b'4', b'5', b'6', 0xFF, 0xFF,
        ];
        let started = std::time::Instant::now();
        assert_eq!(c.process(&verify), [0x90, 0x00]);
        let took = started.elapsed();
        assert!(took >= std::time::Duration::from_millis(20), "{took:?}");
        assert!(took < std::time::Duration::from_millis(500), "{took:?}");
    }

    #[test]
    fn power_cycle_forgets_pin_and_management_key_but_not_the_state() {
        let mut c = card([5, 7, 4]);
        c.process(SELECT_PIV);
        let verify = [
            0x00, 0x20, 0x00, 0x80, 0x08, b'1', b'2', b'3', b'4', b'5', b'6', 0xFF, 0xFF,
        ];
        assert_eq!(c.process(&verify), [0x90, 0x00]);
        c.piv.vol.mgmt_authenticated = true;
        vpicc::VSmartCard::reset(&mut c);
        c.process(SELECT_PIV);
        assert!(!c.piv.vol.mgmt_authenticated);
        assert_eq!(c.process(&[0x00, 0x20, 0x00, 0x80]), [0x63, 0xC3]);
    }
}
