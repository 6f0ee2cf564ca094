//! pivault's Vault client against a real OpenBao (the rig in tests/common/vault.rs), with
//! the contract's least-privilege AppRole only. Failure cases a server cannot produce on
//! demand (307 from a standby, a hanging node, a connection cut mid-request) use a tiny
//! std TCP server in this file.

mod common;

use common::vault::{self, Vault, VaultOptions};
use pivault::secret::SecretId;
use pivault::vault::{AppRoleCreds, SignRequest, VaultClient, VaultConfig, VaultError};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const ROLES: [&str; 4] = [
    "yubikey-piv",
    "yubikey-piv-auth",
    "yubikey-piv-code-signing",
    "yubikey-piv-email-signing",
];

// ---- log capture: warnings must appear, secrets must not ---------------------------------

struct Capture;
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.target().starts_with("pivault") {
            let line = format!("{} {}", r.level(), r.args());
            LINES.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = log::set_logger(&Capture);
        log::set_max_level(log::LevelFilter::Debug);
    });
}

fn logged() -> Vec<String> {
    LINES.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

// ---- helpers ------------------------------------------------------------------------------

fn csr() -> &'static str {
    static CSR: OnceLock<String> = OnceLock::new();
    CSR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tmp");
        let key = dir.path().join("k.pem");
        let run = |args: &[&str]| {
            let o = std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let k = key.to_str().expect("path");
        run(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            k,
        ]);
        run(&["req", "-new", "-key", k, "-subj", "/CN=Jane Doe"])
    })
}

fn sign_req() -> SignRequest {
    SignRequest {
        csr_pem: csr().to_string(),
        ..Default::default()
    }
}

fn client_for(v: &Vault) -> VaultClient {
    capture_logs();
    VaultClient::new(v.vault_config()).expect("client")
}

fn logged_in(v: &Vault) -> VaultClient {
    let c = client_for(v);
    c.login(v.creds()).expect("login");
    c
}

fn pem(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).expect("pem").trim().to_string()
}

/// A port nothing listens on.
fn dead_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    format!("http://{a}")
}

// ---- the happy path -------------------------------------------------------------------------

#[test]
fn one_login_many_signs_on_one_connection() {
    let v = vault::shared();
    let c = logged_in(v);
    let n = 100;
    let t0 = Instant::now();
    for _ in 0..n {
        c.sign("yubikey-piv", &sign_req()).expect("sign");
    }
    let per_s = n as f64 / t0.elapsed().as_secs_f64();
    eprintln!(
        "{n} signs in {:?}: {per_s:.0} signs/s on one keep-alive client",
        t0.elapsed()
    );
    let s = c.stats();
    assert_eq!(s.logins, 1, "{s:?}");
    assert_eq!(
        s.requests,
        1 + n,
        "no renewals, retries or re-logins: {s:?}"
    );
    assert_eq!(s.retries, 0);
    // Nothing secret reached the log.
    assert!(logged().iter().all(|l| !l.contains(&v.secret_id)));
    assert!(!format!("{c:?}").contains(&v.secret_id));
}

#[test]
fn clones_share_one_login_across_threads() {
    let v = vault::shared();
    let c = client_for(v);
    c.login(v.creds()).expect("login");
    let t0 = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    c.sign("yubikey-piv", &sign_req()).expect("sign");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    eprintln!("100 signs by 4 threads in {:?}", t0.elapsed());
    assert_eq!(c.stats().logins, 1);
}

