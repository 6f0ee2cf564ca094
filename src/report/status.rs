//! `status --json` (kind `status`): what a token holds, read without the PIN or the
//! management key. The structs stay in src/status.rs next to the code that reads them.

use super::Document;
use crate::status::TokenStatus;

impl Document for TokenStatus {
    fn kind(&self) -> &'static str {
        "status"
    }
}
