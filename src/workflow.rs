//! The one per-token loop, shared by `enroll`, `renew` and the station. What differs
//! between them is a [`SlotPolicy`] (what to do with each slot: keep, re-import, certify an
//! existing key, generate), not a copy of the loop. Per-slot errors and Vault's warnings
//! have one implementation each, here; the pre-flight in `workflow/preflight.rs`.

use crate::enroll::{self, Context, Issued, KeyChoice, Observer, Prepared, SlotPlan, Step};
use crate::error::Error;
use crate::hooks::checkpoint;
use crate::piv::{PivToken, Slot};
use crate::report::{EnrollReport, SlotReport, SlotResult};
use crate::secret::Pin;
use crate::verify::Accepted;
use spki::SubjectPublicKeyInfoOwned;

pub mod attest;
mod preflight;
use attest::{AttestationFacts, F9Cache, KeyAttestation};
pub use preflight::Preflight;

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
    /// Whether the card may work on the next slot while Vault signs this one. Off for
    /// journaled runs (station, renew): their journal records a sign's answer when the
    /// slot lands, so a crash during the next slot's card work would leave an answer that
    /// had arrived unrecorded, the slot "in doubt" (the fault matrix showed it). `enroll`
    /// keeps no journal and overlaps.
    fn overlap(&self) -> bool {
        false
    }
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

/// What the workflow learns about one slot from the steps it goes through.
#[derive(Default)]
struct Notes {
    /// Vault's warnings for the report.
    warnings: Vec<String>,
    /// A key was generated (the slot's old key is gone).
    generated: bool,
    attestation: Option<AttestationFacts>,
}

/// Takes notes and forwards the steps to the policy.
struct Recorder<'p> {
    inner: &'p mut dyn SlotPolicy,
    notes: &'p mut Notes,
}

impl Observer for Recorder<'_> {
    fn step(&mut self, slot: Slot, step: Step) {
        self.inner.step(slot, step)
    }
    fn generated(&mut self, slot: Slot, key: &SubjectPublicKeyInfoOwned) -> Result<(), Error> {
        self.notes.generated = true;
        self.inner.generated(slot, key)
    }
    fn requesting(&mut self, slot: Slot) -> Result<(), Error> {
        self.inner.requesting(slot)
    }
    fn attested(&mut self, slot: Slot, att: &KeyAttestation) -> Result<(), Error> {
        self.notes.attestation = Some(att.facts());
        self.inner.attested(slot, att)
    }
    fn issued(&mut self, slot: Slot, cert: &Issued) -> Result<(), Error> {
        // "the common_name field was provided but the role is set with use_csr_common_name":
        // pivault sends the names in JSON too, for roles that do not read them from the
        // CSR; with the contract's roles that note only confirms the CSR's names were used.
        self.notes.warnings = cert
            .warnings
            .iter()
            .filter(|w| !w.contains("use_csr_common_name") && !w.contains("use_csr_sans"))
            .cloned()
            .collect();
        self.inner.issued(slot, cert)
    }
}

/// The result of a token's run: the report, and the error that stopped it early, if any.
pub struct Outcome {
    pub report: EnrollReport,
    pub fatal: Option<Error>,
}

/// A slot whose sign request is out: Vault answers on another thread while the card
/// goes on with the next slot.
struct InFlight<'s, 'p> {
    index: usize,
    sp: &'p SlotPlan,
    notes: Notes,
    answer: std::thread::ScopedJoinHandle<'s, (Prepared, Result<Issued, Error>)>,
}

/// One token's run: what every slot came to, and whether the token was changed.
struct Run<'t, 'c, 'p> {
    token: &'t mut dyn PivToken,
    ctx: &'c Context<'c>,
    pin: &'p Pin,
    policy: &'p mut dyn SlotPolicy,
    f9: F9Cache,
    /// Set as soon as the token was changed (key generated, certificate written).
    changed: bool,
    /// Reports by slot index (slots can finish out of order: one waits for Vault while
    /// the next is kept or re-imported).
    reports: Vec<(usize, SlotReport)>,
    fatal: Option<Error>,
}

