//! `pivault renew` (the PIN, and the management key from the token's PIN-protected store
//! or given by the caller; never from the escrow record) and `pivault unblock` (the
//! escrowed PUK), on the rig.

mod common;

use common::card::Card;
use common::run::{self, pivault, text};
use common::vault::{Vault, VaultOptions};
use serde_json::Value;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PIN: &str = "123456";
const FACTORY_MGM: &str = "010203040506070801020304050607080102030405060708";

/// pivault with the PIN and, for `renew`, the management key given (these tokens keep
/// no PIN-protected one).
fn cmd(vault: &Vault, card: &Card, args: &[&str], state: &std::path::Path) -> Command {
    let mut env = run::anchored_env(vault);
    env.push(("PIVAULT_PIN".into(), PIN.into()));
    if args.contains(&"renew") {
        env.push(("PIVAULT_MGMT_KEY".into(), FACTORY_MGM.into()));
    }
    let mut c = pivault(&env);
    c.args(args);
    c.args([
        "--serial",
        &card.serial.to_string(),
        "--reader",
        &card.reader,
    ]);
    if args.contains(&"renew") {
        c.arg("--state-dir").arg(state);
    }
    c
}

fn enroll(vault: &Vault, card: &Card, ttl: &str) {
    enroll_as(vault, card, ttl, "Renew Me");
}

fn enroll_as(vault: &Vault, card: &Card, ttl: &str, cn: &str) {
    let mut env = run::anchored_env(vault);
    env.push(("PIVAULT_PIN".into(), PIN.into()));
    let c = run::enroll_cmd(
        card,
        &env,
        &[
            "--slot",
            "9a",
            "--cn",
            cn,
            "--upn",
            "renew.me@corp.example.org",
            "--ttl",
            ttl,
        ],
    );
    run::ok(c);
}

