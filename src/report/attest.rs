//! `pivault attest --json`: what each slot's attestation proves, or which check refused
//! it. Schema: `schemas/attest.schema.json`.

use crate::attestation::{Advisory, Attestation, Edition, FormFactor, KeyAlgorithm, SlotFinding};
use crate::piv::{FirmwareVersion, PinPolicy, Slot, TokenInfo, TouchPolicy};
use serde::Serialize;

/// One token's attestation report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AttestReport {
    pub schema: u32,
    pub command: &'static str,
    /// What the token answers to GET SERIAL / its version (not yet proven: compare
    /// with each slot's attested values).
    pub token_serial: u32,
    pub firmware: FirmwareVersion,
    pub reader: String,
    /// Where the trusted roots came from: "built in" (Yubico's, shipped) or the
    /// `--attestation-roots` file.
    pub trust_bundle: String,
    pub slots: Vec<SlotAttestation>,
    /// Every slot verified (and at least one slot was attested).
    pub ok: bool,
}

/// One slot: the proven facts, or the refusal.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SlotAttestation {
    pub slot: Slot,
    pub verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attested: Option<Attested>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
}

/// What a verified attestation proves.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Attested {
    /// Token serial in the attestation (41482.3.7); absent on some YubiKey 4 firmware.
    pub serial: Option<u32>,
    pub firmware: FirmwareVersion,
    pub form_factor: Option<FormFactor>,
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
    pub algorithm: KeyAlgorithm,
    /// SHA-256 of the attested SubjectPublicKeyInfo (DER), lowercase hex.
    pub public_key_sha256: String,
    /// The attested SubjectPublicKeyInfo, DER, base64.
    pub public_key: String,
    /// standard, fips or cspn (from the F9 certificate).
    pub edition: Edition,
    /// Subject of the trusted root the chain ends at, and its certificate's SHA-256.
    pub root: String,
    pub root_sha256: String,
    /// Certificates from F9 up to the root (root excluded), by name.
    pub chain: Vec<String>,
    /// Whether the attested key was compared with the key the slot holds (firmware 5.3+
    /// tells it; older firmware cannot).
    pub key_compared_with_slot: bool,
    /// Yubico security advisories that apply to this key on this firmware.
    pub advisories: Vec<AdvisoryReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AdvisoryReport {
    pub id: &'static str,
    pub summary: &'static str,
    pub url: &'static str,
}

impl From<Advisory> for AdvisoryReport {
    fn from(a: Advisory) -> Self {
        AdvisoryReport {
            id: a.id(),
            summary: a.summary(),
            url: a.url(),
        }
    }
}

/// Which check refused the attestation, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Refusal {
    /// format, chain, signature, root, validity, extensions, key-type, public-key,
    /// serial, slot or attested.
    pub check: &'static str,
    pub reason: String,
    pub hint: &'static str,
}

impl Attested {
    fn of(a: &Attestation, key_compared: bool) -> Attested {
        use base64::Engine;
        Attested {
            serial: a.serial,
            firmware: a.firmware,
            form_factor: a.form_factor,
            pin_policy: a.pin_policy,
            touch_policy: a.touch_policy,
            algorithm: a.algorithm,
            public_key_sha256: crate::crypto::sha256_hex(&a.public_key),
            public_key: base64::engine::general_purpose::STANDARD.encode(&a.public_key),
            edition: a.edition,
            root: a.root.clone(),
            root_sha256: a.root_sha256.clone(),
            chain: a.chain.clone(),
            key_compared_with_slot: key_compared,
            advisories: a.advisories().into_iter().map(Into::into).collect(),
        }
    }
}

impl SlotAttestation {
    pub fn of(slot: Slot, finding: &SlotFinding) -> SlotAttestation {
        match finding {
            SlotFinding::Verified {
                attestation,
                key_compared,
            } => SlotAttestation {
                slot,
                verified: true,
                attested: Some(Attested::of(attestation, *key_compared)),
                refused: None,
            },
            SlotFinding::Refused(e) => SlotAttestation {
                slot,
                verified: false,
                attested: None,
                refused: Some(Refusal {
                    check: e.check(),
                    reason: e.to_string(),
                    hint: e.hint(),
                }),
            },
        }
    }
}

impl AttestReport {
    pub fn new(token: &TokenInfo, trust_bundle: String, findings: &[(Slot, SlotFinding)]) -> Self {
        let slots: Vec<SlotAttestation> = findings
            .iter()
            .map(|(s, f)| SlotAttestation::of(*s, f))
            .collect();
        AttestReport {
            schema: super::SCHEMA_VERSION,
            command: "attest",
            token_serial: token.serial,
            firmware: token.version,
            reader: token.reader.clone(),
            trust_bundle,
            ok: !slots.is_empty() && slots.iter().all(|s| s.verified),
            slots,
        }
    }

    /// The first refusal, for the one-line error.
    pub fn first_refusal(&self) -> Option<(Slot, &Refusal)> {
        self.slots
            .iter()
            .find_map(|s| s.refused.as_ref().map(|r| (s.slot, r)))
    }

    pub fn to_text(&self) -> String {
        let mut s = format!(
            "token {} (firmware {}, reader '{}'), roots: {}\n",
            self.token_serial, self.firmware, self.reader, self.trust_bundle
        );
        if self.slots.is_empty() {
            s.push_str("  no slot holds a key\n");
        }
        for slot in &self.slots {
            if let Some(a) = &slot.attested {
                let serial = a.serial.map_or("not attested".into(), |n| n.to_string());
                let ff = a
                    .form_factor
                    .map_or("not attested".into(), |f| format!("{f:?}"));
                s.push_str(&format!(
                    "  slot {}  VERIFIED  {}\n       serial {serial}, firmware {}, form factor {ff}, edition {:?}\n       PIN policy {}, touch policy {}\n       public key sha256 {}{}\n       root '{}' (sha256 {}) via {}\n",
                    slot.slot,
                    a.algorithm,
                    a.firmware,
                    a.edition,
                    a.pin_policy,
                    a.touch_policy,
                    a.public_key_sha256,
                    if a.key_compared_with_slot { "" } else { " (firmware cannot show the slot's key to compare)" },
                    a.root,
                    a.root_sha256,
                    a.chain.join(" <- "),
                ));
                for adv in &a.advisories {
                    s.push_str(&format!(
                        "       advisory {}: {} ({})\n",
                        adv.id, adv.summary, adv.url
                    ));
                }
            }
            if let Some(r) = &slot.refused {
                s.push_str(&format!(
                    "  slot {}  REFUSED ({} check): {}\n",
                    slot.slot, r.check, r.reason
                ));
            }
        }
        s
    }
}