impl Run<'_, '_, '_> {
    fn done(
        &mut self,
        index: usize,
        sp: &SlotPlan,
        word: SlotResult,
        a: Accepted,
        warnings: &[String],
        att: Option<AttestationFacts>,
    ) {
        match self.policy.finished(sp, &a) {
            Ok(()) => {
                let mut r = slot_report(sp, word, &a, warnings);
                r.attestation = att;
                self.reports.push((index, r));
            }
            Err(e) => self.failed(index, sp, e),
        }
    }

    /// A slot failed: reported; an error that is not the slot's own stops the run.
    fn failed(&mut self, index: usize, sp: &SlotPlan, e: Error) {
        self.reports.push((index, failed_report(sp, &e)));
        if !slot_local(&e) && self.fatal.is_none() {
            // Exit codes 2 and 4 say "nothing was changed": not after a key was
            // generated or a certificate written.
            self.fatal = Some(if self.changed {
                Error::AfterChange {
                    done: "keys or certificates were already changed on the token".into(),
                    source: Box::new(e),
                }
            } else {
                e
            });
        }
    }

    /// Decide what to do with a slot. Deciding may sign a test challenge with the slot's
    /// key (PIN policy "always" slots want the PIN right before each use). The session's
    /// PIN verification (unlock) lasts for every other use: one VERIFY per session is the
    /// APDU floor (BENCHMARKS.md).
    fn decide(&mut self, sp: &SlotPlan) -> Result<SlotAction, Error> {
        if self.policy.decide_uses_key() {
            self.token.verify_pin(self.pin)?;
        }
        self.policy.decide(self.token, self.ctx, sp)
    }

    /// The card's half of a certified slot, up to the request (not yet sent).
    fn prepare(
        &mut self,
        sp: &SlotPlan,
        choice: KeyChoice,
        notes: &mut Notes,
    ) -> Result<Prepared, Error> {
        let mut rec = Recorder {
            inner: &mut *self.policy,
            notes,
        };
        let r = enroll::prepare_slot(
            self.token,
            self.ctx,
            sp,
            self.pin,
            choice,
            &mut self.f9,
            &mut rec,
        );
        self.changed |= rec.notes.generated;
        r
    }

    /// Right before a slot's request goes: Vault's pre-flight answered, the journal told.
    fn before_request(
        &mut self,
        sp: &SlotPlan,
        p: &Prepared,
        notes: &mut Notes,
    ) -> Result<(), Error> {
        let mut rec = Recorder {
            inner: &mut *self.policy,
            notes,
        };
        enroll::before_request(self.token, self.ctx, sp, p, &mut rec)
    }

    /// Vault answered a slot's request (if one is out): verify and import.
    fn land(&mut self, f: Option<InFlight<'_, '_>>) {
        let Some(InFlight {
            index,
            sp,
            mut notes,
            answer,
        }) = f
        else {
            return;
        };
        // A panic (only in test builds: release builds abort) goes on in this thread.
        let (p, answer) = answer
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        let mut rec = Recorder {
            inner: &mut *self.policy,
            notes: &mut notes,
        };
        let r = enroll::finish_slot(self.token, self.ctx, sp, p, answer, &mut rec);
        self.changed |= notes.generated;
        match r {
            Ok((a, mut warnings)) => {
                self.changed = true;
                checkpoint("import");
                notes.warnings.append(&mut warnings);
                let word = self.policy.certified_word();
                self.done(
                    index,
                    sp,
                    word,
                    a,
                    &notes.warnings,
                    notes.attestation.take(),
                );
            }
            Err(e) => self.failed(index, sp, e),
        }
    }
}

