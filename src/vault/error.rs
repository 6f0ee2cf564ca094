//! What can go wrong talking to Vault, with the facts a person needs and the fix.
//!
//! The mapping from an HTTP answer to a variant is a pure function ([`from_response`]) so
//! that it is unit-tested against the answers recorded in `openbao-facts.md`.
//! (Over 500 lines: the last ~200 are those unit tests.)

use crate::text::sanitize;
use std::time::{Duration, SystemTime};

/// An error from [`VaultClient`](super::VaultClient). Display is one line naming what was
/// refused; [`VaultError::hint`] says what to do about it. No variant carries a token,
/// secret_id or KV payload, and every text that came from the server has its control
/// characters escaped ([`crate::text::sanitize`]), so an error can be printed as it is.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// 403: the token's policy does not allow the path (the token itself was checked and is
    /// valid), or a mount of that name does not exist.
    #[error("Vault refused {path}: permission denied (403)")]
    PermissionDenied { path: String },
    /// 400 on AppRole login: wrong role_id or secret_id, or a secret_id that expired or
    /// used up its uses (Vault does not say which).
    #[error("AppRole login at {path} failed: {message}")]
    InvalidCredentials { path: String, message: String },
    /// The PKI role does not exist (400 "unknown role").
    #[error("Vault has no PKI role '{role}' ({path})")]
    UnknownRole { role: String, path: String },
    /// 4xx other than the above: Vault heard the request and refused it; `errors` is Vault's
    /// own text (e.g. "common name evil.org not allowed by this role").
    #[error("Vault refused {path} ({status}): {}", join(errors))]
    Refused {
        path: String,
        status: u16,
        errors: Vec<String>,
    },
    /// 404 "namespace not found".
    #[error("Vault namespace '{namespace}' not found")]
    NamespaceNotFound { namespace: String },
    /// 404 on a path that should exist (mount missing, or the namespace is wrong).
    #[error("Vault has nothing at {path} (404){}", in_namespace(namespace))]
    NotFound {
        path: String,
        namespace: Option<String>,
        errors: Vec<String>,
    },
    /// 503 "Vault is sealed" from every configured address.
    #[error("Vault at {addr} is sealed")]
    Sealed { addr: String },
    /// 429/5xx: standby without forwarding, leader election, overload.
    #[error("Vault at {addr} is unavailable ({status}): {message}")]
    Unavailable {
        addr: String,
        status: u16,
        message: String,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, not TLS at all).
    #[error("TLS with Vault at {addr} failed: {detail}")]
    Tls { addr: String, detail: String },
    /// No connection could be made; nothing reached Vault.
    #[error("cannot connect to Vault at {addr}: {detail}")]
    Connect { addr: String, detail: String },
    /// The connection broke after the request was sent: Vault may have carried it out.
    #[error("connection to Vault at {addr} lost during {path}: {detail}")]
    ConnectionLost {
        addr: String,
        path: String,
        detail: String,
    },
    /// No answer within the request timeout, or the operation's deadline ran out.
    #[error("no answer from Vault for {path} within {}", secs(after))]
    Timeout { path: String, after: Duration },
    /// KV v2 check-and-set: the record changed since it was read.
    #[error(
        "KV record {key} changed since it was read (check-and-set expected version {})",
        cas_text(expected)
    )]
    CasMismatch { key: String, expected: Option<u64> },
    /// A 307/308 pointed at an address that is not one of the configured ones. Not
    /// followed: the request would carry the token (and a secret_id or KV data) there.
    #[error(
        "Vault at {from} redirected {path} to {to}, which is not a configured Vault address; \
         not followed"
    )]
    RedirectRefused {
        path: String,
        /// `scheme://host:port` that answered the redirect.
        from: String,
        /// `scheme://host:port` it pointed at.
        to: String,
    },
    /// The request may have been carried out, but no usable answer came back: the
    /// connection broke or timed out after the request was sent, or a 5xx came that Vault
    /// can give after acting (a storage write failing, a proxy timing out), or a `sign`
    /// answered 200 with a body that cannot be read. Only writes end like this: a `sign`
    /// (never sent twice: a second one would issue a second certificate), and a KV write
    /// that failed after an earlier attempt's answer was lost (retried, and its retry found
    /// the record changed — possibly by the first attempt — or failed too). Never retried;
    /// never "transient": record it, then find out (the certificate list or audit log for
    /// a sign; read the record back and compare for a KV write).
    #[error("{path} at {addr} may have been carried out, but no usable answer came back: {cause}")]
    InDoubt {
        /// API path, e.g. `pki/sign/yubikey-piv-auth` or `yubikeys/data/12345678`.
        path: String,
        /// `scheme://host:port` the request was last sent to.
        addr: String,
        /// When the request that may have been carried out was sent (this machine's clock).
        sent_at: SystemTime,
        /// What happened: `Timeout`, `ConnectionLost`, `Unavailable` (5xx), `BadResponse`,
        /// or `CasMismatch` (a KV write's retry).
        cause: Box<VaultError>,
    },
    /// An answer that does not fit Vault's API (not JSON, fields missing, too large).
    #[error("unexpected answer from Vault for {path}: {detail}")]
    BadResponse { path: String, detail: String },
    /// The client configuration is unusable (bad CA bundle, bad address, bad namespace).
    #[error("Vault client configuration: {0}")]
    Config(String),
    /// A caller-supplied value that cannot be part of a Vault path or request.
    #[error("invalid Vault request: {0}")]
    InvalidInput(String),
    /// An authenticated call before `login`.
    #[error("not logged in to Vault")]
    NotLoggedIn,
}

