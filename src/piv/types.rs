//! Typed PIV identifiers: slots (SP 800-73-4 Part 1, Table 4b; Yubico retired-slot
//! numbering), key algorithms, PIN/touch policies (Yubico extension) and management-key
//! algorithms, each parsed from the names users type and printed the way ykman does.

use serde::{Serialize, Serializer};

use std::fmt;
use std::str::FromStr;

/// A key slot pivault can enroll: 9a, 9c, 9d, 9e and the retired slots 82–95.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(u8);

impl Slot {
    pub const AUTHENTICATION: Slot = Slot(0x9a);
    pub const SIGNATURE: Slot = Slot(0x9c);
    pub const KEY_MANAGEMENT: Slot = Slot(0x9d);
    pub const CARD_AUTHENTICATION: Slot = Slot(0x9e);

    /// Every enrollable slot, in display order.
    pub fn all() -> impl Iterator<Item = Slot> {
        [0x9a, 0x9c, 0x9d, 0x9e]
            .into_iter()
            .chain(0x82..=0x95)
            .map(Slot)
    }

    pub fn from_byte(b: u8) -> Option<Slot> {
        matches!(b, 0x9a | 0x9c | 0x9d | 0x9e | 0x82..=0x95).then_some(Slot(b))
    }

    pub fn byte(self) -> u8 {
        self.0
    }

    pub fn is_retired(self) -> bool {
        (0x82..=0x95).contains(&self.0)
    }

    /// ykman's name for the slot.
    pub fn name(self) -> String {
        match self.0 {
            0x9a => "authentication".into(),
            0x9c => "signature".into(),
            0x9d => "key-management".into(),
            0x9e => "card-authentication".into(),
            b => format!("retired{}", b - 0x81),
        }
    }

    /// The PKI role a slot enrolls against unless told otherwise (the contract's table).
    pub fn default_role(self) -> Role {
        match self.0 {
            0x9a => Role::Auth,
            0x9c | 0x9d => Role::EmailSigning,
            _ => Role::Piv,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}", self.0)
    }
}

impl Serialize for Slot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Slot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl FromStr for Slot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let l = s.trim().to_ascii_lowercase();
        let by_name = match l.as_str() {
            "authentication" | "auth" => Some(0x9a),
            "signature" | "sign" => Some(0x9c),
            "key-management" | "key_management" | "keymgmt" => Some(0x9d),
            "card-authentication" | "card_authentication" | "cardauth" => Some(0x9e),
            _ => l
                .strip_prefix("retired")
                .and_then(|n| n.parse::<u8>().ok())
                .filter(|n| (1..=20).contains(n))
                .map(|n| 0x81 + n),
        };
        let byte = by_name.or_else(|| {
            let hex = l.strip_prefix("0x").unwrap_or(&l);
            (hex.len() == 2)
                .then(|| u8::from_str_radix(hex, 16).ok())
                .flatten()
        });
        byte.and_then(Slot::from_byte).ok_or_else(|| {
            format!(
                "unknown slot '{s}': use 9a, 9c, 9d, 9e, 82-95, or authentication, signature, \
                 key-management, card-authentication, retired1-retired20"
            )
        })
    }
}

/// Key algorithms pivault can generate on a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    P256,
    P384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
    Ed25519,
}

impl Algorithm {
    pub const ALL: [Algorithm; 6] = [
        Algorithm::P256,
        Algorithm::P384,
        Algorithm::Rsa2048,
        Algorithm::Rsa3072,
        Algorithm::Rsa4096,
        Algorithm::Ed25519,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::P256 => "p256",
            Algorithm::P384 => "p384",
            Algorithm::Rsa2048 => "rsa2048",
            Algorithm::Rsa3072 => "rsa3072",
            Algorithm::Rsa4096 => "rsa4096",
            Algorithm::Ed25519 => "ed25519",
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            Algorithm::Rsa2048 | Algorithm::Rsa3072 | Algorithm::Rsa4096
        )
    }

    /// The oldest firmware that generates this key type (Yubico's PIV documentation).
    pub fn min_firmware(self) -> FirmwareVersion {
        match self {
            Algorithm::Rsa3072 | Algorithm::Rsa4096 | Algorithm::Ed25519 => {
                FirmwareVersion::new(5, 7, 0)
            }
            _ => FirmwareVersion::new(4, 0, 0),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Algorithm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Algorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let l = s.trim().to_ascii_lowercase().replace(['-', '_'], "");
        Ok(match l.as_str() {
            "p256" | "eccp256" | "secp256r1" | "nistp256" => Algorithm::P256,
            "p384" | "eccp384" | "secp384r1" | "nistp384" => Algorithm::P384,
            "rsa2048" => Algorithm::Rsa2048,
            "rsa3072" => Algorithm::Rsa3072,
            "rsa4096" => Algorithm::Rsa4096,
            "ed25519" => Algorithm::Ed25519,
            _ => {
                return Err(format!(
                    "unknown algorithm '{s}': use p256, p384, rsa2048, rsa3072, rsa4096 or ed25519"
                ))
            }
        })
    }
}

macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let l = s.trim().to_ascii_lowercase().replace('_', "-");
                $(if l == $text { return Ok($name::$variant); })+
                Err(format!(
                    concat!("unknown ", stringify!($name), " '{}': use one of {}"),
                    s,
                    [$($text),+].join(", ")
                ))
            }
        }
    };
}

named_enum!(
    /// When the token asks for the PIN before using a key (Yubico extension tag 0xAA).
    PinPolicy { Default => "default", Never => "never", Once => "once", Always => "always" }
);
named_enum!(
    /// When the token asks for a touch before using a key (Yubico extension tag 0xAB).
    TouchPolicy { Default => "default", Never => "never", Always => "always", Cached => "cached" }
);
named_enum!(
    /// Management key algorithms (3DES; AES from firmware 5.4, AES-192 default from 5.7).
    MgmAlgorithm { TripleDes => "3des", Aes128 => "aes128", Aes192 => "aes192", Aes256 => "aes256" }
);

impl MgmAlgorithm {
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            MgmAlgorithm::Aes128 => 16,
            MgmAlgorithm::TripleDes | MgmAlgorithm::Aes192 => 24,
            MgmAlgorithm::Aes256 => 32,
        }
    }

    /// What a given firmware uses out of the factory (Yubico: 5.7 changed 3DES → AES-192).
    pub fn factory_default(v: FirmwareVersion) -> MgmAlgorithm {
        if v >= FirmwareVersion::new(5, 7, 0) {
            MgmAlgorithm::Aes192
        } else {
            MgmAlgorithm::TripleDes
        }
    }

    /// The strongest algorithm the firmware accepts (AES arrived in 5.4).
    pub fn best_for(v: FirmwareVersion) -> MgmAlgorithm {
        if v >= FirmwareVersion::new(5, 4, 0) {
            MgmAlgorithm::Aes256
        } else {
            MgmAlgorithm::TripleDes
        }
    }

    /// The algorithm of a key given in hex, when no metadata tells: the length decides,
    /// except for 24 bytes, which is 3DES or AES-192 depending on the firmware default.
    pub fn guess(key_len: usize, v: FirmwareVersion) -> Option<MgmAlgorithm> {
        match key_len {
            16 => Some(MgmAlgorithm::Aes128),
            24 => Some(MgmAlgorithm::factory_default(v)),
            32 => Some(MgmAlgorithm::Aes256),
            _ => None,
        }
    }
}

/// The PIV factory-default management key (Yubico documentation), as hex.
pub const DEFAULT_MGM_KEY_HEX: &str = "010203040506070801020304050607080102030405060708";

/// A token firmware version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FirmwareVersion {
    pub major: u8,
    pub minor: u8,
    pub patch: u8,
}

impl FirmwareVersion {
    pub const fn new(major: u8, minor: u8, patch: u8) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// ATTEST (INS F9) arrived in 4.3 (Yubico, "PIV attestation").
    pub fn has_attestation(self) -> bool {
        self >= FirmwareVersion::new(4, 3, 0)
    }

