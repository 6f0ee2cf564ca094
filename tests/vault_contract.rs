//! Proves the Vault fixtures (fixtures/vault/provision.sh and the rig in tests/common) meet
//! the Vault contract, using only the `bao` CLI and openssl — not pivault's client, so a bug
//! there cannot hide a bug here.
//!
//! - the AppRole logs in with the provisioned credentials and holds the contract policy
//!   and nothing else (no `default` policy);
//! - each of the four roles signs an openssl CSR with only the AppRole token, and
//!   `openssl verify` accepts the certificate against root.pem + intermediate.pem;
//! - each certificate carries its role's EKUs, key usage and names, and no server auth;
//! - the token is refused everything outside the contract;
//! - the TLS and namespace variants work with their settings and fail without them.

mod common;

use common::vault::{self, Vault, VaultOptions};
use const_oid::db::rfc5280::{
    ID_KP_CLIENT_AUTH, ID_KP_CODE_SIGNING, ID_KP_EMAIL_PROTECTION, ID_KP_SERVER_AUTH,
};
use const_oid::ObjectIdentifier;
use der::DecodePem;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName};
use x509_cert::Certificate;

/// The contract's policy, copied from vault-contract.md ("What the administrator
/// provisions", item 3). Deliberately a second copy, independent of
/// fixtures/vault/pivault-policy.hcl: the test compares what Vault holds with the contract.
const CONTRACT_POLICY: &str = r#"path "<kv>/data/*"      { capabilities = ["create", "read", "update"] }
path "<kv>/metadata/*"  { capabilities = ["read", "list", "delete"] }
path "<pki>/sign/*"     { capabilities = ["create", "update"] }
path "<pki>/issue/*"    { capabilities = ["create", "update"] }
path "<pki>/cert/ca"    { capabilities = ["read"] }
path "<pki>/ca/pem"     { capabilities = ["read"] }
path "<pki>/crl*"       { capabilities = ["read"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
path "auth/token/renew-self"  { capabilities = ["update"] }"#;

const SMART_CARD_LOGON: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.20.2.2");
const UPN: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.20.2.3");

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// AppRole login with the bao CLI; returns the client token.
fn login(v: &Vault, role_id: &str, secret_id: &str, ns: Option<&str>) -> String {
    let rid = format!("role_id={role_id}");
    let sid = format!("secret_id={secret_id}");
    ok(
        v.bao_as(
            None,
            ns,
            true,
            &["write", "-field=token", "auth/approle/login", &rid, &sid],
        ),
        "AppRole login",
    )
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (the contract tests use it)")
}

/// A CSR from openssl: `key` is "ec" (P-256) or "rsa" (2048), `san` an openssl
/// subjectAltName value or "".
fn make_csr(dir: &Path, name: &str, key: &str, cn: &str, san: &str) -> PathBuf {
    let key_path = dir.join(format!("{name}.key"));
    let csr_path = dir.join(format!("{name}.csr"));
    let kp = key_path.to_str().expect("utf-8 path");
    match key {
        "ec" => ok(
            openssl(&[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                kp,
            ]),
            "openssl ecparam",
        ),
        _ => ok(
            openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                kp,
            ]),
            "openssl genpkey",
        ),
    };
    let subj = format!("/CN={cn}");
    let mut args = vec![
        "req",
        "-new",
        "-key",
        kp,
        "-subj",
        &subj,
        "-out",
        csr_path.to_str().expect("utf-8 path"),
    ];
    let ext = format!("subjectAltName={san}");
    if !san.is_empty() {
        args.extend(["-addext", &ext]);
    }
    ok(openssl(&args), "openssl req");
    csr_path
}

struct Signed {
    pem: String,
    path: PathBuf,
    chain: Vec<String>,
}

