//! The per-token escrow record in Vault KV v2 (`<kv>/data/<serial>`): the credentials live
//! on the token, and new ones written *before* they are applied, so a token never ends up
//! with credentials that exist nowhere. Writes use check-and-set so two stations (or a
//! station and a helpdesk) never overwrite each other's record.

use crate::enroll::Issued;
use crate::error::Error;
use crate::piv::{MgmAlgorithm, Slot};
use crate::secret::{MgmKeyHex, Pin, Puk};
use crate::vault::{VaultClient, VaultError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use zeroize::Zeroize;

/// Version of the record layout. 1: credentials as plain strings, `state` free-form JSON
/// with the issued certificates only. 2: the same field names, typed, and each slot's
/// certificate facts (serial, fingerprint, not-after) beside its PEM. 3: a slot may carry
/// the verified attestation of its key (`state.slots.<slot>.attestation`); nothing else
/// changed, so 2 reads as 3 unchanged. The bump keeps a pivault that knows only 2 from
/// rewriting a record and silently dropping the attestation (it refuses newer schemas).
pub const RECORD_SCHEMA: u32 = 3;

/// A set of credentials. Fields are `None` when unknown (e.g. a PIN the user chose).
/// `Debug` shows only whether a secret is present (the secret types redact themselves).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<Pin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub puk: Option<Puk>,
    /// Hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mgmt_key: Option<MgmKeyHex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mgmt_key_algorithm: Option<MgmAlgorithm>,
    #[serde(default)]
    pub mgmt_key_protected: bool,
}

/// A certificate the station put (or is putting) into a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub certificate_pem: String,
    /// Issuing CA first, root last, as Vault returned it (never trusted on its own: a
    /// re-import verifies against the configured anchor).
    #[serde(default)]
    pub chain_pem: Vec<String>,
    pub serial: String,
    pub sha256_fingerprint: String,
    pub not_after: String,
    /// The key's attestation, verified when the key was generated (schema 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<crate::workflow::attest::AttestationFacts>,
}

impl SlotRecord {
    /// The record of a certificate as Vault issued it; `None` when it does not parse.
    pub fn of(issued: &Issued) -> Option<SlotRecord> {
        let der = crate::verify::pem_bundle_to_der(&issued.certificate_pem)
            .ok()?
            .into_iter()
            .next()?;
        let a = crate::verify::describe(&der).ok()?;
        Some(SlotRecord {
            certificate_pem: issued.certificate_pem.clone(),
            chain_pem: issued.chain_pem.clone(),
            serial: a.serial_hex,
            sha256_fingerprint: a.sha256,
            not_after: crate::report::rfc3339(a.not_after),
            attestation: None,
        })
    }

    pub fn issued(&self) -> Issued {
        Issued {
            certificate_pem: self.certificate_pem.clone(),
            chain_pem: self.chain_pem.clone(),
            warnings: Vec::new(),
        }
    }
}

/// What the station has done to the token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Every slot of the profile holds its recorded certificate.
    #[serde(default)]
    pub enrolled: bool,
    #[serde(default)]
    pub slots: BTreeMap<Slot, SlotRecord>,
}

/// The record kept for one token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub schema: u32,
    pub serial: u32,
    /// The credentials on the token now.
    pub live: Credentials,
    /// Credentials escrowed but not yet (known to be) applied; promoted to `live` after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Credentials>,
    #[serde(default)]
    pub state: Progress,
    #[serde(default)]
    pub updated_at: String,
    #[serde(default)]
    pub updated_by: String,
}

/// A record and the KV version it was read at (for check-and-set).
#[derive(Debug, Clone)]
pub struct Versioned {
    pub record: Record,
    /// 0 when the record does not exist yet (KV v2 `cas=0` means "create only").
    pub version: u64,
}

impl Versioned {
    /// A new, unwritten record for a token.
    pub fn new(serial: u32) -> Versioned {
        Versioned {
            record: Record {
                serial,
                ..Default::default()
            },
            version: 0,
        }
    }
}

