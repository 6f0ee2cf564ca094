//! The document `--json` runs print on stdout when they fail (kind `error`).

use super::Document;
use crate::error::Error;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorDoc {
    /// The one line also printed on stderr.
    pub error: String,
    /// What to do about it, when pivault knows.
    pub hint: Option<String>,
    /// The process exit code (`pivault::error::exit`).
    pub exit_code: u8,
}

impl ErrorDoc {
    pub fn of(e: &Error) -> ErrorDoc {
        ErrorDoc {
            error: e.to_string(),
            hint: e.hint(),
            exit_code: e.exit_code(),
        }
    }
}

impl Document for ErrorDoc {
    fn kind(&self) -> &'static str {
        "error"
    }
}
