//! What a run did, as data: serialised to JSON (versioned schema) or rendered as text.

use crate::piv::{Algorithm, FirmwareVersion, Role, Slot};
use serde::Serialize;
use std::time::SystemTime;

pub mod error;

/// Version of the JSON output schema, shared by every `--json` document. Additive changes
/// (a new optional field, a new kind, a new enum value a reader may ignore) keep it; a
/// removed or renamed field, a changed type or meaning bumps it (README: JSON output).
pub const SCHEMA_VERSION: u32 = 1;

/// A `--json` document. Its `kind` names its JSON Schema, `schemas/<kind>.schema.json`.
pub trait Document: Serialize {
    fn kind(&self) -> &'static str;
}

/// `{"schema": SCHEMA_VERSION, "kind": …, <the document's fields>}`: the two fields every
/// document starts with are written here, once.
#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    schema: u32,
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// A document as one line of JSON.
pub fn to_json<T: Document>(doc: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string(&Envelope {
        schema: SCHEMA_VERSION,
        kind: doc.kind(),
        body: doc,
    })
}

pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".into())
}

/// What happened to a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotResult {
    /// A new certificate (enroll, station).
    Enrolled,
    /// A new certificate for a due one (renew).
    Renewed,
    /// The certificate already there fits: left alone.
    Kept,
    /// A certificate issued before a crash was imported (not issued again).
    Reimported,
    Failed,
}

impl SlotResult {
    pub fn name(self) -> &'static str {
        match self {
            SlotResult::Enrolled => "enrolled",
            SlotResult::Renewed => "renewed",
            SlotResult::Kept => "kept",
            SlotResult::Reimported => "reimported",
            SlotResult::Failed => "failed",
        }
    }
}

impl std::fmt::Display for SlotResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One slot's outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SlotReport {
    pub slot: Slot,
    pub algorithm: Algorithm,
    pub role: Role,
    pub result: SlotResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vault_warnings: Vec<String>,
    /// The verified attestation of a key generated in this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestation: Option<crate::workflow::attest::AttestationFacts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One token's outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EnrollReport {
    pub schema: u32,
    pub command: &'static str,
    pub token_serial: u32,
    pub firmware: FirmwareVersion,
    pub reader: String,
    pub slots: Vec<SlotReport>,
    /// CHUID/CCC written because they were absent.
    pub wrote_chuid_ccc: bool,
    pub ok: bool,
}

impl EnrollReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "token {} (firmware {}, reader '{}')\n",
            self.token_serial, self.firmware, self.reader
        );
        for r in &self.slots {
            match &r.error {
                None => {
                    s.push_str(&format!(
                        "  slot {} {:<8} {:<26} {}\n",
                        r.slot, r.algorithm, r.role, r.result
                    ));
                    if let Some(subj) = &r.subject {
                        s.push_str(&format!("       subject    {subj}\n"));
                    }
                    if let Some(serial) = &r.certificate_serial {
                        s.push_str(&format!("       serial     {serial}\n"));
                    }
                    if let Some(na) = &r.not_after {
                        s.push_str(&format!("       not after  {na}\n"));
                    }
                    if let Some(fp) = &r.sha256_fingerprint {
                        s.push_str(&format!("       sha256     {fp}\n"));
                    }
                    for w in &r.vault_warnings {
                        s.push_str(&format!("       vault warning: {w}\n"));
                    }
                }
                Some(e) => {
                    s.push_str(&format!(
                        "  slot {} {:<8} {:<26} FAILED: {e}\n",
                        r.slot, r.algorithm, r.role
                    ));
                }
            }
        }
        if self.wrote_chuid_ccc {
            s.push_str("  wrote CHUID and CCC (they were absent)\n");
        }
        s
    }
}

pub mod attest;
