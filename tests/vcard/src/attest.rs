//! PIV attestation (INS F9) as a YubiKey does it, with a TEST certificate authority that is
//! plainly not Yubico's.
//!
//! What a YubiKey does (Yubico, "PIV Attestation OID Arc", docs.yubico.com/hardware/oid/
//! oid-piv-arc; developers.yubico.com/PIV/Introduction/PIV_attestation): slot F9 holds an
//! attestation key and its certificate, issued by Yubico's PIV CA. ATTEST <slot> answers a
//! new X.509 certificate for the slot's public key, signed by the F9 key, with
//! - serial: a random 16-byte integer;
//! - issuer: the subject of the F9 certificate; validity: copied from the F9 certificate;
//! - subject: "CN=YubiKey PIV Attestation <slot in hex>";
//! - signature: SHA256 with PKCS#1 v1.5 for an RSA F9 key, ECDSA with SHA-256 for an EC one
//!   (Ed25519 for an Ed25519 F9 key, the only way that key signs);
//! - extensions under 1.3.6.1.4.1.41482.3: .3 firmware (3 raw bytes), .7 serial (DER
//!   INTEGER, from firmware 5), .8 PIN and touch policy (2 raw bytes), .9 form factor (1
//!   raw byte, from firmware 5).
//!
//! The chains: up to 5.7.3 Yubico's "PIV Root CA" issues the F9 certificate directly; from
//! 5.7.4 the F9 certificate chains through a per-product intermediate up to "Yubico
//! Attestation Root 1". [`TestCa`] mirrors both shapes under ONE test root, so one exported
//! chain verifies every profile:
//!
//! ```text
//! pivault-vcard TEST Attestation Root - not Yubico        (self-signed, P-384)
//!  +-- pivault-vcard TEST PIV Root CA - not Yubico         (firmware < 5.7.4)
//!  |    +-- F9: pivault-vcard TEST PIV Attestation <serial> - not Yubico
//!  +-- pivault-vcard TEST PIV Attestation B 1 - not Yubico (firmware >= 5.7.4)
//!       +-- F9: pivault-vcard TEST PIV Attestation <serial> - not Yubico
//! ```
//!
//! Deviation: Yubico's factory F9 keys on older firmware are RSA-2048; the card makes a
//! P-256 F9 key for every profile so a fresh card starts in milliseconds. A user may import
//! any F9 key (RSA, P-256, P-384, Ed25519): [`attest_slot`] signs with whichever it is.

use std::time::{Duration, SystemTime};

use der::asn1::OctetString;
use der::{Decode, Encode};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rand::rng;
use sha2::{Digest, Sha256};
use spki::ObjectIdentifier;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;

use crate::firmware::DeviceIdentity;

/// Subject of the test root; "TEST" and "not Yubico" so nobody mistakes it for Yubico's.
pub const ROOT_NAME: &str = "CN=pivault-vcard TEST Attestation Root - not Yubico";
/// Intermediate in the place of Yubico's PIV Root CA (firmware before 5.7.4).
pub const PIV_ROOT_CA_NAME: &str = "CN=pivault-vcard TEST PIV Root CA - not Yubico";
/// Intermediate in the place of Yubico's 5.7.4+ "PIV Attestation B 1" hierarchy.
pub const NEW_INTERMEDIATE_NAME: &str = "CN=pivault-vcard TEST PIV Attestation B 1 - not Yubico";

/// First firmware whose F9 certificate chains through the newer hierarchy.
const NEW_CHAIN_FROM: [u8; 3] = [5, 7, 4];

// Yubico PIV attestation extensions (arc 1.3.6.1.4.1.41482.3).
const OID_FIRMWARE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.3");
const OID_SERIAL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.7");
const OID_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.8");
const OID_FORM_FACTOR: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.9");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");

// Signature AlgorithmIdentifiers, DER.
/// ecdsa-with-SHA256, no parameters (RFC 5758 §3.2).
const ALG_ECDSA_SHA256: &[u8] = &[
    0x30, 0x0A, 0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02,
];
/// sha256WithRSAEncryption, NULL parameters (RFC 4055 §5).
const ALG_RSA_SHA256: &[u8] = &[
    0x30, 0x0D, 0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B, 0x05, 0x00,
];
/// id-Ed25519, no parameters (RFC 8410 §3).
const ALG_ED25519: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70];

