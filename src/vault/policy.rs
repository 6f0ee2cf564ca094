//! The transport's rules as pure functions, unit-tested: which failures are retried and
//! which leave a request in doubt, backoff, URLs and redirects, and how a transport error
//! is classified. The module docs of `transport.rs` give the reasons.

use super::error::VaultError;
use super::transport::Repeat;
use reqwest::header::HeaderValue;
use std::time::Duration;
use url::Url;

/// Backoff: first delay, and the ceiling.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Whether another attempt may help. `sealed[i]`: address i said "sealed" in this call.
pub(crate) fn should_retry(err: &VaultError, repeat: Repeat, sealed: &[bool]) -> bool {
    match err {
        // Nothing reached Vault.
        VaultError::Connect { .. } => true,
        // Another node may be unsealed; once every node said sealed, stop.
        VaultError::Sealed { .. } => !sealed.iter().all(|s| *s),
        VaultError::Unavailable { .. }
        | VaultError::Timeout { .. }
        | VaultError::ConnectionLost { .. } => repeat == Repeat::Always || !may_have_acted(err),
        _ => false,
    }
}

/// Whether a request that failed with `err` after it was sent may have been carried out.
/// The 5xx that OpenBao answers before routing a request are not (module docs).
pub(crate) fn may_have_acted(err: &VaultError) -> bool {
    match err {
        VaultError::Timeout { after, .. } => !after.is_zero(),
        VaultError::ConnectionLost { .. } => true,
        VaultError::Unavailable {
            status, message, ..
        } => {
            let m = message.to_ascii_lowercase();
            let before_routing = *status == 429
                || m.contains("vault is sealed")
                || m.contains("no active vault instance found")
                || m.contains("local node not active but active cluster node not found")
                || m.contains("node is not active");
            !before_routing
        }
        _ => false,
    }
}

/// Delay before retry round `round` (1, 2, ...): 100 ms doubling up to 2 s, scaled by a
/// jitter in [0.5, 1) so that many clients do not hammer a recovering leader in step.
pub(crate) fn backoff(round: u32, jitter: f64) -> Duration {
    let exp = round.saturating_sub(1).min(16);
    let d = BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_MAX);
    d.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// `base` + `/v1/` + `path` (each segment percent-encoded) + `?query`.
pub(crate) fn api_url(base: &Url, path: &str, query: &str) -> Result<Url, VaultError> {
    let mut u = base.clone();
    {
        let mut segs = u
            .path_segments_mut()
            .map_err(|()| VaultError::Config(format!("'{base}' cannot be a base address")))?;
        segs.pop_if_empty().push("v1");
        for s in path.split('/') {
            segs.push(s);
        }
    }
    u.set_query((!query.is_empty()).then_some(query));
    u.set_fragment(None);
    Ok(u)
}

/// Where a 307/308 points, resolved against the request URL. Refuses a downgrade from
/// https to http: the token would cross the network in clear.
pub(crate) fn redirect_target(from: &Url, location: Option<&HeaderValue>) -> Result<Url, String> {
    let loc = location
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| "redirect without a usable Location header".to_string())?;
    let to = from.join(loc).map_err(|e| {
        format!(
            "redirect to an invalid location '{}': {e}",
            crate::text::sanitize(loc)
        )
    })?;
    if !matches!(to.scheme(), "http" | "https") {
        return Err(format!("redirect to a non-HTTP location '{}'", origin(&to)));
    }
    if from.scheme() == "https" && to.scheme() != "https" {
        return Err(format!(
            "refusing a redirect from https to {}: the token would be sent in clear",
            origin(&to)
        ));
    }
    Ok(to)
}

/// `scheme://host:port` of a URL.
pub(crate) fn origin(u: &Url) -> String {
    u.origin().ascii_serialization()
}

/// A URL for logs: no query (it never holds secrets today, but costs nothing to drop).
pub(crate) fn redact_url(u: &Url) -> String {
    format!("{}{}", origin(u), u.path())
}

pub(crate) fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The error and all its sources, joined.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    parts.join(": ")
}

/// Classify a transport error. rustls is not a direct dependency, so a TLS failure is found
/// by its message anywhere in the source chain ("invalid peer certificate: UnknownIssuer",
/// "received fatal alert", "corrupt message"): pure text, unit-tested below.
pub(crate) fn classify(
    e: &reqwest::Error,
    addr: &str,
    path: &str,
    timeout: Duration,
) -> VaultError {
    let mut messages = Vec::new();
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        messages.push(s.to_string());
        src = s.source();
    }
    classify_messages(
        &messages,
        e.is_connect(),
        e.is_timeout(),
        e.is_builder(),
        addr,
        path,
        timeout,
    )
}

