//! GET METADATA answers (Yubico PIV extension, INS F7, firmware 5.3+), parsed by pivault
//! itself. The `yubikey` crate's parser panics on some answers a broken or hostile card can
//! send (`01 00`: `tlv.value[0]` on an empty algorithm, yubikey 0.9.0-rc.0), and a panic
//! aborts a release build; here every answer is parsed or refused with a [`MetadataError`].
//!
//! Layout (docs.yubico.com, "PIV APDUs: Get metadata"): a flat run of TLVs, 01 algorithm,
//! 02 policy (PIN, touch), 03 origin (1 generated, 2 imported), 04 public key (the content
//! of the 7F49 template GENERATE answers: 81 modulus and 82 exponent, or 86 point; SP
//! 800-73-4 Part 2, 3.3.2), 05 default value (1: factory value), 06 retries (total,
//! remaining). Tags Yubico adds later are skipped.

use super::tlv::{tlvs, TlvError};
use super::{Algorithm, MgmAlgorithm, PinPolicy, TouchPolicy};
use der::Decode;
use spki::SubjectPublicKeyInfoOwned;

/// GET METADATA references (P2) other than key slots.
pub(crate) const PIN: u8 = 0x80;
pub(crate) const PUK: u8 = 0x81;
pub(crate) const MANAGEMENT_KEY: u8 = 0x9B;

/// A key type the token can hold: those pivault enrolls, and two it only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyType {
    Enrollable(Algorithm),
    Rsa1024,
    X25519,
}

/// Tag 01: what the reference holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaAlgorithm {
    /// PIN or PUK (FF).
    PinPuk,
    Management(MgmAlgorithm),
    Key(KeyType),
}

/// Tag 06.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retries {
    pub total: u8,
    pub remaining: u8,
}

/// One parsed GET METADATA answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Metadata {
    pub algorithm: MetaAlgorithm,
    pub policy: Option<(PinPolicy, TouchPolicy)>,
    /// Tag 03: generated on the token (`false`: imported).
    pub generated: Option<bool>,
    pub public_key: Option<SubjectPublicKeyInfoOwned>,
    /// Tag 05: still the factory value.
    pub default: Option<bool>,
    pub retries: Option<Retries>,
}