/// Sign through `<pki>/sign/<role>` with `token`, via the bao CLI.
fn sign(v: &Vault, token: &str, role: &str, csr: &Path, name: &str) -> Result<Signed, String> {
    let path = format!("{}/sign/{role}", v.pki_mount);
    let csr_arg = format!("csr=@{}", csr.display());
    let o = v.bao_as(
        Some(token),
        v.namespace.as_deref(),
        true,
        &["write", "-format=json", &path, &csr_arg],
    );
    if !o.status.success() {
        return Err(text(&o));
    }
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let pem = j["data"]["certificate"]
        .as_str()
        .expect("certificate")
        .to_string();
    let chain = j["data"]["ca_chain"]
        .as_array()
        .expect("ca_chain")
        .iter()
        .map(|c| c.as_str().expect("pem").trim().to_string())
        .collect();
    let out = v.dir.join(format!("{name}.crt"));
    std::fs::write(&out, format!("{pem}\n")).expect("write cert");
    Ok(Signed {
        pem,
        path: out,
        chain,
    })
}

fn verify_chain(v: &Vault, cert: &Path) {
    let o = openssl(&[
        "verify",
        "-CAfile",
        v.root_pem.to_str().expect("path"),
        "-untrusted",
        v.intermediate_pem.to_str().expect("path"),
        cert.to_str().expect("path"),
    ]);
    assert!(
        o.status.success() && text(&o).contains(": OK"),
        "openssl verify: {}",
        text(&o)
    );
}

fn ekus(c: &Certificate) -> Vec<ObjectIdentifier> {
    c.tbs_certificate()
        .get_extension::<ExtendedKeyUsage>()
        .expect("EKU decodes")
        .map(|(_, e)| e.0)
        .unwrap_or_default()
}

fn key_usage(c: &Certificate) -> KeyUsage {
    c.tbs_certificate()
        .get_extension::<KeyUsage>()
        .expect("KU decodes")
        .expect("key usage present")
        .1
}

fn sans(c: &Certificate) -> Vec<GeneralName> {
    c.tbs_certificate()
        .get_extension::<SubjectAltName>()
        .expect("SAN decodes")
        .map(|(_, s)| s.0)
        .unwrap_or_default()
}

fn pem_file(p: &Path) -> String {
    std::fs::read_to_string(p)
        .expect("read pem")
        .trim()
        .to_string()
}