fn join(v: &[String]) -> String {
    if v.is_empty() {
        "no message".into()
    } else {
        v.join("; ")
    }
}

fn in_namespace(ns: &Option<String>) -> String {
    ns.as_ref()
        .map(|n| format!(" in namespace '{n}'"))
        .unwrap_or_default()
}

fn secs(d: &Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn cas_text(v: &Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

impl VaultError {
    /// Retrying later (or against another node) may succeed; nothing suggests the request
    /// itself is wrong.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            VaultError::Sealed { .. }
                | VaultError::Unavailable { .. }
                | VaultError::Connect { .. }
                | VaultError::ConnectionLost { .. }
                | VaultError::Timeout { .. }
        )
    }

    /// Vault could not be reached or could not serve: "retry later; nothing was changed on
    /// the token" (exit code 4 at the CLI).
    pub fn is_unavailable(&self) -> bool {
        self.is_transient()
    }

    /// Vault heard this particular request and refused it (the role's rules, the CSR): other
    /// requests of the same run may still succeed. A 403 is not one of these: the policy
    /// refuses the whole path, so every slot would fail the same way.
    pub fn is_request_refused(&self) -> bool {
        matches!(
            self,
            VaultError::Refused { .. } | VaultError::UnknownRole { .. }
        )
    }

    /// The request may have been carried out (see [`VaultError::InDoubt`]): record it, never
    /// repeat it automatically.
    pub fn is_in_doubt(&self) -> bool {
        matches!(self, VaultError::InDoubt { .. })
    }

    /// The HTTP status behind the error, when Vault answered.
    pub fn status(&self) -> Option<u16> {
        Some(match self {
            VaultError::InDoubt { cause, .. } => return cause.status(),
            VaultError::PermissionDenied { .. } => 403,
            VaultError::InvalidCredentials { .. }
            | VaultError::UnknownRole { .. }
            | VaultError::CasMismatch { .. } => 400,
            VaultError::Refused { status, .. } | VaultError::Unavailable { status, .. } => *status,
            VaultError::NamespaceNotFound { .. } | VaultError::NotFound { .. } => 404,
            VaultError::Sealed { .. } => 503,
            _ => return None,
        })
    }

    /// One line with the fix.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            // Measured: a token-less request to a mount that does not exist is 403 too, so
            // a refused login means the AppRole mount is not there (or not in this
            // namespace).
            VaultError::PermissionDenied { path }
                if path.starts_with("auth/") && path.ends_with("/login") =>
            {
                "no AppRole auth method at this path: check the AppRole mount name and the \
                 namespace (VAULT_NAMESPACE / --namespace)"
                    .into()
            }
            VaultError::PermissionDenied { path } => format!(
                "the AppRole policy lacks `{}` (see the Vault contract), or the mount name is \
                 wrong",
                policy_glob(path)
            ),
            VaultError::InvalidCredentials { .. } => {
                "check the role_id and secret_id; a secret_id may have expired or used up its \
                 uses: ask the Vault administrator for a new one"
                    .into()
            }
            VaultError::UnknownRole { role, path } => format!(
                "the PKI mount has no role '{role}': check the PKI mount name and the profile's \
                 role, or ask the administrator to create it (see the contract); {path}"
            ),
            VaultError::Refused { path, errors, .. } => refused_hint(path, errors)?,
            VaultError::NamespaceNotFound { .. } => {
                "the namespace is missing or wrong: check VAULT_NAMESPACE / --namespace".into()
            }
            VaultError::NotFound { namespace, .. } => match namespace {
                Some(_) => "404 on every path means the namespace is missing or wrong; \
                            otherwise check the mount names"
                    .into(),
                None => "check the mount names; on Vault Enterprise, set the namespace \
                         (VAULT_NAMESPACE / --namespace)"
                    .into(),
            },
            VaultError::Sealed { .. } => {
                "an operator must unseal Vault; nothing was changed on the token: run again \
                 later"
                    .into()
            }
            VaultError::Unavailable { .. } => {
                "Vault is in standby, electing a leader or overloaded; nothing was changed on \
                 the token: run again later"
                    .into()
            }
            VaultError::Tls { detail, .. } => tls_hint(detail),
            VaultError::Connect { .. } => {
                "check VAULT_ADDR (scheme, host, port) and that Vault is running and reachable"
                    .into()
            }
            VaultError::ConnectionLost { .. } => {
                "Vault may have carried out the request (issued the certificate, written the \
                 record); nothing was written to the token: run the same command again"
                    .into()
            }
            VaultError::Timeout { .. } => {
                "Vault did not answer in time; check its load and the network, or raise the \
                 request timeout / deadline"
                    .into()
            }
            VaultError::CasMismatch { .. } => {
                "another run changed this token's record at the same time; run again".into()
            }
            VaultError::NotLoggedIn => "log in with the AppRole first".into(),
            VaultError::RedirectRefused { to, .. } => format!(
                "if {to} is a node of this Vault cluster, add it to the configured addresses \
                 (vault.addrs / VAULT_ADDR): pivault sends the token and secrets nowhere else"
            ),
            VaultError::InDoubt { path, .. } if path.contains("/sign/") => {
                "Vault may have issued a certificate: it is not requested again automatically; \
                 look for it in Vault's certificate list or audit log before enrolling this \
                 slot again"
                    .into()
            }
            VaultError::InDoubt { .. } => {
                "the first attempt's answer was lost: read the record back; if it holds what \
                 was written, the write succeeded"
                    .into()
            }
            VaultError::BadResponse { .. }
            | VaultError::Config(_)
            | VaultError::InvalidInput(_) => return None,
        })
    }
}