/// Why an answer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MetadataError {
    #[error(transparent)]
    Tlv(#[from] TlvError),
    #[error("tag {0:02X} appears twice")]
    Duplicate(u8),
    #[error("no algorithm (tag 01)")]
    NoAlgorithm,
    #[error("tag {tag:02X} ({what}) holds {len} bytes, expected {expected}")]
    Length {
        tag: u8,
        what: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("tag {tag:02X} ({what}) holds an unknown value {value:02X}")]
    Value {
        tag: u8,
        what: &'static str,
        value: u8,
    },
    #[error("algorithm {algorithm:02X} cannot belong to reference {reference:02X}")]
    WrongReference { algorithm: u8, reference: u8 },
    #[error("a public key (tag 04) for a reference that holds no key pair")]
    UnexpectedPublicKey,
    #[error("public key (tag 04): {0}")]
    PublicKey(&'static str),
}

/// Parse the answer to GET METADATA for `reference` (P2: 80 PIN, 81 PUK, 9B management
/// key, else a key slot).
pub(crate) fn parse(reference: u8, data: &[u8]) -> Result<Metadata, MetadataError> {
    // Tags 01–06 once each; a second copy would make the answer ambiguous.
    let mut seen: [Option<&[u8]>; 7] = [None; 7];
    for t in tlvs(data) {
        let (tag, value) = t?;
        if let Some(slot) = seen.get_mut(usize::from(tag)).filter(|_| tag != 0) {
            if slot.replace(value).is_some() {
                return Err(MetadataError::Duplicate(tag));
            }
        }
    }
    let algorithm = algorithm(reference, seen[1].ok_or(MetadataError::NoAlgorithm)?)?;
    let policy = seen[2]
        .map(|v| {
            let [pin, touch] = exactly::<2>(0x02, "policy", v)?;
            Ok::<_, MetadataError>((pin_policy(pin)?, touch_policy(touch)?))
        })
        .transpose()?;
    let generated = seen[3]
        .map(|v| match exactly::<1>(0x03, "origin", v)? {
            [1] => Ok(true),
            [2] => Ok(false),
            [value] => Err(MetadataError::Value {
                tag: 0x03,
                what: "origin",
                value,
            }),
        })
        .transpose()?;
    let public_key = match (seen[4], algorithm) {
        (None, _) => None,
        (Some(v), MetaAlgorithm::Key(k)) => Some(public_key(k, v)?),
        (Some(_), _) => return Err(MetadataError::UnexpectedPublicKey),
    };
    let default = seen[5]
        .map(|v| match exactly::<1>(0x05, "default value", v)? {
            [0] => Ok(false),
            [1] => Ok(true),
            [value] => Err(MetadataError::Value {
                tag: 0x05,
                what: "default value",
                value,
            }),
        })
        .transpose()?;
    let retries = seen[6]
        .map(|v| {
            exactly::<2>(0x06, "retries", v).map(|[total, remaining]| Retries { total, remaining })
        })
        .transpose()?;
    Ok(Metadata {
        algorithm,
        policy,
        generated,
        public_key,
        default,
        retries,
    })
}

fn exactly<const N: usize>(
    tag: u8,
    what: &'static str,
    v: &[u8],
) -> Result<[u8; N], MetadataError> {
    v.try_into().map_err(|_| MetadataError::Length {
        tag,
        what,
        len: v.len(),
        expected: N,
    })
}

/// Tag 01 (Yubico's algorithm identifiers, the ones GENERATE takes; SP 800-78-4 Table
/// 6-2 for 06, 07, 11, 14), checked against the reference asked for.
fn algorithm(reference: u8, v: &[u8]) -> Result<MetaAlgorithm, MetadataError> {
    let [code] = exactly::<1>(0x01, "algorithm", v)?;
    let alg = match code {
        0xFF => MetaAlgorithm::PinPuk,
        0x03 => MetaAlgorithm::Management(MgmAlgorithm::TripleDes),
        0x08 => MetaAlgorithm::Management(MgmAlgorithm::Aes128),
        0x0A => MetaAlgorithm::Management(MgmAlgorithm::Aes192),
        0x0C => MetaAlgorithm::Management(MgmAlgorithm::Aes256),
        0x06 => MetaAlgorithm::Key(KeyType::Rsa1024),
        0x07 => MetaAlgorithm::Key(KeyType::Enrollable(Algorithm::Rsa2048)),
        0x05 => MetaAlgorithm::Key(KeyType::Enrollable(Algorithm::Rsa3072)),
        0x16 => MetaAlgorithm::Key(KeyType::Enrollable(Algorithm::Rsa4096)),
        0x11 => MetaAlgorithm::Key(KeyType::Enrollable(Algorithm::P256)),
        0x14 => MetaAlgorithm::Key(KeyType::Enrollable(Algorithm::P384)),
        0xE0 => MetaAlgorithm::Key(KeyType::Enrollable(Algorithm::Ed25519)),
        0xE1 => MetaAlgorithm::Key(KeyType::X25519),
        value => {
            return Err(MetadataError::Value {
                tag: 0x01,
                what: "algorithm",
                value,
            })
        }
    };
    let fits = match alg {
        MetaAlgorithm::PinPuk => matches!(reference, PIN | PUK),
        MetaAlgorithm::Management(_) => reference == MANAGEMENT_KEY,
        MetaAlgorithm::Key(_) => !matches!(reference, PIN | PUK | MANAGEMENT_KEY),
    };
    if fits {
        Ok(alg)
    } else {
        Err(MetadataError::WrongReference {
            algorithm: code,
            reference,
        })
    }
}

fn pin_policy(b: u8) -> Result<PinPolicy, MetadataError> {
    Ok(match b {
        0 => PinPolicy::Default,
        1 => PinPolicy::Never,
        2 => PinPolicy::Once,
        3 => PinPolicy::Always,
        // 4 and 5 are the YubiKey Bio's match policies, which pivault does not set.
        value => {
            return Err(MetadataError::Value {
                tag: 0x02,
                what: "PIN policy",
                value,
            })
        }
    })
}

fn touch_policy(b: u8) -> Result<TouchPolicy, MetadataError> {
    Ok(match b {
        0 => TouchPolicy::Default,
        1 => TouchPolicy::Never,
        2 => TouchPolicy::Always,
        3 => TouchPolicy::Cached,
        value => {
            return Err(MetadataError::Value {
                tag: 0x02,
                what: "touch policy",
                value,
            })
        }
    })
}

/// Tag 04 as a SubjectPublicKeyInfo, in the DER the RustCrypto encoders give (the same
/// bytes a certificate of the key carries). Every key is checked: an RSA modulus of the
/// declared size and an exponent `rsa` accepts, a point on the declared curve.
fn public_key(kind: KeyType, v: &[u8]) -> Result<SubjectPublicKeyInfoOwned, MetadataError> {
    use p256::pkcs8::EncodePublicKey;
    let (mut modulus, mut exponent, mut point) = (None, None, None);
    for t in tlvs(v) {
        let (tag, value) = t?;
        let field = match tag {
            0x81 => &mut modulus,
            0x82 => &mut exponent,
            0x86 => &mut point,
            _ => return Err(MetadataError::PublicKey("an unknown tag in the key")),
        };
        if field.replace(value).is_some() {
            return Err(MetadataError::PublicKey("a key component twice"));
        }
    }
    let bad = MetadataError::PublicKey;
    let der = match kind {
        KeyType::Rsa1024
        | KeyType::Enrollable(Algorithm::Rsa2048 | Algorithm::Rsa3072 | Algorithm::Rsa4096) => {
            let bits = match kind {
                KeyType::Rsa1024 => 1024,
                KeyType::Enrollable(Algorithm::Rsa3072) => 3072,
                KeyType::Enrollable(Algorithm::Rsa4096) => 4096,
                _ => 2048,
            };
            let n = without_leading_zeros(modulus.ok_or(bad("no RSA modulus (81)"))?);
            let e = without_leading_zeros(exponent.ok_or(bad("no RSA exponent (82)"))?);
            if n.len() != bits / 8 || n.first().is_none_or(|b| b & 0x80 == 0) {
                return Err(bad("an RSA modulus of another size than the algorithm's"));
            }
            if e.is_empty() || e.len() > 8 {
                return Err(bad("an RSA exponent out of range"));
            }
            let key = rsa::RsaPublicKey::new(
                rsa::BoxedUint::from_be_slice_vartime(n),
                rsa::BoxedUint::from_be_slice_vartime(e),
            )
            .map_err(|_| bad("an RSA key the rsa crate refuses"))?;
            key.to_public_key_der()
        }
        KeyType::Enrollable(Algorithm::P256) => {
            let p = point
                .filter(|p| p.len() == 65)
                .ok_or(bad("no 65-byte P-256 point (86)"))?;
            p256::PublicKey::from_sec1_bytes(p)
                .map_err(|_| bad("a point not on P-256"))?
                .to_public_key_der()
        }
        KeyType::Enrollable(Algorithm::P384) => {
            let p = point
                .filter(|p| p.len() == 97)
                .ok_or(bad("no 97-byte P-384 point (86)"))?;
            p384::PublicKey::from_sec1_bytes(p)
                .map_err(|_| bad("a point not on P-384"))?
                .to_public_key_der()
        }
        KeyType::Enrollable(Algorithm::Ed25519) => {
            let p: [u8; 32] = point
                .and_then(|p| p.try_into().ok())
                .ok_or(bad("no 32-byte Ed25519 key (86)"))?;
            ed25519_dalek::VerifyingKey::from_bytes(&p)
                .map_err(|_| bad("not an Ed25519 point"))?
                .to_public_key_der()
        }
        KeyType::X25519 => {
            // RFC 8410 section 4: id-X25519, no parameters, the 32 bytes as the key. Every
            // 32-byte string is a valid X25519 public key (RFC 7748 section 5).
            let p = point
                .filter(|p| p.len() == 32)
                .ok_or(bad("no 32-byte X25519 key (86)"))?;
            let spki = SubjectPublicKeyInfoOwned {
                algorithm: spki::AlgorithmIdentifierOwned {
                    oid: const_oid::db::rfc8410::ID_X_25519,
                    parameters: None,
                },
                subject_public_key: der::asn1::BitString::from_bytes(p)
                    .map_err(|_| bad("an X25519 key DER cannot hold"))?,
            };
            return Ok(spki);
        }
    };
    let der = der.map_err(|_| bad("a key that does not encode"))?;
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes())
        .map_err(|_| bad("a key that does not encode"))
}