#[test]
fn approle_signs_on_each_role_and_certs_chain_and_carry_their_usages() {
    let v = vault::shared();
    let token = login(v, &v.role_id, &v.secret_id, None);
    let dir = tempfile::tempdir().expect("tmp");
    let before = v.issued_cert_count();

    // 9e / retired: client auth only.
    let csr = make_csr(dir.path(), "piv", "ec", "Jane Doe (card auth)", "");
    let s = sign(v, &token, "yubikey-piv", &csr, "piv").expect("sign yubikey-piv");
    verify_chain(v, &s.path);
    let c = Certificate::from_pem(&s.pem).expect("parse");
    assert_eq!(ekus(&c), vec![ID_KP_CLIENT_AUTH]);
    assert!(key_usage(&c).0.contains(KeyUsages::DigitalSignature));
    assert!(!key_usage(&c).0.contains(KeyUsages::KeyEncipherment));
    assert_eq!(
        c.tbs_certificate().subject().to_string(),
        "CN=Jane Doe (card auth)"
    );
    // Vault's ca_chain is [intermediate, root] and matches the files provision.sh wrote.
    assert_eq!(
        s.chain,
        vec![pem_file(&v.intermediate_pem), pem_file(&v.root_pem)]
    );
    assert_eq!(
        pem_file(&v.chain_pem),
        format!(
            "{}\n{}",
            pem_file(&v.intermediate_pem),
            pem_file(&v.root_pem)
        )
    );

    // 9a: client auth + smart-card logon, UPN from the CSR; RSA-2048 here.
    let csr = make_csr(
        dir.path(),
        "auth",
        "rsa",
        "Jane Doe",
        "otherName:1.3.6.1.4.1.311.20.2.3;UTF8:jane@example.com",
    );
    let s = sign(v, &token, "yubikey-piv-auth", &csr, "auth").expect("sign yubikey-piv-auth");
    verify_chain(v, &s.path);
    let c = Certificate::from_pem(&s.pem).expect("parse");
    let mut e = ekus(&c);
    e.sort();
    let mut want = vec![ID_KP_CLIENT_AUTH, SMART_CARD_LOGON];
    want.sort();
    assert_eq!(e, want);
    let upns: Vec<_> = sans(&c)
        .into_iter()
        .filter_map(|g| match g {
            GeneralName::OtherName(o) if o.type_id == UPN => Some(o),
            _ => None,
        })
        .collect();
    assert_eq!(upns.len(), 1, "exactly one UPN");
    let x = text(&openssl(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        s.path.to_str().expect("p"),
    ]));
    assert!(x.contains("jane@example.com"), "{x}");

    // 9c: code signing.
    let csr = make_csr(dir.path(), "code", "ec", "Jane Doe (code)", "");
    let s = sign(v, &token, "yubikey-piv-code-signing", &csr, "code").expect("sign code");
    verify_chain(v, &s.path);
    let c = Certificate::from_pem(&s.pem).expect("parse");
    assert_eq!(ekus(&c), vec![ID_KP_CODE_SIGNING]);

    // 9c/9d S/MIME: email protection, email SAN, signature + key establishment usages.
    let csr = make_csr(
        dir.path(),
        "mail",
        "ec",
        "Jane Doe",
        "email:jane@example.com",
    );
    let s = sign(v, &token, "yubikey-piv-email-signing", &csr, "mail").expect("sign email");
    verify_chain(v, &s.path);
    let c = Certificate::from_pem(&s.pem).expect("parse");
    assert_eq!(ekus(&c), vec![ID_KP_EMAIL_PROTECTION]);
    let ku = key_usage(&c).0;
    assert!(ku.contains(KeyUsages::DigitalSignature) && ku.contains(KeyUsages::KeyAgreement));
    assert!(sans(&c)
        .iter()
        .any(|g| matches!(g, GeneralName::Rfc822Name(m) if m.as_str() == "jane@example.com")));

    // No role issues server certificates.
    for p in ["piv", "auth", "code", "mail"] {
        let c = Certificate::from_pem(std::fs::read(v.dir.join(format!("{p}.crt"))).expect("read"))
            .expect("parse");
        assert!(!ekus(&c).contains(&ID_KP_SERVER_AUTH), "{p}");
    }
    // no_store=false: every issued certificate is counted.
    assert!(v.issued_cert_count() >= before + 4);
}

#[test]
fn roles_refuse_what_they_do_not_allow() {
    let v = vault::shared();
    let token = login(v, &v.role_id, &v.secret_id, None);
    let dir = tempfile::tempdir().expect("tmp");
    // A UPN is allowed only on yubikey-piv-auth.
    let csr = make_csr(
        dir.path(),
        "upn",
        "ec",
        "Jane",
        "otherName:1.3.6.1.4.1.311.20.2.3;UTF8:jane@example.com",
    );
    let e = sign(v, &token, "yubikey-piv", &csr, "upn")
        .err()
        .expect("refused");
    assert!(e.contains("Code: 400") && e.contains("not allowed"), "{e}");
    // No IP SANs, no server names with wildcards.
    let csr = make_csr(dir.path(), "ip", "ec", "Jane", "IP:10.0.0.1");
    let e = sign(v, &token, "yubikey-piv", &csr, "ip")
        .err()
        .expect("refused");
    assert!(e.contains("Code: 400"), "{e}");
    let e = sign(v, &token, "nosuchrole", &csr, "x")
        .err()
        .expect("refused");
    assert!(e.contains("unknown role"), "{e}");
}

#[test]
fn policy_is_exactly_the_contract_and_nothing_more() {
    let v = vault::shared();
    let want = CONTRACT_POLICY
        .replace("<kv>", &v.kv_mount)
        .replace("<pki>", &v.pki_mount);
    let got = ok(v.bao(&["policy", "read", "pivault"]), "policy read");
    assert_eq!(got.trim(), want.trim());

    // The token holds that policy alone: no `default` policy.
    let token = login(v, &v.role_id, &v.secret_id, None);
    let look = ok(
        v.bao_as(
            Some(&token),
            None,
            true,
            &["token", "lookup", "-format=json"],
        ),
        "token lookup-self",
    );
    let j: serde_json::Value = serde_json::from_str(&look).expect("json");
    assert_eq!(j["data"]["policies"], serde_json::json!(["pivault"]));
    assert_eq!(j["data"]["renewable"], serde_json::json!(true));

    // The nosign policy is the contract minus `<pki>/sign/*`.
    let nosign = ok(v.bao(&["policy", "read", "pivault-nosign"]), "policy read");
    let want_nosign: Vec<&str> = want.lines().filter(|l| !l.contains("/sign/*")).collect();
    assert_eq!(nosign.trim(), want_nosign.join("\n"));
}

