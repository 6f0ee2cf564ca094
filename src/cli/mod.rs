//! The `pivault` binary: argument parsing, configuration layering, prompts, output and
//! exit codes over the library.

mod args;
mod attest;
mod docs;
mod doctor;
mod enroll;
mod helpdesk;
mod progress;
mod renew;
mod secrets;
mod station;

use args::{Cli, Command, TokenArgs};
use clap::Parser;
use pivault::config::{FileConfig, VaultFlags, VaultSettings, DEFAULT_CONFIG_PATH};
use pivault::error::exit;
use pivault::piv::yubikey::{Selector, YubiKeyToken};
use pivault::Error;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

/// Log to stderr. Crates that trace raw APDUs or HTTP bodies are capped at `debug`, so
/// even `-vvv` cannot print a PIN, a management key or a token (the `yubikey` crate's
/// trace level dumps VERIFY and SET MANAGEMENT KEY APDUs in clear).
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let capped = level.min(log::LevelFilter::Debug);
    env_logger::Builder::new()
        .filter_level(level)
        // The crate logs an ERROR for every empty reader it tries: noise below -vv.
        .filter_module(
            "yubikey",
            if verbose >= 2 {
                capped
            } else {
                log::LevelFilter::Off
            },
        )
        .filter_module("pcsc", capped)
        .filter_module("reqwest", capped)
        .filter_module("hyper", capped)
        .filter_module("hyper_util", capped)
        .filter_module("rustls", capped)
        .filter_module("h2", capped)
        .format_timestamp(None)
        .target(env_logger::Target::Stderr)
        .init();
}

/// Print an error as one line plus a hint, and return its exit code.
pub fn fail(e: &Error, json: bool) -> ExitCode {
    if json {
        let doc = pivault::report::error::ErrorDoc::of(e);
        if let Ok(line) = pivault::report::to_json(&doc) {
            println!("{line}");
        }
    }
    eprintln!("pivault: error: {e}");
    if let Some(h) = e.hint() {
        eprintln!("  hint: {h}");
    }
    ExitCode::from(e.exit_code())
}

/// clap refused the arguments: its message on stderr as always, and with `--json` also
/// an `error` document on stdout, so a script reading stdout learns why (exit 2).
fn bad_arguments(e: &clap::Error) -> ExitCode {
    let code = e.exit_code();
    let json = std::env::args_os().any(|a| a == "--json");
    if json && e.use_stderr() {
        let rendered = e.to_string();
        let first = rendered.lines().next().unwrap_or("bad arguments");
        let doc = pivault::report::error::ErrorDoc {
            error: first.strip_prefix("error: ").unwrap_or(first).to_string(),
            hint: Some("see pivault --help".into()),
            exit_code: u8::try_from(code).unwrap_or(exit::USAGE),
        };
        if let Ok(line) = pivault::report::to_json(&doc) {
            println!("{line}");
        }
    }
    let _ = e.print();
    ExitCode::from(u8::try_from(code).unwrap_or(exit::USAGE))
}

pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return bad_arguments(&e),
    };
    // Generated documents need no logging, token or configuration.
    let generated = match &cli.command {
        Command::Completions { shell } => Some(docs::completions(*shell)),
        Command::Manpages { dir } => Some(docs::manpages(dir)),
        _ => None,
    };
    if let Some(r) = generated {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pivault: error: {e}");
                ExitCode::from(exit::FAILED)
            }
        };
    }
    init_logging(cli.verbose);
    let json = cli.json;
    let r = match &cli.command {
        Command::List => list(json),
        Command::Status(t) => status(t, json),
        Command::Enroll(a) => enroll::run(&cli, a),
        Command::Renew(a) => renew::run(&cli, a),
        Command::Unblock(a) => renew::unblock(&cli, a),
        Command::Station(a) => station::run(&cli, a),
        Command::Doctor(a) => doctor::run(&cli, a),
        Command::Attest(a) => attest::run(a, json),
        Command::Completions { .. } | Command::Manpages { .. } => Ok(ExitCode::SUCCESS),
    };
    r.unwrap_or_else(|e| fail(&e, json))
}

/// The config file: --config, else $PIVAULT_CONFIG, else the default path if it exists.
pub fn load_config(cli: &Cli) -> Result<FileConfig, Error> {
    let named = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("PIVAULT_CONFIG").map(Into::into));
    match named {
        Some(p) => FileConfig::load(&p),
        None if std::path::Path::new(DEFAULT_CONFIG_PATH).exists() => {
            FileConfig::load(std::path::Path::new(DEFAULT_CONFIG_PATH))
        }
        None => Ok(FileConfig::default()),
    }
}

