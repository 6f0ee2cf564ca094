//! Reading Vault's answers: pure functions from a body to typed values, every one bounded
//! and quiet about the body's contents.
//!
//! - serde's error messages may quote the input (a token, KV data, control characters):
//!   errors say only where the JSON broke ([`position`]);
//! - integers are bounded so that no caller's arithmetic overflows (token lifetime, KV
//!   version, certificate expiration; the release build aborts on a panic);
//! - text that can reach a person (warnings, health fields, the serial) goes through
//!   [`sanitize`];
//! - PEM lists are cut at [`MAX_CHAIN`] certificates.

use super::error::{VaultError, MAX_MESSAGES};
use super::{Health, KvMeta, SignedCert};
use crate::text::sanitize;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Longest token lifetime taken from an answer (ten years; Vault's default maximum is 32
/// days). A larger `lease_duration` is clamped to it: `Instant + Duration` panics on
/// overflow, and the release build aborts on a panic.
pub(crate) const MAX_LEASE_SECS: u64 = 10 * 365 * 24 * 3600;

/// Largest KV v2 version taken from an answer (2^53, JSON's exact-integer limit). Versions
/// count writes; anything larger is not Vault talking, and a caller doing `version + 1`
/// must not overflow.
const MAX_KV_VERSION: u64 = 1 << 53;

/// Certificate `expiration` is clamped to [1970, 9999-12-31T23:59:59Z] (RFC 5280's
/// GeneralizedTime ends there), so that no caller overflows turning it into a time.
const MAX_EXPIRATION: i64 = 253_402_300_799;

/// Most certificates taken from one chain (a PKI mount's chain is 1-3 deep).
pub(crate) const MAX_CHAIN: usize = 8;

/// `auth` of a login or renew-self answer.
#[derive(Deserialize)]
pub(crate) struct AuthAnswer {
    auth: Option<AuthData>,
}

#[derive(Deserialize)]
pub(crate) struct AuthData {
    pub client_token: String,
    #[serde(default)]
    pub lease_duration: u64,
    #[serde(default)]
    pub renewable: bool,
}

fn bad(path: &str, detail: String) -> VaultError {
    VaultError::BadResponse {
        path: path.to_string(),
        detail,
    }
}

/// `auth` of a login or renew-self answer. The token is moved out, never copied.
pub(crate) fn auth(path: &str, body: &[u8]) -> Result<AuthData, VaultError> {
    let parsed: AuthAnswer = serde_json::from_slice(body)
        .map_err(|e| bad(path, format!("not a Vault auth answer ({})", position(&e))))?;
    parsed
        .auth
        .ok_or_else(|| bad(path, "no `auth` in the answer".into()))
}

/// `sys/health`.
pub(crate) fn health(path: &str, body: &[u8], addr: String) -> Result<Health, VaultError> {
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
    let h: H = serde_json::from_slice(body)
        .map_err(|e| bad(path, format!("not a health answer ({})", position(&e))))?;
    Ok(Health {
        initialized: h.initialized,
        sealed: h.sealed,
        standby: h.standby,
        performance_standby: h.performance_standby,
        version: sanitize(&h.version),
        cluster_name: h.cluster_name.as_deref().map(sanitize),
        addr,
    })
}

/// A KV v2 read: the record and its version; `None` when its newest version is deleted.
pub(crate) fn kv_read<T: DeserializeOwned>(
    path: &str,
    body: &[u8],
) -> Result<Option<(T, KvMeta)>, VaultError> {
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
    let r: R<T> = serde_json::from_slice(body).map_err(|e| {
        bad(
            path,
            format!(
                "KV answer does not fit the expected type ({})",
                position(&e)
            ),
        )
    })?;
    let version = r.data.metadata.version;
    if r.data.data.is_some() && !(1..=MAX_KV_VERSION).contains(&version) {
        return Err(bad(
            path,
            format!("KV answer with an impossible version {version}"),
        ));
    }
    Ok(r.data.data.map(|d| (d, KvMeta { version })))
}

/// A KV v2 write: the version written.
pub(crate) fn kv_write(path: &str, body: &[u8]) -> Result<KvMeta, VaultError> {
    #[derive(Deserialize)]
    struct R {
        data: M,
    }
    #[derive(Deserialize)]
    struct M {
        version: u64,
    }
    let r: R = serde_json::from_slice(body)
        .map_err(|e| bad(path, format!("not a KV v2 write answer ({})", position(&e))))?;
    let version = r.data.version;
    if !(1..=MAX_KV_VERSION).contains(&version) {
        return Err(bad(
            path,
            format!("KV answer with an impossible version {version}"),
        ));
    }
    Ok(KvMeta { version })
}

/// A `<pki>/sign/<role>` answer.
pub(crate) fn signed(path: &str, body: &[u8]) -> Result<SignedCert, VaultError> {
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
        ca_chain_pem: d
            .ca_chain
            .unwrap_or_default()
            .into_iter()
            .take(MAX_CHAIN)
            .collect(),
        serial_number: sanitize(&d.serial_number),
        expiration: d.expiration.clamp(0, MAX_EXPIRATION),
        // Shown to the user: sanitised, and no more of them than Vault would ever send.
        warnings: r
            .warnings
            .unwrap_or_default()
            .iter()
            .take(MAX_MESSAGES)
            .map(|w| sanitize(w))
            .collect(),
    })
}

