//! The one per-token loop, shared by `enroll`, `renew` and the station. What differs
//! between them is a [`SlotPolicy`] (what to do with each slot: keep, re-import, certify an
//! existing key, generate), not a copy of the loop. Per-slot errors, Vault's warnings and
//! the pre-flight have one implementation each, here.

use crate::enroll::{self, Context, Issued, KeyChoice, Observer, SlotPlan, Step};
use crate::error::Error;
use crate::hooks::checkpoint;
use crate::piv::{PivToken, Role, Slot};
use crate::report::{EnrollReport, SlotReport, SlotResult};
use crate::secret::Pin;
use crate::verify::Accepted;
use spki::SubjectPublicKeyInfoOwned;
use std::collections::BTreeSet;
use std::sync::Mutex;

pub mod attest;
use attest::{AttestationFacts, F9Cache, KeyAttestation};

/// Roles whose sign path Vault already accepted: one pre-flight request per role per run
/// (a station run covers many tokens).
#[derive(Debug, Default)]
pub struct Preflight {
    done: Mutex<BTreeSet<&'static str>>,
}

impl Preflight {
    /// Ask Vault (login fresh, policy allows the path, role exists) for every role of the
    /// plan not asked before in this run. Nothing on the token has been touched yet.
    pub fn check(
        &self,
        ctx: &Context<'_>,
        roles: impl IntoIterator<Item = Role>,
    ) -> Result<(), Error> {
        for role in roles {
            let asked = self
                .done
                .lock()
                .map(|s| s.contains(role.name()))
                .unwrap_or(false);
            if !asked {
                ctx.issuer.preflight(role)?;
                if let Ok(mut s) = self.done.lock() {
                    s.insert(role.name());
                }
            }
        }
        Ok(())
    }
}

/// What to do with one slot, decided with the token unlocked (PIN verified).
#[derive(Debug, Clone)]
pub enum SlotAction {
    /// The slot already holds a certificate that fits: leave it.
    Keep(Accepted),
    /// A certificate issued earlier for the key in the slot: verify and import it, never
    /// ask Vault again.
    Reimport {
        key: SubjectPublicKeyInfoOwned,
        issued: Issued,
    },
    /// Have a key certified: a new one, or the one in the slot.
    Certify(KeyChoice),
}

/// The part of the per-token work that differs between commands.
pub trait SlotPolicy: Observer {
    /// What to do with this slot.
    fn decide(
        &mut self,
        token: &mut dyn PivToken,
        ctx: &Context<'_>,
        sp: &SlotPlan,
    ) -> Result<SlotAction, Error>;
    /// Whether `decide` may use a slot's private key (a test signature): the PIN is then
    /// verified right before it, for slots whose PIN policy is "always".
    fn decide_uses_key(&self) -> bool {
        true
    }
    /// The report's word for a slot certified in this run (enrolled, renewed).
    fn certified_word(&self) -> SlotResult;
    /// A slot is done (kept, re-imported or certified): clean up journals, record it.
    fn finished(&mut self, _sp: &SlotPlan, _a: &Accepted) -> Result<(), Error> {
        Ok(())
    }
}

/// Errors that concern one slot only (the next slot is still worth doing); any other
/// error stops the token's run.
pub fn slot_local(e: &Error) -> bool {
    match e {
        Error::Verify { .. } | Error::Csr(_) | Error::InDoubt { .. } => true,
        Error::Vault(v) => v.is_request_refused(),
        _ => false,
    }
}

/// Keeps Vault's warnings for the report and forwards the steps to the policy.
struct Recorder<'p> {
    inner: &'p mut dyn SlotPolicy,
    warnings: Vec<String>,
    /// A key was generated (the slot's old key is gone).
    generated: bool,
    attestation: Option<AttestationFacts>,
}

impl Observer for Recorder<'_> {
    fn step(&mut self, slot: Slot, step: Step) {
        self.inner.step(slot, step)
    }
    fn generated(&mut self, slot: Slot, key: &SubjectPublicKeyInfoOwned) -> Result<(), Error> {
        self.generated = true;
        self.inner.generated(slot, key)
    }
    fn requesting(&mut self, slot: Slot) -> Result<(), Error> {
        self.inner.requesting(slot)
    }
    fn attested(&mut self, slot: Slot, att: &KeyAttestation) -> Result<(), Error> {
        self.attestation = Some(att.facts());
        self.inner.attested(slot, att)
    }
    fn issued(&mut self, slot: Slot, cert: &Issued) -> Result<(), Error> {
        // "the common_name field was provided but the role is set with use_csr_common_name":
        // pivault sends the names in JSON too, for roles that do not read them from the
        // CSR; with the contract's roles that note only confirms the CSR's names were used.
        self.warnings = cert
            .warnings
            .iter()
            .filter(|w| !w.contains("use_csr_common_name") && !w.contains("use_csr_sans"))
            .cloned()
            .collect();
        self.inner.issued(slot, cert)
    }
}

