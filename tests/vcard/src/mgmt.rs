//! The YubiKey management applet (AID A000000527471117), as far as clients read it:
//! SELECT answers the firmware version as text, READ CONFIG (INS 1D) answers the device
//! information TLVs ykman's `info`, `list` and `--device SERIAL` are built on.
//!
//! Sources: Yubico's "Get device information" (YubiKey SDK users' manual, OTP and
//! management applications: tags 01–19), and what yubikit 5.9 (`yubikit/management.py`
//! `DeviceInfo.parse_tlvs`, `yubikit/support.py` `read_info`/`get_name`) does with them.
//!
//! What the card claims: a USB YubiKey without NFC whose only application, supported and
//! enabled over USB, is PIV (capability bit 0x10) — the one application the card
//! implements. ykman then names it "YubiKey 5A" (USB-A keychain, no NFC) or "YubiKey 4",
//! hides every other application, and never tries OTP, FIDO or OATH on it.
//! Writing the configuration is refused: the card cannot enable what it does not have.

use crate::apdu::{sw, Apdu, Response};
use crate::firmware::DeviceIdentity;

/// Application identifier of the management applet (Yubico RID A000000527, PIX 471117).
pub const AID: &[u8] = &[0xA0, 0x00, 0x00, 0x05, 0x27, 0x47, 0x11, 0x17];

/// Capability bit of PIV in tags 01/03 (yubikit `CAPABILITY.PIV`).
const CAP_PIV: u16 = 0x0010;

// Device information tags (Yubico SDK "Get device information").
const TAG_USB_SUPPORTED: u8 = 0x01;
const TAG_SERIAL: u8 = 0x02;
const TAG_USB_ENABLED: u8 = 0x03;
const TAG_FORM_FACTOR: u8 = 0x04;
const TAG_VERSION: u8 = 0x05;
const TAG_AUTO_EJECT_TIMEOUT: u8 = 0x06;
const TAG_CHALRESP_TIMEOUT: u8 = 0x07;
const TAG_DEVICE_FLAGS: u8 = 0x08;
const TAG_CONFIG_LOCK: u8 = 0x0A;
const TAG_MORE_DATA: u8 = 0x10;
const TAG_FIPS_CAPABLE: u8 = 0x14;
const TAG_FIPS_APPROVED: u8 = 0x15;
const TAG_PIN_COMPLEXITY: u8 = 0x16;
const TAG_RESET_BLOCKED: u8 = 0x18;
const TAG_VERSION_QUALIFIER: u8 = 0x19;

// Instructions (yubikit `INS_*` of the management smart-card backend).
const INS_SET_MODE: u8 = 0x16;
const INS_WRITE_CONFIG: u8 = 0x1C;
const INS_READ_CONFIG: u8 = 0x1D;
const INS_DEVICE_RESET: u8 = 0x1F;

/// Form factor byte flag: a FIPS series key (yubikit `DeviceInfo.parse_tlvs`, bit 0x80).
const FORM_FACTOR_FIPS: u8 = 0x80;
/// Bit of PIV in the FIPS capable/approved tags 14/15 (yubikit `CAPABILITY._from_fips`).
const FIPS_BIT_PIV: u8 = 0x02;
/// Factory default challenge-response timeout of the OTP application, in seconds.
const DEFAULT_CHALRESP_TIMEOUT: u8 = 15;

/// The management applet of one card.
pub struct Management {
    device: DeviceIdentity,
}

impl Management {
    pub fn new(device: &DeviceIdentity) -> Self {
        Management {
            device: device.clone(),
        }
    }

    /// Answer to SELECT: the firmware version as ASCII text ("5.7.4"). Clients take the
    /// first "a.b.c" in it (yubikit `Version.from_string`) as the firmware version, and
    /// send their later management commands only when it is 4.1 or newer.
    pub fn select(&mut self) -> Response {
        let [a, b, c] = self.device.version;
        Response::ok(format!("{a}.{b}.{c}").into_bytes())
    }

    pub fn command(&mut self, apdu: &Apdu) -> Response {
        if apdu.cla != 0x00 {
            return Response::status(sw::CLA_NOT_SUPPORTED);
        }
        let yk5 = self.device.version[0] >= 5;
        match apdu.ins {
            INS_READ_CONFIG => Response::ok(self.device_info_page(apdu.p1)),
            // YubiKey 5 takes a new configuration here; YubiKey 4 has no such command.
            // The card has nothing but PIV to enable or disable, so it refuses the change
            // as a key whose configuration cannot be changed would (conditions of use not
            // satisfied) rather than pretend to apply it.
            INS_WRITE_CONFIG if yk5 => Response::status(sw::CONDITIONS),
            // The legacy USB mode switch (YubiKey 4; still answered by YubiKey 5): same.
            INS_SET_MODE => Response::status(sw::CONDITIONS),
            // DEVICE RESET exists only on the YubiKey Bio; the card is not one.
            INS_DEVICE_RESET => Response::status(sw::INS_NOT_SUPPORTED),
            _ => Response::status(sw::INS_NOT_SUPPORTED),
        }
    }

