//! The token: PIV slots, algorithms and policies as typed values, and the [`PivToken`]
//! trait through which every workflow talks to a card.
//!
//! Only `piv/yubikey.rs`, `piv/readers.rs` and `piv/probe.rs` name the `yubikey` and
//! `pcsc` crates; the
//! workflows see this
//! trait, so a unit test can put an in-process fake behind it for failures a real card
//! cannot produce on demand (the integration tests always use the real PC/SC path).

pub(crate) mod metadata;
pub mod probe;
pub mod readers;
pub(crate) mod tlv;
mod types;
pub mod yubikey;

#[cfg(test)]
pub(crate) mod fake;

pub use types::*;

use crate::secret::{MgmKeyHex, Pin, Puk};
use spki::SubjectPublicKeyInfoOwned;

/// Failures of a token operation, carrying the facts a person needs to act on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no YubiKey found{0}")]
    NoToken(String),
    #[error("several tokens are present: {0}; choose one with --serial or --reader")]
    Ambiguous(String),
    #[error("the token was removed (or reset) during the operation")]
    CardRemoved,
    #[error("wrong PIN: {tries_left} tries left before the PIN is blocked")]
    WrongPin { tries_left: u8 },
    #[error("the PIN is blocked")]
    PinBlocked,
    #[error("only one PIN attempt is left: pivault will not risk blocking the token")]
    PinLastTry,
    #[error("only one PUK attempt is left: pivault will not risk blocking the PUK")]
    PukLastTry,
    #[error("wrong PUK: {tries_left} tries left before the PUK is blocked")]
    WrongPuk { tries_left: u8 },
    #[error("the PUK is blocked")]
    PukBlocked,
    #[error("the management key was not accepted by the token")]
    MgmKeyRejected,
    #[error("the token has no PIN-protected management key")]
    NoProtectedMgmKey,
    #[error("{what} is not supported by this token (firmware {version})")]
    NotSupported { what: String, version: String },
    /// SECURITY STATUS NOT SATISFIED to a private-key operation: the PIN is not verified
    /// in this PIV session (or a touch was not given).
    #[error("the token refused the key operation: PIN (or touch) required")]
    PinRequired,
    #[error("PC/SC: {0}")]
    Pcsc(String),
    /// The station's reader watcher lost pcscd for good; the tokens in flight were still
    /// reported.
    #[error("PC/SC: the reader watcher failed: {why}; {reported} token(s) reported, the ones in flight included")]
    WatcherFailed { why: String, reported: usize },
    #[error("token operation '{op}' failed: {detail}")]
    Card { op: &'static str, detail: String },
}

/// What identifies a token on a reader.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub serial: u32,
    pub version: FirmwareVersion,
    pub reader: String,
}

/// Management key facts the token is willing to tell.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MgmKeyState {
    /// Known from GET METADATA (firmware >= 5.3); `None` when the token cannot tell.
    pub algorithm: Option<MgmAlgorithm>,
    /// Whether ADMIN DATA flags the key as stored PIN-protected on the token.
    pub protected: bool,
    /// Whether the key is the factory default (firmware >= 5.3 only).
    pub default: Option<bool>,
}

/// Whether PIN and PUK are still the factory values (GET METADATA "default" flag, firmware
/// >= 5.3); `None` when the token cannot tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CredentialDefaults {
    pub pin: Option<bool>,
    pub puk: Option<bool>,
}

/// What GET METADATA says about a key slot (firmware >= 5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotKey {
    pub algorithm: Algorithm,
    pub pin_policy: Option<PinPolicy>,
    pub touch_policy: Option<TouchPolicy>,
    pub generated: Option<bool>,
    pub public_key: Option<SubjectPublicKeyInfoOwned>,
}

/// A slot's public key as GET METADATA tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPublicKey {
    /// SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
    /// Generated on the token (`Some(false)`: imported); `None` when not told.
    pub generated: Option<bool>,
}

/// The operations pivault needs from a PIV token.
///
/// Implementations must not cache secrets beyond the session and must map card status
/// words to [`TokenError`] variants with their facts (tries left etc.).
pub trait PivToken {
    fn info(&self) -> &TokenInfo;

    /// PIN tries left, read without spending one (an empty VERIFY, SP 800-73-4 3.2.1).
    /// `None` when the card answers "already verified" and so does not tell the count
    /// (the PIN is then certainly not blocked).
    fn pin_retries(&mut self) -> Result<Option<u8>, TokenError>;
    /// PUK tries left when the firmware can tell without an attempt (GET METADATA).
    fn puk_retries(&mut self) -> Result<Option<u8>, TokenError>;
    fn verify_pin(&mut self, pin: &Pin) -> Result<(), TokenError>;
    /// Verify the PIN unless the token says it is blocked or has one try left: never the
    /// last try. A transport that can (PC/SC) holds one transaction from the count to the
    /// attempt, so no other program's try comes between them.
    fn verify_pin_checked(&mut self, pin: &Pin) -> Result<(), TokenError> {
        match self.pin_retries()? {
            Some(0) => Err(TokenError::PinBlocked),
            Some(1) => Err(TokenError::PinLastTry),
            _ => self.verify_pin(pin),
        }
    }
    /// Whether PIN and PUK are the factory values, read without an attempt.
    fn credential_defaults(&mut self) -> Result<CredentialDefaults, TokenError>;

