//! Unit tests on real, public Yubico attestation chains (fixtures/attestation, each file
//! names its source and licence) and on the shipped bundle. (Over 500 lines: one test
//! per chain shape and per refusal, kept beside the verifier they test.)

use super::sig::{signature_algorithm, Hash, SignatureAlgorithm};
use super::*;
use std::time::{Duration, UNIX_EPOCH};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/attestation/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    let start = text.find("-----BEGIN").expect("PEM block");
    der::pem::decode_vec(&text.as_bytes()[start..])
        .expect("PEM")
        .1
}

fn pair(name: &str) -> (Vec<u8>, Vec<u8>) {
    (
        fixture(&format!("{name}-9a.pem")),
        fixture(&format!("{name}-f9.pem")),
    )
}

/// 2026-12-01: inside every fixture's validity.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_083_200)
}

fn verify_real(name: &str) -> Result<Attestation, AttestationError> {
    let (att, f9) = pair(name);
    verify(&att, &f9, &TrustBundle::yubico(), now())
}

#[test]
fn shipped_bundle_holds_yubicos_piv_roots_and_intermediates() {
    let b = TrustBundle::yubico();
    assert_eq!(
        b.root_names(),
        [
            "Yubico PIV Root CA Serial 263751",
            "Yubico PIV Root CA Serial 263751",
            "Yubico U2F Root CA Serial 457200631",
            "Yubico Attestation Root 1"
        ]
    );
    assert_eq!(
        b.intermediate_names(),
        [
            "Yubico Attestation Intermediate A 1",
            "Yubico Attestation Intermediate B 1",
            "Yubico PIV Attestation A 1",
            "Yubico PIV Attestation B 1",
            "Yubico PIV Attestation B2 1"
        ]
    );
    // Every intermediate chains to Attestation Root 1 with verified signatures, B2 1
    // included, whose RSA identifier has no NULL parameters.
    for e in &b.intermediates {
        let (root, sha, _) = b.chain_of(&e.cert, &e.der, now()).expect(&e.name);
        assert_eq!(
            sha,
            "62760c6a6ef91679f454c8902b80fd009825b3f25da90f1fbace2ec6586cd5a8"
        );
        assert_eq!(root, "Yubico Attestation Root 1", "{}", e.name);
    }
    let b2 = b
        .intermediates
        .iter()
        .find(|e| e.name == "Yubico PIV Attestation B2 1")
        .expect("B2 1 in the bundle");
    assert_eq!(
        signature_algorithm(b2.cert.signature_algorithm()),
        Ok(SignatureAlgorithm::RsaPkcs1 {
            hash: Hash::Sha256,
            null_params: false
        })
    );
    // A strict reader that wants RFC 4055's NULL refuses B2 1; the absent-parameters
    // identifier is the one that matches (webpki's names for both, compared as DER).
    let alg = b2.cert.signature_algorithm().to_der().expect("encodes");
    let content = &alg[2..]; // webpki's identifiers omit the SEQUENCE header
    let strict = webpki::ring::RSA_PKCS1_2048_8192_SHA256.signature_alg_id();
    let absent = webpki::ring::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS.signature_alg_id();
    assert_ne!(strict.as_ref(), content);
    assert_eq!(absent.as_ref(), content);
    // Every header names a SHA-256 that matches its block.
    let fps: Vec<&str> = DEFAULT_BUNDLE_PEM
        .lines()
        .filter_map(|l| l.strip_prefix("#   SHA-256: "))
        .collect();
    assert_eq!(fps.len(), 9);
    let file_order: Vec<String> = super::bundle::pem_certificates(DEFAULT_BUNDLE_PEM)
        .expect("PEM")
        .iter()
        .map(|der| crate::crypto::sha256_hex(der).to_uppercase())
        .collect();
    assert_eq!(file_order, fps);
}