/// Work every slot of `slots` on an unlocked token, in order. A slot-local failure is
/// reported and the next slot is done; any other failure stops the run.
///
/// While Vault signs one slot's request, the card makes the next slot's key and CSR
/// (issue 13: a production Vault answers in tens of milliseconds, a key takes the card
/// as long), when the policy allows it ([`SlotPolicy::overlap`]). The rules that keep this safe: one request out at a time; a slot's
/// certificate is verified and imported before the next request is sent; a key that
/// would replace the slot's key in place waits for the answer (a refusal then stops the
/// run before it); a run stopped by a slot's answer deletes the next slot's staged key.
pub fn run_token(
    token: &mut dyn PivToken,
    ctx: &Context<'_>,
    command: &'static str,
    slots: &[SlotPlan],
    pin: &Pin,
    policy: &mut dyn SlotPolicy,
) -> Outcome {
    let info = token.info().clone();
    let mut run = Run {
        token,
        ctx,
        pin,
        policy,
        f9: F9Cache::default(),
        changed: false,
        reports: Vec::new(),
        fatal: None,
    };
    std::thread::scope(|s| {
        let mut flight: Option<InFlight<'_, '_>> = None;
        for (index, sp) in slots.iter().enumerate() {
            // Without overlap the previous slot lands before any card work on this one:
            // no APDU goes to the card while a request is out.
            if !run.policy.overlap() {
                run.land(flight.take());
            }
            if run.fatal.is_some() {
                break;
            }
            let action = match run.decide(sp) {
                Ok(a) => a,
                Err(e) => {
                    run.failed(index, sp, e);
                    continue;
                }
            };
            let choice = match action {
                SlotAction::Keep(a) => {
                    run.done(index, sp, SlotResult::Kept, a, &[], None);
                    continue;
                }
                SlotAction::Reimport { key, issued } => {
                    run.changed = true; // the write may have happened even if it then fails
                    match enroll::import_issued(run.token, run.ctx, sp, &key, &issued) {
                        Ok((a, warnings)) => {
                            checkpoint("import");
                            run.done(index, sp, SlotResult::Reimported, a, &warnings, None);
                        }
                        Err(e) => run.failed(index, sp, e),
                    }
                    continue;
                }
                SlotAction::Certify(choice) => choice,
            };
            if choice.destroys() {
                run.land(flight.take());
                if run.fatal.is_some() {
                    break;
                }
            }
            let mut notes = Notes::default();
            let prepared = run.prepare(sp, choice, &mut notes);
            // The previous slot is finished before this one's request goes out.
            run.land(flight.take());
            let p = match prepared {
                Ok(p) => p,
                Err(e) => {
                    run.failed(index, sp, e);
                    continue;
                }
            };
            if run.fatal.is_some() {
                let why = Error::Incomplete(format!(
                    "slot {}: not sent to Vault: an earlier slot stopped the run",
                    sp.slot
                ));
                let e = enroll::abandon(run.token, p, why);
                run.reports.push((index, failed_report(sp, &e)));
                break;
            }
            // Only now (the previous slot landed) is this request about to go: a crash
            // before here must not leave it recorded as sent ("in doubt" for ever).
            if let Err(e) = run.before_request(sp, &p, &mut notes) {
                run.failed(index, sp, e);
                continue;
            }
            let issuer = run.ctx.issuer;
            flight = Some(InFlight {
                index,
                sp,
                notes,
                answer: s.spawn(move || {
                    let r = enroll::request(issuer, sp, &p);
                    (p, r)
                }),
            });
        }
        run.land(flight.take());
    });
    let Run {
        mut reports, fatal, ..
    } = run;
    reports.sort_by_key(|(i, _)| *i);
    let mut report = EnrollReport {
        command,
        token_serial: info.serial,
        firmware: info.version,
        reader: info.reader,
        slots: reports.into_iter().map(|(_, r)| r).collect(),
        wrote_chuid_ccc: false,
        ok: false,
    };
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
