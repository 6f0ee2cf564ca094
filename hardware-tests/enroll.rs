//! Enroll and status scenarios on a REAL YubiKey. They OVERWRITE slots 9a, 9c, 9d and 9e.
//!
//! They run only with `--ignored` and only on tokens whose serials are listed in
//! `PIVAULT_HW_SERIALS` (comma-separated); any other token present is left alone. Vault
//! is a local OpenBao dev server provisioned by fixtures/vault/provision.sh, as in the
//! rig tests. The token's PIN comes from `PIVAULT_HW_PIN` (default 123456) and its
//! management key from `PIVAULT_HW_MGMT_KEY` (default: the factory key).
//!
//!     PIVAULT_HW_SERIALS=12345678 cargo test --test hardware -- --ignored --test-threads=1

#[path = "../tests/common/mod.rs"]
mod common;

use common::run::{self, pivault, text};
use common::vault::Vault;
use serde_json::Value;

/// The serials the person running the tests allowed to be overwritten, present now.
fn allowed_tokens() -> Vec<(u32, String)> {
    let list = std::env::var("PIVAULT_HW_SERIALS").unwrap_or_else(|_| {
        panic!("set PIVAULT_HW_SERIALS to the serial(s) of YubiKeys these tests may overwrite")
    });
    let allowed: Vec<u32> = list
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad serial '{s}' in PIVAULT_HW_SERIALS"))
        })
        .collect();
    let mut c = pivault(&[]);
    c.args(["list", "--json"]);
    let o = run::run(c);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    let present: Vec<(u32, String)> = v["tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    Some((
                        t["serial"].as_u64()? as u32,
                        t["reader"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let chosen: Vec<_> = present
        .into_iter()
        .filter(|(s, _)| allowed.contains(s))
        .collect();
    assert!(!chosen.is_empty(), "none of {allowed:?} is inserted");
    chosen
}

fn env(vault: &Vault) -> Vec<(String, String)> {
    let mut e = vault.pivault_env();
    e.push((
        "PIVAULT_PIN".into(),
        std::env::var("PIVAULT_HW_PIN").unwrap_or_else(|_| "123456".into()),
    ));
    if let Ok(k) = std::env::var("PIVAULT_HW_MGMT_KEY") {
        e.push(("PIVAULT_MGMT_KEY".into(), k));
    }
    e
}

#[test]
#[ignore = "overwrites a real YubiKey: set PIVAULT_HW_SERIALS and run with --ignored"]
fn hardware_enroll_four_slots_and_status() {
    let vault = Vault::start();
    let dir = tempfile::tempdir().expect("tempdir");
    for (serial, reader) in allowed_tokens() {
        let mut c = pivault(&env(&vault));
        c.args([
            "enroll",
            "--json",
            "--force",
            "--serial",
            &serial.to_string(),
        ]);
        if std::env::var("PIVAULT_HW_MGMT_KEY").is_err() {
            c.arg("--default-mgmt-key");
        }
        c.args([
            "--slot",
            "9a",
            "--slot",
            "9c:role=code-signing,algorithm=rsa2048",
        ]);
        c.args([
            "--slot",
            "9d:algorithm=p384",
            "--slot",
            "9e",
            "--cn",
            "Hardware Test {serial}",
        ]);
        c.args(["--email", "hw@example.org"]);
        let o = run::ok(c);
        let report: Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(report["ok"], true, "{}", text(&o));
        for r in report["slots"].as_array().expect("slots") {
            let slot = r["slot"].as_str().expect("slot");
            let pem = run::piv_tool_read_cert(&reader, slot);
            assert_eq!(
                run::openssl_fingerprint(&pem, dir.path()),
                r["sha256_fingerprint"].as_str().expect("fp")
            );
            let v = run::openssl_verify(&pem, &vault.root_pem, &vault.chain_pem, dir.path());
            assert!(v.status.success(), "{}", text(&v));
        }
        let mut c = pivault(&[]);
        c.args(["status", "--json", "--serial", &serial.to_string()]);
        let st: Value = serde_json::from_slice(&run::ok(c).stdout).expect("json");
        for s in st["slots"].as_array().expect("slots") {
            if s.get("certificate_matches_key").is_some() {
                assert_eq!(s["certificate_matches_key"], true, "{st}");
            }
        }
        // The keys just generated are attested by the token and chain to one of Yubico's
        // roots in the shipped bundle (no --attestation-roots).
        let mut c = pivault(&[]);
        c.args(["attest", "--json", "--serial", &serial.to_string()]);
        let o = run::run(c);
        let att: Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(att["ok"], true, "{}", text(&o));
        assert_eq!(att["trust_bundle"], "built in");
        for slot in ["9a", "9c", "9d", "9e"] {
            let s = att["slots"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["slot"] == slot))
                .unwrap_or_else(|| panic!("slot {slot}: {att}"));
            assert_eq!(s["attested"]["serial"], serial, "{s}");
            let root = s["attested"]["root"].as_str().unwrap_or("");
            assert!(
                [
                    "Yubico PIV Root CA Serial 263751",
                    "Yubico Attestation Root 1",
                    "Yubico U2F Root CA Serial 457200631"
                ]
                .contains(&root),
                "{s}"
            );
        }
    }
}
