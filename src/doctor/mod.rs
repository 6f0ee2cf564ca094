//! `pivault doctor`: why nothing works, one check per line, each with what to do about it.
//!
//! The checks (in order; a failure skips what depends on it): pcscd reachable, readers,
//! each reader's token or the program holding it, tokens present, each token's firmware
//! and the Yubico advisories that apply; then Vault reachable, TLS trusted (naming the CA
//! file), clock skew against Vault's `Date` header, namespace, AppRole login, the sign
//! pre-flight of the four contract roles, KV writable. Nothing is written to a token or to
//! Vault.
//!
//! Exit code ([`DoctorReport::exit_code`]): 0 when no check failed (warnings allowed), else
//! the class of the first failed check: 3 this machine needs a person (pcscd, reader,
//! token, clock), 2 configuration (TLS CA, namespace, AppRole credentials), 4 Vault
//! unavailable (down, sealed), 1 Vault refuses what pivault needs (policy, roles, KV).

pub mod holders;
pub mod local;
pub mod vault;

use crate::report::doctor::Check;
pub use crate::report::doctor::DoctorReport;

/// Run the local checks and the Vault checks, each when given.
pub fn run(
    local: Option<&local::LocalOptions>,
    vault: Option<Result<vault::VaultInputs, Box<Check>>>,
) -> DoctorReport {
    let mut checks = local.map(local::run).unwrap_or_default();
    match vault {
        Some(Ok(v)) => checks.extend(vault::run(&v)),
        Some(Err(c)) => checks.push(*c),
        None => {}
    }
    DoctorReport::new(checks)
}
