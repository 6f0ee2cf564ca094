//! The kill-at-every-boundary harness (issue 11): for a command, find the boundaries of a
//! clean run, then for each boundary and fault start fresh, break the run there, run the
//! same command again to its end, and check the invariants against the card (third-party
//! clients) and Vault (cert list + audit log), never against pivault's own report.
//!
//! Boundaries:
//! - Vault request k (through `common/faultproxy.rs`): SIGKILL pivault while request k is
//!   held before Vault sees it or after Vault acted; or fault request k (lost answer,
//!   502/503/504, stall past the deadline, malformed/truncated/oversize JSON, wrong content
//!   type, answer cut mid-body).
//! - APDU n (needs the virtual card's `--fault pause-after@N`, branch `vcard`): SIGKILL
//!   pivault when the card says `paused apdu=N`, then resume the card. Until the card has
//!   the flag these points report "unsupported" and are not counted.
//!
//! The matrix is `#[ignore]`d (minutes); `scripts/fault-matrix` runs it:
//!   PIVAULT_FAULT_COMMANDS=enroll,station  PIVAULT_FAULT_KINDS=pause-after,drop-after-forward
//!   PIVAULT_FAULT_SAMPLE=K (K points at random; PIVAULT_FAULT_SEED)  PIVAULT_FAULT_REPORT=FILE
//! and prints `points tried N / points held M` and each cell that did not hold. The tests
//! that are not ignored check the harness itself: it finds the boundaries, it reaches a
//! point, and its invariant checks fail when an invariant is broken on purpose.

mod common;

#[path = "common/faultproxy.rs"]
mod faultproxy;

use common::card::Card;
use common::run::{self, pivault, text};
use common::vault::{Issuance, Vault, VaultOptions};
use faultproxy::{Fault, FaultProxy, Match, ProxyOptions, Rule};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PIN: &str = "123456";
/// The PIN `unblock` sets.
const NEW_PIN: &str = "48291573";
/// pivault's operation deadline in the matrix: stalls outlast it.
const DEADLINE_SECS: u64 = 5;
const STALL: Duration = Duration::from_secs(DEADLINE_SECS + 3);
/// No single run should take longer.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// The fault kinds at a Vault boundary, by name (`PIVAULT_FAULT_KINDS`).
fn vault_faults() -> Vec<Fault> {
    vec![
        Fault::Pause {
            after_forward: false,
        },
        Fault::Pause {
            after_forward: true,
        },
        Fault::DropAfterForward,
        Fault::Status(502),
        Fault::Status(503),
        Fault::Status(504),
        Fault::Stall {
            forward: false,
            hold: STALL,
        },
        Fault::Stall {
            forward: true,
            hold: STALL,
        },
        Fault::MalformedJson,
        Fault::TruncatedJson,
        Fault::Oversize,
        Fault::WrongContentType,
        Fault::CutMidBody,
    ]
}

/// Where a run is broken.
#[derive(Debug, Clone)]
enum Point {
    /// Vault request k of the run (from 1).
    Vault(usize, Fault),
    /// SIGKILL after APDU n (the card pauses there).
    Apdu(usize),
}

impl Point {
    fn name(&self) -> String {
        match self {
            Point::Vault(k, f) => format!("vault#{k}:{}", f.name()),
            Point::Apdu(n) => format!("apdu#{n}:kill"),
        }
    }
}

/// The commands of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    /// `pivault enroll --force` of 9a 9c 9d 9e (one role each), default management key.
    Enroll,
    /// `pivault station`, one factory token, 4 slots, credentials changed and escrowed.
    Station,
    /// `pivault unblock`: a blocked PIN, the factory PUK escrowed; new PIN from the
    /// environment, the PUK rotated (escrowed before it is applied).
    Unblock,
    /// `pivault renew` of a token enrolled in 4 slots (factory credentials escrowed), every
    /// certificate due (`--threshold 9000h` left, above the roles' max_ttl).
    Renew,
}

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Cmd::Enroll => "enroll",
            Cmd::Station => "station",
            Cmd::Unblock => "unblock",
            Cmd::Renew => "renew",
        }
    }

    fn parse(s: &str) -> Option<Cmd> {
        match s.trim() {
            "enroll" => Some(Cmd::Enroll),
            "station" => Some(Cmd::Station),
            "unblock" => Some(Cmd::Unblock),
            "renew" => Some(Cmd::Renew),
            _ => None,
        }
    }

    /// Slot → role: one role per slot so issuance per slot is issuance per role.
    fn slots(self) -> &'static [(&'static str, &'static str)] {
        if self == Cmd::Unblock {
            return &[];
        }
        &[
            ("9a", "yubikey-piv-auth"),
            ("9c", "yubikey-piv-code-signing"),
            ("9d", "yubikey-piv-email-signing"),
            ("9e", "yubikey-piv"),
        ]
    }
}

/// One Vault (with the audit log) and one proxy for the whole matrix.
struct Harness {
    vault: Vault,
    proxy: FaultProxy,
}

impl Harness {
    fn new() -> Harness {
        apdu_rig();
        let vault = Vault::start_with(VaultOptions {
            audit: true,
            ..Default::default()
        });
        let proxy = FaultProxy::start(ProxyOptions::to(&vault));
        Harness { vault, proxy }
    }

    fn issuance(&self) -> Issuance {
        self.vault
            .issuance()
            .unwrap_or_else(|e| panic!("the harness cannot count issuance: {e}"))
    }
}

/// A fresh token and the files of one cell.
struct Ctx {
    card: Card,
    dir: tempfile::TempDir,
    /// Station: profile, report, journal.
    profile: PathBuf,
}