/// PKCS#8 OneAsymmetricKey v1 of an Ed25519 seed, up to the 32 seed bytes (RFC 8410 §7).
const ED25519_PKCS8_PREFIX: &[u8] = &[
    0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// SubjectPublicKeyInfo of an Ed25519 key, up to the 32 key bytes (RFC 8410 §4).
const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2A, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A private key that can sign certificates: every type PKCS#8 can carry and a YubiKey
/// F9 slot can hold (X25519 cannot sign).
enum Key {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Rsa(Box<rsa::RsaPrivateKey>),
    Ed25519(ed25519_dalek::SigningKey),
}

impl Key {
    fn from_pkcs8(der: &[u8]) -> Result<Key, String> {
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_der(der) {
            return Ok(Key::P256(k));
        }
        if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_der(der) {
            return Ok(Key::P384(k));
        }
        if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_der(der) {
            return Ok(Key::Rsa(Box::new(k)));
        }
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_der(der) {
            return Ok(Key::Ed25519(k));
        }
        Err("attestation key: not a PKCS#8 RSA, P-256, P-384 or Ed25519 private key".into())
    }

    fn to_pkcs8(&self) -> Result<Vec<u8>, String> {
        let doc = match self {
            Key::P256(k) => k.to_pkcs8_der(),
            Key::P384(k) => k.to_pkcs8_der(),
            Key::Rsa(k) => k.to_pkcs8_der(),
            // Fixed layout (RFC 8410 §7), written here: the crate encodes only with `alloc`.
            Key::Ed25519(k) => {
                let mut der = ED25519_PKCS8_PREFIX.to_vec();
                der.extend_from_slice(&k.to_bytes());
                return Ok(der);
            }
        };
        Ok(doc
            .map_err(|e| format!("PKCS#8 encoding: {e}"))?
            .as_bytes()
            .to_vec())
    }

    /// SubjectPublicKeyInfo of the public half, DER.
    fn spki(&self) -> Result<Vec<u8>, String> {
        let doc = match self {
            Key::P256(k) => k.verifying_key().to_public_key_der(),
            Key::P384(k) => k.verifying_key().to_public_key_der(),
            Key::Rsa(k) => rsa::RsaPublicKey::from(k.as_ref()).to_public_key_der(),
            Key::Ed25519(k) => {
                let mut der = ED25519_SPKI_PREFIX.to_vec();
                der.extend_from_slice(k.verifying_key().as_bytes());
                return Ok(der);
            }
        };
        Ok(doc
            .map_err(|e| format!("public key encoding: {e}"))?
            .into_vec())
    }

    /// Signs `msg`: (AlgorithmIdentifier DER, signature value).
    fn sign(&self, msg: &[u8]) -> Result<(&'static [u8], Vec<u8>), String> {
        use p256::ecdsa::signature::hazmat::PrehashSigner;
        use rsa::signature::{SignatureEncoding, Signer};
        Ok(match self {
            Key::P256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(msg);
                (ALG_ECDSA_SHA256, sig.to_der().as_bytes().to_vec())
            }
            Key::P384(k) => {
                // ECDSA with SHA-256 whatever the curve, as the YubiKey signs.
                let digest = Sha256::digest(msg);
                let sig: p384::ecdsa::Signature = k
                    .sign_prehash(&digest)
                    .map_err(|e| format!("P-384 signature: {e}"))?;
                (ALG_ECDSA_SHA256, sig.to_der().as_bytes().to_vec())
            }
            Key::Rsa(k) => {
                let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(k.as_ref().clone());
                let sig = signer
                    .try_sign(msg)
                    .map_err(|e| format!("RSA signature: {e}"))?;
                (ALG_RSA_SHA256, sig.to_vec())
            }
            Key::Ed25519(k) => (ALG_ED25519, k.sign(msg).to_bytes().to_vec()),
        })
    }
}

/// One CA of the test hierarchy: its key and certificate.
struct Ca {
    key: Key,
    cert: Certificate,
    der: Vec<u8>,
}

/// The test attestation CA: a root and the two intermediates that issue F9 certificates
/// (see the module documentation). Keys included: it is a test fixture.
pub struct TestCa {
    root: Ca,
    piv_root_ca: Ca,
    new_intermediate: Ca,
}

