//! Attestation policy (a profile's `[attestation]` table) and the known-vulnerable
//! firmware guard.
//!
//! ```toml
//! [attestation]
//! require = true                       # no verified attestation, no certificate
//! min_firmware = "5.7.0"
//! allowed_pin_policies = ["once", "always"]
//! allowed_touch_policies = ["always", "cached"]
//! form_factors = ["usb-a-keychain", "usb-c-keychain"]
//! fips_only = false
//! refuse_ecdsa_before_5_7 = true       # YSA-2024-03: refuse instead of only flagging
//! ```

use super::{Attestation, Edition, FormFactor, KeyAlgorithm};
use crate::piv::{FirmwareVersion, PinPolicy, TouchPolicy};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;

/// A Yubico security advisory that applies to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Advisory {
    /// YSA-2017-01 (ROCA, CVE-2017-15361): RSA keys generated on YubiKey 4 firmware
    /// 4.2.6–4.3.4 have a structure that lets the private key be computed from the public
    /// key. Always refused.
    #[serde(rename = "YSA-2017-01")]
    Roca,
    /// YSA-2024-03 (EUCLEAK): ECDSA on firmware before 5.7.0 (5.7.2 for FIPS and Bio) leaks the nonce through a
    /// side channel to an attacker with physical access and lab equipment. Flagged;
    /// refused when the policy sets `refuse_ecdsa_before_5_7`.
    #[serde(rename = "YSA-2024-03")]
    Eucleak,
}

impl Advisory {
    pub fn id(self) -> &'static str {
        match self {
            Advisory::Roca => "YSA-2017-01",
            Advisory::Eucleak => "YSA-2024-03",
        }
    }

    /// One line for `status`: what it means for the key.
    pub fn summary(self) -> &'static str {
        match self {
            Advisory::Roca => {
                "RSA key generated on firmware 4.2.6-4.3.4 (ROCA): the private key can be \
                 computed from the public key; replace the token"
            }
            Advisory::Eucleak => {
                "ECDSA key on firmware before 5.7.0 (5.7.2 for FIPS and Bio) (EUCLEAK): \
                 physical access with lab equipment may recover the key; prefer newer \
                 firmware for ECDSA"
            }
        }
    }

    pub fn url(self) -> &'static str {
        match self {
            Advisory::Roca => "https://www.yubico.com/support/security-advisories/ysa-2017-01/",
            Advisory::Eucleak => "https://www.yubico.com/support/security-advisories/ysa-2024-03/",
        }
    }
}

impl fmt::Display for Advisory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.id(), self.summary())
    }
}

/// Advisories for a key of `algorithm` generated on `firmware` (a standard YubiKey; see
/// [`advisories_for`] when the edition and form factor are known, as after attestation).
pub fn advisories(firmware: FirmwareVersion, algorithm: KeyAlgorithm) -> Vec<Advisory> {
    advisories_for(firmware, algorithm, Edition::Standard, None)
}

/// Advisories for a key, with the edition and form factor: YSA-2024-03 is fixed in 5.7.0,
/// but only in 5.7.2 for the YubiKey 5 FIPS and Bio series (Yubico, "Infineon ECDSA
/// Private Key Recovery Customer Resources"). YSA-2017-01: YubiKey 4 firmware 4.2.6–4.3.4.
pub fn advisories_for(
    firmware: FirmwareVersion,
    algorithm: KeyAlgorithm,
    edition: Edition,
    form_factor: Option<FormFactor>,
) -> Vec<Advisory> {
    let mut out = Vec::new();
    let v = |a, b, c| FirmwareVersion::new(a, b, c);
    if algorithm.is_rsa() && firmware >= v(4, 2, 6) && firmware <= v(4, 3, 4) {
        out.push(Advisory::Roca);
    }
    let bio = matches!(form_factor, Some(FormFactor::UsbABio | FormFactor::UsbCBio));
    let fixed = if edition == Edition::Fips || bio {
        v(5, 7, 2)
    } else {
        v(5, 7, 0)
    };
    if algorithm.is_ecdsa() && firmware < fixed {
        out.push(Advisory::Eucleak);
    }
    out
}

/// Rules an attested key must meet before it is sent to the PKI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationPolicy {
    /// Refuse a key that has no verified attestation.
    #[serde(default)]
    pub require: bool,
    #[serde(default, deserialize_with = "firmware_opt")]
    pub min_firmware: Option<FirmwareVersion>,
    /// Empty: any.
    #[serde(default, deserialize_with = "names")]
    pub allowed_pin_policies: Vec<PinPolicy>,
    /// Empty: any.
    #[serde(default, deserialize_with = "names")]
    pub allowed_touch_policies: Vec<TouchPolicy>,
    /// Empty: any. A token that attests no form factor (YubiKey 4) fails a non-empty list.
    #[serde(default)]
    pub form_factors: Vec<FormFactor>,
    #[serde(default)]
    pub fips_only: bool,
    /// Refuse ECDSA keys on firmware before 5.7.0 (YSA-2024-03) instead of flagging them.
    #[serde(default)]
    pub refuse_ecdsa_before_5_7: bool,
}

