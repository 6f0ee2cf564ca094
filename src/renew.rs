//! Self-service renewal: which certificates are due, and renewing them through the enroll
//! workflow (same CSR, sign, verify and import steps), re-keying by default.
//!
//! "Never leave a token worse than it was": Vault is asked (login, policy, role) before a
//! key is generated, and the new public key is journaled locally right after generation,
//! so a run that dies between generation and import is finished by the next run.

use crate::csr::Subject;
use crate::enroll::{self, Context, KeyChoice, Observer, SlotPlan};
use crate::error::Error;
use crate::piv::{PinPolicy, PivToken, Role, Slot, TouchPolicy};
use crate::report::{rfc3339, EnrollReport, SCHEMA_VERSION};
use crate::secret::Pin;
use der::{Decode, Encode};
use serde::Serialize;
use spki::SubjectPublicKeyInfoOwned;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use x509_cert::ext::pkix::{name::GeneralName, ExtendedKeyUsage, SubjectAltName};
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

/// CN, e-mail and UPN of a certificate, to ask for the same again.
fn subject_of(cert: &Certificate) -> Subject {
    let tbs = cert.tbs_certificate();
    let cn = tbs
        .subject()
        .to_string()
        .split(',')
        .find_map(|p| p.trim().strip_prefix("CN=").map(str::to_string))
        .unwrap_or_default()
        .replace('\\', "");
    let upn_oid = const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.20.2.3");
    let (mut email, mut upn) = (None, None);
    if let Ok(Some((_, san))) = tbs.get_extension::<SubjectAltName>() {
        for n in san.0 {
            match n {
                GeneralName::Rfc822Name(e) => email = email.or(Some(e.to_string())),
                GeneralName::OtherName(o) if o.type_id == upn_oid => {
                    // value is [0] EXPLICIT UTF8String; `value` holds the UTF8String.
                    upn = o
                        .value
                        .decode_as::<der::asn1::Utf8StringRef<'_>>()
                        .ok()
                        .map(|s| s.to_string())
                        .or(upn);
                }
                _ => {}
            }
        }
    }
    Subject {
        common_name: cn,
        email,
        upn,
    }
}

/// Certificates on the token issued by `ca_subjects` (the configured CA's subject names).
pub fn current(token: &mut dyn PivToken, ca_subjects: &[String]) -> Result<Vec<Current>, Error> {
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
        if !ca_subjects.contains(&issuer) {
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

/// A local journal of keys generated but not yet certified, one file per token and slot.
pub struct Journal {
    dir: PathBuf,
    /// Test hook: abort the process right after a new key is journaled ("generate"), as a
    /// power cut would.
    pub abort_after: Option<String>,
}

impl Journal {
    pub fn new(dir: &Path) -> Journal {
        Journal {
            dir: dir.to_path_buf(),
            abort_after: None,
        }
    }

    fn path(&self, serial: u32, slot: Slot) -> PathBuf {
        self.dir.join(format!("renew-{serial}-{slot}.der"))
    }

    /// Record a new key durably (written, fsynced, renamed into place).
    pub fn record(
        &self,
        serial: u32,
        slot: Slot,
        key: &SubjectPublicKeyInfoOwned,
    ) -> Result<(), Error> {
        use std::io::Write;
        let io = |e: std::io::Error| {
            Error::Config(format!("renew journal in {}: {e}", self.dir.display()))
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let der = key.to_der().map_err(|e| Error::Config(e.to_string()))?;
        let tmp = self.path(serial, slot).with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&der).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, self.path(serial, slot)).map_err(io)?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub fn pending(&self, serial: u32, slot: Slot) -> Option<SubjectPublicKeyInfoOwned> {
        let der = std::fs::read(self.path(serial, slot)).ok()?;
        SubjectPublicKeyInfoOwned::from_der(&der).ok()
    }

    pub fn clear(&self, serial: u32, slot: Slot) {
        let _ = std::fs::remove_file(self.path(serial, slot));
    }
}

/// Whether the slot's private key is the one behind `key`: a test signature (needs the
/// PIN verified) checked locally.
pub fn slot_holds_key(
    token: &mut dyn PivToken,
    slot: Slot,
    key: &SubjectPublicKeyInfoOwned,
) -> bool {
    let Some(alg) = crate::crypto::algorithm_of(key) else {
        return false;
    };
    let mut challenge = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut challenge);
    match token.sign_raw(slot, alg, &crate::crypto::card_input(alg, &challenge)) {
        Ok(sig) => crate::crypto::verify(key, &challenge, &sig).is_ok(),
        Err(_) => false,
    }
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

/// Saves each new key in the journal before the CSR leaves the token.
struct JournalObserver<'a> {
    journal: &'a Journal,
    serial: u32,
}

impl Observer for JournalObserver<'_> {
    fn generated(&mut self, slot: Slot, key: &SubjectPublicKeyInfoOwned) -> Result<(), Error> {
        self.journal.record(self.serial, slot, key)?;
        if self.journal.abort_after.as_deref() == Some("generate") {
            log::warn!("test hook: aborting after 'generate'");
            std::process::abort();
        }
        Ok(())
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
) -> Result<enroll::Outcome, Error> {
    let info = token.info().clone();
    // Vault first: a refusal here leaves every slot as it was.
    let mut asked = std::collections::BTreeSet::new();
    for c in todo {
        if asked.insert(c.role.name()) {
            ctx.issuer.preflight(c.role)?;
        }
    }
    let mut report = EnrollReport {
        schema: SCHEMA_VERSION,
        command: "renew",
        token_serial: info.serial,
        firmware: info.version,
        reader: info.reader.clone(),
        slots: Vec::new(),
        wrote_chuid_ccc: false,
        ok: false,
    };
    let mut fatal = None;
    for c in todo {
        let algorithm = crate::crypto::algorithm_of(&c.key)
            .ok_or_else(|| Error::Usage(format!("slot {}: unsupported key type", c.slot)))?;
        let sp = SlotPlan {
            slot: c.slot,
            algorithm,
            pin_policy: PinPolicy::Default,
            touch_policy: TouchPolicy::Default,
            role: c.role,
            subject: c.subject.clone(),
            ttl: None,
        };
        // A key generated by a run that died: finish with it instead of a new one.
        token.verify_pin(pin)?;
        let choice = match journal.pending(info.serial, c.slot) {
            Some(k) if k != c.key && slot_holds_key(token, c.slot, &k) => {
                log::info!(
                    "slot {}: finishing a renewal whose key was generated earlier",
                    c.slot
                );
                KeyChoice::Existing(k)
            }
            _ if reuse_key => KeyChoice::Existing(c.key.clone()),
            _ => KeyChoice::Generate,
        };
        let mut obs = JournalObserver {
            journal,
            serial: info.serial,
        };
        match enroll::enroll_slot(token, ctx, &sp, pin, choice, &mut obs) {
            Ok(a) => {
                journal.clear(info.serial, c.slot);
                report
                    .slots
                    .push(enroll::slot_report(&sp, "renewed", &a, &[]));
            }
            Err(e) => {
                report.slots.push(enroll::failed_report(&sp, &e));
                fatal = Some(e);
                break;
            }
        }
    }
    report.ok = fatal.is_none();
    Ok(enroll::Outcome { report, fatal })
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
