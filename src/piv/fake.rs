//! An in-process token for unit tests of the workflow's ordering and refusals (failures a
//! real card cannot produce on demand). It records every state-changing call so a test can
//! assert that nothing was touched. Integration tests use the real PC/SC path instead.

use super::*;
use crate::secret::{MgmKeyHex, Pin, Puk};
use der::Decode;

pub struct FakeToken {
    pub info: TokenInfo,
    pub pin: String,
    pub pin_tries: u8,
    pub mgm_key: String,
    pub certs: std::collections::BTreeMap<Slot, Vec<u8>>,
    /// Names of state-changing operations performed, in order.
    pub changes: Vec<String>,
    pub authenticated: bool,
    pub pin_verified: bool,
}

impl FakeToken {
    pub fn new() -> FakeToken {
        FakeToken {
            info: TokenInfo {
                serial: 4242,
                version: FirmwareVersion::new(5, 2, 7),
                reader: "fake reader".into(),
            },
            pin: "123456".into(),
            pin_tries: 3,
            mgm_key: DEFAULT_MGM_KEY_HEX.into(),
            certs: Default::default(),
            changes: Vec::new(),
            authenticated: false,
            pin_verified: false,
        }
    }
}

fn unsupported(what: &str) -> TokenError {
    TokenError::NotSupported {
        what: what.into(),
        version: "fake".into(),
    }
}

impl PivToken for FakeToken {
    fn info(&self) -> &TokenInfo {
        &self.info
    }
    fn pin_retries(&mut self) -> Result<Option<u8>, TokenError> {
        Ok(Some(self.pin_tries))
    }
    fn puk_retries(&mut self) -> Result<Option<u8>, TokenError> {
        Ok(None)
    }
    fn verify_pin(&mut self, pin: &Pin) -> Result<(), TokenError> {
        if self.pin_tries == 0 {
            return Err(TokenError::PinBlocked);
        }
        if pin.expose() == self.pin {
            self.pin_tries = 3;
            self.pin_verified = true;
            Ok(())
        } else {
            self.pin_tries -= 1;
            Err(TokenError::WrongPin {
                tries_left: self.pin_tries,
            })
        }
    }
    fn credential_defaults(&mut self) -> Result<CredentialDefaults, TokenError> {
        Ok(CredentialDefaults::default())
    }
    fn mgm_key_state(&mut self) -> Result<MgmKeyState, TokenError> {
        Ok(MgmKeyState {
            algorithm: Some(MgmAlgorithm::TripleDes),
            protected: false,
            default: None,
        })
    }
    fn protected_mgm_key(&mut self) -> Result<Option<MgmKeyHex>, TokenError> {
        Ok(None)
    }
    fn authenticate(&mut self, key: &MgmKeyHex, _alg: MgmAlgorithm) -> Result<(), TokenError> {
        if key.expose() == self.mgm_key {
            self.authenticated = true;
            Ok(())
        } else {
            Err(TokenError::MgmKeyRejected)
        }
    }
    fn slot_key(&mut self, _slot: Slot) -> Result<Option<SlotKey>, TokenError> {
        Err(unsupported("metadata"))
    }
    fn read_certificate(&mut self, slot: Slot) -> Result<Option<Vec<u8>>, TokenError> {
        Ok(self.certs.get(&slot).cloned())
    }
    fn generate_key(
        &mut self,
        slot: Slot,
        _alg: Algorithm,
        _pin: PinPolicy,
        _touch: TouchPolicy,
    ) -> Result<SubjectPublicKeyInfoOwned, TokenError> {
        self.changes.push(format!("generate {slot}"));
        // A fixed P-256 key; the fake never signs with it.
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).map_err(|_| unsupported("key"))?;
        let der = sk
            .verifying_key()
            .to_public_key_der()
            .map_err(|_| unsupported("key"))?;
        SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(|_| unsupported("key"))
    }
    fn sign_raw(&mut self, _: Slot, _: Algorithm, _: &[u8]) -> Result<Vec<u8>, TokenError> {
        Err(TokenError::CardRemoved)
    }
    fn write_certificate(&mut self, slot: Slot, der: &[u8]) -> Result<(), TokenError> {
        self.changes.push(format!("write cert {slot}"));
        self.certs.insert(slot, der.to_vec());
        Ok(())
    }
    fn ensure_chuid_ccc(&mut self) -> Result<bool, TokenError> {
        self.changes.push("chuid".into());
        Ok(true)
    }
    fn change_pin(&mut self, _: &Pin, new: &Pin) -> Result<(), TokenError> {
        self.changes.push("change pin".into());
        self.pin = new.expose().into();
        Ok(())
    }
    fn change_puk(&mut self, _: &Puk, _: &Puk) -> Result<(), TokenError> {
        self.changes.push("change puk".into());
        Ok(())
    }
    fn unblock_pin(&mut self, _: &Puk, new: &Pin) -> Result<(), TokenError> {
        self.changes.push("unblock".into());
        self.pin = new.expose().into();
        self.pin_tries = 3;
        Ok(())
    }
    fn set_mgm_key(&mut self, k: &MgmKeyHex, _: MgmAlgorithm, _: bool) -> Result<(), TokenError> {
        self.changes.push("set mgm".into());
        self.mgm_key = k.expose().into();
        Ok(())
    }
}
