//! `renew --check --json` (kind `renew-check`): which certificates are due, nothing
//! changed. A renewal itself reports as kind `renew` (src/report/enroll.rs).

use super::Document;
use crate::renew::Due;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RenewCheck {
    pub token_serial: u32,
    /// Some slot is due or has an unfinished renewal (the run then exits 10).
    pub due: bool,
    /// Every certificate from the configured CA, due or not.
    pub slots: Vec<Due>,
}

impl Document for RenewCheck {
    fn kind(&self) -> &'static str {
        "renew-check"
    }
}
