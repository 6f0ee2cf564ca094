//! The client: login and token upkeep, and the contract's endpoints on top of `transport`.

use super::error::{from_response, ErrCtx, ReqKind, VaultError};
use super::transport::{Answer, Http, Payload, Repeat, Request, SecretBuf, TlsSettings};
use super::{AppRoleCreds, Health, KvMeta, SignRequest, SignedCert, Stats, VaultConfig};
use crate::secret::VaultToken;
use crate::text::sanitize;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// A Vault client. Cheap to clone (the clones share the connection pool, the token and the
/// counters); `Send + Sync`.
#[derive(Clone)]
pub struct VaultClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: Http,
    pki: String,
    kv: String,
    approle: String,
    deadline: Duration,
    skip_verify: bool,
    auth: RwLock<Option<TokenState>>,
    creds: Mutex<Option<AppRoleCreds>>,
    /// Held while logging in or renewing, so that threads sharing the client do it once.
    refresh: Mutex<()>,
    logins: AtomicU64,
    renewals: AtomicU64,
}

#[derive(Clone)]
struct TokenState {
    token: VaultToken,
    /// The TTL the login granted: the yardstick for "a third left".
    ttl: Duration,
    /// `None`: the token does not expire.
    expires: Option<Instant>,
    renewable: bool,
}

/// Longest token lifetime taken from an answer (ten years; Vault's default maximum is 32
/// days). A larger `lease_duration` is clamped to it: `Instant + Duration` panics on
/// overflow, and the release build aborts on a panic.
const MAX_LEASE_SECS: u64 = 10 * 365 * 24 * 3600;

/// Largest KV v2 version taken from an answer (2^53, JSON's exact-integer limit). Versions
/// count writes; anything larger is not Vault talking, and a caller doing `version + 1`
/// must not overflow.
const MAX_KV_VERSION: u64 = 1 << 53;

/// Certificate `expiration` is clamped to [1970, 9999-12-31T23:59:59Z] (RFC 5280's
/// GeneralizedTime ends there), so that no caller overflows turning it into a time.
const MAX_EXPIRATION: i64 = 253_402_300_799;

impl TokenState {
    fn from_auth(token: VaultToken, lease: u64, renewable: bool, sent: Instant) -> Self {
        let ttl = Duration::from_secs(lease.min(MAX_LEASE_SECS));
        TokenState {
            token,
            ttl,
            // Counted from when the request left, so the estimate errs on the short side.
            // (`checked_add`: an Instant near its own end must not panic either.)
            expires: (lease > 0).then(|| sent.checked_add(ttl)).flatten(),
            renewable,
        }
    }

    fn is_fresh(&self, now: Instant) -> bool {
        match self.expires {
            None => true,
            Some(e) => e > now && e - now >= self.ttl / 3,
        }
    }

    fn is_expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves consistent data here (plain values).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `auth` of a login or renew-self answer.
#[derive(Deserialize)]
struct AuthAnswer {
    auth: Option<AuthData>,
}

#[derive(Deserialize)]
struct AuthData {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

impl VaultClient {
    /// Build the client (no request is made). Checks addresses, namespace, mounts and the CA
    /// bundle. With `tls_skip_verify` it logs a loud warning, every time.
    pub fn new(cfg: VaultConfig) -> Result<Self, VaultError> {
        for (what, m) in [
            ("PKI mount", &cfg.pki_mount),
            ("KV mount", &cfg.kv_mount),
            ("AppRole mount", &cfg.approle_mount),
        ] {
            check_path(what, m)?;
        }
        if cfg.deadline.is_zero() {
            return Err(VaultError::Config("the deadline must be above zero".into()));
        }
        let namespace = cfg
            .namespace
            .as_deref()
            .map(|n| n.trim().trim_matches('/'))
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let http = Http::new(
            cfg.addrs.clone(),
            namespace,
            TlsSettings {
                ca_bundle_pem: cfg.ca_bundle_pem.as_deref(),
                skip_verify: cfg.tls_skip_verify,
            },
            cfg.request_timeout,
        )?;
        Ok(VaultClient {
            inner: Arc::new(Inner {
                http,
                pki: cfg.pki_mount.trim_matches('/').to_string(),
                kv: cfg.kv_mount.trim_matches('/').to_string(),
                approle: cfg.approle_mount.trim_matches('/').to_string(),
                deadline: cfg.deadline,
                skip_verify: cfg.tls_skip_verify,
                auth: RwLock::new(None),
                creds: Mutex::new(None),
                refresh: Mutex::new(()),
                logins: AtomicU64::new(0),
                renewals: AtomicU64::new(0),
            }),
        })
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.deadline
    }