    /// GET METADATA (and with it key presence, policies and PUK tries) arrived in 5.3.
    pub fn has_metadata(self) -> bool {
        self >= FirmwareVersion::new(5, 3, 0)
    }
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Serialize for FirmwareVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// The four PKI roles of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Piv,
    Auth,
    CodeSigning,
    EmailSigning,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Piv, Role::Auth, Role::CodeSigning, Role::EmailSigning];

    /// The role's exact name on the PKI mount.
    pub fn name(self) -> &'static str {
        match self {
            Role::Piv => "yubikey-piv",
            Role::Auth => "yubikey-piv-auth",
            Role::CodeSigning => "yubikey-piv-code-signing",
            Role::EmailSigning => "yubikey-piv-email-signing",
        }
    }

    /// The extended key usage a certificate from this role must carry (RFC 5280 4.2.1.12).
    pub fn required_eku(self) -> const_oid::ObjectIdentifier {
        use const_oid::db::rfc5280;
        match self {
            Role::Piv | Role::Auth => rfc5280::ID_KP_CLIENT_AUTH,
            Role::CodeSigning => rfc5280::ID_KP_CODE_SIGNING,
            Role::EmailSigning => rfc5280::ID_KP_EMAIL_PROTECTION,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Role {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let l = s.trim().to_ascii_lowercase();
        let short = l.strip_prefix("yubikey-piv-").unwrap_or(&l);
        Ok(match short {
            "yubikey-piv" | "piv" => Role::Piv,
            "auth" => Role::Auth,
            "code-signing" => Role::CodeSigning,
            "email-signing" => Role::EmailSigning,
            _ => {
                return Err(format!(
                    "unknown role '{s}': use yubikey-piv, yubikey-piv-auth, \
                     yubikey-piv-code-signing or yubikey-piv-email-signing"
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_round_trip() {
        for slot in Slot::all() {
            assert_eq!(slot.name().parse::<Slot>(), Ok(slot));
            assert_eq!(slot.to_string().parse::<Slot>(), Ok(slot));
        }
        assert_eq!("retired1".parse::<Slot>(), Ok(Slot(0x82)));
        assert_eq!("retired20".parse::<Slot>(), Ok(Slot(0x95)));
        assert_eq!("0x9A".parse::<Slot>(), Ok(Slot::AUTHENTICATION));
        for bad in ["9b", "f9", "retired0", "retired21", "", "96", "81", "9aa"] {
            assert!(bad.parse::<Slot>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn default_roles_follow_the_contract() {
        assert_eq!(Slot::AUTHENTICATION.default_role(), Role::Auth);
        assert_eq!(Slot::SIGNATURE.default_role(), Role::EmailSigning);
        assert_eq!(Slot::KEY_MANAGEMENT.default_role(), Role::EmailSigning);
        assert_eq!(Slot::CARD_AUTHENTICATION.default_role(), Role::Piv);
        assert_eq!(
            "retired3".parse::<Slot>().map(Slot::default_role),
            Ok(Role::Piv)
        );
    }

    #[test]
    fn roles_and_algorithms_parse() {
        for r in Role::ALL {
            assert_eq!(r.name().parse::<Role>(), Ok(r));
        }
        assert_eq!("auth".parse::<Role>(), Ok(Role::Auth));
        assert!("yubikey-piv-admin".parse::<Role>().is_err());
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>(), Ok(a));
        }
        assert_eq!("ECCP256".parse::<Algorithm>(), Ok(Algorithm::P256));
        assert!("rsa1024".parse::<Algorithm>().is_err());
        assert_eq!("cached".parse::<TouchPolicy>(), Ok(TouchPolicy::Cached));
        assert!("sometimes".parse::<PinPolicy>().is_err());
    }

    #[test]
    fn mgm_algorithm_by_firmware() {
        let old = FirmwareVersion::new(5, 2, 7);
        let new = FirmwareVersion::new(5, 7, 1);
        assert_eq!(MgmAlgorithm::guess(24, old), Some(MgmAlgorithm::TripleDes));
        assert_eq!(MgmAlgorithm::guess(24, new), Some(MgmAlgorithm::Aes192));
        assert_eq!(MgmAlgorithm::guess(32, old), Some(MgmAlgorithm::Aes256));
        assert_eq!(MgmAlgorithm::guess(20, old), None);
        assert_eq!(MgmAlgorithm::best_for(old), MgmAlgorithm::TripleDes);
        assert_eq!(
            MgmAlgorithm::best_for(FirmwareVersion::new(5, 4, 3)),
            MgmAlgorithm::Aes256
        );
    }
}
