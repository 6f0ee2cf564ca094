//! Issue 10 defect 6, "order of damage", on the rig (virtual card, real pcscd, OpenBao).
//!
//! - `usage_mismatch_is_a_warning_unless_strict`: the administrator's S/MIME role issues
//!   digitalSignature + contentCommitment (no keyAgreement) for slot 9d. By default the
//!   certificate is imported and the mismatch reported as a warning; with
//!   `--strict-usage` it is refused and nothing is imported (the card is read with
//!   yubico-piv-tool).
//! - `rekeying_on_5_7_keeps_the_old_key_until_the_new_one_is_certified`: `enroll --force`
//!   on an enrolled 5.7.4 card stages the new key in a free retired slot. A refusal by the
//!   attestation policy (form factor) and a refusal by Vault (a UPN the S/MIME role does
//!   not allow) each leave 9a's old certificate, and the old key behind it (a signature
//!   through OpenSC verified with that certificate), and no key in any retired slot
//!   (GET METADATA through the `yubikey` crate). A re-key that succeeds moves the new key
//!   in: 9a's new certificate matches its key, the retired slots are empty again.

//! - `a_preflight_refusal_that_comes_after_the_first_staged_key_changes_nothing` and
//!   `a_run_stopped_by_a_slots_answer_deletes_the_next_slots_staged_key`: the overlap of
//!   Vault and card work (issue 13) may only cost what can be undone. The card's own
//!   counters show the keys were made while Vault had not answered (GENERATE count); the
//!   card (yubico-piv-tool, OpenSC, GET METADATA) shows them gone again and the old keys
//!   and certificates in place; the proxy's log and Vault's cert list show nothing issued.

mod common;

#[path = "common/faultproxy.rs"]
mod faultproxy;

use common::card::{Card, CardOptions};
use common::run::{self, ok, text, tool};
use common::vault::{Vault, VaultOptions};
use faultproxy::{Fault, FaultProxy, Match, ProxyOptions};
use serde_json::Value;
use std::time::{Duration, Instant};

const PIN: &str = "123456";

fn card(version: &str) -> Card {
    Card::start_with(CardOptions {
        version: Some(version.into()),
        ..CardOptions::default()
    })
}

fn env(vault: &Vault) -> Vec<(String, String)> {
    let mut env = vault.pivault_env();
    env.push(("PIVAULT_PIN".into(), PIN.into()));
    env
}