impl TestCa {
    /// A fresh hierarchy (P-384 keys), valid from a day ago for 30 years.
    pub fn generate() -> TestCa {
        let validity = validity_from_now(30 * 365).expect("a 30-year validity encodes");
        let root_name = name(ROOT_NAME);
        let root_key = Key::P384(new_p384());
        let root = self_signed(root_key, &root_name, validity).expect("test root builds");
        let sub = |subject: &str| {
            let key = Key::P384(new_p384());
            let spki = key.spki()?;
            let der = make_cert(
                &root.key,
                &root_name,
                &name(subject),
                &spki,
                validity,
                ca_extensions()?,
            )?;
            Ok::<Ca, String>(Ca {
                cert: Certificate::from_der(&der).map_err(|e| e.to_string())?,
                key,
                der,
            })
        };
        let piv_root_ca = sub(PIV_ROOT_CA_NAME).expect("test intermediate builds");
        let new_intermediate = sub(NEW_INTERMEDIATE_NAME).expect("test intermediate builds");
        TestCa {
            root,
            piv_root_ca,
            new_intermediate,
        }
    }

    /// Reads what [`TestCa::to_pem`] wrote: three (PRIVATE KEY, CERTIFICATE) pairs in the
    /// order root, PIV Root CA-style intermediate, newer-style intermediate.
    pub fn from_pem(pem: &str) -> Result<TestCa, String> {
        let blocks = pem_blocks(pem)?;
        let labels: Vec<&str> = blocks.iter().map(|(l, _)| l.as_str()).collect();
        let want = [
            "PRIVATE KEY",
            "CERTIFICATE",
            "PRIVATE KEY",
            "CERTIFICATE",
            "PRIVATE KEY",
            "CERTIFICATE",
        ];
        if labels != want {
            return Err(format!(
                "attestation CA file: want 3 PRIVATE KEY + CERTIFICATE pairs \
                 (root, PIV Root CA, newer intermediate), found {labels:?}"
            ));
        }
        let mut cas = blocks.chunks(2).map(|pair| {
            let key = Key::from_pkcs8(&pair[0].1)?;
            let der = pair[1].1.clone();
            let cert = Certificate::from_der(&der)
                .map_err(|e| format!("attestation CA file: bad certificate: {e}"))?;
            let spki = cert
                .tbs_certificate()
                .subject_public_key_info()
                .to_der()
                .map_err(|e| e.to_string())?;
            if spki != key.spki()? {
                return Err("attestation CA file: a key does not match its certificate".into());
            }
            Ok::<Ca, String>(Ca { key, cert, der })
        });
        let (Some(root), Some(piv_root_ca), Some(new_intermediate)) =
            (cas.next(), cas.next(), cas.next())
        else {
            unreachable!("three pairs were counted above");
        };
        Ok(TestCa {
            root: root?,
            piv_root_ca: piv_root_ca?,
            new_intermediate: new_intermediate?,
        })
    }

    /// Keys and certificates, PEM, with a line saying what each pair is.
    pub fn to_pem(&self) -> String {
        let mut out = String::from(
            "# pivault-vcard TEST attestation CA (not Yubico's): root, PIV Root CA-style \
             intermediate (firmware < 5.7.4), newer-style intermediate (5.7.4+).\n",
        );
        for (what, ca) in self.cas() {
            out.push_str(&format!("# {what}\n"));
            let key = ca.key.to_pkcs8().expect("test CA keys encode");
            out.push_str(&pem("PRIVATE KEY", &key));
            out.push_str(&pem("CERTIFICATE", &ca.der));
        }
        out
    }

    /// Certificates only (root first, then both intermediates): the trust anchor and
    /// the intermediates a verifier needs (`openssl verify -CAfile <root>
    /// -untrusted <intermediates + F9>`; openssl picks the intermediate that applies).
    pub fn chain_pem(&self) -> String {
        self.cas()
            .iter()
            .map(|(_, ca)| pem("CERTIFICATE", &ca.der))
            .collect()
    }

    /// The root certificate alone, PEM (the trust anchor for `openssl verify -CAfile`).
    #[cfg(test)]
    pub fn root_pem(&self) -> String {
        pem("CERTIFICATE", &self.root.der)
    }

