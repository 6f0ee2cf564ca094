//! The test rig: real pcscd + virtual YubiKeys (card.rs), a real OpenBao (vault.rs), and
//! the real `pivault` binary and third-party clients (run.rs).
#![allow(dead_code)]

pub mod card;
pub mod private_pcscd;
pub mod run;
pub mod schema;
pub mod vault;
