//! [`PivToken`] over PC/SC with the `yubikey` crate. With `readers.rs`, the only module
//! that names `yubikey` or `pcsc`.
//!
//! Over 500 lines on purpose: it is the one adapter from the trait to the crate (status
//! words to `TokenError`, the ADMIN DATA / PRINTED objects, CHUID/CCC layouts); splitting
//! it would spread the crate's names over several files.

use super::metadata::{self, KeyType, MetaAlgorithm, Metadata};
use super::tlv::{find_tlv, tlv};
use super::{
    Algorithm, CredentialDefaults, FirmwareVersion, MgmAlgorithm, MgmKeyState, PinPolicy, PivToken,
    Slot, SlotKey, SlotPublicKey, TokenError, TokenInfo, TouchPolicy,
};
use crate::secret::{MgmKeyHex, Pin, Puk};
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;
use yubikey::{
    certificate::Certificate,
    mgm::{MgmAlgorithmId, MgmKey},
    piv::{self, AlgorithmId, RetiredSlotId, SlotId},
    reader::Context,
    YubiKey,
};
use zeroize::Zeroizing;

/// Object of the F9 attestation key's certificate (Yubico, "PIV attestation").
const ATTESTATION_CERT_OBJECT: u32 = 0x005f_ff01;

/// Which token to open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub serial: Option<u32>,
    pub reader: Option<String>,
}

impl Selector {
    fn matches(&self, info: &TokenInfo) -> bool {
        self.serial.is_none_or(|s| s == info.serial)
            && self.reader.as_deref().is_none_or(|r| r == info.reader)
    }

    fn describe(&self) -> String {
        match (self.serial, &self.reader) {
            (Some(s), Some(r)) => format!(" with serial {s} in reader '{r}'"),
            (Some(s), None) => format!(" with serial {s}"),
            (None, Some(r)) => format!(" in reader '{r}'"),
            (None, None) => String::new(),
        }
    }
}

/// A YubiKey (or a card answering like one) on a PC/SC reader.
pub struct YubiKeyToken {
    yk: YubiKey,
    info: TokenInfo,
    /// The management key last accepted, kept (zeroized on drop) so a session ended by
    /// another program's SELECT can be re-established once, without asking again.
    mgm: Option<(Zeroizing<Vec<u8>>, MgmAlgorithm)>,
}

impl std::fmt::Debug for YubiKeyToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YubiKeyToken")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn info_of(yk: &YubiKey) -> TokenInfo {
    let v = yk.version();
    TokenInfo {
        serial: yk.serial().0,
        version: FirmwareVersion::new(v.major, v.minor, v.patch),
        reader: yk.name().to_string(),
    }
}

/// Open the readers (only `only` when given) and keep the tokens that answer as a YubiKey
/// PIV application. Readers that fail to open (empty, another application's card) are
/// skipped. Opening SELECTs the PIV application, which ends another program's PIN and
/// management-key session on that card: touch no more readers than needed.
fn open_all(only: Option<&str>) -> Result<Vec<YubiKey>, TokenError> {
    let mut ctx = Context::open().map_err(|e| map_err("list readers", e))?;
    let readers = match ctx.iter() {
        Ok(r) => r,
        // No reader at all is "no token", not a failure of PC/SC.
        Err(yubikey::Error::PcscError {
            inner: Some(pcsc::Error::NoReadersAvailable),
        }) => return Ok(Vec::new()),
        Err(e) => return Err(map_err("list readers", e)),
    };
    Ok(readers
        .filter(|r| only.is_none_or(|o| r.name() == o))
        .filter_map(|r| r.open().ok())
        .collect())
}

/// The tokens present now.
pub fn list() -> Result<Vec<TokenInfo>, TokenError> {
    let tokens = open_all(None)?;
    let infos = tokens.iter().map(info_of).collect();
    for yk in tokens {
        // Leave the card as it is: another program may hold a verified PIN.
        let _ = yk.disconnect(pcsc::Disposition::LeaveCard);
    }
    Ok(infos)
}

impl YubiKeyToken {
    /// Open the one token the selector names; with no selector, the only token present.
    pub fn open(sel: &Selector) -> Result<YubiKeyToken, TokenError> {
        let mut found: Vec<YubiKey> = Vec::new();
        for yk in open_all(sel.reader.as_deref())? {
            if sel.matches(&info_of(&yk)) {
                found.push(yk);
            } else {
                let _ = yk.disconnect(pcsc::Disposition::LeaveCard);
            }
        }
        match found.len() {
            0 => Err(TokenError::NoToken(sel.describe())),
            1 => {
                let yk = found.remove(0);
                let info = info_of(&yk);
                log::debug!("opened token {} in '{}'", info.serial, info.reader);
                Ok(YubiKeyToken {
                    yk,
                    info,
                    mgm: None,
                })
            }
            _ => {
                let names: Vec<String> = found
                    .iter()
                    .map(|yk| {
                        let i = info_of(yk);
                        format!("{} in '{}'", i.serial, i.reader)
                    })
                    .collect();
                for yk in found {
                    let _ = yk.disconnect(pcsc::Disposition::LeaveCard);
                }
                Err(TokenError::Ambiguous(names.join(", ")))
            }
        }
    }

    fn unsupported(&self, what: &str) -> TokenError {
        TokenError::NotSupported {
            what: what.into(),
            version: self.info.version.to_string(),
        }
    }
}

