//! Self-service renewal: which certificates are due, and renewing them through the enroll
//! workflow (same CSR, sign, verify and import steps), re-keying by default.
//!
//! "Never leave a token worse than it was": Vault is asked (login, policy, role) before a
//! key is generated, and the new public key is journaled locally right after generation,
//! so a run that dies between generation and import is finished by the next run.

use crate::csr::Subject;
use crate::enroll::{Context, Issued, KeyChoice, Observer, SlotPlan};
use crate::error::Error;
use crate::journal::{Entry, Journal};
use crate::piv::{PinPolicy, PivToken, Role, Slot, TouchPolicy};
use crate::report::rfc3339;
use crate::secret::Pin;
use crate::workflow::{run_token, slot_holds_key, Outcome, SlotAction, SlotPolicy};
use der::Decode;
use serde::Serialize;
use spki::SubjectPublicKeyInfoOwned;
use std::time::{Duration, SystemTime};
use x509_cert::ext::pkix::ExtendedKeyUsage;
use x509_cert::Certificate;

/// When a certificate is due.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Fraction of the lifetime elapsed (default 2/3).
    Fraction(f64),
    /// Time left before notAfter.
    Remaining(Duration),
}

impl Default for Threshold {
    fn default() -> Self {
        Threshold::Fraction(2.0 / 3.0)
    }
}

impl std::str::FromStr for Threshold {
    type Err = String;
    /// `2/3`, `0.75`, `75%`, or a duration left: `30d`, `12h`, `90m`, `45s`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || {
            format!(
                "threshold '{s}': use a fraction (2/3, 0.75, 75%) or a duration left (30d, 12h)"
            )
        };
        let frac = if let Some((a, b)) = s.split_once('/') {
            let (a, b): (f64, f64) = (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            );
            Some(a / b)
        } else if let Some(p) = s.strip_suffix('%') {
            Some(p.trim().parse::<f64>().map_err(|_| bad())? / 100.0)
        } else {
            s.parse::<f64>().ok()
        };
        if let Some(f) = frac {
            return if f > 0.0 && f < 1.0 {
                Ok(Threshold::Fraction(f))
            } else {
                Err(bad())
            };
        }
        let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let unit = match &s[digits.len()..] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return Err(bad()),
        };
        Ok(Threshold::Remaining(Duration::from_secs(n * unit)))
    }
}

/// The moment a certificate valid from `nb` to `na` becomes due.
pub fn due_at(nb: SystemTime, na: SystemTime, t: Threshold) -> SystemTime {
    let life = na.duration_since(nb).unwrap_or_default();
    match t {
        Threshold::Fraction(f) => nb + life.mul_f64(f),
        Threshold::Remaining(d) => na.checked_sub(d).filter(|t| *t >= nb).unwrap_or(nb),
    }
}

/// What renewal needs to know about a slot's current certificate.
#[derive(Debug, Clone)]
pub struct Current {
    pub slot: Slot,
    pub der: Vec<u8>,
    pub key: SubjectPublicKeyInfoOwned,
    pub subject: Subject,
    pub role: Role,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub issuer: String,
}

/// A slot's renewal state, for `--check` and reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Due {
    pub slot: Slot,
    pub role: Role,
    pub subject: String,
    pub not_after: String,
    pub due_at: String,
    pub due: bool,
    /// A renewal that died after key generation is waiting to be finished.
    pub unfinished: bool,
}

/// The role a certificate was issued for, from its extended key usage (RFC 5280 4.2.1.12;
/// smart-card logon 1.3.6.1.4.1.311.20.2.2 marks the auth role).
fn role_of(cert: &Certificate) -> Role {
    use const_oid::db::rfc5280;
    let smartcard = const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.20.2.2");
    let ekus = match cert.tbs_certificate().get_extension::<ExtendedKeyUsage>() {
        Ok(Some((_, e))) => e.0,
        _ => Vec::new(),
    };
    if ekus.contains(&smartcard) {
        Role::Auth
    } else if ekus.contains(&rfc5280::ID_KP_CODE_SIGNING) {
        Role::CodeSigning
    } else if ekus.contains(&rfc5280::ID_KP_EMAIL_PROTECTION) {
        Role::EmailSigning
    } else {
        Role::Piv
    }
}

