//! The station report: one JSON line per token, appended and fsynced.

use crate::error::Error;
pub use crate::report::station::{SlotLine, TokenLine, TokenResult};
use std::io::Write;
use std::path::Path;

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
    let mut text = crate::report::to_json(line).map_err(|e| io(e.into()))?;
    text.push('\n');
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}
