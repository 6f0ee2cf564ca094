//! The checks against Vault, in the order a failure explains the next: reachable, TLS,
//! clock, namespace, AppRole login, the four roles' sign pre-flight, KV writable. Nothing
//! is written and nothing is issued: the role check is the pre-flight `enroll` does (a sign
//! request with an empty CSR); the KV check reads a key no token's record can have, then
//! asks `sys/capabilities-self` (allowed by Vault's `default` policy), or, when the token
//! has only the contract policy, sends a check-and-set write that cannot apply.

use crate::config::VaultSettings;
use crate::error::{exit, Error};
use crate::issuer::client_config;
use crate::piv::Role;
use crate::report::doctor::{Check, CheckId};
use crate::secret::SecretId;
use crate::vault::{AppRoleCreds, VaultClient, VaultError};
use std::time::Duration;

/// Above this, a certificate issued now can look not yet valid here (Vault backdates
/// not_before by 30 s by default, PKI role `not_before_duration`), or a token's TTL
/// misjudged.
pub const SKEW_FAIL_SECS: f64 = 30.0;
/// Above this (the `Date` header has 1 s resolution), say so.
pub const SKEW_WARN_SECS: f64 = 5.0;

/// A KV key no token's record can have (records are named by serial, digits only).
const KV_PROBE_KEY: &str = "pivault-doctor-probe";

pub struct VaultInputs {
    pub settings: VaultSettings,
    /// AppRole secret_id; `None`: the login and what needs it are skipped with a fix.
    pub secret_id: Option<SecretId>,
    /// Bound on each check (and its retries).
    pub timeout: Duration,
}

fn fail_from(id: CheckId, e: VaultError, message: String) -> Check {
    let err = Error::Vault(e);
    Check::fail(
        id,
        err.exit_code(),
        message,
        err.hint()
            .unwrap_or_else(|| "see the Vault contract (fixtures/vault/README.md)".into()),
    )
}

