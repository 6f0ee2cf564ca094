//! One token at the station: allow-list, pre-flight, credentials (the one rotation), then
//! the per-token workflow with the station's slot policy, then the escrow record.

use super::profile::{vars_of, TokenEntry};
use super::report::{SlotLine, TokenLine, TokenResult};
use super::Station;
use crate::credentials;
use crate::enroll::{self, staged, Context, Issued, KeyChoice, Observer, SlotPlan};
use crate::error::Error;
use crate::escrow::{SlotRecord, Versioned};
use crate::journal::Entry;
use crate::piv::{PivToken, Slot, TokenError};
use crate::profile;
use crate::secret::Pin;
use crate::verify::{self, Accepted, Expectation};
use crate::workflow::{run_token, slot_holds_key, SlotAction, SlotPolicy};
use der::{Decode, EncodePem};
use spki::SubjectPublicKeyInfoOwned;
use std::time::{Instant, SystemTime};

impl Station<'_> {
    /// Enroll one token per the profile, resuming whatever an earlier run left.
    pub fn process(&self, token: &mut dyn PivToken) -> TokenLine {
        let t0 = Instant::now();
        let info = token.info().clone();
        let mut line = TokenLine::new(Some(info.serial), &info.reader);
        if let Err(e) = self.process_inner(token, &mut line) {
            // Vault away, or an escrow write whose answer was lost and that could not be
            // read back (a leader change): the token waits and the next pass reads the
            // record, which settles it. A sign in doubt is `Error::InDoubt`, never this.
            line.vault_unavailable = matches!(e.cause(), Error::Vault(v) if v.is_unavailable())
                || crate::escrow::Escrow::write_in_doubt(&e);
            line.record_moved = matches!(
                e.cause(),
                Error::Vault(crate::vault::VaultError::CasMismatch { .. })
            );
            line.result = match e.cause() {
                Error::Token(TokenError::CardRemoved) => TokenResult::Removed,
                // Refused before anything on the token changed (after a key was generated
                // the error is wrapped as a change, and the token "failed").
                Error::Policy { .. } if matches!(e, Error::Policy { .. }) => TokenResult::Refused,
                _ if line.result == TokenResult::Refused => TokenResult::Refused,
                _ => TokenResult::Failed,
            };
            line.error = Some(match e.hint() {
                Some(h) => format!("{e} ({h})"),
                None => e.to_string(),
            });
        }
        line.duration_ms = t0.elapsed().as_millis() as u64;
        line
    }

    /// Bring the token to the escrowed credentials and leave it unlocked (PIN verified,
    /// management key authenticated). A rotation an earlier run left pending is finished
    /// first; a token without a record must be in factory state, and gets random
    /// credentials through the one rotation (escrowed before they are applied).
    ///
    /// The flag says the record was changed in memory and not written yet (a rotation's
    /// last promotion waits for the token's next record write).
    fn credentials(
        &self,
        token: &mut dyn PivToken,
        rec: &mut Versioned,
    ) -> Result<(Pin, bool), Error> {
        credentials::resolve_pending(token, &self.escrow, rec)?;
        if rec.version == 0 || rec.record.live.mgmt_key.is_none() {
            rec.record.live = credentials::factory(token)?;
        }
        let factory_pin = rec
            .record
            .live
            .pin
            .as_ref()
            .is_some_and(|p| p.expose() == credentials::FACTORY_PIN);
        let rotated = factory_pin;
        if factory_pin {
            let next = self.profile.credential_policy()?.generate(token);
            // Promoted by the token's final record (or by a re-run's probe): one KV write
            // fewer per token.
            credentials::rotate_then(
                token,
                &self.escrow,
                rec,
                next,
                credentials::Promote::WithNextWrite,
            )?;
        }
        Ok((credentials::unlock(token, &rec.record.live)?, rotated))
    }

    fn process_inner(&self, token: &mut dyn PivToken, line: &mut TokenLine) -> Result<(), Error> {
        let serial = token.info().serial;
        let entry = match self.allow.get(&serial) {
            Some(e) => e.clone(),
            None if self.profile.tokens.allow_unknown => TokenEntry {
                serial,
                name: None,
                email: None,
                upn: None,
            },
            None => {
                line.result = TokenResult::Refused;
                return Err(Error::Usage(format!(
                    "serial {serial} is not on the allow-list"
                )));
            }
        };
        let plan: Vec<SlotPlan> = profile::resolve(
            &self.profile.slots,
            &self.profile.defaults(),
            &vars_of(&entry),
        )?;
        enroll::Plan {
            slots: plan.clone(),
            force: true,
        }
        .check_token(token)?;
        if let Some(a) = &self.attestation {
            crate::workflow::attest::precheck(&a.policy, token.info().version, &plan)?;
        }
        let ctx = Context {
            issuer: self.issuer,
            anchors_der: self.anchors_der.clone(),
            preflight: &self.preflight,
            attestation: self.attestation.as_ref(),
            strict_usage: self.profile.strict_usage,
        };
        self.preflight.check(&ctx, plan.iter().map(|sp| sp.role))?;
        let mut rec = self
            .escrow
            .read(serial)?
            .unwrap_or_else(|| Versioned::new(serial));
        let mut journal = self.journal.load(serial)?;
        let resumed = rec.version != 0 || !journal.is_empty();
        let was_enrolled = rec.record.state.enrolled;

        let (pin, unwritten) = self.credentials(token, &mut rec)?;
        let before = rec.record.clone();
        let mut policy = StationSlots {
            st: self,
            serial,
            journal: &mut journal,
            rec: &mut rec,
            in_doubt: Vec::new(),
            attested: Default::default(),
            plan_slots: plan.iter().map(|sp| sp.slot).collect(),
        };
        let out = run_token(token, &ctx, "station", &plan, &pin, &mut policy);
        line.in_doubt = std::mem::take(&mut policy.in_doubt);
        // A request sent in this run whose answer was lost stays marked in the journal.
        for r in out.report.slots.iter().filter(|r| r.error.is_some()) {
            if journal.requested.contains_key(&r.slot) && !line.in_doubt.contains(&r.slot) {
                line.in_doubt.push(r.slot);
            }
        }
        line.slots = out.report.slots.iter().filter_map(SlotLine::of).collect();
        if let Some(e) = out.fatal {
            // Certificates recorded before the failure stay recorded.
            if rec.record != before || unwritten {
                let _ = self.escrow.write(&mut rec);
            }
            return Err(e);
        }
        if let Some(failed) = out.report.slots.iter().find(|s| s.error.is_some()) {
            if rec.record != before || unwritten {
                self.escrow.write(&mut rec)?;
            }
            line.record_version = Some(rec.version);
            return Err(Error::Incomplete(format!(
                "slot {}: {}",
                failed.slot,
                failed.error.as_deref().unwrap_or("failed")
            )));
        }
        token.ensure_chuid_ccc()?;
        rec.record.state.enrolled = true;
        if rec.record != before || unwritten || rec.version == 0 {
            self.escrow.write(&mut rec)?;
        }
        self.journal.clear(serial)?;
        line.record_version = Some(rec.version);
        let all_kept = line
            .slots
            .iter()
            .all(|s| s.action == crate::report::SlotResult::Kept);
        line.result = if was_enrolled && all_kept {
            TokenResult::AlreadyEnrolled
        } else if resumed {
            TokenResult::Resumed
        } else {
            TokenResult::Enrolled
        };
        Ok(())
    }
}

