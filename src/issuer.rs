//! The production [`Issuer`]: Vault's PKI through pivault's own client, one AppRole login
//! per run, the token reused for every slot.

use crate::config::VaultSettings;
use crate::csr::Subject;
use crate::enroll::{Issued, Issuer};
use crate::error::Error;
use crate::piv::Role;
use crate::secret::SecretId;
use crate::vault::{AppRoleCreds, SignRequest, Stats, VaultClient, VaultConfig};
use crate::verify;

/// UPN other-name type (Microsoft, [MS-WCCE] 2.2.2.7.7.4), in Vault's `other_sans` syntax.
const UPN_OID: &str = "1.3.6.1.4.1.311.20.2.3";

pub struct VaultIssuer {
    client: VaultClient,
    trust_anchor: Option<std::path::PathBuf>,
    /// Put before each contract role name: "self-" with certificate login, whose policy
    /// allows only the self roles (fixtures/vault/cert-auth.sh).
    role_prefix: String,
}

/// The client settings for a resolved configuration (reads the CA bundle file).
pub fn client_config(s: &VaultSettings) -> Result<VaultConfig, Error> {
    let ca_bundle_pem = s
        .ca_cert
        .as_ref()
        .map(|p| {
            std::fs::read(p).map_err(|e| {
                Error::Config(format!("cannot read the CA bundle {}: {e}", p.display()))
            })
        })
        .transpose()?;
    Ok(VaultConfig {
        addrs: s.addrs.clone(),
        namespace: s.namespace.clone(),
        ca_bundle_pem,
        tls_skip_verify: s.tls_skip_verify,
        pki_mount: s.pki_mount.clone(),
        kv_mount: s.kv_mount.clone(),
        approle_mount: s.approle_mount.clone(),
        request_timeout: s.request_timeout,
        deadline: s.deadline,
        client_cert: None,
    })
}

impl VaultIssuer {
    /// Build the client and log in with AppRole.
    pub fn connect(
        s: &VaultSettings,
        role_id: &str,
        secret_id: zeroize::Zeroizing<String>,
    ) -> Result<VaultIssuer, Error> {
        let issuer = VaultIssuer::approle(s, role_id, secret_id)?;
        issuer.client.ensure_fresh_token()?;
        Ok(issuer)
    }

    /// Build the client with AppRole credentials, logging in at the first request (the
    /// pre-flight, which `enroll` sends while the token is opened).
    pub fn approle(
        s: &VaultSettings,
        role_id: &str,
        secret_id: zeroize::Zeroizing<String>,
    ) -> Result<VaultIssuer, Error> {
        let client = VaultClient::new(client_config(s)?)?;
        client.set_approle(AppRoleCreds {
            role_id: role_id.to_string(),
            secret_id: SecretId::new(secret_id.as_str()),
        });
        Ok(VaultIssuer {
            client,
            trust_anchor: s.trust_anchor.clone(),
            role_prefix: String::new(),
        })
    }

    /// Build the client without logging in, optionally with a TLS client certificate
    /// whose key is on a token (for [`VaultClient::login_cert`]); `role_prefix` goes before
    /// every contract role name ("self-" for the self roles of certificate login).
    pub fn unauthenticated(
        s: &VaultSettings,
        client_cert: Option<std::sync::Arc<crate::vault::client_cert::ClientCert>>,
        role_prefix: &str,
    ) -> Result<VaultIssuer, Error> {
        let mut cfg = client_config(s)?;
        cfg.client_cert = client_cert;
        Ok(VaultIssuer {
            client: VaultClient::new(cfg)?,
            trust_anchor: s.trust_anchor.clone(),
            role_prefix: role_prefix.to_string(),
        })
    }

    fn role_name(&self, role: Role) -> String {
        format!("{}{}", self.role_prefix, role.name())
    }

    pub fn client(&self) -> &VaultClient {
        &self.client
    }

    pub fn stats(&self) -> Stats {
        self.client.stats()
    }

    /// The configured trust anchors as DER (empty: trust the chain Vault returns).
    pub fn anchors_der(&self) -> Result<Vec<Vec<u8>>, Error> {
        let Some(p) = &self.trust_anchor else {
            return Ok(Vec::new());
        };
        let pem = std::fs::read_to_string(p)
            .map_err(|e| Error::Config(format!("cannot read trust anchor {}: {e}", p.display())))?;
        let ders = verify::pem_bundle_to_der(&pem)
            .map_err(|e| Error::Config(format!("trust anchor {}: {e}", p.display())))?;
        if ders.is_empty() {
            return Err(Error::Config(format!(
                "trust anchor {} holds no certificate",
                p.display()
            )));
        }
        Ok(ders)
    }
}

impl Issuer for VaultIssuer {
    fn preflight(&self, role: Role) -> Result<(), Error> {
        self.client.ensure_fresh_token()?;
        Ok(self.client.check_sign_access(&self.role_name(role))?)
    }

    fn issue(
        &self,
        role: Role,
        csr_pem: &str,
        subject: &Subject,
        ttl: Option<&str>,
    ) -> Result<Issued, Error> {
        self.client.ensure_fresh_token()?;
        let req = SignRequest {
            csr_pem: csr_pem.to_string(),
            common_name: Some(subject.common_name.clone()),
            // Roles that take SANs from the CSR ignore these; roles that do not, need them.
            alt_names: subject.email.iter().cloned().collect(),
            // The UPN travels here only, never in the CSR: Vault would merge both.
            other_sans: subject
                .upn
                .iter()
                .map(|u| format!("{UPN_OID};UTF8:{u}"))
                .collect(),
            ttl: ttl.map(str::to_string),
        };
        let signed = self.client.sign(&self.role_name(role), &req)?;
        let mut chain_pem = signed.ca_chain_pem.clone();
        if chain_pem.is_empty() {
            chain_pem.push(signed.issuing_ca_pem.clone());
        }
        Ok(Issued {
            certificate_pem: signed.certificate_pem,
            chain_pem,
            warnings: signed.warnings,
        })
    }
}