pub fn run(v: &VaultInputs) -> Vec<Check> {
    let mut out = Vec::new();
    let s = &v.settings;
    let addrs: Vec<String> = s.addrs.iter().map(|a| a.to_string()).collect();
    let addr = addrs.join(", ");
    let ca_file = s.ca_cert.as_ref().map(|p| p.display().to_string());
    let trust = ca_file
        .clone()
        .map(|f| format!("CA file {f}"))
        .unwrap_or_else(|| "the system trust store".into());
    let client = match client_config(s)
        .map_err(|e| e.to_string())
        .and_then(|mut c| {
            c.request_timeout = v.timeout.min(c.request_timeout);
            c.deadline = v.timeout;
            VaultClient::new(c).map_err(|e| e.to_string())
        }) {
        Ok(c) => c,
        Err(e) => {
            out.push(Check::fail(
                CheckId::VaultReachable,
                exit::USAGE,
                format!("cannot build a Vault client: {e}"),
                "fix the [vault] settings (address, CA bundle file, mounts)",
            ));
            return out;
        }
    };
    let rest = |out: &mut Vec<Check>, from: usize, why: &str| {
        let ids = [
            CheckId::VaultTls,
            CheckId::ClockSkew,
            CheckId::Namespace,
            CheckId::Login,
            CheckId::Role,
            CheckId::KvWritable,
        ];
        for id in &ids[from..] {
            out.push(Check::skipped(*id, format!("not checked: {why}")));
        }
    };
    // Reachable (and, through the handshake, TLS).
    match client.health() {
        Ok(h) if h.sealed => {
            out.push(Check::fail(
                CheckId::VaultReachable,
                exit::VAULT_UNAVAILABLE,
                format!("Vault at {} is sealed", h.addr),
                "ask its operator to unseal it; nothing can be issued until then",
            ));
            rest(&mut out, 0, "Vault is sealed");
            return out;
        }
        Ok(h) => out.push(Check::ok(
            CheckId::VaultReachable,
            format!(
                "Vault {} answers at {}{}",
                h.version,
                h.addr,
                if h.standby { " (standby)" } else { "" }
            ),
        )),
        Err(VaultError::Tls { addr: a, detail }) => {
            out.push(Check::ok(
                CheckId::VaultReachable,
                format!("a TLS server answers at {a}"),
            ));
            let mut c = Check::fail(
                CheckId::VaultTls,
                exit::USAGE,
                format!("Vault's TLS certificate at {a} is not trusted with {trust}: {detail}"),
                "give the CA bundle that issued Vault's certificate: VAULT_CACERT, --ca-cert or \
                 vault.ca_cert (development only: --tls-skip-verify)",
            );
            c.ca_file = Some(ca_file.clone().unwrap_or_else(|| "system".into()));
            out.push(c);
            rest(&mut out, 1, "Vault's TLS certificate is not trusted");
            return out;
        }
        Err(e) => {
            let m = format!("Vault does not answer at {addr}: {e}");
            let unavailable = e.is_unavailable();
            let mut c = fail_from(CheckId::VaultReachable, e, m);
            if unavailable {
                c = c.fix(format!(
                    "check that Vault runs and listens at {addr} and that this machine reaches                      it (address, port, firewall, proxy); if it is restarting, retry later"
                ));
            }
            out.push(c);
            rest(&mut out, 0, "Vault is not reachable");
            return out;
        }
    }
    out.push(tls_line(s, &trust, ca_file));
    out.push(clock_line(&client));
    // Namespace: the PKI mount's CA, read without a token inside the namespace.
    match (&s.namespace, client.ca_chain()) {
        (Some(ns), Err(VaultError::NamespaceNotFound { .. })) => {
            out.push(Check::fail(
                CheckId::Namespace,
                exit::USAGE,
                format!("namespace '{ns}' does not exist on Vault"),
                "fix VAULT_NAMESPACE / vault.namespace (names are case-sensitive; child \
                 namespaces are written parent/child)",
            ));
            rest(&mut out, 3, "the namespace is missing");
            return out;
        }
        (ns, Err(e)) => {
            let m = format!(
                "{}: the PKI mount '{}' has no CA to read: {e}",
                ns.as_deref()
                    .map(|n| format!("namespace '{n}'"))
                    .unwrap_or_else(|| "root namespace".into()),
                s.pki_mount
            );
            out.push(fail_from(CheckId::Namespace, e, m))
        }
        (Some(ns), Ok(_)) => out.push(Check::ok(
            CheckId::Namespace,
            format!(
                "namespace '{ns}' exists (PKI mount '{}' has a CA)",
                s.pki_mount
            ),
        )),
        (None, Ok(_)) => out.push(Check::ok(
            CheckId::Namespace,
            format!(
                "no namespace configured; PKI mount '{}' has a CA",
                s.pki_mount
            ),
        )),
    }
    // Login.
    let (Some(role_id), Some(secret_id)) = (s.role_id.clone(), v.secret_id.clone()) else {
        out.push(Check::fail(
            CheckId::Login,
            exit::USAGE,
            "no AppRole credentials to try",
            "set PIVAULT_ROLE_ID (or vault.role_id) and PIVAULT_SECRET_ID (or \
             --secret-id-file)",
        ));
        rest(&mut out, 4, "no AppRole login");
        return out;
    };
    if let Err(e) = client.login(AppRoleCreds { role_id, secret_id }) {
        let m = format!(
            "AppRole login at auth/{}/login failed: {e}",
            s.approle_mount
        );
        out.push(fail_from(CheckId::Login, e, m));
        rest(&mut out, 4, "the AppRole login failed");
        return out;
    }
    out.push(Check::ok(
        CheckId::Login,
        format!("AppRole login at auth/{}/login works", s.approle_mount),
    ));
    for role in Role::ALL {
        out.push(role_line(&client, s, role));
    }
    out.push(kv_line(&client, s));
    out
}

fn tls_line(s: &VaultSettings, trust: &str, ca_file: Option<String>) -> Check {
    let https = s.addrs.iter().all(|a| a.scheme() == "https");
    let mut c = if s.tls_skip_verify {
        Check::warn(
            CheckId::VaultTls,
            "TLS verification is OFF (--tls-skip-verify / PIVAULT_TLS_SKIP_VERIFY)",
            "development only: give the CA bundle (VAULT_CACERT) and drop the switch",
        )
    } else if !https {
        Check::warn(
            CheckId::VaultTls,
            "plain HTTP: the secret_id and tokens cross the network in clear",
            "use an https:// address outside a test bench",
        )
    } else {
        Check::ok(CheckId::VaultTls, format!("TLS trusted with {trust}"))
    };
    if https {
        c.ca_file = Some(ca_file.unwrap_or_else(|| "system".into()));
    }
    c
}

fn clock_line(client: &VaultClient) -> Check {
    match client.clock() {
        Ok(c) => {
            let skew = c.skew_secs();
            let msg = format!(
                "Vault's clock is {:+.0} s from this machine's (Date header, round trip {} ms)",
                skew,
                c.round_trip.as_millis()
            );
            let fix = "synchronise this machine's clock (`timedatectl set-ntp true`; \
                       `timedatectl status`), or Vault's";
            let mut ch = if skew.abs() > SKEW_FAIL_SECS {
                Check::fail(CheckId::ClockSkew, exit::NEEDS_PERSON, msg, fix)
            } else if skew.abs() > SKEW_WARN_SECS {
                Check::warn(CheckId::ClockSkew, msg, fix)
            } else {
                Check::ok(CheckId::ClockSkew, msg)
            };
            ch.skew_seconds = Some(skew);
            ch
        }
        Err(e) => Check::warn(
            CheckId::ClockSkew,
            format!("cannot compare clocks: {e}"),
            "check that nothing between here and Vault strips the Date header",
        ),
    }
}

