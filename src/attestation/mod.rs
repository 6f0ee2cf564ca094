//! YubiKey PIV attestation: prove a key was generated on a genuine YubiKey, and read what
//! the token says about it.
//!
//! ATTEST (INS F9) makes an X.509 certificate for a slot's generated key, signed by the
//! token's F9 attestation key; the F9 certificate chains to one of Yubico's roots
//! (Yubico, "PIV attestation", developers.yubico.com/PIV/Introduction/PIV_attestation.html):
//!
//! ```text
//! slot attestation  --signed by-->  F9 (per device)  -->  [intermediates]  -->  root
//! firmware < 5.7.4:                  F9 --> Yubico PIV Root CA Serial 263751
//! some 2017/2018 YubiKey 4:          F9 --> Yubico U2F Root CA Serial 457200631
//! firmware >= 5.7.4:                 F9 --> PIV Attestation A 1 / B 1 / B2 1
//!                                       --> Attestation Intermediate A 1 / B 1
//!                                       --> Yubico Attestation Root 1
//! ```
//!
//! Why not rustls-webpki (which pivault uses for Vault's certificates) for the path: real
//! Yubico chains break RFC 5280 path rules that webpki rightly enforces. YubiKey 4 F9
//! certificates carry no basicConstraints (webpki: `EndEntityUsedAsCa`, openssl: "invalid
//! CA certificate"), and the U2F root has pathlen:0 yet issues F9 certificates that issue
//! attestations ("path length constraint exceeded"). The test
//! `webpki_rejects_real_yubikey4_chains` shows it on public data. webpki can check the
//! NULL-less RSA identifier of "PIV Attestation B2 1" (`..._ABSENT_PARAMS`), so that was
//! not the obstacle. The path here has a fixed shape instead: the slot certificate must be
//! signed by the F9 certificate given, the F9 must carry Yubico's firmware extension, and
//! from the F9 up every certificate must be signed by a bundle certificate of the issuer's
//! name (intermediates must be CAs; the F9 is trusted as a device key, not as a CA) until
//! a self-signed bundle root is reached. Signatures are checked with RustCrypto (`sig`).

mod bundle;
mod ext;
mod policy;
pub mod sig;
#[cfg(test)]
mod tests;
mod token;
mod types;

pub use bundle::{BundleError, TrustBundle, DEFAULT_BUNDLE_PEM};
use ext::Extensions;
pub use policy::{
    advisories, advisories_for, parse_firmware, Advisory, AttestationPolicy, PolicyRefusal,
};
pub use token::{attest_slot, attest_token, SlotFinding};
pub use types::{Edition, FormFactor, KeyAlgorithm};

use crate::piv::{FirmwareVersion, PinPolicy, Slot, TouchPolicy};
use const_oid::ObjectIdentifier;
use der::{Decode, Encode, Reader};
use serde::{Serialize, Serializer};
use spki::SubjectPublicKeyInfoOwned;
use std::fmt;
use std::time::SystemTime;
use x509_cert::Certificate;

// Yubico PIV attestation extensions, arc 1.3.6.1.4.1.41482.3 (Yubico, "PIV attestation"
// and "Yubico attestation OID arc").
const OID_FIRMWARE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.3");
const OID_SERIAL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.7");
const OID_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.8");
const OID_FORM_FACTOR: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.9");
/// "FIPS certified YubiKey": only on the factory F9 certificate.
const OID_FIPS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.10");
/// "CSPN certified YubiKey": only on the factory F9 certificate.
const OID_CSPN: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.11");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_X25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.110");

/// Deepest F9 → root path followed (Attestation Root 1 paths have 3 certificates above F9).
const MAX_ISSUERS: usize = 6;

/// Which certificate of the chain a finding is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    SlotAttestation,
    F9,
    Bundle(String),
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Which::SlotAttestation => f.write_str("the slot attestation certificate"),
            Which::F9 => f.write_str("the F9 attestation certificate"),
            Which::Bundle(n) => write!(f, "the bundle certificate '{n}'"),
        }
    }
}

