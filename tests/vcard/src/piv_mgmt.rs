//! The management key (Yubico SET MANAGEMENT KEY, INS FF) and its challenge/response in
//! GENERAL AUTHENTICATE (SP 800-73-4 Part 2 Appendix A.1/A.2). Yubico: witness and
//! challenge are one cipher block, 8 bytes for 3DES and 16 for AES; AES keys from 5.4.

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, BlockSizeUser, KeyInit};
use rand::RngExt as _;
use zeroize::Zeroizing;

use crate::apdu::{sw, Apdu, Response};
use crate::firmware::alg;
use crate::piv::Piv;
use crate::state::DEFAULT_MGMT_KEY;
use crate::tlv;

const MGMT_SLOT: u8 = 0x9B;
const MGMT_TAG: u32 = MGMT_SLOT as u32;

/// The management key authentication in progress.
pub enum Pending {
    /// Mutual authentication: the card sent E(witness) and waits for the witness back.
    Witness(Zeroizing<Vec<u8>>),
    /// Single (external) authentication: the card sent a challenge and waits for E(it).
    Challenge(Zeroizing<Vec<u8>>),
}

fn ecb<C>(key: &[u8], data: &[u8], encrypt: bool) -> Option<Vec<u8>>
where
    C: BlockCipherEncrypt + BlockCipherDecrypt + KeyInit + BlockSizeUser,
{
    let cipher = C::new_from_slice(key).ok()?;
    let size = C::block_size();
    if data.is_empty() || !data.len().is_multiple_of(size) {
        return None;
    }
    let mut out = data.to_vec();
    for chunk in out.chunks_mut(size) {
        let block: &mut aes::cipher::Block<C> = chunk.try_into().ok()?;
        if encrypt {
            cipher.encrypt_block(block);
        } else {
            cipher.decrypt_block(block);
        }
    }
    Some(out)
}

/// Encrypts (or decrypts) one or more blocks with the management key in ECB mode.
pub fn mgmt_cipher(algorithm: u8, key: &[u8], data: &[u8], encrypt: bool) -> Option<Vec<u8>> {
    match algorithm {
        alg::TDES => ecb::<des::TdesEde3>(key, data, encrypt),
        alg::AES128 => ecb::<aes::Aes128>(key, data, encrypt),
        alg::AES192 => ecb::<aes::Aes192>(key, data, encrypt),
        alg::AES256 => ecb::<aes::Aes256>(key, data, encrypt),
        _ => None,
    }
}

/// Key length and block (witness/challenge) length of a management key algorithm.
pub fn mgmt_sizes(algorithm: u8) -> Option<(usize, usize)> {
    match algorithm {
        alg::TDES => Some((24, 8)),
        alg::AES128 => Some((16, 16)),
        alg::AES192 => Some((24, 16)),
        alg::AES256 => Some((32, 16)),
        _ => None,
    }
}

impl Piv {
    /// SET MANAGEMENT KEY (Yubico FF): P1 FF, P2 FF (no touch) or FE (touch);
    /// data: algorithm, 9B, length, key. Needs the management key.
    pub(crate) fn set_mgmt_key(&mut self, apdu: &Apdu) -> Response {
        if apdu.p1 != 0xFF || !matches!(apdu.p2, 0xFE | 0xFF) {
            return Response::status(sw::INCORRECT_P1P2);
        }
        if !self.vol.mgmt_authenticated {
            return Response::status(sw::SECURITY_STATUS);
        }
        let Some((&algorithm, rest)) = apdu.data.split_first() else {
            return Response::status(sw::WRONG_DATA);
        };
        let Some((MGMT_TAG, key, [])) = tlv::take(rest) else {
            return Response::status(sw::WRONG_DATA);
        };
        if !self.firmware.supports_mgmt(algorithm) {
            return Response::status(sw::WRONG_DATA);
        }
        match mgmt_sizes(algorithm) {
            Some((len, _)) if len == key.len() => {}
            _ => return Response::status(sw::WRONG_DATA),
        }
        self.state.mgmt.algorithm = algorithm;
        self.state.mgmt.key = hex::encode(key);
        self.state.mgmt.touch = if apdu.p2 == 0xFE { 2 } else { 1 };
        self.dirty = true;
        Response::success()
    }

    /// Whether the management key still has the factory value.
    pub(crate) fn mgmt_is_default(&self) -> bool {
        hex::decode(&self.state.mgmt.key).ok().as_deref() == Some(DEFAULT_MGMT_KEY.as_slice())
    }

