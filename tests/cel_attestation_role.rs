//! The example OpenBao CEL role `fixtures/vault/cel-attestation-role.sh` on a real OpenBao
//! dev server (provisioned by provision.sh, then the CEL script, as an administrator would),
//! fed CSRs built here with x509-cert and signed on the virtual YubiKey, carrying the card's
//! own attestation (ATTEST and the F9 certificate read by yubico-piv-tool).
//!
//! Issuance is counted from Vault's certificate list (`<pki>/certs`), not from answers.
//! - the right CSR (attestation + f9, CN `yubikey-<attested serial>`, the attested key) is
//!   issued, and the stored certificate names that CN and key; so is the same request with
//!   the attestation as 41482.3.11 (yubico-piv-tool up to 2.7.1);
//! - no attestation, no f9 certificate, the F9 certificate as attestation, a CN of another
//!   form, a CN naming another serial, and another key's attestation are each refused with
//!   the role's message, nothing issued;
//! - the limit the README states: an attestation whose serial was altered (signature no
//!   longer valid) is issued by the CEL role, and refused by pivault's verifier.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use common::card::{Card, CardOptions};
use common::run::{ok, run, text, tool};
use common::vault::Vault;
use const_oid::ObjectIdentifier;
use der::asn1::{BitString, OctetString};
use der::{Decode, Encode, EncodePem};
use pivault::attestation::{self, TrustBundle};
use sha2::{Digest, Sha256};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use std::str::FromStr;
use x509_cert::attr::Attributes;
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, ExtensionReq, Version};
use yubikey::piv::{AlgorithmId, SlotId};

const ROLE: &str = "yubikey-piv-attested";
const VERSION: &str = "5.7.4";
const OID_ATTESTATION: &str = "1.3.6.1.4.1.41482.3.1";
const OID_F9: &str = "1.3.6.1.4.1.41482.3.2";

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

/// P-256 keys generated on the card (PIN policy never: the CSRs are signed without a PIN).
fn generate(card: &Card, slots: &[SlotId]) -> Vec<SubjectPublicKeyInfoOwned> {
    let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial(card.serial)).expect("open");
    let mgm = yubikey::MgmKey::get_default(&yk).expect("default management key");
    yk.authenticate(&mgm).expect("factory management key");
    slots
        .iter()
        .map(|&slot| {
            let spki = yubikey::piv::generate(
                &mut yk,
                slot,
                AlgorithmId::EccP256,
                yubikey::PinPolicy::Never,
                yubikey::TouchPolicy::Never,
            )
            .expect("generate P-256");
            SubjectPublicKeyInfoOwned::from_der(&spki.to_der().expect("SPKI encodes"))
                .expect("SPKI decodes")
        })
        .collect()
}

/// A PKCS#10 request (RFC 2986) for the key in `slot`, signed on the card (ECDSA P-256 with
/// SHA-256), with `exts` as non-critical extensions in the extensionRequest attribute (PKCS#9),
/// the way yubico-piv-tool's `request-certificate --attestation` carries the attestation.
fn csr(
    card: &Card,
    slot: SlotId,
    key: &SubjectPublicKeyInfoOwned,
    cn: &str,
    exts: &[(&str, &[u8])],
) -> String {
    let mut attributes = Attributes::new();
    if !exts.is_empty() {
        let list = exts
            .iter()
            .map(|(oid, value)| Extension {
                extn_id: ObjectIdentifier::new_unwrap(oid),
                critical: false,
                extn_value: OctetString::new(value.to_vec()).expect("extension value"),
            })
            .collect();
        attributes
            .insert(
                ExtensionReq(list)
                    .try_into()
                    .expect("extensionRequest attribute"),
            )
            .expect("one attribute");
    }
    let info = CertReqInfo {
        version: Version::V1,
        subject: Name::from_str(&format!("CN={cn}")).expect("subject"),
        public_key: key.clone(),
        attributes,
    };
    let tbs = info.to_der().expect("request info encodes");
    let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial(card.serial)).expect("open");
    // For EC keys the card signs the hash and answers a DER Ecdsa-Sig-Value (SP 800-73-4
    // part 2, 3.2.4), which is what a CSR's signature BIT STRING holds.
    let sig = yubikey::piv::sign_data(&mut yk, &Sha256::digest(&tbs), AlgorithmId::EccP256, slot)
        .expect("sign on the card");
    let req = CertReq {
        info,
        algorithm: AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::ECDSA_WITH_SHA_256,
            parameters: None,
        },
        signature: BitString::from_bytes(&sig).expect("signature"),
    };
    req.to_pem(der::pem::LineEnding::LF).expect("CSR PEM")
}