#[test]
fn approle_token_is_denied_outside_the_contract() {
    let v = vault::shared();
    let token = login(v, &v.role_id, &v.secret_id, None);
    let pki = &v.pki_mount;
    let denied: Vec<Vec<String>> = vec![
        vec!["read".into(), "sys/mounts".into()],
        vec!["read".into(), format!("{pki}/roles/yubikey-piv")],
        vec![
            "write".into(),
            format!("{pki}/root/generate/internal"),
            "common_name=evil".into(),
        ],
        vec![
            "write".into(),
            format!("{pki}/roles/evil"),
            "allow_any_name=true".into(),
        ],
        vec![
            "policy".into(),
            "write".into(),
            "pivault".into(),
            "-".into(),
        ],
        vec!["list".into(), "auth/approle/role".into()],
        vec![
            "write".into(),
            "sys/capabilities-self".into(),
            format!("paths={pki}/sign/x"),
        ],
        vec!["read".into(), "cubbyhole/x".into()],
    ];
    for args in denied {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = v.bao_as(Some(&token), None, true, &a);
        assert!(!o.status.success(), "{a:?} was allowed");
        assert!(
            text(&o).contains("permission denied"),
            "{a:?}: {}",
            text(&o)
        );
    }
    // Allowed: the CA and a KV record.
    ok(
        v.bao_as(
            Some(&token),
            None,
            true,
            &["read", &format!("{pki}/cert/ca")],
        ),
        "cert/ca",
    );
    ok(
        v.bao_as(
            Some(&token),
            None,
            true,
            &[
                "kv",
                "put",
                &format!("-mount={}", v.kv_mount),
                "contract/probe",
                "a=b",
            ],
        ),
        "kv put",
    );

    // The nosign AppRole: KV yes, sign no (403 naming the path).
    let (rid, sid) = v.nosign.clone().expect("test roles");
    let t2 = login(v, &rid, &sid, None);
    let dir = tempfile::tempdir().expect("tmp");
    let csr = make_csr(dir.path(), "n", "ec", "Jane", "");
    let e = sign(v, &t2, "yubikey-piv", &csr, "n")
        .err()
        .expect("denied");
    assert!(
        e.contains("Code: 403") && e.contains("permission denied"),
        "{e}"
    );
    assert!(e.contains(&format!("{pki}/sign/yubikey-piv")), "{e}");
}

