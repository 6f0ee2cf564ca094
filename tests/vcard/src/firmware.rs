//! Firmware profiles: what each YubiKey version the card can pretend to be supports.
//!
//! One table ([`Firmware::features`]) decides; the applets never compare versions
//! themselves. Sources: Yubico's PIV pages ("PIV commands", "YubiKey 5.7 firmware
//! specifics", "PIV attestation"), and the version gates clients apply
//! (yubikit/piv.py `require_version` and `_do_check_key_support`, yubico-piv-tool
//! `ykpiv_util`, the `yubikey` crate's `Version` checks) — a card that refuses what a
//! client would never send on that firmware is indistinguishable from the real one.

use std::fmt;

/// Who the card says it is: shared by the PIV applet, the management applet (`mgmt.rs`)
/// and the attestation certificates (`attest.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub serial: u32,
    pub version: [u8; 3],
    /// Yubico form factor code (management applet tag 04): USB-A keychain = 0x01.
    pub form_factor: u8,
    pub fips: bool,
}

/// Form factor code of a USB-A keychain YubiKey (YubiKey 5 NFC, 5A, 4).
pub const FORM_FACTOR_USB_A_KEYCHAIN: u8 = 0x01;

/// A firmware version and what it supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Firmware {
    pub version: [u8; 3],
}

/// What a firmware supports. Each flag names the version that brought it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// GET SERIAL (F8) in the PIV applet: 5.0 (ykman requires 5.0.3). Before, clients
    /// read the serial from the OTP applet.
    pub piv_serial: bool,
    /// GET METADATA (F7): 5.3.
    pub metadata: bool,
    /// AES-128/192/256 management keys: 5.4.
    pub aes_mgmt_key: bool,
    /// Factory management key is AES-192 (same bytes as the 3DES one): 5.7.
    pub default_mgmt_aes192: bool,
    /// RSA-3072/4096, Ed25519, X25519: 5.7.
    pub new_key_types: bool,
    /// MOVE KEY / DELETE KEY (F6): 5.7.
    pub move_key: bool,
    /// ATTEST (F9) and the f9 slot: 4.3.
    pub attestation: bool,
    /// Touch policy "cached": 4.3.
    pub touch_cached: bool,
    /// Attestation certificates signed by the 5.7.4+ key hierarchy (V2's attest.rs).
    pub new_attestation_chain: bool,
}

/// PIV algorithm identifiers (SP 800-78-4 Table 6-2, Yubico extensions for 5.7).
pub mod alg {
    pub const TDES: u8 = 0x03;
    pub const AES128: u8 = 0x08;
    pub const AES192: u8 = 0x0A;
    pub const AES256: u8 = 0x0C;
    pub const RSA1024: u8 = 0x06;
    pub const RSA2048: u8 = 0x07;
    pub const RSA3072: u8 = 0x05;
    pub const RSA4096: u8 = 0x16;
    pub const P256: u8 = 0x11;
    pub const P384: u8 = 0x14;
    pub const ED25519: u8 = 0xE0;
    pub const X25519: u8 = 0xE1;
}

impl Firmware {
    pub fn new(version: [u8; 3]) -> Firmware {
        Firmware { version }
    }

    fn at_least(&self, v: [u8; 3]) -> bool {
        self.version >= v
    }

    pub fn features(&self) -> Features {
        Features {
            piv_serial: self.at_least([5, 0, 0]),
            metadata: self.at_least([5, 3, 0]),
            aes_mgmt_key: self.at_least([5, 4, 0]),
            default_mgmt_aes192: self.at_least([5, 7, 0]),
            new_key_types: self.at_least([5, 7, 0]),
            move_key: self.at_least([5, 7, 0]),
            attestation: self.at_least([4, 3, 0]),
            touch_cached: self.at_least([4, 3, 0]),
            new_attestation_chain: self.at_least([5, 7, 4]),
        }
    }

    /// Whether the firmware has this asymmetric algorithm.
    pub fn supports_key(&self, algorithm: u8) -> bool {
        match algorithm {
            alg::RSA1024 | alg::RSA2048 | alg::P256 | alg::P384 => true,
            alg::RSA3072 | alg::RSA4096 | alg::ED25519 | alg::X25519 => {
                self.features().new_key_types
            }
            _ => false,
        }
    }

    /// Whether the firmware accepts this management key algorithm.
    pub fn supports_mgmt(&self, algorithm: u8) -> bool {
        match algorithm {
            alg::TDES => true,
            alg::AES128 | alg::AES192 | alg::AES256 => self.features().aes_mgmt_key,
            _ => false,
        }
    }

    /// Algorithm of the factory management key (010203…08 ×3 in both cases).
    pub fn default_mgmt_algorithm(&self) -> u8 {
        if self.features().default_mgmt_aes192 {
            alg::AES192
        } else {
            alg::TDES
        }
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.version;
        write!(f, "{a}.{b}.{c}")
    }
}

/// Parses "5.7.4".
pub fn parse_version(s: &str) -> Result<[u8; 3], String> {
    let parts: Vec<u8> = s
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?} is not a version like 5.7.4"))?;
    let version: [u8; 3] = parts
        .try_into()
        .map_err(|_| format!("{s:?} is not a version like 5.7.4"))?;
    if !(4..=5).contains(&version[0]) {
        // The `yubikey` crate and ykman only open major 4 or 5.
        return Err(format!("{s}: only YubiKey 4 and 5 firmware (4.x.y, 5.x.y)"));
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_follow_the_real_firmware() {
        let f = |v| Firmware::new(v).features();
        assert!(!f([4, 3, 7]).piv_serial && f([4, 3, 7]).attestation);
        assert!(!f([5, 2, 7]).metadata && f([5, 4, 3]).metadata);
        assert!(!f([5, 2, 7]).aes_mgmt_key && f([5, 4, 3]).aes_mgmt_key);
        assert!(!f([5, 4, 3]).new_key_types && f([5, 7, 2]).new_key_types);
        assert!(!f([5, 7, 2]).new_attestation_chain && f([5, 7, 4]).new_attestation_chain);
        assert_eq!(
            Firmware::new([5, 7, 2]).default_mgmt_algorithm(),
            alg::AES192
        );
        assert_eq!(Firmware::new([5, 4, 3]).default_mgmt_algorithm(), alg::TDES);
        assert!(Firmware::new([5, 4, 3]).supports_mgmt(alg::AES128));
        assert!(!Firmware::new([5, 2, 7]).supports_mgmt(alg::AES256));
        assert!(!Firmware::new([5, 4, 3]).supports_key(alg::ED25519));
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("5.7.4"), Ok([5, 7, 4]));
        assert!(parse_version("6.6.6").is_err());
        assert!(parse_version("5.7").is_err());
    }
}
