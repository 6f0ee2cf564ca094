//! PKCS#10 certification requests (RFC 2986) whose signature is made on the token.
//!
//! The request info is built and DER-encoded here, its signature input goes to the card
//! through [`PivToken::sign_raw`], and the result is verified locally against the
//! generated public key before anything is sent to Vault.

use crate::crypto;
use crate::piv::{PivToken, Slot, TokenError};
use const_oid::db::rfc4519;
use const_oid::ObjectIdentifier;
use der::{
    asn1::{Any, BitString, OctetString, Utf8StringRef},
    Decode, Encode, EncodePem,
};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::{
    attr::{AttributeTypeAndValue, Attributes},
    ext::{
        pkix::{name::GeneralName, SubjectAltName},
        Extension, ToExtension,
    },
    name::{Name, RdnSequence, RelativeDistinguishedName},
    request::{CertReq, CertReqInfo, ExtensionReq, Version},
};

/// What the certificate should name. Validated by [`Subject::validate`] before any token
/// operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subject {
    pub common_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Microsoft UPN (smart-card logon). Sent to Vault as `other_sans`, not in the CSR, so
    /// that it appears once in the certificate (Vault merges the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upn: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("invalid subject: {0}")]
    Subject(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("encoding the request failed: {0}")]
    Encoding(String),
    #[error("the token's signature on the request does not verify ({0}); nothing was sent")]
    BadSignature(String),
}

fn looks_like_mailbox(s: &str) -> bool {
    let mut parts = s.splitn(2, '@');
    let (local, domain) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '<')
        && !domain.contains('@')
}

impl Subject {
    /// Refuse what Vault or a relying party would choke on, with the reason.
    pub fn validate(&self) -> Result<(), CsrError> {
        let cn = self.common_name.trim();
        if cn.is_empty() {
            return Err(CsrError::Subject("the common name is empty".into()));
        }
        if cn.len() > 64 {
            return Err(CsrError::Subject(format!(
                "the common name is {} characters; X.520 allows at most 64",
                cn.len()
            )));
        }
        if cn.chars().any(char::is_control) {
            return Err(CsrError::Subject(
                "the common name contains control characters".into(),
            ));
        }
        if let Some(e) = &self.email {
            if !looks_like_mailbox(e) {
                return Err(CsrError::Subject(format!("'{e}' is not an e-mail address")));
            }
        }
        if let Some(u) = &self.upn {
            if !looks_like_mailbox(u) {
                return Err(CsrError::Subject(format!(
                    "'{u}' is not a user principal name (user@realm)"
                )));
            }
        }
        Ok(())
    }

    /// The subject as an X.500 name: one RDN, commonName as a UTF8String (RFC 5280
    /// 4.1.2.6), CN only (Vault keeps only the CN unless the role allows more, see
    /// openbao-facts). Built from typed values, never from an RFC 4514 string, so commas,
    /// plus signs or quotes in the name are just characters.
    pub fn name(&self) -> Result<Name, CsrError> {
        let bad = |e: der::Error| CsrError::Subject(format!("common name: {e}"));
        let cn = Utf8StringRef::new(self.common_name.trim()).map_err(bad)?;
        let atv = AttributeTypeAndValue {
            oid: rfc4519::COMMON_NAME,
            value: Any::encode_from(&cn).map_err(bad)?,
        };
        let mut rdns = RdnSequence::default();
        rdns.push(RelativeDistinguishedName::try_from(vec![atv]).map_err(bad)?);
        // x509-cert 0.3 builds a `Name` from typed parts only behind its "hazmat" feature;
        // its DER is the RDN sequence's, so decode that instead.
        Name::from_der(&rdns.to_der().map_err(bad)?).map_err(bad)
    }

    /// CN, e-mail and UPN of a certificate, read by OID from the subject's RDNs and the
    /// subjectAltName (RFC 5280 4.1.2.6, 4.2.1.6; UPN: [MS-WCCE] 2.2.2.7.7.4).
    pub fn of_certificate(cert: &x509_cert::Certificate) -> Subject {
        use x509_cert::ext::pkix::{name::GeneralName, SubjectAltName};
        let tbs = cert.tbs_certificate();
        let common_name = tbs
            .subject()
            .common_name()
            .ok()
            .flatten()
            .map(|d| d.value().into_owned())
            .unwrap_or_default();
        let upn_oid = const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.20.2.3");
        let (mut email, mut upn) = (None, None);
        if let Ok(Some((_, san))) = tbs.get_extension::<SubjectAltName>() {
            for n in san.0 {
                match n {
                    GeneralName::Rfc822Name(e) => email = email.or(Some(e.to_string())),
                    GeneralName::OtherName(o) if o.type_id == upn_oid => {
                        // value is [0] EXPLICIT UTF8String; `value` holds the UTF8String.
                        upn = upn.or(o
                            .value
                            .decode_as::<der::asn1::Utf8StringRef<'_>>()
                            .ok()
                            .map(|s| s.to_string()));
                    }
                    _ => {}
                }
            }
        }
        Subject {
            common_name,
            email,
            upn,
        }
    }
}

/// A request ready to send, and the facts to check the answer against.
#[derive(Debug, Clone)]
pub struct SignedCsr {
    pub der: Vec<u8>,
    pub pem: String,
}