/// One slot; `changed` is set as soon as the token was changed (key generated, or a
/// certificate written).
fn one_slot(
    token: &mut dyn PivToken,
    ctx: &Context<'_>,
    sp: &SlotPlan,
    pin: &Pin,
    policy: &mut dyn SlotPolicy,
    changed: &mut bool,
    f9: &mut F9Cache,
) -> Result<Done, Error> {
    // Deciding may sign a test challenge with the slot's key (PIN policy "always" slots
    // want the PIN right before each use). The session's PIN verification (unlock) lasts
    // for every other use: one VERIFY per session is the APDU floor (BENCHMARKS.md).
    if policy.decide_uses_key() {
        token.verify_pin(pin)?;
    }
    match policy.decide(token, ctx, sp)? {
        SlotAction::Keep(a) => Ok((SlotResult::Kept, a, Vec::new(), None)),
        SlotAction::Reimport { key, issued } => {
            *changed = true; // the write may have happened even if it then fails
            let (a, warnings) = enroll::import_issued(token, ctx, sp, &key, &issued)?;
            checkpoint("import");
            Ok((SlotResult::Reimported, a, warnings, None))
        }
        SlotAction::Certify(choice) => {
            let word = policy.certified_word();
            let mut rec = Recorder {
                inner: policy,
                warnings: Vec::new(),
                generated: false,
                attestation: None,
            };
            let r = enroll::enroll_slot(token, ctx, sp, pin, choice, f9, &mut rec);
            *changed |= rec.generated;
            let (a, mut warnings) = r?;
            *changed = true;
            checkpoint("import");
            rec.warnings.append(&mut warnings);
            Ok((word, a, rec.warnings, rec.attestation))
        }
    }
}

/// A slot done: the report's word, the accepted certificate, warnings, attestation.
type Done = (SlotResult, Accepted, Vec<String>, Option<AttestationFacts>);

/// The result of a token's run: the report, and the error that stopped it early, if any.
pub struct Outcome {
    pub report: EnrollReport,
    pub fatal: Option<Error>,
}

/// Work every slot of `slots` on an unlocked token, in order. A slot-local failure is
/// reported and the next slot is done; any other failure stops the run.
pub fn run_token(
    token: &mut dyn PivToken,
    ctx: &Context<'_>,
    command: &'static str,
    slots: &[SlotPlan],
    pin: &Pin,
    policy: &mut dyn SlotPolicy,
) -> Outcome {
    let info = token.info().clone();
    let mut report = EnrollReport {
        command,
        token_serial: info.serial,
        firmware: info.version,
        reader: info.reader,
        slots: Vec::new(),
        wrote_chuid_ccc: false,
        ok: false,
    };
    let mut fatal = None;
    let mut changed = false;
    let mut f9 = F9Cache::default();
    for sp in slots {
        let r = one_slot(token, ctx, sp, pin, policy, &mut changed, &mut f9)
            .and_then(|d| policy.finished(sp, &d.1).map(|()| d));
        match r {
            Ok((word, a, warnings, att)) => {
                let mut r = slot_report(sp, word, &a, &warnings);
                r.attestation = att;
                report.slots.push(r)
            }
            Err(e) => {
                report.slots.push(failed_report(sp, &e));
                if !slot_local(&e) {
                    // Exit codes 2 and 4 say "nothing was changed": not after a key was
                    // generated or a certificate written.
                    fatal = Some(if changed {
                        Error::AfterChange {
                            done: "keys or certificates were already changed on the token".into(),
                            source: Box::new(e),
                        }
                    } else {
                        e
                    });
                    break;
                }
            }
        }
    }
    report.ok = fatal.is_none()
        && report.slots.len() == slots.len()
        && report.slots.iter().all(|s| s.error.is_none());
    Outcome { report, fatal }
}

pub fn slot_report(
    sp: &SlotPlan,
    result: SlotResult,
    a: &Accepted,
    warnings: &[String],
) -> SlotReport {
    SlotReport {
        slot: sp.slot,
        algorithm: sp.algorithm,
        role: sp.role,
        result,
        certificate_serial: Some(a.serial_hex.clone()),
        subject: Some(a.subject.clone()),
        issuer: Some(a.issuer.clone()),
        not_after: Some(crate::report::rfc3339(a.not_after)),
        sha256_fingerprint: Some(a.sha256.clone()),
        vault_warnings: warnings.to_vec(),
        attestation: None,
        error: None,
    }
}

pub fn failed_report(sp: &SlotPlan, e: &Error) -> SlotReport {
    SlotReport {
        slot: sp.slot,
        algorithm: sp.algorithm,
        role: sp.role,
        result: SlotResult::Failed,
        certificate_serial: None,
        subject: None,
        issuer: None,
        not_after: None,
        sha256_fingerprint: None,
        vault_warnings: Vec::new(),
        attestation: None,
        error: Some(e.to_string()),
    }
}

/// Whether the slot's private key is the one behind `key`: a test signature (needs the
/// PIN verified) checked locally. A card error is an error, never "another key": reading
/// it as "no key" would regenerate over a good one.
pub fn slot_holds_key(
    token: &mut dyn PivToken,
    slot: Slot,
    key: &SubjectPublicKeyInfoOwned,
) -> Result<bool, Error> {
    let Some(alg) = crate::crypto::algorithm_of(key) else {
        return Ok(false);
    };
    // With metadata the public key is read without a signature.
    match token.slot_key(slot) {
        Ok(None) => return Ok(false),
        Ok(Some(k)) if k.public_key.is_some() => return Ok(k.public_key.as_ref() == Some(key)),
        Ok(Some(_)) | Err(crate::piv::TokenError::NotSupported { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let mut challenge = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut challenge);
    match token.sign_raw(slot, alg, &crate::crypto::card_input(alg, &challenge)) {
        Ok(sig) => Ok(crate::crypto::verify(key, &challenge, &sig).is_ok()),
        // An empty slot, or a key of another algorithm, refuses the operation.
        Err(crate::piv::TokenError::Card { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
