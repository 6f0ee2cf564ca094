//! `status --json` (kind `status`): what a token holds, read without the PIN or the
//! management key (src/status.rs reads it).

use super::Document;
use crate::piv::{Algorithm, FirmwareVersion, MgmAlgorithm, PinPolicy, Slot, TouchPolicy};
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
    pub advisories: Vec<super::attest::AdvisoryReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenStatus {
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

impl Document for TokenStatus {
    fn kind(&self) -> &'static str {
        "status"
    }
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
