//! `pivault doctor --json`: one document (kind `doctor`), one entry per check
//! (schemas/doctor.schema.json).

use super::Document;
use crate::piv::{FirmwareVersion, Role};
use serde::Serialize;

/// The checks, in the order they run and are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckId {
    /// pcscd running and answering this user.
    Pcscd,
    /// Readers seen (those asked for with --reader, or all).
    Readers,
    /// One line per reader: its token, or who holds it.
    Reader,
    /// A token is present in some reader.
    Tokens,
    /// One line per token: firmware and the Yubico advisories that apply to it.
    Firmware,
    VaultReachable,
    VaultTls,
    ClockSkew,
    Namespace,
    Login,
    /// One line per contract role: the sign pre-flight enroll does.
    Role,
    KvWritable,
}

impl CheckId {
    pub fn name(self) -> &'static str {
        match self {
            CheckId::Pcscd => "pcscd",
            CheckId::Readers => "readers",
            CheckId::Reader => "reader",
            CheckId::Tokens => "tokens",
            CheckId::Firmware => "firmware",
            CheckId::VaultReachable => "vault-reachable",
            CheckId::VaultTls => "vault-tls",
            CheckId::ClockSkew => "clock-skew",
            CheckId::Namespace => "namespace",
            CheckId::Login => "login",
            CheckId::Role => "role",
            CheckId::KvWritable => "kv-writable",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ok,
    /// Works, but a person should know (an advisory, plain HTTP, a small clock skew).
    Warn,
    /// Not checked, because a check it depends on failed (or it does not apply).
    Skipped,
    Fail,
}

impl CheckStatus {
    pub fn word(self) -> &'static str {
        match self {
            CheckStatus::Ok => "ok",
            CheckStatus::Warn => "warn",
            CheckStatus::Skipped => "skip",
            CheckStatus::Fail => "FAIL",
        }
    }
}

/// A program that may hold a reader (it is connected to pcscd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub pid: u32,
    /// The process name (`/proc/PID/comm`).
    pub name: String,
    /// What it is, when pivault knows the program ("GnuPG scdaemon", "OpenSC PKCS#11
    /// module in firefox-esr").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_as: Option<String>,
}

/// A Yubico security advisory that applies to the token's firmware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdvisoryRef {
    /// "YSA-2017-01".
    pub id: String,
    /// The key types it concerns ("rsa", "ecdsa").
    pub keys: String,
    pub summary: String,
    pub url: String,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub check: CheckId,
    pub status: CheckStatus,
    /// One line: what was found.
    pub message: String,
    /// One line: what to do about it (failures and warnings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// For a failure: the exit-code class it belongs to (see `pivault doctor --help`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reader: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_serial: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareVersion>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub advisories: Vec<AdvisoryRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<Holder>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The CA bundle file trusted for Vault's TLS ("system" store otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Vault's clock minus ours, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skew_seconds: Option<f64>,
    /// Vault's capabilities on a path (KV check).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
}

impl Check {
    pub fn new(check: CheckId, status: CheckStatus, message: impl Into<String>) -> Check {
        Check {
            check,
            status,
            message: message.into(),
            fix: None,
            exit_code: None,
            reader: None,
            token_serial: None,
            firmware: None,
            advisories: Vec::new(),
            holders: Vec::new(),
            role: None,
            ca_file: None,
            skew_seconds: None,
            capabilities: Vec::new(),
        }
    }

    pub fn ok(check: CheckId, message: impl Into<String>) -> Check {
        Check::new(check, CheckStatus::Ok, message)
    }

    pub fn warn(check: CheckId, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(check, CheckStatus::Warn, message).fix(fix)
    }

    pub fn skipped(check: CheckId, message: impl Into<String>) -> Check {
        Check::new(check, CheckStatus::Skipped, message)
    }

    pub fn fail(
        check: CheckId,
        exit_code: u8,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        let mut c = Check::new(check, CheckStatus::Fail, message).fix(fix);
        c.exit_code = Some(exit_code);
        c
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }

    pub fn reader(mut self, reader: &str) -> Check {
        self.reader = Some(reader.to_string());
        self
    }
}

impl Document for DoctorReport {
    fn kind(&self) -> &'static str {
        "doctor"
    }
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DoctorReport {
    /// No check failed (warnings allowed).
    pub ok: bool,
    /// The exit code: 0, or the class of the first failed check.
    pub exit_code: u8,
    pub checks: Vec<Check>,
}

impl DoctorReport {
    pub fn new(checks: Vec<Check>) -> DoctorReport {
        let exit_code = checks
            .iter()
            .find_map(|c| (c.status == CheckStatus::Fail).then_some(c.exit_code))
            .map(|c| c.unwrap_or(crate::error::exit::FAILED))
            .unwrap_or(crate::error::exit::OK);
        DoctorReport {
            ok: exit_code == crate::error::exit::OK,
            exit_code,
            checks,
        }
    }

    /// One line per check: `ok   pcscd: ...`, a failure or warning ending with `; fix: ...`.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{:<4} {}: {}",
                c.status.word(),
                c.check.name(),
                c.message
            ));
            if let (Some(f), CheckStatus::Fail | CheckStatus::Warn) = (&c.fix, c.status) {
                out.push_str(&format!("; fix: {f}"));
            }
            out.push('\n');
        }
        out.push_str(&if self.ok {
            "all checks passed\n".to_string()
        } else {
            let n = self
                .checks
                .iter()
                .filter(|c| c.status == CheckStatus::Fail)
                .count();
            format!("{n} check(s) failed (exit code {})\n", self.exit_code)
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit;

    #[test]
    fn the_first_failure_sets_the_exit_code_and_warnings_do_not() {
        let warn = Check::warn(CheckId::Firmware, "old", "replace it");
        let r = DoctorReport::new(vec![Check::ok(CheckId::Pcscd, "fine"), warn.clone()]);
        assert!(r.ok);
        assert_eq!(r.exit_code, exit::OK);
        let r = DoctorReport::new(vec![
            warn,
            Check::fail(CheckId::Tokens, exit::NEEDS_PERSON, "none", "insert one"),
            Check::fail(CheckId::Login, exit::USAGE, "bad", "fix it"),
        ]);
        assert!(!r.ok);
        assert_eq!(r.exit_code, exit::NEEDS_PERSON);
        let text = r.render_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "one line per check and a summary: {text}");
        assert_eq!(lines[1], "FAIL tokens: none; fix: insert one");
        assert!(
            lines[3].contains("2 check(s) failed (exit code 3)"),
            "{text}"
        );
    }
}
