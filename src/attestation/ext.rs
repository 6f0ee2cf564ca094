//! Yubico's PIV attestation extensions (arc 1.3.6.1.4.1.41482.3), read from one
//! certificate (Yubico, "PIV attestation").

use super::{AttestationError, Which, OID_FIRMWARE, OID_FORM_FACTOR, OID_POLICY, OID_SERIAL};
use crate::piv::{FirmwareVersion, PinPolicy, TouchPolicy};
use const_oid::ObjectIdentifier;
use der::Decode;
use x509_cert::Certificate;

/// The Yubico extensions of one certificate.
pub(super) struct Extensions<'a> {
    which: Which,
    list: Vec<&'a x509_cert::ext::Extension>,
}

impl<'a> Extensions<'a> {
    pub(super) fn of(cert: &'a Certificate, which: Which) -> Result<Self, AttestationError> {
        let list: Vec<_> = cert
            .tbs_certificate()
            .extensions()
            .map(|e| e.iter().collect())
            .unwrap_or_default();
        // RFC 5280 §4.2: a certificate MUST NOT include more than one instance of an
        // extension; two firmware values would be a forgery's way to say two things.
        for (i, e) in list.iter().enumerate() {
            if list[..i].iter().any(|o| o.extn_id == e.extn_id) {
                return Err(AttestationError::Malformed {
                    which,
                    detail: format!("extension {} appears twice", e.extn_id),
                });
            }
        }
        Ok(Extensions { which, list })
    }

    fn get(&self, oid: ObjectIdentifier) -> Option<&'a [u8]> {
        self.list
            .iter()
            .find(|e| e.extn_id == oid)
            .map(|e| e.extn_value.as_bytes())
    }

    pub(super) fn has(&self, oid: ObjectIdentifier) -> bool {
        self.get(oid).is_some()
    }

    pub(super) fn malformed(
        &self,
        name: &'static str,
        oid: ObjectIdentifier,
        d: String,
    ) -> AttestationError {
        AttestationError::MalformedExtension {
            which: self.which.clone(),
            name,
            oid,
            detail: d,
        }
    }

    /// 41482.3.3: three bytes, major minor patch.
    pub(super) fn firmware(&self, which: Which) -> Result<FirmwareVersion, AttestationError> {
        let name = "firmware version";
        match self.get(OID_FIRMWARE) {
            Some(&[a, b, c]) => Ok(FirmwareVersion::new(a, b, c)),
            Some(v) => {
                Err(self.malformed(name, OID_FIRMWARE, format!("{} bytes, want 3", v.len())))
            }
            None => Err(AttestationError::MissingExtension {
                which,
                name,
                oid: OID_FIRMWARE,
            }),
        }
    }

    /// 41482.3.7: a DER INTEGER.
    pub(super) fn serial(&self, _which: Which) -> Result<Option<u32>, AttestationError> {
        self.get(OID_SERIAL)
            .map(|v| {
                u32::from_der(v)
                    .map_err(|e| self.malformed("serial number", OID_SERIAL, e.to_string()))
            })
            .transpose()
    }

    /// 41482.3.8: PIN policy byte, touch policy byte (01 never, 02 once, 03 always;
    /// 01 never, 02 always, 03 cached).
    pub(super) fn policies(&self) -> Result<(PinPolicy, TouchPolicy), AttestationError> {
        let name = "PIN and touch policy";
        let v = self
            .get(OID_POLICY)
            .ok_or(AttestationError::MissingExtension {
                which: self.which.clone(),
                name,
                oid: OID_POLICY,
            })?;
        let &[pin, touch] = v else {
            return Err(self.malformed(name, OID_POLICY, format!("{} bytes, want 2", v.len())));
        };
        let pin = match pin {
            1 => PinPolicy::Never,
            2 => PinPolicy::Once,
            3 => PinPolicy::Always,
            b => {
                return Err(self.malformed(name, OID_POLICY, format!("PIN policy {b:#04x}")));
            }
        };
        let touch = match touch {
            1 => TouchPolicy::Never,
            2 => TouchPolicy::Always,
            3 => TouchPolicy::Cached,
            b => {
                return Err(self.malformed(name, OID_POLICY, format!("touch policy {b:#04x}")));
            }
        };
        Ok((pin, touch))
    }

    /// 41482.3.9: one byte (firmware 5 and later).
    pub(super) fn form_factor(&self) -> Result<Option<u8>, AttestationError> {
        match self.get(OID_FORM_FACTOR) {
            None => Ok(None),
            Some(&[b]) => Ok(Some(b)),
            Some(v) => Err(self.malformed(
                "form factor",
                OID_FORM_FACTOR,
                format!("{} bytes, want 1", v.len()),
            )),
        }
    }
}
