//! Attestation read from a token: ATTEST each slot, read the F9 certificate, verify the
//! chain, then tie what is attested to the token in hand (its serial, the slot asked for,
//! and the key the slot holds now). The entry point of `pivault attest`.

use super::{verify, Attestation, AttestationError, TrustBundle};
use crate::piv::{PivToken, Slot, TokenError};
use std::time::SystemTime;

/// What one slot's attestation showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotFinding {
    /// Every check passed. `key_compared`: the attested key was compared with the key the
    /// slot holds (GET METADATA, firmware 5.3+); older firmware cannot tell the slot's key.
    Verified {
        attestation: Box<Attestation>,
        key_compared: bool,
    },
    /// A check failed (a forged, altered or foreign attestation, or an imported key).
    Refused(AttestationError),
}

impl SlotFinding {
    pub fn is_verified(&self) -> bool {
        matches!(self, SlotFinding::Verified { .. })
    }
}

/// Attest one slot of `token` with the token's F9 certificate `f9_der`. `Ok(None)` when the
/// slot holds no key. A token error (card gone, PC/SC) is an `Err`; a failed check is
/// a [`SlotFinding::Refused`].
pub fn attest_slot<T: PivToken + ?Sized>(
    token: &mut T,
    f9_der: &[u8],
    slot: Slot,
    bundle: &TrustBundle,
    at: SystemTime,
) -> Result<Option<SlotFinding>, TokenError> {
    let slot_key = match token.slot_public_key(slot) {
        Ok(k) => Some(k),
        Err(TokenError::NotSupported { .. }) => None,
        Err(e) => return Err(e),
    };
    let Some(att_der) = token.attest(slot)? else {
        // The token refused to attest: an empty slot, or a key it did not generate.
        return Ok(match slot_key {
            Some(Some(k)) => Some(SlotFinding::Refused(AttestationError::NotAttested {
                slot: slot.to_string(),
                why: if k.generated == Some(false) {
                    "the key was imported, and only keys generated on the token are attested"
                } else {
                    "the token refused ATTEST for a key it holds"
                }
                .into(),
            })),
            _ => None,
        });
    };
    let checked = (|| {
        let att = verify(&att_der, f9_der, bundle, at)?;
        att.check_serial(token.info().serial)?;
        if att.slot != Some(slot) {
            return Err(AttestationError::SlotMismatch {
                asked: slot.to_string(),
                attested: att.slot.map_or("no slot".into(), |s| s.to_string()),
            });
        }
        let key_compared = match &slot_key {
            Some(Some(k)) => {
                att.check_public_key(&k.spki_der)?;
                true
            }
            // ATTEST answered for a slot GET METADATA calls empty.
            Some(None) => {
                return Err(AttestationError::PublicKeyMismatch {
                    slot: slot.to_string(),
                })
            }
            None => false,
        };
        Ok(SlotFinding::Verified {
            attestation: Box::new(att),
            key_compared,
        })
    })();
    Ok(Some(checked.unwrap_or_else(SlotFinding::Refused)))
}

/// Attest `slots` of `token` (every slot holding a key when `None`), in order. A slot
/// named in `slots` that holds no key is refused ([`AttestationError::NotAttested`]).
pub fn attest_token<T: PivToken + ?Sized>(
    token: &mut T,
    slots: Option<&[Slot]>,
    bundle: &TrustBundle,
    at: SystemTime,
) -> Result<Vec<(Slot, SlotFinding)>, crate::Error> {
    if !token.info().version.has_attestation() {
        return Err(crate::Error::Token(TokenError::NotSupported {
            what: "attestation".into(),
            version: token.info().version.to_string(),
        }));
    }
    let f9 = token
        .attestation_certificate()?
        .ok_or(crate::Error::Attestation {
            slot: None,
            source: AttestationError::NoF9Certificate,
        })?;
    let wanted: Vec<Slot> = match slots {
        Some(s) => s.to_vec(),
        None => Slot::all().collect(),
    };
    let mut out = Vec::new();
    for slot in wanted {
        match attest_slot(token, &f9, slot, bundle, at)? {
            Some(f) => out.push((slot, f)),
            None if slots.is_some() => out.push((
                slot,
                SlotFinding::Refused(AttestationError::NotAttested {
                    slot: slot.to_string(),
                    why: "the slot holds no key".into(),
                }),
            )),
            None => {}
        }
    }
    Ok(out)
}