/// The S/MIME role as the administrator of issue 10 set it up: signing and
/// non-repudiation, no key agreement.
fn smime_role_signing_only(vault: &Vault) {
    let path = format!("{}/roles/yubikey-piv-email-signing", vault.pki_mount);
    let o = vault.bao(&[
        "patch",
        &path,
        "key_usage=DigitalSignature,ContentCommitment",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

fn has_cert(card: &Card, slot: &str) -> bool {
    let mut c = tool("yubico-piv-tool");
    c.args(["-r", &card.reader, "-a", "read-certificate", "-s", slot]);
    run::run(c).status.success()
}

#[test]
fn usage_mismatch_is_a_warning_unless_strict() {
    let vault = Vault::start();
    smime_role_signing_only(&vault);

    // Default: imported, with the warning in the report.
    let card1 = card("5.7.4");
    let o = ok(run::enroll_cmd(
        &card1,
        &env(&vault),
        &[
            "--slot",
            "9d",
            "--email",
            "jane@example.org",
            "--cn",
            "Jane",
            "--yes",
            "--json",
        ],
    ));
    let r: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let warnings = r["slots"][0]["vault_warnings"].to_string();
    assert!(
        warnings.contains("key usage does not allow keyAgreement"),
        "{r}"
    );
    assert!(has_cert(&card1, "9d"), "the certificate was not imported");

    // Strict: refused, nothing imported.
    let card2 = card("5.7.4");
    let before = vault.issued_cert_count();
    let o = run::run(run::enroll_cmd(
        &card2,
        &env(&vault),
        &[
            "--slot",
            "9d",
            "--email",
            "jane@example.org",
            "--cn",
            "Jane",
            "--yes",
            "--strict-usage",
        ],
    ));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("refused the certificate Vault issued: the certificate's key usage does not allow keyAgreement"),
        "{}",
        text(&o)
    );
    assert_eq!(vault.issued_cert_count(), before + 1, "Vault issued once");
    assert!(
        !has_cert(&card2, "9d"),
        "a refused certificate was imported"
    );
}

/// Retired slots holding a key, by GET METADATA through the `yubikey` crate.
fn retired_keys(card: &Card) -> Vec<u8> {
    let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial(card.serial)).expect("open");
    (0x82u8..=0x95)
        .filter(|&b| {
            let slot = yubikey::piv::SlotId::try_from(b).expect("retired slot id");
            yubikey::piv::metadata(&mut yk, slot).is_ok()
        })
        .collect()
}

#[test]
fn rekeying_on_5_7_keeps_the_old_key_until_the_new_one_is_certified() {
    let vault = Vault::start();
    let card = card("5.7.4");
    let dir = tempfile::tempdir().expect("tmp");
    let chain = card.export_attestation_chain(dir.path());
    let enroll = |extra: &[&str]| {
        let mut c = run::enroll_cmd(
            &card,
            &env(&vault),
            &["--slot", "9a", "--cn", "Jane", "--yes"],
        );
        c.args(extra);
        run::run(c)
    };
    let o = enroll(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let old = run::piv_tool_read_cert(&card.reader, "9a");
    assert!(run::slot_key_matches_cert(
        &card.reader,
        "9a",
        PIN,
        dir.path()
    ));
    let issued = vault.issued_cert_count();

    // Refused by the attestation policy after the new key was made.
    let roots = chain.to_str().expect("path");
    let o = enroll(&[
        "--force",
        "--attestation-roots",
        roots,
        "--form-factor",
        "usb-c-nano",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("form factor"), "{}", text(&o));
    assert_eq!(vault.issued_cert_count(), issued, "sent to Vault");
    assert_eq!(run::piv_tool_read_cert(&card.reader, "9a"), old);
    assert!(
        run::slot_key_matches_cert(&card.reader, "9a", PIN, dir.path()),
        "the old key is gone"
    );
    assert_eq!(
        retired_keys(&card),
        Vec::<u8>::new(),
        "a staged key was left"
    );

    // Refused by Vault: the administrator allows only names in the company domain.
    let role = format!("{}/roles/yubikey-piv-auth", vault.pki_mount);
    let patch = |args: &[&str]| {
        let mut a = vec!["patch", role.as_str()];
        a.extend_from_slice(args);
        let o = vault.bao(&a);
        assert!(o.status.success(), "{}", text(&o));
    };
    patch(&[
        "allow_any_name=false",
        "allowed_domains=example.org",
        "allow_subdomains=true",
    ]);
    let o = enroll(&["--force"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    patch(&["allow_any_name=true"]);
    assert_eq!(vault.issued_cert_count(), issued, "Vault issued");
    assert_eq!(run::piv_tool_read_cert(&card.reader, "9a"), old);
    assert!(
        run::slot_key_matches_cert(&card.reader, "9a", PIN, dir.path()),
        "the old key is gone"
    );
    assert_eq!(
        retired_keys(&card),
        Vec::<u8>::new(),
        "a staged key was left"
    );

    // Accepted: the new key is moved in with its certificate.
    let o = enroll(&[
        "--force",
        "--attestation-roots",
        roots,
        "--require-attestation",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let new = run::piv_tool_read_cert(&card.reader, "9a");
    assert_ne!(new, old);
    assert!(run::slot_key_matches_cert(
        &card.reader,
        "9a",
        PIN,
        dir.path()
    ));
    assert_eq!(
        retired_keys(&card),
        Vec::<u8>::new(),
        "a staged key was left"
    );
}

/// GENERATE ASYMMETRIC KEY PAIR (INS 47) commands the card served so far.
fn generates(card: &Card) -> u64 {
    card.apdu_counts().1.get(&0x47).copied().unwrap_or(0)
}

/// A 5.7.4 card enrolled in 9a and 9c, with what each slot holds now.
fn enrolled_9a_9c(vault: &Vault) -> (Card, String, String) {
    let card = card("5.7.4");
    ok(run::enroll_cmd(
        &card,
        &env(vault),
        &["--slot", "9a", "--slot", "9c", "--cn", "Jane", "--yes"],
    ));
    let a = run::piv_tool_read_cert(&card.reader, "9a");
    let c = run::piv_tool_read_cert(&card.reader, "9c");
    (card, a, c)
}

/// 9a and 9c still hold the certificates `a` and `c` and the keys behind them, and no
/// retired slot holds a key.
fn assert_as_before(card: &Card, a: &str, c: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    assert_eq!(
        run::piv_tool_read_cert(&card.reader, "9a"),
        a,
        "9a's certificate"
    );
    assert_eq!(
        run::piv_tool_read_cert(&card.reader, "9c"),
        c,
        "9c's certificate"
    );
    for slot in ["9a", "9c"] {
        assert!(
            run::slot_key_matches_cert(&card.reader, slot, PIN, dir.path()),
            "slot {slot}: the old key is gone"
        );
    }
    assert_eq!(
        retired_keys(card),
        Vec::<u8>::new(),
        "a staged key was left"
    );
}

/// `enroll --force` of 9a and 9c on `card` through `proxy`, with `approle` credentials.
fn rekey_via(
    card: &Card,
    vault: &Vault,
    proxy: &FaultProxy,
    approle: Option<&(String, String)>,
) -> std::process::Command {
    let args = ["--slot", "9a", "--slot", "9c", "--force"];
    enroll_via(card, vault, proxy, approle, &args)
}

/// `enroll ARGS` for Jane on `card` through `proxy`, with `approle` credentials.
fn enroll_via(
    card: &Card,
    vault: &Vault,
    proxy: &FaultProxy,
    approle: Option<&(String, String)>,
    args: &[&str],
) -> std::process::Command {
    let mut env: Vec<(String, String)> = env(vault)
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "VAULT_ADDR" => (k, proxy.addr.clone()),
            "PIVAULT_ROLE_ID" => (k, approle.map_or(v, |r| r.0.clone())),
            "PIVAULT_SECRET_ID" => (k, approle.map_or(v, |r| r.1.clone())),
            _ => (k, v),
        })
        .collect();
    env.push(("PIVAULT_VAULT_DEADLINE".into(), "20".into()));
    let mut c = run::enroll_cmd(card, &env, &["--cn", "Jane", "--yes"]);
    c.args(args);
    c
}

/// The login and the pre-flight go on another thread while the card makes 9a's new key
/// in a retired slot (firmware 5.7: staged, so it can be undone). Here the pre-flight is
/// held by the proxy until the card has generated that key, and then Vault refuses it
/// (an AppRole whose policy lacks the sign path): the staged key is deleted, 9a and 9c
/// keep their keys and certificates, nothing is sent to be signed, and the error is the
/// same one line as when the pre-flight answers first. Fails if the key made meanwhile
/// is left behind (a retired slot holds a key) or if the pre-flight is awaited before
/// generating (the GENERATE count stays put and the proxy is never released in time).
#[test]
fn a_preflight_refusal_that_comes_after_the_first_staged_key_changes_nothing() {
    let vault = Vault::start_with(VaultOptions {
        test_roles: true,
        ..Default::default()
    });
    let (card, a, c) = enrolled_9a_9c(&vault);
    let issued = vault.issued_cert_count();
    let proxy = FaultProxy::start(ProxyOptions::to(&vault).rule(
        Match::path("/v1/pki/sign/yubikey-piv-auth", 1),
        Fault::Pause {
            after_forward: false,
        },
    ));
    let (made, o) = refused_after_the_first_key(
        &vault,
        &card,
        &proxy,
        &["--slot", "9a", "--slot", "9c", "--force"],
    );
    assert_eq!(
        made, 1,
        "9a's staged key is made while the pre-flight is out"
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = text(&o);
    assert!(
        err.contains("pki/sign/yubikey-piv-auth") && err.contains("403"),
        "{err}"
    );
    assert_as_before(&card, &a, &c);
    assert_eq!(vault.issued_cert_count(), issued, "Vault issued");
}

/// While Vault signs 9a's request, the card makes 9c's new key (staged). Here 9a's sign
/// is refused for good (403 from the proxy, as if the AppRole's policy lost the sign
/// path mid-run): the run stops, 9a's staged key and 9c's are deleted, 9c's request is
/// never sent, both slots keep their keys and certificates. Fails if the next slot's key
/// is not made before the answer (GENERATE count 1: no overlap) or is left behind.
#[test]
fn a_run_stopped_by_a_slots_answer_deletes_the_next_slots_staged_key() {
    let vault = Vault::start();
    let (card, a, c) = enrolled_9a_9c(&vault);
    let issued = vault.issued_cert_count();
    // Request 1 to sign/yubikey-piv-auth is the pre-flight, 2 is 9a's CSR.
    let proxy = FaultProxy::start(ProxyOptions::to(&vault).rule(
        Match::path("/v1/pki/sign/yubikey-piv-auth", 2),
        Fault::Status(403),
    ));
    let g0 = generates(&card);
    let o = run::run(rekey_via(&card, &vault, &proxy, None));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(
        generates(&card) - g0,
        2,
        "9c's key is made while 9a's request is out"
    );
    let signs_9c = proxy
        .log()
        .iter()
        .filter(|l| l.path.starts_with("/v1/pki/sign/yubikey-piv-email-signing"))
        .count();
    assert_eq!(signs_9c, 1, "only the pre-flight: {}", proxy.log_text());
    assert!(text(&o).contains("not sent to Vault"), "{}", text(&o));
    assert_as_before(&card, &a, &c);
    assert_eq!(vault.issued_cert_count(), issued, "Vault issued");
}

/// Run `enroll ARGS` with the AppRole whose policy lacks the sign path, through a proxy
/// that holds the first pre-flight until the card has generated a key; the keys made,
/// and pivault's output.
fn refused_after_the_first_key(
    vault: &Vault,
    card: &Card,
    proxy: &FaultProxy,
    args: &[&str],
) -> (u64, std::process::Output) {
    let nosign = vault.nosign.clone().expect("test roles provisioned");
    let g0 = generates(card);
    let mut cmd = enroll_via(card, vault, proxy, Some(&nosign), args);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("pivault");
    assert!(
        proxy.wait_paused(Duration::from_secs(60)).is_some(),
        "the pre-flight never came: {}",
        proxy.log_text()
    );
    let t0 = Instant::now();
    while generates(card) == g0 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.release();
    let o = child.wait_with_output().expect("pivault");
    (generates(card) - g0, o)
}

/// The same on a fresh 5.7 token: the first key is made in its empty slot while the
/// pre-flight is out (firmware 5.7 can delete it again). Vault refuses: the key is
/// deleted, the slot is empty (GET METADATA: no key; no certificate), exactly one key was
/// made, nothing issued, and the error is the one line a refused pre-flight gives. Fails
/// if the key is left in the slot.
#[test]
fn a_preflight_refusal_after_the_first_fresh_key_leaves_the_slot_empty() {
    let vault = Vault::start_with(VaultOptions {
        test_roles: true,
        ..Default::default()
    });
    let card = card("5.7.4");
    let issued = vault.issued_cert_count();
    let proxy = FaultProxy::start(ProxyOptions::to(&vault).rule(
        Match::path("/v1/pki/sign/yubikey-piv-auth", 1),
        Fault::Pause {
            after_forward: false,
        },
    ));
    let (made, o) = refused_after_the_first_key(&vault, &card, &proxy, &["--slot", "9a"]);
    assert_eq!(made, 1, "9a's key is made while the pre-flight is out");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = text(&o);
    assert!(
        err.contains("pki/sign/yubikey-piv-auth") && err.contains("403"),
        "{err}"
    );
    assert!(!has_cert(&card, "9a"), "a certificate in 9a");
    let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial(card.serial)).expect("open");
    let slot = yubikey::piv::SlotId::try_from(0x9au8).expect("9a");
    assert!(
        yubikey::piv::metadata(&mut yk, slot).is_err(),
        "a key was left in 9a"
    );
    assert_eq!(vault.issued_cert_count(), issued, "Vault issued");
}
