//! The provisioning station: watch every reader, and enroll each inserted token per a
//! profile with random credentials escrowed in Vault KV *before* they are applied.
//!
//! Crash safety rests on two records: the KV escrow record (credentials live/pending,
//! certificates issued per slot, check-and-set) and a local fsynced journal (keys
//! generated, certificates issued) under the journal directory. A re-run reads both and
//! resumes: credentials are probed in a fixed order, a slot whose certificate was issued
//! is re-imported rather than issued again, and nothing is skipped silently.

use crate::enroll::{self, Context, Issued, KeyChoice, Observer, SlotPlan};
use crate::error::Error;
use crate::escrow::{self, Credentials, Versioned};
use crate::issuer::VaultIssuer;
use crate::piv::yubikey::{Selector, YubiKeyToken};
use crate::piv::{MgmAlgorithm, PivToken, Slot, TokenError, DEFAULT_MGM_KEY_HEX};
use crate::profile::{self, Defaults, SlotSpec};
use crate::readers::{ReaderEvent, Watcher};
use crate::renew::slot_holds_key;
use crate::secret::{MgmKeyHex, Pin, Puk};
use der::{Decode, Encode};
use serde::{Deserialize, Serialize};
use spki::SubjectPublicKeyInfoOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Factory PIN and PUK of a YubiKey (Yubico PIV documentation).
const FACTORY_PIN: &str = "123456";
const FACTORY_PUK: &str = "12345678";

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CredentialPolicy {
    /// Digits of the random PIN (6–8).
    #[serde(default = "eight")]
    pub pin_length: usize,
    /// Digits of the random PUK (6–8).
    #[serde(default = "eight")]
    pub puk_length: usize,
    /// `best` (AES-256 where the firmware has AES, else 3DES) or an algorithm name.
    #[serde(default = "best")]
    pub mgmt_key: String,
    /// Also keep the management key PIN-protected on the token (so `renew` needs only the PIN).
    #[serde(default = "yes")]
    pub protect_mgmt_key: bool,
}

fn eight() -> usize {
    8
}
fn best() -> String {
    "best".into()
}
fn yes() -> bool {
    true
}

