//! `pivault station` on the rig: several virtual tokens, real pcscd, real OpenBao with the
//! contract's least-privilege policy; kill tests at each step boundary.

mod common;

use common::card::Card;
use common::run::{self, pivault, text};
use common::vault::Vault;
use serde_json::Value;
use std::path::Path;
use std::process::Output;

/// The station command, watching only `readers` (other tests run cards too).
fn station_cmd(
    vault: &Vault,
    s: &run::StationFiles,
    readers: &[&str],
    extra: &[&str],
) -> std::process::Command {
    let mut c = pivault(&run::anchored_env(vault));
    c.args(["-v", "station", "--profile"]).arg(&s.profile);
    c.arg("--report")
        .arg(&s.report)
        .arg("--journal-dir")
        .arg(&s.journal);
    for r in readers {
        c.args(["--reader", r]);
    }
    c.args(extra);
    c
}

/// Run the station to its end on the readers of `cards`.
fn station(
    vault: &Vault,
    s: &run::StationFiles,
    cards: &[&Card],
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let readers: Vec<&str> = cards.iter().map(|c| c.reader.as_str()).collect();
    let mut c = station_cmd(vault, s, &readers, extra);
    c.envs(env.iter().copied());
    run::run(c)
}

/// The report file's lines, each validated against schemas/station-line.schema.json.
fn report_lines(p: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    common::schema::assert_lines(text.as_bytes());
    text.lines()
        .map(|l| serde_json::from_str(l).expect("report line is JSON"))
        .collect()
}

