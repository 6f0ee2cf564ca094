//! What a run did, as data: serialised to JSON (versioned schema) or rendered as text.

use serde::Serialize;
use std::time::SystemTime;

pub mod attest;
pub mod doctor;
pub mod enroll;
pub mod error;
pub mod list;
pub mod renew;
pub mod station;
pub mod status;
pub mod unblock;

pub use enroll::{EnrollReport, SlotReport, SlotResult};

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
