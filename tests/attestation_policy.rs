//! Attestation in enrollment and policy before signing (issue 12, Deliver 3 and 4), on the
//! rig: virtual YubiKeys on real pcscd, OpenBao with a file audit device.
//!
//! What is counted is what Vault saw (sign requests in the audit log) and what the card
//! holds (read with yubico-piv-tool), never pivault's own report:
//! - `enroll_csr_carries_the_attestation`: the CSR Vault received (audit log, `csr` left
//!   un-HMACed) carries 41482.3.1 = an attestation of the CSR's own key by this token and
//!   41482.3.2 = the token's F9 certificate as yubico-piv-tool reads it;
//! - `station_refuses_pin_policy_never_when_once_is_required`: a profile slot with PIN
//!   policy `never` against `allowed_pin_policies = ["once"]` is refused before any key is
//!   generated: no sign request, the certificate already in the slot is still there and
//!   the PIN is unchanged;
//! - `station_refuses_firmware_below_the_minimum`: a 5.2.7 card against
//!   `min_firmware = "5.7.0"`: refused, no sign request, the token untouched;
//! - `attested_pin_policy_refused_after_generation_sends_nothing`: PIN policy left to the
//!   card (9e's default is `never`), so only the attestation can tell: refused after the
//!   key was generated, nothing sent to Vault; on 5.4.3 the key stays and exit code and
//!   message say the token changed, on 5.7.4 the key is deleted again (slot empty);
//! - `station_rekey_refused_after_generation_keeps_the_old_key_on_5_7`: an enrolled 5.7.4
//!   token re-keyed by the station (`--force`) against a form-factor rule only the
//!   attestation can check: refused with nothing sent to Vault, and 9a still holds its old
//!   certificate and the old key behind it (a signature through OpenSC verified with that
//!   certificate), no key left in a retired slot (MOVE KEY staging).

mod common;

use common::card::{Card, CardOptions};
use common::run::{self, ok, pivault, text, tool};
use common::vault::{read_audit, SignEvent, Vault, VaultOptions};
use der::{Decode, Encode};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

const PIN: &str = "123456";

fn audited_vault() -> Vault {
    let v = Vault::start_with(VaultOptions {
        audit: true,
        ..VaultOptions::default()
    });
    // The CSR in clear in the audit log, so the test reads what Vault received.
    let o = v.bao(&[
        "secrets",
        "tune",
        "-audit-non-hmac-request-keys=csr",
        &v.pki_mount,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    v
}

/// Sign requests that carried a CSR (pivault's pre-flight asks `sign/<role>` with an
/// empty one, which Vault refuses without issuing).
fn signs(v: &Vault) -> Vec<SignEvent> {
    read_audit(&[v.audit_log()], None, &v.pki_mount)
        .expect("audit log")
        .into_iter()
        .filter(|e| !e.csr_hmac.is_empty())
        .collect()
}

fn card(version: &str) -> Card {
    Card::start_with(CardOptions {
        version: Some(version.into()),
        ..CardOptions::default()
    })
}

fn piv_tool(reader: &str, args: &[&str]) -> String {
    let mut c = tool("yubico-piv-tool");
    c.args(["-r", reader]).args(args);
    String::from_utf8_lossy(&ok(c).stdout).into_owned()
}

fn pem_der(pem: &str) -> Vec<u8> {
    let start = pem.find("-----BEGIN").expect("a PEM block");
    der::pem::decode_vec(&pem.as_bytes()[start..])
        .expect("PEM decodes")
        .1
}

fn pin_verifies(card: &Card, pin: &str) -> bool {
    let mut c = tool("yubico-piv-tool");
    c.args(["-r", &card.reader, "-a", "verify-pin", "-P", pin]);
    run::run(c).status.success()
}

/// A key and a certificate in 9a, put there with the `yubikey` crate (factory management
/// key) and openssl: the "old" slot contents a refusal must leave alone. Returns the
/// certificate PEM as yubico-piv-tool reads it back.
fn old_cert(card: &Card, dir: &Path) -> String {
    let (key, cert) = (dir.join("old.key"), dir.join("old.der"));
    let mut c = tool("openssl");
    c.args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ]);
    c.args([
        "-nodes",
        "-subj",
        "/CN=old key",
        "-days",
        "30",
        "-outform",
        "DER",
    ]);
    c.arg("-keyout").arg(&key).arg("-out").arg(&cert);
    ok(c);
    let der = fs::read(&cert).expect("certificate");
    let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial(card.serial)).expect("open");
    let mgm = yubikey::MgmKey::get_default(&yk).expect("default management key");
    yk.authenticate(&mgm).expect("factory management key");
    yubikey::piv::generate(
        &mut yk,
        yubikey::piv::SlotId::Authentication,
        yubikey::piv::AlgorithmId::EccP256,
        yubikey::PinPolicy::Once,
        yubikey::TouchPolicy::Never,
    )
    .expect("generate");
    yubikey::certificate::Certificate::from_bytes(der)
        .expect("certificate parses")
        .write(
            &mut yk,
            yubikey::piv::SlotId::Authentication,
            yubikey::certificate::CertInfo::Uncompressed,
        )
        .expect("write certificate");
    drop(yk);
    run::piv_tool_read_cert(&card.reader, "9a")
}