/// Why an attestation was not accepted. Each names the certificate and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    #[error("{which} is not a valid X.509 certificate: {detail}")]
    Malformed { which: Which, detail: String },
    #[error("{which} names issuer '{issuer}', but the F9 certificate is '{f9}'")]
    IssuerMismatch {
        which: Which,
        issuer: String,
        f9: String,
    },
    #[error("{which}: signature algorithm not accepted: {detail}")]
    UnsupportedAlgorithm { which: Which, detail: String },
    #[error("{which} is not signed by '{signer}': {detail} (altered, or made by another key)")]
    BadSignature {
        which: Which,
        signer: String,
        detail: String,
    },
    #[error("{which} chains to '{issuer}', which is not in the attestation trust bundle")]
    UnknownRoot { which: Which, issuer: String },
    #[error("{which} expired on {not_after}")]
    Expired { which: Which, not_after: String },
    #[error("{which} is not valid before {not_before}")]
    NotYetValid { which: Which, not_before: String },
    #[error("{which} lacks the Yubico extension {name} ({oid})")]
    MissingExtension {
        which: Which,
        name: &'static str,
        oid: ObjectIdentifier,
    },
    #[error("{which}: the Yubico extension {name} ({oid}) is malformed: {detail}")]
    MalformedExtension {
        which: Which,
        name: &'static str,
        oid: ObjectIdentifier,
        detail: String,
    },
    #[error("the slot attestation says {name} {attested}, the F9 certificate says {f9}")]
    ExtensionMismatch {
        name: &'static str,
        attested: String,
        f9: String,
    },
    #[error("the attested key is of a type pivault does not know: {0}")]
    UnsupportedKey(String),
    #[error("the attested public key is not the key the token generated in slot {slot}")]
    PublicKeyMismatch { slot: String },
    #[error("the attestation is for token serial {attested}, not {token}")]
    SerialMismatch { attested: u32, token: u32 },
    #[error(
        "the attestation carries no serial number (firmware {0}): it cannot be tied to the token"
    )]
    SerialNotAttested(FirmwareVersion),
    #[error("{which}: the chain to a root is longer than {MAX_ISSUERS} certificates")]
    ChainTooLong { which: Which },
    #[error("the attestation is for slot {attested}, not slot {asked}")]
    SlotMismatch { asked: String, attested: String },
    #[error("slot {slot} has no attestation: {why}")]
    NotAttested { slot: String, why: String },
    #[error(
        "the token has no F9 attestation certificate (object 5FFF01): it cannot prove where \
         its keys were made"
    )]
    NoF9Certificate,
}

impl AttestationError {
    /// The check that failed, one word (the `check` of `pivault attest --json`).
    pub fn check(&self) -> &'static str {
        use AttestationError as E;
        match self {
            E::Malformed { .. } | E::MalformedExtension { .. } | E::MissingExtension { .. } => {
                "format"
            }
            E::IssuerMismatch { .. } | E::ChainTooLong { .. } => "chain",
            E::UnsupportedAlgorithm { .. } | E::BadSignature { .. } => "signature",
            E::UnknownRoot { .. } => "root",
            E::Expired { .. } | E::NotYetValid { .. } => "validity",
            E::ExtensionMismatch { .. } => "extensions",
            E::UnsupportedKey(_) => "key-type",
            E::PublicKeyMismatch { .. } => "public-key",
            E::SerialMismatch { .. } | E::SerialNotAttested(_) => "serial",
            E::SlotMismatch { .. } => "slot",
            E::NotAttested { .. } => "attested",
            E::NoF9Certificate => "f9",
        }
    }

    /// What a person can do about it.
    pub fn hint(&self) -> &'static str {
        use AttestationError as E;
        match self {
            E::UnknownRoot { .. } => {
                "if this is a genuine YubiKey, update pivault or give Yubico's current \
                 roots with --attestation-roots FILE; otherwise the token is not a YubiKey"
            }
            E::NotAttested { .. } => {
                "only keys generated on the token can be attested: generate the key on the \
                 token (pivault enroll) instead of importing it"
            }
            E::Expired { .. } | E::NotYetValid { .. } => "check this machine's clock",
            _ => {
                "the token's attestation is not genuine or not for this key: do not trust \
                 keys from this token; keep it aside for inspection"
            }
        }
    }
}

/// What a verified attestation proves about a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attestation {
    /// From the subject "YubiKey PIV Attestation <slot>"; `None` for a slot pivault does
    /// not enroll (or a subject in another form).
    pub slot: Option<Slot>,
    /// Token serial (41482.3.7); absent on some YubiKey 4 firmware.
    pub serial: Option<u32>,
    pub firmware: FirmwareVersion,
    pub form_factor: Option<FormFactor>,
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
    pub algorithm: KeyAlgorithm,
    /// SubjectPublicKeyInfo of the attested key, DER (base64 in JSON).
    #[serde(serialize_with = "base64_der")]
    pub public_key: Vec<u8>,
    pub edition: Edition,
    /// Name of the trusted root the chain ends at, e.g. "Yubico Attestation Root 1".
    pub root: String,
    /// SHA-256 of the root certificate's DER, lowercase hex (two roots may share a name:
    /// Yubico's 2016 and 2018 PIV root certificates, or a test root).
    pub root_sha256: String,
    /// Names from the F9 certificate up to (not including) the root.
    pub chain: Vec<String>,
}

