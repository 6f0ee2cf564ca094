//! The attestation trust bundle: roots (self-signed, trusted) and intermediates (trusted
//! only through a root), read from PEM. The default is Yubico's PIV roots and
//! intermediates, shipped in `attestation/yubico-piv-roots.pem` with each certificate's
//! source, date and fingerprint; `--attestation-roots FILE` replaces it.

use super::{check_signature, check_validity, display_name, AttestationError, Which, MAX_ISSUERS};
use der::Decode;
use std::path::Path;
use std::time::SystemTime;
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::Certificate;

/// Yubico's PIV attestation roots and intermediates (see the file's header).
pub const DEFAULT_BUNDLE_PEM: &str = include_str!("../../attestation/yubico-piv-roots.pem");

/// Why a bundle cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("attestation roots {origin}: {detail}")]
    Invalid { origin: String, detail: String },
    #[error("attestation roots {origin}: cannot read: {detail}")]
    Read { origin: String, detail: String },
}

#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) cert: Certificate,
    pub(super) der: Vec<u8>,
    pub(super) name: String,
}

/// Trust anchors and intermediates for attestation chains.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    pub(super) roots: Vec<Entry>,
    pub(super) intermediates: Vec<Entry>,
}

impl TrustBundle {
    /// The shipped Yubico bundle.
    pub fn yubico() -> TrustBundle {
        // The file is part of the source tree and checked by a unit test; a failure here
        // is a build defect, not an input error.
        #[allow(clippy::expect_used)]
        TrustBundle::from_pem(DEFAULT_BUNDLE_PEM, "built in")
            .expect("the shipped attestation bundle parses")
    }

    /// `--attestation-roots FILE` when given, else the shipped Yubico bundle.
    pub fn load(replacement: Option<&Path>) -> Result<TrustBundle, BundleError> {
        match replacement {
            Some(path) => TrustBundle::from_file(path),
            None => Ok(TrustBundle::yubico()),
        }
    }

    /// A bundle from a file of PEM certificates ('#' lines and other text between blocks
    /// are ignored): self-signed certificates become roots, the others intermediates.
    pub fn from_file(path: &Path) -> Result<TrustBundle, BundleError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| BundleError::Read {
            origin: origin.clone(),
            detail: e.to_string(),
        })?;
        TrustBundle::from_pem(&text, &origin)
    }

    /// A bundle from PEM text; `origin` names it in errors.
    pub fn from_pem(text: &str, origin: &str) -> Result<TrustBundle, BundleError> {
        let invalid = |detail: String| BundleError::Invalid {
            origin: origin.to_string(),
            detail,
        };
        let mut roots = Vec::new();
        let mut intermediates = Vec::new();
        for der in pem_certificates(text).map_err(&invalid)? {
            let cert = Certificate::from_der(&der)
                .map_err(|e| invalid(format!("a certificate does not parse: {e}")))?;
            let name = display_name(cert.tbs_certificate().subject());
            let self_issued = cert.tbs_certificate().issuer() == cert.tbs_certificate().subject();
            let entry = Entry { cert, der, name };
            if self_issued {
                // A root must at least sign itself: a damaged copy fails here, at load.
                check_signature(
                    &entry.cert,
                    &entry.der,
                    &entry.cert,
                    Which::Bundle(entry.name.clone()),
                )
                .map_err(|e| invalid(e.to_string()))?;
                roots.push(entry);
            } else {
                let ca = entry
                    .cert
                    .tbs_certificate()
                    .get_extension::<BasicConstraints>()
                    .ok()
                    .flatten()
                    .is_some_and(|(_, bc)| bc.ca);
                if !ca {
                    return Err(invalid(format!(
                        "'{}' is not a CA certificate (basicConstraints cA); F9 and slot \
                         certificates do not belong in the bundle",
                        entry.name
                    )));
                }
                intermediates.push(entry);
            }
        }
        if roots.is_empty() {
            return Err(invalid("no self-signed root certificate".into()));
        }
        Ok(TrustBundle {
            roots,
            intermediates,
        })
    }

    /// Names of the roots, in file order.
    pub fn root_names(&self) -> Vec<String> {
        self.roots.iter().map(|e| e.name.clone()).collect()
    }

    /// Names of the intermediates, in file order.
    pub fn intermediate_names(&self) -> Vec<String> {
        self.intermediates.iter().map(|e| e.name.clone()).collect()
    }

    /// Walks from the F9 certificate up to a root: each step must be signed by a bundle
    /// certificate with the issuer's name and be valid at `at`. Returns the root's name
    /// and SHA-256 (hex) and the names passed on the way (F9 first).
    pub(super) fn chain_of(
        &self,
        f9: &Certificate,
        f9_der: &[u8],
        at: SystemTime,
    ) -> Result<(String, String, Vec<String>), AttestationError> {
        let mut names = vec![display_name(f9.tbs_certificate().subject())];
        let (mut cert, mut der, mut which) = (f9, f9_der, Which::F9);
        for _ in 0..MAX_ISSUERS {
            let issuer = cert.tbs_certificate().issuer();
            let mut last_err = None;
            let by_name = |list: &'_ [Entry]| -> Vec<usize> {
                (0..list.len())
                    .filter(|&i| list[i].cert.tbs_certificate().subject() == issuer)
                    .collect()
            };
            for i in by_name(&self.roots) {
                let root = &self.roots[i];
                match check_signature(cert, der, &root.cert, which.clone()) {
                    Ok(()) => {
                        check_validity(&root.cert, Which::Bundle(root.name.clone()), at)?;
                        let sha256 = crate::crypto::sha256_hex(&root.der);
                        return Ok((root.name.clone(), sha256, names));
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            let mut next = None;
            for i in by_name(&self.intermediates) {
                let inter = &self.intermediates[i];
                match check_signature(cert, der, &inter.cert, which.clone()) {
                    Ok(()) => {
                        next = Some(inter);
                        break;
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            let Some(inter) = next else {
                return Err(last_err.unwrap_or(AttestationError::UnknownRoot {
                    which,
                    issuer: display_name(issuer),
                }));
            };
            let inter_which = Which::Bundle(inter.name.clone());
            check_validity(&inter.cert, inter_which.clone(), at)?;
            names.push(inter.name.clone());
            (cert, der, which) = (&inter.cert, &inter.der, inter_which);
        }
        Err(AttestationError::ChainTooLong { which })
    }
}

/// DER of every CERTIFICATE block in `text`.
pub(super) fn pem_certificates(text: &str) -> Result<Vec<Vec<u8>>, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines().map(str::trim) {
        match &mut block {
            None if line == BEGIN => block = Some(format!("{BEGIN}\n")),
            None => {}
            Some(b) => {
                b.push_str(line);
                b.push('\n');
                if line == END {
                    let (label, der) = der::pem::decode_vec(b.as_bytes())
                        .map_err(|e| format!("bad PEM block: {e}"))?;
                    if label != "CERTIFICATE" {
                        return Err(format!("unexpected PEM label {label}"));
                    }
                    out.push(der);
                    block = None;
                }
            }
        }
    }
    if block.is_some() {
        return Err("a PEM block has no END line".into());
    }
    Ok(out)
}
