//! The one credential rotation: new credentials are escrowed as `pending` (check-and-set)
//! *before* they touch the token, applied in a fixed order (PIN, PUK, management key), and
//! each promoted to `live` as soon as it is applied. The station (factory → random
//! credentials) and `unblock` (new PIN from the user, new PUK) both go through here.
//!
//! A `pending` left by an earlier run is resolved on entry, before anything else: the
//! token is probed for which credential it holds, the new one first (the usual state after
//! a lost promotion), with the retry counters read before every attempt so that the last
//! PIN or PUK try is never spent.

use crate::error::Error;
use crate::escrow::{self, Credentials, Escrow, Versioned};
use crate::hooks::checkpoint;
use crate::piv::{MgmAlgorithm, PivToken, TokenError, DEFAULT_MGM_KEY_HEX};
use crate::secret::{MgmKeyHex, Pin, Puk};

/// Factory PIN and PUK of a YubiKey (Yubico PIV documentation).
pub const FACTORY_PIN: &str = "123456";
pub const FACTORY_PUK: &str = "12345678";

/// What random credentials a token gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub pin_length: usize,
    pub puk_length: usize,
    /// `None`: the best the firmware has.
    pub mgmt_key: Option<MgmAlgorithm>,
    pub protect_mgmt_key: bool,
}

impl Policy {
    /// Fresh random credentials for this token.
    pub fn generate(&self, token: &dyn PivToken) -> Credentials {
        let alg = self
            .mgmt_key
            .unwrap_or_else(|| MgmAlgorithm::best_for(token.info().version));
        Credentials {
            pin: Some(Pin::new(escrow::random_digits(self.pin_length).as_str())),
            puk: Some(Puk::new(escrow::random_digits(self.puk_length).as_str())),
            mgmt_key: Some(escrow::random_mgm_key(alg)),
            mgmt_key_algorithm: Some(alg),
            mgmt_key_protected: self.protect_mgmt_key,
        }
    }
}

/// VERIFY the PIN unless fewer than two tries are left (pivault never risks blocking it).
pub fn verify_pin_safely(token: &mut dyn PivToken, pin: &Pin) -> Result<(), Error> {
    Ok(token.verify_pin_checked(pin)?)
}

/// Refuse a PUK attempt when the token says one try or none is left. Firmware without
/// metadata (before 5.3) cannot tell; the attempt's answer then carries the count.
fn puk_attempt_allowed(token: &mut dyn PivToken) -> Result<(), Error> {
    match token.puk_retries()? {
        Some(0) => Err(TokenError::PukBlocked.into()),
        Some(1) => Err(TokenError::PukLastTry.into()),
        _ => Ok(()),
    }
}

