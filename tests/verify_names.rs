//! Issue 10, defect 5: a certificate Vault issued must name what the request asked for —
//! subject CN, e-mail (rfc822Name SAN / emailAddress), UPN (otherName
//! 1.3.6.1.4.1.311.20.2.3) — and EKUs beyond the role's purpose are reported. Against a real
//! OpenBao (tests/common/vault.rs): the contract's roles, plus test roles an administrator
//! could have written, which take names from the JSON request instead of the CSR (so Vault
//! issues names the CSR did not ask for) or add serverAuth.

mod common;

use common::vault::{self, Vault};
use der::{Decode, DecodePem, Encode};
use pivault::piv::{Role, Slot};
use pivault::vault::{SignRequest, VaultClient};
use pivault::verify::{self, AskedNames, CertWarning, Expectation, NameField, VerifyError};
use spki::SubjectPublicKeyInfoOwned;
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;
use x509_cert::name::Name;

const UPN_OID: &str = "1.3.6.1.4.1.311.20.2.3";

/// A P-256 key and a CSR for it, made by openssl.
struct Req {
    csr_pem: String,
    spki: SubjectPublicKeyInfoOwned,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

/// CSR with subject CN `cn` and, when given, an rfc822Name SAN.
fn request(cn: &str, email: Option<&str>) -> Req {
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("k.pem");
    let k = key.to_str().expect("path");
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        k,
    ]);
    let subj = format!("/CN={cn}");
    let mut args = vec!["req", "-new", "-key", k, "-subj", &subj];
    let san = email.map(|e| format!("subjectAltName=email:{e}"));
    if let Some(s) = &san {
        args.extend(["-addext", s]);
    }
    let csr_pem = String::from_utf8(openssl(&args)).expect("pem");
    let der = openssl(&["pkey", "-in", k, "-pubout", "-outform", "DER"]);
    Req {
        csr_pem,
        spki: SubjectPublicKeyInfoOwned::from_der(&der).expect("spki"),
    }
}

/// Test roles, written once per server with the root token (as an administrator would).
fn test_roles(v: &Vault) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let common = [
            "key_type=ec",
            "key_bits=256",
            "allow_any_name=true",
            "enforce_hostnames=false",
            "allow_ip_sans=false",
            "key_usage=DigitalSignature",
            "code_signing_flag=false",
            "email_protection_flag=false",
            "client_flag=true",
            "ttl=1h",
            "max_ttl=2h",
            "no_store=false",
        ];
        // Names from the JSON request, not the CSR: what a misconfigured role, or a
        // request built from other data than the CSR, gives.
        let path = format!("{}/roles/test-json-names", v.pki_mount);
        let mut args = vec!["write", path.as_str()];
        args.extend(common);
        args.extend([
            "server_flag=false",
            "use_csr_common_name=false",
            "use_csr_sans=false",
            "allowed_other_sans=*",
        ]);
        assert!(v.bao(&args).status.success(), "role test-json-names");
        // The contract's names, plus serverAuth: a role wider than its purpose.
        let path = format!("{}/roles/test-server-too", v.pki_mount);
        let mut args = vec!["write", path.as_str()];
        args.extend(common);
        args.extend([
            "server_flag=true",
            "use_csr_common_name=true",
            "use_csr_sans=true",
        ]);
        assert!(v.bao(&args).status.success(), "role test-server-too");
    });
}

fn client(v: &Vault) -> VaultClient {
    test_roles(v);
    let c = VaultClient::new(v.vault_config()).expect("client");
    c.login(v.creds()).expect("login");
    c
}

fn der_of(pem: &str) -> Vec<u8> {
    x509_cert::Certificate::from_pem(pem)
        .expect("cert")
        .to_der()
        .expect("der")
}

/// Vault's chain for a sign answer, as DER.
fn chain(s: &pivault::vault::SignedCert) -> Vec<Vec<u8>> {
    s.ca_chain_pem.iter().map(|p| der_of(p)).collect()
}

fn name(cn: &str) -> Name {
    pivault::csr::Subject {
        common_name: cn.into(),
        ..Default::default()
    }
    .name()
    .expect("name")
}

#[test]
fn a_certificate_naming_someone_else_is_refused() {
    let v = vault::shared();
    let c = client(v);
    let req = request("Jane Doe", None);
    // The CSR asks for Jane Doe; the role takes the JSON common_name.
    let s = c
        .sign(
            "test-json-names",
            &SignRequest {
                csr_pem: req.csr_pem.clone(),
                common_name: Some("Mallory".into()),
                ..Default::default()
            },
        )
        .expect("sign");
    let cert = der_of(&s.certificate_pem);
    // The checks that existed before accept it: same key, chains, usage fits the slot.
    let chain = chain(&s);
    verify::check(
        &cert,
        &Expectation {
            slot: Slot::AUTHENTICATION,
            role: Role::Auth,
            public_key: &req.spki,
            chain_der: &chain,
            anchors_der: &[],
            now: SystemTime::now(),
            strict_usage: true,
        },
    )
    .expect("key, chain and usage are fine");
    let subject = name("Jane Doe");
    let e = verify::check_identity(
        &cert,
        &AskedNames {
            subject: &subject,
            email: None,
            upn: None,
        },
        Role::Auth,
    )
    .expect_err("names Mallory");
    assert_eq!(
        e,
        VerifyError::NameMismatch {
            field: NameField::CommonName,
            asked: "Jane Doe".into(),
            got: "Mallory".into(),
        }
    );
    assert!(e.to_string().contains("Mallory") && e.to_string().contains("Jane Doe"));
}

