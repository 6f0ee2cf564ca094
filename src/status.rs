//! `pivault status`: what a token holds, read without the PIN or the management key.

use crate::crypto;
use crate::error::Error;
use crate::piv::{FirmwareVersion, PivToken, Slot, TokenError};
use crate::report::rfc3339;
pub use crate::report::status::{SlotStatus, TokenStatus};
use crate::verify;

/// Read the token's state. Only occupied slots are listed.
pub fn read(token: &mut dyn PivToken) -> Result<TokenStatus, Error> {
    let info = token.info().clone();
    let pin_tries_left = token.pin_retries()?;
    let puk_tries_left = token.puk_retries()?;
    let mgm = token.mgm_key_state()?;
    let mut slots = Vec::new();
    for slot in Slot::all() {
        let key = match token.slot_key(slot) {
            Ok(k) => k,
            Err(TokenError::NotSupported { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let cert = token.read_certificate(slot)?;
        if key.is_none() && cert.is_none() {
            continue;
        }
        let mut st = SlotStatus {
            slot,
            name: slot.name(),
            key_algorithm: key.as_ref().map(|k| k.algorithm),
            key_generated_on_token: key.as_ref().and_then(|k| k.generated),
            pin_policy: key.as_ref().and_then(|k| k.pin_policy),
            touch_policy: key.as_ref().and_then(|k| k.touch_policy),
            subject: None,
            issuer: None,
            certificate_serial: None,
            not_before: None,
            not_after: None,
            sha256_fingerprint: None,
            certificate_matches_key: None,
            advisories: Vec::new(),
        };
        if let Some(der) = &cert {
            if let Ok(a) = verify::describe(der) {
                st.subject = Some(a.subject);
                st.issuer = Some(a.issuer);
                st.certificate_serial = Some(a.serial_hex);
                st.not_before = Some(rfc3339(a.not_before));
                st.not_after = Some(rfc3339(a.not_after));
                st.sha256_fingerprint = Some(a.sha256);
            }
            let cert_key = crate::piv::yubikey::spki_of_cert(der);
            if st.key_algorithm.is_none() {
                st.key_algorithm = cert_key.as_ref().and_then(crypto::algorithm_of);
            }
            if let (Some(k), Some(ck)) =
                (key.as_ref().and_then(|k| k.public_key.as_ref()), &cert_key)
            {
                st.certificate_matches_key = Some(k == ck);
            }
        }
        st.advisories = advisories_of(info.version, &st);
        slots.push(st);
    }
    Ok(TokenStatus {
        serial: info.serial,
        firmware: info.version,
        reader: info.reader,
        pin_tries_left,
        puk_tries_left,
        mgmt_key_algorithm: mgm.algorithm,
        mgmt_key_pin_protected: mgm.protected,
        mgmt_key_is_default: mgm.default,
        slots,
    })
}

/// The advisories for a slot's key; ROCA only for keys that may have been generated on
/// the token (an imported RSA key was made elsewhere).
fn advisories_of(
    firmware: FirmwareVersion,
    st: &SlotStatus,
) -> Vec<crate::report::attest::AdvisoryReport> {
    let Some(alg) = st.key_algorithm else {
        return Vec::new();
    };
    crate::attestation::advisories(firmware, crate::attestation::KeyAlgorithm::from(alg))
        .into_iter()
        .filter(|a| {
            *a != crate::attestation::Advisory::Roca || st.key_generated_on_token != Some(false)
        })
        .map(Into::into)
        .collect()
}