fn base64_der<S: Serializer>(der: &[u8], s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine;
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(der))
}

impl Attestation {
    /// Refuses unless the attested key is `expected` (a SubjectPublicKeyInfo, DER): the
    /// key pivault just generated in that slot.
    pub fn check_public_key(&self, expected_spki_der: &[u8]) -> Result<(), AttestationError> {
        let canon = |der: &[u8]| {
            SubjectPublicKeyInfoOwned::from_der(der)
                .and_then(|k| k.to_der())
                .ok()
        };
        match (canon(&self.public_key), canon(expected_spki_der)) {
            (Some(a), Some(b)) if a == b => Ok(()),
            _ => Err(AttestationError::PublicKeyMismatch {
                slot: self.slot.map(|s| s.to_string()).unwrap_or("?".into()),
            }),
        }
    }

    /// Refuses unless the attestation names the token's serial. Firmware that attests no
    /// serial cannot pass: nothing would bind the key to this token.
    pub fn check_serial(&self, token_serial: u32) -> Result<(), AttestationError> {
        match self.serial {
            Some(s) if s == token_serial => Ok(()),
            Some(s) => Err(AttestationError::SerialMismatch {
                attested: s,
                token: token_serial,
            }),
            None => Err(AttestationError::SerialNotAttested(self.firmware)),
        }
    }

    /// Known-vulnerability advisories that apply to this key.
    pub fn advisories(&self) -> Vec<Advisory> {
        policy::advisories_for(
            self.firmware,
            self.algorithm,
            self.edition,
            self.form_factor,
        )
    }
}

/// Verify a slot attestation: `attestation_der` (ATTEST's answer) signed by `f9_der` (the
/// certificate in slot F9), chaining to a root of `bundle`, every certificate valid at
/// `at`; then decode Yubico's extensions.
pub fn verify(
    attestation_der: &[u8],
    f9_der: &[u8],
    bundle: &TrustBundle,
    at: SystemTime,
) -> Result<Attestation, AttestationError> {
    let leaf = parse(attestation_der, Which::SlotAttestation)?;
    let f9 = parse(f9_der, Which::F9)?;
    let f9_subject = f9.tbs_certificate().subject();
    if leaf.tbs_certificate().issuer() != f9_subject {
        return Err(AttestationError::IssuerMismatch {
            which: Which::SlotAttestation,
            issuer: display_name(leaf.tbs_certificate().issuer()),
            f9: display_name(f9_subject),
        });
    }
    check_signature(&leaf, attestation_der, &f9, Which::SlotAttestation)?;
    check_validity(&leaf, Which::SlotAttestation, at)?;
    check_validity(&f9, Which::F9, at)?;
    let (root, root_sha256, chain) = bundle.chain_of(&f9, f9_der, at)?;

    let exts = Extensions::of(&leaf, Which::SlotAttestation)?;
    let f9_exts = Extensions::of(&f9, Which::F9)?;
    let firmware = exts.firmware(Which::SlotAttestation)?;
    // The F9 certificate must be a YubiKey device certificate: Yubico puts the firmware
    // version on it. This keeps other Yubico-signed certificates (U2F device certificates
    // under the U2F root) from standing in for an F9 key. Its value may be older than the
    // slot attestation's: public data has a 4.3.4 F9 certificate on a token attesting
    // 4.3.5, so only the slot attestation's firmware is used.
    f9_exts.firmware(Which::F9)?;
    let serial = exts.serial(Which::SlotAttestation)?;
    if let (Some(a), Some(f)) = (serial, f9_exts.serial(Which::F9)?) {
        if a != f {
            return Err(AttestationError::ExtensionMismatch {
                name: "serial number",
                attested: a.to_string(),
                f9: f.to_string(),
            });
        }
    }
    let (pin_policy, touch_policy) = exts.policies()?;
    let ff_byte = exts.form_factor()?;
    let form_factor = match ff_byte {
        Some(b) => Some(FormFactor::from_byte(b).ok_or_else(|| {
            exts.malformed("form factor", OID_FORM_FACTOR, format!("value {b:#04x}"))
        })?),
        None => None,
    };
    let edition = if f9_exts.has(OID_FIPS) || ff_byte.is_some_and(|b| b & 0x80 != 0) {
        Edition::Fips
    } else if f9_exts.has(OID_CSPN) {
        Edition::Cspn
    } else {
        Edition::Standard
    };
    let spki = leaf.tbs_certificate().subject_public_key_info();
    let public_key = spki.to_der().map_err(|e| AttestationError::Malformed {
        which: Which::SlotAttestation,
        detail: e.to_string(),
    })?;
    Ok(Attestation {
        slot: slot_of(leaf.tbs_certificate().subject()),
        serial,
        firmware,
        form_factor,
        pin_policy,
        touch_policy,
        algorithm: KeyAlgorithm::of(spki)?,
        public_key,
        edition,
        root,
        root_sha256,
        chain,
    })
}