impl Default for CredentialPolicy {
    fn default() -> Self {
        CredentialPolicy {
            pin_length: 8,
            puk_length: 8,
            mgmt_key: best(),
            protect_mgmt_key: true,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokensSection {
    /// TOML file of `[[token]]` entries: serial, name, email, upn.
    pub allow_list: Option<PathBuf>,
    /// Enroll serials missing from the allow-list (subjects from templates of `{serial}`).
    #[serde(default)]
    pub allow_unknown: bool,
}

/// A station profile file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StationProfile {
    #[serde(default)]
    pub credentials: CredentialPolicy,
    #[serde(default)]
    pub tokens: TokensSection,
    pub common_name: Option<String>,
    pub email: Option<String>,
    pub upn: Option<String>,
    pub algorithm: Option<String>,
    pub ttl: Option<String>,
    #[serde(default, rename = "slot")]
    pub slots: Vec<SlotSpec>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub serial: u32,
    pub name: Option<String>,
    pub email: Option<String>,
    pub upn: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowList {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

impl StationProfile {
    /// Parse and check a profile (and its allow-list) before any token is touched.
    pub fn load(path: &Path) -> Result<(StationProfile, BTreeMap<u32, TokenEntry>), Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let p: StationProfile =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        if p.slots.is_empty() {
            return Err(Error::Config(format!("{}: no [[slot]]", path.display())));
        }
        for (what, n) in [
            ("pin_length", p.credentials.pin_length),
            ("puk_length", p.credentials.puk_length),
        ] {
            if !(6..=8).contains(&n) {
                return Err(Error::Config(format!("credentials.{what} must be 6 to 8")));
            }
        }
        if p.credentials.mgmt_key != "best" {
            p.credentials
                .mgmt_key
                .parse::<MgmAlgorithm>()
                .map_err(Error::Config)?;
        }
        let mut allow = BTreeMap::new();
        if let Some(f) = &p.tokens.allow_list {
            let f = if f.is_relative() {
                path.parent().unwrap_or(Path::new(".")).join(f)
            } else {
                f.clone()
            };
            let text = std::fs::read_to_string(&f).map_err(|e| {
                Error::Config(format!("cannot read allow-list {}: {e}", f.display()))
            })?;
            let list: AllowList = toml::from_str(&text)
                .map_err(|e| Error::Config(format!("{}: {e}", f.display())))?;
            for t in list.token {
                allow.insert(t.serial, t);
            }
        } else if !p.tokens.allow_unknown {
            return Err(Error::Config(
                "the profile names no tokens.allow_list and does not set tokens.allow_unknown"
                    .into(),
            ));
        }
        // Every template must render for a made-up token.
        let probe = TokenEntry {
            serial: 1,
            name: Some("n".into()),
            email: Some("e@example.org".into()),
            upn: Some("u@example.org".into()),
        };
        profile::resolve(&p.slots, &p.defaults(), &vars_of(&probe))?;
        Ok((p, allow))
    }

    fn defaults(&self) -> Defaults {
        Defaults {
            algorithm: self.algorithm.clone(),
            ttl: self.ttl.clone(),
            common_name: self.common_name.clone(),
            email: self.email.clone(),
            upn: self.upn.clone(),
            ..Default::default()
        }
    }

    fn mgm_algorithm(&self, token: &dyn PivToken) -> MgmAlgorithm {
        self.credentials
            .mgmt_key
            .parse()
            .unwrap_or_else(|_| MgmAlgorithm::best_for(token.info().version))
    }
}

fn vars_of(e: &TokenEntry) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert("serial".to_string(), e.serial.to_string());
    for (k, val) in [("name", &e.name), ("email", &e.email), ("upn", &e.upn)] {
        if let Some(val) = val {
            v.insert(k.to_string(), val.clone());
        }
    }
    v
}

/// One line of the station report (JSON Lines).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenLine {
    pub schema: u32,
    pub time: String,
    pub serial: Option<u32>,
    pub reader: String,
    /// enrolled, resumed, already-enrolled, refused, removed, failed
    pub result: String,
    pub slots: Vec<SlotLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_version: Option<u64>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The failure was Vault being unavailable: trying again later may succeed.
    #[serde(skip)]
    pub vault_unavailable: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SlotLine {
    pub slot: Slot,
    /// enrolled, reimported, kept
    pub action: String,
    pub certificate_serial: String,
    pub not_after: String,
    pub sha256_fingerprint: String,
}

/// The local journal of one token: keys generated and certificates issued, no secrets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Journal {
    #[serde(default)]
    keys: BTreeMap<String, String>,
    #[serde(default)]
    issued: BTreeMap<String, Issued>,
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Config(format!("journal {}: {e}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

impl Journal {
    fn path(dir: &Path, serial: u32) -> PathBuf {
        dir.join(format!("{serial}.json"))
    }
    fn load(dir: &Path, serial: u32) -> Journal {
        std::fs::read(Self::path(dir, serial))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
    fn save(&self, dir: &Path, serial: u32) -> Result<(), Error> {
        let bytes = serde_json::to_vec(self).map_err(|e| Error::Config(e.to_string()))?;
        write_durably(&Self::path(dir, serial), &bytes)
    }
    fn key(&self, slot: Slot) -> Option<SubjectPublicKeyInfoOwned> {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD
            .decode(self.keys.get(&slot.to_string())?)
            .ok()?;
        SubjectPublicKeyInfoOwned::from_der(&b).ok()
    }
}

/// The station: one Vault session, a profile, where to journal.
pub struct Station<'a> {
    pub issuer: &'a VaultIssuer,
    pub profile: StationProfile,
    pub allow: BTreeMap<u32, TokenEntry>,
    pub journal_dir: PathBuf,
    pub anchors_der: Vec<Vec<u8>>,
    /// Who writes escrow records (host name), for the record's `updated_by`.
    pub by: String,
    /// Test hook: abort the process right after this step (escrow, generate, sign, import),
    /// as a power cut would.
    pub abort_after: Option<String>,
    /// Roles whose sign path Vault already accepted in this run: the pre-flight request is
    /// made once per role per station run, not once per token.
    pub preflighted: std::sync::Mutex<BTreeSet<&'static str>>,
}

/// Records each slot's progress in the journal and the escrow record as it happens.
struct Recorder<'s, 'a> {
    st: &'s Station<'a>,
    serial: u32,
    journal: &'s mut Journal,
    rec: &'s mut Versioned,
}

impl Observer for Recorder<'_, '_> {
    fn generated(&mut self, slot: Slot, key: &SubjectPublicKeyInfoOwned) -> Result<(), Error> {
        use base64::Engine;
        let der = key.to_der().map_err(|e| Error::Config(e.to_string()))?;
        self.journal.keys.insert(
            slot.to_string(),
            base64::engine::general_purpose::STANDARD.encode(der),
        );
        self.journal.save(&self.st.journal_dir, self.serial)?;
        self.st.checkpoint("generate");
        Ok(())
    }

    fn issued(&mut self, slot: Slot, cert: &Issued) -> Result<(), Error> {
        self.journal.issued.insert(slot.to_string(), cert.clone());
        self.journal.save(&self.st.journal_dir, self.serial)?;
        let slots = self
            .rec
            .record
            .state
            .entry("slots")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(m) = slots.as_object_mut() {
            m.insert(
                slot.to_string(),
                serde_json::to_value(cert).map_err(|e| Error::Config(e.to_string()))?,
            );
        }
        self.st.write(self.rec)?;
        self.st.checkpoint("sign");
        Ok(())
    }
}

fn sha_of_pem(pem: &str) -> Option<String> {
    crate::verify::pem_bundle_to_der(pem)
        .ok()?
        .first()
        .map(|d| crate::crypto::sha256_hex(d))
}

impl Station<'_> {
    fn checkpoint(&self, step: &str) {
        if self.abort_after.as_deref() == Some(step) {
            log::warn!("test hook: aborting after '{step}'");
            std::process::abort();
        }
    }

    fn write(&self, rec: &mut Versioned) -> Result<(), Error> {
        rec.version = escrow::write(self.issuer.client(), &mut rec.record, rec.version, &self.by)?;
        Ok(())
    }

    /// Bring the token to the escrowed credentials and leave it unlocked (PIN verified,
    /// management key authenticated). New credentials are escrowed as `pending` before
    /// the first is applied; each is promoted to `live` right after it is applied.
    fn credentials(&self, token: &mut dyn PivToken, rec: &mut Versioned) -> Result<Pin, Error> {
        let v = token.info().version;
        if rec.version == 0 || rec.record.live.mgmt_key.is_none() {
            // No record: only a token in factory state is taken. The default management key
            // is tried first because it has no retry counter; a PIN try would cost one.
            let factory_alg = MgmAlgorithm::factory_default(v);
            token
                .authenticate(&MgmKeyHex::new(DEFAULT_MGM_KEY_HEX), factory_alg)
                .map_err(|e| match e {
                    TokenError::MgmKeyRejected => Error::Usage(
                        "the token is not in factory state and Vault has no escrow record for it; \
                         reset it (ykman piv reset) or escrow its credentials first"
                            .into(),
                    ),
                    e => e.into(),
                })?;
            rec.record.serial = token.info().serial;
            rec.record.live = Credentials {
                pin: Some(FACTORY_PIN.into()),
                puk: Some(FACTORY_PUK.into()),
                mgmt_key: Some(DEFAULT_MGM_KEY_HEX.into()),
                mgmt_key_algorithm: Some(factory_alg.name().into()),
                mgmt_key_protected: false,
            };
        }
        if rec.record.pending.is_none() && rec.record.live.pin.as_deref() == Some(FACTORY_PIN) {
            let pol = &self.profile.credentials;
            let alg = self.profile.mgm_algorithm(token);
            rec.record.pending = Some(Credentials {
                pin: Some(escrow::random_digits(pol.pin_length)),
                puk: Some(escrow::random_digits(pol.puk_length)),
                mgmt_key: Some(escrow::random_mgm_key(alg)),
                mgmt_key_algorithm: Some(alg.name().into()),
                mgmt_key_protected: pol.protect_mgmt_key,
            });
            self.write(rec)?;
            self.checkpoint("escrow");
        }
        if let Some(p) = rec.record.pending.clone() {
            self.apply(token, rec, &p)?;
            rec.record.pending = None;
            self.write(rec)?;
        }
        let live = &rec.record.live;
        let pin = Pin::new(
            live.pin
                .clone()
                .ok_or_else(|| Error::Config("escrow record without PIN".into()))?,
        );
        let key = MgmKeyHex::new(
            live.mgmt_key
                .clone()
                .ok_or_else(|| Error::Config("escrow record without management key".into()))?,
        );
        let alg = live
            .mgm_algorithm()
            .unwrap_or_else(|| MgmAlgorithm::factory_default(v));
        enroll::verify_pin_safely(token, &pin)?;
        token.authenticate(&key, alg)?;
        Ok(pin)
    }

    /// Apply pending credentials in a fixed order (PIN, PUK, management key), probing each
    /// first so that a run that died between "applied" and "recorded" is finished.
    fn apply(
        &self,
        token: &mut dyn PivToken,
        rec: &mut Versioned,
        p: &Credentials,
    ) -> Result<(), Error> {
        let missing = || Error::Config("pending credentials are incomplete".into());
        // PIN: the live one first (the usual state after a crash is "not yet applied").
        if rec.record.live.pin != p.pin {
            let new = Pin::new(p.pin.clone().ok_or_else(missing)?);
            let old = Pin::new(rec.record.live.pin.clone().ok_or_else(missing)?);
            match enroll::verify_pin_safely(token, &old) {
                Ok(()) => token.change_pin(&old, &new)?,
                Err(Error::Token(TokenError::WrongPin { .. })) => {
                    enroll::verify_pin_safely(token, &new)?
                }
                Err(e) => return Err(e),
            }
            rec.record.live.pin = p.pin.clone();
            self.write(rec)?;
        }
        // PUK: a change that fails with the old one is retried as "new → new", which only
        // succeeds if the new one is already set.
        if rec.record.live.puk != p.puk {
            let new = Puk::new(p.puk.clone().ok_or_else(missing)?);
            let old = Puk::new(rec.record.live.puk.clone().ok_or_else(missing)?);
            match token.change_puk(&old, &new) {
                Ok(()) => {}
                Err(TokenError::WrongPuk { .. }) => token.change_puk(&new, &new)?,
                Err(e) => return Err(e.into()),
            }
            rec.record.live.puk = p.puk.clone();
            self.write(rec)?;
        }
        // Management key: authenticate with the live one, else the pending one (no retry
        // counter on either), then (re)write the pending one so protection is in place.
        if rec.record.live.mgmt_key != p.mgmt_key
            || rec.record.live.mgmt_key_protected != p.mgmt_key_protected
        {
            let v = token.info().version;
            let live_alg = rec
                .record
                .live
                .mgm_algorithm()
                .unwrap_or_else(|| MgmAlgorithm::factory_default(v));
            let new_alg = p.mgm_algorithm().unwrap_or(live_alg);
            let live_key = MgmKeyHex::new(rec.record.live.mgmt_key.clone().ok_or_else(missing)?);
            let new_key = MgmKeyHex::new(p.mgmt_key.clone().ok_or_else(missing)?);
            // Protected storage needs the PIN verified; verify first, because reading the
            // retry counter re-SELECTs the application, which ends a management-key session.
            let pin = Pin::new(rec.record.live.pin.clone().ok_or_else(missing)?);
            enroll::verify_pin_safely(token, &pin)?;
            if token.authenticate(&live_key, live_alg).is_err() {
                token.authenticate(&new_key, new_alg)?;
            }
            token.set_mgm_key(&new_key, new_alg, p.mgmt_key_protected)?;
            rec.record.live.mgmt_key = p.mgmt_key.clone();
            rec.record.live.mgmt_key_algorithm = p.mgmt_key_algorithm.clone();
            rec.record.live.mgmt_key_protected = p.mgmt_key_protected;
            self.write(rec)?;
        }
        Ok(())
    }

    /// Enroll one token per the profile, resuming whatever an earlier run left.
    pub fn process(&self, token: &mut dyn PivToken) -> TokenLine {
        let t0 = Instant::now();
        let info = token.info().clone();
        let mut line = TokenLine {
            schema: crate::report::SCHEMA_VERSION,
            time: crate::report::rfc3339(SystemTime::now()),
            serial: Some(info.serial),
            reader: info.reader.clone(),
            result: "failed".into(),
            slots: Vec::new(),
            record_version: None,
            duration_ms: 0,
            error: None,
            vault_unavailable: false,
        };
        match self.process_inner(token, &mut line) {
            Ok(()) => {}
            Err(e) => {
                line.vault_unavailable = matches!(&e, Error::Vault(v) if v.is_unavailable());
                line.result = match &e {
                    Error::Token(TokenError::CardRemoved) => "removed".into(),
                    _ if line.result == "refused" => "refused".into(),
                    _ => "failed".into(),
                };
                line.error = Some(match e.hint() {
                    Some(h) => format!("{e} ({h})"),
                    None => e.to_string(),
                });
            }
        }
        line.duration_ms = t0.elapsed().as_millis() as u64;
        line
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
                line.result = "refused".into();
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
        for sp in &plan {
            let done = self
                .preflighted
                .lock()
                .map(|s| s.contains(sp.role.name()))
                .unwrap_or(false);
            if !done {
                enroll::Issuer::preflight(self.issuer, sp.role)?;
                if let Ok(mut s) = self.preflighted.lock() {
                    s.insert(sp.role.name());
                }
            }
        }
        let client = self.issuer.client();
        let mut rec = escrow::read(client, serial)?.unwrap_or(Versioned {
            record: escrow::Record {
                serial,
                ..Default::default()
            },
            version: 0,
        });
        let mut journal = Journal::load(&self.journal_dir, serial);

        // Already done per the profile and the token agrees: leave it alone.
        if rec.record.state.get("enrolled") == Some(&serde_json::Value::Bool(true)) {
            let mut all = true;
            for sp in &plan {
                let want = rec
                    .record
                    .state
                    .get("slots")
                    .and_then(|s| s.get(sp.slot.to_string()));
                let want_sha = want
                    .and_then(|w| w.get("certificate_pem"))
                    .and_then(|p| p.as_str())
                    .and_then(sha_of_pem);
                let have = token
                    .read_certificate(sp.slot)?
                    .map(|d| crate::crypto::sha256_hex(&d));
                all &= want_sha.is_some() && want_sha == have;
            }
            if all {
                line.result = "already-enrolled".into();
                line.record_version = Some(rec.version);
                for sp in &plan {
                    if let Some(d) = token.read_certificate(sp.slot)? {
                        line.slots.push(slot_line(sp.slot, "kept", &describe(&d)?));
                    }
                }
                return Ok(());
            }
        }
        let resumed = rec.version != 0 || !journal.keys.is_empty();

        let pin = self.credentials(token, &mut rec)?;
        let ctx = Context {
            issuer: self.issuer,
            anchors_der: self.anchors_der.clone(),
        };
        for sp in &plan {
            let recorded: Option<Issued> = journal
                .issued
                .get(&sp.slot.to_string())
                .cloned()
                .or_else(|| {
                    rec.record
                        .state
                        .get("slots")
                        .and_then(|s| s.get(sp.slot.to_string()))
                        .and_then(|v| serde_json::from_value(v.clone()).ok())
                });
            let current = token.read_certificate(sp.slot)?;
            if let Some(iss) = &recorded {
                let rec_der = crate::verify::pem_bundle_to_der(&iss.certificate_pem)
                    .ok()
                    .and_then(|v| v.into_iter().next());
                if let Some(rec_der) = rec_der {
                    if current.as_deref() == Some(rec_der.as_slice()) {
                        line.slots
                            .push(slot_line(sp.slot, "kept", &describe(&rec_der)?));
                        continue;
                    }
                    let key = x509_cert::Certificate::from_der(&rec_der)
                        .map(|c| c.tbs_certificate().subject_public_key_info().clone())
                        .map_err(|e| Error::Config(e.to_string()))?;
                    token.verify_pin(&pin)?;
                    if slot_holds_key(token, sp.slot, &key) {
                        // Issued before a crash: import it, never ask Vault again.
                        let a = enroll::import_issued(token, &ctx, sp, &key, iss)?;
                        self.checkpoint("import");
                        line.slots.push(slot_line(sp.slot, "reimported", &a));
                        continue;
                    }
                }
            }
            token.verify_pin(&pin)?;
            let choice = match journal.key(sp.slot) {
                Some(k) if slot_holds_key(token, sp.slot, &k) => KeyChoice::Existing(k),
                _ => KeyChoice::Generate,
            };
            let mut obs = Recorder {
                st: self,
                serial,
                journal: &mut journal,
                rec: &mut rec,
            };
            // enroll_slot has read the certificate back and compared it already.
            let a = enroll::enroll_slot(token, &ctx, sp, &pin, choice, &mut obs)?;
            self.checkpoint("import");
            line.slots.push(slot_line(sp.slot, "enrolled", &a));
        }
        token.ensure_chuid_ccc()?;
        rec.record
            .state
            .insert("enrolled".into(), serde_json::Value::Bool(true));
        self.write(&mut rec)?;
        let _ = std::fs::remove_file(Journal::path(&self.journal_dir, serial));
        line.record_version = Some(rec.version);
        line.result = if resumed {
            "resumed".into()
        } else {
            "enrolled".into()
        };
        Ok(())
    }
}

fn describe(der: &[u8]) -> Result<crate::verify::Accepted, Error> {
    crate::verify::describe(der).map_err(|e| Error::Config(e.to_string()))
}

fn slot_line(slot: Slot, action: &str, a: &crate::verify::Accepted) -> SlotLine {
    SlotLine {
        slot,
        action: action.into(),
        certificate_serial: a.serial_hex.clone(),
        not_after: crate::report::rfc3339(a.not_after),
        sha256_fingerprint: a.sha256.clone(),
    }
}

/// Append a line to the report file and fsync it.
pub fn append_report(path: &Path, line: &TokenLine) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Config(format!("report {}: {e}", path.display()));
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    let mut text = serde_json::to_string(line).map_err(|e| Error::Config(e.to_string()))?;
    text.push('\n');
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

/// When a station run ends by itself.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop after this many token reports.
    pub max_tokens: Option<usize>,
    /// Stop when no token is in flight and nothing happened for this long.
    pub idle_exit: Option<Duration>,
    /// Watch only these readers (exact PC/SC names); all when empty.
    pub readers: Vec<String>,
    /// How long a token waits in its reader for an unavailable Vault before it is reported
    /// failed.
    pub vault_wait: Duration,
}

/// Counts for the closing summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub tokens: usize,
    pub enrolled: usize,
    pub already_enrolled: usize,
    pub failed: usize,
}

/// Watch the readers and enroll tokens in parallel (one thread per reader) until `stop`
/// is set (SIGINT/SIGTERM) or an option ends the run; tokens in flight are finished first.
pub fn run(
    st: &Station<'_>,
    opts: &RunOptions,
    stop: &AtomicBool,
    on_event: &(dyn Fn(&str) + Sync),
    on_line: &mut dyn FnMut(&TokenLine),
) -> Result<Summary, Error> {
    let mut watcher = Watcher::new()?;
    let mut summary = Summary::default();
    std::thread::scope(|s| -> Result<(), Error> {
        let (tx, rx) = std::sync::mpsc::channel::<(String, TokenLine)>();
        let mut busy: BTreeSet<String> = BTreeSet::new();
        let mut last_activity = Instant::now();
        loop {
            let done = stop.load(Ordering::SeqCst)
                || opts
                    .max_tokens
                    .is_some_and(|m| summary.tokens + busy.len() >= m)
                || (busy.is_empty()
                    && opts.idle_exit.is_some_and(|d| last_activity.elapsed() >= d));
            if done {
                break;
            }
            let mine = |r: &str| opts.readers.is_empty() || opts.readers.iter().any(|x| x == r);
            for ev in watcher.poll(Duration::from_millis(250))? {
                match ev {
                    ReaderEvent::Inserted(r) | ReaderEvent::Removed(r) if !mine(&r) => {}
                    ReaderEvent::Inserted(reader) if !busy.contains(&reader) => {
                        last_activity = Instant::now();
                        on_event(&format!("{reader}: token inserted"));
                        busy.insert(reader.clone());
                        let tx = tx.clone();
                        s.spawn(move || {
                            let line = match YubiKeyToken::open(&Selector {
                                serial: None,
                                reader: Some(reader.clone()),
                            }) {
                                Ok(mut t) => {
                                    let serial = t.info().serial;
                                    on_event(&format!("{reader}: serial {serial} working"));
                                    let t0 = Instant::now();
                                    loop {
                                        let line = st.process(&mut t);
                                        // Vault away: the token waits in its reader and the
                                        // work resumes (journal + record) when it is back.
                                        if !line.vault_unavailable
                                            || stop.load(Ordering::SeqCst)
                                            || t0.elapsed() >= opts.vault_wait
                                        {
                                            break line;
                                        }
                                        on_event(&format!(
                                            "{reader}: serial {serial} waiting for Vault: {}",
                                            line.error.as_deref().unwrap_or("unavailable")
                                        ));
                                        std::thread::sleep(Duration::from_secs(2));
                                    }
                                }
                                Err(e) => TokenLine {
                                    schema: crate::report::SCHEMA_VERSION,
                                    time: crate::report::rfc3339(SystemTime::now()),
                                    serial: None,
                                    reader: reader.clone(),
                                    result: "failed".into(),
                                    slots: Vec::new(),
                                    record_version: None,
                                    duration_ms: 0,
                                    error: Some(e.to_string()),
                                    vault_unavailable: false,
                                },
                            };
                            let _ = tx.send((reader, line));
                        });
                    }
                    ReaderEvent::Removed(reader) => {
                        last_activity = Instant::now();
                        on_event(&format!("{reader}: token removed"));
                    }
                    ReaderEvent::Inserted(_) => {}
                }
            }
            while let Ok((reader, line)) = rx.try_recv() {
                busy.remove(&reader);
                last_activity = Instant::now();
                summary.count(&line);
                on_line(&line);
            }
        }
        // Finish the tokens in flight.
        drop(tx);
        while !busy.is_empty() {
            match rx.recv() {
                Ok((reader, line)) => {
                    busy.remove(&reader);
                    summary.count(&line);
                    on_line(&line);
                }
                Err(_) => break,
            }
        }
        Ok(())
    })?;
    Ok(summary)
}

impl Summary {
    fn count(&mut self, l: &TokenLine) {
        self.tokens += 1;
        match l.result.as_str() {
            "enrolled" | "resumed" => self.enrolled += 1,
            "already-enrolled" => self.already_enrolled += 1,
            _ => self.failed += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_profile_parses() {
        let p: StationProfile =
            toml::from_str(include_str!("../udev/station.example.toml")).expect("example");
        assert_eq!(p.slots.len(), 3);
        assert_eq!(p.common_name.as_deref(), Some("{name}"));
    }

    #[test]
    fn profiles_are_checked() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("station.toml");
        let list = dir.path().join("tokens.toml");
        std::fs::write(&list, "[[token]]\nserial = 7\nname = \"Jane\"\n").expect("write");
        std::fs::write(
            &p,
            "[tokens]\nallow_list = \"tokens.toml\"\n[credentials]\npin_length = 6\n\
             [[slot]]\nslot = \"9a\"\ncommon_name = \"{name} ({serial})\"\n",
        )
        .expect("write");
        let (prof, allow) = StationProfile::load(&p).expect("profile");
        assert_eq!(prof.credentials.pin_length, 6);
        assert_eq!(
            allow.get(&7).and_then(|t| t.name.clone()).as_deref(),
            Some("Jane")
        );

        for bad in [
            "[[slot]]\nslot = \"9a\"\ncommon_name = \"x\"\n", // no allow-list, no allow_unknown
            "[tokens]\nallow_unknown = true\n",              // no slot
            "[tokens]\nallow_unknown = true\n[credentials]\npin_length = 9\n[[slot]]\nslot = \"9a\"\ncommon_name = \"x\"\n",
            "[tokens]\nallow_unknown = true\n[[slot]]\nslot = \"9a\"\ncommon_name = \"{nope}\"\n",
        ] {
            std::fs::write(&p, bad).expect("write");
            assert!(StationProfile::load(&p).is_err(), "{bad}");
        }
    }
}
