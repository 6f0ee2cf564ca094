//! TLS client authentication with a private key that never leaves a hardware token.
//!
//! Vault's TLS certificate auth (`auth/cert/login`) reads the client certificate of the
//! TLS connection the login arrives on. Here rustls asks a [`ClientKey`] (implemented
//! outside this module, over the PIV token) for one raw private-key operation per
//! handshake; everything TLS-specific is done on the host:
//!
//! - ECDSA (RFC 8446 4.2.3): the host hashes the handshake transcript with the scheme's
//!   hash, the card signs that digest (PIV GENERAL AUTHENTICATE, SP 800-73-4 part 2 3.2.4)
//!   and returns a DER `ECDSA-Sig-Value`, which is what TLS sends. TLS 1.3 binds the curve
//!   to the hash: P-256 with SHA-256, P-384 with SHA-384.
//! - RSA: the card does the raw RSA private operation on a block of the modulus' length,
//!   so the host builds the padded block: EMSA-PSS (RFC 8017 9.1.1, salt = hash length, as
//!   RFC 8446 4.2.3 requires) for the `rsa_pss_rsae_*` schemes, the only RSA schemes TLS
//!   1.3 allows for a handshake signature, and EMSA-PKCS1-v1_5 (RFC 8017 9.2) where TLS 1.2
//!   offers it.
//!
//! The key is used only while [`ClientCert::arm`]ed (during a certificate login): a
//! connection opened later (pool refresh, failover) goes without a client certificate and
//! never asks the card, whose session may then be busy with a renewal on another thread.

use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The key type behind the client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKeyKind {
    EcP256,
    EcP384,
    /// RSA with a modulus of this many bits.
    Rsa {
        bits: usize,
    },
}

/// A private key held elsewhere (a hardware token): the one operation TLS needs.
///
/// Implementations must be safe to call from the HTTP client's own thread; a card that is
/// not `Sync` is put behind a `Mutex` by the implementation.
pub trait ClientKey: Send + Sync {
    /// The client certificate, DER.
    fn certificate_der(&self) -> Vec<u8>;
    fn kind(&self) -> ClientKeyKind;
    /// The raw private-key operation: for ECDSA `input` is the digest and the answer the
    /// DER `ECDSA-Sig-Value`; for RSA `input` is the padded block (modulus length) and the
    /// answer the raw signature. The error text is shown to a person.
    fn private_op(&self, input: &[u8]) -> Result<Vec<u8>, String>;
}

/// A client certificate for the Vault client, shared with the TLS layer.
pub struct ClientCert {
    key: Arc<dyn ClientKey>,
    armed: AtomicBool,
    signatures: AtomicU64,
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert")
            .field("kind", &self.key.kind())
            .field("armed", &self.armed.load(Ordering::Relaxed))
            .finish()
    }
}

impl ClientCert {
    pub fn new(key: Arc<dyn ClientKey>) -> Arc<ClientCert> {
        Arc::new(ClientCert {
            key,
            armed: AtomicBool::new(false),
            signatures: AtomicU64::new(0),
        })
    }

    /// Present the certificate on new connections (`true`) or not.
    pub fn arm(&self, on: bool) {
        self.armed.store(on, Ordering::SeqCst);
    }

    /// Handshake signatures made with the key so far.
    pub fn signatures(&self) -> u64 {
        self.signatures.load(Ordering::Relaxed)
    }
}

/// The rustls side: hands out the certificate and the card-backed key.
#[derive(Debug)]
pub(crate) struct Resolver(pub Arc<ClientCert>);

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        if !self.0.armed.load(Ordering::SeqCst) {
            return None;
        }
        let key = CardKey(self.0.clone());
        if pick_scheme(self.0.key.kind(), sigschemes).is_none() {
            log::warn!(
                "Vault's TLS server accepts no signature scheme the token's key can make \
                 ({:?}; offered {sigschemes:?}): connecting without a client certificate",
                self.0.key.kind()
            );
            return None;
        }
        let cert = CertificateDer::from(self.0.key.certificate_der());
        Some(Arc::new(CertifiedKey::new(vec![cert], Arc::new(key))))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The scheme to sign with, by preference among those offered.
fn pick_scheme(kind: ClientKeyKind, offered: &[SignatureScheme]) -> Option<SignatureScheme> {
    use SignatureScheme as S;
    let prefs: &[S] = match kind {
        ClientKeyKind::EcP256 => &[S::ECDSA_NISTP256_SHA256],
        ClientKeyKind::EcP384 => &[S::ECDSA_NISTP384_SHA384],
        ClientKeyKind::Rsa { .. } => &[
            S::RSA_PSS_SHA256,
            S::RSA_PSS_SHA384,
            S::RSA_PSS_SHA512,
            S::RSA_PKCS1_SHA256,
            S::RSA_PKCS1_SHA384,
            S::RSA_PKCS1_SHA512,
        ],
    };
    prefs.iter().copied().find(|s| offered.contains(s))
}

