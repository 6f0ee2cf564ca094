//! The enrollment workflow: check → unlock → generate → attest → CSR (signed on the card)
//! → Vault sign → verify → import → report. Batch provisioning and renewal reuse the
//! pieces here; there is no second copy of these steps.
//! (About 600 lines on purpose: one slot's steps stay in one file so that the order of
//! damage reads top to bottom; the certificate checks and import are in `enroll/import.rs`,
//! staging for MOVE KEY in `enroll/staged.rs`, unlocking in `enroll/unlock.rs`, the unit
//! tests in `enroll_tests.rs`.)

use crate::csr::{self, Subject};
use crate::error::Error;
use crate::hooks::checkpoint;
use crate::piv::{
    Algorithm, MgmAlgorithm, PinPolicy, PivToken, Role, Slot, TokenError, TouchPolicy,
};
use crate::secret::Pin;
use crate::verify::Accepted;
use crate::workflow::attest::{self, AttestSetup, F9Cache, KeyAttestation};
pub use crate::workflow::Outcome;
use crate::workflow::{run_token, Preflight, SlotAction, SlotPolicy};
use spki::SubjectPublicKeyInfoOwned;
use std::collections::BTreeSet;

/// What to put in one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    pub slot: Slot,
    pub algorithm: Algorithm,
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
    pub role: Role,
    pub subject: Subject,
    /// Requested lifetime; the role's default when `None`.
    pub ttl: Option<Ttl>,
}

impl SlotPlan {
    /// Whether the slot's key wants the PIN right before each use: PIN policy "always",
    /// or the default policy of slot 9c (Yubico's defaults: 9c always, 9e never, the
    /// other slots once per session).
    pub fn pin_always(&self) -> bool {
        match self.pin_policy {
            PinPolicy::Always => true,
            PinPolicy::Default => self.slot == Slot::SIGNATURE,
            PinPolicy::Never | PinPolicy::Once => false,
        }
    }
}

/// A whole run on one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub slots: Vec<SlotPlan>,
    /// Replace keys/certificates already in the slots.
    pub force: bool,
}

impl Plan {
    /// Refuse a plan that cannot work, before anything is touched.
    pub fn validate(&self) -> Result<(), Error> {
        if self.slots.is_empty() {
            return Err(Error::Usage("no slot to enroll".into()));
        }
        let mut seen = BTreeSet::new();
        for sp in &self.slots {
            if !seen.insert(sp.slot) {
                return Err(Error::Usage(format!("slot {} is listed twice", sp.slot)));
            }
            sp.subject.validate()?;
        }
        Ok(())
    }

    /// Refuse what this token's firmware cannot do.
    pub fn check_token(&self, token: &dyn PivToken) -> Result<(), Error> {
        let v = token.info().version;
        for sp in &self.slots {
            if v < sp.algorithm.min_firmware() {
                return Err(Error::Usage(format!(
                    "slot {}: {} needs firmware {} or newer; this token has {v}",
                    sp.slot,
                    sp.algorithm,
                    sp.algorithm.min_firmware()
                )));
            }
        }
        Ok(())
    }
}

/// A certificate lifetime in Vault's duration syntax (`90d`, `8760h`, `30m`, `3600`),
/// checked where it is read (flag, profile) and carried typed from there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ttl(String);

impl Ttl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Ttl {
    type Err = String;
    fn from_str(s: &str) -> Result<Ttl, String> {
        if valid_duration(s) {
            Ok(Ttl(s.trim().to_string()))
        } else {
            Err(format!(
                "ttl '{s}' is not a duration such as 90d, 8760h or 30m"
            ))
        }
    }
}

impl<'de> serde::Deserialize<'de> for Ttl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

fn valid_duration(s: &str) -> bool {
    let s = s.trim();
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && matches!(unit, "" | "s" | "m" | "h" | "d")
}

/// A certificate as Vault issued it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Issued {
    pub certificate_pem: String,
    /// Issuing CA first, root last.
    pub chain_pem: Vec<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// The issuing side: Vault's PKI in production.