pub(crate) fn classify_messages(
    messages: &[String],
    is_connect: bool,
    is_timeout: bool,
    is_builder: bool,
    addr: &str,
    path: &str,
    timeout: Duration,
) -> VaultError {
    // A TLS error can quote the server's certificate (the names it presented): outside
    // text, printed in the error.
    let messages: Vec<String> = messages.iter().map(|m| crate::text::sanitize(m)).collect();
    let messages = messages.as_slice();
    let deepest = messages.last().cloned().unwrap_or_default();
    if let Some(detail) = tls_detail(messages) {
        // A handshake failure comes while connecting: nothing was sent. A TLS failure on a
        // connection that was up (an alert mid-answer) may follow a request Vault carried
        // out: it is a lost connection, with the TLS reason.
        if is_connect {
            return VaultError::Tls {
                addr: addr.to_string(),
                detail,
            };
        }
        return VaultError::ConnectionLost {
            addr: addr.to_string(),
            path: path.to_string(),
            detail,
        };
    }
    if is_builder {
        return VaultError::InvalidInput(deepest);
    }
    // A connect timeout is a connect error: nothing was sent, so it is safe to retry.
    if is_connect {
        return VaultError::Connect {
            addr: addr.to_string(),
            detail: deepest,
        };
    }
    if is_timeout {
        return VaultError::Timeout {
            path: path.to_string(),
            after: timeout,
        };
    }
    VaultError::ConnectionLost {
        addr: addr.to_string(),
        path: path.to_string(),
        detail: deepest,
    }
}