fn slot_id(slot: Slot) -> SlotId {
    let b = slot.byte();
    match b {
        0x9a => SlotId::Authentication,
        0x9c => SlotId::Signature,
        0x9d => SlotId::KeyManagement,
        0x9e => SlotId::CardAuthentication,
        // Slot guarantees 0x82..=0x95 here, all of which RetiredSlotId knows.
        _ => RetiredSlotId::try_from(b)
            .map(SlotId::Retired)
            .unwrap_or(SlotId::CardAuthentication),
    }
}

fn alg_id(alg: Algorithm) -> AlgorithmId {
    match alg {
        Algorithm::P256 => AlgorithmId::EccP256,
        Algorithm::P384 => AlgorithmId::EccP384,
        Algorithm::Rsa2048 => AlgorithmId::Rsa2048,
        Algorithm::Rsa3072 => AlgorithmId::Rsa3072,
        Algorithm::Rsa4096 => AlgorithmId::Rsa4096,
        Algorithm::Ed25519 => AlgorithmId::Ed25519,
    }
}

fn mgm_alg_id(alg: MgmAlgorithm) -> MgmAlgorithmId {
    match alg {
        MgmAlgorithm::TripleDes => MgmAlgorithmId::ThreeDes,
        MgmAlgorithm::Aes128 => MgmAlgorithmId::Aes128,
        MgmAlgorithm::Aes192 => MgmAlgorithmId::Aes192,
        MgmAlgorithm::Aes256 => MgmAlgorithmId::Aes256,
    }
}

fn pin_policy(p: PinPolicy) -> yubikey::PinPolicy {
    match p {
        PinPolicy::Default => yubikey::PinPolicy::Default,
        PinPolicy::Never => yubikey::PinPolicy::Never,
        PinPolicy::Once => yubikey::PinPolicy::Once,
        PinPolicy::Always => yubikey::PinPolicy::Always,
    }
}

fn touch_policy(p: TouchPolicy) -> yubikey::TouchPolicy {
    match p {
        TouchPolicy::Default => yubikey::TouchPolicy::Default,
        TouchPolicy::Never => yubikey::TouchPolicy::Never,
        TouchPolicy::Always => yubikey::TouchPolicy::Always,
        TouchPolicy::Cached => yubikey::TouchPolicy::Cached,
    }
}

fn is_removed(e: &pcsc::Error) -> bool {
    matches!(
        e,
        pcsc::Error::RemovedCard
            | pcsc::Error::ResetCard
            | pcsc::Error::NoSmartcard
            | pcsc::Error::ReaderUnavailable
            | pcsc::Error::UnknownReader
            | pcsc::Error::UnpoweredCard
            | pcsc::Error::UnresponsiveCard
    )
}

/// Map the crate's error to ours. `op` names the operation for the generic case.
fn map_err(op: &'static str, e: yubikey::Error) -> TokenError {
    match e {
        yubikey::Error::WrongPin { tries } => TokenError::WrongPin { tries_left: tries },
        yubikey::Error::PinLocked => TokenError::PinBlocked,
        yubikey::Error::PcscError { inner: Some(p) } if is_removed(&p) => TokenError::CardRemoved,
        yubikey::Error::PcscError {
            inner: Some(pcsc::Error::NoService | pcsc::Error::ServiceStopped),
        } => TokenError::Pcsc("the PC/SC service (pcscd) is not running or not reachable".into()),
        yubikey::Error::PcscError { inner: Some(p) } => TokenError::Pcsc(p.to_string()),
        other => TokenError::Card {
            op,
            detail: other.to_string(),
        },
    }
}

fn pcsc_error(e: pcsc::Error) -> TokenError {
    if is_removed(&e) {
        TokenError::CardRemoved
    } else {
        TokenError::Pcsc(e.to_string())
    }
}

fn status_error(op: &'static str, sw: u16) -> TokenError {
    TokenError::Card {
        op,
        detail: format!("the token answered status {sw:04X}"),
    }
}

/// Send one command; the status word of the answer (response data is not needed by the
/// commands sent this way).
fn transmit(tx: &pcsc::Transaction<'_>, apdu: &[u8]) -> Result<u16, TokenError> {
    exchange(tx, apdu).map(|(_, sw)| sw)
}

/// The longest answer pivault follows through GET RESPONSE: a GET METADATA answer for an
/// RSA-4096 key is about 530 bytes; a token that keeps answering 61xx is faulty.
const MAX_ANSWER: usize = 4096;

/// Send one command; the answer's data and status word. An answer longer than the short
/// Le is fetched with GET RESPONSE while the token says 61xx (ISO/IEC 7816-4 5.3.4, the
/// way the `yubikey` crate reads it too: the same APDUs on the card's counter).
fn exchange(
    tx: &pcsc::Transaction<'_>,
    apdu: &[u8],
) -> Result<(Zeroizing<Vec<u8>>, u16), TokenError> {
    const GET_RESPONSE: [u8; 5] = [0x00, 0xC0, 0x00, 0x00, 0x00];
    let mut data = Zeroizing::new(Vec::new());
    let mut buf = Zeroizing::new([0u8; 258]);
    let mut command = apdu;
    loop {
        let r = tx.transmit(command, &mut *buf).map_err(pcsc_error)?;
        let [body @ .., sw1, sw2] = r else {
            return Err(TokenError::Pcsc("an answer without status word".into()));
        };
        data.extend_from_slice(body);
        if *sw1 != 0x61 {
            return Ok((data, u16::from_be_bytes([*sw1, *sw2])));
        }
        if data.len() > MAX_ANSWER {
            return Err(TokenError::Pcsc(format!(
                "the token's answer runs past {MAX_ANSWER} bytes"
            )));
        }
        command = &GET_RESPONSE;
    }
}

