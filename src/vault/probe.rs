//! Questions `pivault doctor` asks Vault that change nothing: the server's clock, and what
//! the token may do on a path (`sys/capabilities-self`).

use super::error::{ReqKind, VaultError};
use super::transport::{Payload, Repeat};
use super::VaultClient;
use reqwest::Method;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Vault's clock as its `Date` header told it, against ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerClock {
    /// The server's `Date` (whole seconds).
    pub server: SystemTime,
    /// Our clock half-way between sending and receiving.
    pub local: SystemTime,
    /// Round trip of the request.
    pub round_trip: Duration,
}

impl ServerClock {
    /// Server minus local, in seconds (positive: Vault is ahead). The `Date` header has
    /// one-second resolution, so ±1 s is noise.
    pub fn skew_secs(&self) -> f64 {
        match self.server.duration_since(self.local) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        }
    }
}

impl VaultClient {
    /// Vault's clock, from the `Date` header of `sys/health` (no token, no namespace).
    pub fn clock(&self) -> Result<ServerClock, VaultError> {
        let path = "sys/health";
        let ans = self.health_answer()?;
        let server = ans.date.ok_or_else(|| VaultError::BadResponse {
            path: path.into(),
            detail: "no readable Date header".into(),
        })?;
        let round_trip = ans
            .received_at
            .duration_since(ans.sent_at)
            .unwrap_or_default();
        Ok(ServerClock {
            server,
            local: ans.sent_at + round_trip / 2,
            round_trip,
        })
    }

    /// What the client's token may do on each of `paths` (Vault's words: "create", "read",
    /// "update", "deny", "root", ...), through `sys/capabilities-self`, which Vault's and
    /// OpenBao's built-in `default` policy grants to every token that has it (AppRole tokens
    /// do unless the role sets `token_no_default_policy`). Nothing is written.
    pub fn capabilities_self(
        &self,
        paths: &[String],
    ) -> Result<BTreeMap<String, Vec<String>>, VaultError> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            paths: &'a [String],
        }
        #[derive(Deserialize)]
        struct Ans {
            data: BTreeMap<String, serde_json::Value>,
        }
        let path = "sys/capabilities-self";
        let body = serde_json::to_vec(&Body { paths })
            .map_err(|e| VaultError::InvalidInput(format!("capabilities request: {e}")))?;
        let ans = self.authed(
            Method::POST,
            path,
            &Payload::Json(body),
            Repeat::Always,
            ReqKind::Other,
            self.deadline(),
        )?;
        if ans.status != 200 {
            return Err(self.error(path, ReqKind::Other, &ans));
        }
        let a: Ans = serde_json::from_slice(&ans.body).map_err(|e| VaultError::BadResponse {
            path: path.into(),
            detail: format!("not a capabilities answer: {e}"),
        })?;
        Ok(paths
            .iter()
            .map(|p| {
                let caps = a
                    .data
                    .get(p)
                    .and_then(|v| v.as_array())
                    .map(|v| {
                        v.iter()
                            .filter_map(|c| c.as_str())
                            .map(crate::text::sanitize)
                            .collect()
                    })
                    .unwrap_or_default();
                (p.clone(), caps)
            })
            .collect())
    }
}

impl VaultClient {
    /// Whether the policy lets the token create KV v2 record `key`, without writing it: a
    /// check-and-set write whose `cas` cannot match (the record does not exist, so only
    /// `cas = 0` could). Vault's ACL answers first (403 without "create" on
    /// `<kv>/data/<key>`: a write to a missing record is a create), then KV v2 refuses the
    /// version ("check-and-set parameter did not match the current version", 400) before
    /// it stores anything (measured with OpenBao 2.7.2: no metadata, no version after it).
    /// Used when `sys/capabilities-self` is not in the policy.
    pub fn kv_create_allowed(&self, key: &str) -> Result<(), VaultError> {
        super::client::check_path("KV key", key)?;
        let path = format!("{}/data/{key}", self.inner.kv);
        let body = Payload::Json(br#"{"data":{},"options":{"cas":999999999}}"#.to_vec());
        let ans = self.authed(
            Method::POST,
            &path,
            &body,
            Repeat::Always,
            ReqKind::Other,
            self.deadline(),
        )?;
        let errors = super::error::error_messages(&ans.body);
        match ans.status {
            400 if errors.iter().any(|e| e.contains("check-and-set")) => Ok(()),
            200..=299 => Err(VaultError::BadResponse {
                path,
                detail: "a check-and-set write that cannot match was accepted".into(),
            }),
            _ => Err(self.error(&path, ReqKind::Other, &ans)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::transport::http_date;
    use super::*;

    #[test]
    fn http_date_is_read() {
        let t = http_date("Wed, 02 Dec 2026 00:32:04 GMT").expect("parsed");
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        assert_eq!(secs, 1_796_171_524);
        assert!(http_date("yesterday").is_none());
    }

    #[test]
    fn skew_has_a_sign() {
        let local = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let c = |s| ServerClock {
            server: SystemTime::UNIX_EPOCH + Duration::from_secs(s),
            local,
            round_trip: Duration::ZERO,
        };
        assert_eq!(c(1060).skew_secs(), 60.0);
        assert_eq!(c(940).skew_secs(), -60.0);
    }
}