#[test]
fn yubikey5_chain_through_the_2016_piv_root() {
    let a = verify_real("piv-go-yk5").expect("verifies");
    assert_eq!(a.root, "Yubico PIV Root CA Serial 263751");
    // The 2018 certificate comes first in the bundle and has the same key.
    assert_eq!(
        a.root_sha256,
        "63ece914e54dd87915f34033c85af4c0696ba1512f8add66ced738331207b546"
    );
    assert_eq!(a.chain, ["Yubico PIV Attestation"]);
    assert_eq!(a.firmware, FirmwareVersion::new(5, 4, 3));
    assert_eq!(a.serial, Some(15_732_500));
    assert_eq!(a.slot, Some(Slot::AUTHENTICATION));
    assert_eq!(a.algorithm, KeyAlgorithm::P256);
    assert_eq!(
        (a.pin_policy, a.touch_policy),
        (PinPolicy::Once, TouchPolicy::Never)
    );
    assert_eq!(a.form_factor, Some(FormFactor::UsbCNano));
    assert_eq!(a.edition, Edition::Standard);
    assert_eq!(a.advisories(), [Advisory::Eucleak]);
    let json = serde_json::to_value(&a).expect("serialises");
    assert_eq!(json["pin_policy"], "once");
    assert_eq!(json["form_factor"], "usb-c-nano");
    assert_eq!(json["slot"], "9a");
}

/// The original 2016 "Yubico PIV Root CA Serial 263751" certificate alone (pathlen:0,
/// the one older verifiers ship) is enough: the 2018 reissue is not what makes it pass.
#[test]
fn the_2016_piv_root_certificate_alone_verifies_real_chains() {
    let shipped = TrustBundle::yubico();
    let old = shipped
        .roots
        .iter()
        .find(|e| {
            crate::crypto::sha256_hex(&e.der)
                == "7e996a28e3055223733c9aec897900eda9b746e3e15d419556ac6a1179879a50"
        })
        .expect("the 2016 certificate is shipped")
        .clone();
    let only_2016 = TrustBundle {
        roots: vec![old],
        intermediates: Vec::new(),
    };
    for name in ["piv-go-yk5", "ovh-yk4"] {
        let (att, f9) = pair(name);
        let a = verify(&att, &f9, &only_2016, now()).expect(name);
        assert_eq!(a.root, "Yubico PIV Root CA Serial 263751", "{name}");
        assert_eq!(
            a.root_sha256, "7e996a28e3055223733c9aec897900eda9b746e3e15d419556ac6a1179879a50",
            "{name}"
        );
    }
    // ... and it does not stand in for Attestation Root 1.
    let (att, f9) = pair("ovh-yk574");
    assert!(matches!(
        verify(&att, &f9, &only_2016, now()),
        Err(AttestationError::UnknownRoot { .. })
    ));
}

#[test]
fn yubikey4_chains_without_basic_constraints_and_through_the_u2f_root() {
    let a = verify_real("ovh-yk4").expect("YubiKey 4 through the PIV root");
    assert_eq!(a.root, "Yubico PIV Root CA Serial 263751");
    assert_eq!(a.firmware, FirmwareVersion::new(4, 3, 5));
    assert_eq!(a.serial, Some(5_970_478));
    assert_eq!(a.algorithm, KeyAlgorithm::Rsa2048);
    assert_eq!(
        (a.pin_policy, a.touch_policy),
        (PinPolicy::Always, TouchPolicy::Never)
    );
    assert_eq!(a.form_factor, None);
    // 4.3.5 is the first firmware after the ROCA range.
    assert!(a.advisories().is_empty());

    let a = verify_real("piv-go-yk4-u2f").expect("YubiKey 4 through the U2F root");
    assert_eq!(a.root, "Yubico U2F Root CA Serial 457200631");
    assert_eq!(a.firmware, FirmwareVersion::new(4, 3, 7));
    assert_eq!(a.serial, None);
    assert_eq!(
        a.check_serial(1),
        Err(AttestationError::SerialNotAttested(FirmwareVersion::new(
            4, 3, 7
        )))
    );
}

#[test]
fn yubikey574_chain_through_attestation_root_1() {
    let a = verify_real("ovh-yk574").expect("verifies");
    assert_eq!(a.root, "Yubico Attestation Root 1");
    assert_eq!(
        a.chain,
        [
            "YubiKey PIV Attestation",
            "Yubico PIV Attestation B 1",
            "Yubico Attestation Intermediate B 1"
        ]
    );
    assert_eq!(a.firmware, FirmwareVersion::new(5, 7, 4));
    assert_eq!(a.serial, Some(32_718_477));
    assert_eq!(a.algorithm, KeyAlgorithm::Rsa2048);
    assert_eq!(a.form_factor, Some(FormFactor::UsbCNano));
    assert!(a.check_serial(32_718_477).is_ok());
}