/// CN, e-mail and UPN of a certificate, to ask for the same again (read by OID, never by
/// splitting the printed name: "Doe, Jane" stays "Doe, Jane").
pub fn subject_of(cert: &Certificate) -> Subject {
    Subject::of_certificate(cert)
}

/// Certificates on the token issued by `ca_subjects` (the configured CA's subject names).
/// `is_ours` says whether a certificate issued by that subject (RFC 4514 string) came
/// from the configured PKI; it may ask Vault, so it is asked only for issuers seen here.
pub fn current(
    token: &mut dyn PivToken,
    is_ours: &mut dyn FnMut(&str) -> Result<bool, Error>,
) -> Result<Vec<Current>, Error> {
    let mut out = Vec::new();
    for slot in Slot::all() {
        let Some(der) = token.read_certificate(slot)? else {
            continue;
        };
        let Ok(cert) = Certificate::from_der(&der) else {
            continue;
        };
        let tbs = cert.tbs_certificate();
        let issuer = tbs.issuer().to_string();
        if !is_ours(&issuer)? {
            log::info!("slot {slot}: certificate from {issuer}, not the configured CA; left alone");
            continue;
        }
        out.push(Current {
            slot,
            key: tbs.subject_public_key_info().clone(),
            subject: subject_of(&cert),
            role: role_of(&cert),
            not_before: tbs.validity().not_before.to_system_time(),
            not_after: tbs.validity().not_after.to_system_time(),
            issuer,
            der,
        });
    }
    Ok(out)
}

/// What to renew now, with `--check`'s view of every candidate.
pub fn assess(
    certs: &[Current],
    pending: &dyn Fn(Slot) -> bool,
    t: Threshold,
    now: SystemTime,
) -> Vec<Due> {
    certs
        .iter()
        .map(|c| {
            let at = due_at(c.not_before, c.not_after, t);
            Due {
                slot: c.slot,
                role: c.role,
                subject: format!("CN={}", c.subject.common_name),
                not_after: rfc3339(c.not_after),
                due_at: rfc3339(at),
                due: now >= at,
                unfinished: pending(c.slot),
            }
        })
        .collect()
}

/// `renew`'s slot policy: finish a renewal whose key was generated earlier, else
/// certify the current key again (`--reuse-key`) or a new one. New keys are journaled
/// before the CSR leaves the token.
struct RenewSlots<'a> {
    journal: &'a Journal,
    entry: Entry,
    serial: u32,
    reuse_key: bool,
    current: &'a [Current],
}

impl Observer for RenewSlots<'_> {
    fn generated(&mut self, slot: Slot, key: &SubjectPublicKeyInfoOwned) -> Result<(), Error> {
        self.entry.set_key(slot, key)?;
        self.journal.save(self.serial, &self.entry)
    }
    fn requesting(&mut self, slot: Slot) -> Result<(), Error> {
        self.entry
            .requested
            .insert(slot, rfc3339(SystemTime::now()));
        self.journal.save(self.serial, &self.entry)
    }
    fn issued(&mut self, slot: Slot, cert: &Issued) -> Result<(), Error> {
        self.entry.requested.remove(&slot);
        self.entry.issued.insert(slot, cert.clone());
        self.journal.save(self.serial, &self.entry)
    }
}