    fn cas(&self) -> [(&'static str, &Ca); 3] {
        [
            ("root", &self.root),
            ("PIV Root CA-style intermediate", &self.piv_root_ca),
            ("newer-style intermediate", &self.new_intermediate),
        ]
    }

    /// A fresh F9 key (P-256, PKCS#8 DER) and its certificate (DER), issued by the
    /// intermediate the firmware's real chain has in that place.
    pub fn issue_f9(&self, device: &DeviceIdentity) -> (Vec<u8>, Vec<u8>) {
        let issuer = if device.version >= NEW_CHAIN_FROM {
            &self.new_intermediate
        } else {
            &self.piv_root_ca
        };
        let key = Key::P256(new_p256());
        let subject = name(&format!(
            "CN=pivault-vcard TEST PIV Attestation {} - not Yubico",
            device.serial
        ));
        // From a day ago to the end of the issuer's validity.
        let mut validity = validity_from_now(1).expect("validity encodes");
        validity.not_after = issuer.cert.tbs_certificate().validity().not_after;
        let mut extensions = ca_extensions().expect("extensions encode");
        extensions.extend(device_extensions(device));
        let der = make_cert(
            &issuer.key,
            issuer.cert.tbs_certificate().subject(),
            &subject,
            &key.spki().expect("P-256 public key encodes"),
            validity,
            extensions,
        )
        .expect("F9 certificate builds");
        (key.to_pkcs8().expect("P-256 key encodes"), der)
    }
}

/// The attestation certificate for the key in `slot`, in Yubico's format (module
/// documentation), signed by the F9 key.
pub fn attest_slot(
    f9_key_pkcs8: &[u8],
    f9_cert_der: &[u8],
    slot: u8,
    subject_public_key_info_der: &[u8],
    pin_policy: u8,
    touch_policy: u8,
    device: &DeviceIdentity,
) -> Result<Vec<u8>, String> {
    let key = Key::from_pkcs8(f9_key_pkcs8)?;
    let f9 = Certificate::from_der(f9_cert_der)
        .map_err(|e| format!("the F9 certificate does not parse: {e}"))?;
    spki::SubjectPublicKeyInfoOwned::from_der(subject_public_key_info_der)
        .map_err(|e| format!("slot {slot:02x} public key does not parse: {e}"))?;
    let mut extensions = vec![raw_ext(OID_FIRMWARE, device.version.to_vec())];
    if device.version[0] >= 5 {
        extensions.push(raw_ext(OID_SERIAL, der_uint(device.serial)));
    }
    extensions.push(raw_ext(OID_POLICY, vec![pin_policy, touch_policy]));
    if device.version[0] >= 5 {
        extensions.push(raw_ext(OID_FORM_FACTOR, vec![device.form_factor]));
    }
    make_cert(
        &key,
        f9.tbs_certificate().subject(),
        &name(&format!("CN=YubiKey PIV Attestation {slot:02x}")),
        subject_public_key_info_der,
        *f9.tbs_certificate().validity(),
        extensions,
    )
}

/// `--forge-attestation`: forgeries a verifier must refuse (a YubiKey makes none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    /// The attestation certifies a fresh key, not the one in the slot.
    OtherKey,
    /// F9 certificate and attestations are issued for serial+1.
    OtherSerial,
    /// The PIN policy byte is changed after signing (the signature no longer covers it).
    TamperedPolicy,
}

impl Forge {
    pub fn parse(s: &str) -> Result<Forge, String> {
        match s {
            "other-key" => Ok(Forge::OtherKey),
            "other-serial" => Ok(Forge::OtherSerial),
            "tampered-policy" => Ok(Forge::TamperedPolicy),
            _ => Err(format!(
                "{s:?}: expected other-key, other-serial or tampered-policy"
            )),
        }
    }
}

/// The SubjectPublicKeyInfo of a new P-256 key nobody keeps (`Forge::OtherKey`).
pub fn fresh_p256_spki() -> Vec<u8> {
    Key::P256(new_p256())
        .spki()
        .expect("P-256 public key encodes")
}

/// `cert` with the PIN policy byte of extension 41482.3.8 changed (once <-> never), the
/// signature left as it was (`Forge::TamperedPolicy`).
pub fn tamper_pin_policy(mut cert: Vec<u8>) -> Vec<u8> {
    let mut pattern = OID_POLICY.to_der().expect("OID encodes");
    pattern.extend([0x04, 0x02]);
    if let Some(at) = cert.windows(pattern.len()).position(|w| w == pattern) {
        let pin = at + pattern.len();
        cert[pin] = if cert[pin] == 0x01 { 0x02 } else { 0x01 };
    }
    cert
}

