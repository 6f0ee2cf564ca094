//! Checks on a certificate Vault issued, before it goes into a slot: it holds the key just
//! generated, it chains (RFC 5280 path validation by rustls-webpki) to the CA chain Vault
//! returned or to a configured trust anchor, its validity has begun and not ended, and its
//! key usage and extended key usage fit the slot and role ([`check`]); it names exactly
//! what the request asked for, and extended key usages beyond the role's purpose are
//! reported ([`check_identity`]).

mod identity;

pub use identity::{check_identity, AskedNames, CertWarning, UPN_OID};

use crate::piv::{Algorithm, Role, Slot};
use crate::text::sanitize;
use der::{Decode, DecodePem};
use rustls_pki_types::{CertificateDer, UnixTime};
use spki::SubjectPublicKeyInfoOwned;
use std::fmt;
use std::time::{Duration, SystemTime};
use x509_cert::{
    ext::pkix::{ExtendedKeyUsage, KeyUsage, KeyUsages},
    Certificate,
};

/// Why an issued certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("the certificate's public key is not the key generated on the token")]
    KeyMismatch,
    #[error("the certificate does not chain to {anchor}: {detail}")]
    Chain { anchor: String, detail: String },
    #[error("the certificate is not valid now (not before {not_before}, not after {not_after})")]
    NotValidNow {
        not_before: String,
        not_after: String,
    },
    #[error("the certificate's key usage does not allow {needed} for slot {slot}")]
    KeyUsage { slot: Slot, needed: String },
    #[error("Vault returned no CA chain and no trust anchor is configured")]
    NoAnchor,
    /// The certificate names something other than what the request asked for. `got` is
    /// the certificate's value (control characters escaped), "none" when it has none.
    #[error("the certificate's {field} is {got}, but the request asked for {asked}")]
    NameMismatch {
        field: NameField,
        asked: String,
        got: String,
    },
}

/// Which name of a certificate [`VerifyError::NameMismatch`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameField {
    /// Subject commonName (2.5.4.3).
    CommonName,
    /// rfc822Name in subjectAltName, or emailAddress (1.2.840.113549.1.9.1) in the subject.
    Email,
    /// Microsoft UPN: otherName 1.3.6.1.4.1.311.20.2.3 in subjectAltName.
    Upn,
}

impl fmt::Display for NameField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameField::CommonName => "common name",
            NameField::Email => "e-mail address",
            NameField::Upn => "UPN",
        })
    }
}

/// DER bytes of every certificate in a PEM bundle.
pub fn pem_bundle_to_der(pem: &str) -> Result<Vec<Vec<u8>>, VerifyError> {
    let mut out = Vec::new();
    for block in pem.split_inclusive("-----END CERTIFICATE-----") {
        let Some(start) = block.find("-----BEGIN CERTIFICATE-----") else {
            continue;
        };
        let cert = Certificate::from_pem(&block[start..])
            .map_err(|e| VerifyError::Parse(e.to_string()))?;
        out.push(der::Encode::to_der(&cert).map_err(|e| VerifyError::Parse(e.to_string()))?);
    }
    Ok(out)
}

/// RFC 5280 4.2.1.12 key purposes, as OID value bytes for webpki.
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
const EKU_EMAIL_PROTECTION: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x04];

fn eku_bytes(role: Role) -> &'static [u8] {
    match role {
        Role::Piv | Role::Auth => EKU_CLIENT_AUTH,
        Role::CodeSigning => EKU_CODE_SIGNING,
        Role::EmailSigning => EKU_EMAIL_PROTECTION,
    }
}

