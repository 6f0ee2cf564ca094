//! Re-keying an occupied slot without risking its key (issue 10 defect 6, "order of
//! damage"). On firmware 5.7+ the new key is generated in a free retired slot and moved
//! into place with MOVE KEY (Yubico INS F6) only after its certificate was issued and
//! verified; a refusal before that (attestation policy, Vault, verification) deletes the
//! new key and leaves the slot's old key and certificate as they were.

use super::KeyChoice;
use crate::error::Error;
use crate::piv::{FirmwareVersion, PinPolicy, PivToken, Slot, TokenError};

/// The PIN policy a key generated for `slot` gets: `policy`, or the slot's default when
/// it is "default" (Yubico PIV defaults: 9c always, 9e never, every other slot once).
pub fn default_pin_policy(slot: Slot, policy: PinPolicy) -> PinPolicy {
    match (policy, slot) {
        (PinPolicy::Default, Slot::SIGNATURE) => PinPolicy::Always,
        (PinPolicy::Default, Slot::CARD_AUTHENTICATION) => PinPolicy::Never,
        (PinPolicy::Default, _) => PinPolicy::Once,
        (p, _) => p,
    }
}

/// First firmware with MOVE KEY (Yubico, "YubiKey 5.7 firmware": PIV key move/delete).
pub const MOVE_KEY_FIRMWARE: FirmwareVersion = FirmwareVersion::new(5, 7, 0);

/// Where a new key for `slot` was made (`at`: the slot itself, or a retired slot it is
/// staged in) and whether the run can still take it back (`undo`: a staged key, or a key
/// made in an empty slot on firmware with DELETE KEY, until its certificate is in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPlace {
    pub slot: Slot,
    pub at: Slot,
    pub undo: bool,
}

/// Run `f`; when it fails and the key can be taken back, delete it so the failure leaves
/// the token as it was.
pub(super) fn or_discard<T>(
    token: &mut dyn PivToken,
    place: KeyPlace,
    f: impl FnOnce(&mut dyn PivToken) -> Result<T, Error>,
) -> Result<T, Error> {
    match f(token) {
        Err(e) => Err(discard(token, place, e)),
        ok => ok,
    }
}

/// After `e`, delete a key the run can still take back (MOVE KEY to nowhere, Yubico INS
/// F6 with P1 FF: DELETE KEY), so the failure leaves the token as it was.
pub(super) fn discard(token: &mut dyn PivToken, place: KeyPlace, e: Error) -> Error {
    let KeyPlace { slot, at, undo } = place;
    if !undo {
        return e;
    }
    match token.move_key(at, None) {
        Ok(()) if at == slot => {
            log::info!("slot {slot}: the new key was deleted; the slot is empty again");
            e
        }
        Ok(()) => {
            log::info!(
                "slot {slot}: the new key staged in {at} was deleted; slot {slot} is unchanged"
            );
            e
        }
        Err(d) => Error::AfterChange {
            done: format!("a new key was left in slot {at} (deleting it failed: {d})"),
            source: Box::new(e),
        },
    }
}

/// Whether a slot holds anything (a key or a certificate).
fn occupied(token: &mut dyn PivToken, slot: Slot) -> Result<bool, TokenError> {
    if token.read_certificate(slot)?.is_some() {
        return Ok(true);
    }
    match token.slot_key(slot) {
        Ok(k) => Ok(k.is_some()),
        Err(TokenError::NotSupported { .. }) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Where a new key for `slot` is made: in a free retired slot (82–95, not in `avoid`) to
/// be moved in once certified, when the slot is occupied and the firmware has MOVE KEY;
/// in place otherwise ([`KeyChoice::Fresh`] when the slot is known to hold nothing).
pub fn placement(token: &mut dyn PivToken, slot: Slot, avoid: &[Slot]) -> Result<KeyChoice, Error> {
    if token.info().version < MOVE_KEY_FIRMWARE || slot.is_retired() {
        return Ok(KeyChoice::Generate);
    }
    if !occupied(token, slot)? {
        return Ok(KeyChoice::Fresh { deletable: true });
    }
    for b in (0x82u8..=0x95).rev() {
        let Some(r) = Slot::from_byte(b) else {
            continue;
        };
        if !avoid.contains(&r) && !occupied(token, r)? {
            return Ok(KeyChoice::Staged(r));
        }
    }
    log::warn!("slot {slot}: no free retired slot to stage the new key in; replacing in place");
    Ok(KeyChoice::Generate)
}

/// The retired slot holding `key`, left there by a run that stopped between the
/// certificate and MOVE KEY; `None` on firmware without MOVE KEY.
pub fn find_staged(
    token: &mut dyn PivToken,
    key: &spki::SubjectPublicKeyInfoOwned,
) -> Result<Option<Slot>, Error> {
    if token.info().version < MOVE_KEY_FIRMWARE {
        return Ok(None);
    }
    for b in (0x82u8..=0x95).rev() {
        let Some(r) = Slot::from_byte(b) else {
            continue;
        };
        if crate::workflow::slot_holds_key(token, r, key)? {
            return Ok(Some(r));
        }
    }
    Ok(None)
}
