//! HTTP to Vault: TLS policy, headers, timeouts, the retry loop, redirects, failover.
//! (About 500 lines, a tenth of them these docs: the retry loop and the redirect rules it
//! follows belong in one place. The rules as pure functions are in `policy.rs`.)
//!
//! One `reqwest::blocking::Client` (a keep-alive pool over rustls) serves every request:
//! a client that keeps its connection signs ~4× faster than one that reconnects
//! (openbao-facts.md, "Speed").
//!
//! Retry rules, from what an HA cluster does (openbao-facts.md, "HA behaviour"):
//! - a failed connection (nothing was sent) is retried on the next configured address, with
//!   exponential backoff and jitter once every address was tried, until the operation's
//!   deadline;
//! - sealed on every address stops at once: unsealing needs a person, waiting does not help;
//! - 307/308 is followed by hand (reqwest's policy would drop the body), with the same
//!   method, body and headers (token, namespace), at most [`MAX_REDIRECTS`] hops, never
//!   from https to http, and **only to a configured address** (same scheme, host and port as
//!   one of them): anywhere else would receive the token and the body (a secret_id, KV
//!   data). Such a redirect ends the call with [`VaultError::RedirectRefused`].
//!
//! What else is retried depends on [`Repeat`]:
//! - [`Repeat::Always`] (login, reads, the pre-flight, KV writes): also 429/5xx, timeouts and
//!   connections lost after sending. A KV check-and-set write that was carried out once
//!   fails its repeat with a CAS mismatch; after a lost answer that comes back as
//!   [`VaultError::InDoubt`] (see `client.rs`), so the caller reads the record back.
//! - [`Repeat::BeforeActing`] (`sign`: a second one issues a second certificate): only what
//!   is known to come before Vault acted — a failed connection, "sealed", and the 5xx that
//!   OpenBao answers before it routes a request to a backend (OpenBao `http/handler.go`:
//!   `handleRequestForwarding` 500 "local node not active but active cluster node not
//!   found"; `respondStandby` 503 "no active Vault instance found" / "node is not active";
//!   the seal check, 503 "Vault is sealed"). A timeout or a lost connection after sending,
//!   and every other 5xx (a 500 can follow a certificate issued but not stored; a proxy's
//!   502/504 can follow a request passed on), end the call with [`VaultError::InDoubt`].
//!   Such requests carry `X-Vault-No-Request-Forwarding: true`: a standby then answers 307
//!   to the leader without forwarding. Without it, a standby whose forwarded request
//!   failed *after* the leader took it falls back to a 307 too (`forwardRequest` →
//!   `respondStandby`), and following that 307 would sign twice. The cost: a standby's
//!   leader must be among the configured addresses for a sign to get through it.

use super::error::{from_response, is_transient_status, ErrCtx, ReqKind, VaultError};
use super::policy::{
    api_url, backoff, chain, classify, is_loopback, may_have_acted, origin, redact_url,
    redirect_target, should_retry,
};
use crate::secret::VaultToken;
use reqwest::blocking::{Body, Client, Response};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, LOCATION};
use reqwest::Method;
use std::io::Read;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use url::Url;
use zeroize::{Zeroize, Zeroizing};

/// Redirect hops followed for one attempt (standby → leader needs one).
pub(crate) const MAX_REDIRECTS: usize = 3;
/// Answers larger than this are refused: Vault's are a few KiB (a sign answer with its
/// chain ~5 KiB, a KV record well under 1 KiB).
pub(crate) const MAX_BODY: usize = 1 << 20;
/// Below this much time left, another attempt cannot succeed.
const MIN_ATTEMPT: Duration = Duration::from_millis(20);

/// A request body.
pub(crate) enum Payload {
    None,
    /// Not secret (a CSR, an empty object).
    Json(Vec<u8>),
    /// Holds a secret (login, KV data): our copy is zeroized on drop, and each attempt
    /// streams from it instead of handing reqwest an owned copy it would free unzeroized.
    /// (Buffers inside hyper and rustls are beyond our reach.)
    Secret(Arc<Zeroizing<Vec<u8>>>),
}

