//! `pivault enroll` and `pivault status` end to end: the real binary, real pcscd with a
//! virtual YubiKey, a real OpenBao provisioned with the contract, and third-party clients
//! (yubico-piv-tool, OpenSC, openssl) checking what landed on the token.

mod common;

use common::card::{Card, CardOptions};
use common::run::{self, pivault, text};
use common::vault::{Vault, VaultOptions};
use serde_json::Value;
use std::process::{Command, Output};

const PIN: &str = "123456";

fn env_for(vault: &Vault) -> Vec<(String, String)> {
    let mut env = vault.pivault_env();
    env.push(("PIVAULT_PIN".into(), PIN.into()));
    env
}

fn enroll_cmd(card: &Card, env: &[(String, String)], extra: &[&str]) -> Command {
    run::enroll_cmd(card, env, extra)
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", text(o)))
}

fn status(card: &Card) -> Value {
    run::status_json(card)
}

/// The one error line pivault prints, and its hint.
fn error_line(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    err.lines()
        // pivault's own errors, and clap's for values it parses into types at the edge.
        .filter(|l| {
            l.starts_with("pivault: error:")
                || l.starts_with("error:")
                || l.trim_start().starts_with("hint:")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_token_untouched(card: &Card, pin_tries: u64) {
    let st = status(card);
    assert_eq!(
        st["slots"].as_array().map(Vec::len),
        Some(0),
        "slots changed: {st}"
    );
    assert_eq!(st["pin_tries_left"], pin_tries, "PIN counter changed: {st}");
}

#[test]
fn enroll_all_four_roles_then_cross_check_with_third_party_tools() {
    let vault = Vault::start();
    let card = Card::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = enroll_cmd(
        &card,
        &env_for(&vault),
        &[
            "--json",
            "--slot",
            "9a",
            "--slot",
            "9c:role=code-signing,algorithm=rsa2048",
            "--slot",
            "9d",
            "--slot",
            "9e:role=yubikey-piv",
            "--cn",
            "Test User {serial}",
            "--email",
            "test.user@example.org",
            "--upn",
            "test.user@corp.example.org",
        ],
    );
    let o = run::run({
        c.arg("-v");
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("1 AppRole login(s)"),
        "one login for the whole run: {}",
        text(&o)
    );
    let report = json(&o);
    assert_eq!(report["schema"], 1);
    assert_eq!(report["ok"], true);
    assert_eq!(report["token_serial"], card.serial);
    let slots = report["slots"].as_array().expect("slots");
    let want = [
        (
            "9a",
            "yubikey-piv-auth",
            "p256",
            "TLS Web Client Authentication",
        ),
        ("9c", "yubikey-piv-code-signing", "rsa2048", "Code Signing"),
        (
            "9d",
            "yubikey-piv-email-signing",
            "p256",
            "E-mail Protection",
        ),
        ("9e", "yubikey-piv", "p256", "TLS Web Client Authentication"),
    ];
    assert_eq!(slots.len(), 4);
    for ((slot, role, alg, eku), r) in want.iter().zip(slots) {
        assert_eq!(r["slot"], *slot);
        assert_eq!(r["role"], *role);
        assert_eq!(r["algorithm"], *alg);
        assert_eq!(r["result"], "enrolled");
        // The certificate in the slot, as a third party reads it, is the one reported.
        let pem = run::piv_tool_read_cert(&card.reader, slot);
        assert_eq!(
            run::openssl_fingerprint(&pem, dir.path()),
            r["sha256_fingerprint"].as_str().expect("fingerprint"),
            "slot {slot}"
        );
        // It chains to the provisioned root through the intermediate.
        let v = run::openssl_verify(&pem, &vault.root_pem, &vault.chain_pem, dir.path());
        assert!(v.status.success(), "slot {slot}: {}", text(&v));
        let t = run::openssl_text(&pem, dir.path());
        assert!(t.contains(eku), "slot {slot} lacks {eku}:\n{t}");
        assert!(
            t.contains(&format!("CN=Test User {}", card.serial))
                || t.contains(&format!("CN = Test User {}", card.serial)),
            "{t}"
        );
        if *slot == "9a" {
            assert!(
                t.contains("Microsoft Smartcard Login") || t.contains("1.3.6.1.4.1.311.20.2.2"),
                "{t}"
            );
            // The UPN appears exactly once (it travels only as other_sans).
            assert_eq!(t.matches("test.user@corp.example.org").count(), 1, "{t}");
        }
        if *slot == "9d" {
            assert!(t.contains("email:test.user@example.org"), "{t}");
        }
    }

    // yubico-piv-tool's status lists every slot.
    let mut c = run::tool("yubico-piv-tool");
    c.args(["-r", &card.reader, "-a", "status"]);
    let st = String::from_utf8_lossy(&run::ok(c).stdout).into_owned();
    for slot in ["9a", "9c", "9d", "9e"] {
        assert!(
            st.contains(&format!("Slot {slot}")),
            "{slot} missing:\n{st}"
        );
    }
    assert!(st.contains("CHUID"), "CHUID not written:\n{st}");

    // OpenSC signs with each slot's key; openssl verifies with the slot's certificate.
    for (slot, id, rsa) in [("9a", "01", false), ("9c", "02", true), ("9e", "04", false)] {
        let pem = run::piv_tool_read_cert(&card.reader, slot);
        let cert = dir.path().join(format!("{slot}.pem"));
        std::fs::write(&cert, &pem).expect("write");
        let pubkey = dir.path().join(format!("{slot}.pub"));
        let mut c = run::tool("openssl");
        c.args(["x509", "-pubkey", "-noout", "-in"]).arg(&cert);
        std::fs::write(&pubkey, run::ok(c).stdout).expect("pub");
        let data = dir.path().join("data");
        std::fs::write(&data, format!("signed by slot {slot}")).expect("data");
        let sig = dir.path().join(format!("{slot}.sig"));
        let mut c = run::pkcs11_tool(&card.reader);
        c.args([
            "--module",
            &run::opensc_module(),
            "--slot-description",
            &card.reader,
        ]);
        c.args(["--login", "--pin", PIN, "--sign", "--id", id]);
        if rsa {
            c.args(["-m", "SHA256-RSA-PKCS"]);
        } else {
            c.args(["-m", "ECDSA-SHA256", "--signature-format", "openssl"]);
        }
        c.arg("-i").arg(&data).arg("-o").arg(&sig);
        run::ok(c);
        let mut c = run::tool("openssl");
        c.args(["dgst", "-sha256", "-verify"])
            .arg(&pubkey)
            .arg("-signature")
            .arg(&sig)
            .arg(&data);
        let v = run::ok(c);
        assert!(String::from_utf8_lossy(&v.stdout).contains("Verified OK"));
    }

    // pivault status reads back what was enrolled.
    let st = status(&card);
    assert_eq!(st["serial"], card.serial);
    assert_eq!(st["pin_tries_left"], 3);
    let names: Vec<&str> = st["slots"]
        .as_array()
        .expect("slots")
        .iter()
        .filter_map(|s| s["slot"].as_str())
        .collect();
    assert_eq!(names, ["9a", "9c", "9d", "9e"]);
    assert_eq!(st["slots"][1]["key_algorithm"], "rsa2048");
    // Exactly one login for the whole run, and one certificate per slot.
    assert_eq!(vault.issued_cert_count(), 4);
}

#[test]
fn occupied_slot_is_refused_without_force_and_replaced_with_it() {
    let vault = Vault::start();
    let card = Card::start();
    let env = env_for(&vault);
    let args = ["--json", "--slot", "9e", "--cn", "First"];
    run::ok(enroll_cmd(&card, &env, &args));
    let before = status(&card);

    let o = run::run(enroll_cmd(&card, &env, &["--slot", "9e", "--cn", "Second"]));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let line = error_line(&o);
    assert!(
        line.contains("slot 9e already holds a certificate for CN=First"),
        "{line}"
    );
    assert!(line.contains("--force"), "{line}");
    assert_eq!(status(&card), before, "the token changed");

    let o = run::ok(enroll_cmd(
        &card,
        &env,
        &["--json", "--force", "--slot", "9e", "--cn", "Second"],
    ));
    assert_eq!(json(&o)["slots"][0]["subject"], "CN=Second");
}

#[test]
fn bad_input_is_refused_before_the_token_or_vault() {
    let vault = Vault::start();
    let card = Card::start();
    let env = env_for(&vault);
    for (args, needle) in [
        (vec!["--slot", "9b", "--cn", "x"], "unknown slot '9b'"),
        (
            vec!["--slot", "9a:algorithm=rsa1024", "--cn", "x"],
            "unknown algorithm",
        ),
        (
            vec!["--slot", "9a", "--role", "admin", "--cn", "x"],
            "unknown role",
        ),
        (
            vec!["--slot", "9a", "--cn", "x", "--email", "not-an-address"],
            "not an e-mail address",
        ),
        (vec!["--slot", "9a", "--cn", "{nope}"], "{nope}"),
        (vec!["--slot", "9a"], "no common name"),
        (
            vec![
                "--slot",
                "9a",
                "--cn",
                "x",
                "--profile",
                "/nonexistent.toml",
            ],
            "cannot read profile",
        ),
    ] {
        let o = run::run(enroll_cmd(&card, &env, &args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(error_line(&o).contains(needle), "{args:?}: {}", text(&o));
    }
    assert_token_untouched(&card, 3);
    assert_eq!(vault.issued_cert_count(), 0);
}

#[test]
fn vault_failures_are_one_actionable_line_and_leave_the_token_alone() {
    let vault = Vault::start_with(VaultOptions {
        test_roles: true,
        ..Default::default()
    });
    let card = Card::start();
    let base = env_for(&vault);
    let with = |k: &str, v: &str| {
        let mut e: Vec<(String, String)> = base.iter().filter(|(n, _)| n != k).cloned().collect();
        e.push((k.into(), v.into()));
        e
    };
    let slot = ["--slot", "9a", "--cn", "Jane"];

    // Wrong secret_id.
    let o = run::run(enroll_cmd(
        &card,
        &with("PIVAULT_SECRET_ID", "00000000-0000-0000-0000-000000000000"),
        &slot,
    ));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        error_line(&o).contains("invalid role or secret ID"),
        "{}",
        text(&o)
    );

    // An AppRole whose policy lacks the sign path: the refused path is named.
    let (nosign_role, nosign_secret) = vault.nosign.clone().expect("test roles provisioned");
    let mut env = with("PIVAULT_ROLE_ID", &nosign_role);
    env.retain(|(k, _)| k != "PIVAULT_SECRET_ID");
    env.push(("PIVAULT_SECRET_ID".into(), nosign_secret));
    let o = run::run(enroll_cmd(&card, &env, &slot));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let line = error_line(&o);
    assert!(line.contains("pki/sign/yubikey-piv-auth"), "{line}");
    assert!(
        line.contains("403") || line.contains("permission denied"),
        "{line}"
    );

    // Wrong namespace.
    let o = run::run(enroll_cmd(
        &card,
        &with("VAULT_NAMESPACE", "no-such-team"),
        &slot,
    ));
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(error_line(&o).contains("namespace"), "{}", text(&o));

    // A role that refuses the CN: Vault's own message is shown.
    let out = vault.bao(&[
        "patch",
        "pki/roles/yubikey-piv-auth",
        "allow_any_name=false",
        "allowed_domains=example.org",
        "allow_subdomains=true",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let o = run::run(enroll_cmd(
        &card,
        &base,
        &["--slot", "9a", "--cn", "evil.com"],
    ));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let line =
        String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(line.contains("not allowed by this role"), "{}", text(&o));
    // The key was generated (the CN is checked by Vault after the CSR), nothing imported.
    let st = status(&card);
    assert!(
        st["slots"]
            .as_array()
            .expect("slots")
            .iter()
            .all(|s| s.get("subject").is_none()),
        "{st}"
    );
    assert_eq!(vault.issued_cert_count(), 0);
}

#[test]
fn sealed_or_stopped_vault_exits_4_and_changes_nothing() {
    let mut vault = Vault::start();
    let card = Card::start();
    let env = env_for(&vault);
    let slot = ["--slot", "9a", "--cn", "Jane"];
    vault.seal();
    let o = run::run(enroll_cmd(&card, &env, &slot));
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        error_line(&o).to_lowercase().contains("sealed"),
        "{}",
        text(&o)
    );
    vault.unseal();
    vault.stop();
    let mut env = env.clone();
    env.push(("PIVAULT_VAULT_DEADLINE".into(), "5".into()));
    let o = run::run(enroll_cmd(&card, &env, &slot));
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert_token_untouched(&card, 3);
}

#[test]
fn tls_needs_the_ca_bundle() {
    let vault = Vault::start_with(VaultOptions {
        tls: true,
        ..Default::default()
    });
    let card = Card::start();
    let env: Vec<(String, String)> = env_for(&vault)
        .into_iter()
        .filter(|(k, _)| k != "VAULT_CACERT")
        .collect();
    let o = run::run(enroll_cmd(&card, &env, &["--slot", "9e", "--cn", "Jane"]));
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    let line = error_line(&o);
    assert!(
        line.contains("TLS") || line.contains("certificate"),
        "{line}"
    );
    assert!(
        line.contains("VAULT_CACERT") || line.contains("--ca-cert"),
        "{line}"
    );
    assert_token_untouched(&card, 3);
    // With the bundle it works.
    run::ok(enroll_cmd(
        &card,
        &env_for(&vault),
        &["--slot", "9e", "--cn", "Jane"],
    ));
}

#[test]
fn namespace_is_sent_on_every_call() {
    let vault = Vault::start_with(VaultOptions {
        namespace: Some("team1".into()),
        ..Default::default()
    });
    let card = Card::start();
    let o = run::ok(enroll_cmd(
        &card,
        &env_for(&vault),
        &["--json", "--slot", "9a", "--cn", "Jane"],
    ));
    assert_eq!(json(&o)["ok"], true);
}

#[test]
fn wrong_pin_reports_tries_and_the_last_try_is_never_spent() {
    let vault = Vault::start();
    let card = Card::start();
    let mut env = vault.pivault_env();
    env.push(("PIVAULT_PIN".into(), "654321".into()));
    let slot = ["--slot", "9a", "--cn", "Jane"];
    let o = run::run(enroll_cmd(&card, &env, &slot));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(error_line(&o).contains("2 tries left"), "{}", text(&o));
    let o = run::run(enroll_cmd(&card, &env, &slot));
    assert!(error_line(&o).contains("1 tries left"), "{}", text(&o));
    // One try left: pivault refuses to try, and the counter stays at 1.
    let o = run::run(enroll_cmd(&card, &env, &slot));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        error_line(&o).contains("one PIN attempt is left"),
        "{}",
        text(&o)
    );
    assert_token_untouched(&card, 1);
}

#[test]
fn token_removed_mid_enrollment_is_reported() {
    use std::io::{BufRead, BufReader};
    let vault = Vault::start();
    let mut card = Card::start();
    let mut c = enroll_cmd(
        &card,
        &env_for(&vault),
        &[
            "-v",
            "--slot",
            "9a",
            "--slot",
            "9c:algorithm=rsa2048",
            "--cn",
            "Jane",
        ],
    );
    c.stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = c.spawn().expect("spawn pivault");
    let stderr = child.stderr.take().expect("stderr");
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("line");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("slot 9c: generating") {
            card.remove();
        }
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(1), "{seen}");
    assert!(seen.contains("removed"), "{seen}");
    assert!(seen.contains("reinsert"), "{seen}");
}

#[test]
fn no_secret_reaches_any_output_even_at_trace_level() {
    let vault = Vault::start();
    // Set up with Debian's yubico-piv-tool 2.2.0, which knows only 3DES management keys:
    // firmware 5.4.3 (metadata, 3DES factory key) whatever the rig's default profile is.
    let card = Card::start_with(CardOptions {
        version: Some("5.4.3".into()),
        ..CardOptions::default()
    });
    // Distinctive secrets: a non-default PIN and management key set up first.
    let pin = "73915824";
    let mgm = "8f3a9c1e5b7d2f4a6c8e0b1d3f5a7c9e1b3d5f7a9c2e4b6d";
    let mut c = run::tool("yubico-piv-tool");
    c.args([
        "-r",
        &card.reader,
        "-a",
        "change-pin",
        "-P",
        "123456",
        "-N",
        pin,
    ]);
    run::ok(c);
    let mut c = run::tool("yubico-piv-tool");
    c.args(["-r", &card.reader, "-a", "set-mgm-key", "-n", mgm]);
    run::ok(c);

    let secret_id = vault.new_secret_id();
    let mut env = vault.pivault_env();
    env.retain(|(k, _)| k != "PIVAULT_SECRET_ID");
    env.push(("PIVAULT_SECRET_ID".into(), secret_id.clone()));
    env.push(("PIVAULT_PIN".into(), pin.into()));
    env.push(("PIVAULT_MGMT_KEY".into(), mgm.into()));
    env.push(("RUST_LOG".into(), "trace".into()));
    let mut c = pivault(&env);
    c.args([
        "-vvv",
        "enroll",
        "--json",
        "--serial",
        &card.serial.to_string(),
        "--reader",
        &card.reader,
    ]);
    c.args(["--slot", "9a", "--cn", "Jane"]);
    let o = run::ok(c);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        all.contains("TRACE") || all.contains("DEBUG"),
        "not verbose:\n{all}"
    );
    let pin_hex: String = pin.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(
        !all.to_lowercase().replace(' ', "").contains(&pin_hex),
        "PIN leaked as hex"
    );
    for (what, s) in [
        ("PIN", pin),
        ("management key", mgm),
        ("secret_id", secret_id.as_str()),
    ] {
        assert!(!all.contains(s), "{what} leaked:\n{all}");
        assert!(
            !all.to_lowercase().contains(&s.to_lowercase()),
            "{what} leaked"
        );
    }
    // No Vault token (OpenBao: s.xxx / hvs.xxx) either.
    let token_like = all
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
        .any(|w| (w.starts_with("s.") || w.starts_with("hvs.")) && w.len() > 20);
    assert!(!token_like, "a token-like string leaked:\n{all}");
}

#[test]
fn at_a_terminal_it_asks_and_shows_the_plan_without_one_it_refuses() {
    let vault = Vault::start();
    let card = Card::start();
    // No terminal, no slots: a usage error, nothing touched.
    let o = run::run({
        let mut c = pivault(&env_for(&vault));
        c.args(["enroll", "--reader", &card.reader, "--default-mgmt-key"]);
        c
    });
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(error_line(&o).contains("no slot given"), "{}", text(&o));

    // On a terminal (script(1) gives it a pty): the token first (its state, then "Enroll
    // token N?"), then slots, role, algorithm, CN, e-mail, UPN, then the plan and a
    // confirmation (tests/helpdesk_pty.rs walks the same path answer by answer).
    let line = format!(
        "{} enroll --reader '{}' --default-mgmt-key",
        env!("CARGO_BIN_EXE_pivault"),
        card.reader
    );
    let mut c = run::tool("script");
    c.args(["-qec", &line, "/dev/null"]);
    for (k, v) in env_for(&vault) {
        c.env(k, v);
    }
    c.env("PIVAULT_CONFIG", "/dev/null");
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("script(1) from util-linux");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"y\n9e\n\n\nHelpdesk Jane\n\n\ny\n")
            .expect("answers");
    }
    let o = child.wait_with_output().expect("wait");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Slots to enroll"), "{out}");
    let token_first = out.find(&format!("Enroll token {}?", card.serial));
    assert!(
        token_first.is_some_and(|i| out.find("Slots to enroll").is_some_and(|j| i < j)),
        "the token was not shown and asked for first:\n{out}"
    );
    assert!(
        out.contains("slot 9e (card-authentication): new p256 key")
            && out.contains("CN=Helpdesk Jane"),
        "no plan shown:\n{out}"
    );
    assert!(out.contains("Proceed?"), "{out}");
    assert!(out.contains("enrolled"), "{out}");
    let pem = run::piv_tool_read_cert(&card.reader, "9e");
    let dir = tempfile::tempdir().expect("tmp");
    assert!(run::openssl_text(&pem, dir.path()).contains("Helpdesk Jane"));
}

/// Firmware 5.7 (issue 9): the AES-192 factory management key, metadata read before any
/// try is spent, and policies and key origin in `status` — as the card reports them in
/// GET METADATA, cross-checked with Debian's ykman, which reads the same metadata itself.
#[test]
fn firmware_5_7_metadata_drives_enroll_and_status() {
    let vault = Vault::start();
    let card = Card::start_with(CardOptions {
        version: Some("5.7.4".into()),
        ..CardOptions::default()
    });
    let before = status(&card);
    assert_eq!(before["mgmt_key_algorithm"], "aes192", "{before}");
    assert_eq!(before["mgmt_key_is_default"], true, "{before}");
    assert_eq!(before["pin_tries_left"], 3, "{before}");

    let o = run::run(enroll_cmd(
        &card,
        &env_for(&vault),
        &[
            "--json",
            "--slot",
            "9a:pin-policy=always,touch-policy=never",
            "--cn",
            "Metadata {serial}",
        ],
    ));
    assert!(o.status.success(), "enroll on 5.7.4: {}", text(&o));

    let st = status(&card);
    let slot = st["slots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["slot"] == "9a"))
        .unwrap_or_else(|| panic!("no slot 9a in {st}"))
        .clone();
    assert_eq!(slot["pin_policy"], "always", "{st}");
    assert_eq!(slot["touch_policy"], "never", "{st}");
    assert_eq!(slot["key_generated_on_token"], true, "{st}");
    assert_eq!(st["pin_tries_left"], 3, "no PIN try spent: {st}");

    // Another client reads the card's own metadata for the slot.
    let mut c = run::tool("ykman");
    c.args(["--reader", &card.reader, "piv", "info"]);
    let o = run::run(c);
    let info = text(&o);
    assert!(o.status.success(), "ykman piv info: {info}");
    assert!(
        info.contains("AES192"),
        "ykman sees no AES-192 management key: {info}"
    );
}

/// Another PC/SC client that SELECTs the PIV application between two of pivault's commands
/// (Debian's ykman 4 does it on every reader it lists; seen in CI) ends the card's PIN
/// verification and management-key authentication. Modelled by the virtual card right
/// after the key is generated: pivault verifies the PIN again before the on-card CSR
/// signature, authenticates again for the certificate write, and the slot ends with its
/// certificate, issued once.
#[test]
fn a_pin_session_ended_by_another_client_mid_slot_is_taken_up_again() {
    let vault = Vault::start();
    let card = Card::start_with(CardOptions {
        args: vec!["--fault".into(), "reselect-after-ins@47".into()],
        ..Default::default()
    });
    let o = run::run(enroll_cmd(
        &card,
        &env_for(&vault),
        &["--json", "--slot", "9a", "--cn", "Jane Session"],
    ));
    assert!(
        card.wait_line("reselected apdu=", std::time::Duration::from_secs(5))
            .is_some(),
        "the card never ended the session"
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let doc = json(&o);
    assert_eq!(doc["slots"][0]["result"], "enrolled", "{doc}");
    // What the card holds, read by another client: the certificate pivault reported.
    let pem = run::piv_tool_read_cert(&card.reader, "9a");
    assert!(pem.contains("BEGIN CERTIFICATE"), "9a: {pem}");
    let serial = doc["slots"][0]["certificate_serial"]
        .as_str()
        .expect("serial");
    // Counted from Vault (an error, never an empty list, when Vault cannot be asked).
    let new: Vec<_> = vault
        .try_issued_serials()
        .expect("Vault's certificate list")
        .into_iter()
        .collect();
    assert_eq!(new.len(), 1, "certificates issued by this run: {new:?}");
    assert_eq!(
        new[0].replace('-', ":").to_lowercase(),
        serial.to_lowercase(),
        "{new:?}"
    );
}