/// Bring a record of any earlier layout to [`RECORD_SCHEMA`].
///
/// Schema 1 (and records without `schema`) kept `state.slots.<slot>` as `{certificate_pem,
/// chain_pem, warnings}`; the facts are computed from the PEM. Credentials were strings
/// then and are strings now, so they need no change.
pub fn migrate(mut v: serde_json::Value) -> Result<Record, Error> {
    let bad = |e: String| Error::Escrow(format!("escrow record: {e}"));
    let schema = v.get("schema").and_then(|s| s.as_u64()).unwrap_or(1);
    if schema > u64::from(RECORD_SCHEMA) {
        return Err(bad(format!(
            "schema {schema} is newer than this pivault understands ({RECORD_SCHEMA}); upgrade pivault"
        )));
    }
    if schema < 2 {
        if let Some(slots) = v
            .get_mut("state")
            .and_then(|s| s.get_mut("slots"))
            .and_then(|s| s.as_object_mut())
        {
            for (slot, entry) in slots.iter_mut() {
                let issued: Issued = serde_json::from_value(entry.clone())
                    .map_err(|e| bad(format!("slot {slot}: {e}")))?;
                let rec = SlotRecord::of(&issued)
                    .ok_or_else(|| bad(format!("slot {slot}: unreadable certificate")))?;
                *entry = serde_json::to_value(rec).map_err(|e| bad(e.to_string()))?;
            }
        }
    }
    let mut r: Record = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
    r.schema = RECORD_SCHEMA;
    Ok(r)
}

/// The escrow records in Vault KV, and who writes them.
pub struct Escrow<'a> {
    pub client: &'a VaultClient,
    /// For the record's `updated_by` (host and command).
    pub by: String,
}

