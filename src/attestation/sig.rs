//! Signature checks along an attestation chain, with RustCrypto verifiers (the same crates
//! pivault already uses for CSRs): which AlgorithmIdentifiers are accepted, and the check.
//!
//! Accepted signature algorithms, each deliberately:
//! - sha{256,384,512}WithRSAEncryption (RFC 4055 §5), PKCS#1 v1.5. RFC 4055 says the
//!   parameters MUST be NULL; Yubico's "PIV Attestation B2 1" intermediate (2025) encodes
//!   them ABSENT, so both NULL and absent are accepted. Any other parameter is refused.
//! - ecdsa-with-SHA256/SHA384 (RFC 5758 §3.2), parameters absent, on P-256 or P-384 keys.
//!   Any hash goes with either curve: a YubiKey with a P-384 F9 key signs attestations
//!   with ECDSA-SHA256 (Yubico, "PIV attestation": "If the attesting key is EC the
//!   signature will be ECDSA-SHA256").
//! - Ed25519 (RFC 8410 §3), parameters absent (an imported Ed25519 F9 key on 5.7+).

use const_oid::{db::rfc5912, ObjectIdentifier};
use der::Encode;
use sha2::{Digest, Sha256, Sha384, Sha512};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// A digest used with a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// A signature algorithm the chain check accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// PKCS#1 v1.5; `null_params` tells whether the identifier carried NULL parameters
    /// (RFC 4055) or none (Yubico PIV Attestation B2 1).
    RsaPkcs1 {
        hash: Hash,
        null_params: bool,
    },
    Ecdsa(Hash),
    Ed25519,
}

/// What the identifier says, or why it is not accepted.
pub fn signature_algorithm(id: &AlgorithmIdentifierOwned) -> Result<SignatureAlgorithm, String> {
    let rsa = |hash| match &id.parameters {
        None => Ok(SignatureAlgorithm::RsaPkcs1 {
            hash,
            null_params: false,
        }),
        Some(p) if p.is_null() => Ok(SignatureAlgorithm::RsaPkcs1 {
            hash,
            null_params: true,
        }),
        Some(_) => Err(format!("{} with parameters other than NULL", id.oid)),
    };
    let no_params = |alg| match id.parameters {
        None => Ok(alg),
        Some(_) => Err(format!(
            "{} with parameters (RFC 5758/8410: absent)",
            id.oid
        )),
    };
    match id.oid {
        o if o == rfc5912::SHA_256_WITH_RSA_ENCRYPTION => rsa(Hash::Sha256),
        o if o == rfc5912::SHA_384_WITH_RSA_ENCRYPTION => rsa(Hash::Sha384),
        o if o == rfc5912::SHA_512_WITH_RSA_ENCRYPTION => rsa(Hash::Sha512),
        o if o == rfc5912::ECDSA_WITH_SHA_256 => no_params(SignatureAlgorithm::Ecdsa(Hash::Sha256)),
        o if o == rfc5912::ECDSA_WITH_SHA_384 => no_params(SignatureAlgorithm::Ecdsa(Hash::Sha384)),
        o if o == ID_ED25519 => no_params(SignatureAlgorithm::Ed25519),
        o => Err(format!("unsupported signature algorithm {o}")),
    }
}

fn digest(hash: Hash, msg: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha256 => Sha256::digest(msg).to_vec(),
        Hash::Sha384 => Sha384::digest(msg).to_vec(),
        Hash::Sha512 => Sha512::digest(msg).to_vec(),
    }
}

/// Checks `sig` over `msg` with `issuer`'s public key. The key type must fit the
/// algorithm (an RSA identifier with an EC key is an error, not a fallback).
pub fn verify(
    alg: SignatureAlgorithm,
    issuer: &SubjectPublicKeyInfoOwned,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), String> {
    use signature::hazmat::PrehashVerifier;
    use signature::Verifier;
    let der = issuer.to_der().map_err(|e| format!("issuer key: {e}"))?;
    let bad = |e: signature::Error| format!("signature does not verify ({e})");
    match alg {
        SignatureAlgorithm::RsaPkcs1 { hash, .. } => {
            use rsa::pkcs8::DecodePublicKey;
            let key = rsa::RsaPublicKey::from_public_key_der(&der)
                .map_err(|e| format!("the issuer's key is not an RSA key ({e})"))?;
            let sig = rsa::pkcs1v15::Signature::try_from(sig).map_err(bad)?;
            match hash {
                Hash::Sha256 => rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key).verify(msg, &sig),
                Hash::Sha384 => rsa::pkcs1v15::VerifyingKey::<Sha384>::new(key).verify(msg, &sig),
                Hash::Sha512 => rsa::pkcs1v15::VerifyingKey::<Sha512>::new(key).verify(msg, &sig),
            }
            .map_err(bad)
        }
        SignatureAlgorithm::Ecdsa(hash) => {
            let prehash = digest(hash, msg);
            if let Ok(key) = {
                use p256::pkcs8::DecodePublicKey;
                p256::ecdsa::VerifyingKey::from_public_key_der(&der)
            } {
                let sig = p256::ecdsa::Signature::from_der(sig).map_err(bad)?;
                return key.verify_prehash(&prehash, &sig).map_err(bad);
            }
            if let Ok(key) = {
                use p384::pkcs8::DecodePublicKey;
                p384::ecdsa::VerifyingKey::from_public_key_der(&der)
            } {
                let sig = p384::ecdsa::Signature::from_der(sig).map_err(bad)?;
                return key.verify_prehash(&prehash, &sig).map_err(bad);
            }
            Err("the issuer's key is not a P-256 or P-384 key".into())
        }
        SignatureAlgorithm::Ed25519 => {
            if issuer.algorithm.oid != ID_ED25519 {
                return Err("the issuer's key is not an Ed25519 key".into());
            }
            let raw: [u8; 32] = issuer
                .subject_public_key
                .raw_bytes()
                .try_into()
                .map_err(|_| "bad Ed25519 key length".to_string())?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(bad)?;
            let sig = ed25519_dalek::Signature::from_slice(sig).map_err(bad)?;
            key.verify_strict(msg, &sig).map_err(bad)
        }
    }
}
