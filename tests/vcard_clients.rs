//! The virtual YubiKey (`pivault-vcard`) as third-party clients see it through the real
//! pcscd: yubico-piv-tool, ykman, OpenSC's PKCS#11 module and the `yubikey` crate.
//!
//! These tests pin down the card the other integration tests build on. Each starts its own
//! card(s) in its own reader(s) (see `common::card`), so they run in parallel under
//! `cargo test` and `cargo nextest`. Firmware profiles: the rig's default (5.2.7) unless a
//! test names one; 5.7.4 is the card's own default (AES-192 management key).
//! Yubico's own suite (ykman 5.9.2's device tests) runs in `scripts/ykman-conformance`.

mod common;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::card::{Card, CardOptions};

const PIN: &str = "123456";
/// The factory management key: 3DES before 5.7, AES-192 from 5.7, same bytes.
const DEFAULT_MGM: &str = "010203040506070801020304050607080102030405060708";

/// Runs a client with a 60 s limit; returns success and stdout + stderr.
fn run(program: &str, args: &[&str]) -> (bool, String) {
    let mut command = Command::new(program);
    if program == "pkcs11-tool" {
        // OpenSC reaches only 4 readers by default; the rig has 8.
        command.env("OPENSC_CONF", common::run::opensc_conf());
    }
    let child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (is it installed?): {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output: Output = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => output.expect("wait for client"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{program} {args:?} hung for 60 s");
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Runs a client that must succeed; returns its output.
fn ok(program: &str, args: &[&str]) -> String {
    let (success, text) = run(program, args);
    assert!(success, "{program} {args:?} failed:\n{text}");
    text
}

fn piv_tool(card: &Card, args: &[&str]) -> (bool, String) {
    let mut all = vec!["-r", card.reader.as_str()];
    all.extend_from_slice(args);
    run("yubico-piv-tool", &all)
}

fn ykman(card: &Card, args: &[&str]) -> String {
    let mut all = vec!["--reader", card.reader.as_str()];
    all.extend_from_slice(args);
    ok("ykman", &all)
}

/// OpenSC's PKCS#11 module, wherever the distribution put it (`PIVAULT_OPENSC_MODULE`
/// overrides).
fn opensc_module() -> PathBuf {
    if let Some(path) = std::env::var_os("PIVAULT_OPENSC_MODULE") {
        return path.into();
    }
    let mut candidates = Vec::new();
    if let Ok(dirs) = std::fs::read_dir("/usr/lib") {
        // Debian/Ubuntu multiarch: /usr/lib/x86_64-linux-gnu, /usr/lib/aarch64-linux-gnu...
        for dir in dirs.flatten() {
            candidates.push(dir.path().join("opensc-pkcs11.so"));
            candidates.push(dir.path().join("pkcs11/opensc-pkcs11.so"));
        }
    }
    for fixed in [
        "/usr/lib/opensc-pkcs11.so",
        "/usr/lib64/opensc-pkcs11.so",
        "/usr/lib64/pkcs11/opensc-pkcs11.so",
        "/usr/local/lib/opensc-pkcs11.so",
        "/opt/homebrew/lib/opensc-pkcs11.so",
    ] {
        candidates.push(fixed.into());
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .expect("OpenSC's opensc-pkcs11.so not found: apt-get install opensc-pkcs11")
}

/// An on-card P-256 key in 9a (yubico-piv-tool) with a self-signed certificate made by
/// that key (ykman). Returns the certificate file.
///
/// ykman signs the certificate: yubico-piv-tool 2.2.0 on OpenSSL 3 (Debian 12, Ubuntu
/// 22.04) fails `selfsign-certificate` before it sends anything to the card
/// (Yubico/yubico-piv-tool#388).
fn key_and_selfsigned_cert(card: &Card, dir: &Path, cn: &str) -> PathBuf {
    let public = dir.join("9a.pub.pem");
    let public = public.to_str().unwrap();
    let key = format!("--key={DEFAULT_MGM}");
    let (success, text) = piv_tool(
        card,
        &[
            &key, "-a", "generate", "-s", "9a", "-A", "ECCP256", "-o", public,
        ],
    );
    assert!(success, "generate failed:\n{text}");
    ykman(
        card,
        &[
            "piv",
            "certificates",
            "generate",
            "-m",
            DEFAULT_MGM,
            "-P",
            PIN,
            "-s",
            &format!("CN={cn}"),
            "9a",
            public,
        ],
    );
    let cert = dir.join("9a.cert.pem");
    let (success, text) = piv_tool(
        card,
        &[
            "-a",
            "read-certificate",
            "-s",
            "9a",
            "-o",
            cert.to_str().unwrap(),
        ],
    );
    assert!(success, "read-certificate failed:\n{text}");
    cert
}

#[test]
fn yubico_piv_tool_status_shows_serial_and_version() {
    let card = Card::start();
    let (success, text) = piv_tool(&card, &["-a", "status"]);
    assert!(success, "{text}");
    assert!(
        text.contains(&format!("Serial Number:\t{}", card.serial)),
        "{text}"
    );
    assert!(text.contains("Version:\t5.2.7"), "{text}");
    assert!(text.contains("PIN tries left:\t3"), "{text}");
}

#[test]
fn ykman_sees_a_yubikey_5_with_the_serial() {
    let card = Card::start();
    let info = ykman(&card, &["piv", "info"]);
    assert!(info.contains("PIV version: 5.2.7"), "{info}");
    assert!(info.contains("PIN tries remaining: 3"), "{info}");
    // `ykman list --serials` only looks at USB devices; `info` reads the serial through
    // the management application the card emulates.
    let device = ykman(&card, &["info"]);
    assert!(
        device.contains(&format!("Serial number: {}", card.serial)),
        "{device}"
    );
    assert!(device.contains("Firmware version: 5.2.7"), "{device}");
    assert!(device.contains("YubiKey 5"), "{device}");
}

#[test]
fn pkcs11_tool_lists_the_token() {
    let card = Card::start();
    let module = opensc_module();
    let text = ok("pkcs11-tool", &["--module", module.to_str().unwrap(), "-L"]);
    // "Slot 1 (0x4): Virtual PCD 00 01" then "  token label : ..." (empty: "  (empty)").
    let mut lines = text.lines();
    let slot = lines
        .by_ref()
        .find(|l| l.starts_with("Slot ") && l.ends_with(&format!(": {}", card.reader)))
        .unwrap_or_else(|| panic!("no PKCS#11 slot for {}:\n{text}", card.reader));
    let next = lines.next().unwrap_or_default();
    assert!(next.contains("token label"), "{slot} has no token:\n{text}");
}

#[test]
fn two_cards_at_once_each_with_its_own_serial_and_version() {
    let a = Card::start();
    let b = Card::start_with(CardOptions {
        version: Some("5.4.3".into()),
        ..CardOptions::default()
    });
    assert_ne!(a.serial, b.serial);
    assert_ne!(a.reader, b.reader);
    for (card, version) in [(&a, "5.2.7"), (&b, "5.4.3")] {
        let (success, text) = piv_tool(card, &["-a", "status"]);
        assert!(success, "{text}");
        assert!(
            text.contains(&format!("Serial Number:\t{}", card.serial)),
            "{text}"
        );
        assert!(text.contains(&format!("Version:\t{version}")), "{text}");
    }
}

#[test]
fn key_and_certificate_survive_a_restart_with_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut card = Card::start();
    let cert = key_and_selfsigned_cert(&card, dir.path(), "vcard restart");
    let cert = cert.to_str().unwrap();
    assert!(card.apdu_count() > 0);

    card.remove();
    assert!(
        card.state.metadata().unwrap().len() > 0,
        "state file {} is empty",
        card.state.display()
    );
    card.insert();

    let (success, text) = piv_tool(&card, &["-a", "status"]);
    assert!(success, "{text}");
    assert!(text.contains("Subject DN:\tCN=vcard restart"), "{text}");
    assert!(
        text.contains(&format!("Serial Number:\t{}", card.serial)),
        "{text}"
    );
    // The private key came back too: the card signs, the certificate's key verifies.
    let (success, text) = piv_tool(
        &card,
        &[
            "-a",
            "verify-pin",
            "-P",
            PIN,
            "-a",
            "test-signature",
            "-s",
            "9a",
            "-i",
            cert,
        ],
    );
    assert!(
        success && text.contains("Successful ECDSA verification"),
        "{text}"
    );
}

#[test]
fn verified_pin_is_forgotten_by_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let card = Card::start();
    let cert = key_and_selfsigned_cert(&card, dir.path(), "vcard pin");
    let cert = cert.to_str().unwrap();
    let sign = ["-a", "test-signature", "-s", "9a", "-i", cert];

    // One process: PIN, then signature.
    let mut with_pin = vec!["-a", "verify-pin", "-P", PIN];
    with_pin.extend_from_slice(&sign);
    let (success, text) = piv_tool(&card, &with_pin);
    assert!(success, "{text}");
    // The next process did not give the PIN: the card must refuse (6982).
    let (success, text) = piv_tool(&card, &sign);
    assert!(!success, "signed without the PIN:\n{text}");

    // Same at the PC/SC level: VERIFY without data asks "is the PIN verified?"
    // (SP 800-73-4 Part 2 §3.2.1): 9000 yes, 63Cx no (x tries left).
    let ctx = pcsc::Context::establish(pcsc::Scope::User).unwrap();
    let reader = CString::new(card.reader.clone()).unwrap();
    let transmit = |conn: &pcsc::Card, apdu: &[u8]| -> Vec<u8> {
        let mut buf = [0u8; 300];
        conn.transmit(apdu, &mut buf).expect("transmit").to_vec()
    };
    let sw = |resp: &[u8]| resp[resp.len() - 2..].to_vec();
    const SELECT: [u8; 10] = [0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08];
    const VERIFY: [u8; 13] = [
        0x00, 0x20, 0x00, 0x80, 0x08, b'1', b'2', b'3', b'4', b'5', b'6', 0xFF, 0xFF,
    ];
    const PIN_STATUS: [u8; 4] = [0x00, 0x20, 0x00, 0x80];

    let first = ctx
        .connect(&reader, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
        .unwrap();
    assert_eq!(sw(&transmit(&first, &SELECT)), [0x90, 0x00]);
    assert_eq!(sw(&transmit(&first, &VERIFY)), [0x90, 0x00]);
    assert_eq!(sw(&transmit(&first, &PIN_STATUS)), [0x90, 0x00]);
    first
        .disconnect(pcsc::Disposition::ResetCard)
        .map_err(|(_, e)| e)
        .unwrap();

    let second = ctx
        .connect(&reader, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
        .unwrap();
    assert_eq!(sw(&transmit(&second, &SELECT)), [0x90, 0x00]);
    assert_eq!(sw(&transmit(&second, &PIN_STATUS)), [0x63, 0xC3]);
}

#[test]
fn one_cards_state_is_not_visible_in_another() {
    let dir = tempfile::tempdir().unwrap();
    let a = Card::start();
    let b = Card::start();
    key_and_selfsigned_cert(&a, dir.path(), "only in a");
    let (success, text) = piv_tool(&a, &["-a", "change-pin", "-P", PIN, "-N", "654321"]);
    assert!(success, "{text}");

    let (_, status_b) = piv_tool(&b, &["-a", "status"]);
    assert!(
        !status_b.contains("Slot 9a"),
        "b sees a's certificate:\n{status_b}"
    );
    let (success, text) = piv_tool(&b, &["-a", "verify-pin", "-P", PIN]);
    assert!(success, "b lost its default PIN:\n{text}");
    let (success, _) = piv_tool(&a, &["-a", "verify-pin", "-P", PIN]);
    assert!(!success, "a still takes the old PIN");
    let (success, text) = piv_tool(&a, &["-a", "verify-pin", "-P", "654321"]);
    assert!(success, "{text}");
}

#[test]
fn ykman_pin_protected_management_key_round_trip() {
    // ADMIN DATA (5FFF00) and the PIN-protected PRINTED object (5FC109), as ykman uses them.
    let mut card = Card::start();
    ykman(
        &card,
        &[
            "piv",
            "access",
            "change-management-key",
            "-m",
            DEFAULT_MGM,
            "--protect",
            "--generate",
            "-P",
            PIN,
        ],
    );
    card.remove();
    card.insert();
    let info = ykman(&card, &["piv", "info"]);
    assert!(info.contains("protected by PIN"), "{info}");
    // The stored key works: an admin operation with only the PIN.
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("9c.pub.pem");
    ykman(
        &card,
        &[
            "piv",
            "keys",
            "generate",
            "-P",
            PIN,
            "-a",
            "ECCP256",
            "9c",
            public.to_str().unwrap(),
        ],
    );
    // And the default key no longer does.
    let key = format!("--key={DEFAULT_MGM}");
    let (success, text) = piv_tool(&card, &[&key, "-a", "generate", "-s", "9d"]);
    assert!(!success, "default management key still accepted:\n{text}");
    assert!(text.contains("Failed authentication"), "{text}");
}

#[test]
fn yubikey_crate_opens_the_card_by_serial() {
    let card = Card::start();
    let yk = yubikey::YubiKey::open_by_serial(yubikey::Serial(card.serial))
        .unwrap_or_else(|e| panic!("open_by_serial({}): {e}", card.serial));
    assert_eq!(yk.serial(), yubikey::Serial(card.serial));
    let v = yk.version();
    assert_eq!((v.major, v.minor, v.patch), (5, 2, 7));
    assert_eq!(yk.name(), card.reader);
}

#[test]
fn yubikey_crate_generates_an_rsa_key_and_signs_with_it() {
    // RSA-2048 signing chains the command (256 bytes of input) and the response (61xx /
    // GET RESPONSE).
    use der::Encode;
    use rsa::pkcs8::DecodePublicKey;
    use rsa::sha2::{Digest, Sha256};
    use yubikey::piv::{self, AlgorithmId, SlotId};
    use yubikey::{MgmKey, PinPolicy, TouchPolicy, YubiKey};

    let card = Card::start();
    let mut yk = YubiKey::open_by_serial(yubikey::Serial(card.serial)).expect("open");
    let mgm = MgmKey::get_default(&yk).expect("default management key for 5.2.7");
    yk.authenticate(&mgm).expect("management key");
    let spki = piv::generate(
        &mut yk,
        SlotId::Authentication,
        AlgorithmId::Rsa2048,
        PinPolicy::Default,
        TouchPolicy::Default,
    )
    .expect("generate RSA-2048");
    let public = rsa::RsaPublicKey::from_public_key_der(&spki.to_der().unwrap()).unwrap();

    yk.verify_pin(PIN.as_bytes()).expect("PIN");
    let hash = Sha256::digest(b"pivault vcard");
    // EMSA-PKCS1-v1_5 (RFC 8017 §9.2): 00 01 FF..FF 00 DigestInfo(SHA-256) hash; the card
    // does the raw RSA operation on the padded block.
    const SHA256_DIGEST_INFO: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    let mut block = vec![0x00, 0x01];
    block.resize(256 - SHA256_DIGEST_INFO.len() - hash.len() - 1, 0xFF);
    block.push(0x00);
    block.extend_from_slice(&SHA256_DIGEST_INFO);
    block.extend_from_slice(&hash);
    let signature = piv::sign_data(
        &mut yk,
        &block,
        AlgorithmId::Rsa2048,
        SlotId::Authentication,
    )
    .expect("sign");
    public
        .verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &hash, &signature)
        .expect("the card's RSA signature verifies");
}

fn card_on(version: &str) -> Card {
    Card::start_with(CardOptions {
        version: Some(version.into()),
        ..CardOptions::default()
    })
}

#[test]
fn yubico_piv_tool_status_on_every_profile() {
    // 4.3.7 has no GET SERIAL in PIV: yubico-piv-tool reads it from the OTP applet.
    for version in ["4.3.7", "5.2.7", "5.4.3", "5.7.2", "5.7.4"] {
        let card = card_on(version);
        let (success, text) = piv_tool(&card, &["-a", "status"]);
        assert!(success, "{version}: {text}");
        assert!(text.contains(&format!("Version:\t{version}")), "{text}");
        assert!(
            text.contains(&format!("Serial Number:\t{}", card.serial)),
            "{version}: {text}"
        );
    }
}

#[test]
fn ykman_piv_info_reports_metadata_where_the_firmware_has_it() {
    // Debian's ykman 4.0.9 asks GET METADATA from 5.3: the PUK tries and the management
    // key algorithm come from it (without metadata it shows "PIN tries remaining: 3" and
    // assumes TDES).
    for (version, metadata, algorithm) in [
        ("4.3.7", false, "TDES"),
        ("5.2.7", false, "TDES"),
        ("5.4.3", true, "TDES"),
        ("5.7.4", true, "AES192"),
    ] {
        let card = card_on(version);
        let info = ykman(&card, &["piv", "info"]);
        assert!(info.contains(&format!("PIV version: {version}")), "{info}");
        assert!(
            info.contains(&format!("Management key algorithm: {algorithm}")),
            "{version}: {info}"
        );
        assert_eq!(
            info.contains("PIN tries remaining: 3/3"),
            metadata,
            "{version}: {info}"
        );
    }
}

/// ykman 5 from PyPI: `PIVAULT_YKMAN5`, else the venv `scripts/ykman-conformance` makes.
fn ykman5() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PIVAULT_YKMAN5") {
        return Some(path.into());
    }
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let path = home.join("pivault/ykman-5.9.2/venv/bin/ykman");
    path.exists().then_some(path)
}

#[test]
fn ykman_5_from_pypi_sees_a_usb_yubikey_with_piv_metadata() {
    let Some(ykman5) = ykman5() else {
        eprintln!(
            "SKIPPED: no ykman 5 (set PIVAULT_YKMAN5, or run scripts/ykman-conformance once)"
        );
        return;
    };
    let ykman5 = ykman5.to_str().unwrap();
    for (version, algorithm) in [("5.7.4", "AES192"), ("5.4.3", "TDES")] {
        let card = card_on(version);
        let device = ok(ykman5, &["--reader", &card.reader, "info"]);
        assert!(
            device.contains(&format!("Serial number: {}", card.serial)),
            "{device}"
        );
        assert!(
            device.contains(&format!("Firmware version: {version}")),
            "{device}"
        );
        let info = ok(ykman5, &["--reader", &card.reader, "piv", "info"]);
        assert!(
            info.contains("PUK tries remaining:      3/3"),
            "{version}: {info}"
        );
        assert!(info.contains(algorithm), "{version}: {info}");
    }
}

/// The PKCS#11 slot id OpenSC gives `reader`.
fn pkcs11_slot(module: &str, reader: &str) -> String {
    let text = ok("pkcs11-tool", &["--module", module, "-L"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("Slot ") && l.ends_with(&format!(": {reader}")))
        .unwrap_or_else(|| panic!("no PKCS#11 slot for {reader}:\n{text}"));
    // "Slot 1 (0x4): Yubico ..." -> "0x4"
    line.split(['(', ')']).nth(1).expect("slot id").to_string()
}

#[test]
fn pkcs11_tool_signs_on_5_7_and_openssl_verifies() {
    let card = card_on("5.7.4");
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("9a.pub.pem");
    let public = public.to_str().unwrap();
    // ykman authenticates with the AES-192 factory key (it reads the algorithm from
    // metadata) and has the card sign the certificate.
    ykman(
        &card,
        &[
            "piv",
            "keys",
            "generate",
            "-m",
            DEFAULT_MGM,
            "-a",
            "ECCP256",
            "9a",
            public,
        ],
    );
    ykman(
        &card,
        &[
            "piv",
            "certificates",
            "generate",
            "-m",
            DEFAULT_MGM,
            "-P",
            PIN,
            "-s",
            "CN=pkcs11 on 5.7",
            "9a",
            public,
        ],
    );
    let module = opensc_module();
    let module = module.to_str().unwrap();
    let slot = pkcs11_slot(module, &card.reader);
    let data = dir.path().join("data");
    std::fs::write(&data, b"signed by the virtual YubiKey through PKCS#11").unwrap();
    let signature = dir.path().join("sig");
    ok(
        "pkcs11-tool",
        &[
            "--module",
            module,
            "--slot",
            &slot,
            "--login",
            "--pin",
            PIN,
            "--sign",
            "--id",
            "01",
            "--mechanism",
            "ECDSA-SHA256",
            "--signature-format",
            "openssl",
            "-i",
            data.to_str().unwrap(),
            "-o",
            signature.to_str().unwrap(),
        ],
    );
    let text = ok(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            public,
            "-signature",
            signature.to_str().unwrap(),
            data.to_str().unwrap(),
        ],
    );
    assert!(text.contains("Verified OK"), "{text}");
}

#[test]
fn yubikey_crate_on_5_7_uses_the_aes192_default_and_signs() {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use rsa::sha2::{Digest, Sha256};
    use yubikey::piv::{self, AlgorithmId, SlotId};
    use yubikey::{MgmKey, PinPolicy, TouchPolicy, YubiKey};

    let card = card_on("5.7.4");
    let mut yk = YubiKey::open_by_serial(yubikey::Serial(card.serial)).expect("open");
    let mgm = MgmKey::get_default(&yk).expect("default management key for 5.7");
    yk.authenticate(&mgm)
        .expect("AES-192 factory management key");
    let spki = piv::generate(
        &mut yk,
        SlotId::Signature,
        AlgorithmId::EccP256,
        PinPolicy::Default,
        TouchPolicy::Default,
    )
    .expect("generate P-256");
    let point = spki.subject_public_key.raw_bytes();
    let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
    // 9c: PIN policy "always": one verification, one signature.
    let hash = Sha256::digest(b"pivault vcard 5.7");
    yk.verify_pin(PIN.as_bytes()).expect("PIN");
    let der =
        piv::sign_data(&mut yk, &hash, AlgorithmId::EccP256, SlotId::Signature).expect("sign");
    let signature = p256::ecdsa::Signature::from_der(&der).unwrap();
    verifying.verify_prehash(&hash, &signature).unwrap();
    assert!(
        piv::sign_data(&mut yk, &hash, AlgorithmId::EccP256, SlotId::Signature).is_err(),
        "9c signed twice on one PIN verification"
    );
}

#[test]
fn touch_timeout_refuses_a_touch_key_and_ok_touches() {
    use yubikey::piv::{self, AlgorithmId, SlotId};
    use yubikey::{MgmKey, PinPolicy, TouchPolicy, YubiKey};

    for (touch, signs) in [("timeout", false), ("300", true)] {
        let card = Card::start_with(CardOptions {
            version: Some("5.7.4".into()),
            args: vec!["--touch".into(), touch.into()],
            ..CardOptions::default()
        });
        let mut yk = YubiKey::open_by_serial(yubikey::Serial(card.serial)).expect("open");
        let mgm = MgmKey::get_default(&yk).unwrap();
        yk.authenticate(&mgm).unwrap();
        piv::generate(
            &mut yk,
            SlotId::Authentication,
            AlgorithmId::EccP256,
            PinPolicy::Once,
            TouchPolicy::Always,
        )
        .expect("generate");
        yk.verify_pin(PIN.as_bytes()).unwrap();
        let started = std::time::Instant::now();
        let signed = piv::sign_data(
            &mut yk,
            &[7u8; 32],
            AlgorithmId::EccP256,
            SlotId::Authentication,
        );
        assert_eq!(signed.is_ok(), signs, "--touch {touch}: {signed:?}");
        if signs {
            assert!(started.elapsed() >= Duration::from_millis(300));
        }
    }
}

/// Raw PC/SC access to a card's reader.
fn pcsc_connect(card: &Card) -> pcsc::Card {
    let ctx = pcsc::Context::establish(pcsc::Scope::User).unwrap();
    let reader = CString::new(card.reader.clone()).unwrap();
    ctx.connect(&reader, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
        .unwrap()
}

fn transmit(conn: &pcsc::Card, apdu: &[u8]) -> Result<Vec<u8>, pcsc::Error> {
    let mut buf = [0u8; 300];
    conn.transmit(apdu, &mut buf).map(<[u8]>::to_vec)
}

const SELECT_PIV: [u8; 10] = [0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08];

fn verify_apdu(pin: &[u8]) -> Vec<u8> {
    let mut apdu = vec![0x00, 0x20, 0x00, 0x80, 0x08];
    apdu.extend_from_slice(pin);
    apdu.resize(13, 0xFF);
    apdu
}

#[test]
fn fault_vanish_pulls_the_card_at_apdu_n_and_keeps_what_was_answered() {
    // Other tests' clients (pkcs11-tool -L, ykman) probe every card on the machine, so the
    // count may have moved before we hold the card: take it exclusively, read the count,
    // pad with GET VERSION, then SELECT (N-2), CHANGE REFERENCE (N-1, answered: on disk)
    // and VERIFY (N): the card vanishes before processing it.
    const N: u64 = 200;
    let mut card = Card::start_with(CardOptions {
        args: vec!["--fault".into(), format!("vanish@{N}")],
        ..CardOptions::default()
    });
    let conn = pcsc_exclusive(&card);
    let mut count = card.apdu_count();
    assert!(
        count + 3 < N,
        "{count} APDUs already: others probed the card too much"
    );
    const GET_VERSION: [u8; 5] = [0x00, 0xFD, 0x00, 0x00, 0x00];
    while count + 3 < N {
        transmit(&conn, &GET_VERSION).unwrap();
        count += 1;
    }
    assert!(transmit(&conn, &SELECT_PIV)
        .unwrap()
        .ends_with(&[0x90, 0x00]));
    let mut change = vec![0x00, 0x24, 0x00, 0x80, 0x10];
    change.extend_from_slice(b"123456\xFF\xFF654321\xFF\xFF");
    assert_eq!(transmit(&conn, &change).unwrap(), [0x90, 0x00]);
    // vpcd reports a card gone mid-command as an error or an answer without status word.
    let answer = transmit(&conn, &verify_apdu(b"654321"));
    assert!(
        answer.as_ref().map_or(true, |r| r.len() < 2),
        "the card answered APDU {N}: {answer:02x?}"
    );
    assert_eq!(card.exit_code(Duration::from_secs(10)), Some(5));
    drop(conn);

    // Plugged in again (same state, no fault): the PIN change survived.
    let again = Card::start_with(CardOptions {
        serial: Some(card.serial),
        state: Some(card.state.clone()),
        ..CardOptions::default()
    });
    let conn = pcsc_connect(&again);
    assert!(transmit(&conn, &SELECT_PIV)
        .unwrap()
        .ends_with(&[0x90, 0x00]));
    assert_eq!(
        transmit(&conn, &verify_apdu(b"654321")).unwrap(),
        [0x90, 0x00]
    );
}

/// An exclusive connection (other processes wait), retried while someone else holds it.
fn pcsc_exclusive(card: &Card) -> pcsc::Card {
    let ctx = pcsc::Context::establish(pcsc::Scope::User).unwrap();
    let reader = CString::new(card.reader.clone()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match ctx.connect(&reader, pcsc::ShareMode::Exclusive, pcsc::Protocols::ANY) {
            Ok(conn) => return conn,
            Err(err) if std::time::Instant::now() < deadline => {
                eprintln!("exclusive connect: {err}; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(err) => panic!("no exclusive connection to {}: {err}", card.reader),
        }
    }
}

#[test]
fn fault_pause_after_holds_the_answer_until_sigusr2() {
    let card = Card::start_with(CardOptions {
        args: vec!["--fault".into(), "pause-after@2".into()],
        ..CardOptions::default()
    });
    let reader = card.reader.clone();
    let client =
        std::thread::spawn(move || run("yubico-piv-tool", &["-r", &reader, "-a", "status"]));
    let line = card
        .wait_line("paused apdu=", Duration::from_secs(20))
        .expect("the card paused");
    assert!(line.starts_with("paused apdu=2 ins="), "{line}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !client.is_finished(),
        "the client got its answer while paused"
    );
    card.resume();
    let (success, text) = client.join().unwrap();
    assert!(success, "{text}");
}