#[test]
fn webpki_rejects_real_yubikey4_chains() {
    // Why pivault walks the chain itself (module documentation): RFC 5280 path
    // validation refuses Yubico's own YubiKey 4 chains.
    use rustls_pki_types::{CertificateDer, UnixTime};
    let b = TrustBundle::yubico();
    let anchors: Vec<_> = b
        .roots
        .iter()
        .map(|r| {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(r.der.as_slice()))
                .expect("anchor")
                .to_owned()
        })
        .collect();
    for name in ["ovh-yk4", "piv-go-yk4-u2f"] {
        let (att, f9) = pair(name);
        let ee_der = CertificateDer::from(att.as_slice());
        let ee = webpki::EndEntityCert::try_from(&ee_der).expect("parses");
        let inter = [CertificateDer::from(f9.as_slice())];
        let r = ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &inter,
            UnixTime::since_unix_epoch(Duration::from_secs(1_796_083_200)),
            webpki::KeyUsage::required_if_present(&[
                0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
            ]),
            None,
            None,
        );
        assert!(r.is_err(), "{name}: webpki accepted it");
        assert!(verify_real(name).is_ok(), "{name}");
    }
}

#[test]
fn another_tokens_f9_is_refused() {
    // piv-go's InvalidChain: both F9 certificates are named "Yubico PIV Attestation".
    let (att, _) = pair("piv-go-yk4-u2f");
    let (_, f9) = pair("piv-go-yk5");
    let err = verify(&att, &f9, &TrustBundle::yubico(), now()).expect_err("refused");
    assert!(
        matches!(&err, AttestationError::BadSignature { which: Which::SlotAttestation, signer, .. } if signer == "Yubico PIV Attestation"),
        "{err}"
    );
    let (_, f9) = pair("ovh-yk574");
    let err = verify(&att, &f9, &TrustBundle::yubico(), now()).expect_err("refused");
    assert!(
        matches!(err, AttestationError::IssuerMismatch { .. }),
        "{err}"
    );
}