    fn mgm_key_state(&mut self) -> Result<MgmKeyState, TokenError>;
    /// The PIN-protected management key, if the token keeps one (PIN must be verified).
    fn protected_mgm_key(&mut self) -> Result<Option<MgmKeyHex>, TokenError>;
    fn authenticate(&mut self, key: &MgmKeyHex, alg: MgmAlgorithm) -> Result<(), TokenError>;

    /// Key metadata; `Ok(None)` when the slot is empty, `Err(NotSupported)` when the
    /// firmware cannot tell.
    fn slot_key(&mut self, slot: Slot) -> Result<Option<SlotKey>, TokenError>;
    fn read_certificate(&mut self, slot: Slot) -> Result<Option<Vec<u8>>, TokenError>;

    /// ATTEST (Yubico INS F9, firmware 4.3+; Yubico, "PIV attestation"): a certificate
    /// for the key in `slot`, signed by the token's F9 key, DER. `Ok(None)` when the card
    /// refuses (an empty slot, or an imported key: only generated keys are attested).
    /// Needs no PIN or management key.
    fn attest(&mut self, slot: Slot) -> Result<Option<Vec<u8>>, TokenError> {
        let _ = slot;
        Err(TokenError::NotSupported {
            what: "attestation".into(),
            version: self.info().version.to_string(),
        })
    }
    /// The public key in `slot` (GET METADATA, 5.3+) for every key type the token holds,
    /// also those pivault does not enroll (RSA-1024, X25519): what an attestation of the
    /// slot must certify. `Ok(None)` when the slot is empty, `Err(NotSupported)` when the
    /// firmware cannot tell.
    fn slot_public_key(&mut self, slot: Slot) -> Result<Option<SlotPublicKey>, TokenError> {
        let _ = slot;
        Err(TokenError::NotSupported {
            what: "reading key metadata".into(),
            version: self.info().version.to_string(),
        })
    }
    /// The certificate of the F9 attestation key (object 5FFF01), DER; `Ok(None)` when
    /// absent.
    fn attestation_certificate(&mut self) -> Result<Option<Vec<u8>>, TokenError> {
        Err(TokenError::NotSupported {
            what: "attestation".into(),
            version: self.info().version.to_string(),
        })
    }

    /// DESTRUCTIVE: replaces any key in the slot. Needs management-key authentication.
    fn generate_key(
        &mut self,
        slot: Slot,
        alg: Algorithm,
        pin_policy: PinPolicy,
        touch_policy: TouchPolicy,
    ) -> Result<SubjectPublicKeyInfoOwned, TokenError>;
    /// A raw private-key operation: the digest for ECDSA, the EMSA-PKCS1-v1_5 block for
    /// RSA, the whole message for Ed25519. Needs the PIN for most slots.
    fn sign_raw(&mut self, slot: Slot, alg: Algorithm, input: &[u8])
        -> Result<Vec<u8>, TokenError>;
    /// MOVE KEY (Yubico INS F6, firmware 5.7+): the key in `from` goes to `to`, replacing
    /// what `to` held; `to = None` deletes it (Yubico "DELETE KEY", P1 FF). Certificate
    /// objects stay where they are. Needs management-key authentication.
    fn move_key(&mut self, from: Slot, to: Option<Slot>) -> Result<(), TokenError> {
        let _ = (from, to);
        Err(TokenError::NotSupported {
            what: "moving keys".into(),
            version: self.info().version.to_string(),
        })
    }
    /// DESTRUCTIVE: replaces the slot's certificate object.
    fn write_certificate(&mut self, slot: Slot, der: &[u8]) -> Result<(), TokenError>;
    /// Write CHUID and CCC when absent (OS middleware needs them); true when written.
    fn ensure_chuid_ccc(&mut self) -> Result<bool, TokenError>;

    fn change_pin(&mut self, old: &Pin, new: &Pin) -> Result<(), TokenError>;
    fn change_puk(&mut self, old: &Puk, new: &Puk) -> Result<(), TokenError>;
    fn unblock_pin(&mut self, puk: &Puk, new: &Pin) -> Result<(), TokenError>;
    /// DESTRUCTIVE: sets a new management key (authenticate first); with `protected`, also
    /// stores it PIN-protected on the token (PIN must be verified).
    fn set_mgm_key(
        &mut self,
        key: &MgmKeyHex,
        alg: MgmAlgorithm,
        protected: bool,
    ) -> Result<(), TokenError>;
}
