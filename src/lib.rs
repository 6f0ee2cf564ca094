//! pivault: enroll YubiKey PIV tokens against HashiCorp Vault / OpenBao PKI.
//!
//! Keys are generated on the token, the PKCS#10 request is signed on the token, Vault's
//! PKI signs it through an AppRole login, and the certificate is verified (key, chain,
//! usage) before it is written back to the slot. The library reads no environment
//! variables and prompts for nothing; the `pivault` binary does that.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)]

pub mod attestation;
pub mod cardtls;
pub mod config;
pub mod credentials;
pub mod crypto;
pub mod csr;
pub mod doctor;
pub mod enroll;
pub mod error;
pub mod escrow;
pub mod hooks;
pub mod issuer;
pub mod journal;
pub mod piv;
pub mod profile;
pub mod renew;
pub mod report;
pub mod secret;
pub mod station;
pub mod status;
pub mod text;
pub mod vault;
pub mod verify;
pub mod workflow;

#[cfg(test)]
mod parser_props;

pub use error::Error;
