//! Typed values an attestation carries: key algorithm, form factor, edition.

use super::{AttestationError, OID_EC, OID_ED25519, OID_P256, OID_P384, OID_RSA, OID_X25519};
use const_oid::ObjectIdentifier;
use der::Encode;
use serde::{Deserialize, Serialize};
use spki::SubjectPublicKeyInfoOwned;
use std::fmt;

/// Key types a YubiKey generates (RSA-1024 and X25519 included: they can be attested).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    Rsa1024,
    Rsa2048,
    Rsa3072,
    Rsa4096,
    P256,
    P384,
    Ed25519,
    X25519,
}

impl KeyAlgorithm {
    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            KeyAlgorithm::Rsa1024
                | KeyAlgorithm::Rsa2048
                | KeyAlgorithm::Rsa3072
                | KeyAlgorithm::Rsa4096
        )
    }

    /// ECDSA keys (P-256/P-384), the ones YSA-2024-03 is about.
    pub fn is_ecdsa(self) -> bool {
        matches!(self, KeyAlgorithm::P256 | KeyAlgorithm::P384)
    }

    /// pivault's generation type for this key, when it has one.
    pub fn piv(self) -> Option<crate::piv::Algorithm> {
        use crate::piv::Algorithm as A;
        Some(match self {
            KeyAlgorithm::Rsa2048 => A::Rsa2048,
            KeyAlgorithm::Rsa3072 => A::Rsa3072,
            KeyAlgorithm::Rsa4096 => A::Rsa4096,
            KeyAlgorithm::P256 => A::P256,
            KeyAlgorithm::P384 => A::P384,
            KeyAlgorithm::Ed25519 => A::Ed25519,
            KeyAlgorithm::Rsa1024 | KeyAlgorithm::X25519 => return None,
        })
    }

    /// The type of a SubjectPublicKeyInfo.
    pub fn of(spki: &SubjectPublicKeyInfoOwned) -> Result<KeyAlgorithm, AttestationError> {
        let oid = spki.algorithm.oid;
        if oid == OID_RSA {
            use rsa::{pkcs8::DecodePublicKey, traits::PublicKeyParts};
            let der = spki
                .to_der()
                .map_err(|e| AttestationError::UnsupportedKey(e.to_string()))?;
            let key = rsa::RsaPublicKey::from_public_key_der(&der)
                .map_err(|e| AttestationError::UnsupportedKey(format!("RSA: {e}")))?;
            return match key.size() * 8 {
                1024 => Ok(KeyAlgorithm::Rsa1024),
                2048 => Ok(KeyAlgorithm::Rsa2048),
                3072 => Ok(KeyAlgorithm::Rsa3072),
                4096 => Ok(KeyAlgorithm::Rsa4096),
                n => Err(AttestationError::UnsupportedKey(format!("RSA-{n}"))),
            };
        }
        if oid == OID_EC {
            let curve: Option<ObjectIdentifier> = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as().ok());
            return match curve {
                Some(c) if c == OID_P256 => Ok(KeyAlgorithm::P256),
                Some(c) if c == OID_P384 => Ok(KeyAlgorithm::P384),
                c => Err(AttestationError::UnsupportedKey(format!("EC curve {c:?}"))),
            };
        }
        match oid {
            o if o == OID_ED25519 => Ok(KeyAlgorithm::Ed25519),
            o if o == OID_X25519 => Ok(KeyAlgorithm::X25519),
            o => Err(AttestationError::UnsupportedKey(o.to_string())),
        }
    }
}

impl From<crate::piv::Algorithm> for KeyAlgorithm {
    fn from(a: crate::piv::Algorithm) -> Self {
        use crate::piv::Algorithm as A;
        match a {
            A::P256 => KeyAlgorithm::P256,
            A::P384 => KeyAlgorithm::P384,
            A::Rsa2048 => KeyAlgorithm::Rsa2048,
            A::Rsa3072 => KeyAlgorithm::Rsa3072,
            A::Rsa4096 => KeyAlgorithm::Rsa4096,
            A::Ed25519 => KeyAlgorithm::Ed25519,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::Rsa1024 => "rsa1024",
            KeyAlgorithm::Rsa2048 => "rsa2048",
            KeyAlgorithm::Rsa3072 => "rsa3072",
            KeyAlgorithm::Rsa4096 => "rsa4096",
            KeyAlgorithm::P256 => "p256",
            KeyAlgorithm::P384 => "p384",
            KeyAlgorithm::Ed25519 => "ed25519",
            KeyAlgorithm::X25519 => "x25519",
        })
    }
}

/// The device shape, from extension 41482.3.9 (values as in ykman's FORM_FACTOR; the
/// high bits are flags: 0x80 FIPS, 0x40 "Security Key").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FormFactor {
    Unknown,
    UsbAKeychain,
    UsbANano,
    UsbCKeychain,
    UsbCNano,
    UsbCLightning,
    UsbABio,
    UsbCBio,
}

impl FormFactor {
    pub(super) fn from_byte(b: u8) -> Option<FormFactor> {
        Some(match b & 0x0f {
            0 => FormFactor::Unknown,
            1 => FormFactor::UsbAKeychain,
            2 => FormFactor::UsbANano,
            3 => FormFactor::UsbCKeychain,
            4 => FormFactor::UsbCNano,
            5 => FormFactor::UsbCLightning,
            6 => FormFactor::UsbABio,
            7 => FormFactor::UsbCBio,
            _ => return None,
        })
    }
}

/// Certified edition, from the F9 certificate's 41482.3.10 / .11 (and the form factor's
/// FIPS flag, which Yubico documents as 0x8n "for FIPS devices").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Edition {
    Standard,
    Fips,
    Cspn,
}
