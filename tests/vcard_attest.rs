//! PIV attestation on the virtual YubiKey, per firmware profile, as Yubico's own tools and
//! openssl see it: `ykman piv keys attest`, `yubico-piv-tool -a attest`, `ykman piv info`,
//! `yubico-piv-tool -a status`, and `openssl verify` of the attestation certificate up to
//! the card's exported TEST chain (`pivault-vcard --export-attestation-chain`).
//!
//! The shape checked is Yubico's (docs.yubico.com/hardware/oid/oid-piv-arc): subject
//! "YubiKey PIV Attestation 9a", issuer = the F9 certificate's subject, validity copied from
//! it, the slot's own public key, and the 1.3.6.1.4.1.41482.3 extensions (firmware, serial
//! and form factor from firmware 5, PIN/touch policy).

mod common;

use std::fs;
use std::path::Path;

use common::card::{Card, CardOptions};
use common::run::{ok, openssl_pubkey, openssl_verify, run, text, tool};
use der::{DecodePem, Encode};
use x509_cert::Certificate;

/// The factory management key (3DES before 5.7, AES-192 from 5.7: same bytes).
const DEFAULT_MGM: &str = "010203040506070801020304050607080102030405060708";

#[test]
fn attestation_on_4_3_7() {
    attestation_works_on("4.3.7");
}

#[test]
fn attestation_on_5_2_7() {
    attestation_works_on("5.2.7");
}

#[test]
fn attestation_on_5_4_3() {
    attestation_works_on("5.4.3");
}

#[test]
fn attestation_on_5_7_2() {
    attestation_works_on("5.7.2");
}

#[test]
fn attestation_on_5_7_4() {
    attestation_works_on("5.7.4");
}

/// Attestation proves a key was generated on the card: an imported key gets none (Yubico,
/// "Using Attestation": attest fails when the key in the slot was imported).
#[test]
fn imported_keys_are_not_attested() {
    let card = Card::start_with(CardOptions {
        version: Some("5.7.4".into()),
        ..CardOptions::default()
    });
    let dir = tempfile::tempdir().expect("temporary directory");
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
    let reader = card.reader.as_str();
    ykman(
        reader,
        &[
            "piv",
            "keys",
            "import",
            "-m",
            DEFAULT_MGM,
            "9c",
            key.to_str().unwrap(),
        ],
    );
    let mut c = tool("ykman");
    c.args(["--reader", reader, "piv", "keys", "attest", "9c", "-"]);
    let out = run(c);
    assert!(
        !out.status.success(),
        "ykman attested an imported key:\n{}",
        text(&out)
    );
    let mut c = tool("yubico-piv-tool");
    c.args(["-r", reader, "-a", "attest", "-s", "9c"]);
    let out = run(c);
    assert!(
        !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("BEGIN"),
        "yubico-piv-tool attested an imported key:\n{}",
        text(&out)
    );
}

fn attestation_works_on(version: &str) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let dir = dir.path();
    let chain = dir.join("chain.pem");
    let card = Card::start_with(CardOptions {
        version: Some(version.into()),
        args: vec![
            "--export-attestation-chain".into(),
            chain.to_str().unwrap().into(),
        ],
        ..CardOptions::default()
    });
    let reader = card.reader.as_str();
    let (root, intermediates) = split_chain(&chain, dir);

    // Both tools see the profile.
    let info = ykman(reader, &["piv", "info"]);
    assert!(info.contains(&format!("PIV version: {version}")), "{info}");
    let status = piv_tool(reader, &["-a", "status"]);
    assert!(status.contains(&format!("Version:\t{version}")), "{status}");
    let device = ykman(reader, &["info"]);
    assert!(
        device.contains(&format!("Firmware version: {version}")),
        "{device}"
    );
    assert!(
        device.contains(&format!("Serial number: {}", card.serial)),
        "{device}"
    );

    // A key generated on the card, and its attestation by both tools.
    let public = dir.join("9a.pub.pem");
    ykman(
        reader,
        &[
            "piv",
            "keys",
            "generate",
            "-m",
            DEFAULT_MGM,
            "-a",
            "ECCP256",
            "9a",
            public.to_str().unwrap(),
        ],
    );
    let public = fs::read_to_string(&public).expect("public key written by ykman");
    let by_ykman = dir.join("att-ykman.pem");
    ykman(
        reader,
        &["piv", "keys", "attest", "9a", by_ykman.to_str().unwrap()],
    );
    let by_ykman = fs::read_to_string(&by_ykman).expect("attestation written by ykman");
    let by_piv_tool = piv_tool(reader, &["-a", "attest", "-s", "9a"]);
    let f9 = piv_tool(reader, &["-a", "read-certificate", "-s", "f9"]);

    let untrusted = dir.join("untrusted.pem");
    fs::write(&untrusted, format!("{intermediates}{f9}")).unwrap();
    let without_f9 = dir.join("without-f9.pem");
    fs::write(&without_f9, &intermediates).unwrap();
    for (tool_name, pem) in [("ykman", &by_ykman), ("yubico-piv-tool", &by_piv_tool)] {
        let out = openssl_verify(pem, &root, &untrusted, dir);
        assert!(
            out.status.success(),
            "{version}: openssl rejects the attestation by {tool_name}:\n{}",
            text(&out)
        );
        // The chain is what makes it verify: without the F9 certificate it must not.
        let out = openssl_verify(pem, &root, &without_f9, dir);
        assert!(
            !out.status.success(),
            "{version}: verified without the F9 certificate:\n{}",
            text(&out)
        );
        assert_eq!(
            openssl_pubkey(pem, dir).trim(),
            public.trim(),
            "{version}: the attestation by {tool_name} is not of the key in 9a"
        );
        check_fields(version, card.serial, pem, &f9);
    }
}