    /// Whether the firmware splits its device information over several READ CONFIG
    /// pages (P1 = page number, tag 10 "more data" on every page but the last). YubiKey
    /// 5.7 added enough tags (FIPS capable/approved, PIN complexity, reset blocked,
    /// version qualifier) to page; older firmware answers one page whatever P1 says.
    fn pages(&self) -> bool {
        self.device.version >= [5, 7, 0]
    }

    /// The device information TLVs of page `page`, preceded by their total length (one
    /// byte, as yubikit's `DeviceInfo.parse` checks).
    fn device_info_page(&self, page: u8) -> Vec<u8> {
        let d = &self.device;
        let yk5 = d.version[0] >= 5;
        let mut tlvs = Vec::new();
        let first = page == 0 || !self.pages();
        if first {
            let mut form_factor = d.form_factor & 0x0F;
            if d.fips {
                form_factor |= FORM_FACTOR_FIPS;
            }
            if yk5 {
                // Capabilities are two bytes from YubiKey 5 (FIDO2 is bit 0x200).
                put(&mut tlvs, TAG_USB_SUPPORTED, &CAP_PIV.to_be_bytes());
            } else {
                put(&mut tlvs, TAG_USB_SUPPORTED, &[CAP_PIV as u8]);
            }
            put(&mut tlvs, TAG_SERIAL, &d.serial.to_be_bytes());
            if yk5 {
                // "Enabled" exists from YubiKey 5 (yubikit ignores it on YubiKey 4, which
                // derives it from the USB interfaces instead: CCID here).
                put(&mut tlvs, TAG_USB_ENABLED, &CAP_PIV.to_be_bytes());
            }
            put(&mut tlvs, TAG_FORM_FACTOR, &[form_factor]);
            if yk5 {
                put(&mut tlvs, TAG_VERSION, &d.version);
                put(&mut tlvs, TAG_AUTO_EJECT_TIMEOUT, &[0, 0]);
                put(&mut tlvs, TAG_CHALRESP_TIMEOUT, &[DEFAULT_CHALRESP_TIMEOUT]);
                put(&mut tlvs, TAG_DEVICE_FLAGS, &[0]);
                put(&mut tlvs, TAG_CONFIG_LOCK, &[0]);
            }
            if self.pages() {
                put(&mut tlvs, TAG_MORE_DATA, &[1]);
            }
        } else if page == 1 {
            let fips = if d.fips { FIPS_BIT_PIV } else { 0 };
            put(&mut tlvs, TAG_FIPS_CAPABLE, &[0, fips]);
            put(&mut tlvs, TAG_FIPS_APPROVED, &[0, fips]);
            put(&mut tlvs, TAG_PIN_COMPLEXITY, &[0]);
            // Reset blocked: only a Bio key (shared PIN) blocks the PIV reset.
            put(&mut tlvs, TAG_RESET_BLOCKED, &[0, 0]);
            // A final release (type 2, iteration 0) of this very version: clients use
            // the qualifier only to override the version of alpha and beta firmware.
            let mut vq = Vec::new();
            put(&mut vq, 0x01, &d.version);
            put(&mut vq, 0x02, &[2]);
            put(&mut vq, 0x03, &[0, 0, 0, 0]);
            put(&mut tlvs, TAG_VERSION_QUALIFIER, &vq);
        }
        // Pages past the last are empty (length 0).
        let mut out = Vec::with_capacity(tlvs.len() + 1);
        out.push(u8::try_from(tlvs.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&tlvs);
        out
    }
}

/// Appends one TLV with a one-byte tag and a short length (every value here is < 128).
fn put(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn device(version: [u8; 3]) -> DeviceIdentity {
        DeviceIdentity {
            serial: 12_345_678,
            version,
            form_factor: 0x01,
            fips: false,
        }
    }

    fn read(m: &mut Management, page: u8) -> Response {
        m.command(&Apdu {
            cla: 0,
            ins: INS_READ_CONFIG,
            p1: page,
            p2: 0,
            data: vec![],
            le: Some(256),
        })
    }

    /// Decodes a page as yubikit does: length byte, then one-byte-tag TLVs.
    fn parse(page: &[u8]) -> BTreeMap<u8, Vec<u8>> {
        assert_eq!(usize::from(page[0]), page.len() - 1, "length byte");
        let mut rest = &page[1..];
        let mut map = BTreeMap::new();
        while !rest.is_empty() {
            let (tag, len) = (rest[0], usize::from(rest[1]));
            assert!(len < 0x80);
            map.insert(tag, rest[2..2 + len].to_vec());
            rest = &rest[2 + len..];
        }
        map
    }

    /// All pages merged, following tag 10 as yubikit's `_do_read_device_info` does.
    fn all_pages(m: &mut Management) -> BTreeMap<u8, Vec<u8>> {
        let mut merged = BTreeMap::new();
        for page in 0..=255u8 {
            let r = read(m, page);
            assert_eq!(r.sw, 0x9000);
            let mut tlvs = parse(&r.data);
            let more = tlvs.remove(&TAG_MORE_DATA) == Some(vec![1]);
            merged.extend(tlvs);
            if !more {
                return merged;
            }
        }
        panic!("endless pages");
    }

    #[test]
    fn select_answers_the_version_as_text() {
        let mut m = Management::new(&device([5, 7, 4]));
        let r = m.select();
        assert_eq!((r.data.as_slice(), r.sw), (&b"5.7.4"[..], 0x9000));
    }

    #[test]
    fn yubikey_5_7_reports_a_usb_piv_only_key_over_two_pages() {
        let mut m = Management::new(&device([5, 7, 4]));
        let page0 = parse(&read(&mut m, 0).data);
        assert_eq!(page0[&TAG_MORE_DATA], vec![1]);
        let info = all_pages(&mut m);
        assert_eq!(info[&TAG_USB_SUPPORTED], vec![0x00, 0x10]);
        assert_eq!(info[&TAG_USB_ENABLED], vec![0x00, 0x10]);
        assert_eq!(info[&TAG_SERIAL], 12_345_678u32.to_be_bytes().to_vec());
        assert_eq!(info[&TAG_VERSION], vec![5, 7, 4]);
        assert_eq!(info[&TAG_FORM_FACTOR], vec![0x01]);
        assert_eq!(info[&TAG_CONFIG_LOCK], vec![0]);
        assert_eq!(info[&TAG_FIPS_CAPABLE], vec![0, 0]);
        assert_eq!(info[&TAG_FIPS_APPROVED], vec![0, 0]);
        assert_eq!(info[&TAG_RESET_BLOCKED], vec![0, 0]);
        // No NFC tags: a USB-only key.
        assert!(!info.contains_key(&0x0D) && !info.contains_key(&0x0E));
        // Version qualifier: 01 version, 02 type final (2), 03 iteration.
        let vq = &info[&TAG_VERSION_QUALIFIER];
        assert_eq!(&vq[..5], &[0x01, 3, 5, 7, 4]);
        assert_eq!(&vq[5..8], &[0x02, 1, 2]);
        // Past the last page: empty.
        assert_eq!(read(&mut m, 2).data, vec![0]);
    }

    #[test]
    fn older_firmware_answers_one_page_whatever_p1_says() {
        for v in [[5, 2, 7], [5, 4, 3]] {
            let mut m = Management::new(&device(v));
            let p0 = read(&mut m, 0).data;
            assert_eq!(read(&mut m, 1).data, p0);
            let info = parse(&p0);
            assert!(!info.contains_key(&TAG_MORE_DATA));
            assert!(!info.contains_key(&TAG_FIPS_CAPABLE));
            assert_eq!(info[&TAG_VERSION], v.to_vec());
            assert_eq!(info[&TAG_USB_ENABLED], vec![0x00, 0x10]);
        }
    }

    #[test]
    fn yubikey_4_has_no_enabled_or_version_tag_and_no_write_config() {
        let mut m = Management::new(&device([4, 3, 7]));
        assert_eq!(m.select().data, b"4.3.7".to_vec());
        let info = parse(&read(&mut m, 0).data);
        assert_eq!(info[&TAG_USB_SUPPORTED], vec![0x10]);
        assert!(!info.contains_key(&TAG_USB_ENABLED));
        assert!(!info.contains_key(&TAG_VERSION));
        let write = Apdu {
            cla: 0,
            ins: INS_WRITE_CONFIG,
            p1: 0,
            p2: 0,
            data: vec![3, 3, 2, 0, 0x10],
            le: None,
        };
        assert_eq!(m.command(&write).sw, sw::INS_NOT_SUPPORTED);
    }

    #[test]
    fn writes_are_refused_and_fips_is_reported_when_set() {
        let mut d = device([5, 7, 4]);
        d.fips = true;
        let mut m = Management::new(&d);
        let write = Apdu {
            cla: 0,
            ins: INS_WRITE_CONFIG,
            p1: 0,
            p2: 0,
            data: vec![4, 3, 2, 0, 0x10],
            le: None,
        };
        assert_eq!(m.command(&write).sw, sw::CONDITIONS);
        let reset = Apdu {
            ins: INS_DEVICE_RESET,
            data: vec![],
            ..write
        };
        assert_eq!(m.command(&reset).sw, sw::INS_NOT_SUPPORTED);
        let info = all_pages(&mut m);
        assert_eq!(info[&TAG_FORM_FACTOR], vec![0x81]);
        assert_eq!(info[&TAG_FIPS_CAPABLE], vec![0, FIPS_BIT_PIV]);
    }
}