    fn current(&self) -> Option<TokenState> {
        self.inner
            .auth
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_current(&self, st: Option<TokenState>) {
        *self.inner.auth.write().unwrap_or_else(|e| e.into_inner()) = st;
    }

    /// Log in with AppRole and keep the token (and the credentials, to log in again when
    /// the token cannot be renewed). Later calls reuse the token.
    pub fn login(&self, creds: AppRoleCreds) -> Result<(), VaultError> {
        let _g = lock(&self.inner.refresh);
        let st = self.do_login(&creds, self.deadline())?;
        self.set_current(Some(st));
        *lock(&self.inner.creds) = Some(creds);
        Ok(())
    }

    fn do_login(&self, creds: &AppRoleCreds, deadline: Instant) -> Result<TokenState, VaultError> {
        if self.inner.skip_verify {
            log::warn!(
                "logging in to Vault WITHOUT TLS certificate verification: the secret_id and \
                 the token can be read by anyone on the path (development only)"
            );
        }
        #[derive(Serialize)]
        struct LoginBody<'a> {
            role_id: &'a str,
            secret_id: &'a str,
        }
        let secret = creds.secret_id.expose();
        let mut buf = SecretBuf::with_capacity(64 + creds.role_id.len() + 2 * secret.len());
        serde_json::to_writer(
            &mut buf,
            &LoginBody {
                role_id: &creds.role_id,
                secret_id: secret,
            },
        )
        .map_err(|e| VaultError::InvalidInput(format!("AppRole credentials: {e}")))?;
        let body = Payload::Secret(Arc::new(buf.into_inner()));
        let path = format!("auth/{}/login", self.inner.approle);
        let sent = Instant::now();
        let ans = self.inner.http.send(
            &Request {
                method: Method::POST,
                path: &path,
                query: "",
                body: &body,
                token: None,
                namespace: true,
                // A second login after a lost answer costs one token; with single-use
                // secret_ids it fails as the first would have.
                repeat: Repeat::Always,
                kind: ReqKind::Login,
            },
            deadline,
        )?;
        if ans.status != 200 {
            return Err(self.error(&path, ReqKind::Login, &ans));
        }
        let st = self.parse_auth(&path, &ans, sent, None)?;
        self.inner.logins.fetch_add(1, Ordering::Relaxed);
        log::debug!(
            "logged in to Vault with AppRole (token TTL {} s, renewable: {})",
            st.ttl.as_secs(),
            st.renewable
        );
        Ok(st)
    }

    /// Read `auth` from a login / renew-self answer. `keep`: renew-self, whose answer names
    /// the same token.
    fn parse_auth(
        &self,
        path: &str,
        ans: &Answer,
        sent: Instant,
        keep: Option<&TokenState>,
    ) -> Result<TokenState, VaultError> {
        let bad = |detail: &str| VaultError::BadResponse {
            path: path.to_string(),
            detail: detail.to_string(),
        };
        let parsed: AuthAnswer = serde_json::from_slice(&ans.body)
            // serde's message may quote the input: say only where it broke.
            .map_err(|e| bad(&format!("not a Vault auth answer ({})", position(&e))))?;
        let auth = parsed.auth.ok_or_else(|| bad("no `auth` in the answer"))?;
        let AuthData {
            client_token,
            lease_duration,
            renewable,
        } = auth;
        let token = match keep {
            Some(st) => {
                // Zeroize the copy in the answer; the token is the one we hold.
                drop(VaultToken::from(client_token));
                st.token.clone()
            }
            None => {
                if client_token.is_empty() {
                    return Err(bad("empty client_token"));
                }
                VaultToken::from(client_token)
            }
        };
        let mut st = TokenState::from_auth(token, lease_duration, renewable, sent);
        if let Some(old) = keep {
            st.ttl = old.ttl;
        }
        Ok(st)
    }