    /// GENERAL AUTHENTICATE with the management key (P2 9B, P1 its algorithm).
    pub(crate) fn mgmt_authenticate(&mut self, apdu: &Apdu) -> Response {
        let algorithm = self.state.mgmt.algorithm;
        if apdu.p1 != algorithm {
            return Response::status(sw::INCORRECT_P1P2);
        }
        let Some((_, block)) = mgmt_sizes(algorithm) else {
            return Response::status(sw::NO_INFO);
        };
        let Some(inner) = tlv::find(&apdu.data, 0x7C) else {
            return Response::status(sw::WRONG_DATA);
        };
        let Some(items) = tlv::parse_all(inner) else {
            return Response::status(sw::WRONG_DATA);
        };
        let key = Zeroizing::new(hex::decode(&self.state.mgmt.key).unwrap_or_default());
        let get = |tag: u32| items.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v);
        let pending = self.vol.mgmt_pending.take();
        self.vol.mgmt_authenticated = false;
        let random = || {
            let mut bytes = Zeroizing::new(vec![0u8; block]);
            rand::rng().fill(bytes.as_mut_slice());
            bytes
        };
        match (get(0x80), get(0x81), get(0x82)) {
            // Step 1 of mutual authentication: "80 00" asks for a witness.
            (Some([]), None, None) => {
                let witness = random();
                let Some(encrypted) = mgmt_cipher(algorithm, &key, &witness, true) else {
                    return Response::status(sw::NO_INFO);
                };
                self.vol.mgmt_pending = Some(Pending::Witness(witness));
                Response::ok(tlv::tlv(0x7C, &tlv::tlv(0x80, &encrypted)))
            }
            // Step 2: the decrypted witness and the client's challenge.
            (Some(witness), Some(challenge), _) if !witness.is_empty() => {
                let Some(Pending::Witness(expected)) = pending else {
                    return Response::status(sw::CONDITIONS);
                };
                if witness.len() != block || challenge.len() != block {
                    return Response::status(sw::WRONG_DATA);
                }
                if witness != expected.as_slice() {
                    return Response::status(sw::SECURITY_STATUS);
                }
                if !self.touch(self.state.mgmt.touch) {
                    return Response::status(sw::CONDITIONS);
                }
                let Some(answer) = mgmt_cipher(algorithm, &key, challenge, true) else {
                    return Response::status(sw::NO_INFO);
                };
                self.vol.mgmt_authenticated = true;
                Response::ok(tlv::tlv(0x7C, &tlv::tlv(0x82, &answer)))
            }
            // Single authentication: "81 00" asks for a challenge …
            (None, Some([]), None) => {
                let challenge = random();
                let answer = tlv::tlv(0x7C, &tlv::tlv(0x81, &challenge));
                self.vol.mgmt_pending = Some(Pending::Challenge(challenge));
                Response::ok(answer)
            }
            // … and "82 E(challenge)" answers it.
            (None, None, Some(response)) if !response.is_empty() => {
                let Some(Pending::Challenge(challenge)) = pending else {
                    return Response::status(sw::CONDITIONS);
                };
                let expected = mgmt_cipher(algorithm, &key, &challenge, true);
                if expected.as_deref() != Some(response) {
                    return Response::status(sw::SECURITY_STATUS);
                }
                if !self.touch(self.state.mgmt.touch) {
                    return Response::status(sw::CONDITIONS);
                }
                self.vol.mgmt_authenticated = true;
                Response::success()
            }
            _ => Response::status(sw::WRONG_DATA),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::piv::tests::{apdu, card};

    use super::*;

    /// Runs mutual authentication as a client does; true if the card accepted the key.
    fn authenticate(piv: &mut Piv, algorithm: u8, key: &[u8]) -> bool {
        let block = mgmt_sizes(algorithm).unwrap().1;
        let r = piv.command(&apdu(0x87, algorithm, 0x9B, &[0x7C, 2, 0x80, 0]));
        if r.sw != 0x9000 {
            return false;
        }
        let witness = tlv::find(tlv::find(&r.data, 0x7C).unwrap(), 0x80).unwrap();
        assert_eq!(witness.len(), block);
        let plain = mgmt_cipher(algorithm, key, witness, false).unwrap();
        let challenge = vec![9u8; block];
        let mut inner = tlv::tlv(0x80, &plain);
        tlv::put(&mut inner, 0x81, &challenge);
        let r = piv.command(&apdu(0x87, algorithm, 0x9B, &tlv::tlv(0x7C, &inner)));
        if r.sw != 0x9000 {
            return false;
        }
        let answer = tlv::find(tlv::find(&r.data, 0x7C).unwrap(), 0x82).unwrap();
        assert_eq!(
            answer,
            mgmt_cipher(algorithm, key, &challenge, true).unwrap()
        );
        piv.vol.mgmt_authenticated
    }

    #[test]
    fn management_key_per_algorithm_and_firmware() {
        let mut piv = card([5, 7, 4]);
        assert!(!authenticate(&mut piv, alg::TDES, &DEFAULT_MGMT_KEY));
        assert!(authenticate(&mut piv, alg::AES192, &DEFAULT_MGMT_KEY));
        assert!(!authenticate(&mut piv, alg::AES192, &[7u8; 24]));
        for (algorithm, len) in [(alg::AES128, 16), (alg::AES256, 32), (alg::TDES, 24)] {
            let (algo, key) = (piv.state.mgmt.algorithm, current(&piv));
            assert!(authenticate(&mut piv, algo, &key));
            let mut data = vec![algorithm];
            data.extend(tlv::tlv(0x9B, &vec![3u8; len]));
            assert_eq!(piv.command(&apdu(0xFF, 0xFF, 0xFF, &data)).sw, 0x9000);
            assert!(authenticate(&mut piv, algorithm, &vec![3u8; len]));
        }
        let mut old = card([5, 2, 7]);
        assert_eq!(old.state.mgmt.algorithm, alg::TDES);
        assert!(authenticate(&mut old, alg::TDES, &DEFAULT_MGMT_KEY));
        let mut data = vec![alg::AES128];
        data.extend(tlv::tlv(0x9B, &[3u8; 16]));
        assert_eq!(old.command(&apdu(0xFF, 0xFF, 0xFF, &data)).sw, 0x6A80);
    }

    fn current(piv: &Piv) -> Vec<u8> {
        hex::decode(&piv.state.mgmt.key).unwrap()
    }
}