/// The enrollment check: verify, then require that the attested key is the one the
/// token generated (`expected_spki_der`) and the attested serial is the token's.
pub fn verify_generated_key(
    attestation_der: &[u8],
    f9_der: &[u8],
    bundle: &TrustBundle,
    at: SystemTime,
    expected_spki_der: &[u8],
    token_serial: u32,
) -> Result<Attestation, AttestationError> {
    let att = verify(attestation_der, f9_der, bundle, at)?;
    att.check_public_key(expected_spki_der)?;
    att.check_serial(token_serial)?;
    Ok(att)
}

fn parse(der: &[u8], which: Which) -> Result<Certificate, AttestationError> {
    Certificate::from_der(der).map_err(|e| AttestationError::Malformed {
        which,
        detail: e.to_string(),
    })
}

/// The TBSCertificate exactly as received (RFC 5280 §4.1.1.3: the signature covers these
/// bytes; re-encoding could change them).
fn tbs_bytes(cert_der: &[u8]) -> der::Result<&[u8]> {
    let mut reader = der::SliceReader::new(cert_der)?;
    let _outer = der::Header::decode(&mut reader)?;
    reader.tlv_bytes()
}

/// `cert` (DER `cert_der`) must be signed by `issuer`'s key with an accepted algorithm,
/// and name the same algorithm inside and outside the TBS (RFC 5280 §4.1.1.2).
fn check_signature(
    cert: &Certificate,
    cert_der: &[u8],
    issuer: &Certificate,
    which: Which,
) -> Result<(), AttestationError> {
    if cert.signature_algorithm() != cert.tbs_certificate().signature() {
        return Err(AttestationError::Malformed {
            which,
            detail: "signatureAlgorithm differs from the TBS signature field".into(),
        });
    }
    let alg = sig::signature_algorithm(cert.signature_algorithm()).map_err(|detail| {
        AttestationError::UnsupportedAlgorithm {
            which: which.clone(),
            detail,
        }
    })?;
    let tbs = tbs_bytes(cert_der).map_err(|e| AttestationError::Malformed {
        which: which.clone(),
        detail: e.to_string(),
    })?;
    let sig = cert
        .signature()
        .as_bytes()
        .ok_or(AttestationError::Malformed {
            which: which.clone(),
            detail: "signature BIT STRING has unused bits".into(),
        })?;
    sig::verify(
        alg,
        issuer.tbs_certificate().subject_public_key_info(),
        tbs,
        sig,
    )
    .map_err(|detail| AttestationError::BadSignature {
        which,
        signer: display_name(issuer.tbs_certificate().subject()),
        detail,
    })
}

fn check_validity(
    cert: &Certificate,
    which: Which,
    at: SystemTime,
) -> Result<(), AttestationError> {
    let v = cert.tbs_certificate().validity();
    if at < v.not_before.to_system_time() {
        return Err(AttestationError::NotYetValid {
            which,
            not_before: v.not_before.to_string(),
        });
    }
    if at > v.not_after.to_system_time() {
        return Err(AttestationError::Expired {
            which,
            not_after: v.not_after.to_string(),
        });
    }
    Ok(())
}

/// "CN=X" as "X"; other names in full (RFC 4514).
pub(crate) fn display_name(name: &x509_cert::name::Name) -> String {
    let s = name.to_string();
    match s.strip_prefix("CN=") {
        Some(cn) if !cn.contains(',') => cn.to_string(),
        _ => s,
    }
}

/// "YubiKey PIV Attestation 9a" → slot 9a (Yubico: the subject ends with the slot).
fn slot_of(subject: &x509_cert::name::Name) -> Option<Slot> {
    let name = display_name(subject);
    let hex = name.strip_prefix("YubiKey PIV Attestation ")?;
    u8::from_str_radix(hex.trim(), 16)
        .ok()
        .and_then(Slot::from_byte)
}
