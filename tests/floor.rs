//! Where pivault's APDUs and Vault requests go (issue 13): counts from the card's own
//! per-instruction counter and from OpenBao's audit log, never from pivault's report.
//! Counts are asserted against the floor; times are not measured here (scripts/bench).

mod common;

use common::card::Card;
use common::run::{self, text};
use common::vault::{Vault, VaultOptions};
use std::collections::BTreeMap;
use std::path::Path;

/// One test at a time: the pipeline peer's ykman (4.0.9) enumerates every reader, which
/// SELECTs other cards and would add to their counts. (Another checkout's ykman on the
/// same rig can still do so: a count far above the floor with extra SELECTs is that.)
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn ins_name(ins: u8) -> &'static str {
    match ins {
        0xA4 => "SELECT",
        0xFD => "GET VERSION",
        0xF8 => "GET SERIAL",
        0x20 => "VERIFY",
        0x24 => "CHANGE REFERENCE",
        0x2C => "RESET RETRY",
        0x87 => "GENERAL AUTHENTICATE",
        0x47 => "GENERATE",
        0xCB => "GET DATA",
        0xDB => "PUT DATA",
        0xC0 => "GET RESPONSE",
        0xF7 => "GET METADATA",
        0xFF => "SET MGM KEY",
        0xF9 => "ATTEST",
        _ => "other",
    }
}

fn table(what: &str, slots: u64, total: u64, by_ins: &BTreeMap<u8, u64>) {
    eprintln!(
        "{what}: {total} APDUs, {:.1} per slot",
        total as f64 / slots as f64
    );
    for (ins, n) in by_ins {
        eprintln!("  {ins:02X} {:<22} {n}", ins_name(*ins));
    }
}