struct Station {
    dir: tempfile::TempDir,
    profile: PathBuf,
    report: PathBuf,
}

/// A station profile for `serial` with `slots` (TOML `[[slot]]` tables) and an
/// `[attestation]` table.
fn station_setup(serial: u32, slots: &str, attestation: &str) -> Station {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("tokens.toml"),
        format!("[[token]]\nserial = {serial}\nname = \"User {serial}\"\n"),
    )
    .expect("allow-list");
    let profile = dir.path().join("station.toml");
    fs::write(
        &profile,
        format!(
            "common_name = \"{{name}}\"\n[tokens]\nallow_list = \"tokens.toml\"\n\
             {slots}\n[attestation]\n{attestation}\n"
        ),
    )
    .expect("profile");
    Station {
        report: dir.path().join("report.jsonl"),
        profile,
        dir,
    }
}

fn station(vault: &Vault, s: &Station, card: &Card, extra: &[&str]) -> Output {
    let mut c = pivault(&run::anchored_env(vault));
    c.args(["-v", "station", "--profile"]).arg(&s.profile);
    c.arg("--report").arg(&s.report);
    c.arg("--journal-dir").arg(s.dir.path().join("journal"));
    c.args([
        "--reader",
        &card.reader,
        "--max-tokens",
        "1",
        "--idle-exit",
        "30",
    ]);
    c.args(extra);
    run::run(c)
}

fn report_line(s: &Station) -> Value {
    let text = fs::read_to_string(&s.report).unwrap_or_default();
    let line = text.lines().last().expect("a report line");
    serde_json::from_str(line).expect("report line is JSON")
}

