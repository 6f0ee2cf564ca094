//! Unlocking a token for enrollment: the PIN (never the last try), the management key
//! (PIN-protected on the token, or supplied), and what a slot holds.

use crate::error::Error;
use crate::piv::{MgmAlgorithm, PivToken, Slot, TokenError, DEFAULT_MGM_KEY_HEX};
use crate::report::rfc3339;
use crate::secret::{MgmKeyHex, Pin};
use crate::verify;

/// Where the management key comes from when the token keeps none PIN-protected.
pub enum MgmKeySource {
    /// A key, with its algorithm when the source knows it (an escrow record does).
    Given(MgmKeyHex, Option<MgmAlgorithm>),
    /// The factory default, allowed only by an explicit flag (the CLI warns).
    FactoryDefault,
}

/// Verify the PIN (never spending the last try) and authenticate with the management
/// key: the token's PIN-protected one when present, else what `ask_mgm` supplies.
pub fn unlock(
    token: &mut dyn PivToken,
    pin: &Pin,
    mgm_alg: Option<MgmAlgorithm>,
    ask_mgm: &mut dyn FnMut() -> Result<MgmKeySource, Error>,
) -> Result<(), Error> {
    verify_pin_safely(token, pin)?;
    let state = token.mgm_key_state()?;
    let protected = if state.protected {
        token.protected_mgm_key()?
    } else {
        None
    };
    let (key, known_alg) = match protected {
        Some(k) => {
            log::info!("using the management key kept PIN-protected on the token");
            (k, None)
        }
        None => match ask_mgm()? {
            MgmKeySource::Given(k, alg) => (k, alg),
            MgmKeySource::FactoryDefault => {
                log::warn!(
                    "authenticating with the FACTORY DEFAULT management key: anyone can \
                     change this token's keys; set a new one (pivault station does)"
                );
                (MgmKeyHex::new(DEFAULT_MGM_KEY_HEX), None)
            }
        },
    };
    let len = hex::decode(key.expose().trim())
        .map(|b| zeroize::Zeroizing::new(b).len())
        .map_err(|_| Error::Usage("the management key is not hex".into()))?;
    // The card's own metadata (firmware 5.3+) is the truth; a flag or an escrow record that
    // says otherwise is stale or mistaken, and authenticating with it would only fail.
    let claimed = mgm_alg.or(known_alg);
    if let (Some(card), Some(claimed)) = (state.algorithm, claimed) {
        if card != claimed {
            log::warn!(
                "the token reports a {card} management key, not {claimed} as configured; using {card}"
            );
        }
    }
    let alg = state
        .algorithm
        .or(claimed)
        .or_else(|| MgmAlgorithm::guess(len, token.info().version))
        .ok_or_else(|| {
            Error::Usage(format!(
                "a management key of {len} bytes fits no algorithm (3DES/AES-192: 24, AES-128: 16, AES-256: 32)"
            ))
        })?;
    if alg.key_len() != len {
        return Err(Error::Usage(format!(
            "the management key has {len} bytes but {alg} needs {}",
            alg.key_len()
        )));
    }
    token.authenticate(&key, alg)?;
    Ok(())
}

pub use crate::credentials::verify_pin_safely;

/// What a slot holds now, in words, or `None` when empty.
pub fn occupant(token: &mut dyn PivToken, slot: Slot) -> Result<Option<String>, Error> {
    if let Some(der) = token.read_certificate(slot)? {
        return Ok(Some(match verify::describe(&der) {
            Ok(a) => format!(
                "a certificate for {} (issuer {}, not after {})",
                a.subject,
                a.issuer,
                rfc3339(a.not_after)
            ),
            Err(_) => "an unparseable certificate".into(),
        }));
    }
    match token.slot_key(slot) {
        Ok(Some(k)) => Ok(Some(format!("a {} key without certificate", k.algorithm))),
        Ok(None) | Err(TokenError::NotSupported { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