pub trait Issuer {
    /// Cheap check, with no side effect, that a request to `role` would be heard
    /// (reachable, logged in, policy allows the path, role exists).
    fn preflight(&self, role: Role) -> Result<(), Error>;
    fn issue(
        &self,
        role: Role,
        csr_pem: &str,
        subject: &Subject,
        ttl: Option<&str>,
    ) -> Result<Issued, Error>;
}

/// Steps reported while a slot is worked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Generating(Algorithm),
    SigningCsr,
    Requesting(Role),
    Importing,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Generating(a) if a.is_rsa() => {
                write!(
                    f,
                    "generating a {a} key on the token (this takes a few seconds)"
                )
            }
            Step::Generating(a) => write!(f, "generating a {a} key on the token"),
            Step::SigningCsr => f.write_str("signing the certificate request on the token"),
            Step::Requesting(r) => write!(f, "asking Vault ({r}) for the certificate"),
            Step::Importing => f.write_str("verifying and importing the certificate"),
        }
    }
}

/// Log a step (at info, so `-v` shows progress in logs and journald) and tell the observer.
fn step(token: &dyn PivToken, obs: &mut dyn Observer, slot: Slot, s: Step) {
    log::info!("token {} slot {slot}: {s}", token.info().serial);
    obs.step(slot, s);
}

/// Hooks for progress display and for crash-safe callers (the station journals the key
/// and the issued certificate so a re-run re-imports instead of issuing again).
pub trait Observer {
    fn step(&mut self, _slot: Slot, _step: Step) {}
    fn generated(&mut self, _slot: Slot, _key: &SubjectPublicKeyInfoOwned) -> Result<(), Error> {
        Ok(())
    }
    /// The CSR is about to be sent: from here until `issued`, a lost answer leaves the
    /// issuance in doubt (the station journals that, and never repeats it by itself).
    fn requesting(&mut self, _slot: Slot) -> Result<(), Error> {
        Ok(())
    }
    fn issued(&mut self, _slot: Slot, _cert: &Issued) -> Result<(), Error> {
        Ok(())
    }
    /// The generated key was attested and the attestation passed the policy.
    fn attested(&mut self, _slot: Slot, _att: &KeyAttestation) -> Result<(), Error> {
        Ok(())
    }
}

/// An observer that does nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// Settings shared by every slot of a run.
pub struct Context<'a> {
    pub issuer: &'a (dyn Issuer + Sync),
    /// Trust anchors that issued certificates must chain to (DER); Vault's own root when
    /// empty.
    pub anchors_der: Vec<Vec<u8>>,
    /// Roles already checked with Vault in this run.
    pub preflight: &'a Preflight,
    /// Attestation bundle and policy; the shipped bundle and no policy when `None`.
    pub attestation: Option<&'a AttestSetup>,
    /// Refuse certificates whose key usage does not fit the slot (else: a warning).
    pub strict_usage: bool,
}

impl Context<'_> {
    pub fn attest_setup(&self) -> &AttestSetup {
        match self.attestation {
            Some(a) => a,
            None => AttestSetup::shipped(),
        }
    }
}

/// How a slot gets its key.
#[derive(Debug, Clone)]
pub enum KeyChoice {
    /// Generate a new key on the token (replaces what is there).
    Generate,
    /// Certify the key already in the slot (renewal with --reuse-key).
    Existing(SubjectPublicKeyInfoOwned),
    /// Generate a new key in a slot known to hold nothing (nothing to lose);
    /// `deletable`: the firmware can delete it again (DELETE KEY, 5.7+), so a refusal
    /// leaves the slot empty.
    Fresh { deletable: bool },
    /// Re-key an occupied slot without risking its key (firmware 5.7+, MOVE KEY): generate
    /// in this free retired slot, and move the key over only once its certificate is
    /// verified (issue 10 defect 6).
    Staged(Slot),
}

/// A slot's card work done up to its certificate request: the key (and where it is:
/// the slot, or the retired slot it was staged in) and the CSR signed on the card.
#[derive(Debug, Clone)]
pub struct Prepared {
    place: KeyPlace,
    key: SubjectPublicKeyInfoOwned,
    csr_pem: String,
}

