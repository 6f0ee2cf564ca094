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

mod common;

use common::card::{Card, CardOptions};
use common::run::{self, ok, text, tool};
use common::vault::Vault;
use serde_json::Value;

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