fn escrow(vault: &Vault, serial: u32) -> Value {
    let o = vault.bao(&["kv", "get", "-format=json", &format!("yubikeys/{serial}")]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    v["data"]["data"].clone()
}

fn pin_verifies(card: &Card, pin: &str) -> bool {
    let mut c = run::tool("yubico-piv-tool");
    c.args(["-r", &card.reader, "-a", "verify-pin", "-P", pin]);
    run::run(c).status.success()
}

/// The token is fully enrolled per the profile: certificates in 9a and 9d match the
/// escrow record, and the escrowed PIN is the live one.
fn assert_enrolled(vault: &Vault, card: &Card) {
    let rec = escrow(vault, card.serial);
    assert_eq!(rec["state"]["enrolled"], true, "{rec}");
    assert!(
        rec.get("pending").is_none() || rec["pending"].is_null(),
        "{rec}"
    );
    let pin = rec["live"]["pin"].as_str().expect("escrowed PIN");
    assert_ne!(pin, "123456");
    assert!(pin_verifies(card, pin), "escrowed PIN does not verify");
    let dir = tempfile::tempdir().expect("tmp");
    for slot in ["9a", "9d"] {
        let pem = run::piv_tool_read_cert(&card.reader, slot);
        let want = rec["state"]["slots"][slot]["certificate_pem"]
            .as_str()
            .expect("recorded cert");
        assert_eq!(
            run::openssl_fingerprint(&pem, dir.path()),
            run::openssl_fingerprint(want, dir.path()),
            "slot {slot}"
        );
    }
}

#[test]
fn two_tokens_enrolled_concurrently_with_escrowed_credentials() {
    let vault = Vault::start();
    let a = Card::start();
    let b = Card::start();
    let s = run::station_files(&[a.serial, b.serial]);
    let o = station(
        &vault,
        &s,
        &[&a, &b],
        &["--json", "--max-tokens", "2", "--idle-exit", "60"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let lines = report_lines(&s.report);
    assert_eq!(lines.len(), 2, "{lines:?}");
    // With --json the same lines go to stdout (each validated by the run helper).
    let printed: Vec<Value> = serde_json::Deserializer::from_slice(&o.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("stdout is JSON lines");
    assert_eq!(printed, lines, "{}", text(&o));
    for card in [&a, &b] {
        let l = lines
            .iter()
            .find(|l| l["serial"] == card.serial)
            .unwrap_or_else(|| panic!("no line for {}", card.serial));
        assert_eq!(l["result"], "enrolled", "{l}");
        assert_eq!(l["reader"], card.reader.as_str());
        assert_eq!(l["slots"].as_array().map(Vec::len), Some(2));
        assert!(l["record_version"].as_u64().unwrap_or(0) >= 2, "{l}");
        assert_enrolled(&vault, card);
        let dir = tempfile::tempdir().expect("tmp");
        for sl in l["slots"].as_array().expect("slots") {
            let pem = run::piv_tool_read_cert(&card.reader, sl["slot"].as_str().expect("slot"));
            assert_eq!(
                run::openssl_fingerprint(&pem, dir.path()),
                sl["sha256_fingerprint"].as_str().expect("fp")
            );
        }
    }
    assert_eq!(vault.issued_cert_count(), 4);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("1 AppRole login(s)"), "{err}");

    // A second run leaves both alone.
    let o = station(
        &vault,
        &s,
        &[&a, &b],
        &["--max-tokens", "2", "--idle-exit", "30"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let lines = report_lines(&s.report);
    assert_eq!(lines[2]["result"], "already-enrolled");
    assert_eq!(lines[3]["result"], "already-enrolled");
    assert_eq!(vault.issued_cert_count(), 4);
}

#[test]
fn killed_at_each_step_boundary_then_resumed() {
    let vault = Vault::start();
    for step in ["escrow", "generate", "sign", "import"] {
        let card = Card::start();
        let s = run::station_files(&[card.serial]);
        let before = vault.issued_cert_count();
        let o = station(
            &vault,
            &s,
            &[&card],
            &["--max-tokens", "1", "--idle-exit", "60"],
            &[("PIVAULT_TEST_ABORT_AFTER", step)],
        );
        assert!(
            !o.status.success(),
            "step {step}: the hook did not fire\n{}",
            text(&o)
        );
        let o = station(
            &vault,
            &s,
            &[&card],
            &["--max-tokens", "1", "--idle-exit", "60"],
            &[],
        );
        assert!(o.status.success(), "step {step}: {}", text(&o));
        let lines = report_lines(&s.report);
        let last = lines.last().expect("line");
        assert_eq!(last["result"], "resumed", "step {step}: {last}");
        assert_enrolled(&vault, &card);
        let issued = vault.issued_cert_count() - before;
        assert!(
            issued <= 2,
            "step {step}: Vault issued {issued} certificates for 2 slots"
        );
        assert_eq!(issued, 2, "step {step}");
    }
}

#[test]
fn unknown_serial_is_refused_and_untouched() {
    let vault = Vault::start();
    let card = Card::start();
    let s = run::station_files(&[1]);
    let o = station(
        &vault,
        &s,
        &[&card],
        &["--max-tokens", "1", "--idle-exit", "30"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let lines = report_lines(&s.report);
    assert_eq!(lines[0]["result"], "refused", "{:?}", lines);
    assert!(pin_verifies(&card, "123456"), "the token's PIN changed");
    assert_eq!(vault.issued_cert_count(), 0);
}

#[test]
fn pulled_token_resumes_when_reinserted() {
    use std::io::{BufRead, BufReader};
    let vault = Vault::start();
    let mut card = Card::start();
    let s = run::station_files(&[card.serial]);
    let mut c = station_cmd(
        &vault,
        &s,
        &[&card.reader],
        &["--max-tokens", "2", "--idle-exit", "60"],
    );
    c.stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("station");
    let mut seen = String::new();
    let mut pulled = false;
    for line in BufReader::new(child.stderr.take().expect("stderr")).lines() {
        let line = line.expect("line");
        seen.push_str(&line);
        seen.push('\n');
        if !pulled && line.contains("slot 9d") {
            card.remove();
            pulled = true;
        }
        if pulled && line.contains(" removed ") {
            card.insert();
        }
    }
    let st = child.wait().expect("wait");
    let lines = report_lines(&s.report);
    assert_eq!(lines.len(), 2, "{seen}");
    assert_eq!(lines[0]["result"], "removed", "{seen}");
    assert_eq!(lines[1]["result"], "resumed", "{seen}");
    assert_eq!(st.code(), Some(1), "one token report failed: {seen}");
    assert_enrolled(&vault, &card);
}

#[test]
fn sealed_vault_makes_a_token_wait_and_recover() {
    use std::io::{BufRead, BufReader};
    let vault = Vault::start();
    // The card's reader is known up front; the token arrives while Vault is sealed.
    let mut card = Card::start();
    card.remove();
    let s = run::station_files(&[card.serial]);
    let mut c = station_cmd(
        &vault,
        &s,
        &[&card.reader],
        &["--max-tokens", "1", "--idle-exit", "120"],
    );
    c.stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("station");
    let lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    // Logged in; now Vault goes away for a while and the token arrives.
    std::thread::sleep(std::time::Duration::from_secs(2));
    vault.seal();
    card.insert();
    std::thread::sleep(std::time::Duration::from_secs(4));
    vault.unseal();
    let mut seen = String::new();
    for l in lines {
        seen.push_str(&l.expect("line"));
        seen.push('\n');
    }
    let st = child.wait().expect("wait");
    let r = report_lines(&s.report);
    assert!(st.success(), "{seen}");
    assert_eq!(r[0]["result"], "enrolled", "{seen}");
    assert_eq!(r[0]["serial"], card.serial);
    assert_enrolled(&vault, &card);
}

#[test]
fn aes256_on_firmware_5_4_and_renewal_with_only_the_pin() {
    use common::card::CardOptions;
    let vault = Vault::start();
    let card = Card::start_with(CardOptions {
        version: Some("5.4.3".into()),
        ..Default::default()
    });
    let s = run::station_files(&[card.serial]);
    let o = station(
        &vault,
        &s,
        &[&card],
        &["--max-tokens", "1", "--idle-exit", "60"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_enrolled(&vault, &card);
    let rec = escrow(&vault, card.serial);
    assert_eq!(rec["live"]["mgmt_key_algorithm"], "aes256", "{rec}");
    assert_eq!(rec["live"]["mgmt_key"].as_str().map(str::len), Some(64));
    assert_eq!(rec["live"]["mgmt_key_protected"], true);

    // The end user knows only the PIN; the management key comes from the token's
    // PIN-protected store (AES-256).
    let pin = rec["live"]["pin"].as_str().expect("pin").to_string();
    let before = run::piv_tool_read_cert(&card.reader, "9a");
    let mut env = run::anchored_env(&vault);
    env.push(("PIVAULT_PIN".into(), pin));
    let mut c = pivault(&env);
    c.args([
        "--json",
        "-v",
        "renew",
        "--threshold",
        "400d", // the station's certificates live a year: due now
        "--slot",
        "9a",
    ]);
    c.args([
        "--serial",
        &card.serial.to_string(),
        "--reader",
        &card.reader,
    ]);
    c.arg("--state-dir").arg(&s.journal);
    let o = run::ok(c);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["slots"][0]["result"], "renewed", "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("PIN-protected on the token"),
        "{}",
        text(&o)
    );
    assert_ne!(run::piv_tool_read_cert(&card.reader, "9a"), before);
}

/// `pivault renew` with only the PIN (the station keeps the management key PIN-protected).
fn renew_with_pin(vault: &Vault, s: &run::StationFiles, card: &Card, slot: &str) -> Output {
    let rec = escrow(vault, card.serial);
    let pin = rec["live"]["pin"].as_str().expect("pin").to_string();
    let mut env = run::anchored_env(vault);
    env.push(("PIVAULT_PIN".into(), pin));
    let mut c = pivault(&env);
    c.args(["--json", "renew", "--threshold", "400d", "--slot", slot]);
    c.args([
        "--serial",
        &card.serial.to_string(),
        "--reader",
        &card.reader,
    ]);
    c.arg("--state-dir").arg(&s.journal);
    run::ok(c)
}

/// Defect 3: a slot whose certificate chains to the configured CA and fits the plan is
/// never regenerated: after `pivault renew`, the station leaves the token alone (no new
/// key, no new certificate) and records the renewed certificate.
#[test]
fn a_renewed_token_is_not_rekeyed_by_the_station() {
    let vault = Vault::start();
    let card = Card::start();
    let s = run::station_files(&[card.serial]);
    let o = station(
        &vault,
        &s,
        &[&card],
        &["--max-tokens", "1", "--idle-exit", "60"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = renew_with_pin(&vault, &s, &card, "9a");
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["slots"][0]["result"], "renewed", "{}", text(&o));
    let renewed = run::piv_tool_read_cert(&card.reader, "9a");
    let key_mgmt = run::piv_tool_read_cert(&card.reader, "9d");
    let issued = vault.issued_cert_count();

    let o = station(
        &vault,
        &s,
        &[&card],
        &["--max-tokens", "1", "--idle-exit", "60"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        vault.issued_cert_count(),
        issued,
        "the station issued again"
    );
    assert_eq!(run::piv_tool_read_cert(&card.reader, "9a"), renewed);
    assert_eq!(run::piv_tool_read_cert(&card.reader, "9d"), key_mgmt);
    let lines = report_lines(&s.report);
    assert_eq!(lines.last().expect("line")["result"], "already-enrolled");
    // The record now names the renewed certificate.
    assert_enrolled(&vault, &card);
}

/// Defect 4: a certificate request whose answer was lost (the process died after Vault
/// issued, before the answer was recorded) is "in doubt": the next run reports it and
/// never sends it again by itself; the other slots are finished.
#[test]
fn a_sign_whose_answer_was_lost_is_in_doubt_and_never_repeated() {
    let vault = Vault::start();
    let card = Card::start();
    let s = run::station_files(&[card.serial]);
    let o = station(
        &vault,
        &s,
        &[&card],
        &["--max-tokens", "1", "--idle-exit", "60"],
        &[("PIVAULT_TEST_ABORT_AFTER", "sign-sent")],
    );
    assert!(!o.status.success(), "the hook did not fire: {}", text(&o));
    assert_eq!(vault.issued_cert_count(), 1, "{}", text(&o));
    for _ in 0..2 {
        let o = station(
            &vault,
            &s,
            &[&card],
            &["--max-tokens", "1", "--idle-exit", "60"],
            &[],
        );
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let lines = report_lines(&s.report);
        let last = lines.last().expect("line");
        assert_eq!(last["in_doubt"], serde_json::json!(["9a"]), "{last}");
        assert_eq!(last["result"], "failed", "{last}");
        // 9a asked once (in doubt, not repeated), 9d once.
        assert_eq!(vault.issued_cert_count(), 2, "{}", text(&o));
    }
}

/// Defect 2: a token still on the default management key whose user chose a PIN is not a
/// factory token: refused without spending a PIN try (firmware with metadata default
/// flags), and nothing is escrowed.
#[test]
fn a_default_key_token_with_a_user_pin_is_refused_without_spending_a_try() {
    use common::card::CardOptions;
    let vault = Vault::start();
    let card = Card::start_with(CardOptions {
        version: Some("5.7.4".into()),
        ..Default::default()
    });
    let mut c = run::tool("yubico-piv-tool");
    c.args([
        "-r",
        &card.reader,
        "-a",
        "change-pin",
        "-P",
        "123456",
        "-N",
        "48291573",
    ]);
    run::ok(c);
    let s = run::station_files(&[card.serial]);
    let o = station(
        &vault,
        &s,
        &[&card],
        &["--max-tokens", "1", "--idle-exit", "60"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let lines = report_lines(&s.report);
    assert_eq!(lines[0]["result"], "failed", "{:?}", lines);
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("not in factory state"),
        "{:?}",
        lines
    );
    assert_eq!(
        run::status_json(&card)["pin_tries_left"],
        3,
        "a PIN try was spent"
    );
    assert!(pin_verifies(&card, "48291573"));
    let o = vault.bao(&["kv", "get", &format!("yubikeys/{}", card.serial)]);
    assert!(!o.status.success(), "a record was written: {}", text(&o));
    assert_eq!(vault.issued_cert_count(), 0);
}

/// Defect 11: a journaled certificate that fails verification (here: replaced by one from
/// another CA) never blocks the token: it is dropped, and the certificate recorded in the
/// escrow record (verified against the configured anchor) is imported; nothing is issued
/// again.
#[test]
fn a_journaled_certificate_that_fails_verification_does_not_block_the_token() {
    let vault = Vault::start();
    let card = Card::start();
    let s = run::station_files(&[card.serial]);
    let o = station(
        &vault,
        &s,
        &[&card],
        &["--max-tokens", "1", "--idle-exit", "60"],
        &[("PIVAULT_TEST_ABORT_AFTER", "sign")],
    );
    assert!(!o.status.success(), "the hook did not fire: {}", text(&o));
    let path = s.journal.join(format!("{}.json", card.serial));
    let mut j: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("journal")).expect("json");
    let foreign = include_str!("../fixtures/escrow/leaf.pem");
    j["issued"]["9a"]["certificate_pem"] = Value::String(foreign.into());
    std::fs::write(&path, j.to_string()).expect("write");
    assert_eq!(vault.issued_cert_count(), 1);

    let o = station(
        &vault,
        &s,
        &[&card],
        &["--max-tokens", "1", "--idle-exit", "60"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let lines = report_lines(&s.report);
    assert_eq!(lines.last().expect("line")["result"], "resumed");
    assert_eq!(vault.issued_cert_count(), 2, "9a was issued again");
    assert_enrolled(&vault, &card);
}

/// Issue 10 defect 11: a token pulled and inserted again while its reader's worker is
/// still busy (here: waiting for a sealed Vault) is worked on once the worker is done,
/// not dropped. Without that, the station reports one line and waits for its idle exit.
#[test]
fn an_insertion_into_a_busy_reader_is_worked_on_after_the_worker() {
    use std::io::{BufRead, BufReader};
    let vault = Vault::start();
    let mut card = Card::start();
    card.remove();
    let s = run::station_files(&[card.serial]);
    let mut c = station_cmd(
        &vault,
        &s,
        &[&card.reader],
        &[
            "--max-tokens",
            "2",
            "--idle-exit",
            "40",
            "--vault-wait",
            "60",
        ],
    );
    c.stderr(std::process::Stdio::piped());
    let t0 = std::time::Instant::now();
    let mut child = c.spawn().expect("station");
    let lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    std::thread::sleep(std::time::Duration::from_secs(2));
    vault.seal();
    card.insert();
    let mut seen = String::new();
    let mut replugged = false;
    for l in lines {
        let l = l.expect("line");
        seen.push_str(&l);
        seen.push('\n');
        if !replugged && l.contains("waiting for Vault") {
            // The worker holds the reader: pull the token and put it back.
            replugged = true;
            card.remove();
            std::thread::sleep(std::time::Duration::from_millis(1500));
            card.insert();
            std::thread::sleep(std::time::Duration::from_millis(1500));
            vault.unseal();
        }
    }
    let st = child.wait().expect("wait");
    let took = t0.elapsed();
    assert!(replugged, "the worker never waited for Vault: {seen}");
    let r = report_lines(&s.report);
    assert_eq!(r.len(), 2, "the second insertion was dropped: {seen}");
    assert!(
        matches!(
            r[1]["result"].as_str(),
            Some("enrolled" | "resumed" | "already-enrolled")
        ),
        "{seen}"
    );
    assert!(
        took < std::time::Duration::from_secs(40),
        "ended by --idle-exit, not by the second report: {seen}"
    );
    let _ = st;
    assert_enrolled(&vault, &card);
}

/// Issue 10 defect 11: a token that cannot be opened for a moment right after it appears
/// (another PC/SC client holds it exclusively, as after a client died mid-transaction) is
/// opened again for a few seconds instead of being reported failed.
#[test]
fn a_token_held_by_another_client_for_a_moment_is_opened_once_free() {
    let vault = Vault::start();
    let card = Card::start();
    let s = run::station_files(&[card.serial]);
    // Hold the card exclusively before the station sees it, release after 2 s.
    let ctx = pcsc::Context::establish(pcsc::Scope::User).expect("pcsc");
    let name = std::ffi::CString::new(card.reader.clone()).expect("reader name");
    let held = ctx
        .connect(&name, pcsc::ShareMode::Exclusive, pcsc::Protocols::ANY)
        .expect("exclusive connection");
    let child = station_cmd(
        &vault,
        &s,
        &[&card.reader],
        &["--max-tokens", "1", "--idle-exit", "60"],
    )
    .stderr(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .spawn()
    .expect("station");
    std::thread::sleep(std::time::Duration::from_secs(2));
    drop(held);
    let o = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot open the token yet"),
        "the open was not refused while held: {}",
        text(&o)
    );
    assert!(o.status.success(), "{}", text(&o));
    let r = report_lines(&s.report);
    assert_eq!(r.len(), 1, "{}", text(&o));
    assert_eq!(r[0]["result"], "enrolled", "{}", text(&o));
    assert_enrolled(&vault, &card);
}
