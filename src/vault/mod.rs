//! pivault's own small Vault / OpenBao client: AppRole login, PKI sign, CA chain, KV v2.
//!
//! Why not `vaultrs`: its settings and login request derive `Debug` with the token and
//! secret_id inside, and it reads `VAULT_*` variables itself (STYLE.md). This client covers
//! the handful of endpoints of the Vault contract and nothing more:
//!
//! | call | endpoint | policy line (contract) |
//! |---|---|---|
//! | [`VaultClient::login`] | `auth/<approle>/login` | none (unauthenticated) |
//! | [`VaultClient::login_cert`] | `auth/<cert>/login`, TLS client certificate with its key on a token ([`client_cert`]) | none (optional part of the contract: fixtures/vault/cert-auth.sh) |
//! | [`VaultClient::ensure_fresh_token`] | `auth/token/renew-self` | `auth/token/renew-self` |
//! | 403 check | `auth/token/lookup-self` | `auth/token/lookup-self` |
//! | [`VaultClient::sign`], [`VaultClient::check_sign_access`] | `<pki>/sign/<role>` | `<pki>/sign/*` |
//! | [`VaultClient::ca_chain`] | `<pki>/cert/ca_chain`, else `<pki>/cert/ca` | `<pki>/cert/ca` (PKI serves both without a token) |
//! | [`VaultClient::kv_read`], [`VaultClient::kv_write`] | `<kv>/data/<key>` | `<kv>/data/*` |
//! | [`VaultClient::health`], [`VaultClient::clock`] | `sys/health` | none |
//! | [`VaultClient::capabilities_self`] (`pivault doctor`) | `sys/capabilities-self` | none: Vault's built-in `default` policy |
//! | [`VaultClient::kv_create_allowed`] (`pivault doctor`) | `<kv>/data/<key>`, a check-and-set write that cannot apply | `<kv>/data/*` |
//!
//! Properties:
//! - `X-Vault-Namespace` on every call but `sys/health` (which refuses it with 400);
//! - TLS by rustls: with a CA bundle only that bundle is trusted, otherwise the system
//!   store; TLS-skip only when configured, with a loud warning each time a client is built
//!   and at each login;
//! - a timeout on every request and a deadline on every operation; retries with backoff only
//!   for transient failures, failover across addresses, 307 followed with the body but only
//!   to a configured address; a `sign` is never sent twice once it may have reached Vault
//!   ([`VaultError::InDoubt`]) (see `transport.rs`);
//! - every text from the server that can reach a person (error messages, warnings) has its
//!   control characters escaped ([`crate::text::sanitize`]); integers from answers are
//!   bounded (token lifetime, KV version, expiration) so that no arithmetic overflows;
//! - one login, then the token is reused and renewed when less than a third of its TTL is
//!   left, with a new login if renewal fails;
//! - secrets (secret_id, token, KV data) live in zeroizing buffers, never in `Debug`,
//!   `Display`, errors or logs;
//! - the library reads no environment variable and no file: the caller passes everything in
//!   [`VaultConfig`]. (reqwest's proxy detection is off; with no CA bundle rustls loads the
//!   system store, which honours `SSL_CERT_FILE`.)

mod answers;
mod cert_login;
mod client;
pub mod client_cert;
mod endpoints;
mod error;
mod policy;
mod probe;
mod transport;

pub use client::VaultClient;
pub use error::VaultError;
pub use probe::ServerClock;

use crate::secret::SecretId;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Where Vault is and how to talk to it. Build with [`VaultConfig::new`] and adjust fields.
#[derive(Clone)]
pub struct VaultConfig {
    /// One address, or several nodes of an HA cluster, tried in turn on failure.
    pub addrs: Vec<url::Url>,
    /// Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// PEM bundle of the private CA that issued Vault's TLS certificate. When set, it is the
    /// only trust anchor.
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// Accept any server certificate. Development only; warns loudly.
    pub tls_skip_verify: bool,
    pub pki_mount: String,
    pub kv_mount: String,
    pub approle_mount: String,
    /// Limit on each HTTP request (connect + send + answer).
    pub request_timeout: Duration,
    /// Limit on a whole operation (a `sign` with its login, retries and redirects).
    pub deadline: Duration,
    /// TLS client certificate with its key on a token, for [`VaultClient::login_cert`].
    pub client_cert: Option<std::sync::Arc<client_cert::ClientCert>>,
}

