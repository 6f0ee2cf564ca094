//! Keys in slots: GENERATE ASYMMETRIC KEY PAIR (47, SP 800-73-4 Part 2 §3.3.2), Yubico
//! IMPORT KEY (FE), GENERAL AUTHENTICATE with a slot key (87, §3.2.4), GET METADATA
//! (F7, 5.3+), MOVE / DELETE KEY (F6, 5.7+) and ATTEST (F9, 4.3+).
//!
//! PIN policy (Yubico tag AA): 1 never, 2 once per session, 3 always (a verification
//! serves one operation); default 9C always, 9E never, others once. Touch policy (AB):
//! 1 never, 2 always, 3 cached (15 s); default never.

use crate::apdu::{sw, Apdu, Response};
use crate::keys::{is_rsa, KeyMaterial};
use crate::piv::{cert_object, object_key, Piv};
use crate::state::SlotKey;
use crate::timing::Op;
use crate::tlv;

const PIN_NEVER: u8 = 1;
const PIN_ONCE: u8 = 2;
const PIN_ALWAYS: u8 = 3;
const TOUCH_NEVER: u8 = 1;
const TOUCH_CACHED: u8 = 3;
const ORIGIN_GENERATED: u8 = 1;
const ORIGIN_IMPORTED: u8 = 2;

/// Slots that hold asymmetric keys (SP 800-73-4 Part 1 §3.1; Yubico f9).
pub fn key_slot(slot: u8) -> bool {
    matches!(slot, 0x9A | 0x9C | 0x9D | 0x9E | 0x82..=0x95 | 0xF9)
}

fn slot_name(slot: u8) -> String {
    format!("{slot:02x}")
}

fn default_pin_policy(slot: u8) -> u8 {
    match slot {
        0x9C => PIN_ALWAYS,
        0x9E => PIN_NEVER,
        _ => PIN_ONCE,
    }
}