#[test]
fn station_refuses_pin_policy_never_when_once_is_required() {
    let vault = audited_vault();
    let card = card("5.7.4");
    let dir = tempfile::tempdir().expect("tmp");
    let before = old_cert(&card, dir.path());
    let s = station_setup(
        card.serial,
        "[[slot]]\nslot = \"9a\"\npin_policy = \"never\"\n",
        "allowed_pin_policies = [\"once\"]",
    );
    let o = station(&vault, &s, &card, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let line = report_line(&s);
    assert_eq!(line["result"], "refused", "{line}");
    let err = line["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("PIN policy 'never' is not allowed") && err.contains("once"),
        "the refusal names the rule: {err}"
    );
    assert!(signs(&vault).is_empty(), "a sign request reached Vault");
    assert_eq!(vault.issued_cert_count(), 0);
    // Another client: the old certificate (and the PIN) are still there.
    assert_eq!(run::piv_tool_read_cert(&card.reader, "9a"), before);
    assert!(pin_verifies(&card, PIN), "the PIN was changed");
}

#[test]
fn station_refuses_firmware_below_the_minimum() {
    let vault = audited_vault();
    let card = card("5.2.7");
    let s = station_setup(
        card.serial,
        "[[slot]]\nslot = \"9a\"\n",
        "min_firmware = \"5.7.0\"",
    );
    let o = station(&vault, &s, &card, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let line = report_line(&s);
    assert_eq!(line["result"], "refused", "{line}");
    let err = line["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("firmware 5.2.7 is below the policy's minimum 5.7.0"),
        "{err}"
    );
    assert!(signs(&vault).is_empty(), "a sign request reached Vault");
    assert_eq!(vault.issued_cert_count(), 0);
    assert!(pin_verifies(&card, PIN), "the PIN was changed");
    let st = run::status_json(&card);
    assert_eq!(st["slots"].as_array().map(Vec::len), Some(0), "{st}");
}

#[test]
fn attested_pin_policy_refused_after_generation_sends_nothing() {
    // 5.4.3 cannot delete a key: the refused key stays and the token was changed. 5.7.4
    // deletes it (DELETE KEY): the slot is empty again and nothing was changed.
    for (firmware, deleted) in [("5.4.3", false), ("5.7.4", true)] {
        refused_after_generation(firmware, deleted);
    }
}

fn refused_after_generation(firmware: &str, deleted: bool) {
    let vault = audited_vault();
    let card = card(firmware);
    let dir = tempfile::tempdir().expect("tmp");
    let chain = card.export_attestation_chain(dir.path());
    let mut env = vault.pivault_env();
    env.push(("PIVAULT_PIN".into(), PIN.into()));
    let mut c = run::enroll_cmd(
        &card,
        &env,
        &[
            "--slot",
            "9e",
            "--cn",
            "Jane",
            "--yes",
            "--require-attestation",
        ],
    );
    c.args(["--pin-policy-allowed", "once", "--attestation-roots"])
        .arg(&chain);
    let o = run::run(c);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("slot 9e: refused by the attestation policy: PIN policy 'never'"),
        "{err}"
    );
    assert_eq!(
        err.contains("changed"),
        !deleted,
        "{firmware}: whether the message says the token changed: {err}"
    );
    assert!(signs(&vault).is_empty(), "a sign request reached Vault");
    assert_eq!(vault.issued_cert_count(), 0);
    // The card (another client): no certificate in 9e; a key only where it cannot be
    // deleted (pivault's status reads the slot's metadata).
    let mut c = tool("yubico-piv-tool");
    c.args(["-r", &card.reader, "-a", "read-certificate", "-s", "9e"]);
    assert!(!run::run(c).status.success(), "9e got a certificate");
    let st = run::status_json(&card);
    let slots = st["slots"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(slots, usize::from(!deleted), "{firmware}: {st}");
}

#[test]
fn enroll_csr_carries_the_attestation() {
    let vault = audited_vault();
    let card = card("5.7.4");
    let dir = tempfile::tempdir().expect("tmp");
    let chain = card.export_attestation_chain(dir.path());
    let mut env = vault.pivault_env();
    env.push(("PIVAULT_PIN".into(), PIN.into()));
    let mut c = run::enroll_cmd(
        &card,
        &env,
        &[
            "--slot",
            "9a",
            "--cn",
            "Jane",
            "--yes",
            "--json",
            "--require-attestation",
            "--min-firmware",
            "5.7.0",
            "--pin-policy-allowed",
            "once",
            "--csr-attestation-legacy-oid",
        ],
    );
    c.arg("--attestation-roots").arg(&chain);
    let o = ok(c);
    let report: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let att = &report["slots"][0]["attestation"];
    assert_eq!(att["token_serial"], card.serial, "{report}");
    assert_eq!(att["pin_policy"], "once", "{report}");
    assert_eq!(att["firmware"], "5.7.4", "{report}");

    let events = signs(&vault);
    assert_eq!(events.len(), 1, "{events:?}");
    let csr_pem = &events[0].csr_hmac;
    assert!(csr_pem.contains("BEGIN CERTIFICATE REQUEST"), "{csr_pem}");
    let csr = x509_cert::request::CertReq::from_der(&pem_der(csr_pem)).expect("CSR");
    let mut exts = Vec::new();
    for attr in csr.info.attributes.iter() {
        if attr.oid == const_oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14") {
            for v in attr.values.iter() {
                let req: x509_cert::request::ExtensionReq =
                    v.decode_as().expect("extensionRequest");
                exts.extend(req.0);
            }
        }
    }
    let find = |oid: &str| {
        let oid = const_oid::ObjectIdentifier::new_unwrap(oid);
        exts.iter()
            .find(|e| e.extn_id == oid)
            .map(|e| e.extn_value.as_bytes().to_vec())
            .unwrap_or_else(|| panic!("no extension {oid} in the CSR"))
    };
    let attestation = find("1.3.6.1.4.1.41482.3.1");
    let f9 = find("1.3.6.1.4.1.41482.3.2");
    assert_eq!(find("1.3.6.1.4.1.41482.3.11"), attestation);
    // .3.2 is the token's F9 certificate, as another client reads it.
    let f9_tool = pem_der(&piv_tool(
        &card.reader,
        &["-a", "read-certificate", "-s", "f9"],
    ));
    assert_eq!(f9, f9_tool);
    // .3.1 attests the CSR's own key, on this token, and chains to the card's test root.
    let bundle = pivault::attestation::TrustBundle::from_file(&chain).expect("bundle");
    let csr_key = csr.info.public_key.to_der().expect("SPKI");
    pivault::attestation::verify_generated_key(
        &attestation,
        &f9,
        &bundle,
        std::time::SystemTime::now(),
        &csr_key,
        card.serial,
    )
    .expect("the CSR's attestation verifies for its key and this token");
    // And the certificate in 9a is for that key.
    let cert_pem = run::piv_tool_read_cert(&card.reader, "9a");
    let cert = x509_cert::Certificate::from_der(&pem_der(&cert_pem)).expect("cert");
    assert_eq!(
        cert.tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .expect("SPKI"),
        csr_key
    );
}

#[test]
fn station_rekey_refused_after_generation_keeps_the_old_key_on_5_7() {
    let vault = audited_vault();
    let card = card("5.7.4");
    let dir = tempfile::tempdir().expect("tmp");
    let chain = card.export_attestation_chain(dir.path());
    let roots = chain.to_str().expect("path");
    let s = station_setup(card.serial, "[[slot]]\nslot = \"9a\"\n", "");
    let o = station(&vault, &s, &card, &["--attestation-roots", roots]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let old = run::piv_tool_read_cert(&card.reader, "9a");
    let signed = signs(&vault).len();
    let o = vault.bao(&[
        "kv",
        "get",
        "-format=json",
        &format!("yubikeys/{}", card.serial),
    ]);
    let rec: Value = serde_json::from_slice(&o.stdout).expect("record");
    let rec = &rec["data"]["data"];
    assert_eq!(rec["schema"], 3, "{rec}");
    assert_eq!(
        rec["state"]["slots"]["9a"]["attestation"]["token_serial"], card.serial,
        "the record carries the attestation: {rec}"
    );
    let pin = rec["live"]["pin"]
        .as_str()
        .expect("escrowed PIN")
        .to_string();
    assert!(run::slot_key_matches_cert(
        &card.reader,
        "9a",
        &pin,
        dir.path()
    ));

    let s2 = station_setup(
        card.serial,
        "[[slot]]\nslot = \"9a\"\n",
        "form_factors = [\"usb-c-nano\"]",
    );
    let o = station(
        &vault,
        &s2,
        &card,
        &["--force", "--attestation-roots", roots],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let line = report_line(&s2);
    let err = line["error"].as_str().unwrap_or_default();
    assert!(err.contains("form factor"), "{line}");
    assert_eq!(signs(&vault).len(), signed, "a sign request reached Vault");
    assert_eq!(run::piv_tool_read_cert(&card.reader, "9a"), old);
    assert!(
        run::slot_key_matches_cert(&card.reader, "9a", &pin, dir.path()),
        "the old key is gone"
    );
    let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial(card.serial)).expect("open");
    for b in 0x82u8..=0x95 {
        let slot = yubikey::piv::SlotId::try_from(b).expect("retired slot");
        assert!(
            yubikey::piv::metadata(&mut yk, slot).is_err(),
            "a staged key was left in {b:02x}"
        );
    }
}

/// `--no-attestation` saves the ATTEST per key (a quarter second on a YubiKey 5): the card
/// is never asked (its ATTEST counter stays put), the CSR Vault received carries no
/// attestation extension, the slot is enrolled. Together with any attestation policy it
/// is refused before anything: exit 2, no key generated, nothing sent to Vault.
#[test]
fn no_attestation_skips_attest_and_refuses_a_policy() {
    let vault = audited_vault();
    let card = card("5.7.4");
    let mut env = vault.pivault_env();
    env.push(("PIVAULT_PIN".into(), PIN.into()));
    let slot = ["--slot", "9a", "--cn", "Jane", "--yes", "--no-attestation"];

    let (_, before) = card.apdu_counts();
    let mut c = run::enroll_cmd(&card, &env, &slot);
    c.arg("--require-attestation");
    let o = run::run(c);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--no-attestation"), "{}", text(&o));
    let (_, after) = card.apdu_counts();
    assert_eq!(after.get(&0x47), before.get(&0x47), "a key was generated");
    assert!(signs(&vault).is_empty(), "a sign request reached Vault");

    let o = ok(run::enroll_cmd(&card, &env, &slot));
    let (_, done) = card.apdu_counts();
    assert_eq!(
        done.get(&0xF9),
        before.get(&0xF9),
        "the card was asked to attest: {}",
        text(&o)
    );
    assert_eq!(
        done.get(&0x47).copied().unwrap_or(0),
        before.get(&0x47).copied().unwrap_or(0) + 1
    );
    let events = signs(&vault);
    assert_eq!(events.len(), 1, "{events:?}");
    let der = pem_der(&events[0].csr_hmac);
    let csr = x509_cert::request::CertReq::from_der(&der).expect("CSR");
    let yubico_arc = const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482")
        .to_der()
        .expect("oid");
    // The Yubico arc's content bytes appear nowhere in the request.
    let arc = &yubico_arc[2..];
    assert!(
        !der.windows(arc.len()).any(|w| w == arc),
        "the CSR carries a Yubico extension"
    );
    assert!(csr.info.attributes.len() <= 1);
    assert!(!run::piv_tool_read_cert(&card.reader, "9a").is_empty());
}