/// One GET METADATA answer, by status word.
enum MetaAnswer {
    /// 9000, parsed.
    Found(Metadata),
    /// 6A88: nothing in that slot.
    Absent,
    /// 6D00: instruction not supported (firmware before 5.3, or a token whose version
    /// number promises more than it has).
    NotSupported,
}

/// Largest object sent in one extended PUT DATA: a YubiKey's 3072-byte buffer less the
/// command's own tags.
const EXTENDED_PUT_MAX: usize = 3052;

/// A certificate object's content (SP 800-73-4 part 1, table 10 et seq.): 70 certificate,
/// 71 CertInfo (00: not compressed), FE error detection code (empty).
fn cert_object(der: &[u8]) -> Vec<u8> {
    let mut o = tlv(0x70, der);
    o.extend_from_slice(&[0x71, 0x01, 0x00, 0xFE, 0x00]);
    o
}

/// The data object holding a slot's certificate (SP 800-73-4 part 1, table 3; retired
/// slots 82–95 are 5FC10D–5FC120).
fn object_id(slot: Slot) -> u32 {
    match slot.byte() {
        0x9a => 0x005f_c105,
        0x9c => 0x005f_c10a,
        0x9d => 0x005f_c10b,
        0x9e => 0x005f_c101,
        b => 0x005f_c10d + u32::from(b.saturating_sub(0x82)),
    }
}

/// PRINTED object: the PIN-protected data store (Yubico extension, object 5FC109).
const OBJ_PRINTED: u32 = 0x005f_c109;
/// Yubico's ADMIN DATA object (flags such as "management key PIN-protected").
const OBJ_ADMIN_DATA: u32 = 0x005f_ff00;
/// CHUID (SP 800-73-4 Part 1, 3.1.2) and Card Capability Container (3.1.1).
const OBJ_CHUID: u32 = 0x005f_c102;
const OBJ_CCC: u32 = 0x005f_c107;

/// A CHUID per SP 800-73-4 Part 1 Table 9: FASC-N (0x30, the "non-federal" pattern of
/// all 9s that Yubico's tools write), GUID (0x34, random here), expiration (0x35,
/// YYYYMMDD), empty issuer signature (0x3E) and error-detection code (0xFE).
fn chuid_bytes(guid: [u8; 16]) -> Vec<u8> {
    let mut v = vec![
        0x30, 0x19, 0xd4, 0xe7, 0x39, 0xda, 0x73, 0x9c, 0xed, 0x39, 0xce, 0x73, 0x9d, 0x83, 0x68,
        0x58, 0x21, 0x08, 0x42, 0x10, 0x84, 0x21, 0xc8, 0x42, 0x10, 0xc3, 0xeb,
    ];
    v.extend_from_slice(&[0x34, 0x10]);
    v.extend_from_slice(&guid);
    v.extend_from_slice(&[0x35, 0x08]);
    v.extend_from_slice(b"20991231");
    v.extend_from_slice(&[0x3e, 0x00, 0xfe, 0x00]);
    v
}

/// A Card Capability Container per SP 800-73-4 Part 1 Table 8 with a random card
/// identifier (0xF0: GSC-IS RID A000000116, manufacturer 0xFF, card type 0x02, 14 bytes).
fn ccc_bytes(card_id: [u8; 14]) -> Vec<u8> {
    let mut v = vec![0xf0, 0x15, 0xa0, 0x00, 0x00, 0x01, 0x16, 0xff, 0x02];
    v.extend_from_slice(&card_id);
    v.extend_from_slice(&[
        0xf1, 0x01, 0x21, 0xf2, 0x01, 0x21, 0xf3, 0x00, 0xf4, 0x01, 0x00, 0xf5, 0x01, 0x10, 0xf6,
        0x00, 0xf7, 0x00, 0xfa, 0x00, 0xfb, 0x00, 0xfc, 0x00, 0xfd, 0x00, 0xfe, 0x00,
    ]);
    v
}

impl YubiKeyToken {
    /// Run an operation that needs management-key authentication. If the token says the
    /// session is gone (another program SELECTed the application in between), authenticate
    /// again with the key last accepted and retry once.
    fn with_admin<T>(
        &mut self,
        op: &'static str,
        mut f: impl FnMut(&mut YubiKey) -> yubikey::Result<T>,
    ) -> Result<T, TokenError> {
        match f(&mut self.yk) {
            Err(yubikey::Error::AuthenticationError) if self.mgm.is_some() => {
                log::info!("{op}: management-key session lost; authenticating again");
                let k = self
                    .mgm
                    .as_ref()
                    .and_then(|(b, alg)| MgmKey::from_bytes(&**b, Some(mgm_alg_id(*alg))).ok())
                    .ok_or(TokenError::MgmKeyRejected)?;
                self.yk.authenticate(&k).map_err(|e| self.fail(op, e))?;
                f(&mut self.yk).map_err(|e| self.admin_fail(op, e))
            }
            r => r.map_err(|e| self.admin_fail(op, e)),
        }
    }

    fn admin_fail(&self, op: &'static str, e: yubikey::Error) -> TokenError {
        match e {
            yubikey::Error::AuthenticationError => TokenError::Card {
                op,
                detail: "the token refused: management key not authenticated".into(),
            },
            e => self.fail(op, e),
        }
    }

