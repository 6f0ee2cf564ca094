//! `pivault doctor`: gathers the settings and the secret_id the way `enroll` does (never
//! prompting: a doctor must run unattended), runs the library's checks, prints one line
//! per check or the JSON document, and exits with the class of the first failure.

use super::args::{Cli, DoctorArgs};
use super::{load_config, secrets, vault_settings};
use pivault::doctor::{self, holders, local::LocalOptions, vault::VaultInputs};
use pivault::error::exit;
use pivault::report::doctor::{Check, CheckId};
use pivault::secret::SecretId;
use pivault::Error;
use std::process::ExitCode;
use std::time::Duration;

pub fn run(cli: &Cli, a: &DoctorArgs) -> Result<ExitCode, Error> {
    let local = LocalOptions {
        readers: a.readers.clone(),
        card_timeout: Duration::from_secs(a.card_timeout.max(1)),
        pcscd_socket: holders::pcscd_socket(std::env::var("PCSCLITE_CSOCK_NAME").ok().as_deref()),
    };
    let vault = (!a.skip_vault).then(|| vault_inputs(cli, a));
    let report = doctor::run((!a.skip_local).then_some(&local), vault);
    if cli.json {
        let doc = pivault::report::to_json(&report)
            .map_err(|e| Error::Config(format!("cannot write the report: {e}")))?;
        println!("{doc}");
    } else {
        print!("{}", report.render_text());
    }
    Ok(ExitCode::from(report.exit_code))
}

/// The Vault settings and secret_id, or the failed check that says what is missing.
fn vault_inputs(cli: &Cli, a: &DoctorArgs) -> Result<VaultInputs, Box<Check>> {
    let config_fail = |e: Error| {
        Box::new(Check::fail(
            CheckId::VaultReachable,
            exit::USAGE,
            format!("Vault settings: {e}"),
            e.hint().unwrap_or_else(|| {
                "set VAULT_ADDR (or vault.addr in the config file), or pass --skip-vault".into()
            }),
        ))
    };
    let file = load_config(cli).map_err(config_fail)?;
    let settings = vault_settings(&file, &a.vault).map_err(config_fail)?;
    let secret_id = secrets::read(&secrets::Source {
        what: "AppRole secret_id",
        env: "PIVAULT_SECRET_ID",
        file: settings.secret_id_file.clone(),
    })
    .map_err(|e| {
        Box::new(Check::fail(
            CheckId::Login,
            exit::USAGE,
            format!("AppRole secret_id: {e}"),
            "fix the secret_id file (owner-only, mode 600) or PIVAULT_SECRET_ID",
        ))
    })?
    .map(|s| SecretId::new(s.as_str()));
    Ok(VaultInputs {
        settings,
        secret_id,
        timeout: Duration::from_secs(a.vault_timeout.max(1)),
    })
}