fn without_leading_zeros(x: &[u8]) -> &[u8] {
    let first = x.iter().position(|&b| b != 0).unwrap_or(x.len());
    x.get(first..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;

    #[test]
    fn pin_puk_and_management_answers() {
        let m = parse(PUK, &[0x01, 0x01, 0xFF, 0x05, 0x01, 0x00, 0x06, 0x02, 3, 2]).expect("puk");
        assert_eq!(m.algorithm, MetaAlgorithm::PinPuk);
        assert_eq!(m.default, Some(false));
        assert_eq!(
            m.retries,
            Some(Retries {
                total: 3,
                remaining: 2
            })
        );
        let m = parse(
            MANAGEMENT_KEY,
            &[0x01, 0x01, 0x0A, 0x02, 0x02, 0, 1, 0x05, 0x01, 1],
        )
        .expect("mgm");
        assert_eq!(m.algorithm, MetaAlgorithm::Management(MgmAlgorithm::Aes192));
        assert_eq!(m.policy, Some((PinPolicy::Default, TouchPolicy::Never)));
        assert_eq!(m.default, Some(true));
    }

    #[test]
    fn a_p256_slot_gives_the_spki_of_its_key() {
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::SecretKey::from_slice(&[7u8; 32]).expect("key");
        let point = sk.public_key().to_sec1_bytes();
        let mut data = vec![0x01, 0x01, 0x11, 0x02, 0x02, 0x02, 0x01, 0x03, 0x01, 0x01];
        data.extend(crate::piv::tlv::tlv(
            0x04,
            &crate::piv::tlv::tlv(0x86, &point),
        ));
        let m = parse(0x9A, &data).expect("9a");
        assert_eq!(
            m.algorithm,
            MetaAlgorithm::Key(KeyType::Enrollable(Algorithm::P256))
        );
        assert_eq!(m.policy, Some((PinPolicy::Once, TouchPolicy::Never)));
        assert_eq!(m.generated, Some(true));
        let want = sk.public_key().to_public_key_der().expect("der");
        assert_eq!(
            m.public_key.expect("key").to_der().expect("der"),
            want.as_bytes()
        );
    }

    /// Ed25519 and X25519 keys come out as RFC 8410 SubjectPublicKeyInfos: the first as
    /// ed25519-dalek encodes it, the second with id-X25519 and no parameters.
    #[test]
    fn curve25519_keys() {
        use p256::pkcs8::EncodePublicKey;
        let vk = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        let mut data = vec![0x01, 0x01, 0xE0];
        data.extend(crate::piv::tlv::tlv(
            0x04,
            &crate::piv::tlv::tlv(0x86, vk.as_bytes()),
        ));
        let m = parse(0x9C, &data).expect("ed25519");
        let want = vk.to_public_key_der().expect("der");
        assert_eq!(
            m.public_key.expect("key").to_der().expect("der"),
            want.as_bytes()
        );
        let mut data = vec![0x01, 0x01, 0xE1];
        data.extend(crate::piv::tlv::tlv(
            0x04,
            &crate::piv::tlv::tlv(0x86, &[5; 32]),
        ));
        let m = parse(0x9D, &data).expect("x25519");
        assert_eq!(m.algorithm, MetaAlgorithm::Key(KeyType::X25519));
        let k = m.public_key.expect("key");
        assert_eq!(k.algorithm.oid.to_string(), "1.3.101.110");
        assert_eq!(k.algorithm.parameters, None);
        assert_eq!(k.subject_public_key.raw_bytes(), &[5; 32]);
    }

    #[test]
    fn malformed_answers_are_refused() {
        // The answer the crate's parser panics on.
        assert_eq!(
            parse(0x9A, &[0x01, 0x00]),
            Err(MetadataError::Length {
                tag: 1,
                what: "algorithm",
                len: 0,
                expected: 1
            })
        );
        assert_eq!(parse(0x9A, &[]), Err(MetadataError::NoAlgorithm));
        assert_eq!(
            parse(0x9A, &[0x01, 0x01, 0xFF]),
            Err(MetadataError::WrongReference {
                algorithm: 0xFF,
                reference: 0x9A
            })
        );
        assert_eq!(
            parse(PIN, &[0x01, 0x01, 0xFF, 0x01, 0x01, 0xFF]),
            Err(MetadataError::Duplicate(1))
        );
        assert!(matches!(
            parse(0x9A, &[0x01, 0x01, 0x11, 0x04, 0x03, 0x86, 0x01, 0x04]),
            Err(MetadataError::PublicKey(_))
        ));
        assert!(matches!(
            parse(PIN, &[0x01, 0x01, 0xFF, 0x06, 0x82, 0x00]),
            Err(MetadataError::Tlv(_))
        ));
    }
}