#[derive(Debug)]
struct CardKey(Arc<ClientCert>);

impl SigningKey for CardKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = pick_scheme(self.0.key.kind(), offered)?;
        Some(Box::new(CardSigner {
            cert: self.0.clone(),
            scheme,
        }))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.0.key.kind() {
            ClientKeyKind::EcP256 | ClientKeyKind::EcP384 => SignatureAlgorithm::ECDSA,
            ClientKeyKind::Rsa { .. } => SignatureAlgorithm::RSA,
        }
    }
}

#[derive(Debug)]
struct CardSigner {
    cert: Arc<ClientCert>,
    scheme: SignatureScheme,
}

impl Signer for CardSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let input = card_block(self.cert.key.kind(), self.scheme, message)
            .map_err(rustls::Error::General)?;
        let sig = self.cert.key.private_op(&input).map_err(|e| {
            log::warn!("the token could not sign the TLS handshake: {e}");
            rustls::Error::General(format!("the token could not sign: {e}"))
        })?;
        self.cert.signatures.fetch_add(1, Ordering::Relaxed);
        Ok(sig)
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// The rustls configuration reqwest is given when a client certificate is set: the same
/// trust rules as the builder's (only the CA bundle when given, else the system store;
/// verification off only when configured), TLS 1.2 and 1.3, the ring provider.
pub(crate) fn tls_config(
    ca_bundle_pem: Option<&[u8]>,
    skip_verify: bool,
    cert: Arc<ClientCert>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let resolver = Arc::new(Resolver(cert));
    let mut cfg = if skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_client_cert_resolver(resolver)
    } else {
        builder
            .with_root_certificates(roots(ca_bundle_pem)?)
            .with_client_cert_resolver(resolver)
    };
    // A resumed TLS 1.3 session carries the client identity of the session it resumes
    // (none, for a connection made before the login): every handshake is a full one.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

fn roots(ca_bundle_pem: Option<&[u8]>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_bundle_pem {
        Some(pem) => {
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| format!("the CA bundle is not PEM: {e}"))?;
                roots.add(c).map_err(|e| format!("the CA bundle: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                log::warn!("system CA store: {e}");
            }
            roots.add_parsable_certificates(found.certs);
        }
    }
    if roots.is_empty() {
        return Err("no trusted CA certificate (CA bundle or system store)".into());
    }
    Ok(roots)
}

/// `tls_skip_verify`: any server certificate, but the handshake signatures still checked
/// (development only; the builder warns).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// DigestInfo prefixes of EMSA-PKCS1-v1_5 (RFC 8017 9.2, note 1).
const DI_SHA256: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
const DI_SHA384: [u8; 19] = [
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0x04, 0x30,
];
const DI_SHA512: [u8; 19] = [
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
    0x00, 0x04, 0x40,
];

#[derive(Clone, Copy)]
enum Hash {
    S256,
    S384,
    S512,
}

impl Hash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::S256 => Sha256::digest(data).to_vec(),
            Hash::S384 => Sha384::digest(data).to_vec(),
            Hash::S512 => Sha512::digest(data).to_vec(),
        }
    }
    fn len(self) -> usize {
        match self {
            Hash::S256 => 32,
            Hash::S384 => 48,
            Hash::S512 => 64,
        }
    }
}

/// What the card is given for `scheme` over `message` (module docs).
fn card_block(
    kind: ClientKeyKind,
    scheme: SignatureScheme,
    message: &[u8],
) -> Result<Vec<u8>, String> {
    use SignatureScheme as S;
    match (kind, scheme) {
        (ClientKeyKind::EcP256, S::ECDSA_NISTP256_SHA256) => Ok(Hash::S256.digest(message)),
        (ClientKeyKind::EcP384, S::ECDSA_NISTP384_SHA384) => Ok(Hash::S384.digest(message)),
        (ClientKeyKind::Rsa { bits }, s) => {
            let (h, pss, di) = match s {
                S::RSA_PSS_SHA256 => (Hash::S256, true, DI_SHA256),
                S::RSA_PSS_SHA384 => (Hash::S384, true, DI_SHA384),
                S::RSA_PSS_SHA512 => (Hash::S512, true, DI_SHA512),
                S::RSA_PKCS1_SHA256 => (Hash::S256, false, DI_SHA256),
                S::RSA_PKCS1_SHA384 => (Hash::S384, false, DI_SHA384),
                S::RSA_PKCS1_SHA512 => (Hash::S512, false, DI_SHA512),
                other => return Err(format!("RSA key cannot sign with {other:?}")),
            };
            let mut salt = vec![0u8; h.len()];
            rand::Rng::fill(&mut rand::rng(), &mut salt[..]);
            if pss {
                emsa_pss(h, message, bits, &salt)
            } else {
                emsa_pkcs1(h, &di, message, bits.div_ceil(8))
            }
        }
        (k, s) => Err(format!("a {k:?} key cannot sign with {s:?}")),
    }
}

