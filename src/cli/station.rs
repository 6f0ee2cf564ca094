//! `pivault station`.

use super::args::{Cli, StationArgs};
use pivault::error::exit;
use pivault::escrow::Escrow;
use pivault::journal::Journal;
use pivault::station::{self, RunOptions, Station, StationProfile};
use pivault::Error;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

pub fn run(cli: &Cli, a: &StationArgs) -> Result<ExitCode, Error> {
    let (profile, allow) = StationProfile::load(&a.profile)?;
    let roots = a
        .attestation_roots
        .as_deref()
        .or(profile.attestation_roots.as_deref());
    let attest_setup =
        pivault::workflow::attest::AttestSetup::load(roots, profile.attestation.clone())?;
    let journal_dir = a.journal_dir.clone().unwrap_or_else(|| {
        std::env::var_os("STATE_DIRECTORY")
            .map(|d| std::path::PathBuf::from(d).join("journal"))
            .unwrap_or_else(|| "/var/lib/pivault/journal".into())
    });
    std::fs::create_dir_all(&journal_dir)
        .map_err(|e| Error::Config(format!("journal directory {}: {e}", journal_dir.display())))?;
    let issuer = super::connect(cli, &a.vault)?;
    let mut ca_chain_der = Vec::new();
    for pem in issuer.client().ca_chain()? {
        ca_chain_der.extend(
            pivault::verify::pem_bundle_to_der(&pem)
                .map_err(|e| Error::Config(format!("Vault's CA chain: {e}")))?,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| Error::Config(format!("cannot handle signals: {e}")))?;
    }
    let anchors_der = issuer.anchors_der()?;
    if anchors_der.is_empty() {
        return Err(Error::Config(
            "the station needs a trust anchor: set --trust-anchor, PIVAULT_TRUST_ANCHOR or \
             vault.trust_anchor to the PKI's root CA (PEM)"
                .into(),
        ));
    }
    let st = Station {
        issuer: &issuer,
        escrow: Escrow {
            client: issuer.client(),
            by: format!("pivault station on {}", super::host_name()),
        },
        profile,
        allow,
        journal: Journal::new(&journal_dir),
        anchors_der,
        ca_chain_der,
        force: a.force,
        preflight: Default::default(),
        attestation: Some(attest_setup),
    };
    let live = std::io::stderr().is_terminal();
    let on_event = move |what: &str| {
        log::info!("{what}");
        if live {
            eprintln!("{what}");
        }
    };
    let report = a.report.clone();
    let json = cli.json;
    let mut on_line = |line: &station::TokenLine| {
        if let Err(e) = station::append_report(&report, line) {
            log::error!("{e}");
        }
        let serial = line
            .serial
            .map(|s| s.to_string())
            .unwrap_or_else(|| "?".into());
        let msg = format!(
            "{}: serial {serial} {} in {} ms{}",
            line.reader,
            line.result,
            line.duration_ms,
            line.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        if line.error.is_some() {
            log::warn!("{msg}");
        } else {
            log::info!("{msg}");
        }
        if json {
            if let Ok(t) = serde_json::to_string(line) {
                println!("{t}");
            }
        } else if live {
            eprintln!("{msg}");
        }
    };
    let opts = RunOptions {
        max_tokens: a.max_tokens,
        idle_exit: a.idle_exit.map(Duration::from_secs),
        readers: a.readers.clone(),
        vault_wait: Duration::from_secs(a.vault_wait),
    };
    let summary = station::run(&st, &opts, &stop, &on_event, &mut on_line)?;
    let stats = issuer.stats();
    eprintln!(
        "station: {} token(s): {} enrolled, {} already enrolled, {} failed; {} Vault requests, {} AppRole login(s)",
        summary.tokens,
        summary.enrolled,
        summary.already_enrolled,
        summary.failed,
        stats.requests,
        stats.logins
    );
    Ok(ExitCode::from(if summary.failed > 0 {
        exit::FAILED
    } else {
        exit::OK
    }))
}
