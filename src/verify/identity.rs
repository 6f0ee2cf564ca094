//! Does the issued certificate name what the request asked for? Subject commonName,
//! e-mail (rfc822Name SAN, emailAddress) and UPN (otherName) compared as typed values, and
//! what it holds beyond the request and the role reported as warnings. Issue 10, defect 5.

use super::{NameField, VerifyError};
use crate::piv::Role;
use crate::text::sanitize;
use const_oid::ObjectIdentifier;
use der::{asn1::Utf8StringRef, Decode};
use std::fmt;
use x509_cert::{
    ext::pkix::{
        name::{DirectoryString, GeneralName},
        ExtendedKeyUsage, SubjectAltName,
    },
    name::Name,
    Certificate,
};

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
