//! The per-token escrow record in Vault KV v2 (`<kv>/data/<serial>`): the credentials live
//! on the token, and new ones written *before* they are applied, so a token never ends up
//! with credentials that exist nowhere. Writes use check-and-set so two stations (or a
//! station and a helpdesk) never overwrite each other's record.

use crate::error::Error;
use crate::piv::MgmAlgorithm;
use crate::vault::{KvMeta, VaultClient};
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

pub const RECORD_SCHEMA: u32 = 1;

/// A set of credentials. Fields are `None` when unknown (e.g. a PIN the user chose).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Credentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub puk: Option<String>,
    /// Hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mgmt_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mgmt_key_algorithm: Option<String>,
    #[serde(default)]
    pub mgmt_key_protected: bool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let has = |o: &Option<String>| if o.is_some() { "[redacted]" } else { "none" };
        f.debug_struct("Credentials")
            .field("pin", &has(&self.pin))
            .field("puk", &has(&self.puk))
            .field("mgmt_key", &has(&self.mgmt_key))
            .field("mgmt_key_algorithm", &self.mgmt_key_algorithm)
            .field("mgmt_key_protected", &self.mgmt_key_protected)
            .finish()
    }
}

impl Credentials {
    pub fn mgm_algorithm(&self) -> Option<MgmAlgorithm> {
        self.mgmt_key_algorithm
            .as_deref()
            .and_then(|a| a.parse().ok())
    }
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
    /// Free-form progress kept by the station (slot → issued certificate etc.).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub state: serde_json::Map<String, serde_json::Value>,
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

fn key_of(serial: u32) -> String {
    serial.to_string()
}

/// Read the token's record, if any.
pub fn read(client: &VaultClient, serial: u32) -> Result<Option<Versioned>, Error> {
    Ok(client
        .kv_read::<Record>(&key_of(serial))?
        .map(|(record, meta)| Versioned {
            record,
            version: meta.version,
        }))
}

/// Write the record with check-and-set against `version`; returns the new version.
pub fn write(client: &VaultClient, rec: &mut Record, version: u64, by: &str) -> Result<u64, Error> {
    rec.schema = RECORD_SCHEMA;
    rec.updated_at = crate::report::rfc3339(std::time::SystemTime::now());
    rec.updated_by = by.to_string();
    let meta: KvMeta = client.kv_write(&key_of(rec.serial), rec, Some(version))?;
    Ok(meta.version)
}

/// A random numeric PIN/PUK of `len` digits (PIV: 6–8), never a trivial one.
pub fn random_digits(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let s: String = (0..len)
            .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
            .collect();
        if !is_trivial(&s) {
            return s;
        }
    }
}

/// A random management key for `alg`, as hex.
pub fn random_mgm_key(alg: MgmAlgorithm) -> String {
    use rand::RngCore;
    let mut k = vec![0u8; alg.key_len()];
    rand::rng().fill_bytes(&mut k);
    let h = hex::encode(&k);
    k.zeroize();
    h
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
        assert_eq!(random_mgm_key(MgmAlgorithm::Aes256).len(), 64);
        assert_eq!(random_mgm_key(MgmAlgorithm::TripleDes).len(), 48);
    }

    #[test]
    fn debug_hides_secrets() {
        let mut c = Credentials::default();
        c.pin = Some("482913".into());
        c.puk = Some("12345678".into());
        c.mgmt_key = Some("aabb".into());
        let d = format!("{c:?}");
        assert!(
            !d.contains("482913") && !d.contains("12345678") && !d.contains("aabb"),
            "{d}"
        );
    }
}