/// Firmware of the matrix's cards: 5.4.3 by default, so that GET METADATA gives the PUK
/// retry counter to another client (`run::metadata_tries`); `PIVAULT_MATRIX_FIRMWARE`
/// overrides (a card without metadata skips the PUK-counter invariant).
fn matrix_firmware() -> String {
    std::env::var("PIVAULT_MATRIX_FIRMWARE").unwrap_or_else(|_| "5.4.3".into())
}

/// Whether firmware `v` ("5.4.3") answers GET METADATA (5.3 and later).
fn has_metadata(v: &str) -> bool {
    let mut p = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    (p.next().unwrap_or(0), p.next().unwrap_or(0)) >= (5, 3)
}

/// Retry counters at the start of a cell (PUK: `None` when the card cannot tell).
#[derive(Debug, Clone, Copy)]
struct Tries {
    pin: u32,
    puk: Option<u32>,
}

impl Tries {
    const FULL: Tries = Tries {
        pin: 3,
        puk: Some(3),
    };

    fn read(card: &Card) -> Tries {
        Tries {
            pin: pin_tries(card),
            puk: run::metadata_tries(&card.reader, true).ok(),
        }
    }
}

fn prepare(h: &Harness, cmd: Cmd) -> Ctx {
    let card = Card::start_with(common::card::CardOptions {
        version: Some(matrix_firmware()),
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("station.toml");
    if cmd == Cmd::Station {
        let s = card.serial;
        std::fs::write(
            dir.path().join("tokens.toml"),
            format!("[[token]]\nserial = {s}\nname = \"User {s}\"\nemail = \"user{s}@example.org\"\nupn = \"user{s}@corp.example.org\"\n"),
        )
        .expect("allow-list");
        let slots: String = cmd
            .slots()
            .iter()
            .map(|(slot, role)| format!("\n[[slot]]\nslot = \"{slot}\"\nrole = \"{role}\"\n"))
            .collect();
        std::fs::write(
            &profile,
            format!(
                "common_name = \"{{name}}\"\nemail = \"{{email}}\"\n\n[credentials]\npin_length = 8\n\
                 puk_length = 8\nmgmt_key = \"best\"\nprotect_mgmt_key = true\n\n[tokens]\n\
                 allow_list = \"tokens.toml\"\n{slots}"
            ),
        )
        .expect("profile");
    }
    if cmd == Cmd::Renew {
        let ctx = Ctx { card, dir, profile };
        let o = run::run(command(h, Cmd::Enroll, &ctx));
        assert!(o.status.success(), "enrolling before renew: {}", text(&o));
        run::escrow_factory(&h.vault, &ctx.card, ctx.dir.path());
        return ctx;
    }
    if cmd == Cmd::Unblock {
        run::escrow_factory(&h.vault, &card, dir.path());
        for _ in 0..3 {
            let mut c = run::tool("yubico-piv-tool");
            c.args(["-r", &card.reader, "-a", "verify-pin", "-P", "000000"]);
            let _ = run::run(c);
        }
    }
    Ctx { card, dir, profile }
}

fn command(h: &Harness, cmd: Cmd, ctx: &Ctx) -> Command {
    let mut env = run::anchored_env(&h.vault);
    for (k, v) in env.iter_mut() {
        if k == "VAULT_ADDR" {
            *v = h.proxy.addr.clone();
        }
    }
    env.push(("PIVAULT_VAULT_DEADLINE".into(), DEADLINE_SECS.to_string()));
    match cmd {
        Cmd::Enroll => {
            env.push(("PIVAULT_PIN".into(), PIN.into()));
            let mut args: Vec<String> = vec!["--force".into(), "--json".into()];
            for (slot, role) in cmd.slots() {
                args.push("--slot".into());
                args.push(format!("{slot}:role={role}"));
            }
            for a in [
                "--cn",
                "Fault Matrix {serial}",
                "--email",
                "fault.matrix@example.org",
                "--upn",
                "fault.matrix@corp.example.org",
            ] {
                args.push(a.into());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run::enroll_cmd(&ctx.card, &env, &args)
        }
        Cmd::Station => {
            let mut c = pivault(&env);
            c.args(["-v", "station", "--profile"]).arg(&ctx.profile);
            c.arg("--report")
                .arg(ctx.dir.path().join("report.jsonl"))
                .arg("--journal-dir")
                .arg(ctx.dir.path().join("journal"));
            c.args(["--reader", &ctx.card.reader]);
            c.args([
                "--max-tokens",
                "1",
                "--idle-exit",
                "20",
                "--vault-wait",
                "20",
            ]);
            c
        }
        Cmd::Renew => {
            env.push(("PIVAULT_PIN".into(), PIN.into()));
            // Renewal reads no escrow record (issue 10, defect 7): the token here keeps the
            // factory management key, which the user's machine is given directly.
            env.push((
                "PIVAULT_MGMT_KEY".into(),
                "010203040506070801020304050607080102030405060708".into(),
            ));
            let mut c = pivault(&env);
            c.args(["renew", "--threshold", "9000h"]);
            c.args(["--serial", &ctx.card.serial.to_string()]);
            c.args(["--reader", &ctx.card.reader, "--state-dir"]);
            c.arg(ctx.dir.path().join("state"));
            c
        }
        Cmd::Unblock => {
            env.push(("PIVAULT_NEW_PIN".into(), NEW_PIN.into()));
            let mut c = pivault(&env);
            c.args(["unblock", "--serial", &ctx.card.serial.to_string()]);
            c.args(["--reader", &ctx.card.reader]);
            c
        }
    }
}

/// The outcome of one cell.
#[derive(Debug)]
struct Cell {
    cmd: Cmd,
    point: Point,
    /// The fault point was reached (a held request, a paused card).
    reached: bool,
    /// Invariants that did not hold, with what was seen.
    broken: Vec<String>,
    secs: f64,
    first_exit: Option<i32>,
}

impl Cell {
    fn held(&self) -> bool {
        self.broken.is_empty()
    }

    fn line(&self) -> String {
        format!(
            "{} {} reached={} first_exit={:?} {:.1}s {}",
            self.cmd.name(),
            self.point.name(),
            self.reached,
            self.first_exit,
            self.secs,
            if self.held() {
                "HELD".to_string()
            } else {
                format!("NOT HELD: {}", self.broken.join(" | "))
            }
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "command": self.cmd.name(),
            "point": self.point.name(),
            "reached": self.reached,
            "first_exit": self.first_exit,
            "held": self.held(),
            "broken": self.broken,
            "secs": self.secs,
        })
    }
}

/// Spawn with piped output, collected by threads.
/// What `--json` runs print is checked against its JSON Schema (common::schema): the
/// reader thread panics on a rejected document, and joining it re-raises the panic.
fn spawn(mut c: Command) -> (Child, std::thread::JoinHandle<String>) {
    let json = common::schema::is_pivault_json(&c);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn pivault");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t = std::thread::spawn(move || {
        let mut a = String::new();
        let mut b = String::new();
        let t2 = std::thread::spawn(move || {
            let _ = err.read_to_string(&mut b);
            b
        });
        let _ = out.read_to_string(&mut a);
        let b = t2.join().unwrap_or_default();
        if json {
            if let Err(e) = common::schema::validate_stream(a.as_bytes()) {
                panic!("JSON schema: {e}\n--- stderr\n{b}");
            }
        }
        format!("--- stdout\n{a}\n--- stderr\n{b}")
    });
    (child, t)
}

