//! The station's report lines (kind `station-line`): one JSON line per token, appended to
//! the report file (src/station/report.rs) and, with `--json`, printed on stdout.

use super::{rfc3339, Document, SlotReport, SlotResult};
use crate::piv::Slot;
use serde::Serialize;

/// What the station did with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenResult {
    /// Enrolled from factory state in this run.
    Enrolled,
    /// Finished what an earlier run left (credentials, slots).
    Resumed,
    /// Every slot already held a certificate that fits the profile.
    AlreadyEnrolled,
    /// Not on the allow-list.
    Refused,
    /// Pulled (or reset) during the work.
    Removed,
    Failed,
}

impl TokenResult {
    pub fn name(self) -> &'static str {
        match self {
            TokenResult::Enrolled => "enrolled",
            TokenResult::Resumed => "resumed",
            TokenResult::AlreadyEnrolled => "already-enrolled",
            TokenResult::Refused => "refused",
            TokenResult::Removed => "removed",
            TokenResult::Failed => "failed",
        }
    }
}

impl std::fmt::Display for TokenResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One line of the station report (JSON Lines).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TokenLine {
    pub time: String,
    pub serial: Option<u32>,
    pub reader: String,
    pub result: TokenResult,
    pub slots: Vec<SlotLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_version: Option<u64>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Slots whose certificate request was sent and its answer lost: Vault may have issued
    /// a certificate. Never repeated by itself; a person checks Vault's list.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub in_doubt: Vec<Slot>,
    /// The failure was Vault being unavailable: trying again later may succeed.
    #[serde(skip)]
    pub vault_unavailable: bool,
    /// The escrow record moved under this run (check-and-set refused, e.g. a lagging
    /// cluster node right after a leader change): worth one more pass, which reads it again.
    #[serde(skip)]
    pub record_moved: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SlotLine {
    pub slot: Slot,
    /// enrolled, reimported, kept
    pub action: SlotResult,
    pub certificate_serial: String,
    pub not_after: String,
    pub sha256_fingerprint: String,
}

impl SlotLine {
    /// The line for a slot the workflow finished.
    pub fn of(r: &SlotReport) -> Option<SlotLine> {
        Some(SlotLine {
            slot: r.slot,
            action: r.result,
            certificate_serial: r.certificate_serial.clone()?,
            not_after: r.not_after.clone()?,
            sha256_fingerprint: r.sha256_fingerprint.clone()?,
        })
    }
}

impl Document for TokenLine {
    fn kind(&self) -> &'static str {
        "station-line"
    }
}

impl TokenLine {
    /// A line for a token, filled in as the work goes.
    pub fn new(serial: Option<u32>, reader: &str) -> TokenLine {
        TokenLine {
            time: rfc3339(std::time::SystemTime::now()),
            serial,
            reader: reader.to_string(),
            result: TokenResult::Failed,
            slots: Vec::new(),
            record_version: None,
            duration_ms: 0,
            error: None,
            in_doubt: Vec::new(),
            vault_unavailable: false,
            record_moved: false,
        }
    }
}
