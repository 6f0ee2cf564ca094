//! The contract's endpoints on [`VaultClient`]: health, the sign pre-flight, sign, the CA
//! chain, KV v2 read and write (see the table in `mod.rs`).

use super::answers;
use super::client::{check_name, check_path};
use super::error::{ReqKind, VaultError};
use super::transport::{Answer, Payload, Repeat, Request, SecretBuf};
use super::{Health, KvMeta, SignRequest, SignedCert, VaultClient};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

impl VaultClient {
    /// `sys/health`, without the namespace header (Vault refuses it there). Sealed and
    /// standby nodes answer too: see the fields.
    pub fn health(&self) -> Result<Health, VaultError> {
        let path = "sys/health";
        let ans = self.health_answer()?;
        if ans.status != 200 {
            return Err(self.error(path, ReqKind::Other, &ans));
        }
        answers::health(path, &ans.body, ans.addr)
    }

    /// The raw answer of `sys/health` (no token, no namespace header). Every state
    /// answers 200, so that the state is data, not an error; `doctor` also reads its
    /// `Date` header.
    pub(super) fn health_answer(&self) -> Result<Answer, VaultError> {
        self.inner.http.send(
            &Request {
                method: Method::GET,
                path: "sys/health",
                query: "standbyok=true&perfstandbyok=true&sealedcode=200&uninitcode=200",
                body: &Payload::None,
                token: None,
                namespace: false,
                repeat: Repeat::Always,
                kind: ReqKind::Other,
            },
            self.deadline(),
        )
    }

    /// Pre-flight before touching a token: logged in (or can log in), the policy allows
    /// `<pki>/sign/<role>` and the role exists — without issuing anything.
    ///
    /// The contract policy grants no read on `<pki>/roles/*` and no `sys/capabilities-self`,
    /// so the check is a sign request with an empty CSR: Vault's ACL answers 403 first, then
    /// the PKI backend looks the role up ("unknown role: x", 400) before it parses the CSR
    /// ("\"csr\" is empty", 400). Nothing is issued or stored; the audit log shows one
    /// refused request.
    pub fn check_sign_access(&self, role: &str) -> Result<(), VaultError> {
        check_name("PKI role", role)?;
        let path = format!("{}/sign/{role}", self.inner.pki);
        let body = Payload::Json(br#"{"csr":""}"#.to_vec());
        let ans = self.authed(
            Method::POST,
            &path,
            &body,
            Repeat::Always,
            ReqKind::Sign,
            self.deadline(),
        )?;
        match ans.status {
            200..=299 => Ok(()),
            400 => match self.error(&path, ReqKind::Sign, &ans) {
                e @ VaultError::UnknownRole { .. } => Err(e),
                // Any other 400 comes from the role's own handler: the role exists.
                _ => Ok(()),
            },
            _ => Err(self.error(&path, ReqKind::Sign, &ans)),
        }
    }

    /// Have Vault sign a CSR with `<pki>/sign/<role>`. Never sent twice once it may have
    /// reached Vault (a repeat would issue a second certificate): a timeout or a lost
    /// connection after sending, a 5xx that can follow an issue, or a 200 whose body cannot
    /// be read comes back as [`VaultError::InDoubt`], for the caller to record. Failures
    /// known to come before Vault acted (no connection, sealed, a standby's refusal) are
    /// retried until the deadline (see `transport.rs`).
    pub fn sign(&self, role: &str, req: &SignRequest) -> Result<SignedCert, VaultError> {
        check_name("PKI role", role)?;
        if !req.csr_pem.contains("-----BEGIN CERTIFICATE REQUEST-----") {
            return Err(VaultError::InvalidInput(
                "the CSR is not a PEM certificate request".into(),
            ));
        }
        if let Some(bad) = req
            .alt_names
            .iter()
            .find(|n| n.contains(',') || n.is_empty())
        {
            return Err(VaultError::InvalidInput(format!(
                "alt name '{bad}' is empty or holds a comma (Vault splits alt_names on commas)"
            )));
        }
        #[derive(Serialize)]
        struct SignBody<'a> {
            csr: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            common_name: Option<&'a str>,
            #[serde(skip_serializing_if = "String::is_empty")]
            alt_names: String,
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            other_sans: &'a [String],
            #[serde(skip_serializing_if = "Option::is_none")]
            ttl: Option<&'a str>,
            format: &'static str,
        }
        let body = serde_json::to_vec(&SignBody {
            csr: &req.csr_pem,
            common_name: req.common_name.as_deref(),
            alt_names: req.alt_names.join(","),
            other_sans: &req.other_sans,
            ttl: req.ttl.as_deref(),
            format: "pem",
        })
        .map_err(|e| VaultError::InvalidInput(format!("sign request: {e}")))?;
        let path = format!("{}/sign/{role}", self.inner.pki);
        let ans = self.authed(
            Method::POST,
            &path,
            &Payload::Json(body),
            Repeat::BeforeActing,
            ReqKind::Sign,
            self.deadline(),
        )?;
        if ans.status != 200 {
            return Err(self.error(&path, ReqKind::Sign, &ans));
        }
        // Issued, but unusable: the certificate exists and pivault does not hold it.
        answers::signed(&path, &ans.body).map_err(|e| VaultError::InDoubt {
            path: path.clone(),
            addr: ans.addr.clone(),
            sent_at: ans.sent_at,
            cause: Box::new(e),
        })
    }