#[test]
fn signs_on_each_role_with_the_chain() {
    let v = vault::shared();
    let c = logged_in(v);
    let inter = pem(&v.intermediate_pem);
    let root = pem(&v.root_pem);
    let before = v.issued_cert_count();
    for role in ROLES {
        c.check_sign_access(role).expect("pre-flight");
        let s = c
            .sign(role, &sign_req())
            .unwrap_or_else(|e| panic!("{role}: {e}"));
        assert!(s.certificate_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(s.issuing_ca_pem.trim(), inter);
        let chain: Vec<_> = s
            .ca_chain_pem
            .iter()
            .map(|c| c.trim().to_string())
            .collect();
        assert_eq!(chain, vec![inter.clone(), root.clone()]);
        assert!(s.serial_number.contains(':'));
        assert!(s.expiration > 1_700_000_000);
    }
    // The pre-flight issued nothing; each sign issued one.
    assert_eq!(v.issued_cert_count(), before + ROLES.len());
    // CA chain: no login needed, issuing CA first.
    let chain = client_for(v).ca_chain().expect("ca chain");
    let chain: Vec<_> = chain.iter().map(|c| c.trim().to_string()).collect();
    assert_eq!(chain, vec![inter, root]);
}

#[test]
fn sign_refusals_carry_vaults_message_and_the_setting() {
    let v = vault::shared();
    let c = logged_in(v);
    // The contract roles take names from the CSR only, so the refusals here are an unknown
    // role and a damaged CSR (name refusals are in vault_contract.rs).
    let e = c.sign("nosuchrole", &sign_req()).expect_err("unknown role");
    assert!(
        matches!(e, VaultError::UnknownRole { ref role, .. } if role == "nosuchrole"),
        "{e:?}"
    );
    assert!(e.is_request_refused());
    assert!(matches!(
        c.check_sign_access("nosuchrole"),
        Err(VaultError::UnknownRole { .. })
    ));
    let broken = csr().replace("MI", "MX");
    let e = c
        .sign(
            "yubikey-piv",
            &SignRequest {
                csr_pem: broken,
                ..Default::default()
            },
        )
        .expect_err("broken CSR");
    match &e {
        VaultError::Refused {
            path,
            status,
            errors,
        } => {
            assert_eq!(path, "pki/sign/yubikey-piv");
            assert_eq!(*status, 400);
            assert!(!errors.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.hint().is_some_and(|h| h.contains("CSR")),
        "{:?}",
        e.hint()
    );
    assert_eq!(c.stats().logins, 1);
}

#[test]
fn kv_write_read_and_check_and_set() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Rec {
        serial: u32,
        puk: String,
    }
    let v = vault::shared();
    let c = logged_in(v);
    let key = format!("tokens/{}", rand::random::<u32>());
    assert!(c.kv_read::<Rec>(&key).expect("read").is_none());
    let r1 = Rec {
        serial: 1234,
        puk: "93827465".into(),
    };
    let m = c.kv_write(&key, &r1, Some(0)).expect("create");
    assert_eq!(m.version, 1);
    let (got, meta) = c.kv_read::<Rec>(&key).expect("read").expect("present");
    assert_eq!(got, r1);
    assert_eq!(meta.version, 1);
    // Create-only again: conflict.
    let e = c
        .kv_write(&key, &r1, Some(0))
        .expect_err("cas 0 on existing");
    assert!(
        matches!(
            e,
            VaultError::CasMismatch {
                expected: Some(0),
                ..
            }
        ),
        "{e:?}"
    );
    let r2 = Rec {
        serial: 1234,
        puk: "11223344".into(),
    };
    assert_eq!(c.kv_write(&key, &r2, Some(1)).expect("update").version, 2);
    // A stale version: conflict, and the record is unchanged.
    let e = c.kv_write(&key, &r1, Some(1)).expect_err("stale");
    assert!(matches!(e, VaultError::CasMismatch { .. }));
    assert_eq!(
        c.kv_read::<Rec>(&key).expect("read").expect("present").0,
        r2
    );
    assert_eq!(c.kv_write(&key, &r1, None).expect("blind").version, 3);
    // The payload never reaches logs or errors.
    assert!(logged()
        .iter()
        .all(|l| !l.contains("93827465") && !l.contains("11223344")));
    assert!(!e.to_string().contains("93827465"));
    // The policy's limits: no other mount.
    let mut cfg = v.vault_config();
    cfg.kv_mount = "secret".into();
    let other = VaultClient::new(cfg).expect("client");
    other.login(v.creds()).expect("login");
    let e = other.kv_read::<Rec>("x").expect_err("denied");
    assert!(matches!(e, VaultError::PermissionDenied { ref path } if path == "secret/data/x"));
}

// ---- refusals -------------------------------------------------------------------------------

#[test]
fn missing_sign_permission_is_a_403_naming_the_path() {
    let v = vault::shared();
    let (rid, sid) = v.nosign.clone().expect("test roles");
    let c = client_for(v);
    c.login(AppRoleCreds {
        role_id: rid,
        secret_id: SecretId::new(sid),
    })
    .expect("login");
    let e = c.sign("yubikey-piv-auth", &sign_req()).expect_err("denied");
    assert!(
        matches!(e, VaultError::PermissionDenied { ref path } if path == "pki/sign/yubikey-piv-auth"),
        "{e:?}"
    );
    assert!(e.to_string().contains("pki/sign/yubikey-piv-auth"), "{e}");
    assert!(
        e.hint().is_some_and(|h| h.contains("`pki/sign/*`")),
        "{:?}",
        e.hint()
    );
    assert!(matches!(
        c.check_sign_access("yubikey-piv"),
        Err(VaultError::PermissionDenied { .. })
    ));
    // The token was checked (lookup-self) and is fine: no second login.
    assert_eq!(c.stats().logins, 1);
    // KV is allowed for that role.
    c.kv_write("nosign/probe", &serde_json::json!({"a": 1}), None)
        .expect("kv write allowed");
}

#[test]
fn wrong_secret_id_is_invalid_credentials_without_retries() {
    let v = vault::shared();
    let c = client_for(v);
    let t0 = Instant::now();
    let e = c
        .login(AppRoleCreds {
            role_id: v.role_id.clone(),
            secret_id: SecretId::new("00000000-0000-0000-0000-000000000000"),
        })
        .expect_err("refused");
    assert!(matches!(e, VaultError::InvalidCredentials { .. }), "{e:?}");
    assert!(e.to_string().contains("invalid role or secret ID"), "{e}");
    assert!(e.hint().is_some_and(|h| h.contains("secret_id")));
    assert_eq!(c.stats().retries, 0);
    assert_eq!(c.stats().requests, 1);
    assert!(t0.elapsed() < Duration::from_secs(2));
    // And sign without a login does not send anything.
    assert!(matches!(
        c.sign("yubikey-piv", &sign_req()),
        Err(VaultError::NotLoggedIn)
    ));
}

#[test]
fn namespaces_are_sent_on_every_call_but_health() {
    let v = Vault::start_with(VaultOptions {
        namespace: Some("team1".into()),
        ..Default::default()
    });
    // Right namespace: everything works; health too (it must go without the header).
    let c = logged_in(&v);
    c.check_sign_access("yubikey-piv").expect("pre-flight");
    c.sign("yubikey-piv-auth", &sign_req()).expect("sign");
    c.kv_write("ns/probe", &serde_json::json!({"a": 1}), Some(0))
        .expect("kv");
    assert_eq!(c.ca_chain().expect("chain").len(), 2);
    let h = c.health().expect("health without the namespace header");
    assert!(h.initialized && !h.sealed && !h.standby, "{h:?}");
    // Wrong namespace: 404 namespace not found, with the hint.
    let mut cfg = v.vault_config();
    cfg.namespace = Some("nope".into());
    let c = VaultClient::new(cfg).expect("client");
    let e = c.login(v.creds()).expect_err("wrong namespace");
    assert!(
        matches!(e, VaultError::NamespaceNotFound { ref namespace } if namespace == "nope"),
        "{e:?}"
    );
    assert!(e.hint().is_some_and(|h| h.contains("namespace")));
    // No namespace: no AppRole in the root namespace (403, measured), hint names the
    // namespace.
    let mut cfg = v.vault_config();
    cfg.namespace = None;
    let c = VaultClient::new(cfg).expect("client");
    let e = c.login(v.creds()).expect_err("no namespace");
    assert!(matches!(e, VaultError::PermissionDenied { .. }), "{e:?}");
    assert!(
        e.hint().is_some_and(|h| h.contains("namespace")),
        "{:?}",
        e.hint()
    );
}

// ---- TLS ------------------------------------------------------------------------------------

#[test]
fn tls_needs_the_ca_bundle_and_trusts_only_it() {
    let v = Vault::start_with(VaultOptions {
        tls: true,
        ..Default::default()
    });
    // With the bundle.
    let c = logged_in(&v);
    c.sign("yubikey-piv", &sign_req()).expect("sign over TLS");

    // Without: the system store does not know the dev CA.
    let mut cfg = v.vault_config();
    cfg.ca_bundle_pem = None;
    let e = VaultClient::new(cfg)
        .expect("client")
        .login(v.creds())
        .expect_err("untrusted");
    match &e {
        VaultError::Tls { addr, detail } => {
            assert_eq!(addr, &v.addr);
            assert!(
                detail.contains("UnknownIssuer") || detail.contains("certificate"),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.hint().is_some_and(|h| h.contains("VAULT_CACERT")),
        "{:?}",
        e.hint()
    );

    // A bundle of another CA (the PKI root): refused too — only the bundle is trusted.
    let mut cfg = v.vault_config();
    cfg.ca_bundle_pem = Some(std::fs::read(&v.root_pem).expect("root"));
    let e = VaultClient::new(cfg)
        .expect("client")
        .health()
        .expect_err("wrong CA");
    assert!(matches!(e, VaultError::Tls { .. }), "{e:?}");

    // TLS-skip works and warns, every time a client is built.
    let count = || {
        logged()
            .iter()
            .filter(|l| l.starts_with("WARN") && l.contains("VERIFICATION IS OFF"))
            .count()
    };
    let before = count();
    let mut cfg = v.vault_config();
    cfg.ca_bundle_pem = None;
    cfg.tls_skip_verify = true;
    VaultClient::new(cfg.clone())
        .expect("client")
        .health()
        .expect("health");
    let c = VaultClient::new(cfg).expect("client");
    c.login(v.creds()).expect("login without verification");
    assert!(count() >= before + 2);
    assert!(logged()
        .iter()
        .any(|l| l.contains("WITHOUT TLS certificate verification")));

    // http:// against the TLS port: Go answers 400 "HTTP request to an HTTPS server".
    let mut cfg = v.vault_config();
    cfg.addrs = vec![url::Url::parse(&v.addr.replace("https://", "http://")).expect("url")];
    let e = VaultClient::new(cfg)
        .expect("client")
        .login(v.creds())
        .expect_err("plain");
    assert!(matches!(e, VaultError::Tls { .. }), "{e:?}");
    assert!(e.hint().is_some_and(|h| h.contains("https://")));
}

#[test]
fn https_to_a_plain_http_server_is_a_tls_error() {
    let v = vault::shared();
    let mut cfg = v.vault_config();
    cfg.addrs = vec![url::Url::parse(&v.addr.replace("http://", "https://")).expect("url")];
    let e = VaultClient::new(cfg)
        .expect("client")
        .health()
        .expect_err("not TLS");
    assert!(
        matches!(e, VaultError::Tls { ref detail, .. } if detail.contains("does not speak TLS")),
        "{e:?}"
    );
}

// ---- availability ---------------------------------------------------------------------------

#[test]
fn sealed_fails_fast_then_token_survives_unseal_and_revocation_means_relogin() {
    let v = Vault::start();
    let c = logged_in(&v);
    c.sign("yubikey-piv", &sign_req()).expect("sign");
    v.seal();
    let t0 = Instant::now();
    let e = c.sign("yubikey-piv", &sign_req()).expect_err("sealed");
    assert!(matches!(e, VaultError::Sealed { .. }), "{e:?}");
    assert!(e.is_unavailable() && e.hint().is_some_and(|h| h.contains("unseal")));
    // One address, sealed: no waiting for a person to unseal.
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    let h = c.health().expect("health answers while sealed");
    assert!(h.sealed);
    v.unseal();
    c.sign("yubikey-piv", &sign_req())
        .expect("sign after unseal");
    assert_eq!(c.stats().logins, 1, "the token survives a seal");

    // Revoke every AppRole token: the next call finds out (403 + lookup-self 403), logs in
    // again once and succeeds.
    let o = v.bao(&["token", "revoke", "-mode=path", "auth/approle/"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.sign("yubikey-piv", &sign_req())
        .expect("sign after revocation");
    assert_eq!(c.stats().logins, 2);
}

#[test]
fn stopped_server_is_a_connect_error_within_the_deadline() {
    let mut v = Vault::start();
    let mut cfg = v.vault_config();
    cfg.deadline = Duration::from_secs(3);
    cfg.request_timeout = Duration::from_secs(2);
    let c = VaultClient::new(cfg).expect("client");
    c.login(v.creds()).expect("login");
    v.stop();
    let t0 = Instant::now();
    let e = c.sign("yubikey-piv", &sign_req()).expect_err("stopped");
    let took = t0.elapsed();
    assert!(
        matches!(e, VaultError::Connect { ref addr, .. } if *addr == v.addr),
        "{e:?}"
    );
    assert!(e.is_unavailable());
    assert!(took <= Duration::from_millis(3300), "{took:?}");
    // Retried (a failed connect sends nothing), with backoff: a handful, not hundreds.
    let s = c.stats();
    assert!(s.retries >= 2 && s.retries < 20, "{s:?}");
}

#[test]
fn fails_over_to_the_next_address() {
    let v = vault::shared();
    let mut cfg = v.vault_config();
    cfg.addrs = vec![
        url::Url::parse(&dead_addr()).expect("url"),
        url::Url::parse(&v.addr).expect("url"),
    ];
    let c = VaultClient::new(cfg).expect("client");
    c.login(v.creds()).expect("login via the second address");
    assert_eq!(c.stats().retries, 1);
    // The working address is remembered: no more failed attempts.
    for _ in 0..3 {
        c.sign("yubikey-piv", &sign_req()).expect("sign");
    }
    assert_eq!(c.stats().retries, 1);
}

#[test]
fn token_is_renewed_then_replaced_at_its_max_ttl() {
    let v = Vault::start();
    // A short-lived token: 6 s, renewable up to 9 s.
    let o = v.bao(&[
        "write",
        "auth/approle/role/pivault",
        "token_ttl=6s",
        "token_max_ttl=9s",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = logged_in(&v);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(4300));
    // 1.7 s left < 6/3: renew-self.
    c.sign("yubikey-piv", &sign_req()).expect("sign");
    let s = c.stats();
    assert_eq!((s.logins, s.renewals), (1, 1), "{s:?}");
    std::thread::sleep(Duration::from_millis(7700).saturating_sub(t0.elapsed()));
    // Capped by token_max_ttl (1.3 s left): a renewal cannot help, log in again.
    c.sign("yubikey-piv", &sign_req()).expect("sign");
    let s = c.stats();
    assert_eq!(s.logins, 2, "{s:?}");
    assert!(c
        .token_expires_in()
        .is_some_and(|d| d > Duration::from_secs(4)));
}

// ---- a tiny HTTP server for what OpenBao will not do on demand -----------------------------

/// One HTTP/1.1 request: request line, headers (names lowercased), body.
type HttpRequest = (String, Vec<(String, String)>, Vec<u8>);

/// Read one HTTP/1.1 request (head + Content-Length body).
fn read_request(s: &mut TcpStream) -> Option<HttpRequest> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((line.trim_end().to_string(), headers, body))
}

#[derive(Clone, Default)]
struct Seen(
    Arc<Mutex<Vec<(String, bool, usize)>>>,
    Arc<Mutex<Vec<(String, bool)>>>,
);

impl Seen {
    /// (request line, sent X-Vault-No-Request-Forwarding: true).
    fn forwarding(&self) -> Vec<(String, bool)> {
        self.1.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn all(&self) -> Vec<(String, bool, usize)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn signs(&self) -> usize {
        self.all()
            .iter()
            .filter(|(l, _, _)| l.contains("/sign/"))
            .count()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OnSign {
    Redirect,
    /// Read the request, never answer (a frozen leader).
    Hang,
    /// Read the request, close the connection (a leader killed mid-request).
    Cut,
}

/// A fake node: answers 307 to `target` + the same path (what a standby does with
/// X-Vault-No-Request-Forwarding; `target` empty: to itself, a loop), except that sign
/// requests get `on_sign`. Records (request line, had a token, body length).
fn fake_node(target: String, on_sign: OnSign) -> (String, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = format!("http://{}", l.local_addr().expect("addr"));
    let seen = Seen::default();
    let rec = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let rec = rec.clone();
            let target = target.clone();
            std::thread::spawn(move || {
                while let Some((line, headers, body)) = read_request(&mut s) {
                    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
                    let token = headers.iter().any(|(k, _)| k == "x-vault-token");
                    rec.0.lock().unwrap_or_else(|e| e.into_inner()).push((
                        line.clone(),
                        token,
                        body.len(),
                    ));
                    let no_fwd = headers
                        .iter()
                        .any(|(k, v)| k == "x-vault-no-request-forwarding" && v == "true");
                    rec.1
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((line.clone(), no_fwd));
                    if path.contains("/sign/") {
                        match on_sign {
                            OnSign::Redirect => {}
                            OnSign::Cut => return,
                            OnSign::Hang => {
                                std::thread::sleep(Duration::from_secs(30));
                                return;
                            }
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}{path}\r\n\
                         Content-Length: 0\r\n\r\n"
                    );
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[test]
fn redirect_307_is_followed_with_body_and_token() {
    let v = vault::shared();
    let (standby, seen) = fake_node(v.addr.clone(), OnSign::Redirect);
    let mut cfg = v.vault_config();
    // The leader is a configured address (standby first, so every call starts there).
    cfg.addrs = vec![
        url::Url::parse(&standby).expect("url"),
        url::Url::parse(&v.addr).expect("url"),
    ];
    let c = VaultClient::new(cfg).expect("client");
    // POST with a body (the secret_id) to the standby, resent to the leader.
    c.login(v.creds()).expect("login through a 307");
    // POST with the token: 403 at the leader if the token were dropped on the way.
    c.sign("yubikey-piv", &sign_req())
        .expect("sign through a 307");
    c.kv_write("redirect/probe", &serde_json::json!({"a": 1}), None)
        .expect("kv through a 307");
    let all = seen.all();
    assert!(all
        .iter()
        .any(|(l, _, n)| l.starts_with("POST /v1/auth/approle/login") && *n > 0));
    assert!(all
        .iter()
        .any(|(l, t, n)| l.starts_with("POST /v1/pki/sign/yubikey-piv") && *t && *n > 0));
    // A sign asks a standby not to forward it (a 307 after a failed forward could follow
    // a certificate already issued); the other calls let it forward.
    let forwarding = seen.forwarding();
    assert!(forwarding
        .iter()
        .any(|(l, no_fwd)| l.contains("/sign/") && *no_fwd));
    assert!(forwarding
        .iter()
        .all(|(l, no_fwd)| l.contains("/sign/") || !*no_fwd));
    let s = c.stats();
    assert_eq!(s.logins, 1);
    assert_eq!(s.requests, 6, "3 calls, 2 hops each: {s:?}");
}

#[test]
fn redirect_to_an_address_not_configured_is_refused() {
    // The leader is real, but not among the configured addresses: the login with its
    // secret_id is not sent there.
    let v = vault::shared();
    let (standby, seen) = fake_node(v.addr.clone(), OnSign::Redirect);
    let mut cfg = v.vault_config();
    cfg.addrs = vec![url::Url::parse(&standby).expect("url")];
    let c = VaultClient::new(cfg).expect("client");
    let e = c.login(v.creds()).expect_err("not configured");
    match &e {
        VaultError::RedirectRefused { from, to, path } => {
            assert_eq!(from, &standby);
            assert_eq!(to, &v.addr);
            assert_eq!(path, "auth/approle/login");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains(&v.addr), "{e}");
    assert!(e.hint().is_some_and(|h| h.contains("configured addresses")));
    assert_eq!(seen.all().len(), 1, "refused, not retried");
    // (That nothing reached the target is shown with a recording peer in hostile_vault.rs.)
}

#[test]
fn redirect_loops_are_bounded() {
    let (standby, seen) = fake_node(String::new(), OnSign::Redirect);
    let mut cfg = VaultConfig::new(vec![url::Url::parse(&standby).expect("url")]);
    cfg.deadline = Duration::from_secs(5);
    let c = VaultClient::new(cfg).expect("client");
    let e = c.health().expect_err("loop");
    assert!(
        matches!(e, VaultError::BadResponse { ref detail, .. } if detail.contains("redirects")),
        "{e:?}"
    );
    assert_eq!(seen.all().len(), 4, "1 request + 3 hops");
}

#[test]
fn a_sign_that_may_have_reached_vault_is_not_repeated() {
    let v = vault::shared();
    for mode in [OnSign::Hang, OnSign::Cut] {
        let (node, seen) = fake_node(v.addr.clone(), mode);
        let mut cfg = v.vault_config();
        // The bad node first; Vault second (the node's 307 target, and a failover target
        // a retried sign would reach).
        cfg.addrs = vec![
            url::Url::parse(&node).expect("url"),
            url::Url::parse(&v.addr).expect("url"),
        ];
        cfg.request_timeout = Duration::from_secs(1);
        cfg.deadline = Duration::from_secs(4);
        let c = VaultClient::new(cfg).expect("client");
        c.login(v.creds()).expect("login (redirected to Vault)");
        let t0 = Instant::now();
        let e = c.sign("yubikey-piv", &sign_req()).expect_err("bad node");
        let VaultError::InDoubt {
            ref cause,
            ref addr,
            ref path,
            ..
        } = e
        else {
            panic!("{e:?}")
        };
        assert_eq!(addr, &node);
        assert_eq!(path, "pki/sign/yubikey-piv");
        match mode {
            OnSign::Hang => assert!(matches!(**cause, VaultError::Timeout { .. }), "{e:?}"),
            _ => assert!(
                matches!(**cause, VaultError::ConnectionLost { .. }),
                "{e:?}"
            ),
        }
        assert!(!e.is_transient() && !e.is_unavailable() && e.is_in_doubt());
        assert!(
            t0.elapsed() < Duration::from_millis(1800),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(
            seen.signs(),
            1,
            "a second sign could issue a second certificate"
        );
        assert_eq!(c.stats().retries, 0);
        assert!(e.hint().is_some_and(|h| h.contains("certificate")));
        // The pre-flight changes nothing on Vault: it is retried, on the next address.
        c.check_sign_access("yubikey-piv")
            .expect("pre-flight retried on Vault");
        assert_eq!(seen.signs(), 2);
        assert_eq!(c.stats().retries, 1);
    }
}

/// A proxy in front of Vault that forwards every request, but for the `drop_write`-th
/// (0-based) KV write closes the connection instead of passing Vault's answer back: the
/// write happened, its answer was lost (a leader killed after committing, issue 10 #12).
fn lossy_proxy(vault_addr: &str, drop_write: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = format!("http://{}", l.local_addr().expect("addr"));
    let upstream = vault_addr.trim_start_matches("http://").to_string();
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let upstream = upstream.clone();
            let writes = Arc::clone(&writes);
            std::thread::spawn(move || {
                // One request per connection: the answer says "Connection: close".
                if let Some((line, headers, body)) = read_request(&mut s) {
                    let mut raw = format!("{line}\r\n");
                    for (k, v) in headers
                        .iter()
                        .filter(|(k, _)| k != "connection" && k != "content-length")
                    {
                        raw.push_str(&format!("{k}: {v}\r\n"));
                    }
                    raw.push_str(&format!(
                        "content-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    ));
                    let mut up = TcpStream::connect(&upstream).expect("vault");
                    up.write_all(raw.as_bytes()).expect("send");
                    up.write_all(&body).expect("send");
                    let mut answer = Vec::new();
                    let _ = up.read_to_end(&mut answer);
                    let is_write = line.starts_with("POST") && line.contains("/data/");
                    if is_write
                        && writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == drop_write
                    {
                        return;
                    }
                    let _ = s.write_all(&answer);
                }
            });
        }
    });
    addr
}

#[test]
fn a_cas_write_whose_answer_was_lost_is_in_doubt_and_reads_back_as_written() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Rec {
        puk: String,
    }
    let v = vault::shared();
    let proxy = lossy_proxy(&v.addr, 1);
    let mut cfg = v.vault_config();
    cfg.addrs = vec![url::Url::parse(&proxy).expect("url")];
    let c = VaultClient::new(cfg).expect("client");
    c.login(v.creds()).expect("login through the proxy");
    let key = format!("lost/{}", rand::random::<u32>());
    let r1 = Rec { puk: "1111".into() };
    let r2 = Rec { puk: "2222".into() };
    assert_eq!(c.kv_write(&key, &r1, Some(0)).expect("create").version, 1);
    // Vault applies it, the answer is lost; the retry finds version 2 (this write).
    let e = c
        .kv_write(&key, &r2, Some(1))
        .expect_err("answer lost, then CAS mismatch");
    match &e {
        VaultError::InDoubt { path, cause, .. } => {
            assert!(path.ends_with(&key), "{path}");
            assert!(
                matches!(
                    **cause,
                    VaultError::CasMismatch {
                        expected: Some(1),
                        ..
                    }
                ),
                "{e:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!e.is_transient());
    assert!(e.hint().is_some_and(|h| h.contains("read the record back")));
    // Reading back resolves it: the record holds what was written.
    let (got, meta) = c.kv_read::<Rec>(&key).expect("read").expect("present");
    assert_eq!((got, meta.version), (r2, 2));
    // A CAS mismatch with no lost answer before it is another writer's.
    let e = c.kv_write(&key, &r1, Some(1)).expect_err("stale");
    assert!(matches!(e, VaultError::CasMismatch { .. }), "{e:?}");
}
