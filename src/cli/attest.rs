//! `pivault attest`: read each slot's attestation and the F9 certificate from the token,
//! verify the chain, and print what it proves (library: `pivault::attestation`).

use super::args::AttestArgs;
use super::{fail, selector};
use pivault::attestation::{self, AttestationError, SlotFinding, TrustBundle};
use pivault::error::exit;
use pivault::piv::yubikey::YubiKeyToken;
use pivault::piv::PivToken;
use pivault::report::attest::AttestReport;
use pivault::Error;
use std::process::ExitCode;
use std::time::SystemTime;

pub fn run(a: &AttestArgs, json: bool) -> Result<ExitCode, Error> {
    // The bundle first: a bad file is a usage error, found before the token is touched.
    let bundle = TrustBundle::load(a.attestation_roots.as_deref())
        .map_err(|e| Error::Config(e.to_string()))?;
    let origin = match &a.attestation_roots {
        Some(p) => p.display().to_string(),
        None => "built in".into(),
    };
    let mut token = YubiKeyToken::open(&selector(&a.token))?;
    let slots = (!a.slots.is_empty()).then_some(a.slots.as_slice());
    let findings = attestation::attest_token(&mut token, slots, &bundle, SystemTime::now())?;
    let report = AttestReport::new(token.info(), origin, &findings);
    if json {
        let doc = serde_json::to_string(&report).map_err(|e| Error::Config(e.to_string()))?;
        println!("{doc}");
    } else {
        print!("{}", report.to_text());
    }
    let refused = findings.into_iter().find_map(|(slot, f)| match f {
        SlotFinding::Refused(e) => Some(Error::Attestation {
            slot: Some(slot),
            source: e,
        }),
        SlotFinding::Verified { .. } => None,
    });
    let none = || Error::Attestation {
        slot: None,
        source: AttestationError::NotAttested {
            slot: "(any)".into(),
            why: "no slot holds a key".into(),
        },
    };
    match (refused, report.slots.is_empty()) {
        // The report (JSON on stdout) says it all; stderr gets the one line and hint.
        (Some(e), _) => Ok(fail(&e, false)),
        (None, true) => Ok(fail(&none(), false)),
        (None, false) => Ok(ExitCode::from(exit::OK)),
    }
}