/// The key usages a slot's key needs (SP 800-78-4 Table 3-1 purposes; retired slots hold
/// former key-management or signing keys, so any of those will do).
fn needed_usages(slot: Slot, alg: Algorithm) -> (Vec<KeyUsages>, &'static str) {
    let encipher = if alg.is_rsa() {
        KeyUsages::KeyEncipherment
    } else {
        KeyUsages::KeyAgreement
    };
    match slot.byte() {
        0x9d => (
            vec![encipher],
            if alg.is_rsa() {
                "keyEncipherment"
            } else {
                "keyAgreement"
            },
        ),
        b if Slot::from_byte(b).is_some_and(Slot::is_retired) => (
            vec![KeyUsages::DigitalSignature, encipher],
            "digitalSignature or key establishment",
        ),
        _ => (vec![KeyUsages::DigitalSignature], "digitalSignature"),
    }
}

/// Everything the check needs.
pub struct Expectation<'a> {
    pub slot: Slot,
    pub role: Role,
    pub public_key: &'a SubjectPublicKeyInfoOwned,
    /// Vault's CA chain for this certificate (issuing CA first, root last).
    pub chain_der: &'a [Vec<u8>],
    /// Configured trust anchors; when given, the chain must end in one of these instead
    /// of the root Vault sent.
    pub anchors_der: &'a [Vec<u8>],
    pub now: SystemTime,
    /// Refuse a key usage that does not fit the slot. Off by default: the administrator's
    /// role decides the usages (an S/MIME role may issue digitalSignature +
    /// contentCommitment for 9d), and pivault reports the mismatch as a warning
    /// ([`usage_warning`]) instead of refusing a certificate Vault already issued.
    pub strict_usage: bool,
}

/// The key-usage mismatch of `cert_der` for `slot`, as a warning line; `None` when it fits
/// (or the certificate has no keyUsage, which allows every use: RFC 5280 4.2.1.3).
pub fn usage_warning(
    cert_der: &[u8],
    slot: Slot,
    key: &SubjectPublicKeyInfoOwned,
) -> Option<String> {
    let cert = Certificate::from_der(cert_der).ok()?;
    let alg = crate::crypto::algorithm_of(key).unwrap_or(Algorithm::P256);
    let Ok(Some(ku)) = cert.tbs_certificate().get_extension::<KeyUsage>() else {
        return None;
    };
    let (needed, text) = needed_usages(slot, alg);
    (!needed.iter().any(|u| ku.1 .0.contains(*u))).then(|| {
        format!(
            "the certificate's key usage does not allow {text} for slot {slot} (the PKI \
             role decides; use strict usage to refuse such certificates)"
        )
    })
}

/// Facts about an accepted certificate, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub serial_hex: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub sha256: String,
}

/// Read the facts of a certificate (no checks).
pub fn describe(der: &[u8]) -> Result<Accepted, VerifyError> {
    let cert = Certificate::from_der(der).map_err(|e| VerifyError::Parse(e.to_string()))?;
    let tbs = cert.tbs_certificate();
    let serial = tbs
        .serial_number()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok(Accepted {
        serial_hex: serial,
        // Printed in reports and `status`: a name may hold any text.
        subject: sanitize(&tbs.subject().to_string()),
        issuer: sanitize(&tbs.issuer().to_string()),
        not_before: tbs.validity().not_before.to_system_time(),
        not_after: tbs.validity().not_after.to_system_time(),
        sha256: crate::crypto::sha256_hex(der),
    })
}