/// One API call.
pub(crate) struct Request<'a> {
    pub method: Method,
    /// Below `/v1/`, without the namespace, e.g. `pki/sign/yubikey-piv`. Validated by the
    /// caller; each segment is percent-encoded here.
    pub path: &'a str,
    pub query: &'a str,
    pub body: &'a Payload,
    pub token: Option<&'a VaultToken>,
    /// Send `X-Vault-Namespace` (everything but `sys/health`, which refuses it with 400).
    pub namespace: bool,
    pub repeat: Repeat,
    pub kind: ReqKind,
}

/// When a request may be sent again after a failure (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// After any transient failure: doing it twice does no harm.
    Always,
    /// Only after failures known to come before Vault acted; otherwise
    /// [`VaultError::InDoubt`].
    BeforeActing,
}

/// An earlier attempt of this call that may have been carried out.
pub(crate) struct Doubt {
    pub addr: String,
    pub sent_at: SystemTime,
}

/// Vault's answer: status, body (zeroized on drop: it may hold a token or KV data), and the
/// address that gave it.
pub(crate) struct Answer {
    pub status: u16,
    pub body: Zeroizing<Vec<u8>>,
    pub addr: String,
    /// When the request that got this answer was sent.
    pub sent_at: SystemTime,
    /// An earlier attempt of the same call may have been carried out (its answer was lost);
    /// only for [`Repeat::Always`] requests.
    pub doubt: Option<Doubt>,
    /// The server's `Date` header (RFC 9110 section 6.6.1, one-second resolution), when it
    /// sent a readable one: `pivault doctor` compares clocks with it.
    pub date: Option<SystemTime>,
    /// When the answer's headers arrived.
    pub received_at: SystemTime,
}

/// An HTTP-date (IMF-fixdate, "Wed, 02 Dec 2026 00:32:04 GMT"), read with the RFC 2822
/// parser it is a profile of.
pub(crate) fn http_date(v: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(v.trim(), &time::format_description::well_known::Rfc2822)
        .ok()
        .map(SystemTime::from)
}

pub(crate) struct Http {
    client: Client,
    addrs: Vec<Url>,
    namespace: Option<String>,
    request_timeout: Duration,
    /// The address that answered last: later calls start there.
    preferred: AtomicUsize,
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub client_cert: Option<Arc<super::client_cert::ClientCert>>,
}

/// TLS settings, checked before anything is built.
pub(crate) struct TlsSettings<'a> {
    pub ca_bundle_pem: Option<&'a [u8]>,
    pub skip_verify: bool,
    /// A client certificate whose key is on a token (`client_cert.rs`).
    pub client_cert: Option<Arc<super::client_cert::ClientCert>>,
}

