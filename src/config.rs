//! Configuration: a TOML file, then environment, then flags (flags win). The library
//! reads no environment itself: the caller passes a lookup function.

use crate::error::Error;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the CLI looks for a config file when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/pivault/config.toml";

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub vault: VaultFile,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VaultFile {
    /// One address, or several for an HA cluster (tried in order on failure).
    pub addr: Option<String>,
    #[serde(default)]
    pub addrs: Vec<String>,
    pub namespace: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub tls_skip_verify: Option<bool>,
    pub pki_mount: Option<String>,
    pub kv_mount: Option<String>,
    pub approle_mount: Option<String>,
    pub role_id: Option<String>,
    /// A file holding the secret_id; it must be readable by its owner only.
    pub secret_id_file: Option<PathBuf>,
    /// Certificates issued must chain to this CA (PEM), not only to Vault's own root.
    pub trust_anchor: Option<PathBuf>,
    pub request_timeout_secs: Option<u64>,
    pub deadline_secs: Option<u64>,
    /// `renew`'s login: "approle" (default) or "cert" (see [`CertLogin`]).
    pub auth: Option<String>,
    pub cert_mount: Option<String>,
    pub cert_role: Option<String>,
    pub login_slot: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, Error> {
        let text = read_text(path, "")?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

/// The most a configuration, profile or allow-list file may hold. A station's allow-list
/// of 10 000 tokens is ~1 MiB; anything larger is a mistake (or /dev/zero), refused before
/// it is read into memory.
pub const MAX_CONFIG_FILE: u64 = 4 << 20;

/// Read a configuration file as UTF-8 text, at most [`MAX_CONFIG_FILE`] bytes. `what`
/// ("profile", "allow-list", or "") names it in the error.
pub fn read_text(path: &Path, what: &str) -> Result<String, Error> {
    use std::io::Read;
    let what = if what.is_empty() {
        String::new()
    } else {
        format!("{what} ")
    };
    let cannot =
        |e: std::io::Error| Error::Config(format!("cannot read {what}{}: {e}", path.display()));
    let f = std::fs::File::open(path).map_err(cannot)?;
    let mut buf = Vec::new();
    f.take(MAX_CONFIG_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(cannot)?;
    if buf.len() as u64 > MAX_CONFIG_FILE {
        return Err(Error::Config(format!(
            "{} is larger than {} MiB; not a pivault configuration",
            path.display(),
            MAX_CONFIG_FILE >> 20
        )));
    }
    String::from_utf8(buf)
        .map_err(|_| Error::Config(format!("{} is not UTF-8 text", path.display())))
}

/// Values given on the command line (all optional).
#[derive(Debug, Clone, Default)]
pub struct VaultFlags {
    pub addrs: Vec<String>,
    pub namespace: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub tls_skip_verify: bool,
    pub pki_mount: Option<String>,
    pub kv_mount: Option<String>,
    pub approle_mount: Option<String>,
    pub role_id: Option<String>,
    pub secret_id_file: Option<PathBuf>,
    pub trust_anchor: Option<PathBuf>,
}

/// The resolved Vault side of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultSettings {
    pub addrs: Vec<url::Url>,
    pub namespace: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub tls_skip_verify: bool,
    pub pki_mount: String,
    pub kv_mount: String,
    pub approle_mount: String,
    pub role_id: Option<String>,
    pub secret_id_file: Option<PathBuf>,
    pub trust_anchor: Option<PathBuf>,
    pub request_timeout: Duration,
    pub deadline: Duration,
}

fn mount_name(what: &str, v: String) -> Result<String, Error> {
    let v = v.trim().trim_matches('/').to_string();
    if v.is_empty()
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/' | '.'))
        || v.contains("..")
    {
        return Err(Error::Config(format!(
            "{what} '{v}' is not a valid mount path"
        )));
    }
    Ok(v)
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl VaultSettings {
    /// Layer file < environment < flags. `env` looks up a variable (the CLI passes
    /// `std::env::var`); the variables are VAULT_ADDR (comma-separated for several),
    /// VAULT_NAMESPACE, VAULT_CACERT, VAULT_SKIP_VERIFY and PIVAULT_* for the rest.
    pub fn resolve(
        file: &VaultFile,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &VaultFlags,
    ) -> Result<VaultSettings, Error> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let mut addrs: Vec<String> = file
            .addr
            .iter()
            .cloned()
            .chain(file.addrs.clone())
            .collect();
        if let Some(v) = env("VAULT_ADDR") {
            addrs = v.split(',').map(|s| s.trim().to_string()).collect();
        }
        if !flags.addrs.is_empty() {
            addrs = flags.addrs.clone();
        }
        if addrs.is_empty() {
            return Err(Error::Config(
                "no Vault address: set VAULT_ADDR, --vault-addr or vault.addr in the config file"
                    .into(),
            ));
        }
        let addrs = addrs
            .iter()
            .map(|a| {
                let u = url::Url::parse(a)
                    .map_err(|e| Error::Config(format!("Vault address '{a}': {e}")))?;
                if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
                    return Err(Error::Config(format!(
                        "Vault address '{a}' must be http(s)://host[:port]"
                    )));
                }
                Ok(u)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let pick = |flag: &Option<String>, var: &str, f: &Option<String>| {
            flag.clone().or_else(|| env(var)).or_else(|| f.clone())
        };
        let pick_path = |flag: &Option<PathBuf>, var: &str, f: &Option<PathBuf>| {
            flag.clone()
                .or_else(|| env(var).map(PathBuf::from))
                .or_else(|| f.clone())
        };
        let tls_skip_verify = flags.tls_skip_verify
            || env("PIVAULT_TLS_SKIP_VERIFY").is_some_and(|v| truthy(&v))
            || env("VAULT_SKIP_VERIFY").is_some_and(|v| truthy(&v))
            || file.tls_skip_verify.unwrap_or(false);
        Ok(VaultSettings {
            addrs,
            namespace: pick(&flags.namespace, "VAULT_NAMESPACE", &file.namespace)
                .map(|n| n.trim().trim_matches('/').to_string())
                .filter(|n| !n.is_empty()),
            ca_cert: pick_path(&flags.ca_cert, "VAULT_CACERT", &file.ca_cert),
            tls_skip_verify,
            pki_mount: mount_name(
                "PKI mount",
                pick(&flags.pki_mount, "PIVAULT_PKI_MOUNT", &file.pki_mount)
                    .unwrap_or_else(|| "pki".into()),
            )?,
            kv_mount: mount_name(
                "KV mount",
                pick(&flags.kv_mount, "PIVAULT_KV_MOUNT", &file.kv_mount)
                    .unwrap_or_else(|| "yubikeys".into()),
            )?,
            approle_mount: mount_name(
                "AppRole mount",
                pick(
                    &flags.approle_mount,
                    "PIVAULT_APPROLE_MOUNT",
                    &file.approle_mount,
                )
                .unwrap_or_else(|| "approle".into()),
            )?,
            role_id: pick(&flags.role_id, "PIVAULT_ROLE_ID", &file.role_id),
            secret_id_file: pick_path(
                &flags.secret_id_file,
                "PIVAULT_SECRET_ID_FILE",
                &file.secret_id_file,
            ),
            trust_anchor: pick_path(
                &flags.trust_anchor,
                "PIVAULT_TRUST_ANCHOR",
                &file.trust_anchor,
            ),
            request_timeout: Duration::from_secs(file.request_timeout_secs.unwrap_or(30)),
            // How long one Vault operation may take with its retries (HA failover takes
            // ~10 s); a person at a counter should not wait minutes for a dead server.
            deadline: Duration::from_secs(
                env("PIVAULT_VAULT_DEADLINE")
                    .map(|v| {
                        v.trim().parse::<u64>().map_err(|_| {
                            Error::Config(format!("PIVAULT_VAULT_DEADLINE '{v}' is not seconds"))
                        })
                    })
                    .transpose()?
                    .or(file.deadline_secs)
                    .unwrap_or(30),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file = VaultFile {
            addr: Some("https://file:8200".into()),
            pki_mount: Some("pki-file".into()),
            kv_mount: Some("kv-file".into()),
            namespace: Some("ns-file".into()),
            ..Default::default()
        };
        let env = env_of(&[
            ("VAULT_ADDR", "https://env:8200"),
            ("PIVAULT_PKI_MOUNT", "pki-env"),
        ]);
        let flags = VaultFlags {
            pki_mount: Some("pki-flag".into()),
            ..Default::default()
        };
        let s = VaultSettings::resolve(&file, &env, &flags).expect("settings");
        assert_eq!(s.addrs[0].host_str(), Some("env"));
        assert_eq!(s.pki_mount, "pki-flag");
        assert_eq!(s.kv_mount, "kv-file");
        assert_eq!(s.namespace.as_deref(), Some("ns-file"));
        assert_eq!(s.approle_mount, "approle");
        assert!(!s.tls_skip_verify);
    }

    #[test]
    fn bad_values_are_refused() {
        let none = env_of(&[]);
        assert!(
            VaultSettings::resolve(&VaultFile::default(), &none, &VaultFlags::default()).is_err()
        );
        let flags = VaultFlags {
            addrs: vec!["ftp://x".into()],
            ..Default::default()
        };
        assert!(VaultSettings::resolve(&VaultFile::default(), &none, &flags).is_err());
        let flags = VaultFlags {
            addrs: vec!["http://127.0.0.1:8200".into()],
            pki_mount: Some("../sys".into()),
            ..Default::default()
        };
        assert!(VaultSettings::resolve(&VaultFile::default(), &none, &flags).is_err());
        assert!(toml::from_str::<FileConfig>("[vault]\nadress='x'").is_err());
    }

    #[test]
    fn cert_login_layers_and_defaults() {
        let none = (None, None, None, None);
        let d = CertLogin::resolve(&VaultFile::default(), &env_of(&[]), none.clone())
            .expect("defaults");
        assert_eq!(d.method, AuthMethod::AppRole);
        assert_eq!(d.mount, "cert");
        assert_eq!(d.slot, crate::piv::Slot::AUTHENTICATION);
        let file = VaultFile {
            auth: Some("cert".into()),
            cert_mount: Some("/tls-users/".into()),
            login_slot: Some("9e".into()),
            ..Default::default()
        };
        let f = CertLogin::resolve(&file, &env_of(&[]), none.clone()).expect("file");
        assert_eq!(f.method, AuthMethod::Cert);
        assert_eq!(f.mount, "tls-users");
        assert_eq!(f.slot, crate::piv::Slot::CARD_AUTHENTICATION);
        let e =
            CertLogin::resolve(&file, &env_of(&[("PIVAULT_AUTH", "approle")]), none).expect("env");
        assert_eq!(e.method, AuthMethod::AppRole);
        let flags = (Some(AuthMethod::Cert), None, Some("r1".into()), None);
        let g = CertLogin::resolve(&file, &env_of(&[("PIVAULT_AUTH", "approle")]), flags)
            .expect("flags");
        assert_eq!(
            (g.method, g.role.as_deref()),
            (AuthMethod::Cert, Some("r1"))
        );
        let bad = VaultFile {
            auth: Some("kerberos".into()),
            ..Default::default()
        };
        assert!(CertLogin::resolve(&bad, &env_of(&[]), (None, None, None, None)).is_err());
    }
}

/// How `renew` logs in to Vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMethod {
    /// role_id + secret_id on the machine.
    #[default]
    AppRole,
    /// The certificate on the token (TLS client auth, `auth/<cert>/login`): no secret on
    /// the machine, and the login may renew only its own names (fixtures/vault/cert-auth.sh).
    Cert,
}

impl std::str::FromStr for AuthMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "approle" => Ok(AuthMethod::AppRole),
            "cert" => Ok(AuthMethod::Cert),
            other => Err(format!("auth '{other}': use approle or cert")),
        }
    }
}

/// Certificate login settings, resolved file < environment < flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertLogin {
    pub method: AuthMethod,
    pub mount: String,
    pub role: Option<String>,
    pub slot: crate::piv::Slot,
}

impl CertLogin {
    /// `flags`: (auth, cert mount, cert role, login slot) from the command line.
    pub fn resolve(
        file: &VaultFile,
        env: &dyn Fn(&str) -> Option<String>,
        flags: (
            Option<AuthMethod>,
            Option<String>,
            Option<String>,
            Option<crate::piv::Slot>,
        ),
    ) -> Result<CertLogin, Error> {
        let pick = |flag: Option<String>, var: &str, file: &Option<String>| {
            flag.or_else(|| env(var)).or_else(|| file.clone())
        };
        let method = match flags.0 {
            Some(m) => m,
            None => match pick(None, "PIVAULT_AUTH", &file.auth) {
                Some(s) => s.parse().map_err(Error::Config)?,
                None => AuthMethod::AppRole,
            },
        };
        let mount = mount_name(
            "cert auth mount",
            pick(flags.1, "PIVAULT_CERT_MOUNT", &file.cert_mount).unwrap_or_else(|| "cert".into()),
        )?;
        let slot = match flags.3 {
            Some(s) => s,
            None => match pick(None, "PIVAULT_LOGIN_SLOT", &file.login_slot) {
                Some(s) => s
                    .parse()
                    .map_err(|e| Error::Config(format!("login slot: {e}")))?,
                None => crate::piv::Slot::AUTHENTICATION,
            },
        };
        Ok(CertLogin {
            method,
            mount,
            role: pick(flags.2, "PIVAULT_CERT_ROLE", &file.cert_role).filter(|r| !r.is_empty()),
            slot,
        })
    }
}
