//! The client: login and token upkeep, authenticated requests, input checks. The
//! contract's endpoints are in `endpoints.rs`, the reading of answers in `answers.rs`.
//! (Over 500 lines: the last ~120 are its unit tests.)

use super::answers::{self, AuthData, MAX_LEASE_SECS};
use super::error::{from_response, ErrCtx, ReqKind, VaultError};
use super::transport::{Answer, Http, Payload, Repeat, Request, SecretBuf, TlsSettings};
use super::{AppRoleCreds, Stats, VaultConfig};
use crate::secret::VaultToken;
use reqwest::Method;
use serde::Serialize;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// A Vault client. Cheap to clone (the clones share the connection pool, the token and the
/// counters); `Send + Sync`.
#[derive(Clone)]
pub struct VaultClient {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) http: Http,
    pub(super) pki: String,
    pub(super) kv: String,
    approle: String,
    deadline: Duration,
    skip_verify: bool,
    auth: RwLock<Option<TokenState>>,
    creds: Mutex<Option<AppRoleCreds>>,
    /// Held while logging in or renewing, so that threads sharing the client do it once.
    pub(super) refresh: Mutex<()>,
    pub(super) logins: AtomicU64,
    renewals: AtomicU64,
}

#[derive(Clone)]
pub(super) struct TokenState {
    token: VaultToken,
    /// The TTL the login granted: the yardstick for "a third left".
    ttl: Duration,
    /// `None`: the token does not expire.
    expires: Option<Instant>,
    renewable: bool,
}

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
                client_cert: cfg.client_cert.clone(),
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

    pub(super) fn deadline(&self) -> Instant {
        Instant::now() + self.inner.deadline
    }

    fn current(&self) -> Option<TokenState> {
        self.inner
            .auth
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_current(&self, st: Option<TokenState>) {
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

    /// Keep AppRole credentials without logging in: the first authenticated request logs
    /// in (so the login can travel on another thread, overlapping the card's work).
    pub fn set_approle(&self, creds: AppRoleCreds) {
        *lock(&self.inner.creds) = Some(creds);
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
        let st = self.post_login(&path, &body, deadline)?;
        log::debug!(
            "logged in to Vault with AppRole (token TTL {} s, renewable: {})",
            st.ttl.as_secs(),
            st.renewable
        );
        Ok(st)
    }

    /// POST a login to `path` (any auth method), read the token from its answer and count
    /// the login: the one login request every auth method shares.
    pub(super) fn post_login(
        &self,
        path: &str,
        body: &Payload,
        deadline: Instant,
    ) -> Result<TokenState, VaultError> {
        let sent = Instant::now();
        let ans = self.inner.http.send(
            &Request {
                method: Method::POST,
                path,
                query: "",
                body,
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
            return Err(self.error(path, ReqKind::Login, &ans));
        }
        let st = self.parse_auth(path, &ans, sent, None)?;
        self.inner.logins.fetch_add(1, Ordering::Relaxed);
        Ok(st)
    }

    /// Read `auth` from a login / renew-self answer. `keep`: renew-self, whose answer names
    /// the same token.
    pub(super) fn parse_auth(
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
        let AuthData {
            client_token,
            lease_duration,
            renewable,
        } = answers::auth(path, &ans.body)?;
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
    pub(super) fn authed(
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

    pub(super) fn error(&self, path: &str, kind: ReqKind, ans: &Answer) -> VaultError {
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
pub(super) fn check_name(what: &str, s: &str) -> Result<(), VaultError> {
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
pub(super) fn check_path(what: &str, s: &str) -> Result<(), VaultError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::SignRequest;

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