impl KeyChoice {
    /// Whether making this key ready can be undone (a staged key is deleted again, an
    /// existing key is not touched), so that it may go ahead before Vault's pre-flight has
    /// answered: a refused role or secret_id then still changes nothing on the token.
    pub fn undoable(&self) -> bool {
        matches!(
            self,
            KeyChoice::Staged(_) | KeyChoice::Existing(_) | KeyChoice::Fresh { deletable: true }
        )
    }

    /// Where this key for `slot` is (or is made), and whether the run can take it back.
    fn place(&self, slot: Slot) -> KeyPlace {
        let (at, undo) = match self {
            KeyChoice::Existing(_) | KeyChoice::Generate => (slot, false),
            KeyChoice::Fresh { deletable } => (slot, *deletable),
            KeyChoice::Staged(via) => (*via, true),
        };
        KeyPlace { slot, at, undo }
    }

    /// Whether making this key ready destroys a key (generation in place over what the
    /// slot held). Anything else may go ahead while the previous slot's sign is out.
    pub fn destroys(&self) -> bool {
        matches!(self, KeyChoice::Generate)
    }
}

/// One slot's card work up to the certificate request: generate (or take) the key,
/// attest it, sign the CSR on the card. The token must be unlocked (PIN verified,
/// management key authenticated when generating). Nothing has gone to Vault yet; a
/// failure deletes a staged key.
pub fn prepare_slot(
    token: &mut dyn PivToken,
    ctx: &Context<'_>,
    sp: &SlotPlan,
    pin: &Pin,
    key: KeyChoice,
    f9: &mut F9Cache,
    obs: &mut dyn Observer,
) -> Result<Prepared, Error> {
    // A key kept from before may carry another PIN policy than the plan says.
    let pin_before_use = sp.pin_always() || matches!(key, KeyChoice::Existing(_));
    let setup = ctx.attest_setup();
    if !key.undoable() {
        // Vault's pre-flight must have answered before a slot's key is replaced.
        ctx.preflight.settle()?;
    }
    // Where the new key is made: the slot itself, or a free retired slot to move it from.
    let place = key.place(sp.slot);
    let (key, attested) = match key {
        KeyChoice::Existing(k) => (k, None),
        KeyChoice::Generate | KeyChoice::Fresh { .. } | KeyChoice::Staged(_) => {
            let at = place.at;
            step(token, obs, sp.slot, Step::Generating(sp.algorithm));
            // DESTRUCTIVE: replaces the private key in `at` (a free slot when staged).
            let (pin_policy, touch_policy) = if at == sp.slot {
                (sp.pin_policy, sp.touch_policy)
            } else {
                // MOVE KEY keeps the key's policies: a "default" must be the destination
                // slot's default (Yubico: 9c always, 9e never, others once; touch never),
                // not the retired slot's.
                (
                    staged::default_pin_policy(sp.slot, sp.pin_policy),
                    match sp.touch_policy {
                        TouchPolicy::Default => TouchPolicy::Never,
                        t => t,
                    },
                )
            };
            let k = token.generate_key(at, sp.algorithm, pin_policy, touch_policy)?;
            if !place.undo {
                // A key the run can still take back is announced once it is certified.
                obs.generated(sp.slot, &k)?;
            }
            checkpoint("generate");
            // Before anything goes to Vault: the key must be the one attested, and pass
            // the policy (issue 12, "Policy before signing").
            let att =
                staged::or_discard(token, place, |t| attest::attest_key(t, setup, f9, at, &k))?;
            if let Some(a) = &att {
                obs.attested(sp.slot, a)?;
            }
            (k, att)
        }
    };
    let at = place.at;
    let csr_pem = staged::or_discard(token, place, |token| {
        step(token, obs, sp.slot, Step::SigningCsr);
        // Slots with PIN policy "always" (9c by default) want the PIN right before each use;
        // the others keep the session's verification (SP 800-73-4 part 1, 4.2; Yubico's
        // PIV PIN policies).
        if pin_before_use {
            token.verify_pin(pin)?;
        }
        let csr_att = attested.as_ref().map(|a| a.for_csr(setup.csr_legacy_oid));
        let csr = match csr::build_and_sign(token, at, &key, &sp.subject, csr_att.as_ref()) {
            // Another PC/SC client that SELECTs another application on the card between
            // two of our commands (Debian's ykman listing every reader, a desktop
            // smart-card daemon) ends the PIV application's PIN session (SP 800-73-4 part
            // 2, 3.1.1). The PIN is known to be right, so verifying it again spends no
            // try; signed once more, still before anything goes to Vault.
            Err(csr::CsrError::Token(TokenError::PinRequired)) if !pin_before_use => {
                log::info!(
                    "slot {}: the PIN session ended; verifying the PIN again",
                    sp.slot
                );
                token.verify_pin(pin)?;
                csr::build_and_sign(token, at, &key, &sp.subject, csr_att.as_ref())?
            }
            r => r?,
        };
        Ok(csr.pem)
    })?;
    Ok(Prepared {
        place,
        key,
        csr_pem,
    })
}

