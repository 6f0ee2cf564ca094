//! pivault's error type: every failure carries the facts a person needs, and knows which
//! exit code class it belongs to and what fix to suggest.

use crate::attestation::AttestationError;
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
    /// The escrow record in Vault KV is missing, incomplete or unreadable.
    #[error("escrow: {0}")]
    Escrow(String),
    /// A token without an escrow record that is not in factory state.
    #[error("the token is not in factory state ({what}) and Vault has no escrow record for it")]
    NotFactory { what: String, pin_try_spent: bool },
    /// Local files (journal, report, state directory) after work began.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A certificate request was sent and its answer lost: Vault may have issued it.
    #[error("slot {slot}: a certificate request sent at {since} got no answer; Vault may have issued a certificate")]
    InDoubt {
        slot: Slot,
        since: String,
        journal: std::path::PathBuf,
    },
    /// Certificate login (self-service renewal) impossible: expired, revoked or unknown
    /// certificate. Only a person (the helpdesk, with an enrollment station) can fix it.
    #[error("slot {slot}: cannot log in to Vault with the token's certificate: {reason}")]
    CertLogin { slot: Slot, reason: String },
    /// The attestation policy refused the token or a key before anything was sent to
    /// Vault (`slot` is `None` when the whole token is refused).
    #[error("{}refused by the attestation policy: {refusal}", slot.map(|s| format!("slot {s}: ")).unwrap_or_default())]
    Policy {
        slot: Option<Slot>,
        refusal: crate::attestation::PolicyRefusal,
    },
    /// An attestation was refused: the check that failed and why (`pivault attest`,
    /// enrollment with attestation). `slot` is `None` when no slot could be attested.
    #[error(
        "{}attestation refused ({} check): {source}",
        slot.map(|s| format!("slot {s}: ")).unwrap_or_default(),
        source.check()
    )]
    Attestation {
        slot: Option<Slot>,
        #[source]
        source: AttestationError,
    },
    /// Some slots of a token failed (each is in the report).
    #[error("{0}")]
    Incomplete(String),
    /// A failure after the token or Vault was already changed: never "nothing changed".
    #[error("{source} (after {done})")]
    AfterChange {
        done: String,
        #[source]
        source: Box<Error>,
    },
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
    /// The error itself, seen through [`Error::AfterChange`].
    pub fn cause(&self) -> &Error {
        match self {
            Error::AfterChange { source, .. } => source.cause(),
            e => e,
        }
    }

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
            Error::SlotOccupied { .. } | Error::NotFactory { .. } => exit::NEEDS_PERSON,
            Error::CertLogin { .. } => exit::NEEDS_PERSON,
            Error::Token(TokenError::PukLastTry) => exit::NEEDS_PERSON,
            // Something was changed: never 2 or 4 ("nothing was changed").
            Error::AfterChange { source, .. } => match source.exit_code() {
                exit::USAGE | exit::VAULT_UNAVAILABLE => exit::FAILED,
                c => c,
            },
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
            Error::CertLogin { .. } => Some(
                "go to the helpdesk: the token must be enrolled again at a station (self-service \
                 renewal needs a certificate that is still valid)"
                    .into(),
            ),
            Error::Attestation { source, .. } => Some(source.hint().into()),
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
            Error::NotFactory { pin_try_spent, .. } => Some(format!(
                "reset it (ykman piv reset) or escrow its credentials first{}",
                if *pin_try_spent {
                    "; one PIN try was spent finding out (this firmware has no metadata), \
                     the next correct PIN restores it"
                } else {
                    ""
                }
            )),
            Error::InDoubt { slot, journal, .. } => Some(format!(
                "check Vault's certificate list (and revoke a certificate nobody holds); then remove \
                 slot {slot} from \"requested\" in {} to request again",
                journal.display()
            )),
            Error::Policy { .. } => Some(
                "nothing was sent to Vault; use a token (or slot settings) the policy allows, \
                 or change the profile's [attestation] section"
                    .into(),
            ),
            Error::AfterChange { source, .. } => Some(match source.hint() {
                Some(h) if h.contains("again") => format!("the token was changed; {h}"),
                Some(h) => format!("the token was changed; {h}; then run the same command again"),
                None => "the token was changed; run the same command again to finish".into(),
            }),
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
        TokenError::PukLastTry => {
            "one PUK try is left: unblock it by hand, knowing the PUK, or reset the token".into()
        }
        TokenError::PukBlocked => {
            "the PIV application can only be reset now (`ykman piv reset`), which erases every key"
                .into()
        }
        TokenError::MgmKeyRejected => {
            "give the token's management key with PIVAULT_MGMT_KEY or --mgmt-key-file".into()
        }
        TokenError::CardRemoved => "reinsert the token and run the same command again".into(),
        TokenError::WatcherFailed { .. } => {
            "start pcscd (`systemctl start pcscd`), then run the station again: tokens reported \
             failed resume from their journal and escrow record"
                .into()
        }
        TokenError::Pcsc(_) => "start pcscd (`systemctl start pcscd`) and check the reader".into(),
        _ => return None,
    })
}
