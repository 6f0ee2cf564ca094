//! `enroll --json` and `renew --json` (kinds `enroll` and `renew`): one token's outcome,
//! slot by slot. The structs stay in src/report.rs, built by the workflow as the work goes.

use super::{Document, EnrollReport};

impl Document for EnrollReport {
    fn kind(&self) -> &'static str {
        self.command
    }
}