    /// The PKI mount's CA chain, issuing CA first: `<pki>/cert/ca_chain` (PKI serves it
    /// without a token), else `<pki>/cert/ca` (the issuing CA alone; in the policy).
    pub fn ca_chain(&self) -> Result<Vec<String>, VaultError> {
        let deadline = self.deadline();
        let get = |path: &str| {
            self.inner.http.send(
                &Request {
                    method: Method::GET,
                    path,
                    query: "",
                    body: &Payload::None,
                    token: None,
                    namespace: true,
                    repeat: Repeat::Always,
                    kind: ReqKind::Other,
                },
                deadline,
            )
        };
        let path = format!("{}/cert/ca_chain", self.inner.pki);
        let ans = get(&path)?;
        if ans.status == 200 {
            let chain = answers::ca(&path, &ans.body)?;
            if !chain.is_empty() {
                return Ok(chain);
            }
        } else if !matches!(ans.status, 403..=405) {
            return Err(self.error(&path, ReqKind::Other, &ans));
        }
        let path = format!("{}/cert/ca", self.inner.pki);
        let ans = get(&path)?;
        if ans.status != 200 {
            return Err(self.error(&path, ReqKind::Other, &ans));
        }
        let chain = answers::ca(&path, &ans.body)?;
        if chain.is_empty() {
            return Err(VaultError::BadResponse {
                path,
                detail: "no CA certificate in the answer".into(),
            });
        }
        Ok(chain)
    }

    /// Read the newest version of KV v2 record `key` under the KV mount. `None` when there is
    /// none (never written, or its newest version deleted).
    pub fn kv_read<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, KvMeta)>, VaultError> {
        check_path("KV key", key)?;
        let path = format!("{}/data/{key}", self.inner.kv);
        let ans = self.authed(
            Method::GET,
            &path,
            &Payload::None,
            Repeat::Always,
            ReqKind::Other,
            self.deadline(),
        )?;
        match ans.status {
            200 => {}
            // KV's own "not found" has an empty error list; a missing namespace or mount says
            // so in `errors`.
            404 if super::error::error_messages(&ans.body).is_empty() => return Ok(None),
            _ => return Err(self.error(&path, ReqKind::Other, &ans)),
        }
        answers::kv_read(&path, &ans.body)
    }

    /// Write KV v2 record `key`. `cas`: `Some(0)` creates only if absent, `Some(v)` replaces
    /// only version `v` ([`VaultError::CasMismatch`] otherwise), `None` writes regardless.
    ///
    /// Retried after a lost answer, a timeout or a 5xx: a blind write writes the same data
    /// again; a check-and-set write carried out the first time fails its repeat with a CAS
    /// mismatch, which then comes back as [`VaultError::InDoubt`] (cause `CasMismatch`):
    /// the write may be this one's, so read the record back and compare. A CAS mismatch
    /// with no lost answer before it is [`VaultError::CasMismatch`]: another writer. Any
    /// other failure after a lost answer is [`VaultError::InDoubt`] too.
    pub fn kv_write<T: Serialize>(
        &self,
        key: &str,
        data: &T,
        cas: Option<u64>,
    ) -> Result<KvMeta, VaultError> {
        check_path("KV key", key)?;
        #[derive(Serialize)]
        struct Opts {
            cas: u64,
        }
        #[derive(Serialize)]
        struct W<'a, T> {
            data: &'a T,
            #[serde(skip_serializing_if = "Option::is_none")]
            options: Option<Opts>,
        }
        let mut buf = SecretBuf::with_capacity(1024);
        serde_json::to_writer(
            &mut buf,
            &W {
                data,
                options: cas.map(|cas| Opts { cas }),
            },
        )
        .map_err(|e| VaultError::InvalidInput(format!("KV data for {key}: {e}")))?;
        let body = Payload::Secret(Arc::new(buf.into_inner()));
        let path = format!("{}/data/{key}", self.inner.kv);
        let kind = ReqKind::KvWrite { cas };
        let ans = self.authed(
            Method::POST,
            &path,
            &body,
            Repeat::Always,
            kind,
            self.deadline(),
        )?;
        if ans.status != 200 {
            let err = self.error(&path, kind, &ans);
            return Err(match (err, &ans.doubt) {
                (e @ VaultError::CasMismatch { .. }, Some(d)) => VaultError::InDoubt {
                    path,
                    addr: d.addr.clone(),
                    sent_at: d.sent_at,
                    cause: Box::new(e),
                },
                (e, _) => e,
            });
        }
        answers::kv_write(&path, &ans.body)
    }
}
