//! Self-service renewal by certificate login (issue 15), on the rig: OpenBao over TLS with
//! fixtures/vault/cert-auth.sh, a virtual card enrolled by `pivault enroll`, and `pivault
//! renew --auth cert` in an environment with no AppRole credentials at all. Checked from
//! the outside: the certificates read back with yubico-piv-tool, OpenBao's audit log, the
//! card's own APDU counter.

mod common;

use common::card::Card;
use common::run::{self, pivault, text};
use common::vault::{Vault, VaultOptions};
use pivault::cardtls::CardClientKey;
use pivault::piv::yubikey::{Selector, YubiKeyToken};
use pivault::piv::Slot;
use pivault::secret::Pin;
use pivault::vault::client_cert::ClientCert;
use pivault::vault::{SignRequest, VaultClient};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

const PIN: &str = "123456";
const FACTORY_MGM: &str = "010203040506070801020304050607080102030405060708";

/// A TLS OpenBao with the cert auth part of the contract and a file audit device.
fn cert_vault() -> (Vault, PathBuf) {
    let v = Vault::start_with(VaultOptions {
        tls: true,
        audit: true,
        ..Default::default()
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vault/cert-auth.sh");
    let mut c = Command::new("bash");
    c.arg(&script);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("BAO_") || k.starts_with("VAULT_") {
            c.env_remove(k);
        }
    }
    c.env("BAO_ADDR", &v.addr)
        .env("BAO_TOKEN", v.root_token())
        .env("BAO_CACERT", v.tls_ca.as_ref().expect("TLS CA"));
    let o = c.output().expect("run cert-auth.sh");
    assert!(o.status.success(), "cert-auth.sh: {}", text(&o));
    let audit = v.audit_log();
    (v, audit)
}

/// The request paths in the audit log (request entries only), in order.
fn audited_paths(audit: &Path) -> Vec<String> {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "request")
        .filter_map(|e| e["request"]["path"].as_str().map(str::to_string))
        .collect()
}

/// One audited request: its path, and the identity of the Vault token that made it (none
/// for a login or an unauthenticated read).
#[derive(Debug)]
struct Audited {
    path: String,
    /// `auth.display_name`, e.g. `cert-pivault-users`.
    display_name: Option<String>,
    policies: Vec<String>,
    /// `auth.metadata.common_name`: the CN of the certificate that logged in.
    login_cn: Option<String>,
}