#[test]
fn wrong_secret_id_is_refused_and_new_ones_work() {
    let v = vault::shared();
    let o = v.bao_as(
        None,
        None,
        true,
        &[
            "write",
            "auth/approle/login",
            &format!("role_id={}", v.role_id),
            "secret_id=00000000-0000-0000-0000-000000000000",
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("invalid role or secret ID"),
        "{}",
        text(&o)
    );
    let sid = v.new_secret_id();
    assert_ne!(sid, v.secret_id);
    login(v, &v.role_id, &sid, None);
}

#[test]
fn tls_variant_works_with_the_ca_bundle_only() {
    let v = Vault::start_with(VaultOptions {
        tls: true,
        ..Default::default()
    });
    assert!(v.addr.starts_with("https://127.0.0.1:"));
    let ca = v.tls_ca.clone().expect("CA copy");
    assert!(pem_file(&ca).starts_with("-----BEGIN CERTIFICATE-----"));
    let token = login(&v, &v.role_id, &v.secret_id, None);
    let dir = tempfile::tempdir().expect("tmp");
    let csr = make_csr(dir.path(), "t", "ec", "Jane", "");
    let s = sign(&v, &token, "yubikey-piv", &csr, "t").expect("sign over TLS");
    verify_chain(&v, &s.path);
    // Without the bundle: the server certificate is not trusted.
    let o = v.bao_as(None, None, false, &["read", "sys/health"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("x509") || t.contains("certificate"), "{t}");
    assert_eq!(
        v.pivault_env()
            .iter()
            .find(|(k, _)| k == "VAULT_CACERT")
            .map(|(_, p)| p.clone()),
        Some(ca.display().to_string())
    );
}

#[test]
fn namespace_variant_works_with_the_namespace_only() {
    let v = Vault::start_with(VaultOptions {
        namespace: Some("team1".into()),
        max_ttl: Some("3m".into()),
        ..Default::default()
    });
    let ns = Some("team1");
    let token = login(&v, &v.role_id, &v.secret_id, ns);
    let dir = tempfile::tempdir().expect("tmp");
    let csr = make_csr(dir.path(), "n", "ec", "Jane", "");
    let s = sign(&v, &token, "yubikey-piv", &csr, "n").expect("sign in the namespace");
    verify_chain(&v, &s.path);
    // --max-ttl 3m: the certificate lives 3 minutes (+30 s backdating).
    let c = Certificate::from_pem(&s.pem).expect("parse");
    let val = c.tbs_certificate().validity();
    let life = val.not_after.to_unix_duration() - val.not_before.to_unix_duration();
    assert!(life.as_secs() <= 210 && life.as_secs() >= 180, "{life:?}");
    // Contract URLs name the namespace.
    let x = text(&openssl(&[
        "x509",
        "-noout",
        "-ext",
        "authorityInfoAccess",
        "-in",
        s.path.to_str().expect("p"),
    ]));
    assert!(x.contains("/v1/team1/pki/ca"), "{x}");

    // Without the namespace nothing is there. Measured: a token-less request to a mount
    // that does not exist is 403 (login included); with a valid token it is 404.
    // (`bao read` prints a 404 as "No value found".)
    let o = v.bao_as(Some(v.root_token()), None, true, &["read", "pki/cert/ca"]);
    assert!(
        !o.status.success() && text(&o).contains("No value found"),
        "{}",
        text(&o)
    );
    let o = v.bao_as(
        None,
        None,
        true,
        &[
            "write",
            "auth/approle/login",
            &format!("role_id={}", v.role_id),
            &format!("secret_id={}", v.secret_id),
        ],
    );
    assert!(
        text(&o).contains("Code: 403"),
        "login outside the namespace: {}",
        text(&o)
    );
    // A wrong namespace: 404 namespace not found.
    let o = v.bao_as(
        None,
        Some("nope"),
        true,
        &[
            "write",
            "auth/approle/login",
            &format!("role_id={}", v.role_id),
            "secret_id=x",
        ],
    );
    assert!(
        text(&o).contains("Code: 404") && text(&o).contains("namespace not found"),
        "{}",
        text(&o)
    );
    assert!(v
        .pivault_env()
        .contains(&("VAULT_NAMESPACE".to_string(), "team1".to_string())));
}

#[test]
fn seal_and_unseal_work() {
    let v = Vault::start();
    v.seal();
    let o = v.bao_as(None, None, true, &["status", "-format=json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status json");
    assert_eq!(j["sealed"], serde_json::json!(true));
    v.unseal();
    login(&v, &v.role_id, &v.secret_id, None);
}

#[test]
fn provisioning_is_idempotent() {
    let v = vault::shared();
    let out = v.dir.join("again");
    let o = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vault/provision.sh"))
        .args(["--with-test-roles", "--out"])
        .arg(&out)
        .env("BAO_ADDR", &v.addr)
        .env("BAO_TOKEN", v.root_token())
        .output()
        .expect("provision.sh");
    assert!(o.status.success(), "{}", text(&o));
    // Same CAs, new secret_id that works, output names no secret.
    assert_eq!(pem_file(&out.join("root.pem")), pem_file(&v.root_pem));
    assert_eq!(
        pem_file(&out.join("intermediate.pem")),
        pem_file(&v.intermediate_pem)
    );
    let sid = pem_file(&out.join("secret_id"));
    assert!(!text(&o).contains(&sid));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("secret_id"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    login(v, &v.role_id, &sid, None);
}