/// Yubico's fields: names, validity, and the 41482.3 extensions.
fn check_fields(version: &str, serial: u32, pem: &str, f9_pem: &str) {
    let cert = Certificate::from_pem(pem.trim()).expect("attestation parses");
    let f9 = Certificate::from_pem(f9_pem.trim()).expect("F9 certificate parses");
    let tbs = cert.tbs_certificate();
    assert_eq!(tbs.subject().to_string(), "CN=YubiKey PIV Attestation 9a");
    assert_eq!(tbs.issuer(), f9.tbs_certificate().subject());
    assert_eq!(tbs.validity(), f9.tbs_certificate().validity());
    let ext = |arc: u32| {
        let oid = format!("1.3.6.1.4.1.41482.3.{arc}");
        tbs.extensions()
            .into_iter()
            .flatten()
            .find(|e| e.extn_id.to_string() == oid)
            .map(|e| e.extn_value.as_bytes().to_vec())
    };
    let firmware: Vec<u8> = version.split('.').map(|n| n.parse().unwrap()).collect();
    assert_eq!(ext(3), Some(firmware.clone()), "firmware extension");
    // Generated with the default policies: PIN once (02), touch never (01) for 9a.
    assert_eq!(ext(8), Some(vec![0x02, 0x01]), "PIN/touch policy extension");
    if firmware[0] >= 5 {
        assert_eq!(ext(7), Some(serial.to_der().unwrap()), "serial extension");
        assert_eq!(ext(9), Some(vec![0x01]), "form factor (USB-A keychain)");
    } else {
        assert_eq!(ext(7), None, "a YubiKey 4 attests no serial");
    }
}

/// The card's test chain as it wrote it at start (`--export-attestation-chain`): the
/// root's file, and the intermediates as PEM.
fn split_chain(chain: &Path, dir: &Path) -> (std::path::PathBuf, String) {
    let chain = fs::read_to_string(chain).expect("the card exported its chain");
    let certs = Certificate::load_pem_chain(chain.as_bytes()).expect("chain parses");
    assert_eq!(certs.len(), 3, "root and two intermediates");
    let root_cert = &certs[0];
    assert_eq!(
        root_cert.tbs_certificate().issuer(),
        root_cert.tbs_certificate().subject(),
        "the first certificate is the self-signed root"
    );
    assert!(root_cert
        .tbs_certificate()
        .subject()
        .to_string()
        .contains("not Yubico"));
    let blocks: Vec<&str> = chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .collect();
    let root = dir.join("root.pem");
    fs::write(&root, blocks[0]).unwrap();
    (root, blocks[1..].concat())
}

fn ykman(reader: &str, args: &[&str]) -> String {
    let mut c = tool("ykman");
    c.arg("--reader").arg(reader).args(args);
    String::from_utf8_lossy(&ok(c).stdout).into_owned()
}

fn piv_tool(reader: &str, args: &[&str]) -> String {
    let mut c = tool("yubico-piv-tool");
    c.args(["-r", reader]).args(args);
    String::from_utf8_lossy(&ok(c).stdout).into_owned()
}