/// `data.ca_chain` (a PEM string or a list) or `data.certificate`, split into certificates.
pub(crate) fn ca(path: &str, body: &[u8]) -> Result<Vec<String>, VaultError> {
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
pub(crate) fn position(e: &serde_json::Error) -> String {
    format!("line {}, column {}", e.line(), e.column())
}

/// The `BEGIN`..`END CERTIFICATE` blocks of `text`, at most [`MAX_CHAIN`] of them.
pub(crate) fn split_pem(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while out.len() < MAX_CHAIN {
        let Some(b) = rest.find(BEGIN) else { break };
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
    fn sign_answer_is_parsed() {
        let body = br#"{"request_id":"x","data":{"certificate":"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----","issuing_ca":"I","ca_chain":["I","R"],"serial_number":"4c:c6","expiration":1790000000,"not_before":1},"warnings":["ttl shortened"]}"#;
        let s = signed("pki/sign/x", body).expect("parsed");
        assert_eq!(s.ca_chain_pem, vec!["I".to_string(), "R".to_string()]);
        assert_eq!(s.serial_number, "4c:c6");
        assert_eq!(s.expiration, 1_790_000_000);
        assert_eq!(s.warnings, vec!["ttl shortened".to_string()]);
        let no_warn = br#"{"data":{"certificate":"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----"},"warnings":null}"#;
        assert!(signed("p", no_warn).expect("parsed").warnings.is_empty());
        assert!(signed("p", br#"{"data":null}"#).is_err());
        assert!(signed("p", b"<html>").is_err());
    }

    #[test]
    fn ca_answers_as_string_or_list() {
        let a = "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----";
        let b = "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----";
        let as_string =
            serde_json::json!({"data": {"ca_chain": format!("{a}\n{b}\n"), "certificate": a}});
        assert_eq!(
            ca("p", as_string.to_string().as_bytes()).expect("ok"),
            vec![a.to_string(), b.to_string()]
        );
        let as_list = serde_json::json!({"data": {"ca_chain": [a, b]}});
        assert_eq!(
            ca("p", as_list.to_string().as_bytes()).expect("ok").len(),
            2
        );
        let only_cert = serde_json::json!({"data": {"certificate": a}});
        assert_eq!(
            ca("p", only_cert.to_string().as_bytes()).expect("ok"),
            vec![a.to_string()]
        );
    }
}