/// The 41482.3 extensions an F9 certificate carries about its device.
fn device_extensions(device: &DeviceIdentity) -> Vec<Extension> {
    let mut out = vec![raw_ext(OID_FIRMWARE, device.version.to_vec())];
    if device.version[0] >= 5 {
        out.push(raw_ext(OID_SERIAL, der_uint(device.serial)));
        out.push(raw_ext(OID_FORM_FACTOR, vec![device.form_factor]));
    }
    out
}

fn raw_ext(oid: ObjectIdentifier, value: Vec<u8>) -> Extension {
    Extension {
        extn_id: oid,
        critical: false,
        extn_value: OctetString::new(value).expect("short values encode"),
    }
}

fn der_uint(n: u32) -> Vec<u8> {
    n.to_der().expect("an INTEGER encodes")
}

/// basicConstraints CA:TRUE and keyUsage keyCertSign (what `openssl verify` wants of an
/// issuer), both critical (RFC 5280 §4.2.1.9, §4.2.1.3).
fn ca_extensions() -> Result<Vec<Extension>, String> {
    let bc = BasicConstraints {
        ca: true,
        path_len_constraint: None,
    }
    .to_der()
    .map_err(|e| e.to_string())?;
    let ku = KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)
        .to_der()
        .map_err(|e| e.to_string())?;
    Ok(vec![
        Extension {
            extn_id: OID_BASIC_CONSTRAINTS,
            critical: true,
            extn_value: OctetString::new(bc).map_err(|e| e.to_string())?,
        },
        Extension {
            extn_id: OID_KEY_USAGE,
            critical: true,
            extn_value: OctetString::new(ku).map_err(|e| e.to_string())?,
        },
    ])
}

fn self_signed(key: Key, subject: &Name, validity: Validity) -> Result<Ca, String> {
    let spki = key.spki()?;
    let der = make_cert(&key, subject, subject, &spki, validity, ca_extensions()?)?;
    let cert = Certificate::from_der(&der).map_err(|e| e.to_string())?;
    Ok(Ca { key, cert, der })
}

/// Encodes and signs an X.509 v3 certificate (RFC 5280 §4.1) with a random 16-byte
/// serial. The TBSCertificate is put together here, field by field, because the signer
/// may be any [`Key`] and the subject key any SubjectPublicKeyInfo.
fn make_cert(
    signer: &Key,
    issuer: &Name,
    subject: &Name,
    spki_der: &[u8],
    validity: Validity,
    extensions: Vec<Extension>,
) -> Result<Vec<u8>, String> {
    let e = |e: der::Error| format!("certificate encoding: {e}");
    let serial = random_serial().map_err(e)?;
    // The TBS's signature field must equal the outer one: sign a dummy to learn the
    // algorithm (it depends only on the key type).
    let (alg, _) = signer.sign(b"")?;
    let mut tbs = Vec::new();
    tbs.extend_from_slice(&[0xA0, 0x03, 0x02, 0x01, 0x02]); // [0] EXPLICIT version v3
    tbs.extend(serial.to_der().map_err(e)?);
    tbs.extend_from_slice(alg);
    tbs.extend(issuer.to_der().map_err(e)?);
    tbs.extend(validity.to_der().map_err(e)?);
    tbs.extend(subject.to_der().map_err(e)?);
    tbs.extend_from_slice(spki_der);
    if !extensions.is_empty() {
        let mut exts = Vec::new();
        for ext in &extensions {
            exts.extend(ext.to_der().map_err(e)?);
        }
        tbs.extend(der_tlv(0xA3, &der_tlv(0x30, &exts))); // [3] EXPLICIT Extensions
    }
    let tbs = der_tlv(0x30, &tbs);
    let (alg, sig) = signer.sign(&tbs)?;
    let mut bits = vec![0u8]; // no unused bits
    bits.extend(sig);
    let mut body = tbs;
    body.extend_from_slice(alg);
    body.extend(der_tlv(0x03, &bits));
    let der = der_tlv(0x30, &body);
    // Parse it back: whatever we emit must be a certificate x509-cert accepts.
    Certificate::from_der(&der).map_err(|e| format!("built certificate does not parse: {e}"))?;
    Ok(der)
}