/// Right before the request goes to Vault: the pre-flight has answered, and the observer
/// (the journal) knows a request is out. A failure here deletes a staged key.
pub fn before_request(
    token: &mut dyn PivToken,
    ctx: &Context<'_>,
    sp: &SlotPlan,
    p: &Prepared,
    obs: &mut dyn Observer,
) -> Result<(), Error> {
    staged::or_discard(token, p.place, |token| {
        ctx.preflight.settle()?;
        step(token, obs, sp.slot, Step::Requesting(sp.role));
        obs.requesting(sp.slot)
    })
}

/// Vault's half of a slot: the sign request. Touches no token and no observer, so it can
/// run on another thread while the card works on the next slot.
pub fn request(issuer: &(dyn Issuer + Sync), sp: &SlotPlan, p: &Prepared) -> Result<Issued, Error> {
    let issued = issuer.issue(
        sp.role,
        &p.csr_pem,
        &sp.subject,
        sp.ttl.as_ref().map(Ttl::as_str),
    )?;
    // Vault has issued; a crash here is an answer lost before it was recorded.
    checkpoint("sign-sent");
    Ok(issued)
}

/// The rest of a slot once Vault answered: record, verify, move a staged key in, import.
/// A failure before the move deletes a staged key (the slot's old key stays).
pub fn finish_slot(
    token: &mut dyn PivToken,
    ctx: &Context<'_>,
    sp: &SlotPlan,
    p: Prepared,
    answer: Result<Issued, Error>,
    obs: &mut dyn Observer,
) -> Result<(Accepted, Vec<String>), Error> {
    let (cert_der, accepted, warnings) = staged::or_discard(token, p.place, |token| {
        let issued = answer?;
        obs.issued(sp.slot, &issued)?;
        checkpoint("sign");
        step(token, obs, sp.slot, Step::Importing);
        check_issued(ctx, sp, &p.key, &issued)
    })?;
    if p.place.at != sp.slot {
        // Verified: only now the slot's old key is replaced (MOVE KEY keeps the policies).
        token.move_key(p.place.at, Some(sp.slot))?;
    }
    if p.place.undo {
        obs.generated(sp.slot, &p.key)?;
    }
    write_checked(token, sp.slot, &cert_der)?;
    Ok((accepted, warnings))
}

/// Delete a prepared key whose request will not be sent (the run stopped first) when it
/// can still be taken back; a key that replaced the slot's key in place stays.
pub fn abandon(token: &mut dyn PivToken, p: Prepared, why: Error) -> Error {
    staged::discard(token, p.place, why)
}

/// `enroll`'s slot policy: a new key in every slot (occupied slots were refused before,
/// unless --force).
struct Generate<'o> {
    obs: &'o mut dyn Observer,
    /// Re-keying occupied slots (--force): stage new keys where firmware allows.
    force: bool,
    /// The plan's slots (never used to stage a key in).
    slots: Vec<Slot>,
}

