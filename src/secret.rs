//! Secrets handled by pivault: PIN, PUK, management key, AppRole secret_id, Vault token.
//!
//! Every type here zeroizes its buffer on drop, prints as `[redacted]` in `Debug`, and has
//! no `Display`, so a secret cannot end up in a log line or an error message by accident.
//! The only way to the bytes is an explicit `expose()`.

use std::fmt;
use zeroize::Zeroizing;

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(Zeroizing<String>);

        impl $name {
            /// Wrap a value. The caller's copy should itself be zeroized or dropped.
            pub fn new(value: impl Into<String>) -> Self {
                Self(Zeroizing::new(value.into()))
            }

            /// The secret's text. Call only where the value is sent to the card or to Vault.
            pub fn expose(&self) -> &str {
                &self.0
            }

            /// Whether the value is empty.
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "([redacted])"))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                // The intermediate String is moved into the zeroizing buffer by `From`.
                Ok(Self::from(String::deserialize(d)?))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                // Moves the buffer (no copy left behind); zeroized on drop.
                Self(Zeroizing::new(s))
            }
        }
    };
}

secret_type!(
    /// The PIV PIN (6–8 bytes on a YubiKey).
    Pin
);
secret_type!(
    /// The PIV PUK (6–8 bytes on a YubiKey), used to unblock the PIN.
    Puk
);
secret_type!(
    /// A PIV management key in hex (3DES: 48 hex digits; AES-128/192/256: 32/48/64).
    MgmKeyHex
);
secret_type!(
    /// An AppRole secret_id.
    SecretId
);
secret_type!(
    /// A Vault client token.
    VaultToken
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let p = Pin::new("123456");
        assert_eq!(format!("{p:?}"), "Pin([redacted])");
        let t = VaultToken::new("hvs.secret");
        assert!(!format!("{t:?}").contains("hvs"));
        assert_eq!(t.expose(), "hvs.secret");
    }

    #[test]
    fn serde_round_trip_keeps_debug_redacted() {
        let p: Puk = serde_json::from_str("\"73915824\"").expect("puk");
        assert_eq!(p.expose(), "73915824");
        assert_eq!(format!("{p:?}"), "Puk([redacted])");
        assert_eq!(serde_json::to_string(&p).expect("json"), "\"73915824\"");
    }
}
