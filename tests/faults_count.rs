//! The rig's issuance counts can fail: a Vault that cannot be asked is an error, never
//! "zero certificates issued"; an empty list (OpenBao's 404 with no errors) is zero; the
//! cert list and the audit log are two independent counts that must agree.

mod common;

use common::vault::{read_audit, Vault, VaultApi, VaultOptions};
use std::path::Path;
use std::process::Command;

/// A P-256 CSR made by openssl (not by pivault), CN `cn`.
fn csr(dir: &Path, cn: &str) -> std::path::PathBuf {
    let out = dir.join(format!("{cn}.csr"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-keyout"])
        .arg(dir.join(format!("{cn}.key")))
        .args(["-subj", &format!("/CN={cn}"), "-out"])
        .arg(&out)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success());
    out
}

fn sign(v: &Vault, role: &str, csr: &Path) {
    let o = v.bao(&[
        "write",
        "-format=json",
        &format!("pki/sign/{role}"),
        &format!("csr=@{}", csr.display()),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn count_fails_when_vault_cannot_be_asked_instead_of_reading_zero() {
    let mut v = Vault::start();
    // A fresh mount has issued nothing: zero, and an answer (OpenBao's 404 + empty errors).
    assert_eq!(v.try_issued_cert_count().expect("count"), 0);
    v.stop();
    let err = v
        .try_issued_cert_count()
        .expect_err("a stopped server must not count as zero certificates");
    assert!(err.0.contains("could not be asked"), "{err}");
    // The panicking form used by assertions panics too (it cannot pass `== 0`).
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| v.issued_cert_count()));
    assert!(
        r.is_err(),
        "issued_cert_count() returned {:?} from a dead server",
        r.ok()
    );
}

#[test]
fn a_missing_mount_or_wrong_token_is_an_error_not_an_empty_list() {
    let v = Vault::start();
    let api = v.api();
    assert!(api.cert_serials().is_ok());
    let nomount = VaultApi {
        pki_mount: "nosuch".into(),
        ..api.clone()
    };
    let e = nomount.cert_serials().expect_err("no such mount");
    assert!(e.0.contains("404"), "{e}");
    let notoken = VaultApi {
        token: "not-a-token".into(),
        ..api
    };
    let e = notoken.cert_serials().expect_err("bad token");
    assert!(e.0.contains("403"), "{e}");
}

#[test]
fn list_and_audit_log_count_the_same_certificates_per_role_and_per_csr() {
    let v = Vault::start_with(VaultOptions {
        audit: true,
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("tmp");
    let before = v.issuance().expect("count before");
    assert_eq!(before.issued(), 0);
    let a = csr(dir.path(), "alice");
    let b = csr(dir.path(), "bob");
    sign(&v, "yubikey-piv", &a);
    sign(&v, "yubikey-piv", &a); // the same CSR twice: a double issuance
    sign(&v, "yubikey-piv-code-signing", &b);
    // A refused request is a request, not an issuance.
    let o = v.bao(&[
        "write",
        "pki/sign/nosuchrole",
        &format!("csr=@{}", b.display()),
    ]);
    assert!(!o.status.success());
    let now = v.issuance().expect("count after").since(&before);
    assert_eq!(now.issued(), 3);
    assert_eq!(v.issued_cert_count(), 3);
    assert_eq!(now.requests(), 4);
    assert_eq!(now.per_role().get("yubikey-piv"), Some(&2));
    assert_eq!(now.per_role().get("yubikey-piv-code-signing"), Some(&1));
    let mut per_csr: Vec<usize> = now.per_csr().into_values().collect();
    per_csr.sort_unstable();
    assert_eq!(per_csr, vec![1, 2], "alice's CSR was signed twice");
    // The audit log alone, a missing log, and a log that disagrees with the list all fail.
    let log = v.audit_log.clone().expect("audit log");
    assert!(read_audit(&[dir.path().join("none.log")], None, "pki").is_err());
    let events = read_audit(&[log], None, "pki").expect("audit");
    let mut listed = now.listed.clone();
    listed.insert("00:11".into());
    assert!(common::vault::Issuance::new(listed, events).is_err());
}

#[test]
fn audit_count_in_a_namespace() {
    let v = Vault::start_with(VaultOptions {
        audit: true,
        namespace: Some("team1".into()),
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("tmp");
    sign(&v, "yubikey-piv", &csr(dir.path(), "carol"));
    let i = v.issuance().expect("count");
    assert_eq!(i.issued(), 1);
    assert_eq!(i.per_role().get("yubikey-piv"), Some(&1));
}