/// The station's slot policy: keep what fits, re-import what was issued, certify a key
/// generated earlier, else generate. Records progress in the journal and the escrow record.
struct StationSlots<'s, 'a> {
    st: &'s Station<'a>,
    serial: u32,
    journal: &'s mut Entry,
    rec: &'s mut Versioned,
    in_doubt: Vec<Slot>,
    /// Attestations of keys generated in this run, recorded with their certificates.
    attested: std::collections::BTreeMap<Slot, crate::workflow::attest::AttestationFacts>,
    /// The profile's slots (never used to stage a key in).
    plan_slots: Vec<Slot>,
}

fn first_der(pem: &str) -> Option<Vec<u8>> {
    verify::pem_bundle_to_der(pem).ok()?.into_iter().next()
}

fn chain_of(issued: &Issued) -> Vec<Vec<u8>> {
    issued
        .chain_pem
        .iter()
        .filter_map(|p| verify::pem_bundle_to_der(p).ok())
        .flatten()
        .collect()
}

impl StationSlots<'_, '_> {
    fn save(&self) -> Result<(), Error> {
        self.st.journal.save(self.serial, self.journal)
    }

    /// The slot's certificate chains to the configured CA, names what the plan names, has
    /// the plan's algorithm and role, and the slot holds its key: then it stays.
    fn fits(
        &self,
        token: &mut dyn PivToken,
        ctx: &Context<'_>,
        sp: &SlotPlan,
        der: &[u8],
    ) -> Result<Option<Accepted>, Error> {
        let Ok(cert) = x509_cert::Certificate::from_der(der) else {
            return Ok(None);
        };
        let key = cert.tbs_certificate().subject_public_key_info().clone();
        if crate::crypto::algorithm_of(&key) != Some(sp.algorithm)
            || crate::renew::subject_of(&cert) != sp.subject
        {
            return Ok(None);
        }
        let want = Expectation {
            slot: sp.slot,
            role: sp.role,
            public_key: &key,
            chain_der: &self.st.ca_chain_der,
            anchors_der: &ctx.anchors_der,
            now: SystemTime::now(),
            strict_usage: ctx.strict_usage,
        };
        let Ok(a) = verify::check(der, &want) else {
            return Ok(None);
        };
        Ok(slot_holds_key(token, sp.slot, &key)?.then_some(a))
    }

