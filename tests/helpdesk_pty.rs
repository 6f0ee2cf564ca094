//! The helpdesk path of `pivault enroll` on a real pseudo-terminal (issue 14, Deliver 5):
//! no flags but `--secure` (and the rig's Vault in the environment), every answer typed.
//! The token comes first with its state, then the slots; PINs are typed without echo; a
//! token in use is refused by `--secure` before anything changes; a factory token ends
//! with a PIN-protected random management key, a random PUK escrowed in Vault KV and the
//! user's PIN, each confirmed with ykman / yubico-piv-tool and the KV record.

mod common;

use common::card::{Card, CardOptions};
use common::run::{self, text};
use common::vault::{Vault, VaultOptions};
use rexpect::session::PtySession;
use std::process::{Command, Stdio};

const USER_PIN: &str = "246813";
const TIMEOUT_MS: u64 = 120_000;

/// `pivault enroll --secure` on a pty (stdin, stdout, stderr all the terminal), the
/// rig's Vault and nothing else in the environment.
fn helpdesk(v: &Vault) -> PtySession {
    let mut c: Command = run::pivault(&run::anchored_env(v));
    // The pty is the child's terminal: it must inherit it, not /dev/null.
    c.stdin(Stdio::inherit());
    c.env("TERM", "xterm").env("COLUMNS", "200");
    c.args(["enroll", "--secure"]);
    rexpect::session::spawn_command(c, Some(TIMEOUT_MS)).expect("spawn pivault on a pty")
}

/// Answer "Which token" when several are present (the rig's other cards): the number in
/// front of our serial. Returns what was shown up to the "Enroll token" question (the
/// token's state).
fn choose(p: &mut PtySession, serial: u32) -> String {
    let (before, m) = p
        .exp_regex(r"Which token \[1\]: |Enroll token \d+\? \(y/N\) \[N\]: ")
        .expect("a token question");
    if m.starts_with("Which") {
        let n = before
            .lines()
            .find(|l| l.contains(&format!(") {serial} ")))
            .and_then(|l| l.trim().split(')').next().map(str::to_string))
            .unwrap_or_else(|| panic!("token {serial} not listed:\n{before}"));
        p.send_line(&n).expect("send");
        let (shown, _) = p
            .exp_regex(r"Enroll token \d+\? \(y/N\) \[N\]: ")
            .expect("the Enroll question");
        shown
    } else {
        before
    }
}