impl Escrow<'_> {
    /// Read the record of the token with this serial (KV key = the token's serial, never a
    /// value taken from a record's contents).
    pub fn read(&self, serial: u32) -> Result<Option<Versioned>, Error> {
        match self
            .client
            .kv_read::<serde_json::Value>(&serial.to_string())?
        {
            None => Ok(None),
            Some((v, meta)) => {
                let mut record = migrate(v)?;
                if record.serial != serial {
                    return Err(Error::Escrow(format!(
                        "the record at KV key {serial} names token {}; fix it by hand",
                        record.serial
                    )));
                }
                record.serial = serial;
                Ok(Some(Versioned {
                    record,
                    version: meta.version,
                }))
            }
        }
    }

    /// Write with check-and-set against `rec.version` and move `rec.version` on.
    ///
    /// A write whose answer was lost (a timeout, a failover, or the client's own retry
    /// answered "check-and-set mismatch" because the first attempt had landed) is resolved
    /// by reading the record back: if it is exactly what was written, the write happened.
    pub fn write(&self, rec: &mut Versioned) -> Result<(), Error> {
        rec.record.schema = RECORD_SCHEMA;
        rec.record.updated_at = crate::report::rfc3339(std::time::SystemTime::now());
        rec.record.updated_by = self.by.clone();
        let key = rec.record.serial.to_string();
        match self.client.kv_write(&key, &rec.record, Some(rec.version)) {
            Ok(meta) => {
                rec.version = meta.version;
                Ok(())
            }
            Err(e) if answer_may_be_lost(&e) => {
                log::warn!("escrow write for {key}: {e}; reading the record back");
                match self.read(rec.record.serial) {
                    Ok(Some(back)) if back.record == rec.record => {
                        log::info!(
                            "escrow write for {key} had landed (version {})",
                            back.version
                        );
                        rec.version = back.version;
                        Ok(())
                    }
                    _ => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn answer_may_be_lost(e: &VaultError) -> bool {
    matches!(e, VaultError::CasMismatch { .. })
        || e.is_in_doubt()
        || e.is_transient()
        || e.is_unavailable()
}

/// A random numeric PIN/PUK of `len` digits (PIV: 6–8), never a trivial one.
pub fn random_digits(len: usize) -> zeroize::Zeroizing<String> {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let s: String = (0..len)
            .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
            .collect();
        if !is_trivial(&s) {
            return zeroize::Zeroizing::new(s);
        }
    }
}

/// A random management key for `alg`, as hex.
pub fn random_mgm_key(alg: MgmAlgorithm) -> MgmKeyHex {
    use rand::RngCore;
    let mut k = vec![0u8; alg.key_len()];
    rand::rng().fill_bytes(&mut k);
    let h = hex::encode(&k);
    k.zeroize();
    MgmKeyHex::from(h)
}

/// PINs a person must not choose: all one digit, or a run up or down (123456, 987654).
pub fn is_trivial(pin: &str) -> bool {
    let b = pin.as_bytes();
    if b.len() < 2 {
        return true;
    }
    let same = b.iter().all(|&c| c == b[0]);
    let up = b.windows(2).all(|w| w[1] == w[0].wrapping_add(1));
    let down = b.windows(2).all(|w| w[1].wrapping_add(1) == w[0]);
    same || up || down
}

/// PIV PIN rules (SP 800-73-4 3.2.1: 6–8 bytes; YubiKey: ASCII) plus "not trivial".
pub fn check_pin_policy(pin: &str) -> Result<(), Error> {
    if !(6..=8).contains(&pin.len()) {
        return Err(Error::Usage("a PIN has 6 to 8 characters".into()));
    }
    if !pin.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::Usage(
            "a PIN uses printable ASCII characters only".into(),
        ));
    }
    if is_trivial(pin) {
        return Err(Error::Usage(
            "that PIN is too easy to guess (same digit, or a run like 123456)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trivial_pins() {
        for t in ["123456", "111111", "987654", "abcdef", "00000000"] {
            assert!(is_trivial(t), "{t}");
            assert!(check_pin_policy(t).is_err());
        }
        for ok in ["482913", "73915824"] {
            assert!(!is_trivial(ok));
            assert!(check_pin_policy(ok).is_ok());
        }
        assert!(check_pin_policy("12345").is_err());
        assert!(check_pin_policy("123456789").is_err());
        assert!(check_pin_policy("48 2913").is_err());
    }

    #[test]
    fn random_values() {
        let p = random_digits(8);
        assert_eq!(p.len(), 8);
        assert!(p.chars().all(|c| c.is_ascii_digit()) && !is_trivial(&p));
        assert_eq!(random_mgm_key(MgmAlgorithm::Aes256).expose().len(), 64);
        assert_eq!(random_mgm_key(MgmAlgorithm::TripleDes).expose().len(), 48);
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials {
            pin: Some(Pin::new("482913")),
            puk: Some(Puk::new("12345678")),
            mgmt_key: Some(MgmKeyHex::new("aabb")),
            ..Default::default()
        };
        let d = format!("{c:?}");
        assert!(
            !d.contains("482913") && !d.contains("12345678") && !d.contains("aabb"),
            "{d}"
        );
    }

    /// A record exactly as pivault 0.1 wrote it (schema 1: untyped `state`).
    const SCHEMA_1: &str = r#"{
      "schema": 1, "serial": 4242,
      "live": {"pin": "48291375", "puk": "73915824",
               "mgmt_key": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
               "mgmt_key_algorithm": "aes256", "mgmt_key_protected": true},
      "state": {"enrolled": true,
                "slots": {"9a": {"certificate_pem": "CERT", "chain_pem": ["CA"], "warnings": []}}},
      "updated_at": "2026-11-30T10:00:00Z", "updated_by": "pivault station on s1"
    }"#;

    #[test]
    fn a_schema_1_record_migrates() {
        let pem = include_str!("../fixtures/escrow/leaf.pem");
        let text = SCHEMA_1.replace("CERT", &pem.replace('\n', "\\n"));
        let r = migrate(serde_json::from_str(&text).expect("json")).expect("migrated");
        assert_eq!(r.schema, RECORD_SCHEMA);
        assert_eq!(r.serial, 4242);
        assert_eq!(r.live.pin.as_ref().map(Pin::expose), Some("48291375"));
        assert_eq!(r.live.mgmt_key_algorithm, Some(MgmAlgorithm::Aes256));
        assert!(r.live.mgmt_key_protected && r.state.enrolled && r.pending.is_none());
        let s = &r.state.slots[&Slot::AUTHENTICATION];
        let der = crate::verify::pem_bundle_to_der(pem).expect("pem");
        let a = crate::verify::describe(&der[0]).expect("cert");
        assert_eq!(s.sha256_fingerprint, a.sha256);
        assert_eq!(s.serial, a.serial_hex);
        assert_eq!(s.chain_pem, vec!["CA".to_string()]);
        // And it writes back in the new layout, with the same field names.
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["live"]["puk"], "73915824");
        assert_eq!(
            v["state"]["slots"]["9a"]["sha256_fingerprint"],
            a.sha256.as_str()
        );
        assert!(migrate(serde_json::json!({"schema": 99, "serial": 1})).is_err());
    }
}