    fn record_slot(&mut self, slot: Slot, r: Option<SlotRecord>) {
        if let Some(mut r) = r {
            r.attestation = self.attested.get(&slot).cloned();
            self.rec.record.state.slots.insert(slot, r);
        }
    }
}

impl Observer for StationSlots<'_, '_> {
    fn generated(&mut self, slot: Slot, key: &SubjectPublicKeyInfoOwned) -> Result<(), Error> {
        self.journal.set_key(slot, key)?;
        self.save()
    }

    fn attested(
        &mut self,
        slot: Slot,
        att: &crate::workflow::attest::KeyAttestation,
    ) -> Result<(), Error> {
        self.attested.insert(slot, att.facts());
        Ok(())
    }

    fn requesting(&mut self, slot: Slot) -> Result<(), Error> {
        self.journal
            .requested
            .insert(slot, crate::report::rfc3339(SystemTime::now()));
        self.save()
    }

    fn issued(&mut self, slot: Slot, cert: &Issued) -> Result<(), Error> {
        self.journal.issued.insert(slot, cert.clone());
        self.journal.requested.remove(&slot);
        self.save()?;
        // The journal has it; the record follows at the end of the token if this fails.
        // This write is the certificate's copy off the station: with the journal lost or
        // damaged before the token's final record, it is what keeps the slot from being
        // issued twice (BENCHMARKS.md, Vault floor: the four writes that stand above it).
        self.record_slot(slot, SlotRecord::of(cert));
        if let Err(e) = self.st.escrow.write(self.rec) {
            log::warn!("token {}: escrow record not updated yet: {e}", self.serial);
        }
        Ok(())
    }
}