/// Vault's answer to `<pki>/cel/sign/<ROLE>` with a token holding only the role's policy.
fn sign(v: &Vault, token: &str, csr: &str) -> (u16, serde_json::Value) {
    let url = format!("{}/v1/{}/cel/sign/{ROLE}", v.addr, v.pki_mount);
    let resp = reqwest::blocking::Client::new()
        .post(url)
        .header("X-Vault-Token", token)
        .json(&serde_json::json!({ "csr": csr }))
        .send()
        .expect("Vault answers");
    let status = resp.status().as_u16();
    (status, resp.json().expect("JSON body"))
}

/// The card's TEST chain, as attestation_vcard.rs exports it (`--export-attestation-chain`).
fn exported_bundle(card: &Card, dir: &Path) -> TrustBundle {
    TrustBundle::from_file(&card.export_attestation_chain(dir))
        .expect("the exported chain is a usable bundle")
}

#[test]
fn cel_role_issues_only_to_csrs_whose_attestation_names_the_cn_serial() {
    let v = Vault::start();
    let out = run({
        let mut c = Command::new("bash");
        c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vault/cel-attestation-role.sh"))
            .args(["--pki", &v.pki_mount, "--ttl", "24h"])
            .env("BAO_ADDR", &v.addr)
            .env("BAO_TOKEN", v.root_token())
            .env_remove("BAO_NAMESPACE")
            .env_remove("BAO_CACERT");
        c
    });
    assert!(
        out.status.success(),
        "cel-attestation-role.sh: {}",
        text(&out)
    );
    // A token with the role's policy only: signing there needs nothing else.
    let o = v.bao(&[
        "token",
        "create",
        "-policy",
        ROLE,
        "-no-default-policy",
        "-field=token",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();

    let card = Card::start_with(CardOptions {
        version: Some(VERSION.into()),
        ..CardOptions::default()
    });
    let keys = generate(&card, &[SlotId::Authentication, SlotId::Signature]);
    // 9c exists only so that its attestation (another key on the same card) can be sent.
    let key = &keys[0];
    let att = pem_der(&piv_tool(&card.reader, &["-a", "attest", "-s", "9a"]));
    let att_other = pem_der(&piv_tool(&card.reader, &["-a", "attest", "-s", "9c"]));
    let f9 = pem_der(&piv_tool(
        &card.reader,
        &["-a", "read-certificate", "-s", "f9"],
    ));
    let good_cn = format!("yubikey-{}", card.serial);
    let both: [(&str, &[u8]); 2] = [(OID_ATTESTATION, &att), (OID_F9, &f9)];

    // Refusals: each message is the role's own; nothing is stored.
    let other_serial = card.serial ^ 1;
    let other_cn = format!("yubikey-{other_serial}");
    // (what, CN, extensions, the role's message); every CSR is for the 9a key.
    type Exts<'a> = &'a [(&'a str, &'a [u8])];
    let refusals: [(&str, String, Exts, String); 6] = [
        (
            "no attestation",
            good_cn.clone(),
            &[],
            "the CSR carries no YubiKey attestation (extension 1.3.6.1.4.1.41482.3.1, or .3.11,"
                .into(),
        ),
        (
            "no f9 certificate",
            good_cn.clone(),
            &[(OID_ATTESTATION, &att)],
            "the CSR carries no attestation (f9) certificate".into(),
        ),
        (
            // The F9 certificate is a certificate, but not a slot's attestation.
            "the F9 certificate as the attestation",
            good_cn.clone(),
            &[(OID_ATTESTATION, &f9), (OID_F9, &f9)],
            "extension 1.3.6.1.4.1.41482.3.1 is not shaped like a YubiKey PIV attestation".into(),
        ),
        (
            "CN of another form",
            "alice".into(),
            &both,
            "the common name must be yubikey-<serial>, got \"alice\"".into(),
        ),
        (
            "CN naming another serial",
            other_cn.clone(),
            &both,
            format!(
                "the attestation does not carry serial {other_serial} named by the common name"
            ),
        ),
        (
            "another key's attestation",
            good_cn.clone(),
            &[(OID_ATTESTATION, &att_other), (OID_F9, &f9)],
            "the attestation does not carry the public key of the CSR".into(),
        ),
    ];
    for (what, cn, exts, message) in refusals {
        let (status, body) = sign(
            &v,
            &token,
            &csr(&card, SlotId::Authentication, key, &cn, exts),
        );
        // OpenBao 2.7 answers a CEL refusal with 500 (the program's string becomes a plain
        // error), not 400 as the classic roles do.
        assert_eq!(status, 500, "{what}: {body}");
        let error = body["errors"][0].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("{ROLE}: {message}")),
            "{what}: {error}"
        );
        assert_eq!(v.issued_cert_count(), 0, "{what}: nothing issued");
    }

    // The right request is issued: counted and read back from Vault's storage.
    let (status, body) = sign(
        &v,
        &token,
        &csr(&card, SlotId::Authentication, key, &good_cn, &both),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(v.issued_cert_count(), 1);
    let serial = body["data"]["serial_number"]
        .as_str()
        .expect("serial_number");
    let o = v.bao(&[
        "read",
        "-field=certificate",
        &format!("{}/cert/{serial}", v.pki_mount),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stored = x509_cert::Certificate::from_der(&pem_der(&String::from_utf8_lossy(&o.stdout)))
        .expect("stored certificate");
    assert_eq!(
        stored.tbs_certificate().subject().to_string(),
        format!("CN={good_cn}")
    );
    assert_eq!(stored.tbs_certificate().subject_public_key_info(), key);
    let warnings = body["warnings"].to_string();
    assert!(warnings.contains("not its signature chain"), "{warnings}");

    // yubico-piv-tool up to 2.7.1 carried the attestation as 41482.3.11 in its CSRs (2.7.2
    // moved it to .3.1, Yubico/yubico-piv-tool#529): accepted as well. (The installed 2.2.0
    // cannot sign a request on OpenSSL 3, Yubico/yubico-piv-tool#388, so it is built here.)
    let old_style: [(&str, &[u8]); 2] = [("1.3.6.1.4.1.41482.3.11", &att), (OID_F9, &f9)];
    let (status, body) = sign(
        &v,
        &token,
        &csr(&card, SlotId::Authentication, key, &good_cn, &old_style),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(v.issued_cert_count(), 2);

    // The limit: CEL sees bytes, not signatures. The attestation with its serial changed to
    // another card's (same DER length) is issued for that serial's CN...
    let ext = |n: u32| {
        let mut b = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.7")
            .to_der()
            .expect("OID");
        let value = n.to_der().expect("INTEGER");
        b.extend([0x04, value.len() as u8]);
        b.extend(value);
        b
    };
    let (from, to) = (ext(card.serial), ext(other_serial));
    assert_eq!(from.len(), to.len());
    let mut forged = att.clone();
    let at = forged
        .windows(from.len())
        .position(|w| w == from.as_slice())
        .expect("serial extension in the attestation");
    forged[at..at + to.len()].copy_from_slice(&to);
    let (status, body) = sign(
        &v,
        &token,
        &csr(
            &card,
            SlotId::Authentication,
            key,
            &other_cn,
            &[(OID_ATTESTATION, &forged), (OID_F9, &f9)],
        ),
    );
    assert_eq!(
        status, 200,
        "the CEL role cannot see the broken signature: {body}"
    );
    assert_eq!(v.issued_cert_count(), 3);
    // ... and pivault's verifier, which checks the chain, refuses it (the real one passes).
    let dir = tempfile::tempdir().expect("temporary directory");
    let bundle = exported_bundle(&card, dir.path());
    let now = SystemTime::now();
    let real =
        attestation::verify(&att, &f9, &bundle, now).expect("the card's attestation verifies");
    assert_eq!(real.serial, Some(card.serial));
    let err = attestation::verify(&forged, &f9, &bundle, now).expect_err("forged serial refused");
    assert!(err.to_string().contains("is not signed by"), "{err}");
}
