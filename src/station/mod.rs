//! The provisioning station: watch every reader, and enroll each inserted token per a
//! profile with random credentials escrowed in Vault KV *before* they are applied.
//!
//! Crash safety rests on two records: the KV escrow record (credentials live/pending,
//! the certificate in each slot, check-and-set) and the local fsynced journal (keys
//! generated, requests sent, certificates issued). A re-run reads both and resumes: a
//! pending credential change is finished first, a slot whose certificate fits is kept, a
//! certificate issued before a crash is re-imported rather than issued again, and a
//! request whose answer was lost is reported "in doubt", never sent again by itself.
//!
//! - `profile`: the profile file and allow-list;
//! - `process`: one token (credentials, then the per-token workflow with the station's
//!   slot policy);
//! - `watch`: readers, threads, summary;
//! - `report`: the JSON-lines report.

mod process;
pub mod profile;
pub mod report;
pub mod watch;

pub use profile::{CredentialPolicy, StationProfile, TokenEntry, TokensSection};
pub use report::{append_report, SlotLine, TokenLine, TokenResult};
pub use watch::{run, RunOptions, Summary};

use crate::escrow::Escrow;
use crate::issuer::VaultIssuer;
use crate::journal::Journal;
use crate::workflow::Preflight;
use std::collections::BTreeMap;

/// The station: one Vault session, a profile, where to journal.
pub struct Station<'a> {
    pub issuer: &'a VaultIssuer,
    pub escrow: Escrow<'a>,
    pub profile: StationProfile,
    pub allow: BTreeMap<u32, TokenEntry>,
    pub journal: Journal,
    /// Configured trust anchors (DER): issued certificates, certificates found in slots
    /// and certificates re-imported from a record must chain to one of them.
    pub anchors_der: Vec<Vec<u8>>,
    /// Vault's CA chain (DER, issuing CA first), to check certificates found in slots.
    pub ca_chain_der: Vec<Vec<u8>>,
    /// Replace certificates that already fit the profile.
    pub force: bool,
    /// Roles whose sign path Vault already accepted in this run.
    pub preflight: Preflight,
    /// Attestation bundle and the profile's `[attestation]` policy.
    pub attestation: Option<crate::workflow::attest::AttestSetup>,
}
