//! The test rig: real pcscd + virtual YubiKeys (card.rs) and a real OpenBao (vault.rs).
#![allow(dead_code)]

pub mod card;
pub mod vault;