fn role_line(client: &VaultClient, s: &VaultSettings, role: Role) -> Check {
    let path = format!("{}/sign/{}", s.pki_mount, role.name());
    let r = client
        .ensure_fresh_token()
        .and_then(|()| client.check_sign_access(role.name()));
    let mut c = match r {
        Ok(()) => Check::ok(
            CheckId::Role,
            format!("{}: {path} answers the pre-flight", role.name()),
        ),
        Err(e @ VaultError::PermissionDenied { .. }) => fail_from(
            CheckId::Role,
            e,
            format!(
                "{}: the AppRole policy does not allow {path} (403)",
                role.name()
            ),
        )
        .fix(format!(
            "ask the Vault administrator to grant `path \"{}/sign/*\" {{ capabilities = \
             [\"create\", \"update\"] }}` (the contract policy) to pivault's AppRole",
            s.pki_mount
        )),
        Err(e @ VaultError::UnknownRole { .. }) => fail_from(
            CheckId::Role,
            e,
            format!(
                "{}: PKI mount '{}' has no such role",
                role.name(),
                s.pki_mount
            ),
        ),
        Err(e) => {
            let m = format!("{}: {e}", role.name());
            fail_from(CheckId::Role, e, m)
        }
    };
    c.role = Some(role);
    c
}

fn kv_line(client: &VaultClient, s: &VaultSettings) -> Check {
    let data = format!("{}/data/{KV_PROBE_KEY}", s.kv_mount);
    // The mount exists and reading is allowed (a KV "not found" is fine).
    if let Err(e) = client.kv_read::<serde_json::Value>(KV_PROBE_KEY) {
        let m = format!("KV mount '{}': cannot read {data}: {e}", s.kv_mount);
        return fail_from(CheckId::KvWritable, e, m);
    }
    match client.capabilities_self(std::slice::from_ref(&data)) {
        Ok(caps) => {
            let have = caps.get(&data).cloned().unwrap_or_default();
            let can = |c: &str| have.iter().any(|h| h == c || h == "root");
            let mut c = if can("create") && can("update") && can("read") {
                Check::ok(
                    CheckId::KvWritable,
                    format!(
                        "KV mount '{}': the policy allows create, read, update on {}/data/* \
                         (nothing written)",
                        s.kv_mount, s.kv_mount
                    ),
                )
            } else {
                Check::fail(
                    CheckId::KvWritable,
                    exit::FAILED,
                    format!(
                        "KV mount '{}': the policy allows only [{}] on {}/data/*; escrow needs \
                         create, read, update",
                        s.kv_mount,
                        have.join(", "),
                        s.kv_mount
                    ),
                    kv_fix(s),
                )
            };
            c.capabilities = have;
            c
        }
        // The contract policy without Vault's `default` policy: no capabilities-self.
        Err(VaultError::PermissionDenied { .. }) => match client.kv_create_allowed(KV_PROBE_KEY) {
            Ok(()) => Check::ok(
                CheckId::KvWritable,
                format!(
                    "KV mount '{}': the policy allows read and create on {data} (a check-and-set \
                     write that cannot apply; nothing written)",
                    s.kv_mount
                ),
            ),
            Err(e @ VaultError::PermissionDenied { .. }) => fail_from(
                CheckId::KvWritable,
                e,
                format!(
                    "KV mount '{}': the policy does not allow creating records under {}/data/*",
                    s.kv_mount, s.kv_mount
                ),
            )
            .fix(kv_fix(s)),
            Err(e) => {
                let m = format!(
                    "KV mount '{}': cannot tell if it is writable: {e}",
                    s.kv_mount
                );
                fail_from(CheckId::KvWritable, e, m)
            }
        },
        Err(e) => {
            let m = format!(
                "KV mount '{}': cannot tell if it is writable: {e}",
                s.kv_mount
            );
            fail_from(CheckId::KvWritable, e, m)
        }
    }
}

fn kv_fix(s: &VaultSettings) -> String {
    format!(
        "ask the Vault administrator to grant `path \"{}/data/*\" {{ capabilities = \
         [\"create\", \"read\", \"update\"] }}` (the contract policy) to pivault's AppRole",
        s.kv_mount
    )
}