impl SlotPolicy for RenewSlots<'_> {
    fn decide(
        &mut self,
        token: &mut dyn PivToken,
        ctx: &Context<'_>,
        sp: &SlotPlan,
    ) -> Result<SlotAction, Error> {
        let slot = sp.slot;
        self.journal
            .check_not_in_doubt(self.serial, &self.entry, slot)?;
        let cur = self
            .current
            .iter()
            .find(|c| c.slot == slot)
            .ok_or_else(|| Error::Usage(format!("slot {slot}: no certificate to renew")))?;
        // Issued before a crash for the key in the slot: import it.
        if let Some(iss) = self.entry.issued.get(&slot).cloned() {
            let key = crate::verify::pem_bundle_to_der(&iss.certificate_pem)
                .ok()
                .and_then(|d| d.into_iter().next())
                .and_then(|d| crate::piv::yubikey::spki_of_cert(&d));
            if let Some(key) = key {
                if key != cur.key && slot_holds_key(token, slot, &key)? {
                    return Ok(SlotAction::Reimport { key, issued: iss });
                }
            }
        }
        let _ = ctx;
        // A key generated by a run that died: finish with it instead of a new one.
        if let Some(k) = self.entry.key(slot) {
            if k != cur.key && slot_holds_key(token, slot, &k)? {
                log::info!("slot {slot}: finishing a renewal whose key was generated earlier");
                return Ok(SlotAction::Certify(KeyChoice::Existing(k)));
            }
        }
        Ok(SlotAction::Certify(if self.reuse_key {
            KeyChoice::Existing(cur.key.clone())
        } else {
            KeyChoice::Generate
        }))
    }

    fn certified_word(&self) -> crate::report::SlotResult {
        crate::report::SlotResult::Renewed
    }

    fn finished(&mut self, sp: &SlotPlan, _a: &crate::verify::Accepted) -> Result<(), Error> {
        self.entry.clear_slot(sp.slot);
        self.journal.save(self.serial, &self.entry)
    }
}

/// Renew the given slots on an unlocked token. `reuse_key` certifies the existing key.
pub fn renew(
    token: &mut dyn PivToken,
    ctx: &Context<'_>,
    todo: &[Current],
    pin: &Pin,
    reuse_key: bool,
    journal: &Journal,
) -> Result<Outcome, Error> {
    let serial = token.info().serial;
    // Vault first: a refusal here leaves every slot as it was.
    ctx.preflight.check(ctx, todo.iter().map(|c| c.role))?;
    let mut plan = Vec::new();
    for c in todo {
        let algorithm = crate::crypto::algorithm_of(&c.key)
            .ok_or_else(|| Error::Usage(format!("slot {}: unsupported key type", c.slot)))?;
        plan.push(SlotPlan {
            slot: c.slot,
            algorithm,
            pin_policy: PinPolicy::Default,
            touch_policy: TouchPolicy::Default,
            role: c.role,
            subject: c.subject.clone(),
            ttl: None,
        });
    }
    let mut policy = RenewSlots {
        journal,
        entry: journal.load(serial)?,
        serial,
        reuse_key,
        current: todo,
    };
    Ok(run_token(token, ctx, "renew", &plan, pin, &mut policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse() {
        assert_eq!(
            "2/3".parse::<Threshold>(),
            Ok(Threshold::Fraction(2.0 / 3.0))
        );
        assert_eq!("75%".parse::<Threshold>(), Ok(Threshold::Fraction(0.75)));
        assert_eq!("0.5".parse::<Threshold>(), Ok(Threshold::Fraction(0.5)));
        assert_eq!(
            "30d".parse::<Threshold>(),
            Ok(Threshold::Remaining(Duration::from_secs(30 * 86400)))
        );
        for bad in ["1.5", "0", "3/2", "x", "10y", ""] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad}");
        }
    }

    #[test]
    fn due_moments() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let na = nb + Duration::from_secs(300);
        assert_eq!(
            due_at(nb, na, Threshold::Fraction(0.5)),
            nb + Duration::from_secs(150)
        );
        let two_thirds = due_at(nb, na, Threshold::default());
        let off = two_thirds
            .duration_since(nb + Duration::from_secs(200))
            .unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_millis(1), "{off:?}");
        assert_eq!(
            due_at(nb, na, Threshold::Remaining(Duration::from_secs(60))),
            nb + Duration::from_secs(240)
        );
        assert_eq!(
            due_at(nb, na, Threshold::Remaining(Duration::from_secs(600))),
            nb
        );
    }
}