/// A random positive serial of exactly 16 bytes: first byte 01..7F, so the INTEGER needs
/// neither a sign byte nor drops a leading zero.
fn random_serial() -> der::Result<SerialNumber> {
    use rand::RngExt;
    let mut bytes: [u8; 16] = rng().random();
    bytes[0] = (bytes[0] & 0x7F).max(1);
    SerialNumber::new(&bytes)
}

/// A DER TLV with a one-byte tag and a definite length (X.690 §8.1.3).
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn new_p256() -> p256::ecdsa::SigningKey {
    use p256::elliptic_curve::Generate;
    p256::ecdsa::SigningKey::generate_from_rng(&mut rng())
}

fn new_p384() -> p384::ecdsa::SigningKey {
    use p384::elliptic_curve::Generate;
    p384::ecdsa::SigningKey::generate_from_rng(&mut rng())
}

fn name(rfc4514: &str) -> Name {
    rfc4514.parse().expect("fixed names parse")
}

/// From a day ago (clock skew between the card and a verifier) for `days` days.
fn validity_from_now(days: u64) -> Result<Validity, String> {
    const DAY: Duration = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let t = |t: SystemTime| Time::try_from(t).map_err(|e| e.to_string());
    Ok(Validity::new(t(now - DAY)?, t(now + DAY * days as u32)?))
}

fn pem(label: &str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der).expect("PEM encodes")
}