/// Which rule an attested key failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRefusal {
    #[error("the policy requires a verified attestation and there is none: {0}")]
    AttestationRequired(String),
    #[error(
        "RSA key generated on firmware {0}, which has the ROCA flaw (YSA-2017-01): \
         replace the token"
    )]
    Roca(FirmwareVersion),
    #[error(
        "ECDSA key on firmware {0}, which has the EUCLEAK flaw (YSA-2024-03), and the \
         policy refuses those: use a newer token or an RSA key"
    )]
    Eucleak(FirmwareVersion),
    #[error("firmware {firmware} is below the policy's minimum {min}")]
    FirmwareTooOld {
        firmware: FirmwareVersion,
        min: FirmwareVersion,
    },
    #[error("PIN policy '{got}' is not allowed (allowed: {})", list(allowed))]
    PinPolicy {
        got: PinPolicy,
        allowed: Vec<PinPolicy>,
    },
    #[error("touch policy '{got}' is not allowed (allowed: {})", list(allowed))]
    TouchPolicy {
        got: TouchPolicy,
        allowed: Vec<TouchPolicy>,
    },
    #[error("form factor {got:?} is not allowed (allowed: {allowed:?})")]
    FormFactor {
        got: Option<FormFactor>,
        allowed: Vec<FormFactor>,
    },
    #[error("the policy requires a FIPS edition; the F9 certificate says {0:?}")]
    NotFips(Edition),
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl AttestationPolicy {
    /// Called when no attestation could be had (`why`: the error): refuses if required.
    pub fn check_missing(&self, why: &str) -> Result<(), PolicyRefusal> {
        if self.require {
            return Err(PolicyRefusal::AttestationRequired(why.to_string()));
        }
        Ok(())
    }

    /// The first rule `att` fails, in the order: known-vulnerable firmware, minimum
    /// firmware, PIN policy, touch policy, form factor, FIPS.
    pub fn check(&self, att: &Attestation) -> Result<(), PolicyRefusal> {
        for adv in att.advisories() {
            match adv {
                Advisory::Roca => return Err(PolicyRefusal::Roca(att.firmware)),
                Advisory::Eucleak if self.refuse_ecdsa_before_5_7 => {
                    return Err(PolicyRefusal::Eucleak(att.firmware))
                }
                Advisory::Eucleak => {}
            }
        }
        if let Some(min) = self.min_firmware {
            if att.firmware < min {
                return Err(PolicyRefusal::FirmwareTooOld {
                    firmware: att.firmware,
                    min,
                });
            }
        }
        if !self.allowed_pin_policies.is_empty()
            && !self.allowed_pin_policies.contains(&att.pin_policy)
        {
            return Err(PolicyRefusal::PinPolicy {
                got: att.pin_policy,
                allowed: self.allowed_pin_policies.clone(),
            });
        }
        if !self.allowed_touch_policies.is_empty()
            && !self.allowed_touch_policies.contains(&att.touch_policy)
        {
            return Err(PolicyRefusal::TouchPolicy {
                got: att.touch_policy,
                allowed: self.allowed_touch_policies.clone(),
            });
        }
        if !self.form_factors.is_empty()
            && !att
                .form_factor
                .is_some_and(|f| self.form_factors.contains(&f))
        {
            return Err(PolicyRefusal::FormFactor {
                got: att.form_factor,
                allowed: self.form_factors.clone(),
            });
        }
        if self.fips_only && att.edition != Edition::Fips {
            return Err(PolicyRefusal::NotFips(att.edition));
        }
        Ok(())
    }
}

fn names<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

fn firmware_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<FirmwareVersion>, D::Error> {
    let s = String::deserialize(d)?;
    parse_firmware(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// "5.7.0" (or "5.7") as a firmware version.
pub fn parse_firmware(s: &str) -> Result<FirmwareVersion, String> {
    let bad = || format!("firmware version '{s}': use major.minor.patch, e.g. 5.7.0");
    let parts: Vec<u8> = s
        .trim()
        .split('.')
        .map(|p| p.parse::<u8>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    match parts[..] {
        [a, b] => Ok(FirmwareVersion::new(a, b, 0)),
        [a, b, c] => Ok(FirmwareVersion::new(a, b, c)),
        _ => Err(bad()),
    }
}
