//! `pivault attest` on the virtual YubiKey (5.7.4 profile, the card's TEST root given with
//! `--attestation-roots`): every key type the token generates is attested, and each kind
//! of forged attestation is refused with the check that failed.
//!
//! What pivault reports is compared with what other clients saw: the public key the card
//! answered to GENERATE (the `yubikey` crate, before pivault runs), and the attestation
//! certificate `yubico-piv-tool -a attest` reads, taken apart by `openssl`. Forgeries come
//! from the card itself (`pivault-vcard --forge-attestation`, a test-only flag) or from a
//! chain the attestation does not belong to. Every `--json` document is checked against
//! schemas/attest.schema.json by the rig (`common::run::run`).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::card::{vcard_bin, Card, CardOptions};
use common::run::{ok, pivault, run, text, tool};
use der::Encode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use yubikey::piv::{AlgorithmId, RetiredSlotId, SlotId};

const TEST_ROOT: &str = "pivault-vcard TEST Attestation Root - not Yubico";
const VERSION: &str = "5.7.4";

fn start(extra: &[&str]) -> Card {
    Card::start_with(CardOptions {
        version: Some(VERSION.into()),
        args: extra.iter().map(|s| s.to_string()).collect(),
        ..CardOptions::default()
    })
}

/// The card's TEST chain (root + intermediates) as PEM, written by the card binary from a
/// copy of the running card's state (the copy cannot reach vpcd on port 1 and exits 3).
fn exported_chain(card: &Card, dir: &Path) -> PathBuf {
    card.export_attestation_chain(dir)
}

/// Generates a key with the `yubikey` crate (factory management key); its SPKI, DER.
fn generate(
    card: &Card,
    slot: SlotId,
    alg: AlgorithmId,
    pin: yubikey::PinPolicy,
    touch: yubikey::TouchPolicy,
) -> Vec<u8> {
    let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial(card.serial)).expect("open");
    let mgm = yubikey::MgmKey::get_default(&yk).expect("default management key");
    yk.authenticate(&mgm).expect("factory management key");
    yubikey::piv::generate(&mut yk, slot, alg, pin, touch)
        .unwrap_or_else(|e| panic!("generate {alg:?}: {e}"))
        .to_der()
        .expect("SPKI encodes")
}

fn attest_cmd(card: &Card, roots: Option<&Path>, extra: &[&str]) -> Command {
    let mut c = pivault(&[]);
    c.args(["attest", "--reader", &card.reader]).args(extra);
    if let Some(r) = roots {
        c.arg("--attestation-roots").arg(r);
    }
    c
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("JSON ({e}): {}", text(o)))
}

fn slot_of<'a>(doc: &'a Value, slot: &str) -> &'a Value {
    doc["slots"]
        .as_array()
        .expect("slots")
        .iter()
        .find(|s| s["slot"] == slot)
        .unwrap_or_else(|| panic!("slot {slot} in {doc}"))
}

fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The SubjectPublicKeyInfo (DER) of the attestation certificate yubico-piv-tool reads
/// for `slot`, extracted by openssl: another client's view of the attested key.
fn piv_tool_attested_spki(card: &Card, slot: &str, dir: &Path) -> Vec<u8> {
    let mut c = tool("yubico-piv-tool");
    c.args(["-r", &card.reader, "-a", "attest", "-s", slot]);
    let pem = ok(c).stdout;
    let cert = dir.join(format!("att-{slot}.pem"));
    fs::write(&cert, pem).expect("write");
    let mut c = tool("openssl");
    c.args(["x509", "-noout", "-pubkey", "-in"]).arg(&cert);
    let pub_pem = ok(c).stdout;
    let mut c = tool("openssl");
    let pubfile = dir.join(format!("pub-{slot}.pem"));
    fs::write(&pubfile, pub_pem).expect("write");
    c.args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(&pubfile);
    // openssl cannot parse an X25519 SPKI with -pubin on every version; the certificate's
    // own DER is then the reference.
    ok(c).stdout
}

