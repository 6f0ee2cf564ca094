//! The PIV token as the key of Vault's TLS client certificate
//! ([`crate::vault::client_cert::ClientKey`]): the certificate of a slot (9a, PIV
//! Authentication, by default), and the handshake signature made by the card with GENERAL
//! AUTHENTICATE (SP 800-73-4 part 2, 3.2.4) on what the TLS layer prepared.
//!
//! The HTTP client signs on its own thread, so the token is shared behind a `Mutex` for the
//! whole run (one card session, the PIN asked once). The card is never waited for: while
//! the caller holds the token (a renewal), a signature request fails at once instead of
//! deadlocking (the Vault client asks only during its login, when the caller does not).

use crate::error::Error;
use crate::piv::{Algorithm, PivToken, Slot};
use crate::secret::Pin;
use crate::vault::client_cert::{ClientKey, ClientKeyKind};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::SystemTime;

/// A token shared between the run and the TLS layer.
pub type SharedToken<T> = Arc<Mutex<T>>;

pub struct CardClientKey<T: PivToken + Send> {
    token: SharedToken<T>,
    slot: Slot,
    alg: Algorithm,
    cert_der: Vec<u8>,
    pin: Pin,
}

impl<T: PivToken + Send> CardClientKey<T> {
    /// The certificate in `slot` with its on-card key. Refuses a slot without a
    /// certificate, a key type TLS cannot use here (Ed25519), and a certificate that is
    /// not valid now (Vault would refuse it: a person must re-enroll the token).
    pub fn new(token: SharedToken<T>, slot: Slot, pin: Pin) -> Result<Self, Error> {
        use der::Decode;
        let der = {
            let mut t = token.lock().unwrap_or_else(|e| e.into_inner());
            t.read_certificate(slot)?
        }
        .ok_or_else(|| Error::CertLogin {
            slot,
            reason: "the slot holds no certificate".into(),
        })?;
        let cert = x509_cert::Certificate::from_der(&der).map_err(|e| Error::CertLogin {
            slot,
            reason: format!("the slot's certificate cannot be read ({e})"),
        })?;
        let tbs = cert.tbs_certificate();
        let now = SystemTime::now();
        let (nb, na) = (
            tbs.validity().not_before.to_system_time(),
            tbs.validity().not_after.to_system_time(),
        );
        if now >= na {
            return Err(Error::CertLogin {
                slot,
                reason: format!("its certificate expired at {}", crate::report::rfc3339(na)),
            });
        }
        if now < nb {
            return Err(Error::CertLogin {
                slot,
                reason: "its certificate is not valid yet".into(),
            });
        }
        // Vault's cert auth verifies the chain for client authentication (Go's x509 with
        // ExtKeyUsageClientAuth): a certificate whose EKUs leave out clientAuth (9c code
        // signing, 9c/9d S/MIME) fails there, with a 500 that looks like an outage.
        let ekus = match tbs.get_extension::<x509_cert::ext::pkix::ExtendedKeyUsage>() {
            Ok(Some((_, e))) => e.0,
            _ => Vec::new(),
        };
        let client_auth = const_oid::db::rfc5280::ID_KP_CLIENT_AUTH;
        if !ekus.is_empty() && !ekus.contains(&client_auth) {
            return Err(Error::Usage(format!(
                "slot {slot}: its certificate is not for client authentication (no clientAuth \
                 extended key usage), so it cannot log in to Vault; log in with 9a (--login-slot)"
            )));
        }
        let alg = crate::crypto::algorithm_of(tbs.subject_public_key_info()).ok_or_else(|| {
            Error::CertLogin {
                slot,
                reason: "the certificate's key type is not supported".into(),
            }
        })?;
        if alg == Algorithm::Ed25519 {
            return Err(Error::CertLogin {
                slot,
                reason: "an Ed25519 key cannot sign a TLS handshake for Vault".into(),
            });
        }
        Ok(CardClientKey {
            token,
            slot,
            alg,
            cert_der: der,
            pin,
        })
    }
}

impl<T: PivToken + Send> ClientKey for CardClientKey<T> {
    fn certificate_der(&self) -> Vec<u8> {
        self.cert_der.clone()
    }

    fn kind(&self) -> ClientKeyKind {
        match self.alg {
            Algorithm::P256 => ClientKeyKind::EcP256,
            Algorithm::P384 => ClientKeyKind::EcP384,
            Algorithm::Rsa3072 => ClientKeyKind::Rsa { bits: 3072 },
            Algorithm::Rsa4096 => ClientKeyKind::Rsa { bits: 4096 },
            // Ed25519 is refused in `new`.
            Algorithm::Rsa2048 | Algorithm::Ed25519 => ClientKeyKind::Rsa { bits: 2048 },
        }
    }

    fn private_op(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        let mut t = match self.token.try_lock() {
            Ok(t) => t,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err("the token is busy".into()),
        };
        // 9c's key wants the PIN right before each signature (PIN policy "always",
        // SP 800-73-4 part 1, 3.2); for the other slots this is the PIN verified once.
        t.verify_pin(&self.pin).map_err(|e| e.to_string())?;
        t.sign_raw(self.slot, self.alg, input)
            .map_err(|e| e.to_string())
    }
}