/// The credentials of a token in factory state, established without spending a PIN or
/// PUK try where the firmware has metadata default flags (5.3+). Older firmware cannot
/// tell a user's PIN from the factory one without a VERIFY: at most one try is spent, and
/// never the last.
pub fn factory(token: &mut dyn PivToken) -> Result<Credentials, Error> {
    let v = token.info().version;
    let state = token.mgm_key_state()?;
    let defaults = token.credential_defaults()?;
    let not_factory = |what: &str, spent| Error::NotFactory {
        what: what.to_string(),
        pin_try_spent: spent,
    };
    if state.default == Some(false) {
        return Err(not_factory("its management key is not the default", false));
    }
    if defaults.pin == Some(false) {
        return Err(not_factory("its PIN is not the default", false));
    }
    if defaults.puk == Some(false) {
        return Err(not_factory("its PUK is not the default", false));
    }
    // The management key has no retry counter: trying the default costs nothing.
    let alg = state
        .algorithm
        .unwrap_or_else(|| MgmAlgorithm::factory_default(v));
    match token.authenticate(&MgmKeyHex::new(DEFAULT_MGM_KEY_HEX), alg) {
        Ok(()) => {}
        Err(TokenError::MgmKeyRejected) => {
            return Err(not_factory("its management key is not the default", false))
        }
        Err(e) => return Err(e.into()),
    }
    let pin = Pin::new(FACTORY_PIN);
    if defaults.pin.is_none() {
        match verify_pin_safely(token, &pin) {
            Ok(()) => {}
            Err(Error::Token(TokenError::WrongPin { .. })) => {
                return Err(not_factory("its PIN is not the default", true))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Credentials {
        pin: Some(pin),
        puk: Some(Puk::new(FACTORY_PUK)),
        mgmt_key: Some(MgmKeyHex::new(DEFAULT_MGM_KEY_HEX)),
        mgmt_key_algorithm: Some(alg),
        mgmt_key_protected: false,
    })
}

/// Verify the live PIN and authenticate with the live management key; returns the PIN.
pub fn unlock(token: &mut dyn PivToken, live: &Credentials) -> Result<Pin, Error> {
    let pin = live
        .pin
        .clone()
        .ok_or_else(|| Error::Escrow("the escrow record holds no PIN".into()))?;
    let key = live
        .mgmt_key
        .clone()
        .ok_or_else(|| Error::Escrow("the escrow record holds no management key".into()))?;
    let alg = live
        .mgmt_key_algorithm
        .unwrap_or_else(|| MgmAlgorithm::factory_default(token.info().version));
    verify_pin_safely(token, &pin)?;
    token.authenticate(&key, alg)?;
    Ok(pin)
}

/// Escrow `next` as pending, apply it, promote it. A pending left by an earlier run is
/// finished first.
pub fn rotate(
    token: &mut dyn PivToken,
    esc: &Escrow<'_>,
    rec: &mut Versioned,
    next: Credentials,
) -> Result<(), Error> {
    rotate_then(token, esc, rec, next, Promote::Now)
}

/// When the last step of a rotation is promoted in the escrow record.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Promote {
    /// Write the record (no `pending`) as soon as the token holds the new credentials.
    Now,
    /// Promote in memory only: the caller writes the record soon after anyway (the
    /// station's final record), saving a KV write. Until then the record still says
    /// `pending` with the PIN promoted, and a run that finds it so probes only steps
    /// that cost no try when the token already holds them (CHANGE REFERENCE new → new
    /// for the PUK, authentication for the management key).
    WithNextWrite,
}

/// [`rotate`], choosing when the last step is promoted.
pub fn rotate_then(
    token: &mut dyn PivToken,
    esc: &Escrow<'_>,
    rec: &mut Versioned,
    next: Credentials,
    promote: Promote,
) -> Result<(), Error> {
    resolve_pending(token, esc, rec)?;
    rec.record.pending = Some(next);
    esc.write(rec)?;
    checkpoint("escrow");
    apply(token, esc, rec, Known::Live, promote)
}

/// Finish a rotation an earlier run left half done (no-op without `pending`).
pub fn resolve_pending(
    token: &mut dyn PivToken,
    esc: &Escrow<'_>,
    rec: &mut Versioned,
) -> Result<(), Error> {
    if rec.record.pending.is_none() {
        return Ok(());
    }
    log::info!(
        "token {}: finishing a credential change an earlier run left pending",
        rec.record.serial
    );
    apply(token, esc, rec, Known::Probe, Promote::Now)
}

/// What is known about the credentials on the token when applying.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Known {
    /// The token holds `live` (this run just checked it and escrowed `pending`).
    Live,
    /// An earlier run may have applied any part of `pending`: probe, new first.
    Probe,
}

#[derive(Clone, Copy)]
enum Which {
    Pin,
    Puk,
}

/// Which of two values the token holds, told without spending a try: GET METADATA's
/// "default value" flag for the PIN or PUK (Yubico PIV GET METADATA, firmware 5.3+),
/// when exactly one of the two is the factory value (the station's rotation from factory
/// credentials). `Some(true)`: the token holds `new`. `None`: the flag cannot tell (old
/// firmware, or neither value is the factory one, as in `unblock`'s PUK rotation).
fn told_by_default_flag(
    token: &mut dyn PivToken,
    which: Which,
    old: Option<&str>,
    new: &str,
) -> Result<Option<bool>, Error> {
    let factory = match which {
        Which::Pin => FACTORY_PIN,
        Which::Puk => FACTORY_PUK,
    };
    let (old_factory, new_factory) = (old == Some(factory), new == factory);
    if old.is_none() || old_factory == new_factory {
        return Ok(None);
    }
    let d = token.credential_defaults()?;
    let flag = match which {
        Which::Pin => d.pin,
        Which::Puk => d.puk,
    };
    Ok(flag.map(|is_default| is_default == new_factory))
}

fn incomplete() -> Error {
    Error::Escrow("the escrow record's credentials are incomplete".into())
}

