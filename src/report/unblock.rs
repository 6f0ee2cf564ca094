//! `unblock --json` (kind `unblock`): a blocked PIN reset with the escrowed PUK.

use super::Document;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UnblockReport {
    pub token_serial: u32,
    pub pin_tries_left: Option<u8>,
    /// The PUK was replaced by a new random one, escrowed before it was set.
    pub puk_rotated: bool,
    /// Version of the token's escrow record in Vault KV after the run.
    pub escrow_version: u64,
    pub ok: bool,
}

impl Document for UnblockReport {
    fn kind(&self) -> &'static str {
        "unblock"
    }
}
