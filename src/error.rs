//! pivault's error type: every failure carries the facts a person needs, and knows which
//! exit code class it belongs to and what fix to suggest.

use crate::csr::CsrError;
use crate::piv::{Slot, TokenError};
use crate::vault::VaultError;
use crate::verify::VerifyError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: refused before the token or Vault is touched.
    #[error("{0}")]
    Usage(String),
    /// Unusable configuration (file, environment, secret source).
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// Request building failures other than the token's (those become `Token`).
    #[error(transparent)]
    Csr(CsrError),
    #[error("slot {slot} already holds {what}; pivault will not replace it without --force")]
    SlotOccupied { slot: Slot, what: String },
    #[error("slot {slot}: refused the certificate Vault issued: {source}")]
    Verify {
        slot: Slot,
        #[source]
        source: VerifyError,
    },
    #[error("slot {slot}: the certificate read back from the token differs from the one written")]
    ReadBack { slot: Slot },
}

/// Exit codes (documented in the README and `pivault --help`).
pub mod exit {
    /// Everything done.
    pub const OK: u8 = 0;
    /// Some or all work failed (a slot, a token, a refused certificate).
    pub const FAILED: u8 = 1;
    /// Usage or configuration error: nothing was changed.
    pub const USAGE: u8 = 2;
    /// Needs a person: no token / several tokens, PIN or PUK blocked, last PIN try, an
    /// occupied slot that needs --force.
    pub const NEEDS_PERSON: u8 = 3;
    /// Vault unreachable, sealed or in standby: retry later; the token was not changed.
    pub const VAULT_UNAVAILABLE: u8 = 4;
    /// `renew --check`: a certificate is due for renewal.
    pub const RENEW_DUE: u8 = 10;
}

impl From<CsrError> for Error {
    fn from(e: CsrError) -> Error {
        match e {
            CsrError::Token(t) => Error::Token(t),
            other => Error::Csr(other),
        }
    }
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Config(_) => exit::USAGE,
            Error::Token(
                TokenError::NoToken(_)
                | TokenError::Ambiguous(_)
                | TokenError::PinBlocked
                | TokenError::PinLastTry
                | TokenError::PukBlocked,
            ) => exit::NEEDS_PERSON,
            Error::SlotOccupied { .. } => exit::NEEDS_PERSON,
            Error::Vault(v) if v.is_unavailable() => exit::VAULT_UNAVAILABLE,
            // Wrong credentials, namespace, CA bundle or settings: fix the configuration.
            Error::Vault(
                VaultError::InvalidCredentials { .. }
                | VaultError::NamespaceNotFound { .. }
                | VaultError::Tls { .. }
                | VaultError::Config(_),
            ) => exit::USAGE,
            Error::Csr(CsrError::Subject(_)) => exit::USAGE,
            _ => exit::FAILED,
        }
    }

    /// One line telling the person what to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Token(t) => token_hint(t),
            Error::Vault(v) => v.hint(),
            Error::SlotOccupied { slot, .. } => Some(format!(
                "check `pivault status`; to replace slot {slot}, run again with --force"
            )),
            Error::Verify { .. } => Some(
                "nothing was imported; check the PKI role and the CA chain (or --trust-anchor)"
                    .into(),
            ),
            Error::Csr(CsrError::Subject(_)) => {
                Some("fix the subject (--cn, --email, --upn or the profile)".into())
            }
            _ => None,
        }
    }
}

fn token_hint(t: &TokenError) -> Option<String> {
    Some(match t {
        TokenError::NoToken(_) => {
            "insert the token (check `pivault list` and that pcscd is running)".into()
        }
        TokenError::Ambiguous(_) => "pass --serial N (see `pivault list`)".into(),
        TokenError::PinBlocked => {
            "a helpdesk can unblock it with the escrowed PUK: `pivault unblock`".into()
        }
        TokenError::PinLastTry => {
            "verify the PIN elsewhere first, or unblock/reset it at a helpdesk".into()
        }
        TokenError::PukBlocked => {
            "the PIV application can only be reset now (`ykman piv reset`), which erases every key"
                .into()
        }
        TokenError::MgmKeyRejected => {
            "give the token's management key with PIVAULT_MGMT_KEY or --mgmt-key-file".into()
        }
        TokenError::CardRemoved => "reinsert the token and run the same command again".into(),
        TokenError::Pcsc(_) => "start pcscd (`systemctl start pcscd`) and check the reader".into(),
        _ => return None,
    })
}