/// The policy path (as written in the contract) that would allow `path`.
fn policy_glob(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 && matches!(*p, "sign" | "issue" | "data" | "metadata") && i + 1 < parts.len() {
            return format!("{}/*", parts[..=i].join("/"));
        }
    }
    path.to_string()
}

/// Which role setting a refusal of `<pki>/sign/<role>` points to (messages as OpenBao 2.x and
/// Vault 1.x word them).
fn refused_hint(path: &str, errors: &[String]) -> Option<String> {
    let msg = errors.join(" ").to_ascii_lowercase();
    let is_sign = path.contains("/sign/") || path.contains("/issue/");
    let setting = if msg.contains("other san") || msg.contains("othername") {
        "the role's allowed_other_sans (e.g. 1.3.6.1.4.1.311.20.2.3;UTF8:*@example.com for a UPN)"
    } else if msg.contains("uri") && msg.contains("not allowed") {
        "the role's allowed_uri_sans"
    } else if msg.contains("ip san") || msg.contains("ip sans") {
        "the role's allow_ip_sans"
    } else if msg.contains("common name") && msg.contains("required") {
        "the role's require_cn (or give a common name)"
    } else if msg.contains("not allowed by this role") || msg.contains("name not allowed") {
        "the role's allowed_domains / allow_any_name / allow_subdomains, or the subject you asked for"
    } else if msg.contains("requires keys of type") {
        "the role's key_type (or choose that algorithm for the slot)"
    } else if msg.contains("minimum") && msg.contains("bit") || msg.contains("key size") {
        "the role's key_bits (or a larger key for the slot)"
    } else if msg.contains("beyond the expiration of the ca")
        || msg.contains("notafter")
        || msg.contains("ttl")
    {
        "the requested TTL against the role's max_ttl and the CA's expiry (leaf_not_after_behavior)"
    } else if msg.contains("csr")
        || msg.contains("certificate request")
        || msg.contains("signature")
    {
        "the CSR itself (it was refused before any role setting was checked)"
    } else if is_sign {
        "the PKI role's settings"
    } else {
        return None;
    };
    Some(format!("Vault's message points to {setting}"))
}