#[test]
fn e_mail_and_upn_must_be_the_ones_asked_for() {
    let v = vault::shared();
    let c = client(v);
    let req = request("Jane Doe", Some("jane@example.org"));
    let subject = name("Jane Doe");
    let sign = |alt: &[&str], upn: Option<&str>| {
        let s = c
            .sign(
                "test-json-names",
                &SignRequest {
                    csr_pem: req.csr_pem.clone(),
                    common_name: Some("Jane Doe".into()),
                    alt_names: alt.iter().map(|a| a.to_string()).collect(),
                    other_sans: upn.iter().map(|u| format!("{UPN_OID};UTF8:{u}")).collect(),
                    ..Default::default()
                },
            )
            .expect("sign");
        der_of(&s.certificate_pem)
    };
    let asked = AskedNames {
        subject: &subject,
        email: Some("jane@example.org"),
        upn: Some("jane@corp.example.org"),
    };
    // What was asked: accepted, nothing to report.
    let ok = sign(&["jane@example.org"], Some("jane@corp.example.org"));
    assert_eq!(verify::check_identity(&ok, &asked, Role::Auth), Ok(vec![]));
    // Another mailbox.
    let other = sign(&["mallory@example.org"], Some("jane@corp.example.org"));
    assert!(matches!(
        verify::check_identity(&other, &asked, Role::Auth),
        Err(VerifyError::NameMismatch { field: NameField::Email, ref got, .. }) if got == "mallory@example.org"
    ));
    // A second mailbox beside the one asked for.
    let extra = sign(
        &["jane@example.org", "mallory@example.org"],
        Some("jane@corp.example.org"),
    );
    assert!(matches!(
        verify::check_identity(&extra, &asked, Role::Auth),
        Err(VerifyError::NameMismatch {
            field: NameField::Email,
            ..
        })
    ));
    // Another UPN.
    let upn = sign(&["jane@example.org"], Some("mallory@corp.example.org"));
    assert!(matches!(
        verify::check_identity(&upn, &asked, Role::Auth),
        Err(VerifyError::NameMismatch { field: NameField::Upn, ref got, .. }) if got == "mallory@corp.example.org"
    ));
    // A UPN nobody asked for.
    let no_upn = AskedNames { upn: None, ..asked };
    assert!(matches!(
        verify::check_identity(&ok, &no_upn, Role::Auth),
        Err(VerifyError::NameMismatch {
            field: NameField::Upn,
            ..
        })
    ));
    // An e-mail asked for and missing.
    let none = sign(&[], Some("jane@corp.example.org"));
    assert!(matches!(
        verify::check_identity(&none, &asked, Role::Auth),
        Err(VerifyError::NameMismatch { field: NameField::Email, ref got, .. }) if got == "none"
    ));
}

#[test]
fn contract_roles_issue_what_was_asked_and_extra_ekus_are_reported() {
    let v = vault::shared();
    let c = client(v);
    // An e-mail CN: Vault also puts it in an rfc822Name SAN (exclude_cn_from_sans=false),
    // which is a name the request asked for.
    for (role, r) in [
        ("yubikey-piv-auth", Role::Auth),
        ("yubikey-piv-email-signing", Role::EmailSigning),
        ("yubikey-piv-code-signing", Role::CodeSigning),
        ("yubikey-piv", Role::Piv),
    ] {
        let req = request("jane@example.org", Some("jane@example.org"));
        let s = c
            .sign(
                role,
                &SignRequest {
                    csr_pem: req.csr_pem.clone(),
                    ..Default::default()
                },
            )
            .expect("sign");
        let subject = name("jane@example.org");
        let asked = AskedNames {
            subject: &subject,
            email: Some("jane@example.org"),
            upn: None,
        };
        assert_eq!(
            verify::check_identity(&der_of(&s.certificate_pem), &asked, r),
            Ok(vec![]),
            "{role}"
        );
    }
    // serverAuth beside clientAuth: accepted, reported.
    let req = request("Jane Doe", None);
    let s = c
        .sign(
            "test-server-too",
            &SignRequest {
                csr_pem: req.csr_pem.clone(),
                ..Default::default()
            },
        )
        .expect("sign");
    let subject = name("Jane Doe");
    let w = verify::check_identity(
        &der_of(&s.certificate_pem),
        &AskedNames {
            subject: &subject,
            email: None,
            upn: None,
        },
        Role::Auth,
    )
    .expect("names fine");
    assert_eq!(
        w,
        vec![CertWarning::ExtraEku {
            role: Role::Auth,
            eku: const_oid::db::rfc5280::ID_KP_SERVER_AUTH,
        }]
    );
    assert!(w[0].to_string().contains("serverAuth"), "{}", w[0]);
}