pub fn vault_settings(file: &FileConfig, a: &args::VaultArgs) -> Result<VaultSettings, Error> {
    let flags = VaultFlags {
        addrs: a.addrs.clone(),
        namespace: a.namespace.clone(),
        ca_cert: a.ca_cert.clone(),
        tls_skip_verify: a.tls_skip_verify,
        pki_mount: a.pki_mount.clone(),
        kv_mount: a.kv_mount.clone(),
        approle_mount: a.approle_mount.clone(),
        role_id: a.role_id.clone(),
        secret_id_file: a.secret_id_file.clone(),
        trust_anchor: a.trust_anchor.clone(),
    };
    VaultSettings::resolve(&file.vault, &|k| std::env::var(k).ok(), &flags)
}

/// Log in to Vault with AppRole: role_id from the settings, secret_id from env, file or
/// prompt. Done before the token is touched, so a wrong secret_id changes nothing.
pub fn login(settings: &VaultSettings) -> Result<pivault::issuer::VaultIssuer, Error> {
    let (role_id, secret_id) = approle_creds(settings)?;
    pivault::issuer::VaultIssuer::connect(settings, &role_id, secret_id)
}

/// The issuer with AppRole credentials read now (a missing one is refused before anything
/// else is done); the login goes with the first request.
pub fn login_later(settings: &VaultSettings) -> Result<pivault::issuer::VaultIssuer, Error> {
    let (role_id, secret_id) = approle_creds(settings)?;
    pivault::issuer::VaultIssuer::approle(settings, &role_id, secret_id)
}

fn approle_creds(settings: &VaultSettings) -> Result<(String, zeroize::Zeroizing<String>), Error> {
    let role_id = settings.role_id.clone().ok_or_else(|| {
        Error::Config("no AppRole role_id: set PIVAULT_ROLE_ID, --role-id or vault.role_id".into())
    })?;
    let secret_id = secrets::require(&secrets::Source {
        what: "AppRole secret_id",
        env: "PIVAULT_SECRET_ID",
        file: settings.secret_id_file.clone(),
    })?;
    Ok((role_id, secret_id))
}

/// The user's PIN: env, owner-only file, stdin or prompt.
pub fn read_pin(u: &args::UnlockArgs) -> Result<pivault::secret::Pin, Error> {
    let pin = secrets::require(&secrets::Source {
        what: "PIN",
        env: "PIVAULT_PIN",
        file: u.pin_file.clone(),
    })?;
    Ok(pivault::secret::Pin::new(pin.as_str()))
}

/// Configuration file < environment < flags, then the AppRole login.
pub fn connect(cli: &Cli, v: &args::VaultArgs) -> Result<pivault::issuer::VaultIssuer, Error> {
    let file = load_config(cli)?;
    login(&vault_settings(&file, v)?)
}

/// This machine's name, for the escrow record's `updated_by`.
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The token to open: `--serial` / `--reader`, else `PIVAULT_SERIAL` / `PIVAULT_READER`
/// (a systemd drop-in of the renewal unit names the user's token this way when more than
/// one is plugged in).
pub fn selector(t: &TokenArgs) -> Result<Selector, Error> {
    let serial = match (t.serial, std::env::var("PIVAULT_SERIAL")) {
        (Some(s), _) => Some(s),
        (None, Ok(v)) if !v.trim().is_empty() => Some(v.trim().parse::<u32>().map_err(|_| {
            Error::Usage(format!(
                "PIVAULT_SERIAL={v:?} is not a token serial number (decimal, as `pivault list` shows it)"
            ))
        })?),
        _ => None,
    };
    let reader = t.reader.clone().or_else(|| {
        std::env::var("PIVAULT_READER")
            .ok()
            .filter(|r| !r.is_empty())
    });
    Ok(Selector { serial, reader })
}

fn list(json: bool) -> Result<ExitCode, Error> {
    let tokens = pivault::piv::yubikey::list()?;
    if json {
        print_json(&pivault::report::list::TokenList {
            tokens: tokens.clone(),
        })?;
    } else if tokens.is_empty() {
        println!("no tokens found");
    } else {
        let mut out = std::io::stdout().lock();
        for t in &tokens {
            let _ = writeln!(out, "{:<10} {:<8} {}", t.serial, t.version, t.reader);
        }
    }
    Ok(ExitCode::from(if tokens.is_empty() {
        exit::NEEDS_PERSON
    } else {
        exit::OK
    }))
}

fn status(t: &TokenArgs, json: bool) -> Result<ExitCode, Error> {
    let mut token = YubiKeyToken::open(&selector(t)?)?;
    let st = pivault::status::read(&mut token)?;
    if json {
        print_json(&st)?;
    } else {
        print!("{}", st.to_text());
    }
    Ok(ExitCode::SUCCESS)
}

/// Print a `--json` document (src/report.rs) as one line on stdout.
pub fn print_json<T: pivault::report::Document>(doc: &T) -> Result<(), Error> {
    let line = pivault::report::to_json(doc).map_err(|e| Error::Config(e.to_string()))?;
    println!("{line}");
    Ok(())
}

/// Whether progress lines should be drawn (a person watching stderr).
pub fn progress_on_terminal() -> bool {
    std::io::stderr().is_terminal()
}