fn tls_hint(detail: &str) -> String {
    let d = detail.to_ascii_lowercase();
    if d.contains("notvalidforname") || d.contains("not valid for name") {
        "the address's host name is not in the server certificate: use the name it was issued for"
            .into()
    } else if d.contains("expired") || d.contains("notvalidyet") {
        "the server certificate is expired or not yet valid: check the server and this clock".into()
    } else if d.contains("http request to an https server") {
        "the server speaks HTTPS: use an https:// address".into()
    } else if d.contains("does not speak tls")
        || d.contains("invalidcontenttype")
        || d.contains("corrupt message")
    {
        "the server does not speak TLS: check the scheme (http:// or https://) and the port".into()
    } else {
        "give the CA bundle of Vault's private CA with VAULT_CACERT / --ca-cert; TLS-skip only \
         in development"
            .into()
    }
}

/// Where the request went, for mapping an answer to an error.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrCtx<'a> {
    /// API path without `/v1/` and without the namespace, e.g. `pki/sign/yubikey-piv`.
    pub path: &'a str,
    pub addr: &'a str,
    pub namespace: Option<&'a str>,
    pub kind: ReqKind,
}

/// What the request was, where that changes the meaning of a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReqKind {
    Login,
    Sign,
    KvWrite { cas: Option<u64> },
    Other,
}

/// Vault's `{"errors": [...]}`, or the body's first line when it is not JSON (a proxy, or Go's
/// "Client sent an HTTP request to an HTTPS server.").
/// Each message is passed through [`sanitize`]: it will be printed.
pub(crate) fn error_messages(body: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Option<Vec<String>>,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) => e
            .errors
            .unwrap_or_default()
            .into_iter()
            .take(MAX_MESSAGES)
            .map(|m| sanitize(&tidy(&m)))
            .collect(),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let line = text.lines().map(str::trim).find(|l| !l.is_empty());
            line.map(|l| vec![sanitize(&truncate(l, 200))])
                .unwrap_or_default()
        }
    }
}

/// Vault sends one message per error; more than this is not Vault talking.
pub(crate) const MAX_MESSAGES: usize = 16;