/// Accept or refuse `cert_der` for the slot.
pub fn check(cert_der: &[u8], want: &Expectation<'_>) -> Result<Accepted, VerifyError> {
    let cert = Certificate::from_der(cert_der).map_err(|e| VerifyError::Parse(e.to_string()))?;
    let tbs = cert.tbs_certificate();

    if tbs.subject_public_key_info() != want.public_key {
        return Err(VerifyError::KeyMismatch);
    }

    let facts = describe(cert_der)?;
    // A little slack for a CA clock ahead of ours (Vault backdates 30 s by default).
    let skew = Duration::from_secs(300);
    if facts.not_before > want.now + skew || facts.not_after <= want.now {
        return Err(VerifyError::NotValidNow {
            not_before: crate::report::rfc3339(facts.not_before),
            not_after: crate::report::rfc3339(facts.not_after),
        });
    }

    let alg = crate::crypto::algorithm_of(want.public_key).unwrap_or(Algorithm::P256);
    if let (true, Ok(Some(ku))) = (want.strict_usage, tbs.get_extension::<KeyUsage>()) {
        let (needed, text) = needed_usages(want.slot, alg);
        if !needed.iter().any(|u| ku.1 .0.contains(*u)) {
            return Err(VerifyError::KeyUsage {
                slot: want.slot,
                needed: text.into(),
            });
        }
    }

    // The end entity must name the role's purpose (RFC 5280 4.2.1.12). Path validation
    // below uses "required if present", so CA certificates without EKU (the usual case)
    // pass, while a CA restricted to other purposes does not.
    let ekus = match tbs.get_extension::<ExtendedKeyUsage>() {
        Ok(Some((_, e))) => e.0,
        _ => Vec::new(),
    };
    if !ekus.contains(&want.role.required_eku()) {
        return Err(VerifyError::Chain {
            anchor: "the role's purpose".into(),
            detail: format!(
                "it lacks the extended key usage {} needs ({})",
                want.role,
                want.role.required_eku()
            ),
        });
    }

    // Path validation: the anchors are the configured ones, else the last (root) cert of
    // Vault's chain; the other chain certs are intermediates.
    let (anchor_ders, intermediates): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) =
        if !want.anchors_der.is_empty() {
            (
                want.anchors_der.iter().collect(),
                want.chain_der.iter().collect(),
            )
        } else {
            let (root, rest) = want.chain_der.split_last().ok_or(VerifyError::NoAnchor)?;
            (vec![root], rest.iter().collect())
        };
    let anchor_name = if want.anchors_der.is_empty() {
        "the CA chain Vault returned"
    } else {
        "the configured trust anchor"
    };
    let anchor_certs: Vec<CertificateDer<'_>> = anchor_ders
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    let anchors = anchor_certs
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| VerifyError::Chain {
            anchor: anchor_name.into(),
            detail: format!("unusable trust anchor: {e}"),
        })?;
    let inter: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    let ee_der = CertificateDer::from(cert_der);
    let ee = webpki::EndEntityCert::try_from(&ee_der).map_err(|e| VerifyError::Chain {
        anchor: anchor_name.into(),
        detail: format!("end-entity certificate rejected: {e}"),
    })?;
    let since_epoch = want
        .now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &inter,
        UnixTime::since_unix_epoch(since_epoch),
        webpki::KeyUsage::required_if_present(eku_bytes(want.role)),
        None,
        None,
    )
    .map_err(|e| VerifyError::Chain {
        anchor: anchor_name.into(),
        detail: match &e {
            #[allow(deprecated)]
            webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
                format!(
                    "it lacks the extended key usage {} needs ({e:?})",
                    want.role
                )
            }
            other => format!("{other:?}"),
        },
    })?;
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usages_per_slot() {
        let (u, _) = needed_usages(Slot::KEY_MANAGEMENT, Algorithm::P256);
        assert_eq!(u, vec![KeyUsages::KeyAgreement]);
        let (u, _) = needed_usages(Slot::KEY_MANAGEMENT, Algorithm::Rsa2048);
        assert_eq!(u, vec![KeyUsages::KeyEncipherment]);
        let (u, _) = needed_usages(Slot::AUTHENTICATION, Algorithm::P256);
        assert_eq!(u, vec![KeyUsages::DigitalSignature]);
        let retired = "retired1".parse::<Slot>().expect("slot");
        assert_eq!(needed_usages(retired, Algorithm::P256).0.len(), 2);
    }

    #[test]
    fn pem_bundle_parsing_rejects_garbage() {
        assert_eq!(pem_bundle_to_der("").map(|v| v.len()), Ok(0));
        assert!(pem_bundle_to_der(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        .is_err());
    }
}
