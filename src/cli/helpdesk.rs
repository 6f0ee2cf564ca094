//! The helpdesk path of `pivault enroll` on a terminal (issue 14, Deliver 5): at a
//! counter the token comes first. pivault lists the tokens, shows the chosen one's state
//! (firmware, PIN and PUK tries left, management key, every occupied slot with its
//! certificate) and asks before touching it; only then the slots. `--secure` finishes it
//! the way the station does ([`pivault::credentials::secure_for_user`]); the user types
//! their own PIN, twice, without echo.
//!
//! Thin: prompts and printing only; every change to the token is in the library.

use super::enroll::ask;
use super::secrets::{self, Source};
use pivault::error::Error;
use pivault::piv::yubikey::{Selector, YubiKeyToken};
use pivault::piv::{MgmAlgorithm, PivToken, TokenInfo, DEFAULT_MGM_KEY_HEX};
use pivault::secret::MgmKeyHex;
use pivault::secret::Pin;

/// List the tokens present, numbered, and ask which one (the first by default).
pub fn pick_token(tokens: &[TokenInfo]) -> Result<&TokenInfo, Error> {
    for (i, t) in tokens.iter().enumerate() {
        eprintln!(
            "  {}) {} (firmware {}) in '{}'",
            i + 1,
            t.serial,
            t.version,
            t.reader
        );
    }
    let pick = ask("Which token", Some("1"))?;
    pick.trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| tokens.get(i))
        .ok_or_else(|| Error::Usage(format!("'{pick}' is not one of the listed tokens")))
}

/// Choose the token (asking when several are present and none is named), show its state
/// and ask whether to go on. Nothing is written to the token here.
pub fn counter_token(mut sel: Selector) -> Result<Option<YubiKeyToken>, Error> {
    if sel.serial.is_none() && sel.reader.is_none() {
        let tokens = pivault::piv::yubikey::list()?;
        match tokens.len() {
            0 => {
                return Err(Error::Usage(
                    "no token found: plug one in and run again".into(),
                ))
            }
            1 => {}
            _ => {
                eprintln!("Tokens present:");
                let t = pick_token(&tokens)?;
                sel.serial = Some(t.serial);
                sel.reader = Some(t.reader.clone());
            }
        }
    }
    let mut token = YubiKeyToken::open(&sel)?;
    let st = pivault::status::read(&mut token)?;
    eprint!("{}", st.to_text());
    // Firmware before 5.3 does not tell whether the management key is the default; trying
    // the default costs nothing (no retry counter, SP 800-73-4 part 2, 3.2.4).
    let default_key = match st.mgmt_key_is_default {
        Some(d) => d,
        None => {
            let alg = st
                .mgmt_key_algorithm
                .unwrap_or_else(|| MgmAlgorithm::factory_default(st.firmware));
            token
                .authenticate(&MgmKeyHex::new(DEFAULT_MGM_KEY_HEX), alg)
                .is_ok()
        }
    };
    let factory = default_key && st.slots.is_empty();
    eprintln!(
        "  state: {}",
        if factory {
            "factory (no keys, default management key)"
        } else if st.slots.is_empty() {
            "no keys, but its management key was changed (in use or secured)"
        } else {
            "IN USE: it holds keys (slots above)"
        }
    );
    let go = ask(
        &format!("Enroll token {}? (y/N)", token.info().serial),
        Some("N"),
    )?;
    if !(go.eq_ignore_ascii_case("y") || go.eq_ignore_ascii_case("yes")) {
        return Ok(None);
    }
    Ok(Some(token))
}

/// `--force` at a counter replaces keys a person may still need: the serial must be typed.
pub fn confirm_replace(serial: u32) -> Result<bool, Error> {
    let typed = ask(
        &format!("This REPLACES keys on token {serial}. Type its serial to confirm"),
        None,
    )?;
    Ok(typed.trim() == serial.to_string())
}

/// The user's own PIN for `--secure`: PIVAULT_NEW_PIN(_FILE), else typed twice without
/// echo. Checked against the PIN rules (6-8 characters, not trivial) before anything.
pub fn user_pin(file: Option<std::path::PathBuf>) -> Result<Pin, Error> {
    let src = Source {
        what: "new PIN",
        env: "PIVAULT_NEW_PIN",
        file,
    };
    let pin = match secrets::read(&src)? {
        Some(p) => p,
        None if secrets::interactive() => {
            let p1 = secrets::prompt("The user's new PIN (6-8 characters, not shown): ")?;
            let p2 = secrets::prompt("The new PIN again: ")?;
            if *p1 != *p2 {
                return Err(Error::Usage(
                    "the two PINs differ; nothing was changed".into(),
                ));
            }
            p1
        }
        None => return Err(Error::Usage(
            "--secure needs the user's new PIN: set PIVAULT_NEW_PIN(_FILE) or run on a terminal"
                .into(),
        )),
    };
    pivault::escrow::check_pin_policy(&pin)?;
    Ok(Pin::new(pin.as_str()))
}
