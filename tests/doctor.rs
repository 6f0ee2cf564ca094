//! `pivault doctor` on the rig: each fault of issue 14's list is made for real (a dead
//! pcscd socket, an empty reader, a second PC/SC client holding the card, an old firmware,
//! Vault down, untrusted TLS, a missing namespace, a wrong secret_id, a policy without a
//! role, a read-only KV policy, a Vault clock off) and found by its own test, which checks
//! the failing line, its exit-code class, and that the checks around it still pass. The
//! shared pcscd is never restarted: the "pcscd unreachable" case points the PC/SC library
//! at a dead socket.

mod common;

#[path = "common/faultproxy.rs"]
mod faultproxy;

use common::card::{Card, CardOptions};
use common::run::{pivault, run, text};
use common::vault::{shared, Vault, VaultOptions};
use faultproxy::{Fault, FaultProxy, Match, ProxyOptions};
use serde_json::Value;
use std::ffi::CString;
use std::process::Output;
use std::time::{Duration, Instant};

fn doctor(env: &[(String, String)], args: &[&str]) -> (Output, Value) {
    let mut c = pivault(env);
    c.arg("--json").arg("doctor").args(args);
    let o = run(c);
    let doc: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("doctor printed no JSON ({e}):\n{}", text(&o)));
    assert_eq!(doc["schema"], 1, "{doc}");
    assert_eq!(doc["kind"], "doctor", "{doc}");
    assert_eq!(
        Some(i64::from(o.status.code().unwrap_or(-1))),
        doc["exit_code"].as_i64(),
        "the exit code is the document's: {}",
        text(&o)
    );
    (o, doc)
}

/// The checks named `id`.
fn checks<'a>(doc: &'a Value, id: &str) -> Vec<&'a Value> {
    doc["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["check"] == id)
        .collect()
}

fn status<'a>(doc: &'a Value, id: &str) -> &'a str {
    let cs = checks(doc, id);
    assert_eq!(cs.len(), 1, "one '{id}' check in {doc:#}");
    cs[0]["status"].as_str().expect("status")
}

fn vault_env(v: &Vault) -> Vec<(String, String)> {
    v.pivault_env()
}

/// Only the Vault checks, with short limits.
const VAULT_ONLY: &[&str] = &["--skip-local", "--vault-timeout", "5"];