/// EMSA-PKCS1-v1_5-ENCODE (RFC 8017 9.2) to `k` bytes.
fn emsa_pkcs1(h: Hash, di: &[u8], message: &[u8], k: usize) -> Result<Vec<u8>, String> {
    let t_len = di.len() + h.len();
    if k < t_len + 11 {
        return Err("RSA modulus too short for the digest".into());
    }
    let mut em = vec![0xffu8; k];
    em[0] = 0;
    em[1] = 1;
    em[k - t_len - 1] = 0;
    em[k - t_len..k - h.len()].copy_from_slice(di);
    em[k - h.len()..].copy_from_slice(&h.digest(message));
    Ok(em)
}

/// EMSA-PSS-ENCODE (RFC 8017 9.1.1) with MGF1 over the same hash, for a modulus of
/// `mod_bits` bits; the block is returned left-padded to the modulus length.
fn emsa_pss(h: Hash, message: &[u8], mod_bits: usize, salt: &[u8]) -> Result<Vec<u8>, String> {
    let em_bits = mod_bits - 1;
    let em_len = em_bits.div_ceil(8);
    let h_len = h.len();
    if em_len < h_len + salt.len() + 2 {
        return Err("RSA modulus too short for PSS".into());
    }
    let m_hash = h.digest(message);
    let mut m_prime = vec![0u8; 8];
    m_prime.extend_from_slice(&m_hash);
    m_prime.extend_from_slice(salt);
    let hh = h.digest(&m_prime);
    let db_len = em_len - h_len - 1;
    let mut db = vec![0u8; db_len];
    db[db_len - salt.len() - 1] = 0x01;
    db[db_len - salt.len()..].copy_from_slice(salt);
    // MGF1 (RFC 8017 B.2.1).
    let mut mask = Vec::with_capacity(db_len + h_len);
    let mut counter: u32 = 0;
    while mask.len() < db_len {
        let mut block = hh.clone();
        block.extend_from_slice(&counter.to_be_bytes());
        mask.extend_from_slice(&h.digest(&block));
        counter += 1;
    }
    for (d, m) in db.iter_mut().zip(mask) {
        *d ^= m;
    }
    db[0] &= 0xffu8 >> (8 * em_len - em_bits);
    let k = mod_bits.div_ceil(8);
    let mut em = vec![0u8; k - em_len];
    em.extend_from_slice(&db);
    em.extend_from_slice(&hh);
    em.push(0xbc);
    Ok(em)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::traits::PublicKeyParts;

    /// The host-side padding plus a raw RSA private operation gives signatures the
    /// reference implementation verifies (PSS and PKCS#1 v1.5).
    #[test]
    fn rsa_blocks_verify() {
        use rsa::signature::Verifier;
        let key = rsa::RsaPrivateKey::new(&mut rand_10::rng(), 2048).expect("key");
        let public = key.to_public_key();
        let bits = public.n().bit_width() as usize;
        let msg = b"TLS 1.3, client CertificateVerify";
        let raw = |block: &[u8]| {
            let c = rsa::BoxedUint::from_be_slice(block, key.n_bits_precision()).expect("block");
            let s = rsa::hazmat::rsa_decrypt_and_check(&key, Some(&mut rand_10::rng()), &c)
                .expect("raw rsa");
            let b = s.to_be_bytes();
            b[b.len() - bits / 8..].to_vec()
        };
        let pss = card_block(
            ClientKeyKind::Rsa { bits },
            SignatureScheme::RSA_PSS_SHA256,
            msg,
        )
        .expect("pss block");
        let sig = rsa::pss::Signature::try_from(&raw(&pss)[..]).expect("sig");
        rsa::pss::VerifyingKey::<Sha256>::new(public.clone())
            .verify(msg, &sig)
            .expect("PSS verifies");
        let v15 = card_block(
            ClientKeyKind::Rsa { bits },
            SignatureScheme::RSA_PKCS1_SHA384,
            msg,
        )
        .expect("pkcs1 block");
        let sig = rsa::pkcs1v15::Signature::try_from(&raw(&v15)[..]).expect("sig");
        rsa::pkcs1v15::VerifyingKey::<Sha384>::new(public)
            .verify(msg, &sig)
            .expect("PKCS#1 v1.5 verifies");
    }

    #[test]
    fn schemes_follow_the_key() {
        use SignatureScheme as S;
        let offered = [
            S::RSA_PKCS1_SHA256,
            S::ECDSA_NISTP256_SHA256,
            S::RSA_PSS_SHA256,
        ];
        assert_eq!(
            pick_scheme(ClientKeyKind::EcP256, &offered),
            Some(S::ECDSA_NISTP256_SHA256)
        );
        assert_eq!(pick_scheme(ClientKeyKind::EcP384, &offered), None);
        assert_eq!(
            pick_scheme(ClientKeyKind::Rsa { bits: 2048 }, &offered),
            Some(S::RSA_PSS_SHA256)
        );
    }
}
