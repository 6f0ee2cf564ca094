//! Issue 10 defect 6, "order of damage", on the rig (virtual card, real pcscd, OpenBao).
//!
//! - `usage_mismatch_is_a_warning_unless_strict`: the administrator's S/MIME role issues
//!   digitalSignature + contentCommitment (no keyAgreement) for slot 9d. By default the
//!   certificate is imported and the mismatch reported as a warning; with
//!   `--strict-usage` it is refused and nothing is imported (the card is read with
//!   yubico-piv-tool).

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