    /// Make sure the token has at least a third of its TTL left: renew it (renew-self), or
    /// log in again when renewal fails or is capped by the token's max TTL. Every
    /// authenticated call does this first.
    pub fn ensure_fresh_token(&self) -> Result<(), VaultError> {
        self.fresh_token(self.deadline()).map(|_| ())
    }

    fn fresh_token(&self, deadline: Instant) -> Result<VaultToken, VaultError> {
        if let Some(st) = self.current() {
            if st.is_fresh(Instant::now()) {
                return Ok(st.token);
            }
        }
        let _g = lock(&self.inner.refresh);
        // Another thread may have refreshed it while we waited.
        let current = self.current();
        if let Some(st) = &current {
            let now = Instant::now();
            if st.is_fresh(now) {
                return Ok(st.token.clone());
            }
            if st.renewable && !st.is_expired(now) {
                match self.renew(st, deadline) {
                    Ok(new) if new.is_fresh(Instant::now()) => {
                        let token = new.token.clone();
                        self.set_current(Some(new));
                        return Ok(token);
                    }
                    Ok(_) => {
                        log::info!("the Vault token reached its maximum TTL; logging in again")
                    }
                    Err(e) if e.is_transient() => {
                        // Still valid for a while: use it, try again next time.
                        log::warn!(
                            "renewing the Vault token failed ({e}); using it while it lasts"
                        );
                        return Ok(st.token.clone());
                    }
                    Err(e) => log::info!("renewing the Vault token failed ({e}); logging in again"),
                }
            }
        }
        let creds = lock(&self.inner.creds).clone();
        let Some(creds) = creds else {
            return match current {
                Some(st) if !st.is_expired(Instant::now()) => Ok(st.token),
                _ => Err(VaultError::NotLoggedIn),
            };
        };
        let st = self.do_login(&creds, deadline)?;
        let token = st.token.clone();
        self.set_current(Some(st));
        Ok(token)
    }

    fn renew(&self, st: &TokenState, deadline: Instant) -> Result<TokenState, VaultError> {
        let path = "auth/token/renew-self";
        let body = Payload::Json(b"{}".to_vec());
        let sent = Instant::now();
        let ans = self.inner.http.send(
            &Request {
                method: Method::POST,
                path,
                query: "",
                body: &body,
                token: Some(&st.token),
                namespace: true,
                repeat: Repeat::Always,
                kind: ReqKind::Other,
            },
            deadline,
        )?;
        if ans.status != 200 {
            return Err(self.error(path, ReqKind::Other, &ans));
        }
        let new = self.parse_auth(path, &ans, sent, Some(st))?;
        self.inner.renewals.fetch_add(1, Ordering::Relaxed);
        log::debug!(
            "renewed the Vault token ({} s left)",
            new.expires
                .map(|e| e.saturating_duration_since(Instant::now()).as_secs())
                .unwrap_or(0)
        );
        Ok(new)
    }

    /// Forget `token` if it is still the current one (Vault no longer accepts it).
    fn drop_token(&self, token: &VaultToken) {
        let mut g = self.inner.auth.write().unwrap_or_else(|e| e.into_inner());
        if g.as_ref().is_some_and(|st| st.token == *token) {
            *g = None;
        }
    }

    /// Whether Vault still accepts `token` (lookup-self answers 403 when it does not).
    fn token_rejected(&self, token: &VaultToken, deadline: Instant) -> bool {
        let ans = self.inner.http.send(
            &Request {
                method: Method::GET,
                path: "auth/token/lookup-self",
                query: "",
                body: &Payload::None,
                token: Some(token),
                namespace: true,
                repeat: Repeat::Always,
                kind: ReqKind::Other,
            },
            deadline,
        );
        matches!(ans, Ok(Answer { status: 403, .. }))
    }

