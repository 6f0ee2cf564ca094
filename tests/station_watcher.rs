//! `pivault station` when its reader watcher fails: pcscd dies under a running batch. The
//! station talks to a pcscd of this test's own (tests/common/private_pcscd.rs, a mount
//! namespace of its own), so killing it disturbs no other test.

mod common;

use common::card::CardOptions;
use common::private_pcscd::{PrivateCard, PrivatePcscd, PCSC_SOCKET_ENV};
use common::run::{self, pivault};
use common::vault::{Vault, VaultOptions};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

struct Setup {
    dir: tempfile::TempDir,
    profile: PathBuf,
    report: PathBuf,
    journal: PathBuf,
}

fn setup(serials: &[u32]) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = run::station_profile(dir.path(), serials, &["9a", "9d"]);
    Setup {
        report: dir.path().join("report.jsonl"),
        journal: dir.path().join("journal"),
        profile,
        dir,
    }
}

/// The station against the private pcscd, watching `reader`, with -v (progress on stderr),
/// ending after `max_tokens` reports. (With 1, the watcher is not polled once that token
/// is in flight: the run is already complete but for it.)
fn station_cmd(
    vault: &Vault,
    s: &Setup,
    pcscd: &PrivatePcscd,
    reader: &str,
    max_tokens: u32,
) -> Command {
    let mut c = pivault(&run::anchored_env(vault));
    c.env(PCSC_SOCKET_ENV, pcscd.socket());
    c.args(["-v", "--json", "station", "--profile"])
        .arg(&s.profile);
    c.arg("--report")
        .arg(&s.report)
        .arg("--journal-dir")
        .arg(&s.journal);
    c.args(["--reader", reader, "--idle-exit", "60"]);
    c.args(["--max-tokens", &max_tokens.to_string()]);
    c
}

/// The report file's lines, each validated against schemas/station-line.schema.json.
fn report_lines(p: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    common::schema::assert_lines(text.as_bytes());
    text.lines()
        .map(|l| serde_json::from_str(l).expect("report line is JSON"))
        .collect()
}

/// Spawn with stderr read line by line on a thread (so the pipe never fills).
fn spawn_lines(mut c: Command) -> (Child, Receiver<String>) {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("start pivault station");
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Wait for the child to exit (bounded), collecting the rest of its stderr.
fn finish(
    mut child: Child,
    rx: &Receiver<String>,
    seen: &mut String,
    limit: Duration,
) -> (Option<i32>, String) {
    let deadline = Instant::now() + limit;
    let status = loop {
        while let Ok(l) = rx.try_recv() {
            seen.push_str(&l);
            seen.push('\n');
        }
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the station did not exit within {limit:?}; stderr so far:\n{seen}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The reader thread ends with the pipe.
    for l in rx.iter() {
        seen.push_str(&l);
        seen.push('\n');
    }
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read;
        let _ = o.read_to_string(&mut out);
    }
    (status.code(), out)
}

/// The certificate in `slot` as the card holds it, read by yubico-piv-tool through the
/// private pcscd; `None` when the slot has none.
fn card_cert(pcscd: &PrivatePcscd, card: &PrivateCard, slot: &str) -> Option<String> {
    let mut c = pcscd.tool("yubico-piv-tool");
    c.args(["-r", &card.reader, "-a", "read-certificate", "-s", slot]);
    let o = run::run(c);
    let pem = String::from_utf8_lossy(&o.stdout).into_owned();
    (o.status.success() && pem.contains("BEGIN CERTIFICATE")).then_some(pem)
}

/// Serial of a PEM certificate (openssl), normalised as the Vault rig does.
fn cert_serial(pem: &str, dir: &Path) -> String {
    let f = dir.join("serial.pem");
    std::fs::write(&f, pem).expect("write");
    let mut c = run::tool("openssl");
    c.args(["x509", "-noout", "-serial", "-in"]).arg(&f);
    let out = String::from_utf8_lossy(&run::ok(c).stdout).into_owned();
    // openssl prints plain hex; the rig's serials are colon-separated byte pairs.
    let hex = out
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    let hex = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex
    };
    let pairs: Vec<&str> = (0..hex.len()).step_by(2).map(|i| &hex[i..i + 2]).collect();
    common::vault::normalise_serial(&pairs.join(":"))
}

