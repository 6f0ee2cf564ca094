//! `pivault renew` and `pivault unblock`.

use super::args::{Cli, RenewArgs, UnblockArgs, VaultArgs};
use super::secrets::{self, Source};
use pivault::enroll::{self, Context, MgmKeySource};
use pivault::error::exit;
use pivault::escrow;
use pivault::issuer::VaultIssuer;
use pivault::piv::yubikey::YubiKeyToken;
use pivault::piv::{PivToken, Slot, TokenError};
use pivault::renew::{self, Journal, Threshold};
use pivault::secret::{MgmKeyHex, Pin, Puk};
use pivault::Error;
use std::path::PathBuf;
use std::process::ExitCode;

/// Configuration file < environment < flags, then the AppRole login.
pub fn connect(cli: &Cli, v: &VaultArgs) -> Result<VaultIssuer, Error> {
    let file = super::load_config(cli)?;
    super::login(&super::vault_settings(&file, v)?)
}

fn state_dir(a: &RenewArgs) -> PathBuf {
    if let Some(d) = &a.state_dir {
        return d.clone();
    }
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("pivault");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/pivault"),
        None => PathBuf::from("/var/lib/pivault"),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Error> {
    println!(
        "{}",
        serde_json::to_string(v).map_err(|e| Error::Config(e.to_string()))?
    );
    Ok(())
}

pub fn run(cli: &Cli, a: &RenewArgs) -> Result<ExitCode, Error> {
    let threshold: Threshold = a.threshold.parse().map_err(Error::Usage)?;
    let only: Vec<Slot> = a
        .slots
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(Error::Usage)?;
    let issuer = connect(cli, &a.vault)?;
    let mut ca_subjects = Vec::new();
    for pem in issuer.client().ca_chain()? {
        for der in pivault::verify::pem_bundle_to_der(&pem)
            .map_err(|e| Error::Config(format!("Vault's CA chain: {e}")))?
        {
            if let Ok(d) = pivault::verify::describe(&der) {
                ca_subjects.push(d.subject);
            }
        }
    }
    let mut token = YubiKeyToken::open(&super::selector(&a.token))?;
    let serial = token.info().serial;
    let mut journal = Journal::new(&state_dir(a));
    journal.abort_after = std::env::var("PIVAULT_TEST_ABORT_AFTER").ok();
    let certs: Vec<_> = renew::current(&mut token, &ca_subjects)?
        .into_iter()
        .filter(|c| only.is_empty() || only.contains(&c.slot))
        .collect();
    let assessed = renew::assess(
        &certs,
        &|slot| journal.pending(serial, slot).is_some(),
        threshold,
        std::time::SystemTime::now(),
    );
    let any_due = assessed.iter().any(|d| d.due || d.unfinished);

    if a.check {
        if cli.json {
            print_json(&serde_json::json!({
                "schema": pivault::report::SCHEMA_VERSION,
                "token_serial": serial,
                "due": any_due,
                "slots": assessed,
            }))?;
        } else {
            if assessed.is_empty() {
                println!("token {serial}: no certificate from the configured CA");
            }
            for d in &assessed {
                println!(
                    "slot {} {:<26} {}  not after {}  {} {}",
                    d.slot,
                    d.role,
                    d.subject,
                    d.not_after,
                    if d.due { "DUE since" } else { "due at" },
                    d.due_at
                );
            }
        }
        return Ok(ExitCode::from(if any_due {
            exit::RENEW_DUE
        } else {
            exit::OK
        }));
    }

    let todo: Vec<_> = certs
        .into_iter()
        .filter(|c| {
            assessed
                .iter()
                .any(|d| d.slot == c.slot && (d.due || d.unfinished))
        })
        .collect();
    if todo.is_empty() {
        if !cli.json {
            println!("token {serial}: nothing is due");
        } else {
            print_json(
                &serde_json::json!({"schema": pivault::report::SCHEMA_VERSION,
                "command": "renew", "token_serial": serial, "slots": [], "ok": true}),
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }

    let pin = super::read_pin(&a.unlock)?;
    let mgm_alg = super::mgm_algorithm(&a.unlock)?;
    let client = issuer.client().clone();
    let mgm_file = a.unlock.mgmt_key_file.clone();
    let mut ask_mgm = || -> Result<MgmKeySource, Error> {
        if let Some(k) = secrets::read(&Source {
            what: "management key (hex)",
            env: "PIVAULT_MGMT_KEY",
            file: mgm_file.clone(),
        })? {
            return Ok(MgmKeySource::Given(MgmKeyHex::new(k.as_str()), None));
        }
        // The end user knows only the PIN: the escrow record holds the management key.
        let rec = escrow::read(&client, serial)?.ok_or_else(|| {
            Error::Config(format!(
                "token {serial} keeps no PIN-protected management key and has no escrow record \
                 in Vault; a helpdesk must renew it"
            ))
        })?;
        let key = rec.record.live.mgmt_key.clone().ok_or_else(|| {
            Error::Config(format!(
                "the escrow record of token {serial} holds no management key"
            ))
        })?;
        Ok(MgmKeySource::Given(
            MgmKeyHex::new(key),
            rec.record.live.mgm_algorithm(),
        ))
    };
    // Vault is asked (policy, role) inside renew::renew before any key is generated;
    // unlocking first only reads the PIN counter and authenticates.
    enroll::unlock(&mut token, &pin, mgm_alg, &mut ask_mgm)?;
    let ctx = Context {
        issuer: &issuer,
        anchors_der: issuer.anchors_der()?,
    };
    let outcome = renew::renew(&mut token, &ctx, &todo, &pin, a.reuse_key, &journal)?;
    if cli.json {
        print_json(&outcome.report)?;
    } else {
        print!("{}", outcome.report.to_text());
    }
    if let Some(e) = &outcome.fatal {
        return Ok(super::fail(e, false));
    }
    Ok(ExitCode::SUCCESS)
}

fn new_pin(a: &UnblockArgs) -> Result<Pin, Error> {
    let src = Source {
        what: "new PIN",
        env: "PIVAULT_NEW_PIN",
        file: a.new_pin_file.clone(),
    };
    let pin = match secrets::read(&src)? {
        Some(p) => p,
        None if secrets::interactive() => {
            let p1 = secrets::prompt("New PIN (6-8 characters): ")?;
            let p2 = secrets::prompt("New PIN again: ")?;
            if *p1 != *p2 {
                return Err(Error::Usage(
                    "the two PINs differ; nothing was changed".into(),
                ));
            }
            p1
        }
        None => {
            return Err(Error::Usage(
                "the new PIN is needed: set PIVAULT_NEW_PIN(_FILE) or run on a terminal".into(),
            ))
        }
    };
    escrow::check_pin_policy(&pin)?;
    Ok(Pin::new(pin.as_str()))
}

pub fn unblock(cli: &Cli, a: &UnblockArgs) -> Result<ExitCode, Error> {
    let new = new_pin(a)?;
    let issuer = connect(cli, &a.vault)?;
    let client = issuer.client();
    let mut token = YubiKeyToken::open(&super::selector(&a.token))?;
    let serial = token.info().serial;
    let mut rec = escrow::read(client, serial)?
        .ok_or_else(|| Error::Config(format!("no escrow record for token {serial} in Vault KV")))?;
    let puk = Puk::new(rec.record.live.puk.clone().ok_or_else(|| {
        Error::Config(format!("the escrow record of token {serial} holds no PUK"))
    })?);

    // 1. New PIN with the escrowed PUK.
    token.unblock_pin(&puk, &new).map_err(|e| match e {
        TokenError::PukBlocked => Error::Token(TokenError::PukBlocked),
        e => e.into(),
    })?;
    // 2. Rotate the PUK: escrow the new one as pending first, then apply, then promote.
    let next = escrow::random_digits(8);
    let mut pending = rec.record.live.clone();
    pending.puk = Some(next.clone());
    pending.pin = None;
    rec.record.pending = Some(pending);
    let v = escrow::write(client, &mut rec.record, rec.version, "pivault unblock")?;
    token.change_puk(&puk, &Puk::new(next.as_str()))?;
    rec.record.live.puk = Some(next);
    rec.record.live.pin = None; // the user chose it; it is not escrowed
    rec.record.pending = None;
    let v = escrow::write(client, &mut rec.record, v, "pivault unblock")?;
    token.verify_pin(&new)?;

    let out = serde_json::json!({
        "schema": pivault::report::SCHEMA_VERSION,
        "command": "unblock",
        "token_serial": serial,
        "pin_tries_left": token.pin_retries()?,
        "puk_rotated": true,
        "escrow_version": v,
        "ok": true,
    });
    if cli.json {
        print_json(&out)?;
    } else {
        println!("token {serial}: PIN set, PUK rotated and escrowed (record version {v})");
    }
    Ok(ExitCode::SUCCESS)
}