impl Piv {
    /// Reads AA / AB from generate or import data; `None` for a value this firmware
    /// does not know (PIN policies 4/5 are YubiKey Bio only).
    fn policies(&self, slot: u8, data: &[u8]) -> Option<(u8, u8)> {
        let items = tlv::parse_all(data)?;
        let get = |tag| items.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v);
        let pin = match get(0xAA) {
            None | Some([0]) => default_pin_policy(slot),
            Some([p @ 1..=3]) => *p,
            _ => return None,
        };
        let touch = match get(0xAB) {
            None | Some([0]) => TOUCH_NEVER,
            Some([t @ 1..=2]) => *t,
            Some([TOUCH_CACHED]) if self.firmware.features().touch_cached => TOUCH_CACHED,
            _ => return None,
        };
        Some((pin, touch))
    }

    fn store_key(
        &mut self,
        slot: u8,
        key: &KeyMaterial,
        pin_policy: u8,
        touch_policy: u8,
        generated: bool,
    ) {
        self.state.slots.insert(
            slot_name(slot),
            SlotKey {
                key: key.store(),
                pin_policy,
                touch_policy,
                generated,
            },
        );
        self.dirty = true;
    }

    fn slot_key(&self, slot: u8) -> Option<(&SlotKey, KeyMaterial)> {
        let entry = self.state.slots.get(&slot_name(slot))?;
        Some((entry, KeyMaterial::load(&entry.key)?))
    }

    /// GENERATE ASYMMETRIC KEY PAIR: data AC { 80 algorithm, AA pin, AB touch }; answers
    /// 7F49 with the public key. Needs the management key.
    pub(crate) fn generate(&mut self, apdu: &Apdu) -> Response {
        let slot = apdu.p2;
        if apdu.p1 != 0 || !key_slot(slot) {
            return Response::status(sw::INCORRECT_P1P2);
        }
        if !self.vol.mgmt_authenticated {
            return Response::status(sw::SECURITY_STATUS);
        }
        let Some(template) = tlv::find(&apdu.data, 0xAC) else {
            return Response::status(sw::WRONG_DATA);
        };
        let Some(&[algorithm]) = tlv::find(template, 0x80) else {
            return Response::status(sw::WRONG_DATA);
        };
        if !self.firmware.supports_key(algorithm) {
            return Response::status(sw::WRONG_DATA);
        }
        let Some((pin, touch)) = self.policies(slot, template) else {
            return Response::status(sw::WRONG_DATA);
        };
        self.spend(Op::Generate(algorithm));
        let Some(key) = KeyMaterial::generate(algorithm) else {
            return Response::status(sw::NO_INFO);
        };
        self.store_key(slot, &key, pin, touch, true);
        Response::ok(tlv::tlv(0x7F49, &key.public_tlvs()))
    }

    /// IMPORT KEY (Yubico FE): P1 algorithm, P2 slot, key TLVs then AA / AB.
    pub(crate) fn import(&mut self, apdu: &Apdu) -> Response {
        let (algorithm, slot) = (apdu.p1, apdu.p2);
        if !key_slot(slot) {
            return Response::status(sw::INCORRECT_P1P2);
        }
        if !self.vol.mgmt_authenticated {
            return Response::status(sw::SECURITY_STATUS);
        }
        if !self.firmware.supports_key(algorithm) {
            return Response::status(sw::INCORRECT_P1P2);
        }
        let Some((pin, touch)) = self.policies(slot, &apdu.data) else {
            return Response::status(sw::WRONG_DATA);
        };
        self.spend(Op::Import);
        match KeyMaterial::import(algorithm, &apdu.data) {
            Ok(key) => {
                self.store_key(slot, &key, pin, touch, false);
                Response::success()
            }
            Err(status) => Response::status(status),
        }
    }

    /// GENERAL AUTHENTICATE: 7C { 82 00, 81 challenge | 85 peer point }. P1 must name
    /// the key's algorithm, P2 the slot (9B: the management key).
    pub(crate) fn general_authenticate(&mut self, apdu: &Apdu) -> Response {
        if apdu.p2 == 0x9B {
            return self.mgmt_authenticate(apdu);
        }
        let slot = apdu.p2;
        if !key_slot(slot) {
            return Response::status(sw::INCORRECT_P1P2);
        }
        let Some(inner) = tlv::find(&apdu.data, 0x7C) else {
            return Response::status(sw::WRONG_DATA);
        };
        let Some(items) = tlv::parse_all(inner) else {
            return Response::status(sw::WRONG_DATA);
        };
        let get = |tag: u32| items.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v);
        let (Some([]), input) = (get(0x82), (get(0x81), get(0x85))) else {
            return Response::status(sw::WRONG_DATA);
        };
        let Some((entry, key)) = self.slot_key(slot) else {
            return Response::status(sw::WRONG_DATA);
        };
        if key.algorithm() != apdu.p1 {
            return Response::status(sw::WRONG_DATA);
        }
        let (pin_policy, touch_policy) = (entry.pin_policy, entry.touch_policy);
        let allowed = match pin_policy {
            PIN_NEVER => true,
            PIN_ALWAYS => self.vol.pin_verified && self.vol.pin_fresh,
            _ => self.vol.pin_verified,
        };
        if !allowed {
            return Response::status(sw::SECURITY_STATUS);
        }
        if !self.touch(touch_policy) {
            return Response::status(sw::CONDITIONS);
        }
        if pin_policy == PIN_ALWAYS {
            self.vol.pin_fresh = false;
        }
        let result = match input {
            (Some(challenge), None) => {
                self.spend(if is_rsa(apdu.p1) {
                    Op::RsaPrivate(apdu.p1)
                } else {
                    Op::Sign(apdu.p1)
                });
                key.sign(challenge).map(zeroize::Zeroizing::new)
            }
            (None, Some(peer)) => {
                self.spend(Op::Sign(apdu.p1));
                key.agree(peer)
            }
            _ => Err(sw::WRONG_DATA),
        };
        match result {
            Ok(output) => Response::ok(tlv::tlv(0x7C, &tlv::tlv(0x82, &output))),
            Err(status) => Response::status(status),
        }
    }

    /// GET METADATA (Yubico F7, 5.3+): TLVs 01 algorithm, 02 policy (PIN, touch),
    /// 03 origin, 04 public key (as in 7F49), 05 default value, 06 tries (total, left).
    /// Layout: docs.yubico.com "PIV APDUs: Get metadata".
    pub(crate) fn metadata(&mut self, apdu: &Apdu) -> Response {
        if apdu.p1 != 0 {
            return Response::status(sw::INCORRECT_P1P2);
        }
        let mut out = Vec::new();
        match apdu.p2 {
            0x80 | 0x81 => {
                let (default, total, left) = if apdu.p2 == 0x80 {
                    (
                        self.pin_is_default(),
                        self.state.pin_tries_total,
                        self.state.pin_tries_left,
                    )
                } else {
                    (
                        self.puk_is_default(),
                        self.state.puk_tries_total,
                        self.state.puk_tries_left,
                    )
                };
                tlv::put(&mut out, 0x01, &[0xFF]);
                tlv::put(&mut out, 0x05, &[u8::from(default)]);
                tlv::put(&mut out, 0x06, &[total, left]);
            }
            0x9B => {
                tlv::put(&mut out, 0x01, &[self.state.mgmt.algorithm]);
                tlv::put(&mut out, 0x02, &[0x00, self.state.mgmt.touch]);
                tlv::put(&mut out, 0x05, &[u8::from(self.mgmt_is_default())]);
            }
            // YubiKey Bio's fingerprint reference: not on this (non-Bio) key.
            0x96 => return Response::status(sw::REFERENCE_NOT_FOUND),
            slot if key_slot(slot) => {
                let Some((entry, key)) = self.slot_key(slot) else {
                    return Response::status(sw::REFERENCE_NOT_FOUND);
                };
                tlv::put(&mut out, 0x01, &[key.algorithm()]);
                tlv::put(&mut out, 0x02, &[entry.pin_policy, entry.touch_policy]);
                let origin = if entry.generated {
                    ORIGIN_GENERATED
                } else {
                    ORIGIN_IMPORTED
                };
                tlv::put(&mut out, 0x03, &[origin]);
                tlv::put(&mut out, 0x04, &key.public_tlvs());
            }
            _ => return Response::status(sw::REFERENCE_NOT_FOUND),
        }
        Response::ok(out)
    }

    /// MOVE KEY (Yubico F6, 5.7+): P1 destination (FF: delete), P2 source. Needs the
    /// management key. Certificates stay where they are, as on a YubiKey.
    pub(crate) fn move_key(&mut self, apdu: &Apdu) -> Response {
        let (to, from) = (apdu.p1, apdu.p2);
        let to_ok = to == 0xFF || (key_slot(to) && to != 0xF9);
        if !to_ok || !key_slot(from) || from == 0xF9 || to == from {
            return Response::status(sw::INCORRECT_P1P2);
        }
        if !self.vol.mgmt_authenticated {
            return Response::status(sw::SECURITY_STATUS);
        }
        let Some(entry) = self.state.slots.remove(&slot_name(from)) else {
            return Response::status(sw::REFERENCE_NOT_FOUND);
        };
        if to != 0xFF {
            self.state.slots.insert(slot_name(to), entry);
        }
        self.dirty = true;
        Response::success()
    }

    /// ATTEST (Yubico F9, 4.3+): P1 the slot; an X.509 certificate of the key, signed by
    /// the key in f9 under the certificate in 5FFF01 (attest.rs builds it). Only for keys
    /// generated on the card.
    pub(crate) fn attest(&mut self, apdu: &Apdu) -> Response {
        let slot = apdu.p1;
        if apdu.p2 != 0 || !key_slot(slot) || slot == 0xF9 {
            return Response::status(sw::INCORRECT_P1P2);
        }
        let Some((entry, key)) = self.slot_key(slot) else {
            return Response::status(sw::REFERENCE_NOT_FOUND);
        };
        if !entry.generated {
            return Response::status(sw::WRONG_DATA);
        }
        let (pin_policy, touch_policy) = (entry.pin_policy, entry.touch_policy);
        let Some((_, f9)) = self.slot_key(0xF9) else {
            return Response::status(sw::REFERENCE_NOT_FOUND);
        };
        let f9_cert = cert_object(0xF9)
            .and_then(|tag| self.state.objects.get(&object_key(tag)))
            .and_then(|v| hex::decode(v).ok())
            .and_then(|v| certificate_in_object(&v));
        let (Some(f9_key), Some(f9_cert)) = (f9.to_pkcs8(), f9_cert) else {
            return Response::status(sw::REFERENCE_NOT_FOUND);
        };
        self.spend(Op::Attest);
        let spki = match self.forge {
            Some(crate::attest::Forge::OtherKey) => crate::attest::fresh_p256_spki(),
            _ => key.spki_der(),
        };
        match crate::attest::attest_slot(
            &f9_key,
            &f9_cert,
            slot,
            &spki,
            pin_policy,
            touch_policy,
            &self.attest_device,
        ) {
            Ok(cert) if self.forge == Some(crate::attest::Forge::TamperedPolicy) => {
                Response::ok(crate::attest::tamper_pin_policy(cert))
            }
            Ok(cert) => Response::ok(cert),
            Err(why) => {
                log::warn!("attestation of slot {slot:02x} failed: {why}");
                Response::status(sw::NO_INFO)
            }
        }
    }

    /// Puts the attestation key and certificate into f9 / 5FFF01 (first start, or a new
    /// `--attestation-ca`).
    pub fn install_attestation(&mut self, key_pkcs8: &[u8], cert_der: &[u8]) -> Result<(), String> {
        let key = KeyMaterial::from_pkcs8(key_pkcs8)
            .ok_or("attestation key is not P-256, P-384 or RSA")?;
        // Yubico ships f9 as an imported key with PIN and touch policy "never"... the
        // metadata of a factory f9 says origin imported.
        self.store_key(0xF9, &key, PIN_NEVER, TOUCH_NEVER, false);
        let mut value = tlv::tlv(0x70, cert_der);
        tlv::put(&mut value, 0x71, &[0]);
        tlv::put(&mut value, 0xFE, &[]);
        self.state
            .objects
            .insert(object_key(crate::piv::ATTESTATION_CERT), hex::encode(value));
        self.dirty = true;
        Ok(())
    }
}