fn audited(audit: &Path) -> Vec<Audited> {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "request")
        .filter_map(|e| {
            let path = e["request"]["path"].as_str()?.to_string();
            let auth = &e["auth"];
            let display_name = auth["display_name"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            let policies = auth["policies"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let login_cn = auth["metadata"]["common_name"].as_str().map(str::to_string);
            Some(Audited {
                path,
                display_name,
                policies,
                login_cn,
            })
        })
        .collect()
}

/// What one `renew --auth cert` run may ask Vault, checked in OpenBao's audit log: exactly
/// one certificate login, then only signs at the self roles `signed` (each at least once),
/// every one made with that login's token (display name `cert-pivault-users`, policy
/// `pivault-self` alone, certificate CN `cn`). Nothing else: no AppRole, no KV, no sys/, no
/// other role — and no CA chain read when the trust-anchor bundle holds the issuing CA
/// (`renew_cert` gives root and intermediate). With a root-only anchor (`chain_read`), the
/// one other request allowed is the public, unauthenticated CA chain read (no token).
fn assert_cert_login_and_signs_only(reqs: &[Audited], cn: &str, signed: &[&str]) {
    assert_login_and_signs(reqs, cn, signed, false)
}

fn assert_login_and_signs(reqs: &[Audited], cn: &str, signed: &[&str], chain_read: bool) {
    let logins = reqs.iter().filter(|r| r.path == "auth/cert/login").count();
    assert_eq!(logins, 1, "cert logins in one renewal: {reqs:#?}");
    for r in reqs {
        match r.path.as_str() {
            p if p == "auth/cert/login" || (chain_read && p == "pki/cert/ca_chain") => {
                assert!(
                    r.display_name.is_none() && r.policies.is_empty(),
                    "{} made with a token: {r:?}",
                    r.path
                );
            }
            p if p.starts_with("pki/sign/self-") => {
                assert_eq!(
                    r.display_name.as_deref(),
                    Some("cert-pivault-users"),
                    "{r:?}"
                );
                assert_eq!(r.policies, vec!["pivault-self".to_string()], "{r:?}");
                assert_eq!(r.login_cn.as_deref(), Some(cn), "{r:?}");
                assert!(
                    signed.iter().any(|s| p == format!("pki/sign/{s}")),
                    "sign at a role not renewed here: {r:?}"
                );
            }
            _ => panic!("unexpected request in a cert-login renewal: {r:?}\n{reqs:#?}"),
        }
    }
    for s in signed {
        let p = format!("pki/sign/{s}");
        assert!(reqs.iter().any(|r| r.path == p), "no {p}: {reqs:#?}");
    }
}

fn enroll(v: &Vault, card: &Card, cn: &str, slots: &[&str]) {
    let mut env = run::anchored_env(v);
    env.push(("PIVAULT_PIN".into(), PIN.into()));
    let mut args = vec!["--cn", cn, "--ttl", "1h"];
    for s in slots {
        args.extend(["--slot", s]);
    }
    run::ok(run::enroll_cmd(card, &env, &args));
}

/// `pivault renew --auth cert` (everything is due: 9000 h left is more than any
/// certificate here has), Vault address, its TLS CA and the trust anchor only; no
/// role_id, no secret_id.
fn renew_cert(v: &Vault, card: &Card, state: &Path, extra: &[&str]) -> std::process::Output {
    let env = vec![
        ("VAULT_ADDR".to_string(), v.addr.clone()),
        (
            "VAULT_CACERT".into(),
            v.tls_ca.as_ref().expect("CA").display().to_string(),
        ),
        // Root and issuing CA: the renewal needs no CA chain read from Vault.
        (
            "PIVAULT_TRUST_ANCHOR".into(),
            v.chain_pem.display().to_string(),
        ),
        ("PIVAULT_PIN".into(), PIN.into()),
        ("PIVAULT_MGMT_KEY".into(), FACTORY_MGM.into()),
    ];
    let mut c = pivault(&env);
    for k in [
        "PIVAULT_ROLE_ID",
        "PIVAULT_SECRET_ID",
        "PIVAULT_SECRET_ID_FILE",
    ] {
        c.env_remove(k);
    }
    c.args(["renew", "--auth", "cert", "--threshold", "9000h"]);
    c.args([
        "--serial",
        &card.serial.to_string(),
        "--reader",
        &card.reader,
    ]);
    c.arg("--state-dir").arg(state);
    c.args(extra);
    run::run(c)
}

#[test]
fn renews_9a_and_9c_with_the_token_certificate_and_no_approle() {
    let (v, audit) = cert_vault();
    let card = Card::start();
    enroll(&v, &card, "jane", &["9a", "9c"]);
    let before_9a = run::piv_tool_read_cert(&card.reader, "9a");
    let before_9c = run::piv_tool_read_cert(&card.reader, "9c");
    let audited_before = audited_paths(&audit).len();
    let state = tempfile::tempdir().expect("tmp");
    // --check needs no login at all: exit 10 (due), nothing changed.
    let o = renew_cert(&v, &card, state.path(), &["--check"]);
    assert_eq!(o.status.code(), Some(10), "renew --check: {}", text(&o));
    assert_eq!(before_9a, run::piv_tool_read_cert(&card.reader, "9a"));
    let o = renew_cert(&v, &card, state.path(), &[]);
    assert!(o.status.success(), "renew --auth cert: {}", text(&o));
    let after_9a = run::piv_tool_read_cert(&card.reader, "9a");
    let after_9c = run::piv_tool_read_cert(&card.reader, "9c");
    assert_ne!(before_9a, after_9a, "9a was not renewed");
    assert_ne!(before_9c, after_9c, "9c was not renewed");
    // Re-keyed: the new certificates hold new keys, and match the keys in the slots.
    let dir = state.path();
    assert_ne!(
        run::openssl_pubkey(&before_9a, dir),
        run::openssl_pubkey(&after_9a, dir)
    );
    assert_ne!(
        run::openssl_pubkey(&before_9c, dir),
        run::openssl_pubkey(&after_9c, dir)
    );
    assert!(run::slot_key_matches_cert(&card.reader, "9a", PIN, dir));
    for pem in [&after_9a, &after_9c] {
        let t = run::openssl_text(pem, dir);
        assert!(t.contains("CN=jane") || t.contains("CN = jane"), "{t}");
    }
    let reqs = &audited(&audit)[audited_before..];
    eprintln!(
        "audited requests of the renewal: {:?}",
        reqs.iter().map(|r| r.path.as_str()).collect::<Vec<_>>()
    );
    assert_cert_login_and_signs_only(
        reqs,
        "jane",
        &["self-yubikey-piv-auth", "self-yubikey-piv-email-signing"],
    );
    // The new 9a certificate signs the next login: a second renewal works with it.
    let n = audited(&audit).len();
    let o = renew_cert(&v, &card, state.path(), &["--slot", "9a"]);
    assert!(o.status.success(), "second renew: {}", text(&o));
    let again_9a = run::piv_tool_read_cert(&card.reader, "9a");
    assert_ne!(after_9a, again_9a);
    assert_eq!(after_9c, run::piv_tool_read_cert(&card.reader, "9c"));
    assert_cert_login_and_signs_only(&audited(&audit)[n..], "jane", &["self-yubikey-piv-auth"]);
    // 9c alone: the 9a certificate logs in, only 9c's role signs, 9a stays.
    let n = audited(&audit).len();
    let o = renew_cert(&v, &card, state.path(), &["--slot", "9c"]);
    assert!(o.status.success(), "9c renew: {}", text(&o));
    assert_ne!(after_9c, run::piv_tool_read_cert(&card.reader, "9c"));
    assert_eq!(again_9a, run::piv_tool_read_cert(&card.reader, "9a"));
    assert_cert_login_and_signs_only(
        &audited(&audit)[n..],
        "jane",
        &["self-yubikey-piv-email-signing"],
    );
}

/// A token whose 9c certificate names someone else (`eve`, put there by a helpdesk
/// through AppRole): the 9a login (`jane`) cannot get it signed. Vault refuses, and
/// pivault says which slot and why in one line with what to do, and exits 1 (the run
/// failed, the token changed: 9a is renewed). 9c keeps its certificate.
#[test]
fn renewal_for_another_users_name_is_refused_and_said_plainly() {
    let (v, audit) = cert_vault();
    let card = Card::start();
    enroll(&v, &card, "jane", &["9a", "9c:cn=eve"]);
    let before_9a = run::piv_tool_read_cert(&card.reader, "9a");
    let before_9c = run::piv_tool_read_cert(&card.reader, "9c");
    let n = audited(&audit).len();
    let state = tempfile::tempdir().expect("tmp");
    let o = renew_cert(&v, &card, state.path(), &[]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!("--- stdout\n{out}--- stderr\n{err}");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // Vault refused the sign for eve (the audit log has the error response).
    let responses: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .lines()
        .skip(n)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "response")
        .filter(|e| e["request"]["path"] == "pki/sign/self-yubikey-piv-email-signing")
        .collect();
    // The audit device HMACs the answer's error: compare with the HMAC of Vault's words.
    let o = v.bao(&[
        "write",
        "-field=hash",
        "sys/audit-hash/rig",
        "input=subject alternate name eve not allowed by this role",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let want = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let refused = responses
        .iter()
        .filter(|e| e["response"]["data"]["error"] == want.as_str())
        .count();
    assert!(
        refused >= 1,
        "Vault did not refuse eve's CSR: {responses:#?}"
    );
    assert_eq!(before_9c, run::piv_tool_read_cert(&card.reader, "9c"));
    assert_ne!(before_9a, run::piv_tool_read_cert(&card.reader, "9a"));
    // One line names the slot, the name and Vault's reason; a hint says what to do.
    let all = format!("{out}{err}");
    let line = all
        .lines()
        .find(|l| l.contains("9c") && l.contains("not allowed by this role"))
        .unwrap_or_else(|| panic!("no line for slot 9c with Vault's reason:\n{all}"));
    assert!(line.contains("eve"), "{line}");
    assert!(
        all.lines()
            .any(|l| l.contains("hint") && l.contains("helpdesk")),
        "no hint:\n{all}"
    );
}

/// The login's handshake signature is made by the card (its APDU counter moves during
/// the login and only then), and the login can have its own name signed but not
/// another user's: Vault refuses, and pivault's error says so.
#[test]
fn login_signs_on_the_card_and_cannot_get_another_name() {
    let (v, _audit) = cert_vault();
    let card = Card::start();
    enroll(&v, &card, "jane", &["9a"]);
    let token = YubiKeyToken::open(&Selector {
        serial: Some(card.serial),
        reader: Some(card.reader.clone()),
    })
    .expect("open the card");
    let shared = Arc::new(Mutex::new(token));
    let pin = Pin::new(PIN);
    let key = CardClientKey::new(shared.clone(), Slot::AUTHENTICATION, pin).expect("card key");
    let cert = ClientCert::new(Arc::new(key));
    let mut cfg = v.vault_config();
    cfg.client_cert = Some(cert.clone());
    let client = VaultClient::new(cfg).expect("client");
    // An unauthenticated call first: its connection must not carry the login.
    client.ca_chain().expect("CA chain");
    let a0 = card.apdu_count();
    assert_eq!(cert.signatures(), 0, "the card signed before the login");
    let t0 = std::time::Instant::now();
    client.login_cert("cert", None).expect("cert login");
    let took = t0.elapsed();
    let a1 = card.apdu_count();
    eprintln!(
        "cert login: {} ms, {} APDUs on the card during it",
        took.as_millis(),
        a1 - a0
    );
    assert_eq!(cert.signatures(), 1, "one handshake signature per login");
    // VERIFY + GENERAL AUTHENTICATE (measured: exactly 2).
    assert!(
        a1 >= a0 + 2,
        "the card saw {} APDUs during the login",
        a1 - a0
    );

    let dir = tempfile::tempdir().expect("tmp");
    let csr = |cn: &str| -> String {
        let key = dir.path().join(format!("{cn}.key"));
        let o = run::run({
            let mut c = run::tool("openssl");
            c.args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ]);
            c.args(["-nodes", "-subj", &format!("/CN={cn}"), "-keyout"]);
            c.arg(&key);
            c
        });
        assert!(o.status.success(), "openssl req: {}", text(&o));
        String::from_utf8(o.stdout).expect("PEM")
    };
    let req = |pem: String| SignRequest {
        csr_pem: pem,
        ..Default::default()
    };
    // Own name: issued (the test can fail the other way too).
    let own = client.sign("self-yubikey-piv-auth", &req(csr("jane")));
    assert!(own.is_ok(), "own name refused: {:?}", own.err());
    // Another user's name: refused by Vault, and said plainly.
    let a2 = card.apdu_count();
    let err = client
        .sign("self-yubikey-piv-auth", &req(csr("eve")))
        .expect_err("Vault signed a CSR for another user's name");
    let msg = err.to_string();
    eprintln!("pivault's error: {msg}");
    assert!(msg.contains("not allowed by this role"), "{msg}");
    assert!(msg.contains("eve"), "{msg}");
    // No further handshake signatures after the login (new connections go without the
    // certificate): the card is not asked again.
    assert_eq!(cert.signatures(), 1);
    assert!(
        card.apdu_count() <= a2 + 1,
        "the card was used after the login"
    );
    // A contract role is outside the renew-only policy.
    let denied = client.sign("yubikey-piv-auth", &req(csr("jane")));
    assert!(
        denied.is_err(),
        "the cert login could sign with a contract role"
    );
    // ... and no escrow record: the KV mount is closed to it.
    let kv = client.kv_read::<serde_json::Value>(&card.serial.to_string());
    assert!(
        matches!(kv, Err(pivault::vault::VaultError::PermissionDenied { .. })),
        "the cert login reached KV: {:?}",
        kv.map(|_| ())
    );
    drop(client);
    drop(shared);
}

/// A certificate Vault no longer accepts (the cert auth role trusting it is gone): exit 3,
/// "go to the helpdesk", and the token unchanged.
#[test]
fn refused_certificate_sends_the_user_to_the_helpdesk() {
    let (v, audit) = cert_vault();
    let card = Card::start();
    enroll(&v, &card, "jane", &["9a"]);
    let before = run::piv_tool_read_cert(&card.reader, "9a");
    let o = v.bao(&["delete", "auth/cert/certs/pivault-users"]);
    assert!(o.status.success(), "{}", text(&o));
    let state = tempfile::tempdir().expect("tmp");
    let o = renew_cert(&v, &card, state.path(), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("{err}");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        err.contains("cannot log in to Vault with the token's certificate"),
        "{err}"
    );
    assert!(err.contains("helpdesk"), "{err}");
    assert!(!err.contains("AppRole"), "{err}");
    assert_eq!(before, run::piv_tool_read_cert(&card.reader, "9a"));
    let signs = audited_paths(&audit)
        .into_iter()
        .filter(|p| p.contains("/sign/"))
        .count();
    // Only enroll's signs (preflight + sign for 9a), none by the refused renewal.
    assert_eq!(signs, 2, "{:?}", audited_paths(&audit));
}

/// RSA (TLS 1.3: RSA-PSS padded on the host, raw RSA on the card) and P-384 keys log in
/// too: Vault accepts each handshake and the login, one card signature each. A 9c
/// certificate (S/MIME EKU, no clientAuth) is refused before Vault is asked: Vault would
/// answer 500 "incompatible key usage".
#[test]
fn rsa_and_p384_keys_log_in() {
    let (v, audit) = cert_vault();
    let card = Card::start();
    enroll(
        &v,
        &card,
        "jane",
        &["9a:algorithm=rsa2048", "9e:algorithm=p384", "9c"],
    );
    let token = YubiKeyToken::open(&Selector {
        serial: Some(card.serial),
        reader: Some(card.reader.clone()),
    })
    .expect("open the card");
    let shared = Arc::new(Mutex::new(token));
    let logins_before = audited_paths(&audit)
        .iter()
        .filter(|p| *p == "auth/cert/login")
        .count();
    let e = CardClientKey::new(shared.clone(), Slot::SIGNATURE, Pin::new(PIN))
        .err()
        .expect("9c accepted as a login certificate");
    assert!(e.to_string().contains("client authentication"), "{e}");
    for slot in [Slot::AUTHENTICATION, Slot::CARD_AUTHENTICATION] {
        let key = CardClientKey::new(shared.clone(), slot, Pin::new(PIN)).expect("card key");
        let cert = ClientCert::new(Arc::new(key));
        let mut cfg = v.vault_config();
        cfg.client_cert = Some(cert.clone());
        let client = VaultClient::new(cfg).expect("client");
        client
            .login_cert("cert", Some("pivault-users"))
            .unwrap_or_else(|e| panic!("slot {slot}: cert login: {e}"));
        assert_eq!(cert.signatures(), 1, "slot {slot}");
    }
    let logins = audited_paths(&audit)
        .iter()
        .filter(|p| *p == "auth/cert/login")
        .count();
    assert_eq!(logins - logins_before, 2);
}

/// An expired login certificate: exit 3 and "go to the helpdesk", found before Vault is
/// asked for anything but the CA chain, and the token unchanged.
#[test]
fn expired_certificate_sends_the_user_to_the_helpdesk() {
    let (v, audit) = cert_vault();
    let card = Card::start();
    let mut env = run::anchored_env(&v);
    env.push(("PIVAULT_PIN".into(), PIN.into()));
    run::ok(run::enroll_cmd(
        &card,
        &env,
        &["--cn", "jane", "--ttl", "10s", "--slot", "9a"],
    ));
    let before = run::piv_tool_read_cert(&card.reader, "9a");
    std::thread::sleep(std::time::Duration::from_secs(12));
    let audited_before = audited_paths(&audit).len();
    let state = tempfile::tempdir().expect("tmp");
    let o = renew_cert(&v, &card, state.path(), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(err.contains("expired"), "{err}");
    assert!(err.contains("helpdesk"), "{err}");
    assert_eq!(before, run::piv_tool_read_cert(&card.reader, "9a"));
    let paths: Vec<String> = audited_paths(&audit)[audited_before..].to_vec();
    assert!(
        paths.iter().all(|p| p == "pki/cert/ca_chain"),
        "asked Vault for more than the CA chain: {paths:?}"
    );
}

/// A revoked login certificate: revoked in the PKI, the PKI's CRL given to the cert auth
/// (`auth/cert/crls`, README "Threat model": how a lost token is stopped). Vault's cert
/// auth refuses the login; pivault exits 3 with "go to the helpdesk"; nothing is signed
/// and the token is unchanged. Before the CRL is loaded the same certificate logs in
/// (so the refusal is the CRL's doing).
#[test]
fn revoked_certificate_sends_the_user_to_the_helpdesk() {
    let (v, audit) = cert_vault();
    let card = Card::start();
    enroll(&v, &card, "jane", &["9a"]);
    let state = tempfile::tempdir().expect("tmp");
    let o = renew_cert(&v, &card, state.path(), &[]);
    assert!(o.status.success(), "renew before revocation: {}", text(&o));
    let before = run::piv_tool_read_cert(&card.reader, "9a");
    // Revoke the certificate now in 9a, and hand the PKI's CRL to the cert auth.
    let pem = state.path().join("9a.pem");
    std::fs::write(&pem, &before).expect("write 9a.pem");
    let o = run::ok({
        let mut c = run::tool("openssl");
        c.args(["x509", "-noout", "-serial", "-in"]).arg(&pem);
        c
    });
    let hex = String::from_utf8_lossy(&o.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_lowercase();
    let colons: Vec<String> = hex
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let o = v.bao(&[
        "write",
        "pki/revoke",
        &format!("serial_number={}", colons.join(":")),
    ]);
    assert!(o.status.success(), "revoke: {}", text(&o));
    let o = v.bao(&["read", "-field=certificate", "pki/cert/crl"]);
    assert!(o.status.success(), "read the CRL: {}", text(&o));
    let crl = state.path().join("crl.pem");
    std::fs::write(&crl, &o.stdout).expect("write crl.pem");
    let o = v.bao(&[
        "write",
        "auth/cert/crls/pki",
        &format!("crl=@{}", crl.display()),
    ]);
    assert!(o.status.success(), "load the CRL: {}", text(&o));

    let n = audited(&audit).len();
    let o = renew_cert(&v, &card, state.path(), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("{err}");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        err.contains("cannot log in to Vault with the token's certificate"),
        "{err}"
    );
    assert!(err.contains("helpdesk"), "{err}");
    assert_eq!(before, run::piv_tool_read_cert(&card.reader, "9a"));
    let reqs = &audited(&audit)[n..];
    assert!(
        reqs.iter().any(|r| r.path == "auth/cert/login"),
        "no login attempt: {reqs:#?}"
    );
    assert!(
        reqs.iter()
            .all(|r| r.path == "auth/cert/login" || r.path == "pki/cert/ca_chain"),
        "more than the refused login: {reqs:#?}"
    );
}

/// The systemd user unit as shipped (`udev/pivault-renew.service`), run the way systemd
/// runs it (clean environment, `%h` the user's home, its `Environment=`, then
/// `ExecCondition=`, then `ExecStart=`), with a configuration file that says
/// `auth = "cert"` and a drop-in naming the token (the rig has several cards plugged in):
/// it renews through the certificate login, with no AppRole credentials anywhere.
#[test]
fn systemd_user_unit_renews_by_certificate_login_when_configured() {
    let (v, audit) = cert_vault();
    let card = Card::start();
    // 75 s (plus the role's 30 s back-dating): due after 70 s of 105 (the unit's default
    // threshold, 2/3), so the condition turns true while the certificate still logs in.
    let mut enroll_env = run::anchored_env(&v);
    enroll_env.push(("PIVAULT_PIN".into(), PIN.into()));
    run::ok(run::enroll_cmd(
        &card,
        &enroll_env,
        &["--cn", "jane", "--ttl", "75s", "--slot", "9a"],
    ));
    let before = run::piv_tool_read_cert(&card.reader, "9a");
    let home = tempfile::tempdir().expect("tmp");
    let h = home.path();
    std::fs::create_dir_all(h.join(".config/pivault")).expect("mkdir");
    std::fs::write(h.join(".config/pivault/pin"), PIN).expect("pin file");
    {
        use std::os::unix::fs::PermissionsExt;
        let p = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(h.join(".config/pivault/pin"), p).expect("chmod 600");
    }
    let config = h.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[vault]\naddr = \"{}\"\nca_cert = \"{}\"\ntrust_anchor = \"{}\"\nauth = \"cert\"\n",
            v.addr,
            v.tls_ca.as_ref().expect("CA").display(),
            v.root_pem.display()
        ),
    )
    .expect("config");
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("udev/pivault-renew.service"),
    )
    .expect("read the unit");
    let bin = env!("CARGO_BIN_EXE_pivault");
    let expand = |s: &str| {
        s.replace("/usr/bin/pivault", bin)
            .replace("%h", &h.display().to_string())
    };
    let value = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key).map(expand))
            .collect()
    };
    let mut env: Vec<(String, String)> = value("Environment=")
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
        .collect();
    // The drop-in (`systemctl --user edit pivault-renew`) of this machine.
    env.extend([
        ("PIVAULT_CONFIG".to_string(), config.display().to_string()),
        ("PIVAULT_SERIAL".into(), card.serial.to_string()),
        ("PIVAULT_READER".into(), card.reader.clone()),
        ("PIVAULT_MGMT_KEY".into(), FACTORY_MGM.into()),
    ]);
    let state = h.join("state");
    env.push(("STATE_DIRECTORY".into(), state.display().to_string()));
    let sh = |cmd: &str| {
        let mut c = Command::new("/bin/sh");
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", h)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .args(["-c", cmd]);
        run::run(c)
    };
    let cond = value("ExecCondition=");
    let start = value("ExecStart=");
    assert_eq!((cond.len(), start.len()), (1, 1), "{unit}");
    let n = audited(&audit).len();
    let t0 = std::time::Instant::now();
    let o = sh(&cond[0]);
    assert_eq!(o.status.code(), Some(1), "not due yet: {}", text(&o));
    // The timer fires again later; here: until the condition says due.
    let o = loop {
        std::thread::sleep(std::time::Duration::from_secs(3));
        let o = sh(&cond[0]);
        if o.status.success() || t0.elapsed().as_secs() > 70 {
            break o;
        }
    };
    assert!(
        o.status.success(),
        "ExecCondition never said due: {}",
        text(&o)
    );
    assert!(
        audited(&audit)[n..]
            .iter()
            .all(|r| r.path == "pki/cert/ca_chain"),
        "the condition logged in"
    );
    let o = sh(&start[0]);
    assert!(o.status.success(), "ExecStart: {}", text(&o));
    assert_ne!(before, run::piv_tool_read_cert(&card.reader, "9a"));
    // A root-only anchor (as this configuration has): the public CA chain read is the one
    // other request, without a token.
    assert_login_and_signs(
        &audited(&audit)[n..],
        "jane",
        &["self-yubikey-piv-auth"],
        true,
    );
}
