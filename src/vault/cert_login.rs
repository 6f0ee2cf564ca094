//! Login with the TLS client certificate (`auth/<cert mount>/login`, Vault's "TLS
//! Certificates" auth method): no secret on the machine, the token's key proves the holder.
//!
//! Vault reads the certificate from the TLS connection the login arrives on, so the
//! connection must be new (the pool may hold one made without a certificate): the client
//! is built with the certificate in its TLS settings, and the certificate is presented
//! only while this login runs ([`ClientCert::arm`](super::client_cert::ClientCert::arm)).
//! A token from this login is not renewed by logging in again (that would need the card,
//! possibly busy): when it cannot be renewed it is used until it expires.

use super::client::VaultClient;
use super::error::VaultError;
use super::transport::Payload;

impl VaultClient {
    /// Log in at `auth/<mount>/login` with the client certificate set in
    /// [`super::VaultConfig::client_cert`], optionally naming the cert auth role (`name`;
    /// without it Vault tries every role trusting the certificate's issuer).
    pub fn login_cert(&self, mount: &str, role: Option<&str>) -> Result<(), VaultError> {
        super::client::check_path("cert auth mount", mount)?;
        let cert = self.inner.http.client_cert.clone().ok_or_else(|| {
            VaultError::Config("certificate login needs a client certificate".into())
        })?;
        let mut body = serde_json::Map::new();
        if let Some(r) = role {
            body.insert("name".into(), r.into());
        }
        let body = Payload::Json(serde_json::Value::Object(body).to_string().into_bytes());
        let path = format!("auth/{}/login", mount.trim_matches('/'));
        let _g = self.inner.refresh.lock().unwrap_or_else(|e| e.into_inner());
        // The certificate is offered only while this request's handshake runs.
        cert.arm(true);
        let st = self.post_login(&path, &body, self.deadline());
        cert.arm(false);
        let st = st?;
        log::debug!(
            "logged in to Vault with the token's certificate ({} handshake signature(s) by the token)",
            cert.signatures()
        );
        self.set_current(Some(st));
        Ok(())
    }
}