    /// An authenticated request. A 403 is either the policy or a token Vault no longer
    /// accepts (revoked, lost in a restore); lookup-self tells them apart, and in the
    /// second case the client logs in again and repeats the request once.
    fn authed(
        &self,
        method: Method,
        path: &str,
        body: &Payload,
        repeat: Repeat,
        kind: ReqKind,
        deadline: Instant,
    ) -> Result<Answer, VaultError> {
        let send = |token: &VaultToken| {
            self.inner.http.send(
                &Request {
                    method: method.clone(),
                    path,
                    query: "",
                    body,
                    token: Some(token),
                    namespace: true,
                    repeat,
                    kind,
                },
                deadline,
            )
        };
        let token = self.fresh_token(deadline)?;
        let ans = send(&token)?;
        if ans.status != 403 || lock(&self.inner.creds).is_none() {
            return Ok(ans);
        }
        if !self.token_rejected(&token, deadline) {
            return Ok(ans);
        }
        log::info!("Vault no longer accepts the token; logging in again");
        self.drop_token(&token);
        let token = self.fresh_token(deadline)?;
        send(&token)
    }

    fn error(&self, path: &str, kind: ReqKind, ans: &Answer) -> VaultError {
        from_response(
            ErrCtx {
                path,
                addr: &ans.addr,
                namespace: self.inner.http.namespace(),
                kind,
            },
            ans.status,
            &ans.body,
        )
    }