/// Go's multierror wraps one message as "1 error occurred:\n\t* permission denied\n\n".
fn tidy(m: &str) -> String {
    let lines: Vec<&str> = m
        .lines()
        .map(|l| l.trim().trim_start_matches("* ").trim())
        .filter(|l| {
            !l.is_empty() && !l.ends_with("error occurred:") && !l.ends_with("errors occurred:")
        })
        .collect();
    if lines.is_empty() {
        m.trim().to_string()
    } else {
        lines.join("; ")
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Map a non-2xx answer to an error. `body` is never copied into the error beyond Vault's
/// `errors` strings, which never hold secrets.
pub(crate) fn from_response(ctx: ErrCtx<'_>, status: u16, body: &[u8]) -> VaultError {
    let errors = error_messages(body);
    let lower = errors.join(" ").to_ascii_lowercase();
    let path = ctx.path.to_string();
    let addr = ctx.addr.to_string();
    match status {
        400 if lower.contains("http request to an https server") => VaultError::Tls {
            addr,
            detail: "client sent an HTTP request to an HTTPS server".into(),
        },
        400 if ctx.kind == ReqKind::Login => VaultError::InvalidCredentials {
            path,
            message: if errors.is_empty() {
                "invalid role or secret ID".into()
            } else {
                errors.join("; ")
            },
        },
        400 if lower.contains("unknown role") => VaultError::UnknownRole {
            role: path.rsplit('/').next().unwrap_or_default().to_string(),
            path,
        },
        400 if lower.contains("check-and-set") => match ctx.kind {
            ReqKind::KvWrite { cas } => VaultError::CasMismatch {
                key: path,
                expected: cas,
            },
            _ => VaultError::Refused {
                path,
                status,
                errors,
            },
        },
        403 => VaultError::PermissionDenied { path },
        404 if lower.contains("namespace not found") => VaultError::NamespaceNotFound {
            namespace: ctx.namespace.unwrap_or_default().to_string(),
        },
        404 => VaultError::NotFound {
            path,
            namespace: ctx.namespace.map(str::to_string),
            errors,
        },
        503 if lower.contains("sealed") => VaultError::Sealed { addr },
        429 | 500..=599 => VaultError::Unavailable {
            addr,
            status,
            message: if errors.is_empty() {
                match status {
                    429 => "standby node".into(),
                    _ => "no message".into(),
                }
            } else {
                errors.join("; ")
            },
        },
        _ => VaultError::Refused {
            path,
            status,
            errors,
        },
    }
}

/// Statuses worth another attempt (this node or the next): standby (429), sealed or no
/// leader (503), internal/gateway errors (500, 502, 504) during a leader change.
pub(crate) fn is_transient_status(status: u16) -> bool {
    status == 429 || (500..=599).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(path: &str, kind: ReqKind) -> ErrCtx<'_> {
        ErrCtx {
            path,
            addr: "https://vault:8200",
            namespace: None,
            kind,
        }
    }

    #[test]
    fn login_400_is_invalid_credentials() {
        let e = from_response(
            ctx("auth/approle/login", ReqKind::Login),
            400,
            br#"{"errors":["invalid role or secret ID"]}"#,
        );
        assert!(
            matches!(e, VaultError::InvalidCredentials { ref message, .. } if message == "invalid role or secret ID")
        );
        assert!(e.hint().is_some_and(|h| h.contains("secret_id")));
        assert!(!e.is_transient());
    }

    #[test]
    fn forbidden_names_path_and_policy_line() {
        let e = from_response(
            ctx("pki/sign/yubikey-piv-auth", ReqKind::Sign),
            403,
            b"{\"errors\":[\"1 error occurred:\\n\\t* permission denied\\n\\n\"]}",
        );
        assert_eq!(
            e.to_string(),
            "Vault refused pki/sign/yubikey-piv-auth: permission denied (403)"
        );
        assert!(
            e.hint().is_some_and(|h| h.contains("`pki/sign/*`")),
            "{:?}",
            e.hint()
        );
        assert!(!e.is_request_refused());
    }

    #[test]
    fn policy_globs() {
        assert_eq!(policy_glob("pki/sign/yubikey-piv"), "pki/sign/*");
        assert_eq!(policy_glob("team/pki/sign/x"), "team/pki/sign/*");
        assert_eq!(policy_glob("yubikeys/data/tokens/123"), "yubikeys/data/*");
        assert_eq!(
            policy_glob("auth/token/lookup-self"),
            "auth/token/lookup-self"
        );
        assert_eq!(policy_glob("pki/cert/ca"), "pki/cert/ca");
    }

    #[test]
    fn sign_refusals_point_to_role_settings() {
        let cases = [
            ("common name evil.org not allowed by this role", "allowed_domains"),
            (
                "other SAN 1.3.6.1.4.1.311.20.2.3;UTF8:a@b not allowed for OID 1.3.6.1.4.1.311.20.2.3 by this role",
                "allowed_other_sans",
            ),
            ("role requires keys of type ec", "key_type"),
            (
                "role requires a minimum of a 384-bit key, but CSR's key is 256 bits",
                "key_bits",
            ),
            ("request signature invalid", "the CSR itself"),
            ("csr contains no data", "the CSR itself"),
        ];
        for (msg, want) in cases {
            let body = serde_json::json!({ "errors": [msg] }).to_string();
            let e = from_response(
                ctx("pki/sign/yubikey-piv", ReqKind::Sign),
                400,
                body.as_bytes(),
            );
            assert!(
                matches!(e, VaultError::Refused { status: 400, .. }),
                "{e:?}"
            );
            assert!(e.to_string().contains(msg), "{e}");
            assert!(e.is_request_refused());
            let hint = e.hint().unwrap_or_default();
            assert!(hint.contains(want), "{msg}: {hint}");
        }
    }

    #[test]
    fn unknown_role() {
        let e = from_response(
            ctx("pki/sign/nosuchrole", ReqKind::Sign),
            400,
            br#"{"errors":["unknown role: nosuchrole"]}"#,
        );
        assert!(matches!(e, VaultError::UnknownRole { ref role, .. } if role == "nosuchrole"));
        assert!(e.is_request_refused());
    }

    #[test]
    fn cas_mismatch_only_for_kv_writes() {
        let body = br#"{"errors":["check-and-set parameter did not match the current version"]}"#;
        let e = from_response(
            ctx("yubikeys/data/t/1", ReqKind::KvWrite { cas: Some(3) }),
            400,
            body,
        );
        assert!(matches!(
            e,
            VaultError::CasMismatch {
                expected: Some(3),
                ..
            }
        ));
        let e = from_response(ctx("x", ReqKind::Other), 400, body);
        assert!(matches!(e, VaultError::Refused { .. }));
    }

    #[test]
    fn namespace_and_not_found() {
        let c = ErrCtx {
            namespace: Some("team1"),
            ..ctx("auth/approle/login", ReqKind::Login)
        };
        let e = from_response(c, 404, br#"{"errors":["namespace not found"]}"#);
        assert!(
            matches!(e, VaultError::NamespaceNotFound { ref namespace } if namespace == "team1")
        );
        assert!(e.hint().is_some_and(|h| h.contains("namespace")));
        let e = from_response(c, 404, br#"{"errors":["no handler for route"]}"#);
        assert!(matches!(e, VaultError::NotFound { .. }));
        assert!(e
            .hint()
            .is_some_and(|h| h.contains("namespace is missing or wrong")));
    }

    #[test]
    fn sealed_standby_and_5xx_are_transient() {
        let c = ctx("pki/sign/x", ReqKind::Sign);
        let e = from_response(c, 503, br#"{"errors":["Vault is sealed"]}"#);
        assert!(matches!(e, VaultError::Sealed { .. }) && e.is_transient() && e.is_unavailable());
        let e = from_response(c, 503, br#"{"errors":["no active Vault instance found"]}"#);
        assert!(matches!(e, VaultError::Unavailable { status: 503, .. }) && e.is_transient());
        let e = from_response(c, 429, b"");
        assert!(matches!(e, VaultError::Unavailable { status: 429, .. }));
        let e = from_response(
            c,
            500,
            br#"{"errors":["local node not active but active cluster node not found"]}"#,
        );
        assert!(e.is_transient() && e.to_string().contains("active cluster node"));
        for s in [429, 500, 502, 503, 504] {
            assert!(is_transient_status(s));
        }
        for s in [200, 307, 400, 403, 404, 412] {
            assert!(!is_transient_status(s));
        }
    }

    #[test]
    fn plain_http_to_tls_port_is_a_tls_error() {
        let e = from_response(
            ctx("sys/health", ReqKind::Other),
            400,
            b"Client sent an HTTP request to an HTTPS server.\n",
        );
        assert!(matches!(e, VaultError::Tls { .. }));
        assert!(e.hint().is_some_and(|h| h.contains("https://")));
    }

    #[test]
    fn multierror_is_tidied_and_html_truncated() {
        assert_eq!(
            error_messages(b"{\"errors\":[\"2 errors occurred:\\n\\t* a\\n\\t* b\\n\\n\"]}"),
            vec!["a; b".to_string()]
        );
        let long = format!("<html>{}</html>", "x".repeat(1000));
        let m = error_messages(long.as_bytes());
        assert!(m[0].len() < 260);
        assert!(error_messages(b"").is_empty());
    }

    #[test]
    fn tls_hints() {
        let e = VaultError::Tls {
            addr: "https://v".into(),
            detail: "invalid peer certificate: UnknownIssuer".into(),
        };
        assert!(e
            .hint()
            .is_some_and(|h| h.contains("VAULT_CACERT") && h.contains("development")));
        let e = VaultError::Tls {
            addr: "https://v".into(),
            detail: "invalid peer certificate: NotValidForName".into(),
        };
        assert!(e.hint().is_some_and(|h| h.contains("host name")));
    }
}