fn apply(
    token: &mut dyn PivToken,
    esc: &Escrow<'_>,
    rec: &mut Versioned,
    known: Known,
    promote: Promote,
) -> Result<(), Error> {
    let p = rec.record.pending.clone().ok_or_else(incomplete)?;
    // Steps run in order and each is promoted before the next starts, so a step that is
    // still unpromoted here tells that no later step was applied: only the step right
    // after the last promoted one can be in doubt.
    let mut known = known;
    // PIN. `None` pending means "the user's own, not escrowed" (after unblock).
    if p.pin != rec.record.live.pin {
        if let Some(new) = &p.pin {
            let old = rec.record.live.pin.clone().ok_or_else(incomplete)?;
            let holds_new = known == Known::Probe
                && match told_by_default_flag(token, Which::Pin, Some(old.expose()), new.expose())?
                {
                    Some(is_new) => is_new,
                    None => match verify_pin_safely(token, new) {
                        Ok(()) => true,
                        Err(Error::Token(TokenError::WrongPin { .. })) => false,
                        Err(e) => return Err(e),
                    },
                };
            if !holds_new {
                verify_pin_safely(token, &old)?;
                token.change_pin(&old, new)?;
                checkpoint("pin");
            }
        }
        rec.record.live.pin = p.pin.clone();
        esc.write(rec)?;
        known = Known::Live;
    }
    // PUK: CHANGE REFERENCE new → new succeeds without a change when the token holds it.
    if p.puk.is_some() && p.puk != rec.record.live.puk {
        let new = p.puk.clone().ok_or_else(incomplete)?;
        let old = rec.record.live.puk.clone();
        let holds_new = known == Known::Probe
            && match told_by_default_flag(
                token,
                Which::Puk,
                old.as_ref().map(Puk::expose),
                new.expose(),
            )? {
                Some(is_new) => is_new,
                // No flag to go by: one try of the new PUK (the usual state after a lost
                // promotion), only while a wrong guess still leaves two tries, so that
                // the old one can follow without ever spending the last.
                None => {
                    puk_attempt_allowed(token)?;
                    match token.change_puk(&new, &new) {
                        Ok(()) => true,
                        Err(TokenError::WrongPuk { .. }) => false,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
        if !holds_new {
            let old = old.ok_or_else(incomplete)?;
            puk_attempt_allowed(token)?;
            token.change_puk(&old, &new)?;
            checkpoint("puk");
        }
        // Not written yet: the step after it (the management key) has no retry counter,
        // so a run that finds the PUK unpromoted probes it with CHANGE REFERENCE new → new,
        // which succeeds without a try when the token holds it; the final promotion below
        // records both (one KV write fewer per token).
        rec.record.live.puk = Some(new);
    }
    // Management key: no retry counter, so trying the live one then the new one is free.
    let live = &rec.record.live;
    if p.mgmt_key.is_some()
        && (p.mgmt_key != live.mgmt_key
            || p.mgmt_key_algorithm != live.mgmt_key_algorithm
            || p.mgmt_key_protected != live.mgmt_key_protected)
    {
        let v = token.info().version;
        let live_alg = live
            .mgmt_key_algorithm
            .unwrap_or_else(|| MgmAlgorithm::factory_default(v));
        let new_alg = p.mgmt_key_algorithm.unwrap_or(live_alg);
        let new_key = p.mgmt_key.clone().ok_or_else(incomplete)?;
        let live_key = live.mgmt_key.clone().ok_or_else(incomplete)?;
        // Protected storage needs the PIN verified; verify first, because reading the retry
        // counter re-SELECTs the application, which ends a management-key session.
        if let Some(pin) = live.pin.clone() {
            verify_pin_safely(token, &pin)?;
        }
        if token.authenticate(&live_key, live_alg).is_err() {
            token.authenticate(&new_key, new_alg)?;
        }
        // DESTRUCTIVE: replaces the management key (the new one is escrowed already).
        token.set_mgm_key(&new_key, new_alg, p.mgmt_key_protected)?;
        checkpoint("mgmt-key");
        rec.record.live.mgmt_key = Some(new_key);
        rec.record.live.mgmt_key_algorithm = Some(new_alg);
        rec.record.live.mgmt_key_protected = p.mgmt_key_protected;
    }
    rec.record.pending = None;
    match promote {
        Promote::Now => esc.write(rec),
        Promote::WithNextWrite => Ok(()),
    }
}

/// What `unblock` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Unblocked {
    pub token_serial: u32,
    pub pin_tries_left: Option<u8>,
    pub puk_rotated: bool,
    pub escrow_version: u64,
}

/// Set a new PIN with the escrowed PUK, then rotate the PUK (a helpdesk has seen it).
/// A rotation an earlier run left pending is finished first, so a rerun after a crash
/// uses the PUK the token really holds.
pub fn unblock(
    token: &mut dyn PivToken,
    esc: &Escrow<'_>,
    new_pin: &Pin,
    puk_length: usize,
) -> Result<Unblocked, Error> {
    let serial = token.info().serial;
    let mut rec = esc
        .read(serial)?
        .ok_or_else(|| Error::Escrow(format!("no escrow record for token {serial} in Vault KV")))?;
    resolve_pending(token, esc, &mut rec)?;
    let puk = rec.record.live.puk.clone().ok_or_else(|| {
        Error::Escrow(format!("the escrow record of token {serial} holds no PUK"))
    })?;
    puk_attempt_allowed(token)?;
    token.unblock_pin(&puk, new_pin)?;
    checkpoint("unblock");
    let changed = |e: Error| Error::AfterChange {
        done: "the PIN was set".into(),
        source: Box::new(e),
    };
    let mut next = rec.record.live.clone();
    next.pin = None; // the user's own PIN is not escrowed
    next.puk = Some(Puk::new(escrow::random_digits(puk_length).as_str()));
    rotate(token, esc, &mut rec, next).map_err(changed)?;
    // The count before the proving VERIFY: once the PIN is verified, an empty VERIFY
    // answers 9000 without a count (SP 800-73-4 part 2, 3.2.1).
    let pin_tries_left = token.pin_retries().map_err(|e| changed(e.into()))?;
    token.verify_pin(new_pin).map_err(|e| changed(e.into()))?;
    Ok(Unblocked {
        token_serial: serial,
        pin_tries_left,
        puk_rotated: true,
        escrow_version: rec.version,
    })
}

/// What [`secure_for_user`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Secured {
    pub token_serial: u32,
    pub mgmt_key_algorithm: MgmAlgorithm,
    pub escrow_version: u64,
}

/// The helpdesk's `enroll --secure` on a token in factory state: a random PUK and a random
/// management key stored PIN-protected on the token (the station's layout, Yubico
/// "PIN-protected management key"), both through [`rotate`] (escrowed as pending before
/// either is applied), then the user's own PIN, which is not escrowed (as after
/// [`unblock`]). A token that is not in factory state is refused before anything is
/// changed: a token in use is never re-keyed here. Leaves the PIN verified.
pub fn secure_for_user(
    token: &mut dyn PivToken,
    esc: &Escrow<'_>,
    puk_length: usize,
    user_pin: &Pin,
) -> Result<Secured, Error> {
    let serial = token.info().serial;
    let mut rec = esc.read(serial)?.unwrap_or_else(|| Versioned::new(serial));
    resolve_pending(token, esc, &mut rec)?;
    // Refuses (NotFactory) a token whose PIN, PUK or management key was changed; on 5.3+
    // without spending a try.
    rec.record.live = factory(token)?;
    let alg = MgmAlgorithm::best_for(token.info().version);
    let next = Credentials {
        pin: rec.record.live.pin.clone(),
        puk: Some(Puk::new(escrow::random_digits(puk_length).as_str())),
        mgmt_key: Some(escrow::random_mgm_key(alg)),
        mgmt_key_algorithm: Some(alg),
        mgmt_key_protected: true,
    };
    rotate(token, esc, &mut rec, next)?;
    let changed = |e: Error| Error::AfterChange {
        done: "the PUK and the management key were changed (escrowed)".into(),
        source: Box::new(e),
    };
    // The record stops claiming the factory PIN before the token stops holding it: a
    // crash in between leaves "the user's own PIN" recorded and the factory PIN on the
    // token, which `unblock` repairs with the escrowed PUK.
    rec.record.live.pin = None;
    esc.write(&mut rec).map_err(changed)?;
    verify_pin_safely(token, &Pin::new(FACTORY_PIN)).map_err(changed)?;
    token
        .change_pin(&Pin::new(FACTORY_PIN), user_pin)
        .map_err(|e| changed(e.into()))?;
    checkpoint("user-pin");
    token.verify_pin(user_pin).map_err(|e| changed(e.into()))?;
    Ok(Secured {
        token_serial: serial,
        mgmt_key_algorithm: alg,
        escrow_version: rec.version,
    })
}