    /// Whether the reader still holds a card, asked through a fresh PC/SC context. Used to
    /// tell "the token was pulled" from other failures the `yubikey` crate reports as a
    /// generic error.
    fn card_present(&self) -> bool {
        let Ok(ctx) = pcsc::Context::establish(pcsc::Scope::User) else {
            return true;
        };
        let Ok(name) = std::ffi::CString::new(self.info.reader.clone()) else {
            return true;
        };
        let mut st = [pcsc::ReaderState::new(name, pcsc::State::UNAWARE)];
        if ctx
            .get_status_change(std::time::Duration::from_millis(500), &mut st)
            .is_err()
        {
            return true;
        }
        if !st[0].event_state().contains(pcsc::State::PRESENT) {
            return false;
        }
        // pcscd may not have seen the removal yet (vpcd and USB readers poll): give it a
        // moment to report a change.
        st[0].sync_current_state();
        match ctx.get_status_change(std::time::Duration::from_millis(1500), &mut st) {
            Ok(()) => st[0].event_state().contains(pcsc::State::PRESENT),
            Err(_) => true,
        }
    }

    /// Map an error, turning a generic failure on a card that is gone into `CardRemoved`.
    fn fail(&self, op: &'static str, e: yubikey::Error) -> TokenError {
        match map_err(op, e) {
            TokenError::Card { .. } | TokenError::Pcsc(_) if !self.card_present() => {
                TokenError::CardRemoved
            }
            other => other,
        }
    }

    /// The retry check and the VERIFY in one PC/SC transaction (PC/SC part 5,
    /// SCardBeginTransaction), so no other program's VERIFY or SELECT can come between the
    /// count pivault read and the try it spends. The `yubikey` crate opens a transaction
    /// per call and does not lend its card handle, so this uses a second shared handle on
    /// the same reader: the PIV application's security state belongs to the card, not to
    /// the handle, and the crate's later calls see the PIN verified. Two APDUs: an empty
    /// VERIFY (63Cx = x tries, 9000 = already verified, 6983 = blocked) and the VERIFY.
    fn verify_pin_in_transaction(&mut self, pin: &Pin) -> Result<(), TokenError> {
        let pin = pin.expose().as_bytes();
        if pin.is_empty() || pin.len() > 8 {
            return Err(TokenError::Card {
                op: "verify PIN",
                detail: "a PIV PIN has 1 to 8 characters".into(),
            });
        }
        self.in_transaction(|tx| {
            // VERIFY, P2 = 80 (PIV Card Application PIN), no data: the retry count.
            match transmit(tx, &[0x00, 0x20, 0x00, 0x80])? {
                0x9000 => {}
                0x6983 | 0x63C0 => return Err(TokenError::PinBlocked),
                0x63C1 => return Err(TokenError::PinLastTry),
                w if w & 0xFFF0 == 0x63C0 => {}
                w => return Err(status_error("read PIN retries", w)),
            }
            // The PIN padded with FF to 8 bytes (SP 800-73-4 part 2, 3.2.1).
            let mut apdu = Zeroizing::new(vec![0x00, 0x20, 0x00, 0x80, 0x08]);
            apdu.extend_from_slice(pin);
            apdu.resize(13, 0xFF);
            match transmit(tx, &apdu)? {
                0x9000 => Ok(()),
                0x6983 => Err(TokenError::PinBlocked),
                w if w & 0xFFF0 == 0x63C0 => Err(TokenError::WrongPin {
                    tries_left: (w & 0x000F) as u8,
                }),
                w => Err(status_error("verify PIN", w)),
            }
        })
    }

    /// PUT DATA (SP 800-73-4 part 2, 3.3.2) of a whole object in one extended-length
    /// command. Needs management-key authentication (6982 → `MgmKeyRejected`).
    fn put_data_extended(&mut self, id: u32, object: &[u8]) -> Result<(), TokenError> {
        let mut data = vec![0x5C, 0x03];
        data.extend_from_slice(&id.to_be_bytes()[1..]);
        data.extend_from_slice(&tlv(0x53, object));
        let len = u16::try_from(data.len()).map_err(|_| TokenError::Card {
            op: "write certificate",
            detail: "object too large".into(),
        })?;
        let mut apdu = vec![0x00, 0xDB, 0x3F, 0xFF, 0x00];
        apdu.extend_from_slice(&len.to_be_bytes());
        apdu.extend_from_slice(&data);
        let w = self.in_transaction(|tx| transmit(tx, &apdu))?;
        match w {
            0x9000 => Ok(()),
            0x6982 => Err(TokenError::MgmKeyRejected),
            w => {
                let e = status_error("write certificate", w);
                Err(if self.card_present() {
                    e
                } else {
                    TokenError::CardRemoved
                })
            }
        }
    }