#[test]
fn a_changed_extension_breaks_the_signature() {
    let (mut att, f9) = pair("piv-go-yk5");
    // PIN/touch policy 02 01 → 03 01: the extension OID then 04 02 02 01.
    let ext = [0x04, 0x02, 0x02, 0x01];
    let at = att.windows(4).position(|w| w == ext).expect("policy bytes");
    att[at + 2] = 0x03;
    let err = verify(&att, &f9, &TrustBundle::yubico(), now()).expect_err("refused");
    assert!(
        matches!(
            err,
            AttestationError::BadSignature {
                which: Which::SlotAttestation,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn an_unknown_root_is_named() {
    // The shipped file up to the U2F root: the two PIV root certificates only.
    let head = DEFAULT_BUNDLE_PEM
        .split("# Yubico U2F Root")
        .next()
        .expect("head");
    let only_piv = TrustBundle::from_pem(head, "test").expect("PIV roots only");
    let (att, f9) = pair("ovh-yk574");
    let err = verify(&att, &f9, &only_piv, now()).expect_err("refused");
    assert_eq!(
        err,
        AttestationError::UnknownRoot {
            which: Which::F9,
            issuer: "Yubico PIV Attestation B 1".into()
        }
    );
    assert!(err
        .to_string()
        .contains("not in the attestation trust bundle"));
    let (att, f9) = pair("piv-go-yk4-u2f");
    assert!(matches!(
        verify(&att, &f9, &only_piv, now()),
        Err(AttestationError::UnknownRoot { .. })
    ));
}

#[test]
fn validity_is_checked() {
    let (att, f9) = pair("piv-go-yk5");
    let b = TrustBundle::yubico();
    let late = UNIX_EPOCH + Duration::from_secs(2_600_000_000); // 2052-05
    assert!(matches!(
        verify(&att, &f9, &b, late),
        Err(AttestationError::Expired {
            which: Which::SlotAttestation,
            ..
        })
    ));
    let early = UNIX_EPOCH + Duration::from_secs(1_400_000_000); // 2014
    assert!(matches!(
        verify(&att, &f9, &b, early),
        Err(AttestationError::NotYetValid { .. })
    ));
}

#[test]
fn key_and_serial_must_match_the_token() {
    let a = verify_real("piv-go-yk5").expect("verifies");
    assert!(a.check_public_key(&a.public_key.clone()).is_ok());
    let other = verify_real("ovh-yk574").expect("verifies");
    assert_eq!(
        a.check_public_key(&other.public_key),
        Err(AttestationError::PublicKeyMismatch { slot: "9a".into() })
    );
    assert_eq!(
        a.check_serial(12345),
        Err(AttestationError::SerialMismatch {
            attested: 15_732_500,
            token: 12345
        })
    );
    let (att, f9) = pair("piv-go-yk5");
    let pk = a.public_key.clone();
    assert!(
        verify_generated_key(&att, &f9, &TrustBundle::yubico(), now(), &pk, 15_732_500).is_ok()
    );
    assert!(verify_generated_key(&att, &f9, &TrustBundle::yubico(), now(), &pk, 1).is_err());
}

#[test]
fn rsa_identifiers_with_null_or_absent_parameters_only() {
    use der::asn1::Any;
    use spki::AlgorithmIdentifierOwned;
    let id = |parameters| AlgorithmIdentifierOwned {
        oid: const_oid::db::rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
        parameters,
    };
    assert_eq!(
        signature_algorithm(&id(Some(Any::null()))),
        Ok(SignatureAlgorithm::RsaPkcs1 {
            hash: Hash::Sha256,
            null_params: true
        })
    );
    assert_eq!(
        signature_algorithm(&id(None)),
        Ok(SignatureAlgorithm::RsaPkcs1 {
            hash: Hash::Sha256,
            null_params: false
        })
    );
    let oid_param = Any::encode_from(&OID_P256).expect("encodes");
    assert!(signature_algorithm(&id(Some(oid_param))).is_err());
    let ecdsa_with_params = AlgorithmIdentifierOwned {
        oid: const_oid::db::rfc5912::ECDSA_WITH_SHA_256,
        parameters: Some(Any::null()),
    };
    assert!(signature_algorithm(&ecdsa_with_params).is_err());
}

#[test]
fn bad_bundles_are_refused() {
    assert!(TrustBundle::from_pem("", "t").is_err());
    assert!(TrustBundle::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n", "t").is_err());
    // An F9 certificate is not a CA of the bundle.
    let f9 = std::fs::read_to_string(format!(
        "{}/fixtures/attestation/piv-go-yk5-f9.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    let with_f9 = format!("{DEFAULT_BUNDLE_PEM}\n{f9}");
    // piv-go's YubiKey 5 F9 does carry CA:TRUE, so it is accepted as an intermediate;
    // a YubiKey 4 F9 (no basicConstraints) is not.
    assert!(TrustBundle::from_pem(&with_f9, "t").is_ok());
    let yk4 = std::fs::read_to_string(format!(
        "{}/fixtures/attestation/ovh-yk4-f9.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    let err =
        TrustBundle::from_pem(&format!("{DEFAULT_BUNDLE_PEM}\n{yk4}"), "t").expect_err("refused");
    assert!(err.to_string().contains("not a CA certificate"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("roots.pem");
    std::fs::write(&p, DEFAULT_BUNDLE_PEM).expect("write");
    assert_eq!(
        TrustBundle::from_file(&p).expect("loads").root_names(),
        TrustBundle::yubico().root_names()
    );
    assert!(matches!(
        TrustBundle::from_file(&dir.path().join("missing.pem")),
        Err(BundleError::Read { .. })
    ));
    assert_eq!(
        TrustBundle::load(Some(&p))
            .expect("loads")
            .intermediate_names(),
        TrustBundle::load(None)
            .expect("default")
            .intermediate_names()
    );
}

fn synthetic(firmware: FirmwareVersion, algorithm: KeyAlgorithm) -> Attestation {
    Attestation {
        slot: Some(Slot::AUTHENTICATION),
        serial: Some(1),
        firmware,
        form_factor: Some(FormFactor::UsbAKeychain),
        pin_policy: PinPolicy::Once,
        touch_policy: TouchPolicy::Always,
        algorithm,
        public_key: Vec::new(),
        edition: Edition::Standard,
        root: "r".into(),
        root_sha256: String::new(),
        chain: Vec::new(),
    }
}

#[test]
fn advisories_follow_yubicos_ranges() {
    let v = FirmwareVersion::new;
    assert!(advisories(v(4, 2, 5), KeyAlgorithm::Rsa2048).is_empty());
    assert_eq!(
        advisories(v(4, 2, 6), KeyAlgorithm::Rsa2048),
        [Advisory::Roca]
    );
    assert_eq!(
        advisories(v(4, 3, 4), KeyAlgorithm::Rsa1024),
        [Advisory::Roca]
    );
    assert!(advisories(v(4, 3, 5), KeyAlgorithm::Rsa2048).is_empty());
    assert_eq!(
        advisories(v(4, 3, 4), KeyAlgorithm::P256),
        [Advisory::Eucleak]
    );
    assert_eq!(
        advisories(v(5, 6, 9), KeyAlgorithm::P384),
        [Advisory::Eucleak]
    );
    assert!(advisories(v(5, 7, 0), KeyAlgorithm::P256).is_empty());
    assert!(advisories(v(5, 4, 3), KeyAlgorithm::Rsa2048).is_empty());
    assert!(advisories(v(5, 4, 3), KeyAlgorithm::Ed25519).is_empty());
    // FIPS and Bio were fixed in 5.7.2.
    let fips = advisories_for(v(5, 7, 0), KeyAlgorithm::P256, Edition::Fips, None);
    assert_eq!(fips, [Advisory::Eucleak]);
    let bio = Some(FormFactor::UsbCBio);
    assert_eq!(
        advisories_for(v(5, 7, 1), KeyAlgorithm::P384, Edition::Standard, bio),
        [Advisory::Eucleak]
    );
    assert!(advisories_for(v(5, 7, 2), KeyAlgorithm::P256, Edition::Fips, bio).is_empty());
    assert_eq!(Advisory::Roca.id(), "YSA-2017-01");
    assert!(Advisory::Eucleak.to_string().starts_with("YSA-2024-03: "));
}

#[test]
fn policy_from_toml_names_the_rule_that_failed() {
    let p: AttestationPolicy = toml::from_str(
        r#"
        require = true
        min_firmware = "5.4"
        allowed_pin_policies = ["once", "always"]
        allowed_touch_policies = ["always", "cached"]
        form_factors = ["usb-a-keychain", "usb-c-keychain"]
        fips_only = false
        refuse_ecdsa_before_5_7 = true
        "#,
    )
    .expect("parses");
    assert_eq!(p.min_firmware, Some(FirmwareVersion::new(5, 4, 0)));
    assert_eq!(p.allowed_pin_policies, [PinPolicy::Once, PinPolicy::Always]);
    let v = FirmwareVersion::new;
    let ok = synthetic(v(5, 7, 4), KeyAlgorithm::P256);
    assert_eq!(p.check(&ok), Ok(()));
    assert_eq!(
        p.check(&synthetic(v(5, 4, 3), KeyAlgorithm::P256)),
        Err(PolicyRefusal::Eucleak(v(5, 4, 3)))
    );
    assert_eq!(
        p.check(&synthetic(v(4, 3, 3), KeyAlgorithm::Rsa2048)),
        Err(PolicyRefusal::Roca(v(4, 3, 3)))
    );
    assert!(matches!(
        p.check(&synthetic(v(5, 2, 7), KeyAlgorithm::Rsa2048)),
        Err(PolicyRefusal::FirmwareTooOld { .. })
    ));
    let mut never = ok.clone();
    never.pin_policy = PinPolicy::Never;
    let err = p.check(&never).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "PIN policy 'never' is not allowed (allowed: once, always)"
    );
    let mut no_touch = ok.clone();
    no_touch.touch_policy = TouchPolicy::Never;
    assert!(matches!(
        p.check(&no_touch),
        Err(PolicyRefusal::TouchPolicy { .. })
    ));
    let mut nano = ok.clone();
    nano.form_factor = Some(FormFactor::UsbCNano);
    assert!(matches!(
        p.check(&nano),
        Err(PolicyRefusal::FormFactor { .. })
    ));
    let fips = AttestationPolicy {
        fips_only: true,
        ..Default::default()
    };
    assert_eq!(
        fips.check(&ok),
        Err(PolicyRefusal::NotFips(Edition::Standard))
    );
    assert!(p.check_missing("no F9 certificate").is_err());
    assert!(AttestationPolicy::default().check_missing("x").is_ok());
    // Without the refusal flag, YSA-2024-03 is only flagged; ROCA always refuses.
    let lax = AttestationPolicy::default();
    assert_eq!(
        lax.check(&synthetic(v(5, 4, 3), KeyAlgorithm::P256)),
        Ok(())
    );
    assert!(lax
        .check(&synthetic(v(4, 3, 0), KeyAlgorithm::Rsa2048))
        .is_err());
    for bad in [
        "min_firmware = \"five\"",
        "allowed_pin_policies = [\"sometimes\"]",
        "form_factors = [\"usb-z\"]",
        "unknown = 1",
    ] {
        assert!(toml::from_str::<AttestationPolicy>(bad).is_err(), "{bad}");
    }
}
