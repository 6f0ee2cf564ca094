//! The station report: one JSON line per token, appended and fsynced.

use crate::error::Error;
use crate::piv::Slot;
use crate::report::{rfc3339, SlotReport, SlotResult};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

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
    pub schema: u32,
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

impl TokenLine {
    /// A line for a token, filled in as the work goes.
    pub fn new(serial: Option<u32>, reader: &str) -> TokenLine {
        TokenLine {
            schema: crate::report::SCHEMA_VERSION,
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

/// Append a line to the report file and fsync it.
pub fn append_report(path: &Path, line: &TokenLine) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Io {
        what: format!("report {}", path.display()),
        source: e,
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    let mut text = serde_json::to_string(line).map_err(|e| io(e.into()))?;
    text.push('\n');
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}