/// The certificate (tag 70) inside a certificate object (SP 800-73-4 Part 1 Table 10).
fn certificate_in_object(value: &[u8]) -> Option<Vec<u8>> {
    tlv::find(value, 0x70).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use crate::firmware::alg;
    use crate::piv::tests::{apdu, card};

    use super::*;

    fn generate(piv: &mut crate::piv::Piv, slot: u8, algorithm: u8, extra: &[u8]) -> Response {
        let mut template = tlv::tlv(0x80, &[algorithm]);
        template.extend_from_slice(extra);
        piv.command(&apdu(0x47, 0, slot, &tlv::tlv(0xAC, &template)))
    }

    fn sign(piv: &mut crate::piv::Piv, slot: u8, algorithm: u8) -> u16 {
        let mut inner = tlv::tlv(0x82, &[]);
        tlv::put(&mut inner, 0x81, &[5u8; 32]);
        piv.command(&apdu(0x87, algorithm, slot, &tlv::tlv(0x7C, &inner)))
            .sw
    }

    #[test]
    fn pin_policies_are_enforced() {
        let mut piv = card([5, 7, 4]);
        assert_eq!(generate(&mut piv, 0x9A, alg::P256, &[]).sw, 0x6982);
        piv.vol.mgmt_authenticated = true;
        assert_eq!(generate(&mut piv, 0x9A, alg::P256, &[]).sw, 0x9000);
        assert_eq!(generate(&mut piv, 0x9C, alg::P256, &[]).sw, 0x9000);
        assert_eq!(generate(&mut piv, 0x9E, alg::P256, &[]).sw, 0x9000);
        assert_eq!(sign(&mut piv, 0x9E, alg::P256), 0x9000);
        assert_eq!(sign(&mut piv, 0x9A, alg::P256), 0x6982);
        assert_eq!(sign(&mut piv, 0x9A, alg::P384), 0x6A80);
        let verify = apdu(0x20, 0, 0x80, b"123456\xFF\xFF");
        assert_eq!(piv.command(&verify).sw, 0x9000);
        assert_eq!(sign(&mut piv, 0x9A, alg::P256), 0x9000);
        assert_eq!(sign(&mut piv, 0x9A, alg::P256), 0x9000);
        assert_eq!(sign(&mut piv, 0x9C, alg::P256), 0x9000);
        assert_eq!(sign(&mut piv, 0x9C, alg::P256), 0x6982);
        assert_eq!(piv.command(&verify).sw, 0x9000);
        assert_eq!(sign(&mut piv, 0x9C, alg::P256), 0x9000);
    }

    #[test]
    fn metadata_encodings() {
        let mut piv = card([5, 7, 4]);
        let md = |piv: &mut crate::piv::Piv, p2| piv.command(&apdu(0xF7, 0, p2, &[]));
        assert_eq!(
            md(&mut piv, 0x80).data,
            vec![1, 1, 0xFF, 5, 1, 1, 6, 2, 3, 3]
        );
        assert_eq!(
            md(&mut piv, 0x9B).data,
            vec![1, 1, 0x0A, 2, 2, 0, 1, 5, 1, 1]
        );
        assert_eq!(md(&mut piv, 0x9A).sw, 0x6A88);
        assert_eq!(md(&mut piv, 0x96).sw, 0x6A88);
        piv.vol.mgmt_authenticated = true;
        assert!(generate(&mut piv, 0x9D, alg::ED25519, &[0xAA, 1, 3, 0xAB, 1, 2]).is_ok());
        let data = md(&mut piv, 0x9D).data;
        assert_eq!(&data[..10], &[1, 1, 0xE0, 2, 2, 3, 2, 3, 1, 1]);
        assert_eq!(&data[10..14], &[4, 34, 0x86, 32]);
        // Move, then delete (5.7+).
        assert_eq!(piv.command(&apdu(0xF6, 0x9A, 0x9D, &[])).sw, 0x9000);
        assert_eq!(md(&mut piv, 0x9D).sw, 0x6A88);
        assert_eq!(piv.command(&apdu(0xF6, 0xFF, 0x9A, &[])).sw, 0x9000);
        assert_eq!(md(&mut piv, 0x9A).sw, 0x6A88);
        let mut old = card([5, 4, 3]);
        old.vol.mgmt_authenticated = true;
        assert_eq!(generate(&mut old, 0x9A, alg::ED25519, &[]).sw, 0x6A80);
        assert_eq!(old.command(&apdu(0xF6, 0xFF, 0x9A, &[])).sw, 0x6D00);
    }
}