    /// Run `f` inside one PC/SC transaction (SCardBeginTransaction) on a second, shared
    /// handle to this token's reader. The `yubikey` crate opens a transaction per call and
    /// does not lend its card handle; the PIV application's security state (PIN verified,
    /// management key authenticated) belongs to the card, not to the handle, so the crate's
    /// calls before and after see what happened here. The handle is left with
    /// LeaveCard: dropping it would reset the card.
    fn in_transaction<T>(
        &self,
        f: impl FnOnce(&pcsc::Transaction<'_>) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        let ctx = pcsc::Context::establish(pcsc::Scope::User).map_err(pcsc_error)?;
        let name = std::ffi::CString::new(self.info.reader.clone())
            .map_err(|_| TokenError::Pcsc("reader name holds a NUL byte".into()))?;
        let mut card = ctx
            .connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
            .map_err(pcsc_error)?;
        let result = match card.transaction() {
            Ok(tx) => {
                let r = f(&tx);
                let _ = tx.end(pcsc::Disposition::LeaveCard);
                r
            }
            Err(e) => Err(pcsc_error(e)),
        };
        let _ = card.disconnect(pcsc::Disposition::LeaveCard);
        result
    }

    /// Authenticate again with the management key last accepted.
    fn reauthenticate(&mut self, op: &'static str) -> Result<(), TokenError> {
        let k = self
            .mgm
            .as_ref()
            .and_then(|(b, alg)| MgmKey::from_bytes(&**b, Some(mgm_alg_id(*alg))).ok())
            .ok_or(TokenError::MgmKeyRejected)?;
        self.yk.authenticate(&k).map_err(|e| self.fail(op, e))
    }

    /// GET METADATA (Yubico INS F7, P1 00, P2 the reference; docs.yubico.com "PIV APDUs:
    /// Get metadata") for each of `references`, all in one PC/SC transaction on the side
    /// handle (`in_transaction`: no SELECT, the PIV application stays selected), each
    /// answer parsed by `super::metadata::parse`. Costs exactly the crate's APDUs: one per
    /// reference, plus a GET RESPONSE per further 256 bytes of an RSA key. An answer that
    /// does not parse is a fault of `op`, never a panic and never "not supported".
    fn read_metadata<const N: usize>(
        &self,
        op: &'static str,
        references: [u8; N],
    ) -> Result<[MetaAnswer; N], TokenError> {
        let answers = self
            .in_transaction(|tx| {
                references
                    .iter()
                    .map(|&r| exchange(tx, &[0x00, 0xF7, 0x00, r, 0x00]))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| match e {
                TokenError::Pcsc(_) if !self.card_present() => TokenError::CardRemoved,
                TokenError::Pcsc(detail) => TokenError::Card { op, detail },
                e => e,
            })?;
        let parsed = references
            .iter()
            .zip(answers)
            .map(|(&r, (data, sw))| match sw {
                0x9000 => metadata::parse(r, &data)
                    .map(MetaAnswer::Found)
                    .map_err(|e| TokenError::Card {
                        op,
                        detail: format!(
                            "the token's GET METADATA answer for {r:02X} is malformed: {e}"
                        ),
                    }),
                0x6A88 => Ok(MetaAnswer::Absent),
                0x6D00 => Ok(MetaAnswer::NotSupported),
                sw => Err(status_error(op, sw)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        parsed.try_into().map_err(|_| TokenError::Card {
            op,
            detail: "fewer GET METADATA answers than references".into(),
        })
    }

    /// One command the crate cannot send, on a PC/SC handle of our own (shared, no
    /// SELECT) in one transaction (`in_transaction`); the answer's status word. A PC/SC
    /// failure is reported as a failure of `op`.
    fn raw_command(&self, op: &'static str, apdu: &[u8]) -> Result<u16, TokenError> {
        self.in_transaction(|tx| transmit(tx, apdu))
            .map_err(|e| match e {
                TokenError::Pcsc(detail) => TokenError::Card { op, detail },
                e => e,
            })
    }

    fn object_present(&mut self, id: u32) -> Result<bool, TokenError> {
        match self.yk.fetch_object(id) {
            Ok(data) => Ok(!data.is_empty()),
            Err(yubikey::Error::NotFound) => Ok(false),
            Err(e) => Err(map_err("read object", e)),
        }
    }
}

impl PivToken for YubiKeyToken {
    fn info(&self) -> &TokenInfo {
        &self.info
    }

    fn pin_retries(&mut self) -> Result<Option<u8>, TokenError> {
        // An empty VERIFY (SP 800-73-4 3.2.1) answers 63Cx with the count, or 9000 when
        // the PIN is already verified in this session. The crate's `get_pin_retries`
        // SELECTs first to clear that state, an APDU more that also drops the verified
        // PIN; "already verified" is reported as `None` instead.
        match self.yk.verify_pin(&[]) {
            Ok(()) => Ok(None),
            Err(yubikey::Error::WrongPin { tries }) => Ok(Some(tries)),
            Err(yubikey::Error::PinLocked) => Ok(Some(0)),
            Err(e) => Err(self.fail("read PIN retries", e)),
        }
    }

    fn verify_pin_checked(&mut self, pin: &Pin) -> Result<(), TokenError> {
        self.verify_pin_in_transaction(pin)
    }

    fn puk_retries(&mut self) -> Result<Option<u8>, TokenError> {
        if !self.info.version.has_metadata() {
            return Ok(None);
        }
        match self.read_metadata("read PUK metadata", [metadata::PUK])? {
            [MetaAnswer::Found(m)] => Ok(m.retries.map(|r| r.remaining)),
            [MetaAnswer::NotSupported] => Ok(None),
            [MetaAnswer::Absent] => Err(status_error("read PUK metadata", 0x6A88)),
        }
    }

    fn verify_pin(&mut self, pin: &Pin) -> Result<(), TokenError> {
        self.yk
            .verify_pin(pin.expose().as_bytes())
            .map_err(|e| self.fail("verify PIN", e))
    }

    fn credential_defaults(&mut self) -> Result<CredentialDefaults, TokenError> {
        if !self.info.version.has_metadata() {
            return Ok(CredentialDefaults::default());
        }
        // Both in one transaction: one PC/SC connection, the same two APDUs.
        let answers =
            self.read_metadata("read PIN and PUK metadata", [metadata::PIN, metadata::PUK])?;
        let [pin, puk] = answers.map(|a| match a {
            MetaAnswer::Found(m) => Ok(m.default),
            // Only "instruction not supported" means "cannot tell" (see `slot_key`).
            MetaAnswer::NotSupported => Ok(None),
            MetaAnswer::Absent => Err(status_error("read PIN and PUK metadata", 0x6A88)),
        });
        Ok(CredentialDefaults {
            pin: pin?,
            puk: puk?,
        })
    }

    fn mgm_key_state(&mut self) -> Result<MgmKeyState, TokenError> {
        // ADMIN DATA = 53 { 80 { 81 <flags> … } }, bit 0x02 of flags: the management key is
        // kept PIN-protected (Yubico's PIV objects). One GET DATA: the crate's `config()`
        // reads PRINTED as well, which `protected_mgm_key` reads when it matters.
        let protected = match self.yk.fetch_object(OBJ_ADMIN_DATA) {
            Ok(d) => find_tlv(&d, 0x80)
                .and_then(|inner| find_tlv(inner, 0x81))
                .and_then(|f| f.first())
                .is_some_and(|f| f & 0x02 != 0),
            Err(yubikey::Error::NotFound) => false,
            Err(e) => return Err(self.fail("read ADMIN DATA", e)),
        };
        let (algorithm, default) = if self.info.version.has_metadata() {
            let op = "read management key metadata";
            match self.read_metadata(op, [metadata::MANAGEMENT_KEY])? {
                [MetaAnswer::Found(m)] => match m.algorithm {
                    MetaAlgorithm::Management(a) => (Some(a), m.default),
                    _ => (None, m.default),
                },
                [MetaAnswer::NotSupported] => (None, None),
                [MetaAnswer::Absent] => return Err(status_error(op, 0x6A88)),
            }
        } else {
            // Before 5.3 (and before AES in 5.4) every management key is 3DES.
            (
                (self.info.version < FirmwareVersion::new(5, 4, 0))
                    .then_some(MgmAlgorithm::TripleDes),
                None,
            )
        };
        Ok(MgmKeyState {
            algorithm,
            protected,
            default,
        })
    }

    fn protected_mgm_key(&mut self) -> Result<Option<MgmKeyHex>, TokenError> {
        // PRINTED = 53 { 88 { 89 <key> } } (Yubico PIV tool source layout); readable only
        // after VERIFY PIN, so a refusal here means the PIN was not verified.
        let data = match self.yk.fetch_object(OBJ_PRINTED) {
            Ok(d) => d,
            Err(yubikey::Error::NotFound) => return Ok(None),
            Err(yubikey::Error::GenericError) => return Ok(None),
            Err(e) => return Err(self.fail("read PIN-protected data", e)),
        };
        let key = find_tlv(&data, 0x88).and_then(|inner| find_tlv(inner, 0x89));
        Ok(key
            .filter(|k| matches!(k.len(), 16 | 24 | 32))
            .map(|k| MgmKeyHex::new(hex::encode(k))))
    }

    fn authenticate(&mut self, key: &MgmKeyHex, alg: MgmAlgorithm) -> Result<(), TokenError> {
        let bytes = Zeroizing::new(
            hex::decode(key.expose().trim()).map_err(|_| TokenError::MgmKeyRejected)?,
        );
        let k = MgmKey::from_bytes(&*bytes, Some(mgm_alg_id(alg)))
            .map_err(|_| TokenError::MgmKeyRejected)?;
        match self.yk.authenticate(&k) {
            Ok(()) => {
                self.mgm = Some((bytes, alg));
                Ok(())
            }
            Err(yubikey::Error::AuthenticationError) => Err(TokenError::MgmKeyRejected),
            Err(e) => Err(self.fail("authenticate management key", e)),
        }
    }

    fn slot_key(&mut self, slot: Slot) -> Result<Option<SlotKey>, TokenError> {
        if !self.info.version.has_metadata() {
            return Err(self.unsupported("reading key metadata"));
        }
        match self.read_metadata("read key metadata", [slot.byte()])? {
            [MetaAnswer::Found(m)] => {
                // Key types pivault does not enroll (RSA-1024, X25519) read as "no key of
                // ours here".
                let MetaAlgorithm::Key(KeyType::Enrollable(algorithm)) = m.algorithm else {
                    return Ok(None);
                };
                Ok(Some(SlotKey {
                    algorithm,
                    pin_policy: m.policy.map(|(p, _)| p),
                    touch_policy: m.policy.map(|(_, t)| t),
                    generated: m.generated,
                    public_key: m.public_key,
                }))
            }
            [MetaAnswer::Absent] => Ok(None),
            // Firmware that has GET METADATA answers it; only "instruction not supported"
            // (a token whose version number promises more than it has) means "cannot
            // tell". An answer that does not parse is a fault, reported as one.
            [MetaAnswer::NotSupported] => Err(self.unsupported("reading key metadata")),
        }
    }

    fn read_certificate(&mut self, slot: Slot) -> Result<Option<Vec<u8>>, TokenError> {
        match Certificate::read(&mut self.yk, slot_id(slot)) {
            Ok(c) => c.cert.to_der().map(Some).map_err(|e| TokenError::Card {
                op: "read certificate",
                detail: e.to_string(),
            }),
            Err(yubikey::Error::NotFound | yubikey::Error::InvalidObject) => Ok(None),
            Err(e) => Err(self.fail("read certificate", e)),
        }
    }

    fn attest(&mut self, slot: Slot) -> Result<Option<Vec<u8>>, TokenError> {
        if !self.info.version.has_attestation() {
            return Err(self.unsupported("attestation"));
        }
        match piv::attest(&mut self.yk, slot_id(slot)) {
            Ok(der) => Ok(Some(der.to_vec())),
            // The crate folds every refusal status word into GenericError; for ATTEST
            // those are "no key" (6A88) and "key not generated on the token" (6A80).
            Err(yubikey::Error::GenericError) => Ok(None),
            Err(yubikey::Error::NotSupported) => Err(self.unsupported("attestation")),
            Err(e) => Err(self.fail("attest", e)),
        }
    }

    fn slot_public_key(&mut self, slot: Slot) -> Result<Option<SlotPublicKey>, TokenError> {
        if !self.info.version.has_metadata() {
            return Err(self.unsupported("reading key metadata"));
        }
        match self.read_metadata("read key metadata", [slot.byte()])? {
            [MetaAnswer::Found(m)] => {
                let Some(public) = m.public_key else {
                    return Ok(None);
                };
                let spki_der = public.to_der().map_err(|e| TokenError::Card {
                    op: "read key metadata",
                    detail: e.to_string(),
                })?;
                Ok(Some(SlotPublicKey {
                    spki_der,
                    generated: m.generated,
                }))
            }
            [MetaAnswer::Absent] => Ok(None),
            [MetaAnswer::NotSupported] => Err(self.unsupported("reading key metadata")),
        }
    }

    fn attestation_certificate(&mut self) -> Result<Option<Vec<u8>>, TokenError> {
        // The object's bytes, not the crate's parsed certificate: re-encoding could change
        // the signed bytes of a certificate that is not in canonical DER.
        match self.yk.fetch_object(ATTESTATION_CERT_OBJECT) {
            Ok(data) if data.is_empty() => Ok(None),
            Ok(data) => certificate_in_object(&data)
                .map(Some)
                .ok_or(TokenError::Card {
                    op: "read the F9 certificate",
                    detail: "object 5FFF01 holds no certificate (tag 70)".into(),
                }),
            Err(yubikey::Error::NotFound | yubikey::Error::InvalidObject) => Ok(None),
            Err(e) => Err(self.fail("read the F9 certificate", e)),
        }
    }

    fn generate_key(
        &mut self,
        slot: Slot,
        alg: Algorithm,
        pin: PinPolicy,
        touch: TouchPolicy,
    ) -> Result<SubjectPublicKeyInfoOwned, TokenError> {
        if self.info.version < alg.min_firmware() {
            return Err(self.unsupported(&format!("{alg} key generation")));
        }
        self.with_admin("generate key", |yk| {
            piv::generate(
                yk,
                slot_id(slot),
                alg_id(alg),
                pin_policy(pin),
                touch_policy(touch),
            )
        })
    }

    fn sign_raw(
        &mut self,
        slot: Slot,
        alg: Algorithm,
        input: &[u8],
    ) -> Result<Vec<u8>, TokenError> {
        piv::sign_data(&mut self.yk, input, alg_id(alg), slot_id(slot))
            .map(|b| b.to_vec())
            .map_err(|e| match e {
                yubikey::Error::AuthenticationError => TokenError::PinRequired,
                e => self.fail("sign", e),
            })
    }

    fn move_key(&mut self, from: Slot, to: Option<Slot>) -> Result<(), TokenError> {
        if self.info.version < FirmwareVersion::new(5, 7, 0) {
            return Err(self.unsupported("moving keys"));
        }
        // The `yubikey` crate 0.9 has no MOVE KEY and lends no card handle, so the APDU
        // goes through a PC/SC handle of our own on the same reader, inside one PC/SC
        // transaction. The management-key authentication belongs to the card's PIV
        // application, not to a handle (SP 800-73-4 Part 2, 3.1.1: only SELECT and reset
        // clear it), so it holds here; nothing is SELECTed. APDU: 00 F6 <to|FF> <from>.
        let apdu = [0x00, 0xF6, to.map_or(0xFF, Slot::byte), from.byte()];
        let sw = self.raw_command("move key", &apdu)?;
        match sw {
            0x9000 => Ok(()),
            // 6982: management key not authenticated (the session was lost): once more
            // after authenticating through the crate.
            0x6982 if self.mgm.is_some() => {
                self.reauthenticate("move key")?;
                match self.raw_command("move key", &apdu)? {
                    0x9000 => Ok(()),
                    sw => Err(status_error("move key", sw)),
                }
            }
            0x6A88 => Err(TokenError::Card {
                op: "move key",
                detail: format!("slot {from} holds no key"),
            }),
            sw => Err(status_error("move key", sw)),
        }
    }

    fn write_certificate(&mut self, slot: Slot, der: &[u8]) -> Result<(), TokenError> {
        let cert = x509_cert::Certificate::from_der(der).map_err(|e| TokenError::Card {
            op: "write certificate",
            detail: e.to_string(),
        })?;
        // One extended-length PUT DATA (YubiKey 4 and 5 take up to 3072 bytes; yubikit sends
        // extended APDUs from firmware 4.0). The crate only chains short APDUs: three or
        // four commands for a typical certificate.
        let object = cert_object(der);
        if object.len() <= EXTENDED_PUT_MAX {
            match self.put_data_extended(object_id(slot), &object) {
                Ok(()) => return Ok(()),
                Err(TokenError::CardRemoved) => return Err(TokenError::CardRemoved),
                // Management-key session lost (another program SELECTed), or a reader that
                // cannot carry extended APDUs (some NFC readers: 6700): the crate's chained
                // path below, which authenticates again once. PUT DATA replaces the whole
                // object, so sending it again is safe.
                Err(e) => {
                    log::info!("slot {slot}: one-command certificate write refused ({e}); chaining")
                }
            }
        }
        let cert = Certificate { cert };
        self.with_admin("write certificate", |yk| {
            cert.write(
                yk,
                slot_id(slot),
                yubikey::certificate::CertInfo::Uncompressed,
            )
        })
    }

    fn ensure_chuid_ccc(&mut self) -> Result<bool, TokenError> {
        use rand::RngCore;
        let mut wrote = false;
        if !self.object_present(OBJ_CHUID)? {
            let mut guid = [0u8; 16];
            rand::rng().fill_bytes(&mut guid);
            let data = chuid_bytes(guid);
            self.with_admin("write CHUID", |yk| {
                yk.save_object(OBJ_CHUID, &mut data.clone())
            })?;
            wrote = true;
        }
        if !self.object_present(OBJ_CCC)? {
            let mut id = [0u8; 14];
            rand::rng().fill_bytes(&mut id);
            let data = ccc_bytes(id);
            self.with_admin("write CCC", |yk| yk.save_object(OBJ_CCC, &mut data.clone()))?;
            wrote = true;
        }
        Ok(wrote)
    }

    fn change_pin(&mut self, old: &Pin, new: &Pin) -> Result<(), TokenError> {
        self.yk
            .change_pin(old.expose().as_bytes(), new.expose().as_bytes())
            .map_err(|e| self.fail("change PIN", e))
    }

    fn change_puk(&mut self, old: &Puk, new: &Puk) -> Result<(), TokenError> {
        self.yk
            .change_puk(old.expose().as_bytes(), new.expose().as_bytes())
            .map_err(|e| match e {
                yubikey::Error::WrongPin { tries } => TokenError::WrongPuk { tries_left: tries },
                yubikey::Error::PinLocked => TokenError::PukBlocked,
                e => self.fail("change PUK", e),
            })
    }

    fn unblock_pin(&mut self, puk: &Puk, new: &Pin) -> Result<(), TokenError> {
        self.yk
            .unblock_pin(puk.expose().as_bytes(), new.expose().as_bytes())
            .map_err(|e| match e {
                yubikey::Error::WrongPin { tries } => TokenError::WrongPuk { tries_left: tries },
                yubikey::Error::PinLocked => TokenError::PukBlocked,
                e => self.fail("unblock PIN", e),
            })
    }

    fn set_mgm_key(
        &mut self,
        key: &MgmKeyHex,
        alg: MgmAlgorithm,
        protected: bool,
    ) -> Result<(), TokenError> {
        let bytes =
            Zeroizing::new(
                hex::decode(key.expose().trim()).map_err(|_| TokenError::Card {
                    op: "set management key",
                    detail: "not hex".into(),
                })?,
            );
        let k = MgmKey::from_bytes(&*bytes, Some(mgm_alg_id(alg)))
            .map_err(|e| self.fail("set management key", e))?;
        self.with_admin("set management key", |yk| {
            if protected {
                k.set_protected(yk)
            } else {
                k.set_manual(yk, false)
            }
        })?;
        self.mgm = Some((bytes, alg));
        Ok(())
    }
}

/// Parse a certificate's SubjectPublicKeyInfo (used by callers comparing keys).
pub fn spki_of_cert(der: &[u8]) -> Option<SubjectPublicKeyInfoOwned> {
    x509_cert::Certificate::from_der(der)
        .ok()
        .map(|c| c.tbs_certificate().subject_public_key_info().clone())
}

/// The certificate (tag 70, BER length) of a certificate object (SP 800-73-4 Part 1,
/// Table 10).
fn certificate_in_object(data: &[u8]) -> Option<Vec<u8>> {
    let (&tag, rest) = data.split_first()?;
    if tag != 0x70 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        n @ 0..=0x7f => (usize::from(n), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => (
            usize::from(*rest.first()?) << 8 | usize::from(*rest.get(1)?),
            rest.get(2..)?,
        ),
        _ => return None,
    };
    rest.get(..len).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_objects_match_the_crate_layout() {
        assert_eq!(object_id(Slot::AUTHENTICATION), 0x005f_c105);
        assert_eq!(object_id(Slot::CARD_AUTHENTICATION), 0x005f_c101);
        assert_eq!(object_id(Slot::from_byte(0x95).expect("95")), 0x005f_c120);
        let o = cert_object(&[0xAA; 300]);
        assert_eq!(&o[..4], &[0x70, 0x82, 0x01, 0x2C]);
        assert_eq!(&o[o.len() - 5..], &[0x71, 0x01, 0x00, 0xFE, 0x00]);
    }

    #[test]
    fn chuid_and_ccc_have_spec_lengths() {
        // CHUID: FASC-N 25 + GUID 16 + expiry 8 + 2 empty TLVs, with headers = 59 bytes.
        assert_eq!(chuid_bytes([0; 16]).len(), 59);
        // CCC: 51 bytes, as Yubico's tools write it.
        assert_eq!(ccc_bytes([0; 14]).len(), 51);
    }
}