impl Observer for Generate<'_> {
    fn step(&mut self, slot: Slot, s: Step) {
        self.obs.step(slot, s)
    }
    fn generated(&mut self, slot: Slot, key: &SubjectPublicKeyInfoOwned) -> Result<(), Error> {
        self.obs.generated(slot, key)
    }
    fn requesting(&mut self, slot: Slot) -> Result<(), Error> {
        self.obs.requesting(slot)
    }
    fn issued(&mut self, slot: Slot, cert: &Issued) -> Result<(), Error> {
        self.obs.issued(slot, cert)
    }
    fn attested(&mut self, slot: Slot, att: &KeyAttestation) -> Result<(), Error> {
        self.obs.attested(slot, att)
    }
}

impl SlotPolicy for Generate<'_> {
    fn decide(
        &mut self,
        token: &mut dyn PivToken,
        _: &Context<'_>,
        sp: &SlotPlan,
    ) -> Result<SlotAction, Error> {
        if !self.force {
            // Occupied slots were refused before the first key (`enroll`).
            return Ok(SlotAction::Certify(KeyChoice::Fresh {
                deletable: token.info().version >= staged::MOVE_KEY_FIRMWARE,
            }));
        }
        let choice = staged::placement(token, sp.slot, &self.slots)?;
        if let KeyChoice::Staged(via) = choice {
            log::info!(
                "slot {}: the new key is made in {via} and moved in once certified",
                sp.slot
            );
        }
        Ok(SlotAction::Certify(choice))
    }
    fn decide_uses_key(&self) -> bool {
        false
    }
    fn certified_word(&self) -> crate::report::SlotResult {
        crate::report::SlotResult::Enrolled
    }
    fn overlap(&self) -> bool {
        true
    }
}

/// Enroll every slot of the plan on an already opened token.
///
/// Order matters for "bad input changes nothing": the plan, the token's capabilities,
/// Vault (login, policy, role) and the PIN/management key are all checked, and occupied
/// slots refused, before the first key is generated.
pub fn enroll(
    token: &mut dyn PivToken,
    ctx: &Context<'_>,
    plan: &Plan,
    pin: &Pin,
    mgm_alg: Option<MgmAlgorithm>,
    ask_mgm: &mut dyn FnMut() -> Result<MgmKeySource, Error>,
    obs: &mut dyn Observer,
) -> Result<Outcome, Error> {
    plan.validate()?;
    plan.check_token(token)?;
    attest::precheck(
        &ctx.attest_setup().policy,
        token.info().version,
        &plan.slots,
    )?;
    ctx.preflight
        .check(ctx, plan.slots.iter().map(|sp| sp.role))?;
    unlock(token, pin, mgm_alg, ask_mgm)?;
    if !plan.force {
        for sp in &plan.slots {
            if let Some(what) = occupant(token, sp.slot)? {
                return Err(Error::SlotOccupied {
                    slot: sp.slot,
                    what,
                });
            }
        }
    }

    let Outcome {
        mut report,
        mut fatal,
    } = run_token(
        token,
        ctx,
        "enroll",
        &plan.slots,
        pin,
        &mut Generate {
            obs,
            force: plan.force,
            slots: plan.slots.iter().map(|s| s.slot).collect(),
        },
    );
    // Vault's pre-flight answered while the first key was being made (and that key was
    // deleted again, or never made): as before any work, an error, not a report.
    if ctx.preflight.refused() && report.slots.iter().all(|s| s.error.is_some()) {
        if let Some(e) = fatal {
            if !matches!(e, Error::AfterChange { .. }) {
                return Err(e);
            }
            fatal = Some(e);
        }
    }
    if fatal.is_none() && report.slots.iter().any(|s| s.error.is_none()) {
        match token.ensure_chuid_ccc() {
            Ok(w) => report.wrote_chuid_ccc = w,
            Err(e) => {
                fatal = Some(Error::AfterChange {
                    done: "certificates were imported".into(),
                    source: Box::new(e.into()),
                })
            }
        }
    }
    report.ok &= fatal.is_none();
    Ok(Outcome { report, fatal })
}

mod import;
pub mod staged;
mod unlock;
pub use import::{check_issued, import_issued, write_checked};
use staged::KeyPlace;
pub use unlock::{occupant, unlock, verify_pin_safely, MgmKeySource};

#[cfg(test)]
#[path = "enroll_tests.rs"]
mod tests;
