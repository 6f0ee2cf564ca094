//! Checks on a certificate Vault issued, before it goes into a slot: it holds the key just
//! generated, it chains (RFC 5280 path validation by rustls-webpki) to the CA chain Vault
//! returned or to a configured trust anchor, its validity has begun and not ended, and its
//! key usage and extended key usage fit the slot and role ([`check`]); it names exactly
//! what the request asked for, and extended key usages beyond the role's purpose are
//! reported ([`check_identity`]).

use crate::piv::{Algorithm, Role, Slot};
use crate::text::sanitize;
use const_oid::ObjectIdentifier;
use der::{asn1::Utf8StringRef, Decode, DecodePem};
use rustls_pki_types::{CertificateDer, UnixTime};
use spki::SubjectPublicKeyInfoOwned;
use std::fmt;
use std::time::{Duration, SystemTime};
use x509_cert::{
    ext::pkix::{
        name::{DirectoryString, GeneralName},
        ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
    },
    name::Name,
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
    if let Ok(Some(ku)) = tbs.get_extension::<KeyUsage>() {
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

/// The names a request asked for: what an issued certificate must name, no more, no less.
#[derive(Debug, Clone, Copy)]
pub struct AskedNames<'a> {
    /// The subject the CSR carried ([`crate::csr::Subject::name`]).
    pub subject: &'a Name,
    /// The mailbox asked for (the CSR's rfc822Name SAN, Vault's `alt_names`).
    pub email: Option<&'a str>,
    /// The user principal name asked for (Vault's `other_sans`).
    pub upn: Option<&'a str>,
}

/// Something an accepted certificate holds beyond the request: reported, not refused (the
/// administrator's role decides; see issue 10, defect 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertWarning {
    /// An extended key usage beyond the role's purpose (e.g. serverAuth from a client-auth
    /// role, or anyExtendedKeyUsage).
    ExtraEku { role: Role, eku: ObjectIdentifier },
    /// A subjectAltName the request did not ask for (a DNS name, IP address, URI, ... that
    /// the role added). `value` is printable (control characters escaped).
    ExtraSan { kind: &'static str, value: String },
}

impl fmt::Display for CertWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertWarning::ExtraEku { role, eku } => match const_oid::db::DB.by_oid(eku) {
                Some(name) => write!(
                    f,
                    "extended key usage {name} ({eku}) is beyond what role {role} is for"
                ),
                None => write!(
                    f,
                    "extended key usage {eku} is beyond what role {role} is for"
                ),
            },
            CertWarning::ExtraSan { kind, value } => {
                write!(
                    f,
                    "subject alternative name {kind} {value} was not asked for"
                )
            }
        }
    }
}

/// UPN otherName type ([MS-WCCE] 2.2.2.7.7.4, szOID_NT_PRINCIPAL_NAME).
pub const UPN_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.20.2.3");
/// Microsoft smart-card logon EKU (szOID_KP_SMARTCARD_LOGON).
const MS_SMARTCARD_LOGON: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.20.2.2");
/// Kerberos PKINIT client authentication (RFC 4556 3.2.2).
const PKINIT_KP_CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.2.3.4");
/// PIV card authentication (NIST SP 800-73-4 / FIPS 201-3, id-PIV-cardAuth).
const PIV_CARD_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.6.8");

/// The extended key usages that fit a role's purpose; any other is reported.
fn role_purposes(role: Role) -> &'static [ObjectIdentifier] {
    use const_oid::db::rfc5280::{ID_KP_CLIENT_AUTH, ID_KP_CODE_SIGNING, ID_KP_EMAIL_PROTECTION};
    const AUTH: &[ObjectIdentifier] = &[
        ID_KP_CLIENT_AUTH,
        MS_SMARTCARD_LOGON,
        PKINIT_KP_CLIENT_AUTH,
        PIV_CARD_AUTH,
    ];
    match role {
        Role::Piv | Role::Auth => AUTH,
        Role::CodeSigning => &[ID_KP_CODE_SIGNING],
        Role::EmailSigning => &[ID_KP_EMAIL_PROTECTION],
    }
}

/// Equal as mailboxes: the local part exactly, the domain without regard to ASCII case
/// (RFC 5280 4.2.1.6, RFC 5321 2.4).
fn same_mailbox(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((la, da)), Some((lb, db))) => la == lb && da.eq_ignore_ascii_case(db),
        _ => a == b,
    }
}

