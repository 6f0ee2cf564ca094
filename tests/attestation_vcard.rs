//! pivault's attestation verifier (`pivault::attestation`) against the virtual YubiKey:
//! keys generated on the card (the `yubikey` crate), attested and the F9 certificate read
//! by another client (`yubico-piv-tool -a attest` / `-a read-certificate -s f9`), checked
//! against the card's own exported TEST chain (`pivault-vcard --export-attestation-chain`,
//! loaded as a replacement bundle, as `--attestation-roots FILE` will).
//!
//! Forgeries must be refused with the reason: another key, another serial, another root
//! (Yubico's, and a second card's same-named test root), an altered extension.

mod common;

use std::path::Path;
use std::time::SystemTime;

use common::card::{Card, CardOptions};
use common::run::{ok, tool};
use der::Encode;
use pivault::attestation::{
    self, AttestationError, AttestationPolicy, Edition, FormFactor, KeyAlgorithm, PolicyRefusal,
    TrustBundle, Which,
};
use pivault::piv::{FirmwareVersion, PinPolicy, Slot, TouchPolicy};
use yubikey::piv::{AlgorithmId, SlotId};

const TEST_ROOT: &str = "pivault-vcard TEST Attestation Root - not Yubico";

/// One key on the card: where, what, and its public key as the card answered GENERATE.
struct Generated {
    slot: &'static str,
    algorithm: KeyAlgorithm,
    spki: Vec<u8>,
}

fn start(version: &str) -> Card {
    Card::start_with(CardOptions {
        version: Some(version.into()),
        ..CardOptions::default()
    })
}