/// Issue 10, defect 11 ("a watcher error loses report lines in flight"), from outside: a
/// station batch has a token in flight — Vault has issued the certificate for slot 9a and
/// the card is frozen (SIGSTOP) holding the worker's next APDU — when pcscd is SIGKILLed,
/// so the reader watcher's next SCardGetStatusChange fails. Then:
/// - the report file (and `--json` stdout) has the line for that token, with its serial
///   and its real result (failed, with the PC/SC reason; or enrolled had it finished);
/// - the station exits non-zero with one error line saying the reader watcher failed, and
///   a hint;
/// - card and Vault agree with the line: Vault issued one certificate (cert list and audit
///   log); it is not on the card, and a second run (pcscd and card back) imports that very
///   certificate from the journal without Vault issuing it again — nothing silently
///   dropped, nothing issued twice.
///
/// Fails on the old behaviour: with the watcher's error path in src/station/watch.rs
/// changed to leave the loop without draining the tokens in flight (`return` from the
/// scope instead of `break`), this test failed with "no report line for the token in
/// flight" (checked by hand, 2026-12-02).
#[test]
fn a_watcher_error_still_reports_the_token_in_flight() {
    let vault = Vault::start_with(VaultOptions {
        audit: true,
        ..Default::default()
    });
    let mut pcscd = PrivatePcscd::start();
    let mut card = pcscd.card(0, CardOptions::default());
    let s = setup(&[card.serial]);
    let (child, rx) = spawn_lines(station_cmd(&vault, &s, &pcscd, &card.reader, 2));

    // Hold the token mid-work: Vault has answered 9a's request, the import is next.
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("the station never reached 9a's import:\n{seen}"));
        seen.push_str(&l);
        seen.push('\n');
        if l.contains("slot 9a") && l.contains("importing") {
            break;
        }
    }
    card.freeze();
    let issued = vault.issuance().expect("Vault's issuance");
    assert_eq!(issued.issued(), 1, "9a only, so far:\n{seen}");
    std::thread::sleep(Duration::from_millis(300));
    pcscd.kill();
    card.thaw();
    let (code, stdout) = finish(child, &rx, &mut seen, Duration::from_secs(60));
    let all = format!("status {code:?}\n--- stdout\n{stdout}\n--- stderr\n{seen}");

    // The line for the token in flight.
    let lines = report_lines(&s.report);
    let line = lines
        .iter()
        .find(|l| l["serial"] == card.serial)
        .unwrap_or_else(|| panic!("no report line for the token in flight:\n{all}"));
    assert_eq!(lines.len(), 1, "{all}");
    let printed: Vec<Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("stdout is JSON lines");
    // --json: the report lines, then the error document.
    let printed_lines: Vec<&Value> = printed
        .iter()
        .filter(|d| d.get("result").is_some())
        .collect();
    assert_eq!(
        printed_lines,
        lines.iter().collect::<Vec<_>>(),
        "--json stdout and the report differ:\n{all}"
    );
    let result = line["result"].as_str().unwrap_or_default();
    let error = line["error"].as_str().unwrap_or_default();
    assert_eq!(result, "failed", "{all}");
    assert!(
        error.contains("PC/SC") && error.contains("pcscd"),
        "the line does not give the PC/SC reason: {line}\n{all}"
    );
    // The exit: non-zero, one line saying the reader watcher failed, and a hint.
    assert_eq!(code, Some(1), "{all}");
    let errors: Vec<&str> = seen
        .lines()
        .filter(|l| l.starts_with("pivault: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{all}");
    assert!(
        errors[0].contains("reader watcher failed") && errors[0].contains("pcscd"),
        "{all}"
    );
    assert!(
        seen.lines()
            .any(|l| l.starts_with("  hint:") && l.contains("pcscd")),
        "{all}"
    );

    // Card and Vault agree with the line: 9a's certificate was issued, not imported.
    pcscd.restart();
    card.restart(&pcscd);
    let issued_9a: Vec<String> = issued.listed.iter().cloned().collect();
    let dir = s.dir.path();
    if let Some(pem) = card_cert(&pcscd, &card, "9a") {
        // Only if the import beat the kill: then it must be the certificate Vault issued.
        assert_eq!(vec![cert_serial(&pem, dir)], issued_9a, "{all}");
    }
    assert!(card_cert(&pcscd, &card, "9d").is_none(), "{all}");
    let after = vault.issuance().expect("Vault's issuance");
    assert_eq!(after.issued(), 1, "{all}");

    // A second run finishes the token with that very certificate, issuing only 9d's.
    let (child, rx) = spawn_lines(station_cmd(&vault, &s, &pcscd, &card.reader, 1));
    let mut seen2 = String::new();
    let (code, stdout) = finish(child, &rx, &mut seen2, Duration::from_secs(120));
    let all2 = format!("status {code:?}\n--- stdout\n{stdout}\n--- stderr\n{seen2}");
    assert_eq!(code, Some(0), "{all2}");
    let lines = report_lines(&s.report);
    assert_eq!(lines.len(), 2, "{all2}");
    assert_eq!(lines[1]["serial"], card.serial, "{all2}");
    assert_eq!(lines[1]["result"], "resumed", "{all2}");
    let pem = card_cert(&pcscd, &card, "9a").expect("9a holds a certificate");
    assert_eq!(
        vec![cert_serial(&pem, dir)],
        issued_9a,
        "9a holds another certificate than the one Vault issued in the first run"
    );
    let end = vault.issuance().expect("Vault's issuance");
    assert_eq!(end.issued(), 2, "{all2}");
    assert!(
        end.per_csr().values().all(|n| *n == 1),
        "a request was signed twice"
    );
    let pem9d = card_cert(&pcscd, &card, "9d").expect("9d holds a certificate");
    assert!(end.listed.contains(&cert_serial(&pem9d, dir)), "{all2}");
}
