//! `pivault renew` and `pivault unblock`.

use super::args::{Cli, RenewArgs, UnblockArgs};
use super::secrets::{self, Source};
use super::{connect, print_json};
use pivault::cardtls::CardClientKey;
use pivault::config::{AuthMethod, CertLogin};
use pivault::enroll::{self, Context, MgmKeySource};
use pivault::error::exit;
use pivault::escrow::{self, Escrow};
use pivault::issuer::VaultIssuer;
use pivault::journal::Journal;
use pivault::piv::yubikey::YubiKeyToken;
use pivault::piv::PivToken;
use pivault::renew;
use pivault::secret::{MgmKeyHex, Pin};
use pivault::vault::client_cert::ClientCert;
use pivault::vault::VaultError;
use pivault::workflow::Preflight;
use pivault::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

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

pub fn run(cli: &Cli, a: &RenewArgs) -> Result<ExitCode, Error> {
    let threshold = a.threshold;
    let only = &a.slots;
    let file = super::load_config(cli)?;
    let login = CertLogin::resolve(
        &file.vault,
        &|k| std::env::var(k).ok(),
        (
            a.login.auth,
            a.login.cert_mount.clone(),
            a.login.cert_role.clone(),
            a.login.login_slot,
        ),
    )?;
    let settings = super::vault_settings(&file, &a.vault)?;
    // Certificate login: nothing secret is read here; the client that reads the CA chain
    // is not logged in, the one that renews is built once the PIN unlocks the token.
    let cert_login = login.method == AuthMethod::Cert;
    let issuer = if cert_login {
        VaultIssuer::unauthenticated(&settings, None, "")?
    } else {
        super::login(&settings)?
    };
    let anchors_der = issuer.anchors_der()?;
    if anchors_der.is_empty() {
        return Err(Error::Config(
            "renew needs a trust anchor: set --trust-anchor, PIVAULT_TRUST_ANCHOR or \
             vault.trust_anchor to the PKI's root CA (PEM)"
                .into(),
        ));
    }
    // Which certificates on the token are ours: issued by a CA in the trust-anchor bundle,
    // or else by one in Vault's public CA chain, read only when a slot's issuer is not in
    // the bundle (with the issuing CA in the bundle, a renewal asks Vault nothing more
    // than its login and signs).
    let mut ca_subjects: Vec<String> = anchors_der
        .iter()
        .filter_map(|der| pivault::verify::describe(der).ok().map(|d| d.subject))
        .collect();
    let mut chain_read = false;
    let mut is_ours = |issuer_subject: &str| -> Result<bool, Error> {
        if !ca_subjects.iter().any(|s| s == issuer_subject) && !chain_read {
            chain_read = true;
            for pem in issuer.client().ca_chain()? {
                for der in pivault::verify::pem_bundle_to_der(&pem)
                    .map_err(|e| Error::Config(format!("Vault's CA chain: {e}")))?
                {
                    if let Ok(d) = pivault::verify::describe(&der) {
                        ca_subjects.push(d.subject);
                    }
                }
            }
        }
        Ok(ca_subjects.iter().any(|s| s == issuer_subject))
    };
    let mut token = YubiKeyToken::open(&super::selector(&a.token)?)?;
    let serial = token.info().serial;
    let journal = Journal::new(&state_dir(a));
    let unfinished = journal.load(serial)?;
    let all = renew::current(&mut token, &mut is_ours)?;
    // Whose name a certificate login may renew (the self roles bind the CN): for the hint.
    let login_cn = all
        .iter()
        .find(|c| c.slot == login.slot)
        .map(|c| c.subject.common_name.clone());
    let certs: Vec<_> = all
        .into_iter()
        .filter(|c| only.is_empty() || only.contains(&c.slot))
        .collect();
    let assessed = renew::assess(
        &certs,
        &|slot| {
            unfinished.keys.contains_key(&slot)
                || unfinished.issued.contains_key(&slot)
                || unfinished.requested.contains_key(&slot)
        },
        threshold,
        std::time::SystemTime::now(),
    );
    let any_due = assessed.iter().any(|d| d.due || d.unfinished);

    if a.check {
        if cli.json {
            print_json(&pivault::report::renew::RenewCheck {
                token_serial: serial,
                due: any_due,
                slots: assessed.clone(),
            })?;
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
            let info = token.info();
            print_json(&pivault::report::EnrollReport {
                command: "renew",
                token_serial: serial,
                firmware: info.version,
                reader: info.reader.clone(),
                slots: Vec::new(),
                wrote_chuid_ccc: false,
                ok: true,
            })?;
        }
        return Ok(ExitCode::SUCCESS);
    }

    let pin = super::read_pin(&a.unlock)?;
    let mgm_alg = a.unlock.mgmt_key_algorithm;
    let mgm_file = a.unlock.mgmt_key_file.clone();
    // Renewal reads no escrow record: the management key is the token's PIN-protected
    // one (the station sets that up), or one the caller gives. A renewal machine's
    // AppRole needs only `pki/sign/*` (README: sign-only policy).
    let mut ask_mgm = || -> Result<MgmKeySource, Error> {
        match secrets::read(&Source {
            what: "management key (hex)",
            env: "PIVAULT_MGMT_KEY",
            file: mgm_file.clone(),
        })? {
            Some(k) => Ok(MgmKeySource::Given(MgmKeyHex::new(k.as_str()), None)),
            None => Err(Error::Usage(format!(
                "token {serial} keeps no PIN-protected management key: give it with \
                 PIVAULT_MGMT_KEY(_FILE), or have a helpdesk renew it"
            ))),
        }
    };
    // Vault is asked (policy, role) inside renew::renew before any key is generated;
    // unlocking first only reads the PIN counter and authenticates.
    enroll::unlock(&mut token, &pin, mgm_alg, &mut ask_mgm)?;
    let preflight = Preflight::default();
    let outcome = if cert_login {
        let (issuer, shared) = cert_issuer(&settings, &login, token, &pin)?;
        let mut token = shared.lock().unwrap_or_else(|e| e.into_inner());
        let ctx = Context {
            issuer: &issuer,
            anchors_der,
            preflight: &preflight,
            attestation: None,
            strict_usage: false,
        };
        renew::renew(&mut *token, &ctx, &todo, &pin, a.reuse_key, &journal)?
    } else {
        let ctx = Context {
            issuer: &issuer,
            anchors_der,
            preflight: &preflight,
            attestation: None,
            strict_usage: false,
        };
        renew::renew(&mut token, &ctx, &todo, &pin, a.reuse_key, &journal)?
    };
    if cli.json {
        print_json(&outcome.report)?;
    } else {
        print!("{}", outcome.report.to_text());
    }
    if let Some(e) = &outcome.fatal {
        return Ok(super::fail(e, false));
    }
    // A slot that failed on its own (refused certificate, request in doubt) fails the run.
    if outcome.report.ok {
        return Ok(ExitCode::from(exit::OK));
    }
    if !cli.json {
        let subject_of = |slot| {
            todo.iter()
                .find(|c| c.slot == slot)
                .map(|c| c.subject.common_name.as_str())
                .unwrap_or("?")
        };
        for s in outcome.report.slots.iter().filter(|s| s.error.is_some()) {
            eprintln!(
                "pivault: error: slot {} (CN={}) was not renewed: {}",
                s.slot,
                subject_of(s.slot),
                s.error.as_deref().unwrap_or_default()
            );
        }
        eprintln!(
            "  hint: {}",
            slot_failure_hint(cert_login, login_cn.as_deref())
        );
    }
    Ok(ExitCode::from(exit::FAILED))
}