fn kv_put(vault: &Vault, serial: u32, rec: &Value, dir: &std::path::Path) {
    let f = dir.join("put.json");
    std::fs::write(&f, rec.to_string()).expect("write");
    let o = vault.bao(&[
        "kv",
        "put",
        &format!("yubikeys/{serial}"),
        &format!("@{}", f.display()),
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

fn kv_get(vault: &Vault, serial: u32) -> Value {
    let o = vault.bao(&["kv", "get", "-format=json", &format!("yubikeys/{serial}")]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    v["data"]["data"].clone()
}

fn block_pin(card: &Card) {
    for _ in 0..3 {
        let mut c = run::tool("yubico-piv-tool");
        c.args(["-r", &card.reader, "-a", "verify-pin", "-P", "000000"]);
        run::run(c);
    }
    assert_eq!(
        run::status_json(card)["pin_tries_left"],
        0,
        "PIN not blocked"
    );
}

/// The token accepts `puk` (a change to itself succeeds only with the right PUK).
fn puk_works(card: &Card, puk: &str) -> bool {
    let mut c = run::tool("yubico-piv-tool");
    c.args(["-r", &card.reader, "-a", "change-puk", "-P", puk, "-N", puk]);
    run::run(c).status.success()
}

fn unblock_cmd(vault: &Vault, card: &Card, new_pin: &str) -> Command {
    let mut env = run::anchored_env(vault);
    env.push(("PIVAULT_NEW_PIN".into(), new_pin.into()));
    let mut c = pivault(&env);
    c.args([
        "--json",
        "unblock",
        "--serial",
        &card.serial.to_string(),
        "--reader",
        &card.reader,
    ]);
    c
}

/// Defect 1: an unblock killed between the PUK change on the token and the promotion of
/// the new PUK in the record leaves `pending`; the rerun must use the PUK the token holds.
/// The state is built by hand (PUK changed on the card, record with `pending`), exactly
/// what the kill leaves, so the test does not depend on where a crash hook sits.
#[test]
fn unblock_rerun_after_a_kill_between_puk_change_and_promotion_finishes() {
    let vault = Vault::start();
    let card = Card::start();
    let dir = tempfile::tempdir().expect("tmp");
    let new_puk = "73915824";
    let mut c = run::tool("yubico-piv-tool");
    c.args([
        "-r",
        &card.reader,
        "-a",
        "change-puk",
        "-P",
        "12345678",
        "-N",
        new_puk,
    ]);
    run::ok(c);
    let mut rec = serde_json::json!({
        "schema": 1,
        "serial": card.serial,
        "live": {"puk": "12345678", "mgmt_key": FACTORY_MGM,
                 "mgmt_key_algorithm": "3des", "mgmt_key_protected": false},
        "pending": {"puk": new_puk, "mgmt_key": FACTORY_MGM,
                    "mgmt_key_algorithm": "3des", "mgmt_key_protected": false},
        "updated_at": "2026-01-01T00:00:00Z", "updated_by": "pivault unblock (killed)"
    });
    kv_put(&vault, card.serial, &rec, dir.path());
    block_pin(&card);

    let o = run::run(unblock_cmd(&vault, &card, "48291573"));
    assert!(o.status.success(), "{}", text(&o));
    let mut c = run::tool("yubico-piv-tool");
    c.args(["-r", &card.reader, "-a", "verify-pin", "-P", "48291573"]);
    run::ok(c);
    rec = kv_get(&vault, card.serial);
    assert!(rec.get("pending").is_none(), "{rec}");
    let puk = rec["live"]["puk"].as_str().expect("puk").to_string();
    assert_ne!(puk, new_puk, "PUK not rotated after the unblock");
    assert!(
        puk_works(&card, &puk),
        "the escrowed PUK is not the token's"
    );
}

/// Defect 9: the subject is read from the RDNs by OID, so a comma in the common name
/// survives a renewal.
#[test]
fn renewal_keeps_a_comma_in_the_common_name() {
    let vault = Vault::start();
    let card = Card::start();
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state");
    enroll_as(&vault, &card, "1h", "Doe, Jane");
    let o = run::ok(cmd(
        &vault,
        &card,
        &["--json", "renew", "--threshold", "2h"],
        &state,
    ));
    assert_eq!(json(&o)["slots"][0]["result"], "renewed", "{}", text(&o));
    let pem = run::piv_tool_read_cert(&card.reader, "9a");
    let mut c = run::tool("openssl");
    let f = dir.path().join("renewed.pem");
    std::fs::write(&f, &pem).expect("write");
    c.args([
        "x509",
        "-noout",
        "-subject",
        "-nameopt",
        "multiline,utf8",
        "-in",
    ])
    .arg(&f);
    let subject = String::from_utf8_lossy(&run::ok(c).stdout).into_owned();
    assert!(
        subject.contains("commonName") && subject.contains("= Doe, Jane"),
        "{subject}"
    );
}

/// Defect 7: renewal never reads the escrow record. A token that keeps no PIN-protected
/// management key, with none given, is refused (exit 2, nothing changed) even though the
/// record in Vault holds the key and the AppRole could read it.
#[test]
fn renewal_never_falls_back_to_the_escrow_record() {
    let vault = Vault::start();
    let card = Card::start();
    let dir = tempfile::tempdir().expect("tmp");
    enroll(&vault, &card, "1h");
    run::escrow_factory(&vault, &card, dir.path());
    let before = run::piv_tool_read_cert(&card.reader, "9a");
    let mut env = run::anchored_env(&vault);
    env.push(("PIVAULT_PIN".into(), PIN.into()));
    let mut c = pivault(&env);
    c.args([
        "renew",
        "--threshold",
        "2h",
        "--serial",
        &card.serial.to_string(),
    ]);
    c.args(["--reader", &card.reader]);
    c.arg("--state-dir").arg(dir.path().join("state"));
    let o = run::run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("PIN-protected management key"),
        "{}",
        text(&o)
    );
    assert_eq!(run::piv_tool_read_cert(&card.reader, "9a"), before);
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn renew_only_when_due_rekeying_by_default() {
    let vault = Vault::start_with(VaultOptions {
        max_ttl: Some("2m".into()),
        ..Default::default()
    });
    let card = Card::start();
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state");
    enroll(&vault, &card, "60s");
    run::escrow_factory(&vault, &card, dir.path());
    let first = run::piv_tool_read_cert(&card.reader, "9a");

    // Vault backdates by 30 s: lifetime 90 s, a third elapsed at issue; due at half.
    let o = run::run(cmd(
        &vault,
        &card,
        &["renew", "--check", "--threshold", "0.5"],
        &state,
    ));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("due at"),
        "{}",
        text(&o)
    );
    let o = run::ok(cmd(&vault, &card, &["renew", "--threshold", "0.5"], &state));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("nothing is due"),
        "{}",
        text(&o)
    );
    assert_eq!(
        run::piv_tool_read_cert(&card.reader, "9a"),
        first,
        "renewed too early"
    );

    // As time passes it becomes due.
    let t0 = Instant::now();
    loop {
        let o = run::run(cmd(
            &vault,
            &card,
            &["--json", "renew", "--check", "--threshold", "0.5"],
            &state,
        ));
        if o.status.code() == Some(10) {
            assert_eq!(json(&o)["slots"][0]["due"], true);
            break;
        }
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(t0.elapsed() < Duration::from_secs(60), "never became due");
        std::thread::sleep(Duration::from_secs(2));
    }
    let o = run::ok(cmd(
        &vault,
        &card,
        &["--json", "renew", "--threshold", "0.5"],
        &state,
    ));
    let r = json(&o);
    assert_eq!(r["command"], "renew");
    assert_eq!(r["slots"][0]["result"], "renewed", "{r}");
    let second = run::piv_tool_read_cert(&card.reader, "9a");
    assert_ne!(second, first);
    assert_ne!(
        run::openssl_pubkey(&second, dir.path()),
        run::openssl_pubkey(&first, dir.path()),
        "not re-keyed"
    );
    let t = run::openssl_text(&second, dir.path());
    assert!(
        t.contains("Renew Me") && t.contains("renew.me@corp.example.org"),
        "subject not kept:\n{t}"
    );
    let v = run::openssl_verify(&second, &vault.root_pem, &vault.chain_pem, dir.path());
    assert!(v.status.success(), "{}", text(&v));
    assert!(run::slot_key_matches_cert(
        &card.reader,
        "9a",
        PIN,
        dir.path()
    ));
    let o = run::run(cmd(
        &vault,
        &card,
        &["renew", "--check", "--threshold", "0.5"],
        &state,
    ));
    assert_eq!(
        o.status.code(),
        Some(0),
        "the new certificate is not due: {}",
        text(&o)
    );

    // --reuse-key certifies the same key again.
    let o = run::ok(cmd(
        &vault,
        &card,
        &["renew", "--reuse-key", "--threshold", "0.01"],
        &state,
    ));
    let third = run::piv_tool_read_cert(&card.reader, "9a");
    assert_ne!(third, second, "{}", text(&o));
    assert_eq!(
        run::openssl_pubkey(&third, dir.path()),
        run::openssl_pubkey(&second, dir.path())
    );
}

#[test]
fn vault_down_changes_nothing_and_a_kill_after_keygen_is_finished() {
    let mut vault = Vault::start();
    let card = Card::start();
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state");
    enroll(&vault, &card, "1h");
    run::escrow_factory(&vault, &card, dir.path());
    let before = run::piv_tool_read_cert(&card.reader, "9a");

    // Killed right after the new key is generated: the next run finishes the job even
    // though, by the threshold, nothing is due.
    // "Due when 2 h or less are left" makes a 1 h certificate due at once.
    let mut c = cmd(&vault, &card, &["renew", "--threshold", "2h"], &state);
    c.env("PIVAULT_TEST_ABORT_AFTER", "generate");
    let o = run::run(c);
    assert!(!o.status.success(), "hook did not fire: {}", text(&o));
    assert!(
        !run::slot_key_matches_cert(&card.reader, "9a", PIN, dir.path()),
        "key not replaced?"
    );
    let o = run::ok(cmd(
        &vault,
        &card,
        &["--json", "renew", "--threshold", "0.99"],
        &state,
    ));
    assert_eq!(json(&o)["slots"][0]["result"], "renewed", "{}", text(&o));
    assert!(run::slot_key_matches_cert(
        &card.reader,
        "9a",
        PIN,
        dir.path()
    ));
    let after_finish = run::piv_tool_read_cert(&card.reader, "9a");
    assert_ne!(after_finish, before);

    // Vault down before key generation: exit 4, slot untouched.
    vault.stop();
    let mut c = cmd(&vault, &card, &["renew", "--threshold", "2h"], &state);
    c.env("PIVAULT_VAULT_DEADLINE", "5");
    let o = run::run(c);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert_eq!(run::piv_tool_read_cert(&card.reader, "9a"), after_finish);
    assert!(run::slot_key_matches_cert(
        &card.reader,
        "9a",
        PIN,
        dir.path()
    ));
}

#[test]
fn blocked_pin_is_unblocked_with_the_escrowed_puk_which_is_then_rotated() {
    let vault = Vault::start();
    let card = Card::start();
    let dir = tempfile::tempdir().expect("tmp");
    run::escrow_factory(&vault, &card, dir.path());
    for _ in 0..3 {
        let mut c = run::tool("yubico-piv-tool");
        c.args(["-r", &card.reader, "-a", "verify-pin", "-P", "000000"]);
        run::run(c);
    }
    assert_eq!(
        run::status_json(&card)["pin_tries_left"],
        0,
        "PIN not blocked"
    );

    // A trivial PIN is refused before anything happens.
    let mut env = run::anchored_env(&vault);
    env.push(("PIVAULT_NEW_PIN".into(), "111111".into()));
    let mut c = pivault(&env);
    c.args([
        "unblock",
        "--serial",
        &card.serial.to_string(),
        "--reader",
        &card.reader,
    ]);
    let o = run::run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    let mut env = run::anchored_env(&vault);
    env.push(("PIVAULT_NEW_PIN".into(), "48291573".into()));
    let mut c = pivault(&env);
    c.args([
        "--json",
        "unblock",
        "--serial",
        &card.serial.to_string(),
        "--reader",
        &card.reader,
    ]);
    let o = run::ok(c);
    assert_eq!(json(&o)["ok"], true);
    let mut c = run::tool("yubico-piv-tool");
    c.args(["-r", &card.reader, "-a", "verify-pin", "-P", "48291573"]);
    run::ok(c);

    let o = vault.bao(&[
        "kv",
        "get",
        "-format=json",
        &format!("yubikeys/{}", card.serial),
    ]);
    let rec: Value = serde_json::from_slice(&o.stdout).expect("json");
    let puk = rec["data"]["data"]["live"]["puk"]
        .as_str()
        .expect("puk")
        .to_string();
    assert_ne!(puk, "12345678", "PUK not rotated");
    assert!(rec["data"]["data"].get("pending").is_none(), "{rec}");
    // The new PUK works (a change to itself succeeds only with the right PUK).
    let mut c = run::tool("yubico-piv-tool");
    c.args([
        "-r",
        &card.reader,
        "-a",
        "change-puk",
        "-P",
        &puk,
        "-N",
        &puk,
    ]);
    run::ok(c);
}

/// Defect 2 (PUK side): the last PUK try is never spent, on any path. With one PUK try
/// left (firmware with metadata tells), `unblock` refuses (exit 3) and the counter stays.
#[test]
fn unblock_never_spends_the_last_puk_try() {
    use common::card::CardOptions;
    let vault = Vault::start();
    let card = Card::start_with(CardOptions {
        version: Some("5.7.4".into()),
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("tmp");
    run::escrow_factory(&vault, &card, dir.path());
    for _ in 0..2 {
        let mut c = run::tool("yubico-piv-tool");
        c.args([
            "-r",
            &card.reader,
            "-a",
            "change-puk",
            "-P",
            "87654321",
            "-N",
            "87654321",
        ]);
        run::run(c);
    }
    assert_eq!(
        run::status_json(&card)["puk_tries_left"],
        1,
        "PUK tries not at 1"
    );
    block_pin(&card);
    let o = run::run(unblock_cmd(&vault, &card, "48291573"));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("one PUK attempt is left"),
        "{}",
        text(&o)
    );
    assert_eq!(
        run::status_json(&card)["puk_tries_left"],
        1,
        "a PUK try was spent"
    );
    assert_eq!(run::status_json(&card)["pin_tries_left"], 0);
}