impl SlotPolicy for StationSlots<'_, '_> {
    fn decide(
        &mut self,
        token: &mut dyn PivToken,
        ctx: &Context<'_>,
        sp: &SlotPlan,
    ) -> Result<SlotAction, Error> {
        let slot = sp.slot;
        if let Err(e) = self
            .st
            .journal
            .check_not_in_doubt(self.serial, self.journal, slot)
        {
            self.in_doubt.push(slot);
            return Err(e);
        }
        let current = token.read_certificate(slot)?;
        if !self.st.force {
            if let Some(der) = &current {
                if let Some(a) = self.fits(token, ctx, sp, der)? {
                    let pem = x509_cert::Certificate::from_der(der)
                        .ok()
                        .and_then(|c| c.to_pem(der::pem::LineEnding::LF).ok());
                    let known = self
                        .rec
                        .record
                        .state
                        .slots
                        .get(&slot)
                        .map(|r| &r.sha256_fingerprint);
                    if known != Some(&a.sha256) {
                        // Renewed by `pivault renew`, or recorded before a crash: record it.
                        let issued = Issued {
                            certificate_pem: pem.unwrap_or_default(),
                            chain_pem: Vec::new(),
                            warnings: Vec::new(),
                        };
                        self.record_slot(slot, SlotRecord::of(&issued));
                    }
                    return Ok(SlotAction::Keep(a));
                }
            }
        }
        // Issued before a crash (journal first, then the record): import it, never ask
        // Vault again, once it verifies against the configured anchor (never against the
        // chain stored with it). One that does not verify is dropped, never retried for
        // good: the next candidate, or a new request, follows.
        let candidates: Vec<Issued> = self
            .journal
            .issued
            .get(&slot)
            .cloned()
            .into_iter()
            .chain(
                self.rec
                    .record
                    .state
                    .slots
                    .get(&slot)
                    .map(SlotRecord::issued),
            )
            .collect();
        for iss in candidates {
            let Some(der) = first_der(&iss.certificate_pem) else {
                continue;
            };
            let Some(key) = crate::piv::yubikey::spki_of_cert(&der) else {
                continue;
            };
            if current.as_deref() == Some(der.as_slice()) {
                continue;
            }
            // Not in the slot: maybe still staged in a retired slot (a run stopped between
            // the certificate and MOVE KEY).
            let staged_in = if slot_holds_key(token, slot, &key)? {
                None
            } else {
                match staged::find_staged(token, &key)? {
                    Some(r) => Some(r),
                    None => continue,
                }
            };
            let chain = chain_of(&iss);
            let want = Expectation {
                slot,
                role: sp.role,
                public_key: &key,
                chain_der: &chain,
                anchors_der: &ctx.anchors_der,
                now: SystemTime::now(),
                strict_usage: ctx.strict_usage,
            };
            match verify::check(&der, &want) {
                Ok(_) => {
                    if let Some(r) = staged_in {
                        token.move_key(r, Some(slot))?;
                        self.journal.set_key(slot, &key)?;
                        self.save()?;
                    }
                    self.record_slot(slot, SlotRecord::of(&iss));
                    return Ok(SlotAction::Reimport { key, issued: iss });
                }
                Err(e) => {
                    log::warn!("slot {slot}: a recorded certificate is refused ({e}); dropped");
                    if self.journal.issued.remove(&slot).is_some() {
                        self.save()?;
                    }
                }
            }
        }
        if let Some(k) = self.journal.key(slot) {
            if slot_holds_key(token, slot, &k)? {
                return Ok(SlotAction::Certify(KeyChoice::Existing(k)));
            }
        }
        // An occupied slot on firmware 5.7+: make the key elsewhere, move it in once its
        // certificate is verified, so a refusal leaves the old key (issue 10 defect 6).
        Ok(SlotAction::Certify(staged::placement(
            token,
            slot,
            &self.plan_slots,
        )?))
    }

    fn certified_word(&self) -> crate::report::SlotResult {
        crate::report::SlotResult::Enrolled
    }

    fn finished(&mut self, sp: &SlotPlan, _a: &Accepted) -> Result<(), Error> {
        self.journal.clear_slot(sp.slot);
        self.save()
    }
}