/// One slot of the honest test: where, which key type, which policies.
struct Key {
    slot: &'static str,
    id: SlotId,
    alg: AlgorithmId,
    name: &'static str,
    pin: (yubikey::PinPolicy, &'static str),
    touch: (yubikey::TouchPolicy, &'static str),
}

#[test]
fn every_algorithm_is_attested_on_5_7_4() {
    use yubikey::{PinPolicy as P, TouchPolicy as T};
    let card = start(&[]);
    let dir = tempfile::tempdir().expect("temporary directory");
    let chain = exported_chain(&card, dir.path());
    let k = |slot, id, alg, name, pin, touch| Key {
        slot,
        id,
        alg,
        name,
        pin,
        touch,
    };
    let keys = [
        k(
            "9a",
            SlotId::Authentication,
            AlgorithmId::EccP256,
            "p256",
            (P::Once, "once"),
            (T::Never, "never"),
        ),
        k(
            "9c",
            SlotId::Signature,
            AlgorithmId::EccP384,
            "p384",
            (P::Always, "always"),
            (T::Always, "always"),
        ),
        k(
            "9d",
            SlotId::KeyManagement,
            AlgorithmId::Rsa1024,
            "rsa1024",
            (P::Never, "never"),
            (T::Cached, "cached"),
        ),
        k(
            "9e",
            SlotId::CardAuthentication,
            AlgorithmId::Rsa2048,
            "rsa2048",
            (P::Never, "never"),
            (T::Never, "never"),
        ),
        k(
            "82",
            SlotId::Retired(RetiredSlotId::R1),
            AlgorithmId::Rsa3072,
            "rsa3072",
            (P::Once, "once"),
            (T::Cached, "cached"),
        ),
        k(
            "83",
            SlotId::Retired(RetiredSlotId::R2),
            AlgorithmId::Rsa4096,
            "rsa4096",
            (P::Once, "once"),
            (T::Never, "never"),
        ),
        k(
            "84",
            SlotId::Retired(RetiredSlotId::R3),
            AlgorithmId::Ed25519,
            "ed25519",
            (P::Always, "always"),
            (T::Never, "never"),
        ),
        k(
            "85",
            SlotId::Retired(RetiredSlotId::R4),
            AlgorithmId::X25519,
            "x25519",
            (P::Once, "once"),
            (T::Never, "never"),
        ),
    ];
    let spkis: Vec<Vec<u8>> = keys
        .iter()
        .map(|key| generate(&card, key.id, key.alg, key.pin.0, key.touch.0))
        .collect();

    // Every slot with a key, JSON.
    let t = std::time::Instant::now();
    let o = run(attest_cmd(&card, Some(&chain), &["--json"]));
    eprintln!("pivault attest, 8 keys, 24 slots probed: {:?}", t.elapsed());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let doc = json_of(&o);
    assert_eq!(doc["kind"], "attest");
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["token_serial"], card.serial);
    assert_eq!(
        doc["slots"].as_array().expect("slots").len(),
        keys.len(),
        "{doc}"
    );
    for (key, spki) in keys.iter().zip(&spkis) {
        let s = slot_of(&doc, key.slot);
        assert_eq!(s["verified"], true, "{s}");
        let a = &s["attested"];
        assert_eq!(a["algorithm"], key.name, "{s}");
        assert_eq!(a["serial"], card.serial, "{s}");
        assert_eq!(a["firmware"], VERSION, "{s}");
        assert_eq!(a["form_factor"], "usb-a-keychain", "{s}");
        assert_eq!(a["edition"], "standard", "{s}");
        assert_eq!(a["pin_policy"], key.pin.1, "{s}");
        assert_eq!(a["touch_policy"], key.touch.1, "{s}");
        assert_eq!(a["root"], TEST_ROOT, "{s}");
        assert_eq!(a["key_compared_with_slot"], true, "{s}");
        assert!(
            a["chain"][1]
                .as_str()
                .is_some_and(|c| c.contains("TEST PIV Attestation B 1")),
            "5.7.4 chains through the newer intermediate: {s}"
        );
        assert_eq!(a["advisories"].as_array().map(Vec::len), Some(0), "{s}");
        // The key the card generated, as GENERATE answered it.
        assert_eq!(a["public_key_sha256"], sha256_hex(spki), "{}", key.slot);
    }
    // Another client's reading of the attestation certifies the same keys.
    for (key, spki) in keys.iter().zip(&spkis) {
        if key.name == "x25519" {
            continue; // see piv_tool_attested_spki
        }
        assert_eq!(
            &piv_tool_attested_spki(&card, key.slot, dir.path()),
            spki,
            "{}",
            key.slot
        );
    }

    // One slot, text.
    let o = run(attest_cmd(&card, Some(&chain), &["--slot", "9c"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("slot 9c  VERIFIED  p384"), "{out}");
    assert!(out.contains(TEST_ROOT), "{out}");
    assert!(!out.contains("slot 9a"), "only the slot asked for: {out}");
}

/// The refusal of a forged attestation: exit 1, one line naming the slot and the check,
/// a hint, and the same check in the JSON document.
fn assert_refused(card: &Card, roots: Option<&Path>, check: &str, reason: &str) -> Value {
    let o = run(attest_cmd(card, roots, &["--slot", "9a"]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let line = format!("pivault: error: slot 9a: attestation refused ({check} check)");
    assert!(err.contains(&line), "want {line:?}: {}", text(&o));
    assert!(err.contains(reason), "want {reason:?}: {}", text(&o));
    assert!(err.contains("  hint: "), "{}", text(&o));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("VERIFIED"),
        "{}",
        text(&o)
    );

    let o = run(attest_cmd(card, roots, &["--slot", "9a", "--json"]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let doc = json_of(&o);
    assert_eq!(doc["ok"], false, "{doc}");
    let s = slot_of(&doc, "9a");
    assert_eq!(s["verified"], false, "{s}");
    assert_eq!(s["refused"]["check"], check, "{s}");
    doc
}

fn p256_in_9a(card: &Card) -> Vec<u8> {
    generate(
        card,
        SlotId::Authentication,
        AlgorithmId::EccP256,
        yubikey::PinPolicy::Once,
        yubikey::TouchPolicy::Never,
    )
}

/// The card signs (with its genuine F9 key, under its genuine chain) an attestation of a
/// key that is not the one in the slot.
#[test]
fn attestation_of_another_key_is_refused() {
    let card = start(&["--forge-attestation", "other-key"]);
    let dir = tempfile::tempdir().expect("temporary directory");
    let chain = exported_chain(&card, dir.path());
    let spki = p256_in_9a(&card);
    // The forgery is real: the certificate another client reads certifies another key.
    assert_ne!(piv_tool_attested_spki(&card, "9a", dir.path()), spki);
    assert_refused(
        &card,
        Some(&chain),
        "public-key",
        "the attested public key is not the key the token generated in slot 9a",
    );
}

/// The F9 certificate and the attestation speak for serial+1: a genuine-looking chain of
/// another token, served by this one.
#[test]
fn attestation_for_another_serial_is_refused() {
    let card = start(&["--forge-attestation", "other-serial"]);
    let dir = tempfile::tempdir().expect("temporary directory");
    let chain = exported_chain(&card, dir.path());
    p256_in_9a(&card);
    assert_refused(
        &card,
        Some(&chain),
        "serial",
        &format!(
            "the attestation is for token serial {}, not {}",
            card.serial + 1,
            card.serial
        ),
    );
}

/// The PIN policy byte (41482.3.8) changed from once to never after the F9 key signed.
#[test]
fn tampered_pin_policy_is_refused() {
    let card = start(&["--forge-attestation", "tampered-policy"]);
    let dir = tempfile::tempdir().expect("temporary directory");
    let chain = exported_chain(&card, dir.path());
    p256_in_9a(&card);
    // The forgery is real: openssl sees the altered certificate fail its signature check.
    let mut c = tool("yubico-piv-tool");
    c.args(["-r", &card.reader, "-a", "attest", "-s", "9a"]);
    let att = dir.path().join("att.pem");
    fs::write(&att, ok(c).stdout).expect("write");
    let mut c = tool("yubico-piv-tool");
    c.args(["-r", &card.reader, "-a", "read-certificate", "-s", "f9"]);
    let f9 = dir.path().join("f9.pem");
    fs::write(&f9, ok(c).stdout).expect("write");
    let mut c = tool("openssl");
    c.arg("verify")
        .arg("-CAfile")
        .arg(&chain)
        .arg("-untrusted")
        .arg(&f9)
        .arg("-partial_chain")
        .arg(&att);
    let v = run(c);
    assert_ne!(v.status.code(), Some(0), "openssl accepts it: {}", text(&v));
    assert_refused(
        &card,
        Some(&chain),
        "signature",
        "the slot attestation certificate is not signed by",
    );
}

/// An honest card, checked against a root that did not issue its chain: a second card's
/// TEST chain (same names, other keys), and Yubico's shipped bundle (no such root).
#[test]
fn chain_to_a_root_not_in_the_bundle_is_refused() {
    let (a, b) = (start(&[]), start(&[]));
    let dir = tempfile::tempdir().expect("temporary directory");
    let (chain_a, chain_b) = (
        exported_chain(&a, dir.path()),
        exported_chain(&b, dir.path()),
    );
    p256_in_9a(&a);
    // Its own chain verifies: what follows fails only for the root.
    let o = run(attest_cmd(&a, Some(&chain_a), &["--slot", "9a"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    assert_refused(
        &a,
        Some(&chain_b),
        "signature",
        "the F9 attestation certificate is not signed by 'pivault-vcard TEST PIV Attestation B 1 - not Yubico'",
    );
    let doc = assert_refused(
        &a,
        None,
        "root",
        "which is not in the attestation trust bundle",
    );
    assert_eq!(doc["trust_bundle"], "built in");
    assert!(
        slot_of(&doc, "9a")["refused"]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("--attestation-roots")),
        "{doc}"
    );
}

/// A roots file that cannot be used is a usage error (exit 2), found before any token is
/// opened.
#[test]
fn unusable_roots_file_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let f = dir.path().join("roots.pem");
    fs::write(&f, "no certificates here\n").expect("write");
    let mut c = pivault(&[]);
    c.args([
        "attest",
        "--reader",
        "no such reader",
        "--attestation-roots",
    ])
    .arg(&f);
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no self-signed root certificate"),
        "{}",
        text(&o)
    );
}

/// `pivault status` names the advisory that applies to a key on the token's firmware:
/// ECDSA before 5.7.0 is YSA-2024-03 (EUCLEAK); the same key type on 5.7.4 has none.
#[test]
fn status_shows_the_firmware_advisory() {
    for (version, want) in [("5.4.3", Some("YSA-2024-03")), ("5.7.4", None)] {
        let card = Card::start_with(CardOptions {
            version: Some(version.into()),
            ..CardOptions::default()
        });
        p256_in_9a(&card);
        let mut c = pivault(&[]);
        c.args(["status", "--json", "--reader", &card.reader]);
        let o = run(c);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let doc = json_of(&o);
        let s = slot_of(&doc, "9a");
        let ids: Vec<&str> = s["advisories"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["id"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(ids, want.into_iter().collect::<Vec<_>>(), "{version}: {s}");
        let mut c = pivault(&[]);
        c.args(["status", "--reader", &card.reader]);
        let out = String::from_utf8_lossy(&ok(c).stdout).into_owned();
        assert_eq!(
            out.contains("ADVISORY  YSA-2024-03"),
            want.is_some(),
            "{version}: {out}"
        );
    }
}

/// An imported key (here with ykman) is never attested by a YubiKey: pivault
/// says so, for that slot, and still verifies the generated key next to it.
#[test]
fn imported_key_is_reported_as_not_attested() {
    let card = start(&[]);
    let dir = tempfile::tempdir().expect("temporary directory");
    let chain = exported_chain(&card, dir.path());
    // A token without keys proves nothing: exit 1, and an empty, not-ok report.
    let o = run(attest_cmd(&card, Some(&chain), &["--json"]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(json_of(&o)["ok"], false, "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no slot holds a key"),
        "{}",
        text(&o)
    );
    p256_in_9a(&card);
    let key = dir.path().join("key.pem");
    let mut c = tool("openssl");
    c.args([
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
    ])
    .arg(&key);
    ok(c);
    let mut c = tool("ykman");
    c.args(["--reader", &card.reader, "piv", "keys", "import", "-m"])
        .arg("010203040506070801020304050607080102030405060708")
        .arg("9c")
        .arg(&key);
    ok(c);
    let o = run(attest_cmd(&card, Some(&chain), &["--json"]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let doc = json_of(&o);
    assert_eq!(slot_of(&doc, "9a")["verified"], true, "{doc}");
    let s = slot_of(&doc, "9c");
    assert_eq!(s["refused"]["check"], "attested", "{s}");
    assert!(
        s["refused"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("imported")),
        "{s}"
    );
}

/// Firmware before 5.3 cannot show a slot's public key: the attestation still verifies,
/// and the report says the key was not compared with the slot's.
#[test]
fn firmware_without_metadata_verifies_without_the_key_comparison() {
    let version = "5.2.7";
    let card = Card::start_with(CardOptions {
        version: Some(version.into()),
        ..CardOptions::default()
    });
    let dir = tempfile::tempdir().expect("temporary directory");
    let state = dir.path().join("state");
    fs::copy(&card.state, &state).expect("copy the card's state");
    let chain = dir.path().join("chain.pem");
    let out = run({
        let mut c = Command::new(vcard_bin());
        c.arg("--state")
            .arg(&state)
            .args(["--serial", &card.serial.to_string(), "--version", version])
            .arg("--export-attestation-chain")
            .arg(&chain)
            .args(["--port", "1", "--connect-timeout", "0"]);
        c
    });
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let spki = p256_in_9a(&card);
    let o = run(attest_cmd(&card, Some(&chain), &["--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let doc = json_of(&o);
    let a = &slot_of(&doc, "9a")["attested"];
    assert_eq!(a["key_compared_with_slot"], false, "{a}");
    assert_eq!(a["public_key_sha256"], sha256_hex(&spki), "{a}");
    assert_eq!(a["firmware"], version, "{a}");
    // ECDSA before 5.7.0.
    assert_eq!(a["advisories"][0]["id"], "YSA-2024-03", "{a}");
    assert!(
        a["chain"][1]
            .as_str()
            .is_some_and(|c| c.contains("TEST PIV Root CA")),
        "before 5.7.4 the F9 is issued by the PIV Root CA: {a}"
    );
}