/// Requests in the audit log (request entries), as "operation path", in order.
fn audit_requests(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "request")
        .map(|v| {
            format!(
                "{} {}",
                v["request"]["operation"].as_str().unwrap_or("?"),
                v["request"]["path"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

fn enroll_counts(vault: &Vault, slots: &[&str]) -> (u64, BTreeMap<u8, u64>, Vec<String>) {
    let card = Card::start();
    let log = vault.audit_log.clone().expect("audit log");
    let before = audit_requests(&log).len();
    let (a0, i0) = card.apdu_counts();
    let mut env = vault.pivault_env();
    env.push(("PIVAULT_PIN".into(), "123456".into()));
    let mut args = vec!["--json", "--cn", "Floor User", "--force"];
    for s in slots {
        args.extend(["--slot", s]);
    }
    let o = run::run(run::enroll_cmd(&card, &env, &args));
    assert!(o.status.success(), "{}", text(&o));
    let (a1, i1) = card.apdu_counts();
    let by_ins = i1
        .iter()
        .map(|(k, v)| (*k, v - i0.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    let reqs = audit_requests(&log)[before..].to_vec();
    (a1 - a0, by_ins, reqs)
}

#[test]
fn enroll_apdus_by_instruction_at_the_floor() {
    let _one = one_at_a_time();
    let vault = Vault::start_with(VaultOptions {
        audit: true,
        ..Default::default()
    });
    let (one, one_ins, one_reqs) = enroll_counts(&vault, &["9a"]);
    table("enroll, 1 slot (P-256)", 1, one, &one_ins);
    eprintln!("  Vault requests: {one_reqs:?}");
    let (four, four_ins, four_reqs) = enroll_counts(&vault, &["9a", "9c", "9d", "9e"]);
    table("enroll, 4 slots (P-256)", 4, four, &four_ins);
    eprintln!("  Vault requests: {four_reqs:?}");
    // The floor (BENCHMARKS.md): one SELECT, one VERIFY, one mutual authentication per
    // session; per slot GENERATE, the on-card signature, the certificate's PUT DATA chain.
    // Attestation before signing (issue 12, h-policy) is a promise of its own, on top of
    // the floor: per slot ATTEST and one GET RESPONSE (the crate's short Le), per session
    // the F9 certificate (GET DATA and two GET RESPONSE).
    let attest = |ins: &BTreeMap<u8, u64>| {
        let n = ins.get(&0xF9).copied().unwrap_or(0);
        if n > 0 {
            2 * n + 3
        } else {
            0
        }
    };
    assert!(
        four - attest(&four_ins) <= 4 * 7,
        "{four} APDUs for 4 slots: {four_ins:?}"
    );
    assert!(
        one - attest(&one_ins) <= 15,
        "{one} APDUs for 1 slot: {one_ins:?}"
    );
    // Vault (audit log): the login, one pre-flight per distinct role (9c and 9d share the
    // S/MIME role), one sign per slot: 1 + 1 + 1 and 1 + 3 + 4.
    assert_eq!(one_reqs.len(), 3, "{one_reqs:?}");
    assert_eq!(four_reqs.len(), 8, "{four_reqs:?}");
}

/// A station profile for one token and four P-256 slots (the contract's default roles).
fn station_profile(dir: &Path, serial: u32) -> std::path::PathBuf {
    run::station_profile(dir, &[serial], &["9a", "9c", "9d", "9e"])
}

#[test]
fn station_vault_requests_per_token_at_the_floor() {
    let _one = one_at_a_time();
    let vault = Vault::start_with(VaultOptions {
        audit: true,
        ..Default::default()
    });
    let card = Card::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = station_profile(dir.path(), card.serial);
    let log = vault.audit_log.clone().expect("audit log");
    let before = audit_requests(&log).len();
    let (a0, i0) = card.apdu_counts();
    let mut c = run::pivault(&run::anchored_env(&vault));
    c.args(["station", "--profile"]).arg(&profile);
    c.arg("--report").arg(dir.path().join("report.jsonl"));
    c.arg("--journal-dir").arg(dir.path().join("journal"));
    c.args(["--reader", &card.reader]);
    c.args(["--max-tokens", "1", "--idle-exit", "60"]);
    let o = run::run(c);
    assert!(o.status.success(), "{}", text(&o));
    let (a1, i1) = card.apdu_counts();
    let by_ins: BTreeMap<u8, u64> = i1
        .iter()
        .map(|(k, v)| (*k, v - i0.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    table("station, 1 token, 4 slots (P-256)", 4, a1 - a0, &by_ins);
    let reqs = audit_requests(&log)[before..].to_vec();
    let after_login: Vec<&String> = reqs
        .iter()
        .filter(|r| !r.ends_with("auth/approle/login"))
        .collect();
    eprintln!(
        "station, 1 token, 4 slots: {} Vault requests after the AppRole login:",
        after_login.len()
    );
    for r in &after_login {
        eprintln!("  {r}");
    }
    // Per run, not per token: the CA chain and one pre-flight sign per role.
    let roles: std::collections::BTreeSet<&String> = after_login
        .iter()
        .filter(|r| r.contains("/sign/"))
        .copied()
        .collect();
    let per_token = after_login.len() - 1 - roles.len();
    let kv = after_login
        .iter()
        .filter(|r| r.contains("yubikeys/"))
        .count();
    eprintln!(
        "  per token: {per_token} ({kv} KV), per run: {}",
        1 + roles.len()
    );
    // Read, escrow before apply, the PIN's promotion, 4 signs, a copy of each certificate
    // off the station, the final record (BENCHMARKS.md says which of these stand above 7).
    assert!(per_token <= 12, "{after_login:?}");
    assert!(kv <= 8, "{after_login:?}");
}

/// Builds a peer's command for a card and an environment.
type PeerCmd<'a> = dyn FnMut(&Card, &[(String, String)]) -> std::process::Command + 'a;

/// One peer run on a fresh card: APDUs (per instruction) and Vault requests (audit log).
fn peer_counts(vault: &Vault, cmd: &mut PeerCmd<'_>) -> (u64, BTreeMap<u8, u64>, Vec<String>) {
    let card = Card::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = Vec::new();
    for (k, v) in vault.pivault_env() {
        if k == "PIVAULT_SECRET_ID" {
            let f = dir.path().join("secret_id");
            std::fs::write(&f, &v).expect("secret file");
            env.push((
                "PIVAULT_SECRET_ID_FILE".to_string(),
                f.display().to_string(),
            ));
        } else {
            env.push((k, v));
        }
    }
    env.push(("PIVAULT_PIN".into(), "123456".into()));
    let log = vault.audit_log.clone().expect("audit log");
    let before = audit_requests(&log).len();
    let (a0, i0) = card.apdu_counts();
    let o = run::run(cmd(&card, &env));
    assert!(o.status.success(), "{}", text(&o));
    let (a1, i1) = card.apdu_counts();
    let by_ins = i1
        .iter()
        .map(|(k, v)| (*k, v - i0.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    (a1 - a0, by_ins, audit_requests(&log)[before..].to_vec())
}

/// The peers of scripts/bench (yubikit in one Python process; yubico-piv-tool + curl),
/// counted the same way. Figures only; skipped without ykman 5.9.2's venv
/// (scripts/ykman-conformance makes it).
#[test]
fn peers_apdus_and_vault_requests() {
    let _one = one_at_a_time();
    let home = std::env::var("HOME").unwrap_or_default();
    let py = Path::new(&home).join(".cache/pivault/ykman-5.9.2/bin/python");
    if !py.exists() {
        eprintln!("skipped: no {}", py.display());
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let vault = Vault::start_with(VaultOptions {
        audit: true,
        ..Default::default()
    });
    for slots in [&["9a"][..], &["9a", "9c", "9d", "9e"][..]] {
        let n = slots.len() as u64;
        let (a, ins, reqs) = peer_counts(&vault, &mut |card, env| {
            let mut c = std::process::Command::new(&py);
            c.arg(root.join("scripts/bench-peer-yubikit.py"));
            c.args(["--reader", &card.reader, "--cn", "Floor User"]);
            for s in slots {
                c.args(["--slot", s]);
            }
            c.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            c
        });
        table(&format!("yubikit peer, {n} slot(s)"), n, a, &ins);
        eprintln!("  Vault requests: {reqs:?}");
        let (a, ins, reqs) = peer_counts(&vault, &mut |card, env| {
            let mut c = std::process::Command::new(root.join("scripts/bench-peer-pipeline"));
            c.args(["--reader", &card.reader, "--cn", "Floor User"]);
            c.args(slots.iter());
            c.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            c
        });
        table(&format!("pipeline peer, {n} slot(s)"), n, a, &ins);
        eprintln!("  Vault requests: {reqs:?}");
    }
}
