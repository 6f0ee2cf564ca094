//! `pivault status`: what a token holds, read without the PIN or the management key.

use crate::crypto;
use crate::error::Error;
use crate::piv::{
    Algorithm, FirmwareVersion, MgmAlgorithm, PinPolicy, PivToken, Slot, TokenError, TouchPolicy,
};
use crate::report::{rfc3339, SCHEMA_VERSION};
use crate::verify;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SlotStatus {
    pub slot: Slot,
    pub name: String,
    /// From GET METADATA (firmware >= 5.3), else from the certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_algorithm: Option<Algorithm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_generated_on_token: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_policy: Option<PinPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub touch_policy: Option<TouchPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256_fingerprint: Option<String>,
    /// Whether the certificate's key is the slot's key: `None` when the firmware cannot
    /// tell without the PIN (no GET METADATA before 5.3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_matches_key: Option<bool>,
    /// Yubico security advisories for this key type on this firmware (YSA-2017-01 ROCA,
    /// YSA-2024-03 EUCLEAK). Read without attestation, so a standard edition is assumed:
    /// `pivault attest` also knows FIPS and Bio models, whose EUCLEAK fix came later.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub advisories: Vec<crate::report::attest::AdvisoryReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenStatus {
    pub schema: u32,
    pub serial: u32,
    pub firmware: FirmwareVersion,
    pub reader: String,
    /// `None` when the token is in a PIN-verified state and does not tell the count.
    pub pin_tries_left: Option<u8>,
    /// `None` when the firmware cannot tell without spending a try.
    pub puk_tries_left: Option<u8>,
    pub mgmt_key_algorithm: Option<MgmAlgorithm>,
    pub mgmt_key_pin_protected: bool,
    pub mgmt_key_is_default: Option<bool>,
    pub slots: Vec<SlotStatus>,
}

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
        schema: SCHEMA_VERSION,
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

impl TokenStatus {
    pub fn to_text(&self) -> String {
        let opt = |o: Option<String>| o.unwrap_or_else(|| "unknown".into());
        let mut s = format!(
            "token {}  firmware {}  reader '{}'\n  PIN tries left {}   PUK tries left {}\n  management key {}{}{}\n",
            self.serial,
            self.firmware,
            self.reader,
            self.pin_tries_left
                .map(|n| n.to_string())
                .unwrap_or_else(|| "not shown (PIN verified)".into()),
            opt(self.puk_tries_left.map(|n| n.to_string())),
            opt(self.mgmt_key_algorithm.map(|a| a.to_string())),
            if self.mgmt_key_pin_protected { ", PIN-protected on the token" } else { "" },
            match self.mgmt_key_is_default {
                Some(true) => ", FACTORY DEFAULT",
                _ => "",
            },
        );
        if self.slots.is_empty() {
            s.push_str("  no keys or certificates\n");
        }
        for st in &self.slots {
            s.push_str(&format!(
                "  slot {} ({}): {}\n",
                st.slot,
                st.name,
                opt(st.key_algorithm.map(|a| a.to_string()))
            ));
            if let (Some(p), Some(t)) = (st.pin_policy, st.touch_policy) {
                s.push_str(&format!("      policy    PIN {p}, touch {t}\n"));
            }
            for a in &st.advisories {
                s.push_str(&format!(
                    "      ADVISORY  {}: {} ({})\n",
                    a.id, a.summary, a.url
                ));
            }
            match &st.subject {
                Some(subj) => {
                    s.push_str(&format!("      subject   {subj}\n"));
                    s.push_str(&format!("      issuer    {}\n", opt(st.issuer.clone())));
                    s.push_str(&format!("      not after {}\n", opt(st.not_after.clone())));
                    let m = match st.certificate_matches_key {
                        Some(true) => "yes",
                        Some(false) => "NO - the certificate is for another key",
                        None => "not checked (firmware has no key metadata)",
                    };
                    s.push_str(&format!("      matches key {m}\n"));
                }
                None => s.push_str("      no certificate\n"),
            }
        }
        s
    }
}
