//! Asymmetric keys in PIV slots: generation, import (YubiKey IMPORT KEY, INS FE),
//! public key encodings and the private key operations of GENERAL AUTHENTICATE.
//!
//! Byte layouts: SP 800-73-4 Part 2 §3.3.2 (public key data object 7F49: RSA 81 modulus,
//! 82 exponent; EC 86 uncompressed point) and Yubico's PIV extensions (import tags 01–05
//! RSA CRT, 06 EC scalar, 07 Ed25519 seed, 08 X25519 scalar; Ed25519/X25519 public keys
//! as 86 with the 32 raw bytes).

use p256::ecdsa::signature::hazmat::PrehashSigner as _;
use p256::elliptic_curve::Generate as _;
use rsa::traits::{PrivateKeyParts as _, PublicKeyParts as _};
use rsa::{pkcs8::EncodePublicKey as _, BoxedUint, RsaPrivateKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::apdu::sw;
use crate::firmware::alg;
use crate::tlv;

/// Every key slot answers with the firmware's own RSA exponent: YubiKeys only do 65537.
const RSA_E: u64 = 65537;

/// A private key of one of the PIV algorithms.
pub enum KeyMaterial {
    Rsa(Box<RsaPrivateKey>),
    P256(p256::SecretKey),
    P384(p384::SecretKey),
    Ed25519(ed25519_dalek::SigningKey),
    X25519(x25519_dalek::StaticSecret),
}

/// How a key sits in the state file: the algorithm and hex parts (RSA: p, q; others:
/// the secret scalar or seed). Debug is redacted.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredKey {
    pub algorithm: u8,
    pub parts: Vec<String>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredKey {{ algorithm: {:#04x}, .. }}", self.algorithm)
    }
}

fn rsa_bits(algorithm: u8) -> Option<usize> {
    match algorithm {
        alg::RSA1024 => Some(1024),
        alg::RSA2048 => Some(2048),
        alg::RSA3072 => Some(3072),
        alg::RSA4096 => Some(4096),
        _ => None,
    }
}

pub fn is_rsa(algorithm: u8) -> bool {
    rsa_bits(algorithm).is_some()
}

fn uint(bytes: &[u8]) -> BoxedUint {
    let bits = u32::try_from(bytes.len().max(1) * 8).unwrap_or(u32::MAX);
    BoxedUint::from_be_slice(bytes, bits).unwrap_or_else(|_| BoxedUint::zero())
}

fn rsa_from_primes(p: &[u8], q: &[u8]) -> Option<RsaPrivateKey> {
    let mut key =
        RsaPrivateKey::from_primes(vec![uint(p), uint(q)], BoxedUint::from(RSA_E)).ok()?;
    key.precompute().ok()?;
    Some(key)
}

impl KeyMaterial {
    /// A new key for `algorithm` (caller checked that the firmware has it).
    pub fn generate(algorithm: u8) -> Option<KeyMaterial> {
        let mut rng = rand::rng();
        Some(match algorithm {
            alg::P256 => KeyMaterial::P256(p256::SecretKey::generate_from_rng(&mut rng)),
            alg::P384 => KeyMaterial::P384(p384::SecretKey::generate_from_rng(&mut rng)),
            alg::ED25519 => KeyMaterial::Ed25519(ed25519_dalek::SigningKey::generate(&mut rng)),
            alg::X25519 => {
                KeyMaterial::X25519(x25519_dalek::StaticSecret::random_from_rng(&mut rng))
            }
            a => {
                let bits = rsa_bits(a)?;
                KeyMaterial::Rsa(Box::new(RsaPrivateKey::new(&mut rng, bits).ok()?))
            }
        })
    }

    /// Parses IMPORT KEY data for `algorithm` (P1). Policy tags AA/AB are read by the
    /// caller. Errors are status words: 6A80 for data that is not such a key.
    pub fn import(algorithm: u8, data: &[u8]) -> Result<KeyMaterial, u16> {
        let get = |tag| tlv::find(data, tag).ok_or(sw::WRONG_DATA);
        let key = match algorithm {
            alg::P256 | alg::P384 => {
                let scalar = get(0x06)?;
                let len = if algorithm == alg::P256 { 32 } else { 48 };
                if scalar.len() > len {
                    return Err(sw::WRONG_DATA);
                }
                let mut padded = vec![0u8; len - scalar.len()];
                padded.extend_from_slice(scalar);
                if algorithm == alg::P256 {
                    KeyMaterial::P256(
                        p256::SecretKey::from_slice(&padded).map_err(|_| sw::WRONG_DATA)?,
                    )
                } else {
                    KeyMaterial::P384(
                        p384::SecretKey::from_slice(&padded).map_err(|_| sw::WRONG_DATA)?,
                    )
                }
            }
            alg::ED25519 => {
                let seed: [u8; 32] = get(0x07)?.try_into().map_err(|_| sw::WRONG_DATA)?;
                KeyMaterial::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
            }
            alg::X25519 => {
                let secret: [u8; 32] = get(0x08)?.try_into().map_err(|_| sw::WRONG_DATA)?;
                KeyMaterial::X25519(x25519_dalek::StaticSecret::from(secret))
            }
            a => {
                let bits = rsa_bits(a).ok_or(sw::INCORRECT_P1P2)?;
                let (p, q) = (get(0x01)?, get(0x02)?);
                let key = rsa_from_primes(p, q).ok_or(sw::WRONG_DATA)?;
                // The primes must make a modulus of the size P1 names.
                if key.n().bit_width() as usize != bits {
                    return Err(sw::WRONG_DATA);
                }
                KeyMaterial::Rsa(Box::new(key))
            }
        };
        Ok(key)
    }

    /// Loads a PKCS#8 private key (the f9 attestation key issued by attest.rs).
    pub fn from_pkcs8(der: &[u8]) -> Option<KeyMaterial> {
        use p256::pkcs8::DecodePrivateKey as _;
        if let Ok(k) = p256::SecretKey::from_pkcs8_der(der) {
            return Some(KeyMaterial::P256(k));
        }
        if let Ok(k) = p384::SecretKey::from_pkcs8_der(der) {
            return Some(KeyMaterial::P384(k));
        }
        if let Ok(k) = RsaPrivateKey::from_pkcs8_der(der) {
            return Some(KeyMaterial::Rsa(Box::new(k)));
        }
        None
    }

    /// PKCS#8 DER of the key (for attest.rs, which signs with the f9 key).
    pub fn to_pkcs8(&self) -> Option<Zeroizing<Vec<u8>>> {
        use p256::pkcs8::EncodePrivateKey as _;
        let doc = match self {
            KeyMaterial::P256(k) => k.to_pkcs8_der().ok()?,
            KeyMaterial::P384(k) => k.to_pkcs8_der().ok()?,
            KeyMaterial::Rsa(k) => k.to_pkcs8_der().ok()?,
            // Yubico attestation keys are RSA or ECDSA.
            KeyMaterial::Ed25519(_) | KeyMaterial::X25519(_) => return None,
        };
        Some(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    pub fn algorithm(&self) -> u8 {
        match self {
            KeyMaterial::Rsa(k) => match k.n().bit_width() {
                1024 => alg::RSA1024,
                3072 => alg::RSA3072,
                4096 => alg::RSA4096,
                _ => alg::RSA2048,
            },
            KeyMaterial::P256(_) => alg::P256,
            KeyMaterial::P384(_) => alg::P384,
            KeyMaterial::Ed25519(_) => alg::ED25519,
            KeyMaterial::X25519(_) => alg::X25519,
        }
    }

    pub fn store(&self) -> StoredKey {
        let parts = match self {
            KeyMaterial::Rsa(k) => k
                .primes()
                .iter()
                .map(|p| hex::encode(strip(&p.to_be_bytes())))
                .collect(),
            KeyMaterial::P256(k) => vec![hex::encode(k.to_bytes())],
            KeyMaterial::P384(k) => vec![hex::encode(k.to_bytes())],
            KeyMaterial::Ed25519(k) => vec![hex::encode(k.to_bytes())],
            KeyMaterial::X25519(k) => vec![hex::encode(k.to_bytes())],
        };
        StoredKey {
            algorithm: self.algorithm(),
            parts,
        }
    }

    pub fn load(stored: &StoredKey) -> Option<KeyMaterial> {
        let parts: Vec<Zeroizing<Vec<u8>>> = stored
            .parts
            .iter()
            .map(|p| hex::decode(p).ok().map(Zeroizing::new))
            .collect::<Option<_>>()?;
        let one = |n: usize| -> Option<[u8; 32]> { parts.first()?.get(..n)?.try_into().ok() };
        Some(match stored.algorithm {
            alg::P256 => KeyMaterial::P256(p256::SecretKey::from_slice(parts.first()?).ok()?),
            alg::P384 => KeyMaterial::P384(p384::SecretKey::from_slice(parts.first()?).ok()?),
            alg::ED25519 => KeyMaterial::Ed25519(ed25519_dalek::SigningKey::from_bytes(&one(32)?)),
            alg::X25519 => KeyMaterial::X25519(x25519_dalek::StaticSecret::from(one(32)?)),
            a if is_rsa(a) => {
                KeyMaterial::Rsa(Box::new(rsa_from_primes(parts.first()?, parts.get(1)?)?))
            }
            _ => return None,
        })
    }

    /// The content of the public key data object 7F49 (SP 800-73-4 Part 2 §3.3.2).
    pub fn public_tlvs(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            KeyMaterial::Rsa(k) => {
                tlv::put(&mut out, 0x81, strip(&k.n().to_be_bytes()));
                tlv::put(&mut out, 0x82, strip(&k.e().to_be_bytes()));
            }
            KeyMaterial::P256(k) => tlv::put(&mut out, 0x86, &k.public_key().to_sec1_bytes()),
            KeyMaterial::P384(k) => tlv::put(&mut out, 0x86, &k.public_key().to_sec1_bytes()),
            KeyMaterial::Ed25519(k) => tlv::put(&mut out, 0x86, k.verifying_key().as_bytes()),
            KeyMaterial::X25519(k) => {
                tlv::put(&mut out, 0x86, x25519_dalek::PublicKey::from(k).as_bytes())
            }
        }
        out
    }

    /// SubjectPublicKeyInfo DER (RFC 5280 §4.1.2.7; RFC 8410 for Ed25519/X25519).
    pub fn spki_der(&self) -> Vec<u8> {
        // RFC 8410 §4: SEQUENCE { SEQUENCE { OID }, BIT STRING } with 32 raw bytes.
        let rfc8410 = |oid_last: u8, key: &[u8]| {
            let mut out = vec![
                0x30, 0x2A, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, oid_last, 0x03, 0x21, 0x00,
            ];
            out.extend_from_slice(key);
            out
        };
        match self {
            KeyMaterial::Rsa(k) => k
                .to_public_key()
                .to_public_key_der()
                .map(|d| d.into_vec())
                .unwrap_or_default(),
            KeyMaterial::P256(k) => k
                .public_key()
                .to_public_key_der()
                .map(|d| d.into_vec())
                .unwrap_or_default(),
            KeyMaterial::P384(k) => k
                .public_key()
                .to_public_key_der()
                .map(|d| d.into_vec())
                .unwrap_or_default(),
            KeyMaterial::Ed25519(k) => rfc8410(0x70, k.verifying_key().as_bytes()),
            KeyMaterial::X25519(k) => rfc8410(0x6E, x25519_dalek::PublicKey::from(k).as_bytes()),
        }
    }

    /// GENERAL AUTHENTICATE with a challenge (tag 81): RSA raw private operation on a
    /// block of the modulus size (signature or decryption; the client pads), ECDSA over a
    /// hash (DER signature), Ed25519 over the message. Errors are status words.
    pub fn sign(&self, input: &[u8]) -> Result<Vec<u8>, u16> {
        match self {
            KeyMaterial::Rsa(k) => {
                let size = k.size();
                if input.len() != size {
                    return Err(sw::WRONG_DATA);
                }
                let c = BoxedUint::from_be_slice(input, k.n_bits_precision())
                    .map_err(|_| sw::WRONG_DATA)?;
                let mut rng = rand::rng();
                let m = rsa::hazmat::rsa_decrypt_and_check(k.as_ref(), Some(&mut rng), &c)
                    .map_err(|_| sw::WRONG_DATA)?;
                let bytes = m.to_be_bytes();
                let start = bytes.len().saturating_sub(size);
                Ok(bytes[start..].to_vec())
            }
            KeyMaterial::P256(k) => {
                let hash = fit(input, 32);
                let sig: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(k)
                    .sign_prehash(&hash)
                    .map_err(|_| sw::WRONG_DATA)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            KeyMaterial::P384(k) => {
                let hash = fit(input, 48);
                let sig: p384::ecdsa::Signature = p384::ecdsa::SigningKey::from(k)
                    .sign_prehash(&hash)
                    .map_err(|_| sw::WRONG_DATA)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            KeyMaterial::Ed25519(k) => {
                use ed25519_dalek::Signer as _;
                Ok(k.sign(input).to_bytes().to_vec())
            }
            // X25519 only agrees keys.
            KeyMaterial::X25519(_) => Err(sw::CONDITIONS),
        }
    }

    /// GENERAL AUTHENTICATE with an exponentiation (tag 85): ECDH with the peer's public
    /// point (X9.62 uncompressed) or X25519 public key; answers the shared secret.
    pub fn agree(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, u16> {
        match self {
            KeyMaterial::P256(k) => {
                let peer = p256::PublicKey::from_sec1_bytes(peer).map_err(|_| sw::WRONG_DATA)?;
                let shared = p256::ecdh::diffie_hellman(k.to_nonzero_scalar(), peer.as_affine());
                Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
            }
            KeyMaterial::P384(k) => {
                let peer = p384::PublicKey::from_sec1_bytes(peer).map_err(|_| sw::WRONG_DATA)?;
                let shared = p384::ecdh::diffie_hellman(k.to_nonzero_scalar(), peer.as_affine());
                Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
            }
            KeyMaterial::X25519(k) => {
                let peer: [u8; 32] = peer.try_into().map_err(|_| sw::WRONG_DATA)?;
                let shared = k.diffie_hellman(&x25519_dalek::PublicKey::from(peer));
                Ok(Zeroizing::new(shared.as_bytes().to_vec()))
            }
            _ => Err(sw::CONDITIONS),
        }
    }
}

/// Big-endian integer bytes without leading zeros (keeps one byte for zero).
fn strip(bytes: &[u8]) -> &[u8] {
    let first = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    &bytes[first..]
}

/// A hash fitted to the curve's field size: left-padded with zeros if shorter, truncated
/// to the leftmost bytes if longer (FIPS 186-4 §6.4 uses the leftmost bits).
fn fit(input: &[u8], len: usize) -> Vec<u8> {
    if input.len() >= len {
        input[..len].to_vec()
    } else {
        let mut out = vec![0u8; len - input.len()];
        out.extend_from_slice(input);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_keys_come_back_the_same() {
        for a in [
            alg::P256,
            alg::P384,
            alg::ED25519,
            alg::X25519,
            alg::RSA1024,
        ] {
            let key = KeyMaterial::generate(a).unwrap();
            let back = KeyMaterial::load(&key.store()).unwrap();
            assert_eq!(back.algorithm(), a);
            assert_eq!(back.public_tlvs(), key.public_tlvs());
        }
    }

    #[test]
    fn ecdsa_signatures_verify_and_ecdh_agrees() {
        use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
        let key = KeyMaterial::generate(alg::P256).unwrap();
        let KeyMaterial::P256(secret) = &key else {
            unreachable!()
        };
        let der = key.sign(&[7u8; 32]).unwrap();
        let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
        p256::ecdsa::VerifyingKey::from(secret.public_key())
            .verify_prehash(&[7u8; 32], &sig)
            .unwrap();
        let other = p256::SecretKey::generate_from_rng(&mut rand::rng());
        let shared = key.agree(&other.public_key().to_sec1_bytes()).unwrap();
        let expected =
            p256::ecdh::diffie_hellman(other.to_nonzero_scalar(), secret.public_key().as_affine());
        assert_eq!(shared.as_slice(), expected.raw_secret_bytes().as_slice());
    }

    #[test]
    fn rsa_raw_operation_inverts_public_exponent() {
        let key = KeyMaterial::generate(alg::RSA1024).unwrap();
        let KeyMaterial::Rsa(k) = &key else {
            unreachable!()
        };
        let mut block = vec![0u8; 128];
        block[1] = 1;
        block[127] = 42;
        let s = key.sign(&block).unwrap();
        let c = BoxedUint::from_be_slice(&s, k.n_bits_precision()).unwrap();
        let m = rsa::hazmat::rsa_encrypt(k.as_ref(), &c).unwrap();
        assert_eq!(
            &m.to_be_bytes()[m.to_be_bytes().len() - 128..],
            block.as_slice()
        );
    }
}