impl VaultConfig {
    /// Contract defaults: mounts `pki`, `yubikeys`, `approle`; 30 s per request, 90 s per
    /// operation.
    pub fn new(addrs: Vec<url::Url>) -> Self {
        VaultConfig {
            addrs,
            namespace: None,
            ca_bundle_pem: None,
            tls_skip_verify: false,
            pki_mount: "pki".into(),
            kv_mount: "yubikeys".into(),
            approle_mount: "approle".into(),
            request_timeout: Duration::from_secs(30),
            deadline: Duration::from_secs(90),
            client_cert: None,
        }
    }
}

impl fmt::Debug for VaultConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultConfig")
            .field(
                "addrs",
                &self.addrs.iter().map(url::Url::as_str).collect::<Vec<_>>(),
            )
            .field("namespace", &self.namespace)
            .field(
                "ca_bundle_pem",
                &self
                    .ca_bundle_pem
                    .as_ref()
                    .map(|b| format!("<{} bytes>", b.len())),
            )
            .field("tls_skip_verify", &self.tls_skip_verify)
            .field("pki_mount", &self.pki_mount)
            .field("kv_mount", &self.kv_mount)
            .field("approle_mount", &self.approle_mount)
            .field("request_timeout", &self.request_timeout)
            .field("deadline", &self.deadline)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

/// AppRole credentials. `Debug` shows the start of the role_id only (it identifies the
/// role, and is semi-secret) and never the secret_id.
#[derive(Clone)]
pub struct AppRoleCreds {
    pub role_id: String,
    pub secret_id: SecretId,
}

impl fmt::Debug for AppRoleCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.role_id.chars().take(8).collect();
        f.debug_struct("AppRoleCreds")
            .field("role_id", &format!("{shown}…"))
            .field("secret_id", &self.secret_id)
            .finish()
    }
}

/// What to ask of `<pki>/sign/<role>`. With the contract's roles (`use_csr_common_name`,
/// `use_csr_sans`) the names come from the CSR and Vault ignores the JSON ones with a
/// warning; they are here for roles that take them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignRequest {
    pub csr_pem: String,
    pub common_name: Option<String>,
    /// DNS names and email addresses (Vault's comma-separated `alt_names`).
    pub alt_names: Vec<String>,
    /// `<oid>;UTF8:<value>`, e.g. a UPN `1.3.6.1.4.1.311.20.2.3;UTF8:jane@example.com`. Vault
    /// merges these with an otherName already in the CSR: put a UPN in one place only.
    pub other_sans: Vec<String>,
    /// Vault duration ("8760h"); above the role's max_ttl Vault shortens it with a warning.
    pub ttl: Option<String>,
}

/// A certificate as Vault issued it. PEM strings are as Vault sent them (no final newline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCert {
    pub certificate_pem: String,
    pub issuing_ca_pem: String,
    /// Issuing CA first, root last (when the mount knows the root).
    pub ca_chain_pem: Vec<String>,
    /// Colon-separated hex, as Vault writes it ("4c:c6:…").
    pub serial_number: String,
    /// notAfter, Unix seconds, clamped to [0, 253402300799] (year 9999).
    pub expiration: i64,
    /// Vault's warnings (TTL shortened, JSON names ignored, ...), control characters
    /// escaped ([`crate::text::sanitize`]): safe to print.
    pub warnings: Vec<String>,
}

/// Metadata of a KV v2 record version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvMeta {
    pub version: u64,
}

/// `sys/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub initialized: bool,
    pub sealed: bool,
    pub standby: bool,
    pub performance_standby: bool,
    pub version: String,
    pub cluster_name: Option<String>,
    /// The address that answered.
    pub addr: String,
}

/// Counters since the client was built (shared by its clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// HTTP requests sent, retries and redirects included.
    pub requests: u64,
    pub logins: u64,
    pub renewals: u64,
    /// Attempts repeated after a transient failure.
    pub retries: u64,
}
