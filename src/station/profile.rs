//! The station profile: credential policy, allow-list, slots and subject templates.

use crate::credentials;
use crate::enroll::Ttl;
use crate::error::Error;
use crate::piv::{Algorithm, MgmAlgorithm};
use crate::profile::{self, Defaults, SlotSpec};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    pub algorithm: Option<Algorithm>,
    pub ttl: Option<Ttl>,
    #[serde(default, rename = "slot")]
    pub slots: Vec<SlotSpec>,
    /// Attestation bundle replacing the shipped Yubico one (relative to the profile);
    /// `--attestation-roots` overrides it.
    pub attestation_roots: Option<PathBuf>,
    /// What an attested key must meet before it is sent to Vault (issue 12).
    #[serde(default)]
    pub attestation: crate::attestation::AttestationPolicy,
    /// Refuse certificates whose key usage does not fit the slot (default: a warning).
    #[serde(default)]
    pub strict_usage: bool,
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
        let mut p = p;
        if let Some(r) = &p.attestation_roots {
            if r.is_relative() {
                p.attestation_roots = Some(path.parent().unwrap_or(Path::new(".")).join(r));
            }
        }
        Ok((p, allow))
    }

    pub(crate) fn defaults(&self) -> Defaults {
        Defaults {
            algorithm: self.algorithm,
            ttl: self.ttl.clone(),
            common_name: self.common_name.clone(),
            email: self.email.clone(),
            upn: self.upn.clone(),
            ..Default::default()
        }
    }

    /// The credential policy as typed values (checked by [`StationProfile::load`]).
    pub fn credential_policy(&self) -> Result<credentials::Policy, Error> {
        let c = &self.credentials;
        Ok(credentials::Policy {
            pin_length: c.pin_length,
            puk_length: c.puk_length,
            mgmt_key: match c.mgmt_key.as_str() {
                "best" => None,
                a => Some(a.parse::<MgmAlgorithm>().map_err(Error::Config)?),
            },
            protect_mgmt_key: c.protect_mgmt_key,
        })
    }
}

pub(crate) fn vars_of(e: &TokenEntry) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert("serial".to_string(), e.serial.to_string());
    for (k, val) in [("name", &e.name), ("email", &e.email), ("upn", &e.upn)] {
        if let Some(val) = val {
            v.insert(k.to_string(), val.clone());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_profile_parses() {
        let p: StationProfile =
            toml::from_str(include_str!("../../udev/station.example.toml")).expect("example");
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