impl Http {
    pub fn new(
        addrs: Vec<Url>,
        namespace: Option<String>,
        tls: TlsSettings<'_>,
        request_timeout: Duration,
    ) -> Result<Http, VaultError> {
        if addrs.is_empty() {
            return Err(VaultError::Config("no Vault address".into()));
        }
        for a in &addrs {
            if !matches!(a.scheme(), "http" | "https") || a.host_str().is_none() {
                return Err(VaultError::Config(format!(
                    "Vault address '{a}' must be http(s)://host[:port]"
                )));
            }
            if a.scheme() == "http" && !is_loopback(a) {
                log::warn!(
                    "Vault address {a} is plain HTTP: the token and secrets cross the network \
                     unencrypted"
                );
            }
        }
        if let Some(ns) = &namespace {
            if HeaderValue::from_str(ns).is_err() || ns.is_empty() {
                return Err(VaultError::Config(format!(
                    "namespace '{ns}' is not a valid name"
                )));
            }
        }
        if request_timeout.is_zero() {
            return Err(VaultError::Config(
                "the request timeout must be above zero".into(),
            ));
        }
        let mut b = Client::builder()
            .use_rustls_tls()
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            // Redirects are followed by hand (see the module docs).
            .redirect(reqwest::redirect::Policy::none())
            // The library reads no environment: no HTTP(S)_PROXY, so a token never goes to a
            // proxy nobody configured here.
            .no_proxy()
            .user_agent(concat!("pivault/", env!("CARGO_PKG_VERSION")))
            .timeout(request_timeout)
            .connect_timeout(request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(50))
            .pool_max_idle_per_host(8);
        if let Some(pem) = tls.ca_bundle_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| VaultError::Config(format!("the CA bundle is not PEM: {e}")))?;
            if certs.is_empty() {
                return Err(VaultError::Config(
                    "the CA bundle holds no certificate".into(),
                ));
            }
            // Only the given bundle is trusted: a private CA must not widen to the system
            // store, and the system store must not vouch for a Vault with a private CA.
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if tls.skip_verify {
            log::warn!(
                "TLS CERTIFICATE VERIFICATION IS OFF for Vault ({}): anyone on the path can \
                 read the token and the secrets. Use only in development; give the CA bundle \
                 instead (VAULT_CACERT / --ca-cert).",
                addrs.iter().map(Url::as_str).collect::<Vec<_>>().join(", ")
            );
            b = b.danger_accept_invalid_certs(true);
        }
        let client_cert = tls.client_cert.clone();
        if let Some(cert) = tls.client_cert {
            // Replaces the roots and verification set above with the same rules in a
            // rustls config of our own, which can carry the card-backed client key.
            let cfg = super::client_cert::tls_config(tls.ca_bundle_pem, tls.skip_verify, cert)
                .map_err(VaultError::Config)?;
            // No pooled connections: the certificate goes only on connections opened while
            // a login is on, so the login must never ride an earlier connection.
            b = b.use_preconfigured_tls(cfg).pool_max_idle_per_host(0);
        }
        let client = b.build().map_err(|e| {
            VaultError::Config(format!("cannot build the HTTP client: {}", chain(&e)))
        })?;
        Ok(Http {
            client,
            addrs,
            namespace,
            request_timeout,
            preferred: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            client_cert,
        })
    }

    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub fn addrs(&self) -> &[Url] {
        &self.addrs
    }

    /// Send `req`, retrying and failing over as the module docs say, until `deadline`.
    /// Returns any non-transient answer (2xx, 4xx) for the caller to read; transient answers
    /// that outlast the deadline come back as their error.
    pub fn send(&self, req: &Request<'_>, deadline: Instant) -> Result<Answer, VaultError> {
        let n = self.addrs.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut sealed = vec![false; n];
        let mut attempt: u32 = 0;
        let started = Instant::now();
        let mut doubt: Option<Doubt> = None;
        loop {
            let idx = (first + attempt as usize) % n;
            let base = &self.addrs[idx];
            let mut last_sent = None;
            let result = self.attempt(base, req, deadline, &mut last_sent);
            let (err, sent) = match result {
                Ok(mut ans) if !is_transient_status(ans.status) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    ans.doubt = doubt;
                    return Ok(ans);
                }
                Ok(ans) => (
                    from_response(self.ctx(req, &ans.addr), ans.status, &ans.body),
                    Some((ans.addr, ans.sent_at)),
                ),
                Err(e) => (e, last_sent),
            };
            // Whether this attempt may have been carried out: something was sent, and the
            // failure is one that can come after Vault acted.
            let acted = match &sent {
                Some(s) if may_have_acted(&err) => Some(s.clone()),
                _ => None,
            };
            let err = match err {
                // The deadline ran out before an attempt could start: say how long we tried.
                VaultError::Timeout { path, after } if after.is_zero() => VaultError::Timeout {
                    path,
                    after: started.elapsed(),
                },
                e => e,
            };
            if let Some((addr, sent_at)) = acted {
                match req.repeat {
                    Repeat::BeforeActing => {
                        return Err(VaultError::InDoubt {
                            path: req.path.to_string(),
                            addr,
                            sent_at,
                            cause: Box::new(err),
                        })
                    }
                    Repeat::Always if doubt.is_none() => doubt = Some(Doubt { addr, sent_at }),
                    Repeat::Always => {}
                }
            }
            if let VaultError::Sealed { .. } = err {
                sealed[idx] = true;
            }
            if !should_retry(&err, req.repeat, &sealed) {
                return Err(in_doubt_if_written(req, err, doubt));
            }
            attempt += 1;
            // Every address once without waiting, then back off between rounds.
            let delay = if !(attempt as usize).is_multiple_of(n) {
                Duration::ZERO
            } else {
                backoff(attempt / n as u32, rand::random::<f64>())
            };
            let now = Instant::now();
            if now + delay + MIN_ATTEMPT >= deadline {
                return Err(in_doubt_if_written(req, err, doubt));
            }
            log::warn!(
                "{err}; retrying{} (attempt {})",
                if delay.is_zero() {
                    String::new()
                } else {
                    format!(" in {} ms", delay.as_millis())
                },
                attempt + 1
            );
            self.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(delay);
        }
    }

    fn ctx<'a>(&'a self, req: &Request<'a>, addr: &'a str) -> ErrCtx<'a> {
        ErrCtx {
            path: req.path,
            addr,
            namespace: self.namespace.as_deref(),
            kind: req.kind,
        }
    }

    /// Whether `u` has the scheme, host and port of a configured address.
    fn is_configured(&self, u: &Url) -> bool {
        let o = u.origin();
        self.addrs.iter().any(|a| a.origin() == o)
    }

    /// One attempt against `base`, following redirects. `last_sent`: where and when the last
    /// request of this attempt went out (`None`: nothing was sent).
    fn attempt(
        &self,
        base: &Url,
        req: &Request<'_>,
        deadline: Instant,
        last_sent: &mut Option<(String, SystemTime)>,
    ) -> Result<Answer, VaultError> {
        let mut url = api_url(base, req.path, req.query)?;
        for _hop in 0..=MAX_REDIRECTS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < MIN_ATTEMPT {
                return Err(VaultError::Timeout {
                    path: req.path.to_string(),
                    after: Duration::ZERO,
                });
            }
            let timeout = self.request_timeout.min(left);
            let addr = origin(&url);
            let started = Instant::now();
            let sent_at = SystemTime::now();
            self.requests.fetch_add(1, Ordering::Relaxed);
            let mut rb = self
                .client
                .request(req.method.clone(), url.clone())
                .headers(self.headers(req)?)
                .timeout(timeout);
            if let Some(body) = body_of(req.body) {
                rb = rb.body(body);
            }
            *last_sent = Some((addr.clone(), sent_at));
            let resp = rb
                .send()
                .map_err(|e| classify(&e, &addr, req.path, timeout))?;
            let status = resp.status().as_u16();
            let received_at = SystemTime::now();
            let date = resp
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|v| v.to_str().ok())
                .and_then(http_date);
            log::debug!(
                "{} {} -> {} in {} ms",
                req.method,
                redact_url(&url),
                status,
                started.elapsed().as_millis()
            );
            if status == 307 || status == 308 {
                let next =
                    redirect_target(&url, resp.headers().get(LOCATION)).map_err(|detail| {
                        VaultError::BadResponse {
                            path: req.path.to_string(),
                            detail,
                        }
                    })?;
                if !self.is_configured(&next) {
                    return Err(VaultError::RedirectRefused {
                        path: req.path.to_string(),
                        from: addr,
                        to: origin(&next),
                    });
                }
                // Read the (small) body so the connection goes back to the pool.
                let _ = read_body(resp, 64 << 10);
                log::debug!("redirected to {}", redact_url(&next));
                url = next;
                continue;
            }
            let body = read_body(resp, MAX_BODY).map_err(|detail| VaultError::ConnectionLost {
                addr: addr.clone(),
                path: req.path.to_string(),
                detail,
            })?;
            return Ok(Answer {
                status,
                body,
                addr,
                sent_at,
                doubt: None,
                date,
                received_at,
            });
        }
        Err(VaultError::BadResponse {
            path: req.path.to_string(),
            detail: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    fn headers(&self, req: &Request<'_>) -> Result<HeaderMap, VaultError> {
        let mut h = HeaderMap::new();
        // Vault asks clients to send this (it blocks some SSRF against Vault Agent).
        h.insert("X-Vault-Request", HeaderValue::from_static("true"));
        if req.namespace {
            if let Some(ns) = &self.namespace {
                let v = HeaderValue::from_str(ns)
                    .map_err(|_| VaultError::Config(format!("namespace '{ns}' is not valid")))?;
                h.insert("X-Vault-Namespace", v);
            }
        }
        if let Some(t) = req.token {
            let mut v = HeaderValue::from_str(t.expose()).map_err(|_| VaultError::BadResponse {
                path: req.path.to_string(),
                detail: "Vault returned a token that is not a valid header value".into(),
            })?;
            // Keeps it out of hyper's and reqwest's Debug output.
            v.set_sensitive(true);
            h.insert("X-Vault-Token", v);
        }
        if !matches!(req.body, Payload::None) {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if req.repeat == Repeat::BeforeActing {
            // A standby answers 307 instead of forwarding (module docs).
            h.insert(
                "X-Vault-No-Request-Forwarding",
                HeaderValue::from_static("true"),
            );
        }
        Ok(h)
    }
}

/// A KV write that fails after an earlier attempt of it may have been carried out is in
/// doubt, whatever the last attempt said: the record may hold what was written.
fn in_doubt_if_written(req: &Request<'_>, err: VaultError, doubt: Option<Doubt>) -> VaultError {
    match (req.kind, doubt) {
        (ReqKind::KvWrite { .. }, Some(d)) => VaultError::InDoubt {
            path: req.path.to_string(),
            addr: d.addr,
            sent_at: d.sent_at,
            cause: Box::new(err),
        },
        (_, _) => err,
    }
}

fn body_of(p: &Payload) -> Option<Body> {
    Some(match p {
        Payload::None => return None,
        Payload::Json(v) => Body::from(v.clone()),
        Payload::Secret(buf) => Body::sized(
            SecretReader {
                buf: Arc::clone(buf),
                pos: 0,
            },
            buf.len() as u64,
        ),
    })
}

/// Streams a shared, zeroizing buffer into a request body.
struct SecretReader {
    buf: Arc<Zeroizing<Vec<u8>>>,
    pos: usize,
}

impl Read for SecretReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(out.len());
        out[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// A growable buffer that zeroizes every allocation it leaves behind (a plain `Vec` would
/// leave copies of a token in freed memory when it grows).
pub(crate) struct SecretBuf(Zeroizing<Vec<u8>>);

impl SecretBuf {
    pub fn with_capacity(n: usize) -> Self {
        SecretBuf(Zeroizing::new(Vec::with_capacity(n)))
    }

    pub fn extend(&mut self, data: &[u8]) {
        if self.0.len() + data.len() > self.0.capacity() {
            let want = (self.0.len() + data.len()).max(self.0.capacity() * 2);
            let mut bigger = Zeroizing::new(Vec::with_capacity(want));
            bigger.extend_from_slice(&self.0);
            // The old allocation is zeroized as `Zeroizing` drops it.
            self.0 = bigger;
        }
        self.0.extend_from_slice(data);
    }

    pub fn into_inner(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl std::io::Write for SecretBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.extend(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The body of `resp`, at most `max` bytes: a larger one (announced or sent) is an error,
/// and the connection is dropped instead of read to its end.
fn read_body(mut resp: Response, max: usize) -> Result<Zeroizing<Vec<u8>>, String> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("answer larger than {max} bytes; not read"));
    }
    let hint = resp.content_length().unwrap_or(0).min(max as u64) as usize;
    let mut buf = SecretBuf::with_capacity(hint.max(1024));
    let mut chunk = [0u8; 8192];
    let result = loop {
        match resp.read(&mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if buf.0.len() + n > max {
                    break Err(format!("answer larger than {max} bytes; not read"));
                }
                buf.extend(&chunk[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(format!("reading the answer: {}", chain(&e))),
        }
    };
    chunk.zeroize();
    result.map(|()| buf.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_buffers() {
        let mut b = SecretBuf::with_capacity(2);
        b.extend(b"hello");
        b.extend(b" world, longer than before");
        assert_eq!(&b.into_inner()[..], b"hello world, longer than before");
        let data = Arc::new(Zeroizing::new(b"0123456789".to_vec()));
        let mut r = SecretReader { buf: data, pos: 0 };
        let mut out = [0u8; 4];
        assert_eq!(r.read(&mut out).expect("read"), 4);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).expect("read");
        assert_eq!(rest, b"456789");
    }
}
