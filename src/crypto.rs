//! Signature algorithms pivault uses with on-card keys: which hash and signature OID go
//! with a key, how the card's raw private-key operation is fed, and local verification
//! of what the card signed (RustCrypto crates, the same line as the `yubikey` crate).

use crate::piv::Algorithm;
use const_oid::{db::rfc5912, ObjectIdentifier};
use der::{asn1::AnyRef, Encode};
use sha2::{Digest, Sha256, Sha384};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// DER prefix of DigestInfo for SHA-256 (RFC 8017 9.2, note 1).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// The key type of a SubjectPublicKeyInfo, when pivault can generate it.
pub fn algorithm_of(spki: &SubjectPublicKeyInfoOwned) -> Option<Algorithm> {
    let oid = spki.algorithm.oid;
    if oid == rfc5912::ID_EC_PUBLIC_KEY {
        let curve: ObjectIdentifier = spki.algorithm.parameters.as_ref()?.decode_as().ok()?;
        return match curve {
            c if c == rfc5912::SECP_256_R_1 => Some(Algorithm::P256),
            c if c == rfc5912::SECP_384_R_1 => Some(Algorithm::P384),
            _ => None,
        };
    }
    if oid == rfc5912::RSA_ENCRYPTION {
        use rsa::{pkcs8::DecodePublicKey, traits::PublicKeyParts};
        let der = spki.to_der().ok()?;
        let key = rsa::RsaPublicKey::from_public_key_der(&der).ok()?;
        return match key.size() * 8 {
            2048 => Some(Algorithm::Rsa2048),
            3072 => Some(Algorithm::Rsa3072),
            4096 => Some(Algorithm::Rsa4096),
            _ => None,
        };
    }
    (oid == ID_ED25519).then_some(Algorithm::Ed25519)
}

/// The signature algorithm pivault uses for a key (RFC 5758 3.2, RFC 4055 5, RFC 8410 3).
pub fn signature_algorithm(alg: Algorithm) -> AlgorithmIdentifierOwned {
    match alg {
        Algorithm::P256 => AlgorithmIdentifierOwned {
            oid: rfc5912::ECDSA_WITH_SHA_256,
            parameters: None,
        },
        Algorithm::P384 => AlgorithmIdentifierOwned {
            oid: rfc5912::ECDSA_WITH_SHA_384,
            parameters: None,
        },
        Algorithm::Rsa2048 | Algorithm::Rsa3072 | Algorithm::Rsa4096 => AlgorithmIdentifierOwned {
            oid: rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
            parameters: Some(AnyRef::NULL.into()),
        },
        Algorithm::Ed25519 => AlgorithmIdentifierOwned {
            oid: ID_ED25519,
            parameters: None,
        },
    }
}

fn modulus_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::Rsa3072 => 384,
        Algorithm::Rsa4096 => 512,
        _ => 256,
    }
}

/// What the card's private-key operation is given to sign `msg`: the digest for ECDSA,
/// the EMSA-PKCS1-v1_5 encoded block for RSA (RFC 8017 9.2), the message for Ed25519.
pub fn card_input(alg: Algorithm, msg: &[u8]) -> Vec<u8> {
    match alg {
        Algorithm::P256 => Sha256::digest(msg).to_vec(),
        Algorithm::P384 => Sha384::digest(msg).to_vec(),
        Algorithm::Ed25519 => msg.to_vec(),
        Algorithm::Rsa2048 | Algorithm::Rsa3072 | Algorithm::Rsa4096 => {
            let k = modulus_len(alg);
            let t_len = SHA256_DIGEST_INFO.len() + 32;
            let mut em = vec![0xffu8; k];
            em[0] = 0x00;
            em[1] = 0x01;
            em[k - t_len - 1] = 0x00;
            em[k - t_len..k - 32].copy_from_slice(&SHA256_DIGEST_INFO);
            em[k - 32..].copy_from_slice(&Sha256::digest(msg));
            em
        }
    }
}

/// Verify `sig` over `msg` with the public key, for the signature algorithm pivault uses
/// with that key. Errors say what did not match.
pub fn verify(spki: &SubjectPublicKeyInfoOwned, msg: &[u8], sig: &[u8]) -> Result<(), String> {
    use signature::Verifier;
    let alg = algorithm_of(spki).ok_or("unsupported public key type")?;
    let der = spki.to_der().map_err(|e| e.to_string())?;
    let bad = |e: signature::Error| format!("signature does not verify: {e}");
    match alg {
        Algorithm::P256 => {
            use p256::pkcs8::DecodePublicKey;
            let key =
                p256::ecdsa::VerifyingKey::from_public_key_der(&der).map_err(|e| e.to_string())?;
            let sig = p256::ecdsa::DerSignature::try_from(sig).map_err(bad)?;
            key.verify(msg, &sig).map_err(bad)
        }
        Algorithm::P384 => {
            use p384::pkcs8::DecodePublicKey;
            let key =
                p384::ecdsa::VerifyingKey::from_public_key_der(&der).map_err(|e| e.to_string())?;
            let sig = p384::ecdsa::DerSignature::try_from(sig).map_err(bad)?;
            key.verify(msg, &sig).map_err(bad)
        }
        Algorithm::Rsa2048 | Algorithm::Rsa3072 | Algorithm::Rsa4096 => {
            use rsa::pkcs8::DecodePublicKey;
            let key = rsa::RsaPublicKey::from_public_key_der(&der).map_err(|e| e.to_string())?;
            let key = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key);
            let sig = rsa::pkcs1v15::Signature::try_from(sig).map_err(bad)?;
            key.verify(msg, &sig).map_err(bad)
        }
        Algorithm::Ed25519 => {
            let raw: [u8; 32] = spki
                .subject_public_key
                .raw_bytes()
                .try_into()
                .map_err(|_| "bad Ed25519 key length")?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(bad)?;
            let sig = ed25519_dalek::Signature::from_slice(sig).map_err(bad)?;
            key.verify(msg, &sig).map_err(bad)
        }
    }
}

/// SHA-256 of DER bytes as colon-free lowercase hex (certificate fingerprints).
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs1_block_layout() {
        let em = card_input(Algorithm::Rsa2048, b"hello");
        assert_eq!(em.len(), 256);
        assert_eq!(&em[..2], &[0x00, 0x01]);
        let sep = 256 - 51 - 1;
        assert!(em[2..sep].iter().all(|&b| b == 0xff));
        assert_eq!(em[sep], 0);
        assert_eq!(&em[sep + 1..sep + 20], &SHA256_DIGEST_INFO);
        assert_eq!(&em[sep + 20..], Sha256::digest(b"hello").as_slice());
        assert_eq!(card_input(Algorithm::Rsa4096, b"x").len(), 512);
    }

    #[test]
    fn verifies_p256_and_rejects_tampering() {
        use der::Decode;
        use p256::ecdsa::{signature::Signer, SigningKey};
        use p256::pkcs8::EncodePublicKey;
        let sk = SigningKey::from_slice(&[7u8; 32]).expect("key");
        let spki_der = sk.verifying_key().to_public_key_der().expect("spki");
        let spki = SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes()).expect("spki");
        assert_eq!(algorithm_of(&spki), Some(Algorithm::P256));
        let sig: p256::ecdsa::DerSignature = sk.sign(b"msg");
        assert!(verify(&spki, b"msg", sig.as_bytes()).is_ok());
        assert!(verify(&spki, b"msh", sig.as_bytes()).is_err());
    }
}