#[test]
fn pcscd_unreachable_is_found_without_touching_the_shared_pcscd() {
    let dir = tempfile::tempdir().expect("tmp");
    let dead = dir.path().join("pcscd.comm");
    // A socket file nobody listens on: the library's connect is refused.
    drop(std::os::unix::net::UnixListener::bind(&dead).expect("bind"));
    let env = vec![(
        "PCSCLITE_CSOCK_NAME".to_string(),
        dead.display().to_string(),
    )];
    let (o, doc) = doctor(&env, &["--skip-vault"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(status(&doc, "pcscd"), "fail", "{doc:#}");
    let line = &checks(&doc, "pcscd")[0];
    let msg = line["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&dead.display().to_string()),
        "names the socket: {msg}"
    );
    assert!(
        line["fix"].as_str().is_some_and(|f| !f.is_empty()),
        "{line}"
    );
    assert_eq!(status(&doc, "tokens"), "skipped", "{doc:#}");
    // The schema holds a failure to its fix and exit-code class: without them it is refused.
    common::schema::validate_as("doctor", &doc).expect("valid");
    let mut bad = doc.clone();
    bad["checks"][0]
        .as_object_mut()
        .expect("check")
        .remove("exit_code");
    assert!(common::schema::validate_as("doctor", &bad).is_err());
    // The text form: one line per check, the fix on the failing line.
    let mut c = pivault(&env);
    c.args(["doctor", "--skip-vault"]);
    let o = run(c);
    let out = String::from_utf8_lossy(&o.stdout);
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("FAIL pcscd: ") && first.contains("; fix: "),
        "{}",
        text(&o)
    );
}

#[test]
fn a_token_is_seen_with_its_firmware_and_an_empty_reader_fails() {
    let mut card = Card::start_with(CardOptions {
        version: Some("5.7.4".into()),
        ..Default::default()
    });
    let (o, doc) = doctor(&[], &["--skip-vault", "--reader", &card.reader]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(status(&doc, "pcscd"), "ok");
    assert_eq!(status(&doc, "reader"), "ok", "{doc:#}");
    assert_eq!(
        checks(&doc, "reader")[0]["token_serial"],
        u64::from(card.serial)
    );
    assert_eq!(
        status(&doc, "firmware"),
        "ok",
        "5.7.4 has no advisory: {doc:#}"
    );
    assert_eq!(checks(&doc, "firmware")[0]["firmware"], "5.7.4");

    card.remove();
    let (o, doc) = doctor(&[], &["--skip-vault", "--reader", &card.reader]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(status(&doc, "tokens"), "fail", "{doc:#}");
    assert!(
        checks(&doc, "reader")[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("empty")),
        "{doc:#}"
    );
    assert!(checks(&doc, "firmware").is_empty(), "{doc:#}");
}

#[test]
fn firmware_advisories_are_named() {
    // ROCA (YSA-2017-01) is YubiKey 4 firmware 4.2.6-4.3.4; EUCLEAK (YSA-2024-03) every
    // firmware before 5.7.0. 4.3.7 (the rig's YubiKey 4 profile) has only the second.
    for (version, want) in [
        ("4.3.4", vec!["YSA-2017-01", "YSA-2024-03"]),
        ("4.3.7", vec!["YSA-2024-03"]),
    ] {
        let card = Card::start_with(CardOptions {
            version: Some(version.into()),
            ..Default::default()
        });
        let (o, doc) = doctor(&[], &["--skip-vault", "--reader", &card.reader]);
        // A warning: the token works, a person should know.
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert_eq!(status(&doc, "firmware"), "warn", "{doc:#}");
        let f = checks(&doc, "firmware")[0];
        assert_eq!(f["firmware"], version);
        assert_eq!(f["token_serial"], u64::from(card.serial));
        let ids: Vec<&str> = f["advisories"]
            .as_array()
            .expect("advisories")
            .iter()
            .filter_map(|a| a["id"].as_str())
            .collect();
        assert_eq!(ids, want, "{version}: {f}");
        assert!(
            f["fix"].as_str().is_some_and(|x| x.contains("yubico.com")),
            "{f}"
        );
    }
}

/// A second PC/SC client connected to the card's reader, in this test process.
struct Holder {
    _ctx: pcsc::Context,
    card: Option<pcsc::Card>,
}

impl Holder {
    fn connect(reader: &str, mode: pcsc::ShareMode) -> Holder {
        let ctx = pcsc::Context::establish(pcsc::Scope::User).expect("PC/SC context");
        let name = CString::new(reader).expect("reader name");
        let card = ctx
            .connect(&name, mode, pcsc::Protocols::ANY)
            .expect("connect to the card");
        Holder {
            _ctx: ctx,
            card: Some(card),
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(c) = self.card.take() {
            let _ = c.disconnect(pcsc::Disposition::LeaveCard);
        }
    }
}

fn assert_names_holder(doc: &Value, reader: &str) {
    let r = checks(doc, "reader");
    assert_eq!(r.len(), 1, "{doc:#}");
    assert_eq!(r[0]["status"], "fail", "{doc:#}");
    assert_eq!(r[0]["reader"], reader);
    let msg = r[0]["message"].as_str().unwrap_or_default();
    let me = u64::from(std::process::id());
    let named = r[0]["holders"]
        .as_array()
        .is_some_and(|hs| hs.iter().any(|h| h["pid"] == me));
    assert!(
        named || msg.contains("another program"),
        "names the holder (this test, pid {me}) or says another program holds it: {doc:#}"
    );
    // With iproute2's `ss` (on the rig) the clients of pcscd are known: this one is named.
    let have_ss = std::process::Command::new("ss")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        named || !have_ss,
        "ss is there, yet pid {me} is not named: {doc:#}"
    );
    assert!(
        r[0]["fix"].as_str().is_some_and(|f| !f.is_empty()),
        "{doc:#}"
    );
    assert_eq!(status(doc, "tokens"), "fail", "{doc:#}");
    assert_eq!(doc["exit_code"], 3);
}

#[test]
fn a_reader_held_exclusively_by_another_client_is_named_without_hanging() {
    let card = Card::start();
    let holder = Holder::connect(&card.reader, pcsc::ShareMode::Exclusive);
    let t0 = Instant::now();
    let (o, doc) = doctor(
        &[],
        &[
            "--skip-vault",
            "--reader",
            &card.reader,
            "--card-timeout",
            "3",
        ],
    );
    let took = t0.elapsed();
    assert_names_holder(&doc, &card.reader);
    assert!(
        checks(&doc, "reader")[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("exclusively")),
        "{}",
        text(&o)
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // Let go: the same reader is fine again.
    drop(holder);
    let (o, doc) = doctor(&[], &["--skip-vault", "--reader", &card.reader]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(status(&doc, "reader"), "ok");
}

#[test]
fn a_reader_held_in_a_transaction_times_out_and_is_named() {
    let card = Card::start();
    let mut holder = Holder::connect(&card.reader, pcsc::ShareMode::Shared);
    let c = holder.card.as_mut().expect("card");
    let tx = c.transaction().expect("begin a transaction");
    let t0 = Instant::now();
    let (o, doc) = doctor(
        &[],
        &[
            "--skip-vault",
            "--reader",
            &card.reader,
            "--card-timeout",
            "2",
        ],
    );
    let took = t0.elapsed();
    drop(tx);
    assert_names_holder(&doc, &card.reader);
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: {}",
        text(&o)
    );
}

#[test]
fn vault_down_is_unavailable() {
    // A loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let env = vec![
        ("VAULT_ADDR".to_string(), format!("http://127.0.0.1:{port}")),
        ("PIVAULT_ROLE_ID".to_string(), "r".to_string()),
        ("PIVAULT_SECRET_ID".to_string(), "s".to_string()),
    ];
    let t0 = Instant::now();
    let (o, doc) = doctor(&env, &["--skip-local", "--vault-timeout", "2"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert_eq!(status(&doc, "vault-reachable"), "fail", "{doc:#}");
    assert_eq!(status(&doc, "login"), "skipped");
    assert!(t0.elapsed() < Duration::from_secs(15));
}

#[test]
fn no_vault_address_is_a_configuration_failure() {
    let (o, doc) = doctor(&[], VAULT_ONLY);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let r = checks(&doc, "vault-reachable")[0];
    assert_eq!(r["status"], "fail", "{doc:#}");
    assert!(
        r["fix"].as_str().is_some_and(|f| f.contains("VAULT_ADDR")),
        "{doc:#}"
    );
}

#[test]
fn a_healthy_vault_passes_every_check_and_nothing_is_written_or_issued() {
    let v = shared();
    let before = v.issued_cert_count();
    let (o, doc) = doctor(&vault_env(v), VAULT_ONLY);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for id in [
        "vault-reachable",
        "clock-skew",
        "namespace",
        "login",
        "kv-writable",
    ] {
        assert_eq!(status(&doc, id), "ok", "{id}: {doc:#}");
    }
    // Plain HTTP on the bench: a warning, not a failure.
    assert_eq!(status(&doc, "vault-tls"), "warn");
    let roles = checks(&doc, "role");
    assert_eq!(roles.len(), 4, "{doc:#}");
    assert!(roles.iter().all(|r| r["status"] == "ok"), "{doc:#}");
    // The rig's AppRole has the contract policy alone (no `default`): the check-and-set way.
    let kv = checks(&doc, "kv-writable")[0];
    assert!(
        kv["message"]
            .as_str()
            .is_some_and(|m| m.contains("nothing written")),
        "{kv}"
    );
    // Vault's side: no certificate issued, no KV record written.
    assert_eq!(v.issued_cert_count(), before, "doctor issued a certificate");
    let o = v.bao(&["kv", "list", "-format=json", &v.kv_mount]);
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(
        !listed.contains("pivault-doctor"),
        "doctor wrote to KV: {listed}"
    );
    let o = v.bao(&[
        "kv",
        "metadata",
        "get",
        &format!("{}/pivault-doctor-probe", v.kv_mount),
    ]);
    assert!(!o.status.success(), "the probe record exists: {}", text(&o));
}

#[test]
fn untrusted_tls_names_the_ca_in_use() {
    let v = Vault::start_with(VaultOptions {
        tls: true,
        ..Default::default()
    });
    let ca = v.tls_ca.clone().expect("tls ca");
    let (o, doc) = doctor(&vault_env(&v), VAULT_ONLY);
    assert_eq!(o.status.code(), Some(0), "with its CA: {}", text(&o));
    let tls = checks(&doc, "vault-tls")[0];
    assert_eq!(tls["status"], "ok", "{doc:#}");
    assert_eq!(tls["ca_file"], ca.display().to_string());

    // Without VAULT_CACERT: the system store, which does not know the dev server's CA.
    let env: Vec<_> = vault_env(&v)
        .into_iter()
        .filter(|(k, _)| k != "VAULT_CACERT")
        .collect();
    let (o, doc) = doctor(&env, VAULT_ONLY);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let tls = checks(&doc, "vault-tls")[0];
    assert_eq!(tls["status"], "fail", "{doc:#}");
    assert_eq!(tls["ca_file"], "system");
    assert_eq!(status(&doc, "login"), "skipped");

    // A CA file that did not issue Vault's certificate (the PKI's root): named as the one
    // in use.
    let wrong = v.root_pem.display().to_string();
    let env: Vec<_> = vault_env(&v)
        .into_iter()
        .map(|(k, val)| {
            if k == "VAULT_CACERT" {
                (k, wrong.clone())
            } else {
                (k, val)
            }
        })
        .collect();
    let (o, doc) = doctor(&env, VAULT_ONLY);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let tls = checks(&doc, "vault-tls")[0];
    assert_eq!(tls["status"], "fail", "{doc:#}");
    assert_eq!(tls["ca_file"], wrong);
    assert!(
        tls["message"].as_str().is_some_and(|m| m.contains(&wrong)),
        "{tls}"
    );
}

#[test]
fn a_missing_namespace_is_named() {
    let v = Vault::start_with(VaultOptions {
        namespace: Some("team1".into()),
        ..Default::default()
    });
    let (o, doc) = doctor(&vault_env(&v), VAULT_ONLY);
    assert_eq!(o.status.code(), Some(0), "in its namespace: {}", text(&o));
    assert_eq!(status(&doc, "namespace"), "ok");
    let env: Vec<_> = vault_env(&v)
        .into_iter()
        .map(|(k, val)| {
            if k == "VAULT_NAMESPACE" {
                (k, "team2".to_string())
            } else {
                (k, val)
            }
        })
        .collect();
    let (o, doc) = doctor(&env, VAULT_ONLY);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(status(&doc, "namespace"), "fail", "{doc:#}");
    assert!(checks(&doc, "namespace")[0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("team2")));
    assert_eq!(status(&doc, "login"), "skipped");
}

#[test]
fn a_wrong_secret_id_fails_the_login() {
    let v = shared();
    let env: Vec<_> = vault_env(v)
        .into_iter()
        .map(|(k, val)| {
            if k == "PIVAULT_SECRET_ID" {
                (k, "00000000-0000-0000-0000-000000000000".to_string())
            } else {
                (k, val)
            }
        })
        .collect();
    let (o, doc) = doctor(&env, VAULT_ONLY);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(status(&doc, "vault-reachable"), "ok");
    assert_eq!(status(&doc, "login"), "fail", "{doc:#}");
    assert!(checks(&doc, "role")[0]["status"] == "skipped");
}

/// An AppRole `name` bound to a policy of `rules` (HCL, mounts already named), with or
/// without Vault's built-in `default` policy (which allows `sys/capabilities-self`).
fn approle_with_policy(
    v: &Vault,
    name: &str,
    rules: &str,
    default_policy: bool,
) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("policy.hcl");
    std::fs::write(&f, rules).expect("policy file");
    let ok = |o: Output| {
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    ok(v.bao(&["policy", "write", name, &f.display().to_string()]));
    ok(v.bao(&[
        "write",
        &format!("auth/approle/role/{name}"),
        &format!("token_policies={name}"),
        &format!("token_no_default_policy={}", !default_policy),
    ]));
    let role_id = ok(v.bao(&[
        "read",
        "-field=role_id",
        &format!("auth/approle/role/{name}/role-id"),
    ]));
    let secret_id = ok(v.bao(&[
        "write",
        "-f",
        "-field=secret_id",
        &format!("auth/approle/role/{name}/secret-id"),
    ]));
    vault_env(v)
        .into_iter()
        .map(|(k, val)| match k.as_str() {
            "PIVAULT_ROLE_ID" => (k, role_id.clone()),
            "PIVAULT_SECRET_ID" => (k, secret_id.clone()),
            _ => (k, val),
        })
        .collect()
}

/// The contract policy with `pki/sign/*` and `<kv>/data/*` lines replaced.
fn contract_policy(v: &Vault, sign: &str, kv_data: &str) -> String {
    let (kv, pki) = (&v.kv_mount, &v.pki_mount);
    format!(
        "{kv_data}\n\
         path \"{kv}/metadata/*\" {{ capabilities = [\"read\", \"list\", \"delete\"] }}\n\
         {sign}\n\
         path \"{pki}/cert/ca\" {{ capabilities = [\"read\"] }}\n\
         path \"{pki}/ca/pem\" {{ capabilities = [\"read\"] }}\n\
         path \"{pki}/crl*\" {{ capabilities = [\"read\"] }}\n\
         path \"auth/token/lookup-self\" {{ capabilities = [\"read\"] }}\n\
         path \"auth/token/renew-self\" {{ capabilities = [\"update\"] }}\n"
    )
}

#[test]
fn a_role_missing_from_the_policy_is_named() {
    let v = shared();
    let pki = &v.pki_mount;
    let sign: String = [
        "yubikey-piv",
        "yubikey-piv-auth",
        "yubikey-piv-email-signing",
    ]
    .iter()
    .map(|r| format!("path \"{pki}/sign/{r}\" {{ capabilities = [\"create\", \"update\"] }}\n"))
    .collect();
    let kv = format!(
        "path \"{}/data/*\" {{ capabilities = [\"create\", \"read\", \"update\"] }}",
        v.kv_mount
    );
    let env = approle_with_policy(
        v,
        "doctor-nocodesign",
        &contract_policy(v, &sign, &kv),
        false,
    );
    let (o, doc) = doctor(&env, VAULT_ONLY);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    for r in checks(&doc, "role") {
        let want = if r["role"] == "yubikey-piv-code-signing" {
            "fail"
        } else {
            "ok"
        };
        assert_eq!(r["status"], want, "{r}");
    }
    let bad: Vec<_> = checks(&doc, "role")
        .into_iter()
        .filter(|r| r["status"] == "fail")
        .collect();
    assert_eq!(bad.len(), 1, "{doc:#}");
    assert!(bad[0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("pki/sign/yubikey-piv-code-signing")));
    assert_eq!(status(&doc, "kv-writable"), "ok");
}

#[test]
fn a_read_only_kv_policy_is_found_without_writing() {
    let v = shared();
    let sign = format!(
        "path \"{}/sign/*\" {{ capabilities = [\"create\", \"update\"] }}",
        v.pki_mount
    );
    let kv = format!(
        "path \"{}/data/*\" {{ capabilities = [\"read\"] }}",
        v.kv_mount
    );
    // Both ways doctor asks: sys/capabilities-self (with the `default` policy), and the
    // check-and-set write that cannot apply (the contract policy alone).
    for default_policy in [true, false] {
        let name = format!("doctor-kvread-{default_policy}");
        let env = approle_with_policy(v, &name, &contract_policy(v, &sign, &kv), default_policy);
        let (o, doc) = doctor(&env, VAULT_ONLY);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert_eq!(status(&doc, "kv-writable"), "fail", "{doc:#}");
        if default_policy {
            assert_eq!(
                checks(&doc, "kv-writable")[0]["capabilities"],
                serde_json::json!(["read"])
            );
        }
        assert!(checks(&doc, "role").iter().all(|r| r["status"] == "ok"));
    }
    // Nothing was written by any probe.
    let o = v.bao(&[
        "kv",
        "metadata",
        "get",
        &format!("{}/pivault-doctor-probe", v.kv_mount),
    ]);
    assert!(!o.status.success(), "the probe record exists: {}", text(&o));
}

#[test]
fn a_vault_clock_an_hour_off_is_found() {
    let v = shared();
    let proxy = FaultProxy::start(ProxyOptions::to(v).rule(
        Match::EveryPath("/v1/sys/health".into()),
        Fault::ShiftDate(3600),
    ));
    let env: Vec<_> = vault_env(v)
        .into_iter()
        .map(|(k, val)| {
            if k == "VAULT_ADDR" {
                (k, proxy.addr.clone())
            } else {
                (k, val)
            }
        })
        .collect();
    let (o, doc) = doctor(&env, VAULT_ONLY);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(status(&doc, "clock-skew"), "fail", "{doc:#}");
    let skew = checks(&doc, "clock-skew")[0]["skew_seconds"]
        .as_f64()
        .expect("skew");
    assert!((3590.0..3610.0).contains(&skew), "{skew}");
    // Everything else passes through the proxy.
    assert_eq!(status(&doc, "login"), "ok");

    // Without the shift the same path is in time.
    proxy.set_rules(Vec::new());
    let (o, doc) = doctor(&env, VAULT_ONLY);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(status(&doc, "clock-skew"), "ok");
}

/// GnuPG's scdaemon (`disable-ccid`: through pcscd; without `pcsc-shared` it connects
/// exclusively), started for one reader in a GnuPG home of its own and asked for the
/// card's serial number, then left running as it is on a desktop.
struct Scdaemon {
    home: tempfile::TempDir,
}

impl Scdaemon {
    fn hold(reader: &str) -> (Scdaemon, String) {
        let home = tempfile::Builder::new()
            .prefix("pivault-gnupg-")
            .tempdir()
            .expect("GnuPG home");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        std::fs::write(
            home.path().join("scdaemon.conf"),
            format!(
                "disable-ccid\nreader-port {reader}\nverbose\nlog-file {}/scd.log\n",
                home.path().display()
            ),
        )
        .expect("scdaemon.conf");
        let o = std::process::Command::new("gpg-connect-agent")
            .arg("--homedir")
            .arg(home.path())
            .args(["SCD SERIALNO undefined", "/bye"])
            .output()
            .expect("gpg-connect-agent (package gnupg; scdaemon from package scdaemon)");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let log = std::fs::read_to_string(home.path().join("scd.log")).unwrap_or_default();
        (Scdaemon { home }, format!("{said}\n{log}"))
    }
}

impl Drop for Scdaemon {
    fn drop(&mut self) {
        let _ = std::process::Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--kill", "all"])
            .output();
    }
}

#[test]
fn gnupg_scdaemon_holding_the_reader_is_named() {
    let card = Card::start();
    let (gpg, said) = Scdaemon::hold(&card.reader);
    let (o, doc) = doctor(
        &[],
        &[
            "--skip-vault",
            "--reader",
            &card.reader,
            "--card-timeout",
            "3",
        ],
    );
    let r = checks(&doc, "reader")[0];
    assert_eq!(r["status"], "fail", "{said}\n{doc:#}");
    assert_eq!(r["holders"][0]["known_as"], "GnuPG scdaemon", "{doc:#}");
    assert!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("GnuPG scdaemon")),
        "{doc:#}"
    );
    assert!(
        r["fix"]
            .as_str()
            .is_some_and(|f| f.contains("gpgconf --kill scdaemon")),
        "{doc:#}"
    );
    assert_eq!(o.status.code(), Some(3));
    // Once scdaemon is gone, the token is there.
    drop(gpg);
    let (o, doc) = doctor(&[], &["--skip-vault", "--reader", &card.reader]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(status(&doc, "reader"), "ok");
}

#[test]
fn a_sealed_vault_is_unavailable() {
    let v = Vault::start();
    v.seal();
    let (o, doc) = doctor(&vault_env(&v), VAULT_ONLY);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let r = checks(&doc, "vault-reachable")[0];
    assert_eq!(r["status"], "fail", "{doc:#}");
    assert!(r["message"].as_str().is_some_and(|m| m.contains("sealed")));
    v.unseal();
    let (o, _) = doctor(&vault_env(&v), VAULT_ONLY);
    assert_eq!(o.status.code(), Some(0), "unsealed: {}", text(&o));
}

#[test]
fn a_role_missing_from_the_pki_mount_is_named() {
    let v = Vault::start();
    let o = v.bao(&["delete", &format!("{}/roles/yubikey-piv-auth", v.pki_mount)]);
    assert!(o.status.success(), "{}", text(&o));
    let (o, doc) = doctor(&vault_env(&v), VAULT_ONLY);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let bad: Vec<_> = checks(&doc, "role")
        .into_iter()
        .filter(|r| r["status"] == "fail")
        .collect();
    assert_eq!(bad.len(), 1, "{doc:#}");
    assert_eq!(bad[0]["role"], "yubikey-piv-auth");
    assert!(bad[0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("no such role")));
}

#[test]
fn a_held_reader_does_not_hide_or_slow_the_others() {
    let held = Card::start();
    let free = Card::start();
    let mut holder = Holder::connect(&held.reader, pcsc::ShareMode::Shared);
    let c = holder.card.as_mut().expect("card");
    let tx = c.transaction().expect("begin a transaction");
    let t0 = Instant::now();
    let (o, doc) = doctor(
        &[],
        &[
            "--skip-vault",
            "--reader",
            &held.reader,
            "--reader",
            &free.reader,
            "--card-timeout",
            "3",
        ],
    );
    let took = t0.elapsed();
    drop(tx);
    let readers = checks(&doc, "reader");
    assert_eq!(readers.len(), 2, "{doc:#}");
    for r in readers {
        if r["reader"] == held.reader.as_str() {
            assert_eq!(r["status"], "fail", "{r}");
        } else {
            assert_eq!(r["status"], "ok", "{r}");
            assert_eq!(r["token_serial"], u64::from(free.serial));
        }
    }
    // One token is there, but a reader needs a person: exit 3, tokens ok.
    assert_eq!(status(&doc, "tokens"), "ok", "{doc:#}");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    // The readers are probed together: one wait, not one per reader.
    assert!(took < Duration::from_secs(6), "took {took:?}");
}