/// Generates keys with the `yubikey` crate (factory management key).
fn generate(
    card: &Card,
    keys: &[(&'static str, SlotId, AlgorithmId, KeyAlgorithm)],
    pin: yubikey::PinPolicy,
    touch: yubikey::TouchPolicy,
) -> Vec<Generated> {
    let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial(card.serial)).expect("open");
    let mgm = yubikey::MgmKey::get_default(&yk).expect("default management key");
    yk.authenticate(&mgm).expect("factory management key");
    keys.iter()
        .map(|&(slot, id, alg, algorithm)| {
            let spki = yubikey::piv::generate(&mut yk, id, alg, pin, touch)
                .unwrap_or_else(|e| panic!("generate {alg:?} in {slot}: {e}"));
            Generated {
                slot,
                algorithm,
                spki: spki.to_der().expect("SPKI encodes"),
            }
        })
        .collect()
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

/// ATTEST by yubico-piv-tool, DER.
fn attest(card: &Card, slot: &str) -> Vec<u8> {
    pem_der(&piv_tool(&card.reader, &["-a", "attest", "-s", slot]))
}

/// The F9 certificate read by yubico-piv-tool, DER.
fn f9(card: &Card) -> Vec<u8> {
    pem_der(&piv_tool(
        &card.reader,
        &["-a", "read-certificate", "-s", "f9"],
    ))
}

/// The card's TEST chain (root + two intermediates), written by the card binary from a
/// copy of the running card's state (the copy cannot reach vpcd on port 1 and exits 3).
fn exported_bundle(card: &Card, dir: &Path) -> TrustBundle {
    TrustBundle::from_file(&card.export_attestation_chain(dir))
        .expect("the exported chain is a usable bundle")
}

fn all_algorithms() -> Vec<(&'static str, SlotId, AlgorithmId, KeyAlgorithm)> {
    vec![
        (
            "9a",
            SlotId::Authentication,
            AlgorithmId::EccP256,
            KeyAlgorithm::P256,
        ),
        (
            "9c",
            SlotId::Signature,
            AlgorithmId::EccP384,
            KeyAlgorithm::P384,
        ),
        (
            "9d",
            SlotId::KeyManagement,
            AlgorithmId::Rsa2048,
            KeyAlgorithm::Rsa2048,
        ),
        (
            "9e",
            SlotId::CardAuthentication,
            AlgorithmId::Ed25519,
            KeyAlgorithm::Ed25519,
        ),
        (
            "82",
            SlotId::Retired(yubikey::piv::RetiredSlotId::R1),
            AlgorithmId::X25519,
            KeyAlgorithm::X25519,
        ),
    ]
}

fn every_algorithm_verifies_on(version: &str, chain_via: &str) {
    let card = start(version);
    let dir = tempfile::tempdir().expect("temporary directory");
    let bundle = exported_bundle(&card, dir.path());
    assert_eq!(bundle.root_names(), [TEST_ROOT]);
    let keys = generate(
        &card,
        &all_algorithms(),
        yubikey::PinPolicy::Once,
        yubikey::TouchPolicy::Cached,
    );
    let f9 = f9(&card);
    let fw: Vec<u8> = version
        .split('.')
        .map(|n| n.parse().expect("digit"))
        .collect();
    for key in &keys {
        let att = attest(&card, key.slot);
        let a = attestation::verify_generated_key(
            &att,
            &f9,
            &bundle,
            SystemTime::now(),
            &key.spki,
            card.serial,
        )
        .unwrap_or_else(|e| panic!("{version} {}: {e}", key.slot));
        assert_eq!(a.algorithm, key.algorithm, "{}", key.slot);
        assert_eq!(a.slot, Some(key.slot.parse::<Slot>().expect("slot")));
        assert_eq!(a.serial, Some(card.serial));
        assert_eq!(a.firmware, FirmwareVersion::new(fw[0], fw[1], fw[2]));
        assert_eq!(
            (a.pin_policy, a.touch_policy),
            (PinPolicy::Once, TouchPolicy::Cached)
        );
        assert_eq!(a.form_factor, Some(FormFactor::UsbAKeychain));
        assert_eq!(a.edition, Edition::Standard);
        assert_eq!(a.root, TEST_ROOT);
        assert_eq!(a.chain.len(), 2, "{:?}", a.chain);
        assert!(a.chain[1].contains(chain_via), "{:?}", a.chain);
        assert!(
            a.advisories().is_empty(),
            "5.7 has no advisory: {:?}",
            a.advisories()
        );
        // Yubico's roots do not vouch for the test card.
        let err = attestation::verify(&att, &f9, &TrustBundle::yubico(), SystemTime::now())
            .expect_err("the TEST root is not Yubico's");
        assert!(matches!(err, AttestationError::UnknownRoot { .. }), "{err}");
    }
    // Wrong key: 9a's attestation offered for 9c's key.
    let a9a = attestation::verify(&attest(&card, "9a"), &f9, &bundle, SystemTime::now())
        .expect("9a verifies");
    assert_eq!(
        a9a.check_public_key(&keys[1].spki),
        Err(AttestationError::PublicKeyMismatch { slot: "9a".into() })
    );
    // Wrong serial: the token in hand is not the one attested.
    assert_eq!(
        a9a.check_serial(card.serial + 1),
        Err(AttestationError::SerialMismatch {
            attested: card.serial,
            token: card.serial + 1
        })
    );
}

#[test]
fn every_algorithm_attests_on_5_7_4() {
    every_algorithm_verifies_on("5.7.4", "TEST PIV Attestation B 1");
}

#[test]
fn every_algorithm_attests_on_5_7_2() {
    every_algorithm_verifies_on("5.7.2", "TEST PIV Root CA");
}

#[test]
fn forged_attestations_are_refused_with_the_reason() {
    let (a, b) = (start("5.7.4"), start("5.7.4"));
    let dir = tempfile::tempdir().expect("temporary directory");
    let bundle_a = exported_bundle(&a, dir.path());
    let bundle_b = exported_bundle(&b, dir.path());
    let p256 = [(
        "9a",
        SlotId::Authentication,
        AlgorithmId::EccP256,
        KeyAlgorithm::P256,
    )];
    let ka = generate(
        &a,
        &p256,
        yubikey::PinPolicy::Once,
        yubikey::TouchPolicy::Never,
    );
    let kb = generate(
        &b,
        &p256,
        yubikey::PinPolicy::Once,
        yubikey::TouchPolicy::Never,
    );
    let (att_a, f9_a) = (attest(&a, "9a"), f9(&a));
    let (att_b, f9_b) = (attest(&b, "9a"), f9(&b));
    let now = SystemTime::now();
    attestation::verify_generated_key(&att_a, &f9_a, &bundle_a, now, &ka[0].spki, a.serial)
        .expect("card A's genuine attestation verifies");
    attestation::verify_generated_key(&att_b, &f9_b, &bundle_b, now, &kb[0].spki, b.serial)
        .expect("card B's genuine attestation verifies");

    // Wrong key: card B's key presented with card A's attestation.
    let err =
        attestation::verify_generated_key(&att_a, &f9_a, &bundle_a, now, &kb[0].spki, a.serial)
            .expect_err("another key");
    assert_eq!(
        err,
        AttestationError::PublicKeyMismatch { slot: "9a".into() }
    );
    assert!(
        err.to_string().contains("not the key the token generated"),
        "{err}"
    );

    // Wrong serial: card A's genuine attestation presented for card B.
    let err =
        attestation::verify_generated_key(&att_a, &f9_a, &bundle_a, now, &ka[0].spki, b.serial)
            .expect_err("another serial");
    assert_eq!(
        err,
        AttestationError::SerialMismatch {
            attested: a.serial,
            token: b.serial
        }
    );

    // Wrong F9: card B's attestation with card A's F9 certificate (same subject name
    // shape, other key).
    let err = attestation::verify(&att_b, &f9_a, &bundle_a, now).expect_err("another F9");
    assert!(
        matches!(
            &err,
            AttestationError::IssuerMismatch { .. }
                | AttestationError::BadSignature {
                    which: Which::SlotAttestation,
                    ..
                }
        ),
        "{err}"
    );

    // Wrong root: card B's chain has the same names as card A's, other keys.
    let err = attestation::verify(&att_a, &f9_a, &bundle_b, now).expect_err("another root");
    assert!(
        matches!(&err, AttestationError::BadSignature { which: Which::F9, signer, .. } if signer.contains("TEST PIV Attestation B 1")),
        "{err}"
    );
    assert!(err.to_string().contains("is not signed by"), "{err}");
    // ... and Yubico's bundle does not know the test root at all.
    let err =
        attestation::verify(&att_a, &f9_a, &TrustBundle::yubico(), now).expect_err("not Yubico's");
    assert!(
        matches!(&err, AttestationError::UnknownRoot { which: Which::F9, issuer } if issuer.contains("TEST PIV Attestation B 1")),
        "{err}"
    );

    // Tampered extensions: the serial (41482.3.7) changed to card B's, and the policy
    // (41482.3.8) changed from PIN once to never. The signature no longer covers them.
    // Each is found as extension OID + OCTET STRING header + value, so the bytes changed
    // are the extension's and nothing else.
    let ext = |arc: &str, value: Vec<u8>| {
        let oid = const_oid::ObjectIdentifier::new_unwrap(arc);
        let mut bytes = oid.to_der().expect("OID encodes");
        bytes.extend([0x04, value.len() as u8]);
        bytes.extend(value);
        bytes
    };
    let serial = |n: u32| n.to_der().expect("INTEGER");
    for (what, from, to) in [
        (
            "serial",
            ext("1.3.6.1.4.1.41482.3.7", serial(a.serial)),
            ext("1.3.6.1.4.1.41482.3.7", serial(b.serial)),
        ),
        (
            "policy",
            ext("1.3.6.1.4.1.41482.3.8", vec![0x02, 0x01]),
            ext("1.3.6.1.4.1.41482.3.8", vec![0x01, 0x01]),
        ),
    ] {
        assert_eq!(
            from.len(),
            to.len(),
            "{what}: same length keeps the DER valid"
        );
        let mut forged = att_a.clone();
        let at = forged
            .windows(from.len())
            .position(|w| w == from.as_slice())
            .unwrap_or_else(|| panic!("{what} extension in the attestation"));
        forged[at..at + to.len()].copy_from_slice(&to);
        let err = attestation::verify(&forged, &f9_a, &bundle_a, now).expect_err(what);
        assert!(
            matches!(
                err,
                AttestationError::BadSignature {
                    which: Which::SlotAttestation,
                    ..
                }
            ),
            "{what}: {err}"
        );
    }
}

#[test]
fn policy_refuses_by_rule_on_card_attestations() {
    let card = start("5.4.3");
    let dir = tempfile::tempdir().expect("temporary directory");
    let bundle = exported_bundle(&card, dir.path());
    let keys = generate(
        &card,
        &[(
            "9a",
            SlotId::Authentication,
            AlgorithmId::EccP256,
            KeyAlgorithm::P256,
        )],
        yubikey::PinPolicy::Never,
        yubikey::TouchPolicy::Never,
    );
    let a = attestation::verify_generated_key(
        &attest(&card, "9a"),
        &f9(&card),
        &bundle,
        SystemTime::now(),
        &keys[0].spki,
        card.serial,
    )
    .expect("verifies");
    assert_eq!(a.pin_policy, PinPolicy::Never);
    // ECDSA before 5.7.0: flagged (YSA-2024-03).
    assert_eq!(a.advisories(), [attestation::Advisory::Eucleak]);
    let once: AttestationPolicy =
        toml::from_str("require = true\nallowed_pin_policies = [\"once\", \"always\"]")
            .expect("toml");
    assert!(matches!(
        once.check(&a),
        Err(PolicyRefusal::PinPolicy {
            got: PinPolicy::Never,
            ..
        })
    ));
    let min: AttestationPolicy = toml::from_str("min_firmware = \"5.7.0\"").expect("toml");
    assert!(matches!(
        min.check(&a),
        Err(PolicyRefusal::FirmwareTooOld { .. })
    ));
    let eucleak: AttestationPolicy =
        toml::from_str("refuse_ecdsa_before_5_7 = true").expect("toml");
    assert_eq!(
        eucleak.check(&a),
        Err(PolicyRefusal::Eucleak(FirmwareVersion::new(5, 4, 3)))
    );
    assert_eq!(AttestationPolicy::default().check(&a), Ok(()));
}

#[test]
fn yubikey4_profile_attests_no_serial() {
    let card = start("4.3.7");
    let dir = tempfile::tempdir().expect("temporary directory");
    let bundle = exported_bundle(&card, dir.path());
    let keys = generate(
        &card,
        &[(
            "9a",
            SlotId::Authentication,
            AlgorithmId::EccP256,
            KeyAlgorithm::P256,
        )],
        yubikey::PinPolicy::Once,
        yubikey::TouchPolicy::Never,
    );
    let a = attestation::verify(&attest(&card, "9a"), &f9(&card), &bundle, SystemTime::now())
        .expect("verifies");
    assert_eq!(a.firmware, FirmwareVersion::new(4, 3, 7));
    assert_eq!((a.serial, a.form_factor), (None, None));
    a.check_public_key(&keys[0].spki).expect("same key");
    assert_eq!(
        a.check_serial(card.serial),
        Err(AttestationError::SerialNotAttested(FirmwareVersion::new(
            4, 3, 7
        )))
    );
}