/// Yubico's CSR extensions for attestation (Yubico, "PIV attestation OID arc",
/// docs.yubico.com/hardware/oid/oid-piv-arc.html): 41482.3.1 carries the slot attestation
/// certificate and 41482.3.2 the F9 certificate that signed it, each as the extnValue's
/// DER, inside the request's extensionRequest (RFC 2986 / PKCS #9). yubico-piv-tool up to
/// 2.6 wrote the attestation under 41482.3.11 instead (its issue #526; .11 is also the
/// CSPN marker on F9 certificates); `legacy_oid` adds that copy for readers that look there.
pub const OID_CSR_ATTESTATION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.1");
pub const OID_CSR_F9: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.2");
pub const OID_CSR_ATTESTATION_LEGACY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.11");

/// The attestation certificates to put into a request.
#[derive(Debug, Clone, Copy)]
pub struct CsrAttestation<'a> {
    pub attestation_der: &'a [u8],
    pub f9_der: &'a [u8],
    pub legacy_oid: bool,
}

impl CsrAttestation<'_> {
    fn extensions(&self) -> Result<Vec<Extension>, der::Error> {
        let ext = |oid, der: &[u8]| -> Result<Extension, der::Error> {
            Ok(Extension {
                extn_id: oid,
                critical: false,
                extn_value: OctetString::new(der)?,
            })
        };
        let mut v = vec![
            ext(OID_CSR_ATTESTATION, self.attestation_der)?,
            ext(OID_CSR_F9, self.f9_der)?,
        ];
        if self.legacy_oid {
            v.push(ext(OID_CSR_ATTESTATION_LEGACY, self.attestation_der)?);
        }
        Ok(v)
    }
}

/// Build the request for `public_key` and have the token in `slot` sign it.
pub fn build_and_sign(
    token: &mut dyn PivToken,
    slot: Slot,
    public_key: &SubjectPublicKeyInfoOwned,
    subject: &Subject,
    attestation: Option<&CsrAttestation<'_>>,
) -> Result<SignedCsr, CsrError> {
    subject.validate()?;
    let alg = crypto::algorithm_of(public_key)
        .ok_or_else(|| CsrError::Encoding("unsupported public key type".into()))?;
    let enc = |e: der::Error| CsrError::Encoding(e.to_string());

    let name = subject.name()?;
    let mut attributes = Attributes::new();
    let mut exts = Vec::new();
    if let Some(email) = &subject.email {
        // RFC 8550 3: an S/MIME certificate names the mailbox in subjectAltName.
        let ia5 = der::asn1::Ia5String::new(email).map_err(enc)?;
        let san = SubjectAltName(vec![GeneralName::Rfc822Name(ia5)]);
        exts.push((&san).to_extension(&name, &[]).map_err(enc)?);
    }
    if let Some(a) = attestation {
        exts.extend(a.extensions().map_err(enc)?);
    }
    if !exts.is_empty() {
        // One extensionRequest attribute holds every requested extension (PKCS #9).
        let attr = ExtensionReq(exts).try_into().map_err(enc)?;
        attributes.insert(attr).map_err(enc)?;
    }
    let info = CertReqInfo {
        version: Version::V1,
        subject: name,
        public_key: public_key.clone(),
        attributes,
    };
    let tbs = info.to_der().map_err(enc)?;
    let raw_sig = token.sign_raw(slot, alg, &crypto::card_input(alg, &tbs))?;
    crypto::verify(public_key, &tbs, &raw_sig).map_err(CsrError::BadSignature)?;

    let req = CertReq {
        info,
        algorithm: crypto::signature_algorithm(alg),
        signature: BitString::from_bytes(&raw_sig).map_err(enc)?,
    };
    let der = req.to_der().map_err(enc)?;
    let pem = req.to_pem(der::pem::LineEnding::LF).map_err(enc)?;
    Ok(SignedCsr { der, pem })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_validation() {
        let ok = Subject {
            common_name: "Jane Doe".into(),
            email: Some("jane@example.org".into()),
            upn: Some("jane@corp.example".into()),
        };
        assert!(ok.validate().is_ok());
        for bad in [
            Subject {
                common_name: " ".into(),
                ..Default::default()
            },
            Subject {
                common_name: "x".repeat(65),
                ..Default::default()
            },
            Subject {
                common_name: "a\u{7}b".into(),
                ..Default::default()
            },
            Subject {
                common_name: "ok".into(),
                email: Some("nope".into()),
                upn: None,
            },
            Subject {
                common_name: "ok".into(),
                email: Some("a@b@c.d".into()),
                upn: None,
            },
            Subject {
                common_name: "ok".into(),
                email: None,
                upn: Some("user".into()),
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_with_specials_are_escaped() {
        let s = Subject {
            common_name: "Doe, Jane + co".into(),
            ..Default::default()
        };
        let name = s.name().expect("name");
        assert_eq!(name.to_string(), "CN=Doe\\, Jane \\+ co");
        // One RDN, one attribute, the CN as given (not split at the comma).
        assert_eq!(name.len(), 1);
        let cn = name.common_name().expect("cn").expect("present");
        assert_eq!(cn.value(), "Doe, Jane + co");
        assert!(matches!(
            cn,
            x509_cert::ext::pkix::name::DirectoryString::Utf8String(_)
        ));
    }
}
