//! pivault: enroll YubiKey PIV tokens against Vault / OpenBao PKI.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)]

pub mod secret;
pub mod vault;
