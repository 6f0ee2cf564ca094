//! Vault client (see vault/client.rs).