fn wait_limited(child: &mut Child) -> Option<i32> {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return st.code();
        }
        if t0.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run one cell: fresh token, broken run, clean re-run, invariants.
fn run_cell(h: &Harness, cmd: Cmd, point: &Point) -> Cell {
    let t0 = Instant::now();
    let mut ctx = prepare(h, cmd);
    let before = h.issuance();
    let start_tries = Tries::read(&ctx.card);
    h.proxy.reset();
    let mut broken = Vec::new();
    let mut reached = false;
    let first_exit;
    let first_text;
    let mut _resumer: Option<Resumer> = None;
    match point {
        Point::Vault(k, fault) => {
            h.proxy.set_rules(vec![Rule {
                when: Match::Nth(*k),
                fault: fault.clone(),
            }]);
            let (mut child, out) = spawn(command(h, cmd, &ctx));
            if matches!(fault, Fault::Pause { .. }) {
                // SIGKILL pivault while request k is held.
                let t = Instant::now();
                loop {
                    if h.proxy.wait_paused(Duration::from_millis(100)).is_some() {
                        let _ = child.kill(); // SIGKILL
                        reached = true;
                        break;
                    }
                    if matches!(child.try_wait(), Ok(Some(_))) || t.elapsed() > RUN_LIMIT {
                        break;
                    }
                }
                first_exit = wait_limited(&mut child);
                h.proxy.release();
            } else {
                first_exit = wait_limited(&mut child);
                reached = h.proxy.log().iter().any(|l| l.n == *k);
            }
            first_text = out.join().expect("pivault output (JSON schema)");
        }
        Point::Apdu(n) => {
            let Some(rig) = apdu_rig() else {
                return finish(
                    cmd,
                    point,
                    false,
                    vec![format!("unsupported: no card with --fault pause-after@{n}")],
                    t0,
                    None,
                );
            };
            // Restart the card (same state) with the pause armed: APDUs count from the
            // card process's start, so nothing else may talk to it before the command.
            let port = ctx.card.port;
            std::fs::write(
                rig.dir.join(format!("fault-{port}")),
                format!("pause-after@{n}"),
            )
            .expect("fault file");
            ctx.card.remove();
            ctx.card.insert();
            let (mut child, out) = spawn(command(h, cmd, &ctx));
            let outf = rig.dir.join(format!("out-{port}"));
            let t = Instant::now();
            loop {
                let said = std::fs::read_to_string(&outf).unwrap_or_default();
                if said.contains("paused apdu=") {
                    let _ = child.kill(); // SIGKILL pivault while the card holds APDU n
                    reached = true;
                    break;
                }
                if matches!(child.try_wait(), Ok(Some(_))) || t.elapsed() > RUN_LIMIT {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            first_exit = wait_limited(&mut child);
            // Resume the card (SIGUSR2), and keep resuming it for the rest of the cell: if
            // the broken run ended before APDU n, the re-run would stop there instead.
            if let Ok(pid) = std::fs::read_to_string(rig.dir.join(format!("pid-{port}"))) {
                _resumer = Some(Resumer::start(pid.trim().to_string()));
            }
            first_text = out.join().expect("pivault output (JSON schema)");
        }
    }
    let first_log = h.proxy.log_text();
    let t_first = t0.elapsed();
    h.proxy.set_rules(Vec::new());
    h.proxy.reset();
    // The same command again, to its end.
    let (mut child, out) = spawn(command(h, cmd, &ctx));
    let second_exit = wait_limited(&mut child);
    let second_text = out.join().expect("pivault output (JSON schema)");
    let completed = usize::from(first_exit == Some(0)) + usize::from(second_exit == Some(0));
    if second_exit != Some(0) {
        broken.push(format!(
            "rerun-finishes: the re-run exited {second_exit:?}: {}",
            last_error(&second_text)
        ));
    }
    let after = match h.vault.issuance() {
        Ok(i) => i.since(&before),
        Err(e) => {
            broken.push(format!("counts-agree: {e}"));
            return finish(cmd, point, reached, broken, t0, first_exit);
        }
    };
    let t_second = t0.elapsed();
    broken.extend(check_issuance(cmd, &after, completed));
    broken.extend(check_card(h, cmd, &ctx, start_tries, &after));
    broken.extend(check_secrets(h, cmd, &ctx, &[&first_text, &second_text]));
    eprintln!(
        "timing {} {}: broken run {:.1}s, re-run {:.1}s, checks {:.1}s",
        cmd.name(),
        point.name(),
        t_first.as_secs_f64(),
        (t_second - t_first).as_secs_f64(),
        (t0.elapsed() - t_second).as_secs_f64()
    );
    if matches!(first_exit, Some(2) | Some(4)) {
        // "Nothing was changed": Vault issued nothing before the re-run.
        let first_issued: usize = after
            .listed
            .len()
            .saturating_sub(usize::from(second_exit == Some(0)) * cmd.slots().len());
        if first_issued > 0 {
            broken.push(format!(
                "exit-code-truthful: the broken run exited {first_exit:?} (nothing changed) \
                 but Vault issued {first_issued} certificate(s) for it"
            ));
        }
    }
    if !broken.is_empty() {
        eprintln!(
            "=== {} {}: first run (exit {first_exit:?}) Vault requests:\n{first_log}\n{}\n=== re-run (exit {second_exit:?}):\n{}",
            cmd.name(),
            point.name(),
            tail(&first_text, 30),
            tail(&second_text, 30)
        );
    }
    finish(cmd, point, reached, broken, t0, first_exit)
}

/// Sends SIGUSR2 to a card every 200 ms until dropped (a card that is not paused ignores
/// it).
struct Resumer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Resumer {
    fn start(pid: String) -> Resumer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = Command::new("kill")
                    .args(["-USR2", &pid])
                    .stderr(Stdio::null())
                    .status();
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Resumer { stop }
    }
}

impl Drop for Resumer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn finish(
    cmd: Cmd,
    point: &Point,
    reached: bool,
    broken: Vec<String>,
    t0: Instant,
    first_exit: Option<i32>,
) -> Cell {
    Cell {
        cmd,
        point: point.clone(),
        reached,
        broken,
        secs: t0.elapsed().as_secs_f64(),
        first_exit,
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn last_error(s: &str) -> String {
    s.lines()
        .rfind(|l| l.contains("error") || l.contains("hint:"))
        .unwrap_or("")
        .trim()
        .chars()
        .take(240)
        .collect()
}

/// Vault issued at most one certificate per slot per completed run, and never signed one
/// CSR twice (a lost answer re-sent).
fn check_issuance(cmd: Cmd, after: &Issuance, completed: usize) -> Vec<String> {
    let mut broken = Vec::new();
    let per_role = after.per_role();
    for (slot, role) in cmd.slots() {
        let n = per_role.get(*role).copied().unwrap_or(0);
        if n > completed.max(1) {
            broken.push(format!(
                "issued-at-most-once: slot {slot} ({role}): Vault issued {n} certificates for \
                 {completed} completed run(s)"
            ));
        }
    }
    for (csr, n) in after.per_csr() {
        if n > 1 {
            broken.push(format!(
                "csr-signed-once: one CSR ({}) was signed {n} times",
                &csr[..csr.len().min(24)]
            ));
        }
    }
    broken
}

/// The card, read by yubico-piv-tool, OpenSC and openssl: each slot holds a certificate
/// Vault issued in this cell, that chains to the CA and matches the slot's key; the PIN
/// retry counter is where it started.
fn check_card(h: &Harness, cmd: Cmd, ctx: &Ctx, start: Tries, after: &Issuance) -> Vec<String> {
    let start_tries = start.pin;
    let mut broken = Vec::new();
    let dir = ctx.dir.path();
    let mut puk = None;
    let pin = match cmd {
        Cmd::Enroll | Cmd::Renew => Some(PIN.to_string()),
        Cmd::Station | Cmd::Unblock => match escrowed(h, ctx.card.serial) {
            Ok(rec) => {
                puk = rec["live"]["puk"].as_str().map(str::to_string);
                let pin = rec["live"]["pin"]
                    .as_str()
                    .or_else(|| rec["pin"].as_str())
                    .map(str::to_string);
                if rec.get("pending").is_some_and(|p| !p.is_null()) {
                    // Which PUK the token holds is in doubt: trying the live one could
                    // spend a try a re-run already spent (the last, on some cards).
                    puk = None;
                    broken.push(format!(
                        "no-pending-left: the escrow record still has pending credentials: {}",
                        rec["pending"]
                            .as_object()
                            .map(|o| o.keys().cloned().collect::<Vec<_>>().join(","))
                            .unwrap_or_default()
                    ));
                }
                // After unblock the PIN is the user's own: only the PUK stays escrowed.
                if (pin.is_none() && cmd != Cmd::Unblock) || rec["live"]["puk"].is_null() {
                    broken.push(
                        "escrow-has-credentials: no live PIN or PUK in the escrow record".into(),
                    );
                }
                if cmd == Cmd::Unblock {
                    Some(NEW_PIN.to_string())
                } else {
                    pin
                }
            }
            Err(e) => {
                broken.push(format!("escrow-readable: {e}"));
                None
            }
        },
    };
    // Retry counter first, without spending a try (yubico-piv-tool status).
    let tries = pin_tries(&ctx.card);
    if cmd == Cmd::Unblock && tries < 3 {
        broken.push(format!(
            "pin-unblocked: PIN tries left {tries} after unblock, want 3"
        ));
    }
    if tries < start_tries {
        broken.push(format!(
            "pin-tries-kept: PIN tries left {tries}, started at {start_tries}"
        ));
    }
    // The PUK retry counter, by GET METADATA through opensc-tool (no try spent), before
    // the check below that may spend one: the harness guesses no PUK wrong on purpose.
    match (start.puk, run::metadata_tries(&ctx.card.reader, true)) {
        (Some(s), Ok(now)) if now < s => broken.push(format!(
            "puk-tries-kept: PUK tries left {now}, started at {s}"
        )),
        (Some(_), Err(e)) => broken.push(format!("puk-tries-kept: unreadable: {e}")),
        // A card with metadata whose counter could not be read at the start: say so
        // rather than skip the invariant silently.
        (None, _) if has_metadata(&matrix_firmware()) => {
            broken.push("puk-tries-kept: unreadable at the start of the cell".into())
        }
        _ => {}
    }
    // The escrowed PUK: CHANGE REFERENCE from it to itself (yubico-piv-tool). A wrong PUK
    // costs one of its 3 tries, never the last: the cell is over after this.
    if let Some(puk) = &puk {
        let mut c = run::tool("yubico-piv-tool");
        c.args([
            "-r",
            &ctx.card.reader,
            "-a",
            "change-puk",
            "-P",
            puk,
            "-N",
            puk,
        ]);
        let o = run::run(c);
        if !o.status.success() {
            broken.push(format!(
                "escrowed-puk-works: the escrowed PUK was refused: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
    }
    if let Some(pin) = &pin {
        if tries > 1 {
            let mut c = run::tool("yubico-piv-tool");
            c.args(["-r", &ctx.card.reader, "-a", "verify-pin", "-P", pin]);
            if !run::run(c).status.success() {
                broken.push("escrowed-pin-works: the PIN does not verify on the token".into());
            }
        }
    }
    for (slot, _) in cmd.slots() {
        let mut c = run::tool("yubico-piv-tool");
        c.args(["-r", &ctx.card.reader, "-a", "read-certificate", "-s", slot]);
        let o = run::run(c);
        let pem = String::from_utf8_lossy(&o.stdout).into_owned();
        if !o.status.success() || !pem.contains("BEGIN CERTIFICATE") {
            broken.push(format!("slot-has-cert: slot {slot} holds no certificate"));
            continue;
        }
        let v = run::openssl_verify(&pem, &h.vault.root_pem, &h.vault.chain_pem, dir);
        if !v.status.success() {
            broken.push(format!("slot-cert-chains: slot {slot}: {}", text(&v)));
        }
        let serial = cert_serial(&pem, dir);
        if !after.listed.contains(&serial) {
            broken.push(format!(
                "slot-cert-issued-here: slot {slot} holds serial {serial}, not one Vault issued in this cell"
            ));
        }
        if let Some(pin) = &pin {
            if !key_matches(&ctx.card.reader, slot, pin, dir) {
                broken.push(format!(
                    "slot-key-matches: slot {slot}: the key does not match the certificate"
                ));
            }
        }
    }
    broken
}

/// No escrowed secret in pivault's output, nor in any file it wrote outside its journal,
/// and the journal owner-only (station; the secrets are random there, so a match is real).
fn check_secrets(h: &Harness, cmd: Cmd, ctx: &Ctx, outputs: &[&str]) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut broken = Vec::new();
    if cmd != Cmd::Station {
        return broken;
    }
    let Ok(rec) = escrowed(h, ctx.card.serial) else {
        return broken; // reported by check_card
    };
    let secrets: Vec<(&str, String)> = ["pin", "puk", "mgmt_key"]
        .iter()
        .filter_map(|k| {
            let v = rec["live"][*k].as_str()?;
            (v.len() >= 6).then(|| (*k, v.to_string()))
        })
        .collect();
    for (i, out) in outputs.iter().enumerate() {
        for (k, v) in &secrets {
            if out.contains(v.as_str()) {
                broken.push(format!(
                    "no-secret-in-output: the {k} appears in run {}'s output",
                    i + 1
                ));
            }
        }
    }
    let journal = ctx.dir.path().join("journal");
    let mut stack = vec![ctx.dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            let in_journal = p.starts_with(&journal);
            for (k, v) in &secrets {
                if !text.contains(v.as_str()) {
                    continue;
                }
                if !in_journal {
                    broken.push(format!("no-secret-in-files: the {k} is in {}", p.display()));
                } else if meta.permissions().mode() & 0o077 != 0 {
                    broken.push(format!(
                        "journal-owner-only: {} holds the {k} with mode {:o}",
                        p.display(),
                        meta.permissions().mode() & 0o777
                    ));
                }
            }
        }
    }
    broken
}

fn escrowed(h: &Harness, serial: u32) -> Result<serde_json::Value, String> {
    let o = h
        .vault
        .bao(&["kv", "get", "-format=json", &format!("yubikeys/{serial}")]);
    if !o.status.success() {
        return Err(format!(
            "bao kv get: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).map_err(|e| format!("escrow record: {e}"))?;
    Ok(v["data"]["data"].clone())
}

/// OpenSC's PKCS#11 module shows 16 virtual slots by default, 4 per reader: with the rig's 8
/// readers, cards in the last four are invisible to pkcs11-tool ("No slot named …").
fn opensc_conf(dir: &Path) -> PathBuf {
    let f = dir.join("opensc.conf");
    std::fs::write(
        &f,
        "app opensc-pkcs11 {\n  pkcs11 {\n    max_virtual_slots = 64;\n  }\n}\n",
    )
    .expect("opensc.conf");
    f
}

/// Sign with the slot's key through OpenSC and verify with the slot's certificate (openssl):
/// the key and the certificate belong together. (run::slot_key_matches_cert, with an OpenSC
/// configuration that sees every reader.)
fn key_matches(reader: &str, slot: &str, pin: &str, dir: &Path) -> bool {
    let id = match slot {
        "9a" => "01",
        "9c" => "02",
        "9d" => "03",
        "9e" => "04",
        other => panic!("no OpenSC id for slot {other}"),
    };
    let pem = run::piv_tool_read_cert(reader, slot);
    let pubkey = run::openssl_pubkey(&pem, dir);
    let pk = dir.join("km.pub");
    std::fs::write(&pk, &pubkey).expect("pub");
    let data = dir.join("km.data");
    std::fs::write(&data, b"does the key match?").expect("data");
    let sig = dir.join("km.sig");
    let _ = std::fs::remove_file(&sig);
    let mut c = run::tool("pkcs11-tool");
    c.env("OPENSC_CONF", opensc_conf(dir));
    c.args([
        "--module",
        &run::opensc_module(),
        "--slot-description",
        reader,
    ]);
    c.args(["--login", "--pin", pin, "--sign", "--id", id]);
    if pubkey.len() > 300 {
        c.args(["-m", "SHA256-RSA-PKCS"]);
    } else {
        c.args(["-m", "ECDSA-SHA256", "--signature-format", "openssl"]);
    }
    c.arg("-i").arg(&data).arg("-o").arg(&sig);
    let o = run::run(c);
    if !o.status.success() {
        eprintln!("pkcs11-tool sign with slot {slot} failed:\n{}", text(&o));
        return false;
    }
    let mut c = run::tool("openssl");
    c.args(["dgst", "-sha256", "-verify"])
        .arg(&pk)
        .arg("-signature")
        .arg(&sig)
        .arg(&data);
    run::run(c).status.success()
}

/// PIN tries left, as yubico-piv-tool reads them (no try spent).
fn pin_tries(card: &Card) -> u32 {
    let mut c = run::tool("yubico-piv-tool");
    c.args(["-r", &card.reader, "-a", "status"]);
    let o = run::run(c);
    let s = String::from_utf8_lossy(&o.stdout);
    s.lines()
        .find_map(|l| l.strip_prefix("PIN tries left:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no PIN tries in yubico-piv-tool status:\n{}", text(&o)))
}

/// Serial of a PEM certificate (openssl), in the rig's form `aa:bb:…`.
fn cert_serial(pem: &str, dir: &Path) -> String {
    let f = dir.join("serial.pem");
    std::fs::write(&f, pem).expect("write");
    let mut c = run::tool("openssl");
    c.args(["x509", "-noout", "-serial", "-in"]).arg(&f);
    let o: Output = run::ok(c);
    let hex = String::from_utf8_lossy(&o.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    let hex = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex
    };
    hex.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// Vault requests of a clean run (the boundaries) and their paths, and the card's APDU
/// count (`apdus=N` on SIGUSR1).
fn clean_run(h: &Harness, cmd: Cmd) -> (usize, Vec<String>) {
    let (k, paths, _) = clean_run_counted(h, cmd);
    (k, paths)
}

fn clean_run_counted(h: &Harness, cmd: Cmd) -> (usize, Vec<String>, u64) {
    h.proxy.set_rules(Vec::new());
    let ctx = prepare(h, cmd);
    h.proxy.reset();
    let (mut child, out) = spawn(command(h, cmd, &ctx));
    let code = wait_limited(&mut child);
    let o = out.join().expect("pivault output (JSON schema)");
    assert_eq!(code, Some(0), "a clean {} run failed:\n{o}", cmd.name());
    let paths = h
        .proxy
        .log()
        .iter()
        .map(|l| format!("{} {}", l.method, l.path))
        .collect();
    (h.proxy.requests(), paths, ctx.card.apdu_count())
}

/// APDU boundaries need a card with `--fault pause-after@N` (branch vcard). The rig's
/// `CardOptions` cannot pass it (yet), so `PIVAULT_FAULT_VCARD=<that binary>` makes every
/// card of this test process start through a wrapper (as `PIVAULT_VCARD`) that adds
/// `--fault X` when a one-shot file `fault-<port>` asks for it, tees the card's stdout to
/// `out-<port>` (where `paused apdu=N` appears) and leaves its pid in `pid-<port>`.
/// Without a card binary that pauses, APDU points are not tried.
struct ApduRig {
    dir: PathBuf,
}

fn apdu_rig() -> Option<&'static ApduRig> {
    static RIG: std::sync::OnceLock<Option<ApduRig>> = std::sync::OnceLock::new();
    RIG.get_or_init(|| {
        let real = PathBuf::from(std::env::var_os("PIVAULT_FAULT_VCARD")?);
        let help = Command::new(&real).arg("--help").output().ok()?;
        if !String::from_utf8_lossy(&help.stdout).contains("pause-after") {
            eprintln!("{} has no --fault pause-after@N", real.display());
            return None;
        }
        let dir = std::env::temp_dir().join(format!("pivault-apdu-rig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("apdu rig dir");
        let wrapper = dir.join("vcard-wrapper");
        std::fs::write(
            &wrapper,
            format!(
                r#"#!/usr/bin/env bash
port=""; prev=""
for a in "$@"; do [ "$prev" = --port ] && port=$a; prev=$a; done
f="{d}/fault-$port"
if [ -n "$port" ] && [ -f "$f" ]; then
    fault=$(cat "$f"); rm -f "$f"
    echo $$ > "{d}/pid-$port"
    : > "{d}/out-$port"
    exec > >(tee -a "{d}/out-$port")
    exec "{real}" "$@" --fault "$fault"
fi
exec "{real}" "$@"
"#,
                d = dir.display(),
                real = real.display()
            ),
        )
        .expect("wrapper");
        let mut perm = std::fs::metadata(&wrapper).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&wrapper, perm).expect("chmod");
        // Before any card starts (vcard_bin() reads it once per process).
        std::env::set_var("PIVAULT_VCARD", &wrapper);
        Some(ApduRig { dir })
    })
    .as_ref()
}

fn apdu_supported() -> bool {
    apdu_rig().is_some()
}

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
}

/// Every point of the matrix for `cmd` (filtered by PIVAULT_FAULT_KINDS).
fn points(h: &Harness, cmd: Cmd) -> Vec<Point> {
    let (k_max, paths, apdus) = clean_run_counted(h, cmd);
    eprintln!(
        "{}: a clean run makes {k_max} Vault requests ({paths:?}) and {apdus} APDUs",
        cmd.name()
    );
    let kinds = env_list("PIVAULT_FAULT_KINDS");
    let mut pts = Vec::new();
    for k in 1..=k_max {
        for f in vault_faults() {
            if kinds
                .as_ref()
                .is_some_and(|ks| !ks.iter().any(|n| f.name().starts_with(n.as_str())))
            {
                continue;
            }
            pts.push(Point::Vault(k, f));
        }
    }
    if kinds
        .as_ref()
        .is_none_or(|ks| ks.iter().any(|k| k == "apdu"))
    {
        if apdu_supported() {
            pts.extend((1..=apdus as usize).map(Point::Apdu));
        } else {
            eprintln!(
                "APDU boundaries: the virtual card has no --fault pause-after@N (branch vcard): \
                 {apdus} points not tried"
            );
        }
    }
    pts
}

/// A small deterministic shuffle (no extra dependency): xorshift on a seed.
fn sample<T>(mut pts: Vec<T>, k: usize, seed: u64) -> Vec<T> {
    let mut x = seed.max(1);
    for i in (1..pts.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pts.swap(i, (x % (i as u64 + 1)) as usize);
    }
    pts.truncate(k);
    pts
}

/// The whole matrix, or a sample: `scripts/fault-matrix`.
#[test]
#[ignore = "minutes: run by scripts/fault-matrix"]
fn matrix() {
    let t0 = Instant::now();
    let h = Harness::new();
    let cmds: Vec<Cmd> = env_list("PIVAULT_FAULT_COMMANDS")
        .unwrap_or_else(|| vec!["enroll".into(), "station".into(), "unblock".into()])
        .iter()
        .map(|c| Cmd::parse(c).unwrap_or_else(|| panic!("unknown command {c}")))
        .collect();
    let want: Option<usize> = std::env::var("PIVAULT_FAULT_SAMPLE")
        .ok()
        .and_then(|s| s.parse().ok());
    let seed: u64 = std::env::var("PIVAULT_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()));
    let mut all: Vec<(Cmd, Point)> = Vec::new();
    for cmd in cmds {
        for p in points(&h, cmd) {
            all.push((cmd, p));
        }
    }
    if let Some(k) = want {
        eprintln!(
            "sampling {k} of {} points (PIVAULT_FAULT_SEED={seed})",
            all.len()
        );
        all = sample(all, k, seed);
    }
    let report = std::env::var_os("PIVAULT_FAULT_REPORT")
        .filter(|r| !r.is_empty())
        .map(PathBuf::from);
    let mut cells = Vec::new();
    for (cmd, p) in &all {
        // A panic is the rig failing (pcscd restarted under us, a client not finding the
        // reader), not pivault: try the cell once more, then record it as a rig error.
        let once =
            || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_cell(&h, *cmd, p)));
        let c = once().or_else(|_| once()).unwrap_or_else(|e| Cell {
            cmd: *cmd,
            point: p.clone(),
            reached: false,
            broken: vec![format!(
                "rig-error: {}",
                e.downcast_ref::<String>()
                    .map(String::as_str)
                    .unwrap_or("panic")
            )],
            secs: 0.0,
            first_exit: None,
        });
        println!("cell {}", c.line());
        if let Some(r) = &report {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(r)
                .expect("report file");
            writeln!(f, "{}", c.json()).expect("write report");
        }
        cells.push(c);
    }
    let held = cells.iter().filter(|c| c.held()).count();
    let mut by: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for c in &cells {
        for b in &c.broken {
            let inv = b.split(':').next().unwrap_or("").to_string();
            by.entry(inv).or_default().0 += 1;
        }
        let e = by.entry(format!("{} cells", c.cmd.name())).or_default();
        e.1 += 1;
    }
    println!("invariants broken (count) and cells per command: {by:?}");
    println!(
        "points tried {} / points held {held} in {:.0} s",
        cells.len(),
        t0.elapsed().as_secs_f64()
    );
    for c in cells.iter().filter(|c| !c.held()) {
        println!("did not hold: {}", c.line());
    }
}

// --- The harness's own tests (run in the normal suite) -------------------------------------

#[test]
fn clean_enroll_has_vault_boundaries_and_holds_every_invariant() {
    let h = Harness::new();
    let (k, paths) = clean_run(&h, Cmd::Enroll);
    // Login, a pre-flight per role (an empty CSR: refused, nothing issued), four signs.
    assert_eq!(
        paths.iter().filter(|p| p.contains("/v1/pki/sign/")).count(),
        8,
        "{paths:?}"
    );
    assert!(k >= 9, "{paths:?}");
    // A fault before anything reaches Vault (503 on request 1, retried by pivault) holds.
    let c = run_cell(&h, Cmd::Enroll, &Point::Vault(1, Fault::Status(503)));
    assert!(c.reached, "{}", c.line());
    assert!(c.held(), "{}", c.line());
}

#[test]
fn the_invariant_checks_can_fail() {
    let h = Harness::new();
    let ctx = prepare(&h, Cmd::Enroll);
    let before = h.issuance();
    // An empty token: every slot check fails.
    let none = h.issuance().since(&before);
    let broken = check_card(&h, Cmd::Enroll, &ctx, Tries::FULL, &none);
    assert_eq!(
        broken
            .iter()
            .filter(|b| b.starts_with("slot-has-cert"))
            .count(),
        4,
        "{broken:?}"
    );
    // Enrolled once, then one slot's CSR signed again by hand: over the limit for slot 9a
    // and one CSR signed twice.
    let o = run::run(command(&h, Cmd::Enroll, &ctx));
    assert!(o.status.success(), "{}", text(&o));
    let after = h.issuance().since(&before);
    assert!(check_issuance(Cmd::Enroll, &after, 1).is_empty());
    assert!(check_card(&h, Cmd::Enroll, &ctx, Tries::FULL, &after).is_empty());
    let o = run::run(command(&h, Cmd::Enroll, &ctx));
    assert!(o.status.success(), "{}", text(&o));
    let twice = h.issuance().since(&before);
    let broken = check_issuance(Cmd::Enroll, &twice, 1);
    assert_eq!(
        broken.len(),
        4,
        "two enrollments counted as one: {broken:?}"
    );
    assert!(check_issuance(Cmd::Enroll, &twice, 2).is_empty());
    // A certificate in a slot that Vault did not issue in this cell is caught.
    let broken = check_card(&h, Cmd::Enroll, &ctx, Tries::FULL, &after);
    assert!(
        broken
            .iter()
            .all(|b| b.starts_with("slot-cert-issued-here"))
            && broken.len() == 4,
        "{broken:?}"
    );
    // A spent PIN try is caught.
    let mut c = run::tool("yubico-piv-tool");
    c.args(["-r", &ctx.card.reader, "-a", "verify-pin", "-P", "999999"]);
    let _ = run::run(c);
    let broken = check_card(&h, Cmd::Enroll, &ctx, Tries::FULL, &twice);
    assert!(
        broken.iter().any(|b| b.starts_with("pin-tries-kept")),
        "{broken:?}"
    );
    // A spent PUK try is caught (read by GET METADATA, no try spent by the check).
    let mut c = run::tool("yubico-piv-tool");
    c.args([
        "-r",
        &ctx.card.reader,
        "-a",
        "change-puk",
        "-P",
        "99999999",
        "-N",
        "99999999",
    ]);
    let _ = run::run(c);
    let broken = check_card(&h, Cmd::Enroll, &ctx, Tries::FULL, &twice);
    assert!(
        broken
            .iter()
            .any(|b| b == "puk-tries-kept: PUK tries left 2, started at 3"),
        "{broken:?}"
    );
}

#[test]
fn killed_while_a_sign_is_held_before_and_after_vault_acted() {
    let h = Harness::new();
    // The first real sign of a clean run: the fifth request to a sign path (the first four
    // are the per-role pre-flights with an empty CSR).
    let (_, paths) = clean_run(&h, Cmd::Enroll);
    let k = 1 + paths
        .iter()
        .enumerate()
        .filter(|(_, p)| p.contains("/v1/pki/sign/"))
        .nth(4)
        .expect("a real sign")
        .0;
    for after_forward in [false, true] {
        let c = run_cell(
            &h,
            Cmd::Enroll,
            &Point::Vault(k, Fault::Pause { after_forward }),
        );
        println!("cell {}", c.line());
        assert!(c.reached, "{}", c.line());
        assert_eq!(c.first_exit, None, "SIGKILLed: {}", c.line());
        // Findings are recorded, not asserted: enroll has no journal today (issue 10), so
        // a kill after Vault acted leaves an orphaned certificate. The harness must still
        // have checked everything it checks.
        assert!(
            c.broken.iter().all(|b| !b.starts_with("counts-agree")),
            "{}",
            c.line()
        );
    }
}

#[test]
#[ignore = "needs PIVAULT_FAULT_VCARD: a pivault-vcard with --fault pause-after@N (branch vcard)"]
fn killed_at_apdu_boundaries() {
    let h = Harness::new();
    assert!(
        apdu_supported(),
        "set PIVAULT_FAULT_VCARD to a pivault-vcard built from branch vcard"
    );
    let (_, _, apdus) = clean_run_counted(&h, Cmd::Enroll);
    assert!(apdus > 10, "a 4-slot enroll takes more than {apdus} APDUs");
    let picks: Vec<usize> = std::env::var("PIVAULT_FAULT_APDUS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, apdus as usize / 2, apdus as usize]);
    for n in picks {
        let c = run_cell(&h, Cmd::Enroll, &Point::Apdu(n));
        println!("cell {}", c.line());
        assert!(c.reached, "the card never paused at APDU {n}: {}", c.line());
    }
}