fn tls_detail(messages: &[String]) -> Option<String> {
    // reqwest's outer message quotes the URL, which may contain anything: skip it.
    for m in messages.iter().rev().filter(|m| !m.contains("for url (")) {
        let l = m.to_ascii_lowercase();
        if l.contains("invalidcontenttype") || l.contains("corrupt message") {
            return Some(format!("the server does not speak TLS ({m})"));
        }
        if l.contains("invalid peer certificate")
            || l.contains("peer sent no certificates")
            || l.contains("received fatal alert")
            || l.contains("peer is incompatible")
            || l.contains("peer misbehaved")
            || l.contains("tls handshake")
        {
            return Some(m.clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn urls_are_built_per_segment() {
        let b = u("https://vault.example:8200");
        assert_eq!(
            api_url(&b, "pki/sign/yubikey-piv", "")
                .expect("url")
                .as_str(),
            "https://vault.example:8200/v1/pki/sign/yubikey-piv"
        );
        // A base with a path prefix (behind a reverse proxy) keeps it.
        let b = u("https://proxy.example/vault/");
        assert_eq!(
            api_url(&b, "sys/health", "standbyok=true")
                .expect("url")
                .as_str(),
            "https://proxy.example/vault/v1/sys/health?standbyok=true"
        );
        // Odd characters in a KV key are encoded, not interpreted.
        let b = u("http://127.0.0.1:8200");
        assert_eq!(
            api_url(&b, "kv/data/a b?c#d", "").expect("url").as_str(),
            "http://127.0.0.1:8200/v1/kv/data/a%20b%3Fc%23d"
        );
    }

    #[test]
    fn redirects() {
        let from = u("https://node2:8200/v1/pki/sign/x");
        let loc = HeaderValue::from_static("https://node1:8200/v1/pki/sign/x");
        assert_eq!(
            redirect_target(&from, Some(&loc)).expect("ok").as_str(),
            "https://node1:8200/v1/pki/sign/x"
        );
        let rel = HeaderValue::from_static("/v1/pki/sign/x");
        assert_eq!(
            redirect_target(&from, Some(&rel)).expect("ok").as_str(),
            "https://node2:8200/v1/pki/sign/x"
        );
        let down = HeaderValue::from_static("http://node1:8200/v1/pki/sign/x");
        assert!(redirect_target(&from, Some(&down))
            .expect_err("downgrade")
            .contains("in clear"));
        assert!(redirect_target(&from, None).is_err());
        let ftp = HeaderValue::from_static("ftp://x/");
        assert!(redirect_target(&from, Some(&ftp)).is_err());
    }

    #[test]
    fn backoff_grows_bounded_with_jitter() {
        assert_eq!(backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(2, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(5, 1.0), Duration::from_millis(1600));
        assert_eq!(backoff(6, 1.0), BACKOFF_MAX);
        assert_eq!(backoff(1000, 1.0), BACKOFF_MAX);
        assert!(backoff(3, 0.5) < backoff(3, 0.9));
        assert_eq!(backoff(2, 7.0), backoff(2, 1.0));
    }

    #[test]
    fn retry_classification() {
        let connect = VaultError::Connect {
            addr: "a".into(),
            detail: "refused".into(),
        };
        let lost = VaultError::ConnectionLost {
            addr: "a".into(),
            path: "p".into(),
            detail: "reset".into(),
        };
        let timeout = VaultError::Timeout {
            path: "p".into(),
            after: Duration::from_secs(1),
        };
        let sealed = VaultError::Sealed { addr: "a".into() };
        let standby = VaultError::Unavailable {
            addr: "a".into(),
            status: 429,
            message: String::new(),
        };
        let denied = VaultError::PermissionDenied { path: "p".into() };
        let tls = VaultError::Tls {
            addr: "a".into(),
            detail: "x".into(),
        };
        use Repeat::{Always, BeforeActing};
        assert!(should_retry(&connect, BeforeActing, &[false]));
        assert!(should_retry(&standby, BeforeActing, &[false]));
        // A sign is not repeated once it may have reached Vault.
        assert!(!should_retry(&lost, BeforeActing, &[false]));
        assert!(!should_retry(&timeout, BeforeActing, &[false]));
        assert!(should_retry(&lost, Always, &[false]));
        assert!(should_retry(&timeout, Always, &[false]));
        // 5xx: a standby's refusals come before routing; anything else may follow an issue.
        let unavailable = |status: u16, message: &str| VaultError::Unavailable {
            addr: "a".into(),
            status,
            message: message.into(),
        };
        for (status, message) in [
            (503, "no active Vault instance found"),
            (
                500,
                "local node not active but active cluster node not found",
            ),
            (503, "node is not active"),
        ] {
            assert!(should_retry(
                &unavailable(status, message),
                BeforeActing,
                &[false]
            ));
        }
        for (status, message) in [
            (500, "internal error"),
            (502, "bad gateway"),
            (504, "no message"),
        ] {
            assert!(may_have_acted(&unavailable(status, message)));
            assert!(!should_retry(
                &unavailable(status, message),
                BeforeActing,
                &[false]
            ));
            assert!(should_retry(
                &unavailable(status, message),
                Always,
                &[false]
            ));
        }
        // The deadline ran out before sending: nothing was carried out.
        assert!(!may_have_acted(&VaultError::Timeout {
            path: "p".into(),
            after: Duration::ZERO
        }));
        // Sealed: try the other nodes, stop when all said sealed.
        assert!(should_retry(&sealed, Always, &[true, false]));
        assert!(!should_retry(&sealed, Always, &[true]));
        assert!(!should_retry(&sealed, Always, &[true, true]));
        assert!(!should_retry(&denied, Always, &[false]));
        assert!(!should_retry(&tls, Always, &[false]));
    }

    fn msgs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn transport_errors_are_classified() {
        let t = Duration::from_secs(5);
        let e = classify_messages(
            &msgs(&[
                "error sending request for url (https://127.0.0.1:8200/v1/sys/health)",
                "client error (Connect)",
                "invalid peer certificate: UnknownIssuer",
            ]),
            true,
            false,
            false,
            "https://127.0.0.1:8200",
            "sys/health",
            t,
        );
        assert!(
            matches!(e, VaultError::Tls { ref detail, .. } if detail.contains("UnknownIssuer")),
            "{e:?}"
        );
        let e = classify_messages(
            &msgs(&[
                "error sending request",
                "client error (Connect)",
                "received corrupt message of type InvalidContentType",
            ]),
            true,
            false,
            false,
            "https://127.0.0.1:8200",
            "p",
            t,
        );
        assert!(
            matches!(e, VaultError::Tls { ref detail, .. } if detail.contains("does not speak TLS"))
        );
        let e = classify_messages(
            &msgs(&[
                "error sending request",
                "client error (Connect)",
                "tcp connect error",
                "Connection refused (os error 111)",
            ]),
            true,
            false,
            false,
            "http://127.0.0.1:1",
            "p",
            t,
        );
        assert!(matches!(e, VaultError::Connect { ref detail, .. } if detail.contains("refused")));
        let e = classify_messages(
            &msgs(&["operation timed out"]),
            false,
            true,
            false,
            "a",
            "p",
            t,
        );
        assert!(matches!(e, VaultError::Timeout { .. }));
        let e = classify_messages(
            &msgs(&[
                "error sending request",
                "connection closed before message completed",
            ]),
            false,
            false,
            false,
            "a",
            "pki/sign/x",
            t,
        );
        assert!(matches!(e, VaultError::ConnectionLost { .. }));
        // A TLS alert on a connection that was up: lost, not "TLS set-up failed".
        let e = classify_messages(
            &msgs(&[
                "error reading a body from connection",
                "received fatal alert: InternalError",
            ]),
            false,
            false,
            false,
            "a",
            "pki/sign/x",
            t,
        );
        assert!(
            matches!(e, VaultError::ConnectionLost { ref detail, .. } if detail.contains("alert")),
            "{e:?}"
        );
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback(&u("http://127.0.0.1:8200")));
        assert!(is_loopback(&u("http://localhost:8200")));
        assert!(is_loopback(&u("http://[::1]:8200")));
        assert!(!is_loopback(&u("http://vault.example:8200")));
    }
}