fn shown(values: &[String]) -> String {
    if values.is_empty() {
        "none".into()
    } else {
        values
            .iter()
            .map(|v| sanitize(v))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Every commonName in `name`, as text.
fn common_names(name: &Name) -> Result<Vec<String>, VerifyError> {
    name.iter()
        .filter(|a| a.oid == const_oid::db::rfc4519::COMMON_NAME)
        .map(|a| {
            DirectoryString::try_from(&a.value)
                .map(|d| d.value().into_owned())
                .map_err(|e| VerifyError::Parse(format!("commonName: {e}")))
        })
        .collect()
}

/// Check that `cert_der` names exactly what `asked` asked for, and report what it holds
/// beyond the request and the role. Call it beside [`check`] on every certificate Vault
/// issued (and on one re-imported from a record), before it goes into a slot.
///
/// - **Common name**: the subject's commonNames equal the requested subject's (one each,
///   usually). Other subject attributes a role adds (O, OU, ...) are not compared.
/// - **E-mail**: the certificate's mailboxes (rfc822Name SANs and subject emailAddress)
///   must include the one asked for, and hold no other — except the common name itself
///   when it is a mailbox (Vault copies such a CN into an rfc822Name unless the role sets
///   `exclude_cn_from_sans`).
/// - **UPN**: the UPN otherNames must be exactly the one asked for (repeats of it are
///   accepted: Vault merges a UPN given in both the CSR and `other_sans`), or none.
/// - **Reported** ([`CertWarning`]): EKUs outside the role's purpose, and SANs of other
///   kinds (DNS, IP, URI, directory name, other otherNames) nobody asked for.
///
/// Refusals are [`VerifyError::NameMismatch`] (and [`VerifyError::Parse`] for a
/// certificate whose names cannot be read).
pub fn check_identity(
    cert_der: &[u8],
    asked: &AskedNames<'_>,
    role: Role,
) -> Result<Vec<CertWarning>, VerifyError> {
    let cert = Certificate::from_der(cert_der).map_err(|e| VerifyError::Parse(e.to_string()))?;
    let tbs = cert.tbs_certificate();
    let mut warnings = Vec::new();

    let mut want_cn = common_names(asked.subject)?;
    let mut got_cn = common_names(tbs.subject())?;
    want_cn.sort();
    got_cn.sort();
    if want_cn != got_cn {
        return Err(VerifyError::NameMismatch {
            field: NameField::CommonName,
            asked: shown(&want_cn),
            got: shown(&got_cn),
        });
    }

    let sans = match tbs.get_extension::<SubjectAltName>() {
        Ok(Some((_, san))) => san.0,
        Ok(None) => Vec::new(),
        Err(e) => return Err(VerifyError::Parse(format!("subjectAltName: {e}"))),
    };
    let mut emails: Vec<String> = Vec::new();
    let mut upns: Vec<String> = Vec::new();
    for gn in &sans {
        match gn {
            GeneralName::Rfc822Name(m) => emails.push(m.to_string()),
            GeneralName::OtherName(o) if o.type_id == UPN_OID => {
                let u = Utf8StringRef::try_from(&o.value)
                    .map_err(|e| VerifyError::Parse(format!("UPN otherName: {e}")))?;
                upns.push(u.as_str().to_string());
            }
            other => warnings.push(extra_san(other)),
        }
    }
    for a in tbs
        .subject()
        .iter()
        .filter(|a| a.oid == const_oid::db::rfc3280::EMAIL_ADDRESS)
    {
        let m = der::asn1::Ia5StringRef::try_from(&a.value)
            .map_err(|e| VerifyError::Parse(format!("emailAddress: {e}")))?;
        emails.push(m.as_str().to_string());
    }

    let email_ok = asked
        .email
        .is_none_or(|want| emails.iter().any(|m| same_mailbox(m, want)))
        && emails.iter().all(|m| {
            asked.email.is_some_and(|want| same_mailbox(m, want))
                || want_cn.iter().any(|cn| same_mailbox(m, cn))
        });
    if !email_ok {
        return Err(VerifyError::NameMismatch {
            field: NameField::Email,
            asked: asked.email.map(sanitize).unwrap_or_else(|| "none".into()),
            got: shown(&emails),
        });
    }

    let upn_ok = match asked.upn {
        Some(want) => !upns.is_empty() && upns.iter().all(|u| u == want),
        None => upns.is_empty(),
    };
    if !upn_ok {
        upns.dedup();
        return Err(VerifyError::NameMismatch {
            field: NameField::Upn,
            asked: asked.upn.map(sanitize).unwrap_or_else(|| "none".into()),
            got: shown(&upns),
        });
    }

    let ekus = match tbs.get_extension::<ExtendedKeyUsage>() {
        Ok(Some((_, e))) => e.0,
        Ok(None) => Vec::new(),
        Err(e) => return Err(VerifyError::Parse(format!("extendedKeyUsage: {e}"))),
    };
    let fits = role_purposes(role);
    warnings.extend(
        ekus.into_iter()
            .filter(|e| !fits.contains(e))
            .map(|eku| CertWarning::ExtraEku { role, eku }),
    );
    Ok(warnings)
}

fn extra_san(gn: &GeneralName) -> CertWarning {
    let (kind, value) = match gn {
        GeneralName::DnsName(d) => ("DNS", d.to_string()),
        GeneralName::UniformResourceIdentifier(u) => ("URI", u.to_string()),
        GeneralName::IpAddress(ip) => (
            "IP",
            match ip.as_bytes().len() {
                4 => <[u8; 4]>::try_from(ip.as_bytes())
                    .map(|a| std::net::Ipv4Addr::from(a).to_string())
                    .unwrap_or_default(),
                16 => <[u8; 16]>::try_from(ip.as_bytes())
                    .map(|a| std::net::Ipv6Addr::from(a).to_string())
                    .unwrap_or_default(),
                _ => hex::encode(ip.as_bytes()),
            },
        ),
        GeneralName::DirectoryName(n) => ("directory name", n.to_string()),
        GeneralName::OtherName(o) => ("otherName", o.type_id.to_string()),
        GeneralName::RegisteredId(id) => ("registered ID", id.to_string()),
        GeneralName::EdiPartyName(_) => ("EDI party name", String::new()),
        GeneralName::Rfc822Name(m) => ("e-mail", m.to_string()),
    };
    CertWarning::ExtraSan {
        kind,
        value: sanitize(&value),
    }
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