fn ykman(reader: &str, args: &[&str]) -> String {
    let mut c = run::tool("ykman");
    c.args(["--reader", reader]).args(args);
    let o = run::run(c);
    assert!(o.status.success(), "ykman {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn escrow_record(v: &Vault, serial: u32) -> serde_json::Value {
    let o = v.bao(&["kv", "get", "-format=json", &format!("yubikeys/{serial}")]);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    j["data"]["data"].clone()
}

#[test]
fn helpdesk_secures_a_factory_token_token_first() {
    let v = Vault::start_with(VaultOptions::default());
    // 5.7.4: metadata, so the PUK counter and the management key state are shown.
    let card = Card::start_with(CardOptions {
        version: Some("5.7.4".into()),
        ..Default::default()
    });
    let mut p = helpdesk(&v);
    // 1. The token first, with its state, before any question about slots.
    let shown = choose(&mut p, card.serial);
    eprintln!("--- shown before the first question about the token\n{shown}");
    assert!(shown.contains(&format!("token {}", card.serial)), "{shown}");
    assert!(shown.contains("firmware"), "{shown}");
    assert!(shown.contains("PIN tries left 3"), "{shown}");
    assert!(shown.contains("PUK tries left 3"), "{shown}");
    assert!(shown.contains("state: factory"), "{shown}");
    assert!(
        !shown.contains("Slots to enroll"),
        "slots asked first: {shown}"
    );
    p.send_line("y").expect("send");
    // 2. Then the slots, role, algorithm, subject.
    p.exp_string("Slots to enroll (comma-separated) [9a]: ")
        .expect("slots");
    p.send_line("9a").expect("send");
    p.exp_string("role for slot 9a").expect("role");
    p.send_line("").expect("send");
    p.exp_string("algorithm for slot 9a").expect("algorithm");
    p.send_line("").expect("send");
    p.exp_string("Subject common name: ").expect("cn");
    p.send_line("jane").expect("send");
    p.exp_string("E-mail address").expect("email");
    p.send_line("").expect("send");
    p.exp_string("User principal name").expect("upn");
    p.send_line("").expect("send");
    p.exp_string("Proceed? (y/N) [N]: ").expect("proceed");
    p.send_line("y").expect("send");
    // 3. The user's PIN, twice, not echoed.
    p.exp_string("The user's new PIN").expect("new PIN");
    p.send_line(USER_PIN).expect("send");
    let echo1 = p.exp_string("The new PIN again: ").expect("again");
    p.send_line(USER_PIN).expect("send");
    let rest = p.exp_eof().expect("pivault ends");
    eprintln!("--- after the PIN\n{rest}");
    assert!(!echo1.contains(USER_PIN), "PIN echoed: {echo1}");
    assert!(!rest.contains(USER_PIN), "PIN echoed: {rest}");
    assert!(rest.contains("slot 9a"), "{rest}");
    assert!(rest.contains("enrolled"), "{rest}");
    // The spinner showed the slow steps with their elapsed time.
    assert!(
        regex_like_elapsed(&rest),
        "no spinner with elapsed time: {rest}"
    );

    // 4. Checked from outside. Certificate in 9a for jane.
    let pem = run::piv_tool_read_cert(&card.reader, "9a");
    let dir = tempfile::tempdir().expect("tmp");
    let t = run::openssl_text(&pem, dir.path());
    assert!(t.contains("CN=jane") || t.contains("CN = jane"), "{t}");
    // The escrow record: a random PUK and management key, PIN-protected, no user PIN.
    let rec = escrow_record(&v, card.serial);
    let live = &rec["live"];
    assert_eq!(live["mgmt_key_protected"], true, "{rec}");
    assert!(
        live.get("pin").is_none_or(|p| p.is_null()),
        "user PIN escrowed: {rec}"
    );
    assert!(rec.get("pending").is_none_or(|p| p.is_null()), "{rec}");
    let puk = live["puk"].as_str().expect("escrowed PUK").to_string();
    let key = live["mgmt_key"]
        .as_str()
        .expect("escrowed key")
        .to_lowercase();
    assert_ne!(puk, "12345678");
    assert_ne!(key, "010203040506070801020304050607080102030405060708");
    // ykman: the management key is stored on the token, protected by PIN.
    let info = ykman(&card.reader, &["piv", "info"]);
    eprintln!("--- ykman piv info\n{info}");
    assert!(info.contains("protected by PIN"), "{info}");
    // ... and it is the escrowed key: ykman exports the PIN-protected object (PRINTED,
    // 5FC109: 88 { 89 <key> }) with the user's PIN.
    let printed = {
        let mut c = run::tool("ykman");
        c.args(["--reader", &card.reader, "piv", "objects", "export"]);
        c.args(["0x5fc109", "-", "--pin", USER_PIN]);
        let o = run::run(c);
        assert!(o.status.success(), "ykman export PRINTED: {}", text(&o));
        hex_of(&o.stdout)
    };
    assert!(
        printed.contains(&key),
        "PRINTED {printed} does not hold {key}"
    );
    // yubico-piv-tool: the user's PIN verifies; the escrowed PUK is right (changed to
    // itself), with tries to spare before, so no last try is risked, and all left after.
    // ykman 4.0.9 does not show the PUK counter; pivault's status reads it (GET METADATA)
    // only as a guard: the PUK attempt below is not made with fewer than 3 tries left.
    assert_eq!(run::status_json(&card)["puk_tries_left"], 3);
    let o = run::run({
        let mut c = run::tool("yubico-piv-tool");
        c.args(["-r", &card.reader, "-a", "verify-pin", "-P", USER_PIN]);
        c
    });
    assert!(o.status.success(), "user PIN: {}", text(&o));
    let o = run::run({
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
        c
    });
    assert!(o.status.success(), "escrowed PUK refused: {}", text(&o));
    assert_eq!(run::status_json(&card)["puk_tries_left"], 3);
}

/// A token in use (a key and certificate in 9a): shown as such with its certificate;
/// choosing its occupied slot is refused (exit 3, hint) before any PIN is asked, and
/// nothing changes: same certificate, no escrow record, PUK and management key untouched.
#[test]
fn helpdesk_shows_a_token_in_use_and_never_wipes_it() {
    let v = Vault::start_with(VaultOptions::default());
    let card = Card::start_with(CardOptions {
        version: Some("5.7.4".into()),
        ..Default::default()
    });
    let mut env = run::anchored_env(&v);
    env.push(("PIVAULT_PIN".into(), "123456".into()));
    run::ok(run::enroll_cmd(
        &card,
        &env,
        &["--cn", "olduser", "--slot", "9a"],
    ));
    let before = run::piv_tool_read_cert(&card.reader, "9a");
    let mut p = helpdesk(&v);
    let shown = choose(&mut p, card.serial);
    eprintln!("--- shown\n{shown}");
    assert!(shown.contains("slot 9a"), "{shown}");
    assert!(shown.contains("CN=olduser"), "{shown}");
    assert!(shown.contains("IN USE"), "{shown}");
    p.send_line("y").expect("send");
    p.exp_string("Slots to enroll").expect("slots");
    p.send_line("9a").expect("send");
    p.exp_string("role for slot 9a").expect("role");
    p.send_line("").expect("send");
    p.exp_string("algorithm for slot 9a").expect("algorithm");
    p.send_line("").expect("send");
    p.exp_string("Subject common name: ").expect("cn");
    p.send_line("mallory").expect("send");
    p.exp_string("E-mail address").expect("email");
    p.send_line("").expect("send");
    p.exp_string("User principal name").expect("upn");
    p.send_line("").expect("send");
    let rest = p.exp_eof().expect("pivault ends");
    eprintln!("--- then\n{rest}");
    assert!(!rest.contains("PIN"), "a PIN was asked for: {rest}");
    let line = rest
        .lines()
        .find(|l| l.contains("error:"))
        .unwrap_or_else(|| panic!("no error line: {rest}"));
    assert!(line.contains("slot 9a already holds"), "{line}");
    assert!(rest.contains("hint:"), "{rest}");
    // nix's WaitStatus, which rexpect does not re-export: "Exited(Pid(n), 3)".
    let status = format!("{:?}", p.process().wait());
    assert!(
        status.contains("Exited(") && status.ends_with(", 3))"),
        "exit: {status}\n{rest}"
    );
    assert_eq!(before, run::piv_tool_read_cert(&card.reader, "9a"));
    let o = v.bao(&["kv", "get", &format!("yubikeys/{}", card.serial)]);
    assert!(
        !o.status.success(),
        "an escrow record was written: {}",
        text(&o)
    );
    let info = ykman(&card.reader, &["piv", "info"]);
    assert!(!info.contains("protected by PIN"), "{info}");
    // The factory PUK still works (changed to itself): the PUK was not rotated.
    let o = run::run({
        let mut c = run::tool("yubico-piv-tool");
        c.args([
            "-r",
            &card.reader,
            "-a",
            "change-puk",
            "-P",
            "12345678",
            "-N",
            "12345678",
        ]);
        c
    });
    assert!(o.status.success(), "factory PUK: {}", text(&o));
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// "(3s)" or "(0s)": indicatif's `{elapsed}` after a step name.
fn regex_like_elapsed(s: &str) -> bool {
    s.split('(').skip(1).any(|t| {
        let d: String = t.chars().take_while(|c| c.is_ascii_digit()).collect();
        !d.is_empty() && t[d.len()..].starts_with("s)")
    })
}

/// Without a terminal the slow steps are plain lines on stderr (no spinner, no control
/// characters); with `--json` there is no progress at all.
#[test]
fn progress_is_plain_lines_off_a_terminal_and_absent_in_json() {
    let v = Vault::start();
    let mut env = run::anchored_env(&v);
    env.push(("PIVAULT_PIN".into(), "123456".into()));
    let card = Card::start();
    let o = run::ok(run::enroll_cmd(
        &card,
        &env,
        &["--cn", "jane", "--slot", "9a"],
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines()
            .any(|l| l == "  slot 9a: generating a p256 key on the token…"),
        "{err}"
    );
    assert!(err.contains("  slot 9a: asking Vault (yubikey-piv-auth) for the certificate…"));
    assert!(!err.contains('\u{1b}') && !err.contains('\r'), "{err:?}");
    let o = run::ok(run::enroll_cmd(
        &card,
        &env,
        &["--json", "--cn", "jane", "--slot", "9e", "--force"],
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains("generating a") && !err.contains("asking Vault"),
        "progress in --json mode: {err}"
    );
}

/// `pivault enroll --force` for slot 9a of a token in use, on a pty: after "Proceed?"
/// the token's serial must be typed. Returns the session at that question.
fn force_enroll(v: &Vault, card: &Card, cn: &str) -> PtySession {
    let mut env = run::anchored_env(v);
    env.push(("PIVAULT_PIN".into(), "123456".into()));
    let mut c = run::enroll_cmd(card, &env, &["--force", "--slot", "9a", "--cn", cn]);
    c.stdin(Stdio::inherit());
    c.env("TERM", "xterm").env("COLUMNS", "200");
    let mut p = rexpect::session::spawn_command(c, Some(TIMEOUT_MS)).expect("spawn on a pty");
    p.exp_string("Proceed? (y/N) [N]: ").expect("proceed");
    p.send_line("y").expect("send");
    p.exp_string(&format!(
        "This REPLACES keys on token {}. Type its serial to confirm: ",
        card.serial
    ))
    .expect("the serial question");
    p
}

/// The certificate in 9a (PEM, yubico-piv-tool) and whether 9a's private key is that
/// certificate's (a signature through OpenSC verified by openssl).
fn slot_9a(card: &Card) -> (String, bool) {
    let dir = tempfile::tempdir().expect("tmp");
    let pem = run::piv_tool_read_cert(&card.reader, "9a");
    let matches = run::slot_key_matches_cert(&card.reader, "9a", "123456", dir.path());
    (pem, matches)
}

/// `--force` at a terminal asks for the token's serial before re-keying an occupied slot:
/// a wrong serial changes nothing (same certificate, same key, read by yubico-piv-tool and
/// OpenSC; nothing issued by Vault) and exits 2 ("nothing done"); the right one re-keys.
#[test]
fn force_at_a_terminal_needs_the_token_serial_typed() {
    let v = Vault::start_with(VaultOptions::default());
    let card = Card::start_with(CardOptions {
        version: Some("5.7.4".into()),
        ..Default::default()
    });
    let mut env = run::anchored_env(&v);
    env.push(("PIVAULT_PIN".into(), "123456".into()));
    run::ok(run::enroll_cmd(
        &card,
        &env,
        &["--cn", "olduser", "--slot", "9a"],
    ));
    let (old_pem, old_key) = slot_9a(&card);
    assert!(
        old_key,
        "the first enrollment's key does not match its certificate"
    );
    let issued = v.try_issued_serials().expect("Vault's certificate list");
    assert_eq!(issued.len(), 1, "{issued:?}");

    // A wrong serial (the right one with a digit changed).
    let wrong = card.serial.wrapping_add(1).to_string();
    let mut p = force_enroll(&v, &card, "mallory");
    p.send_line(&wrong).expect("send");
    let rest = p.exp_eof().expect("pivault ends");
    eprintln!("--- after a wrong serial\n{rest}");
    assert!(rest.contains("nothing done"), "{rest}");
    let status = format!("{:?}", p.process().wait());
    assert!(
        status.contains("Exited(") && status.ends_with(", 2))"),
        "exit: {status}\n{rest}"
    );
    let (pem, key) = slot_9a(&card);
    assert_eq!(
        pem, old_pem,
        "9a's certificate changed after a wrong serial"
    );
    assert!(key, "9a's key changed after a wrong serial");
    let after = v.try_issued_serials().expect("Vault's certificate list");
    assert_eq!(after, issued, "Vault issued after a wrong serial");

    // The right serial: re-keyed.
    let mut p = force_enroll(&v, &card, "newuser");
    p.send_line(&card.serial.to_string()).expect("send");
    let rest = p.exp_eof().expect("pivault ends");
    eprintln!("--- after the right serial\n{rest}");
    let status = format!("{:?}", p.process().wait());
    assert!(
        status.contains("Exited(") && status.ends_with(", 0))"),
        "exit: {status}\n{rest}"
    );
    let (pem, key) = slot_9a(&card);
    assert_ne!(pem, old_pem, "9a's certificate was not replaced");
    assert!(key, "9a's new key does not match its new certificate");
    let dir = tempfile::tempdir().expect("tmp");
    assert_ne!(
        run::openssl_pubkey(&pem, dir.path()),
        run::openssl_pubkey(&old_pem, dir.path()),
        "9a was not re-keyed"
    );
    let t = run::openssl_text(&pem, dir.path());
    assert!(
        t.contains("CN=newuser") || t.contains("CN = newuser"),
        "{t}"
    );
    let after = v.try_issued_serials().expect("Vault's certificate list");
    assert_eq!(after.len(), 2, "{after:?}");
}