/// What to do about slots a renewal could not renew (the rest of the token was renewed).
fn slot_failure_hint(cert_login: bool, login_cn: Option<&str>) -> String {
    if cert_login {
        // The self roles (fixtures/vault/cert-auth.sh) sign only the login certificate's
        // CN: a slot naming anyone else, or a name field a role cannot bind (UPN), is
        // refused however often it is retried.
        format!(
            "certificate login renews only certificates for the login certificate's own name \
             (CN={}); go to the helpdesk to have these slots enrolled again",
            login_cn.unwrap_or("?")
        )
    } else {
        "run `pivault renew` again to retry (a request in doubt is finished, not issued twice); \
         a certificate Vault refuses needs the helpdesk"
            .into()
    }
}

/// Log in to Vault with the certificate in the login slot, the handshake signed by the
/// token. The token moves behind a mutex shared with the TLS layer for the rest of the run
/// (one card session, the PIN verified once by the caller and again by the card key before
/// each of its signatures, as slot 9c requires). A certificate Vault will not take
/// (expired, revoked, not from the trusted CA) is a person's job: exit 3.
fn cert_issuer(
    settings: &pivault::config::VaultSettings,
    login: &CertLogin,
    token: YubiKeyToken,
    pin: &Pin,
) -> Result<(VaultIssuer, Arc<Mutex<YubiKeyToken>>), Error> {
    let shared = Arc::new(Mutex::new(token));
    let key = CardClientKey::new(shared.clone(), login.slot, pin.clone())?;
    let cert = ClientCert::new(Arc::new(key));
    let issuer = VaultIssuer::unauthenticated(settings, Some(cert.clone()), "self-")?;
    match issuer
        .client()
        .login_cert(&login.mount, login.role.as_deref())
    {
        Ok(()) => {}
        // Vault's Display of a refused login names AppRole; say what was refused here.
        Err(VaultError::InvalidCredentials { message, .. }) => {
            return Err(Error::CertLogin {
                slot: login.slot,
                reason: format!("Vault refused it ({message})"),
            })
        }
        Err(e @ VaultError::PermissionDenied { .. }) => {
            return Err(Error::CertLogin {
                slot: login.slot,
                reason: format!("Vault refused it ({e})"),
            })
        }
        Err(e) => return Err(e.into()),
    }
    log::info!(
        "logged in to Vault with the certificate in slot {} ({} signature(s) by the token)",
        login.slot,
        cert.signatures()
    );
    Ok((issuer, shared))
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
    let esc = Escrow {
        client: issuer.client(),
        by: format!("pivault unblock on {}", super::host_name()),
    };
    let mut token = YubiKeyToken::open(&super::selector(&a.token)?)?;
    let out = pivault::credentials::unblock(&mut token, &esc, &new, 8)?;
    if cli.json {
        print_json(&pivault::report::unblock::UnblockReport {
            token_serial: out.token_serial,
            pin_tries_left: out.pin_tries_left,
            puk_rotated: out.puk_rotated,
            escrow_version: out.escrow_version,
            ok: true,
        })?;
    } else {
        println!(
            "token {}: PIN set, PUK rotated and escrowed (record version {})",
            out.token_serial, out.escrow_version
        );
    }
    Ok(ExitCode::SUCCESS)
}