    /// `sys/health`, without the namespace header (Vault refuses it there). Sealed and
    /// standby nodes answer too: see the fields.
    pub fn health(&self) -> Result<Health, VaultError> {
        let path = "sys/health";
        let ans = self.inner.http.send(
            &Request {
                method: Method::GET,
                path,
                // Every state answers 200, so that the state is data, not an error.
                query: "standbyok=true&perfstandbyok=true&sealedcode=200&uninitcode=200",
                body: &Payload::None,
                token: None,
                namespace: false,
                repeat: Repeat::Always,
                kind: ReqKind::Other,
            },
            self.deadline(),
        )?;
        if ans.status != 200 {
            return Err(self.error(path, ReqKind::Other, &ans));
        }
        #[derive(Deserialize)]
        struct H {
            #[serde(default)]
            initialized: bool,
            #[serde(default)]
            sealed: bool,
            #[serde(default)]
            standby: bool,
            #[serde(default)]
            performance_standby: bool,
            #[serde(default)]
            version: String,
            cluster_name: Option<String>,
        }
        let h: H = serde_json::from_slice(&ans.body).map_err(|e| VaultError::BadResponse {
            path: path.into(),
            detail: format!("not a health answer ({})", position(&e)),
        })?;
        Ok(Health {
            initialized: h.initialized,
            sealed: h.sealed,
            standby: h.standby,
            performance_standby: h.performance_standby,
            version: sanitize(&h.version),
            cluster_name: h.cluster_name.as_deref().map(sanitize),
            addr: ans.addr,
        })
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
        parse_signed(&path, &ans.body).map_err(|e| VaultError::InDoubt {
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
            let chain = parse_ca(&path, &ans.body)?;
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
        let chain = parse_ca(&path, &ans.body)?;
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
        #[derive(Deserialize)]
        #[serde(bound = "T: DeserializeOwned")]
        struct R<T> {
            data: D<T>,
        }
        #[derive(Deserialize)]
        #[serde(bound = "T: DeserializeOwned")]
        struct D<T> {
            data: Option<T>,
            metadata: M,
        }
        #[derive(Deserialize)]
        struct M {
            version: u64,
        }
        let r: R<T> = serde_json::from_slice(&ans.body).map_err(|e| VaultError::BadResponse {
            path: path.clone(),
            detail: format!(
                "KV answer does not fit the expected type ({})",
                position(&e)
            ),
        })?;
        let version = r.data.metadata.version;
        if r.data.data.is_some() && !(1..=MAX_KV_VERSION).contains(&version) {
            return Err(VaultError::BadResponse {
                path,
                detail: format!("KV answer with an impossible version {version}"),
            });
        }
        Ok(r.data.data.map(|d| (d, KvMeta { version })))
    }

    /// Write KV v2 record `key`. `cas`: `Some(0)` creates only if absent, `Some(v)` replaces
    /// only version `v` ([`VaultError::CasMismatch`] otherwise), `None` writes regardless.
    ///
    /// Retried after a lost answer, a timeout or a 5xx: a blind write writes the same data
    /// again; a check-and-set write carried out the first time fails its repeat with a CAS
    /// mismatch, which then comes back as [`VaultError::InDoubt`] (cause `CasMismatch`):
    /// the write may be this one's, so read the record back and compare. A CAS mismatch
    /// with no lost answer before it is [`VaultError::CasMismatch`]: another writer.
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
        #[derive(Deserialize)]
        struct R {
            data: M,
        }
        #[derive(Deserialize)]
        struct M {
            version: u64,
        }
        let r: R = serde_json::from_slice(&ans.body).map_err(|e| VaultError::BadResponse {
            path: path.clone(),
            detail: format!("not a KV v2 write answer ({})", position(&e)),
        })?;
        let version = r.data.version;
        if !(1..=MAX_KV_VERSION).contains(&version) {
            return Err(VaultError::BadResponse {
                path,
                detail: format!("KV answer with an impossible version {version}"),
            });
        }
        Ok(KvMeta { version })
    }

    /// Time left on the current token; `None` when not logged in or it does not expire.
    pub fn token_expires_in(&self) -> Option<Duration> {
        self.current()?
            .expires
            .map(|e| e.saturating_duration_since(Instant::now()))
    }

    /// Counters since the client was built.
    pub fn stats(&self) -> Stats {
        Stats {
            requests: self.inner.http.requests.load(Ordering::Relaxed),
            logins: self.inner.logins.load(Ordering::Relaxed),
            renewals: self.inner.renewals.load(Ordering::Relaxed),
            retries: self.inner.http.retries.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultClient")
            .field(
                "addrs",
                &self
                    .inner
                    .http
                    .addrs()
                    .iter()
                    .map(url::Url::as_str)
                    .collect::<Vec<_>>(),
            )
            .field("namespace", &self.inner.http.namespace())
            .field("pki_mount", &self.inner.pki)
            .field("kv_mount", &self.inner.kv)
            .field("logged_in", &self.current().is_some())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A single path segment (role name): no `/`, not `.`/`..`, no control characters.
fn check_name(what: &str, s: &str) -> Result<(), VaultError> {
    if s.is_empty() || s == "." || s == ".." || s.contains('/') || s.chars().any(|c| c.is_control())
    {
        return Err(VaultError::InvalidInput(format!(
            "{what} '{}' is not a valid name",
            s.escape_debug()
        )));
    }
    Ok(())
}

/// A path of one or more segments (mount, KV key).
fn check_path(what: &str, s: &str) -> Result<(), VaultError> {
    let s = s.trim_matches('/');
    if s.is_empty() {
        return Err(VaultError::InvalidInput(format!("{what} is empty")));
    }
    for seg in s.split('/') {
        check_name(what, seg).map_err(|_| {
            VaultError::InvalidInput(format!("{what} '{}' is not a valid path", s.escape_debug()))
        })?;
    }
    Ok(())
}

fn parse_signed(path: &str, body: &[u8]) -> Result<SignedCert, VaultError> {
    #[derive(Deserialize)]
    struct R {
        data: Option<D>,
        #[serde(default)]
        warnings: Option<Vec<String>>,
    }
    #[derive(Deserialize)]
    struct D {
        certificate: String,
        #[serde(default)]
        issuing_ca: String,
        #[serde(default)]
        ca_chain: Option<Vec<String>>,
        #[serde(default)]
        serial_number: String,
        #[serde(default)]
        expiration: i64,
    }
    let bad = |detail: String| VaultError::BadResponse {
        path: path.to_string(),
        detail,
    };
    let r: R = serde_json::from_slice(body)
        .map_err(|e| bad(format!("not a sign answer ({})", position(&e))))?;
    let d = r
        .data
        .ok_or_else(|| bad("no `data` in the sign answer".into()))?;
    if !d.certificate.contains("-----BEGIN CERTIFICATE-----") {
        return Err(bad("no PEM certificate in the sign answer".into()));
    }
    Ok(SignedCert {
        certificate_pem: d.certificate,
        issuing_ca_pem: d.issuing_ca,
        ca_chain_pem: d.ca_chain.unwrap_or_default(),
        serial_number: sanitize(&d.serial_number),
        expiration: d.expiration.clamp(0, MAX_EXPIRATION),
        // Shown to the user: sanitised, and no more of them than Vault would ever send.
        warnings: r
            .warnings
            .unwrap_or_default()
            .iter()
            .take(super::error::MAX_MESSAGES)
            .map(|w| sanitize(w))
            .collect(),
    })
}

/// `data.ca_chain` (a PEM string or a list) or `data.certificate`, split into certificates.
fn parse_ca(path: &str, body: &[u8]) -> Result<Vec<String>, VaultError> {
    #[derive(Deserialize)]
    struct R {
        data: Option<D>,
    }
    #[derive(Deserialize)]
    struct D {
        #[serde(default)]
        ca_chain: Option<serde_json::Value>,
        #[serde(default)]
        certificate: Option<String>,
    }
    let r: R = serde_json::from_slice(body).map_err(|e| VaultError::BadResponse {
        path: path.to_string(),
        detail: format!("not a CA answer ({})", position(&e)),
    })?;
    let Some(d) = r.data else {
        return Ok(Vec::new());
    };
    let text = match d.ca_chain {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    };
    let mut out = split_pem(&text);
    if out.is_empty() {
        out = split_pem(d.certificate.as_deref().unwrap_or_default());
    }
    Ok(out)
}

/// Where a JSON answer broke, without quoting it (serde's message may quote the input,
/// which can hold a token, KV data or control characters).
fn position(e: &serde_json::Error) -> String {
    format!("line {}, column {}", e.line(), e.column())
}

fn split_pem(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(b) = rest.find(BEGIN) {
        let Some(e) = rest[b..].find(END) else { break };
        let end = b + e + END.len();
        out.push(rest[b..end].to_string());
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert!(check_name("role", "yubikey-piv").is_ok());
        for bad in ["", ".", "..", "a/b", "a\nb"] {
            assert!(check_name("role", bad).is_err(), "{bad:?}");
        }
        assert!(check_path("key", "tokens/12345678").is_ok());
        assert!(check_path("key", "/tokens/1/").is_ok());
        for bad in ["", "/", "a//b", "a/../b", "a/./b"] {
            assert!(check_path("key", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn freshness_is_a_third_of_the_ttl() {
        let t0 = Instant::now();
        let st = TokenState::from_auth(VaultToken::new("t"), 30, true, t0);
        assert!(st.is_fresh(t0));
        assert!(st.is_fresh(t0 + Duration::from_secs(20)));
        assert!(!st.is_fresh(t0 + Duration::from_secs(21)));
        assert!(!st.is_expired(t0 + Duration::from_secs(29)));
        assert!(st.is_expired(t0 + Duration::from_secs(30)));
        let forever = TokenState::from_auth(VaultToken::new("root"), 0, false, t0);
        assert!(forever.is_fresh(t0 + Duration::from_secs(1 << 30)));
    }

    #[test]
    fn sign_answer_is_parsed() {
        let body = br#"{"request_id":"x","data":{"certificate":"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----","issuing_ca":"I","ca_chain":["I","R"],"serial_number":"4c:c6","expiration":1790000000,"not_before":1},"warnings":["ttl shortened"]}"#;
        let s = parse_signed("pki/sign/x", body).expect("parsed");
        assert_eq!(s.ca_chain_pem, vec!["I".to_string(), "R".to_string()]);
        assert_eq!(s.serial_number, "4c:c6");
        assert_eq!(s.expiration, 1_790_000_000);
        assert_eq!(s.warnings, vec!["ttl shortened".to_string()]);
        let no_warn = br#"{"data":{"certificate":"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----"},"warnings":null}"#;
        assert!(parse_signed("p", no_warn)
            .expect("parsed")
            .warnings
            .is_empty());
        assert!(parse_signed("p", br#"{"data":null}"#).is_err());
        assert!(parse_signed("p", b"<html>").is_err());
    }

    #[test]
    fn ca_answers_as_string_or_list() {
        let a = "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----";
        let b = "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----";
        let as_string =
            serde_json::json!({"data": {"ca_chain": format!("{a}\n{b}\n"), "certificate": a}});
        assert_eq!(
            parse_ca("p", as_string.to_string().as_bytes()).expect("ok"),
            vec![a.to_string(), b.to_string()]
        );
        let as_list = serde_json::json!({"data": {"ca_chain": [a, b]}});
        assert_eq!(
            parse_ca("p", as_list.to_string().as_bytes())
                .expect("ok")
                .len(),
            2
        );
        let only_cert = serde_json::json!({"data": {"certificate": a}});
        assert_eq!(
            parse_ca("p", only_cert.to_string().as_bytes()).expect("ok"),
            vec![a.to_string()]
        );
    }

    #[test]
    fn debug_shows_no_secrets() {
        let creds = AppRoleCreds {
            role_id: "0123456789abcdef-role".into(),
            secret_id: crate::secret::SecretId::new("s3cr3t-secret-id"),
        };
        let d = format!("{creds:?}");
        assert!(!d.contains("s3cr3t") && !d.contains("abcdef-role"), "{d}");
        let mut cfg = VaultConfig::new(vec![url::Url::parse("http://127.0.0.1:1").expect("url")]);
        cfg.ca_bundle_pem = Some(b"-----BEGIN CERTIFICATE-----".to_vec());
        assert!(format!("{cfg:?}").contains("<27 bytes>"));
        cfg.ca_bundle_pem = None;
        let c = VaultClient::new(cfg).expect("client");
        let d = format!("{c:?}");
        assert!(d.contains("logged_in: false"), "{d}");
    }

    #[test]
    fn client_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<VaultClient>();
    }

    #[test]
    fn config_is_checked() {
        let addr = url::Url::parse("http://127.0.0.1:1").expect("url");
        let mut cfg = VaultConfig::new(vec![addr.clone()]);
        cfg.pki_mount = "../sys".into();
        assert!(matches!(
            VaultClient::new(cfg),
            Err(VaultError::InvalidInput(_))
        ));
        let mut cfg = VaultConfig::new(vec![addr.clone()]);
        cfg.ca_bundle_pem = Some(b"not pem".to_vec());
        assert!(matches!(VaultClient::new(cfg), Err(VaultError::Config(_))));
        assert!(matches!(
            VaultClient::new(VaultConfig::new(vec![])),
            Err(VaultError::Config(_))
        ));
        let mut cfg = VaultConfig::new(vec![url::Url::parse("ftp://x").expect("url")]);
        cfg.namespace = Some("ns".into());
        assert!(matches!(VaultClient::new(cfg), Err(VaultError::Config(_))));
        let mut cfg = VaultConfig::new(vec![addr]);
        cfg.namespace = Some("bad\nns".into());
        assert!(matches!(VaultClient::new(cfg), Err(VaultError::Config(_))));
    }

    #[test]
    fn input_is_checked_before_any_request() {
        let cfg = VaultConfig::new(vec![url::Url::parse("http://127.0.0.1:1").expect("url")]);
        let c = VaultClient::new(cfg).expect("client");
        let req = SignRequest {
            csr_pem: "garbage".into(),
            ..Default::default()
        };
        assert!(matches!(
            c.sign("yubikey-piv", &req),
            Err(VaultError::InvalidInput(_))
        ));
        let req = SignRequest {
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            alt_names: vec!["a,b".into()],
            ..Default::default()
        };
        assert!(matches!(
            c.sign("yubikey-piv", &req),
            Err(VaultError::InvalidInput(_))
        ));
        assert!(matches!(
            c.sign("../x", &req),
            Err(VaultError::InvalidInput(_))
        ));
        assert!(matches!(
            c.kv_read::<serde_json::Value>("a/../b"),
            Err(VaultError::InvalidInput(_))
        ));
        // Not logged in: no request is made.
        let req = SignRequest {
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            ..Default::default()
        };
        assert!(matches!(
            c.sign("yubikey-piv", &req),
            Err(VaultError::NotLoggedIn)
        ));
        assert_eq!(c.stats().requests, 0);
    }
}