/// Every PEM block of `text` (other lines are comments): (label, DER).
fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(label) = line
            .trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut block = format!("{}\n", line.trim());
        for l in lines.by_ref() {
            block.push_str(l.trim());
            block.push('\n');
            if l.trim() == end {
                break;
            }
        }
        let (got, der) =
            der::pem::decode_vec(block.as_bytes()).map_err(|e| format!("PEM {label}: {e}"))?;
        out.push((got.to_string(), der));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn device(version: [u8; 3]) -> DeviceIdentity {
        DeviceIdentity {
            serial: 31_415_926,
            version,
            form_factor: 0x01,
            fips: false,
        }
    }

    fn ext_value(cert: &Certificate, oid: ObjectIdentifier) -> Option<Vec<u8>> {
        cert.tbs_certificate()
            .extensions()?
            .iter()
            .find(|e| e.extn_id == oid)
            .map(|e| e.extn_value.as_bytes().to_vec())
    }

    fn cn(n: &Name) -> String {
        n.to_string()
    }

    /// A P-256 slot key's SubjectPublicKeyInfo.
    fn slot_spki() -> Vec<u8> {
        Key::P256(new_p256()).spki().unwrap()
    }

    /// Checks `cert`'s signature with the issuer's public key, in Rust.
    fn verify_sig(cert: &Certificate, issuer: &Certificate) {
        use p256::pkcs8::DecodePublicKey;
        use rsa::signature::Verifier;
        let tbs = cert.tbs_certificate().to_der().unwrap();
        let sig = cert.signature().raw_bytes();
        let spki = issuer
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .unwrap();
        let alg = cert.signature_algorithm().to_der().unwrap();
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(&spki) {
            assert_eq!(alg, ALG_ECDSA_SHA256);
            let s = p256::ecdsa::Signature::from_der(sig).unwrap();
            k.verify(&tbs, &s).expect("P-256 signature verifies");
        } else if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(&spki) {
            use p384::ecdsa::signature::hazmat::PrehashVerifier;
            assert_eq!(alg, ALG_ECDSA_SHA256);
            let s = p384::ecdsa::Signature::from_der(sig).unwrap();
            k.verify_prehash(&Sha256::digest(&tbs), &s)
                .expect("P-384 signature verifies");
        } else if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(&spki) {
            assert_eq!(alg, ALG_RSA_SHA256);
            let v = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(k);
            let s = rsa::pkcs1v15::Signature::try_from(sig).unwrap();
            v.verify(&tbs, &s).expect("RSA signature verifies");
        } else if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_der(&spki) {
            assert_eq!(alg, ALG_ED25519);
            let s = ed25519_dalek::Signature::from_slice(sig).unwrap();
            k.verify(&tbs, &s).expect("Ed25519 signature verifies");
        } else {
            panic!("unknown issuer key");
        }
    }

    /// `openssl verify -CAfile root -untrusted intermediates+f9 cert`.
    fn openssl_verify(ca: &TestCa, f9_der: &[u8], cert_der: &[u8]) {
        let dir = std::env::temp_dir().join(format!(
            "pivault-vcard-attest-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let root = dir.join("root.pem");
        let untrusted = dir.join("untrusted.pem");
        let leaf = dir.join("leaf.pem");
        std::fs::write(&root, ca.root_pem()).unwrap();
        let chain = ca.chain_pem();
        let intermediates = chain.split_inclusive("-----END CERTIFICATE-----\n").skip(1);
        let mut u: String = intermediates.collect();
        u.push_str(&pem("CERTIFICATE", f9_der));
        std::fs::write(&untrusted, u).unwrap();
        std::fs::write(&leaf, pem("CERTIFICATE", cert_der)).unwrap();
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&root)
            .arg("-untrusted")
            .arg(&untrusted)
            .arg(&leaf)
            .output()
            .expect("openssl runs");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "openssl verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn pem_round_trip_keeps_keys_and_certificates() {
        let ca = TestCa::generate();
        let again = TestCa::from_pem(&ca.to_pem()).unwrap();
        assert_eq!(again.chain_pem(), ca.chain_pem());
        assert_eq!(again.to_pem(), ca.to_pem());
        assert!(ca.chain_pem().matches("BEGIN CERTIFICATE").count() == 3);
        assert!(!ca.chain_pem().contains("PRIVATE KEY"));
        // An F9 issued by the re-read CA verifies against the original chain.
        let d = device([5, 7, 4]);
        let (key, f9) = again.issue_f9(&d);
        let att = attest_slot(&key, &f9, 0x9a, &slot_spki(), 1, 1, &d).unwrap();
        openssl_verify(&ca, &f9, &att);
        assert!(TestCa::from_pem(&ca.chain_pem()).is_err());
        assert!(TestCa::from_pem("").is_err());
    }

    #[test]
    fn f9_chains_like_the_firmware_it_pretends_to_be() {
        let ca = TestCa::generate();
        let root = &ca.root.cert;
        assert_eq!(cn(root.tbs_certificate().subject()), ROOT_NAME);
        assert_eq!(
            root.tbs_certificate().issuer(),
            root.tbs_certificate().subject()
        );
        verify_sig(root, root);
        for (version, issuer_name) in [
            ([4, 3, 7], PIV_ROOT_CA_NAME),
            ([5, 2, 7], PIV_ROOT_CA_NAME),
            ([5, 7, 2], PIV_ROOT_CA_NAME),
            ([5, 7, 4], NEW_INTERMEDIATE_NAME),
        ] {
            let d = device(version);
            let (key, f9_der) = ca.issue_f9(&d);
            assert!(matches!(Key::from_pkcs8(&key), Ok(Key::P256(_))));
            let f9 = Certificate::from_der(&f9_der).unwrap();
            let tbs = f9.tbs_certificate();
            assert_eq!(cn(tbs.issuer()), issuer_name, "{version:?}");
            assert!(cn(tbs.subject()).contains("TEST PIV Attestation 31415926"));
            assert!(cn(tbs.subject()).contains("not Yubico"));
            let issuer = if issuer_name == PIV_ROOT_CA_NAME {
                &ca.piv_root_ca.cert
            } else {
                &ca.new_intermediate.cert
            };
            verify_sig(&f9, issuer);
            verify_sig(issuer, root);
            assert_eq!(ext_value(&f9, OID_FIRMWARE), Some(version.to_vec()));
            let bc = ext_value(&f9, OID_BASIC_CONSTRAINTS).unwrap();
            assert!(BasicConstraints::from_der(&bc).unwrap().ca);
            if version[0] >= 5 {
                assert_eq!(ext_value(&f9, OID_SERIAL), Some(der_uint(31_415_926)));
            }
        }
    }

    #[test]
    fn attestation_has_yubicos_fields_for_every_profile() {
        let ca = TestCa::generate();
        for version in [[4, 3, 7], [5, 2, 7], [5, 4, 3], [5, 7, 2], [5, 7, 4]] {
            let d = device(version);
            let (key, f9_der) = ca.issue_f9(&d);
            let f9 = Certificate::from_der(&f9_der).unwrap();
            let spki = slot_spki();
            let der = attest_slot(&key, &f9_der, 0x9c, &spki, 3, 2, &d).unwrap();
            let att = Certificate::from_der(&der).unwrap();
            let tbs = att.tbs_certificate();
            assert_eq!(cn(tbs.subject()), "CN=YubiKey PIV Attestation 9c");
            assert_eq!(tbs.issuer(), f9.tbs_certificate().subject());
            assert_eq!(tbs.validity(), f9.tbs_certificate().validity());
            assert_eq!(tbs.subject_public_key_info().to_der().unwrap(), spki);
            assert_eq!(tbs.version(), x509_cert::certificate::Version::V3);
            // Random 16-byte serial.
            let serial = tbs.serial_number().as_bytes();
            assert_eq!(serial.len(), 16, "{serial:02x?}");
            assert_eq!(ext_value(&att, OID_FIRMWARE), Some(version.to_vec()));
            assert_eq!(ext_value(&att, OID_POLICY), Some(vec![3, 2]));
            if version[0] >= 5 {
                assert_eq!(
                    ext_value(&att, OID_SERIAL),
                    Some(vec![2, 4, 1, 0xDF, 0x5E, 0x76])
                );
                assert_eq!(ext_value(&att, OID_FORM_FACTOR), Some(vec![0x01]));
            } else {
                assert_eq!(ext_value(&att, OID_SERIAL), None);
                assert_eq!(ext_value(&att, OID_FORM_FACTOR), None);
            }
            verify_sig(&att, &f9);
            openssl_verify(&ca, &f9_der, &der);
        }
        // Two attestations of one key differ in serial.
        let d = device([5, 7, 4]);
        let (key, f9) = ca.issue_f9(&d);
        let spki = slot_spki();
        let a =
            Certificate::from_der(&attest_slot(&key, &f9, 0x9a, &spki, 1, 1, &d).unwrap()).unwrap();
        let b =
            Certificate::from_der(&attest_slot(&key, &f9, 0x9a, &spki, 1, 1, &d).unwrap()).unwrap();
        assert_ne!(
            a.tbs_certificate().serial_number(),
            b.tbs_certificate().serial_number()
        );
    }

    #[test]
    fn an_imported_f9_key_of_any_type_signs() {
        let ca = TestCa::generate();
        let d = device([5, 7, 4]);
        let keys = [
            Key::P384(new_p384()),
            Key::Rsa(Box::new(rsa::RsaPrivateKey::new(&mut rng(), 2048).unwrap())),
            Key::Ed25519(ed25519_dalek::SigningKey::generate(&mut rng())),
            Key::P256(new_p256()),
        ];
        for key in keys {
            // The user's own F9 certificate, here from the test intermediate.
            let issuer = &ca.new_intermediate;
            let mut exts = ca_extensions().unwrap();
            exts.extend(device_extensions(&d));
            let f9_der = make_cert(
                &issuer.key,
                issuer.cert.tbs_certificate().subject(),
                &name("CN=My own attestation key"),
                &key.spki().unwrap(),
                validity_from_now(10).unwrap(),
                exts,
            )
            .unwrap();
            let pkcs8 = key.to_pkcs8().unwrap();
            let der = attest_slot(&pkcs8, &f9_der, 0x9e, &slot_spki(), 1, 1, &d).unwrap();
            let att = Certificate::from_der(&der).unwrap();
            assert_eq!(
                cn(att.tbs_certificate().issuer()),
                "CN=My own attestation key"
            );
            verify_sig(&att, &Certificate::from_der(&f9_der).unwrap());
            openssl_verify(&ca, &f9_der, &der);
        }
    }

    #[test]
    fn refuses_what_cannot_sign_or_parse() {
        let ca = TestCa::generate();
        let d = device([5, 7, 4]);
        let (key, f9) = ca.issue_f9(&d);
        let x25519 = {
            // PKCS#8 of an X25519 key (RFC 8410 §7): OID 1.3.101.110.
            let mut v = vec![
                0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x6E,
            ];
            v.extend_from_slice(&[0x04, 0x22, 0x04, 0x20]);
            v.extend_from_slice(&[7u8; 32]);
            v
        };
        assert!(attest_slot(&x25519, &f9, 0x9a, &slot_spki(), 1, 1, &d).is_err());
        assert!(attest_slot(&key, b"junk", 0x9a, &slot_spki(), 1, 1, &d).is_err());
        assert!(attest_slot(&key, &f9, 0x9a, b"junk", 1, 1, &d).is_err());
    }
}
